"""Root translation from 2D joints: place a root-relative 3D skeleton in the camera (numba).

The lifter gives a root-relative pose in metres; the detector gives the same joints in pixels.
`fit_translation` finds the root translation t (camera frame, OpenCV axes: +X right, +Y down,
+Z forward, metres) such that projecting `joints + t` through the pinhole camera
(fx, fy, cx, cy) best matches the 2D joints, in the weighted least-squares sense on the pixel
error:

    minimise  sum_j w_j * || project(X_j + t) - p_j ||^2      subject to Z_j + t_z > 0

1. Linear start (DLT-style): u = fx (X + tx) / (Z + tz) + cx is linear in t once multiplied
   out: tx - x_n tz = x_n Z - X with x_n = (u - cx) / fx (likewise y). Each joint gives two rows;
   the weighted 3x3 normal equations are solved in closed form. Exact for a perfect skeleton.
2. Gauss-Newton on the true pixel error (a linear row's residual is the pixel error times that
   joint's depth, so the linear fit over-weights far joints), with step halving so the cost
   never rises and every used joint stays at depth >= MIN_DEPTH_M. If the linear start puts a
   joint behind that (noisy or impossible 2D), Gauss-Newton restarts from a similar-triangles
   guess instead; the result then stays in front of the camera and its large per-joint errors
   say how badly the 2D is explained.

Degenerate input (fewer than two usable joints, all weights zero, a singular system, no
feasible start) returns NaN for the translation and every error: NaN is the "no fit" flag,
never an exception and never a silent negative depth. Joints whose inputs are not finite are
ignored (treated as weight zero) and get NaN error.

Runtime module: numpy and numba only, never torch.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from numba import njit

from engines.runtime.skeleton import NUM_JOINTS

logger = logging.getLogger(__name__)

#: Nearest a used joint may be to the camera along +Z, metres: the fit is constrained to keep
#: every weighted joint at least this far in front (a person nearer than 5 cm is no person).
MIN_DEPTH_M: float = 0.05
#: Most Gauss-Newton iterations after the linear start; the step tolerance below usually stops
#: it after a few (a 3-parameter problem that starts near its optimum).
GAUSS_NEWTON_ITERS: int = 10
#: Stop when a Gauss-Newton step moves t by less than this, metres.
STEP_TOL_M: float = 1e-10
#: A 3x3 normal matrix whose determinant is below this fraction of (trace / 3)^3 is singular.
_REL_DET_TOL: float = 1e-12


@njit(cache=True)
def _solve3(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> bool:
    """Solve the symmetric 3x3 system a @ out = b by Cramer's rule; False if singular."""
    det = (
        a[0, 0] * (a[1, 1] * a[2, 2] - a[1, 2] * a[2, 1])
        - a[0, 1] * (a[1, 0] * a[2, 2] - a[1, 2] * a[2, 0])
        + a[0, 2] * (a[1, 0] * a[2, 1] - a[1, 1] * a[2, 0])
    )
    scale = (a[0, 0] + a[1, 1] + a[2, 2]) / 3.0
    if not np.isfinite(det) or scale <= 0.0 or abs(det) <= _REL_DET_TOL * scale * scale * scale:
        return False
    for k in range(3):
        m = a.copy()
        for r in range(3):
            m[r, k] = b[r]
        out[k] = (
            m[0, 0] * (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1])
            - m[0, 1] * (m[1, 0] * m[2, 2] - m[1, 2] * m[2, 0])
            + m[0, 2] * (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0])
        ) / det
    return True


@njit(cache=True)
def _cost(joints, pix, w, fx, fy, cx, cy, t) -> float:
    """Weighted squared pixel error of joints + t; +inf when a used joint is behind MIN_DEPTH_M."""
    total = 0.0
    for j in range(joints.shape[0]):
        if w[j] <= 0.0:
            continue
        z = joints[j, 2] + t[2]
        if z < MIN_DEPTH_M:
            return np.inf
        du = fx * (joints[j, 0] + t[0]) / z + cx - pix[j, 0]
        dv = fy * (joints[j, 1] + t[1]) / z + cy - pix[j, 1]
        total += w[j] * (du * du + dv * dv)
    return total


@njit(cache=True)
def _fit_one(joints, pix, weights, fx, fy, cx, cy, t_out, err_out) -> None:
    """Kernel of `fit_translation` for one pose; writes t_out (3,) and err_out (J,), float64."""
    n = joints.shape[0]
    w = np.zeros(n)
    used = 0
    for j in range(n):
        ok = np.isfinite(weights[j]) and weights[j] > 0.0
        for k in range(3):
            ok = ok and np.isfinite(joints[j, k])
        for k in range(2):
            ok = ok and np.isfinite(pix[j, k])
        if ok:
            w[j] = weights[j]
            used += 1
    t_out[:] = np.nan
    err_out[:] = np.nan
    if used < 2:
        return

    # 1. Linear start. Rows scaled by the focal length so both axes are in (roughly) pixels.
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for j in range(n):
        if w[j] <= 0.0:
            continue
        xn = (pix[j, 0] - cx) / fx
        yn = (pix[j, 1] - cy) / fy
        # row x: fx * [1, 0, -xn] . t = fx * (xn Z - X); row y: fy * [0, 1, -yn] . t = ...
        fx2 = w[j] * fx * fx
        fy2 = w[j] * fy * fy
        rx = xn * joints[j, 2] - joints[j, 0]
        ry = yn * joints[j, 2] - joints[j, 1]
        a[0, 0] += fx2
        a[0, 2] -= fx2 * xn
        a[1, 1] += fy2
        a[1, 2] -= fy2 * yn
        a[2, 2] += fx2 * xn * xn + fy2 * yn * yn
        b[0] += fx2 * rx
        b[1] += fy2 * ry
        b[2] -= fx2 * xn * rx + fy2 * yn * ry
    a[2, 0] = a[0, 2]
    a[2, 1] = a[1, 2]
    t = np.zeros(3)
    if not _solve3(a, b, t):
        return
    cost = _cost(joints, pix, w, fx, fy, cx, cy, t)
    if not np.isfinite(cost):
        # The linear solution put a joint behind the camera (noisy or mirrored input). Restart
        # from similar triangles: the used joints' centroid on its ray, at the depth where the
        # 3D and 2D spreads about the centroids agree.
        wsum = 0.0
        c3 = np.zeros(3)
        c2 = np.zeros(2)
        for j in range(n):
            if w[j] > 0.0:
                wsum += w[j]
                for k in range(3):
                    c3[k] += w[j] * joints[j, k]
                c2[0] += w[j] * (pix[j, 0] - cx) / fx
                c2[1] += w[j] * (pix[j, 1] - cy) / fy
        c3 /= wsum
        c2 /= wsum
        spread_3d = 0.0
        spread_2d = 0.0
        for j in range(n):
            if w[j] > 0.0:
                spread_3d += w[j] * np.sqrt((joints[j, 0] - c3[0]) ** 2 + (joints[j, 1] - c3[1]) ** 2)
                du = (pix[j, 0] - cx) / fx - c2[0]
                dv = (pix[j, 1] - cy) / fy - c2[1]
                spread_2d += w[j] * np.sqrt(du * du + dv * dv)
        if spread_2d <= 0.0 or spread_3d <= 0.0:
            return
        depth = spread_3d / spread_2d
        t[0] = c2[0] * depth - c3[0]
        t[1] = c2[1] * depth - c3[1]
        t[2] = depth - c3[2]
        for j in range(n):
            if w[j] > 0.0:
                t[2] = max(t[2], MIN_DEPTH_M - joints[j, 2] + 1e-3)
        cost = _cost(joints, pix, w, fx, fy, cx, cy, t)
        if not np.isfinite(cost):
            return

    # 2. Gauss-Newton on the pixel residuals, step halving keeps cost falling and depth > 0.
    trial = np.zeros(3)
    delta = np.zeros(3)
    for _ in range(GAUSS_NEWTON_ITERS):
        a[:, :] = 0.0
        b[:] = 0.0
        for j in range(n):
            if w[j] <= 0.0:
                continue
            z = joints[j, 2] + t[2]
            xc = joints[j, 0] + t[0]
            yc = joints[j, 1] + t[1]
            ru = fx * xc / z + cx - pix[j, 0]
            rv = fy * yc / z + cy - pix[j, 1]
            # d ru / d t = [fx / z, 0, -fx xc / z^2]; d rv / d t = [0, fy / z, -fy yc / z^2]
            ju0 = fx / z
            ju2 = -fx * xc / (z * z)
            jv1 = fy / z
            jv2 = -fy * yc / (z * z)
            a[0, 0] += w[j] * ju0 * ju0
            a[0, 2] += w[j] * ju0 * ju2
            a[1, 1] += w[j] * jv1 * jv1
            a[1, 2] += w[j] * jv1 * jv2
            a[2, 2] += w[j] * (ju2 * ju2 + jv2 * jv2)
            b[0] -= w[j] * ju0 * ru
            b[1] -= w[j] * jv1 * rv
            b[2] -= w[j] * (ju2 * ru + jv2 * rv)
        a[2, 0] = a[0, 2]
        a[2, 1] = a[1, 2]
        if not _solve3(a, b, delta):
            break
        step = 1.0
        improved = False
        for _half in range(30):
            for k in range(3):
                trial[k] = t[k] + step * delta[k]
            trial_cost = _cost(joints, pix, w, fx, fy, cx, cy, trial)
            if trial_cost <= cost:
                improved = True
                break
            step *= 0.5
        if not improved:
            break
        moved = step * np.sqrt(delta[0] ** 2 + delta[1] ** 2 + delta[2] ** 2)
        t[:] = trial
        cost = trial_cost
        if moved < STEP_TOL_M:
            break

    t_out[:] = t
    for j in range(n):
        z = joints[j, 2] + t[2]
        finite = np.isfinite(joints[j, 0] + joints[j, 1] + joints[j, 2] + pix[j, 0] + pix[j, 1])
        if finite and z > 0.0:
            du = fx * (joints[j, 0] + t[0]) / z + cx - pix[j, 0]
            dv = fy * (joints[j, 1] + t[1]) / z + cy - pix[j, 1]
            err_out[j] = np.sqrt(du * du + dv * dv)


@njit(cache=True)
def _fit_batch(joints, pix, weights, fx, fy, cx, cy, t_out, err_out) -> None:
    for i in range(joints.shape[0]):
        _fit_one(joints[i], pix[i], weights[i], fx[i], fy[i], cx[i], cy[i], t_out[i], err_out[i])


def _check_intrinsics(fx, fy, cx, cy) -> None:
    """Scalars or arrays of pixels; raise ValueError unless finite with positive focal lengths."""
    if all(isinstance(v, (float, int)) for v in (fx, fy, cx, cy)):  # one camera: per frame
        ok = all(math.isfinite(v) for v in (fx, fy, cx, cy)) and fx > 0 and fy > 0
    else:
        values = [np.asarray(v, dtype=np.float64) for v in (fx, fy, cx, cy)]
        ok = (all(np.all(np.isfinite(v)) for v in values) and not np.any(values[0] <= 0)
              and not np.any(values[1] <= 0))
    if not ok:
        raise ValueError(
            f"intrinsics must be finite with positive focal lengths, got fx={fx}, fy={fy}, "
            f"cx={cx}, cy={cy} (pixels); check the camera calibration (--calib / --fov)"
        )


def _as_poses(name: str, value: np.ndarray, tail: int, batched: bool) -> np.ndarray:
    """Contiguous float64 copy of (17, tail) or (B, 17, tail) input; ValueError naming `name`."""
    arr = np.ascontiguousarray(value, dtype=np.float64)
    ok = arr.shape[-2:] == (NUM_JOINTS, tail) and arr.ndim == (3 if batched else 2)
    if not ok:
        want = f"(B, {NUM_JOINTS}, {tail})" if batched else f"({NUM_JOINTS}, {tail})"
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    return arr


def _check_weights(weights: np.ndarray) -> None:
    if np.any(weights < 0):
        raise ValueError(
            "weights must be >= 0 (use 0 to ignore a joint, e.g. the detector's confidence)"
        )


def fit_translation(
    joints_3d_rel_m: np.ndarray,
    joints_2d_px: np.ndarray,
    weights: np.ndarray,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Root translation that projects a root-relative skeleton onto its 2D joints.

    joints_3d_rel_m: (17, 3) metres, camera frame (+X right, +Y down, +Z forward), root-relative.
    joints_2d_px: (17, 2) pixels, x right, y down.
    weights: (17,) >= 0, e.g. detector confidences; 0 ignores a joint.
    fx, fy, cx, cy: pinhole intrinsics, pixels.

    Returns (t_m (3,) float64 metres, camera frame; err_px (17,) float64): the translation such
    that `joints_3d_rel_m + t_m` is the absolute pose, and each joint's reprojection error in
    pixels (zero-weight joints included; NaN where an input is not finite or a zero-weight joint
    lands behind the camera). Every weighted joint ends at depth >= MIN_DEPTH_M. On degenerate
    input (fewer than two usable joints, a singular system, no start in front of the camera)
    both are all NaN: check `np.isfinite(t_m).all()`. Raises ValueError for wrong shapes,
    negative weights or invalid intrinsics.
    """
    joints = _as_poses("joints_3d_rel_m", joints_3d_rel_m, 3, batched=False)
    pix = _as_poses("joints_2d_px", joints_2d_px, 2, batched=False)
    w = np.ascontiguousarray(weights, dtype=np.float64)
    if w.shape != (NUM_JOINTS,):
        raise ValueError(f"weights must have shape ({NUM_JOINTS},), got {w.shape}")
    _check_weights(w)
    _check_intrinsics(fx, fy, cx, cy)
    t_m = np.empty(3)
    err_px = np.empty(NUM_JOINTS)
    _fit_one(joints, pix, w, float(fx), float(fy), float(cx), float(cy), t_m, err_px)
    return t_m, err_px


def fit_translation_batch(
    joints_3d_rel_m: np.ndarray,
    joints_2d_px: np.ndarray,
    weights: np.ndarray,
    fx: float | np.ndarray,
    fy: float | np.ndarray,
    cx: float | np.ndarray,
    cy: float | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """`fit_translation` for B poses at once (bench, evaluation).

    joints_3d_rel_m: (B, 17, 3) m; joints_2d_px: (B, 17, 2) px; weights: (B, 17);
    fx, fy, cx, cy: scalars (one camera) or (B,) arrays, pixels.
    Returns (t_m (B, 3) float64, err_px (B, 17) float64), NaN rows where a fit is degenerate.
    """
    joints = _as_poses("joints_3d_rel_m", joints_3d_rel_m, 3, batched=True)
    pix = _as_poses("joints_2d_px", joints_2d_px, 2, batched=True)
    batch = joints.shape[0]
    if pix.shape[0] != batch:
        raise ValueError(f"joints_2d_px has {pix.shape[0]} poses, joints_3d_rel_m {batch}")
    w = np.ascontiguousarray(weights, dtype=np.float64)
    if w.shape != (batch, NUM_JOINTS):
        raise ValueError(f"weights must have shape ({batch}, {NUM_JOINTS}), got {w.shape}")
    _check_weights(w)
    _check_intrinsics(fx, fy, cx, cy)
    try:
        intr = [
            np.full(batch, float(v)) if isinstance(v, (float, int)) else
            np.ascontiguousarray(np.broadcast_to(np.asarray(v, np.float64), (batch,)))
            for v in (fx, fy, cx, cy)
        ]
    except ValueError as err:
        raise ValueError(f"fx, fy, cx, cy must be scalars or ({batch},) arrays") from err
    t_m = np.empty((batch, 3))
    err_px = np.empty((batch, NUM_JOINTS))
    _fit_batch(joints, pix, w, intr[0], intr[1], intr[2], intr[3], t_m, err_px)
    return t_m, err_px


def project(joints_3d_m: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Pinhole projection, (..., J, 3) metres camera frame -> (..., J, 2) float64 pixels.

    The reference the fit is tested against; `engines/runtime/camera.py` holds the general camera math.
    """
    pts = np.asarray(joints_3d_m, dtype=np.float64)
    z = pts[..., 2]
    return np.stack([fx * pts[..., 0] / z + cx, fy * pts[..., 1] / z + cy], axis=-1)
