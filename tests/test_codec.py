"""Codec (numpy) against its torch twin, metadata round trip, metric scaling."""

import numpy as np
import pytest
import torch

from engines.runtime.codec import Codec, normalise_2d, stature_from_bone_lengths
from engines.training.losses import normalise_2d_torch
from engines.runtime.skeleton import BONES, NUM_JOINTS, ROOT, Joint, bone_lengths


def _pose_3d_m(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 17, 3) random but skeleton-shaped poses, metres, root-relative."""
    base = np.array([
        [0, 0, 0], [-.13, 0, 0], [-.13, .45, 0], [-.13, .9, 0], [.13, 0, 0], [.13, .45, 0],
        [.13, .9, 0], [0, -.23, 0], [0, -.48, 0], [0, -.58, 0], [0, -.7, 0], [.14, -.46, 0],
        [.14, -.2, 0], [.14, .05, 0], [-.14, -.46, 0], [-.14, -.2, 0], [-.14, .05, 0]])
    return (base[None] + rng.normal(0, 0.05, (n, NUM_JOINTS, 3))).astype(np.float32)


def _codec() -> Codec:
    lengths = bone_lengths(_pose_3d_m(np.random.default_rng(1), 1)[0])
    return Codec(canonical_bone_lengths_m=tuple(float(x) for x in lengths))


def test_numpy_and_torch_normalisation_agree():
    rng = np.random.default_rng(0)
    img = rng.normal(0, 0.2, (64, NUM_JOINTS, 2)).astype(np.float32)
    norm_np, scale_np = normalise_2d(img, 10.0)
    norm_t, scale_t = normalise_2d_torch(torch.from_numpy(img).double(), 10.0)
    np.testing.assert_allclose(norm_np, norm_t.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scale_np, scale_t.numpy(), rtol=1e-5)


def test_encode_centres_and_scales_head_root_to_one_over_c():
    rng = np.random.default_rng(2)
    codec = _codec()
    fx, fy, cx, cy = 1145.0, 1143.8, 512.5, 515.4
    px = rng.uniform(100, 600, (10, NUM_JOINTS, 2))
    px += np.array([cx, cy]) - px[:, :1]  # root on the principal point: no virtual turn
    norm = codec.encode(px, fx, fy, cx, cy)
    assert norm.dtype == np.float32 and norm.shape == (10, NUM_JOINTS, 2)
    np.testing.assert_allclose(norm[:, ROOT], 0.0, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(norm[:, Joint.HEAD], axis=-1), 0.1, rtol=1e-5)
    # root on the axis: the plain root-subtracted image coordinates up to a positive scale
    img = np.stack([(px[..., 0] - cx) / fx, (px[..., 1] - cy) / fy], -1)
    rel = img - img[:, :1]
    ratio = norm[:, Joint.L_WRIST] / rel[:, Joint.L_WRIST]
    np.testing.assert_allclose(ratio[:, 0], ratio[:, 1], rtol=1e-4)


def test_encode_per_pose_cameras_and_bad_shapes():
    codec = _codec()
    px = np.random.default_rng(3).uniform(0, 500, (3, NUM_JOINTS, 2))
    per_pose = codec.encode(px, np.array([500.0, 600, 700]), 500.0, 250.0, 250.0)
    one = codec.encode(px[1:2], 600.0, 500.0, 250.0, 250.0)
    np.testing.assert_allclose(per_pose[1], one[0], rtol=1e-6)
    with pytest.raises(ValueError, match="joints_2d_px"):
        codec.encode(px[:, :10], 1.0, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="focal"):
        codec.encode(px, 0.0, 1.0, 0.0, 0.0)


def test_metadata_round_trip_and_errors():
    codec = _codec()
    assert Codec.from_metadata(codec.to_metadata()) == codec
    meta = codec.to_metadata()
    del meta["canonical_bone_lengths_m"]
    with pytest.raises(ValueError, match="canonical_bone_lengths_m"):
        Codec.from_metadata(meta)
    with pytest.raises(ValueError, match="positive lengths"):
        Codec(canonical_bone_lengths_m=(0.1,) * 5)


def test_to_metric_recovers_scale_from_bone_lengths_and_height():
    codec = _codec()
    canonical = np.asarray(codec.canonical_bone_lengths_m)
    # a pose with exactly the canonical bone lengths, given in arbitrary units (x 0.37)
    poses = _pose_3d_m(np.random.default_rng(1), 1)
    lengths = bone_lengths(poses[0])
    assert np.allclose(lengths, canonical, rtol=1e-5)
    metric = codec.to_metric(poses * 0.37)
    np.testing.assert_allclose(metric, poses - poses[:, :1], atol=1e-6)
    # with a height: the fitted skeleton has that stature
    tall = codec.to_metric(poses * 0.37, height_m=2.0)
    assert stature_from_bone_lengths(bone_lengths(tall[0])) == pytest.approx(2.0, rel=1e-5)
    with pytest.raises(ValueError, match="height_m"):
        codec.to_metric(poses, height_m=170.0)


def test_off_centre_pose_round_trips_through_the_virtual_camera():
    """A pose far off the optical axis: encode sees it from a camera turned onto the root, and
    to_metric with the returned rotation gives the pose back in the real camera's axes."""
    codec = _codec()
    pose_rel_m = _pose_3d_m(np.random.default_rng(1), 1)[0].astype(np.float64)
    root_m = np.array([1.8, -0.4, 3.0])  # ~31 degrees right of the axis
    cam = pose_rel_m + root_m
    fx, fy, cx, cy = 900.0, 905.0, 640.0, 360.0
    px = np.stack([fx * cam[:, 0] / cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy], -1)[None]
    enc = codec.encode_full(px, fx, fy, cx, cy)
    # the virtual camera sees the root on its axis and the pose turned by R = rotation^T
    rot = enc.rotation_to_camera[0].astype(np.float64)
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-6)
    virtual = (rot.T @ cam.T).T
    np.testing.assert_allclose(virtual[0, :2], 0.0, atol=1e-6)
    proj = virtual[:, :2] / virtual[:, 2:]
    np.testing.assert_allclose(enc.joints_2d_norm[0], proj * enc.scale[0], rtol=1e-4, atol=1e-6)
    # an ideal lifter output (the virtual-frame pose in arbitrary units) comes back in metres
    ideal_units = (virtual - virtual[:1]) * 2.7
    metric = codec.to_metric(ideal_units[None], rotation_to_camera=enc.rotation_to_camera)
    np.testing.assert_allclose(metric[0], pose_rel_m - pose_rel_m[:1], atol=1e-5)
    # without the rotation the axes stay the virtual camera's: a ~31 degree error
    unturned = codec.to_metric(ideal_units[None])
    assert np.abs(unturned[0] - (pose_rel_m - pose_rel_m[:1])).max() > 0.1


def test_pixels_to_image_one_camera_or_one_per_pose_by_hand():
    """Scalars (one camera: the live path) and (B,) arrays give (u - cx) / fx, (v - cy) / fy;
    a focal length that is not positive (or NaN) is refused either way."""
    from engines.runtime.codec import pixels_to_image

    px = np.array([[[700.0, 400.0]] * NUM_JOINTS, [[640.0, 360.0]] * NUM_JOINTS])
    want = np.array([[[60 / 1000, 40 / 800]] * NUM_JOINTS, [[0.0, 0.0]] * NUM_JOINTS])
    np.testing.assert_allclose(pixels_to_image(px, 1000.0, 800, 640, 360.0), want, atol=1e-15)
    np.testing.assert_allclose(pixels_to_image(px, np.full(2, 1000.0), np.full(2, 800.0),
                                               np.full(2, 640.0), np.full(2, 360.0)), want,
                               atol=1e-15)
    for bad in (0.0, -5.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            pixels_to_image(px, bad, 800.0, 640.0, 360.0)
    with pytest.raises(ValueError, match="positive"):
        pixels_to_image(px, np.array([1000.0, -1.0]), 800.0, 640.0, 360.0)


def test_encode_and_to_metric_kernels_match_the_numpy_reference():
    """encode_full and to_metric run compiled kernels; they give what the numpy reference
    (centre_on_root, then normalise_2d; the to_metric formula written out here) gives, on
    poses all over the image with one camera per pose, including a NaN joint and a joint
    turned 90 degrees or more from the root's ray."""
    from engines.runtime.codec import centre_on_root, pixels_to_image

    codec = _codec()
    rng = np.random.default_rng(7)
    n = 300
    px = rng.uniform(0, 1280, (n, 1, 2)) + rng.normal(0, 120, (n, NUM_JOINTS, 2))
    px[5, Joint.L_WRIST] = np.nan
    fx, cx = rng.uniform(500, 1500, n), rng.uniform(300, 900, n)
    fy, cy = fx * 1.01, cx * 0.6
    enc = codec.encode_full(px, fx, fy, cx, cy)
    virtual, rotation = centre_on_root(pixels_to_image(px, fx, fy, cx, cy))
    norm, scale = normalise_2d(virtual, codec.depth_offset, codec.scale_joint)
    np.testing.assert_allclose(enc.joints_2d_norm, norm, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(enc.scale, scale, rtol=1e-6)
    np.testing.assert_allclose(enc.rotation_to_camera, rotation, atol=1e-7)
    assert np.isnan(enc.joints_2d_norm).sum() == 2 and np.isnan(enc.joints_2d_norm[5, Joint.L_WRIST]).all()

    pose = rng.normal(0, 0.05, (n, NUM_JOINTS, 3))
    child, parent = np.array([c for c, _ in BONES]), np.array([p for _, p in BONES])
    for height in (None, 1.62):
        target = codec.target_bone_lengths_m(height)
        lengths = np.linalg.norm(pose[:, child] - pose[:, parent], axis=-1)
        factor = (lengths * target).sum(-1) / (lengths * lengths).sum(-1)
        rel = (pose - pose[:, ROOT:ROOT + 1]) * factor[:, None, None]
        turned = np.einsum("bij,bkj->bki", enc.rotation_to_camera.astype(np.float64), rel)
        np.testing.assert_allclose(codec.to_metric(pose, height), rel, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(
            codec.to_metric(pose, height, rotation_to_camera=enc.rotation_to_camera), turned,
            rtol=1e-6, atol=1e-7)

    behind = px[:1].copy()
    behind[0, ROOT] = [cx[0] + 3 * fx[0], cy[0]]                 # root 72 degrees right
    behind[0, Joint.HEAD] = [cx[0] - 3 * fx[0], cy[0]]           # head 72 degrees left
    for encode in (lambda: codec.encode_full(behind, fx[0], fy[0], cx[0], cy[0]),
                   lambda: centre_on_root(pixels_to_image(behind, fx[0], fy[0], cx[0], cy[0]))):
        with pytest.raises(ValueError, match="90 degrees"):
            encode()
