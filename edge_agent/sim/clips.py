"""Simulator-backed datasets: beats drawn on the fly by the phantom, cut with the one clip function.

Every example is (clip (32, 112, 112) uint8, EF %, demographics (4,), mask (4,), quality); the
example with index i of a set with seed s is generated from ``SeedSequence([s, i])``, so a set is
reproducible element by element and sets with different seeds never share a clip.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass, fields

import numpy as np
from tqdm import tqdm

from edge_agent.core.clip import CLIP_FRAMES, WindowErrors, beat_sample_times, make_clip
from edge_agent.core.demographics import demographics_vector
from edge_agent.core.sample import ClipSample
from edge_agent.sim.phantom import QUALITIES, Demographics
from edge_agent.sim.simulator import draw_case, simulate_beat, simulate_window


def case_demographics(demo: Demographics) -> tuple[np.ndarray, np.ndarray]:
    """Simulated patient → the loaders' (values (4,) float32, known mask (4,) bool)."""
    sex = None if demo.sex is None else float(demo.sex == "M")
    return demographics_vector(demo.age, sex, demo.weight, demo.height)


def synthetic_example(
    seed: int,
    index: int,
    quality: str | None = None,
    pediatric: bool = False,
    generation: int = 1,
    window_errors: WindowErrors | None = None,
) -> ClipSample:
    """One simulated beat as a :class:`ClipSample` (the same contract as the real-data loaders).

    ``generation`` picks the simulator (1, the default, or 2: :mod:`edge_agent.sim.phantom2`).
    With ``window_errors`` the beat is cut as a live windower may cut it (``beat_how`` names the
    error: jitter, double, half, phase); its label stays the beat's EF, and ``lv_area`` is then
    relative to the window's largest LV area (its ED) instead of its first frame.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    case = draw_case(rng, quality=quality, pediatric=pediatric, generation=generation)
    if window_errors is None:
        frames, start, end, clip = simulate_beat(case, rng)
        how = "ed_ed"
    else:
        frames, start, end, clip, how = simulate_window(case, rng, window_errors)
    values, mask = case_demographics(case.demographics)
    x, y = clip.contours[..., 0], clip.contours[..., 1]
    area = 0.5 * np.abs((x * np.roll(y, -1, 1) - y * np.roll(x, -1, 1)).sum(1))  # shoelace, px²
    curve = np.interp(beat_sample_times(start, end), np.arange(len(area)), area)
    return ClipSample(
        clip=make_clip(frames, start, end),
        ef=float(clip.beat_ef[0]),
        demographics=values,
        demo_mask=mask,
        quality=case.quality,
        name=f"sim_{seed}_{index:06d}",
        beat_how=how,
        lv_area=(curve / (curve[0] if window_errors is None else curve.max())).astype(np.float32),
    )


def is_perturbed(index: int, share: float) -> bool:
    """Whether example ``index`` of a set is cut with window errors: a low-discrepancy choice (the
    golden-ratio sequence), so any run of examples holds close to ``share`` of them."""
    return (index * 0.6180339887498949) % 1.0 < share


@dataclass
class ClipArrays:
    """A materialised set of beats (synthetic, or any loader via :meth:`from_dataset`).

    clips (N, 32, 112, 112) uint8, ef (N,) %, demo (N, 4), mask (N, 4) bool, quality (N,) index into
    QUALITIES (-1 unknown), lv_area (N, 32) LV area relative to ED (NaN where unknown).
    """

    clips: np.ndarray
    ef: np.ndarray
    demo: np.ndarray
    mask: np.ndarray
    quality: np.ndarray
    lv_area: np.ndarray

    def save(self, path: str) -> None:
        np.savez(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: str) -> ClipArrays:
        with np.load(path) as z:
            return cls(**{f.name: z[f.name] for f in fields(cls)})

    def __len__(self) -> int:
        return len(self.ef)

    def take(self, idx: np.ndarray) -> ClipArrays:
        """The beats at ``idx``, in that order."""
        return ClipArrays(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @classmethod
    def concat(cls, parts: list[ClipArrays]) -> ClipArrays:
        """One set of every part's beats, in order."""
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    @classmethod
    def ungraded(cls, clips: np.ndarray, ef: np.ndarray, demo: np.ndarray, mask: np.ndarray) -> ClipArrays:
        """Clips (N, 32, 112, 112) uint8 with their EF (N,) %, demo (N, 4), mask (N, 4) and neither an
        image-quality grade nor an LV-area curve (windows cut from recordings or transformed)."""
        n = len(clips)
        no_area = np.full((n, CLIP_FRAMES), np.nan, np.float32)
        return cls(clips, np.asarray(ef, np.float32), demo, mask, np.full(n, -1, np.int8), no_area)

    @classmethod
    def from_dataset(cls, ds, desc: str = "reading") -> ClipArrays:
        """Read every sample of a loader (EchoNet, Pediatric, CAMUS) into memory, with a progress bar.

        Quality levels the dataset does not grade are stored as -1.
        """
        n = len(ds)
        out = cls(
            np.empty((n, 32, 112, 112), np.uint8),
            np.empty(n, np.float32),
            np.empty((n, 4), np.float32),
            np.empty((n, 4), bool),
            np.full(n, -1, np.int8),
            np.full((n, 32), np.nan, np.float32),
        )
        for i in tqdm(range(n), desc=desc, unit="clip"):
            s = ds[i]
            out.clips[i], out.ef[i], out.demo[i], out.mask[i] = s.clip, s.ef, s.demographics, s.demo_mask
            if s.quality is not None:
                out.quality[i] = QUALITIES.index(s.quality)
            if s.lv_area is not None:
                out.lv_area[i] = s.lv_area
        return out


def _work(args: tuple[int, int, str | None, bool, int, WindowErrors | None]) -> ClipSample:
    return synthetic_example(*args)


def generate(
    n: int,
    seed: int,
    balanced_quality: bool = True,
    pediatric: bool = False,
    workers: int = 2,
    desc: str = "simulating",
    generation: int = 1,
    window_errors: WindowErrors | None = None,
    perturbed_share: float = 0.0,
) -> ClipArrays:
    """Simulate n beats with a progress bar; ``balanced_quality`` cycles good/medium/poor in equal parts;
    ``generation`` picks the simulator (1, the default, or 2); ``perturbed_share`` of the beats
    (:func:`is_perturbed`) are cut with ``window_errors``, the rest exactly ED→ED."""
    if perturbed_share > 0 and window_errors is None:
        raise ValueError("perturbed_share > 0 needs window_errors (how the windows are to be cut)")
    jobs = [
        (
            seed,
            i,
            QUALITIES[i % 3] if balanced_quality else None,
            pediatric,
            generation,
            window_errors if is_perturbed(i, perturbed_share) else None,
        )
        for i in range(n)
    ]
    clips = np.empty((n, 32, 112, 112), np.uint8)
    ef = np.empty(n, np.float32)
    demo = np.empty((n, 4), np.float32)
    mask = np.empty((n, 4), bool)
    quality = np.empty(n, np.int8)
    lv_area = np.empty((n, 32), np.float32)
    # fork: workers inherit the imported simulator (no re-import of __main__); they use numpy and
    # OpenCV only, never torch threads.
    ctx = mp.get_context("fork") if workers > 1 else None
    pool = ctx.Pool(workers) if ctx else None
    try:
        it = pool.imap(_work, jobs, chunksize=8) if pool else map(_work, jobs)
        for i, s in enumerate(tqdm(it, total=n, desc=desc, unit="clip")):
            clips[i], ef[i], demo[i], mask[i] = s.clip, s.ef, s.demographics, s.demo_mask
            quality[i] = QUALITIES.index(s.quality)
            lv_area[i] = s.lv_area
    finally:
        if pool:
            pool.close()
            pool.join()
    return ClipArrays(clips, ef, demo, mask, quality, lv_area)
