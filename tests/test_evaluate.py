"""Evaluation: metrics on known cases, the geometry end to end with an oracle lifter, and the CLI
on a real exported engine."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.training import datasets as ds
from engines.training import mocap
from engines.runtime.codec import Codec
from engines.training.evaluate import (
    EvaluationError,
    LoadedLifter,
    evaluate,
    load_poses_file,
    main,
    metrics,
    place_and_project,
    procrustes_aligned,
)
from engines.runtime.skeleton import JOINT_NAMES, NUM_JOINTS, ROOT

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def test_poses_mm() -> np.ndarray:
    """60 CMU exp-map test-split poses retargeted to the canonical skeleton, mm, +Y up."""
    poses = mocap.load_poses(["cmu_expmap"], "test", fps=30)[::25][:60]
    return mocap.retarget(poses).astype(np.float64)


def _codec() -> Codec:
    return Codec(tuple(float(x) for x in mocap.CANONICAL_BONE_LENGTHS_MM / 1000.0))


def test_metrics_of_known_cases():
    rng = np.random.default_rng(0)
    gt = rng.normal(0, 200, (5, NUM_JOINTS, 3))
    gt -= gt[:, :1]
    same = metrics(gt.copy(), gt, "x")
    assert same["mpjpe_mm"] == 0 and same["pa_mpjpe_mm"] == 0 and same["n_mpjpe_mm"] == 0
    assert set(same["per_joint_mpjpe_mm"]) == set(JOINT_NAMES) and same["count"] == 5
    shifted = metrics(gt + np.array([3.0, 4.0, 0.0]), gt, "x")
    assert shifted["mpjpe_mm"] == pytest.approx(5.0)
    # a rotated, scaled, translated copy: PA-MPJPE 0; a scaled copy: N-MPJPE 0, MPJPE not
    angle = 0.7
    rot = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    moved = 1.3 * gt @ rot.T + 40.0
    assert metrics(moved, gt, "x")["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(procrustes_aligned(moved, gt), gt, atol=1e-8)
    scaled = metrics(gt * 0.8, gt, "x")
    assert scaled["n_mpjpe_mm"] == pytest.approx(0.0, abs=1e-6) and scaled["mpjpe_mm"] > 10
    # a mirror image is not a rotation: Procrustes must not reflect
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert metrics(mirrored, gt, "x")["pa_mpjpe_mm"] > 1.0


@pytest.mark.parametrize("cameras", ["h36m", "random"])
def test_oracle_lifter_scores_zero(test_poses_mm, cameras):
    """A lifter that outputs the ideal lift of the true pose scores ~0 mm on every metric: the
    placement, projection, codec (virtual camera, scale) and metric conversion agree."""
    codec = _codec()
    px, cam, cams = place_and_project(test_poses_mm, cameras, seed=3)
    enc = codec.encode_full(px, cams.fx, cams.fy, cams.cx, cams.cy)
    ideal = ds.ideal_lift(cam, enc.rotation_to_camera, enc.scale, codec.depth_offset)
    expected_input = enc.joints_2d_norm

    def oracle(joints_2d_norm: np.ndarray) -> np.ndarray:
        np.testing.assert_array_equal(joints_2d_norm, expected_input)  # the same 2D, same order
        return ideal

    result = evaluate(LoadedLifter(oracle, codec, "oracle"), test_poses_mm, cameras, seed=3)
    assert result["count"] == len(test_poses_mm)
    assert result["mpjpe_mm"] < 0.5 and result["pa_mpjpe_mm"] < 0.5 and result["n_mpjpe_mm"] < 0.5


def test_placement_is_seeded_and_h36m_like(test_poses_mm):
    px1, cam1, _ = place_and_project(test_poses_mm, "h36m", seed=1)
    px2, _, _ = place_and_project(test_poses_mm, "h36m", seed=1)
    px3, _, _ = place_and_project(test_poses_mm, "h36m", seed=2)
    np.testing.assert_array_equal(px1, px2)
    assert not np.allclose(px1, px3)
    depth = cam1[:, ROOT, 2]
    assert 3.0 < depth.min() and depth.max() < 8.0           # Human3.6M: subjects 4-7 m away
    assert px1.min() > -50 and px1.max() < 1050                # inside the 1000 px frames


def test_noise_rho_correlates_the_noise_along_a_sequence(test_poses_mm):
    """--noise-rho: the 2D noise's correlation from one frame to the next is rho, its std the
    asked one; rho 0 is the same draws as without the option; the first pose of each group
    starts its own chain."""
    group = np.repeat(np.arange(3), 20)
    clean, _, _ = place_and_project(test_poses_mm, "h36m", seed=4, group=group)
    white, _, _ = place_and_project(test_poses_mm, "h36m", seed=4, noise_px=5.0, group=group)
    same, _, _ = place_and_project(test_poses_mm, "h36m", seed=4, noise_px=5.0, group=group,
                                   noise_rho=0.0)
    np.testing.assert_array_equal(white, same)
    red, _, _ = place_and_project(test_poses_mm, "h36m", seed=4, noise_px=5.0, group=group,
                                  noise_rho=0.8)
    e_white, e_red = white - clean, red - clean
    for e, rho in ((e_white, 0.0), (e_red, 0.8)):
        assert e.std() == pytest.approx(5.0, rel=0.08)
        pairs = [(e[i].ravel(), e[i + 1].ravel()) for i in range(59) if group[i] == group[i + 1]]
        lag1 = np.corrcoef(np.concatenate([a for a, _ in pairs]),
                           np.concatenate([b for _, b in pairs]))[0, 1]
        assert lag1 == pytest.approx(rho, abs=0.06), (rho, lag1)
    firsts = [0, 20, 40]
    np.testing.assert_array_equal(e_red[firsts], e_white[firsts])
    with pytest.raises(EvaluationError, match="noise-rho"):
        place_and_project(test_poses_mm, "h36m", seed=4, noise_px=5.0, group=group, noise_rho=1.0)


def test_bad_pose_files_give_clear_errors(tmp_path):
    with pytest.raises(EvaluationError, match="not found"):
        load_poses_file(tmp_path / "nope.npz")
    np.savez(tmp_path / "nokey.npz", poses=np.zeros((3, 17, 3)))
    with pytest.raises(EvaluationError, match="joints_mm"):
        load_poses_file(tmp_path / "nokey.npz")
    np.savez(tmp_path / "shape.npz", joints_mm=np.zeros((3, 16, 3)))
    with pytest.raises(EvaluationError, match=r"\(N>0, 17, 3\)"):
        load_poses_file(tmp_path / "shape.npz")
    np.savez(tmp_path / "metres.npz", joints_mm=np.random.default_rng(0).normal(0, 0.3, (3, 17, 3)))
    with pytest.raises(EvaluationError, match="millimetres"):
        load_poses_file(tmp_path / "metres.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(EvaluationError, match="readable"):
        load_poses_file(tmp_path / "junk.npz")


def test_z_up_files_are_turned_to_y_up(tmp_path, test_poses_mm):
    z_up = test_poses_mm[:, :, [0, 2, 1]] * np.array([1.0, -1.0, 1.0])  # +Y up -> +Z up
    np.savez(tmp_path / "z.npz", joints_mm=z_up, up_axis=np.array("z"))
    np.testing.assert_allclose(load_poses_file(tmp_path / "z.npz"), test_poses_mm, atol=1e-9)


def test_cli_on_an_exported_engine(tmp_path, test_poses_mm):
    """Train a few steps, export through engines.training.export, evaluate through engines.runtime.engine."""
    from engines.training.export import export_checkpoint
    from engines.training.train import TrainConfig, build_data, train

    cfg = TrainConfig(method="supervised", out=str(tmp_path / "run"), steps=20, batch=32,
                      width=32, blocks=1, views=1, log_every=10)
    codec = _codec()
    data = build_data(cfg, [test_poses_mm[:40]], codec)
    train(cfg, data=data, codec=codec, progress=False)
    engine = export_checkpoint(tmp_path / "run" / "checkpoint.pt", tmp_path / "engine", tensorrt=False)
    np.savez(tmp_path / "poses.npz", joints_mm=test_poses_mm.astype(np.float32))
    args = ["--engine", str(engine.onnx_path), "--poses", str(tmp_path / "poses.npz"),
            "--seed", "5", "--json", str(tmp_path / "out.json")]
    assert main(args) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["count"] == len(test_poses_mm) and result["engine_id"] == engine.engine_id
    assert set(result) >= {"mpjpe_mm", "pa_mpjpe_mm", "n_mpjpe_mm", "per_joint_mpjpe_mm"}
    assert 0 < result["pa_mpjpe_mm"] <= result["n_mpjpe_mm"] + 1e-6
    assert main(args) == 0 and json.loads((tmp_path / "out.json").read_text()) == result
    # a corrupt engine file: a clear error naming it, exit status 2, through the real CLI
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, "-m", "engines.training.evaluate", "--engine", str(bad),
                           "--poses", str(tmp_path / "poses.npz")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and str(bad) in proc.stderr
