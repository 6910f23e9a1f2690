"""Mocap sources as 17-joint poses (engines/training/mocap.py): shapes, units, sides, retargeting, cache."""

import os
from pathlib import Path

import numpy as np
import pytest

from engines.training import mocap
from engines.runtime.skeleton import BONES, NUM_JOINTS, Joint, bone_lengths

SHARED = Path(os.environ.get("POSESTREAM_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    """This module parses into its own cache folder: the tests cover a cold start and leave the
    user's cache alone."""
    old = os.environ.get("POSESTREAM_CACHE")
    os.environ["POSESTREAM_CACHE"] = str(tmp_path_factory.mktemp("mocap_cache"))
    yield
    if old is None:
        del os.environ["POSESTREAM_CACHE"]
    else:
        os.environ["POSESTREAM_CACHE"] = old


def _thigh_mm(poses: np.ndarray) -> np.ndarray:
    return np.linalg.norm(poses[:, Joint.L_KNEE] - poses[:, Joint.L_HIP], axis=-1)


def _check_world_pose(poses: np.ndarray) -> None:
    assert poses.ndim == 3 and poses.shape[1:] == (NUM_JOINTS, 3) and poses.dtype == np.float32
    np.testing.assert_allclose(poses[:, Joint.PELVIS], 0.0, atol=1e-3)
    # units and up axis: thigh 350-500 mm, head above the pelvis above the ankles (+Y up)
    assert 350 < np.median(_thigh_mm(poses)) < 500
    assert np.median(poses[:, Joint.HEAD, 1]) > 400
    assert np.median(poses[:, Joint.L_ANKLE, 1]) < -600
    # the pelvis is the midpoint of the hips
    np.testing.assert_allclose(poses[:, Joint.L_HIP] + poses[:, Joint.R_HIP], 0.0, atol=1e-2)


def _left_is_left(poses: np.ndarray) -> float:
    """Fraction of bent-knee poses whose l_hip lies on the subject's left.

    Knees only bend forwards, so a bent knee shows where the subject faces: forward = the knee's
    offset from the hip-ankle midpoint, horizontal. With +Y up, the subject's left is up x forward
    (as in a +Z-forward, +X-left body frame). A mirrored skeleton gives a fraction near 0.
    """
    up = np.array([0.0, 1.0, 0.0])
    votes = []
    for hip, knee, ankle in ((Joint.L_HIP, Joint.L_KNEE, Joint.L_ANKLE),
                             (Joint.R_HIP, Joint.R_KNEE, Joint.R_ANKLE)):
        bend = poses[:, knee] - (poses[:, hip] + poses[:, ankle]) / 2
        bend[:, 1] = 0.0
        bent = np.linalg.norm(bend, axis=-1) > 40  # mm: clearly bent
        left = np.cross(up, bend[bent])
        votes.append(np.sum(left * (poses[bent, Joint.L_HIP] - poses[bent, Joint.R_HIP]), -1) > 0)
    votes = np.concatenate(votes)
    assert len(votes) > 50, "too few bent knees to judge left and right"
    return float(np.mean(votes))


def test_cmu_expmap_train_and_test_splits():
    train = mocap.load_poses(("cmu_expmap",), split="train", shared_dir=SHARED, fps=30)
    test = mocap.load_poses(("cmu_expmap",), split="test", shared_dir=SHARED, fps=30)
    _check_world_pose(train)
    _check_world_pose(test)
    assert _left_is_left(train) > 0.9 and _left_is_left(test) > 0.9
    # 32 train clips of 120 fps, every 4th frame of frames 1.. : about 34,000 / 4
    assert 8000 < len(train) < 8800 and 1500 < len(test) < 1800
    # one CMU subject: bone lengths are those of the data README (LeftKnee -> LeftAnkle 411.32)
    shin = np.linalg.norm(test[:, Joint.L_ANKLE] - test[:, Joint.L_KNEE], axis=-1)
    np.testing.assert_allclose(shin, 411.32, atol=0.05)


@pytest.mark.parametrize("source, n_frames", [("cmu_bvh", 837), ("bandai1", 31914), ("bandai2", 47925)])
def test_bvh_sources(source, n_frames):
    poses = mocap.load_poses((source,), shared_dir=SHARED, fps=30)
    _check_world_pose(poses)
    # cmu_bvh: 3,343 frames at 120 fps -> every 4th; Bandai is 30 fps already
    assert len(poses) == n_frames
    assert _left_is_left(poses) > 0.95
    lengths = bone_lengths(poses)
    # limbs are single rigid bones of one skeleton per source (the trunk joints are derived
    # across several source joints, so their distances change as the spine bends)
    limbs = [b for b, (child, _) in enumerate(BONES) if child not in
             (Joint.SPINE, Joint.THORAX, Joint.L_SHOULDER, Joint.R_SHOULDER)]
    np.testing.assert_allclose(lengths[:, limbs].std(0), 0.0, atol=1e-2)
    L = dict(zip([c for c, _ in BONES], lengths[0]))
    if source == "cmu_bvh":
        assert L[Joint.L_KNEE] == pytest.approx(411, abs=1.5)
        assert L[Joint.L_ANKLE] == pytest.approx(391, abs=1.5)
    else:
        assert 2 * L[Joint.L_HIP] == pytest.approx(129, abs=1.5)
        # the guessed head top: 1.8 Neck->Head segments (65 mm) beyond Head
        assert L[Joint.HEAD] == pytest.approx(1.8 * L[Joint.NECK_NOSE], rel=1e-3)


def test_all_sources_together_and_as_sequences():
    poses = mocap.load_poses(shared_dir=SHARED)
    assert len(poses) == 837 + 31914 + 47925 + len(mocap.load_poses(("cmu_expmap",), shared_dir=SHARED))
    clips = mocap.load_clips(shared_dir=SHARED)
    assert len(clips) == 3 + 174 + 363 + 32
    assert {c.name.split("/")[0] for c in clips} == set(mocap.SOURCES)
    assert all(c.fps == pytest.approx(30.0, rel=1e-3) for c in clips)


def test_sequences_keep_time_order_at_the_requested_rate():
    seqs = mocap.load_sequences(("cmu_expmap",), split="test", shared_dir=SHARED, fps=30)
    assert len(seqs) == 6 and all(s.shape[1:] == (NUM_JOINTS, 3) for s in seqs)
    full = mocap.load_sequences(("cmu_expmap",), split="test", shared_dir=SHARED, fps=None)
    for sub, whole in zip(seqs, full):
        np.testing.assert_array_equal(sub, whole[::4])
        # consecutive frames at 30 fps move a joint by centimetres, not metres
        step = np.linalg.norm(np.diff(sub, axis=0), axis=-1)
        assert np.median(step) < 40


def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    """The second load reads the .npz the first one wrote, not the BVH/exp-map files: a
    cache file changed on purpose comes back changed. (How fast a cached load is: `python -m
    bench.bounds mocap-cache`, target under 1 s.)"""
    monkeypatch.setenv("POSESTREAM_CACHE", str(tmp_path))
    first = mocap.load_poses(("cmu_expmap",), shared_dir=SHARED)
    cached = list(tmp_path.glob("cmu_expmap-train-*.npz"))
    assert len(cached) == 1, cached
    np.testing.assert_array_equal(mocap.load_poses(("cmu_expmap",), shared_dir=SHARED), first)
    with np.load(cached[0]) as data:
        fields = {k: data[k] for k in data.files}
    fields["frames"] = fields["frames"] + np.float32(1000.0)
    with open(cached[0], "wb") as fh:
        np.savez(fh, **fields)
    marked = mocap.load_poses(("cmu_expmap",), shared_dir=SHARED)
    np.testing.assert_array_equal(marked, first + np.float32(1000.0))


def test_retarget_gives_exactly_the_target_bone_lengths_and_keeps_directions():
    poses = mocap.load_poses(("cmu_expmap",), split="test", shared_dir=SHARED)[::10]
    out = mocap.retarget(poses, mocap.CANONICAL_BONE_LENGTHS_MM)
    assert out.shape == poses.shape and out.dtype == np.float32
    np.testing.assert_allclose(bone_lengths(out),
                               np.broadcast_to(mocap.CANONICAL_BONE_LENGTHS_MM, (len(out), len(BONES))),
                               atol=1e-3)
    for child, parent in BONES:
        a = poses[:, child] - poses[:, parent]
        b = out[:, child] - out[:, parent]
        cos = np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        assert cos.min() > 1 - 1e-6
    # per-pose lengths broadcast too
    lengths = np.linspace(100, 400, len(BONES))[None].repeat(len(poses), 0) * np.arange(1, len(poses) + 1)[:, None]
    np.testing.assert_allclose(bone_lengths(mocap.retarget(poses, lengths)), lengths, rtol=1e-5)


def test_canonical_lengths_are_adult_human36m_proportions():
    L = dict(zip([c for c, _ in BONES], mocap.CANONICAL_BONE_LENGTHS_MM))
    assert L[Joint.L_KNEE] == L[Joint.R_KNEE] == pytest.approx(443, abs=1)
    assert L[Joint.R_ANKLE] == pytest.approx(454, abs=1)
    assert 2 * L[Joint.L_HIP] == pytest.approx(266, abs=1)
    assert L[Joint.SPINE] + L[Joint.THORAX] == pytest.approx(1.16 * 421, abs=5)


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="unknown mocap source"):
        mocap.load_poses(("h36m",), shared_dir=SHARED)
    with pytest.raises(ValueError, match="only cmu_expmap has a test split"):
        mocap.load_poses(("cmu_bvh",), split="test", shared_dir=SHARED)
    with pytest.raises(FileNotFoundError, match="POSESTREAM_SHARED"):
        mocap.load_poses(("cmu_expmap",), shared_dir=SHARED / "nowhere")


def test_make_eval_poses_cli_writes_the_evaluation_files(tmp_path):
    import json
    import subprocess
    import sys

    from engines.runtime.camera import H36M_WORLD_TO_WORLD

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, POSESTREAM_SHARED=str(SHARED))
    for args in (["--out", str(tmp_path / "cmu.npz")],
                 ["--out", str(tmp_path / "h36m.npz"), "--source", "h36m"]):
        subprocess.run([sys.executable, "-m", "engines.training.make_eval_poses", *args], cwd=repo, env=env,
                       check=True, capture_output=True, timeout=120)
    cmu = np.load(tmp_path / "cmu.npz")
    assert str(cmu["up_axis"]) == "y"
    _check_world_pose(cmu["joints_mm"])
    np.testing.assert_array_equal(cmu["joints_mm"], mocap.load_poses(("cmu_expmap",), split="test", shared_dir=SHARED))
    assert len(cmu["source"]) == len(cmu["joints_mm"]) and len(set(cmu["source"])) == 6
    assert all(str(s).startswith("cmu_expmap/") for s in cmu["source"])
    # sequences for the evaluator: one id per pose, the clip, poses in order; 30 fps
    np.testing.assert_array_equal(cmu["sequence"], cmu["source"])
    assert float(cmu["fps"]) == 30.0 and cmu["fps"].shape == ()
    # Human3.6M: the same as the world joints of the COCO-style file (+Z up) turned to +Y up
    h36m = np.load(tmp_path / "h36m.npz")
    coco = json.loads((SHARED / "data/footage/mmpose/tests/data/h36m/h36m_coco.json").read_text())
    world = np.array([np.reshape(a["keypoints_3d"], (17, 4))[:, :3] for a in coco["annotations"]])
    world = world @ H36M_WORLD_TO_WORLD.T * 1000.0
    np.testing.assert_allclose(h36m["joints_mm"], world - world[:, :1], atol=0.01)
    assert h36m["joints_mm"].shape == (4, NUM_JOINTS, 3) and str(h36m["up_axis"]) == "y"
    assert len(set(h36m["sequence"])) == 4 and float(h36m["fps"]) == 50.0  # single images
