"""Temporal smoothing of the 3D pose: a numba One Euro filter per coordinate.

One Euro filter (Casiez, Roussel and Vogel, CHI 2012): a first-order low-pass filter whose
cutoff rises with the (low-pass filtered) speed of the signal, so a still pose is steady and a
fast movement is followed with little lag. Per sample, with `dt` the time since the last one:

    alpha(fc)  = r / (r + 1),  r = 2 * pi * fc * dt
    dx         = (x - x_prev_raw) / dt
    dx_hat     = alpha(d_cutoff) * dx + (1 - alpha(d_cutoff)) * dx_hat_prev
    cutoff     = min_cutoff + beta * |dx_hat|
    x_hat      = alpha(cutoff) * x + (1 - alpha(cutoff)) * x_hat_prev

The first sample passes through unchanged (dx_hat = 0). `x_prev_raw` is the previous *raw*
value, as in the authors' reference code and MediaPipe's `OneEuroFilter`. `OneEuroFilter`'s own
defaults are MediaPipe's world-landmark smoothing (min_cutoff 0.1 Hz, beta 40, d_cutoff 1 Hz,
metres); the stage takes its settings from `SmoothConfig`, which run_pipeline.py fills for the
engine's kind (`pipeline.config.one_euro_for_engine`: 2 Hz and beta 5 after a single-frame
engine, 2 Hz and beta 10 after a temporal one, measured with `engines.training.evaluate
--one-euro`).

`dt` comes from the capture timestamps (`t_capture_ns`), never from an assumed frame rate, so
dropped frames and uneven cameras are handled; for a file processed whole (read as fast as the
pipeline goes, far from its own rate on a slow machine) from its frame ids at the file's
frame period (`SmoothConfig.frame_period_s`). The stage filters the root-relative pose and the
root translation separately and recomposes them, so a pose whose `joints_3d_m[ROOT] == root_m` keeps
that property. Each person (`track_id`) has filters of their own: a new id starts afresh, the
filters of an id not seen for more than `RESET_AFTER_GAP_S` are dropped, so a person seen again
after such a gap starts afresh (the old state says nothing about the new pose).
People are never blended: one track's filter only ever sees that track's poses.

The smoothed root then moves at most `SmoothConfig.max_root_speed_mps` (12 m/s, a sprinter's
peak) between two frames of a track (`limit_speed`): monocular lifting puts the depth of a
person 5 to 9 m away off by up to a metre from one frame to the next (the street video), which
no person does in 20 ms; the step is cut to that speed, the direction kept, and the limited
steps are counted (`root_steps_limited`).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
from numba import njit

from pipeline.schema import Person3D, Pose3D
from pipeline.stage import Stage

logger = logging.getLogger(__name__)

#: A gap between frames longer than this (seconds of capture time) resets the filter.
RESET_AFTER_GAP_S: float = 0.5


@njit(cache=True, fastmath=False)
def _alpha(cutoff_hz: float, dt_s: float) -> float:
    r = 2.0 * math.pi * cutoff_hz * dt_s
    return r / (r + 1.0)


@njit(cache=True, fastmath=False)
def one_euro_step(
    x: np.ndarray,
    dt_s: float,
    x_prev_raw: np.ndarray,
    x_hat: np.ndarray,
    dx_hat: np.ndarray,
    min_cutoff_hz: float,
    beta: float,
    d_cutoff_hz: float,
) -> None:
    """One One Euro update of N independent coordinates, in place.

    x: (N,) float64 new raw sample (any unit; beta is per unit/s). dt_s > 0: seconds since the
    previous sample. x_prev_raw, x_hat, dx_hat: (N,) float64 state (previous raw sample,
    filtered value, filtered derivative in unit/s), updated in place; x_hat is the output.
    """
    a_d = _alpha(d_cutoff_hz, dt_s)
    for i in range(x.shape[0]):
        dx = (x[i] - x_prev_raw[i]) / dt_s
        dx_hat[i] = a_d * dx + (1.0 - a_d) * dx_hat[i]
        a = _alpha(min_cutoff_hz + beta * abs(dx_hat[i]), dt_s)
        x_hat[i] = a * x[i] + (1.0 - a) * x_hat[i]
        x_prev_raw[i] = x[i]


class OneEuroFilter:
    """One Euro filter over an array of any fixed shape (e.g. (17, 3) joints in metres).

    `filter(values, t_s)` returns the smoothed values (float64, same shape). Timestamps must
    increase; a repeated or older timestamp returns the last output unchanged.
    """

    def __init__(self, min_cutoff_hz: float = 0.1, beta: float = 40.0, d_cutoff_hz: float = 1.0):
        if not (min_cutoff_hz > 0 and d_cutoff_hz > 0 and beta >= 0):
            raise ValueError(
                f"One Euro needs min_cutoff > 0, d_cutoff > 0 (Hz) and beta >= 0; got "
                f"min_cutoff={min_cutoff_hz}, d_cutoff={d_cutoff_hz}, beta={beta}"
            )
        self.min_cutoff_hz = float(min_cutoff_hz)
        self.beta = float(beta)
        self.d_cutoff_hz = float(d_cutoff_hz)
        self._shape: tuple[int, ...] | None = None
        self._t_s: float | None = None
        self._x_prev_raw = self._x_hat = self._dx_hat = np.zeros(0)

    @property
    def initialised(self) -> bool:
        """True once a sample has been seen since construction or the last reset."""
        return self._t_s is not None

    @property
    def last_time_s(self) -> float | None:
        """Timestamp (s) of the last accepted sample, None after a reset."""
        return self._t_s

    def reset(self) -> None:
        """Forget the past: the next sample passes through unchanged."""
        self._t_s = None

    def filter(self, values: np.ndarray, t_s: float) -> np.ndarray:
        """Smooth one sample. values: any shape (fixed between resets); t_s: seconds."""
        x = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        shape = np.shape(values)
        if not np.all(np.isfinite(x)):
            raise ValueError("One Euro filter got non-finite values; drop the frame before it")
        if self._t_s is None or shape != self._shape:
            self._shape = shape
            self._x_prev_raw = x.copy()
            self._x_hat = x.copy()
            self._dx_hat = np.zeros_like(x)
            self._t_s = float(t_s)
            return self._x_hat.reshape(shape).copy()
        dt_s = float(t_s) - self._t_s
        if dt_s <= 0.0:
            logger.debug("One Euro: timestamp %.6f s not after %.6f s; output held", t_s, self._t_s)
            return self._x_hat.reshape(shape).copy()
        one_euro_step(
            x, dt_s, self._x_prev_raw, self._x_hat, self._dx_hat,
            self.min_cutoff_hz, self.beta, self.d_cutoff_hz,
        )
        self._t_s = float(t_s)
        return self._x_hat.reshape(shape).copy()


def limit_speed(prev_m: np.ndarray, new_m: np.ndarray, dt_s: float,
                max_speed_mps: float) -> tuple[np.ndarray, bool]:
    """(3,) previous and new position, m -> (the new position moved at most max_speed_mps *
    dt_s from prev_m along the same direction, whether it was cut)."""
    step = np.asarray(new_m, np.float64) - prev_m
    length = float(np.linalg.norm(step))
    reach = max_speed_mps * max(dt_s, 0.0)
    if length <= reach:
        return np.asarray(new_m, np.float64), False
    return prev_m + step * (reach / length), True


class _TrackFilters:
    """The One Euro filters of one track: root-relative pose (17, 3) and root (3,), and the
    root last sent (for the speed limit)."""

    def __init__(self, cfg) -> None:
        self.pose = OneEuroFilter(cfg.min_cutoff, cfg.beta, cfg.d_cutoff)
        self.root = OneEuroFilter(cfg.min_cutoff, cfg.beta, cfg.d_cutoff)
        self.root_out_m: np.ndarray | None = None
        self.t_out_s: float | None = None

    def reset(self) -> None:
        self.pose.reset()
        self.root.reset()
        self.root_out_m = self.t_out_s = None


class SmoothStage(Stage):
    """Pose3D -> Pose3D with One Euro smoothed joints per track (config:
    `pipeline.config.SmoothConfig`).

    Per person: the root-relative pose (17, 3) and the root translation (3,) are filtered
    separately, in metres, and recomposed. A track not seen for RESET_AFTER_GAP_S loses its
    filters (a track seen again later starts afresh).
    """

    name = "smooth"
    inputs = (Pose3D,)
    outputs = (Pose3D,)

    def __init__(self, config) -> None:
        super().__init__(config)
        self._filters: dict[int, _TrackFilters] | None = None
        self.resets = 0  # how many times a track's filters started afresh after a gap
        self.tracks_started = 0  # track ids that got filters of their own
        self.tracks_ended = 0  # track ids whose filters were dropped (unseen too long)
        self.root_steps_limited = 0  # root steps faster than max_root_speed_mps, cut to it

    def open(self) -> None:
        cfg = self.config
        self._filters = {}
        # compile (or load from numba's cache) now, not on the first live frame
        warm = OneEuroFilter()
        warm.filter(np.zeros(3), 0.0)
        warm.filter(np.zeros(3), 0.033)
        logger.info(
            "smooth: One Euro per track, min_cutoff=%.3g Hz beta=%.3g d_cutoff=%.3g Hz%s",
            cfg.min_cutoff, cfg.beta, cfg.d_cutoff, "" if cfg.enabled else " (disabled)",
        )

    def _smooth_person(self, person: Person3D, t_s: float, frame_id: int) -> Person3D:
        filters = self._filters.get(person.track_id)
        if filters is None:
            filters = self._filters[person.track_id] = _TrackFilters(self.config)
            self.tracks_started += 1
        last = filters.pose.last_time_s
        if last is not None and t_s - last > RESET_AFTER_GAP_S:
            logger.debug("smooth: track %d reset (gap of %.3f s)", person.track_id, t_s - last)
            filters.reset()
            self.resets += 1
        root_m = np.asarray(person.root_m, dtype=np.float64)
        rel_m = np.asarray(person.joints_3d_m, dtype=np.float64) - root_m  # (17, 3)
        if not (np.all(np.isfinite(rel_m)) and np.all(np.isfinite(root_m))):
            logger.warning("smooth: frame %d track %d has non-finite joints; passed on "
                           "unsmoothed", frame_id, person.track_id)
            filters.reset()
            return person
        rel_smooth_m = filters.pose.filter(rel_m, t_s)
        root_smooth_m = filters.root.filter(root_m, t_s)
        limit = self.config.max_root_speed_mps
        if limit is not None and filters.root_out_m is not None:
            root_smooth_m, cut = limit_speed(filters.root_out_m, root_smooth_m,
                                             t_s - filters.t_out_s, limit)
            if cut:
                self.root_steps_limited += 1
                logger.debug("smooth: frame %d track %d: root step over %.3g m/s cut",
                             frame_id, person.track_id, limit)
        filters.root_out_m, filters.t_out_s = root_smooth_m, t_s
        return dataclasses.replace(
            person,
            joints_3d_m=(rel_smooth_m + root_smooth_m).astype(np.float32),
            root_m=root_smooth_m.astype(np.float32),
        )

    def close(self) -> None:
        if self.root_steps_limited:
            logger.info("smooth: %d root steps faster than %.3g m/s were cut to that speed",
                        self.root_steps_limited, self.config.max_root_speed_mps)

    def process(self, msg: Pose3D) -> Pose3D:
        if self._filters is None:
            raise RuntimeError("SmoothStage.process called before open()")
        if not self.config.enabled:
            return msg
        period = self.config.frame_period_s
        t_s = msg.frame_id * period if period is not None else msg.t_capture_ns * 1e-9
        present = {p.track_id for p in msg.people}
        for gone in [tid for tid, f in self._filters.items() if tid not in present
                     and f.pose.last_time_s is not None
                     and t_s - f.pose.last_time_s > RESET_AFTER_GAP_S]:
            del self._filters[gone]  # the track ended (or is gone long enough to start afresh)
            self.tracks_ended += 1
        people = tuple(self._smooth_person(p, t_s, msg.frame_id) for p in msg.people)
        return dataclasses.replace(msg, people=people)
