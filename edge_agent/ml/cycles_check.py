"""Label-free checks of the cycle detector on any cine: is it right on real echo, where no ED is traced?

A file is played through the live agent's own path (:func:`edge_agent.live.beats.played_frames`, then
the :class:`~edge_agent.live.cycles.CycleDetector`), and what the detector did is compared with what
the video itself says, without annotations:

* heart rate: the detector's (60 / median beat length) against the cine's own period
  (:func:`edge_agent.core.clip.estimate_period`, the autocorrelation of its whole-image motion
  signal) — two independent estimates, the second blind to the LV-area signal;
* alignment: consecutive windows' first frames should look alike (each is an ED); their median
  correlation (each pixel's temporal mean removed, 32×32) is given next to that of every pair of
  frames one median beat apart at any phase: aligned starts reach it or more, drifting ones fall below;
* the window's first frame against the LV-area maximum (the LV is fullest at ED): the median offset
  of the signal's maximum within ±20 % of a beat around each start, in frames;
* the share of fixed (fallback) windows, the beat-to-beat period variability (coefficient of variation),
  when the first beat came, and the share of frames the detector timed on the coverage maps' principal
  component because the LV area's swing was weak (:class:`~edge_agent.live.cycles.CycleConfig`).

Frame indices count from the file's first frame; times are frame index / fps (s); heart rates bpm.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from edge_agent.core.clip import estimate_period, period_autocorrelation
from edge_agent.core.metrics import pearson
from edge_agent.live.beats import played_frames
from edge_agent.live.capture import CaptureConfig
from edge_agent.live.cycles import CycleConfig, CycleDetector
from edge_agent.live.sources import SourceError, open_source

HR_AGREEMENT = 0.05  # detector vs autocorrelation heart rate: agree within this fraction
SMALL = 32  # frames are compared at 32×32
LV_MAX_SPAN = 0.2  # the LV-area maximum is sought within ±this fraction of a beat around each start


@dataclass(frozen=True)
class Beat:
    """One window the detector cut: ED frames start, end (fractional indices from the file's first
    frame), the rule (``ed_ed``, ``r_wave``, ``fixed``) and the frame whose arrival completed it."""

    start: float
    end: float
    how: str
    emitted_at: int


def beat_checks(beats: list[Beat], signal: np.ndarray, small: np.ndarray, fps: float) -> dict[str, Any]:
    """The checks of one file (pure): ``beats`` as cut, ``signal`` (N,) LV area per frame, ``small``
    (N, 32, 32) uint8 frames. Values are None where too few beats make them meaningless."""
    found = [b for b in beats if b.how != "fixed"]
    lengths = np.array([b.end - b.start for b in found])
    period = estimate_period(small, fps)
    centred = small.astype(np.float32) - small.mean(axis=0, dtype=np.float32)
    out: dict[str, Any] = {
        "frames": len(signal),
        "seconds": round(len(signal) / fps, 2),
        "beats": len(found),
        "fixed_windows": len(beats) - len(found),
        "fallback_share": round((len(beats) - len(found)) / len(beats), 3) if beats else None,
        "first_beat_s": round(found[0].emitted_at / fps, 2) if found else None,
        "hr_detector_bpm": round(60.0 * fps / float(np.median(lengths)), 1) if found else None,
        "hr_autocorr_bpm": round(60.0 * fps / period, 1) if period else None,
        "period_cv": round(float(lengths.std() / lengths.mean()), 3) if len(found) >= 2 else None,
        "start_similarity": None,
        "period_similarity": None,
        "lv_max_offset_frames": None,
    }
    if found and period:
        out["hr_ratio"] = round(out["hr_detector_bpm"] / out["hr_autocorr_bpm"], 3)
    starts = [b.start for b in found]
    pairs = [(s, e) for s, e in itertools.pairwise(starts) if round(e) < len(small)]
    if pairs:
        out["start_similarity"] = round(
            float(np.median([pearson(centred[round(s)], centred[round(e)]) for s, e in pairs])), 3
        )
        lag = round(float(np.median(lengths)))
        out["period_similarity"] = round(
            float(np.median([pearson(centred[t], centred[t + lag]) for t in range(len(small) - lag)])), 3
        )
    if found:
        offsets = []
        for b in found:
            span = LV_MAX_SPAN * (b.end - b.start)
            lo, hi = max(0, int(np.ceil(b.start - span))), min(len(signal), int(np.floor(b.start + span)) + 1)
            offsets.append(lo + int(np.argmax(signal[lo:hi])) - b.start)
        out["lv_max_offset_frames"] = round(float(np.median(offsets)), 2)
    out["hr_agrees"] = bool(out.get("hr_ratio") is not None and abs(out["hr_ratio"] - 1) <= HR_AGREEMENT)
    return out


@dataclass
class FileCheck:
    """A file's checks (:func:`beat_checks`) with what they were computed from, for the plot."""

    uri: str
    fps: float
    checks: dict[str, Any]
    beats: list[Beat] = field(repr=False)
    signal: np.ndarray = field(repr=False)
    curve: np.ndarray | None = field(repr=False)  # period_autocorrelation of the cine


def check_file(uri: str, fps: float | None = None, cycles: CycleConfig | None = None) -> FileCheck:
    """Play ``uri`` (a video or DICOM cine; ``fps`` overrides its own rate, as a stream's YAML does)
    through the live path once, without looping, and check what the detector cut."""
    cycles = cycles or CycleConfig()
    source = open_source(uri, loop=False, fps=fps)
    source.open()
    try:
        detector = CycleDetector(cycles, source.fps, source.hr_bpm)
        beats, signal, small, principal = [], [], [], 0
        for f in tqdm(
            played_frames(source, CaptureConfig().warmup_frames), desc=uri, unit="frame", leave=False
        ):
            small.append(cv2.resize(f.pixels, (SMALL, SMALL), interpolation=cv2.INTER_AREA))
            for w in detector.push(f.index, f.t, f.pixels, f.r_wave):
                first = w.frame_seq[0]
                beats.append(Beat(first + w.start, first + w.end, w.how, f.index))
            signal.append(detector.area)  # the detector's own LV area of this frame
            principal += detector.signal_source == "principal"
        rate = source.fps
    finally:
        source.close()
    if len(small) < 4:
        raise SourceError(f"{uri}: {len(small)} frames played; a cine check needs a moving echo loop")
    small_arr, signal_arr = np.stack(small), np.array(signal)
    checks = beat_checks(beats, signal_arr, small_arr, rate)
    # Frames timed on the coverage maps' principal component: the area's swing was weak (CycleConfig).
    checks["principal_share"] = round(principal / len(small), 3)
    return FileCheck(uri, rate, checks, beats, signal_arr, period_autocorrelation(small_arr, rate))


COLUMNS = (
    ("file", "file"),
    ("seconds", "s"),
    ("beats", "beats"),
    ("fixed_windows", "fixed"),
    ("first_beat_s", "first beat s"),
    ("hr_detector_bpm", "HR detector"),
    ("hr_autocorr_bpm", "HR autocorr"),
    ("hr_ratio", "ratio"),
    ("period_cv", "period CV"),
    ("start_similarity", "start sim."),
    ("period_similarity", "1-period sim."),
    ("lv_max_offset_frames", "LV max offset (frames)"),
    ("principal_share", "principal share"),
    ("hr_agrees", f"HR within {HR_AGREEMENT:.0%}"),
)


def table(results: list[FileCheck]) -> str:
    """A Markdown table, one row per file."""
    lines = ["| " + " | ".join(h for _k, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        row = {"file": Path(r.uri).name, **r.checks}
        lines.append(
            "| " + " | ".join("–" if row.get(k) is None else str(row[k]) for k, _h in COLUMNS) + " |"
        )
    return "\n".join(lines)


def plot(result: FileCheck, path: Path) -> None:
    """The LV-area signal with each window's start (ED) marked, and the autocorrelation with both periods."""
    fig = Figure(figsize=(10, 5.5))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1)
    t = np.arange(len(result.signal)) / result.fps
    top.plot(t, result.signal, lw=1, color="k", label="LV area (signal net)")
    for b in result.beats:
        top.axvline(b.start / result.fps, color="tab:gray" if b.how == "fixed" else "tab:red", lw=0.8)
    top.set(
        xlabel="time (s)",
        ylabel="LV area (cells)",
        title=f"{Path(result.uri).name}: window starts (red: beats)",
    )
    if result.curve is not None:
        bottom.plot(np.arange(len(result.curve)) / result.fps, result.curve, color="k", lw=1)
    for key, colour in (("hr_autocorr_bpm", "tab:blue"), ("hr_detector_bpm", "tab:red")):
        if result.checks.get(key):
            bottom.axvline(60.0 / result.checks[key], color=colour, label=f"{key}: {result.checks[key]}")
    bottom.set(xlabel="lag (s)", ylabel="motion autocorrelation")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(
    uris: list[str], out: Path, fps: float | None = None, cycles: CycleConfig | None = None
) -> list[FileCheck]:
    """Check every file with the detector of ``cycles`` (default: the built-in section), write
    ``cycles_check.json``, ``cycles_check.md`` and one PNG per file to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results = [check_file(u, fps=fps, cycles=cycles) for u in uris]
    for i, r in enumerate(results):
        plot(r, out / f"{i:02d}_{Path(r.uri).stem}.png")
    (out / "cycles_check.json").write_text(
        json.dumps(
            [
                {"uri": r.uri, "fps": r.fps, **r.checks, "beats_cut": [asdict(b) for b in r.beats]}
                for r in results
            ],
            indent=2,
        )
    )
    (out / "cycles_check.md").write_text(table(results) + "\n")
    return results
