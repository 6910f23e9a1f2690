"""Rerun bridge (pipeline/rerun.py): what it writes into a .rrd, read back with Rerun's own
reader (rerun.chunk.RrdReader) and checked by its CLI (`rerun rrd verify`). No viewer window.

Skipped with the reason when rerun-sdk is not installed (pip install -e ".[rerun]").
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

rr = pytest.importorskip("rerun", reason='rerun-sdk is not installed: pip install -e ".[rerun]"')

from engines.runtime import skeleton  # noqa: E402
from engines.runtime.intrinsics import intrinsics_from_fov  # noqa: E402
from engines.runtime.skeleton import JOINT_NAMES  # noqa: E402
from engines.training import bvh  # noqa: E402
from pipeline import rerun as bridge  # noqa: E402

CLIP = "data/mocap/cmu_bvh/131_01.bvh"
WIDTH, HEIGHT = 1280, 720


def read_rrd(path: Path) -> dict[str, list]:
    """{entity path: [record batch of each non-static chunk row...]} via Rerun's reader, plus
    the static entities under key "static"."""
    from rerun.chunk import RrdReader

    rows: dict[str, list] = collections.defaultdict(list)
    for chunk in RrdReader(path).stream():
        batch = chunk.to_record_batch()
        key = "static" if chunk.is_static else chunk.entity_path
        if chunk.is_static:
            rows[key].append((chunk.entity_path, batch))
        else:
            rows[key].extend(batch.slice(i, 1) for i in range(batch.num_rows))
    return rows


def frames_of(rows: list) -> list[int]:
    return sorted(int(b.column("frame")[0].as_py()) for b in rows if "frame" in b.schema.names)


@pytest.fixture(scope="module")
def two_people(shared_file) -> list[list[bridge.PersonArrays]]:
    """60 frames of real motion (CMU 131_01 at 30 fps) as two people in front of the camera:
    track 3 in every frame, track 7 (the same walk, 1 m to the right) in frames 20-39 only.
    2D joints are the projections through the default-FOV camera."""
    motion = bvh.read_bvh(shared_file(CLIP))
    world_mm = skeleton.map_joints(motion.positions()[::4][:60] * bvh.CMU_UNIT_MM,
                                   skeleton.CMU_TO_H36M17, motion.node_names)
    world_m = world_mm / 1000.0 - world_mm[:, :1].mean(axis=0) / 1000.0
    cam = world_m * np.array([1.0, -1.0, -1.0]) + np.array([0.0, 0.0, 4.0])
    intr = intrinsics_from_fov(60.0, WIDTH, HEIGHT)

    def project(j):
        return np.stack([intr.fx * j[..., 0] / j[..., 2] + intr.cx,
                         intr.fy * j[..., 1] / j[..., 2] + intr.cy], -1)

    frames = []
    for f in range(len(cam)):
        people = [bridge.PersonArrays(3, cam[f], project(cam[f]), np.full(17, 2.0, np.float32))]
        if 20 <= f < 40:
            other = cam[f] + np.array([1.0, 0.0, 0.0])
            people.append(bridge.PersonArrays(7, other, project(other),
                                              np.full(17, 5.0, np.float32)))
        frames.append(people)
    return frames


def test_rrd_holds_skeletons_camera_and_scalars_per_track(tmp_path, two_people):
    path = tmp_path / "two.rrd"
    rec = bridge.open_recording(str(path), spawn=False, serve_web=False)
    logger = bridge.RerunLogger(rec)
    for f, people in enumerate(two_people):
        logger.log_frame(1000 + f, 5_000_000_000 + f * 33_333_333, (WIDTH, HEIGHT), people,
                         pipeline_latency_ms=20.0 + f % 3)
    rec.flush()
    rec.disconnect()

    rows = read_rrd(path)
    assert frames_of(rows["/world/people/3/joints"]) == list(range(1000, 1060))
    assert frames_of(rows["/world/people/7/joints"]) == list(range(1020, 1040))
    assert frames_of(rows["/world/camera/people/7/joints"]) == list(range(1020, 1040))
    # track 7 leaves at frame 1040: cleared there, so the viewer does not keep its last pose
    assert frames_of(rows["/world/people/7"]) == [1040]
    assert frames_of(rows["/metrics/reproj_err_px/3"]) == list(range(1000, 1060))
    assert frames_of(rows["/metrics/latency_ms/pipeline"]) == list(range(1000, 1060))
    first = rows["/world/people/3/joints"][0]
    positions = np.array(first.column("Points3D:positions")[0].as_py())
    np.testing.assert_allclose(positions, two_people[0][0].joints_3d_m, atol=1e-6)
    assert first.column("Points3D:keypoint_ids")[0].as_py() == list(range(17))
    assert len(rows["/world/people/3/bones"][0].column("LineStrips3D:strips")[0].as_py()) == 16
    # capture-time timeline: seconds since the first pose
    last = rows["/world/people/3/joints"][-1]
    assert last.column("capture_time")[0].value / 1e9 == pytest.approx(59 * 0.033333333, 1e-6)
    static = dict(rows["static"])
    context = static["/"].to_pylist()[0]
    person = context["AnnotationContext:context"][0][0]["class_description"]
    assert person["info"]["label"] == "person"
    assert [k["label"] for k in person["keypoint_annotations"]] == list(JOINT_NAMES)
    assert sorted(map(tuple, (sorted(c.values()) for c in person["keypoint_connections"]))) \
        == sorted(tuple(sorted(b)) for b in skeleton.BONES)
    pinhole = static["/world/camera"].to_pylist()[0]
    assert pinhole["Pinhole:resolution"][0] == [WIDTH, HEIGHT]
    expected_f = intrinsics_from_fov(60.0, WIDTH, HEIGHT).fx
    k = np.array(pinhole["Pinhole:image_from_camera"][0]).reshape(3, 3).T  # column-major
    np.testing.assert_allclose(k, [[expected_f, 0, 640], [0, expected_f, 360], [0, 0, 1]],
                               rtol=1e-6)
    rerun_cli = shutil.which("rerun") or str(Path(sys.executable).parent / "rerun")
    verified = subprocess.run([rerun_cli, "rrd", "verify", str(path)], capture_output=True,
                              text=True, timeout=60)
    assert verified.returncode == 0, verified.stderr[-2000:]


def test_save_and_serve_web_together_keep_the_whole_file(tmp_path, two_people):
    """--save with --serve-web: the web viewer answers and the file still gets every frame."""
    import urllib.request

    from conftest import free_port

    path, web_port = tmp_path / "served.rrd", free_port()
    rec = bridge.open_recording(str(path), spawn=False, serve_web=True, web_port=web_port,
                                grpc_port=free_port())
    logger = bridge.RerunLogger(rec)
    for f, people in enumerate(two_people[:10]):
        logger.log_frame(f, f * 33_333_333, (WIDTH, HEIGHT), people)
    rec.flush()
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=10) as page:
        assert page.status == 200
    rec.disconnect()
    assert frames_of(read_rrd(path)["/world/people/3/joints"]) == list(range(10))


def test_colours_are_fixed_per_track():
    assert bridge.track_colour(3) == bridge.track_colour(3 + len(bridge.PALETTE))
    assert len({bridge.track_colour(i) for i in range(len(bridge.PALETTE))}) == len(bridge.PALETTE)


def test_bridge_of_a_replayed_street_run_ends_at_end_of_stream(tmp_path, street_recording,
                                                               reaper):
    """A real recording replayed (pipeline.replay), the bridge as its own process: it stops
    by itself at the end-of-stream status, and every pose with a person is in the .rrd."""
    from conftest import free_port
    from pipeline.record import Recording
    from pipeline.schema import Pose3D

    with Recording(street_recording) as rec:
        poses = [m for m in (r.decode() for r in rec) if isinstance(m, Pose3D)]
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "street.rrd"
    bridge_proc = reaper.python("-m", "pipeline.rerun", endpoint, "--save", str(out),
                                "--timeout", "60", stderr=subprocess.PIPE, text=True)
    replay = reaper.python("-m", "pipeline.replay", str(street_recording), "--publish",
                           endpoint, "--speed", "0", "--wait-subscribers", "2")
    assert replay.wait(timeout=60) == 0
    assert bridge_proc.wait(timeout=60) == 0, bridge_proc.stderr.read()[-3000:]
    logged = bridge_proc.stderr.read()
    assert f"{len(poses)} poses logged" in logged, logged[-2000:]
    rows = read_rrd(out)
    per_track: dict[int, set[int]] = collections.defaultdict(set)
    for pose in poses:
        for person in pose.people:
            per_track[person.track_id].add(pose.frame_id)
    main = max(per_track, key=lambda t: len(per_track[t]))
    assert frames_of(rows[f"/world/people/{main}/joints"]) == sorted(per_track[main])
    assert len(per_track[main]) >= 0.75 * len(poses)  # the woman walking through the view
    for track, frames in per_track.items():  # everyone else too, each in its own frames
        assert frames_of(rows[f"/world/people/{track}/joints"]) == sorted(frames)
    assert frames_of(rows["/metrics/latency_ms/pipeline"]) == sorted(p.frame_id for p in poses)
