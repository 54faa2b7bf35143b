"""Simulated training beats cut as a live windower may cut them (window errors), and their sets."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.core.clip import WindowErrors
from edge_agent.ml.train import DataConfig
from edge_agent.sim.clips import generate, is_perturbed, synthetic_example
from edge_agent.sim.simulator import draw_case, simulate_window


@pytest.mark.parametrize("errors", [WindowErrors(), WindowErrors(p_phase=1.0), WindowErrors(p_double=1.0)])
def test_simulated_windows_cover_the_window_and_keep_the_beat_label(errors: WindowErrors) -> None:
    for seed in range(3):
        rng = np.random.default_rng(seed)
        case = draw_case(rng, ef=35.0, hr_bpm=70.0, fps=50.0)
        frames, start, end, clip, kind = simulate_window(case, rng, errors)
        assert 0 <= start < end <= len(frames) - 1
        period = clip.ed_frames[1] - clip.ed_frames[0] if len(clip.ed_frames) > 1 else 60 / 70 * 50
        assert clip.beat_ef[0] == pytest.approx(35.0, abs=4.0)  # the beat's Simpson EF, whatever the cut
        if errors.p_phase == 1.0:
            assert "phase" in kind
        if errors.p_double == 1.0:
            assert kind == "double" and end - start > 1.5 * period


def test_window_errors_change_the_cut_not_the_label() -> None:
    exact = synthetic_example(5, 0)
    phased = synthetic_example(5, 0, window_errors=WindowErrors(p_phase=1.0))
    assert exact.beat_how == "ed_ed" and "phase" in phased.beat_how
    assert phased.ef == pytest.approx(exact.ef, abs=3.0)  # same patient (case drawn first), same beat
    assert exact.demographics.tolist() == phased.demographics.tolist()
    # A window starting mid-cycle does not start at its largest LV area; the curve is relative to it.
    assert phased.lv_area.max() == pytest.approx(1.0) and int(np.argmax(phased.lv_area)) > 0
    assert exact.lv_area[0] == pytest.approx(1.0)


def test_sets_hold_the_asked_share_of_perturbed_beats() -> None:
    for share in (0.0, 0.3, 0.5, 1.0):
        assert sum(is_perturbed(i, share) for i in range(1000)) == pytest.approx(1000 * share, abs=2)
    arr = generate(4, seed=5, desc=None, window_errors=WindowErrors(p_phase=1.0), perturbed_share=0.5)
    plain = generate(4, seed=5, desc=None)
    same = [np.array_equal(a, b) for a, b in zip(arr.clips, plain.clips, strict=True)]
    assert same == [not is_perturbed(i, 0.5) for i in range(4)]
    with pytest.raises(ValueError, match="needs window_errors"):
        generate(2, seed=5, desc=None, perturbed_share=0.5)


def test_the_training_cache_names_what_changes_a_set() -> None:
    assert DataConfig().cache_name("train", 6000, 1) == "train_n6000_seed1.npz"  # unchanged default
    cfg = DataConfig(generation=2, perturbed_windows=0.5, window_phase=0.3)
    assert cfg.cache_name("val", 400, 2) == "val_n400_seed2_gen2_pw0.5_ph0.3.npz"
    assert cfg.window_errors() == WindowErrors(p_phase=0.3) and DataConfig().window_errors() is None
