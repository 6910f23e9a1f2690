"""pipeline.shm and the "S" edge messages: large parts through a shared-memory ring.

Real files in a real tmpfs (or tmp) directory, real ZeroMQ sockets over ipc, real frames."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import msgpack
import numpy as np
import pytest
import zmq

from pipeline.schema import Frame, decode, encode
from pipeline.shm import MIN_PART_BYTES, RING_SLOTS, FrameRing, RingError, RingReader
from pipeline.transport import EdgeReceiver, EdgeSender


def _frame(frame_id: int, h: int = 720, w: int = 1280) -> Frame:
    rng = np.random.default_rng(frame_id)
    return Frame(frame_id=frame_id, t_capture_ns=1_000 + frame_id,
                 image=rng.integers(0, 256, (h, w, 3), np.uint8), source="test")


@pytest.fixture
def ring_dir(tmp_path):
    base = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)
    d = tempfile.mkdtemp(prefix="posestream-test-", dir=base)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_frame_goes_through_the_ring_bit_exact(ring_dir):
    ring, reader = FrameRing(ring_dir, "capture"), RingReader(ring_dir)
    try:
        msg = _frame(3)
        parts = encode(msg)
        descriptor, slot, light = ring.put(parts)
        assert sum(len(memoryview(p)) for p in light) < 4096  # only the header stays
        assert len(descriptor) < 200
        back = decode(reader.read(descriptor, light))
        assert back.frame_id == 3 and np.array_equal(back.image, msg.image)
        assert os.listdir(ring_dir) == [ring.name]
    finally:
        ring.close()
        reader.close()
    assert os.listdir(ring_dir) == []  # close() removes the file


def test_small_messages_stay_in_the_socket(ring_dir):
    ring = FrameRing(ring_dir, "capture")
    small = _frame(1, h=32, w=32)
    assert len(small.image.tobytes()) < MIN_PART_BYTES
    assert ring.put(encode(small)) is None
    ring.close()


def test_a_rewritten_slot_is_dropped_not_decoded(ring_dir):
    ring, reader = FrameRing(ring_dir, "capture"), RingReader(ring_dir)
    try:
        first = ring.put(encode(_frame(0)))
        for i in range(1, RING_SLOTS + 1):  # every slot is written again
            ring.put(encode(_frame(i)))
        assert reader.read(first[0], first[2]) is None
        latest = ring.put(encode(_frame(99)))
        assert decode(reader.read(latest[0], latest[2])).frame_id == 99
    finally:
        ring.close()
        reader.close()


def test_queued_slots_are_never_reused(ring_dir):
    ring = FrameRing(ring_dir, "capture")
    try:
        held = set()
        for i in range(RING_SLOTS):
            _, slot, _ = ring.put(encode(_frame(i)), held)
            assert slot not in held
            held.add(slot)
        assert ring.put(encode(_frame(50)), held) is None  # every slot queued: use the socket
    finally:
        ring.close()


def test_a_larger_frame_grows_the_ring_into_a_new_file(ring_dir):
    ring, reader = FrameRing(ring_dir, "capture"), RingReader(ring_dir)
    try:
        d1, _, p1 = ring.put(encode(_frame(1, 480, 640)))
        name1 = ring.name
        d2, _, p2 = ring.put(encode(_frame(2, 1080, 1920)))
        assert ring.name != name1 and os.listdir(ring_dir) == [ring.name]
        assert decode(reader.read(d2, p2)).image.shape == (1080, 1920, 3)
        with pytest.raises(RingError):  # the old file is gone
            reader.read(d1, p1)
    finally:
        ring.close()
        reader.close()


@pytest.mark.parametrize("descriptor", [
    msgpack.packb({"ring": "../../etc/passwd", "slot": 0, "seq": 1, "cap": 8, "parts": []}),
    msgpack.packb({"ring": "/etc/passwd", "slot": 0, "seq": 1, "cap": 8, "parts": []}),
    msgpack.packb({"ring": "nothere.ring", "slot": 0, "seq": 1, "cap": 8, "parts": []}),
    msgpack.packb({"ring": "x.ring", "slot": -1, "seq": 1, "cap": 8, "parts": []}),
    msgpack.packb([1, 2, 3]),
    b"\xc1\xc1",
    b"x" * 5000,
])
def test_bad_descriptors_raise_ring_error(ring_dir, descriptor):
    reader = RingReader(ring_dir)
    with pytest.raises(RingError):
        reader.read(descriptor, [b"header", b""])
    reader.close()


def test_a_part_outside_the_slot_is_refused(ring_dir):
    ring, reader = FrameRing(ring_dir, "capture"), RingReader(ring_dir)
    try:
        d, _, parts = ring.put(encode(_frame(1)))
        spec = msgpack.unpackb(d)
        spec["parts"] = [[1, 0, spec["cap"] + 1]]
        with pytest.raises(RingError):
            reader.read(msgpack.packb(spec), parts)
        spec["parts"] = [[7, 0, 10]]  # no such part in the message
        with pytest.raises(RingError):
            reader.read(msgpack.packb(spec), parts)
    finally:
        ring.close()
        reader.close()


def test_stale_rings_of_dead_producers_are_removed(ring_dir):
    dead = os.path.join(ring_dir, "capture-999999999-1.ring")
    other = os.path.join(ring_dir, "detect-999999999-1.ring")
    for path in (dead, other):
        open(path, "wb").close()
    FrameRing(ring_dir, "capture").close()
    assert not os.path.exists(dead) and os.path.exists(other)


def test_edge_over_ipc_with_the_ring(ring_dir, tmp_path):
    """A real ROUTER/DEALER edge: 20 frames offered one per credit arrive bit-exact, all
    through the ring; a receiver without the run's ring directory rejects "S" messages."""
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/edge.sock"
    tx = EdgeSender(ctx, endpoint, "latest", ring=FrameRing(ring_dir, "capture"))
    rx = EdgeReceiver(ctx, endpoint, ring_dir=ring_dir)
    bad: list[str] = []
    blind = EdgeReceiver(ctx, endpoint, on_malformed=bad.append)  # no ring_dir
    try:
        assert rx.wait_connected(5) and blind.wait_connected(5)
        poller = zmq.Poller()
        poller.register(tx.socket, zmq.POLLIN)
        got = []
        for i in range(20):
            rx.request()
            while not tx._waiting:  # the credit reaches the producer
                poller.poll(1000)
                tx.on_readable()
            tx.offer(encode(_frame(i, 480, 640)))
            assert rx.socket.poll(5000, zmq.POLLIN)
            msg = decode(rx.receive())
            assert not msg.image.flags.writeable  # a view of the ring, not a copy
            if i % 7 == 0:
                assert np.array_equal(msg.image, _frame(i, 480, 640).image)
            got.append(msg.frame_id)
        assert got == list(range(20))
        assert tx.sent == tx.sent_shm == 20 and rx.torn == 0
        # the consumer holds frame 19 (no new credit): 3 x RING_SLOTS newer frames offered
        # meanwhile never touch its slot (latest wins: each replaces the queued one)
        for i in range(100, 100 + 3 * RING_SLOTS):
            tx.offer(encode(_frame(i, 480, 640)))
        assert np.array_equal(msg.image, _frame(19, 480, 640).image)
        rx.request()  # done with it: the queued frame comes, its slot may be reused
        deadline = time.monotonic() + 5.0
        while not rx.socket.poll(50, zmq.POLLIN):
            tx.on_readable()  # takes the credit, sends the queued frame
            assert time.monotonic() < deadline, "the queued frame never came"
        last = decode(rx.receive())
        assert last.frame_id == 100 + 3 * RING_SLOTS - 1
        assert np.array_equal(last.image, _frame(last.frame_id, 480, 640).image)
        del msg, last
        blind.request()
        while not tx._waiting:
            poller.poll(1000)
            tx.on_readable()
        tx.offer(encode(_frame(21, 480, 640)))
        assert blind.socket.poll(5000, zmq.POLLIN)
        assert blind.receive() is None and len(bad) == 1 and "shared-memory" in bad[0]
    finally:
        for end in (tx, rx, blind):
            end.close()
        ctx.term()
    assert os.listdir(ring_dir) == []


def test_a_new_run_removes_the_shm_dirs_of_runs_whose_supervisor_is_gone(tmp_path):
    from pipeline.supervisor import SHM_DIR_PREFIX, _remove_orphaned_shm_dirs

    dead = tmp_path / f"{SHM_DIR_PREFIX}999999999-abc"
    alive = tmp_path / f"{SHM_DIR_PREFIX}{os.getppid()}-def"  # a live process: kept
    other = tmp_path / "posestream-bench-xyz"  # not a run directory: kept
    for d in (dead, alive, other):
        d.mkdir()
        (d / "capture-1-1.ring").write_bytes(b"\0" * 4096)
    _remove_orphaned_shm_dirs(str(tmp_path))
    assert not dead.exists() and alive.exists() and other.exists()
