"""Fuzzing (issue 12.5): the regressions bench/fuzz.py found, each fixed, and a short smoke
run of every fuzz target (atheris, coverage-guided; skipped when the `fuzz` extra is not
installed). The long runs (10^6 inputs per target) are `python -m bench.fuzz all`, outside
CI; docs/RELIABILITY.md has their counts.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import msgpack
import numpy as np
import pytest
import zmq

from engines.runtime.intrinsics import CalibrationError, load_calibration
from pipeline.record import Recording, RecordingError, RecordingWriter
from pipeline.schema import Frame, encode
from pipeline.shm import FrameRing, RingError, RingReader
from pipeline.transport import SHM, EdgeReceiver
from tests.conftest import REPO

SMOKE_RUNS = 1000


def _ring(tmp_path):
    ring = FrameRing(str(tmp_path), prefix="t")
    parts = [bytes(p) for p in encode(Frame(frame_id=1, t_capture_ns=2,
                                            image=np.zeros((120, 200, 3), np.uint8)))]
    descriptor, _, emptied = ring.put(parts)
    return ring, descriptor, [bytes(p) for p in emptied]


def test_a_ring_name_with_a_nul_byte_is_a_ring_error_not_a_crash(tmp_path):
    ring, descriptor, parts = _ring(tmp_path)
    d = msgpack.unpackb(descriptor)
    d["ring"] = "t\x00.ring"
    with pytest.raises(RingError, match="not a ring file name"):
        RingReader(str(tmp_path)).read(msgpack.packb(d), parts)
    ring.close()


def test_the_same_descriptor_on_an_edge_is_counted_and_the_receiver_goes_on(tmp_path):
    ring, descriptor, parts = _ring(tmp_path)
    d = msgpack.unpackb(descriptor)
    d["ring"] = "t\x00.ring"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("inproc://regression")
    why = []
    rx = EdgeReceiver(ctx, "inproc://regression", on_malformed=why.append,
                      ring_dir=str(tmp_path))
    try:
        rx.request()
        peer = router.recv_multipart()[0]
        router.send_multipart([peer, SHM, msgpack.packb(d), *parts])
        assert rx.socket.poll(2000, zmq.POLLIN)
        assert rx.receive() is None and len(why) == 1 and "not a ring file name" in why[0]
        router.send_multipart([peer, SHM, descriptor, *parts])  # a good one still works
        assert rx.socket.poll(2000, zmq.POLLIN) and rx.receive() is not None
    finally:
        rx.close()
        router.close(0)
        ctx.term()
        ring.close()


def test_a_recording_whose_index_points_outside_it_is_a_recording_error(tmp_path):
    path = tmp_path / "r.psrec"
    writer = RecordingWriter(path, "tcp://127.0.0.1:5556")
    writer.write(1, [b"pose3d", b"x"])
    writer.close()
    data = path.read_bytes()
    good = np.asarray([writer_offset(data)], "<i8").tobytes()
    assert data.count(good) == 1
    path.write_bytes(data.replace(good, np.asarray([-5], "<i8").tobytes()))
    with pytest.raises(RecordingError, match="points outside the records"):
        Recording(path)


def writer_offset(data: bytes) -> int:
    """The offset of the first record: right after the msgpack header map."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    unpacker.unpack()
    return unpacker.tell()


def test_malformed_opencv_yaml_never_reaches_opencvs_parser(tmp_path):
    """OpenCV's FileStorage aborted the process (heap corruption) on this file; it is now
    read with PyYAML, in a child process here in case that ever comes back."""
    path = tmp_path / "calib.yaml"
    path.write_text("%YAML:1.0\n---\ncamera_matrix: !!opencv-matrix\n   rows: 3\n   csol: 3\n"
                    "   dt: d\n   data: [ 900., 0., 640., 0., 900., 360., 0., 0., 1. ]\n"
                    "image_width: 1280\nimage_height: 720\n")
    code = ("import sys; from engines.runtime.intrinsics import load_calibration as L; "
            f"print(L({str(path)!r}).fx)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "900.0"
    # text where numbers belong: a CalibrationError naming the file
    path.write_text(path.read_text().replace("900., 0., 640.", "9xx., 0., 640."))
    with pytest.raises(CalibrationError, match="calib.yaml"):
        load_calibration(path)


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris is not installed: pip install -e '.[fuzz]'")
def test_every_fuzz_target_runs_clean_for_a_short_while():
    proc = subprocess.run([sys.executable, "-m", "bench.fuzz", "all", "--runs",
                           str(SMOKE_RUNS)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    rows = dict(re.findall(r"^\| (\w+) \| (\d+) \|", proc.stdout, re.M))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert rows == {t: str(SMOKE_RUNS) for t in
                    ("schema", "edge", "shm", "psrec", "calib", "engine")}, proc.stdout


def test_a_flood_of_malformed_credits_is_counted_and_logged_once(caplog):
    """bench/fuzz.py's edge target made EdgeSender log every malformed credit: a peer
    could fill the log. Now the first is logged, all are counted."""
    from pipeline.transport import EdgeSender

    ctx = zmq.Context()
    tx = EdgeSender(ctx, "inproc://flood", "latest")
    peer = ctx.socket(zmq.DEALER)
    peer.connect("inproc://flood")
    try:
        for i in range(50):
            peer.send_multipart([b"C"] if i % 2 else [b"X", b"1", b"2"])
        deadline = 50
        while tx.malformed_credits < 50 and deadline:
            if tx.socket.poll(100, zmq.POLLIN):
                tx.on_readable()
            else:
                deadline -= 1
    finally:
        peer.close(0)
        tx.close()
        ctx.term()
    assert tx.malformed_credits == 50
    assert caplog.text.count("ignored a malformed credit") == 1


def test_a_person_map_with_bytes_keys_is_a_schema_error():
    """bench/fuzz.py (schema target, schema 2): a person whose field names are not all
    strings made decode raise TypeError (out of sorted()), which no stage catches."""
    from pipeline.schema import SchemaError, decode

    header = msgpack.unpackb(bytes(encode(_pose_with_one_person())[0]))
    person = header["people"][0]
    person[b"track_id"] = person.pop("track_id")
    with pytest.raises(SchemaError, match="field names must be strings"):
        decode([msgpack.packb(header)])


def _pose_with_one_person():
    from engines.runtime.skeleton import NUM_JOINTS
    from pipeline.schema import Person3D, Pose3D

    j3, j2 = np.zeros((NUM_JOINTS, 3), np.float32), np.zeros((NUM_JOINTS, 2), np.float32)
    c = np.ones(NUM_JOINTS, np.float32)
    return Pose3D(frame_id=1, t_capture_ns=2, image_size=(640, 480), engine_id="0123456789ab",
                  people=(Person3D(track_id=1, joints_3d_m=j3, root_m=j3[0].copy(),
                                   joints_2d_px=j2, confidence=c, reproj_err_px=c.copy()),))


def test_a_recorded_time_beyond_int64_is_a_recording_error(tmp_path):
    """bench/fuzz.py (psrec): an unindexed recording whose record time is 2**64 - 1 made the
    scan raise OverflowError."""
    path = tmp_path / "r.psrec"
    writer = RecordingWriter(path, "tcp://127.0.0.1:5556")
    writer.close()
    head = path.read_bytes()
    start = writer_offset(head)
    path.write_bytes(head[:start] + msgpack.packb([2**64 - 1, [b"pose3d", b"x"]]))
    with pytest.raises(RecordingError):
        with Recording(path) as rec:
            list(rec)
