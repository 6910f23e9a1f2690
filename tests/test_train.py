"""Trainer: a short self-supervised run learns (loss falls, beats the mean pose on held-back
poses), self-supervised data carries no 3D label, resume continues exactly, errors are clear."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.training import datasets as ds
from engines.training import mocap
from engines.training.evaluate import load_lifter, evaluate, metrics, place_and_project
from engines.runtime.skeleton import NUM_JOINTS
from engines.training.train import TrainConfig, build_data, canonical_codec, train

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(batch=64, width=128, blocks=1, dropout=0.0, max_poses=2000, log_every=50, lr=1e-3)


@pytest.fixture(scope="module")
def train_sequences() -> list[np.ndarray]:
    """CMU exp-map training clips at 10 fps, retargeted to the canonical skeleton (mm)."""
    return [mocap.retarget(s) for s in mocap.load_sequences(["cmu_expmap"], "train", fps=10)]


@pytest.fixture(scope="module")
def held_back_mm() -> np.ndarray:
    """CMU exp-map test-split poses (never trained on), canonical skeleton, mm."""
    return mocap.retarget(mocap.load_poses(["cmu_expmap"], "test", fps=10))[::4].astype(np.float64)


def _log(path: Path) -> list[dict]:
    with open(path / "log.csv") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def test_li2020_short_run_learns_and_beats_the_mean_pose(tmp_path, train_sequences, held_back_mm):
    codec = canonical_codec()
    cfg = TrainConfig(method="li2020", out=str(tmp_path), steps=300, pretrain_steps=100, **SMALL)
    data = build_data(cfg, train_sequences, codec)
    train(cfg, data=data, codec=codec, progress=False)
    log = _log(tmp_path)
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    assert log[-1]["transform"] < 0.5 * log[0]["transform"]
    result = evaluate(load_lifter(tmp_path / "checkpoint.pt"), held_back_mm, "random", seed=0)
    # baseline: the mean training pose for every input (Procrustes turns it the best way)
    mean_pose = np.concatenate(train_sequences).mean(0).astype(np.float64)
    _, cam, _ = place_and_project(held_back_mm, "random", seed=0)
    gt_mm = (cam - cam[:, :1]) * 1000.0
    baseline = metrics(np.repeat(mean_pose[None], len(gt_mm), 0), gt_mm, "mean-pose")
    assert result["pa_mpjpe_mm"] < 0.85 * baseline["pa_mpjpe_mm"], (result, baseline)


def test_chen2019_short_run_lowers_its_consistency_losses(tmp_path, train_sequences):
    codec = canonical_codec()
    cfg = TrainConfig(method="chen2019", out=str(tmp_path), steps=150, **SMALL)
    train(cfg, data=build_data(cfg, train_sequences, codec), codec=codec, progress=False)
    log = _log(tmp_path)
    assert log[-1]["loss_3d"] < 0.8 * log[0]["loss_3d"]
    assert log[-1]["loss_2d"] < 0.8 * log[0]["loss_2d"]


@pytest.mark.parametrize("method", ["chen2019", "li2020"])
def test_self_supervised_data_holds_no_3d_and_training_ignores_the_3d_source(
        tmp_path, train_sequences, method):
    codec = canonical_codec()
    cfg = TrainConfig(method=method, out=str(tmp_path / "a"), steps=30, pretrain_steps=10,
                      **{**SMALL, "max_poses": 300})
    sequences = [s.copy() for s in train_sequences[:6]]
    data = build_data(cfg, sequences, codec)
    fields = ds.array_fields(data)
    allowed = {"chen2019": {"joints_2d_norm"},
               "li2020": {"joints_2d_norm", "scale", "confidence", "world_to_virtual", "centre_m"}}
    assert set(fields) == allowed[method]
    for name, arr in fields.items():
        assert arr.shape[-2:] != (NUM_JOINTS, 3), f"{name} looks like 3D joints"
        assert not any(np.shares_memory(arr, s) for s in sequences)
    ckpt_a = train(cfg, data=data, codec=codec, progress=False)
    # destroy the 3D source after projection: the same run gives the same weights
    for s in sequences:
        s[:] = np.nan
    cfg_b = TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "b")})
    ckpt_b = train(cfg_b, data=data, codec=codec, progress=False)
    for key, tensor in ckpt_a["state_dict"].items():
        torch.testing.assert_close(tensor, ckpt_b["state_dict"][key], rtol=0, atol=0)
    assert all(np.isfinite(v) for v in ckpt_b["training"]["final_losses"].values())


def test_resume_continues_exactly(tmp_path, train_sequences):
    codec = canonical_codec()
    small = {**SMALL, "max_poses": 500, "log_every": 10, "checkpoint_every": 20}
    straight = TrainConfig(method="li2020", out=str(tmp_path / "s"), steps=40, pretrain_steps=10, **small)
    data = build_data(straight, train_sequences, codec)
    ck_straight = train(straight, data=data, codec=codec, progress=False)
    interrupted = TrainConfig(**{**straight.__dict__, "out": str(tmp_path / "r")})
    assert train(interrupted, data=data, codec=codec, progress=False, until=20)["step"] == 20
    ck_resumed = train(interrupted, data=data, codec=codec, resume=True, progress=False)
    assert ck_resumed["step"] == 40
    for key, tensor in ck_straight["state_dict"].items():
        torch.testing.assert_close(tensor, ck_resumed["state_dict"][key])
    assert [r["step"] for r in _log(tmp_path / "r")] == [10, 20, 30, 40]


def test_wrong_or_empty_data_is_refused_clearly(tmp_path, train_sequences):
    codec = canonical_codec()
    cfg = TrainConfig(method="li2020", out=str(tmp_path), steps=5, batch=8)
    single = build_data(TrainConfig(method="chen2019", out="", max_poses=50), train_sequences, codec)
    with pytest.raises(ds.DataError, match="li2020 trains on MultiView2D"):
        train(cfg, data=single, codec=codec, progress=False)
    tiny = build_data(TrainConfig(method="li2020", out="", max_poses=4), train_sequences, codec)
    with pytest.raises(ds.DataError, match="fewer than one batch"):
        train(cfg, data=tiny, codec=codec, progress=False)
    with pytest.raises(ds.DataError, match="millimetres"):
        build_data(cfg, [train_sequences[0] / 1000.0], codec)
    with pytest.raises(ds.DataError, match="no poses"):
        ds.make_multi_view(np.zeros((0, NUM_JOINTS, 3)), codec, ds.CameraSampling(),
                           np.random.default_rng(0))
    with pytest.raises(ValueError, match="--method"):
        TrainConfig(method="magic", out="")


def test_cli_help_and_bad_source(tmp_path, caplog):
    from engines.training.train import main

    helped = subprocess.run([sys.executable, "-m", "engines.training.train", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--method" in helped.stdout and "li2020" in helped.stdout
    status = main(["--method", "li2020", "--out", str(tmp_path), "--sources", "nosuchsource"])
    assert status == 2 and "nosuchsource" in caplog.text


def test_li2020_terms_vanish_for_the_true_poses_and_see_a_wrong_root(train_sequences):
    """The multi-view geometry: the true pose of every view (from the 3D, here only to build the
    check) with its true scale gives zero loss; a 10 % wrong root depth does not."""
    from engines.training.train import li2020_terms

    codec = canonical_codec()
    poses = np.concatenate(train_sequences)[::97][:40].astype(np.float64)
    data = ds.make_multi_view(poses, codec, ds.CameraSampling(), np.random.default_rng(0), views=4)
    world_m = poses[:, None] / 1000.0
    virtual = np.einsum("nvij,nvkj->nvki", data.world_to_virtual.astype(np.float64),
                        world_m - data.centre_m[:, :, None])
    np.testing.assert_allclose(virtual[:, :, 0, :2], 0.0, atol=1e-5)   # root on the virtual axis
    root_depth = virtual[:, :, 0, 2]
    rel = (virtual - virtual[:, :, :1]) * (codec.depth_offset * data.scale / root_depth)[..., None, None]
    m = root_depth / (codec.depth_offset * data.scale)
    batch = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in ds.array_fields(data).items()}
    exact = li2020_terms(torch.from_numpy(rel).float(), torch.from_numpy(m).float(), batch, 10.0)
    assert max(float(t) for t in exact.values()) < 1e-4
    wrong = li2020_terms(torch.from_numpy(rel).float(), torch.from_numpy(m * 1.1).float(), batch, 10.0)
    assert float(wrong["transform"]) > 0.1 and float(wrong["reproj"]) < 1e-4


def test_bone_jitter_gives_each_clip_its_own_symmetric_skeleton():
    from engines.runtime.skeleton import BONES, bone_lengths
    from engines.training.train import load_training_sequences

    canonical = load_training_sequences(("cmu_bvh",), 15.0)
    jittered = load_training_sequences(("cmu_bvh",), 15.0, bone_jitter=0.1, seed=3)
    first = bone_lengths(canonical[0])
    np.testing.assert_allclose(first, np.broadcast_to(mocap.CANONICAL_BONE_LENGTHS_MM, first.shape),
                               rtol=1e-4)
    per_clip = [bone_lengths(clip) for clip in jittered]
    for lengths in per_clip:
        np.testing.assert_allclose(lengths, lengths[:1].repeat(len(lengths), 0), rtol=1e-4)
        mirror = ds.bone_mirror_index()
        np.testing.assert_allclose(lengths[0], lengths[0][mirror], rtol=1e-5)
        ratio = lengths[0] / mocap.CANONICAL_BONE_LENGTHS_MM
        assert np.all(np.abs(ratio - 1) <= 0.25 + 1e-6) and np.std(ratio) > 0.02
    assert not np.allclose(per_clip[0][0], per_clip[1][0])
    assert len(BONES) == len(mirror)
