"""Camera math (engines/runtime/camera.py) and its torch twins (engines/training/camera_torch.py)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.runtime import camera
from engines.training import camera_torch
from engines.runtime.skeleton import NUM_JOINTS

SHARED = Path(os.environ.get("POSESTREAM_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
H36M_DIR = SHARED / "data" / "footage" / "mmpose" / "tests" / "data" / "h36m"
#: camera of each of the four mmpose Human3.6M frames, in file order
H36M_FRAME_CAMERAS = ("S1/54138969", "S5/54138969", "S7/55011271", "S8/55011271")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"shared data file missing: {path} (set POSESTREAM_SHARED to the shared folder)")
    return path


def _random_rotations(rng, n):
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q *= np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1
    return q


def test_project_unproject_round_trip():
    rng = np.random.default_rng(0)
    pts = rng.uniform([-1, -1, 2], [1, 1, 6], (5, NUM_JOINTS, 3))
    fx, fy = rng.uniform(500, 1200, 5), rng.uniform(500, 1200, 5)
    cx, cy = rng.uniform(300, 600, 5), rng.uniform(200, 500, 5)
    px = camera.project(pts, fx, fy, cx, cy)
    assert px.shape == (5, NUM_JOINTS, 2)
    # the definition, on one point
    assert px[2, 3, 0] == pytest.approx(fx[2] * pts[2, 3, 0] / pts[2, 3, 2] + cx[2])
    back = camera.unproject(px, pts[..., 2], fx, fy, cx, cy)
    np.testing.assert_allclose(back, pts, atol=1e-12)
    K = camera.intrinsic_matrix(fx, fy, cx, cy)
    hom = np.einsum("nij,npj->npi", K, pts)
    np.testing.assert_allclose(hom[..., :2] / hom[..., 2:], px, atol=1e-9)


def test_world_camera_inverse_and_relative_pose():
    rng = np.random.default_rng(1)
    R1, R2 = _random_rotations(rng, 4), _random_rotations(rng, 4)
    t1, t2 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    world = rng.normal(size=(4, 9, 3))
    cam1 = camera.world_to_camera(world, R1, t1)
    np.testing.assert_allclose(camera.camera_to_world(cam1, R1, t1), world, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(cam1[:, 0] - cam1[:, 1], axis=-1),
                               np.linalg.norm(world[:, 0] - world[:, 1], axis=-1), atol=1e-12)
    R12, t12 = camera.relative_pose(R1, t1, R2, t2)
    np.testing.assert_allclose(R12, R2 @ np.swapaxes(R1, 1, 2), atol=1e-12)
    cam2 = camera.world_to_camera(world, R2, t2)
    np.testing.assert_allclose(camera.world_to_camera(cam1, R12, t12), cam2, atol=1e-12)


def test_rotation_from_azimuth_elevation_looks_at_target_with_up_up():
    az = np.linspace(-np.pi, np.pi, 13)
    el = np.linspace(-1.2, 1.2, 13)
    R = camera.rotation_from_azimuth_elevation(az[:, None], el[None, :])
    assert R.shape == (13, 13, 3, 3)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    target = np.array([0.3, 0.9, -0.2])
    R, t = camera.look_at_extrinsics(az[:, None], el[None, :], 4.0, target)
    pts = np.stack([target, target + [0, 0.5, 0]])  # target and a point 0.5 m above it
    cam = camera.world_to_camera(np.broadcast_to(pts, (13, 13, 2, 3)), R, t)
    np.testing.assert_allclose(cam[..., 0, :], np.broadcast_to([0, 0, 4.0], (13, 13, 3)), atol=1e-12)
    assert np.all(cam[..., 1, 1] < 0)  # above in the world = up (-y) in the image
    # azimuth 0, elevation 0: on +Z looking at -Z, camera +X = world +X
    np.testing.assert_allclose(camera.rotation_from_azimuth_elevation(0.0, 0.0),
                               np.diag([1.0, -1.0, -1.0]), atol=1e-15)
    with pytest.raises(ValueError, match="elevation"):
        camera.rotation_from_azimuth_elevation(0.0, np.pi / 2)


def test_h36m_cameras_reproject_mmpose_ground_truth():
    cams = camera.h36m_cameras(SHARED)
    assert len(cams) == 44 and cams.R.shape == (44, 3, 3)
    np.testing.assert_allclose(cams.image_size_px[0], [1000, 1002])
    data = np.load(_need(H36M_DIR / "test_h36m_body3d.npz"))
    coco = json.loads(_need(H36M_DIR / "h36m_coco.json").read_text())
    picked = cams[[cams.names.index(n) for n in H36M_FRAME_CAMERAS]]
    part = data["part"][..., :2]
    # intrinsics: S is in camera coordinates
    px = camera.project(data["S"][..., :3], picked.fx, picked.fy, picked.cx, picked.cy)
    assert np.abs(px - part).max() < 3.0  # distortion ignored: 1.2 to 2.4 px on these frames
    # extrinsics: the +Z-up world joints of the COCO file, turned into our +Y-up world
    world_h36m = np.array([np.reshape(a["keypoints_3d"], (17, 4))[:, :3] for a in coco["annotations"]])
    world = world_h36m @ camera.H36M_WORLD_TO_WORLD.T
    assert 0.8 < np.median(world[:, 0, 1]) < 1.1  # pelvis height, +Y up, metres
    px_world = picked.project(world)
    assert np.abs(px_world - part).max() < 3.0
    assert np.median(np.abs(px_world - part)) < 1.0


def test_random_cameras_keep_real_poses_in_the_image():
    from engines.training.mocap import load_poses

    poses_m = load_poses(("cmu_expmap",), split="test", shared_dir=SHARED)[::4] * 1e-3
    rng = np.random.default_rng(3)
    n = len(poses_m)
    cams = camera.random_cameras(n, rng)
    assert cams.R.shape == (n, 3, 3)
    assert np.all((cams.fx >= 500) & (cams.fx <= 1200))
    px = cams.project(poses_m)
    w, h = cams.image_size_px[:, 0], cams.image_size_px[:, 1]
    assert np.all((px[..., 0] >= 0) & (px[..., 0] <= w[:, None] - 1))
    assert np.all((px[..., 1] >= 0) & (px[..., 1] <= h[:, None] - 1))
    depth = cams.world_to_camera(poses_m)[..., 2]
    assert depth.min() > 1.0
    # the subject fills a good part of the picture: median height above 25 % of the image
    height_px = px[..., 1].max(-1) - px[..., 1].min(-1)
    assert np.median(height_px / h) > 0.25
    # elevation range respected: cameras above the target look down, within 30 degrees
    centres = cams.centres_m
    elevation = np.arcsin(centres[:, 1] / np.linalg.norm(centres, axis=1))
    assert elevation.min() >= -np.pi / 18 - 1e-9 and elevation.max() <= np.pi / 6 + 1e-9


def test_multiview_rig_views_share_the_subject_with_known_relative_poses():
    rng = np.random.default_rng(4)
    rig = camera.multiview_rig(4, rng, n_rigs=3)
    assert rig.batch_shape == (3, 4)
    pose = rng.normal(0, 0.3, (NUM_JOINTS, 3))
    cams = camera.world_to_camera(np.broadcast_to(pose, (3, 4, NUM_JOINTS, 3)), rig.R, rig.t_m)
    # every view looks at the target (the origin): it lies on the optical axis
    np.testing.assert_allclose(rig.world_to_camera(np.zeros((3, 4, 1, 3)))[..., 0, :2], 0, atol=1e-9)
    R12, t12 = camera.relative_pose(rig.R[:, 0], rig.t_m[:, 0], rig.R[:, 2], rig.t_m[:, 2])
    np.testing.assert_allclose(camera.world_to_camera(cams[:, 0], R12, t12), cams[:, 2], atol=1e-9)
    # views are spread around the subject: consecutive azimuths about 90 degrees apart
    c = rig.centres_m
    az = np.arctan2(c[..., 0], c[..., 2])
    step = np.angle(np.exp(1j * np.diff(az, axis=1)))
    assert np.all(np.abs(step - np.pi / 2) <= np.pi / 4 + 1e-9)


def test_detector_noise_confidence_tracks_error():
    rng = np.random.default_rng(5)
    clean = rng.uniform(100, 500, (4000, NUM_JOINTS, 2))
    noisy, conf = camera.detector_noise(clean, rng, sigma_px=4.0, outlier_rate=0.03)
    assert noisy.shape == clean.shape and noisy.dtype == np.float32
    assert conf.shape == (4000, NUM_JOINTS) and conf.dtype == np.float32
    assert conf.min() >= 0 and conf.max() <= 1
    err = np.linalg.norm(noisy - clean, axis=-1)
    assert 3.0 < np.median(err) < 8.0  # Rayleigh median 1.18 sigma times difficulty
    assert 0.01 < np.mean(err > 30) < 0.05  # the outliers
    # wrists err more than the pelvis, as with real detectors
    assert np.median(err[:, 13]) > 1.5 * np.median(err[:, 0])
    rank = lambda a: np.argsort(np.argsort(a.ravel()))
    spearman = np.corrcoef(rank(err), rank(conf))[0, 1]
    assert spearman < -0.6
    assert np.mean(conf[err > 30]) < 0.3 < 0.8 < np.mean(conf[err < 3])


def test_torch_twins_match_numpy():
    rng = np.random.default_rng(6)
    pts = rng.uniform([-1, -1, 2], [1, 1, 6], (8, NUM_JOINTS, 3))
    R, t = _random_rotations(rng, 8), rng.normal(size=(8, 3))
    fx, fy, cx, cy = (rng.uniform(400, 1200, 8) for _ in range(4))
    T = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))
    np.testing.assert_allclose(
        camera_torch.project(T(pts), T(fx), T(fy), T(cx), T(cy)).numpy(),
        camera.project(pts, fx, fy, cx, cy), rtol=1e-12)
    np.testing.assert_allclose(camera_torch.world_to_camera(T(pts), T(R), T(t)).numpy(),
                               camera.world_to_camera(pts, R, t), atol=1e-12)
    np.testing.assert_allclose(camera_torch.camera_to_world(T(pts), T(R), T(t)).numpy(),
                               camera.camera_to_world(pts, R, t), atol=1e-12)
    for got, want in zip(camera_torch.relative_pose(T(R), T(t), T(R[::-1].copy()), T(t[::-1].copy())),
                         camera.relative_pose(R, t, R[::-1], t[::-1])):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    az, el = rng.uniform(-np.pi, np.pi, 8), rng.uniform(-1, 1, 8)
    np.testing.assert_allclose(
        camera_torch.rotation_from_azimuth_elevation(T(az), T(el)).numpy(),
        camera.rotation_from_azimuth_elevation(az, el), atol=1e-12)
    for axis in "xyz":
        np.testing.assert_allclose(camera_torch.rotation_about_axis(axis, T(az)).numpy(),
                                   camera.rotation_about_axis(axis, az), atol=1e-12)


def test_random_view_rotation_angles_in_range():
    gen = torch.Generator().manual_seed(0)
    R = camera_torch.random_view_rotation(2000, gen).double()
    np.testing.assert_allclose((R @ R.transpose(1, 2)).numpy(), np.broadcast_to(np.eye(3), (2000, 3, 3)), atol=1e-6)
    # R = Rx(el) Ry(az): row 0 = (cos az, 0, sin az); column 1 = (0, cos el, sin el)
    el = np.arctan2(R[:, 2, 1].numpy(), R[:, 1, 1].numpy())
    az = np.arctan2(R[:, 0, 2].numpy(), R[:, 0, 0].numpy())
    assert np.abs(el).max() <= np.pi / 9 + 1e-6 and np.abs(el).max() > np.pi / 9 * 0.95
    assert az.min() < -3.0 and az.max() > 3.0
