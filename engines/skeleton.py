"""The one 17-joint skeleton every part of the system speaks (Human3.6M order).

Joint order, parents and left/right pairs are data here and nowhere else: the trainer,
the lifter, the smoother and the publisher all index joints through this module.

Conventions used across the project:
- 2D joints: `(..., J, 2)` float32 pixels (x right, y down) unless a name says otherwise.
- 3D joints: `(..., J, 3)`; camera frame is OpenCV's (+X right, +Y down, +Z forward);
  world/mocap frame has +Y up. Units are in the variable name (`_m`, `_mm`).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Joint(IntEnum):
    """Human3.6M 17-joint layout. `int(Joint.HEAD) == 10`."""

    PELVIS = 0
    R_HIP = 1
    R_KNEE = 2
    R_ANKLE = 3
    L_HIP = 4
    L_KNEE = 5
    L_ANKLE = 6
    SPINE = 7
    THORAX = 8
    NECK_NOSE = 9
    HEAD = 10
    L_SHOULDER = 11
    L_ELBOW = 12
    L_WRIST = 13
    R_SHOULDER = 14
    R_ELBOW = 15
    R_WRIST = 16


NUM_JOINTS: int = len(Joint)
JOINT_NAMES: tuple[str, ...] = tuple(j.name.lower() for j in Joint)
ROOT: int = int(Joint.PELVIS)

#: parent of each joint, -1 for the root.
PARENTS: np.ndarray = np.array(
    [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15], dtype=np.int64
)

#: (left, right) joint pairs, for flipping a pose left-right.
LEFT_RIGHT_PAIRS: tuple[tuple[int, int], ...] = (
    (Joint.L_HIP, Joint.R_HIP),
    (Joint.L_KNEE, Joint.R_KNEE),
    (Joint.L_ANKLE, Joint.R_ANKLE),
    (Joint.L_SHOULDER, Joint.R_SHOULDER),
    (Joint.L_ELBOW, Joint.R_ELBOW),
    (Joint.L_WRIST, Joint.R_WRIST),
)

#: bones as (child, parent) index pairs, one per non-root joint, in joint order.
BONES: tuple[tuple[int, int], ...] = tuple(
    (j, int(PARENTS[j])) for j in range(NUM_JOINTS) if PARENTS[j] >= 0
)


def flip_permutation() -> np.ndarray:
    """(J,) int64: joint index permutation that swaps left and right joints."""
    perm = np.arange(NUM_JOINTS)
    for left, right in LEFT_RIGHT_PAIRS:
        perm[left], perm[right] = right, left
    return perm


def bone_lengths(joints_3d: np.ndarray) -> np.ndarray:
    """Bone lengths of poses.

    joints_3d: (..., J, 3) any length unit. Returns (..., J-1) in the same unit, one per
    entry of `BONES`.
    """
    child = np.array([c for c, _ in BONES])
    parent = np.array([p for _, p in BONES])
    return np.linalg.norm(joints_3d[..., child, :] - joints_3d[..., parent, :], axis=-1)
