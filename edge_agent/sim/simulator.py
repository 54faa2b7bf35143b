"""The simulator's entry points, for both generations: draw a case, build its renderer, render cines.

Generation 1 (:mod:`edge_agent.sim.phantom`, the default: the shipped model was trained on it) and
generation 2 (:mod:`edge_agent.sim.phantom2`, real-echo image statistics and wide domain
randomisation) share the physiology and the labels; ``CaseParams.generation`` says which renderer a
case gets. Every random choice comes from one ``numpy.random.Generator``.
"""

from __future__ import annotations

import math

import numpy as np

from edge_agent.core.clip import WindowErrors, perturbed_bounds
from edge_agent.sim.phantom import CaseParams, EchoPhantom, SimClip, draw_case1, label_clip
from edge_agent.sim.phantom2 import EchoPhantom2, draw_case2

GENERATIONS = (1, 2)


def draw_case(
    rng: np.random.Generator,
    ef: float | None = None,
    hr_bpm: float | None = None,
    fps: float | None = None,
    quality: str | None = None,
    pediatric: bool = False,
    generation: int = 1,
) -> CaseParams:
    """Draw a plausible patient and acquisition of ``generation``; any argument given is used as is
    (:func:`edge_agent.sim.phantom.draw_case1`, :func:`edge_agent.sim.phantom2.draw_case2`)."""
    if generation not in GENERATIONS:
        raise ValueError(f"generation must be 1 or 2, got {generation!r}")
    draw = draw_case1 if generation == 1 else draw_case2
    return draw(rng, ef=ef, hr_bpm=hr_bpm, fps=fps, quality=quality, pediatric=pediatric)


def make_phantom(
    case: CaseParams, seed: int | np.random.Generator, duration_s: float = 3600.0
) -> EchoPhantom:
    """The renderer of ``case.generation``: :class:`EchoPhantom` (1) or ``phantom2.EchoPhantom2`` (2)."""
    if case.generation == 2:
        return EchoPhantom2(case, seed, duration_s)
    return EchoPhantom(case, seed, duration_s)


def simulate_clip(
    case: CaseParams,
    seed: int | np.random.Generator,
    n_frames: int | None = None,
    n_beats: float | None = None,
    start_phase: float | None = None,
) -> SimClip:
    """Simulate a cine of ``n_frames`` frames (or ``n_beats`` beats) starting at a random phase.

    Labels: every complete beat in the clip (its ED frame and the next ED frame both inside) gets
    its ED/ES frame (nearest frame to the true instant) and its EF/EDV/ESV by Simpson's method on the
    rendered contours at the true ED and ES instants.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    phantom = make_phantom(case, rng, duration_s=60.0)
    rr = 60.0 / case.hr_bpm
    if n_frames is None:
        n_beats = 3.0 if n_beats is None else n_beats
        if n_beats <= 0:
            raise ValueError(f"n_beats must be positive, got {n_beats}")
        n_frames = round(n_beats * rr * case.fps)
    phase = float(rng.uniform(0, 1)) if start_phase is None else start_phase
    t0 = phantom.beats[1].t_ed + phase * phantom.beats[1].rr
    times = t0 + np.arange(n_frames) / case.fps
    frames, contours = phantom.render(times)
    return label_clip(phantom, frames, contours, times)


def simulate_beat(case: CaseParams, seed: int | np.random.Generator, jitter_frames: int = 1):
    """Frames of just over one beat, for training: (frames, start, end, clip) with ED→ED bounds.

    The bounds are the nearest frames to the true ED instants, moved by up to ``jitter_frames`` as a
    live detector would be off; ``clip`` is the labelled :class:`SimClip` (``clip.beat_ef[0]`` is the
    beat's Simpson EF in %).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    phantom = make_phantom(case, rng, duration_s=6.0)
    beat = phantom.beats[1]
    fps = case.fps
    pad = jitter_frames + 1
    t0 = beat.t_ed - pad / fps
    n = math.ceil(beat.rr * fps) + 2 * pad + 1
    times = t0 + np.arange(n) / fps
    frames, contours = phantom.render(times)
    clip = label_clip(phantom, frames, contours, times)
    start = clip.ed_frames[0] + int(rng.integers(-jitter_frames, jitter_frames + 1))
    end = start + round(beat.rr * fps) + int(rng.integers(-jitter_frames, jitter_frames + 1))
    return frames, start, min(end, n), clip


def simulate_window(case: CaseParams, seed: int | np.random.Generator, errors: WindowErrors):
    """One beat cut as a live windower may cut it, for training: (frames, start, end, clip, kind).

    The beat is the phantom's second (ED to next ED, ``clip.beat_ef[0]`` its Simpson EF in %); the
    window's bounds (frame indices into ``frames``) come from :func:`perturbed_bounds`, and
    ``frames`` cover the whole beat and the whole window.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    phantom = make_phantom(case, rng, duration_s=12.0)
    beat = phantom.beats[1]
    fps = case.fps
    pad = errors.jitter_frames + 1
    period = beat.rr * fps
    start, end, kind = perturbed_bounds(pad, pad + period, rng, errors)
    n = max(math.ceil(end), math.ceil(pad + period) + pad) + 2
    times = beat.t_ed - pad / fps + np.arange(n) / fps
    frames, contours = phantom.render(times)
    return frames, start, min(end, n - 1.0), label_clip(phantom, frames, contours, times), kind
