"""What a client knows of the published streams, built from decoded messages: the latest estimate
and status per stream, the beat trend, the publishers' heartbeats, and why a stream's numbers are
not current. Pure (no sockets, no clock): times are receive times, s on the client's
``time.monotonic()``, so ages hold even when the publisher runs on another host. The terminal
monitor draws it; :mod:`edge_agent.clients.alarms` raises alarms from it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

TREND_BEATS = 30  # beat means kept for the trend
STALE_BEATS = 3  # an estimate is overdue after this many beat periods (when longer than stale_after_s)
HEARTBEAT_TIMEOUT_S = 3.0  # publisher counted gone after this long without a heartbeat
# Signal states in which no estimate can come: the stream is stale at once, without waiting.
NO_FRAMES = ("lost", "stale", "no_sector")


@dataclass
class StreamView:
    """What the monitor knows of one stream; times are receive times, s (monitor's time.monotonic()).

    ``estimate``/``status``: the latest decoded bodies (None until one arrives); ``trend``: the
    last TREND_BEATS beat means, EF %; ``hr_bpm``: latest heart rate from either message.
    """

    stream: str
    first_seen: float
    estimate: dict[str, Any] | None = None
    estimate_at: float | None = None
    status: dict[str, Any] | None = None
    status_at: float | None = None
    hr_bpm: float | None = None
    trend: deque[float] = field(default_factory=lambda: deque(maxlen=TREND_BEATS))

    @property
    def last_heard(self) -> float:
        """Receive time of the stream's latest message of any kind (its first, before an estimate)."""
        return max(self.first_seen, self.estimate_at or 0.0, self.status_at or 0.0)

    def stale_limit_s(self, stale_after_s: float) -> float:
        """Seconds without an estimate before the stream is stale: stale_after_s, or STALE_BEATS
        beat periods at the current heart rate when that is longer (slow hearts beat rarely)."""
        if self.hr_bpm is None:
            return stale_after_s
        return max(stale_after_s, STALE_BEATS * 60.0 / self.hr_bpm)


@dataclass
class MonitorState:
    """Everything the monitor shows, built from decoded messages; pure (no sockets, no clock).

    ``publishers``: host → (receive time of its latest heartbeat, s; heartbeat body).
    ``first_message_at``: receive time of the first message, s (None before any).
    """

    streams: dict[str, StreamView] = field(default_factory=dict)
    publishers: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    first_message_at: float | None = None

    def apply(self, msg: dict[str, Any], now: float) -> None:
        """Fold in one decoded message (estimate, status or heartbeat) received at ``now`` s."""
        if self.first_message_at is None:
            self.first_message_at = now
        kind = msg.get("kind")
        if kind == "heartbeat":
            self.publishers[msg["host"]] = (now, msg)
            return
        if kind not in ("estimate", "status"):
            raise ValueError(f"kind: expected estimate, status or heartbeat, got {kind!r}")
        view = self.known(msg["stream"], now)
        if msg["hr_bpm"] is not None:
            view.hr_bpm = msg["hr_bpm"]
        if kind == "status":
            view.status, view.status_at = msg, now
            return
        view.estimate, view.estimate_at = msg, now
        view.trend.append(msg["beat"]["mean"])

    def known(self, stream: str, now: float) -> StreamView:
        """The stream's view, made (first seen at ``now``) when it has none: a stream known from
        elsewhere (a recording) counts as heard at ``now`` and goes stale if nothing follows."""
        return self.streams.setdefault(stream, StreamView(stream, first_seen=now))

    def heartbeat_age(self, now: float) -> float | None:
        """Seconds since the oldest publisher's latest heartbeat (None before any heartbeat)."""
        if not self.publishers:
            return None
        return now - min(t for t, _ in self.publishers.values())

    def stale_reason(self, stream: str, now: float, stale_after_s: float = 5.0) -> str | None:
        """Why ``stream``'s numbers cannot be trusted as current at ``now`` s, or None when they can.

        Stale when the stream's latest status (newer than its latest estimate) reports a signal in
        NO_FRAMES (lost, stale, no_sector), when no estimate arrived for longer than
        ``view.stale_limit_s(stale_after_s)`` (counted from the stream's first message until its first
        estimate), or when a publisher's heartbeat is older than HEARTBEAT_TIMEOUT_S (counted from the
        first message until the first heartbeat).
        """
        return self.stream_problem(stream, now, stale_after_s) or self.publisher_problem(now)

    def stream_problem(self, stream: str, now: float, stale_after_s: float = 5.0) -> str | None:
        """The stream's own part of :meth:`stale_reason`: a signal without frames, or no estimate."""
        view = self.streams[stream]
        signal = (view.status or {}).get("signal")
        if signal in NO_FRAMES and (view.status_at or 0.0) >= (view.estimate_at or 0.0):
            return f"signal {signal}"  # the publisher says so: no need to wait out the stale limit
        since = view.first_seen if view.estimate_at is None else view.estimate_at
        if now - since > view.stale_limit_s(stale_after_s):
            what = "no estimate yet" if view.estimate_at is None else "no estimate"
            return f"{what} for {now - since:.1f} s"
        return None

    def publisher_problem(self, now: float, timeout_s: float = HEARTBEAT_TIMEOUT_S) -> str | None:
        """Why the publisher counts as gone at ``now`` (no heartbeat for ``timeout_s``), or None."""
        heartbeat_age = self.heartbeat_age(now)
        if heartbeat_age is None and self.first_message_at is not None:
            if now - self.first_message_at > timeout_s:
                return "no publisher heartbeat"
        elif heartbeat_age is not None and heartbeat_age > timeout_s:
            return f"publisher silent for {heartbeat_age:.1f} s"
        return None

    def stale(self, stream: str, now: float, stale_after_s: float = 5.0) -> bool:
        """True when :meth:`stale_reason` gives a reason."""
        return self.stale_reason(stream, now, stale_after_s) is not None
