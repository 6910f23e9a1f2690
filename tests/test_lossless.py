"""Files processed whole (issue 12.2, 13.2): a lossless run loses no frame, even when its
capture stage is killed by -9 and restarted mid-run. Real processes, real sockets, the real
detector and lifter on the street video.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import zmq

from pipeline.config import (
    CaptureConfig,
    LiftConfig,
    OutputConfig,
    PipelineConfig,
    SupervisorConfig,
    TransportConfig,
)
from pipeline.schema import Pose3D, Status, decode
from pipeline.supervisor import Supervisor
from tests.conftest import free_port
from tests.stage_harness import lifter_engine

VIDEO = "data/footage/openpose/examples/media/video.avi"  # 1280x720, 205 frames
FRAMES = 90
#: capture is killed when this many poses have come back (twice in one run)
KILL_AFTER_POSES = (20, 55)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return str(lifter_engine(tmp_path_factory.mktemp("engine")))


class Listener:
    """Every pose and status of a run, in a thread (subscribed before the run starts)."""

    def __init__(self, endpoint: str) -> None:
        self.poses: list[Pose3D] = []
        self.statuses: list[Status] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(endpoint,), daemon=True)
        self._thread.start()

    def _run(self, endpoint: str) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(endpoint)
        try:
            while not self._stop.is_set():
                if sock.poll(50, zmq.POLLIN):
                    msg = decode(sock.recv_multipart()[1:])
                    (self.poses if isinstance(msg, Pose3D) else self.statuses).append(msg)
        finally:
            sock.close(0)
            ctx.term()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def lossless_config(video: str, engine: str, port: int, frames: int) -> PipelineConfig:
    """What run_pipeline.py --video FILE makes: every frame, unpaced."""
    return PipelineConfig(
        capture=CaptureConfig(video=video, as_fast_as_possible=True, max_frames=frames),
        lift=LiftConfig(engine_path=engine),
        output=OutputConfig(publish=f"tcp://127.0.0.1:{port}", wait_for_subscribers=1,
                            wait_for_subscribers_s=60.0),
        transport=TransportConfig(policy="lossless"),
        supervisor=SupervisorConfig(max_restarts=5, restart_window_s=600.0,
                                    log_level="WARNING"),
    )


def test_kill9_of_capture_in_a_lossless_run_loses_no_frame(supervisors, shared_file, engine):
    config = lossless_config(str(shared_file(VIDEO)), engine, free_port(), FRAMES)
    listener = Listener(config.output.publish)
    sup = Supervisor(config)
    supervisors.append(sup)
    kills = []
    try:
        sup.start()
        code = -1
        deadline = time.monotonic() + 240
        while code == -1 and time.monotonic() < deadline:
            code = sup.watch(timeout_s=0.05)
            if len(kills) < len(KILL_AFTER_POSES) and \
                    len(listener.poses) >= KILL_AFTER_POSES[len(kills)]:
                pid = sup.pids()["capture"]
                os.kill(pid, signal.SIGKILL)
                kills.append((pid, listener.poses[-1].frame_id))
        time.sleep(0.3)  # the last messages reach the listener
    finally:
        sup.stop()
        listener.close()
    ids = [p.frame_id for p in listener.poses]
    assert len(kills) == 2, f"the run ended before both kills: {kills}, {len(ids)} poses"
    assert sup.procs["capture"].restarts == 2
    assert code == 0, sup.failure
    missing = sorted(set(range(FRAMES)) - set(ids))
    assert not missing, f"frames lost across the capture restarts {kills}: {missing}"
    assert ids == list(range(FRAMES)), "every frame once, in order (repeats dropped)"
    restarts = [s for s in listener.statuses if s.kind == "restart"]
    assert len(restarts) == 2


def test_a_source_that_ended_is_not_killed_as_stuck_while_a_slow_consumer_catches_up(
        supervisors, monkeypatch):
    """The source ends at once; the frames queued behind a slow detect take longer than the
    heartbeat timeout to go through. Before, the ended source's heartbeat kept reporting
    its last produce() call as running, and it was killed as stuck (and restarted)."""
    import dataclasses

    from tests.test_supervisor import DELAY_S, make_config, test_graph

    monkeypatch.setenv(DELAY_S, "1.2")  # the last frames queued take detect 2.4 s or more
    config = make_config(free_port(), frames=4, afap=True, subscribers=0, restarts=2,
                         heartbeat_timeout_s=1.5)
    config = dataclasses.replace(config, transport=TransportConfig(policy="lossless"))
    sup = Supervisor(config, test_graph("lossless"))
    supervisors.append(sup)
    assert sup.run() == 0, sup.failure
    assert sup.procs["capture"].restarts == 0
    assert sup.procs["output"].stats["processed"] == 4
