"""Every shared mocap source as 17-joint poses: millimetres, world +Y up, root-relative.

Sources (../shared/data/README.md has formats, units and licences):
- `cmu_expmap`: CMU clips as 38-node positions (`.npz`), 120 fps, with `train/` and `test/`
  folders; `test` is for evaluation only.
- `cmu_bvh`: three CMU BVH clips (subject 131), 120 fps, CMU units (x 56.444 mm). All "train".
- `bandai1`, `bandai2`: Bandai Namco BVH clips, 30 fps, centimetres. All "train".

Every pose is mapped to the 17 joints of `engines.runtime.skeleton` (mappings in that module), made
root-relative (pelvis = hip midpoint at the origin) and kept in a gravity-aligned world frame
with +Y up and the subject's original heading (cmu_expmap: the stored root rotation is applied
again, so poses are not forced upright; its frame 0 has no root rotation and is dropped).
Clips are subsampled to about `fps` frames per second by taking every round(src_fps / fps)-th
frame. Parsed results are cached as `.npz` under $POSESTREAM_CACHE (default
~/.cache/posestream/mocap), keyed by source, split, fps and the files' sizes and mtimes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.training import bvh
from engines.runtime import skeleton
from engines.runtime.camera import default_shared_dir
from engines.runtime.skeleton import BONES, NUM_JOINTS, ROOT

logger = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("cmu_bvh", "bandai1", "bandai2", "cmu_expmap")
SPLITS: tuple[str, ...] = ("train", "test")
#: Bump when the parsing or mapping changes, so stale caches are ignored.
CACHE_VERSION: int = 1

#: Typical adult bone lengths, mm, one per entry of `skeleton.BONES` (child, parent): the
#: Human3.6M skeleton of subject S1 (as in the 3d-pose-baseline and VideoPose3D data), left and
#: right equal. They reproduce the Human3.6M row of the data README: hip width 266, thigh 443,
#: shin 454, upper arm 279, forearm 252, pelvis->thorax 490 (thorax at 1.16 of the 421 mm
#: hip-to-shoulder axis).
CANONICAL_BONE_LENGTHS_MM: np.ndarray = np.array([
    132.95,  # r_hip <- pelvis
    442.89,  # r_knee <- r_hip (thigh)
    454.21,  # r_ankle <- r_knee (shin)
    132.95,  # l_hip <- pelvis
    442.89,  # l_knee <- l_hip
    454.21,  # l_ankle <- l_knee
    233.38,  # spine <- pelvis
    257.08,  # thorax <- spine
    121.13,  # neck_nose <- thorax
    115.00,  # head <- neck_nose
    151.03,  # l_shoulder <- thorax
    278.88,  # l_elbow <- l_shoulder (upper arm)
    251.73,  # l_wrist <- l_elbow (forearm)
    151.03,  # r_shoulder <- thorax
    278.88,  # r_elbow <- r_shoulder
    251.73,  # r_wrist <- r_elbow
], dtype=np.float64)
CANONICAL_BONE_LENGTHS_MM.flags.writeable = False


@dataclass(frozen=True)
class Clip:
    """One mocap clip as 17-joint poses.

    name: "<source>/<file stem>"; joints_mm: (F, 17, 3) float32, mm, world +Y up, pelvis at the
    origin; fps: frame rate of `joints_mm`.
    """

    name: str
    joints_mm: np.ndarray
    fps: float


def _source_files(shared: Path, source: str, split: str) -> list[Path]:
    mocap = shared / "data" / "mocap"
    if source == "cmu_expmap":
        folder, pattern = mocap / "cmu_expmap" / split, "*.npz"
    elif split != "train":
        return []  # BVH sources are training data only
    elif source == "cmu_bvh":
        folder, pattern = mocap / "cmu_bvh", "*.bvh"
    else:
        folder, pattern = mocap / source / "data", "*.bvh"
    files = sorted(folder.glob(pattern))
    if not files:
        raise FileNotFoundError(
            f"no {pattern} files for mocap source {source!r} in {folder}; set POSESTREAM_SHARED "
            "to the shared data folder (the one holding data/mocap)"
        )
    return files


def _root_relative(joints: np.ndarray) -> np.ndarray:
    return (joints - joints[:, ROOT : ROOT + 1]).astype(np.float32)


def _read_cmu_expmap(path: Path) -> tuple[np.ndarray, float]:
    """(F-1, 17, 3) float64 mm, world +Y up, global orientation; and the fps."""
    with np.load(path) as data:
        names = [str(n) for n in data["joint_names"]]
        joints = data["joints_mm"].astype(np.float64)
        root_R = data["root_R"].astype(np.float64)
        fps = float(data["fps"])
    # joints_mm is in the pelvis frame; the root rotation turns it back into the world frame
    # (frame 0 of every source file has no root rotation: drop it).
    world = np.einsum("fij,fkj->fki", root_R[1:], joints[1:])
    return skeleton.map_joints(world, skeleton.CMU_TO_H36M17, names), fps


def _read_bvh(path: Path, source: str) -> tuple[np.ndarray, float]:
    """(F, 17, 3) float64 mm, world +Y up; and the fps, for a BVH source."""
    motion = bvh.read_bvh(path)
    if source == "cmu_bvh":
        scale, recipes = bvh.CMU_UNIT_MM, skeleton.CMU_TO_H36M17
    else:
        scale, recipes = 10.0, skeleton.BANDAI_TO_H36M17  # centimetres
    positions = motion.positions() * scale
    return skeleton.map_joints(positions, recipes, motion.node_names), 1.0 / motion.frame_time_s


def _read_clip(path: Path, source: str, fps: float | None) -> Clip:
    if source == "cmu_expmap":
        joints, src_fps = _read_cmu_expmap(path)
    else:
        joints, src_fps = _read_bvh(path, source)
    step = 1 if fps is None else max(1, int(round(src_fps / fps)))
    return Clip(name=f"{source}/{path.stem}", joints_mm=_root_relative(joints[::step]),
                fps=src_fps / step)


def cache_dir() -> Path:
    """Folder of the parsed-mocap cache: $POSESTREAM_CACHE or ~/.cache/posestream/mocap."""
    return Path(os.environ.get("POSESTREAM_CACHE", Path.home() / ".cache" / "posestream" / "mocap"))


def _cache_path(source: str, split: str, fps: float | None, files: list[Path]) -> Path:
    digest = hashlib.sha1(f"{CACHE_VERSION}|{source}|{split}|{fps}".encode())
    for f in files:
        st = f.stat()
        digest.update(f"|{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return cache_dir() / f"{source}-{split}-{fps}-{digest.hexdigest()[:16]}.npz"


def _load_source(shared: Path, source: str, split: str, fps: float | None, cache: bool) -> list[Clip]:
    files = _source_files(shared, source, split)
    if not files:
        return []
    path = _cache_path(source, split, fps, files)
    if cache and path.is_file():
        try:
            with np.load(path) as data:
                frames, lengths = data["frames"], data["lengths"]
                names, rates = data["names"], data["fps"]
            chunks = np.split(frames, np.cumsum(lengths)[:-1])
            logger.debug("mocap %s/%s: %d clips from cache %s", source, split, len(chunks), path)
            return [Clip(str(n), c, float(r)) for n, c, r in zip(names, chunks, rates)]
        except (OSError, KeyError, ValueError) as err:
            logger.warning("ignoring unreadable mocap cache %s (%s); re-parsing", path, err)
    clips = [_read_clip(f, source, fps) for f in _progress(files, f"mocap {source}/{split}")]
    if cache:
        _write_cache(path, clips)
    return clips


def _progress(files: list[Path], desc: str):
    if len(files) < 20:
        return files
    from tqdm import tqdm

    return tqdm(files, desc=desc, unit="file", leave=False)


def _write_cache(path: Path, clips: list[Clip]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                frames=np.concatenate([c.joints_mm for c in clips]).astype(np.float32),
                lengths=np.array([len(c.joints_mm) for c in clips], dtype=np.int64),
                names=np.array([c.name for c in clips]),
                fps=np.array([c.fps for c in clips], dtype=np.float64),
            )
        os.replace(tmp, path)  # atomic: concurrent readers see the old file or the new one
    except OSError as err:
        logger.warning("could not write mocap cache %s (%s); continuing without it", path, err)


def load_clips(
    sources: tuple[str, ...] | list[str] = SOURCES,
    split: str = "train",
    shared_dir: Path | str | None = None,
    fps: float | None = 30,
    cache: bool = True,
) -> list[Clip]:
    """Every clip of the given sources and split, as `Clip`s at about `fps` (None: the source
    rate). BVH sources have only a "train" split and give nothing for "test".
    Raises ValueError for an unknown source or split, or when nothing matches."""
    if isinstance(sources, str):
        sources = (sources,)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown mocap source(s) {unknown}; choose from {list(SOURCES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {list(SPLITS)}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive or None, got {fps}")
    shared = Path(shared_dir) if shared_dir is not None else default_shared_dir()
    clips = [c for s in sources for c in _load_source(shared, s, split, fps, cache)]
    if not clips:
        raise ValueError(
            f"no mocap clips for sources {list(sources)} and split {split!r}: only cmu_expmap has "
            "a test split"
        )
    return clips


def load_sequences(
    sources: tuple[str, ...] | list[str] = SOURCES,
    split: str = "train",
    shared_dir: Path | str | None = None,
    fps: float | None = 30,
    cache: bool = True,
) -> list[np.ndarray]:
    """Clips as a list of (F, 17, 3) float32 arrays, mm, world +Y up, root-relative, at about
    `fps` (consecutive frames for a temporal discriminator). Arguments as `load_clips`."""
    return [c.joints_mm for c in load_clips(sources, split, shared_dir, fps, cache)]


def load_poses(
    sources: tuple[str, ...] | list[str] = SOURCES,
    split: str = "train",
    shared_dir: Path | str | None = None,
    fps: float | None = 30,
    cache: bool = True,
) -> np.ndarray:
    """All poses of the given sources and split: (N, 17, 3) float32, mm, world +Y up,
    root-relative (pelvis at the origin), subsampled to about `fps`. Arguments as `load_clips`."""
    return np.concatenate(load_sequences(sources, split, shared_dir, fps, cache), axis=0)


def retarget(joints_mm: np.ndarray, bone_lengths_mm: np.ndarray = CANONICAL_BONE_LENGTHS_MM) -> np.ndarray:
    """Give poses new bone lengths, keeping every bone's direction.

    joints_mm: (..., 17, 3); bone_lengths_mm: (16,) or (..., 16), in `skeleton.BONES` order.
    From the root outwards, each child is placed at parent + length * unit(child - parent) of the
    original pose; the root stays where it is. A zero-length bone keeps no direction: its child
    is placed straight up (+Y) from the parent. Returns (..., 17, 3) float32, same unit.
    """
    joints = np.asarray(joints_mm, dtype=np.float64)
    lengths = np.asarray(bone_lengths_mm, dtype=np.float64)
    if joints.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(f"joints_mm must be (..., {NUM_JOINTS}, 3), got {joints.shape}")
    if lengths.shape[-1] != len(BONES):
        raise ValueError(f"bone_lengths_mm must be (..., {len(BONES)}), got {lengths.shape}")
    out = np.empty_like(joints)
    out[..., ROOT, :] = joints[..., ROOT, :]
    for b, (child, parent) in enumerate(BONES):  # BONES lists parents before their children
        vec = joints[..., child, :] - joints[..., parent, :]
        norm = np.linalg.norm(vec, axis=-1, keepdims=True)
        unit = np.where(norm > 1e-9, vec / np.maximum(norm, 1e-12), np.array([0.0, 1.0, 0.0]))
        out[..., child, :] = out[..., parent, :] + lengths[..., b, None] * unit
    return out.astype(np.float32)
