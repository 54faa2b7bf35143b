"""DICOM multi-frame cines (ultrasound multi-frame storage) through pydicom ≥ 3.

Frames are decoded one at a time from the open file (``pydicom.pixels.pixel_array(f, index=k)``),
so a 1000-frame cine is never held in memory; colour (RGB, YBR_*) comes out as RGB.

Frame timing, first found wins: the ``fps`` argument (an override); Frame Time (0018,1063) ms;
Frame Time Vector (0018,1065) ms increments; Cine Rate (0018,0040); Recommended Display Frame
Rate (0008,2144). R Wave Pointer (0028,6040) lists 1-based frame numbers (PS3.3 C.7.6.18.1).
"""

from __future__ import annotations

import math
import re
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array

from edge_agent.sources.base import FileSource, SourceError, SourceFrame, check_fps

# PatientAge (AS value representation): nnnD, nnnW, nnnM or nnnY → years.
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
_AGE_RE = re.compile(r"(\d{1,3})([DWMY])")
TIMING_TAGS = (
    "Frame Time (0018,1063)",
    "Frame Time Vector (0018,1065)",
    "Cine Rate (0018,0040)",
    "Recommended Display Frame Rate (0008,2144)",
)
SUPPORTED_PHOTOMETRIC = (
    "MONOCHROME1",
    "MONOCHROME2",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_ICT",
    "YBR_RCT",
)


def parse_patient_age(value: str) -> float | None:
    """DICOM PatientAge (``'045Y'``, ``'003M'``, ``'010W'``, ``'021D'``) → years; None when empty or 0.

    Raises ValueError for anything else (the AS format is 3 digits and a unit; 1–2 digits tolerated).
    """
    text = value.strip().upper()
    if not text:
        return None
    match = _AGE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"PatientAge {value!r} is not in the DICOM form nnnD/nnnW/nnnM/nnnY (e.g. '045Y')")
    years = int(match[1]) * _AGE_UNIT_YEARS[match[2]]
    return years or None


def _positive(ds: Dataset, keyword: str) -> float | None:
    """A numeric element's value when present, non-empty and > 0."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    number = float(value)
    return number if math.isfinite(number) and number > 0 else None


def dicom_demographics(ds: Dataset, where: str, skip: frozenset[str] = frozenset()) -> dict[str, float]:
    """PatientAge/Sex/Weight/Size → {age_years, sex_male, weight_kg, height_cm} (absent/empty/0 omitted).

    Fields in ``skip`` (given by the config, which wins) are not read, so a malformed tag there
    does not stop the source. Raises SourceError for a malformed or implausible tag.
    """
    out: dict[str, float] = {}
    fix = "fix the tag, or set the field in the stream's demographics config (it overrides the file)"
    if "age_years" not in skip:
        try:
            age = parse_patient_age(str(ds.get("PatientAge", "") or ""))
        except ValueError as e:
            raise SourceError(f"{where}: {e}; {fix}") from None
        if age is not None:
            out["age_years"] = age
    if "sex_male" not in skip:
        sex = str(ds.get("PatientSex", "") or "").strip().upper()
        if sex in ("M", "F"):  # 'O' (other) and empty say nothing the model can use
            out["sex_male"] = float(sex == "M")
    if "weight_kg" not in skip:
        weight = _positive(ds, "PatientWeight")
        if weight is not None:
            if weight > 400:
                raise SourceError(f"{where}: PatientWeight={weight:g} kg is implausible; {fix}")
            out["weight_kg"] = weight
    if "height_cm" not in skip:
        size = _positive(ds, "PatientSize")
        if size is not None:
            # DICOM stores metres; a value like 170 is a writer that used cm.
            if size > 3.0:
                raise SourceError(f"{where}: PatientSize={size:g} is not in metres (the DICOM unit); {fix}")
            out["height_cm"] = 100.0 * size
    return out


def frame_times(ds: Dataset, n_frames: int, fps: float | None, where: str) -> tuple[np.ndarray, float]:
    """Times (n_frames,) in s of each frame from the first, and the nominal fps (see the module docstring)."""
    if fps is not None:
        fps = check_fps(fps, where, "fix the fps setting")
        return np.arange(n_frames) / fps, fps
    frame_time = _positive(ds, "FrameTime")
    if frame_time is not None:
        fps = check_fps(
            1000.0 / frame_time, where, "Frame Time (0018,1063) is wrong: set fps for this source"
        )
        return np.arange(n_frames) / fps, fps
    vector = ds.get("FrameTimeVector")
    if vector is not None and vector != "":
        increments = np.atleast_1d(np.asarray(vector, dtype=np.float64))
        if len(increments) != n_frames or np.any(increments[1:] <= 0):
            raise SourceError(
                f"{where}: Frame Time Vector (0018,1065) has {len(increments)} entries (need {n_frames}, "
                "positive after the first); fix the file or set fps for this source"
            )
        times = np.cumsum(increments) / 1000.0
        times -= times[0]  # the first increment is 0 by definition; tolerate writers that disagree
        fps = check_fps((n_frames - 1) / times[-1], where, "set fps for this source")
        return times, fps
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _positive(ds, keyword)
        if rate is not None:
            fps = check_fps(rate, where, f"{keyword} is wrong: set fps for this source")
            return np.arange(n_frames) / fps, fps
    raise SourceError(
        f"{where}: no frame timing: none of {', '.join(TIMING_TAGS)} is present; "
        "set fps for this source (the `fps` argument / stream config)"
    )


class DicomSource(FileSource):
    """Frames of a DICOM multi-frame cine: (H, W) uint8 grayscale or (H, W, 3) uint8 RGB.

    t: from the frame timing tags (or k / fps when ``fps`` is given), continuing across restarts
    when ``loop`` is set; r_wave: from R Wave Pointer; demographics from the Patient module.
    """

    def __init__(self, uri: str, **kwargs: Any) -> None:
        super().__init__(uri, **kwargs)
        self._file: BinaryIO | None = None

    def open(self) -> None:
        where = str(self.path)
        if not self.path.is_file():
            raise SourceError(f"{where}: DICOM file not found; check the source path")
        self._file = self.path.open("rb")
        try:
            ds = pydicom.dcmread(self._file, stop_before_pixels=True)
        except InvalidDicomError as e:
            self.close()
            raise SourceError(f"{where}: not a DICOM file ({e}); export the cine as DICOM") from None
        try:
            self._check_cine(ds, where)
            n = int(ds.NumberOfFrames)
            self._times, self.fps = frame_times(ds, n, self._fps_override, where)
            self._r_waves = self._r_wave_frames(ds, n, where)
            self._set_source_demographics(dicom_demographics(ds, where, frozenset(self._demo_override)))
        except SourceError:
            self.close()
            raise
        self._n = n
        self._photometric = str(ds.PhotometricInterpretation).upper()
        self._bits = int(ds.BitsStored)
        # A looped pass lasts the last frame's time plus one mean frame interval.
        self._period = float(self._times[-1]) + (float(self._times[-1]) / (n - 1))
        self._k = 0

    @staticmethod
    def _check_cine(ds: Dataset, where: str) -> None:
        # The header is read without the pixels, so the image module's Rows tell an image apart.
        if "Rows" not in ds:
            raise SourceError(f"{where}: the file holds no image; the monitor needs a multi-frame cine")
        frames = ds.get("NumberOfFrames")
        if frames is None or frames == "" or int(frames) < 2:
            raise SourceError(
                f"{where}: a single-frame image (Number of Frames {frames or 'absent'}); the monitor "
                "needs a multi-frame cine (an echo loop): export the clip, not a still"
            )
        photometric = str(ds.get("PhotometricInterpretation", "")).upper()
        if photometric not in SUPPORTED_PHOTOMETRIC:
            raise SourceError(
                f"{where}: Photometric Interpretation {photometric!r} is not supported "
                f"({', '.join(SUPPORTED_PHOTOMETRIC)} are); re-export the cine as RGB or grayscale"
            )

    @staticmethod
    def _r_wave_frames(ds: Dataset, n: int, where: str) -> frozenset[int]:
        """0-based indices of the frames R Wave Pointer marks (the tag holds 1-based frame numbers)."""
        value = ds.get("RWavePointer")
        if value is None or value == "":
            return frozenset()
        numbers = [int(v) for v in np.atleast_1d(np.asarray(value))]
        bad = [v for v in numbers if not 1 <= v <= n]
        if bad:
            raise SourceError(
                f"{where}: R Wave Pointer (0028,6040) lists frame(s) {bad} outside 1..{n} (numbers are "
                "1-based); fix or remove the tag"
            )
        return frozenset(v - 1 for v in numbers)

    def read(self) -> SourceFrame | None:
        if self._file is None:
            raise SourceError(f"{self.uri}: read() before open(); use `with open_source(uri) as src:`")
        lap, i = divmod(self._k, self._n)
        if lap > 0 and not self.loop:
            return None
        pixels = pixel_array(self._file, index=i)
        if pixels.dtype != np.uint8:  # > 8-bit grayscale: keep the top 8 stored bits
            pixels = (pixels.astype(np.uint32) >> max(0, self._bits - 8)).clip(0, 255).astype(np.uint8)
        if self._photometric == "MONOCHROME1":  # 0 is white there
            pixels = 255 - pixels
        self._k += 1
        return SourceFrame(
            pixels=pixels, t=lap * self._period + float(self._times[i]), r_wave=i in self._r_waves
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
