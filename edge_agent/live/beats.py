"""The beat-windowing path, written once: how a source's frames become the model's windows.

The live agent runs it in two processes — the capture (frames through the :class:`Preprocessor`,
:class:`WarmUp` keeping them in order while the sector is found) and the windower (the
:class:`~edge_agent.live.cycles.CycleDetector`'s beats cut by :func:`cut`, the demographics of
:func:`beat_demographics` attached) — and INT8 calibration (:mod:`edge_agent.inference.calibrate`)
runs the same pieces in one loop, so its windows are the ones the agent would send.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import numpy as np

from edge_agent.core.clip import make_clip
from edge_agent.core.demographics import DEMOGRAPHIC_FIELDS
from edge_agent.live.cycles import BeatWindow
from edge_agent.live.preprocess import Preprocessor

# Per-frame values are kept this long after their frame: longer than any beat or fixed window.
FRAME_MEMORY_S = 10.0

M = TypeVar("M")


class WarmUp(Generic[M]):
    """A :class:`Preprocessor` with the frames it holds back: while it looks for the sector a frame
    gives no output, and its ``meta`` (capture time, flags, per-frame values: whatever the caller
    needs with the frame) waits here; once the sector is known the held frames come out with
    theirs, in order, before the frame that completed the warm-up."""

    def __init__(self, pre: Preprocessor) -> None:
        self.pre = pre
        self._held: list[M] = []

    def push(self, pixels: np.ndarray, meta: M) -> list[tuple[M, np.ndarray]]:
        """One native frame and its meta → (meta, (size, size) uint8 frame) of every frame now
        ready, in push order: none while warming up, then the held frames and this one."""
        out = self.pre.push(pixels)
        if out is None:
            self._held.append(meta)
            return []
        ready = list(zip(self._held, self.pre.drain(), strict=True)) if self._held else []
        self._held.clear()
        ready.append((meta, out))
        return ready


def forget_old_frames(values: dict[int, Any], newest: int, fps: float) -> None:
    """Drop from ``values`` (frame number → the demographics then, simulator truth, …) the frames
    more than FRAME_MEMORY_S before frame ``newest``: no beat still to come reaches back to them."""
    oldest = newest - int(FRAME_MEMORY_S * fps)
    for k in [k for k in values if k < oldest]:
        del values[k]


def middle_frame(beat: BeatWindow) -> int:
    """Frame number of a beat's middle frame: the one whose demographics and truth apply to it."""
    return sum(beat.frame_seq) // 2


def beat_demographics(at_middle: Mapping[str, float], default: Mapping[str, float]) -> dict[str, float]:
    """The demographics that apply to a beat: the known (finite) ones of its middle frame's values,
    or, when that frame knew none, ``default`` (those the stream started with)."""
    known = {k: v for k, v in at_middle.items() if k in DEMOGRAPHIC_FIELDS and math.isfinite(v)}
    return known or dict(default)


def cut(beat: BeatWindow) -> np.ndarray:
    """A beat → the model's clip, (32, 112, 112) uint8, by the function the model was trained with."""
    return make_clip(beat.frames, beat.start, beat.end)
