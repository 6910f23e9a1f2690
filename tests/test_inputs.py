"""Frames of any real size, every input accounted for (issue 12.1, 12.3).

- capture scales a 6000x4000 photo down to its working size (CaptureConfig.max_side) and
  says by how much; with scaling off, a frame over the hard size limit is a counted skip.
- pipeline.accounting: what became of the inputs, from the stages' counters.
- The issue's case, through run_pipeline.py and every real stage: four images, one of them a
  6000x4000 photo made here by upscaling a shared image: 4 of 4 come back as poses, exit 0;
  with an unreadable file among them, it is named as skipped and the run exits 3 (inputs
  lost), saying so on its last line.
"""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from pipeline.accounting import account
from pipeline.config import CaptureConfig
from pipeline.record import Recording
from pipeline.schema import MAX_IMAGE_BYTES, Frame, Pose3D
from stages.capture import CaptureStage
from tests.conftest import REPO, free_port
from tests.stage_harness import lifter_engine

H36M_GLOB = "data/footage/mmpose/tests/data/h36m/*/*/*.jpg"  # 4 frames, 1000x1000
PHOTO = "data/footage/mmpose/tests/data/coco/000000000785.jpg"  # 640x425, one person


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return str(lifter_engine(tmp_path_factory.mktemp("engine")))


def make_photo(shared_file, path) -> None:
    """A 6000x4000 photograph: a shared image cropped to 3:2 and blown up."""
    image = cv2.imread(str(shared_file(PHOTO)), cv2.IMREAD_COLOR)
    h, w = image.shape[:2]
    if w * 2 >= h * 3:  # wider than 3:2: keep the middle columns
        crop = image[:, (w - h * 3 // 2) // 2:][:, : h * 3 // 2]
    else:  # keep the middle rows
        crop = image[(h - w * 2 // 3) // 2:][: w * 2 // 3]
    cv2.imwrite(str(path), cv2.resize(crop, (6000, 4000), interpolation=cv2.INTER_CUBIC))


def _one_frame(config: CaptureConfig) -> tuple[Frame | None, dict]:
    stage = CaptureStage(config)
    stage.open()
    try:
        return stage.produce(), stage.counters()
    finally:
        stage.close()


def test_capture_scales_a_large_photo_down_and_says_by_how_much(shared_file, tmp_path):
    make_photo(shared_file, tmp_path / "photo.jpg")
    frame, counters = _one_frame(CaptureConfig(images=str(tmp_path / "*.jpg")))
    assert frame.image.shape == (1280, 1920, 3)  # the default max_side, aspect kept
    assert frame.scale_to_original == pytest.approx(6000 / 1920)
    assert counters["skipped"] == {"unreadable": 0, "too_large": 0}
    # a frame that fits is left alone
    small, _ = _one_frame(CaptureConfig(images=str(shared_file(PHOTO))))
    assert small.image.shape == (425, 640, 3)
    assert small.scale_to_original == 1.0


def test_a_frame_over_the_hard_limit_is_a_counted_skip_not_a_crash(shared_file, tmp_path):
    make_photo(shared_file, tmp_path / "photo.jpg")
    assert 6000 * 4000 * 3 > MAX_IMAGE_BYTES
    frame, counters = _one_frame(CaptureConfig(images=str(tmp_path / "*.jpg"), max_side=0))
    assert frame is None
    assert counters["skipped"]["too_large"] == 1 and counters["skipped_ids"]["too_large"] == [0]
    assert counters["next_id"] == 1  # its id stays unused: the next image is frame 1


def _stats(next_id=0, skipped=None, ids=None, truncated=None, **counts):
    source = {"next_id": next_id, "skipped": skipped or {}, "skipped_ids": ids or {},
              "skipped_restart": counts.pop("skipped_restart", 0), "truncated": truncated}
    return {"processed": counts.pop("processed", 0), "source": source, **counts}


def test_accounting_of_a_whole_run():
    # 10 images, one unreadable, 9 poses: lost (exit 3), the skip named with its id
    capture = _stats(next_id=10, skipped={"unreadable": 1}, ids={"unreadable": [4]})
    output = {"processed": 9}
    r = account("images x/*.jpg", True, [capture], [output], [capture, output])
    assert (r.inputs, r.published, r.missing, r.lost, r.inputs_lost) == (10, 9, 1, 0, True)
    assert "skipped: 1 unreadable" in "\n".join(r.lines()) and "frame ids 4" in r.lines()[1]
    assert r.lines()[-1].startswith("INPUTS LOST: 1 of the 10 inputs")
    # a capture restarted (lossless) read image 4 twice: counted once
    again = _stats(next_id=10, skipped={"unreadable": 1}, ids={"unreadable": [4]})
    first = _stats(next_id=6, skipped={"unreadable": 1}, ids={"unreadable": [4]})
    r = account("images x/*.jpg", True, [first, again], [output], [first, again, output])
    assert r.skipped == {"unreadable": 1} and r.missing == 1
    # every frame back: exit 0, said last
    capture = _stats(next_id=90)
    r = account("video v.avi", True, [capture], [{"processed": 90}], [capture])
    assert not r.inputs_lost and r.lines()[-1] == "all 90 inputs of video v.avi came back as poses"
    # a truncated video: 107 of 205 frames read and published; 98 beyond the end
    capture = _stats(next_id=107, truncated=[107, 205])
    r = account("video cut.avi", True, [capture], [{"processed": 107}], [capture])
    assert r.skipped == {"truncated": 98} and r.inputs_lost and r.expected == 205
    # a stage that sent nothing on for a frame: missing, and said why
    capture, lift = _stats(next_id=50), {"processed": 50, "no_output": 1}
    r = account("video v.avi", True, [capture], [{"processed": 49}], [capture, lift])
    assert r.no_output == 1 and r.lost == 0 and r.inputs_lost
    assert "no output: 1" in "\n".join(r.lines())
    # a frame in a killed stage: missing, explained by no counter
    capture, detect = _stats(next_id=50), {"processed": 49}
    r = account("video v.avi", True, [capture], [{"processed": 49}], [capture, detect])
    assert r.lost == 1 and r.inputs_lost


def test_accounting_of_a_newest_frame_wins_run_reports_drops_and_never_fails():
    capture = _stats(next_id=300, skipped_restart=12, dropped_out=40)
    detect = {"processed": 248, "dropped_in": 0}
    r = account("video v.avi", False, [capture], [{"processed": 248}], [capture, detect])
    assert r.dropped == 40 and r.skipped == {"restart": 12} and not r.inputs_lost
    assert r.lines()[-1] == "248 of 300 inputs published"


def _run_images(tmp_path, engine, pattern) -> tuple[subprocess.CompletedProcess, list[Pose3D]]:
    out = tmp_path / "run.psrec"
    proc = subprocess.run(
        [sys.executable, "run_pipeline.py", "--images", pattern, "--engine", engine,
         "--publish", f"tcp://127.0.0.1:{free_port()}", "--record", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    with Recording(out) as rec:
        poses = [m for m in (r.decode() for r in rec) if isinstance(m, Pose3D)]
    return proc, poses


def test_four_images_one_a_6000x4000_photo_all_come_back(shared_dir, shared_file, tmp_path,
                                                         engine):
    import shutil

    images = sorted(shared_dir.glob(H36M_GLOB))[:3]
    for i, image in enumerate(images):
        shutil.copy(image, tmp_path / f"{i}.jpg")
    make_photo(shared_file, tmp_path / "3.jpg")
    proc, poses = _run_images(tmp_path, engine, str(tmp_path / "*.jpg"))
    sys.stderr.write(proc.stderr[-1500:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.frame_id for p in poses] == [0, 1, 2, 3]  # 4 of 4 images came back
    photo = poses[3]
    assert photo.people, "the person in the 6000x4000 photo, found in its smaller copy"
    # reported in the original photo's pixels: its size, and joints spread over it
    assert tuple(photo.image_size) == (6000, 4000)
    joints = photo.people[0].joints_2d_px
    assert np.ptp(joints[:, 1]) > 1280  # taller than the whole 1920x1280 working copy
    assert 0 <= joints[:, 0].mean() <= 6000 and 0 <= joints[:, 1].mean() <= 4000
    assert "Traceback" not in proc.stderr and "SchemaError" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("came back as poses")

    # an unreadable file among them: named as skipped, the run says inputs were lost
    (tmp_path / "2b.jpg").write_bytes(b"this is no jpeg" * 100)
    proc, poses = _run_images(tmp_path, engine, str(tmp_path / "*.jpg"))
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert [p.frame_id for p in poses] == [0, 1, 2, 4]  # 2b.jpg was frame 3
    assert "skipped: 1 unreadable" in proc.stderr and "2b.jpg" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "INPUTS LOST: 1 of the 5 inputs" in last and "exit status 3" in last
