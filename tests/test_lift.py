"""stages/lift.py and engines/runtime/intrinsics.py: intrinsics from FOV or calibration files, and the
lift of real Human3.6M ground-truth 2D with the default engine (real ONNX Runtime, real numba fit).

Figures asserted: root-relative MPJPE (mm) against the Human3.6M 3D ground truth `S`, root depth
error against the ground-truth pelvis depth, FOV geometry, calibration parsing and checks.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.runtime.codec import ANKLE_TO_SOLE_M
from engines.runtime.skeleton import NUM_JOINTS, ROOT
from pipeline.config import LiftConfig
from pipeline.schema import Keypoints2D, Person2D
from engines.runtime.intrinsics import (
    CalibrationError,
    Intrinsics,
    for_image_size,
    intrinsics_from_fov,
    load_calibration,
    undistort_pixels,
)

SHARED = Path(os.environ.get("POSESTREAM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
H36M_DIR = SHARED / "data" / "footage" / "mmpose" / "tests" / "data" / "h36m"


def shared_file(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(
            f"missing shared data file {path}; set POSESTREAM_SHARED to the shared folder "
            f"(the one holding data/footage)"
        )
    return path


# --------------------------------------------------------------------------- Human3.6M helpers
def h36m_frames() -> list[dict]:
    """The four frames with 3D ground truth: joints_2d_px (17, 2), joints_3d_m (17, 3) camera
    frame, K (3, 3), image_size (w, h), name."""
    data = np.load(shared_file(H36M_DIR / "test_h36m_body3d.npz"))
    with open(shared_file(H36M_DIR / "cameras.pkl"), "rb") as fh:
        cameras = pickle.load(fh)
    frames = []
    for name, part, s in zip(data["imgname"], data["part"], data["S"]):
        base = str(name).split("/")[-1]
        subject, camera_id = base.split("_")[0], base.split(".")[1].split("_")[0]
        cam = cameras[(subject, camera_id)]
        f, c = np.ravel(cam["f"]), np.ravel(cam["c"])
        frames.append({
            "name": str(name),
            "joints_2d_px": part[:, :2].astype(np.float32),
            "joints_3d_m": s[:, :3].astype(np.float64),
            "K": np.array([[f[0], 0, c[0]], [0, f[1], c[1]], [0, 0, 1]], np.float64),
            "image_size": (int(np.ravel(cam["w"])[0]), int(np.ravel(cam["h"])[0])),
        })
    return frames


def write_calib_json(path: Path, K: np.ndarray, image_size: tuple[int, int]) -> Path:
    path.write_text(json.dumps({
        "camera_matrix": K.tolist(), "image_width": image_size[0], "image_height": image_size[1],
    }))
    return path


def keypoints(joints_2d_px, image_size, frame_id=0, present=True, track_id=1) -> Keypoints2D:
    """One person (track_id) with these 2D joints, confidence 1; or nobody (present False)."""
    people = (Person2D(track_id=track_id, joints_2d_px=np.asarray(joints_2d_px, np.float32),
                       confidence=np.ones(NUM_JOINTS, np.float32)),) if present else ()
    return Keypoints2D(frame_id=frame_id, t_capture_ns=10**9, image_size=tuple(image_size),
                       people=people)


def mpjpe_mm(pred_m: np.ndarray, truth_m: np.ndarray) -> float:
    """Root-relative mean per-joint position error, mm. (17, 3) metres each."""
    pred = pred_m - pred_m[ROOT]
    truth = truth_m - truth_m[ROOT]
    return float(np.mean(np.linalg.norm(pred - truth, axis=-1)) * 1000.0)


# --------------------------------------------------------------------------- intrinsics
def test_fov_intrinsics_put_the_edge_ray_on_the_image_edge():
    intr = intrinsics_from_fov(60.0, 640, 480)
    assert intr.fx == pytest.approx(320.0 / math.tan(math.radians(30.0)))
    assert intr.fy == intr.fx and (intr.cx, intr.cy) == (320.0, 240.0)
    # a ray 30 degrees right of the optical axis lands on the right edge of the image
    x, z = math.sin(math.radians(30.0)), math.cos(math.radians(30.0))
    assert intr.fx * x / z + intr.cx == pytest.approx(640.0)
    with pytest.raises(CalibrationError, match="between 1 and 179"):
        intrinsics_from_fov(180.0, 640, 480)


K_TEST = np.array([[1145.0, 0.0, 512.5], [0.0, 1143.7, 515.4], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("ext", ["yml", "xml", "json"])
def test_reads_what_opencv_filestorage_writes(tmp_path, ext):
    path = tmp_path / f"calib.{ext}"
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    fs.write("camera_matrix", K_TEST)
    fs.write("dist_coeffs", np.array([[0.1, -0.05, 0.001, 0.002, 0.0]]))
    fs.write("image_width", 1000)
    fs.write("image_height", 1002)
    fs.release()
    intr = load_calibration(path)
    np.testing.assert_allclose(intr.as_matrix(), K_TEST)
    assert intr.image_size == (1000, 1002)
    assert intr.dist_coeffs == pytest.approx((0.1, -0.05, 0.001, 0.002, 0.0))


def test_reads_the_calibrate_tools_file(tmp_path):
    from pipeline.calibrate import BoardSpec, Calibration, save_calibration

    path = tmp_path / "calib.yaml"
    save_calibration(path, Calibration(K_TEST, np.zeros(5), (1000, 1002), 0.3, 20, BoardSpec()))
    intr = load_calibration(path)
    np.testing.assert_allclose(intr.as_matrix(), K_TEST)
    assert intr.image_size == (1000, 1002)


def test_reads_plain_json_yaml_and_ros_files(tmp_path):
    (tmp_path / "flat.json").write_text(json.dumps({"K": K_TEST.ravel().tolist()}))
    (tmp_path / "keys.yaml").write_text("fx: 1145.0\nfy: 1143.7\ncx: 512.5\ncy: 515.4\n")
    (tmp_path / "ros.yaml").write_text(
        "image_width: 1000\nimage_height: 1002\ncamera_name: cam\n"
        "camera_matrix:\n  rows: 3\n  cols: 3\n"
        "  data: [1145.0, 0, 512.5, 0, 1143.7, 515.4, 0, 0, 1]\n"
        "distortion_model: plumb_bob\n"
        "distortion_coefficients:\n  rows: 1\n  cols: 5\n  data: [0, 0, 0, 0, 0]\n"
    )
    for name in ("flat.json", "keys.yaml", "ros.yaml"):
        intr = load_calibration(tmp_path / name)
        np.testing.assert_allclose(intr.as_matrix(), K_TEST, err_msg=name)
    assert load_calibration(tmp_path / "ros.yaml").image_size == (1000, 1002)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"camera_matrix": [[-5, 0, 320], [0, 500, 240], [0, 0, 1]]}, "positive"),
        ({"camera_matrix": [[500, 0, 320], [0, float("nan"), 240], [0, 0, 1]]}, "non-finite"),
        ({"camera_matrix": [[500, 0, 320], [0, 500, 240], [0, 1, 1]]}, "last row"),
        ({"camera_matrix": [[500, 0, 9000], [0, 500, 240], [0, 0, 1]],
          "image_width": 640, "image_height": 480}, "outside"),
        ({"camera_matrix": [1, 2, 3]}, "9 numbers"),
        ({"rotation": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}, "no camera matrix"),
        ({"K": K_TEST.tolist(), "dist_coeffs": [0.1, 0.2, 0.3]}, "distortion"),
    ],
)
def test_bad_calibrations_are_refused_with_a_reason(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(CalibrationError, match=message):
        load_calibration(path)


def test_missing_calibration_file_names_it(tmp_path):
    with pytest.raises(CalibrationError, match="nope.yaml does not exist"):
        load_calibration(tmp_path / "nope.yaml")


def test_calibration_scaled_to_frames_of_the_same_aspect_only():
    intr = Intrinsics(1000.0, 1000.0, 640.0, 360.0, (1280, 720))
    half = for_image_size(intr, (640, 360))
    assert (half.fx, half.fy, half.cx, half.cy) == (500.0, 500.0, 320.0, 180.0)
    with pytest.raises(CalibrationError, match="aspect ratio"):
        for_image_size(intr, (640, 480))
    unknown = Intrinsics(1000.0, 1000.0, 640.0, 360.0, None)
    with pytest.raises(CalibrationError, match="outside the 320x240 image"):
        for_image_size(unknown, (320, 240))


def test_undistort_pixels_inverts_opencv_distortion():
    dist = (-0.2, 0.1, 0.001, -0.002, 0.0)
    intr = Intrinsics(800.0, 800.0, 320.0, 240.0, (640, 480), dist)
    rng = np.random.default_rng(0)
    points_m = np.column_stack([rng.uniform(-0.8, 0.8, 17), rng.uniform(-0.6, 0.6, 17),
                                np.full(17, 3.0)])
    k = intr.as_matrix()
    distorted, _ = cv2.projectPoints(points_m, np.zeros(3), np.zeros(3), k, np.array(dist))
    pinhole = points_m[:, :2] / points_m[:, 2:] * 800.0 + [320.0, 240.0]
    assert np.max(np.abs(distorted.reshape(-1, 2) - pinhole)) > 1.0  # distortion is visible
    undistorted = undistort_pixels(distorted.reshape(-1, 2), intr)
    assert np.max(np.abs(undistorted - pinhole)) < 0.01


# --------------------------------------------------------------------------- the lift stage
@pytest.fixture(scope="module")
def frames():
    return h36m_frames()


@pytest.fixture
def lift_with_calib(tmp_path, frames):
    """A LiftStage factory for one Human3.6M frame's camera; stages closed at the end."""
    from stages.lift import LiftStage

    opened = []

    def make(frame, **overrides):
        calib = write_calib_json(tmp_path / "cam.json", frame["K"], frame["image_size"])
        stage = LiftStage(LiftConfig(calib_path=str(calib), **overrides))
        stage.open()
        opened.append(stage)
        return stage

    yield make
    for stage in opened:
        stage.close()


def test_lift_human36m_ground_truth_2d(frames, lift_with_calib):
    """GT 2D of the four frames -> root-relative MPJPE vs S, and the root depth vs S's pelvis."""
    errors, depth_errors = [], []
    for i, frame in enumerate(frames):
        stage = lift_with_calib(frame)  # the pipeline's defaults: --height 1.70
        frame_pose = stage.process(keypoints(frame["joints_2d_px"], frame["image_size"], i))
        assert len(frame_pose.people) == 1 and frame_pose.frame_id == i
        pose = frame_pose.people[0]
        assert pose.track_id == 1
        assert pose.joints_3d_m.shape == (NUM_JOINTS, 3) and pose.joints_3d_m.dtype == np.float32
        np.testing.assert_allclose(pose.joints_3d_m[ROOT], pose.root_m, atol=1e-6)
        errors.append(mpjpe_mm(pose.joints_3d_m.astype(np.float64), frame["joints_3d_m"]))
        depth_errors.append(abs(float(pose.root_m[2]) - frame["joints_3d_m"][ROOT, 2]))
        print(f"{frame['name'].split('/')[-1]}: MPJPE {errors[-1]:.1f} mm, root depth "
              f"{pose.root_m[2]:.2f} m (truth {frame['joints_3d_m'][ROOT, 2]:.2f} m), reprojection "
              f"median {np.median(pose.reproj_err_px):.1f} px")
    print(f"Human3.6M GT 2D -> lift: mean MPJPE {np.mean(errors):.1f} mm, mean root depth error "
          f"{np.mean(depth_errors):.2f} m")
    # interim engine (c50e900): 89 mm (76, 143, 89, 48). The bar for the whole
    # pipeline is 150 mm; on exact 2D the lift alone must do clearly better.
    assert np.mean(errors) < 120.0
    # depth comes from the skeleton's size in the image and the assumed height (1.70 m): the
    # four subjects are 4.7-6.6 m away; measured 4, 16, 10, 0 % off
    relative = np.array(depth_errors) / np.array([f["joints_3d_m"][ROOT, 2] for f in frames])
    assert np.mean(relative) < 0.12 and np.max(relative) < 0.20


def test_subject_height_sets_the_metric_scale(frames, lift_with_calib):
    """--height scales the skeleton; the fitted root depth scales with it (same image)."""
    frame = frames[3]
    kp = keypoints(frame["joints_2d_px"], frame["image_size"])
    short = lift_with_calib(frame, height_m=1.50).process(kp).people[0]
    tall = lift_with_calib(frame, height_m=1.90).process(kp).people[0]
    ratio = float(tall.root_m[2] / short.root_m[2])
    # stature = head-to-ankle chain + a fixed ankle-to-sole offset (engines/runtime/codec.py)
    sole = ANKLE_TO_SOLE_M
    assert ratio == pytest.approx((1.90 - sole) / (1.50 - sole), rel=1e-3)
    legs = lambda p: np.linalg.norm(p.joints_3d_m[2] - p.joints_3d_m[1])  # noqa: E731 r thigh
    assert legs(tall) / legs(short) == pytest.approx(ratio, rel=1e-3)
    np.testing.assert_allclose(tall.reproj_err_px, short.reproj_err_px, atol=0.05)


def test_lift_no_person_and_a_calibration_that_does_not_fit(frames, lift_with_calib):
    frame = frames[0]
    stage = lift_with_calib(frame)
    empty = stage.process(keypoints(np.zeros((NUM_JOINTS, 2)), frame["image_size"], 7, False))
    assert empty.people == () and empty.frame_id == 7
    # frames of another aspect ratio than the calibration: a clear error, not a wrong pose
    with pytest.raises(CalibrationError, match="aspect ratio"):
        stage.process(keypoints(frame["joints_2d_px"], (640, 480)))


def test_lift_with_fov_matches_lift_with_calibration(frames, lift_with_calib):
    """--fov equal to the camera's horizontal FOV gives about the same pose as --calib."""
    from stages.lift import LiftStage

    frame = frames[2]
    width = frame["image_size"][0]
    fov_deg = math.degrees(2 * math.atan(0.5 * width / frame["K"][0, 0]))
    by_calib = lift_with_calib(frame).process(
        keypoints(frame["joints_2d_px"], frame["image_size"])).people[0]
    stage = LiftStage(LiftConfig(fov_deg=fov_deg))
    stage.open()
    try:
        by_fov_frame = stage.process(keypoints(frame["joints_2d_px"], frame["image_size"]))
    finally:
        stage.close()
    assert len(by_fov_frame.people) == 1
    by_fov = by_fov_frame.people[0]
    # only the principal point differs (image centre vs calibrated, a few px)
    assert mpjpe_mm(by_fov.joints_3d_m, by_calib.joints_3d_m) < 20.0
    assert abs(by_fov.root_m[2] - by_calib.root_m[2]) < 0.1


def test_lift_degenerate_2d_gives_no_person(frames, lift_with_calib):
    """All joints on one pixel, or no confident joint: no fit, so that person is left out
    (never NaN) and counted; the others in the frame are lifted as usual."""
    frame = frames[0]
    stage = lift_with_calib(frame)
    collapsed = keypoints(np.full((NUM_JOINTS, 2), 500.0), frame["image_size"])
    assert stage.process(collapsed).people == ()
    good = Person2D(track_id=4, joints_2d_px=frame["joints_2d_px"],
                    confidence=np.ones(NUM_JOINTS, np.float32))
    unsure = Person2D(track_id=5, joints_2d_px=frame["joints_2d_px"],
                      confidence=np.zeros(NUM_JOINTS, np.float32))
    mixed = stage.process(Keypoints2D(frame_id=1, t_capture_ns=10**9,
                                      image_size=frame["image_size"], people=(unsure, good)))
    assert [p.track_id for p in mixed.people] == [4]
    assert np.all(np.isfinite(mixed.people[0].joints_3d_m))
    assert stage.failed_fits == 2


def test_all_people_of_a_frame_are_lifted_in_one_call_as_each_alone(frames):
    """The four Human3.6M subjects' 2D as four people of one frame (batch 4, one engine call):
    each person's 3D equals lifting them alone (to float32 rounding), track ids and order
    kept."""
    from stages.lift import LiftStage

    size = frames[0]["image_size"]
    stage = LiftStage(LiftConfig(fov_deg=60.0))
    stage.open()
    try:
        people = tuple(Person2D(track_id=10 + i, joints_2d_px=f["joints_2d_px"],
                                confidence=np.ones(NUM_JOINTS, np.float32))
                       for i, f in enumerate(frames))
        together = stage.process(Keypoints2D(frame_id=3, t_capture_ns=10**9, image_size=size,
                                             people=people))
        alone = [stage.process(keypoints(f["joints_2d_px"], size, track_id=10 + i)).people[0]
                 for i, f in enumerate(frames)]
    finally:
        stage.close()
    assert [p.track_id for p in together.people] == [10, 11, 12, 13]
    for a, b in zip(together.people, alone):
        np.testing.assert_allclose(a.joints_3d_m, b.joints_3d_m, atol=1e-4)
        np.testing.assert_allclose(a.reproj_err_px, b.reproj_err_px, atol=1e-2)
