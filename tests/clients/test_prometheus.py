"""The Prometheus exporter: real publishers, real HTTP scrapes parsed as Prometheus text.

A real XPUB socket sends real wire messages with known values and the scrape must show exactly
them (histogram counts and sums, the last status as gauges, queue depth, gaps, heartbeat age);
the standalone ``edge-agent metrics`` runs as a real process; one test scrapes a real agent whose
configuration turns the exporter on.
"""

from __future__ import annotations

import math
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import zmq
from fixtures import summary_body
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.clients.prometheus import MetricsConfig, MetricsExporter, connect_endpoint
from edge_agent.config import ConfigError
from edge_agent.live.agent import Agent, compose, load_agent_config
from edge_agent.protocol import wire

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, frozenset], float]


# ---------------------------------------------------------------- helpers


def estimate_body(seq: int, latency_ms: float, infer_ms: float, running_mean: float) -> dict[str, Any]:
    t_published = 1000.0 + seq
    return {
        "seq": seq,
        "frame_seq": [seq * 50, seq * 50 + 49],
        "t": [t_published - latency_ms / 1000.0 - 1.0, t_published - latency_ms / 1000.0],
        "t_ready": t_published - 0.1 * (seq + 1),
        "t_published": t_published,
        "beat": summary_body(50.0, p_ef_lt_40=0.25, p_ef_lt_50=0.5),
        "running": {**summary_body(running_mean, p_ef_lt_40=0.25, p_ef_lt_50=0.5), "n_beats": 3},
        "hr_bpm": 72.0,
        "backend": "onnxruntime",
        "latency_ms": latency_ms,
        "stages": {"detect": 100.0, "infer": infer_ms, "publish": 2.0},
        "reliable": True,
        "ood_score": 0.6,
        "beat_ood_score": 0.7,
    }


def status_body(**extra: Any) -> dict[str, Any]:
    return {
        "t": 5.0,
        "fps": 50.0,
        "hr_bpm": 70.0,
        "signal": "ok",
        "windows_dropped": 0,
        "frames_dropped": 0,
        "seq_gaps": 0,
        "queue": 0,
        **extra,
    }


class Publisher:
    """A real XPUB socket on a random loopback tcp port."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def wait_subscriber(self, timeout_s: float = 20.0, while_waiting=None) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.sock.poll(50):
            assert time.monotonic() < deadline, "no subscriber connected"
            if while_waiting is not None:
                while_waiting()
        assert self.sock.recv()[:1] == b"\x01"

    def send(self, parts: list) -> None:
        self.sock.send_multipart([bytes(p) for p in parts])

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the exporter against a real publisher


def test_scrape_shows_exactly_what_was_published() -> None:
    pub = Publisher()
    exporter = MetricsExporter(MetricsConfig(port=0), pub.endpoint)
    exporter.start()
    try:
        pub.wait_subscriber()
        sent: list[dict[str, Any]] = []
        for seq, latency, infer in [
            (0, 900.0, 300.0),
            (1, 1200.0, 450.0),
            (2, 700.0, 600.0),
            (4, 2500.0, 1900.0),
        ]:
            body = estimate_body(seq, latency, infer, running_mean=40.0 + seq)
            sent.append(body)
            pub.send(wire.encode_estimate("bed1", body))
        pub.send(wire.encode_estimate("bed1", sent[-1]))  # the last-value cache's re-send: dropped
        pub.send(wire.encode_estimate("bed2", estimate_body(0, 800.0, 250.0, running_mean=61.0)))
        pub.send(wire.encode_estimate("bed2", estimate_body(0, 850.0, 260.0, 62.0) | {"t_published": 3000.0}))
        pub.send([b"status.bed1", b"\xc1"])  # invalid: counted
        pub.send(wire.encode_status("bed1", status_body(fps=20.0, windows_dropped=1)))
        last = status_body(fps=49.5, windows_dropped=3, frames_dropped=4, seq_gaps=1, queue=2, signal="stale")
        last |= {"windows_missing": 5, "frames_frozen": 6, "beat_source": "fixed", "windows_fixed": 7}
        pub.send(wire.encode_status("bed1", last))
        pub.send(wire.encode_status("bed2", status_body(hr_bpm=None, signal="lost", fps=0.0)))
        pub.send(wire.encode_heartbeat({"host": "edge-01", "pid": 77, "uptime_s": 12.5, "t": 9.0}))
        deadline = time.monotonic() + 20
        while exporter.sub.received + exporter.sub.duplicates + exporter.sub.invalid < 12:
            assert time.monotonic() < deadline, "the exporter did not receive every message"
            exporter.process(0.05)
        got = scrape(exporter.port)
    finally:
        exporter.stop()
        pub.close()

    bed1 = {"stream": "bed1"}
    assert value(got, "edge_agent_estimates_total", **bed1) == 4
    assert value(got, "edge_agent_estimates_total", stream="bed2") == 2  # a restart, not a duplicate
    assert value(got, "edge_agent_latency_seconds_count", **bed1) == 4
    assert math.isclose(
        value(got, "edge_agent_latency_seconds_sum", **bed1), (900 + 1200 + 700 + 2500) / 1000
    )
    assert value(got, "edge_agent_latency_seconds_bucket", le="1.0", **bed1) == 2  # 0.9 s and 0.7 s
    assert value(got, "edge_agent_latency_seconds_bucket", le="+Inf", **bed1) == 4
    ready = sum(b["t_published"] - b["t_ready"] for b in sent)
    assert math.isclose(value(got, "edge_agent_latency_from_ready_seconds_sum", **bed1), ready)
    infer = {"stream": "bed1", "stage": "infer"}
    assert value(got, "edge_agent_stage_seconds_count", **infer) == 4
    assert math.isclose(value(got, "edge_agent_stage_seconds_sum", **infer), (300 + 450 + 600 + 1900) / 1000)
    assert value(got, "edge_agent_stage_seconds_bucket", le="0.5", **infer) == 2
    assert value(got, "edge_agent_stage_seconds_count", stream="bed1", stage="publish") == 4
    assert value(got, "edge_agent_lvef_running_percent", **bed1) == 44.0
    assert value(got, "edge_agent_p_ef_lt_40_running_ratio", **bed1) == 0.25
    assert value(got, "edge_agent_estimate_seq_gaps_total", **bed1) == 1  # seq 3 never came
    assert value(got, "edge_agent_estimates_missing_total", **bed1) == 1
    assert value(got, "edge_agent_estimate_seq_restarts_total", stream="bed2") == 1

    # Gauges hold the last status of each stream.
    assert value(got, "edge_agent_fps", **bed1) == 49.5
    assert value(got, "edge_agent_heart_rate_bpm", **bed1) == 70.0
    assert math.isnan(value(got, "edge_agent_heart_rate_bpm", stream="bed2"))
    assert value(got, "edge_agent_windows_dropped", **bed1) == 3
    assert value(got, "edge_agent_frames_dropped", **bed1) == 4
    assert value(got, "edge_agent_frame_seq_gaps", **bed1) == 1
    assert value(got, "edge_agent_queue_windows", **bed1) == 2
    assert value(got, "edge_agent_status_count", counter="windows_missing", **bed1) == 5
    assert value(got, "edge_agent_status_count", counter="frames_frozen", **bed1) == 6
    assert (
        "edge_agent_status_count",
        frozenset({("stream", "bed2"), ("counter", "frames_frozen")}),
    ) not in got
    assert value(got, "edge_agent_signal", edge_agent_signal="stale", **bed1) == 1
    assert value(got, "edge_agent_signal", edge_agent_signal="ok", **bed1) == 0
    assert value(got, "edge_agent_signal", edge_agent_signal="lost", stream="bed2") == 1
    assert value(got, "edge_agent_status_count", counter="windows_fixed", **bed1) == 7
    assert value(got, "edge_agent_beat_source", edge_agent_beat_source="fixed", **bed1) == 1
    assert value(got, "edge_agent_beat_source", edge_agent_beat_source="area", **bed1) == 0
    no_window_yet = frozenset({("stream", "bed2"), ("edge_agent_beat_source", "area")})
    assert ("edge_agent_beat_source", no_window_yet) not in got

    assert 0 <= value(got, "edge_agent_heartbeat_age_seconds", host="edge-01") < 10
    assert value(got, "edge_agent_publisher_uptime_seconds", host="edge-01") == 12.5
    assert value(got, "edge_agent_exporter_messages_total", kind="estimate") == 6
    assert value(got, "edge_agent_exporter_messages_total", kind="status") == 3
    assert value(got, "edge_agent_exporter_duplicates_total") == 1
    assert value(got, "edge_agent_exporter_invalid_total") == 1


def test_metrics_command_serves_until_sigterm_and_refuses_a_taken_port() -> None:
    pub = Publisher()
    cmd = [sys.executable, "-m", "edge_agent", "metrics", "--connect", pub.endpoint, "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline()]
        while not (found := re.search(r"metrics: http://127\.0\.0\.1:(\d+)/metrics", lines[-1])):
            assert lines[-1] and len(lines) < 20, lines  # EOF or no such line: it did not start
            lines.append(proc.stderr.readline())
        port = int(found.group(1))
        pub.wait_subscriber()
        deadline = time.monotonic() + 20
        got: Samples = {}
        while ("edge_agent_queue_windows", frozenset({("stream", "bed3")})) not in got:
            assert time.monotonic() < deadline, "the queue depth never showed"
            pub.send(wire.encode_status("bed3", status_body(queue=1)))
            time.sleep(0.1)
            got = scrape(port)
        assert value(got, "edge_agent_queue_windows", stream="bed3") == 1

        taken = subprocess.run([*cmd[:-1], str(port)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert taken.returncode == 1
        assert f"cannot serve on 127.0.0.1:{port}" in taken.stderr and "choose another" in taken.stderr
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        pub.close()
    assert proc.returncode == 0, err[-2000:]
    assert "metrics: stopped" in err
    with pytest.raises(OSError):  # the server is gone
        scrape(port)


def test_agent_with_metrics_port_runs_the_exporter(tmp_path: Path) -> None:
    port = free_port()
    cfg = load_agent_config(
        None,
        [
            "transport.publish=ipc://{run}/publish",
            "supervisor.log_level=WARNING",
            "worker.threads=1",
            f"metrics.port={port}",
        ],
        sources=["synthetic://?seed=1&fps=50&ecg=1"],
    )
    agent = Agent(cfg)
    assert "metrics" in [p.name for p in agent.procs]
    agent.start()
    try:
        deadline = time.monotonic() + 60
        got: Samples = {}
        bed1_key = frozenset({("stream", "bed1")})
        # Two estimates, and a status from a steady stream (its first ones measure a start-up second).
        while got.get(("edge_agent_estimates_total", bed1_key), 0) < 2 or not (
            40 <= got.get(("edge_agent_fps", bed1_key), 0) <= 60
        ):
            assert time.monotonic() < deadline, "no 2 estimates and a 50 fps status within 60 s"
            agent.check()
            time.sleep(0.5)
            got = scrape(port)
    finally:
        agent.stop()
    assert agent.leftovers() == {"processes": [], "rings": []}
    bed1 = {"stream": "bed1"}
    assert value(got, "edge_agent_latency_seconds_count", **bed1) >= 2
    assert (
        0
        < value(got, "edge_agent_latency_seconds_sum", **bed1)
        < 10 * value(got, "edge_agent_latency_seconds_count", **bed1)
    )
    assert value(got, "edge_agent_stage_seconds_count", stream="bed1", stage="infer") >= 2
    assert 0 <= value(got, "edge_agent_queue_windows", **bed1) <= cfg.hub.queue_per_stream
    assert 40 <= value(got, "edge_agent_fps", **bed1) <= 60
    ages = [v for (name, _labels), v in got.items() if name == "edge_agent_heartbeat_age_seconds"]
    assert len(ages) == 1 and 0 <= ages[0] < 5  # the hub's heartbeat, once a second


# ---------------------------------------------------------------- configuration and wire


def test_metrics_config_is_off_by_default_and_checked(tmp_path: Path) -> None:
    cfg = load_agent_config(None)
    assert cfg.metrics == MetricsConfig(port=None, host="127.0.0.1")
    endpoints = {k: f"ipc://{tmp_path}/{k}" for k in ("windows", "workers", "publish")}
    assert "metrics" not in [p.name for p in compose(cfg, endpoints, {"bed1": "ring"})]
    shipped = load_agent_config(ROOT / "configs" / "default.yaml")
    assert shipped.metrics.port is None
    with pytest.raises(ConfigError, match=r"metrics.*port: expected 0-65535"):
        load_agent_config(None, ["metrics.port=70000"])
    with pytest.raises(ConfigError, match=r"metrics: unknown key\(s\) \['bogus'\]"):
        load_agent_config(None, ["metrics.bogus=1"])
    with pytest.raises(ValueError, match="null means no exporter"):
        MetricsExporter(MetricsConfig(), "tcp://127.0.0.1:1")


@pytest.mark.parametrize(
    "bound, connect",
    [
        ("tcp://0.0.0.0:5556", "tcp://127.0.0.1:5556"),
        ("tcp://*:5556", "tcp://127.0.0.1:5556"),
        ("tcp://127.0.0.1:5556", "tcp://127.0.0.1:5556"),
        ("tcp://10.0.0.5:5556", "tcp://10.0.0.5:5556"),
        ("ipc:///tmp/run/publish", "ipc:///tmp/run/publish"),
    ],
)
def test_connect_endpoint(bound: str, connect: str) -> None:
    assert connect_endpoint(bound) == connect


def test_status_queue_is_optional_and_checked() -> None:
    with_queue = wire.decode_status(wire.encode_status("bed1", status_body(queue=3)))
    assert with_queue["queue"] == 3
    report = {k: v for k, v in status_body().items() if k != "queue"}  # a windower's report
    assert "queue" not in wire.decode_status(wire.encode_status("bed1", report))
    with pytest.raises(wire.WireError, match=r"status\.queue"):
        wire.encode_status("bed1", status_body(queue=-1))
