"""The one clip function and the beat-bound fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.core.clip import beat_bounds, beat_sample_times, estimate_period, make_clip


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
