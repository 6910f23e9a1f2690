"""engines/runtime/tensorrt_backend.py: the plan cache and the fallback run everywhere; building and
running plans needs tensorrt and an NVIDIA GPU and is skipped (with the reason) without them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.runtime import engine as runtime, tensorrt_backend
from engines.runtime.codec import Codec
from engines.training.export import export_model
from engines.training.models import build_lifter
from engines.runtime.engine import EngineError, load_engine
from engines.runtime.skeleton import NUM_JOINTS
from engines.runtime.tensorrt_backend import TensorRTError, plan_cache_key, plan_path
from tests.conftest import expected_auto_backend, expected_backends, nvidia_gpu_present

SHA = hashlib.sha256(b"lifter").hexdigest()
BONES_M = (0.13, 0.45, 0.45, 0.13, 0.45, 0.45, 0.24, 0.25, 0.12, 0.11, 0.15, 0.28, 0.25, 0.15, 0.28, 0.25)
#: from the machine (a GPU's device node, tensorrt and cuda-python installed), not from the
#: code under test; test_unavailable_reason_matches_this_machine checks the code agrees
TRT_USABLE = expected_backends()["tensorrt"]
needs_gpu = pytest.mark.skipif(
    not TRT_USABLE, reason="needs an NVIDIA GPU, tensorrt and cuda-python "
    f"(GPU device node: {nvidia_gpu_present()}; here: {tensorrt_backend.unavailable_reason()})")


@pytest.fixture(scope="module")
def engine_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("trt")
    model = build_lifter(width=64, blocks=1)
    export_model(model, Codec(canonical_bone_lengths_m=BONES_M), out, model_config={"width": 64, "blocks": 1},
                 tensorrt=False)
    return out / "lifter.onnx"


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make `import tensorrt` fail, as on a machine without it, and reset the cached answer."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    tensorrt_backend.unavailable_reason.cache_clear()
    yield
    tensorrt_backend.unavailable_reason.cache_clear()


# --- plan cache -----------------------------------------------------------------------------------

def test_cache_key_names_everything_a_plan_depends_on():
    key = plan_cache_key("NVIDIA H100 80GB HBM3", "10.13.3.9", SHA, 64, True)
    assert key == f"nvidia-h100-80gb-hbm3.trt10.13.3.9.{SHA[:16]}.b64.fp16"
    assert re.fullmatch(r"[a-z0-9.\-]+", key)
    assert plan_cache_key("NVIDIA H100 80GB HBM3", "10.13.3.9", SHA, 64, True) == key  # stable
    others = {
        plan_cache_key("NVIDIA GeForce RTX 4090", "10.13.3.9", SHA, 64, True),
        plan_cache_key("NVIDIA H100 80GB HBM3", "10.14.0.1", SHA, 64, True),
        plan_cache_key("NVIDIA H100 80GB HBM3", "10.13.3.9", hashlib.sha256(b"other").hexdigest(), 64, True),
        plan_cache_key("NVIDIA H100 80GB HBM3", "10.13.3.9", SHA, 1, True),
        plan_cache_key("NVIDIA H100 80GB HBM3", "10.13.3.9", SHA, 64, False),
    }
    assert len(others) == 5 and key not in others


def test_cache_key_is_file_name_safe_for_odd_gpu_names():
    key = plan_cache_key("  Tesla V100/SXM2 (16 GB)  ", "10.0.1", SHA, 8, False)
    assert key.startswith("tesla-v100-sxm2-16-gb.trt10.0.1.")
    assert "/" not in key and " " not in key
    with pytest.raises(ValueError, match="hex digest"):
        plan_cache_key("gpu", "10.0", "not-a-sha", 8, False)
    with pytest.raises(ValueError, match="batch_max"):
        plan_cache_key("gpu", "10.0", SHA, 0, False)


def test_plan_path_beside_the_onnx_if_there_else_the_user_cache(tmp_path, monkeypatch):
    onnx_path = tmp_path / "engines" / "lifter.onnx"
    onnx_path.parent.mkdir()
    key = plan_cache_key("gpu", "10.0", SHA, 8, True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tensorrt_backend.default_cache_dir() == tmp_path / "xdg" / "posestream"
    assert plan_path(onnx_path, key) == tmp_path / "xdg" / "posestream" / f"lifter.{key}.plan"
    (onnx_path.parent / f"lifter.{key}.plan").write_bytes(b"plan")  # exported beside the engine
    assert plan_path(onnx_path, key) == onnx_path.parent / f"lifter.{key}.plan"
    other = plan_cache_key("other gpu", "10.0", SHA, 8, True)  # a plan for another GPU is not used
    assert plan_path(onnx_path, other) == tmp_path / "xdg" / "posestream" / f"lifter.{other}.plan"
    assert plan_path(onnx_path, key, cache_dir=tmp_path / "c") == tmp_path / "c" / f"lifter.{key}.plan"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert tensorrt_backend.default_cache_dir() == Path.home() / ".cache" / "posestream"


def test_file_sha256_and_atomic_write(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()  # > one read block
    path = tmp_path / "sub" / "x.plan"
    tensorrt_backend._write_atomic(path, data)
    assert path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == ["x.plan"]
    assert tensorrt_backend.file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_a_plan_gets_the_onnx_files_permissions(tmp_path):
    """mkstemp makes files 0600: a plan written so would be unreadable to another user (or a
    non-root runtime after a root export), who would silently rebuild or fall back. The plan
    takes the ONNX file's mode, whatever the umask."""
    onnx_path = tmp_path / "lifter.onnx"
    onnx_path.write_bytes(b"onnx")
    old_umask = os.umask(0o077)
    try:
        for mode in (0o644, 0o640, 0o600):
            onnx_path.chmod(mode)
            plan = tmp_path / f"lifter.{mode:o}.plan"
            tensorrt_backend.store_plan(plan, b"plan bytes", onnx_path)
            assert stat.S_IMODE(plan.stat().st_mode) == mode, (oct(mode), oct(plan.stat().st_mode))
            assert plan.read_bytes() == b"plan bytes"
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lifter.600.plan", "lifter.640.plan", "lifter.644.plan", "lifter.onnx"]  # no temp left


def test_a_plan_that_failed_to_load_is_rebuilt_into_the_cache(tmp_path, monkeypatch):
    """A plan beside the ONNX file is used while it loads; once it failed (rebuild), the new
    plan goes to the user's cache, never over the file in the engine's folder (which may be
    the repository's, or another user's)."""
    onnx_path = tmp_path / "engines" / "lifter.onnx"
    onnx_path.parent.mkdir()
    key = plan_cache_key("gpu", "10.13.3.9", SHA, 8, True)
    beside = onnx_path.parent / f"lifter.{key}.plan"
    beside.write_bytes(b"a plan from another TensorRT build")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cached = tmp_path / "xdg" / "posestream" / f"lifter.{key}.plan"
    assert plan_path(onnx_path, key) == beside
    assert plan_path(onnx_path, key, beside_ok=False) == cached
    # a folder given explicitly (export's own folder) is where it is rebuilt
    assert plan_path(onnx_path, key, tmp_path / "c", beside_ok=False) == tmp_path / "c" / beside.name


@pytest.mark.parametrize("version,problem", [
    ("10.13.3.9", None), ("10.0.1", None), ("10.12.0.36", None),
    ("8.6.1", "too old"), ("9.3.0", "too old"),
    ("11.0.0", "newer than the 10.x"), ("12.1", "newer than the 10.x"),
    ("", "not a TensorRT release number"), ("dev", "not a TensorRT release number"),
])
def test_only_the_tested_tensorrt_major_is_accepted(version, problem):
    got = tensorrt_backend.version_problem(version)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got and version in got
        assert "pip install .[tensorrt]" in got


@pytest.mark.parametrize("version,strong", [
    ("10.13.3.9", True), ("10.12.0.36", True), ("10.11.0.33", False), ("10.0.1", False),
])
def test_strong_typing_from_10_12(version, strong):
    assert tensorrt_backend.uses_strong_typing(version) is strong


@pytest.mark.parametrize("lifter", ["test", "default"])
def test_the_fp16_copy_for_strong_typing_is_fp16_inside_and_fp32_at_the_edges(lifter, engine_path):
    """What a strongly typed TensorRT network gets for an FP16 plan: every float weight in
    float16, float32 inputs and outputs; run here on ONNX Runtime's CPU against the float32
    file, it agrees to FP16 precision."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    path = engine_path if lifter == "test" else runtime.DEFAULT_ENGINE_PATH
    data = tensorrt_backend.fp16_onnx(path)
    model = onnx.load_from_string(data)
    floats = [i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT]
    assert floats == [] and any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    assert [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)] \
        == [TensorProto.FLOAT] * (len(model.graph.input) + len(model.graph.output))
    half = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    full = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(0, 0.1, (8, NUM_JOINTS, 2)).astype(np.float32)
    got, want = half.run(None, {"joints_2d": x})[0], full.run(None, {"joints_2d": x})[0]
    assert got.dtype == np.float32 and got.shape == want.shape
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    assert 0 < err <= 2e-2, err  # FP16 really computed (not 0), within FP16 precision


# --- export: the ONNX engine stays whatever TensorRT makes of it --------------------------------

class _WithDet(torch.nn.Module):
    """A lifter with an extra output computed by ONNX's Det, which ONNX Runtime runs and
    TensorRT's ONNX parser does not support: a real model TensorRT cannot build."""

    def __init__(self) -> None:
        super().__init__()
        self.lifter = build_lifter(width=64, blocks=1)

    def forward(self, joints_2d: torch.Tensor):
        return {"joints_3d": self.lifter(joints_2d), "det": torch.linalg.det(joints_2d[:, :2, :])}


def _checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_lifter(width=64, blocks=1)
    path = tmp_path / "ckpt.pt"
    torch.save({"model_config": {"width": 64, "blocks": 1}, "state_dict": model.state_dict(),
                "codec": Codec(canonical_bone_lengths_m=BONES_M).to_metadata()}, path)
    return path


def test_export_without_tensorrt_keeps_the_onnx_and_says_why(no_tensorrt, tmp_path, capsys):
    from engines.training.export import main

    out = tmp_path / "engine"
    assert main(["--checkpoint", str(_checkpoint(tmp_path)), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["tensorrt_plan"] is None
    assert "tensorrt module is not installed" in printed["tensorrt_skipped"]
    assert printed["onnx"] == str(out / "lifter.onnx")
    assert load_engine(out / "lifter.onnx", backend="onnxruntime-cpu").backend == "onnxruntime-cpu"
    assert not list(out.glob("*.plan"))


def test_the_model_tensorrt_cannot_build_exports_and_runs_on_onnxruntime(tmp_path):
    """The input the GPU test below hands TensorRT: exported (ONNX Runtime runs Det), with Det
    in the graph; without TensorRT here it gets no plan and keeps its ONNX."""
    import onnx

    result = export_model(_WithDet(), Codec(canonical_bone_lengths_m=BONES_M), tmp_path,
                          model_config={"width": 64, "blocks": 1}, tensorrt=not TRT_USABLE)
    assert "Det" in {n.op_type for n in onnx.load(str(result.onnx_path)).graph.node}
    engine = load_engine(result.onnx_path, backend="onnxruntime-cpu")
    x = np.random.default_rng(0).normal(0, 0.1, (3, NUM_JOINTS, 2)).astype(np.float32)
    np.testing.assert_allclose(engine.run({"joints_2d": x})["det"], np.linalg.det(x[:, :2, :]),
                               rtol=1e-4, atol=1e-7)
    assert result.plan_path is None


@needs_gpu
def test_export_keeps_the_onnx_when_tensorrt_cannot_build_a_plan(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="engines.training.export"):
        result = export_model(_WithDet(), Codec(canonical_bone_lengths_m=BONES_M), tmp_path,
                              model_config={"width": 64, "blocks": 1}, tensorrt=True)
    assert result.plan_path is None and "could not build a plan" in result.plan_skipped
    assert "kept" in caplog.text and str(result.onnx_path) in caplog.text
    assert load_engine(result.onnx_path, backend="onnxruntime-cpu").engine_id == result.engine_id


# --- fallback when TensorRT is missing ----------------------------------------------------------

def test_missing_tensorrt_is_reported_and_auto_falls_back(no_tensorrt, engine_path, caplog):
    reason = tensorrt_backend.unavailable_reason()
    assert reason is not None and "tensorrt module is not installed" in reason
    assert "pip install .[tensorrt]" in reason
    assert runtime.available_backends()["tensorrt"] == reason
    with caplog.at_level(logging.INFO, logger="engines.runtime.engine"):
        engine = load_engine(engine_path, backend="auto")
    assert engine.backend in ("onnxruntime-cuda", "onnxruntime-cpu")
    assert engine.backend in caplog.text
    out = engine.run({"joints_2d": np.zeros((2, NUM_JOINTS, 2), np.float32)})
    assert out["joints_3d"].shape == (2, NUM_JOINTS, 3)


def test_forcing_tensorrt_without_it_is_a_clear_error(no_tensorrt, engine_path):
    with pytest.raises(EngineError, match="backend 'tensorrt' is not available: the tensorrt module"):
        load_engine(engine_path, backend="tensorrt")
    with pytest.raises(TensorRTError, match="TensorRT backend unavailable"):
        tensorrt_backend.TensorRTSession(engine_path)


def test_auto_choice_matches_this_machine(engine_path, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # a plan built here stays out of ~/.cache
    assert (tensorrt_backend.unavailable_reason() is None) == TRT_USABLE
    engine = load_engine(engine_path)
    assert engine.backend == expected_auto_backend()


# --- on an NVIDIA GPU with TensorRT ----------------------------------------------------------------

@needs_gpu
def test_tensorrt_matches_onnxruntime_and_caches_the_plan(engine_path, tmp_path, caplog):
    cache = tmp_path / "cache"
    session = tensorrt_backend.TensorRTSession(engine_path, batch_max=16, cache_dir=cache)
    plans = list(cache.glob("lifter.*.plan"))
    assert plans == [session.plan_path]
    built_at = session.plan_path.stat().st_mtime_ns
    assert session.input_names == ["joints_2d"] and session.output_names == ["joints_3d"]
    reference = load_engine(engine_path, backend="onnxruntime-cpu")
    rng = np.random.default_rng(0)
    for batch in (1, 5, 16):
        joints_2d = rng.normal(0, 0.1, (batch, NUM_JOINTS, 2)).astype(np.float32)
        got = session.run({"joints_2d": joints_2d})["joints_3d"]
        want = reference.run({"joints_2d": joints_2d})["joints_3d"]
        assert got.shape == (batch, NUM_JOINTS, 3)
        assert np.abs(got - want).max() <= 2e-2 * max(1.0, np.abs(want).max())  # FP16 tolerance
    with pytest.raises(ValueError, match="outside this TensorRT plan's range"):
        session.run({"joints_2d": np.zeros((17, NUM_JOINTS, 2), np.float32)})
    session.close()
    with caplog.at_level(logging.INFO, logger="engines.runtime.tensorrt_backend"):
        again = tensorrt_backend.TensorRTSession(engine_path, batch_max=16, cache_dir=cache)
    assert again.plan_path == session.plan_path
    assert again.plan_path.stat().st_mtime_ns == built_at  # loaded, not rebuilt
    assert "building TensorRT plan" not in caplog.text
    again.close()
    assert again._context is None and again._engine is None and again._runtime is None
    assert again._buffers == {} and again._stream is None
    again.close()  # idempotent
    with pytest.raises(TensorRTError, match="closed"):
        again.run({"joints_2d": np.zeros((1, NUM_JOINTS, 2), np.float32)})


@needs_gpu
def test_load_engine_on_tensorrt(engine_path, tmp_path):
    engine = load_engine(engine_path, backend="tensorrt",
                         options=runtime.EngineOptions(plan_cache_dir=tmp_path))
    assert engine.backend == "tensorrt"
    out = engine.run({"joints_2d": np.zeros((1, NUM_JOINTS, 2), np.float32)})
    assert out["joints_3d"].shape == (1, NUM_JOINTS, 3) and np.isfinite(out["joints_3d"]).all()


@needs_gpu
def test_damaged_cached_plan_is_rebuilt(engine_path, tmp_path):
    session = tensorrt_backend.TensorRTSession(engine_path, batch_max=4, cache_dir=tmp_path)
    path = session.plan_path
    session.close()
    path.write_bytes(b"\0" * 1024)
    rebuilt = tensorrt_backend.TensorRTSession(engine_path, batch_max=4, cache_dir=tmp_path)
    assert rebuilt.plan_path == path and path.stat().st_size > 1024
    rebuilt.close()


@needs_gpu
def test_a_damaged_plan_beside_the_engine_is_rebuilt_into_the_user_cache(engine_path, tmp_path,
                                                                        monkeypatch):
    import shutil

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = tmp_path / "engine"
    folder.mkdir()
    onnx_path = Path(shutil.copy(engine_path, folder / "lifter.onnx"))
    exported = tensorrt_backend.TensorRTSession(onnx_path, batch_max=4, cache_dir=folder)
    beside = exported.plan_path
    exported.close()
    beside.write_bytes(b"\0" * 1024)  # damaged in the engine's folder
    session = tensorrt_backend.TensorRTSession(onnx_path, batch_max=4)
    assert session.plan_path == tmp_path / "xdg" / "posestream" / beside.name
    assert beside.read_bytes() == b"\0" * 1024  # the engine's folder is left alone
    session.close()
