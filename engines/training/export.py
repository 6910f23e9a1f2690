"""Export a trained lifter checkpoint to the engine file the runtime loads (ONNX + metadata).

    python -m engines.training.export --checkpoint runs/chen/last.pt --out engines/default

writes DIR/lifter.onnx (docs/DESIGN.md, "Engine file"): opset 17, input `joints_2d` (B, 17, 2)
float32 with a dynamic batch axis, output `joints_3d` (B, 17, 3) float32 (plus any extra outputs
the model returns, under their own names), and JSON metadata under the ONNX `metadata_props`
key "posestream": codec, joint names, receptive field, model config, training summary and the
engine id (first 12 hex of the sha256 of the weights).

The export is checked before it is kept: onnx.checker, then ONNX Runtime against torch on random
and pose-shaped inputs at batch 1 and batch-max (max abs difference <= --atol, default 1e-4), then
a load through `engines.runtime.engine.load_engine`. When tensorrt and a GPU are present a TensorRT plan
is built beside it (FP16 where the GPU supports it); otherwise, or when TensorRT fails to build
one, that step is skipped with a log line (a warning for a failed build) and the reason in the
printed JSON ("tensorrt_skipped"): the ONNX file is kept and the exit status is 0.

Training-side module: imports torch (the runtime never imports this file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engines.runtime import engine as runtime, tensorrt_backend
from engines.runtime.codec import Codec
from engines.training.models import build_lifter
from engines.runtime.skeleton import JOINT_NAMES, NUM_JOINTS

logger = logging.getLogger(__name__)

OPSET: int = 17
ENGINE_FILE_NAME: str = "lifter.onnx"
METADATA_FORMAT_VERSION: int = 1
DEFAULT_BATCH_MAX: int = 64
DEFAULT_ATOL: float = 1e-4
REQUIRED_CHECKPOINT_KEYS: tuple[str, ...] = ("model_config", "state_dict", "codec")


class ExportError(RuntimeError):
    """A checkpoint cannot be exported, or the export failed a check; the message says why."""


@dataclass(frozen=True)
class ExportResult:
    """What `export_checkpoint` wrote and measured."""

    onnx_path: Path
    engine_id: str
    output_names: tuple[str, ...]
    max_abs_diff: float  # ONNX Runtime vs torch over every check input, codec units
    plan_path: Path | None  # TensorRT plan, None when skipped
    metadata: dict
    plan_skipped: str | None = None  # why there is no TensorRT plan (None: built, or not asked)


# --- checkpoint -----------------------------------------------------------------------------------

def load_checkpoint(path: str | Path) -> dict:
    """Read a trainer checkpoint (docs/DESIGN.md) and check it has what export needs."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"checkpoint {path} not found; train one with python -m engines.training.train")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if "weights only" not in str(err).lower():
                raise
            # The trainer's checkpoints may hold plain Python objects beyond tensors (optimizer
            # and RNG states); the user named this file explicitly, so load it in full.
            logger.debug("checkpoint %s needs a full unpickle (%s)", path, str(err).splitlines()[0])
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ExportError(f"checkpoint {path} could not be read ({type(err).__name__}: {err}); "
                          "is it a torch checkpoint written by engines.training.train?") from err
    if not isinstance(ckpt, dict):
        raise ExportError(f"checkpoint {path} is a {type(ckpt).__name__}, expected the dict engines.training.train writes")
    missing = [k for k in REQUIRED_CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ExportError(f"checkpoint {path} lacks {missing}; it must come from engines.training.train")
    return ckpt


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 hex of the weights: every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    """json.dumps fallback: numpy/torch scalars and arrays, paths; anything else as text."""
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


# --- ONNX -----------------------------------------------------------------------------------------

class _NamedOutputs(nn.Module):
    """Wraps a lifter so its outputs are a tuple in a fixed order (joints_3d first)."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...] | None) -> None:
        super().__init__()
        self.model = model
        self.keys = keys

    def forward(self, joints_2d: torch.Tensor):
        out = self.model(joints_2d)
        if self.keys is None:
            return out
        return tuple(out[k] for k in self.keys)


def output_names_of(model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """(ONNX output names, dict keys to read them from, or None for a plain tensor/tuple).

    A tensor -> ("joints_3d",); a dict -> its keys with "joints_3d" first (it must have it); a
    tuple -> "joints_3d" then "output_1", "output_2", ...
    """
    shape = runtime.input_shape(int(getattr(model, "receptive_field", 1)))
    with torch.no_grad():
        out = model(torch.zeros(2, *shape))
    if isinstance(out, torch.Tensor):
        return (runtime.OUTPUT_NAME,), None
    if isinstance(out, dict):
        if runtime.OUTPUT_NAME not in out:
            raise ExportError(f"the model returns a dict without {runtime.OUTPUT_NAME!r}: keys {list(out)}")
        keys = (runtime.OUTPUT_NAME,) + tuple(k for k in out if k != runtime.OUTPUT_NAME)
        return keys, keys
    if isinstance(out, (tuple, list)):
        return (runtime.OUTPUT_NAME,) + tuple(f"output_{i}" for i in range(1, len(out))), None
    raise ExportError(f"the model returns a {type(out).__name__}; expected a tensor, tuple or dict")


def check_inputs(codec: Codec, batch_max: int, seed: int = 0, frames: int = 1) -> list[np.ndarray]:
    """Inputs the export is checked on, each (B, 17, 2) float32 codec units, or (B, F, 17, 2)
    windows for a temporal lifter (frames F > 1).

    Random normal ones (any values the network might see) and pose-shaped ones (random pixel
    skeletons through `codec.encode`: root at 0, head-to-root 1/c; in windows each skeleton
    drifts a few pixels per frame), at batch 1 and batch_max.
    """
    rng = np.random.default_rng(seed)
    shape = runtime.input_shape(frames)
    batches = []
    for batch in (1, batch_max):
        batches.append(rng.normal(0.0, 0.1, (batch, *shape)).astype(np.float32))
        px = rng.normal(0.0, 80.0, (batch, 1, NUM_JOINTS, 2)) + np.array([640.0, 360.0])
        px = px + np.cumsum(rng.normal(0.0, 3.0, (batch, frames, NUM_JOINTS, 2)), axis=1)
        enc = codec.encode(px.reshape(-1, NUM_JOINTS, 2), 1000.0, 1000.0, 640.0, 360.0)
        batches.append(enc.reshape(batch, *shape).astype(np.float32))
    return batches


def _torch_outputs(wrapper: nn.Module, joints_2d: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = wrapper(torch.from_numpy(joints_2d))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy() for o in outs]


def _add_metadata(onnx_path: Path, metadata: dict) -> None:
    import onnx

    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key = runtime.METADATA_KEY
    entry.value = json.dumps(metadata, default=_jsonable, sort_keys=True)
    model.producer_name = "posestream engines.training.export"
    model.doc_string = (
        "posestream 2D-to-3D lifter: joints_2d (B,17,2) codec-normalised -> joints_3d (B,17,3) "
        "root-relative, camera axes, codec units. Metadata key 'posestream'."
    )
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"the exported ONNX model fails onnx.checker: {err}") from err
    onnx.save(model, str(onnx_path))


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    batch_max: int = DEFAULT_BATCH_MAX,
    atol: float = DEFAULT_ATOL,
    tensorrt: bool = True,
) -> ExportResult:
    """Export `checkpoint` to `out_dir`/lifter.onnx, check it, and build a TensorRT plan if possible.

    Raises ExportError when the checkpoint is unusable or a check fails (the file is then not
    written, or an existing engine is left as it was).
    """
    if batch_max < 1:
        raise ExportError(f"--batch-max must be >= 1, got {batch_max}")
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir)
    ckpt = load_checkpoint(checkpoint)
    try:
        model = build_lifter(**ckpt["model_config"])
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ExportError(
            f"checkpoint {checkpoint}: the weights do not fit build_lifter(**model_config) "
            f"({err}); was it written by a different version of engines.training.models?"
        ) from err
    model.eval()
    try:
        codec = Codec.from_metadata(ckpt["codec"])
    except ValueError as err:
        raise ExportError(f"checkpoint {checkpoint}: bad codec metadata ({err})") from err

    training = ckpt.get("training", {})
    fps = training.get("config", {}).get("fps") if getattr(model, "receptive_field", 1) > 1 else None
    return export_model(
        model, codec, out_dir, model_config=ckpt["model_config"], training=training,
        step=ckpt.get("step"), source=checkpoint.name, batch_max=batch_max, atol=atol,
        tensorrt=tensorrt, fps=fps,
    )


def export_model(
    model: nn.Module,
    codec: Codec,
    out_dir: str | Path,
    model_config: dict,
    training: dict | None = None,
    step: int | None = None,
    source: str = "",
    batch_max: int = DEFAULT_BATCH_MAX,
    atol: float = DEFAULT_ATOL,
    tensorrt: bool = True,
    fps: float | None = None,
) -> ExportResult:
    """Export an in-memory lifter (eval mode is set here) to `out_dir`/lifter.onnx and check it.

    A temporal lifter (`receptive_field` F > 1, `causal`) takes (B, F, 17, 2) windows; `fps`
    (the rate it was trained at, which the windows must be sampled at) is then required and
    written to the metadata with `causal`.

    model: forward(joints_2d (B, 17, 2)) -> joints_3d (B, 17, 3), or a dict holding
    "joints_3d" and extra outputs (e.g. Li 2020's root branch), each exported under its key.
    model_config, training, step, source: recorded in the metadata.
    """
    if batch_max < 1:
        raise ExportError(f"--batch-max must be >= 1, got {batch_max}")
    out_dir = Path(out_dir)
    model.eval()
    receptive_field = int(getattr(model, "receptive_field", 1))
    if receptive_field > 1 and not (fps is not None and fps > 0):
        raise ExportError(f"a temporal lifter (receptive field {receptive_field}) needs the frame "
                          f"rate it was trained at (fps > 0), got {fps!r}")
    output_names, keys = output_names_of(model)
    wrapper = _NamedOutputs(model, keys).eval()
    engine_id = weights_sha256(model.state_dict())[:12]
    metadata = {
        "format_version": METADATA_FORMAT_VERSION,
        "engine_id": engine_id,
        "codec": codec.to_metadata(),
        "joints": list(JOINT_NAMES),
        "receptive_field": receptive_field,
        "model_config": model_config,
        "training": training or {},
        "step": step,
        "inputs": {runtime.INPUT_NAME: ["batch", *runtime.input_shape(receptive_field)]},
        "outputs": output_names,
        "export": {
            "opset": OPSET, "torch": torch.__version__, "source": source,
            "batch_max": batch_max,
        },
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    final_path = out_dir / ENGINE_FILE_NAME
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=".lifter.", suffix=".onnx")
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        if receptive_field > 1:
            metadata["fps"] = float(fps)
            metadata["causal"] = bool(getattr(model, "causal", False))
        dummy = torch.from_numpy(check_inputs(codec, 2, frames=receptive_field)[-1])  # batch 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks in forward
            # dynamo=False on purpose: the TorchScript exporter handles this MLP with onnx 1.17
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                wrapper, (dummy,), str(tmp_path),
                input_names=[runtime.INPUT_NAME], output_names=list(output_names),
                dynamic_axes={name: {0: "batch"} for name in (runtime.INPUT_NAME, *output_names)},
                opset_version=OPSET, do_constant_folding=True, dynamo=False,
            )
        _add_metadata(tmp_path, metadata)
        max_diff = _compare_with_torch(tmp_path, wrapper, output_names, codec, batch_max, atol)
        metadata["export"]["max_abs_diff"] = max_diff
        _add_metadata(tmp_path, metadata)
        runtime.load_engine(tmp_path, backend="onnxruntime-cpu")  # the runtime's own checks
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp made it private; an engine is shared
        os.replace(tmp_path, final_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    logger.info("wrote %s (engine %s, outputs %s, ONNX Runtime vs torch max |diff| %.2e)",
                final_path, engine_id, list(output_names), max_diff)

    plan_path, skipped = _tensorrt_plan(final_path, batch_max, out_dir) if tensorrt else (None, None)
    return ExportResult(final_path, engine_id, output_names, max_diff, plan_path, metadata, skipped)


def _tensorrt_plan(onnx_path: Path, batch_max: int, out_dir: Path) -> tuple[Path | None, str | None]:
    """Build the TensorRT plan beside the checked ONNX file: (plan path, None), or (None, why
    not). Never raises: the ONNX engine is written and good whatever TensorRT makes of it
    (the runtime then runs it on ONNX Runtime, or builds a plan itself)."""
    reason = tensorrt_backend.unavailable_reason()
    if reason is not None:
        logger.info("skipped the TensorRT plan: %s", reason)
        return None, reason
    try:
        _, plan_path = tensorrt_backend.load_or_build_plan(onnx_path, batch_max, cache_dir=out_dir)
    except Exception as err:  # TensorRTError, CUDA errors, a parser that rejects an operator
        reason = f"TensorRT could not build a plan ({type(err).__name__}: {err})"
        logger.warning("%s; kept %s, which runs on ONNX Runtime", reason, onnx_path)
        return None, reason
    logger.info("wrote TensorRT plan %s", plan_path)
    return plan_path, None


def _compare_with_torch(
    onnx_path: Path, wrapper: nn.Module, output_names: tuple[str, ...], codec: Codec,
    batch_max: int, atol: float,
) -> float:
    """Max |ONNX Runtime - torch| over `check_inputs`; ExportError above `atol`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # small checks; leave the other cores alone
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    worst = 0.0
    frames = int(getattr(wrapper.model, "receptive_field", 1))
    for joints_2d in check_inputs(codec, batch_max, frames=frames):
        got = session.run(list(output_names), {runtime.INPUT_NAME: joints_2d})
        want = _torch_outputs(wrapper, joints_2d)
        for name, g, w in zip(output_names, got, want):
            if g.shape != w.shape:
                raise ExportError(f"ONNX output {name} has shape {g.shape} at batch {len(joints_2d)}, torch {w.shape}")
            diff = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64))))
            worst = max(worst, diff)
            if not diff <= atol:
                raise ExportError(
                    f"ONNX Runtime output {name} differs from torch by {diff:.3g} > {atol:g} at "
                    f"batch {len(joints_2d)}; the export is wrong, not kept"
                )
    return worst


# --- CLI ------------------------------------------------------------------------------------------

def build_arg_parser(prog: str = "python -m engines.training.export") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export a trained lifter checkpoint (engines.training.train) to DIR/lifter.onnx with "
        "its codec and training summary as metadata; checks it against torch, and builds a "
        "TensorRT plan when tensorrt and a GPU are present.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint .pt from engines.training.train")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created); gets lifter.onnx")
    parser.add_argument("--batch-max", type=int, default=DEFAULT_BATCH_MAX,
                        help="largest batch checked and built into the TensorRT profile (default %(default)s)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help="max allowed |ONNX Runtime - torch| in codec units (default %(default)g)")
    parser.add_argument("--no-tensorrt", action="store_true", help="do not build a TensorRT plan")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m engines.training.export") -> int:
    args = build_arg_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        result = export_checkpoint(args.checkpoint, args.out, args.batch_max, args.atol,
                                   tensorrt=not args.no_tensorrt)
    except (ExportError, runtime.EngineError) as err:
        logger.error("%s", err)
        return 1
    sys.stdout.write(json.dumps({
        "onnx": str(result.onnx_path), "engine_id": result.engine_id,
        "outputs": list(result.output_names), "max_abs_diff": result.max_abs_diff,
        "tensorrt_plan": str(result.plan_path) if result.plan_path else None,
        "tensorrt_skipped": result.plan_skipped,
    }) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
