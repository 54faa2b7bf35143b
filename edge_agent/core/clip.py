"""Cardiac cycles → model clips.

:func:`make_clip` is THE clip function: training, evaluation, calibration and the live agent all
turn one beat (end-diastole to the next end-diastole) into the model's input with it, so the model
never sees frames prepared any other way.

Beat boundaries, in order of preference:
1. ED→ED known (simulator labels, the live cycle detector, an ECG R wave).
2. One ED frame known (EchoNet tracings, CAMUS cfg): the beat period is estimated from the clip's
   own periodicity (:func:`estimate_period`), else from a known heart rate.
3. Nothing known: the fallback is one estimated period from the first frame, and where the clip
   shows no usable periodicity, a fixed window of ``FALLBACK_BEAT_S`` seconds (one beat at 60 bpm).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CLIP_FRAMES = 32
CLIP_SIZE = 112
FALLBACK_BEAT_S = 1.0
# Plausible heart rates for the periodicity search (bpm).
HR_MIN_BPM, HR_MAX_BPM = 35.0, 200.0


def resize_frames(frames: np.ndarray, size: int = CLIP_SIZE) -> np.ndarray:
    """Frames (F, H, W) uint8 → (F, size, size) uint8; area interpolation when shrinking."""
    _f, h, w = frames.shape
    if (h, w) == (size, size):
        return frames
    interp = cv2.INTER_AREA if h > size or w > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(fr, (size, size), interpolation=interp) for fr in frames])


def beat_sample_times(start: float, end: float, length: int = CLIP_FRAMES) -> np.ndarray:
    """Fractional frame positions of ``length`` evenly spaced samples over [start, end).

    ``end`` is the next beat's ED, excluded: 32 samples cover exactly one period, so consecutive
    beats tile the stream without repeating a frame.
    """
    if not end > start:
        raise ValueError(f"beat end ({end}) must be after its start ({start})")
    return start + (end - start) * np.arange(length) / length


def make_clip(
    frames: np.ndarray,
    start: float,
    end: float,
    length: int = CLIP_FRAMES,
    size: int = CLIP_SIZE,
) -> np.ndarray:
    """One beat of a grayscale cine → the model's clip.

    frames: (F, H, W) uint8, a cine at its native frame rate.
    start, end: frame indices (may be fractional) of this ED and the next ED; ``end`` may reach
        ``F`` (the beat ends at the clip's last frame), later positions are held at the last frame.
    Returns (length, size, size) uint8: frames linearly interpolated in time at
    :func:`beat_sample_times`, then resized to ``size``. Intensity stays uint8 0–255; the model
    normalises inside its graph, so every backend sees identical numbers.
    """
    if frames.ndim != 3:
        raise ValueError(f"frames must be (F, H, W) grayscale, got shape {frames.shape}")
    n = frames.shape[0]
    t = np.clip(beat_sample_times(start, end, length), 0, n - 1)
    i0 = np.floor(t).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    w = t - i0
    resized: dict[int, np.ndarray] = {}  # resize only the frames the beat uses, each once

    def frame(i: int) -> np.ndarray:
        if i not in resized:
            resized[i] = resize_frames(frames[i : i + 1], size)[0]
        return resized[i]

    # Frame by frame into one preallocated clip: the live windower calls this once per beat, and
    # whole-clip float temporaries (1.6 MB each) cost page faults that made it 10× slower.
    clip = np.empty((length, size, size), np.uint8)
    for k in range(length):
        if w[k] == 0:
            clip[k] = frame(i0[k])
        else:  # (1 − w)·a + w·b, rounded to nearest and saturated to uint8
            cv2.addWeighted(frame(i0[k]), 1.0 - w[k], frame(i1[k]), w[k], 0.0, dst=clip[k])
    return clip


def period_autocorrelation(frames: np.ndarray, fps: float) -> np.ndarray | None:
    """The cine's motion signal's autocorrelation (lags 0 … 60/HR_MIN_BPM s, at most 2/3 of the cine),
    normalised to 1 at lag 0, or None for a still cine.

    frames: (F, H, W) uint8. The signal is each frame's correlation with the clip's mean frame
    (heart motion changes it once per beat), less its slow drift.
    """
    n = frames.shape[0]
    small = resize_frames(frames, 32).reshape(n, -1).astype(np.float32)
    dev = small - small.mean(axis=0, keepdims=True)
    sig = (dev * dev.mean(axis=0, keepdims=True)).sum(axis=1)
    # Detrend slow gain drift, then normalise.
    k = max(3, round(fps * 1.5) | 1)
    if n > k:
        trend = np.convolve(np.pad(sig, k // 2, mode="edge"), np.ones(k) / k, mode="valid")
        sig = sig - trend
    sig = sig - sig.mean()
    if not np.any(sig):
        return None
    hi = min(int(np.ceil(fps * 60.0 / HR_MIN_BPM)), int(n / 1.5))
    ac = np.array([np.dot(sig[: n - lag], sig[lag:]) / (n - lag) for lag in range(hi + 1)])
    return ac / ac[0]


def estimate_period(frames: np.ndarray, fps: float) -> float | None:
    """Dominant cardiac period of a cine in frames, or None when no usable periodicity.

    frames: (F, H, W) uint8. The first strong peak of :func:`period_autocorrelation` within
    [HR_MAX_BPM, HR_MIN_BPM]. Needs at least 1.5 periods of video.
    """
    ac = period_autocorrelation(frames, fps)
    lo = max(2, int(np.floor(fps * 60.0 / HR_MAX_BPM)))
    if ac is None or len(ac) - 1 <= lo + 1:
        return None
    seg = ac[lo:]
    peaks = [i for i in range(1, len(seg) - 1) if seg[i] >= seg[i - 1] and seg[i] >= seg[i + 1]]
    peaks = [p for p in peaks if seg[p] > 0.3]
    if not peaks:
        return None
    p = peaks[0]
    # Parabolic refinement of the peak position.
    y0, y1, y2 = seg[p - 1], seg[p], seg[p + 1]
    denom = y0 - 2 * y1 + y2
    frac = 0.5 * (y0 - y2) / denom if denom != 0 else 0.0
    return float(lo + p + frac)


def beat_bounds(
    frames: np.ndarray,
    fps: float,
    ed_frame: float | None = None,
    next_ed_frame: float | None = None,
    heart_rate_bpm: float | None = None,
) -> tuple[float, float, str]:
    """Choose one beat [start, end) in frame units; returns (start, end, how).

    ``how`` names the rule used (``"ed_ed"``, ``"ed_period"``, ``"ed_hr"``, ``"period"``,
    ``"fixed"``) so datasets and logs can report how many clips used a fallback.
    """
    n = frames.shape[0]
    if ed_frame is not None and next_ed_frame is not None:
        return float(ed_frame), float(next_ed_frame), "ed_ed"
    period = estimate_period(frames, fps)
    how = "period"
    if period is None and heart_rate_bpm:
        period, how = fps * 60.0 / heart_rate_bpm, "hr"
    if period is None:
        period, how = fps * FALLBACK_BEAT_S, "fixed"
    start = 0.0 if ed_frame is None else float(ed_frame)
    if ed_frame is not None:
        how = "ed_" + how
    # Keep the beat inside the clip where possible: step back whole periods.
    while start + period > n and start - period >= 0:
        start -= period
    return start, start + period, how


@dataclass(frozen=True)
class WindowErrors:
    """How a live windower's cut of one beat can be off; training draws its windows with these and
    the robustness check scores them (frames, relative period, probabilities).

    jitter_frames: each end moves by a whole number of frames in [−jitter, +jitter];
    period_error: the period is scaled by a factor in [1 − period_error, 1 + period_error];
    p_double / p_half: the window spans two periods / half of one (a missed or an extra beat);
    p_phase: the window starts at a uniformly random phase of the cycle instead of at ED.
    """

    jitter_frames: int = 3
    period_error: float = 0.2
    p_double: float = 0.1
    p_half: float = 0.05
    p_phase: float = 0.0


def perturbed_bounds(
    start: float, end: float, rng: np.random.Generator, errors: WindowErrors
) -> tuple[float, float, str]:
    """The beat [start, end) (frame indices, ED to next ED) as a live windower may cut it:
    (start', end', kind) with kind "jitter" or what else happened ("phase", "double", "half",
    "phase+double", "phase+half"). ``start'`` ≥ 0 and the window is at least 2 frames long."""
    period = end - start
    kinds = []
    if rng.random() < errors.p_phase:
        start = start + rng.uniform(0.0, period)
        kinds.append("phase")
    u = rng.random()
    if u < errors.p_double:
        period = 2 * period
        kinds.append("double")
    elif u < errors.p_double + errors.p_half:
        period = period / 2
        kinds.append("half")
    period *= 1 + rng.uniform(-errors.period_error, errors.period_error)
    s = max(0.0, start + int(rng.integers(-errors.jitter_frames, errors.jitter_frames + 1)))
    e = s + period + int(rng.integers(-errors.jitter_frames, errors.jitter_frames + 1))
    return s, max(e, s + 2.0), "+".join(kinds) or "jitter"
