"""stages/smooth.py: the numba One Euro filter and SmoothStage, on synthetic trajectories.

Figures asserted: agreement with a plain-Python One Euro reference (1e-6 m), jitter
reduction on a noisy slow trajectory (std of frame-to-frame differences), lag after a step,
resets. Timestamps are uneven on purpose: the filter must use them, not a fixed rate.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from engines.runtime.skeleton import NUM_JOINTS, ROOT
from pipeline.config import DetectConfig, LiftConfig, SmoothConfig, TrackConfig
from pipeline.schema import Frame, Person3D, Pose3D
from stages.smooth import RESET_AFTER_GAP_S, OneEuroFilter, SmoothStage, limit_speed
from stages.track import TrackStage

MIN_CUTOFF, BETA, D_CUTOFF = 0.1, 40.0, 1.0  # MediaPipe world-landmark settings


def reference_one_euro(xs: np.ndarray, ts: np.ndarray, min_cutoff, beta, d_cutoff) -> np.ndarray:
    """The One Euro formula, scalar by scalar, in plain Python. xs: (T, N); ts: (T,) s."""

    def alpha(cutoff, dt):
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    out = np.empty_like(xs, dtype=np.float64)
    for i in range(xs.shape[1]):
        x_prev = x_hat = float(xs[0, i])
        dx_hat = 0.0
        out[0, i] = x_hat
        for k in range(1, xs.shape[0]):
            dt = float(ts[k] - ts[k - 1])
            x = float(xs[k, i])
            dx = (x - x_prev) / dt
            dx_hat = alpha(d_cutoff, dt) * dx + (1 - alpha(d_cutoff, dt)) * dx_hat
            cutoff = min_cutoff + beta * abs(dx_hat)
            x_hat = alpha(cutoff, dt) * x + (1 - alpha(cutoff, dt)) * x_hat
            x_prev = x
            out[k, i] = x_hat
    return out


def uneven_times_s(n: int, rng: np.random.Generator, fps: float = 30.0) -> np.ndarray:
    """(n,) increasing capture times, s: nominal 1/fps with +-30 % jitter."""
    dts = (1.0 / fps) * rng.uniform(0.7, 1.3, size=n)
    return np.cumsum(dts)


def noisy_trajectory(rng, n=300, noise_m=0.01):
    """(n, 17, 3) slow sinusoidal motion (0.25 Hz, 0.2 m) + white noise, and the clean one."""
    ts = uneven_times_s(n, rng)
    base = rng.uniform(-0.5, 0.5, size=(NUM_JOINTS, 3))
    wave = np.sin(2 * np.pi * 0.25 * ts)[:, None, None]
    clean = base[None] + 0.2 * wave * np.array([1.0, 0.5, 0.2])
    noisy = clean + rng.normal(0.0, noise_m, size=clean.shape)
    return ts, clean, noisy


def run_filter(filt, xs, ts):
    return np.stack([filt.filter(x, t) for x, t in zip(xs, ts)])


def jitter(xs: np.ndarray) -> float:
    """std of frame-to-frame differences, same unit as xs."""
    return float(np.std(np.diff(xs, axis=0)))


def test_numba_filter_matches_plain_python_reference():
    rng = np.random.default_rng(0)
    ts, _, noisy = noisy_trajectory(rng, n=200)
    flat = noisy.reshape(len(ts), -1)
    ours = run_filter(OneEuroFilter(MIN_CUTOFF, BETA, D_CUTOFF), noisy, ts).reshape(len(ts), -1)
    ref = reference_one_euro(flat, ts, MIN_CUTOFF, BETA, D_CUTOFF)
    assert np.max(np.abs(ours - ref)) < 1e-6
    # and with other settings, so the parameters really reach the kernel
    ours2 = run_filter(OneEuroFilter(1.0, 0.5, 2.0), noisy, ts).reshape(len(ts), -1)
    ref2 = reference_one_euro(flat, ts, 1.0, 0.5, 2.0)
    assert np.max(np.abs(ours2 - ref2)) < 1e-6
    assert np.max(np.abs(ours2 - ours)) > 1e-3


def test_filter_lowers_jitter_by_a_stated_factor():
    rng = np.random.default_rng(1)
    ts, clean, noisy = noisy_trajectory(rng, n=300, noise_m=0.01)
    smooth = run_filter(OneEuroFilter(MIN_CUTOFF, BETA, D_CUTOFF), noisy, ts)
    factor = jitter(noisy) / jitter(smooth)
    print(f"One Euro (0.1, 40, 1.0): jitter {jitter(noisy)*1000:.2f} -> "
          f"{jitter(smooth)*1000:.2f} mm per frame, factor {factor:.2f}")
    assert factor > 1.6  # measured 1.88 for 1 cm white noise at ~30 fps (seed 1)
    # smoothing must not pull the pose away from the truth: error no worse than the noise
    err_noisy = np.sqrt(np.mean((noisy - clean)[30:] ** 2))
    err_smooth = np.sqrt(np.mean((smooth - clean)[30:] ** 2))
    assert err_smooth < err_noisy


def test_lag_after_a_step_is_bounded():
    """A 0.3 m jump (a fast move): the output is within 1 cm of it after 0.2 s."""
    rng = np.random.default_rng(2)
    ts = uneven_times_s(60, rng)
    xs = np.zeros((60, NUM_JOINTS, 3))
    step_at = 20
    xs[step_at:] += 0.3
    smooth = run_filter(OneEuroFilter(MIN_CUTOFF, BETA, D_CUTOFF), xs, ts)
    after = ts >= ts[step_at] + 0.2
    assert np.max(np.abs(smooth[after] - 0.3)) < 0.01
    # it is a filter, not a pass-through: the first output after the step lags
    assert np.max(np.abs(smooth[step_at] - 0.3)) > 0.01
    # a far stiffer filter (no speed term) lags much longer: beta is doing the work
    stiff = run_filter(OneEuroFilter(MIN_CUTOFF, 0.0, D_CUTOFF), xs, ts)
    assert np.max(np.abs(stiff[after] - 0.3)) > 0.1


def test_reset_and_non_increasing_time():
    filt = OneEuroFilter(MIN_CUTOFF, BETA, D_CUTOFF)
    filt.filter(np.zeros(3), 0.0)
    out = filt.filter(np.ones(3), 0.033)
    assert np.all(out < 1.0)
    held = filt.filter(np.full(3, 5.0), 0.033)  # same timestamp: output held
    np.testing.assert_array_equal(held, out)
    filt.reset()
    assert not filt.initialised
    np.testing.assert_array_equal(filt.filter(np.full(3, 2.0), 0.066), np.full(3, 2.0))
    with pytest.raises(ValueError, match="non-finite"):
        filt.filter(np.array([0.0, np.nan, 0.0]), 0.1)
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroFilter(0.0, 1.0, 1.0)


# --------------------------------------------------------------------------- the stage
def make_person(track_id, rel_m, root_m) -> Person3D:
    rel_m = np.asarray(rel_m, np.float32)
    root_m = np.asarray(root_m, np.float32)
    return Person3D(
        track_id=track_id, joints_3d_m=rel_m + root_m, root_m=root_m,
        joints_2d_px=np.zeros((NUM_JOINTS, 2), np.float32),
        confidence=np.full(NUM_JOINTS, 0.9, np.float32),
        reproj_err_px=np.zeros(NUM_JOINTS, np.float32),
    )


def make_pose(frame_id, t_ns, rel_m=None, root_m=None, present=True, track_id=1,
              people=None) -> Pose3D:
    """A frame with one person (track_id; nobody when present is False), or `people`."""
    if people is None:
        people = (make_person(track_id, rel_m, root_m),) if present else ()
    return Pose3D(frame_id=frame_id, t_capture_ns=int(t_ns), image_size=(640, 480),
                  people=tuple(people), engine_id="abc123def456")


@pytest.fixture
def stage():
    s = SmoothStage(SmoothConfig())
    s.open()
    yield s
    s.close()


def test_stage_smooths_pose_and_root_with_capture_times(stage):
    rng = np.random.default_rng(3)
    ts, _, noisy_rel = noisy_trajectory(rng, n=120)
    noisy_rel -= noisy_rel[:, ROOT : ROOT + 1]
    root = np.array([0.1, 0.2, 4.0]) + rng.normal(0, 0.02, size=(len(ts), 3))
    t0_ns = 10**12  # an arbitrary monotonic clock reading
    outs = [
        stage.process(make_pose(i, t0_ns + round(t * 1e9), noisy_rel[i], root[i]))
        for i, t in enumerate(ts)
    ]
    assert all(len(o.people) == 1 and o.people[0].track_id == 1 for o in outs)
    joints = np.stack([o.people[0].joints_3d_m for o in outs]).astype(np.float64)
    roots = np.stack([o.people[0].root_m for o in outs]).astype(np.float64)
    assert all(o.people[0].joints_3d_m.dtype == np.float32 for o in outs)
    # the root joint stays on the root translation
    np.testing.assert_allclose(joints[:, ROOT], roots, atol=1e-5)
    # same numbers as the reference on the stage's own split (relative pose, root)
    rel_in = noisy_rel.reshape(len(ts), -1)
    ts_msg = np.array([(t0_ns + round(t * 1e9)) * 1e-9 for t in ts])
    cfg = stage.config  # SmoothConfig's defaults: the settings after a single-frame engine
    ref_rel = reference_one_euro(rel_in, ts_msg, cfg.min_cutoff, cfg.beta, cfg.d_cutoff)
    ref_root = reference_one_euro(root, ts_msg, cfg.min_cutoff, cfg.beta, cfg.d_cutoff)
    np.testing.assert_allclose(roots, ref_root, atol=1e-5)
    np.testing.assert_allclose((joints - roots[:, None]).reshape(len(ts), -1), ref_rel, atol=1e-5)
    assert jitter(joints) < 0.6 * jitter(noisy_rel + root[:, None])


def test_stage_filters_each_track_apart_and_starts_new_ids_afresh(stage):
    rel = np.zeros((NUM_JOINTS, 3))
    rel[1:] = 0.3
    t_ns = 10**12
    stage.process(make_pose(0, t_ns, rel, [0, 0, 3.0]))
    moved = stage.process(make_pose(1, t_ns + 33_000_000, rel, [0, 0, 4.0])).people[0]
    assert 3.0 < moved.root_m[2] < 4.0  # smoothed, not passed through
    # nobody for one frame: passes through; the same id right after goes on smoothly
    assert stage.process(make_pose(2, t_ns + 66_000_000, present=False)).people == ()
    back = stage.process(make_pose(3, t_ns + 99_000_000, rel, [0, 0, 5.0])).people[0]
    assert moved.root_m[2] < back.root_m[2] < 5.0
    # another id (a new person) where track 1 was: its own, fresh filter, never a blend
    other = stage.process(make_pose(4, t_ns + 132_000_000, rel, [0, 0, 9.0], track_id=2))
    assert other.people[0].track_id == 2
    assert other.people[0].root_m[2] == pytest.approx(9.0, abs=1e-6)
    # two people in one frame: each filter sees only its own track
    both = stage.process(make_pose(5, t_ns + 165_000_000, people=(
        make_person(1, rel, [0, 0, 5.0]), make_person(2, rel, [0, 0, 9.0]))))
    assert [p.track_id for p in both.people] == [1, 2]
    assert 4.0 < both.people[0].root_m[2] < 5.0
    assert both.people[1].root_m[2] == pytest.approx(9.0, abs=1e-6)
    assert stage.tracks_started == 2


def test_stage_starts_afresh_after_a_gap_and_drops_ended_tracks(stage):
    rel = np.zeros((NUM_JOINTS, 3))
    rel[1:] = 0.3
    t_ns = 10**12
    stage.process(make_pose(0, t_ns, rel, [0, 0, 3.0]))
    stage.process(make_pose(1, t_ns + 33_000_000, rel, [0, 0, 3.5]))
    # a long gap in capture time: the same id starts afresh
    gap_ns = round((RESET_AFTER_GAP_S + 0.1) * 1e9)
    after_gap = stage.process(make_pose(2, t_ns + 33_000_000 + gap_ns, rel, [0, 0, 2.0]))
    assert after_gap.people[0].root_m[2] == pytest.approx(2.0, abs=1e-6)
    assert stage.resets == 1
    # track 1 unseen for longer than the gap while track 3 goes on: track 1's filters go
    t2 = t_ns + 33_000_000 + gap_ns
    for k in range(1, 25):
        stage.process(make_pose(2 + k, t2 + k * 33_000_000, rel, [0, 0, 6.0], track_id=3))
    assert stage.tracks_ended == 1 and stage.tracks_started == 2


def test_limit_speed_cuts_a_step_to_the_speed_along_its_direction():
    prev = np.array([0.0, 0.0, 5.0])
    cut, was_cut = limit_speed(prev, np.array([0.0, 0.6, 5.8]), 0.02, 12.0)  # 1 m in 20 ms
    assert was_cut
    assert np.linalg.norm(cut - prev) == pytest.approx(0.24)  # 12 m/s x 0.02 s
    assert np.allclose((cut - prev) / 0.24, [0.0, 0.6, 0.8])  # same direction
    walk, was_cut = limit_speed(prev, np.array([0.0, 0.0, 5.03]), 0.02, 12.0)  # 1.5 m/s
    assert not was_cut and walk[2] == pytest.approx(5.03)


def test_the_root_never_moves_faster_than_max_root_speed(stage):
    """A root that jumps 1 m in depth for one frame (what monocular lifting does to a far
    person) moves at most 12 m/s x 20 ms = 0.24 m a frame in the output and is counted;
    a person walking at 1.5 m/s is not touched."""
    rel = np.zeros((NUM_JOINTS, 3))
    t_ns, period_ns = 10**12, 20_000_000  # 50 fps
    depths = [6.0] * 10 + [7.0] + [6.0] * 10
    out = [stage.process(make_pose(k, t_ns + k * period_ns, rel, [0, 0, z])).people[0].root_m
           for k, z in enumerate(depths)]
    steps = np.linalg.norm(np.diff(np.array(out), axis=0), axis=1)
    print(f"root steps, m: {np.round(steps, 3).tolist()}; limited {stage.root_steps_limited}")
    assert steps.max() <= 0.24 + 1e-5
    assert stage.root_steps_limited >= 1
    walker = SmoothStage(SmoothConfig())
    walker.open()
    for k in range(50):
        walker.process(make_pose(k, t_ns + k * period_ns, rel, [0, 0, 5.0 + 0.03 * k]))
    assert walker.root_steps_limited == 0


def test_stage_disabled_passes_through():
    s = SmoothStage(SmoothConfig(enabled=False))
    s.open()
    rel = np.ones((NUM_JOINTS, 3)) * 0.2
    s.process(make_pose(0, 10**9, rel, [0, 0, 3.0]))
    out = s.process(make_pose(1, 10**9 + 33_000_000, rel, [0, 0, 4.0]))
    assert out.people[0].root_m[2] == pytest.approx(4.0)
    s.close()


# --------------------------------------------------------------------------- real video
SHARED = Path(os.environ.get("POSESTREAM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
STREET_VIDEO = SHARED / "data" / "footage" / "openpose" / "examples" / "media" / "video.avi"


def test_stage_on_real_lifted_poses_of_the_street_video():
    """Detect + lift (real mediapipe, real engine) on 100 frames of the street video, then the
    smoother: frame-to-frame jitter of the root-relative joints of the person seen longest
    (one track id) goes down while the smoothed pose stays near the raw one."""
    import cv2

    from stages.detect import DetectStage
    from stages.lift import LiftStage

    if not STREET_VIDEO.is_file():
        pytest.fail(f"missing shared data file {STREET_VIDEO}; set POSESTREAM_SHARED")
    cap = cv2.VideoCapture(str(STREET_VIDEO))
    fps = cap.get(cv2.CAP_PROP_FPS)
    assert fps == pytest.approx(50.0)
    detect, track, lift = (DetectStage(DetectConfig()), TrackStage(TrackConfig()),
                           LiftStage(LiftConfig()))
    smooth = SmoothStage(SmoothConfig())
    raw, smoothed = {}, {}
    try:
        for stage in (detect, track, lift, smooth):
            stage.open()
        for i in range(100):
            ok, image = cap.read()
            assert ok, f"could not read frame {i} of {STREET_VIDEO}"
            frame = Frame(frame_id=i, t_capture_ns=10**9 + round(i / fps * 1e9), image=image)
            pose = lift.process(track.process(detect.process(frame)))
            out = smooth.process(pose)
            assert [p.track_id for p in out.people] == [p.track_id for p in pose.people]
            for p, o in zip(pose.people, out.people):
                raw.setdefault(p.track_id, []).append(p.joints_3d_m - p.root_m)
                smoothed.setdefault(p.track_id, []).append(o.joints_3d_m - o.root_m)
    finally:
        cap.release()
        for stage in (detect, track, lift, smooth):
            stage.close()
    main = max(raw, key=lambda tid: len(raw[tid]))
    raw, smoothed = raw[main], smoothed[main]
    # seen: track 1 in 79 of the 100 frames (PoseLandmarker loses her for a few frames twice)
    assert len(raw) >= 70, f"the main person (track {main}) in only {len(raw)} of 100 frames"
    raw_m, smooth_m = np.asarray(raw, np.float64), np.asarray(smoothed, np.float64)
    factor = jitter(raw_m) / jitter(smooth_m)
    deviation_mm = float(np.mean(np.linalg.norm(raw_m - smooth_m, axis=-1))) * 1000
    print(f"street video, {len(raw)} poses: jitter {jitter(raw_m)*1000:.1f} -> "
          f"{jitter(smooth_m)*1000:.1f} mm/frame (x{factor:.2f}), mean |smooth - raw| "
          f"{deviation_mm:.1f} mm, resets {smooth.resets}")
    assert factor > 1.15
    assert deviation_mm < 40.0


def test_stage_passes_non_finite_poses_on_and_starts_afresh(stage):
    rel = np.full((NUM_JOINTS, 3), 0.2)
    rel[ROOT] = 0.0
    stage.process(make_pose(0, 10**12, rel, [0, 0, 3.0]))
    bad = rel.copy()
    bad[5, 1] = np.nan
    out = stage.process(make_pose(1, 10**12 + 33_000_000, bad, [0, 0, 3.1])).people[0]
    assert np.isnan(out.joints_3d_m[5, 1])  # not hidden, not smoothed into the state
    after = stage.process(make_pose(2, 10**12 + 66_000_000, rel, [0, 0, 3.5])).people[0]
    assert after.root_m[2] == pytest.approx(3.5, abs=1e-6)  # a fresh start
