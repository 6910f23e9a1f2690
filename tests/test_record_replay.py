"""pipeline.record / replay / export: a real publisher process -> recorder process -> file ->
replay process -> subscriber gives back every message byte for byte and in order, with the
recorded timing scaled by --speed; the file survives a crash; exports round-trip the numbers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from engines.runtime.skeleton import JOINT_NAMES, NUM_JOINTS
from pipeline.export import csv_columns, export
from pipeline.record import Recording, RecordingError, RecordingWriter
from pipeline.schema import (Frame, Keypoints2D, Person2D, Person3D, Pose3D, Status, decode,
                             encode)

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(5)
GAP_S = 0.015  # the publisher's pause between messages


def _person(track_id: int) -> Person3D:
    return Person3D(
        track_id=track_id,
        joints_3d_m=RNG.normal(0, 1, (NUM_JOINTS, 3)).astype(np.float32),
        root_m=RNG.normal(0, 1, 3).astype(np.float32),
        joints_2d_px=RNG.uniform(0, 640, (NUM_JOINTS, 2)).astype(np.float32),
        confidence=RNG.uniform(0, 1, NUM_JOINTS).astype(np.float32),
        reproj_err_px=RNG.uniform(0, 5, NUM_JOINTS).astype(np.float32),
    )


def _pose(i: int) -> Pose3D:
    """Frame i: 0 to 2 people (nobody when i % 7 == 3), tracks 1 and 2 (2 from frame 4 on)."""
    people = () if i % 7 == 3 else (_person(1),) + ((_person(2),) if i >= 4 and i % 2 else ())
    return Pose3D(
        frame_id=i, t_capture_ns=1_000_000 * i + 17, stamps=(("capture", 5 * i, 5 * i + 1),),
        image_size=(640, 480), people=people, engine_id="0123456789ab",
    )


def _messages() -> list[list[bytes]]:
    """The test stream as ZeroMQ frames (topic first): poses, status, a frame, keypoints."""
    msgs: list[list[bytes]] = [[b"status", *map(bytes, encode(Status(kind="info", text="start")))]]
    for i in range(24):
        msgs.append([b"pose3d", *map(bytes, encode(_pose(i)))])
        if i == 10:
            image = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            frame = Frame(frame_id=i, t_capture_ns=5, image=image, source="test")
            msgs.append([b"frame", *map(bytes, encode(frame))])
            kp = Keypoints2D(frame_id=i, t_capture_ns=5, image_size=(64, 48), people=(Person2D(
                track_id=0, joints_2d_px=np.ones((NUM_JOINTS, 2), np.float32),
                confidence=np.ones(NUM_JOINTS, np.float32)),))
            msgs.append([b"keypoints", *map(bytes, encode(kp))])
    msgs.append([b"status", *map(bytes, encode(Status(kind="gap", text="end", t_ns=9)))])
    return msgs


PUBLISHER = textwrap.dedent(
    """
    import sys, time, msgpack, zmq
    from pipeline.transport import open_socket
    endpoint, path, gap_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with open(path, "rb") as fh:
        messages = msgpack.unpackb(fh.read())
    ctx = zmq.Context()
    pub = open_socket(ctx, zmq.XPUB, bind=endpoint, sndhwm=10000)
    while pub.recv()[:1] != b"\\x01":  # readiness: wait for the recorder's subscription
        pass
    for frames in messages:
        pub.send_multipart(frames)
        time.sleep(gap_s)
    pub.close(linger=5000)
    ctx.term()
    """
)


def _run(args: list[str], timeout: float = 60) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(*procs: subprocess.Popen, timeout: float = 60) -> list[tuple[str, str]]:
    """Wait for every process (killing what is left on the way out); their (stdout, stderr)."""
    outs = []
    try:
        for proc in procs:
            outs.append(proc.communicate(timeout=timeout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    return outs


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, list[list[bytes]]]:
    """A recording made by a real recorder process of a real publisher process."""
    tmp = tmp_path_factory.mktemp("rec")
    messages = _messages()
    (tmp / "messages.msgpack").write_bytes(msgpack.packb(messages))
    endpoint = f"ipc://{tmp}/pub.sock"
    path = tmp / "run.psrec"
    recorder = _run(["-m", "pipeline.record", endpoint, str(path), "--count", str(len(messages)),
                     "--timeout", "30"])
    publisher = _run(["-c", PUBLISHER, endpoint, str(tmp / "messages.msgpack"), str(GAP_S)])
    (r_out, r_err), (_, p_err) = _finish(recorder, publisher)
    assert publisher.returncode == 0, p_err
    assert recorder.returncode == 0, r_err
    assert f"{len(messages)} messages" in r_out
    return path, messages


def test_recorder_keeps_every_message_byte_for_byte_in_order(recorded):
    path, messages = recorded
    with Recording(path) as rec:
        assert rec.complete
        assert len(rec) == len(messages)
        got = list(rec)
        assert [list(m.frames) for m in got] == messages
        assert np.all(np.diff(rec.t_recv_ns) >= 0)
        # the publisher paused GAP_S between messages: the receive times span at least most
        # of that (a loose, lower-bound check that times are receive times, not write order)
        assert rec.duration_s > 0.5 * GAP_S * (len(messages) - 1)
        assert rec[5].frames == got[5].frames and rec[-1].frames == got[-1].frames
        assert isinstance(got[1].decode(), Pose3D)


def _replay_and_receive(path: Path, tmp: Path, speed: float, n: int) -> tuple[list, list[float]]:
    endpoint = f"ipc://{tmp}/replay_{speed}.sock"
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    replayer = _run(["-m", "pipeline.replay", str(path), "--publish", endpoint, "--speed",
                     str(speed), "--wait-subscribers", "1", "--wait-s", "30"])
    got, times = [], []
    try:
        while len(got) < n and sub.poll(30_000, zmq.POLLIN):
            got.append(sub.recv_multipart())
            times.append(time.monotonic())
        (out, err), = _finish(replayer)
    finally:
        sub.close(linger=0)
        ctx.term()
    assert replayer.returncode == 0, err
    assert f"replayed {n} messages" in out
    return got, times


def test_replay_republishes_identically_with_timing_scaled_by_speed(recorded, tmp_path):
    path, messages = recorded
    with Recording(path) as rec:
        recorded_s = rec.duration_s
    fast, fast_t = _replay_and_receive(path, tmp_path, 4.0, len(messages))
    slow, slow_t = _replay_and_receive(path, tmp_path, 0.5, len(messages))
    assert fast == messages
    assert slow == messages
    fast_span, slow_span = fast_t[-1] - fast_t[0], slow_t[-1] - slow_t[0]
    assert slow_span > fast_span
    # a replay is never ahead of its schedule: half speed takes at least about twice as long
    assert slow_span > 0.8 * recorded_s / 0.5


def test_a_recording_cut_short_still_reads(recorded, tmp_path):
    path, messages = recorded
    data = path.read_bytes()
    with Recording(path) as rec:
        cut_at = int(rec._offsets[-3]) + 7  # in the middle of the third-last record
    cut = tmp_path / "cut.psrec"
    cut.write_bytes(data[:cut_at])
    with Recording(cut) as rec:
        assert not rec.complete
        assert [list(m.frames) for m in rec] == messages[:-3]


def test_not_a_recording(tmp_path):
    bad = tmp_path / "bad.psrec"
    bad.write_bytes(msgpack.packb({"format": "something else"}))
    with pytest.raises(RecordingError, match="not a posestream recording"):
        Recording(bad)
    newer = tmp_path / "newer.psrec"
    newer.write_bytes(msgpack.packb({"format": "posestream-recording", "version": 99}))
    with pytest.raises(RecordingError, match="version 99"):
        Recording(newer)
    with pytest.raises(RecordingError, match="not found"):
        Recording(tmp_path / "missing.psrec")


@pytest.fixture(scope="module")
def pose_recording(tmp_path_factory) -> tuple[Path, list[Pose3D], list[int]]:
    """A recording written directly (no sockets) with poses and one Status."""
    path = tmp_path_factory.mktemp("exp") / "poses.psrec"
    poses = [_pose(i) for i in range(12)]
    times = [10_000 + 33_000_000 * i for i in range(12)]
    with RecordingWriter(path, endpoint="test") as writer:
        writer.write(5, [b"status", *encode(Status(kind="info", text="x"))])
        for pose, t in zip(poses, times):
            writer.write(t, [b"pose3d", *encode(pose)])
    return path, poses, times


def test_export_npz_round_trips(pose_recording, tmp_path):
    path, poses, times = pose_recording
    out = tmp_path / "p.npz"
    summary = export(path, out, "npz", progress=False)
    assert (summary.rows, summary.skipped) == (12, 1)
    data = np.load(out)
    assert data["present"].shape == (12, 2)  # padded to the most people in a frame
    np.testing.assert_array_equal(data["present"].sum(axis=1), [len(p.people) for p in poses])
    for i, pose in enumerate(poses):
        for k in range(2):
            if k >= len(pose.people):
                assert not data["present"][i, k] and data["track_id"][i, k] == 0
                assert np.all(data["joints_3d_m"][i, k] == 0)
                continue
            person = pose.people[k]
            assert data["track_id"][i, k] == person.track_id
            for name in ("joints_3d_m", "root_m", "joints_2d_px", "confidence",
                         "reproj_err_px"):
                np.testing.assert_array_equal(data[name][i, k], getattr(person, name))
    # one track, as the module docstring says
    rows, slots = np.nonzero(data["track_id"] == 2)
    assert rows.tolist() == [i for i, p in enumerate(poses) if len(p.people) == 2]
    np.testing.assert_array_equal(data["frame_id"], [p.frame_id for p in poses])
    np.testing.assert_array_equal(data["t_capture_ns"], [p.t_capture_ns for p in poses])
    np.testing.assert_array_equal(data["t_recv_ns"], times)
    assert data["image_size"].tolist() == [[640, 480]] * 12
    assert data["joint_names"].tolist() == list(JOINT_NAMES)


def test_export_csv_cli_round_trips(pose_recording, tmp_path):
    path, poses, times = pose_recording
    out = tmp_path / "p.csv"
    proc = subprocess.run([sys.executable, "-m", "pipeline.export", str(path), "--format", "csv",
                           "-o", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    people = [(pose, person, t) for pose, t in zip(poses, times) for person in pose.people]
    assert f"{len(people)} rows" in proc.stdout
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == csv_columns()
    assert len(rows) == len(people) == 14  # one row per person; frames with nobody: none
    for row, (frame, pose, t) in zip(rows, people):
        assert int(row["frame_id"]) == frame.frame_id and int(row["t_recv_ns"]) == t
        assert int(row["track_id"]) == pose.track_id
        for j, name in enumerate(JOINT_NAMES):
            xyz = np.array([row[f"{name}_{a}_m"] for a in "xyz"], dtype=np.float32)
            np.testing.assert_array_equal(xyz, pose.joints_3d_m[j])
            uv = np.array([row[f"{name}_{a}_px"] for a in "uv"], dtype=np.float32)
            np.testing.assert_array_equal(uv, pose.joints_2d_px[j])
            assert np.float32(row[f"{name}_conf"]) == pose.confidence[j]
            assert np.float32(row[f"{name}_reproj_px"]) == pose.reproj_err_px[j]


def test_export_jsonl_has_every_message(recorded, tmp_path):
    path, messages = recorded
    out = tmp_path / "all.jsonl"
    summary = export(path, out, "jsonl", progress=False)
    assert (summary.rows, summary.skipped) == (len(messages), 0)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["topic"].encode() for line in lines] == [m[0] for m in messages]
    for line, frames in zip(lines, messages):
        msg = decode(frames[1:])
        assert line["type"] == type(msg).__name__
        assert line["frame_id"] == msg.frame_id
        if isinstance(msg, Pose3D):
            assert [p["track_id"] for p in line["people"]] == [p.track_id for p in msg.people]
            for person_line, person in zip(line["people"], msg.people):
                np.testing.assert_array_equal(
                    np.array(person_line["joints_3d_m"], dtype=np.float32), person.joints_3d_m)
            assert line["stamps"] == [list(s) for s in msg.stamps]
        if isinstance(msg, Frame):
            assert line["image"] == {"dtype": "|u1", "shape": [48, 64, 3]}


def test_recorder_stopped_by_sigterm_writes_its_index(tmp_path):
    path = tmp_path / "stopped.psrec"
    recorder = _run(["-m", "pipeline.record", f"ipc://{tmp_path}/nobody.sock", str(path)])
    try:
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:  # the header is written first
            time.sleep(0.02)
        assert path.exists(), "the recorder never created its file"
        recorder.terminate()
        out, err = recorder.communicate(timeout=30)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait(timeout=10)
    assert recorder.returncode == 0, err
    assert "0 messages" in out
    with Recording(path) as rec:
        assert rec.complete and len(rec) == 0
        assert rec.header["endpoint"] == f"ipc://{tmp_path}/nobody.sock"


def test_replay_of_an_empty_recording_sends_nothing(tmp_path):
    from pipeline.replay import replay

    path = tmp_path / "empty.psrec"
    RecordingWriter(path).close()
    summary = replay(path, f"ipc://{tmp_path}/empty.sock", progress=False)
    assert (summary.sent, summary.duration_s) == (0, 0.0)
    with pytest.raises(ValueError, match="speed must be >= 0"):
        replay(path, f"ipc://{tmp_path}/empty.sock", speed=-1.0)


def test_record_function_stops_on_its_event_and_keeps_what_came(tmp_path):
    """How run_pipeline.py --record calls it: record(endpoint, path, stop_event) in a thread."""
    import threading

    from pipeline.record import record

    endpoint = f"ipc://{tmp_path}/live.sock"
    path = tmp_path / "live.psrec"
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    stop = threading.Event()
    result = []
    thread = threading.Thread(target=lambda: result.append(record(endpoint, path, stop)))
    thread.start()
    try:
        assert pub.poll(30_000, zmq.POLLIN) and pub.recv() == b"\x01"  # the recorder is in
        frames = [b"pose3d", *map(bytes, encode(_pose(0)))]
        pub.send_multipart(frames)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the message is on disk (flushed each 1 s)
            with Recording(path) as rec:
                if len(rec) == 1:
                    break
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
        pub.close(linger=0)
        ctx.term()
    assert not thread.is_alive()
    assert result[0].count == 1
    with Recording(path) as rec:
        assert rec.complete and [list(m.frames) for m in rec] == [frames]


def test_a_damaged_record_is_a_recording_error(pose_recording, tmp_path):
    path, poses, _ = pose_recording
    data = bytearray(path.read_bytes())
    with Recording(path) as rec:
        offset = int(rec._offsets[3])
    data[offset] = 0xC1  # a byte msgpack never uses
    bad = tmp_path / "damaged.psrec"
    bad.write_bytes(bytes(data))
    with Recording(bad) as rec:
        assert rec.complete  # the index is intact
        assert rec[2].decode().frame_id == poses[1].frame_id  # record 0 is the Status
        with pytest.raises(RecordingError, match=f"record at byte {offset} is damaged"):
            list(rec)
        with pytest.raises(RecordingError, match="damaged"):
            rec[3]
