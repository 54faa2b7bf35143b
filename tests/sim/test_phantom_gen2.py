"""Simulator generations: generation 1 frozen bit for bit; generation 2's realism (image statistics,
EF distribution, dilation, zoom, regional wall motion) against its stated targets."""

from __future__ import annotations

import dataclasses
import hashlib
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.live.sources.synthetic import SyntheticSource
from edge_agent.ml.simulate import dataset_clip, simulator_stats
from edge_agent.sim.clips import synthetic_example
from edge_agent.sim.echo_stats import REAL_ECHO_STATS
from edge_agent.sim.phantom import IMAGE_SIZE, CaseParams
from edge_agent.sim.phantom2 import EF_RANGE, WMA_TAPER, WMA_TERRITORIES, draw_ef
from edge_agent.sim.simulator import draw_case, make_phantom, simulate_beat, simulate_clip


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# --- generation 1 is frozen -----------------------------------------------------------------------

# Computed on the code before generation 2 existed (commit a046fa3): the shipped model was trained on
# these pixels and the live agent's tests check estimates against this truth. Measured with numpy
# 2.4.6 and OpenCV 5.1.0: another OpenCV build may round blurs differently and change the frames.
GEN1_DIGESTS = {
    "draw_case": "c4d7bc8655f44eff",
    "simulate_clip": "57b041e3daf5a190",
    "simulate_beat": "06c3d65675f17b2a",
    "synthetic_example": "596a23ba18a0c1f5",
    "source": "3e9bfe0e63fe7774",
}


# CaseParams' fields before generation 2; the fields added since must keep their defaults in generation 1.
GEN1_FIELDS = 17


def _gen1_digests() -> dict[str, str]:
    rng = np.random.default_rng(123)
    cases = [draw_case(rng) for _ in range(50)] + [draw_case(rng, pediatric=True) for _ in range(10)]
    added = dataclasses.fields(CaseParams)[GEN1_FIELDS:]
    assert all(getattr(c, f.name) == f.default for c in cases for f in added)
    first = repr([dataclasses.astuple(c)[:GEN1_FIELDS] for c in cases])
    out = {"draw_case": hashlib.sha256(first.encode()).hexdigest()[:16]}
    clip = simulate_clip(draw_case(np.random.default_rng(5), fps=50.0, quality="medium"), 6, n_frames=12)
    out["simulate_clip"] = _digest(clip.frames, clip.contours, np.array(clip.beat_ef))
    frames, start, end, beat = simulate_beat(draw_case(np.random.default_rng(7), fps=30.0), 8)
    out["simulate_beat"] = _digest(frames, np.array([start, end]), np.array(beat.beat_ef))
    example = synthetic_example(1, 3)
    out["synthetic_example"] = _digest(example.clip, np.array([example.ef]), example.lv_area)
    src = SyntheticSource("synthetic://?seed=4&quality=poor")
    src.open()
    read = [src.read() for _ in range(5)]
    src.close()
    out["source"] = _digest(np.stack([f.pixels for f in read]), np.array([f.truth["ef"] for f in read]))
    return out


def test_generation_1_is_unchanged_bit_for_bit() -> None:
    assert _gen1_digests() == GEN1_DIGESTS


# --- generation 2: image statistics -------------------------------------------------------------


def test_generation_2_image_statistics_sit_in_the_real_iqr() -> None:
    stats = simulator_stats(n=9, seed=11, generation=2)  # sim-stats' method on 9 clips of 180 frames
    medians = {name: band[1] for name, band in stats.items()}
    for name in ("p5", "p25", "p50", "p75", "p95", "p99", "frac_below20", "frac_sat", "speckle_halfwidth_px"):
        lo, _, hi = REAL_ECHO_STATS[name]
        assert lo <= medians[name] <= hi, (name, medians[name])
    # These two sit near the real p25 (0.965, 0.633): measured 0.9651 and 0.635 on these 9 clips,
    # 0.968 and 0.649 on sim-stats' 24; generation 1 had 0.935 and 0.678. A looser bound keeps a
    # small retune from failing here while still catching generation 1's decorrelated frames.
    assert medians["consec_frame_corr"] > 0.955
    assert 0.6 <= medians["sector_frac"] <= REAL_ECHO_STATS["sector_frac"][2]
    lo, _, hi = REAL_ECHO_STATS["mean_abs_frame_diff"]
    assert lo <= medians["mean_abs_frame_diff"] <= hi


# --- generation 2: labels and geometry ----------------------------------------------------------


def test_generation_2_ef_draws_follow_echonet() -> None:
    rng = np.random.default_rng(0)
    ef = np.array([draw_ef(rng) for _ in range(4000)])
    # EchoNet-Dynamic: mean 55.7, sd 12.4, 1 in 8 below 40 %, 1 in 5 below 50 %. With 4,000 draws the
    # sampling error of a share near 0.12 is 0.005 (sd), of the mean 0.2.
    assert ef.mean() == pytest.approx(55.7, abs=1.0)
    assert ef.std() == pytest.approx(12.4, abs=1.0)
    assert np.mean(ef < 40) == pytest.approx(0.125, abs=0.02)
    assert np.mean(ef < 50) == pytest.approx(0.20, abs=0.025)
    assert EF_RANGE[0] <= ef.min() < 12 and 80 < ef.max() <= EF_RANGE[1]


def _wma_case(seed: int, territory: str, severity: float, ef: float) -> CaseParams:
    case = draw_case(np.random.default_rng(seed), ef=ef, fps=25.0, generation=2)
    return dataclasses.replace(case, wma_territory=territory, wma_severity=severity, ef_jitter=0.0)


@settings(max_examples=6, deadline=None)
@given(
    territory=st.sampled_from(sorted(WMA_TERRITORIES)),
    severity=st.sampled_from([1.0, 0.5]),
    ef=st.floats(15.0, 60.0),
    seed=st.integers(0, 2**16),
)
def test_wma_labels_from_the_rendered_contour_are_the_requested_ef(
    territory: str, severity: float, ef: float, seed: int
) -> None:
    case = _wma_case(seed, territory, severity, ef)
    clip = simulate_clip(case, seed, n_beats=2.2)
    # The drive table maps volumes linearly between 24 tabulated contours: within 0.09 points on 60
    # cases (median 0.002); the label is always Simpson on the rendered contour, whatever the target.
    np.testing.assert_allclose(clip.beat_ef, ef, atol=0.3)


def _arc_points(n: int, lo: float, hi: float) -> np.ndarray:
    """Indices of an n-point contour (base septum → apex → base lateral) whose arc s lies in [lo, hi]."""
    s = np.linspace(0, 1, n)
    return np.flatnonzero((s >= lo) & (s <= hi))


@pytest.mark.parametrize("territory", sorted(WMA_TERRITORIES))
def test_akinetic_territory_stays_still_while_the_rest_contracts(territory: str) -> None:
    clip = simulate_clip(_wma_case(3, territory, 1.0, 30.0), 4, n_beats=1.2)
    contours = clip.contours  # (F, 64, 2) px, the rendered outline
    lo, hi = WMA_TERRITORIES[territory]
    core = _arc_points(64, lo + WMA_TAPER / 2, hi - WMA_TAPER / 2)
    remote = np.setdiff1d(np.arange(64), _arc_points(64, lo - 2 * WMA_TAPER, hi + 2 * WMA_TAPER))
    travel = np.linalg.norm(contours - contours[:1], axis=2).max(axis=0)  # (64,) px over the beat
    assert travel[core].max() < 0.01  # akinetic: exactly the ED position
    assert np.median(travel[remote]) > 2.0  # the remote wall still moves (measured 3–9 px)
    # The image follows the contour: the akinetic wall's pixels change far less than the remote wall's.
    frames = clip.frames.astype(np.float32)
    change = np.abs(frames - frames[:1]).max(axis=0)
    at = lambda idx: change[tuple(np.round(contours[0, idx, ::-1]).astype(int).T)].mean()  # noqa: E731
    assert at(core) < at(remote)


def _ed_area_share(case: CaseParams, seed: int) -> float:
    """LV cavity area at ED / sector area, both in output pixels."""
    phantom = make_phantom(case, seed, duration_s=3.0)
    contour = phantom.contour_px(phantom.beats[0].t_ed, 96)
    x, y = contour[:, 0], contour[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return area / (float(phantom.sector.sum()) * (IMAGE_SIZE / case.native_px) ** 2)


@cache
def _area_shares(ef: float) -> np.ndarray:
    """ED LV area / sector area of 40 generation-2 draws at this EF (%)."""
    rng = np.random.default_rng(int(ef))
    return np.array([_ed_area_share(draw_case(rng, ef=ef, generation=2), i) for i in range(40)])


def test_dilated_low_ef_hearts_fill_more_of_the_sector() -> None:
    share = {ef: _area_shares(ef).mean() for ef in (25.0, 40.0, 60.0)}
    # Larger EDV, rounder LV and more zoomed views as EF falls; means measured 0.36, 0.28, 0.20.
    assert share[25.0] > share[40.0] > share[60.0]
    assert share[25.0] > 1.3 * share[60.0]


def test_zoom_ranges_from_the_whole_heart_to_an_lv_filling_the_sector() -> None:
    share = np.concatenate([_area_shares(ef) for ef in (25.0, 40.0, 60.0)])
    # Whole heart in view: the LV is a tenth of the sector; zoomed on a dilated LV: well over a third.
    assert share.min() < 0.15
    assert share.max() > 0.4


def test_training_examples_and_datasets_take_the_generation() -> None:
    gen1, gen2 = synthetic_example(5, 2), synthetic_example(5, 2, generation=2)
    assert gen2.clip.shape == gen1.clip.shape == (32, IMAGE_SIZE, IMAGE_SIZE) and gen2.clip.dtype == np.uint8
    assert not np.array_equal(gen1.clip, gen2.clip)
    clip = dataset_clip(5, 2, n_beats=2.0, generation=2)
    assert clip.case.generation == 2 and EF_RANGE[0] - 5 < clip.ef < EF_RANGE[1] + 5
