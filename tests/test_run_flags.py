"""run_pipeline.py --view and --record, as a user runs them: real pipeline processes on the
street video, the viewer in its own process (headless here: no display), the recorder in the
supervisor's process; the output stage waits for both before the first pose."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import zmq

from pipeline.record import Recording
from pipeline.schema import Pose3D, Status
from tests.conftest import REPO, children_of, free_port, wait_gone

VIDEO = "data/footage/openpose/examples/media/video.avi"
FRAMES = 20
HEADLESS = {"DISPLAY": "", "WAYLAND_DISPLAY": "", "QT_QPA_PLATFORM": "offscreen"}



@pytest.fixture(scope="module")
def view_record_run(shared_dir, tmp_path_factory):
    """One run with --view (headless) and --record: (exit code, stderr, recording path)."""
    video = shared_dir / VIDEO
    if not video.is_file():
        pytest.fail(f"missing shared data file {video}: set POSESTREAM_SHARED")
    folder = tmp_path_factory.mktemp("flags")
    out = folder / "run.psrec"
    log = folder / "stderr.log"
    env = {**os.environ, **HEADLESS}
    with open(log, "w") as err:
        popen = subprocess.Popen(
            [sys.executable, "run_pipeline.py", "--video", str(video), "--as-fast-as-possible",
             "--every-frame", "--max-frames", str(FRAMES), "--view", "--record", str(out),
             "--publish", f"tcp://127.0.0.1:{free_port()}"],
            cwd=REPO, env=env, stderr=err, stdout=subprocess.DEVNULL,
        )
        try:
            popen.wait(timeout=240)
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
    return popen.returncode, log.read_text(), out


def test_view_headless_and_record_exit_0(view_record_run):
    code, stderr, _ = view_record_run
    assert code == 0, stderr[-3000:]
    assert "stream ended; all stages exited cleanly" in stderr
    # the viewer ran (headless, in its own process) and saw the stream
    m = re.search(r"viewer\[\d+\] INFO pipeline.view: viewer: (\d+) poses received", stderr)
    assert m, stderr[-3000:]
    # --every-frame and the output waits for the viewer's subscription: it sees every pose
    assert int(m.group(1)) == FRAMES, m.group(0)


def test_recording_holds_every_published_pose(view_record_run):
    code, stderr, out = view_record_run
    published = re.findall(r"output: published (\d+) poses", stderr)
    assert published, stderr[-3000:]
    with Recording(out) as rec:
        messages = [m.decode() for m in rec]
    poses = [m for m in messages if isinstance(m, Pose3D)]
    assert len(poses) == int(published[-1]) == FRAMES
    assert [p.frame_id for p in poses] == list(range(FRAMES))
    statuses = [m for m in messages if isinstance(m, Status)]
    assert statuses and statuses[-1].text == "end of stream"
    sys.stderr.write(f"recorded {len(poses)} poses of {published[-1]} published, "
                     f"{out.stat().st_size} bytes\n")


def test_ctrl_c_with_view_and_record_leaves_no_orphan(shared_dir, reaper, tmp_path):
    """SIGINT in the middle of a paced video: the stages and the viewer process are gone,
    the recording is closed with its index, exit 130."""
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "cut.psrec"
    err = open(tmp_path / "stderr.log", "w")
    popen = reaper.python("run_pipeline.py", "--video", str(shared_dir / VIDEO), "--view",
                          "--record", str(out), "--publish", endpoint, stderr=err,
                          env=HEADLESS)
    err.close()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"pose3d")
    try:
        assert sub.poll(180_000, zmq.POLLIN), "no pose within 180 s"
    finally:
        sub.close()
        ctx.term()
    children = children_of(popen.pid)
    reaper.track(children)
    # five stages and the viewer (multiprocessing may add its resource tracker)
    assert len(children) >= 6, children
    popen.send_signal(signal.SIGINT)
    popen.wait(timeout=20)
    left = wait_gone(children, 5.0)
    assert left == [], f"{left} still alive"
    assert popen.returncode == 130, (tmp_path / "stderr.log").read_text()[-3000:]
    with Recording(out) as rec:
        assert rec.complete, "the recording was not closed with its index"
        assert len(rec) >= 1
