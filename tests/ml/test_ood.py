"""The out-of-distribution score: its fit, its calibration, the corrupted inputs it is checked on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_agent.ml.ood import (
    CORRUPTIONS,
    corrupt,
    fit_ood,
    gaussian_fit,
    mahalanobis_d2,
    reliability_summary,
    separation,
)
from edge_agent.model.ddim import DiffusionSchedule
from edge_agent.model.network import MCSDR, ModelConfig, TargetTransform
from edge_agent.sim.clips import generate


@pytest.fixture(scope="module")
def beats():
    return generate(12, seed=31, workers=1)


def test_every_corruption_keeps_the_window_shape_and_changes_what_it_should(beats) -> None:
    clip = beats.clips[0]
    rng = np.random.default_rng(0)
    out = {kind: corrupt(clip, kind, rng) for kind in CORRUPTIONS}
    assert all(v.shape == clip.shape and v.dtype == np.uint8 for v in out.values())
    sector = clip.max(axis=0) > 8
    # Blank: nothing but dark noise inside the sector, black outside it.
    assert out["blank_sector"][:, ~sector].max() == 0 and out["blank_sector"].mean() < 8
    # Heavy noise: the image is still there under noise of its own size.
    diff = out["heavy_noise"].astype(float) - clip
    assert 30 < diff.std() < 70 and np.corrcoef(out["heavy_noise"].ravel(), clip.ravel())[0, 1] > 0.2
    # Non-cardiac: no sector (texture everywhere) and it moves every frame.
    assert (out["non_cardiac"].max(axis=0) > 8).mean() > 0.99
    assert (out["non_cardiac"][1:] != out["non_cardiac"][:-1]).mean() > 0.5
    # Wrong view: the frame's lower half, magnified: its top rows come from the middle of the beat.
    assert not np.array_equal(out["wrong_view"], clip)
    with pytest.raises(ValueError, match="not one of"):
        corrupt(clip, "upside_down", rng)


def test_mahalanobis_of_a_gaussian_is_chi_square() -> None:
    rng = np.random.default_rng(1)
    cov = np.diag([1.0, 4.0, 9.0])
    emb = rng.multivariate_normal([1.0, 2.0, 3.0], cov, size=20000)
    mean, precision = gaussian_fit(emb, shrinkage=0.0)
    d2 = mahalanobis_d2(emb, mean, precision)
    assert d2.mean() == pytest.approx(3.0, rel=0.03)  # E[χ²₃] = 3
    assert np.quantile(d2, 0.99) == pytest.approx(11.34, rel=0.05)  # χ²₃ 99th percentile


def test_separation_counts_flagged_and_wide_intervals() -> None:
    familiar = np.array([0.2, 0.5, 0.8, 0.9]), np.array([8.0, 10.0, 10.0, 12.0])
    out = separation(*familiar, np.array([5.0, 0.7, 0.6]), np.array([9.0, 40.0, 10.0]))
    assert out["auroc"] == pytest.approx(8 / 12)  # 5.0 above all four; 0.7, 0.6 above two each
    assert out["flagged"] == pytest.approx(1 / 3)
    assert out["width_ratio"] == pytest.approx(1.0)
    assert out["handled"] == pytest.approx(2 / 3)  # flagged, or ≥ 3 × 10 wide


def test_fit_ood_calibrates_the_threshold_and_scores_corrupted_windows_higher(beats) -> None:
    torch.manual_seed(0)
    model = MCSDR(
        ModelConfig(width=4, d_model=16, n_heads=2, n_blocks=1), TargetTransform(), DiffusionSchedule()
    )
    fit = fit_ood(model, beats, beats, views=None, quantile=0.75, n_fit=12, shrinkage=0.1)
    assert fit.n_fit == 12 and fit.embed_dim == 14 * 4 and fit.threshold_d2 > 0
    with torch.no_grad():
        ood = model.condition(
            torch.from_numpy(beats.clips), torch.zeros(12, 4), torch.zeros(12, 4, dtype=torch.bool)
        )[1]
        far = {
            kind: model.condition(
                torch.from_numpy(
                    np.stack([corrupt(c, kind, np.random.default_rng(i)) for i, c in enumerate(beats.clips)])
                ),
                torch.zeros(12, 4),
                torch.zeros(12, 4, dtype=torch.bool),
            )[1]
            for kind in ("non_cardiac", "heavy_noise")
        }
    # The threshold is the 0.75-quantile of the same windows: a quarter lies above it.
    assert float((ood > 1).float().mean()) == pytest.approx(0.25, abs=0.09)
    assert float(far["non_cardiac"].min()) > 1.0
    # The noise gate: its threshold is the 0.999-quantile of the windows' noise shares per axis; heavy
    # noise is far above it whatever the (untrained) embedding says.
    assert len(fit.noise_threshold) == 3 and max(fit.noise_threshold) < 0.2
    assert float(far["heavy_noise"].min()) > 2.0


def test_reliability_summary_counts_confidently_wrong_estimates() -> None:
    truth = np.array([50.0, 20.0, 20.0, 60.0])
    posteriors = [np.full(40, 51.0), np.full(40, 50.0), np.linspace(10, 60, 40), np.full(40, 62.0)]
    scores = np.array([0.3, 0.8, 0.5, 4.0])  # the last is flagged
    out = reliability_summary(posteriors, truth, scores)
    # Estimate 1 is 30 points off with an interval that misses: confidently wrong. Estimate 2 is as far
    # off but its interval covers 20: honest. Estimate 3 is flagged (and 2 points off).
    assert out["confidently_wrong"] == 1 and out["wrong_but_flagged"] == 0
    assert out["flagged"] == 0.25 and out["mae_flagged"] == pytest.approx(2.0)
    assert out["picp90_reliable"] == pytest.approx(1 / 3)
    unscored = reliability_summary(posteriors, truth, np.full(4, np.nan))
    assert not unscored["scored"] and unscored["flagged"] == 0.0 and unscored["mae_flagged"] is None
