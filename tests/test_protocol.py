"""docs/PROTOCOL.md is true: a second decoder written only from that page (raw msgpack + numpy,
no pipeline.schema) reads real encoded messages and agrees with posestream's own decoder field
for field; the page's key tables, joint table, limits and byte example match the code."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = (REPO / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")


# --------------------------------------------------------------- the independent decoder
class ProtocolError(ValueError):
    pass


def _read_map(header: dict, frames: list[bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in header.items():
        if key == "people":  # a list of person maps, each read the same way (section 3)
            if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
                raise ProtocolError("people is not a list of maps")
            out[key] = [_read_map(p, frames) for p in value]
            continue
        if isinstance(value, dict) and "dtype" in value:
            shape = [int(s) for s in value["shape"]]
            if "frame" in value:  # the image: bytes in the frame after the header
                if value["dtype"] != "|u1":
                    raise ProtocolError(f"{key}: image dtype {value['dtype']}")
                data = frames[value["frame"]]
                arr = np.frombuffer(data, dtype=np.uint8).reshape(shape)
            else:
                if value["dtype"] != "<f4":
                    raise ProtocolError(f"{key}: dtype {value['dtype']}")
                if len(value["data"]) != 4 * int(np.prod(shape)):
                    raise ProtocolError(f"{key}: {len(value['data'])} bytes for {shape}")
                arr = np.frombuffer(value["data"], dtype="<f4").reshape(shape)
            out[key] = arr
        else:
            out[key] = value
    return out


def read_message(frames: list[bytes]) -> dict[str, Any]:
    """Wire frames after the topic -> a plain dict, following PROTOCOL.md sections 2 and 3."""
    header = msgpack.unpackb(frames[0], raw=False)
    if not isinstance(header, dict):
        raise ProtocolError("header is not a map")
    if header.get("schema_version") != 2:
        raise ProtocolError(f"schema_version {header.get('schema_version')!r}")
    return _read_map(header, frames)


# --------------------------------------------------------------- what the page says
def _section(title: str) -> str:
    """Text of the section whose heading line starts with `title` up to the next heading."""
    m = re.search(rf"^#+ {re.escape(title)}.*?$(.*?)(?=^#+ )", PROTOCOL, re.M | re.S)
    assert m, f"PROTOCOL.md has no section {title!r}"
    return m.group(1)


def _table_keys(title: str) -> list[str]:
    """First-column backticked names of the key table in section `title`."""
    return re.findall(r"^\| `([a-z_0-9]+)` \|", _section(title), re.M)


def test_the_page_lists_exactly_the_keys_on_the_wire():
    from pipeline.schema import MESSAGE_TYPES, Status, encode

    samples = {"Pose3D": _pose(), "Status": Status(kind="info"), "Keypoints2D": _keypoints(),
               "Frame": _frame()}
    for title, msg in samples.items():
        wire_keys = set(msgpack.unpackb(encode(msg)[0], raw=False))
        assert set(_table_keys(title)) == wire_keys, title
        assert len(_table_keys(title)) == len(wire_keys), f"{title}: a key listed twice"
    person_keys = set(msgpack.unpackb(encode(samples["Pose3D"])[0], raw=False)["people"][0])
    assert set(_table_keys("Person map")) == person_keys
    common = set(_table_keys("3. The header"))
    assert common == {"type", "schema_version", "frame_id", "t_capture_ns", "stamps"}
    assert {"dtype", "shape", "data"} <= set(_table_keys("Arrays"))
    # the page covers every message type the schema has, each under its wire name
    assert set(samples) == set(MESSAGE_TYPES)
    for title, msg in samples.items():
        assert msgpack.unpackb(encode(msg)[0], raw=False)["type"] == title


# --------------------------------------------------------------- real messages
RNG = np.random.default_rng(11)


def _person(track_id: int):
    from pipeline.schema import Person3D

    return Person3D(
        track_id=track_id,
        joints_3d_m=RNG.normal(0, 1, (17, 3)).astype(np.float32),
        root_m=RNG.normal(0, 1, 3).astype(np.float32),
        joints_2d_px=RNG.uniform(0, 1280, (17, 2)).astype(np.float32),
        confidence=RNG.uniform(0, 1, 17).astype(np.float32),
        reproj_err_px=RNG.uniform(0, 4, 17).astype(np.float32),
    )


def _pose(people: int = 2):
    from pipeline.schema import Pose3D

    return Pose3D(
        frame_id=123456, t_capture_ns=time.monotonic_ns(),
        stamps=(("capture", 1, 2), ("detect", 3, 4), ("lift", 5, 6), ("output", 7, 2**62)),
        image_size=(1280, 720), people=tuple(_person(i * 5 + 1) for i in range(people)),
        engine_id="a1b2c3d4e5f6",
    )


def _keypoints():
    from pipeline.schema import Keypoints2D, Person2D

    return Keypoints2D(frame_id=3, t_capture_ns=99, image_size=(64, 48), people=(Person2D(
        track_id=0, joints_2d_px=RNG.uniform(0, 64, (17, 2)).astype(np.float32),
        confidence=np.zeros(17, np.float32)),))


def _frame():
    from pipeline.schema import Frame

    return Frame(frame_id=1, t_capture_ns=2, stamps=(("capture", 2, 3),),
                 image=RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8), source="camera:0")


def _assert_agrees(doc: dict[str, Any], msg) -> None:
    """The independent decoding equals the dataclass fields of pipeline.schema's message."""
    import dataclasses

    if "type" in doc:
        assert doc.pop("type") == type(msg).__name__
        assert doc.pop("schema_version") == 2
    names = doc.pop("joint_names", None)
    fields = {f.name for f in dataclasses.fields(msg)}
    assert set(doc) == fields
    for name in fields:
        ours, theirs = doc[name], getattr(msg, name)
        if isinstance(theirs, np.ndarray):
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, name
            np.testing.assert_array_equal(ours, theirs, err_msg=name)
        elif name == "people":
            assert len(ours) == len(theirs)
            for person_doc, person in zip(ours, theirs):
                _assert_agrees(person_doc, person)
        elif name == "stamps":
            assert [tuple(s) for s in ours] == list(theirs)
        elif name == "image_size":
            assert tuple(ours) == theirs
        else:
            assert ours == theirs, name
    if type(msg).__name__ == "Pose3D":
        from engines.runtime.skeleton import JOINT_NAMES

        assert names == list(JOINT_NAMES)


@pytest.mark.parametrize("make", [_pose, lambda: _pose(0), lambda: _pose(5), _keypoints, _frame])
def test_independent_decoder_agrees_with_schema_encode(make):
    from pipeline.schema import decode, encode

    msg = make()
    frames = [bytes(f) for f in encode(msg)]
    _assert_agrees(read_message(frames), decode(frames))
    _assert_agrees(read_message(frames), msg)


def test_status_and_the_byte_example():
    from pipeline.schema import Status, encode

    msg = Status(kind="info", text="hi", t_ns=42, frame_id=7, t_capture_ns=5,
                 stamps=(("output", 10, 11),))
    frames = [bytes(f) for f in encode(msg)]
    _assert_agrees(read_message(frames), msg)
    block = re.search(r"byte by byte.*?```\n(.*?)```", PROTOCOL, re.S).group(1)
    documented = bytes.fromhex(block.replace("\n", " "))
    assert documented == frames[0]
    assert f"({len(frames[0])} bytes, hex)" in PROTOCOL


def test_joint_table_and_limits_match_the_code():
    from engines.runtime.skeleton import JOINT_NAMES, PARENTS
    from pipeline import schema

    rows = re.findall(r"^\| (\d+) \| `([a-z_]+)` \| (-|\d+) \|", _section("4. Joints"), re.M)
    assert [name for _, name, _ in rows] == list(JOINT_NAMES)
    assert [int(i) for i, _, _ in rows] == list(range(17))
    assert [-1 if p == "-" else int(p) for _, _, p in rows] == PARENTS.tolist()
    limits = _section("5. Limits")
    for value in (schema.MAX_HEADER_BYTES, schema.MAX_IMAGE_BYTES, schema.MAX_MESSAGE_BYTES):
        assert f"{value:,}" in limits
    assert f"| {schema.MAX_TEXT_CHARS} characters |" in limits
    assert f"| stamps | {schema.MAX_STAMPS} |" in limits
    assert f"| people in one message | {schema.MAX_PEOPLE} |" in limits
    assert f"schema version {schema.SCHEMA_VERSION})" in PROTOCOL.splitlines()[0]
    assert f"{schema.MAX_MESSAGE_BYTES:,} bytes" in _section("1. Connecting")


def test_the_readme_snippet_reads_a_real_header():
    """Section 8's Python reader, run on a real encoded Pose3D (its loop body, verbatim)."""
    from pipeline.schema import encode

    code = re.search(r"```python\n(.*?)```", _section("8. Reading it"), re.S).group(1)
    body = code.split("while True:\n", 1)[1]
    body = "\n".join(line[4:] for line in body.splitlines())
    pose = _pose()
    printed: list[tuple] = []
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        pull.bind("inproc://protocol-snippet")
        push.connect("inproc://protocol-snippet")
        push.send_multipart([b"pose3d", *encode(pose)])
        namespace = {"np": np, "msgpack": msgpack, "print": lambda *a: printed.append(a),
                     "sub": pull}
        exec(compile(body.replace("continue", "pass"), "PROTOCOL.md", "exec"), namespace)
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()
    assert len(printed) == 2  # one line per person
    for (frame_id, track_id, head), person in zip(printed, pose.people):
        assert frame_id == pose.frame_id and track_id == person.track_id
        np.testing.assert_array_equal(head, person.joints_3d_m[10])


# --------------------------------------------------------------- a real publisher
OUTPUT_STAGE_PUBLISHER = """
import sys, numpy as np
from pipeline.config import OutputConfig
from pipeline.schema import Person3D, Pose3D, Status
from stages.output import OutputStage
endpoint, path = sys.argv[1], sys.argv[2]
d = np.load(path)
stage = OutputStage(OutputConfig(publish=endpoint, wait_for_subscribers=1,
                                 wait_for_subscribers_s=30))
stage.open()
for i in range(len(d["frame_id"])):
    people = tuple(Person3D(
        track_id=int(d["track_id"][i, k]), joints_3d_m=d["joints_3d_m"][i, k],
        root_m=d["joints_3d_m"][i, k][0], joints_2d_px=d["joints_2d_px"][i, k],
        confidence=d["confidence"][i, k], reproj_err_px=d["reproj_err_px"][i, k])
        for k in range(int(d["people"][i])))
    stage.consume(Pose3D(
        frame_id=int(d["frame_id"][i]), t_capture_ns=int(d["t_capture_ns"][i]),
        stamps=(("lift", 1, 2), ("output", 3, 4)), image_size=(640, 480),
        people=people, engine_id="feedc0ffee00"))
stage.publish_status(Status(kind="gap", text="3 frames lost", t_ns=77, frame_id=4))
stage.close()
"""


def test_independent_decoder_reads_the_output_stage_over_zeromq(tmp_path):
    """stages.output publishes in a real process; a plain SUB socket + read_message reads it."""
    import subprocess
    import sys

    n = 6
    data = {
        "frame_id": np.arange(n) * 2,
        "t_capture_ns": np.arange(n) + 10**12,
        "people": np.array([1, 2, 3, 0, 1, 2]),  # frame 3: nobody
        "track_id": np.arange(n * 3).reshape(n, 3) + 1,
        "joints_3d_m": RNG.normal(0, 1, (n, 3, 17, 3)).astype(np.float32),
        "joints_2d_px": RNG.uniform(0, 640, (n, 3, 17, 2)).astype(np.float32),
        "confidence": RNG.uniform(0, 1, (n, 3, 17)).astype(np.float32),
        "reproj_err_px": RNG.uniform(0, 3, (n, 3, 17)).astype(np.float32),
    }
    np.savez(tmp_path / "poses.npz", **data)
    endpoint = f"ipc://{tmp_path}/out.sock"
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"pose3d")
    sub.setsockopt(zmq.SUBSCRIBE, b"status")
    sub.connect(endpoint)
    proc = subprocess.Popen([sys.executable, "-c", OUTPUT_STAGE_PUBLISHER, endpoint,
                             str(tmp_path / "poses.npz")], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    received = []
    try:
        while len(received) < n + 1 and sub.poll(30_000, zmq.POLLIN):
            received.append(sub.recv_multipart())
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        sub.close(linger=0)
        ctx.term()
    assert proc.returncode == 0, err
    assert [frames[0] for frames in received] == [b"pose3d"] * n + [b"status"]
    for i, frames in enumerate(received[:n]):
        assert len(frames) == 2  # topic, header
        msg = read_message(frames[1:])
        assert (msg["type"], msg["schema_version"]) == ("Pose3D", 2)
        assert msg["frame_id"] == data["frame_id"][i]
        assert msg["t_capture_ns"] == data["t_capture_ns"][i]
        assert len(msg["people"]) == data["people"][i]
        assert msg["image_size"] == [640, 480] and msg["engine_id"] == "feedc0ffee00"
        assert msg["stamps"][0] == ["lift", 1, 2] and msg["stamps"][1][0] == "output"
        for k, person in enumerate(msg["people"]):
            assert person["track_id"] == data["track_id"][i, k]
            for key in ("joints_3d_m", "joints_2d_px", "confidence", "reproj_err_px"):
                np.testing.assert_array_equal(person[key], data[key][i, k], err_msg=key)
            np.testing.assert_array_equal(person["root_m"], data["joints_3d_m"][i, k][0])
    status = read_message(received[n][1:])
    assert (status["type"], status["kind"], status["text"], status["t_ns"], status["frame_id"]) == (
        "Status", "gap", "3 frames lost", 77, 4)
