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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zmq

READY, RESULT = b"READY", b"RESULT"


@dataclass(frozen=True)
class TransportConfig:
    """Endpoints and queue limits (YAML section ``transport``).

    ``{run}`` in an endpoint is the agent's private run directory (ipc sockets live there).
    windows: windowers → hub; workers: hub ↔ workers; publish: hub → subscribers. For workers on
    other hosts bind ``workers`` to e.g. ``tcp://0.0.0.0:5557``; for remote monitors ``publish`` to
    ``tcp://0.0.0.0:5556``.
    window_hwm: windows a windower may hold for the hub before it drops (and counts) one.
    pub_hwm: messages the hub queues per subscriber before ZeroMQ drops for that subscriber.
    linger_ms: how long a closing socket tries to deliver pending messages.
    """

    windows: str = "ipc://{run}/windows"
    workers: str = "ipc://{run}/workers"
    publish: str = "tcp://127.0.0.1:5556"
    window_hwm: int = 4
    pub_hwm: int = 1000
    linger_ms: int = 200


def endpoint(template: str, run_dir: str | Path) -> str:
    """Fill ``{run}`` into an endpoint template."""
    return template.replace("{run}", str(run_dir))


def socket(ctx: zmq.Context, kind: int, cfg: TransportConfig, hwm: int | None = None) -> zmq.Socket:
    """A socket with this project's options: bounded queues both ways, short linger."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, cfg.linger_ms)
    if hwm is not None:
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
    return sock
