"""Training data for the lifter: mocap poses projected through virtual cameras (numpy).

The self-supervised data objects carry 2D only (and, for li2020, camera parameters): they are
built from 3D mocap here, and the 3D is dropped before the object is returned, so a trainer that
holds one cannot reach a 3D label (tests/test_train.py proves it).

- `SingleView2D`  (chen2019):   windows of T consecutive frames, each seen by one random camera.
- `MultiView2D`   (li2020):     each pose seen at once by a rig of V synchronized cameras, with the
                                cameras' poses; confidences per 2D joint.
- `Supervised3D`  (supervised): single views plus the 3D target in codec units (the upper bound).
- `Distilled`     (distill):    windows of detector-like 2D plus what a single-frame engine (2D
                                in, trained without 3D labels) lifts from the same frames' clean
                                2D: a target made of 2D only.

Frames and units (docs/DESIGN.md): mocap `joints_mm (N, 17, 3)`, millimetres, world +Y up,
root-relative. Cameras are OpenCV's (+X right, +Y down, +Z forward). Every 2D pose is encoded by
`engines.runtime.codec.Codec.encode_full`, the code the runtime uses, so the trainer sees what the lift
stage will feed the network.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace

import numpy as np

from engines.runtime import camera
from engines.runtime.camera import Cameras
from engines.runtime.codec import Codec
from engines.runtime.skeleton import NUM_JOINTS, ROOT
from engines.training.alignment import fuse_views

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


@dataclass(frozen=True)
class Distilled:
    """distill data: joints_2d_norm (N, F, J, 2) detector-like 2D windows, codec units;
    teacher_3d_norm (N, K, J, 3): a single-frame teacher's lift of the clean 2D of the last K
    frames, root-relative codec units, turned into each noisy frame's virtual-camera axes and
    scale (what the lifter outputs for that frame). No 3D label: the teacher sees 2D only."""

    joints_2d_norm: np.ndarray
    teacher_3d_norm: np.ndarray

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


# --- temporal windows (the causal temporal lifter) -----------------------------------------------

#: The detector's per-joint 2D error relative to the person's size (the diagonal of the tight box
#: around the true 2D joints), measured with `engines.training.measure_detector_noise` on the
#: shared annotated images (BlazePose full, 17 detected people; engines/training/DETECTOR_NOISE.md):
#: median, our joint order.
DETECTOR_MEDIAN_REL: np.ndarray = np.array(
    [0.0245, 0.0274, 0.0229, 0.0281, 0.0290, 0.0224, 0.0233, 0.0148, 0.0104, 0.0185, 0.0188,
     0.0225, 0.0252, 0.0400, 0.0246, 0.0204, 0.0263])
#: How often the error exceeds 0.1 of the person's size (same measurement), floored at 0.02
#: (17 people cannot show a rarer rate).
DETECTOR_OUTLIER_RATE: np.ndarray = np.maximum(0.02, np.array(
    [0.059, 0.0, 0.176, 0.188, 0.118, 0.059, 0.125, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.125, 0.0,
     0.118, 0.133]))
#: The median of |N(0, s^2 I_2)| is s * sqrt(2 ln 2): Gaussian sigma from a median 2D error.
_MEDIAN_TO_SIGMA: float = 1.0 / np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class TemporalNoise:
    """Detector-like 2D in training windows: the measured per-joint error (`DETECTOR_MEDIAN_REL`,
    `DETECTOR_OUTLIER_RATE`) scaled by `scale` (0: ground-truth 2D, confidences 1), correlated
    over frames, with dropped frames and frame-rate variation.

    Tuning: `rho` is the frame-to-frame correlation of a joint's error at the engine's rate (not
    measurable from still images; BlazePose's tracking mode smooths its landmarks, so errors
    persist: assumed 0.7; with `rho_min` set, each window draws its own from U(`rho_min`, `rho`),
    so the lifter also sees the frame-independent jitter of an unsmoothed detector, which is
    what `engines.evaluate --noise-px` draws); each window's Gaussian error is the measured one times U(`level`)
    (so the lifter sees clean and bad detections); outliers (a wrong limb, a swapped side) last `outlier_frames` frames
    on average, a fixed offset of N(0, `outlier_rel`^2) per axis times the person's size (about
    0.7 of them exceed 0.1 of it, the measured rate's threshold); `outlier_scale` multiplies their
    rate (0: none); `drop_rate`: a frame lost by latest-wins,
    replaced by the one before (what a sample-and-hold history gives); `speed`: each window's
    motion is played back at a log-uniform rate in this range (camera rates that differ from the
    stamps, faster or slower people), `time_jitter`: per-frame timestamp jitter, in frames;
    `static_share`: windows whose every frame is the newest one's 2D, noise included (what the
    lift stage pads a single image or a track's first frame with).
    """

    scale: float = 1.0
    rho: float = 0.7
    rho_min: float | None = None
    outlier_rel: float = 0.12
    outlier_scale: float = 1.0
    outlier_frames: float = 4.0
    drop_rate: float = 0.05
    level: tuple[float, float] = (0.0, 1.5)
    speed: tuple[float, float] = (0.8, 1.25)
    time_jitter: float = 0.2
    confidence_noise: float = 0.7
    static_share: float = 0.0


def sample_windows(clips: list[tuple[np.ndarray, float]], count: int, frames: int, fps: float,
                   rng: np.random.Generator, noise: TemporalNoise = TemporalNoise()) -> np.ndarray:
    """`count` windows of `frames` poses at `fps` (oldest first) from mocap clips.

    clips: [(joints_mm (F, J, 3), clip fps)]. Each window picks a clip (weighted by duration)
    and a newest time uniformly in it, a playback speed from `noise.speed` and per-frame time
    jitter; poses are linearly interpolated between mocap frames. Times before the clip's start
    take its first pose (a track's start: the lift stage pads by repeating the first frame).
    Returns (count, frames, J, 3) float32 mm.
    """
    durations = np.array([(len(seq) - 1) / rate for seq, rate in clips], np.float64)
    if len(clips) == 0 or durations.sum() <= 0:
        raise DataError("no mocap clips longer than one frame to cut windows from")
    pick = rng.choice(len(clips), count, p=durations / durations.sum())
    newest = rng.uniform(0.0, 1.0, count) * durations[pick]
    speed = np.exp(rng.uniform(np.log(noise.speed[0]), np.log(noise.speed[1]), count))
    lag = np.arange(frames - 1, -1, -1, dtype=np.float64)                   # oldest first
    jitter = rng.uniform(-noise.time_jitter, noise.time_jitter, (count, frames))
    jitter[:, -1] = 0.0
    times = newest[:, None] - (lag[None] + jitter) * speed[:, None] / fps   # (count, frames) s
    out = np.empty((count, frames, NUM_JOINTS, 3), np.float32)
    for c in np.unique(pick):
        rows = np.nonzero(pick == c)[0]
        seq, rate = clips[c]
        pos = np.clip(times[rows] * rate, 0.0, len(seq) - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, len(seq) - 1)
        w = (pos - lo)[..., None, None]
        out[rows] = (1 - w) * seq[lo] + w * seq[hi]
    return out


def temporal_detector_noise(joints_2d_px: np.ndarray, rng: np.random.Generator,
                            noise: TemporalNoise) -> tuple[np.ndarray, np.ndarray]:
    """Detector-like errors on windows of true 2D: (M, F, J, 2) px -> (noisy px (M, F, J, 2)
    float32, confidence (M, F, J) float32).

    Per window and joint the error is an AR(1) process over frames (correlation `rho`) with the
    measured per-joint sigma times the person's size (tight box diagonal of the window's newest
    true 2D) and a lognormal difficulty; outlier episodes (rate `DETECTOR_OUTLIER_RATE` per
    frame, mean length `outlier_frames`) replace it with a fixed wrong offset; the confidence
    falls with the error made (as `engines.runtime.camera.detector_noise`); dropped frames
    repeat the frame before (never the newest).
    """
    px = np.asarray(joints_2d_px, np.float64)
    m, f, j = px.shape[:3]
    if noise.scale <= 0:
        return _held_still(px, np.ones((m, f, j)), rng, noise.static_share)
    newest = px[:, -1]
    size = np.hypot(*(newest.max(1) - newest.min(1)).T)                       # (M,)
    sigma = (noise.scale * _MEDIAN_TO_SIGMA * DETECTOR_MEDIAN_REL[None] * size[:, None]
             * rng.lognormal(0.0, 0.4, (m, j)) * rng.uniform(*noise.level, (m, 1)))  # (M, J)
    err = np.empty_like(px)
    err[:, 0] = rng.normal(0.0, 1.0, (m, j, 2))
    if noise.rho_min is None:
        rho = np.full((m, 1, 1), noise.rho)
    else:
        rho = rng.uniform(noise.rho_min, noise.rho, (m, 1, 1))                # per window
    innov = np.sqrt(1.0 - rho ** 2)
    for t in range(1, f):
        err[:, t] = rho * err[:, t - 1] + innov * rng.normal(0.0, 1.0, (m, j, 2))
    offset = err * sigma[:, None, :, None]
    rate = DETECTOR_OUTLIER_RATE * noise.scale * noise.outlier_scale
    start = rng.random((m, f, j)) < rate / noise.outlier_frames
    span = max(1, int(round(noise.outlier_frames)))
    episode = np.zeros((m, f, j), bool)
    for lag in range(span):
        episode[:, lag:] |= start[:, : f - lag]
    wrong = rng.normal(0.0, noise.outlier_rel, (m, 1, j, 2)) * size[:, None, None, None]
    offset = np.where(episode[..., None], wrong, offset)
    dist = np.linalg.norm(offset, axis=-1)
    ref = np.maximum(1e-6, noise.scale * DETECTOR_MEDIAN_REL.mean() * size)[:, None, None]
    logit = 3.0 - 3.0 * np.log1p(dist / ref) + rng.normal(0.0, noise.confidence_noise, dist.shape)
    conf = 1.0 / (1.0 + np.exp(-logit))
    noisy = px + offset
    drop = rng.random((m, f)) < noise.drop_rate
    drop[:, -1] = False
    for t in range(1, f):
        held = drop[:, t]
        noisy[held, t] = noisy[held, t - 1]
        conf[held, t] = conf[held, t - 1]
    return _held_still(noisy, conf, rng, noise.static_share)


def _held_still(px: np.ndarray, conf: np.ndarray, rng: np.random.Generator,
                share: float) -> tuple[np.ndarray, np.ndarray]:
    """A `share` of the windows (M, F, J, 2) become their newest frame repeated F times (a single
    image, padded). Returns float32 (px, conf)."""
    px, conf = px.astype(np.float32), conf.astype(np.float32)
    if share > 0:
        still = rng.random(len(px)) < share
        px[still] = px[still, -1:]
        conf[still] = conf[still, -1:]
    return px, conf


def _encode_frames(codec: Codec, px: np.ndarray, fx, fy, cx, cy, chunk: int = 200_000):
    """Encode (M, F, J, 2) px frame by frame (intrinsics (M,)) -> Encoded with (M, F, ...)."""
    m, f = px.shape[:2]
    flat = px.reshape(m * f, NUM_JOINTS, 2)
    rep = [np.repeat(np.asarray(v, np.float64), f) for v in (fx, fy, cx, cy)]
    parts = [codec.encode_full(flat[s : s + chunk], *(r[s : s + chunk] for r in rep))
             for s in range(0, m * f, chunk)]
    norm = np.concatenate([p.joints_2d_norm for p in parts]).reshape(m, f, NUM_JOINTS, 2)
    scale = np.concatenate([p.scale for p in parts]).reshape(m, f)
    rot = np.concatenate([p.rotation_to_camera for p in parts]).reshape(m, f, 3, 3)
    return norm, scale, rot


def make_multi_view_windows(windows_mm: np.ndarray, codec: Codec, cfg: CameraSampling,
                            rng: np.random.Generator, views: int = 4,
                            noise: TemporalNoise = TemporalNoise()) -> MultiView2D:
    """(N, F, J, 3) mm windows -> li2020 data for the temporal lifter: each window seen by a
    rig of V synchronized, static cameras, every view with its own detector-like noise.

    joints_2d_norm (N, V, F, J, 2) and confidence (N, V, F, J) for every frame; scale,
    world_to_virtual and centre_m (as `MultiView2D`) for the newest frame, the one lifted.
    """
    if views < 2:
        raise DataError(f"li2020 needs at least 2 views per window, got {views}")
    n, f = windows_mm.shape[:2]
    poses = check_poses(windows_mm.reshape(n * f, NUM_JOINTS, 3), "make_multi_view_windows")
    poses = poses.reshape(n, f, NUM_JOINTS, 3) / 1000.0
    rig = camera.multiview_rig(views, rng, n_rigs=n, **cfg.ranges())
    flat = Cameras(R=rig.R.reshape(-1, 3, 3), t_m=rig.t_m.reshape(-1, 3), fx=rig.fx.reshape(-1),
                   fy=rig.fy.reshape(-1), cx=rig.cx.reshape(-1), cy=rig.cy.reshape(-1),
                   image_size_px=rig.image_size_px.reshape(-1, 2))
    per_view = np.repeat(poses, views, axis=0)                                 # (N V, F, J, 3)
    cam = np.einsum("mij,mfkj->mfki", flat.R, per_view) + flat.t_m[:, None, None]
    if np.any(cam[..., 2] < 0.2):
        raise DataError("a sampled camera is closer than 0.2 m to a joint; raise distance_m")
    px = camera.project(cam, flat.fx[:, None], flat.fy[:, None], flat.cx[:, None],
                        flat.cy[:, None])
    px, conf = temporal_detector_noise(px, rng, noise)
    norm, scale, rot = _encode_frames(codec, px, flat.fx, flat.fy, flat.cx, flat.cy)
    world_to_virtual = np.einsum("nji,njk->nik", rot[:, -1].astype(np.float64), flat.R)
    shape = (n, views)
    return MultiView2D(
        joints_2d_norm=norm.reshape(*shape, f, NUM_JOINTS, 2),
        scale=scale[:, -1].reshape(shape),
        confidence=conf.reshape(*shape, f, NUM_JOINTS),
        world_to_virtual=world_to_virtual.reshape(*shape, 3, 3).astype(np.float32),
        centre_m=flat.centres_m.reshape(*shape, 3).astype(np.float32),
    )


def _seen_by_random_cameras(poses_m: np.ndarray, cfg: CameraSampling,
                            rng: np.random.Generator):
    """(N, F, J, 3) world m, one random static camera per window -> (joints in the camera
    (N, F, J, 3) m, the cameras, their clean projection (N, F, J, 2) px)."""
    cams = camera.random_cameras(len(poses_m), rng, **cfg.ranges())
    cam = np.einsum("mij,mfkj->mfki", cams.R, poses_m) + cams.t_m[:, None, None]
    if np.any(cam[..., 2] < 0.2):
        raise DataError("a sampled camera is closer than 0.2 m to a joint; raise distance_m")
    px = camera.project(cam, cams.fx[:, None], cams.fy[:, None], cams.cx[:, None],
                        cams.cy[:, None])
    return cam, cams, px


def _one_camera_windows(windows_mm: np.ndarray, cfg: CameraSampling, rng: np.random.Generator,
                        noise: TemporalNoise, what: str):
    """(N, F, J, 3) mm windows, one random static camera each -> (joints in the camera (N, F,
    J, 3) m, the cameras, detector-like 2D (N, F, J, 2) px)."""
    n, f = windows_mm.shape[:2]
    poses = check_poses(windows_mm.reshape(n * f, NUM_JOINTS, 3), what)
    poses = poses.reshape(n, f, NUM_JOINTS, 3) / 1000.0
    cam, cams, px = _seen_by_random_cameras(poses, cfg, rng)
    px, _ = temporal_detector_noise(px, rng, noise)
    return cam, cams, px


def make_single_view_windows(windows_mm: np.ndarray, codec: Codec, cfg: CameraSampling,
                             rng: np.random.Generator,
                             noise: TemporalNoise = TemporalNoise()) -> SingleView2D:
    """(N, F, J, 3) mm windows -> chen2019 data for the temporal lifter: each window seen by one
    random static camera with detector-like noise, every frame codec-normalised on its own:
    joints_2d_norm (N, F, J, 2), nothing else (no camera, no 3D)."""
    _, cams, px = _one_camera_windows(windows_mm, cfg, rng, noise, "make_single_view_windows")
    norm, _, _ = _encode_frames(codec, px, cams.fx, cams.fy, cams.cx, cams.cy)
    return SingleView2D(norm)


def make_supervised_windows(windows_mm: np.ndarray, codec: Codec, cfg: CameraSampling,
                            rng: np.random.Generator,
                            noise: TemporalNoise = TemporalNoise()) -> Supervised3D:
    """(N, F, J, 3) mm windows -> one random static camera each, detector-like 2D: joints_2d_norm
    (N, F, J, 2) and the newest frame's 3D target (N, J, 3) in codec units (`ideal_lift`)."""
    cam, cams, px = _one_camera_windows(windows_mm, cfg, rng, noise, "make_supervised_windows")
    norm, scale, rot = _encode_frames(codec, px, cams.fx, cams.fy, cams.cx, cams.cy)
    target = ideal_lift(cam[:, -1], rot[:, -1], scale[:, -1], codec.depth_offset)
    return Supervised3D(norm, target)


def _clean_view_lift(poses_m: np.ndarray, codec: Codec, cfg: CameraSampling,
                     rng: np.random.Generator, teacher) -> np.ndarray:
    """(N, K, J, 3) world m -> the teacher's lift (N, K, J, 3) of their clean 2D from one more
    random static camera per window (each frame in its own virtual axes and scale)."""
    n, k = poses_m.shape[:2]
    _, cams, px = _seen_by_random_cameras(poses_m, cfg, rng)
    norm, _, _ = _encode_frames(codec, px.astype(np.float32), cams.fx, cams.fy, cams.cx,
                                cams.cy)
    lifted = np.asarray(teacher(norm.reshape(n * k, NUM_JOINTS, 2)), np.float64)
    return lifted.reshape(n, k, NUM_JOINTS, 3)


def make_distill_windows(windows_mm: np.ndarray, codec: Codec, cfg: CameraSampling,
                         rng: np.random.Generator, teacher, last: int = 1,
                         noise: TemporalNoise = TemporalNoise(),
                         teacher_views: int = 1) -> Distilled:
    """(N, F, J, 3) mm windows -> one random static camera each: detector-like 2D windows and a
    teacher's lift of the same frames' clean 2D (the last `last` frames).

    teacher: (M, J, 2) codec-normalised 2D -> (M, J, 3) root-relative codec units (a
    single-frame engine trained without 3D labels, e.g. the shipped default). The clean and the
    noisy frame are encoded each on its own, so the teacher's output is in the clean frame's
    virtual axes and scale; it is turned into the noisy frame's (R_noisy^T R_clean, times
    s_noisy / s_clean: the same root depth), which is what the lifter outputs. Static windows
    (`noise.static_share`) hold both the noisy and the clean 2D still.

    teacher_views > 1: the teacher also lifts the same frames seen by teacher_views - 1 more
    random cameras (clean 2D, never shown to the student), and the target is the views' consensus
    shape (`alignment.fuse_views`, in the training view's axes and scale, then turned as above):
    another view resolves what one view's depth leaves open. The extra cameras enter only by
    projection, as the training view's does; no 3D label reaches the target.
    """
    n, f = windows_mm.shape[:2]
    if not 1 <= last <= f:
        raise DataError(f"make_distill_windows: need 1 <= last <= {f} frames, got {last}")
    if teacher_views < 1:
        raise DataError(f"make_distill_windows: need teacher_views >= 1, got {teacher_views}")
    poses = check_poses(windows_mm.reshape(n * f, NUM_JOINTS, 3), "make_distill_windows")
    poses = poses.reshape(n, f, NUM_JOINTS, 3) / 1000.0
    _, cams, clean = _seen_by_random_cameras(poses, cfg, rng)
    noisy, _ = temporal_detector_noise(clean, rng, replace(noise, static_share=0.0))
    still = rng.random(n) < noise.static_share
    clean = clean.astype(np.float32)
    clean[still] = clean[still, -1:]
    noisy[still] = noisy[still, -1:]
    norm, scale, rot = _encode_frames(codec, noisy, cams.fx, cams.fy, cams.cx, cams.cy)
    norm_c, scale_c, rot_c = _encode_frames(codec, clean[:, -last:], cams.fx, cams.fy, cams.cx,
                                            cams.cy)
    lifted = np.asarray(teacher(norm_c.reshape(n * last, NUM_JOINTS, 2)), np.float64)
    lifted = lifted.reshape(n, last, NUM_JOINTS, 3)
    if teacher_views > 1:
        held = poses[:, -last:].copy()
        held[still] = poses[still, -1:]
        views = [lifted]
        for _ in range(teacher_views - 1):
            views.append(_clean_view_lift(held, codec, cfg, rng, teacher))
        stacked = np.stack(views, axis=2).reshape(n * last, teacher_views, NUM_JOINTS, 3)
        lifted = fuse_views(stacked).reshape(n, last, NUM_JOINTS, 3)
    turn = np.einsum("nkji,nkjl->nkil", rot[:, -last:].astype(np.float64),
                     rot_c.astype(np.float64))                   # R_noisy^T R_clean
    ratio = (scale[:, -last:] / scale_c)[..., None, None]
    target = np.einsum("nkil,nkjl->nkji", turn, lifted) * ratio
    return Distilled(norm, target.astype(np.float32))
