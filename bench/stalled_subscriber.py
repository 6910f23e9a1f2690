"""Does a subscriber that stops reading slow the pipeline? p99 latency with and without one.

    python -m bench.stalled_subscriber --rounds 6 --phase-s 20 --fps 30 --out stall.json

One real pipeline run (the street video decoded into BMPs, played in a loop by the capture
stage at --fps, every real stage under the supervisor; `bench.soak`'s set-up), with a
subscriber in this process reading every pose. The run alternates phases of --phase-s:
  A: only the reader;
  B: the reader plus a second subscriber that connects, subscribes and never reads (its
     receive high-water mark is 1, so the backlog sits on the publisher's side, where the
     PUB send high-water mark must cap it).
A B A B ... for --rounds rounds, so that slow drifts of a shared machine fall on both
conditions alike. Latency is capture -> the output stage's publish stamp (the pipeline's
own latency; the reader's receive time would add this process's scheduling noise).

Reported: p50 / p99 per condition (pooled over rounds) and per round, the B/A ratio of p99
(target: within 10 %), the A/A ratio of p99 between the even and odd A rounds (how much p99
moves with no change at all: the noise floor of the comparison on this machine), poses per
second per condition, and the output stage's resident memory at the end of each phase.
Exit status 0 when |p99 B/A - 1| < 10 %.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from bench import frames as bench_frames
from bench.soak import Subscriber, rss_kib, soak_config
from bench.transport_floor import free_tcp_ports
from pipeline.supervisor import Supervisor
from pipeline.transport import open_socket

log = logging.getLogger("bench.stalled_subscriber")

P99_CHANGE_TARGET = 0.10


def _phase(sup: Supervisor, seconds: float) -> None:
    """Watch the pipeline for `seconds`; raise if it ended."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        code = sup.watch(timeout_s=min(left, 0.5))
        if code != -1:
            raise RuntimeError(f"the pipeline ended with exit code {code}: {sup.failure}")


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def run(rounds: int, phase_s: float, fps: float, video: str, engine: str | None,
        warmup_s: float) -> dict[str, Any]:
    """Run the A/B phases; the figures as a dict (see module docstring)."""
    port = free_tcp_ports(1)[0]
    phases: list[tuple[str, int, float, float, float]] = []  # cond, round, t0, t1 (ns), rss
    with bench_frames.decoded_frames(video) as folder:
        config = soak_config(str(Path(folder) / "*.bmp"), fps, engine, port)
        reader = Subscriber(config.output.publish, config.output.topic,
                            config.output.status_topic)
        reader.start()
        sup = Supervisor(config)
        ctx = zmq.Context()
        try:
            sup.start()
            _phase(sup, warmup_s)
            output_pid = sup.pids()["output"]
            for r in range(rounds):
                for cond in ("A", "B"):
                    stalled = None
                    if cond == "B":
                        stalled = open_socket(ctx, zmq.SUB, connect=config.output.publish,
                                              rcvhwm=1)
                        stalled.setsockopt(zmq.SUBSCRIBE, config.output.topic.encode())
                    t0 = time.monotonic_ns()
                    _phase(sup, phase_s)
                    t1 = time.monotonic_ns()
                    rss = rss_kib(output_pid)
                    if stalled is not None:
                        stalled.close(linger=0)
                    phases.append((cond, r, t0, t1, (rss or 0) / 1024))
                    log.info("round %d %s: %d poses so far, output RSS %.1f MiB", r, cond,
                             reader.n, (rss or 0) / 1024)
        finally:
            sup.stop()
            ctx.term()
            reader.stop_event.set()
            reader.join(timeout=5)
    return summarise(reader, phases, rounds, phase_s, fps)


def summarise(reader: Subscriber, phases: list[tuple[str, int, float, float, float]],
              rounds: int, phase_s: float, fps: float) -> dict[str, Any]:
    t = reader.t_recv[: reader.n]
    e2e = reader.e2e_ms[: reader.n]
    per_round = []
    pooled: dict[str, list[np.ndarray]] = {"A": [], "B": []}
    a_even_odd: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for cond, r, t0, t1, rss in phases:
        sel = e2e[(t >= t0) & (t < t1)]
        pooled[cond].append(sel)
        if cond == "A":
            a_even_odd[r % 2].append(sel)
        per_round.append({"condition": cond, "round": r, "poses": int(len(sel)),
                          "fps": len(sel) / ((t1 - t0) / 1e9), "p50_ms": _pct(sel, 50),
                          "p99_ms": _pct(sel, 99), "output_rss_mib": rss})
    out: dict[str, Any] = {"rounds": rounds, "phase_s": phase_s, "fps_in": fps,
                           "cpu_count": os.cpu_count(), "per_phase": per_round}
    for cond, parts in pooled.items():
        lat = np.concatenate(parts) if parts else np.zeros(0)
        out[cond] = {"poses": int(len(lat)), "p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95),
                     "p99_ms": _pct(lat, 99), "fps": len(lat) / (phase_s * max(len(parts), 1))}
    out["p99_ratio_b_over_a"] = out["B"]["p99_ms"] / out["A"]["p99_ms"]
    out["p50_ratio_b_over_a"] = out["B"]["p50_ms"] / out["A"]["p50_ms"]
    if a_even_odd[0] and a_even_odd[1]:
        even, odd = (np.concatenate(a_even_odd[k]) for k in (0, 1))
        out["p99_ratio_a_odd_over_a_even"] = _pct(odd, 99) / _pct(even, 99)
    rss = {c: [p[4] for p in phases if p[0] == c] for c in ("A", "B")}
    out["output_rss_mib"] = {c: {"first": v[0], "last": v[-1]} for c, v in rss.items() if v}
    return out


def print_report(r: dict[str, Any]) -> None:
    print(f"stalled subscriber: {r['rounds']} rounds x 2 phases of {r['phase_s']:.0f} s at "
          f"{r['fps_in']:.0f} fps ({r['cpu_count']} CPUs)")
    for cond, label in (("A", "reader only"), ("B", "reader + stalled subscriber")):
        c = r[cond]
        print(f"  {cond} {label:<28} {c['poses']:6d} poses {c['fps']:5.1f}/s  p50 "
              f"{c['p50_ms']:6.1f} ms  p95 {c['p95_ms']:6.1f} ms  p99 {c['p99_ms']:6.1f} ms")
    print(f"  p99 B/A {r['p99_ratio_b_over_a']:.3f} (target within "
          f"{P99_CHANGE_TARGET:.0%}); p50 B/A {r['p50_ratio_b_over_a']:.3f}; "
          f"noise floor p99 A(odd)/A(even) "
          f"{r.get('p99_ratio_a_odd_over_a_even', float('nan')):.3f}")
    for p in r["per_phase"]:
        print(f"    round {p['round']} {p['condition']}: {p['poses']:5d} poses p50 "
              f"{p['p50_ms']:6.1f} ms p99 {p['p99_ms']:6.1f} ms output RSS "
              f"{p['output_rss_mib']:.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stalled_subscriber",
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[1:]))
    p.add_argument("--rounds", type=int, default=6, help="A/B rounds (default 6)")
    p.add_argument("--phase-s", type=float, default=20.0, help="seconds per phase (default 20)")
    p.add_argument("--fps", type=float, default=30.0, help="capture pace (default 30)")
    p.add_argument("--warmup-s", type=float, default=10.0,
                   help="seconds run before the first phase (models, JIT, caches)")
    p.add_argument("--video", default=str(bench_frames.DEFAULT_VIDEO))
    p.add_argument("--engine", default=None, help="lifter engine (default: the shipped one)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.phase_s <= 0:
        p.error("--rounds must be >= 1 and --phase-s > 0")
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    result = run(args.rounds, args.phase_s, args.fps, args.video, args.engine, args.warmup_s)
    print_report(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")
    change = abs(result["p99_ratio_b_over_a"] - 1.0)
    if not change < P99_CHANGE_TARGET:
        print(f"MISSED: p99 changed by {change:.1%} with a stalled subscriber "
              f"(target < {P99_CHANGE_TARGET:.0%})")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
