"""pipeline.schema: every message type survives the wire exactly; anything malformed is a
SchemaError (never another exception, never pickle)."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.runtime.skeleton import JOINT_NAMES, NUM_JOINTS
from pipeline.schema import (
    MAX_HEADER_BYTES,
    MAX_PEOPLE,
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
    with_stamp,
)

RNG = np.random.default_rng(0)


def _frame() -> Frame:
    return Frame(
        frame_id=7,
        t_capture_ns=time.monotonic_ns(),
        stamps=(("capture", 1, 2),),
        image=RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        source="video:street.avi",
    )


def _keypoints() -> Keypoints2D:
    return Keypoints2D(
        frame_id=8,
        t_capture_ns=123,
        stamps=(("capture", 1, 2), ("detect", 3, 4)),
        image_size=(64, 48),
        people=tuple(Person2D(
            track_id=tid,
            joints_2d_px=RNG.uniform(0, 64, (NUM_JOINTS, 2)).astype(np.float32),
            confidence=RNG.uniform(0, 1, NUM_JOINTS).astype(np.float32),
        ) for tid in (0, 0)),
    )


def _person3d(track_id: int = 3) -> Person3D:
    return Person3D(
        track_id=track_id,
        joints_3d_m=RNG.normal(0, 1, (NUM_JOINTS, 3)).astype(np.float32),
        root_m=np.array([0.1, -0.2, 4.5], np.float32),
        joints_2d_px=RNG.uniform(0, 720, (NUM_JOINTS, 2)).astype(np.float32),
        confidence=RNG.uniform(0, 1, NUM_JOINTS).astype(np.float32),
        reproj_err_px=RNG.uniform(0, 5, NUM_JOINTS).astype(np.float32),
    )


def _pose() -> Pose3D:
    return Pose3D(
        frame_id=9,
        t_capture_ns=456,
        stamps=(("capture", 1, 2), ("detect", 3, 4), ("lift", 5, 6)),
        image_size=(1280, 720),
        people=(_person3d(3), _person3d(7)),
        engine_id="0123456789ab",
    )


def _nobody() -> Pose3D:
    return Pose3D(frame_id=10, t_capture_ns=457, image_size=(1280, 720), engine_id="0123456789ab")


def _status() -> Status:
    return Status(kind="gap", text="frames 10-14 lost: lift restarted", t_ns=99, frame_id=14)


ALL = [_frame, _keypoints, _pose, _nobody, _status]


def _assert_same(a, b) -> None:
    assert type(a) is type(b)
    for name in a.__dataclass_fields__:
        va, vb = getattr(a, name), getattr(b, name)
        if isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype and va.shape == vb.shape, name
            np.testing.assert_array_equal(va, vb, err_msg=name)
        elif name == "people":
            assert len(va) == len(vb), name
            for pa, pb in zip(va, vb):
                _assert_same(pa, pb)
        else:
            assert va == vb, name


@pytest.mark.parametrize("make", ALL, ids=lambda f: f.__name__)
def test_round_trip_is_exact(make):
    msg = make()
    frames = encode(msg)
    # as bytes (what a copying recv gives) and as memoryviews (zero-copy recv)
    _assert_same(msg, decode([bytes(f) for f in frames]))
    _assert_same(msg, decode([memoryview(bytes(f)) for f in frames]))


def test_image_travels_as_its_own_raw_frame():
    msg = _frame()
    frames = encode(msg)
    assert len(frames) == 2
    assert bytes(frames[1]) == msg.image.tobytes()
    assert len(frames[0]) < 300  # the header holds no pixels


def test_pose_header_carries_version_and_joint_names():
    header = msgpack.unpackb(encode(_pose())[0])
    assert header["type"] == "Pose3D"
    assert header["schema_version"] == SCHEMA_VERSION
    assert header["joint_names"] == list(JOINT_NAMES)
    assert [p["track_id"] for p in header["people"]] == [3, 7]
    assert header["people"][0]["joints_3d_m"]["shape"] == [NUM_JOINTS, 3]


def test_with_stamp_appends():
    msg = with_stamp(_keypoints(), "lift", 10, 20)
    assert msg.stamps[-1] == ("lift", 10, 20)
    assert len(msg.stamps) == 3


def test_non_contiguous_image_is_encoded_correctly():
    big = RNG.integers(0, 256, (48, 128, 3), dtype=np.uint8)
    view = big[:, ::2]  # not contiguous
    msg = Frame(frame_id=0, t_capture_ns=0, image=view)
    np.testing.assert_array_equal(decode(encode(msg)).image, view)


# ----------------------------------------------------------------- construction rejects
@pytest.mark.parametrize(
    "change",
    [
        {"joints_3d_m": np.zeros((17, 3), np.float64)},  # wrong dtype
        {"joints_3d_m": np.zeros((16, 3), np.float32)},  # wrong joint count
        {"confidence": np.zeros((17, 1), np.float32)},
        {"joints_2d_px": [[0.0, 0.0]] * 17},  # not an array
        {"track_id": -1},
        {"track_id": 1.0},
        {"track_id": True},
    ],
    ids=str,
)
def test_person_construction_rejects_bad_fields(change):
    fields = {n: getattr(_person3d(), n) for n in Person3D.__dataclass_fields__}
    fields.update(change)
    with pytest.raises(SchemaError):
        Person3D(**fields)


@pytest.mark.parametrize(
    "change",
    [
        {"frame_id": -1},
        {"frame_id": 1.5},
        {"image_size": (0, 10)},
        {"people": [None]},  # a list, not a tuple
        {"people": (None,)},
        {"people": ("person",)},
        {"people": (Person2D(track_id=1, joints_2d_px=np.zeros((17, 2), np.float32),
                             confidence=np.zeros(17, np.float32)),)},  # a 2D person in a Pose3D
        {"people": (Person3D(track_id=1, joints_3d_m=np.zeros((17, 3), np.float32),
                             root_m=np.zeros(3, np.float32),
                             joints_2d_px=np.zeros((17, 2), np.float32),
                             confidence=np.zeros(17, np.float32),
                             reproj_err_px=np.zeros(17, np.float32)),) * (MAX_PEOPLE + 1)},
    ],
    ids=lambda c: f"{list(c)[0]}={str(list(c.values())[0])[:40]}",
)
def test_construction_rejects_bad_fields(change):
    fields = {n: getattr(_pose(), n) for n in Pose3D.__dataclass_fields__}
    fields.update(change)
    with pytest.raises(SchemaError):
        Pose3D(**fields)


def test_frame_scale_to_original_is_checked_and_travels():
    image = np.zeros((4, 6, 3), np.uint8)
    assert decode(encode(Frame(frame_id=0, t_capture_ns=0, image=image,
                               scale_to_original=4.0))).scale_to_original == 4.0
    for bad in (0.0, -1.0, float("nan"), True, "2"):
        with pytest.raises(SchemaError, match="scale_to_original"):
            Frame(frame_id=0, t_capture_ns=0, image=image, scale_to_original=bad)


def test_status_kind_is_checked():
    with pytest.raises(SchemaError, match="kind"):
        Status(kind="oops")


def test_wrong_image_dtype_names_the_fix():
    with pytest.raises(SchemaError, match="astype"):
        Frame(frame_id=0, t_capture_ns=0, image=np.zeros((4, 4, 3), np.float32))


# ----------------------------------------------------------------- decode rejects
def _header(msg) -> dict:
    return msgpack.unpackb(encode(msg)[0])


def _pack(header: dict) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def test_rejects_wrong_version():
    h = _header(_pose())
    h["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(SchemaError, match="schema_version"):
        decode([_pack(h)])


def test_rejects_unknown_type():
    h = _header(_pose())
    h["type"] = "Mesh3D"
    with pytest.raises(SchemaError, match="unknown message type"):
        decode([_pack(h)])


def test_rejects_truncated_header():
    raw = encode(_pose())[0]
    for cut in (1, len(raw) // 2, len(raw) - 1):
        with pytest.raises(SchemaError):
            decode([raw[:cut]])


def test_rejects_truncated_image():
    frames = [bytes(f) for f in encode(_frame())]
    with pytest.raises(SchemaError, match="truncated"):
        decode([frames[0], frames[1][:-1]])
    with pytest.raises(SchemaError, match="truncated"):
        decode([frames[0]])


def test_rejects_wrong_shape_and_dtype_on_the_wire():
    h = _header(_pose())
    h["people"][1]["joints_3d_m"]["shape"] = [16, 3]
    with pytest.raises(SchemaError):
        decode([_pack(h)])
    h = _header(_pose())
    h["people"][0]["confidence"]["dtype"] = "<f8"
    with pytest.raises(SchemaError, match="dtype"):
        decode([_pack(h)])


def test_rejects_missing_and_extra_fields():
    h = _header(_pose())
    del h["people"][0]["root_m"]
    with pytest.raises(SchemaError, match="root_m"):
        decode([_pack(h)])
    h = _header(_pose())
    h["people"][1]["debug"] = 1
    with pytest.raises(SchemaError, match="unknown fields"):
        decode([_pack(h)])
    h = _header(_pose())
    h["debug"] = 1
    with pytest.raises(SchemaError, match="unknown fields"):
        decode([_pack(h)])


@pytest.mark.parametrize("people", [
    {"track_id": 1}, "people", [[1, 2, 3]], ["x"], [None], [{"track_id": "1"}],
], ids=str)
def test_rejects_malformed_people_on_the_wire(people):
    h = _header(_pose())
    h["people"] = people
    with pytest.raises(SchemaError):
        decode([_pack(h)])


def test_rejects_too_many_people_on_the_wire():
    h = _header(_pose())
    h["people"] = h["people"][:1] * (MAX_PEOPLE + 1)
    with pytest.raises(SchemaError, match="at most"):
        decode([_pack(h)])


def test_a_schema_1_pose_fails_with_a_version_error():
    """What a v1 publisher sends (one person, person_present) is refused by its version first,
    with a message that says what to do, never decoded into garbage."""
    z = {"dtype": "<f4", "shape": [17, 3], "data": bytes(17 * 3 * 4)}
    v1 = {"type": "Pose3D", "schema_version": 1, "frame_id": 1, "t_capture_ns": 2,
          "stamps": [], "image_size": [640, 480], "person_present": True, "joints_3d_m": z,
          "engine_id": "x", "joint_names": list(JOINT_NAMES)}
    with pytest.raises(SchemaError, match="schema_version 1, this side speaks 2: update"):
        decode([_pack(v1)])


def test_rejects_other_joint_names():
    h = _header(_pose())
    h["joint_names"] = list(reversed(JOINT_NAMES))
    with pytest.raises(SchemaError, match="joint_names"):
        decode([_pack(h)])


def test_rejects_oversized():
    with pytest.raises(SchemaError, match="more than"):
        decode([b"\x00" * (MAX_HEADER_BYTES + 1)])
    h = _header(_frame())
    h["image"]["shape"] = [100000, 100000, 3]
    with pytest.raises(SchemaError, match="more than"):
        decode([_pack(h), b"\x00"])


def test_rejects_pickle_and_wrong_frame_counts():
    import pickle

    with pytest.raises(SchemaError):
        decode([pickle.dumps(_status())])
    with pytest.raises(SchemaError):
        decode([])
    with pytest.raises(SchemaError):
        decode([encode(_status())[0]] * 3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=400), min_size=0, max_size=3))
def test_random_bytes_only_ever_raise_schema_error(frames):
    try:
        msg = decode(frames)
    except SchemaError as exc:
        assert str(exc), "a SchemaError says what was wrong"
        return
    # random bytes that happen to be a whole valid message (the odds are nil): then it is
    # one, and it survives its own round trip
    again = decode(encode(msg))
    assert type(again) is type(msg) and again.frame_id == msg.frame_id


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_headers_only_ever_raise_schema_error(data):
    raw = bytearray(encode(_pose())[0])
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        msg = decode([bytes(raw)])
    except SchemaError:
        return
    assert isinstance(msg, Pose3D)  # a mutation that kept it valid must still be a Pose3D
