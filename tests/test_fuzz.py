"""Property-based fuzzing of the wire decoder (issue 4): whatever arrives, `decode` either
returns a valid message or raises SchemaError, never another exception; and for the kinds
of damage that can never be valid (truncation, wrong version, unknown type, wrong shapes,
extra fields, oversize) it raises SchemaError.

Budget: about 10 s on one core (max_examples per test below, deadline=None because a
loaded CI machine must not turn slowness into a failure). The same decoder behind a real
socket is fuzzed in tests/test_faults.py.
"""

from __future__ import annotations

import math
import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from engines.runtime.skeleton import NUM_JOINTS
from pipeline.schema import (
    MAX_HEADER_BYTES,
    MAX_IMAGE_BYTES,
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    Frame,
    Keypoints2D,
    Person2D,
    Person3D,
    Pose3D,
    SchemaError,
    Status,
    decode,
    encode,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- valid seeds
def _frame() -> Frame:
    return Frame(frame_id=3, t_capture_ns=time.monotonic_ns(), stamps=(("capture", 1, 2),),
                 image=np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3), source="cam:0")


def _keypoints() -> Keypoints2D:
    return Keypoints2D(frame_id=4, t_capture_ns=5, stamps=(("capture", 1, 2), ("detect", 3, 4)),
                       image_size=(640, 480), people=(Person2D(
                           track_id=2, joints_2d_px=np.ones((NUM_JOINTS, 2), np.float32),
                           confidence=np.full(NUM_JOINTS, 0.5, np.float32)),))


def _pose() -> Pose3D:
    z = np.zeros(NUM_JOINTS, np.float32)
    person = Person3D(track_id=1, joints_3d_m=np.ones((NUM_JOINTS, 3), np.float32),
                      root_m=np.ones(3, np.float32),
                      joints_2d_px=np.ones((NUM_JOINTS, 2), np.float32), confidence=z,
                      reproj_err_px=z)
    return Pose3D(frame_id=5, t_capture_ns=6, image_size=(640, 480), people=(person, person),
                  engine_id="0123456789ab")


def _status() -> Status:
    return Status(kind="restart", text="stage lift restarted", t_ns=9, frame_id=12)


SEEDS = {"Frame": _frame, "Keypoints2D": _keypoints, "Pose3D": _pose, "Status": _status}
seed_names = st.sampled_from(sorted(SEEDS))


def _wire(name: str) -> tuple[dict, list[bytes]]:
    """(header map, frames as bytes) of a valid message of type `name`."""
    frames = [bytes(f) for f in encode(SEEDS[name]())]
    return msgpack.unpackb(frames[0], raw=False), frames


def _pack(header: dict, frames: list[bytes]) -> list[bytes]:
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def _decode_or_schema_error(frames):
    """decode(frames): the message, or None after a SchemaError; anything else fails."""
    try:
        msg = decode(frames)
    except SchemaError as exc:
        assert str(exc), "a SchemaError must say what was wrong"
        return None
    assert type(msg) in MESSAGE_TYPES.values()
    # a message that decoded is valid: it survives its own round trip unchanged
    again = decode(encode(msg))
    assert again.frame_id == msg.frame_id and again.stamps == msg.stamps
    return msg


def _same(a, b) -> bool:
    """Equal as msgpack values (lists and tuples alike, NaN equal to NaN, bool not int)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


# any msgpack value, nested: what a hostile or buggy peer could put in a field
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
    | st.binary(max_size=80),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


# --------------------------------------------------------------------------- raw bytes
@FUZZ
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=5))
@example([])
@example([b""])
@example([b"\x91" * 5000 + b"\xc0"])  # deeply nested arrays
@example([b"\xdd\xff\xff\xff\xff"])  # an array that claims 4 billion items
@example([b"\x80\x03"])  # a map followed by trailing bytes
def test_random_frames(frames):
    _decode_or_schema_error(frames)


@FUZZ
@given(st.one_of(st.none(), st.integers(), st.text(), st.binary(), st.dictionaries(st.text(),
                 st.integers(), max_size=2), st.lists(st.one_of(st.integers(), st.none(),
                                                                  st.text()), max_size=3)))
def test_things_that_are_not_frame_lists(obj):
    with pytest.raises(SchemaError):
        decode(obj)


@FUZZ
@given(seed_names, st.data())
def test_zmq_frames_and_memoryviews_are_decoded_like_bytes(name, data):
    _, frames = _wire(name)
    raw = bytearray(frames[0])
    for _ in range(data.draw(st.integers(0, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    as_bytes = [bytes(raw), *frames[1:]]
    as_zmq = [zmq.Frame(f) for f in as_bytes]
    as_view = [memoryview(f) for f in as_bytes]
    results = [_decode_or_schema_error(x) for x in (as_bytes, as_zmq, as_view)]
    assert len({r is None for r in results}) == 1  # all three agree


# --------------------------------------------------------------------------- byte damage
@FUZZ
@given(seed_names, st.data())
def test_byte_flips_in_header(name, data):
    _, frames = _wire(name)
    raw = bytearray(frames[0])
    for _ in range(data.draw(st.integers(1, 10))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    msg = _decode_or_schema_error([bytes(raw), *frames[1:]])
    if msg is not None:
        # a flip that left a valid message left its type: no two types share their fields
        assert type(msg).__name__ == name, (name, type(msg).__name__)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_truncation_of_the_header_is_rejected(name):
    _, frames = _wire(name)
    for cut in range(len(frames[0])):
        with pytest.raises(SchemaError):
            decode([frames[0][:cut], *frames[1:]])


@FUZZ
@given(st.integers(0, 6 * 8 * 3 - 1), st.binary(min_size=1, max_size=50))
def test_image_frame_of_the_wrong_length_is_rejected(cut, extra):
    _, frames = _wire("Frame")
    with pytest.raises(SchemaError, match="bytes"):
        decode([frames[0], frames[1][:cut]])
    with pytest.raises(SchemaError, match="bytes"):
        decode([frames[0], frames[1] + extra])


@FUZZ
@given(seed_names, st.lists(st.binary(max_size=20), min_size=1, max_size=3))
def test_extra_or_missing_frames_are_rejected(name, extra):
    _, frames = _wire(name)
    with pytest.raises(SchemaError):
        decode([*frames, *extra])
    if name == "Frame":
        with pytest.raises(SchemaError):
            decode(frames[:1])


# --------------------------------------------------------------------------- header damage
@FUZZ
@given(seed_names, st.one_of(msgpack_values, st.integers(-(2**63), 2**64 - 1)))
def test_wrong_version_is_rejected(name, version):
    assume(version != SCHEMA_VERSION)  # True and 1.0 equal 1: see the test below
    header, frames = _wire(name)
    header["schema_version"] = version
    with pytest.raises(SchemaError, match="schema_version"):
        decode(_pack(header, frames))


@pytest.mark.parametrize("version", [True, float(SCHEMA_VERSION)])
def test_version_must_be_an_int(version):
    header, frames = _wire("Status")
    header["schema_version"] = version
    with pytest.raises(SchemaError, match="schema_version"):
        decode(_pack(header, frames))


@FUZZ
@given(seed_names, msgpack_values)
def test_unknown_type_is_rejected(name, type_name):
    assume(not isinstance(type_name, str) or type_name not in MESSAGE_TYPES)
    header, frames = _wire(name)
    header["type"] = type_name
    with pytest.raises(SchemaError, match="type"):
        decode(_pack(header, frames))


@FUZZ
@given(seed_names, st.data(), msgpack_values)
def test_any_field_replaced_by_any_value(name, data, value):
    header, frames = _wire(name)
    key = data.draw(st.sampled_from(sorted(header)))
    header[key] = value
    msg = _decode_or_schema_error(_pack(header, frames))
    if msg is not None and key not in ("type", "schema_version", "joint_names"):
        # only a value that is valid for that field may get through, and it must be kept:
        # the message sends it on exactly as it came
        assert not isinstance(getattr(msg, key), np.ndarray)  # no plain value for an array
        resent = msgpack.unpackb(bytes(encode(msg)[0]), raw=False)
        assert _same(resent[key], value), (key, value, resent[key])


@FUZZ
@given(seed_names, st.data())
def test_missing_fields(name, data):
    header, frames = _wire(name)
    key = data.draw(st.sampled_from(sorted(header)))
    del header[key]
    required = {"type", "schema_version", "frame_id", "t_capture_ns"} - (
        {"frame_id", "t_capture_ns"} if name == "Status" else set()
    ) | ({"image_size", "people"} if name in ("Keypoints2D", "Pose3D") else set())
    msg = _decode_or_schema_error(_pack(header, frames))
    if key in required or (key == "joint_names" and name == "Pose3D"):
        assert msg is None, f"{name} without {key} was accepted"


@FUZZ
@given(st.sampled_from(["Keypoints2D", "Pose3D"]), st.data(), msgpack_values)
def test_any_person_field_replaced_by_any_value(name, data, value):
    header, frames = _wire(name)
    person = header["people"][data.draw(st.integers(0, len(header["people"]) - 1))]
    key = data.draw(st.sampled_from(sorted(person)))
    person[key] = value
    msg = _decode_or_schema_error(_pack(header, frames))
    if msg is not None:  # only a valid track id can replace a track id
        assert key == "track_id" and isinstance(value, int) and value >= 0
        assert value in [p.track_id for p in msg.people]


@FUZZ
@given(seed_names, st.text(min_size=1, max_size=20), msgpack_values)
def test_extra_fields_are_rejected(name, key, value):
    header, frames = _wire(name)
    assume(key not in header)
    header[key] = value
    with pytest.raises(SchemaError, match="unknown fields"):
        decode(_pack(header, frames))


ARRAY_FIELDS = [("Keypoints2D", "joints_2d_px"), ("Keypoints2D", "confidence"),
                ("Pose3D", "joints_3d_m"), ("Pose3D", "root_m"), ("Pose3D", "reproj_err_px"),
                ("Pose3D", "joints_2d_px")]


@FUZZ
@given(st.sampled_from(ARRAY_FIELDS),
       st.lists(st.integers(0, 40), min_size=0, max_size=4),
       st.sampled_from(["<f4", "<f8", "<f2", "|u1", "<i4", ">f4", "|b1", "O", ""]))
def test_wrong_array_shapes_and_dtypes_are_rejected(field, shape, dtype):
    name, key = field
    header, frames = _wire(name)
    person = header["people"][0]
    right = person[key]
    assume(not (shape == right["shape"] and dtype == right["dtype"]))
    itemsize = np.dtype(dtype).itemsize if dtype not in ("O", "") else 8
    person[key] = {"dtype": dtype, "shape": shape, "data": b"\0" * (itemsize * math.prod(shape))}
    with pytest.raises(SchemaError, match=f"{key}|more than {MAX_HEADER_BYTES}"):
        decode(_pack(header, frames))


@FUZZ
@given(st.lists(st.integers(0, 2**62), min_size=3, max_size=3),
       st.sampled_from(["|u1", "<f4"]))
def test_huge_claimed_images_are_rejected_without_allocating(shape, dtype):
    header, frames = _wire("Frame")
    header["image"] = {"dtype": dtype, "shape": shape, "frame": 1}
    with pytest.raises(SchemaError):
        decode(_pack(header, frames))


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_oversized_header_is_rejected(name):
    header, frames = _wire(name)
    big = "x" * MAX_HEADER_BYTES
    key = {"Frame": "source", "Status": "text"}.get(name, "engine_id" if name == "Pose3D" else "")
    if key:
        header[key] = big
    else:
        header["stamps"] = [["s" * 1000, 1, 2]] * 70
    with pytest.raises(SchemaError):
        decode(_pack(header, frames))


def test_oversized_image_frame_is_rejected():
    side = int(math.isqrt(MAX_IMAGE_BYTES // 3)) + 2
    header, _ = _wire("Frame")
    header["image"] = {"dtype": "|u1", "shape": [side, side, 3], "frame": 1}
    with pytest.raises(SchemaError, match="more than"):
        decode(_pack(header, [b"", b"\0"]))


@FUZZ
@given(seed_names, st.lists(st.one_of(msgpack_values, st.lists(msgpack_values, min_size=3,
                                                                 max_size=3)), max_size=4))
def test_malformed_stamps(name, stamps):
    header, frames = _wire(name)
    header["stamps"] = stamps
    msg = _decode_or_schema_error(_pack(header, frames))
    if msg is not None:
        for stage, t_in, t_out in msg.stamps:
            assert isinstance(stage, str)
            assert isinstance(t_in, int) and isinstance(t_out, int) and t_in >= 0 and t_out >= 0
