"""Who may connect to the published pose stream.

Two guards, both off the hot path:

1. **Where we bind.** `check_bind_endpoint(endpoint, allow_remote)` accepts loopback
   (127.0.0.0/8, ::1, localhost, the `lo` interface), `ipc://` and `inproc://` endpoints
   silently; any other interface (`tcp://*:5556`, `tcp://0.0.0.0:5556`, `tcp://eth0:5556`,
   a LAN address) raises `InsecureEndpointError` unless `allow_remote` is True, and then
   logs a warning once per endpoint. Pure apart from that log line: config validation and
   the output stage both call it.

2. **CurveZMQ** (optional; for subscribers on other machines). The publisher holds a
   server key pair and a folder of authorised client public keys; a ZAP authenticator
   thread (pyzmq's `zmq.auth.thread.ThreadAuthenticator`) in the publisher's context lets
   only those clients finish the handshake, and every byte after it is encrypted. A
   subscriber needs its own key pair and the server's public key. Key files are pyzmq's
   certificate format (`zmq.auth.create_certificates`), made by

       python -m pipeline.keys new server --dir keys/server
       python -m pipeline.keys new alice --dir keys/alice
       python -m pipeline.keys authorize keys/alice/alice.key --dir keys/authorized

   (see `python -m pipeline.keys --help` and docs/RELIABILITY.md). Secret key files are
   written with mode 0600; loading one that others can read logs a warning.

3. **Internal edges between hosts** (`--endpoint EDGE=tcp://...` off loopback) are CURVE too:
   `check_edge_keys` refuses such an edge without keys (unless the run says
   `insecure_edges`), and `edge_socket_options` gives the producer's ROUTER its server keys
   (with a ZAP authenticator admitting only the public keys in `edge_authorized`) and the
   consumer's DEALER its client keys and the producer host's public key. ipc and loopback
   edges stay plain: nothing leaves the host.

Sockets get their CURVE options *before* bind/connect (libzmq applies security options
per connection, at connect/accept time): use `curve_server_options` / `curve_client_options`
with `pipeline.transport.open_socket(..., options=...)`, or `apply_options` by hand.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

#: endpoint transports that never leave the host
LOCAL_TRANSPORTS: tuple[str, ...] = ("ipc", "inproc")
#: transports we know how to check; anything else is refused (say what to use instead)
NETWORK_TRANSPORTS: tuple[str, ...] = ("tcp", "ws", "wss", "udp", "pgm", "epgm", "tipc", "vmci")
#: transports that send to a multicast group: never local
MULTICAST_TRANSPORTS: tuple[str, ...] = ("pgm", "epgm")
#: interface names that mean loopback when bound by name
LOOPBACK_NAMES: frozenset[str] = frozenset({"localhost", "lo", "lo0", "ip6-localhost"})
#: pyzmq certificate suffixes: public key file, secret key file
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"

_warned_remote: set[str] = set()


class InsecureEndpointError(ValueError):
    """A bind endpoint that other machines could reach, without the explicit flag."""


class KeyFileError(ValueError):
    """A CurveZMQ key file is missing, unreadable, or not the kind that was needed."""


# --------------------------------------------------------------------------- bind endpoints
def _endpoint_host(endpoint: str) -> tuple[str, str]:
    """(transport, host) of a ZeroMQ endpoint; raises InsecureEndpointError if unparsable."""
    transport, sep, rest = endpoint.partition("://")
    if not sep or not transport:
        raise InsecureEndpointError(
            f"endpoint {endpoint!r} is not a ZeroMQ endpoint: write it as "
            "tcp://127.0.0.1:5556 (or ipc:///path/to/socket)"
        )
    transport = transport.lower()
    if transport in LOCAL_TRANSPORTS:
        return transport, ""
    if transport not in NETWORK_TRANSPORTS:
        raise InsecureEndpointError(
            f"endpoint {endpoint!r}: unknown transport {transport!r}; use tcp://127.0.0.1:PORT"
        )
    if transport in MULTICAST_TRANSPORTS:
        return transport, "*"  # multicast: "interface;group:port", always on the network
    if ";" in rest:  # "source;destination" is a connect-only form
        raise InsecureEndpointError(
            f"endpoint {endpoint!r}: a bind endpoint has no ';' part; use "
            "tcp://127.0.0.1:PORT"
        )
    if rest.startswith("["):  # [ipv6]:port
        host, _, _ = rest[1:].partition("]")
    else:
        host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    host = host.split("%", 1)[0]  # fe80::1%eth0 -> fe80::1
    return transport, host


def is_loopback_endpoint(endpoint: str) -> bool:
    """True if binding `endpoint` can only be reached from this host.

    ipc:// and inproc:// are local; tcp (and other network transports) count as local
    only on a loopback address (127.0.0.0/8, ::1, ::ffff:127.x) or a loopback name
    (localhost, lo). A wildcard (`*`, 0.0.0.0, ::), an interface name such as eth0 or a
    host name is not. Raises InsecureEndpointError for something that is not an endpoint.
    """
    transport, host = _endpoint_host(endpoint)
    if transport in LOCAL_TRANSPORTS:
        return True
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback or _is_mapped_loopback(host)
    except ValueError:
        return False  # "*", an interface name or a host name: may be any interface


def _is_mapped_loopback(host: str) -> bool:
    addr = ipaddress.ip_address(host)
    mapped = getattr(addr, "ipv4_mapped", None)
    return mapped is not None and mapped.is_loopback


def check_bind_endpoint(endpoint: str, allow_remote: bool) -> str:
    """Return `endpoint` if it may be bound; refuse a remote one unless asked for.

    Loopback, ipc and inproc endpoints pass silently. Any other interface raises
    InsecureEndpointError (a ValueError) unless `allow_remote` is True; then it passes
    with one WARNING per endpoint and process, because anyone who can reach that address
    can read the stream (use CurveZMQ: docs/RELIABILITY.md).
    """
    if is_loopback_endpoint(endpoint):
        return endpoint
    if not allow_remote:
        raise InsecureEndpointError(
            f"refusing to bind {endpoint!r}: other machines could connect to it. Use "
            "tcp://127.0.0.1:PORT, or pass --allow-remote if you mean to expose the stream "
            "(and consider CurveZMQ keys: python -m pipeline.keys --help)"
        )
    if endpoint not in _warned_remote:
        _warned_remote.add(endpoint)
        log.warning(
            "binding %s: any machine that can reach this address can connect%s",
            endpoint,
            "" if endpoint.startswith("ipc") else "; use CurveZMQ keys to limit who can read",
        )
    return endpoint


# --------------------------------------------------------------------------- internal edges
EDGE_KEYS_HOWTO = (
    "make a key pair per host and authorise the connecting host's public key on the binding "
    "host: python -m pipeline.keys new camhost --dir keys/camhost; python -m pipeline.keys "
    "new gpuhost --dir keys/gpuhost; python -m pipeline.keys authorize keys/gpuhost/gpuhost.key "
    "--dir keys/edge-authorized; then the run that binds the edge takes --edge-secret "
    "keys/camhost/camhost.key_secret --edge-authorized keys/edge-authorized, the run that "
    "connects --edge-secret keys/gpuhost/gpuhost.key_secret --edge-server-key "
    "keys/camhost/camhost.key. Or pass --insecure-edges to both runs to send it in the clear "
    "(a trusted network only)"
)


def check_edge_keys(edge: str, endpoint: str, binds: bool, *, secret: str | None,
                    authorized: str | None, server: str | None, insecure: bool) -> bool:
    """Whether the internal edge `edge` at `endpoint` is to use CurveZMQ (True for a
    non-loopback endpoint unless `insecure`); raises InsecureEndpointError (a ValueError)
    saying how to make keys when it needs them and they are not given, and KeyFileError
    when a key file or folder is missing or wrong. `binds`: this run binds it (the producer,
    a CURVE server needing `secret` and `authorized`), else connects (`secret`, `server`)."""
    if is_loopback_endpoint(endpoint) or insecure:
        return False
    need = {"--edge-secret": secret}
    need.update({"--edge-authorized": authorized} if binds else {"--edge-server-key": server})
    missing = [flag for flag, value in need.items() if not value]
    if missing:
        what = "bind" if binds else "connect to"
        raise InsecureEndpointError(
            f"refusing to {what} edge {edge} on {endpoint} in the clear: anyone who can reach "
            f"it could watch its frames or feed the stage. It needs {' and '.join(missing)}: "
            f"{EDGE_KEYS_HOWTO}"
        )
    load_keypair(secret)
    if binds:
        authorized_keys(authorized)
    else:
        load_public_key(server)
    return True


def edge_socket_options(binds: bool, secret: str, server: str | None = None
                        ) -> dict[int, int | bytes]:
    """CURVE options for an internal edge's socket: the producer's ROUTER (binds) is a server
    with this host's keys; the consumer's DEALER a client of the producer host's public key
    `server`. The binding process also needs `start_authenticator(ctx, authorized_dir)`."""
    keys = load_keypair(secret)
    if binds:
        return curve_server_options(keys)
    return curve_client_options(keys, load_public_key(server))


# --------------------------------------------------------------------------- key files
@dataclass(frozen=True)
class KeyPair:
    """A CurveZMQ key pair, Z85 text as bytes (40 characters each)."""

    public: bytes
    secret: bytes


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "secret key %s can be read by other users (mode %o): chmod 600 %s",
            path, stat.S_IMODE(mode), path,
        )


def generate_keypair(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write `<directory>/<name>.key` (public) and `<name>.key_secret` (mode 0600).

    Returns (public_path, secret_path). Refuses to overwrite existing files (a lost
    secret key cannot be recovered; delete the old files first if you mean it).
    Raises KeyFileError for a bad name or existing files.
    """
    if not name or "/" in name or name.startswith(".") or os.sep in name:
        raise KeyFileError(f"key name {name!r}: use a plain name such as 'server' or 'alice'")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing:
        raise KeyFileError(
            f"{existing[0]} already exists: pick another name or delete the old key files "
            "first (anything using them stops working)"
        )
    old_umask = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        pub_path, sec_path = zmq.auth.create_certificates(str(folder), name)
    finally:
        os.umask(old_umask)
    os.chmod(pub_path, 0o644)
    os.chmod(sec_path, 0o600)
    log.info("wrote CurveZMQ key pair %s / %s", pub_path, sec_path)
    return Path(pub_path), Path(sec_path)


def load_keypair(secret_file: str | os.PathLike) -> KeyPair:
    """The key pair in a `.key_secret` file. Raises KeyFileError if it is missing, not a
    certificate, or holds only a public key."""
    path = Path(secret_file)
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(
            f"{path} holds only a public key; give the matching {SECRET_SUFFIX} file "
            f"(made by python -m pipeline.keys new NAME)"
        )
    _check_private(path)
    return KeyPair(public=public, secret=secret)


def load_public_key(public_file: str | os.PathLike) -> bytes:
    """The public key in a `.key` (or `.key_secret`) file. Raises KeyFileError."""
    return _load(Path(public_file))[0]


def _load(path: Path) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise KeyFileError(
            f"key file {path} does not exist: make one with python -m pipeline.keys new NAME"
        )
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(
            f"{path} is not a CurveZMQ certificate ({exc}); make one with "
            "python -m pipeline.keys new NAME"
        ) from exc
    if public is None or len(public) != 40 or (secret is not None and len(secret) != 40):
        raise KeyFileError(f"{path}: keys must be 40 Z85 characters; regenerate the file")
    return public, secret


def authorize(public_file: str | os.PathLike, authorized_dir: str | os.PathLike) -> Path:
    """Copy a client's public key file into the publisher's authorised-keys folder.

    Refuses a secret key file (only the public half ever leaves its owner). Returns the
    path written. Raises KeyFileError.
    """
    src = Path(public_file)
    public, secret = _load(src)
    if secret is not None or src.name.endswith(SECRET_SUFFIX):
        raise KeyFileError(
            f"{src} is a secret key: authorise the public {PUBLIC_SUFFIX} file, and keep the "
            "secret one with its owner"
        )
    folder = Path(authorized_dir)
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / src.name
    dst.write_text(
        "# authorised posestream subscriber (copied by python -m pipeline.keys authorize)\n"
        f"metadata\ncurve\n    public-key = \"{public.decode('ascii')}\"\n",
        encoding="utf-8",
    )
    return dst


def authorized_keys(authorized_dir: str | os.PathLike) -> list[bytes]:
    """The client public keys in a folder (every `*.key` file). Raises KeyFileError if the
    folder is missing or holds none (an empty list would lock everyone out silently)."""
    folder = Path(authorized_dir)
    if not folder.is_dir():
        raise KeyFileError(
            f"authorised-keys folder {folder} does not exist: create it and add client keys "
            "with python -m pipeline.keys authorize CLIENT.key --dir FOLDER"
        )
    keys = [load_public_key(p) for p in sorted(folder.glob(f"*{PUBLIC_SUFFIX}"))]
    if not keys:
        raise KeyFileError(
            f"no *{PUBLIC_SUFFIX} files in {folder}: no subscriber could connect; add one "
            "with python -m pipeline.keys authorize CLIENT.key --dir FOLDER"
        )
    return keys


# --------------------------------------------------------------------------- sockets
def curve_server_options(server: KeyPair) -> dict[int, int | bytes]:
    """Socket options that make a socket a CURVE server (set them before bind)."""
    return {
        zmq.CURVE_SERVER: 1,
        zmq.CURVE_PUBLICKEY: server.public,
        zmq.CURVE_SECRETKEY: server.secret,
    }


def curve_client_options(client: KeyPair, server_public: bytes) -> dict[int, int | bytes]:
    """Socket options for a CURVE client of `server_public` (set them before connect)."""
    return {
        zmq.CURVE_SERVERKEY: server_public,
        zmq.CURVE_PUBLICKEY: client.public,
        zmq.CURVE_SECRETKEY: client.secret,
    }


def apply_options(sock: zmq.Socket, options: dict[int, int | bytes]) -> None:
    """Set each option on `sock` (before it binds or connects)."""
    for option, value in options.items():
        sock.setsockopt(option, value)


def start_authenticator(ctx: zmq.Context, authorized_dir: str | os.PathLike) -> ThreadAuthenticator:
    """Start a ZAP authenticator in `ctx` that admits only CURVE clients whose public key
    is in `authorized_dir`; everything else is refused during the handshake.

    Start it before binding the CURVE server socket; `stop()` it after closing that socket.
    Raises KeyFileError if the folder has no keys (see `authorized_keys`).
    """
    keys = authorized_keys(authorized_dir)
    auth = ThreadAuthenticator(ctx, log=logging.getLogger(f"{__name__}.zap"))
    auth.start()
    auth.configure_curve(domain="*", location=str(Path(authorized_dir)))
    log.info("CurveZMQ: %d authorised subscriber key(s) in %s", len(keys), authorized_dir)
    return auth


class CurvePublisher:
    """What a CURVE-protected publishing socket needs, started and stopped together.

        sec = CurvePublisher(ctx, server_secret_file, authorized_dir)   # starts ZAP
        sock = open_socket(ctx, zmq.XPUB, bind=ep, options=sec.options)
        ...
        sock.close(); sec.close()

    Raises KeyFileError for missing or wrong key files, before anything is bound.
    """

    def __init__(
        self, ctx: zmq.Context, server_secret_file: str | os.PathLike,
        authorized_dir: str | os.PathLike,
    ) -> None:
        if not zmq.has("curve"):
            raise KeyFileError(
                "this libzmq was built without CURVE support: install pyzmq's own wheel"
            )
        self.keys = load_keypair(server_secret_file)
        self._auth: ThreadAuthenticator | None = start_authenticator(ctx, authorized_dir)
        self.options = curve_server_options(self.keys)

    def close(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
