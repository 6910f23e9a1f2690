"""The one place where the pipeline's stages and edges are listed.

    capture.frame -> detect.frame -> lift.keypoints -> smooth.pose -> output.pose -> PUB

Each edge names its message type and its drop policy ("latest": newest wins, drops counted;
"lossless": every message, the producer waits). The supervisor reads `build_graph(config)`
and `Graph.endpoints(...)`; nothing else hard-codes the topology.
"""

from __future__ import annotations

import importlib
import os
import socket
from dataclasses import dataclass

from pipeline.config import PipelineConfig
from pipeline.schema import Frame, Keypoints2D, Pose3D
from pipeline.stage import Stage


@dataclass(frozen=True)
class StageSpec:
    """One stage. `module` defaults to `stages.<name>`, `config_key` (the PipelineConfig
    section its constructor gets) to `name`; a test may point them elsewhere."""

    name: str
    module: str = ""
    config_key: str = ""

    @property
    def module_name(self) -> str:
        return self.module or f"stages.{self.name}"

    @property
    def config_section(self) -> str:
        return self.config_key or self.name


@dataclass(frozen=True)
class Edge:
    """`src` "stage.port" -> `dst` "stage.port", carrying `message` type, with `policy`."""

    src: str
    dst: str
    message: type
    policy: str = "latest"

    @property
    def src_stage(self) -> str:
        return self.src.split(".")[0]

    @property
    def dst_stage(self) -> str:
        return self.dst.split(".")[0]

    @property
    def name(self) -> str:
        return f"{self.src_stage}-{self.dst_stage}"


@dataclass(frozen=True)
class Graph:
    """Stages in data-flow order and the edges between them."""

    stages: tuple[StageSpec, ...]
    edges: tuple[Edge, ...]

    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def spec(self, stage: str) -> StageSpec:
        for s in self.stages:
            if s.name == stage:
                return s
        raise KeyError(f"no stage {stage!r} in the graph; stages: {self.stage_names()}")

    def inputs_of(self, stage: str) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.dst_stage == stage)

    def outputs_of(self, stage: str) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.src_stage == stage)

    def endpoints(self, kind: str, run_dir: str, tcp_base_port: int = 0) -> dict[str, str]:
        """Edge name -> endpoint, plus "control" for the supervisor's control socket.

        kind "ipc": unix sockets inside `run_dir` (private to this run, removed with it).
        kind "tcp": 127.0.0.1 ports from `tcp_base_port` on, or free ports when 0.
        """
        names = [e.name for e in self.edges] + ["control"]
        if kind == "ipc":
            out = {n: f"ipc://{os.path.join(run_dir, n)}.sock" for n in names}
            too_long = [ep for ep in out.values() if len(ep) - len("ipc://") > 100]
            if too_long:
                raise ValueError(
                    f"ipc path {too_long[0]} is too long for a unix socket: use a shorter "
                    "run_dir or transport kind tcp"
                )
            return out
        if kind == "tcp":
            ports = (
                [tcp_base_port + i for i in range(len(names))]
                if tcp_base_port
                else _free_ports(len(names))
            )
            return {n: f"tcp://127.0.0.1:{p}" for n, p in zip(names, ports)}
        raise ValueError(f"transport kind must be ipc or tcp, got {kind!r}")


def build_graph(config: PipelineConfig) -> Graph:
    """The pipeline for `config`: smoothing is left out when `config.smooth.enabled` is
    False; `config.transport.policy` sets every edge's drop policy."""
    policy = config.transport.policy
    names = ["capture", "detect", "lift"] + (["smooth"] if config.smooth.enabled else []) + [
        "output"
    ]
    edges = [
        Edge("capture.frame", "detect.frame", Frame, policy),
        Edge("detect.keypoints", "lift.keypoints", Keypoints2D, policy),
    ]
    if config.smooth.enabled:
        edges += [
            Edge("lift.pose", "smooth.pose", Pose3D, policy),
            Edge("smooth.pose", "output.pose", Pose3D, policy),
        ]
    else:
        edges.append(Edge("lift.pose", "output.pose", Pose3D, policy))
    return Graph(tuple(StageSpec(n) for n in names), tuple(edges))


def stage_class(name: str, module_name: str = "") -> type[Stage]:
    """The Stage subclass in `module_name` (default `stages.<name>`) whose `name` is `name`."""
    module_name = module_name or f"stages.{name}"
    module = importlib.import_module(module_name)
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Stage) and getattr(obj, "name", "") == name
    ]
    if len(found) != 1:
        raise LookupError(
            f"{module_name} must define exactly one Stage subclass with name = {name!r}; "
            f"found {len(found)}"
        )
    return found[0]


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
