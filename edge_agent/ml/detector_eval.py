"""Evaluation as the live agent sees a recording: beats found by its detector, pooled per clip.

A dataset's traced ED frame is a luxury the bedside does not have. With ``beats: detector`` every
video of an EchoNet-format dataset is played through the agent's own windowing path
(:func:`edge_agent.live.beats.source_windows`: sector warm-up, online cycle detector, the one clip
function) at the FileList's frame rate; every window is scored on its own (per beat, truth = its
clip's EF) and the windows of each clip are pooled as the hub's running estimate pools them
(:class:`edge_agent.model.posterior.RunningPosterior`, the last 5 beats, fixed windows only while no
beat is found): the clip's estimate is the pooled posterior. Next to it, the same clips' traced
beats (the dataset's ED frame, as an offline evaluation cuts them) give the offline estimate, so the
report says what the live path costs or gains: MAE live − offline, overall and per EF band (the
project lead's live-replay criterion is live ≤ offline + 1 point). EF in %.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from edge_agent.core import metrics
from edge_agent.core.clip import CLIP_FRAMES, CLIP_SIZE
from edge_agent.live.beats import source_windows
from edge_agent.live.capture import CaptureConfig
from edge_agent.live.cycles import CycleConfig
from edge_agent.ml.datasets.echonet import TracedVideoDataset
from edge_agent.ml.ood import reliability_summary
from edge_agent.model.posterior import RunningPosterior
from edge_agent.sim.clips import ClipArrays

POOLED_BEATS = 5  # as the hub's running posterior (hub.running_beats)
# EF bands (2021 universal definition of heart failure): (name, lower bound, upper bound) in %.
EF_BANDS = (
    ("reduced (< 40)", 0.0, 40.0),
    ("mildly reduced (40-50)", 40.0, 50.0),
    ("normal (>= 50)", 50.0, 101.0),
)


@dataclass
class DetectorWindows:
    """Every window the detector cut from a dataset: ``arr`` (M windows, ``arr.ef`` its clip's EF),
    ``clip`` (M,) index of the dataset clip each came from, ``how`` (M,) the beat rule, and
    ``without`` the names of clips that gave no window at all."""

    arr: ClipArrays
    clip: np.ndarray
    how: list[str]
    without: list[str]


def detector_windows(ds: TracedVideoDataset, cycles: CycleConfig | None = None) -> DetectorWindows:
    """Play each video of ``ds`` through the live windowing path and collect its windows."""
    cycles = cycles or CycleConfig()
    clips, efs, demos, masks, owner, hows, without = [], [], [], [], [], [], []
    for i in tqdm(range(len(ds)), desc="detecting beats", unit="clip"):
        path, fps, demographics = ds.stream_of(i)
        got = list(
            source_windows(
                str(path),
                limit=None,
                cycles=cycles,
                warmup_frames=CaptureConfig().warmup_frames,
                fps=fps,
                demographics=demographics,
            )
        )
        if not got:
            without.append(ds.names[i])
        for w in got:
            clips.append(w.clip)
            demos.append(w.demo)
            masks.append(w.mask)
            efs.append(ds.efs[i])
            owner.append(i)
            hows.append(w.how)
    m = len(clips)
    arr = ClipArrays.ungraded(
        np.stack(clips) if m else np.empty((0, CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE), np.uint8),
        np.asarray(efs, np.float32),
        np.asarray(demos, np.float32).reshape(m, 4),
        np.asarray(masks, bool).reshape(m, 4),
    )
    return DetectorWindows(arr, np.asarray(owner, np.int64), hows, without)


def pooled_posteriors(
    samples: np.ndarray, clip: np.ndarray, how: list[str], ood: np.ndarray | None = None
) -> dict[int, tuple[np.ndarray, float]]:
    """Per clip index, the pooled samples of its windows in playing order (samples (M, K) EF %)
    and the pool's OOD score (NaN without scores ``ood`` (M,)), pooled as the hub pools a stream's
    beats."""
    pools: dict[int, RunningPosterior] = {}
    for j, (c, rule) in enumerate(zip(clip.tolist(), how, strict=True)):
        pool = pools.setdefault(c, RunningPosterior(n_beats=POOLED_BEATS))
        score = None if ood is None or not np.isfinite(ood[j]) else float(ood[j])
        pool.add(j, samples[j], fixed=rule == "fixed", ood_score=score)
    out = {}
    for c, pool in pools.items():
        score = pool.ood_score()
        out[c] = (pool.pooled(), np.nan if score is None else score)
    return out


def pooled_metrics(pools: list[np.ndarray], truth: np.ndarray) -> dict[str, Any]:
    """Metrics of per-clip pooled posteriors (each 1-D, any length) against truth (N,) EF %."""
    means = np.array([p.mean() for p in pools])
    lo, hi = np.array([np.quantile(p, [0.05, 0.95]) for p in pools]).T
    crps = [float(metrics.crps(p[None], t[None])[0]) for p, t in zip(pools, truth, strict=True)]
    out: dict[str, Any] = {
        "n": len(pools),
        "mae": float(np.abs(means - truth).mean()),
        "rmse": float(np.sqrt(((means - truth) ** 2).mean())),
        "crps": float(np.mean(crps)),
        "picp90": float(((truth >= lo) & (truth <= hi)).mean()),
        "mean_std": float(np.mean([p.std() for p in pools])),
    }
    for thr in metrics.AUROC_THRESHOLDS:
        labels = truth < thr
        scores = np.array([(p < thr).mean() for p in pools])
        both = labels.any() and not labels.all()
        out[f"auroc_ef{round(thr)}"] = metrics.auroc(scores, labels) if both else None
    return out


def band_errors(means: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per EF band of the truth (:data:`EF_BANDS`): clips, MAE and bias (mean − truth) of point
    estimates ``means`` (N,) against ``truth`` (N,) EF %; None where a band has no clip."""
    out = {}
    for name, lo, hi in EF_BANDS:
        m = (truth >= lo) & (truth < hi)
        err = means[m] - truth[m]
        out[name] = {
            "n": int(m.sum()),
            "mae": float(np.abs(err).mean()) if m.any() else None,
            "bias": float(err.mean()) if m.any() else None,
        }
    return out


def live_vs_offline(live: np.ndarray, offline: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """The live path against the offline cut on the same clips: point estimates live (N,) (pooled
    posterior means) and offline (N,) (the traced beat's posterior mean), truth (N,) EF %. MAE of
    each, their difference (live − offline: > 0 is what the live path costs), and both per EF band."""
    mae_live, mae_off = float(np.abs(live - truth).mean()), float(np.abs(offline - truth).mean())
    return {
        "mae_live": mae_live,
        "mae_offline": mae_off,
        "mae_live_minus_offline": mae_live - mae_off,
        "by_band": {"live": band_errors(live, truth), "offline": band_errors(offline, truth)},
    }


def clip_summary(
    windows: DetectorWindows,
    samples: np.ndarray,
    truth_by_clip: np.ndarray,
    n_clips: int,
    ood: np.ndarray,
    offline: np.ndarray | None = None,
) -> dict[str, Any]:
    """The per-clip part of metrics.json: pooled metrics, reliability (ml.ood.reliability_summary of
    the pooled posteriors), windows per clip, rules, clips without; with ``offline`` (n_clips, K),
    the published posteriors of the clips' traced beats, :func:`live_vs_offline` on the clips with
    a window."""
    pools = pooled_posteriors(samples, windows.clip, windows.how, ood)
    order = sorted(pools)
    counts = np.bincount(windows.clip, minlength=n_clips)
    pooled = [pools[c][0] for c in order]
    compared = {}
    if offline is not None:
        live = np.array([p.mean() for p in pooled])
        compared["live_vs_offline"] = live_vs_offline(live, offline[order].mean(axis=1), truth_by_clip[order])
    return {
        **compared,
        **pooled_metrics(pooled, truth_by_clip[order]),
        "reliability": reliability_summary(
            pooled, truth_by_clip[order], np.array([pools[c][1] for c in order])
        ),
        "windows_per_clip": metrics.distribution(counts[counts > 0].tolist()),
        "windows_by_rule": {r: windows.how.count(r) for r in sorted(set(windows.how))},
        "clips_without_window": windows.without,
    }
