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
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from edge_agent.clients.alarms import AGENT, Alarm, AlarmBoard, AlarmConfig, AlarmEvent, ef_category
from edge_agent.clients.state import HEARTBEAT_TIMEOUT_S, MonitorState, StreamView
from edge_agent.clients.subscriber import T_RECEIVED, Subscriber
from edge_agent.core.reliability import is_reliable

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
PANEL_WIDTH = 49  # characters: a 30-beat trend line fits, and two panels fit a 100-column terminal
TREND_SCALE = (15.0, 85.0)  # EF % the trend's blocks span, fixed so that 40 and 50 % stay in place
P_REDUCED_ALARM, P_REDUCED_WARN = 0.5, 0.2  # P(EF<40) colour thresholds: red, yellow
NOTICE = "NOT FOR CLINICAL USE — research prototype; the shipped model is trained on simulated echo"


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


# ---------------------------------------------------------------- rendering


_CATEGORY_STYLE = {"normal": "green", "mildly reduced": "yellow", "reduced": "bold red"}
_CATEGORY_BAND = {"normal": "≥ 50 %", "mildly reduced": "41–49 %", "reduced": "≤ 40 %"}
_PRIORITY_STYLE = {"high": "bold red reverse", "medium": "bold yellow reverse", "low": "yellow"}


def _p_style(p: float) -> str:
    if p >= P_REDUCED_ALARM:
        return "bold red"
    return "yellow" if p >= P_REDUCED_WARN else "green"


def sparkline(values: Sequence[float], scale: tuple[float, float] | None = None) -> str:
    """One character per value, ▁ (the minimum) to █ (the maximum); all ▄ when the values are equal.
    ``scale``: (lo, hi) the blocks span instead, values outside it clipped."""
    if not values:
        return ""
    lo, hi = scale or (min(values), max(values))
    values = [min(max(v, lo), hi) for v in values]
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
    # Oldest beat left, on a fixed 15–85 % scale, each block in its clinical band's colour.
    blocks = Text("trend ")
    for block, ef in zip(sparkline(trend, TREND_SCALE), trend, strict=True):
        blocks.append(block, _CATEGORY_STYLE[ef_category(ef)])
    blocks.append(f" {min(trend):.0f}–{max(trend):.0f} %")
    lines.append(blocks)
    lines.append(Text(f"latency {est['latency_ms']:.0f} ms · {est['backend']}", style="dim"))
    if "ef" in est.get("truth", {}):
        lines.append(Text(f"simulator truth EF {est['truth']['ef']:.1f} %", style="dim"))
    return lines


# How the monitor words each alarm (its message says the rest).
SIGNAL_BANNERS = {
    "lost": "SIGNAL LOST — no frames",
    "stale": "SIGNAL STALE — no recent window",
    "blank": "SIGNAL BLANK — no image content",
    "frozen": "SIGNAL FROZEN — the image does not change",
    "saturated": "SIGNAL SATURATED",
    "no_sector": "NO ULTRASOUND SECTOR in the frames — check the source and its region",
}
# How the bed's windows are timed (status beat_source): what the heart rate and the beats rest on.
TIMING = {
    "ecg": "beats ECG-gated",
    "area": "beats image-gated",
    "principal": "beats image-gated (weak swing)",
    "fixed": "no beats found: fixed windows",
}
_NUMBERS_OLD = ("signal", "stale", "publisher_gone")  # alarms that leave the shown numbers out of date


def banner(alarm: Alarm, signal: str | None = None) -> str:
    """The words the monitor shows (and logs) for an alarm; ``signal``: the bed's signal state."""
    if alarm.kind == "signal" and signal in SIGNAL_BANNERS:
        return SIGNAL_BANNERS[signal]
    if alarm.kind in ("stale", "publisher_gone"):
        return f"STALE — {alarm.message}"
    return f"ALARM — {alarm.message}"


def _stream_panel(view: StreamView, alarms: list[Alarm], gone: bool) -> Panel:
    """One bed: its alarms (acknowledged ones dimmed), the estimate, the signal. ``gone``: the
    publisher is gone, so what the panel shows is the last thing known."""
    signal = None if view.status is None else view.status["signal"]
    lines: list[RenderableType] = []
    for alarm in alarms:
        if alarm.kind == "unreliable":
            continue  # the LOW CONFIDENCE block below says it, with the score
        style = "dim" if alarm.acknowledged_until is not None else _PRIORITY_STYLE[alarm.priority]
        lines.append(Text(f" {banner(alarm, signal)} ", style=style))
    old = gone or any(a.kind in _NUMBERS_OLD for a in alarms)
    urgent = old or any(a.priority == "high" for a in alarms)
    est = view.estimate
    if est is None:
        lines.append(Text("waiting for the first estimate…", style="dim"))
    else:
        lines += _estimate_lines(est, view, old)
    if view.status is not None:
        st = view.status
        said = f"signal {st['signal']} · {st['fps']:.1f} fps"
        style = "red" if st["signal"] != "ok" else "dim"
        lines.append(Text(f"last known: {said}" if gone else said, style="dim" if gone else style))
        if "beat_source" in st:  # absent before the bed's first window
            fixed = st["beat_source"] == "fixed" and not gone
            lines.append(Text(TIMING[st["beat_source"]], style="yellow" if fixed else "dim"))
        lines.append(
            Text(
                f"dropped {_count(st['windows_dropped'], 'window')}, {_count(st['frames_dropped'], 'frame')}"
            )
        )
    return Panel(
        Group(*lines),
        title=Text(view.stream, style="bold"),
        border_style="red" if urgent else "green",
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


def render(board: AlarmBoard, now: float) -> RenderableType:
    """The monitor screen at ``now`` s: the notice, a line per agent-level alarm, one panel per
    stream (sorted by id) with its alarms, and a footer line. Updates the board's alarms."""
    alarms = board.update(now)
    state = board.state
    head: list[RenderableType] = [Text(NOTICE, style="bold yellow")]
    gone = [a for a in alarms if a.bed == AGENT]
    head += [Text(f" PUBLISHER GONE — {a.message} ", style="bold red reverse") for a in gone]
    if not state.streams:
        return Group(*head, Text("waiting for estimates…", style="dim"), _footer(state, now))
    panels = [
        _stream_panel(state.streams[bed], [a for a in alarms if a.bed == bed], bool(gone))
        for bed in sorted(state.streams)
    ]
    return Group(*head, Columns(panels), _footer(state, now))


def screenshot_svg(
    messages: Sequence[dict[str, Any]],
    at: float,
    alarms: AlarmConfig | None = None,
    title: str = "edge-agent monitor",
) -> str:
    """The monitor screen as it stood at ``at`` (receive clock, s), drawn as an SVG document.

    ``messages``: received messages (each with its receive time); those received after ``at`` are
    left out, so a run can be pictured at any moment after it ended.
    """
    board = AlarmBoard(alarms or AlarmConfig())
    for msg in messages:
        if msg[T_RECEIVED] <= at:
            board.apply(msg, msg[T_RECEIVED])
    columns = max(1, min(len(board.state.streams), 2)) * (PANEL_WIDTH + 1) + 1
    console = Console(record=True, width=max(columns, len(NOTICE)), file=io.StringIO(), force_terminal=True)
    console.print(render(board, at))
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


def alarm_line(event: AlarmEvent, state: MonitorState) -> str:
    """One log line for an alarm transition: who, and the banner (raised) or what happened."""
    who = event.bed or "agent"
    if event.what in ("raised", "resounded"):
        view = state.streams.get(event.bed)
        signal = None if view is None or view.status is None else view.status["signal"]
        alarm = Alarm(event.bed, event.kind, event.priority, event.message, event.t)
        again = " (again: its silence ran out)" if event.what == "resounded" else ""
        return f"{who}: {banner(alarm, signal)}{again}"
    return f"{who}: {event.kind} {event.what}"


def _messages_until(sub: Subscriber, until: float) -> Iterator[dict[str, Any]]:
    """Messages received before ``until`` s (time.monotonic())."""
    while (timeout := until - time.monotonic()) > 0:
        msg = sub.recv(timeout)
        if msg is None:
            return
        yield msg


def run_monitor(
    endpoints: str | Sequence[str],
    alarms: AlarmConfig | None = None,
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
    or to a file): one line per new estimate, plus a line when an alarm is raised or cleared, a
    signal changes, an invalid message arrives or messages went missing, so that logs stay useful.
    ``alarms``: the thresholds (:class:`AlarmConfig`; its ``stale_after_s`` makes a stream STALE).
    ``on_message`` gets every message received, ``on_tick`` is called once per refresh (the demo
    supervises its agent there). ``curve_*``: as for :class:`Subscriber`.
    """
    if refresh_hz <= 0:
        raise ValueError(f"refresh_hz: must be > 0, got {refresh_hz}")
    console = console or Console()
    board = AlarmBoard(alarms or AlarmConfig())
    period = 1.0 / refresh_hz
    end = None if duration_s is None else time.monotonic() + duration_s
    with Subscriber(endpoints, curve_server_key=curve_server_key, curve_client_key=curve_client_key) as sub:
        try:
            if console.is_terminal:
                with Live(console=console, auto_refresh=False) as live:
                    while end is None or time.monotonic() < end:
                        tick = time.monotonic() + period
                        for msg in _messages_until(sub, tick if end is None else min(tick, end)):
                            board.apply(msg, msg[T_RECEIVED])
                            if on_message is not None:
                                on_message(msg)
                        live.update(render(board, time.monotonic()), refresh=True)
                        if on_tick is not None:
                            on_tick()
            else:
                _log_lines(sub, board, console, period, end, on_message, on_tick)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a bedside monitor is closed
    return board.state


def _log_lines(
    sub: Subscriber,
    board: AlarmBoard,
    console: Console,
    period: float,
    end: float | None,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    on_tick: Callable[[], None] | None = None,
) -> None:
    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    say(f"monitor: listening on {', '.join(sub.endpoints)}")
    state = board.state
    invalid_seen = missed_seen = 0
    while end is None or time.monotonic() < end:
        tick = time.monotonic() + period
        for msg in _messages_until(sub, tick if end is None else min(tick, end)):
            view = state.streams.get(msg.get("stream", ""))
            signal_before = None if view is None or view.status is None else view.status["signal"]
            board.apply(msg, msg[T_RECEIVED])
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
        before = board.n_events
        board.update(time.monotonic())
        for event in board.events_since(before):
            say(alarm_line(event, state))
