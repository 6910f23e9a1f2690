"""Training data for the lifter: mocap poses projected through virtual cameras (numpy).

The self-supervised data objects carry 2D only (and, for li2020, camera parameters): they are
built from 3D mocap here, and the 3D is dropped before the object is returned, so a trainer that
holds one cannot reach a 3D label (tests/test_train.py proves it).

- `SingleView2D`  (chen2019):   windows of T consecutive frames, each seen by one random camera.
- `MultiView2D`   (li2020):     each pose seen at once by a rig of V synchronized cameras, with the
                                cameras' poses; confidences per 2D joint.
- `Supervised3D`  (supervised): single views plus the 3D target in codec units (the upper bound).

Frames and units (docs/DESIGN.md): mocap `joints_mm (N, 17, 3)`, millimetres, world +Y up,
root-relative. Cameras are OpenCV's (+X right, +Y down, +Z forward). Every 2D pose is encoded by
`engines.runtime.codec.Codec.encode_full`, the code the runtime uses, so the trainer sees what the lift
stage will feed the network.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import numpy as np

from engines.runtime import camera
from engines.runtime.camera import Cameras
from engines.runtime.codec import Codec
from engines.runtime.skeleton import NUM_JOINTS, ROOT

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Training data missing, empty or malformed; the message says which and what to do."""


@dataclass(frozen=True)
class CameraSampling:
    """How virtual cameras are drawn around a subject at the world origin
    (`engines.runtime.camera.random_cameras`; its defaults span webcams and the Human3.6M cameras).

    Tuning: widen `elevation_rad` for top-down footage; `noise_px` > 0 trains for detector noise
    (`engines.runtime.camera.detector_noise`, confidences then fall with the error drawn).
    """

    elevation_rad: tuple[float, float] = (-np.pi / 18, np.pi / 6)
    distance_m: tuple[float, float] = (3.0, 7.0)
    focal_px: tuple[float, float] = (500.0, 1200.0)
    noise_px: float = 0.0

    def ranges(self) -> dict:
        return {"elevation": self.elevation_rad, "distance_m": self.distance_m,
                "focal_px": self.focal_px}


def _project(poses_m: np.ndarray, cams: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """(N, J, 3) world metres through N cameras -> (px (N, J, 2), camera-frame metres (N, J, 3))."""
    cam = cams.world_to_camera(poses_m)
    if np.any(cam[..., 2] < 0.2):
        raise DataError("a sampled camera is closer than 0.2 m to a joint; raise distance_m")
    return camera.project(cam, cams.fx, cams.fy, cams.cx, cams.cy), cam


def _noisy(px: np.ndarray, rng: np.random.Generator, noise_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Detector-like noise and confidences (..., J); none (confidence 1) when noise_px is 0."""
    if noise_px <= 0:
        return px, np.ones(px.shape[:-1], np.float32)
    return camera.detector_noise(px, rng, sigma_px=noise_px)


def bone_mirror_index() -> np.ndarray:
    """(16,) for each bone (BONES order) the index of its left/right twin, itself if central."""
    from engines.runtime.skeleton import BONES, flip_permutation

    perm = flip_permutation()
    index = {child: b for b, (child, _) in enumerate(BONES)}
    return np.array([index[int(perm[child])] for child, _ in BONES], dtype=np.int64)


def check_poses(joints_mm: np.ndarray, what: str) -> np.ndarray:
    """Validate (N, 17, 3) mocap poses (mm); DataError names what is wrong and what to do."""
    arr = np.asarray(joints_mm)
    if arr.ndim != 3 or arr.shape[1:] != (NUM_JOINTS, 3):
        raise DataError(f"{what}: expected poses of shape (N, {NUM_JOINTS}, 3) in mm, got {arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(f"{what}: no poses; check --sources and that ../shared/data/mocap is there")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{what}: poses contain NaN or inf")
    spread = np.abs(arr - arr[:, ROOT : ROOT + 1]).max()
    if not 200.0 < spread < 5000.0:
        raise DataError(f"{what}: joints span {spread:.1f} from the root; expected millimetres "
                        "(a human is ~200-2000 mm), convert the units")
    return arr.astype(np.float64)


# --- data objects --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SingleView2D:
    """chen2019 data: 2D only. joints_2d_norm (N, T, J, 2) float32 codec units; frames of a window
    are consecutive and share one camera."""

    joints_2d_norm: np.ndarray

    def __len__(self) -> int:
        return int(self.joints_2d_norm.shape[0])


@dataclass(frozen=True)
class MultiView2D:
    """li2020 data: 2D and cameras only; V synchronized views of each pose.

    joints_2d_norm (N, V, J, 2) float32 codec units; scale (N, V) codec units per normalised
    image unit; confidence (N, V, J) in [0, 1]; world_to_virtual (N, V, 3, 3) rotation from world
    axes to each view's virtual (root-centred) camera axes; centre_m (N, V, 3) camera centres,
    world, metres. A point X in view i's virtual frame is A_j (A_i^T X + C_i - C_j) in view j's.
    """

    joints_2d_norm: np.ndarray
    scale: np.ndarray
    confidence: np.ndarray
    world_to_virtual: np.ndarray
    centre_m: np.ndarray

    def __len__(self) -> int:
        return int(self.joints_2d_norm.shape[0])


@dataclass(frozen=True)
class Supervised3D:
    """supervised data: joints_2d_norm (N, J, 2) and joints_3d_norm (N, J, 3) target, codec units,
    virtual camera axes, root-relative, scaled like the ideal lift (k = c * s / Z_root)."""

    joints_2d_norm: np.ndarray
    joints_3d_norm: np.ndarray

    def __len__(self) -> int:
        return int(self.joints_2d_norm.shape[0])


def array_fields(data) -> dict[str, np.ndarray]:
    """Every array a data object holds, by field name (used to show what a trainer can see)."""
    return {f.name: getattr(data, f.name) for f in fields(data)}


def make_single_view(windows_mm: np.ndarray, codec: Codec, cfg: CameraSampling,
                     rng: np.random.Generator) -> SingleView2D:
    """(N, T, J, 3) mm windows of consecutive poses -> 2D seen by one random camera per window."""
    n, t = windows_mm.shape[:2]
    poses = check_poses(windows_mm.reshape(n * t, NUM_JOINTS, 3), "make_single_view") / 1000.0
    cams = camera.random_cameras(n, rng, **cfg.ranges())[np.repeat(np.arange(n), t)]
    px, _ = _project(poses, cams)
    px, _ = _noisy(px, rng, cfg.noise_px)
    enc = codec.encode_full(px, cams.fx, cams.fy, cams.cx, cams.cy)
    return SingleView2D(enc.joints_2d_norm.reshape(n, t, NUM_JOINTS, 2))


def make_multi_view(poses_mm: np.ndarray, codec: Codec, cfg: CameraSampling,
                    rng: np.random.Generator, views: int = 4) -> MultiView2D:
    """(N, J, 3) mm -> V synchronized views per pose (`engines.runtime.camera.multiview_rig`: cameras
    spread evenly in azimuth, each with its own elevation, distance and intrinsics)."""
    if views < 2:
        raise DataError(f"li2020 needs at least 2 views per pose, got {views}")
    poses = check_poses(poses_mm, "make_multi_view") / 1000.0
    n = poses.shape[0]
    rig = camera.multiview_rig(views, rng, n_rigs=n, **cfg.ranges())
    flat = Cameras(R=rig.R.reshape(-1, 3, 3), t_m=rig.t_m.reshape(-1, 3), fx=rig.fx.reshape(-1),
                   fy=rig.fy.reshape(-1), cx=rig.cx.reshape(-1), cy=rig.cy.reshape(-1),
                   image_size_px=rig.image_size_px.reshape(-1, 2))
    px, _ = _project(np.repeat(poses, views, axis=0), flat)
    px, conf = _noisy(px, rng, cfg.noise_px)
    enc = codec.encode_full(px, flat.fx, flat.fy, flat.cx, flat.cy)
    world_to_virtual = np.einsum("nji,njk->nik", enc.rotation_to_camera.astype(np.float64),
                                 flat.R)  # (virtual -> camera)^T @ (world -> camera)
    shape = (n, views)
    return MultiView2D(
        joints_2d_norm=enc.joints_2d_norm.reshape(*shape, NUM_JOINTS, 2),
        scale=enc.scale.reshape(shape),
        confidence=conf.reshape(*shape, NUM_JOINTS),
        world_to_virtual=world_to_virtual.reshape(*shape, 3, 3).astype(np.float32),
        centre_m=flat.centres_m.reshape(*shape, 3).astype(np.float32),
    )


def make_supervised(poses_mm: np.ndarray, codec: Codec, cfg: CameraSampling,
                    rng: np.random.Generator) -> Supervised3D:
    """(N, J, 3) mm -> single random views with the 3D target in codec units."""
    poses = check_poses(poses_mm, "make_supervised") / 1000.0
    cams = camera.random_cameras(poses.shape[0], rng, **cfg.ranges())
    px, cam = _project(poses, cams)
    px, _ = _noisy(px, rng, cfg.noise_px)
    enc = codec.encode_full(px, cams.fx, cams.fy, cams.cx, cams.cy)
    return Supervised3D(enc.joints_2d_norm, ideal_lift(cam, enc.rotation_to_camera, enc.scale,
                                                       codec.depth_offset))


def ideal_lift(joints_cam_m: np.ndarray, rotation_to_camera: np.ndarray, scale: np.ndarray,
               depth_offset: float) -> np.ndarray:
    """The 3D a perfect lifter outputs for camera-frame poses (N, J, 3) m: in the virtual camera's
    axes, root-relative, scaled by c * s / Z_root (so projected head-to-root ~ 1). (N, J, 3) f32."""
    virtual = np.einsum("nji,nkj->nki", np.asarray(rotation_to_camera, np.float64), joints_cam_m)
    root_depth = virtual[:, ROOT, 2]
    k = depth_offset * np.asarray(scale, np.float64) / root_depth
    return ((virtual - virtual[:, ROOT : ROOT + 1]) * k[:, None, None]).astype(np.float32)


def windows_from_sequences(sequences_mm: list[np.ndarray], frames: int, stride: int = 1) -> np.ndarray:
    """Cut (F, J, 3) sequences into (N, frames, J, 3) windows of consecutive frames.

    stride: frames between window starts. Sequences shorter than `frames` are skipped.
    """
    out = []
    for seq in sequences_mm:
        seq = np.asarray(seq)
        for start in range(0, seq.shape[0] - frames + 1, stride):
            out.append(seq[start : start + frames])
    if not out:
        raise DataError(f"no sequence has {frames} frames; lower the window or add data")
    return np.stack(out).astype(np.float32)
