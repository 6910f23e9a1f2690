"""Torch pieces of the training objectives, and the torch twin of the codec's normalisation.

All poses here are torch tensors with the shapes and units of docs/DESIGN.md:
`joints_2d_norm (B, J, 2)` codec units, `joints_3d_norm (B, J, 3)` codec units, root-relative.
`normalise_2d_torch` must give the numbers of `engines.runtime.codec.normalise_2d` (tested).
"""

from __future__ import annotations

import torch

from engines.runtime.codec import MIN_SCALE_DISTANCE
from engines.runtime.skeleton import BONES, ROOT, Joint

_CHILD = [c for c, _ in BONES]
_PARENT = [p for _, p in BONES]


def normalise_2d_torch(
    joints_2d_img: torch.Tensor, depth_offset: float, scale_joint: int = int(Joint.HEAD)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch twin of `engines.runtime.codec.normalise_2d`.

    joints_2d_img: (B, J, 2) normalised image coordinates. Returns (joints_2d_norm (B, J, 2),
    scale (B,)): root-centred, scaled so the head-to-root distance is 1/depth_offset.
    Differentiable (used on projections of lifted poses in training).
    """
    centred = joints_2d_img - joints_2d_img[:, ROOT : ROOT + 1]
    dist = torch.linalg.norm(centred[:, scale_joint], dim=-1)
    scale = 1.0 / (depth_offset * torch.clamp(dist, min=MIN_SCALE_DISTANCE))
    return centred * scale[:, None, None], scale


def project_unit_camera(joints_cam: torch.Tensor, min_depth: float = 0.1) -> torch.Tensor:
    """(B, J, 3) points in a unit-focal camera -> (B, J, 2) = (x / z, y / z); z clamped >= min_depth."""
    depth = torch.clamp(joints_cam[..., 2:3], min=min_depth)
    return joints_cam[..., :2] / depth


def mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-joint position error, same units as the inputs. (B, J, D) x2 -> scalar."""
    return torch.linalg.norm(pred - target, dim=-1).mean()


def scale_normalised(joints: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B, J, D) root-relative poses divided by their RMS joint distance from the root."""
    rel = joints - joints[:, ROOT : ROOT + 1]
    rms = torch.sqrt(torch.clamp((rel * rel).sum(-1).mean(-1), min=eps))
    return rel / rms[:, None, None]


def bone_lengths_torch(joints: torch.Tensor) -> torch.Tensor:
    """(B, J, 3) -> (B, 16) bone lengths in `BONES` order."""
    return torch.linalg.norm(joints[:, _CHILD] - joints[:, _PARENT], dim=-1)


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al. 2017): E[(||grad critic(mix)|| - 1)^2] on random
    interpolates of real and fake samples (same shape, any trailing dims)."""
    alpha = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), dtype=real.dtype)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    score = critic(mix)
    (grad,) = torch.autograd.grad(score.sum(), mix, create_graph=True)
    return ((grad.reshape(grad.shape[0], -1).norm(dim=1) - 1.0) ** 2).mean()
