"""CAMUS (Leclerc et al., IEEE TMI 2019): 500 patients, apical 2- and 4-chamber half cycles.

Layout under ``root`` (or one folder deeper, as in the 2019 release's ``training/``/``testing/``)::

    patient0001/
        Info_4CH.cfg                          "Key: value" lines (below)
        patient0001_4CH_half_sequence.nii.gz  2023 NIfTI release, or
        patient0001_4CH_sequence.mhd + .raw   2019 MetaImage release

``Info_<view>.cfg`` keys: ED and ES (1-based frame numbers), NbFrame, Sex (M/F), Age (years),
ImageQuality (Good/Medium/Poor), EF (%, called LVef in the 2019 release), FrameRate (fps; blank
or absent in some files, then :data:`CAMUS_DEFAULT_FPS`).

A CAMUS sequence runs from ED to ES only: half a beat. The clip is the documented approximation
ED→ES followed by the same frames in reverse back to ED (systole mirrored as diastole), resampled
by :func:`edge_agent.core.clip.make_clip` like every other beat. ``beat_how`` is ``"camus_mirrored"``.

Split: CAMUS ships no split file. The named splits follow the challenge's test set and a fixed
validation block: patients 1–400 TRAIN, 401–450 VAL, 451–500 TEST. A list of patient ids (ints
or ``"patient0042"``) selects any other set, for example one of the paper's 10 folds.

Targets of ``ds[i]``: clip (32, 112, 112) uint8; ef in %; demographics age and sex (weight and
height masked); quality lower-cased. Without reading images: ``efs``, ``quality``, ``fps``, ``infos``.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from edge_agent.core.clip import make_clip
from edge_agent.core.demographics import demographics_vector
from edge_agent.core.sample import QUALITY_LEVELS, ClipSample, DatasetError
from edge_agent.ml.datasets.base import is_blank, parse_ef, parse_number, parse_optional, parse_sex

# CAMUS cfgs without FrameRate give no rate. A half sequence spans systole (about 0.3 s) in 15–20
# frames, which puts the acquisitions near 50 fps. The clip itself does not depend on the rate.
CAMUS_DEFAULT_FPS = 50.0
VIEWS = ("4CH", "2CH")
SPLIT_RANGES = {"TRAIN": range(1, 401), "VAL": range(401, 451), "TEST": range(451, 501)}
PATIENT_RE = re.compile(r"patient(\d+)$")

_MET_TYPES = {
    "MET_UCHAR": "u1",
    "MET_CHAR": "i1",
    "MET_USHORT": "u2",
    "MET_SHORT": "i2",
    "MET_UINT": "u4",
    "MET_INT": "i4",
    "MET_FLOAT": "f4",
    "MET_DOUBLE": "f8",
}


def _parse_key_values(text: str, separator: str, source: str) -> dict[str, str]:
    """Lines ``key <separator> value`` → {key: value}, both stripped; blank lines are skipped."""
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        key, found, value = raw.partition(separator)
        key = key.strip()
        if not found or not key:
            raise DatasetError(f"{source} line {number}: {raw!r} is not a 'Key{separator} value' line")
        if key in out:
            raise DatasetError(f"{source} line {number}: key {key!r} appears twice; keep one")
        out[key] = value.strip()
    return out


def parse_cfg(text: str, source: str = "<cfg>") -> dict[str, str]:
    """A CAMUS ``Info_*.cfg`` text (``Key: value`` lines) → {key: value string}."""
    return _parse_key_values(text, ":", source)


def parse_metaimage_header(text: str, source: str = "<mhd>") -> dict[str, str]:
    """A MetaImage ``.mhd`` header text (``Key = value`` lines) → {key: value string}."""
    return _parse_key_values(text, "=", source)


@dataclass(frozen=True)
class CamusInfo:
    """One ``Info_<view>.cfg``: ed, es 1-based frame numbers; ef %; age years; fps frames/s."""

    ed: int
    es: int
    nb_frames: int | None
    ef: float
    sex_male: float | None
    age: float | None
    quality: str | None
    fps: float


def read_camus_info(path: Path, default_fps: float = CAMUS_DEFAULT_FPS) -> CamusInfo:
    """Read and validate a CAMUS ``Info_<view>.cfg``."""
    if not path.is_file():
        raise DatasetError(f"{path}: not found; every patient folder needs Info_2CH.cfg and Info_4CH.cfg")
    cfg = parse_cfg(path.read_text(encoding="utf-8", errors="replace"), str(path))
    where = str(path)

    def frame_number(key: str) -> int:
        if key not in cfg:
            raise DatasetError(f"{path}: no '{key}:' line; the cfg must give the 1-based {key} frame")
        value = parse_number(cfg[key], where, key)
        if value < 1 or value != int(value):
            raise DatasetError(f"{path}: {key}={cfg[key]!r} must be a 1-based frame number")
        return int(value)

    ef_key = "EF" if "EF" in cfg else "LVef"
    if ef_key not in cfg:
        raise DatasetError(
            f"{path}: no 'EF:' (or 2019 'LVef:') line; patients without EF (the 2019 testing set) "
            "cannot be used for EF regression: leave them out of the split"
        )
    quality = cfg.get("ImageQuality", "")
    if not is_blank(quality) and quality.lower() not in QUALITY_LEVELS:
        raise DatasetError(f"{path}: ImageQuality={quality!r} is not Good, Medium or Poor")
    nb = parse_optional(cfg.get("NbFrame", ""), where, "NbFrame")
    fps = parse_optional(cfg.get("FrameRate", ""), where, "FrameRate")
    if fps is not None and fps <= 0:
        raise DatasetError(f"{path}: FrameRate={fps} must be positive, or blank for the default")
    age = parse_optional(cfg.get("Age", ""), where, "Age")
    if age is not None and age < 0:
        raise DatasetError(f"{path}: Age={age} is negative; fix it or leave it blank")
    return CamusInfo(
        ed=frame_number("ED"),
        es=frame_number("ES"),
        nb_frames=None if nb is None else int(nb),
        ef=parse_ef(cfg[ef_key], where),
        sex_male=parse_sex(cfg.get("Sex", ""), where),
        age=age,
        quality=None if is_blank(quality) else quality.lower(),
        fps=default_fps if fps is None else fps,
    )


def read_metaimage(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a MetaImage ``.mhd`` + its data file.

    Returns (array, spacing): the array's axes are DimSize reversed, so ``DimSize = x y z`` gives
    (z, y, x), which for a CAMUS sequence is (F, H, W); spacing is ElementSpacing in x, y, z order
    (mm, and 1 for the frame axis), all ones when absent.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: not found")
    header = parse_metaimage_header(path.read_text(encoding="latin-1"), str(path))
    for key in ("DimSize", "ElementType", "ElementDataFile"):
        if key not in header:
            raise DatasetError(f"{path}: no '{key} =' line; a MetaImage header needs it")
    try:
        dims = tuple(int(v) for v in header["DimSize"].split())
        spacing = tuple(float(v) for v in header.get("ElementSpacing", " ".join(["1"] * len(dims))).split())
    except ValueError:
        raise DatasetError(f"{path}: DimSize/ElementSpacing must be lists of numbers") from None
    if "NDims" in header and header["NDims"] != str(len(dims)):
        raise DatasetError(f"{path}: NDims={header['NDims']} but DimSize has {len(dims)} values")
    code = _MET_TYPES.get(header["ElementType"])
    if code is None:
        raise DatasetError(f"{path}: ElementType={header['ElementType']!r} is not one of {list(_MET_TYPES)}")
    if header.get("ElementNumberOfChannels", "1") != "1":
        raise DatasetError(f"{path}: only single-channel images are supported (ElementNumberOfChannels=1)")
    data_name = header["ElementDataFile"]
    if data_name.upper() in ("LOCAL", "LIST"):
        raise DatasetError(
            f"{path}: ElementDataFile={data_name!r}: only a separate single data file is supported; "
            "convert the image with SimpleITK (sitk.WriteImage(img, 'x.mhd'))"
        )
    msb_keys = ("BinaryDataByteOrderMSB", "ElementByteOrderMSB")
    msb = any(header.get(k, "False").lower() == "true" for k in msb_keys)
    dtype = np.dtype(code).newbyteorder(">" if msb else "<")
    data_path = path.parent / data_name
    if not data_path.is_file():
        raise DatasetError(f"{data_path}: data file named by {path} not found; copy it next to the header")
    raw = data_path.read_bytes()
    if header.get("CompressedData", "False").lower() == "true":
        raw = zlib.decompress(raw)
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetError(
            f"{data_path}: {len(raw)} bytes, but {path} (DimSize {dims}, {header['ElementType']}) "
            f"needs {expected}; the file is truncated or the header belongs to another image"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(dims[::-1])
    return array.astype(dtype.newbyteorder("="), copy=False), spacing


def _sector_taper(frames: np.ndarray) -> float:
    """Occupied width of the top quarter of rows over the bottom quarter's, for (F, H, W) frames.

    An apical sector grows from its apex, so this is well below 1 when the apex is at the top
    and near 1 when the image lies on its side (apex left or right).
    """
    mean = frames.mean(axis=0)
    occupied = mean > mean.min() + 0.05 * (mean.max() - mean.min())
    q = max(1, occupied.shape[0] // 4)
    top = occupied[:q].sum(axis=1).mean()
    bottom = occupied[-q:].sum(axis=1).mean()
    return float(top / max(bottom, 1.0))


def read_nifti_sequence(path: Path) -> np.ndarray:
    """A CAMUS ``*_half_sequence.nii.gz`` → (F, H, W) with the sector apex at the top.

    NIfTI stores the first axis fastest, so nibabel returns the converter's (x, y, t) index
    order: (W, H, F). Transposing to (F, H, W) puts row 0, the transducer (apex) side, at the
    top, as SimpleITK's (t, y, x) reading of the same file does. No reorientation from the affine
    is applied: CAMUS affines carry only spacing, and flipping by them would turn the sector over.
    Copies re-saved as (H, W, F) exist, so the sector's shape decides between the two.
    """
    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as err:  # nibabel raises several types for corrupt files
        raise DatasetError(f"{path}: cannot be read as NIfTI ({err}); re-download it") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DatasetError(f"{path}: expected a 3-D (x, y, frame) image, got shape {data.shape}")
    frames = data.transpose(2, 1, 0)
    swapped = data.transpose(2, 0, 1)
    # Only swap on clear evidence: a rectangular image without a sector keeps the standard order.
    if _sector_taper(swapped) < 0.7 * _sector_taper(frames):
        frames = swapped
    return np.ascontiguousarray(frames)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Intensities → uint8: integer values already in 0–255 are kept, anything else is stretched
    linearly from its min–max to 0–255 (a constant image becomes 0)."""
    if array.dtype == np.uint8:
        return array
    values = array.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0 and hi <= 255 and np.array_equal(values, np.round(values)):
        return values.astype(np.uint8)
    if hi <= lo:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read_camus_sequence(path: Path) -> np.ndarray:
    """A CAMUS sequence file (``.nii``, ``.nii.gz`` or ``.mhd``) → (F, H, W) uint8, apex at the top."""
    if path.name.endswith(".mhd"):
        frames, _spacing = read_metaimage(path)
        if frames.ndim != 3:
            raise DatasetError(f"{path}: expected a 3-D sequence (DimSize x y frames), got {frames.shape}")
    else:
        frames = read_nifti_sequence(path)
    return to_uint8(frames)


def mirrored_half_cycle(frames: np.ndarray, ed: int, es: int) -> np.ndarray:
    """ED→ES frames then back to ED: (2n - 1, H, W) for n = es - ed + 1, from (F, H, W).

    ed, es: 1-based frame numbers as in the cfg. The last frame is ED again, the next beat's ED:
    the beat is [0, 2n - 2) and that frame only anchors the interpolation of its final samples.
    """
    systole = frames[ed - 1 : es]
    return np.concatenate([systole, systole[-2::-1]])


def camus_split(patient_number: int) -> str:
    """The named split of a patient number (module docstring): TRAIN, VAL or TEST."""
    for name, numbers in SPLIT_RANGES.items():
        if patient_number in numbers:
            return name
    raise DatasetError(
        f"patient{patient_number:04d}: outside CAMUS's 1–500, so it has no named split; "
        "select it with an explicit list of patient ids"
    )


def _patient_number(patient: int | str) -> int:
    match = re.fullmatch(r"(?:patient)?(\d+)", str(patient).strip())
    if match is None:
        raise DatasetError(f"patient id {patient!r} is neither a number nor 'patientNNNN'")
    return int(match.group(1))


class Camus:
    """One CAMUS view as a :class:`~edge_agent.ml.datasets.base.ClipDataset` (see the module docstring).

    root: the folder holding the ``patientNNNN/`` folders, or their parent.
    view: ``"4CH"`` or ``"2CH"``.
    split: ``"TRAIN"``, ``"VAL"``, ``"TEST"``, ``"ALL"`` or a list of patient ids.
    default_fps: frames per second assumed where a cfg gives no FrameRate.
    """

    def __init__(
        self,
        root: str | Path,
        view: str = "4CH",
        split: str | Sequence[int | str] = "ALL",
        default_fps: float = CAMUS_DEFAULT_FPS,
    ) -> None:
        self.root = Path(root)
        self.view = view.upper()
        if self.view not in VIEWS:
            raise DatasetError(f"{self.root}: view {view!r} is not one of {list(VIEWS)}")
        folders = self._patient_folders()
        if isinstance(split, str):
            key = split.strip().upper()
            if key != "ALL" and key not in SPLIT_RANGES:
                raise DatasetError(
                    f"{self.root}: split {split!r} is not one of {[*SPLIT_RANGES, 'ALL']} "
                    "or a list of patient ids"
                )
            chosen = [n for n in folders if key == "ALL" or camus_split(n) == key]
        else:
            chosen = sorted({_patient_number(p) for p in split})
            missing = [n for n in chosen if n not in folders]
            if missing:
                raise DatasetError(
                    f"{self.root}: no folder for patients {[f'patient{n:04d}' for n in missing]}; "
                    "check the ids or the root"
                )
        self.infos: list[CamusInfo] = []
        self.names: list[str] = []
        self.folders: list[Path] = []
        for n in chosen:
            folder = folders[n]
            self.infos.append(read_camus_info(folder / f"Info_{self.view}.cfg", default_fps))
            self.names.append(f"{folder.name}_{self.view}")
            self.folders.append(folder)
        self.efs = np.asarray([info.ef for info in self.infos], dtype=np.float64)
        self.fps = np.asarray([info.fps for info in self.infos], dtype=np.float64)
        self.quality: list[str | None] = [info.quality for info in self.infos]

    def _patient_folders(self) -> dict[int, Path]:
        found: dict[int, Path] = {}
        for pattern in ("patient*", "*/patient*"):
            for folder in sorted(self.root.glob(pattern)):
                match = PATIENT_RE.fullmatch(folder.name)
                if match and folder.is_dir():
                    found.setdefault(int(match.group(1)), folder)
            if found:
                break
        if not found:
            raise DatasetError(
                f"{self.root}: no patientNNNN/ folders here or one level down; point root at the CAMUS "
                "folder that holds them (database_nifti/ in the 2023 release, training/ in 2019)"
            )
        return dict(sorted(found.items()))

    def sequence_path(self, i: int) -> Path:
        """Path of sample ``i``'s sequence: the NIfTI half sequence, else the 2019 MetaImage one."""
        folder = self.folders[i]
        stem = f"{folder.name}_{self.view}"
        candidates = [
            folder / f"{stem}_half_sequence.nii.gz",
            folder / f"{stem}_half_sequence.nii",
            folder / f"{stem}_sequence.mhd",
        ]
        for path in candidates:
            if path.is_file():
                return path
        raise DatasetError(f"{folder}: no sequence file; expected one of {[p.name for p in candidates]}")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> ClipSample:
        info = self.infos[i]
        path = self.sequence_path(i)
        frames = read_camus_sequence(path)
        n = len(frames)
        if info.nb_frames is not None and info.nb_frames != n:
            raise DatasetError(
                f"{path}: {n} frames but Info_{self.view}.cfg says NbFrame={info.nb_frames}; "
                "the sequence and the cfg do not belong together"
            )
        if not info.ed < info.es <= n:
            raise DatasetError(
                f"{self.folders[i] / f'Info_{self.view}.cfg'}: ED={info.ed}, ES={info.es} must satisfy "
                f"ED < ES <= {n} (the frame count of {path.name})"
            )
        beat = mirrored_half_cycle(frames, info.ed, info.es)
        clip = make_clip(beat, 0, len(beat) - 1)
        demographics, mask = demographics_vector(age_years=info.age, sex_male=info.sex_male)
        return ClipSample(clip, info.ef, demographics, mask, info.quality, self.names[i], "camus_mirrored")
