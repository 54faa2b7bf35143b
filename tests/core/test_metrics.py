"""Tests for edge_agent.core.metrics: hand-computed values, brute-force references, known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_agent.core import metrics


def crps_brute_force(samples: np.ndarray, truth: np.ndarray, fair: bool) -> np.ndarray:
    """Reference O(K²) double loop over all sample pairs."""
    out = []
    for row, y in zip(samples, truth, strict=True):
        k = row.size
        abs_err = sum(abs(x - y) for x in row) / k
        pair_sum = sum(abs(a - b) for a in row for b in row)  # i = j pairs contribute 0
        pair_term = pair_sum / (2 * k * (k - 1)) if fair else pair_sum / (2 * k * k)
        out.append(abs_err - pair_term)
    return np.array(out)


# ---------------------------------------------------------------- point metrics


def test_mae_rmse_r2_hand_computed() -> None:
    samples = np.array([[1.0, 3.0], [4.0, 6.0], [8.0, 8.0]])  # means 2, 5, 8
    truth = np.array([3.0, 5.0, 6.0])  # errors −1, 0, 2
    assert metrics.mae(samples, truth) == pytest.approx(1.0)
    assert metrics.rmse(samples, truth) == pytest.approx(math.sqrt(5.0 / 3.0))
    # SS_tot = 42/9, SS_res = 5 → R² = 1 − 45/42
    assert metrics.r2(samples, truth) == pytest.approx(-1.0 / 14.0)


def test_r2_constant_truth_is_an_error() -> None:
    with pytest.raises(ValueError, match="truth: all reference EFs are equal"):
        metrics.r2(np.array([[50.0], [60.0]]), np.array([55.0, 55.0]))


@pytest.mark.parametrize(
    ("samples", "truth", "field"),
    [
        (np.ones(5), np.ones(5), "samples: expected shape"),
        (np.ones((3, 4)), np.ones(4), "truth: expected shape"),
        (np.array([[1.0, np.nan]]), np.ones(1), "samples: contains NaN"),
        (np.ones((1, 2)), np.array([np.inf]), "truth: contains NaN"),
        (np.ones((0, 4)), np.ones(0), "no clips"),
    ],
)
def test_bad_inputs_name_the_field(samples: np.ndarray, truth: np.ndarray, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        metrics.mae(samples, truth)


# ---------------------------------------------------------------- CRPS


def test_crps_two_samples_hand_computed() -> None:
    # E|X−y| = 1; all-pairs sum = 0+2+2+0 = 4.
    # biased: 1 − ½·4/4 = 0.5; fair: 1 − 4/(2·2·1) = 0.
    samples, truth = np.array([[1.0, 3.0]]), np.array([2.0])
    assert metrics.crps(samples, truth)[0] == pytest.approx(0.5)
    assert metrics.crps(samples, truth, fair=True)[0] == pytest.approx(0.0)


def test_crps_three_samples_hand_computed() -> None:
    # E|X−y| = (1+1+5)/3 = 7/3; ordered-pair sum = 2·(2+6+4) = 24.
    # biased: 7/3 − 24/(2·9) = 1; fair: 7/3 − 24/(2·3·2) = 1/3.
    samples, truth = np.array([[6.0, 0.0, 2.0]]), np.array([1.0])
    assert metrics.crps(samples, truth)[0] == pytest.approx(1.0)
    assert metrics.crps(samples, truth, fair=True)[0] == pytest.approx(1.0 / 3.0)


def test_crps_single_sample_is_absolute_error_and_fair_needs_two() -> None:
    samples, truth = np.array([[40.0], [70.0]]), np.array([45.0, 60.0])
    np.testing.assert_allclose(metrics.crps(samples, truth), [5.0, 10.0])
    with pytest.raises(ValueError, match="fair CRPS needs K >= 2"):
        metrics.crps(samples, truth, fair=True)


def test_crps_point_mass_at_truth_is_zero() -> None:
    samples = np.full((3, 40), 55.0)
    np.testing.assert_allclose(metrics.crps(samples, np.full(3, 55.0)), 0.0, atol=1e-12)


@pytest.mark.parametrize("fair", [False, True])
def test_crps_sorted_identity_matches_brute_force(fair: bool) -> None:
    rng = np.random.default_rng(0)
    samples = rng.normal(55.0, 8.0, size=(6, 17))
    samples[0, :5] = samples[0, 5]  # ties must not matter to the identity
    truth = rng.normal(55.0, 8.0, size=6)
    np.testing.assert_allclose(
        metrics.crps(samples, truth, fair=fair), crps_brute_force(samples, truth, fair), rtol=1e-12
    )


@settings(max_examples=60, deadline=None)
@given(
    row=arrays(np.float64, st.integers(2, 12), elements=st.floats(0.0, 100.0)),
    y=st.floats(0.0, 100.0),
)
def test_crps_identity_property(row: np.ndarray, y: float) -> None:
    samples, truth = row[None, :], np.array([y])
    for fair in (False, True):
        got = metrics.crps(samples, truth, fair=fair)
        np.testing.assert_allclose(got, crps_brute_force(samples, truth, fair), rtol=1e-9, atol=1e-9)
    # The biased score exceeds the fair one by ½·pair-sum/(K²(K−1)) >= 0.
    assert metrics.crps(samples, truth)[0] >= metrics.crps(samples, truth, fair=True)[0] - 1e-9


def test_crps_fair_matches_gaussian_closed_form() -> None:
    # CRPS(N(μ, σ), y) = σ·[z(2Φ(z) − 1) + 2φ(z) − 1/√π], z = (y − μ)/σ (Gneiting & Raftery 2007).
    mu, sigma, y = 50.0, 6.0, 58.0
    z = (y - mu) / sigma
    cdf = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
    pdf = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    expected = sigma * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))
    samples = np.random.default_rng(1).normal(mu, sigma, size=(1, 200_000))
    assert metrics.crps(samples, np.array([y]), fair=True)[0] == pytest.approx(expected, rel=0.01)


# ---------------------------------------------------------------- intervals, QICE, PIT

RAMP = np.linspace(0.0, 100.0, 101)  # sample quantile at q is exactly 100·q


def test_picp_constructed_case_bounds_inclusive() -> None:
    truth = np.array([4.0, 5.0, 50.0, 95.0, 96.0])
    samples = np.tile(RAMP, (truth.size, 1))
    assert metrics.picp(samples, truth, 0.9) == pytest.approx(3 / 5)  # 5, 50, 95 inside [5, 95]
    assert metrics.picp(samples, truth, 0.5) == pytest.approx(1 / 5)  # only 50 inside [25, 75]
    assert metrics.picp(samples, truth, 0.95) == pytest.approx(5 / 5)  # all inside [2.5, 97.5]


def test_picp_rejects_level_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="level"):
        metrics.picp(np.tile(RAMP, (2, 1)), np.array([1.0, 2.0]), 1.0)


def test_coverage_curve_matches_picp_and_nominal_on_calibrated_data() -> None:
    rng = np.random.default_rng(2)
    mu = rng.uniform(20.0, 70.0, size=4000)
    samples = rng.normal(mu[:, None], 5.0, size=(4000, 400))
    truth = rng.normal(mu, 5.0)
    levels = np.array([0.2, 0.5, 0.8, 0.9, 0.95])
    curve = metrics.coverage_curve(samples, truth, levels)
    assert curve.shape == (5,)
    assert curve[1] == metrics.picp(samples, truth, 0.5)
    np.testing.assert_allclose(curve, levels, atol=0.025)  # binomial sd ≤ 0.008 at N = 4000
    assert np.all(np.diff(curve) >= 0)


def test_qice_hand_computed() -> None:
    samples = np.tile(RAMP, (4, 1))  # M = 4 interior edges 25, 50, 75
    # One truth per bin, including below-min and above-max truths folded into the outer bins.
    assert metrics.qice(samples, np.array([-5.0, 30.0, 60.0, 120.0]), n_bins=4) == pytest.approx(0.0)
    # All truths in bin 0: (|1 − ¼| + 3·¼)/4 = 0.375 = 2(M−1)/M², the maximum.
    assert metrics.qice(samples, np.full(4, 10.0), n_bins=4) == pytest.approx(0.375)
    # Shares (½, ½, 0, 0): (¼ + ¼ + ¼ + ¼)/4 = 0.25.
    assert metrics.qice(samples, np.array([1.0, 2.0, 25.0, 49.0]), n_bins=4) == pytest.approx(0.25)


def test_qice_near_zero_when_calibrated_and_known_when_overconfident() -> None:
    rng = np.random.default_rng(3)
    mu = rng.uniform(20.0, 70.0, size=10_000)
    truth = rng.normal(mu, 5.0)
    calibrated = rng.normal(mu[:, None], 5.0, size=(10_000, 200))
    overconfident = mu[:, None] + (calibrated - mu[:, None]) / 3.0
    # Calibrated: only binomial noise, per-bin sd √(0.1·0.9/10⁴) = 0.003.
    assert metrics.qice(calibrated, truth) < 0.006
    # 3x too narrow: each outer bin holds Φ(−1.2816/3) = 0.3346 and the 8 inner bins share the
    # remaining 0.3307, all below 0.1 → QICE = (2·0.2346 + (0.8 − 0.3307))/10 = 0.0939.
    assert metrics.qice(overconfident, truth) == pytest.approx(0.0939, abs=0.005)


def test_pit_hand_computed_with_half_weight_ties() -> None:
    samples = np.tile([1.0, 2.0, 3.0, 4.0], (4, 1))
    np.testing.assert_allclose(
        metrics.pit(samples, np.array([2.5, 2.0, 0.0, 10.0])), [0.5, 1.5 / 4, 0.0, 1.0]
    )


def test_pit_uniform_for_calibrated_posterior() -> None:
    rng = np.random.default_rng(4)
    mu = rng.uniform(20.0, 70.0, size=5000)
    samples = rng.normal(mu[:, None], 4.0, size=(5000, 100))
    values = metrics.pit(samples, rng.normal(mu, 4.0))
    hist = np.histogram(values, bins=5, range=(0.0, 1.0))[0] / values.size
    np.testing.assert_allclose(hist, 0.2, atol=0.025)


def test_frac_out_of_range_counts_bounds_as_outside() -> None:
    samples = np.array([[-1.0, 0.0, 50.0, 100.0], [100.5, 99.9, 0.1, 3.0]])
    assert metrics.frac_out_of_range(samples) == pytest.approx(4 / 8)
    assert metrics.frac_out_of_range(samples, lo=1.0, hi=99.0) == pytest.approx(6 / 8)


# ---------------------------------------------------------------- AUROC


def test_auroc_with_ties_hand_computed() -> None:
    # Pos 0.4 vs neg (0.1, 0.4): 1 + ½; pos 0.8 vs both: 2 → 3.5 / 4.
    assert metrics.auroc(np.array([0.1, 0.4, 0.4, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.875)
    assert metrics.auroc(np.full(6, 0.3), np.array([0, 1, 0, 1, 1, 0])) == pytest.approx(0.5)
    assert metrics.auroc(np.array([3.0, 2.0, 1.0]), np.array([True, False, False])) == pytest.approx(1.0)
    assert metrics.auroc(np.array([3.0, 2.0, 1.0]), np.array([False, False, True])) == pytest.approx(0.0)


def test_auroc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 5, size=60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    expected = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert metrics.auroc(scores, labels) == pytest.approx(expected)


def test_auroc_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="no positive examples"):
        metrics.auroc(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="no negative examples"):
        metrics.auroc(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="lengths differ"):
        metrics.auroc(np.array([0.1, 0.2]), np.array([1]))
    with pytest.raises(ValueError, match="0/1"):
        metrics.auroc(np.array([0.1, 0.2]), np.array([0, 2]))


def test_auroc_below_hand_computed() -> None:
    samples = np.array(
        [
            [30.0, 35.0, 40.0, 45.0],  # P(<50) = 1, truth 38 → positive
            [45.0, 48.0, 52.0, 55.0],  # 0.5, truth 47 → positive
            [45.0, 48.0, 52.0, 55.0],  # 0.5, truth 53 → negative
            [60.0, 62.0, 64.0, 66.0],  # 0, truth 63 → negative
        ]
    )
    truth = np.array([38.0, 47.0, 53.0, 63.0])
    # Positive 1.0 beats both negatives (2); positive 0.5 ties 0.5 (½) and beats 0 (1) → 3.5/4.
    assert metrics.auroc_below(samples, truth, 50.0) == pytest.approx(0.875)


# ---------------------------------------------------------------- evaluate_samples


def test_evaluate_samples_values_and_json() -> None:
    rng = np.random.default_rng(6)
    truth = np.array([35.0, 45.0, 55.0, 60.0, 65.0, 30.0])
    samples = rng.normal(truth[:, None] + 1.0, 3.0, size=(6, 40))
    quality = ["Good", "Poor", "Good", "Medium", "Poor", "Good"]
    out = metrics.evaluate_samples(samples, truth, quality)
    json.dumps(out, allow_nan=False)  # strict JSON: fails on numpy types or NaN
    required = {
        "n", "mae", "rmse", "r2", "crps", "crps_fair", "picp50", "picp90", "picp95", "qice",
        "auroc_ef50", "auroc_ef40", "frac_out_of_range", "mean_std", "std_by_quality", "mae_by_quality",
    }  # fmt: skip
    assert required <= out.keys()
    assert out["n"] == 6 and out["k"] == 40
    assert out["mae"] == pytest.approx(metrics.mae(samples, truth))
    assert out["crps"] == pytest.approx(metrics.crps(samples, truth).mean())
    assert out["crps_fair"] == pytest.approx(metrics.crps(samples, truth, fair=True).mean())
    assert out["picp90"] == pytest.approx(metrics.picp(samples, truth, 0.9))
    assert out["auroc_ef40"] == pytest.approx(metrics.auroc_below(samples, truth, 40.0))
    std = samples.std(axis=1)
    abs_err = np.abs(samples.mean(axis=1) - truth)
    assert out["mean_std"] == pytest.approx(std.mean())
    assert out["std_by_quality"] == pytest.approx(
        {"Good": std[[0, 2, 5]].mean(), "Medium": std[3], "Poor": std[[1, 4]].mean()}
    )
    assert out["mae_by_quality"]["Poor"] == pytest.approx(abs_err[[1, 4]].mean())
    assert out["n_by_quality"] == {"Good": 3, "Medium": 1, "Poor": 2}


def test_evaluate_samples_absent_class_gives_null_auroc() -> None:
    truth = np.array([55.0, 60.0, 65.0])  # no clip below 40 or 50
    out = metrics.evaluate_samples(np.tile(truth[:, None], (1, 4)) + np.arange(4.0), truth)
    assert out["auroc_ef50"] is None and out["auroc_ef40"] is None
    assert "std_by_quality" not in out
    assert json.loads(json.dumps(out))["auroc_ef50"] is None


def test_evaluate_samples_quality_length_mismatch() -> None:
    with pytest.raises(ValueError, match="quality: expected 2 labels"):
        metrics.evaluate_samples(np.ones((2, 3)) * [[40.0], [60.0]], np.array([40.0, 60.0]), ["Good"])


def test_distribution_of_values_and_of_nothing() -> None:
    d = metrics.distribution([4.0, 1.0, 3.0, 2.0])
    assert d["n"] == 4 and d["min"] == 1.0 and d["max"] == 4.0 and d["mean"] == 2.5 and d["p50"] == 2.5
    assert metrics.distribution([])["n"] == 0 and metrics.distribution([])["p99"] is None


def test_pearson_is_the_correlation_of_the_flattened_arrays_and_zero_for_a_constant() -> None:
    x = np.random.default_rng(0).normal(size=(4, 5))
    assert metrics.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert metrics.pearson(x, -x) == pytest.approx(-1.0)
    assert metrics.pearson(x, np.full_like(x, 3.0)) == 0.0
    y = x + np.random.default_rng(1).normal(size=x.shape)
    assert metrics.pearson(x, y) == pytest.approx(np.corrcoef(x.ravel(), y.ravel())[0, 1])
