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

logger = logging.getLogger(__name__)

CAMERA_KINDS: tuple[str, ...] = ("h36m", "random")
#: How far (m, each floor axis) a subject stands from the point its Human3.6M rig is aimed at.
H36M_PLACEMENT_M: float = 1.0
BATCH = 4096


class EvaluationError(ValueError):
    """The poses file or engine cannot be evaluated; the message says why and what to do."""


@dataclass(frozen=True)
class LoadedLifter:
    """A lifter to evaluate: lift(joints_2d_norm (B, 17, 2)) -> joints_3d_norm (B, 17, 3)."""

    lift: Callable[[np.ndarray], np.ndarray]
    codec: Codec
    engine_id: str


# --- metrics (numpy, (N, J, 3), any unit) --------------------------------------------------------


def mpjpe(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, J) per-joint Euclidean errors."""
    return np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1)


def scale_aligned(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """pred scaled per pose by the least-squares factor onto gt (both root-relative)."""
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    num = np.sum(pred * gt, axis=(1, 2))
    den = np.maximum(np.sum(pred * pred, axis=(1, 2)), 1e-12)
    return pred * (num / den)[:, None, None]


def procrustes_aligned(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """pred aligned per pose to gt by the best similarity transform (rotation without
    reflection, uniform scale, translation)."""
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    mu_p, mu_g = pred.mean(1, keepdims=True), gt.mean(1, keepdims=True)
    p0, g0 = pred - mu_p, gt - mu_g
    u, s, vt = np.linalg.svd(np.einsum("nji,njk->nik", p0, g0))  # H = P^T G
    d = np.sign(np.linalg.det(np.einsum("nij,njk->nik", u, vt)))
    s[:, -1] *= d
    u[:, :, -1] *= d[:, None]
    rot = np.einsum("nij,njk->nik", u, vt)                     # p0 @ rot ~ g0 / scale
    scale = s.sum(-1) / np.maximum(np.sum(p0 * p0, axis=(1, 2)), 1e-12)
    return scale[:, None, None] * (p0 @ rot) + mu_g


# --- poses and cameras ---------------------------------------------------------------------------


def load_poses_file(path: str | Path) -> np.ndarray:
    """(N, 17, 3) float64 mm, world +Y up, root-relative, from an evaluation npz."""
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
    return joints


def place_and_project(poses_mm: np.ndarray, cameras: str, seed: int, noise_px: float = 0.0,
                      shared_dir: Path | None = None):
    """Seeded placement of each pose in front of a camera.

    Returns (joints_2d_px (N, J, 2), joints_cam_m (N, J, 3) camera frame, Cameras (N,)).
    """
    rng = np.random.default_rng(seed)
    n = poses_mm.shape[0]
    heading = rng.uniform(-np.pi, np.pi, n)
    turn = camera.rotation_about_axis("y", heading)
    world = np.einsum("nij,nkj->nki", turn, poses_mm / 1000.0)          # root at the origin
    if cameras == "h36m":
        all_cams = camera.h36m_cameras(shared_dir)
        pick = rng.integers(0, len(all_cams), n)
        cams = all_cams[pick]
        subjects = sorted({name.split("/")[0] for name in all_cams.names})
        aims = {}
        for subject in subjects:
            idx = [i for i, name in enumerate(all_cams.names) if name.startswith(subject + "/")]
            aims[subject] = camera.axes_meeting_point(all_cams[np.array(idx)])
        aim = np.stack([aims[all_cams.names[int(i)].split("/")[0]] for i in pick])
        offset = rng.uniform(-H36M_PLACEMENT_M, H36M_PLACEMENT_M, (n, 2))
        root = np.stack([aim[:, 0] + offset[:, 0],
                         -world[..., 1].min(axis=1) + ANKLE_TO_SOLE_M,  # feet on the floor y=0
                         aim[:, 2] + offset[:, 1]], -1)
        world = world + root[:, None]
    elif cameras == "random":
        cams = camera.random_cameras(n, rng)
    else:
        raise EvaluationError(f"--cameras must be one of {CAMERA_KINDS}, got {cameras!r}")
    cam = cams.world_to_camera(world)
    if np.any(cam[..., 2] < 0.1):
        raise EvaluationError("a pose ended up behind a camera; this is a bug in the placement")
    px = camera.project(cam, cams.fx, cams.fy, cams.cx, cams.cy)
    if noise_px > 0:
        px = px + rng.normal(0.0, noise_px, px.shape)
    return px, cam, cams


# --- lifters -------------------------------------------------------------------------------------


def load_lifter(path: str | Path) -> LoadedLifter:
    """An exported engine (.onnx, through engines.runtime.engine) or a training checkpoint (.pt)."""
    path = Path(path)
    if path.suffix == ".pt":
        return _load_checkpoint(path)
    from engines.runtime.engine import load_engine

    engine = load_engine(path)
    return LoadedLifter(lambda x: engine.run({"joints_2d": x})["joints_3d"], engine.codec,
                        engine.engine_id)


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

    return LoadedLifter(lift, codec, "ckpt-" + digest.hexdigest()[:12])


# --- evaluation ----------------------------------------------------------------------------------


def evaluate(lifter: LoadedLifter, poses_mm: np.ndarray, cameras: str = "h36m", seed: int = 0,
             noise_px: float = 0.0, shared_dir: Path | None = None) -> dict:
    """Metrics of `lifter` on `poses_mm` (N, 17, 3) mm, world +Y up; see the module doc."""
    px, cam, cams = place_and_project(poses_mm, cameras, seed, noise_px, shared_dir)
    gt_m = cam - cam[:, ROOT : ROOT + 1]
    pred_m = predict_metric(lifter, px, cams)
    return metrics(pred_m * 1000.0, gt_m * 1000.0, lifter.engine_id)


def predict_metric(lifter: LoadedLifter, joints_2d_px: np.ndarray, cams) -> np.ndarray:
    """(N, J, 2) px seen by cameras (N,) -> (N, J, 3) metres, root-relative, camera frame."""
    out = []
    for start in range(0, len(joints_2d_px), BATCH):
        sl = slice(start, start + BATCH)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engines.training.evaluate",
        description="Project 3D test poses through cameras, lift them with an engine and print "
                    "MPJPE, PA-MPJPE and N-MPJPE (mm) as one JSON object.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--engine", required=True, help="lifter.onnx (exported) or checkpoint.pt")
    p.add_argument("--poses", required=True, help="npz with joints_mm (N, 17, 3), mm, world +Y up")
    p.add_argument("--cameras", choices=CAMERA_KINDS, default="h36m")
    p.add_argument("--noise-px", type=float, default=0.0, help="Gaussian 2D noise std, pixels")
    p.add_argument("--seed", type=int, default=0, help="placement, heading and noise seed")
    p.add_argument("--json", help="also write the JSON object to this file")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        poses = load_poses_file(a.poses)
        lifter = load_lifter(a.engine)
        result = evaluate(lifter, poses, a.cameras, a.seed, a.noise_px)
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
