"""What every frame source shares: the frame it yields, its error, its protocol, and URI dispatch.

A source turns one URI into a stream of :class:`SourceFrame` at the source's native resolution;
the capture process preprocesses them (:mod:`edge_agent.live.preprocess`) into the model's 112×112
frames. URIs::

    synthetic://?ef=35&hr=72&quality=poor&fps=50&seed=3     simulator with ground truth
    /data/a4c.avi, file:///data/a4c.mp4 (.avi .mp4 .mov .mkv)  video file
    /data/cine.dcm, dicom:///data/cine                         DICOM multi-frame cine
    device://0 or 0                                            camera / V4L2 frame grabber index
    rtsp://host:554/stream                                     network stream
    gst://<pipeline ending in appsink>                         GStreamer pipeline
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

import numpy as np

from edge_agent.core.demographics import DEMOGRAPHIC_FIELDS

# File suffixes opened as a video (OpenCV plays them); a dataset's naming of its videos is
# another matter (ml.datasets.base.DATASET_VIDEO_SUFFIXES).
SOURCE_VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv")
DICOM_SUFFIXES = (".dcm",)
# A frame rate outside (0, MAX_FPS] is a broken header, not an acquisition (echo tops out near 500).
MAX_FPS = 1000.0
VALID_URIS = (
    "synthetic://?ef=..&hr=..&quality=..&fps=..&seed=..",
    "a video path or file:// URI ending in " + "/".join(SOURCE_VIDEO_SUFFIXES),
    "a .dcm path or dicom://<path>",
    "device://<index> or a bare index like 0",
    "rtsp://<host>/<stream>",
    "gst://<pipeline ending in appsink>",
)


@dataclass(frozen=True, eq=False)  # eq=False: == on a numpy field is ambiguous
class SourceFrame:
    """One frame as the source delivers it.

    pixels: (H, W) uint8 grayscale or (H, W, 3) uint8 RGB at the source's native resolution.
    t: media time in s from the source's start (files: from the frame times; synthetic: phantom
        time; live devices: arrival time on time.monotonic() minus the first arrival).
    r_wave: an R wave (ECG end-diastole marker) falls on this frame.
    seam: the scene jumps here: this frame does not follow the one before it (a looped file starting
        again); no beat may span it, and what comes after is another view.
    truth: simulator ground truth (``ef`` %, ``beat``, ``ed``, ``patient``); empty for real sources.
    """

    pixels: np.ndarray = field(repr=False)
    t: float
    r_wave: bool = False
    seam: bool = False
    truth: Mapping[str, float] = field(default_factory=dict)


class SourceError(RuntimeError):
    """A source cannot be opened or read; the message names the URI/file, the problem and the fix."""


class FrameSource(ABC):
    """A stream of frames: ``open()``, ``read()`` until None, ``close()`` (or use it as a context manager).

    uri: what it was opened from; fps: nominal frames/s; live: True when the device paces itself
    (read blocks until the next frame), False when the caller paces frames at their ``t``.
    demographics: any subset of DEMOGRAPHIC_FIELDS (age_years, sex_male 1/0, weight_kg, height_cm);
    those from the source are known after ``open()``, the config's override them field by field.
    hr_bpm: the heart rate the source states (a DICOM cine's Heart Rate tag), known after ``open()``;
    None when it states none. A prior for the cycle detector's period, not a measurement.
    """

    uri: str
    fps: float
    live: bool

    def __init__(self, uri: str, demographics: Mapping[str, float] | None = None) -> None:
        self.uri = uri
        self._demo_override = check_demographics(demographics or {}, uri)
        self.demographics: dict[str, float] = dict(self._demo_override)
        self.hr_bpm: float | None = None

    def _set_source_demographics(self, found: Mapping[str, float]) -> None:
        """Merge what the source knows with the config's values; the config wins per field."""
        self.demographics = {**found, **self._demo_override}

    @abstractmethod
    def open(self) -> None:
        """Acquire the file/device; raises SourceError naming the problem and the fix."""

    @abstractmethod
    def read(self) -> SourceFrame | None:
        """The next frame, or None at the end of the stream (never None while looping or live)."""

    @abstractmethod
    def close(self) -> None:
        """Release the file/device; safe to call twice."""

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def check_demographics(values: Mapping[str, float], where: str) -> dict[str, float]:
    """Validate a demographics mapping: keys from DEMOGRAPHIC_FIELDS, finite numbers."""
    unknown = sorted(set(values) - set(DEMOGRAPHIC_FIELDS))
    if unknown:
        raise SourceError(f"{where}: unknown demographic field(s) {unknown}; valid are {DEMOGRAPHIC_FIELDS}")
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SourceError(f"{where}: demographic {key}={value!r} must be a finite number")
        out[key] = float(value)
    return out


def check_fps(fps: float, where: str, fix: str) -> float:
    """A frame rate that must lie in (0, MAX_FPS]; ``fix`` says how to supply a good one."""
    if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise SourceError(f"{where}: frame rate {fps} fps is not plausible (0 < fps <= {MAX_FPS:g}); {fix}")
    return float(fps)


class FileSource(FrameSource):
    """A recorded file (video, DICOM cine): played from the start, paced by the caller at its ``t``.

    fps: a rate that overrides the file's own (None: the file's, known after ``open()``);
    loop: start again at the end, with ``t`` counting on.
    """

    live = False

    def __init__(
        self,
        uri: str,
        *,
        fps: float | None = None,
        loop: bool = False,
        demographics: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(uri, demographics)
        self.path = uri_path(uri)
        self.loop = loop
        self._fps_override = fps
        self.fps = 0.0  # known after open()


def uri_path(uri: str) -> Path:
    """The file path of a plain path, ``file://`` or ``dicom://`` URI (``file:///abs``, ``file://rel``)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("file", "dicom"):
        return Path(uri)
    return Path(unquote(parts.netloc + parts.path))
