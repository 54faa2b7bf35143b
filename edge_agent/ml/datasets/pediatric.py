"""EchoNet-Pediatric (Reddy et al., JASE 2023): one folder per view (``A4C/``, ``PSAX/``).

Layout under ``root_view_dir`` (for example ``pediatric_echo_avi/A4C``)::

    FileList.csv        FileName,EF,Sex,Age,Weight,Height,Split
    VolumeTracings.csv  FileName,X,Y,Frame   (outline points; the X1,Y1,X2,Y2 chord form also works)
    Videos/<FileName>

Split is a cross-validation fold number 0–9. The named splits map folds 0–7 → TRAIN, 8 → VAL,
9 → TEST; pass a list of fold numbers for any other scheme (for example one fold per run).

Demographics: Sex M/F (or Male/Female) → 1/0, Age in years, Weight kg, Height cm. A blank or NaN
cell is masked; a Weight or Height of 0 is masked too (it can only mean "not recorded").

Frame rate trap: this FileList has no FPS column, so the AVI header's fps is used, and EchoNet
AVI headers are known to be wrong (30 where the acquisition was 50). The rate only bounds the
heart-rate search for the beat length; pass ``fps=`` when you know the true rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_agent.core.demographics import DEMOGRAPHIC_FIELDS, demographics_vector
from edge_agent.core.sample import DatasetError
from edge_agent.ml.datasets.base import (
    filelist_rows,
    parse_ef,
    parse_number,
    parse_optional,
    parse_sex,
    video_file,
)
from edge_agent.ml.datasets.echonet import TracedVideoDataset

FILELIST_COLUMNS = ("FileName", "EF", "Sex", "Age", "Weight", "Height", "Split")
FOLDS = tuple(range(10))
FOLD_SPLITS = {"TRAIN": (0, 1, 2, 3, 4, 5, 6, 7), "VAL": (8,), "TEST": (9,), "ALL": FOLDS}


def select_folds(split: str | Sequence[int], source: str) -> set[int]:
    """``"TRAIN"``/``"VAL"``/``"TEST"``/``"ALL"`` or a list of fold numbers → the folds wanted."""
    if isinstance(split, str):
        folds = FOLD_SPLITS.get(split.strip().upper())
        if folds is None:
            raise DatasetError(f"{source}: split {split!r} is not one of {list(FOLD_SPLITS)} or a fold list")
        return set(folds)
    wanted = {int(f) for f in split}
    if not wanted or not wanted <= set(FOLDS):
        raise DatasetError(f"{source}: folds {list(split)} must be a non-empty list drawn from 0–9")
    return wanted


def _measure(value: str, where: str, column: str, *, zero_is_missing: bool) -> float | None:
    number = parse_optional(value, where, column)
    if number is None or (zero_is_missing and number == 0):
        return None
    if number < 0:
        raise DatasetError(f"{where}: {column}={number} is negative; fix it or leave it blank")
    return number


class EchoNetPediatric(TracedVideoDataset):
    """One view of EchoNet-Pediatric as a :class:`~edge_agent.ml.datasets.base.ClipDataset`.

    root_view_dir: the view folder holding FileList.csv, VolumeTracings.csv and Videos/.
    split: ``"TRAIN"`` (folds 0–7), ``"VAL"`` (8), ``"TEST"`` (9), ``"ALL"`` or a list of folds.
    fps: the true frame rate (frames per second) when known; None trusts each AVI header.

    Targets of ``ds[i]``: clip (32, 112, 112) uint8 from the traced ED frame; ef in %;
    demographics [age, sex, weight, height] with their mask; quality None. Without decoding
    video: ``efs``, ``folds`` and ``ed_es_frames``.
    """

    def __init__(
        self, root_view_dir: str | Path, split: str | Sequence[int] = "TRAIN", fps: float | None = None
    ) -> None:
        self.root = Path(root_view_dir)
        filelist = self.root / "FileList.csv"
        if fps is not None and not fps > 0:
            raise DatasetError(f"{self.root}: fps={fps} must be positive, or None to use the AVI header")
        self.fps_override = fps
        wanted = select_folds(split, str(filelist))
        self.names: list[str] = []
        self.files: list[Path] = []
        efs: list[float] = []
        folds: list[int] = []
        self.demographics: list[tuple[np.ndarray, np.ndarray]] = []
        for where, stem, row in filelist_rows(filelist, FILELIST_COLUMNS):
            fold = parse_number(row["Split"], where, "Split")
            if fold not in FOLDS:
                raise DatasetError(f"{where}: Split={row['Split']!r} must be a fold number 0–9")
            ef = parse_ef(row["EF"], where)
            demo = demographics_vector(
                age_years=_measure(row["Age"], where, "Age", zero_is_missing=False),
                sex_male=parse_sex(row["Sex"], where),
                weight_kg=_measure(row["Weight"], where, "Weight", zero_is_missing=True),
                height_cm=_measure(row["Height"], where, "Height", zero_is_missing=True),
            )
            if int(fold) not in wanted:
                continue
            self.names.append(stem)
            self.files.append(video_file(self.root / "Videos", row["FileName"]))
            efs.append(ef)
            folds.append(int(fold))
            self.demographics.append(demo)
        self.efs = np.asarray(efs, dtype=np.float64)
        self.folds = np.asarray(folds, dtype=np.int64)
        self._index_tracings()

    def _fps(self, i: int, header_fps: float) -> float:
        fps = self.fps_override if self.fps_override is not None else header_fps
        if not fps > 0:
            raise DatasetError(
                f"{self.files[i]}: the AVI header has no usable frame rate ({header_fps}); "
                "pass fps= to EchoNetPediatric"
            )
        return fps

    def _demographics(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        demographics, mask = self.demographics[i]
        return demographics.copy(), mask.copy()

    def stream_of(self, i: int) -> tuple[Path, float | None, dict[str, float]]:
        values, mask = self.demographics[i]
        known = {f: float(v) for f, v, k in zip(DEMOGRAPHIC_FIELDS, values, mask, strict=True) if k}
        return self.files[i], self.fps_override, known
