"""The Python client's "latest only" mode against a real publisher process that outpaces a
slow reader: the reader always gets the newest pose waiting, never an older one after a
newer, every Status survives, other topics are filtered out, and the poses passed over are
counted."""

from __future__ import annotations

import sys
import time

from pipeline.schema import Pose3D, Status
from pipeline.subscribe import subscribe

#: the publisher: an XPUB that waits for SUBS subscriptions, then sends COUNT poses on
#: "pose3d" (one "noise" message on another topic between them) every INTERVAL s, then a
#: Status "end of stream"; prints "done LAST_ID" and stays up until stdin closes.
PUBLISHER = r"""
import sys, time
import numpy as np, zmq
from pipeline.schema import Person3D, Pose3D, Status, encode
from pipeline.transport import open_socket
subs, count, interval = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
ctx = zmq.Context()
pub = open_socket(ctx, zmq.XPUB, bind="tcp://127.0.0.1:0", sndhwm=100_000)
pub.setsockopt(zmq.XPUB_VERBOSER, 1)
print(pub.getsockopt(zmq.LAST_ENDPOINT).decode(), flush=True)
seen = 0
while seen < subs:
    if pub.poll(30_000, zmq.POLLIN) and pub.recv()[:1] == b"\x01":
        seen += 1
z = np.zeros((17, 3), np.float32)
for i in range(count):
    pose = Pose3D(frame_id=i, t_capture_ns=time.monotonic_ns(), image_size=(640, 480),
                  people=(Person3D(track_id=1, joints_3d_m=z, root_m=np.zeros(3, np.float32),
                                   joints_2d_px=np.zeros((17, 2), np.float32),
                                   confidence=np.ones(17, np.float32),
                                   reproj_err_px=np.zeros(17, np.float32)),),
                  engine_id="0123456789ab")
    pub.send_multipart([b"pose3d", *encode(pose)])
    pub.send_multipart([b"noise", b"not a message"])
    if interval:
        time.sleep(interval)
pub.send_multipart([b"status", *encode(Status(kind="info", text="end of stream",
                                              t_ns=time.monotonic_ns()))])
print(f"done {count - 1}", flush=True)
sys.stdin.read()
pub.close(linger=0)
ctx.term()
"""


def _publisher(reaper, subs: int, count: int, interval_s: float):
    import subprocess

    popen = reaper.python("-c", PUBLISHER, str(subs), str(count), str(interval_s),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    endpoint = popen.stdout.readline().strip()
    assert endpoint.startswith("tcp://127.0.0.1:"), endpoint
    return popen, endpoint


def _until_status(stream) -> list:
    """Every message up to and including the first Status; then the stream is closed."""
    out = []
    for msg in stream:
        out.append(msg)
        if isinstance(msg, Status):
            break
    stream.close()
    return out


def test_latest_only_jumps_to_the_newest_after_a_burst(reaper):
    count = 200
    popen, endpoint = _publisher(reaper, subs=2 * 2, count=count, interval_s=0.0)
    latest = subscribe(endpoint, timeout_s=20, include_status=True, rcvhwm=100_000,
                       latest_only=True)
    plain = subscribe(endpoint, timeout_s=20, include_status=True, rcvhwm=100_000)
    # both subscribed (the publisher waited for them) and the whole burst sent before
    # either reads anything: the reader fell behind by `count` poses
    assert popen.stdout.readline().strip() == f"done {count - 1}"
    got, every = _until_status(latest), _until_status(plain)
    assert [m.frame_id for m in every[:-1]] == list(range(count))
    assert plain.skipped == 0
    poses = [m for m in got if isinstance(m, Pose3D)]
    ids = [p.frame_id for p in poses]
    assert ids[-1] == count - 1, ids
    assert ids == sorted(set(ids))  # never an older pose after a newer one
    assert len(poses) + latest.skipped == count  # every pose either shown or counted
    assert latest.skipped >= count // 2, (len(poses), latest.skipped)
    statuses = [m for m in got if isinstance(m, Status)]
    assert [s.text for s in statuses] == ["end of stream"]
    assert got[-1] is statuses[0]  # the status came after the last pose, and stays there
    assert latest.received == count + 1  # the "noise" topic was never received
    popen.stdin.close()


def test_a_slow_reader_keeps_up_with_a_faster_publisher(reaper):
    reader_sleep_s = 0.05
    count = 400
    popen, endpoint = _publisher(reaper, subs=1, count=count, interval_s=0.002)
    stream = subscribe(endpoint, timeout_s=20, rcvhwm=100_000, latest_only=True)
    ids = []
    for pose in stream:
        ids.append(pose.frame_id)
        if pose.frame_id == count - 1:
            break
        time.sleep(reader_sleep_s)  # the reader's own work: slower than the stream
    stream.close()
    assert ids and ids[-1] == count - 1, ids
    assert all(b > a for a, b in zip(ids, ids[1:])), ids
    assert len(ids) + stream.skipped == count
    # a reader this slow sees a fraction of the stream; without latest-only it would
    # still be reading old poses when the publisher is done
    assert stream.skipped > len(ids), (len(ids), stream.skipped)
    sys.stderr.write(f"slow reader: {len(ids)} poses shown, {stream.skipped} skipped\n")
    popen.stdin.close()
