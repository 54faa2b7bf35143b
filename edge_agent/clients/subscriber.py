"""The one way a client reads the published LVEF stream: :class:`Subscriber` (SUB socket, wire
decoding, duplicates and losses counted) and :func:`classify_seq` (how an estimate's number follows
its stream's previous one). The monitor, the recorder and the Prometheus exporter each build on
this module and on no other client.

Messages follow ``edge_agent.protocol.wire`` (estimate on ``lvef.<stream>.``, status on
``status.<stream>.``, heartbeat on ``heartbeat``); each comes back with its receive time on this
process's ``time.monotonic()`` under :data:`T_RECEIVED`.

    with Subscriber("tcp://edge-01:5556") as sub:
        while (msg := sub.recv(timeout=1.0)) is not None:
            print(msg["kind"], msg.get("stream"), msg[T_RECEIVED])
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import zmq

from edge_agent.protocol import security, wire
from edge_agent.protocol.transport import TransportConfig

# Key the Subscriber adds to every returned message: its receive time, s (time.monotonic()). The
# leading underscore cannot clash with the schema: wire field names are identifiers without one.
T_RECEIVED = "_t_received"
DEDUPE_CAPACITY = 4096  # estimates remembered for duplicate detection (~1 h of one stream at 70 bpm)


class Subscriber:
    """SUB socket connected to one or more publisher endpoints (``tcp://host:port``, ``ipc://path``).

    ``topics``: prefixes to subscribe to ("" = everything; ``"lvef."`` = estimates only; ``"lvef.bed1."``
    bed 1's estimates alone).
    ``rcvhwm``: messages queued before ZeroMQ drops new ones (a monitor wants the latest, not all).
    ``context``: shared ZeroMQ context; default the process-wide ``zmq.Context.instance()``.
    ``curve_server_key``, ``curve_client_key``: paths of the publisher's public certificate
    (NAME.key) and this subscriber's secret certificate (NAME.key_secret, its NAME.key in the
    publisher's ``transport.curve_allow``): both or neither; given, every link is CURVE-encrypted.
    ``handshakes``: a :class:`~edge_agent.protocol.security.HandshakeWatch` over tcp endpoints (it logs and
    counts failed handshakes: a refused key or a missing CURVE would otherwise just be silence).

    Counters: ``received`` (messages returned by :meth:`recv`), ``duplicates`` (messages dropped
    because already returned: the publisher's last-value cache resends its latest), ``missed``
    (messages the publisher sent that never arrived: its per-topic ``pub_seq`` skipped — this
    subscriber read too slowly and ZeroMQ dropped them at the high-water mark), ``invalid``
    (messages refused by ``wire.decode_published``; the last refusal's text is in
    ``last_error``). A bad message is counted and skipped, never raised.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        topics: Sequence[str] = ("",),
        rcvhwm: int = 1000,
        context: zmq.Context | None = None,
        curve_server_key: str | None = None,
        curve_client_key: str | None = None,
    ) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not self.endpoints:
            raise ValueError("endpoints: give at least one, e.g. tcp://127.0.0.1:5556")
        if (curve_server_key is None) != (curve_client_key is None):
            raise security.SecurityError(
                "CURVE needs both the server's public key (--curve-server-key NAME.key) and this "
                "client's secret key (--curve-client-key NAME.key_secret), or neither"
            )
        keys = None
        if curve_server_key is not None and curve_client_key is not None:
            keys = security.client_keys_from_files(curve_server_key, curve_client_key)
        self.received = self.duplicates = self.missed = self.invalid = 0
        self._last_pub: dict[tuple[str, str | None], int] = {}  # (kind, stream) → last pub_seq
        self.last_error: str | None = None
        # (stream, seq, t_published) of recent estimates, oldest first. The publisher's
        # last-value cache re-sends the identical message, so all three match; a restarted
        # publisher reuses seq numbers but not t_published, and its estimates are kept.
        self._seen: OrderedDict[tuple[str, int, float], None] = OrderedDict()
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
        for topic in topics:
            self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode("ascii"))
        if keys is not None:
            security.apply_client(self._socket, keys)
        tcp = [e for e in self.endpoints if security.scheme(e) == "tcp"]
        self.handshakes = (
            security.HandshakeWatch(self._socket, ", ".join(tcp), curve=keys is not None) if tcp else None
        )
        try:
            for endpoint in self.endpoints:
                self._socket.connect(endpoint)
        except zmq.ZMQError as e:
            self._socket.close()
            raise ValueError(f"endpoint {endpoint!r}: {e}; expected tcp://host:port or ipc://path") from None

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Next new, valid message as ``wire.decode_published`` returns it, plus ``T_RECEIVED``
        (receive time, s, time.monotonic()); None when none arrives within ``timeout`` s
        (None: wait for ever; 0: only what is already queued)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_ms = None if deadline is None else math.ceil(max(0.0, deadline - time.monotonic()) * 1000)
            if not self._socket.poll(wait_ms):
                return None
            parts = self._socket.recv_multipart(copy=False)
            t_received = time.monotonic()
            try:
                msg = wire.decode_published(parts)
            except wire.WireError as e:
                self.invalid += 1
                self.last_error = str(e)
                continue
            if self._repeated(msg):
                self.duplicates += 1
                continue
            self.received += 1
            msg[T_RECEIVED] = t_received
            return msg

    def _repeated(self, msg: dict[str, Any]) -> bool:
        """True for a message already returned; counts the ones that went missing before it."""
        n = msg.get("pub_seq")
        if n is None:  # a publisher that does not number its messages
            return msg["kind"] == "estimate" and self._already_seen(msg)
        key = (msg["kind"], msg.get("stream"))
        last = self._last_pub.get(key)
        if last is not None:
            if n == last:
                return True  # the last-value cache's resend of what we already have
            if n > last + 1:
                self.missed += n - last - 1
            # n < last: the publisher restarted and numbers from 0 again
        self._last_pub[key] = n
        return False

    def _already_seen(self, estimate: dict[str, Any]) -> bool:
        key = (estimate["stream"], estimate["seq"], estimate["t_published"])
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > DEDUPE_CAPACITY:
            self._seen.popitem(last=False)
        return False

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subscriber_keys(
    endpoints: Sequence[str],
    transport: TransportConfig | None,
    curve_server_key: str | None,
    curve_client_key: str | None,
) -> tuple[str | None, str | None]:
    """The CURVE (server key, client key) a client of the agent subscribes with: the ones given, or
    for the agent's own clients (``transport`` given, ``curve_secret`` set, tcp endpoints) the
    agent's certificate, which the hub admits (the certificate holds the public key too)."""
    own = None if transport is None else transport.curve_secret
    if own is not None and curve_client_key is None and all(e.startswith("tcp://") for e in endpoints):
        return own, own
    return curve_server_key, curve_client_key


class SeqStep(NamedTuple):
    """How an estimate's seq follows the stream's previous one.

    kind: ``first`` (no previous one), ``next`` (previous + 1), ``gap`` (seq numbers skipped),
    ``restart`` (at or below the previous: the windower restarted and numbers from 0 again).
    missing: estimates never received: the skipped numbers of a gap, or for a restart the new
    numbering's first ``seq`` numbers (0 when it restarts at 0).
    """

    kind: str
    missing: int


def classify_seq(prev_seq: int | None, seq: int) -> SeqStep:
    """Classify a new (not duplicate) estimate's ``seq`` against the stream's previous ``prev_seq``."""
    if prev_seq is None:
        return SeqStep("first", 0)
    if seq == prev_seq + 1:
        return SeqStep("next", 0)
    if seq > prev_seq + 1:
        return SeqStep("gap", seq - prev_seq - 1)
    return SeqStep("restart", seq)
