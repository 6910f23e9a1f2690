"""Camera math: pure, batched numpy functions shared by the trainer, the evaluator and the runtime.

Frames and units (docs/DESIGN.md):
- World frame: right-handed, +Y up. Mocap poses are in millimetres, cameras here in metres:
  convert poses with `* 1e-3` before `world_to_camera`.
- Camera frame: OpenCV's, +X right, +Y down, +Z forward (the optical axis), metres.
- Extrinsics: `X_cam = R @ X_world + t` (`R`: world-to-camera rotation, `t_m`: metres). The camera
  centre in the world is `-R.T @ t`.
- Intrinsics: `fx, fy, cx, cy` in pixels; image `(width, height)` in pixels. Pixels: x right,
  y down, the centre of the top-left pixel at (0, 0).

Every function takes arrays with any leading batch shape `(...)` and broadcasts the camera
parameters over it; nothing here keeps state or imports torch (`engines/training/camera_torch.py` holds the
torch twins the trainer needs).
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.runtime.skeleton import NUM_JOINTS

logger = logging.getLogger(__name__)

#: Image sizes (width, height) px that `random_cameras` draws from by default: webcams (VGA,
#: 720p) and the Human3.6M cameras (1000 x 1000).
DEFAULT_IMAGE_SIZES_PX: tuple[tuple[int, int], ...] = ((640, 480), (1280, 720), (1000, 1000))

#: Rotation taking Human3.6M world coordinates (+Z up) to ours (+Y up): x -> x, z -> y, y -> -z.
H36M_WORLD_TO_WORLD: np.ndarray = np.array(
    [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=np.float64
)

#: Path of the Human3.6M camera file inside the shared data folder.
H36M_CAMERAS_RELPATH = Path("data/footage/mmpose/tests/data/h36m/cameras.pkl")


def default_shared_dir() -> Path:
    """The shared data folder: $POSESTREAM_SHARED, else `<repo>/../shared`."""
    repo = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("POSESTREAM_SHARED", repo.parent / "shared"))


@dataclass(frozen=True)
class Cameras:
    """A batch of pinhole cameras (no lens distortion), any leading batch shape `(...)`.

    R: (..., 3, 3) float64, world-to-camera rotation.
    t_m: (..., 3) float64, metres: `X_cam = R @ X_world + t_m`.
    fx, fy, cx, cy: (...,) float64, pixels.
    image_size_px: (..., 2) int64, (width, height) pixels.
    names: optional tuple of labels, one per camera of a 1-D batch (e.g. "S1/54138969").
    """

    R: np.ndarray
    t_m: np.ndarray
    fx: np.ndarray
    fy: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    image_size_px: np.ndarray
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("R", "t_m", "fx", "fy", "cx", "cy"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        object.__setattr__(self, "image_size_px", np.asarray(self.image_size_px, dtype=np.int64))
        batch = np.shape(self.fx)
        checks = {
            "R": (self.R, batch + (3, 3)), "t_m": (self.t_m, batch + (3,)),
            "fy": (self.fy, batch), "cx": (self.cx, batch), "cy": (self.cy, batch),
            "image_size_px": (self.image_size_px, batch + (2,)),
        }
        for name, (value, shape) in checks.items():
            if np.shape(value) != shape:
                raise ValueError(
                    f"Cameras.{name} has shape {np.shape(value)}, expected {shape} for a batch of "
                    f"shape {batch} (taken from fx); build Cameras with matching arrays"
                )
        if self.names is not None and len(self.names) != int(np.prod(batch)):
            raise ValueError(f"Cameras.names has {len(self.names)} entries for {batch} cameras")

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch shape `(...)` of the cameras."""
        return tuple(np.shape(self.fx))

    def __len__(self) -> int:
        return self.batch_shape[0] if self.batch_shape else 1

    def __getitem__(self, index) -> Cameras:
        """Cameras selected along the leading batch axes (numpy indexing rules)."""
        names = None
        if self.names is not None and len(self.batch_shape) == 1:
            picked = np.arange(len(self.names))[index]
            names = tuple(self.names[int(i)] for i in np.atleast_1d(picked))
        return Cameras(
            R=self.R[index], t_m=self.t_m[index], fx=self.fx[index], fy=self.fy[index],
            cx=self.cx[index], cy=self.cy[index], image_size_px=self.image_size_px[index],
            names=names,
        )

    @property
    def K(self) -> np.ndarray:
        """(..., 3, 3) float64 camera matrices."""
        return intrinsic_matrix(self.fx, self.fy, self.cx, self.cy)

    @property
    def centres_m(self) -> np.ndarray:
        """(..., 3) float64 camera centres in the world frame, metres: `-R.T @ t`."""
        return -np.einsum("...ji,...j->...i", self.R, self.t_m)

    def world_to_camera(self, points_world_m: np.ndarray) -> np.ndarray:
        """(..., P, 3) world metres -> (..., P, 3) camera metres (batch broadcast with cameras)."""
        return world_to_camera(points_world_m, self.R, self.t_m)

    def project(self, points_world_m: np.ndarray) -> np.ndarray:
        """(..., P, 3) world metres -> (..., P, 2) float64 pixels."""
        return project(self.world_to_camera(points_world_m), self.fx, self.fy, self.cx, self.cy)


def intrinsic_matrix(fx, fy, cx, cy) -> np.ndarray:
    """(..., 3, 3) float64 camera matrices K from (...,) focal lengths and principal points, px."""
    fx, fy, cx, cy = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (fx, fy, cx, cy)))
    K = np.zeros(fx.shape + (3, 3))
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = fx, fy, cx, cy, 1.0
    return K


def project(joints_cam: np.ndarray, fx, fy, cx, cy) -> np.ndarray:
    """Pinhole projection of camera-frame points to pixels.

    joints_cam: (..., J, 3) camera frame (+X right, +Y down, +Z forward), any length unit;
    fx, fy, cx, cy: scalars or arrays broadcastable to (...), pixels.
    Returns (..., J, 2) float64 pixels: (fx x / z + cx, fy y / z + cy). Points with z <= 0 are
    behind the camera and give inf/nan or mirrored values; keep subjects in front (z > 0).
    """
    joints_cam = np.asarray(joints_cam, dtype=np.float64)
    if joints_cam.shape[-1] != 3:
        raise ValueError(f"joints_cam must be (..., J, 3), got shape {joints_cam.shape}")
    xy = joints_cam[..., :2] / joints_cam[..., 2:3]
    f = np.stack(np.broadcast_arrays(np.asarray(fx, np.float64), np.asarray(fy, np.float64)), -1)
    c = np.stack(np.broadcast_arrays(np.asarray(cx, np.float64), np.asarray(cy, np.float64)), -1)
    return xy * f[..., None, :] + c[..., None, :]


def unproject(joints_2d_px: np.ndarray, depth: np.ndarray, fx, fy, cx, cy) -> np.ndarray:
    """Inverse of `project`: pixels and depths back to camera-frame points.

    joints_2d_px: (..., J, 2) pixels; depth: (..., J) z in the camera frame (any length unit).
    Returns (..., J, 3) float64 in the unit of `depth`.
    """
    px = np.asarray(joints_2d_px, dtype=np.float64)
    depth = np.asarray(depth, dtype=np.float64)
    f = np.stack(np.broadcast_arrays(np.asarray(fx, np.float64), np.asarray(fy, np.float64)), -1)
    c = np.stack(np.broadcast_arrays(np.asarray(cx, np.float64), np.asarray(cy, np.float64)), -1)
    xy = (px - c[..., None, :]) / f[..., None, :] * depth[..., None]
    return np.concatenate([xy, depth[..., None]], axis=-1)


def world_to_camera(points_world: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """`X_cam = R @ X_world + t` for every point.

    points_world: (..., P, 3); R: (..., 3, 3) world-to-camera; t: (..., 3) in the points' unit.
    Returns (..., P, 3) float64, camera frame.
    """
    points = np.asarray(points_world, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    return np.einsum("...ij,...pj->...pi", R, points) + t[..., None, :]


def camera_to_world(points_cam: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Inverse of `world_to_camera`: `X_world = R.T @ (X_cam - t)`.

    points_cam: (..., P, 3) camera frame; R: (..., 3, 3) world-to-camera; t: (..., 3).
    Returns (..., P, 3) float64, world frame.
    """
    points = np.asarray(points_cam, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    return np.einsum("...ji,...pj->...pi", R, points - t[..., None, :])


def relative_pose(R1: np.ndarray, t1: np.ndarray, R2: np.ndarray, t2: np.ndarray):
    """Pose of camera 2 relative to camera 1: `X_cam2 = R_1to2 @ X_cam1 + t_1to2`.

    R1, R2: (..., 3, 3) world-to-camera; t1, t2: (..., 3). Returns (R_1to2 = R2 R1^T (..., 3, 3),
    t_1to2 = t2 - R_1to2 t1 (..., 3)), float64, in the unit of t. (With camera centres
    C = -R^T t instead of t, t_1to2 = R2 (C1 - C2).)
    """
    R1, t1, R2, t2 = (np.asarray(a, dtype=np.float64) for a in (R1, t1, R2, t2))
    R12 = np.einsum("...ij,...kj->...ik", R2, R1)
    return R12, t2 - np.einsum("...ij,...j->...i", R12, t1)


def rotation_about_axis(axis: str, angle) -> np.ndarray:
    """(..., 3, 3) float64 right-handed rotation by `angle` (radians, (...)) about "x", "y" or "z"."""
    angle = np.asarray(angle, dtype=np.float64)
    c, s = np.cos(angle), np.sin(angle)
    o, z = np.ones_like(angle), np.zeros_like(angle)
    rows = {
        "x": ((o, z, z), (z, c, -s), (z, s, c)),
        "y": ((c, z, s), (z, o, z), (-s, z, c)),
        "z": ((c, -s, z), (s, c, z), (z, z, o)),
    }
    if axis not in rows:
        raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
    return np.stack([np.stack(r, axis=-1) for r in rows[axis]], axis=-2)


def viewing_direction(azimuth, elevation) -> np.ndarray:
    """(..., 3) unit vector from the target to a camera at (azimuth, elevation), world +Y up.

    azimuth: radians about +Y, 0 on the +Z axis, pi/2 on the +X axis; elevation: radians above
    the horizontal plane (positive: camera above the target, looking down).
    """
    az = np.asarray(azimuth, dtype=np.float64)
    el = np.asarray(elevation, dtype=np.float64)
    return np.stack([np.cos(el) * np.sin(az), np.sin(el) * np.ones_like(az),
                     np.cos(el) * np.cos(az)], axis=-1)


def rotation_from_azimuth_elevation(azimuth, elevation, roll=0.0) -> np.ndarray:
    """World-to-camera rotation of a camera at (azimuth, elevation) looking at the target.

    azimuth, elevation: radians, broadcastable (...); see `viewing_direction`. roll: radians,
    a turn of the camera about its optical axis (from its +X towards its +Y).
    |elevation| must be < pi/2.
    The camera's optical axis (+Z) points at the target, its +X is horizontal and its +Y has a
    downward world component, so the world +Y axis appears up in the image.
    Returns (..., 3, 3) float64; rows are the camera axes in world coordinates.
    At azimuth 0, elevation 0 the camera sits on +Z looking towards -Z, with camera +X = world +X
    (a subject facing +Z is seen from the front, its left side on the image's right).
    """
    az = np.asarray(azimuth, dtype=np.float64)
    el = np.asarray(elevation, dtype=np.float64)
    if np.any(np.abs(el) >= np.pi / 2):
        raise ValueError("elevation must lie strictly between -pi/2 and pi/2 radians")
    az, el, roll = np.broadcast_arrays(az, el, np.asarray(roll, dtype=np.float64))
    forward = -viewing_direction(az, el)
    right = np.stack([np.cos(az), np.zeros_like(az), -np.sin(az)], axis=-1)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward], axis=-2)
    if np.any(roll != 0):
        R = np.einsum("...ij,...jk->...ik", rotation_about_axis("z", roll), R)
    return R


def look_at_extrinsics(azimuth, elevation, distance_m, target_m=(0.0, 0.0, 0.0), roll=0.0):
    """(R (..., 3, 3), t_m (..., 3)) of cameras `distance_m` from `target_m` (world, metres),
    at (azimuth, elevation) and looking at it (see `rotation_from_azimuth_elevation`)."""
    R = rotation_from_azimuth_elevation(azimuth, elevation, roll)
    target = np.asarray(target_m, dtype=np.float64)
    centre = target + np.asarray(distance_m, dtype=np.float64)[..., None] * viewing_direction(
        azimuth, elevation)
    return R, -np.einsum("...ij,...j->...i", R, centre)


def _uniform(rng: np.random.Generator, bounds, size) -> np.ndarray:
    lo, hi = (float(b) for b in bounds)
    if hi < lo:
        raise ValueError(f"range {bounds} has its upper bound below its lower bound")
    return rng.uniform(lo, hi, size)


def random_cameras(
    n: int,
    rng: np.random.Generator,
    azimuth: tuple[float, float] = (-np.pi, np.pi),
    elevation: tuple[float, float] = (-np.pi / 18, np.pi / 6),
    distance_m: tuple[float, float] = (3.0, 7.0),
    focal_px: tuple[float, float] = (500.0, 1200.0),
    image_size: tuple[tuple[int, int], ...] = DEFAULT_IMAGE_SIZES_PX,
    target_m: tuple[float, float, float] = (0.0, 0.0, 0.0),
    subject_radius_m: float = 1.2,
    roll: tuple[float, float] = (0.0, 0.0),
) -> Cameras:
    """`n` random cameras on a sphere around the subject, each looking at `target_m`.

    The subject (a root-relative pose, pelvis at `target_m`, world +Y up, metres) is seen from
    azimuth ~ U(azimuth), elevation ~ U(elevation) (radians, see `viewing_direction`), roll
    ~ U(roll). Image size: drawn uniformly from `image_size` ((width, height) px pairs); the
    principal point is the image centre; fx = fy ~ U(focal_px). The defaults span webcams
    (500-1000 px at 640-1280 wide) and the Human3.6M cameras (about 1145 px at 1000 x 1000).
    Distance ~ U(distance_m), but never less than the distance at which a sphere of radius
    `subject_radius_m` around the target fits inside the image; where a camera's minimum is above
    the range the distance is drawn from [minimum, minimum + range width]. So every joint within
    `subject_radius_m` of the pelvis projects inside the image.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    sizes = np.asarray(image_size, dtype=np.int64).reshape(-1, 2)
    size = sizes[rng.integers(0, len(sizes), n)]
    focal = _uniform(rng, focal_px, n)
    half_min_side = 0.5 * size.min(axis=1)
    # Image of a sphere of radius r at distance d: a disc of radius f r / sqrt(d^2 - r^2) <=
    # f r / (d - r); it fits when f r / (d - r) <= half the shorter side.
    d_fit = subject_radius_m + focal * subject_radius_m / half_min_side
    lo, hi = (float(b) for b in distance_m)
    u = _uniform(rng, (0.0, 1.0), n)
    start = np.maximum(lo, d_fit)
    distance = start + u * (hi - lo)
    az = _uniform(rng, azimuth, n)
    el = _uniform(rng, elevation, n)
    rl = _uniform(rng, roll, n)
    R, t = look_at_extrinsics(az, el, distance, target_m, rl)
    return Cameras(
        R=R, t_m=t, fx=focal, fy=focal.copy(), cx=(size[:, 0] - 1) / 2.0,
        cy=(size[:, 1] - 1) / 2.0, image_size_px=size,
    )


def multiview_rig(
    n_views: int,
    rng: np.random.Generator,
    n_rigs: int | None = None,
    azimuth_jitter: float = np.pi / 8,
    **camera_ranges,
) -> Cameras:
    """Synchronized cameras around one subject, with known relative poses.

    Each rig spreads `n_views` cameras evenly in azimuth around the target (a random start
    angle, then 2 pi k / n_views plus U(-azimuth_jitter, azimuth_jitter) per view); elevation,
    distance, focal length and image size are drawn per view as in `random_cameras`
    (`camera_ranges` are its keyword arguments, except `azimuth`).
    Returns Cameras of batch shape (n_views,), or (n_rigs, n_views) when `n_rigs` is given. The
    relative pose of views i and j: `relative_pose(c.R[..., i, :, :], c.t_m[..., i, :],
    c.R[..., j, :, :], c.t_m[..., j, :])`.
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    if "azimuth" in camera_ranges:
        raise ValueError("multiview_rig places azimuths itself; pass azimuth_jitter instead")
    rigs = 1 if n_rigs is None else int(n_rigs)
    cams = random_cameras(rigs * n_views, rng, azimuth=(0.0, 0.0), **camera_ranges)
    start = rng.uniform(-np.pi, np.pi, (rigs, 1))
    az = start + 2 * np.pi * np.arange(n_views) / n_views
    az = az + rng.uniform(-azimuth_jitter, azimuth_jitter, az.shape)
    # Turning the whole placement about the world +Y axis through the target keeps every camera
    # looking at it: R' = R Ry(-az), C' = Ry(az) (C - target) + target.
    target = np.asarray(camera_ranges.get("target_m", (0.0, 0.0, 0.0)), dtype=np.float64)
    turn = rotation_about_axis("y", az.reshape(-1))
    centres = cams.centres_m - target
    new_centres = np.einsum("nij,nj->ni", turn, centres) + target
    R = np.einsum("nij,nkj->nik", cams.R, turn)
    t = -np.einsum("nij,nj->ni", R, new_centres)
    shape = (rigs, n_views) if n_rigs is not None else (n_views,)
    return Cameras(
        R=R.reshape(shape + (3, 3)), t_m=t.reshape(shape + (3,)), fx=cams.fx.reshape(shape),
        fy=cams.fy.reshape(shape), cx=cams.cx.reshape(shape), cy=cams.cy.reshape(shape),
        image_size_px=cams.image_size_px.reshape(shape + (2,)),
    )


def h36m_cameras(shared_dir: Path | str | None = None) -> Cameras:
    """The 44 Human3.6M cameras (subjects S1-S11, 4 cameras each) in our conventions.

    Read from `<shared_dir>/data/footage/mmpose/tests/data/h36m/cameras.pkl` (shared_dir defaults
    to `default_shared_dir()`). The file stores camera-to-world rotations `R_c2w`, camera centres
    `T` (metres) in a +Z-up world: `X_cam = R_c2w.T @ (X_h36m - T)`. We turn that world to ours
    (+Y up, `H36M_WORLD_TO_WORLD`): R = R_c2w.T @ W.T, t = -R_c2w.T @ T. Lens distortion is
    ignored (its effect on the mmpose test frames: about 1-2 px near the image centre).
    Cameras come sorted by (subject, camera id); `names` are "S1/54138969" etc.
    """
    shared = Path(shared_dir) if shared_dir is not None else default_shared_dir()
    path = shared / H36M_CAMERAS_RELPATH
    if not path.is_file():
        raise FileNotFoundError(
            f"Human3.6M camera file not found: {path}; set POSESTREAM_SHARED to the shared data "
            "folder (the one holding data/footage/mmpose)"
        )
    with open(path, "rb") as fh:
        table = pickle.load(fh)
    keys = sorted(table)
    R, t, f, c, size = [], [], [], [], []
    for key in keys:
        cam = table[key]
        r_c2w = np.asarray(cam["R"], dtype=np.float64).reshape(3, 3)
        centre = np.asarray(cam["T"], dtype=np.float64).reshape(3)
        R.append(r_c2w.T @ H36M_WORLD_TO_WORLD.T)
        t.append(-r_c2w.T @ centre)
        f.append(np.asarray(cam["f"], dtype=np.float64).reshape(2))
        c.append(np.asarray(cam["c"], dtype=np.float64).reshape(2))
        size.append((int(cam["w"]), int(cam["h"])))
    f, c = np.array(f), np.array(c)
    return Cameras(
        R=np.array(R), t_m=np.array(t), fx=f[:, 0], fy=f[:, 1], cx=c[:, 0], cy=c[:, 1],
        image_size_px=np.array(size, dtype=np.int64), names=tuple(f"{s}/{i}" for s, i in keys),
    )


def axes_meeting_point(cameras: Cameras) -> np.ndarray:
    """(3,) float64 world point, metres, closest (least squares) to every camera's optical axis:
    where a rig such as Human3.6M's is aimed (its capture volume centre)."""
    centres = cameras.centres_m.reshape(-1, 3)
    axes = cameras.R[..., 2, :].reshape(-1, 3)
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for centre, axis in zip(centres, axes):
        P = np.eye(3) - np.outer(axis, axis)
        A += P
        b += P @ centre
    return np.linalg.solve(A, b)


#: Relative 2D noise of each joint for `detector_noise` (wrists, ankles and elbows are harder
#: for detectors than the trunk; derived joints such as spine and thorax are smoother).
JOINT_NOISE_SCALE: np.ndarray = np.array(
    [0.8, 1.0, 1.2, 1.4, 1.0, 1.2, 1.4, 0.8, 0.8, 1.0, 1.1, 1.0, 1.3, 1.6, 1.0, 1.3, 1.6]
)


def detector_noise(
    joints_2d_px: np.ndarray,
    rng: np.random.Generator,
    sigma_px: float = 4.0,
    outlier_rate: float = 0.03,
    outlier_sigma_px: float = 40.0,
    difficulty_sigma: float = 0.5,
    confidence_noise: float = 0.7,
) -> tuple[np.ndarray, np.ndarray]:
    """Perturb ground-truth 2D joints the way a keypoint detector errs, with confidences.

    joints_2d_px: (..., 17, 2) pixels. Per joint: a difficulty factor s = JOINT_NOISE_SCALE[j]
    * lognormal(0, difficulty_sigma) (some joints in some frames are hard: occlusion, blur);
    a Gaussian error of sigma_px * s; with probability `outlier_rate` an outlier (a wrong limb or
    a swapped side) instead, Gaussian with outlier_sigma_px. The confidence falls with the error
    actually made, as a detector's heatmap peak does, but imperfectly:
    logit(conf) = 3 - 3 log(1 + err / sigma_px) + N(0, confidence_noise^2), so about 0.9 for
    an error of sigma_px / 3, 0.7 at sigma_px, 0.25 at 3 sigma_px and near 0 for outliers:
    confidence and error are strongly, not perfectly, anti-correlated.
    Returns (noisy_px (..., 17, 2) float32, confidence (..., 17) float32 in [0, 1]).
    """
    joints = np.asarray(joints_2d_px, dtype=np.float64)
    if joints.ndim < 2 or joints.shape[-2:] != (NUM_JOINTS, 2):
        raise ValueError(f"joints_2d_px must be (..., {NUM_JOINTS}, 2), got {joints.shape}")
    if sigma_px <= 0:
        raise ValueError(f"sigma_px must be > 0, got {sigma_px}")
    shape = joints.shape[:-1]
    difficulty = JOINT_NOISE_SCALE * rng.lognormal(0.0, difficulty_sigma, shape)
    offset = rng.normal(0.0, 1.0, joints.shape) * (sigma_px * difficulty)[..., None]
    outlier = rng.random(shape) < outlier_rate
    offset = np.where(outlier[..., None], rng.normal(0.0, outlier_sigma_px, joints.shape), offset)
    err = np.linalg.norm(offset, axis=-1)
    logit = 3.0 - 3.0 * np.log1p(err / sigma_px) + rng.normal(0.0, confidence_noise, shape)
    confidence = 1.0 / (1.0 + np.exp(-logit))
    return (joints + offset).astype(np.float32), confidence.astype(np.float32)
