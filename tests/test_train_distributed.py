"""torchrun: two processes of DistributedDataParallel (gloo) follow the loss curve of one
process with the same global batch; a launch without torchrun's environment is refused clearly."""

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engines.training.train import DistributedError, distributed_from_env, main

REPO = Path(__file__).resolve().parents[1]
#: A tiny supervised run: 30 steps of a global batch of 64 (2 x 32 under torchrun).
ARGS = ["--method", "supervised", "--sources", "cmu_bvh", "--max-poses", "600", "--steps", "30",
        "--batch", "64", "--width", "64", "--blocks", "1", "--dropout", "0", "--views", "1",
        "--log-every", "5", "--threads", "1"]
#: Largest relative difference of a logged loss between 1 process and 2: the gradients are the
#: same average over the global batch, but each rank's batch norm takes its statistics over its
#: own 32 samples (measured here: at most 2.6 %).
TOLERANCE = 0.05


def _losses(run: Path) -> list[float]:
    with open(run / "log.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def _run(cmd: list[str], timeout_s: float = 300) -> subprocess.CompletedProcess:
    """Run `cmd` in its own session; on a timeout stop the whole group (torchrun's workers too:
    SIGTERM first, which torchrun forwards, then SIGKILL)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)   # torchrun passes it on to its workers
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:6])} ... timed out after {timeout_s} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in
           ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _one_and_two_processes(args: list[str], tmp_path: Path) -> tuple[list[float], list[float]]:
    """Train `args` in one process and under torchrun in two; both loss curves (the second from
    rank 0's log), after checking both runs and that each rank took part."""
    one = _run([sys.executable, "-m", "engines.training.train", *args,
                "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "engines.training.train", *args,
                "--distributed", "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "rank 1 of 2" in two.stderr and "rank 0 of 2" in two.stderr
    assert (tmp_path / "two" / "checkpoint.pt").is_file()
    single, double = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(single) == len(double) == 6                    # one log, from rank 0 only
    for a, b in zip(single, double):
        assert abs(a - b) <= TOLERANCE * a, (single, double)
    return single, double


def test_two_processes_follow_the_single_process_loss_curve(tmp_path):
    _, double = _one_and_two_processes(ARGS, tmp_path)
    assert double[-1] < 0.7 * double[0]                       # it learns


#: The shipped temporal engine's method (engines/temporal/MODEL_CARD.md), tiny: the default
#: engine as teacher and frozen base, a receptive field of 9, 30 steps of a global batch of 64.
DISTILL_ARGS = ["--method", "distill", "--teacher-engine", "default", "--base-engine", "default",
                "--sources", "cmu_bvh", "--max-poses", "3000", "--receptive-field", "9",
                "--fps", "30", "--head", "refine", "--channels", "32", "--dropout", "0",
                "--windows", "400", "--views", "1", "--temporal-noise", "1.0", "--w-accel", "1",
                "--steps", "30", "--batch", "64", "--log-every", "5", "--threads", "1"]


def test_the_temporal_engines_method_runs_on_two_processes_as_on_one(tmp_path):
    """distill (the shipped temporal engine's method) under torchrun: the frozen base stays out
    of DistributedDataParallel's gradients, and the loss curve is one process's (measured here:
    at most 0.7 % apart)."""
    _one_and_two_processes(DISTILL_ARGS, tmp_path)


def test_a_launch_without_torchrun_is_refused_clearly(tmp_path, monkeypatch, caplog):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert distributed_from_env() is None
    with pytest.raises(DistributedError, match="torchrun --nproc_per_node"):
        distributed_from_env(required=True)
    with pytest.raises(DistributedError, match="MASTER_ADDR, MASTER_PORT not set"):
        distributed_from_env(environ={"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert main([*ARGS, "--distributed", "--out", str(tmp_path)]) == 2
    assert "torchrun" in caplog.text
