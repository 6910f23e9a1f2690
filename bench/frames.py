"""The frames every benchmark of one run is fed, and the loop the in-process baselines use.

A video is decoded once into BMP files in memory (/dev/shm), then read back by the capture
stage as an image set paced at the benchmark's rate (`CaptureConfig(images=...,
images_fps=...)`, the `--images` path of run_pipeline.py).

Why not the video itself: the capture stage paces a video at the file's own rate (the sample is
50 fps) and the benchmarks must run at 30, 60 or as fast as possible; and reading a BMP
(~0.6 ms for 1280x720) costs about what taking a frame from a camera does, so the pipeline and
the baselines see identical frames at identical cost.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2

from bench import report
from pipeline.config import CaptureConfig
from pipeline.schema import Frame
from pipeline.stage import EndOfStream
from stages.capture import CaptureStage

log = logging.getLogger(__name__)

DEFAULT_VIDEO: Path = (
    Path(os.environ.get("POSESTREAM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    / "data" / "footage" / "openpose" / "examples" / "media" / "video.avi"
)


@contextmanager
def decoded_frames(video: str | Path, max_frames: int | None = None,
                   size: tuple[int, int] | None = None,
                   crop: tuple[int, int, int, int] | None = None) -> Iterator[Path]:
    """Decode `video` into numbered BMP files in a temporary directory (RAM-backed where
    /dev/shm exists); yields the directory, removes it afterwards. crop: (x0, y0, x1, y1) px
    of the video to keep first (e.g. the part of the street video where one person walks),
    None for all of it. size: (width, height) to resize every frame to (e.g. a webcam's
    640x480), None for the video's (or the crop's) own size.

    Raises FileNotFoundError / ValueError with advice when the video is missing or unreadable.
    """
    video = Path(video)
    if not video.is_file():
        raise FileNotFoundError(f"video {video} does not exist: pass --video FILE")
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    out = Path(tempfile.mkdtemp(prefix="posestream-bench-", dir=base))
    try:
        cap = cv2.VideoCapture(str(video))
        try:
            n = 0
            while max_frames is None or n < max_frames:
                ok, image = cap.read()
                if not ok:
                    break
                if crop is not None:
                    x0, y0, x1, y1 = crop
                    if x1 > image.shape[1] or y1 > image.shape[0]:
                        raise ValueError(f"crop {crop} is outside the {image.shape[1]}x"
                                         f"{image.shape[0]} frames of {video}")
                    image = image[y0:y1, x0:x1]
                if size is not None and (image.shape[1], image.shape[0]) != tuple(size):
                    image = cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)
                cv2.imwrite(str(out / f"{n:06d}.bmp"), image)
                n += 1
        finally:
            cap.release()
        if n == 0:
            raise ValueError(f"no frame could be decoded from {video}: is it a video file?")
        log.info("bench: %d frames of %s decoded into %s", n, video, out)
        yield out
    finally:
        shutil.rmtree(out, ignore_errors=True)


def parse_size(text: str) -> tuple[int, int] | None:
    """"640x480" -> (640, 480); "native" -> None (the video's own size)."""
    if text == "native":
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"frame size must be WIDTHxHEIGHT (e.g. 640x480) or native, got {text!r}")
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise ValueError(f"frame size {w}x{h} is out of range")
    return w, h


def parse_crop(text: str) -> tuple[int, int, int, int]:
    """"620,0,1280,720" -> (620, 0, 1280, 720): x0, y0, x1, y1 in pixels."""
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"crop must be X0,Y0,X1,Y1 in pixels (e.g. 620,0,1280,720), got {text!r}")
    if not (0 <= x0 < x1 and 0 <= y0 < y1 and x1 - x0 >= 16 and y1 - y0 >= 16):
        raise ValueError(f"crop {text!r} must have 0 <= X0 < X1, 0 <= Y0 < Y1, at least 16 px")
    return x0, y0, x1, y1


def frame_count(folder: Path) -> int:
    """Number of frames decoded into `folder`."""
    return len(list(Path(folder).glob("*.bmp")))


def capture_config(folder: Path, fps: float | None, max_frames: int | None = None
                   ) -> CaptureConfig:
    """The capture stage's config for the frames in `folder`, paced at `fps` (None: as fast as
    possible)."""
    return CaptureConfig(
        images=str(Path(folder) / "*.bmp"),
        as_fast_as_possible=fps is None,
        images_fps=float(fps) if fps else 30.0,
        max_frames=max_frames,
    )


def feed(config: CaptureConfig, handle: Callable[[Frame], dict[str, float] | None],
         warmup: int = 30) -> dict[str, Any]:
    """The in-process baselines' loop: frames from the real capture stage (same pacing, same
    reads as in the pipeline), each handed to `handle(frame)` in this process.

    handle may return {part: ms} to time its parts. Latency per frame: from the frame's
    `t_capture_ns` to handle's return (monotonic clock, as the pipeline's end to end).
    Returns {"e2e": summary, "parts": {part: summary}, "throughput_fps", "frames",
    "cpu_percent" (this process, all threads, % of one core), "series", "raw"}; the first
    `warmup` frames are left out.
    """
    cap = CaptureStage(config)
    cap.open()
    e2e_ms: list[float] = []
    frame_ids: list[int] = []
    done_ns: list[int] = []
    parts: dict[str, list[float]] = {}
    cpu0 = wall0 = None
    try:
        while True:
            try:
                frame = cap.produce()
            except EndOfStream:
                break
            if frame is None:
                continue
            if frame.frame_id == warmup:
                cpu0, wall0 = time.process_time(), time.monotonic()
            timings = handle(frame)
            t_done = time.monotonic_ns()
            if frame.frame_id < warmup:
                continue
            e2e_ms.append((t_done - frame.t_capture_ns) / 1e6)
            frame_ids.append(frame.frame_id)
            done_ns.append(t_done)
            for part, ms in (timings or {}).items():
                parts.setdefault(part, []).append(ms)
    finally:
        cap.close()
    cpu_percent = (
        100.0 * (time.process_time() - cpu0) / (time.monotonic() - wall0)
        if cpu0 is not None else float("nan")
    )
    return {
        "frames": len(e2e_ms),
        "e2e": report.summarize(e2e_ms),
        "parts": {k: report.summarize(v) for k, v in parts.items()},
        "throughput_fps": report.throughput_fps(done_ns),
        "cpu_percent": cpu_percent,
        "series": {"frame_id": frame_ids, "e2e_ms": e2e_ms},
        "raw": {"e2e_ms": e2e_ms, "parts": parts, "done_ns": done_ns},  # report.merge_fed
    }
