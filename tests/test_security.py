"""Security (issue 4): loopback binding by default, CurveZMQ for remote subscribers, no pickle.

The CURVE tests run a real publisher process and real subscriber sockets over loopback TCP.
All subscribers listen during the same window while an authorised one receives poses, so
"received nothing" cannot pass just because nothing was published.
"""

from __future__ import annotations

import ast
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from pipeline.schema import Pose3D, SchemaError, decode
from pipeline.security import (
    InsecureEndpointError,
    KeyFileError,
    authorize,
    check_bind_endpoint,
    curve_client_options,
    generate_keypair,
    is_loopback_endpoint,
    load_keypair,
    load_public_key,
)

REPO = Path(__file__).resolve().parents[1]
LISTEN_S = 3.0  # every subscriber listens at least this long
LISTEN_LIMIT_S = 30.0  # ... and at most this long, for the authorised one's MIN_POSES
MIN_POSES = 20

# --------------------------------------------------------------------------- bind check
LOCAL = [
    "tcp://127.0.0.1:5556",
    "tcp://127.4.5.6:5556",
    "tcp://localhost:5556",
    "tcp://lo:5556",
    "tcp://[::1]:5556",
    "tcp://[::ffff:127.0.0.1]:5556",
    "ipc:///tmp/posestream/pose.sock",
    "inproc://poses",
]
REMOTE = [
    "tcp://*:5556",
    "tcp://0.0.0.0:5556",
    "tcp://[::]:5556",
    "tcp://eth0:5556",
    "tcp://192.168.1.20:5556",
    "tcp://10.0.0.1:5556",
    "tcp://[fe80::1%eth0]:5556",
    "tcp://myhost.example.org:5556",
    "ws://0.0.0.0:8080",
    "epgm://eth0;239.192.1.1:5555",
]


@pytest.mark.parametrize("endpoint", LOCAL)
def test_loopback_endpoints_pass_silently(endpoint, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.security"):
        assert check_bind_endpoint(endpoint, allow_remote=False) == endpoint
    assert is_loopback_endpoint(endpoint)
    assert not caplog.records


@pytest.mark.parametrize("endpoint", REMOTE)
def test_other_interfaces_need_the_flag(endpoint):
    assert not is_loopback_endpoint(endpoint)
    with pytest.raises(InsecureEndpointError) as err:
        check_bind_endpoint(endpoint, allow_remote=False)
    assert endpoint in str(err.value)
    assert "127.0.0.1" in str(err.value)  # says what to use instead


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:6001", "tcp://*:6002"])
def test_allow_remote_passes_with_one_warning(endpoint, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.security"):
        assert check_bind_endpoint(endpoint, allow_remote=True) == endpoint
        check_bind_endpoint(endpoint, allow_remote=True)
    warnings = [r for r in caplog.records if endpoint in r.getMessage()]
    assert len(warnings) == 1
    assert "CurveZMQ" in warnings[0].getMessage()


@pytest.mark.parametrize("endpoint", ["127.0.0.1:5556", "", "tcp:/127.0.0.1:1", "udpx://a:1"])
def test_malformed_endpoints_are_refused_even_with_the_flag(endpoint):
    with pytest.raises(InsecureEndpointError):
        check_bind_endpoint(endpoint, allow_remote=True)


# --------------------------------------------------------------------------- key files
def _keys_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.keys", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )


def test_keys_cli_writes_a_private_secret_and_refuses_to_overwrite(tmp_path):
    done = _keys_cli("new", "server", "--dir", str(tmp_path / "s"))
    assert done.returncode == 0, done.stderr
    secret = tmp_path / "s" / "server.key_secret"
    public = tmp_path / "s" / "server.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    pair = load_keypair(secret)
    assert load_public_key(public) == pair.public
    assert pair.secret.decode() not in public.read_text()

    again = _keys_cli("new", "server", "--dir", str(tmp_path / "s"))
    assert again.returncode == 2 and "already exists" in again.stderr
    assert load_keypair(secret) == pair  # untouched

    shown = _keys_cli("show", str(public))
    assert shown.returncode == 0 and shown.stdout.strip() == pair.public.decode()


def test_keys_cli_authorize_takes_public_keys_only(tmp_path):
    assert _keys_cli("new", "alice", "--dir", str(tmp_path)).returncode == 0
    refused = _keys_cli("authorize", str(tmp_path / "alice.key_secret"), "--dir",
                        str(tmp_path / "auth"))
    assert refused.returncode == 2 and "secret" in refused.stderr
    done = _keys_cli("authorize", str(tmp_path / "alice.key"), "--dir", str(tmp_path / "auth"))
    assert done.returncode == 0, done.stderr
    copied = tmp_path / "auth" / "alice.key"
    assert load_public_key(copied) == load_public_key(tmp_path / "alice.key")
    assert load_keypair(tmp_path / "alice.key_secret").secret.decode() not in copied.read_text()


def test_bad_key_files_say_what_to_do(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist.*pipeline.keys new"):
        load_keypair(tmp_path / "nope.key_secret")
    junk = tmp_path / "junk.key"
    junk.write_text("hello\n")
    with pytest.raises(KeyFileError, match="not a CurveZMQ certificate"):
        load_public_key(junk)
    public, _ = generate_keypair(tmp_path, "bob")
    with pytest.raises(KeyFileError, match="only a public key"):
        load_keypair(public)
    with pytest.raises(KeyFileError, match="plain name"):
        generate_keypair(tmp_path, "../evil")


def test_readable_secret_key_is_warned_about(tmp_path, caplog):
    _, secret = generate_keypair(tmp_path, "carol")
    os.chmod(secret, 0o644)
    with caplog.at_level(logging.WARNING, logger="pipeline.security"):
        load_keypair(secret)
    assert any("chmod 600" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- CURVE end to end
PUBLISHER = r"""
import sys, time, numpy as np, zmq
from engines.runtime.skeleton import NUM_JOINTS
from pipeline.schema import Person3D, Pose3D, encode
from pipeline.security import CurvePublisher, apply_options, check_bind_endpoint

endpoint, secret, authorized = sys.argv[1:4]
ctx = zmq.Context()
sec = CurvePublisher(ctx, secret, authorized)
pub = ctx.socket(zmq.PUB)
pub.setsockopt(zmq.LINGER, 0)
apply_options(pub, sec.options)
pub.bind(check_bind_endpoint(endpoint, allow_remote=False))
print("bound", flush=True)
z3, z2, z1 = (np.zeros((NUM_JOINTS, 3), np.float32), np.zeros((NUM_JOINTS, 2), np.float32),
              np.zeros(NUM_JOINTS, np.float32))
try:
    for i in range(10**9):
        pose = Pose3D(frame_id=i, t_capture_ns=time.monotonic_ns(), image_size=(640, 480),
                      people=(Person3D(track_id=1, joints_3d_m=z3 + i,
                                       root_m=np.zeros(3, np.float32), joints_2d_px=z2,
                                       confidence=z1, reproj_err_px=z1),), engine_id="abc")
        pub.send_multipart([b"pose3d", *encode(pose)])
        time.sleep(0.01)
finally:
    pub.close(0); sec.close(); ctx.term()
"""


@pytest.fixture
def keys(tmp_path):
    """Server, an authorised client, an unauthorised client and a stranger server."""
    out = {}
    for name, folder in (("server", "s"), ("alice", "a"), ("mallory", "m"), ("fake", "f")):
        _, secret = generate_keypair(tmp_path / folder, name)
        out[name] = load_keypair(secret)
        out[name + "_secret"] = secret
    authorize(tmp_path / "a" / "alice.key", tmp_path / "authorized")
    out["authorized"] = tmp_path / "authorized"
    return out


@pytest.fixture
def curve_publisher(keys):
    """A real publisher process with CURVE + ZAP on a free loopback port."""
    ctx = zmq.Context.instance()
    probe = ctx.socket(zmq.PUB)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(0)
    endpoint = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, endpoint, str(keys["server_secret"]),
         str(keys["authorized"])],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "bound", f"publisher did not start (exit {proc.poll()})"
        yield endpoint
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _subscriber(ctx: zmq.Context, endpoint: str, options: dict) -> tuple[zmq.Socket, zmq.Socket]:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for opt, value in options.items():
        sock.setsockopt(opt, value)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    monitor = sock.get_monitor_socket(
        zmq.EVENT_HANDSHAKE_SUCCEEDED
        | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    )
    sock.connect(endpoint)
    return sock, monitor


def test_only_the_authorised_curve_subscriber_receives(keys, curve_publisher):
    ctx = zmq.Context()
    subs = {
        "authorised": curve_client_options(keys["alice"], keys["server"].public),
        "no keys": {},
        "unknown client key": curve_client_options(keys["mallory"], keys["server"].public),
        "wrong server key": curve_client_options(keys["alice"], keys["fake"].public),
    }
    socks = {name: _subscriber(ctx, curve_publisher, opts) for name, opts in subs.items()}
    received = {name: [] for name in subs}
    events = {name: set() for name in subs}
    poller = zmq.Poller()
    for sock, monitor in socks.values():
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
    try:
        # listen at least LISTEN_S (the refused ones have time to be refused), and until the
        # authorised one has MIN_POSES poses or the generous limit: a count, not a rate (the
        # rate through CURVE against plain tcp is `python -m bench.bounds curve`)
        start = time.monotonic()
        while time.monotonic() - start < LISTEN_S or (
                len(received["authorised"]) < MIN_POSES
                and time.monotonic() - start < LISTEN_LIMIT_S):
            ready = dict(poller.poll(100))
            for name, (sock, monitor) in socks.items():
                if monitor in ready:
                    events[name].add(recv_monitor_message(monitor)["event"])
                if sock in ready:
                    parts = sock.recv_multipart()
                    try:
                        received[name].append(decode(parts[1:]))
                    except SchemaError:
                        received[name].append(None)
    finally:
        for sock, monitor in socks.values():
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
        ctx.term()

    good = received["authorised"]
    assert len(good) >= MIN_POSES, \
        f"authorised subscriber got only {len(good)} poses in {LISTEN_LIMIT_S} s"
    assert all(isinstance(m, Pose3D) for m in good)
    assert zmq.EVENT_HANDSHAKE_SUCCEEDED in events["authorised"]
    for name in ("no keys", "unknown client key", "wrong server key"):
        assert received[name] == [], f"{name}: received {len(received[name])} messages"
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in events[name], name
    # the stranger key is refused by the ZAP authenticator, not by accident
    assert zmq.EVENT_HANDSHAKE_FAILED_AUTH in events["unknown client key"], events


def test_authenticator_refuses_to_start_with_no_authorised_keys(tmp_path, keys):
    from pipeline.security import CurvePublisher

    (tmp_path / "empty").mkdir()
    ctx = zmq.Context()
    try:
        with pytest.raises(KeyFileError, match="no subscriber could connect"):
            CurvePublisher(ctx, keys["server_secret"], tmp_path / "empty")
        with pytest.raises(KeyFileError, match="does not exist"):
            CurvePublisher(ctx, keys["server_secret"], tmp_path / "missing")
    finally:
        ctx.term()


# --------------------------------------------------------------------------- no pickle
WIRE_PACKAGES = ("pipeline", "stages")
FORBIDDEN_CALLS = {"send_pyobj", "recv_pyobj", "send_serialized", "recv_serialized"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve"}


def test_no_pickle_anywhere_on_the_wire():
    """No module that talks on a socket imports a pickle-like module or uses pyzmq's
    pickle helpers (send_pyobj / recv_pyobj)."""
    offenders = []
    for package in WIRE_PACKAGES:
        for path in sorted((REPO / package).glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom):
                    names = {(node.module or "").split(".")[0]}
                elif isinstance(node, ast.Attribute):
                    names = {node.attr} & FORBIDDEN_CALLS
                else:
                    continue
                bad = names & (FORBIDDEN_MODULES | FORBIDDEN_CALLS)
                if bad:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {sorted(bad)}")
    assert not offenders, offenders
