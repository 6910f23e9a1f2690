"""What CurveZMQ costs on an internal edge: one tcp hop, plain against encrypted.

    python -m bench.edge_crypto [--messages 300] [--period-ms 20]

A producer process (pipeline.transport.EdgeSender, a ROUTER bound on 127.0.0.1, with the
CURVE server keys and ZAP authenticator that run_pipeline.py gives an edge bound off
loopback) and this process as its consumer (EdgeReceiver with client keys), one message in
flight at a time, a new one every --period-ms (so the hop is measured, not a queue).
Latency: from just before the producer encodes and offers the message to just after the
consumer has decoded it (one CLOCK_MONOTONIC on one host). Messages: a 1280x720 Frame
(2.7 MB, what capture sends detection) and a Pose3D of one person. Prints p50/p95/p99 per
message kind, plain and encrypted, and the difference of the medians.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time

import numpy as np
import zmq

from engines.runtime.skeleton import NUM_JOINTS
from pipeline import schema
from pipeline.schema import Frame, decode, encode
from pipeline.security import (
    authorize,
    curve_client_options,
    edge_socket_options,
    generate_keypair,
    load_keypair,
    load_public_key,
    start_authenticator,
)
from pipeline.transport import EdgeReceiver, EdgeSender


def make_message(kind: str, frame_id: int, image: np.ndarray | None):
    now = time.monotonic_ns()
    if kind == "frame":
        return Frame(frame_id=frame_id, t_capture_ns=now, image=image, source="bench")
    j3 = np.zeros((NUM_JOINTS, 3), np.float32)
    j2 = np.zeros((NUM_JOINTS, 2), np.float32)
    c = np.ones(NUM_JOINTS, np.float32)
    if hasattr(schema, "Person3D"):  # schema 2: people
        person = schema.Person3D(track_id=1, joints_3d_m=j3, root_m=j3[0].copy(),
                                 joints_2d_px=j2, confidence=c, reproj_err_px=c.copy())
        return schema.Pose3D(frame_id=frame_id, t_capture_ns=now, image_size=(1280, 720),
                             people=(person,), engine_id="bench")
    return schema.Pose3D(frame_id=frame_id, t_capture_ns=now, image_size=(1280, 720),
                         person_present=True, joints_3d_m=j3, root_m=j3[0].copy(),
                         joints_2d_px=j2, confidence=c, reproj_err_px=c.copy(),
                         engine_id="bench")


def producer(endpoint: str, kind: str, count: int, period_s: float, keydir: str | None,
             ready) -> None:
    ctx = zmq.Context()
    zap = None
    options = None
    if keydir is not None:
        zap = start_authenticator(ctx, f"{keydir}/authorized")
        options = edge_socket_options(True, f"{keydir}/a/a.key_secret")
    tx = EdgeSender(ctx, endpoint, "lossless", options=options)
    image = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), np.uint8)
    ready.set()
    poller = zmq.Poller()
    poller.register(tx.socket, zmq.POLLIN)
    sent, next_due = 0, time.monotonic()
    try:
        while sent < count or not tx.finished:
            if sent < count and tx.backlog == 0 and time.monotonic() >= next_due:
                tx.offer(encode(make_message(kind, sent, image)), sent)
                sent += 1
                next_due = time.monotonic() + period_s
                if sent == count:
                    tx.end()
            if poller.poll(1):
                tx.on_readable()
    finally:
        tx.close()
        if zap is not None:
            zap.stop()
        ctx.term()


def measure(kind: str, curve: bool, count: int, period_s: float, keydir: str) -> np.ndarray:
    port = _free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    ready = mp.get_context("spawn").Event()
    proc = mp.get_context("spawn").Process(
        target=producer, args=(endpoint, kind, count, period_s, keydir if curve else None,
                               ready))
    proc.start()
    ready.wait(30)
    ctx = zmq.Context()
    options = curve_client_options(load_keypair(f"{keydir}/b/b.key_secret"),
                                   load_public_key(f"{keydir}/a/a.key")) if curve else None
    rx = EdgeReceiver(ctx, endpoint, options=options)
    latencies = []
    try:
        rx.wait_connected(30)
        while True:
            rx.request()
            if rx.socket.poll(100, zmq.POLLIN):
                got = rx.receive()
                if got is EdgeReceiver.END:
                    break
                if got is not None:
                    msg = decode(got)
                    latencies.append((time.monotonic_ns() - msg.t_capture_ns) / 1e6)
            rx.tick()
    finally:
        rx.close()
        ctx.term()
        proc.join(10)
    return np.asarray(latencies[10:])  # skip the warm-up


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=300)
    p.add_argument("--period-ms", type=float, default=20.0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as keydir:
        generate_keypair(f"{keydir}/a", "a")
        generate_keypair(f"{keydir}/b", "b")
        authorize(f"{keydir}/b/b.key", f"{keydir}/authorized")
        print(f"one tcp hop on 127.0.0.1, {args.messages} messages each (first 10 skipped), "
              f"one every {args.period_ms:g} ms; encode + hop + decode, ms")
        print("| message | edge | p50 | p95 | p99 |")
        print("|---|---|---|---|---|")
        medians = {}
        for kind, label in (("frame", "Frame 1280x720 (2.7 MB)"), ("pose", "Pose3D, 1 person")):
            for curve in (False, True):
                lat = measure(kind, curve, args.messages, args.period_ms / 1e3, keydir)
                p50, p95, p99 = np.percentile(lat, [50, 95, 99])
                medians[(kind, curve)] = p50
                print(f"| {label} | {'CurveZMQ' if curve else 'plain'} | {p50:.3f} | "
                      f"{p95:.3f} | {p99:.3f} |")
        for kind in ("frame", "pose"):
            print(f"added by CurveZMQ, {kind}: {medians[(kind, True)] - medians[(kind, False)]:+.3f}"
                  " ms (p50)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
