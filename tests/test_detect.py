"""stages/detect.py: real mediapipe PoseLandmarker (BlazePose) on real COCO images from the
shared data, several people per image.

Figures asserted: how many of the annotated people (5 or more visible keypoints) are found,
matched one to one (median pixel distance over the 10 limb joints both skeletons share, under
10 % of the square root of the annotated area); the main person's distance; nobody on images
without anyone; the --max-people cap; the bundle built from the installed wheel.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from engines.runtime.skeleton import NUM_JOINTS, Joint
from pipeline.config import DetectConfig, IMAGE_MAX_PEOPLE
from pipeline.schema import Frame
from stages import detect as detect_module
from stages.detect import DetectorModelError, DetectStage, pose_bundle

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


def annotated(name: str, min_keypoints: int = 5) -> list[dict]:
    data = json.loads(shared_file(COCO_DIR / "test_coco.json").read_text())
    image_id = next(im["id"] for im in data["images"] if im["file_name"] == name)
    return [a for a in data["annotations"]
            if a["image_id"] == image_id and a["num_keypoints"] >= min_keypoints]


def matched_people(people, annotations) -> list[float]:
    """One-to-one matches (optimal assignment) of found people to annotated ones; returns the
    matched errors as a fraction of sqrt(annotated area), only those under 0.10."""
    if not people or not annotations:
        return []
    cost = np.full((len(annotations), len(people)), 1e3)
    for i, a in enumerate(annotations):
        truth = np.asarray(a["keypoints"], np.float64).reshape(17, 3)
        for j, p in enumerate(people):
            errs = limb_errors_px(p.joints_2d_px, truth)
            if errs.size:
                cost[i, j] = np.median(errs) / np.sqrt(a["area"])
    rows, cols = linear_sum_assignment(cost)
    return [float(cost[r, c]) for r, c in zip(rows, cols) if cost[r, c] < 0.10]


@pytest.fixture(scope="module")
def static_stage():
    """The --images defaults: tiles, and up to IMAGE_MAX_PEOPLE (one photo has 5 annotated)."""
    config = DetectConfig(static_image_mode=True)
    assert config.max_people == IMAGE_MAX_PEOPLE
    stage = DetectStage(config)
    stage.open()
    yield stage
    stage.close()


def test_skier_joints_lie_on_the_coco_ground_truth(static_stage):
    image = load_image("000000000785.jpg")
    kp = static_stage.process(frame(image))
    assert kp.image_size == (640, 425)
    (truth,) = coco_people("000000000785.jpg")
    assert len(kp.people) >= 1
    errors = [limb_errors_px(p.joints_2d_px, truth) for p in kp.people]
    best = min(range(len(errors)), key=lambda i: np.median(errors[i]))
    person, errs = kp.people[best], errors[best]
    print(f"skier 000000000785.jpg: {len(kp.people)} found; median {np.median(errs):.1f} px, "
          f"max {errs.max():.1f} px over {errs.size} joints")
    assert person.joints_2d_px.shape == (NUM_JOINTS, 2)
    assert person.confidence.shape == (NUM_JOINTS,)
    assert person.track_id == 0  # the track stage names people, not the detector
    assert errs.size == 10
    assert np.median(errs) < 20.0
    assert np.max(errs) < 60.0
    # a clearly visible person: the limb joints are confident
    assert np.median(person.confidence[list(OURS_TO_COCO)]) > 0.5
    assert np.all((person.confidence >= 0) & (person.confidence <= 1))


COCO_IMAGES = ["000000000785.jpg", "000000040083.jpg", "000000196141.jpg", "000000197388.jpg"]


def test_the_four_coco_photos_find_most_annotated_people(static_stage):
    """Whole image + 2x2 and 3x3 tiles, each person then looked at again in crops of their
    own (the --images defaults): at least 9 of the 12 people with 5+ visible keypoints, each
    matched once (the issue's floor). Seen: 9 of 12 (the whole image alone: 3; one refine
    margin instead of two: 8)."""
    found = total = 0
    for name in COCO_IMAGES:
        anns = annotated(name)
        kp = static_stage.process(frame(load_image(name)))
        matches = matched_people(kp.people, anns)
        print(f"{name}: {len(kp.people)} found, {len(matches)} of {len(anns)} annotated matched "
              f"(errors {[round(m, 3) for m in matches]} of sqrt(area))")
        found += len(matches)
        total += len(anns)
    print(f"COCO: {found} of {total} annotated people matched")
    assert total == 12
    assert found >= 9


def test_whole_image_only_finds_fewer(static_stage):
    """Without tiles the detector misses the small people: the tiles are what finds them."""
    stage = DetectStage(DetectConfig(static_image_mode=True, tiles=()))
    stage.open()
    try:
        whole = sum(len(matched_people(stage.process(frame(load_image(n))).people, annotated(n)))
                    for n in COCO_IMAGES)
    finally:
        stage.close()
    tiled = sum(len(matched_people(static_stage.process(frame(load_image(n))).people,
                                   annotated(n))) for n in COCO_IMAGES)
    print(f"COCO matched: whole image {whole}, with tiles {tiled}")
    assert whole < tiled


def test_images_without_a_person_give_no_people(static_stage):
    skier = load_image("000000000785.jpg")
    background = np.ascontiguousarray(skier[:, :260])  # snow and poles, left of the skier
    blank = np.full((480, 640, 3), 127, np.uint8)
    for i, image in enumerate((background, blank)):
        kp = static_stage.process(frame(image, i))
        assert kp.people == ()
        assert kp.image_size == (image.shape[1], image.shape[0])
        assert kp.frame_id == i


def test_more_people_than_max_people_keeps_the_largest_and_counts_the_rest():
    """A mosaic of 20 people (the skier, 5 x 4, one of them larger): max_people 4 keeps 4,
    the largest among them, and counts the others."""
    skier = load_image("000000000785.jpg")
    (truth,) = coco_people("000000000785.jpg")
    x0, y0 = truth[truth[:, 2] > 0, :2].min(axis=0) - 30
    x1, y1 = truth[truth[:, 2] > 0, :2].max(axis=0) + 30
    crop = np.ascontiguousarray(skier[int(max(y0, 0)):int(y1), int(max(x0, 0)):int(x1)])
    h, w = crop.shape[:2]
    mosaic = np.full((4 * h, 5 * w, 3), 255, np.uint8)
    for r in range(4):
        for c in range(5):
            mosaic[r * h:(r + 1) * h, c * w:(c + 1) * w] = crop
    everyone = DetectStage(DetectConfig(static_image_mode=True, max_people=64))
    capped = DetectStage(DetectConfig(static_image_mode=True, max_people=4))
    everyone.open()
    capped.open()
    try:
        all_found = everyone.process(frame(mosaic)).people
        kept = capped.process(frame(mosaic)).people
    finally:
        everyone.close()
        capped.close()
    print(f"mosaic of 20: {len(all_found)} found, {len(kept)} kept, "
          f"{capped.people_dropped} dropped")
    assert len(all_found) >= 10
    assert len(kept) == 4
    assert capped.people_dropped == len(all_found) - 4


def test_video_mode_follows_then_loses_the_person():
    stage = DetectStage(DetectConfig(static_image_mode=False))
    stage.open()
    try:
        image = load_image("000000000785.jpg")
        (truth,) = coco_people("000000000785.jpg")
        tracked = [stage.process(frame(image, i)) for i in range(4)]
        assert all(len(k.people) >= 1 for k in tracked)
        for k in tracked:
            assert min(np.median(limb_errors_px(p.joints_2d_px, truth)) for p in k.people) < 20.0
        assert [k.frame_id for k in tracked] == [0, 1, 2, 3]
        gone = stage.process(frame(np.full_like(image, 127), 4))
        assert gone.people == ()
    finally:
        stage.close()


STREET_VIDEO = SHARED / "data" / "footage" / "openpose" / "examples" / "media" / "video.avi"
#: the part of the street video (x0, y0, x1, y1 px) where one person walks in every frame
ONE_PERSON_CROP = (620, 0, 1280, 720)


def street_frames(n: int, crop=None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(shared_file(STREET_VIDEO)))
    frames = []
    while len(frames) < n:
        ok, image = cap.read()
        assert ok, f"{STREET_VIDEO} has fewer than {n} frames"
        if crop is not None:
            image = np.ascontiguousarray(image[crop[1]:crop[3], crop[0]:crop[2]])
        frames.append(image)
    cap.release()
    return frames


def test_one_person_in_video_costs_a_person_detector_run_only_every_discover_every_frames():
    """Video mode, one person in view, room for 4: the person is followed by the landmark
    model alone; the person detector runs on the first frame (nobody followed yet) and then
    once every discover_every frames, never on the frames between (what keeps a single-person
    webcam as fast as a single-person BlazePose). On frames 10 and 11 of this clip the landmark
    model loses the person for a frame (presence below 0.5) and a look finds them again in
    the same frame: 6 runs in all, where the Tasks landmarker's VIDEO mode runs 40."""
    stage = DetectStage(DetectConfig(static_image_mode=False, max_people=4, discover_every=10))
    stage.open()
    try:
        counts = [len(stage.process(frame(image, i)).people)
                  for i, image in enumerate(street_frames(40, ONE_PERSON_CROP))]
    finally:
        stage.close()
    print(f"people per frame {counts}, person-detector runs {stage.detector_runs}")
    assert counts == [1] * 40
    assert 4 <= stage.detector_runs <= 6  # frames 0, 10 (11), 21, 31


def test_video_mode_finds_the_people_the_whole_frame_detector_misses():
    """The street video from frame 100 (3 people walk there): the person detector on the
    whole frame finds 1 or 2 of them at first; looks in tiles find the others sooner, and each
    is followed. Every frame processed (`look_join_frames` 1, as a file is processed), so
    which frame a look's people join on does not depend on the machine's load."""
    frames = street_frames(160)[100:]
    stage = DetectStage(DetectConfig(static_image_mode=False, max_people=4, look_join_frames=1))
    stage.open()
    try:
        counts = np.array([len(stage.process(frame(image, i)).people)
                           for i, image in enumerate(frames)])
        whole = DetectStage(DetectConfig(static_image_mode=False, max_people=4, video_tiles=0,
                                         look_join_frames=1))
        whole.open()
        try:
            whole_counts = np.array([len(whole.process(frame(image, i)).people)
                                     for i, image in enumerate(frames)])
        finally:
            whole.close()
    finally:
        stage.close()
    print(f"people per frame, tiles: {counts.tolist()}; whole frame only: "
          f"{whole_counts.tolist()}")
    assert np.mean(counts >= 2) >= 0.9
    # what tiles add is finding the third person sooner (live, where a look joins when it
    # finishes, measured in 5 runs, loaded and not: frame 13-20 with tiles, 28-35 on the
    # whole frame only)
    def first_with_three(c: np.ndarray) -> int:
        return int(np.argmax(c >= 3)) if (c >= 3).any() else len(c)

    assert first_with_three(counts) < first_with_three(whole_counts), (counts, whole_counts)


def test_video_mode_names_a_missing_model(monkeypatch):
    monkeypatch.setitem(detect_module.BUNDLE_MODELS, "pose_detector.tflite",
                        ("modules/pose_detection/not_there.tflite", 127.5, 127.5))
    with pytest.raises(DetectorModelError, match="not_there.tflite is missing"):
        DetectStage(DetectConfig(static_image_mode=False)).open()


def test_joints_are_reported_in_the_original_images_pixels():
    """A frame that capture shrank (scale_to_original 2): joints and image size come back in
    the original image's pixels."""
    image = load_image("000000000785.jpg")[:424]  # 640 x 424: halves exactly
    (truth,) = coco_people("000000000785.jpg")
    half = cv2.resize(image, (320, 212), interpolation=cv2.INTER_AREA)
    stage = DetectStage(DetectConfig(static_image_mode=True, tiles=()))
    stage.open()
    try:
        kp = stage.process(Frame(frame_id=0, t_capture_ns=1, image=half,
                                 scale_to_original=image.shape[1] / 320))
    finally:
        stage.close()
    assert kp.image_size == (640, 424)
    errs = min((limb_errors_px(p.joints_2d_px, truth) for p in kp.people),
               key=lambda e: np.median(e))
    assert np.median(errs) < 20.0


def test_the_bundle_is_built_from_the_installed_wheel_once(tmp_path, monkeypatch):
    monkeypatch.setenv("POSESTREAM_CACHE", str(tmp_path / "cache"))
    first = pose_bundle()
    assert first.parent == tmp_path / "cache" and first.suffix == ".task"
    import zipfile

    with zipfile.ZipFile(first) as bundle:
        assert sorted(bundle.namelist()) == ["pose_detector.tflite",
                                             "pose_landmarks_detector.tflite"]
    stamp = first.stat().st_mtime_ns
    assert pose_bundle() == first and first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert list((tmp_path / "cache").iterdir()) == [first]  # no temporary file left


def test_a_missing_model_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("POSESTREAM_CACHE", str(tmp_path))
    monkeypatch.setitem(detect_module.BUNDLE_MODELS, "pose_detector.tflite",
                        ("modules/pose_detection/not_there.tflite", 127.5, 127.5))
    with pytest.raises(DetectorModelError, match="not_there.tflite is missing"):
        pose_bundle()


def test_bundled_complexity_only():
    with pytest.raises(RuntimeError, match="model_complexity=1"):
        DetectStage(DetectConfig(model_complexity=2)).open()


def _burn(stop) -> None:
    """A CPU hog (child process) until `stop` is set."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def test_every_frame_mode_finds_the_same_people_on_the_same_frames_under_load():
    """A file processed whole (look_join_frames, as run_pipeline.py sets for files): each look
    joins a fixed number of frames after it began, so how busy the machine is cannot change
    which frame a person is found on. The street video from frame 100 (3 people), once on a
    quiet machine and once with a CPU hog on each core (which starves the looks' low-priority
    thread: live, the third person is then found frames later): the same people on every
    frame, at the same joints."""
    import multiprocessing as mp

    frames = street_frames(150)[100:]
    config = DetectConfig(static_image_mode=False, max_people=4, look_join_frames=1)

    def run() -> list:
        stage = DetectStage(config)
        stage.open()
        try:
            return [stage.process(frame(image, i)).people for i, image in enumerate(frames)]
        finally:
            stage.close()

    quiet = run()
    spawn = mp.get_context("spawn")
    stop = spawn.Event()
    hogs = [spawn.Process(target=_burn, args=(stop,), daemon=True) for _ in range(2)]
    for hog in hogs:
        hog.start()
    try:
        loaded = run()
    finally:
        stop.set()
        for hog in hogs:
            hog.join(timeout=10)
    counts_quiet = [len(p) for p in quiet]
    counts_loaded = [len(p) for p in loaded]
    print(f"people per frame, quiet {counts_quiet}; loaded {counts_loaded}")
    assert counts_quiet == counts_loaded
    assert max(counts_quiet) >= 3  # the looks found the third person
    worst = max((float(np.abs(a.joints_2d_px - b.joints_2d_px).max())
                 for pa, pb in zip(quiet, loaded) for a, b in zip(pa, pb)), default=0.0)
    assert worst < 0.5, f"the same people differ by up to {worst:.2f} px"
