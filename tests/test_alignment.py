"""Aligning 3D poses: the similarity Procrustes of the metrics and the fusion of several views'
lifts into one shape, against answers built by hand (known rotations, scales, depth errors)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from engines.runtime.skeleton import NUM_JOINTS, ROOT
from engines.training.alignment import fuse_views, procrustes_aligned


def _poses(n: int, rng) -> np.ndarray:
    x = rng.normal(0, 0.3, (n, NUM_JOINTS, 3))
    return x - x[:, ROOT : ROOT + 1]


def _views(truth: np.ndarray, v: int, rng, depth_err: float):
    """Each view: the truth turned by a random rotation and scaled, then an error along that
    view's own depth axis only (a lifter's ambiguity), as a lifter in that camera would give."""
    n = len(truth)
    rots = Rotation.random(n * v, random_state=rng).as_matrix().reshape(n, v, 3, 3)
    scales = rng.uniform(0.5, 2.0, (n, v))
    out = np.einsum("nvij,nkj->nvki", rots, truth) * scales[..., None, None]
    out[..., 2] += rng.normal(0, depth_err, out.shape[:-1]) * scales[..., None]
    return out - out[:, :, ROOT : ROOT + 1], rots, scales


def test_views_without_error_fuse_into_view_zero_exactly():
    rng = np.random.default_rng(0)
    truth = _poses(20, rng)
    lifts, _, _ = _views(truth, 4, rng, depth_err=0.0)
    fused = fuse_views(lifts)
    assert fused.shape == (20, NUM_JOINTS, 3)
    np.testing.assert_allclose(fused, lifts[:, 0], atol=1e-9)
    np.testing.assert_allclose(fuse_views(lifts[:, :1]), lifts[:, 0], atol=1e-12)


def test_fusing_views_undoes_each_views_depth_error():
    """Depth errors of 0.1 per joint in each view: the fused shape, in view 0's axes and scale,
    is nearer the truth seen by view 0 than view 0's own lift, and nearer with more views."""
    rng = np.random.default_rng(1)
    truth = _poses(200, rng)
    lifts, rots, scales = _views(truth, 6, rng, depth_err=0.1)
    seen_by_0 = np.einsum("nij,nkj->nki", rots[:, 0], truth) * scales[:, 0, None, None]

    def error(pred):   # per joint, in units of the truth (view 0's scale divided out)
        return float(np.mean(np.linalg.norm(pred - seen_by_0, axis=-1) / scales[:, 0, None]))

    one, two, six = error(lifts[:, 0]), error(fuse_views(lifts[:, :2])), error(fuse_views(lifts))
    print(f"mean joint error: 1 view {one:.4f}, 2 views {two:.4f}, 6 views {six:.4f}")
    # root-relative: a joint's error is the difference of two N(0, 0.1), the root's is 0
    expected_one = (NUM_JOINTS - 1) / NUM_JOINTS * 0.1 * np.sqrt(2) * np.sqrt(2 / np.pi)
    assert one == pytest.approx(expected_one, rel=0.05)
    assert two < 0.85 * one and six < 0.6 * one, (one, two, six)


def test_procrustes_undoes_a_known_similarity_transform():
    rng = np.random.default_rng(2)
    gt = _poses(10, rng)
    rot = Rotation.random(10, random_state=rng).as_matrix()
    moved = 1.7 * np.einsum("nij,nkj->nki", rot, gt) + rng.normal(0, 1, (10, 1, 3))
    np.testing.assert_allclose(procrustes_aligned(moved, gt), gt, atol=1e-9)
