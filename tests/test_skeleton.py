"""Skeleton mappings (engines/runtime/skeleton.py): CMU / Bandai recipes and BlazePose-33 on real
mediapipe results (one COCO photograph and one Human3.6M frame with ground truth)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from engines.runtime import skeleton
from engines.runtime.skeleton import NUM_JOINTS, Joint

SHARED = Path(os.environ.get("POSESTREAM_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
FOOTAGE = SHARED / "data" / "footage" / "mmpose" / "tests" / "data"
#: COCO keypoint order of test_coco.json -> our joint of the same name
COCO_TO_OURS = {
    5: Joint.L_SHOULDER, 6: Joint.R_SHOULDER, 7: Joint.L_ELBOW, 8: Joint.R_ELBOW,
    9: Joint.L_WRIST, 10: Joint.R_WRIST, 11: Joint.L_HIP, 12: Joint.R_HIP,
    13: Joint.L_KNEE, 14: Joint.R_KNEE, 15: Joint.L_ANKLE, 16: Joint.R_ANKLE,
}


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"shared data file missing: {path} (set POSESTREAM_SHARED to the shared folder)")
    return path


def _blazepose(image_paths: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Real mediapipe Pose (static images, the bundled full model): (33, 2) px, (33,) visibility."""
    import cv2
    import mediapipe as mp

    results = []
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1) as pose:
        for path in image_paths:
            image = cv2.imread(str(_need(path)))
            height, width = image.shape[:2]
            found = pose.process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).pose_landmarks
            assert found is not None, f"mediapipe found nobody in {path}"
            marks = found.landmark
            results.append((np.array([(m.x * width, m.y * height) for m in marks]),
                            np.array([m.visibility for m in marks])))
    return results


@pytest.fixture(scope="module")
def detections():
    """BlazePose on the COCO skier (000000000785.jpg) and Human3.6M S7 Greeting (one call)."""
    data = np.load(_need(FOOTAGE / "h36m" / "test_h36m_body3d.npz"))
    h36m_index = 2  # S7_Greeting.55011271_000396.jpg
    paths = [FOOTAGE / "coco" / "000000000785.jpg", FOOTAGE / "h36m" / str(data["imgname"][h36m_index])]
    coco, h36m = _blazepose(paths)
    return {"coco": coco, "h36m": h36m, "h36m_gt_px": data["part"][h36m_index, :, :2]}


def test_blazepose_on_coco_skier_matches_annotations_left_is_left(detections):
    landmarks, visibility = detections["coco"]
    joints, conf = skeleton.blazepose33_to_h36m17(landmarks, visibility)
    assert joints.shape == (NUM_JOINTS, 2) and conf.shape == (NUM_JOINTS,)
    assert joints.dtype == np.float32 and conf.dtype == np.float32
    assert np.all((conf >= 0) & (conf <= 1)) and np.median(conf) > 0.8
    coco = json.loads(_need(FOOTAGE / "coco" / "test_coco.json").read_text())
    (ann,) = [a for a in coco["annotations"] if a["image_id"] == 785]
    gt = np.reshape(ann["keypoints"], (17, 3)).astype(float)
    trunk_px = np.linalg.norm((gt[5, :2] + gt[6, :2]) / 2 - (gt[11, :2] + gt[12, :2]) / 2)
    for k, ours in COCO_TO_OURS.items():
        err = np.linalg.norm(joints[ours] - gt[k, :2])
        assert err < 0.35 * trunk_px, f"{skeleton.JOINT_NAMES[ours]} {err:.0f} px from COCO's"
    # left is left: each left joint is nearer COCO's left than COCO's right joint
    for left_k, right_k in ((5, 6), (7, 8), (9, 10), (13, 14), (15, 16)):
        ours = joints[COCO_TO_OURS[left_k]]
        assert np.linalg.norm(ours - gt[left_k, :2]) < np.linalg.norm(ours - gt[right_k, :2])
    # derived joints: pelvis midway between the hips; spine between pelvis and thorax; the
    # skier is upright, so thorax, neck_nose and head are ever higher (smaller y) in the image
    np.testing.assert_allclose(joints[Joint.PELVIS], (joints[Joint.L_HIP] + joints[Joint.R_HIP]) / 2, atol=1e-3)
    pelvis_to_thorax = joints[Joint.THORAX] - joints[Joint.PELVIS]
    along = np.dot(joints[Joint.SPINE] - joints[Joint.PELVIS], pelvis_to_thorax) / np.dot(pelvis_to_thorax, pelvis_to_thorax)
    assert along == pytest.approx(0.55 / 1.16, abs=1e-3)
    y = joints[:, 1]
    assert y[Joint.PELVIS] > y[Joint.SPINE] > y[Joint.THORAX] > y[Joint.HEAD]
    assert y[Joint.THORAX] > y[Joint.NECK_NOSE]
    gt_hip_mid = (gt[11, :2] + gt[12, :2]) / 2
    assert np.linalg.norm(joints[Joint.PELVIS] - gt_hip_mid) < 0.3 * trunk_px


def test_blazepose_on_human36m_frame_matches_ground_truth(detections):
    """Human3.6M S7 (one of the four frames the derived-joint constants were measured on)."""
    landmarks, visibility = detections["h36m"]
    joints, _ = skeleton.blazepose33_to_h36m17(landmarks, visibility)
    err = np.linalg.norm(joints - detections["h36m_gt_px"], axis=-1)
    assert np.median(err) < 10.0  # px; the subject is about 450 px tall
    derived = [Joint.PELVIS, Joint.SPINE, Joint.THORAX, Joint.NECK_NOSE, Joint.HEAD]
    assert err[derived].max() < 15.0


def test_blazepose_derivations_batched_and_confidence_is_weakest_input():
    rng = np.random.default_rng(0)
    marks = rng.uniform(0, 500, (2, 3, 33, 2))
    vis = rng.uniform(0, 1, (2, 3, 33))
    joints, conf = skeleton.blazepose33_to_h36m17(marks, vis)
    assert joints.shape == (2, 3, NUM_JOINTS, 2) and conf.shape == (2, 3, NUM_JOINTS)
    bp = {n: i for i, n in enumerate(skeleton.BLAZEPOSE33_NAMES)}
    m = marks[1, 2].astype(np.float32)
    trunk = (m[11] + m[12]) / 2 - (m[23] + m[24]) / 2
    np.testing.assert_allclose(joints[1, 2, Joint.L_HIP], m[bp["left_hip"]] + 0.16 * trunk, rtol=1e-5)
    np.testing.assert_allclose(joints[1, 2, Joint.L_WRIST], m[bp["left_wrist"]], rtol=1e-6)
    np.testing.assert_allclose(joints[1, 2, Joint.R_KNEE], m[bp["right_knee"]], rtol=1e-6)
    np.testing.assert_allclose(joints[1, 2, Joint.NECK_NOSE], (m[0] + (m[9] + m[10]) / 2) / 2, rtol=1e-5)
    np.testing.assert_allclose(conf[1, 2, Joint.PELVIS], vis[1, 2, [11, 12, 23, 24]].min(), rtol=1e-6)
    np.testing.assert_allclose(conf[1, 2, Joint.HEAD], vis[1, 2, [7, 8, 11, 12, 23, 24]].min(), rtol=1e-6)
    with pytest.raises(ValueError, match="33"):
        skeleton.blazepose33_to_h36m17(marks[..., :17, :], vis[..., :17])


@pytest.mark.parametrize("recipes, names", [
    (skeleton.CMU_TO_H36M17, skeleton.CMU_EXPMAP_JOINT_NAMES),
    (skeleton.BANDAI_TO_H36M17, skeleton.BANDAI_JOINT_NAMES),
])
def test_mocap_mappings_are_affine_and_complete(recipes, names):
    M = skeleton.mapping_matrix(recipes, names)
    assert M.shape == (NUM_JOINTS, len(names))
    np.testing.assert_allclose(M.sum(axis=1), 1.0)  # affine: translating the source translates us
    shift = np.array([10.0, -20.0, 30.0])
    src = np.random.default_rng(1).normal(size=(4, len(names), 3))
    np.testing.assert_allclose(skeleton.map_joints(src + shift, recipes, names),
                               skeleton.map_joints(src, recipes, names) + shift, atol=1e-9)
    # every left joint of ours comes from a source joint named left (and right from right)
    for joint, recipe in zip(Joint, recipes):
        side = joint.name[:2]
        if side in ("L_", "R_"):
            word = "Left" if side == "L_" else "Right"
            short = "_L" if side == "L_" else "_R"
            assert all(word in n or n.endswith(short) for n, _ in recipe), (joint.name, recipe)


def test_cmu_mapping_reproduces_the_readme_worked_example():
    d = np.load(_need(SHARED / "data" / "mocap" / "cmu_expmap" / "train" / "walking_1.npz"))
    names = list(d["joint_names"])
    J = d["joints_mm"].astype(np.float64)
    g = lambda n: J[:, names.index(n)]  # noqa: E731
    expected = np.stack([
        (g("LeftHip") + g("RightHip")) / 2, g("RightHip"), g("RightKnee"), g("RightAnkle"),
        g("LeftHip"), g("LeftKnee"), g("LeftAnkle"), g("Chest"), g("Neck"), g("Head"),
        g("Head_end"), g("LeftShoulder"), g("LeftElbow"), g("LeftWrist"), g("RightShoulder"),
        g("RightElbow"), g("RightWrist")], axis=1)
    np.testing.assert_allclose(skeleton.map_joints(J, skeleton.CMU_TO_H36M17, names), expected, atol=1e-9)
    with pytest.raises(ValueError, match="Head_end"):
        skeleton.mapping_matrix(skeleton.CMU_TO_H36M17, skeleton.CMU_BVH_JOINT_NAMES)
