"""Beyond one process per stage and one host: the reorder buffer that merges detection
workers, the graph's --only / --endpoint / --detect-workers, and then real runs of
run_pipeline.py on the street video: two invocations joined over loopback tcp (capture in
one, the rest in the other) and one with two detection workers."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import zmq

from pipeline.config import PipelineConfig, TopologyConfig
from pipeline.graph import build_graph
from pipeline.reorder import Reorder
from pipeline.schema import Pose3D, Status, decode
from pipeline.transport import open_socket
from tests.conftest import free_port

VIDEO = "data/footage/openpose/examples/media/video.avi"  # 205 frames, 50 fps


# --------------------------------------------------------------------------- reorder
def test_reorder_merges_two_in_order_inputs_without_waiting():
    r = Reorder(2, wait_s=10.0)
    r.push(0, 0, "f0", 0.0)
    assert r.pop_ready(0.0) == []  # input 1 might still hold an earlier frame
    r.push(1, 2, "f2", 0.0)
    assert r.pop_ready(0.0) == ["f0"]  # both inputs have something: f0 is the smallest
    r.push(0, 1, "f1", 0.0)
    assert r.pop_ready(0.0) == ["f1", "f2"]  # f1 is the next id, then f2 follows it
    r.push(1, 3, "f3", 0.0)
    assert r.pop_ready(0.0) == ["f3"]  # next id: no wait
    assert r.dropped_late == 0 and r.released == 4


def test_reorder_waits_a_bounded_time_then_drops_the_late_frame():
    r = Reorder(2, wait_s=0.2)
    r.push(0, 5, "f5", 0.0)
    r.push(0, 7, "f7", 0.0)  # input 1 holds 6 (say) and is slow
    assert r.pop_ready(0.1) == []
    assert r.timeout_s(0.1) == pytest.approx(0.1)
    assert r.pop_ready(0.21) == ["f5", "f7"]  # waited long enough: go on without it
    assert not r.push(1, 6, "f6", 0.3)  # it came after a later frame went: dropped
    assert r.dropped_late == 1
    r.push(1, 9, "f9", 0.3)
    r.end(0)
    assert r.pop_ready(0.3) == ["f9"]  # input 0 has ended: nothing earlier can come
    r.end(1)
    assert r.done


# --------------------------------------------------------------------------- graph
def _graph(**topology):
    return build_graph(PipelineConfig(topology=TopologyConfig(**topology)))


def test_detect_workers_share_one_input_edge_and_each_has_its_own_output():
    g = _graph(detect_workers=3)
    assert g.stage_names() == ("capture", "detect#0", "detect#1", "detect#2", "lift",
                               "smooth", "output")
    assert [e.name for e in g.outputs_of("capture")] == ["capture-detect"]
    assert [e.name for e in g.inputs_of("detect#2")] == ["capture-detect"]
    assert [e.name for e in g.inputs_of("lift")] == ["detect#0-lift", "detect#1-lift",
                                                     "detect#2-lift"]
    endpoints = g.endpoints("ipc", "/tmp/run")
    assert len(set(endpoints.values())) == len(endpoints)  # one endpoint per edge name


def test_only_needs_an_endpoint_for_each_cut_edge_and_refuses_a_silent_remote_bind():
    with pytest.raises(ValueError, match="--endpoint capture-detect="):
        _graph(only=("capture",))
    with pytest.raises(ValueError, match="--allow-remote"):
        _graph(only=("capture",), endpoints=(("capture-detect", "tcp://0.0.0.0:5560"),))
    # off loopback an edge is encrypted (tests/test_edge_security.py) or explicitly in clear
    with pytest.raises(ValueError, match="in the clear.*python -m pipeline.keys new"):
        _graph(only=("capture",), endpoints=(("capture-detect", "tcp://0.0.0.0:5560"),),
               allow_remote=True)
    g = _graph(only=("capture",), endpoints=(("capture-detect", "tcp://0.0.0.0:5560"),),
               allow_remote=True, insecure_edges=True)
    assert g.stage_names() == ("capture",)
    assert g.endpoints("ipc", "/tmp/run")["capture-detect"] == "tcp://0.0.0.0:5560"
    # the consumer side connects to a remote host: no bind, so no --allow-remote
    g = _graph(only=("detect", "lift", "smooth", "output"),
               endpoints=(("capture-detect", "tcp://10.0.0.5:5560"),), insecure_edges=True)
    assert g.stage_names() == ("detect", "lift", "smooth", "output")
    with pytest.raises(ValueError, match="no edge 'capture-lift'"):
        _graph(endpoints=(("capture-lift", "tcp://127.0.0.1:5560"),))
    with pytest.raises(ValueError, match="no stage 'detector'"):
        _graph(only=("detector",))


# --------------------------------------------------------------------------- real runs

def _collect(sub: zmq.Socket, popens: list[subprocess.Popen], deadline_s: float = 150.0):
    """Poses until the end-of-stream Status, or every process has exited and it is quiet."""
    poses: list[Pose3D] = []
    deadline = time.monotonic() + deadline_s
    quiet_since = None
    while time.monotonic() < deadline:
        if sub.poll(100, zmq.POLLIN):
            msg = decode(sub.recv_multipart()[1:])
            if isinstance(msg, Status):
                if msg.text == "end of stream":
                    return poses
                continue
            poses.append(msg)
            quiet_since = None
        elif all(p.poll() is not None for p in popens):
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 1.0:
                return poses
    pytest.fail(f"no end of stream within {deadline_s} s")


@pytest.fixture
def subscriber():
    ctx = zmq.Context()
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    sub = open_socket(ctx, zmq.SUB, connect=endpoint, rcvhwm=10_000)
    sub.setsockopt(zmq.SUBSCRIBE, b"pose3d")
    sub.setsockopt(zmq.SUBSCRIBE, b"status")
    try:
        yield endpoint, sub
    finally:
        sub.close(linger=0)
        ctx.term()


def _video(shared_dir) -> str:
    video = shared_dir / VIDEO
    if not video.is_file():
        pytest.fail(f"missing shared data file {video}: set POSESTREAM_SHARED")
    return str(video)


def test_two_runs_joined_over_tcp_deliver_poses(shared_dir, reaper, subscriber, tmp_path):
    """Host B (detect, lift, smooth, output) starts first and waits for host A's capture at
    a tcp endpoint that A binds on all interfaces (--allow-remote, warned)."""
    endpoint, sub = subscriber
    edge = f"capture-detect=tcp://0.0.0.0:{free_port()}"
    frames = 40
    log_b, log_a = tmp_path / "b.log", tmp_path / "a.log"
    with open(log_b, "w") as err:
        host_b = reaper.python(
            "run_pipeline.py", "--only", "detect,lift,smooth,output", "--endpoint",
            edge.replace("0.0.0.0", "127.0.0.1"), "--every-frame", "--publish", endpoint,
            "--detect-workers", "1",  # four stages, whatever auto would find free
            "--wait-for-subscribers", "2", stderr=err)
    with open(log_a, "w") as err:
        host_a = reaper.python(
            "run_pipeline.py", "--only", "capture", "--video", _video(shared_dir),
            "--as-fast-as-possible", "--every-frame", "--max-frames", str(frames),
            "--allow-remote", "--insecure-edges", "--endpoint", edge, stderr=err)
    poses = _collect(sub, [host_a, host_b])
    host_b.wait(timeout=30)
    host_a.wait(timeout=30)
    a, b = log_a.read_text(), log_b.read_text()
    assert host_a.returncode == 0, a[-3000:]
    assert host_b.returncode == 0, b[-3000:]
    assert re.search(r"WARNING .*binding tcp://0\.0\.0\.0:\d+: any machine", a), a[-2000:]
    assert "all 1 stages ready" in a and "all 4 stages ready" in b
    ids = [p.frame_id for p in poses]
    # lossless across the two runs: every frame, in order, with the five stamps
    assert ids == list(range(frames)), ids
    assert [s[0] for s in poses[0].stamps] == ["capture", "detect", "track", "lift", "smooth",
                                               "output"]
    assert sum(bool(p.people) for p in poses) >= 0.9 * frames
    sys.stderr.write(f"two runs over tcp: {len(ids)} of {frames} frames\n")


def test_two_detect_workers_keep_frame_order(shared_dir, reaper, subscriber, tmp_path):
    """Paced video (50 fps, latest-wins): both workers take frames, the subscriber sees
    strictly increasing frame ids; late frames are dropped and counted, not delivered."""
    endpoint, sub = subscriber
    frames = 150
    log = tmp_path / "run.log"
    with open(log, "w") as err:
        run = reaper.python(
            "run_pipeline.py", "--video", _video(shared_dir), "--max-frames", str(frames),
            "--detect-workers", "2", "--publish", endpoint, "--wait-for-subscribers", "2",
            stderr=err)
    poses = _collect(sub, [run])
    run.wait(timeout=30)
    text = log.read_text()
    assert run.returncode == 0, text[-3000:]
    ids = [p.frame_id for p in poses]
    assert all(b > a for a, b in zip(ids, ids[1:])), ids
    stats = {m.group(1): m.group(2) for m in re.finditer(
        r"INFO pipeline.supervisor: stage (\S+): (\{.*\})", text)}
    def counter(stage: str, key: str) -> int:
        return int(re.search(rf"'{key}': (\d+)", stats[stage]).group(1))

    late = counter("lift", "dropped_late")
    workers = [counter("detect#0", "processed"), counter("detect#1", "processed")]
    # each worker did part of the work (how evenly is a speed figure: `python -m
    # bench.bounds workers`); what lift received it either passed on in order or counted
    # as late; some of the 3 s of video came through
    assert min(workers) >= 1, workers
    assert counter("lift", "processed") + late == counter("lift", "received"), stats["lift"]
    assert counter("lift", "received") <= sum(workers)
    assert 2 <= len(ids) <= frames
    assert {s[0] for p in poses for s in p.stamps} >= {"detect#0", "detect#1"}
    sys.stderr.write(f"2 workers: {len(ids)} of {frames} frames published, detect "
                     f"{workers[0]}+{workers[1]}, {late} late\n")


def test_every_frame_with_two_workers_keeps_every_frame(shared_dir, reaper, tmp_path):
    """--every-frame: the workers' results all come back, in order, none dropped as late
    (lift waits for a worker warming up instead), here read back from --record."""
    from pipeline.record import Recording

    frames = 40
    out = tmp_path / "workers.psrec"
    log = tmp_path / "run.log"
    with open(log, "w") as err:
        run = reaper.python(
            "run_pipeline.py", "--video", _video(shared_dir), "--max-frames", str(frames),
            "--every-frame", "--as-fast-as-possible", "--detect-workers", "2", "--record",
            str(out), "--publish", f"tcp://127.0.0.1:{free_port()}", stderr=err)
    run.wait(timeout=150)
    text = log.read_text()
    assert run.returncode == 0, text[-3000:]
    with Recording(out) as rec:
        poses = [m.decode() for m in rec if m.topic == b"pose3d"]
    assert [p.frame_id for p in poses] == list(range(frames))
    assert "'dropped_late': 0" in text
    per_worker = [sum(1 for p in poses if p.stamps[1][0] == f"detect#{i}") for i in (0, 1)]
    assert min(per_worker) >= 1, per_worker
    sys.stderr.write(f"every frame, 2 workers: {len(poses)}/{frames}, split {per_worker}\n")
