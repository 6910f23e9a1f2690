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
- video / camera (False): each person found is followed from frame to frame with the landmark
  model alone, on the region their landmarks gave in the previous frame, as BlazePose follows
  one person; this is per person, with no person detector. New people are looked for every
  `discover_every` frames while fewer than `max_people` are followed (every frame while nobody
  is): one person-detector run per look, on the whole frame or, every other look, on one of the
  overlapping `video_tiles` x `video_tiles` tiles in turn (the detector misses small people at
  full-frame scale). So one person in view costs what a single-person BlazePose costs, between
  looks. The two mediapipe graphs (`DISCOVER_GRAPH`, `FOLLOW_GRAPH`) are wired from the
  subgraphs the wheel registers for its own single-person Pose solution (`PoseDetectionCpu`,
  `PoseDetectionToRoi`, `PoseLandmarkByRoiCpu`, `PoseLandmarksToRoi`) and its loop calculators;
  the Tasks PoseLandmarker's VIDEO mode cannot be used for this because it runs the person
  detector on every frame in which it follows fewer than `num_poses` people.
- unrelated images (True, `--images`): the Tasks PoseLandmarker in IMAGE mode on the whole
  frame and on overlapping tiles (`DetectConfig.tiles`: 2 means a 2x2 grid of tiles 1.5x the
  tile size, ...), which finds the small people the detector misses at full-frame scale; the
  results are merged (`merge_people`).

At most `max_people` people leave the stage: the largest (by 2D box) are kept and the rest are
counted in `people_dropped`. The people carry `track_id` UNTRACKED; the track stage names them.
Frames arrive BGR (OpenCV) and go to mediapipe as RGB. Joints are reported in the original
image's pixels (`Frame.scale_to_original`), with the original image size.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import queue
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np

from engines.runtime.skeleton import blazepose33_to_h36m17
from pipeline.config import auto_follow_threads
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
#: video mode: look for people (the person detector, then each detection's region) -> ROIS
DISCOVER_GRAPH: str = """
input_stream: "IMAGE:image"
output_stream: "ROIS:rois"
node { calculator: "ImagePropertiesCalculator" input_stream: "IMAGE:image"
       output_stream: "SIZE:image_size" }
node { calculator: "PoseDetectionCpu" input_stream: "IMAGE:image"
       output_stream: "DETECTIONS:detections" }
node { calculator: "BeginLoopDetectionCalculator" input_stream: "ITERABLE:detections"
       input_stream: "CLONE:image_size" output_stream: "ITEM:detection"
       output_stream: "CLONE:loop_image_size" output_stream: "BATCH_END:batch_end" }
node { calculator: "PoseDetectionToRoi" input_stream: "DETECTION:detection"
       input_stream: "IMAGE_SIZE:loop_image_size" output_stream: "ROI:roi" }
node { calculator: "EndLoopNormalizedRectCalculator" input_stream: "ITEM:roi"
       input_stream: "BATCH_END:batch_end" output_stream: "ITERABLE:rois" }
"""
#: video mode: one person's landmarks in a region, and their region for the next frame
FOLLOW_GRAPH: str = """
input_stream: "IMAGE:image"
input_stream: "ROI:roi"
input_side_packet: "MODEL_COMPLEXITY:model_complexity"
input_side_packet: "ENABLE_SEGMENTATION:enable_segmentation"
output_stream: "LANDMARKS:landmarks"
output_stream: "NEXT_ROI:next_roi"
node { calculator: "ImagePropertiesCalculator" input_stream: "IMAGE:image"
       output_stream: "SIZE:image_size" }
node { calculator: "PoseLandmarkByRoiCpu"
       input_side_packet: "MODEL_COMPLEXITY:model_complexity"
       input_side_packet: "ENABLE_SEGMENTATION:enable_segmentation"
       input_stream: "IMAGE:image" input_stream: "ROI:roi"
       output_stream: "LANDMARKS:landmarks" output_stream: "AUXILIARY_LANDMARKS:aux" }
node { calculator: "PoseLandmarksToRoi" input_stream: "LANDMARKS:aux"
       input_stream: "IMAGE_SIZE:image_size" output_stream: "ROI:next_roi" }
"""
#: video mode: a person lost is looked for around their last region (this many times its
#: size), on the next frames, for LOST_LOOKS x discover_every frames or until found
LOST_LOOK_MARGIN: float = 1.5
LOST_LOOKS: int = 1
#: video mode: the CPU priority (nice) of the looks' thread, the lowest
LOOK_NICE: int = 19
#: the options of those graphs' nodes that carry our thresholds (the names mediapipe's own
#: Pose solution sets)
DETECTOR_THRESHOLD_OPTION: str = "posedetectioncpu__TensorsToDetectionsCalculator.min_score_thresh"
PRESENCE_THRESHOLD_OPTION: str = (
    "poselandmarkbyroicpu__tensorstoposelandmarksandsegmentation__ThresholdingCalculator.threshold"
)
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


def wheel_models() -> dict[str, Path]:
    """{name in the bundle: path} of the two pose models in the installed mediapipe wheel.

    Raises DetectorModelError naming a missing model file.
    """
    import mediapipe as mp

    root = Path(mp.__file__).parent
    paths = {name: root / rel for name, (rel, _, _) in BUNDLE_MODELS.items()}
    for path in paths.values():
        if not path.is_file():
            raise DetectorModelError(
                f"pose model {path} is missing: mediapipe {mp.__version__} should bundle it; "
                "reinstall it with `pip install --force-reinstall mediapipe==0.10.14`"
            )
    return paths


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

    sources = {name: path.read_bytes() for name, path in wheel_models().items()}
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


def merge_people(people: list[tuple]) -> list[tuple]:
    """Drop duplicates among detections of the same people (from overlapping tiles).

    people: [(joints_2d_px (17, 2), confidence (17,), ...), ...] (anything after the first two
    items rides along). Two detections are one person
    when their boxes overlap by MERGE_OVERLAP of the smaller box; the one with the larger box
    times mean confidence is kept (a tile that cut the person off sees a smaller box). Written
    here because OpenCV's NMSBoxes measures overlap by IoU only, which keeps a cut-off copy
    inside a whole one.
    """
    scored = sorted(people, key=lambda p: -box_area(box_of(p[0], p[1])) * float(np.mean(p[1])))
    kept: list[tuple] = []
    kept_boxes: list[np.ndarray] = []
    for person in scored:
        box = box_of(person[0], person[1])
        duplicate = False
        for other in kept_boxes:
            ix = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
            iy = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
            smaller = min(box_area(box), box_area(other))
            if smaller > 0 and ix * iy / smaller >= MERGE_OVERLAP:
                duplicate = True
                break
        if not duplicate:
            kept.append(person)
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


def tile_rect_to_frame(rect, tile: tuple[int, int, int, int], width: int, height: int):
    """A mediapipe NormalizedRect found in a tile (normalised to the tile) -> the same region
    normalised to the whole width x height frame. The rotation is unchanged: a tile is a crop
    at the frame's own pixel scale."""
    from mediapipe.framework.formats import rect_pb2

    x0, y0, x1, y1 = tile
    tw, th = x1 - x0, y1 - y0
    return rect_pb2.NormalizedRect(
        x_center=(x0 + rect.x_center * tw) / width, y_center=(y0 + rect.y_center * th) / height,
        width=rect.width * tw / width, height=rect.height * th / height,
        rotation=rect.rotation)


class Looker:
    """Video mode's looks for new people (DISCOVER_GRAPH), run in a thread of their own at
    the lowest CPU priority (nice LOOK_NICE), beside the following: a look (one person-detector
    run, ~15 ms) then uses the CPU the following leaves idle instead of delaying the frame it
    falls on, which would show in the latency's p99 (every discover_every-th frame).

    The graph is made inside the thread, so the threads mediapipe starts for it inherit the
    thread's priority. At most one look is in flight. Errors in the thread are raised in the
    caller by `done()` / `wait()`.
    """

    def __init__(self, min_detection_confidence: float) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._opened = threading.Event()
        self._error: BaseException | None = None
        self.busy = False
        self._thread = threading.Thread(target=self._serve, args=(min_detection_confidence,),
                                        name="detect-look", daemon=True)
        self._thread.start()
        self._opened.wait()
        if self._error is not None:
            raise self._error

    def _serve(self, min_detection_confidence: float) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOOK_NICE)
        except (OSError, AttributeError) as exc:  # not Linux: looks run at normal priority
            logger.debug("detect: looks at normal priority (%s)", exc)
        try:
            from mediapipe.python.solution_base import SolutionBase

            graph = SolutionBase(
                graph_config=DISCOVER_GRAPH,
                calculator_params={DETECTOR_THRESHOLD_OPTION: min_detection_confidence})
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self._error = exc
            self._opened.set()
            return
        self._opened.set()
        try:
            while (item := self._requests.get()) is not None:
                image, region = item
                try:
                    self._results.put((region, list(graph.process({"image": image}).rois or [])))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    self._results.put((region, exc))
        finally:
            graph.close()

    def submit(self, image: np.ndarray, region: tuple[int, int, int, int]) -> None:
        """Look for people in `image` ((h, w, 3) uint8 RGB, the `region` (x0, y0, x1, y1) px of
        the frame)."""
        self.busy = True
        self._requests.put((image, region))

    def _take(self, block: bool) -> list[tuple]:
        try:
            region, rois = self._results.get(block=block)
        except queue.Empty:
            return []
        self.busy = False
        if isinstance(rois, BaseException):
            raise rois
        return [(region, rois)]

    def done(self) -> list[tuple]:
        """The finished look, if there is one: [(region, [NormalizedRect in region, ...])]."""
        return self._take(block=False)

    def wait(self) -> list[tuple]:
        """The look in flight, waited for (as `done()`); [] when none is."""
        return self._take(block=True) if self.busy else []

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join(timeout=5.0)


class DetectStage(Stage):
    """Frame -> Keypoints2D (everyone found) with BlazePose (config:
    `pipeline.config.DetectConfig`)."""

    name = "detect"
    inputs = (Frame,)
    outputs = (Keypoints2D,)

    def __init__(self, config) -> None:
        super().__init__(config)
        self._landmarker = None  # image mode: the Tasks PoseLandmarker
        self._looker: Looker | None = None  # video mode: the person detector, in a thread
        self._follow = None  # video mode: the landmark graph on one region
        self._follow_more: list = []  # ... and one more per follow thread beyond the first
        self._pool = None  # video mode: threads that run those (mediapipe releases the GIL)
        self._mp = None
        self._rois: list = []  # video mode: each followed person's region for the next frame
        self._lost: list = []  # video mode: [(region, frames left), ...] of people lost lately
        self._frames_since_look = 0
        self._looks = 0
        self.detector_runs = 0  # video mode: looks for new people (person-detector runs)
        self.looks_waited = 0  # ... of which a frame waited for, the machine being too busy
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

        self._mp = mp
        if cfg.static_image_mode:
            from mediapipe.tasks import python as mp_tasks
            from mediapipe.tasks.python import vision

            options = vision.PoseLandmarkerOptions(
                base_options=mp_tasks.BaseOptions(model_asset_path=str(pose_bundle())),
                running_mode=vision.RunningMode.IMAGE,
                num_poses=cfg.max_people,
                min_pose_detection_confidence=cfg.min_detection_confidence,
                min_pose_presence_confidence=cfg.min_presence_confidence,
            )
            self._landmarker = vision.PoseLandmarker.create_from_options(options)
            logger.info("detect: BlazePose (full), up to %d people, image mode, tiles %s",
                        cfg.max_people, cfg.tiles or "none")
            return
        from mediapipe.python.solution_base import SolutionBase

        wheel_models()  # the graphs load them by these paths: a missing one is named here
        self._looker = Looker(cfg.min_detection_confidence)
        graphs = [SolutionBase(
            graph_config=FOLLOW_GRAPH,
            side_inputs={"model_complexity": cfg.model_complexity, "enable_segmentation": False},
            calculator_params={PRESENCE_THRESHOLD_OPTION: cfg.min_presence_confidence})
            for _ in range(min(cfg.follow_threads or auto_follow_threads(), cfg.max_people))]
        self._follow, self._follow_more = graphs[0], graphs[1:]
        if self._follow_more:
            self._pool = concurrent.futures.ThreadPoolExecutor(len(self._follow_more),
                                                               thread_name_prefix="detect-follow")
        logger.info("detect: BlazePose (full), up to %d people, video mode (each followed; "
                    "new people looked for every %d frames, tiles %s)", cfg.max_people,
                    cfg.discover_every, cfg.video_tiles or "none")

    def _run(self, rgb: np.ndarray) -> list:
        """Image mode: the Tasks landmarker on one image -> [33 landmarks, ...]."""
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB,
                               data=np.ascontiguousarray(rgb))
        return self._landmarker.detect(image).pose_landmarks

    def _follow_all(self, rgb: np.ndarray, rects: list, scale: float) -> list:
        """Video mode: `_follow_one` of each region, the regions shared out over the follow
        graphs, which run at once (one in this thread, the others in the pool): with several
        people a frame then costs about ceil(people / follow threads) landmark runs on a
        machine with the cores free, not one run per person."""
        graphs = [self._follow, *self._follow_more][:max(1, len(rects))]
        if len(graphs) == 1:
            return [self._follow_one(rgb, r, scale) for r in rects]
        shares = [list(range(k, len(rects), len(graphs))) for k in range(len(graphs))]
        futures = [self._pool.submit(lambda g=g, idx=idx: [self._follow_one(rgb, rects[i], scale,
                                                                            g) for i in idx])
                   for g, idx in zip(graphs[1:], shares[1:])]
        out: list = [None] * len(rects)
        for i, person in zip(shares[0], [self._follow_one(rgb, rects[i], scale)
                                         for i in shares[0]]):
            out[i] = person
        for future, idx in zip(futures, shares[1:]):
            for i, person in zip(idx, future.result()):
                out[i] = person
        return out

    def _follow_one(self, rgb: np.ndarray, rect, scale: float, graph=None):
        """Video mode: (joints, confidence, next region) of the person in region `rect`, or
        None when the landmark model says nobody is there (presence below threshold).
        graph: which follow graph runs it (default the first; one thread per graph at once)."""
        height, width = rgb.shape[:2]
        out = (graph or self._follow).process({"image": rgb, "roi": rect})
        if out.landmarks is None or out.next_roi is None:
            return None
        joints, conf = self._to_joints(out.landmarks.landmark, 0, 0, width, height, scale)
        return joints, conf, out.next_roi

    def _look_region(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Where the next look goes, (x0, y0, x1, y1) px: around the region of someone lost
        lately (LOST_LOOK_MARGIN x its size); otherwise the whole frame on even looks and the
        next of the video_tiles tiles on odd ones."""
        if self._lost:
            rect, _ = self._lost.pop(0)
            half = max(rect.width * width, rect.height * height) * LOST_LOOK_MARGIN / 2
            cx, cy = rect.x_center * width, rect.y_center * height
            return (int(max(0, cx - half)), int(max(0, cy - half)),
                    int(min(width, cx + half)), int(min(height, cy + half)))
        tiles = (tile_boxes(width, height, self.config.video_tiles)
                 if self.config.video_tiles else [])
        look, self._looks = self._looks, self._looks + 1
        if look % 2 == 0 or not tiles:
            return 0, 0, width, height
        return tiles[(look // 2) % len(tiles)]

    def _video(self, rgb: np.ndarray, scale: float) -> list[tuple]:
        """Video mode: everyone followed from the last frame, plus anyone a look finds ->
        [(joints, confidence, next region), ...]; the regions are kept for the next frame.

        A look runs beside the following (Looker) and its people join on the frame it
        finishes in; while nobody is followed the look is waited for, so a person is found on
        the frame they are first seen in, as a single-person BlazePose finds them. A look still
        running discover_every frames after it began (a machine so busy that its low priority
        starves it) is waited for too. With `look_join_frames` N (every frame processed) a look
        joins exactly N frames after it began, waited for if need be."""
        cfg = self.config
        height, width = rgb.shape[:2]
        found = []
        for rect, person in zip(self._rois, self._follow_all(rgb, self._rois, scale)):
            if person is None:
                self._lost.append((rect, cfg.discover_every * LOST_LOOKS))
            else:
                found.append(person)
        self._lost = [(r, n - 1) for r, n in self._lost if n > 1]
        self._frames_since_look += 1
        if cfg.look_join_frames:  # every frame processed: on a fixed frame, the same each run
            looked = (self._looker.wait() if self._frames_since_look >= cfg.look_join_frames
                      else [])
        else:
            looked = self._looker.done()
        if not looked and self._looker.busy and self._frames_since_look >= cfg.discover_every:
            # a machine too busy for the look's low priority: wait for it rather than let
            # newcomers (and the lost) go unfound; the frame pays for the look this once
            looked = self._looker.wait()
            self.looks_waited += 1
        due = len(found) < cfg.max_people and (
            not found or self._lost or self._frames_since_look >= cfg.discover_every)
        if due and not self._looker.busy:
            x0, y0, x1, y1 = self._look_region(width, height)
            if x1 - x0 >= 16 and y1 - y0 >= 16:
                self._frames_since_look = 0
                self.detector_runs += 1
                self._looker.submit(np.ascontiguousarray(rgb[y0:y1, x0:x1]), (x0, y0, x1, y1))
                if not found:
                    looked += self._looker.wait()
        boxes = [box_of(j / scale, c) for j, c, _ in found]
        new = []
        for region, rects in looked:
            for rect in rects:
                rect = tile_rect_to_frame(rect, region, width, height)
                cx, cy = rect.x_center * width, rect.y_center * height
                if not any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in boxes):
                    new.append(rect)  # nobody followed there yet
        found += [p for p in self._follow_all(rgb, new, scale) if p is not None]
        return merge_people(found)

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
                     for m in self._run(rgb[y0:y1, x0:x1])]
            if not found:
                continue
            # the crop's person nearest the one we framed (others may stand close by)
            near = min(found, key=lambda p: float(np.median(np.linalg.norm(p[0] - joints,
                                                                           axis=1))))
            if float(np.mean(near[1])) > float(np.mean(best[1])):
                best = near
        return best

    def process(self, msg: Frame) -> Keypoints2D:
        if self._landmarker is None and self._follow is None:
            raise RuntimeError("DetectStage.process called before open()")
        cfg = self.config
        height, width = msg.image.shape[:2]
        scale = float(msg.scale_to_original)
        rgb = cv2.cvtColor(msg.image, cv2.COLOR_BGR2RGB)
        found: list[tuple[np.ndarray, np.ndarray]] = []
        if cfg.static_image_mode:
            for marks in self._run(rgb):
                found.append(self._to_joints(marks, 0, 0, width, height, scale))
            for grid in cfg.tiles:
                for x0, y0, x1, y1 in tile_boxes(width, height, grid):
                    for marks in self._run(rgb[y0:y1, x0:x1]):
                        found.append(self._to_joints(marks, x0, y0, x1 - x0, y1 - y0, scale))
            found = [self._refine(rgb, joints, conf, scale)
                     for joints, conf in merge_people(found)]
            found = merge_people(found)
        else:
            found = self._video(rgb, scale)
        found = [p for p in found if np.all(np.isfinite(p[0]))]
        if len(found) > cfg.max_people:
            found.sort(key=lambda p: -box_area(box_of(p[0], p[1])))
            self.people_dropped += len(found) - cfg.max_people
            logger.info("detect: frame %d: %d people, kept the %d largest (%d dropped so far)",
                        msg.frame_id, len(found), cfg.max_people, self.people_dropped)
            found = found[:cfg.max_people]
        if not cfg.static_image_mode:
            self._rois = [p[2] for p in found]
        return Keypoints2D(
            frame_id=msg.frame_id,
            t_capture_ns=msg.t_capture_ns,
            stamps=msg.stamps,
            image_size=(int(round(width * scale)), int(round(height * scale))),
            people=tuple(Person2D(track_id=UNTRACKED, joints_2d_px=p[0], confidence=p[1])
                         for p in found),
        )

    def close(self) -> None:
        if self._follow is not None:
            logger.info("detect: %d looks for new people (%d waited for, the machine being too "
                        "busy for their low priority), %d people beyond max_people dropped",
                        self.detector_runs, self.looks_waited, self.people_dropped)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for graph in self._follow_more:
            graph.close()
        self._follow_more = []
        for name in ("_landmarker", "_looker", "_follow"):
            graph = getattr(self, name)
            if graph is not None:
                graph.close()
                setattr(self, name, None)
