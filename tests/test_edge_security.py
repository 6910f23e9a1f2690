"""Internal edges between hosts are encrypted and authenticated (issue 12.4).

An edge bound or reached off loopback needs CurveZMQ keys (or --insecure-edges, said out
loud); ipc and loopback edges are as before. Real sockets against a real capture process
(run_pipeline.py --only capture, binding on all interfaces): a peer without keys and a peer
with a key the capture host has not authorised get 0 frames, and what they send never
reaches the stage; the authorised consumer (our own EdgeReceiver with its keys) gets every
frame, then the end of the stream.
"""

from __future__ import annotations

import time

import pytest
import zmq

from pipeline.config import PipelineConfig, TopologyConfig
from pipeline.graph import build_graph
from pipeline.schema import decode
from pipeline.security import (
    KeyFileError,
    authorize,
    curve_client_options,
    generate_keypair,
    load_keypair,
    load_public_key,
)
from pipeline.transport import CREDIT, EdgeReceiver
from tests.conftest import free_port

VIDEO = "data/footage/openpose/examples/media/video.avi"
FRAMES = 20


@pytest.fixture
def keys(tmp_path):
    """Key pairs of the capture host (a), the consumer host (b) and a stranger (c); b's
    public key authorised on a."""
    out = {}
    for name in ("a", "b", "c"):
        out[name] = generate_keypair(tmp_path / name, name)  # (public, secret)
    authorize(out["b"][0], tmp_path / "authorized")
    out["authorized"] = tmp_path / "authorized"
    return out


def _graph(**topology):
    return build_graph(PipelineConfig(topology=TopologyConfig(**topology)))


def test_an_edge_off_loopback_needs_keys_or_says_it_goes_in_the_clear(keys):
    bind = (("capture-detect", "tcp://0.0.0.0:5560"),)
    connect = (("capture-detect", "tcp://192.0.2.7:5560"),)
    with pytest.raises(ValueError, match=r"refusing to bind edge capture-detect .* in the "
                                         r"clear.*--edge-secret and --edge-authorized.*"
                                         r"python -m pipeline.keys new"):
        _graph(only=("capture",), endpoints=bind, allow_remote=True)
    with pytest.raises(ValueError, match=r"refusing to connect to edge capture-detect.*"
                                         r"--edge-secret and --edge-server-key"):
        _graph(only=("detect", "lift", "smooth", "output"), endpoints=connect)
    # keys given: accepted; a wrong key file: refused before anything starts
    _graph(only=("capture",), endpoints=bind, allow_remote=True,
           edge_curve_secret=str(keys["a"][1]), edge_curve_authorized=str(keys["authorized"]))
    _graph(only=("detect", "lift", "smooth", "output"), endpoints=connect,
           edge_curve_secret=str(keys["b"][1]), edge_curve_server=str(keys["a"][0]))
    with pytest.raises(KeyFileError, match="holds only a public key"):
        _graph(only=("capture",), endpoints=bind, allow_remote=True,
               edge_curve_secret=str(keys["a"][0]),
               edge_curve_authorized=str(keys["authorized"]))
    # explicitly in the clear; loopback and ipc edges never need keys
    _graph(only=("capture",), endpoints=bind, allow_remote=True, insecure_edges=True)
    _graph(only=("capture",), endpoints=(("capture-detect", "tcp://127.0.0.1:5560"),))
    _graph(only=("capture",), endpoints=(("capture-detect", "ipc:///tmp/x.sock"),))


def _thief(ctx: zmq.Context, endpoint: str, options: dict | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for option, value in (options or {}).items():
        sock.setsockopt(option, value)
    sock.connect(endpoint)
    return sock


def test_a_keyless_peer_gets_nothing_and_the_keyed_consumer_gets_every_frame(
        keys, shared_file, reaper, tmp_path):
    port = free_port()
    log_path = tmp_path / "capture.log"
    with open(log_path, "w") as err:
        capture = reaper.python(
            "run_pipeline.py", "--only", "capture", "--video", str(shared_file(VIDEO)),
            "--max-frames", str(FRAMES), "--allow-remote",
            "--endpoint", f"capture-detect=tcp://0.0.0.0:{port}",
            "--edge-secret", str(keys["a"][1]), "--edge-authorized", str(keys["authorized"]),
            stderr=err)
    endpoint = f"tcp://127.0.0.1:{port}"
    ctx = zmq.Context()
    stolen = 0
    thieves = [_thief(ctx, endpoint),  # no keys at all
               _thief(ctx, endpoint, curve_client_options(  # keys the host never authorised
                   load_keypair(keys["c"][1]), load_public_key(keys["a"][0])))]
    rx = None
    try:
        # for 4 s both ask for frames the way a consumer does, and try to feed the stage
        deadline = time.monotonic() + 4.0
        token = 0
        while time.monotonic() < deadline:
            token += 1
            for sock in thieves:
                for parts in ([CREDIT, token.to_bytes(8, "little")], [b"D", b"\x80"],
                              [b"C"]):
                    try:
                        sock.send_multipart(parts, zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                while sock.poll(0, zmq.POLLIN):
                    sock.recv_multipart()
                    stolen += 1
            time.sleep(0.05)
        assert capture.poll() is None, log_path.read_text()[-3000:]
        # the authorised consumer: every frame, in order, then the end
        rx = EdgeReceiver(ctx, endpoint, options=curve_client_options(
            load_keypair(keys["b"][1]), load_public_key(keys["a"][0])))
        assert rx.wait_connected(20.0), "the keyed consumer could not connect"
        ids = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rx.request()
            if rx.socket.poll(100, zmq.POLLIN):
                got = rx.receive()
                if got is EdgeReceiver.END:
                    break
                if got is not None:
                    ids.append(decode(got).frame_id)
            rx.tick()
        capture.wait(timeout=30)
    finally:
        for sock in thieves:
            sock.close(0)
        if rx is not None:
            rx.close()
        ctx.term()
    log = log_path.read_text()
    assert stolen == 0, "a peer without an authorised key received frames"
    assert ids == list(range(FRAMES)), ids
    assert capture.returncode == 0, log[-3000:]
    # nothing the thieves sent reached the stage: no malformed credit was ever seen
    assert "malformed credit" not in log, log[-3000:]


def test_a_keyed_consumer_takes_nothing_from_an_impostor(keys):
    """Someone binding the address a consumer connects to (without the capture host's
    secret key) cannot feed it: the handshake fails, nothing is delivered."""
    ctx = zmq.Context()
    port = free_port()
    impostor = ctx.socket(zmq.ROUTER)
    impostor.setsockopt(zmq.LINGER, 0)
    impostor.bind(f"tcp://127.0.0.1:{port}")
    rx = EdgeReceiver(ctx, f"tcp://127.0.0.1:{port}", options=curve_client_options(
        load_keypair(keys["b"][1]), load_public_key(keys["a"][0])))
    try:
        assert not rx.wait_connected(1.5)
        got = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            rx.request()
            rx.tick()
            while impostor.poll(0, zmq.POLLIN):  # answer any credit with a fake frame
                peer = impostor.recv_multipart()[0]
                impostor.send_multipart([peer, b"D", b"\x80"])
            if rx.socket.poll(50, zmq.POLLIN):
                got.append(rx.receive())
        assert got == [] and rx.received == 0
    finally:
        rx.close()
        impostor.close(0)
        ctx.term()
