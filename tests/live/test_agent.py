"""The live agent end to end: real processes, shared memory, ZeroMQ sockets and decoding.

Each test starts the real supervisor (spawned capture, windower, worker and hub processes), reads
what a subscriber receives, and checks that stopping leaves no process and no ring behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import zmq

from edge_agent.clients.subscriber import T_RECEIVED, Subscriber
from edge_agent.config import ConfigError
from edge_agent.live import hub as hub_module
from edge_agent.live.agent import Agent, AgentConfig, load_agent_config
from edge_agent.live.hub import Hub, HubConfig
from edge_agent.live.ringbuffer import SHM_DIR
from edge_agent.protocol import wire
from edge_agent.protocol.transport import TransportConfig

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, sources: list[str], *extra: str) -> AgentConfig:
    return load_agent_config(
        None,
        ["transport.publish=ipc://{run}/publish", "supervisor.log_level=WARNING", "worker.threads=1", *extra],
        sources=sources,
    )


def _collect(agent: Agent, seconds: float, until=None) -> list[dict]:
    """Messages a subscriber receives while the supervisor keeps watch."""
    out: list[dict] = []
    with Subscriber(agent.endpoints["publish"]) as sub:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            agent.check()
            msg = sub.recv(0.1)
            if msg is not None:
                out.append(msg)
                if until is not None and until(out):
                    break
    return out


def _assert_nothing_left(agent: Agent) -> None:
    assert agent.leftovers() == {"processes": [], "rings": []}
    assert not agent.run_dir.exists()
    assert not [p for p in SHM_DIR.iterdir() if p.name in agent.rings.values()]


def test_simulated_stream_end_to_end_estimates_near_truth(tmp_path: Path) -> None:
    cfg = _config(tmp_path, ["synthetic://?ef=35&hr=75&quality=good&fps=50&seed=5"])
    agent = Agent(cfg)
    agent.start()
    try:
        msgs = _collect(agent, 40.0, until=lambda m: sum(x["kind"] == "estimate" for x in m) >= 8)
        # A subscriber that joins late gets the latest estimate at once (last-value cache).
        with Subscriber(agent.endpoints["publish"], topics=["lvef."]) as late:
            first = late.recv(1.0)
    finally:
        agent.stop()
    _assert_nothing_left(agent)
    estimates = [m for m in msgs if m["kind"] == "estimate"]
    assert len(estimates) >= 8
    assert [e["seq"] for e in estimates] == list(
        range(estimates[0]["seq"], estimates[0]["seq"] + len(estimates))
    )
    last = estimates[-1]
    assert last["backend"] == "onnxruntime" and last["running"]["n_beats"] >= 3  # "auto" on the CPU
    assert abs(last["running"]["mean"] - last["truth"]["ef_running"]) < 5.0
    assert last["running"]["ci90"][0] <= last["running"]["mean"] <= last["running"]["ci90"][1]
    # The shipped model scores every beat; a simulated good-quality feed is familiar to it.
    assert all(e["beat_ood_score"] is not None and e["beat_ood_score"] >= 0 for e in estimates)
    assert last["reliable"] and last["ood_score"] <= 1.0
    assert 60 < last["hr_bpm"] < 90  # 75 bpm with beat-to-beat variability
    assert all(0 < 1000 * (e[T_RECEIVED] - e["t"][1]) < 5000 for e in estimates)
    statuses = [m for m in msgs if m["kind"] == "status"]
    assert statuses and statuses[-1]["signal"] == "ok" and statuses[-1]["windows_dropped"] == 0
    assert 45 <= statuses[-1]["fps"] <= 55
    # The hub passes on the windower's detector report: image-gated beats on the LV area.
    assert statuses[-1]["beat_source"] == "area" and statuses[-1]["beats_detected"] >= 3
    assert any(m["kind"] == "heartbeat" for m in msgs)
    assert first is not None and first["kind"] == "estimate" and first["seq"] <= last["seq"]


def test_dicom_cine_plays_through_the_whole_pipeline(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    cine = get_testdata_file("color3d_jpeg_baseline.dcm")
    agent = Agent(_config(tmp_path, [cine]))
    agent.start()
    try:
        msgs = _collect(agent, 40.0, until=lambda m: sum(x["kind"] == "estimate" for x in m) >= 3)
    finally:
        agent.stop()
    _assert_nothing_left(agent)
    estimates = [m for m in msgs if m["kind"] == "estimate"]
    assert len(estimates) >= 3
    assert all(0 < e["running"]["mean"] < 100 and "truth" not in e for e in estimates)
    rates = [e["hr_bpm"] for e in estimates if e["hr_bpm"] is not None]
    assert rates and all(40 <= hr <= 150 for hr in rates)


@pytest.mark.parametrize("victim", ["capture:bed1", "hub", "worker:0"])
def test_supervisor_restarts_a_killed_process_and_estimates_resume(tmp_path: Path, victim: str) -> None:
    """SIGKILL one process (no chance to clean up): the supervisor restarts it (a capture with its
    windower, on a new ring, the dead one's unlinked) and estimates flow again."""
    agent = Agent(_config(tmp_path, ["synthetic://?ef=55&hr=70&quality=good&seed=2"]))
    agent.start()
    try:
        msgs = _collect(
            agent,
            30.0,
            until=lambda m: any(x["kind"] == "estimate" and x["running"]["n_beats"] >= 2 for x in m),
        )
        last_seq = max(m["seq"] for m in msgs if m["kind"] == "estimate")
        proc = next(p for p in agent.procs if p.name == victim)
        old_pid = proc.process.pid
        os.kill(old_pid, signal.SIGKILL)

        # A restarted windower numbers windows from 0 again and a restarted hub forgets the running
        # estimate: either way a fresh estimate is one the last-value cache cannot have replayed.
        def fresh(m: dict) -> bool:
            return m["kind"] == "estimate" and (m["running"]["n_beats"] == 1 or m["seq"] > last_seq + 1)

        msgs = _collect(agent, 45.0, until=lambda ms: any(fresh(m) for m in ms))
        assert proc.process.pid != old_pid and proc.process.is_alive()
        assert proc.restarts, "the supervisor did not record a restart"
        assert any(fresh(m) for m in msgs), f"no estimate after {victim} was restarted"
    finally:
        agent.stop()
    _assert_nothing_left(agent)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_run_command_stopped_or_killed_leaves_no_orphans(tmp_path: Path, how: signal.Signals) -> None:
    """SIGINT: the supervisor stops everything. SIGKILL: it cannot, so its children must notice
    (PR_SET_PDEATHSIG) and stop themselves, the captures unlinking their rings."""
    cmd = [
        sys.executable,
        "-m",
        "edge_agent",
        "run",
        "--set",
        "transport.publish=ipc://{run}/publish",
        "--set",
        "worker.threads=1",
        "--source",
        "synthetic://?seed=3",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(12.0)
        children = _children(proc.pid)
        assert len(children) >= 4, children  # hub, worker, windower, capture (+ spawn's tracker)
        rings = [p.name for p in SHM_DIR.iterdir() if p.name.startswith(f"edge_agent_bed1_{proc.pid}")]
        assert rings, "the capture made no ring"
        proc.send_signal(how)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    if how == signal.SIGINT:
        assert proc.returncode == 0, err[-2000:]
    deadline = time.monotonic() + 10.0  # SIGKILL: children stop on their own (spawn's tracker on EOF)
    while [pid for pid in children if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [(pid, _cmdline(pid)) for pid in children if _alive(pid)]
    assert not [r for r in rings if (SHM_DIR / r).exists()]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


# ---------------------------------------------------------------- the hub alone, real sockets


def _window(stream: str, seq: int) -> wire.Window:
    return wire.Window(
        stream=stream,
        seq=seq,
        frame_seq=(seq * 50, seq * 50 + 49),
        t=(seq, seq + 0.98),
        t_sent=time.monotonic(),
        fps=50.0,
        hr_bpm=61.0,
        beat="ed_ed",
        frames=np.zeros((32, 112, 112), np.uint8),
    )


def _started_hub(tmp_path: Path, cfg: HubConfig) -> tuple[Hub, dict[str, str], zmq.Context, zmq.Socket]:
    """A hub on private ipc endpoints, a context for the test's peers and a windower's PUSH socket."""
    endpoints = {k: f"ipc://{tmp_path}/{k}" for k in ("windows", "workers", "publish")}
    hub = Hub(cfg, TransportConfig(linger_ms=0), endpoints)
    hub.start()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(endpoints["windows"])
    return hub, endpoints, ctx, push


def test_hub_bounds_its_queue_and_balances_by_credit(tmp_path: Path) -> None:
    hub, endpoints, ctx, push = _started_hub(tmp_path, HubConfig(queue_per_stream=2, status_period_s=0.05))
    try:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"status.a")
        sub.connect(endpoints["publish"])
        for seq in range(5):  # no worker yet: two wait, three are dropped (oldest first)
            push.send_multipart(wire.encode_window(_window("a", seq)))
        _pump(hub, 0.3)
        assert [w.seq for _t, w, _p in hub.streams["a"].queue] == [3, 4]
        status = wire.decode_status(sub.recv_multipart())
        while status["windows_dropped"] != 3:
            _pump(hub, 0.1)
            status = wire.decode_status(sub.recv_multipart())
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(endpoints["workers"])
        dealer.send(b"READY")
        dealer.send(b"READY")  # an idle worker repeats READY: still one credit
        _pump(hub, 0.3)
        got = wire.decode_window(dealer.recv_multipart())
        assert got.seq == 3 and not dealer.poll(200)  # one window per credit
        dealer.send_multipart([b"RESULT", *wire.encode_result(got, np.full(40, 42.0), "torch", 1.0, 1.0)])
        _pump(hub, 0.3)
        assert wire.decode_window(dealer.recv_multipart()).seq == 4
        assert hub.streams["a"].estimates == 1
        # Window numbers 5 and 6 never arrive: the hub reports them missing on the status.
        push.send_multipart(wire.encode_window(_window("a", 7)))
        deadline = time.monotonic() + 5.0
        while status["windows_missing"] != 2:
            assert time.monotonic() < deadline, status
            _pump(hub, 0.1)
            status = wire.decode_status(sub.recv_multipart())
        assert status["windows_dropped"] == 3 and status["pub_seq"] > 0
    finally:
        hub.stop()
        ctx.destroy(linger=0)


def _pump(hub: Hub, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        hub.process(0.01)


def test_stream_names_past_the_limit_are_refused_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "MAX_STREAMS", 4)
    hub, _endpoints, ctx, push = _started_hub(tmp_path, HubConfig(queue_per_stream=8))
    try:
        for i in range(10):  # a windower naming ten streams: four are served, six refused
            push.send_multipart(wire.encode_window(_window(f"bed{i}", 0)))
        _pump(hub, 0.3)
        assert sorted(hub.streams) == ["bed0", "bed1", "bed2", "bed3"] and hub.invalid == 6
        push.send_multipart(wire.encode_window(_window("bed0", 1)))  # a served stream goes on
        _pump(hub, 0.2)
        assert [w.seq for _t, w, _p in hub.streams["bed0"].queue] == [0, 1] and hub.invalid == 6
    finally:
        hub.stop()
        ctx.destroy(linger=0)


def test_a_flood_of_worker_identities_is_bounded_and_keeps_the_worker_that_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "MAX_PEERS", 16)
    hub, endpoints, ctx, push = _started_hub(tmp_path, HubConfig(queue_per_stream=8))
    try:
        healthy = ctx.socket(zmq.DEALER)
        healthy.connect(endpoints["workers"])
        push.send_multipart(wire.encode_window(_window("a", 0)))
        healthy.send(b"READY")
        _pump(hub, 0.2)
        window = wire.decode_window(healthy.recv_multipart())
        healthy.send_multipart([b"RESULT", *wire.encode_result(window, np.full(40, 50.0), "torch", 1.0, 1.0)])
        flood = []
        for i in range(60):  # new identities saying READY, the healthy worker repeating its own
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, b"flood-%d" % i)
            sock.connect(endpoints["workers"])
            sock.send(b"READY")
            flood.append(sock)
            if i % 8 == 0:
                healthy.send(b"READY")
            _pump(hub, 0.01)
        _pump(hub, 0.2)
        assert len(hub.peers) <= 16 and hub.peers_forgotten >= 44
        assert set(hub.ready) <= set(hub.peers)
        push.send_multipart(wire.encode_window(_window("a", 1)))
        _pump(hub, 0.2)
        assert healthy.poll(2000)
        assert wire.decode_window(healthy.recv_multipart()).seq == 1  # still known, still served first
        assert not any(sock.poll(0) for sock in flood)
    finally:
        ctx.destroy(linger=0)
        hub.stop()


def test_a_worker_that_lets_its_window_time_out_is_benched_with_a_growing_back_off(tmp_path: Path) -> None:
    hub, endpoints, ctx, push = _started_hub(tmp_path, HubConfig(queue_per_stream=8, result_timeout_s=0.5))
    try:
        mute, healthy = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        for sock in (mute, healthy):
            sock.connect(endpoints["workers"])
        sent = 0

        def feed(n: int) -> None:
            nonlocal sent
            for _ in range(n):
                push.send_multipart(wire.encode_window(_window("a", sent)))
                sent += 1

        def windows_for(sock: zmq.Socket) -> int:
            n = 0
            while sock.poll(0):
                sock.recv_multipart()
                n += 1
            return n

        feed(1)
        mute.send(b"READY")
        _pump(hub, 0.2)
        assert windows_for(mute) == 1  # a new peer is given a chance
        _pump(hub, 0.45)  # its window times out: counted, and it is benched for 0.5 s
        assert hub.streams["a"].dropped == 1
        feed(1)
        mute.send(b"READY")
        _pump(hub, 0.15)
        assert windows_for(mute) == 0  # READY ignored while benched: the window waits
        _pump(hub, 0.35)
        mute.send(b"READY")
        _pump(hub, 0.1)
        assert windows_for(mute) == 1  # back-off over: one more chance ...
        _pump(hub, 0.6)  # ... timed out again: benched for 1 s now
        assert hub.streams["a"].dropped == 2
        feed(1)
        mute.send_multipart([b"RESULT", b"\x93garbage"])  # a refused answer does not lift the bench
        for _ in range(3):  # 0.3 s of READYs into the 1 s: all ignored
            mute.send(b"READY")
            _pump(hub, 0.1)
        assert windows_for(mute) == 0 and hub.invalid == 1
        # A worker that answers is served first, and returning a result clears a worker's record.
        healthy.send(b"READY")
        _pump(hub, 0.2)
        (window,) = [wire.decode_window(healthy.recv_multipart())]
        samples = np.full(40, 50.0, np.float32)
        healthy.send_multipart([b"RESULT", *wire.encode_result(window, samples, "torch", 1.0, 1.0)])
        _pump(hub, 0.5)
        feed(1)
        mute.send(b"READY")
        healthy.send(b"READY")
        _pump(hub, 0.2)
        assert (windows_for(healthy), windows_for(mute)) == (1, 0)
    finally:
        ctx.destroy(linger=0)
        hub.stop()


def test_agent_config_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text("worker:\n  count: 1\n  bogus: 3\n")
    with pytest.raises(ConfigError, match=r"agent.yaml:worker: unknown key\(s\) \['bogus'\]"):
        load_agent_config(bad)
    bad.write_text("streams:\n  - id: a\n  - id: a\n")
    with pytest.raises(ConfigError, match="unique"):
        load_agent_config(bad)
    bad.write_text("capturee: {}\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_agent_config(bad)
    cfg = load_agent_config(ROOT / "configs" / "default.yaml", ["streams.0.fps=30", "worker.count=2"])
    assert cfg.streams[0].fps == 30.0 and cfg.worker.count == 2


def test_demo_command_writes_its_summary_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    cmd = [
        sys.executable,
        "-m",
        "edge_agent",
        "demo",
        "--seconds",
        "12",
        "--json",
        str(out),
        "--screenshot",
        str(tmp_path / "monitor.svg"),
        "--source",
        "synthetic://?ef=60&hr=80&quality=medium&seed=9",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(out.read_text())
    assert summary["n_estimates"] >= 8 and summary["streams"]["bed1"]["n_estimates"] == summary["n_estimates"]
    assert summary["mae_vs_truth"] < 5.0 and summary["windows_dropped"] == 0
    assert 0 < summary["latency_from_ready_ms"]["p50"] <= summary["latency_ms"]["p50"] < 2000
    assert summary["leftovers"] == {"processes": [], "rings": []}
    assert "bed1 #" in done.stdout  # the monitor's line per estimate (output is not a terminal)
    # The screen as it stood when the sources stopped, drawn although the output was not a terminal.
    svg = ET.parse(tmp_path / "monitor.svg").getroot()
    shown = " ".join("".join(t.itertext()) for t in svg.iter("{http://www.w3.org/2000/svg}text"))
    assert "bed1" in shown and "LVEF" in shown and "signal ok" in shown.replace("\xa0", " ")


def _free_port() -> int:
    with zmq.Context() as ctx, ctx.socket(zmq.REP) as probe:
        port = probe.bind_to_random_port("tcp://127.0.0.1")
        probe.unbind(f"tcp://127.0.0.1:{port}")
    return port


def test_remote_worker_over_tcp_serves_a_hub_without_local_workers(tmp_path: Path) -> None:
    workers, publish = _free_port(), _free_port()
    cfg = load_agent_config(
        None,
        [
            f"transport.workers=tcp://127.0.0.1:{workers}",
            f"transport.publish=tcp://127.0.0.1:{publish}",
            "worker.count=0",
            "supervisor.log_level=WARNING",
        ],
        sources=["synthetic://?ef=45&hr=80&quality=good&seed=4"],
    )
    agent = Agent(cfg)
    agent.start()
    remote = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_agent",
            "worker",
            "--connect",
            f"tcp://127.0.0.1:{workers}",
            "--set",
            "worker.threads=1",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        msgs = _collect(agent, 40.0, until=lambda m: sum(x["kind"] == "estimate" for x in m) >= 3)
    finally:
        remote.send_signal(signal.SIGTERM)
        remote.wait(timeout=20)
        agent.stop()
    _assert_nothing_left(agent)
    assert remote.returncode == 0, remote.stderr.read()[-2000:]
    estimates = [m for m in msgs if m["kind"] == "estimate"]
    assert len(estimates) >= 3 and abs(estimates[-1]["running"]["mean"] - 45.0) < 8.0
