"""Label-free cycle-detector checks: the pure checks on made-up cines, then real files end to end."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from fixtures import write_avi
from pydicom.data import get_testdata_file

from edge_agent.cli import main
from edge_agent.live.sources import open_source
from edge_agent.ml.cycles_check import Beat, beat_checks, check_file

CINE = get_testdata_file("color3d_jpeg_baseline.dcm")
FPS = 50.0
PERIOD = 40  # frames: 75 bpm at 50 fps


def _cine(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A made-up cine (n, 32, 32) uint8 whose blob swells at each ED (frames 0, 40, 80, …) and its
    LV-area signal (n,), largest at the EDs."""
    phase = (np.arange(n) % PERIOD) / PERIOD
    area = 0.5 + 0.5 * np.cos(2 * np.pi * phase)  # 1 at ED
    yy, xx = np.mgrid[:32, :32]
    r = np.hypot(yy - 16, xx - 12)
    frames = np.stack([np.clip(60 + 150 * (r < 5 + 6 * a) + 40 * (xx > 20) * a, 0, 255) for a in area])
    return frames.astype(np.uint8), 100 * area


def _beats(starts: list[float]) -> list[Beat]:
    return [Beat(s, e, "ed_ed", int(e) + 10) for s, e in itertools.pairwise(starts)]


def test_aligned_beats_agree_with_the_cine_and_start_at_the_lv_maximum() -> None:
    small, signal = _cine()
    out = beat_checks(_beats([float(k) for k in range(0, 400, PERIOD)]), signal, small, FPS)
    assert out["beats"] == 9 and out["fixed_windows"] == 0 and out["fallback_share"] == 0
    assert out["hr_detector_bpm"] == pytest.approx(75.0) and out["hr_autocorr_bpm"] == pytest.approx(
        75.0, rel=0.02
    )
    assert out["hr_agrees"] and out["period_cv"] == 0 and out["lv_max_offset_frames"] == 0
    assert out["start_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert out["first_beat_s"] == pytest.approx(50 / FPS)


def test_misaligned_missed_and_fixed_windows_show_in_the_checks() -> None:
    small, signal = _cine()
    rng = np.random.default_rng(0)
    jittered = beat_checks(
        _beats([k + float(rng.uniform(-8, 8)) for k in range(40, 400, PERIOD)]), signal, small, FPS
    )
    assert jittered["start_similarity"] < 0.95 and jittered["period_cv"] > 0.1
    late = beat_checks(_beats([k + 10.0 for k in range(0, 360, PERIOD)]), signal, small, FPS)
    assert late["lv_max_offset_frames"] == pytest.approx(-8.0)  # the maximum lies 8 frames before (±20 %)
    doubled = beat_checks(_beats([float(k) for k in range(0, 400, 2 * PERIOD)]), signal, small, FPS)
    assert doubled["hr_ratio"] == pytest.approx(0.5, abs=0.02) and not doubled["hr_agrees"]
    fixed = beat_checks([Beat(0.0, 50.0, "fixed", 50)], signal, small, FPS)
    assert fixed["beats"] == 0 and fixed["fallback_share"] == 1.0 and fixed["hr_detector_bpm"] is None
    assert not fixed["hr_agrees"]


def test_the_real_dicom_cine_beats_agree_with_its_own_period() -> None:
    """Issue 13: on the real cine the detector's heart rate is within 5 % of the autocorrelation's; the
    detector primes on its first swing, so a 4 s loop gives beats before 3 s, each as long as the next."""
    r = check_file(CINE)
    assert r.fps == pytest.approx(30.0, abs=0.01) and r.checks["frames"] == 120
    assert r.checks["hr_agrees"] and abs(r.checks["hr_ratio"] - 1) <= 0.05, r.checks
    assert r.checks["beats"] >= 2 and r.checks["first_beat_s"] < 3.0 and r.checks["period_cv"] < 0.1
    assert r.checks["start_similarity"] > r.checks["period_similarity"]  # starts alike: aligned
    assert r.checks["principal_share"] == 0.0  # a strong swing: timed on the area throughout


def test_cli_checks_a_simulated_video_at_its_true_frame_rate(tmp_path: Path) -> None:
    """A simulated 72 bpm cine written as MJPEG whose header says 30 fps (as EchoNet's do) though it was
    acquired at 50: at the header's rate both heart rates read 40 % slow and still agree with each
    other; ``--fps 50`` gives the true 72."""
    path = tmp_path / "sim.avi"
    with open_source("synthetic://?ef=50&hr=72&quality=good&seed=12&fps=50") as sim:
        write_avi(path, np.stack([sim.read().pixels for _ in range(500)]), 30.0)
    assert main(["cycles-check", str(path), "--fps", "50", "--out", str(tmp_path / "true")]) == 0
    (true,) = json.loads((tmp_path / "true" / "cycles_check.json").read_text())
    assert true["hr_detector_bpm"] == pytest.approx(72, rel=0.03) and true["hr_agrees"]
    assert true["beats"] >= 9 and true["fallback_share"] == 0 and abs(true["lv_max_offset_frames"]) <= 2
    assert (tmp_path / "true" / "00_sim.png").stat().st_size > 10_000
    assert main(["cycles-check", str(path), "--out", str(tmp_path / "header")]) == 0
    (header,) = json.loads((tmp_path / "header" / "cycles_check.json").read_text())
    assert header["hr_detector_bpm"] == pytest.approx(72 * 30 / 50, rel=0.03)


def test_cli_names_a_missing_file_and_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["cycles-check", str(tmp_path / "missing.avi")]) == 2
    assert "missing.avi: video file not found" in capsys.readouterr().err
