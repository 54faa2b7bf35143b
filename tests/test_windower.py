"""Windowing-stage pieces that need no processes: beat signatures and view epochs."""

from __future__ import annotations

import numpy as np

from edge_agent.cycles import make_clip
from edge_agent.phantom import draw_case, simulate_clip
from edge_agent.windower import ViewTracker, WindowConfig, beat_signature


def _beats(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    clip = simulate_clip(draw_case(rng), rng, n_beats=3.2)
    ed = clip.ed_frames
    return [make_clip(clip.frames, ed[k], ed[k + 1]) for k in range(len(ed) - 1)]


def test_view_epoch_changes_with_the_patient_not_with_the_beat() -> None:
    tracker = ViewTracker(WindowConfig().view_change_corr)
    first, second, third = _beats(1), _beats(2), _beats(3)
    assert [tracker.update(c) for c in first] == [0] * len(first)
    assert [tracker.update(c) for c in second] == [1] * len(second)
    assert [tracker.update(c) for c in third] == [2] * len(third)


def test_beat_signature_is_a_unit_vector_and_ignores_gain() -> None:
    clip = _beats(4)[0]
    sig = beat_signature(clip)
    assert sig.shape == (32 * 32,) and abs(float(np.linalg.norm(sig)) - 1.0) < 1e-5
    brighter = np.clip(clip.astype(np.int16) * 1.2 + 5, 0, 255).astype(np.uint8)
    assert float(sig @ beat_signature(brighter)) > 0.99
