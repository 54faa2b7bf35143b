"""The robustness harness: window perturbations, view transforms, the summary, and a small real run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from edge_agent.ml.ood import CORRUPTIONS
from edge_agent.ml.robustness import (
    VIEW_TRANSFORMS,
    RobustnessRequest,
    run_robustness,
    summarize,
    view_transform,
)

ROOT = Path(__file__).resolve().parents[2]


def _cone(size: int = 112) -> np.ndarray:
    """A bright sector-like wedge below the apex with a dark ring in it: (2, size, size) uint8."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = np.degrees(np.arctan2(x - (size - 1) / 2, y + 1e-9))
    frame = np.where(np.abs(angle) < 35, 120.0, 0.0)
    frame[(np.hypot(x - 55.5, y - 60) < 12)] = 20.0
    return np.stack([frame, frame]).astype(np.uint8)


def test_zoom_scales_distances_from_the_apex() -> None:
    clip = _cone()
    bright = (clip[0] > 60).sum()
    zoomed_in, zoomed_out = view_transform(clip, "zoom", 1.25), view_transform(clip, "zoom", 0.75)
    # A wedge from the apex keeps its angle: zooming in pushes its far part out of the frame (fewer
    # bright pixels), zooming out leaves a black band at the bottom.
    assert (zoomed_in[0] > 60).sum() > 0.9 * bright and zoomed_out[0, -10:].max() == 0
    # The dark ring's centre moves from 60 px below the apex to 75 and 45.
    for out, want in ((zoomed_in, 75), (zoomed_out, 45)):
        rows = np.nonzero((out[0, :, 56] > 10) & (out[0, :, 56] <= 30))[0]  # the ring, on the axis
        assert abs(rows.mean() - want) < 2.5


def test_identity_transforms_and_gain() -> None:
    clip = _cone()
    np.testing.assert_array_equal(view_transform(clip, "zoom", 1.0), clip)
    np.testing.assert_array_equal(view_transform(clip, "rotate", 0.0), clip)
    brighter = view_transform(clip, "gain", 6.0)
    assert (brighter[clip == 0] == 0).all()  # outside the sector stays black
    assert int(brighter[0, 100, 56]) - int(clip[0, 100, 56]) == pytest.approx(255 * 6 / 55, abs=1)
    with pytest.raises(ValueError, match="zoom, aspect, rotate, gain"):
        view_transform(clip, "shear", 1.0)


def test_summarize_measures_spread_and_shifts_and_checks_targets() -> None:
    aligned = np.array([50.0, 30.0, 60.0])
    means = {
        "aligned": aligned,
        "perturbed": aligned + 1,
        "phase_1": aligned + np.array([4.0, 0.0, 1.0]),
        "zoom_0.75": aligned - np.array([1.0, 3.0, 5.0]),
    }
    good = {"mae": 2.0, "picp90": 0.9, "auroc_ef40": 0.99, "crps_minus_baselines": -0.1}
    out = summarize(means, {"aligned": good, "perturbed": {**good, "mae": 4.0}}, phases=2)
    assert out["phase_spread_median"] == 1.0
    assert out["view_shift_median"] == {"zoom_0.75": 3.0}
    met = {(t["metric"], t["target"]): t["met"] for t in out["targets"]}
    assert met[("aligned.mae", "<= 3.0")] and not met[("perturbed.mae", "<= 3.5")]
    assert not met[("view_shift_median_max", "<= 2.0")] and met[("phase_spread_median", "<= 2.0")]
    assert met[("aligned.crps_minus_baselines", "<= 0.0")]


def test_a_small_real_run_writes_the_report(tmp_path: Path) -> None:
    req = RobustnessRequest(
        model=str(ROOT / "engines" / "mcsdr_default.pt"),
        n=3,
        k=8,
        phases=2,
        out=str(tmp_path),
        transforms=("zoom_1.25", "gain_-6dB"),
        real=(get_testdata_file("color3d_jpeg_baseline.dcm"),),
    )
    result = run_robustness(req, progress=lambda _msg: None)
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert set(saved["by_variant"]) == {"aligned", "perturbed", "phase_1", "zoom_1.25", "gain_-6dB"}
    assert saved["aligned"]["mae"] == pytest.approx(result["aligned"]["mae"])
    assert 0 <= result["aligned"]["picp90"] <= 1 and result["aligned"]["mae"] < 15
    assert "| aligned.mae | <= 3.0 |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "robustness.png").stat().st_size > 10_000
    assert set(VIEW_TRANSFORMS) >= set(saved["view_shift_median"])
    # The shipped model has a fitted OOD score: every corrupted kind and the real cine are scored.
    assert set(saved["ood"]) == {*CORRUPTIONS, "real:color3d_jpeg_baseline.dcm"}
    assert saved["ood"]["real:color3d_jpeg_baseline.dcm"]["windows"] >= 1
    assert all(0 <= v["auroc"] <= 1 and 0 <= v["flagged"] <= 1 for v in saved["ood"].values())
    assert "| ood.blank_sector.auroc | >= 0.95 |" in (tmp_path / "report.md").read_text()
