"""Clients of the published LVEF stream that show it: a JSON-lines printer and a live bedside
terminal monitor, both on :class:`edge_agent.clients.subscriber.Subscriber`.

Messages follow ``edge_agent.protocol.wire`` (estimate on ``lvef.<stream>.``, status on
``status.<stream>.``, heartbeat on ``heartbeat``). EF is in %, times are s on the *monitor's*
``time.monotonic()``: every age shown (staleness, heartbeat age) is measured from when this process
received a message, never from the publisher's clock, so it holds even when the publisher runs on
another host.
"""

from __future__ import annotations

import io
import json
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from edge_agent.clients.subscriber import T_RECEIVED, Subscriber
from edge_agent.core.reliability import is_reliable

TREND_BEATS = 30  # beat means kept for the sparkline
STALE_BEATS = 3  # an estimate is overdue after this many beat periods (when longer than stale_after_s)
HEARTBEAT_TIMEOUT_S = 3.0  # publisher counted gone after this long without a heartbeat
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
PANEL_WIDTH = 49  # characters: a 30-beat trend line fits, and two panels fit a 100-column terminal
# Clinical EF bands, after the 2021 universal definition of heart failure (HFrEF / HFmrEF /
# HFpEF: reduced ≤ 40 %, mildly reduced 41–49 %, preserved ≥ 50 %), with 40 % itself counted
# mildly reduced so that "reduced" means exactly EF < 40 %, the event P(EF<40) measures.
EF_NORMAL, EF_REDUCED = 50.0, 40.0
P_REDUCED_ALARM, P_REDUCED_WARN = 0.5, 0.2  # P(EF<40) colour thresholds: red, yellow


# ---------------------------------------------------------------- JSON lines


def subscribe_json(
    endpoint: str | Sequence[str],
    count: int | None = None,
    out: TextIO | None = None,
    timeout: float | None = None,
    topics: Sequence[str] = ("",),
    curve_server_key: str | None = None,
    curve_client_key: str | None = None,
) -> int:
    """Write one JSON line per received message (the decoded wire map, pairs as arrays) to ``out``
    (None: the current sys.stdout), flushed per line so a reading script sees it at once.

    Stops after ``count`` messages (None: until Ctrl-C), or when none arrives for ``timeout`` s
    (None: wait for ever). Returns the number of lines written. The receive time is not written:
    the lines are the publisher's messages. The schema refuses NaN and inf, so every line is
    strict JSON (``allow_nan=False`` asserts it). ``curve_*``: as for :class:`Subscriber`.
    """
    out = sys.stdout if out is None else out
    written = 0
    with Subscriber(
        endpoint, topics=topics, curve_server_key=curve_server_key, curve_client_key=curve_client_key
    ) as sub:
        try:
            while count is None or written < count:
                msg = sub.recv(timeout)
                if msg is None:
                    break
                del msg[T_RECEIVED]
                out.write(json.dumps(msg, allow_nan=False, separators=(",", ":")) + "\n")
                out.flush()
                written += 1
        except KeyboardInterrupt:
            pass  # Ctrl-C is the normal way to end an unbounded subscription
    return written


# ---------------------------------------------------------------- monitor state


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
        view = self.streams.setdefault(msg["stream"], StreamView(msg["stream"], first_seen=now))
        if msg["hr_bpm"] is not None:
            view.hr_bpm = msg["hr_bpm"]
        if kind == "status":
            view.status, view.status_at = msg, now
            return
        view.estimate, view.estimate_at = msg, now
        view.trend.append(msg["beat"]["mean"])

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
        view = self.streams[stream]
        signal = (view.status or {}).get("signal")
        if signal in NO_FRAMES and (view.status_at or 0.0) >= (view.estimate_at or 0.0):
            return f"signal {signal}"  # the publisher says so: no need to wait out the stale limit
        since = view.first_seen if view.estimate_at is None else view.estimate_at
        if now - since > view.stale_limit_s(stale_after_s):
            what = "no estimate yet" if view.estimate_at is None else "no estimate"
            return f"{what} for {now - since:.1f} s"
        heartbeat_age = self.heartbeat_age(now)
        if heartbeat_age is None and self.first_message_at is not None:
            if now - self.first_message_at > HEARTBEAT_TIMEOUT_S:
                return "no publisher heartbeat"
        elif heartbeat_age is not None and heartbeat_age > HEARTBEAT_TIMEOUT_S:
            return f"publisher silent for {heartbeat_age:.1f} s"
        return None

    def stale(self, stream: str, now: float, stale_after_s: float = 5.0) -> bool:
        """True when :meth:`stale_reason` gives a reason."""
        return self.stale_reason(stream, now, stale_after_s) is not None


# ---------------------------------------------------------------- rendering


def ef_category(ef: float) -> str:
    """EF % → clinical band: "normal" (≥ 50), "mildly reduced" (40–49), "reduced" (< 40)."""
    if ef >= EF_NORMAL:
        return "normal"
    return "mildly reduced" if ef >= EF_REDUCED else "reduced"


_CATEGORY_STYLE = {"normal": "green", "mildly reduced": "yellow", "reduced": "bold red"}
_CATEGORY_BAND = {"normal": "≥ 50 %", "mildly reduced": "40–49 %", "reduced": "< 40 %"}


def _p_style(p: float) -> str:
    if p >= P_REDUCED_ALARM:
        return "bold red"
    return "yellow" if p >= P_REDUCED_WARN else "green"


def sparkline(values: Sequence[float]) -> str:
    """One character per value, ▁ (the minimum) to █ (the maximum); all ▄ when the values are equal."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi == lo:
        return SPARK_BLOCKS[len(SPARK_BLOCKS) // 2 - 1] * len(values)
    top = len(SPARK_BLOCKS) - 1
    return "".join(SPARK_BLOCKS[round((v - lo) / (hi - lo) * top)] for v in values)


# Seven-segment digits, three rows each: a "big number" that stays legible as plain ASCII.
_DIGITS = {
    "0": (" _ ", "| |", "|_|"),
    "1": ("   ", "  |", "  |"),
    "2": (" _ ", " _|", "|_ "),
    "3": (" _ ", " _|", " _|"),
    "4": ("   ", "|_|", "  |"),
    "5": (" _ ", "|_ ", " _|"),
    "6": (" _ ", "|_ ", "|_|"),
    "7": (" _ ", "  |", "  |"),
    "8": (" _ ", "|_|", "|_|"),
    "9": (" _ ", "|_|", " _|"),
    "-": ("   ", " _ ", "   "),
}


def big_number(text: str) -> str:
    """Digits (and '-') → three lines of seven-segment ASCII."""
    return "\n".join("".join(_DIGITS[c][row] for c in text) for row in range(3))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _fmt_hr(hr: float | None) -> str:
    return "HR — bpm" if hr is None else f"HR {hr:.0f} bpm"


def _estimate_lines(est: dict[str, Any], view: StreamView, alarm: bool) -> list[RenderableType]:
    """The panel's lines for the latest estimate; ``alarm``: it is stale, shown dimmed."""
    lines: list[RenderableType] = []
    running, beat = est["running"], est["beat"]
    category = ef_category(running["mean"])
    lo, hi = running["ci90"]
    low_confidence = not est["reliable"]
    if low_confidence:
        # The model's interval is only honest on inputs like its training data: withhold it.
        lines.append(Text(" LOW CONFIDENCE ", style="bold yellow reverse"))
        lines.append(Text("input unlike the training data", style="yellow"))
        lines.append(Text(f"OOD score {est['ood_score']:.1f} (familiar ≤ 1)", style="yellow"))
    head = Table.grid(padding=(0, 2))
    head.add_row(
        # Dimmed when stale (the last number known, not the current one) or low confidence.
        Text(big_number(f"{running['mean']:.0f}"), style="dim" if alarm or low_confidence else "bold"),
        Text.assemble(
            ("LVEF ", "bold"),
            (f"{running['mean']:.1f} %", "dim" if alarm or low_confidence else "bold"),
            "\ninterval withheld: low confidence"
            if low_confidence
            else f"\n90 % interval {lo:.1f}–{hi:.1f} %",
            f"\nrunning over {_count(running['n_beats'], 'beat')}",
        ),
    )
    lines.append(head)
    lines.append(
        Text.assemble(
            (category, _CATEGORY_STYLE[category]),
            f" ({_CATEGORY_BAND[category]})",
            "   ",
            _fmt_hr(view.hr_bpm),
        )
    )
    lines.append(
        Text.assemble(
            "P(EF<40) ",
            (f"{running['p_ef_lt_40']:.2f}", _p_style(running["p_ef_lt_40"])),
            " running · ",
            (f"{beat['p_ef_lt_40']:.2f}", _p_style(beat["p_ef_lt_40"])),
            " beat",
        )
    )
    blo, bhi = beat["ci90"]
    beat_interval = f"[{blo:.1f}–{bhi:.1f}]" if is_reliable(est["beat_ood_score"]) else "(low confidence)"
    beat_line = Text(f"beat #{est['seq']} {beat['mean']:.1f} % {beat_interval}")
    if beat["multimodal"]:
        beat_line.append(" multimodal", style="yellow")
    lines.append(beat_line)
    trend = list(view.trend)
    # Oldest beat left; the labels give the range the blocks span (▁ = min, █ = max).
    lines.append(Text.assemble("trend ", (sparkline(trend), "cyan"), f" {min(trend):.0f}–{max(trend):.0f} %"))
    lines.append(Text(f"latency {est['latency_ms']:.0f} ms · {est['backend']}", style="dim"))
    if "ef" in est.get("truth", {}):
        lines.append(Text(f"simulator truth EF {est['truth']['ef']:.1f} %", style="dim"))
    return lines


# Signal states in which no estimate can come, and how the monitor says so.
NO_FRAMES = {
    "lost": "SIGNAL LOST — no frames",
    "stale": "SIGNAL STALE — no recent window",
    "no_sector": "NO ULTRASOUND SECTOR in the frames — check the source and its region",
}


def _stream_panel(view: StreamView, state: MonitorState, now: float, stale_after_s: float) -> Panel:
    reason = state.stale_reason(view.stream, now, stale_after_s)
    signal = None if view.status is None else view.status["signal"]
    lines: list[RenderableType] = []
    if reason is not None:
        lines.append(Text(f" STALE — {reason} ", style="bold red reverse"))
    if signal in NO_FRAMES:
        lines.append(Text(f" {NO_FRAMES[signal]} ", style="bold red reverse"))
    alarm = bool(lines)

    est = view.estimate
    if est is None:
        lines.append(Text("waiting for the first estimate…", style="dim"))
    else:
        lines += _estimate_lines(est, view, alarm)
    if view.status is not None:
        st = view.status
        lines.append(
            Text(
                f"signal {st['signal']} · {st['fps']:.1f} fps", style="dim" if st["signal"] == "ok" else "red"
            )
        )
        lines.append(
            Text(
                f"dropped {_count(st['windows_dropped'], 'window')}, {_count(st['frames_dropped'], 'frame')}"
            )
        )
    return Panel(
        Group(*lines),
        title=Text(view.stream, style="bold"),
        border_style="red" if alarm else "green",
        width=PANEL_WIDTH,
    )


def _footer(state: MonitorState, now: float) -> Text:
    parts: list[tuple[str, str] | str] = []
    if not state.publishers:
        parts.append(("no publisher heartbeat yet", "red"))
    for host, (t, body) in sorted(state.publishers.items()):
        age = now - t
        parts.append(
            (
                f"{host} (pid {body['pid']}) heartbeat {age:.1f} s ago",
                "red" if age > HEARTBEAT_TIMEOUT_S else "dim",
            )
        )
    statuses = [v.status for v in state.streams.values() if v.status is not None]
    windows = sum(s["windows_dropped"] for s in statuses)
    frames = sum(s["frames_dropped"] for s in statuses)
    dropped = f"dropped {_count(windows, 'window')}, {_count(frames, 'frame')}"
    parts.append(f"{_count(len(state.streams), 'stream')} · {dropped}")
    text = Text()
    for i, part in enumerate(parts):
        text.append(" · " if i else "")
        text.append(*((part,) if isinstance(part, str) else part))
    return text


def render(state: MonitorState, now: float, stale_after_s: float = 5.0) -> RenderableType:
    """The monitor screen at ``now`` s: one panel per stream (sorted by id) and a footer line."""
    if not state.streams:
        return Group(Text("waiting for estimates…", style="dim"), _footer(state, now))
    panels = [_stream_panel(state.streams[s], state, now, stale_after_s) for s in sorted(state.streams)]
    return Group(Columns(panels), _footer(state, now))


def screenshot_svg(
    messages: Sequence[dict[str, Any]],
    at: float,
    stale_after_s: float = 5.0,
    title: str = "edge-agent monitor",
) -> str:
    """The monitor screen as it stood at ``at`` (receive clock, s), drawn as an SVG document.

    ``messages``: received messages (each with its receive time); those received after ``at`` are
    left out, so a run can be pictured at any moment after it ended.
    """
    state = MonitorState()
    for msg in messages:
        if msg[T_RECEIVED] <= at:
            state.apply(msg, msg[T_RECEIVED])
    columns = max(1, min(len(state.streams), 2)) * (PANEL_WIDTH + 1) + 1
    console = Console(record=True, width=max(columns, 80), file=io.StringIO(), force_terminal=True)
    console.print(render(state, at, stale_after_s))
    # rich names web fonts on a CDN; a bedside network has none, and the monospace fallback suffices.
    return re.sub(r"@font-face \{.*?\}\s*", "", console.export_svg(title=title), flags=re.S)


# ---------------------------------------------------------------- live loop


def _unfamiliar(msg: dict[str, Any]) -> str:
    """Why an estimate is low confidence, for a person: its out-of-distribution score."""
    return f"input unlike the training data, OOD score {msg['ood_score']:.1f} (familiar ≤ 1)"


def estimate_line(msg: dict[str, Any]) -> str:
    """One log line for an estimate: stream, seq, running LVEF with 90 % interval (or LOW CONFIDENCE
    in its place), beat, P(EF<40), HR."""
    running, beat = msg["running"], msg["beat"]
    lo, hi = running["ci90"]
    interval = f"[90 % {lo:.1f}–{hi:.1f}]" if msg["reliable"] else f"LOW CONFIDENCE, {_unfamiliar(msg)}"
    return (
        f"{msg['stream']} #{msg['seq']}: LVEF {running['mean']:.1f} % {interval} "
        f"({_count(running['n_beats'], 'beat')}, {ef_category(running['mean'])}) · "
        f"beat {beat['mean']:.1f} % · "
        f"P(EF<40) {running['p_ef_lt_40']:.2f} · {_fmt_hr(msg['hr_bpm'])} · {msg['latency_ms']:.0f} ms"
    )


def _messages_until(sub: Subscriber, until: float) -> Iterator[dict[str, Any]]:
    """Messages received before ``until`` s (time.monotonic())."""
    while (timeout := until - time.monotonic()) > 0:
        msg = sub.recv(timeout)
        if msg is None:
            return
        yield msg


def run_monitor(
    endpoints: str | Sequence[str],
    stale_after_s: float = 5.0,
    refresh_hz: float = 4.0,
    duration_s: float | None = None,
    console: Console | None = None,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    curve_server_key: str | None = None,
    curve_client_key: str | None = None,
) -> MonitorState:
    """Show the live monitor for ``duration_s`` s (None: until Ctrl-C) and return the final state.

    On a terminal: a rich Live screen redrawn ``refresh_hz`` times a second. Otherwise (output piped
    or to a file): one line per new estimate, plus a line when a stream turns stale or recovers, its
    signal changes, an invalid message arrives or messages went missing, so that logs stay useful.
    ``on_message`` gets every message received, ``on_tick`` is called once per refresh (the demo
    supervises its agent there). ``curve_*``: as for :class:`Subscriber`.
    """
    if refresh_hz <= 0:
        raise ValueError(f"refresh_hz: must be > 0, got {refresh_hz}")
    console = console or Console()
    state = MonitorState()
    period = 1.0 / refresh_hz
    end = None if duration_s is None else time.monotonic() + duration_s
    with Subscriber(endpoints, curve_server_key=curve_server_key, curve_client_key=curve_client_key) as sub:
        try:
            if console.is_terminal:
                with Live(console=console, auto_refresh=False) as live:
                    while end is None or time.monotonic() < end:
                        tick = time.monotonic() + period
                        for msg in _messages_until(sub, tick if end is None else min(tick, end)):
                            state.apply(msg, msg[T_RECEIVED])
                            if on_message is not None:
                                on_message(msg)
                        live.update(render(state, time.monotonic(), stale_after_s), refresh=True)
                        if on_tick is not None:
                            on_tick()
            else:
                _log_lines(sub, state, console, stale_after_s, period, end, on_message, on_tick)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a bedside monitor is closed
    return state


def _log_lines(
    sub: Subscriber,
    state: MonitorState,
    console: Console,
    stale_after_s: float,
    period: float,
    end: float | None,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    on_tick: Callable[[], None] | None = None,
) -> None:
    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    say(f"monitor: listening on {', '.join(sub.endpoints)}")
    stale: set[str] = set()
    invalid_seen = missed_seen = 0
    while end is None or time.monotonic() < end:
        tick = time.monotonic() + period
        for msg in _messages_until(sub, tick if end is None else min(tick, end)):
            view = state.streams.get(msg.get("stream", ""))
            signal_before = None if view is None or view.status is None else view.status["signal"]
            state.apply(msg, msg[T_RECEIVED])
            if on_message is not None:
                on_message(msg)
            if msg["kind"] == "estimate":
                say(estimate_line(msg))
            elif msg["kind"] == "status" and msg["signal"] != signal_before:
                say(f"{msg['stream']}: signal {msg['signal']}")
        if sub.invalid > invalid_seen:
            say(f"monitor: {sub.invalid - invalid_seen} invalid message(s), last: {sub.last_error}")
            invalid_seen = sub.invalid
        if sub.missed > missed_seen:  # this monitor read too slowly: ZeroMQ dropped for it alone
            say(f"monitor: {sub.missed - missed_seen} message(s) missed (publisher's pub_seq skipped)")
            missed_seen = sub.missed
        if on_tick is not None:
            on_tick()
        now = time.monotonic()
        for stream in sorted(state.streams):
            reason = state.stale_reason(stream, now, stale_after_s)
            if reason is not None and stream not in stale:
                stale.add(stream)
                say(f"{stream}: STALE — {reason}")
            elif reason is None and stream in stale:
                stale.discard(stream)
                say(f"{stream}: recovered")
