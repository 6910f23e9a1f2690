"""BVH export (pipeline/bvh_export.py): inverse kinematics onto a rigid 17-joint skeleton, read
back with the repository's own BVH reader (engines/training/bvh.py), and imported by Blender
headless when Blender is installed.

The motion: CMU clip 131_03 (start, hop, stop) mapped to our 17 joints, every 4th frame (30 fps),
metres, turned into the camera frame a pipeline would publish (the person 3 m in front of the
camera), so the export does the same axis change as for a recording.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from engines.runtime import skeleton
from engines.runtime.skeleton import JOINT_NAMES, NUM_JOINTS
from engines.training import bvh
from pipeline import bvh_export as be

CLIP = "data/mocap/cmu_bvh/131_03.bvh"
BLENDER_SCRIPT = REPO / "tests" / "blender" / "import_bvh.py"


@pytest.fixture(scope="module")
def mocap_camera_m(shared_file) -> tuple[np.ndarray, np.ndarray]:
    """(F, 17, 3) metres in the OpenCV camera frame, and (F,) capture times in seconds."""
    motion = bvh.read_bvh(shared_file(CLIP))
    world_mm = skeleton.map_joints(motion.positions()[::4] * bvh.CMU_UNIT_MM,
                                   skeleton.CMU_TO_H36M17, motion.node_names)
    world_m = world_mm / 1000.0 - world_mm[:, :1].mean(axis=0) / 1000.0  # pelvis about origin
    cam = world_m @ be.CAMERA_TO_Y_UP.T + np.array([0.0, 0.0, 3.0])  # Y-up -> camera, 3 m ahead
    t = np.arange(len(cam)) * (4 * motion.frame_time_s)
    return cam, t


def _aligned_error_mm(points: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-point distance after the best rigid alignment (Kabsch) of points onto reference."""
    a, b = points.reshape(-1, 3), reference.reshape(-1, 3)
    ca, cb = a.mean(0), b.mean(0)
    u, _, vt = np.linalg.svd((b - cb).T @ (a - ca))
    r = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    return np.linalg.norm((a - ca) @ r.T + cb - b, axis=1).reshape(points.shape[:-1]) * 1000, r


def test_export_reads_back_and_reproduces_the_joints(tmp_path, mocap_camera_m):
    cam, t = mocap_camera_m
    joints = be.camera_to_y_up(cam)
    motion = be.solve_motion(joints, t)
    path = be.write_bvh(tmp_path / "hop.bvh", motion)

    back = bvh.read_bvh(path)
    assert sorted(back.joint_names) == sorted(JOINT_NAMES) and back.joint_names[0] == "pelvis"
    for node in back.nodes:  # our hierarchy: each joint under its parent of skeleton.PARENTS
        if not node.is_end_site and node.parent >= 0:
            parent = JOINT_NAMES[skeleton.PARENTS[JOINT_NAMES.index(node.name)]]
            assert back.nodes[node.parent].name == parent
    assert back.num_frames == len(cam) == 276
    assert back.frame_time_s == pytest.approx(4 / 120, abs=1e-6)
    positions = back.positions()[:, [back.node_names.index(n) for n in JOINT_NAMES]]
    # the file is what the solver computed (6 decimals: micrometres, microdegrees)
    assert np.abs(positions - motion.fk_m).max() * 1000 < 0.01
    err = np.linalg.norm(positions - joints, axis=-1) * 1000
    # the fixed-bone approximation: the CMU->17 mapping makes the trunk slightly non-rigid
    # (measured: mean 2.2 mm, max 17 mm at the shoulders)
    assert err[:, 0].max() < 1e-3  # the root is the recorded pelvis
    assert err.mean() < 4.0 and err.max() < 25.0, (err.mean(), err.max())
    # Y-up: the head is above the ankles in every frame
    assert (positions[:, JOINT_NAMES.index("head"), 1]
            > positions[:, JOINT_NAMES.index("r_ankle"), 1] + 0.5).all()


def test_poses_the_skeleton_can_hold_are_reproduced_exactly(mocap_camera_m):
    """The forward kinematics of an export is itself a rigid motion of that skeleton: solving it
    again must give it back (the IK is exact where an exact answer exists)."""
    cam, t = mocap_camera_m
    first = be.solve_motion(be.camera_to_y_up(cam), t)
    again = be.solve_motion(first.fk_m, t, skeleton=first.skeleton)
    assert be.fk_error_mm(again, first.fk_m).max() < 1e-6
    np.testing.assert_allclose(be.fit_skeleton(first.fk_m).bone_lengths_m,
                               first.skeleton.bone_lengths_m, atol=1e-9)


def test_bone_lengths_are_the_median_per_person(mocap_camera_m):
    cam, t = mocap_camera_m
    joints = be.camera_to_y_up(cam)
    stretched = joints.copy()
    stretched[::3] = stretched[::3] * 1.5  # a third of the frames 1.5 times too big
    lengths = be.fit_skeleton(stretched).bone_lengths_m
    np.testing.assert_allclose(lengths, be.fit_skeleton(joints).bone_lengths_m, rtol=0.05)
    offsets = be.fit_skeleton(joints).offsets_m
    np.testing.assert_allclose(
        [np.linalg.norm(offsets[c]) for c, _ in skeleton.BONES], lengths, rtol=0.05)


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(be.BvhExportError, match="no poses"):
        be.solve_motion(np.zeros((0, NUM_JOINTS, 3)))
    with pytest.raises(be.BvhExportError, match="expected poses"):
        be.solve_motion(np.zeros((4, 16, 3)))
    bad = np.ones((2, NUM_JOINTS, 3))
    bad[1, 3, 0] = np.nan
    with pytest.raises(be.BvhExportError, match="NaN"):
        be.solve_motion(bad)


def blender_import(bvh_path: Path, out_json: Path) -> dict:
    """Import bvh_path in Blender headless (tests/blender/import_bvh.py); the bone heads."""
    result = subprocess.run(
        [shutil.which("blender"), "-b", "--factory-startup", "--python", str(BLENDER_SCRIPT),
         "--", str(bvh_path), str(out_json)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and out_json.is_file(), result.stdout[-3000:] + result.stderr
    return json.loads(out_json.read_text())


@pytest.mark.skipif(shutil.which("blender") is None,
                    reason="blender is not installed (apt-get install blender: Debian's 3.4)")
def test_blender_imports_it_and_bone_heads_match(tmp_path, mocap_camera_m):
    cam, t = mocap_camera_m
    joints = be.camera_to_y_up(cam)
    motion = be.solve_motion(joints, t)
    data = blender_import(be.write_bvh(tmp_path / "hop.bvh", motion), tmp_path / "heads.json")
    assert sorted(data["bones"]) == sorted(JOINT_NAMES)
    assert data["frames"] == len(joints)
    assert data["fps"] == pytest.approx(30.0, abs=0.01)
    heads = np.array(data["heads"])[:, [data["bones"].index(n) for n in JOINT_NAMES]]
    err, rotation = _aligned_error_mm(heads, joints)
    # Blender turns Y-up into its Z-up: (x, y, z) -> (x, -z, y), and nothing else
    np.testing.assert_allclose(rotation, [[1, 0, 0], [0, 0, 1], [0, -1, 0]], atol=2e-3)
    fk_err = be.fk_error_mm(motion, joints)
    assert abs(err.mean() - fk_err.mean()) < 0.5, (err.mean(), fk_err.mean())
    assert err.max() < 25.0


def _street_export(street_recording: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    import os
    import sys

    return subprocess.run([sys.executable, "-m", "pipeline.export", str(street_recording),
                           "--format", "bvh", "-o", str(out), *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_street_recording_exports_its_main_person(tmp_path, street_recording):
    """The real thing: a pipeline recording of the street video, through the export command."""
    from pipeline.record import Recording
    from pipeline.schema import Pose3D

    with Recording(street_recording) as rec:
        poses = [m for m in (r.decode() for r in rec) if isinstance(m, Pose3D)]
    tracks = be.track_poses(poses)
    main = max(tracks, key=lambda t: len(tracks[t][1]))
    result = _street_export(street_recording, tmp_path / "street.bvh")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"track {main}," in result.stderr
    back = bvh.read_bvh(tmp_path / "street.bvh")
    assert sorted(back.joint_names) == sorted(JOINT_NAMES)
    assert back.num_frames == len(tracks[main][1]) >= 30
    # the frame time is the median capture interval (every frame processed, as fast as the
    # pipeline goes), or the video's own rate when given
    assert back.frame_time_s == pytest.approx(np.median(np.diff(tracks[main][1])) / 1e9,
                                              abs=2e-6)
    at_50 = _street_export(street_recording, tmp_path / "street50.bvh", "--fps", "50")
    assert at_50.returncode == 0, at_50.stderr[-2000:]
    assert bvh.read_bvh(tmp_path / "street50.bvh").frame_time_s == pytest.approx(0.02, abs=1e-6)
    positions = back.positions()[:, [back.node_names.index(n) for n in JOINT_NAMES]]
    recorded = be.camera_to_y_up(tracks[main][0])
    err = np.linalg.norm(positions - recorded, axis=-1) * 1000
    # the lifter's bone lengths vary from frame to frame; a BVH's cannot
    assert err[:, 0].max() < 1e-3
    assert err.mean() < 30.0, err.mean()
    missing = _street_export(street_recording, tmp_path / "x.bvh", "--track", "9999")
    assert missing.returncode == 2 and "no track 9999" in missing.stderr
