"""engines/training/export.py: checkpoint -> ONNX engine with metadata, checked against torch.

Checkpoints are built from the real `engines.training.models.build_lifter` (one also from a real short
`engines.training.train` run); engines are run by real ONNX Runtime through `engines.runtime.engine`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.training import export
from engines.runtime.codec import Codec
from engines.training.export import ExportError, export_checkpoint, export_model, weights_sha256
from engines.training.models import RootBranch, build_lifter
from engines.runtime.engine import EngineError, load_engine
from engines.runtime.skeleton import JOINT_NAMES, NUM_JOINTS, bone_lengths

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSESTREAM_SHARED", REPO.parent / "shared"))
H36M_BODY3D = SHARED / "data/footage/mmpose/tests/data/h36m/test_h36m_body3d.npz"
TRAINING = {"method": "chen2019", "steps": 12, "seconds": 1.5, "final_losses": {"loss": 0.25}}


@pytest.fixture(scope="module")
def h36m():
    """(joints_3d_m (4, 17, 3), joints_2d_px (4, 17, 2)) of the four real Human3.6M frames."""
    if not H36M_BODY3D.is_file():
        pytest.fail(f"missing shared data file {H36M_BODY3D}: set POSESTREAM_SHARED to the shared folder")
    data = np.load(H36M_BODY3D)
    return data["S"][:, :, :3].astype(np.float64), data["part"][:, :, :2].astype(np.float32)


@pytest.fixture(scope="module")
def codec(h36m):
    return Codec(canonical_bone_lengths_m=tuple(float(x) for x in bone_lengths(h36m[0][0])))


def _trained_like(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give batch-norm layers non-trivial running statistics, as training would."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.2)
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
    return model


def _checkpoint(path: Path, model_config: dict, codec: Codec, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = _trained_like(build_lifter(**model_config), seed)
    torch.save({"model_config": model_config, "state_dict": model.state_dict(),
                "codec": codec.to_metadata(), "training": TRAINING, "step": 12}, path)
    return model.eval()


@pytest.fixture(scope="module")
def full_size(tmp_path_factory, codec):
    """The default-size lifter (width 1024, 2 blocks), exported through the checkpoint path."""
    folder = tmp_path_factory.mktemp("full")
    config = {"width": 1024, "blocks": 2, "head": "depth"}
    model = _checkpoint(folder / "ckpt.pt", config, codec)
    result = export_checkpoint(folder / "ckpt.pt", folder / "out", batch_max=64, tensorrt=False)
    return model, result, config


def _torch(model, joints_2d: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(joints_2d, np.float32))).numpy()


def test_onnx_equals_torch_on_random_and_real_input(full_size, codec, h36m):
    model, result, _ = full_size
    assert result.max_abs_diff <= 1e-4
    engine = load_engine(result.onnx_path)
    rng = np.random.default_rng(1)
    inputs = {
        "random_b1": rng.normal(0, 0.1, (1, NUM_JOINTS, 2)),
        "random_b64": rng.normal(0, 0.1, (64, NUM_JOINTS, 2)),
        "h36m_real": codec.encode(h36m[1], 1145.0, 1144.0, 512.0, 515.0),
    }
    for name, joints_2d in inputs.items():
        got = engine.run({"joints_2d": joints_2d})["joints_3d"]
        diff = np.abs(got - _torch(model, joints_2d)).max()
        assert diff <= 1e-4, (name, diff)


def test_metadata_round_trip(full_size, codec):
    model, result, config = full_size
    engine = load_engine(result.onnx_path)
    meta = engine.metadata
    assert meta == json.loads(json.dumps(result.metadata, default=str))
    assert Codec.from_metadata(meta["codec"]) == codec == engine.codec
    assert meta["joints"] == list(JOINT_NAMES)
    assert meta["receptive_field"] == 1
    assert meta["model_config"] == config
    assert meta["training"] == TRAINING and meta["step"] == 12
    assert meta["engine_id"] == weights_sha256(model.state_dict())[:12] == engine.engine_id
    assert meta["export"]["opset"] == 17 and meta["export"]["source"] == "ckpt.pt"
    # the metadata alone rebuilds the network: same config + the checkpoint weights = same id
    rebuilt = build_lifter(**meta["model_config"])
    rebuilt.load_state_dict(model.state_dict())
    assert weights_sha256(rebuilt.state_dict())[:12] == engine.engine_id


def test_opset_and_dynamic_batch_axis(full_size):
    import onnx

    proto = onnx.load(str(full_size[1].onnx_path), load_external_data=False)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert proto.graph.input[0].name == "joints_2d" and dims == ["batch", 17, 2]
    dims = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert proto.graph.output[0].name == "joints_3d" and dims == ["batch", 17, 3]
    engine = load_engine(full_size[1].onnx_path)
    for batch in (1, 64):
        out = engine.run({"joints_2d": np.zeros((batch, NUM_JOINTS, 2), np.float32)})
        assert out["joints_3d"].shape == (batch, NUM_JOINTS, 3)


def test_engine_id_follows_the_weights(tmp_path, codec):
    config = {"width": 32, "blocks": 1}
    a = _checkpoint(tmp_path / "a.pt", config, codec, seed=1)
    _checkpoint(tmp_path / "b.pt", config, codec, seed=1)
    _checkpoint(tmp_path / "c.pt", config, codec, seed=2)
    ids = [export_checkpoint(tmp_path / f"{n}.pt", tmp_path / n, batch_max=4, tensorrt=False).engine_id
           for n in "abc"]
    assert ids[0] == ids[1] != ids[2]
    assert ids[0] == weights_sha256(a.state_dict())[:12]


def test_xyz_head_exports(tmp_path, codec):
    config = {"width": 32, "blocks": 1, "head": "xyz"}
    model = _checkpoint(tmp_path / "x.pt", config, codec)
    result = export_checkpoint(tmp_path / "x.pt", tmp_path / "out", batch_max=8, tensorrt=False)
    joints_2d = np.random.default_rng(3).normal(0, 0.1, (8, NUM_JOINTS, 2)).astype(np.float32)
    got = load_engine(result.onnx_path).run({"joints_2d": joints_2d})["joints_3d"]
    assert np.abs(got - _torch(model, joints_2d)).max() <= 1e-4


class _LifterWithRoot(torch.nn.Module):
    """Li 2020 style: the lifter plus its root branch, as a dict of named outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.lifter = build_lifter(width=32, blocks=1)
        self.root = RootBranch(width=16)

    def forward(self, joints_2d):
        return {"metres_per_unit": self.root(joints_2d), "joints_3d": self.lifter(joints_2d)}


def test_extra_outputs_exported_under_their_names(tmp_path, codec):
    torch.manual_seed(4)
    model = _LifterWithRoot().eval()
    result = export_model(model, codec, tmp_path, model_config={"root_branch": True}, batch_max=16,
                          tensorrt=False)
    assert result.output_names == ("joints_3d", "metres_per_unit")
    engine = load_engine(result.onnx_path)
    joints_2d = np.random.default_rng(5).normal(0, 0.1, (16, NUM_JOINTS, 2)).astype(np.float32)
    out = engine.run({"joints_2d": joints_2d})
    assert set(out) == {"joints_3d", "metres_per_unit"}
    with torch.no_grad():
        want = model(torch.from_numpy(joints_2d))
    assert out["metres_per_unit"].shape == (16,)
    for name in out:
        assert np.abs(out[name] - want[name].numpy()).max() <= 1e-4, name


def test_a_failed_check_keeps_the_old_engine(tmp_path, codec):
    config = {"width": 32, "blocks": 1}
    _checkpoint(tmp_path / "ok.pt", config, codec, seed=1)
    _checkpoint(tmp_path / "new.pt", config, codec, seed=2)
    out = tmp_path / "out"
    export_checkpoint(tmp_path / "ok.pt", out, batch_max=4, tensorrt=False)
    before = (out / "lifter.onnx").read_bytes()
    with pytest.raises(ExportError, match="differs from torch"):
        export_checkpoint(tmp_path / "new.pt", out, batch_max=4, atol=-1.0, tensorrt=False)
    assert (out / "lifter.onnx").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["lifter.onnx"]  # no temporary left behind


def test_bad_checkpoints(tmp_path, codec):
    with pytest.raises(ExportError, match="not found"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path / "out")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="could not be read") as err:
        export_checkpoint(tmp_path / "junk.pt", tmp_path / "out")
    assert "junk.pt" in str(err.value)
    model = build_lifter(width=32, blocks=1)
    torch.save({"state_dict": model.state_dict(), "codec": codec.to_metadata()}, tmp_path / "nocfg.pt")
    with pytest.raises(ExportError, match=r"lacks \['model_config'\]"):
        export_checkpoint(tmp_path / "nocfg.pt", tmp_path / "out")
    torch.save({"model_config": {"width": 64, "blocks": 1}, "state_dict": model.state_dict(),
                "codec": codec.to_metadata()}, tmp_path / "mismatch.pt")
    with pytest.raises(ExportError, match="do not fit build_lifter"):
        export_checkpoint(tmp_path / "mismatch.pt", tmp_path / "out")
    assert not (tmp_path / "out" / "lifter.onnx").exists()


def test_damaged_export_gives_engine_error_naming_the_file(full_size, tmp_path):
    data = full_size[1].onnx_path.read_bytes()
    cases = {"truncated.onnx": data[: len(data) // 3], "empty.onnx": b"",
             "flipped.onnx": data[:100] + bytes(b ^ 0xFF for b in data[100:4000]) + data[4000:]}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(EngineError) as err:
            load_engine(path)
        assert str(path) in str(err.value) and "engines.training.export" in str(err.value), name
    with pytest.raises(EngineError, match="not found"):
        load_engine(tmp_path / "missing.onnx")


def _run(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_cli_exports_a_real_training_checkpoint(tmp_path):
    """engines.training.train (a few li2020 steps on real mocap) -> python -m engines.training.export -> runtime."""
    train = _run(["-m", "engines.training.train", "--method", "li2020", "--out", str(tmp_path / "run"),
                  "--steps", "2", "--batch", "16", "--sources", "cmu_expmap", "--max-poses", "100",
                  "--width", "32", "--blocks", "1", "--pretrain-steps", "1", "--checkpoint-every", "2"])
    assert train.returncode == 0, train.stderr[-2000:]
    result = _run(["-m", "engines.training.export", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"),
                   "--out", str(tmp_path / "engine"), "--batch-max", "8"])
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["onnx"] == str(tmp_path / "engine" / "lifter.onnx")
    assert summary["max_abs_diff"] <= 1e-4 and summary["tensorrt_plan"] is None
    assert "skipped the TensorRT plan" in result.stderr
    engine = load_engine(summary["onnx"])
    assert engine.engine_id == summary["engine_id"]
    assert engine.metadata["training"]["method"] == "li2020"
    assert engine.metadata["training"]["steps"] == 2


def test_cli_help_and_errors(tmp_path):
    helped = _run(["-m", "engines.training.export", "--help"])
    assert helped.returncode == 0 and "--checkpoint" in helped.stdout and "--batch-max" in helped.stdout
    failed = _run(["-m", "engines.training.export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path)])
    assert failed.returncode == 1
    assert str(tmp_path / "none.pt") in failed.stderr and "engines.training.train" in failed.stderr


def test_metadata_json_handles_numpy_and_tensors():
    value = {"a": np.float32(1.5), "b": np.arange(3), "c": torch.tensor([1.0, 2.0]), "d": Path("x")}
    assert json.loads(json.dumps(value, default=export._jsonable)) == {"a": 1.5, "b": [0, 1, 2],
                                                                       "c": [1.0, 2.0], "d": "x"}
