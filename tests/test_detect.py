"""stages/detect.py: real mediapipe BlazePose on real COCO images from the shared data.

Figures asserted: pixel distance of the detected joints to the COCO ground truth of the main
person (median over the 10 limb joints both skeletons share), and "no person" on images
without anyone in them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.runtime.skeleton import NUM_JOINTS, Joint
from pipeline.config import DetectConfig
from pipeline.schema import Frame
from stages.detect import DetectStage, landmark_model_path

SHARED = Path(os.environ.get("POSESTREAM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
COCO_DIR = SHARED / "data" / "footage" / "mmpose" / "tests" / "data" / "coco"

#: our joint -> COCO keypoint index, for the limb joints both skeletons define the same way.
#: Hips are left out: ours are Human3.6M hip-joint centres (the mapping raises BlazePose's hips
#: towards the shoulders), COCO's are lower, on the surface.
OURS_TO_COCO: dict[int, int] = {
    Joint.L_SHOULDER: 5, Joint.R_SHOULDER: 6, Joint.L_ELBOW: 7, Joint.R_ELBOW: 8,
    Joint.L_WRIST: 9, Joint.R_WRIST: 10, Joint.L_KNEE: 13, Joint.R_KNEE: 14,
    Joint.L_ANKLE: 15, Joint.R_ANKLE: 16,
}


def shared_file(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(
            f"missing shared data file {path}; set POSESTREAM_SHARED to the shared folder "
            f"(the one holding data/footage)"
        )
    return path


def load_image(name: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR."""
    image = cv2.imread(str(shared_file(COCO_DIR / name)), cv2.IMREAD_COLOR)
    assert image is not None, f"OpenCV could not read {name}"
    return image


def coco_people(name: str) -> list[np.ndarray]:
    """Annotated people in image `name`: each (17, 3) COCO keypoints x, y (px), v."""
    data = json.loads(shared_file(COCO_DIR / "test_coco.json").read_text())
    image_id = next(im["id"] for im in data["images"] if im["file_name"] == name)
    return [
        np.asarray(a["keypoints"], np.float64).reshape(17, 3)
        for a in data["annotations"]
        if a["image_id"] == image_id and a["num_keypoints"] > 0
    ]


def limb_errors_px(joints_2d_px: np.ndarray, coco_kpts: np.ndarray) -> np.ndarray:
    """Pixel distances on the shared, labelled (v > 0) joints."""
    errs = [
        np.linalg.norm(joints_2d_px[ours] - coco_kpts[coco, :2])
        for ours, coco in OURS_TO_COCO.items()
        if coco_kpts[coco, 2] > 0
    ]
    return np.asarray(errs)


def frame(image: np.ndarray, frame_id: int = 0) -> Frame:
    return Frame(frame_id=frame_id, t_capture_ns=10**9 + frame_id * 33_000_000, image=image,
                 source="test")


@pytest.fixture(scope="module")
def static_stage():
    stage = DetectStage(DetectConfig(static_image_mode=True))
    stage.open()
    yield stage
    stage.close()


def test_skier_joints_lie_on_the_coco_ground_truth(static_stage):
    image = load_image("000000000785.jpg")
    kp = static_stage.process(frame(image))
    assert kp.person_present
    assert kp.image_size == (640, 425)
    assert kp.joints_2d_px.shape == (NUM_JOINTS, 2) and kp.confidence.shape == (NUM_JOINTS,)
    (truth,) = coco_people("000000000785.jpg")
    errs = limb_errors_px(kp.joints_2d_px, truth)
    print(f"skier 000000000785.jpg: median {np.median(errs):.1f} px, max {errs.max():.1f} px "
          f"over {errs.size} joints")
    assert errs.size == 10
    assert np.median(errs) < 20.0
    assert np.max(errs) < 60.0
    # a clearly visible person: the limb joints are confident
    assert np.median(kp.confidence[list(OURS_TO_COCO)]) > 0.5
    assert np.all((kp.confidence >= 0) & (kp.confidence <= 1))


@pytest.mark.parametrize("name", ["000000196141.jpg", "000000197388.jpg"])
def test_crowded_images_find_one_of_the_annotated_people(static_stage, name):
    """BlazePose reports one person; it must be one that is annotated, not a blend."""
    kp = static_stage.process(frame(load_image(name)))
    assert kp.person_present
    medians = [np.median(limb_errors_px(kp.joints_2d_px, p)) for p in coco_people(name)
               if limb_errors_px(kp.joints_2d_px, p).size >= 5]
    print(f"{name}: nearest annotated person median {min(medians):.1f} px")
    assert min(medians) < 25.0


def test_images_without_a_person_give_no_person(static_stage):
    skier = load_image("000000000785.jpg")
    background = np.ascontiguousarray(skier[:, :260])  # snow and poles, left of the skier
    blank = np.full((480, 640, 3), 127, np.uint8)
    for i, image in enumerate((background, blank)):
        kp = static_stage.process(frame(image, i))
        assert not kp.person_present
        assert kp.image_size == (image.shape[1], image.shape[0])
        assert np.all(kp.joints_2d_px == 0) and np.all(kp.confidence == 0)
        assert kp.frame_id == i


def test_tracking_mode_follows_then_loses_the_person():
    stage = DetectStage(DetectConfig(static_image_mode=False))
    stage.open()
    try:
        image = load_image("000000000785.jpg")
        (truth,) = coco_people("000000000785.jpg")
        tracked = [stage.process(frame(image, i)) for i in range(4)]
        assert all(k.person_present for k in tracked)
        for k in tracked:
            assert np.median(limb_errors_px(k.joints_2d_px, truth)) < 20.0
        assert [k.frame_id for k in tracked] == [0, 1, 2, 3]
        gone = stage.process(frame(np.full_like(image, 127), 4))
        assert not gone.person_present
    finally:
        stage.close()


def test_bundled_complexity_only():
    assert landmark_model_path(1).is_file()
    if landmark_model_path(2).is_file():
        pytest.skip("the heavy BlazePose model is installed here; nothing to refuse")
    with pytest.raises(RuntimeError, match="model_complexity=1"):
        DetectStage(DetectConfig(model_complexity=2)).open()
    with pytest.raises(ValueError, match="0, 1 or 2"):
        landmark_model_path(5)
