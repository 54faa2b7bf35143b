"""Prometheus metrics of a running agent: a subscriber of the hub's publish endpoint that serves
``http://HOST:PORT/metrics`` (``edge-agent metrics``, or the agent's ``metrics`` process when the
YAML section ``metrics.port`` is set).

It reads only what the hub publishes, so it adds no work to the hub's loop and can run on another
host (``--connect tcp://edge-01:5556``). Times come from the messages (the capture host's clock)
except the heartbeat age, measured on this process's clock from when the heartbeat arrived.

Metrics (labels in braces; durations in seconds, the Prometheus base unit):

| Metric                                           | Type      | From                                       |
|--------------------------------------------------|-----------|--------------------------------------------|
| `edge_agent_estimates_total{stream}`             | counter   | estimates received                         |
| `edge_agent_latency_seconds{stream}`             | histogram | `latency_ms`: last frame → published       |
| `edge_agent_latency_from_ready_seconds{stream}`  | histogram | `t_published − t_ready`                    |
| `edge_agent_stage_seconds{stream,stage}`         | histogram | each entry of the estimate's `stages`      |
| `edge_agent_lvef_running_percent{stream}`        | gauge     | running posterior mean, EF %               |
| `edge_agent_p_ef_lt_40_running_ratio{stream}`    | gauge     | running P(EF < 40 %)                       |
| `edge_agent_reliable{stream}`                    | gauge     | 1 reliable, 0 LOW CONFIDENCE (`reliable`)  |
| `edge_agent_ood_score{stream}`                   | gauge     | running `ood_score` (NaN: model has none)  |
| `edge_agent_estimate_seq_gaps_total{stream}`     | counter   | skips in the estimate numbering            |
| `edge_agent_estimates_missing_total{stream}`     | counter   | estimates skipped by them                  |
| `edge_agent_estimate_seq_restarts_total{stream}` | counter   | numbering restarts (windower restarted)    |
| `edge_agent_fps{stream}`                         | gauge     | status `fps`, frames/s                     |
| `edge_agent_heart_rate_bpm{stream}`              | gauge     | status `hr_bpm` (NaN while unknown)        |
| `edge_agent_windows_dropped{stream}`             | gauge     | status `windows_dropped`                   |
| `edge_agent_frames_dropped{stream}`              | gauge     | status `frames_dropped`                    |
| `edge_agent_frame_seq_gaps{stream}`              | gauge     | status `seq_gaps`                          |
| `edge_agent_status_count{stream,counter}`        | gauge     | the status's other counters (below)        |
| `edge_agent_queue_windows{stream}`               | gauge     | status `queue`: windows waiting in the hub |
| `edge_agent_signal{stream,edge_agent_signal}`    | stateset  | status `signal`: 1 for the current state   |
| `edge_agent_beat_source{stream,edge_agent_beat_source}` | stateset | status `beat_source` (once present) |
| `edge_agent_heartbeat_age_seconds{host}`         | gauge     | s since the latest heartbeat arrived       |
| `edge_agent_publisher_uptime_seconds{host}`      | gauge     | heartbeat `uptime_s`                       |
| `edge_agent_exporter_messages_total{kind}`       | counter   | messages this exporter received            |
| `edge_agent_exporter_duplicates_total`           | counter   | last-value-cache re-sends it dropped       |
| `edge_agent_exporter_invalid_total`              | counter   | messages the wire decoder refused          |

The dropped/gap gauges mirror the publisher's own since-start counts, which restart with it, so
they are gauges, not counters. ``edge_agent_status_count``'s ``counter`` label is one of
``STATUS_COUNTERS``, the status's optional counters (``wire.FRAME_COUNTERS``,
``wire.DETECTOR_COUNTERS`` and ``wire.HUB_COUNTERS``: frames_blank, frames_frozen, frames_saturated,
windows_rejected, beats_detected, windows_fixed, eds_rejected, eds_corrected, signal_switches,
detector_resets, windows_failed, windows_missing), each when the status has it.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_agent.clients.subscriber import T_RECEIVED, Subscriber, classify_seq, subscriber_keys
from edge_agent.protocol import wire
from edge_agent.protocol.transport import TransportConfig

log = logging.getLogger(__name__)

# Seconds: from sub-millisecond stages (publish) to multi-second end-to-end latency under load.
BUCKETS_S = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


# Optional status counters exported as edge_agent_status_count{counter=...}.
STATUS_COUNTERS = (*wire.FRAME_COUNTERS, *wire.DETECTOR_COUNTERS, *wire.HUB_COUNTERS)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus exporter (YAML section ``metrics``).

    port: TCP port of ``/metrics``; null (the default) runs no exporter; 0 takes any free port
        (logged).
    host: address the HTTP server binds; 127.0.0.1 (the default) is loopback only: scrape from this
        host, or through a tunnel or reverse proxy. The endpoint has no authentication, so bind
        0.0.0.0 only on a trusted network.
    """

    port: int | None = None
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ValueError(f"port: expected 0-65535 (or null: no exporter), got {self.port}")
        if not self.host:
            raise ValueError("host: expected an address to bind, e.g. 127.0.0.1")


def connect_endpoint(bound: str) -> str:
    """A bind endpoint → one a local subscriber can connect to (``tcp://0.0.0.0:5556`` and
    ``tcp://*:5556`` bind every interface; loopback is one of them)."""
    return re.sub(r"^tcp://(\*|0\.0\.0\.0):", "tcp://127.0.0.1:", bound)


class _Received(Collector):
    """Values computed when scraped: heartbeat age (this process's clock) and the subscriber's counters."""

    def __init__(self, exporter: MetricsExporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Any]:
        now = time.monotonic()
        with self.exporter.lock:
            heartbeats = dict(self.exporter.heartbeats)
        age = GaugeMetricFamily(
            "edge_agent_heartbeat_age_seconds",
            "Seconds since the publisher's latest heartbeat arrived (exporter's clock)",
            labels=["host"],
        )
        for host, t_received in sorted(heartbeats.items()):
            age.add_metric([host], now - t_received)
        yield age
        sub = self.exporter.sub
        yield CounterMetricFamily(
            "edge_agent_exporter_duplicates",
            "Estimates dropped as already received (publisher's last-value cache re-sends)",
            value=0 if sub is None else sub.duplicates,
        )
        yield CounterMetricFamily(
            "edge_agent_exporter_invalid",
            "Messages refused by the wire decoder",
            value=0 if sub is None else sub.invalid,
        )


class MetricsExporter:
    """The exporter's lifecycle, like the agent's stages: ``start`` subscribes and starts the HTTP
    server, ``process`` folds in what arrived within 0.2 s, ``stop`` shuts both down.

    ``endpoints``: publish endpoint(s) to subscribe to. ``curve_server_key``, ``curve_client_key``:
    as for :class:`~edge_agent.clients.subscriber.Subscriber` (a publisher with CURVE on). ``transport``: the
    agent's transport section, for the agent's own exporter: with ``curve_secret`` set and a tcp
    endpoint it subscribes with the agent's certificate, which the hub admits.
    After ``start``, ``port`` is the port bound (the one asked for, or the free one for port 0).
    """

    def __init__(
        self,
        cfg: MetricsConfig,
        endpoints: str | Sequence[str],
        transport: TransportConfig | None = None,
        curve_server_key: str | None = None,
        curve_client_key: str | None = None,
    ) -> None:
        if cfg.port is None:
            raise ValueError("metrics.port: null means no exporter; set a port (e.g. 9108) to run one")
        self.cfg = cfg
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.curve_keys = subscriber_keys(self.endpoints, transport, curve_server_key, curve_client_key)
        self.sub: Subscriber | None = None
        self.server: Any = None
        self.port: int | None = None
        self.lock = threading.Lock()  # heartbeats are read by the HTTP thread
        self.heartbeats: dict[str, float] = {}  # host → receive time of its latest heartbeat, s
        self.last_seq: dict[str, int] = {}
        self.registry = CollectorRegistry()
        self._define(self.registry)

    def _define(self, r: CollectorRegistry) -> None:
        self._define_estimates(r)
        self._define_status(r)
        self.uptime = Gauge(
            "edge_agent_publisher_uptime_seconds", "Publisher uptime from its heartbeat", ["host"], registry=r
        )
        self.messages = Counter(
            "edge_agent_exporter_messages", "Messages this exporter received", ["kind"], registry=r
        )
        r.register(_Received(self))

    def _define_estimates(self, r: CollectorRegistry) -> None:
        s = ["stream"]
        self.estimates = Counter("edge_agent_estimates", "Estimates received", s, registry=r)
        self.latency = Histogram(
            "edge_agent_latency_seconds",
            "Window's last frame captured → estimate published (estimate latency_ms)",
            s,
            buckets=BUCKETS_S,
            registry=r,
        )
        self.latency_ready = Histogram(
            "edge_agent_latency_from_ready_seconds",
            "Frame completing the beat captured (t_ready) → estimate published",
            s,
            buckets=BUCKETS_S,
            registry=r,
        )
        self.stage = Histogram(
            "edge_agent_stage_seconds",
            "Time per pipeline stage (estimate stages: detect, window, to_worker, infer, publish)",
            [*s, "stage"],
            buckets=BUCKETS_S,
            registry=r,
        )
        self.lvef = Gauge("edge_agent_lvef_running_percent", "Running posterior mean LVEF, %", s, registry=r)
        self.p_reduced = Gauge(
            "edge_agent_p_ef_lt_40_running_ratio", "Running posterior P(EF < 40 %)", s, registry=r
        )
        self.reliable = Gauge(
            "edge_agent_reliable",
            "1 when the running estimate is reliable, 0 when low confidence",
            s,
            registry=r,
        )
        self.ood = Gauge(
            "edge_agent_ood_score", "Running out-of-distribution score (familiar <= 1)", s, registry=r
        )
        self.seq_gaps = Counter(
            "edge_agent_estimate_seq_gaps", "Breaks in a stream's estimate numbering", s, registry=r
        )
        self.missing = Counter(
            "edge_agent_estimates_missing", "Estimates skipped by numbering breaks", s, registry=r
        )
        self.restarts = Counter(
            "edge_agent_estimate_seq_restarts",
            "Estimate numbering restarts (windower restarted)",
            s,
            registry=r,
        )

    def _define_status(self, r: CollectorRegistry) -> None:
        s = ["stream"]
        self.fps = Gauge("edge_agent_fps", "Measured capture rate, frames/s", s, registry=r)
        self.hr = Gauge(
            "edge_agent_heart_rate_bpm", "Latest heart rate, beats/min (NaN: unknown)", s, registry=r
        )
        self.windows_dropped = Gauge(
            "edge_agent_windows_dropped", "Windows dropped since the publisher started", s, registry=r
        )
        self.frames_dropped = Gauge(
            "edge_agent_frames_dropped", "Frames dropped since the capture started", s, registry=r
        )
        self.frame_gaps = Gauge(
            "edge_agent_frame_seq_gaps", "Gaps in frame sequence numbers since start", s, registry=r
        )
        self.queue = Gauge(
            "edge_agent_queue_windows", "Windows waiting in the hub for a worker", s, registry=r
        )
        self.counts = Gauge(
            "edge_agent_status_count",
            f"The status's other counters since start ({', '.join(STATUS_COUNTERS)})",
            [*s, "counter"],
            registry=r,
        )
        self.signal = Enum(
            "edge_agent_signal", "Signal state of the stream", s, states=list(wire.SIGNAL_STATES), registry=r
        )
        self.beat_source = Enum(
            "edge_agent_beat_source",
            "How the stream's latest window was timed",
            s,
            states=list(wire.BEAT_SOURCES),
            registry=r,
        )

    def start(self) -> None:
        server_key, client_key = self.curve_keys
        self.sub = Subscriber(
            self.endpoints, rcvhwm=10_000, curve_server_key=server_key, curve_client_key=client_key
        )
        try:
            self.server, _thread = start_http_server(
                self.cfg.port, addr=self.cfg.host, registry=self.registry
            )
        except OSError as e:
            raise OSError(
                f"metrics: cannot serve on {self.cfg.host}:{self.cfg.port}: {e}; choose another "
                "metrics.port (or --port), or 0 for any free port"
            ) from None
        self.port = int(self.server.server_port)
        if self.cfg.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning(
                "metrics: /metrics on %s is reachable from other hosts, without authentication", self.cfg.host
            )
        log.info("metrics: http://%s:%d/metrics from %s", self.cfg.host, self.port, ", ".join(self.endpoints))

    def process(self, timeout: float = 0.2) -> bool:
        """Fold in every message that arrives within ``timeout`` s; always True (runs until stopped)."""
        assert self.sub is not None, "start() first"
        msg = self.sub.recv(timeout)
        while msg is not None:
            self.observe(msg)
            msg = self.sub.recv(0)
        return True

    def observe(self, msg: Mapping[str, Any]) -> None:
        """Update the metrics with one decoded message (estimate, status or heartbeat)."""
        kind = msg["kind"]
        self.messages.labels(kind).inc()
        if kind == "heartbeat":
            with self.lock:
                self.heartbeats[msg["host"]] = msg.get(T_RECEIVED, time.monotonic())
            self.uptime.labels(msg["host"]).set(msg["uptime_s"])
            return
        stream = msg["stream"]
        if kind == "status":
            self.fps.labels(stream).set(msg["fps"])
            self.hr.labels(stream).set(math.nan if msg["hr_bpm"] is None else msg["hr_bpm"])
            self.windows_dropped.labels(stream).set(msg["windows_dropped"])
            self.frames_dropped.labels(stream).set(msg["frames_dropped"])
            self.frame_gaps.labels(stream).set(msg["seq_gaps"])
            self.signal.labels(stream).state(msg["signal"])
            if "queue" in msg:  # a hub older than the queue field does not send it
                self.queue.labels(stream).set(msg["queue"])
            if "beat_source" in msg:  # absent before the stream's first window
                self.beat_source.labels(stream).state(msg["beat_source"])
            for name in STATUS_COUNTERS:
                if name in msg:
                    self.counts.labels(stream, name).set(msg[name])
            return
        self.estimates.labels(stream).inc()
        self.latency.labels(stream).observe(msg["latency_ms"] / 1000.0)
        self.latency_ready.labels(stream).observe(msg["t_published"] - msg["t_ready"])
        for name, ms in msg["stages"].items():
            self.stage.labels(stream, name).observe(ms / 1000.0)
        self.lvef.labels(stream).set(msg["running"]["mean"])
        self.p_reduced.labels(stream).set(msg["running"]["p_ef_lt_40"])
        self.reliable.labels(stream).set(1.0 if msg["reliable"] else 0.0)
        self.ood.labels(stream).set(math.nan if msg["ood_score"] is None else msg["ood_score"])
        step = classify_seq(self.last_seq.get(stream), msg["seq"])
        self.last_seq[stream] = msg["seq"]
        if step.kind == "gap":
            self.seq_gaps.labels(stream).inc()
            self.missing.labels(stream).inc(step.missing)
        elif step.kind == "restart":
            self.restarts.labels(stream).inc()
            self.missing.labels(stream).inc(step.missing)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.sub is not None:
            self.sub.close()
            log.info(
                "metrics: stopped; %d messages, %d duplicates, %d invalid",
                self.sub.received,
                self.sub.duplicates,
                self.sub.invalid,
            )
