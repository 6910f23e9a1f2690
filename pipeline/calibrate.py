"""Camera calibration from chessboard views (OpenCV), and the file the lift stage's `--calib` reads.

This module is a tool, not a pipeline stage: it defines no Stage subclass and the runner never
starts it. It lives beside the capture stage because it talks to the same cameras.

Usage:

    python -m pipeline.calibrate --images "shots/*.png" --board 9x6 --square-mm 25 --out calib.yaml
    python -m pipeline.calibrate --camera 0 --views 20 --board 9x6 --square-mm 25 --out calib.yaml
    python -m pipeline.calibrate --video board.mp4 --board 9x6 --square-mm 25 --out calib.yaml

`--board COLSxROWS` counts the *inner* corners (where four squares meet): the common printed
10x7-square board has 9x6 inner corners. With `--camera` or `--video` the tool keeps a frame
whenever the whole board is seen and it has moved since the last kept view; move and tilt the
board through the image (corners, edges, near and far) until `--views` views are kept.

The calibration file (an OpenCV FileStorage YAML; `cv2.FileStorage(path, READ)` reads it in C++,
Python or any OpenCV binding):

    %YAML:1.0
    ---
    camera_matrix: !!opencv-matrix     # K (3, 3) float64 px: [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
       rows: 3
       cols: 3
       dt: d
       data: [ ... ]
    dist_coeffs: !!opencv-matrix       # (1, N) float64, OpenCV order k1 k2 p1 p2 [k3 ...]
       ...
    image_width: 1280                  # pixels: the size the camera matrix refers to
    image_height: 720
    rms_error_px: 0.31                 # RMS reprojection error of the fit, pixels
    num_views: 20                      # chessboard views used
    board_inner_corners: "9x6"
    square_mm: 25.
    created_utc: "2026-11-24T12:00:00Z"

Only `camera_matrix`, `dist_coeffs`, `image_width` and `image_height` are required to read a
file (`load_calibration`); the rest documents how it was made. The camera matrix is valid only
for frames of exactly `image_width` x `image_height`: calibrate at the resolution you run at.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.view import has_display
from stages.capture import camera_hint

log = logging.getLogger(__name__)

#: the dist_coeffs lengths OpenCV understands.
VALID_DIST_LENGTHS: tuple[int, ...] = (4, 5, 8, 12, 14)


class CalibrationError(ValueError):
    """A calibration that cannot be made or a calibration file that cannot be used."""


@dataclass(frozen=True)
class BoardSpec:
    """A printed chessboard. cols x rows: inner corners; square_mm: side of one square, mm."""

    cols: int = 9
    rows: int = 6
    square_mm: float = 25.0

    def __post_init__(self) -> None:
        if self.cols < 2 or self.rows < 2:
            raise CalibrationError(
                f"board {self.cols}x{self.rows}: needs at least 2x2 inner corners "
                "(count where four squares meet: a 10x7-square board is 9x6)"
            )
        if self.cols == self.rows:
            # a square corner grid has a 90-degree ambiguity in corner order
            raise CalibrationError(
                f"board {self.cols}x{self.rows}: use a board whose inner-corner counts differ "
                "(e.g. 9x6), or corner order is ambiguous"
            )
        if not (math.isfinite(self.square_mm) and self.square_mm > 0):
            raise CalibrationError(f"square size must be > 0 mm, got {self.square_mm}")

    @property
    def pattern_size(self) -> tuple[int, int]:
        """(cols, rows) as OpenCV's findChessboardCorners wants it."""
        return (self.cols, self.rows)


@dataclass(frozen=True)
class Calibration:
    """The result of a fit.

    camera_matrix: (3, 3) float64 px. dist_coeffs: (N,) float64 (OpenCV order).
    image_size: (width, height) px. rms_error_px: RMS reprojection error, px.
    """

    camera_matrix: np.ndarray
    dist_coeffs: np.ndarray
    image_size: tuple[int, int]
    rms_error_px: float
    num_views: int
    board: BoardSpec


def parse_board(text: str) -> tuple[int, int]:
    """"9x6" -> (9, 6). Raises CalibrationError for anything else."""
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise CalibrationError(f"--board must be COLSxROWS inner corners like 9x6, got {text!r}")
    return int(parts[0]), int(parts[1])


def board_points_mm(board: BoardSpec) -> np.ndarray:
    """(cols*rows, 3) float32, mm: the inner corners on the board plane (z = 0), in the row-major
    order findChessboardCorners reports them (x along a row, then the next row)."""
    ys, xs = np.mgrid[0 : board.rows, 0 : board.cols]
    pts = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], axis=1)
    return (pts * board.square_mm).astype(np.float32)


def find_corners(image_bgr: np.ndarray, board: BoardSpec) -> np.ndarray | None:
    """The board's inner corners in one image, or None when the whole board is not seen.

    image_bgr: (H, W, 3) uint8 or (H, W) uint8 grey. Returns (cols*rows, 2) float32 px,
    refined to sub-pixel accuracy.
    """
    grey = image_bgr if image_bgr.ndim == 2 else cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_FAST_CHECK
    found, corners = cv2.findChessboardCorners(grey, board.pattern_size, flags=flags)
    if not found:
        return None
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 40, 1e-3)
    corners = cv2.cornerSubPix(grey, corners, (5, 5), (-1, -1), criteria)
    return corners.reshape(-1, 2).astype(np.float32)


def calibrate(
    corners_px: list[np.ndarray],
    image_size: tuple[int, int],
    board: BoardSpec,
    fit_k3: bool = False,
) -> Calibration:
    """Fit intrinsics and distortion (k1 k2 p1 p2, and k3 when `fit_k3`) to chessboard views.

    corners_px: one (cols*rows, 2) float32 px array per view. image_size: (width, height) px.
    k3 stays 0 by default: ordinary webcam lenses do not need it and, fitted to boards that
    rarely reach the image corners, it overfits and bends the corners wildly.
    Raises CalibrationError with fewer than 3 views or a failed fit.
    """
    if len(corners_px) < 3:
        raise CalibrationError(
            f"{len(corners_px)} chessboard views found, need at least 3 (10-20 recommended): "
            "check --board counts inner corners and the board is fully in view"
        )
    obj = board_points_mm(board)
    object_points = [obj] * len(corners_px)
    image_points = [c.reshape(-1, 1, 2).astype(np.float32) for c in corners_px]
    try:
        rms, camera_matrix, dist, _, _ = cv2.calibrateCamera(
            object_points,
            image_points,
            tuple(int(s) for s in image_size),
            None,
            None,
            flags=0 if fit_k3 else cv2.CALIB_FIX_K3,
        )
    except cv2.error as exc:
        raise CalibrationError(f"OpenCV calibration failed: {exc}") from exc
    calib = Calibration(
        camera_matrix=np.asarray(camera_matrix, dtype=np.float64),
        dist_coeffs=np.asarray(dist, dtype=np.float64).ravel(),
        image_size=(int(image_size[0]), int(image_size[1])),
        rms_error_px=float(rms),
        num_views=len(corners_px),
        board=board,
    )
    validate_intrinsics(calib.camera_matrix, calib.dist_coeffs, calib.image_size, "the fit")
    return calib


def validate_intrinsics(
    camera_matrix: np.ndarray, dist_coeffs: np.ndarray, image_size: tuple[int, int], where: str
) -> None:
    """Raise CalibrationError unless K, distortion and image size make physical sense.

    `where` names the source in the message (a file path, "the fit").
    """
    w, h = image_size
    if not (0 < w <= 65535 and 0 < h <= 65535):
        raise CalibrationError(f"{where}: image size {w}x{h} px is not a real image size")
    K = np.asarray(camera_matrix)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise CalibrationError(f"{where}: camera_matrix must be a finite 3x3 matrix, got {K!r}")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if not (fx > 0 and fy > 0):
        raise CalibrationError(f"{where}: focal lengths must be > 0 px, got fx={fx}, fy={fy}")
    if not 0.2 < fx / fy < 5.0:
        raise CalibrationError(f"{where}: fx/fy = {fx / fy:.3f} is not a real camera")
    if not (0 <= cx <= w and 0 <= cy <= h):
        raise CalibrationError(
            f"{where}: principal point ({cx:.1f}, {cy:.1f}) px lies outside the "
            f"{w}x{h} image: is image_width/image_height the size it was calibrated at?"
        )
    if abs(K[1, 0]) > 1e-9 or abs(K[2, 0]) > 1e-9 or abs(K[2, 1]) > 1e-9 or abs(K[2, 2] - 1) > 1e-9:
        raise CalibrationError(
            f"{where}: camera_matrix must look like [[fx, s, cx], [0, fy, cy], [0, 0, 1]], got "
            f"{K.tolist()}"
        )
    d = np.asarray(dist_coeffs).ravel()
    if d.size not in VALID_DIST_LENGTHS or not np.all(np.isfinite(d)):
        raise CalibrationError(
            f"{where}: dist_coeffs must be {VALID_DIST_LENGTHS} finite numbers, got {d.tolist()}"
        )


def save_calibration(path: str | os.PathLike, calib: Calibration) -> None:
    """Write `calib` as the OpenCV FileStorage YAML described in this module's docstring."""
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    if not fs.isOpened():
        raise CalibrationError(f"cannot write {path}: is the directory there and writable?")
    try:
        fs.write("camera_matrix", calib.camera_matrix)
        fs.write("dist_coeffs", calib.dist_coeffs.reshape(1, -1))
        fs.write("image_width", int(calib.image_size[0]))
        fs.write("image_height", int(calib.image_size[1]))
        fs.write("rms_error_px", float(calib.rms_error_px))
        fs.write("num_views", int(calib.num_views))
        fs.write("board_inner_corners", f"{calib.board.cols}x{calib.board.rows}")
        fs.write("square_mm", float(calib.board.square_mm))
        fs.write("created_utc", dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    finally:
        fs.release()


def load_calibration(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Read a calibration file written by this tool (or any OpenCV YAML/XML/JSON FileStorage
    with the same keys).

    Returns (K (3, 3) float64 px, dist (N,) float64, (width, height) px). Raises
    CalibrationError naming the file and what is wrong: missing file or key, not a FileStorage
    file, or values that are not a camera (non-positive focal length, principal point outside
    the image, bad distortion length, NaN).
    """
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(
            f"calibration file {p} not found: make one with "
            "`python -m pipeline.calibrate --camera N --out calib.yaml`"
        )
    try:
        fs = cv2.FileStorage(str(p), cv2.FILE_STORAGE_READ)
    except (cv2.error, SystemError) as exc:  # the binding wraps some parse errors in SystemError
        raise CalibrationError(f"{p} is not an OpenCV FileStorage file: {exc}") from exc
    if not fs.isOpened():
        raise CalibrationError(f"{p} could not be opened as an OpenCV FileStorage file")
    try:
        def node(key: str) -> cv2.FileNode:
            n = fs.getNode(key)
            if n.empty() or n.isNone():
                raise CalibrationError(
                    f"{p} has no {key!r}: a calibration file needs camera_matrix, dist_coeffs, "
                    "image_width and image_height"
                )
            return n

        K = node("camera_matrix").mat()
        dist = node("dist_coeffs").mat()
        w_node, h_node = node("image_width"), node("image_height")
        if not (w_node.isInt() and h_node.isInt()):
            raise CalibrationError(f"{p}: image_width and image_height must be integers")
        size = (int(w_node.real()), int(h_node.real()))
    finally:
        fs.release()
    if K is None or dist is None:
        raise CalibrationError(f"{p}: camera_matrix and dist_coeffs must be OpenCV matrices")
    K = np.asarray(K, dtype=np.float64)
    dist = np.asarray(dist, dtype=np.float64).ravel()
    validate_intrinsics(K, dist, size, str(p))
    return K, dist, size


# --------------------------------------------------------------------------- view sources
def views_from_images(pattern: str) -> Iterator[tuple[str, np.ndarray]]:
    """(path, image_bgr) for every image matching the glob, in sorted order."""
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise CalibrationError(f"no files match --images {pattern!r} (quote the glob)")
    for path in tqdm(paths, desc="chessboards", unit="img"):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            log.warning("%s: not an image OpenCV can read, skipped", path)
            continue
        yield path, image


def corners_from_capture(
    source: int | str, board: BoardSpec, views: int, timeout_s: float, show: bool
) -> tuple[list[np.ndarray], tuple[int, int]]:
    """Collect up to `views` distinct board views from a camera index or a video file.

    A frame is kept when the whole board is found and its corners moved on average more than
    5 % of the image width since the last kept view (so the views differ). A video ends at its
    last frame; a camera that stops delivering frames, or too few views within timeout_s, is
    an error. Returns the corner arrays and the frame size (width, height) px.
    """
    is_camera = isinstance(source, int)
    name = f"camera {source}" if is_camera else f"video {source}"
    if not is_camera and not Path(source).is_file():
        raise CalibrationError(f"{name} not found")
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise CalibrationError(
            f"{name} could not be opened: "
            + (camera_hint(source) if is_camera
               else "is it a video file OpenCV can decode?")
        )
    kept: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    deadline = time.monotonic() + timeout_s
    try:
        with tqdm(total=views, desc="board views", unit="view") as bar:
            while len(kept) < views:
                if is_camera and time.monotonic() > deadline:
                    raise CalibrationError(
                        f"only {len(kept)} of {views} board views in {timeout_s:.0f} s: "
                        "show the whole board, well lit, and move it between views"
                    )
                ok, frame = cap.read()
                if not ok:
                    if is_camera:
                        raise CalibrationError(f"{name} stopped delivering frames")
                    break  # end of the video
                size = (frame.shape[1], frame.shape[0])
                corners = find_corners(frame, board)
                if corners is not None and (
                    not kept
                    or np.linalg.norm(corners - kept[-1], axis=1).mean() > 0.05 * size[0]
                ):
                    kept.append(corners)
                    bar.update(1)
                if show:
                    preview = frame.copy()
                    if corners is not None:
                        cv2.drawChessboardCorners(
                            preview, board.pattern_size, corners.reshape(-1, 1, 2), True
                        )
                    cv2.imshow("posestream calibration (q: stop)", preview)
                    if cv2.waitKey(1) & 0xFF == ord("q"):
                        break
    finally:
        cap.release()
        if show:
            cv2.destroyAllWindows()
    return kept, size or (0, 0)


def corners_from_images(
    images: Iterable[tuple[str, np.ndarray]], board: BoardSpec
) -> tuple[list[np.ndarray], tuple[int, int]]:
    """Find the board in each image; all images must share one size. Returns (corners, (w, h))."""
    kept: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    for path, image in images:
        this_size = (image.shape[1], image.shape[0])
        if size is None:
            size = this_size
        elif this_size != size:
            raise CalibrationError(
                f"{path} is {this_size[0]}x{this_size[1]} but earlier images are "
                f"{size[0]}x{size[1]}: calibrate one resolution at a time"
            )
        corners = find_corners(image, board)
        if corners is None:
            log.info("%s: board not found", path)
            continue
        kept.append(corners)
    return kept, size or (0, 0)


def main(argv: list[str] | None = None, prog: str = "python -m pipeline.calibrate") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Calibrate a camera from chessboard views and write the YAML that "
        "`--calib` reads (camera matrix, distortion, image size, RMS error).",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", type=int, metavar="N", help="OpenCV camera index to capture from")
    src.add_argument("--video", metavar="FILE", help="a video of the board moving about")
    src.add_argument("--images", metavar="GLOB", help='chessboard photos, e.g. "shots/*.png"')
    parser.add_argument(
        "--board", default="9x6", help="inner corners COLSxROWS (a 10x7-square board is 9x6)"
    )
    parser.add_argument("--square-mm", type=float, default=25.0, help="side of one square, mm")
    parser.add_argument("--out", default="calib.yaml", help="calibration file to write")
    parser.add_argument(
        "--views", type=int, default=20, help="--camera/--video: board views to collect"
    )
    parser.add_argument(
        "--timeout-s", type=float, default=180.0, help="--camera: give up after this long"
    )
    parser.add_argument(
        "--no-preview", action="store_true",
        help="--camera/--video: no preview window even with a display",
    )
    parser.add_argument(
        "--k3", action="store_true",
        help="also fit k3 (wide-angle lenses; needs boards in the corners)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each image")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        cols, rows = parse_board(args.board)
        board = BoardSpec(cols=cols, rows=rows, square_mm=args.square_mm)
        if args.images is not None:
            corners, size = corners_from_images(views_from_images(args.images), board)
        else:
            corners, size = corners_from_capture(
                args.camera if args.video is None else args.video, board, args.views,
                args.timeout_s,
                show=has_display() and not args.no_preview,
            )
        calib = calibrate(corners, size, board, fit_k3=args.k3)
        save_calibration(args.out, calib)
    except CalibrationError as exc:
        print(f"calibration failed: {exc}", file=sys.stderr)
        return 2
    K = calib.camera_matrix
    print(
        f"{calib.num_views} views, {size[0]}x{size[1]} px: fx={K[0, 0]:.1f} fy={K[1, 1]:.1f} "
        f"cx={K[0, 2]:.1f} cy={K[1, 2]:.1f} px, RMS reprojection error "
        f"{calib.rms_error_px:.3f} px -> {args.out}"
    )
    if calib.rms_error_px > 1.0:
        print("warning: RMS error above 1 px; use more, sharper, better-spread views",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
