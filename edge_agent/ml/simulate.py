"""Simulated datasets in the published EchoNet layouts, and the simulator's image statistics.

:func:`write_dataset` renders clips with :mod:`edge_agent.sim.phantom` and writes them exactly as
EchoNet-Dynamic or EchoNet-Pediatric ship, so every loader, split and tracing rule of
:mod:`edge_agent.ml.datasets` runs on simulated data unchanged:

EchoNet-Dynamic (``fmt="echonet"``), under ``out``::

    FileList.csv        FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split
                        (FileName without .avi, as in the current release; Split TRAIN/VAL/TEST)
    VolumeTracings.csv  FileName,X1,Y1,X2,Y2,Frame   (FileName with .avi; ED and ES frames of the
                        first complete beat: the long axis, then 20 Simpson chords, in pixels)
    Videos/<FileName>.avi

EchoNet-Pediatric (``fmt="pediatric"``), under ``out`` (a view folder such as ``A4C/``)::

    FileList.csv        FileName,EF,Sex,Age,Weight,Height,Split   (Split a fold number 0–9)
    VolumeTracings.csv  FileName,X,Y,Frame   (the LV outline's points at ED and ES)
    Videos/<FileName>

Both add ``SimulationInfo.csv`` (:data:`INFO_COLUMNS`), the ground truth no real dataset has: every
beat's EF, ED and ES frames, heart rate, image quality, demographics and the pixel scale.

Labels are the simulator's (:class:`~edge_agent.sim.phantom.SimClip`): EF/EDV/ESV of the first complete
beat by Simpson's method on the rendered contours. Clip ``i`` of seed ``s`` comes from
``SeedSequence([s, i])``, so :func:`dataset_clip` regenerates any written clip with its contours.
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from tqdm import tqdm

from edge_agent.ml.datasets.base import read_video
from edge_agent.sim import echo_stats
from edge_agent.sim.phantom import QUALITIES, SIMPSON_DISCS, SimClip
from edge_agent.sim.simulator import draw_case, simulate_clip

FORMATS = ("echonet", "pediatric")
ECHONET_FILELIST_COLUMNS = (
    "FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split",
)  # fmt: skip
ECHONET_TRACING_COLUMNS = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
PEDIATRIC_FILELIST_COLUMNS = ("FileName", "EF", "Sex", "Age", "Weight", "Height", "Split")
PEDIATRIC_TRACING_COLUMNS = ("FileName", "X", "Y", "Frame")
# SimulationInfo.csv: list-valued cells (one entry per complete beat) are ';'-separated.
INFO_COLUMNS = (
    "FileName", "Quality", "HR", "FPS", "NumberOfFrames", "TargetEF", "EF", "EDV", "ESV",
    "BeatEF", "BeatEDV", "BeatESV", "EDFrames", "ESFrames", "Age", "Sex", "Weight", "Height", "PixelsPerCm",
)  # fmt: skip
ECHONET_SPLITS = ("TRAIN",) * 8 + ("VAL", "TEST")  # by clip index mod 10: 80/10/10

# A clip starts at a random phase, so fewer than 2 beats of video may hold no whole ED→ED beat.
MIN_BEATS = 2.0
# Even at 2 beats, RR variability leaves ~2.6 % of windows without a complete beat (measured on
# 1,500 draws; none at 2.2 beats): such a clip is re-rendered with the same generator.
MAX_RENDER_TRIES = 10
# phantom.simulate_clip builds 60 s of beats; past them the heart freezes. 30 beats last 40 s at the
# slowest drawn heart rate (45 bpm), with room for RR drift; real EchoNet clips hold 2–5.
MAX_BEATS = 30.0
# simulator_stats_table: clips like real EchoNet ones (50 fps, ~180 frames, REAL_ECHO_STATS.md).
STATS_FPS = 50.0
STATS_FRAMES = 180

T = TypeVar("T")
R = TypeVar("R")


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of clip ``index`` of a dataset with ``seed``: every choice of that clip comes from it."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def check_beats(n_beats: float) -> None:
    """Raise ValueError unless ``n_beats`` (beats of video per clip) lies in [MIN_BEATS, MAX_BEATS]."""
    if not n_beats >= MIN_BEATS:
        raise ValueError(
            f"n_beats={n_beats}: a clip starts at a random phase and needs at least {MIN_BEATS:g} beats "
            f"of video to hold one complete ED→ED beat (the traced one); pass n_beats >= {MIN_BEATS:g} "
            "(--beats on the command line)"
        )
    if n_beats > MAX_BEATS:
        raise ValueError(
            f"n_beats={n_beats}: the phantom simulates 60 s of heartbeats, so clips are limited to "
            f"{MAX_BEATS:g} beats; pass a smaller n_beats (--beats on the command line)"
        )


def dataset_clip(
    seed: int, index: int, *, pediatric: bool = False, n_beats: float = 3.0, generation: int = 1
) -> SimClip:
    """Clip ``index`` of the dataset :func:`write_dataset` writes with ``seed`` (frames, contours, labels).

    Quality cycles good/medium/poor with the index; the patient is adult (EchoNet-Dynamic) or
    pediatric; ``generation`` picks the simulator (:func:`edge_agent.sim.simulator.draw_case`). ``n_beats``
    (:data:`MIN_BEATS` to :data:`MAX_BEATS`) beats of video from a random start phase; the clip always
    holds a complete ED→ED beat (a draw without one is re-rendered).
    """
    check_beats(n_beats)
    rng = clip_rng(seed, index)
    case = draw_case(
        rng, quality=QUALITIES[index % len(QUALITIES)], pediatric=pediatric, generation=generation
    )
    for _ in range(MAX_RENDER_TRIES):
        clip = simulate_clip(case, rng, n_beats=n_beats)
        if clip.ed_frames:
            return clip
    raise RuntimeError(
        f"clip {index} of seed {seed}: no complete beat in {MAX_RENDER_TRIES} renderings of {n_beats} beats "
        f"at {case.hr_bpm:.0f} bpm; pass a larger n_beats"
    )


# --------------------------------------------------------------------------------------------------
# Tracing geometry
# --------------------------------------------------------------------------------------------------


def _crossing_range(s: np.ndarray, w: np.ndarray, level: float) -> tuple[float, float]:
    """Closed polygon (s, w), each (P + 1,) with the first point repeated → (min, max) of w on s = level."""
    s0, s1, w0, w1 = s[:-1], s[1:], w[:-1], w[1:]
    cross = ((s0 - level) * (s1 - level) <= 0) & (s0 != s1)
    if not np.any(cross):
        raise ValueError(f"the contour does not cross the disc level s={level:.4g}: it is not an LV outline")
    ws = w0[cross] + (level - s0[cross]) * (w1[cross] - w0[cross]) / (s1[cross] - s0[cross])
    return float(ws.min()), float(ws.max())


def simpson_chords(contour: np.ndarray, n_discs: int = SIMPSON_DISCS) -> np.ndarray:
    """EchoNet-Dynamic tracing rows of one LV outline: (1 + n_discs, 4) of ``X1, Y1, X2, Y2``.

    contour: (P, 2) points (x, y), ordered from one mitral annulus point round the apex to the other
        (``SimClip.contours[frame]``, pixels); the rows come out in the same unit.
    Row 0 is the long axis, from the apex (X1, Y1) to the mitral-plane midpoint (X2, Y2), with the
    apex the contour point farthest from that midpoint. Rows 1… are the disc chords perpendicular to
    it at the disc centres (k + ½)·L/n_discs from the mitral plane, listed apex first; (X1, Y1) lies
    on the wall that ``contour[0]`` starts, (X2, Y2) on the other. This is the geometry of
    :func:`edge_agent.sim.phantom.simpson_volume`: Σ π/4·|chord|²·L/n_discs is its volume.
    """
    pts = np.asarray(contour, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise ValueError(f"contour must be (P, 2) points with P >= 3, got shape {pts.shape}")
    base_mid = 0.5 * (pts[0] + pts[-1])
    dist = np.linalg.norm(pts - base_mid, axis=1)
    length = float(dist.max())
    if length == 0:
        raise ValueError("contour has zero length: every point sits on the mitral-plane midpoint")
    apex = pts[int(np.argmax(dist))]
    axis = (apex - base_mid) / length
    normal = np.array([-axis[1], axis[0]])
    if (pts[0] - base_mid) @ normal > 0:  # so that X1 is always on contour[0]'s wall
        normal = -normal
    closed = np.vstack([pts, pts[:1]])  # the mitral plane closes the outline
    s = (closed - base_mid) @ axis
    w = (closed - base_mid) @ normal
    rows = [np.concatenate([apex, base_mid])]
    for level in (np.arange(n_discs)[::-1] + 0.5) * length / n_discs:
        lo, hi = _crossing_range(s, w, float(level))
        centre = base_mid + level * axis
        rows.append(np.concatenate([centre + lo * normal, centre + hi * normal]))
    return np.asarray(rows)


# --------------------------------------------------------------------------------------------------
# Writing one clip
# --------------------------------------------------------------------------------------------------


def write_avi(path: Path, frames: np.ndarray, fps: float) -> None:
    """(F, H, W) uint8 grayscale → an MJPG AVI with three identical channels and ``fps`` in its header."""
    _, h, w = frames.shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (w, h), True)
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write an MJPG AVI here; check that the folder is writable")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    finally:
        writer.release()


def _num(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}"


def _opt(value: float | None, digits: int) -> str:
    """A demographic cell: blank when unknown (the loaders mask blanks)."""
    return "" if value is None else _num(value, digits)


def _join(values: Sequence[float], digits: int = 4) -> str:
    """A SimulationInfo list cell: one value per complete beat, ';'-separated (ints as ints)."""
    return ";".join(str(v) if isinstance(v, int) else _num(v, digits) for v in values)


Row = dict[str, str]


@dataclass(frozen=True)
class _Job:
    root: Path
    seed: int
    index: int
    fmt: str
    n_beats: float
    generation: int


@dataclass(frozen=True)
class _Rows:
    """One written clip's rows of FileList.csv, VolumeTracings.csv and SimulationInfo.csv."""

    filelist: Row
    tracings: list[Row]
    info: Row


def clip_name(seed: int, index: int) -> str:
    """FileName stem of clip ``index`` of seed ``seed``: unique across seeds, sorts by index."""
    return f"SIM{seed}X{index:06d}"


def _write_clip(job: _Job) -> _Rows:
    """Render clip ``job.index``, write its AVI and return its CSV rows (runs in a worker process)."""
    pediatric = job.fmt == "pediatric"
    clip = dataset_clip(
        job.seed, job.index, pediatric=pediatric, n_beats=job.n_beats, generation=job.generation
    )
    stem = clip_name(job.seed, job.index)
    avi = f"{stem}.avi"
    write_avi(job.root / "Videos" / avi, clip.frames, clip.fps)
    demo = clip.case.demographics
    traced = (clip.ed_frames[0], clip.es_frames[0])  # the first complete beat, as a sonographer traces one
    if pediatric:
        filelist = {
            "FileName": avi,
            "EF": _num(clip.ef),
            "Sex": demo.sex or "",
            "Age": _opt(demo.age, 1),
            "Weight": _opt(demo.weight, 1),
            "Height": _opt(demo.height, 1),
            "Split": str(job.index % 10),
        }
        tracings = [
            {"FileName": avi, "X": _num(x), "Y": _num(y), "Frame": str(frame)}
            for frame in traced
            for x, y in clip.contours[frame]
        ]
    else:
        filelist = {
            "FileName": stem,
            "EF": _num(clip.ef),
            "ESV": _num(clip.esv),
            "EDV": _num(clip.edv),
            "FrameHeight": str(clip.frames.shape[1]),
            "FrameWidth": str(clip.frames.shape[2]),
            "FPS": _num(clip.fps, 2),
            "NumberOfFrames": str(len(clip.frames)),
            "Split": ECHONET_SPLITS[job.index % 10],
        }
        tracings = [
            {
                "FileName": avi,
                "X1": _num(x1),
                "Y1": _num(y1),
                "X2": _num(x2),
                "Y2": _num(y2),
                "Frame": str(frame),
            }
            for frame in traced
            for x1, y1, x2, y2 in simpson_chords(clip.contours[frame])
        ]
    info = {
        "FileName": stem,
        "Quality": clip.case.quality,
        "HR": _num(clip.case.hr_bpm, 2),
        "FPS": _num(clip.fps, 2),
        "NumberOfFrames": str(len(clip.frames)),
        "TargetEF": _num(clip.case.ef),
        "EF": _num(clip.ef),
        "EDV": _num(clip.edv),
        "ESV": _num(clip.esv),
        "BeatEF": _join(clip.beat_ef),
        "BeatEDV": _join(clip.beat_edv),
        "BeatESV": _join(clip.beat_esv),
        "EDFrames": _join(clip.ed_frames),
        "ESFrames": _join(clip.es_frames),
        "Age": _opt(demo.age, 2),
        "Sex": demo.sex or "",
        "Weight": _opt(demo.weight, 2),
        "Height": _opt(demo.height, 2),
        "PixelsPerCm": _num(clip.px_per_cm, 6),
    }
    return _Rows(filelist, tracings, info)


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Row]) -> None:
    """Rows keyed by column name → a CSV with exactly ``columns``, in that order."""
    with path.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(columns), extrasaction="raise")
        out.writeheader()
        for row in rows:
            if row.keys() != set(columns):  # a row missing a column would silently write a blank
                raise ValueError(f"{path}: row {row} does not have exactly the columns {list(columns)}")
            out.writerow(row)


def _imap(fn: Callable[[T], R], jobs: Sequence[T], workers: int, desc: str) -> Iterator[R]:
    """``fn`` over ``jobs``, results in order, in ``workers`` forked processes (1: this one), with tqdm."""
    if workers > 1:
        # fork: workers inherit the imported simulator; they use numpy and OpenCV only.
        with mp.get_context("fork").Pool(workers) as pool:
            yield from tqdm(pool.imap(fn, jobs), total=len(jobs), desc=desc, unit="clip")
    else:
        yield from tqdm(map(fn, jobs), total=len(jobs), desc=desc, unit="clip")


def write_dataset(
    out: Path,
    n: int,
    seed: int = 0,
    fmt: str = "echonet",
    n_beats: float = 3.0,
    workers: int = 2,
    generation: int = 1,
) -> Path:
    """Write ``n`` simulated clips as an EchoNet-Dynamic or EchoNet-Pediatric folder (module docstring).

    out: the dataset folder (created; existing CSVs are overwritten, stray videos left alone).
    seed: dataset seed, >= 0; clip i is :func:`dataset_clip` ``(seed, i)``.
    fmt: ``"echonet"`` (adults, 112×112 AVIs) or ``"pediatric"`` (children, with demographics).
    n_beats: beats of video per clip (2 to 30), from a random start phase.
    workers: processes rendering in parallel.
    generation: simulator generation, 1 (default) or 2 (:mod:`edge_agent.sim.phantom2`). Returns ``out``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is not one of {FORMATS}")
    if n < 1:
        raise ValueError(f"n={n}: write at least one clip")
    if seed < 0:
        raise ValueError(f"seed={seed}: numpy seed sequences need a seed >= 0")
    if workers < 1:
        raise ValueError(f"workers={workers}: use at least one worker process")
    check_beats(n_beats)
    out = Path(out)
    (out / "Videos").mkdir(parents=True, exist_ok=True)
    jobs = [_Job(out, seed, i, fmt, n_beats, generation) for i in range(n)]
    rows = list(_imap(_write_clip, jobs, workers, desc=f"writing {fmt}"))
    pediatric = fmt == "pediatric"
    _write_csv(
        out / "FileList.csv",
        PEDIATRIC_FILELIST_COLUMNS if pediatric else ECHONET_FILELIST_COLUMNS,
        [r.filelist for r in rows],
    )
    _write_csv(
        out / "VolumeTracings.csv",
        PEDIATRIC_TRACING_COLUMNS if pediatric else ECHONET_TRACING_COLUMNS,
        [t for r in rows for t in r.tracings],
    )
    _write_csv(out / "SimulationInfo.csv", INFO_COLUMNS, [r.info for r in rows])
    return out


# --------------------------------------------------------------------------------------------------
# Image statistics next to real EchoNet clips
# --------------------------------------------------------------------------------------------------


def mjpg_roundtrip(frames: np.ndarray, fps: float) -> np.ndarray:
    """Frames (F, H, W) uint8 → the same frames written to an MJPG AVI and decoded, as a loader sees them."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.avi"
        write_avi(path, frames, fps)
        decoded, _ = read_video(path)
    return decoded


def _stats_of_clip(job: tuple[int, int, int]) -> dict[str, float]:
    seed, index, generation = job
    rng = clip_rng(seed, index)
    case = draw_case(rng, fps=STATS_FPS, quality=QUALITIES[index % len(QUALITIES)], generation=generation)
    clip = simulate_clip(case, rng, n_frames=STATS_FRAMES)
    # The real statistics were measured on decoded MJPG AVIs: measure ours after the same codec.
    return echo_stats.clip_stats(mjpg_roundtrip(clip.frames, clip.fps))


def simulator_stats(
    n: int = 24, seed: int = 11, workers: int = 1, generation: int = 1
) -> dict[str, tuple[float, float, float]]:
    """(p25, median, p75) across ``n`` simulated clips of every statistic (see
    :func:`simulator_stats_table`)."""
    if n < 1:
        raise ValueError(f"n={n}: simulate at least one clip")
    jobs = [(seed, i, generation) for i in range(n)]
    return echo_stats.summarize_stats(list(_imap(_stats_of_clip, jobs, workers, desc="image statistics")))


def simulator_stats_table(n: int = 24, seed: int = 11, workers: int = 1, generation: int = 1) -> str:
    """Markdown table of the simulator's image statistics beside real EchoNet-Dynamic clips.

    Simulates ``n`` adult clips of :data:`STATS_FRAMES` frames at :data:`STATS_FPS` fps (like real
    EchoNet), the three quality levels in equal parts, passes each through the MJPG codec and
    measures :func:`edge_agent.sim.echo_stats.clip_stats`; returns
    :func:`~edge_agent.sim.echo_stats.compare_table` of their (p25, median, p75) across clips.
    ``generation`` picks the simulator (1, the default, or 2).
    """
    return echo_stats.compare_table(simulator_stats(n, seed, workers, generation))
