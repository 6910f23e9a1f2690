"""stages/capture.py on real files, and run_pipeline.py failing fast with a clear message
when a source cannot be opened (before any stage process starts)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.config import CaptureConfig
from pipeline.schema import Frame, decode, encode
from pipeline.stage import EndOfStream
from stages.capture import CaptureStage, SourceError
from tests.conftest import REPO

VIDEO = "data/footage/openpose/examples/media/video.avi"  # 1280x720, 205 frames, 50 fps
H36M_GLOB = "data/footage/mmpose/tests/data/h36m/*/*/*.jpg"  # 4 frames


def _drain(stage: CaptureStage, limit: int = 1000) -> list[Frame]:
    frames = []
    try:
        while len(frames) < limit:
            frame = stage.produce()
            if frame is not None:
                frames.append(frame)
    except EndOfStream:
        pass
    return frames


def test_video_frames_are_raw_sequential_and_timestamped(shared_file):
    stage = CaptureStage(CaptureConfig(video=str(shared_file(VIDEO)), as_fast_as_possible=True,
                                       max_frames=12))
    stage.open()
    try:
        t_before = time.monotonic_ns()
        frames = _drain(stage)
    finally:
        stage.close()
    assert [f.frame_id for f in frames] == list(range(12))
    assert all(f.image.shape == (720, 1280, 3) and f.image.dtype == np.uint8 for f in frames)
    stamps = [f.t_capture_ns for f in frames]
    assert stamps == sorted(stamps) and stamps[0] >= t_before
    assert frames[0].source.startswith("video:")
    assert not np.array_equal(frames[0].image, frames[11].image)  # the video moves
    # a raw frame survives the wire bit for bit
    np.testing.assert_array_equal(decode([bytes(b) for b in encode(frames[3])]).image,
                                  frames[3].image)


def test_video_ends_with_end_of_stream(shared_file):
    stage = CaptureStage(CaptureConfig(video=str(shared_file(VIDEO)), as_fast_as_possible=True))
    stage.open()
    try:
        frames = _drain(stage)
    finally:
        stage.close()
    assert len(frames) == 205


def test_images_in_sorted_order(shared_file, shared_dir):
    shared_file("data/footage/mmpose/tests/data/h36m")
    stage = CaptureStage(CaptureConfig(images=str(shared_dir / H36M_GLOB),
                                       as_fast_as_possible=True))
    stage.open()
    try:
        frames = _drain(stage)
    finally:
        stage.close()
    assert len(frames) == 4
    assert [f.image.shape[:2] for f in frames] == [(1002, 1000), (1002, 1000), (1002, 1000),
                                                   (1000, 1000)]
    names = [f.source.rsplit("/", 1)[-1] for f in frames]
    assert [n.split("_")[0] for n in names] == ["S1", "S5", "S7", "S8"]  # sorted by path
    assert all(f.source.startswith("image:") for f in frames)


def test_a_restarted_video_capture_goes_on_where_the_last_one_was(shared_file):
    """resume(after frame 40, captured 0.5 s ago) on the 50 fps video: the next frame is
    40 + 1 + the frame intervals that passed by the time open() positions the file (at
    least 25), it is that frame of the file, and it is due at once, not after a pause.

    The exact id depends on how long open() took on this machine, so it is checked against
    the clock read around open(); `python -m bench.bounds capture-resume` prints the spread
    of the id and of the wait over many resumes."""
    video = str(shared_file(VIDEO))
    period_ns = 1e9 / 50
    stage = CaptureStage(CaptureConfig(video=video))  # paced at the file's 50 fps
    t_last = time.monotonic_ns() - 500_000_000
    stage.resume(40, t_last)
    t_open0 = time.monotonic_ns()
    stage.open()
    t_open1 = time.monotonic_ns()
    try:
        t0 = time.monotonic()
        frame = None
        while frame is None:
            frame = stage.produce()
        waited_s = time.monotonic() - t0
        second = None
        while second is None:
            second = stage.produce()
    finally:
        stage.close()
    lowest = 41 + int((t_open0 - t_last) // period_ns)
    highest = 41 + int((t_open1 - t_last) // period_ns)
    assert 66 <= lowest <= frame.frame_id <= highest, (lowest, frame.frame_id, highest)
    reference = CaptureStage(CaptureConfig(video=video, as_fast_as_possible=True,
                                           max_frames=frame.frame_id + 2))
    reference.open()
    try:
        expected = _drain(reference)[-2:]  # frames frame_id and frame_id + 1 of the file
    finally:
        reference.close()
    np.testing.assert_array_equal(frame.image, expected[0].image)
    np.testing.assert_array_equal(second.image, expected[1].image)
    assert second.frame_id == frame.frame_id + 1
    # a capture whose pacing clock started at the first produce() would wait frame_id
    # intervals (over 1.3 s) for the new id to fall due; half of that is generous
    assert waited_s < 0.5 * frame.frame_id * period_ns / 1e9, waited_s


def test_a_restarted_image_capture_wraps_around_when_looping(shared_file, shared_dir):
    shared_file("data/footage/mmpose/tests/data/h36m")
    stage = CaptureStage(CaptureConfig(images=str(shared_dir / H36M_GLOB), loop=True,
                                       as_fast_as_possible=True))
    stage.resume(9, time.monotonic_ns())  # unpaced: nothing skipped, next id 10
    stage.open()
    try:
        frames = [stage.produce() for _ in range(3)]
    finally:
        stage.close()
    assert [f.frame_id for f in frames] == [10, 11, 12]
    # 4 images: id 10 is image 10 % 4 = 2 (S7), then S8, then S1 again
    assert [f.source.rsplit("/", 1)[-1].split("_")[0] for f in frames] == ["S7", "S8", "S1"]


def test_an_unreadable_image_is_skipped_counted_and_leaves_its_id_unused(shared_dir, tmp_path):
    import shutil

    images = sorted(shared_dir.glob(H36M_GLOB))
    shutil.copy(images[0], tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg at all" * 20)
    shutil.copy(images[1], tmp_path / "c.jpg")
    stage = CaptureStage(CaptureConfig(images=str(tmp_path / "*.jpg"),
                                       as_fast_as_possible=True))
    stage.open()
    try:
        frames = _drain(stage)
    finally:
        stage.close()
    assert [f.frame_id for f in frames] == [0, 2]  # the id is the image's position
    assert [f.source.rsplit("/", 1)[-1] for f in frames] == ["a.jpg", "c.jpg"]
    counters = stage.counters()
    assert counters["next_id"] == 3
    assert counters["skipped"] == {"unreadable": 1, "too_large": 0}
    assert counters["skipped_ids"]["unreadable"] == [1]


def test_a_lossless_restart_goes_on_with_the_next_frame_whatever_the_time(shared_file):
    """Paced at 50 fps, resumed after frame 40 captured 2 s ago: newest frame wins would skip
    100 frames; lossless goes on with frame 41, which is frame 41 of the file."""
    video = str(shared_file(VIDEO))
    reference = CaptureStage(CaptureConfig(video=video, as_fast_as_possible=True,
                                           max_frames=42))
    reference.open()
    try:
        expected = _drain(reference)[41].image
    finally:
        reference.close()
    stage = CaptureStage(CaptureConfig(video=video))
    stage.resume(40, time.monotonic_ns() - 2_000_000_000, lossless=True)
    stage.open()
    try:
        frame = None
        while frame is None:
            frame = stage.produce()
    finally:
        stage.close()
    assert frame.frame_id == 41
    np.testing.assert_array_equal(frame.image, expected)
    assert stage.counters()["skipped_restart"] == 0


def test_a_truncated_video_is_named_as_such(shared_file, tmp_path, caplog):
    data = shared_file(VIDEO).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])  # the header still announces 205 frames
    stage = CaptureStage(CaptureConfig(video=str(cut), as_fast_as_possible=True))
    stage.open()
    try:
        frames = _drain(stage)
    finally:
        stage.close()
    decoded, announced = stage.counters()["truncated"]
    assert announced == 205 and decoded == len(frames) < 205
    assert "truncated" in caplog.text and f"after {decoded} of the 205 frames" in caplog.text


def test_preflight_errors_say_what_to_do(tmp_path):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"this is not a video" * 10)
    cases = [
        (CaptureConfig(camera=99), "camera 99 could not be opened"),
        (CaptureConfig(video=str(tmp_path / "missing.mp4")), "does not exist"),
        (CaptureConfig(video=str(bad)), "could not be opened"),
        (CaptureConfig(images=str(tmp_path / "*.jpg")), "no files match"),
    ]
    for config, message in cases:
        with pytest.raises(SourceError, match=message):
            CaptureStage.preflight(config)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--camera", "99"], "camera 99 could not be opened: "),
        (["--video", "BAD"], "could not be opened"),
        (["--video", "/no/such/file.mp4"], "does not exist"),
    ],
)
def test_run_pipeline_fails_fast_on_a_bad_source(tmp_path, flags, message):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"\x00garbage" * 100)
    flags = [str(bad) if f == "BAD" else f for f in flags]
    proc = subprocess.run(
        [sys.executable, "run_pipeline.py", *flags, "--log-level", "DEBUG"], cwd=REPO,
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    # no stage process was started (the supervisor logs each start at DEBUG); how fast it
    # fails is a speed figure: `python -m bench.bounds fail-fast` (target under 3 s)
    assert "started stage" not in proc.stderr and "warm spare" not in proc.stderr, proc.stderr


def test_run_pipeline_fails_fast_when_the_publish_port_is_taken(shared_file):
    import zmq

    ctx = zmq.Context()
    taken = ctx.socket(zmq.PUB)
    taken.setsockopt(zmq.LINGER, 0)
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    try:
        proc = subprocess.run(
            [sys.executable, "run_pipeline.py", "--video", str(shared_file(VIDEO)),
             "--publish", f"tcp://127.0.0.1:{port}"],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
    finally:
        taken.close()
        ctx.term()
    assert proc.returncode == 2, proc.stderr
    assert f"could not bind tcp://127.0.0.1:{port}" in proc.stderr
    assert "is another posestream running?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_pipeline_refuses_a_public_endpoint_without_allow_remote():
    proc = subprocess.run([sys.executable, "run_pipeline.py", "--publish", "tcp://0.0.0.0:5556"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "reachable from other machines" in proc.stderr and "--allow-remote" in proc.stderr


def test_flags_become_the_config():
    from run_pipeline import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(
        ["--images", "x/*.jpg", "--every-frame", "--fov", "75", "--height", "0",
         "--engine", "e.onnx", "--backend", "onnxruntime", "--max-frames", "9"]))
    assert config.capture.images == "x/*.jpg" and config.capture.max_frames == 9
    assert config.detect.static_image_mode  # the person detector on every image
    assert config.transport.policy == "lossless" and config.supervisor.max_restarts == 3
    assert config.lift.fov_deg == 75.0 and config.lift.height_m is None  # bone-length prior
    assert config.lift.engine_path == "e.onnx" and config.lift.backend == "onnxruntime"
    video = config_from_args(build_parser().parse_args(["--video", "v.mp4"]))
    assert not video.detect.static_image_mode and video.smooth.enabled
    assert video.lift.height_m == 1.70
    # files are processed whole by default: every frame, unpaced
    assert video.transport.policy == "lossless" and video.capture.as_fast_as_possible
    images = config_from_args(build_parser().parse_args(["--images", "x/*.jpg"]))
    assert images.transport.policy == "lossless" and images.capture.as_fast_as_possible
    # --realtime: played as a camera would, paced, newest frame wins
    for source in (["--video", "v.mp4"], ["--images", "x/*.jpg"]):
        live = config_from_args(build_parser().parse_args([*source, "--realtime"]))
        assert live.transport.policy == "latest" and not live.capture.as_fast_as_possible
        fast = config_from_args(build_parser().parse_args(
            [*source, "--realtime", "--as-fast-as-possible"]))
        assert fast.transport.policy == "latest" and fast.capture.as_fast_as_possible
    # One Euro settings for the engine's kind (its metadata), unless --one-euro says
    assert (video.smooth.min_cutoff, video.smooth.beta) == (2.0, 5.0)
    temporal = config_from_args(build_parser().parse_args(["--video", "v.mp4", "--engine",
                                                           "temporal"]))
    assert (temporal.smooth.min_cutoff, temporal.smooth.beta, temporal.smooth.d_cutoff) == (
        2.0, 10.0, 1.0)
    given = config_from_args(build_parser().parse_args(["--video", "v.mp4", "--engine",
                                                        "temporal", "--one-euro", "0.5,20,2"]))
    assert (given.smooth.min_cutoff, given.smooth.beta, given.smooth.d_cutoff) == (0.5, 20, 2)
    for bad, message in (("1", "MIN_CUTOFF_HZ,BETA"), ("0,5", "cutoffs must be > 0")):
        with pytest.raises(ValueError, match=message):
            config_from_args(build_parser().parse_args(["--video", "v.mp4", "--one-euro", bad]))
    camera = config_from_args(build_parser().parse_args([]))
    assert camera.capture.source_kind() == "camera"
    assert camera.transport.policy == "latest" and not camera.capture.as_fast_as_possible
    assert camera.output.publish == "tcp://127.0.0.1:5556" and camera.output.topic == "pose3d"
    assert config_from_args(build_parser().parse_args(
        ["--camera", "0", "--every-frame"])).transport.policy == "lossless"
    for contradiction, message in ((["--camera", "0", "--realtime"], "a camera is always"),
                                   (["--video", "v.mp4", "--realtime", "--every-frame"],
                                    "contradict")):
        with pytest.raises(ValueError, match=message):
            config_from_args(build_parser().parse_args(contradiction))


def test_run_pipeline_help_explains_the_flags():
    proc = subprocess.run([sys.executable, "run_pipeline.py", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--camera", "--video", "--images", "--as-fast-as-possible", "--realtime",
                 "--every-frame", "--engine",
                 "--backend", "--calib", "--fov", "--height", "--publish", "--max-frames",
                 "--log-level", "pose3d"):
        assert flag in proc.stdout
