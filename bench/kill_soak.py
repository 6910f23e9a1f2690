"""Kill soak: kill -9 random stage processes at random moments of a long looping run.

    python -m bench.kill_soak [--minutes 10] [--kills 100] [--fps 30] [--out kill_soak.json]

The street video (1280x720) looped as an image set paced at --fps through every real stage
(capture, detect, lift, smooth, output; newest frame wins, as a camera), a subscriber
reading every pose and status. After a warm-up, --kills moments spread over the run (evenly
spaced, each moved by a random amount up to a third of the spacing) each SIGKILL one stage
process picked at random. Printed at the end:
- survived: kills after which a pose captured after the kill reached the subscriber within
  --resume-s (2 s: the issue's bound), with the median / worst time it took, per stage;
- frame ids: whether the ids of the poses received kept increasing (repeats and rewinds
  counted);
- orphans: processes of the run (every stage pid and warm spare seen) still alive after the
  supervisor stopped;
- leaked /dev/shm entries: this run's names (its supervisor's ring directory, the decoded
  frames) still in /dev/shm after it.
Not in CI (10 minutes); numbers go in docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import signal
import statistics
import time

from bench.frames import DEFAULT_VIDEO, decoded_frames
from bench.stream_log import StreamLog
from pipeline.config import (
    CaptureConfig,
    LiftConfig,
    OutputConfig,
    PipelineConfig,
    SupervisorConfig,
    TransportConfig,
)
from pipeline.schema import Pose3D
from pipeline.supervisor import Supervisor

log = logging.getLogger("kill_soak")
STAGES = ("capture", "detect", "lift", "smooth", "output")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def soak(minutes: float, kills: int, fps: float, resume_s: float, seed: int,
         warmup_s: float = 20.0) -> dict:
    rng = random.Random(seed)
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    with decoded_frames(DEFAULT_VIDEO) as frames_dir:
        port = _free_port()
        config = PipelineConfig(
            capture=CaptureConfig(images=str(frames_dir / "*.bmp"), images_fps=fps,
                                  loop=True),
            lift=LiftConfig(),
            output=OutputConfig(publish=f"tcp://127.0.0.1:{port}", wait_for_subscribers=1,
                                wait_for_subscribers_s=60.0),
            transport=TransportConfig(kind="ipc", policy="latest"),
            # each stage is killed about kills/5 times in the run: a budget that never ends
            # it (the run is about surviving, not about giving up)
            supervisor=SupervisorConfig(log_level="WARNING", max_restarts=kills,
                                        restart_window_s=60.0),
        )
        poses = StreamLog(config.output.publish)
        sup = Supervisor(config)
        seen: set[int] = set()
        records = []
        t_end = 0.0
        try:
            sup.start()
            t0 = time.monotonic()
            duration = minutes * 60.0
            spacing = (duration - warmup_s - resume_s) / kills
            moments = sorted(warmup_s + (i + 0.5) * spacing
                             + rng.uniform(-spacing / 3, spacing / 3) for i in range(kills))
            pending: list[dict] = []
            t_end = t0 + duration
            while time.monotonic() < t_end:
                code = sup.watch(timeout_s=0.02)
                if code != -1:
                    log.error("the run ended (exit %s): %s", code, sup.failure)
                    break
                seen.update(sup.pids().values())
                if sup._spare is not None:  # the warm spare is a process of the run too
                    seen.add(sup._spare.pid)
                now = time.monotonic()
                if moments and now - t0 >= moments[0]:
                    moments.pop(0)
                    stage = rng.choice(STAGES)
                    pid = sup.pids()[stage]
                    t_kill = time.monotonic_ns()
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    pending.append({"stage": stage, "pid": pid, "t_kill_ns": t_kill,
                                    "at_s": round(now - t0, 2)})
                    records.append(pending[-1])
                recent = [(t, m.t_capture_ns) for t, m in poses.items[-400:]
                          if isinstance(m, Pose3D)]
                for rec in list(pending):
                    first = min((t for t, tc in recent if tc > rec["t_kill_ns"]), default=None)
                    waited = (time.monotonic_ns() - rec["t_kill_ns"]) / 1e9
                    if first is not None:
                        rec["resumed_s"] = round((first - rec["t_kill_ns"]) / 1e9, 3)
                        pending.remove(rec)
                    elif waited > 30:
                        rec["resumed_s"] = None  # never within 30 s
                        pending.remove(rec)
            t_stop = time.monotonic()
        finally:
            seen.update(sup.pids().values())
            sup.stop()
            poses.close()
        time.sleep(1.0)
        orphans = sorted(p for p in seen if _alive(p))
    shm_after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    # other runs on this machine come and go meanwhile: only this run's names count (its
    # supervisor's ring directory, the decoded frames)
    ours = (f"posestream-run-{os.getpid()}-", frames_dir.name)
    leaked = sorted(n for n in shm_after - shm_before if n.startswith(ours))
    ids = [m.frame_id for _, m in poses.poses()]
    statuses = dict(collections.Counter(m.kind for m in poses.statuses()))
    not_increasing = sum(1 for a, b in zip(ids, ids[1:]) if b <= a)
    survived = [r for r in records if r.get("resumed_s") is not None
                and r["resumed_s"] <= resume_s]
    by_stage = {}
    for stage in STAGES:
        times = [r["resumed_s"] for r in records if r["stage"] == stage
                 and r.get("resumed_s") is not None]
        by_stage[stage] = {
            "kills": sum(r["stage"] == stage for r in records),
            "survived": sum(r in survived for r in records if r["stage"] == stage),
            "median_s": round(statistics.median(times), 3) if times else None,
            "worst_s": max(times) if times else None,
        }
    return {
        "minutes": minutes, "fps": fps, "kills": len(records), "survived": len(survived),
        "resume_bound_s": resume_s, "by_stage": by_stage,
        "poses": len(ids), "frame_ids_increasing": not_increasing == 0,
        "frame_id_steps_not_increasing": not_increasing,
        "restarts": {n: p.restarts for n, p in sup.procs.items()},
        "statuses": statuses, "orphans": orphans, "leaked_dev_shm": leaked,
        "processes_seen": len(seen), "run_s": round(t_stop - t0, 1) if records else None,
        "records": records,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--resume-s", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--out", help="write every figure (and each kill) as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    r = soak(args.minutes, args.kills, args.fps, args.resume_s, args.seed)
    print(f"kill soak: {r['minutes']:g} min at {r['fps']:g} fps, {r['kills']} kill -9s")
    print(f"survived (a pose captured after the kill within {r['resume_bound_s']:g} s): "
          f"{r['survived']} of {r['kills']}")
    for stage, s in r["by_stage"].items():
        print(f"  {stage}: {s['survived']} of {s['kills']}, median {s['median_s']} s, "
              f"worst {s['worst_s']} s")
    print(f"poses received: {r['poses']}; frame ids increasing: {r['frame_ids_increasing']} "
          f"({r['frame_id_steps_not_increasing']} steps not increasing)")
    print(f"restarts: {r['restarts']}; statuses: {r['statuses']}")
    print(f"orphans: {len(r['orphans'])} {r['orphans'] or ''}")
    print(f"leaked /dev/shm entries: {len(r['leaked_dev_shm'])} {r['leaked_dev_shm'] or ''}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=1)
    ok = (r["survived"] == r["kills"] and r["frame_ids_increasing"] and not r["orphans"]
          and not r["leaked_dev_shm"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
