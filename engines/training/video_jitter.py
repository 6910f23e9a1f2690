"""Lift a video offline with one or more engines and measure the output's jitter.

    python -m engines.training.video_jitter --video ../shared/data/footage/openpose/examples/media/video.avi \
        --engine engines/default/lifter.onnx engines/temporal/lifter.onnx --json runs/jitter.json

BlazePose (the detect stage's model, tracking mode: `static_image_mode=False`, landmark smoothing
on, model_complexity 1) on every frame, our 17 joints, intrinsics from `--fov` (the pipeline's
default 60 degrees), then each engine: a single-frame engine lifts each frame; a temporal engine
lifts each frame from a window of the past frames resampled to its rate
(`engines.training.evaluate.sequence_windows`: linear interpolation of the 2D, the first frame
repeated before a track's start, which is what the lift stage must do). Jitter is the mean over
frames and joints of |x[t+1] - 2 x[t] + x[t-1]| of the root-relative joints (mm/frame^2 at the
video's rate), within runs of frames with a person, raw and after the smooth stage's One Euro
filter (`stages.smooth.OneEuroFilter` with the stage's settings for the engine's kind,
`pipeline.config.one_euro_for_engine`, or `--one-euro`) on the root-relative joints.

This is the lift without the pipeline (no processes, no frame drops): what the engine itself adds
or removes. Offline tool (mediapipe, OpenCV); the engines run through `engines.runtime.engine`.

The same figure for what the whole pipeline published, from its recordings (`run_pipeline.py
--video FILE --record OUT.psrec [--no-smooth] [--engine E]`: every frame, several people):

    python -m engines.training.video_jitter --recording raw.psrec smoothed.psrec

per track (`track_id`), within runs of consecutive frames, on `joints_3d_m - root_m`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from engines.runtime.skeleton import blazepose33_to_h36m17

logger = logging.getLogger(__name__)


def detect_video(path: Path, max_frames: int = 0) -> tuple[np.ndarray, np.ndarray, float, tuple]:
    """(joints_2d_px (N, 17, 2) NaN where nobody was found, confidence (N, 17), fps,
    (width, height)) of a video, BlazePose in tracking mode."""
    import cv2
    import mediapipe as mp

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {path}")
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or 30.0
    pose = mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1,
                                  smooth_landmarks=True, enable_segmentation=False)
    joints, conf, size = [], [], (0, 0)
    try:
        while not max_frames or len(joints) < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            h, w = frame.shape[:2]
            size = (w, h)
            result = pose.process(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if result.pose_landmarks is None:
                joints.append(np.full((17, 2), np.nan))
                conf.append(np.zeros(17))
                continue
            marks = result.pose_landmarks.landmark
            xy = np.array([(m.x * w, m.y * h) for m in marks])
            j, c = blazepose33_to_h36m17(xy, np.array([m.visibility for m in marks]))
            joints.append(j)
            conf.append(c)
    finally:
        pose.close()
        cap.release()
    return np.asarray(joints, np.float64), np.asarray(conf), fps, size


def runs_of_people(joints_2d_px: np.ndarray) -> np.ndarray:
    """(N,) track id per frame: consecutive frames with a person share one, -1 where none."""
    present = np.all(np.isfinite(joints_2d_px), axis=(1, 2))
    track = np.cumsum(np.concatenate([[present[0]], present[1:] & ~present[:-1]])) - 1
    return np.where(present, track, -1)


def second_difference_mm(joints_mm: np.ndarray, track: np.ndarray) -> float:
    """Mean |x[t+1] - 2 x[t] + x[t-1]| over joints and frames, within each track (mm/frame^2)."""
    parts = []
    for t in np.unique(track[track >= 0]):
        seq = joints_mm[track == t]
        if len(seq) >= 3:
            parts.append(np.linalg.norm(np.diff(seq, 2, axis=0), axis=-1).ravel())
    return float(np.concatenate(parts).mean()) if parts else float("nan")


def lift_video(engine_path: str, joints_2d_px: np.ndarray, track: np.ndarray, fps: float,
               intr) -> tuple[np.ndarray, int]:
    """(N, 17, 3) mm root-relative camera-frame joints (NaN where no person) from one engine,
    and the engine's receptive field (frames)."""
    from engines.training.evaluate import load_lifter, predict_metric, sequence_windows

    lifter = load_lifter(engine_path)
    out = np.full(joints_2d_px.shape[:1] + (17, 3), np.nan)
    keep = track >= 0
    px, group = joints_2d_px[keep], track[keep]
    windows, _ = sequence_windows(px, group, fps, lifter.receptive_field, lifter.fps)
    n = len(px)
    cams = SimpleNamespace(**{k: np.full(n, float(getattr(intr, k))) for k in ("fx", "fy", "cx", "cy")})
    out[keep] = predict_metric(lifter, windows, cams) * 1000.0
    return out, lifter.receptive_field


def one_euro(joints_mm: np.ndarray, track: np.ndarray, fps: float,
             settings: tuple[float, float, float]) -> np.ndarray:
    """The smooth stage's One Euro filter (min_cutoff Hz, beta, d_cutoff Hz) along each run of
    frames with a person (`engines.training.evaluate.smooth_sequences`); NaN elsewhere."""
    from engines.training.evaluate import smooth_sequences

    out = np.full_like(joints_mm, np.nan)
    keep = track >= 0
    out[keep] = smooth_sequences(joints_mm[keep] / 1000.0, track[keep], fps, settings) * 1000.0
    return out


def measure(video: Path, engines: list[str], fov_deg: float = 60.0, max_frames: int = 0,
            one_euro_settings: tuple[float, float, float] | None = None) -> dict:
    """one_euro_settings: the filter for every engine; None: the stage's for each engine's kind
    (`pipeline.config.one_euro_for_engine`)."""
    from engines.runtime.intrinsics import intrinsics_from_fov
    from pipeline.config import one_euro_for_engine

    px, _, fps, (w, h) = detect_video(video, max_frames)
    track = runs_of_people(px)
    intr = intrinsics_from_fov(fov_deg, w, h)
    rows = []
    for path in engines:
        rel, receptive_field = lift_video(path, px, track, fps, intr)
        settings = one_euro_settings or one_euro_for_engine(receptive_field)
        rows.append({"engine": path,
                     "jitter_mm_per_frame2": round(second_difference_mm(rel, track), 2),
                     "jitter_one_euro_mm_per_frame2": round(
                         second_difference_mm(one_euro(rel, track, fps, settings), track), 2),
                     "one_euro": list(settings)})
    return {"video": str(video), "frames": int(len(px)), "frames_with_person": int((track >= 0).sum()),
            "fps": fps, "fov_deg": fov_deg, "rows": rows}


def recording_jitter(path: Path) -> dict:
    """Jitter of a pipeline recording: mean |x[t+1] - 2 x[t] + x[t-1]| (mm/frame^2 at the
    video's rate) of each track's root-relative joints over runs of consecutive frame ids,
    and how many frames, people and tracks that covers. Raises RecordingError / SchemaError
    (pipeline.record, pipeline.schema) on a file that is not a recording."""
    from pipeline.record import Recording
    from pipeline.schema import Pose3D

    per_track: dict[int, list[tuple[int, np.ndarray]]] = {}
    frames = 0
    with Recording(path) as rec:
        for item in rec:
            msg = item.decode()
            if not isinstance(msg, Pose3D):
                continue
            frames += 1
            for person in msg.people:
                rel = (np.asarray(person.joints_3d_m, np.float64)
                       - np.asarray(person.root_m, np.float64)) * 1000.0
                per_track.setdefault(person.track_id, []).append((msg.frame_id, rel))
    parts, people = [], 0
    for poses in per_track.values():
        poses.sort(key=lambda p: p[0])
        ids = np.array([p[0] for p in poses])
        joints = np.stack([p[1] for p in poses])
        runs = np.cumsum(np.concatenate([[0], np.diff(ids) != 1]))
        people += len(poses)
        value = second_difference_mm(joints, runs)
        if np.isfinite(value):
            n = sum(max(0, int((runs == r).sum()) - 2) for r in np.unique(runs))
            parts.append((value, n))
    total = sum(n for _, n in parts)
    jitter = sum(v * n for v, n in parts) / total if total else float("nan")
    return {"recording": str(path), "frames": frames, "people": people,
            "tracks": len(per_track), "second_differences": total,
            "jitter_mm_per_frame2": round(float(jitter), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.training.video_jitter",
                                description=__doc__.split("\n")[0])
    p.add_argument("--video", type=Path, help="lift this video offline with each --engine")
    p.add_argument("--engine", nargs="+",
                   help="engine files (.onnx), shipped engines by name (default, temporal) "
                        "or checkpoints")
    p.add_argument("--recording", type=Path, nargs="+",
                   help="instead: measure what the pipeline published (run_pipeline.py --record)")
    p.add_argument("--fov", type=float, default=60.0, help="horizontal field of view, degrees")
    p.add_argument("--max-frames", type=int, default=0)
    p.add_argument("--one-euro", metavar="MIN_CUTOFF,BETA[,D_CUTOFF]",
                   help="One Euro settings for the smoothed figure (default: the smooth stage's "
                        "for each engine's kind)")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if a.recording:
        if a.video or a.engine:
            p.error("--recording measures recordings; --video/--engine lift a video: pick one")
        from pipeline.record import RecordingError
        from pipeline.schema import SchemaError

        try:
            result = {"recordings": [recording_jitter(path) for path in a.recording]}
        except (RecordingError, SchemaError, OSError) as err:
            print(f"video_jitter: {err}; give recordings written by run_pipeline.py --record",
                  file=sys.stderr)
            return 2
    elif a.video and a.engine:
        from pipeline.config import parse_one_euro

        try:
            settings = parse_one_euro(a.one_euro) if a.one_euro else None
        except ValueError as err:
            p.error(str(err))
        result = measure(a.video, a.engine, a.fov, a.max_frames, settings)
    else:
        p.error("give --video FILE --engine E [E ...], or --recording FILE [FILE ...]")
    text = json.dumps(result, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
