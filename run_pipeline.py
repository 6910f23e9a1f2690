"""posestream: real-time monocular 3D human pose, streamed over ZeroMQ.

    python run_pipeline.py --camera 0
    python -m pipeline.subscribe            # in another terminal: one line per pose

This file only turns flags into a PipelineConfig and hands it to the supervisor.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from pipeline.config import (
    auto_detect_workers,
    detect_workers_arg,
    CaptureConfig,
    DetectConfig,
    IMAGE_MAX_PEOPLE,
    LiftConfig,
    ONE_EURO_SINGLE_FRAME,
    ONE_EURO_TEMPORAL,
    OutputConfig,
    PipelineConfig,
    SmoothConfig,
    SupervisorConfig,
    TopologyConfig,
    TransportConfig,
    VIDEO_MAX_PEOPLE,
    look_join_frames_for,
    one_euro_fields,
    one_euro_for_engine_file,
    parse_one_euro,
)
from pipeline.graph import build_graph

EPILOG = """\
stages (each its own process): capture -> detect (mediapipe BlazePose, 2D) -> lift (2D to
3D engine + root translation fit) -> smooth (One Euro) -> output (PUB).

published: PUB on --publish (default tcp://127.0.0.1:5556), topic "pose3d", then one msgpack
message per frame (schema 2): frame_id, capture time, a (stage, t_in_ns, t_out_ns) stamp per
stage, image_size, engine_id, joint_names and `people`: one entry per person with its
track_id (the same person keeps it across frames), joints_3d_m (17, 3) metres in the camera
frame (+X right, +Y down, +Z forward), root_m, joints_2d_px, confidence, reproj_err_px.
Watch it with: python -m pipeline.subscribe [ENDPOINT] [--json]

files: --video and --images are processed whole (every frame, as fast as the pipeline goes;
the run ends with a count of the inputs read, published, skipped and dropped); --realtime
plays them as a camera would (paced, newest frame wins). A camera is always newest-frame-wins.

exit status: 0 when a video/image set has been streamed to the end (processed whole: every
input came back as a pose), 1 when a stage failed for good (its traceback is logged; a stage
that dies or hangs is first restarted, see --max-restarts), 2 for a bad flag, a source that
cannot be opened, a --calib file that is missing, unparsable or made for another aspect ratio
than the source's frames, or a publish endpoint in use (all checked before any stage starts),
3 when a file processed whole lost inputs
(unreadable images, a truncated video, a frame inside a stage that was killed: the last line
says how many, the lines before it why), 130/143 after Ctrl-C / SIGTERM.

examples:
  python run_pipeline.py --camera 0
  python run_pipeline.py --video clip.mp4 --fov 70 --height 1.82
  python run_pipeline.py --video clip.mp4 --realtime --max-frames 300
  python run_pipeline.py --images 'frames/*.jpg' --calib camera.yaml
  python run_pipeline.py --camera 0 --view --record session.psrec
  python run_pipeline.py --camera 0 --detect-workers 2
two hosts (the camera on host A, 10.0.0.5; the rest on host B), the edge encrypted and
only B admitted (keys: python -m pipeline.keys new A --dir keys/A, new B --dir keys/B on
each host; authorize keys/B/B.key --dir keys/edge-authorized on A; copy A.key to B):
  A: python run_pipeline.py --camera 0 --only capture --allow-remote \
       --endpoint capture-detect=tcp://0.0.0.0:5560 \
       --edge-secret keys/A/A.key_secret --edge-authorized keys/edge-authorized
  B: python run_pipeline.py --only detect,lift,smooth,output \
       --endpoint capture-detect=tcp://10.0.0.5:5560 \
       --edge-secret keys/B/B.key_secret --edge-server-key A.key
"""


def _tiles(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none", "0"):
        return ()
    try:
        return tuple(int(g) for g in text.split(","))
    except ValueError:
        raise ValueError(f"--tiles takes grid sizes such as 2,3 or 'none', got {text!r}") from None


def _resolve_workers(value: int | str) -> int:
    if value != "auto":
        return int(value)
    workers, why = auto_detect_workers()
    logging.getLogger("run_pipeline").info("--detect-workers auto: %s", why)
    return workers


def build_parser(prog: str = "run_pipeline.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Stream metric 3D human poses from one camera, video or image set.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("source (pick one; default --camera 0)")
    one = src.add_mutually_exclusive_group()
    one.add_argument("--camera", type=int, metavar="N", help="OpenCV camera index (/dev/videoN)")
    one.add_argument("--video", metavar="FILE",
                     help="a video file: every frame is processed, as fast as the pipeline "
                          "goes (--realtime: paced at its frame rate, newest frame wins)")
    one.add_argument("--images", metavar="GLOB",
                     help="image files in sorted order (quote the pattern: 'dir/*.jpg'), "
                          "each one processed; the person detector runs on every image (add "
                          "--no-smooth when the images are unrelated)")
    src.add_argument("--loop", action="store_true",
                     help="--video/--images: start again at the end (demos, soak tests)")
    src.add_argument("--realtime", action="store_true",
                     help="--video/--images: play the file as a camera would, paced at its "
                          "frame rate (images: 30 per second) with the newest frame winning: "
                          "frames the pipeline cannot keep up with are dropped and counted "
                          "(demos, latency benchmarks). A camera is always played so")
    src.add_argument("--as-fast-as-possible", action="store_true",
                     help="don't pace --video/--images (the default for files; with "
                          "--realtime: newest frame wins, as fast as frames can be read)")
    src.add_argument("--every-frame", action="store_true",
                     help="process every frame, stages waiting for each other instead of "
                          "dropping (the default for --video and --images; with --camera: "
                          "no frame is dropped after capture)")
    src.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    src.add_argument("--max-side", type=int, default=CaptureConfig.max_side, metavar="PX",
                     help="a frame whose longest side is larger (a 24 MP photo, 4K video) is "
                          "scaled down to it at capture; joints are still reported in the "
                          "original's pixels (default %(default)s; 0: never, and a frame over "
                          "48 MiB is then skipped)")
    src.add_argument("--width", type=int, help="camera: requested frame width, px")
    src.add_argument("--height-px", type=int, dest="height_px",
                     help="camera: requested frame height, px")

    ppl = p.add_argument_group("people")
    ppl.add_argument("--max-people", type=int, default=None, metavar="N",
                     help=f"most people per frame (default {VIDEO_MAX_PEOPLE} for a "
                          f"camera or video, {IMAGE_MAX_PEOPLE} for --images); beyond N the "
                          "largest are kept and the rest counted; 1 for a single-person setup")
    ppl.add_argument("--discover-every", type=int, default=DetectConfig.discover_every,
                     metavar="N",
                     help="camera or video: while fewer than --max-people are followed, look "
                          "for new people every N frames (default %(default)s; every frame "
                          "while nobody is); each look is one person-detector run, beside the "
                          "following at low priority")
    ppl.add_argument("--tiles", default=",".join(map(str, DetectConfig.tiles)), metavar="G,G",
                     help="--images: also look for small people in GxG overlapping tiles "
                          "(default %(default)s; 'none' for the whole image only)")

    lift = p.add_argument_group("3D lifting")
    lift.add_argument("--engine", metavar="PATH",
                      help="lifter engine (.onnx), or a shipped one by name: 'default' "
                           "(engines/default, single frame, the default) or 'temporal' "
                           "(engines/temporal: the last 0.87 s of each person, jitters ~3x "
                           "less on detector 2D)")
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
    lift.add_argument("--one-euro", metavar="MIN_CUTOFF,BETA[,D_CUTOFF]",
                      help="One Euro settings (Hz, per m/s, Hz); default %s for a single-frame "
                           "engine, %s for a temporal one (measured: docs/DESIGN.md "
                           "\"Smoothing\"); lower MIN_CUTOFF or BETA: steadier, more lag"
                           % tuple(",".join(f"{v:g}" for v in s[:2])
                                   for s in (ONE_EURO_SINGLE_FRAME, ONE_EURO_TEMPORAL)))

    out = p.add_argument_group("output")
    out.add_argument("--publish", default=OutputConfig.publish, metavar="ENDPOINT",
                     help="ZeroMQ endpoint to publish on (default %(default)s)")
    out.add_argument("--allow-remote", action="store_true",
                     help="allow --publish, and --endpoint edges this run binds, on a "
                          "non-loopback address (exposes the stream: anyone who reaches it "
                          "can read it)")
    out.add_argument("--curve-secret", metavar="FILE",
                     help="CurveZMQ: encrypt the stream and admit only authorised subscribers; "
                          "the publisher's secret key file (python -m pipeline.keys new "
                          "server --dir keys/server); needs --curve-authorized")
    out.add_argument("--curve-authorized", metavar="DIR",
                     help="CurveZMQ: folder of the subscribers' public keys (python -m "
                          "pipeline.keys authorize CLIENT.key --dir DIR)")
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

    dist = p.add_argument_group(
        "several processes and hosts",
        "Edges are named PRODUCER-CONSUMER: capture-detect, detect-lift, lift-smooth, "
        "smooth-output (lift-output with --no-smooth; detect#0-lift ... with "
        "--detect-workers). The producer binds an edge's endpoint, the consumer connects.")
    dist.add_argument("--only", metavar="STAGES",
                      help="run only these stages (comma-separated, e.g. capture or "
                           "detect,lift,smooth,output); each edge to a stage elsewhere needs "
                           "--endpoint")
    dist.add_argument("--endpoint", action="append", default=[], metavar="EDGE=ENDPOINT",
                      help="an edge's endpoint instead of the private default, e.g. "
                           "capture-detect=tcp://0.0.0.0:5560 on the camera host (with "
                           "--allow-remote) and capture-detect=tcp://CAMERA_HOST:5560 on the "
                           "other (repeatable)")
    dist.add_argument("--endpoints", metavar="FILE",
                      help="a JSON file {\"EDGE\": \"ENDPOINT\", ...}; --endpoint wins")
    dist.add_argument("--detect-workers", type=detect_workers_arg, default="auto",
                      metavar="N|auto",
                      help="N detection processes share the frames (each frame to the first "
                           "free one); lift puts their results back in frame order, waiting "
                           "at most --reorder-wait for an earlier frame. auto (the default): "
                           "one per core free at start (busy measured over 0.3 s), at most 3, "
                           "the choice logged")
    dist.add_argument("--reorder-wait", type=float, default=TopologyConfig.reorder_wait_s,
                      metavar="S", help="with --detect-workers: longest hold for an earlier "
                      "frame; one later than that is dropped and counted (default %(default)s)")
    dist.add_argument("--edge-secret", metavar="FILE",
                      help="CurveZMQ for edges to other hosts (any --endpoint off loopback, "
                           "which needs keys or --insecure-edges): this host's secret key "
                           "(python -m pipeline.keys new HOST --dir keys/HOST)")
    dist.add_argument("--edge-authorized", metavar="DIR",
                      help="the run that binds such an edge: folder of the public keys of the "
                           "hosts allowed to connect (python -m pipeline.keys authorize "
                           "OTHER.key --dir DIR)")
    dist.add_argument("--edge-server-key", metavar="FILE",
                      help="the run that connects to such an edge: the public key (.key) of "
                           "the host that binds it")
    dist.add_argument("--insecure-edges", action="store_true",
                      help="send edges to other hosts in the clear, without keys: anyone who "
                           "reaches the port can watch the frames or feed a stage (a trusted, "
                           "closed network only; both runs must say it)")
    dist.add_argument("--colocate-smooth", action="store_true",
                      help="run the One Euro smoothing inside the output process instead of "
                           "its own: one process and one hop less (about 0.4 ms); a crash of "
                           "either restarts both")

    p.add_argument("--max-restarts", type=int, default=SupervisorConfig.max_restarts,
                   metavar="N", help="restart a stage that dies or hangs at most N times a "
                                     "minute (default %(default)s; 0: a failure ends the run)")
    p.add_argument("--transport", choices=("ipc", "tcp"), default="ipc",
                   help="internal edges: unix sockets in a private temp dir (default) or "
                        "loopback tcp")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default %(default)s")
    return p


def _file_period_s(capture: CaptureConfig) -> float | None:
    """A file processed whole is read as fast as the pipeline goes, so capture times say
    nothing about the motion between its frames: the file's own frame period does (temporal
    engines time each person's history by it). None when unknown (an unreadable file: the
    capture preflight reports it)."""
    if capture.images is not None:
        return 1.0 / capture.images_fps
    import cv2

    cap = cv2.VideoCapture(capture.video)
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return 1.0 / fps if fps and 1.0 <= fps <= 1000.0 else None


def _one_euro(args: argparse.Namespace) -> tuple[float, float, float]:
    """--one-euro, else the settings for the engine's kind (read from its metadata)."""
    if args.one_euro:
        return parse_one_euro(args.one_euro)
    if args.no_smooth:
        return ONE_EURO_SINGLE_FRAME
    return one_euro_for_engine_file(args.engine)


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Flags -> PipelineConfig. Raises ValueError for inconsistent values.

    A file (--video, --images) is processed whole: every frame (edge policy "lossless"),
    unpaced. --realtime plays it as a camera: paced, newest frame wins ("latest"), as a
    camera always is; --every-frame asks for "lossless" with any source."""
    is_file = args.video is not None or args.images is not None
    if args.realtime and not is_file:
        raise ValueError("--realtime plays a --video or --images file as a camera would; a "
                         "camera is always played in real time")
    if args.realtime and args.every_frame:
        raise ValueError("--realtime (newest frame wins, drops counted) and --every-frame "
                         "(every frame processed) contradict each other: pick one")
    whole = args.every_frame or (is_file and not args.realtime)
    capture = CaptureConfig(
        camera=args.camera,
        video=args.video,
        images=args.images,
        as_fast_as_possible=args.as_fast_as_possible or (is_file and not args.realtime),
        max_frames=args.max_frames,
        loop=args.loop,
        camera_width=args.width,
        camera_height=args.height_px,
        max_side=args.max_side,
    )
    # a file processed whole is timed by its own frame rate, not by when it was read
    period = _file_period_s(capture) if whole and is_file else None
    return PipelineConfig(
        capture=capture,
        detect=DetectConfig(static_image_mode=capture.source_kind() == "images",
                            max_people=args.max_people, tiles=_tiles(args.tiles),
                            discover_every=args.discover_every,
                            look_join_frames=look_join_frames_for(
                                "lossless" if whole else "latest", args.discover_every)),
        lift=LiftConfig(
            engine_path=args.engine,
            backend=args.backend,
            fov_deg=args.fov,
            calib_path=args.calib,
            height_m=args.height if args.height else None,
            frame_period_s=period,
        ),
        smooth=SmoothConfig(enabled=not args.no_smooth, frame_period_s=period,
                            **one_euro_fields(_one_euro(args))),
        output=OutputConfig(
            publish=args.publish,
            allow_remote=args.allow_remote,
            wait_for_subscribers=args.wait_for_subscribers,
            curve_secret_key=args.curve_secret,
            curve_authorized_dir=args.curve_authorized,
        ),
        transport=TransportConfig(
            kind=args.transport, policy="lossless" if whole else "latest"
        ),
        supervisor=SupervisorConfig(log_level=args.log_level, max_restarts=args.max_restarts),
        topology=TopologyConfig(
            only=tuple(n.strip() for n in args.only.split(",") if n.strip()) if args.only
            else (),
            endpoints=tuple(_edge_endpoints(args).items()),
            detect_workers=_resolve_workers(args.detect_workers),
            reorder_wait_s=args.reorder_wait,
            allow_remote=args.allow_remote,
            colocate=("smooth",) if args.colocate_smooth else (),
            edge_curve_secret=args.edge_secret,
            edge_curve_authorized=args.edge_authorized,
            edge_curve_server=args.edge_server_key,
            insecure_edges=args.insecure_edges,
        ),
    )


def _edge_endpoints(args: argparse.Namespace) -> dict[str, str]:
    """--endpoints FILE, then each --endpoint EDGE=ENDPOINT. Raises ValueError."""
    out: dict[str, str] = {}
    if args.endpoints:
        try:
            with open(args.endpoints, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"--endpoints {args.endpoints}: {exc}") from exc
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise ValueError(f"--endpoints {args.endpoints}: expected a JSON object "
                             '{"capture-detect": "tcp://HOST:PORT", ...}')
        out.update(data)
    for item in args.endpoint:
        edge, sep, endpoint = item.partition("=")
        if not sep or not edge or not endpoint:
            raise ValueError(f"--endpoint {item!r}: write EDGE=ENDPOINT, e.g. "
                             "capture-detect=tcp://127.0.0.1:5560")
        out[edge.strip()] = endpoint.strip()
    return out


def main(argv: list[str] | None = None, prog: str = "run_pipeline.py") -> int:
    """Run the pipeline with these flags (`posestream run` calls this with its own prog)."""
    parser = build_parser(prog)
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
        graph = build_graph(config)  # checks --only / --endpoint; warns for remote binds
        if (args.view or args.record) and "output" not in graph.stage_names():
            raise ValueError("--view and --record watch the output stage of this run: run "
                             "them where output runs, or use python -m pipeline.view / "
                             "pipeline.record ENDPOINT there")
        if (args.view or args.record) and args.curve_secret:
            raise ValueError("--view and --record subscribe without CurveZMQ keys: run "
                             "python -m pipeline.subscribe with --curve-secret/--curve-server "
                             "instead, or leave out --curve-secret")
    except ValueError as exc:
        parser.error(str(exc))  # exits 2
    companions = Companions(config.output.publish, view=args.view, record_path=args.record,
                            log_level=args.log_level)
    if companions.subscriptions:  # so their first poses are not lost to the slow joiner
        config = dataclasses.replace(config, output=dataclasses.replace(
            config.output,
            wait_for_subscribers=config.output.wait_for_subscribers + companions.subscriptions,
        ))
    if config.output.allow_remote and "output" in graph.stage_names():
        logging.getLogger("run_pipeline").warning(
            "publishing on %s: anyone who can reach this address can read the stream",
            config.output.publish,
        )
    from pipeline.supervisor import Supervisor  # after logging is set up

    supervisor = Supervisor(config, graph)
    companions.start()
    try:
        return supervisor.run(
            on_started=lambda _: companions.stop_pipeline_when_viewer_closes(supervisor))
    finally:
        companions.stop(stream_ended=supervisor.eos)

if __name__ == "__main__":
    sys.exit(main())
