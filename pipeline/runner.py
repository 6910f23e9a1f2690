"""The main loop of one stage process: `python -m pipeline.runner --plan PLAN.json`.

The supervisor writes the plan (stage name, whole config, edge endpoints, control
endpoint, parent pid) and starts one runner per stage. The runner opens the stage, says
"ready" on the control socket, waits for "go", then moves messages: receive (newest wins),
decode, `process`, stamp `(stage, t_in_ns, t_out_ns)`, encode, send. It stops on a "stop"
command, on SIGTERM, at end of stream, or when its parent dies; an exception is reported to
the supervisor with its traceback and the process exits 1.

Control messages are msgpack maps. Child -> supervisor: {"event": "hello"|"ready"|"beat"|
"error"|"eos"|"bye", "stage": name, ...} ("beat" every HEARTBEAT_INTERVAL_S from the main
loop, with `busy_s`: how long a source's produce() call has been running, and `last`: a
source's frame (frame id, t_capture_ns) a restart goes on after, and `stats`: the counters
of `StageRunner.stats()`, so those of a stage killed by -9 are known up to its last beat);
supervisor -> child:
{"cmd": "go"|"stop"} or {"cmd": "status", "kind", "text", "frame_id"} (published by a stage
with `publish_status`).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import dataclasses
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

import msgpack
import zmq

from pipeline.config import PipelineConfig
from pipeline.graph import REPLICA_SEP, stage_class
from pipeline.health import HEARTBEAT_INTERVAL_S, RejectCounter
from pipeline.quiet import quiet_third_party
from pipeline.reorder import Reorder
from pipeline.schema import SchemaError, Status, decode, encode, with_stamp
from pipeline.security import edge_socket_options, is_loopback_endpoint, start_authenticator
from pipeline.shm import FrameRing
from pipeline.stage import EndOfStream, Sink, Source, Stage
from pipeline.transport import (
    EdgeReceiver,
    EdgeSender,
    now_ns,
    open_socket,
    poll_once,
)

log = logging.getLogger(__name__)

POLL_MS = 100  # longest a loop waits before checking stop flags and parent
LOSSLESS_BACKLOG = 2  # with policy "lossless", hold input credits while this many wait
#: a stage whose input is not up after this long says where it is waiting (once)
CONNECT_NOTICE_S = 3.0
#: with policy "lossless", a stage merging workers waits this long for an earlier frame
#: (a worker's first frame can take seconds while its model warms up)
LOSSLESS_REORDER_WAIT_S = 30.0
#: a stage whose process() raised on every message, at least this many and for at least
#: this long, is broken: it exits 1 and the supervisor reports its traceback. Fewer
#: failures are counted as rejects (kind "process") and the stream goes on.
BROKEN_AFTER_FAILURES = 10
BROKEN_AFTER_S = 2.0


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one stage process needs to know (written by the supervisor as JSON)."""

    stage: str
    module: str  # where the Stage subclass lives
    config_key: str  # which PipelineConfig section its constructor gets
    config: PipelineConfig
    control: str  # supervisor's control endpoint
    inputs: tuple[str, ...]  # endpoints to connect (one per input edge)
    outputs: tuple[tuple[str, str], ...]  # (endpoint, policy) to bind, one per output edge
    parent_pid: int
    #: the run's shared-memory directory for large parts on private ipc edges (pipeline.shm);
    #: None: every message goes through the sockets
    shm_dir: str | None = None
    #: a restarted source: (frame id, t_capture_ns) of the last frame its predecessor made
    resume_after: tuple[int, int] | None = None
    #: stages co-located in this process ahead of `stage` (TopologyConfig.colocate), each
    #: (name, module, config_key): every message goes through their process() first
    pre: tuple[tuple[str, str, str], ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "stage": self.stage,
                "module": self.module,
                "config_key": self.config_key,
                "config": json.loads(self.config.to_json()),
                "control": self.control,
                "inputs": list(self.inputs),
                "outputs": [list(o) for o in self.outputs],
                "parent_pid": self.parent_pid,
                "shm_dir": self.shm_dir,
                "resume_after": None if self.resume_after is None else list(self.resume_after),
                "pre": [list(p) for p in self.pre],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        d = json.loads(text)
        return cls(
            stage=d["stage"],
            module=d["module"],
            config_key=d["config_key"],
            config=PipelineConfig.from_json(json.dumps(d["config"])),
            control=d["control"],
            inputs=tuple(d["inputs"]),
            outputs=tuple((e, p) for e, p in d["outputs"]),
            parent_pid=int(d["parent_pid"]),
            shm_dir=d.get("shm_dir"),
            resume_after=None if d.get("resume_after") is None
            else (int(d["resume_after"][0]), int(d["resume_after"][1])),
            pre=tuple((str(n), str(m), str(k)) for n, m, k in d.get("pre", ())),
        )

    def private_edge(self, endpoint: str) -> bool:
        """True for an edge inside this run's private ipc directory (both ends are stages
        of this run on this host), where large parts may go through shared memory."""
        if self.shm_dir is None or not (endpoint.startswith("ipc://")
                                        and self.control.startswith("ipc://")):
            return False
        run_dir = os.path.dirname(self.control[len("ipc://"):])
        return os.path.dirname(endpoint[len("ipc://"):]) == run_dir


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent exits (PR_SET_PDEATHSIG), and
    exit now if the parent is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("prctl not available; relying on the parent-alive check")
    if os.getppid() != parent_pid:
        os._exit(3)


class StageRunner:
    """Runs one stage of a plan in this process. `run()` returns the exit code."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.name = plan.stage
        self.stop_requested = False
        self.ctx = zmq.Context()
        self.control: zmq.Socket | None = None
        self.stage: Stage | None = None
        self.pre_stages: list[Stage] = []  # co-located ahead of self.stage (Plan.pre)
        self.senders: list[EdgeSender] = []
        self.receivers: list[EdgeReceiver] = []
        self.rejects = RejectCounter(f"stage {self.name}", log)
        self.consecutive_failures = 0
        self._failing_since = 0.0
        self._last_beat = 0.0
        self._produce_started = 0.0  # monotonic s when the running produce() began, else 0
        self._last_produced: tuple[int, int] | None = None  # a source: (frame id, t_capture_ns)
        self._last_offered: tuple[int, int] | None = None  # a source: its newest frame sent on
        self.processed = 0
        self._last_frame_id = 0
        self.reorder: Reorder | None = None  # with several input edges (workers): the merge
        self._zap = None  # the ZAP authenticator of CURVE edges this process binds
        # a lossless run whose source restarted re-sends the frames it could not know were
        # delivered: a stage with one input drops an id it has had (a replica of a fan-out
        # does not: its ids have gaps, and the merge after it drops repeats)
        self._lossless = plan.config.transport.policy == "lossless"
        self._drop_repeats = self._lossless and REPLICA_SEP not in plan.stage
        self._last_in_id = -1
        self.repeated = 0
        self.no_output = 0  # messages process() answered with None (nothing sent on)

    # ------------------------------------------------------------------ control
    def _tell(self, event: str, **fields: Any) -> None:
        if self.control is None:
            return
        try:
            self.control.send(
                msgpack.packb({"event": event, "stage": self.name, **fields}), zmq.NOBLOCK
            )
        except zmq.ZMQError:
            log.debug("could not tell the supervisor %s", event)

    def _on_control(self) -> None:
        while True:
            try:
                raw = self.control.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                command = msgpack.unpackb(raw)
                cmd = command.get("cmd")
            except Exception:
                log.warning("ignored a malformed control message")
                continue
            if cmd == "stop":
                self.stop_requested = True
            elif cmd == "go":
                self._go = True
            elif cmd == "status":
                self._publish_status(command.get("kind", "info"), command.get("text", ""),
                                     command.get("frame_id", 0))

    def _publish_status(self, kind: str, text: str, frame_id: int = 0) -> None:
        """Hand a Status to a stage that publishes (the output stage); others ignore it."""
        publish = getattr(self.stage, "publish_status", None)
        if publish is None:
            return
        try:
            publish(Status(kind=kind, text=text, t_ns=now_ns(), frame_id=frame_id))
        except (SchemaError, zmq.ZMQError) as exc:
            log.warning("could not publish a %s status: %s", kind, exc)

    def _should_stop(self) -> bool:
        """Checked by every loop at least every POLL_MS; also sends the heartbeat."""
        now = time.monotonic()
        if now - self._last_beat >= HEARTBEAT_INTERVAL_S:
            started = self._produce_started
            self._tell("beat", busy_s=now - started if started else 0.0,
                       last=self._resume_point(), stats=self.stats())
            self._last_beat = now
        if os.getppid() != self.plan.parent_pid:
            log.error("supervisor (pid %d) is gone: stopping", self.plan.parent_pid)
            self.stop_requested = True
        return self.stop_requested

    def _resume_point(self) -> tuple[int, int] | None:
        """A source's (frame id, t_capture_ns) a restart goes on after (heartbeat "last").

        Newest frame wins: the newest frame made (the restart skips the frames due while it
        was down). Lossless: the frame before the first one not known delivered (queued, or
        sent without the consumer's next credit yet), so a restart sends it again and
        nothing is lost; a consumer drops a repeat (`_drop_repeats`)."""
        if not self._lossless:
            return self._last_produced
        firsts = [f for s in self.senders if (f := s.first_undelivered()) is not None]
        if firsts and self._last_offered is not None:
            return (min(firsts) - 1, self._last_offered[1])
        return self._last_offered

    # ------------------------------------------------------------------ life
    def run(self) -> int:
        code = 0
        opened = False
        try:
            self.control = open_socket(
                self.ctx, zmq.DEALER, connect=self.plan.control, identity=self.name.encode()
            )
            self._tell("hello", pid=os.getpid())
            cls = stage_class(self.name, self.plan.module)
            self.stage = cls(getattr(self.plan.config, self.plan.config_key, None))
            opened = True  # close() runs even when open() fails half way
            if self.plan.resume_after is not None and isinstance(self.stage, Source):
                self.stage.resume(*self.plan.resume_after, lossless=self._lossless)
            for name, module, config_key in self.plan.pre:
                pre = stage_class(name, module)(getattr(self.plan.config, config_key, None))
                self.pre_stages.append(pre)
                pre.open()
            self.stage.open()
            # from here on SIGTERM means "finish the current message, close, exit"; during
            # imports and open() (models loading) it keeps its default: exit at once
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop_requested", True))
            for endpoint, policy in self.plan.outputs:
                ring = None
                if self.plan.private_edge(endpoint):
                    ring = FrameRing(self.plan.shm_dir, prefix=self.name.replace("#", "_"))
                self.senders.append(EdgeSender(self.ctx, endpoint, policy, ring=ring,
                                               options=self._edge_options(endpoint, True)))
            for endpoint in self.plan.inputs:
                self.receivers.append(EdgeReceiver(
                    self.ctx, endpoint,
                    on_malformed=lambda why: self.rejects.reject("transport", why),
                    ring_dir=self.plan.shm_dir if self.plan.private_edge(endpoint) else None,
                    options=self._edge_options(endpoint, False),
                ))
            if not self._connect_inputs():
                return 0
            self._tell("ready")
            if self._wait_for_go():
                if isinstance(self.stage, Source):
                    self._loop_source()
                else:
                    self._loop_process()
        except Exception as exc:
            code = 1
            log.exception("stage %s failed", self.name)
            self._tell("error", text=f"{type(exc).__name__}: {exc}",
                       traceback=traceback.format_exc())
        finally:
            if opened:
                for stage in [*self.pre_stages, self.stage]:
                    try:
                        stage.close()
                    except Exception:
                        log.exception("stage %s: close() failed", stage.name)
            self._tell("bye", code=code, stats=self.stats())
            for edge in [*self.senders, *self.receivers]:
                edge.close()
            if self.control is not None:
                self.control.close(linger=200)  # let "bye" out
            if self._zap is not None:
                self._zap.stop()
            self.ctx.term()
        return code

    def _edge_options(self, endpoint: str, binds: bool) -> dict[int, int | bytes] | None:
        """CurveZMQ options for an edge to another host (pipeline.security; build_graph has
        checked the keys); None for ipc and loopback edges and with insecure_edges."""
        topo = self.plan.config.topology
        if is_loopback_endpoint(endpoint) or topo.insecure_edges:
            return None
        if binds and self._zap is None:
            self._zap = start_authenticator(self.ctx, topo.edge_curve_authorized)
        return edge_socket_options(binds, topo.edge_curve_secret, topo.edge_curve_server)

    def stats(self) -> dict[str, Any]:
        """Counters for the supervisor's summary (and for benchmarks)."""
        return {
            "processed": self.processed,
            "received": sum(r.received for r in self.receivers),
            "dropped_in": sum(r.dropped for r in self.receivers),
            "torn_in": sum(r.torn for r in self.receivers),
            "sent_shm": sum(s.sent_shm for s in self.senders),
            "sent": sum(s.sent for s in self.senders),
            "dropped_out": sum(s.dropped for s in self.senders),
            "rejected": self.rejects.as_dict(),
            **({} if self.reorder is None else {"dropped_late": self.reorder.dropped_late}),
            **({"repeated_in": self.repeated} if self._drop_repeats else {}),
            **({"no_output": self.no_output} if self.no_output else {}),
            **({"source": self.stage.counters()} if isinstance(self.stage, Source) else {}),
        }

    def _startup_poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        for sock in [self.control, *(s.socket for s in self.senders)]:
            poller.register(sock, zmq.POLLIN)
        return poller

    def _startup_events(self, poller: zmq.Poller, timeout_ms: int) -> None:
        """While starting: obey control, keep early credits from downstream."""
        ready = poll_once(poller, timeout_ms)
        if self.control in ready:
            self._on_control()
        for s in self.senders:
            if s.socket in ready:
                s.on_readable()  # early credits are kept for the first message

    def _connect_inputs(self) -> bool:
        """Wait until every input connection is up; False if told to stop first."""
        poller = self._startup_poller()
        told_at = time.monotonic() + CONNECT_NOTICE_S
        while not all(r.wait_connected(0.02) for r in self.receivers):
            self._startup_events(poller, 0)
            if self._should_stop():
                return False
            if time.monotonic() > told_at:  # e.g. the producer runs on another host
                for r in self.receivers:
                    if not r.connected:
                        log.info("stage %s: waiting for its input at %s (is the stage that "
                                 "feeds it running?)", self.name, r.endpoint)
                told_at = float("inf")
        return True

    def _wait_for_go(self) -> bool:
        self._go = False
        poller = self._startup_poller()
        while not self._go:
            self._startup_events(poller, POLL_MS)
            if self._should_stop():
                return False
        return True

    def _end_of_stream(self, poller: zmq.Poller, is_sink: bool) -> None:
        """The input ended: a sink tells subscribers and the supervisor, any other stage
        passes the end downstream."""
        if is_sink:
            self._publish_status("info", "end of stream", self._last_frame_id)
            self._tell("eos")
        else:
            self._flush_end(poller)

    def _flush_end(self, poller: zmq.Poller) -> None:
        """Deliver end-of-stream downstream, then return (or on stop)."""
        for s in self.senders:
            s.end()
        while not all(s.finished for s in self.senders) and not self._should_stop():
            ready = poll_once(poller, POLL_MS)
            if self.control in ready:
                self._on_control()
            for s in self.senders:
                if s.socket in ready:
                    s.on_readable()

    # ------------------------------------------------------------------ processing stage
    def _loop_process(self) -> None:
        if len(self.receivers) > 1:
            self._loop_merge()
            return
        if len(self.receivers) != 1:
            raise RuntimeError(f"stage {self.name}: expected one input edge, got "
                               f"{len(self.receivers)}")
        rx = self.receivers[0]
        is_sink = isinstance(self.stage, Sink)
        lossless = any(s.policy == "lossless" for s in self.senders)
        poller = zmq.Poller()
        for sock in [self.control, rx.socket, *(s.socket for s in self.senders)]:
            poller.register(sock, zmq.POLLIN)
        while not self._should_stop():
            if not rx.waiting and not (
                lossless and any(s.backlog >= LOSSLESS_BACKLOG for s in self.senders)
            ):
                rx.request()
            ready = poll_once(poller, POLL_MS)
            if self.control in ready:
                self._on_control()
            for s in self.senders:
                if s.socket in ready:
                    s.on_readable()
            if rx.socket in ready:
                got = rx.receive()
                t_in_ns = now_ns()
                if got is EdgeReceiver.END:
                    log.info("stage %s: end of stream", self.name)
                    self._end_of_stream(poller, is_sink)
                    return
                if got is not None:
                    self._handle(got, t_in_ns, is_sink)
            rx.tick()

    def _loop_merge(self) -> None:
        """Several input edges carrying one stream split over workers (detect#0, detect#1,
        ...): each is read with its own credit, and their messages are passed on in frame
        order (pipeline.reorder.Reorder): a frame waits at most topology.reorder_wait_s for
        an earlier one; one that comes after a later frame has gone is dropped and counted
        (stats "dropped_late"). t_in_ns is the moment a message arrived, as in the one-input
        loop (so its decode counts as this stage's compute), or, when it waited in the
        reorder buffer, the moment it left: the wait shows in the hop, not in compute."""
        is_sink = isinstance(self.stage, Sink)
        lossless = any(s.policy == "lossless" for s in self.senders)
        wait_s = self.plan.config.topology.reorder_wait_s
        if lossless:  # --every-frame: wait for a slow worker rather than drop its frame
            wait_s = max(wait_s, LOSSLESS_REORDER_WAIT_S)
        self.reorder = Reorder(len(self.receivers), wait_s)
        ended: set[int] = set()
        poller = zmq.Poller()
        for sock in [self.control, *(r.socket for r in self.receivers),
                     *(s.socket for s in self.senders)]:
            poller.register(sock, zmq.POLLIN)
        while not self._should_stop():
            held = lossless and any(s.backlog >= LOSSLESS_BACKLOG for s in self.senders)
            for i, rx in enumerate(self.receivers):
                if i not in ended and not rx.waiting and not held:
                    rx.request()
            wait_s = self.reorder.timeout_s(time.monotonic())
            timeout_ms = POLL_MS if wait_s is None else min(POLL_MS, int(wait_s * 1000) + 1)
            ready = poll_once(poller, timeout_ms)
            t_turn_ns = now_ns()
            if self.control in ready:
                self._on_control()
            for s in self.senders:
                if s.socket in ready:
                    s.on_readable()
            for i, rx in enumerate(self.receivers):
                if rx.socket not in ready or i in ended:
                    continue
                got = rx.receive()
                t_recv_ns = now_ns()
                if got is EdgeReceiver.END:
                    ended.add(i)
                    self.reorder.end(i)
                elif got is not None:
                    try:
                        msg = decode(got)
                    except SchemaError as exc:
                        self.rejects.reject("schema", str(exc))
                        continue
                    self.reorder.push(i, msg.frame_id, (msg, t_recv_ns), time.monotonic())
            t_free_ns = 0  # when this stage finished the previous message of this turn
            for msg, t_recv_ns in self.reorder.pop_ready(time.monotonic()):
                # arrived in this turn of the loop: it waited for nothing but this stage
                # (from then on it is this stage's time); else it waited in the reorder
                # buffer for an earlier frame, and that wait is transport
                waited = t_recv_ns < t_turn_ns
                t_in_ns = now_ns() if waited else max(t_recv_ns, t_free_ns)
                self._handle_message(msg, t_in_ns, is_sink)
                t_free_ns = now_ns()
            if self.reorder.done:
                log.info("stage %s: end of stream (%d frames dropped late by the reorder)",
                         self.name, self.reorder.dropped_late)
                self._end_of_stream(poller, is_sink)
                return
            for rx in self.receivers:
                rx.tick()

    def _handle(self, frames: list[Any], t_in_ns: int, is_sink: bool) -> None:
        try:
            msg = decode(frames)
        except SchemaError as exc:
            self.rejects.reject("schema", str(exc))
            return
        if self._drop_repeats:
            if msg.frame_id <= self._last_in_id:
                self.repeated += 1  # sent again by a restarted source; had it already
                return
            self._last_in_id = msg.frame_id
        self._handle_message(msg, t_in_ns, is_sink)

    def _handle_message(self, msg: Any, t_in_ns: int, is_sink: bool) -> None:
        first = self.pre_stages[0] if self.pre_stages else self.stage
        if not isinstance(msg, first.inputs):
            self.rejects.reject("type", f"{type(msg).__name__} is not one of "
                                        f"{[c.__name__ for c in first.inputs]}")
            return
        try:
            for pre in self.pre_stages:  # co-located stages: stamped as if on their own
                out = pre.process(msg)
                if out is None:
                    self.no_output += 1  # nothing to send for this frame: counted
                    return
                msg = dataclasses.replace(out, frame_id=msg.frame_id,
                                          t_capture_ns=msg.t_capture_ns,
                                          stamps=msg.stamps + ((pre.name, t_in_ns, now_ns()),))
                t_in_ns = now_ns()
            if is_sink:
                self.stage.consume(with_stamp(msg, self.name, t_in_ns, now_ns()))
                frames_out = None
            else:
                out = self.stage.process(msg)
                frames_out = None if out is None else encode(dataclasses.replace(
                    out,
                    frame_id=msg.frame_id,
                    t_capture_ns=msg.t_capture_ns,
                    stamps=msg.stamps + ((self.name, t_in_ns, now_ns()),),
                ))
        except Exception as exc:
            # one message that a stage cannot handle must not end the stream; a stage that
            # fails on every message is broken: it exits and the supervisor reports why
            self.consecutive_failures += 1
            if self.consecutive_failures == 1:
                self._failing_since = time.monotonic()
            if (self.consecutive_failures >= BROKEN_AFTER_FAILURES
                    and time.monotonic() - self._failing_since >= BROKEN_AFTER_S):
                log.error("stage %s: process() failed on each of the last %d messages (%.1f s):"
                          " giving up", self.name, self.consecutive_failures,
                          time.monotonic() - self._failing_since)
                raise
            if self.rejects.counts["process"] == 0:
                log.exception("stage %s: process() failed on frame %d", self.name,
                              msg.frame_id)
            self.rejects.reject("process", f"{type(exc).__name__}: {exc}")
            return
        self.consecutive_failures = 0
        self.processed += 1
        if not is_sink and frames_out is None:
            self.no_output += 1
        self._last_frame_id = msg.frame_id
        if frames_out is not None:
            for s in self.senders:
                s.offer(frames_out)

    # ------------------------------------------------------------------ source
    def _loop_source(self) -> None:
        """produce() runs in a thread so credits are answered at once even while the
        source blocks on a camera or on pacing; this thread only moves messages."""
        lossless = any(s.policy == "lossless" for s in self.senders)
        handoff: collections.deque[Any] = collections.deque()
        wake_r, wake_w = os.pipe()
        room = threading.Event()
        room.set()
        done = threading.Event()
        failure: list[str] = []
        stop = threading.Event()

        def produce_loop() -> None:
            try:
                while not stop.is_set():
                    if lossless and not room.wait(POLL_MS / 1000):
                        continue
                    self._produce_started = time.monotonic()
                    try:
                        msg = self.stage.produce()
                    finally:
                        # also at the end of the stream: a source that has ended is not
                        # busy (else, while the end waits for a slow consumer, the
                        # heartbeat's busy_s grows until it is killed as stuck)
                        self._produce_started = 0.0
                    if msg is None:
                        continue
                    msg = with_stamp(msg, self.name, msg.t_capture_ns, now_ns())
                    made = (msg.frame_id, msg.t_capture_ns)
                    handoff.append((encode(msg), made))
                    self._last_produced = made
                    if lossless:
                        room.clear()
                    os.write(wake_w, b"m")
            except EndOfStream:
                log.info("stage %s: end of stream", self.name)
            except Exception:
                failure.append(traceback.format_exc())
            finally:
                done.set()
                try:
                    os.write(wake_w, b"e")
                except OSError:
                    pass  # the main loop has already gone

        worker = threading.Thread(target=produce_loop, name=f"{self.name}-produce", daemon=True)
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        for s in self.senders:
            poller.register(s.socket, zmq.POLLIN)
        worker.start()
        try:
            while not self._should_stop():
                ready = poll_once(poller, POLL_MS)
                if self.control in ready:
                    self._on_control()
                if wake_r in ready:
                    os.read(wake_r, 4096)
                while handoff:
                    frames, made = handoff.popleft()
                    self.processed += 1
                    for s in self.senders:
                        s.offer(frames, made[0])
                    self._last_offered = made
                for s in self.senders:
                    if s.socket in ready:
                        s.on_readable()
                if lossless and all(s.backlog < LOSSLESS_BACKLOG for s in self.senders):
                    room.set()
                if done.is_set() and not handoff:
                    if failure:
                        raise RuntimeError(f"stage {self.name}: produce() failed:\n{failure[0]}")
                    self._flush_end(poller)
                    return
        finally:
            stop.set()
            room.set()
            worker.join(timeout=1.0)
            os.close(wake_r)
            os.close(wake_w)


def standby(modules: list[str]) -> str:
    """A warm spare: import `modules` (the stage modules and the heavy libraries they load
    in open()) now, then wait for the supervisor to write a plan path on stdin. A restart
    through a spare skips the imports (about a second of a restart's two). Exits 0 at EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # an optional library (e.g. mediapipe on a lift-only host): imported later
    try:
        sys.stdout.write("ready\n")  # the supervisor reads this line only
        sys.stdout.flush()
    except OSError:
        pass  # taken before it was ready: the supervisor no longer listens
    os.dup2(2, 1)  # from here on stdout goes where stderr goes, never into that pipe
    line = sys.stdin.readline().strip()
    if not line:
        os._exit(0)
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run one posestream stage (started by the supervisor, not by hand)."
    )
    parser.add_argument("--plan", help="JSON plan file written by the supervisor")
    parser.add_argument("--standby", metavar="MODULES",
                        help="warm spare: import these modules (comma-separated) now, then "
                             "read a plan path from stdin and run it (fast restarts)")
    args = parser.parse_args(argv)
    if (args.plan is None) == (args.standby is None):
        parser.error("give --plan FILE or --standby MODULES")
    quiet_third_party()  # before any stage module imports mediapipe
    plan_path = args.plan if args.plan is not None else standby(args.standby.split(","))
    with open(plan_path, encoding="utf-8") as f:
        plan = Plan.from_json(f.read())
    die_with_parent(plan.parent_pid)
    logging.basicConfig(
        level=getattr(logging, plan.config.supervisor.log_level.upper(), logging.INFO),
        format=f"%(asctime)s {plan.stage}[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    runner = StageRunner(plan)
    # Ctrl-C goes to the whole process group: the supervisor alone decides, and tells us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = runner.run()
    # everything this process opened is closed by now; skip the interpreter's teardown,
    # where native libraries (mediapipe, ONNX Runtime threads) can take a second or hang
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
