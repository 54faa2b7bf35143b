"""The online, causal cycle detector: frames in, one beat (ED→ED) at a time out.

The beat's frames become the model's clip through :func:`edge_agent.core.clip.make_clip`, the one
clip function training, evaluation, calibration and the live agent share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.core.clip import FALLBACK_BEAT_S, HR_MAX_BPM, HR_MIN_BPM
from edge_agent.core.metrics import pearson
from edge_agent.core.shipped import resolve, shipped

# --------------------------------------------------------------------------------------------------
# The online, causal cycle detector
# --------------------------------------------------------------------------------------------------
#
# Signal: the LV cavity area, predicted from each frame by a small convolutional segmentation head
# (weights trained on the simulator's LV masks, see :func:`edge_agent.ml.cycles_eval.train_signal_net`)
# run in numpy: the frame area-resized to 56×56 → LV coverage of each cell of a 28×28 grid, whose sum
# is the area. Only changes of it over time are used, so gain and the case's absolute LV size do not
# matter. Each beat's maximum of the smoothed signal is found by a hysteresis peak detector: confirmed
# once the signal has fallen by ``hysteresis`` × its recent peak-to-peak amplitude (early ejection, a
# fraction of a beat later). ED is timed from the sharp start of that fall, not the flat maximum.
# Where the area's swing is small next to its noise (dilated low-EF hearts, whose swing is close to
# what the mitral leaflets and the atrium add to the net's error), the signal is the coverage maps'
# first principal component over the recent seconds instead: the cells that move together with the
# cycle, without the rest's noise (CycleConfig.principal_*).

SIGNAL_WEIGHTS = shipped("engines/cycle_signal.npz")
SIGNAL_INPUT = 56  # the signal net's input: frames area-resized to 56×56, values / 255, ...
SIGNAL_GRID = SIGNAL_INPUT // 2  # ... as 2×2 pixel blocks → 4 channels on a 28×28 grid (pixel unshuffle)


def signal_layers(width: int = 16, frames: int = 1) -> tuple[tuple[int, int, int, int], ...]:
    """The signal net: (in channels, out channels, kernel, dilation) per conv layer, stride 1, "same"
    padding, ReLU after every layer but the last, whose sigmoid is the LV coverage (0–1) of each 28×28
    cell. Dilations 1, 2, 4 see 17 cells (68 px at 112×112) around each cell: wall, valve and cavity
    together. ``width``: channels of the hidden layers; ``frames``: the frame now and the earlier ones
    it sees (:attr:`LVAreaNet.lags_s`), 4 channels each (the weights file's shapes say both)."""
    return (
        (4 * frames, width, 3, 1),
        (width, width, 3, 2),
        (width, width, 3, 4),
        (width, width, 3, 1),
        (width, 1, 1, 1),
    )


SIGNAL_LAYERS = signal_layers()
# The LV-area template of early confirmation spans this long before and after ED (s): late diastole
# with the atrial kick, and the start of ejection. Its end lies past early_s + EARLY_GRACE frames and
# its start early_s + the match window before the latest candidate, so every candidate ED is matched
# against the same recent samples. It is learnt at hysteresis-confirmed EDs, once the signal has
# reached its end.
TEMPLATE_BEFORE_S = 0.45
TEMPLATE_AFTER_S = 0.2
TEMPLATE_MEMORY = 0.5  # weight of the template so far when a beat updates it
# The best-matching ED may first lie a fraction of a frame short of early_s (its position is
# fractional) and settle a frame later: it stays a candidate this many frames beyond early_s.
EARLY_GRACE = 2
EARLY_SAME_ED = 0.3  # a hysteresis ED this close (× period) to an early one is that ED again
PRINCIPAL_LEAVE = 1.25  # the principal signal gives way at an area SNR of this × principal_below_snr
# Least peak-to-peak of a principal projection (coverage units; a beating LV's is ≈ 1–2): below it the
# maps do not move.
PRINCIPAL_MIN_SWING = 0.05


@dataclass(frozen=True)
class CycleConfig:
    """Online cycle detection (YAML section ``cycles``). Times in s, heart rates in bpm."""

    hr_min_bpm: float = HR_MIN_BPM  # slowest plausible heart rate: longer beats are rejected
    hr_max_bpm: float = HR_MAX_BPM  # fastest plausible heart rate: shorter beats are rejected
    refractory_s: float = 0.25  # no second ED within this time after one
    fallback_s: float = FALLBACK_BEAT_S  # length of the fixed windows used without periodicity
    fallback_after_s: float = 3.0  # time without an emitted beat before fixed windows start
    use_r_wave: bool = True  # trust R-wave markers (r_wave=True frames are EDs) when supplied
    smooth_s: float = 0.045  # Gaussian smoothing σ of the area signal; sets the confirmation delay
    hysteresis: float = (
        0.35  # fall/rise, as a fraction of the recent peak-to-peak, that confirms a peak/trough
    )
    amplitude_s: float = 2.5  # span of the recent signal whose peak-to-peak and noise are measured
    min_snr: float = 4.0  # peak-to-peak / high-frequency noise σ below which there is no usable beat
    period_tolerance: float = 0.3  # once locked, a beat must last within ±this of the recent period
    knee: float = 0.15  # the fall into ejection is timed where it crosses max − knee × peak-to-peak ...
    # ... and ED is placed this long × √(beat length / 1 s) before it (bias ≈ 0 on training seeds 100, 101)
    ed_lead_s: float = 0.09
    weights: str | None = None  # signal net (.npz); None: the shipped engines/cycle_signal.npz
    # Early confirmation, once locked: the closing ED of a beat is found by matching the recent raw
    # signal against the LV-area template of the last beats, as soon as early_s of contraction has
    # been seen and the match correlates at least early_min_corr (see CycleDetector); False: the
    # hysteresis alone. 0.1 s is the shortest that keeps ≥ 95 % of beats within 2 frames (0.08 s:
    # 47–89 %, development seed 777); raw samples beat a 3-frame average there (no averaging delay);
    # r 0.85 let mid-diastole of slow hearts (45 bpm) pass for an ED on a poor image (86 %, seed 2024).
    early_confirm: bool = True
    early_s: float = 0.1
    early_min_corr: float = 0.9
    # The principal signal: every principal_every_s, while the area's swing SNR (peak-to-peak of the
    # smoothed signal / σ of the rest, over amplitude_s) is below principal_below_snr, the first
    # principal component of the last amplitude_s of coverage maps replaces the area when its own SNR
    # reaches principal_min_snr and principal_gain × the area's (sign: rising with the area); the whole
    # signal history is re-projected so it stays one signal. 0 for principal_below_snr: the area
    # always. Measured on the simulator's weakest patients (README "Cycle detector"); strong signals
    # (SNR ≥ 10) never switch, and a component no clearer than the area (gain 1.0: 5 fewer beats of
    # 6,206 on seed 3030) does not either.
    principal_below_snr: float = 10.0
    principal_min_snr: float = 8.0
    principal_gain: float = 1.5
    principal_every_s: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.hr_min_bpm < self.hr_max_bpm:
            raise ValueError(f"need 0 < hr_min_bpm < hr_max_bpm, got {self.hr_min_bpm}, {self.hr_max_bpm}")
        if self.fallback_s <= 0 or self.fallback_after_s < self.fallback_s:
            raise ValueError("need fallback_s > 0 and fallback_after_s >= fallback_s")
        if not 0 < self.hysteresis < 1:
            raise ValueError(f"hysteresis must be in (0, 1), got {self.hysteresis}")
        if (
            self.principal_below_snr < 0
            or self.principal_min_snr <= 0
            or self.principal_gain < 1
            or self.principal_every_s <= 0
        ):
            raise ValueError(
                "need principal_below_snr >= 0, principal_min_snr > 0, principal_gain >= 1 and "
                f"principal_every_s > 0, got {self.principal_below_snr}, {self.principal_min_snr}, "
                f"{self.principal_gain}, {self.principal_every_s}"
            )
        if not (0 < self.early_s <= TEMPLATE_AFTER_S and -1 < self.early_min_corr <= 1):
            raise ValueError(
                f"need 0 < early_s <= {TEMPLATE_AFTER_S} and -1 < early_min_corr <= 1, "
                f"got {self.early_s}, {self.early_min_corr}"
            )


@dataclass(frozen=True)
class BeatWindow:
    """One beat (or fixed window) cut from the stream, ready for :func:`make_clip`.

    frames: (F, H, W) uint8 native-rate frames from the start ED frame to the next ED frame inclusive.
    start, end: fractional indices into ``frames`` of this ED and the next one:
        ``make_clip(frames, start, end)`` is the model's clip.
    frame_seq: source sequence numbers of the first and last frame of ``frames``.
    t: capture times (s) of those two frames.
    hr_bpm: 60 / beat duration, None for a fixed window.
    how: ``"r_wave"`` (ECG R waves), ``"ed_ed"`` (image-detected EDs) or ``"fixed"`` (fallback).
    """

    frames: np.ndarray
    start: float
    end: float
    frame_seq: tuple[int, int]
    t: tuple[float, float]
    hr_bpm: float | None
    how: str


@dataclass
class DetectorCounters:
    """Running totals since construction (not cleared by :meth:`CycleDetector.reset`)."""

    frames_seen: int = 0
    beats_emitted: int = 0  # r_wave + ed_ed windows
    fallback_windows: int = 0  # fixed windows
    rejected_candidates: int = (
        0  # EDs giving an implausible beat (HR bounds, refractory, off the locked period)
    )
    early_corrected: int = 0  # early EDs the hysteresis found premature (their beat was cut short)
    principal_switches: int = 0  # changes of the signal between the area and its principal component
    resets: int = 0  # history dropped: sequence gap, time going backwards, frame shape change, reset()


def lag_frames(lags_s: tuple[float, ...], fps: float) -> tuple[int, ...]:
    """How many frames back each lag (s) is at ``fps``: the nearest, at least one."""
    return tuple(max(1, round(lag * fps)) for lag in lags_s)


def signal_net_input(frame: np.ndarray) -> np.ndarray:
    """(H, W) uint8 frame → the signal net's input (28, 28, 4) float32: 56×56 in 2×2 blocks, 0–1.

    Channel 2i + j holds pixel (2y + i, 2x + j), torch's ``PixelUnshuffle(2)`` order.
    """
    x = cv2.resize(frame, (SIGNAL_INPUT, SIGNAL_INPUT), interpolation=cv2.INTER_AREA)
    g = SIGNAL_GRID
    return (x.astype(np.float32) / 255.0).reshape(g, 2, g, 2).transpose(0, 2, 1, 3).reshape(g, g, 4)


class LVAreaNet:
    """The LV-area signal net (:func:`signal_layers`), forward pass in numpy: no torch at run time.

    It sees the frame now and, for each of ``lags_s``, the frame that long before (the nearest
    earlier frame at the stream's rate, :meth:`lag_frames`), so the walls' motion may tell the LV from
    the atrium emptying into it at end-diastole (tried and not shipped: README "Cardiac cycles"; the
    shipped net sees the frame alone).
    Each convolution is a sum over its kernel taps of (shifted channel-last map) @ (C_in, C_out):
    small matmuls on views, no im2col copy; ≈ 0.35 ms per 112×112 frame on one core.
    """

    def __init__(self, weights: list[tuple[np.ndarray, np.ndarray]], lags_s: tuple[float, ...] = ()):
        """weights: per layer, torch's (kernel (C_out, C_in, k, k), bias (C_out,)), of
        :func:`signal_layers` at the width the first kernel has, for 1 + len(lags_s) frames."""
        if len(weights) != len(SIGNAL_LAYERS):
            raise ValueError(f"expected {len(SIGNAL_LAYERS)} layers, got {len(weights)}")
        self.lags_s = tuple(float(lag) for lag in lags_s)
        if any(lag <= 0 for lag in self.lags_s):
            raise ValueError(f"lags_s must be positive (s before the frame now), got {self.lags_s}")
        self._layers = []
        spec = signal_layers(weights[0][0].shape[0], 1 + len(self.lags_s))
        for (cin, cout, k, dil), (w, b) in zip(spec, weights, strict=True):
            if w.shape != (cout, cin, k, k) or b.shape != (cout,):
                raise ValueError(f"layer weights {w.shape}, {b.shape} do not match {(cout, cin, k, k)}")
            taps = np.ascontiguousarray(w.transpose(2, 3, 1, 0), dtype=np.float32)  # (ky, kx, C_in, C_out)
            self._layers.append((k, dil, taps, b.astype(np.float32)))

    @classmethod
    def load(cls, path: str | Path | None = None) -> LVAreaNet:
        """From an .npz with ``w0, b0, w1, b1, …`` and ``lags_s`` (absent: the frame alone); None:
        the shipped engines/cycle_signal.npz."""
        with np.load(SIGNAL_WEIGHTS if path is None else resolve(path)) as z:
            lags = tuple(z["lags_s"].tolist()) if "lags_s" in z else ()
            return cls([(z[f"w{i}"], z[f"b{i}"]) for i in range(len(SIGNAL_LAYERS))], lags)

    def lag_frames(self, fps: float) -> tuple[int, ...]:
        """How many frames back each of ``lags_s`` is at ``fps`` (:func:`lag_frames`)."""
        return lag_frames(self.lags_s, fps)

    def coverage(self, frame: np.ndarray, earlier: tuple[np.ndarray, ...] = ()) -> np.ndarray:
        """(H, W) uint8 frame, and the frames :meth:`lag_frames` back (in ``lags_s`` order; the
        oldest available where the stream is younger) → (28, 28) float32 LV coverage (0–1) of each
        cell of the image."""
        if len(earlier) != len(self.lags_s):
            raise ValueError(f"the net sees {len(self.lags_s)} earlier frames, got {len(earlier)}")
        x = np.concatenate([signal_net_input(f) for f in (frame, *earlier)], axis=2)
        g = SIGNAL_GRID
        last = len(self._layers) - 1
        for i, (k, dil, taps, b) in enumerate(self._layers):
            pad = dil * (k - 1) // 2
            xp = np.zeros((g + 2 * pad, g + 2 * pad, x.shape[2]), np.float32)
            xp[pad : pad + g, pad : pad + g] = x
            y = np.broadcast_to(b, (g * g, b.size)).copy()
            for ky in range(k):
                for kx in range(k):
                    y += (
                        xp[ky * dil : ky * dil + g, kx * dil : kx * dil + g].reshape(g * g, -1) @ taps[ky, kx]
                    )
            x = (np.maximum(y, 0.0) if i < last else y).reshape(g, g, -1)
        # Clipped logits: exp overflows float32 beyond ±88 (saturated frames), the sigmoid is 0/1 there.
        return 1.0 / (1.0 + np.exp(-np.clip(x[:, :, 0], -60.0, 60.0)))


def swing_snr(x: np.ndarray, kernel: np.ndarray) -> float:
    """Peak-to-peak of x (N,) smoothed by ``kernel`` (odd length, sums to 1) over σ of the residual,
    on the samples the kernel covers whole; 0 where there are too few or no residual."""
    h = len(kernel) // 2
    if len(x) <= 2 * h + 1:
        return 0.0
    sm = np.convolve(x, kernel, mode="valid")
    noise = float(np.sqrt(np.mean((x[h:-h] - sm) ** 2)))
    return float(np.ptp(sm)) / noise if noise > 0 else 0.0


def principal_projection(maps: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, float]:
    """The first principal component of coverage maps (N, 784) over time: its unit weights (784,),
    signed so that the projection rises with the area (the maps' sum), and the projection's swing
    SNR (:func:`swing_snr`; 0 when the maps do not move)."""
    centred = maps - maps.mean(axis=0)
    # Through the (N, N) Gram matrix: N ≤ 2.5 s of frames ≪ 784 cells, ≈ 1 ms where an SVD takes ≈ 9.
    u = np.linalg.eigh(centred @ centred.T)[1][:, -1]
    v = centred.T @ u
    v /= np.linalg.norm(v) + 1e-12
    p = centred @ v
    if np.ptp(p) < PRINCIPAL_MIN_SWING:  # no motion (a frozen feed): the "component" is rounding noise
        return v.astype(np.float32), 0.0
    if pearson(p, maps.sum(axis=1)) < 0:
        v, p = -v, -p
    return v.astype(np.float32), swing_snr(p, kernel)


class CycleDetector:
    """Causal ED→ED beat windows from a live frame stream.

    ``push`` one frame at a time; it returns the beats that frame completes. A beat is emitted
    when its closing ED is confirmed: at once for an R wave; for an image-detected ED ``early_s``
    after it by the template match (:meth:`_early`) once a beat's length is known, else about
    ``hysteresis`` of the way into ejection (≈ 0.1–0.2 s) plus the smoothing delay (≈ 2.5
    ``smooth_s``). When the swing first becomes measurable the samples smoothed so far are run
    through the peak detector as well (priming). The first beat after a start, reset or fallback
    has nothing to check its length against: it goes out with the next beat if they agree within
    ``period_tolerance``, else it is rejected — unless the source states the heart rate
    (``hr_prior_bpm``, a DICOM cine's Heart Rate tag): a first beat within ``period_tolerance`` of
    that period goes out at once, and the prior stands in for the period until beats give one.

    ED source: R-wave markers while the source supplies them (one seen within the last
    ``60 / hr_min_bpm × 1.5`` s and ``use_r_wave``), otherwise the LV-area image signal.
    Plausibility: a beat must last between 60/hr_max and 60/hr_min s and at least ``refractory_s``;
    once the last beats agree (≥ 2 intervals), within ±``period_tolerance`` of their median. A too
    short beat is an extra peak: dropped, the earlier ED kept. A too long one is a missed ED: not
    emitted, the new ED starts the next beat.
    Fallback: when no beat has been emitted for ``fallback_after_s`` (static image, noise, no
    sector, signal below ``min_snr``), consecutive fixed windows of ``fallback_s`` are emitted
    (``how="fixed"``) until beats are found again.
    Gaps: a frame whose sequence number is not the previous one + 1, whose time does not advance,
    or whose shape differs drops all history (counted in ``counters.resets``), then starts afresh.
    Signal: the LV area, or where its swing is weak the coverage maps' first principal component
    (``principal_*``; :attr:`signal_source`, ``counters.principal_switches``).
    Memory: the last ``2 × 60 / hr_min_bpm + 1.5`` s of frames (4.9 s at 35 bpm; 3.1 MB at 50 fps
    for 112×112), their 28×28 coverage maps (0.8 MB) and a few seconds of the scalar signal.
    """

    def __init__(self, cfg: CycleConfig, fps: float, hr_prior_bpm: float | None = None):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.cfg = cfg
        self.fps = float(fps)
        # A stated heart rate outside the plausible range (e.g. a narrowed hr_max_bpm) is not used.
        usable = hr_prior_bpm is not None and cfg.hr_min_bpm <= hr_prior_bpm <= cfg.hr_max_bpm
        self.hr_prior_bpm = hr_prior_bpm if usable else None
        self._prior = 60.0 * self.fps / hr_prior_bpm if usable else None  # its period, frames
        self.counters = DetectorCounters()
        self._net = LVAreaNet.load(cfg.weights)
        self._lag_k = self._net.lag_frames(fps)
        sigma = max(cfg.smooth_s * fps, 0.5)
        self._delay = int(np.ceil(2.5 * sigma))  # smoothing is centred: samples wait this many frames
        k = np.arange(-self._delay, self._delay + 1)
        g = np.exp(-0.5 * (k / sigma) ** 2)
        self._kernel = (g / g.sum()).astype(np.float64)
        self._fixed_len = max(1, round(cfg.fallback_s * fps))
        self._cap = max(
            # Two of the longest beats (the first waits for the next one's check) and the delay.
            int(np.ceil((2 * 60.0 / cfg.hr_min_bpm + 1.5) * fps)) + 2 * self._delay,
            self._fixed_len + 1,
        )
        self._n_stats = max(8, round(cfg.amplitude_s * fps))
        self._r_memory_s = 60.0 / cfg.hr_min_bpm * 1.5
        self._tpl_off = np.arange(-round(TEMPLATE_BEFORE_S * fps), round(TEMPLATE_AFTER_S * fps) + 1)
        self._early_k = max(1, round(cfg.early_s * fps))
        self._every = max(1, round(cfg.principal_every_s * fps))
        self._beat_source: str | None = None
        self.reset()
        self.counters.resets = 0

    # ----- public ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop all history (after a frame-sequence gap or a view change); counters are kept."""
        self.counters.resets += 1
        self._frames: np.ndarray | None = None  # (cap, H, W) ring, allocated on the first frame
        self._maps = np.zeros((self._cap, SIGNAL_GRID * SIGNAL_GRID), np.float32)  # coverage, same slots
        self._areas = np.zeros(self._cap)  # LV area (the maps' sum), same slots
        self._weights: np.ndarray | None = None  # the principal signal's cell weights; None: the area
        self._seq = np.zeros(self._cap, np.int64)
        self._times = np.zeros(self._cap, np.float64)
        self._n = 0  # frames pushed since reset; frame i (from 0) sits in slot i % cap
        self._seq0 = 0  # frame_seq of frame 0 after reset
        self._raw = np.zeros(self._cap, np.float64)  # signal, same slots as the frames
        self._sm = np.zeros(self._cap)  # smoothed signal, same slots as the frames
        self._smooth = np.zeros(self._n_stats)  # recent smoothed samples (ring; order unused)
        self._resid = np.zeros(self._n_stats)  # recent raw − smoothed
        self._n_smooth = 0
        self._primed = False  # the peak detector has run over the samples of the first swing
        self._rising = False  # hysteresis state: seek a trough first, so a stream starting in
        self._ext_val = np.inf  # ejection does not make its first frame an ED
        self._ext_idx = 0
        self._img_ed: float | None = None  # last accepted ED (frame index since reset, fractional)
        self._r_ed: float | None = None
        self._r_last_t = -np.inf
        self._intervals: list[float] = []  # recent beat lengths (frames), for the locked period
        self._tpl: np.ndarray | None = None  # LV-area template around ED (standardised), at _tpl_off
        self._early_ed: float | None = None  # last ED confirmed early, until the hysteresis sees it
        self._to_learn: float | None = None  # a hysteresis ED whose template end is still to come
        self._held: list[tuple[float, float]] = []  # the first beat, until the next one agrees
        self._last_emit_t: float | None = None  # time of the last beat / fixed window end
        self._fixed_next = 0  # frame index where the next fixed window ends
        self._hr: float | None = None

    @property
    def hr_bpm(self) -> float | None:
        """Latest heart-rate estimate (bpm): median of the recent beats; None in fallback."""
        return self._hr

    @property
    def area(self) -> float:
        """The LV area of the last pushed frame, in cells of the 28×28 grid (16 px² each at 112×112;
        NaN before any): larger = fuller LV."""
        return float(self._areas[(self._n - 1) % self._cap]) if self._n else float("nan")

    @property
    def signal_source(self) -> str:
        """What the detector's signal is now: ``"area"`` or ``"principal"`` (see CycleConfig)."""
        return "area" if self._weights is None else "principal"

    @property
    def beat_source(self) -> str | None:
        """How the latest window was timed (kept across resets): ``"ecg"`` (R waves), ``"area"`` or
        ``"principal"`` (:attr:`signal_source` when it was cut) or ``"fixed"``; None before any."""
        return self._beat_source

    def push(self, frame_seq: int, t: float, pixels: np.ndarray, r_wave: bool = False) -> list[BeatWindow]:
        """Feed one frame ((H, W) uint8, normally 112×112; capture time t in s).

        Returns the windows completed by it: usually none, sometimes one (rarely a beat and a fixed
        window at the switch between them).
        """
        if pixels.ndim != 2:
            raise ValueError(f"pixels must be one (H, W) grayscale frame, got shape {pixels.shape}")
        self.counters.frames_seen += 1
        if self._n and (
            frame_seq != self._seq0 + self._n
            or t <= self._times[(self._n - 1) % self._cap]
            or pixels.shape != self._frames.shape[1:]
        ):
            self.reset()
        if self._frames is None:
            self._frames = np.empty((self._cap, *pixels.shape), np.uint8)
            self._seq0 = frame_seq
            self._last_emit_t = t
            self._fixed_next = self._fixed_len
        i = self._n
        slot = i % self._cap
        self._frames[slot] = pixels
        self._seq[slot], self._times[slot] = frame_seq, t
        earlier = tuple(self._frames[max(i - k, 0) % self._cap] for k in self._lag_k)
        cov = self._net.coverage(pixels, earlier).ravel()
        self._maps[slot], self._areas[slot] = cov, cov.sum()
        self._raw[slot] = self._areas[slot] if self._weights is None else float(cov @ self._weights)
        self._n += 1
        if self.cfg.principal_below_snr > 0 and self._n % self._every == 0 and self._n >= self._n_stats // 2:
            self._choose_signal(i)
        if self._to_learn is not None and self._to_learn + self._tpl_off[-1] <= i:
            self._learn(self._to_learn)
        out: list[BeatWindow] = []
        if self.cfg.use_r_wave and r_wave:
            self._r_last_t = t
            beat = self._on_r_wave(float(i))
            if beat is not None:
                out.append(beat)
        image_gated, had_held = t - self._r_last_t > self._r_memory_s, bool(self._held)
        closed = self._early(i) if self.cfg.early_confirm and image_gated else []
        m = i - self._delay  # the sample whose smoothing window is now complete
        closed += self._on_smoothed(m) if m >= self._delay else []
        for bounds in self._release(closed):
            if i - int(np.floor(bounds[0])) >= self._cap:
                # Confirmed so late (a frozen feed held the signal flat) that the beat's first
                # frames have left the ring: it cannot be cut; the new ED starts the next beat.
                self.counters.rejected_candidates += 1
            elif image_gated:
                out.append(self._window(*bounds, "ed_ed"))
        if out or (self._held and not had_held):  # a held first beat is a beat found: no fallback
            self._last_emit_t = t
            self._fixed_next = i + self._fixed_len
        else:
            fixed = self._fallback(i, t)
            if fixed is not None:
                out.append(fixed)
        return out

    # ----- internals ---------------------------------------------------------------------------
    def _choose_signal(self, i: int) -> None:
        """Area or principal component (CycleConfig.principal_*), from the last amplitude_s of maps up
        to frame i; a new choice or basis re-projects the history (:meth:`_reproject`)."""
        cfg, n = self.cfg, min(self._n, self._n_stats)
        recent = np.arange(i - n + 1, i + 1) % self._cap
        snr_area = swing_snr(self._areas[recent], self._kernel)
        # Hysteresis against flapping: the component must beat the area by principal_gain to take
        # over, and only needs to match it to stay, until the area's SNR is clearly high again.
        on = self._weights is not None
        below = cfg.principal_below_snr * (PRINCIPAL_LEAVE if on else 1.0)
        weights = None
        if snr_area < below:
            v, snr = principal_projection(self._maps[recent], self._kernel)  # maps only when needed
            need = max(cfg.principal_min_snr, snr_area * (1.0 if on else cfg.principal_gain))
            weights = v if snr >= need else None
        if weights is None and self._weights is None:
            return
        if (weights is None) != (self._weights is None):
            # The template and an early ED were of the other signal's shape: relearn from the next beat.
            self.counters.principal_switches += 1
            self._tpl, self._early_ed, self._to_learn = None, None, None
        self._weights = weights
        self._reproject(i)

    def _reproject(self, i: int) -> None:
        """Recompute the signal of every frame in the ring up to frame i with the current weights, and
        what was derived from it: the smoothed samples, the amplitude statistics and the peak
        detector's extremum (so the history stays one signal)."""
        d, first = self._delay, max(0, self._n - self._cap)
        slots = np.arange(first, i + 1) % self._cap
        self._raw[slots] = self._areas[slots] if self._weights is None else self._maps[slots] @ self._weights
        ms = np.arange(max(d, first + d), i - d)  # the smoothed samples so far (push smooths i − d next)
        if not len(ms):
            return
        raw = self._raw[np.arange(ms[0] - d, ms[-1] + d + 1) % self._cap]
        sm = np.convolve(raw, self._kernel, mode="valid")
        self._sm[ms % self._cap] = sm
        last = slice(-self._n_stats, None)  # the statistics' ring holds the last n_stats samples
        self._smooth[(ms[last] - d) % self._n_stats] = sm[last]
        self._resid[(ms[last] - d) % self._n_stats] = raw[d:-d][last] - sm[last]
        if np.isfinite(self._ext_val):
            since = np.arange(max(self._ext_idx, int(ms[0])), int(ms[-1]) + 1)
            vals = self._sm[since % self._cap]
            j = int(np.argmax(vals) if self._rising else np.argmin(vals))
            self._ext_val, self._ext_idx = float(vals[j]), int(since[j])

    def _on_smoothed(self, m: int) -> list[tuple[float, float]]:
        """Smooth sample m and advance the hysteresis peak detector; the beats confirmed EDs close."""
        idx = np.arange(m - self._delay, m + self._delay + 1) % self._cap
        s = float(np.dot(self._raw[idx], self._kernel))
        self._sm[m % self._cap] = s
        k = self._n_smooth % self._n_stats
        self._smooth[k], self._resid[k] = s, self._raw[m % self._cap] - s
        self._n_smooth += 1
        n_stats = min(self._n_smooth, self._n_stats)
        if n_stats < self._n_stats // 2:  # amplitude not yet measurable
            return []
        recent = self._smooth[:n_stats]
        p2p = float(recent.max() - recent.min())
        noise = float(np.sqrt(np.mean(self._resid[:n_stats] ** 2)))
        if p2p <= 0 or p2p < self.cfg.min_snr * noise:
            # No usable beat: forget the last ED, and with it one confirmed early.
            self._rising, self._ext_val, self._img_ed, self._early_ed = False, np.inf, None, None
            self._drop_held()
            return []
        # The first time the swing is known, the samples smoothed while it was being measured go
        # through the peak detector too: the EDs among them are found now, not lost (a stream's
        # first beat comes about one beat sooner).
        history = [] if self._primed else range(m - n_stats + 1, m)
        self._primed = True
        beats = [b for j in history for b in self._peak(j, float(self._sm[j % self._cap]), p2p)]
        return beats + self._peak(m, s, p2p)

    def _peak(self, m: int, s: float, p2p: float) -> list[tuple[float, float]]:
        """The hysteresis peak detector at smoothed sample m (value s, recent peak-to-peak p2p): the
        beats a confirmed ED lets out (:meth:`_on_ed`)."""
        thr = self.cfg.hysteresis * p2p
        if not self._rising:
            if s < self._ext_val:
                self._ext_val, self._ext_idx = s, m
            elif s > self._ext_val + thr:
                self._rising, self._ext_val, self._ext_idx = True, s, m
            return []
        if s > self._ext_val:
            self._ext_val, self._ext_idx = s, m
            return []
        if s >= self._ext_val - thr:
            return []
        # Confirmed: the maximum is the diastolic plateau, whose argmax noise moves around; its end,
        # the onset of ejection, is sharp. ED = where the fall crosses max − knee·p2p, less the lead.
        level = self._ext_val - self.cfg.knee * p2p
        j = m - 1
        while j > self._ext_idx and self._sm[j % self._cap] < level:
            j -= 1
        y0, y1 = self._sm[j % self._cap], self._sm[(j + 1) % self._cap]
        crossing = j + float(y0 - level) / float(y0 - y1) if y0 > y1 else float(j)
        self._rising, self._ext_val, self._ext_idx = False, s, m
        # Ejection lasts ∝ √(beat length) (Weissler; the phantom likewise): so does the lead.
        beat_s = float(np.median(self._intervals)) / self.fps if self._intervals else 1.0
        return self._on_ed(float(crossing - self.cfg.ed_lead_s * np.sqrt(beat_s) * self.fps))

    def _early(self, i: int) -> list[tuple[float, float]]:
        """Early confirmation at raw sample i: the closing ED e is where the template, placed at e,
        best matches the last samples of the signal (Pearson r over the same window of recent samples
        for every candidate: TEMPLATE_BEFORE_S − early_s long, ending now; e in 0.25-frame steps from
        early_s + EARLY_GRACE before now, or the earliest plausible ED, to early_s past now, so an ED
        still to come competes); it is confirmed when that best e lies at least early_s in the past
        (the fall into ejection is under way) and r ≥ early_min_corr. The beats it lets out
        (:meth:`_on_ed`).

        One window for all candidates: a window that began at each candidate's template start held
        fewer samples of ejection the later the candidate, which drew the match late where the
        ejection's fall is small and noisy (low-EF hearts: +1–2 frames at 50 fps)."""
        period = self._period()
        if self._tpl is None or period is None or self._img_ed is None:
            return []
        hi = i - self._early_k
        lo = max(
            self._img_ed + (1 - self.cfg.period_tolerance) * period,
            float(i - min(self._early_k + EARLY_GRACE, self._tpl_off[-1])),
        )
        first = i + int(self._tpl_off[0]) + self._early_k + 1  # the template covers k − e from here
        if hi < lo or first < 0 or i - first >= self._cap:  # too soon, or before the reset / the ring
            return []
        k = np.arange(first, i + 1)
        x = self._raw[k % self._cap]
        best_r, best_e = -np.inf, float(i)
        for e in np.arange(i + self._early_k, lo - 1e-9, -0.25):
            r = pearson(x, np.interp(k - e, self._tpl_off, self._tpl))
            if r > best_r:
                best_r, best_e = r, float(e)
        if best_e > hi or best_r < self.cfg.early_min_corr:
            return []  # the ED is still to come or too recent, or the match is poor: wait
        self._early_ed = best_e
        return self._on_ed(best_e, early=True)

    def _learn(self, ed: float) -> None:
        """Update the template with the signal around a hysteresis-confirmed ED (now, or once the
        signal reaches the template's end: :meth:`push`)."""
        i = self._n - 1
        at = ed + self._tpl_off
        first = int(np.floor(at[0]))
        self._to_learn = ed if at[-1] > i else None
        if at[-1] > i or first < 0 or i - first >= self._cap:
            return
        k = np.arange(first, int(np.ceil(at[-1])) + 1)
        v = np.interp(at, k, self._raw[k % self._cap])
        v = (v - v.mean()) / (v.std() + 1e-9)
        self._tpl = v if self._tpl is None else TEMPLATE_MEMORY * self._tpl + (1 - TEMPLATE_MEMORY) * v

    def _on_ed(self, ed: float, early: bool = False) -> list[tuple[float, float]]:
        """An image-detected ED (fractional frame index since reset; ``early``: from :meth:`_early`):
        the beat it closes, if plausible (a list of none or one)."""
        period = self._period() or np.inf
        same = EARLY_SAME_ED * period
        if not early and self._early_ed is not None and abs(ed - self._early_ed) <= same:
            self._early_ed = None  # the hysteresis confirms an ED already sent early
            self._learn(ed)
            return []
        too_soon = (1 - self.cfg.period_tolerance) * period  # frames after an ED: the next is not due
        if not early and self._early_ed is not None and self._early_ed < ed < self._img_ed + too_soon:
            # The hysteresis finds the ED well after the early one and before the next could be
            # due: the early match was premature (mid-diastole). Its beat is out; the next starts here.
            self._early_ed, self._img_ed = None, ed
            self._intervals = self._intervals[:-1]
            self.counters.early_corrected += 1
            self._learn(ed)
            return []
        prev = self._img_ed
        if prev is None:
            self._img_ed = ed
            return []
        length = ed - prev
        dur = length / self.fps
        if dur < max(self.cfg.refractory_s, 60.0 / self.cfg.hr_max_bpm):
            self.counters.rejected_candidates += 1  # extra peak: keep the earlier ED
            return []
        if not early:
            self._learn(ed)
        if dur > 60.0 / self.cfg.hr_min_bpm:
            self.counters.rejected_candidates += 1  # missed EDs or a pause: restart from this one
            self._img_ed = ed
            return []
        locked, first = self._locked_period(), not self._intervals
        self._intervals = [*self._intervals, length][-5:]
        if locked is not None and abs(length / locked - 1) > self.cfg.period_tolerance:
            self.counters.rejected_candidates += 1
            if length > locked:  # missed ED: the new one starts the next beat
                self._img_ed = ed
            return []
        self._img_ed = ed
        if first and (self._prior is None or abs(length / self._prior - 1) > self.cfg.period_tolerance):
            # Nothing to check its length against (or it disagrees with the stated heart rate):
            # it waits for the next beat (_release).
            self._held = [(prev, ed)]
            return []
        return [(prev, ed)]

    def _release(self, beats: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """The beats to cut now: ``beats`` just closed, preceded by the held first beat of the stream
        if its length agrees with theirs within period_tolerance (else it is rejected)."""
        if not (beats and self._held):
            return beats
        length = beats[0][1] - beats[0][0]
        agree = [b for b in self._held if abs((b[1] - b[0]) / length - 1) <= self.cfg.period_tolerance]
        self._drop_held(kept=len(agree))
        return agree + beats

    def _drop_held(self, kept: int = 0) -> None:
        """Forget the held beats; all but ``kept`` of them count as rejected."""
        self.counters.rejected_candidates += len(self._held) - kept
        self._held = []

    def _on_r_wave(self, i: float) -> BeatWindow | None:
        """An R-wave frame i is an ED; it closes a beat when its length is plausible."""
        prev, self._r_ed = self._r_ed, i
        if prev is None:
            return None
        dur = (i - prev) / self.fps
        if not 60.0 / self.cfg.hr_max_bpm <= dur <= 60.0 / self.cfg.hr_min_bpm:
            self.counters.rejected_candidates += 1
            return None
        self._intervals = [*self._intervals, i - prev][-5:]
        return self._window(prev, i, "r_wave")

    def _period(self) -> float | None:
        """The locked period, or before the lock the one beat seen, or the source's stated heart
        rate's period (frames), else None."""
        return self._locked_period() or (self._intervals[-1] if self._intervals else self._prior)

    def _locked_period(self) -> float | None:
        """Median of the recent beat lengths (frames) once two of them agree, else None."""
        iv = self._intervals[-3:]
        if len(iv) < 2 or (len(iv) == 2 and abs(iv[1] / iv[0] - 1) > self.cfg.period_tolerance):
            return None
        return float(np.median(iv))

    def _window(self, start: float, end: float, how: str) -> BeatWindow:
        """Cut frames [floor(start), ceil(end)] out of the ring as a beat window."""
        # The ring holds 60/hr_min + 1.5 s: a plausible beat plus the confirmation delay always fits.
        first, last = max(int(np.floor(start)), 0), min(int(np.ceil(end)), self._n - 1)
        self._hr = 60.0 * self.fps / float(np.median(self._intervals))
        self.counters.beats_emitted += 1
        return self._cut(first, last, start - first, end - first, 60.0 * self.fps / (end - start), how)

    def _fallback(self, i: int, t: float) -> BeatWindow | None:
        """A fixed window ending at frame i, when no beat has come for fallback_after_s."""
        if self._last_emit_t is None or t - self._last_emit_t < self.cfg.fallback_after_s:
            return None
        if i < self._fixed_next:
            return None
        self._hr, self._intervals = None, []
        self._drop_held()
        self._fixed_next = i + self._fixed_len
        self.counters.fallback_windows += 1
        first = i - self._fixed_len
        return self._cut(first, i, 0.0, float(self._fixed_len), None, "fixed")

    def _cut(self, first: int, last: int, start: float, end: float, hr: float | None, how: str) -> BeatWindow:
        slots = np.arange(first, last + 1) % self._cap
        self._beat_source = {"r_wave": "ecg", "fixed": "fixed"}.get(how, self.signal_source)
        return BeatWindow(
            frames=self._frames[slots],
            start=start,
            end=end,
            frame_seq=(int(self._seq[slots[0]]), int(self._seq[slots[-1]])),
            t=(float(self._times[slots[0]]), float(self._times[slots[-1]])),
            hr_bpm=hr,
            how=how,
        )
