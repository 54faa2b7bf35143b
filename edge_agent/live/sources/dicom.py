"""DICOM multi-frame cines (ultrasound multi-frame storage) through pydicom ≥ 3.

Frames are decoded one at a time from the open file (``pydicom.pixels.pixel_array(f, index=k)``),
so a 1000-frame cine is never held in memory; colour (RGB, YBR_*) comes out as RGB.

Frame timing, first found wins: the ``fps`` argument (an override); Frame Time (0018,1063) ms;
Frame Time Vector (0018,1065) ms increments; Cine Rate (0018,0040); Recommended Display Frame
Rate (0008,2144). R Wave Pointer (0028,6040) lists 1-based frame numbers (PS3.3 C.7.6.18.1).
Heart Rate (0018,1088), bpm, becomes the source's ``hr_bpm`` when it lies within the detector's
plausible range (35–200 bpm); 0, absent or out of range (scanners write 0 for "not recorded"): None.

A file that cannot be played is refused with a SourceError naming the file, the tag and the fix:
at ``open()`` a damaged header, a missing or unreadable image tag, a Photometric Interpretation
other than MONOCHROME1/2, RGB or YBR (e.g. PALETTE COLOR), Bits Allocated other than 8 or 16,
Bits Stored beyond Bits Allocated, no Pixel Data, and uncompressed Pixel Data shorter than the
header says (a cut-off copy); at ``read()`` a compressed frame that does not decode (the frames
before it have been delivered).
"""

from __future__ import annotations

import math
import os
import re
import struct
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.datadict import dictionary_description, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array

from edge_agent.core.clip import HR_MAX_BPM, HR_MIN_BPM
from edge_agent.live.sources.base import FileSource, SourceError, SourceFrame, check_fps

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
SUPPORTED_BITS_ALLOCATED = (8, 16)
PIXEL_DATA = "Pixel Data (7FE0,0010)"
_REEXPORT = "re-export the cine from the scanner or PACS (8- or 16-bit grayscale, RGB or YBR)"


def tag_name(keyword: str) -> str:
    """``"Rows"`` → ``"Rows (0028,0010)"``: how errors name a tag."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return keyword
    return f"{dictionary_description(tag)} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _element(ds: Dataset, keyword: str, where: str) -> Any:
    """An element's value, None when absent; pydicom converts values lazily, so a malformed one
    raises here — as a SourceError naming the tag."""
    try:
        return ds.get(keyword)
    except Exception as e:  # pydicom raises ValueError, TypeError, ... on a malformed value
        raise SourceError(
            f"{where}: {tag_name(keyword)} cannot be read ({e}); fix or remove the tag"
        ) from None


def _number(ds: Dataset, keyword: str, where: str) -> tuple[object, float | None] | None:
    """A numeric element as (its raw value, its float or None when it is not a number); None when
    the element is absent or empty."""
    value = _element(ds, keyword, where)
    if value is None or value == "":
        return None
    try:
        return value, float(value)
    except (TypeError, ValueError, OverflowError):
        return value, None


def _integer(ds: Dataset, keyword: str, where: str, lo: int, hi: int, fix: str) -> int | None:
    """An integer element in [lo, hi]; None when absent or empty; else a SourceError naming the tag."""
    if (found := _number(ds, keyword, where)) is None:
        return None
    value, number = found
    if number is None or not (math.isfinite(number) and number.is_integer() and lo <= number <= hi):
        raise SourceError(f"{where}: {tag_name(keyword)} is {value!r}, not an integer in [{lo}, {hi}]; {fix}")
    return int(number)


def _required_integer(ds: Dataset, keyword: str, where: str, lo: int, hi: int) -> int:
    value = _integer(ds, keyword, where, lo, hi, _REEXPORT)
    if value is None:
        raise SourceError(f"{where}: {tag_name(keyword)} is missing; {_REEXPORT}")
    return value


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


def _positive(ds: Dataset, keyword: str, where: str = "DICOM") -> float | None:
    """A numeric element's value when present, non-empty and > 0 (a non-number: SourceError)."""
    if (found := _number(ds, keyword, where)) is None:
        return None
    value, number = found
    if number is None:
        raise SourceError(f"{where}: {tag_name(keyword)} is {value!r}, not a number; fix or remove the tag")
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
        weight = _positive(ds, "PatientWeight", where)
        if weight is not None:
            if weight > 400:
                raise SourceError(f"{where}: PatientWeight={weight:g} kg is implausible; {fix}")
            out["weight_kg"] = weight
    if "height_cm" not in skip:
        size = _positive(ds, "PatientSize", where)
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
    frame_time = _positive(ds, "FrameTime", where)
    if frame_time is not None:
        fps = check_fps(
            1000.0 / frame_time, where, "Frame Time (0018,1063) is wrong: set fps for this source"
        )
        return np.arange(n_frames) / fps, fps
    vector = _element(ds, "FrameTimeVector", where)
    if vector is not None and vector != "":
        try:
            increments = np.atleast_1d(np.asarray(vector, dtype=np.float64))
        except (TypeError, ValueError):
            increments = np.array([math.nan])
        if len(increments) != n_frames or not np.all(np.isfinite(increments)) or np.any(increments[1:] <= 0):
            raise SourceError(
                f"{where}: Frame Time Vector (0018,1065) has {len(increments)} entries (need {n_frames}, "
                "positive after the first); fix the file or set fps for this source"
            )
        times = np.cumsum(increments) / 1000.0
        times -= times[0]  # the first increment is 0 by definition; tolerate writers that disagree
        fps = check_fps((n_frames - 1) / times[-1], where, "set fps for this source")
        return times, fps
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _positive(ds, keyword, where)
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
        if self.path.stat().st_size == 0:
            raise SourceError(f"{where}: the file is empty (0 bytes); copy or export the cine again")
        self._file = self.path.open("rb")
        try:
            try:
                ds = pydicom.dcmread(self._file, stop_before_pixels=True)
            except InvalidDicomError as e:
                raise SourceError(f"{where}: not a DICOM file ({e}); export the cine as DICOM") from None
            except Exception as e:  # a damaged header trips pydicom in many ways (struct, EOF, value errors)
                raise SourceError(
                    f"{where}: the DICOM header cannot be read ({type(e).__name__}: {e}); the file is "
                    "damaged or cut off: copy or export it again"
                ) from None
            n = self._check_cine(ds, where)
            self._check_pixel_data(self._file, ds, where, n)
            self._times, self.fps = frame_times(ds, n, self._fps_override, where)
            self._r_waves = self._r_wave_frames(ds, n, where)
            hr = _positive(ds, "HeartRate", where)
            self.hr_bpm = hr if hr is not None and HR_MIN_BPM <= hr <= HR_MAX_BPM else None
            self._set_source_demographics(dicom_demographics(ds, where, frozenset(self._demo_override)))
        except SourceError:
            self.close()
            raise
        self._n = n
        self._photometric = str(ds.PhotometricInterpretation).upper()
        self._bits = int(ds.BitsStored)
        self._signed = _integer(ds, "PixelRepresentation", where, 0, 1, _REEXPORT) == 1
        # A looped pass lasts the last frame's time plus one mean frame interval.
        self._period = float(self._times[-1]) + (float(self._times[-1]) / (n - 1))
        self._k = 0

    @staticmethod
    def _check_cine(ds: Dataset, where: str) -> int:
        """The image module's tags, checked before any pixel is read; returns Number of Frames."""
        # The header is read without the pixels, so the image module's Rows tell an image apart.
        if "Rows" not in ds:
            raise SourceError(f"{where}: the file holds no image; the monitor needs a multi-frame cine")
        frames = _integer(ds, "NumberOfFrames", where, 0, 2**31 - 1, _REEXPORT)
        if frames is None or frames < 2:
            raise SourceError(
                f"{where}: a single-frame image (Number of Frames {frames or 'absent'}); the monitor "
                "needs a multi-frame cine (an echo loop): export the clip, not a still"
            )
        photometric = str(_element(ds, "PhotometricInterpretation", where) or "").strip().upper()
        if photometric not in SUPPORTED_PHOTOMETRIC:
            raise SourceError(
                f"{where}: {tag_name('PhotometricInterpretation')} {photometric!r} is not supported "
                f"({', '.join(SUPPORTED_PHOTOMETRIC)} are); re-export the cine as RGB or grayscale"
            )
        for keyword in ("Rows", "Columns"):
            _required_integer(ds, keyword, where, 1, 65535)
        samples = _required_integer(ds, "SamplesPerPixel", where, 1, 4)
        want = 1 if photometric.startswith("MONOCHROME") else 3
        if samples != want:
            raise SourceError(
                f"{where}: {tag_name('SamplesPerPixel')} is {samples}, but {photometric} images have "
                f"{want}; the header is inconsistent: {_REEXPORT}"
            )
        if samples == 3:
            _required_integer(ds, "PlanarConfiguration", where, 0, 1)
        allocated = _required_integer(ds, "BitsAllocated", where, 1, 64)
        if allocated not in SUPPORTED_BITS_ALLOCATED:
            supported = " or ".join(map(str, SUPPORTED_BITS_ALLOCATED))
            raise SourceError(
                f"{where}: {tag_name('BitsAllocated')} is {allocated}; only {supported} bits per sample "
                f"are supported: {_REEXPORT}"
            )
        _required_integer(ds, "BitsStored", where, 1, allocated)
        _integer(ds, "PixelRepresentation", where, 0, 1, _REEXPORT)
        return frames

    @staticmethod
    def _check_pixel_data(f: BinaryIO, ds: Dataset, where: str, n_frames: int) -> None:
        """Pixel Data is there and, uncompressed, as long as the header says: a cut-off copy is
        refused now, not a few hundred frames into the stream. Compressed (encapsulated) frames are
        checked as they are decoded. Reads only the element's header; leaves ``f`` where it was."""
        start = f.tell()  # stop_before_pixels stopped at the first pixel element, if there is one
        head = f.read(12)
        f.seek(start)
        syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
        try:
            little = syntax is None or syntax.is_little_endian
            implicit = syntax is not None and syntax.is_implicit_VR
        except ValueError:  # a UID that names no transfer syntax (pydicom cannot tell the encoding)
            raise SourceError(
                f"{where}: Transfer Syntax UID (0002,0010) {str(syntax)!r} is not a transfer syntax; the "
                "file is damaged: copy or export the cine again"
            ) from None
        if len(head) < 8:
            raise SourceError(
                f"{where}: no {PIXEL_DATA}: the file ends after the header (an image without pixels, "
                "or a cut-off copy); copy or export the cine again"
            )
        group, element = struct.unpack("<HH" if little else ">HH", head[:4])
        if (group, element) != (0x7FE0, 0x0010):
            raise SourceError(
                f"{where}: no {PIXEL_DATA} (the image's pixels are in ({group:04X},{element:04X}): float "
                f"or other pixel data is not supported); {_REEXPORT}"
            )
        length_at = 4 if implicit or head[4:6] not in (b"OB", b"OW", b"UN") else 8
        # Implicit VR and OB/OW/UN: a 4-byte length (after 2 reserved bytes for OB/OW/UN);
        # a writer's other VR: a 2-byte one.
        if implicit or length_at == 8:
            (length,) = struct.unpack("<I" if little else ">I", head[length_at : length_at + 4])
            value_at = start + length_at + 4
        else:
            (length,) = struct.unpack("<H" if little else ">H", head[6:8])
            value_at = start + 8
        if length == 0xFFFFFFFF:  # encapsulated (compressed): each frame is checked when decoded
            return
        size = os.fstat(f.fileno()).st_size
        if value_at + length > size:
            raise SourceError(
                f"{where}: {PIXEL_DATA} is cut off: it declares {length} bytes, the file holds "
                f"{max(0, size - value_at)} of them; copy or export the cine again"
            )
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples, nbytes = int(ds.SamplesPerPixel), int(ds.BitsAllocated) // 8
        need = rows * cols * samples * nbytes * n_frames
        if length < need:
            raise SourceError(
                f"{where}: {PIXEL_DATA} holds {length} bytes, but Rows × Columns × Samples per Pixel × "
                f"Bits Allocated / 8 × Number of Frames = {rows} × {cols} × {samples} × {nbytes} × "
                f"{n_frames} needs {need}: the header does not match the pixels; {_REEXPORT}"
            )

    @staticmethod
    def _r_wave_frames(ds: Dataset, n: int, where: str) -> frozenset[int]:
        """0-based indices of the frames R Wave Pointer marks (the tag holds 1-based frame numbers)."""
        value = ds.get("RWavePointer")
        if value is None or value == "":
            return frozenset()
        try:
            numbers = [int(v) for v in np.atleast_1d(np.asarray(value))]
        except (TypeError, ValueError, OverflowError):
            numbers = [0]
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
        try:
            pixels = pixel_array(self._file, index=i)
        except Exception as e:  # pydicom and its decoders raise many types on damaged data
            reason = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
            raise SourceError(
                f"{self.path}: frame {i + 1} of {self._n} cannot be decoded from {PIXEL_DATA} "
                f"({reason}); the file is damaged or cut off: copy or export the cine again"
            ) from None
        if pixels.dtype != np.uint8:  # > 8-bit: keep the top 8 stored bits (negative values: black)
            if self._signed:
                pixels = np.clip(pixels, 0, None)
            pixels = (pixels.astype(np.uint32) >> max(0, self._bits - 8)).clip(0, 255).astype(np.uint8)
        if self._photometric == "MONOCHROME1":  # 0 is white there
            pixels = 255 - pixels
        self._k += 1
        return SourceFrame(
            pixels=pixels,
            t=lap * self._period + float(self._times[i]),
            r_wave=i in self._r_waves,
            seam=lap > 0 and i == 0,
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
