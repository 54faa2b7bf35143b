"""The alarm board (edge_agent.clients.alarms): conditions, sustained reduced EF, baseline fall,
acknowledge and silence, the log. Messages are real wire messages, encoded then decoded."""

from __future__ import annotations

from typing import Any

import pytest
from fixtures import estimate_message

from edge_agent.clients.alarms import AGENT, REMOVED, AlarmBoard, AlarmConfig
from edge_agent.protocol import wire


def _status(signal: str) -> dict[str, Any]:
    body = {"t": 1.0, "fps": 50.0, "hr_bpm": 60.0, "signal": signal}
    body |= {"windows_dropped": 0, "frames_dropped": 0, "seq_gaps": 0}
    return wire.decode_published([bytes(p) for p in wire.encode_status("bed1", body)])


def _heartbeat() -> dict[str, Any]:
    body = {"host": "edge-01", "pid": 1, "uptime_s": 1.0, "t": 1.0}
    return wire.decode_published([bytes(p) for p in wire.encode_heartbeat(body)])


def _fed(board: AlarmBoard, efs: list[float], t0: float = 0.0) -> float:
    """Estimates of these running EFs one a second from t0, with heartbeats; returns the last time."""
    t = t0
    for seq, ef in enumerate(efs):
        t = t0 + seq
        board.apply(_heartbeat(), t)
        board.apply(estimate_message(seq, ef), t)
    return t


def _kinds(board: AlarmBoard, now: float) -> set[tuple[str, str]]:
    return {a.key for a in board.update(now)}


def test_reduced_ef_is_raised_only_when_sustained_and_cleared_when_it_ends() -> None:
    board = AlarmBoard(AlarmConfig(reduced_beats=3))
    t = _fed(board, [32.0, 31.0])
    assert ("bed1", "reduced_ef") not in _kinds(board, t)  # two estimates: not yet sustained
    board.apply(estimate_message(2, 30.0), t + 1)
    (alarm,) = [a for a in board.update(t + 1) if a.kind == "reduced_ef"]
    assert alarm.priority == "high" and "reduced EF 30 %" in alarm.message and alarm.since == t + 1
    # 40 % itself is reduced (≤ 40), but a P(EF<40) below the level breaks the run.
    board.apply(estimate_message(3, 40.0, 0.2), t + 2)
    assert ("bed1", "reduced_ef") not in _kinds(board, t + 2)
    assert [(e.kind, e.what) for e in board.log if e.kind == "reduced_ef"] == [
        ("reduced_ef", "raised"),
        ("reduced_ef", "cleared"),
    ]
    # An unreliable estimate (input unlike the training data) raises its own alarm and no reduced run.
    for seq in range(4, 8):
        board.apply(estimate_message(seq, 25.0, reliable=False), t + seq)
    assert _kinds(board, t + 7) >= {("bed1", "unreliable")}
    assert ("bed1", "reduced_ef") not in _kinds(board, t + 7)


def test_acknowledge_silences_for_the_configured_time_then_resounds() -> None:
    board = AlarmBoard(AlarmConfig(reduced_beats=1, silence_s=10.0))
    t = _fed(board, [30.0])
    board.update(t)
    assert board.acknowledge("bed1", "reduced_ef", t) and not board.acknowledge("bed1", "ef_fall", t)
    (alarm,) = [a for a in board.update(t + 1) if a.kind == "reduced_ef"]
    assert alarm.acknowledged_until == t + 10.0
    for k in range(2, 12):  # the condition holds (estimates keep coming) past the silence
        board.apply(_heartbeat(), t + k)
        board.apply(estimate_message(k, 30.0), t + k)
    (alarm,) = [a for a in board.update(t + 11) if a.kind == "reduced_ef"]
    assert alarm.acknowledged_until is None
    assert [e.what for e in board.log if e.kind == "reduced_ef"] == ["raised", "acknowledged", "resounded"]


def test_a_fall_below_the_beds_own_baseline() -> None:
    board = AlarmBoard(AlarmConfig(baseline_beats=5, fall_points=10.0))
    t = _fed(board, [62.0] * 5)
    board.apply(estimate_message(5, 53.0), t + 1)
    assert ("bed1", "ef_fall") not in _kinds(board, t + 1)  # 9 points: under the threshold
    board.apply(estimate_message(6, 51.0), t + 2)
    (alarm,) = [a for a in board.update(t + 2) if a.kind == "ef_fall"]
    assert alarm.priority == "medium" and alarm.message == "EF fell 11 points below its baseline 62 %"


def test_signal_publisher_and_stale_alarms() -> None:
    board = AlarmBoard(AlarmConfig(stale_after_s=5.0, publisher_timeout_s=3.0))
    t = _fed(board, [60.0] * 3)
    assert _kinds(board, t + 0.5) == set()
    board.apply(_status("frozen"), t + 1)
    board.apply(_heartbeat(), t + 1)
    alarms = board.update(t + 1)
    assert [(a.key, a.message) for a in alarms] == [
        (("bed1", "signal"), "signal frozen: the image does not change")
    ]
    board.apply(_status("ok"), t + 2)
    board.apply(_heartbeat(), t + 2)
    assert _kinds(board, t + 2) == set()
    # The agent stops: no heartbeat (publisher gone, first: high) and no estimate (stale).
    alarms = board.update(t + 8)
    assert [a.key for a in alarms] == [(AGENT, "publisher_gone"), ("bed1", "stale")]
    assert alarms[1].message == "no estimate for 8.0 s"


def test_a_bed_no_longer_published_can_be_removed_once_silent_and_not_before() -> None:
    board = AlarmBoard(AlarmConfig(stale_after_s=5.0, remove_after_s=20.0))
    t = _fed(board, [30.0] * 4)  # a reduced-EF bed: its alarm is on
    assert ("bed1", "reduced_ef") in _kinds(board, t)
    assert board.remove("bed2", t) == "no bed 'bed2'"
    # Still published (a status 1 s ago): refused, nothing hidden.
    board.apply(_status("lost"), t + 10)
    refused = board.remove("bed1", t + 11)
    assert refused is not None and "silent for 20 s" in refused and "1.0 s ago" in refused
    assert {k for k in _kinds(board, t + 11) if k[0] == "bed1"} == {
        ("bed1", "reduced_ef"),
        ("bed1", "signal"),
    }
    # Silent for 20 s: removed; every alarm it had is logged as cleared, saying why.
    n = board.n_events
    assert board.remove("bed1", t + 30) is None
    cleared = board.events_since(n)
    assert {(e.kind, e.what) for e in cleared} == {("reduced_ef", "cleared"), ("signal", "cleared")}
    assert all(e.message.startswith(f"{REMOVED} after 20 s without messages (") for e in cleared)
    assert "bed1" not in board.state.streams and "bed1" not in board.history
    assert not any(bed == "bed1" for bed, _ in board.conditions(t + 31))
    # Published again later: a new bed, with a fresh baseline and reduced-EF run.
    board.apply(estimate_message(9, 30.0), t + 40)
    assert board.history["bed1"].reduced_run == 1
    # A slow heart (3 beats at 6 bpm: 30 s) silent for 25 s is not yet stale: not removed.
    slow = AlarmBoard(AlarmConfig(stale_after_s=5.0, remove_after_s=20.0))
    slow.apply(estimate_message(0, 60.0) | {"hr_bpm": 6.0}, 0.0)
    assert "not yet stale" in (slow.remove("bed1", 25.0) or "")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"reduced_p": 1.5}, "reduced_p"),
        ({"reduced_beats": 0}, "reduced_beats"),
        ({"silence_s": 0.0}, "silence_s"),
        ({"remove_after_s": 4.0}, "remove_after_s"),
    ],
)
def test_alarm_config_refuses_impossible_thresholds(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AlarmConfig(**fields)
