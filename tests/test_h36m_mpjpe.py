"""The full pipeline on the four Human3.6M frames with 3D ground truth: root-relative MPJPE, mm.

Real processes: `run_pipeline.py --images FRAME --calib CAMERA --every-frame` (capture ->
mediapipe BlazePose -> lifter engine + numba translation fit -> One Euro -> PUB), one run per
frame, received with `pipeline.subscribe.subscribe`. The four frames show four different people
from two cameras, so each gets its own run with its own camera's calibration (the smoother is
in the chain but has nothing to smooth on a single frame: the first pose passes through).

Run with -s to see the figures the lead quotes:
    .venv/bin/python -m pytest tests/test_h36m_mpjpe.py -q -s
It runs the default engine and the shipped temporal one (`--engine temporal`: a single image
is its whole history, the padding, which must not hurt it). Another engine instead:
    POSESTREAM_TEST_ENGINE=path/to/lifter.onnx .venv/bin/python -m pytest tests/test_h36m_mpjpe.py -q -s
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.runtime.skeleton import ROOT
from pipeline.schema import Pose3D
from pipeline.subscribe import subscribe

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSESTREAM_SHARED", REPO.parent / "shared"))
H36M_DIR = SHARED / "data" / "footage" / "mmpose" / "tests" / "data" / "h36m"
#: how long one run may take to start (models load on 2 busy cores) and stream its frame, s.
RUN_TIMEOUT_S = 120.0
#: the engines the pipeline runs (None: its default) and each one's bar for root-relative MPJPE
#: of the whole pipeline, mm: the first pipeline issue's 150 for the default; for the temporal
#: engine issue 11's 95 (the default measures 94.4: padding a single image must not cost).
ENGINES: dict[str | None, float] = (
    {os.environ["POSESTREAM_TEST_ENGINE"]: 150.0} if os.environ.get("POSESTREAM_TEST_ENGINE")
    else {None: 150.0, "temporal": 95.0})


def shared_file(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(
            f"missing shared data file {path}; set POSESTREAM_SHARED to the shared folder "
            f"(the one holding data/footage)"
        )
    return path


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def h36m_cases(tmp_path: Path) -> list[dict]:
    """Per frame: image path, calibration file (K of its camera, JSON), 2D truth (17, 2) px,
    3D truth (17, 3) m, camera frame."""
    data = np.load(shared_file(H36M_DIR / "test_h36m_body3d.npz"))
    with open(shared_file(H36M_DIR / "cameras.pkl"), "rb") as fh:
        cameras = pickle.load(fh)
    cases = []
    for name, part, s in zip(data["imgname"], data["part"], data["S"]):
        image = shared_file(H36M_DIR / str(name))
        subject, camera_id = image.name.split("_")[0], image.name.split(".")[1].split("_")[0]
        cam = cameras[(subject, camera_id)]
        f, c = np.ravel(cam["f"]), np.ravel(cam["c"])
        calib = tmp_path / f"{subject}_{camera_id}.json"
        # Human3.6M's lens distortion model is not OpenCV's: give the pinhole K only
        calib.write_text(json.dumps({
            "camera_matrix": [[f[0], 0.0, c[0]], [0.0, f[1], c[1]], [0.0, 0.0, 1.0]],
        }))
        cases.append({"name": image.name, "image": image, "calib": calib,
                      "joints_2d_px": part[:, :2].astype(np.float64),
                      "joints_3d_m": s[:, :3].astype(np.float64)})
    return cases


def run_pipeline_on(image: Path, calib: Path, log_path: Path,
                    engine: str | None = None) -> list[Pose3D]:
    """Run the whole pipeline on one image; the poses a subscriber received."""
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    cmd = [
        sys.executable, str(REPO / "run_pipeline.py"), "--images", str(image), "--every-frame",
        "--calib", str(calib), "--publish", endpoint, "--wait-for-subscribers", "1",
        "--log-level", "INFO", "--detect-workers", "1",  # the stamps below name one detect
    ] + (["--engine", engine] if engine else [])
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        poses: list[Pose3D] = []
        try:
            stream = subscribe(endpoint, timeout_s=RUN_TIMEOUT_S)
            try:
                for msg in stream:
                    poses.append(msg)
                    break  # one image -> one pose
            finally:
                stream.close()
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
    tail = log_path.read_text(errors="replace")[-3000:]
    assert rc == 0, f"run_pipeline.py exited {rc} on {image.name}; its log ends:\n{tail}"
    assert poses, f"no pose received for {image.name} within {RUN_TIMEOUT_S} s; log:\n{tail}"
    return poses


@pytest.mark.parametrize("engine", list(ENGINES), ids=lambda e: e or "default")
def test_full_pipeline_mpjpe_on_human36m(tmp_path, engine):
    errors_mm, depth_errors_m, errors_2d_px = [], [], []
    for case in h36m_cases(tmp_path):
        (frame,) = run_pipeline_on(case["image"], case["calib"], tmp_path / f"{case['name']}.log",
                                   engine)
        assert frame.people, f"the pipeline found nobody in {case['name']}"
        assert [s[0] for s in frame.stamps] == ["capture", "detect", "track", "lift", "smooth",
                                                "output"]
        # the subject: the person whose 2D joints lie nearest Human3.6M's (the image may show
        # someone else too, or a tile may find part of the subject again)
        pose = min(frame.people, key=lambda p: float(np.median(
            np.linalg.norm(p.joints_2d_px - case["joints_2d_px"], axis=-1))))
        errors_2d_px.append(float(np.median(
            np.linalg.norm(pose.joints_2d_px - case["joints_2d_px"], axis=-1))))
        truth = case["joints_3d_m"]
        pred = pose.joints_3d_m.astype(np.float64)
        assert np.all(np.isfinite(pred))
        err = np.linalg.norm((pred - pred[ROOT]) - (truth - truth[ROOT]), axis=-1)
        errors_mm.append(float(np.mean(err)) * 1000.0)
        depth_errors_m.append(abs(float(pose.root_m[2]) - truth[ROOT, 2]))
        print(f"\n{case['name']}: MPJPE {errors_mm[-1]:.1f} mm, root depth "
              f"{pose.root_m[2]:.2f} m (truth {truth[ROOT, 2]:.2f} m), 2D median "
              f"{errors_2d_px[-1]:.1f} px, {len(frame.people)} people, engine {frame.engine_id}")
    mean_mm = float(np.mean(errors_mm))
    print(f"\nfull pipeline, Human3.6M (4 frames): root-relative MPJPE {mean_mm:.1f} mm "
          f"(per frame {', '.join(f'{e:.0f}' for e in errors_mm)}); mean root depth error "
          f"{np.mean(depth_errors_m):.2f} m")
    assert mean_mm <= ENGINES[engine], f"{engine or 'default'}: {mean_mm:.1f} mm"
    # the detector's joints are where Human3.6M's are (1000 px images; measured 4-13 px)
    assert max(errors_2d_px) < 25.0
