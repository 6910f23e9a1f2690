"""--detect-workers auto: one detection process per free core (busy measured now, not the
load average that trails by minutes), at least 1, at most 3, and the choice is logged by a
real run_pipeline.py."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pipeline.config import MAX_AUTO_DETECT_WORKERS, auto_detect_workers
from tests.conftest import REPO


@pytest.mark.parametrize("cores, busy, want", [
    (2, 0.1, 2), (2, 0.9, 1), (2, 3.0, 1), (1, 0.0, 1), (8, 1.0, MAX_AUTO_DETECT_WORKERS),
    (4, 1.5, 3), (4, 2.6, 1), (16, 20.0, 1),
])
def test_auto_counts_the_free_cores(cores, busy, want):
    workers, why = auto_detect_workers(cores, busy)
    assert workers == want
    assert f"{cores} cores" in why and f"{want} detection process" in why


def test_busy_cores_follow_a_spinning_process_and_drop_as_soon_as_it_ends():
    """A process spinning on one core shows as about one busy core, and half a second after
    it ends it no longer does (the 1-minute load average would still show most of it)."""
    from pipeline.config import busy_cores_now, usable_cores

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # started and spinning
        during, how = busy_cores_now(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    after, _ = busy_cores_now(0.5)
    assert how == "busy over 0.5 s"
    assert during >= 0.7, during
    assert during - after >= 0.5, (during, after)
    assert 0.0 <= after <= usable_cores()


def test_a_run_logs_its_choice_and_a_bad_value_is_refused(tmp_path):
    bad = subprocess.run([sys.executable, "run_pipeline.py", "--detect-workers", "many"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--detect-workers takes a number or auto" in bad.stderr
    # a source that cannot be opened ends the run before any process starts, after the choice
    run = subprocess.run([sys.executable, "run_pipeline.py", "--video", str(tmp_path / "no.mp4")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "--detect-workers auto:" in run.stderr and "detection process" in run.stderr


@pytest.mark.parametrize("cores, want", [(1, 2), (2, 4), (16, 4)])
def test_follow_threads_auto_is_two_per_core_at_most_four(cores, want):
    from pipeline.config import MAX_FOLLOW_THREADS, VIDEO_MAX_PEOPLE, auto_follow_threads

    assert MAX_FOLLOW_THREADS == 4 == VIDEO_MAX_PEOPLE  # one graph per person by default
    assert auto_follow_threads(cores) == want


def test_the_detect_stage_starts_no_more_graphs_than_people_it_may_follow():
    from pipeline.config import DetectConfig, auto_follow_threads
    from stages.detect import DetectStage

    for max_people in (1, 4):
        stage = DetectStage(DetectConfig(max_people=max_people))
        stage.open()
        try:
            assert 1 + len(stage._follow_more) == min(max_people, auto_follow_threads())
        finally:
            stage.close()


def test_follow_threads_travel_to_the_stages_and_bad_counts_are_refused():
    from pipeline.config import DetectConfig, PipelineConfig

    cfg = PipelineConfig(detect=DetectConfig(follow_threads=1))
    assert PipelineConfig.from_json(cfg.to_json()).detect.follow_threads == 1
    for bad in (-1, 17):
        with pytest.raises(ValueError, match="follow_threads must be 0"):
            DetectConfig(follow_threads=bad)
