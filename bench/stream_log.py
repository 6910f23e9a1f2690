"""Everything the pipeline publishes, kept with its arrival time: a subscriber in a thread.

Used where a run is watched from outside while it is being hurt (bench.kill_soak,
bench.bounds, tests/test_faults.py): `StreamLog(endpoint)` connects a SUB socket to the
public stream and keeps `(t_recv_ns, message)` for every Pose3D and Status it decodes
(`time.monotonic_ns()`, the clock the stages stamp with); undecodable messages are counted,
not kept. Written here rather than on `pipeline.subscribe` because that generator hands over
one message at a time to one reader, where these callers poll a growing record from another
thread.
"""

from __future__ import annotations

import threading
import time

import zmq

from pipeline.schema import Pose3D, SchemaError, Status, decode


class StreamLog:
    """Subscribes to `endpoint` in a thread until `close()`; `items`: [(t_recv_ns, msg)]."""

    def __init__(self, endpoint: str, hwm: int = 100_000) -> None:
        self.endpoint = endpoint
        self.items: list[tuple[int, Pose3D | Status]] = []
        self.malformed = 0
        self._hwm = hwm
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self._hwm)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                if not sock.poll(50, zmq.POLLIN):
                    continue
                parts = sock.recv_multipart()
                try:
                    msg = decode(parts[1:])
                except SchemaError:
                    self.malformed += 1
                    continue
                if isinstance(msg, (Pose3D, Status)):
                    self.items.append((time.monotonic_ns(), msg))
        finally:
            sock.close(0)
            ctx.term()

    def poses(self) -> list[tuple[int, Pose3D]]:
        """[(t_recv_ns, Pose3D), ...] so far, in arrival order."""
        return [(t, m) for t, m in list(self.items) if isinstance(m, Pose3D)]

    def statuses(self) -> list[Status]:
        return [m for _, m in list(self.items) if isinstance(m, Status)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
