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


# --- Mappings from other skeletons into the 17 joints ---------------------------------------
# A mapping gives, for each of the 17 joints in `Joint` order, a linear combination of named
# source joints: `((name, weight), ...)`, weights summing to 1. Positions of any source skeleton
# (BVH forward kinematics, the CMU exp-map arrays) become our 17 joints with `mapping_matrix`.
# Sources and "approx." notes: ../shared/data/README.md, "Relating the skeletons".

JointRecipe = tuple[tuple[str, float], ...]

#: CMU skeleton (the BVH files of cmu_bvh, 31 joints + End Sites named `<parent>_end`, and the
#: 38-node cmu_expmap arrays, which use the same names). Pelvis: midpoint of the hip joints (the
#: CMU root `Hips` sits about 95 mm above it). Spine = Chest, thorax = Neck, neck_nose = Head,
#: head = Head_end: the nearest CMU joints along the trunk (fractions 0.57 / 1.11 / 1.33 / 1.57 of
#: the hip-to-shoulder axis against Human3.6M's 0.55 / 1.16 / 1.37 / 1.59).
CMU_TO_H36M17: tuple[JointRecipe, ...] = (
    (("LeftHip", 0.5), ("RightHip", 0.5)),
    (("RightHip", 1.0),), (("RightKnee", 1.0),), (("RightAnkle", 1.0),),
    (("LeftHip", 1.0),), (("LeftKnee", 1.0),), (("LeftAnkle", 1.0),),
    (("Chest", 1.0),), (("Neck", 1.0),), (("Head", 1.0),), (("Head_end", 1.0),),
    (("LeftShoulder", 1.0),), (("LeftElbow", 1.0),), (("LeftWrist", 1.0),),
    (("RightShoulder", 1.0),), (("RightElbow", 1.0),), (("RightWrist", 1.0),),
)

#: The 31 joints of the CMU BVH files (cmu_bvh), in file order.
CMU_BVH_JOINT_NAMES: tuple[str, ...] = (
    "Hips", "LHipJoint", "LeftHip", "LeftKnee", "LeftAnkle", "LeftToe", "RHipJoint", "RightHip",
    "RightKnee", "RightAnkle", "RightToe", "lowerback", "Chest", "Chest2", "lowerneck", "Neck",
    "Head", "LeftCollar", "LeftShoulder", "LeftElbow", "LeftWrist", "lhand", "LFingers", "LThumb",
    "RightCollar", "RightShoulder", "RightElbow", "RightWrist", "rhand", "RFingers", "RThumb",
)

#: The 38 nodes of the cmu_expmap arrays: the CMU BVH hierarchy with End Sites as nodes.
CMU_EXPMAP_JOINT_NAMES: tuple[str, ...] = (
    "Hips", "LHipJoint", "LeftHip", "LeftKnee", "LeftAnkle", "LeftToe", "LeftToe_end",
    "RHipJoint", "RightHip", "RightKnee", "RightAnkle", "RightToe", "RightToe_end", "lowerback",
    "Chest", "Chest2", "lowerneck", "Neck", "Head", "Head_end", "LeftCollar", "LeftShoulder",
    "LeftElbow", "LeftWrist", "lhand", "LFingers", "LFingers_end", "LThumb", "LThumb_end",
    "RightCollar", "RightShoulder", "RightElbow", "RightWrist", "rhand", "RFingers",
    "RFingers_end", "RThumb", "RThumb_end",
)

#: The 22 joints of the Bandai Namco BVH files (bandai1, bandai2), in file order.
BANDAI_JOINT_NAMES: tuple[str, ...] = (
    "joint_Root", "Hips", "Spine", "Chest", "Neck", "Head", "Shoulder_L", "UpperArm_L",
    "LowerArm_L", "Hand_L", "Shoulder_R", "UpperArm_R", "LowerArm_R", "Hand_R", "UpperLeg_L",
    "LowerLeg_L", "Foot_L", "Toes_L", "UpperLeg_R", "LowerLeg_R", "Foot_R", "Toes_R",
)

#: How far beyond Bandai's `Head` the head top is guessed, in units of the Neck -> Head segment
#: (65 mm): Bandai's Head sits at 1.28 of the hip-to-shoulder axis (389 mm), Human3.6M's head at
#: 1.59, so about 0.31 * 389 = 120 mm = 1.8 segments further. A guess: Bandai has no head top.
BANDAI_HEAD_EXTENSION: float = 1.8

#: Bandai Namco skeleton. Pelvis: midpoint of the hip joints (`Hips` is 22 mm above it). Spine:
#: midpoint of Spine and Chest (fractions 0.46 and 0.69, Human3.6M spine 0.55). Thorax = Neck
#: (1.11), neck_nose = Head (1.28, base of the skull). Head: Neck -> Head extended beyond Head by
#: `BANDAI_HEAD_EXTENSION` segments (a guess, see above). Shoulders are `UpperArm_*`.
BANDAI_TO_H36M17: tuple[JointRecipe, ...] = (
    (("UpperLeg_L", 0.5), ("UpperLeg_R", 0.5)),
    (("UpperLeg_R", 1.0),), (("LowerLeg_R", 1.0),), (("Foot_R", 1.0),),
    (("UpperLeg_L", 1.0),), (("LowerLeg_L", 1.0),), (("Foot_L", 1.0),),
    (("Spine", 0.5), ("Chest", 0.5)), (("Neck", 1.0),), (("Head", 1.0),),
    (("Head", 1.0 + BANDAI_HEAD_EXTENSION), ("Neck", -BANDAI_HEAD_EXTENSION)),
    (("UpperArm_L", 1.0),), (("LowerArm_L", 1.0),), (("Hand_L", 1.0),),
    (("UpperArm_R", 1.0),), (("LowerArm_R", 1.0),), (("Hand_R", 1.0),),
)


def mapping_matrix(recipes: tuple[JointRecipe, ...], source_names) -> np.ndarray:
    """(17, S) float64 matrix M such that `M @ source_joints (S, 3)` gives our 17 joints.

    recipes: one `JointRecipe` per joint of `Joint` (e.g. `CMU_TO_H36M17`); source_names: the S
    joint names of the source skeleton. Raises ValueError naming any joint the source lacks.
    """
    names = list(source_names)
    if len(recipes) != NUM_JOINTS:
        raise ValueError(f"a mapping needs {NUM_JOINTS} recipes, got {len(recipes)}")
    missing = sorted({n for recipe in recipes for n, _ in recipe if n not in names})
    if missing:
        raise ValueError(f"source skeleton lacks joints {missing}; its joints are {names}")
    matrix = np.zeros((NUM_JOINTS, len(names)))
    for j, recipe in enumerate(recipes):
        for name, weight in recipe:
            matrix[j, names.index(name)] += weight
    return matrix


def map_joints(joints_src: np.ndarray, recipes: tuple[JointRecipe, ...], source_names) -> np.ndarray:
    """(..., S, 3) source joint positions -> (..., 17, 3) in the same unit and frame (float64)."""
    matrix = mapping_matrix(recipes, source_names)
    return np.einsum("js,...sd->...jd", matrix, np.asarray(joints_src, dtype=np.float64))
