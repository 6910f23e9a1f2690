"""Start every stage of the graph as its own OS process, watch them, stop them cleanly.

    sup = Supervisor(config)          # PipelineConfig; the graph comes from build_graph
    code = sup.run()                  # blocks; 0 at end of stream, 1 if a stage failed,
                                      # 3 if a file processed whole lost inputs,
                                      # 130 / 143 after SIGINT / SIGTERM

or, to drive a run from a test or a benchmark: `sup.start()` (returns once every stage has
opened and been told to go), `sup.pids()`, `sup.watch(timeout_s)`, `sup.stop()`. Call
`start()` from a thread that outlives the run: Linux's PDEATHSIG fires when the thread that
started a child exits, and takes the stages with it.

Start-up is a handshake, not a sleep: each child says "ready" after `open()`; only when all
are ready does the supervisor send "go", so the source's first frame finds every stage
listening. Stop: a "stop" command, then SIGTERM, then SIGKILL, all within
`config.supervisor.stop_timeout_s`; children also die with the supervisor (PDEATHSIG and a
parent check). Sources are checked before anything starts (`Stage.preflight`), so a
missing camera fails in about a second; then the lift's `--calib` file (read, and fitted to
the frame size the source's check read), then sinks (exit 2 for any of them).
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zmq

from pipeline.accounting import InputReport, account
from pipeline.config import PipelineConfig
from pipeline.graph import Graph, build_graph, stage_class, stage_kind
from pipeline.health import HEARTBEAT_INTERVAL_S, Liveness, RestartBudget
from pipeline.runner import Plan
from pipeline.transport import open_socket

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
#: libraries the stages import in open(), imported ahead by the warm spare
SPARE_PRELOAD: tuple[str, ...] = ("cv2", "numba", "onnxruntime", "mediapipe")
EXIT_OK, EXIT_FAILED, EXIT_PREFLIGHT = 0, 1, 2
#: the stream ended, but a run asked to process a file whole lost inputs (pipeline.accounting)
EXIT_INPUTS_LOST = 3
EXIT_SIGHUP, EXIT_SIGINT, EXIT_SIGTERM = 129, 130, 143


def _child_setup() -> None:
    """Runs in the child between fork and exec: die with the parent (PDEATHSIG survives
    exec), so no stage outlives a supervisor killed with -9."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _short_temp_root() -> str:
    """$TMPDIR unless its path is too long for unix socket names (~100 bytes), else /tmp."""
    root = tempfile.gettempdir()
    return root if len(root) <= 60 else "/tmp"


#: a run's shared-memory directory in /dev/shm: <prefix><supervisor pid>-<random>
SHM_DIR_PREFIX = "posestream-run-"


def _remove_orphaned_shm_dirs(root: str) -> None:
    """Remove the shared-memory directories of runs whose supervisor is gone (killed by -9:
    its stages died with it, nobody removed their rings). RAM is not given back otherwise."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if not name.startswith(SHM_DIR_PREFIX):
            continue
        pid = name[len(SHM_DIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            log.info("removing %s/%s, left by a run whose supervisor (pid %s) is gone",
                     root, name, pid)
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


class PipelineError(RuntimeError):
    """The pipeline could not start or a stage failed; the message says which and why."""


class PreflightError(PipelineError):
    """A check before start failed (no camera, unreadable file, publish port in use)."""


@dataclass
class StageProcess:
    """One running stage as the supervisor sees it."""

    name: str
    popen: subprocess.Popen
    plan: Plan
    budget: RestartBudget
    ready: bool = False
    restart_at: float | None = None  # monotonic s when a scheduled restart is due
    restarts: int = 0
    error: str | None = None  # "Type: message" from the child
    traceback: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)  # this process's, from its beats/bye
    past_stats: list[dict[str, Any]] = field(default_factory=list)  # earlier processes' (restarts)
    last_beat: float = 0.0  # time.monotonic() of its last heartbeat (0: none yet)
    busy_s: float = 0.0  # from that heartbeat: how long its current call had been running
    last_produced: tuple[int, int] | None = None  # a source: (frame id, t_capture_ns) of
    #                                               its newest frame, from its heartbeats
    started_at: float = field(default_factory=time.monotonic)  # this process's start

    @property
    def pid(self) -> int:
        return self.popen.pid


class Supervisor:
    """Runs one pipeline described by a PipelineConfig (see module docstring)."""

    def __init__(self, config: PipelineConfig, graph: Graph | None = None) -> None:
        self.config = config
        self.graph = graph or build_graph(config)
        self.procs: dict[str, StageProcess] = {}
        self.failure: str | None = None  # why the run failed, for people
        self.eos = False  # the sink saw the end of the stream
        self.report: InputReport | None = None  # what became of the inputs (end of stream)
        self.running = False  # every stage has been told to go
        sup = config.supervisor
        self.liveness = (
            Liveness(sup.heartbeat_timeout_s)
            if sup.heartbeat_timeout_s > HEARTBEAT_INTERVAL_S else None
        )
        self._stop_code: int | None = None
        self._run_dir: str | None = None
        self._shm_dir: str | None = None
        self._ctx: zmq.Context | None = None
        self._control: zmq.Socket | None = None
        self._spare: subprocess.Popen | None = None  # warm standby for the next restart
        self._spare_ready = False

    # ------------------------------------------------------------------ public
    def run(self, on_started: Callable[[dict[str, int]], None] | None = None) -> int:
        """Start, watch until the stream ends, a stage fails or a signal arrives; stop.

        on_started(pids) is called once every stage is running (e.g. to start a benchmark
        clock or record the process ids). Returns the exit code (see module docstring).
        """
        restore = self._install_signal_handlers()
        try:
            try:
                self.start()
            except PreflightError as exc:
                log.error("%s", exc)
                return EXIT_PREFLIGHT
            except PipelineError as exc:
                self.failure = self.failure or str(exc)
                log.error("%s", exc)
                return self._stop_code or EXIT_FAILED
            if on_started is not None:
                on_started(self.pids())
            return self.watch()
        finally:
            self.stop()
            restore()

    def start(self) -> None:
        """Check sources, spawn every stage, wait until all are ready, then say go.

        Raises PipelineError (after stopping what was started) if a source cannot be
        opened, a stage fails to open, or start-up takes longer than startup_timeout_s.
        """
        self._preflight()
        self._run_dir = self.config.transport.run_dir or tempfile.mkdtemp(
            prefix="posestream-", dir=_short_temp_root()
        )
        os.makedirs(self._run_dir, exist_ok=True)
        self._shm_dir = self._make_shm_dir()
        endpoints = self.graph.endpoints(
            self.config.transport.kind, self._run_dir, self.config.transport.tcp_base_port
        )
        self._ctx = zmq.Context()
        self._control = open_socket(self._ctx, zmq.ROUTER, bind=endpoints["control"],
                                    rcvhwm=1000)
        self._control.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self._control.setsockopt(zmq.ROUTER_HANDOVER, 1)
        for spec in self.graph.stages:
            plan = Plan(
                stage=spec.name,
                module=spec.module_name,
                config_key=spec.config_section,
                config=self.config,
                control=endpoints["control"],
                inputs=tuple(endpoints[e.name] for e in self.graph.inputs_of(spec.name)),
                outputs=tuple(
                    (endpoints[e.name], e.policy) for e in self.graph.outputs_of(spec.name)
                ),
                parent_pid=os.getpid(),
                shm_dir=self._shm_dir,
                pre=tuple((p.name, p.module_name, p.config_section) for p in spec.pre),
            )
            self._spawn(plan)
        deadline = time.monotonic() + self.config.supervisor.startup_timeout_s
        while not all(p.ready for p in self.procs.values()):
            if self._stop_code is not None:
                raise PipelineError("stopped by a signal during start-up")
            self._pump_control(0.1)
            self._check_children(starting=True)
            if time.monotonic() > deadline:
                late = [p.name for p in self.procs.values() if not p.ready]
                raise PipelineError(
                    f"stages {late} did not open within {self.config.supervisor.startup_timeout_s}"
                    " s: see their log lines above; raise SupervisorConfig.startup_timeout_s "
                    "on a slow machine"
                )
        log.info("all %d stages ready: %s", len(self.procs), self.pids())
        for name in self.procs:
            self._go(name)
        self.running = True
        self._spawn_spare()

    def _go(self, name: str) -> None:
        self._send(name, "go")
        if self.liveness is not None:
            self.liveness.start(name, time.monotonic())

    def pids(self) -> dict[str, int]:
        """Stage name -> OS process id."""
        return {name: p.pid for name, p in self.procs.items()}

    def watch(self, timeout_s: float | None = None) -> int:
        """Watch the stages until all have ended, one failed or a signal arrived.

        Returns the exit code (0 end of stream, 1 failure, 3 inputs lost, 130/143 signal),
        or -1 when timeout_s passed with the pipeline still running.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self._stop_code is not None:
                log.info("stopping on request")
                return self._stop_code
            self._pump_control(0.1)
            try:
                self._kill_stuck()
                self._restart_due()
                if self._check_children(starting=False):
                    self._log_summary()
                    log.info("stream ended; all stages exited cleanly")
                    return self._report_inputs()
            except PipelineError as exc:
                log.error("%s", exc)
                # the output stage handles this before the stop command that follows
                self.publish_status("error", str(exc).splitlines()[0])
                return EXIT_FAILED
            if deadline is not None and time.monotonic() > deadline:
                return -1

    def request_stop(self, code: int = EXIT_SIGINT) -> None:
        """Ask a running `watch()`/`start()` to return (safe from a signal handler)."""
        self._stop_code = code

    def stop(self) -> None:
        """Stop every stage (stop command, then SIGTERM, then SIGKILL) and clean up.

        Returns within config.supervisor.stop_timeout_s; idempotent.
        """
        timeout = self.config.supervisor.stop_timeout_s
        t0 = time.monotonic()
        self._drop_spare()
        alive = [p for p in self.procs.values() if p.popen.poll() is None]
        for p in alive:
            if p.ready:
                self._send(p.name, "stop")
            else:  # still importing or opening: nothing to finish, SIGTERM ends it at once
                p.popen.send_signal(signal.SIGTERM)
        for phase_end, action in ((0.55, signal.SIGTERM), (0.8, signal.SIGKILL), (1.0, None)):
            while alive and time.monotonic() - t0 < phase_end * timeout:
                self._pump_control(0.02)
                alive = [p for p in alive if p.popen.poll() is None]
            for p in alive:
                if action is not None:
                    log.warning("stage %s (pid %d) did not stop in time: %s", p.name, p.pid,
                                signal.Signals(action).name)
                    try:
                        p.popen.send_signal(action)
                    except ProcessLookupError:
                        pass
        for p in alive:
            p.popen.wait(timeout=1.0)  # after SIGKILL this returns at once
        if alive:
            self._pump_control(0.0)
        if self._control is not None:
            self._control.close(linger=0)
            self._control = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        if self._shm_dir is not None:
            shutil.rmtree(self._shm_dir, ignore_errors=True)
            self._shm_dir = None
        if self._run_dir is not None and self.config.transport.run_dir is None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    # ------------------------------------------------------------------ internals
    def _make_shm_dir(self) -> str | None:
        """The run's private directory for shared-memory rings (pipeline.shm): in /dev/shm
        (RAM) where there is one, else inside the run directory; None when the edges are
        tcp or TransportConfig.shared_memory is off. Removed by stop()."""
        t = self.config.transport
        if t.kind != "ipc" or not t.shared_memory:
            return None
        if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
            _remove_orphaned_shm_dirs("/dev/shm")
            return tempfile.mkdtemp(prefix=f"{SHM_DIR_PREFIX}{os.getpid()}-", dir="/dev/shm")
        path = os.path.join(self._run_dir, "shm")
        os.makedirs(path, exist_ok=True)
        return path

    def _preflight(self) -> None:
        # sources first (a missing camera must fail in about a second), then the lift's
        # calibration file, then sinks; the stages in between are not imported here (they
        # load mediapipe, numba and models: too slow for a check)
        sources = [s for s in self.graph.stages if not self.graph.inputs_of(s.name)]
        sinks = [s for s in self.graph.stages
                 if self.graph.inputs_of(s.name) and not self.graph.outputs_of(s.name)]
        frame_size = None
        for spec in sources:
            found = self._check(spec)
            if found is not None:
                frame_size = tuple(found)
        lift = next((s for s in self.graph.stages if stage_kind(s.name) == "lift"), None)
        calib = getattr(getattr(self.config, lift.config_section, None), "calib_path", None) \
            if lift is not None else None
        if calib is not None:
            from engines.runtime.intrinsics import check_calibration_file

            try:  # frame_size: what the source's preflight read (None without a source here)
                check_calibration_file(calib, frame_size)
            except Exception as exc:
                self.failure = f"--calib {calib}: {exc}" if str(calib) not in str(exc) \
                    else str(exc)
                raise PreflightError(self.failure) from exc
        for spec in sinks:
            self._check(spec)

    def _check(self, spec) -> Any:
        """A source's or sink's static preflight(config) (None without one): a source's
        returns its frame size (width, height) when it read a frame."""
        check = getattr(stage_class(spec.name, spec.module_name), "preflight", None)
        if check is None:
            return None
        try:
            return check(getattr(self.config, spec.config_section, None))
        except Exception as exc:
            self.failure = str(exc)
            raise PreflightError(str(exc)) from exc

    def _popen_runner(self, args: list[str], **kwargs: Any) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.runner", *args],
            env=env,
            cwd=str(REPO_ROOT),
            # own process group: a terminal's Ctrl-C reaches the supervisor alone, which
            # then stops the stages in order
            process_group=0,
            preexec_fn=_child_setup,
            **kwargs,
        )

    def _spawn_spare(self) -> None:
        """Start a warm spare (config.supervisor.warm_spare): a runner that has imported
        every stage module and the heavy libraries, waiting for a plan on stdin."""
        if not self.config.supervisor.warm_spare or self._spare is not None:
            return
        modules = [s.module_name for s in self.graph.stages]
        modules += [p.module_name for s in self.graph.stages for p in s.pre]
        modules += list(SPARE_PRELOAD)
        self._spare = self._popen_runner(["--standby", ",".join(modules)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._spare_ready = False
        log.debug("warm spare started as pid %d", self._spare.pid)

    def spare_ready(self) -> bool:
        """True when a warm spare has finished its imports (the next restart is fast)."""
        spare = self._spare
        if spare is None:
            return False
        if spare.poll() is not None:  # it died: make room for a new one
            log.warning("the warm spare (pid %d) exited with %s", spare.pid, spare.returncode)
            self._drop_spare()
            return False
        if not self._spare_ready and select.select([spare.stdout], [], [], 0)[0]:
            self._spare_ready = spare.stdout.readline() == b"ready\n"
            spare.stdout.close()
        return self._spare_ready

    def _drop_spare(self) -> None:
        if self._spare is not None:
            self._spare.kill()
            self._spare.wait(timeout=5)
            for pipe in (self._spare.stdin, self._spare.stdout):
                if pipe is not None:
                    pipe.close()
            self._spare = None

    def _take_spare(self, plan_path: str) -> subprocess.Popen | None:
        """Hand `plan_path` to the warm spare; the spare's Popen, or None if there is none."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        if spare.stdout is not None:
            spare.stdout.close()
        if spare.poll() is not None:
            return None
        try:
            spare.stdin.write(f"{plan_path}\n".encode())
            spare.stdin.close()
        except OSError:
            spare.kill()
            spare.wait(timeout=5)
            return None
        return spare

    def _spawn(self, plan: Plan) -> None:
        path = os.path.join(self._run_dir, f"{plan.stage}.plan.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(plan.to_json())
        old = self.procs.get(plan.stage)
        # a spare still importing is not taken: it would first finish importing everything
        # (mediapipe's seconds included) where a cold start of a light stage imports less;
        # it stays the spare for the next restart
        popen = self._take_spare(path) if old is not None and self.spare_ready() else None
        if popen is None:
            if old is not None and self._spare is not None:
                log.info("stage %s restarts cold: the warm spare is still importing", plan.stage)
            popen = self._popen_runner(["--plan", path])
        else:
            log.info("stage %s restarts in the warm spare (pid %d)", plan.stage, popen.pid)
        if old is None:
            sup = self.config.supervisor
            budget = RestartBudget(max_restarts=sup.max_restarts, window_s=sup.restart_window_s)
            self.procs[plan.stage] = StageProcess(plan.stage, popen, plan, budget)
        else:  # a restart: same plan, same budget
            old.past_stats.append(old.stats)  # the dead process's, as of its last beat
            old.stats = {}
            old.popen, old.ready, old.restart_at = popen, False, None
            old.started_at = time.monotonic()
            old.error = old.traceback = None
            old.restarts += 1
        log.debug("started stage %s as pid %d", plan.stage, popen.pid)

    def publish_status(self, kind: str, text: str, frame_id: int = 0) -> None:
        """Send subscribers a Status (kind: gap | restart | error | info) through every
        stage that publishes (the output stage), on the status topic."""
        for name in self.procs:
            self._send(name, "status", kind=kind, text=text, frame_id=frame_id)

    def _send(self, name: str, cmd: str, **fields: Any) -> None:
        if self._control is None:
            return
        try:
            self._control.send_multipart(
                [name.encode(), msgpack.packb({"cmd": cmd, **fields})], zmq.NOBLOCK
            )
        except zmq.ZMQError:
            log.debug("could not send %s to %s", cmd, name)

    def _pump_control(self, timeout_s: float) -> None:
        if self._control is None:
            time.sleep(timeout_s)
            return
        try:
            if not self._control.poll(int(timeout_s * 1000), zmq.POLLIN):
                return
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EINTR:
                return
            raise
        while True:
            try:
                parts = self._control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                event = msgpack.unpackb(parts[-1])
                proc = self.procs[event["stage"]]
                kind = event["event"]
            except Exception:
                log.warning("ignored a malformed control message")
                continue
            if kind == "ready":
                proc.ready = True
                log.debug("stage %s ready", proc.name)
                if self.running:  # a restarted stage joins the running pipeline
                    log.info("stage %s (pid %d) is back", proc.name, proc.pid)
                    self._go(proc.name)
                    self._spawn_spare()  # for the next restart, now the CPU is free again
            elif kind == "error":
                proc.error = event.get("text")
                proc.traceback = event.get("traceback")
            elif kind == "beat":
                proc.last_beat = time.monotonic()
                proc.busy_s = float(event.get("busy_s", 0.0))
                last = event.get("last")
                if (isinstance(last, (list, tuple)) and len(last) == 2
                        and all(isinstance(v, int) for v in last)):
                    proc.last_produced = (last[0], last[1])
                if isinstance(event.get("stats"), dict):
                    proc.stats = event["stats"]
                if self.liveness is not None and proc.ready:
                    self.liveness.beat(proc.name, proc.last_beat, proc.busy_s)
            elif kind == "eos":
                self.eos = True
            elif kind == "bye":
                proc.stats = event.get("stats", {})

    def _kill_stuck(self) -> None:
        """SIGKILL stages whose heartbeats stopped (or one call ran too long); the death
        is then handled like any other (restart or report)."""
        if self.liveness is None:
            return
        for name, why in self.liveness.stuck(time.monotonic()):
            p = self.procs[name]
            self.liveness.forget(name)
            if p.popen.poll() is None:
                log.error("stage %s (pid %d) is stuck (%s): killing it", name, p.pid, why)
                p.error = f"stuck: {why}"
                p.popen.kill()
                p.popen.wait(timeout=5)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for p in self.procs.values():
            if p.restart_at is not None and now >= p.restart_at:
                log.info("restarting stage %s", p.name)
                plan = p.plan
                if p.last_produced is not None:  # a source goes on where the last one was
                    plan = dataclasses.replace(plan, resume_after=p.last_produced)
                self._spawn(plan)

    def _check_children(self, starting: bool) -> bool:
        """Raise PipelineError if a stage failed for good; schedule restarts (after start-up,
        within the restart budget); True when every stage exited with 0."""
        for p in self.procs.values():
            code = p.popen.poll()
            if code is None or p.restart_at is not None:
                continue
            if code != 0 or (starting and not p.ready):
                self._pump_control(0.05)  # its error report may still be in flight
                if p.error:
                    msg = (f"stage {p.name} (pid {p.pid}) failed: {p.error}\n"
                           f"{p.traceback or ''}")
                elif code < 0:
                    msg = (f"stage {p.name} (pid {p.pid}) was killed by "
                           f"{signal.Signals(-code).name}")
                else:
                    msg = f"stage {p.name} (pid {p.pid}) exited with code {code}"
                if not starting:
                    now = time.monotonic()
                    if self.liveness is not None:
                        self.liveness.forget(p.name)
                    backoff = p.budget.on_death(now, ran_s=now - p.started_at)
                    if backoff is not None:
                        log.error("%s\nrestarting it in %.2f s (%s)", msg, backoff,
                                  p.budget.describe(now))
                        self.publish_status(
                            "restart", f"stage {p.name} died ({msg.splitlines()[0]}); "
                            "restarting it")
                        p.restart_at = now + backoff
                        continue
                    if p.budget.max_restarts > 0:
                        msg += f"\ngave up restarting it: {p.budget.describe(now)}"
                self.failure = msg
                raise PipelineError(msg)
        return all(p.popen.poll() == 0 for p in self.procs.values())

    def _log_summary(self) -> None:
        self._pump_control(0.05)
        for p in self.procs.values():
            if p.stats:
                log.info("stage %s: %s", p.name, p.stats)

    def _report_inputs(self) -> int:
        """At the end of the stream: log what became of every input (pipeline.accounting),
        the verdict last; EXIT_INPUTS_LOST when a file asked to be processed whole lost
        some, else EXIT_OK. Needs the source and the sink in this run (else: their part)."""
        sources = [s.name for s in self.graph.stages if not self.graph.inputs_of(s.name)]
        sinks = [s.name for s in self.graph.stages if not self.graph.outputs_of(s.name)]
        if not sources or not sinks:
            return EXIT_OK  # the other host's run has the other end of the count

        def runs(name: str) -> list[dict[str, Any]]:
            p = self.procs[name]
            return [*p.past_stats, p.stats]

        capture = self.config.capture
        kind = capture.source_kind()
        source = {"video": f"video {capture.video}", "images": f"images {capture.images}"}.get(
            kind, f"camera {capture.camera or 0}")
        whole = self.config.transport.policy == "lossless" and kind != "camera"
        self.report = account(source, whole, [s for n in sources for s in runs(n)],
                              [s for n in sinks for s in runs(n)],
                              [s for n in self.procs for s in runs(n)])
        lines = self.report.lines()
        for line in lines[:-1]:
            log.info("%s", line)
        if self.report.inputs_lost:
            log.error("%s", lines[-1])
            return EXIT_INPUTS_LOST
        log.info("%s", lines[-1])
        return EXIT_OK

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        old = {
            signal.SIGINT: signal.signal(signal.SIGINT, lambda *_: self.request_stop(EXIT_SIGINT)),
            signal.SIGTERM: signal.signal(
                signal.SIGTERM, lambda *_: self.request_stop(EXIT_SIGTERM)
            ),
            # the terminal went away: stop in order rather than die and leave it to PDEATHSIG
            signal.SIGHUP: signal.signal(
                signal.SIGHUP, lambda *_: self.request_stop(EXIT_SIGHUP)
            ),
        }

        def restore() -> None:
            for sig, handler in old.items():
                signal.signal(sig, handler)

        return restore
