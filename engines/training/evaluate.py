"""Evaluate a lifter engine on 3D poses it never trained on.

    python -m engines.training.evaluate --engine engines/default/lifter.onnx --poses eval.npz \
        --cameras h36m --json result.json

Every pose of FILE.npz (`joints_mm` (N, 17, 3) float32, our joint order, millimetres,
root-relative, world +Y up; an optional string `up_axis` "y" or "z") is stood on the floor of a
camera rig with a seeded random heading, projected to pixels (optionally with Gaussian 2D noise),
encoded with the engine's codec, lifted, turned to metres with the codec's bone-length prior and
turned back into the real camera's axes, then compared with the ground truth in the camera frame:

- mpjpe_mm: mean joint error after the codec's metric scaling (what the pipeline outputs);
- n_mpjpe_mm: after the least-squares scale to the ground truth (Rhodin et al. 2018);
- pa_mpjpe_mm: after similarity Procrustes alignment (rotation, translation, scale);
- per_joint_mpjpe_mm, count, engine_id.

Sequences: a file may also hold `sequence` (N,) (str or int: which sequence each pose belongs to,
poses in order within it) and `fps` () (the poses' rate). Then each sequence is seen by one camera
for its whole length (heading, camera and placement drawn once per sequence from the seed, the way
they are drawn per pose otherwise), the noise is drawn per frame, each pose is lifted from a
window of the sequence's past 2D resampled to the engine's rate (linear interpolation; times
before the sequence's start repeat its first frame, as the lift stage pads a new track), and the
JSON adds, per sequence then averaged over frames, at the file's fps:
- mpjve_mm: mean |v_pred - v_gt| of the root-relative joints, v the first difference (mm/frame);
- accel_err_mm: mean |a_pred - a_gt|, a the second difference (mm/frame^2);
- accel_pred_mm, accel_gt_mm: mean |a| of the prediction and of the ground truth (jitter).
A single-frame engine (receptive field 1) is evaluated the same way (its window is the frame
itself), so engines compare in one run: `--engine A.onnx B.onnx --noise-px 0 5` prints one JSON
list with a row per engine and noise level. A temporal engine needs a file with sequences.

`--one-euro SPEC ...` (sequences only) also scores each engine's output after the smooth stage's
One Euro filter (`stages.smooth.OneEuroFilter`, per sequence, on the root-relative joints in
metres at the file's rate, as the stage filters a track): SPEC `off`, `pipeline` (the stage's
settings after a single-frame engine), `temporal` (after a temporal one) or
`MIN_CUTOFF_HZ,BETA[,D_CUTOFF_HZ]`; a row each. `--noise-rho R` correlates the 2D noise from
one frame to the next (AR(1), the same std), as a tracking detector's is. This is how the
stage's settings were chosen (pipeline.config.ONE_EURO_*).

Cameras: `h36m`: the 44 Human3.6M cameras (intrinsics and placement), the subject standing within
1 m of the point the subject's rig is aimed at; `random`: seeded `engines.runtime.camera.random_cameras`.
Deterministic for a seed. `--engine` takes an exported `.onnx` (run through `engines.runtime.engine`) or a
training checkpoint `.pt` (run in torch; for comparing runs before export).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engines.runtime import camera
from engines.runtime.codec import ANKLE_TO_SOLE_M, Codec
from engines.runtime.skeleton import JOINT_NAMES, NUM_JOINTS, ROOT
from engines.training.alignment import procrustes_aligned, scale_aligned

logger = logging.getLogger(__name__)

CAMERA_KINDS: tuple[str, ...] = ("h36m", "random")
#: How far (m, each floor axis) a subject stands from the point its Human3.6M rig is aimed at.
H36M_PLACEMENT_M: float = 1.0
BATCH = 4096


class EvaluationError(ValueError):
    """The poses file or engine cannot be evaluated; the message says why and what to do."""


@dataclass(frozen=True)
class LoadedLifter:
    """A lifter to evaluate: lift(joints_2d_norm (B, 17, 2)) -> joints_3d_norm (B, 17, 3), or,
    with receptive_field F > 1, lift((B, F, 17, 2) windows at `fps`, oldest first) -> (B, 17, 3)."""

    lift: Callable[[np.ndarray], np.ndarray]
    codec: Codec
    engine_id: str
    receptive_field: int = 1
    fps: float | None = None


@dataclass(frozen=True)
class PosesFile:
    """An evaluation file: joints_mm (N, 17, 3) float64 mm, world +Y up, root-relative;
    sequence (N,) ids or None; fps (the poses' rate) or None."""

    joints_mm: np.ndarray
    sequence: np.ndarray | None = None
    fps: float | None = None


# --- metrics (numpy, (N, J, 3), any unit) --------------------------------------------------------


def mpjpe(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, J) per-joint Euclidean errors."""
    return np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1)


# --- poses and cameras ---------------------------------------------------------------------------


def load_poses_file(path: str | Path) -> np.ndarray:
    """(N, 17, 3) float64 mm, world +Y up, root-relative, from an evaluation npz."""
    return read_poses_file(path).joints_mm


def read_poses_file(path: str | Path) -> PosesFile:
    """An evaluation npz with its optional `sequence` (N,) and `fps` (); EvaluationError when
    they are malformed or their lengths do not match `joints_mm`."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"poses file not found: {path}; make one with "
                              "`python -m engines.training.make_eval_poses` (see its --help)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "joints_mm" not in data.files:
                raise EvaluationError(f"{path}: no array 'joints_mm' (has {data.files}); it must hold "
                                      f"joints_mm (N, {NUM_JOINTS}, 3) in mm")
            joints = np.asarray(data["joints_mm"], dtype=np.float64)
            up = str(data["up_axis"]) if "up_axis" in data.files else "y"
            sequence = np.asarray(data["sequence"]) if "sequence" in data.files else None
            fps = np.asarray(data["fps"]) if "fps" in data.files else None
    except EvaluationError:
        raise
    except Exception as err:  # corrupt zip, pickled objects, truncated file
        raise EvaluationError(f"{path}: not a readable .npz ({err}); regenerate it") from err
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3) or joints.shape[0] == 0:
        raise EvaluationError(f"{path}: joints_mm has shape {joints.shape}; expected "
                              f"(N>0, {NUM_JOINTS}, 3) in our joint order")
    if not np.all(np.isfinite(joints)):
        raise EvaluationError(f"{path}: joints_mm holds NaN or inf")
    if up.lower() == "z":
        joints = joints @ camera.H36M_WORLD_TO_WORLD.T
    elif up.lower() != "y":
        raise EvaluationError(f"{path}: up_axis {up!r} is neither 'y' nor 'z'")
    joints = joints - joints[:, ROOT : ROOT + 1]
    spread = np.abs(joints).max()
    if not 200.0 < spread < 5000.0:
        raise EvaluationError(f"{path}: joints span {spread:.1f} from the root; joints_mm must be "
                              "in millimetres")
    if (sequence is None) != (fps is None):
        have, lack = ("sequence", "fps") if fps is None else ("fps", "sequence")
        raise EvaluationError(f"{path}: has {have!r} but no {lack!r}; a sequence file needs both "
                              "`sequence` (N,) and `fps` () (or neither, for single poses)")
    if sequence is not None:
        if sequence.ndim != 1 or len(sequence) != len(joints):
            raise EvaluationError(f"{path}: `sequence` has shape {sequence.shape} but joints_mm "
                                  f"holds {len(joints)} poses; it needs one id per pose, "
                                  f"shape ({len(joints)},)")
        if sequence.dtype.kind not in "iuUS":
            raise EvaluationError(f"{path}: `sequence` must hold str or int ids, got "
                                  f"{sequence.dtype}")
        if fps.shape != () or fps.dtype.kind not in "iuf" or not 0 < float(fps) < 10000:
            raise EvaluationError(f"{path}: `fps` must be one positive number (the poses' "
                                  f"rate), got {fps!r}")
        return PosesFile(joints, sequence, float(fps))
    return PosesFile(joints)


def place_and_project(poses_mm: np.ndarray, cameras: str, seed: int, noise_px: float = 0.0,
                      shared_dir: Path | None = None, group: np.ndarray | None = None,
                      noise_rho: float = 0.0):
    """Seeded placement of each pose in front of a camera.

    group: (N,) int in [0, G): poses of one group share the heading, camera and placement
    (drawn once per group, in group order; None: every pose its own group). Noise is per pose,
    Gaussian with std noise_px; noise_rho in [0, 1): its correlation from one pose to the next
    within a group (AR(1), the same std; 0: independent, the same draws as before the option).
    Returns (joints_2d_px (N, J, 2), joints_cam_m (N, J, 3) camera frame, Cameras (N,)).
    """
    rng = np.random.default_rng(seed)
    n = poses_mm.shape[0]
    group = np.arange(n) if group is None else np.asarray(group, np.int64)
    groups = int(group.max()) + 1
    heading = rng.uniform(-np.pi, np.pi, groups)[group]
    turn = camera.rotation_about_axis("y", heading)
    world = np.einsum("nij,nkj->nki", turn, poses_mm / 1000.0)          # root at the origin
    if cameras == "h36m":
        all_cams = camera.h36m_cameras(shared_dir)
        pick = rng.integers(0, len(all_cams), groups)[group]
        cams = all_cams[pick]
        subjects = sorted({name.split("/")[0] for name in all_cams.names})
        aims = {}
        for subject in subjects:
            idx = [i for i, name in enumerate(all_cams.names) if name.startswith(subject + "/")]
            aims[subject] = camera.axes_meeting_point(all_cams[np.array(idx)])
        aim = np.stack([aims[all_cams.names[int(i)].split("/")[0]] for i in pick])
        offset = rng.uniform(-H36M_PLACEMENT_M, H36M_PLACEMENT_M, (groups, 2))[group]
        root = np.stack([aim[:, 0] + offset[:, 0],
                         -world[..., 1].min(axis=1) + ANKLE_TO_SOLE_M,  # feet on the floor y=0
                         aim[:, 2] + offset[:, 1]], -1)
        world = world + root[:, None]
    elif cameras == "random":
        cams = camera.random_cameras(groups, rng)[group]
    else:
        raise EvaluationError(f"--cameras must be one of {CAMERA_KINDS}, got {cameras!r}")
    cam = cams.world_to_camera(world)
    if np.any(cam[..., 2] < 0.1):
        raise EvaluationError("a pose ended up behind a camera; this is a bug in the placement")
    px = camera.project(cam, cams.fx, cams.fy, cams.cx, cams.cy)
    if noise_px > 0:
        noise = rng.normal(0.0, noise_px, px.shape)
        if noise_rho > 0:
            noise = ar1_within_groups(noise, group, noise_rho)
        px = px + noise
    return px, cam, cams


def ar1_within_groups(white: np.ndarray, group: np.ndarray, rho: float) -> np.ndarray:
    """(N, ...) independent draws -> AR(1) with correlation rho from each pose to the next of
    its group (poses in order), each pose keeping the draws' std."""
    if not 0.0 <= rho < 1.0:
        raise EvaluationError(f"--noise-rho must be in [0, 1), got {rho}")
    out = np.array(white, np.float64)
    keep = np.sqrt(1.0 - rho * rho)
    for g in np.unique(group):
        idx = np.nonzero(group == g)[0]
        for prev, i in zip(idx[:-1], idx[1:]):
            out[i] = rho * out[prev] + keep * white[i]
    return out


# --- lifters -------------------------------------------------------------------------------------


def load_lifter(path: str | Path) -> LoadedLifter:
    """An exported engine (.onnx, through engines.runtime.engine) or a training checkpoint (.pt)."""
    path = Path(path)
    if path.suffix == ".pt":
        return _load_checkpoint(path)
    from engines.runtime.engine import load_engine

    engine = load_engine(path)
    return LoadedLifter(lambda x: engine.run({"joints_2d": x})["joints_3d"], engine.codec,
                        engine.engine_id, engine.receptive_field, engine.fps)


def _load_checkpoint(path: Path) -> LoadedLifter:
    import torch

    from engines.training.models import build_lifter

    if not path.is_file():
        raise EvaluationError(f"checkpoint not found: {path}; train one with `python -m engines.training.train`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        lifter = build_lifter(**ckpt["model_config"])
        lifter.load_state_dict(ckpt["state_dict"])
        codec = Codec.from_metadata(ckpt["codec"])
    except Exception as err:
        raise EvaluationError(f"{path}: not a usable lifter checkpoint ({err})") from err
    lifter.eval()
    digest = hashlib.sha256()
    for key, tensor in sorted(ckpt["state_dict"].items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())

    def lift(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return lifter(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()

    rf = int(getattr(lifter, "receptive_field", 1))
    fps = ckpt.get("training", {}).get("config", {}).get("fps") if rf > 1 else None
    return LoadedLifter(lift, codec, "ckpt-" + digest.hexdigest()[:12], rf,
                        None if fps is None else float(fps))


# --- evaluation ----------------------------------------------------------------------------------


def evaluate(lifter: LoadedLifter, poses_mm: np.ndarray, cameras: str = "h36m", seed: int = 0,
             noise_px: float = 0.0, shared_dir: Path | None = None,
             sequence: np.ndarray | None = None, fps: float | None = None,
             one_euro: tuple[float, float, float] | None = None,
             noise_rho: float = 0.0) -> dict:
    """Metrics of `lifter` on `poses_mm` (N, 17, 3) mm, world +Y up; see the module doc.

    sequence (N,) ids and fps: evaluate as sequences (one camera each, windows resampled to the
    engine's rate, velocity and acceleration errors). A temporal lifter needs them.
    one_euro: (min_cutoff Hz, beta, d_cutoff Hz): score the output after this One Euro filter,
    per sequence (sequences only).
    noise_rho: the 2D noise's correlation from one frame to the next (sequences only).
    """
    if one_euro is not None and sequence is None:
        raise EvaluationError("a One Euro setting needs a sequence file (`sequence` (N,) and "
                              "`fps` ()): the filter runs along each sequence")
    if noise_rho and sequence is None:
        raise EvaluationError("--noise-rho needs a sequence file: it correlates the noise from "
                              "one frame of a sequence to the next")
    if sequence is None:
        if lifter.receptive_field > 1:
            raise EvaluationError(
                f"engine {lifter.engine_id} lifts windows of {lifter.receptive_field} frames; "
                "evaluate it on a sequence file (`sequence` (N,) and `fps` (); "
                "`python -m engines.training.make_eval_poses` writes them)")
        px, cam, cams = place_and_project(poses_mm, cameras, seed, noise_px, shared_dir)
        gt_m = cam - cam[:, ROOT : ROOT + 1]
        pred_m = predict_metric(lifter, px, cams)
        return metrics(pred_m * 1000.0, gt_m * 1000.0, lifter.engine_id)
    if fps is None or not fps > 0:
        raise EvaluationError(f"a sequence evaluation needs the poses' fps > 0, got {fps!r}")
    sequence = np.asarray(sequence)
    if sequence.shape != (len(poses_mm),):
        raise EvaluationError(f"sequence has shape {sequence.shape}, expected ({len(poses_mm)},)"
                              ": one id per pose")
    ids, group = np.unique(sequence, return_inverse=True)
    _, first = np.unique(group, return_index=True)
    group = np.argsort(np.argsort(first))[group]       # groups numbered in order of appearance
    px, cam, cams = place_and_project(poses_mm, cameras, seed, noise_px, shared_dir, group,
                                      noise_rho)
    gt_m = cam - cam[:, ROOT : ROOT + 1]
    windows, lags = sequence_windows(px, group, fps, lifter.receptive_field, lifter.fps)
    pred_m = predict_metric(lifter, windows, cams)
    if one_euro is not None:
        pred_m = smooth_sequences(pred_m, group, fps, one_euro)
    result = metrics(pred_m * 1000.0, gt_m * 1000.0, lifter.engine_id)
    result.update(motion_metrics(pred_m * 1000.0, gt_m * 1000.0, group))
    if one_euro is not None:
        from pipeline.config import one_euro_fields

        result["one_euro"] = one_euro_fields(one_euro)
    if noise_rho:
        result["noise_rho"] = float(noise_rho)
    result.update({"sequences": int(len(ids)), "fps": float(fps),
                   "receptive_field": int(lifter.receptive_field),
                   "engine_fps": lifter.fps, "window_s": round(float(lags.max()), 4)})
    return result


def parse_one_euro(spec: str) -> tuple[float, float, float] | None:
    """One Euro settings (min_cutoff Hz, beta, d_cutoff Hz) from `--one-euro`: `off` -> None, `pipeline` -> SmoothConfig's defaults (a single-frame engine's),
    `temporal` -> a temporal engine's (`pipeline.config.one_euro_for_engine`),
    `MIN_CUTOFF,BETA[,D_CUTOFF]` -> those; EvaluationError saying the forms otherwise."""
    from pipeline import config

    if spec == "off":
        return None
    if spec in ("pipeline", "temporal"):
        return config.one_euro_for_engine(27 if spec == "temporal" else 1)
    try:
        return config.parse_one_euro(spec)
    except ValueError as err:
        raise EvaluationError(f"--one-euro: {err}, or off, pipeline or temporal") from None


def smooth_sequences(pred_m: np.ndarray, group: np.ndarray, fps: float,
                     setting: tuple[float, float, float]) -> np.ndarray:
    """Root-relative (N, J, 3) metres -> the same after the smooth stage's One Euro filter,
    run afresh along each sequence (group (N,), poses in order) at 1 / fps seconds a pose."""
    from stages.smooth import OneEuroFilter

    out = np.empty_like(pred_m, dtype=np.float64)
    for g in np.unique(group):
        filt = OneEuroFilter(*setting)
        for k, i in enumerate(np.nonzero(group == g)[0]):
            out[i] = filt.filter(pred_m[i], k / fps)
    return out


def sequence_windows(joints_2d_px: np.ndarray, group: np.ndarray, fps: float, frames: int,
                     engine_fps: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Causal windows of 2D for each pose of each sequence.

    joints_2d_px (N, J, 2), group (N,) sequence of each pose (poses in order within it), fps the
    poses' rate, frames the engine's receptive field at engine_fps (None: the poses' rate).
    Returns (windows (N, frames, J, 2) px, oldest first, the pose itself last; lags (frames,)
    seconds before the newest). Window times are resampled linearly from the sequence's frames;
    times before its first frame take the first frame (the padding at a track's start).
    """
    rate = float(engine_fps or fps)
    lags = np.arange(frames - 1, -1, -1, dtype=np.float64) / rate
    out = np.empty((len(joints_2d_px), frames) + joints_2d_px.shape[1:], np.float64)
    for g in np.unique(group):
        idx = np.nonzero(group == g)[0]
        seq = np.asarray(joints_2d_px[idx], np.float64)
        pos = np.clip((np.arange(len(idx))[:, None] / fps - lags[None]) * fps, 0, len(idx) - 1)
        lo = np.floor(pos + 1e-9).astype(np.int64)
        hi = np.minimum(lo + 1, len(idx) - 1)
        w = np.clip(pos - lo, 0.0, 1.0)[..., None, None]
        out[idx] = (1 - w) * seq[lo] + w * seq[hi]
    return out, lags


def motion_metrics(pred_mm: np.ndarray, gt_mm: np.ndarray, group: np.ndarray) -> dict:
    """Velocity and acceleration errors (mm/frame, mm/frame^2) of root-relative (N, J, 3) poses,
    differences taken within each sequence only."""
    vel, acc, acc_pred, acc_gt = [], [], [], []
    for g in np.unique(group):
        idx = np.nonzero(group == g)[0]
        p, t = pred_mm[idx], gt_mm[idx]
        if len(idx) >= 2:
            vel.append(np.linalg.norm(np.diff(p, 1, 0) - np.diff(t, 1, 0), axis=-1).ravel())
        if len(idx) >= 3:
            ap, at = np.diff(p, 2, 0), np.diff(t, 2, 0)
            acc.append(np.linalg.norm(ap - at, axis=-1).ravel())
            acc_pred.append(np.linalg.norm(ap, axis=-1).ravel())
            acc_gt.append(np.linalg.norm(at, axis=-1).ravel())
    mean = lambda parts: round(float(np.concatenate(parts).mean()), 2) if parts else None  # noqa: E731
    return {"mpjve_mm": mean(vel), "accel_err_mm": mean(acc), "accel_pred_mm": mean(acc_pred),
            "accel_gt_mm": mean(acc_gt)}


def predict_metric(lifter: LoadedLifter, joints_2d_px: np.ndarray, cams) -> np.ndarray:
    """(N, J, 2) px (or (N, F, J, 2) windows, newest last) seen by cameras (N,) -> (N, J, 3)
    metres, root-relative, camera frame (the newest frame's)."""
    out = []
    frames = joints_2d_px.shape[1] if joints_2d_px.ndim == 4 else 0
    batch = max(1, BATCH // max(1, frames))
    for start in range(0, len(joints_2d_px), batch):
        sl = slice(start, start + batch)
        if frames:
            chunk = joints_2d_px[sl]
            n = len(chunk)
            rep = [np.repeat(v[sl], frames) for v in (cams.fx, cams.fy, cams.cx, cams.cy)]
            enc = lifter.codec.encode_full(chunk.reshape(n * frames, NUM_JOINTS, 2), *rep)
            norm = enc.joints_2d_norm.reshape(n, frames, NUM_JOINTS, 2)
            rotation = enc.rotation_to_camera.reshape(n, frames, 3, 3)[:, -1]
            lifted = np.asarray(lifter.lift(norm if lifter.receptive_field > 1 else norm[:, -1]))
            if lifted.shape != (n, NUM_JOINTS, 3):
                raise EvaluationError(f"engine {lifter.engine_id} returned shape {lifted.shape}; "
                                      f"expected (B, {NUM_JOINTS}, 3)")
            out.append(lifter.codec.to_metric(lifted, rotation_to_camera=rotation))
            continue
        enc = lifter.codec.encode_full(joints_2d_px[sl], cams.fx[sl], cams.fy[sl], cams.cx[sl],
                                       cams.cy[sl])
        lifted = np.asarray(lifter.lift(enc.joints_2d_norm))
        if lifted.shape != (len(enc.joints_2d_norm), NUM_JOINTS, 3):
            raise EvaluationError(f"engine {lifter.engine_id} returned shape {lifted.shape}; "
                                  f"expected (B, {NUM_JOINTS}, 3)")
        out.append(lifter.codec.to_metric(lifted, rotation_to_camera=enc.rotation_to_camera))
    return np.concatenate(out).astype(np.float64)


def metrics(pred_mm: np.ndarray, gt_mm: np.ndarray, engine_id: str) -> dict:
    """The evaluation JSON from root-relative predictions and ground truth (N, J, 3) mm."""
    err = mpjpe(pred_mm, gt_mm)
    per_joint = err.mean(0)
    return {
        "mpjpe_mm": round(float(err.mean()), 2),
        "pa_mpjpe_mm": round(float(mpjpe(procrustes_aligned(pred_mm, gt_mm), gt_mm).mean()), 2),
        "n_mpjpe_mm": round(float(mpjpe(scale_aligned(pred_mm, gt_mm), gt_mm).mean()), 2),
        "per_joint_mpjpe_mm": {name: round(float(v), 2) for name, v in zip(JOINT_NAMES, per_joint)},
        "count": int(len(pred_mm)),
        "engine_id": engine_id,
    }


def main(argv: list[str] | None = None, prog: str = "python -m engines.training.evaluate") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Project 3D test poses through cameras, lift them with an engine and print "
                    "MPJPE, PA-MPJPE and N-MPJPE (mm) as one JSON object.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--engine", required=True, nargs="+",
                   help="lifter.onnx (exported), a shipped engine by name (default, temporal) "
                        "or checkpoint.pt; several: one row each")
    p.add_argument("--poses", required=True, help="npz with joints_mm (N, 17, 3), mm, world +Y up")
    p.add_argument("--cameras", choices=CAMERA_KINDS, default="h36m")
    p.add_argument("--noise-px", type=float, nargs="+", default=[0.0],
                   help="Gaussian 2D noise std, pixels; several: one row each")
    p.add_argument("--no-sequences", action="store_true",
                   help="ignore the file's sequence/fps arrays (single poses, as before them)")
    p.add_argument("--noise-rho", type=float, default=0.0,
                   help="correlation of the 2D noise from one frame to the next (sequence files; "
                        "AR(1), same std; 0: independent per frame)")
    p.add_argument("--one-euro", nargs="+", default=["off"], metavar="SPEC",
                   help="score the output after the smooth stage's One Euro filter too (sequence "
                        "files): off, pipeline (the stage's after a single-frame engine), "
                        "temporal (after a temporal one) or MIN_CUTOFF_HZ,BETA[,D_CUTOFF_HZ]; "
                        "several: one row each")
    p.add_argument("--seed", type=int, default=0, help="placement, heading and noise seed")
    p.add_argument("--json", help="also write the JSON object to this file")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        poses = read_poses_file(a.poses)
        seq, fps = (None, None) if a.no_sequences else (poses.sequence, poses.fps)
        settings = [(spec, parse_one_euro(spec)) for spec in a.one_euro]
        several = len(a.engine) > 1 or len(a.noise_px) > 1 or len(settings) > 1
        rows = []
        for path in a.engine:
            lifter = load_lifter(path)
            for noise in a.noise_px:
                for spec, setting in settings:
                    row = evaluate(lifter, poses.joints_mm, a.cameras, a.seed, noise,
                                   sequence=seq, fps=fps, one_euro=setting,
                                   noise_rho=a.noise_rho)
                    if several:
                        row = {"engine": str(path), "noise_px": noise, **row}
                        if len(settings) > 1:
                            row = {"one_euro_spec": spec, **row}
                    rows.append(row)
        result = rows[0] if len(rows) == 1 else rows
    except Exception as err:  # EvaluationError, EngineError, FileNotFoundError: all say what to do
        if not isinstance(err, (EvaluationError, FileNotFoundError)) and \
                type(err).__name__ != "EngineError":
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
