"""Fine-tuning from an exported engine (`--init-engine`) and a trained base at its own rate
(`--lr-base-ratio`): the run starts exactly at the file's output (ONNX Runtime), keeps the norms
the exporter folded, and refuses an engine of another architecture with the reason."""

import numpy as np
import pytest
import torch

from engines.runtime.engine import DEFAULT_ENGINE_PATH, TEMPORAL_ENGINE_PATH
from engines.training import mocap
from engines.training.train import METHOD_CLASSES, TrainConfig, build_data, canonical_codec, train

#: The shipped temporal engine's architecture (engines/temporal/MODEL_CARD.md), a short run.
SHIPPED = dict(method="distill", steps=6, batch=16, receptive_field=27, channels=256,
               head="refine", fps=30.0, windows=60, views=1, temporal_noise=1.0,
               noise_rho_min=0.0, static_share=0.1, w_accel=2.0, log_every=2,
               teacher_engine="default", base_engine="default")


@pytest.fixture(scope="module")
def clips() -> list[tuple[np.ndarray, float]]:
    """Two CMU exp-map training clips at 30 fps, canonical skeleton (mm)."""
    seqs = mocap.load_sequences(["cmu_expmap"], "train", fps=30)[:2]
    return [(mocap.retarget(s).astype(np.float32), 30.0) for s in seqs]


def _onnx(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_a_fine_tune_starts_at_the_shipped_engine_and_keeps_its_folded_norms(tmp_path, clips):
    codec = canonical_codec()
    cfg = TrainConfig(out=str(tmp_path / "run"), init_engine="temporal", **SHIPPED)
    data = build_data(cfg, clips, codec)
    windows = data.joints_2d_norm[:8, -27:]                             # (8, 27, 17, 2)
    shipped = _onnx(TEMPORAL_ENGINE_PATH, windows)

    start = METHOD_CLASSES["distill"](cfg, codec).lifter.eval()
    with torch.no_grad():
        np.testing.assert_allclose(start(torch.from_numpy(windows)).numpy(), shipped, atol=1e-5)
    fresh = METHOD_CLASSES["distill"](TrainConfig(out=str(tmp_path / "f"), **SHIPPED),
                                      codec).lifter.eval()
    with torch.no_grad():                     # without --init-engine: the base alone, not this
        assert np.abs(fresh(torch.from_numpy(windows)).numpy() - shipped).max() > 1e-3

    norms_before = {k: v.clone() for k, v in start.state_dict().items() if "running" in k}
    ckpt = train(cfg, data=data, codec=codec, progress=False)
    moved = []
    for key, before in norms_before.items():                 # statistics held, bit for bit
        torch.testing.assert_close(ckpt["state_dict"][key], before, rtol=0, atol=0)
    for key, before in start.state_dict().items():
        if "running" not in key and "base." not in key and before.is_floating_point():
            moved.append(float((ckpt["state_dict"][key] - before).abs().max()))
    assert max(moved) > 0                                    # the weights themselves learn
    # the run's first logged loss is the shipped engine's (teacher distance ~0.10 codec units
    # at the end of its training), not a fresh network's (~0.15)
    first = np.genfromtxt(tmp_path / "run" / "log.csv", delimiter=",", names=True)["teacher_dist"][0]
    assert first < 0.13, first


def test_the_base_learns_at_its_own_rate(tmp_path, clips):
    """Adam moves a weight by about the learning rate per step: at ratio 0.1 the base's weights
    move about a tenth as far as at ratio 1 in the same steps, the temporal network as far."""
    codec = canonical_codec()
    kw = {**SHIPPED, "channels": 32, "receptive_field": 9, "steps": 8, "lr": 1e-3,
          "freeze_base": False}
    data = build_data(TrainConfig(out=str(tmp_path / "d"), **kw), clips, codec)

    def moved(ratio: float) -> tuple[float, float]:
        cfg = TrainConfig(out=str(tmp_path / f"r{ratio}"), lr_base_ratio=ratio, **kw)
        torch.manual_seed(cfg.seed)                                  # as train() starts
        start = {k: v.clone() for k, v in METHOD_CLASSES["distill"](cfg, codec).lifter
                 .state_dict().items()}
        end = train(cfg, data=data, codec=codec, progress=False)["state_dict"]

        def mean_move(keys):
            return float(np.mean([(end[k] - start[k]).abs().mean() for k in keys]))
        weights = [k for k in start if k.endswith("weight") and start[k].dim() > 1]
        return (mean_move([k for k in weights if k.startswith("base.")]),
                mean_move([k for k in weights if not k.startswith("base.")]))

    base_full, own_full = moved(1.0)
    base_tenth, own_tenth = moved(0.1)
    print(f"base moved {base_full:.2e} at 1, {base_tenth:.2e} at 0.1; own {own_full:.2e}, "
          f"{own_tenth:.2e}")
    assert 0.05 < base_tenth / base_full < 0.2
    assert 0.5 < own_tenth / own_full < 2.0


def test_engines_a_run_cannot_start_from_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="model_config .* is not this run's"):
        TrainConfig(out=str(tmp_path), init_engine=str(DEFAULT_ENGINE_PATH), **SHIPPED)
    with pytest.raises(ValueError, match="model_config .* is not this run's"):
        TrainConfig(out=str(tmp_path), init_engine="temporal", **{**SHIPPED, "channels": 128})
    with pytest.raises(ValueError, match="no such file"):
        TrainConfig(out=str(tmp_path), init_engine=str(tmp_path / "none.onnx"), **SHIPPED)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(ValueError, match="not a posestream ONNX engine"):
        TrainConfig(out=str(tmp_path), init_engine=str(junk), **SHIPPED)
    with pytest.raises(ValueError, match="--lr-base-ratio"):
        TrainConfig(out=str(tmp_path), lr_base_ratio=0.1, **SHIPPED)     # the base is frozen
    with pytest.raises(ValueError, match="--lr-base-ratio"):
        TrainConfig(out=str(tmp_path), lr_base_ratio=0.0, freeze_base=False, **SHIPPED)


def test_a_base_trained_as_run_learns_with_no_dropout_and_fixed_statistics(tmp_path, clips):
    codec = canonical_codec()
    kw = {**SHIPPED, "channels": 32, "receptive_field": 9, "steps": 6, "lr": 1e-3,
          "freeze_base": False, "base_as_run": True}
    cfg = TrainConfig(out=str(tmp_path / "run"), **kw)
    lifter = METHOD_CLASSES["distill"](cfg, codec).lifter.train()
    assert not lifter.base.training and lifter.training          # the base runs as the engine
    assert all(p.requires_grad for p in lifter.base.parameters())
    start = {k: v.clone() for k, v in lifter.state_dict().items() if k.startswith("base.")}
    end = train(cfg, data=build_data(cfg, clips, codec), codec=codec, progress=False)["state_dict"]
    stats = [k for k in start if "running" in k]
    weights = [k for k in start if k.endswith("weight") and start[k].dim() > 1]
    for key in stats:
        torch.testing.assert_close(end[key], start[key], rtol=0, atol=0)
    assert min(float((end[k] - start[k]).abs().max()) for k in weights) > 0
    with pytest.raises(ValueError, match="--base-as-run"):
        TrainConfig(out=str(tmp_path), base_as_run=True, **SHIPPED)     # a frozen base
