"""Measure the 2D detector's errors against ground truth: the noise model the trainer draws from.

    python -m engines.training.measure_detector_noise --json runs/detector_noise.json

Runs mediapipe BlazePose (the detect stage's model: the legacy `mp.solutions.pose` graph,
model_complexity 1, static-image mode) on every annotated person of the shared images:
- COCO `coco/test_coco.json` (4 images, 14 people; each person is cropped from its box, so the
  detector sees one person at a time);
- Human3.6M `h36m/test_h36m_body3d.npz` (4 frames) and MPI-INF-3DHP `test_3dhp_*.npz` (4 frames),
  whose 2D ground truth is in our 17-joint layout (data README).

For each of our 17 joints: the error |detected - ground truth| relative to the person's size
(the diagonal of the tight box around the ground-truth joints), as a median, a mean and a
90th percentile; how often the detector's confidence is below 0.5 ("low"); how often the error
exceeds 0.1 of the person's size ("outlier"); and how often no person is found at all ("miss").
COCO has no pelvis, spine, thorax or head joint: there they are compared on what COCO has
(the hip midpoint, the shoulder midpoint, the trunk midpoint, the ear midpoint, the nose); the
Human3.6M and MPI frames compare every joint with its own definition (so the derived joints carry
the definitional offset of `engines.runtime.skeleton.blazepose33_to_h36m17` too, which is part of
what the lift stage is fed).

The figures feed `engines.training.datasets.DETECTOR_NOISE_REL` (the trainer's noise model);
engines/training/DETECTOR_NOISE.md holds the measured table. Offline tool: imports mediapipe and
OpenCV, never torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from engines.runtime.camera import default_shared_dir
from engines.runtime.skeleton import JOINT_NAMES, NUM_JOINTS, Joint, blazepose33_to_h36m17

logger = logging.getLogger(__name__)

DATA = Path("data/footage/mmpose/tests/data")
COCO_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
              "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
              "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
#: MPI-INF-3DHP 17 -> our order (data README)
MPI_TO_OURS = [14, 8, 9, 10, 11, 12, 13, 15, 1, 16, 0, 5, 6, 7, 2, 3, 4]
LOW_CONFIDENCE = 0.5
OUTLIER_REL = 0.1
CROP_MARGIN = 1.25


def _blazepose():
    import mediapipe as mp

    return mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                  enable_segmentation=False, min_detection_confidence=0.5)


def _detect(pose, image_bgr: np.ndarray, box: tuple[float, float, float, float]):
    """BlazePose on the crop `box` (x0, y0, x1, y1) of the image -> (landmarks (33, 2) px in the
    full image, visibility (33,)) or None when no person is found."""
    import cv2

    h, w = image_bgr.shape[:2]
    x0, y0, x1, y1 = box
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * CROP_MARGIN
    ix0, iy0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    ix1, iy1 = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
    crop = np.ascontiguousarray(image_bgr[iy0:iy1, ix0:ix1])
    result = pose.process(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB))
    if result.pose_landmarks is None:
        return None
    marks = result.pose_landmarks.landmark
    xy = np.array([(m.x * crop.shape[1] + ix0, m.y * crop.shape[0] + iy0) for m in marks])
    return xy, np.array([m.visibility for m in marks])


def _size(joints: np.ndarray) -> float:
    span = joints.max(0) - joints.min(0)
    return float(np.hypot(*span))


def _coco_people(shared: Path):
    """(image path, GT (17, 3) COCO x, y, v, box) for every annotated person."""
    coco = json.loads((shared / DATA / "coco/test_coco.json").read_text())
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    for ann in coco["annotations"]:
        kp = np.asarray(ann["keypoints"], np.float64).reshape(17, 3)
        if (kp[:, 2] > 0).sum() < 5:
            continue
        x, y, bw, bh = ann["bbox"]
        yield shared / DATA / "coco" / files[ann["image_id"]], kp, (x, y, x + bw, y + bh)


def _h36m17_people(shared: Path):
    """(image path, GT (17, 2) px in our order, box) for the Human3.6M and MPI-INF-3DHP frames."""
    sets = [("h36m/test_h36m_body3d.npz", "h36m", None),
            ("mpi_inf_3dhp/test_3dhp_train.npz", "mpi_inf_3dhp", MPI_TO_OURS),
            ("mpi_inf_3dhp/test_3dhp_test.npz", "mpi_inf_3dhp", MPI_TO_OURS)]
    for rel, folder, order in sets:
        with np.load(shared / DATA / rel) as d:
            names, part = [str(n) for n in d["imgname"]], d["part"][..., :2].astype(np.float64)
        for name, joints in zip(names, part):
            if order is not None:
                joints = joints[order]
            lo, hi = joints.min(0), joints.max(0)
            yield folder, shared / DATA / folder / name, joints, (*lo, *hi)


def measure(shared: Path | None = None) -> dict:
    """Every figure of the module doc as one JSON-able dict."""
    import cv2

    from engines.runtime.skeleton import _BP  # landmark name -> index

    shared = Path(shared) if shared is not None else default_shared_dir()
    pose = _blazepose()
    rel_err: list[list[float]] = [[] for _ in range(NUM_JOINTS)]
    low: list[list[bool]] = [[] for _ in range(NUM_JOINTS)]
    people = {"coco": 0, "h36m": 0, "mpi_inf_3dhp": 0}
    missed = {"coco": 0, "h36m": 0, "mpi_inf_3dhp": 0}
    signed: list[np.ndarray] = []
    try:
        for path, kp, box in _coco_people(shared):
            people["coco"] += 1
            found = _detect(pose, cv2.imread(str(path)), box)
            if found is None:
                missed["coco"] += 1
                continue
            marks, vis = found
            vis_gt = kp[:, 2] > 0
            size = _size(kp[vis_gt, :2])
            gt = {n: kp[i, :2] for i, n in enumerate(COCO_NAMES) if vis_gt[i]}
            det = {n: marks[_BP[n]] for n in COCO_NAMES}
            dvis = {n: vis[_BP[n]] for n in COCO_NAMES}

            def pair(*names):
                if not all(n in gt for n in names):
                    return None
                return (np.mean([det[n] for n in names], 0), np.mean([gt[n] for n in names], 0),
                        min(dvis[n] for n in names))

            ours = {
                Joint.PELVIS: pair("left_hip", "right_hip"),
                Joint.R_HIP: pair("right_hip"), Joint.R_KNEE: pair("right_knee"),
                Joint.R_ANKLE: pair("right_ankle"), Joint.L_HIP: pair("left_hip"),
                Joint.L_KNEE: pair("left_knee"), Joint.L_ANKLE: pair("left_ankle"),
                Joint.SPINE: pair("left_hip", "right_hip", "left_shoulder", "right_shoulder"),
                Joint.THORAX: pair("left_shoulder", "right_shoulder"),
                Joint.NECK_NOSE: pair("nose"), Joint.HEAD: pair("left_ear", "right_ear"),
                Joint.L_SHOULDER: pair("left_shoulder"), Joint.L_ELBOW: pair("left_elbow"),
                Joint.L_WRIST: pair("left_wrist"), Joint.R_SHOULDER: pair("right_shoulder"),
                Joint.R_ELBOW: pair("right_elbow"), Joint.R_WRIST: pair("right_wrist"),
            }
            for joint, got in ours.items():
                if got is not None:
                    rel_err[joint].append(float(np.linalg.norm(got[0] - got[1]) / size))
                    low[joint].append(bool(got[2] < LOW_CONFIDENCE))
        for folder, path, gt, box in _h36m17_people(shared):
            people[folder] += 1
            found = _detect(pose, cv2.imread(str(path)), box)
            if found is None:
                missed[folder] += 1
                continue
            joints, conf = blazepose33_to_h36m17(*found)
            size = _size(gt)
            err = (joints - gt) / size
            signed.append(err)
            for j in range(NUM_JOINTS):
                rel_err[j].append(float(np.linalg.norm(err[j])))
                low[j].append(bool(conf[j] < LOW_CONFIDENCE))
    finally:
        pose.close()
    table = {}
    for j, name in enumerate(JOINT_NAMES):
        e = np.asarray(rel_err[j])
        table[name] = {
            "n": int(len(e)),
            "median_rel": round(float(np.median(e)), 4) if len(e) else None,
            "mean_rel": round(float(e.mean()), 4) if len(e) else None,
            "p90_rel": round(float(np.percentile(e, 90)), 4) if len(e) else None,
            "outlier_rate": round(float((e > OUTLIER_REL).mean()), 3) if len(e) else None,
            "low_confidence_rate": round(float(np.mean(low[j])), 3) if len(e) else None,
        }
    total = sum(people.values())
    return {
        "people": people, "missed": missed,
        "miss_rate": round(sum(missed.values()) / max(1, total), 3),
        "size": "diagonal of the tight box around the ground-truth joints, px",
        "outlier_threshold_rel": OUTLIER_REL, "low_confidence_below": LOW_CONFIDENCE,
        "per_joint": table,
        "h36m17_mean_signed_offset_rel": (np.mean(signed, 0).round(4).tolist() if signed else None),
    }


def print_table(result: dict) -> None:
    print(f"people {result['people']}, missed {result['missed']} "
          f"(miss rate {result['miss_rate']})")
    print(f"{'joint':<12} {'n':>3} {'median':>7} {'mean':>7} {'p90':>7} {'outlier':>8} {'low conf':>8}")
    for name, row in result["per_joint"].items():
        print(f"{name:<12} {row['n']:>3} {row['median_rel']:>7} {row['mean_rel']:>7} "
              f"{row['p90_rel']:>7} {row['outlier_rate']:>8} {row['low_confidence_rate']:>8}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.training.measure_detector_noise",
                                description=__doc__.split("\n")[0])
    p.add_argument("--shared", type=Path, default=None, help="shared data folder")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = measure(a.shared)
    print_table(result)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
