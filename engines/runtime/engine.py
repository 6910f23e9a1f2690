"""Load an exported lifter engine and run it: one interface over TensorRT and ONNX Runtime.

    engine = load_engine()                       # engines/default/lifter.onnx, best backend
    enc = engine.codec.encode_full(joints_2d_px, fx, fy, cx, cy)  # (B, 17, 2) pixels in
    out = engine.run({"joints_2d": enc.joints_2d_norm})  # (B, 17, 2) float32, codec units
    # a temporal engine (engine.receptive_field F > 1) takes (B, F, 17, 2) instead: the last F
    # frames of one person at engine.fps, oldest first, each encoded on its own
    joints_3d_norm = out["joints_3d"]  # (B, 17, 3) float32, root-relative, virtual-camera axes
    joints_3d_rel_m = engine.codec.to_metric(
        joints_3d_norm, height_m, rotation_to_camera=enc.rotation_to_camera)  # metres, camera axes

The engine file is the ONNX model `engines.training.export` writes (docs/DESIGN.md, "Engine file"): the
weights plus JSON metadata under the `metadata_props` key "posestream" (codec, joint names,
receptive field, model config, training summary, engine id; a temporal engine also `fps` and
`causal`). Nothing else is needed.

Backends, in the order `backend="auto"` tries them:
- "tensorrt": the `tensorrt` module imports and a CUDA GPU is present (engines/runtime/tensorrt_backend.py;
  plans are built once and cached).
- "onnxruntime-cuda": ONNX Runtime with CUDAExecutionProvider.
- "onnxruntime-cpu": ONNX Runtime on the CPU; always there.
"onnxruntime" picks the CUDA provider when present, else the CPU.

Runtime module: must not import torch, even indirectly (a torch import costs ~1.5 s per process).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engines.runtime.skeleton import JOINT_NAMES, NUM_JOINTS

logger = logging.getLogger(__name__)

DEFAULT_ENGINE_PATH: Path = Path(__file__).resolve().parents[1] / "default" / "lifter.onnx"
#: The opt-in causal temporal engine (engines/temporal/MODEL_CARD.md).
TEMPORAL_ENGINE_PATH: Path = Path(__file__).resolve().parents[1] / "temporal" / "lifter.onnx"
#: Names `load_engine` (and so every `--engine`) accepts for the shipped engines.
SHIPPED_ENGINES: dict[str, Path] = {"default": DEFAULT_ENGINE_PATH, "temporal": TEMPORAL_ENGINE_PATH}
METADATA_KEY: str = "posestream"
INPUT_NAME: str = "joints_2d"
OUTPUT_NAME: str = "joints_3d"
BACKENDS: tuple[str, ...] = ("tensorrt", "onnxruntime-cuda", "onnxruntime-cpu")
#: Accepted by `load_engine(backend=...)` besides the names in BACKENDS.
BACKEND_ALIASES: tuple[str, ...] = ("auto", "onnxruntime")
#: Keys every engine's metadata must have (docs/DESIGN.md).
REQUIRED_METADATA: tuple[str, ...] = ("codec", "joints", "receptive_field", "model_config", "engine_id")

_REEXPORT = "re-export it with `python -m engines.training.export --checkpoint CKPT --out DIR`"


class EngineError(RuntimeError):
    """An engine file cannot be used (missing, corrupt, not ours) or a backend is unavailable.

    The message names the file and says what to do.
    """


@dataclass(frozen=True)
class EngineOptions:
    """How to run an engine; the defaults suit the live pipeline (batch 1, lowest latency)."""

    #: ONNX Runtime CPU threads inside one operator. 1 by default: at batch 1 the lifter is a few
    #: small matrix products (~0.1 ms), where waking and joining a thread pool costs more than it
    #: saves, and the pipeline's other processes share the same cores. Raise it for big batches.
    intra_op_num_threads: int = 1
    #: Largest batch a TensorRT plan is built for (its optimisation profile spans 1..this).
    trt_batch_max: int = 64
    #: Where TensorRT plans are read and built; None: a plan for this GPU found beside the ONNX
    #: file (`engines.training.export` writes one there) is used, else one is built into
    #: ~/.cache/posestream ($XDG_CACHE_HOME/posestream); the runtime never writes into an
    #: engine's folder. A given folder is used for both.
    plan_cache_dir: Path | None = None


class _Session(Protocol):
    """What a backend provides: named float32 inputs in, named outputs out."""

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class _OrtSession:
    """ONNX Runtime behind the `_Session` interface."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self._session.run(self.output_names, inputs)))


class Engine:
    """A loaded lifter engine. Build with `load_engine`.

    Attributes: `path` (Path of the ONNX file), `backend` (one of BACKENDS), `metadata` (dict,
    the parsed "posestream" JSON), `engine_id` (12 hex), `codec` (`engines.runtime.codec.Codec`),
    `receptive_field` (frames the lifter needs, 1 for a single-frame lifter), `fps` (the rate
    those frames must be sampled at; None for a single-frame lifter), `causal` (True when the
    lifter uses past frames only: what a live stage can serve), `input_shape` ((F, 17, 2) or
    (17, 2) after the batch axis), `input_names`, `output_names`.
    """

    def __init__(
        self, path: Path, backend: str, metadata: dict, session: _Session,
        input_names: list[str], output_names: list[str],
    ) -> None:
        self.path = path
        self.backend = backend
        self.metadata = metadata
        self.engine_id: str = metadata["engine_id"]
        self.receptive_field: int = int(metadata["receptive_field"])
        self.fps: float | None = (float(metadata["fps"]) if self.receptive_field > 1 else
                                  (float(metadata["fps"]) if metadata.get("fps") else None))
        self.causal: bool = bool(metadata.get("causal", True))
        self.input_shape: tuple[int, ...] = input_shape(self.receptive_field)
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self._session = session
        self._codec = None

    @property
    def codec(self):
        """`engines.runtime.codec.Codec` from the metadata (built on first use, checked at load)."""
        if self._codec is None:
            self._codec = _codec_from_metadata(self.path, self.metadata)
        return self._codec

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the lifter.

        inputs: {"joints_2d": (B, 17, 2) float32 codec-normalised 2D (`codec.encode`)}, or for
        a temporal engine (B, F, 17, 2): F = receptive_field frames at `fps`, oldest first, each
        frame encoded on its own; other dtypes are converted to float32. Returns {"joints_3d": (B, 17, 3) float32, root-relative,
        axes of the codec's virtual camera turned onto the root, codec units} plus any extra outputs the model was exported with.
        Raises ValueError for missing, unknown or wrongly shaped inputs.
        """
        if set(inputs) != set(self.input_names):
            raise ValueError(
                f"engine {self.path.name} takes inputs {self.input_names}, got {sorted(inputs)}"
            )
        feed = {}
        for name, value in inputs.items():
            arr = np.ascontiguousarray(value, dtype=np.float32)
            if arr.shape[1:] != self.input_shape or arr.shape[0] < 1:
                raise ValueError(
                    f"input {name!r} must be (B, {', '.join(map(str, self.input_shape))}) with "
                    f"B >= 1, got {arr.shape}"
                    + (f" (this engine lifts windows of {self.receptive_field} frames)"
                       if self.receptive_field > 1 else "")
                )
            feed[name] = arr
        return self._session.run(feed)

    def __repr__(self) -> str:
        return f"Engine({str(self.path)!r}, backend={self.backend!r}, engine_id={self.engine_id!r})"


def input_shape(receptive_field: int) -> tuple[int, ...]:
    """An engine's input shape after the batch axis: (17, 2), or (F, 17, 2) for F > 1."""
    if receptive_field > 1:
        return (int(receptive_field), NUM_JOINTS, 2)
    return (NUM_JOINTS, 2)


def available_backends() -> dict[str, str | None]:
    """{backend: None if usable here, else the reason it is not}, in `auto` order."""
    from engines.runtime import tensorrt_backend

    status: dict[str, str | None] = {"tensorrt": tensorrt_backend.unavailable_reason()}
    providers = _ort().get_available_providers()
    status["onnxruntime-cuda"] = (
        None if "CUDAExecutionProvider" in providers
        else f"ONNX Runtime has no CUDAExecutionProvider here (providers: {', '.join(providers)}); "
        "install onnxruntime-gpu on a machine with CUDA"
    )
    status["onnxruntime-cpu"] = None
    return status


def resolve_backend(backend: str) -> str:
    """The concrete backend for a requested name ("auto", "onnxruntime" or one of BACKENDS).

    Raises EngineError when the named backend is unavailable (saying why) or unknown.
    """
    if backend not in BACKENDS + BACKEND_ALIASES:
        raise EngineError(
            f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_ALIASES + BACKENDS)}"
        )
    status = available_backends()
    if backend == "auto":
        return next(name for name in BACKENDS if status[name] is None)
    if backend == "onnxruntime":
        return "onnxruntime-cuda" if status["onnxruntime-cuda"] is None else "onnxruntime-cpu"
    if status[backend] is not None:
        raise EngineError(
            f"backend {backend!r} is not available: {status[backend]}. "
            "Use --backend auto to pick the best available one."
        )
    return backend


def load_engine(
    path: str | Path | None = None, backend: str = "auto", options: EngineOptions | None = None
) -> Engine:
    """Load an engine file and prepare it on a backend.

    path: the ONNX file from `engines.training.export`, or a shipped engine's name
    (SHIPPED_ENGINES: "default", "temporal"); None loads DEFAULT_ENGINE_PATH.
    backend: "auto" (first available of BACKENDS), "onnxruntime", or one of BACKENDS.
    Raises EngineError naming the file when it is missing, empty, corrupt, lacks our metadata
    or has the wrong inputs/outputs, and when a forced backend is unavailable. Logs one INFO
    line naming the backend chosen.
    """
    options = options or EngineOptions()
    if options.intra_op_num_threads < 1:
        raise ValueError(f"intra_op_num_threads must be >= 1, got {options.intra_op_num_threads}")
    path = resolve_engine_path(path)
    _check_file(path)
    chosen = resolve_backend(backend)
    session = _ort_session_for(path, chosen, forced=backend == chosen, options=options)
    metadata = read_metadata_from_session(path, session)
    input_names, output_names = _check_signature(path, session, int(metadata["receptive_field"]))
    _codec_from_metadata(path, metadata)  # fail at load, not on the first frame

    runner: _Session | None = None
    if chosen == "tensorrt":
        runner = _tensorrt_session(path, options, forced=backend == "tensorrt")
        if runner is None:  # auto: TensorRT failed on this engine; best ONNX Runtime instead
            chosen = resolve_backend("onnxruntime")
            if chosen == "onnxruntime-cuda":
                session = _ort_session_for(path, chosen, forced=False, options=options)
    if chosen == "onnxruntime-cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        if backend == chosen:
            raise EngineError(
                f"ONNX Runtime could not start CUDA for {path} (providers in use: "
                f"{session.get_providers()}); check the CUDA/cuDNN install or use --backend auto"
            )
        logger.warning("ONNX Runtime's CUDA provider did not start for %s; using the CPU", path)
        chosen = "onnxruntime-cpu"
    if runner is None:
        runner = _OrtSession(session)
    logger.info(
        "lifter engine %s (id %s) runs on %s", path, metadata["engine_id"], chosen
    )
    return Engine(path, chosen, metadata, runner, input_names, output_names)


def read_metadata(path: str | Path) -> dict:
    """The parsed "posestream" metadata of an engine file, checked; EngineError if unusable."""
    path = Path(path)
    _check_file(path)
    session = _ort_session(path, ["CPUExecutionProvider"], EngineOptions())
    return read_metadata_from_session(path, session)


def read_metadata_from_session(path: Path, session: Any) -> dict:
    """Parse and check the "posestream" JSON of an open ONNX Runtime session of `path`."""
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise EngineError(
            f"{path} is an ONNX model but not a posestream engine: it has no {METADATA_KEY!r} "
            f"metadata (keys: {sorted(props) or 'none'}); {_REEXPORT}"
        )
    try:
        metadata = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise EngineError(f"{path}: its {METADATA_KEY!r} metadata is not valid JSON ({err}); {_REEXPORT}") from err
    if not isinstance(metadata, dict):
        raise EngineError(f"{path}: its {METADATA_KEY!r} metadata is not a JSON object; {_REEXPORT}")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise EngineError(f"{path}: engine metadata lacks {missing}; {_REEXPORT}")
    if tuple(metadata["joints"]) != JOINT_NAMES:
        raise EngineError(
            f"{path}: engine joints {metadata['joints']} differ from this code's skeleton "
            f"{list(JOINT_NAMES)}; retrain and export with this version of posestream"
        )
    if not (isinstance(metadata["engine_id"], str) and re.fullmatch(r"[0-9a-f]{12}", metadata["engine_id"])):
        raise EngineError(f"{path}: engine_id {metadata['engine_id']!r} is not 12 hex digits; {_REEXPORT}")
    rf = metadata["receptive_field"]
    if isinstance(rf, bool) or not isinstance(rf, int) or rf < 1:
        raise EngineError(f"{path}: receptive_field {rf!r} is not a frame count >= 1; {_REEXPORT}")
    if rf > 1:
        fps = metadata.get("fps")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000:
            raise EngineError(
                f"{path}: a temporal engine (receptive_field {rf}) must say the frame rate its "
                f"windows are sampled at (metadata 'fps' > 0), got {fps!r}; {_REEXPORT}")
        if not isinstance(metadata.get("causal"), bool):
            raise EngineError(
                f"{path}: a temporal engine must say whether it is causal (metadata 'causal' "
                f"true/false), got {metadata.get('causal')!r}; {_REEXPORT}")
    return metadata


# --- helpers ------------------------------------------------------------------------------------

def _ort():
    import onnxruntime

    return onnxruntime


def resolve_engine_path(path: str | Path | None) -> Path:
    """The engine file `path` names: None is the default engine; a shipped engine's name
    ("default", "temporal") is its file unless a file of that name exists here."""
    if path is None:
        return DEFAULT_ENGINE_PATH
    path = Path(path).expanduser()
    if str(path) in SHIPPED_ENGINES and not path.exists():
        return SHIPPED_ENGINES[str(path)]
    return path


def _check_file(path: Path) -> None:
    if not path.exists():
        hint = (
            f"the {path.parent.name} engine is missing from this checkout; restore "
            f"engines/{path.parent.name}/ "
            "(git checkout) or export one"
            if path in SHIPPED_ENGINES.values() else "check the path given with --engine "
            f"(or name a shipped engine: {', '.join(SHIPPED_ENGINES)})"
        )
        raise EngineError(
            f"engine file {path} not found: {hint}; an engine is made with "
            "`python -m engines.training.export --checkpoint CKPT --out DIR`"
        )
    if not path.is_file():
        raise EngineError(f"engine path {path} is not a file; pass the .onnx file itself")
    if path.stat().st_size == 0:
        raise EngineError(f"engine file {path} is empty (an interrupted copy or export?); {_REEXPORT}")


def _ort_session(path: Path, providers: list[str], options: EngineOptions):
    ort = _ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_num_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only; the providers' start-up chatter is not ours
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as err:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail...)
        raise EngineError(
            f"engine file {path} could not be loaded by ONNX Runtime: it is corrupt, truncated "
            f"or not an ONNX model ({type(err).__name__}: {err}); {_REEXPORT}"
        ) from err


def _ort_session_for(path: Path, backend: str, forced: bool, options: EngineOptions):
    """ONNX Runtime session for `backend` (the CPU one also serves metadata for TensorRT).

    If the CUDA provider fails to start and CUDA was not forced, warn and use the CPU; a file
    that is itself bad then fails on the CPU too, with the message about the file.
    """
    if backend != "onnxruntime-cuda":
        return _ort_session(path, ["CPUExecutionProvider"], options)
    try:
        return _ort_session(path, ["CUDAExecutionProvider", "CPUExecutionProvider"], options)
    except EngineError as err:
        if forced:
            raise
        logger.warning("ONNX Runtime with CUDA failed on %s (%s); trying the CPU", path, err)
        return _ort_session(path, ["CPUExecutionProvider"], options)


def _check_signature(path: Path, session: Any,
                     receptive_field: int = 1) -> tuple[list[str], list[str]]:
    """Inputs/outputs as DESIGN.md fixes them; EngineError naming what differs."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    input_names = [i.name for i in inputs]
    output_names = [o.name for o in outputs]
    if input_names != [INPUT_NAME]:
        raise EngineError(f"{path}: inputs are {input_names}, expected [{INPUT_NAME!r}]; {_REEXPORT}")
    if OUTPUT_NAME not in output_names:
        raise EngineError(f"{path}: outputs are {output_names}, expected {OUTPUT_NAME!r} among them; {_REEXPORT}")
    in_tail = list(input_shape(receptive_field))
    for arg, tail in ((inputs[0], in_tail), (outputs[output_names.index(OUTPUT_NAME)], [NUM_JOINTS, 3])):
        shape = list(arg.shape)
        if (arg.type != "tensor(float)" or len(shape) != len(tail) + 1 or shape[1:] != tail
                or isinstance(shape[0], int)):
            raise EngineError(
                f"{path}: {arg.name} is {arg.type} {shape}, expected float32 [batch, "
                f"{', '.join(map(str, tail))}] with a dynamic batch axis (metadata "
                f"receptive_field {receptive_field}); {_REEXPORT}"
            )
    return input_names, output_names


def _codec_from_metadata(path: Path, metadata: dict):
    from engines.runtime.codec import Codec

    try:
        return Codec.from_metadata(metadata["codec"])
    except ValueError as err:
        raise EngineError(f"{path}: bad codec metadata ({err}); {_REEXPORT}") from err


def _tensorrt_session(path: Path, options: EngineOptions, forced: bool) -> _Session | None:
    """A TensorRT session for `path`; on failure raise EngineError if forced, else warn, None."""
    from engines.runtime import tensorrt_backend

    try:
        return tensorrt_backend.TensorRTSession(
            path, batch_max=options.trt_batch_max, cache_dir=options.plan_cache_dir
        )
    except Exception as err:  # a TensorRT build or deserialise failure must not stop the pipeline
        if forced:
            raise EngineError(
                f"TensorRT could not run engine {path} ({type(err).__name__}: {err}); "
                "use --backend onnxruntime, or re-export the engine"
            ) from err
        logger.warning("TensorRT failed on %s (%s); falling back to ONNX Runtime", path, err)
        return None
