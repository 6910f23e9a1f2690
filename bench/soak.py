"""Soak: the real pipeline for N minutes at a camera's pace; does anything grow or stall?

    python -m bench.soak --minutes 30 --fps 30 --out soak.json

The street video is decoded once into BMPs in /dev/shm and played in a loop by the real
capture stage (`CaptureConfig(images=..., loop=True)`, paced at --fps), through the
supervisor and every real stage, to a subscriber in this process. Every --sample-s seconds
each stage process's resident memory (VmRSS from /proc) is sampled.

Reported (and written as JSON with --out):
- RSS per stage process: after warm-up, at the end, growth in % (target < 5 %), and the
  slope of a straight line through the post-warm-up samples (MB per hour), which is less
  noisy than two end points;
- stalls: gaps of more than --stall-s between two published poses (target 0), the longest gap;
- drops: frames captured but never published (latest-frame semantics drops what the slowest
  stage cannot take: at 30 fps on a slow CPU that is expected, and counted), and each stage's
  own counters (dropped, rejected, restarts);
- end-to-end latency p50 / p99 per 5-minute window, so a slow drift would show.

Not run in CI (it takes minutes). Exit status 0 when the targets are met, 1 when not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from bench import frames as bench_frames
from bench.transport_floor import free_tcp_ports
from pipeline.config import (
    LiftConfig,
    OutputConfig,
    PipelineConfig,
    SupervisorConfig,
    TransportConfig,
)
from pipeline.schema import Pose3D, SchemaError, Status, decode
from pipeline.supervisor import Supervisor
from pipeline.transport import open_socket

log = logging.getLogger("bench.soak")

RSS_GROWTH_TARGET_PCT = 5.0
WINDOW_S = 300.0  # latency is summarised per window of this length


def rss_kib(pid: int) -> int | None:
    """Resident set size of `pid` in KiB (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class Subscriber(threading.Thread):
    """Receives every published pose; keeps (t_recv_ns, frame_id, e2e_ms) compactly."""

    def __init__(self, endpoint: str, topic: str, status_topic: str) -> None:
        super().__init__(name="soak-subscriber", daemon=True)
        self.endpoint = endpoint
        self.topics = (topic.encode(), status_topic.encode())
        self.stop_event = threading.Event()
        self.t_recv = np.zeros(1 << 16, np.int64)
        self.frame_id = np.zeros(1 << 16, np.int64)
        self.e2e_ms = np.zeros(1 << 16, np.float64)
        self.n = 0
        self.statuses: list[tuple[float, str, str]] = []
        self.malformed = 0

    def _grow(self) -> None:
        for name in ("t_recv", "frame_id", "e2e_ms"):
            old = getattr(self, name)
            new = np.zeros(2 * len(old), old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def run(self) -> None:
        ctx = zmq.Context()
        sock = open_socket(ctx, zmq.SUB, connect=self.endpoint, rcvhwm=10_000)
        for t in self.topics:
            sock.setsockopt(zmq.SUBSCRIBE, t)
        try:
            while not self.stop_event.is_set():
                if not sock.poll(100, zmq.POLLIN):
                    continue
                parts = sock.recv_multipart(copy=False)
                t_recv = time.monotonic_ns()
                try:
                    msg = decode(parts[1:])
                except SchemaError:
                    self.malformed += 1
                    continue
                if isinstance(msg, Status):
                    self.statuses.append((time.monotonic(), msg.kind, msg.text))
                    continue
                if not isinstance(msg, Pose3D):
                    continue
                if self.n == len(self.t_recv):
                    self._grow()
                end = msg.stamps[-1][2] if msg.stamps else t_recv
                self.t_recv[self.n] = t_recv
                self.frame_id[self.n] = msg.frame_id
                self.e2e_ms[self.n] = (end - msg.t_capture_ns) / 1e6
                self.n += 1
        finally:
            sock.close(linger=0)
            ctx.term()


def soak_config(images_glob: str, fps: float, engine: str | None, port: int) -> PipelineConfig:
    from pipeline.config import CaptureConfig

    return PipelineConfig(
        capture=CaptureConfig(images=images_glob, images_fps=fps, loop=True),
        lift=LiftConfig(engine_path=engine),
        output=OutputConfig(publish=f"tcp://127.0.0.1:{port}", wait_for_subscribers=1,
                            wait_for_subscribers_s=60.0),
        transport=TransportConfig(kind="ipc", policy="latest"),
        supervisor=SupervisorConfig(log_level="WARNING"),
    )


def _slope_mib_per_h(t_s: np.ndarray, kib: np.ndarray) -> float:
    if len(t_s) < 3 or np.ptp(t_s) <= 0:
        return float("nan")
    slope_kib_per_s = np.polyfit(t_s, kib.astype(np.float64), 1)[0]
    return float(slope_kib_per_s * 3600 / 1024)


def summarise(sub: Subscriber, rss: dict[str, list[tuple[float, int]]], t0: float,
              warmup_s: float, stall_s: float, stats: dict[str, Any], restarts: int
              ) -> dict[str, Any]:
    """The figures reported and written to JSON (see module docstring)."""
    n = sub.n
    t_recv_s = sub.t_recv[:n] / 1e9 - t0
    fids = sub.frame_id[:n]
    e2e = sub.e2e_ms[:n]
    memory = {}
    for name, samples in rss.items():
        arr = np.array([(t, k) for t, k in samples if k is not None], np.float64)
        post = arr[arr[:, 0] >= warmup_s] if len(arr) else arr
        if len(post) < 2:
            memory[name] = {"samples": len(arr)}
            continue
        first, last = post[0, 1], post[-1, 1]
        memory[name] = {
            "rss_warm_mib": first / 1024,
            "rss_end_mib": last / 1024,
            "rss_peak_mib": float(post[:, 1].max() / 1024),
            "growth_pct": float(100.0 * (last - first) / first),
            "slope_mib_per_h": _slope_mib_per_h(post[:, 0], post[:, 1]),
            "samples": int(len(post)),
        }
    gaps = np.diff(t_recv_s) if n > 1 else np.zeros(0)
    stalls = int((gaps > stall_s).sum())
    windows = []
    if n:
        for start in np.arange(0.0, float(t_recv_s[-1]) + 1e-9, WINDOW_S):
            sel = (t_recv_s >= start) & (t_recv_s < start + WINDOW_S)
            if sel.sum() >= 10:
                windows.append({
                    "from_s": float(start), "poses": int(sel.sum()),
                    "p50_ms": float(np.percentile(e2e[sel], 50)),
                    "p99_ms": float(np.percentile(e2e[sel], 99)),
                    "fps": float(sel.sum() / min(WINDOW_S, t_recv_s[-1] - start + 1e-9)),
                })
    captured = int(fids.max() - fids.min() + 1) if n else 0
    return {
        "poses": n,
        "duration_s": float(t_recv_s[-1] - t_recv_s[0]) if n > 1 else 0.0,
        "frames_captured_span": captured,
        "frames_dropped": captured - n,
        "drop_pct": 100.0 * (captured - n) / captured if captured else float("nan"),
        "stalls": stalls,
        "stall_threshold_s": stall_s,
        "longest_gap_s": float(gaps.max()) if len(gaps) else float("nan"),
        "latency_windows": windows,
        "memory": memory,
        "stage_counters": stats,
        "restarts": restarts,
        "statuses": sub.statuses[:50],
        "malformed_received": sub.malformed,
    }


def run(minutes: float, fps: float, video: str, engine: str | None, sample_s: float,
        warmup_s: float, stall_s: float) -> dict[str, Any]:
    port = free_tcp_ports(1)[0]
    with bench_frames.decoded_frames(video) as folder:
        config = soak_config(str(Path(folder) / "*.bmp"), fps, engine, port)
        sub = Subscriber(config.output.publish, config.output.topic, config.output.status_topic)
        sub.start()
        sup = Supervisor(config)
        rss: dict[str, list[tuple[float, int]]] = {}
        t0 = time.monotonic()
        try:
            sup.start()
            t0 = time.monotonic()
            log.info("soak: %.1f min at %.0f fps; stages %s", minutes, fps, sup.pids())
            end = t0 + minutes * 60.0
            next_report = t0 + 60.0
            while time.monotonic() < end:
                code = sup.watch(timeout_s=sample_s)
                now = time.monotonic() - t0
                for name, pid in sup.pids().items():
                    rss.setdefault(name, []).append((now, rss_kib(pid)))
                if code != -1:
                    log.error("soak: the pipeline ended early with exit code %d: %s", code,
                              sup.failure)
                    break
                if time.monotonic() >= next_report:
                    next_report += 60.0
                    log.info("soak: %.0f s, %d poses, RSS %s MiB", now, sub.n,
                             {k: round(v[-1][1] / 1024) for k, v in rss.items() if v[-1][1]})
        finally:
            sup.stop()
            sub.stop_event.set()
            sub.join(timeout=5)
        stats = {name: p.stats for name, p in sup.procs.items()}
        restarts = int(getattr(sup, "restart_count", 0))
        result = summarise(sub, rss, t0, warmup_s, stall_s, stats, restarts)
        result.update(minutes=minutes, fps_in=fps, video=video, sample_s=sample_s,
                      warmup_s=warmup_s, cpu_count=os.cpu_count(),
                      load_avg_end=os.getloadavg())
        return result


def verdict(result: dict[str, Any]) -> list[str]:
    """Missed targets, for people (empty when all are met)."""
    missed = []
    for name, m in result["memory"].items():
        if "growth_pct" in m and m["growth_pct"] >= RSS_GROWTH_TARGET_PCT:
            missed.append(f"{name}: RSS grew {m['growth_pct']:.1f} % (target < "
                          f"{RSS_GROWTH_TARGET_PCT} %)")
    if result["stalls"]:
        missed.append(f"{result['stalls']} stalls longer than {result['stall_threshold_s']} s")
    if result["poses"] == 0:
        missed.append("no pose was published")
    return missed


def print_report(r: dict[str, Any]) -> None:
    print(f"soak: {r['minutes']:.1f} min at {r['fps_in']:.0f} fps, {r['poses']} poses, "
          f"{r['frames_dropped']} frames dropped ({r['drop_pct']:.1f} %), {r['stalls']} stalls "
          f"(> {r['stall_threshold_s']} s; longest gap {r['longest_gap_s']:.2f} s), "
          f"{r['restarts']} restarts")
    print(f"{'process':<10} {'warm MiB':>9} {'end MiB':>8} {'peak MiB':>9} {'growth %':>9} "
          f"{'MiB/h':>7}")
    for name, m in r["memory"].items():
        if "growth_pct" in m:
            print(f"{name:<10} {m['rss_warm_mib']:9.1f} {m['rss_end_mib']:8.1f} "
                  f"{m['rss_peak_mib']:9.1f} {m['growth_pct']:9.2f} {m['slope_mib_per_h']:7.2f}")
    for w in r["latency_windows"]:
        print(f"  from {w['from_s']:6.0f} s: {w['poses']:6d} poses {w['fps']:5.1f} fps, "
              f"e2e p50 {w['p50_ms']:6.1f} ms p99 {w['p99_ms']:6.1f} ms")
    for name, c in r["stage_counters"].items():
        print(f"  {name}: {c}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--fps", type=float, default=30.0, help="capture pace (default 30)")
    p.add_argument("--video", default=str(bench_frames.DEFAULT_VIDEO))
    p.add_argument("--engine", default=None, help="lifter engine (default: the shipped one)")
    p.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    p.add_argument("--warmup-s", type=float, default=60.0,
                   help="RSS growth is measured from this point on (caches, JIT, allocators)")
    p.add_argument("--stall-s", type=float, default=1.0, help="a gap longer than this is a stall")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    result = run(args.minutes, args.fps, args.video, args.engine, args.sample_s,
                 args.warmup_s, args.stall_s)
    print_report(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")
    missed = verdict(result)
    for line in missed:
        print(f"MISSED: {line}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
