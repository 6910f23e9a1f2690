"""The lifter's codec: detector pixels -> network input, network output -> metres (numpy and numba, never torch).

docs/DESIGN.md fixes the contract; this module is its only implementation on the runtime side and
must not import torch. The trainer keeps a torch twin of `normalise_2d`
(`engines.training.losses.normalise_2d_torch`); tests/test_codec.py checks the two agree.

Normalisation (Chen et al. 2019, made perspective-correct): pixels -> normalised image coordinates
((u - cx) / fx, (v - cy) / fy) -> root-centred by turning a virtual camera about its centre until
its optical axis passes through the root (pelvis) and re-projecting (for a root near the image
centre this is the plain subtraction of the root; off-centre it removes the skew a subtraction
leaves) -> scale each pose so the head-to-root distance is 1/c (c = `depth_offset`, 10).
The lifter's 3D output is in that virtual camera's axes; `to_metric` turns it back into the real
camera's axes when given `rotation_to_camera` (from `encode_full`). The lifter's output is root-relative, camera axes, in the matching
scale-free units; `to_metric` turns it into metres with a bone-length prior: the pose is scaled
so its bone lengths best match (least squares) the canonical bone lengths stored in the metadata,
or those lengths rescaled to a given subject height.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from engines.runtime.skeleton import BONES, NUM_JOINTS, ROOT, Joint

logger = logging.getLogger(__name__)

CODEC_VERSION: int = 1
#: Smallest head-to-root distance (normalised image units) accepted as a pose scale; below this
#: the pose is degenerate (head on the pelvis) and is scaled as if it had this distance.
MIN_SCALE_DISTANCE: float = 1e-6
#: Ankle joint to sole of the foot, metres: added to the head-to-ankle chain to get a stature.
ANKLE_TO_SOLE_M: float = 0.08

_CHILD = np.array([c for c, _ in BONES], dtype=np.int64)
_PARENT = np.array([p for _, p in BONES], dtype=np.int64)
_NO_ROTATION = np.zeros((0, 3, 3))  # to_metric without a rotation (the kernel's typed placeholder)


def normalise_2d(
    joints_2d_img: np.ndarray, depth_offset: float, scale_joint: int = int(Joint.HEAD)
) -> tuple[np.ndarray, np.ndarray]:
    """Root-centre 2D poses and scale each so its head-to-root distance is 1/depth_offset.

    joints_2d_img: (B, J, 2) normalised image coordinates ((u - cx) / fx, (v - cy) / fy).
    Returns (joints_2d_norm (B, J, 2) float32, scale (B,) float32): norm = (img - root) * scale.
    """
    joints = np.asarray(joints_2d_img, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[-1] != 2:
        raise ValueError(f"joints_2d_img must be (B, J, 2), got shape {joints.shape}")
    centred = joints - joints[:, ROOT : ROOT + 1]
    dist = np.linalg.norm(centred[:, scale_joint], axis=-1)
    scale = 1.0 / (depth_offset * np.maximum(dist, MIN_SCALE_DISTANCE))
    return (centred * scale[:, None, None]).astype(np.float32), scale.astype(np.float32)


def pixels_to_image(
    joints_2d_px: np.ndarray, fx: np.ndarray | float, fy: np.ndarray | float,
    cx: np.ndarray | float, cy: np.ndarray | float,
) -> np.ndarray:
    """(B, J, 2) pixels -> (B, J, 2) float64 normalised image coordinates.

    fx, fy, cx, cy: scalars (one camera) or (B,) arrays (one camera per pose), pixels.
    """
    px = np.asarray(joints_2d_px, dtype=np.float64)
    if px.ndim != 3 or px.shape[-1] != 2:
        raise ValueError(f"joints_2d_px must be (B, J, 2), got shape {px.shape}")
    if all(isinstance(v, (float, int)) for v in (fx, fy, cx, cy)):  # one camera (per frame)
        if not (fx > 0 and fy > 0):
            raise ValueError("focal lengths fx, fy must be positive pixels")
        return (px - np.array([cx, cy], np.float64)) / np.array([fx, fy], np.float64)
    try:
        f = np.stack([np.broadcast_to(np.asarray(v, np.float64), (px.shape[0],)) for v in (fx, fy)], -1)
        c = np.stack([np.broadcast_to(np.asarray(v, np.float64), (px.shape[0],)) for v in (cx, cy)], -1)
    except ValueError as err:
        raise ValueError(
            f"fx, fy, cx, cy must be scalars or ({px.shape[0]},) arrays, one per pose"
        ) from err
    if np.any(f <= 0):
        raise ValueError("focal lengths fx, fy must be positive pixels")
    return (px - c[:, None, :]) / f[:, None, :]


def virtual_rotation(root_img: np.ndarray) -> np.ndarray:
    """(B, 2) root in normalised image coordinates -> (B, 3, 3) float64 rotation R (camera axes
    -> virtual camera axes) that turns the root's ray onto +Z by the smallest rotation."""
    root = np.asarray(root_img, dtype=np.float64)
    ray = np.concatenate([root, np.ones_like(root[:, :1])], axis=-1)
    ray /= np.linalg.norm(ray, axis=-1, keepdims=True)
    # Rodrigues for unit a onto unit b = +Z: v = a x b, R = I + [v]x + [v]x^2 / (1 + a.b)
    v = np.stack([ray[:, 1], -ray[:, 0], np.zeros_like(ray[:, 0])], axis=-1)
    cos = ray[:, 2]
    vx = np.zeros((len(ray), 3, 3))
    vx[:, 0, 1], vx[:, 0, 2] = -v[:, 2], v[:, 1]
    vx[:, 1, 0], vx[:, 1, 2] = v[:, 2], -v[:, 0]
    vx[:, 2, 0], vx[:, 2, 1] = -v[:, 1], v[:, 0]
    return np.eye(3)[None] + vx + (vx @ vx) / (1.0 + cos)[:, None, None]


def centre_on_root(joints_2d_img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-project (B, J, 2) normalised image points into the virtual camera looking at the root.

    Returns (joints_2d_virtual (B, J, 2) float64 with the root at (0, 0),
    rotation_to_camera (B, 3, 3): virtual camera axes -> camera axes).
    """
    img = np.asarray(joints_2d_img, dtype=np.float64)
    rot = virtual_rotation(img[:, ROOT])
    rays = np.concatenate([img, np.ones_like(img[..., :1])], axis=-1)
    turned = np.einsum("bij,bkj->bki", rot, rays)
    if np.any(turned[..., 2] <= 1e-6):
        raise ValueError("2D joints more than 90 degrees from the root's ray; check the intrinsics")
    return turned[..., :2] / turned[..., 2:], np.transpose(rot, (0, 2, 1))


# --- per-frame kernels ------------------------------------------------------------------------
# `encode_full` and `to_metric` run once per frame in the lift stage on (P, 17, .) arrays, where
# the numpy chains above cost some 30 array operations each (about 0.06 ms hot, several times
# that when the stage wakes for a frame with cold caches). These kernels do the same arithmetic
# in one compiled loop per pose; `virtual_rotation`, `centre_on_root` and `normalise_2d` stay
# the readable numpy reference that tests/test_codec.py holds the encode kernel to (numba is
# already a runtime dependency: engines.runtime.reproject).


@njit(cache=True)
def _encode_kernel(img: np.ndarray, depth_offset: float, scale_joint: int, root: int,
                   norm_out: np.ndarray, scale_out: np.ndarray, rot_out: np.ndarray) -> int:
    """`centre_on_root` then `normalise_2d`, pose by pose: img (B, J, 2) float64 normalised
    image coordinates -> norm_out (B, J, 2) float32, scale_out (B,) float32, rot_out (B, 3, 3)
    float32 (virtual -> camera axes). Returns the first pose with a joint 90 degrees or more
    from the root's ray (numpy's test: turned depth <= 1e-6), or -1."""
    rot = np.empty((3, 3))
    virt = np.empty((img.shape[1], 2))
    for b in range(img.shape[0]):
        # virtual_rotation: Rodrigues turning the root's unit ray a onto +Z
        ax, ay = img[b, root, 0], img[b, root, 1]
        n = math.sqrt(ax * ax + ay * ay + 1.0)
        ax, ay, az = ax / n, ay / n, 1.0 / n
        vx, vy = ay, -ax                       # v = a x (0, 0, 1), v_z = 0
        k = 1.0 / (1.0 + az)
        rot[0, 0] = 1.0 + k * (-vy * vy)
        rot[0, 1] = k * (vx * vy)
        rot[0, 2] = vy
        rot[1, 0] = k * (vx * vy)
        rot[1, 1] = 1.0 + k * (-vx * vx)
        rot[1, 2] = -vx
        rot[2, 0] = -vy
        rot[2, 1] = vx
        rot[2, 2] = 1.0 + k * (-vy * vy - vx * vx)
        for j in range(img.shape[1]):
            x, y = img[b, j, 0], img[b, j, 1]
            tx = rot[0, 0] * x + rot[0, 1] * y + rot[0, 2]
            ty = rot[1, 0] * x + rot[1, 1] * y + rot[1, 2]
            tz = rot[2, 0] * x + rot[2, 1] * y + rot[2, 2]
            if tz <= 1e-6:
                return b
            virt[j, 0] = tx / tz
            virt[j, 1] = ty / tz
        # normalise_2d: root-centred, head-to-root distance 1 / depth_offset
        rx, ry = virt[root, 0], virt[root, 1]
        dx, dy = virt[scale_joint, 0] - rx, virt[scale_joint, 1] - ry
        dist = math.sqrt(dx * dx + dy * dy)
        if dist < MIN_SCALE_DISTANCE:
            dist = MIN_SCALE_DISTANCE
        scale = 1.0 / (depth_offset * dist)
        for j in range(img.shape[1]):
            norm_out[b, j, 0] = (virt[j, 0] - rx) * scale
            norm_out[b, j, 1] = (virt[j, 1] - ry) * scale
        scale_out[b] = scale
        for r in range(3):
            for c in range(3):
                rot_out[b, r, c] = rot[c, r]    # transposed: virtual -> camera axes
    return -1


@njit(cache=True)
def _to_metric_kernel(pose: np.ndarray, target: np.ndarray, child: np.ndarray,
                      parent: np.ndarray, root: int, rot: np.ndarray, turn: bool,
                      out: np.ndarray) -> None:
    """`to_metric`'s arithmetic pose by pose: pose (B, J, 3) float64 codec units -> out
    (B, J, 3) float32 metres; rot (B, 3, 3) float64, applied when turn."""
    for b in range(pose.shape[0]):
        num = 0.0
        den = 0.0
        for i in range(child.shape[0]):
            dx = pose[b, child[i], 0] - pose[b, parent[i], 0]
            dy = pose[b, child[i], 1] - pose[b, parent[i], 1]
            dz = pose[b, child[i], 2] - pose[b, parent[i], 2]
            length = math.sqrt(dx * dx + dy * dy + dz * dz)
            num += length * target[i]
            den += length * length
        if den < 1e-12:
            den = 1e-12
        factor = num / den
        r0, r1, r2 = pose[b, root, 0], pose[b, root, 1], pose[b, root, 2]
        for j in range(pose.shape[1]):
            x = (pose[b, j, 0] - r0) * factor
            y = (pose[b, j, 1] - r1) * factor
            z = (pose[b, j, 2] - r2) * factor
            if turn:
                out[b, j, 0] = rot[b, 0, 0] * x + rot[b, 0, 1] * y + rot[b, 0, 2] * z
                out[b, j, 1] = rot[b, 1, 0] * x + rot[b, 1, 1] * y + rot[b, 1, 2] * z
                out[b, j, 2] = rot[b, 2, 0] * x + rot[b, 2, 1] * y + rot[b, 2, 2] * z
            else:
                out[b, j, 0] = x
                out[b, j, 1] = y
                out[b, j, 2] = z


class Encoded(NamedTuple):
    """`Codec.encode_full` result.

    joints_2d_norm: (B, J, 2) float32 network input. scale: (B,) codec units per normalised image
    unit. rotation_to_camera: (B, 3, 3) float32, virtual (network) axes -> camera axes.
    """

    joints_2d_norm: np.ndarray
    scale: np.ndarray
    rotation_to_camera: np.ndarray


def stature_from_bone_lengths(bone_lengths_m: np.ndarray) -> float:
    """Standing height (m) of a skeleton with these (16,) bone lengths in `BONES` order:
    head -> neck -> thorax -> spine -> pelvis, plus the mean leg (hip -> knee -> ankle),
    plus `ANKLE_TO_SOLE_M`."""
    lengths = dict(zip(((int(c), int(p)) for c, p in BONES), np.asarray(bone_lengths_m)))
    trunk = sum(lengths[(c, p)] for c, p in (
        (Joint.HEAD, Joint.NECK_NOSE), (Joint.NECK_NOSE, Joint.THORAX),
        (Joint.THORAX, Joint.SPINE), (Joint.SPINE, Joint.PELVIS)))
    right = lengths[(Joint.R_KNEE, Joint.R_HIP)] + lengths[(Joint.R_ANKLE, Joint.R_KNEE)]
    left = lengths[(Joint.L_KNEE, Joint.L_HIP)] + lengths[(Joint.L_ANKLE, Joint.L_KNEE)]
    return float(trunk + 0.5 * (right + left) + ANKLE_TO_SOLE_M)


@functools.lru_cache(maxsize=64)
def _target_bone_lengths_m(canonical_m: tuple[float, ...], height_m: float | None) -> np.ndarray:
    lengths = np.asarray(canonical_m, dtype=np.float64)
    if height_m is not None:
        chain_m = stature_from_bone_lengths(lengths) - ANKLE_TO_SOLE_M
        lengths = lengths * ((height_m - ANKLE_TO_SOLE_M) / chain_m)
    lengths.flags.writeable = False
    return lengths


@dataclass(frozen=True)
class Codec:
    """Network input/output conventions of one lifter; travels with it as metadata.

    canonical_bone_lengths_m: (16,) in `BONES` order, metres: the bone-length prior of `to_metric`.
    depth_offset: Chen's c; head-to-root is scaled to 1/c in 2D.
    """

    canonical_bone_lengths_m: tuple[float, ...]
    depth_offset: float = 10.0
    root_joint: int = ROOT
    scale_joint: int = int(Joint.HEAD)
    version: int = CODEC_VERSION

    def __post_init__(self) -> None:
        lengths = np.asarray(self.canonical_bone_lengths_m, dtype=np.float64)
        if lengths.shape != (len(BONES),) or not np.all(np.isfinite(lengths)) or np.any(lengths <= 0):
            raise ValueError(
                f"canonical_bone_lengths_m must be {len(BONES)} positive lengths in metres "
                f"(BONES order), got {self.canonical_bone_lengths_m!r}"
            )
        if self.depth_offset <= 1.0:
            raise ValueError(f"depth_offset must be > 1, got {self.depth_offset}")
        if self.root_joint != ROOT:
            raise ValueError(f"this codec needs the root at joint {ROOT}, got {self.root_joint}")

    # --- metadata -------------------------------------------------------------------------------
    def to_metadata(self) -> dict:
        """JSON-able dict; `Codec.from_metadata(c.to_metadata()) == c`."""
        return {
            "version": self.version,
            "normalisation": "root-centred, head-to-root 2D distance = 1/depth_offset",
            "depth_offset": float(self.depth_offset),
            "root_joint": int(self.root_joint),
            "scale_joint": int(self.scale_joint),
            "canonical_bone_lengths_m": [float(x) for x in self.canonical_bone_lengths_m],
        }

    @classmethod
    def from_metadata(cls, meta: dict) -> "Codec":
        """Inverse of `to_metadata`; a missing key or a newer version raises ValueError."""
        if not isinstance(meta, dict):
            raise ValueError(f"codec metadata must be a dict, got {type(meta).__name__}")
        try:
            version = int(meta["version"])
            if version > CODEC_VERSION:
                raise ValueError(
                    f"codec metadata version {version} is newer than this code ({CODEC_VERSION}); "
                    "update posestream or re-export the engine"
                )
            return cls(
                canonical_bone_lengths_m=tuple(float(x) for x in meta["canonical_bone_lengths_m"]),
                depth_offset=float(meta["depth_offset"]),
                root_joint=int(meta.get("root_joint", ROOT)),
                scale_joint=int(meta.get("scale_joint", int(Joint.HEAD))),
                version=version,
            )
        except KeyError as err:
            raise ValueError(f"codec metadata lacks key {err}; re-export the engine") from err

    # --- encode / decode ------------------------------------------------------------------------
    def encode(
        self, joints_2d_px: np.ndarray, fx: np.ndarray | float, fy: np.ndarray | float,
        cx: np.ndarray | float, cy: np.ndarray | float,
    ) -> np.ndarray:
        """(B, J, 2) pixels -> (B, J, 2) float32 network input (root-centred, head-root = 1/c)."""
        return self.encode_full(joints_2d_px, fx, fy, cx, cy).joints_2d_norm

    def encode_full(
        self, joints_2d_px: np.ndarray, fx: np.ndarray | float, fy: np.ndarray | float,
        cx: np.ndarray | float, cy: np.ndarray | float,
    ) -> Encoded:
        """As `encode`, also returning each pose's scale and its virtual-to-camera rotation."""
        if np.shape(joints_2d_px)[-2:] != (NUM_JOINTS, 2):
            raise ValueError(f"joints_2d_px must be (B, {NUM_JOINTS}, 2), got {np.shape(joints_2d_px)}")
        image = pixels_to_image(joints_2d_px, fx, fy, cx, cy)
        b = image.shape[0]
        norm = np.empty((b, NUM_JOINTS, 2), np.float32)
        scale = np.empty(b, np.float32)
        rotation = np.empty((b, 3, 3), np.float32)
        # = centre_on_root, then normalise_2d (the reference; tests/test_codec.py)
        if _encode_kernel(image, float(self.depth_offset), int(self.scale_joint), ROOT,
                          norm, scale, rotation) >= 0:
            raise ValueError("2D joints more than 90 degrees from the root's ray; check the intrinsics")
        return Encoded(norm, scale, rotation)

    def target_bone_lengths_m(self, height_m: float | None = None) -> np.ndarray:
        """(16,) bone lengths (m) `to_metric` fits to: canonical, or rescaled to `height_m`
        (read-only: computed once per codec and height, as the lift stage asks every frame)."""
        if height_m is not None and not (0.3 < float(height_m) < 3.0):
            raise ValueError(f"height_m must be a human height in metres (0.3-3), got {height_m}")
        return _target_bone_lengths_m(tuple(self.canonical_bone_lengths_m),
                                      None if height_m is None else float(height_m))

    def to_metric(
        self, joints_3d_norm: np.ndarray, height_m: float | None = None,
        rotation_to_camera: np.ndarray | None = None,
    ) -> np.ndarray:
        """(B, J, 3) network output (codec units, root-relative) -> (B, J, 3) float32 metres.

        Each pose is scaled by the factor that best matches (least squares) its bone lengths to
        the canonical ones, or to the canonical ones rescaled to `height_m` when given.
        rotation_to_camera: (B, 3, 3) from `encode_full`; turns the result from the network's
        virtual-camera axes into the real camera's axes (without it the axes are the virtual
        camera's, which differ by the root's angle off the optical axis).
        """
        pose = np.asarray(joints_3d_norm, dtype=np.float64)
        if pose.ndim != 3 or pose.shape[1:] != (NUM_JOINTS, 3):
            raise ValueError(f"joints_3d_norm must be (B, {NUM_JOINTS}, 3), got {pose.shape}")
        target = self.target_bone_lengths_m(height_m)
        turn = rotation_to_camera is not None
        rot = _NO_ROTATION
        if turn:
            rot = np.asarray(rotation_to_camera, dtype=np.float64)
            if rot.shape != (pose.shape[0], 3, 3):
                raise ValueError(f"rotation_to_camera must be ({pose.shape[0]}, 3, 3), got {rot.shape}")
        out = np.empty(pose.shape, np.float32)
        # per pose: factor = sum(l * target) / max(sum(l^2), 1e-12) over the 16 bone lengths
        # l, then (pose - root) * factor, then the rotation (tests/test_codec.py checks this
        # against the same formula in numpy)
        _to_metric_kernel(pose, target, _CHILD, _PARENT, ROOT, rot, turn, out)
        return out
