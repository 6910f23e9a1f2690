"""The strict speed figures behind the tests' generous limits, each measured many times in one run.

    python -m bench.bounds all                     # every figure below, a few minutes
    python -m bench.bounds resume --rounds 4       # one figure; --help for each one's flags
    python -m bench.bounds capture-resume fail-fast mocap-cache curve workers --out b.json

The tests check behaviour (a killed stage comes back, a restarted capture skips ahead, a
bad source fails before any process starts, a cached load reads the cache, only the
authorised CURVE subscriber receives, both detection workers take part) with limits that a
shared, loaded machine cannot trip. How fast each of those happens is measured here, over
many repetitions, and printed as median / p99 / max against the target the tests used to
assert:

| figure | what is timed | target |
|---|---|---|
| resume | kill -9 of each stage in turn (real pipeline, paced video): first pose captured after the kill, received | < 2 s every kill |
| capture-resume | CaptureStage.resume(after frame 40, 0.5 s ago) + open() on the 50 fps video: next id's distance from the one due at open(), wait for it | id 66 or 67; wait < 0.1 s |
| fail-fast | run_pipeline.py --video MISSING until exit 2 (interpreter start, flags, source preflight) | < 3 s |
| mocap-cache | the second mocap.load_poses("cmu_expmap") (from the .npz cache), against the first (parse) | < 1 s |
| curve | poses per second a subscriber receives from a 100 Hz publisher, CurveZMQ against plain tcp, same process | >= 20 in 3 s; ratio ~ 1 |
| workers | --detect-workers 2 on 150 paced frames: each worker's share of the processed frames | >= 5 frames each |

The load test's figures (p99 and pose rate with and without a stalled subscriber) are
`python -m bench.stalled_subscriber`. Exit status 0 when every figure run meets its target.
Figures taken while other work loads the machine are noisy: the report says the load average.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from bench import frames as bench_frames
from bench import report
from bench.stream_log import StreamLog
from bench.transport_floor import free_tcp_ports

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.bounds")


def _summary_s(values: list[float]) -> dict[str, float]:
    """report.summarize on seconds (it takes any unit): n, p50, p95, p99, mean, max."""
    return report.summarize(values)


def _line(name: str, s: dict[str, float], unit: str, target: str, ok: bool) -> str:
    return (f"{name:<34} n={int(s['n']):4d}  p50 {s['p50']:8.3f}  p99 {s['p99']:8.3f}  max "
            f"{s['max']:8.3f} {unit:<6} target {target:<14} {'met' if ok else 'MISSED'}")


# --------------------------------------------------------------------------- resume
def _pump(sup, predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = sup.watch(timeout_s=0.05)
        if code != -1:
            raise RuntimeError(f"the pipeline ended (exit {code}): {sup.failure}")
        if predicate():
            return True
    return False


def bench_resume(rounds: int, video: str, engine: str | None) -> dict[str, Any]:
    """kill -9 of each stage in turn, `rounds` times; seconds from the kill to the first pose
    captured after it, per stage."""
    from pipeline.config import (CaptureConfig, LiftConfig, OutputConfig, PipelineConfig,
                                 SupervisorConfig)
    from pipeline.supervisor import Supervisor

    (port,) = free_tcp_ports(1)
    config = PipelineConfig(
        capture=CaptureConfig(video=video, loop=True),
        lift=LiftConfig(engine_path=engine),
        output=OutputConfig(publish=f"tcp://127.0.0.1:{port}", wait_for_subscribers=1,
                            wait_for_subscribers_s=60.0),
        supervisor=SupervisorConfig(max_restarts=rounds + 1, restart_window_s=3600.0,
                                    log_level="WARNING"),
    )
    log = StreamLog(config.output.publish)
    sup = Supervisor(config)
    resumes: dict[str, list[float]] = {}
    try:
        sup.start()
        resumes = {name: [] for name in sup.pids()}  # every stage process of the graph
        if not _pump(sup, lambda: len(log.poses()) >= 10, 60.0):
            raise RuntimeError("no poses within 60 s of the start")
        steady = lambda: bool(log.poses()) and time.monotonic_ns() - log.poses()[-1][0] < 300e6
        for _ in range(rounds):
            for stage in resumes:
                _pump(sup, steady, 20.0)
                _pump(sup, sup.spare_ready, 60.0)  # each kill meets a warm spare, as in a run
                _pump(sup, steady, 20.0)
                t_kill = time.monotonic_ns()
                os.kill(sup.pids()[stage], signal.SIGKILL)
                after = lambda: any(m.t_capture_ns > t_kill for _, m in log.poses()[-50:])
                if _pump(sup, after, 30.0):
                    t_recv = next(t for t, m in log.poses() if m.t_capture_ns > t_kill)
                    resumes[stage].append((t_recv - t_kill) / 1e9)
                else:
                    resumes[stage].append(float("inf"))
    finally:
        sup.stop()
        log.close()
    every = [x for v in resumes.values() for x in v]
    return {"per_stage_s": resumes, "all_s": _summary_s(every), "target_s": 2.0,
            "met": max(every) < 2.0}


# --------------------------------------------------------------------------- capture resume
def bench_capture_resume(trials: int, video: str) -> dict[str, Any]:
    """CaptureStage.resume(40, 0.5 s ago) then open() and the first produce(), `trials` times."""
    from pipeline.config import CaptureConfig
    from stages.capture import CaptureStage

    ids, waits, opens = [], [], []
    for _ in range(trials):
        stage = CaptureStage(CaptureConfig(video=video))
        stage.resume(40, time.monotonic_ns() - 500_000_000)
        t0 = time.monotonic()
        stage.open()
        t1 = time.monotonic()
        try:
            frame = None
            while frame is None:
                frame = stage.produce()
            waits.append(time.monotonic() - t1)
        finally:
            stage.close()
        opens.append(t1 - t0)
        ids.append(frame.frame_id)
    return {"frame_ids": {str(k): ids.count(k) for k in sorted(set(ids))},
            "open_s": _summary_s(opens), "wait_s": _summary_s(waits),
            "target": "id 66 or 67, wait < 0.1 s",
            "met": set(ids) <= {66, 67} and max(waits) < 0.1}


# --------------------------------------------------------------------------- fail fast
def bench_fail_fast(trials: int) -> dict[str, Any]:
    """run_pipeline.py with a missing video until it exits 2, `trials` times."""
    times = []
    for _ in range(trials):
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "run_pipeline.py", "--video", "/no/such.mp4"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        times.append(time.monotonic() - t0)
        if proc.returncode != 2:
            raise RuntimeError(f"expected exit 2, got {proc.returncode}: {proc.stderr[-1000:]}")
    s = _summary_s(times)
    return {"exit_s": s, "target_s": 3.0, "met": s["max"] < 3.0}


# --------------------------------------------------------------------------- mocap cache
def bench_mocap_cache(trials: int) -> dict[str, Any]:
    """The first (parsing) and then `trials` cached loads of the cmu_expmap train split."""
    from engines.training import mocap

    with tempfile.TemporaryDirectory() as cache:
        os.environ["POSESTREAM_CACHE"] = cache
        t0 = time.perf_counter()
        mocap.load_poses(("cmu_expmap",))
        first = time.perf_counter() - t0
        cached = []
        for _ in range(trials):
            t0 = time.perf_counter()
            mocap.load_poses(("cmu_expmap",))
            cached.append(time.perf_counter() - t0)
    s = _summary_s(cached)
    return {"first_load_s": first, "cached_load_s": s, "speed_up": first / s["p50"],
            "target_s": 1.0, "met": s["max"] < 1.0}


# --------------------------------------------------------------------------- curve
#: a published message of about a pose's size (17 x (3 + 2 + 1 + 1) float32 and a header)
CURVE_PAYLOAD = bytes(600)


def _publish(endpoint: str, options: dict, stop: threading.Event, hz: float) -> None:
    """Send [b"pose3d", CURVE_PAYLOAD] at `hz` until `stop` (the rate, not the content, counts)."""
    from pipeline.security import apply_options

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    apply_options(pub, options)
    pub.bind(endpoint)
    try:
        while not stop.is_set():
            pub.send_multipart([b"pose3d", CURVE_PAYLOAD])
            time.sleep(1.0 / hz)
    finally:
        pub.close(0)
        ctx.term()


def _receive_rate(endpoint: str, options: dict, listen_s: float) -> tuple[int, float]:
    """(poses received in listen_s, seconds from connect to the first pose)."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for opt, value in options.items():
        sub.setsockopt(opt, value)
    sub.setsockopt(zmq.SUBSCRIBE, b"pose3d")
    t0 = time.monotonic()
    sub.connect(endpoint)
    n, first = 0, float("nan")
    try:
        while time.monotonic() - t0 < listen_s:
            if sub.poll(50, zmq.POLLIN):
                sub.recv_multipart()
                if n == 0:
                    first = time.monotonic() - t0
                n += 1
    finally:
        sub.close(0)
        ctx.term()
    return n, first


def bench_curve(rounds: int, listen_s: float = 3.0, hz: float = 100.0) -> dict[str, Any]:
    """Poses received in listen_s from a hz publisher, CURVE and plain alternating."""
    from pipeline.security import (CurvePublisher, authorize, curve_client_options,
                                   generate_keypair, load_keypair)

    out: dict[str, dict[str, list[float]]] = {"plain": {"poses": [], "first_s": []},
                                               "curve": {"poses": [], "first_s": []}}
    with tempfile.TemporaryDirectory() as keys:
        _, server_secret = generate_keypair(Path(keys) / "s", "server")
        _, client_secret = generate_keypair(Path(keys) / "c", "client")
        authorize(Path(keys) / "c" / "client.key", Path(keys) / "authorized")
        server, client = load_keypair(server_secret), load_keypair(client_secret)
        for _ in range(rounds):
            for kind in ("plain", "curve"):
                (port,) = free_tcp_ports(1)
                endpoint = f"tcp://127.0.0.1:{port}"
                ctx = zmq.Context()
                sec = CurvePublisher(ctx, server_secret, Path(keys) / "authorized") \
                    if kind == "curve" else None
                stop = threading.Event()
                thread = threading.Thread(target=_publish, daemon=True, args=(
                    endpoint, sec.options if sec else {}, stop, hz))
                thread.start()
                try:
                    n, first = _receive_rate(
                        endpoint, curve_client_options(client, server.public)
                        if kind == "curve" else {}, listen_s)
                finally:
                    stop.set()
                    thread.join(timeout=5)
                    if sec is not None:
                        sec.close()
                    ctx.term()
                out[kind]["poses"].append(n)
                out[kind]["first_s"].append(first)
    curve = _summary_s(out["curve"]["poses"])
    plain = _summary_s(out["plain"]["poses"])
    return {"listen_s": listen_s, "publisher_hz": hz, "curve_poses": curve,
            "plain_poses": plain, "curve_first_pose_s": _summary_s(out["curve"]["first_s"]),
            "ratio_curve_over_plain": curve["p50"] / plain["p50"],
            "target": ">= 20 poses in 3 s", "met": min(out["curve"]["poses"]) >= 20}


# --------------------------------------------------------------------------- workers
def bench_workers(runs: int, video: str, engine: str | None, frames: int = 150
                  ) -> dict[str, Any]:
    """--detect-workers 2 on `frames` paced frames, `runs` times: frames each worker processed."""
    from pipeline.config import (CaptureConfig, LiftConfig, OutputConfig, PipelineConfig,
                                 SupervisorConfig, TopologyConfig)
    from pipeline.supervisor import Supervisor

    counts: list[tuple[int, int]] = []
    for _ in range(runs):
        (port,) = free_tcp_ports(1)
        config = PipelineConfig(
            capture=CaptureConfig(video=video, max_frames=frames),
            lift=LiftConfig(engine_path=engine),
            output=OutputConfig(publish=f"tcp://127.0.0.1:{port}"),
            supervisor=SupervisorConfig(log_level="WARNING"),
            topology=TopologyConfig(detect_workers=2),
        )
        sup = Supervisor(config)
        code = sup.run()
        if code != 0:
            raise RuntimeError(f"run ended with {code}: {sup.failure}")
        counts.append(tuple(sup.procs[f"detect#{i}"].stats["processed"] for i in (0, 1)))
    least = [min(c) for c in counts]
    shares = [min(c) / max(sum(c), 1) for c in counts]
    return {"frames": frames, "processed_per_run": counts,
            "least_per_run": _summary_s(least), "smaller_share": _summary_s(shares),
            "target": ">= 5 frames each", "met": min(least) >= 5}


# --------------------------------------------------------------------------- CLI
FIGURES = ("resume", "capture-resume", "fail-fast", "mocap-cache", "curve", "workers")


def print_report(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(f"bench.bounds ({m['cores']} CPUs, load average {m['loadavg']}):")
    if "resume" in results:
        r = results["resume"]
        print(_line("resume after kill -9", r["all_s"], "s", "< 2 s", r["met"]))
        for stage, v in r["per_stage_s"].items():
            print(f"    {stage:<8} " + " ".join(f"{x:.2f}" for x in v))
    if "capture-resume" in results:
        r = results["capture-resume"]
        print(_line("capture resume: wait for frame", r["wait_s"], "s", "< 0.1 s", r["met"]))
        print(_line("capture resume: open()", r["open_s"], "s", "-", True))
        print(f"    next frame ids (target 66 or 67): {r['frame_ids']}")
    if "fail-fast" in results:
        r = results["fail-fast"]
        print(_line("fail-fast: missing video, exit 2", r["exit_s"], "s", "< 3 s", r["met"]))
    if "mocap-cache" in results:
        r = results["mocap-cache"]
        print(_line("mocap cached load", r["cached_load_s"], "s", "< 1 s", r["met"]))
        print(f"    first load (parse) {r['first_load_s']:.2f} s: {r['speed_up']:.0f}x")
    if "curve" in results:
        r = results["curve"]
        print(_line(f"curve: poses in {r['listen_s']:.0f} s", r["curve_poses"], "poses",
                    ">= 20", r["met"]))
        print(_line(f"plain: poses in {r['listen_s']:.0f} s", r["plain_poses"], "poses", "-",
                    True))
        print(f"    CURVE / plain {r['ratio_curve_over_plain']:.3f}; CURVE first pose p50 "
              f"{r['curve_first_pose_s']['p50']:.3f} s")
    if "workers" in results:
        r = results["workers"]
        print(_line(f"workers: fewer frames of {r['frames']}", r["least_per_run"], "frames",
                    ">= 5", r["met"]))
        print(f"    processed (detect#0, detect#1) per run: {r['processed_per_run']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bounds", description=__doc__.split("\n")[0])
    p.add_argument("figures", nargs="+", choices=("all",) + FIGURES)
    p.add_argument("--rounds", type=int, default=4, help="resume: kills of each stage (4)")
    p.add_argument("--trials", type=int, default=20,
                   help="capture-resume, fail-fast, mocap-cache: repetitions (20; fail-fast 10)")
    p.add_argument("--curve-rounds", type=int, default=10, help="curve: 3 s listens each (10)")
    p.add_argument("--worker-runs", type=int, default=5, help="workers: pipeline runs (5)")
    p.add_argument("--video", default=str(bench_frames.DEFAULT_VIDEO))
    p.add_argument("--engine", default=None, help="lifter engine (default: the shipped one)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    figures = FIGURES if "all" in args.figures else tuple(dict.fromkeys(args.figures))
    results: dict[str, Any] = {"machine": report.machine_info()}
    for figure in figures:
        if figure == "resume":
            results[figure] = bench_resume(args.rounds, args.video, args.engine)
        elif figure == "capture-resume":
            results[figure] = bench_capture_resume(args.trials, args.video)
        elif figure == "fail-fast":
            results[figure] = bench_fail_fast(max(args.trials // 2, 1))
        elif figure == "mocap-cache":
            results[figure] = bench_mocap_cache(args.trials)
        elif figure == "curve":
            results[figure] = bench_curve(args.curve_rounds)
        elif figure == "workers":
            results[figure] = bench_workers(args.worker_runs, args.video, args.engine)
    print_report(results)
    if args.out:
        report.write_json(args.out, results)
    return 0 if all(results[f]["met"] for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
