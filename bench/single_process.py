"""The plain loop a user could write: the pipeline's own stage code in one process, no sockets.

    python -m bench.single_process [--video FILE] [--fps 30|60|max] [--frames N] [--json OUT]

Same frames, capture code and pacing as the pipeline benchmark (bench/frames.py); per frame
`DetectStage.process -> LiftStage.process -> SmoothStage.process` (the very classes the
pipeline's processes run), each timed. Latency per frame: capture -> smoothed pose in hand.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from bench import frames as bench_frames
from bench import report
from bench.lifter import engine_file
from bench.mediapipe_peer import parse_fps
from pipeline.config import (WHOLE_FILE_LOOK_FRAMES, CaptureConfig, DetectConfig, LiftConfig,
                             PipelineConfig)
from pipeline.schema import Frame
from stages.detect import DetectStage
from stages.lift import LiftStage
from stages.smooth import SmoothStage
from stages.track import TrackStage

log = logging.getLogger(__name__)


def run(capture: CaptureConfig, config: PipelineConfig | None = None,
        warmup: int = 30) -> dict[str, Any]:
    """detect -> track -> lift -> smooth on every frame of `capture`, in this process.

    config: the pipeline config whose detect / lift / smooth sections to use (defaults:
    run_pipeline.py's). Returns bench.frames.feed's dict, with parts "detect", "track", "lift",
    "smooth" (ms per frame) and "with_person" (measured frames with a 3D pose).
    """
    config = config or PipelineConfig()
    stages = [DetectStage(config.detect), TrackStage(config.track), LiftStage(config.lift),
              SmoothStage(config.smooth)]
    opened = []
    found = [0]
    try:
        for stage in stages:
            stage.open()
            opened.append(stage)

        def handle(frame: Frame) -> dict[str, float]:
            timings = {}
            msg: Any = frame
            for stage in stages:
                t0 = time.perf_counter_ns()
                msg = stage.process(msg)
                timings[stage.name] = (time.perf_counter_ns() - t0) / 1e6
            if frame.frame_id >= warmup and msg.people:
                found[0] += 1
            return timings

        out = bench_frames.feed(capture, handle, warmup)
    finally:
        for stage in reversed(opened):
            stage.close()
    out["with_person"] = found[0]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.single_process",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--video", default=str(bench_frames.DEFAULT_VIDEO))
    parser.add_argument("--fps", type=parse_fps, default=30.0, help="30, 60 or max")
    parser.add_argument("--frames", type=int, default=None, help="frames to use (default all)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--engine", help="lifter engine (default engines/default/lifter.onnx)")
    parser.add_argument("--look-join-frames", type=int, default=0, metavar="N",
                        help="a look's people join N frames after it began (DetectConfig."
                             "look_join_frames: run_pipeline.py's for a file processed whole "
                             "is %d); 0, the default: on the frame it finishes in, as live"
                             % WHOLE_FILE_LOOK_FRAMES)
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with bench_frames.decoded_frames(args.video, args.frames) as folder, \
            engine_file(args.engine) as engine:
        config = PipelineConfig(detect=DetectConfig(look_join_frames=args.look_join_frames),
                                lift=LiftConfig(engine_path=str(engine)))
        out = run(bench_frames.capture_config(folder, args.fps), config, warmup=args.warmup)
    out["machine"] = report.machine_info()
    print(f"single process (detect -> lift -> smooth), {args.fps or 'max'} fps, "
          f"load {out['machine']['loadavg']}")
    print(report.table(
        ["latency, ms", "n", "p50", "p95", "p99"],
        [report.summary_row("capture -> pose", out["e2e"])]
        + [report.summary_row(k, v) for k, v in out["parts"].items()],
    ))
    print(f"throughput {out['throughput_fps']:.1f} fps, CPU {out['cpu_percent']:.0f} %, "
          f"{out['with_person']} of {out['frames']} frames with a person")
    if args.json:
        report.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
