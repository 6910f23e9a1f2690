"""End-to-end latency of the real multi-process pipeline, against its baselines in the same run.

    python -m bench.latency --video FILE [--fps 30|60|max] [--frames N] [--json OUT]
                            [--plot OUT.png] [--size 640x480] [--rounds 3]

The pipeline runs through the code path of run_pipeline.py: a `PipelineConfig` handed to
`pipeline.supervisor.Supervisor` (one OS process per stage, the real stages, ZeroMQ between
them); this process subscribes to the published stream as any user would. Frames: the video
decoded once into BMP files in memory and read by the capture stage as an image set paced at
`--fps` (bench/frames.py), so every run below gets the same frames at the same pace.

From the `stamps` every Pose3D carries (no benchmark code in the stages), after `--warmup`
frames: compute per stage, transport per hop, end to end (capture -> this subscriber), pipeline
overhead (end to end minus detector and lifter compute), throughput, drops, stale deliveries
(a frame overtaken by a newer one on the way: latest-wins must keep this at 0), CPU per
process (/proc).

Baselines, same frames, same machine, same run (so the ratios hold on a noisy machine):
- transport floor (bench/transport_floor.py): the pipeline's topology and edges with no work;
- single process (bench/single_process.py): the same stage classes called in one loop;
- MediaPipe peer (bench/mediapipe_peer.py): MediaPipe's own pose with world landmarks.
Throughput is compared as fast as the frames can be read (pipeline and single process at
`--fps max`), latency at the camera rate `--fps`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import zmq

from bench import frames as bench_frames
from bench import mediapipe_peer, report, single_process, transport_floor
from bench.lifter import engine_file
from bench.mediapipe_peer import parse_fps
from pipeline.config import (
    DetectConfig,
    LiftConfig,
    OutputConfig,
    PipelineConfig,
    SmoothConfig,
    SupervisorConfig,
    TopologyConfig,
    TransportConfig,
    auto_detect_workers,
    auto_follow_threads,
    detect_workers_arg,
    look_join_frames_for,
    one_euro_fields,
    one_euro_for_engine_file,
)
from pipeline.schema import Pose3D, SchemaError, decode
from pipeline.supervisor import Supervisor
from pipeline.transport import open_socket

log = logging.getLogger(__name__)

#: targets of issue 3 (docs/BENCHMARKS.md)
TARGET_OVERHEAD_P50_MS = 1.5
TARGET_OVERHEAD_P99_MS = 3.0
TARGET_OVERHEAD_VS_FLOOR = 1.25
TARGET_THROUGHPUT_VS_SINGLE = 1.3
TARGET_E2E_OVER_SINGLE_MS = 2.0
#: how long the subscriber waits for the next pose before it calls the stream over
IDLE_TIMEOUT_S = 10.0


def pipeline_config(capture: Any, engine: Path, transport: str = "ipc",
                    policy: str = "latest", smooth: bool = True,
                    detect_workers: int = 1, shared_memory: bool = True,
                    colocate_smooth: bool = False, max_people: int | None = None,
                    follow_threads: int = 0) -> PipelineConfig:
    """run_pipeline.py's defaults, with the benchmark's frames and engine, the public stream on
    a free loopback port, and the output holding the start until our subscriber is there.
    policy "lossless" is run_pipeline.py --every-frame (every frame processed: throughput);
    smooth False is --no-smooth (no smooth process); detect_workers is --detect-workers;
    shared_memory False sends frames through the ipc sockets (TransportConfig);
    colocate_smooth runs smoothing in the output process (--colocate-smooth); max_people is
    --max-people (None: run_pipeline.py's default); follow_threads is --follow-threads (0: as
    run_pipeline.py, `auto_follow_threads`)."""
    port = transport_floor.free_tcp_ports(1)[0]
    return PipelineConfig(
        capture=capture,
        detect=DetectConfig(**({} if max_people is None else {"max_people": max_people}),
                            follow_threads=follow_threads,
                            look_join_frames=look_join_frames_for(
                                policy, DetectConfig.discover_every)),
        lift=LiftConfig(engine_path=str(engine)),
        smooth=SmoothConfig(enabled=smooth,
                            **one_euro_fields(one_euro_for_engine_file(str(engine)))),
        output=OutputConfig(publish=f"tcp://127.0.0.1:{port}", wait_for_subscribers=1,
                            wait_for_subscribers_s=60.0),
        transport=TransportConfig(kind=transport, policy=policy, shared_memory=shared_memory),
        supervisor=SupervisorConfig(log_level="WARNING"),
        topology=TopologyConfig(detect_workers=detect_workers,
                                colocate=("smooth",) if colocate_smooth else ()),
    )


def run_pipeline(config: PipelineConfig, fps: float | None, warmup: int) -> dict[str, Any]:
    """Run the pipeline once over config.capture's frames; subscribe and time every pose.

    Returns report.breakdown(...) plus throughput, frames captured / delivered / dropped, the
    stages' own counters, CPU per stage process (% of one core) and the exit code.
    """
    n_frames = bench_frames.frame_count(Path(config.capture.images).parent)
    if config.capture.max_frames:
        n_frames = min(n_frames, config.capture.max_frames)
    ctx = zmq.Context()
    sub = open_socket(ctx, zmq.SUB, connect=config.output.publish, rcvhwm=100_000)
    sub.setsockopt(zmq.SUBSCRIBE, config.output.topic.encode())
    sup = Supervisor(config)
    records: list[tuple[int, int, tuple, int]] = []
    people: dict[int, int] = {}  # frame_id -> people in the pose
    rejected = 0
    try:
        sup.start()  # returns once every stage is open and told to go
        cpu = report.CpuMeter(sup.pids())
        cpu.start()
        while True:
            if not sub.poll(int(IDLE_TIMEOUT_S * 1000), zmq.POLLIN):
                log.warning("no pose for %.0f s: calling the stream over", IDLE_TIMEOUT_S)
                break
            parts = sub.recv_multipart(copy=False)
            t_recv = time.monotonic_ns()
            try:
                pose = decode(parts[1:])
            except SchemaError:
                rejected += 1
                continue
            if isinstance(pose, Pose3D):
                records.append((pose.frame_id, pose.t_capture_ns, pose.stamps, t_recv))
                people[pose.frame_id] = len(pose.people)
                if pose.frame_id >= n_frames - 1:
                    break
        cpu_percent = cpu.stop()
        code = sup.watch(timeout_s=10.0)
    finally:
        sup.stop()
        sub.close(linger=0)
        ctx.term()
    measured = [r for r in records if r[0] >= warmup]
    out = report.breakdown(measured, 1000.0 / fps if fps else None, n_frames - 1)
    if config.transport.policy != "latest":
        out["stale"] = out["stale_by_hop"] = None  # lossless queues on purpose
    out.update(
        fps_in=fps,
        frames_captured=n_frames,
        frames_delivered=len(records),
        frames_dropped=n_frames - len(records),
        warmup=warmup,
        throughput_fps=report.throughput_fps([r[3] for r in measured]),
        stage_counters={name: p.stats for name, p in sup.procs.items()},
        cpu_percent=cpu_percent,
        exit_code=code,
        rejected=rejected,
        records=measured,  # raw, for report.merge_stamped
        people_e2e=[(people[r[0]], (r[3] - r[1]) / 1e6) for r in measured],
    )
    out["e2e_by_people"] = report.by_people(out["people_e2e"])
    return out


def image_size(folder: Path) -> tuple[int, int]:
    first = sorted(Path(folder).glob("*.bmp"))[0]
    h, w = cv2.imread(str(first)).shape[:2]
    return w, h


def run_all(video: str, fps: float | None, frames: int | None, warmup: int,
            engine: str | None = None, throughput: bool = True,
            transport: str = "ipc", rounds: int = 2,
            size: tuple[int, int] | None = None, smooth: bool = True,
            detect_workers: int = 1, shared_memory: bool = True,
            colocate_smooth: bool = False, max_people: int | None = None,
            crop: tuple[int, int, int, int] | None = None,
            follow_threads: int = 0) -> dict[str, Any]:
    """The pipeline and every baseline on the same frames, `rounds` times in turn (so a change
    in the machine's load hits all of them alike); the figures of all rounds joined; the ratios
    and targets. crop: (x0, y0, x1, y1) px of the video to keep (None: all). size: resize the
    frames to (width, height) first (None: the video's size).
    smooth False: the pipeline and the floor without the smooth process (--no-smooth).
    detect_workers: detection processes in the pipeline runs (--detect-workers; the floor and
    the in-process baselines are unchanged). shared_memory: frames on ipc edges through
    shared memory (default, as run_pipeline.py) in the pipeline and the floor alike.
    colocate_smooth: smoothing inside the output process; the floor then has no smooth
    process either (its chain is the pipeline's processes). follow_threads: landmark graphs per
    detection process in the pipeline runs (0: run_pipeline.py's, `auto_follow_threads`; the
    in-process baselines keep that).

    Latency at `fps` (None: as fast as frames can be read). Throughput (unless throughput is
    False): pipeline with every frame processed (policy lossless, run_pipeline.py
    --every-frame) against the single-process loop, both as fast as frames can be read.
    """
    result: dict[str, Any] = {"video": str(video), "fps": fps, "warmup": warmup,
                              "rounds": rounds, "crop": list(crop) if crop else None}
    runs: dict[str, list[dict[str, Any]]] = {}
    interval = 1000.0 / fps if fps else None
    with bench_frames.decoded_frames(video, frames, size, crop) as folder, \
            engine_file(engine) as eng:
        n = bench_frames.frame_count(folder)
        if n <= warmup + 1:
            raise ValueError(f"{n} frames and {warmup} warm-up frames leave nothing to measure: "
                             "use more --frames or a smaller --warmup")
        wh = image_size(folder)
        paced = bench_frames.capture_config(folder, fps)
        fastest = bench_frames.capture_config(folder, None)
        config = pipeline_config(paced, eng, transport, smooth=smooth, max_people=max_people)
        chain = tuple(c for c in transport_floor.CHAIN
                      if c != "smooth" or (smooth and not colocate_smooth))
        result.update(smooth=smooth, detect_workers=detect_workers,
                      follow_threads=follow_threads or auto_follow_threads(),
                      max_people=config.detect.max_people,
                      colocate_smooth=colocate_smooth,
                      shared_memory=shared_memory and transport == "ipc", frames=n,
                      image_wh=list(wh), engine=str(eng),
                      machine_before=report.machine_info())
        jobs = [
            ("pipeline", lambda: run_pipeline(
                pipeline_config(paced, eng, transport, smooth=smooth,
                                detect_workers=detect_workers, shared_memory=shared_memory,
                                colocate_smooth=colocate_smooth, max_people=max_people,
                                follow_threads=follow_threads),
                fps, warmup)),
            ("floor", lambda: transport_floor.run_chain(fps or 0.0, n, warmup, wh, transport,
                                                        chain, shared_memory)),
            ("single", lambda: single_process.run(paced, config, warmup)),
            ("mediapipe", lambda: mediapipe_peer.run(paced, config.detect, warmup)),
            # the several-people peer: PoseLandmarker with the pipeline's --max-people
            ("mediapipe_tasks", lambda: mediapipe_peer.run_tasks(
                paced, config.detect.max_people, config.detect, warmup)),
        ]
        if throughput:
            jobs += [
                ("pipeline_max", lambda: run_pipeline(
                    pipeline_config(fastest, eng, transport, policy="lossless", smooth=smooth,
                                    detect_workers=detect_workers,
                                    shared_memory=shared_memory,
                                    colocate_smooth=colocate_smooth, max_people=max_people,
                                    follow_threads=follow_threads),
                    None, warmup)),
                # the same stages, every frame: looks join on fixed frames as in the pipeline
                ("single_max", lambda: single_process.run(
                    fastest, pipeline_config(fastest, eng, transport, policy="lossless",
                                             smooth=smooth, max_people=max_people), warmup)),
            ]
        for i in range(rounds):
            for name, job in jobs:
                log.info("round %d of %d: %s", i + 1, rounds, name)
                runs.setdefault(name, []).append(job())
        result["codec"] = transport_floor.codec_costs(wh, repeat=500)
        # one plain ZeroMQ hop (no credits, no schema): the least a hop costs here
        pose_bytes = len(transport_floor.encode(transport_floor.template("pose", wh))[0])
        result["raw_hops"] = {
            f"{what} ({nbytes} B)": transport_floor.raw_hop(nbytes, fps or 30.0,
                                                            transport=transport)
            for what, nbytes in (("pose", pose_bytes), ("frame", wh[0] * wh[1] * 3))
        }
    for name, per_round in runs.items():
        if name in ("pipeline", "floor"):
            result[name] = report.merge_stamped(per_round, interval, n - 1)
        elif name == "pipeline_max":
            result[name] = report.merge_stamped(per_round, None)
            result[name]["stale"] = result[name]["stale_by_hop"] = None  # lossless queues
        else:
            result[name] = report.merge_fed(per_round)
    for name in ("pipeline", "pipeline_max"):
        if name in runs:
            result[name]["e2e_by_people"] = report.by_people(
                [pair for r in runs[name] for pair in r["people_e2e"]])
    for name in ("pipeline", "pipeline_max"):
        if name in result:
            per = result[name]["per_run"]
            result[name]["frames_captured"] = sum(r["frames_captured"] for r in per)
            result[name]["frames_delivered"] = sum(r["frames_delivered"] for r in per)
            result[name]["frames_dropped"] = sum(r["frames_dropped"] for r in per)
            result[name]["exit_code"] = max(r["exit_code"] for r in per)
    result["machine"] = report.machine_info()
    result["ratios"], result["targets"] = ratios_and_targets(result)
    return result


def ratios_and_targets(r: dict[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The ratios issue 3 asks for, and each target with its value and whether it was met."""
    p, f, s, m = r["pipeline"], r["floor"], r["single"], r["mediapipe"]
    ratios = {
        "overhead_p50_vs_floor": report.ratio(p["overhead"]["p50"], f["overhead"]["p50"]),
        "overhead_p99_vs_floor": report.ratio(p["overhead"]["p99"], f["overhead"]["p99"]),
        # the framework alone: time between stages (every hop), whatever the stages compute
        "transport_p50_vs_floor": report.ratio(p["transport_total"]["p50"],
                                               f["transport_total"]["p50"]),
        "e2e_p50_vs_single": report.ratio(p["e2e"]["p50"], s["e2e"]["p50"]),
        "e2e_p50_vs_mediapipe": report.ratio(p["e2e"]["p50"], m["e2e"]["p50"]),
        "e2e_p99_vs_mediapipe": report.ratio(p["e2e"]["p99"], m["e2e"]["p99"]),
    }
    if "pipeline_max" in r:
        ratios["throughput_vs_single"] = report.ratio(r["pipeline_max"]["throughput_fps"],
                                                      r["single_max"]["throughput_fps"])
    e2e_extra = p["e2e"]["p50"] - s["e2e"]["p50"]
    targets = [
        ("overhead p50, ms", p["overhead"]["p50"], f"<= {TARGET_OVERHEAD_P50_MS}",
         p["overhead"]["p50"] <= TARGET_OVERHEAD_P50_MS),
        ("overhead p99, ms", p["overhead"]["p99"], f"<= {TARGET_OVERHEAD_P99_MS}",
         p["overhead"]["p99"] <= TARGET_OVERHEAD_P99_MS),
        ("overhead p50 / floor p50", ratios["overhead_p50_vs_floor"],
         f"<= {TARGET_OVERHEAD_VS_FLOOR}",
         ratios["overhead_p50_vs_floor"] <= TARGET_OVERHEAD_VS_FLOOR),
        ("e2e p50 - single-process p50, ms", e2e_extra, f"<= {TARGET_E2E_OVER_SINGLE_MS}",
         e2e_extra <= TARGET_E2E_OVER_SINGLE_MS),
        ("stale frames delivered", p["stale"], "0", p["stale"] == 0),
    ]
    if "throughput_vs_single" in ratios:
        targets.append(("throughput / single process (max rate)", ratios["throughput_vs_single"],
                        f">= {TARGET_THROUGHPUT_VS_SINGLE}",
                        ratios["throughput_vs_single"] >= TARGET_THROUGHPUT_VS_SINGLE))
    return ratios, [{"target": t, "value": v, "goal": g, "met": bool(ok)}
                    for t, v, g, ok in targets]


# --------------------------------------------------------------------------- output
def tables(r: dict[str, Any]) -> str:
    """The benchmark's tables as markdown (what docs/BENCHMARKS.md shows)."""
    p, f = r["pipeline"], r["floor"]
    rate = f"{r['fps']:g} fps" if r["fps"] else "max rate"
    mach = r["machine"]
    out = [
        f"video {Path(r['video']).name}"
        f"{' cropped to ' + ','.join(map(str, r['crop'])) if r.get('crop') else ''} "
        f"{r['image_wh'][0]}x{r['image_wh'][1]}, {r['frames']} "
        f"frames at {rate}, first {r['warmup']} left out, {r['rounds']} rounds, "
        f"{r.get('detect_workers', 1)} detection worker(s) x {r.get('follow_threads', '?')} "
        f"landmark thread(s), frames through "
        f"{'shared memory' if r.get('shared_memory') else 'the sockets'}"
        f"{', smoothing in the output process' if r.get('colocate_smooth') else ''}; "
        f"{mach['cpu']}, {mach['cores']} cores, "
        f"load {r['machine_before']['loadavg']} before / {mach['loadavg']} after",
        "",
        "Compute per stage (pipeline), ms",
        "",
        report.table(["stage", "n", "p50", "p95", "p99", "CPU %"],
                     [report.summary_row(k, v, _pooled_cpu(p["cpu_percent"], k)) for k, v in
                      p["stages"].items()]),
        "",
        "Transport per hop, ms (one way, encode + send + receive, before decode)",
        "",
        report.table(["hop", "pipeline p50", "pipeline p99", "floor p50", "floor p99"],
                     [[k, v["p50"], v["p99"], f["hops"].get(k, {}).get("p50"),
                       f["hops"].get(k, {}).get("p99")] for k, v in p["hops"].items()], 3),
        "",
        "Plain ZeroMQ hop between two processes (PUSH -> PULL, no credits, no schema), ms: "
        + ", ".join(f"{k} p50 {report.fmt(v['p50'], 3)} / p99 {report.fmt(v['p99'], 3)}"
                    for k, v in r.get("raw_hops", {}).items()),
        "",
        f"End to end (capture -> subscriber), ms, at {rate}",
        "",
    ]
    rows = [
        report.summary_row("pipeline", p["e2e"], p["throughput_fps"], sum_cpu(p["cpu_percent"])),
        report.summary_row("pipeline overhead (e2e - detect - lift)", p["overhead"], None, None),
        report.summary_row("pipeline transport (sum of hops)", p["transport_total"], None, None),
        report.summary_row("transport floor (no work)", f["e2e"], f["throughput_fps"],
                           sum_cpu(f["cpu_percent"])),
        report.summary_row("transport floor, sum of hops", f["transport_total"], None, None),
        report.summary_row("single process", r["single"]["e2e"], r["single"]["throughput_fps"],
                           r["single"]["cpu_percent"]),
        report.summary_row("MediaPipe pose (world landmarks)", r["mediapipe"]["e2e"],
                           r["mediapipe"]["throughput_fps"], r["mediapipe"]["cpu_percent"]),
    ]
    tasks = r.get("mediapipe_tasks")
    if tasks is not None:
        rows.append(report.summary_row(
            f"MediaPipe Tasks PoseLandmarker, num_poses={r.get('max_people', '?')}", tasks["e2e"],
            tasks["throughput_fps"], tasks["cpu_percent"]))
    if "pipeline_max" in r:
        rows.append(report.summary_row("pipeline, every frame, max rate", r["pipeline_max"]["e2e"],
                                       r["pipeline_max"]["throughput_fps"],
                                       sum_cpu(r["pipeline_max"]["cpu_percent"])))
        rows.append(report.summary_row("single process, max rate", r["single_max"]["e2e"],
                                       r["single_max"]["throughput_fps"],
                                       r["single_max"]["cpu_percent"]))
    out += [report.table(["run", "n", "p50", "p95", "p99", "fps", "CPU %"], rows), ""]
    people_rows = []
    for label, run in (("pipeline", p), ("MediaPipe Tasks", tasks or {})):
        for n, s in run.get("e2e_by_people", {}).items():
            people_rows.append(report.summary_row(f"{label}, {n} in view", s))
    if people_rows:
        out += [f"End to end by the number of people in view (the pipeline's --max-people "
                f"{r.get('max_people', '?')}), ms", "",
                report.table(["run", "n", "p50", "p95", "p99"], people_rows), ""]
    out += [
        f"Frames: {p['frames_captured']} captured, {p['frames_delivered']} delivered, "
        f"{p['frames_dropped']} dropped (latest wins); stale delivered (a newer frame overtook "
        f"it): {p['stale']} {dict((k, v) for k, v in p['stale_by_hop'].items() if k != 'any')}; "
        "waited in a hop past one frame interval: "
        f"{p['waited_past_interval']} (longest {report.fmt(p['longest_wait_ms'])} ms); "
        f"delivered more than one interval after capture: {p['late']}",
        "",
        "Ratios: " + ", ".join(f"{k} {report.fmt(v)}" for k, v in r["ratios"].items()),
        "",
        report.table(["target", "value", "goal", "met"],
                     [[t["target"], t["value"], t["goal"], "yes" if t["met"] else "NO"]
                      for t in r["targets"]]),
    ]
    return "\n".join(out)


def _pooled_cpu(percent: dict[str, float], stage: str) -> float | None:
    """CPU % of a stage's processes together (detection workers "detect#0", ... as "detect")."""
    mine = [v for k, v in percent.items() if k.split("#", 1)[0] == stage and v is not None]
    return sum(mine) if mine else None


def sum_cpu(percent: dict[str, float]) -> float:
    return sum(v for v in percent.values() if v == v)


def plot(r: dict[str, Any], path: str) -> None:
    series = {"pipeline": r["pipeline"]["series"], "transport floor": r["floor"]["series"],
              "single process": r["single"]["series"], "MediaPipe": r["mediapipe"]["series"]}
    rate = f"{r['fps']:g} fps" if r["fps"] else "max rate"
    report.plot_latency(path, series, title=f"end to end, capture -> subscriber, {rate}, "
                        f"load {r['machine']['loadavg']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--video", default=str(bench_frames.DEFAULT_VIDEO),
                        help="video file (default: the shared street video)")
    parser.add_argument("--fps", type=parse_fps, default=30.0,
                        help="camera rate: 30, 60 or max (default 30)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames of the video to use (default all)")
    parser.add_argument("--warmup", type=int, default=30, help="frames left out (default 30)")
    parser.add_argument("--size", type=bench_frames.parse_size, default=None, metavar="WxH",
                        help="resize frames first, e.g. 640x480 (a webcam's); default native")
    parser.add_argument("--crop", type=bench_frames.parse_crop, default=None,
                        metavar="X0,Y0,X1,Y1",
                        help="keep this part of the video, px (620,0,1280,720 of the street "
                             "video holds one person in every frame); default all")
    parser.add_argument("--engine", help="lifter engine file, or a shipped engine by name "
                        "(default, temporal); default engines/default/lifter.onnx")
    parser.add_argument("--transport", choices=("ipc", "tcp"), default="ipc",
                        help="internal edges (default ipc, as run_pipeline.py)")
    parser.add_argument("--no-smooth", action="store_true",
                        help="pipeline and floor without the smooth process")
    parser.add_argument("--detect-workers", type=detect_workers_arg, default="auto",
                        metavar="N|auto",
                        help="detection processes in the pipeline runs (run_pipeline.py "
                             "--detect-workers; auto: what run_pipeline.py's default picks "
                             "from the free cores when the benchmark starts, the default, so the "
                             "pipeline runs are run_pipeline.py's defaults)")
    parser.add_argument("--no-shm", action="store_true",
                        help="frames through the ipc sockets, not shared memory, in the "
                             "pipeline and the floor")
    parser.add_argument("--colocate-smooth", action="store_true",
                        help="smoothing inside the output process (run_pipeline.py "
                             "--colocate-smooth); the floor without a smooth process")
    parser.add_argument("--max-people", type=int, default=None, metavar="N",
                        help="the pipeline's --max-people and the MediaPipe Tasks peer's "
                             "num_poses (default: run_pipeline.py's)")
    parser.add_argument("--follow-threads", type=int, default=0, metavar="N",
                        help="landmark graphs per detection process in the pipeline runs (0, the "
                             "default: as run_pipeline.py, two per core, at most 4 "
                             "and at most --max-people)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="run everything this many times in turn (default 2)")
    parser.add_argument("--no-throughput", action="store_true",
                        help="skip the max-rate runs that compare throughput")
    parser.add_argument("--json", metavar="OUT", help="write every figure as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="latency per frame and CDF")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        # a SIGTERM unwinds like Ctrl-C, so the frames in /dev/shm and the stages are cleaned up
        old_handler = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return _main(args)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.detect_workers == "auto":
        args.detect_workers, why = auto_detect_workers()
        print(f"--detect-workers auto: {why}", file=sys.stderr)
    r = run_all(args.video, args.fps, args.frames, args.warmup, args.engine,
                throughput=not args.no_throughput, transport=args.transport,
                rounds=args.rounds, size=args.size, smooth=not args.no_smooth,
                detect_workers=args.detect_workers, shared_memory=not args.no_shm,
                colocate_smooth=args.colocate_smooth, max_people=args.max_people,
                crop=args.crop, follow_threads=args.follow_threads)
    print(tables(r))
    if args.json:
        report.write_json(args.json, r)
    if args.plot:
        plot(r, args.plot)
    return 0 if r["pipeline"]["exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
