"""Write an evaluation pose file for `engines.training.evaluate`.

    python -m engines.training.make_eval_poses --out eval/cmu_test.npz              # CMU exp-map test split
    python -m engines.training.make_eval_poses --out eval/h36m4.npz --source h36m   # 4 Human3.6M frames

The file holds `joints_mm` (N, 17, 3) float32 (our joint order, millimetres, root-relative,
world +Y up), `up_axis` = "y", `source` (N,) str (the clip or image of each pose), `frame`
(N,) int64 (frame index in the clip at the file's rate), and for `engines.training.evaluate`'s
sequence mode `sequence` (N,) str (the clip: poses in order within it) and `fps` () float64 (the
clips' rate after subsampling: 30 for the CMU test split). The Human3.6M frames are four
sequences of one frame each at 50 fps (a single image: no history, the lifter sees padding). `cmu_expmap` test clips are never
used for training (engines.training.mocap keeps them apart); the Human3.6M frames come from the shared
mmpose test data (S1, S5, S7, S8, camera coordinates turned into the world frame with
`cameras.pkl`) and are licensed for non-commercial research only.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from pathlib import Path

import numpy as np

from engines.training import mocap
from engines.runtime.camera import H36M_CAMERAS_RELPATH, H36M_WORLD_TO_WORLD, default_shared_dir
from engines.runtime.skeleton import ROOT

logger = logging.getLogger(__name__)

H36M_POSES_RELPATH = Path("data/footage/mmpose/tests/data/h36m/test_h36m_body3d.npz")


#: Human3.6M's frame rate (the mmpose frame numbers count frames at this rate).
H36M_FPS: float = 50.0


def cmu_expmap_eval_poses(split: str = "test", shared_dir: Path | None = None, fps: float | None = 30,
                          with_rate: bool = False):
    """(joints_mm (N, 17, 3) float32, source (N,) str, frame (N,) int64) of a cmu_expmap split;
    with_rate: also the clips' common rate after subsampling (ValueError if they differ)."""
    clips = mocap.load_clips(("cmu_expmap",), split=split, shared_dir=shared_dir, fps=fps)
    joints = np.concatenate([c.joints_mm for c in clips]).astype(np.float32)
    source = np.concatenate([np.full(len(c.joints_mm), c.name) for c in clips])
    frame = np.concatenate([np.arange(len(c.joints_mm), dtype=np.int64) for c in clips])
    if not with_rate:
        return joints, source, frame
    rates = sorted({round(float(c.fps), 6) for c in clips})
    if len(rates) != 1:
        raise ValueError(f"cmu_expmap {split} clips came out at different rates {rates}; "
                         "pick an --fps that divides 120")
    return joints, source, frame, rates[0]


def h36m_eval_poses(shared_dir: Path | None = None):
    """(joints_mm (4, 17, 3) float32, source (4,) str, frame (4,) int64): the ground truth of
    the four mmpose Human3.6M frames, root-relative, world +Y up (via each frame's camera)."""
    shared = Path(shared_dir) if shared_dir is not None else default_shared_dir()
    poses_path, cams_path = shared / H36M_POSES_RELPATH, shared / H36M_CAMERAS_RELPATH
    for path in (poses_path, cams_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; set POSESTREAM_SHARED or --shared to the "
                                    "shared data folder")
    with np.load(poses_path) as data:
        names = [str(n) for n in data["imgname"]]
        joints_cam_m = data["S"][..., :3].astype(np.float64)
    with open(cams_path, "rb") as fh:
        cams = pickle.load(fh)
    out, frames = [], []
    for name, joints in zip(names, joints_cam_m):
        # ".../S7_Greeting.55011271_000396.jpg": subject, camera id, 1-based frame number
        stem = Path(name).stem
        subject = stem.split("_", 1)[0]
        camera_id, frame = stem.rsplit(".", 1)[1].split("_")
        cam = cams[(subject, camera_id)]
        r_c2w = np.asarray(cam["R"], dtype=np.float64).reshape(3, 3)
        world_zup = joints @ r_c2w.T  # rotation only: the translation cancels root-relative
        world = world_zup @ H36M_WORLD_TO_WORLD.T
        out.append((world - world[ROOT]) * 1000.0)
        frames.append(int(frame) - 1)
    return (np.array(out, dtype=np.float32), np.array(names), np.array(frames, dtype=np.int64))


def build_parser(prog: str = "python -m engines.training.make_eval_poses") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Write an evaluation pose file (joints_mm (N, 17, 3) mm, root-relative, world "
                    "+Y up) for `python -m engines.training.evaluate --poses FILE`.",
    )
    p.add_argument("--out", required=True, type=Path, help="output .npz file (folders are created)")
    p.add_argument("--source", choices=("cmu_expmap", "h36m"), default="cmu_expmap",
                   help="cmu_expmap: a split of the CMU exp-map clips (default); h36m: the ground "
                        "truth of the 4 Human3.6M frames in the shared mmpose test data")
    p.add_argument("--split", choices=mocap.SPLITS, default="test",
                   help="cmu_expmap split (default test: never used for training)")
    p.add_argument("--fps", type=float, default=30.0,
                   help="subsample cmu_expmap clips (120 fps) to about this rate (default 30)")
    p.add_argument("--shared", type=Path, default=None,
                   help="shared data folder (default $POSESTREAM_SHARED or <repo>/../shared)")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m engines.training.make_eval_poses") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.source == "h36m":
        joints, source, frame = h36m_eval_poses(args.shared)
        rate = H36M_FPS
    else:
        joints, source, frame, rate = cmu_expmap_eval_poses(args.split, args.shared, args.fps,
                                                            with_rate=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, joints_mm=joints, up_axis=np.array("y"), source=source,
                        frame=frame, sequence=source, fps=np.array(rate, np.float64))
    logger.info("wrote %s: %d poses from %d clips/images (%s)", args.out, len(joints),
                len(np.unique(source)), args.source if args.source == "h36m" else f"cmu_expmap {args.split}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
