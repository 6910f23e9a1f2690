"""Shared fixtures: the shared-data folder, and starting pipeline processes that are always
reaped (even when a test fails), with no process or socket left behind.

Other engineers: append your fixtures below; keep this file free of heavy imports (torch,
mediapipe) so every test file starts fast.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config) -> None:
    """Tests send Ctrl-C (SIGINT) to the runs they start. A test session started in the
    background (`nohup`, `cmd &` in a script) ignores SIGINT, and every child inherits that:
    a run then ignores a Ctrl-C that comes before the supervisor's own handler is in (seen:
    a run that streamed on after a Ctrl-C 50 ms in). So this session takes SIGINT as Python
    does by default, and its children start with the default disposition."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def shared_root() -> Path:
    """The shared folder holding data/ ($POSESTREAM_SHARED, else <repo>/../shared)."""
    return Path(os.environ.get("POSESTREAM_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared folder (the one holding data/footage, data/mocap)."""
    return shared_root()


@pytest.fixture(scope="session")
def shared_file(shared_dir: Path) -> Callable[[str], Path]:
    """shared_file("data/footage/...") -> Path; fails the test with a clear message if missing."""

    def get(relative: str) -> Path:
        path = shared_dir / relative
        if not path.exists():
            pytest.fail(
                f"missing shared data file {path}: set POSESTREAM_SHARED to the shared folder "
                "(the one holding data/footage)"
            )
        return path

    return get


def nvidia_gpu_present() -> bool:
    """An NVIDIA GPU's device node is here (/dev/nvidia0, ...): what the machine says, not
    what the code under test concludes."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def expected_backends() -> dict[str, bool]:
    """{backend: usable here}, derived from the environment alone (a GPU's device node, the
    packages installed, ONNX Runtime's own provider list), to check engines.runtime.engine's
    answers against: tensorrt needs a GPU, the tensorrt module and cuda-python; ONNX
    Runtime's CUDA provider needs a GPU and an onnxruntime build that has it."""
    from importlib.util import find_spec

    import onnxruntime

    gpu = nvidia_gpu_present()
    return {
        "tensorrt": gpu and find_spec("tensorrt") is not None and find_spec("cuda") is not None,
        "onnxruntime-cuda": gpu and "CUDAExecutionProvider" in onnxruntime.get_available_providers(),
        "onnxruntime-cpu": True,
    }


def expected_auto_backend() -> str:
    """The backend `load_engine(backend="auto")` must pick here: the first usable one in
    the order tensorrt, onnxruntime-cuda, onnxruntime-cpu."""
    usable = expected_backends()
    return next(name for name in ("tensorrt", "onnxruntime-cuda", "onnxruntime-cpu")
                if usable[name])


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (read from /proc; no psutil)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def process_start(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot, /proc/PID/stat field 22), or None if it is
    gone: with the pid, this names one process even after the kernel reuses the number."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    """Direct child pids of `pid`, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Wait until none of `pids` is alive; return those still alive after timeout_s."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if pid_alive(p)]
    return alive


class ProcessReaper:
    """Starts commands and guarantees they, and every process they started, are gone at the end."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen] = []
        self.extra_pids: set[int] = set()

    def start(self, args: list[str], **kwargs) -> subprocess.Popen:
        """subprocess.Popen(args) in the repo root with the repo on PYTHONPATH."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        env.update(kwargs.pop("env", {}))
        kwargs.setdefault("cwd", str(REPO))
        popen = subprocess.Popen(args, env=env, **kwargs)
        self.popens.append(popen)
        return popen

    def python(self, *args: str, **kwargs) -> subprocess.Popen:
        return self.start([sys.executable, *args], **kwargs)

    def track(self, pids) -> None:
        """Also reap these pids (e.g. stage processes a supervisor started)."""
        self.extra_pids.update(int(p) for p in pids)

    def reap(self) -> None:
        for popen in self.popens:
            if popen.poll() is None:
                self.extra_pids.update(children_of(popen.pid))
        for popen in self.popens:
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        for popen in self.popens:
            try:
                popen.wait(timeout=3)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=3)
        for pid in wait_gone(sorted(self.extra_pids), 3.0):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for popen in self.popens:
            for stream in (popen.stdout, popen.stderr, popen.stdin):
                if stream is not None:
                    stream.close()


@pytest.fixture
def reaper() -> Iterator[ProcessReaper]:
    """Start processes with `reaper.python(...)`; all are killed and waited for afterwards."""
    r = ProcessReaper()
    try:
        yield r
    finally:
        r.reap()


@pytest.fixture
def supervisors() -> Iterator[list]:
    """Append every pipeline.supervisor.Supervisor you create; each is stopped afterwards."""
    started: list = []
    try:
        yield started
    finally:
        for sup in started:
            pids = list(sup.pids().values())
            sup.stop()
            for pid in wait_gone(pids, 3.0):
                os.kill(pid, signal.SIGKILL)


STREET_VIDEO = "data/footage/openpose/examples/media/video.avi"  # 1280x720, 205 frames, 50 fps
STREET_FRAMES = 40


@pytest.fixture(scope="session")
def street_recording(tmp_path_factory, shared_file) -> Path:
    """A real .psrec of the pipeline on the street video's first STREET_FRAMES frames (every
    frame, as fast as it goes), recorded until the end-of-stream status; made once per session
    for the BVH and Rerun tests. About 20 s."""
    path = tmp_path_factory.mktemp("street") / "street.psrec"
    result = subprocess.run(
        [sys.executable, "run_pipeline.py", "--video", str(shared_file(STREET_VIDEO)),
         "--every-frame", "--as-fast-as-possible", "--max-frames", str(STREET_FRAMES),
         "--record", str(path), "--publish", f"tcp://127.0.0.1:{free_port()}"],
        cwd=REPO, capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode != 0 or not path.is_file():
        pytest.fail(f"the street-video run failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return path
