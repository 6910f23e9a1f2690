"""2D keypoints: mediapipe BlazePose (33 landmarks) on each frame, mapped to our 17 joints.

Uses the legacy `mp.solutions.pose.Pose` graph of mediapipe 0.10.14, whose wheel bundles the
person detector and the "full" landmark model (model_complexity=1) only; complexity 0 (lite)
and 2 (heavy) would download a model at start-up, which fails offline, so they are refused in
`open()` unless their model file is already installed.

`static_image_mode=True` runs the person detector on every frame (unrelated images, --images);
False tracks the person across frames (video, camera) and only re-detects when tracking
confidence drops. Frames arrive BGR (OpenCV) and are converted to RGB for mediapipe.
BlazePose finds at most one person: the most prominent one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from engines.runtime.skeleton import NUM_JOINTS, blazepose33_to_h36m17
from pipeline.schema import Frame, Keypoints2D
from pipeline.stage import Stage

logger = logging.getLogger(__name__)

#: BlazePose landmark count.
NUM_BLAZEPOSE_LANDMARKS: int = 33
#: landmark model file per model_complexity, under mediapipe/modules/pose_landmark/.
LANDMARK_MODEL_FILES: dict[int, str] = {
    0: "pose_landmark_lite.tflite",
    1: "pose_landmark_full.tflite",
    2: "pose_landmark_heavy.tflite",
}


def landmark_model_path(model_complexity: int) -> Path:
    """Where mediapipe looks for the landmark model of this complexity (may not exist)."""
    import mediapipe as mp

    if model_complexity not in LANDMARK_MODEL_FILES:
        raise ValueError(
            f"model_complexity must be 0, 1 or 2, got {model_complexity!r}; use 1 (bundled)"
        )
    return (
        Path(mp.__file__).parent / "modules" / "pose_landmark"
        / LANDMARK_MODEL_FILES[model_complexity]
    )


def landmarks_to_pixels(
    landmarks_norm: np.ndarray, image_width: int, image_height: int
) -> np.ndarray:
    """(..., 33, 2) mediapipe normalised landmarks (x / width, y / height) -> pixels float32.

    Landmarks may lie outside [0, 1] (joints predicted outside the image); kept as they are.
    """
    scale = np.array([image_width, image_height], dtype=np.float64)
    return (np.asarray(landmarks_norm, dtype=np.float64) * scale).astype(np.float32)


def no_person(frame: Frame) -> Keypoints2D:
    """The explicit "nobody here" message for `frame`: person_present False, zeros."""
    height, width = frame.image.shape[:2]
    return Keypoints2D(
        frame_id=frame.frame_id,
        t_capture_ns=frame.t_capture_ns,
        stamps=frame.stamps,
        image_size=(int(width), int(height)),
        person_present=False,
        joints_2d_px=np.zeros((NUM_JOINTS, 2), np.float32),
        confidence=np.zeros(NUM_JOINTS, np.float32),
    )


class DetectStage(Stage):
    """Frame -> Keypoints2D with BlazePose (config: `pipeline.config.DetectConfig`)."""

    name = "detect"
    inputs = (Frame,)
    outputs = (Keypoints2D,)

    def __init__(self, config) -> None:
        super().__init__(config)
        self._pose = None

    def open(self) -> None:
        cfg = self.config
        model = landmark_model_path(cfg.model_complexity)
        if not model.is_file():
            raise RuntimeError(
                f"BlazePose model_complexity={cfg.model_complexity} needs {model.name}, which "
                f"this mediapipe wheel does not bundle (mediapipe would try to download it and "
                f"fail offline). Use model_complexity=1 (pose_landmark_full.tflite, bundled)."
            )
        import mediapipe as mp  # heavy import (TFLite): only in the stage's own process

        self._pose = mp.solutions.pose.Pose(
            static_image_mode=cfg.static_image_mode,
            model_complexity=cfg.model_complexity,
            smooth_landmarks=not cfg.static_image_mode,
            enable_segmentation=False,
            min_detection_confidence=cfg.min_detection_confidence,
            min_tracking_confidence=cfg.min_tracking_confidence,
        )
        logger.info(
            "detect: BlazePose model_complexity=%d, %s mode",
            cfg.model_complexity, "static image" if cfg.static_image_mode else "tracking",
        )

    def process(self, msg: Frame) -> Keypoints2D:
        if self._pose is None:
            raise RuntimeError("DetectStage.process called before open()")
        height, width = msg.image.shape[:2]
        rgb = cv2.cvtColor(msg.image, cv2.COLOR_BGR2RGB)
        result = self._pose.process(rgb)
        if result.pose_landmarks is None:
            return no_person(msg)
        marks = result.pose_landmarks.landmark
        landmarks_norm = np.array([(m.x, m.y) for m in marks], dtype=np.float64)  # (33, 2)
        visibility = np.array([m.visibility for m in marks], dtype=np.float32)  # (33,)
        landmarks_px = landmarks_to_pixels(landmarks_norm, width, height)
        joints_2d_px, confidence = blazepose33_to_h36m17(landmarks_px, visibility)
        joints_2d_px = np.asarray(joints_2d_px, dtype=np.float32)
        confidence = np.clip(np.asarray(confidence, dtype=np.float32), 0.0, 1.0)
        if not np.all(np.isfinite(joints_2d_px)):
            logger.warning("detect: non-finite landmarks in frame %d; no person", msg.frame_id)
            return no_person(msg)
        return Keypoints2D(
            frame_id=msg.frame_id,
            t_capture_ns=msg.t_capture_ns,
            stamps=msg.stamps,
            image_size=(int(width), int(height)),
            person_present=True,
            joints_2d_px=joints_2d_px,
            confidence=confidence,
        )

    def close(self) -> None:
        if self._pose is not None:
            self._pose.close()
            self._pose = None
