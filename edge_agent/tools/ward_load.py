"""The ward page server under a full ward, for ``edge-agent bench``: ``beds`` beds publishing as the
agent does (an estimate per beat at ``hr_bpm``, a status twice a second, a heartbeat a second,
real wire messages on a real PUB socket), the page server (:class:`~edge_agent.clients.ward.WardServer`)
in a process of its own, and a page's event stream read over HTTP. Measured: the time from each
estimate's publication to its event reaching the page (same clock: publisher and reader share this
process), and the server process's CPU time as a share of one core (from /proc)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from edge_agent.core.metrics import distribution
from edge_agent.protocol import wire

WARMUP_S = 3.0  # before the CPU and latency windows open: the page has loaded, the server settled


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(endpoint: str, port: int) -> None:
    """The server process: the page server until SIGTERM (run_stage's stop)."""
    from edge_agent.clients.ward import WardServer, WebConfig
    from edge_agent.core.stage import run_stage

    run_stage(lambda: WardServer(WebConfig(port=port), endpoint))


def _cpu_s(pid: int) -> float:
    """User + system CPU time of process ``pid``, s (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summary(mean: float) -> dict[str, Any]:
    from edge_agent.model import posterior

    return posterior.summarize(np.random.default_rng(int(mean)).normal(mean, 3.0, 40)).to_dict()


def _read_events(url: str, arrivals: dict[tuple[str, int], float], stop: threading.Event) -> None:
    """The page's event stream: the arrival time of every estimate event, by (stream, seq)."""
    with urllib.request.urlopen(url + "events", timeout=30) as stream:
        event = ""
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "estimate":
                body = json.loads(line[6:])
                arrivals[(body["stream"], body["seq"])] = time.monotonic()
            if stop.is_set():
                return


def ward_load(beds: int = 16, seconds: float = 30.0, hr_bpm: float = 75.0) -> dict[str, Any]:
    """Run the load; returns ``latency_ms`` (publication → page, stats), ``cpu_share`` (server CPU
    s per wall s over the measured window: 0.1 = 10 % of one core), ``estimates`` (published in the
    window) and ``delivered`` (of those, reaching the page)."""
    folder = tempfile.mkdtemp(prefix="edge-agent-ward-")
    endpoint, port = f"ipc://{folder}/publish", _free_port()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(endpoint)
    server = mp.get_context("spawn").Process(target=_serve, args=(endpoint, port), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60.0
    while True:
        try:
            urllib.request.urlopen(url + "api/snapshot", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline or not server.is_alive():
                raise RuntimeError("ward load: the page server did not come up") from None
            time.sleep(0.2)
    arrivals: dict[tuple[str, int], float] = {}
    sent: dict[tuple[str, int], float] = {}
    stop = threading.Event()
    reader = threading.Thread(target=_read_events, args=(url, arrivals, stop), daemon=True)
    reader.start()
    try:
        window = _publish(pub, beds, seconds, hr_bpm, sent, server.pid)
        time.sleep(1.0)  # the last estimates reach the page
    finally:
        stop.set()
        server.terminate()
        server.join(10.0)
        pub.close(linger=0)
        ctx.term()
    t0, t1, cpu = window
    measured = {k: t for k, t in sent.items() if t0 <= t <= t1}
    latency = [1e3 * (arrivals[k] - t) for k, t in measured.items() if k in arrivals]
    return {
        "beds": beds,
        "seconds": seconds,
        "hr_bpm": hr_bpm,
        "estimates": len(measured),
        "delivered": len(latency),
        "latency_ms": distribution(np.asarray(latency)),
        "cpu_share": cpu / (t1 - t0),
    }


def _publish(
    pub: zmq.Socket, beds: int, seconds: float, hr_bpm: float, sent: dict, pid: int
) -> tuple[float, float, float]:
    """Publish the ward for WARMUP_S + seconds; returns the measured window (t0, t1) and the
    server's CPU s in it."""
    names = [f"bed{i + 1}" for i in range(beds)]
    summaries = {name: _summary(25.0 + 45.0 * i / max(1, beds - 1)) for i, name in enumerate(names)}
    period = 60.0 / hr_bpm
    seqs = dict.fromkeys(names, 0)
    pub_seq: dict[str, int] = {}
    # Beds offset within the beat so that their estimates do not all come at once.
    next_estimate = {name: time.monotonic() + period * i / beds for i, name in enumerate(names)}
    next_status = next_heartbeat = time.monotonic()
    start = time.monotonic()
    t0 = start + WARMUP_S
    t1 = t0 + seconds
    cpu0 = None
    while (now := time.monotonic()) < t1:
        if cpu0 is None and now >= t0:
            cpu0 = _cpu_s(pid)
        for name in names:
            if now >= next_estimate[name]:
                next_estimate[name] += period
                seq = seqs[name]
                seqs[name] += 1
                topic = wire.estimate_topic(name)
                pub_seq[topic] = pub_seq.get(topic, 0) + 1
                body = _estimate_body(seq, summaries[name], hr_bpm, pub_seq[topic])
                sent[(name, seq)] = time.monotonic()
                pub.send_multipart(wire.encode_estimate(name, body))
        if now >= next_status:
            next_status += 0.5
            for name in names:
                topic = wire.status_topic(name)
                pub_seq[topic] = pub_seq.get(topic, 0) + 1
                status = {"t": now, "fps": 50.0, "hr_bpm": hr_bpm, "signal": "ok", "pub_seq": pub_seq[topic]}
                status |= {"windows_dropped": 0, "frames_dropped": 0, "seq_gaps": 0}
                pub.send_multipart(wire.encode_status(name, status))
        if now >= next_heartbeat:
            next_heartbeat += 1.0
            pub.send_multipart(
                wire.encode_heartbeat(
                    {"host": "ward-load", "pid": os.getpid(), "uptime_s": now - start, "t": now}
                )
            )
        time.sleep(0.005)
    return t0, t1, _cpu_s(pid) - (cpu0 or 0.0)


def _estimate_body(seq: int, summary: dict[str, Any], hr_bpm: float, pub_seq: int) -> dict[str, Any]:
    now = time.monotonic()
    return {
        "seq": seq,
        "frame_seq": [seq * 40, seq * 40 + 39],
        "t": [now - 0.8, now - 0.1],
        "t_ready": now - 0.05,
        "t_published": now,
        "hr_bpm": hr_bpm,
        "backend": "onnxruntime",
        "latency_ms": 30.0,
        "stages": {"infer": 18.0},
        "reliable": True,
        "ood_score": 0.4,
        "beat_ood_score": 0.4,
        "beat": summary,
        "running": {**summary, "n_beats": min(seq + 1, 5)},
        "pub_seq": pub_seq,
    }
