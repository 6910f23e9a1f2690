"""Receive the published pose stream.

From Python:

    from pipeline.subscribe import subscribe
    for frame in subscribe("tcp://127.0.0.1:5556"):     # pipeline.schema.Pose3D, one a frame
        for person in frame.people:                      # pipeline.schema.Person3D
            print(frame.frame_id, person.track_id, person.joints_3d_m[0])  # (17, 3) metres

    stream = subscribe(endpoint, latest_only=True)      # a reader slower than the stream:
    for frame in stream: ...                            # always the newest frame waiting,
    stream.skipped                                      # and how many were passed over

From a shell: `python -m pipeline.subscribe [ENDPOINT] [--json] [--count N]` prints one line
per person (or "nobody" for a frame without people); `--json` one JSON object per frame with
its `people` list. From any other language: SUB to the endpoint, subscribe to "pose3d", and read
two frames per message: the topic, then a msgpack map (see pipeline/schema.py for the
fields; arrays are {dtype: "<f4", shape, data: little-endian bytes}).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys

import numpy as np
import zmq

from pipeline.config import OutputConfig
from pipeline.schema import Pose3D, SchemaError, Status, decode
from pipeline.security import curve_client_options, load_keypair, load_public_key
from pipeline.transport import open_socket

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = OutputConfig().publish
DEFAULT_TOPIC = OutputConfig().topic


class Subscription:
    """An iterator over the messages of one SUB socket (what `subscribe()` returns).

    Counters: `received` (messages decoded), `skipped` (poses passed over in latest-only
    mode because a newer one was already waiting), `malformed`. `close()` (or `with`, or
    garbage collection) closes the socket.
    """

    def __init__(self, endpoint: str, topic: str, *, timeout_s: float | None,
                 include_status: bool, rcvhwm: int, latest_only: bool,
                 curve_secret_key: str | None = None,
                 curve_server_key: str | None = None) -> None:
        self._sock: zmq.Socket | None = None
        self.endpoint = endpoint
        self.latest_only = latest_only
        self.received = 0
        self.skipped = 0
        self.malformed = 0
        self._timeout_ms = None if timeout_s is None else int(timeout_s * 1000)
        self._ready: collections.deque[Pose3D | Status] = collections.deque()
        options = None
        if (curve_secret_key is None) != (curve_server_key is None):
            raise ValueError("CurveZMQ needs both this subscriber's secret key file and the "
                             "publisher's public key file")
        if curve_secret_key is not None:
            options = curve_client_options(
                load_keypair(curve_secret_key), load_public_key(curve_server_key)
            )
        self._sock = open_socket(
            zmq.Context.instance(), zmq.SUB, connect=endpoint, rcvhwm=rcvhwm, options=options
        )
        self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        if include_status:
            self._sock.setsockopt(zmq.SUBSCRIBE, OutputConfig().status_topic.encode())

    def __iter__(self) -> "Subscription":
        return self

    def __next__(self) -> Pose3D | Status:
        while not self._ready:
            if self._sock is None or not self._sock.poll(self._timeout_ms, zmq.POLLIN):
                self.close()
                raise StopIteration
            self._receive()
        return self._ready.popleft()

    def _decode(self, parts: list) -> Pose3D | Status | None:
        try:
            msg = decode(parts[1:])
        except SchemaError as exc:
            self.malformed += 1
            log.warning("skipped a malformed message: %s", exc)
            return None
        self.received += 1
        return msg

    def _receive(self) -> None:
        """One message; in latest-only mode everything waiting, keeping every Status and
        only the newest pose (in arrival order)."""
        if not self.latest_only:
            msg = self._decode(self._sock.recv_multipart(copy=False))
            if msg is not None:
                self._ready.append(msg)
            return
        batch: list[Pose3D | Status] = []
        while True:
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            msg = self._decode(parts)
            if msg is not None:
                batch.append(msg)
        newest = max((i for i, m in enumerate(batch) if isinstance(m, Pose3D)), default=-1)
        for i, msg in enumerate(batch):
            if isinstance(msg, Pose3D) and i != newest:
                self.skipped += 1
            else:
                self._ready.append(msg)

    def close(self) -> None:
        """Close the socket (idempotent); iteration ends."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_sock", None) is not None:
            self.close()


def subscribe(
    endpoint: str = DEFAULT_ENDPOINT,
    topic: str = DEFAULT_TOPIC,
    *,
    timeout_s: float | None = None,
    include_status: bool = False,
    rcvhwm: int = 64,
    latest_only: bool = False,
    curve_secret_key: str | None = None,
    curve_server_key: str | None = None,
) -> Subscription:
    """Iterate over the messages published on `endpoint` (Pose3D; Status too if
    include_status), only those on `topic`.

    Connects (the publisher may start later). Stops after `timeout_s` without a message
    (None: waits forever). Malformed messages are skipped and logged, never raised.
    latest_only: each step drains what is waiting and yields only the newest pose (Status
    messages are all kept), for a reader that is slower than the stream; the poses passed
    over are counted in `.skipped`. The socket is closed when iteration ends, on `close()`,
    or when the subscription is garbage-collected.
    curve_secret_key, curve_server_key: for a CurveZMQ publisher (run_pipeline.py
    --curve-secret): this subscriber's secret key file (its public key must be authorised
    there) and the publisher's public key file. Raises KeyFileError for bad key files.
    """
    return Subscription(endpoint, topic, timeout_s=timeout_s, include_status=include_status,
                        rcvhwm=rcvhwm, latest_only=latest_only,
                        curve_secret_key=curve_secret_key, curve_server_key=curve_server_key)


def pose_to_dict(pose: Pose3D) -> dict:
    """A JSON-able dict of a frame's poses: arrays as nested lists, metres and pixels;
    `people` a list of dicts (track_id, joints_3d_m, root_m, joints_2d_px, confidence,
    reproj_err_px)."""
    def plain(obj) -> dict:
        out = {}
        for name in obj.__dataclass_fields__:
            value = getattr(obj, name)
            if isinstance(value, np.ndarray):
                value = np.round(value.astype(np.float64), 5).tolist()
            elif name == "people":
                value = [plain(p) for p in value]
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[name] = value
        return out
    return plain(pose)


def _line(pose: Pose3D | Status) -> str:
    if isinstance(pose, Status):
        return f"status {pose.kind}: {pose.text}"
    e2e_ms = (pose.stamps[-1][2] - pose.t_capture_ns) / 1e6 if pose.stamps else float("nan")
    if not pose.people:
        return f"frame {pose.frame_id:6d}  nobody  ({e2e_ms:.1f} ms)"
    lines = []
    for person in pose.people:
        x, y, z = person.root_m
        lines.append(
            f"frame {pose.frame_id:6d}  track {person.track_id:4d}  root ({x:+.2f}, {y:+.2f}, "
            f"{z:+.2f}) m  reproj {float(np.median(person.reproj_err_px)):.1f} px  "
            f"({e2e_ms:.1f} ms)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python -m pipeline.subscribe") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Print the 3D poses a running posestream pipeline publishes, one line per "
                    "person (track id, root, reprojection error, latency).",
    )
    parser.add_argument("endpoint", nargs="?", default=DEFAULT_ENDPOINT,
                        help=f"publisher to connect to (default {DEFAULT_ENDPOINT})")
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help="topic (default %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print each frame as one JSON object per line (all fields, people a list)")
    parser.add_argument("--count", type=int, default=None, help="stop after N frames")
    parser.add_argument("--timeout", type=float, default=None,
                        help="stop after this many seconds without a pose")
    parser.add_argument("--latest", action="store_true",
                        help="latest only: when this program falls behind, skip to the newest "
                             "pose (the count skipped is logged at the end)")
    parser.add_argument("--curve-secret", metavar="FILE",
                        help="CurveZMQ: this subscriber's secret key file (python -m "
                             "pipeline.keys new NAME); its public key must be authorised by "
                             "the publisher")
    parser.add_argument("--curve-server", metavar="FILE",
                        help="CurveZMQ: the publisher's public key file (server.key)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    n = 0
    try:
        stream = subscribe(args.endpoint, args.topic, timeout_s=args.timeout,
                           include_status=not args.json, latest_only=args.latest,
                           curve_secret_key=args.curve_secret,
                           curve_server_key=args.curve_server)
    except ValueError as exc:  # KeyFileError too
        parser.error(str(exc))
    try:
        for pose in stream:
            if args.json:
                if isinstance(pose, Pose3D):
                    sys.stdout.write(json.dumps(pose_to_dict(pose)) + "\n")
            else:
                sys.stdout.write(_line(pose) + "\n")
            sys.stdout.flush()
            n += isinstance(pose, Pose3D)
            if args.count is not None and n >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()
    if args.latest:
        log.info("%d poses shown, %d skipped to keep up", n, stream.skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
