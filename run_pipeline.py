"""posestream: real-time monocular 3D human pose, streamed over ZeroMQ.

    python run_pipeline.py --camera 0
    python -m pipeline.subscribe            # in another terminal: one line per pose

This file only turns flags into a PipelineConfig and hands it to the supervisor.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from pipeline.config import (
    CaptureConfig,
    DetectConfig,
    LiftConfig,
    OutputConfig,
    PipelineConfig,
    SmoothConfig,
    SupervisorConfig,
    TransportConfig,
)

EPILOG = """\
stages (each its own process): capture -> detect (mediapipe BlazePose, 2D) -> lift (2D to
3D engine + root translation fit) -> smooth (One Euro) -> output (PUB).

published: PUB on --publish (default tcp://127.0.0.1:5556), topic "pose3d", then one msgpack
message per frame: frame_id, capture time, a (stage, t_in_ns, t_out_ns) stamp per stage,
joints_3d_m (17, 3) metres in the camera frame (+X right, +Y down, +Z forward), root_m,
joints_2d_px, confidence, reproj_err_px, person_present, engine_id, joint_names.
Watch it with: python -m pipeline.subscribe [ENDPOINT] [--json]

exit status: 0 when a video/image set has been streamed to the end, 1 when a stage failed
for good (its traceback is logged; a stage that dies or hangs is first restarted, see
--max-restarts), 2 for a bad flag, a source that cannot be opened or a publish endpoint in
use, 130/143 after Ctrl-C / SIGTERM.

examples:
  python run_pipeline.py --camera 0
  python run_pipeline.py --video clip.mp4 --fov 70 --height 1.82
  python run_pipeline.py --video clip.mp4 --as-fast-as-possible --max-frames 300
  python run_pipeline.py --images 'frames/*.jpg' --every-frame --calib camera.yaml
  python run_pipeline.py --camera 0 --view --record session.psrec
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_pipeline.py",
        description="Stream metric 3D human poses from one camera, video or image set.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("source (pick one; default --camera 0)")
    one = src.add_mutually_exclusive_group()
    one.add_argument("--camera", type=int, metavar="N", help="OpenCV camera index (/dev/videoN)")
    one.add_argument("--video", metavar="FILE", help="a video file, paced at its own frame rate")
    one.add_argument("--images", metavar="GLOB",
                     help="image files in sorted order (quote the pattern: 'dir/*.jpg'); the "
                          "person detector runs on every image (add --no-smooth when the images "
                          "are unrelated)")
    src.add_argument("--as-fast-as-possible", action="store_true",
                     help="don't pace --video/--images at their frame rate (benchmarks)")
    src.add_argument("--every-frame", action="store_true",
                     help="process every frame instead of always the newest (offline files; "
                          "stages wait for each other instead of dropping frames)")
    src.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    src.add_argument("--width", type=int, help="camera: requested frame width, px")
    src.add_argument("--height-px", type=int, dest="height_px",
                     help="camera: requested frame height, px")

    lift = p.add_argument_group("3D lifting")
    lift.add_argument("--engine", metavar="PATH",
                      help="lifter engine (.onnx); default engines/default/lifter.onnx")
    lift.add_argument("--backend", choices=("auto", "tensorrt", "onnxruntime"), default="auto",
                      help="inference backend (default auto: TensorRT on an NVIDIA GPU, "
                           "else ONNX Runtime)")
    lift.add_argument("--calib", metavar="FILE",
                      help="camera calibration (OpenCV YAML with a 3x3 camera matrix); "
                           "overrides --fov")
    lift.add_argument("--fov", type=float, default=LiftConfig.fov_deg, metavar="DEG",
                      help="horizontal field of view without --calib (default %(default)s, a "
                           "typical webcam)")
    lift.add_argument("--height", type=float, default=LiftConfig.height_m, metavar="M",
                      help="subject height in metres, sets the metric scale (default "
                           "%(default)s); 0 uses the bone-length prior instead")
    lift.add_argument("--no-smooth", action="store_true",
                      help="publish unsmoothed poses (leaves out the One Euro stage)")

    out = p.add_argument_group("output")
    out.add_argument("--publish", default=OutputConfig.publish, metavar="ENDPOINT",
                     help="ZeroMQ endpoint to publish on (default %(default)s)")
    out.add_argument("--allow-remote", action="store_true",
                     help="allow --publish on a non-loopback address (exposes the stream)")
    out.add_argument("--wait-for-subscribers", type=int, default=0, metavar="N",
                     help="hold the start (up to 10 s) until N subscribers are connected "
                          "(--view and --record are waited for as well)")
    out.add_argument("--view", action="store_true",
                     help="open a live viewer window (2D skeleton, orbiting 3D skeleton, fps, "
                          "latency, drops); q or Esc closes it and stops the run; without a "
                          "display it runs headless and only logs")
    out.add_argument("--record", metavar="FILE",
                     help="record every published message to FILE (.psrec; replay with "
                          "python -m pipeline.replay FILE, convert with python -m "
                          "pipeline.export FILE)")

    p.add_argument("--max-restarts", type=int, default=SupervisorConfig.max_restarts,
                   metavar="N", help="restart a stage that dies or hangs at most N times a "
                                     "minute (default %(default)s; 0: a failure ends the run)")
    p.add_argument("--transport", choices=("ipc", "tcp"), default="ipc",
                   help="internal edges: unix sockets in a private temp dir (default) or "
                        "loopback tcp")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default %(default)s")
    return p


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Flags -> PipelineConfig. Raises ValueError for inconsistent values."""
    capture = CaptureConfig(
        camera=args.camera,
        video=args.video,
        images=args.images,
        as_fast_as_possible=args.as_fast_as_possible,
        max_frames=args.max_frames,
        camera_width=args.width,
        camera_height=args.height_px,
    )
    return PipelineConfig(
        capture=capture,
        detect=DetectConfig(static_image_mode=capture.source_kind() == "images"),
        lift=LiftConfig(
            engine_path=args.engine,
            backend=args.backend,
            fov_deg=args.fov,
            calib_path=args.calib,
            height_m=args.height if args.height else None,
        ),
        smooth=SmoothConfig(enabled=not args.no_smooth),
        output=OutputConfig(
            publish=args.publish,
            allow_remote=args.allow_remote,
            wait_for_subscribers=args.wait_for_subscribers,
        ),
        transport=TransportConfig(
            kind=args.transport, policy="lossless" if args.every_frame else "latest"
        ),
        supervisor=SupervisorConfig(log_level=args.log_level, max_restarts=args.max_restarts),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s supervisor[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    from pipeline.companions import Companions, check_record_path

    try:
        config = config_from_args(args)
        if args.record:
            check_record_path(args.record)
    except ValueError as exc:
        parser.error(str(exc))  # exits 2
    companions = Companions(config.output.publish, view=args.view, record_path=args.record,
                            log_level=args.log_level)
    if companions.subscriptions:  # so their first poses are not lost to the slow joiner
        config = dataclasses.replace(config, output=dataclasses.replace(
            config.output,
            wait_for_subscribers=config.output.wait_for_subscribers + companions.subscriptions,
        ))
    if config.output.allow_remote:
        logging.getLogger("run_pipeline").warning(
            "publishing on %s: anyone who can reach this address can read the stream",
            config.output.publish,
        )
    from pipeline.supervisor import Supervisor  # after logging is set up

    supervisor = Supervisor(config)
    companions.start()
    try:
        return supervisor.run(
            on_started=lambda _: companions.stop_pipeline_when_viewer_closes(supervisor))
    finally:
        companions.stop(stream_ended=supervisor.eos)

if __name__ == "__main__":
    sys.exit(main())
