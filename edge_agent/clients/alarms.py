"""Alarms in one place: what the terminal monitor and the ward page raise, acknowledge and log.

Pure (no sockets, no clock): :class:`AlarmBoard` folds in the decoded messages a subscriber receives
(estimate, status, heartbeat, with their receive times in s) and, asked at ``now``, says which
alarms are active per bed. Conditions (thresholds in the YAML section ``alarms``,
:class:`AlarmConfig`):

=================  ========  ==================================================================
kind               priority  raised while
=================  ========  ==================================================================
publisher_gone     high      no heartbeat from the agent for ``publisher_timeout_s`` (bed "")
signal             high      the bed's latest status reports lost, frozen, blank, saturated,
                             no_sector or stale frames
reduced_ef         high      the running EF ≤ ``reduced_ef`` % with P(EF < 40 %) ≥ ``reduced_p``
                             for ``reduced_beats`` estimates in a row (sustained, not one beat)
ef_fall            medium    the running EF ``fall_points`` or more below the bed's baseline: the
                             median running EF of its first ``baseline_beats`` reliable estimates
stale              medium    no estimate for ``stale_after_s`` (or 3 beat periods when longer)
                             while the signal is not itself the reason
unreliable         low       the running estimate rests on inputs unlike the training data
=================  ========  ==================================================================

An alarm is raised when its condition starts, cleared when it ends; ``acknowledge`` silences a
raised alarm for ``silence_s`` (it stays shown, marked acknowledged) and a silence that runs out
while the condition holds sounds it again. A bed the agent no longer publishes (restarted without
it) would alarm "stale" for ever: ``remove`` lets an operator take it off the board once it has
sent nothing for ``remove_after_s``, never sooner (a bed still published would come straight back,
its alarms hidden in between); its alarms are logged as cleared with the reason. Every transition is
kept in ``log`` as an :class:`AlarmEvent` (and handed to a recorder by whoever owns the board). EF
in %, times in s.

Clinical bands (the 2021 universal definition of heart failure): reduced ≤ 40 %, mildly reduced
41–49 %, preserved ≥ 50 %.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from edge_agent.clients.state import MonitorState, StreamView

EF_NORMAL, EF_REDUCED = 50.0, 40.0
PRIORITIES = ("high", "medium", "low")
KINDS = {  # kind → priority
    "publisher_gone": "high",
    "signal": "high",
    "reduced_ef": "high",
    "ef_fall": "medium",
    "stale": "medium",
    "unreliable": "low",
}
BAD_SIGNALS = {
    "lost": "signal lost: no frames",
    "frozen": "signal frozen: the image does not change",
    "blank": "signal blank: no image content",
    "saturated": "signal saturated",
    "no_sector": "no ultrasound sector in the frames",
    "stale": "signal stale: no recent window",
}
AGENT = ""  # the bed id of alarms about the agent itself
REMOVED = "bed removed by the operator"  # how a removal's cleared alarms begin their message


def ef_category(ef: float) -> str:
    """EF % → clinical band: "normal" (≥ 50), "mildly reduced" (41–49), "reduced" (≤ 40)."""
    if ef >= EF_NORMAL:
        return "normal"
    return "mildly reduced" if ef > EF_REDUCED else "reduced"


@dataclass(frozen=True)
class AlarmConfig:
    """Alarm thresholds (YAML section ``alarms``); EF in %, times in s, counts in estimates."""

    reduced_ef: float = EF_REDUCED
    reduced_p: float = 0.5
    reduced_beats: int = 3
    fall_points: float = 10.0
    baseline_beats: int = 10
    stale_after_s: float = 5.0
    publisher_timeout_s: float = 3.0
    silence_s: float = 120.0
    remove_after_s: float = 30.0  # a bed silent this long may be removed by an operator

    def __post_init__(self) -> None:
        if not 0 <= self.reduced_p <= 1:
            raise ValueError(f"reduced_p must lie in [0, 1], got {self.reduced_p}")
        if self.reduced_beats < 1 or self.baseline_beats < 1:
            raise ValueError("reduced_beats and baseline_beats must be >= 1")
        if min(self.fall_points, self.stale_after_s, self.publisher_timeout_s, self.silence_s) <= 0:
            raise ValueError("fall_points, stale_after_s, publisher_timeout_s and silence_s must be > 0")
        if self.remove_after_s < self.stale_after_s:
            raise ValueError(
                f"remove_after_s ({self.remove_after_s}) must be >= stale_after_s ({self.stale_after_s}): "
                "a bed is removable only once its silence has raised its stale alarm"
            )


@dataclass(frozen=True)
class Alarm:
    """One active alarm. bed: stream id ("" for the agent); since: when raised; acknowledged_until:
    end of its silence (None: sounding)."""

    bed: str
    kind: str
    priority: str
    message: str
    since: float
    acknowledged_until: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.bed, self.kind


@dataclass(frozen=True)
class AlarmEvent:
    """A transition: ``what`` is raised, cleared, acknowledged or resounded (a silence ran out)."""

    t: float
    bed: str
    kind: str
    priority: str
    what: str
    message: str


@dataclass
class _History:
    """What the alarms remember of a bed beyond its latest messages (those are the state's)."""

    reduced_run: int = 0  # consecutive estimates meeting the reduced-EF condition
    early: list[float] = field(default_factory=list)  # running EFs of its first reliable estimates


@dataclass
class AlarmBoard:
    """Every bed's alarms over a :class:`MonitorState` (the one the monitor draws); see the module
    docstring. ``log`` holds the last ``log_size`` events."""

    cfg: AlarmConfig = field(default_factory=AlarmConfig)
    state: MonitorState = field(default_factory=MonitorState)
    log_size: int = 1000
    history: dict[str, _History] = field(default_factory=dict)
    active: dict[tuple[str, str], Alarm] = field(default_factory=dict)
    log: deque[AlarmEvent] = field(default_factory=deque)
    n_events: int = 0  # events since the start (the log keeps the last log_size)

    def apply(self, msg: dict[str, Any], now: float) -> None:
        """Fold in one decoded message received at ``now`` (into the state, and the bed's history)."""
        self.state.apply(msg, now)
        if msg["kind"] != "estimate":
            return
        bed, running, cfg = self.history.setdefault(msg["stream"], _History()), msg["running"], self.cfg
        meets = running["mean"] <= cfg.reduced_ef and running["p_ef_lt_40"] >= cfg.reduced_p
        bed.reduced_run = bed.reduced_run + 1 if meets and msg["reliable"] else 0
        if msg["reliable"] and len(bed.early) < cfg.baseline_beats:
            bed.early.append(running["mean"])

    def conditions(self, now: float) -> dict[tuple[str, str], str]:
        """(bed, kind) → message of every condition that holds at ``now``."""
        out: dict[tuple[str, str], str] = {}
        gone = self.state.publisher_problem(now, self.cfg.publisher_timeout_s)
        if gone is not None:
            out[(AGENT, "publisher_gone")] = f"publisher gone: {gone}"
        for name, view in self.state.streams.items():
            found = _bed_conditions(view, self.history.get(name, _History()), self.state, now, self.cfg)
            out.update({(name, kind): text for kind, text in found.items()})
        return out

    def update(self, now: float) -> list[Alarm]:
        """Raise, clear and resound alarms at ``now``; the active ones, most urgent first."""
        holding = self.conditions(now)
        for key in [k for k in self.active if k not in holding]:
            self._event(now, self.active.pop(key), "cleared")
        for (bed, kind), message in holding.items():
            alarm = self.active.get((bed, kind))
            if alarm is None:
                alarm = Alarm(bed, kind, KINDS[kind], message, since=now)
                self._event(now, alarm, "raised")
            elif alarm.acknowledged_until is not None and now >= alarm.acknowledged_until:
                alarm = Alarm(bed, kind, alarm.priority, message, alarm.since)
                self._event(now, alarm, "resounded")
            else:
                alarm = Alarm(bed, kind, alarm.priority, message, alarm.since, alarm.acknowledged_until)
            self.active[(bed, kind)] = alarm
        return sorted(self.active.values(), key=lambda a: (PRIORITIES.index(a.priority), a.since, a.bed))

    def acknowledge(self, bed: str, kind: str, now: float) -> bool:
        """Silence the active alarm (bed, kind) for ``silence_s``; False when none is active."""
        alarm = self.active.get((bed, kind))
        if alarm is None:
            return False
        silenced = Alarm(bed, kind, alarm.priority, alarm.message, alarm.since, now + self.cfg.silence_s)
        self.active[(bed, kind)] = silenced
        self._event(now, silenced, "acknowledged")
        return True

    def remove(self, bed: str, now: float) -> str | None:
        """Take a bed that sends nothing any more off the board: its state, history and alarms (each
        logged as cleared, the message saying by whom: the log's record of the removal). None when
        done; else why not (unknown bed, one heard from within ``remove_after_s``, or one without an
        alarm yet)."""
        view = self.state.streams.get(bed)
        if view is None:
            return f"no bed {bed!r}"
        silent = now - view.last_heard
        if silent < self.cfg.remove_after_s:
            return (
                f"bed {bed!r} sent a message {silent:.1f} s ago: a bed can be removed once it has been "
                f"silent for {self.cfg.remove_after_s:.0f} s (alarms.remove_after_s)"
            )
        self.update(now)  # what holds now is raised first, so the log shows what the removal cleared
        mine = [k for k in self.active if k[0] == bed]
        if not mine:  # a slow heart's stale limit (3 beats) can outlast remove_after_s
            return f"bed {bed!r} is silent but not yet stale: nothing to remove it for yet"
        for key in mine:
            alarm = self.active.pop(key)
            why = f"{REMOVED} after {silent:.0f} s without messages ({alarm.message})"
            self._event(now, replace(alarm, message=why), "cleared")
        del self.state.streams[bed]
        self.history.pop(bed, None)
        return None

    def events_since(self, n_events: int) -> list[AlarmEvent]:
        """The events after the first ``n_events`` (a reader's earlier ``self.n_events``), oldest
        first; those already dropped from the bounded log are not returned."""
        new = self.n_events - n_events
        return list(self.log)[max(0, len(self.log) - new) :] if new > 0 else []

    def _event(self, now: float, alarm: Alarm, what: str) -> None:
        self.log.append(AlarmEvent(now, alarm.bed, alarm.kind, alarm.priority, what, alarm.message))
        self.n_events += 1
        while len(self.log) > self.log_size:
            self.log.popleft()


def _bed_conditions(
    view: StreamView, history: _History, state: MonitorState, now: float, cfg: AlarmConfig
) -> dict[str, str]:
    """kind → message of the conditions that hold for one bed at ``now``."""
    out: dict[str, str] = {}
    signal = (view.status or {}).get("signal")
    if signal in BAD_SIGNALS and (view.status_at or 0.0) >= (view.estimate_at or 0.0):
        out["signal"] = BAD_SIGNALS[signal]
    else:
        problem = state.stream_problem(view.stream, now, cfg.stale_after_s)
        if problem is not None:
            out["stale"] = problem
    est = view.estimate
    if est is None:
        return out
    running = est["running"]
    if history.reduced_run >= cfg.reduced_beats:
        out["reduced_ef"] = (
            f"reduced EF {running['mean']:.0f} % (P(EF<40) {running['p_ef_lt_40']:.2f}) "
            f"for {history.reduced_run} estimates"
        )
    if len(history.early) >= cfg.baseline_beats:
        baseline = statistics.median(history.early)
        if est["reliable"] and running["mean"] <= baseline - cfg.fall_points:
            out["ef_fall"] = (
                f"EF fell {baseline - running['mean']:.0f} points below its baseline {baseline:.0f} %"
            )
    if not est["reliable"]:
        out["unreliable"] = "estimate unreliable: input unlike the training data"
    return out
