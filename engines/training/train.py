"""Train the 2D-to-3D lifter: self-supervised (chen2019, li2020) or supervised (reference).

    python -m engines.training.train --method li2020 --out runs/li2020_final --steps 8000 --batch 128 \
        --pretrain-steps 1000 --bone-jitter 0.1 --threads 1      # the shipped default engine

(engines/default/MODEL_CARD.md has the other runs and their evaluation.)

Methods (all lift single frames with the same residual MLP, `engines.training.models.Lifter`):
- chen2019 (Chen et al., CVPR 2019): lift, rotate the 3D pose by a random camera (azimuth
  U(-pi, pi), elevation U(-pi/9, pi/9)), project, lift again, rotate back, project. Losses: 2D
  consistency, 3D consistency, adversarial on single rotated projections (2D pose critic) and on
  windows of consecutive frames (temporal critic). LSGAN or WGAN-GP; `--critic-steps` critic
  updates per lifter update.
- li2020 (Li et al., AAAI 2020): V synchronized views with known cameras; lifting branch + root
  branch place each view's pose in metres; per-view re-projection loss weighted by the 2D
  confidences; transform re-projection loss (each view's pose moved into every other view with the
  known relative pose and projected there: with 4 views, the 12 ordered pairs of the paper's
  "12-view" training); a multi-view consistency loss (scale-free poses agree in world axes) that
  alone drives the first `--pretrain-steps` steps, which the paper needs to converge.
- supervised: the same lifter regressed onto 3D labels (the reference upper bound).

`--receptive-field F` (> 1) trains the causal temporal lifter (`models.TemporalLifter`) on
windows of F frames with li2020 or supervised, or with chen2019 on windows of 2F - 1 frames (the
last F lifted, each from its own F frames, turned as one motion, projected, lifted again as a
sequence; both critics see the fake motion); `--base-engine E` builds it on a trained
single-frame engine, frozen, whose 2D input (and depths) the window corrects
(engines/training/TEMPORAL.md has the attempts and their figures).
- distill (temporal only, `--teacher-engine E`): the temporal lifter learns, from windows of
  detector-like 2D, what the single-frame engine E (trained without 3D labels, e.g. the shipped
  default) lifts from the same frames' clean 2D; with `--w-accel`, also the teacher's second
  difference over the last three frames; with `--teacher-views V`, the target is the consensus
  shape of E's lifts from V random cameras (`alignment.fuse_views`). No 3D label: the teacher's
  input is 2D.

Data: shared mocap (`--sources`, training split), every clip retargeted to the canonical bone
lengths (or, with `--bone-jitter`, to per-clip random proportions around them), projected through
random virtual cameras (`engines.training.datasets`). The self-supervised methods receive data objects that
hold 2D (and cameras) only. chen2019's optional `--w-bone` prior compares the lifted poses' bone
length ratios with the canonical skeleton's (a fixed skeleton prior, the one the codec's
`to_metric` uses at run time; not a per-pose label).

Fine-tuning: `--init-engine E` starts from the weights of an exported engine E (a file, or
`default` / `temporal`) instead of fresh ones; the run's architecture flags must describe E's
model_config (the shipped temporal engine: its MODEL_CARD's command). `--train-base
--lr-base-ratio R` trains a temporal lifter's base too, at R x `--lr`; `--base-as-run` trains
it as the engine runs it (no dropout, fixed batch-norm statistics).

Outputs in --out: `checkpoint.pt` (docs/DESIGN.md "Checkpoint"; `--resume` continues it),
`log.csv` (one row per `--log-every` steps), `config.json`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import functools
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engines.training import datasets as ds
from engines.runtime.codec import Codec
from engines.training.losses import (
    bone_lengths_torch,
    gradient_penalty,
    normalise_2d_torch,
    project_unit_camera,
    scale_normalised,
)
from engines.training.models import (
    Lifter,
    PoseDiscriminator,
    RootBranch,
    TemporalDiscriminator,
    TemporalLifter,
    build_lifter,
)
from engines.runtime.skeleton import NUM_JOINTS, ROOT

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("chen2019", "li2020", "supervised", "distill")
DEFAULT_SOURCES: tuple[str, ...] = ("cmu_expmap", "cmu_bvh", "bandai1", "bandai2")
CHECKPOINT_NAME = "checkpoint.pt"
#: Temporal windows are built this many at a time (bounds the float64 intermediates to ~1 GB).
WINDOW_CHUNK = 5000
LOG_NAME = "log.csv"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; stored in the checkpoint and config.json."""

    method: str
    out: str
    steps: int = 20000
    batch: int = 256
    seed: int = 0
    sources: tuple[str, ...] = DEFAULT_SOURCES
    fps: float = 15.0                 # mocap resampled to this rate (frames of a window too)
    max_poses: int = 0                # 0: all; else a random subset of this many (tests, trials)
    threads: int = 1
    lr: float = 1e-3                  # lifter (and root branch) learning rate, Adam
    lr_final_ratio: float = 0.05      # exponential decay to lr * this at the last step
    # lifter
    width: int = 512                  # 512 x 2 blocks: 1.1 M weights, 4.3 MB ONNX (limit ~10 MB)
    blocks: int = 2
    dropout: float = 0.25
    head: str = "depth"
    depth_offset: float = 10.0
    # data
    noise_px: float = 0.0
    bone_jitter: float = 0.0          # per-clip random bone lengths: canonical x N(1, this), 0 = off
    views: int = 4                    # li2020 rig size; supervised uses as many views per pose
    window: int = 3                   # chen2019 temporal window (frames)
    # temporal lifter (receptive_field > 1: engines.training.models.TemporalLifter)
    receptive_field: int = 1          # frames at the engine rate; 1: the single-frame MLP
    channels: int = 256               # temporal conv channels: 0.57 M weights, 2.3 MB ONNX
    windows: int = 40000              # training windows cut from the mocap (each V views)
    temporal_noise: float = 0.0       # x the measured detector noise model (ds.TemporalNoise)
    drop_rate: float = 0.05           # frames lost by latest-wins (held), with temporal_noise
    noise_rho: float = 0.7            # frame-to-frame correlation of the 2D error
    noise_rho_min: float | None = None  # set: each window's correlation ~ U(this, noise_rho)
    noise_level_max: float = 1.5      # each window's error: the measured one x U(0, this)
    static_share: float = 0.0         # windows that are one image padded (newest frame x F)
    w_accel: float = 0.0              # > 0: windows of F + 2 frames, the last 3 lifted, their
                                      # second difference (codec units) penalised: smoothness
    base_engine: str = ""             # a single-frame ONNX engine the temporal lifter corrects
    freeze_base: bool = True          # keep that base's weights (train only the corrections)
    lr_base_ratio: float = 1.0        # with freeze_base False: the base learns at lr x this
    base_as_run: bool = False         # with freeze_base False: no dropout, fixed norms in the base
    init_engine: str = ""             # start from this exported engine's weights (a fine-tune)
    correct_depth: bool = True        # with a base: False corrects the 2D only
    # distill (temporal): the target is what this single-frame engine lifts from clean 2D
    teacher_engine: str = ""
    teacher_views: int = 1            # > 1: the target fuses the teacher's lifts of this many views
    # chen2019
    gan: str = "lsgan"                # "lsgan" | "wgan-gp"
    critic_steps: int = 1
    lr_critic: float = 2e-4
    w_adv: float = 1.0
    w_temporal: float = 0.5
    w_3d: float = 1.0
    w_2d: float = 1.0
    w_bone: float = 0.0               # bone-length-ratio prior (canonical skeleton); 0 = off
    # li2020
    pretrain_steps: int = 2000
    w_reproj: float = 1.0
    w_transform: float = 1.0
    w_consistency: float = 1.0
    # bookkeeping
    log_every: int = 50
    checkpoint_every: int = 1000
    time_budget_min: float = 0.0      # > 0: stop after this many minutes of training, the lr
                                      # schedule following elapsed time (a shared machine)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {METHODS}, got {self.method!r}")
        if self.steps < 1 or self.batch < 2:
            raise ValueError(f"need steps >= 1 and batch >= 2, got {self.steps}, {self.batch}")
        if self.gan not in ("lsgan", "wgan-gp"):
            raise ValueError(f"--gan must be lsgan or wgan-gp, got {self.gan!r}")
        if self.method == "chen2019" and self.head != "depth":
            raise ValueError("chen2019 needs --head depth (its rotate-and-reproject loop needs "
                             "a lift that re-projects onto its input)")
        if self.method == "chen2019" and (self.window < 2 or (
                self.temporal and self.window > self.receptive_field)):
            raise ValueError(f"chen2019's --window (frames its temporal critic sees) must be at "
                             f"least 2 and, for the temporal lifter, at most --receptive-field "
                             f"{self.receptive_field}; got {self.window}")
        if self.temporal:
            if self.head not in ("depth", "refine"):
                raise ValueError(f"the temporal lifter's --head is depth or refine, "
                                 f"got {self.head!r}")
        elif self.head == "refine":
            raise ValueError("--head refine is for the temporal lifter (--receptive-field > 1)")
        if self.base_engine:
            if not self.temporal or self.head != "refine":
                raise ValueError("--base-engine is for the temporal lifter with --head refine "
                                 "(--receptive-field > 1)")
            base_engine_weights(self.base_engine)  # a missing or unfit file fails here
        elif not self.correct_depth:
            raise ValueError("--no-depth-correction needs --base-engine (the base gives the "
                             "depths)")
        if self.method == "distill":
            if not self.temporal:
                raise ValueError("--method distill trains the temporal lifter "
                                 "(--receptive-field > 1) from a single-frame teacher")
            if not self.teacher_engine:
                raise ValueError("--method distill needs --teacher-engine, a single-frame "
                                 "engine such as engines/default/lifter.onnx")
            base_engine_weights(self.teacher_engine, "--teacher-engine")
            if self.teacher_views < 1:
                raise ValueError(f"--teacher-views must be at least 1, got {self.teacher_views}")
        elif self.teacher_engine or self.teacher_views != 1:
            raise ValueError("--teacher-engine and --teacher-views are for --method distill")
        if not 0.0 < self.lr_base_ratio <= 1.0 or (self.lr_base_ratio != 1.0 and (
                not self.base_engine or self.freeze_base)):
            raise ValueError(f"--lr-base-ratio (0 < r <= 1) sets the learning rate of a trained "
                             f"base (--base-engine with --train-base); got {self.lr_base_ratio}")
        if self.base_as_run and (not self.base_engine or self.freeze_base):
            raise ValueError("--base-as-run is for a trained base (--base-engine with "
                             "--train-base)")
        if self.init_engine:
            init_engine_weights(self.init_engine, self.model_config())  # an unfit file fails here
        if self.w_accel < 0 or (self.w_accel > 0 and not self.temporal):
            raise ValueError(f"--w-accel (>= 0) is a smoothness term over consecutive frames "
                             f"of the temporal lifter (--receptive-field > 1), got "
                             f"{self.w_accel} with receptive field {self.receptive_field}")
        if not 0.0 <= self.static_share <= 1.0:
            raise ValueError(f"--static-share is a share of the windows, 0 to 1, got "
                             f"{self.static_share}")
        if not 0.0 <= self.noise_rho < 1.0 or (
                self.noise_rho_min is not None and not 0.0 <= self.noise_rho_min <= self.noise_rho):
            raise ValueError(f"need 0 <= --noise-rho-min <= --noise-rho < 1, got "
                             f"{self.noise_rho_min} and {self.noise_rho}")

    @property
    def temporal(self) -> bool:
        return self.receptive_field > 1

    @property
    def window_frames(self) -> int:
        """Frames of each training window: the receptive field, + 2 with the smoothness term
        (three consecutive newest frames, each lifted from its own receptive field); chen2019:
        2F - 1, whose last F frames are lifted (`Chen2019.lifted_frames`)."""
        if self.method == "chen2019":
            return 2 * self.receptive_field - 1
        return self.receptive_field + (2 if self.w_accel > 0 else 0)

    def model_config(self) -> dict:
        if self.temporal:
            config = {"kind": "temporal", "num_joints": NUM_JOINTS,
                      "receptive_field": self.receptive_field, "kernel": 3,
                      "channels": self.channels, "dropout": self.dropout, "head": self.head,
                      "depth_offset": self.depth_offset}
            if self.base_engine:
                config["base"] = base_engine_weights(self.base_engine)[0]
                if not self.correct_depth:
                    config["correct_depth"] = False
            return config
        return {"num_joints": NUM_JOINTS, "width": self.width, "blocks": self.blocks,
                "dropout": self.dropout, "batch_norm": True, "head": self.head,
                "depth_offset": self.depth_offset}

    def temporal_noise_model(self) -> ds.TemporalNoise:
        """The window noise of this run (clean 2D, no drops, when temporal_noise is 0)."""
        if self.temporal_noise <= 0:
            return ds.TemporalNoise(scale=0.0, drop_rate=0.0, static_share=self.static_share)
        return ds.TemporalNoise(scale=self.temporal_noise, drop_rate=self.drop_rate,
                                rho=self.noise_rho, rho_min=self.noise_rho_min,
                                level=(0.0, self.noise_level_max),
                                static_share=self.static_share)


@functools.lru_cache(maxsize=4)
def base_engine_weights(path: str, flag: str = "--base-engine"
                        ) -> tuple[dict, dict[str, torch.Tensor]]:
    """(model_config, state_dict) of the single-frame lifter in an exported ONNX engine (the
    exporter keeps the torch parameter names, `model.<name>`, as the graph's initializers).

    Raises ValueError naming the problem: not an engine file, a temporal engine, a head other
    than depth, or weights that do not fit the config.
    """
    import onnx
    from onnx import numpy_helper

    from engines.runtime.engine import resolve_engine_path

    file = resolve_engine_path(path)  # a file, or a shipped engine's name ("default")
    if not file.is_file():
        raise ValueError(f"{flag} {path}: no such file; give a single-frame engine such "
                         "as engines/default/lifter.onnx")
    try:
        graph = onnx.load(str(file))
        meta = json.loads({p.key: p.value for p in graph.metadata_props}["posestream"])
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"{flag} {path}: not a posestream ONNX engine ({err}); export "
                         "one with engines.training.export") from err
    config = dict(meta.get("model_config", {}))
    if int(meta.get("receptive_field", 1)) != 1 or config.get("kind", "mlp") != "mlp" \
            or config.get("head", "depth") != "depth":
        raise ValueError(f"{flag} {path}: needs a single-frame engine with the depth "
                         f"head; this one has receptive field {meta.get('receptive_field')} and "
                         f"model_config {config}")
    state = {init.name.removeprefix("model."): torch.from_numpy(numpy_helper.to_array(init).copy())
             for init in graph.graph.initializer if init.name.startswith("model.")}
    probe = Lifter(**{k: v for k, v in config.items() if k != "kind"})
    try:
        probe.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{flag} {path}: its weights do not fit its model_config "
                         f"({err})") from err
    return config, state


def teacher_lift(path: str):
    """The single-frame engine at `path` as a numpy function (M, J, 2) codec-normalised 2D ->
    (M, J, 3) root-relative codec units (torch, eval mode: batch-norm statistics and no
    dropout, the numbers ONNX Runtime gives for the file)."""
    config, state = base_engine_weights(path, "--teacher-engine")
    model = Lifter(**{k: v for k, v in config.items() if k != "kind"})
    model.load_state_dict(state)
    model.eval()

    def lift(joints_2d_norm: np.ndarray, chunk: int = 65536) -> np.ndarray:
        x = torch.as_tensor(np.asarray(joints_2d_norm, np.float32))
        with torch.no_grad():
            return torch.cat([model(x[i : i + chunk]) for i in range(0, len(x), chunk)]).numpy()

    return lift


def init_engine_weights(path: str, model_config: dict) -> tuple[dict[str, torch.Tensor], bool]:
    """(state_dict, norms_folded): the torch weights of the exported engine at `path` (a file or
    a shipped engine's name) for a run whose model is `model_config` (--init-engine: a
    fine-tune starts from them).

    The exporter keeps the torch names (`model.<name>`) of every weight it leaves alone; it folds
    a temporal network's batch norms into the convolutions before them (unnamed initializers).
    Those come back in the network's own order as the convolution's weight, the norm then the
    identity plus the folded bias (mean 0, variance 1 - eps, scale 1), so norms_folded True means
    the run must keep the norms' statistics fixed (`TemporalLifter.hold_norms`). The result is
    checked against ONNX Runtime on the file itself (1e-4).

    Raises ValueError naming the problem: not an engine, another model_config (a different
    receptive field, width or base), or weights that cannot be recovered.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from engines.runtime.engine import resolve_engine_path

    file = resolve_engine_path(path)
    if not file.is_file():
        raise ValueError(f"--init-engine {path}: no such file; give an exported engine "
                         "(engines/temporal/lifter.onnx, or its name 'temporal')")
    try:
        graph = onnx.load(str(file))
        meta = json.loads({p.key: p.value for p in graph.metadata_props}["posestream"])
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"--init-engine {path}: not a posestream ONNX engine ({err})") from err
    want = _to_jsonable(model_config)
    have = meta.get("model_config", {})
    if json.dumps(have, sort_keys=True) != json.dumps(want, sort_keys=True):
        raise ValueError(f"--init-engine {path}: its model_config {have} is not this run's "
                         f"{want}; give the same architecture flags (--receptive-field, "
                         "--channels, --head, --base-engine, ...) as the run that made it")
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    model = build_lifter(**model_config)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    named = {k.removeprefix("model."): v for k, v in inits.items() if k.startswith("model.")}
    for key, value in named.items():
        if key not in state or tuple(state[key].shape) != value.shape:
            raise ValueError(f"--init-engine {path}: weight {key} {value.shape} does not fit "
                             "the model its metadata describes")
        state[key] = torch.from_numpy(value.copy())
    missing = [k for k in state if k not in named and not k.endswith("num_batches_tracked")]
    folded = False
    if missing:
        if not isinstance(model, TemporalLifter):
            raise ValueError(f"--init-engine {path}: weights {missing[:4]} are not in the file")
        pairs = [("expand", "expand_bn")] + [
            pair for i in range(len(model.dilated))
            for pair in ((f"dilated.{i}", f"dilated_bn.{i}"), (f"pointwise.{i}", f"pointwise_bn.{i}"))]
        convs = [[inits[n] for n in node.input[1:] if n in inits] for node in graph.graph.node
                 if node.op_type == "Conv" and node.input[1] in inits
                 and not node.input[1].startswith("model.")]
        if len(convs) != len(pairs) or any(len(c) != 2 for c in convs):
            raise ValueError(f"--init-engine {path}: found {len(convs)} folded convolutions, "
                             f"the model has {len(pairs)}")
        for (conv, norm), (weight, bias) in zip(pairs, convs):
            if tuple(state[f"{conv}.weight"].shape) != weight.shape:
                raise ValueError(f"--init-engine {path}: folded convolution {weight.shape} does "
                                 f"not fit {conv} {tuple(state[conv + '.weight'].shape)}")
            eps = model.get_submodule(norm).eps
            state[f"{conv}.weight"] = torch.from_numpy(weight.copy())
            state[f"{norm}.weight"] = torch.ones(bias.shape)
            state[f"{norm}.bias"] = torch.from_numpy(bias.copy())
            state[f"{norm}.running_mean"] = torch.zeros(bias.shape)
            state[f"{norm}.running_var"] = torch.full(bias.shape, 1.0 - eps)
        folded = True
    model.load_state_dict(state)
    model.eval()
    frames = int(meta.get("receptive_field", 1))
    shape = (3, frames, NUM_JOINTS, 2) if frames > 1 else (3, NUM_JOINTS, 2)
    probe = np.random.default_rng(0).normal(0.0, 0.3, shape).astype(np.float32)
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: probe})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(probe)).numpy()
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else math.inf
    if diff > 1e-4:
        raise ValueError(f"--init-engine {path}: the recovered weights do not give the file's "
                         f"output (max difference {diff:.2g})")
    return state, folded


# --- data ----------------------------------------------------------------------------------------


def canonical_codec(depth_offset: float = 10.0) -> Codec:
    """The codec every engine we train uses: canonical bone lengths from `engines.training.mocap`."""
    from engines.training.mocap import CANONICAL_BONE_LENGTHS_MM

    lengths_m = np.asarray(CANONICAL_BONE_LENGTHS_MM, dtype=np.float64) / 1000.0
    return Codec(canonical_bone_lengths_m=tuple(float(x) for x in lengths_m),
                 depth_offset=depth_offset)


def load_training_clips(sources: tuple[str, ...], bone_jitter: float = 0.0,
                        seed: int = 0) -> list[tuple[np.ndarray, float]]:
    """As `load_training_sequences`, at each clip's own rate: [(joints_mm (F, 17, 3), fps)]
    (the temporal windows are resampled from them to the engine's rate)."""
    from engines.training import mocap

    clips = mocap.load_clips(list(sources), "train", fps=None)
    rates = [c.fps for c in clips]
    seqs = _retargeted([c.joints_mm for c in clips], sources, bone_jitter, seed)
    return list(zip(seqs, rates))


def load_training_sequences(sources: tuple[str, ...], fps: float, bone_jitter: float = 0.0,
                            seed: int = 0) -> list[np.ndarray]:
    """Training-split mocap sequences (F, 17, 3) mm, world +Y up, root-relative, at `fps`,
    retargeted to the canonical bone lengths, or, with bone_jitter > 0, to per-clip random
    lengths (canonical x N(1, bone_jitter) per bone, the same on the left and right, clipped to
    +-2.5 sigma) so the lifter learns to read body proportions from the 2D instead of assuming
    one skeleton."""
    from engines.training import mocap

    return _retargeted(mocap.load_sequences(list(sources), "train", fps=fps), sources,
                       bone_jitter, seed)


def _retargeted(sequences: list[np.ndarray], sources, bone_jitter: float,
                seed: int) -> list[np.ndarray]:
    from engines.training import mocap

    if len(sequences) == 0:
        raise ds.DataError(f"no training sequences in sources {sources}; check the names and "
                           "that ../shared/data/mocap (or $POSESTREAM_SHARED) holds them")
    canonical = np.asarray(mocap.CANONICAL_BONE_LENGTHS_MM, np.float64)
    rng = np.random.default_rng(seed + 1000)
    mirror = ds.bone_mirror_index()
    out = []
    for seq in sequences:
        lengths = canonical
        if bone_jitter > 0:
            factor = np.clip(rng.normal(1.0, bone_jitter, len(canonical)), 1 - 2.5 * bone_jitter,
                             1 + 2.5 * bone_jitter)
            lengths = canonical * factor[np.minimum(np.arange(len(canonical)), mirror)]
        out.append(np.asarray(mocap.retarget(np.asarray(seq, np.float32), lengths), np.float32))
    return out


def build_data(cfg: TrainConfig, sequences_mm: list[np.ndarray], codec: Codec):
    """The method's data object from 3D sequences. For chen2019 and li2020 the object holds 2D
    (and cameras) only; the 3D stays here and is gone when this returns."""
    rng = np.random.default_rng(cfg.seed)
    cams = ds.CameraSampling(noise_px=cfg.noise_px)
    if cfg.temporal:
        clips = [c if isinstance(c, tuple) else (np.asarray(c), cfg.fps) for c in sequences_mm]
        noise = cfg.temporal_noise_model()
        parts, teacher = [], None
        for start in tqdm(range(0, cfg.windows, WINDOW_CHUNK), desc="training windows",
                          disable=cfg.windows <= WINDOW_CHUNK, mininterval=2.0):
            count = min(WINDOW_CHUNK, cfg.windows - start)
            windows = ds.sample_windows(clips, count, cfg.window_frames, cfg.fps, rng, noise)
            if cfg.method == "li2020":
                parts.append(ds.make_multi_view_windows(windows, codec, cams, rng, cfg.views,
                                                        noise))
            elif cfg.method == "chen2019":
                parts.append(ds.make_single_view_windows(windows, codec, cams, rng, noise))
            elif cfg.method == "distill":
                teacher = teacher or teacher_lift(cfg.teacher_engine)
                parts += [ds.make_distill_windows(windows, codec, cams, rng, teacher,
                                                  last=3 if cfg.w_accel > 0 else 1, noise=noise,
                                                  teacher_views=cfg.teacher_views)
                          for _ in range(cfg.views)]
            else:
                parts += [ds.make_supervised_windows(windows, codec, cams, rng, noise)
                          for _ in range(cfg.views)]
        kind = type(parts[0])
        return kind(**{name: np.concatenate([getattr(p, name) for p in parts])
                       for name in ds.array_fields(parts[0])})
    if cfg.method == "chen2019":
        windows = ds.windows_from_sequences(sequences_mm, cfg.window, stride=1)
        windows = _subset(windows, cfg.max_poses, rng)
        return ds.make_single_view(windows, codec, cams, rng)
    poses = np.concatenate([np.asarray(s) for s in sequences_mm], axis=0)
    poses = _subset(poses, cfg.max_poses, rng)
    if cfg.method == "li2020":
        return ds.make_multi_view(poses, codec, cams, rng, views=cfg.views)
    parts = [ds.make_supervised(poses, codec, cams, rng) for _ in range(cfg.views)]
    return ds.Supervised3D(np.concatenate([p.joints_2d_norm for p in parts]),
                           np.concatenate([p.joints_3d_norm for p in parts]))


def _subset(arr: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if count and count < len(arr):
        return arr[np.sort(rng.choice(len(arr), count, replace=False))]
    return arr


def check_data(cfg: TrainConfig, data) -> None:
    """Wrong data object for the method, or too little of it: DataError saying so."""
    expected = {"chen2019": ds.SingleView2D, "li2020": ds.MultiView2D,
                "supervised": ds.Supervised3D, "distill": ds.Distilled}[cfg.method]
    if not isinstance(data, expected):
        raise ds.DataError(f"--method {cfg.method} trains on {expected.__name__}, "
                           f"got {type(data).__name__}")
    if len(data) < cfg.batch:
        raise ds.DataError(f"{len(data)} training samples is fewer than one batch ({cfg.batch}); "
                           "add --sources or lower --batch")
    for name, arr in ds.array_fields(data).items():
        if not np.all(np.isfinite(arr)):
            raise ds.DataError(f"training data field {name!r} holds NaN or inf")


# --- rotations -----------------------------------------------------------------------------------


def random_rotations(gen: torch.Generator, count: int, elevation_max: float = math.pi / 9):
    """(count, 3, 3) camera-axes rotations: azimuth U(-pi, pi) about the vertical (Y) axis, then
    elevation U(-e, e) about X (Chen et al. 2019)."""
    az = (torch.rand(count, generator=gen) * 2 - 1) * math.pi
    el = (torch.rand(count, generator=gen) * 2 - 1) * elevation_max
    ca, sa, ce, se = torch.cos(az), torch.sin(az), torch.cos(el), torch.sin(el)
    zero, one = torch.zeros_like(az), torch.ones_like(az)
    rot_y = torch.stack([ca, zero, sa, zero, one, zero, -sa, zero, ca], -1).reshape(-1, 3, 3)
    rot_x = torch.stack([one, zero, zero, zero, ce, -se, zero, se, ce], -1).reshape(-1, 3, 3)
    return rot_x @ rot_y


# --- the methods ---------------------------------------------------------------------------------


class Method:
    """One training method: owns its networks and optimizers, does one step on a batch."""

    def __init__(self, cfg: TrainConfig, codec: Codec) -> None:
        self.cfg = cfg
        self.codec = codec
        self.lifter: Lifter = build_lifter(**cfg.model_config())
        if cfg.base_engine:  # the trained single-frame lifter the temporal network corrects
            self.lifter.base.load_state_dict(base_engine_weights(cfg.base_engine)[1])
        if cfg.init_engine:  # a fine-tune: every weight from an exported engine
            state, folded = init_engine_weights(cfg.init_engine, cfg.model_config())
            self.lifter.load_state_dict(state)
            if folded:
                self.lifter.hold_norms()
        if cfg.base_engine and cfg.freeze_base:
            self.lifter.freeze_base()
        elif cfg.base_as_run:
            self.lifter.run_base_as_engine()
        self.extra: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"lifter": self.lifter, **self.extra}

    def lifter_params(self) -> list[dict]:
        """The lifter's trainable weights as optimizer groups: a trained base (--train-base)
        in its own group at `lr_base_ratio` of the lifter's rate."""
        trained_base = None if self.cfg.freeze_base else getattr(self.lifter, "base", None)
        base = set() if trained_base is None else {id(p) for p in trained_base.parameters()}
        own = [p for p in self.lifter.parameters() if p.requires_grad and id(p) not in base]
        groups = [{"params": own, "lr_ratio": 1.0}]
        if base:
            groups.append({"params": list(trained_base.parameters()),
                           "lr_ratio": self.cfg.lr_base_ratio})
        return groups

    def set_lr(self, factor: float) -> None:
        for name, opt in self.optimizers.items():
            base = self.cfg.lr_critic if name.startswith("critic") else self.cfg.lr
            for group in opt.param_groups:
                group["lr"] = base * factor * group.get("lr_ratio", 1.0)

    def step(self, batch: dict[str, torch.Tensor], step: int, gen: torch.Generator) -> dict[str, float]:
        raise NotImplementedError


class Supervised(Method):
    """Regress the lifter onto the 3D target (codec units); loss = MPJPE in codec units."""

    def __init__(self, cfg: TrainConfig, codec: Codec) -> None:
        super().__init__(cfg, codec)
        self.optimizers["lifter"] = torch.optim.Adam(self.lifter_params(), lr=cfg.lr)

    def step(self, batch, step, gen):
        pred, accel = lift_windows(self.lifter, batch["joints_2d_norm"], self.cfg)
        mpjpe = torch.linalg.norm(pred - batch["joints_3d_norm"], dim=-1).mean()
        loss = mpjpe + self.cfg.w_accel * accel if accel is not None else mpjpe
        opt = self.optimizers["lifter"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out = {"loss": float(loss.detach()), "mpjpe_units": float(mpjpe.detach())}
        if accel is not None:
            out["accel"] = float(accel.detach())
        return out


def lift_windows(lifter: torch.nn.Module, joints_2d_norm: torch.Tensor,
                 cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The lifter on a batch of inputs -> (the newest frames' root-relative 3D (N, J, 3), the
    smoothness term or None).

    With `cfg.w_accel` > 0 the windows (N, F + 2, J, 2) hold two frames more than the receptive
    field: the last three frames are lifted (each from its own F frames, one dense pass) and
    the term is the mean norm of their second difference, codec units per frame^2. Each output
    is in its own frame's virtual-camera axes; between consecutive frames those turn by the
    root ray's motion (about 0.01 rad at 1.5 m/s, 5 m, 30 fps), whose second difference is
    smaller still, so the term is taken without turning them to one frame. It needs no 3D
    label: like a pose prior it asks the output to move smoothly, whatever the 2D does.
    """
    if cfg.w_accel <= 0:
        return lifter(joints_2d_norm), None
    rel = lifter(joints_2d_norm, last=3)                           # (N, 3, J, 3)
    accel = torch.linalg.norm(rel[:, 2] - 2.0 * rel[:, 1] + rel[:, 0], dim=-1).mean()
    return rel[:, 2], accel


class Chen2019(Method):
    """Lift-rotate-reproject-lift with 2D/3D consistency and (temporal) adversarial losses.

    Single-frame lifter: each frame of a `--window` window lifted on its own. Temporal lifter
    (receptive field F): windows of 2F - 1 frames, whose last F frames are lifted (each from its
    own F frames); the lifted motion is turned by one rotation per window (a second camera that
    watches the same motion), projected, and the fake 2D sequence is lifted again frame by frame
    (causal, its first frame repeated before it, as at a track's start). The 2D critic scores
    single fake frames, the temporal critic every `--window` consecutive fake frames, against
    the real 2D's last F frames.
    """

    def __init__(self, cfg: TrainConfig, codec: Codec) -> None:
        super().__init__(cfg, codec)
        self.extra["critic"] = PoseDiscriminator(NUM_JOINTS)
        self.extra["critic_temporal"] = TemporalDiscriminator(cfg.window, NUM_JOINTS)
        betas = (0.5, 0.9)
        self.optimizers["lifter"] = torch.optim.Adam(self.lifter_params(), lr=cfg.lr, betas=betas)
        self.optimizers["critic"] = torch.optim.Adam(
            list(self.extra["critic"].parameters()) + list(self.extra["critic_temporal"].parameters()),
            lr=cfg.lr_critic, betas=betas)
        lengths = torch.tensor(codec.canonical_bone_lengths_m, dtype=torch.float32)
        self.bone_ratio = lengths / lengths.sum()

    @property
    def lifted_frames(self) -> int:
        """Frames of each window the loop lifts: the last F (temporal) or all --window."""
        return self.cfg.receptive_field if self.cfg.temporal else self.cfg.window

    def _lift(self, real: torch.Tensor) -> torch.Tensor:
        """real (B, T, J, 2) -> poses in the normalised camera of the last `lifted_frames`
        frames, (B * lifted_frames, J, 3)."""
        t = self.lifted_frames
        if self.cfg.temporal:
            return self.lifter.lift_camera_last(real, t).flatten(0, 1)
        return self.lifter.lift_camera(real.reshape(-1, NUM_JOINTS, 2))

    def _relift(self, fake: torch.Tensor) -> torch.Tensor:
        """fake (B, t, J, 2) sequences -> (B * t, J, 3), frame by frame (causal for the
        temporal lifter)."""
        if self.cfg.temporal:
            return self.lifter.lift_camera_sequence(fake).flatten(0, 1)
        return self.lifter.lift_camera(fake.flatten(0, 1))

    def _fake(self, real: torch.Tensor, gen: torch.Generator):
        """real (B, T, J, 2) -> everything one lift-rotate-lift pass gives, over the lifted
        frames (t of them): q (Bt, J, 2) their real 2D, rel (Bt, J, 3) their lifted poses,
        fake (B, t, J, 2) the turned poses' 2D, back (Bt, J, 3) the fake lifted and turned back,
        reproj (Bt, J, 2) its 2D."""
        b, t = real.shape[0], self.lifted_frames
        c = self.cfg.depth_offset
        q = real[:, -t:].reshape(b * t, NUM_JOINTS, 2)
        posed = self._lift(real)                                             # (Bt, J, 3)
        root = posed[:, ROOT : ROOT + 1]
        rel = posed - root
        rot = random_rotations(gen, b).repeat_interleave(t, dim=0)           # one per window
        turned = rel @ rot.transpose(1, 2) + root
        fake, scale = normalise_2d_torch(project_unit_camera(turned), c)
        posed2 = self._relift(fake.reshape(b, t, NUM_JOINTS, 2))
        rel2 = posed2 - posed2[:, ROOT : ROOT + 1]
        k = scale * c / root[:, 0, 2]                                        # lift-of-scaled-2D factor
        back = (rel2 / k[:, None, None]) @ rot                               # R^T applied to rows
        reproj, _ = normalise_2d_torch(project_unit_camera(back + root), c)
        return q, rel, fake.reshape(b, t, NUM_JOINTS, 2), back, reproj

    def _clips(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B, t, J, 2) -> every `--window` consecutive frames, (B * (t - w + 1), w, J, 2)."""
        w = self.cfg.window
        return sequences.unfold(1, w, 1).permute(0, 1, 4, 2, 3).flatten(0, 1)

    def _critic_loss(self, critic, real, fake):
        if self.cfg.gan == "wgan-gp":
            return critic(fake).mean() - critic(real).mean() + 10.0 * gradient_penalty(critic, real, fake)
        return ((critic(real) - 1) ** 2).mean() + (critic(fake) ** 2).mean()

    def _generator_adv(self, critic, fake):
        if self.cfg.gan == "wgan-gp":
            return -critic(fake).mean()
        return ((critic(fake) - 1) ** 2).mean()

    def step(self, batch, step, gen):
        cfg = self.cfg
        real = batch["joints_2d_norm"]                                        # (B, T, J, 2)
        critic, critic_t = self.extra["critic"], self.extra["critic_temporal"]
        # critic updates (real windows from the batch's second half: not the ones lifted)
        half = real.shape[0] // 2
        lift_in, real_ref = real[:half], real[half:, -self.lifted_frames:]
        out = {}
        for _ in range(cfg.critic_steps):
            with torch.no_grad():
                _, _, fake, _, _ = self._fake(lift_in, gen)
            loss_c = self._critic_loss(critic, real_ref.flatten(0, 1), fake.flatten(0, 1))
            loss_c = loss_c + cfg.w_temporal * self._critic_loss(
                critic_t, self._clips(real_ref), self._clips(fake))
            opt = self.optimizers["critic"]
            opt.zero_grad(set_to_none=True)
            loss_c.backward()
            opt.step()
            out["critic"] = float(loss_c.detach())
        # lifter update
        q, rel, fake, back, reproj = self._fake(lift_in, gen)
        loss_3d = torch.linalg.norm(back - rel, dim=-1).mean()
        loss_2d = torch.linalg.norm(reproj - q, dim=-1).mean() * cfg.depth_offset
        adv = self._generator_adv(critic, fake.flatten(0, 1))
        adv_t = self._generator_adv(critic_t, self._clips(fake))
        loss = cfg.w_3d * loss_3d + cfg.w_2d * loss_2d + cfg.w_adv * adv + cfg.w_temporal * adv_t
        if cfg.w_bone > 0:
            lengths = bone_lengths_torch(rel)
            ratio = lengths / lengths.sum(-1, keepdim=True).clamp(min=1e-6)
            loss_bone = (ratio - self.bone_ratio).abs().sum(-1).mean()
            loss = loss + cfg.w_bone * loss_bone
            out["bone"] = float(loss_bone.detach())
        if cfg.w_accel > 0:  # the lifted frames are consecutive: their second difference
            seq = rel.reshape(half, self.lifted_frames, NUM_JOINTS, 3)
            accel = torch.linalg.norm(seq[:, 2:] - 2.0 * seq[:, 1:-1] + seq[:, :-2], dim=-1).mean()
            loss = loss + cfg.w_accel * accel
            out["accel"] = float(accel.detach())
        opt = self.optimizers["lifter"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out.update({"loss": float(loss.detach()), "loss_3d": float(loss_3d.detach()), "loss_2d": float(loss_2d.detach()),
                    "adv": float(adv.detach()), "adv_temporal": float(adv_t.detach())})
        return out


def li2020_terms(rel: torch.Tensor, metres_per_unit: torch.Tensor, batch: dict[str, torch.Tensor],
                 depth_offset: float, detach_transform: bool = False) -> dict[str, torch.Tensor]:
    """Li et al. 2020's loss terms for V synchronized views of B poses.

    rel: (B, V, J, 3) lifter output per view (codec units, virtual camera axes, root-relative).
    metres_per_unit: (B, V) root branch output; the root then sits at depth c * scale * m on the
    virtual camera's axis and the pose in metres is rel * m.
    batch: the `MultiView2D` fields as tensors. Errors are 2D, in head-to-root units (codec units
    x c), weighted by the 2D confidences:
    - reproj: each view's pose projected into its own camera (m cancels: shapes the lifter);
    - transform: each view's pose moved into every other view with the known cameras and
      projected there (all V (V - 1) ordered pairs);
    - consistency: the scale-free poses of all views, turned to world axes, agree.
    """
    c = depth_offset
    q = batch["joints_2d_norm"]                                   # (B, V, J, 2)
    scale, conf = batch["scale"], batch["confidence"]             # (B, V), (B, V, J)
    to_virtual, centre = batch["world_to_virtual"], batch["centre_m"]
    b, v = q.shape[:2]
    m = metres_per_unit[..., None, None]
    root_depth = c * scale * metres_per_unit                      # (B, V) metres
    root = torch.stack([torch.zeros_like(root_depth)] * 2 + [root_depth], -1)[:, :, None]
    posed = rel * m + root                                        # (B, V, J, 3) metres
    posed_transform = rel.detach() * m + root if detach_transform else posed
    weight = conf / conf.sum(-1, keepdim=True).clamp(min=1e-6)    # (B, V, J)

    def reproj_error(points_virtual: torch.Tensor, view: int) -> torch.Tensor:
        """(B, J, 3) metres in a view's virtual frame -> weighted 2D error (B,)."""
        pred = project_unit_camera(points_virtual, min_depth=0.05) * scale[:, view, None, None]
        err = torch.linalg.norm(pred - q[:, view], dim=-1) * c
        return (err * weight[:, view]).sum(-1)

    own = torch.stack([reproj_error(posed[:, i], i) for i in range(v)], 1).mean()
    world = torch.einsum("bvji,bvkj->bvki", to_virtual, posed_transform) + centre[:, :, None]
    pairs = []
    for i in range(v):
        for j in range(v):
            if i != j:
                in_j = torch.einsum("bij,bkj->bki", to_virtual[:, j], world[:, i] - centre[:, j, None])
                pairs.append(reproj_error(in_j, j))
    transform = torch.stack(pairs, 1).mean()
    shape_world = scale_normalised(
        torch.einsum("bvji,bvkj->bvki", to_virtual, rel).reshape(b * v, NUM_JOINTS, 3)
    ).reshape(b, v, NUM_JOINTS, 3)
    consistency = torch.linalg.norm(shape_world - shape_world.mean(1, keepdim=True), dim=-1).mean()
    return {"reproj": own, "transform": transform, "consistency": consistency}


class Li2020(Method):
    """Multi-view geometric self-supervision with known cameras (no adversary)."""

    def __init__(self, cfg: TrainConfig, codec: Codec) -> None:
        super().__init__(cfg, codec)
        self.extra["root_branch"] = RootBranch(NUM_JOINTS)
        params = self.lifter_params() + [{"params": list(self.extra["root_branch"].parameters()),
                                          "lr_ratio": 1.0}]
        self.optimizers["lifter"] = torch.optim.Adam(params, lr=cfg.lr)

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """All li2020 loss terms for a batch (B, V, ...) of synchronized views.

        During pre-training (step < pretrain_steps) the transform term sees the lifter's output
        detached: it trains the root branch only, so the root depths are about right when it
        starts to shape the lifter.
        """
        q = batch["joints_2d_norm"]
        b, v = q.shape[:2]
        flat = q.reshape(b * v, *q.shape[2:])                     # (BV, [F,] J, 2)
        rel, accel = lift_windows(self.lifter, flat, self.cfg)
        rel = rel.reshape(b, v, NUM_JOINTS, 3)
        if q.dim() == 5:  # windows (B, V, F, J, 2): the loss is on the newest frame, lifted
            newest = flat[:, -1]
            batch = {**batch, "joints_2d_norm": q[:, :, -1],
                     "confidence": batch["confidence"][:, :, -1]}
        else:
            newest = flat
        metres_per_unit = self.extra["root_branch"](newest).reshape(b, v)
        terms = li2020_terms(rel, metres_per_unit, batch, self.cfg.depth_offset,
                             detach_transform=step < self.cfg.pretrain_steps)
        if accel is not None:
            terms["accel"] = accel
        return terms

    def step(self, batch, step, gen):
        cfg = self.cfg
        terms = self.losses(batch, step)
        loss = (cfg.w_consistency * terms["consistency"] + cfg.w_reproj * terms["reproj"]
                + cfg.w_transform * terms["transform"])
        if "accel" in terms:
            loss = loss + cfg.w_accel * terms["accel"]
        if cfg.base_engine and step < cfg.pretrain_steps:
            # on a trained base the lifter needs no pre-training: only the root branch learns
            # (the transform term, lifter detached); consistency alone would pull the
            # corrections towards one pose all views agree on
            loss = cfg.w_transform * terms["transform"]
        opt = self.optimizers["lifter"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach()), **{k: float(t.detach()) for k, t in terms.items()}}


class Distill(Method):
    """The temporal lifter learns what a single-frame engine (trained without 3D labels) lifts
    from clean 2D, from windows of detector-like 2D: it has to undo the detector's noise with
    the past, and never sees a 3D label (the teacher's input is 2D, its output the target).

    loss = mean distance to the teacher's 3D on the newest frame (codec units); with
    `w_accel` > 0 on the last three frames, plus w_accel x the distance between their second
    difference and the teacher's: smoothness that spares the real motion the clean 2D shows
    (a plain second-difference penalty pulls every motion towards none).
    """

    def __init__(self, cfg: TrainConfig, codec: Codec) -> None:
        super().__init__(cfg, codec)
        self.optimizers["lifter"] = torch.optim.Adam(self.lifter_params(), lr=cfg.lr)

    def step(self, batch, step, gen):
        target = batch["teacher_3d_norm"]                               # (N, K, J, 3)
        if self.cfg.w_accel > 0:
            pred = self.lifter(batch["joints_2d_norm"], last=3)        # (N, 3, J, 3)
        else:
            pred = self.lifter(batch["joints_2d_norm"]).unsqueeze(1)
        dist = torch.linalg.norm(pred - target, dim=-1).mean()
        loss = dist
        out = {"teacher_dist": dist}
        if self.cfg.w_accel > 0:
            def accel(x):
                return x[:, 2] - 2.0 * x[:, 1] + x[:, 0]
            out["accel_dist"] = torch.linalg.norm(accel(pred) - accel(target), dim=-1).mean()
            loss = loss + self.cfg.w_accel * out["accel_dist"]
        opt = self.optimizers["lifter"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in out.items()}}


METHOD_CLASSES = {"chen2019": Chen2019, "li2020": Li2020, "supervised": Supervised,
                  "distill": Distill}


# --- several processes (torchrun) ----------------------------------------------------------------

#: What `torchrun` sets in each process it starts (torch.distributed's env:// rendezvous).
TORCHRUN_ENV: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_TORCHRUN_HINT = ("launch it as `torchrun --nproc_per_node K [--nnodes N --node_rank R "
                  "--master_addr HOST --master_port PORT] -m engines.training.train ...`")


class DistributedError(RuntimeError):
    """A multi-process run cannot start (its environment is missing or unusable)."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job: rank in [0, world)."""

    rank: int
    world: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed_from_env(required: bool = False, environ=None) -> Distributed | None:
    """The torchrun job this process belongs to, or None for a single process.

    required (`--distributed`): without torchrun's environment, DistributedError saying how to
    launch. A partial environment (some of TORCHRUN_ENV set) is always an error naming what is
    missing. WORLD_SIZE 1 runs as a single process.
    """
    env = os.environ if environ is None else environ
    present = {key: env.get(key) for key in TORCHRUN_ENV}
    if not any(present.values()):
        if required:
            raise DistributedError(f"--distributed needs the environment torchrun sets "
                                   f"({', '.join(TORCHRUN_ENV)}), and none is set; "
                                   f"{_TORCHRUN_HINT}")
        return None
    missing = [key for key, value in present.items() if not value]
    if missing:
        raise DistributedError(f"incomplete torchrun environment: {', '.join(missing)} not set "
                               f"(have {', '.join(k for k in TORCHRUN_ENV if k not in missing)}); "
                               f"{_TORCHRUN_HINT}")
    try:
        rank, world = int(present["RANK"]), int(present["WORLD_SIZE"])
    except ValueError as err:
        raise DistributedError(f"RANK / WORLD_SIZE are not integers ({err}); {_TORCHRUN_HINT}")
    if not 0 <= rank < world:
        raise DistributedError(f"RANK {rank} is not in [0, WORLD_SIZE {world}); {_TORCHRUN_HINT}")
    if world == 1 and not required:
        return None
    return Distributed(rank, world)


def _start_distributed(cfg: "TrainConfig", dist: Distributed, method: "Method") -> None:
    """Join the process group and wrap the method's networks in DistributedDataParallel."""
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if cfg.method == "chen2019":
        raise DistributedError("chen2019 calls its lifter outside forward() (lift-rotate-lift), "
                               "which DistributedDataParallel cannot synchronise; train li2020 or "
                               "supervised with torchrun")
    if cfg.batch % dist.world:
        raise DistributedError(f"--batch {cfg.batch} (the global batch) must divide into the "
                               f"{dist.world} processes; use a multiple of {dist.world}")
    if not tdist.is_initialized():
        # the trainer runs on the CPU: gloo (nccl needs the tensors on GPUs)
        # a rank that died or hangs ends the others' collectives with an error after 10 min
        tdist.init_process_group(backend="gloo", timeout=datetime.timedelta(minutes=10))
    method.lifter = DDP(method.lifter)
    for name, module in method.extra.items():
        if any(p.requires_grad for p in module.parameters()):
            method.extra[name] = DDP(module)
    logger.info("rank %d of %d: DistributedDataParallel (gloo), %d of the %d samples of each "
                "step", dist.rank, dist.world, cfg.batch // dist.world, cfg.batch)


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def _mean_over_ranks(values: dict[str, float], dist: Distributed | None) -> dict[str, float]:
    if dist is None:
        return values
    import torch.distributed as tdist

    t = torch.tensor(list(values.values()), dtype=torch.float64)
    tdist.all_reduce(t)
    return dict(zip(values, (t / dist.world).tolist()))


def _max_over_ranks(value: float, dist: Distributed | None) -> float:
    if dist is None:
        return value
    import torch.distributed as tdist

    t = torch.tensor([value], dtype=torch.float64)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return float(t)


# --- the loop ------------------------------------------------------------------------------------


def _batch(data, index: np.ndarray) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(arr[index]))
            for name, arr in ds.array_fields(data).items()}


def _to_jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    return value


def train(cfg: TrainConfig, data=None, codec: Codec | None = None, resume: bool = False,
          progress: bool = True, until: int | None = None, distributed: bool = False) -> dict:
    """Run training; returns the last checkpoint dict (also written to cfg.out).

    data/codec: prepared data object and codec (tests pass small ones); None loads the mocap
    sources of `cfg` and the canonical codec. until: stop after this step (a checkpoint is
    written there; `resume=True` later continues as if never stopped).

    Under torchrun (its environment set; required with distributed=True) every process builds
    the same seeded data and draws the same global batch of `cfg.batch` samples per step; rank r
    trains on its share (slice r of `world`), DistributedDataParallel averages the gradients, so
    the run follows the single-process one with the same global batch (up to batch-norm
    statistics, which each rank takes over its share). Rank 0 alone writes the checkpoints,
    log.csv and config.json and shows the progress bar; the logged losses are the mean over
    ranks, i.e. over the global batch.
    """
    dist = distributed_from_env(required=distributed)
    torch.set_num_threads(max(1, cfg.threads))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    codec = codec or canonical_codec(cfg.depth_offset)
    t_data = time.monotonic()
    if data is None:
        if cfg.temporal:
            sequences = load_training_clips(cfg.sources, cfg.bone_jitter, cfg.seed)
        else:
            sequences = load_training_sequences(cfg.sources, cfg.fps, cfg.bone_jitter, cfg.seed)
        data = build_data(cfg, sequences, codec)
        del sequences
    check_data(cfg, data)
    logger.info("training data: %s, %d samples, built in %.1f s", type(data).__name__,
                len(data), time.monotonic() - t_data)

    torch.manual_seed(cfg.seed)
    method = METHOD_CLASSES[cfg.method](cfg, codec)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed + 2)
    start_step, seconds_before = 0, 0.0
    ckpt_path = out / CHECKPOINT_NAME
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; drop --resume to start")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["training"]["method"] != cfg.method:
            raise ValueError(f"--resume: {ckpt_path} was trained with --method "
                             f"{ckpt['training']['method']}, not {cfg.method}")
        method.lifter.load_state_dict(ckpt["state_dict"])
        for name, state in ckpt["extra_state_dicts"].items():
            method.extra[name].load_state_dict(state)
        for name, state in ckpt["optimizer_states"].items():
            method.optimizers[name].load_state_dict(state)
        gen.set_state(ckpt["rng"]["torch_generator"])
        rng.bit_generator.state = ckpt["rng"]["numpy"]
        torch.set_rng_state(ckpt["rng"]["torch_global"])
        start_step = int(ckpt["step"])
        seconds_before = float(ckpt["training"]["seconds"])
        logger.info("resumed %s at step %d", ckpt_path, start_step)
    main_rank = dist is None or dist.main
    if dist is not None:
        _start_distributed(cfg, dist, method)
    if main_rank:
        (out / "config.json").write_text(json.dumps(
            {k: _to_jsonable(v) for k, v in dataclasses.asdict(cfg).items()}, indent=2))

    for module in method.modules().values():
        module.train()
    log_path = out / LOG_NAME
    log_file = (open(log_path, "a" if resume and log_path.exists() else "w", newline="")
                if main_rank else open(os.devnull, "w"))
    writer = None
    t0 = time.monotonic()
    last: dict[str, float] = {}
    sums: dict[str, float] = {}
    count = 0
    stop = cfg.steps if until is None else min(cfg.steps, until)
    bar = tqdm(range(start_step, stop), initial=start_step, total=cfg.steps, mininterval=2.0,
               desc=f"train {cfg.method}", disable=not progress or not main_rank,
               dynamic_ncols=True)
    share = slice(None) if dist is None else slice(
        dist.rank * cfg.batch // dist.world, (dist.rank + 1) * cfg.batch // dist.world)
    ckpt = None
    try:
        for step in bar:
            progress_frac = step / max(1, cfg.steps - 1)
            if cfg.time_budget_min > 0:
                elapsed = seconds_before + time.monotonic() - t0
                progress_frac = max(progress_frac, _max_over_ranks(
                    elapsed / (60.0 * cfg.time_budget_min), dist))
                if progress_frac >= 1.0:
                    stop = step
                    logger.info("time budget of %.1f min reached at step %d", cfg.time_budget_min,
                                step)
                    if main_rank and step > start_step and (step % cfg.checkpoint_every) != 0:
                        ckpt = _checkpoint(cfg, method, codec, data, step,
                                           seconds_before + time.monotonic() - t0, last, gen, rng)
                        torch.save(ckpt, ckpt_path.with_suffix(".tmp"))
                        ckpt_path.with_suffix(".tmp").replace(ckpt_path)
                    break
            method.set_lr(cfg.lr_final_ratio ** min(1.0, progress_frac))
            index = rng.integers(0, len(data), cfg.batch)[share]
            last = _mean_over_ranks(method.step(_batch(data, index), step, gen), dist)
            if not all(math.isfinite(x) for x in last.values()):
                raise FloatingPointError(f"loss became non-finite at step {step}: {last}; "
                                         "lower --lr or change the loss weights")
            for key, val in last.items():
                sums[key] = sums.get(key, 0.0) + val
            count += 1
            if (step + 1) % cfg.log_every == 0 or step + 1 == stop:
                row = {"step": step + 1, "seconds": round(seconds_before + time.monotonic() - t0, 2)}
                row.update({k: round(v / count, 6) for k, v in sums.items()})
                if writer is None:
                    writer = csv.DictWriter(log_file, fieldnames=list(row))
                    if log_file.tell() == 0:
                        writer.writeheader()
                writer.writerow(row)
                log_file.flush()
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                sums, count = {}, 0
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == stop:
                ckpt = _checkpoint(cfg, method, codec, data, step + 1,
                                   seconds_before + time.monotonic() - t0, last, gen, rng)
                if main_rank:
                    tmp = ckpt_path.with_suffix(".tmp")
                    torch.save(ckpt, tmp)
                    tmp.replace(ckpt_path)
        if dist is not None:
            import torch.distributed as tdist

            # every rank leaves together: a rank that tears its group down while a peer is
            # still finishing its last step could leave that peer waiting (seen once in 5)
            tdist.barrier()
    finally:
        log_file.close()
        bar.close()
        if dist is not None:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()
    if ckpt is None:  # resumed a finished run
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    return ckpt


def _checkpoint(cfg, method: Method, codec: Codec, data, step: int, seconds: float,
                last: dict[str, float], gen: torch.Generator, rng: np.random.Generator) -> dict:
    return {
        "model_config": cfg.model_config(),
        "state_dict": _unwrap(method.lifter).state_dict(),
        "codec": codec.to_metadata(),
        "training": {
            "method": cfg.method, "steps": step, "batch": cfg.batch, "seed": cfg.seed,
            "data": {"sources": list(cfg.sources), "split": "train", "fps": cfg.fps,
                     "samples": len(data), "kind": type(data).__name__,
                     "retargeted_to": ("canonical bone lengths (engines.training.mocap)" if not cfg.bone_jitter
                                       else f"canonical bone lengths x N(1, {cfg.bone_jitter}) "
                                            "per clip, left = right")},
            "seconds": round(seconds, 1), "final_losses": {k: round(v, 6) for k, v in last.items()},
            "config": {k: _to_jsonable(v) for k, v in dataclasses.asdict(cfg).items()},
        },
        "step": step,
        "extra_state_dicts": {k: _unwrap(m).state_dict() for k, m in method.extra.items()},
        "optimizer_states": {k: o.state_dict() for k, o in method.optimizers.items()},
        "rng": {"torch_generator": gen.get_state(), "numpy": rng.bit_generator.state,
                "torch_global": torch.get_rng_state()},
    }


# --- CLI -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None,
               prog: str = "python -m engines.training.train") -> tuple[TrainConfig, bool, bool]:
    defaults = TrainConfig(method="li2020", out="")
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train the 2D-to-3D lifter on shared mocap projected to 2D. chen2019 and "
                    "li2020 never see 3D labels, nor does distill (a single-frame engine's lift of "
                    "clean 2D as the temporal lifter's target); supervised is the reference "
                    "upper bound.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, log.csv, config.json")
    p.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps in all")
    p.add_argument("--batch", type=int, default=defaults.batch)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--resume", action="store_true", help="continue --out/checkpoint.pt")
    p.add_argument("--sources", nargs="+", default=list(defaults.sources),
                   help="mocap sources (engines.training.mocap), training split")
    p.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads")
    p.add_argument("--fps", type=float, default=defaults.fps, help="mocap resampling rate")
    p.add_argument("--max-poses", type=int, default=defaults.max_poses,
                   help="random subset of this many poses/windows (0 = all)")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--width", type=int, default=defaults.width)
    p.add_argument("--blocks", type=int, default=defaults.blocks)
    p.add_argument("--dropout", type=float, default=defaults.dropout)
    p.add_argument("--head", choices=("depth", "xyz", "refine"), default=defaults.head,
                   help="depth, xyz (single frame) or refine (temporal: depth + a 2D correction)")
    p.add_argument("--receptive-field", type=int, default=defaults.receptive_field,
                   help="frames the lifter sees at --fps (27: the causal temporal lifter; 1: "
                        "single frame)")
    p.add_argument("--channels", type=int, default=defaults.channels,
                   help="temporal lifter convolution channels")
    p.add_argument("--windows", type=int, default=defaults.windows,
                   help="temporal training windows cut from the mocap")
    p.add_argument("--temporal-noise", type=float, default=defaults.temporal_noise,
                   help="temporal: x the measured detector noise model (0: ground-truth 2D)")
    p.add_argument("--drop-rate", type=float, default=defaults.drop_rate,
                   help="temporal: rate of dropped (held) frames, with --temporal-noise")
    p.add_argument("--noise-rho", type=float, default=defaults.noise_rho,
                   help="temporal: frame-to-frame correlation of the 2D error")
    p.add_argument("--noise-rho-min", type=float, default=defaults.noise_rho_min,
                   help="temporal: each window draws its correlation from U(this, --noise-rho) "
                        "(0: frame-independent jitter too, as an unsmoothed detector gives)")
    p.add_argument("--noise-level-max", type=float, default=defaults.noise_level_max,
                   help="temporal: each window's 2D error is the measured one x U(0, this)")
    p.add_argument("--w-accel", type=float, default=defaults.w_accel,
                   help="temporal: weight of a smoothness term, the second difference of three "
                        "consecutive lifted frames (windows then hold 2 frames more); 0: off")
    p.add_argument("--static-share", type=float, default=defaults.static_share,
                   help="temporal: share of windows that are one image padded (its 2D repeated "
                        "over the window, as the lift stage pads a single image or a new track)")
    p.add_argument("--base-engine", default=defaults.base_engine,
                   help="temporal, --head refine: build on this single-frame engine (a file or "
                        "'default'): the window corrects its 2D input and its "
                        "depths; training starts exactly at its accuracy")
    p.add_argument("--no-depth-correction", action="store_true",
                   help="with --base-engine: the window corrects the base's 2D input only (a "
                        "learned causal 2D filter); the base gives every depth")
    p.add_argument("--train-base", action="store_true",
                   help="with --base-engine: train the base's weights too (default: frozen)")
    p.add_argument("--lr-base-ratio", type=float, default=defaults.lr_base_ratio,
                   help="with --train-base: the base learns at --lr x this (0 < r <= 1)")
    p.add_argument("--base-as-run", action="store_true",
                   help="with --train-base: the base trains as the engine runs it (no dropout, "
                        "its batch-norm statistics fixed)")
    p.add_argument("--init-engine", default=defaults.init_engine,
                   help="start from this exported engine's weights (a file or a shipped "
                        "engine's name), a fine-tune; its model_config must be this run's")
    p.add_argument("--teacher-engine", default=defaults.teacher_engine,
                   help="--method distill: the single-frame engine whose lift of the clean 2D "
                        "the temporal lifter learns from noisy windows (a file or 'default', "
                        "the shipped one, trained without 3D labels)")
    p.add_argument("--teacher-views", type=int, default=defaults.teacher_views,
                   help="--method distill: the target is the consensus shape of the teacher's "
                        "lifts from this many random cameras (clean 2D of each; the first is the "
                        "training view), a target nearer the true shape than one view's lift")
    p.add_argument("--w-reproj", type=float, default=defaults.w_reproj,
                   help="li2020 own-view re-projection weight (the refine head: a low weight "
                        "lets the 2D corrections undo the detector's noise)")
    p.add_argument("--noise-px", type=float, default=defaults.noise_px, help="2D noise std, px")
    p.add_argument("--bone-jitter", type=float, default=defaults.bone_jitter,
                   help="per-clip random bone lengths, relative std (0: canonical skeleton)")
    p.add_argument("--views", type=int, default=defaults.views, help="li2020 cameras per pose")
    p.add_argument("--gan", choices=("lsgan", "wgan-gp"), default=defaults.gan)
    p.add_argument("--critic-steps", type=int, default=defaults.critic_steps)
    p.add_argument("--lr-critic", type=float, default=defaults.lr_critic)
    p.add_argument("--w-adv", type=float, default=defaults.w_adv)
    p.add_argument("--w-temporal", type=float, default=defaults.w_temporal,
                   help="chen2019: weight of the temporal critic (2D sequences of --window frames)")
    p.add_argument("--window", type=int, default=defaults.window,
                   help="chen2019: consecutive frames its temporal critic sees (single-frame "
                        "lifter: the training windows; temporal: 2 to --receptive-field)")
    p.add_argument("--w-3d", type=float, default=defaults.w_3d)
    p.add_argument("--w-2d", type=float, default=defaults.w_2d)
    p.add_argument("--w-bone", type=float, default=defaults.w_bone,
                   help="chen2019 bone-length-ratio prior weight (0 = off)")
    p.add_argument("--pretrain-steps", type=int, default=defaults.pretrain_steps,
                   help="li2020 steps with the consistency loss only")
    p.add_argument("--w-transform", type=float, default=defaults.w_transform)
    p.add_argument("--w-consistency", type=float, default=defaults.w_consistency)
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument("--log-every", type=int, default=defaults.log_every)
    p.add_argument("--distributed", action="store_true",
                   help="require a torchrun launch (DistributedDataParallel over its processes; "
                        "without this flag a torchrun environment is used when present)")
    p.add_argument("--time-budget-min", type=float, default=defaults.time_budget_min,
                   help="stop after this many minutes; the lr decays over the budget (0: off)")
    a = p.parse_args(argv)
    cfg = TrainConfig(
        method=a.method, out=a.out, steps=a.steps, batch=a.batch, seed=a.seed,
        sources=tuple(a.sources), fps=a.fps, max_poses=a.max_poses, threads=a.threads, lr=a.lr,
        width=a.width, blocks=a.blocks, dropout=a.dropout, head=a.head, noise_px=a.noise_px,
        bone_jitter=a.bone_jitter, receptive_field=a.receptive_field, channels=a.channels,
        windows=a.windows, temporal_noise=a.temporal_noise, drop_rate=a.drop_rate,
        noise_rho=a.noise_rho, noise_rho_min=a.noise_rho_min,
        static_share=a.static_share, w_accel=a.w_accel, noise_level_max=a.noise_level_max, w_reproj=a.w_reproj,
        base_engine=a.base_engine, freeze_base=not a.train_base,
        lr_base_ratio=a.lr_base_ratio, base_as_run=a.base_as_run, init_engine=a.init_engine,
        correct_depth=not a.no_depth_correction, teacher_engine=a.teacher_engine,
        teacher_views=a.teacher_views,
        views=a.views, gan=a.gan, critic_steps=a.critic_steps, lr_critic=a.lr_critic,
        w_adv=a.w_adv, w_temporal=a.w_temporal, window=a.window, w_3d=a.w_3d, w_2d=a.w_2d, w_bone=a.w_bone,
        pretrain_steps=a.pretrain_steps, w_transform=a.w_transform,
        w_consistency=a.w_consistency, checkpoint_every=a.checkpoint_every,
        time_budget_min=a.time_budget_min, log_every=a.log_every)
    return cfg, a.resume, a.distributed


def main(argv: list[str] | None = None, prog: str = "python -m engines.training.train") -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg, resume, distributed = parse_args(argv, prog)
        ckpt = train(cfg, resume=resume, distributed=distributed)
    except (ds.DataError, ValueError, FileNotFoundError, FloatingPointError,
            DistributedError) as err:
        logger.error("%s", err)
        return 2
    logger.info("done: %d steps in %.0f s, final losses %s -> %s", ckpt["step"],
                ckpt["training"]["seconds"], ckpt["training"]["final_losses"],
                Path(cfg.out) / CHECKPOINT_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
