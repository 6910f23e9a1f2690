"""The whole pipeline, as a user runs it: run_pipeline.py on the OpenPose street video
(real mediapipe, the default lifter engine on ONNX Runtime, numba fit and One Euro), five
processes joined by ZeroMQ, and a subscriber in this process. The video shows one woman at
first and three people from about frame 100 on: several people, each with a track id.

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
FRAMES = 205  # the whole video
#: the stamps every pose carries: the five processes, and track (inside the lift process)
STAMPS = ["capture", "detect", "track", "lift", "smooth", "output"]
PROCESSES = ["capture", "detect", "lift", "smooth", "output"]


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
             "--publish", endpoint, "--wait-for-subscribers", "1",
             "--detect-workers", "1"],  # the stamps name one detect process
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
        assert [s[0] for s in pose.stamps] == STAMPS
        times = [pose.t_capture_ns] + [t for s in pose.stamps for t in s[1:]]
        assert times == sorted(times)
        assert pose.image_size == (WIDTH, HEIGHT)
        assert len(pose.engine_id) == 12


def test_poses_are_plausible_metric_skeletons(street_run):
    """Every person: finite, in front of the camera, the root on the pelvis, 2D on the image.
    The people followed for a while (tracks seen in 30+ frames; the short ones are partial or
    false detections): thighs of a metric skeleton in 95 % of their poses."""
    _, poses, _ = street_run
    present = [p for frame in poses for p in frame.people]
    assert sum(bool(frame.people) for frame in poses) >= 0.9 * FRAMES  # someone throughout
    seen: dict[int, int] = {}
    for pose in present:
        seen[pose.track_id] = seen.get(pose.track_id, 0) + 1
        assert pose.joints_3d_m.shape == (NUM_JOINTS, 3)
        assert np.isfinite(pose.joints_3d_m).all() and np.isfinite(pose.root_m).all()
        np.testing.assert_allclose(pose.joints_3d_m[Joint.PELVIS], pose.root_m, atol=1e-4)
        assert 1.0 < pose.root_m[2] < 30.0  # in front of the camera, metres
        xy = pose.joints_2d_px[pose.confidence > 0.5]  # joints the detector is sure of
        margin = 40  # px: BlazePose places a joint just past the image edge now and then
        assert ((xy[:, 0] >= -margin) & (xy[:, 0] < WIDTH + margin) & (xy[:, 1] >= -margin)
                & (xy[:, 1] < HEIGHT + margin)).all(), f"track {pose.track_id}: 2D joint off"
        assert ((pose.confidence >= 0) & (pose.confidence <= 1)).all()
    followed = [p for p in present if seen[p.track_id] >= 30]
    thighs = np.array([np.linalg.norm(p.joints_3d_m[hip] - p.joints_3d_m[knee]) for p in followed
                       for hip, knee in ((Joint.R_HIP, Joint.R_KNEE), (Joint.L_HIP, Joint.L_KNEE))])
    inside = float(np.mean((thighs >= 0.30) & (thighs <= 0.55)))
    print(f"{len(followed)} poses of {sum(n >= 30 for n in seen.values())} followed people: "
          f"thigh median {np.median(thighs):.3f} m, {inside:.0%} in 0.30-0.55 m")
    assert len(followed) >= FRAMES
    assert inside >= 0.95


def _height_px(p) -> float:
    """A person's 2D height, px: the extent in y of their confident joints (all if < 2)."""
    sure = p.confidence > 0.3
    return float(np.ptp(p.joints_2d_px[sure if sure.sum() >= 2 else slice(None), 1]))


def test_several_people_each_keep_one_track_id(street_run):
    """From frame 100 on at least 2 people in at least 80 % of frames; at most 6 distinct track
    ids over the whole video; no id jumps from one person to another: between consecutive
    frames where an id is seen, its 2D pelvis moves less than half the person's 2D height (the
    larger of the two frames': one may see them cut off),
    and its 3D pelvis less than 0.5 m. (The smooth stage keeps a root under 12 m/s, 0.24 m a
    frame at the file's 50 fps: unsmoothed, the monocular depth of people 5 to 9 m away
    moved up to 1.15 m along Z in a frame with the 2D pelvis moving 20 px. The 2D bound is
    the one that tells a person from another.)"""
    _, poses, _ = street_run
    counts = np.array([len(frame.people) for frame in poses])
    share = float(np.mean(counts[100:] >= 2))
    ids = sorted({p.track_id for frame in poses for p in frame.people})
    last: dict[int, tuple[int, object]] = {}
    steps_2d, steps_3d, where = [], [], []
    for frame in poses:
        assert len({p.track_id for p in frame.people}) == len(frame.people)  # one id a person
        for p in frame.people:
            if p.track_id in last and last[p.track_id][0] == frame.frame_id - 1:
                prev = last[p.track_id][1]
                # the person's size: the larger of the two frames' (one may see them cut off)
                h_prev, h_now = _height_px(prev), _height_px(p)
                step_px = float(np.linalg.norm(p.joints_2d_px[Joint.PELVIS]
                                               - prev.joints_2d_px[Joint.PELVIS]))
                steps_2d.append(step_px / max(h_prev, h_now, 1.0))
                steps_3d.append(float(np.linalg.norm(p.root_m - prev.root_m)))
                where.append(f"frame {frame.frame_id} track {p.track_id}: pelvis moved "
                             f"{step_px:.0f} px, height {h_prev:.0f} -> {h_now:.0f} px")
            last[p.track_id] = (frame.frame_id, p)
    steps_2d, steps_3d = np.array(steps_2d), np.array(steps_3d)
    print(f"street video: people per frame {np.bincount(counts).tolist()}, >= 2 from frame 100 "
          f"on in {share:.0%} of frames, track ids {ids}; {len(steps_3d)} steps of one id: "
          f"2D pelvis at most {steps_2d.max():.2f} of the person's height, 3D pelvis median "
          f"{np.median(steps_3d):.2f} m, {np.mean(steps_3d < 0.5):.0%} under 0.5 m, largest "
          f"{steps_3d.max():.2f} m")
    assert share >= 0.8
    assert 2 <= len(ids) <= 6 and min(ids) >= 1
    assert len(steps_2d) >= FRAMES
    assert steps_2d.max() < 0.5, where[int(np.argmax(steps_2d))]
    assert steps_3d.max() < 0.5


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
                          engine, "--publish", endpoint, "--detect-workers", "1", stderr=err)
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
    assert len(stage_pids) == len(PROCESSES), [_cmdline(pid) for pid in children]
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
