"""ZeroMQ plumbing: one socket helper and the two ends of an internal edge.

Latest-frame delivery is credit based (zguide's "credit-based flow control", MediaPipe's
FlowLimiter with one in flight): the consumer (a DEALER) sends a credit when it is free;
the producer (a ROUTER, bound at the edge's endpoint) keeps at most one unsent message and
sends it the moment a credit is there. A newer message replaces an unsent one (counted as
a drop). So a consumer never gets a message that was already stale when it asked, whatever
the message size (RCVHWM + drain alone cannot promise that: kernel socket buffers hold
hundreds of small messages). Credits carry a token and are re-sent while unanswered, so an
edge heals by itself when either end restarts: no sleeps, no lost first frame.

Frames on an edge: producer -> consumer `[kind, *message frames]`, kind `b"D"` (data: a
pipeline.schema message), `b"S"` (the same, its large parts in a shared-memory ring:
`[b"S", descriptor, *message frames with those parts empty]`, pipeline.shm; private ipc
edges only) or `b"E"` (end of stream). Consumer -> producer `[b"C", token]`.
Before a stage says it is ready, each of its input connections must be up: the consumer
watches its own socket (a ZeroMQ socket monitor, EVENT_HANDSHAKE_SUCCEEDED), so the first
frame is not lost to connection set-up or reconnect back-off, and the wire protocol stays
the three kinds above.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from pipeline.schema import MAX_MESSAGE_BYTES
from pipeline.shm import FrameRing, RingError, RingReader

log = logging.getLogger(__name__)

DATA = b"D"
SHM = b"S"
END = b"E"
CREDIT = b"C"
#: edge policies: "latest" (one unsent message, newest wins) or "lossless" (queue, the
#: consumer side holds back its own credits so the queue stays short: for offline runs)
POLICIES: tuple[str, ...] = ("latest", "lossless")
#: an unanswered credit is sent again after this long (heals restarts of either end)
CREDIT_RESEND_S: float = 0.25
#: at the end of stream, a consumer of an edge that has sent no credit for this long has
#: gone away (a worker busy with a message asks again well within it)
END_WAIT_S: float = 5.0


def open_socket(
    ctx: zmq.Context,
    socket_type: int,
    *,
    bind: str | None = None,
    connect: str | None = None,
    sndhwm: int = 16,
    rcvhwm: int = 16,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    identity: bytes | None = None,
    options: dict[int, int | bytes] | None = None,
) -> zmq.Socket:
    """A socket with LINGER=0, a maximum message size (receivers drop larger messages and
    the connection), fast reconnects, bound or connected to one endpoint.

    options: further socket options set before bind/connect (e.g. CurveZMQ keys from
    pipeline.security, which libzmq applies per connection at connect/accept time).

    Close it with `sock.close()` in a `finally` (or use it as a context manager).
    """
    if (bind is None) == (connect is None):
        raise ValueError("open_socket: give exactly one of bind= or connect=")
    sock = ctx.socket(socket_type)
    try:
        _configure(sock, sndhwm=sndhwm, rcvhwm=rcvhwm, max_message_bytes=max_message_bytes,
                   identity=identity)
        for option, value in (options or {}).items():
            sock.setsockopt(option, value)
        if socket_type == zmq.ROUTER:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if bind is not None:
            try:
                sock.bind(bind)
            except zmq.ZMQError as exc:
                raise zmq.ZMQError(exc.errno, f"could not bind {bind}: {exc.strerror}") from exc
        else:
            sock.connect(connect)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def _configure(sock: zmq.Socket, *, sndhwm: int, rcvhwm: int, max_message_bytes: int,
               identity: bytes | None = None) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    # local peers: retry often and without growing back-off, so an edge comes back within
    # ~50 ms of its peer (re)binding
    sock.setsockopt(zmq.RECONNECT_IVL, 20)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 50)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)


class EdgeSender:
    """Producer end of an internal edge: a ROUTER bound at `endpoint`.

    Several consumers may connect (fan-out: detection workers): each message goes to one
    of the consumers holding a credit, the one that asked first, and the end-of-stream
    marker goes to each of them when it asks. Call `offer(frames)` with an encoded
    message; register `socket` for POLLIN in your poller and call `on_readable()` when it
    fires; call `end()` once at end of stream and keep polling until `finished`.
    Counters: `sent`, `dropped` (replaced before sending), `sent_shm` (of `sent`, through
    the ring), `malformed_credits` (logged once). ring: a pipeline.shm.FrameRing for large parts (both ends on this host, in
    this run); the edge owns it and removes its file on close().
    `first_undelivered()`: the lowest frame id (as given to `offer`) not known to have
    reached a consumer: queued, or sent and not yet followed by that consumer's next credit
    (a restarted lossless source goes on from there; pipeline.runner).
    options: socket options set before bind (CurveZMQ server keys, pipeline.security).
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, policy: str = "latest",
                 ring: FrameRing | None = None,
                 options: dict[int, int | bytes] | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"edge policy must be one of {POLICIES}, got {policy!r}")
        self.endpoint = endpoint
        self.policy = policy
        self.ring = ring
        self.socket = open_socket(ctx, zmq.ROUTER, bind=endpoint, rcvhwm=64, sndhwm=8,
                                  options=options)
        # queued messages: (ring slot they hold or None, frame id or None, edge message parts)
        self._queue: collections.deque[tuple[int | None, int | None, list[Any]]] = (
            collections.deque())
        # frame id of the last message sent to each consumer, until its next credit
        self._unconfirmed: dict[bytes, int] = {}
        self._ended = False
        self._end_sent = False
        # consumers holding an unanswered credit -> its token, oldest first: several
        # consumers of one edge (detection workers) share its messages, each to one of them
        self._waiting: dict[bytes, bytes] = {}
        self._served: dict[bytes, bytes] = {}  # peer -> last token answered
        self._peers: set[bytes] = set()  # every consumer seen: each gets the end marker
        self._end_to: set[bytes] = set()  # ... and these have had it
        self._last_seen: dict[bytes, float] = {}  # peer -> monotonic s of its last credit
        # ring slot lent to each consumer: its last message's, until that consumer's next
        # credit says it is done with it (it may be reading the slot in place until then)
        self._lent: dict[bytes, int] = {}
        self.sent = 0
        self.sent_shm = 0
        self.dropped = 0
        self.malformed_credits = 0

    @property
    def backlog(self) -> int:
        """Messages waiting for a credit."""
        return len(self._queue)

    @property
    def finished(self) -> bool:
        """True once the end-of-stream marker has been delivered to every consumer (one
        that has sent no credit for END_WAIT_S, such as the old self of a restarted
        consumer, is taken as gone)."""
        if not self._end_sent and self._end_to:
            now = time.monotonic()
            pending = self._peers - self._end_to
            if all(now - self._last_seen.get(p, 0.0) > END_WAIT_S for p in pending):
                log.info("edge %s: %d consumer(s) silent for %.0f s, taken as gone",
                         self.endpoint, len(pending), END_WAIT_S)
                self._end_sent = True
        return self._end_sent

    def first_undelivered(self) -> int | None:
        """The lowest frame id queued, or sent to a consumer that has not asked again since
        (it may have been lost with that consumer or on the way); None when every message
        offered is known delivered. A consumer silent for END_WAIT_S is taken as gone."""
        now = time.monotonic()
        ids = [fid for _, fid, _ in self._queue if fid is not None]
        ids += [fid for peer, fid in self._unconfirmed.items()
                if now - self._last_seen.get(peer, now) <= END_WAIT_S]
        return min(ids) if ids else None

    def offer(self, frames: Sequence[Any], frame_id: int | None = None) -> None:
        """Queue one encoded message (of frame `frame_id`, for `first_undelivered`); with
        policy "latest" it replaces an unsent one."""
        if self._ended:
            raise RuntimeError(f"edge {self.endpoint}: offer() after end()")
        if self.policy == "latest" and self._queue:
            self._queue.clear()
            self.dropped += 1
        if self.ring is not None:
            busy = {slot for slot, _, _ in self._queue if slot is not None}
            now = time.monotonic()
            # a consumer silent for END_WAIT_S has gone (restarted under a new identity)
            busy.update(slot for peer, slot in self._lent.items()
                        if now - self._last_seen.get(peer, now) <= END_WAIT_S)
            put = self.ring.put(frames, busy)
            if put is not None:
                descriptor, slot, parts = put
                self._queue.append((slot, frame_id, [SHM, descriptor, *parts]))
                self._pump()
                return
        self._queue.append((None, frame_id, [DATA, *frames]))
        self._pump()

    def end(self) -> None:
        """Mark end of stream: delivered to every consumer after everything queued."""
        self._ended = True
        self._pump()

    def on_readable(self) -> None:
        """Take the credits that arrived and send what they allow."""
        while True:
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(parts) != 3 or parts[1] != CREDIT or len(parts[2]) > 16:
                self.malformed_credits += 1
                if self.malformed_credits == 1:  # once: a peer sending nothing else must
                    # not flood the log (bench/fuzz.py did); the count is kept
                    log.warning("edge %s: ignored a malformed credit (%d frames); further "
                                "ones are counted, not logged", self.endpoint, len(parts))
                continue
            peer, token = parts[0], parts[2]
            self._peers.add(peer)
            self._last_seen[peer] = time.monotonic()
            if self._served.get(peer) != token:
                self._waiting[peer] = token
                self._lent.pop(peer, None)  # a new credit: done with the last message
                self._unconfirmed.pop(peer, None)  # ... which it has, then, received
        self._pump()

    def _pump(self) -> None:
        while self._queue and self._waiting:
            peer, token = next(iter(self._waiting.items()))
            slot, frame_id, parts = self._queue[0]
            sent = self._send(peer, parts)
            if sent is None:
                return  # the consumer's pipe is full: keep the credit, try on the next event
            del self._waiting[peer]
            if sent:
                self._served[peer] = token
                self._queue.popleft()
                self.sent += 1
                if frame_id is not None:
                    self._unconfirmed[peer] = frame_id
                if slot is not None:
                    self.sent_shm += 1
                    self._lent[peer] = slot
        if self._ended and not self._queue:
            # every consumer gets the end marker, each in answer to its credit (so it has
            # read everything before it, and closing this socket loses nothing)
            for peer, token in list(self._waiting.items()):
                sent = self._send(peer, [END])
                if sent is None:
                    return
                del self._waiting[peer]
                if sent:
                    self._served[peer] = token
                    self._end_to.add(peer)
            if self._end_to and not self._peers - self._end_to:
                self._end_sent = True

    def _send(self, peer: bytes, parts: list[Any]) -> bool | None:
        """True: sent; False: that consumer went away; None: its pipe is full."""
        try:
            self.socket.send_multipart([peer, *parts], zmq.NOBLOCK, copy=len(parts) < 3)
        except zmq.Again:
            return None
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            log.info("edge %s: a consumer went away; waiting for a new one", self.endpoint)
            self._peers.discard(peer)
            self._lent.pop(peer, None)
            self._unconfirmed.pop(peer, None)
            return False
        return True

    def close(self) -> None:
        self.socket.close(linger=0)
        if self.ring is not None:
            self.ring.close()


class EdgeReceiver:
    """Consumer end of an internal edge: a DEALER connected to the producer's endpoint.

    Call `request()` when ready for the next message; register `socket` for POLLIN and call
    `receive()` when it fires: it returns the newest data message's frames, the END marker
    (`EdgeReceiver.END`) or None. Call `tick()` now and then so an unanswered credit is sent
    again. Counters: `received`, `dropped` (older messages skipped by drain-to-latest, and
    ring messages whose slot was rewritten before they were copied: also in `torn`).
    """

    END = END

    def __init__(self, ctx: zmq.Context, endpoint: str,
                 on_malformed: Callable[[str], None] | None = None,
                 ring_dir: str | None = None, zero_copy: bool = True,
                 options: dict[int, int | bytes] | None = None) -> None:
        """on_malformed(why) is called for each message that is not a valid edge message
        (it still answers our credit); default: log a warning. ring_dir: the run's shared
        memory directory; ring ("S") messages are accepted only with it, and only for
        ring files inside it. zero_copy: a ring message's large parts are read-only views
        of the ring, valid until the next request() (else copied out on arrival).
        options: socket options set before connect (CurveZMQ client keys)."""
        self.endpoint = endpoint
        self._rings = RingReader(ring_dir) if ring_dir else None
        self._zero_copy = zero_copy
        self._on_malformed = on_malformed or (
            lambda why: log.warning("edge %s: ignored a malformed message: %s", endpoint, why)
        )
        # the monitor must watch before connect(), or a fast handshake goes unseen
        self.socket = ctx.socket(zmq.DEALER)
        try:
            _configure(self.socket, sndhwm=8, rcvhwm=8, max_message_bytes=MAX_MESSAGE_BYTES)
            for option, value in (options or {}).items():
                self.socket.setsockopt(option, value)
            self._monitor: zmq.Socket | None = self.socket.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED
            )
            self.socket.connect(endpoint)
        except BaseException:
            self.socket.close(linger=0)
            raise
        self._token = 0
        self._asked_at: float | None = None
        self._end_seen = False
        self.connected = False
        self.received = 0
        self.dropped = 0
        self.torn = 0

    def wait_connected(self, timeout_s: float) -> bool:
        """True once the connection to the producer is up (ZMTP handshake done); waits at
        most timeout_s. Afterwards the monitor is closed: reconnects heal on their own."""
        if self.connected:
            return True
        if self._monitor.poll(int(timeout_s * 1000), zmq.POLLIN):
            self.connected = True
            self._close_monitor()
        return self.connected

    def _close_monitor(self) -> None:
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None

    @property
    def waiting(self) -> bool:
        """True while a credit is out and unanswered."""
        return self._asked_at is not None

    def request(self) -> None:
        """Tell the producer we are free for one message (idempotent while waiting)."""
        if self._asked_at is not None:
            return
        self._token += 1
        self._send_credit()

    def _send_credit(self) -> None:
        try:
            self.socket.send_multipart(
                [CREDIT, self._token.to_bytes(8, "little")], zmq.NOBLOCK
            )
        except zmq.Again:
            pass  # not connected yet; tick() sends it again
        self._asked_at = time.monotonic()

    def tick(self) -> None:
        """Resend an unanswered credit (the producer may have restarted or started late)."""
        if self._asked_at is not None and time.monotonic() - self._asked_at > CREDIT_RESEND_S:
            self._send_credit()

    def receive(self) -> list[Any] | bytes | None:
        """Drain what arrived: the newest data message (frames after the kind), END, or
        None when nothing (or only malformed input) was there."""
        latest: list[Any] | None = None
        while True:
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._asked_at = None  # whatever came, it answered our credit
            kind = parts[0].bytes
            if kind == DATA and len(parts) >= 2:
                if latest is not None:
                    self.dropped += 1
                latest = parts[1:]
            elif kind == SHM and (len(parts) < 3 or self._rings is None):
                self._on_malformed("a shared-memory message this edge cannot take (not a "
                                   "private edge of this run, or no descriptor)")
            elif kind == SHM:
                try:
                    # views (or copies) of the slot; the producer keeps it until our next
                    # credit, so a view stays valid while this message is processed
                    resolved = self._rings.read(parts[1].bytes, parts[2:],
                                                copy=not self._zero_copy)
                except RingError as exc:
                    self._on_malformed(f"shared-memory message: {exc}")
                    continue
                if resolved is None:  # its slot was rewritten: never decoded
                    self.torn += 1
                    self.dropped += 1
                    continue
                if latest is not None:
                    self.dropped += 1
                latest = resolved
            elif kind == END and len(parts) == 1:
                self._end_seen = True
            elif kind == DATA:
                self._on_malformed("a data message without frames")
            else:
                self._on_malformed(f"unknown edge message kind {kind[:8]!r}")
        if latest is not None:
            self.received += 1
            return latest
        if self._end_seen:
            return END
        return None

    def close(self) -> None:
        self._close_monitor()
        self.socket.close(linger=0)
        if self._rings is not None:
            self._rings.close()


def poll_once(poller: zmq.Poller, timeout_ms: int) -> dict[zmq.Socket, int]:
    """poller.poll that treats EINTR (a signal arrived) as "nothing happened"."""
    try:
        return dict(poller.poll(timeout_ms))
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EINTR:
            return {}
        raise


def wait_readable(sock: zmq.Socket, timeout_s: float) -> bool:
    """True if `sock` becomes readable within timeout_s."""
    return bool(sock.poll(int(timeout_s * 1000), zmq.POLLIN))


def now_ns() -> int:
    """The one clock for every stamp: CLOCK_MONOTONIC, shared by all processes on a host."""
    return time.monotonic_ns()
