"""The shared beat-windowing pieces: warm-up order, the demographics rule, the frame memory."""

from __future__ import annotations

import math

import numpy as np

from edge_agent.live.beats import WarmUp, beat_demographics, forget_old_frames
from edge_agent.live.preprocess import Preprocessor


def test_warm_up_holds_frames_and_releases_them_in_order_with_their_meta() -> None:
    rng = np.random.default_rng(0)
    frames = [np.zeros((120, 160), np.uint8) for _ in range(8)]
    for f in frames:
        f[10:110, 30:130] = rng.integers(40, 255, (100, 100))  # a moving bright sector
    warm: WarmUp[int] = WarmUp(Preprocessor(region="auto", size=112, warmup_frames=4))
    out = [warm.push(f, i) for i, f in enumerate(frames)]
    assert [[m for m, _ in ready] for ready in out] == [[], [], [], [0, 1, 2, 3], [4], [5], [6], [7]]
    assert all(px.shape == (112, 112) for ready in out for _, px in ready)


def test_beat_demographics_of_the_middle_frame_else_the_default() -> None:
    start = {"age_years": 50.0}
    assert beat_demographics({"age_years": 60.0, "ef": 55.0, "weight_kg": math.nan}, start) == {
        "age_years": 60.0
    }
    assert beat_demographics({"ef": 55.0}, start) == start


def test_frame_memory_keeps_ten_seconds() -> None:
    values = {k: k for k in range(0, 1000, 10)}
    forget_old_frames(values, newest=990, fps=50.0)
    assert min(values) == 490 and max(values) == 990
