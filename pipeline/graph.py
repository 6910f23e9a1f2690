"""The one place where the pipeline's stages and edges are listed.

    capture.frame -> detect.frame -> [track] lift.keypoints -> smooth.pose -> output.pose -> PUB

The track stage (track ids) always runs inside the lift process, ahead of lift (StageSpec.pre):
frames are in order there, after the fan-in of detection workers.

Each edge names its message type and its drop policy ("latest": newest wins, drops counted;
"lossless": every message, the producer waits). The supervisor reads `build_graph(config)`
and `Graph.endpoints(...)`; nothing else hard-codes the topology.

`config.topology` (pipeline.config.TopologyConfig) spreads the graph out:
- `detect_workers=N`: N processes "detect#0" ... "detect#N-1" (replicas of the detect
  stage) share the one capture-detect edge (each frame to the first free worker) and each
  has its own edge to lift ("detect#0-lift", ...), which merges them back into frame order
  (pipeline.reorder);
- `endpoints`: any edge's endpoint (the producer binds it, the consumer connects);
- `only`: this run starts only those stages; an edge to a stage outside the run must have
  an endpoint, reached over tcp by the run on the other host;
- `colocate=("smooth",)`: the smooth stage runs inside the output process (StageSpec.pre),
  ahead of it: one process and one hop less (lift -> output), same stamps.
"""

from __future__ import annotations

import importlib
import os
import socket
from dataclasses import dataclass

from pipeline.config import PipelineConfig
from pipeline.schema import Frame, Keypoints2D, Pose3D
from pipeline.security import check_bind_endpoint, check_edge_keys
from pipeline.stage import Stage


#: a replica of a stage is named "<stage>#<i>" ("detect#1"); its class is the stage's
REPLICA_SEP = "#"
STAGE_ORDER = ("capture", "detect", "lift", "smooth", "output")


def stage_kind(name: str) -> str:
    """The stage a process name runs: "detect#1" -> "detect", "lift" -> "lift"."""
    return name.split(REPLICA_SEP, 1)[0]


@dataclass(frozen=True)
class StageSpec:
    """One stage. `module` defaults to `stages.<name>`, `config_key` (the PipelineConfig
    section its constructor gets) to `name`; a test may point them elsewhere."""

    name: str
    module: str = ""
    config_key: str = ""
    pre: tuple["StageSpec", ...] = ()  # co-located stages run ahead of this one, in order

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
    key: str = ""  # shared endpoint name: every consumer of a fan-out edge uses one endpoint

    @property
    def src_stage(self) -> str:
        return self.src.split(".")[0]

    @property
    def dst_stage(self) -> str:
        return self.dst.split(".")[0]

    @property
    def name(self) -> str:
        """The endpoint's name: `key`, else "<src stage>-<dst stage>"."""
        return self.key or f"{self.src_stage}-{self.dst_stage}"


@dataclass(frozen=True)
class Graph:
    """Stages in data-flow order and the edges between them."""

    stages: tuple[StageSpec, ...]
    edges: tuple[Edge, ...]  # may name stages outside `stages` (run elsewhere, --only)
    fixed_endpoints: tuple[tuple[str, str], ...] = ()  # edge name -> endpoint, given by config

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
        """One edge per output endpoint (a fan-out edge's consumers share it)."""
        seen: dict[str, Edge] = {}
        for e in self.edges:
            if e.src_stage == stage:
                seen.setdefault(e.name, e)
        return tuple(seen.values())

    def endpoints(self, kind: str, run_dir: str, tcp_base_port: int = 0) -> dict[str, str]:
        """Edge name -> endpoint, plus "control" for the supervisor's control socket.

        kind "ipc": unix sockets inside `run_dir` (private to this run, removed with it).
        kind "tcp": 127.0.0.1 ports from `tcp_base_port` on, or free ports when 0.
        """
        fixed = dict(self.fixed_endpoints)
        names = [n for n in dict.fromkeys(e.name for e in self.edges) if n not in fixed]
        names.append("control")
        if kind == "ipc":
            out = {n: f"ipc://{os.path.join(run_dir, n)}.sock" for n in names}
            too_long = [ep for ep in out.values() if len(ep) - len("ipc://") > 100]
            if too_long:
                raise ValueError(
                    f"ipc path {too_long[0]} is too long for a unix socket: use a shorter "
                    "run_dir or transport kind tcp"
                )
            return {**out, **fixed}
        if kind == "tcp":
            ports = (
                [tcp_base_port + i for i in range(len(names))]
                if tcp_base_port
                else _free_ports(len(names))
            )
            return {**{n: f"tcp://127.0.0.1:{p}" for n, p in zip(names, ports)}, **fixed}
        raise ValueError(f"transport kind must be ipc or tcp, got {kind!r}")


def build_graph(config: PipelineConfig) -> Graph:
    """The pipeline for `config`: smoothing is left out when `config.smooth.enabled` is
    False; `config.transport.policy` sets every edge's drop policy; `config.topology` adds
    detection workers, fixed endpoints and a subset of stages (see module docstring).

    Raises ValueError, saying what to do, for an unknown stage or edge name, an edge to a
    stage outside the run without an endpoint, or a non-loopback endpoint this run would
    bind without `topology.allow_remote` (with it: one warning per endpoint), or an edge to
    another host (a non-loopback endpoint, bound or connected) without CurveZMQ keys
    (`topology.edge_curve_*`) or `topology.insecure_edges` (pipeline.security.check_edge_keys).
    """
    policy = config.transport.policy
    topo = config.topology
    kinds = ["capture", "detect", "lift"] + (["smooth"] if config.smooth.enabled else []) + [
        "output"
    ]
    workers = topo.detect_workers
    detects = ["detect"] if workers == 1 else [f"detect{REPLICA_SEP}{i}" for i in range(workers)]
    names = [n for k in kinds for n in (detects if k == "detect" else [k])]
    edges = [
        Edge("capture.frame", f"{d}.frame", Frame, policy, key="capture-detect")
        for d in detects
    ]
    edges += [Edge(f"{d}.keypoints", "lift.keypoints", Keypoints2D, policy) for d in detects]
    colocated = config.smooth.enabled and "smooth" in topo.colocate
    if colocated:
        names.remove("smooth")
        edges.append(Edge("lift.pose", "output.pose", Pose3D, policy))
    elif config.smooth.enabled:
        edges += [
            Edge("lift.pose", "smooth.pose", Pose3D, policy),
            Edge("smooth.pose", "output.pose", Pose3D, policy),
        ]
    else:
        edges.append(Edge("lift.pose", "output.pose", Pose3D, policy))

    if topo.only:
        unknown = [n for n in topo.only if n not in kinds]
        if unknown:
            raise ValueError(f"--only: no stage {unknown[0]!r}; stages are {','.join(kinds)}")
        if colocated and "smooth" in topo.only and "output" not in topo.only:
            raise ValueError("--only: smooth runs inside the output process here "
                             "(--colocate-smooth): name output too, or drop --colocate-smooth")
        names = [n for n in names if stage_kind(n) in topo.only]
    local = set(names)
    edges = [e for e in edges if e.src_stage in local or e.dst_stage in local]
    fixed = topo.endpoint_map()
    edge_names = list(dict.fromkeys(e.name for e in edges))
    unknown = [n for n in fixed if n not in edge_names]
    if unknown:
        raise ValueError(
            f"no edge {unknown[0]!r} in this run; its edges are {', '.join(edge_names)}"
        )
    for name in edge_names:  # an edge to another host is encrypted, or refused
        if name in fixed:
            edge = next(e for e in edges if e.name == name)
            if edge.src_stage in local:  # this run binds it: --allow-remote first
                check_bind_endpoint(fixed[name], topo.allow_remote)
            check_edge_keys(name, fixed[name], edge.src_stage in local,
                            secret=topo.edge_curve_secret,
                            authorized=topo.edge_curve_authorized,
                            server=topo.edge_curve_server, insecure=topo.insecure_edges)
    for e in edges:
        cut = (e.src_stage in local) != (e.dst_stage in local)
        if cut and e.name not in fixed:
            here, there = (e.src_stage, e.dst_stage) if e.src_stage in local else (
                e.dst_stage, e.src_stage)
            raise ValueError(
                f"stage {here} runs here but {stage_kind(there)} does not: give edge "
                f"{e.name} an endpoint, e.g. --endpoint {e.name}=tcp://127.0.0.1:5560 "
                "(the same edge in the other run)"
            )
        if e.name in fixed and e.src_stage in local:  # this run binds it
            check_bind_endpoint(fixed[e.name], topo.allow_remote)
    # the track stage always runs in the lift process, ahead of lift: there frames are in
    # order (after the detection workers' fan-in) and no extra hop is paid
    pre = {"lift": (StageSpec("track"),)}
    if colocated:
        pre["output"] = (StageSpec("smooth"),)
    return Graph(
        tuple(StageSpec(n, pre=pre.get(n, ())) if n == stage_kind(n) else
              StageSpec(n, module=f"stages.{stage_kind(n)}", config_key=stage_kind(n))
              for n in names),
        tuple(edges),
        tuple((n, fixed[n]) for n in edge_names if n in fixed),
    )


def stage_class(name: str, module_name: str = "") -> type[Stage]:
    """The Stage subclass in `module_name` (default `stages.<name>`) whose `name` is `name`
    (for a replica such as "detect#1": the stage's, "detect")."""
    name = stage_kind(name)
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
