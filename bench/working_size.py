"""How large must capture keep a frame? The detector's 2D joints and its time against the
working size (the longest side capture scales a large frame down to; CaptureConfig.max_side).

    python -m bench.working_size [--sides 640,960,1280,1600,1920,2560] [--reps 2]

Every image of the shared footage with people in it (COCO, Human3.6M, MPI-INF-3DHP, and
frames of the street video) is first blown up to a 6000 px long side (what a phone photo
has), then scaled down to each working size (cv2.INTER_AREA, as capture does), and the real
detect stage (stages/detect.py, image mode) runs on it in this process. Its joints, taken
back to the photo's pixels, are compared with the detector's joints on the image at its own
size (the reference: blowing an image up adds no detail, so a working size at or above the
image's own size cannot do better). Printed per working size: people found against the
reference, the median joint error in % of the person's height, the time to scale the photo
down and the detect stage's time, and the frame's bytes (what every hop carries).
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import time

import cv2
import numpy as np

from engines.runtime.skeleton import NUM_JOINTS
from pipeline.config import DetectConfig
from pipeline.schema import Frame
from stages.detect import DetectStage

PHOTO_SIDE = 6000
SHARED = os.environ.get("POSESTREAM_SHARED",
                        os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
IMAGE_GLOBS = ("data/footage/mmpose/tests/data/coco/*.jpg",
               "data/footage/mmpose/tests/data/h36m/*/*/*.jpg",
               "data/footage/mmpose/tests/data/mpi_inf_3dhp/*.jpg")
VIDEO = "data/footage/openpose/examples/media/video.avi"
VIDEO_FRAMES = (0, 60, 120, 180)


def images() -> list[tuple[str, np.ndarray]]:
    out = []
    for pattern in IMAGE_GLOBS:
        for path in sorted(glob.glob(os.path.join(SHARED, pattern))):
            out.append((os.path.basename(path), cv2.imread(path, cv2.IMREAD_COLOR)))
    cap = cv2.VideoCapture(os.path.join(SHARED, VIDEO))
    for i in range(max(VIDEO_FRAMES) + 1):
        ok, frame = cap.read()
        if ok and i in VIDEO_FRAMES:
            out.append((f"video.avi#{i}", frame))
    cap.release()
    return out


def people(stage: DetectStage, image: np.ndarray) -> tuple[list[np.ndarray], float]:
    """The detect stage's people in `image`: [(17, 2) px, ...], and its time in ms."""
    frame = Frame(frame_id=0, t_capture_ns=time.monotonic_ns(), image=image)
    t0 = time.perf_counter()
    kp = stage.process(frame)
    ms = (time.perf_counter() - t0) * 1e3
    found = getattr(kp, "people", None)
    if found is None:  # schema 1: one person or none
        found = [kp] if kp.person_present else []
    return [np.asarray(p.joints_2d_px, np.float64).reshape(NUM_JOINTS, 2) for p in found], ms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sides", default="640,960,1280,1600,1920,2560")
    p.add_argument("--reps", type=int, default=2, help="detections per image and size")
    args = p.parse_args(argv)
    sides = [int(s) for s in args.sides.split(",")]
    stage = DetectStage(DetectConfig(static_image_mode=True))
    stage.open()
    rows = {s: {"found": 0, "ref": 0, "err": [], "resize_ms": [], "detect_ms": [], "mb": []}
            for s in sides}
    try:
        for name, image in images():
            h, w = image.shape[:2]
            reference, _ = people(stage, image)
            k = PHOTO_SIDE / max(h, w)
            photo = cv2.resize(image, (round(w * k), round(h * k)), interpolation=cv2.INTER_CUBIC)
            for side in sides:
                row = rows[side]
                s = side / max(photo.shape[:2])
                t0 = time.perf_counter()
                small = cv2.resize(photo, (round(photo.shape[1] * s), round(photo.shape[0] * s)),
                                   interpolation=cv2.INTER_AREA)
                row["resize_ms"].append((time.perf_counter() - t0) * 1e3)
                row["mb"].append(small.nbytes / 1e6)
                for _ in range(args.reps):
                    found, ms = people(stage, small)
                    row["detect_ms"].append(ms)
                row["ref"] += len(reference)
                # back to the image's own pixels: working px -> photo px -> image px
                found = [j / s / k for j in found]
                for ref in reference:
                    height = np.ptp(ref[:, 1]) or 1.0
                    best = min((np.median(np.linalg.norm(f - ref, axis=1)) for f in found),
                               default=None)
                    if best is not None and best / height < 0.25:  # the same person
                        row["found"] += 1
                        row["err"].append(100 * best / height)
    finally:
        stage.close()
    print(f"{len(images())} images, each blown up to a {PHOTO_SIDE} px long side, then scaled "
          "down to the working size; reference: the detector on the image at its own size")
    print("| working size (long side, px) | people found / reference | median joint error, "
          "% of height (p90) | scale-down ms | detect ms (median) | frame MB |")
    print("|---|---|---|---|---|---|")
    for side in sides:
        r = rows[side]
        err = f"{statistics.median(r['err']):.2f} ({np.percentile(r['err'], 90):.2f})" \
            if r["err"] else "-"
        print(f"| {side} | {r['found']} / {r['ref']} | {err} | "
              f"{statistics.median(r['resize_ms']):.1f} | "
              f"{statistics.median(r['detect_ms']):.1f} | {statistics.median(r['mb']):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
