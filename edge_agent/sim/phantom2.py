"""Generation 2 of the apical-4-chamber echo simulator: real EchoNet image statistics, wide domain
randomisation, dilated and regionally akinetic ventricles.

Opt-in (``edge_agent.sim.simulator.draw_case(..., generation=2)``); generation 1
(:mod:`edge_agent.sim.phantom`) stays the default and bit for bit what the shipped model was trained
on. What generation 2 adds (units: cm, s, mL, %):

* Labels like EchoNet-Dynamic: EF from a two-part mixture (mean ≈ 55.7, sd ≈ 12.4, ≈ 1 in 8 below
  40 %, 1 in 5 below 50 %), clipped to what the geometry renders (8–85 %).
* Dilated cardiomyopathy: the lower the EF, the larger (EDV), rounder (shorter for its volume) and
  thinner-walled the LV; the scanner depth is drawn in absolute cm, so a dilated LV fills more of
  the sector, and low-EF hearts are more often zoomed in on.
* Regional wall-motion abnormalities in one coronary territory (LAD: apical septum, apex, apical
  lateral wall; RCA: basal and mid inferoseptum; LCx: mid and basal anterolateral wall), akinetic or
  hypokinetic: the endocardium there follows only part of the global contraction. The contour is a
  per-point blend of the ED ellipse and the contracting one; the image is rendered from that same
  contour (polar radius about the ED centre) and the label is Simpson's EF of it, so labels stay
  exact. The global contraction is driven harder so the rendered EF is the requested EF.
* Views: depth from the whole heart to an LV filling most of the sector, sector angle, LV tilt and
  offset, foreshortened views (shorter LV, thick-looking apex).
* Image chain of the public datasets: render in beam space, log-compress with random gain, TGC,
  dynamic range and reject, scan-convert at a native size larger than 112, down-sample to 112 and
  round-trip each frame through JPEG at a random quality (MJPEG AVI).
* Image statistics tuned to ``REAL_ECHO_STATS``: dark blood with a reject level, fine speckle,
  little fresh noise per frame (probe-fixed clutter, band-limited electronic noise).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge_agent.sim.phantom import (
    IMAGE_SIZE,
    CaseParams,
    EchoPhantom,
    LVRegions,
    LVShape,
    draw_demographics,
    draw_quality,
    lv_shape,
    simpson_volume,
)

# EF (%) mixture fitted to EchoNet-Dynamic's label moments: most hearts normal, a broad reduced tail.
EF_MIX_NORMAL = (0.75, 61.0, 5.0)  # weight, mean, sd
EF_MIX_REDUCED = (40.0, 15.0)  # mean, sd
EF_RANGE = (8.0, 85.0)  # the geometry renders these without degenerate shapes
# Territories as arcs of the contour, s = 0 basal septum (contour start), 0.5 apex, 1 basal lateral.
WMA_TERRITORIES: dict[str, tuple[float, float]] = {"LAD": (0.3, 0.7), "RCA": (0.0, 0.25), "LCx": (0.75, 1.0)}
WMA_TAPER = 0.08  # arc over which motion returns to normal at a territory's edge (border zone)
# Beam-space grid, finer than generation 1's (128 × 96): speckle must stay finer after scan conversion.
N_DEPTH2, N_BEAMS2 = 160, 112
BLOOD_DECORR = 0.6  # share of the blood pool's echo that is new each frame (flow)
N_BLEND = 96  # points of the full blended LV outline used to render its polar radius
N_DRIVE = 24  # drive volumes tabulated to map the requested volume onto the WMA-blended contour

# Artefact levels per quality (as phantom._QUALITY), with less fresh per-frame noise: real clips
# keep consecutive frames correlated at 0.97 (50 fps).
QUALITY2 = {
    "good": dict(snr=56.0, haze=0.004, clutter=0.2, dropout=0.15, ribs=0.15, blur=0.65, decorr=0.002),
    "medium": dict(snr=51.0, haze=0.012, clutter=0.4, dropout=0.6, ribs=0.4, blur=0.75, decorr=0.004),
    "poor": dict(snr=46.0, haze=0.03, clutter=0.8, dropout=1.2, ribs=0.7, blur=0.85, decorr=0.006),
}


def draw_ef(rng: np.random.Generator) -> float:
    """One EF label (%) from the EchoNet-like mixture, clipped to :data:`EF_RANGE`."""
    w, m1, s1 = EF_MIX_NORMAL
    m2, s2 = EF_MIX_REDUCED
    ef = rng.normal(m1, s1) if rng.random() < w else rng.normal(m2, s2)
    return float(np.clip(ef, *EF_RANGE))


def draw_case2(
    rng: np.random.Generator,
    ef: float | None = None,
    hr_bpm: float | None = None,
    fps: float | None = None,
    quality: str | None = None,
    pediatric: bool = False,
) -> CaseParams:
    """A generation-2 patient and acquisition (see the module docstring); arguments given are kept."""
    quality = draw_quality(rng, quality)
    demo = draw_demographics(rng, pediatric)
    ef = draw_ef(rng) if ef is None else ef
    if hr_bpm is None:
        hr_bpm = float(np.clip(rng.normal(75 + (30 if pediatric else 0) + (55 - ef) * 0.3, 14), 45, 150))
    if fps is None:
        fps = float(rng.choice([30.0, 40.0, 50.0, 50.0, 50.0, 60.0, 75.0]))
    dcm = float(np.clip((50 - ef) / 30, 0, 1))  # 0 normal … 1 severe dilated cardiomyopathy
    edv_index = rng.normal(62 if demo.sex == "M" else 54, 9) * (1 + 0.9 * dcm)
    edv = float(np.clip(edv_index * demo.bsa, 15, 400))
    length_scale = float(rng.uniform(0.93, 1.07)) * (1 - 0.14 * dcm)  # rounder when dilated
    apex_wall = 0.8 * float(rng.uniform(0.85, 1.15))
    if rng.random() < 0.3:  # foreshortened: the plane misses the true apex
        length_scale *= float(rng.uniform(0.8, 0.95))
        apex_wall = 0.8 * float(rng.uniform(1.3, 2.0))
    p_wma = 0.55 if ef < 40 else (0.35 if ef < 50 else 0.06)
    territory, severity = None, 0.0
    if rng.random() < p_wma:
        territory = str(rng.choice(["LAD", "LAD", "RCA", "LCx"]))
        severity = 1.0 if rng.random() < 0.5 else float(rng.uniform(0.4, 0.75))
    half_angle = float(rng.uniform(36, 46))
    view = _draw_view(rng, 8.4 * (edv / 120) ** (1 / 3) * length_scale, half_angle, zoom_p=0.15 + 0.35 * dcm)
    return CaseParams(
        ef=ef,
        edv=edv,
        hr_bpm=hr_bpm,
        fps=fps,
        quality=quality,
        demographics=demo,
        hrv=float(rng.uniform(0.02, 0.08)),
        ef_jitter=float(rng.uniform(0.005, 0.02)),
        depth_cm=view["depth"],
        sector_half_angle_deg=half_angle,
        tilt_deg=view["tilt"],
        apex_x_cm=view["apex_x"],
        apex_z_cm=view["apex_z"],
        trunc=float(rng.uniform(0.45, 0.65)),
        wall_cm=float(rng.uniform(0.85, 1.2)) * (1 - 0.35 * dcm),
        gain_db=float(rng.normal(0, 3.0)),
        dynamic_range_db=float(rng.uniform(48, 62)),
        generation=2,
        lv_length_scale=length_scale,
        apex_wall_ratio=apex_wall,
        wma_territory=territory,
        wma_severity=severity,
        atten_np_cm=float(rng.uniform(0.0, 0.08)),
        display_gamma=float(rng.uniform(1.2, 1.8)),
        reject=float(rng.uniform(0.26, 0.4)),
        native_px=int(rng.integers(128, 225)),
        jpeg_quality=int(rng.integers(50, 96)),
    )


def _draw_view(rng: np.random.Generator, length: float, half_angle: float, zoom_p: float) -> dict[str, float]:
    """Depth (cm), LV tilt (deg) and apex position (cm) for an LV ``length`` cm long.

    The depth is absolute (a scanner setting), at least deep enough for the base; with probability
    ``zoom_p`` the sonographer zooms in until the base sits near the bottom. Tilt and apex offset are
    redrawn until the lateral wall (LV width ≈ 0.6 × length) stays inside the sector, as a
    sonographer would steer it.
    """
    for _ in range(50):
        tilt = float(rng.uniform(0, 22))
        apex_z_frac = float(rng.uniform(0.06, 0.16))
        base_depth = length * math.cos(math.radians(tilt)) / (1 - apex_z_frac)
        if rng.random() < zoom_p:
            depth = base_depth / float(rng.uniform(0.72, 0.92))
        else:
            depth = max(float(rng.uniform(13.0, 19.0)), base_depth / 0.72)
        apex_x = float(rng.uniform(-0.04, 0.1)) * depth
        apex_z = apex_z_frac * depth
        # Lateral (image-right) wall at mid-cavity: half a width to the right of the long axis.
        t = math.radians(tilt)
        mid_x = apex_x + 0.5 * length * math.sin(t) + 0.35 * length * math.cos(t)
        mid_z = apex_z + 0.5 * length * math.cos(t) - 0.35 * length * math.sin(t)
        if math.degrees(math.atan2(mid_x, mid_z)) < half_angle - 4:
            break
    return {"depth": depth, "tilt": tilt, "apex_x": apex_x, "apex_z": apex_z}


def wall_motion(s: np.ndarray, territory: str | None, severity: float) -> np.ndarray:
    """Motion factor (same shape as s) along the contour arc s ∈ [0, 1]: 1 normal, 1 − severity in
    the territory's core, cosine-tapered over :data:`WMA_TAPER` at its borders."""
    if territory is None or severity == 0.0:
        return np.ones_like(s)
    lo, hi = WMA_TERRITORIES[territory]
    out_by = np.maximum(lo - s, s - hi).clip(0, WMA_TAPER) / WMA_TAPER  # 0 inside … 1 a taper away
    return 1 - severity * (0.5 + 0.5 * np.cos(np.pi * out_by))


class EchoPhantom2(EchoPhantom):
    """Generation-2 renderer: same physiology and neighbours as :class:`EchoPhantom`, LV from a
    blended (regionally abnormal) contour, and the public datasets' image chain.

    ``render(times)`` returns frames (F, 112, 112) uint8 and contours (F, 64, 2) in 112-px units.
    """

    n_depth, n_beams = N_DEPTH2, N_BEAMS2
    quality_levels = QUALITY2
    # Thick bright leaflets flapping in two frames dominated the frame-to-frame change (consecutive
    # frame correlation 0.956 → 0.968 on 9 clips when dimmed): real leaflets are thin and greyer.
    leaflet_amp = 0.5

    def __init__(self, case: CaseParams, seed: int | np.random.Generator, duration_s: float = 3600.0):
        super().__init__(case, seed, duration_s)
        rng = self.rng
        ed = self.ed_shape
        self.u, self.v = self._lv_coords()
        # Polar coordinates about the ED cavity centre: every blended outline is star-shaped about it.
        self.centre_u = ed.a
        du = self.u - ed.a
        self.r = np.hypot(du, self.v)
        self.phi = np.arctan2(self.v, du)
        cos, sin = np.cos(self.phi), np.sin(self.phi)
        r_ed = 1 / np.sqrt((cos / ed.a) ** 2 + (sin / ed.b) ** 2)
        r_out_ed = 1 / np.sqrt((cos / (ed.a + ed.ta)) ** 2 + (sin / (ed.b + ed.tw)) ** 2)
        self.r_ed, self.r_out_ed = r_ed, r_out_ed
        self.wall_area = r_out_ed**2 - r_ed**2  # per-angle myocardial area (×½dφ), kept in systole
        # Contour parameter θ of the full outline and its motion factor (constant past the base).
        th0 = math.acos(case.trunc)
        self.theta = np.linspace(0, 2 * np.pi, N_BLEND, endpoint=False)
        s = np.clip((self.theta - th0) / (2 * np.pi - 2 * th0), 0, 1)
        self.motion = wall_motion(s, case.wma_territory, case.wma_severity)
        self._drive = self._drive_table()
        # Fixed per clip: probe-fixed clutter (reverberation), receive gains, noise floor, TGC knots.
        nd, nb = self.n_depth, self.n_beams
        clutter = rng.standard_normal((nd, nb, 2), dtype=np.float32) * np.float32(0.3 * self.clutter)
        self.clutter_field = clutter * np.exp(-self.bz / 2.0).astype(np.float32)[..., None]
        tgc_knots = rng.normal(0, 2.0, 4)
        tgc_db = np.interp(self.depths, np.linspace(0, self.r_max, 4), tgc_knots)
        gain = np.exp(-case.atten_np_cm * self.depths) * 10 ** (tgc_db / 20)
        self.rx_gain = (gain[:, None] * self.beam_gain[None, :] * self.dropout).astype(np.float32)
        self.noise_floor = (self.noise_amp * (0.4 + self.depths / self.r_max))[:, None].astype(np.float32)
        self.tissue = np.dstack([self.scat, self.texture]).astype(np.float32)  # re, im, echogenicity
        self.jpeg_params = [cv2.IMWRITE_JPEG_QUALITY, case.jpeg_quality]
        # Tissue around the heart (fat, lung edge) is brighter than generation 1's: real sectors show
        # texture everywhere, and the sector statistics count a pixel only if it ever exceeds 12.
        self.background = float(rng.uniform(0.12, 0.28))

    # ----- geometry --------------------------------------------------------------------------------
    def _blend(self, shape: LVShape, theta: np.ndarray, motion: np.ndarray) -> np.ndarray:
        """LV-frame outline points (len(theta), 2) (u, v) cm: ED ellipse + motion × (shape − ED)."""
        ed = self.ed_shape
        cos, sin = np.cos(theta), np.sin(theta)
        du = (shape.a - ed.a) * (1 + cos)
        dv = (shape.b - ed.b) * sin
        return np.stack([ed.a * (1 + cos) + motion * du, ed.b * sin + motion * dv], axis=1)

    def _contour_uv(self, shape: LVShape, n: int) -> np.ndarray:
        """Endocardial contour (n, 2) in (u, v) cm, base → apex → base, as phantom.lv_contour_uv."""
        th0 = math.acos(self.case.trunc)
        theta = np.linspace(th0, 2 * np.pi - th0, n)
        s = (theta - th0) / (2 * np.pi - 2 * th0)
        return self._blend(shape, theta, wall_motion(s, self.case.wma_territory, self.case.wma_severity))

    def _drive_table(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(Simpson volumes of the blended contour, drive volumes) both (N_DRIVE,) mL, increasing;
        None without a wall-motion abnormality (the contour is the ellipse: Simpson ≈ volume)."""
        if self.case.wma_territory is None:
            return None
        edv = self.case.edv
        drive = edv * np.linspace(0.03, 1.15, N_DRIVE)
        rendered = [simpson_volume(self._contour_uv(lv_shape(self.case, d, edv), 96))[0] for d in drive]
        return np.maximum.accumulate(np.array(rendered)), drive

    def shape_at(self, t: float) -> LVShape:
        """The globally contracting (drive) shape whose blended contour holds the volume at t."""
        volume = self.volume(t)
        if self._drive is not None:
            volume = float(np.interp(volume, *self._drive))
        return lv_shape(self.case, volume, self.case.edv)

    def contour_px(self, t: float, n: int = 64) -> np.ndarray:
        """LV endocardial contour at time t, (n, 2) pixel (x, y) of the 112-px output."""
        xz = self.to_world(self._contour_uv(self.shape_at(t), n))
        return np.stack([(xz[:, 0] + self.case.depth_cm / 2), xz[:, 1]], axis=1) * self.px_per_cm

    def _radii(self, shape: LVShape) -> tuple[np.ndarray, np.ndarray]:
        """Endocardial and epicardial radius (cm) about the ED centre in every beam sample's direction.

        The myocardium keeps its ED area per direction, so a segment that moves in thickens and an
        akinetic one does not.
        """
        pts = self._blend(shape, self.theta, self.motion)
        ang = np.arctan2(pts[:, 1], pts[:, 0] - self.centre_u)
        rad = np.hypot(pts[:, 0] - self.centre_u, pts[:, 1])
        order = np.argsort(ang)
        radius = np.interp(self.phi, ang[order], rad[order], period=2 * np.pi)
        return radius, np.sqrt(radius**2 + self.wall_area)

    def _regions(self, shape: LVShape, radius: np.ndarray, outer: np.ndarray) -> LVRegions:
        """Cavity, myocardium and pericardium on the apex side of the (possibly tilted) mitral plane."""
        base = self._contour_uv(shape, 2)  # the two annulus points: septal, lateral
        del_u, del_v = base[1] - base[0]
        normal_u, normal_v = del_v, -del_u  # perpendicular to the mitral plane
        if normal_u < 0:  # point it away from the apex (towards the atria)
            normal_u, normal_v = -normal_u, -normal_v
        below_base = (self.u - base[0, 0]) * normal_u + (self.v - base[0, 1]) * normal_v <= 0
        myo = (self.r <= outer) & below_base
        peri = (self.r > outer) & (self.r <= 1.07 * outer) & below_base & (self.v < 0.3 * shape.b)
        mid = base.mean(axis=0)
        half_w = 0.5 * float(np.hypot(del_u, del_v))
        return LVRegions(
            cavity=(self.r <= radius) & below_base,
            myo=myo,
            peri=peri,
            base_u=float(mid[0]),
            valve_v=float(mid[1]),
            valve_half_w=half_w,
            crux_v=float(base[0, 1]) + 0.5 * self.ed_shape.tw,
        )

    def _tissue_fields(self, radius: np.ndarray, outer: np.ndarray) -> np.ndarray:
        """Tissue-fixed scatterers (re, im) and echogenicity texture at every beam sample's ED
        position: (n_depth, n_beams, 3) float32. The backward map scales the radius about the ED
        centre (cavity), stretches the wall across its thickness, and decays outside it."""
        r = self.r
        lam = np.clip((r - radius) / np.maximum(outer - radius, 1e-3), 0, 1)
        r_ref = np.where(r < radius, r * self.r_ed / radius, self.r_ed + lam * (self.r_out_ed - self.r_ed))
        r_ref = np.where(r > outer, r + (self.r_out_ed - outer) * np.exp(-(r - outer) / 1.5), r_ref)
        u_ref = self.centre_u + r_ref * np.cos(self.phi)
        v_ref = r_ref * np.sin(self.phi)
        xz = self.apex + u_ref[..., None] * self.axis + v_ref[..., None] * self.perp
        cells = ((xz - self.tissue_origin) / self.cell).astype(np.float32)
        return cv2.remap(
            self.tissue, cells[..., 0], cells[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )

    # ----- image chain -----------------------------------------------------------------------------
    def _render_frame(self, t: float) -> np.ndarray:
        """One frame (112, 112) uint8 at time t (s), after down-sampling and the JPEG round trip."""
        shape = self.shape_at(t)
        radius, outer = self._radii(shape)
        amp, blood = self._echogenicity(t, self.u, self.v, self._regions(shape, radius, outer))
        fields = self._tissue_fields(radius, outer)
        amp = (amp * fields[..., 2]).astype(np.float32)
        # Flowing blood decorrelates its faint speckle from frame to frame; tissue keeps its own.
        decorr = np.where(blood, np.float32(BLOOD_DECORR), np.float32(self.decorr))
        return self._display(self._envelope(fields[..., :2], amp, decorr))

    def _envelope(self, sc: np.ndarray, amp: np.ndarray, decorr: np.ndarray) -> np.ndarray:
        """Scatterers (n_depth, n_beams, 2) × echogenicity (n_depth, n_beams) → envelope (same 2-D
        shape), receive gains applied; ``decorr`` (n_depth, n_beams) is the share of each sample's
        echo that is new in this frame. One fresh draw per frame carries both that decorrelation and
        the electronic noise (independent Gaussians add to one), both blurred by the receive PSF as
        in a real system; the clutter is probe-fixed."""
        q, d = self.q, decorr
        tissue = self.rx_gain * amp
        fresh_sd = np.sqrt((d * tissue) ** 2 + self.noise_floor**2)
        fresh = self.rng.standard_normal(sc.shape, dtype=np.float32)
        field = sc * (np.sqrt(1 - d * d) * tissue)[..., None] + fresh * fresh_sd[..., None]
        field += self.clutter_field
        ax, lat = 1.05 * q["blur"], 1.43 * q["blur"]
        near = cv2.GaussianBlur(field, (0, 0), sigmaX=lat, sigmaY=ax) * math.sqrt(4 * math.pi * lat * ax)
        wide = cv2.GaussianBlur(field, (0, 0), sigmaX=1.4 * lat, sigmaY=ax)
        wide *= math.sqrt(4 * math.pi * 1.4 * lat * ax)
        dn = (self.depths / self.r_max).astype(np.float32)[:, None, None]
        field = near + (wide - near) * dn  # the lateral beam spreads beyond the focus
        return cv2.magnitude(np.ascontiguousarray(field[..., 0]), np.ascontiguousarray(field[..., 1]))

    def _display(self, env: np.ndarray) -> np.ndarray:
        """Envelope → log compression, reject, display curve, scan conversion at native size, sector,
        down-sampling to 112 × 112 and the JPEG round trip: (112, 112) uint8."""
        case = self.case
        db = 20 * np.log10(env + 1e-6) + case.gain_db
        top = 4.0  # dB above mean myocardium that maps to white
        x = (db - (top - case.dynamic_range_db)) / case.dynamic_range_db
        x = np.clip((x - case.reject) / (1 - case.reject), 0, 1)
        img = (x**case.display_gamma * 245).astype(np.float32)  # scanners keep speckle below white
        native = cv2.remap(
            img, self.map_beam, self.map_depth, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        small = cv2.resize(native * self.sector, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
        frame = np.clip(small + 0.5, 0, 255).astype(np.uint8)
        if case.jpeg_quality <= 0:
            return frame
        ok, buf = cv2.imencode(".jpg", frame, self.jpeg_params)
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode a frame")
        return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
