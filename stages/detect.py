"""2D keypoints of several people: mediapipe's PoseLandmarker (BlazePose, 33 landmarks) on each
frame, mapped to our 17 joints.

The Tasks API `PoseLandmarker` takes a `.task` bundle. mediapipe 0.10.14's wheel ships the two
models it needs (`modules/pose_detection/pose_detection.tflite`, the person detector, and
`modules/pose_landmark/pose_landmark_full.tflite`, the "full" landmark model) but without the
input NormalizationOptions metadata the Tasks API insists on, and no bundle. `pose_bundle()`
writes that metadata with mediapipe's own writer (detector: mean 127.5, std 127.5; landmark
model: mean 0, std 255) and zips the two into a bundle in a cache directory, once per
mediapipe version (`$POSESTREAM_CACHE`, else `$XDG_CACHE_HOME/posestream`, else
`~/.cache/posestream`). Nothing is downloaded.

Two modes (`DetectConfig.static_image_mode`):
- video / camera (False): VIDEO mode with `num_poses = max_people`. The landmarker follows each
  person it has found from the region of the previous frame (landmarks only, as BlazePose does
  for one person) and runs the person detector on the whole frame only while fewer than
  `max_people` are followed: the cost is per person, not per frame area.
- unrelated images (True, `--images`): IMAGE mode on the whole frame and on overlapping tiles
  (`DetectConfig.tiles`: 2 means a 2x2 grid of tiles 1.5x the tile size, ...), which finds the
  small people the detector misses at full-frame scale; the results are merged (`merge_people`).

At most `max_people` people leave the stage: the largest (by 2D box) are kept and the rest are
counted in `people_dropped`. The people carry `track_id` UNTRACKED; the track stage names them.
Frames arrive BGR (OpenCV) and go to mediapipe as RGB. Joints are reported in the original
image's pixels (`Frame.scale_to_original`), with the original image size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from engines.runtime.skeleton import NUM_JOINTS, blazepose33_to_h36m17
from pipeline.schema import UNTRACKED, Frame, Keypoints2D, Person2D
from pipeline.stage import Stage

logger = logging.getLogger(__name__)

#: BlazePose landmark count.
NUM_BLAZEPOSE_LANDMARKS: int = 33
#: the two models of the bundle, relative to the mediapipe package, and their names inside it
BUNDLE_MODELS: dict[str, tuple[str, float, float]] = {
    # name in the bundle: (path in the wheel, input mean, input std)
    "pose_detector.tflite": ("modules/pose_detection/pose_detection.tflite", 127.5, 127.5),
    "pose_landmarks_detector.tflite": ("modules/pose_landmark/pose_landmark_full.tflite",
                                       0.0, 255.0),
}
#: tiles overlap: each tile is this many times the grid cell (centred on it, clipped)
TILE_OVERLAP: float = 1.5
#: two detections are one person when their 2D boxes share this much of the smaller box
MERGE_OVERLAP: float = 0.6
#: image mode: each person found is looked at again in square crops these many times their box;
#: the result (first look included) with the highest mean joint confidence is kept. On the
#: shared COCO photos one crop whose result always replaces the first look matches 8 of 12
#: people at 1.6 and 8 at 1.3 (a different 8); this rule with both matches 9
REFINE_MARGINS: tuple[float, ...] = (1.3, 1.6)


class DetectorModelError(RuntimeError):
    """The pose models cannot be found or bundled; the message names the file."""


def cache_dir() -> Path:
    """Where derived files (the pose bundle) are kept: $POSESTREAM_CACHE, else
    $XDG_CACHE_HOME/posestream, else ~/.cache/posestream."""
    if os.environ.get("POSESTREAM_CACHE"):
        return Path(os.environ["POSESTREAM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "posestream"


def pose_bundle(directory: Path | None = None) -> Path:
    """The PoseLandmarker `.task` bundle built from the models in the installed mediapipe
    wheel, made on first use (atomically) and reused while the models are unchanged.

    Raises DetectorModelError naming the missing model file.
    """
    import mediapipe as mp
    from mediapipe.tasks.python.metadata.metadata_writers import (
        metadata_writer,
        model_asset_bundle_utils,
    )

    root = Path(mp.__file__).parent
    sources = {}
    for name, (rel, _, _) in BUNDLE_MODELS.items():
        path = root / rel
        if not path.is_file():
            raise DetectorModelError(
                f"pose model {path} is missing: mediapipe {mp.__version__} should bundle it; "
                "reinstall it with `pip install --force-reinstall mediapipe==0.10.14`"
            )
        sources[name] = path.read_bytes()
    digest = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in sources.values()))
    directory = Path(directory) if directory is not None else cache_dir()
    out = directory / f"pose_landmarker_full_{digest.hexdigest()[:12]}.task"
    if out.is_file():
        return out
    models = {}
    for name, (rel, mean, std) in BUNDLE_MODELS.items():
        writer = metadata_writer.MetadataWriter.create(bytearray(sources[name]))
        writer.add_general_info(name, f"{rel} from mediapipe {mp.__version__}")
        writer.add_image_input([mean], [std])
        model, _ = writer.populate()
        models[name] = bytes(model)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".task.tmp")
    os.close(fd)
    try:
        model_asset_bundle_utils.create_model_asset_bundle(models, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)  # atomic: a concurrent worker sees the whole file or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("detect: built the pose bundle %s from mediapipe's models", out)
    return out


def landmarks_to_pixels(
    landmarks_norm: np.ndarray, image_width: int, image_height: int
) -> np.ndarray:
    """(..., 33, 2) mediapipe normalised landmarks (x / width, y / height) -> pixels float32.

    Landmarks may lie outside [0, 1] (joints predicted outside the image); kept as they are.
    """
    scale = np.array([image_width, image_height], dtype=np.float64)
    return (np.asarray(landmarks_norm, dtype=np.float64) * scale).astype(np.float32)


def box_of(joints_2d_px: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """(17, 2) px, (17,) -> (4,) [x0, y0, x1, y1] of the joints with confidence > 0.1 (all
    joints when none is)."""
    keep = confidence > 0.1
    pts = joints_2d_px[keep] if keep.any() else joints_2d_px
    return np.concatenate([pts.min(axis=0), pts.max(axis=0)]).astype(np.float64)


def box_area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))


def merge_people(people: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Drop duplicates among detections of the same people (from overlapping tiles).

    people: [(joints_2d_px (17, 2), confidence (17,)), ...]. Two detections are one person
    when their boxes overlap by MERGE_OVERLAP of the smaller box; the one with the larger box
    times mean confidence is kept (a tile that cut the person off sees a smaller box). Written
    here because OpenCV's NMSBoxes measures overlap by IoU only, which keeps a cut-off copy
    inside a whole one.
    """
    scored = sorted(people, key=lambda p: -box_area(box_of(*p)) * float(np.mean(p[1])))
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    kept_boxes: list[np.ndarray] = []
    for joints, conf in scored:
        box = box_of(joints, conf)
        duplicate = False
        for other in kept_boxes:
            ix = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
            iy = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
            smaller = min(box_area(box), box_area(other))
            if smaller > 0 and ix * iy / smaller >= MERGE_OVERLAP:
                duplicate = True
                break
        if not duplicate:
            kept.append((joints, conf))
            kept_boxes.append(box)
    return kept


def tile_boxes(width: int, height: int, grid: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of a grid x grid set of tiles, each TILE_OVERLAP x its cell."""
    boxes = []
    cw, ch = width / grid, height / grid
    for gy in range(grid):
        for gx in range(grid):
            cx, cy = (gx + 0.5) * cw, (gy + 0.5) * ch
            hw, hh = cw * TILE_OVERLAP / 2, ch * TILE_OVERLAP / 2
            boxes.append((int(max(0, cx - hw)), int(max(0, cy - hh)),
                          int(min(width, cx + hw)), int(min(height, cy + hh))))
    return boxes


class DetectStage(Stage):
    """Frame -> Keypoints2D (everyone found) with BlazePose (config:
    `pipeline.config.DetectConfig`)."""

    name = "detect"
    inputs = (Frame,)
    outputs = (Keypoints2D,)

    def __init__(self, config) -> None:
        super().__init__(config)
        self._landmarker = None
        self._mp = None
        self._last_ts_ms = -1
        self.people_dropped = 0  # people found beyond max_people (the smallest), counted

    def open(self) -> None:
        cfg = self.config
        if cfg.model_complexity != 1:
            raise RuntimeError(
                f"BlazePose model_complexity={cfg.model_complexity} needs a landmark model "
                "this mediapipe wheel does not bundle (mediapipe would try to download it and "
                "fail offline). Use model_complexity=1 (pose_landmark_full.tflite, bundled)."
            )
        import mediapipe as mp  # heavy import (TFLite): only in the stage's own process
        from mediapipe.tasks import python as mp_tasks
        from mediapipe.tasks.python import vision

        self._mp = mp
        bundle = pose_bundle()
        mode = vision.RunningMode.IMAGE if cfg.static_image_mode else vision.RunningMode.VIDEO
        options = vision.PoseLandmarkerOptions(
            base_options=mp_tasks.BaseOptions(model_asset_path=str(bundle)),
            running_mode=mode,
            num_poses=cfg.max_people,
            min_pose_detection_confidence=cfg.min_detection_confidence,
            min_pose_presence_confidence=cfg.min_presence_confidence,
            min_tracking_confidence=cfg.min_tracking_confidence,
        )
        self._landmarker = vision.PoseLandmarker.create_from_options(options)
        logger.info(
            "detect: BlazePose (full) PoseLandmarker, up to %d people, %s", cfg.max_people,
            f"image mode, tiles {cfg.tiles or 'none'}" if cfg.static_image_mode
            else "video mode (people followed across frames)",
        )

    def _run(self, rgb: np.ndarray, timestamp_ms: int | None) -> list:
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB,
                               data=np.ascontiguousarray(rgb))
        if timestamp_ms is None:
            return self._landmarker.detect(image).pose_landmarks
        return self._landmarker.detect_for_video(image, timestamp_ms).pose_landmarks

    @staticmethod
    def _to_joints(marks, x0: float, y0: float, w: int, h: int, scale: float):
        landmarks_norm = np.array([(m.x, m.y) for m in marks], dtype=np.float64)  # (33, 2)
        visibility = np.array([m.visibility if m.visibility is not None else 0.0
                               for m in marks], dtype=np.float32)
        px = landmarks_to_pixels(landmarks_norm, w, h).astype(np.float64) + (x0, y0)
        joints, conf = blazepose33_to_h36m17(px * scale, visibility)
        return (np.asarray(joints, np.float32),
                np.clip(np.asarray(conf, np.float32), 0.0, 1.0))

    def _refine(self, rgb: np.ndarray, joints: np.ndarray, conf: np.ndarray, scale: float):
        """Landmarks again from crops framed on this person (each of REFINE_MARGINS x their
        box, square), as BlazePose does from a detection: a person found in a tile that cut
        them off, or small in the whole frame, is seen whole and large. Of the first result and
        each crop's, the one with the highest mean joint confidence is kept (the first when no
        crop finds anybody)."""
        height, width = rgb.shape[:2]
        box = box_of(joints / scale, conf)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        best = (joints, conf)
        for margin in REFINE_MARGINS:
            half = max(box[2] - box[0], box[3] - box[1], 16.0) * margin / 2
            x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
            x1, y1 = int(min(width, cx + half)), int(min(height, cy + half))
            if x1 - x0 < 16 or y1 - y0 < 16:
                continue
            found = [self._to_joints(m, x0, y0, x1 - x0, y1 - y0, scale)
                     for m in self._run(rgb[y0:y1, x0:x1], None)]
            if not found:
                continue
            # the crop's person nearest the one we framed (others may stand close by)
            near = min(found, key=lambda p: float(np.median(np.linalg.norm(p[0] - joints,
                                                                           axis=1))))
            if float(np.mean(near[1])) > float(np.mean(best[1])):
                best = near
        return best

    def process(self, msg: Frame) -> Keypoints2D:
        if self._landmarker is None:
            raise RuntimeError("DetectStage.process called before open()")
        cfg = self.config
        height, width = msg.image.shape[:2]
        scale = float(msg.scale_to_original)
        rgb = cv2.cvtColor(msg.image, cv2.COLOR_BGR2RGB)
        found: list[tuple[np.ndarray, np.ndarray]] = []
        if cfg.static_image_mode:
            for marks in self._run(rgb, None):
                found.append(self._to_joints(marks, 0, 0, width, height, scale))
            for grid in cfg.tiles:
                for x0, y0, x1, y1 in tile_boxes(width, height, grid):
                    for marks in self._run(rgb[y0:y1, x0:x1], None):
                        found.append(self._to_joints(marks, x0, y0, x1 - x0, y1 - y0, scale))
            found = [self._refine(rgb, joints, conf, scale)
                     for joints, conf in merge_people(found)]
            found = merge_people(found)
        else:
            # VIDEO mode needs strictly increasing timestamps (ms); capture time is monotonic
            ts_ms = max(msg.t_capture_ns // 1_000_000, self._last_ts_ms + 1)
            self._last_ts_ms = ts_ms
            for marks in self._run(rgb, ts_ms):
                found.append(self._to_joints(marks, 0, 0, width, height, scale))
        found = [p for p in found if np.all(np.isfinite(p[0]))]
        if len(found) > cfg.max_people:
            found.sort(key=lambda p: -box_area(box_of(*p)))
            self.people_dropped += len(found) - cfg.max_people
            logger.info("detect: frame %d: %d people, kept the %d largest (%d dropped so far)",
                        msg.frame_id, len(found), cfg.max_people, self.people_dropped)
            found = found[:cfg.max_people]
        return Keypoints2D(
            frame_id=msg.frame_id,
            t_capture_ns=msg.t_capture_ns,
            stamps=msg.stamps,
            image_size=(int(round(width * scale)), int(round(height * scale))),
            people=tuple(Person2D(track_id=UNTRACKED, joints_2d_px=j, confidence=c)
                         for j, c in found),
        )

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None
