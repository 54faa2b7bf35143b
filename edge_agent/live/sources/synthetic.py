"""``synthetic://`` — the embedded simulator as an endless live feed that knows its ground truth.

Query parameters (all optional)::

    ef         EF % in [5, 90], or random (default; drawn per patient like the training set)
    hr         heart rate bpm in [40, 170], or random (default)
    quality    good | medium | poor | random (default)
    fps        frames/s, default 50
    seed       int >= 0, default 0: a seed fixes every frame and every truth value
    hrv        relative RR variability (std) in [0, 0.3]; default the drawn case's
    pediatric  0 | 1, default 0
    gen        simulator generation 1 (default: what the shipped model was trained on) | 2 (the
               realistic image chain of edge_agent.sim.phantom2; ≈ 5 ms of CPU per frame)
    patient_s  seconds after which a new random patient is drawn (the probe moves to another
               patient); 0 = never, the default. Parameters given above hold for every patient.
    ecg        0 | 1, default 0: 1 simulates the ECG lead of an echo machine, whose R wave marks
               end-diastole: ``r_wave`` is True on each beat's ED frame (as a DICOM R Wave Pointer
               would mark it). 0: no ECG, the agent finds EDs from the images.
    loop_s     0 (default: render every frame live) or ≥ 1: render about this many seconds once,
               cut at an end-diastole, then replay them in a loop like a recorded cine (truth
               included; beat numbers keep counting). Rendering costs ≈ 4 ms of CPU per frame, a
               fifth of a core per 50 fps stream: benchmarks loop so the simulator does not compete
               with the agent they measure.
    outage_every_s, outage_s
               fault injection, both 0 by default: during the last ``outage_s`` of every
               ``outage_every_s`` seconds of the host's monotonic clock ``read`` raises
               SourceError, as a live source does while its cable is pulled; once it is back,
               reopening starts the feed afresh.

Frames are the phantom's 112×112 uint8, rendered one per read at t = k / fps. The true
end-diastole is always in ``truth["ed"]``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from edge_agent.core.demographics import DEMOGRAPHIC_FIELDS
from edge_agent.live.sources.base import FrameSource, SourceError, SourceFrame, check_fps
from edge_agent.sim.clips import case_demographics
from edge_agent.sim.phantom import QUALITIES, CaseParams, EchoPhantom, simpson_volume
from edge_agent.sim.simulator import draw_case, make_phantom

# One phantom covers this long a stretch; then a fresh phantom of the same case continues (a 1-hour
# phantom builds in ~0.1 s, its beat list is the only thing that grows with the duration).
SEGMENT_S = 3600.0
EF_RANGE = (5.0, 90.0)  # the phantom clips per-beat EF to 5–90 %
HR_RANGE = (40.0, 170.0)  # the phantom clips RR to 0.35–1.6 s
HRV_MAX = 0.3
PARAMS = (
    "ef",
    "hr",
    "quality",
    "fps",
    "seed",
    "hrv",
    "pediatric",
    "gen",
    "patient_s",
    "ecg",
    "loop_s",
    "outage_every_s",
    "outage_s",
)


@dataclass(frozen=True)
class SyntheticParams:
    """A parsed ``synthetic://`` URI; None = drawn at random per patient (hrv: the case's own)."""

    ef: float | None = None
    hr_bpm: float | None = None
    quality: str | None = None
    fps: float = 50.0
    seed: int = 0
    hrv: float | None = None
    pediatric: bool = False
    patient_s: float = 0.0
    ecg: bool = False
    loop_s: float = 0.0
    outage_every_s: float = 0.0
    outage_s: float = 0.0
    generation: int = 1  # simulator generation (``gen``)


def _number(uri: str, key: str, raw: str, lo: float, hi: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and lo <= value <= hi):
        raise SourceError(f"{uri}: {key}={raw!r} must be a number in [{lo:g}, {hi:g}]")
    return value


def parse_synthetic_uri(uri: str) -> SyntheticParams:
    """``synthetic://?ef=35&hr=72...`` → :class:`SyntheticParams`; SourceError names a bad parameter."""
    parts = urlsplit(uri.strip())
    if parts.scheme.lower() != "synthetic":
        raise SourceError(f"{uri}: not a synthetic:// URI")
    if parts.netloc or parts.path not in ("", "/"):
        raise SourceError(f"{uri}: synthetic:// takes only query parameters, e.g. synthetic://?ef=35&hr=72")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    keys = [k for k, _ in pairs]
    unknown = sorted(set(keys) - set(PARAMS))
    if unknown:
        raise SourceError(f"{uri}: unknown parameter(s) {unknown}; valid are {list(PARAMS)}")
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise SourceError(f"{uri}: parameter(s) {repeated} given more than once; keep one of each")
    q = {k: v.strip() for k, v in pairs}
    out = SyntheticParams()
    if q.get("ef", "random").lower() != "random":
        out = dataclasses.replace(out, ef=_number(uri, "ef", q["ef"], *EF_RANGE))
    if q.get("hr", "random").lower() != "random":
        out = dataclasses.replace(out, hr_bpm=_number(uri, "hr", q["hr"], *HR_RANGE))
    quality = q.get("quality", "random").lower()
    if quality != "random":
        if quality not in QUALITIES:
            raise SourceError(f"{uri}: quality={q['quality']!r} must be one of {[*QUALITIES, 'random']}")
        out = dataclasses.replace(out, quality=quality)
    if "fps" in q:
        out = dataclasses.replace(
            out, fps=check_fps(_number(uri, "fps", q["fps"], 0, math.inf), uri, "fix fps=")
        )
    if "seed" in q:
        if not re.fullmatch(r"[0-9]+", q["seed"]):
            raise SourceError(f"{uri}: seed={q['seed']!r} must be a non-negative integer")
        out = dataclasses.replace(out, seed=int(q["seed"]))
    if "hrv" in q:
        out = dataclasses.replace(out, hrv=_number(uri, "hrv", q["hrv"], 0.0, HRV_MAX))
    if "gen" in q:
        if q["gen"] not in ("1", "2"):
            raise SourceError(f"{uri}: gen={q['gen']!r} must be 1 or 2")
        out = dataclasses.replace(out, generation=int(q["gen"]))
    for flag in ("pediatric", "ecg"):
        if flag in q:
            if q[flag] not in ("0", "1"):
                raise SourceError(f"{uri}: {flag}={q[flag]!r} must be 0 or 1")
            out = dataclasses.replace(out, **{flag: q[flag] == "1"})
    for key, meaning in (("patient_s", "never"), ("loop_s", "render live")):
        if key in q:
            value = _number(uri, key, q[key], 0.0, math.inf)
            if 0 < value < 1.0:
                raise SourceError(f"{uri}: {key}={value:g} must be 0 ({meaning}) or at least 1 s")
            out = dataclasses.replace(out, **{key: value})
    for key in ("outage_every_s", "outage_s"):
        if key in q:
            out = dataclasses.replace(out, **{key: _number(uri, key, q[key], 0.0, math.inf)})
    given = (out.outage_s > 0, out.outage_every_s > 0)
    if given[0] != given[1] or out.outage_s >= out.outage_every_s > 0:
        raise SourceError(
            f"{uri}: outage_s={out.outage_s:g} and outage_every_s={out.outage_every_s:g}: give both, "
            "with 0 < outage_s < outage_every_s (or neither)"
        )
    if out.loop_s > 0 and out.patient_s > 0:  # a loop replays frames, not the patients' demographics
        raise SourceError(f"{uri}: loop_s and patient_s exclude each other: a loop replays one patient")
    return out


class SyntheticSource(FrameSource):
    """The simulator as a source: endless, deterministic for a seed, with per-frame truth.

    truth per frame: ``ef`` Simpson EF (%) of the beat containing the frame (as
    :func:`edge_agent.sim.phantom.label_clip` measures it); ``beat`` global beat index (increasing, also
    across patients); ``ed`` 1.0 on the frame nearest a beat's end-diastole, else 0.0; ``patient``
    patient index. A beat starts at its ED frame. ``demographics`` follow the current patient.
    """

    live = False

    def __init__(
        self, uri: str, *, fps: float | None = None, demographics: Mapping[str, float] | None = None
    ) -> None:
        super().__init__(uri, demographics)
        self.params = parse_synthetic_uri(uri)
        if fps is not None:
            self.params = dataclasses.replace(self.params, fps=check_fps(fps, uri, "fix the fps setting"))
        self.fps = self.params.fps
        self._rng: np.random.Generator | None = None

    def _check_outage(self) -> None:
        """Raise SourceError inside a simulated outage (see outage_every_s in the module docstring)."""
        p = self.params
        if p.outage_s and time.monotonic() % p.outage_every_s >= p.outage_every_s - p.outage_s:
            raise SourceError(
                f"{self.uri}: simulated signal loss ({p.outage_s:g} s of every {p.outage_every_s:g} s)"
            )

    def open(self) -> None:
        self._rng = np.random.default_rng(self.params.seed)
        self._case: CaseParams | None = None
        self._k = 0  # global frame index
        self._patient = -1
        self._beat_offset = 0  # global index of the current phantom's first beat
        seg_s = self.params.patient_s or SEGMENT_S
        # Segments start on a frame, so a new phantom's first ED is exactly a frame.
        self._seg_frames = max(1, round(seg_s * self.fps))
        self._seg_start = 0
        self._phantom: EchoPhantom | None = None
        self._loop: list[SourceFrame] | None = None
        self._loop_beats = 0
        if self.params.loop_s > 0:  # render now: open() is the stage's start, before frames flow
            self._record_loop()

    def _new_segment(self) -> None:
        """Start the next phantom: a new patient when patient_s is set (or at first), else the same case."""
        p, rng = self.params, self._rng
        if self._phantom is not None:
            self._beat_offset += len(self._ed_frames)
            self._seg_start += self._seg_frames
        if self._case is None or p.patient_s > 0:
            case = draw_case(
                rng,
                ef=p.ef,
                hr_bpm=p.hr_bpm,
                fps=self.fps,
                quality=p.quality,
                pediatric=p.pediatric,
                generation=p.generation,
            )
            if p.hrv is not None:
                case = dataclasses.replace(case, hrv=p.hrv)
            self._case = case
            self._patient += 1
            values, mask = case_demographics(case.demographics)
            self._set_source_demographics(
                {
                    name: float(v)
                    for name, v, known in zip(DEMOGRAPHIC_FIELDS, values, mask, strict=True)
                    if known
                }
            )
        self._phantom = make_phantom(self._case, rng, duration_s=self._seg_frames / self.fps)
        # A beat's ED frame is the frame nearest its t_ed; beats whose ED falls past the segment are cut.
        ed = np.array([round(b.t_ed * self.fps) for b in self._phantom.beats])
        self._ed_frames = ed[ed < self._seg_frames]
        self._beat_ef: dict[int, float] = {}

    def _ef(self, k: int) -> float:
        """Simpson EF (%) of the current phantom's beat k, cached: computed as label_clip does."""
        if k not in self._beat_ef:
            ph = self._phantom
            beat = ph.beats[k]
            edv = simpson_volume(ph.contour_px(beat.t_ed, 96) / ph.px_per_cm)[0]
            esv = simpson_volume(ph.contour_px(beat.t_es, 96) / ph.px_per_cm)[0]
            self._beat_ef[k] = 100.0 * (edv - esv) / edv
        return self._beat_ef[k]

    def read(self) -> SourceFrame:
        if self._rng is None:
            raise SourceError(f"{self.uri}: read() before open(); use `with open_source(uri) as src:`")
        self._check_outage()
        if self._loop is None:
            return self._render()
        k = self._k
        self._k += 1
        lap, frame = divmod(k, len(self._loop))
        recorded = self._loop[frame]
        truth = {**recorded.truth, "beat": recorded.truth["beat"] + lap * self._loop_beats}
        return dataclasses.replace(recorded, t=k / self.fps, truth=truth)

    def _record_loop(self) -> None:
        """Render loop_s seconds, up to (not including) the first ED after them: the loop starts
        on the stream's first frame, an ED, so every lap is whole beats."""
        frames = [self._render()]
        while len(frames) < self.params.loop_s * self.fps or frames[-1].truth["ed"] != 1.0:
            frames.append(self._render())
        self._loop, self._k = frames[:-1], 0
        self._loop_beats = int(frames[-1].truth["beat"] - frames[0].truth["beat"])

    def _render(self) -> SourceFrame:
        """The next frame from the phantom, rendered now."""
        if self._phantom is None or self._k - self._seg_start >= self._seg_frames:
            self._new_segment()
        i = self._k - self._seg_start  # frame index inside the segment
        t = self._k / self.fps
        frames, _ = self._phantom.render(np.array([i / self.fps]))
        beat = int(np.searchsorted(self._ed_frames, i, side="right")) - 1
        ed = bool(self._ed_frames[beat] == i)
        truth = {
            "ef": self._ef(beat),
            "beat": float(self._beat_offset + beat),
            "ed": float(ed),
            "patient": float(self._patient),
        }
        self._k += 1
        return SourceFrame(pixels=frames[0], t=t, r_wave=ed and self.params.ecg, truth=truth)

    def close(self) -> None:
        self._rng = None
        self._phantom = None
        self._loop = None
