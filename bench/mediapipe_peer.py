"""The peer users pick today: MediaPipe's own pose with world landmarks, in one process.

    python -m bench.mediapipe_peer [--video FILE] [--fps 30|60|max] [--frames N] [--json OUT]

Same frames, same capture code and pacing as the pipeline benchmark (bench/frames.py); per
frame: BGR -> RGB, `mp.solutions.pose.Pose.process` (BlazePose full, tracking mode, MediaPipe's
own landmark smoothing), `pose_world_landmarks` read out as a (33, 3) array in metres. Latency
per frame is capture -> world landmarks in hand, p50 / p95 / p99; throughput in frames per
second.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import cv2
import numpy as np

from bench import frames as bench_frames
from bench import report
from pipeline.config import CaptureConfig, DetectConfig
from pipeline.schema import Frame

log = logging.getLogger(__name__)


def run(capture: CaptureConfig, detect: DetectConfig | None = None,
        warmup: int = 30) -> dict[str, Any]:
    """MediaPipe Pose (world landmarks) on every frame of `capture`, in this process.

    detect: the detector settings the pipeline uses (model complexity, confidences), so both
    run the same BlazePose. Returns bench.frames.feed's dict plus "with_person" (frames with
    world landmarks).
    """
    import mediapipe as mp

    detect = detect or DetectConfig()
    pose = mp.solutions.pose.Pose(
        static_image_mode=detect.static_image_mode,
        model_complexity=detect.model_complexity,
        smooth_landmarks=not detect.static_image_mode,
        enable_segmentation=False,
        min_detection_confidence=detect.min_detection_confidence,
        min_tracking_confidence=detect.min_tracking_confidence,
    )
    found = [0]  # measured frames with world landmarks

    def handle(frame: Frame) -> dict[str, float]:
        t0 = time.perf_counter_ns()
        result = pose.process(cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB))
        if result.pose_world_landmarks is not None and frame.frame_id >= warmup:
            world_m = np.array(
                [(m.x, m.y, m.z) for m in result.pose_world_landmarks.landmark], np.float32
            )
            found[0] += world_m.shape[0] == 33
        return {"mediapipe": (time.perf_counter_ns() - t0) / 1e6}

    try:
        out = bench_frames.feed(capture, handle, warmup)
    finally:
        pose.close()
    out["with_person"] = found[0]
    return out


def run_tasks(capture: CaptureConfig, num_poses: int, detect: DetectConfig | None = None,
              warmup: int = 30) -> dict[str, Any]:
    """MediaPipe Tasks PoseLandmarker (VIDEO mode, `num_poses` people) on every frame of
    `capture`, in this process: what a user who wants several people runs instead of us.

    The same BlazePose models from the same bundle as the detect stage
    (stages.detect.pose_bundle), per frame BGR -> RGB and `detect_for_video`, world landmarks
    of every person read out. Returns bench.frames.feed's dict plus "people" (frames by the
    number of people found: {n: frames}), "people_e2e" ([(people, e2e ms)] per measured
    frame) and "e2e_by_people" ({n: summary}).
    """
    import mediapipe as mp
    from mediapipe.tasks import python as mp_tasks
    from mediapipe.tasks.python import vision

    from stages.detect import pose_bundle

    detect = detect or DetectConfig()
    options = vision.PoseLandmarkerOptions(
        base_options=mp_tasks.BaseOptions(model_asset_path=str(pose_bundle())),
        running_mode=vision.RunningMode.VIDEO, num_poses=num_poses,
        min_pose_detection_confidence=detect.min_detection_confidence,
        min_pose_presence_confidence=detect.min_presence_confidence,
        min_tracking_confidence=detect.min_tracking_confidence)
    landmarker = vision.PoseLandmarker.create_from_options(options)
    people: dict[int, int] = {}
    per_frame: dict[int, int] = {}
    last_ms = [-1]

    def handle(frame: Frame) -> dict[str, float]:
        t0 = time.perf_counter_ns()
        image = mp.Image(image_format=mp.ImageFormat.SRGB,
                         data=cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB))
        ts_ms = max(frame.t_capture_ns // 1_000_000, last_ms[0] + 1)
        last_ms[0] = ts_ms
        result = landmarker.detect_for_video(image, ts_ms)
        world = [np.array([(m.x, m.y, m.z) for m in person], np.float32)
                 for person in result.pose_world_landmarks]
        if frame.frame_id >= warmup:
            people[len(world)] = people.get(len(world), 0) + 1
        per_frame[frame.frame_id] = len(world)
        return {"mediapipe_tasks": (time.perf_counter_ns() - t0) / 1e6}

    try:
        out = bench_frames.feed(capture, handle, warmup)
    finally:
        landmarker.close()
    out["people"] = dict(sorted(people.items()))
    out["people_e2e"] = [(per_frame[fid], ms) for fid, ms in
                         zip(out["series"]["frame_id"], out["series"]["e2e_ms"])]
    out["e2e_by_people"] = report.by_people(out["people_e2e"])
    return out


def parse_fps(text: str) -> float | None:
    """"30" -> 30.0, "max" -> None (as fast as possible)."""
    if text == "max":
        return None
    fps = float(text)
    if not fps > 0:
        raise argparse.ArgumentTypeError(f"--fps must be > 0 or max, got {text}")
    return fps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mediapipe_peer",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--video", default=str(bench_frames.DEFAULT_VIDEO))
    parser.add_argument("--fps", type=parse_fps, default=30.0, help="30, 60 or max")
    parser.add_argument("--frames", type=int, default=None, help="frames to use (default all)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with bench_frames.decoded_frames(args.video, args.frames) as folder:
        out = run(bench_frames.capture_config(folder, args.fps), warmup=args.warmup)
    out["machine"] = report.machine_info()
    print(f"MediaPipe pose (world landmarks), one process, {args.fps or 'max'} fps, "
          f"load {out['machine']['loadavg']}")
    print(report.table(
        ["latency, ms", "n", "p50", "p95", "p99"],
        [report.summary_row("capture -> world landmarks", out["e2e"])]
        + [report.summary_row(k, v) for k, v in out["parts"].items()],
    ))
    print(f"throughput {out['throughput_fps']:.1f} fps, CPU {out['cpu_percent']:.0f} %, "
          f"{out['with_person']} of {out['frames']} frames with a person")
    if args.json:
        report.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
