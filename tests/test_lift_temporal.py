"""The lift stage serves temporal engines live: a 2D history per track id, resampled at the
engine's rate from capture times, padded with the first frame at a track's start; engines it
cannot serve are refused with a reason. engines/runtime/history.py's windows are checked
against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engines.runtime.history import MAX_INTERPOLATION_GAP_S, Histories, TrackHistory
from engines.runtime.skeleton import NUM_JOINTS
from pipeline.config import LiftConfig
from pipeline.schema import Keypoints2D, Person2D
from tests.test_temporal import clips, temporal_engine  # noqa: F401 (fixtures)


def _frame(x: float) -> np.ndarray:
    return np.full((NUM_JOINTS, 2), x)


def test_window_resamples_in_time_and_pads_at_the_start():
    h = TrackHistory(span_s=1.0)
    for k in range(4):  # a 50 fps camera: frames 20 ms apart, x = 10 * k
        h.add(1.0 + 0.02 * k, _frame(10.0 * k), np.full(NUM_JOINTS, 0.5 + 0.1 * k))
    joints, conf = h.window(1.06, frames=3, fps=25.0)  # 40 ms apart: t = 0.98, 1.02, 1.06
    np.testing.assert_allclose(joints[:, 0, 0], [0.0, 10.0, 30.0])  # 0.98: before the start
    np.testing.assert_allclose(conf[:, 0], [0.5, 0.6, 0.8])
    joints, _ = h.window(1.05, frames=2, fps=100.0)  # 1.04 and 1.05 between frames: blended
    np.testing.assert_allclose(joints[:, 0, 0], [20.0, 25.0])
    one = TrackHistory(span_s=1.0)
    one.add(5.0, _frame(7.0), np.ones(NUM_JOINTS))
    np.testing.assert_allclose(one.window(5.0, 27, 30.0)[0], np.repeat(_frame(7.0)[None], 27, 0))


def test_window_does_not_blend_across_a_long_gap():
    h = TrackHistory(span_s=5.0)
    h.add(0.0, _frame(0.0), np.ones(NUM_JOINTS))
    h.add(1.0, _frame(100.0), np.ones(NUM_JOINTS))  # a second later (dropped frames)
    gap = 1.0
    assert gap > MAX_INTERPOLATION_GAP_S
    joints, _ = h.window(1.0, frames=3, fps=3.0)  # 1/3, 2/3 and 1 s
    np.testing.assert_allclose(joints[:, 0, 0], [0.0, 100.0, 100.0])  # nearest, not 50


def test_histories_keep_tracks_apart_and_forget_old_ones():
    hs = Histories(span_s=1.0, forget_s=1.0)
    hs.add(1, 0.0, _frame(1.0), np.ones(NUM_JOINTS))
    hs.add(2, 0.0, _frame(2.0), np.ones(NUM_JOINTS))
    hs.add(1, 0.5, _frame(3.0), np.ones(NUM_JOINTS))
    assert hs.tracks[2].window(0.5, 2, 2.0)[0][:, 0, 0].tolist() == [2.0, 2.0]
    assert hs.tracks[1].window(0.5, 2, 2.0)[0][:, 0, 0].tolist() == [1.0, 3.0]
    assert hs.forget_before(1.2) == 1 and set(hs.tracks) == {1}
    h = hs.tracks[1]
    for k in range(100):
        h.add(1.0 + 0.1 * k, _frame(k), np.ones(NUM_JOINTS))
    assert len(h) <= 12  # bounded by the span (1 s at 10 fps, and one older frame)


# ------------------------------------------------------------------ the stage, a real engine
T_POSE_PX = np.array(
    [[320, 260], [300, 262], [298, 330], [296, 400], [340, 262], [342, 330], [344, 400],
     [320, 210], [320, 160], [320, 145], [320, 120], [350, 165], [380, 165], [410, 165],
     [290, 165], [260, 165], [230, 165]], dtype=np.float32,
)


def _kp(frame_id: int, people: dict[int, np.ndarray], t_ns: int | None = None) -> Keypoints2D:
    return Keypoints2D(
        frame_id=frame_id, t_capture_ns=t_ns if t_ns is not None else 10**9 + frame_id * 33_333_333,
        image_size=(640, 480),
        people=tuple(Person2D(track_id=tid, joints_2d_px=np.asarray(px, np.float32),
                              confidence=np.ones(NUM_JOINTS, np.float32))
                     for tid, px in people.items()))


@pytest.fixture
def stage(temporal_engine):  # noqa: F811
    from stages.lift import LiftStage

    s = LiftStage(LiftConfig(engine_path=str(temporal_engine.onnx_path), fov_deg=60.0))
    s.open()
    yield s
    s.close()


def test_a_single_image_is_its_own_history(stage, temporal_engine):  # noqa: F811
    """A track's first frame is lifted from F copies of itself: what the engine gives for a
    window of one repeated frame (the padding the trainer uses)."""
    from engines.runtime.engine import load_engine
    from engines.runtime.intrinsics import intrinsics_from_fov

    engine = load_engine(temporal_engine.onnx_path, backend="onnxruntime-cpu")
    out = stage.process(_kp(0, {7: T_POSE_PX})).people[0]
    intr = intrinsics_from_fov(60.0, 640, 480)
    enc = engine.codec.encode_full(np.repeat(T_POSE_PX[None].astype(np.float64), 9, 0),
                                   intr.fx, intr.fy, intr.cx, intr.cy)
    raw = engine.run({"joints_2d": enc.joints_2d_norm[None].astype(np.float32)})["joints_3d"]
    rel = engine.codec.to_metric(raw, 1.70, rotation_to_camera=enc.rotation_to_camera[-1:])[0]
    np.testing.assert_allclose(out.joints_3d_m - out.root_m, rel, atol=2e-4)


def test_each_track_has_its_own_history(stage):
    """Person 1 moves; person 2 stands still beside them. Person 2's pose is the same as if
    they were alone: their window never takes person 1's frames."""
    from stages.lift import LiftStage

    def raised(k: int) -> np.ndarray:  # arms going up over the frames (not a mere shift)
        px = T_POSE_PX.copy()
        px[[12, 13, 15, 16], 1] -= 6.0 * k
        return px

    moving = [raised(k) for k in range(12)]
    still = T_POSE_PX + np.array([150.0, 0.0], np.float32)
    together = [stage.process(_kp(k, {1: moving[k], 2: still})) for k in range(12)]
    alone_stage = LiftStage(stage.config)
    alone_stage.open()
    try:
        alone = [alone_stage.process(_kp(k, {2: still})) for k in range(12)]
    finally:
        alone_stage.close()
    for a, b in zip(together, alone):
        assert [p.track_id for p in a.people] == [1, 2]
        np.testing.assert_allclose(a.people[1].joints_3d_m, b.people[0].joints_3d_m, atol=1e-4)
    # and person 1's output does depend on their past: not the same as a fresh track
    fresh = stage.process(_kp(12, {99: moving[11]}))
    assert not np.allclose(fresh.people[0].joints_3d_m - fresh.people[0].root_m,
                           together[11].people[0].joints_3d_m - together[11].people[0].root_m,
                           atol=1e-3)


def test_engines_the_stage_cannot_serve_are_refused(tmp_path, temporal_engine):  # noqa: F811
    import onnx

    from stages.lift import LiftStage

    for change, message in (({"causal": False}, "future frames"),
                            ({"fps": 1000.0}, "fps"),
                            ({"receptive_field": 9, "fps": 0.5}, "fps")):
        model = onnx.load(str(temporal_engine.onnx_path))
        meta = json.loads(model.metadata_props[0].value)
        meta.update(change)
        model.metadata_props[0].value = json.dumps(meta)
        path = tmp_path / f"bad_{list(change)[-1]}.onnx"
        onnx.save(model, str(path))
        stage = LiftStage(LiftConfig(engine_path=str(path)))
        with pytest.raises(RuntimeError, match=message) as err:
            stage.open()
        assert str(path) in str(err.value)
