"""Convert a recording to files analysis tools read: JSON lines, CSV or a numpy .npz.

    python -m pipeline.export run.psrec --format jsonl     # -> run.jsonl, every message
    python -m pipeline.export run.psrec --format csv       # -> run.csv, one row per Pose3D
    python -m pipeline.export run.psrec --format npz -o poses.npz
    python -m pipeline.export run.psrec --format bvh -o run.bvh [--track ID] [--fps N]

Units and axes are the stream's (docs/PROTOCOL.md): 3D in metres in the camera frame
(OpenCV: +X right, +Y down, +Z forward), 2D in pixels (x right, y down), times in ns of the
publishing host's monotonic clock (`t_recv_ns`: the recorder's, same host clock).

- jsonl: one object per recorded message, in order: `topic`, `t_recv_ns`, `type`, then the
  message's fields (arrays as nested lists; `people` a list of objects, one per person with
  its `track_id`; a Frame's image as `{"dtype", "shape"}` only).
- csv: one row per person per Pose3D (a frame with nobody in it has no row): frame_id,
  t_capture_ns, t_recv_ns, track_id, engine_id, image_width, image_height, root_{x,y,z}_m,
  then per joint (pipeline order, names from engines.runtime.skeleton) `<joint>_{x,y,z}_m`,
  `<joint>_{u,v}_px`, `<joint>_conf`, `<joint>_reproj_px`. Floats are written so that they
  read back to the same float32.
- npz: the N Pose3D messages stacked, people padded to P, the most in any frame: frame_id
  (N,), t_capture_ns (N,), t_recv_ns (N,), image_size (N, 2), engine_id (N,), then per
  person slot `present` (N, P) bool, track_id (N, P) int64 (0 in empty slots), joints_3d_m
  (N, P, 17, 3), root_m (N, P, 3), joints_2d_px (N, P, 17, 2), confidence (N, P, 17),
  reproj_err_px (N, P, 17) (zeros in empty slots), and joint_names (17,). One person's
  track: `rows, slots = np.nonzero(d["track_id"] == ID)`.

Messages that do not decode (another schema version, damage) are skipped and counted.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from engines.runtime.skeleton import JOINT_NAMES, NUM_JOINTS
from pipeline.record import Recording, RecordingError
from pipeline.schema import Frame, Message, Pose3D, SchemaError

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("jsonl", "csv", "npz")


@dataclass(frozen=True)
class ExportSummary:
    """rows: records written (messages for jsonl, person rows for csv, frames for npz);
    skipped: messages not decodable or not exported by this format."""

    rows: int
    skipped: int
    path: str


def _decoded(rec: Recording, progress: bool) -> Iterator[tuple[bytes, int, Message | None]]:
    """(topic, t_recv_ns, message or None when it does not decode) for every record."""
    for item in tqdm(rec, total=len(rec), desc="export", unit="msg", disable=not progress):
        try:
            msg = item.decode()
        except SchemaError as exc:
            log.warning("skipped a message that does not decode: %s", exc)
            msg = None
        yield item.topic, item.t_recv_ns, msg


def message_to_dict(msg: Message) -> dict[str, Any]:
    """A JSON-able dict of a message: `type`, then its fields; arrays as nested lists of
    exact float values; a Frame's image as {"dtype", "shape"} (pixels are not exported)."""
    out: dict[str, Any] = {"type": type(msg).__name__}
    for f in fields(msg):
        value = getattr(msg, f.name)
        if isinstance(msg, Frame) and f.name == "image":
            value = {"dtype": value.dtype.str, "shape": list(value.shape)}
        elif isinstance(value, np.ndarray):
            value = value.astype(np.float64).tolist()
        elif f.name == "people":
            value = [{k: v for k, v in message_to_dict(p).items() if k != "type"}
                     for p in value]
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        elif isinstance(value, (np.bool_, np.integer)):
            value = value.item()
        out[f.name] = value
    return out


def csv_columns() -> list[str]:
    """The CSV header, in order."""
    cols = ["frame_id", "t_capture_ns", "t_recv_ns", "track_id", "engine_id",
            "image_width", "image_height", "root_x_m", "root_y_m", "root_z_m"]
    for name in JOINT_NAMES:
        cols += [f"{name}_x_m", f"{name}_y_m", f"{name}_z_m", f"{name}_u_px", f"{name}_v_px",
                 f"{name}_conf", f"{name}_reproj_px"]
    return cols


def _floats(values: np.ndarray) -> list[str]:
    """float32 values as text that reads back to the same float32 (9 significant digits)."""
    return [f"{v:.9g}" for v in np.asarray(values, dtype=np.float64).ravel().tolist()]


def _csv_rows(pose: Pose3D, t_recv_ns: int) -> list[list[Any]]:
    rows = []
    for person in pose.people:
        row: list[Any] = [pose.frame_id, pose.t_capture_ns, t_recv_ns, person.track_id,
                          pose.engine_id, pose.image_size[0], pose.image_size[1]]
        row += _floats(person.root_m)
        per_joint = np.concatenate(
            [person.joints_3d_m, person.joints_2d_px, person.confidence[:, None],
             person.reproj_err_px[:, None]], axis=1,
        )  # (17, 7) in csv_columns() order
        row += _floats(per_joint)
        rows.append(row)
    return rows


def export(
    path: str | os.PathLike, out: str | os.PathLike, fmt: str, *, progress: bool = True
) -> ExportSummary:
    """Write recording `path` to `out` as `fmt` ("jsonl", "csv" or "npz"; see the module doc).

    Raises RecordingError for an unreadable recording, ValueError for an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    rows = skipped = 0
    with Recording(path) as rec:
        if fmt == "jsonl":
            with open(out, "w", encoding="utf-8") as fh:
                for topic, t_recv, msg in _decoded(rec, progress):
                    if msg is None:
                        skipped += 1
                        continue
                    obj = {"topic": topic.decode("utf-8", "replace"), "t_recv_ns": t_recv,
                           **message_to_dict(msg)}
                    fh.write(json.dumps(obj, allow_nan=True) + "\n")
                    rows += 1
        elif fmt == "csv":
            with open(out, "w", encoding="utf-8", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(csv_columns())
                for _, t_recv, msg in _decoded(rec, progress):
                    if not isinstance(msg, Pose3D):
                        skipped += 1
                        continue
                    person_rows = _csv_rows(msg, t_recv)
                    writer.writerows(person_rows)
                    rows += len(person_rows)
        else:
            poses: list[tuple[Pose3D, int]] = []
            for _, t_recv, msg in _decoded(rec, progress):
                if isinstance(msg, Pose3D):
                    poses.append((msg, t_recv))
                else:
                    skipped += 1
            rows = len(poses)
            np.savez_compressed(out, **_stack(poses))
    log.info("exported %d rows to %s (%d messages skipped)", rows, out, skipped)
    return ExportSummary(rows=rows, skipped=skipped, path=str(out))


def _stack(poses: list[tuple[Pose3D, int]]) -> dict[str, np.ndarray]:
    """The npz arrays for a list of (pose, t_recv_ns), people padded to the most in a frame;
    empty arrays of the right shape if none."""
    n = len(poses)
    slots = max((len(p.people) for p, _ in poses), default=0)
    present = np.zeros((n, slots), bool)
    track_id = np.zeros((n, slots), np.int64)
    shapes = {"joints_3d_m": (NUM_JOINTS, 3), "root_m": (3,), "joints_2d_px": (NUM_JOINTS, 2),
              "confidence": (NUM_JOINTS,), "reproj_err_px": (NUM_JOINTS,)}
    arrays = {name: np.zeros((n, slots, *shape), np.float32) for name, shape in shapes.items()}
    for i, (pose, _) in enumerate(poses):
        for k, person in enumerate(pose.people):
            present[i, k] = True
            track_id[i, k] = person.track_id
            for name in shapes:
                arrays[name][i, k] = getattr(person, name)
    return {
        "frame_id": np.array([p.frame_id for p, _ in poses], dtype=np.int64),
        "t_capture_ns": np.array([p.t_capture_ns for p, _ in poses], dtype=np.int64),
        "t_recv_ns": np.array([t for _, t in poses], dtype=np.int64),
        "image_size": np.array([p.image_size for p, _ in poses], dtype=np.int64).reshape(-1, 2),
        "engine_id": np.array([p.engine_id for p, _ in poses], dtype=str),
        "present": present,
        "track_id": track_id,
        **arrays,
        "joint_names": np.array(JOINT_NAMES, dtype=str),
    }


def main(argv: list[str] | None = None, prog: str = "python -m pipeline.export") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert a .psrec recording to JSON lines (every message), CSV (one row "
        "per person per frame, with its track_id) or .npz (pose arrays padded to the most "
        "people in a frame, with a mask) for analysis tools.",
    )
    parser.add_argument("file", help="recording made by --record or `python -m pipeline.record`")
    parser.add_argument("--format", required=True, choices=(*FORMATS, "bvh"),
                        help="output format; bvh: one person's motion for Blender and other "
                             "animation tools (pipeline/bvh_export.py)")
    parser.add_argument("-o", "--out", default=None,
                        help="output file (default: the recording's name with the format's suffix)")
    parser.add_argument("--track", type=int, default=None, metavar="ID",
                        help="bvh: whose motion, a track_id (default: the person present in "
                             "the most frames)")
    parser.add_argument("--fps", type=float, default=None,
                        help="bvh: frame rate to write (default: from the capture times; give "
                             "a video's own rate when it was processed faster or slower than "
                             "real time)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or str(Path(args.file).with_suffix("." + args.format))
    if args.format == "bvh":
        from pipeline.bvh_export import BvhExportError, export_recording

        try:
            bvh = export_recording(args.file, out, args.track, args.fps)
        except (RecordingError, BvhExportError, OSError) as exc:
            print(f"export failed: {exc}", file=sys.stderr)
            return 2
        print(f"track {bvh.track_id}: {bvh.frames} frames of {bvh.joints} joints -> {bvh.path} "
              f"(FK error mean {bvh.fk_error_mm['mean']:.1f} mm)")
        return 0
    if args.track is not None or args.fps is not None:
        parser.error("--track and --fps are for --format bvh")
    try:
        summary = export(args.file, out, args.format)
    except (RecordingError, OSError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    print(f"{summary.rows} rows -> {summary.path} ({summary.skipped} messages skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
