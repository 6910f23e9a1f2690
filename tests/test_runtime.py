"""engines/runtime/engine.py: loading engines, backend choice, clear errors, torch-free runtime.

Engines here are real exports (engines.training.export) of small real lifters (engines.training.models), run by
real ONNX Runtime; damaged files are made by damaging such an export.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engines.runtime import engine as runtime
from engines.runtime.codec import Codec
from engines.training.export import export_model
from engines.training.models import build_lifter
from engines.runtime.engine import DEFAULT_ENGINE_PATH, EngineError, EngineOptions, load_engine
from engines.runtime.skeleton import JOINT_NAMES, NUM_JOINTS, ROOT, bone_lengths
from tests.conftest import expected_auto_backend, expected_backends

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSESTREAM_SHARED", REPO.parent / "shared"))
H36M_BODY3D = SHARED / "data/footage/mmpose/tests/data/h36m/test_h36m_body3d.npz"
MODEL_CONFIG = {"width": 64, "blocks": 1, "dropout": 0.25, "head": "depth"}


@pytest.fixture(scope="module")
def h36m():
    """(joints_3d_m (4, 17, 3) camera metres, joints_2d_px (4, 17, 2)) of the real H3.6M frames."""
    if not H36M_BODY3D.is_file():
        pytest.fail(f"missing shared data file {H36M_BODY3D}: set POSESTREAM_SHARED to the shared folder")
    data = np.load(H36M_BODY3D)
    return data["S"][:, :, :3].astype(np.float32), data["part"][:, :, :2].astype(np.float32)


@pytest.fixture(scope="module")
def codec(h36m):
    """A codec whose bone-length prior is subject S1's real bone lengths."""
    return Codec(canonical_bone_lengths_m=tuple(float(x) for x in bone_lengths(h36m[0][0].astype(np.float64))))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, codec):
    """(torch lifter in eval mode, path of its exported engine)."""
    torch.manual_seed(0)
    model = build_lifter(**MODEL_CONFIG)
    out = tmp_path_factory.mktemp("engine")
    export_model(model, codec, out, model_config=MODEL_CONFIG, training={"method": "test"}, tensorrt=False)
    return model.eval(), out / "lifter.onnx"


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy an engine through onnx with `edit(model)` applied."""
    model = onnx.load(str(src))
    edit(model)
    onnx.save(model, str(dst))
    return dst


def _set_metadata(model, metadata: dict | None, raw: str | None = None) -> None:
    del model.metadata_props[:]
    if metadata is not None or raw is not None:
        entry = model.metadata_props.add()
        entry.key = runtime.METADATA_KEY
        entry.value = raw if raw is not None else json.dumps(metadata)


def test_load_and_run_matches_torch_on_real_poses(exported, codec, h36m):
    model, path = exported
    engine = load_engine(path)
    assert engine.backend == expected_auto_backend()  # onnxruntime-cpu without a GPU
    assert engine.path == path
    joints_2d_norm = codec.encode(h36m[1], 1145.0, 1144.0, 512.0, 515.0)
    out = engine.run({"joints_2d": joints_2d_norm})
    assert set(out) == {"joints_3d"}
    assert out["joints_3d"].shape == (4, NUM_JOINTS, 3) and out["joints_3d"].dtype == np.float32
    with torch.no_grad():
        want = model(torch.from_numpy(joints_2d_norm)).numpy()
    # FP16 on a GPU (TensorRT) is looser than ONNX Runtime's float32
    tolerance = 1e-4 if engine.backend != "tensorrt" else 2e-2 * max(1.0, np.abs(want).max())
    assert np.abs(out["joints_3d"] - want).max() <= tolerance
    # root-relative, as DESIGN.md says
    assert np.abs(out["joints_3d"][:, ROOT]).max() < 1e-6


def test_metadata_codec_and_id(exported, codec):
    _, path = exported
    engine = load_engine(path)
    assert engine.metadata["joints"] == list(JOINT_NAMES)
    assert engine.metadata["receptive_field"] == 1 and engine.receptive_field == 1
    assert engine.metadata["model_config"] == MODEL_CONFIG
    assert engine.metadata["training"] == {"method": "test"}
    assert len(engine.engine_id) == 12 and int(engine.engine_id, 16) >= 0
    assert engine.codec == codec
    assert runtime.read_metadata(path) == engine.metadata


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_dynamic_batch(exported, batch):
    _, path = exported
    engine = load_engine(path)
    rng = np.random.default_rng(batch)
    out = engine.run({"joints_2d": rng.normal(0, 0.1, (batch, NUM_JOINTS, 2))})  # float64 in: converted
    assert out["joints_3d"].shape == (batch, NUM_JOINTS, 3)
    assert np.isfinite(out["joints_3d"]).all()


def test_one_info_line_names_the_backend(exported, caplog):
    _, path = exported
    with caplog.at_level(logging.INFO, logger="engines.runtime.engine"):
        load_engine(path)
    lines = [r for r in caplog.records if r.name == "engines.runtime.engine" and r.levelno == logging.INFO]
    assert len(lines) == 1
    assert expected_auto_backend() in lines[0].getMessage()
    assert str(path) in lines[0].getMessage()


def test_backend_choice_and_forcing(exported):
    _, path = exported
    status = runtime.available_backends()
    usable = expected_backends()  # from the machine, not from the code under test
    assert list(status) == list(runtime.BACKENDS)
    assert {name: reason is None for name, reason in status.items()} == usable, status
    assert load_engine(path, backend="onnxruntime-cpu").backend == "onnxruntime-cpu"
    expected = "onnxruntime-cuda" if usable["onnxruntime-cuda"] else "onnxruntime-cpu"
    assert load_engine(path, backend="onnxruntime").backend == expected
    with pytest.raises(EngineError, match="unknown backend 'openvino'"):
        load_engine(path, backend="openvino")
    for name in ("tensorrt", "onnxruntime-cuda"):
        if not usable[name]:  # forcing an unavailable backend says why
            with pytest.raises(EngineError, match=f"backend '{name}' is not available"):
                load_engine(path, backend=name)


def _threads() -> int:
    """Threads of this process, from the kernel (/proc/self/task)."""
    return len(os.listdir("/proc/self/task"))


def test_intra_op_threads_option(exported):
    """ONNX Runtime's intra-op pool has n - 1 threads besides the caller's: counted by the
    kernel while each engine is alive, not read back from our own options."""
    _, path = exported
    load_engine(path, backend="onnxruntime-cpu")  # libraries loaded, their threads started
    engines = []
    for n in (1, 3, 2):
        before = _threads()
        engines.append(load_engine(path, backend="onnxruntime-cpu",
                                   options=EngineOptions(intra_op_num_threads=n)))
        assert _threads() - before == n - 1, (n, before, _threads())
        out = engines[-1].run({"joints_2d": np.zeros((1, NUM_JOINTS, 2))})["joints_3d"]
        assert out.shape == (1, NUM_JOINTS, 3)
    with pytest.raises(ValueError, match="intra_op_num_threads"):
        load_engine(path, options=EngineOptions(intra_op_num_threads=0))


def test_run_rejects_wrong_inputs(exported):
    _, path = exported
    engine = load_engine(path)
    with pytest.raises(ValueError, match="takes inputs"):
        engine.run({"keypoints": np.zeros((1, NUM_JOINTS, 2))})
    with pytest.raises(ValueError, match=r"must be \(B, 17, 2\)"):
        engine.run({"joints_2d": np.zeros((NUM_JOINTS, 2))})
    with pytest.raises(ValueError, match=r"must be \(B, 17, 2\)"):
        engine.run({"joints_2d": np.zeros((1, 16, 2))})


# --- missing and damaged files ----------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.onnx"
    with pytest.raises(EngineError, match="not found") as err:
        load_engine(path)
    assert str(path) in str(err.value) and "engines.training.export" in str(err.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(EngineError, match="not a file"):
        load_engine(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "lifter.onnx"
    path.write_bytes(b"")
    with pytest.raises(EngineError, match="is empty") as err:
        load_engine(path)
    assert str(path) in str(err.value) and "python -m engines.training.export" in str(err.value)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_file(exported, tmp_path, fraction):
    data = exported[1].read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(EngineError) as err:
        load_engine(path)
    assert str(path) in str(err.value) and "re-export" in str(err.value)


def test_random_bytes(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(EngineError, match="could not be loaded") as err:
        load_engine(path)
    assert str(path) in str(err.value)


def test_onnx_without_our_metadata(exported, tmp_path):
    path = _rewrite(exported[1], tmp_path / "foreign.onnx", lambda m: _set_metadata(m, None))
    with pytest.raises(EngineError, match="not a posestream engine") as err:
        load_engine(path)
    assert str(path) in str(err.value) and "engines.training.export" in str(err.value)


def test_bad_metadata(exported, tmp_path):
    good = runtime.read_metadata(exported[1])
    cases = {
        "not_json": (None, "{codec:"),
        "missing_codec": ({k: v for k, v in good.items() if k != "codec"}, None),
        "other_joints": ({**good, "joints": list(reversed(JOINT_NAMES))}, None),
        "bad_id": ({**good, "engine_id": "xyz"}, None),
        "temporal": ({**good, "receptive_field": 27}, None),
        "temporal_graph": ({**good, "receptive_field": 27, "fps": 30.0, "causal": True}, None),
        "no_causal": ({**good, "receptive_field": 27, "fps": 30.0}, None),
        "bad_rf": ({**good, "receptive_field": 0}, None),
        "bad_codec": ({**good, "codec": {**good["codec"], "canonical_bone_lengths_m": [1.0]}}, None),
    }
    messages = {
        "not_json": "not valid JSON", "missing_codec": r"lacks \['codec'\]",
        "other_joints": "differ from this code's skeleton", "bad_id": "not 12 hex",
        "temporal": "frame rate its windows", "bad_codec": "bad codec metadata",
        "temporal_graph": r"expected float32 \[batch, 27, 17, 2\]", "no_causal": "causal",
        "bad_rf": "not a frame count",
    }
    for name, (meta, raw) in cases.items():
        path = _rewrite(exported[1], tmp_path / f"{name}.onnx", lambda m: _set_metadata(m, meta, raw))
        with pytest.raises(EngineError, match=messages[name]) as err:
            load_engine(path)
        assert str(path) in str(err.value), name


def _tiny_onnx(path: Path, input_name: str, joints: int, dynamic: bool, metadata: dict) -> Path:
    """A real ONNX model (B, joints, 2) -> (B, joints, 3) with our metadata but a wrong signature."""

    class PadZ(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x, x[..., :1] * 0.0], dim=-1)

    torch.onnx.export(
        PadZ(), (torch.zeros(2, joints, 2),), str(path), input_names=[input_name], output_names=["joints_3d"],
        dynamic_axes={input_name: {0: "b"}, "joints_3d": {0: "b"}} if dynamic else None,
        opset_version=17, dynamo=False,
    )
    return _rewrite(path, path, lambda m: _set_metadata(m, metadata))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_wrong_signature(exported, tmp_path):
    meta = runtime.read_metadata(exported[1])
    wrong_name = _tiny_onnx(tmp_path / "name.onnx", "keypoints", NUM_JOINTS, True, meta)
    with pytest.raises(EngineError, match=r"inputs are \['keypoints'\], expected \['joints_2d'\]"):
        load_engine(wrong_name)
    wrong_joints = _tiny_onnx(tmp_path / "joints.onnx", "joints_2d", 16, True, meta)
    with pytest.raises(EngineError, match=r"expected float32 \[batch, 17, 2\]") as err:
        load_engine(wrong_joints)
    assert str(wrong_joints) in str(err.value)
    static = _tiny_onnx(tmp_path / "static.onnx", "joints_2d", NUM_JOINTS, False, meta)
    with pytest.raises(EngineError, match="dynamic batch axis"):
        load_engine(static)


def test_default_engine_path():
    assert DEFAULT_ENGINE_PATH == REPO / "engines" / "default" / "lifter.onnx"
    if DEFAULT_ENGINE_PATH.is_file():  # once the default engine ships, it must load and run
        engine = load_engine()
        out = engine.run({"joints_2d": np.zeros((1, NUM_JOINTS, 2), np.float32)})
        assert out["joints_3d"].shape == (1, NUM_JOINTS, 3)
    else:
        with pytest.raises(EngineError, match="default engine is missing") as err:
            load_engine()
        assert str(DEFAULT_ENGINE_PATH) in str(err.value)


def test_runtime_never_imports_torch(exported):
    """A fresh interpreter that loads and runs an engine has no torch in sys.modules."""
    code = (
        "import sys, numpy as np\n"
        "from engines.runtime.engine import load_engine\n"
        "import engines.runtime.reproject, engines.runtime.codec, engines.runtime.tensorrt_backend\n"
        f"e = load_engine({str(exported[1])!r})\n"
        "out = e.run({'joints_2d': np.zeros((1, 17, 2), np.float32)})\n"
        "e.codec\n"
        "print(out['joints_3d'].shape, 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 17, 3) False"
