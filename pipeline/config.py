"""One typed, frozen configuration for a pipeline run: a dataclass per stage, nested.

`run_pipeline.py` turns flags into a `PipelineConfig`; the supervisor passes each child
process the whole config as JSON (`to_json` / `from_json`), and each stage gets its own
section. Defaults are what `python run_pipeline.py --camera 0` uses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CaptureConfig:
    """Where frames come from: exactly one of camera / video / images (camera 0 if none)."""

    camera: int | None = None  # OpenCV camera index (/dev/videoN)
    video: str | None = None  # a video file
    images: str | None = None  # a glob of image files, sent in sorted order
    as_fast_as_possible: bool = False  # video/images: don't pace at the file's fps
    images_fps: float = 30.0  # pacing for --images unless as_fast_as_possible
    max_frames: int | None = None  # stop after this many frames (None: until the source ends)
    loop: bool = False  # video/images: start again at the end (demos, soak tests)
    camera_width: int | None = None  # request a camera resolution (None: driver default)
    camera_height: int | None = None
    camera_fps: float | None = None  # request a camera frame rate (None: driver default)
    max_side: int = 1920  # a frame whose longest side is larger is scaled down to it (px;
    #                       bench/working_size.py measures the choice); 0: never scale

    def source_kind(self) -> str:
        """"camera", "video" or "images"."""
        if self.video is not None:
            return "video"
        if self.images is not None:
            return "images"
        return "camera"

    def __post_init__(self) -> None:
        given = [x for x in (self.camera, self.video, self.images) if x is not None]
        if len(given) > 1:
            raise ValueError("give one source: --camera N, --video FILE or --images GLOB")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.max_side != 0 and self.max_side < 256:
            raise ValueError(f"max_side must be 0 (never scale) or at least 256 px (the "
                             f"detector's crop), got {self.max_side}")


#: most people per frame when none is asked for: a camera or video (each followed person costs
#: detector time on every frame), and photos (looked at whole and in tiles; a group photo often
#: holds more than a live scene's 4: one of the four shared COCO photos has 5 annotated)
VIDEO_MAX_PEOPLE: int = 4
IMAGE_MAX_PEOPLE: int = 16


#: video mode, every frame processed (a file processed whole, --every-frame): a look's people
#: join this many frames after the look began (`DetectConfig.look_join_frames`): on the next
#: frame, so its regions are one frame old when followed (on the street video's first 205
#: frames, every frame: 5 track ids with 1, as live runs give, against 7 with 2)
WHOLE_FILE_LOOK_FRAMES: int = 1


def look_join_frames_for(policy: str, discover_every: int) -> int:
    """`DetectConfig.look_join_frames` for edge policy `policy` (TransportConfig): every frame
    processed ("lossless") joins looks on a fixed frame (WHOLE_FILE_LOOK_FRAMES, at most
    discover_every); newest frame wins ("latest", live) joins them when they finish (0)."""
    return min(WHOLE_FILE_LOOK_FRAMES, discover_every) if policy == "lossless" else 0


@dataclass(frozen=True)
class DetectConfig:
    """2D keypoints of several people with mediapipe's PoseLandmarker (BlazePose full)."""

    model_complexity: int = 1  # 0 and 2 need a download: keep 1 offline
    static_image_mode: bool = False  # True for unrelated images; False follows people in video
    #: most people per frame; the largest kept, the rest counted. None: VIDEO_MAX_PEOPLE, or
    #: IMAGE_MAX_PEOPLE in static image mode
    max_people: int | None = None
    tiles: tuple[int, ...] = (2, 3)  # image mode: also detect in 2x2 and 3x3 overlapping tiles
    #: video mode: while fewer than max_people are followed, look for new people every this
    #: many frames (every frame while nobody is); each look runs the person detector once, on
    #: the whole frame or, every other look, on one of the `video_tiles` x `video_tiles` tiles
    discover_every: int = 10
    video_tiles: int = 2  # 0: looks cover the whole frame only
    #: video mode: landmark graphs following people at once, each in its own thread; 0: two
    #: per core, at most MAX_FOLLOW_THREADS (`auto_follow_threads`) and at most max_people,
    #: whatever the number of detection workers (docs/BENCHMARKS.md: on 2 cores 4 graphs beat
    #: 2 with 1 and with 2 workers, and 2 workers x 2 graphs beat 2 x 1)
    follow_threads: int = 0
    #: video mode: 0 (live): a look's people join on the frame it finishes in (it runs at the
    #: lowest priority beside the following; how many frames that takes depends on the
    #: machine's load). N > 0 (files processed whole, --every-frame: WHOLE_FILE_LOOK_FRAMES):
    #: exactly N frames after the look began, waited for if need be, so one detection process
    #: given the same frames finds the same people on them however busy the machine is (with
    #: several detection processes, which frames each is given depends on timing)
    look_join_frames: int = 0
    min_detection_confidence: float = 0.5  # person detector threshold
    min_presence_confidence: float = 0.5  # below this a followed person counts as lost
    min_tracking_confidence: float = 0.5  # the MediaPipe peer's (bench) tracking threshold

    def __post_init__(self) -> None:
        object.__setattr__(self, "tiles", tuple(int(g) for g in self.tiles))
        if self.max_people is None:
            object.__setattr__(self, "max_people", IMAGE_MAX_PEOPLE if self.static_image_mode
                               else VIDEO_MAX_PEOPLE)
        if not 1 <= self.max_people <= 64:
            raise ValueError(f"max_people must be 1 to 64, got {self.max_people}")
        if not 1 <= self.discover_every <= 1000:
            raise ValueError(f"discover_every must be 1 to 1000 frames, got {self.discover_every}")
        if self.video_tiles != 0 and not 2 <= self.video_tiles <= 6:
            raise ValueError(f"video_tiles must be 0 or a grid size 2 to 6, got {self.video_tiles}")
        if any(not 2 <= g <= 6 for g in self.tiles):
            raise ValueError(f"tiles are grid sizes from 2 to 6, got {self.tiles}")
        if not 0 <= self.look_join_frames <= self.discover_every:
            raise ValueError(f"look_join_frames must be 0 (live) to discover_every "
                             f"({self.discover_every}), got {self.look_join_frames}")
        if not 0 <= self.follow_threads <= 16:
            raise ValueError(f"follow_threads must be 0 (auto) to 16, got {self.follow_threads}")


def usable_core_ids() -> set[int]:
    """The ids of the cores this process may run on (its CPU affinity; all the machine's
    cores where that cannot be read)."""
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def usable_cores() -> int:
    """How many cores this process may run on (`usable_core_ids`)."""
    return len(usable_core_ids())


#: the most landmark graphs one detection process runs at once (video mode) when asked for
#: none: the default max people (about 20 MB of memory each)
MAX_FOLLOW_THREADS: int = 4


def auto_follow_threads(cores: int | None = None) -> int:
    """Landmark graphs per detection process (video mode) for `follow_threads` 0: two per
    core this process may run on, at most MAX_FOLLOW_THREADS (the detect stage starts no more
    than its max people). With one graph per person every landmark run of a frame starts at
    once and the cores share them out; with one per core, 3 people on 2 cores leave one
    thread running two people while the other core idles half the frame (the street video,
    3 in view, `DetectStage.process` offline on 2 cores: 41 to 49 ms a frame with 3 graphs,
    47.5 with 4, 58 with 2; docs/BENCHMARKS.md, 2026-12-05)."""
    cores = usable_cores() if cores is None else cores
    return int(max(1, min(MAX_FOLLOW_THREADS, 2 * cores)))


@dataclass(frozen=True)
class TrackConfig:
    """Track ids: detections matched to tracks by keypoint similarity (OKS), optimally."""

    min_oks: float = 0.2  # a detection joins a track only above this similarity
    max_age_s: float = 1.0  # a track not seen for this long ends (its id is never reused)


@dataclass(frozen=True)
class LiftConfig:
    """2D -> metric 3D: the lifter engine, the camera intrinsics, the subject's scale."""

    engine_path: str | None = None  # None: engines/default/lifter.onnx
    backend: str = "auto"  # auto | tensorrt | onnxruntime
    fov_deg: float = 60.0  # horizontal field of view when no calibration (a typical webcam)
    calib_path: str | None = None  # file with an OpenCV 3x3 camera matrix (overrides fov_deg)
    height_m: float | None = 1.70  # subject height for metric scale; None: bone-length prior
    # temporal engines read each person's history in time: from capture times (None, live
    # sources), or from frame ids at this period (s; files processed whole, which a slow
    # machine reads far slower than their own rate)
    frame_period_s: float | None = None

    def __post_init__(self) -> None:
        if self.frame_period_s is not None and not 0.0 < self.frame_period_s <= 10.0:
            raise ValueError(f"frame_period_s must be in (0, 10] s, got {self.frame_period_s}")
        if self.backend not in ("auto", "tensorrt", "onnxruntime"):
            raise ValueError(
                f"backend must be auto, tensorrt or onnxruntime, got {self.backend!r}"
            )
        if not 1.0 < self.fov_deg < 179.0:
            raise ValueError(f"fov_deg must be between 1 and 179 degrees, got {self.fov_deg}")
        if self.height_m is not None and not 0.5 <= self.height_m <= 2.6:
            raise ValueError(f"height_m must be 0.5 to 2.6 m, got {self.height_m}")


#: One Euro settings (min_cutoff Hz, beta per m/s, d_cutoff Hz) for the poses of a single-frame
#: engine and of a temporal one, chosen by `engines.training.evaluate --one-euro` on the CMU test
#: sequences with 0-10 px of 2D noise, independent and correlated (docs/DESIGN.md "Smoothing":
#: little lag on clean 2D, much less error on noisy 2D; MediaPipe's world-landmark settings,
#: 0.1 Hz and beta 40, hardly smooth a lifter's noise: 89.0 mm at 5 px for the default engine,
#: 78.5 with these).
ONE_EURO_SINGLE_FRAME: tuple[float, float, float] = (2.0, 5.0, 1.0)
ONE_EURO_TEMPORAL: tuple[float, float, float] = (2.0, 10.0, 1.0)


def one_euro_for_engine(receptive_field: int) -> tuple[float, float, float]:
    """The One Euro settings for an engine that lifts windows of `receptive_field` frames."""
    return ONE_EURO_TEMPORAL if receptive_field > 1 else ONE_EURO_SINGLE_FRAME


def one_euro_fields(settings: tuple[float, float, float]) -> dict[str, float]:
    """(min_cutoff, beta, d_cutoff) -> SmoothConfig's keyword arguments for them."""
    return dict(zip(("min_cutoff", "beta", "d_cutoff"), settings))


def one_euro_for_engine_file(engine_path: str | None) -> tuple[float, float, float]:
    """The One Euro settings for the engine file (or shipped engine's name) the lift stage will
    load: None is the default, single-frame engine; a file that cannot be read gets the
    single-frame settings (the lift stage then says what is wrong with it)."""
    if engine_path is None:
        return ONE_EURO_SINGLE_FRAME
    from engines.runtime.engine import EngineError, read_metadata, resolve_engine_path

    try:
        metadata = read_metadata(resolve_engine_path(engine_path))
    except EngineError:
        return ONE_EURO_SINGLE_FRAME
    return one_euro_for_engine(metadata["receptive_field"])


def parse_one_euro(spec: str) -> tuple[float, float, float]:
    """"MIN_CUTOFF_HZ,BETA[,D_CUTOFF_HZ]" -> the three settings (d_cutoff 1 Hz if left out);
    ValueError saying the form otherwise."""
    try:
        values = [float(v) for v in spec.split(",")]
        if len(values) not in (2, 3):
            raise ValueError
    except ValueError:
        raise ValueError(f"One Euro settings {spec!r}: give MIN_CUTOFF_HZ,BETA[,D_CUTOFF_HZ], "
                         "e.g. 2,5") from None
    min_cutoff, beta, d_cutoff = values if len(values) == 3 else (*values, 1.0)
    if not (min_cutoff > 0 and d_cutoff > 0 and beta >= 0 and all(map(math.isfinite, values))):
        raise ValueError(f"One Euro settings {spec!r}: the cutoffs must be > 0 Hz and beta >= 0")
    return min_cutoff, beta, d_cutoff


@dataclass(frozen=True)
class SmoothConfig:
    """One Euro filter on the 3D joints, metres. The defaults suit a single-frame engine;
    run_pipeline.py takes ONE_EURO_TEMPORAL for a temporal one (`one_euro_for_engine`)."""

    enabled: bool = True
    min_cutoff: float = ONE_EURO_SINGLE_FRAME[0]  # Hz; lower: steadier when still, more lag
    beta: float = ONE_EURO_SINGLE_FRAME[1]  # per m/s; higher: less lag when moving fast
    d_cutoff: float = ONE_EURO_SINGLE_FRAME[2]  # Hz, cutoff of the derivative filter
    # a person's root (pelvis) moves at most this fast, m/s (a sprinter's peak is ~12): a
    # faster step of the smoothed root is monocular depth noise and is cut to this speed;
    # None: no limit
    max_root_speed_mps: float | None = 12.0
    # time between frames: capture times (None, live sources) or frame ids at this period (s;
    # files processed whole, read as fast as the pipeline goes)
    frame_period_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_root_speed_mps is not None and not 0.1 <= self.max_root_speed_mps <= 100:
            raise ValueError(f"max_root_speed_mps must be 0.1 to 100 m/s or None, got "
                             f"{self.max_root_speed_mps}")


@dataclass(frozen=True)
class OutputConfig:
    """The public stream: a PUB socket, topic then Pose3D frames."""

    publish: str = "tcp://127.0.0.1:5556"  # endpoint to bind
    topic: str = "pose3d"
    status_topic: str = "status"  # Status messages (gaps, restarts) go out on this topic
    sndhwm: int = 64  # per subscriber; a stalled subscriber loses messages, never slows us
    allow_remote: bool = False  # binding to a non-loopback interface must be asked for
    wait_for_subscribers: int = 0  # hold the start until this many subscribers are connected
    wait_for_subscribers_s: float = 10.0  # ... for at most this long, then start anyway
    # CurveZMQ (optional): the publisher's secret key file and the folder of authorised
    # subscriber public keys (python -m pipeline.keys); both or neither
    curve_secret_key: str | None = None
    curve_authorized_dir: str | None = None

    def __post_init__(self) -> None:
        if (self.curve_secret_key is None) != (self.curve_authorized_dir is None):
            raise ValueError(
                "CurveZMQ needs both the server's secret key (--curve-secret FILE) and the "
                "folder of authorised subscriber keys (--curve-authorized DIR)"
            )
        if not self.allow_remote and not is_local_endpoint(self.publish):
            raise ValueError(
                f"publish endpoint {self.publish!r} is reachable from other machines: use "
                "tcp://127.0.0.1:PORT, or pass --allow-remote if you mean to expose the stream"
            )
        if not self.topic or len(self.topic) > 64:
            raise ValueError(f"topic must be 1 to 64 characters, got {self.topic!r}")


#: the most detection processes `--detect-workers auto` starts
MAX_AUTO_DETECT_WORKERS: int = 3


def _cpu_times(cores: set[int]) -> tuple[float, float] | None:
    """(busy, total) jiffies summed over `cores` from /proc/stat (Linux), or None. Read by
    hand: psutil.cpu_percent would do it, but it is not a dependency, for one figure."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores):
            continue
        fields = [float(x) for x in rest.split()]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        used = sum(fields[:8])  # user nice system idle iowait irq softirq steal
        busy, total = busy + used - idle, total + used
    return (busy, total) if total > 0 else None


def busy_cores_now(window_s: float = 0.3) -> tuple[float, str]:
    """(cores' worth of CPU in use, how it was measured): the share of the last `window_s`
    seconds the cores this process may run on were busy (/proc/stat, sampled twice), times
    their number; where /proc/stat cannot be read, the 1-minute load average. The load
    average trails the machine by minutes (a job that ended 30 s ago still shows as most of a
    core), so it is only the fallback."""
    import time

    cores = usable_core_ids()
    first = _cpu_times(cores)
    if first is not None:
        time.sleep(window_s)
        second = _cpu_times(cores)
        if second is not None and second[1] > first[1]:
            share = (second[0] - first[0]) / (second[1] - first[1])
            return len(cores) * share, f"busy over {window_s:g} s"
    try:
        return os.getloadavg()[0], "1-minute load"
    except (AttributeError, OSError):
        return 0.0, "no load figure"


def auto_detect_workers(cores: int | None = None,
                        busy: float | None = None) -> tuple[int, str]:
    """(workers, why) for `--detect-workers auto`: one detection process per core that is
    free now (the cores this process may run on, less the cores' worth busy right now,
    `busy_cores_now`, to the nearest whole core), at least 1 and at most
    MAX_AUTO_DETECT_WORKERS. Detection is the one stage that costs per person and per frame
    (about 16 ms a person at 1280x720 here); the others together use a fraction of a core, so
    on an idle 2-core machine two workers pay off (docs/BENCHMARKS.md: 1.4-1.5x the frames
    per second of one)."""
    if cores is None:
        cores = usable_cores()
    how = "given"
    if busy is None:
        busy, how = busy_cores_now()
    free = max(0.0, cores - busy)
    workers = int(max(1, min(MAX_AUTO_DETECT_WORKERS, cores, math.floor(free + 0.5))))
    return workers, (f"{cores} cores, {busy:.2f} busy ({how}): {free:.1f} free -> "
                     f"{workers} detection process{'es' if workers > 1 else ''}")


def detect_workers_arg(text: str) -> int | str:
    """A `--detect-workers` value (argparse type): "auto", or a count of at least 1."""
    import argparse

    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--detect-workers takes a number or auto, got "
                                         f"{text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--detect-workers must be at least 1, got {n}")
    return n


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


@dataclass(frozen=True)
class TransportConfig:
    """Internal edges between stages (never exposed: ipc in a private dir, or loopback tcp)."""

    kind: str = "ipc"  # "ipc": unix sockets in a per-run temp dir; "tcp": 127.0.0.1 ports
    run_dir: str | None = None  # ipc directory (None: a fresh temp dir, removed at exit)
    tcp_base_port: int = 0  # tcp: first port (0: the OS picks free ports)
    policy: str = "latest"  # "latest": newest frame wins, drops counted (live);
    #                         "lossless": every frame goes through, producers wait (offline)
    shared_memory: bool = True  # ipc: large parts (frames) through a ring in /dev/shm
    #                             (pipeline.shm), the sockets carry a small descriptor

    def __post_init__(self) -> None:
        if self.kind not in ("ipc", "tcp"):
            raise ValueError(f"transport kind must be ipc or tcp, got {self.kind!r}")
        if self.policy not in ("latest", "lossless"):
            raise ValueError(f"edge policy must be latest or lossless, got {self.policy!r}")


@dataclass(frozen=True)
class SupervisorConfig:
    """How the supervisor starts, watches and stops the stage processes."""

    startup_timeout_s: float = 120.0  # all stages opened (models loaded) within this
    stop_timeout_s: float = 2.5  # stop message -> SIGTERM -> SIGKILL, all within this
    log_level: str = "INFO"
    max_restarts: int = 3  # a stage that dies is restarted at most this often per window
    restart_window_s: float = 60.0  # ... (0 restarts: the first death ends the run)
    heartbeat_timeout_s: float = 10.0  # silent (or one call busy) this long: stuck, killed
    #                                    and restarted; 0 turns the check off
    warm_spare: bool = True  # keep one process with the stage modules imported, so a
    #                          restart skips the imports (~1 s); costs ~200 MB while idle


@dataclass(frozen=True)
class TopologyConfig:
    """Where the stages run and how their edges are reached: several hosts, several workers.

    An edge is named "<producer>-<consumer>" ("capture-detect", "detect-lift", ...; with
    detection workers "detect#0-lift", ...). Its producer binds its endpoint and its
    consumer connects: on two hosts give each run the same edge, e.g. the camera host
    `capture-detect=tcp://0.0.0.0:5560` (with allow_remote) and the other
    `capture-detect=tcp://camera-host:5560`.
    """

    only: tuple[str, ...] = ()  # run only these stages (empty: all); a cut edge needs an endpoint
    endpoints: tuple[tuple[str, str], ...] = ()  # (edge name, endpoint): overrides the private one
    detect_workers: int = 1  # detection processes sharing the frames; more when detection is
    #                           the bottleneck and cores are free
    reorder_wait_s: float = 0.2  # lift holds a frame at most this long for an earlier one from
    #                              another worker (then that one is dropped when it comes)
    allow_remote: bool = False  # binding an edge on a non-loopback address must be asked for
    colocate: tuple[str, ...] = ()  # stages run inside the process of the stage they feed
    #                                 (only "smooth": in the output process; one hop less)
    # CurveZMQ on edges to other hosts (a non-loopback endpoint; pipeline.security): this
    # host's secret key file, the folder of public keys allowed to connect to the edges this
    # run binds, and the public key of the host whose edges this run connects to
    edge_curve_secret: str | None = None
    edge_curve_authorized: str | None = None
    edge_curve_server: str | None = None
    insecure_edges: bool = False  # such edges in the clear, no keys (a trusted network only)

    def __post_init__(self) -> None:
        # JSON gives lists back: keep the dataclass hashable and comparable
        object.__setattr__(self, "only", tuple(self.only))
        object.__setattr__(self, "colocate", tuple(self.colocate))
        if set(self.colocate) - {"smooth"}:
            raise ValueError(f"colocate: only 'smooth' can share a process (with output), "
                             f"got {self.colocate}")
        object.__setattr__(self, "endpoints", tuple(tuple(e) for e in self.endpoints))
        for pair in self.endpoints:
            if len(pair) != 2 or "://" not in pair[1]:
                raise ValueError(
                    f"edge endpoint {pair!r}: write it as EDGE=ENDPOINT, e.g. "
                    "capture-detect=tcp://127.0.0.1:5560"
                )
        if not 1 <= self.detect_workers <= 16:
            raise ValueError(f"detect_workers must be 1 to 16, got {self.detect_workers}")
        if not 0.0 < self.reorder_wait_s <= 10.0:
            raise ValueError(f"reorder_wait_s must be in (0, 10] s, got {self.reorder_wait_s}")

    def endpoint_map(self) -> dict[str, str]:
        """Edge name -> endpoint, for the edges given."""
        return dict(self.endpoints)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one run needs."""

    capture: CaptureConfig = field(default_factory=CaptureConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    lift: LiftConfig = field(default_factory=LiftConfig)
    smooth: SmoothConfig = field(default_factory=SmoothConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)

    def to_json(self) -> str:
        """JSON text of the whole config (what child processes receive)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PipelineConfig":
        """Inverse of to_json. Raises ValueError naming an unknown or mistyped field."""
        return _from_dict(cls, json.loads(text))


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a JSON object, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = _from_dict(hint, value)
        elif isinstance(hint, types.UnionType) and float in hint.__args__ and isinstance(
            value, int
        ):
            value = float(value)
        elif hint is float and isinstance(value, int):
            value = float(value)
        kwargs[name] = value
    return cls(**kwargs)
