"""Run ONE real stage process (`python -m pipeline.runner`) with the test playing everyone
around it: the supervisor (control socket), the upstream producer (a ROUTER at the
stage's input endpoint, answering its credits) and the downstream consumer (a DEALER
asking the stage's output for messages).

So a test can put any bytes on a stage's real input socket, one message per credit (no
drain-to-latest, so every message is seen), then read the stage's counters from its
"bye" report. Used by tests/test_faults.py and tests/test_load.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from pipeline.config import PipelineConfig
from pipeline.graph import build_graph
from pipeline.runner import Plan
from pipeline.transport import CREDIT, DATA

REPO = Path(__file__).resolve().parents[1]


class StageHarness:
    """One stage of `config`'s graph in its own process; see the module docstring.

    h = StageHarness(config, "detect", run_dir); h.start()
    h.send([b"D", *frames]) ... h.receive() ... stats = h.stop()
    """

    def __init__(self, config: PipelineConfig, stage: str, run_dir: Path,
                 startup_timeout_s: float = 90.0) -> None:
        self.config = config
        self.stage = stage
        self.run_dir = Path(run_dir)
        self.startup_timeout_s = startup_timeout_s
        self.ctx = zmq.Context()
        self.popen: subprocess.Popen | None = None
        self.control: zmq.Socket | None = None
        self.upstream: zmq.Socket | None = None
        self.downstream: zmq.Socket | None = None
        self.events: list[dict[str, Any]] = []
        self._served: dict[bytes, bytes] = {}
        self._credit_peer: bytes | None = None
        self._credit_token = b""
        self._down_token = 0
        self.sent = 0

    # ------------------------------------------------------------------ life
    def start(self) -> "StageHarness":
        graph = build_graph(self.config)
        ins, outs = graph.inputs_of(self.stage), graph.outputs_of(self.stage)
        ep = {n: f"ipc://{self.run_dir}/{n}.sock" for n in ("control", "in", "out")}
        self.control = self._socket(zmq.ROUTER, bind=ep["control"])
        if ins:
            self.upstream = self._socket(zmq.ROUTER, bind=ep["in"])
        plan = Plan(
            stage=self.stage, module=f"stages.{self.stage}", config_key=self.stage,
            config=self.config, control=ep["control"],
            inputs=(ep["in"],) if ins else (),
            outputs=tuple((ep["out"], e.policy) for e in outs[:1]),
            parent_pid=os.getpid(),
        )
        plan_path = self.run_dir / f"{self.stage}.plan.json"
        plan_path.write_text(plan.to_json(), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.log_path = self.run_dir / f"{self.stage}.log"
        with open(self.log_path, "w", encoding="utf-8") as log_file:  # a pipe could fill up
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "pipeline.runner", "--plan", str(plan_path)],
                cwd=REPO, env=env, stderr=log_file, stdout=log_file,
            )
        if outs:
            self.downstream = self._socket(zmq.DEALER, connect=ep["out"])
        self.wait_event("ready", self.startup_timeout_s)
        self._tell("go")
        return self

    def _socket(self, kind: int, bind: str | None = None, connect: str | None = None):
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if kind == zmq.ROUTER:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.bind(bind) if bind else sock.connect(connect)
        return sock

    def _tell(self, cmd: str) -> None:
        self.control.send_multipart([self.stage.encode(), msgpack.packb({"cmd": cmd})])

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def pump_control(self, timeout_ms: int = 0) -> None:
        while self.control.poll(timeout_ms, zmq.POLLIN):
            self.events.append(msgpack.unpackb(self.control.recv_multipart()[-1]))
            timeout_ms = 0

    def wait_event(self, event: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for e in self.events:
                if e.get("event") == event:
                    return e
            if self.popen.poll() is not None:
                self.pump_control(100)
                if any(e.get("event") == event for e in self.events):
                    continue
                raise AssertionError(
                    f"stage {self.stage} exited with {self.popen.returncode} before "
                    f"{event!r}; events {self.events}; stderr:\n{self._stderr()}"
                )
            self.pump_control(50)
        raise AssertionError(f"stage {self.stage}: no {event!r} within {timeout_s} s")

    def _stderr(self) -> str:
        """The end of the stage's log (stdout and stderr)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return ""

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    # ------------------------------------------------------------------ upstream
    def wait_credit(self, timeout_s: float = 30.0) -> None:
        """Block until the stage has asked for one more message (a new credit token)."""
        deadline = time.monotonic() + timeout_s
        while self._credit_peer is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"stage {self.stage} asked for no input within {timeout_s} s "
                    f"(alive: {self.alive()})"
                )
            if self.upstream.poll(int(min(left, 0.1) * 1000), zmq.POLLIN):
                while True:
                    try:
                        peer, kind, token = self.upstream.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    assert kind == CREDIT
                    if self._served.get(peer) != token:
                        self._credit_peer, self._credit_token = peer, token
            elif not self.alive():
                raise AssertionError(f"stage {self.stage} died: {self._stderr()}")

    def send(self, parts: list[bytes]) -> None:
        """Send one raw edge message (kind frame first) against the next credit."""
        self.wait_credit()
        peer = self._credit_peer
        self.upstream.send_multipart([peer, *parts])
        self._served[peer] = self._credit_token
        self._credit_peer = None
        self.sent += 1

    def send_message(self, frames: list[bytes]) -> None:
        """Send encoded schema frames as a data message."""
        self.send([DATA, *[bytes(f) for f in frames]])

    # ------------------------------------------------------------------ downstream
    def receive(self, timeout_s: float = 30.0) -> list[bytes]:
        """The next message the stage sends downstream (frames after the kind)."""
        self._down_token += 1
        self.downstream.send_multipart([CREDIT, self._down_token.to_bytes(8, "little")])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.downstream.poll(250, zmq.POLLIN):
                parts = self.downstream.recv_multipart()
                if parts[0] == DATA:
                    return parts[1:]
            else:  # the stage may have missed the credit while (re)connecting
                self.downstream.send_multipart(
                    [CREDIT, self._down_token.to_bytes(8, "little")])
            if not self.alive():
                raise AssertionError(f"stage {self.stage} died: {self._stderr()}")
        raise AssertionError(f"stage {self.stage} sent nothing within {timeout_s} s")

    # ------------------------------------------------------------------ end
    def stop(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Ask the stage to stop; its "bye" stats (counters) once it has exited with 0."""
        self._tell("stop")
        bye = self.wait_event("bye", timeout_s)
        code = self.popen.wait(timeout=timeout_s)
        assert code == 0, f"stage {self.stage} exited with {code}: {self._stderr()}"
        return bye.get("stats", {})

    def close(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)
        for sock in (self.control, self.upstream, self.downstream):
            if sock is not None:
                sock.close(0)
        self.ctx.term()


def lifter_engine(folder: Path) -> Path:
    """A lifter engine for tests that only need one that runs: the shipped default when
    it is there, else a small untrained one exported into `folder` (torch, once)."""
    from engines.runtime.engine import DEFAULT_ENGINE_PATH

    if Path(DEFAULT_ENGINE_PATH).is_file():
        return Path(DEFAULT_ENGINE_PATH)
    path = Path(folder) / "lifter.onnx"
    if not path.is_file():
        import torch

        from engines.runtime.codec import Codec
        from engines.training.export import export_model
        from engines.training.models import build_lifter

        torch.manual_seed(0)
        bones_m = (0.13, 0.45, 0.45, 0.13, 0.45, 0.45, 0.24, 0.25, 0.12, 0.11, 0.15, 0.28,
                   0.25, 0.15, 0.28, 0.25)
        export_model(build_lifter(width=64, blocks=1), Codec(canonical_bone_lengths_m=bones_m),
                     folder, model_config={"width": 64, "blocks": 1}, tensorrt=False)
    return path
