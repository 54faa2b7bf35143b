"""Offline evaluation of an MCSDR artefact: posterior metrics, the two baselines, a report and plots.

One call, :func:`run_evaluation`, takes an :class:`EvalRequest` and

1. loads ``<model>.pt`` + its sidecar JSON (:func:`edge_agent.model.artefact.load_model`) and the clips:
   fresh simulator beats (``synthetic``, the default) or one split of a dataset folder;
2. draws K posterior samples per clip once (:func:`edge_agent.ml.train.sample_arrays`, seeded);
3. scores them (:func:`edge_agent.core.metrics.evaluate_samples`) as sampled ("raw"), after the
   sidecar's dispersion recalibration ("recalibrated"), and optionally the regression and
   Gaussian heads ("regression", "gaussian");
4. writes into ``out/``: ``metrics.json``, ``report.md``, ``samples.npz`` and four PNG plots.

All EF values are in %. Quality labels are the simulator's / CAMUS's good/medium/poor; clips
without a grade are labelled "unknown", and a set with no grades at all gets no per-quality
breakdown.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from edge_agent.core import metrics
from edge_agent.ml.detector_eval import clip_summary, detector_windows
from edge_agent.ml.ood import reliability_summary
from edge_agent.ml.train import sample_arrays
from edge_agent.model.artefact import load_model
from edge_agent.model.posterior import recalibrate
from edge_agent.sim.clips import ClipArrays, generate
from edge_agent.sim.phantom import QUALITIES

# Keys of the raw MCSDR metrics repeated at the top level of metrics.json, for `--json` consumers.
FLAT_KEYS = (
    "n",
    "mae",
    "rmse",
    "r2",
    "crps",
    "crps_fair",
    "picp50",
    "picp90",
    "picp95",
    "qice",
    "auroc_ef50",
    "auroc_ef40",
    "frac_out_of_range",
    "mean_std",
    "std_by_quality",
)
UNKNOWN_QUALITY = "unknown"
RELIABILITY_LEVELS = np.round(np.arange(0.10, 0.951, 0.05), 2)  # 0.10, 0.15, …, 0.95
METHODS = (  # (metrics.json key, report/plot label)
    ("raw", "MCSDR raw"),
    ("recalibrated", "MCSDR recalibrated"),
    ("regression", "regression"),
    ("gaussian", "Gaussian"),
)
QUALITY_COLOURS = {
    "good": "tab:green",
    "medium": "tab:orange",
    "poor": "tab:red",
    UNKNOWN_QUALITY: "tab:gray",
}


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate, on what, and where to write the results.

    model: artefact path without suffix (``engines/mcsdr_default`` → ``.pt`` + ``.json`` sidecar).
    data: dataset folder read with ``format``/``split``; ``synthetic``: fresh simulator clips
        (``n`` of them from ``seed``). Give at most one; with neither, synthetic clips are used.
    seed: simulator seed, and the seed of the K starting noises (for datasets too).
    k: posterior samples per clip. baselines: also score the regression and Gaussian heads.
    out: output folder; json_path: an extra copy of metrics.json. workers: simulator processes.
    beats: ``traced`` (the dataset's traced ED frame, else the clip's periodicity) or ``detector``
        (EchoNet formats: every window the live agent's detector cuts, scored per beat and pooled
        per clip, :mod:`edge_agent.ml.detector_eval`).
    """

    model: str
    data: str | None = None
    format: str = "echonet"
    split: str = "TEST"
    synthetic: bool = False
    n: int = 500
    seed: int = 6
    generation: int | None = None  # synthetic: simulator generation; None: the model's training data's
    k: int = 40
    baselines: bool = False
    out: str = "runs/eval"
    json_path: str | None = None
    record: bool = False  # also store the figures in the model's sidecar JSON
    workers: int = 2
    beats: str = "traced"

    def __post_init__(self) -> None:
        if self.beats not in ("traced", "detector"):
            raise ValueError(f"EvalRequest.beats: {self.beats!r} is not one of traced, detector")
        if self.beats == "detector" and (self.data is None or self.format not in ("echonet", "pediatric")):
            raise ValueError(
                "EvalRequest.beats=detector plays the videos of an EchoNet-Dynamic or -Pediatric folder "
                "through the live detector: give --data with --format echonet or pediatric"
            )
        if self.data is not None and self.synthetic:
            raise ValueError(
                f"EvalRequest: both data={self.data!r} and synthetic=True were given; evaluate either a "
                "dataset folder (--data with --format/--split) or simulator clips (--synthetic), not both"
            )
        if self.k < 1:
            raise ValueError(f"EvalRequest.k: need at least 1 posterior sample per clip, got {self.k}")
        if self.data is None and self.n < 1:
            raise ValueError(f"EvalRequest.n: need at least 1 simulated clip, got {self.n}")


def quality_labels(codes: np.ndarray) -> list[str] | None:
    """Quality codes (N,) index into phantom.QUALITIES, −1 unknown → labels, or None if none is known."""
    c = np.asarray(codes)
    if not (c >= 0).any():
        return None
    return [QUALITIES[i] if i >= 0 else UNKNOWN_QUALITY for i in c.tolist()]


def regression_metrics(pred: np.ndarray, truth: np.ndarray, quality: list[str] | None) -> dict[str, Any]:
    """Metrics of a point prediction pred (N,) EF % scored as a one-sample "posterior".

    A point mass has CRPS = |error| and PICP ≈ 0 (an interval of zero width), which is correct.
    Its AUROC from the share of samples below a threshold would be a 0/1 step, so the AUROCs here
    rank clips by the negative predicted EF instead (lower EF = more likely reduced).
    """
    out = metrics.evaluate_samples(pred[:, None], truth, quality)
    for thr in metrics.AUROC_THRESHOLDS:
        labels = truth < thr
        both = labels.any() and not labels.all()  # otherwise undefined, as in evaluate_samples
        out[f"auroc_ef{round(thr)}"] = metrics.auroc(-pred, labels) if both else None
    return out


def _load_clips(req: EvalRequest, sidecar: dict) -> tuple[ClipArrays, dict[str, Any]]:
    """The evaluation clips and a JSON description of where they came from."""
    if req.data is not None and req.beats == "detector":
        from edge_agent.ml.datasets import open_dataset

        ds = open_dataset(req.data, req.format, req.split)
        windows = detector_windows(ds)
        traced = ClipArrays.from_dataset(ds, "reading traced beats")  # the offline cut, for comparison
        if len(windows.arr) == 0:
            raise ValueError(
                f"{req.data}: the live detector cut no window from any video of split {req.split!r}; "
                "check the videos play a moving echo at the FileList's frame rate"
            )
        return windows.arr, {
            "source": "dataset",
            "path": str(req.data),
            "format": req.format,
            "split": req.split,
            "n": len(windows.arr),
            "beats": "detector",
            "n_clips": len(ds),
            "windows": windows,
            "clip_efs": np.asarray(ds.efs, np.float64),
            "traced": traced,
        }
    if req.data is not None:
        from edge_agent.ml.datasets import open_dataset

        arr = ClipArrays.from_dataset(open_dataset(req.data, req.format, req.split), "reading clips")
        if len(arr) == 0:
            raise ValueError(
                f"{req.data}: split {req.split!r} of this {req.format} dataset holds no clips; "
                "pick a split present in its file list"
            )
        return arr, {
            "source": "dataset",
            "path": str(req.data),
            "format": req.format,
            "split": req.split,
            "n": len(arr),
        }
    train_data = sidecar.get("training", {}).get("data", {})
    generation = req.generation or int(train_data.get("generation", 1))
    trained_on = int(train_data.get("generation", 1))
    used = (
        {name: train_data.get(name) for name in ("train_seed", "val_seed")}
        if generation == trained_on
        else {}
    )
    if generation == 1 and train_data.get("mix_generation1", 0):
        used["mix_seed"] = train_data.get("mix_seed")
    if train_data.get("format") == "synthetic" and req.seed in used.values():
        # Sets with equal seeds share clips (datasets.synthetic), so the numbers would be optimistic.
        which = [name for name, s in used.items() if s == req.seed]
        warnings.warn(
            f"seed {req.seed} is the model's {'/'.join(which)} (sidecar training.data): these clips were "
            "seen in training or validation; pass another --seed for an unbiased evaluation",
            stacklevel=3,
        )
    # Simulate the population the model was trained on (adult or pediatric phantom).
    pediatric = bool(train_data.get("pediatric", False))
    arr = generate(
        req.n,
        req.seed,
        balanced_quality=True,
        pediatric=pediatric,
        workers=req.workers,
        desc="simulating clips",
        generation=generation,
    )
    return arr, {
        "source": "synthetic",
        "n": req.n,
        "seed": req.seed,
        "generation": generation,
        "pediatric": pediatric,
        "balanced_quality": True,
    }


def _save(fig: Figure, path: Path) -> None:
    # Explicit Agg canvas: no pyplot, so no global backend state and no display needed.
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)


def _plot_pred_vs_true(path: Path, samples: np.ndarray, truth: np.ndarray, quality: list[str] | None) -> None:
    """Posterior mean vs reference EF, 90 % central intervals as bars, coloured by quality."""
    mean = samples.mean(axis=1)
    lo, hi = np.quantile(samples, [0.05, 0.95], axis=1)
    labels = np.asarray(quality if quality is not None else [UNKNOWN_QUALITY] * len(truth))
    fig = Figure(figsize=(5.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 100], [0, 100], color="black", lw=1, ls="--", label="identity")
    for name in [*QUALITIES, UNKNOWN_QUALITY]:
        sel = labels == name
        if not sel.any():
            continue
        colour = QUALITY_COLOURS[name]
        # vlines, not errorbar: a skewed posterior's mean may sit outside its own 5–95 % interval.
        ax.vlines(truth[sel], lo[sel], hi[sel], color=colour, alpha=0.35, lw=1)
        ax.scatter(truth[sel], mean[sel], s=12, color=colour, label=name if quality is not None else "clips")
    ax.set(
        xlim=(0, 100),
        ylim=(0, 100),
        xlabel="reference EF (%)",
        ylabel="posterior mean EF (%)",
        title=f"MCSDR: posterior mean and 90 % interval (MAE {np.abs(mean - truth).mean():.2f})",
    )
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def _plot_reliability(path: Path, truth: np.ndarray, posteriors: dict[str, np.ndarray]) -> None:
    """Observed vs nominal coverage of central intervals, one line per sampled posterior."""
    fig = Figure(figsize=(5.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="black", lw=1, ls="--", label="ideal")
    for label, s in posteriors.items():
        ax.plot(
            RELIABILITY_LEVELS,
            metrics.coverage_curve(s, truth, RELIABILITY_LEVELS),
            marker="o",
            ms=3,
            label=label,
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="nominal central-interval level",
        ylabel="observed coverage",
        title="Reliability of central intervals",
    )
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def _plot_pit(path: Path, truth: np.ndarray, posteriors: dict[str, np.ndarray]) -> None:
    """PIT histograms (density; flat at 1 when calibrated), one panel per posterior."""
    fig = Figure(figsize=(4.0 * len(posteriors), 3.5), layout="constrained")
    axes = fig.subplots(1, len(posteriors), sharey=True, squeeze=False)[0]
    for ax, (label, s) in zip(axes, posteriors.items(), strict=True):
        ax.hist(metrics.pit(s, truth), bins=10, range=(0, 1), density=True, color="tab:blue", alpha=0.7)
        ax.axhline(1.0, color="black", lw=1, ls="--")
        ax.set(xlim=(0, 1), xlabel="PIT", title=label)
    axes[0].set_ylabel("density")
    _save(fig, path)


def _plot_std_by_quality(path: Path, posteriors: dict[str, np.ndarray], quality: list[str] | None) -> None:
    """Box plots of the per-clip posterior std (EF %) per quality level, side by side per posterior."""
    labels = np.asarray(
        quality if quality is not None else [UNKNOWN_QUALITY] * len(next(iter(posteriors.values())))
    )
    levels = [q for q in [*QUALITIES, UNKNOWN_QUALITY] if (labels == q).any()]
    width = 0.8 / len(posteriors)
    fig = Figure(figsize=(1.6 * len(levels) + 2.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for j, (label, s) in enumerate(posteriors.items()):
        std = metrics.posterior_std(s)
        pos = np.arange(len(levels)) + (j - (len(posteriors) - 1) / 2) * width
        box = ax.boxplot(
            [std[labels == q] for q in levels],
            positions=pos,
            widths=0.9 * width,
            patch_artist=True,
            manage_ticks=False,
            medianprops={"color": "black"},
        )
        colour = f"C{j}"
        for patch in box["boxes"]:
            patch.set(facecolor=colour, alpha=0.5)
        ax.plot([], [], color=colour, lw=6, alpha=0.5, label=label)  # legend proxy
    ax.set_xticks(np.arange(len(levels)), levels)
    ax.set(xlabel="image quality", ylabel="posterior std (EF %)", title="Posterior spread by image quality")
    ax.legend(fontsize=8)
    _save(fig, path)


def _fmt(value: Any, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


# (metric key, row label, decimals) of the report's main table.
REPORT_ROWS = (
    ("n", "clips", 0),
    ("mae", "MAE (EF %)", 2),
    ("rmse", "RMSE (EF %)", 2),
    ("r2", "R²", 3),
    ("crps", "CRPS (EF %)", 2),
    ("crps_fair", "CRPS, fair (EF %)", 2),
    ("picp50", "PICP 50 %", 3),
    ("picp90", "PICP 90 %", 3),
    ("picp95", "PICP 95 %", 3),
    ("qice", "QICE", 4),
    ("auroc_ef50", "AUROC EF < 50 %", 3),
    ("auroc_ef40", "AUROC EF < 40 %", 3),
    ("frac_out_of_range", "share of samples outside (0, 100)", 4),
    ("mean_std", "mean posterior std (EF %)", 2),
)


def _reliability_lines(result: dict[str, Any]) -> list[str]:
    """The report's section on the reliability flag: per estimate (and per clip with the detector)."""
    parts = [("every estimate", result["reliability"])]
    if "per_clip" in result:
        parts.append(("per clip (pooled)", result["per_clip"]["reliability"]))
    if not parts[0][1]["scored"]:
        return [
            "",
            "The model carries no out-of-distribution score: every estimate is published as reliable.",
        ]
    big = parts[0][1]["big_error"]
    lines = [
        "",
        "## Reliability (the published posterior; flagged: out-of-distribution score > 1, LOW CONFIDENCE)",
        "",
        f"Confidently wrong: off by more than {big:g} points, the 90 % interval missing the truth, and "
        "published as reliable.",
        "",
        "| | n | flagged | MAE reliable | MAE flagged | PICP90 reliable | PICP90 flagged | confidently wrong "
        "| wrong but flagged |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in parts:
        cells = [r["n"], _fmt(r["flagged"], 3), _fmt(r["mae_reliable"], 2), _fmt(r["mae_flagged"], 2)]
        cells += [_fmt(r["picp90_reliable"], 3), _fmt(r["picp90_flagged"], 3)]
        cells += [r["confidently_wrong"], r["wrong_but_flagged"]]
        lines.append(f"| {name} | " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _per_clip_lines(c: dict[str, Any]) -> list[str]:
    """The report's section on clips found by the live detector (per-beat figures are the table)."""
    w = c["windows_per_clip"]
    return [
        "## Per clip: the live detector's windows, pooled as the running estimate",
        "",
        "The table above scores every window the detector cut (truth: its clip's EF). A clip's estimate",
        "is the pooled published posterior of its last 5 windows:",
        "",
        "| clips | MAE | RMSE | CRPS | PICP90 | mean std | AUROC EF<40 | AUROC EF<50 | windows per clip |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {c['n']} | {_fmt(c['mae'], 2)} | {_fmt(c['rmse'], 2)} | {_fmt(c['crps'], 2)} | "
        f"{_fmt(c['picp90'], 3)} | {_fmt(c['mean_std'], 2)} | {_fmt(c['auroc_ef40'], 3)} | "
        f"{_fmt(c['auroc_ef50'], 3)} | {w['min']:.0f}–{w['max']:.0f} (median {w['p50']:.0f}) |",
        "",
        "Windows by beat rule: "
        + ", ".join(f"{k} {v}" for k, v in c["windows_by_rule"].items())
        + f"; clips without any window: {len(c['clips_without_window'])}.",
        *_live_vs_offline_lines(c.get("live_vs_offline")),
    ]


def _live_vs_offline_lines(v: dict[str, Any] | None) -> list[str]:
    """The live path against the offline cut of the same clips (the traced beat), per EF band."""
    if v is None:
        return []
    lines = [
        "",
        "### Live path vs offline cut, the same clips",
        "",
        f"Pooled live estimate MAE {v['mae_live']:.2f} vs the traced beat's {v['mae_offline']:.2f}: "
        f"**live − offline {v['mae_live_minus_offline']:+.2f}** points (the live-replay aim: ≤ +1).",
        "",
        "| EF band | clips | MAE live | MAE offline | bias live | bias offline |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    live, off = v["by_band"]["live"], v["by_band"]["offline"]
    for band, b in live.items():
        cells = (_fmt(x, 2) for x in (b["mae"], off[band]["mae"], b["bias"], off[band]["bias"]))
        lines.append(f"| {band} | {b['n']} | " + " | ".join(cells) + " |")
    return lines


def render_report(result: dict[str, Any]) -> str:
    """Markdown report of a metrics.json dict: headline table (metric × method) and std by quality."""
    cols = [(key, label) for key, label in METHODS if key in result]
    data = result["data"]
    if data["source"] == "synthetic":
        source = f"{data['n']} simulated clips (generation {data.get('generation', 1)}), seed {data['seed']}"
    elif data.get("beats") == "detector":
        source = (
            f"{data['path']} ({data['format']}, split {data['split']}): {data['n']} windows cut by the "
            f"live detector from {data['n_clips']} clips"
        )
    else:
        source = f"{data['path']} ({data['format']}, split {data['split']}, {data['n']} clips)"
    lines = [
        "# MCSDR evaluation",
        "",
        f"- model: `{result['model']['path']}` (sha256 {result['model']['sha256'][:12]})",
        f"- data: {source}",
        f"- K = {result['k']} posterior samples per clip; recalibration scale "
        f"{_fmt(result['model']['recalibration_scale'], 3)}",
        f"- sampling: {result['timing']['sampling_seconds']:.1f} s, "
        f"{result['timing']['clips_per_second']:.2f} clips/s",
        "",
        "| metric | " + " | ".join(label for _, label in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for key, label, digits in REPORT_ROWS:
        lines.append(f"| {label} | " + " | ".join(_fmt(result[c].get(key), digits) for c, _ in cols) + " |")
    lines += _reliability_lines(result)
    if "regression" in result:
        lines += [
            "",
            "Regression is a point prediction: its CRPS is its absolute error, its PICP ≈ 0 by "
            "construction, and its AUROCs rank clips by the negative predicted EF.",
        ]
    if "per_clip" in result:
        lines += ["", *_per_clip_lines(result["per_clip"])]
    lines += ["", "## Posterior std by image quality (EF %)", ""]
    by_q = result["raw"].get("std_by_quality")
    if by_q is None:
        lines.append("This data set carries no image-quality grades.")
        return "\n".join(lines) + "\n"
    spread = [(c, label) for c, label in cols if c != "regression"]  # a point mass has std 0
    lines += [
        "| quality | n | " + " | ".join(f"{label} std" for _, label in spread) + " | MCSDR raw MAE |",
        "|---|---:|" + "---:|" * (len(spread) + 1),
    ]
    for q in [q for q in [*QUALITIES, UNKNOWN_QUALITY] if q in by_q]:
        stds = " | ".join(_fmt(result[c]["std_by_quality"][q], 2) for c, _ in spread)
        raw = result["raw"]
        lines.append(f"| {q} | {raw['n_by_quality'][q]} | {stds} | {_fmt(raw['mae_by_quality'][q], 2)} |")
    return "\n".join(lines) + "\n"


def run_evaluation(req: EvalRequest) -> dict[str, Any]:
    """Evaluate ``req.model`` as the module docstring describes; returns the metrics.json dict.

    Files written to ``req.out``: metrics.json, report.md, pred_vs_true.png, reliability.png,
    pit.png, std_by_quality.png and samples.npz with samples (N, K) EF %, truth (N,) EF %,
    quality (N,) int8 index into quality_levels (−1 unknown), plus samples_recalibrated (N, K)
    when the sidecar has a scale, and regression (N,) and gauss_samples (N, K) with baselines.
    """
    model, sidecar = load_model(req.model)
    scale = (sidecar.get("recalibration") or {}).get("scale")
    t0 = time.perf_counter()
    arr, data_desc = _load_clips(req, sidecar)
    windows, clip_efs = data_desc.pop("windows", None), data_desc.pop("clip_efs", None)
    traced = data_desc.pop("traced", None)
    t1 = time.perf_counter()
    pred = sample_arrays(model, arr, k=req.k, seed=req.seed, desc="sampling posterior")
    t2 = time.perf_counter()

    truth = arr.ef.astype(np.float64)
    quality = quality_labels(arr.quality)
    samples = pred["samples"]
    arrays = {
        "samples": samples,
        "truth": truth,
        "quality": arr.quality.astype(np.int8),
        "quality_levels": np.asarray(QUALITIES),
    }
    posteriors = {"MCSDR raw": samples}  # the sampled posteriors, by plot label
    scores: dict[str, dict[str, Any]] = {"raw": metrics.evaluate_samples(samples, truth, quality)}
    if scale is not None:
        arrays["samples_recalibrated"] = posteriors["MCSDR recalibrated"] = recalibrate(samples, float(scale))
        scores["recalibrated"] = metrics.evaluate_samples(arrays["samples_recalibrated"], truth, quality)
    if req.baselines:
        arrays["regression"] = model.transform.inverse_np(pred["reg"])
        arrays["gauss_samples"] = pred["gauss_samples"]
        scores["regression"] = regression_metrics(arrays["regression"], truth, quality)
        scores["gaussian"] = metrics.evaluate_samples(pred["gauss_samples"], truth, quality)

    published = arrays.get("samples_recalibrated", samples)
    arrays["ood_score"] = pred["ood_score"]
    scores["reliability"] = reliability_summary(published, truth, pred["ood_score"])
    if windows is not None:  # each window scored above; here the clip's estimate: its pooled posterior
        offline = sample_arrays(model, traced, k=req.k, seed=req.seed, desc="sampling traced beats")[
            "samples"
        ]
        scores["per_clip"] = clip_summary(
            windows,
            published,
            clip_efs,
            data_desc["n_clips"],
            pred["ood_score"],
            recalibrate(offline, float(scale)) if scale is not None else offline,
        )
    raw = scores["raw"]
    result: dict[str, Any] = {key: raw.get(key) for key in FLAT_KEYS}  # std_by_quality None without grades
    model_pt = Path(req.model).with_suffix(".pt")  # the same resolution as train.load_model
    result.update(
        model={"path": str(model_pt), "sha256": sidecar["sha256"], "recalibration_scale": scale},
        data=data_desc,
        k=req.k,
        noise_seed=req.seed,  # the K starting noises come from this seed (sample_arrays)
        **scores,
        timing={
            "data_seconds": round(t1 - t0, 3),
            # sample_arrays runs the DDIM posterior and the two baseline heads in one pass
            "sampling_seconds": round(t2 - t1, 3),
            "clips_per_second": round(len(arr) / max(t2 - t1, 1e-9), 3),
            "torch_threads": torch.get_num_threads(),
        },
    )

    if req.baselines:
        posteriors["Gaussian"] = pred["gauss_samples"]  # the reliability plot shows it too
    _write_outputs(req, result, arrays, posteriors, quality)
    if req.record:
        record_in_sidecar(req.model, result)
    return result


def _write_outputs(
    req: EvalRequest,
    result: dict[str, Any],
    arrays: dict[str, np.ndarray],
    posteriors: dict[str, np.ndarray],
    quality: list[str] | None,
) -> None:
    """metrics.json (and --json), report.md, samples.npz and the four plots into ``req.out``."""
    out = Path(req.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    (out / "metrics.json").write_text(text)
    if req.json_path:
        Path(req.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(req.json_path).write_text(text)
    (out / "report.md").write_text(render_report(result))
    np.savez(out / "samples.npz", **arrays)
    truth, sampled = arrays["truth"], {k: v for k, v in posteriors.items() if k != "Gaussian"}
    _plot_pred_vs_true(out / "pred_vs_true.png", arrays["samples"], truth, quality)
    _plot_reliability(out / "reliability.png", truth, posteriors)
    _plot_pit(out / "pit.png", truth, sampled)
    _plot_std_by_quality(out / "std_by_quality.png", sampled, quality)


def record_in_sidecar(model: str, result: dict[str, Any]) -> None:
    """Store an evaluation's figures in the artefact's sidecar under ``metrics`` (keyed by data).

    The sidecar's content hash covers the weights file only, so recording metrics never
    invalidates it; earlier entries for other data are kept.
    """
    path = Path(model).with_suffix(".json")
    side = json.loads(path.read_text())
    d = result["data"]
    gen = "" if d.get("generation", 1) == 1 else f"_gen{d['generation']}"
    key = (
        f"synthetic{gen}_seed{d['seed']}_n{d['n']}"
        if d["source"] == "synthetic"
        else f"{d['format']}:{d['split']}"
    )
    keep = ("raw", "recalibrated", "regression", "gaussian", "reliability", "data", "k", "noise_seed")
    side.setdefault("metrics", {})[key] = {k: result[k] for k in keep if k in result}
    path.write_text(json.dumps(side, indent=2))
