"""Replay a recording: publish its messages again, byte for byte, with the original timing.

    python -m pipeline.replay run.psrec                       # on tcp://127.0.0.1:5556
    python -m pipeline.replay run.psrec --speed 2             # twice as fast
    python -m pipeline.replay run.psrec --speed 0             # as fast as possible
    python -m pipeline.replay run.psrec --publish ipc:///tmp/pose.sock --wait-subscribers 1

Any subscriber of the live stream (pipeline.view, pipeline.subscribe, your own program)
works unchanged against a replay. Messages keep their original fields, so `t_capture_ns`
and the stamps are those of the recording: latencies computed against the replaying host's
clock are meaningless (pipeline.view shows "-").

Message k is sent at `start + (t_recv[k] - t_recv[0]) / speed`, where t_recv are the
receive times the recorder stored.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import zmq
from tqdm import tqdm

from pipeline.config import OutputConfig
from pipeline.record import Recording, RecordingError
from pipeline.security import check_bind_endpoint
from pipeline.transport import open_socket

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = OutputConfig().publish


@dataclass(frozen=True)
class ReplaySummary:
    """sent: messages published. duration_s: first to last send. recorded_s: the span the
    recording covers (first to last receive)."""

    sent: int
    duration_s: float
    recorded_s: float


def _wait_for_subscriptions(sock: zmq.Socket, n: int, timeout_s: float,
                            stop_event: threading.Event | None) -> int:
    """Read XPUB subscription events until n arrived or timeout_s passed; returns the count."""
    seen = 0
    deadline = time.monotonic() + timeout_s
    while seen < n and time.monotonic() < deadline:
        if stop_event is not None and stop_event.is_set():
            break
        if sock.poll(100, zmq.POLLIN):
            if sock.recv()[:1] == b"\x01":
                seen += 1
    if seen < n:
        log.warning("replay: %d of %d subscriptions after %.1f s; starting anyway", seen, n,
                    timeout_s)
    return seen


def replay(
    path: str | os.PathLike,
    endpoint: str = DEFAULT_ENDPOINT,
    *,
    speed: float = 1.0,
    topics: Sequence[str] | None = None,
    wait_for_subscribers: int = 0,
    wait_s: float = 10.0,
    loop: bool = False,
    stop_event: threading.Event | None = None,
    progress: bool = True,
    linger_ms: int = 2000,
) -> ReplaySummary:
    """Bind `endpoint` and publish the recording's messages as they were received.

    speed: time scale (2: twice as fast; 0 or inf: no waiting). topics: publish only these
    (None: all). wait_for_subscribers: before starting, wait (at most wait_s) for this many
    subscription events (one per topic a subscriber asks for). loop: start over at the end
    until stop_event is set. linger_ms: how long closing waits for the last messages to leave.
    Raises RecordingError for an unreadable file, ValueError for a negative speed.
    """
    if speed < 0 or math.isnan(speed):
        raise ValueError(f"speed must be >= 0 (0: as fast as possible), got {speed}")
    wanted = None if topics is None else {t.encode() for t in topics}
    rec = Recording(path)
    if len(rec) == 0:
        rec.close()
        log.warning("replay: %s holds no messages; nothing to publish", path)
        return ReplaySummary(sent=0, duration_s=0.0, recorded_s=0.0)
    ctx = zmq.Context.instance()
    sock = open_socket(ctx, zmq.XPUB, bind=endpoint, sndhwm=100_000, rcvhwm=1000)
    sent = 0
    t_first = t_last = time.monotonic()
    try:
        if wait_for_subscribers > 0:
            _wait_for_subscriptions(sock, wait_for_subscribers, wait_s, stop_event)
        log.info("replaying %d messages (%.1f s recorded) from %s on %s at speed %g",
                 len(rec), rec.duration_s, path, endpoint, speed)
        scale = 0.0 if speed == 0 or math.isinf(speed) else 1.0 / speed
        t_first = time.monotonic()
        while True:
            start = time.monotonic()
            t0_ns = int(rec.t_recv_ns[0])
            bar = tqdm(total=len(rec), desc="replay", unit="msg", disable=not progress)
            for msg in rec:
                if stop_event is not None and stop_event.is_set():
                    break
                due = start + (msg.t_recv_ns - t0_ns) / 1e9 * scale
                wait = due - time.monotonic()
                if wait > 0:
                    if stop_event is not None:
                        if stop_event.wait(wait):
                            break
                    else:
                        time.sleep(wait)
                bar.update(1)
                if wanted is not None and msg.topic not in wanted:
                    continue
                sock.send_multipart(list(msg.frames), copy=False)
                t_last = time.monotonic()
                sent += 1
            bar.close()
            if not loop or (stop_event is not None and stop_event.is_set()):
                break
    finally:
        sock.close(linger=linger_ms)
        rec.close()
    return ReplaySummary(sent=sent, duration_s=t_last - t_first if sent else 0.0,
                         recorded_s=rec.duration_s)


def main(argv: list[str] | None = None, prog: str = "python -m pipeline.replay") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Publish a .psrec recording again, byte for byte, with its original timing, "
        "so any subscriber of the live stream can be run against it.",
    )
    parser.add_argument("file", help="recording made by --record or `python -m pipeline.record`")
    parser.add_argument("--publish", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
                        help=f"endpoint to bind (default {DEFAULT_ENDPOINT})")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="time scale: 2 twice as fast, 0.5 half speed, 0 no waiting")
    parser.add_argument("--topic", action="append", default=None,
                        help="publish only this topic (repeatable; default: all)")
    parser.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                        help="first wait for N subscriptions (one per topic a subscriber takes)")
    parser.add_argument("--wait-s", type=float, default=10.0,
                        help="... for at most this long (default %(default)s)")
    parser.add_argument("--loop", action="store_true", help="start over at the end until Ctrl-C")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow binding an endpoint other machines can reach")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_bind_endpoint(args.publish, args.allow_remote)
    except ValueError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        summary = replay(args.file, args.publish, speed=args.speed, topics=args.topic,
                         wait_for_subscribers=args.wait_subscribers, wait_s=args.wait_s,
                         loop=args.loop, stop_event=stop)
    except (RecordingError, ValueError, zmq.ZMQError) as exc:
        print(f"replay failed: {exc}", file=sys.stderr)
        return 2
    print(f"replayed {summary.sent} messages in {summary.duration_s:.2f} s "
          f"(recorded span {summary.recorded_s:.2f} s, speed {args.speed:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
