"""TensorRT backend: build a plan from the exported ONNX, cache it, run it (NVIDIA GPUs only).

Optional: needs `pip install .[tensorrt]` (tensorrt 10.x and cuda-python) and a CUDA GPU.
`unavailable_reason()` says why it cannot run here; `engines.runtime.engine` then falls back to
ONNX Runtime. Device memory and streams go through cuda-python's CUDA runtime bindings
(cudart), not torch: this is runtime code and must not import torch.

Plans are specific to the GPU model and the TensorRT version, so a plan is cached under a key
made of the GPU name, the TensorRT version, the ONNX file's sha256, the batch range and the
precision: `<onnx stem>.<key>.plan`. `engines.training.export` writes it beside the ONNX file; the runtime
uses a plan found there, else builds one into ~/.cache/posestream (or $XDG_CACHE_HOME/posestream).
Building takes seconds to a minute; loading a cached plan takes milliseconds.

Written against TensorRT 10's documented Python API (Builder, OnnxParser, IBuilderConfig,
build_serialized_network, Runtime.deserialize_cuda_engine, IExecutionContext.set_input_shape /
set_tensor_address / execute_async_v3). Only TensorRT 10.x is accepted (`version_problem`).
FP16 from 10.12 on, where weak typing is deprecated, the documented way: a strongly typed
network built from a float16 copy of the ONNX model with float32 inputs and outputs
(`fp16_onnx`); 10.0-10.11 set BuilderFlag.FP16. Our machines have no GPU:
tests/test_tensorrt.py runs the parts that need none (the float16 copy runs on ONNX Runtime's
CPU there) and skips the rest with the reason.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Workspace TensorRT may use while building, bytes. The lifter is a small MLP; 256 MiB is ample.
WORKSPACE_BYTES: int = 1 << 28
#: Batch size the optimisation profile is tuned for: the live pipeline lifts one pose at a time.
OPT_BATCH: int = 1
PLAN_SUFFIX: str = ".plan"
#: The TensorRT major version this backend is written and tested for (`pip install .[tensorrt]`).
SUPPORTED_MAJOR: int = 10


class TensorRTError(RuntimeError):
    """TensorRT or CUDA failed; the message says which call and what to try."""


# --- availability ---------------------------------------------------------------------------------

def _import_tensorrt():
    import tensorrt

    return tensorrt


def _import_cudart():
    """cuda-python's runtime bindings: `cuda.bindings.runtime` (12.6+), else `cuda.cudart`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def version_problem(version: str) -> str | None:
    """None when `version` (tensorrt.__version__) is a TensorRT this backend is written and
    tested for: 10.x (the extra pins 10.13). 11 removed `platform_has_fast_fp16` and the
    weak-typing `BuilderFlag.FP16` that 10.0-10.11 builds here use, and its runtime API has
    not been tried, so an 11.x is refused rather than run untested."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        return (f"tensorrt reports version {version!r}, not a TensorRT release number: "
                "pip install .[tensorrt] for the tested 10.13")
    major = int(match.group(1))
    if major < SUPPORTED_MAJOR:
        return (f"tensorrt {version} is too old; this backend needs TensorRT "
                f"{SUPPORTED_MAJOR}.x: pip install .[tensorrt]")
    if major > SUPPORTED_MAJOR:
        return (f"tensorrt {version} is newer than the {SUPPORTED_MAJOR}.x this backend is "
                "written and tested for (11 changed the builder API; weak typing is gone): "
                "pip install .[tensorrt] for the tested 10.13, or use --backend onnxruntime")
    return None


@functools.cache
def unavailable_reason() -> str | None:
    """None when TensorRT can run here; otherwise why not, for people (cached; `cache_clear()`)."""
    try:
        trt = _import_tensorrt()
    except ImportError as err:
        return (
            f"the tensorrt module is not installed ({err}); on a machine with an NVIDIA GPU "
            "install the extra: pip install .[tensorrt]"
        )
    problem = version_problem(str(getattr(trt, "__version__", "")))
    if problem is not None:
        logger.warning("TensorRT backend off: %s", problem)
        return problem
    try:
        cudart = _import_cudart()
    except ImportError as err:
        return f"cuda-python is not installed ({err}); pip install .[tensorrt]"
    try:
        count = _cuda(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    except TensorRTError as err:
        return f"no usable CUDA device ({err})"
    if count < 1:
        return "no CUDA GPU found"
    return None


def _cuda(cudart: Any, result: tuple, call: str) -> Any:
    """Unpack a cuda-python result tuple (err, *values); raise TensorRTError on an error code."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(err)
        raise TensorRTError(f"CUDA call {call} failed: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def gpu_name(device: int = 0) -> str:
    """Name of CUDA device `device`, e.g. "NVIDIA H100 80GB HBM3"."""
    cudart = _import_cudart()
    props = _cuda(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return str(name).strip()


# --- the plan cache ---------------------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plan_cache_key(gpu: str, trt_version: str, onnx_sha256: str, batch_max: int, fp16: bool) -> str:
    """File-name-safe key of one plan: everything a plan depends on.

    gpu: device name; trt_version: tensorrt.__version__; onnx_sha256: hex digest of the ONNX
    file; batch_max: top of the batch profile; fp16: precision. Example:
    "nvidia-h100-80gb-hbm3.trt10.13.3.9.1f2e3d4c5b6a7980.b64.fp16".
    """
    if not re.fullmatch(r"[0-9a-f]{16,64}", onnx_sha256):
        raise ValueError(f"onnx_sha256 must be a hex digest, got {onnx_sha256!r}")
    if batch_max < 1:
        raise ValueError(f"batch_max must be >= 1, got {batch_max}")
    gpu_slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") or "unknown-gpu"
    version = re.sub(r"[^0-9A-Za-z.]+", "-", str(trt_version))
    return f"{gpu_slug}.trt{version}.{onnx_sha256[:16]}.b{batch_max}.{'fp16' if fp16 else 'fp32'}"


def default_cache_dir() -> Path:
    """~/.cache/posestream, or $XDG_CACHE_HOME/posestream when set."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "posestream"


def plan_path(onnx_path: str | Path, key: str, cache_dir: str | Path | None = None,
              beside_ok: bool = True) -> Path:
    """Where the plan for `onnx_path` under `key` lives.

    cache_dir given: there (`engines.training.export` passes the engine's folder, so an exported engine
    can carry its plan). Else beside the ONNX file if a plan with this key is already there
    (and `beside_ok`: False once that plan failed to load), else `default_cache_dir()`: the
    runtime never writes into an engine's folder (it may be the repository's engines/default/,
    or another user's).
    """
    onnx_path = Path(onnx_path)
    name = f"{onnx_path.stem}.{key}{PLAN_SUFFIX}"
    if cache_dir is not None:
        return Path(cache_dir) / name
    beside = onnx_path.resolve().parent / name
    if beside_ok and beside.is_file():
        return beside
    return default_cache_dir() / name


def _write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a plan. mode: the
    file's permission bits (mkstemp makes it 0600; None keeps that)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- build ------------------------------------------------------------------------------------------

def _trt_logger(trt: Any):
    return trt.Logger(trt.Logger.WARNING)


#: From this TensorRT on, weak typing (BuilderFlag.FP16 and platform_has_fast_fp16) is
#: deprecated: precision comes from the network's own tensor types (a strongly typed network).
STRONG_TYPING_FROM: tuple[int, int] = (10, 12)
#: Compute capabilities with fast FP16 arithmetic (what platform_has_fast_fp16 answered):
#: 5.3, 6.0, 6.2 and 7.0 onwards.
_FAST_FP16_SM: tuple[tuple[int, int], ...] = ((5, 3), (6, 0), (6, 2))


def uses_strong_typing(trt_version: str) -> bool:
    """True when plans for this tensorrt.__version__ are built strongly typed (10.12+)."""
    match = re.match(r"(\d+)\.(\d+)", trt_version)
    return match is not None and (int(match.group(1)), int(match.group(2))) >= STRONG_TYPING_FROM


def gpu_has_fast_fp16(device: int = 0) -> bool:
    """Whether CUDA device `device` computes FP16 fast, from its compute capability."""
    cudart = _import_cudart()
    props = _cuda(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    sm = (int(props.major), int(props.minor))
    return sm >= (7, 0) or sm in _FAST_FP16_SM


def _default_fp16(trt: Any) -> bool:
    if uses_strong_typing(trt.__version__):
        return gpu_has_fast_fp16()
    return bool(getattr(trt.Builder(_trt_logger(trt)), "platform_has_fast_fp16", False))


def fp16_onnx(onnx_path: str | Path) -> bytes:
    """The ONNX model at `onnx_path` with its float32 compute in float16 and float32 inputs
    and outputs (a Cast after each input and before each output): what a strongly typed
    TensorRT network builds as FP16 (TensorRT 10.12+ takes precision from tensor types, and
    the FP16 builder flag is deprecated). Float32 initializers, Constant values and Casts to
    float become float16; integer tensors (shapes, indices) are left as they are. Raises
    TensorRTError when the result fails onnx.checker."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph

    def half(tensor):
        return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16),
                                       tensor.name)

    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(half(init))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" \
                    and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(half(attr.t))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16

    def rename(old: str, new: str, outputs: bool) -> None:
        for node in graph.node:
            names = node.output if outputs else node.input
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new

    head, tail = [], []
    for value in graph.input:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            rename(value.name, value.name + ".fp16", outputs=False)
            head.append(helper.make_node("Cast", [value.name], [value.name + ".fp16"],
                                         to=TensorProto.FLOAT16))
    for value in graph.output:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            rename(value.name, value.name + ".fp16", outputs=True)
            tail.append(helper.make_node("Cast", [value.name + ".fp16"], [value.name],
                                         to=TensorProto.FLOAT))
    nodes = head + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # float32 annotations of inner tensors would now be wrong
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # onnx raises ValidationError and InferenceError
        raise TensorRTError(f"{onnx_path}: the float16 copy for TensorRT fails onnx.checker "
                            f"({err}); build FP32 with fp16=False") from err
    return model.SerializeToString()


def build_plan(onnx_path: str | Path, batch_max: int, fp16: bool | None = None) -> tuple[bytes, bool]:
    """Build a serialized TensorRT plan from an ONNX file.

    The batch axis of every input gets one optimisation profile: min 1, opt OPT_BATCH, max
    batch_max. fp16: None uses FP16 when the GPU has fast FP16. TensorRT 10.12+ builds a
    strongly typed network, FP16 from `fp16_onnx` (the documented way since weak typing was
    deprecated); older 10.x sets BuilderFlag.FP16 on the ONNX file as it is.
    Returns (plan bytes, fp16 used). Raises TensorRTError with the parser's errors.
    """
    trt = _import_tensorrt()
    logger_trt = _trt_logger(trt)
    builder = trt.Builder(logger_trt)
    strong = uses_strong_typing(trt.__version__)
    if fp16 is None:
        fp16 = _default_fp16(trt)
    # TensorRT 10: explicit batch is the only mode; 10.12+: strongly typed
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger_trt)
    if strong and fp16:
        parsed = parser.parse(fp16_onnx(onnx_path), str(onnx_path))  # path: external data
    else:
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT could not parse {onnx_path}: {errors or 'no details'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16 and not strong:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise TensorRTError(
                f"{onnx_path}: input {tensor.name} has dynamic axes {shape} beyond the batch; "
                "re-export with python -m engines.training.export"
            )
        profile.set_shape(
            tensor.name, (1, *shape[1:]), (min(OPT_BATCH, batch_max), *shape[1:]), (batch_max, *shape[1:])
        )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(
            f"TensorRT failed to build a plan for {onnx_path} (see the TensorRT log above); "
            "try --backend onnxruntime"
        )
    return bytes(serialized), fp16


def store_plan(path: Path, plan: bytes, onnx_path: str | Path) -> None:
    """Write `plan` at `path` atomically with the ONNX file's permission bits, so whoever may
    read the engine may read its plan (another user, or a non-root runtime after a root
    export); an unreadable plan would cost every other reader a rebuild. Raises OSError."""
    _write_atomic(Path(path), plan, mode=stat.S_IMODE(os.stat(onnx_path).st_mode))


def load_or_build_plan(
    onnx_path: str | Path, batch_max: int = 64, cache_dir: str | Path | None = None,
    fp16: bool | None = None, rebuild: bool = False,
) -> tuple[bytes, Path]:
    """The plan for `onnx_path` on this GPU: read from the cache, or built and cached.

    rebuild: build even if a plan is cached (one that failed to load); without `cache_dir`
    the new plan goes to `default_cache_dir()`, never over a plan beside the ONNX file.
    Returns (plan bytes, path of the cached plan).
    """
    trt = _import_tensorrt()
    if fp16 is None:
        fp16 = _default_fp16(trt)
    key = plan_cache_key(gpu_name(), trt.__version__, file_sha256(onnx_path), batch_max, fp16)
    path = plan_path(onnx_path, key, cache_dir, beside_ok=not rebuild)
    if path.is_file() and not rebuild:
        logger.debug("TensorRT plan cache hit: %s", path)
        return path.read_bytes(), path
    logger.info("building TensorRT plan for %s (batch 1..%d, %s); cached at %s",
                onnx_path, batch_max, "FP16" if fp16 else "FP32", path)
    plan, _ = build_plan(onnx_path, batch_max, fp16)
    try:
        store_plan(path, plan, onnx_path)
    except OSError as err:  # a read-only cache costs a rebuild next time, nothing more
        logger.warning("could not cache the TensorRT plan at %s (%s)", path, err)
    return plan, path


# --- run --------------------------------------------------------------------------------------------

class TensorRTSession:
    """One deserialized plan with its execution context, device buffers and CUDA stream.

    `run(inputs: dict[str, ndarray]) -> dict[str, ndarray]`, batch 1..batch_max. Buffers are
    allocated once for batch_max; each call copies in, runs on the stream, copies out.
    """

    def __init__(
        self, onnx_path: str | Path, batch_max: int = 64, cache_dir: str | Path | None = None,
        fp16: bool | None = None,
    ) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise TensorRTError(f"TensorRT backend unavailable: {reason}")
        self._trt = trt = _import_tensorrt()
        self._cudart = cudart = _import_cudart()
        self.batch_max = batch_max
        self._buffers: dict[str, int] = {}
        self._stream = None
        plan, self.plan_path = load_or_build_plan(onnx_path, batch_max, cache_dir, fp16)
        self._logger = _trt_logger(trt)  # TensorRT keeps a raw pointer: it must outlive the runtime
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:  # a stale or damaged cached plan: rebuild once, into the
            # cache (cache_dir, or default_cache_dir(); never over a plan in the engine's folder)
            logger.warning("cached TensorRT plan %s did not load; rebuilding", self.plan_path)
            plan, self.plan_path = load_or_build_plan(onnx_path, batch_max, cache_dir, fp16, rebuild=True)
            self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise TensorRTError(f"TensorRT could not deserialize the plan built from {onnx_path}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._stream = _cuda(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        for name in names:
            shape = list(self._engine.get_tensor_shape(name))
            shape[0] = batch_max
            nbytes = int(np.prod(shape)) * self._dtypes[name].itemsize
            self._buffers[name] = _cuda(cudart, cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})")
            self._context.set_tensor_address(name, int(self._buffers[name]))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """inputs: {name: (B, ...) array}, 1 <= B <= batch_max; returns {output name: array}."""
        if getattr(self, "_context", None) is None:
            raise TensorRTError("this TensorRT session is closed")
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        keep_alive = []
        for name in self.input_names:
            arr = np.ascontiguousarray(inputs[name], dtype=self._dtypes[name])
            if not 1 <= arr.shape[0] <= self.batch_max:
                raise ValueError(
                    f"batch {arr.shape[0]} is outside this TensorRT plan's range 1..{self.batch_max}; "
                    "load the engine with a larger trt_batch_max"
                )
            if not self._context.set_input_shape(name, tuple(arr.shape)):
                raise ValueError(f"TensorRT rejected input shape {arr.shape} for {name}")
            keep_alive.append(arr)
            _cuda(cudart, cudart.cudaMemcpyAsync(self._buffers[name], arr.ctypes.data, arr.nbytes, h2d,
                                                 self._stream), "cudaMemcpyAsync(HtoD)")
        outputs = {
            name: np.empty(tuple(self._context.get_tensor_shape(name)), dtype=self._dtypes[name])
            for name in self.output_names
        }
        if not self._context.execute_async_v3(int(self._stream)):
            raise TensorRTError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        for name, out in outputs.items():
            _cuda(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name], out.nbytes, d2h,
                                                 self._stream), "cudaMemcpyAsync(DtoH)")
        _cuda(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        del keep_alive
        return outputs

    def close(self) -> None:
        """Free device buffers and the stream, then release the execution context, the
        engine and the runtime, in that order (each holds the one after it); idempotent, also
        on garbage collection. `run` after `close` raises TensorRTError."""
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamSynchronize(self._stream)  # nothing may still use the buffers
        for ptr in getattr(self, "_buffers", {}).values():
            cudart.cudaFree(ptr)
        self._buffers = {}
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = None
        self._engine = None
        self._runtime = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the CUDA bindings may be gone already
            pass
