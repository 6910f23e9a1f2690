"""Coverage-guided fuzzing (atheris, libFuzzer) of every decoder that reads outside bytes.

    python -m bench.fuzz all --runs 1000000          # each target in its own process
    python -m bench.fuzz schema --runs 200000        # one target (its libFuzzer log)
    python -m bench.fuzz shm,engine --runs 1000000   # some, as a table
    python -m bench.fuzz list

Needs the optional extra: pip install -e ".[fuzz]" (atheris, pinned). Not in CI; the smoke
run (tests/test_fuzz_targets.py) runs every target for a few thousand inputs.

Targets, and the only exception each may raise on bad input (anything else, or a hang, is
a crash; libFuzzer writes the input to crash-<sha1> in the working directory):
- schema: `pipeline.schema.decode(frames)` on 1 to 4 frames cut from the input: SchemaError.
- edge: an edge message of 1 to 5 frames put on a real socket (inproc) to a real
  `EdgeReceiver` with a shared-memory directory holding a real ring, and a credit of 1 to 4
  frames to a real `EdgeSender`: nothing may raise (malformed input is counted).
- shm: `RingReader.read(descriptor, parts)` against a real ring file: RingError.
- psrec: `pipeline.record.Recording(file)`, then every message decoded: RecordingError,
  SchemaError.
- calib: `engines.runtime.intrinsics.load_calibration(file)` (YAML, JSON, OpenCV
  FileStorage): CalibrationError.
- engine: the "posestream" metadata of an engine (the JSON string in its ONNX
  metadata_props), read by `read_metadata_from_session` and its codec built, as
  `load_engine` does: EngineError.
Seeds: a valid message, descriptor, recording, calibration file and engine metadata each,
so the mutations start from the real formats.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

TARGETS = ("schema", "edge", "shm", "psrec", "calib", "engine")
INSTRUMENT = ["pipeline", "engines.runtime"]


# --------------------------------------------------------------------------- the targets
class Targets:
    """Set-up once per process, then `one(name)(data)` per input."""

    def __init__(self, workdir: str) -> None:
        import numpy as np
        import zmq

        from pipeline import schema
        from pipeline.shm import FrameRing, RingReader
        from pipeline.transport import EdgeReceiver, EdgeSender

        self.np, self.zmq, self.schema = np, zmq, schema
        self.workdir = workdir
        self.ring_dir = os.path.join(workdir, "shm")
        os.makedirs(self.ring_dir, exist_ok=True)
        self.ring = FrameRing(self.ring_dir, prefix="fuzz")
        frame = schema.Frame(frame_id=1, t_capture_ns=2, image=np.zeros((120, 200, 3), np.uint8))
        self.frame_parts = [bytes(p) for p in schema.encode(frame)]
        self.descriptor, _, self.ring_parts = self.ring.put(self.frame_parts)
        self.ring_parts = [bytes(p) for p in self.ring_parts]
        self.reader = RingReader(self.ring_dir)
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.bind("inproc://fuzz-edge")
        self.rx = EdgeReceiver(self.ctx, "inproc://fuzz-edge", on_malformed=lambda why: None,
                               ring_dir=self.ring_dir)
        self.rx.request()
        self.peer = self.router.recv_multipart()[0]
        self.tx = EdgeSender(self.ctx, "inproc://fuzz-credit", "latest")
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.connect("inproc://fuzz-credit")
        self.file = os.path.join(workdir, "input")

    # seeds: valid inputs of each format, so mutations start from the real thing
    def seeds(self, name: str) -> list[bytes]:
        import json

        if name in ("schema", "edge"):
            pose = _valid_pose(self.schema, self.np)
            return [_join([bytes(p) for p in self.schema.encode(pose)]),
                    _join([b"D", *self.frame_parts]),
                    _join([b"S", self.descriptor, *self.ring_parts]), _join([b"E"])]
        if name == "shm":
            return [_join([self.descriptor, *self.ring_parts])]
        if name == "psrec":
            from pipeline.record import RecordingWriter

            path = os.path.join(self.workdir, "seed.psrec")
            writer = RecordingWriter(path, "tcp://127.0.0.1:5556")
            pose = _valid_pose(self.schema, self.np)
            writer.write(time.monotonic_ns(), [b"pose3d", *[bytes(p) for p in
                                                           self.schema.encode(pose)]])
            writer.close()
            with open(path, "rb") as f:
                return [f.read()]
        if name == "calib":
            return [b"%YAML:1.0\n---\ncamera_matrix: !!opencv-matrix\n   rows: 3\n   cols: 3\n"
                    b"   dt: d\n   data: [ 900., 0., 640., 0., 900., 360., 0., 0., 1. ]\n"
                    b"image_width: 1280\nimage_height: 720\n",
                    json.dumps({"camera_matrix": [[900, 0, 640], [0, 900, 360], [0, 0, 1]],
                                "image_size": [1280, 720]}).encode(),
                    b"camera_matrix:\n  - [900, 0, 640]\n  - [0, 900, 360]\n  - [0, 0, 1]\n"]
        if name == "engine":
            from engines.runtime.engine import DEFAULT_ENGINE_PATH, read_metadata

            try:
                return [json.dumps(read_metadata(DEFAULT_ENGINE_PATH)).encode()]
            except Exception:
                return [b"{}"]
        raise KeyError(name)

    def one(self, name: str):
        return getattr(self, f"t_{name}")

    def t_schema(self, data: bytes) -> None:
        try:
            self.schema.decode(_split(data, 4))
        except self.schema.SchemaError:
            pass

    def t_edge(self, data: bytes) -> None:
        zmq = self.zmq
        half = len(data) // 2
        parts = _split(data[:half], 5) or [b""]
        self.router.send_multipart([self.peer, *parts])
        if self.rx.socket.poll(1000, zmq.POLLIN):
            self.rx.receive()  # a malformed message is counted, never raised
        self.rx._end_seen = False
        self.rx.request()
        while self.router.poll(0, zmq.POLLIN):
            self.router.recv_multipart()
        self.dealer.send_multipart(_split(data[half:], 4) or [b""])
        if self.tx.socket.poll(1000, zmq.POLLIN):
            self.tx.on_readable()

    def t_shm(self, data: bytes) -> None:
        from pipeline.shm import RingError

        parts = _split(data, 4)
        if not parts:
            return
        try:
            self.reader.read(parts[0], parts[1:], copy=True)
        except RingError:
            pass

    def _write(self, data: bytes) -> str:
        with open(self.file, "wb") as f:
            f.write(data)
        return self.file

    def t_psrec(self, data: bytes) -> None:
        from pipeline.record import Recording, RecordingError

        try:
            with Recording(self._write(data)) as rec:
                for i in range(min(len(rec), 16)):
                    try:
                        rec[i].decode()
                    except self.schema.SchemaError:
                        pass
        except RecordingError:
            pass

    def t_calib(self, data: bytes) -> None:
        from engines.runtime.intrinsics import CalibrationError, load_calibration

        try:
            load_calibration(self._write(data))  # the format is told by the contents
        except CalibrationError:
            pass

    def t_engine(self, data: bytes) -> None:
        from pathlib import Path

        from engines.runtime.engine import (
            EngineError,
            _codec_from_metadata,
            read_metadata_from_session,
        )

        session = _MetadataOnly(data.decode("utf-8", errors="replace"))
        try:
            meta = read_metadata_from_session(Path("fuzz.onnx"), session)
            _codec_from_metadata(Path("fuzz.onnx"), meta)
        except EngineError:
            pass


class _MetadataOnly:
    """What read_metadata_from_session asks of an ONNX Runtime session: its metadata map
    (a stand-in for onnxruntime's InferenceSession, not for anything of ours)."""

    def __init__(self, text: str) -> None:
        self.custom_metadata_map = {"posestream": text}

    def get_modelmeta(self):
        return self


def _valid_pose(schema, np):
    from engines.runtime.skeleton import NUM_JOINTS

    j3 = np.zeros((NUM_JOINTS, 3), np.float32)
    j2 = np.zeros((NUM_JOINTS, 2), np.float32)
    c = np.ones(NUM_JOINTS, np.float32)
    if hasattr(schema, "Person3D"):
        person = schema.Person3D(track_id=1, joints_3d_m=j3, root_m=j3[0].copy(),
                                 joints_2d_px=j2, confidence=c, reproj_err_px=c.copy())
        return schema.Pose3D(frame_id=3, t_capture_ns=4, image_size=(640, 480),
                             people=(person,), engine_id="0123456789ab")
    return schema.Pose3D(frame_id=3, t_capture_ns=4, image_size=(640, 480),
                         person_present=True, joints_3d_m=j3, root_m=j3[0].copy(),
                         joints_2d_px=j2, confidence=c, reproj_err_px=c.copy(),
                         engine_id="0123456789ab")


# frames of a multipart message in one input: each frame is <len: 4 bytes LE><bytes>, the
# last one the rest; a seed built with _join splits back to its frames exactly
def _join(parts: list[bytes]) -> bytes:
    out = b""
    for p in parts[:-1]:
        out += len(p).to_bytes(4, "little") + p
    return out + (parts[-1] if parts else b"")


def _split(data: bytes, most: int) -> list[bytes]:
    parts = []
    while len(parts) < most - 1 and len(data) >= 4:
        n = int.from_bytes(data[:4], "little")
        if n > len(data) - 4:
            break
        parts.append(data[4:4 + n])
        data = data[4 + n:]
    parts.append(data)
    return parts


# --------------------------------------------------------------------------- running
def run_one(name: str, runs: int, max_len: int, max_seconds: int = 0) -> None:
    """Fuzz one target in this process with atheris (exits when done)."""
    import atheris

    with atheris.instrument_imports(include=INSTRUMENT):
        import engines.runtime.engine  # noqa: F401
        import engines.runtime.intrinsics  # noqa: F401
        import pipeline.record  # noqa: F401
        import pipeline.schema  # noqa: F401
        import pipeline.shm  # noqa: F401
        import pipeline.transport  # noqa: F401
    workdir = tempfile.mkdtemp(prefix="posestream-fuzz-")
    targets = Targets(workdir)
    corpus = os.path.join(workdir, "corpus")
    os.makedirs(corpus)
    for i, seed in enumerate(targets.seeds(name)):
        with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
            f.write(seed)
    limit = [f"-max_total_time={max_seconds}"] if max_seconds else []
    atheris.Setup([sys.argv[0], f"-runs={runs}", *limit, f"-max_len={max_len}", "-timeout=10",
                   "-rss_limit_mb=4096", corpus], targets.one(name))
    atheris.Fuzz()


def run_all(names: list[str], runs: int, max_len: int, timeout_s: float,
            max_seconds: int = 0) -> int:
    """Each target in its own process; prints runs, seconds, coverage and crashes."""
    print(f"| target | inputs | seconds | inputs/s | coverage (edges) | crashes |")
    print("|---|---|---|---|---|---|")
    failed = 0
    for name in names:
        t0 = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, "-m", "bench.fuzz", name, "--runs", str(runs),
                                   "--max-len", str(max_len), "--max-seconds",
                                   str(max_seconds)], capture_output=True, text=True,
                                  timeout=timeout_s)
            out, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            out, code = (exc.stdout or b"").decode() + (exc.stderr or b"").decode(), -1
        seconds = time.monotonic() - t0
        done = re.search(r"Done (\d+) runs in (\d+) second", out)
        cov = re.findall(r"cov: (\d+)", out)
        crashed = code != 0 or "Uncaught Python exception" in out
        n = int(done.group(1)) if done else 0
        print(f"| {name} | {n} | {seconds:.0f} | {n / max(seconds, 1e-9):.0f} | "
              f"{cov[-1] if cov else '?'} | {'YES' if crashed else 0} |", flush=True)
        if crashed:
            failed += 1
            sys.stderr.write(f"--- {name}: exit {code}\n{out[-4000:]}\n")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", help=f"one of {', '.join(TARGETS)}; all; several as "
                                  "schema,shm (each in its own process, a table); list")
    p.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    p.add_argument("--max-len", type=int, default=4096, help="longest input, bytes")
    p.add_argument("--timeout", type=float, default=3600.0, help="per target, seconds")
    p.add_argument("--max-seconds", type=int, default=0,
                   help="stop each target after this long even before --runs (0: no limit)")
    args = p.parse_args(argv)
    if args.target == "list":
        print("\n".join(TARGETS))
        return 0
    names = list(TARGETS) if args.target == "all" else args.target.split(",")
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        p.error(f"no fuzz target {unknown[0]!r}; targets: {', '.join(TARGETS)}")
    if args.target == "all" or len(names) > 1:
        return run_all(names, args.runs, args.max_len, args.timeout, args.max_seconds)
    run_one(names[0], args.runs, args.max_len, args.max_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
