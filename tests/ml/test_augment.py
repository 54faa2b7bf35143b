"""Views about the sector apex (zoom, aspect, rotation, gain) for training and the robustness check."""

from __future__ import annotations

import numpy as np
import torch

from edge_agent.ml.augment import DISPLAY_DYNAMIC_RANGE_DB, ViewRanges, random_views, views_about_apex
from edge_agent.ml.train import TrainConfig, _batch, view_ranges
from edge_agent.sim.clips import generate


def _dot(x: int, y: int, size: int = 112) -> torch.Tensor:
    """(1, 1, size, size) uint8: one bright pixel at (x, y)."""
    img = torch.zeros(1, 1, size, size, dtype=torch.uint8)
    img[0, 0, y, x] = 200
    return img


def _where(img: torch.Tensor) -> tuple[float, float]:
    """Intensity-weighted (x, y) centre of a (1, 1, H, W) image."""
    a = img[0, 0].double()
    ys, xs = torch.meshgrid(torch.arange(a.shape[0]), torch.arange(a.shape[1]), indexing="ij")
    return float((a * xs).sum() / a.sum()), float((a * ys).sum() / a.sum())


def _one(zoom: float = 1.0, aspect: float = 1.0, rotate: float = 0.0, gain: float = 0.0) -> tuple:
    return tuple(torch.tensor([v]) for v in (zoom, aspect, rotate, gain))


def test_geometry_about_the_apex() -> None:
    apex_x = 55.5
    # Zoom 1.5: a point 40 px below the apex moves to 60 px below it, on the same axis.
    x, y = _where(views_about_apex(_dot(56, 40), *_one(zoom=1.5)))
    assert abs(y - 60) < 0.6 and abs(x - (apex_x + 0.5 * 1.5)) < 0.6
    # Aspect 1.2 stretches sideways only: 20 px right of the axis → 24, depth kept.
    x, y = _where(views_about_apex(_dot(round(apex_x + 20.5), 50), *_one(aspect=1.2)))
    assert abs(x - (apex_x + 21 * 1.2)) < 0.6 and abs(y - 50) < 0.6
    # Rotation by +90°, counter-clockwise on screen: straight down from the apex becomes straight right.
    x, y = _where(views_about_apex(_dot(56, 30), *_one(rotate=90.0)))
    assert abs(x - (apex_x + 30)) < 0.8 and abs(y - 0.5) < 0.8


def test_identity_is_exact_and_gain_keeps_black_black() -> None:
    clips = torch.from_numpy(generate(2, seed=9, desc=None).clips)
    np.testing.assert_array_equal(views_about_apex(clips, *(v.repeat(2) for v in _one())), clips)
    brighter = views_about_apex(clips, *(v.repeat(2) for v in _one(gain=6.0)))
    black = clips == 0
    assert (brighter[black] == 0).all()
    shift = (brighter.float() - clips.float())[~black & (clips < 200)]
    assert abs(float(shift.median()) - 255 * 6 / DISPLAY_DYNAMIC_RANGE_DB) <= 1


def test_random_views_are_reproducible_per_clip_and_within_range() -> None:
    clips = torch.from_numpy(generate(4, seed=9, desc=None).clips)
    ranges = ViewRanges()
    a = random_views(clips, torch.Generator().manual_seed(1), ranges)
    b = random_views(clips, torch.Generator().manual_seed(1), ranges)
    torch.testing.assert_close(a, b)
    assert a.shape == clips.shape and a.dtype == torch.uint8
    changed = [(a[i] != clips[i]).float().mean().item() for i in range(4)]
    assert min(changed) > 0.05  # every clip got its own, non-trivial view
    # Brightness inside the sector moves by at most the gain range (and interpolation).
    means = [(a[i][a[i] > 0].float().mean() - clips[i][clips[i] > 0].float().mean()).abs() for i in range(4)]
    assert max(means) < 255 * ranges.gain_db / DISPLAY_DYNAMIC_RANGE_DB + 15


def test_training_batches_use_views_only_when_configured() -> None:
    arr = generate(3, seed=9, desc=None)
    idx = np.arange(3)
    assert view_ranges(TrainConfig()) is None
    views = view_ranges(TrainConfig(view_zoom=0.3, view_rotate_deg=10.0))
    assert views == ViewRanges(zoom=0.3, aspect=0.0, rotate_deg=10.0, gain_db=0.0)
    plain = _batch(arr, idx, torch.Generator().manual_seed(0), augment=False)
    viewed = _batch(arr, idx, torch.Generator().manual_seed(0), augment=True, views=views)
    torch.testing.assert_close(plain["ef"], viewed["ef"])  # the label does not change with the view
    assert not torch.equal(plain["clips"], viewed["clips"])
