"""The transport floor: the pipeline's topology with no work in it.

    python -m bench.transport_floor [--fps 30] [--frames 300] [--image 1280x720] [--json OUT]

Five real OS processes named like the pipeline's stages (capture -> detect -> lift -> smooth ->
output -> PUB) and a subscriber, joined by the pipeline's own edges (`pipeline.transport`:
credit-based ROUTER/DEALER, newest wins, on ipc sockets in a private directory) and the
output's XPUB. Each process does what the stage runner does around a stage and nothing else:
receive, decode, stamp, encode a message of the type and size the real stage sends
(`Frame` of the video's size, `Keypoints2D`, `Pose3D`), send. So the figures are the least
the pipeline can cost on this machine: per hop, and from capture to subscriber.

Paced (`--fps 30`, the camera case: small jobs slow down after idle gaps, so pacing matters)
and back to back (`--fps 0`: the next frame leaves as soon as the previous one was taken).
Also measured in-process: what `pipeline.schema` encode + decode costs per message type, and
plain msgpack of a pose-sized map.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing as mp
import os
import shutil
import socket
import tempfile
import time
from typing import Any

import msgpack
import numpy as np
import zmq

from bench import report
from engines.runtime.skeleton import NUM_JOINTS
from pipeline.schema import (Frame, Keypoints2D, Person2D, Person3D, Pose3D, decode, encode,
                             with_stamp)
from pipeline.shm import FrameRing
from pipeline.transport import EdgeReceiver, EdgeSender, now_ns, open_socket, poll_once

log = logging.getLogger(__name__)

#: the stages of the null chain, in path order (the pipeline's names, so the breakdown of
#: both has the same keys)
CHAIN: tuple[str, ...] = ("capture", "detect", "lift", "smooth", "output")
TOPIC = b"pose3d"
POLL_MS = 100


# --------------------------------------------------------------------------- messages
def template(kind: str, image_wh: tuple[int, int] = (1280, 720)) -> Any:
    """A message of the type and size a stage sends: kind "frame", "keypoints" or "pose"."""
    rng = np.random.default_rng(0)
    if kind == "frame":
        w, h = image_wh
        return Frame(frame_id=0, t_capture_ns=0, image=rng.integers(0, 255, (h, w, 3), np.uint8),
                     source="floor")
    joints_2d = rng.uniform(0, 640, (NUM_JOINTS, 2)).astype(np.float32)
    conf = rng.uniform(0, 1, NUM_JOINTS).astype(np.float32)
    if kind == "keypoints":
        return Keypoints2D(frame_id=0, t_capture_ns=0, image_size=image_wh, people=(
            Person2D(track_id=1, joints_2d_px=joints_2d, confidence=conf),))
    if kind == "pose":
        joints_3d = rng.normal(0, 0.5, (NUM_JOINTS, 3)).astype(np.float32)
        return Pose3D(frame_id=0, t_capture_ns=0, image_size=image_wh, people=(Person3D(
            track_id=1, joints_3d_m=joints_3d, root_m=joints_3d[0].copy(),
            joints_2d_px=joints_2d, confidence=conf,
            reproj_err_px=np.abs(joints_2d[:, 0] / 100)),), engine_id="0123456789ab")
    raise ValueError(f"kind must be frame, keypoints or pose, got {kind!r}")


#: what each stage of the chain sends
OUTPUT_KIND: dict[str, str] = {
    "capture": "frame", "detect": "keypoints", "lift": "pose", "smooth": "pose", "output": "pose",
}


# --------------------------------------------------------------------------- child processes
def _source(endpoint: str, image_wh: tuple[int, int], fps: float, frames: int,
            ready: Any, go: Any, shm_dir: str | None = None) -> None:
    """capture: frames paced at `fps` (0: back to back), then end of stream. shm_dir: the
    frames go through a shared-memory ring there (as the pipeline's private ipc edges)."""
    ctx = zmq.Context()
    ring = FrameRing(shm_dir, "capture") if shm_dir else None
    tx = EdgeSender(ctx, endpoint, "latest", ring=ring)
    try:
        tmpl = template("frame", image_wh)
        poller = zmq.Poller()
        poller.register(tx.socket, zmq.POLLIN)
        ready.set()
        go.wait()
        period_ns = int(1e9 / fps) if fps > 0 else 0
        t0 = now_ns()
        sent = 0
        while sent < frames:
            wait_ns = t0 + sent * period_ns - now_ns() if period_ns else 0
            if wait_ns > 0 or (not period_ns and tx.backlog):
                timeout_ms = -(-wait_ns // 1_000_000) if wait_ns > 0 else POLL_MS
                if tx.socket in poll_once(poller, timeout_ms):
                    tx.on_readable()
                continue
            t_capture = now_ns()
            msg = dataclasses.replace(tmpl, frame_id=sent, t_capture_ns=t_capture)
            msg = with_stamp(msg, "capture", t_capture, now_ns())
            tx.offer(encode(msg))
            sent += 1
        tx.end()
        deadline = time.monotonic() + 5.0
        while not tx.finished and time.monotonic() < deadline:
            if tx.socket in poll_once(poller, POLL_MS):
                tx.on_readable()
    finally:
        tx.close()
        ctx.term()


def _relay(name: str, in_endpoint: str, out_endpoint: str, image_wh: tuple[int, int],
           ready: Any, counters: Any, shm_dir: str | None = None) -> None:
    """detect / lift / smooth / output with no work: receive, decode, stamp, encode, send.

    `output` publishes on an XPUB (as stages/output.py does) and says ready only once the
    subscriber's subscription has arrived.
    """
    ctx = zmq.Context()
    rx = EdgeReceiver(ctx, in_endpoint, ring_dir=shm_dir)
    is_sink = name == "output"
    tx = None
    pub = None
    try:
        tmpl = template(OUTPUT_KIND[name], image_wh)
        poller = zmq.Poller()
        poller.register(rx.socket, zmq.POLLIN)
        if is_sink:
            pub = open_socket(ctx, zmq.XPUB, bind=out_endpoint, sndhwm=64, rcvhwm=64)
            if not pub.poll(10_000, zmq.POLLIN):
                raise RuntimeError("floor: no subscriber within 10 s")
            pub.recv()
        else:
            ring = FrameRing(shm_dir, name) if shm_dir else None
            tx = EdgeSender(ctx, out_endpoint, "latest", ring=ring)
            poller.register(tx.socket, zmq.POLLIN)
        ready.set()
        while True:
            if not rx.waiting:
                rx.request()
            got_socks = poll_once(poller, POLL_MS)
            if tx is not None and tx.socket in got_socks:
                tx.on_readable()
            if rx.socket in got_socks:
                got = rx.receive()
                t_in = now_ns()
                if got is EdgeReceiver.END:
                    break
                if got is not None:
                    msg = decode(got)
                    out = dataclasses.replace(
                        tmpl, frame_id=msg.frame_id, t_capture_ns=msg.t_capture_ns,
                        stamps=msg.stamps + ((name, t_in, now_ns()),),
                    )
                    if is_sink:
                        pub.send_multipart([TOPIC, *encode(out)], copy=True)
                    else:
                        tx.offer(encode(out))
            rx.tick()
        if tx is not None:
            tx.end()
            deadline = time.monotonic() + 5.0
            while not tx.finished and time.monotonic() < deadline:
                if tx.socket in poll_once(poller, POLL_MS):
                    tx.on_readable()
        counters[name] = {"dropped_out": tx.dropped if tx else 0, "dropped_in": rx.dropped}
    finally:
        rx.close()
        if tx is not None:
            tx.close()
        if pub is not None:
            pub.close(linger=500)
        ctx.term()


# --------------------------------------------------------------------------- the run
def free_tcp_ports(n: int) -> list[int]:
    """n loopback TCP ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run_chain(fps: float = 30.0, frames: int = 300, warmup: int = 30,
              image_wh: tuple[int, int] = (1280, 720), transport: str = "ipc",
              chain: tuple[str, ...] = CHAIN, shared_memory: bool = True) -> dict[str, Any]:
    """Run the null chain once; return report.breakdown(...) plus throughput, drops, CPU
    and the raw `records` (report.merge_stamped joins several runs).

    fps: pacing of the source, 0 for back to back. frames: how many the source sends;
    the first `warmup` received are left out of the figures. transport: "ipc" or "tcp" for
    the internal edges (the pipeline's TransportConfig.kind); the published stream is always
    loopback tcp, as OutputConfig's. chain: the stages, CHAIN or a shorter path that starts
    with "capture" and ends with "output" (e.g. without "smooth", as run_pipeline --no-smooth).
    shared_memory: with ipc, large parts through shared-memory rings (TransportConfig's).
    """
    run_dir = tempfile.mkdtemp(prefix="posestream-floor-")
    shm_dir = None
    if transport == "ipc" and shared_memory:
        shm_dir = tempfile.mkdtemp(prefix="posestream-floor-",
                                   dir="/dev/shm" if os.path.isdir("/dev/shm") else run_dir)
    if chain[0] != "capture" or chain[-1] != "output" or not set(chain) <= set(CHAIN):
        raise ValueError(f"chain must run capture -> ... -> output through {CHAIN}, got {chain}")
    ports = free_tcp_ports(len(chain))
    if transport == "ipc":
        eps = [f"ipc://{run_dir}/e{i}.sock" for i in range(len(chain) - 1)]
    else:
        eps = [f"tcp://127.0.0.1:{p}" for p in ports[:-1]]
    eps.append(f"tcp://127.0.0.1:{ports[-1]}")  # the public stream: loopback tcp, as the pipeline
    spawn = mp.get_context("spawn")
    manager_counters = spawn.Manager()
    counters = manager_counters.dict()
    go = spawn.Event()
    readies = {name: spawn.Event() for name in chain}
    procs: dict[str, Any] = {
        "capture": spawn.Process(target=_source, name="floor-capture",
                                 args=(eps[0], image_wh, fps, frames, readies["capture"], go,
                                       shm_dir))
    }
    for i, name in enumerate(chain[1:], start=1):
        procs[name] = spawn.Process(target=_relay, name=f"floor-{name}",
                                    args=(name, eps[i - 1], eps[i], image_wh, readies[name],
                                          counters, shm_dir))
    ctx = zmq.Context()
    sub = open_socket(ctx, zmq.SUB, connect=eps[-1], rcvhwm=1000)
    sub.setsockopt(zmq.SUBSCRIBE, TOPIC)
    records: list[tuple[int, int, tuple, int]] = []
    try:
        for p in procs.values():
            p.start()
        deadline = time.monotonic() + 60.0
        for name, ev in readies.items():
            if not ev.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"floor: process {name} did not get ready within 60 s")
        cpu = report.CpuMeter({name: p.pid for name, p in procs.items()})
        cpu.start()
        go.set()
        idle_s = 2.0 + (1.0 / fps if fps > 0 else 0)
        while True:
            if not sub.poll(int(idle_s * 1000), zmq.POLLIN):
                break
            parts = sub.recv_multipart(copy=False)
            t_recv = now_ns()
            msg = decode(parts[1:])
            records.append((msg.frame_id, msg.t_capture_ns, msg.stamps, t_recv))
            if msg.frame_id >= frames - 1:
                break
        cpu_percent = cpu.stop()
        for p in procs.values():
            p.join(timeout=5.0)
        drops = dict(counters)
    finally:
        sub.close(linger=0)
        ctx.term()
        for p in procs.values():
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
        manager_counters.shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)
        if shm_dir is not None:
            shutil.rmtree(shm_dir, ignore_errors=True)
    measured = [r for r in records if r[0] >= warmup]
    out = report.breakdown(measured, 1000.0 / fps if fps > 0 else None, frames - 1)
    out.update(
        fps_in=fps,
        frames_sent=frames,
        frames_received=len(records),
        warmup=warmup,
        throughput_fps=report.throughput_fps([r[3] for r in measured]),
        drops=drops,
        cpu_percent=cpu_percent,
        image_wh=list(image_wh),
        transport=transport,
        shared_memory=shm_dir is not None,
        records=measured,  # raw (frame_id, t_capture_ns, stamps, t_receive_ns), for merging
    )
    return out


def _raw_receiver(endpoint: str, n: int, ready: Any, results: Any) -> None:
    """Receiving end of raw_hop: PULL, stamp each arrival, send the latencies back."""
    ctx = zmq.Context()
    sock = open_socket(ctx, zmq.PULL, bind=endpoint, rcvhwm=1000)
    lat_ms = []
    try:
        ready.set()
        while len(lat_ms) < n:
            if not sock.poll(5000, zmq.POLLIN):
                break
            parts = sock.recv_multipart(copy=False)
            t_recv = now_ns()
            lat_ms.append((t_recv - int.from_bytes(parts[0].bytes, "little")) / 1e6)
        results.put(lat_ms)
    finally:
        sock.close(linger=0)
        ctx.term()


def raw_hop(nbytes: int, fps: float = 30.0, n: int = 150, warmup: int = 15,
            transport: str = "ipc") -> dict[str, float]:
    """One plain ZeroMQ hop between two processes (PUSH -> PULL, no credits, no schema, no
    copy of the payload on send): the least any one-way hop costs here, paced at `fps` > 0
    (without pacing PUSH queues, and the figure is the queue's). ms summary."""
    if fps <= 0:
        raise ValueError("raw_hop needs a pace: fps > 0")
    spawn = mp.get_context("spawn")
    run_dir = tempfile.mkdtemp(prefix="posestream-hop-")
    endpoint = (f"ipc://{run_dir}/hop.sock" if transport == "ipc"
                else f"tcp://127.0.0.1:{free_tcp_ports(1)[0]}")
    ready, results = spawn.Event(), spawn.Queue()
    proc = spawn.Process(target=_raw_receiver, args=(endpoint, n, ready, results))
    ctx = zmq.Context()
    sock = None
    try:
        proc.start()
        if not ready.wait(30):
            raise RuntimeError("raw hop receiver did not start")
        sock = open_socket(ctx, zmq.PUSH, connect=endpoint, sndhwm=1000)
        payload = np.random.default_rng(0).integers(0, 255, nbytes, np.uint8)
        period_ns = int(1e9 / fps) if fps > 0 else 0
        t0 = now_ns()
        for i in range(n):
            wait_ns = t0 + i * period_ns - now_ns()
            if wait_ns > 0:
                time.sleep(wait_ns / 1e9)
            sock.send_multipart([now_ns().to_bytes(8, "little"), payload], copy=nbytes < 65536)
        lat_ms = results.get(timeout=30)
        proc.join(timeout=5)
    finally:
        if sock is not None:
            sock.close(linger=0)
        ctx.term()
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=2)
        shutil.rmtree(run_dir, ignore_errors=True)
    return report.summarize(lat_ms[warmup:])


def codec_costs(image_wh: tuple[int, int] = (1280, 720), repeat: int = 2000) -> dict[str, Any]:
    """In-process cost, microseconds per call (p50 / p99): schema encode + decode per message
    type, with_stamp + dataclasses.replace as the runner does, and plain msgpack of a
    pose-sized map (the least any msgpack wire format can cost)."""
    out: dict[str, Any] = {}
    for kind in ("frame", "keypoints", "pose"):
        msg = template(kind, image_wh)
        samples = []
        for _ in range(repeat if kind != "frame" else repeat // 4):
            t0 = time.perf_counter_ns()
            frames = encode(msg)
            decode([bytes(f) if kind != "frame" else f for f in frames])
            samples.append((time.perf_counter_ns() - t0) / 1e3)
        out[f"schema_{kind}_encode_decode_us"] = _us(samples)
    pose = template("pose", image_wh)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        dataclasses.replace(pose, frame_id=1, stamps=pose.stamps + (("x", 1, 2),))
        samples.append((time.perf_counter_ns() - t0) / 1e3)
    out["replace_stamp_pose_us"] = _us(samples)
    def _plain(value):
        if isinstance(value, np.ndarray):
            return value.tobytes()
        if isinstance(value, dict):
            return {k: _plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_plain(v) for v in value]
        return value

    plain = _plain(dataclasses.asdict(pose))
    plain["stamps"] = [["capture", 1, 2], ["detect", 3, 4], ["lift", 5, 6]]
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        msgpack.unpackb(msgpack.packb(plain, use_bin_type=True), raw=False)
        samples.append((time.perf_counter_ns() - t0) / 1e3)
    out["msgpack_pose_pack_unpack_us"] = _us(samples)
    return out


def _us(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples[len(samples) // 10:])  # first tenth: warm-up
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


# --------------------------------------------------------------------------- CLI
def floor_rows(label: str, floor: dict[str, Any]) -> list[list[Any]]:
    """Table rows (label, n, p50, p95, p99) for the hops and the whole chain of one run."""
    rows = [report.summary_row(f"{label} hop {k}", v) for k, v in floor["hops"].items()]
    rows.append(report.summary_row(f"{label} capture->subscriber", floor["e2e"]))
    return rows


def parse_wh(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.transport_floor",
        description="The least the pipeline's transport costs here: its topology with no work.",
    )
    parser.add_argument("--fps", type=float, nargs="+", default=[30.0, 0.0],
                        help="source rates to measure; 0 = back to back (default 30 0)")
    parser.add_argument("--frames", type=int, default=300, help="frames per run (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="frames left out (default 30)")
    parser.add_argument("--image", type=parse_wh, default=(1280, 720),
                        help="frame size WxH (default 1280x720, the sample video)")
    parser.add_argument("--transport", choices=("ipc", "tcp"), default="ipc")
    parser.add_argument("--no-smooth", action="store_true",
                        help="leave the smooth process out (as run_pipeline.py --no-smooth)")
    parser.add_argument("--no-shm", action="store_true",
                        help="frames through the ipc sockets, not shared memory "
                             "(TransportConfig.shared_memory=False)")
    parser.add_argument("--json", metavar="OUT", help="write every figure as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, Any] = {"machine": report.machine_info(), "runs": {}}
    rows = []
    for fps in args.fps:
        label = f"{fps:g} fps" if fps > 0 else "back to back"
        chain = tuple(c for c in CHAIN if c != "smooth") if args.no_smooth else CHAIN
        floor = run_chain(fps, args.frames, args.warmup, args.image, args.transport, chain,
                          shared_memory=not args.no_shm)
        results["runs"][label] = floor
        rows += floor_rows(label, floor)
    pose_bytes = len(encode(template("pose", args.image))[0])
    frame_bytes = args.image[0] * args.image[1] * 3
    results["raw_hops"] = {}
    for fps in (f for f in args.fps if f > 0):  # back to back, PUSH only measures its queue
        label = f"{fps:g} fps"
        for what, nbytes in (("pose", pose_bytes), ("frame", frame_bytes)):
            key = f"{label} raw PUSH/PULL hop, {what} ({nbytes} B)"
            results["raw_hops"][key] = raw_hop(nbytes, fps, transport=args.transport)
            rows.append(report.summary_row(key, results["raw_hops"][key]))
    results["codec"] = codec_costs(args.image)
    print(f"transport floor: {args.transport}, frame {args.image[0]}x{args.image[1]}, "
          f"load {results['machine']['loadavg']}")
    print(report.table(["one-way latency, ms", "n", "p50", "p95", "p99"], rows, 3))
    print()
    print(report.table(["in-process, us", "p50", "p99"],
                       [[k, v["p50"], v["p99"]] for k, v in results["codec"].items()], 1))
    if args.json:
        report.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
