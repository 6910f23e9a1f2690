"""BVH motion files: reader and forward kinematics to global joint positions.

The format (Biovision hierarchy): a HIERARCHY of ROOT/JOINT blocks, each with an OFFSET (the
joint's position in its parent's frame, file units) and CHANNELS (any subset and order of
Xposition Yposition Zposition Xrotation Yrotation Zrotation), End Sites with an OFFSET only; then
MOTION: `Frames: F`, `Frame Time: seconds`, and F lines of channel values in hierarchy order.

Conventions implemented here (those of the BVH exporters we read: CMU/cgspeed, Bandai Namco):
- Rotations are in degrees; a joint's local rotation is the product of its rotation channels in
  the listed order, e.g. "Zrotation Yrotation Xrotation" gives Rz @ Ry @ Rx (column vectors).
- Position channels, on any joint, replace the matching component of its OFFSET (for the root
  they are the global translation; Bandai's non-root position channels equal the offsets).
- Global transform: G_joint = G_parent @ [R_local | translation_local]. End Sites are nodes named
  `<parent name>_end` with no channels.
Positions come out in file units (CMU: x `CMU_UNIT_MM` for mm; Bandai: centimetres).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.runtime.camera import rotation_about_axis

logger = logging.getLogger(__name__)

#: CMU BVH length unit in millimetres (the files store 1/0.45 inch; see the data README).
CMU_UNIT_MM: float = 25.4 / 0.45

_POSITION = {"xposition": 0, "yposition": 1, "zposition": 2}
_ROTATION = {"xrotation": "x", "yrotation": "y", "zrotation": "z"}


class BvhError(ValueError):
    """A BVH file that cannot be read; the message names the file and what was wrong."""


@dataclass(frozen=True)
class BvhNode:
    """One node of the hierarchy: a joint or an End Site.

    parent: index of the parent node, -1 for the root; offset: (3,) file units, parent frame;
    channels: channel names as in the file (empty for End Sites); channel_start: column of the
    first channel in the motion rows.
    """

    name: str
    parent: int
    offset: np.ndarray
    channels: tuple[str, ...]
    channel_start: int
    is_end_site: bool


@dataclass(frozen=True)
class BvhMotion:
    """A parsed BVH file. motion: (F, C) float64 channel values; frame_time_s: seconds."""

    nodes: tuple[BvhNode, ...]
    motion: np.ndarray
    frame_time_s: float
    source: str = "<string>"

    @property
    def node_names(self) -> tuple[str, ...]:
        """Names of every node (joints and End Sites) in file order."""
        return tuple(n.name for n in self.nodes)

    @property
    def joint_names(self) -> tuple[str, ...]:
        """Names of the joints (End Sites left out) in file order."""
        return tuple(n.name for n in self.nodes if not n.is_end_site)

    @property
    def parents(self) -> np.ndarray:
        """(nodes,) int64 parent index of each node, -1 for the root."""
        return np.array([n.parent for n in self.nodes], dtype=np.int64)

    @property
    def num_frames(self) -> int:
        return int(self.motion.shape[0])

    @property
    def fps(self) -> float:
        return 1.0 / self.frame_time_s

    def positions(self) -> np.ndarray:
        """(F, nodes, 3) float64 global positions of every node, file units."""
        return forward_kinematics(self.nodes, self.motion)[0]


def _tokens(text: str):
    for line_no, line in enumerate(text.splitlines(), start=1):
        for token in line.split():
            yield line_no, token


def parse_bvh(text: str, source: str = "<string>") -> BvhMotion:
    """Parse BVH text into a `BvhMotion`. Raises BvhError naming `source` and the line."""
    head, sep, body = text.partition("MOTION")
    if not sep:
        raise BvhError(f"{source}: no MOTION section; is this a BVH file?")
    tokens = list(_tokens(head))
    pos = 0

    def fail(msg: str):
        line = tokens[min(pos, len(tokens) - 1)][0] if tokens else 0
        raise BvhError(f"{source}, line {line}: {msg}")

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            fail("the hierarchy ends early")
        pos += 1
        return tokens[pos - 1][1]

    def expect(word: str) -> None:
        got = take()
        if got.upper() != word.upper():
            fail(f"expected {word!r}, found {got!r}")

    nodes: list[BvhNode] = []
    n_channels = 0

    def read_node(name: str, parent: int, end_site: bool) -> None:
        nonlocal n_channels
        expect("{")
        expect("OFFSET")
        try:
            offset = np.array([float(take()) for _ in range(3)])
        except ValueError:
            fail("OFFSET needs three numbers")
        channels: tuple[str, ...] = ()
        index = len(nodes)
        if not end_site:
            expect("CHANNELS")
            try:
                count = int(take())
            except ValueError:
                fail("CHANNELS needs a count")
            channels = tuple(take() for _ in range(count))
            bad = [c for c in channels if c.lower() not in _POSITION and c.lower() not in _ROTATION]
            if bad:
                fail(f"unknown channel(s) {bad} in joint {name!r}")
        nodes.append(BvhNode(name, parent, offset, channels, n_channels, end_site))
        n_channels += len(channels)
        while True:
            word = take()
            if word == "}":
                return
            if end_site:
                fail(f"End Site of {name!r} has unexpected {word!r}")
            if word.upper() == "JOINT":
                read_node(take(), index, False)
            elif word.upper() == "END":
                expect("Site")
                read_node(f"{name}_end", index, True)
            else:
                fail(f"unexpected {word!r} in joint {name!r}")

    expect("HIERARCHY")
    expect("ROOT")
    read_node(take(), -1, False)
    if pos != len(tokens):
        fail(f"unexpected {tokens[pos][1]!r} after the root joint (only one ROOT is supported)")

    frames, frame_time, values = _parse_motion(body, source)
    if n_channels == 0:
        raise BvhError(f"{source}: the hierarchy has no channels")
    if values.size < frames * n_channels:
        raise BvhError(
            f"{source}: MOTION declares {frames} frames of {n_channels} channels but holds only "
            f"{values.size} numbers; the file is truncated"
        )
    if values.size > frames * n_channels:
        logger.warning("%s: %d numbers after the declared %d frames ignored", source,
                       values.size - frames * n_channels, frames)
    motion = values[: frames * n_channels].reshape(frames, n_channels)
    return BvhMotion(nodes=tuple(nodes), motion=motion, frame_time_s=frame_time, source=source)


def _parse_motion(body: str, source: str) -> tuple[int, float, np.ndarray]:
    lines = body.lstrip().split("\n", 2)
    if len(lines) < 2:
        raise BvhError(f"{source}: MOTION needs 'Frames:' and 'Frame Time:' lines")
    try:
        key, value = lines[0].split(":", 1)
        if key.strip().lower() != "frames":
            raise ValueError
        frames = int(value)
        key, value = lines[1].split(":", 1)
        if key.strip().lower() != "frame time":
            raise ValueError
        frame_time = float(value)
    except ValueError:
        raise BvhError(f"{source}: expected 'Frames: N' and 'Frame Time: T' after MOTION, "
                       f"found {lines[0]!r}, {lines[1]!r}") from None
    if frames < 0 or not frame_time > 0:
        raise BvhError(f"{source}: bad Frames ({frames}) or Frame Time ({frame_time})")
    data = lines[2] if len(lines) > 2 else ""
    try:
        values = np.array(data.split(), dtype=np.float64)
    except ValueError as err:
        raise BvhError(f"{source}: non-numeric value in the motion data ({err})") from None
    return frames, frame_time, values


def read_bvh(path: Path | str) -> BvhMotion:
    """Read a BVH file. Raises FileNotFoundError or BvhError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BVH file not found: {path}")
    return parse_bvh(path.read_text(encoding="utf-8", errors="replace"), source=str(path))


def local_transforms(node: BvhNode, motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R (F, 3, 3), translation (F, 3)) of a node relative to its parent for every frame."""
    frames = motion.shape[0]
    translation = np.broadcast_to(node.offset, (frames, 3)).copy()
    R = np.broadcast_to(np.eye(3), (frames, 3, 3)).copy()
    for k, channel in enumerate(node.channels):
        values = motion[:, node.channel_start + k]
        name = channel.lower()
        if name in _POSITION:
            translation[:, _POSITION[name]] = values
        else:
            R = R @ rotation_about_axis(_ROTATION[name], np.deg2rad(values))
    return R, translation


def forward_kinematics(nodes: tuple[BvhNode, ...], motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global positions and rotations of every node for every frame.

    nodes: the hierarchy (parents before children, as parsed); motion: (F, C) channel values.
    Returns (positions (F, nodes, 3) float64 file units, rotations (F, nodes, 3, 3) float64).
    """
    frames = motion.shape[0]
    positions = np.empty((frames, len(nodes), 3))
    rotations = np.empty((frames, len(nodes), 3, 3))
    for i, node in enumerate(nodes):
        R, t = local_transforms(node, motion)
        if node.parent < 0:
            positions[:, i], rotations[:, i] = t, R
        else:
            Rp = rotations[:, node.parent]
            positions[:, i] = positions[:, node.parent] + np.einsum("fij,fj->fi", Rp, t)
            rotations[:, i] = Rp @ R
    return positions, rotations
