"""Image statistics of an echo cine, measured exactly as on the real EchoNet-Dynamic reference clips.

``/work/shared/REAL_ECHO_STATS.md`` tabulates these statistics over 26 real apical-4-chamber
clips. :func:`clip_stats` measures the same statistics on any cine (the simulator's output), by the
same method, so :func:`summarize_stats`, :func:`compare_table` and :func:`distance_to_real` can
put the simulator next to reality.

Method, per clip (frames converted to grayscale float, 0–255 scale):

- sector: pixels whose maximum over all frames exceeds 12, closed with a 5×5 rectangle;
  ``sector_frac`` is its share of the frame. Every other statistic is taken inside the sector.
- ``p5`` … ``p99``: brightness percentiles (numpy's default linear interpolation) over all frames
  and sector pixels; ``frac_below20`` the share of those values < 20, ``frac_sat`` the share >= 250.
- ``speckle_halfwidth_px``: on frames 0, 10, 20, …: subtract a Gaussian blur (sigma 4 px), take the
  central 56×56 crop, zero-mean it, autocorrelate by FFT, normalise lag 0 to 1; the first integer
  lag where the autocorrelation drops below 0.5 along the row and along the column, averaged;
  median over the frames. The FFT is zero-padded to twice the crop (a linear, not circular,
  autocorrelation): the crop is not periodic, and wrapping would correlate its opposite edges.
  At the 1–4 px lags that matter the two differ by well under one lag on Gaussian speckle.
- ``consec_frame_corr``: Pearson correlation of consecutive frames' sector pixels, median over
  the frame pairs.
- ``mean_abs_frame_diff``: mean absolute difference of consecutive frames inside the sector, as
  the mean over all pairs and sector pixels (the mean of the per-pair means; the reference does not
  say median, so no median is taken).
- ``n_frames``: the number of frames.

A statistic that is undefined on a clip is NaN: the two frame-pair statistics with fewer than two
frames, ``consec_frame_corr`` when every frame pair is constant inside the sector, and
``speckle_halfwidth_px`` when every sampled crop is flat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

STAT_NAMES: tuple[str, ...] = (
    "sector_frac",
    "p5",
    "p25",
    "p50",
    "p75",
    "p95",
    "p99",
    "frac_below20",
    "frac_sat",
    "speckle_halfwidth_px",
    "consec_frame_corr",
    "mean_abs_frame_diff",
    "n_frames",
)

# (p25, median, p75) across the 26 real EchoNet-Dynamic clips of REAL_ECHO_STATS.md; frame-pair
# statistics at 50 fps.
REAL_ECHO_STATS: dict[str, tuple[float, float, float]] = {
    "sector_frac": (0.633, 0.675, 0.702),
    "p5": (0.0, 0.0, 0.0),
    "p25": (2.3, 4.0, 6.0),
    "p50": (19.0, 26.0, 30.0),
    "p75": (64.5, 74.5, 82.0),
    "p95": (144.0, 155.0, 167.0),
    "p99": (192.0, 201.5, 216.0),
    "frac_below20": (0.414, 0.444, 0.503),
    "frac_sat": (0.0, 0.0, 0.001),
    "speckle_halfwidth_px": (2.0, 2.5, 2.5),
    "consec_frame_corr": (0.965, 0.970, 0.978),
    "mean_abs_frame_diff": (7.1, 8.0, 8.4),
    "n_frames": (157.0, 179.0, 205.0),
}

SECTOR_THRESHOLD = 12.0
SECTOR_CLOSE_KERNEL = 5
PERCENTILES: tuple[int, ...] = (5, 25, 50, 75, 95, 99)
DARK_LEVEL = 20.0
SATURATED_LEVEL = 250.0
SPECKLE_FRAME_STEP = 10
SPECKLE_HIGHPASS_SIGMA = 4.0
SPECKLE_CROP = 56
SPECKLE_LEVEL = 0.5
# Crop variance (grey levels²) below which a crop counts as flat: no texture to autocorrelate.
FLAT_VARIANCE = 1e-6

# Smallest meaningful IQR width per statistic for distance_to_real: the reference table's printed
# precision, or the statistic's own quantum (one grey level, one frame, half a pixel for a mean of
# two integer lags). Several real IQRs are zero wide (p5, and p25…median of frac_sat), and a
# distance in units of a zero width would be infinite.
_RESOLUTION: dict[str, float] = {
    "sector_frac": 0.001,
    "p5": 1.0,
    "p25": 1.0,
    "p50": 1.0,
    "p75": 1.0,
    "p95": 1.0,
    "p99": 1.0,
    "frac_below20": 0.001,
    "frac_sat": 0.001,
    "speckle_halfwidth_px": 0.5,
    "consec_frame_corr": 0.001,
    "mean_abs_frame_diff": 0.1,
    "n_frames": 1.0,
}


def to_gray(frames: np.ndarray) -> np.ndarray:
    """Frames (F, H, W) or (F, H, W, 3) BGR on a 0–255 scale → (F, H, W) float64 grayscale, 0–255."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        return frames.astype(np.float64)
    if frames.ndim == 4 and frames.shape[-1] == 3:
        # float32 conversion: no rounding back to integers before the statistics are taken.
        gray = [cv2.cvtColor(f.astype(np.float32), cv2.COLOR_BGR2GRAY) for f in frames]
        return np.stack(gray).astype(np.float64)
    raise ValueError(f"frames must be (F, H, W) or (F, H, W, 3), got shape {frames.shape}")


def sector_mask(gray: np.ndarray) -> np.ndarray:
    """Grayscale frames (F, H, W), 0–255 → (H, W) bool: max over frames > 12, closed with a 5×5 box."""
    raw = (gray.max(axis=0) > SECTOR_THRESHOLD).astype(np.uint8)
    kernel = np.ones((SECTOR_CLOSE_KERNEL, SECTOR_CLOSE_KERNEL), np.uint8)
    return cv2.morphologyEx(raw, cv2.MORPH_CLOSE, kernel).astype(bool)


def _first_lag_below(acf: np.ndarray, level: float) -> float:
    """acf (L,) at lags 1…L → first lag whose value is below ``level``; NaN if none is."""
    below = np.flatnonzero(acf < level)
    return float(below[0] + 1) if below.size else float("nan")


def speckle_halfwidth(frame: np.ndarray) -> float:
    """One grayscale frame (H, W), H, W >= 56 → speckle autocorrelation half-width in pixels.

    Mean of the row and column half-widths (first integer lag where the normalised, zero-padded
    autocorrelation of the high-passed central 56×56 crop drops below 0.5); NaN on a flat crop, or
    when an axis never drops below 0.5 within the crop.
    """
    h, w = frame.shape
    if h < SPECKLE_CROP or w < SPECKLE_CROP:
        raise ValueError(f"frames must be at least {SPECKLE_CROP}×{SPECKLE_CROP}, got {h}×{w}")
    f32 = frame.astype(np.float32)
    # The sigma-4 high-pass removes anatomy and gain gradients, leaving the speckle texture.
    highpass = f32 - cv2.GaussianBlur(f32, (0, 0), sigmaX=SPECKLE_HIGHPASS_SIGMA)
    top, left = (h - SPECKLE_CROP) // 2, (w - SPECKLE_CROP) // 2
    crop = highpass[top : top + SPECKLE_CROP, left : left + SPECKLE_CROP].astype(np.float64)
    crop -= crop.mean()
    # Not == 0: a flat frame still leaves float32 round-off (~1e-10 grey levels²) after the high-pass.
    if crop.var() < FLAT_VARIANCE:
        return float("nan")
    padded = (2 * SPECKLE_CROP, 2 * SPECKLE_CROP)
    acf = np.fft.irfft2(np.abs(np.fft.rfft2(crop, s=padded)) ** 2, s=padded)
    acf /= acf[0, 0]
    along_row = _first_lag_below(acf[0, 1:SPECKLE_CROP], SPECKLE_LEVEL)
    along_col = _first_lag_below(acf[1:SPECKLE_CROP, 0], SPECKLE_LEVEL)
    return (along_row + along_col) / 2.0


def _nanmedian(values: np.ndarray) -> float:
    """Median of the finite entries of ``values``; NaN (without a warning) when there are none."""
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def _consecutive_corr(pixels: np.ndarray) -> np.ndarray:
    """Sector pixels (F, P) → (F-1,) Pearson correlation of each frame with the next; NaN if flat."""
    centred = pixels - pixels.mean(axis=1, keepdims=True)
    cov = np.einsum("fp,fp->f", centred[:-1], centred[1:])
    norm = np.sqrt(np.einsum("fp,fp->f", centred, centred))
    denom = norm[:-1] * norm[1:]
    out = np.full(cov.shape, np.nan)
    np.divide(cov, denom, out=out, where=denom > 0)
    return out


def clip_stats(frames: np.ndarray) -> dict[str, float]:
    """Every statistic of REAL_ECHO_STATS.md for one cine, by the reference method.

    frames: (F, H, W) grayscale or (F, H, W, 3) BGR, 0–255 scale (uint8 from a video reader),
        H, W >= 56.
    Returns {name: value} in :data:`STAT_NAMES` order: ``sector_frac`` and ``frac_*`` are shares in
    [0, 1], percentiles and ``mean_abs_frame_diff`` grey levels 0–255, ``speckle_halfwidth_px``
    pixels, ``consec_frame_corr`` a correlation, ``n_frames`` a count.
    Raises ValueError when no pixel exceeds 12 in any frame (no sector).
    """
    gray = to_gray(frames)
    n_frames = gray.shape[0]
    mask = sector_mask(gray)
    if not mask.any():
        raise ValueError("no sector: no pixel exceeds 12 in any frame")
    pixels = gray[:, mask]  # (F, P): every frame's sector pixels
    values = pixels.ravel()

    stats: dict[str, float] = {"sector_frac": float(mask.mean())}
    for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
        stats[f"p{q}"] = float(v)
    stats["frac_below20"] = float(np.mean(values < DARK_LEVEL))
    stats["frac_sat"] = float(np.mean(values >= SATURATED_LEVEL))
    halfwidths = np.array([speckle_halfwidth(f) for f in gray[::SPECKLE_FRAME_STEP]])
    stats["speckle_halfwidth_px"] = _nanmedian(halfwidths)
    if n_frames >= 2:
        stats["consec_frame_corr"] = _nanmedian(_consecutive_corr(pixels))
        stats["mean_abs_frame_diff"] = float(np.abs(np.diff(pixels, axis=0)).mean())
    else:
        stats["consec_frame_corr"] = float("nan")
        stats["mean_abs_frame_diff"] = float("nan")
    stats["n_frames"] = float(n_frames)
    return stats


def summarize_stats(per_clip: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float, float]]:
    """Per-clip statistics (from :func:`clip_stats`) → {name: (p25, median, p75) across clips}.

    NaN entries (statistics undefined on a clip) are left out; a statistic undefined on every clip
    summarises to (NaN, NaN, NaN). Keys follow :data:`STAT_NAMES`.
    """
    if not per_clip:
        raise ValueError("no clips to summarise")
    summary: dict[str, tuple[float, float, float]] = {}
    for name in STAT_NAMES:
        values = np.array([clip[name] for clip in per_clip], dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size:
            p25, med, p75 = np.percentile(finite, [25, 50, 75])
            summary[name] = (float(p25), float(med), float(p75))
        else:
            summary[name] = (float("nan"),) * 3
    return summary


def _inside(value: float, band: tuple[float, float, float]) -> bool:
    """Whether ``value`` lies in the closed interval [band p25, band p75]."""
    return band[0] <= value <= band[2]


def _fmt(band: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.4g}" for v in band)


def compare_table(
    sim: Mapping[str, tuple[float, float, float]],
    real: Mapping[str, tuple[float, float, float]] = REAL_ECHO_STATS,
) -> str:
    """Markdown table, one row per statistic of ``real``, simulated (p25, median, p75) beside real.

    The last column says "yes" when the simulated median lies inside the real IQR (bounds
    included), else "no". ``sim`` must hold every statistic of ``real``.
    """
    lines = [
        "| statistic | real p25 / median / p75 | simulated p25 / median / p75 | inside real IQR? |",
        "|---|---|---|---|",
    ]
    for name, band in real.items():
        verdict = "yes" if _inside(sim[name][1], band) else "no"
        lines.append(f"| {name} | {_fmt(band)} | {_fmt(sim[name])} | {verdict} |")
    return "\n".join(lines) + "\n"


def distance_to_real(
    sim: Mapping[str, tuple[float, float, float]],
    real: Mapping[str, tuple[float, float, float]] = REAL_ECHO_STATS,
) -> dict[str, float]:
    """Per statistic of ``real``: how many real-IQR widths the simulated median lies outside the IQR.

    0 inside the IQR (bounds included); otherwise the gap to the nearer bound divided by the IQR
    width, that width floored at the statistic's resolution (one grey level for percentiles, the
    table's precision for shares) so zero-width real IQRs still give finite distances. NaN where
    the simulated median is NaN.
    """
    out: dict[str, float] = {}
    for name, (lo, _, hi) in real.items():
        med = sim[name][1]
        if np.isnan(med):
            out[name] = float("nan")
            continue
        gap = max(lo - med, med - hi, 0.0)
        width = max(hi - lo, _RESOLUTION.get(name, 0.0))
        # A statistic unknown to _RESOLUTION with a zero-wide IQR: any gap is infinitely far.
        out[name] = 0.0 if gap == 0.0 else (gap / width if width > 0.0 else float("inf"))
    return out
