"""Receive the published pose stream.

From Python:

    from pipeline.subscribe import subscribe
    for pose in subscribe("tcp://127.0.0.1:5556"):      # pipeline.schema.Pose3D
        print(pose.frame_id, pose.joints_3d_m[0])        # (17, 3) metres, camera frame

From a shell: `python -m pipeline.subscribe [ENDPOINT] [--json] [--count N]` prints one line
per pose. From any other language: SUB to the endpoint, subscribe to "pose3d", and read
two frames per message: the topic, then a msgpack map (see pipeline/schema.py for the
fields; arrays are {dtype: "<f4", shape, data: little-endian bytes}).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator

import numpy as np
import zmq

from pipeline.config import OutputConfig
from pipeline.schema import Pose3D, SchemaError, Status, decode
from pipeline.transport import open_socket

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = OutputConfig().publish
DEFAULT_TOPIC = OutputConfig().topic


def subscribe(
    endpoint: str = DEFAULT_ENDPOINT,
    topic: str = DEFAULT_TOPIC,
    *,
    timeout_s: float | None = None,
    include_status: bool = False,
    rcvhwm: int = 64,
) -> Iterator[Pose3D | Status]:
    """Yield each message published on `endpoint` (Pose3D; Status too if include_status).

    Connects (the publisher may start later). Stops after `timeout_s` without a message
    (None: waits forever). Malformed messages are skipped and logged, never raised. The
    socket is closed when the generator is closed or garbage-collected.
    """
    ctx = zmq.Context.instance()
    sock = open_socket(ctx, zmq.SUB, connect=endpoint, rcvhwm=rcvhwm)
    try:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        if include_status:
            sock.setsockopt(zmq.SUBSCRIBE, OutputConfig().status_topic.encode())
        timeout_ms = None if timeout_s is None else int(timeout_s * 1000)
        while True:
            if not sock.poll(timeout_ms, zmq.POLLIN):
                return
            parts = sock.recv_multipart(copy=False)
            try:
                msg = decode(parts[1:])
            except SchemaError as exc:
                log.warning("skipped a malformed message: %s", exc)
                continue
            yield msg
    finally:
        sock.close(linger=0)


def pose_to_dict(pose: Pose3D) -> dict:
    """A JSON-able dict of a pose: arrays as nested lists, metres and pixels."""
    out = {}
    for name in pose.__dataclass_fields__:
        value = getattr(pose, name)
        if isinstance(value, np.ndarray):
            value = np.round(value.astype(np.float64), 5).tolist()
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[name] = value
    return out


def _line(pose: Pose3D | Status) -> str:
    if isinstance(pose, Status):
        return f"status {pose.kind}: {pose.text}"
    e2e_ms = (pose.stamps[-1][2] - pose.t_capture_ns) / 1e6 if pose.stamps else float("nan")
    if not pose.person_present:
        return f"frame {pose.frame_id:6d}  no person  ({e2e_ms:.1f} ms)"
    x, y, z = pose.root_m
    return (
        f"frame {pose.frame_id:6d}  root ({x:+.2f}, {y:+.2f}, {z:+.2f}) m  "
        f"reproj {float(np.median(pose.reproj_err_px)):.1f} px  ({e2e_ms:.1f} ms)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.subscribe",
        description="Print the 3D poses a running posestream pipeline publishes, one line each.",
    )
    parser.add_argument("endpoint", nargs="?", default=DEFAULT_ENDPOINT,
                        help=f"publisher to connect to (default {DEFAULT_ENDPOINT})")
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help="topic (default %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print each pose as one JSON object per line (all fields)")
    parser.add_argument("--count", type=int, default=None, help="stop after N poses")
    parser.add_argument("--timeout", type=float, default=None,
                        help="stop after this many seconds without a pose")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    n = 0
    try:
        for pose in subscribe(args.endpoint, args.topic, timeout_s=args.timeout,
                              include_status=not args.json):
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
