"""``edge-agent demo``: the live agent and the bedside monitor in one command, with a summary.

Starts the agent (by default one simulated stream and the shipped model on the CPU), shows the
monitor for ``seconds``, then stops the sources, lets the workers finish the windows in flight,
stops everything and checks that no process or shared-memory ring is left. The summary
(:func:`demo_summary`, pure) says how many estimates came, how far the running estimate was from
the simulator's truth, the latency from a window's last frame to the estimate reaching this
subscriber, and what was dropped.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from edge_agent.clients.monitor import run_monitor, screenshot_svg
from edge_agent.clients.subscriber import T_RECEIVED
from edge_agent.core.metrics import distribution
from edge_agent.live.agent import Agent, AgentConfig

log = logging.getLogger(__name__)


def _missed_beats(estimates: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(beats without an estimate between the first and last estimated beat, how many of them lie
    between estimates of two different simulated patients), from the estimates' truth."""
    seen = sorted(
        {
            (int(m["truth"]["beat"]), m["truth"].get("patient"))
            for m in estimates
            if "beat" in m.get("truth", {})
        }
    )
    missed = at_switch = 0
    for (beat, patient), (next_beat, next_patient) in itertools.pairwise(seen):
        gap = max(0, next_beat - beat - 1)
        missed += gap
        at_switch += gap if patient != next_patient else 0
    return missed, at_switch


def demo_summary(messages: Sequence[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Messages a subscriber received (decoded, with ``T_RECEIVED``) → the demo's summary.

    mae_vs_truth: mean |running mean − mean true EF of the pooled beats| (EF points), over the
    estimates that carry simulator truth; beat_mae_vs_truth: the same for single beats.
    latency_ms: window's last frame (the closing ED) captured → estimate received here (n, min, mean,
    p50, p90, p99, max, ms); it includes the detector's confirmation delay (an ED is known only once
    ejection has begun). latency_from_ready_ms: from the capture of the frame that completed the
    window, i.e. windowing, transport, inference and publishing only. latency_steady_ms: latency_ms
    without each stream's first estimate (an image-gated stream's first beat waits for the second
    to check its length: a start-up cost, not the steady state).
    beats_missed: simulator beats inside the estimated span without an estimate of their own;
    beats_missed_at_patient_change: those of them lost where the simulated patient changed (the
    cut-short last beat of one patient, and beats while the detector locks onto the next).
    windows_dropped, frames_dropped: from each stream's last status.
    stages_ms: per stage (the estimates' ``stages``, plus ``deliver``: published → received here)
    p50, p99 and max, ms.
    """
    estimates = [m for m in messages if m["kind"] == "estimate"]
    last_status: dict[str, dict] = {}
    for m in messages:
        if m["kind"] == "status":
            last_status[m["stream"]] = m
    streams: dict[str, Any] = {}
    all_running, all_beat, latencies, from_ready, steady = [], [], [], [], []
    for name in sorted({m["stream"] for m in estimates} | set(last_status)):
        mine = [m for m in estimates if m["stream"] == name]
        running_err = [
            abs(m["running"]["mean"] - m["truth"]["ef_running"])
            for m in mine
            if "ef_running" in m.get("truth", {})
        ]
        beat_err = [abs(m["beat"]["mean"] - m["truth"]["ef"]) for m in mine if "ef" in m.get("truth", {})]
        lat = [1000.0 * (m[T_RECEIVED] - m["t"][1]) for m in mine]
        ready = [1000.0 * (m[T_RECEIVED] - m["t_ready"]) for m in mine]
        missed, at_switch = _missed_beats(mine)
        status = last_status.get(name, {})
        streams[name] = {
            "n_estimates": len(mine),
            "mae_vs_truth": float(np.mean(running_err)) if running_err else None,
            "beat_mae_vs_truth": float(np.mean(beat_err)) if beat_err else None,
            "beats_missed": missed,
            "beats_missed_at_patient_change": at_switch,
            "windows_dropped": int(status.get("windows_dropped", 0)),
            "frames_dropped": int(status.get("frames_dropped", 0)),
            "last_running_mean": mine[-1]["running"]["mean"] if mine else None,
            "latency_ms": distribution(lat),
            "latency_from_ready_ms": distribution(ready),
        }
        all_running += running_err
        all_beat += beat_err
        latencies += lat
        from_ready += ready
        steady += lat[1:]
    stages: dict[str, list[float]] = {}
    for m in estimates:
        for name, ms in {
            **m.get("stages", {}),
            "deliver": 1000.0 * (m[T_RECEIVED] - m["t_published"]),
        }.items():
            stages.setdefault(name, []).append(ms)
    return {
        "seconds": seconds,
        "n_estimates": len(estimates),
        "stages_ms": {name: distribution(v) for name, v in stages.items()},
        "streams": streams,
        "mae_vs_truth": float(np.mean(all_running)) if all_running else None,
        "beat_mae_vs_truth": float(np.mean(all_beat)) if all_beat else None,
        "latency_ms": distribution(latencies),
        "latency_from_ready_ms": distribution(from_ready),
        "latency_steady_ms": distribution(steady),
        "latencies_ms": [round(x, 3) for x in latencies],
        "latencies_from_ready_ms": [round(x, 3) for x in from_ready],
        "windows_dropped": sum(s["windows_dropped"] for s in streams.values()),
        "frames_dropped": sum(s["frames_dropped"] for s in streams.values()),
        "beats_missed": sum(s["beats_missed"] for s in streams.values()),
        "beats_missed_at_patient_change": sum(s["beats_missed_at_patient_change"] for s in streams.values()),
        "backend": estimates[-1]["backend"] if estimates else None,
    }


def run_demo(
    cfg: AgentConfig,
    seconds: float,
    json_path: str | Path | None = None,
    console: Console | None = None,
    drain_s: float = 3.0,
    screenshot_path: str | Path | None = None,
) -> dict[str, Any]:
    """Run the agent with the monitor for ``seconds`` s; return (and write) the summary.

    ``screenshot_path``: also write the monitor screen as it stood when the sources stopped (SVG).
    """
    agent = Agent(cfg)
    messages: list[dict[str, Any]] = []
    t0 = time.monotonic()
    agent.start()
    t_started = time.monotonic()
    t_stop_sources = t_started + seconds

    def tick() -> None:
        agent.check()
        # After `seconds`, stop the sources; the last beats are still in the workers: keep listening.
        if agent.sources_running and time.monotonic() >= t_stop_sources:
            agent.stop_sources()

    try:
        run_monitor(
            agent.endpoints["publish"],
            alarms=cfg.alarms,
            duration_s=seconds + drain_s,
            console=console,
            on_message=messages.append,
            on_tick=tick,
        )
    finally:
        agent.stop()
    summary = demo_summary(messages, seconds)
    summary["startup_s"] = t_started - t0
    summary["leftovers"] = agent.leftovers()
    summary["config"] = {
        "streams": [s.source for s in cfg.streams],
        "workers": cfg.worker.count,
        "backend": cfg.worker.backend,
    }
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(summary, indent=2) + "\n")
    if screenshot_path is not None:
        Path(screenshot_path).parent.mkdir(parents=True, exist_ok=True)
        Path(screenshot_path).write_text(
            screenshot_svg(messages, min(t_stop_sources, time.monotonic()), cfg.alarms)
        )
    return summary
