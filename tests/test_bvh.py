"""BVH reader and forward kinematics (engines/training/bvh.py) on hand-made and shared files."""

import os
from pathlib import Path

import numpy as np
import pytest

from engines.training import bvh
from engines.runtime.skeleton import BANDAI_JOINT_NAMES, CMU_BVH_JOINT_NAMES, CMU_EXPMAP_JOINT_NAMES

SHARED = Path(os.environ.get("POSESTREAM_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
MOCAP = SHARED / "data" / "mocap"

# Root: translation then rotations in an unusual order; a child with a position channel and its
# rotations in yet another order; an End Site.
SMALL_BVH = """HIERARCHY
ROOT Base
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT Arm
  {
    OFFSET 1 0 0
    CHANNELS 3 Xrotation Yposition Zrotation
    End Site
    {
      OFFSET 0 0 2
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.04
1 2 3 90 0 0   90 5 0
0 0 0 0 0 0    0 0 90
"""


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"shared data file missing: {path} (set POSESTREAM_SHARED to the shared folder)")
    return path


def _bone_length_spread(motion: bvh.BvhMotion, scale: float) -> tuple[np.ndarray, np.ndarray]:
    pos = motion.positions() * scale
    parents = motion.parents
    child = np.arange(len(parents))[parents >= 0]
    lengths = np.linalg.norm(pos[:, child] - pos[:, parents[child]], axis=-1)
    return lengths.mean(0), lengths.std(0)


def test_small_file_forward_kinematics_by_hand():
    m = bvh.parse_bvh(SMALL_BVH)
    assert m.node_names == ("Base", "Arm", "Arm_end") and m.joint_names == ("Base", "Arm")
    assert m.num_frames == 2 and m.fps == pytest.approx(25.0)
    np.testing.assert_array_equal(m.parents, [-1, 0, 1])
    pos = m.positions()
    # frame 0: root at (1, 2, 3) turned 90 deg about Z (x -> y). Arm: its Yposition (5) replaces
    # the offset's y: local (1, 5, 0) -> (-5, 1, 0). Arm turns 90 deg about X, so the End Site
    # offset (0, 0, 2) -> Rx: (0, -2, 0) -> Rz: (2, 0, 0).
    np.testing.assert_allclose(pos[0], [[1, 2, 3], [-4, 3, 3], [-2, 3, 3]], atol=1e-12)
    # frame 1: only the arm's Z rotation (90): the End Site offset along Z is unchanged
    np.testing.assert_allclose(pos[1], [[0, 0, 0], [1, 0, 0], [1, 0, 2]], atol=1e-12)


def test_channel_order_is_respected():
    # the same two angles in the two channel orders move the End Site to different places
    xz = SMALL_BVH.replace("1 2 3 90 0 0   90 5 0", "0 0 0 0 0 0   90 0 90")
    # "Xrotation ... Zrotation": local R = Rx(90) Rz(90); (0, 0, 2) -> Rz: (0, 0, 2) -> Rx: (0, -2, 0)
    np.testing.assert_allclose(bvh.parse_bvh(xz).positions()[0, 2], [1, -2, 0], atol=1e-12)
    zx = xz.replace("Xrotation Yposition Zrotation", "Zrotation Yposition Xrotation")
    # "Zrotation ... Xrotation": local R = Rz(90) Rx(90); (0, 0, 2) -> Rx: (0, -2, 0) -> Rz: (2, 0, 0)
    np.testing.assert_allclose(bvh.parse_bvh(zx).positions()[0, 2], [3, 0, 0], atol=1e-12)


def test_bad_files_say_what_is_wrong(tmp_path):
    with pytest.raises(bvh.BvhError, match="truncated"):
        bvh.parse_bvh(SMALL_BVH.rsplit("\n", 2)[0] + "\n", source="cut.bvh")
    with pytest.raises(bvh.BvhError, match="unknown channel"):
        bvh.parse_bvh(SMALL_BVH.replace("Yposition Zrotation", "Yposition Wrotation"))
    with pytest.raises(bvh.BvhError, match="no MOTION"):
        bvh.parse_bvh("HIERARCHY\nROOT a\n{\n}\n", source="x.bvh")
    with pytest.raises(bvh.BvhError, match="Frame Time"):
        bvh.parse_bvh(SMALL_BVH.replace("Frame Time: 0.04", "Frametime 0.04"))
    with pytest.raises(FileNotFoundError, match="missing.bvh"):
        bvh.read_bvh(tmp_path / "missing.bvh")


def test_cmu_131_01_bone_lengths_and_units():
    m = bvh.read_bvh(_need(MOCAP / "cmu_bvh" / "131_01.bvh"))
    assert m.num_frames == 994 and m.fps == pytest.approx(120.0, rel=1e-4)
    assert m.joint_names == CMU_BVH_JOINT_NAMES and m.node_names == CMU_EXPMAP_JOINT_NAMES
    mean, std = _bone_length_spread(m, bvh.CMU_UNIT_MM)
    assert std.max() < 1e-6  # mm: rigid bones in every frame
    names = m.node_names
    length = dict(zip(names[1:], mean))
    assert length["LeftKnee"] == pytest.approx(411, abs=1.5)  # thigh: LeftHip -> LeftKnee
    assert length["LeftAnkle"] == pytest.approx(391, abs=1.5)  # shin
    hips_y = np.median(m.positions()[:, 0, 1] * bvh.CMU_UNIT_MM)
    assert hips_y == pytest.approx(911, abs=5)  # +Y up, mm


def test_cmu_left_side_is_the_subjects_left():
    m = bvh.read_bvh(_need(MOCAP / "cmu_bvh" / "131_02.bvh"))
    pos = m.positions()
    n = m.node_names
    g = lambda name: pos[:, n.index(name)]
    forward = (g("LeftToe") - g("LeftAnkle")) + (g("RightToe") - g("RightAnkle"))
    forward[:, 1] = 0
    left = np.cross([0.0, 1.0, 0.0], forward)  # +Y up: left = up x forward
    assert np.mean(np.sum(left * (g("LeftHip") - g("RightHip")), -1) > 0) > 0.95
    assert np.mean(np.sum(left * (g("LeftShoulder") - g("RightShoulder")), -1) > 0) > 0.95


def test_bandai_centimetres_and_one_rigid_skeleton():
    files = sorted((MOCAP / "bandai1" / "data").glob("*.bvh"))
    if not files:
        pytest.fail(f"no Bandai BVH files in {MOCAP / 'bandai1' / 'data'} (set POSESTREAM_SHARED)")
    means = []
    for path in files[:: max(1, len(files) // 4)]:
        m = bvh.read_bvh(path)
        assert m.joint_names == BANDAI_JOINT_NAMES and m.fps == pytest.approx(30.0, rel=1e-4)
        mean, std = _bone_length_spread(m, 10.0)
        # node 1 (Hips) hangs from joint_Root by the global translation: not a bone
        assert std[1:].max() < 1e-6
        means.append(mean[1:])
        pos = m.positions() * 10.0
        names = m.node_names
        np.testing.assert_allclose(pos[:, names.index("joint_Root")], 0.0, atol=1e-9)
        hip_width = np.linalg.norm(pos[:, names.index("UpperLeg_L")] - pos[:, names.index("UpperLeg_R")], axis=-1)
        assert hip_width.mean() == pytest.approx(129, abs=1.5)
        assert 800 < np.median(pos[:, names.index("Hips"), 1]) < 1050
    # the same bone lengths in every file
    np.testing.assert_allclose(np.array(means), np.broadcast_to(means[0], np.shape(means)), atol=1e-6)
