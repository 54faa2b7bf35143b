"""The beat-windowing path, written once: how a source's frames become the model's windows.

The live agent runs it in two processes — the capture (frames through the :class:`Preprocessor`,
:class:`WarmUp` keeping them in order while the sector is found) and the windower (the
:class:`~edge_agent.live.cycles.CycleDetector`'s beats cut by :func:`cut`, the demographics of
:func:`beat_demographics` attached) — and INT8 calibration (:mod:`edge_agent.inference.calibrate`)
and the evaluation of recorded files (:mod:`edge_agent.ml.evaluate`) run the same pieces in one
loop (:func:`source_windows`), so their windows are the ones the agent would send.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np
from tqdm import tqdm

from edge_agent.core.clip import CLIP_SIZE, make_clip
from edge_agent.core.demographics import DEMOGRAPHIC_FIELDS, demographics_vector
from edge_agent.live.cycles import BeatWindow, CycleConfig, CycleDetector
from edge_agent.live.preprocess import Preprocessor
from edge_agent.live.sources import FrameSource, open_source

# Per-frame values are kept this long after their frame: longer than any beat or fixed window.
FRAME_MEMORY_S = 10.0
# Frames one source may take at most per window asked for (a source that never yields beats or
# fixed windows must not loop for ever; fixed windows come every 1 s after 3 s of nothing).
MAX_FRAMES_PER_WINDOW = 500


class NoBeatsError(RuntimeError):
    """A source played many frames and gave no window; the message names it and what to check."""


class SourceWindow(NamedTuple):
    """One window cut from a source: clip (32, 112, 112) uint8, demo (4,) float32, mask (4,) bool,
    the detector's beat rule (ed_ed, r_wave, fixed) and the heart rate (bpm, NaN when unknown)."""

    clip: np.ndarray
    demo: np.ndarray
    mask: np.ndarray
    how: str
    hr_bpm: float


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


class PlayedFrame(NamedTuple):
    """A source's frame as the capture hands it on: its index in the file (from 0), media time t (s),
    R-wave marker, the source's demographics when it was read, and the (112, 112) uint8 frame."""

    index: int
    t: float
    r_wave: bool
    demo: dict[str, float]
    pixels: np.ndarray


def played_frames(source: FrameSource, warmup_frames: int) -> Iterator[PlayedFrame]:
    """The capture's path over an opened source (:class:`Preprocessor` with ``warmup_frames`` to find
    the sector, :class:`WarmUp` keeping the held frames in order), until the source ends."""
    warm: WarmUp[tuple[int, float, bool, dict[str, float]]] = WarmUp(
        Preprocessor(region="auto", size=CLIP_SIZE, warmup_frames=warmup_frames)
    )
    k = 0
    while (frame := source.read()) is not None:
        for meta, pixels in warm.push(frame.pixels, (k, frame.t, frame.r_wave, dict(source.demographics))):
            yield PlayedFrame(*meta, pixels)
        k += 1


def source_windows(
    uri: str,
    *,
    limit: int | None,
    cycles: CycleConfig,
    warmup_frames: int,
    fps: float | None = None,
    demographics: Mapping[str, float] | None = None,
    desc: str = "",
) -> Iterator[SourceWindow]:
    """Windows of one source as the live agent cuts them, in one loop (calibration, evaluation).

    The capture's path (:func:`played_frames`) feeds the windower's (CycleDetector → :func:`cut`,
    the demographics of the beat's middle frame by :func:`beat_demographics`). ``fps`` and
    ``demographics`` override the file's, as a stream's YAML does. Files end at their last frame
    (no looping); endless sources stop after ``limit`` windows, and raise :class:`NoBeatsError` when
    MAX_FRAMES_PER_WINDOW frames per window asked for gave none.
    """
    source = open_source(uri, loop=False, fps=fps, demographics=demographics)
    source.open()
    try:
        opened = dict(source.demographics)  # what the capture's ring info would say
        detector = CycleDetector(cycles, source.fps, source.hr_bpm)
        demo_at: dict[int, dict[str, float]] = {}  # frame index → the source's demographics then
        taken = 0
        max_frames = None if limit is None else MAX_FRAMES_PER_WINDOW * limit
        bar = tqdm(total=limit, desc=desc or uri, unit="window", leave=False)
        for frame in played_frames(source, warmup_frames):
            if limit is not None and taken >= limit:
                break
            if max_frames is not None and frame.index >= max_frames:
                raise NoBeatsError(
                    f"{uri}: {frame.index} frames gave only {taken} of {limit} windows; the detector finds "
                    "no beats and no fixed windows in it — check the source plays a moving echo"
                )
            demo_at[frame.index] = frame.demo
            for beat in detector.push(frame.index, frame.t, frame.pixels, frame.r_wave):
                demo = beat_demographics(demo_at.get(middle_frame(beat), {}), opened)
                values, mask = demographics_vector(**demo)
                hr = np.nan if beat.hr_bpm is None else beat.hr_bpm
                yield SourceWindow(cut(beat), values, mask, beat.how, hr)
                taken += 1
                bar.update()
            forget_old_frames(demo_at, frame.index, source.fps)
        bar.close()
    finally:
        source.close()
