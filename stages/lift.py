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

Nobody in the input gives a Pose3D with no people. A person whose fit fails (degenerate 2D, no
solution in front of the camera) is left out of the frame and counted (`failed_fits`).
Runtime module: no torch.
"""

from __future__ import annotations

import logging

import numpy as np

from engines.runtime.reproject import fit_translation, fit_translation_batch
from engines.runtime.engine import load_engine
from engines.runtime.skeleton import NUM_JOINTS
from pipeline.schema import Keypoints2D, Person3D, Pose3D
from pipeline.stage import Stage
from engines.runtime.intrinsics import (
    Intrinsics,
    for_image_size,
    intrinsics_from_fov,
    load_calibration,
    undistort_pixels,
)

logger = logging.getLogger(__name__)


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

    def open(self) -> None:
        cfg = self.config
        if cfg.calib_path is not None:
            self._calibration = load_calibration(cfg.calib_path)
            logger.info("lift: calibration %s: %s", cfg.calib_path, self._calibration)
        else:
            logger.info("lift: no calibration; horizontal FOV %.1f deg", cfg.fov_deg)
        self.engine = load_engine(cfg.engine_path, backend=cfg.backend)
        if self.engine.receptive_field != 1:
            raise RuntimeError(
                f"engine {self.engine.path} needs {self.engine.receptive_field} frames; this "
                "lift stage runs single-frame engines (receptive_field 1): export one"
            )
        # run every kernel once now (ONNX Runtime allocations, numba compile or cache load)
        warm = self._lift_rel_m(_T_POSE_PX[None], intrinsics_from_fov(60.0, 640, 480))
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
        """(P, 17, 2) undistorted px -> (P, 17, 3) float64 metres, root-relative, camera axes."""
        codec = self.engine.codec
        encoded = codec.encode_full(joints_2d_px, intr.fx, intr.fy, intr.cx, intr.cy)
        out = self.engine.run({"joints_2d": encoded.joints_2d_norm})["joints_3d"]
        return np.asarray(codec.to_metric(
            out, self.config.height_m, rotation_to_camera=encoded.rotation_to_camera
        ), np.float64)

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
        rel_m = self._lift_rel_m(joints_2d_px, intr)  # (P, 17, 3)
        t_m, err_px = fit_translation_batch(
            rel_m, joints_2d_px, np.asarray(conf, np.float64), intr.fx, intr.fy, intr.cx, intr.cy
        )
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
                # joints with non-finite input have no error; report 0 (their confidence is 0)
                reproj_err_px=np.nan_to_num(np.asarray(err_px[i], np.float32), nan=0.0),
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
