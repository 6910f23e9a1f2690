"""BVH motion files from recorded poses, for Blender, MotionBuilder and other animation tools.

    python -m pipeline.export run.psrec --format bvh [--track ID] -o run.bvh

The skeleton is our 17 joints (engines.runtime.skeleton, names as in JOINT_NAMES) rooted at the
pelvis. A BVH skeleton is rigid, so every bone gets one length per person: the median over the
recording. Each frame's joint rotations are then solved (inverse kinematics) so that forward
kinematics reproduces the recorded joints as closely as fixed bone lengths allow:

- the root (pelvis) takes the recorded pelvis position and the rotation that best aligns its
  three bones (hips, spine) with the recorded ones (least squares, Kabsch);
- a joint with one child (knee, elbow, ...) turns by the smallest rotation that points its
  bone at the recorded child joint, from where forward kinematics has put the joint itself (so
  errors do not add up down a limb); it never twists about its bone;
- the thorax (three children: neck, both shoulders) again takes the best-fit rotation;
- ankles, wrists and the head end the chains (an End Site each, a nominal foot, hand or head
  top; their own rotation stays zero: nothing recorded says how a hand is turned).

The rest pose: the pelvis and thorax children where they are on average in the recording
(relative to the pelvis's and thorax's own left-right and up axes), the limbs straight out in
a T (legs down, arms sideways, spine and head up), facing +Z.

Axes and units: the pipeline's poses are in OpenCV's camera frame (+X right, +Y down, +Z
forward); a BVH is Y-up, so points are turned 180 degrees about X: (x, y, z) -> (x, -y, -z),
right-handed, the camera at the origin looking down -Z, the person's left at +X when facing
the camera. Lengths in metres (Blender's importer then makes them metres at its default scale
1.0). Rotation channels `Yrotation Xrotation Zrotation` (degrees, R = Ry @ Rx @ Rz), position
channels on the root only. The frame time is the median interval between the capture times of
the exported frames (`fps` / `--fps` overrides it: a video file processed faster or slower
than real time has capture times of when its frames were read); one BVH frame per recorded
frame in which the person is present (frames without the person are left out, so a gap plays
back as a jump).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from engines.runtime.skeleton import BONES, JOINT_NAMES, NUM_JOINTS, PARENTS, ROOT, Joint

log = logging.getLogger(__name__)

#: BVH rotation channel order (each non-root joint; the root has positions first).
ROTATION_CHANNELS: tuple[str, ...] = ("Yrotation", "Xrotation", "Zrotation")
_EULER = "YXZ"  # scipy intrinsic order matching ROTATION_CHANNELS: R = Ry @ Rx @ Rz

#: turns OpenCV camera-frame points (+Y down, +Z forward) into the BVH's Y-up frame
CAMERA_TO_Y_UP: np.ndarray = np.diag([1.0, -1.0, -1.0])

_X, _Y, _Z = np.eye(3)
#: rest direction of each single-child bone (T-pose): the unit offset of joint j in its parent
_REST_DIRECTION: dict[int, np.ndarray] = {
    Joint.R_KNEE: -_Y, Joint.R_ANKLE: -_Y, Joint.L_KNEE: -_Y, Joint.L_ANKLE: -_Y,
    Joint.THORAX: _Y, Joint.HEAD: _Y,
    Joint.L_ELBOW: _X, Joint.L_WRIST: _X, Joint.R_ELBOW: -_X, Joint.R_WRIST: -_X,
}
#: End Site offsets (metres, in the leaf joint's frame): a nominal foot, hand and head top
END_SITES: dict[int, np.ndarray] = {
    Joint.R_ANKLE: 0.12 * _Z, Joint.L_ANKLE: 0.12 * _Z, Joint.HEAD: 0.10 * _Y,
    Joint.L_WRIST: 0.08 * _X, Joint.R_WRIST: -0.08 * _X,
}

CHILDREN: tuple[tuple[int, ...], ...] = tuple(
    tuple(int(c) for c in np.flatnonzero(PARENTS == j)) for j in range(NUM_JOINTS)
)
#: joints whose rotation must place several children: (joint, left child, right child, up child)
_MULTI_CHILD: dict[int, tuple[int, int, int]] = {
    Joint.PELVIS: (Joint.L_HIP, Joint.R_HIP, Joint.SPINE),
    Joint.THORAX: (Joint.L_SHOULDER, Joint.R_SHOULDER, Joint.NECK_NOSE),
}


class BvhExportError(ValueError):
    """Poses that cannot become a BVH (none, wrong shape, not finite); the message says why."""


@dataclass(frozen=True)
class BvhSkeleton:
    """The rigid skeleton of one person. offsets_m: (17, 3) each joint's rest offset from its
    parent (the root's is zero), metres, Y-up; bone_lengths_m: (16,) in `BONES` order."""

    offsets_m: np.ndarray
    bone_lengths_m: np.ndarray


@dataclass(frozen=True)
class BvhMotionData:
    """What a BVH file holds: the skeleton, per frame the root position (F, 3) metres and the
    local joint rotations (F, 17, 3, 3), the frame time; fk_m (F, 17, 3) the joints that
    forward kinematics gives, metres, Y-up."""

    skeleton: BvhSkeleton
    root_m: np.ndarray
    local_rotations: np.ndarray
    frame_time_s: float
    fk_m: np.ndarray


def camera_to_y_up(joints_cam_m: np.ndarray) -> np.ndarray:
    """(..., 3) OpenCV camera-frame points -> the BVH's Y-up frame (x, -y, -z), float64."""
    return np.asarray(joints_cam_m, dtype=np.float64) @ CAMERA_TO_Y_UP.T


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def _frame_axes(joints: np.ndarray, left: int, right: int, up: int, at: int) -> np.ndarray:
    """(F, 3, 3) orthonormal frames (columns x: right->left, y: towards `up`, z = x cross y)."""
    x = _unit(joints[:, left] - joints[:, right])
    y = joints[:, up] - joints[:, at]
    y = _unit(y - np.sum(y * x, axis=-1, keepdims=True) * x)
    return np.stack([x, y, np.cross(x, y)], axis=-1)


def fit_skeleton(joints_m: np.ndarray) -> BvhSkeleton:
    """The rigid skeleton for these poses: (F, 17, 3) metres, Y-up. Bone lengths are the median
    over frames; see the module doc for the rest pose."""
    child = np.array([c for c, _ in BONES])
    parent = np.array([p for _, p in BONES])
    lengths = np.median(np.linalg.norm(joints_m[:, child] - joints_m[:, parent], axis=-1), axis=0)
    length_of = dict(zip(child.tolist(), lengths.tolist()))
    offsets = np.zeros((NUM_JOINTS, 3))
    for joint, direction in _REST_DIRECTION.items():
        offsets[joint] = direction * length_of[joint]
    for joint, (left, right, up) in _MULTI_CHILD.items():
        axes = _frame_axes(joints_m, left, right, up, joint)  # (F, 3, 3)
        for c in CHILDREN[joint]:
            local = np.einsum("fji,fj->fi", axes, joints_m[:, c] - joints_m[:, joint])
            offsets[c] = _unit(np.median(_unit(local), axis=0)) * length_of[c]
    return BvhSkeleton(offsets_m=offsets, bone_lengths_m=lengths)


def _best_rotation(rest: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(F, 3, 3) rotations R minimising sum |R @ rest_k - target_fk|^2 (Kabsch).
    rest: (K, 3); target: (F, K, 3)."""
    h = np.einsum("fki,kj->fij", target, rest)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.broadcast_to(np.eye(3), h.shape).copy()
    fix[:, 2, 2] = d
    return u @ fix @ vt


def _smallest_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(F, 3, 3) the smallest rotations turning unit vectors a (F, 3) onto b (F, 3)."""
    axis = np.cross(a, b)
    sin = np.linalg.norm(axis, axis=-1)
    cos = np.sum(a * b, axis=-1)
    # opposite vectors: any axis perpendicular to a
    other = np.where(np.abs(a[:, :1]) < 0.9, _X, _Y)
    fallback = _unit(np.cross(a, other))
    axis = np.where((sin < 1e-9)[:, None], fallback * (cos < 0)[:, None], axis / np.maximum(
        sin, 1e-12)[:, None])
    angle = np.arctan2(sin, cos)
    return Rotation.from_rotvec(axis * angle[:, None]).as_matrix()


def solve_motion(joints_m: np.ndarray, t_s: np.ndarray | None = None,
                 skeleton: BvhSkeleton | None = None) -> BvhMotionData:
    """Inverse kinematics for poses `joints_m` (F, 17, 3) metres, Y-up (see camera_to_y_up).

    t_s: (F,) capture times in seconds (None: 30 fps); the frame time is their median
    interval. skeleton: the rigid skeleton (default: fit_skeleton of these poses).
    Raises BvhExportError for no frames, a wrong shape or non-finite values.
    """
    joints = np.asarray(joints_m, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
        raise BvhExportError(f"expected poses (F, {NUM_JOINTS}, 3), got {joints.shape}")
    if len(joints) == 0:
        raise BvhExportError("no poses to export (is the person ever present?)")
    if not np.isfinite(joints).all():
        raise BvhExportError("the poses hold NaN or infinite values")
    skel = skeleton or fit_skeleton(joints)
    frames = len(joints)
    fk = np.empty_like(joints)
    glob_r = np.empty((frames, NUM_JOINTS, 3, 3))
    local_r = np.empty((frames, NUM_JOINTS, 3, 3))
    offsets = skel.offsets_m
    for j in range(NUM_JOINTS):  # PARENTS lists every parent before its children
        parent = int(PARENTS[j])
        if parent < 0:
            fk[:, j] = joints[:, j]
            parent_r = np.broadcast_to(np.eye(3), (frames, 3, 3))
        else:
            parent_r = glob_r[:, parent]
            fk[:, j] = fk[:, parent] + np.einsum("fij,j->fi", parent_r, offsets[j])
        kids = CHILDREN[j]
        if not kids:
            glob_r[:, j] = parent_r
        elif len(kids) == 1:
            c = kids[0]
            current = _unit(np.einsum("fij,j->fi", parent_r, offsets[c]))
            wanted = _unit(joints[:, c] - fk[:, j])
            glob_r[:, j] = _smallest_rotation(current, wanted) @ parent_r
        else:
            rest = offsets[list(kids)]
            lengths = np.linalg.norm(rest, axis=-1)
            target = _unit(joints[:, list(kids)] - fk[:, j, None]) * lengths[None, :, None]
            glob_r[:, j] = _best_rotation(rest, target)
        local_r[:, j] = np.swapaxes(parent_r, -1, -2) @ glob_r[:, j]
    if t_s is not None and len(t_s) >= 2:
        steps = np.diff(np.asarray(t_s, dtype=np.float64))
        frame_time = float(np.median(steps[steps > 0])) if (steps > 0).any() else 1 / 30
    else:
        frame_time = 1 / 30
    return BvhMotionData(skeleton=skel, root_m=joints[:, ROOT].copy(),
                         local_rotations=local_r, frame_time_s=frame_time, fk_m=fk)


def _euler_degrees(local_rotations: np.ndarray) -> np.ndarray:
    """(F, J, 3, 3) -> (F, J, 3) degrees in ROTATION_CHANNELS order, unwrapped over frames so
    an animation tool interpolates the short way."""
    f, j = local_rotations.shape[:2]
    angles = Rotation.from_matrix(local_rotations.reshape(-1, 3, 3)).as_euler(_EULER)
    return np.rad2deg(np.unwrap(angles.reshape(f, j, 3), axis=0))


def bvh_text(motion: BvhMotionData, names: Sequence[str] = JOINT_NAMES) -> str:
    """The BVH file for `motion`: the hierarchy (depth first from the pelvis), then one line of
    channel values per frame (root position in metres, then each joint's rotations)."""
    lines = ["HIERARCHY"]
    order: list[int] = []

    def node(j: int, depth: int) -> None:
        pad = "  " * depth
        off = motion.skeleton.offsets_m[j]
        lines.append(f"{pad}{'ROOT' if depth == 0 else 'JOINT'} {names[j]}")
        lines.append(pad + "{")
        lines.append(f"{pad}  OFFSET {off[0]:.6f} {off[1]:.6f} {off[2]:.6f}")
        channels = ROTATION_CHANNELS if depth else ("Xposition", "Yposition", "Zposition",
                                                    *ROTATION_CHANNELS)
        lines.append(f"{pad}  CHANNELS {len(channels)} {' '.join(channels)}")
        order.append(j)
        for c in CHILDREN[j]:
            node(c, depth + 1)
        if not CHILDREN[j]:
            end = END_SITES[j]
            lines.extend([f"{pad}  End Site", f"{pad}  {{",
                          f"{pad}    OFFSET {end[0]:.6f} {end[1]:.6f} {end[2]:.6f}",
                          f"{pad}  }}"])
        lines.append(pad + "}")

    node(ROOT, 0)
    euler = _euler_degrees(motion.local_rotations)[:, order]  # (F, J, 3) in file order
    values = np.concatenate([motion.root_m, euler.reshape(len(euler), -1)], axis=1)
    lines += ["MOTION", f"Frames: {len(values)}", f"Frame Time: {motion.frame_time_s:.6f}"]
    lines += [" ".join(f"{v:.6f}" for v in row) for row in values]
    return "\n".join(lines) + "\n"


def write_bvh(path: str | Path, motion: BvhMotionData) -> Path:
    """Write `motion` as a BVH file at `path`; returns the path."""
    path = Path(path)
    path.write_text(bvh_text(motion), encoding="ascii")
    return path


def fk_error_mm(motion: BvhMotionData, joints_m: np.ndarray) -> np.ndarray:
    """(F, 17) distance between the forward-kinematics joints and `joints_m`, millimetres."""
    return np.linalg.norm(motion.fk_m - joints_m, axis=-1) * 1000.0


@dataclass(frozen=True)
class BvhExportSummary:
    """What `export_recording` wrote: the track, frames, joint count, the frame time, each
    track's frame count in the recording, and the forward-kinematics error against the
    recorded joints (millimetres: mean, median, 95th percentile, max over every joint of
    every frame)."""

    path: str
    track_id: int
    frames: int
    joints: int
    frame_time_s: float
    tracks: dict[int, int]
    fk_error_mm: dict[str, float]


def track_poses(poses) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per track id: (joints (F, 17, 3) metres camera frame, t_capture_ns (F,) int64) over the
    frames in which that person is present, in order. poses: iterable of pipeline.schema
    Pose3D."""
    joints: dict[int, list[np.ndarray]] = {}
    times: dict[int, list[int]] = {}
    for pose in poses:
        for person in pose.people:
            joints.setdefault(person.track_id, []).append(person.joints_3d_m)
            times.setdefault(person.track_id, []).append(pose.t_capture_ns)
    return {tid: (np.stack(joints[tid]).astype(np.float64), np.asarray(times[tid], np.int64))
            for tid in joints}


def export_recording(path: str | Path, out: str | Path, track_id: int | None = None,
                     fps: float | None = None) -> BvhExportSummary:
    """Write one person of recording `path` (.psrec) as a BVH file at `out`.

    track_id: whose motion (default: the person present in the most frames). fps: the frame
    rate to write instead of the one the capture times give (a video file processed faster or
    slower than real time: its capture times are when its frames were read, not its own
    rate). Messages that are not Pose3D or do not decode are skipped. Raises RecordingError
    for an unreadable recording, BvhExportError when the recording holds nobody or not that
    track.
    """
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise BvhExportError(f"fps must be a positive number, got {fps}")
    from pipeline.record import Recording
    from pipeline.schema import Pose3D, SchemaError

    poses = []
    with Recording(path) as rec:
        for item in rec:
            try:
                msg = item.decode()
            except SchemaError as exc:
                log.warning("skipped a message that does not decode: %s", exc)
                continue
            if isinstance(msg, Pose3D):
                poses.append(msg)
    tracks = track_poses(poses)
    counts = {tid: len(t) for tid, (_, t) in sorted(tracks.items())}
    if not tracks:
        raise BvhExportError(f"{path} holds no person ({len(poses)} poses, all empty): "
                             "nothing to export")
    if track_id is None:
        track_id = max(counts, key=lambda tid: (counts[tid], -tid))
    elif track_id not in tracks:
        raise BvhExportError(f"{path} has no track {track_id}; tracks (frames): " + ", ".join(
            f"{tid} ({n})" for tid, n in counts.items()))
    joints_cam, t_ns = tracks[track_id]
    joints = camera_to_y_up(joints_cam)
    motion = solve_motion(joints, t_ns / 1e9 if fps is None else np.arange(len(joints)) / fps)
    write_bvh(out, motion)
    err = fk_error_mm(motion, joints)
    summary = BvhExportSummary(
        path=str(out), track_id=int(track_id), frames=len(joints), joints=NUM_JOINTS,
        frame_time_s=motion.frame_time_s, tracks=counts,
        fk_error_mm={"mean": float(err.mean()), "median": float(np.median(err)),
                     "p95": float(np.percentile(err, 95)), "max": float(err.max())})
    log.info("BVH: track %d, %d frames of %d joints, frame time %.4f s, FK error mean %.1f mm "
             "(p95 %.1f, max %.1f) -> %s", summary.track_id, summary.frames, summary.joints,
             summary.frame_time_s, summary.fk_error_mm["mean"], summary.fk_error_mm["p95"],
             summary.fk_error_mm["max"], out)
    return summary
