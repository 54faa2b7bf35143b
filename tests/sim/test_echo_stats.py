"""Known-answer tests for the echo image statistics (edge_agent.sim.echo_stats)."""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import pytest

from edge_agent.sim.echo_stats import (
    REAL_ECHO_STATS,
    STAT_NAMES,
    clip_stats,
    compare_table,
    distance_to_real,
    sector_mask,
    speckle_halfwidth,
    summarize_stats,
)

SIZE = 112


def _noise_clip(sigma: float, n_frames: int = 50, seed: int = 0) -> np.ndarray:
    """(F, 112, 112) uint8 white noise, Gaussian-blurred with ``sigma`` px (0: unblurred), std ~40."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        noise = rng.normal(0.0, 1.0, (SIZE, SIZE)).astype(np.float32)
        if sigma > 0:
            noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=sigma)
        frames.append(np.clip(128.0 + 40.0 * noise / noise.std(), 0, 255))
    return np.rint(np.stack(frames)).astype(np.uint8)


def _analytic_halfwidth(sigma: float, highpass_sigma: float = 4.0) -> int:
    """First integer lag where the ACF of sigma-blurred white noise, high-passed, falls below 0.5.

    Blurred noise is white noise through g_s (Gaussian kernel, variance s²); subtracting its
    sigma-4 blur makes the filter g_s − g_c with c² = s² + 4². The ACF of white noise through a
    filter is the filter's self-convolution; for 2-D Gaussians g_a * g_b = g_√(a²+b²), whose value
    at lag r is exp(−r²/(2v)) / (2πv) with v = a² + b². Hence
    R(r) ∝ G(r, 2s²) − 2 G(r, s² + c²) + G(r, 2c²).
    """
    c2 = sigma**2 + highpass_sigma**2

    def acf(r: float) -> float:
        terms = ((1, 2 * sigma**2), (-2, sigma**2 + c2), (1, 2 * c2))
        return sum(k * math.exp(-(r**2) / (2 * v)) / v for k, v in terms)

    return next(lag for lag in range(1, 100) if acf(lag) / acf(0) < 0.5)


def test_stat_names_match_reference_table() -> None:
    assert tuple(REAL_ECHO_STATS) == STAT_NAMES
    assert REAL_ECHO_STATS["p50"] == (19.0, 26.0, 30.0)
    assert REAL_ECHO_STATS["speckle_halfwidth_px"] == (2.0, 2.5, 2.5)
    assert REAL_ECHO_STATS["n_frames"] == (157.0, 179.0, 205.0)
    clip = _noise_clip(1.0, n_frames=12)
    assert tuple(clip_stats(clip)) == STAT_NAMES


def test_sector_frac_of_a_drawn_fan() -> None:
    radius = 70
    fan = np.zeros((SIZE, SIZE), np.uint8)
    cv2.ellipse(fan, (SIZE // 2, 0), (radius, radius), 0, 45, 135, 100, thickness=-1)  # apex top centre
    drawn = int((fan > 0).sum())
    frames = np.repeat(fan[None], 4, axis=0)
    frames[1:] //= 2  # only the max over frames decides the sector
    area_px = clip_stats(frames)["sector_frac"] * SIZE * SIZE
    # The closing only fills the raster staircase of the fan's straight edges: a few pixels.
    assert area_px == pytest.approx(drawn, abs=0.005 * drawn)
    # A quarter disc of radius 70, to within half a pixel along its ~250 px boundary.
    perimeter = 2 * radius + math.pi * radius / 2
    assert abs(area_px - math.pi * radius**2 / 4) <= perimeter / 2


def test_sector_mask_threshold_and_closing() -> None:
    img = np.zeros((40, 40), np.float64)
    img[5:35, 5:15] = 13.0  # just above the threshold of 12
    img[5:35, 19:25] = 200.0  # 4-px gap from the first block: a 5×5 closing bridges it
    img[5:35, 31:35] = 12.0  # exactly 12 is not above the threshold, and 6 px away: stays out
    img[20, 10] = 0.0  # an isolated dark pixel inside: filled
    mask = sector_mask(img[None])
    expected = np.zeros((40, 40), bool)
    expected[5:35, 5:25] = True
    np.testing.assert_array_equal(mask, expected)


def test_percentiles_only_count_sector_pixels() -> None:
    rng = np.random.default_rng(1)
    frames = np.zeros((6, 64, 64), np.uint8)
    frames[:, :, :32] = rng.integers(0, 256, (6, 64, 32))
    frames[0, :, :32] = 200  # every left-half pixel exceeds 12 once: the sector is the left half
    stats = clip_stats(frames)
    assert stats["sector_frac"] == 0.5
    inside = frames[:, :, :32].astype(np.float64)
    for q in (5, 25, 50, 75, 95, 99):
        assert stats[f"p{q}"] == pytest.approx(np.percentile(inside, q))
    # The 6×64×32 zeros outside would drag p25 to 0 if they were counted.
    assert stats["p25"] > 20


def test_dark_and_saturated_fractions_at_their_bounds() -> None:
    levels = (100, 10, 19, 20, 249, 250, 255, 100)
    frames = np.stack([np.full((64, 64), v, np.uint8) for v in levels])
    stats = clip_stats(frames)
    assert stats["sector_frac"] == 1.0
    assert stats["frac_below20"] == 2 / 8  # 10 and 19; 20 is not below 20
    assert stats["frac_sat"] == 2 / 8  # 250 and 255; 249 is not saturated
    assert stats["p50"] == 100.0


def test_white_noise_speckle_halfwidth_is_one() -> None:
    assert clip_stats(_noise_clip(0.0))["speckle_halfwidth_px"] == 1.0


def test_analytic_halfwidth_with_the_sigma4_highpass() -> None:
    # Without the high-pass, exp(−r²/(4σ²)) < 0.5 first at r = ceil(2σ√ln2) = ceil(3.33) = 4 for σ = 2;
    # the high-pass removes the broad part of the ACF and brings the crossing in to lag 3.
    assert _analytic_halfwidth(2.0, highpass_sigma=1e6) == 4
    assert _analytic_halfwidth(2.0) == 3
    assert _analytic_halfwidth(1.0) == 2
    assert _analytic_halfwidth(3.0) == 4


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0])
def test_blurred_noise_halfwidth_matches_analytic(sigma: float) -> None:
    assert clip_stats(_noise_clip(sigma))["speckle_halfwidth_px"] == _analytic_halfwidth(sigma)


def test_speckle_halfwidth_grows_with_blur() -> None:
    widths = [clip_stats(_noise_clip(s, n_frames=30))["speckle_halfwidth_px"] for s in (0, 1, 2, 3, 4)]
    assert all(a < b for a, b in itertools.pairwise(widths))


def test_speckle_halfwidth_samples_every_tenth_frame() -> None:
    noisy = _noise_clip(2.0, n_frames=21)
    white = _noise_clip(0.0, n_frames=21)
    # Frames 0, 10, 20 are measured: keep two of them blurred and the median is the blurred width.
    mixed = white.copy()
    mixed[[0, 10]] = noisy[[0, 10]]
    assert clip_stats(mixed)["speckle_halfwidth_px"] == clip_stats(noisy)["speckle_halfwidth_px"]
    mixed = noisy.copy()
    mixed[[0, 10]] = white[[0, 10]]
    assert clip_stats(mixed)["speckle_halfwidth_px"] == 1.0


def test_flat_crop_has_no_halfwidth() -> None:
    assert math.isnan(speckle_halfwidth(np.full((64, 64), 90.0)))


def test_identical_frames() -> None:
    frame = _noise_clip(1.5, n_frames=1)[0]
    stats = clip_stats(np.repeat(frame[None], 8, axis=0))
    assert stats["consec_frame_corr"] == pytest.approx(1.0)
    assert stats["mean_abs_frame_diff"] == 0.0
    assert stats["n_frames"] == 8.0


def test_frame_plus_independent_noise_correlation_and_difference() -> None:
    rng = np.random.default_rng(2)
    base = rng.integers(60, 191, (SIZE, SIZE)).astype(np.float64)  # 131 levels: variance (131² − 1) / 12
    noise_sd = 20.0
    frames = np.rint(base + rng.normal(0.0, noise_sd, (20, SIZE, SIZE))).clip(0, 255).astype(np.uint8)
    var_base = (131**2 - 1) / 12
    var_noise = noise_sd**2 + 1 / 12  # rounding to integers adds uniform variance 1/12
    stats = clip_stats(frames)
    # Consecutive frames share the base only: corr = var_base / (var_base + var_noise).
    assert stats["consec_frame_corr"] == pytest.approx(var_base / (var_base + var_noise), abs=0.01)
    # Their difference is N(0, 2·var_noise): E|d| = sqrt(2/π) · sqrt(2·var_noise).
    expected_diff = math.sqrt(2 / math.pi) * math.sqrt(2 * var_noise)
    assert stats["mean_abs_frame_diff"] == pytest.approx(expected_diff, rel=0.01)


def test_mean_abs_frame_diff_is_mean_over_all_pairs() -> None:
    levels = (100, 100, 100, 130)  # pair differences 0, 0, 30: mean 10, median would be 0
    frames = np.stack([np.full((64, 64), v, np.uint8) for v in levels])
    assert clip_stats(frames)["mean_abs_frame_diff"] == pytest.approx(10.0)


def test_color_frames_give_the_gray_answer() -> None:
    gray = _noise_clip(1.0, n_frames=12)
    bgr = np.repeat(gray[..., None], 3, axis=-1)
    assert clip_stats(bgr) == pytest.approx(clip_stats(gray))


def test_rejects_clips_without_a_sector_or_bad_shapes() -> None:
    with pytest.raises(ValueError, match="no sector"):
        clip_stats(np.full((3, 64, 64), 12, np.uint8))
    with pytest.raises(ValueError, match="shape"):
        clip_stats(np.zeros((64, 64), np.uint8))


def test_summarize_stats_quartiles_across_clips() -> None:
    per_clip = [{name: float(i) for name in STAT_NAMES} for i in range(5)]
    per_clip[0]["consec_frame_corr"] = float("nan")  # undefined on one clip: left out
    summary = summarize_stats(per_clip)
    assert summary["p50"] == (1.0, 2.0, 3.0)
    assert summary["consec_frame_corr"] == (1.75, 2.5, 3.25)


def _sim_with_medians(medians: dict[str, float]) -> dict[str, tuple[float, float, float]]:
    return {name: (m - 1.0, m, m + 1.0) for name, m in medians.items()}


def test_compare_table_rows_and_verdicts() -> None:
    medians = {name: band[1] for name, band in REAL_ECHO_STATS.items()}
    medians["p50"] = 40.0  # above the real IQR 19–30
    medians["frac_sat"] = 0.001  # on the upper bound: inside
    table = compare_table(_sim_with_medians(medians))
    lines = table.strip().splitlines()
    assert lines[0].startswith("| statistic |")
    rows = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert set(rows) == set(STAT_NAMES)
    assert rows["p50"].rstrip(" |").endswith("no")
    assert rows["p50"] == "| p50 | 19 / 26 / 30 | 39 / 40 / 41 | no |"
    assert all(rows[n].rstrip(" |").endswith("yes") for n in STAT_NAMES if n != "p50")


def test_distance_to_real_in_iqr_widths() -> None:
    medians = {name: band[1] for name, band in REAL_ECHO_STATS.items()}
    medians["p50"] = 41.0  # 11 above p75 = 30, IQR width 11: one width out
    medians["consec_frame_corr"] = 0.952  # 0.013 below p25 = 0.965, width 0.013: one width
    medians["p5"] = 3.0  # zero-wide real IQR, floored at one grey level: three widths
    dist = distance_to_real(_sim_with_medians(medians))
    assert set(dist) == set(STAT_NAMES)
    assert dist["p50"] == pytest.approx(1.0)
    assert dist["consec_frame_corr"] == pytest.approx(1.0)
    assert dist["p5"] == pytest.approx(3.0)
    assert all(dist[n] == 0.0 for n in STAT_NAMES if n not in ("p50", "consec_frame_corr", "p5"))
