"""pipeline.calibrate: chessboard images rendered under known intrinsics calibrate back to those
intrinsics; the calibration file round-trips and nonsense files fail with clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.calibrate import (
    BoardSpec,
    Calibration,
    CalibrationError,
    board_points_mm,
    calibrate,
    corners_from_images,
    load_calibration,
    save_calibration,
)

REPO = Path(__file__).resolve().parents[1]
BOARD = BoardSpec(cols=9, rows=6, square_mm=25.0)
IMAGE_SIZE = (640, 480)  # (width, height) px
# the camera the test images are rendered with: slightly anisotropic, off-centre
K_TRUE = np.array([[610.0, 0.0, 327.0], [0.0, 590.0, 236.0], [0.0, 0.0, 1.0]])
SQUARE_PX = 40  # texture pixels per board square


def _board_texture() -> tuple[np.ndarray, np.ndarray]:
    """A flat chessboard (cols+1 x rows+1 squares, one-square white margin) and the (3, 3)
    affine map from texture pixels to board-plane mm (origin at the first inner corner)."""
    n_x, n_y = BOARD.cols + 1, BOARD.rows + 1
    tex = np.full(((n_y + 2) * SQUARE_PX, (n_x + 2) * SQUARE_PX), 255, np.uint8)
    for j in range(n_y):
        for i in range(n_x):
            if (i + j) % 2 == 0:
                y0, x0 = (j + 1) * SQUARE_PX, (i + 1) * SQUARE_PX
                tex[y0 : y0 + SQUARE_PX, x0 : x0 + SQUARE_PX] = 0
    s = BOARD.square_mm / SQUARE_PX
    # texture pixel centres are at integer coordinates, so a square's edge is at k*S - 0.5
    off = -(2 * SQUARE_PX - 0.5) * s
    tex_to_mm = np.array([[s, 0, off], [0, s, off], [0, 0, 1]])
    return tex, tex_to_mm


def _render_view(rvec_deg: tuple[float, float, float], centre_mm: tuple[float, float, float]):
    """(H, W, 3) uint8 image of the board rotated by rvec (degrees, Rodrigues) with its centre
    at centre_mm in the camera frame, and the board corners projected with cv2.projectPoints."""
    tex, tex_to_mm = _board_texture()
    R, _ = cv2.Rodrigues(np.deg2rad(np.array(rvec_deg, dtype=np.float64)))
    board_centre = np.array([(BOARD.cols - 1) / 2, (BOARD.rows - 1) / 2, 0.0]) * BOARD.square_mm
    t = np.array(centre_mm) - R @ board_centre
    H_board_to_img = K_TRUE @ np.column_stack([R[:, 0], R[:, 1], t])
    H = H_board_to_img @ tex_to_mm
    grey = cv2.warpPerspective(
        tex, H, IMAGE_SIZE, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=128
    )
    projected, _ = cv2.projectPoints(board_points_mm(BOARD), cv2.Rodrigues(R)[0], t, K_TRUE, None)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), projected.reshape(-1, 2)


# (rotation deg, board centre mm in the camera frame): tilted both ways, near and far, off-axis
POSES = [
    ((0, 0, 0), (0, 0, 600)),
    ((30, 0, 0), (-40, 20, 550)),
    ((-30, 0, 5), (30, -20, 560)),
    ((0, 35, 0), (20, 10, 580)),
    ((0, -35, -5), (-20, 0, 570)),
    ((25, 25, 10), (60, 40, 650)),
    ((-25, 20, -10), (-60, -40, 640)),
    ((20, -30, 15), (70, -30, 700)),
    ((-15, -25, 0), (-80, 50, 700)),
    ((10, 10, 30), (0, 0, 520)),
]


@pytest.fixture(scope="module")
def board_images(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    folder = tmp_path_factory.mktemp("boards")
    truth = []
    for k, (rvec, centre) in enumerate(POSES):
        image, corners = _render_view(rvec, centre)
        cv2.imwrite(str(folder / f"board_{k:02d}.png"), image)
        truth.append(corners)
    return folder, truth


def test_rendered_boards_calibrate_back_to_the_true_intrinsics(board_images):
    folder, truth = board_images
    images = [(str(p), cv2.imread(str(p))) for p in sorted(folder.glob("*.png"))]
    corners, size = corners_from_images(images, BOARD)
    assert size == IMAGE_SIZE
    assert len(corners) == len(POSES), "the detector should find the board in every view"
    # detected corners agree with the projected ones (up to the detector's corner ordering)
    for found, true in zip(corners, truth):
        err = min(
            np.linalg.norm(found - true, axis=1).mean(),
            np.linalg.norm(found[::-1] - true, axis=1).mean(),
        )
        assert err < 0.35, f"detected corners {err:.2f} px (mean) from the projected ones"
    calib = calibrate(corners, size, BOARD)
    K = calib.camera_matrix
    assert abs(K[0, 0] / K_TRUE[0, 0] - 1) < 0.02, f"fx {K[0, 0]:.1f} vs {K_TRUE[0, 0]}"
    assert abs(K[1, 1] / K_TRUE[1, 1] - 1) < 0.02, f"fy {K[1, 1]:.1f} vs {K_TRUE[1, 1]}"
    assert abs(K[0, 2] - K_TRUE[0, 2]) < 8 and abs(K[1, 2] - K_TRUE[1, 2]) < 8
    assert calib.rms_error_px < 0.5
    # rendered without lens distortion: the fitted lens bends points inside the boards' area
    # by well under a pixel
    pts = np.concatenate(corners).reshape(-1, 1, 2)
    undistorted = cv2.undistortPoints(pts, K, calib.dist_coeffs, P=K).reshape(-1, 2)
    assert np.abs(undistorted - pts.reshape(-1, 2)).max() < 1.0
    assert calib.dist_coeffs[4] == 0.0  # k3 fixed unless asked for


def test_cli_writes_a_file_load_calibration_reads(board_images, tmp_path):
    folder, _ = board_images
    out = tmp_path / "calib.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.calibrate", "--images", str(folder / "*.png"),
         "--board", "9x6", "--square-mm", "25", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "fx=" in proc.stdout and str(out) in proc.stdout
    K, dist, size = load_calibration(out)
    assert size == IMAGE_SIZE
    assert abs(K[0, 0] / K_TRUE[0, 0] - 1) < 0.02
    assert dist.shape == (5,)
    # the lift stage's --calib reader takes the same file
    from engines.runtime.intrinsics import load_calibration as load_for_lift

    intr = load_for_lift(out)
    assert (intr.fx, intr.fy, intr.cx, intr.cy) == (K[0, 0], K[1, 1], K[0, 2], K[1, 2])
    fs = cv2.FileStorage(str(out), cv2.FILE_STORAGE_READ)
    assert fs.getNode("num_views").real() == len(POSES)
    assert fs.getNode("rms_error_px").real() < 0.5
    fs.release()


def test_cli_wrong_board_fails_with_a_clear_message(board_images, tmp_path):
    folder, _ = board_images
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.calibrate", "--images", str(folder / "*.png"),
         "--board", "8x5", "--out", str(tmp_path / "c.yaml")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "0 chessboard views found" in proc.stderr
    assert not (tmp_path / "c.yaml").exists()


def _calib(K=None, dist=None, size=IMAGE_SIZE) -> Calibration:
    return Calibration(
        camera_matrix=K_TRUE.copy() if K is None else np.asarray(K, dtype=np.float64),
        dist_coeffs=np.array([0.1, -0.05, 0.001, 0.002, 0.01]) if dist is None else dist,
        image_size=size,
        rms_error_px=0.2,
        num_views=12,
        board=BOARD,
    )


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    save_calibration(path, _calib())
    K, dist, size = load_calibration(path)
    np.testing.assert_array_equal(K, K_TRUE)
    np.testing.assert_array_equal(dist, [0.1, -0.05, 0.001, 0.002, 0.01])
    assert size == IMAGE_SIZE


@pytest.mark.parametrize(
    "K, dist, size, message",
    [
        ([[-600, 0, 320], [0, 600, 240], [0, 0, 1]], None, IMAGE_SIZE, "focal lengths must be > 0"),
        ([[600, 0, 900], [0, 600, 240], [0, 0, 1]], None, IMAGE_SIZE, "outside the"),
        ([[600, 0, 320], [0, 600, 240], [0, 0, 2]], None, IMAGE_SIZE, "must look like"),
        ([[np.nan, 0, 320], [0, 600, 240], [0, 0, 1]], None, IMAGE_SIZE, "finite 3x3"),
        (None, np.array([0.1, 0.2, 0.3]), IMAGE_SIZE, "dist_coeffs must be"),
        (None, None, (0, 480), "not a real image size"),
    ],
)
def test_nonsense_values_are_rejected(tmp_path, K, dist, size, message):
    path = tmp_path / "bad.yaml"
    # write without the validation calibrate() does, as a hand-edited file would be
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    c = _calib(K, dist, size)
    fs.write("camera_matrix", c.camera_matrix)
    fs.write("dist_coeffs", np.asarray(c.dist_coeffs, dtype=np.float64).reshape(1, -1))
    fs.write("image_width", int(size[0]))
    fs.write("image_height", int(size[1]))
    fs.release()
    with pytest.raises(CalibrationError, match=message) as info:
        load_calibration(path)
    assert str(path) in str(info.value)


def test_missing_file_key_and_garbage(tmp_path):
    with pytest.raises(CalibrationError, match="not found: make one"):
        load_calibration(tmp_path / "nope.yaml")
    path = tmp_path / "partial.yaml"
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    fs.write("camera_matrix", K_TRUE)
    fs.release()
    with pytest.raises(CalibrationError, match="no 'dist_coeffs'"):
        load_calibration(path)
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(os.urandom(64) + b"\x00{[")
    with pytest.raises(CalibrationError):
        load_calibration(garbage)


def test_board_spec_rejects_nonsense():
    with pytest.raises(CalibrationError, match="inner corners"):
        BoardSpec(cols=1, rows=6)
    with pytest.raises(CalibrationError, match="ambiguous"):
        BoardSpec(cols=7, rows=7)
    with pytest.raises(CalibrationError, match="> 0 mm"):
        BoardSpec(square_mm=0.0)


def test_cli_video_keeps_one_view_per_board_pose(tmp_path):
    """--video runs the camera loop on a file: each pose is held for 4 frames, and only frames
    where the board moved are kept, so 10 poses give 10 views."""
    path = tmp_path / "boards.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, IMAGE_SIZE)
    assert writer.isOpened(), "this OpenCV build cannot write MJPG AVI"
    for rvec, centre in POSES:
        image, _ = _render_view(rvec, centre)
        for _ in range(4):
            writer.write(image)
    writer.release()
    out = tmp_path / "calib.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.calibrate", "--video", str(path), "--views", "30",
         "--board", "9x6", "--square-mm", "25", "--out", str(out), "--no-preview"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{len(POSES)} views")
    K, _, size = load_calibration(out)
    assert size == IMAGE_SIZE
    assert abs(K[0, 0] / K_TRUE[0, 0] - 1) < 0.02 and abs(K[1, 1] / K_TRUE[1, 1] - 1) < 0.02
