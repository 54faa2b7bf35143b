"""The demo's summary (a pure function of the messages a subscriber received)."""

from __future__ import annotations

import pytest

from edge_agent.clients.subscriber import T_RECEIVED
from edge_agent.tools.demo import demo_summary


def _estimate(seq: int, beat: int, patient: int, mean: float, truth: float, t_last: float) -> dict:
    summary = {"mean": mean}
    return {
        "kind": "estimate",
        "stream": "bed1",
        "seq": seq,
        "t": [t_last - 1.0, t_last],
        "t_ready": t_last + 0.15,
        "beat": summary,
        "running": {**summary, "n_beats": 1},
        "backend": "torch",
        "t_published": t_last + 0.19,
        "stages": {"detect": 150.0, "infer": 20.0},
        "truth": {"ef": truth, "ef_running": truth, "beat": float(beat), "patient": float(patient)},
        T_RECEIVED: t_last + 0.2,
    }


def test_summary_counts_errors_latency_and_missed_beats() -> None:
    msgs = [
        _estimate(0, 3, 0, 50.0, 52.0, 10.0),
        _estimate(1, 4, 0, 51.0, 52.0, 11.0),
        _estimate(2, 6, 0, 53.0, 52.0, 12.0),  # beat 5 missed within one patient
        _estimate(3, 9, 1, 30.0, 31.0, 13.0),  # beats 7, 8 missed where the patient changed
        {"kind": "status", "stream": "bed1", "windows_dropped": 2, "frames_dropped": 5},
        {"kind": "heartbeat"},
    ]
    s = demo_summary(msgs, 30.0)
    assert s["n_estimates"] == 4 and s["backend"] == "torch"
    assert s["mae_vs_truth"] == pytest.approx((2 + 1 + 1 + 1) / 4)
    assert s["beats_missed"] == 3 and s["beats_missed_at_patient_change"] == 2
    assert s["windows_dropped"] == 2 and s["frames_dropped"] == 5
    assert s["latency_ms"]["p50"] == pytest.approx(200.0) and s["latency_from_ready_ms"][
        "max"
    ] == pytest.approx(50.0)
    assert s["streams"]["bed1"]["n_estimates"] == 4
    assert s["latency_steady_ms"]["n"] == 3  # the stream's first estimate left out
    assert s["stages_ms"]["infer"]["p50"] == pytest.approx(20.0)
    assert s["stages_ms"]["deliver"]["max"] == pytest.approx(10.0)


def test_summary_without_truth_or_estimates() -> None:
    s = demo_summary([{"kind": "heartbeat"}], 5.0)
    assert s["n_estimates"] == 0 and s["mae_vs_truth"] is None and s["latency_ms"]["n"] == 0
