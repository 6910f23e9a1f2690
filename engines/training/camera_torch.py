"""Torch twins of the camera math in `engines/runtime/camera.py`, for the trainer (differentiable).

Same frames, units and shapes as the numpy module (world +Y up; camera OpenCV +X right, +Y down,
+Z forward; `X_cam = R @ X_world + t`); tests/test_camera.py checks every twin gives the numpy
numbers. Only the trainer imports this module: runtime code must not import torch.
"""

from __future__ import annotations

import math

import torch


def _as_tensor(value, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def project(joints_cam: torch.Tensor, fx, fy, cx, cy, min_depth: float | None = None) -> torch.Tensor:
    """Pinhole projection, twin of `camera.project`.

    joints_cam: (..., J, 3) camera frame; fx, fy, cx, cy: floats or tensors broadcastable to
    (...), pixels. min_depth: if given, z is clamped to at least this (same unit as joints_cam)
    so that points behind the camera give finite gradients. Returns (..., J, 2) pixels.
    """
    z = joints_cam[..., 2:3]
    if min_depth is not None:
        z = torch.clamp(z, min=min_depth)
    xy = joints_cam[..., :2] / z
    fx, fy, cx, cy = (_as_tensor(v, joints_cam) for v in (fx, fy, cx, cy))
    f = torch.stack(torch.broadcast_tensors(fx, fy), dim=-1)
    c = torch.stack(torch.broadcast_tensors(cx, cy), dim=-1)
    return xy * f[..., None, :] + c[..., None, :]


def world_to_camera(points_world: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(..., P, 3) world -> (..., P, 3) camera: `R @ X + t`; R (..., 3, 3), t (..., 3)."""
    return torch.einsum("...ij,...pj->...pi", R, points_world) + t[..., None, :]


def camera_to_world(points_cam: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(..., P, 3) camera -> (..., P, 3) world: `R.T @ (X - t)`; R (..., 3, 3), t (..., 3)."""
    return torch.einsum("...ji,...pj->...pi", R, points_cam - t[..., None, :])


def rotate(points: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """(..., P, 3) points rotated by R (..., 3, 3): `R @ X` for every point."""
    return torch.einsum("...ij,...pj->...pi", R, points)


def relative_pose(R1: torch.Tensor, t1: torch.Tensor, R2: torch.Tensor, t2: torch.Tensor):
    """Twin of `camera.relative_pose`: (R_1to2 = R2 R1^T, t_1to2 = t2 - R_1to2 t1), so that
    `X_cam2 = R_1to2 @ X_cam1 + t_1to2`."""
    R12 = torch.einsum("...ij,...kj->...ik", R2, R1)
    return R12, t2 - torch.einsum("...ij,...j->...i", R12, t1)


def rotation_about_axis(axis: str, angle: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) right-handed rotation by `angle` (radians, tensor (...)) about "x", "y", "z"."""
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(angle), torch.zeros_like(angle)
    rows = {
        "x": ((o, z, z), (z, c, -s), (z, s, c)),
        "y": ((c, z, s), (z, o, z), (-s, z, c)),
        "z": ((c, -s, z), (s, c, z), (z, z, o)),
    }
    if axis not in rows:
        raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
    return torch.stack([torch.stack(r, dim=-1) for r in rows[axis]], dim=-2)


def rotation_from_azimuth_elevation(azimuth: torch.Tensor, elevation: torch.Tensor) -> torch.Tensor:
    """Twin of `camera.rotation_from_azimuth_elevation` (no roll): (..., 3, 3) world-to-camera
    rotation of a camera at (azimuth, elevation) radians looking at the target, world +Y up."""
    azimuth, elevation = torch.broadcast_tensors(azimuth, elevation)
    ca, sa, ce, se = torch.cos(azimuth), torch.sin(azimuth), torch.cos(elevation), torch.sin(elevation)
    zero = torch.zeros_like(azimuth)
    forward = -torch.stack([ce * sa, se, ce * ca], dim=-1)
    right = torch.stack([ca, zero, -sa], dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    return torch.stack([right, down, forward], dim=-2)


def random_view_rotation(
    n: int,
    generator: torch.Generator | None = None,
    azimuth: tuple[float, float] = (-math.pi, math.pi),
    elevation: tuple[float, float] = (-math.pi / 9, math.pi / 9),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(n, 3, 3) random rotations for Chen et al. 2019's virtual second view, camera frame.

    R = Rx(el) @ Ry(az), az ~ U(azimuth), el ~ U(elevation) (radians): turn a root-relative pose
    (camera frame, +Y down) about the camera's vertical axis, then tilt it about the horizontal
    axis, as if seen by another camera at the same distance. Apply with `rotate(pose, R)`; undo
    with `R.transpose(-1, -2)`.
    """
    u = torch.rand(2, n, generator=generator, dtype=torch.float64)
    az = azimuth[0] + (azimuth[1] - azimuth[0]) * u[0]
    el = elevation[0] + (elevation[1] - elevation[0]) * u[1]
    R = rotation_about_axis("x", el) @ rotation_about_axis("y", az)
    return R.to(dtype)
