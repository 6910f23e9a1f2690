"""Quiet logs: mediapipe's protobuf deprecation warning is filtered at its source, our own
warnings are not, and a camera that does not open gets advice that helps."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO

VIDEO = "data/footage/openpose/examples/media/video.avi"

# one BlazePose graph on the street video's first frame (a person is found, which is when
# mediapipe's solution_base calls protobuf's deprecated SymbolDatabase.GetPrototype())
POSE_ON_FIRST_FRAME = """
import sys, warnings, cv2
if sys.argv[2] == "quiet":
    from pipeline.quiet import quiet_third_party
    quiet_third_party()
ok, image = cv2.VideoCapture(sys.argv[1]).read()
import mediapipe as mp
with mp.solutions.pose.Pose(static_image_mode=False) as pose:
    found = pose.process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).pose_landmarks is not None
warnings.warn("our own warning stays")
print("FOUND", found)
"""


def _pose_run(video: str, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", POSE_ON_FIRST_FRAME, video, mode], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_protobuf_deprecation_warning_is_filtered_ours_kept(shared_file):
    video = str(shared_file(VIDEO))
    loud, quiet = _pose_run(video, "loud"), _pose_run(video, "quiet")
    for result in (loud, quiet):
        assert result.returncode == 0 and "FOUND True" in result.stdout, result.stderr[-2000:]
    assert "SymbolDatabase.GetPrototype() is deprecated" in loud.stderr  # the test can see it
    assert "GetPrototype" not in quiet.stderr, quiet.stderr
    assert "our own warning stays" in quiet.stderr


def test_stage_processes_install_the_filters():
    """pipeline.runner (every stage process) calls quiet_third_party before loading a stage."""
    code = ("import warnings, pipeline.runner as r, sys\n"
            "try:\n    r.main(['--plan', '/nonexistent/plan.json'])\nexcept OSError:\n    pass\n"
            "print(any(f[0] == 'ignore' and f[1] is not None and 'GetPrototype' in f[1].pattern"
            " for f in warnings.filters))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip() == "True", result.stdout + result.stderr


@pytest.mark.parametrize("index", [0, 1, 99])
def test_camera_that_does_not_open_gets_advice_that_helps(index):
    from stages.capture import CaptureConfig, CaptureStage, SourceError

    try:
        CaptureStage.preflight(CaptureConfig(camera=index))
    except SourceError as err:
        text = str(err)
    else:
        pytest.skip(f"camera {index} opens on this machine")
    assert text.startswith(f"camera {index} could not be opened: ")
    assert f"--camera {index}" not in text  # never "try the camera that just failed"
    assert "--video FILE" in text
