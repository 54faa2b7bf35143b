"""EchoNet-Dynamic (Ouyang et al., Nature 2020): 10,030 apical-4-chamber AVIs at 112×112.

Layout under ``root``::

    FileList.csv        FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split
    VolumeTracings.csv  FileName,X1,Y1,X2,Y2,Frame   (optional here: without it no ED is known)
    Videos/<FileName>.avi

FileName carries ``.avi`` in some copies of FileList.csv and not in others; both work, and rows are
joined to VolumeTracings by stem. Split is TRAIN, VAL or TEST.

Targets of ``ds[i]`` (:class:`ClipSample`): clip (32, 112, 112) uint8, one beat from the traced
ED frame; ef in %; no demographics (all masked); quality None. Also, without decoding video:
``efs``, ``esv`` and ``edv`` (mL, NaN when blank), ``fps`` (from FileList), ``ed_es_frames``.

The fps in the AVI headers is unreliable (30 where FileList says 50), so it is never used: the
beat search runs at FileList's FPS.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_agent.core.clip import beat_bounds, make_clip
from edge_agent.core.demographics import demographics_vector
from edge_agent.core.sample import ClipSample, DatasetError
from edge_agent.ml.datasets.base import (
    filelist_rows,
    parse_ef,
    parse_number,
    parse_optional,
    read_video,
    select_splits,
    video_file,
)
from edge_agent.ml.datasets.tracings import ed_es_from_areas, load_volume_tracings

SPLITS = ("TRAIN", "VAL", "TEST")
FILELIST_COLUMNS = ("FileName", "EF", "ESV", "EDV", "FPS", "Split")


def load_ed_es(root: Path, names: list[str]) -> dict[str, tuple[int, int]]:
    """{video stem: (ED frame, ES frame)} for the ``names`` traced in ``root/VolumeTracings.csv``;
    {} when the file is absent.

    Videos traced on fewer than two frames are left out (their beat falls back to periodicity).
    """
    tracings_csv = root / "VolumeTracings.csv"
    if not tracings_csv.is_file():
        return {}
    traced = load_volume_tracings(tracings_csv)
    pairs = {stem: ed_es_from_areas(traced[stem]) for stem in names if stem in traced}
    return {stem: pair for stem, pair in pairs.items() if pair is not None}


def clip_from_frames(
    frames: np.ndarray, fps: float, ed_es: tuple[int, int] | None, source: Path
) -> tuple[np.ndarray, str]:
    """A decoded EchoNet video (F, H, W) uint8 → (clip (32, 112, 112) uint8, beat rule).

    The beat starts at the traced ED frame when there is one; its length is the video's own
    period found at ``fps`` (frames per second).
    """
    if ed_es is None:
        start, end, how = beat_bounds(frames, fps)
    else:
        ed = ed_es[0]
        if ed >= len(frames):
            raise DatasetError(
                f"{source}: traced ED frame {ed} is past the video's last frame ({len(frames) - 1}); "
                "the tracing belongs to another video or the file is truncated: re-download it"
            )
        start, end, how = beat_bounds(frames, fps, ed_frame=ed)
    return make_clip(frames, start, end), how


class TracedVideoDataset(ABC):
    """What the two EchoNet loaders share: videos by stem, their traced ED/ES frames, no image grades.

    A subclass fills ``root``, ``names``, ``files`` and ``efs``, then calls :meth:`_index_tracings`;
    it says where a video's frame rate comes from (:meth:`_fps`) and its demographics
    (:meth:`_demographics`). ``ds[i]`` decodes the video and cuts its beat (:func:`clip_from_frames`).
    """

    root: Path
    names: list[str]
    files: list[Path]
    efs: np.ndarray

    def _index_tracings(self) -> None:
        self.quality: list[str | None] = [None] * len(self.names)
        self.ed_es_frames = load_ed_es(self.root, self.names)

    @abstractmethod
    def _fps(self, i: int, header_fps: float) -> float:
        """Frames per second of video i, whose AVI header says ``header_fps``."""

    @abstractmethod
    def stream_of(self, i: int) -> tuple[Path, float | None, dict[str, float]]:
        """Video i as a stream of the live agent would be configured to play it: (file, fps to pace
        it at, None to trust its header; demographics by field name, the absent ones left out)."""

    @abstractmethod
    def _demographics(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Video i's demographics: ((4,) float32 values, (4,) bool known mask), fresh arrays."""

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> ClipSample:
        name = self.names[i]
        frames, header_fps = read_video(self.files[i])
        fps = self._fps(i, header_fps)
        clip, how = clip_from_frames(frames, fps, self.ed_es_frames.get(name), self.files[i])
        demographics, mask = self._demographics(i)
        return ClipSample(clip, float(self.efs[i]), demographics, mask, None, name, how)


class EchoNetDynamic(TracedVideoDataset):
    """EchoNet-Dynamic as a :class:`~edge_agent.ml.datasets.base.ClipDataset` (see the module docstring).

    root: the folder holding FileList.csv, VolumeTracings.csv and Videos/.
    split: ``"TRAIN"``, ``"VAL"``, ``"TEST"``, ``"ALL"`` or a list of them.
    """

    def __init__(self, root: str | Path, split: str | Sequence[str] = "TRAIN") -> None:
        self.root = Path(root)
        filelist = self.root / "FileList.csv"
        self.splits = select_splits(split, SPLITS, str(filelist))
        self.names: list[str] = []
        self.files: list[Path] = []
        efs: list[float] = []
        esv: list[float] = []
        edv: list[float] = []
        fps: list[float] = []
        # Every row is validated, not just the requested split: a bad label fails on day one.
        for where, stem, row in filelist_rows(filelist, FILELIST_COLUMNS):
            row_split = row["Split"].upper()
            if row_split not in SPLITS:
                raise DatasetError(f"{where}: Split={row['Split']!r} is not one of {list(SPLITS)}")
            ef = parse_ef(row["EF"], where)
            rate = parse_number(row["FPS"], where, "FPS")
            if rate <= 0:
                raise DatasetError(f"{where}: FPS={rate} must be positive; fix the value")
            volumes = [parse_optional(row[c], where, c) for c in ("ESV", "EDV")]
            if row_split not in self.splits:
                continue
            self.names.append(stem)
            self.files.append(video_file(self.root / "Videos", row["FileName"]))
            efs.append(ef)
            fps.append(rate)
            esv.append(np.nan if volumes[0] is None else volumes[0])
            edv.append(np.nan if volumes[1] is None else volumes[1])
        self.efs = np.asarray(efs, dtype=np.float64)
        self.esv = np.asarray(esv, dtype=np.float64)
        self.edv = np.asarray(edv, dtype=np.float64)
        self.fps = np.asarray(fps, dtype=np.float64)
        self._index_tracings()

    def _fps(self, i: int, header_fps: float) -> float:
        return float(self.fps[i])  # the header fps is ignored on purpose (module docstring)

    def stream_of(self, i: int) -> tuple[Path, float | None, dict[str, float]]:
        return self.files[i], float(self.fps[i]), {}

    def _demographics(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return demographics_vector()
