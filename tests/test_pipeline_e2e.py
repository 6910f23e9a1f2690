"""The whole pipeline, as a user runs it: run_pipeline.py on the OpenPose street video
(real mediapipe, the default lifter engine on ONNX Runtime, numba fit and One Euro), five
processes joined by ZeroMQ, and a subscriber in this process.

Set POSESTREAM_E2E_ENGINE=PATH to run it with another engine than engines/default.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from engines.runtime.skeleton import NUM_JOINTS, Joint
from pipeline.schema import Pose3D, decode
from pipeline.transport import open_socket
from tests.conftest import REPO, children_of, free_port, wait_gone

VIDEO = "data/footage/openpose/examples/media/video.avi"  # 1280x720, 205 frames, 50 fps
WIDTH, HEIGHT = 1280, 720
FRAMES = 60
STAGES = ["capture", "detect", "lift", "smooth", "output"]


def _engine() -> str:
    path = Path(os.environ.get("POSESTREAM_E2E_ENGINE", REPO / "engines/default/lifter.onnx"))
    if not path.is_file():
        pytest.fail(f"lifter engine {path} is missing: train and export the default engine "
                    "(engines/training/train.py, engines/training/export.py) or set POSESTREAM_E2E_ENGINE")
    return str(path)



def _collect(popen: subprocess.Popen, sub: zmq.Socket, log: Path,
             deadline_s: float = 240.0) -> list[Pose3D]:
    """Every pose published until the pipeline exits (and the socket is quiet)."""
    poses: list[Pose3D] = []
    deadline = time.monotonic() + deadline_s
    quiet_since = None
    while time.monotonic() < deadline:
        if sub.poll(100, zmq.POLLIN):
            parts = sub.recv_multipart()
            assert parts[0] == b"pose3d"
            poses.append(decode(parts[1:]))
            quiet_since = None
        elif popen.poll() is not None:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 1.0:
                return poses
    pytest.fail(f"pipeline still running after {deadline_s} s ({len(poses)} poses so far); "
                f"its log ends:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def street_run(shared_dir, tmp_path_factory):
    """One lossless run over the first FRAMES frames: (exit code, poses, stderr)."""
    video = shared_dir / VIDEO
    if not video.is_file():
        pytest.fail(f"missing shared data file {video}: set POSESTREAM_SHARED")
    engine = _engine()
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    ctx = zmq.Context()
    sub = open_socket(ctx, zmq.SUB, connect=endpoint, rcvhwm=10_000)
    sub.setsockopt(zmq.SUBSCRIBE, b"pose3d")
    log = tmp_path_factory.mktemp("e2e") / "stderr.log"
    with open(log, "w") as err:
        popen = subprocess.Popen(
            [sys.executable, "run_pipeline.py", "--video", str(video), "--as-fast-as-possible",
             "--every-frame", "--max-frames", str(FRAMES), "--engine", engine,
             "--publish", endpoint, "--wait-for-subscribers", "1"],
            cwd=REPO, stderr=err, stdout=subprocess.DEVNULL,
        )
        try:
            poses = _collect(popen, sub, log)
            popen.wait(timeout=30)
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
            sub.close()
            ctx.term()
    return popen.returncode, poses, log.read_text()


def test_run_ends_cleanly_after_the_last_frame(street_run):
    code, poses, stderr = street_run
    assert code == 0, stderr[-3000:]
    assert "stream ended; all stages exited cleanly" in stderr


def test_every_frame_arrives_in_order_with_all_stamps(street_run):
    _, poses, _ = street_run
    assert [p.frame_id for p in poses] == list(range(FRAMES))
    for pose in poses:
        assert [s[0] for s in pose.stamps] == STAGES
        times = [pose.t_capture_ns] + [t for s in pose.stamps for t in s[1:]]
        assert times == sorted(times)
        assert pose.image_size == (WIDTH, HEIGHT)
        assert len(pose.engine_id) == 12


def test_poses_are_plausible_metric_skeletons(street_run):
    _, poses, _ = street_run
    present = [p for p in poses if p.person_present]
    assert len(present) >= 0.9 * FRAMES  # the woman is in view throughout
    for pose in present:
        assert pose.joints_3d_m.shape == (NUM_JOINTS, 3)
        assert np.isfinite(pose.joints_3d_m).all() and np.isfinite(pose.root_m).all()
        np.testing.assert_allclose(pose.joints_3d_m[Joint.PELVIS], pose.root_m, atol=1e-4)
        assert 1.0 < pose.root_m[2] < 30.0  # in front of the camera, metres
        for hip, knee in ((Joint.R_HIP, Joint.R_KNEE), (Joint.L_HIP, Joint.L_KNEE)):
            thigh_m = np.linalg.norm(pose.joints_3d_m[hip] - pose.joints_3d_m[knee])
            assert 0.30 <= thigh_m <= 0.55, f"frame {pose.frame_id}: thigh {thigh_m:.3f} m"
        xy = pose.joints_2d_px
        assert ((xy[:, 0] >= 0) & (xy[:, 0] < WIDTH) & (xy[:, 1] >= 0)
                & (xy[:, 1] < HEIGHT)).all(), f"frame {pose.frame_id}: 2D joint off the image"
        assert ((pose.confidence >= 0) & (pose.confidence <= 1)).all()


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_sigint_stops_the_real_pipeline_within_3s(shared_dir, reaper, tmp_path):
    """Ctrl-C in the middle of a paced video: every process gone within 3 s, no orphan.
    On the way: no process of the running pipeline has torch loaded."""
    engine = _engine()
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    err = open(tmp_path / "stderr.log", "w")  # a file, not a pipe nobody reads
    popen = reaper.python("run_pipeline.py", "--video", str(shared_dir / VIDEO), "--engine",
                          engine, "--publish", endpoint, stderr=err)
    err.close()
    ctx = zmq.Context()
    sub = open_socket(ctx, zmq.SUB, connect=endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"pose3d")
    try:
        assert sub.poll(180_000, zmq.POLLIN), "no pose within 180 s"
        decode(sub.recv_multipart()[1:])
    finally:
        sub.close()
        ctx.term()
    children = children_of(popen.pid)
    reaper.track(children)
    spares = [pid for pid in children if "--standby" in _cmdline(pid)]
    stage_pids = [pid for pid in children if pid not in spares]
    assert len(stage_pids) == len(STAGES), [_cmdline(pid) for pid in children]
    assert len(spares) <= 1  # the supervisor's warm spare for restarts (SupervisorConfig)
    for pid in [popen.pid, *children]:  # the runtime never loads torch, not even indirectly
        with open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as maps:
            assert "libtorch" not in maps.read(), f"pid {pid} has torch loaded"
    t0 = time.monotonic()
    popen.send_signal(signal.SIGINT)
    popen.wait(timeout=10)
    left = wait_gone(children, max(0.0, 3.0 - (time.monotonic() - t0)))
    elapsed = time.monotonic() - t0
    assert left == [] and elapsed < 3.0, f"{left} alive after {elapsed:.2f} s"
    assert popen.returncode == 130
