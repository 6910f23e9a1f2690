"""run_pipeline.py checks what it can before any stage process starts: the `--calib` file
(missing, unparsable, no camera matrix, another aspect ratio than the source's frames) and
the `--endpoints FILE.json` file. Each bad case exits 2 with a message naming the file and
what is wrong; no stage is started, so nothing is restarted in a loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

VIDEO = "data/footage/openpose/examples/media/video.avi"  # 1280x720


def _run(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run_pipeline.py", *flags, "--log-level", "DEBUG"], cwd=REPO,
        capture_output=True, text=True, timeout=120,
    )


def _no_stage_started(proc: subprocess.CompletedProcess) -> None:
    # the supervisor logs every stage start (and the warm spare's) at DEBUG
    assert "started stage" not in proc.stderr and "warm spare" not in proc.stderr, proc.stderr
    assert "restarting" not in proc.stderr, proc.stderr  # the supervisor's restart line
    assert "Traceback" not in proc.stderr, proc.stderr


def _calib_json(path: Path, width: int, height: int) -> Path:
    f = 0.9 * width
    path.write_text(json.dumps({
        "camera_matrix": [[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]],
        "image_width": width, "image_height": height,
    }))
    return path


def _cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    """case -> (calibration file, what the message must say)."""
    bad_json = tmp / "broken.json"
    bad_json.write_text('{"camera_matrix": [[1000, 0, 640], [0, 1000')
    bad_yaml = tmp / "broken.yaml"
    bad_yaml.write_text("camera_matrix: [1, 2\n  - : : {\n")
    no_matrix = tmp / "nomatrix.yaml"
    no_matrix.write_text("focal: 1000\nimage_width: 1280\n")
    opencv = tmp / "opencv.yaml"
    opencv.write_text("%YAML:1.0\n---\ncamera_matrix: !!opencv-matrix\n   rows: 3\n  cols: [\n")
    return {
        "missing": (tmp / "no_such_calib.yaml", "does not exist"),
        "unparsable json": (bad_json, "neither JSON nor YAML"),
        "unparsable yaml": (bad_yaml, "neither JSON nor YAML"),
        "unparsable opencv": (opencv, "is not valid OpenCV YAML"),
        "no camera matrix": (no_matrix, "no camera matrix found"),
        "wrong aspect": (_calib_json(tmp / "vga.json", 640, 480),
                         "made for 640x480 images but frames are 1280x720"),
    }


@pytest.mark.parametrize("case", ["missing", "unparsable json", "unparsable yaml",
                                  "unparsable opencv", "no camera matrix", "wrong aspect"])
def test_a_bad_calib_file_exits_2_before_any_stage_starts(case, tmp_path, shared_file):
    calib, says = _cases(tmp_path)[case]
    proc = _run("--video", str(shared_file(VIDEO)), "--calib", str(calib))
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert errors and str(calib) in errors[0], proc.stderr[-3000:]  # names the file
    assert says in errors[0], errors
    _no_stage_started(proc)


def test_the_aspect_check_uses_the_sources_frame_size(tmp_path, shared_dir, shared_file):
    """The frame size is the source's own: the h36m image set's first image is 1000x1002
    (about 1:1), so a 1280x720 calibration is refused there too."""
    shared_file("data/footage/mmpose/tests/data/h36m")
    images = str(shared_dir / "data/footage/mmpose/tests/data/h36m/*/*/*.jpg")
    wide = _calib_json(tmp_path / "wide.json", 1280, 720)
    proc = _run("--images", images, "--calib", str(wide), "--max-frames", "1")
    assert proc.returncode == 2 and "made for 1280x720 images but frames are" in proc.stderr, \
        proc.stderr[-3000:]
    _no_stage_started(proc)


def test_a_good_calib_file_passes_the_preflight(tmp_path):
    """The check itself, as the supervisor runs it: a calibration for the source's aspect
    ratio at another resolution is scaled, not refused."""
    from engines.runtime.intrinsics import CalibrationError, check_calibration_file

    tmp = tmp_path
    intr = check_calibration_file(_calib_json(tmp / "hd.json", 640, 360), (1280, 720))
    assert intr.image_size == (1280, 720)
    np.testing.assert_allclose((intr.fx, intr.cx, intr.cy), (0.9 * 1280, 640, 360))
    with pytest.raises(CalibrationError, match="another aspect ratio"):
        check_calibration_file(tmp / "hd.json", (1000, 1002))


# --------------------------------------------------------------------------- --endpoints
def test_endpoints_file_becomes_the_config_and_endpoint_flags_win(tmp_path):
    from run_pipeline import build_parser, config_from_args

    path = tmp_path / "edges.json"
    path.write_text(json.dumps({"capture-detect": "tcp://10.0.0.5:5560",
                                "detect-lift": "tcp://127.0.0.1:5561"}))
    args = build_parser().parse_args(
        ["--endpoints", str(path), "--endpoint", "detect-lift=tcp://127.0.0.1:5599"])
    config = config_from_args(args)
    assert dict(config.topology.endpoints) == {"capture-detect": "tcp://10.0.0.5:5560",
                                               "detect-lift": "tcp://127.0.0.1:5599"}


@pytest.mark.parametrize("content,says", [
    (None, "No such file"),
    ('{"capture-detect": "tcp://127.0.0.1:5560",', "Expecting"),
    ('["capture-detect", "tcp://127.0.0.1:5560"]', "expected a JSON object"),
    ('{"capture-detect": 5560}', "expected a JSON object"),
])
def test_a_bad_endpoints_file_exits_2_naming_it(content, says, tmp_path):
    path = tmp_path / "edges.json"
    if content is not None:
        path.write_text(content)
    proc = _run("--video", "unused.mp4", "--endpoints", str(path))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"--endpoints {path}" in proc.stderr and says in proc.stderr, proc.stderr[-3000:]
    _no_stage_started(proc)


def test_endpoints_file_edges_reach_the_running_graph(tmp_path, shared_file):
    """An --endpoints file that names an edge this run does not have is refused, like the
    same --endpoint flag (the graph checks both alike)."""
    path = tmp_path / "edges.json"
    path.write_text(json.dumps({"capture-nowhere": "tcp://127.0.0.1:5560"}))
    flag = _run("--video", str(shared_file(VIDEO)), "--endpoint",
                "capture-nowhere=tcp://127.0.0.1:5560")
    from_file = _run("--video", str(shared_file(VIDEO)), "--endpoints", str(path))
    assert flag.returncode == from_file.returncode == 2, (flag.stderr, from_file.stderr)
    assert "capture-nowhere" in from_file.stderr
    last = lambda p: p.stderr.strip().splitlines()[-1]
    assert last(flag) == last(from_file)
    _no_stage_started(from_file)
