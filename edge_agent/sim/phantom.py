"""Procedural apical-4-chamber B-mode echo simulator.

Physical model (units: cm, seconds, mL; image x to the right, z = depth down from the probe):

* Left ventricle: a truncated prolate ellipsoid, apex near the probe, long axis tilted down and to
  the right. Its volume V(t) follows a cardiac waveform per beat (isovolumic contraction, ejection,
  isovolumic relaxation, rapid filling, diastasis, atrial kick) between that beat's EDV and ESV;
  the long axis shortens with volume; the myocardium keeps a constant (2-D) area, so the wall
  thickens in systole. RV, LA, RA, septum, mitral and tricuspid leaflets, pericardium around it.
* Image formation, per frame, in beam (polar) space: scatterers fixed in tissue coordinates (so the
  speckle moves with the tissue) times an echogenicity map, convolved with an axial/lateral PSF
  (complex field, envelope = Rayleigh speckle), depth attenuation with partial TGC, electronic
  noise, near-field clutter, haze, dropout and rib shadows; log compression; scan conversion to a
  square image with the sector apex at the top centre.
* Labels come from the rendered geometry: the LV contour of every frame, EF/EDV/ESV from
  Simpson's method of discs on the contours at ED and ES (what a sonographer's tracing gives).

Every random choice comes from one ``numpy.random.Generator``: a seed fixes the whole clip.

This is generation 1, the default, kept bit for bit (the shipped model was trained on it).
:mod:`edge_agent.sim.phantom2` (generation 2) reuses this physiology and anatomy with real EchoNet
image statistics and wider domain randomisation; :mod:`edge_agent.sim.simulator` draws a case of
either generation and picks its renderer from ``CaseParams.generation``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

QUALITIES = ("good", "medium", "poor")
IMAGE_SIZE = 112
# Beam-space sampling: depth samples × beams. Fine enough that scan conversion to 112 px does not alias.
N_DEPTH, N_BEAMS = 128, 96
SIMPSON_DISCS = 20

# Image-quality levels: how much of each artefact (see _render_frame).
_QUALITY = {
    #            snr_db  haze  clutter dropout ribs  blur  decorr
    "good": dict(snr=46.0, haze=0.006, clutter=0.25, dropout=0.15, ribs=0.15, blur=1.0, decorr=0.01),
    "medium": dict(snr=38.0, haze=0.022, clutter=0.5, dropout=0.6, ribs=0.4, blur=1.2, decorr=0.02),
    "poor": dict(snr=31.0, haze=0.06, clutter=1.0, dropout=1.2, ribs=0.7, blur=1.45, decorr=0.03),
}


@dataclass(frozen=True)
class Demographics:
    """Patient demographics; ``None`` where unknown. age years, sex 'M'/'F', weight kg, height cm."""

    age: float | None
    sex: str | None
    weight: float | None
    height: float | None

    @property
    def bsa(self) -> float:
        """Body surface area (m², Mosteller); 1.9 when weight or height is unknown."""
        if self.weight is None or self.height is None:
            return 1.9
        return math.sqrt(self.weight * self.height / 3600.0)


@dataclass(frozen=True)
class CaseParams:
    """Everything drawn once per simulated patient/clip.

    ef: target EF (%) of the mean beat; edv: end-diastolic volume (mL); hr_bpm: mean heart rate;
    fps: frame rate of the cine; quality: 'good' | 'medium' | 'poor'.
    """

    ef: float
    edv: float
    hr_bpm: float
    fps: float
    quality: str
    demographics: Demographics
    hrv: float = 0.05  # beat-to-beat RR variability (relative std)
    ef_jitter: float = 0.015  # beat-to-beat EF variability (absolute, fraction)
    depth_cm: float = 16.0
    sector_half_angle_deg: float = 42.0
    tilt_deg: float = 12.0
    apex_x_cm: float = 0.6
    apex_z_cm: float = 2.2
    trunc: float = 0.55  # base plane at (1 + trunc)·a from the apex
    wall_cm: float = 1.0
    gain_db: float = 0.0
    dynamic_range_db: float = 55.0
    # Added with generation 2; the defaults are generation 1's fixed values (its output is frozen).
    generation: int = (
        1  # 1: the first simulator; 2: edge_agent.sim.phantom2 (realistic image chain, DCM, WMA)
    )
    lv_length_scale: float = 1.0  # LV length / a normal LV's of this volume (<1: spherical, foreshortened)
    apex_wall_ratio: float = 0.8  # apical / lateral wall thickness (>: foreshortened view, oblique apex)
    wma_territory: str | None = None  # regional wall-motion abnormality: 'LAD' | 'RCA' | 'LCx' (generation 2)
    wma_severity: float = 0.0  # motion lost in that territory: 1 akinetic, 0.3–0.7 hypokinetic
    atten_np_cm: float = 0.06  # attenuation left after time-gain compensation (Np/cm on amplitude)
    display_gamma: float = 2.4  # display curve exponent: darkens the low end as scanners do
    reject: float = 0.0  # share of the displayed range mapped to black (generation 2)
    native_px: int = IMAGE_SIZE  # side of the scan-converted image before down-sampling to 112 (generation 2)
    jpeg_quality: int = 0  # per-frame JPEG round trip (MJPEG AVI) at this quality; 0 none (generation 2)


def draw_quality(rng: np.random.Generator, quality: str | None) -> str:
    """``quality`` checked, or one of :data:`QUALITIES` drawn uniformly when None."""
    if quality is None:
        quality = QUALITIES[int(rng.integers(3))]
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {QUALITIES}, got {quality!r}")
    return quality


def draw_demographics(rng: np.random.Generator, pediatric: bool) -> Demographics:
    """A plausible adult (EchoNet-Dynamic-like ages) or child (0.5–18 years)."""
    if pediatric:
        age = float(rng.uniform(0.5, 18.0))
        height = float(np.clip(75 + 6.0 * age + rng.normal(0, 7), 60, 195))
        weight = float(np.clip(9 + 2.8 * age + 0.02 * age**2.2 + rng.normal(0, 4), 6, 110))
    else:
        age = float(np.clip(rng.normal(66, 15), 18, 95))
        sex_male = rng.random() < 0.55
        height = float(np.clip(rng.normal(176 if sex_male else 163, 7), 145, 205))
        bmi = float(np.clip(rng.normal(27, 5), 16, 45))
        weight = bmi * (height / 100) ** 2
    sex = ("M" if rng.random() < 0.52 else "F") if pediatric else ("M" if sex_male else "F")
    return Demographics(age=age, sex=sex, weight=weight, height=height)


def draw_case1(
    rng: np.random.Generator,
    ef: float | None = None,
    hr_bpm: float | None = None,
    fps: float | None = None,
    quality: str | None = None,
    pediatric: bool = False,
) -> CaseParams:
    """Draw a plausible patient and acquisition of generation 1; any argument given is used as is.

    EF (%) is drawn from a mixture: 70 % N(58, 8) (the bulk of EchoNet's labels) and 30 % uniform
    on 10–80 % so reduced EF is learnable. Measured: mean ≈ 54, sd ≈ 14, 28 % below 50, 13 % below
    40 (EchoNet: 56, 12, 20 %, 12 %). EDV scales with body surface area and rises as EF falls
    (dilated failing ventricles). Choose the generation with :func:`edge_agent.sim.simulator.draw_case`.
    """
    quality = draw_quality(rng, quality)
    demo = draw_demographics(rng, pediatric)
    sex = demo.sex
    if ef is None:
        ef = float(rng.normal(58, 8)) if rng.random() < 0.7 else float(rng.uniform(10, 80))
        ef = float(np.clip(ef, 10, 80))
    if hr_bpm is None:
        hr_bpm = float(np.clip(rng.normal(75 + (30 if pediatric else 0) + (55 - ef) * 0.3, 14), 45, 150))
    if fps is None:
        fps = float(rng.choice([30.0, 40.0, 50.0, 50.0, 50.0, 60.0, 75.0]))
    edv_index = rng.normal(62 if sex == "M" else 54, 9) * (1 + max(0.0, 50 - ef) / 45)
    edv = float(np.clip(edv_index * demo.bsa, 15, 350))
    depth = 16.0 * (edv / 120) ** (1 / 3) * rng.uniform(0.93, 1.07) + rng.uniform(0.0, 1.5)
    return CaseParams(
        ef=ef,
        edv=edv,
        hr_bpm=hr_bpm,
        fps=fps,
        quality=quality,
        demographics=demo,
        hrv=float(rng.uniform(0.02, 0.08)),
        ef_jitter=float(rng.uniform(0.005, 0.02)),
        depth_cm=float(depth),
        sector_half_angle_deg=float(rng.uniform(37, 43)),
        tilt_deg=float(rng.uniform(4, 18)),
        apex_x_cm=float(rng.uniform(-0.3, 1.2)) * depth / 16,
        apex_z_cm=float(rng.uniform(1.6, 2.8)) * depth / 16,
        trunc=float(rng.uniform(0.45, 0.65)),
        wall_cm=float(rng.uniform(0.8, 1.15)) * (edv / 120) ** (1 / 3),
        gain_db=float(rng.normal(0, 2.5)),
        dynamic_range_db=float(rng.uniform(50, 60)),
    )


# --------------------------------------------------------------------------------------------------
# Physiology: the volume waveform of each beat
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Beat:
    """One cardiac cycle. Times in seconds from the start of the simulation; volumes in mL."""

    t_ed: float
    rr: float
    edv: float
    esv: float
    next_edv: float

    @property
    def t_es(self) -> float:
        ivc, ejection = _phase_durations(self.rr)[:2]
        return self.t_ed + ivc + ejection


def _phase_durations(rr: float) -> tuple[float, float, float, float, float, float]:
    """Durations (s) of IVC, ejection, IVR, rapid filling, diastasis, atrial kick for one RR."""
    s = math.sqrt(rr)  # systolic intervals scale with √RR (Bazett-like)
    ivc, ej, ivr = 0.035 * s, 0.29 * s, 0.075 * s
    rapid, atrial = 0.16 * s, 0.13 * s
    rest = rr - (ivc + ej + ivr + rapid + atrial)
    if rest < 0:  # tachycardia: diastasis vanishes and filling phases compress
        k = (rr - ivc - ej - ivr) / (rapid + atrial)
        rapid, atrial, rest = rapid * k, atrial * k, 0.0
    return ivc, ej, ivr, rapid, rest, atrial


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * x)


def beat_volume(beat: Beat, t: np.ndarray) -> np.ndarray:
    """LV volume (mL) at times t (s) inside this beat (t_ed ≤ t < t_ed + rr)."""
    ivc, ej, ivr, rapid, rest, atrial = _phase_durations(beat.rr)
    tau = np.asarray(t, dtype=np.float64) - beat.t_ed
    sv = beat.edv - beat.esv
    fill = beat.next_edv - beat.esv
    # Ejection: fast early, slow late (skewed cosine), from EDV to ESV.
    x_ej = np.clip((tau - ivc) / ej, 0, 1)
    v = beat.edv - sv * _smoothstep(x_ej**0.8)
    t_fill = ivc + ej + ivr
    # Rapid filling brings ~72 % of the refill, diastasis ~10 %, the atrial kick the rest.
    x_r = np.clip((tau - t_fill) / rapid, 0, 1)
    # Diastasis brings up to 10 % of the refill, less as it shortens, so fast hearts have no step.
    share_d = 0.10 * rest / (rest + 0.05)
    x_d = np.clip((tau - t_fill - rapid) / max(rest, 1e-9), 0, 1)
    x_a = np.clip((tau - t_fill - rapid - rest) / atrial, 0, 1)
    refill = (0.82 - share_d) * (1 - (1 - x_r) ** 2) + share_d * x_d + 0.18 * _smoothstep(x_a)
    return np.where(tau < t_fill, v, beat.esv + fill * refill)


def valve_opening(beat: Beat, t: np.ndarray) -> np.ndarray:
    """Mitral opening 0..1 at times t: open in rapid filling and the atrial kick, closed in systole."""
    ivc, ej, ivr, rapid, rest, _atrial = _phase_durations(beat.rr)
    tau = np.asarray(t, dtype=np.float64) - beat.t_ed
    t0 = ivc + ej + ivr
    e_wave = np.clip((tau - t0) / 0.04, 0, 1) * np.clip(1 - (tau - t0 - rapid) / max(rest, 0.05), 0.35, 1)
    a_wave = np.clip((tau - t0 - rapid - rest) / 0.03, 0, 1) * np.clip((beat.rr - tau) / 0.03, 0, 1)
    return np.where(tau < t0, 0.0, np.maximum(e_wave, a_wave))


def make_beats(case: CaseParams, duration_s: float, rng: np.random.Generator) -> list[Beat]:
    """Beats covering [0, duration_s] with RR and EF variability; EF per beat jitters about case.ef."""
    beats: list[Beat] = []
    t = 0.0
    rr0 = 60.0 / case.hr_bpm
    rr_dev = 0.0
    edv = case.edv * (1 + rng.normal(0, 0.01))
    while t < duration_s + 2 * rr0:
        # AR(1) RR variability: neighbouring beats resemble each other, as in sinus rhythm.
        rr_dev = 0.6 * rr_dev + rng.normal(0, case.hrv * math.sqrt(1 - 0.36))
        rr = float(np.clip(rr0 * (1 + rr_dev), 0.35, 1.6))
        ef = float(np.clip(case.ef / 100 + rng.normal(0, case.ef_jitter), 0.05, 0.9))
        next_edv = case.edv * (1 + rng.normal(0, 0.01))
        beats.append(Beat(t_ed=t, rr=rr, edv=edv, esv=edv * (1 - ef), next_edv=next_edv))
        t += rr
        edv = next_edv
    return beats


# --------------------------------------------------------------------------------------------------
# Geometry: the LV and its neighbours at one instant
# --------------------------------------------------------------------------------------------------


def _cf(f: float) -> float:
    """Volume factor of a prolate ellipsoid truncated at u = f (normalised): V = π b² a · cf."""
    return f - f**3 / 3 + 2 / 3


def _trunc_area(a: float, b: float, f: float) -> float:
    """Area (cm²) of an ellipse with semi-axes a (long) and b, cut at normalised u = f."""
    return a * b * (f * math.sqrt(max(0.0, 1 - f * f)) + math.asin(min(1.0, f)) + math.pi / 2)


@dataclass(frozen=True)
class LVShape:
    """LV geometry at one instant, in its own frame: u along the long axis from the apex, v across.

    Cavity: ((u − a)/a)² + (v/b)² ≤ 1, u ≤ a(1 + trunc). Myocardium: the same centre, semi-axes
    (a + ta, b + tw), same base plane.
    """

    a: float
    b: float
    ta: float
    tw: float
    trunc: float

    @property
    def length(self) -> float:
        """Apex to mitral-plane length L (cm)."""
        return self.a * (1 + self.trunc)


def lv_shape(case: CaseParams, volume: float, ed_volume: float) -> LVShape:
    """Cavity from volume with long-axis shortening; wall from constant myocardial area."""
    f = case.trunc
    l_ed = 8.4 * (ed_volume / 120) ** (1 / 3) * case.lv_length_scale
    length = l_ed * (volume / ed_volume) ** 0.2
    a = length / (1 + f)
    b = math.sqrt(volume / (math.pi * a * _cf(f)))
    # Reference wall at a nominal ED (thickness wall_cm) fixes the myocardial area to conserve.
    a0 = l_ed / (1 + f)
    b0 = math.sqrt(ed_volume / (math.pi * a0 * _cf(f)))
    w, k = case.wall_cm, case.apex_wall_ratio
    area_myo = _trunc_area(a0 + k * w, b0 + w, f * a0 / (a0 + k * w)) - _trunc_area(a0, b0, f)
    inner = _trunc_area(a, b, f)
    lo, hi = 0.1 * w, 4.0 * w
    for _ in range(40):  # bisection on wall thickness: outer area − inner area = myocardial area
        mid = 0.5 * (lo + hi)
        if _trunc_area(a + k * mid, b + mid, f * a / (a + k * mid)) - inner > area_myo:
            hi = mid
        else:
            lo = mid
    t = 0.5 * (lo + hi)
    return LVShape(a=a, b=b, ta=k * t, tw=t, trunc=f)


def lv_contour_uv(shape: LVShape, n: int = 64) -> np.ndarray:
    """Endocardial contour (n, 2) in (u, v) cm: from one base point round the apex to the other."""
    f = shape.trunc
    th0 = math.acos(f)  # angle where the ellipse meets the base plane
    th = np.linspace(th0, 2 * np.pi - th0, n)
    u = shape.a + shape.a * np.cos(th)
    v = shape.b * np.sin(th)
    return np.stack([u, v], axis=1)


def simpson_volume(contour: np.ndarray, n_discs: int = SIMPSON_DISCS) -> tuple[float, float]:
    """Single-plane Simpson volume (mL) and long-axis length (cm) of a closed LV contour.

    contour: (P, 2) points (x, y) in cm ordered from one mitral annulus point round the apex to
    the other (as a tracing). The long axis runs from the mitral-plane midpoint to the farthest
    contour point (the apex); discs are perpendicular to it.
    """
    base_mid = 0.5 * (contour[0] + contour[-1])
    d = np.linalg.norm(contour - base_mid, axis=1)
    apex = contour[int(np.argmax(d))]
    length = float(d.max())
    axis = (apex - base_mid) / length
    normal = np.array([-axis[1], axis[0]])
    rel = contour - base_mid
    s = rel @ axis
    w = rel @ normal
    closed_s = np.append(s, s[0])
    closed_w = np.append(w, w[0])
    diam = chord_widths(closed_s, closed_w, (np.arange(n_discs) + 0.5) * length / n_discs)
    return float(np.sum(np.pi / 4 * diam**2) * length / n_discs), length


def chord_widths(s: np.ndarray, w: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Width of a closed polygon (s, w) across lines s = level: max − min crossing of w."""
    widths = np.zeros(len(levels))
    for k, lev in enumerate(levels):
        s0, s1, w0, w1 = s[:-1], s[1:], w[:-1], w[1:]
        cross = (s0 - lev) * (s1 - lev) <= 0
        cross &= s0 != s1
        if not np.any(cross):
            continue
        ws = w0[cross] + (lev - s0[cross]) * (w1[cross] - w0[cross]) / (s1[cross] - s0[cross])
        widths[k] = ws.max() - ws.min()
    return widths


def area_length_volume(contour: np.ndarray) -> float:
    """Area-length volume (mL) V = 8A²/(3πL) of a closed contour (P, 2) in cm."""
    x, y = contour[:, 0], contour[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    base_mid = 0.5 * (contour[0] + contour[-1])
    length = float(np.linalg.norm(contour - base_mid, axis=1).max())
    return 8 * area**2 / (3 * np.pi * length)


# --------------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LVRegions:
    """The LV in beam space at one instant: boolean (n_depth, n_beams) masks of cavity (blood below
    the mitral plane), myocardium and bright pericardium, and where the valves and crux sit (LV-frame
    cm: mitral plane at u = base_u, mitral valve centred at v = valve_v with half-width
    valve_half_w, crux at v = crux_v)."""

    cavity: np.ndarray
    myo: np.ndarray
    peri: np.ndarray
    base_u: float
    valve_v: float
    valve_half_w: float
    crux_v: float


@dataclass
class SimClip:
    """A simulated cine with its ground truth.

    frames: (F, H, W) uint8; fps: frames per second; ed_frames / es_frames: frame indices of every
    complete beat's end-diastole and end-systole; beat_ef: EF (%) of each of those beats (Simpson
    from the rendered contours); contours: (F, P, 2) LV endocardial contours in pixel (x, y).
    The clip label (``ef``, ``edv``, ``esv``) is that of the first complete beat, as a sonographer
    would trace one beat.
    """

    frames: np.ndarray
    fps: float
    case: CaseParams
    ed_frames: list[int]
    es_frames: list[int]
    beat_ef: list[float]
    beat_edv: list[float]
    beat_esv: list[float]
    contours: np.ndarray
    px_per_cm: float

    @property
    def ef(self) -> float:
        return self.beat_ef[0]

    @property
    def edv(self) -> float:
        return self.beat_edv[0]

    @property
    def esv(self) -> float:
        return self.beat_esv[0]

    def lv_masks(self) -> np.ndarray:
        """(F, H, W) bool LV cavity masks rasterised from the contours."""
        f, h, w = self.frames.shape
        masks = np.zeros((f, h, w), np.uint8)
        for i in range(f):
            pts = np.round(self.contours[i] * 16).astype(np.int32)  # 4 fractional bits
            cv2.fillPoly(masks[i], [pts], 1, lineType=cv2.LINE_8, shift=4)
        return masks.astype(bool)


class EchoPhantom:
    """Renders one simulated patient at arbitrary times; state is fixed at construction.

    ``render(times)`` returns frames (F, 112, 112) uint8 and contours; consecutive calls with later
    times continue the same heart, so the phantom serves as a live feed.
    """

    # Beam-space grid (depth samples × beams), artefact levels per quality and valve-leaflet
    # echogenicity (rel. myocardium); generation 2 overrides them.
    n_depth, n_beams = N_DEPTH, N_BEAMS
    quality_levels = _QUALITY
    leaflet_amp = 1.3

    def __init__(self, case: CaseParams, seed: int | np.random.Generator, duration_s: float = 3600.0):
        self.case = case
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        rng = self.rng
        self.q = self.quality_levels[case.quality]
        self.beats = make_beats(case, duration_s, rng)
        self._beat_starts = np.array([b.t_ed for b in self.beats])
        self.size = IMAGE_SIZE
        self.px_per_cm = self.size / case.depth_cm
        # Beam geometry: depths (cm) × angles (rad); the sector reaches a little past the image bottom.
        half = math.radians(case.sector_half_angle_deg)
        self.r_max = case.depth_cm * 1.04
        self.depths = np.linspace(0.0, self.r_max, self.n_depth)
        self.angles = np.linspace(-half, half, self.n_beams)
        rr, th = np.meshgrid(self.depths, self.angles, indexing="ij")
        self.bx, self.bz = rr * np.sin(th), rr * np.cos(th)  # (n_depth, n_beams) sample positions
        self.map_beam, self.map_depth, self.sector = self._scan_maps(case.native_px)
        # Scatterers: complex white noise on a fine tissue-fixed grid (cm → cells).
        self.cell = 0.06
        n = math.ceil(case.depth_cm * 1.6 / self.cell)
        self.tissue_origin = np.array([-0.8 * case.depth_cm, -0.1 * case.depth_cm])
        self.scat = (rng.standard_normal((n, n, 2)) / math.sqrt(2)).astype(np.float32)
        # Slow echogenicity texture of the myocardium and surrounding tissue (fibres, fat).
        tex = cv2.GaussianBlur(rng.standard_normal((n, n)).astype(np.float32), (0, 0), 6)
        self.texture = np.exp(0.45 * tex / (tex.std() + 1e-6))  # log-normal: always positive
        self.tilt = math.radians(case.tilt_deg)
        self.apex = np.array([case.apex_x_cm, case.apex_z_cm])
        self.axis = np.array([math.sin(self.tilt), math.cos(self.tilt)])  # apex → base
        self.perp = np.array([-self.axis[1], self.axis[0]])  # +v points to the septum (image left)
        self.ed_shape = lv_shape(case, case.edv, case.edv)
        self._artefacts(rng)

    # ----- fixed per-clip artefacts ---------------------------------------------------------------
    def _artefacts(self, rng: np.random.Generator) -> None:
        q = self.q
        nb, nd = self.n_beams, self.n_depth
        beam_gain = np.ones(nb, np.float32)
        if rng.random() < q["ribs"]:  # rib shadow: a band of beams at one sector edge, deep to the rib
            width = int(rng.integers(nb // 12, nb // 5))
            start = 0 if rng.random() < 0.5 else nb - width
            beam_gain[start : start + width] *= float(rng.uniform(0.08, 0.3))
        self.beam_gain = cv2.GaussianBlur(beam_gain[None, :], (0, 0), 3).ravel()
        # Dropout: lateral-wall beams parallel to the wall lose echo over part of the depth.
        self.dropout = np.ones((nd, nb), np.float32)
        n_drop = rng.poisson(2 * q["dropout"])
        for _ in range(n_drop):
            c = int(rng.integers(nb // 2, nb))
            w = int(rng.integers(3, 10))
            d0 = int(rng.integers(nd // 5, nd * 3 // 5))
            d1 = d0 + int(rng.integers(nd // 10, nd // 3))
            self.dropout[d0:d1, max(0, c - w) : c + w] *= float(rng.uniform(0.1, 0.5))
        self.dropout = cv2.GaussianBlur(self.dropout, (0, 0), 2.5)
        self.haze = q["haze"] * float(rng.uniform(0.6, 1.4))
        self.clutter = q["clutter"] * float(rng.uniform(0.6, 1.4))
        self.noise_amp = 10 ** (-q["snr"] / 20) * float(rng.uniform(0.7, 1.3))
        self.decorr = q["decorr"]
        self.background = float(rng.uniform(0.02, 0.06))  # tissue around the heart, rel. myocardium

    def _scan_maps(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scan conversion to a size × size image: (beam, depth sample) maps for cv2.remap, each
        (size, size) float32, and the sector weight (size, size) float32 in [0, 1]."""
        s = size
        px = (np.arange(s) + 0.5) / (s / self.case.depth_cm)
        x = px[None, :] - self.case.depth_cm / 2
        z = px[:, None]
        r = np.sqrt(x**2 + z**2)
        th = np.arctan2(x, z)
        map_depth = (r / self.r_max * (self.n_depth - 1)).astype(np.float32)
        half = self.angles[-1]
        map_beam = ((th + half) / (2 * half) * (self.n_beams - 1)).astype(np.float32)
        inside = (np.abs(th) <= half) & (r <= self.r_max)
        edge = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 0.6 * (s / IMAGE_SIZE))
        return map_beam, map_depth, np.where(inside, edge, 0).astype(np.float32)

    # ----- time → physiology -----------------------------------------------------------------------
    def beat_at(self, t: float) -> Beat:
        k = int(np.searchsorted(self._beat_starts, t, side="right") - 1)
        return self.beats[max(0, min(k, len(self.beats) - 1))]

    def volume(self, t: float) -> float:
        return float(beat_volume(self.beat_at(t), np.array([t]))[0])

    def shape_at(self, t: float) -> LVShape:
        return lv_shape(self.case, self.volume(t), self.case.edv)

    def to_world(self, uv: np.ndarray) -> np.ndarray:
        """LV frame (u, v) cm → image-plane (x, z) cm."""
        return self.apex + uv[..., :1] * self.axis + uv[..., 1:] * self.perp

    def contour_px(self, t: float, n: int = 64) -> np.ndarray:
        """LV endocardial contour at time t, (n, 2) pixel (x, y)."""
        xz = self.to_world(lv_contour_uv(self.shape_at(t), n))
        return np.stack([(xz[:, 0] + self.case.depth_cm / 2), xz[:, 1]], axis=1) * self.px_per_cm

    # ----- rendering -------------------------------------------------------------------------------
    def render(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames (F, 112, 112) uint8 and LV contours (F, 64, 2) px at the given times (s)."""
        frames = np.empty((len(times), self.size, self.size), np.uint8)
        contours = np.empty((len(times), 64, 2))
        for i, t in enumerate(times):
            frames[i] = self._render_frame(float(t))
            contours[i] = self.contour_px(float(t))
        return frames, contours

    def _render_frame(self, t: float) -> np.ndarray:
        """One frame (112, 112) uint8 at time t (s)."""
        shape = self.shape_at(t)
        u, v = self._lv_coords()
        amp, _ = self._echogenicity(t, u, v, self._lv_regions(u, v, shape))
        amp = amp * self._tissue_sample(self.texture[..., None], u, v, shape, self.ed_shape)[..., 0]
        sc = self._tissue_sample(self.scat, u, v, shape, self.ed_shape)
        return self._display(self._envelope(sc, amp))

    def _lv_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """LV-frame coordinates (u along the axis from the apex, v across; cm) of every beam sample."""
        rel = np.stack([self.bx - self.apex[0], self.bz - self.apex[1]], axis=-1)
        return rel @ self.axis, rel @ self.perp

    def _lv_regions(self, u: np.ndarray, v: np.ndarray, shape: LVShape) -> LVRegions:
        """The LV cavity, myocardium and pericardium of ``shape`` at the beam samples (u, v)."""
        base_u = shape.length
        cav = ((u - shape.a) / shape.a) ** 2 + (v / shape.b) ** 2
        outer = ((u - shape.a) / (shape.a + shape.ta)) ** 2 + (v / (shape.b + shape.tw)) ** 2
        below_base = u <= base_u
        myo = (outer <= 1) & below_base
        peri = (outer > 1) & (outer <= 1.14) & below_base & (v < 0.3 * shape.b)  # lateral + apical
        return LVRegions(
            cavity=(cav <= 1) & below_base,
            myo=myo,
            peri=peri,
            base_u=base_u,
            valve_v=0.0,
            valve_half_w=shape.b,
            crux_v=shape.b + 0.5 * shape.tw,
        )

    def _echogenicity(
        self, t: float, u: np.ndarray, v: np.ndarray, lv: LVRegions
    ) -> tuple[np.ndarray, np.ndarray]:
        """Echogenicity (linear amplitude, myocardium ≈ 1) of every beam sample: the LV regions and
        their neighbours (RV, atria, valves, crux, chest wall, background); and the blood-pool mask
        (n_depth, n_beams) bool."""
        case, ed = self.case, self.ed_shape
        base_u = lv.base_u
        amp = self.background * np.ones_like(u)
        amp = np.where(self.bz < 1.2, 0.3, amp)  # chest wall
        amp = np.where(lv.peri, 2.2, amp)
        # RV: left of the septum (v > 0), shorter and narrower, apex lower than the LV's.
        vol_frac = self.volume(t) / case.edv
        rv_b = 0.62 * ed.b * (0.75 + 0.25 * vol_frac)
        rv_c = np.array([0.55 * base_u + 0.5, ed.b + ed.tw + rv_b + 0.05])
        rv = ((u - rv_c[0]) / (0.55 * base_u + 0.4)) ** 2 + ((v - rv_c[1]) / rv_b) ** 2
        rv_wall = (rv > 1) & (rv <= 1.25) & (u <= base_u) & (v > rv_c[1])
        amp = np.where(rv_wall, 0.9, amp)
        amp = np.where(lv.myo, 1.0, amp)
        # Atria below the valve planes; they fill while the ventricles empty (anti-phase).
        atr = 1.35 - 0.35 * vol_frac
        la_len, la_w = 0.55 * ed.a * atr, 0.95 * ed.b * (0.8 + 0.2 * atr)
        la = ((u - base_u - la_len - 0.25) / la_len) ** 2 + ((v + 0.1 * ed.b) / la_w) ** 2
        ra = ((u - base_u - 0.9 * la_len - 0.2) / (0.9 * la_len)) ** 2 + ((v - rv_c[1]) / (0.9 * rv_b)) ** 2
        atrial_wall = ((la > 1) & (la <= 1.3)) | ((ra > 1) & (ra <= 1.3))
        amp = np.where(atrial_wall & (u > base_u), 0.75, amp)
        blood = lv.cavity | (rv <= 1) & (u <= base_u + 0.3) | (la <= 1) | (ra <= 1)
        amp = np.where(blood, 0.01 + self.haze * (1 + 2.0 * np.exp(-self.bz / 3.0)), amp)
        # Leaflets: hinged at the annuli, swing from across the valve plane (closed) towards the apex (open).
        opening = float(valve_opening(self.beat_at(t), np.array([t]))[0])
        amp = self._leaflets(amp, u, v, base_u, lv.valve_half_w, opening, lv.valve_v)
        amp = self._leaflets(amp, u, v, base_u + 0.35, rv_b, opening, rv_c[1])
        # Crux: bright fibrous junction between the four chambers.
        crux = ((u - base_u - 0.1) ** 2 + (v - lv.crux_v) ** 2) < 0.35**2
        return np.where(crux, 1.6, amp), blood

    def _envelope(self, sc: np.ndarray, amp: np.ndarray) -> np.ndarray:
        """Tissue-fixed scatterers (n_depth, n_beams, 2) × echogenicity → echo envelope (n_depth,
        n_beams): out-of-plane decorrelation, PSF, clutter, attenuation, ribs, dropout, noise."""
        q = self.q
        fresh = self.rng.standard_normal(sc.shape).astype(np.float32) / math.sqrt(2)
        sc = math.sqrt(1 - self.decorr**2) * sc + self.decorr * fresh  # out-of-plane decorrelation
        field = sc * amp[..., None].astype(np.float32)
        # PSF ≈ 1.5–2.5 px at 112 px (axial σ sigmaY, lateral σ sigmaX, in beam samples), each blur
        # rescaled to unit gain on white scatterers so myocardium has unit RMS echo amplitude.
        ax, lat = 1.05 * q["blur"], 1.43 * q["blur"]
        near = cv2.GaussianBlur(field, (0, 0), sigmaX=lat, sigmaY=ax) * math.sqrt(4 * math.pi * lat * ax)
        wide = cv2.GaussianBlur(field, (0, 0), sigmaX=1.7 * lat, sigmaY=ax) * math.sqrt(
            4 * math.pi * 1.7 * lat * ax
        )
        dn = (self.depths / self.r_max)[:, None, None]
        field = near * (1 - dn) + wide * dn  # lateral beam spreads beyond the focus
        # Near-field clutter / reverberation: diffuse echo decaying with depth, everywhere.
        clutter = self.clutter * 0.3 * np.exp(-self.bz / 2.5)[..., None]
        field = field + clutter * self.rng.standard_normal(field.shape).astype(np.float32) * 0.5
        env = np.sqrt(field[..., 0] ** 2 + field[..., 1] ** 2)
        # Attenuation with partial time-gain compensation, beam gain (ribs), dropout.
        atten = np.exp(-self.case.atten_np_cm * self.depths)[:, None]
        env = env * atten * self.beam_gain[None, :] * self.dropout
        noise = (
            self.noise_amp
            * np.abs(self.rng.standard_normal(env.shape) + 1j * self.rng.standard_normal(env.shape))
            * (0.4 + self.depths[:, None] / self.r_max)
        )
        return np.sqrt(env**2 + noise**2)

    def _display(self, env: np.ndarray) -> np.ndarray:
        """Envelope (n_depth, n_beams) → log compression, display curve, scan conversion: (112, 112) uint8."""
        case = self.case
        db = 20 * np.log10(env + 1e-6) + case.gain_db
        top = 4.0  # dB above mean myocardium that maps to white
        img = (db - (top - case.dynamic_range_db)) / case.dynamic_range_db
        img = np.clip(img, 0, 1) ** case.display_gamma * 255
        # Scan conversion to the square image, sector apex at top centre.
        out = cv2.remap(
            img.astype(np.float32),
            self.map_beam,
            self.map_depth,
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        out = out * self.sector
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def _leaflets(self, amp, u, v, base_u, half_w, opening, v0):
        """Two leaflets of length ≈ 0.45·(valve width) hinged at (base_u, v0 ± half_w)."""
        length = 0.9 * half_w
        for side in (-1.0, 1.0):
            hinge = np.array([base_u, v0 + side * half_w])
            # closed: pointing across the valve (towards the centre line, bowing to the atrium);
            # open: pointing towards the apex (−u), along the wall.
            ang_closed = math.atan2(-side, 0.25)  # mostly across (v), slightly into the atrium (+u)
            ang_open = math.atan2(-0.2 * side, -1.0)
            ang = ang_closed + opening * _angle_diff(ang_open, ang_closed)
            d = np.array([math.cos(ang), math.sin(ang)])  # (du, dv)
            pu, pv = u - hinge[0], v - hinge[1]
            s = np.clip(pu * d[0] + pv * d[1], 0, length)
            dist2 = (pu - s * d[0]) ** 2 + (pv - s * d[1]) ** 2
            amp = np.where(dist2 < 0.13**2, self.leaflet_amp, amp)
        return amp

    def _tissue_sample(self, field: np.ndarray, u, v, shape: LVShape, ed: LVShape) -> np.ndarray:
        """Sample a tissue-fixed field at the reference (ED) position of every beam sample.

        Backward deformation: the base moves towards the fixed apex (longitudinal shortening) and
        the wall moves towards the long axis, stretched across its thickness, decaying outside.
        """
        u_ref = u * np.where(u <= shape.length, ed.length / shape.length, 1.0)
        u_ref = np.where(
            u > shape.length, u + (ed.length - shape.length) * np.exp(-(u - shape.length) / 2), u_ref
        )

        # Half-widths of cavity and wall at this height, now and at ED.
        def half_widths(s: LVShape, uu):
            x = np.clip((uu - s.a) / s.a, -1, 1)
            xo = np.clip((uu - s.a) / (s.a + s.ta), -1, 1)
            return s.b * np.sqrt(1 - x**2), (s.b + s.tw) * np.sqrt(1 - xo**2)

        wi, wo = half_widths(shape, u)
        wi0, wo0 = half_widths(ed, u_ref)
        av = np.abs(v)
        lam = np.clip((av - wi) / np.maximum(wo - wi, 1e-3), 0, 1)
        in_cav = av < wi
        v_ref = np.where(in_cav, av * wi0 / np.maximum(wi, 1e-3), wi0 + lam * (wo0 - wi0))
        v_ref = np.where(av > wo, av + (wo0 - wo) * np.exp(-(av - wo) / 1.5), v_ref)
        v_ref = np.sign(v) * v_ref
        ref_xz = self.apex + u_ref[..., None] * self.axis + v_ref[..., None] * self.perp
        cells = (ref_xz - self.tissue_origin) / self.cell
        mx = cells[..., 0].astype(np.float32)
        my = cells[..., 1].astype(np.float32)
        out = cv2.remap(field, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return out if out.ndim == 3 else out[..., None]


def _angle_diff(a: float, b: float) -> float:
    return (a - b + math.pi) % (2 * math.pi) - math.pi


def label_clip(phantom: EchoPhantom, frames: np.ndarray, contours: np.ndarray, times: np.ndarray) -> SimClip:
    """Attach beat labels (ED/ES frames, Simpson EF/EDV/ESV) to frames rendered at ``times``."""
    fps = phantom.case.fps
    ed_frames, es_frames, efs, edvs, esvs = [], [], [], [], []
    t_first, t_last = times[0], times[-1]
    for k, beat in enumerate(phantom.beats[:-1]):
        t_next = phantom.beats[k + 1].t_ed
        if beat.t_ed < t_first - 0.5 / fps or t_next > t_last + 0.5 / fps:
            continue
        edv = simpson_volume(phantom.contour_px(beat.t_ed, 96) / phantom.px_per_cm)[0]
        esv = simpson_volume(phantom.contour_px(beat.t_es, 96) / phantom.px_per_cm)[0]
        ed_frames.append(round((beat.t_ed - t_first) * fps))
        es_frames.append(round((beat.t_es - t_first) * fps))
        efs.append(100.0 * (edv - esv) / edv)
        edvs.append(edv)
        esvs.append(esv)
    return SimClip(
        frames=frames,
        fps=fps,
        case=phantom.case,
        ed_frames=ed_frames,
        es_frames=es_frames,
        beat_ef=efs,
        beat_edv=edvs,
        beat_esv=esvs,
        contours=contours,
        px_per_cm=phantom.px_per_cm,
    )
