"""Evaluation with the live detector's windows, pooled per clip, on a real EchoNet-format folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.ml.detector_eval import live_vs_offline, pooled_metrics, pooled_posteriors
from edge_agent.ml.evaluate import EvalRequest, run_evaluation
from edge_agent.ml.simulate import write_dataset

ROOT = Path(__file__).resolve().parents[2]


def test_pooling_keeps_the_last_five_beats_and_drops_fixed_windows_beside_beats() -> None:
    k = 4
    samples = np.array([[float(10 * j)] * k for j in range(8)])
    clip = np.array([0, 0, 0, 0, 0, 0, 0, 1])
    how = ["fixed", "ed_ed", "ed_ed", "ed_ed", "ed_ed", "ed_ed", "ed_ed", "fixed"]
    pools = pooled_posteriors(samples, clip, how)
    assert sorted(np.unique(pools[0][0]).tolist()) == [20.0, 30.0, 40.0, 50.0, 60.0]  # last 5 beats
    assert pools[0][0].size == 5 * k
    assert pools[1][0].tolist() == [70.0] * k  # a clip with only a fixed window keeps it
    assert np.isnan(pools[0][1])  # no scores given: unknown
    ood = np.arange(len(clip), dtype=float)
    scored = pooled_posteriors(samples, clip, how, ood)
    # The pool's score is the median of its pooled windows' scores, as the hub's running estimate.
    kept = [j for j in range(len(clip)) if clip[j] == 0][-5:]
    assert scored[0][1] == np.median(ood[kept])


def test_pooled_metrics_on_known_pools() -> None:
    rng = np.random.default_rng(0)
    truth = np.array([30.0, 55.0, 60.0, 35.0])
    pools = [t + rng.normal(0, 2, size=80 * (i + 1)) for i, t in enumerate(truth)]  # any pool length
    out = pooled_metrics(pools, truth)
    assert out["n"] == 4 and out["mae"] < 1.0 and out["picp90"] == 1.0
    assert out["auroc_ef40"] == 1.0 and 1.5 < out["mean_std"] < 2.5
    shifted = pooled_metrics([p + 10 for p in pools], truth)
    assert shifted["mae"] == pytest.approx(out["mae"] + 10, abs=1.0) and shifted["picp90"] == 0.0


def test_live_vs_offline_by_band_on_known_estimates() -> None:
    truth = np.array([30.0, 45.0, 60.0, 70.0])
    offline = truth + np.array([1.0, -1.0, 1.0, -1.0])
    live = truth + np.array([3.0, -1.0, 0.0, 2.0])
    v = live_vs_offline(live, offline, truth)
    assert v["mae_offline"] == 1.0 and v["mae_live"] == 1.5 and v["mae_live_minus_offline"] == 0.5
    bands = v["by_band"]["live"]
    assert bands["reduced (< 40)"] == {"n": 1, "mae": 3.0, "bias": 3.0}
    assert bands["normal (>= 50)"] == {"n": 2, "mae": 1.0, "bias": 1.0}
    assert v["by_band"]["offline"]["mildly reduced (40-50)"] == {"n": 1, "mae": 1.0, "bias": -1.0}
    normal_only = live_vs_offline(live[2:], offline[2:], truth[2:])["by_band"]["live"]
    assert normal_only["reduced (< 40)"]["mae"] is None  # a band without clips


def test_detector_needs_an_echonet_folder() -> None:
    with pytest.raises(ValueError, match="--data with --format echonet or pediatric"):
        EvalRequest(model="m", beats="detector")
    with pytest.raises(ValueError, match="traced, detector"):
        EvalRequest(model="m", beats="ecg")


def test_shipped_model_on_detector_windows_of_simulated_echonet_videos(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "echonet", n=4, seed=77, fmt="echonet", n_beats=6.0, workers=1)
    req = EvalRequest(
        model=str(ROOT / "engines" / "mcsdr_default"),
        data=str(data),
        format="echonet",
        split="ALL",
        beats="detector",
        k=16,
        out=str(tmp_path / "out"),
        workers=1,
    )
    result = run_evaluation(req)
    per_clip = result["per_clip"]
    assert per_clip["n"] + len(per_clip["clips_without_window"]) == 4
    assert result["data"]["n"] >= per_clip["n"] >= 3  # several windows per clip, most clips found
    assert set(per_clip["windows_by_rule"]) <= {"ed_ed", "r_wave", "fixed"}
    assert per_clip["mae"] < 8.0  # the live path on simulator videos: beats found, EF close
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["per_clip"]["n"] == per_clip["n"]
    # The same clips' traced beats, offline: the live path's cost is measured, not assumed.
    v = per_clip["live_vs_offline"]
    assert v["mae_live"] == pytest.approx(per_clip["mae"]) and v["mae_offline"] < 8.0
    assert sum(b["n"] for b in v["by_band"]["live"].values()) == per_clip["n"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Per clip: the live detector's windows" in report and "### Live path vs offline cut" in report
