"""Writers of tiny datasets in the exact published layouts of EchoNet-Dynamic, EchoNet-Pediatric and
CAMUS, for tests (the simulator's tests reuse the EchoNet writers).

The EchoNet "LV" is a dark ellipse on a bright textured background whose size follows
``0.8 + 0.2 cos(2π (t - ed_frame) / period)``: largest (ED) at ``ed_frame + k·period``, smallest
(ES) half a period later, so ED, ES and the period are known exactly. The CAMUS fixture is an
apical sector (apex top-centre) whose dark LV shrinks from ED to ES. :func:`dicom_cine` builds an
ultrasound multi-frame DICOM (the tests that play, break or lie about one share it).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

from edge_agent.model import posterior
from edge_agent.protocol import wire

ECHONET_SIZE = 112
BACKGROUND = 150
LV_GRAY = 15
# Pixels darker than this are LV blood in the fixtures (background 150, LV 15).
DARK_THRESHOLD = 80


@dataclass(frozen=True)
class EchoVideo:
    """One fixture video and its FileList row.

    fps: the rate written to FileList.csv; header_fps: the (deliberately different) rate in the
    AVI header. period and ed_frame in frames; traced: write ED and ES tracings for it.
    """

    name: str
    ef: float = 55.0
    split: str = "TRAIN"
    fps: float = 50.0
    header_fps: float = 30.0
    n_frames: int = 120
    period: float = 60.0
    ed_frame: int = 10
    traced: bool = True

    @property
    def es_frame(self) -> int:
        return round(self.ed_frame + self.period / 2)


@dataclass(frozen=True)
class PediatricVideo(EchoVideo):
    """An EchoNet-Pediatric row: demographics as the CSV cells (blank = missing), fold 0–9."""

    sex: str = "F"
    age: str = "8"
    weight: str = "25.5"
    height: str = "125"
    fold: int = 0


def lv_ellipse(video: EchoVideo, t: float) -> tuple[float, float, float, float]:
    """(cx, cy, rx, ry) in pixels of the fixture LV at frame ``t``; the long axis is vertical."""
    phase = 2 * np.pi * (t - video.ed_frame) / video.period
    scale = 0.8 + 0.2 * np.cos(phase)
    return 56.0 + 3.0 * np.sin(phase), 58.0, 16.0 * scale, 32.0 * scale


def _texture(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    # Static speckle-like texture so frames are not flat (JPEG and the period search see real content).
    noise = np.random.default_rng(seed).normal(0.0, 12.0, shape).astype(np.float32)
    return cv2.GaussianBlur(noise, (0, 0), 1.5)


def render_echonet_frames(video: EchoVideo) -> np.ndarray:
    """The fixture video's frames: (n_frames, 112, 112) uint8."""
    texture = _texture((ECHONET_SIZE, ECHONET_SIZE))
    frames = np.empty((video.n_frames, ECHONET_SIZE, ECHONET_SIZE), dtype=np.uint8)
    for t in range(video.n_frames):
        img = np.full((ECHONET_SIZE, ECHONET_SIZE), float(BACKGROUND), np.float32) + texture
        cx, cy, rx, ry = lv_ellipse(video, t)
        mask = np.zeros((ECHONET_SIZE, ECHONET_SIZE), np.uint8)
        cv2.ellipse(mask, ((cx, cy), (2 * rx, 2 * ry), 0.0), 255, -1, cv2.LINE_AA)
        alpha = mask.astype(np.float32) / 255.0
        img = img * (1 - alpha) + LV_GRAY * alpha
        frames[t] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return frames


def write_avi(path: Path, frames: np.ndarray, fps: float) -> None:
    """(F, H, W) uint8 → an MJPG AVI with three identical channels and ``fps`` in its header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h), True)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG AVI to {path}")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()


def ellipse_chords(cx: float, cy: float, rx: float, ry: float, n_chords: int = 20) -> np.ndarray:
    """EchoNet-Dynamic tracing rows (1 + n_chords, 4) of X1, Y1, X2, Y2: the vertical long axis,
    then horizontal chords from the left wall to the right wall, top to bottom."""
    rows = [(cx, cy - ry, cx, cy + ry)]
    for y in np.linspace(cy - ry, cy + ry, n_chords + 2)[1:-1]:
        half = rx * np.sqrt(max(0.0, 1.0 - ((y - cy) / ry) ** 2))
        rows.append((cx - half, y, cx + half, y))
    return np.asarray(rows)


def ellipse_outline(cx: float, cy: float, rx: float, ry: float, n_points: int = 40) -> np.ndarray:
    """EchoNet-Pediatric tracing points (n_points, 2) of X, Y around the ellipse, in order."""
    a = np.linspace(0, 2 * np.pi, n_points, endpoint=False)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows(rows)


def _file_name(video: EchoVideo, with_avi: bool) -> str:
    return video.name + ".avi" if with_avi else video.name


def write_echonet_videos(root: Path, videos: Sequence[EchoVideo]) -> None:
    """Write ``root/Videos/<name>.avi`` for each video, with its header fps."""
    for video in videos:
        write_avi(root / "Videos" / f"{video.name}.avi", render_echonet_frames(video), video.header_fps)


def write_echonet_dynamic(
    root: Path,
    videos: Sequence[EchoVideo],
    *,
    filelist_with_avi: bool = True,
    write_videos: bool = True,
) -> Path:
    """An EchoNet-Dynamic folder: FileList.csv, VolumeTracings.csv (chord form) and Videos/.

    FileList names carry ``.avi`` when ``filelist_with_avi``; VolumeTracings always do, as in the
    released CSV. Traced videos get ES rows first, then ED, so loaders must rank by area.
    """
    header = ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"]
    rows = [
        [
            _file_name(v, filelist_with_avi),
            v.ef,
            40.0,
            90.0,
            ECHONET_SIZE,
            ECHONET_SIZE,
            v.fps,
            v.n_frames,
            v.split,
        ]
        for v in videos
    ]
    _write_csv(root / "FileList.csv", header, rows)
    tracing_rows = []
    for video in videos:
        if not video.traced:
            continue
        for frame in (video.es_frame, video.ed_frame):
            for x1, y1, x2, y2 in ellipse_chords(*lv_ellipse(video, frame)):
                tracing_rows.append([f"{video.name}.avi", x1, y1, x2, y2, frame])
    _write_csv(root / "VolumeTracings.csv", ["FileName", "X1", "Y1", "X2", "Y2", "Frame"], tracing_rows)
    if write_videos:
        write_echonet_videos(root, videos)
    return root


def write_echonet_pediatric(
    root_view_dir: Path, videos: Sequence[PediatricVideo], *, tracing_form: str = "points"
) -> Path:
    """An EchoNet-Pediatric view folder: FileList.csv, VolumeTracings.csv and Videos/.

    tracing_form: ``"points"`` (the released ``FileName,X,Y,Frame``) or ``"chords"``.
    """
    header = ["FileName", "EF", "Sex", "Age", "Weight", "Height", "Split"]
    rows = [[f"{v.name}.avi", v.ef, v.sex, v.age, v.weight, v.height, v.fold] for v in videos]
    _write_csv(root_view_dir / "FileList.csv", header, rows)
    tracing_rows: list[list[object]] = []
    for video in videos:
        if not video.traced:
            continue
        for frame in (video.es_frame, video.ed_frame):
            ellipse = lv_ellipse(video, frame)
            if tracing_form == "points":
                tracing_rows += [[f"{video.name}.avi", x, y, frame] for x, y in ellipse_outline(*ellipse)]
            else:
                tracing_rows += [[f"{video.name}.avi", *row, frame] for row in ellipse_chords(*ellipse)]
    columns = (
        ["FileName", "X", "Y", "Frame"]
        if tracing_form == "points"
        else ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
    )
    _write_csv(root_view_dir / "VolumeTracings.csv", columns, tracing_rows)
    write_echonet_videos(root_view_dir, videos)
    return root_view_dir


# --- CAMUS -------------------------------------------------------------------------------------------


def camus_frames(
    n_frames: int = 10, ed: int = 2, es: int = 9, height: int = 70, width: int = 60
) -> np.ndarray:
    """A CAMUS-like half sequence (n_frames, height, width) uint8: a ±40° sector with its apex at
    the top centre (0 outside), holding a dark LV that is largest at ED and smallest at ES
    (1-based frame numbers), shrinking linearly in between and held outside."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = np.arctan2(cols - width / 2, rows + 1e-6)
    sector = (np.abs(angle) < np.deg2rad(40)) & (np.hypot(rows, cols - width / 2) < height)
    tissue = np.clip(120 + _texture((height, width), seed=1), 1, 255)
    frames = np.zeros((n_frames, height, width), np.uint8)
    for t in range(n_frames):
        s = 1.0 - 0.4 * np.clip((t + 1 - ed) / (es - ed), 0.0, 1.0)
        lv = ((cols - width / 2) / (0.18 * width * s)) ** 2 + (
            (rows - 0.55 * height) / (0.3 * height * s)
        ) ** 2 < 1
        frames[t] = np.where(sector, np.where(lv, 10, tissue), 0).astype(np.uint8)
    return frames


def format_cfg(values: dict[str, object]) -> str:
    """{key: value} → the text of a CAMUS ``Info_*.cfg`` (``Key: value`` lines)."""
    return "".join(f"{k}: {v}\n" for k, v in values.items())


def write_metaimage(
    mhd_path: Path,
    array: np.ndarray,
    spacing: Sequence[float] | None = None,
    element_type: str = "MET_UCHAR",
    *,
    msb: bool = False,
) -> None:
    """A MetaImage header + ``.raw`` for ``array`` (axes z, y, x → ``DimSize = x y z``)."""
    dtype = {
        "MET_UCHAR": "u1",
        "MET_CHAR": "i1",
        "MET_USHORT": "u2",
        "MET_SHORT": "i2",
        "MET_UINT": "u4",
        "MET_INT": "i4",
        "MET_FLOAT": "f4",
        "MET_DOUBLE": "f8",
    }[element_type]
    raw_path = mhd_path.with_suffix(".raw")
    dims = array.shape[::-1]
    spacing = [1.0] * len(dims) if spacing is None else list(spacing)
    header = {
        "ObjectType": "Image",
        "NDims": len(dims),
        "BinaryData": "True",
        "BinaryDataByteOrderMSB": str(msb),
        "CompressedData": "False",
        "ElementSpacing": " ".join(repr(float(s)) for s in spacing),
        "DimSize": " ".join(str(d) for d in dims),
        "ElementType": element_type,
        "ElementDataFile": raw_path.name,
    }
    mhd_path.parent.mkdir(parents=True, exist_ok=True)
    mhd_path.write_text("".join(f"{k} = {v}\n" for k, v in header.items()))
    raw_path.write_bytes(
        np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder(">" if msb else "<")).tobytes()
    )


def write_camus_patient(
    root: Path,
    number: int,
    view: str = "4CH",
    *,
    fmt: str = "nii",
    frames: np.ndarray | None = None,
    cfg: dict[str, object] | None = None,
    nii_layout: str = "WHF",
) -> Path:
    """One ``patientNNNN/`` folder with ``Info_<view>.cfg`` and a sequence; returns the folder.

    fmt: ``"nii"`` (2023 ``_half_sequence.nii.gz``) or ``"mhd"`` (2019 ``_sequence.mhd/.raw``).
    frames: (F, H, W) sequence, default :func:`camus_frames`. cfg: the cfg's key/values, default a
    complete 2023-style file. nii_layout: ``"WHF"`` (as released) or ``"HWF"`` (a re-saved copy).
    """
    folder = root / f"patient{number:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    frames = camus_frames() if frames is None else frames
    if cfg is None:
        cfg = {
            "ED": 2,
            "ES": 9,
            "NbFrame": len(frames),
            "Sex": "M",
            "Age": 61,
            "ImageQuality": "Medium",
            "EF": 48.5,
            "FrameRate": 40,
        }
    (folder / f"Info_{view}.cfg").write_text(format_cfg(cfg))
    stem = f"{folder.name}_{view}"
    if fmt == "nii":
        data = frames.transpose(2, 1, 0) if nii_layout == "WHF" else frames.transpose(1, 2, 0)
        nib.save(
            nib.Nifti1Image(np.ascontiguousarray(data), np.eye(4)),
            str(folder / f"{stem}_half_sequence.nii.gz"),
        )
    else:
        write_metaimage(folder / f"{stem}_sequence.mhd", frames, spacing=(0.3, 0.3, 1.0))
    return folder


def summary_body(mean: float, **extra: object) -> dict[str, object]:
    """A wire-valid posterior summary map (EF %) around ``mean``; ``extra`` overrides keys."""
    return {
        "n_samples": 40,
        "mean": mean,
        "median": mean,
        "std": 3.0,
        "q05": mean - 5,
        "q25": mean - 2,
        "q75": mean + 2,
        "q95": mean + 5,
        "ci90": [mean - 5, mean + 5],
        "ci95": [mean - 6, mean + 6],
        "p_ef_lt_40": 0.1,
        "p_ef_lt_50": 0.3,
        "multimodal": False,
        **extra,
    }


def dicom_cine(frames: np.ndarray, **tags: object) -> Dataset:
    """A multi-frame MONOCHROME2 8-bit ultrasound DICOM of ``frames`` ((F, H, W) uint8), the extra
    tags (keyword=value) set after the pixels, so they may also contradict them. Save it with
    ``.save_as(path, enforce_file_format=True)``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.set_pixel_data(frames, photometric_interpretation="MONOCHROME2", bits_stored=8)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def estimate_message(
    seq: int, ef: float, p_lt_40: float | None = None, reliable: bool = True, stream: str = "bed1"
) -> dict[str, Any]:
    """A decoded estimate of ``stream`` (as a subscriber receives it) whose running posterior has
    mean ``ef`` and, when given, P(EF<40) ``p_lt_40`` (a share of the 40 samples at 38 %, the rest
    placed to keep the mean)."""
    if p_lt_40 is None:
        samples = ef + np.linspace(-1.0, 1.0, 40)
    else:
        low = round(40 * p_lt_40)
        samples = np.r_[np.full(low, 38.0), np.full(40 - low, (40 * ef - 38.0 * low) / (40 - low))]
    summary = posterior.summarize(samples).to_dict()
    body = {
        "seq": seq,
        "frame_seq": [seq * 50, seq * 50 + 49],
        "t": [float(seq), seq + 0.98],
        "t_ready": seq + 1.1,
        "t_published": seq + 1.2,
        "hr_bpm": 60.0,
        "backend": "onnxruntime",
        "latency_ms": 30.0,
        "stages": {"infer": 20.0},
        "reliable": reliable,
        "ood_score": 0.4 if reliable else 3.0,
        "beat_ood_score": 0.4,
        "beat": summary,
        "running": {**summary, "n_beats": min(seq + 1, 5)},
    }
    return wire.decode_published([bytes(p) for p in wire.encode_estimate(stream, body)])
