"""Each person's recent 2D joints, and the causal windows a temporal lifter reads from them.

A temporal engine (receptive field F > 1, rate `fps`: docs/DESIGN.md "Temporal engines") takes
the last F frames of one person sampled every 1/fps seconds, oldest first. Cameras run at 25,
30 or 60 fps and latest-wins edges drop frames, so the frames a stage has are neither at the
engine's rate nor evenly spaced: `TrackHistory.window` resamples them, linearly in time, at the
F instants t_now - (F-1)/fps, ..., t_now. An instant before the track's first frame takes the
first frame (the padding the trainer and the evaluator use; a single image is F copies of
itself). An instant in a gap longer than MAX_INTERPOLATION_GAP_S takes the nearest frame
rather than a blend of two poses far apart in time.

Pure numpy, torch-free (the lift stage's process loads it).
"""

from __future__ import annotations

from collections import deque

import numpy as np

#: two frames further apart than this (s) are not blended; the nearest one is used
MAX_INTERPOLATION_GAP_S: float = 0.25


class TrackHistory:
    """The recent 2D joints of one person: (time s, joints (J, 2) px, confidence (J,))."""

    def __init__(self, span_s: float) -> None:
        self.span_s = float(span_s)
        self._t: deque[float] = deque()
        self._joints: deque[np.ndarray] = deque()
        self._conf: deque[np.ndarray] = deque()

    def __len__(self) -> int:
        return len(self._t)

    @property
    def last_time_s(self) -> float | None:
        return self._t[-1] if self._t else None

    def add(self, t_s: float, joints_2d_px: np.ndarray, confidence: np.ndarray) -> None:
        """Append one frame; a time not after the last one replaces the last frame."""
        if self._t and t_s <= self._t[-1]:
            self._t.pop()
            self._joints.pop()
            self._conf.pop()
        self._t.append(float(t_s))
        self._joints.append(np.asarray(joints_2d_px, np.float64))
        self._conf.append(np.asarray(confidence, np.float64))
        # keep one frame older than the span, so the window's oldest instant can interpolate
        while len(self._t) > 2 and self._t[-1] - self._t[1] > self.span_s:
            self._t.popleft()
            self._joints.popleft()
            self._conf.popleft()

    def window(self, t_now_s: float, frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
        """(joints (frames, J, 2) px, confidence (frames, J)) at t_now - k/fps, oldest first.

        Raises ValueError when the history is empty.
        """
        if not self._t:
            raise ValueError("window() of an empty history")
        times = np.asarray(self._t)
        joints = np.stack(self._joints)
        conf = np.stack(self._conf)
        want = t_now_s - np.arange(frames - 1, -1, -1, dtype=np.float64) / fps
        hi = np.searchsorted(times, want, side="left")  # first frame at or after each instant
        hi = np.clip(hi, 0, len(times) - 1)
        lo = np.clip(hi - 1, 0, len(times) - 1)
        t_lo, t_hi = times[lo], times[hi]
        span = t_hi - t_lo
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(span > 0, (want - t_lo) / span, 1.0)
        w = np.clip(w, 0.0, 1.0)
        far = span > MAX_INTERPOLATION_GAP_S
        w = np.where(far, np.where(want - t_lo < t_hi - want, 0.0, 1.0), w)
        w = np.where(want <= times[0], 0.0, w)  # before the first frame: the first frame
        lo = np.where(want <= times[0], 0, lo)
        out_j = (1 - w)[:, None, None] * joints[lo] + w[:, None, None] * joints[hi]
        out_c = (1 - w)[:, None] * conf[lo] + w[:, None] * conf[hi]
        return out_j, out_c


class Histories:
    """TrackHistory per track id; a track unseen for longer than `forget_s` is dropped."""

    def __init__(self, span_s: float, forget_s: float = 1.0) -> None:
        self.span_s = span_s
        self.forget_s = forget_s
        self.tracks: dict[int, TrackHistory] = {}

    def add(self, track_id: int, t_s: float, joints_2d_px: np.ndarray,
            confidence: np.ndarray) -> TrackHistory:
        history = self.tracks.get(track_id)
        if history is None:
            history = self.tracks[track_id] = TrackHistory(self.span_s)
        history.add(t_s, joints_2d_px, confidence)
        return history

    def forget_before(self, t_s: float) -> int:
        """Drop tracks last seen before t_s - forget_s; returns how many went."""
        gone = [tid for tid, h in self.tracks.items()
                if h.last_time_s is not None and h.last_time_s < t_s - self.forget_s]
        for tid in gone:
            del self.tracks[tid]
        return len(gone)
