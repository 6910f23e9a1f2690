"""Live viewer: subscribe to the pose stream and show `pipeline.render.render`'s picture.

    python -m pipeline.view                           # tcp://127.0.0.1:5556, a window
    python -m pipeline.view tcp://10.0.0.5:5556       # another host's stream
    python -m pipeline.view --headless-png live.png   # no display: keep live.png up to date

With an X display it opens a window; q, Esc or the close button stop it.
Without one it runs headless: it writes the latest picture to `--headless-png` (about once a
second and at exit) or, without that option, only counts and logs. From Python,
`run_viewer(endpoint, ...)` does the same and returns a `ViewerSummary`.

Pose3D messages carry the 2D joints and the image size but not the image, so the 2D
skeleton is drawn on a black canvas of that size, unless the publisher also sends the camera
images as `Frame` messages on the topic `frame` (not the pipeline's default: a 720p stream is
~80 MB/s): then each pose is drawn on the image with the same frame_id.

The numbers on the picture: fps (poses received per second over the last 2 s), latency
(capture to receipt, median over the last 2 s; the monotonic clock is shared only by
processes on one host, so it is shown as "-" when the publisher is elsewhere or replayed),
pipeline (capture to publish, from the message's own stamps: valid anywhere, replays too),
dropped (frames lost upstream: gaps in frame_id) and shown.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import zmq

from pipeline.config import OutputConfig
from pipeline.render import RenderStyle, ViewStats, render
from pipeline.schema import Frame, Pose3D, SchemaError, Status, decode
from pipeline.transport import open_socket

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = OutputConfig().publish
WINDOW_TITLE = "posestream"
#: latencies outside this range come from another clock (another host, a replay): not shown
MAX_PLAUSIBLE_LATENCY_NS = 10_000_000_000
#: camera frames kept while waiting for their pose (about 2 s at 30 fps)
FRAME_CACHE_SIZE = 64


class StreamStats:
    """Running numbers for the viewer, fed one received pose at a time.

    `add(pose, t_recv_ns)`, then `snapshot()` -> ViewStats. window_s: the span fps and
    latency are measured over.
    """

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_ns = int(window_s * 1e9)
        # (t_recv_ns, capture-to-receipt ns or None, capture-to-publish ns or None)
        self._recv: collections.deque[tuple[int, int | None, int | None]] = collections.deque()
        self.received = 0
        self.dropped = 0
        self.last_frame_id: int | None = None
        self.last: Pose3D | None = None
        self.note = ""

    def add(self, pose: Pose3D, t_recv_ns: int) -> None:
        """Count one pose received at t_recv_ns (time.monotonic_ns())."""
        latency = t_recv_ns - pose.t_capture_ns
        plausible = 0 <= latency <= MAX_PLAUSIBLE_LATENCY_NS
        published = pose.stamps[-1][2] - pose.t_capture_ns if pose.stamps else None
        self._recv.append((t_recv_ns, latency if plausible else None, published))
        while self._recv and self._recv[0][0] < t_recv_ns - self.window_ns:
            self._recv.popleft()
        if self.last_frame_id is not None and pose.frame_id > self.last_frame_id + 1:
            self.dropped += pose.frame_id - self.last_frame_id - 1
        self.last_frame_id = pose.frame_id  # a smaller id (restart, replay loop) starts over
        self.received += 1
        self.last = pose

    def snapshot(self) -> ViewStats:
        fps = None
        if len(self._recv) >= 2:
            span_ns = self._recv[-1][0] - self._recv[0][0]
            fps = (len(self._recv) - 1) * 1e9 / span_ns if span_ns > 0 else None
        lat = [v for _, v, _ in self._recv if v is not None]
        pipe = [v for _, _, v in self._recv if v is not None]
        last = self.last
        return ViewStats(
            fps=fps,
            latency_ms=float(np.median(lat)) / 1e6 if lat else None,
            pipeline_ms=float(np.median(pipe)) / 1e6 if pipe else None,
            dropped=self.dropped,
            received=self.received,
            frame_id=None if last is None else last.frame_id,
            people=None if last is None else len(last.people),
            engine_id="" if last is None else last.engine_id,
            note=self.note,
        )


@dataclass(frozen=True)
class ViewerSummary:
    """What a viewer run saw: poses received, frames dropped upstream, pictures drawn,
    PNG files written, status messages received."""

    received: int
    dropped: int
    rendered: int
    pngs_written: int
    statuses: int


def has_display(environ: dict[str, str] | None = None) -> bool:
    """True when an X display (what OpenCV's Qt windows need) can be reached.

    Checked before any window is opened, because Qt aborts the whole process when DISPLAY
    names a display that is not there. ":N" is a local socket /tmp/.X11-unix/XN;
    "host:N" (e.g. ssh forwarding) a TCP port 6000 + N.
    """
    env = os.environ if environ is None else environ
    display = env.get("DISPLAY", "")
    if not display or ":" not in display:
        return False
    host, _, rest = display.rpartition(":")
    number = rest.split(".")[0]
    if not number.isdigit():
        return False
    if host in ("", "unix"):
        return Path(f"/tmp/.X11-unix/X{number}").exists()
    try:
        with socket.create_connection((host, 6000 + int(number)), timeout=0.5):
            return True
    except OSError:
        return False


def render_pose(
    pose: Pose3D, stats: ViewStats, t_s: float, style: RenderStyle, frame: Frame | None = None
) -> np.ndarray:
    """The viewer's picture for one Pose3D (everyone in the frame, a colour and an id label
    per track), on its camera frame if given (and of the pose's image_size), else on a black
    canvas of that size."""
    image = None
    if frame is not None and (frame.image.shape[1], frame.image.shape[0]) == pose.image_size:
        image = frame.image
    return render(image, pose.people, stats, t_s, image_size=pose.image_size, style=style)


def _write_png(path: Path, image: np.ndarray) -> None:
    """Replace `path` atomically, so a reader never sees half a PNG."""
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    if not cv2.imwrite(str(tmp), image):
        raise OSError(f"could not write {tmp}: does the directory exist? is it a .png name?")
    os.replace(tmp, path)


def run_viewer(
    endpoint: str = DEFAULT_ENDPOINT,
    *,
    topic: str = OutputConfig().topic,
    status_topic: str | None = OutputConfig().status_topic,
    frame_topic: str | None = "frame",
    headless_png: str | os.PathLike | None = None,
    png_interval_s: float = 1.0,
    show: bool | None = None,
    max_messages: int | None = None,
    timeout_s: float | None = None,
    stop_event: threading.Event | None = None,
    style: RenderStyle = RenderStyle(),
) -> ViewerSummary:
    """Subscribe to `endpoint` and show (or save) each pose until told to stop.

    Poses come on `topic`, Status messages on `status_topic`, and camera images (Frame
    messages), if the publisher sends any, on `frame_topic` (None: never draw on images).
    show: open a window (None: when a display exists). headless_png: also keep this PNG file
    up to date (every png_interval_s and at exit). Stops after max_messages poses, after
    timeout_s without a message, when stop_event is set, or when the window is closed (q/Esc).
    Only the newest pose waiting is drawn (older ones are skipped, not counted as drops).
    """
    show = has_display() if show is None else show
    png_path = None if headless_png is None else Path(headless_png)
    ctx = zmq.Context.instance()
    sock = open_socket(ctx, zmq.SUB, connect=endpoint, rcvhwm=64)
    stats = StreamStats()
    rendered = pngs = statuses = 0
    t0 = time.monotonic()
    last_png = -float("inf")
    last_log = t0
    last_msg = t0
    image: np.ndarray | None = None
    frames: collections.OrderedDict[int, Frame] = collections.OrderedDict()
    try:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        if status_topic:
            sock.setsockopt(zmq.SUBSCRIBE, status_topic.encode())
        if frame_topic:
            sock.setsockopt(zmq.SUBSCRIBE, frame_topic.encode())
        log.info("viewer: subscribed to %r on %s (%s)", topic, endpoint,
                 "window" if show else f"headless, png={png_path}")
        while stop_event is None or not stop_event.is_set():
            if max_messages is not None and stats.received >= max_messages:
                break
            now = time.monotonic()
            if timeout_s is not None and now - last_msg > timeout_s:
                log.info("viewer: nothing for %.1f s; stopping", timeout_s)
                break
            newest: Pose3D | None = None
            if sock.poll(50, zmq.POLLIN):
                while True:  # drain: draw only the newest pose waiting
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    t_recv = time.monotonic_ns()
                    try:
                        msg = decode(parts[1:])
                    except SchemaError as exc:
                        log.warning("viewer: skipped a malformed message: %s", exc)
                        continue
                    last_msg = time.monotonic()
                    if isinstance(msg, Frame):
                        frames[msg.frame_id] = msg
                        while len(frames) > FRAME_CACHE_SIZE:
                            frames.popitem(last=False)
                    elif isinstance(msg, Status):
                        statuses += 1
                        stats.note = f"{msg.kind}: {msg.text}"[:60]
                    elif isinstance(msg, Pose3D):
                        stats.add(msg, t_recv)
                        newest = msg
                        if max_messages is not None and stats.received >= max_messages:
                            break
            t_s = time.monotonic() - t0
            if newest is not None:
                image = render_pose(newest, stats.snapshot(), t_s, style,
                                    frames.get(newest.frame_id))
                rendered += 1
            if show:
                if image is None:
                    image = _waiting_picture(endpoint, style)
                try:
                    cv2.imshow(WINDOW_TITLE, image)
                    key = cv2.waitKey(1) & 0xFF
                except cv2.error as exc:
                    log.warning("viewer: cannot open a window (%s); continuing headless", exc)
                    show = False
                    key = -1
                if key in (ord("q"), 27):
                    break
                if show and cv2.getWindowProperty(WINDOW_TITLE, cv2.WND_PROP_VISIBLE) < 1:
                    break  # the window was closed with its close button
            if png_path is not None and newest is not None and t_s - last_png >= png_interval_s:
                _write_png(png_path, image)
                pngs += 1
                last_png = t_s
            if not show and png_path is None and time.monotonic() - last_log > 5.0:
                snap = stats.snapshot()
                log.info("viewer: %d poses, %s fps, %d dropped", snap.received,
                         "-" if snap.fps is None else f"{snap.fps:.1f}", snap.dropped)
                last_log = time.monotonic()
        if png_path is not None and stats.last is not None:
            image = render_pose(stats.last, stats.snapshot(), time.monotonic() - t0, style,
                                frames.get(stats.last.frame_id))
            _write_png(png_path, image)
            pngs += 1
    finally:
        sock.close(linger=0)
        if show:
            cv2.destroyAllWindows()
    return ViewerSummary(
        received=stats.received, dropped=stats.dropped, rendered=rendered, pngs_written=pngs,
        statuses=statuses,
    )


def _waiting_picture(endpoint: str, style: RenderStyle) -> np.ndarray:
    """A dark picture saying what the viewer is waiting for."""
    h = style.height_px
    img = np.zeros((h, h * 2, 3), np.uint8)
    cv2.putText(img, f"waiting for poses on {endpoint}", (20, h // 2), cv2.FONT_HERSHEY_SIMPLEX,
                0.7, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def main(argv: list[str] | None = None, prog: str = "python -m pipeline.view") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Show a running posestream: the 2D skeleton beside an orbiting 3D view, "
        "with fps, latency and drop counts. Headless without a display.",
    )
    parser.add_argument("endpoint", nargs="?", default=DEFAULT_ENDPOINT,
                        help=f"publisher to connect to (default {DEFAULT_ENDPOINT})")
    parser.add_argument("--topic", default=OutputConfig().topic,
                        help="pose topic (default %(default)s)")
    parser.add_argument("--frame-topic", default="frame",
                        help="topic of camera images (Frame messages) to draw on, if the "
                        "publisher sends any (default %(default)s)")
    parser.add_argument("--headless-png", metavar="OUT.png",
                        help="keep this PNG up to date with the latest picture (~1/s and at exit)")
    parser.add_argument("--no-window", action="store_true", help="never open a window")
    parser.add_argument("--count", type=int, default=None, help="stop after N poses")
    parser.add_argument("--timeout", type=float, default=None,
                        help="stop after this many seconds without a message")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    show = False if args.no_window else None
    if show is None and not has_display():
        log.info("no display: running headless")
    try:
        summary = run_viewer(args.endpoint, topic=args.topic, frame_topic=args.frame_topic or None,
                             headless_png=args.headless_png,
                             show=show, max_messages=args.count, timeout_s=args.timeout)
    except KeyboardInterrupt:
        return 0
    print(f"{summary.received} poses received, {summary.dropped} dropped upstream, "
          f"{summary.rendered} drawn, {summary.pngs_written} PNG writes, "
          f"{summary.statuses} status messages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
