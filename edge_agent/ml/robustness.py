"""Robustness of a model artefact to what live windows and real views do (issue 12's acceptance table).

For ``n`` fresh simulated cines (a seed never used in training, equal parts good/medium/poor) every
cine is cut and transformed the ways the live agent and real acquisitions differ from the training
windows, and each variant is scored with the same posterior sampler:

- ``aligned``: the first complete beat, exact ED→ED (what the model was trained on);
- ``perturbed``: the same beat as a live windower may cut it: both ends jittered by a few frames,
  the period off by up to ±20 %, and now and then a double or a half beat
  (:func:`edge_agent.core.clip.perturbed_bounds`);
- ``phase_j``: a one-period window starting j/``phases`` of a period after ED (j = 1 … phases − 1):
  the spread of the posterior mean over phases measures dependence on where a window starts;
- view transforms of the aligned clip about the sector apex (top centre): zoom, aspect, rotation,
  gain (:func:`view_transform`).

Reported (``robustness.json``, ``report.md``, two plots): MAE, PICP90, CRPS against the regression and
Gaussian baselines (and the area-length estimate of the LV-area head, a third baseline) and
AUROC(EF < 40 %) for aligned and perturbed windows; the median over cines of the phase spread; the
median |Δ posterior mean| of every view transform; the out-of-distribution score's share above its
threshold on every variant, and how it separates familiar windows (aligned and perturbed) from
corrupted ones (:data:`edge_agent.ml.ood.CORRUPTIONS`, made from the aligned beats) and from
windows cut by the live path from real recordings (``real``). The targets are those of issue 12
(:data:`TARGETS`). EF in %, frames (F, H, W) uint8.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from edge_agent.core import metrics
from edge_agent.core.clip import CLIP_FRAMES, CLIP_SIZE, WindowErrors, make_clip, perturbed_bounds
from edge_agent.core.reliability import THRESHOLD
from edge_agent.live.beats import source_windows
from edge_agent.live.capture import CaptureConfig
from edge_agent.live.cycles import CycleConfig
from edge_agent.ml.augment import views_about_apex
from edge_agent.ml.ood import CORRUPTIONS, corrupt, separation
from edge_agent.ml.train import sample_arrays
from edge_agent.model.artefact import load_model
from edge_agent.model.posterior import recalibrate
from edge_agent.sim.clips import ClipArrays, case_demographics
from edge_agent.sim.phantom import QUALITIES
from edge_agent.sim.simulator import draw_case, simulate_clip

# View transforms: name → (kind, amount). Zoom and aspect are scale factors about the apex (aspect
# stretches x only), rotation is in degrees about the apex, gain in dB of the displayed image.
VIEW_TRANSFORMS: dict[str, tuple[str, float]] = {
    "zoom_0.75": ("zoom", 0.75),
    "zoom_1.25": ("zoom", 1.25),
    "aspect_0.9": ("aspect", 0.9),
    "aspect_1.1": ("aspect", 1.1),
    "rotate_-10": ("rotate", -10.0),
    "rotate_+10": ("rotate", 10.0),
    "gain_-6dB": ("gain", -6.0),
    "gain_+6dB": ("gain", 6.0),
}
# Issue 12's targets: (metric key in the summary, comparison, bound).
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("aligned.mae", "<=", 3.0),
    ("perturbed.mae", "<=", 3.5),
    ("phase_spread_median", "<=", 2.0),
    ("view_shift_median_max", "<=", 2.0),
    ("aligned.picp90", ">=", 0.85),
    ("aligned.picp90", "<=", 0.95),
    ("perturbed.picp90", ">=", 0.85),
    ("perturbed.picp90", "<=", 0.95),
    ("aligned.auroc_ef40", ">=", 0.97),
    # CRPS of the published posterior minus the better baseline's: below 0 beats both.
    ("aligned.crps_minus_baselines", "<=", 0.0),
    ("perturbed.crps_minus_baselines", "<=", 0.0),
    # The epistemic score: every corrupted kind told apart, and never shown as a tight interval.
    *((f"ood.{kind}.auroc", ">=", 0.95) for kind in CORRUPTIONS),
    *((f"ood.{kind}.handled", ">=", 0.95) for kind in CORRUPTIONS),
)


@dataclass(frozen=True)
class RobustnessRequest:
    """model: artefact (.pt + .json); n: cines; seed: simulator seed (never a training seed);
    k: posterior samples per window; phases: start phases per beat; out: report folder.
    errors: how the perturbed windows are cut (exact-phase starts: the phases are scored apart).
    generation: the simulator generation of the cines (1, or 2: edge_agent.sim.phantom2).
    real: recordings (files or source URIs) whose live-cut windows are scored for the OOD table."""

    model: str = "engines/mcsdr_default.pt"
    n: int = 500
    seed: int = 4242
    k: int = 40
    phases: int = 8
    out: str = "runs/robustness"
    errors: WindowErrors = field(default_factory=WindowErrors)
    generation: int = 1
    transforms: tuple[str, ...] = field(default_factory=lambda: tuple(VIEW_TRANSFORMS))
    real: tuple[str, ...] = ()


def view_transform(clip: np.ndarray, kind: str, amount: float) -> np.ndarray:
    """Clip (F, H, W) uint8 → the same view zoomed / stretched / rotated (degrees) about the sector
    apex, or with the display gain changed by ``amount`` dB (:func:`.augment.views_about_apex`)."""
    params = {"zoom": 1.0, "aspect": 1.0, "rotate": 0.0, "gain": 0.0}
    if kind not in params:
        raise ValueError(f"view transform kind {kind!r} is not one of zoom, aspect, rotate, gain")
    params[kind] = amount
    args = (torch.tensor([params[name]]) for name in ("zoom", "aspect", "rotate", "gain"))
    return views_about_apex(torch.from_numpy(np.ascontiguousarray(clip))[None], *args)[0].numpy()


@dataclass
class _Windows:
    """Every variant's clips for the n cines: name → (n, 32, 112, 112) uint8; truth (n,) EF %."""

    clips: dict[str, np.ndarray]
    truth: np.ndarray
    demo: np.ndarray
    mask: np.ndarray
    perturbation: list[str]

    def arrays(self, clips: np.ndarray) -> ClipArrays:
        """One variant's clips (n, 32, 112, 112) with the cines' truth and demographics."""
        return ClipArrays.ungraded(clips, self.truth, self.demo, self.mask)


def _variant_names(req: RobustnessRequest) -> list[str]:
    return ["aligned", "perturbed", *(f"phase_{j}" for j in range(1, req.phases)), *req.transforms]


def simulate_windows(req: RobustnessRequest) -> _Windows:
    """Render the n cines (cine i from ``SeedSequence([seed, i])``, quality i mod 3) and cut every variant."""
    names = _variant_names(req)
    shape = (req.n, CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE)
    clips = {name: np.empty(shape, np.uint8) for name in names}
    truth = np.empty(req.n)
    demo, mask = np.empty((req.n, 4), np.float32), np.empty((req.n, 4), bool)
    kinds = []
    for i in tqdm(range(req.n), desc="simulating cines", unit="cine"):
        rng = np.random.default_rng(np.random.SeedSequence([req.seed, i]))
        case = draw_case(rng, quality=QUALITIES[i % len(QUALITIES)], generation=req.generation)
        # Start just before an ED; 3.5 beats leave room for late phases and double beats.
        sim = simulate_clip(case, rng, n_beats=3.5, start_phase=0.95)
        start, end = float(sim.ed_frames[0]), float(sim.ed_frames[1])
        period, last = end - start, len(sim.frames)
        truth[i] = sim.beat_ef[0]
        demo[i], mask[i] = case_demographics(case.demographics)
        clips["aligned"][i] = make_clip(sim.frames, start, end)
        s, e, kind = perturbed_bounds(start, end, rng, req.errors)
        clips["perturbed"][i] = make_clip(sim.frames, s, min(e, last))
        kinds.append(kind)
        for j in range(1, req.phases):
            s = start + j * period / req.phases
            clips[f"phase_{j}"][i] = make_clip(sim.frames, s, min(s + period, last))
        for name in req.transforms:
            clips[name][i] = view_transform(clips["aligned"][i], *VIEW_TRANSFORMS[name])
    return _Windows(clips, truth, demo, mask, kinds)


def _scores(
    samples: np.ndarray,
    reg: np.ndarray,
    gauss: np.ndarray,
    area_ef: np.ndarray,
    ood: np.ndarray,
    truth: np.ndarray,
) -> dict[str, Any]:
    """Headline metrics of the published posterior, the baselines' CRPS and the share of windows
    the OOD score flags, for one variant."""
    s = metrics.evaluate_samples(samples, truth)
    crps_regression = float(np.abs(reg - truth).mean())  # CRPS of a point prediction
    crps_gaussian = float(metrics.crps(gauss, truth).mean())
    return {
        "mae": s["mae"],
        "picp90": s["picp90"],
        "crps": s["crps"],
        "crps_regression": crps_regression,
        "crps_gaussian": crps_gaussian,
        "crps_minus_baselines": s["crps"] - min(crps_regression, crps_gaussian),
        "auroc_ef40": s["auroc_ef40"],
        "mean_std": s["mean_std"],
        "crps_area_length": float(np.abs(area_ef - truth).mean()),
        "ood_flagged": float(np.mean(ood > THRESHOLD)) if np.isfinite(ood).all() else None,
    }


def summarize(
    means: dict[str, np.ndarray],
    scores: dict[str, dict[str, Any]],
    phases: int,
    ood: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Issue 12's table from per-variant posterior means (n,), per-variant scores and the OOD
    section (:func:`ood_section`) (pure)."""
    phase_means = np.stack([means["aligned"], *(means[f"phase_{j}"] for j in range(1, phases))])
    spread = phase_means.max(axis=0) - phase_means.min(axis=0)
    views = {
        name: float(np.median(np.abs(m - means["aligned"])))
        for name, m in means.items()
        if name != "aligned" and name != "perturbed" and not name.startswith("phase_")
    }
    out: dict[str, Any] = {
        "aligned": scores["aligned"],
        "perturbed": scores["perturbed"],
        "phase_spread_median": float(np.median(spread)),
        "phase_spread_p90": float(np.quantile(spread, 0.9)),
        "view_shift_median": views,
        "view_shift_median_max": max(views.values()) if views else None,
        "ood": ood or {},
    }
    out["targets"] = [_check_target(out, *t) for t in TARGETS]
    return out


def _check_target(summary: dict[str, Any], key: str, op: str, bound: float) -> dict[str, Any]:
    value: Any = summary
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    met = None if value is None else (value <= bound if op == "<=" else value >= bound)
    return {"metric": key, "target": f"{op} {bound}", "value": value, "met": met}


def _posterior(
    model: Any, scale: float | None, arr: ClipArrays, req: RobustnessRequest, name: str
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Published posterior samples (n, K) EF % of the windows ``arr``, and sample_arrays' dict."""
    pred = sample_arrays(model, arr, k=req.k, seed=req.seed, desc=f"posterior: {name}")
    return (recalibrate(pred["samples"], float(scale)) if scale else pred["samples"]), pred


def _width90(published: np.ndarray) -> np.ndarray:
    """Width (N,) EF points of each published posterior's central 90 % interval."""
    lo, hi = np.quantile(published, [0.05, 0.95], axis=1)
    return hi - lo


def _real_windows(uri: str) -> ClipArrays:
    """Windows cut from a recording by the live path (detector and clip function), EF unknown (NaN)."""
    got = list(
        source_windows(
            uri, limit=None, cycles=CycleConfig(), warmup_frames=CaptureConfig().warmup_frames, desc=uri
        )
    )
    if not got:
        raise ValueError(f"--real {uri}: the live path found no beat in it; give a longer recording")
    stack = [np.stack([getattr(x, f) for x in got]) for f in ("clip", "demo", "mask")]
    return ClipArrays.ungraded(stack[0], np.full(len(got), np.nan), stack[1], stack[2])


def ood_section(
    model: Any,
    scale: float | None,
    w: _Windows,
    req: RobustnessRequest,
    familiar: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    """Every corrupted kind and every real recording against the familiar windows' (scores, widths):
    :func:`edge_agent.ml.ood.separation`. Empty when the model carries no fitted score."""
    if not np.isfinite(familiar[0]).all():
        return {}
    out: dict[str, Any] = {}
    for j, kind in enumerate(CORRUPTIONS):
        rngs = (np.random.default_rng([req.seed, i, j]) for i in range(req.n))
        clips = np.stack([corrupt(c, kind, rng) for c, rng in zip(w.clips["aligned"], rngs, strict=True)])
        published, pred = _posterior(model, scale, w.arrays(clips), req, kind)
        out[kind] = separation(*familiar, pred["ood_score"], _width90(published))
    for uri in req.real:
        arr = _real_windows(uri)
        published, pred = _posterior(model, scale, arr, req, Path(uri).name)
        out[f"real:{Path(uri).name}"] = {
            **separation(*familiar, pred["ood_score"], _width90(published)),
            "windows": len(arr),
            "mean_ef": float(published.mean()),
        }
    return out


def run_robustness(req: RobustnessRequest, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole check (module docstring); writes robustness.json, report.md and plots to req.out."""
    model, sidecar = load_model(req.model)
    scale = (sidecar.get("recalibration") or {}).get("scale")
    w = simulate_windows(req)
    means, scores, ood, widths = {}, {}, {}, {}
    for name in _variant_names(req):
        published, pred = _posterior(model, scale, w.arrays(w.clips[name]), req, name)
        means[name], widths[name], ood[name] = published.mean(axis=1), _width90(published), pred["ood_score"]
        reg = model.transform.inverse_np(pred["reg"])
        scores[name] = _scores(published, reg, pred["gauss_samples"], pred["area_ef"], ood[name], w.truth)
    familiar = tuple(np.r_[x["aligned"], x["perturbed"]] for x in (ood, widths))
    result = summarize(means, scores, req.phases, ood_section(model, scale, w, req, familiar))
    result.update(
        request=dataclasses.asdict(req),
        model={"path": req.model, "sha256": sidecar["sha256"], "recalibration_scale": scale},
        perturbation_kinds={k: w.perturbation.count(k) for k in sorted(set(w.perturbation))},
        by_variant=scores,
    )
    out = Path(req.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(result, indent=2, default=list))
    (out / "report.md").write_text(render_report(result))
    _plot(out / "robustness.png", means, w.truth, result)
    progress(f"robustness: report in {out / 'report.md'}")
    return result


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def render_report(result: dict[str, Any]) -> str:
    """Markdown: the targets table, then every variant's scores."""
    lines = [
        f"# Robustness of `{result['model']['path']}`",
        "",
        f"{result['request']['n']} simulated cines (generation {result['request']['generation']}), "
        f"seed {result['request']['seed']}, "
        f"K = {result['request']['k']}; published posterior (recalibration scale "
        f"{_fmt(result['model']['recalibration_scale'])}). Perturbed windows: "
        + ", ".join(f"{k} {v}" for k, v in result["perturbation_kinds"].items()),
        "",
        "| metric | target | measured | met |",
        "|---|---|---:|---|",
    ]
    for t in result["targets"]:
        met = "–" if t["met"] is None else "yes" if t["met"] else "**no**"
        lines.append(f"| {t['metric']} | {t['target']} | {_fmt(t['value'])} | {met} |")
    keys = ("mae", "picp90", "crps", "crps_regression", "crps_gaussian", "crps_area_length", "auroc_ef40")
    keys += ("mean_std", "ood_flagged")
    lines += [
        "",
        "| variant | MAE | PICP90 | CRPS | CRPS regression | CRPS Gaussian | CRPS area-length | AUROC<40 "
        "| mean std | OOD flagged |",
    ]
    lines.append("|---|" + "---:|" * len(keys))
    for name, s in result["by_variant"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(s[k]) for k in keys) + " |")
    lines += [
        "",
        f"Phase spread of the posterior mean over {result['request']['phases']} start phases: "
        f"median {_fmt(result['phase_spread_median'])}, p90 {_fmt(result['phase_spread_p90'])} EF points.",
    ]
    lines += ["", "| view transform | median |Δ mean| (EF points) |", "|---|---:|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in result["view_shift_median"].items()]
    if result["ood"]:
        lines += [
            "",
            "Out-of-distribution score against the familiar (aligned and perturbed) windows; "
            "flagged: score > 1 (published as not reliable); handled: flagged or a 90 % interval "
            "≥ 3× the familiar median width.",
            "",
            "| input | AUROC | flagged | median score | width ratio | handled |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        cols = ("auroc", "flagged", "median_score", "width_ratio", "handled")
        lines += [f"| {k} | " + " | ".join(_fmt(v[c]) for c in cols) + " |" for k, v in result["ood"].items()]
    return "\n".join(lines) + "\n"


def _plot(path: Path, means: dict[str, np.ndarray], truth: np.ndarray, result: dict[str, Any]) -> None:
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    for name, marker in (("aligned", "o"), ("perturbed", "x")):
        ax1.scatter(truth, means[name], s=10, marker=marker, label=name, alpha=0.7)
    ax1.plot([0, 100], [0, 100], "k--", lw=0.8)
    ax1.set(xlabel="true EF (%)", ylabel="posterior mean (%)", title="aligned vs perturbed windows")
    ax1.legend()
    names = ["phase spread", *result["view_shift_median"]]
    values = [result["phase_spread_median"], *result["view_shift_median"].values()]
    ax2.barh(names, values, color=["tab:red" if v > 2 else "tab:green" for v in values])
    ax2.axvline(2.0, color="k", ls="--", lw=0.8)
    ax2.set(xlabel="median EF points (target ≤ 2)", title="sensitivity to phase and view")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
