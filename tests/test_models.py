"""Lifter and discriminators: shapes, head geometry, config errors."""

import pytest
import torch

from engines.training.models import PoseDiscriminator, RootBranch, TemporalDiscriminator, build_lifter
from engines.runtime.skeleton import NUM_JOINTS, ROOT


def _input(batch: int = 8) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(batch, NUM_JOINTS, 2) * 0.05


def test_depth_head_reprojects_exactly_onto_its_input():
    lifter = build_lifter(width=64, blocks=1, dropout=0.0).eval()
    x = _input()
    posed = lifter.lift_camera(x)
    assert posed.shape == (8, NUM_JOINTS, 3)
    assert torch.all(posed[..., 2] >= 1.0)
    torch.testing.assert_close(posed[..., :2] / posed[..., 2:], x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head", ["depth", "xyz"])
def test_forward_is_root_relative(head):
    lifter = build_lifter(width=64, blocks=2, dropout=0.1, head=head).eval()
    out = lifter(_input())
    assert out.shape == (8, NUM_JOINTS, 3)
    assert torch.count_nonzero(out[:, ROOT]) == 0


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="head"):
        build_lifter(head="bogus")
    with pytest.raises(TypeError, match="colour"):
        build_lifter(colour="red")
    with pytest.raises(ValueError, match=r"\(B, 17, 2\)"):
        build_lifter(width=8, blocks=0)(torch.zeros(2, 16, 2))


def test_discriminators_and_root_branch_shapes():
    x = _input()
    assert PoseDiscriminator(width=32)(x).shape == (8,)
    seq = torch.stack([x, x * 1.01, x * 1.02], dim=1)
    assert TemporalDiscriminator(num_frames=3, width=32)(seq).shape == (8,)
    scale = RootBranch(width=32, init_metres_per_unit=0.5)(x)
    assert scale.shape == (8,) and torch.all(scale > 0)
