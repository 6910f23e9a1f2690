"""Camera intrinsics for the lift stage: from a horizontal field of view or a calibration file.

Pure functions (plus one file reader). Intrinsics are `(fx, fy, cx, cy)` in pixels for the
image size the frames actually have; a `(3, 3)` camera matrix `K` where a matrix is easier.
Lens distortion: when a calibration file gives OpenCV distortion coefficients (k1, k2, p1, p2
[, k3, ...]), `undistort_pixels` maps detected keypoints to where a pinhole camera with the same
K would see them; without coefficients keypoints are used as detected.

Calibration files (`--calib FILE`), detected by content:
- what OpenCV's `cv::FileStorage` writes (YAML with `%YAML:1.0` and `!!opencv-matrix`, XML,
  or JSON): a matrix node named `camera_matrix`, `cameraMatrix`, `K`, `mtx` or `intrinsics`;
- plain JSON or YAML: one of those keys holding a nested 3x3 list, a flat list of 9, or a
  `{rows: 3, cols: 3, data: [...]}` map (ROS `camera_info` files); or top-level keys
  `fx, fy, cx, cy`.
Optionally distortion coefficients under `dist_coeffs`, `distortion_coefficients`, `dist` or
`D` (OpenCV order), and `image_width` and `image_height` (or `width`/`height`, or
`image_size: [w, h]`): the resolution the calibration was made at. Frames of another size with the same aspect ratio get
the matrix scaled to them; a different aspect ratio is an error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: keys under which a calibration file may hold the 3x3 camera matrix.
MATRIX_KEYS: tuple[str, ...] = ("camera_matrix", "cameraMatrix", "K", "mtx", "intrinsics")
#: keys under which a calibration file may hold OpenCV distortion coefficients.
DIST_KEYS: tuple[str, ...] = ("dist_coeffs", "distortion_coefficients", "dist", "D")
#: numbers of distortion coefficients OpenCV accepts.
VALID_DIST_LENGTHS: tuple[int, ...] = (0, 4, 5, 8, 12, 14)
#: relative aspect-ratio difference tolerated when scaling a calibration to another image size.
ASPECT_TOLERANCE: float = 0.01


class CalibrationError(ValueError):
    """A calibration that cannot be used: unreadable, malformed or not fitting the images."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics, pixels. `image_size`: (width, height) they apply to, or None.
    `dist_coeffs`: OpenCV distortion coefficients (k1, k2, p1, p2, ...), empty for none."""

    fx: float
    fy: float
    cx: float
    cy: float
    image_size: tuple[int, int] | None = None
    dist_coeffs: tuple[float, ...] = ()

    def as_matrix(self) -> np.ndarray:
        """(3, 3) float64 camera matrix K."""
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], np.float64
        )


def intrinsics_from_fov(fov_deg: float, image_width: int, image_height: int) -> Intrinsics:
    """Square pixels, principal point at the image centre, horizontal field of view `fov_deg`.

    fx = fy = (width / 2) / tan(fov / 2); cx, cy = width / 2, height / 2.
    """
    if not (math.isfinite(fov_deg) and 1.0 < fov_deg < 179.0):
        raise CalibrationError(f"horizontal FOV must be between 1 and 179 degrees, got {fov_deg}")
    if image_width < 1 or image_height < 1:
        raise CalibrationError(f"image size must be positive, got {image_width}x{image_height}")
    f = 0.5 * image_width / math.tan(math.radians(fov_deg) / 2.0)
    return Intrinsics(f, f, 0.5 * image_width, 0.5 * image_height, (image_width, image_height))


def undistort_pixels(joints_2d_px: np.ndarray, intr: Intrinsics) -> np.ndarray:
    """(N, 2) detected pixels -> (N, 2) float64 pixels of an ideal pinhole camera with the same
    K (lens distortion removed). Returns the input (as float64) when there is no distortion."""
    px = np.asarray(joints_2d_px, dtype=np.float64).reshape(-1, 2)
    if not intr.dist_coeffs or not any(intr.dist_coeffs):
        return px.copy()
    import cv2

    k = intr.as_matrix()
    dist = np.asarray(intr.dist_coeffs, dtype=np.float64)
    out = cv2.undistortPoints(px.reshape(-1, 1, 2), k, dist, P=k)
    return out.reshape(-1, 2)


def _dist_tuple(dist: Any, source: str) -> tuple[float, ...]:
    if dist is None:
        return ()
    if isinstance(dist, dict):
        dist = dist.get("data", ())
    try:
        values = np.asarray(dist, dtype=np.float64).ravel()
    except (TypeError, ValueError) as err:
        raise CalibrationError(f"{source}: distortion coefficients are not numeric") from err
    if values.size not in VALID_DIST_LENGTHS or not np.all(np.isfinite(values)):
        raise CalibrationError(
            f"{source}: distortion coefficients must be {VALID_DIST_LENGTHS[1:]} finite numbers "
            f"in OpenCV order (k1, k2, p1, p2[, k3...]), got {values.tolist()}"
        )
    return tuple(float(v) for v in values)


def intrinsics_from_matrix(
    camera_matrix: np.ndarray, image_size: tuple[int, int] | None = None, source: str = "K",
    dist_coeffs: Any = None,
) -> Intrinsics:
    """(3, 3) camera matrix -> Intrinsics, checked: finite, fx, fy > 0, last row (0, 0, 1),
    no skew. `image_size` (width, height): the resolution it was calibrated at, if known.
    `dist_coeffs`: OpenCV distortion coefficients or None."""
    k = np.asarray(camera_matrix, dtype=np.float64)
    if k.shape != (3, 3):
        raise CalibrationError(f"{source}: a camera matrix is 3x3, got shape {k.shape}")
    if not np.all(np.isfinite(k)):
        raise CalibrationError(f"{source}: the camera matrix has non-finite values:\n{k}")
    if not np.allclose(k[2], [0.0, 0.0, 1.0], atol=1e-9):
        raise CalibrationError(
            f"{source}: the last row of a camera matrix must be [0, 0, 1], got {k[2].tolist()} "
            "(is this a projection or rotation matrix rather than the intrinsics?)"
        )
    if abs(k[0, 1]) > 1e-6 * max(abs(k[0, 0]), 1.0) or abs(k[1, 0]) > 1e-9:
        raise CalibrationError(
            f"{source}: skewed camera matrices are not supported (K[0,1]={k[0, 1]}, "
            f"K[1,0]={k[1, 0]})"
        )
    intr = Intrinsics(
        float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]), image_size,
        _dist_tuple(dist_coeffs, source),
    )
    if intr.fx <= 0 or intr.fy <= 0:
        raise CalibrationError(
            f"{source}: focal lengths must be positive pixels, got fx={intr.fx}, fy={intr.fy}"
        )
    if image_size is not None:
        validate_intrinsics(intr, image_size, source)
    return intr


def validate_intrinsics(intr: Intrinsics, image_size: tuple[int, int], source: str = "") -> None:
    """Raise CalibrationError unless intr is usable for frames of image_size (width, height):
    finite, fx, fy > 0, principal point inside the image."""
    width, height = image_size
    where = f"{source}: " if source else ""
    values = (intr.fx, intr.fy, intr.cx, intr.cy)
    if not all(math.isfinite(v) for v in values):
        raise CalibrationError(f"{where}intrinsics must be finite, got fx, fy, cx, cy = {values}")
    if intr.fx <= 0 or intr.fy <= 0:
        raise CalibrationError(
            f"{where}focal lengths must be positive pixels, got fx={intr.fx}, fy={intr.fy}"
        )
    if not (0.0 <= intr.cx <= width and 0.0 <= intr.cy <= height):
        raise CalibrationError(
            f"{where}principal point ({intr.cx:.1f}, {intr.cy:.1f}) px lies outside the "
            f"{width}x{height} image: was the calibration made at another resolution? Add "
            "image_width/image_height to the file, or use --fov instead"
        )


def for_image_size(intr: Intrinsics, image_size: tuple[int, int], source: str = "") -> Intrinsics:
    """Intrinsics for frames of image_size (width, height): the same when the calibration size
    is unknown or equal; scaled when it has the same aspect ratio; else CalibrationError."""
    width, height = image_size
    if intr.image_size is None or tuple(intr.image_size) == (width, height):
        out = dataclasses.replace(intr, image_size=(width, height))
    else:
        cal_w, cal_h = intr.image_size
        sx, sy = width / cal_w, height / cal_h
        if abs(sx - sy) > ASPECT_TOLERANCE * max(sx, sy):
            raise CalibrationError(
                f"{source or 'calibration'}: made for {cal_w}x{cal_h} images but frames are "
                f"{width}x{height} (another aspect ratio); calibrate at this resolution or "
                "use --fov"
            )
        logger.info("scaling calibration from %dx%d to %dx%d", cal_w, cal_h, width, height)
        # distortion coefficients act on normalised coordinates: unchanged by scaling
        out = dataclasses.replace(
            intr, fx=intr.fx * sx, fy=intr.fy * sy, cx=intr.cx * sx, cy=intr.cy * sy,
            image_size=(width, height),
        )
    validate_intrinsics(out, (width, height), source)
    return out


# --------------------------------------------------------------------------- files
def _matrix_from_value(value: Any, source: str) -> np.ndarray:
    if isinstance(value, dict):
        if "data" not in value:
            raise CalibrationError(f"{source}: a matrix map needs rows, cols and data")
        rows, cols = int(value.get("rows", 3)), int(value.get("cols", 3))
        data = np.asarray(value["data"], dtype=np.float64)
        if (rows, cols) != (3, 3) or data.size != 9:
            raise CalibrationError(
                f"{source}: camera matrix must be 3x3, got rows={rows} cols={cols} "
                f"with {data.size} values"
            )
        return data.reshape(3, 3)
    try:
        data = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise CalibrationError(f"{source}: camera matrix is not numeric: {value!r}") from err
    if data.size != 9:
        raise CalibrationError(f"{source}: camera matrix needs 9 numbers, got {data.size}")
    return data.reshape(3, 3)


def _image_size_from_mapping(data: dict, source: str) -> tuple[int, int] | None:
    if "image_size" in data:
        size = data["image_size"]
        if isinstance(size, dict):
            size = (size.get("width"), size.get("height"))
        try:
            width, height = (int(v) for v in size)
        except (TypeError, ValueError) as err:
            raise CalibrationError(f"{source}: image_size must be [width, height]") from err
        return width, height
    for wk, hk in (("image_width", "image_height"), ("width", "height")):
        if wk in data and hk in data:
            return int(data[wk]), int(data[hk])
    return None


def intrinsics_from_mapping(data: Any, source: str = "calibration") -> Intrinsics:
    """Parsed JSON/YAML content -> Intrinsics (see the module docstring for the keys).
    Raises CalibrationError naming `source` for anything it cannot use."""
    try:
        return _intrinsics_from_mapping(data, source)
    except CalibrationError:
        raise
    except (TypeError, ValueError, OverflowError, AttributeError) as err:
        # a value of the wrong kind deep inside (text where numbers belong, ...)
        raise CalibrationError(f"{source}: a value is not what a calibration holds ({err})"
                               ) from err


def _intrinsics_from_mapping(data: Any, source: str) -> Intrinsics:
    if not isinstance(data, dict):
        raise CalibrationError(
            f"{source}: expected a map with a camera_matrix (or fx, fy, cx, cy), "
            f"got {type(data).__name__}"
        )
    size = _image_size_from_mapping(data, source)
    dist = next((data[k] for k in DIST_KEYS if k in data), None)
    for key in MATRIX_KEYS:
        if key in data:
            return intrinsics_from_matrix(
                _matrix_from_value(data[key], source), size, source, dist
            )
    if all(k in data for k in ("fx", "fy", "cx", "cy")):
        matrix = [[data["fx"], 0, data["cx"]], [0, data["fy"], data["cy"]], [0, 0, 1]]
        return intrinsics_from_matrix(_matrix_from_value(matrix, source), size, source, dist)
    raise CalibrationError(
        f"{source}: no camera matrix found; expected one of the keys {list(MATRIX_KEYS)} "
        f"or fx, fy, cx, cy (found keys: {sorted(map(str, data))})"
    )


def _read_opencv_yaml(text: str, path: Path) -> Intrinsics:
    """What cv::FileStorage writes as YAML (`%YAML:1.0`, `!!opencv-matrix` maps), read with
    PyYAML: OpenCV's own parser corrupts its heap on some malformed files (found by
    bench/fuzz.py: "free(): invalid next size", the process aborts), so it never reads one."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def matrix(loader: yaml.SafeLoader, node: yaml.Node) -> dict:
        if not isinstance(node, yaml.MappingNode):
            raise CalibrationError(f"{path}: an !!opencv-matrix must be a map")
        return loader.construct_mapping(node, deep=True)

    Loader.add_constructor("tag:yaml.org,2002:opencv-matrix", matrix)
    lines = text.lstrip().splitlines()
    if lines and lines[0].startswith("%YAML"):  # "%YAML:1.0" is OpenCV's, not YAML's
        lines = lines[1:]
    try:
        data = yaml.load("\n".join(lines), Loader=Loader)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, ValueError, TypeError) as err:
        raise CalibrationError(f"calibration file {path} is not valid OpenCV YAML: {err}") from err
    return intrinsics_from_mapping(data, str(path))


def _read_opencv_filestorage(path: Path) -> Intrinsics:
    import cv2

    try:
        return _read_filestorage(cv2, path)
    except (cv2.error, SystemError) as exc:  # its parser asserts on malformed files
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CalibrationError(f"{path}: OpenCV could not read it as a calibration file "
                               f"({first})") from exc


def _read_filestorage(cv2, path: Path) -> Intrinsics:
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    try:
        if not fs.isOpened():
            raise CalibrationError(f"{path}: OpenCV FileStorage could not open it")
        matrix = None
        for key in MATRIX_KEYS:
            node = fs.getNode(key)
            if not node.empty():
                matrix = node.mat()
                break
        if matrix is None:
            raise CalibrationError(
                f"{path}: no camera matrix node; expected one named one of {list(MATRIX_KEYS)}"
            )
        dist = None
        for key in DIST_KEYS:
            node = fs.getNode(key)
            if not node.empty() and not node.isNone():
                dist = node.mat()
                break
        size = None
        for wk, hk in (("image_width", "image_height"), ("width", "height")):
            w_node, h_node = fs.getNode(wk), fs.getNode(hk)
            if not w_node.empty() and not h_node.empty():
                size = (int(w_node.real()), int(h_node.real()))
                break
    finally:
        fs.release()
    return intrinsics_from_matrix(matrix, size, str(path), dist)


def load_calibration(path: str | Path) -> Intrinsics:
    """Read a camera calibration file (see the module docstring). Raises CalibrationError
    naming the file and what was wrong."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration file {path} does not exist; check --calib")
    text = path.read_text(errors="replace")
    head = text.lstrip()[:200]
    if head.startswith("<?xml") or "opencv_storage" in head:  # JSON ones json reads below
        return _read_opencv_filestorage(path)
    if head.startswith("%YAML") or "!!opencv-matrix" in text:
        return _read_opencv_yaml(text, path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise CalibrationError(
                f"calibration file {path} is neither JSON nor YAML: {err}"
            ) from err
    return intrinsics_from_mapping(data, str(path))


def check_calibration_file(
    path: str | Path, frame_size: tuple[int, int] | None = None
) -> Intrinsics:
    """The `--calib` preflight: read `path` and, when the source's frame size (width, height)
    is known before the run starts, fit it to that size. Returns the intrinsics for
    `frame_size` (or as read). Raises CalibrationError naming the file and what is wrong
    (missing, unparsable, no usable camera matrix, another aspect ratio than the frames)."""
    intr = load_calibration(path)
    if frame_size is None:
        return intr
    return for_image_size(intr, (int(frame_size[0]), int(frame_size[1])), str(path))
