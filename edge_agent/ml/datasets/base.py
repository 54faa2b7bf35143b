"""What every dataset loader shares: the sample it returns, the protocol it meets, its errors and readers.

Data contract of a loader (EchoNet-Dynamic, EchoNet-Pediatric, CAMUS, synthetic):

- ``len(ds)`` samples; ``ds[i]`` reads the media and returns a :class:`ClipSample`.
- ``ds.names`` (list[str], unique), ``ds.efs`` ((N,) float64, LVEF %) and ``ds.quality``
  (list[str | None]) come from the label files alone, so splits, histograms and stratification
  never decode a video.
- Labels are validated when the loader is built; media files are opened, and their errors
  raised, in ``__getitem__``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from edge_agent.core.sample import ClipSample, DatasetError

# Suffixes a dataset's label files (FileList, VolumeTracings) give its video names: stripped to join
# rows by video, and a name without one gets ".avi". Not the files edge-agent can play (that is
# live.sources.base.SOURCE_VIDEO_SUFFIXES, wider): widening this would change how names are joined.
DATASET_VIDEO_SUFFIXES = (".avi", ".mp4")


@runtime_checkable
class ClipDataset(Protocol):
    """A torch-free indexable dataset of :class:`ClipSample` (see the module docstring)."""

    names: list[str]
    efs: np.ndarray
    quality: list[str | None]

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> ClipSample: ...


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode a whole AVI/MP4 with OpenCV.

    Returns (frames (F, H, W) uint8 grayscale, fps from the container header). The header fps is
    often wrong (EchoNet AVIs say 30 where the acquisition was 50): loaders prefer a label file.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: video file not found; check the dataset root and the FileName column")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DatasetError(
                f"{path}: cannot be opened as a video (corrupt, truncated or an unsupported codec); "
                "re-download it, or re-encode it with `ffmpeg -i IN -c:v mjpeg OUT.avi`"
            )
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame)
    finally:
        cap.release()
    if not frames:
        raise DatasetError(f"{path}: the video has 0 decodable frames; re-download or re-encode it")
    return np.stack(frames).astype(np.uint8, copy=False), fps


def video_stem(file_name: str) -> str:
    """``"0X1A.avi"`` or ``"0X1A"`` → ``"0X1A"``: the key that joins FileList and VolumeTracings rows."""
    name = file_name.strip()
    for suffix in DATASET_VIDEO_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def video_file(videos_dir: Path, file_name: str) -> Path:
    """Path of a FileList entry's video: the name as given, with ``.avi`` added when it has no suffix."""
    name = file_name.strip()
    if not name.lower().endswith(DATASET_VIDEO_SUFFIXES):
        name += ".avi"
    return videos_dir / name


def read_table(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Read a CSV with a header row; returns (line number, row) pairs, line 2 being the first row.

    Raises DatasetError naming the file when it is missing or lacks one of ``required`` columns.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: not found; point the loader at the folder that holds {path.name}")
    # utf-8-sig: spreadsheet exports often start with a byte-order mark that would corrupt the first column.
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        for column in required:
            if column not in header:
                raise DatasetError(
                    f"{path}: missing column {column!r} (found {header}); "
                    f"the published layout has columns {list(required)}"
                )
        rows = []
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DatasetError(
                    f"{path} line {reader.line_num}: {len(values)} cells for {len(header)} columns; "
                    "fix the row (a stray comma or a cut-off line)"
                )
            rows.append((reader.line_num, dict(zip(header, (v.strip() for v in values), strict=True))))
    return rows


def is_blank(value: str) -> bool:
    """True for the ways CSV exports write a missing value: empty, NaN, NA, None."""
    return value.strip().lower() in ("", "nan", "na", "n/a", "none", "null")


def parse_number(value: str, where: str, column: str) -> float:
    """A required CSV/cfg cell → finite float. ``where`` names the file and line for errors."""
    if is_blank(value):
        raise DatasetError(f"{where}: {column} is empty; fill it in or remove the row")
    try:
        number = float(value)
    except ValueError:
        raise DatasetError(f"{where}: {column}={value!r} is not a number; fix the value") from None
    if not math.isfinite(number):
        raise DatasetError(f"{where}: {column}={value!r} is not finite; fix the value")
    return number


def parse_optional(value: str, where: str, column: str) -> float | None:
    """An optional cell → float, or None when blank (the value is then masked)."""
    return None if is_blank(value) else parse_number(value, where, column)


def parse_ef(value: str, where: str) -> float:
    """An EF cell → float percent, which must lie in [0, 100]."""
    ef = parse_number(value, where, "EF")
    if not 0.0 <= ef <= 100.0:
        raise DatasetError(
            f"{where}: EF={ef} is outside [0, 100]; EF is a percentage (a fraction like 0.55 must be 55)"
        )
    return ef


def parse_sex(value: str, where: str) -> float | None:
    """``M``/``Male`` → 1.0, ``F``/``Female`` → 0.0, blank → None (masked)."""
    if is_blank(value):
        return None
    code = {"m": 1.0, "male": 1.0, "f": 0.0, "female": 0.0}.get(value.strip().lower())
    if code is None:
        raise DatasetError(f"{where}: Sex={value!r} is not M, F, Male or Female; fix it or leave it blank")
    return code


def select_splits(split: str | Sequence[str], known: Sequence[str], source: str) -> set[str]:
    """A split request (``"TRAIN"``, ``"ALL"`` or a list of names) → the set of split names wanted."""
    wanted = [split] if isinstance(split, str) else list(split)
    names = {s.strip().upper() for s in wanted}
    if "ALL" in names:
        return set(known)
    unknown = names - set(known)
    if unknown or not names:
        raise DatasetError(f"{source}: split {split!r} is not one of {[*known, 'ALL']} or a list of them")
    return names


def filelist_rows(filelist: Path, columns: Sequence[str]) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(where, video stem, row) for every row of a FileList.csv, ``where`` naming file and line; a
    FileName that repeats an earlier row's is a DatasetError."""
    seen: dict[str, int] = {}
    for line, row in read_table(filelist, columns):
        where = f"{filelist} line {line}"
        stem = video_stem(row["FileName"])
        if stem in seen:
            raise DatasetError(f"{where}: FileName {stem!r} repeats line {seen[stem]}; remove one")
        seen[stem] = line
        yield where, stem, row
