"""Turn timestamps into figures: summaries, the per-stage / per-hop breakdown read off the
`stamps` every message carries, CPU use from /proc, and the outputs (text tables, JSON, a
PNG plot drawn with matplotlib's Agg backend).

Every latency here is in milliseconds, computed from `time.monotonic_ns()` values (one clock
for every process on a host). A summary is a dict `{n, p50, p95, p99, mean, max}`; an empty
sample gives n 0 and NaN figures (JSON null).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: stages whose compute is the "work" of the pipeline; everything else is overhead.
WORK_STAGES: tuple[str, ...] = ("detect", "lift")


# --------------------------------------------------------------------------- summaries
def summarize(samples_ms: Iterable[float]) -> dict[str, float]:
    """{n, p50, p95, p99, mean, max} of latencies in ms (NaN figures when empty)."""
    a = np.asarray(list(samples_ms), dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        nan = float("nan")
        return {"n": 0, "p50": nan, "p95": nan, "p99": nan, "mean": nan, "max": nan}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "n": int(a.size),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(a.mean()),
        "max": float(a.max()),
    }


def finite_mean(values: Iterable[float]) -> float:
    """Mean of the finite values, NaN when there are none."""
    a = np.asarray(list(values), dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def ratio(a: float, b: float) -> float:
    """a / b, NaN when either is missing or b is 0."""
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return float("nan")
    return a / b


# --------------------------------------------------------------------------- stamps
def breakdown(
    records: Sequence[tuple[int, int, Sequence[Sequence[Any]], int]],
    frame_interval_ms: float | None = None,
    last_frame_id: int | None = None,
) -> dict[str, Any]:
    """Per-stage compute, per-hop transport, end to end and overhead from message stamps.

    records: one `(frame_id, t_capture_ns, stamps, t_receive_ns)` per message the subscriber
    got, stamps as on the message: `((stage, t_in_ns, t_out_ns), ...)` in path order.
    frame_interval_ms: the camera's frame interval, for two informational counts (None: not
    counted): "waited_past_interval", messages that waited in some hop longer than one interval
    (leaving out the stream's last frame, `last_frame_id`, which nothing newer can replace),
    and "late", messages delivered more than one interval after capture (compute counts here:
    a detector slower than the camera makes poses late, not stale).

    "stale": messages that a newer one overtook: some newer delivered message had already
    left the upstream stage of a hop before this one arrived at its downstream stage, so the
    downstream stage worked on (or the subscriber got) an older frame while a newer one was
    waiting. Latest-wins must keep this at 0. Records of several runs one after another (frame
    ids start again) are checked run by run.

    Returns {"stages": {name: summary of t_out - t_in}, "hops": {"a->b": summary of
    t_in(b) - t_out(a)}, "e2e": summary of t_receive - t_capture, "overhead": summary of
    e2e - compute of WORK_STAGES, "transport_total": summary of the hops' sum per message,
    "stale", "waited_past_interval", "late": counts, "longest_wait_ms": the longest single
    hop, "frames": n, "series": per-frame lists}.
    The last hop is "output->subscriber" (t_receive - t_out of the last stage). Replicas of a
    stage (detection workers "detect#0", "detect#1", ...) are pooled under the stage's name.
    """
    stage_ms: dict[str, list[float]] = {}
    hop_ms: dict[str, list[float]] = {}
    e2e_ms: list[float] = []
    overhead_ms: list[float] = []
    transport_ms: list[float] = []
    longest_wait_ms: list[float] = []
    waited = 0
    frame_ids: list[int] = []
    for frame_id, t_capture_ns, stamps, t_receive_ns in records:
        e2e = (t_receive_ns - t_capture_ns) / 1e6
        work = 0.0
        moving = 0.0
        longest = 0.0
        prev_name, prev_out = None, None
        for name, t_in, t_out in stamps:
            name = name.split("#", 1)[0]  # replicas ("detect#0", "detect#1") pool as "detect"
            compute = (t_out - t_in) / 1e6
            stage_ms.setdefault(name, []).append(compute)
            if name in WORK_STAGES:
                work += compute
            if prev_name is not None:
                hop = (t_in - prev_out) / 1e6
                hop_ms.setdefault(f"{prev_name}->{name}", []).append(hop)
                moving += hop
                longest = max(longest, hop)
            prev_name, prev_out = name, t_out
        if prev_name is not None:
            hop = (t_receive_ns - prev_out) / 1e6
            hop_ms.setdefault(f"{prev_name}->subscriber", []).append(hop)
            moving += hop
            longest = max(longest, hop)
        transport_ms.append(moving)
        longest_wait_ms.append(longest)
        if frame_interval_ms is not None and longest > frame_interval_ms and (
            last_frame_id is None or frame_id < last_frame_id
        ):
            waited += 1
        e2e_ms.append(e2e)
        overhead_ms.append(e2e - work)
        frame_ids.append(int(frame_id))
    return {
        "frames": len(e2e_ms),
        "stages": {k: summarize(v) for k, v in stage_ms.items()},
        "hops": {k: summarize(v) for k, v in hop_ms.items()},
        "e2e": summarize(e2e_ms),
        "overhead": summarize(overhead_ms),
        "transport_total": summarize(transport_ms),
        "stale": overtaken(records),
        "stale_by_hop": overtaken_by_hop(records),
        "waited_past_interval": waited if frame_interval_ms is not None else None,
        "late": (sum(e > frame_interval_ms for e in e2e_ms)
                 if frame_interval_ms is not None else None),
        "longest_wait_ms": max(longest_wait_ms, default=float("nan")),
        "series": {
            "frame_id": frame_ids,
            "e2e_ms": e2e_ms,
            "overhead_ms": overhead_ms,
            "stage_ms": stage_ms,
        },
    }


def overtaken(records: Sequence[tuple[int, int, Sequence[Sequence[Any]], int]]) -> int:
    """How many records a newer one overtook in some hop (see `breakdown`, "stale")."""
    return overtaken_by_hop(records)["any"]


def overtaken_by_hop(records: Sequence[tuple[int, int, Sequence[Sequence[Any]], int]]
                     ) -> dict[str, int]:
    """{"a->b": records overtaken in that hop, ..., "any": records overtaken anywhere}."""
    runs: list[list[Any]] = []
    last_id = None
    for rec in records:
        if last_id is None or rec[0] <= last_id:
            runs.append([])  # frame ids start again: the next run
        runs[-1].append(rec)
        last_id = rec[0]
    counts: dict[str, int] = {}
    anywhere = 0
    for run in runs:
        run.sort(key=lambda r: r[0])
        paths = [[tuple(s) for s in r[2]] + [("subscriber", r[3], r[3])] for r in run]
        hops = min(len(p) for p in paths) - 1
        flagged = [False] * len(run)
        for h in range(hops):
            name = f"{paths[0][h][0]}->{paths[0][h + 1][0]}"
            newest_left = float("inf")  # earliest departure of any newer message
            for i in range(len(run) - 1, -1, -1):
                if newest_left < paths[i][h + 1][1]:
                    flagged[i] = True
                    counts[name] = counts.get(name, 0) + 1
                newest_left = min(newest_left, paths[i][h][2])
        anywhere += sum(flagged)
    counts["any"] = anywhere
    return counts


def throughput_fps(t_receive_ns: Sequence[int]) -> float:
    """Messages per second between the first and the last receive time."""
    if len(t_receive_ns) < 2:
        return float("nan")
    span = (max(t_receive_ns) - min(t_receive_ns)) / 1e9
    return (len(t_receive_ns) - 1) / span if span > 0 else float("nan")


# --------------------------------------------------------------------------- several runs
def merge_stamped(runs: Sequence[dict[str, Any]], frame_interval_ms: float | None,
                  last_frame_id: int | None = None) -> dict[str, Any]:
    """Join runs of the same stamped benchmark (each with raw `records`, `throughput_fps`,
    `cpu_percent`) into one: breakdown over every record, throughput and CPU averaged over
    runs, per-run figures kept under "per_run" (without their records)."""
    records = [rec for r in runs for rec in r["records"]]
    out = breakdown(records, frame_interval_ms, last_frame_id)
    out["series"]["frame_id"] = list(range(len(records)))  # runs one after the other
    out["throughput_fps"] = finite_mean([r["throughput_fps"] for r in runs])
    names = {k for r in runs for k in r["cpu_percent"]}
    out["cpu_percent"] = {k: finite_mean([r["cpu_percent"].get(k, np.nan) for r in runs])
                          for k in sorted(names)}
    out["per_run"] = [{k: v for k, v in r.items() if k not in ("records", "series")}
                      for r in runs]
    out["runs"] = len(runs)
    return out


def by_people(pairs: Sequence[tuple[int, float]]) -> dict[str, Any]:
    """{people in view (as text): summary of the e2e ms of frames with that many}, from
    (people, e2e ms) pairs."""
    groups: dict[int, list[float]] = {}
    for n, ms in pairs:
        groups.setdefault(int(n), []).append(float(ms))
    return {str(n): summarize(v) for n, v in sorted(groups.items())}


def merge_fed(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Join runs of an in-process loop (bench.frames.feed results) into one."""
    e2e = [x for r in runs for x in r["raw"]["e2e_ms"]]
    parts: dict[str, list[float]] = {}
    for r in runs:
        for k, v in r["raw"]["parts"].items():
            parts.setdefault(k, []).extend(v)
    out = {
        "frames": len(e2e),
        "e2e": summarize(e2e),
        "parts": {k: summarize(v) for k, v in parts.items()},
        "throughput_fps": finite_mean([r["throughput_fps"] for r in runs]),
        "cpu_percent": finite_mean([r["cpu_percent"] for r in runs]),
        "series": {"frame_id": list(range(len(e2e))), "e2e_ms": e2e},
        "per_run": [{k: v for k, v in r.items() if k not in ("raw", "series")} for r in runs],
        "runs": len(runs),
    }
    for key in ("with_person",):
        if all(key in r for r in runs):
            out[key] = sum(r[key] for r in runs)
    if all("people_e2e" in r for r in runs):
        out["e2e_by_people"] = by_people([pair for r in runs for pair in r["people_e2e"]])
    out["per_run"] = [{k: v for k, v in r.items() if k not in ("people_e2e",)}
                      for r in out["per_run"]]
    return out


# --------------------------------------------------------------------------- CPU, machine
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by process `pid` (all its threads), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields after the ")" start at field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class CpuMeter:
    """CPU use per process between `start()` and `stop()`: percent of one core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self._t0 = 0.0
        self._c0: dict[str, float | None] = {}
        self.percent: dict[str, float] = {}

    def start(self) -> None:
        import time

        self._t0 = time.monotonic()
        self._c0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        import time

        wall = time.monotonic() - self._t0
        for name, pid in self.pids.items():
            c1, c0 = cpu_seconds(pid), self._c0.get(name)
            self.percent[name] = (
                100.0 * (c1 - c0) / wall if c0 is not None and c1 is not None and wall > 0
                else float("nan")
            )
        return self.percent


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, load, Python, library versions."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    versions = {}
    for mod in ("numpy", "zmq", "msgpack", "numba", "onnxruntime", "mediapipe", "cv2"):
        m = sys.modules.get(mod)
        if m is not None:
            versions[mod] = getattr(m, "__version__", "?")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "loadavg": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


# --------------------------------------------------------------------------- output
def fmt(x: Any, digits: int = 2) -> str:
    """A number for a table: fixed digits, '-' for missing."""
    if x is None:
        return "-"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(xf):
        return "-"
    return f"{xf:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A GitHub-markdown table (also readable on a terminal)."""
    cells = [[fmt(c, digits) if not isinstance(c, str) else c for c in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
        for i, h in enumerate(headers)
    ]
    line = lambda cols: "| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |"
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def summary_row(label: str, s: dict[str, float], *extra: Any) -> list[Any]:
    """[label, n, p50, p95, p99, *extra] for a latency table."""
    return [label, s["n"], s["p50"], s["p95"], s["p99"], *extra]


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        xf = float(x)
        return xf if math.isfinite(xf) else None
    return x


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON (NaN and inf as null, numpy values as plain numbers)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_jsonable(data), f, indent=1, sort_keys=False)
        f.write("\n")


def plot_latency(path: str | Path, series: dict[str, dict[str, Sequence[float]]],
                 title: str = "") -> None:
    """PNG: end-to-end latency per frame (left) and its CDF (right), one line per run.

    series: label -> {"frame_id": [...], "e2e_ms": [...]}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_c) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, s in series.items():
        e2e = np.asarray(s.get("e2e_ms", []), dtype=np.float64)
        if e2e.size == 0:
            continue
        ids = np.asarray(s.get("frame_id", range(e2e.size)))
        ax_t.plot(ids, e2e, ".-", ms=3, lw=0.8, label=label)
        xs = np.sort(e2e)
        ax_c.plot(xs, np.arange(1, xs.size + 1) / xs.size, lw=1.2, label=label)
    ax_t.set_xlabel("measured frame (runs one after another)")
    ax_t.set_ylabel("latency, ms")
    ax_t.set_title("latency per frame")
    ax_t.grid(alpha=0.3)
    ax_c.set_xlabel("latency, ms")
    ax_c.set_ylabel("fraction of frames")
    ax_c.set_title("CDF")
    ax_c.grid(alpha=0.3)
    ax_c.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
