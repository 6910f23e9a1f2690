"""run_pipeline.py --curve-secret/--curve-authorized, as a user runs it: the real pipeline on
the street video publishes over CurveZMQ; the authorised subscriber gets every pose, one with
an unauthorised key and one without CURVE get nothing; bad key files fail before any stage."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from pipeline.schema import Pose3D
from pipeline.security import authorize, generate_keypair
from pipeline.subscribe import subscribe
from tests.conftest import REPO, free_port

VIDEO = "data/footage/openpose/examples/media/video.avi"
FRAMES = 12



@pytest.fixture
def keys(tmp_path):
    """Server and two client key pairs; only alice is authorised."""
    out = {}
    for name in ("server", "alice", "mallory"):
        out[name] = generate_keypair(tmp_path / name, name)  # (public, secret)
    authorize(out["alice"][0], tmp_path / "authorized")
    out["authorized"] = tmp_path / "authorized"
    return out


def _collect(stream, into: list) -> None:
    try:
        for msg in stream:
            if isinstance(msg, Pose3D):
                into.append(msg.frame_id)
    finally:
        stream.close()


def test_only_the_authorised_subscriber_reads_the_pipeline(shared_dir, keys, tmp_path):
    video = shared_dir / VIDEO
    if not video.is_file():
        pytest.fail(f"missing shared data file {video}: set POSESTREAM_SHARED")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    streams = {
        "alice": subscribe(endpoint, timeout_s=20, curve_secret_key=str(keys["alice"][1]),
                           curve_server_key=str(keys["server"][0])),
        "mallory": subscribe(endpoint, timeout_s=20, curve_secret_key=str(keys["mallory"][1]),
                             curve_server_key=str(keys["server"][0])),
        "plain": subscribe(endpoint, timeout_s=20),
    }
    got: dict[str, list[int]] = {name: [] for name in streams}
    threads = [threading.Thread(target=_collect, args=(streams[n], got[n])) for n in streams]
    for t in threads:
        t.start()
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        run = subprocess.run(
            [sys.executable, "run_pipeline.py", "--video", str(video), "--as-fast-as-possible",
             "--every-frame", "--max-frames", str(FRAMES), "--publish", endpoint,
             "--curve-secret", str(keys["server"][1]),
             "--curve-authorized", str(keys["authorized"]), "--wait-for-subscribers", "1"],
            cwd=REPO, stderr=err, stdout=subprocess.DEVNULL, timeout=240,
        )
    for t in threads:
        t.join(timeout=60)
    assert run.returncode == 0, log.read_text()[-3000:]
    assert got["alice"] == list(range(FRAMES))  # every pose, in order, decrypted
    assert got["mallory"] == []  # refused at the handshake
    assert got["plain"] == []  # no CURVE: the handshake never completes


def test_bad_key_files_fail_before_any_stage(shared_dir, keys, tmp_path):
    missing = tmp_path / "nope.key_secret"
    run = subprocess.run(
        [sys.executable, "run_pipeline.py", "--video", str(shared_dir / VIDEO),
         "--publish", f"tcp://127.0.0.1:{free_port()}",
         "--curve-secret", str(missing), "--curve-authorized", str(keys["authorized"])],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2
    assert "nope.key_secret" in run.stderr
    half = subprocess.run(
        [sys.executable, "run_pipeline.py", "--curve-secret", str(keys["server"][1])],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert half.returncode == 2
    assert "--curve-authorized" in half.stderr
