"""--detect-workers auto: one detection process per free core, at least 1, at most 3, and the
choice is logged by a real run_pipeline.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.config import MAX_AUTO_DETECT_WORKERS, auto_detect_workers
from tests.conftest import REPO


@pytest.mark.parametrize("cores, load, want", [
    (2, 0.1, 2), (2, 0.9, 1), (2, 3.0, 1), (1, 0.0, 1), (8, 1.0, MAX_AUTO_DETECT_WORKERS),
    (4, 1.5, 3), (4, 2.6, 1), (16, 20.0, 1),
])
def test_auto_counts_the_free_cores(cores, load, want):
    workers, why = auto_detect_workers(cores, load)
    assert workers == want
    assert f"{cores} cores" in why and f"{want} detection process" in why


def test_a_run_logs_its_choice_and_a_bad_value_is_refused(tmp_path):
    bad = subprocess.run([sys.executable, "run_pipeline.py", "--detect-workers", "many"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--detect-workers takes a number or auto" in bad.stderr
    # a source that cannot be opened ends the run before any process starts, after the choice
    run = subprocess.run([sys.executable, "run_pipeline.py", "--video", str(tmp_path / "no.mp4")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "--detect-workers auto:" in run.stderr and "detection process" in run.stderr


@pytest.mark.parametrize("cores, want", [(1, 1), (2, 2), (16, 2)])
def test_follow_threads_auto_is_one_per_core_at_most_two(cores, want):
    from pipeline.config import MAX_FOLLOW_THREADS, auto_follow_threads

    assert MAX_FOLLOW_THREADS == 2
    assert auto_follow_threads(cores) == want


def test_follow_threads_travel_to_the_stages_and_bad_counts_are_refused():
    from pipeline.config import DetectConfig, PipelineConfig

    cfg = PipelineConfig(detect=DetectConfig(follow_threads=1))
    assert PipelineConfig.from_json(cfg.to_json()).detect.follow_threads == 1
    for bad in (-1, 17):
        with pytest.raises(ValueError, match="follow_threads must be 0"):
            DetectConfig(follow_threads=bad)
