"""engines/runtime/reproject.py: root translation from 2D joints (numba kernels, real Human3.6M poses)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from engines.runtime.reproject import MIN_DEPTH_M, fit_translation, fit_translation_batch, project
from engines.runtime.skeleton import NUM_JOINTS, ROOT

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSESTREAM_SHARED", REPO.parent / "shared"))
H36M_DIR = SHARED / "data/footage/mmpose/tests/data/h36m"


def _shared_file(name: str) -> Path:
    path = H36M_DIR / name
    if not path.is_file():
        pytest.fail(f"missing shared data file {path}: set POSESTREAM_SHARED to the shared folder")
    return path


@pytest.fixture(scope="module")
def h36m():
    """The four Human3.6M frames: 3D joints in camera metres, 2D px, and each camera's intrinsics."""
    data = np.load(_shared_file("test_h36m_body3d.npz"))
    with open(_shared_file("cameras.pkl"), "rb") as fh:
        cameras = pickle.load(fh)
    intrinsics = []
    for name in data["imgname"]:
        subject = str(name).split("/")[0]
        cam_id = str(name).split("/")[1].split(".")[1]
        cam = cameras[(subject, cam_id)]
        intrinsics.append((*cam["f"][:, 0], *cam["c"][:, 0]))
    joints_3d_m = data["S"][:, :, :3].astype(np.float64)
    joints_2d_px = data["part"][:, :, :2].astype(np.float64)
    return joints_3d_m, joints_2d_px, np.array(intrinsics)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation about the camera's vertical (Y) axis by up to 180 deg, tilted by up to 20 deg."""
    yaw = rng.uniform(-np.pi, np.pi)
    tilt = rng.uniform(-0.35, 0.35)
    ry = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    return rx @ ry


def _scenes(h36m, count: int, seed: int):
    """`count` (rel pose m, t m, fx, fy, cx, cy): real H3.6M poses, rotated, at random places."""
    joints_3d_m = h36m[0]
    rng = np.random.default_rng(seed)
    for i in range(count):
        rel = joints_3d_m[i % len(joints_3d_m)] - joints_3d_m[i % len(joints_3d_m), ROOT]
        rel = rel @ _random_rotation(rng).T
        depth = rng.uniform(2.0, 8.0)
        t_m = np.array([rng.uniform(-0.3, 0.3) * depth, rng.uniform(-0.2, 0.2) * depth, depth])
        fx = rng.uniform(500.0, 1500.0)
        fy = fx * rng.uniform(0.98, 1.02)
        cx, cy = rng.uniform(300.0, 700.0), rng.uniform(200.0, 500.0)
        yield rel, t_m, fx, fy, cx, cy


def test_exact_2d_recovers_translation_and_zero_error(h36m):
    worst_t_m, worst_err_px = 0.0, 0.0
    for rel, t_true, fx, fy, cx, cy in _scenes(h36m, 200, seed=1):
        pix = project(rel + t_true, fx, fy, cx, cy)
        t_m, err_px = fit_translation(rel, pix, np.ones(NUM_JOINTS), fx, fy, cx, cy)
        worst_t_m = max(worst_t_m, float(np.abs(t_m - t_true).max()))
        worst_err_px = max(worst_err_px, float(err_px.max()))
    assert worst_t_m < 1e-4
    assert worst_err_px < 1e-6


def test_float32_inputs_still_recover_translation(h36m):
    rel, t_true, fx, fy, cx, cy = next(_scenes(h36m, 1, seed=2))
    pix = project(rel + t_true, fx, fy, cx, cy)
    t_m, err_px = fit_translation(
        rel.astype(np.float32), pix.astype(np.float32), np.ones(NUM_JOINTS, np.float32), fx, fy, cx, cy
    )
    assert np.abs(t_m - t_true).max() < 1e-4  # float32 rounding of the inputs, ~1e-5 m here
    assert err_px.max() < 1e-3


def test_two_px_noise_gives_plausible_errors(h36m):
    """With N(0, 2 px) noise per axis, the RMS residual of a 3-parameter fit of 34 numbers is
    2 * sqrt(2) * sqrt(31/34) = 2.70 px per joint, and the translation stays within centimetres."""
    rng = np.random.default_rng(3)
    residuals, t_errors_m, rel_depth_errors = [], [], []
    for rel, t_true, fx, fy, cx, cy in _scenes(h36m, 300, seed=4):
        pix = project(rel + t_true, fx, fy, cx, cy) + rng.normal(0.0, 2.0, (NUM_JOINTS, 2))
        t_m, err_px = fit_translation(rel, pix, np.ones(NUM_JOINTS), fx, fy, cx, cy)
        residuals.append(err_px)
        t_errors_m.append(np.linalg.norm(t_m - t_true))
        rel_depth_errors.append(abs(t_m[2] - t_true[2]) / t_true[2])
    rms_px = float(np.sqrt(np.mean(np.square(residuals))))
    assert 2.4 < rms_px < 3.0, rms_px
    assert np.median(t_errors_m) < 0.05, np.median(t_errors_m)
    assert np.max(rel_depth_errors) < 0.05, np.max(rel_depth_errors)


def test_gauss_newton_beats_linear_start_under_noise(h36m):
    """The pixel-error refinement must not be worse than the linear start on the true cost."""
    rng = np.random.default_rng(5)
    for rel, t_true, fx, fy, cx, cy in _scenes(h36m, 50, seed=6):
        # a pose close to the camera, where the linear rows are most unequal in depth
        t_true = t_true * (1.5 / t_true[2])
        pix = project(rel + t_true, fx, fy, cx, cy) + rng.normal(0.0, 4.0, (NUM_JOINTS, 2))
        t_m, err_px = fit_translation(rel, pix, np.ones(NUM_JOINTS), fx, fy, cx, cy)
        cost_fit = np.sum(err_px**2)
        cost_true = np.sum((project(rel + t_true, fx, fy, cx, cy) - pix) ** 2)
        assert cost_fit <= cost_true + 1e-9  # the least-squares optimum is at most the truth's cost


def test_zero_weight_joints_are_ignored_and_still_reported(h36m):
    rng = np.random.default_rng(7)
    for rel, t_true, fx, fy, cx, cy in _scenes(h36m, 50, seed=8):
        pix = project(rel + t_true, fx, fy, cx, cy)
        weights = rng.uniform(0.3, 1.0, NUM_JOINTS)
        lost = rng.choice(NUM_JOINTS, size=10, replace=False)
        weights[lost] = 0.0
        pix[lost] += rng.uniform(-300.0, 300.0, (10, 2))  # wild outliers, ignored by weight 0
        t_m, err_px = fit_translation(rel, pix, weights, fx, fy, cx, cy)
        assert np.abs(t_m - t_true).max() < 1e-4
        kept = np.setdiff1d(np.arange(NUM_JOINTS), lost)
        assert err_px[kept].max() < 1e-6
        # the ignored joints still get their true reprojection error
        np.testing.assert_allclose(
            err_px[lost], np.linalg.norm(project(rel + t_true, fx, fy, cx, cy)[lost] - pix[lost], axis=-1),
            rtol=1e-6,
        )


def test_non_finite_joints_are_ignored(h36m):
    rel, t_true, fx, fy, cx, cy = next(_scenes(h36m, 1, seed=9))
    pix = project(rel + t_true, fx, fy, cx, cy)
    pix[3] = np.nan
    rel_bad = rel.copy()
    rel_bad[12, 2] = np.inf
    t_m, err_px = fit_translation(rel_bad, pix, np.ones(NUM_JOINTS), fx, fy, cx, cy)
    assert np.abs(t_m - t_true).max() < 1e-4
    assert np.isnan(err_px[3]) and np.isnan(err_px[12])
    assert np.isfinite(np.delete(err_px, [3, 12])).all()


@pytest.mark.parametrize("usable", [0, 1])
def test_too_few_joints_flag_nan(h36m, usable):
    rel, t_true, fx, fy, cx, cy = next(_scenes(h36m, 1, seed=10))
    pix = project(rel + t_true, fx, fy, cx, cy)
    weights = np.zeros(NUM_JOINTS)
    weights[:usable] = 1.0
    t_m, err_px = fit_translation(rel, pix, weights, fx, fy, cx, cy)
    assert t_m.shape == (3,) and np.isnan(t_m).all()
    assert err_px.shape == (NUM_JOINTS,) and np.isnan(err_px).all()


def test_two_joints_are_enough(h36m):
    rel, t_true, fx, fy, cx, cy = next(_scenes(h36m, 1, seed=11))
    pix = project(rel + t_true, fx, fy, cx, cy)
    weights = np.zeros(NUM_JOINTS)
    weights[[3, 10]] = 1.0  # ankle and head
    t_m, _ = fit_translation(rel, pix, weights, fx, fy, cx, cy)
    assert np.abs(t_m - t_true).max() < 1e-4


def test_never_returns_a_joint_behind_the_camera(h36m):
    """2D joints that only a pose behind the camera explains: the fit is flagged NaN or stays in
    front of the camera with large reported errors; it never silently returns a negative depth."""
    rng = np.random.default_rng(12)
    outcomes = {"nan": 0, "in_front": 0}
    scenes = list(_scenes(h36m, 40, seed=13))
    assert len(scenes) == 40
    for rel, t_true, fx, fy, cx, cy in scenes:
        behind = t_true * np.array([1.0, 1.0, -1.0])
        assert (rel + behind)[:, 2].max() < 0.0  # the scene really is behind the camera
        pix = project(rel + behind, fx, fy, cx, cy) + rng.normal(0.0, 1.0, (NUM_JOINTS, 2))
        t_m, err_px = fit_translation(rel, pix, np.ones(NUM_JOINTS), fx, fy, cx, cy)
        if np.isnan(t_m).any():
            assert np.isnan(err_px).all()
            outcomes["nan"] += 1
        else:
            assert (rel[:, 2] + t_m[2]).min() >= MIN_DEPTH_M
            # the best pose in front of the camera cannot explain these points, and says so
            # (measured: median error 26 to 77+ px per pose)
            assert np.median(err_px) > 10.0, np.median(err_px)
            outcomes["in_front"] += 1
    print("behind the camera: fit outcomes", outcomes)  # either is right; both were checked


def test_restart_when_the_linear_start_is_behind_the_camera(h36m):
    """A pose 0.3 m from the camera with noisy 2D: whatever the linear start does, the result
    keeps every joint in front of the camera and fits the 2D about as well as the truth."""
    rng = np.random.default_rng(16)
    for rel, _, fx, fy, cx, cy in _scenes(h36m, 30, seed=17):
        t_true = np.array([0.0, 0.0, 0.3 - rel[:, 2].min()])  # nearest joint 0.3 m away
        pix = project(rel + t_true, fx, fy, cx, cy) + rng.normal(0.0, 2.0, (NUM_JOINTS, 2))
        t_m, err_px = fit_translation(rel, pix, np.ones(NUM_JOINTS), fx, fy, cx, cy)
        assert (rel[:, 2] + t_m[2]).min() >= MIN_DEPTH_M
        cost_true = np.sum((project(rel + t_true, fx, fy, cx, cy) - pix) ** 2)
        assert np.sum(err_px**2) <= cost_true + 1e-6


def test_real_h36m_frames_root_within_one_percent_of_depth(h36m):
    """Real Human3.6M ground truth: root-relative 3D + the dataset's 2D (projected with lens
    distortion, which the pinhole fit ignores) gives back the true root."""
    joints_3d_m, joints_2d_px, intrinsics = h36m
    for pose_m, pix, (fx, fy, cx, cy) in zip(joints_3d_m, joints_2d_px, intrinsics):
        rel = pose_m - pose_m[ROOT]
        t_m, err_px = fit_translation(rel, pix, np.ones(NUM_JOINTS), fx, fy, cx, cy)
        # measured: lateral <= 3 mm, depth +2 to +6 cm at 4.7-6.6 m (0.4-0.9 %), residual <= 1 px
        assert np.abs(t_m[:2] - pose_m[ROOT, :2]).max() < 0.01, (t_m, pose_m[ROOT])
        assert abs(t_m[2] - pose_m[ROOT, 2]) < 0.015 * pose_m[ROOT, 2], (t_m, pose_m[ROOT])
        assert err_px.max() < 1.5, err_px


def test_batch_matches_single(h36m):
    scenes = list(_scenes(h36m, 20, seed=14))
    rng = np.random.default_rng(15)
    rel = np.stack([s[0] for s in scenes])
    pix = np.stack([project(s[0] + s[1], *s[2:]) for s in scenes]) + rng.normal(0, 2.0, (20, NUM_JOINTS, 2))
    weights = rng.uniform(0.0, 1.0, (20, NUM_JOINTS))
    weights[0] = 0.0  # one degenerate row in the batch stays NaN and does not disturb the rest
    fx, fy, cx, cy = (np.array([s[k] for s in scenes]) for k in range(2, 6))
    t_batch, err_batch = fit_translation_batch(rel, pix, weights, fx, fy, cx, cy)
    assert np.isnan(t_batch[0]).all()
    for i in range(1, 20):
        t_m, err_px = fit_translation(rel[i], pix[i], weights[i], fx[i], fy[i], cx[i], cy[i])
        np.testing.assert_allclose(t_batch[i], t_m, rtol=0, atol=1e-12)
        np.testing.assert_allclose(err_batch[i], err_px, rtol=0, atol=1e-9)


def test_bad_arguments_raise_clear_errors(h36m):
    rel = h36m[0][0] - h36m[0][0, ROOT]
    pix = np.zeros((NUM_JOINTS, 2))
    ones = np.ones(NUM_JOINTS)
    with pytest.raises(ValueError, match=r"joints_3d_rel_m must have shape \(17, 3\)"):
        fit_translation(rel[:16], pix, ones, 1000, 1000, 500, 500)
    with pytest.raises(ValueError, match=r"joints_2d_px must have shape \(17, 2\)"):
        fit_translation(rel, pix.T, ones, 1000, 1000, 500, 500)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        fit_translation(rel, pix, -ones, 1000, 1000, 500, 500)
    with pytest.raises(ValueError, match="positive focal lengths"):
        fit_translation(rel, pix, ones, 0.0, 1000, 500, 500)
    with pytest.raises(ValueError, match="positive focal lengths"):
        fit_translation_batch(rel[None], pix[None], ones[None], [1000.0], [np.nan], 500, 500)
    for bad in ((np.nan, 1000.0, 500.0, 500.0), (1000.0, 1000.0, np.inf, 500.0),
                (1000.0, -1.0, 500.0, 500.0)):  # scalars: the live path's one camera
        with pytest.raises(ValueError, match="positive focal lengths"):
            fit_translation_batch(rel[None], pix[None], ones[None], *bad)
