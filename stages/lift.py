"""2D -> metric 3D: the lifter engine, then the root translation from the reprojection fit.

Per frame, for all P people at once (17 joints each; one engine call with batch P):
1. intrinsics (fx, fy, cx, cy) for the frame's image size, from `--calib FILE` (engines/runtime/intrinsics:
   OpenCV camera matrix, optional distortion) or from `--fov DEG` (horizontal field of view);
   keypoints are undistorted first when the calibration has distortion coefficients;
2. `codec.encode_full` -> `engine.run` -> `codec.to_metric(height_m, rotation_to_camera)`: the
   root-relative pose in metres, camera axes;
3. `engines.runtime.reproject.fit_translation_batch` (numba, weights = detector confidences):
   each person's root translation in the camera frame and each joint's reprojection error in
   pixels;
4. Pose3D: one Person3D per person (track id kept): joints_3d_m = root-relative pose + root_m,
   camera frame (OpenCV axes), metres.

`joints_2d_px` in the output are the detector's pixels as received; `reproj_err_px` is measured
on the undistorted keypoints (the same when there is no distortion).

Temporal engines (receptive field F > 1): each person's 2D history (per track id,
engines.runtime.history) is resampled at the engine's rate from capture times (or frame ids x
LiftConfig.frame_period_s for files processed whole), the current frame last, padded with the
track's first frame at its start; one engine call with (P, F, 17, 2).

Nobody in the input gives a Pose3D with no people. A person whose fit fails (degenerate 2D, no
solution in front of the camera) is left out of the frame and counted (`failed_fits`).
Runtime module: no torch.
"""

from __future__ import annotations

import logging

import numpy as np

from engines.runtime.reproject import fit_translation, fit_translation_batch
from engines.runtime.engine import load_engine
from engines.runtime.history import Histories
from engines.runtime.skeleton import NUM_JOINTS
from pipeline.schema import UNTRACKED, Keypoints2D, Person3D, Pose3D
from pipeline.stage import Stage
from engines.runtime.intrinsics import (
    Intrinsics,
    for_image_size,
    intrinsics_from_fov,
    load_calibration,
    undistort_pixels,
)

logger = logging.getLogger(__name__)


#: the longest history a temporal engine may ask for (s) and the rates a stage can serve
MAX_HISTORY_S: float = 10.0
FPS_RANGE: tuple[float, float] = (1.0, 240.0)


def check_servable(engine) -> None:
    """Raise RuntimeError, saying what to do, for an engine this stage cannot serve live: a
    temporal engine that needs future frames, or whose rate or window is out of reach."""
    if engine.receptive_field <= 1:
        return
    if not engine.causal:
        raise RuntimeError(
            f"engine {engine.path} looks at future frames (causal: false): a live stage cannot "
            "wait for them; export a causal temporal engine, or use a single-frame one")
    if engine.fps is None or not FPS_RANGE[0] <= engine.fps <= FPS_RANGE[1]:
        raise RuntimeError(
            f"engine {engine.path} wants its frames at {engine.fps} fps; this stage resamples "
            f"each person's history to {FPS_RANGE[0]:g}-{FPS_RANGE[1]:g} fps: re-export it")
    if (engine.receptive_field - 1) / engine.fps > MAX_HISTORY_S:
        raise RuntimeError(
            f"engine {engine.path} needs {engine.receptive_field} frames at {engine.fps:g} fps "
            f"({(engine.receptive_field - 1) / engine.fps:.1f} s of history), more than the "
            f"{MAX_HISTORY_S:g} s this stage keeps: use a smaller receptive field")


class LiftStage(Stage):
    """Keypoints2D -> Pose3D (config: `pipeline.config.LiftConfig`)."""

    name = "lift"
    inputs = (Keypoints2D,)
    outputs = (Pose3D,)

    def __init__(self, config) -> None:
        super().__init__(config)
        self.engine = None
        self._calibration: Intrinsics | None = None
        self._intrinsics: dict[tuple[int, int], Intrinsics] = {}
        self.failed_fits = 0  # frames with a person whose translation fit failed
        self._histories: Histories | None = None  # per-track 2D, temporal engines only

    def open(self) -> None:
        cfg = self.config
        if cfg.calib_path is not None:
            self._calibration = load_calibration(cfg.calib_path)
            logger.info("lift: calibration %s: %s", cfg.calib_path, self._calibration)
        else:
            logger.info("lift: no calibration; horizontal FOV %.1f deg", cfg.fov_deg)
        self.engine = load_engine(cfg.engine_path, backend=cfg.backend)
        check_servable(self.engine)
        if self.engine.receptive_field > 1:
            frames, fps = self.engine.receptive_field, self.engine.fps
            self._histories = Histories(span_s=(frames - 1) / fps + 0.1,
                                        forget_s=max(1.0, (frames - 1) / fps))
            logger.info("lift: temporal engine, %d frames at %.1f fps (%.2f s of each person's "
                        "history), timed by %s", frames, fps, (frames - 1) / fps,
                        "capture time" if cfg.frame_period_s is None
                        else f"frame ids at {1 / cfg.frame_period_s:.1f} fps")
        # run every kernel once now (ONNX Runtime allocations, numba compile or cache load)
        warm_2d = _T_POSE_PX[None]
        if self.engine.receptive_field > 1:
            warm_2d = np.repeat(warm_2d[:, None], self.engine.receptive_field, axis=1)
        warm = self._lift_rel_m(warm_2d, intrinsics_from_fov(60.0, 640, 480))
        fit_translation(warm[0], _T_POSE_PX, np.ones(NUM_JOINTS), 554.0, 554.0, 320.0, 240.0)
        fit_translation_batch(warm, _T_POSE_PX[None], np.ones((1, NUM_JOINTS)),
                              554.0, 554.0, 320.0, 240.0)
        logger.info(
            "lift: engine %s on %s; subject height %s",
            self.engine.engine_id, self.engine.backend,
            "from the bone-length prior" if cfg.height_m is None else f"{cfg.height_m:.2f} m",
        )

    def intrinsics_for(self, image_size: tuple[int, int]) -> Intrinsics:
        """Intrinsics for frames of image_size (width, height), cached per size. Raises
        CalibrationError when the calibration does not fit frames of that size."""
        intr = self._intrinsics.get(image_size)
        if intr is None:
            width, height = image_size
            if self._calibration is not None:
                intr = for_image_size(self._calibration, image_size, str(self.config.calib_path))
            else:
                intr = intrinsics_from_fov(self.config.fov_deg, width, height)
            logger.info(
                "lift: %dx%d frames: fx=%.1f fy=%.1f cx=%.1f cy=%.1f px",
                width, height, intr.fx, intr.fy, intr.cx, intr.cy,
            )
            self._intrinsics[image_size] = intr
        return intr

    def _lift_rel_m(self, joints_2d_px: np.ndarray, intr: Intrinsics) -> np.ndarray:
        """(P, 17, 2) undistorted px -> (P, 17, 3) float64 metres, root-relative, camera axes.

        A temporal engine takes (P, F, 17, 2) windows (oldest first); each frame is encoded on
        its own and the newest frame's virtual-camera rotation turns the output to the camera.
        """
        codec = self.engine.codec
        people = joints_2d_px.shape[0]
        flat = joints_2d_px.reshape(-1, NUM_JOINTS, 2)
        encoded = codec.encode_full(flat, intr.fx, intr.fy, intr.cx, intr.cy)
        norm = encoded.joints_2d_norm.reshape(joints_2d_px.shape).astype(np.float32)
        rotation = encoded.rotation_to_camera
        if joints_2d_px.ndim == 4:  # windows: the newest frame of each is the one lifted
            rotation = rotation.reshape(people, -1, 3, 3)[:, -1]
        out = self.engine.run({"joints_2d": norm})["joints_3d"]
        return np.asarray(codec.to_metric(out, self.config.height_m, rotation_to_camera=rotation),
                          np.float64)

    def _lift_each(self, inputs: np.ndarray, intr: Intrinsics) -> np.ndarray:
        """`_lift_rel_m` for all people at once; when the codec refuses one person's 2D
        (ValueError: e.g. joints more than 90 degrees from the root's ray, which hostile or
        broken input can hold), each person alone, that one NaN (left out below) - so one
        bad person neither loses the others nor fails the whole frame."""
        try:
            return self._lift_rel_m(inputs, intr)
        except ValueError:
            out = np.full((len(inputs), NUM_JOINTS, 3), np.nan)
            for i in range(len(inputs)):
                try:
                    out[i] = self._lift_rel_m(inputs[i:i + 1], intr)[0]
                except ValueError:
                    pass
            return out

    @staticmethod
    def _fit_each(rel_m: np.ndarray, joints_2d_px: np.ndarray, conf: np.ndarray,
                  intr: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
        """fit_translation_batch with the confidences as weights, clipped to [0, 1] (NaN: 0;
        the schema checks only their dtype); a person the fit refuses (ValueError) gets NaN
        and is left out, the others are fitted alone."""
        conf = np.asarray(conf, np.float64)
        weights = np.clip(np.where(np.isnan(conf), 0.0, conf), 0.0, 1.0)
        args = (intr.fx, intr.fy, intr.cx, intr.cy)
        try:
            return fit_translation_batch(rel_m, joints_2d_px, weights, *args)
        except ValueError:
            t_m = np.full((len(rel_m), 3), np.nan)
            err_px = np.full((len(rel_m), NUM_JOINTS), np.nan)
            for i in range(len(rel_m)):
                try:
                    one = fit_translation_batch(rel_m[i:i + 1], joints_2d_px[i:i + 1],
                                                weights[i:i + 1], *args)
                except ValueError:
                    continue
                t_m[i], err_px[i] = one[0][0], one[1][0]
            return t_m, err_px

    def _time_s(self, msg: Keypoints2D) -> float:
        period = self.config.frame_period_s
        return msg.frame_id * period if period is not None else msg.t_capture_ns * 1e-9

    def _windows(self, msg: Keypoints2D, joints_2d_px: np.ndarray,
                 conf: np.ndarray) -> np.ndarray:
        """(P, F, 17, 2) px: each person's history, resampled at the engine's rate, the
        current frame last; a track seen for the first time is its first frame repeated."""
        t_s = self._time_s(msg)
        self._histories.forget_before(t_s)
        frames, fps = self.engine.receptive_field, self.engine.fps
        out = np.empty((len(msg.people), frames, NUM_JOINTS, 2), np.float64)
        for i, person in enumerate(msg.people):
            if person.track_id == UNTRACKED:  # nobody said who this is: no history to share
                out[i] = joints_2d_px[i]
                continue
            history = self._histories.add(person.track_id, t_s, joints_2d_px[i], conf[i])
            out[i] = history.window(t_s, frames, fps)[0]
        return out

    def process(self, msg: Keypoints2D) -> Pose3D:
        if self.engine is None:
            raise RuntimeError("LiftStage.process called before open()")
        engine_id = self.engine.engine_id
        if not msg.people:
            return Pose3D(frame_id=msg.frame_id, t_capture_ns=msg.t_capture_ns,
                          stamps=msg.stamps, image_size=msg.image_size, engine_id=engine_id)
        intr = self.intrinsics_for(tuple(msg.image_size))
        raw_px = np.stack([p.joints_2d_px for p in msg.people])  # (P, 17, 2) detector px
        conf = np.stack([p.confidence for p in msg.people])  # (P, 17)
        joints_2d_px = undistort_pixels(raw_px.reshape(-1, 2), intr).reshape(raw_px.shape)
        inputs = joints_2d_px if self._histories is None else \
            self._windows(msg, joints_2d_px, conf)
        rel_m = self._lift_each(inputs, intr)  # (P, 17, 3), NaN for a person it cannot lift
        t_m, err_px = self._fit_each(rel_m, joints_2d_px, conf, intr)
        # joints with non-finite input have no error; report 0 (their confidence is 0)
        err_px = err_px.astype(np.float32)
        if not np.isfinite(err_px).all():  # rare: skip nan_to_num's cost on every frame
            err_px = np.nan_to_num(err_px, nan=0.0)
        people = []
        for i, person in enumerate(msg.people):
            if not (np.all(np.isfinite(t_m[i])) and np.all(np.isfinite(rel_m[i]))):
                self.failed_fits += 1
                # say so the first time and then now and then, not on every frame
                log = logger.warning if self.failed_fits % 100 == 1 else logger.debug
                log("lift: frame %d, track %d: no root translation fits the 2D joints "
                    "(degenerate or behind the camera); left out (%d such so far)",
                    msg.frame_id, person.track_id, self.failed_fits)
                continue
            people.append(Person3D(
                track_id=person.track_id,
                joints_3d_m=(rel_m[i] + t_m[i]).astype(np.float32),
                root_m=np.asarray(t_m[i], np.float32),
                joints_2d_px=np.asarray(person.joints_2d_px, np.float32),
                confidence=np.asarray(person.confidence, np.float32),
                reproj_err_px=err_px[i],
            ))
        return Pose3D(frame_id=msg.frame_id, t_capture_ns=msg.t_capture_ns, stamps=msg.stamps,
                      image_size=msg.image_size, people=tuple(people), engine_id=engine_id)

    def close(self) -> None:
        self.engine = None


#: a rough standing person, 640x480 image, for warming the kernels up in open().
_T_POSE_PX: np.ndarray = np.array(
    [[320, 260], [300, 262], [298, 330], [296, 400], [340, 262], [342, 330], [344, 400],
     [320, 210], [320, 160], [320, 145], [320, 120], [350, 165], [380, 165], [410, 165],
     [290, 165], [260, 165], [230, 165]], dtype=np.float64,
)
