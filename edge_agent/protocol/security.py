"""Encrypted, authenticated tcp links with ZeroMQ CURVE, and the rule that keeps the agent off the
network unless they are on.

Keys are CURVE key pairs in ZeroMQ's certificate files (``zmq.auth``): ``NAME.key`` holds the
public key (give it out), ``NAME.key_secret`` the public and the secret key (mode 0600, never
copied off its host). ``edge-agent keys --out DIR --name NAME`` makes a pair.

    server (the hub)                                   clients (monitors, remote workers)
    transport.curve_secret: hub.key_secret             --curve-server-key hub.key
    transport.curve_allow:  allowed/ (clients' *.key)  --curve-client-key monitor1.key_secret

The hub applies CURVE in server mode to every tcp socket it binds (XPUB, ROUTER, PULL all support
it) and runs a ZAP authenticator (``zmq.auth.thread.ThreadAuthenticator``) on its context that
admits exactly the public keys in the allow-list directory, plus the agent's own public key (its
local workers use the agent's certificate when ``transport.workers`` is tcp; whoever holds that
secret already is the server). ZeroMQ applies the authenticator per context and CURVE per socket;
ipc sockets stay on the NULL mechanism: they live in the agent's private run directory (mode 0700,
made by ``tempfile.mkdtemp``), so only the agent's user can reach them.

Exposure rule (:func:`check_exposure`, run when the agent's configuration is parsed): a tcp
endpoint bound beyond loopback (``0.0.0.0``, ``*``, ``::``, any other address, interface or host
name) is refused unless ``transport.curve_secret`` is set, or ``transport.allow_insecure: true``
says plain text on the network is intended (then the hub logs a WARNING at start).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from edge_agent.config import ConfigError

if TYPE_CHECKING:
    from edge_agent.protocol.transport import TransportConfig

log = logging.getLogger(__name__)

KEY_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
Z85_KEY_LENGTH = 40  # a 32-byte CURVE key in Z85 text
SECRET_MODE = 0o600
ENDPOINT_KEYS = ("windows", "workers", "publish")  # the TransportConfig keys the hub binds
LOOPBACK_NAMES = frozenset({"localhost", "lo"})  # ZeroMQ binds these to 127.0.0.1 / ::1
LOCAL_SCHEMES = frozenset({"ipc", "inproc"})  # never reachable from another host
DENIED_LOG_EVERY_S = 60.0  # repeat a denied-key or failed-handshake message at most this often
CURVE_HELP = (
    "this pyzmq's libzmq was built without CURVE (zmq.has('curve') is False); install pyzmq's "
    "wheel from PyPI (its bundled libzmq has CURVE) or rebuild libzmq with libsodium"
)


class SecurityError(ConfigError):
    """A key file, allow-list or CURVE setting is wrong; the message names the file and the fix."""


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair as Z85 text (40 bytes each); ``secret`` is None for a public certificate."""

    public: bytes
    secret: bytes | None = None


@dataclass(frozen=True)
class ClientKeys:
    """What a CURVE client needs: its own key pair and the server's public key (Z85 bytes)."""

    public: bytes
    secret: bytes
    server_public: bytes


def require_curve() -> None:
    """Raise SecurityError unless this libzmq supports CURVE."""
    if not zmq.has("curve"):
        raise SecurityError(CURVE_HELP)


# ---------------------------------------------------------------- key files


def make_key_pair(directory: str | Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write a new CURVE key pair ``DIR/NAME.key`` (public, 0644) and ``DIR/NAME.key_secret``
    (secret, 0600); returns (public path, secret path).

    An existing pair is never overwritten unless ``force``. The files are written in a private
    temporary directory next to them and moved into place, so the secret is never readable by
    others, not even for a moment. ``directory`` is made (mode 0700) when missing.
    """
    require_curve()
    if not KEY_NAME_PATTERN.fullmatch(name):
        raise SecurityError(
            f"key name {name!r}: use 1-64 characters of [A-Za-z0-9_.-], not starting with '.'"
        )
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    existing = [p for p in (public, secret) if p.exists()]
    if existing and not force:
        raise SecurityError(
            f"{existing[0]}: a key already exists; keep it, pick another --name, or pass --force "
            "to replace the pair (clients and allow-lists holding the old public key must be updated)"
        )
    staging = Path(tempfile.mkdtemp(prefix=".keys-", dir=directory))  # mode 0700
    try:
        made_public, made_secret = (Path(p) for p in zmq.auth.create_certificates(staging, name))
        made_secret.chmod(SECRET_MODE)
        made_public.chmod(0o644)
        if force:
            os.replace(made_secret, secret)
            os.replace(made_public, public)
        else:
            # link() refuses an existing target: a pair made meanwhile by someone else is kept.
            os.link(made_secret, secret)
            try:
                os.link(made_public, public)
            except FileExistsError:
                secret.unlink()
                raise
    except FileExistsError as e:
        raise SecurityError(f"{e.filename2 or e.filename}: appeared while writing the key pair") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return public, secret


def _check_z85(key: bytes, path: Path, what: str) -> bytes:
    try:
        ok = len(key) == Z85_KEY_LENGTH and len(z85.decode(key)) == 32
    except (ValueError, KeyError, IndexError):
        ok = False
    if not ok:
        raise SecurityError(f"{path}: the {what} key is not a 40-character Z85 CURVE key; remake it")
    return key


def _read_certificate(path: str | Path, field: str) -> tuple[Path, KeyPair]:
    path = Path(path).expanduser()
    where = f"{field}: {path}" if field else str(path)
    if not path.is_file():
        raise SecurityError(
            f"{where}: no such key file; make one with `edge-agent keys --out DIR --name NAME`"
        )
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise SecurityError(
            f"{where}: not a ZeroMQ certificate ({e}); use a NAME.key / NAME.key_secret file "
            "made by `edge-agent keys`"
        ) from None
    return path, KeyPair(_check_z85(public, path, "public"), secret)


def load_public_key(path: str | Path, field: str = "") -> bytes:
    """The public key (Z85) of a certificate file (``NAME.key`` or ``NAME.key_secret``).
    ``field`` names the setting the path came from, for the error message."""
    return _read_certificate(path, field)[1].public


def load_secret_certificate(path: str | Path, field: str = "") -> KeyPair:
    """The key pair of a secret certificate (``NAME.key_secret``); SecurityError when the file is
    missing, is not a certificate or holds no secret key. Warns when others can read it."""
    path, pair = _read_certificate(path, field)
    where = f"{field}: {path}" if field else str(path)
    if pair.secret is None:
        raise SecurityError(
            f"{where}: holds no secret key (a public NAME.key file?); pass the NAME.key_secret file"
        )
    _check_z85(pair.secret, path, "secret")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s: secret key readable by others (mode %o); run chmod 600 %s", where, mode, path)
    return pair


def load_allow_list(directory: str | Path, field: str = "") -> dict[bytes, Path]:
    """Public keys (Z85) of the ``*.key`` files in ``directory`` → their file. SecurityError when
    the directory is missing or empty, or a file is not a certificate."""
    directory = Path(directory).expanduser()
    where = f"{field}: {directory}" if field else str(directory)
    if not directory.is_dir():
        raise SecurityError(f"{where}: no such directory; make it and copy each client's NAME.key into it")
    keys = {load_public_key(p, field): p for p in sorted(directory.glob("*.key"))}
    if not keys:
        raise SecurityError(
            f"{where}: no *.key files, so no client could connect; copy each client's public NAME.key "
            "(from `edge-agent keys`) into it"
        )
    return keys


def client_keys_from_files(server_key: str | Path, client_secret: str | Path) -> ClientKeys:
    """ClientKeys from the server's public key file and this client's secret certificate."""
    pair = load_secret_certificate(client_secret, "client key")
    assert pair.secret is not None  # load_secret_certificate guarantees it
    return ClientKeys(pair.public, pair.secret, load_public_key(server_key, "server key"))


# ---------------------------------------------------------------- sockets


def apply_server(sock: zmq.Socket, server: KeyPair) -> None:
    """CURVE server mode on ``sock`` (call before bind): it accepts only CURVE clients that know
    its public key; which of them get through is the context's authenticator's decision."""
    require_curve()
    if server.secret is None:
        raise SecurityError("a CURVE server needs its secret certificate (NAME.key_secret)")
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, server.secret)


def apply_client(sock: zmq.Socket, keys: ClientKeys) -> None:
    """CURVE client mode on ``sock`` (call before connect): encrypt, and prove this client's key."""
    require_curve()
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


class _DeniedLog(logging.LoggerAdapter):
    """pyzmq's authenticator reports a refused key at DEBUG; the hub wants it at WARNING (once a
    minute per key: a refused client reconnects ten times a second)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self._last: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()  # called from the authenticator's thread

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        args = tuple(a.decode("ascii", "replace") if isinstance(a, bytes) else a for a in args)
        text = str(msg) % args if args else str(msg)
        if not text.startswith("DENIED"):
            self.logger.debug(text)
            return
        key = text.rsplit("client_key=", 1)[-1]
        now = time.monotonic()
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            if now - self._last.get(key, -DENIED_LOG_EVERY_S) < DENIED_LOG_EVERY_S:
                return
            self._last[key], n = now, self._counts.pop(key)
        self.logger.warning(
            "CURVE client refused (%d attempt(s) in the last %.0f s): %s; to admit it, copy its public "
            "NAME.key into transport.curve_allow and restart the agent",
            n,
            DENIED_LOG_EVERY_S,
            text,
        )


def start_authenticator(
    ctx: zmq.Context, allow_dir: str | Path, extra_keys: Iterable[bytes] = (), field: str = ""
) -> ThreadAuthenticator:
    """A running ZAP authenticator for ``ctx`` admitting exactly the public keys of the ``*.key``
    files in ``allow_dir`` (plus ``extra_keys``, Z85). The directory is read now: restart to
    apply changes. Stop it (``.stop()``) before destroying the context."""
    require_curve()
    allowed = load_allow_list(allow_dir, field)  # clear errors; configure_curve only logs them
    auth = ThreadAuthenticator(ctx, log=_DeniedLog(logging.getLogger(f"{__name__}.auth")))
    auth.start()
    auth.configure_curve(domain="*", location=str(Path(allow_dir).expanduser()))
    certs = auth.certs.get("*", {})
    if set(certs) != set(allowed):  # the directory changed between the two reads
        auth.stop()
        raise SecurityError(f"{field or allow_dir}: the allow-list changed while it was read; start again")
    for key in extra_keys:
        certs[key] = True
    return auth


def scheme(endpoint: str) -> str:
    """``tcp`` of ``tcp://host:port``; '' when the endpoint has no ``://``."""
    return endpoint.split("://", 1)[0].lower() if "://" in endpoint else ""


def client_keys(transport: TransportConfig) -> ClientKeys | None:
    """The CURVE client keys a process of this configuration uses on tcp, or None (no CURVE).

    ``curve_client_secret`` (+ ``curve_server_key``, or the server's own certificate when this host
    is the server) for a client elsewhere; else, on the agent's own host, the agent's certificate
    (``curve_secret``) both as client and as server key: its local workers need no key of their own.
    """
    t = transport
    if t.curve_client_secret is not None:
        pair = load_secret_certificate(t.curve_client_secret, "transport.curve_client_secret")
        if t.curve_server_key is not None:
            server = load_public_key(t.curve_server_key, "transport.curve_server_key")
        elif t.curve_secret is not None:
            server = load_public_key(t.curve_secret, "transport.curve_secret")
        else:
            raise SecurityError(
                "transport.curve_client_secret is set but transport.curve_server_key is not: set it to "
                "the server's public NAME.key file"
            )
        assert pair.secret is not None
        return ClientKeys(pair.public, pair.secret, server)
    if t.curve_secret is not None:
        own = load_secret_certificate(t.curve_secret, "transport.curve_secret")
        assert own.secret is not None
        return ClientKeys(own.public, own.secret, own.public)
    if t.curve_server_key is not None:
        raise SecurityError(
            "transport.curve_server_key is set but transport.curve_client_secret is not: set it to this "
            "client's NAME.key_secret (made by `edge-agent keys`; its NAME.key goes into the server's "
            "allow-list)"
        )
    return None


def secure_client(sock: zmq.Socket, endpoint: str, transport: TransportConfig) -> HandshakeWatch | None:
    """Before ``sock.connect(endpoint)``: CURVE client options when the endpoint is tcp and the
    transport configures keys (the hub applies CURVE to its tcp sockets only), and a watch that
    logs failed handshakes. Returns the watch (None when nothing was applied)."""
    if scheme(endpoint) != "tcp":
        return None
    keys = client_keys(transport)
    if keys is not None:
        apply_client(sock, keys)
    return HandshakeWatch(sock, endpoint, curve=keys is not None)


def secure_server(
    ctx: zmq.Context,
    sockets: Mapping[str, zmq.Socket],
    endpoints: Mapping[str, str],
    transport: TransportConfig,
) -> ThreadAuthenticator | None:
    """Before the hub binds: CURVE server mode on every socket whose endpoint (``endpoints[key]``)
    is tcp, and the authenticator on ``ctx``, when ``transport.curve_secret`` is set; warnings for
    an insecure exposure that ``allow_insecure`` accepted and for ipc sockets others can reach.
    Returns the authenticator (stop it before destroying ``ctx``) or None without CURVE."""
    for key, ep in endpoints.items():
        if scheme(ep) == "ipc" and ep.split("://", 1)[1].startswith("@"):
            log.warning(
                "transport.%s: %s is in the abstract socket namespace, which every local user can "
                "connect to; use a path in {run} (the agent's private 0700 directory)",
                key,
                ep,
            )
        elif scheme(ep) == "ipc":
            parent = Path(ep.split("://", 1)[1]).parent
            with_mode = stat.S_IMODE(parent.stat().st_mode) if parent.is_dir() else 0
            if with_mode & 0o077:
                log.warning(
                    "transport.%s: %s is in %s (mode %o), which other users can enter; keep ipc "
                    "sockets in {run} (the agent's private 0700 directory) or chmod 700 %s",
                    key,
                    ep,
                    parent,
                    with_mode,
                    parent,
                )
    if transport.curve_secret is None:
        for key, ep in exposed_endpoints(transport, endpoints):
            log.warning(
                "transport.%s: %s accepts unencrypted, unauthenticated connections from the network "
                "(transport.allow_insecure is true); set transport.curve_secret and "
                "transport.curve_allow to require CURVE",
                key,
                ep,
            )
        return None
    server = load_secret_certificate(transport.curve_secret, "transport.curve_secret")
    if transport.curve_allow is None:
        raise SecurityError(
            "transport.curve_secret is set but transport.curve_allow is not: set it to a directory "
            "holding the public NAME.key of every client allowed to connect"
        )
    tcp = [key for key, ep in endpoints.items() if scheme(ep) == "tcp"]
    for key in tcp:
        apply_server(sockets[key], server)
    auth = start_authenticator(ctx, transport.curve_allow, [server.public], "transport.curve_allow")
    log.info("CURVE on %s; clients allowed from %s", ", ".join(tcp) or "no socket", transport.curve_allow)
    return auth


class HandshakeWatch:
    """Logs (ERROR, once a minute at most) when a connecting socket's handshake fails — a refused
    key or a CURVE/plain mismatch would otherwise just look like silence — and counts outcomes.

    Runs a daemon thread on a monitor socket of a shadow of the socket's context, so
    ``ctx.destroy()`` never closes it from the wrong thread: the watch ends when the watched socket
    closes or the context terminates. Create it before ``connect`` so no event is missed.
    """

    EVENTS = (
        zmq.EVENT_HANDSHAKE_SUCCEEDED
        | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | zmq.EVENT_MONITOR_STOPPED
    )

    def __init__(self, sock: zmq.Socket, endpoint: str, curve: bool) -> None:
        self.endpoint, self.curve = endpoint, curve
        self.succeeded = self.failed = 0
        self.last_failure: str | None = None
        address = f"inproc://edge-agent-handshake-{id(sock):x}-{time.monotonic_ns()}"
        sock.monitor(address, self.EVENTS)
        self._pair = zmq.Context.shadow(sock.context.underlying).socket(zmq.PAIR)
        self._pair.setsockopt(zmq.LINGER, 0)
        self._pair.connect(address)
        self._thread = threading.Thread(target=self._run, name="handshake-watch", daemon=True)
        self._thread.start()

    def _explain(self, event: int) -> str:
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (
                "the server refused this client's key: put its public NAME.key into the server's "
                "transport.curve_allow directory (and check the server key is the right one)"
            )
        if self.curve:
            return (
                "CURVE handshake failed: is the server key right (--curve-server-key / "
                "transport.curve_server_key), and does the server use CURVE (transport.curve_secret)?"
            )
        return (
            "handshake failed: the server probably requires CURVE; give this client keys "
            "(--curve-server-key and --curve-client-key, or transport.curve_server_key and "
            "transport.curve_client_secret)"
        )

    def _run(self) -> None:
        last_log = -DENIED_LOG_EVERY_S
        try:
            while True:
                if not self._pair.poll(1000):
                    continue
                event = parse_monitor_message(self._pair.recv_multipart())["event"]
                if event == zmq.EVENT_MONITOR_STOPPED:
                    return
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.succeeded += 1
                    continue
                self.failed += 1
                self.last_failure = self._explain(event)
                now = time.monotonic()
                if now - last_log >= DENIED_LOG_EVERY_S:
                    last_log = now
                    log.error("%s: %s (%d failure(s) so far)", self.endpoint, self.last_failure, self.failed)
        except zmq.ContextTerminated:
            pass
        finally:
            self._pair.close(linger=0)


# ---------------------------------------------------------------- exposure rule


def _host(endpoint: str) -> str:
    """Host part of ``tcp://host:port`` (brackets of ``[::1]`` removed)."""
    rest = endpoint.split("://", 1)[1]
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback_host(host: str) -> bool:
    """True for a host only this machine can reach: 127.0.0.0/8, ::1 (also IPv4-mapped),
    ``localhost``, the ``lo`` interface. Wildcards, other addresses and any other name (which may
    resolve to, or be an interface with, a routable address) are not."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def exposed_endpoints(
    transport: TransportConfig, endpoints: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """(key, endpoint) of every endpoint the hub binds beyond loopback: tcp to a wildcard
    (``*``, ``0.0.0.0``, ``::``), a non-loopback address, an interface or a host name, and any
    transport other than ipc/inproc. ``endpoints``: key → endpoint (default: the transport's own
    templates; ``{run}`` does not matter here). Pure: reads no file, resolves no name."""
    pairs = endpoints if endpoints is not None else {k: getattr(transport, k) for k in ENDPOINT_KEYS}
    out = []
    for key, ep in pairs.items():
        kind = scheme(ep)
        if kind in LOCAL_SCHEMES:
            continue
        if kind == "tcp" and is_loopback_host(_host(ep)):
            continue
        out.append((key, ep))
    return out


def check_exposure(transport: TransportConfig, source: str = "") -> list[tuple[str, str]]:
    """Refuse (ConfigError naming the key and the fix) a configuration that binds beyond loopback
    without CURVE, unless ``allow_insecure``; returns the exposed (key, endpoint) pairs. Also refuses
    CURVE with a tcp ``windows`` endpoint: windowers run on the agent's host and do not speak CURVE
    (keep ``windows`` on ipc). Pure: no file is read."""
    prefix = f"{source}:" if source else ""
    for key in ENDPOINT_KEYS:
        ep = getattr(transport, key)
        if scheme(ep) not in ("tcp", *LOCAL_SCHEMES):
            raise ConfigError(
                f"{prefix}transport.{key}: {ep!r} is not a tcp:// or ipc:// endpoint; use "
                "tcp://host:port or ipc://{run}/name"
            )
    exposed = exposed_endpoints(transport)
    if transport.curve_secret is None and not transport.allow_insecure:
        for key, ep in exposed:
            raise ConfigError(
                f"{prefix}transport.{key}: {ep} binds beyond loopback without encryption or "
                "authentication; set transport.curve_secret (and transport.curve_allow) to require "
                "CURVE, bind to 127.0.0.1 or ipc://, or set transport.allow_insecure: true to accept "
                "plain text on the network"
            )
    if transport.curve_secret is not None and scheme(transport.windows) == "tcp":
        raise ConfigError(
            f"{prefix}transport.windows: {transport.windows} with transport.curve_secret: windowers "
            "do not speak CURVE; keep transport.windows on ipc://{run}/windows"
        )
    return exposed
