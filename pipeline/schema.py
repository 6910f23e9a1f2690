"""Every message on the wire: typed, frozen, versioned, and the two pure functions that
turn them into ZeroMQ frames and back.

Wire format (one multipart message, any language can read it):
- frame 0: a msgpack map, the header: `type` (class name), `schema_version`, the common
  fields (`frame_id`, `t_capture_ns`, `stamps` as `[[stage, t_in_ns, t_out_ns], ...]`),
  then the type's own fields. An ndarray field is a map `{"dtype": "<f4", "shape": [17, 3],
  "data": <bin>}`; an image is `{"dtype": "|u1", "shape": [H, W, 3], "frame": 1}` and its
  raw bytes travel as frame 1 (no copy into the header, no JPEG). `Pose3D` also carries
  `joint_names`.
- Schema 2: `Keypoints2D` and `Pose3D` are one message per frame carrying `people`, a list
  of person maps (`Person2D` / `Person3D`, each with its `track_id` and its own arrays); an
  empty list means nobody is in view. (Schema 1 had one person and `person_present`.)
- Never pickle. Anything malformed (truncated, wrong version, unknown type, wrong shape
  or dtype, oversized, missing or extra field) raises `SchemaError`.

All times are `time.monotonic_ns()` (CLOCK_MONOTONIC: one clock for every process on a
host), so latency can be read off any message from its `stamps`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import msgpack
import numpy as np

from engines.runtime.skeleton import JOINT_NAMES, NUM_JOINTS

SCHEMA_VERSION: int = 2

#: largest header (frame 0) accepted, bytes. A Pose3D header is about 1.3 kB.
MAX_HEADER_BYTES: int = 64 * 1024
#: largest image accepted, bytes (4096 x 4096 BGR is 48 MiB).
MAX_IMAGE_BYTES: int = 4096 * 4096 * 3
#: largest whole message, bytes: what receiving sockets set as ZMQ MAXMSGSIZE.
MAX_MESSAGE_BYTES: int = MAX_IMAGE_BYTES + MAX_HEADER_BYTES
#: longest string field (source names, status texts), characters.
MAX_TEXT_CHARS: int = 4096
#: most stamps a message may carry (one per stage it passed; restarts may add a few).
MAX_STAMPS: int = 64
#: most people one message may carry (a Person3D is about 0.6 kB of header).
MAX_PEOPLE: int = 64
#: track_id of a person the tracker has not seen yet (the detect stage's output).
UNTRACKED: int = 0

STATUS_KINDS: tuple[str, ...] = ("gap", "restart", "error", "info")

Stamp = tuple[str, int, int]  # (stage_name, t_in_ns, t_out_ns), monotonic clock


class SchemaError(ValueError):
    """A message that is not a valid posestream message of this schema version."""


# --------------------------------------------------------------------------- messages
@dataclass(frozen=True, kw_only=True)
class _Common:
    """Fields every message has. `stamps`: one (stage, t_in_ns, t_out_ns) per stage passed."""

    frame_id: int
    t_capture_ns: int
    stamps: tuple[Stamp, ...] = ()

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True, kw_only=True)
class Frame(_Common):
    """A captured image. `image`: (H, W, 3) uint8 BGR (may be read-only after decode)."""

    image: np.ndarray
    source: str = ""
    #: original-image pixels per pixel of `image` (> 1 when capture shrank a large image);
    #: the detect stage multiplies 2D joints by it and reports the original image size
    scale_to_original: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Person2D:
    """One person's 2D joints in a frame.

    track_id: who this is, the same across frames (ids start at 1 and are never reused in a
    run); UNTRACKED (0) until the track stage has seen it. joints_2d_px: (17, 2) float32 px,
    x right, y down, in the original image's pixels. confidence: (17,) float32 in [0, 1].
    """

    track_id: int
    joints_2d_px: np.ndarray
    confidence: np.ndarray

    def __post_init__(self) -> None:
        _validate_person(self)


@dataclass(frozen=True, kw_only=True)
class Person3D:
    """One person's metric 3D pose in the camera frame (OpenCV: +X right, +Y down, +Z forward).

    track_id: as in Person2D. joints_3d_m: (17, 3) float32 metres, absolute (root-relative
    pose + root_m). root_m: (3,) float32 metres, the pelvis. joints_2d_px: (17, 2) float32
    px (the detector's). confidence: (17,) float32 in [0, 1]. reproj_err_px: (17,) float32
    px, each joint's reprojection error.
    """

    track_id: int
    joints_3d_m: np.ndarray
    root_m: np.ndarray
    joints_2d_px: np.ndarray
    confidence: np.ndarray
    reproj_err_px: np.ndarray

    def __post_init__(self) -> None:
        _validate_person(self)


@dataclass(frozen=True, kw_only=True)
class Keypoints2D(_Common):
    """2D joints of everyone found in one frame.

    image_size: (width, height) px of the original image. people: a tuple of Person2D, at
    most MAX_PEOPLE, empty when nobody was found.
    """

    image_size: tuple[int, int]
    people: tuple[Person2D, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Pose3D(_Common):
    """Everyone's metric 3D pose in one frame: `people`, a tuple of Person3D (empty: nobody).

    image_size: (width, height) px of the original image. engine_id: the lifter engine that
    made it (12 hex). `joint_names` and `schema_version` are added on the wire.
    """

    image_size: tuple[int, int]
    people: tuple[Person3D, ...] = ()
    engine_id: str = ""


@dataclass(frozen=True, kw_only=True)
class Status(_Common):
    """Something subscribers or the supervisor should know: `kind` in STATUS_KINDS,
    free `text`, `t_ns` when it happened (monotonic). frame_id/t_capture_ns: the last
    frame it refers to (0 when none)."""

    kind: str
    text: str = ""
    t_ns: int = 0
    frame_id: int = 0
    t_capture_ns: int = 0


Person = Union[Person2D, Person3D]
Message = Union[Frame, Keypoints2D, Pose3D, Status]
MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (Frame, Keypoints2D, Pose3D, Status)
}

# ndarray fields per type: name -> (dtype, shape); -1 in a shape means "any size".
_ARRAYS: dict[type, dict[str, tuple[np.dtype, tuple[int, ...]]]] = {
    Frame: {"image": (np.dtype(np.uint8), (-1, -1, 3))},
    Keypoints2D: {},
    Pose3D: {},
    Status: {},
    Person2D: {
        "joints_2d_px": (np.dtype(np.float32), (NUM_JOINTS, 2)),
        "confidence": (np.dtype(np.float32), (NUM_JOINTS,)),
    },
    Person3D: {
        "joints_3d_m": (np.dtype(np.float32), (NUM_JOINTS, 3)),
        "root_m": (np.dtype(np.float32), (3,)),
        "joints_2d_px": (np.dtype(np.float32), (NUM_JOINTS, 2)),
        "confidence": (np.dtype(np.float32), (NUM_JOINTS,)),
        "reproj_err_px": (np.dtype(np.float32), (NUM_JOINTS,)),
    },
}
#: the person class each multi-person message carries in `people`
_PERSON_OF: dict[type, type] = {Keypoints2D: Person2D, Pose3D: Person3D}
# fields that travel as their own raw frame rather than inside the header
_RAW_FRAME_FIELDS: frozenset[str] = frozenset({"image"})
_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls))
    for cls in (*MESSAGE_TYPES.values(), Person2D, Person3D)
}
_INT64_MAX = 2**63 - 1


def with_stamp(msg: Message, stage: str, t_in_ns: int, t_out_ns: int) -> Message:
    """A copy of `msg` with `(stage, t_in_ns, t_out_ns)` appended to its stamps."""
    return dataclasses.replace(msg, stamps=msg.stamps + ((stage, t_in_ns, t_out_ns),))


# --------------------------------------------------------------------------- validation
def _check_int(name: str, value: Any, lo: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SchemaError(f"{name} must be an int, got {type(value).__name__}")
    if not lo <= int(value) <= _INT64_MAX:
        raise SchemaError(f"{name} must be in [{lo}, 2**63-1], got {value}")


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise SchemaError(f"{name} must be a str, got {type(value).__name__}")
    if len(value) > MAX_TEXT_CHARS:
        raise SchemaError(f"{name} is {len(value)} characters, more than {MAX_TEXT_CHARS}")


def _check_array(cls: type, name: str, value: Any) -> None:
    dtype, shape = _ARRAYS[cls][name]
    if not isinstance(value, np.ndarray):
        raise SchemaError(
            f"{cls.__name__}.{name} must be a numpy array {shape} {dtype}, "
            f"got {type(value).__name__}"
        )
    if value.dtype != dtype:
        raise SchemaError(
            f"{cls.__name__}.{name} must have dtype {dtype}, got {value.dtype}: "
            f"cast it with .astype(np.{dtype.name})"
        )
    if len(value.shape) != len(shape) or any(
        want not in (-1, got) for want, got in zip(shape, value.shape)
    ):
        raise SchemaError(
            f"{cls.__name__}.{name} must have shape {shape} (-1: any), got {value.shape}"
        )


def _validate(msg: _Common) -> None:
    """Raise SchemaError unless every field of `msg` has the right type, shape and range."""
    cls = type(msg)
    _check_int("frame_id", msg.frame_id)
    _check_int("t_capture_ns", msg.t_capture_ns)
    if not isinstance(msg.stamps, tuple) or len(msg.stamps) > MAX_STAMPS:
        raise SchemaError(f"stamps must be a tuple of at most {MAX_STAMPS} stamps")
    for stamp in msg.stamps:
        if not isinstance(stamp, tuple) or len(stamp) != 3:
            raise SchemaError(f"a stamp must be (stage, t_in_ns, t_out_ns), got {stamp!r}")
        _check_text("stamp stage", stamp[0])
        _check_int("stamp t_in_ns", stamp[1])
        _check_int("stamp t_out_ns", stamp[2])
    for name in _ARRAYS.get(cls, {}):
        _check_array(cls, name, getattr(msg, name))
    if cls is Frame:
        h, w, _ = msg.image.shape
        if h < 1 or w < 1 or msg.image.nbytes > MAX_IMAGE_BYTES:
            raise SchemaError(
                f"Frame.image is {w}x{h}: must be at least 1x1 and at most "
                f"{MAX_IMAGE_BYTES} bytes"
            )
        _check_text("Frame.source", msg.source)
        scale = msg.scale_to_original
        if (isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating))
                or not math.isfinite(scale) or not 1e-3 <= scale <= 1e3):
            raise SchemaError(f"Frame.scale_to_original must be a number in [0.001, 1000], "
                              f"got {scale!r}")
    if cls in (Keypoints2D, Pose3D):
        size = msg.image_size
        if (
            not isinstance(size, tuple)
            or len(size) != 2
            or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in size)
            or not all(0 < s <= 65535 for s in size)
        ):
            raise SchemaError(
                f"{cls.__name__}.image_size must be (width, height) positive ints, got {size!r}"
            )
        person_cls = _PERSON_OF[cls]
        if not isinstance(msg.people, tuple) or len(msg.people) > MAX_PEOPLE:
            raise SchemaError(f"{cls.__name__}.people must be a tuple of at most {MAX_PEOPLE} "
                              f"{person_cls.__name__}, got {type(msg.people).__name__}"
                              f"{'' if not isinstance(msg.people, tuple) else f' of {len(msg.people)}'}")
        for person in msg.people:
            if type(person) is not person_cls:
                raise SchemaError(f"{cls.__name__}.people holds {person_cls.__name__}, "
                                  f"got {type(person).__name__}")
    if cls is Pose3D:
        _check_text("Pose3D.engine_id", msg.engine_id)
    if cls is Status:
        if msg.kind not in STATUS_KINDS:
            raise SchemaError(f"Status.kind must be one of {STATUS_KINDS}, got {msg.kind!r}")
        _check_text("Status.text", msg.text)
        _check_int("Status.t_ns", msg.t_ns)


def _validate_person(person: Person) -> None:
    cls = type(person)
    _check_int(f"{cls.__name__}.track_id", person.track_id)
    for name in _ARRAYS[cls]:
        _check_array(cls, name, getattr(person, name))


# --------------------------------------------------------------------------- encode
def _encode_array(value: np.ndarray) -> dict[str, Any]:
    arr = np.ascontiguousarray(value)
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}


def _encode_person(person: Person) -> dict[str, Any]:
    arrays = _ARRAYS[type(person)]
    return {name: _encode_array(getattr(person, name)) if name in arrays
            else int(getattr(person, name)) for name in _FIELDS[type(person)]}


def encode(msg: Message) -> list[bytes | memoryview]:
    """Message -> ZeroMQ frames: [msgpack header, raw image bytes (Frame only)].

    The image frame is a memoryview of the array (no copy); send it as is. Raises
    SchemaError for an object that is not a message of this schema.
    """
    cls = type(msg)
    if cls not in _ARRAYS:
        raise SchemaError(f"cannot encode {cls.__name__}: not one of {sorted(MESSAGE_TYPES)}")
    header: dict[str, Any] = {"type": cls.__name__, "schema_version": SCHEMA_VERSION}
    frames: list[bytes | memoryview] = [b""]
    arrays = _ARRAYS[cls]
    for name in _FIELDS[cls]:
        value = getattr(msg, name)
        if name in arrays:
            arr = np.ascontiguousarray(value)
            spec: dict[str, Any] = {"dtype": arr.dtype.str, "shape": list(arr.shape)}
            if name in _RAW_FRAME_FIELDS:
                spec["frame"] = len(frames)
                frames.append(memoryview(arr).cast("B"))
            else:
                spec["data"] = arr.tobytes()
            header[name] = spec
        elif name == "people":
            header[name] = [_encode_person(p) for p in value]
        elif name == "scale_to_original":
            header[name] = float(value)
        elif name == "stamps":
            header[name] = [[s, int(a), int(b)] for s, a, b in value]
        elif name == "image_size":
            header[name] = [int(value[0]), int(value[1])]
        elif isinstance(value, np.integer):
            header[name] = int(value)
        else:
            header[name] = value
    if cls is Pose3D:
        header["joint_names"] = list(JOINT_NAMES)
    frames[0] = msgpack.packb(header, use_bin_type=True)
    return frames


# --------------------------------------------------------------------------- decode
def _as_buffer(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", frame)  # zmq.Frame exposes .buffer
    try:
        return memoryview(buf).cast("B")
    except TypeError as exc:
        raise SchemaError(f"a frame must be bytes-like, got {type(frame).__name__}") from exc


def _decode_array(cls: type, name: str, spec: Any, frames: Sequence[memoryview]) -> np.ndarray:
    want_dtype, _ = _ARRAYS[cls][name]
    if not isinstance(spec, dict):
        raise SchemaError(f"{cls.__name__}.{name} must be a map with dtype/shape/data")
    dtype_str, shape = spec.get("dtype"), spec.get("shape")
    if dtype_str != want_dtype.str:
        raise SchemaError(
            f"{cls.__name__}.{name}: dtype {dtype_str!r} on the wire, expected {want_dtype.str!r}"
        )
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 4
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s for s in shape)
    ):
        raise SchemaError(f"{cls.__name__}.{name}: bad shape {shape!r}")
    nbytes = want_dtype.itemsize * math.prod(shape)
    if nbytes > MAX_IMAGE_BYTES:
        raise SchemaError(f"{cls.__name__}.{name}: {nbytes} bytes, more than {MAX_IMAGE_BYTES}")
    if name in _RAW_FRAME_FIELDS:
        index = spec.get("frame")
        if set(spec) != {"dtype", "shape", "frame"} or not isinstance(index, int):
            raise SchemaError(f"{cls.__name__}.{name}: expected keys dtype, shape, frame")
        if not 1 <= index < len(frames):
            raise SchemaError(
                f"{cls.__name__}.{name} is in frame {index} but the message has "
                f"{len(frames)} frames (truncated?)"
            )
        data: Any = frames[index]
    else:
        data = spec.get("data")
        if set(spec) != {"dtype", "shape", "data"} or not isinstance(data, bytes):
            raise SchemaError(f"{cls.__name__}.{name}: expected keys dtype, shape, data")
    if len(data) != nbytes:
        raise SchemaError(
            f"{cls.__name__}.{name}: {len(data)} bytes for shape {shape} {dtype_str} "
            f"(needs {nbytes}; truncated?)"
        )
    return np.frombuffer(data, dtype=want_dtype).reshape(shape)


def _decode_person(cls: type, value: Any) -> Person:
    if not isinstance(value, dict):
        raise SchemaError(f"each of people must be a map ({cls.__name__}), got "
                          f"{type(value).__name__}")
    fields = _FIELDS[cls]
    if not all(isinstance(k, str) for k in value):  # bench/fuzz.py: bytes keys made sorted()
        raise SchemaError(f"{cls.__name__}: field names must be strings")  # raise TypeError
    if set(value) != set(fields):
        missing, extra = sorted(set(fields) - set(value)), sorted(set(value) - set(fields))
        raise SchemaError(f"{cls.__name__}: missing fields {missing}, unknown fields {extra}")
    kwargs = {name: _decode_array(cls, name, v, ()) if name in _ARRAYS[cls] else v
              for name, v in value.items()}
    return cls(**kwargs)  # __post_init__ validates track_id and every array


def decode(frames: Sequence[Any]) -> Message:
    """ZeroMQ frames (bytes, memoryviews or zmq.Frame) -> Message.

    Arrays are read-only views of the frames (no copy). Raises SchemaError for anything
    that is not exactly a valid message of SCHEMA_VERSION.
    """
    if not isinstance(frames, (list, tuple)) or not 1 <= len(frames) <= 2:
        raise SchemaError(
            f"a message is 1 or 2 frames (header [, image]), got "
            f"{len(frames) if isinstance(frames, (list, tuple)) else type(frames).__name__}"
        )
    bufs = [_as_buffer(f) for f in frames]
    if len(bufs[0]) > MAX_HEADER_BYTES:
        raise SchemaError(f"header is {len(bufs[0])} bytes, more than {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(
            bufs[0], raw=False, strict_map_key=True, use_list=True, max_ext_len=0
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise SchemaError(f"header is not valid msgpack: {exc}") from exc
    if not isinstance(header, dict):
        raise SchemaError(f"header must be a msgpack map, got {type(header).__name__}")
    version = header.pop("schema_version", None)
    # type() and not ==: True and 1.0 compare equal to 1 but are not a version number.
    if type(version) is not int or version != SCHEMA_VERSION:
        raise SchemaError(
            f"schema_version {version!r}, this side speaks {SCHEMA_VERSION}: "
            "update both ends to the same posestream version"
        )
    type_name = header.pop("type", None)
    cls = MESSAGE_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise SchemaError(f"unknown message type {type_name!r}; known: {sorted(MESSAGE_TYPES)}")
    if cls is Pose3D:
        names = header.pop("joint_names", None)
        if names != list(JOINT_NAMES):
            raise SchemaError(f"Pose3D joint_names {names!r} differ from {list(JOINT_NAMES)}")
    if cls is not Frame and len(bufs) != 1:
        raise SchemaError(f"{cls.__name__} is one frame, got {len(bufs)}")
    if cls is Frame and len(bufs) != 2:
        raise SchemaError(f"Frame is two frames (header, image), got {len(bufs)} (truncated?)")
    fields = _FIELDS[cls]
    extra = set(header) - set(fields)
    if extra:
        raise SchemaError(f"{cls.__name__}: unknown fields {sorted(extra)}")
    if cls in _PERSON_OF and "people" not in header:  # nobody is [], never a missing key
        raise SchemaError(f"{cls.__name__}: no people list (an empty one means nobody)")
    kwargs: dict[str, Any] = {}
    for name, value in header.items():
        if name in _ARRAYS[cls]:
            kwargs[name] = _decode_array(cls, name, value, bufs)
        elif name == "stamps":
            if not isinstance(value, list) or not all(
                isinstance(s, list) and len(s) == 3 for s in value
            ):
                raise SchemaError("stamps must be a list of [stage, t_in_ns, t_out_ns]")
            kwargs[name] = tuple(tuple(s) for s in value)
        elif name == "image_size":
            if not isinstance(value, list):
                raise SchemaError(f"image_size must be [width, height], got {value!r}")
            kwargs[name] = tuple(value)
        elif name == "people":
            if not isinstance(value, list) or len(value) > MAX_PEOPLE:
                raise SchemaError(f"people must be a list of at most {MAX_PEOPLE} person maps")
            kwargs[name] = tuple(_decode_person(_PERSON_OF[cls], p) for p in value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)  # __post_init__ validates every field
    except TypeError as exc:  # a missing required field
        raise SchemaError(f"{cls.__name__}: {exc}") from exc
