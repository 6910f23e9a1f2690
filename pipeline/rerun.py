"""Rerun bridge: show the pose stream in the Rerun viewer, or save it as a Rerun .rrd file.

    python -m pipeline.rerun                                   # spawn a viewer, live
    python -m pipeline.rerun tcp://10.0.0.5:5556 --serve-web   # a web viewer for another host
    python -m pipeline.rerun --save run.rrd                    # a file, until end of stream
    python -m pipeline.rerun --save run.rrd --spawn            # both

Needs the optional extra: `pip install -e ".[rerun]"` (rerun-sdk, pinned in pyproject.toml).
It is one more subscriber of the published stream (any publisher: a live pipeline, a
`pipeline.replay`), and it stops at the stream's end-of-stream status, after `--count` poses
or after `--timeout` seconds without one.

What it logs (entity paths; the world is the camera frame, Rerun's RDF: +X right, +Y down,
+Z forward, metres):

- `/` (static): an annotation context, class 0 "person" with our 17 joint names as keypoints
  and `BONES` as keypoint connections, so the viewer names each point;
- `world` (static): view coordinates RDF; `world/camera`: a pinhole camera at the origin with
  the stream's image size. Pose messages do not carry intrinsics: they come from `--calib FILE`
  (the file the pipeline's `--calib` read) or, without it, from `--fov` (default 60 degrees
  horizontal, the pipeline's own default), as the lift stage computes them;
- `world/people/<track_id>/joints` (Points3D, class 0, keypoint ids 0-16) and `.../bones`
  (LineStrips3D): each person's 3D skeleton, in a colour of its own per track id;
- `world/camera/people/<track_id>/joints` and `.../bones`: the 2D skeleton in image pixels;
  a person who leaves the view is cleared;
- `metrics/reproj_err_px/<track_id>`: that person's median joint reprojection error, pixels;
  `metrics/latency_ms/pipeline`: capture to publish, from the message's own stamps (valid
  anywhere, replays too); `metrics/latency_ms/received`: capture to receipt on this host's
  monotonic clock (only logged when it is plausible, i.e. the publisher is on this host);
- timelines: `frame` (the frame id) and `capture_time` (seconds since the first pose's capture).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.runtime.intrinsics import (
    CalibrationError,
    Intrinsics,
    for_image_size,
    intrinsics_from_fov,
    load_calibration,
)
from engines.runtime.skeleton import BONES, JOINT_NAMES, NUM_JOINTS
from pipeline.config import LiftConfig, OutputConfig

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = OutputConfig().publish
INSTALL_HINT = 'the Rerun bridge needs rerun-sdk: pip install -e ".[rerun]" (or pip install ' \
               '"posestream[rerun]")'
#: one colour per track id (track_id % len): Tableau 10
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
PERSON_CLASS_ID = 0
#: --serve-web: the web viewer's HTTP port, and the gRPC port the data is served on (loopback)
WEB_PORT = 9090
GRPC_PORT = 9876
#: a receive latency above this means the publisher's clock is not ours (another host, replay)
PLAUSIBLE_LATENCY_MS = 60_000.0


class RerunMissing(RuntimeError):
    """rerun-sdk is not installed, or the viewer asked for cannot run here; the message says
    what to do instead."""


def import_rerun() -> Any:
    """The rerun module, or RerunMissing with the install command."""
    try:
        import rerun
    except ImportError as exc:
        raise RerunMissing(INSTALL_HINT) from exc
    return rerun


def track_colour(track_id: int) -> tuple[int, int, int]:
    """The RGB colour of a track id in every view."""
    return PALETTE[int(track_id) % len(PALETTE)]


@dataclass(frozen=True)
class PersonArrays:
    """One person of one frame, as plain arrays: joints_3d_m (17, 3) metres, camera frame;
    joints_2d_px (17, 2) pixels; reproj_err_px (17,) pixels."""

    track_id: int
    joints_3d_m: np.ndarray
    joints_2d_px: np.ndarray
    reproj_err_px: np.ndarray


def _bone_segments(joints: np.ndarray) -> np.ndarray:
    """(16, 2, D) one segment per bone, parent to child."""
    return np.stack([np.stack([joints[p], joints[c]]) for c, p in BONES])


class RerunLogger:
    """Logs poses into a Rerun recording stream `rec` (see the module doc for what goes where).

    intrinsics: called with (width, height) of the stream's images, returns the camera's
    Intrinsics (default: the pipeline's default horizontal FOV).
    """

    def __init__(self, rec: Any, intrinsics=None) -> None:
        self.rr = import_rerun()
        self.rec = rec
        self._intrinsics = intrinsics or (
            lambda w, h: intrinsics_from_fov(LiftConfig.fov_deg, w, h))
        self._camera_size: tuple[int, int] | None = None
        self._t0_ns: int | None = None
        self._shown: set[int] = set()
        self.frames = 0
        self._log_static()

    def _log_static(self) -> None:
        rr = self.rr
        self.rec.log("/", rr.AnnotationContext([rr.ClassDescription(
            info=rr.AnnotationInfo(id=PERSON_CLASS_ID, label="person"),
            keypoint_annotations=[rr.AnnotationInfo(id=i, label=name)
                                  for i, name in enumerate(JOINT_NAMES)],
            keypoint_connections=[(p, c) for c, p in BONES],
        )]), static=True)
        self.rec.log("world", rr.ViewCoordinates.RDF, static=True)

    def set_frame(self, frame_id: int, t_capture_ns: int) -> None:
        """Put what follows on the frame and capture-time timelines."""
        if self._t0_ns is None:
            self._t0_ns = t_capture_ns
        self.rec.set_time("frame", sequence=int(frame_id))
        self.rec.set_time("capture_time", duration=(t_capture_ns - self._t0_ns) / 1e9)

    def log_camera(self, image_size: tuple[int, int]) -> None:
        """The pinhole camera at the origin, (re)logged when the image size changes."""
        width, height = int(image_size[0]), int(image_size[1])
        if self._camera_size == (width, height):
            return
        intr = self._intrinsics(width, height)
        self.rec.log("world/camera", self.rr.Pinhole(
            focal_length=[intr.fx, intr.fy], principal_point=[intr.cx, intr.cy],
            resolution=[width, height], camera_xyz=self.rr.ViewCoordinates.RDF,
            image_plane_distance=1.0), static=True)
        self._camera_size = (width, height)

    def log_person(self, person: PersonArrays) -> None:
        """One person's 3D and 2D skeleton and reprojection error at the current time."""
        rr, tid = self.rr, int(person.track_id)
        colour = track_colour(tid)
        ids = np.arange(NUM_JOINTS)
        joints_3d = np.asarray(person.joints_3d_m, dtype=np.float32)
        joints_2d = np.asarray(person.joints_2d_px, dtype=np.float32)
        self.rec.log(f"world/people/{tid}/joints", rr.Points3D(
            joints_3d, class_ids=PERSON_CLASS_ID, keypoint_ids=ids, colors=colour, radii=0.02))
        self.rec.log(f"world/people/{tid}/bones", rr.LineStrips3D(
            _bone_segments(joints_3d), colors=colour, radii=0.01))
        self.rec.log(f"world/camera/people/{tid}/joints", rr.Points2D(
            joints_2d, class_ids=PERSON_CLASS_ID, keypoint_ids=ids, colors=colour, radii=3.0))
        self.rec.log(f"world/camera/people/{tid}/bones", rr.LineStrips2D(
            _bone_segments(joints_2d), colors=colour, radii=1.5))
        self.rec.log(f"metrics/reproj_err_px/{tid}",
                     rr.Scalars(float(np.median(person.reproj_err_px))))

    def log_frame(self, frame_id: int, t_capture_ns: int, image_size: tuple[int, int],
                  people: Sequence[PersonArrays], pipeline_latency_ms: float | None = None,
                  received_latency_ms: float | None = None) -> None:
        """Everything about one frame: camera, each person, latencies; people seen in the
        previous frame and absent now are cleared."""
        self.set_frame(frame_id, t_capture_ns)
        self.log_camera(image_size)
        present = {int(p.track_id) for p in people}
        for gone in sorted(self._shown - present):
            self.rec.log(f"world/people/{gone}", self.rr.Clear(recursive=True))
            self.rec.log(f"world/camera/people/{gone}", self.rr.Clear(recursive=True))
        for person in people:
            self.log_person(person)
        self._shown = present
        if pipeline_latency_ms is not None:
            self.rec.log("metrics/latency_ms/pipeline", self.rr.Scalars(pipeline_latency_ms))
        if received_latency_ms is not None and 0 <= received_latency_ms < PLAUSIBLE_LATENCY_MS:
            self.rec.log("metrics/latency_ms/received", self.rr.Scalars(received_latency_ms))
        self.frames += 1


def people_of(pose: Any) -> list[PersonArrays]:
    """The people of a pipeline.schema Pose3D as PersonArrays."""
    return [PersonArrays(p.track_id, p.joints_3d_m, p.joints_2d_px, p.reproj_err_px)
            for p in pose.people]


def log_pose(logger: RerunLogger, pose: Any, t_recv_ns: int | None = None) -> None:
    """One Pose3D message into `logger` (latencies from its stamps and the receive time)."""
    pipeline_ms = ((pose.stamps[-1][2] - pose.t_capture_ns) / 1e6) if pose.stamps else None
    received_ms = None if t_recv_ns is None else (t_recv_ns - pose.t_capture_ns) / 1e6
    logger.log_frame(pose.frame_id, pose.t_capture_ns, pose.image_size, people_of(pose),
                     pipeline_latency_ms=pipeline_ms, received_latency_ms=received_ms)


def is_end_of_stream(msg: Any) -> bool:
    """True for the Status the output stage publishes after its last pose."""
    from pipeline.schema import Status

    return isinstance(msg, Status) and msg.kind == "info" and msg.text == "end of stream"


def bridge(messages: Iterable[Any], logger: RerunLogger, *, max_poses: int | None = None) -> int:
    """Log every Pose3D of `messages` until the end-of-stream Status (or max_poses); returns
    the number of poses logged. Other Status messages go to the viewer's text log."""
    from pipeline.schema import Pose3D, Status

    n = 0
    for msg in messages:
        if isinstance(msg, Pose3D):
            log_pose(logger, msg, time.monotonic_ns())
            n += 1
            if max_poses is not None and n >= max_poses:
                break
        elif isinstance(msg, Status):
            logger.rec.log("status", logger.rr.TextLog(f"{msg.kind}: {msg.text}"))
            if is_end_of_stream(msg):
                break
    return n


def open_recording(save: str | None, spawn: bool, serve_web: bool, *,
                   web_port: int = WEB_PORT, grpc_port: int = GRPC_PORT) -> Any:
    """A Rerun recording stream with the sinks asked for (a file, a spawned viewer, a web
    viewer on web_port fed from a loopback gRPC server on grpc_port). Raises RerunMissing."""
    rr = import_rerun()
    rec = rr.RecordingStream("posestream")
    sinks = []
    if save:
        sinks.append(rr.FileSink(save))
    if spawn:
        from pipeline.view import has_display

        if not has_display() and not os.environ.get("WAYLAND_DISPLAY"):
            raise RerunMissing("no display here for a Rerun viewer window: use --save FILE.rrd "
                               "(open it later with `rerun FILE.rrd`) or --serve-web")
        # the viewer that rerun-sdk ships sits beside this interpreter (a venv's bin/), which
        # need not be on PATH
        exe = Path(sys.executable).with_name("rerun")
        rr.spawn(connect=False, executable_path=str(exe) if exe.is_file() else None)
        sinks.append(rr.GrpcSink())
    server = None
    if serve_web:  # a gRPC server in this process, beside the file sink (not instead of it)
        server = rr.GrpcServerSink(bind_ip="127.0.0.1", port=grpc_port)
        sinks.append(server)
    if sinks:
        rec.set_sinks(*sinks)
    if server is not None:
        rr.serve_web_viewer(web_port=web_port, connect_to=server.uri, open_browser=False)
        log.info("Rerun web viewer: open http://127.0.0.1:%d/?url=%s in a browser (on this "
                 "host, or through ssh -L %d:127.0.0.1:%d -L %d:127.0.0.1:%d)", web_port,
                 server.uri, web_port, web_port, grpc_port, grpc_port)
    return rec


def _intrinsics_option(args: argparse.Namespace):
    if args.calib:
        base: Intrinsics = load_calibration(args.calib)
        return lambda w, h: for_image_size(base, (w, h), args.calib)
    return lambda w, h: intrinsics_from_fov(args.fov, w, h)


def main(argv: list[str] | None = None, prog: str = "python -m pipeline.rerun") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Show the published 3D poses in the Rerun viewer (skeletons per track id\n"
        "in 3D and on the image, the camera, reprojection error and latency over time) or\n"
        "save them as a .rrd file. Stops at the stream's end. Needs pip install -e \".[rerun]\".",
        epilog=__doc__[__doc__.index("What it logs"):] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("endpoint", nargs="?", default=DEFAULT_ENDPOINT,
                        help=f"publisher to connect to (default {DEFAULT_ENDPOINT})")
    parser.add_argument("--save", metavar="FILE.rrd",
                        help="write a Rerun recording file (open it later with `rerun FILE.rrd`)")
    viewer = parser.add_mutually_exclusive_group()
    viewer.add_argument("--spawn", action="store_true",
                        help="start a Rerun viewer window and stream into it (the default "
                             "without --save)")
    viewer.add_argument("--serve-web", action="store_true",
                        help="serve a web viewer (for a browser, e.g. on a headless host)")
    parser.add_argument("--fov", type=float, default=LiftConfig.fov_deg, metavar="DEG",
                        help="horizontal field of view for the camera's pinhole (default "
                             "%(default)s, the pipeline's default); use what the pipeline used")
    parser.add_argument("--calib", metavar="FILE",
                        help="camera calibration file (as the pipeline's --calib); overrides --fov")
    parser.add_argument("--count", type=int, default=None, help="stop after N poses")
    parser.add_argument("--timeout", type=float, default=None,
                        help="stop after this many seconds without a message")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spawn = args.spawn or not (args.save or args.serve_web)
    try:
        intrinsics = _intrinsics_option(args)
        rec = open_recording(args.save, spawn, args.serve_web)
    except (RerunMissing, CalibrationError, FileNotFoundError) as exc:
        parser.error(str(exc))
    from pipeline.subscribe import subscribe

    logger = RerunLogger(rec, intrinsics)
    stream = subscribe(args.endpoint, timeout_s=args.timeout, include_status=True)
    log.info("rerun bridge: %s -> %s", args.endpoint, ", ".join(
        s for s, on in (("file " + str(args.save), args.save), ("viewer", spawn),
                        ("web viewer", args.serve_web)) if on))
    try:
        n = bridge(stream, logger, max_poses=args.count)
        log.info("rerun bridge: %d poses logged%s", n, f" to {args.save}" if args.save else "")
        if args.serve_web:
            log.info("stream ended; the web viewer keeps serving it until Ctrl-C")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()
        rec.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
