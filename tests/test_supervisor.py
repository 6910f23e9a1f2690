"""pipeline.supervisor + runner + graph with real processes and real sockets.

The stages here are small but real Stage subclasses (no mediapipe, no engine) so the
framework's own behaviour is tested in seconds: start-up handshake, stamps, end of stream,
Ctrl-C/SIGTERM with no orphan, a crashing stage reported with its traceback, children dying
with a supervisor killed by -9. The output stage is the real stages/output.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engines.runtime.skeleton import NUM_JOINTS
from pipeline.config import (
    CaptureConfig,
    OutputConfig,
    PipelineConfig,
    SupervisorConfig,
    TransportConfig,
)
from pipeline.graph import Edge, Graph, StageSpec
from pipeline.schema import Frame, Keypoints2D, Person2D, Person3D, Pose3D, Status
from pipeline.stage import EndOfStream, Source, Stage
from pipeline.subscribe import subscribe
from pipeline.supervisor import EXIT_FAILED, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, Supervisor
from tests.conftest import children_of, free_port, pid_alive, wait_gone

HERE = "tests.test_supervisor"
#: environment knobs read by the test stages in their own processes
CRASH_AT = "POSESTREAM_TEST_CRASH_AT"
DELAY_S = "POSESTREAM_TEST_DELAY_S"
OPEN_S = "POSESTREAM_TEST_OPEN_S"
FAIL_ONCE_AT = "POSESTREAM_TEST_FAIL_ONCE_AT"
HANG_AT = "POSESTREAM_TEST_HANG_AT"


# --------------------------------------------------------------------------- test stages
class TickSource(Source):
    """Tiny frames, paced at images_fps unless as_fast_as_possible; max_frames then EOS."""

    name = "capture"
    outputs = (Frame,)

    def open(self) -> None:
        self.n = 0
        self.t0 = None

    def produce(self) -> Frame:
        if self.config.max_frames is not None and self.n >= self.config.max_frames:
            raise EndOfStream
        self.t0 = self.t0 or time.monotonic()  # the clock starts with the first frame
        if not self.config.as_fast_as_possible:
            due = self.t0 + self.n / self.config.images_fps
            time.sleep(max(0.0, due - time.monotonic()))
        frame = Frame(frame_id=self.n, t_capture_ns=time.monotonic_ns(),
                      image=np.full((8, 12, 3), self.n % 256, np.uint8), source="tick")
        self.n += 1
        return frame


class Detect(Stage):
    """Frame -> Keypoints2D; sleeps $POSESTREAM_TEST_DELAY_S, raises from frame $..._CRASH_AT."""

    name = "detect"
    inputs = (Frame,)
    outputs = (Keypoints2D,)

    def process(self, msg: Frame) -> Keypoints2D:
        if msg.frame_id >= int(os.environ.get(CRASH_AT, sys.maxsize)):
            raise RuntimeError(f"boom at frame {msg.frame_id}")
        if msg.frame_id == int(os.environ.get(FAIL_ONCE_AT, -1)):
            raise ValueError(f"cannot handle frame {msg.frame_id}")
        if msg.frame_id == int(os.environ.get(HANG_AT, -1)):
            time.sleep(3600)  # stuck: a call that never returns
        time.sleep(float(os.environ.get(DELAY_S, "0")))
        h, w, _ = msg.image.shape
        return Keypoints2D(
            frame_id=msg.frame_id, t_capture_ns=msg.t_capture_ns, image_size=(w, h),
            people=(Person2D(
                track_id=1,
                joints_2d_px=np.full((NUM_JOINTS, 2), float(msg.image[0, 0, 0]), np.float32),
                confidence=np.ones(NUM_JOINTS, np.float32)),),
        )


class Lift(Stage):
    """Keypoints2D -> Pose3D (the frame's pixel value copied into x, to check the data path);
    open() takes $POSESTREAM_TEST_OPEN_S seconds (a slow model load)."""

    name = "lift"
    inputs = (Keypoints2D,)
    outputs = (Pose3D,)

    def open(self) -> None:
        time.sleep(float(os.environ.get(OPEN_S, "0")))

    def process(self, msg: Keypoints2D) -> Pose3D:
        person = msg.people[0]
        joints = np.zeros((NUM_JOINTS, 3), np.float32)
        joints[:, 0] = person.joints_2d_px[:, 0]
        return Pose3D(
            frame_id=msg.frame_id, t_capture_ns=msg.t_capture_ns, image_size=msg.image_size,
            people=(Person3D(track_id=person.track_id, joints_3d_m=joints,
                             root_m=joints[0].copy(), joints_2d_px=person.joints_2d_px,
                             confidence=person.confidence,
                             reproj_err_px=np.zeros(NUM_JOINTS, np.float32)),),
            engine_id="test",
        )


def test_graph(policy: str = "latest") -> Graph:
    return Graph(
        stages=(StageSpec("capture", HERE), StageSpec("detect", HERE), StageSpec("lift", HERE),
                StageSpec("output")),
        edges=(Edge("capture.frame", "detect.frame", Frame, policy),
               Edge("detect.keypoints", "lift.keypoints", Keypoints2D, policy),
               Edge("lift.pose", "output.pose", Pose3D, policy)),
    )


test_graph.__test__ = False  # a helper, not a test


def make_config(port: int, frames: int | None, fps: float = 200.0, afap: bool = False,
                subscribers: int = 1, restarts: int = 0,
                heartbeat_timeout_s: float = 0.0) -> PipelineConfig:
    """Test pipelines: no restarts and no stuck check unless asked (a death ends the run)."""
    return PipelineConfig(
        capture=CaptureConfig(max_frames=frames, images_fps=fps, as_fast_as_possible=afap),
        output=OutputConfig(publish=f"tcp://127.0.0.1:{port}", wait_for_subscribers=subscribers,
                            wait_for_subscribers_s=20),
        supervisor=SupervisorConfig(max_restarts=restarts,
                                    heartbeat_timeout_s=heartbeat_timeout_s),
    )



@pytest.fixture
def short_tmp():
    """A temp dir with a short path (unix socket paths are limited to about 100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="pst-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Collector(threading.Thread):
    """Subscribes in a thread and keeps every pose and status it receives, until the
    pipeline says it ended (status info) or failed (status error)."""

    def __init__(self, endpoint: str, idle_s: float = 20.0) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.idle_s, self.poses, self.statuses = endpoint, idle_s, [], []

    def run(self) -> None:
        for msg in subscribe(self.endpoint, timeout_s=self.idle_s, include_status=True):
            if isinstance(msg, Status):
                self.statuses.append(msg)
                if msg.kind in ("error", "info"):
                    return
                continue
            self.poses.append(msg)


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_stream_to_the_end_every_frame_with_stamps(supervisors, transport):
    port = free_port()
    collector = Collector(f"tcp://127.0.0.1:{port}", idle_s=60.0)  # ends on the status
    collector.start()
    config = dataclasses.replace(make_config(port, frames=40, afap=True),
                                 transport=TransportConfig(kind=transport))
    sup = Supervisor(config, test_graph("lossless"))
    supervisors.append(sup)
    assert sup.run() == EXIT_OK
    collector.join(timeout=10)
    ids = [p.frame_id for p in collector.poses]
    assert ids == list(range(40))  # lossless: every frame, in order, the last one included
    assert [(s.kind, s.text, s.frame_id) for s in collector.statuses] == [
        ("info", "end of stream", 39)]
    for pose in collector.poses:
        assert [s[0] for s in pose.stamps] == ["capture", "detect", "lift", "output"]
        times = [pose.t_capture_ns] + [t for s in pose.stamps for t in s[1:]]
        assert times == sorted(times)  # one monotonic clock across four processes
        assert pose.people[0].joints_3d_m[0, 0] == pose.frame_id % 256  # data went all the way
    assert sup.eos
    assert all(p.last_beat > 0 for p in sup.procs.values())  # every stage sent heartbeats
    assert all(not pid_alive(pid) for pid in sup.pids().values())


def test_first_frame_is_not_lost_to_a_slow_starting_stage(supervisors, monkeypatch):
    # lift binds its output 1.5 s after output first tried to connect; the edge handshake
    # and the go signal make sure frame 0 still flows through every stage (latest policy)
    monkeypatch.setenv(OPEN_S, "1.5")
    port = free_port()
    collector = Collector(f"tcp://127.0.0.1:{port}", idle_s=20.0)
    collector.start()
    sup = Supervisor(make_config(port, frames=3, fps=5.0), test_graph())
    supervisors.append(sup)
    assert sup.run() == EXIT_OK
    collector.join(timeout=10)
    assert [p.frame_id for p in collector.poses] == [0, 1, 2]


def test_latest_wins_under_overload_drops_are_counted(supervisors, monkeypatch):
    monkeypatch.setenv(DELAY_S, "0.03")  # detect: about 30 fps; capture: 300 fps
    port = free_port()
    collector = Collector(f"tcp://127.0.0.1:{port}", idle_s=60.0)  # ends on the status
    collector.start()
    sup = Supervisor(make_config(port, frames=150, fps=300.0), test_graph())
    supervisors.append(sup)
    assert sup.run() == EXIT_OK
    collector.join(timeout=10)
    ids = [p.frame_id for p in collector.poses]
    assert ids == sorted(set(ids)) and len(ids) >= 2
    assert ids[-1] == 149  # the newest frame wins, so the last one is always delivered
    assert len(ids) < 100  # frames were dropped rather than queued
    capture = sup.procs["capture"].stats
    detect = sup.procs["detect"].stats
    assert capture["processed"] == 150
    # every frame is either sent or counted as dropped at the edge
    assert capture["sent"] + capture["dropped_out"] == 150
    assert detect["processed"] == capture["sent"] - detect["dropped_in"]


def test_crashing_stage_is_reported_with_traceback(supervisors, monkeypatch):
    monkeypatch.setenv(CRASH_AT, "5")
    port = free_port()
    collector = Collector(f"tcp://127.0.0.1:{port}", idle_s=60.0)  # ends on the status
    collector.start()
    sup = Supervisor(make_config(port, frames=500, fps=100.0), test_graph())
    supervisors.append(sup)
    code = sup.run()
    assert code == EXIT_FAILED
    assert "stage detect" in sup.failure and "boom at frame" in sup.failure
    assert "Traceback" in sup.failure and "in process" in sup.failure
    collector.join(timeout=10)
    # subscribers are told why the stream stopped
    assert [s.kind for s in collector.statuses] == ["error"]
    assert "boom at frame" in collector.statuses[0].text
    assert all(not pid_alive(pid) for pid in sup.pids().values())


def test_sigint_while_stages_are_still_opening(reaper, short_tmp):
    """Ctrl-C during a slow model load: no waiting for open() to finish."""
    port = free_port()
    code = (
        "import sys\n"
        "from tests.test_supervisor import make_config, test_graph\n"
        "from pipeline.supervisor import Supervisor\n"
        f"sys.exit(Supervisor(make_config({port}, None, subscribers=0), test_graph()).run())\n"
    )
    popen = reaper.python("-c", code, stderr=subprocess.DEVNULL,
                          env={"TMPDIR": str(short_tmp), OPEN_S: "60"})
    deadline = time.monotonic() + 60
    while len(children_of(popen.pid)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    stage_pids = children_of(popen.pid)
    assert len(stage_pids) == 4
    reaper.track(stage_pids)
    time.sleep(1.0)  # the fast stages are ready; lift is inside its 60 s open()
    t0 = time.monotonic()
    popen.send_signal(signal.SIGINT)
    popen.wait(timeout=10)
    left = wait_gone(stage_pids, max(0.0, 3.0 - (time.monotonic() - t0)))
    assert left == [] and time.monotonic() - t0 < 3.0
    assert popen.returncode == EXIT_SIGINT
    assert list(short_tmp.iterdir()) == []


def test_one_message_a_stage_cannot_handle_is_counted_not_fatal(supervisors, monkeypatch):
    monkeypatch.setenv(FAIL_ONCE_AT, "7")
    port = free_port()
    collector = Collector(f"tcp://127.0.0.1:{port}", idle_s=20.0)
    collector.start()
    sup = Supervisor(make_config(port, frames=15, afap=True), test_graph("lossless"))
    supervisors.append(sup)
    assert sup.run() == EXIT_OK
    collector.join(timeout=10)
    assert [p.frame_id for p in collector.poses] == [i for i in range(15) if i != 7]
    assert sup.procs["detect"].stats["rejected"] == {"process": 1}
    assert sup.procs["detect"].stats["processed"] == 14


def _run_until(sup: Supervisor, condition, timeout_s: float) -> None:
    """Drive sup.watch() until condition() holds; fail if the run ends or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        assert sup.watch(timeout_s=0.1) == -1, f"the run ended: {sup.failure}"


def test_a_killed_stage_is_restarted_and_poses_resume(supervisors):
    port = free_port()
    collector = Collector(f"tcp://127.0.0.1:{port}", idle_s=30.0)
    collector.start()
    sup = Supervisor(make_config(port, frames=None, fps=50.0, restarts=3), test_graph())
    supervisors.append(sup)
    sup.start()
    _run_until(sup, lambda: len(collector.poses) >= 5, 30)
    old_pid = sup.pids()["detect"]
    os.kill(old_pid, signal.SIGKILL)
    last_before = collector.poses[-1].frame_id
    _run_until(sup, lambda: collector.poses[-1].frame_id > last_before + 20, 30)
    assert sup.pids()["detect"] != old_pid and not pid_alive(old_pid)
    assert sup.procs["detect"].restarts == 1
    restarts = [s for s in collector.statuses if s.kind == "restart"]
    assert len(restarts) == 1 and "stage detect" in restarts[0].text
    assert "SIGKILL" in restarts[0].text
    ids = [p.frame_id for p in collector.poses]
    assert ids == sorted(set(ids))  # a gap, never a step back


def test_a_stuck_stage_is_killed_and_restarted(supervisors, monkeypatch):
    monkeypatch.setenv(HANG_AT, "20")
    port = free_port()
    collector = Collector(f"tcp://127.0.0.1:{port}", idle_s=30.0)
    collector.start()
    sup = Supervisor(make_config(port, frames=None, fps=50.0, restarts=3,
                                 heartbeat_timeout_s=1.0), test_graph())
    supervisors.append(sup)
    sup.start()
    _run_until(sup, lambda: collector.poses and collector.poses[-1].frame_id > 40, 30)
    assert sup.procs["detect"].restarts == 1
    restarts = [s for s in collector.statuses if s.kind == "restart"]
    assert len(restarts) == 1 and "stuck" in restarts[0].text


def test_a_stage_that_keeps_dying_ends_the_run_after_its_restarts(supervisors, monkeypatch):
    monkeypatch.setenv(CRASH_AT, "0")  # detect cannot process anything
    sup = Supervisor(make_config(free_port(), frames=None, fps=100.0, subscribers=0,
                                 restarts=1), test_graph())
    supervisors.append(sup)
    assert sup.run() == EXIT_FAILED
    assert sup.procs["detect"].restarts == 1
    assert "boom at frame" in sup.failure and "gave up restarting it" in sup.failure


def _start_supervisor_process(reaper, port: int, tmp_dir, frames: int | None = None):
    """A supervisor in its own process (as run_pipeline.py runs it, its temp files under
    tmp_dir); returns (popen, pids)."""
    code = (
        "import json, sys\n"
        "from tests.test_supervisor import make_config, test_graph\n"
        "from pipeline.supervisor import Supervisor\n"
        f"config = make_config({port}, {frames!r}, fps=50.0, subscribers=0)\n"
        "sup = Supervisor(config, test_graph())\n"
        "def started(pids):\n"
        "    sys.stdout.write(json.dumps(pids) + '\\n'); sys.stdout.flush()\n"
        "sys.exit(sup.run(on_started=started))\n"
    )
    popen = reaper.python("-c", code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={"TMPDIR": str(tmp_dir)})
    line = popen.stdout.readline()
    if not line:
        pytest.fail(f"supervisor did not start: {popen.stderr.read()[-3000:]}")
    pids = json.loads(line)
    reaper.track(pids.values())
    return popen, pids


@pytest.mark.parametrize("sig,expected", [(signal.SIGINT, EXIT_SIGINT),
                                           (signal.SIGTERM, EXIT_SIGTERM)])
def test_signal_stops_everything_within_3s(reaper, short_tmp, sig, expected):
    tmp_path = short_tmp
    port = free_port()
    popen, pids = _start_supervisor_process(reaper, port, tmp_path)
    assert sorted(pids) == ["capture", "detect", "lift", "output"]
    assert [f.name for f in tmp_path.iterdir()][0].startswith("posestream-")  # the ipc dir
    poses = subscribe(f"tcp://127.0.0.1:{port}", timeout_s=10)
    assert isinstance(next(poses), Pose3D)  # the pipeline is streaming
    poses.close()
    t0 = time.monotonic()
    popen.send_signal(sig)
    popen.wait(timeout=5)
    left = wait_gone(list(pids.values()), max(0.0, 3.0 - (time.monotonic() - t0)))
    elapsed = time.monotonic() - t0
    assert popen.returncode == expected
    assert left == [], f"stages still alive after {elapsed:.2f} s: {left}"
    assert elapsed < 3.0
    assert list(tmp_path.iterdir()) == []  # no leftover ipc socket or plan file


def test_stages_die_with_a_killed_supervisor(reaper, short_tmp):
    """...and the next run gives back the RAM of the killed run's shared-memory directory."""
    import os

    from pipeline.supervisor import SHM_DIR_PREFIX, _remove_orphaned_shm_dirs

    port = free_port()
    popen, pids = _start_supervisor_process(reaper, port, short_tmp)
    mine = f"{SHM_DIR_PREFIX}{popen.pid}-"
    has_shm = os.path.isdir("/dev/shm")
    left_dirs = [n for n in os.listdir("/dev/shm") if n.startswith(mine)] if has_shm else []
    popen.kill()  # SIGKILL: no chance to clean up
    popen.wait(timeout=5)
    assert wait_gone(list(pids.values()), 3.0) == []
    if has_shm:
        assert len(left_dirs) == 1  # the killed run's rings directory is still there
        _remove_orphaned_shm_dirs("/dev/shm")  # what the next Supervisor.start() does
        assert not any(n.startswith(mine) for n in os.listdir("/dev/shm"))


def test_stage_that_fails_to_open_is_reported_before_start(supervisors, monkeypatch):
    graph = dataclasses.replace(
        test_graph(),
        stages=(StageSpec("capture", HERE), StageSpec("detect", "tests.no_such_module"),
                StageSpec("lift", HERE), StageSpec("output")),
    )
    sup = Supervisor(make_config(free_port(), frames=5, subscribers=0), graph)
    supervisors.append(sup)
    assert sup.run() == EXIT_FAILED
    assert "stage detect" in sup.failure and "No module named" in sup.failure
    assert all(not pid_alive(pid) for pid in sup.pids().values())


def test_subscribe_cli_prints_one_json_line_per_pose(supervisors, reaper):
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    cli = reaper.python("-m", "pipeline.subscribe", endpoint, "--json", "--count", "5",
                        "--timeout", "60", stdout=subprocess.PIPE, text=True)
    sup = Supervisor(make_config(port, frames=400, fps=100.0), test_graph())
    supervisors.append(sup)
    sup.start()  # waits for the CLI to subscribe (wait_for_subscribers=1)
    out, _ = cli.communicate(timeout=60)
    assert cli.returncode == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 5
    ids = [d["frame_id"] for d in lines]
    assert ids == sorted(set(ids))
    for d in lines:
        (person,) = d["people"]
        assert person["track_id"] == 1
        assert np.array(person["joints_3d_m"]).shape == (NUM_JOINTS, 3)
        assert person["joints_3d_m"][0][0] == d["frame_id"] % 256
        assert [s[0] for s in d["stamps"]] == ["capture", "detect", "lift", "output"]
