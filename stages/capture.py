"""Capture: frames from a camera, a video file or a set of images, as raw BGR `Frame`s.

Each frame gets a `frame_id` and `t_capture_ns = time.monotonic_ns()` taken the moment the
frame was grabbed. For a video or an image set the id is the input's position (frame n of
the file, image n of the sorted list; a loop goes on counting), so an input that could not
be used (an unreadable image) leaves a gap in the ids and is counted in `counters()`. A
video is paced at its own frame rate (as a camera would deliver it) unless
`as_fast_as_possible`; images at `images_fps`. No JPEG round trip.

A capture stage restarted after a crash (`resume`) goes on from its predecessor: ids keep
increasing. Newest frame wins (live sources, --realtime): the frames that passed while it
was down are skipped (a video or image set is wound forward to where it would be by now),
so subscribers see a gap, not a rewind. Lossless (files processed whole): it goes on with
the first frame not known delivered, skipping nothing.

A frame whose longest side is over `max_side` (a 24 MP photo, a 4K video) is scaled down to
it at once (cv2.INTER_AREA), and `Frame.scale_to_original` says by how much, so the detect
stage reports joints in the original image's pixels; bench/working_size.py measured the
default. A frame still over the schema's hard limit (max_side 0) is skipped and counted
("too_large"), never sent. A video that ends before the frame count its header announces is
reported as truncated.
`CaptureStage.preflight(config)` opens the source once before the pipeline starts, so a
missing camera or unreadable file fails in about a second with a message that says what to do.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import time
from collections.abc import Iterator

import cv2
import numpy as np

from pipeline.config import CaptureConfig
from pipeline.schema import MAX_IMAGE_BYTES, MAX_TEXT_CHARS, Frame
from pipeline.stage import EndOfStream, Source

log = logging.getLogger(__name__)

#: a camera that returns no frame this many times in a row is reported as gone
CAMERA_MAX_FAILED_READS = 30
#: the longest produce() sleeps before returning None (so stop requests are seen)
MAX_SLEEP_S = 0.05
#: unusable inputs named one by one in the log (the rest are counted, see counters())
MAX_LOGGED_SKIPS = 20
#: skipped inputs whose ids counters() lists (per reason; the count goes on beyond)
MAX_LISTED_SKIPS = 1000
#: why an input was not delivered: an image OpenCV cannot read; a frame over the hard
#: size limit (pipeline.schema.MAX_IMAGE_BYTES)
SKIP_REASONS: tuple[str, ...] = ("unreadable", "too_large")


class SourceError(RuntimeError):
    """A frame source could not be opened or stopped working; the message says what to do."""


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV prints backend warnings for every probe; keep them out of our messages."""
    try:
        old = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:
        yield
        return
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(old)


def camera_hint(index: int) -> str:
    """What to try when camera `index` does not open: the other /dev/video* devices there are,
    or, when there are none, that no camera is visible here at all."""
    others = sorted((int(p[len("/dev/video"):]) for p in glob.glob("/dev/video*")
                     if p[len("/dev/video"):].isdigit()))
    others = [i for i in others if i != index]
    if others:
        listed = ", ".join(f"--camera {i}" for i in others[:4])
        return (f"is it in use by another program? other video devices here: try {listed}; "
                "or --video FILE / --images GLOB")
    if os.path.exists(f"/dev/video{index}"):
        return (f"/dev/video{index} exists but does not deliver frames: is it in use by "
                "another program, or is this user not in the 'video' group? or use --video "
                "FILE / --images GLOB")
    return ("this machine has no /dev/video* device: connect a camera (in a container or VM, "
            "pass the device through), or use --video FILE or --images GLOB")


def _open_video_capture(config: CaptureConfig) -> cv2.VideoCapture:
    """Open the camera or video of `config`; raise SourceError if it cannot deliver a frame."""
    kind = config.source_kind()
    if kind == "video":
        path = config.video
        if not os.path.isfile(path):
            raise SourceError(f"video {path!r} does not exist: check the path given to --video")
        with _quiet_opencv():
            cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"video {path!r} could not be opened: is it a video OpenCV can decode "
                "(e.g. .mp4, .avi)? try another file or --images GLOB"
            )
        return cap
    index = 0 if config.camera is None else config.camera
    with _quiet_opencv():
        cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"camera {index} could not be opened: {camera_hint(index)}")
    for prop, value in (
        (cv2.CAP_PROP_FRAME_WIDTH, config.camera_width),
        (cv2.CAP_PROP_FRAME_HEIGHT, config.camera_height),
        (cv2.CAP_PROP_FPS, config.camera_fps),
    ):
        if value is not None:
            cap.set(prop, float(value))
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # latest frame, not a queue of old ones
    return cap


def _image_paths(config: CaptureConfig) -> list[str]:
    paths = sorted(p for p in glob.glob(config.images) if os.path.isfile(p))
    if not paths:
        raise SourceError(
            f"no files match --images {config.images!r}: quote the pattern so the shell does "
            "not expand it, e.g. --images 'frames/*.jpg'"
        )
    return paths


class CaptureStage(Source):
    """Source of `Frame`s (see module docstring). Config: CaptureConfig."""

    name = "capture"
    inputs = ()
    outputs = (Frame,)

    def __init__(self, config: CaptureConfig) -> None:
        super().__init__(config)
        self._cap: cv2.VideoCapture | None = None
        self._paths: list[str] = []
        self._next_id = 0
        self._path_index = 0
        self._period_s = 0.0  # pacing; 0: as fast as possible / camera's own rate
        self._t_start = 0.0
        self._failed_reads = 0
        self._resume: tuple[int, int, bool] | None = None
        self._skipped: dict[str, list[int]] = {r: [] for r in SKIP_REASONS}
        self._skip_counts: dict[str, int] = {r: 0 for r in SKIP_REASONS}
        self._skipped_restart = 0
        self._truncated: tuple[int, int] | None = None  # (frames decoded, frames announced)
        self._announced = 0  # a video's frame count from its header (0: not given)
        self._told_scaled = False

    def resume(self, after_frame_id: int, after_t_capture_ns: int, *,
               lossless: bool = False) -> None:
        self._resume = (after_frame_id, after_t_capture_ns, lossless)

    def counters(self) -> dict:
        """What this capture process has done, for the end-of-run report:
        `next_id` (inputs passed: the next frame id), `skipped` {reason: count},
        `skipped_ids` {reason: [frame id, ...]} (at most MAX_LISTED_SKIPS each),
        `skipped_restart` (frames passed over when it resumed after a restart, newest frame
        wins only), `truncated` [decoded, announced] or None."""
        return {
            "next_id": self._next_id,
            "skipped": dict(self._skip_counts),
            "skipped_ids": {r: list(ids) for r, ids in self._skipped.items()},
            "skipped_restart": self._skipped_restart,
            "truncated": None if self._truncated is None else list(self._truncated),
        }

    def _skip(self, reason: str, what: str) -> None:
        """Input `self._next_id` cannot be delivered: count it, name it in the log."""
        self._skip_counts[reason] += 1
        if len(self._skipped[reason]) < MAX_LISTED_SKIPS:
            self._skipped[reason].append(self._next_id)
        total = sum(self._skip_counts.values())
        if total <= MAX_LOGGED_SKIPS:
            log.warning("capture: skipped frame %d (%s): %s", self._next_id, what, reason)
            if total == MAX_LOGGED_SKIPS:
                log.warning("capture: further skipped inputs are counted, not logged")
        self._next_id += 1

    @staticmethod
    def preflight(config: CaptureConfig) -> tuple[int, int]:
        """Open the source and read one frame; raise SourceError with advice if that fails.
        Returns that frame's (width, height) (an image set's first image), for the checks
        that follow (the lift's --calib against the frames' aspect ratio)."""
        kind = config.source_kind()
        if kind == "images":
            paths = _image_paths(config)
            image = cv2.imread(paths[0])
            if image is None:
                raise SourceError(f"image {paths[0]!r} could not be read: is it an image file?")
            return image.shape[1], image.shape[0]
        cap = _open_video_capture(config)
        try:
            with _quiet_opencv():
                ok, frame = cap.read()
            if not ok or frame is None:
                what = f"video {config.video!r}" if kind == "video" else f"camera {config.camera}"
                raise SourceError(
                    f"{what} opened but delivered no frame: is the file empty or corrupt / "
                    "the camera in use? try another source"
                )
            return frame.shape[1], frame.shape[0]
        finally:
            cap.release()

    @property
    def source_name(self) -> str:
        kind = self.config.source_kind()
        if kind == "camera":
            return f"camera:{0 if self.config.camera is None else self.config.camera}"
        return f"{kind}:{self.config.video if kind == 'video' else self.config.images}"

    def open(self) -> None:
        kind = self.config.source_kind()
        if kind == "images":
            self._paths = _image_paths(self.config)
            if not self.config.as_fast_as_possible:
                self._period_s = 1.0 / self.config.images_fps
            log.info("capture: %d images from %s", len(self._paths), self.config.images)
        else:
            self._cap = _open_video_capture(self.config)
            if kind == "video" and not self.config.as_fast_as_possible:
                fps = self._cap.get(cv2.CAP_PROP_FPS)
                self._period_s = 1.0 / fps if math.isfinite(fps) and fps > 0 else 1.0 / 30
            log.info("capture: %s, %s", self.source_name,
                     f"paced at {1 / self._period_s:.1f} fps" if self._period_s else "unpaced")
        self._t_start = 0.0
        if self._resume is not None:
            self._go_on_from(*self._resume)
        if kind == "video":
            count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self._announced = count if count > 0 else 0

    def _go_on_from(self, last_id: int, last_t_capture_ns: int, lossless: bool) -> None:
        """After a restart: newest frame wins: the next id is the frame that is due now (the
        last one + the frame intervals that passed); lossless: the one after `last_id`. A
        file source is positioned at that frame."""
        kind = self.config.source_kind()
        period_s = self._period_s
        if kind == "camera":
            fps = self._cap.get(cv2.CAP_PROP_FPS)
            period_s = 1.0 / fps if math.isfinite(fps) and fps > 0 else 1.0 / 30
        elapsed_s = max(0.0, (time.monotonic_ns() - last_t_capture_ns) / 1e9)
        skipped = int(elapsed_s / period_s) if period_s and not lossless else 0
        self._skipped_restart += skipped
        self._next_id = last_id + 1 + skipped
        if kind != "camera":
            count = len(self._paths) if kind == "images" else int(
                self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
            position = self._next_id
            if self.config.loop and count > 0:
                position %= count
            if kind == "images":
                self._path_index = position
            elif count <= 0 or position < count:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, position)
            else:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, count)  # past the end: stream ends
        if self._period_s:
            self._t_start = time.monotonic() - self._next_id * self._period_s
        if lossless:
            log.info("capture: resuming after frame %d, the last one known delivered: next "
                     "frame %d (nothing skipped: every frame was asked for)", last_id,
                     self._next_id)
        else:
            log.info("capture: resuming after frame %d, %.2f s later: next frame %d "
                     "(%d skipped)", last_id, elapsed_s, self._next_id, skipped)

    def produce(self) -> Frame | None:
        """The next frame, None when it is not due yet; EndOfStream when done."""
        if self.config.max_frames is not None and self._next_id >= self.config.max_frames:
            raise EndOfStream
        if self._period_s:
            now = time.monotonic()
            if self._t_start == 0.0:
                self._t_start = now
            due = self._t_start + self._next_id * self._period_s
            if now < due:
                time.sleep(min(due - now, MAX_SLEEP_S))
                if time.monotonic() < due:
                    return None
        image, t_capture_ns = self._read()
        if image is None:
            return None
        # an image set names each file, so results can be matched to ground truth
        source = (f"image:{self._paths[self._path_index - 1]}" if self._paths
                  else self.source_name)[-MAX_TEXT_CHARS:]
        image, scale = self._fit(image)
        if image.nbytes > MAX_IMAGE_BYTES:
            h, w = image.shape[:2]
            self._skip("too_large", f"{source}: {w}x{h} is over the {MAX_IMAGE_BYTES} bytes "
                       "a frame may have; let capture scale it down (--max-side)")
            return None
        frame = Frame(frame_id=self._next_id, t_capture_ns=t_capture_ns, image=image,
                      source=source, scale_to_original=scale)
        self._next_id += 1
        return frame

    def _fit(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """`image` scaled down so its longest side is at most max_side, and the original's
        pixels per pixel of the result (1.0 when it was small enough)."""
        h, w = image.shape[:2]
        side = self.config.max_side
        if not side or max(h, w) <= side:
            return image, 1.0
        scale = max(h, w) / side
        size = (max(1, round(w / scale)), max(1, round(h / scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        if not self._told_scaled:
            self._told_scaled = True
            log.info("capture: frames of %dx%d are scaled down to %dx%d (--max-side %d); "
                     "joints are reported in the original's pixels", w, h, *size, side)
        return small, w / size[0]

    def _read(self) -> tuple[np.ndarray | None, int]:
        if self._paths:
            if self._path_index >= len(self._paths):
                if not self.config.loop:
                    raise EndOfStream
                self._path_index = 0
            path = self._paths[self._path_index]
            self._path_index += 1
            t_capture_ns = time.monotonic_ns()
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:  # its id stays unused: a gap, counted and named
                self._skip("unreadable", f"{path} is not an image OpenCV can read")
                return None, 0
            return image, t_capture_ns
        if not self._cap.grab():
            if self.config.source_kind() == "video":
                if self.config.loop and self._next_id > 0:
                    self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # play it again; ids go on
                    return None, 0
                self._check_complete()
                raise EndOfStream
            self._failed_reads += 1
            if self._failed_reads >= CAMERA_MAX_FAILED_READS:
                raise SourceError(
                    f"{self.source_name} stopped delivering frames "
                    f"({self._failed_reads} failed reads): was it unplugged?"
                )
            time.sleep(0.01)
            return None, 0
        t_capture_ns = time.monotonic_ns()
        ok, image = self._cap.retrieve()
        if not ok or image is None:
            return None, 0
        self._failed_reads = 0
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        return image, t_capture_ns

    def _check_complete(self) -> None:
        """At the end of a video: fewer frames than its header announces means the file is
        truncated or damaged; say so (and counters() reports it)."""
        if self._announced and self._next_id < self._announced and not self.config.loop:
            self._truncated = (self._next_id, self._announced)
            log.warning("capture: video %s ended after %d of the %d frames its header "
                        "announces: the file is truncated or damaged (%d frames could not "
                        "be read)", self.config.video, self._next_id, self._announced,
                        self._announced - self._next_id)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
