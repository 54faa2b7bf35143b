"""The one clip function and the beat-bound fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.core.clip import (
    WindowErrors,
    beat_bounds,
    beat_sample_times,
    estimate_period,
    make_clip,
    perturbed_bounds,
)


def _ramp(n: int, h: int = 112, w: int = 112) -> np.ndarray:
    """Frame i has every pixel equal to i: the clip's values reveal which times it sampled."""
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, h, w)).copy()


def test_clip_samples_one_period_without_the_next_ed():
    clip = make_clip(_ramp(100), 10, 74)
    assert clip.shape == (32, 112, 112) and clip.dtype == np.uint8
    # 32 samples over [10, 74): step 2 frames; the next ED (74) is not included.
    np.testing.assert_array_equal(clip[:, 0, 0], np.arange(10, 74, 2))


def test_clip_interpolates_short_beats_and_resizes():
    frames = _ramp(40, 240, 320)
    clip = make_clip(frames, 0, 16)  # 16 frames → 32 samples: every other one a blend
    assert clip.shape == (32, 112, 112)
    np.testing.assert_allclose(clip[:, 50, 50], np.round(np.arange(32) / 2 + 1e-9), atol=1)


@given(st.floats(0, 50), st.floats(5, 60))
def test_sample_times_tile_consecutive_beats(start, length):
    a = beat_sample_times(start, start + length)
    b = beat_sample_times(start + length, start + 2 * length)
    both = np.concatenate([a, b])
    assert np.allclose(np.diff(both), length / 32)


def test_bad_beats_are_errors():
    with pytest.raises(ValueError, match="after its start"):
        make_clip(_ramp(10), 5, 5)
    with pytest.raises(ValueError, match="grayscale"):
        make_clip(np.zeros((10, 8, 8, 3), np.uint8), 0, 5)


def _beating(n: int, period: float, fps: float = 50.0) -> np.ndarray:
    """A dark ellipse whose size changes with the given period (frames)."""
    yy, xx = np.mgrid[:64, :64]
    out = np.full((n, 64, 64), 120, np.uint8)
    for i in range(n):
        r = 14 + 6 * np.cos(2 * np.pi * i / period)
        out[i][((yy - 32) / 1.5) ** 2 + (xx - 32) ** 2 < r**2] = 10
    return out


@pytest.mark.parametrize("period", [25.0, 37.5, 60.0])
def test_period_is_estimated_from_the_clip(period):
    est = estimate_period(_beating(int(period * 4), period), fps=50.0)
    assert est is not None and abs(est - period) < 1.0


def test_fallbacks_are_named():
    beating = _beating(150, 40.0)
    assert beat_bounds(beating, 50.0, 10, 52)[2] == "ed_ed"
    start, end, how = beat_bounds(beating, 50.0, ed_frame=20)
    assert how == "ed_period" and start == 20 and abs(end - 60) < 1.5
    still = np.full((60, 64, 64), 80, np.uint8)
    assert beat_bounds(still, 50.0) == (0.0, 50.0, "fixed")  # no periodicity: 1 s window
    assert beat_bounds(still, 50.0, heart_rate_bpm=75)[1:] == (40.0, "hr")


@settings(max_examples=200, deadline=None)
@given(start=st.floats(0, 20), period=st.floats(10, 60), seed=st.integers(0, 2**32 - 1))
def test_perturbed_bounds_stay_within_the_stated_errors(start: float, period: float, seed: int) -> None:
    errors = WindowErrors(p_phase=0.3)
    s, e, kind = perturbed_bounds(start, start + period, np.random.default_rng(seed), errors)
    j = errors.jitter_frames
    first = start + (period if "phase" in kind else 0.0)  # a phase start lies within one period
    assert s == 0 or (start - j - 1e-9 <= s <= first + j + 1e-9)
    base = 2 * period if "double" in kind else period / 2 if "half" in kind else period
    lo = base * (1 - errors.period_error) - 2 * j
    hi = base * (1 + errors.period_error) + 2 * j
    assert e - s >= 2.0 and (lo - 1e-9 <= e - s <= hi + 1e-9 or e - s == 2.0)


def test_perturbation_kinds_follow_their_probabilities() -> None:
    rng = np.random.default_rng(0)
    plain = [perturbed_bounds(5.0, 45.0, rng, WindowErrors())[2] for _ in range(4000)]
    assert abs(plain.count("double") / 4000 - 0.1) < 0.02 and abs(plain.count("half") / 4000 - 0.05) < 0.015
    assert set(plain) == {"jitter", "double", "half"}
    phased = [perturbed_bounds(5.0, 45.0, rng, WindowErrors(p_phase=0.5))[0] for _ in range(2000)]
    # Half of the windows start anywhere in the cycle: their starts spread over [2, 45 + 3].
    assert np.mean(np.asarray(phased) > 10) == pytest.approx(0.5 * 35 / 40, abs=0.05)
