"""ZeroMQ socket roles and options: who binds, who connects, high-water marks, linger.

    windower (PUSH, connects) ──► hub windows (PULL, binds)   windows and windower status
    worker (DEALER, connects) ◄─► hub workers (ROUTER, binds)  READY credit, windows, results
    hub publish (XPUB, binds) ──► monitors, subscribers (SUB, connect)

The hub binds everything, so windowers and workers on other hosts only need its address (tcp),
and one host uses ipc sockets in a private run directory by default. High-water marks are set on
purpose: a windower holds at most ``window_hwm`` windows for the hub (then it counts a drop
instead of growing), a worker is sent one window at a time (credit), and the hub keeps at most
``queue_per_stream`` waiting windows per stream, dropping the oldest (counted): memory is bounded
whatever a slow worker does. LINGER is short so a stopping process never hangs on unsent messages.
Every socket also caps what a peer may send it (MAXMSGSIZE): a larger message disconnects that peer
instead of making this process allocate whatever size the peer announced.

tcp endpoints bound beyond loopback need CURVE (``curve_secret``) or an explicit
``allow_insecure``; see :mod:`edge_agent.protocol.security`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import zmq

from edge_agent.protocol.wire import MAX_SHAPE, WINDOW_SHAPE

# The largest message part wire.py accepts is a window's pixels at MAX_SHAPE (uint8): 64 MiB. The
# default cap admits every valid message and nothing larger; headers and bodies (<= 256 KiB) and
# result samples (<= 16 KiB) are far below it. The floor is one 32 x 112 x 112 window (392 KiB).
MAX_MESSAGE_BYTES = math.prod(MAX_SHAPE)
MIN_MESSAGE_BYTES = math.prod(WINDOW_SHAPE)


@dataclass(frozen=True)
class TransportConfig:
    """Endpoints and queue limits (YAML section ``transport``).

    ``{run}`` in an endpoint is the agent's private run directory (ipc sockets live there).
    windows: windowers → hub; workers: hub ↔ workers; publish: hub → subscribers. For workers on
    other hosts bind ``workers`` to e.g. ``tcp://0.0.0.0:5557``; for remote monitors ``publish`` to
    ``tcp://0.0.0.0:5556`` — with CURVE (curve_secret, curve_allow) or allow_insecure, else the
    configuration is refused. ``windows`` stays on ipc when CURVE is on (windowers are local).
    window_hwm: windows a windower may hold for the hub before it drops (and counts) one.
    pub_hwm: messages the hub queues per subscriber before ZeroMQ drops for that subscriber.
    linger_ms: how long a closing socket tries to deliver pending messages.
    max_message_bytes: largest message part (bytes) any socket accepts from a peer; a peer that
        sends more is disconnected. Default 67108864 (64 MiB, a window at wire.MAX_SHAPE, the
        largest part wire.py accepts); at least 401408 (one 32 x 112 x 112 uint8 window). With
        only 112 x 112 windows, 1048576 bounds each queued message to 1 MiB.
    curve_secret: path of the agent's secret certificate (NAME.key_secret from ``edge-agent keys``);
        set: the hub encrypts and authenticates every tcp socket it binds with CURVE. null: no CURVE.
    curve_allow: directory of the public certificates (*.key) of the clients allowed to connect
        (monitors, remote workers); needed with curve_secret. Read when the hub starts.
    curve_server_key: for a client (a remote ``edge-agent worker``): path of the server's public
        certificate (its NAME.key).
    curve_client_secret: for a client: path of this client's secret certificate (its NAME.key is in
        the server's curve_allow directory). Without it, the agent's own workers use curve_secret.
    allow_insecure: accept binding tcp beyond loopback (0.0.0.0, *, ::, a routable address or a
        host name) without CURVE; the hub then logs a WARNING. false: such a configuration is refused.
    """

    windows: str = "ipc://{run}/windows"
    workers: str = "ipc://{run}/workers"
    publish: str = "tcp://127.0.0.1:5556"
    window_hwm: int = 4
    pub_hwm: int = 1000
    linger_ms: int = 200
    max_message_bytes: int = MAX_MESSAGE_BYTES
    curve_secret: str | None = None
    curve_allow: str | None = None
    curve_server_key: str | None = None
    curve_client_secret: str | None = None
    allow_insecure: bool = False

    def __post_init__(self) -> None:
        if not MIN_MESSAGE_BYTES <= self.max_message_bytes <= 2**62:
            raise ValueError(
                f"max_message_bytes: {self.max_message_bytes} is out of range; use at least "
                f"{MIN_MESSAGE_BYTES} (one 32 x 112 x 112 uint8 window), default {MAX_MESSAGE_BYTES}"
            )


def endpoint(template: str, run_dir: str | Path) -> str:
    """Fill ``{run}`` into an endpoint template."""
    return template.replace("{run}", str(run_dir))


def socket(ctx: zmq.Context, kind: int, cfg: TransportConfig, hwm: int | None = None) -> zmq.Socket:
    """A socket with this project's options: bounded queues both ways, short linger, and a cap
    (``cfg.max_message_bytes``) on each message part a peer may send it."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, cfg.linger_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes)
    if hwm is not None:
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
    return sock
