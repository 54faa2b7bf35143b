"""EchoNet ``VolumeTracings.csv`` → traced LV area per (video, frame) → ED and ES frames.

Two published forms:

- EchoNet-Dynamic: ``FileName,X1,Y1,X2,Y2,Frame``. Per (file, frame) the first row is the LV long
  axis; each later row is a chord perpendicular to it, (X1, Y1) on one wall and (X2, Y2) on the
  other. The LV outline is side 1 in order then side 2 reversed (the long-axis row is not on the
  outline, as in the dataset authors' own mask code).
- EchoNet-Pediatric: ``FileName,X,Y,Frame``: the outline's points in order.

Areas are in square pixels of the 112×112 video; only their ranking (ED = larger) is used here.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from edge_agent.core.sample import DatasetError
from edge_agent.ml.datasets.base import parse_number, read_table, video_stem

CHORD_COLUMNS = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
POINT_COLUMNS = ("FileName", "X", "Y", "Frame")


def polygon_area(x: np.ndarray, y: np.ndarray) -> float:
    """Shoelace area of the closed polygon through points (x[i], y[i]) (N,), in squared input units."""
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def chord_area(chords: np.ndarray) -> float:
    """Area enclosed by EchoNet chords (N, 4) of ``X1, Y1, X2, Y2``, row 0 being the long axis."""
    walls = chords[1:]
    x = np.concatenate([walls[:, 0], walls[::-1, 2]])
    y = np.concatenate([walls[:, 1], walls[::-1, 3]])
    return polygon_area(x, y)


def load_volume_tracings(path: Path) -> dict[str, dict[int, float]]:
    """Read either tracing form; returns {video stem: {frame index (0-based): traced area px²}}.

    FileName is matched by stem, so ``0X1A.avi`` and ``0X1A`` are the same video.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: not found; point the loader at the folder that holds {path.name}")
    with path.open(encoding="utf-8-sig") as f:
        header = [h.strip() for h in f.readline().split(",")]
    chord_form = all(c in header for c in CHORD_COLUMNS)
    if not chord_form and not all(c in header for c in POINT_COLUMNS):
        raise DatasetError(
            f"{path}: columns {header} match neither tracing layout: expected {list(CHORD_COLUMNS)} "
            f"(EchoNet-Dynamic) or {list(POINT_COLUMNS)} (EchoNet-Pediatric)"
        )
    coords = CHORD_COLUMNS[1:5] if chord_form else POINT_COLUMNS[1:3]
    groups: dict[tuple[str, int], list[list[float]]] = defaultdict(list)
    for line, row in read_table(path, CHORD_COLUMNS if chord_form else POINT_COLUMNS):
        where = f"{path} line {line}"
        frame = parse_number(row["Frame"], where, "Frame")
        if frame < 0 or frame != int(frame):
            raise DatasetError(f"{where}: Frame={row['Frame']!r} must be a 0-based frame index")
        groups[(video_stem(row["FileName"]), int(frame))].append(
            [parse_number(row[c], where, c) for c in coords]
        )
    # Chord form: the long axis plus at least two chords make an outline; point form: three points.
    need = 3
    areas: dict[str, dict[int, float]] = defaultdict(dict)
    for (stem, frame), rows in groups.items():
        if len(rows) < need:
            raise DatasetError(
                f"{path}: {stem} frame {frame} has {len(rows)} tracing rows, too few to enclose an area "
                f"(need {need}); remove that frame's rows or re-export the tracing"
            )
        pts = np.asarray(rows, dtype=np.float64)
        areas[stem][frame] = chord_area(pts) if chord_form else polygon_area(pts[:, 0], pts[:, 1])
    return dict(areas)


def ed_es_from_areas(areas: dict[int, float]) -> tuple[int, int] | None:
    """{frame: area} → (ED, ES): the largest and the smallest traced frame; None below two frames.

    One traced frame cannot say whether it is ED or ES, so the caller falls back to periodicity.
    """
    if len(areas) < 2:
        return None
    ranked = sorted(areas, key=lambda frame: (areas[frame], frame))
    return ranked[-1], ranked[0]
