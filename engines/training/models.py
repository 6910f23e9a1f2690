"""Lifter networks and the discriminators used to train them (torch; training side only).

The lifter maps one codec-normalised 2D pose to a root-relative 3D pose in the same scale-free
units (see `engines/runtime/codec.py` and docs/DESIGN.md):

    joints_2d_norm: (B, J, 2) float32, normalised image coordinates, root-centred, scaled so the
                    head-to-root distance is 1/c (c = `depth_offset`, 10 by default)
    joints_3d_norm: (B, J, 3) float32, root-relative, camera axes (+X right, +Y down, +Z forward),
                    scale-free units (roughly: head-to-root distance ~ 1)

Two output heads:
- ``"depth"`` (Chen et al. 2019): the network predicts one depth offset d_j per joint; the joint
  sits at depth z_j = max(1, d_j + c) on the ray through its 2D point, X_j = (x_j z_j, y_j z_j, z_j).
  Such a pose re-projects exactly onto its input in a unit-focal camera, which is what makes the
  rotate-and-reproject self-supervision work.
- ``"xyz"``: the network predicts the 3D offsets from the root directly (Li et al. 2020, Martinez
  et al. 2017); re-projection is then a loss, not a constraint.

Model size: the papers use width 1024 with 4 residual blocks (~8.7 M weights). We train on a shared
2-core CPU and ship an ONNX file of at most ~10 MB, so the trainer defaults to width 512 with 2
blocks (1.1 M weights, 4.3 MB): a quarter of the cost per step of width 1024, so in the same CPU
minutes it sees four times the samples, which matters more here than capacity (our training set is
~45 k poses). Width, blocks and dropout are configurable (`engines.training.train --width --blocks`).

Nothing in the runtime imports this module; the exported ONNX graph carries the weights.
"""

from __future__ import annotations

import torch
from torch import nn

from engines.runtime.skeleton import NUM_JOINTS, PARENTS, ROOT

#: Chen et al.'s depth offset c: the normalised root sits at depth c and head-to-root is 1/c in 2D.
DEFAULT_DEPTH_OFFSET: float = 10.0

HEADS: tuple[str, ...] = ("depth", "xyz")


class ResidualBlock(nn.Module):
    """Two (Linear, [BatchNorm], ReLU, Dropout) layers with an identity skip (Martinez et al.)."""

    def __init__(self, width: int, dropout: float, batch_norm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(2):
            layers.append(nn.Linear(width, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, width) -> (B, width)."""
        return features + self.body(features)


class ResidualMLP(nn.Module):
    """in_features -> width -> `blocks` residual blocks -> out_features."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: int,
        blocks: int,
        dropout: float,
        batch_norm: bool,
    ) -> None:
        super().__init__()
        stem: list[nn.Module] = [nn.Linear(in_features, width)]
        if batch_norm:
            stem.append(nn.BatchNorm1d(width))
        stem.append(nn.ReLU(inplace=True))
        if dropout > 0:
            stem.append(nn.Dropout(dropout))
        self.stem = nn.Sequential(*stem)
        self.blocks = nn.Sequential(
            *[ResidualBlock(width, dropout, batch_norm) for _ in range(blocks)]
        )
        self.out = nn.Linear(width, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, in_features) -> (B, out_features)."""
        return self.out(self.blocks(self.stem(features)))


class Lifter(nn.Module):
    """Single-frame 2D-to-3D lifter (receptive field 1).

    forward(joints_2d_norm (B, J, 2)) -> joints_3d_norm (B, J, 3), root-relative.
    `lift_camera` gives the same pose placed in the normalised camera (root at depth ~c).
    """

    receptive_field: int = 1

    def __init__(
        self,
        num_joints: int = NUM_JOINTS,
        width: int = 1024,
        blocks: int = 2,
        dropout: float = 0.25,
        batch_norm: bool = True,
        head: str = "depth",
        depth_offset: float = DEFAULT_DEPTH_OFFSET,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if width < 1 or blocks < 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"bad lifter size: width={width} (>= 1), blocks={blocks} (>= 0), "
                f"dropout={dropout} (in [0, 1))"
            )
        self.num_joints = num_joints
        self.head = head
        self.depth_offset = float(depth_offset)
        out_per_joint = 1 if head == "depth" else 3
        self.mlp = ResidualMLP(
            num_joints * 2, num_joints * out_per_joint, width, blocks, dropout, batch_norm
        )

    def _check(self, joints_2d_norm: torch.Tensor) -> None:
        if joints_2d_norm.dim() != 3 or tuple(joints_2d_norm.shape[1:]) != (self.num_joints, 2):
            raise ValueError(
                f"lifter expects joints_2d_norm of shape (B, {self.num_joints}, 2), "
                f"got {tuple(joints_2d_norm.shape)}"
            )

    def lift_camera(self, joints_2d_norm: torch.Tensor) -> torch.Tensor:
        """(B, J, 2) normalised 2D -> (B, J, 3) pose in the normalised camera.

        Head "depth": X_j = (x_j z_j, y_j z_j, z_j), z_j = max(1, d_j + c); re-projects exactly
        onto the input. Head "xyz": predicted root-relative offsets placed with the root at (0, 0, c).
        """
        self._check(joints_2d_norm)
        batch = joints_2d_norm.shape[0]
        out = self.mlp(joints_2d_norm.reshape(batch, -1))
        if self.head == "depth":
            depth = torch.clamp(out + self.depth_offset, min=1.0).unsqueeze(-1)  # (B, J, 1)
            return torch.cat([joints_2d_norm * depth, depth], dim=-1)
        offsets = out.reshape(batch, self.num_joints, 3)
        offsets = offsets - offsets[:, ROOT : ROOT + 1]
        root = offsets.new_tensor([0.0, 0.0, self.depth_offset])
        return offsets + root

    def forward(self, joints_2d_norm: torch.Tensor) -> torch.Tensor:
        """(B, J, 2) codec-normalised 2D -> (B, J, 3) root-relative 3D, codec units."""
        posed = self.lift_camera(joints_2d_norm)
        return posed - posed[:, ROOT : ROOT + 1]


class RootBranch(nn.Module):
    """Li et al. 2020's separate root branch: how big the pose is, which places it in depth.

    forward(joints_2d_norm (B, J, 2)) -> metres_per_unit (B,) > 0: the factor that turns the
    lifter's scale-free output into metres. With the codec's per-pose scale `s` (normalised image
    units -> codec units) the root depth follows as Z_root_m = c * s * metres_per_unit, because the
    codec fixes the projected head-to-root length to 1/c. Used only in training (the runtime fits
    the root translation to the 2D joints instead); not exported.
    """

    def __init__(
        self, num_joints: int = NUM_JOINTS, width: int = 256, init_metres_per_unit: float = 0.5
    ) -> None:
        super().__init__()
        self.num_joints = num_joints
        self.mlp = ResidualMLP(num_joints * 2, 1, width, 1, 0.0, False)
        self.log_init = float(torch.log(torch.tensor(init_metres_per_unit)))

    def forward(self, joints_2d_norm: torch.Tensor) -> torch.Tensor:
        """(B, J, 2) -> (B,) metres per codec unit."""
        batch = joints_2d_norm.shape[0]
        return torch.exp(self.mlp(joints_2d_norm.reshape(batch, -1)).squeeze(-1) + self.log_init)


class PoseDiscriminator(nn.Module):
    """Scores single 2D poses (B, J, 2) -> (B,) real-ness; no sigmoid (LSGAN / WGAN losses).

    Input features: the joints and the 2D bone vectors (child - parent; a 2D analogue of Wandt
    et al.'s kinematic chain space), so limb proportions and angles are direct inputs. No batch
    norm, so a gradient penalty on interpolates is well defined.
    """

    def __init__(self, num_joints: int = NUM_JOINTS, width: int = 512, blocks: int = 2) -> None:
        super().__init__()
        self.num_joints = num_joints
        self.register_buffer("parents", torch.as_tensor(PARENTS[1:], dtype=torch.long), False)
        self.mlp = _leaky_mlp(num_joints * 2 + (num_joints - 1) * 2, width, blocks)

    def forward(self, joints_2d_norm: torch.Tensor) -> torch.Tensor:
        """(B, J, 2) -> (B,)."""
        bones = joints_2d_norm[:, 1:] - joints_2d_norm[:, self.parents]
        batch = joints_2d_norm.shape[0]
        features = torch.cat([joints_2d_norm.reshape(batch, -1), bones.reshape(batch, -1)], 1)
        return self.mlp(features).squeeze(-1)


class TemporalDiscriminator(nn.Module):
    """Scores short 2D pose sequences (B, T, J, 2) -> (B,): the poses and their frame-to-frame
    motion, so a lifter whose rotated projections jitter or move implausibly is penalised."""

    def __init__(
        self, num_frames: int = 3, num_joints: int = NUM_JOINTS, width: int = 512, blocks: int = 2
    ) -> None:
        super().__init__()
        if num_frames < 2:
            raise ValueError(f"a temporal discriminator needs >= 2 frames, got {num_frames}")
        self.num_frames = num_frames
        self.num_joints = num_joints
        features = num_frames * num_joints * 2 + (num_frames - 1) * num_joints * 2
        self.mlp = _leaky_mlp(features, width, blocks)

    def forward(self, sequences_2d_norm: torch.Tensor) -> torch.Tensor:
        """(B, T, J, 2) -> (B,)."""
        batch = sequences_2d_norm.shape[0]
        motion = sequences_2d_norm[:, 1:] - sequences_2d_norm[:, :-1]
        features = torch.cat([sequences_2d_norm.reshape(batch, -1), motion.reshape(batch, -1)], 1)
        return self.mlp(features).squeeze(-1)


def _leaky_mlp(in_features: int, width: int, blocks: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_features, width), nn.LeakyReLU(0.2)]
    for _ in range(blocks):
        layers += [nn.Linear(width, width), nn.LeakyReLU(0.2)]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


TEMPORAL_HEADS: tuple[str, ...] = ("depth", "refine")


class TemporalLifter(nn.Module):
    """Causal temporal lifter: the last F frames of one person's 2D -> the newest frame's 3D.

    VideoPose3D's dilated temporal convolutions (Pavllo et al., CVPR 2019) with causal padding:
    layers of kernel `kernel` and dilations 1, k, k^2, ... so the receptive field is
    F = k^layers frames (27 = 3^3 by default) at the engine's rate, all in the past.

    forward(joints_2d_norm (B, F, J, 2)) -> joints_3d_norm (B, J, 3), root-relative, codec units,
    in the newest frame's virtual-camera axes. Frames are oldest first, newest last, each encoded
    on its own by the codec (`Codec.encode`). This is VideoPose3D's "optimised" single-output
    form: stride-k convolutions over exactly F frames, which give the same numbers as the dilated
    convolutions at one output position (tested) for a fraction of the work; it is what the
    engine file runs.
    forward_sequence(joints_2d_norm (B, T, J, 2)) -> (B, T, J, 3): the dilated form over a whole
    sequence, one output per frame, left-padded by repeating the first frame (what the lift
    stage does at a track's start); output t depends on frames <= t only.

    Heads: "depth" (Chen et al.: a depth per joint on the newest frame's ray, as the single-frame
    lifter) or "refine" (also a 2D correction per joint: X_j = ((x_j + dx_j) z_j, (y_j + dy_j)
    z_j, z_j), so detector noise in the newest frame need not pass into the 3D; the corrections
    start at zero, so it starts as the depth head).

    base: the model_config of a single-frame `Lifter` (depth head) to build on, or None. With a
    base (head "refine" only), the temporal network corrects a trained single-frame lifter
    instead of replacing it: the newest frame's 2D is corrected (newest + dx), the base lifts the
    corrected 2D to a depth per joint, and the temporal network adds a depth correction. Its last
    layer starts at zero, so before training the engine is exactly the base (clean accuracy
    starts at the single-frame engine's, and the window only has to add what the past tells).
    The corrections are the network's output / c (c = depth_offset): 1 unit is a head-to-root
    length in 2D, a tenth of one in depth, so the first optimizer steps (Adam moves every weight
    by ~lr) cannot throw a trained pose far off (unscaled, one step moved joints by a head length
    and the root branch collapsed to the camera centre).
    correct_depth False (with a base): the window corrects the 2D only, a causal 2D filter
    learned in front of the base, which then gives every depth.
    `freeze_base()` keeps the base's weights and batch-norm statistics fixed while training.
    """

    causal: bool = True

    def __init__(
        self,
        num_joints: int = NUM_JOINTS,
        receptive_field: int = 27,
        kernel: int = 3,
        channels: int = 256,
        dropout: float = 0.25,
        head: str = "refine",
        depth_offset: float = DEFAULT_DEPTH_OFFSET,
        base: dict | None = None,
        correct_depth: bool = True,
    ) -> None:
        super().__init__()
        if head not in TEMPORAL_HEADS:
            raise ValueError(f"temporal head must be one of {TEMPORAL_HEADS}, got {head!r}")
        layers = 0
        while kernel ** layers < receptive_field:
            layers += 1
        if kernel < 2 or layers < 1 or kernel ** layers != receptive_field:
            raise ValueError(f"receptive_field must be a power (>= 1) of kernel {kernel}, "
                             f"e.g. {kernel ** 2}, {kernel ** 3}; got {receptive_field}")
        if channels < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"bad temporal lifter size: channels={channels} (>= 1), "
                             f"dropout={dropout} (in [0, 1))")
        self.num_joints = num_joints
        self.receptive_field = int(receptive_field)
        self.kernel = int(kernel)
        self.head = head
        self.depth_offset = float(depth_offset)
        self.expand = nn.Conv1d(num_joints * 2, channels, kernel, bias=False)
        self.expand_bn = nn.BatchNorm1d(channels)
        self.dilated = nn.ModuleList(
            [nn.Conv1d(channels, channels, kernel, bias=False) for _ in range(layers - 1)])
        self.dilated_bn = nn.ModuleList([nn.BatchNorm1d(channels) for _ in range(layers - 1)])
        self.pointwise = nn.ModuleList(
            [nn.Conv1d(channels, channels, 1, bias=False) for _ in range(layers - 1)])
        self.pointwise_bn = nn.ModuleList([nn.BatchNorm1d(channels) for _ in range(layers - 1)])
        self.drop = nn.Dropout(dropout)
        self.out_per_joint = 1 if head == "depth" else 3
        self.shrink = nn.Conv1d(channels, num_joints * self.out_per_joint, 1)
        if head == "refine":  # the 2D corrections start at zero: the depth head at first
            with torch.no_grad():
                w = self.shrink.weight.view(num_joints, 3, channels, 1)
                w[:, :2] = 0.0
                self.shrink.bias.view(num_joints, 3)[:, :2] = 0.0
        self.base: Lifter | None = None
        self._base_frozen = False
        self._norms_held = False
        self._base_as_run = False
        self.correct_depth = bool(correct_depth)
        if not self.correct_depth and base is None:
            raise ValueError("correct_depth=False needs a base lifter (it lifts the corrected 2D)")
        if base is not None:
            base = dict(base)
            if head != "refine" or base.pop("kind", "mlp") != "mlp":
                raise ValueError("a base lifter needs the refine head and a single-frame base "
                                 f"(model_config kind 'mlp'); got head {head!r}")
            if base.get("head", "depth") != "depth" or float(
                    base.get("depth_offset", depth_offset)) != self.depth_offset:
                raise ValueError(f"the base lifter must have the depth head and depth_offset "
                                 f"{self.depth_offset}; got {base}")
            self.base = Lifter(**base)
            with torch.no_grad():  # all corrections start at zero: exactly the base at first
                self.shrink.weight.zero_()
                self.shrink.bias.zero_()

    def freeze_base(self) -> None:
        """Keep the base lifter's weights and batch-norm statistics as they are (training)."""
        if self.base is None:
            raise ValueError("this temporal lifter has no base lifter to freeze")
        self._base_frozen = True
        for param in self.base.parameters():
            param.requires_grad_(False)
        self.base.eval()

    def hold_norms(self) -> None:
        """Keep every batch norm's statistics as they are while training (their scale and
        shift, and every other weight, still learn): a fine-tune from an exported engine, whose
        file carries the temporal network's norms folded into its convolutions."""
        self._norms_held = True
        self.train(self.training)

    def run_base_as_engine(self) -> None:
        """Train the base's weights while it runs as the engine runs it (no dropout, fixed
        batch-norm statistics): a fine-tune of the function the engine computes."""
        if self.base is None:
            raise ValueError("this temporal lifter has no base lifter")
        self._base_as_run = True
        self.train(self.training)

    def train(self, mode: bool = True) -> "TemporalLifter":
        super().train(mode)
        if self._base_frozen or self._base_as_run:
            self.base.eval()
        if self._norms_held:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm1d):
                    module.eval()
        return self

    def _check(self, joints_2d_norm: torch.Tensor, frames: int | None) -> None:
        shape = tuple(joints_2d_norm.shape)
        if (joints_2d_norm.dim() != 4 or shape[2:] != (self.num_joints, 2)
                or (frames is not None and shape[1] != frames)):
            want = frames if frames is not None else "T"
            raise ValueError(f"temporal lifter expects joints_2d_norm of shape (B, {want}, "
                             f"{self.num_joints}, 2), got {shape}")

    def _features(self, x: torch.Tensor, dense: bool) -> torch.Tensor:
        """(B, J*2, T) -> (B, C, T') through the layers: stride k (dense False) or dilation
        k^i (dense True)."""
        k = self.kernel
        stride = k if not dense else 1
        x = self.drop(torch.relu(self.expand_bn(
            nn.functional.conv1d(x, self.expand.weight, stride=stride))))
        for i, (conv, bn, point, pbn) in enumerate(zip(self.dilated, self.dilated_bn,
                                                       self.pointwise, self.pointwise_bn)):
            dilation = k ** (i + 1) if dense else 1
            # causal: the residual is the newest input each output sees
            res = x[:, :, (k - 1) * dilation:] if dense else x[:, :, k - 1 :: k]
            y = self.drop(torch.relu(bn(nn.functional.conv1d(
                x, conv.weight, stride=stride, dilation=dilation))))
            x = res + self.drop(torch.relu(pbn(point(y))))
        return self.shrink(x)

    def _place(self, out: torch.Tensor, newest: torch.Tensor) -> torch.Tensor:
        """out (N, J*o), newest (N, J, 2) -> (N, J, 3) pose in the normalised camera."""
        n = newest.shape[0]
        out = out.reshape(n, self.num_joints, self.out_per_joint)
        if self.base is not None:  # corrections of a trained pose: in 1/c units (see __init__)
            out = out / self.depth_offset
        ray = newest if self.head == "depth" else newest + out[..., :2]
        offset = out[..., -1:] if self.correct_depth else torch.zeros_like(out[..., -1:])
        if self.base is not None:  # the base lifts the corrected 2D; the window corrects it
            offset = offset + self.base.mlp(ray.reshape(n, -1)).unsqueeze(-1)
        depth = torch.clamp(offset + self.depth_offset, min=1.0)
        return torch.cat([ray * depth, depth], dim=-1)

    def lift_camera(self, joints_2d_norm: torch.Tensor) -> torch.Tensor:
        """(B, F, J, 2) -> (B, J, 3) newest frame's pose in the normalised camera."""
        self._check(joints_2d_norm, self.receptive_field)
        b, f = joints_2d_norm.shape[:2]
        x = joints_2d_norm.reshape(b, f, -1).transpose(1, 2)
        out = self._features(x, dense=False)[:, :, -1]
        return self._place(out, joints_2d_norm[:, -1])

    def forward(self, joints_2d_norm: torch.Tensor, last: int = 1) -> torch.Tensor:
        """(B, F, J, 2) codec-normalised 2D, oldest first -> (B, J, 3) root-relative 3D.

        last > 1 (training's smoothness term): (B, F + last - 1, J, 2) -> (B, last, J, 3), the
        last `last` frames, each lifted from its own F frames by the dense (dilated) form, in one
        pass whose features (and dropout masks) the outputs share where their windows overlap.
        """
        if last > 1:
            return self._lift_last(joints_2d_norm, last)
        posed = self.lift_camera(joints_2d_norm)
        return posed - posed[:, ROOT : ROOT + 1]

    def lift_camera_last(self, joints_2d_norm: torch.Tensor, count: int) -> torch.Tensor:
        """(B, F + count - 1, J, 2) -> (B, count, J, 3): the last `count` frames' poses in the
        normalised camera, each lifted from its own F frames, in one dense (dilated) pass."""
        self._check(joints_2d_norm, self.receptive_field + count - 1)
        b, t = joints_2d_norm.shape[:2]
        x = joints_2d_norm.reshape(b, t, -1).transpose(1, 2)
        out = self._features(x, dense=True).transpose(1, 2).reshape(b * count, -1)
        posed = self._place(out, joints_2d_norm[:, -count:].reshape(b * count, self.num_joints, 2))
        return posed.reshape(b, count, self.num_joints, 3)

    def lift_camera_sequence(self, joints_2d_norm: torch.Tensor) -> torch.Tensor:
        """(B, T, J, 2) a whole sequence -> (B, T, J, 3) poses in the normalised camera: frame t
        lifted from frames <= t, the frames before the first repeated from it."""
        self._check(joints_2d_norm, None)
        b, t = joints_2d_norm.shape[:2]
        pad = joints_2d_norm[:, :1].expand(b, self.receptive_field - 1, -1, -1)
        return self.lift_camera_last(torch.cat([pad, joints_2d_norm], 1), t)

    def _lift_last(self, joints_2d_norm: torch.Tensor, count: int) -> torch.Tensor:
        posed = self.lift_camera_last(joints_2d_norm, count)
        return posed - posed[:, :, ROOT : ROOT + 1]

    def forward_sequence(self, joints_2d_norm: torch.Tensor) -> torch.Tensor:
        """(B, T, J, 2) a whole sequence -> (B, T, J, 3) root-relative: frame t lifted from
        frames <= t, the frames before the first repeated from it."""
        posed = self.lift_camera_sequence(joints_2d_norm)
        return posed - posed[:, :, ROOT : ROOT + 1]


def build_lifter(**model_config) -> nn.Module:
    """The lifter from its config (the checkpoint's and the ONNX metadata's `model_config`).

    Single frame (no "kind", or kind "mlp"): num_joints (17), width (1024), blocks (2),
    dropout (0.25), batch_norm (True), head ("depth" | "xyz"), depth_offset (10.0).
    kind "temporal" (`TemporalLifter`): num_joints, receptive_field (27), kernel (3), channels
    (256), dropout, head ("depth" | "refine"), depth_offset, base (None, or a single-frame
    config the temporal network corrects), correct_depth (True; False: 2D corrections only).
    Unknown keys raise a TypeError naming them.
    """
    config = dict(model_config)
    kind = config.pop("kind", "mlp")
    if kind == "temporal":
        return TemporalLifter(**config)
    if kind != "mlp":
        raise ValueError(f"model_config kind must be 'mlp' or 'temporal', got {kind!r}")
    return Lifter(**config)
