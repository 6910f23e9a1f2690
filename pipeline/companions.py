"""Subscribers that run_pipeline.py starts beside the pipeline: `--view` and `--record FILE`.

    companions = Companions(publish_endpoint, view=True, record_path="run.psrec")
    companions.start()                    # before the pipeline: the output stage waits for
    code = supervisor.run(                #   companions.subscriptions subscriptions
        on_started=lambda _: companions.stop_pipeline_when_viewer_closes(supervisor))
    companions.stop(stream_ended=supervisor.eos)

The viewer (`pipeline.view.run_viewer`) runs in a spawned process: a Qt window needs its
process's main thread, and drawing must not share the supervisor's GIL. Without a display it
runs headless (counts and logs). Closing its window (q, Esc) stops the run. The recorder
(`pipeline.record.record`) is a thread of this process: it only moves bytes to a file.

No orphans: the viewer process ignores Ctrl-C (the supervisor decides), stops on its stop
event or SIGTERM, and is killed by Linux if this process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: subscriptions each companion makes on the publisher (the output stage waits for them)
VIEWER_SUBSCRIPTIONS = 3  # pose3d, status, frame
RECORDER_SUBSCRIPTIONS = 1  # every topic
#: after the end of the stream, how long the recorder may take to write the last poses
RECORDER_FINISH_S = 10.0
#: how long the viewer process has to stop before SIGTERM, then SIGKILL
VIEWER_STOP_S = 3.0


def local_endpoint(publish: str) -> str:
    """Where a subscriber on this host connects to reach a publisher bound at `publish`
    (a wildcard address such as tcp://0.0.0.0:5556 or tcp://*:5556 -> 127.0.0.1)."""
    if publish.startswith("tcp://"):
        host, _, port = publish[len("tcp://"):].rpartition(":")
        if host in ("*", "0.0.0.0"):
            return f"tcp://127.0.0.1:{port}"
        if host in ("[::]", "::", "[*]"):
            return f"tcp://[::1]:{port}"
    return publish


def check_record_path(path: str) -> None:
    """Raise ValueError (saying what to do) if a recording cannot be written at `path`."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise ValueError(f"--record {path}: is a folder; give a file name such as run.psrec")
    if not folder.is_dir():
        raise ValueError(f"--record {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--record {path}: folder {folder} is not writable; pick another")


def _viewer_main(endpoint: str, stop_event: Any, parent_pid: int, log_level: str) -> None:
    """The viewer process (spawned): run_viewer until stop_event, SIGTERM or window close."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with run_pipeline
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(3)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the supervisor tells us
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    logging.basicConfig(
        level=getattr(logging, log_level, logging.INFO),
        format="%(asctime)s viewer[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    from pipeline.view import run_viewer

    summary = run_viewer(endpoint, stop_event=stop_event)
    logging.getLogger("pipeline.view").info(
        "viewer: %d poses received, %d drawn, %d dropped upstream", summary.received,
        summary.rendered, summary.dropped)


class Companions:
    """The viewer process and the recorder thread of one run (see module docstring)."""

    def __init__(self, publish: str, *, view: bool = False, record_path: str | None = None,
                 log_level: str = "INFO") -> None:
        self.endpoint = local_endpoint(publish)
        self.view = view
        self.record_path = record_path
        self.log_level = log_level
        self.recorded: int | None = None  # messages in the recording, once it is closed
        self._mp = multiprocessing.get_context("spawn")
        self._viewer: Any = None  # multiprocessing.Process
        self._viewer_stop: Any = None  # multiprocessing.Event
        self._recorder: threading.Thread | None = None
        self._recorder_stop = threading.Event()
        self._recorder_error: BaseException | None = None
        self._stopping = False

    @property
    def subscriptions(self) -> int:
        """How many subscriptions these companions make (for wait_for_subscribers)."""
        return (VIEWER_SUBSCRIPTIONS if self.view else 0) + (
            RECORDER_SUBSCRIPTIONS if self.record_path else 0)

    def start(self) -> None:
        """Start the recorder and the viewer; both connect and wait for the publisher."""
        if self.record_path:
            self._recorder = threading.Thread(target=self._record, name="recorder",
                                              daemon=True)
            self._recorder.start()
        if self.view:
            self._viewer_stop = self._mp.Event()
            self._viewer = self._mp.Process(
                target=_viewer_main, name="viewer", daemon=True,
                args=(self.endpoint, self._viewer_stop, os.getpid(), self.log_level),
            )
            self._viewer.start()
            log.info("viewer started (pid %d) on %s", self._viewer.pid, self.endpoint)

    def _record(self) -> None:
        from pipeline.record import record

        try:
            summary = record(self.endpoint, self.record_path, self._recorder_stop,
                             until_end_of_stream=True)
            self.recorded = summary.count
        except BaseException as exc:  # reported by stop(); the pipeline itself goes on
            self._recorder_error = exc
            log.error("recording to %s failed: %s", self.record_path, exc)

    def pids(self) -> list[int]:
        """Process ids of companion processes (the viewer), for tests."""
        return [self._viewer.pid] if self._viewer is not None and self._viewer.pid else []

    def stop_pipeline_when_viewer_closes(self, supervisor: Any) -> None:
        """When the user closes the viewer's window, stop the run (exit code 0)."""
        if self._viewer is None:
            return

        def watch() -> None:
            self._viewer.join()
            if not self._stopping and self._viewer.exitcode == 0:
                log.info("viewer closed: stopping the pipeline")
                supervisor.request_stop(0)

        threading.Thread(target=watch, name="viewer-watch", daemon=True).start()

    def stop(self, stream_ended: bool = False) -> None:
        """Stop both. stream_ended: the publisher sent its last pose and its end-of-stream
        status, so the recorder stops by itself once that is written (bounded wait)."""
        self._stopping = True
        if self._recorder is not None:
            if not stream_ended:
                self._recorder_stop.set()
            self._recorder.join(timeout=RECORDER_FINISH_S)
            if self._recorder.is_alive():
                log.warning("recorder: no end-of-stream status within %.0f s; closing the "
                            "recording now", RECORDER_FINISH_S)
                self._recorder_stop.set()
                self._recorder.join(timeout=RECORDER_FINISH_S)
        if self._viewer is not None:
            self._viewer_stop.set()
            self._viewer.join(timeout=VIEWER_STOP_S)
            for action in ("terminate", "kill"):
                if not self._viewer.is_alive():
                    break
                log.warning("viewer (pid %d) did not stop: %s", self._viewer.pid, action)
                getattr(self._viewer, action)()
                self._viewer.join(timeout=1.0)
