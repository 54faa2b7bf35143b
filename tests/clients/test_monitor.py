"""Tests for edge_agent.clients.monitor: state, rendering, and subscribers on real ZeroMQ sockets."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from rich.console import Console

from edge_agent.clients.alarms import AlarmBoard, AlarmConfig
from edge_agent.clients.monitor import (
    NOTICE,
    SPARK_BLOCKS,
    TREND_SCALE,
    MonitorState,
    big_number,
    ef_category,
    estimate_line,
    render,
    run_monitor,
    sparkline,
    subscribe_json,
)
from edge_agent.clients.subscriber import DEDUPE_CAPACITY, T_RECEIVED, Subscriber
from edge_agent.model import posterior
from edge_agent.protocol import wire

WAIT_S = 5.0  # generous bound for a message to cross a local socket

# ---------------------------------------------------------------- real messages


def summary(mean: float, sd: float = 4.0, seed: int = 0) -> dict[str, Any]:
    samples = np.clip(np.random.default_rng(seed).normal(mean, sd, size=40), 0.0, 100.0)
    return posterior.summarize(samples).to_dict()


def estimate_parts(stream: str = "bed1", seq: int = 0, ef: float = 55.0, **overrides: Any) -> list[Any]:
    body = {
        "seq": seq,
        "frame_seq": [seq * 50, seq * 50 + 49],
        "t": [seq * 1.0, seq * 1.0 + 0.98],
        "t_ready": seq * 1.0 + 1.1,
        "t_published": seq * 1.0 + 1.2,
        "hr_bpm": 60.0,
        "backend": "torch",
        "latency_ms": 180.0,
        "stages": {"detect": 150.0, "infer": 20.0},
        "reliable": True,
        "ood_score": 0.3,
        "beat_ood_score": 0.3,
        "truth": {"ef": ef},
    }
    # Summaries only when not overridden: summarize() is the slow part of building a message.
    if "beat" not in overrides:
        body["beat"] = summary(ef, seed=seq)
    if "running" not in overrides:
        body["running"] = {**summary(ef, sd=2.0, seed=seq + 1000), "n_beats": min(seq + 1, 10)}
    return wire.encode_estimate(stream, {**body, **overrides})


def status_parts(stream: str = "bed1", signal: str = "ok", **overrides: Any) -> list[Any]:
    body = {
        "t": 20.0,
        "fps": 49.8,
        "hr_bpm": 60.0,
        "signal": signal,
        "windows_dropped": 2,
        "frames_dropped": 7,
        "seq_gaps": 1,
    }
    return wire.encode_status(stream, {**body, **overrides})


def heartbeat_parts(t: float = 30.0) -> list[Any]:
    return wire.encode_heartbeat({"host": "edge-01", "pid": 4242, "uptime_s": 12.0, "t": t})


def decoded(parts: Sequence[Any]) -> dict[str, Any]:
    return wire.decode_published([bytes(p) for p in parts])


def board_of(state: MonitorState, stale_after_s: float = 5.0) -> AlarmBoard:
    """The alarm board the monitor draws, over a state fed by the test."""
    return AlarmBoard(AlarmConfig(stale_after_s=stale_after_s), state=state)


def screen(state: MonitorState, now: float, stale_after_s: float = 5.0) -> str:
    console = Console(record=True, width=100, color_system=None, file=io.StringIO())
    console.print(render(board_of(state, stale_after_s), now))
    return console.export_text()


def fed_state(beats: int = 5, t0: float = 100.0) -> MonitorState:
    """A state after a heartbeat, a status and ``beats`` estimates of bed1, one per second from t0."""
    state = MonitorState()
    state.apply(decoded(heartbeat_parts()), t0)
    state.apply(decoded(status_parts()), t0)
    for seq in range(beats):
        state.apply(decoded(estimate_parts(seq=seq, ef=45.0 + 2 * (seq % 10))), t0 + seq)
        state.apply(decoded(heartbeat_parts()), t0 + seq)
    return state


# ---------------------------------------------------------------- MonitorState


def test_state_keeps_latest_estimate_status_trend_and_heartbeat() -> None:
    state = fed_state(beats=5)
    view = state.streams["bed1"]
    assert view.estimate is not None and view.estimate["seq"] == 4
    assert view.estimate["running"]["n_beats"] == 5
    assert view.estimate["truth"] == {"ef": 53.0}
    assert len(view.trend) == 5 and view.trend[-1] == view.estimate["beat"]["mean"]
    assert view.status is not None and view.status["frames_dropped"] == 7
    assert view.hr_bpm == 60.0
    assert state.publishers["edge-01"][0] == 104.0
    assert state.heartbeat_age(105.5) == pytest.approx(1.5)


def test_trend_is_bounded() -> None:
    state = fed_state(beats=40)
    assert len(state.streams["bed1"].trend) == 30


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        MonitorState().apply({"kind": "window"}, 0.0)


def test_staleness_flips_when_no_estimate_arrives() -> None:
    state = fed_state(beats=3, t0=100.0)  # last estimate and heartbeat at 102 s
    assert not state.stale("bed1", 102.0)
    # Heartbeats keep coming; only the estimates stop.
    state.apply(decoded(heartbeat_parts()), 106.0)
    assert not state.stale("bed1", 106.9)
    state.apply(decoded(heartbeat_parts()), 107.1)
    assert state.stale("bed1", 107.1)
    assert "no estimate for 5.1 s" in (state.stale_reason("bed1", 107.1) or "")
    # A new estimate clears it.
    state.apply(decoded(estimate_parts(seq=3)), 107.2)
    assert not state.stale("bed1", 107.2)


def test_slow_heart_rate_extends_the_stale_limit() -> None:
    state = MonitorState()
    state.apply(decoded(estimate_parts(hr_bpm=30.0)), 0.0)  # one beat per 2 s: 3 beats = 6 s
    for t in range(1, 8):
        state.apply(decoded(heartbeat_parts()), float(t))
    assert not state.stale("bed1", 5.9)
    assert state.stale("bed1", 6.1)
    assert not state.stale("bed1", 6.1, stale_after_s=10.0)


def test_missing_heartbeat_makes_streams_stale() -> None:
    state = fed_state(beats=1, t0=0.0)
    state.apply(decoded(estimate_parts(seq=1)), 3.5)  # estimates arrive, heartbeats stopped at 0 s
    assert state.stale("bed1", 3.5)
    assert "publisher silent for 3.5 s" in (state.stale_reason("bed1", 3.5) or "")
    # No heartbeat ever: stale once the publisher has been heard for longer than the timeout.
    state = MonitorState()
    state.apply(decoded(estimate_parts()), 0.0)
    assert not state.stale("bed1", 2.9)
    assert state.stale_reason("bed1", 3.1) == "no publisher heartbeat"


def test_status_only_stream_is_stale_after_the_limit() -> None:
    state = MonitorState()
    state.apply(decoded(status_parts(signal="ok", hr_bpm=None)), 0.0)
    state.apply(decoded(heartbeat_parts()), 5.5)
    assert not state.stale("bed1", 4.0)
    assert state.stale_reason("bed1", 5.5) == "no estimate yet for 5.5 s"


def test_a_lost_signal_makes_the_estimate_stale_at_once_until_a_newer_estimate() -> None:
    state = fed_state(beats=3, t0=100.0)  # last estimate and heartbeat at 102 s
    state.apply(decoded(status_parts(signal="lost")), 102.5)
    assert state.stale_reason("bed1", 102.5) == "signal lost"
    state.apply(decoded(estimate_parts(seq=3)), 103.0)  # the signal came back: a new beat
    assert not state.stale("bed1", 103.0)
    state.apply(decoded(status_parts(signal="ok")), 103.5)
    assert not state.stale("bed1", 103.5)


# ---------------------------------------------------------------- rendering


def test_render_shows_ef_interval_hr_category_and_sparkline() -> None:
    state = fed_state(beats=6)
    view = state.streams["bed1"]
    est = view.estimate
    assert est is not None
    text = screen(state, now=105.5)
    running = est["running"]
    lo, hi = running["ci90"]
    assert f"LVEF {running['mean']:.1f} %" in text
    assert f"{lo:.1f}–{hi:.1f} %" in text
    assert f"beat #5 {est['beat']['mean']:.1f} %" in text
    assert "HR 60 bpm" in text
    assert f"{ef_category(running['mean'])} (" in text
    assert f"P(EF<40) {running['p_ef_lt_40']:.2f} running" in text
    # On the fixed 15–85 % scale: 45 % and 55 % are blocks 3 and 4 wherever the trend lies.
    spark = sparkline(list(view.trend), TREND_SCALE)
    assert spark in text and spark[0] == SPARK_BLOCKS[3] and spark[-1] == SPARK_BLOCKS[4]
    assert f"{min(view.trend):.0f}–{max(view.trend):.0f} %" in text
    assert "signal ok · 49.8 fps" in text and "dropped 2 windows, 7 frames" in text
    assert "gated" not in text and "beats found" not in text  # no beat_source: nothing said
    state.apply(decoded(status_parts(beat_source="fixed")), 105.6)
    assert "│ no beats found: fixed windows " in screen(state, now=105.7)
    state.apply(decoded(status_parts(beat_source="principal")), 105.8)
    assert "│ beats image-gated (weak swing) " in screen(state, now=105.9)
    assert "simulator truth EF 55.0 %" in text
    assert "latency 180 ms · torch" in text
    assert "edge-01 (pid 4242) heartbeat 0.5 s ago" in text
    assert "1 stream · dropped 2 windows, 7 frames" in text
    # The big seven-segment number is the running mean, rounded.
    for row in big_number(f"{running['mean']:.0f}").splitlines():
        assert row in text
    assert "STALE" not in text and NOTICE in text


def test_an_unreliable_estimate_is_low_confidence_and_its_interval_withheld() -> None:
    state = fed_state(beats=3)
    state.apply(
        decoded(estimate_parts(seq=3, ef=50.0, reliable=False, ood_score=7.3, beat_ood_score=9.0)), 103.0
    )
    est = state.streams["bed1"].estimate
    assert est is not None
    lo, hi = est["running"]["ci90"]
    text = screen(state, now=103.2)
    assert " LOW CONFIDENCE " in text and "OOD score 7.3 (familiar ≤ 1)" in text
    assert "interval withheld: low confidence" in text and f"{lo:.1f}–{hi:.1f} %" not in text
    assert f"beat #3 {est['beat']['mean']:.1f} % (low confidence)" in text  # beat score 9.0
    line = estimate_line(est)
    assert "LOW CONFIDENCE" in line and "[90 %" not in line
    # A reliable estimate after it shows its interval again.
    state.apply(decoded(estimate_parts(seq=4, ef=50.0)), 104.0)
    assert "LOW CONFIDENCE" not in screen(state, now=104.2)


def test_render_warns_stale_and_signal_lost() -> None:
    state = fed_state(beats=3)
    assert "STALE — no estimate for 8.0 s" in screen(state, now=110.0, stale_after_s=5.0)
    state.apply(decoded(status_parts(signal="lost", fps=0.0)), 102.5)
    text = screen(state, now=102.5)
    # The last estimate stays on screen, flagged at once: the frames it came from are gone.
    assert "SIGNAL LOST — no frames" in text and "STALE" not in text


def test_render_stale_warning_is_red_and_reverse() -> None:
    state = fed_state(beats=2)
    console = Console(record=True, width=100, color_system="truecolor", file=io.StringIO())
    console.print(render(board_of(state), now=120.0))
    html = console.export_html(inline_styles=True)
    assert "STALE" in html and "#800000" in html  # rich's "red" in the standard palette


def test_render_several_streams_and_waiting() -> None:
    assert "waiting for estimates" in screen(MonitorState(), now=0.0)
    state = fed_state(beats=2)
    state.apply(decoded(estimate_parts(stream="bed2", ef=30.0)), 101.0)
    state.apply(decoded(status_parts(stream="bed3")), 101.0)
    text = screen(state, now=101.0)
    assert "bed1" in text and "bed2" in text and "bed3" in text
    assert "reduced (≤ 40 %)" in text
    assert "waiting for the first estimate" in text
    assert "3 streams · dropped 4 windows, 14 frames" in text


def test_ef_category_bands() -> None:
    """The 2021 universal definition of heart failure: reduced ≤ 40 %, mildly reduced 41–49 %."""
    assert [ef_category(ef) for ef in (65.0, 50.0, 49.9, 40.1, 40.0, 39.9, 10.0)] == [
        "normal",
        "normal",
        "mildly reduced",
        "mildly reduced",
        "reduced",
        "reduced",
        "reduced",
    ]


def test_sparkline_scales_to_the_data_range() -> None:
    assert sparkline([]) == ""
    assert sparkline([40.0, 50.0, 60.0]) == "▁▅█"
    assert sparkline([55.0, 55.0]) == "▄▄"


# ---------------------------------------------------------------- sockets


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)  # closes any socket a failed test left open, so term() cannot hang


def bound(ctx: zmq.Context, kind: int = zmq.PUB) -> tuple[zmq.Socket, str]:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"tcp://127.0.0.1:{port}"


def sync(pub: zmq.Socket, sub: Subscriber) -> None:
    """Publish heartbeats until the subscriber gets one (PUB drops everything sent before that)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        pub.send_multipart(heartbeat_parts())
        msg = sub.recv(0.02)
        if msg is not None:
            assert msg["kind"] == "heartbeat"
            while sub.recv(0.05) is not None:  # drain the other sync heartbeats
                pass
            return
    raise AssertionError("subscriber never connected")


def test_subscriber_receives_dedupes_and_survives_invalid_messages(ctx: zmq.Context) -> None:
    pub, endpoint = bound(ctx)
    with Subscriber(endpoint, context=ctx) as sub:
        sync(pub, sub)
        pub.send_multipart(estimate_parts(seq=1))
        pub.send_multipart(estimate_parts(seq=1))  # re-sent, as a last-value cache does
        pub.send_multipart([b"lvef.bed1", b"\xc1"])  # not msgpack
        pub.send_multipart([b"lvef.bed1", msgpack.packb({"v": 3, "kind": "estimate"})])
        pub.send_multipart([b"lvef.bed1"])  # one frame
        pub.send_multipart(status_parts())
        pub.send_multipart(estimate_parts(seq=2))
        t_before = time.monotonic()
        first = sub.recv(WAIT_S)
        assert first is not None and first["kind"] == "estimate" and first["seq"] == 1
        assert t_before <= first[T_RECEIVED] <= time.monotonic()
        assert first == {**decoded(estimate_parts(seq=1)), T_RECEIVED: first[T_RECEIVED]}
        second = sub.recv(WAIT_S)
        assert second is not None and second["kind"] == "status"
        third = sub.recv(WAIT_S)
        assert third is not None and third["seq"] == 2
        assert (sub.duplicates, sub.invalid) == (1, 3)
        assert sub.last_error is not None and "expected 2 frames" in sub.last_error
        received = sub.received
        start = time.monotonic()
        assert sub.recv(0.1) is None
        assert 0.09 <= time.monotonic() - start < 1.0
        assert sub.recv(0) is None
        assert sub.received == received
    pub.close()


def test_restarted_publisher_reusing_seq_is_not_a_duplicate(ctx: zmq.Context) -> None:
    pub, endpoint = bound(ctx)
    with Subscriber(endpoint, context=ctx) as sub:
        sync(pub, sub)
        pub.send_multipart(estimate_parts(seq=0))
        pub.send_multipart(estimate_parts(seq=0, t_published=500.0))
        assert [m["t_published"] for m in (sub.recv(WAIT_S), sub.recv(WAIT_S)) if m] == [1.2, 500.0]
        assert sub.duplicates == 0
    pub.close()


def test_dedupe_memory_is_bounded(ctx: zmq.Context) -> None:
    pub, endpoint = bound(ctx)
    with Subscriber(endpoint, context=ctx, rcvhwm=0) as sub:
        sync(pub, sub)
        fixed = {"beat": summary(50.0), "running": {**summary(50.0), "n_beats": 1}}  # fast to encode
        for seq in range(DEDUPE_CAPACITY + 10):
            pub.send_multipart(estimate_parts(seq=seq, **fixed))
            assert sub.recv(WAIT_S) is not None
        assert len(sub._seen) == DEDUPE_CAPACITY
    pub.close()


def test_xpub_last_value_cache_resend_is_dropped(ctx: zmq.Context) -> None:
    """The real scenario: an XPUB re-sends its latest estimate when a new subscriber joins."""
    xpub, endpoint = bound(ctx, zmq.XPUB)
    xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # pass every subscription up, not only the first per topic

    def await_subscription() -> None:
        assert xpub.poll(WAIT_S * 1000), "no subscription arrived"
        assert xpub.recv()[0] == 1

    with Subscriber(endpoint, context=ctx) as first:
        await_subscription()
        latest = estimate_parts(seq=9)
        xpub.send_multipart(latest)
        got = first.recv(WAIT_S)
        assert got is not None and got["seq"] == 9
        with Subscriber(endpoint, context=ctx) as second:
            await_subscription()
            xpub.send_multipart(latest)  # the cache's re-send reaches every subscriber
            got = second.recv(WAIT_S)
            assert got is not None and got["seq"] == 9
            assert first.recv(0.2) is None
            assert first.duplicates == 1 and second.duplicates == 0
    xpub.close()


def test_subscriber_refuses_a_bad_endpoint() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        Subscriber("nonsense://x")
    with pytest.raises(ValueError, match="endpoints"):
        Subscriber([])


class Publisher:
    """A PUB socket in a thread sending heartbeat, status and estimate (seq 0, 1, ...) every 20 ms."""

    def __init__(self, ctx: zmq.Context, endpoint: str | None = None) -> None:
        self.ctx, self.stop = ctx, threading.Event()
        self.ready = threading.Event()
        self.endpoint = endpoint or ""
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pub = self.ctx.socket(zmq.PUB)  # sockets are not thread-safe: made in the thread using it
        pub.setsockopt(zmq.LINGER, 0)
        if self.endpoint:
            pub.bind(self.endpoint)
        else:
            self.endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
        self.ready.set()
        seq = 0
        while not self.stop.is_set():
            pub.send_multipart(heartbeat_parts())
            pub.send_multipart(status_parts())
            pub.send_multipart(estimate_parts(seq=seq, ef=50.0 + seq % 10))
            seq += 1
            time.sleep(0.02)
        pub.close()

    def __enter__(self) -> Publisher:
        self.thread.start()
        assert self.ready.wait(WAIT_S)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(WAIT_S)


def test_subscribe_json_writes_json_lines_and_stops_at_count(ctx: zmq.Context, tmp_path: Path) -> None:
    out = io.StringIO()
    with Publisher(ctx, f"ipc://{tmp_path}/pub.sock") as publisher:
        assert subscribe_json(publisher.endpoint, count=7, out=out, timeout=WAIT_S) == 7
    lines = out.getvalue().splitlines()
    assert len(lines) == 7
    messages = [json.loads(line) for line in lines]
    assert {m["kind"] for m in messages} >= {"estimate", "status", "heartbeat"}
    for m in messages:
        assert m["v"] == 2 and T_RECEIVED not in m
        if m["kind"] == "estimate":
            assert isinstance(m["running"]["ci90"], list) and m["truth"]["ef"] >= 50.0


def test_subscribe_json_estimates_only_and_timeout(
    ctx: zmq.Context, capsys: pytest.CaptureFixture[str]
) -> None:
    with Publisher(ctx) as publisher:
        assert subscribe_json(publisher.endpoint, count=3, timeout=WAIT_S, topics=("lvef.",)) == 3
    assert [json.loads(line)["kind"] for line in capsys.readouterr().out.splitlines()] == ["estimate"] * 3
    # Nobody publishes: the idle timeout ends it.
    pub, endpoint = bound(ctx)
    start = time.monotonic()
    assert subscribe_json(endpoint, count=None, out=io.StringIO(), timeout=0.2) == 0
    assert time.monotonic() - start < 2.0
    pub.close()


def test_run_monitor_piped_prints_one_line_per_estimate(ctx: zmq.Context) -> None:
    console = Console(record=True, file=io.StringIO(), width=100)
    assert not console.is_terminal
    with Publisher(ctx) as publisher:
        state = run_monitor(publisher.endpoint, duration_s=1.0, refresh_hz=10.0, console=console)
    lines = console.export_text().splitlines()
    assert lines[0] == f"monitor: listening on {publisher.endpoint}"
    estimates = [line for line in lines if " LVEF " in line]
    assert len(estimates) >= 5
    view = state.streams["bed1"]
    assert view.estimate is not None and estimates[-1].startswith(f"bed1 #{view.estimate['seq']}: LVEF")
    assert "P(EF<40)" in estimates[-1] and "HR 60 bpm" in estimates[-1]
    assert "bed1: signal ok" in lines
    assert not any("STALE" in line for line in lines)


def test_run_monitor_piped_reports_stale_and_invalid(ctx: zmq.Context) -> None:
    # XPUB tells when the monitor's subscription is in place; the socket is used only by the thread.
    pub, endpoint = bound(ctx, zmq.XPUB)
    console = Console(record=True, file=io.StringIO(), width=100)

    def publish() -> None:
        assert pub.poll(WAIT_S * 1000) and pub.recv()[0] == 1
        pub.send_multipart([b"heartbeat", b"\xc1"])
        pub.send_multipart(heartbeat_parts())
        pub.send_multipart(estimate_parts(hr_bpm=None))  # then silence: the stream must turn stale

    thread = threading.Thread(target=publish)
    thread.start()
    state = run_monitor(
        endpoint, alarms=AlarmConfig(stale_after_s=0.3), refresh_hz=20.0, duration_s=1.5, console=console
    )
    thread.join()
    pub.close()
    text = console.export_text()
    assert "monitor: 1 invalid message(s), last: heartbeat body: not valid msgpack" in text
    assert "bed1 #0: LVEF" in text
    assert "bed1: STALE — " in text
    assert state.stale("bed1", time.monotonic(), 0.3)


def test_run_monitor_live_view_on_a_terminal(ctx: zmq.Context) -> None:
    console = Console(record=True, file=io.StringIO(), width=100, force_terminal=True, color_system=None)
    with Publisher(ctx) as publisher:
        state = run_monitor(publisher.endpoint, duration_s=0.6, console=console)
    assert "bed1" in state.streams
    text = console.export_text()
    assert "LVEF" in text and "90 % interval" in text
