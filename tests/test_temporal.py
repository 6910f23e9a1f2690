"""The causal temporal lifter: the dilated and the strided (engine) forms agree and never look
ahead; its training windows carry detector-like 2D and no 3D label; it exports to an engine the
runtime loads (receptive_field, fps, causal); it is evaluated on sequences."""

import json

import numpy as np
import pytest
import torch

from engines.runtime.engine import DEFAULT_ENGINE_PATH, EngineError, load_engine
from engines.runtime.skeleton import NUM_JOINTS
from engines.training import datasets as ds
from engines.training import mocap
from engines.training.evaluate import (
    EvaluationError,
    LoadedLifter,
    evaluate,
    main as evaluate_main,
    read_poses_file,
    sequence_windows,
)
from engines.training.models import TemporalLifter, build_lifter
from engines.training.train import TrainConfig, build_data, canonical_codec, train

TINY = dict(method="li2020", steps=40, batch=16, receptive_field=9, channels=32, dropout=0.0,
            windows=200, temporal_noise=1.0, head="refine", fps=30.0, pretrain_steps=10,
            log_every=10, views=3)


@pytest.fixture(scope="module")
def clips() -> list[tuple[np.ndarray, float]]:
    """Two CMU exp-map training clips at 30 fps, canonical skeleton (mm)."""
    seqs = mocap.load_sequences(["cmu_expmap"], "train", fps=30)[:2]
    return [(mocap.retarget(s).astype(np.float32), 30.0) for s in seqs]


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 2.0)
        if isinstance(mod, torch.nn.Conv1d) and mod.out_channels == NUM_JOINTS * 3:
            torch.nn.init.normal_(mod.weight, 0, 0.05)  # 2D corrections not zero: test them too
    return model.eval()


def test_strided_window_equals_dilated_sequence_and_never_looks_ahead():
    model = _randomised(TemporalLifter(receptive_field=27, channels=24, dropout=0.0))
    x = torch.randn(2, 40, NUM_JOINTS, 2) * 0.05
    with torch.no_grad():
        dense = model.forward_sequence(x)
        assert dense.shape == (2, 40, NUM_JOINTS, 3)
        for t in (26, 33, 39):                            # a full window of past frames
            torch.testing.assert_close(model(x[:, t - 26 : t + 1]), dense[:, t], atol=1e-5, rtol=0)
        for t in (0, 5):                                  # a track's start: the first frame repeated
            padded = torch.cat([x[:, :1].expand(2, 26 - t, -1, -1), x[:, : t + 1]], 1)
            torch.testing.assert_close(model(padded), dense[:, t], atol=1e-5, rtol=0)
        future = x.clone()
        future[:, 20:] += 1.0
        changed = model.forward_sequence(future)
        torch.testing.assert_close(changed[:, :20], dense[:, :20], atol=0, rtol=0)
        assert (changed[:, 20] - dense[:, 20]).abs().max() > 1e-3
    assert model(x[:, :27]).shape == (2, NUM_JOINTS, 3)
    with pytest.raises(ValueError, match=r"\(B, 27, 17, 2\)"):
        model(x[:, :26])
    with pytest.raises(ValueError, match="power"):
        TemporalLifter(receptive_field=20)
    assert isinstance(build_lifter(kind="temporal", receptive_field=9, channels=8), TemporalLifter)


def test_the_last_three_frames_in_one_pass_equal_three_windows():
    model = _randomised(TemporalLifter(receptive_field=27, channels=24, dropout=0.0))
    x = torch.randn(3, 29, NUM_JOINTS, 2) * 0.05
    with torch.no_grad():
        last = model(x, last=3)
        assert last.shape == (3, 3, NUM_JOINTS, 3)
        for k in range(3):
            torch.testing.assert_close(last[:, k], model(x[:, k : k + 27]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"\(B, 29, 17, 2\)"):
        model(x[:, :28], last=3)


def test_the_smoothness_term_trains_on_two_more_frames_and_smooths(tmp_path, clips):
    """--w-accel: windows hold F + 2 frames, and with the weight the lifted frames' second
    difference ends well below a run on the same windows with a negligible weight (1e-9)."""
    codec = canonical_codec()
    base = {**TINY, "method": "supervised", "views": 1, "steps": 150, "windows": 400,
            "batch": 32, "temporal_noise": 1.0, "noise_rho_min": 0.0}
    on = TrainConfig(out=str(tmp_path / "on"), **{**base, "w_accel": 4.0})
    data = build_data(on, clips, codec)
    assert data.joints_2d_norm.shape[1] == TINY["receptive_field"] + 2
    off = TrainConfig(out=str(tmp_path / "off"), **{**base, "w_accel": 1e-9})  # same windows
    accel = {}
    for name, cfg in (("on", on), ("off", off)):
        ckpt = train(cfg, data=data, codec=codec, progress=False)
        model = build_lifter(**ckpt["model_config"])
        model.load_state_dict(ckpt["state_dict"])
        with torch.no_grad():
            rel = model.eval()(torch.as_tensor(data.joints_2d_norm[:200]), last=3)
        accel[name] = float(torch.linalg.norm(rel[:, 2] - 2 * rel[:, 1] + rel[:, 0],
                                              dim=-1).mean())
    assert accel["on"] < 0.75 * accel["off"], accel
    with pytest.raises(ValueError, match="w-accel"):
        TrainConfig(method="supervised", out=str(tmp_path / "x"), w_accel=1.0)  # single frame


def test_window_noise_follows_the_measured_model():
    rng = np.random.default_rng(0)
    truth = np.zeros((4000, 27, NUM_JOINTS, 2))
    truth[:, :, :, 1] = np.linspace(0, 300, NUM_JOINTS)        # a person 300 px tall
    truth[:, :, :, 0] = np.linspace(0, 100, NUM_JOINTS)
    size = np.hypot(100, 300)
    inliers = ds.TemporalNoise(level=(1.0, 1.0), drop_rate=0.0, outlier_scale=0.0)
    noisy, conf_in = ds.temporal_detector_noise(truth, rng, inliers)
    err = noisy - truth
    rel = np.linalg.norm(err, axis=-1) / size
    np.testing.assert_allclose(np.median(rel, axis=(0, 1)), ds.DETECTOR_MEDIAN_REL, rtol=0.1)
    lag1 = np.corrcoef(err[:, 1:, 3, 0].ravel(), err[:, :-1, 3, 0].ravel())[0, 1]
    assert abs(lag1 - inliers.rho) < 0.05                     # correlated over frames
    spread = ds.TemporalNoise(level=(1.0, 1.0), drop_rate=0.0, outlier_scale=0.0, rho_min=0.0,
                              rho=0.9)
    long = np.zeros((400, 200, NUM_JOINTS, 2))
    long[..., 1] = np.linspace(0, 300, NUM_JOINTS)
    e = ds.temporal_detector_noise(long, rng, spread)[0][..., 0] - long[..., 0]  # (400, 200, J)
    e = e - e.mean(axis=1, keepdims=True)
    per_window = (e[:, 1:] * e[:, :-1]).sum(axis=(1, 2)) / (e[:, 1:] ** 2).sum(axis=(1, 2))
    assert per_window.min() < 0.1 and per_window.max() > 0.8  # each window its own, 0 to 0.9
    assert abs(per_window.mean() - 0.45) < 0.05               # uniform over the range
    noisy, conf = ds.temporal_detector_noise(truth, rng, ds.TemporalNoise(level=(1.0, 1.0)))
    rel = np.linalg.norm(noisy - truth, axis=-1) / size
    far = (rel > 0.1).mean(axis=(0, 1))                       # the measured outlier threshold
    assert 0.5 < far.sum() / ds.DETECTOR_OUTLIER_RATE.sum() < 1.0
    assert 0.6 < conf_in.mean() and conf[rel > 0.1].mean() < 0.2
    held = ds.temporal_detector_noise(truth[:500], rng, ds.TemporalNoise(drop_rate=0.2))[0]
    same = np.all(held[:, 1:] == held[:, :-1], axis=(-1, -2))
    assert 0.15 < same.mean() < 0.25 and not same[:, -1].any()  # the newest is never dropped
    still, conf_still = ds.temporal_detector_noise(truth[:1000], rng,
                                                   ds.TemporalNoise(static_share=0.3))
    flat = np.all(still == still[:, -1:], axis=(1, 2, 3))     # every frame the newest one
    assert 0.25 < flat.mean() < 0.35
    assert np.all(conf_still[flat] == conf_still[flat, -1:])
    assert not np.all(still[~flat] == still[~flat, -1:], axis=(1, 2, 3)).any()
    clean, ones = ds.temporal_detector_noise(truth[:5], rng, ds.TemporalNoise(scale=0.0))
    np.testing.assert_array_equal(clean, truth[:5].astype(np.float32))
    assert np.all(ones == 1)


def test_windows_resample_in_time_and_pad_at_the_start():
    """A clip whose every joint holds its frame index: a window's values are clip positions."""
    clip = np.arange(300, dtype=np.float32)[:, None, None] * np.ones((1, NUM_JOINTS, 3), np.float32)
    rng = np.random.default_rng(1)
    fixed = ds.TemporalNoise(speed=(1.0, 1.0), time_jitter=0.0)
    windows = ds.sample_windows([(clip, 30.0)], 400, 9, 15.0, rng, fixed)[..., 0, 0]
    steps = np.diff(windows, axis=1)
    full = windows[:, 0] > 0                      # the whole window inside the clip
    np.testing.assert_allclose(steps[full], 2.0, atol=1e-3)   # 15 fps from 30: 2 frames apart
    padded = windows[~full]
    assert len(padded) and np.all(padded[:, 0] == 0)          # before the start: the first pose
    fast = ds.sample_windows([(clip, 30.0)], 400, 9, 15.0, rng,
                             ds.TemporalNoise(speed=(1.25, 1.25), time_jitter=0.0))[..., 0, 0]
    np.testing.assert_allclose(np.diff(fast, axis=1)[fast[:, 0] > 0], 2.5, atol=1e-3)


#: chen2019 on the temporal lifter: windows of 2 x 9 - 1 frames, the last 9 lifted
CHEN = {**TINY, "method": "chen2019", "head": "depth", "window": 3}


@pytest.mark.parametrize("method", ["li2020", "chen2019"])
def test_temporal_self_supervised_trains_on_2d_only_and_ignores_the_3d_source(tmp_path, clips,
                                                                              method):
    codec = canonical_codec()
    kwargs = TINY if method == "li2020" else {**CHEN, "steps": 12}
    cfg = TrainConfig(out=str(tmp_path / "a"), **kwargs)
    source = [(s.copy(), r) for s, r in clips]
    data = build_data(cfg, source, codec)
    fields = ds.array_fields(data)
    if method == "li2020":
        assert set(fields) == {"joints_2d_norm", "scale", "confidence", "world_to_virtual",
                               "centre_m"}
        assert fields["joints_2d_norm"].shape == (200, 3, 9, NUM_JOINTS, 2)
        assert fields["confidence"].min() < 0.5 < fields["confidence"].max()   # detector-like
    else:
        assert set(fields) == {"joints_2d_norm"}
        assert fields["joints_2d_norm"].shape == (200, 17, NUM_JOINTS, 2)
        assert fields["joints_2d_norm"].dtype == np.float32
    for name, arr in fields.items():
        assert arr.shape[-2:] != (NUM_JOINTS, 3), f"{name} looks like 3D joints"
        assert not any(np.shares_memory(arr, s) for s, _ in source)
    ckpt_a = train(cfg, data=data, codec=codec, progress=False)
    for s, _ in source:
        s[:] = np.nan
    ckpt_b = train(TrainConfig(out=str(tmp_path / "b"), **kwargs), data=data, codec=codec,
                   progress=False)
    for key, tensor in ckpt_a["state_dict"].items():
        torch.testing.assert_close(tensor, ckpt_b["state_dict"][key], rtol=0, atol=0)
    assert ckpt_a["model_config"]["kind"] == "temporal"


def test_temporal_li2020_short_run_lowers_its_losses(tmp_path, clips):
    codec = canonical_codec()
    cfg = TrainConfig(out=str(tmp_path), **{**TINY, "steps": 150, "windows": 600, "batch": 32})
    train(cfg, data=build_data(cfg, clips, codec), codec=codec, progress=False)
    import csv

    with open(tmp_path / "log.csv") as fh:
        log = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    assert log[-1]["transform"] < 0.6 * log[1]["transform"]
    assert log[-1]["consistency"] < 0.8 * log[0]["consistency"]


def test_temporal_chen2019_short_run_lowers_its_consistency_losses(tmp_path, clips):
    """Lift the last 9 of 17 frames, turn the motion, project, lift the fake sequence again:
    the 3D and 2D consistency of the loop fall as the temporal lifter learns."""
    codec = canonical_codec()
    cfg = TrainConfig(out=str(tmp_path), **{**CHEN, "steps": 120, "windows": 400, "batch": 32,
                                             "w_accel": 0.5})
    train(cfg, data=build_data(cfg, clips, codec), codec=codec, progress=False)
    import csv

    with open(tmp_path / "log.csv") as fh:
        log = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    assert log[-1]["loss_3d"] < 0.8 * log[0]["loss_3d"]
    assert log[-1]["loss_2d"] < 0.8 * log[0]["loss_2d"]
    assert log[-1]["accel"] < log[0]["accel"]
    with pytest.raises(ValueError, match="--window"):
        TrainConfig(out=str(tmp_path), **{**CHEN, "window": 10})   # more than the field


@pytest.fixture(scope="module")
def temporal_engine(tmp_path_factory, clips):
    """A tiny supervised temporal lifter, trained a few steps and exported."""
    from engines.training.export import export_checkpoint

    out = tmp_path_factory.mktemp("temporal")
    cfg = TrainConfig(out=str(out / "run"), **{**TINY, "method": "supervised", "views": 1})
    codec = canonical_codec()
    train(cfg, data=build_data(cfg, clips, codec), codec=codec, progress=False)
    return export_checkpoint(out / "run" / "checkpoint.pt", out / "engine", tensorrt=False)


def test_export_and_runtime_serve_the_temporal_engine(temporal_engine):
    assert temporal_engine.max_abs_diff < 1e-4
    engine = load_engine(temporal_engine.onnx_path, backend="onnxruntime-cpu")
    assert (engine.receptive_field, engine.fps, engine.causal) == (9, 30.0, True)
    assert engine.input_shape == (9, NUM_JOINTS, 2)
    out = engine.run({"joints_2d": np.zeros((3, 9, NUM_JOINTS, 2), np.float32)})
    assert out["joints_3d"].shape == (3, NUM_JOINTS, 3)
    with pytest.raises(ValueError, match="windows of 9 frames"):
        engine.run({"joints_2d": np.zeros((3, NUM_JOINTS, 2), np.float32)})
    default = load_engine(backend="onnxruntime-cpu")        # single-frame engines: unchanged
    assert (default.receptive_field, default.fps, default.input_shape) == (1, None, (NUM_JOINTS, 2))


def test_runtime_refuses_a_temporal_engine_without_fps(tmp_path, temporal_engine):
    import onnx

    model = onnx.load(str(temporal_engine.onnx_path))
    meta = json.loads(model.metadata_props[0].value)
    del meta["fps"]
    model.metadata_props[0].value = json.dumps(meta)
    onnx.save(model, str(tmp_path / "nofps.onnx"))
    with pytest.raises(EngineError, match="fps"):
        load_engine(tmp_path / "nofps.onnx", backend="onnxruntime-cpu")


def _sequence_file(path, clips, fps=30.0, **extra):
    joints = np.concatenate([s[:60] for s, _ in clips])
    seq = np.repeat(np.array(["a", "b"]), 60)
    np.savez(path, joints_mm=joints, sequence=extra.pop("sequence", seq),
             fps=extra.pop("fps", np.array(fps)), **extra)
    return joints, seq


def test_sequence_windows_resample_and_pad():
    px = np.arange(10, dtype=np.float64)[:, None, None] * np.ones((10, NUM_JOINTS, 2))
    group = np.array([0] * 6 + [1] * 4)
    windows, lags = sequence_windows(px, group, fps=30.0, frames=3, engine_fps=15.0)
    np.testing.assert_allclose(lags, [2 / 15, 1 / 15, 0])
    np.testing.assert_allclose(windows[5, :, 0, 0], [1, 3, 5])      # 15 fps: every 2nd frame
    np.testing.assert_allclose(windows[1, :, 0, 0], [0, 0, 1])      # the first frame repeated
    np.testing.assert_allclose(windows[6, :, 0, 0], [6, 6, 6])      # windows stay in a sequence
    half, _ = sequence_windows(px, group, fps=30.0, frames=2, engine_fps=60.0)
    np.testing.assert_allclose(half[4, :, 0, 0], [3.5, 4])          # interpolated


def test_oracle_on_sequences_scores_zero_with_no_motion_error(tmp_path, clips):
    """A lifter that returns the ideal lift of the newest frame: ~0 on every metric, and it is
    fed windows of the right sequence, newest last."""
    joints, seq = _sequence_file(tmp_path / "s.npz", clips)
    poses = read_poses_file(tmp_path / "s.npz")
    codec = canonical_codec()
    from engines.training.evaluate import place_and_project

    group = np.repeat([0, 1], 60)
    px, cam, cams = place_and_project(poses.joints_mm, "h36m", 4, 0.0, group=group)
    enc = codec.encode_full(px, cams.fx, cams.fy, cams.cx, cams.cy)
    ideal = ds.ideal_lift(cam, enc.rotation_to_camera, enc.scale, codec.depth_offset)
    seen = []

    def oracle(windows):
        assert windows.shape[1:] == (9, NUM_JOINTS, 2)
        seen.append(windows)
        start = sum(len(w) for w in seen[:-1])
        np.testing.assert_allclose(windows[:, -1], enc.joints_2d_norm[start : start + len(windows)],
                                   atol=1e-6)
        return ideal[start : start + len(windows)]

    result = evaluate(LoadedLifter(oracle, codec, "oracle", 9, 30.0), poses.joints_mm, "h36m",
                      seed=4, sequence=poses.sequence, fps=poses.fps)
    assert result["mpjpe_mm"] < 0.5 and result["accel_err_mm"] < 0.05
    assert result["mpjve_mm"] < 0.05 and result["sequences"] == 2
    assert result["accel_gt_mm"] > 1.0                       # the motion is there
    np.testing.assert_allclose(np.diff(cam[:60, 0, 2]).max(), 0.0, atol=0.3)  # one camera each
    assert np.ptp(cams.fx[:60]) == 0 and np.ptp(cams.fx[60:]) == 0


def test_sequence_files_with_bad_lengths_are_refused(tmp_path, clips):
    _sequence_file(tmp_path / "short.npz", clips, sequence=np.zeros(7, np.int64))
    with pytest.raises(EvaluationError, match=r"one id per pose, shape \(120,\)"):
        read_poses_file(tmp_path / "short.npz")
    joints = np.concatenate([s[:60] for s, _ in clips])
    np.savez(tmp_path / "nofps.npz", joints_mm=joints, sequence=np.zeros(120, np.int64))
    with pytest.raises(EvaluationError, match="no 'fps'"):
        read_poses_file(tmp_path / "nofps.npz")
    _sequence_file(tmp_path / "fps.npz", clips, fps=np.array([30.0, 30.0]))
    with pytest.raises(EvaluationError, match="fps"):
        read_poses_file(tmp_path / "fps.npz")


def test_cli_compares_a_temporal_and_a_single_frame_engine_in_one_run(tmp_path, clips,
                                                                      temporal_engine, capsys):
    _sequence_file(tmp_path / "s.npz", clips)
    args = ["--engine", str(temporal_engine.onnx_path), "engines/default/lifter.onnx",
            "--poses", str(tmp_path / "s.npz"), "--noise-px", "0", "5"]
    assert evaluate_main(args + ["--json", str(tmp_path / "out.json")]) == 0
    rows = json.loads((tmp_path / "out.json").read_text())
    assert [(r["receptive_field"], r["noise_px"]) for r in rows] == [(9, 0), (9, 5), (1, 0), (1, 5)]
    for r in rows:
        assert r["count"] == 120 and r["accel_err_mm"] > 0 and r["mpjve_mm"] > 0
    assert rows[3]["accel_err_mm"] > rows[2]["accel_err_mm"]   # noise makes a single frame jitter
    joints = np.concatenate([s[:60] for s, _ in clips])
    np.savez(tmp_path / "plain.npz", joints_mm=joints)
    assert evaluate_main(["--engine", str(temporal_engine.onnx_path),
                          "--poses", str(tmp_path / "plain.npz")]) == 2
    assert "sequence file" in capsys.readouterr().err


def test_bench_lifter_times_the_temporal_engine(temporal_engine):
    from bench import lifter

    rows = lifter.bench_engines(temporal_engine.onnx_path, None, batch=4, calls=5, paced_calls=1,
                                backends=["onnxruntime"])
    timed = [r for r in rows if r["backend"] == "onnxruntime-cpu 1 thread"]
    assert [r["batch"] for r in timed] == [1, 4] and all(r["frames"] == 9 for r in timed)
    assert all(r["hot"]["p50"] > 0 and r["max_abs_diff_vs_fp32"] == 0.0 for r in timed)


def test_video_jitter_measures_second_differences_within_tracks():
    from engines.training.video_jitter import runs_of_people, second_difference_mm

    px = np.zeros((8, NUM_JOINTS, 2))
    px[3] = np.nan                                      # nobody in frame 3: two tracks
    track = runs_of_people(px)
    np.testing.assert_array_equal(track, [0, 0, 0, -1, 1, 1, 1, 1])
    t = np.arange(8, dtype=np.float64)
    joints = np.zeros((8, NUM_JOINTS, 3))
    joints[..., 0] = (t ** 2)[:, None]                  # constant acceleration 2 mm/frame^2
    joints[3] = 1e6                                     # never differenced across the gap
    assert second_difference_mm(joints, track) == pytest.approx(2.0)


def test_a_time_budget_stops_the_run_with_a_checkpoint(tmp_path, clips):
    codec = canonical_codec()
    cfg = TrainConfig(out=str(tmp_path), **{**TINY, "steps": 100000, "time_budget_min": 0.02})
    ckpt = train(cfg, data=build_data(cfg, clips, codec), codec=codec, progress=False)
    assert 0 < ckpt["step"] < 100000
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["step"] == ckpt["step"] and saved["training"]["seconds"] >= 1.0


def _default_engine_session():
    import onnxruntime as ort

    return ort.InferenceSession(str(DEFAULT_ENGINE_PATH), providers=["CPUExecutionProvider"])


def test_a_lifter_on_the_default_engine_starts_as_it_keeps_it_frozen_and_exports(tmp_path,
                                                                                clips):
    from engines.training.export import export_checkpoint
    from engines.training.train import METHOD_CLASSES, base_engine_weights

    codec = canonical_codec()
    cfg = TrainConfig(out=str(tmp_path / "run"), base_engine=str(DEFAULT_ENGINE_PATH), **TINY)
    windows = build_data(cfg, clips, codec).joints_2d_norm[:6, 0]     # (6, 9, 17, 2)
    session = _default_engine_session()
    newest_only = session.run(None, {"joints_2d": windows[:, -1]})[0]  # ONNX Runtime, shipped file

    fresh = METHOD_CLASSES["li2020"](cfg, codec).lifter.eval()
    with torch.no_grad():
        before = fresh(torch.from_numpy(windows)).numpy()
    np.testing.assert_allclose(before, newest_only, atol=1e-5)         # exactly the base at first

    ckpt = train(cfg, data=build_data(cfg, clips, codec), codec=codec, progress=False)
    base_state = base_engine_weights(str(DEFAULT_ENGINE_PATH))[1]
    for name, tensor in base_state.items():                           # frozen: bit for bit
        torch.testing.assert_close(ckpt["state_dict"][f"base.{name}"], tensor, rtol=0, atol=0)
    assert ckpt["model_config"]["base"]["width"] == 512

    exported = export_checkpoint(tmp_path / "run" / "checkpoint.pt", tmp_path / "engine",
                                 tensorrt=False)
    assert exported.max_abs_diff < 1e-4
    engine = load_engine(exported.onnx_path, backend="onnxruntime-cpu")
    assert (engine.receptive_field, engine.causal) == (9, True)
    after = engine.run({"joints_2d": windows})["joints_3d"]
    moved_units = np.abs(after - newest_only).max()    # codec units: head-to-root ~ 1
    assert 0 < moved_units < 0.5         # trained corrections: present, and small (1/c scaled)


def test_a_base_engine_that_cannot_serve_is_refused_with_the_reason(tmp_path, temporal_engine):
    with pytest.raises(ValueError, match="no such file"):
        TrainConfig(out=str(tmp_path), base_engine=str(tmp_path / "missing.onnx"), **TINY)
    with pytest.raises(ValueError, match="single-frame engine"):
        TrainConfig(out=str(tmp_path), base_engine=str(temporal_engine.onnx_path), **TINY)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(ValueError, match="not a posestream ONNX engine"):
        TrainConfig(out=str(tmp_path), base_engine=str(junk), **TINY)
    with pytest.raises(ValueError, match="--head refine"):
        TrainConfig(out=str(tmp_path), base_engine=str(DEFAULT_ENGINE_PATH),
                    **{**TINY, "head": "depth"})
    with pytest.raises(ValueError, match="needs --base-engine"):
        TrainConfig(out=str(tmp_path), correct_depth=False, **TINY)


def test_recording_jitter_reads_what_the_pipeline_published_per_track(tmp_path):
    """Two tracks with known motion in a real recording file: 2 mm/frame^2 for one, 0 for
    the other; a gap in a track's frames is never differenced across."""
    from engines.training.video_jitter import recording_jitter
    from pipeline.record import RecordingWriter
    from pipeline.schema import Person3D, Pose3D, encode

    def person(track_id, offset_m):
        joints = np.zeros((NUM_JOINTS, 3), np.float32)
        joints[:, 0] = offset_m                       # every joint moves, the root stays
        root = np.array([0.0, 0.0, 3.0], np.float32)
        return Person3D(track_id=track_id, joints_3d_m=joints + root, root_m=root,
                        joints_2d_px=np.zeros((NUM_JOINTS, 2), np.float32),
                        confidence=np.ones(NUM_JOINTS, np.float32),
                        reproj_err_px=np.zeros(NUM_JOINTS, np.float32))

    path = tmp_path / "run.psrec"
    with RecordingWriter(path) as rec:
        for frame in range(12):
            people = [person(2, 0.05)]                               # still
            if frame != 6:                                           # track 1 missing once
                jump = 1.0 if frame > 6 else 0.0                     # a jump across the gap
                people.append(person(1, 0.001 * frame ** 2 + jump))  # 2 mm/frame^2
            msg = Pose3D(frame_id=frame, t_capture_ns=frame * 33_000_000, image_size=(64, 48),
                         people=tuple(people))
            rec.write(frame, [b"poses", *encode(msg)])
    result = recording_jitter(path)
    assert (result["frames"], result["people"], result["tracks"]) == (12, 23, 2)
    # track 1: runs of 6 and 5 frames -> 4 + 3 second differences of 2 mm; track 2: 10 of 0
    assert result["second_differences"] == 17
    assert result["jitter_mm_per_frame2"] == pytest.approx(2.0 * 7 / 17, abs=0.01)


def test_video_jitter_refuses_a_file_that_is_not_a_recording(tmp_path, capsys):
    from engines.training.video_jitter import main

    junk = tmp_path / "junk.psrec"
    junk.write_bytes(b"not a recording")
    assert main(["--recording", str(junk)]) == 2
    assert "not a posestream recording" in capsys.readouterr().err


DISTILL = {**TINY, "method": "distill", "views": 1, "teacher_engine": str(DEFAULT_ENGINE_PATH),
           "static_share": 0.1, "noise_rho_min": 0.0}


def test_distill_targets_are_the_teachers_lift_of_2d_and_ignore_the_3d_source(tmp_path, clips):
    """The data holds 2D windows and the single-frame teacher's lift of 2D (no 3D label): on
    clean windows the target is exactly the shipped engine (ONNX Runtime) on the newest frames;
    destroying the 3D source after the data is built changes no trained weight."""
    codec = canonical_codec()
    clean = TrainConfig(out=str(tmp_path / "c"), **{**DISTILL, "temporal_noise": 0.0,
                                                    "w_accel": 1.0})
    data = build_data(clean, clips, codec)
    assert set(ds.array_fields(data)) == {"joints_2d_norm", "teacher_3d_norm"}
    assert data.teacher_3d_norm.shape == (200, 3, NUM_JOINTS, 3)       # the last 3 frames
    newest = data.joints_2d_norm[:, -3:].reshape(-1, NUM_JOINTS, 2)
    shipped = _default_engine_session().run(None, {"joints_2d": newest})[0]
    np.testing.assert_allclose(data.teacher_3d_norm.reshape(-1, NUM_JOINTS, 3), shipped,
                               atol=1e-5)

    cfg = TrainConfig(out=str(tmp_path / "a"), **{**DISTILL, "steps": 12})
    source = [(s.copy(), r) for s, r in clips]
    noisy = build_data(cfg, source, codec)
    assert not np.allclose(noisy.joints_2d_norm, build_data(
        TrainConfig(out=str(tmp_path / "z"), **{**DISTILL, "temporal_noise": 0.0}),
        clips, codec).joints_2d_norm, atol=1e-3)                          # detector-like 2D
    ckpt_a = train(cfg, data=noisy, codec=codec, progress=False)
    for s, _ in source:
        s[:] = np.nan
    ckpt_b = train(TrainConfig(out=str(tmp_path / "b"), **{**DISTILL, "steps": 12}), data=noisy,
                   codec=codec, progress=False)
    for key, tensor in ckpt_a["state_dict"].items():
        torch.testing.assert_close(tensor, ckpt_b["state_dict"][key], rtol=0, atol=0)


def test_fused_teacher_targets_come_from_2d_only_and_are_nearer_the_true_shape(clips):
    """teacher_views=4: the target is the consensus of the teacher's lifts from 4 cameras. A
    teacher that ignores its input gives its own pose as the target whatever the 3D source (the
    3D reaches the target only through the teacher's 2D input); the shipped engine's fused
    targets are nearer the true 3D (PA-MPJPE, mm) than its lift from the training view alone."""
    from engines.training.alignment import procrustes_aligned
    from engines.training.train import teacher_lift

    codec = canonical_codec()
    windows = ds.windows_from_sequences([s for s, _ in clips], 9, stride=3)[:400]
    cams, quiet = ds.CameraSampling(), ds.TemporalNoise(scale=0.0, drop_rate=0.0)
    fixed = np.random.default_rng(0).normal(0, 0.2, (NUM_JOINTS, 3))
    fixed -= fixed[0]

    def blind(x):
        return np.broadcast_to(fixed, (len(x), NUM_JOINTS, 3))

    for source in (windows, windows[::-1].copy()):
        got = ds.make_distill_windows(source, codec, cams, np.random.default_rng(1), blind,
                                      noise=quiet, teacher_views=4).teacher_3d_norm[:, -1]
        np.testing.assert_allclose(got, np.broadcast_to(fixed, got.shape), atol=1e-5)

    teacher = teacher_lift(str(DEFAULT_ENGINE_PATH))
    truth = windows[:, -1] - windows[:, -1, :1]

    def pa_mm(views: int) -> float:
        data = ds.make_distill_windows(windows, codec, cams, np.random.default_rng(2), teacher,
                                       teacher_views=views)
        target = data.teacher_3d_norm[:, -1]
        return float(np.linalg.norm(procrustes_aligned(target, truth) - truth, axis=-1).mean())

    one, four = pa_mm(1), pa_mm(4)
    print(f"PA-MPJPE of the distill targets: 1 view {one:.1f} mm, 4 views {four:.1f} mm")
    assert four < 0.9 * one, (one, four)
    with pytest.raises(ds.DataError, match="teacher_views"):
        ds.make_distill_windows(windows, codec, cams, np.random.default_rng(2), teacher,
                                teacher_views=0)


def test_distill_on_the_default_engine_learns_to_undo_the_noise(tmp_path, clips):
    """On the frozen default engine, the distilled window starts as the teacher on the noisy
    newest frame and, after a short run, lands nearer the teacher's lift of the clean 2D on
    windows it never trained on."""
    from engines.training.train import METHOD_CLASSES

    codec = canonical_codec()
    kwargs = {**DISTILL, "base_engine": str(DEFAULT_ENGINE_PATH), "steps": 400, "windows": 800,
              "batch": 32, "lr": 1e-3}
    cfg = TrainConfig(out=str(tmp_path / "run"), **kwargs)
    held_out = build_data(TrainConfig(out=str(tmp_path / "h"), **{**kwargs, "seed": 7}), clips,
                          codec)
    x = torch.as_tensor(held_out.joints_2d_norm)
    target = torch.as_tensor(held_out.teacher_3d_norm[:, -1])

    def distance(model) -> float:
        with torch.no_grad():
            return float(torch.linalg.norm(model.eval()(x) - target, dim=-1).mean())

    before = distance(METHOD_CLASSES["distill"](cfg, codec).lifter)
    ckpt = train(cfg, data=build_data(cfg, clips, codec), codec=codec, progress=False)
    model = build_lifter(**ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    after = distance(model)
    print(f"distance to the clean teacher: {before:.4f} -> {after:.4f}")
    assert after < 0.9 * before, (before, after)


def test_distill_settings_that_cannot_work_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--teacher-engine"):
        TrainConfig(out=str(tmp_path), **{**DISTILL, "teacher_engine": ""})
    with pytest.raises(ValueError, match="temporal lifter"):
        TrainConfig(out=str(tmp_path), **{**DISTILL, "receptive_field": 1, "head": "depth"})
    with pytest.raises(ValueError, match="--teacher-engine .*no such file"):
        TrainConfig(out=str(tmp_path), **{**DISTILL, "teacher_engine": str(tmp_path / "x.onnx")})
    with pytest.raises(ValueError, match="for --method distill"):
        TrainConfig(out=str(tmp_path), **{**TINY, "teacher_engine": str(DEFAULT_ENGINE_PATH)})
    with pytest.raises(ValueError, match="for --method distill"):
        TrainConfig(out=str(tmp_path), **{**TINY, "teacher_views": 4})
    with pytest.raises(ValueError, match="--teacher-views must be at least 1"):
        TrainConfig(out=str(tmp_path), **{**DISTILL, "teacher_views": 0})
