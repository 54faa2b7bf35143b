"""simulate.write_dataset read back by the project's own loaders; the Simpson chord geometry; the
simulator-vs-real statistics table."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.ml.datasets import EchoNetDynamic, EchoNetPediatric, read_video
from edge_agent.ml.simulate import (
    ECHONET_FILELIST_COLUMNS,
    ECHONET_SPLITS,
    ECHONET_TRACING_COLUMNS,
    INFO_COLUMNS,
    PEDIATRIC_FILELIST_COLUMNS,
    PEDIATRIC_TRACING_COLUMNS,
    clip_name,
    clip_rng,
    dataset_clip,
    simpson_chords,
    simulator_stats_table,
    write_dataset,
)
from edge_agent.sim.echo_stats import REAL_ECHO_STATS, STAT_NAMES
from edge_agent.sim.phantom import QUALITIES, SIMPSON_DISCS, LVShape, SimClip, lv_contour_uv, simpson_volume
from edge_agent.sim.simulator import draw_case, simulate_clip

N, N_BEATS = 3, 2.0
ECHONET_SEED, PEDIATRIC_SEED = 7, 8


def _header(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return next(csv.reader(f))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _ints(cell: str) -> list[int]:
    return [int(v) for v in cell.split(";")]


def _tracing_frames(
    rows: list[dict[str, str]], file_name: str, columns: tuple[str, ...]
) -> dict[int, np.ndarray]:
    """{frame: (rows, len(columns)) float} of one video's tracing rows, in file order."""
    out: dict[int, list[list[float]]] = {}
    for row in rows:
        if row["FileName"] == file_name:
            out.setdefault(int(row["Frame"]), []).append([float(row[c]) for c in columns])
    return {frame: np.asarray(values) for frame, values in out.items()}


def _chord_volume(chords: np.ndarray) -> float:
    """Simpson volume (in the chords' unit, cubed) of EchoNet rows: long axis, then equal-height discs."""
    length = math.hypot(*(chords[0, :2] - chords[0, 2:]))
    diameters = np.hypot(*(chords[1:, :2] - chords[1:, 2:]).T)
    return float(np.sum(np.pi / 4 * diameters**2) * length / len(diameters))


@pytest.fixture(scope="module")
def echonet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "echonet"
    # Two workers: the forked pool must return rows in index order.
    return write_dataset(out, n=N, seed=ECHONET_SEED, fmt="echonet", n_beats=N_BEATS, workers=2)


@pytest.fixture(scope="module")
def pediatric_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "A4C"
    return write_dataset(out, n=N, seed=PEDIATRIC_SEED, fmt="pediatric", n_beats=N_BEATS, workers=1)


@pytest.fixture(scope="module")
def echonet_clips() -> list[SimClip]:
    return [dataset_clip(ECHONET_SEED, i, n_beats=N_BEATS) for i in range(N)]


# --- EchoNet-Dynamic --------------------------------------------------------------------------------


def test_echonet_layout_has_exactly_the_published_columns(echonet_root: Path) -> None:
    assert _header(echonet_root / "FileList.csv") == list(ECHONET_FILELIST_COLUMNS)
    assert _header(echonet_root / "VolumeTracings.csv") == list(ECHONET_TRACING_COLUMNS)
    assert _header(echonet_root / "SimulationInfo.csv") == list(INFO_COLUMNS)
    assert ECHONET_FILELIST_COLUMNS == (
        "FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split",
    )  # fmt: skip
    assert ECHONET_TRACING_COLUMNS == ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
    filelist = _rows(echonet_root / "FileList.csv")
    stems = [clip_name(ECHONET_SEED, i) for i in range(N)]
    # Current release: FileList names have no .avi, VolumeTracings names do.
    assert [r["FileName"] for r in filelist] == stems
    assert {r["FileName"] for r in _rows(echonet_root / "VolumeTracings.csv")} == {f"{s}.avi" for s in stems}
    assert sorted(p.name for p in (echonet_root / "Videos").iterdir()) == [f"{s}.avi" for s in stems]
    assert [r["Split"] for r in filelist] == ["TRAIN"] * N
    assert [(r["FrameHeight"], r["FrameWidth"]) for r in filelist] == [("112", "112")] * N


def test_echonet_splits_are_80_10_10_by_index() -> None:
    splits = [ECHONET_SPLITS[i % 10] for i in range(1000)]
    assert (splits.count("TRAIN"), splits.count("VAL"), splits.count("TEST")) == (800, 100, 100)


def test_echonet_loader_reads_the_simulator_labels(echonet_root: Path, echonet_clips: list[SimClip]) -> None:
    ds = EchoNetDynamic(echonet_root, split="ALL")
    assert ds.names == [clip_name(ECHONET_SEED, i) for i in range(N)]
    assert len(EchoNetDynamic(echonet_root, split="TRAIN")) == N
    info = _rows(echonet_root / "SimulationInfo.csv")
    for i, clip in enumerate(echonet_clips):
        name = ds.names[i]
        assert ds.efs[i] == pytest.approx(clip.ef, abs=1e-4)
        assert (ds.edv[i], ds.esv[i]) == pytest.approx((clip.edv, clip.esv), abs=1e-4)
        assert ds.fps[i] == clip.fps
        # The loader's ED (largest traced frame) and ES are the simulator's first complete beat.
        assert ds.ed_es_frames[name] == (clip.ed_frames[0], clip.es_frames[0])
        assert _ints(info[i]["EDFrames"]) == clip.ed_frames
        assert _ints(info[i]["ESFrames"]) == clip.es_frames
        assert info[i]["Quality"] == QUALITIES[i % 3]
        assert float(info[i]["EF"]) == pytest.approx(clip.ef, abs=1e-4)
        frames, header_fps = read_video(ds.files[i])
        assert header_fps == pytest.approx(clip.fps)
        assert frames.shape == clip.frames.shape
        # MJPG is lossy: measured 1.5–1.9 grey levels mean absolute error on these clips.
        assert np.abs(frames.astype(np.int16) - clip.frames).mean() < 3.0
    sample = ds[0]
    assert sample.clip.shape == (32, 112, 112) and sample.beat_how.startswith("ed_")
    assert sample.ef == pytest.approx(echonet_clips[0].ef, abs=1e-4)


def test_echonet_tracings_reproduce_the_volume_labels(
    echonet_root: Path, echonet_clips: list[SimClip]
) -> None:
    tracings = _rows(echonet_root / "VolumeTracings.csv")
    info = _rows(echonet_root / "SimulationInfo.csv")
    for i, clip in enumerate(echonet_clips):
        by_frame = _tracing_frames(tracings, f"{clip_name(ECHONET_SEED, i)}.avi", ("X1", "Y1", "X2", "Y2"))
        ed, es = clip.ed_frames[0], clip.es_frames[0]
        assert sorted(by_frame) == sorted([ed, es])
        cm = float(info[i]["PixelsPerCm"])
        for frame, label in ((ed, clip.edv), (es, clip.esv)):
            chords = by_frame[frame]
            assert chords.shape == (1 + SIMPSON_DISCS, 4)
            # The labels come from 96-point contours at the exact ED/ES instants, the tracings
            # from the frame's 64-point contour: measured 0.06–0.12 % apart.
            assert _chord_volume(chords) / cm**3 == pytest.approx(label, rel=0.01)
            axis = chords[0, 2:] - chords[0, :2]
            directions = chords[1:, 2:] - chords[1:, :2]
            cosines = directions @ axis / (np.linalg.norm(directions, axis=1) * np.linalg.norm(axis))
            assert np.abs(cosines).max() < 1e-3  # perpendicular, up to the CSV's 4 decimals


# --- EchoNet-Pediatric ------------------------------------------------------------------------------


def test_pediatric_layout_and_loader(pediatric_root: Path) -> None:
    assert _header(pediatric_root / "FileList.csv") == list(PEDIATRIC_FILELIST_COLUMNS)
    assert _header(pediatric_root / "VolumeTracings.csv") == list(PEDIATRIC_TRACING_COLUMNS)
    assert PEDIATRIC_FILELIST_COLUMNS == ("FileName", "EF", "Sex", "Age", "Weight", "Height", "Split")
    assert PEDIATRIC_TRACING_COLUMNS == ("FileName", "X", "Y", "Frame")
    ds = EchoNetPediatric(pediatric_root, split="ALL")
    assert ds.names == [clip_name(PEDIATRIC_SEED, i) for i in range(N)]
    assert list(ds.folds) == list(range(N))
    tracings = _rows(pediatric_root / "VolumeTracings.csv")
    for i in range(N):
        clip = dataset_clip(PEDIATRIC_SEED, i, pediatric=True, n_beats=N_BEATS)
        demo = clip.case.demographics
        assert demo.age is not None and demo.age < 18.5  # a pediatric patient
        values, mask = ds.demographics[i]
        assert mask.all()
        expected = [demo.age, float(demo.sex == "M"), demo.weight, demo.height]
        np.testing.assert_allclose(values, expected, atol=0.051)  # one decimal in the CSV
        assert ds.efs[i] == pytest.approx(clip.ef, abs=1e-4)
        ed, es = clip.ed_frames[0], clip.es_frames[0]
        assert ds.ed_es_frames[ds.names[i]] == (ed, es)
        outlines = _tracing_frames(tracings, f"{ds.names[i]}.avi", ("X", "Y"))
        for frame in (ed, es):
            np.testing.assert_allclose(outlines[frame], clip.contours[frame], atol=1e-4)
    sample = ds[0]
    assert sample.clip.shape == (32, 112, 112) and sample.beat_how.startswith("ed_")


# --- arguments and the complete-beat guarantee -------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_beats": 1.5}, "n_beats=1.5"),
        ({"n_beats": 31.0}, "n_beats=31.0"),
        ({"fmt": "camus"}, "fmt='camus'"),
        ({"n": 0}, "n=0"),
        ({"workers": 0}, "workers=0"),
        ({"seed": -1}, "seed=-1"),
    ],
)
def test_write_dataset_rejects_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"n": 1, "seed": 0, "fmt": "echonet", "n_beats": 3.0, "workers": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        write_dataset(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()  # nothing written before the arguments are checked


def test_a_window_without_a_complete_beat_is_rendered_again() -> None:
    # Clip 17 of seed 0 (85 bpm, 40 fps): its first 2-beat window misses a whole ED→ED beat
    # (found by search; ~2.6 % of 2-beat windows do, through RR variability).
    rng = clip_rng(0, 17)
    first = simulate_clip(draw_case(rng, quality=QUALITIES[17 % 3]), rng, n_beats=2.0)
    assert first.ed_frames == []
    clip = dataset_clip(0, 17, n_beats=2.0)
    assert len(clip.ed_frames) >= 1 and len(clip.beat_ef) == len(clip.ed_frames)


# --- Simpson chords -----------------------------------------------------------------------------


def _distance_to_polyline(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    """(N,) distance of each point to the closed polyline (P, 2)."""
    a, b = polyline, np.roll(polyline, -1, axis=0)
    ab = b - a
    t = np.clip(np.einsum("npk,pk->np", points[:, None] - a, ab) / np.einsum("pk,pk->p", ab, ab), 0, 1)
    nearest = a + t[..., None] * ab
    return np.linalg.norm(points[:, None] - nearest, axis=-1).min(axis=1)


@settings(max_examples=40, deadline=None)
@given(
    a=st.floats(2.0, 6.0),
    aspect=st.floats(0.3, 0.9),
    trunc=st.floats(0.3, 0.7),
    angle=st.floats(-math.pi, math.pi),
    shift=st.tuples(st.floats(-50, 50), st.floats(-50, 50)),
    scale=st.floats(1.0, 10.0),
)
def test_simpson_chords_rebuild_the_simpson_volume(
    a: float, aspect: float, trunc: float, angle: float, shift: tuple[float, float], scale: float
) -> None:
    uv = lv_contour_uv(LVShape(a=a, b=aspect * a, ta=0.0, tw=0.0, trunc=trunc), 64)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    contour = scale * uv @ rot.T + np.asarray(shift)
    chords = simpson_chords(contour)
    assert chords.shape == (1 + SIMPSON_DISCS, 4)
    volume, length = simpson_volume(contour)
    assert _chord_volume(chords) == pytest.approx(volume, rel=1e-9)
    # Row 0: apex (the contour point farthest from the mitral-plane midpoint) → that midpoint.
    base_mid = 0.5 * (contour[0] + contour[-1])
    np.testing.assert_allclose(chords[0, 2:], base_mid, atol=1e-9 * scale)
    assert math.dist(chords[0, :2], chords[0, 2:]) == pytest.approx(length, rel=1e-12)
    axis = (chords[0, 2:] - chords[0, :2]) / length
    directions = chords[1:, 2:] - chords[1:, :2]
    assert np.abs(directions @ axis).max() < 1e-9 * scale  # perpendicular to the long axis
    # Disc centres evenly spaced along the axis, apex first; endpoints on the (closed) outline.
    heights = (chords[1:, :2] - chords[0, 2:]) @ -axis
    np.testing.assert_allclose(heights, (np.arange(SIMPSON_DISCS)[::-1] + 0.5) * length / SIMPSON_DISCS)
    ends = np.vstack([chords[1:, :2], chords[1:, 2:]])
    assert _distance_to_polyline(ends, contour).max() < 1e-9 * scale
    # (X1, Y1) always on the wall contour[0] starts: the same side of the axis as contour[0].
    rel = np.vstack([chords[1:, :2], contour[:1]]) - base_mid
    side = np.sign(axis[0] * rel[:, 1] - axis[1] * rel[:, 0])
    assert np.all(side[:-1] == side[-1])


def test_simpson_chords_reject_a_non_contour() -> None:
    with pytest.raises(ValueError, match="contour must be"):
        simpson_chords(np.zeros((5,)))
    with pytest.raises(ValueError, match="zero length"):
        simpson_chords(np.zeros((5, 2)))


# --- image statistics ---------------------------------------------------------------------------


def test_simulator_stats_table_lists_every_statistic() -> None:
    table = simulator_stats_table(n=2, seed=0)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(REAL_ECHO_STATS)
    for name in STAT_NAMES:
        (row,) = [line for line in lines if line.startswith(f"| {name} |")]
        assert row.rstrip().endswith(("| yes |", "| no |"))
    (frames_row,) = [line for line in lines if line.startswith("| n_frames |")]
    assert "180 / 180 / 180" in frames_row  # clips as long as real EchoNet ones
