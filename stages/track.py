"""Track ids: who is who across frames.

Each person the detect stage found is matched to the tracks alive in the previous frames by 2D
keypoint similarity, with an optimal assignment (scipy's `linear_sum_assignment`, the Hungarian
method) on 1 - OKS:

    OKS(d, t) = sum_j c_j exp(-|d_j - p_j|^2 / (2 s^2 k_j^2)) / sum_j c_j

(COCO's object keypoint similarity: `p_j` the track's joints predicted at this frame by its
constant-velocity motion, `s^2` the track's 2D box area, `k_j` COCO's per-joint constants
widened TRACK_SIGMA_SCALE times, `c_j` the smaller of the two confidences). COCO's constants
measure how far annotators disagree on one image; between frames a person moves and the
detector jitters far more: with them, the shared street video (3 people) got 19 track ids;
widened 5x, 6 ids, but one of them slid from one person onto her neighbour when the detector
did; a gate on the box centre (CENTRE_GATE) keeps that from happening (6 ids, none sliding).
A match needs OKS >= `min_oks` inside the gate. An unmatched detection starts a new track with
the next id (ids start at 1 and are never reused in a run); a track not seen for `max_age_s`
(about a second) ends, so a person hidden for half a second keeps their id.

Motion and age are counted in frames (frame ids, which count every captured frame, dropped
or not) as well as in capture time: a track ends only when it has been unseen for both
`max_age_s` of capture time and `max_age_s * NOMINAL_FPS` frames. A camera's frames come at
a steady rate, so either measure works there; a file processed whole may be read far slower
than its own rate (a loaded machine, every frame waited for), and then consecutive frames
are consecutive moments of the video even when seconds apart in capture time.

Runs where frames are in order: co-located in the lift stage's process, after the fan-in of
the detection workers (`pipeline.graph`), so it sees every frame the lift stage sees, in order.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from engines.runtime.skeleton import NUM_JOINTS
from pipeline.schema import Keypoints2D, Person2D
from pipeline.stage import Stage

logger = logging.getLogger(__name__)

#: COCO's per-keypoint OKS constants mapped to the 17 Human3.6M joints (pelvis, spine, thorax,
#: neck and head have no COCO keypoint: the hip's and the head's constants stand in).
OKS_SIGMAS: np.ndarray = np.array(
    [0.107, 0.107, 0.087, 0.089, 0.107, 0.087, 0.089,   # pelvis, r hip/knee/ankle, l ...
     0.107, 0.079, 0.035, 0.035,                         # spine, thorax, neck/nose, head
     0.079, 0.072, 0.062, 0.079, 0.072, 0.062],          # l shoulder/elbow/wrist, r ...
    dtype=np.float64,
)
#: how much wider than COCO's constants the similarity is (see the module docstring)
TRACK_SIGMA_SCALE: float = 5.0
#: a detection can only be the same person if its box centre is within this fraction of the
#: person's size (largest box side) of where the track was predicted, times the square root
#: of the frames since it was seen: the detector sometimes slides from one person onto a
#: neighbour in one frame (seen on the street video: 94 px for a 211 px person), which joint
#: similarity alone, at the widths that follow real motion, accepts
CENTRE_GATE: float = 0.3
#: frames per second assumed when an age in seconds is turned into frames
NOMINAL_FPS: float = 30.0
#: the motion model extrapolates at most this many frames; a longer gap stops there
MAX_PREDICT_FRAMES: int = 8
#: velocity update weight (exponential smoothing of the per-joint velocity, px/frame)
VELOCITY_ALPHA: float = 0.5


@dataclass
class Track:
    """One person being followed: last joints (17, 2) px, confidence (17,), the frame id and
    capture time (ns) they were last seen at, and a per-joint velocity (17, 2) px/frame."""

    track_id: int
    joints_2d_px: np.ndarray
    confidence: np.ndarray
    frame_id: int
    t_ns: int
    velocity_px_frame: np.ndarray
    hits: int = 1

    def predict(self, frame_id: int) -> np.ndarray:
        """(17, 2) px where the joints should be at frame_id."""
        frames = min(max(frame_id - self.frame_id, 0), MAX_PREDICT_FRAMES)
        return self.joints_2d_px + self.velocity_px_frame * frames


def _confident(joints_2d_px: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    keep = confidence > 0.1
    return joints_2d_px[keep] if keep.sum() >= 2 else joints_2d_px


def box_area_px2(joints_2d_px: np.ndarray, confidence: np.ndarray) -> float:
    span = np.ptp(_confident(joints_2d_px, confidence), axis=0)
    return float(max(span[0] * span[1], 1.0))


def centre_and_size(joints_2d_px: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, float]:
    """(2,) box centre px and the box's largest side px of the confident joints."""
    pts = _confident(joints_2d_px, confidence)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (lo + hi) / 2, float(max(np.max(hi - lo), 1.0))


def oks(joints_a: np.ndarray, conf_a: np.ndarray, joints_b: np.ndarray, conf_b: np.ndarray,
        area_px2: float) -> float:
    """Object keypoint similarity (COCO's, constants widened TRACK_SIGMA_SCALE times) of two
    17-joint 2D poses (px), weighted by the smaller confidence per joint; 0 when no joint is
    confident in both. area_px2: the scale s^2, px^2."""
    weight = np.minimum(conf_a, conf_b).astype(np.float64)
    total = weight.sum()
    if total <= 1e-6:
        return 0.0
    d2 = np.sum((np.asarray(joints_a, np.float64) - joints_b) ** 2, axis=1)
    sim = np.exp(-d2 / (2.0 * area_px2 * (OKS_SIGMAS * TRACK_SIGMA_SCALE) ** 2))
    return float(np.sum(weight * sim) / total)


class Tracker:
    """Assigns track ids to the people of each frame (frames in capture order).

    `update(joints, confidences, frame_id, t_ns) -> list[int]`: one id per person, in order.
    """

    def __init__(self, min_oks: float = 0.2, max_age_s: float = 1.0) -> None:
        self.min_oks = min_oks
        self.max_age_ns = int(max_age_s * 1e9)
        self.max_age_frames = int(round(max_age_s * NOMINAL_FPS))
        self.tracks: dict[int, Track] = {}
        self.next_id = 1
        self.ended = 0  # tracks that ended (not seen for max_age_s)

    def update(self, joints: list[np.ndarray], confidences: list[np.ndarray],
               frame_id: int, t_ns: int) -> list[int]:
        """joints: P arrays (17, 2) px; confidences: P arrays (17,); the frame's id and capture
        time (ns). Returns P track ids."""
        for tid in [tid for tid, tr in self.tracks.items()
                    if t_ns - tr.t_ns > self.max_age_ns
                    and frame_id - tr.frame_id > self.max_age_frames]:
            del self.tracks[tid]
            self.ended += 1
        track_ids = list(self.tracks)
        ids = [0] * len(joints)
        if track_ids and joints:
            sim = np.zeros((len(joints), len(track_ids)))
            for j, tid in enumerate(track_ids):
                tr = self.tracks[tid]
                pred = tr.predict(frame_id)
                area = box_area_px2(tr.joints_2d_px, tr.confidence)
                centre_t, size_t = centre_and_size(pred, tr.confidence)
                gate = CENTRE_GATE * math.sqrt(max(frame_id - tr.frame_id, 1))
                for i, (pts, conf) in enumerate(zip(joints, confidences)):
                    centre_d, size_d = centre_and_size(np.asarray(pts, np.float64), conf)
                    if np.linalg.norm(centre_d - centre_t) > gate * max(size_t, size_d):
                        continue  # too far to be this person: similarity stays 0
                    sim[i, j] = oks(pts, conf, pred, tr.confidence, area)
            rows, cols = linear_sum_assignment(1.0 - sim)
            for i, j in zip(rows, cols):
                if sim[i, j] >= self.min_oks:
                    ids[i] = track_ids[j]
        for i, (pts, conf) in enumerate(zip(joints, confidences)):
            pts = np.asarray(pts, np.float64)
            if ids[i] == 0:
                ids[i] = self.next_id
                self.next_id += 1
                self.tracks[ids[i]] = Track(ids[i], pts, np.asarray(conf, np.float64), frame_id,
                                            t_ns, np.zeros((NUM_JOINTS, 2)))
                continue
            tr = self.tracks[ids[i]]
            frames = frame_id - tr.frame_id
            if frames > 0:
                velocity = (pts - tr.joints_2d_px) / frames
                tr.velocity_px_frame = (VELOCITY_ALPHA * velocity
                                        + (1.0 - VELOCITY_ALPHA) * tr.velocity_px_frame)
            tr.joints_2d_px, tr.confidence = pts, np.asarray(conf, np.float64)
            tr.frame_id, tr.t_ns = frame_id, t_ns
            tr.hits += 1
        return ids


class TrackStage(Stage):
    """Keypoints2D -> Keypoints2D with a track_id per person (config:
    `pipeline.config.TrackConfig`)."""

    name = "track"
    inputs = (Keypoints2D,)
    outputs = (Keypoints2D,)

    def __init__(self, config) -> None:
        super().__init__(config)
        self.tracker: Tracker | None = None

    def open(self) -> None:
        cfg = self.config
        self.tracker = Tracker(cfg.min_oks, cfg.max_age_s)
        logger.info("track: OKS >= %.2f to match, tracks end after %.1f s unseen",
                    cfg.min_oks, cfg.max_age_s)

    def process(self, msg: Keypoints2D) -> Keypoints2D:
        if self.tracker is None:
            raise RuntimeError("TrackStage.process called before open()")
        ids = self.tracker.update([p.joints_2d_px for p in msg.people],
                                  [p.confidence for p in msg.people], msg.frame_id,
                                  msg.t_capture_ns)
        return dataclasses.replace(msg, people=tuple(
            dataclasses.replace(p, track_id=tid) for p, tid in zip(msg.people, ids)))

    def close(self) -> None:
        self.tracker = None
