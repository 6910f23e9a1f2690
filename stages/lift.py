"""2D -> metric 3D: the lifter engine, then the root translation from the reprojection fit.

Per frame (one person, 17 joints):
1. intrinsics (fx, fy, cx, cy) for the frame's image size, from `--calib FILE` (engines/runtime/intrinsics:
   OpenCV camera matrix, optional distortion) or from `--fov DEG` (horizontal field of view);
   keypoints are undistorted first when the calibration has distortion coefficients;
2. `codec.encode_full` -> `engine.run` -> `codec.to_metric(height_m, rotation_to_camera)`: the
   root-relative pose in metres, camera axes;
3. `engines.runtime.reproject.fit_translation` (numba, weights = detector confidences): the root
   translation in the camera frame and each joint's reprojection error in pixels;
4. Pose3D: joints_3d_m = root-relative pose + root_m, camera frame (OpenCV axes), metres.

`joints_2d_px` in the output are the detector's pixels as received; `reproj_err_px` is measured
on the undistorted keypoints (the same when there is no distortion).

No person in the input, or a fit that fails (degenerate 2D, no solution in front of the
camera), gives a Pose3D with person_present False and zeros. Runtime module: no torch.
"""

from __future__ import annotations

import logging

import numpy as np

from engines.runtime.reproject import fit_translation
from engines.runtime.engine import load_engine
from engines.runtime.skeleton import NUM_JOINTS
from pipeline.schema import Keypoints2D, Pose3D
from pipeline.stage import Stage
from engines.runtime.intrinsics import (
    Intrinsics,
    for_image_size,
    intrinsics_from_fov,
    load_calibration,
    undistort_pixels,
)

logger = logging.getLogger(__name__)


def empty_pose(kp: Keypoints2D, engine_id: str) -> Pose3D:
    """The "no person" Pose3D for `kp`: person_present False, zeros (2D and confidences kept)."""
    return Pose3D(
        frame_id=kp.frame_id,
        t_capture_ns=kp.t_capture_ns,
        stamps=kp.stamps,
        image_size=kp.image_size,
        person_present=False,
        joints_3d_m=np.zeros((NUM_JOINTS, 3), np.float32),
        root_m=np.zeros(3, np.float32),
        joints_2d_px=np.asarray(kp.joints_2d_px, np.float32),
        confidence=np.asarray(kp.confidence, np.float32),
        reproj_err_px=np.zeros(NUM_JOINTS, np.float32),
        engine_id=engine_id,
    )


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
        warm = self._lift_rel_m(_T_POSE_PX, intrinsics_from_fov(60.0, 640, 480))
        fit_translation(warm, _T_POSE_PX, np.ones(NUM_JOINTS), 554.0, 554.0, 320.0, 240.0)
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
        """(17, 2) undistorted px -> (17, 3) float32 metres, root-relative, camera axes."""
        codec = self.engine.codec
        encoded = codec.encode_full(joints_2d_px[None], intr.fx, intr.fy, intr.cx, intr.cy)
        out = self.engine.run({"joints_2d": encoded.joints_2d_norm})["joints_3d"]
        return codec.to_metric(
            out, self.config.height_m, rotation_to_camera=encoded.rotation_to_camera
        )[0]

    def process(self, msg: Keypoints2D) -> Pose3D:
        if self.engine is None:
            raise RuntimeError("LiftStage.process called before open()")
        engine_id = self.engine.engine_id
        if not msg.person_present:
            return empty_pose(msg, engine_id)
        intr = self.intrinsics_for(tuple(msg.image_size))
        joints_2d_px = undistort_pixels(msg.joints_2d_px, intr)  # (17, 2) float64
        rel_m = self._lift_rel_m(joints_2d_px, intr).astype(np.float64)
        weights = np.asarray(msg.confidence, np.float64)
        t_m, err_px = fit_translation(
            rel_m, joints_2d_px, weights, intr.fx, intr.fy, intr.cx, intr.cy
        )
        if not (np.all(np.isfinite(t_m)) and np.all(np.isfinite(rel_m))):
            self.failed_fits += 1
            # say so the first time and then now and then, not on every frame of a bad stretch
            log = logger.warning if self.failed_fits % 100 == 1 else logger.debug
            log("lift: frame %d: no root translation fits the 2D joints (degenerate or behind "
                "the camera); sent as no person (%d such frames so far)",
                msg.frame_id, self.failed_fits)
            return empty_pose(msg, engine_id)
        return Pose3D(
            frame_id=msg.frame_id,
            t_capture_ns=msg.t_capture_ns,
            stamps=msg.stamps,
            image_size=msg.image_size,
            person_present=True,
            joints_3d_m=(rel_m + t_m).astype(np.float32),
            root_m=np.asarray(t_m, np.float32),
            joints_2d_px=np.asarray(msg.joints_2d_px, np.float32),
            confidence=np.asarray(msg.confidence, np.float32),
            # joints with non-finite input have no error; report them as 0 with confidence 0
            reproj_err_px=np.nan_to_num(np.asarray(err_px, np.float32), nan=0.0),
            engine_id=engine_id,
        )

    def close(self) -> None:
        self.engine = None


#: a rough standing person, 640x480 image, for warming the kernels up in open().
_T_POSE_PX: np.ndarray = np.array(
    [[320, 260], [300, 262], [298, 330], [296, 400], [340, 262], [342, 330], [344, 400],
     [320, 210], [320, 160], [320, 145], [320, 120], [350, 165], [380, 165], [410, 165],
     [290, 165], [260, 165], [230, 165]], dtype=np.float64,
)
