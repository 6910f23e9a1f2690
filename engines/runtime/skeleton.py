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


# --- BlazePose (mediapipe Pose, 33 landmarks) -> 17 joints ------------------------------------

#: mediapipe Pose landmark names, index = landmark id (mp.solutions.pose.PoseLandmark).
BLAZEPOSE33_NAMES: tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
)
_BP = {name: i for i, name in enumerate(BLAZEPOSE33_NAMES)}

#: BlazePose's hip landmarks sit below the hip joint centres that Human3.6M and our mocap use:
#: on the four Human3.6M frames of the shared data the ground-truth hip midpoint lies 0.14-0.20
#: (median 0.165) of the BlazePose hip-midpoint -> shoulder-midpoint vector above BlazePose's.
#: Both hips are moved up by this fraction of that vector.
BLAZEPOSE_HIP_RAISE: float = 0.16
#: Spine and thorax along the (raised) pelvis -> shoulder-midpoint axis: the Human3.6M fractions
#: of the data README's trunk table (spine 0.55, thorax 1.16).
H36M_SPINE_FRACTION: float = 0.55
H36M_THORAX_FRACTION: float = 1.16
#: Human3.6M's head joint above the midpoint of the ears, as a fraction of the BlazePose
#: hip-midpoint -> shoulder-midpoint vector (measured on the four Human3.6M frames: 0.10-0.21).
BLAZEPOSE_HEAD_ABOVE_EARS: float = 0.13

_BP_LIMBS = {
    Joint.R_KNEE: "right_knee", Joint.R_ANKLE: "right_ankle", Joint.L_KNEE: "left_knee",
    Joint.L_ANKLE: "left_ankle", Joint.L_SHOULDER: "left_shoulder", Joint.L_ELBOW: "left_elbow",
    Joint.L_WRIST: "left_wrist", Joint.R_SHOULDER: "right_shoulder", Joint.R_ELBOW: "right_elbow",
    Joint.R_WRIST: "right_wrist",
}


def blazepose33_to_h36m17(landmarks_px: np.ndarray, visibility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BlazePose's 33 landmarks -> our 17 joints in the image, with per-joint confidences.

    landmarks_px: (..., 33, 2) pixels (x right, y down), mediapipe landmark order;
    visibility: (..., 33) in [0, 1] (mediapipe's `visibility`).
    Returns (joints_2d_px (..., 17, 2) float32, confidence (..., 17) float32 in [0, 1]).

    Knees, ankles, shoulders, elbows, wrists: the landmarks of the same name. The rest are
    derived, with a = shoulder midpoint - hip midpoint (BlazePose's trunk vector):
    - r_hip, l_hip: BlazePose's hips moved by `BLAZEPOSE_HIP_RAISE` * a (towards the shoulders);
      pelvis: their midpoint (Human3.6M's definition).
    - spine, thorax: pelvis + `H36M_SPINE_FRACTION` / `H36M_THORAX_FRACTION` * (shoulder
      midpoint - pelvis), the Human3.6M trunk fractions.
    - neck_nose: midpoint of the nose and the mouth centre (Human3.6M's joint lies between them
      on the shared Human3.6M frames); it follows the face when the head turns or bends.
    - head: midpoint of the ears + `BLAZEPOSE_HEAD_ABOVE_EARS` * a.
    Each derived joint's confidence is the smallest visibility of the landmarks it uses.
    """
    marks = np.asarray(landmarks_px, dtype=np.float64)
    vis = np.asarray(visibility, dtype=np.float64)
    if marks.shape[-2:] != (33, 2) or vis.shape != marks.shape[:-1]:
        raise ValueError(
            f"expected landmarks_px (..., 33, 2) and visibility (..., 33), got {marks.shape} and "
            f"{vis.shape}; pass mediapipe Pose landmarks in pixels"
        )
    p = lambda name: marks[..., _BP[name], :]  # noqa: E731
    v = lambda *names: np.min(np.stack([vis[..., _BP[n]] for n in names], -1), -1)  # noqa: E731
    hip_mid = (p("left_hip") + p("right_hip")) / 2
    shoulder_mid = (p("left_shoulder") + p("right_shoulder")) / 2
    trunk = shoulder_mid - hip_mid
    r_hip = p("right_hip") + BLAZEPOSE_HIP_RAISE * trunk
    l_hip = p("left_hip") + BLAZEPOSE_HIP_RAISE * trunk
    pelvis = (r_hip + l_hip) / 2
    trunk_vis = v("left_hip", "right_hip", "left_shoulder", "right_shoulder")

    joints = np.empty(marks.shape[:-2] + (NUM_JOINTS, 2))
    conf = np.empty(marks.shape[:-2] + (NUM_JOINTS,))
    for joint, name in _BP_LIMBS.items():
        joints[..., joint, :], conf[..., joint] = p(name), vis[..., _BP[name]]
    joints[..., Joint.PELVIS, :], conf[..., Joint.PELVIS] = pelvis, trunk_vis
    joints[..., Joint.R_HIP, :], conf[..., Joint.R_HIP] = r_hip, trunk_vis
    joints[..., Joint.L_HIP, :], conf[..., Joint.L_HIP] = l_hip, trunk_vis
    joints[..., Joint.SPINE, :] = pelvis + H36M_SPINE_FRACTION * (shoulder_mid - pelvis)
    joints[..., Joint.THORAX, :] = pelvis + H36M_THORAX_FRACTION * (shoulder_mid - pelvis)
    conf[..., Joint.SPINE] = conf[..., Joint.THORAX] = trunk_vis
    mouth = (p("mouth_left") + p("mouth_right")) / 2
    joints[..., Joint.NECK_NOSE, :] = (p("nose") + mouth) / 2
    conf[..., Joint.NECK_NOSE] = v("nose", "mouth_left", "mouth_right")
    joints[..., Joint.HEAD, :] = (p("left_ear") + p("right_ear")) / 2 + BLAZEPOSE_HEAD_ABOVE_EARS * trunk
    conf[..., Joint.HEAD] = np.minimum(v("left_ear", "right_ear"), trunk_vis)
    return joints.astype(np.float32), np.clip(conf, 0.0, 1.0).astype(np.float32)
