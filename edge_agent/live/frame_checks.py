"""Frame checks: blank, saturated and frozen frames, found per frame, counted, and kept out of windows.

A feed can keep delivering frames that show no heart: the screen goes dark (probe lifted, the
scanner's "no signal" page), the gain is turned up until the image is white, or the image stops
(the scanner's freeze key, a hung frame grabber repeating its last frame). The cycle detector finds
no beat in such frames and, after ``cycles.fallback_after_s``, cuts fixed windows from them — which
would publish an LVEF of a blank screen. So the windower checks every frame it reads
(:func:`check_frame`, pure, ~30 µs on 112 × 112), in this order, the first match winning:

* ``saturated``: at least ``saturated_fraction`` (25 %) of the pixels at ``saturated_level`` (250)
  or above — a white or burnt-out screen (an echo has a few % of bright specular pixels at most);
* ``blank``: under ``blank_bright_fraction`` (1 %) of the pixels brighter than ``dark_level``
  (16 grey levels), or a standard deviation under ``blank_std`` (1 grey level) — a dark or uniform
  screen (an echo sector fills ≥ 15 % of the crop with speckle);
* ``frozen``: identical to the previous frame, in a run lasting at least ``frozen_min_s``
  (0.2 s, and at least 3 repeats). Single repeats are normal — a 25 fps scanner captured at
  50 fps, the duplicated frames of a cine — and are not counted.

:class:`FrameQuality` follows one stream: it counts the frames of each kind, withholds a beat
whose frames are more than ``max_bad_fraction`` (20 %) bad (the window is not sent, counted in
``windows_rejected`` by kind), and gives the stream's signal state: the dominant bad kind when at
least ``state_fraction`` (half) of the last second's frames are bad, else ``"ok"``. The windower
reports all of it on its status (``signal`` ``"blank"``, ``"frozen"`` or ``"saturated"``,
``frames_blank``, ``frames_frozen``, ``frames_saturated``, ``windows_rejected``).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

OK, BLANK, FROZEN, SATURATED = "ok", "blank", "frozen", "saturated"
BAD_KINDS = (BLANK, FROZEN, SATURATED)
REPEAT = "repeat"  # check_frame's answer for a frame identical to the previous one (one repeat ≠ frozen)


@dataclass(frozen=True)
class FrameCheckConfig:
    """Thresholds of the frame checks (grey levels 0–255, fractions of the frame's pixels, s).

    dark_level, blank_bright_fraction: a frame is blank when fewer than this fraction of its
        pixels are brighter than dark_level. blank_std: ... or when its standard deviation is
        below this (a uniform screen of any level).
    saturated_level, saturated_fraction: a frame is saturated when at least this fraction of
        its pixels are at saturated_level or above.
    frozen_min_s: a run of frames identical to their predecessor counts as frozen once it lasts
        this long (and at least 3 repeats).
    max_bad_fraction: a beat with more bad frames than this is not sent.
    state_fraction: share of the last second's frames that must be bad for the signal state to
        say so.
    """

    dark_level: int = 16
    blank_bright_fraction: float = 0.01
    blank_std: float = 1.0
    saturated_level: int = 250
    saturated_fraction: float = 0.25
    frozen_min_s: float = 0.2
    max_bad_fraction: float = 0.2
    state_fraction: float = 0.5

    def __post_init__(self) -> None:
        for name in ("blank_bright_fraction", "saturated_fraction", "max_bad_fraction", "state_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: must be a fraction in [0, 1], got {value}")
        if not (0 <= self.dark_level <= 255 and 0 <= self.saturated_level <= 255):
            raise ValueError("dark_level and saturated_level: must be grey levels in [0, 255]")
        if not (math.isfinite(self.frozen_min_s) and self.frozen_min_s >= 0 and self.blank_std >= 0):
            raise ValueError("frozen_min_s and blank_std: must be finite and >= 0")


def check_frame(pixels: np.ndarray, previous: np.ndarray | None, cfg: FrameCheckConfig) -> str:
    """One frame's kind: ``"saturated"``, ``"blank"``, ``"repeat"`` (identical to ``previous``) or
    ``"ok"`` (see the module docstring for the rules and their order).

    pixels, previous: (H, W) uint8 grayscale frames (previous None for the first frame).
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"check_frame: expected an (H, W) uint8 frame, got {pixels.dtype} {pixels.shape}")
    n = pixels.size
    if np.count_nonzero(pixels >= cfg.saturated_level) >= cfg.saturated_fraction * n:
        return SATURATED
    if np.count_nonzero(pixels > cfg.dark_level) < cfg.blank_bright_fraction * n:
        return BLANK
    if float(pixels.std()) < cfg.blank_std:
        return BLANK
    if previous is not None and previous.shape == pixels.shape and np.array_equal(previous, pixels):
        return REPEAT
    return OK


class FrameQuality:
    """Frame checks of one stream, frame by frame (see the module docstring).

    fps: the stream's frame rate, frames/s (sets the frozen run length and the one-second state).
    Counters: ``frames`` (kind → frames of that kind since start), ``rejected`` (kind → windows
    withheld because of it).
    """

    def __init__(self, fps: float, cfg: FrameCheckConfig | None = None) -> None:
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps: must be a positive frame rate, got {fps}")
        self.cfg = cfg or FrameCheckConfig()
        self.frozen_min_run = max(3, math.ceil(self.cfg.frozen_min_s * fps))
        self._state_frames = max(1, round(fps))
        # Bad frames are remembered long enough for any beat (≥ 35 bpm) or fixed window to be judged.
        self._horizon = max(64, round(10 * fps))
        self.frames: Counter[str] = Counter({kind: 0 for kind in BAD_KINDS})
        self.rejected: Counter[str] = Counter({kind: 0 for kind in BAD_KINDS})
        self._bad: dict[int, str] = {}  # frame_seq → kind, for the last _horizon frames
        self._previous: np.ndarray | None = None
        self._run: list[int] = []  # frame_seqs of the current run of repeats
        self._last_seq: int | None = None

    def reset(self) -> None:
        """The next frame does not follow the last one (a sequence gap): it is not compared with it."""
        self._previous = None
        self._run = []

    def push(self, frame_seq: int, pixels: np.ndarray) -> str:
        """Check the next frame ((H, W) uint8, frame numbers increasing); returns its kind, ``"ok"``
        or one of BAD_KINDS. A repeat is ``"ok"`` until its run is long enough to be frozen; then
        the whole run is counted frozen."""
        kind = check_frame(pixels, self._previous, self.cfg)
        self._previous = pixels
        self._last_seq = frame_seq
        if kind == REPEAT:
            self._run.append(frame_seq)
            if len(self._run) < self.frozen_min_run:
                kind = OK
            else:
                kind = FROZEN
                # The run just became long enough: its earlier frames were frozen too.
                for seq in self._run[:-1] if len(self._run) == self.frozen_min_run else ():
                    self._mark(seq, FROZEN)
        else:
            self._run = []
        if kind != OK:
            self._mark(frame_seq, kind)
        if len(self._bad) > 2 * self._horizon:
            oldest = frame_seq - self._horizon
            self._bad = {seq: k for seq, k in self._bad.items() if seq >= oldest}
        return kind

    def _mark(self, frame_seq: int, kind: str) -> None:
        self._bad[frame_seq] = kind
        self.frames[kind] += 1

    def _dominant(self, first: int, last: int) -> tuple[int, str | None]:
        """(bad frames among frame_seq first..last, their most common kind or None)."""
        kinds = Counter(self._bad[s] for s in range(first, last + 1) if s in self._bad)
        if not kinds:
            return 0, None
        return sum(kinds.values()), kinds.most_common(1)[0][0]

    def withhold(self, frame_seq: tuple[int, int]) -> str | None:
        """Judge a beat spanning frame_seq (first, last): the bad kind that rules it out (counted
        in ``rejected``), or None when it may be sent."""
        first, last = frame_seq
        n_bad, kind = self._dominant(first, last)
        if kind is None or n_bad <= self.cfg.max_bad_fraction * (last - first + 1):
            return None
        self.rejected[kind] += 1
        return kind

    def state(self) -> str:
        """``"ok"``, or the dominant bad kind when at least state_fraction of the last second's
        frames were bad."""
        if self._last_seq is None:
            return OK
        first = self._last_seq - self._state_frames + 1
        n_bad, kind = self._dominant(first, self._last_seq)
        if kind is None or n_bad < self.cfg.state_fraction * self._state_frames:
            return OK
        return kind

    @property
    def windows_rejected(self) -> int:
        """Windows withheld since start, all kinds."""
        return sum(self.rejected.values())
