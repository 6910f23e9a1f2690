"""The lifter engine per backend, and the numba kernels around it, per call.

    python -m bench.lifter [--engine PATH] [--checkpoint CKPT] [--batch 64] [--json OUT]

Rows:
- torch eager (reference): `engines.training.models.build_lifter(**model_config)` with the checkpoint's
  weights when `--checkpoint` is given, else the engine's architecture with fresh weights (same
  arithmetic, so the same cost);
- ONNX Runtime CPU through `engines.runtime.engine.load_engine` (the code the lift stage runs) with one
  intra-op thread (the pipeline's setting) and with one per core;
- int8: the same engine quantized with ONNX Runtime's dynamic quantization (weights int8);
- TensorRT when `engines.runtime.engine.available_backends()` says it is usable here.
Each at batch 1 and `--batch`, hot (back to back) and paced at 30 fps (a sleep of one frame
interval between calls: how the pipeline calls it, and slower, since caches and clocks cool).

Then the kernels the lift and smooth stages run per frame: `engines.runtime.reproject.fit_translation`
and the One Euro filter of `stages/smooth.py`, per call, with their first-call cost in a fresh
process (compile with an empty numba cache, and load from the cache), and the whole
`LiftStage.process` per frame. Without `--engine` and with no default engine installed yet,
a throw-away engine of the trainer's default architecture is exported to a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench import report
from engines.runtime import engine as runtime
from engines.runtime.skeleton import NUM_JOINTS

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
#: the trainer's default architecture (engines/training/train.py), used for a throw-away engine
DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "num_joints": NUM_JOINTS, "width": 512, "blocks": 2, "dropout": 0.25, "batch_norm": True,
    "head": "depth", "depth_offset": 10.0,
}
PACED_FPS = 30.0


# --------------------------------------------------------------------------- timing
def time_calls(fn: Callable[[], Any], calls: int, pace_s: float = 0.0,
               warmup: int = 20) -> dict[str, float]:
    """Call `fn` `warmup` times untimed, then `calls` times timed; summary in ms. With pace_s,
    sleep that long between calls (the idle gap between camera frames)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(calls):
        if pace_s:
            time.sleep(pace_s)
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return report.summarize(samples)


def pose_inputs(codec: Any, batch: int, seed: int = 0, frames: int = 1) -> np.ndarray:
    """(batch, 17, 2) float32 codec-normalised 2D poses: a standing person in a 640x480 image
    with a few pixels of noise, encoded with the engine's codec; with frames F > 1 (a temporal
    engine) (batch, F, 17, 2) windows of such frames, each encoded on its own."""
    from stages.lift import _T_POSE_PX

    rng = np.random.default_rng(seed)
    px = _T_POSE_PX[None] + rng.normal(0, 3.0, (batch * frames, NUM_JOINTS, 2))
    enc = codec.encode(px, 554.0, 554.0, 320.0, 240.0).astype(np.float32)
    return enc if frames == 1 else enc.reshape(batch, frames, NUM_JOINTS, 2)


# --------------------------------------------------------------------------- engines
@contextlib.contextmanager
def engine_file(path: str | None) -> Iterator[Path]:
    """The engine to measure: `path`, else the default engine, else a throw-away export of the
    trainer's default architecture (fresh weights) in a temporary folder."""
    if path is not None:
        yield runtime.resolve_engine_path(path)  # a path, or a shipped engine's name
        return
    if runtime.DEFAULT_ENGINE_PATH.is_file():
        yield runtime.DEFAULT_ENGINE_PATH
        return
    import torch

    from engines.runtime.codec import Codec
    from engines.training.export import export_model
    from engines.training.mocap import CANONICAL_BONE_LENGTHS_MM
    from engines.training.models import build_lifter

    log.warning("no engine at %s: measuring a throw-away export of the default architecture",
                runtime.DEFAULT_ENGINE_PATH)
    torch.manual_seed(0)
    model = build_lifter(**DEFAULT_MODEL_CONFIG)
    codec = Codec(tuple(float(x) / 1000 for x in CANONICAL_BONE_LENGTHS_MM))
    with tempfile.TemporaryDirectory(prefix="posestream-bench-engine-") as tmp:
        result = export_model(model, codec, tmp, DEFAULT_MODEL_CONFIG, source="bench",
                              tensorrt=False)
        yield result.onnx_path


def quantized_copy(path: Path, out_dir: Path) -> Path | None:
    """An int8 (dynamic quantization, weights int8) copy of the engine with its metadata, or
    None if ONNX Runtime's quantizer cannot handle it."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = out_dir / "lifter.int8.onnx"
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8)
        src, dst = onnx.load(str(path)), onnx.load(str(out))
        del dst.metadata_props[:]
        dst.metadata_props.extend(src.metadata_props)
        onnx.save(dst, str(out))
        return out
    except Exception as exc:  # the quantizer raises many kinds; the row is then left out
        log.warning("int8 quantization failed, row left out: %s", exc)
        return None


def torch_reference(engine: runtime.Engine, checkpoint: str | None) -> Callable[[np.ndarray], Any]:
    """The engine's network in torch eager mode (CPU, no grad); checkpoint weights if given."""
    import torch

    from engines.training.models import build_lifter

    if checkpoint is not None:
        from engines.training.export import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        model = build_lifter(**ckpt["model_config"])
        model.load_state_dict(ckpt["state_dict"])
    else:
        model = build_lifter(**engine.metadata["model_config"])
    model.eval()

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run


def bench_engines(engine_path: Path, checkpoint: str | None, batch: int, calls: int,
                  paced_calls: int, backends: list[str]) -> list[dict[str, Any]]:
    """One row per backend x batch x mode (hot / paced)."""
    import torch

    rows: list[dict[str, Any]] = []
    cores = os.cpu_count() or 1
    base = runtime.load_engine(engine_path, backend="onnxruntime-cpu")
    candidates: list[tuple[str, Callable[[], Callable[[np.ndarray], Any]]]] = []
    torch_threads = torch.get_num_threads()
    if "torch" in backends:
        candidates.append((f"torch eager ({torch_threads} threads)",
                           lambda: torch_reference(base, checkpoint)))

    def ort(path: Path, threads: int) -> Callable[[], Callable[[np.ndarray], Any]]:
        def make() -> Callable[[np.ndarray], Any]:
            eng = runtime.load_engine(path, backend="onnxruntime-cpu",
                                      options=runtime.EngineOptions(intra_op_num_threads=threads))
            return lambda x: eng.run({runtime.INPUT_NAME: x})
        return make

    if "onnxruntime" in backends:
        candidates.append(("onnxruntime-cpu 1 thread", ort(engine_path, 1)))
        if cores > 1:
            candidates.append((f"onnxruntime-cpu {cores} threads", ort(engine_path, cores)))
    tmp = tempfile.TemporaryDirectory(prefix="posestream-bench-int8-")
    try:
        if "int8" in backends:
            q = quantized_copy(engine_path, Path(tmp.name))
            if q is not None:
                candidates.append(("onnxruntime-cpu int8 1 thread", ort(q, 1)))
        status = runtime.available_backends()
        if "tensorrt" in backends:
            if status["tensorrt"] is None:
                def trt() -> Callable[[np.ndarray], Any]:
                    eng = runtime.load_engine(engine_path, backend="tensorrt")
                    return lambda x: eng.run({runtime.INPUT_NAME: x})
                candidates.append(("tensorrt", trt))
            else:
                rows.append({"backend": "tensorrt", "skipped": status["tensorrt"]})
        frames = base.receptive_field
        check = pose_inputs(base.codec, batch, seed=1, frames=frames)
        reference = base.run({runtime.INPUT_NAME: check})[runtime.OUTPUT_NAME]
        for label, make in candidates:
            fn = make()
            got = fn(check)
            got = got[runtime.OUTPUT_NAME] if isinstance(got, dict) else got
            got = got.numpy() if hasattr(got, "numpy") else got
            # how far this backend's output is from the fp32 ONNX Runtime engine, codec units
            # (head-to-root ~ 1): a quantized or reduced-precision row must stay accurate.
            # torch without --checkpoint has fresh weights: nothing to compare.
            fresh = label.startswith("torch") and checkpoint is None
            diff = float("nan") if fresh else float(
                np.max(np.abs(np.asarray(got, np.float64) - reference)))
            for b in (1, batch):
                x = pose_inputs(base.codec, b, frames=frames)
                hot = time_calls(lambda: fn(x), calls)
                paced = time_calls(lambda: fn(x), paced_calls, pace_s=1.0 / PACED_FPS, warmup=3)
                rows.append({"backend": label, "batch": b, "frames": frames, "hot": hot,
                             "paced_30fps": paced, "us_per_pose_hot": 1000.0 * hot["p50"] / b,
                             "max_abs_diff_vs_fp32": diff})
    finally:
        tmp.cleanup()
    return rows


# --------------------------------------------------------------------------- kernels
_FIRST_CALL = r"""
import json, sys, time
import numpy as np
t0 = time.perf_counter()
from engines.runtime.reproject import fit_translation
from stages.smooth import OneEuroFilter
t1 = time.perf_counter()
from stages.lift import _T_POSE_PX
rel = (_T_POSE_PX - _T_POSE_PX[0]) / 500.0
rel = np.concatenate([rel, np.zeros((17, 1))], axis=1)
fit_translation(rel, _T_POSE_PX, np.ones(17), 554.0, 554.0, 320.0, 240.0)
t2 = time.perf_counter()
f = OneEuroFilter(); f.filter(np.zeros((17, 3)), 0.0); f.filter(np.ones((17, 3)), 0.033)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "fit_translation_first_s": t2 - t1,
                  "one_euro_first_s": t3 - t2}))
"""


def first_call_costs() -> dict[str, Any]:
    """First-call cost of the numba kernels in a fresh process: with an empty numba cache
    (compile) and with the cache the first run left (what a stage pays at each start)."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="posestream-bench-numba-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache,
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        for label in ("compile (empty cache)", "from numba's cache"):
            done = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, cwd=str(REPO),
                                  capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"first-call probe failed:\n{done.stderr[-2000:]}")
            out[label] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def bench_kernels(calls: int, paced_calls: int, engine_path: Path) -> list[dict[str, Any]]:
    """Per-call cost of the numba kernels and of the whole LiftStage.process (one frame)."""
    from engines.runtime.reproject import fit_translation
    from pipeline.config import LiftConfig
    from pipeline.schema import Keypoints2D, Person2D
    from stages.lift import _T_POSE_PX, LiftStage
    from stages.smooth import OneEuroFilter, one_euro_step

    rows = []
    lift = LiftStage(LiftConfig(engine_path=str(engine_path), backend="onnxruntime"))
    lift.open()
    try:
        frames = lift.engine.receptive_field   # a temporal engine: the T pose held F frames
        pose = _T_POSE_PX[None] if frames == 1 else np.repeat(_T_POSE_PX[None, None], frames, 1)
        rel = lift._lift_rel_m(pose, lift.intrinsics_for((640, 480)))[0]
        w = np.ones(NUM_JOINTS)
        rng = np.random.default_rng(0)
        poses = [rel + rng.normal(0, 0.01, rel.shape) for _ in range(16)]
        filt = OneEuroFilter()
        clock = [0.0]

        def fit() -> Any:
            return fit_translation(poses[int(clock[0] * 30) % 16], _T_POSE_PX, w,
                                   554.0, 554.0, 320.0, 240.0)

        def euro() -> Any:
            clock[0] += 1 / 30
            return filt.filter(poses[int(clock[0] * 30) % 16], clock[0])

        x = np.zeros(NUM_JOINTS * 3)
        state = [np.zeros(NUM_JOINTS * 3) for _ in range(3)]

        def euro_kernel() -> None:
            one_euro_step(x, 1 / 30, state[0], state[1], state[2], 0.1, 40.0, 1.0)

        person = (Person2D(track_id=1, joints_2d_px=_T_POSE_PX.astype(np.float32),
                           confidence=np.full(NUM_JOINTS, 0.9, np.float32)),)
        frame = [0]

        def lift_one() -> Any:
            # a new frame 1/30 s after the last (a temporal engine's history moves on)
            frame[0] += 1
            return lift.process(Keypoints2D(frame_id=frame[0], t_capture_ns=frame[0] * 33_333_333,
                                            image_size=(640, 480), people=person))
        for label, fn in (("reproject.fit_translation", fit),
                          ("OneEuroFilter.filter (17x3)", euro),
                          ("smooth.one_euro_step kernel (51)", euro_kernel),
                          ("LiftStage.process (codec+engine+fit)", lift_one)):
            rows.append({"kernel": label, "hot": time_calls(fn, calls),
                         "paced_30fps": time_calls(fn, paced_calls, 1.0 / PACED_FPS, warmup=3)})
    finally:
        lift.close()
    return rows


# --------------------------------------------------------------------------- CLI
def run(engine: str | None = None, checkpoint: str | None = None, batch: int = 64,
        calls: int = 2000, paced_calls: int = 60,
        backends: tuple[str, ...] = ("torch", "onnxruntime", "int8", "tensorrt"),
        first_call: bool = True) -> dict[str, Any]:
    """Every figure of this benchmark as one dict (see the module docstring)."""
    with engine_file(engine) as path:
        eng = runtime.load_engine(path, backend="onnxruntime-cpu")
        out: dict[str, Any] = {
            "engine": {"path": str(path), "engine_id": eng.engine_id,
                       "model_config": eng.metadata.get("model_config"),
                       "receptive_field": eng.receptive_field, "fps": eng.fps,
                       "size_bytes": path.stat().st_size},
            "engines": bench_engines(path, checkpoint, batch, calls, paced_calls, list(backends)),
            "kernels": bench_kernels(calls, paced_calls, path),
        }
    if first_call:
        out["first_call"] = first_call_costs()
    out["machine"] = report.machine_info()
    return out


def print_tables(out: dict[str, Any]) -> None:
    rows = []
    for r in out["engines"]:
        if "skipped" in r:
            rows.append([r["backend"], "-", "-", "-", "-", "-", "-", "-"])
            continue
        rows.append([r["backend"], r["batch"], r["hot"]["p50"], r["hot"]["p99"],
                     r["paced_30fps"]["p50"], r["paced_30fps"]["p99"], r["us_per_pose_hot"],
                     f"{r['max_abs_diff_vs_fp32']:.1e}"
                     if r["max_abs_diff_vs_fp32"] == r["max_abs_diff_vs_fp32"] else "-"])
    print(f"lifter engine {out['engine']['engine_id']} ({out['engine']['model_config']}, "
          f"{out['engine'].get('receptive_field', 1)} frame(s) per pose), "
          f"load {out['machine']['loadavg']}")
    print(report.table(["backend", "batch", "hot p50 ms", "hot p99 ms", "30 fps p50 ms",
                        "30 fps p99 ms", "us/pose hot", "max diff vs fp32"], rows, 3))
    for r in out["engines"]:
        if "skipped" in r:
            print(f"  {r['backend']}: skipped: {r['skipped']}")
    print()
    print(report.table(["kernel, per call", "hot p50 ms", "hot p99 ms", "30 fps p50 ms",
                        "30 fps p99 ms"],
                       [[k["kernel"], k["hot"]["p50"], k["hot"]["p99"], k["paced_30fps"]["p50"],
                         k["paced_30fps"]["p99"]] for k in out["kernels"]], 3))
    if "first_call" in out:
        print()
        print(report.table(
            ["first call in a fresh process, s", "import", "fit_translation", "One Euro"],
            [[k, v["import_s"], v["fit_translation_first_s"], v["one_euro_first_s"]]
             for k, v in out["first_call"].items()], 3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lifter",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--engine", help="engine file, or a shipped engine by name (default, "
                        "temporal); default engines/default/lifter.onnx")
    parser.add_argument("--checkpoint", help="trainer checkpoint for the torch reference")
    parser.add_argument("--batch", type=int, default=64, help="the larger batch (default 64)")
    parser.add_argument("--calls", type=int, default=2000, help="hot calls per row")
    parser.add_argument("--paced-calls", type=int, default=60, help="paced calls per row")
    parser.add_argument("--no-first-call", action="store_true",
                        help="skip the fresh-process compile probe")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = run(args.engine, args.checkpoint, args.batch, args.calls, args.paced_calls,
              first_call=not args.no_first_call)
    print_tables(out)
    if args.json:
        report.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
