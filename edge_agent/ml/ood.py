"""Fitting the model's out-of-distribution score: the epistemic part of the published uncertainty.

The diffusion posterior spreads where the training data were ambiguous; on an input unlike anything
in training it can be narrow and wrong. The score measures how unlike: the Mahalanobis distance of
the window's pooled encoder embedding (:meth:`MCSDR.embedding`, every stage's channels averaged
over the beat) from the training windows' embeddings (Lee et al., NeurIPS 2018, one class),

    d² = (e − m)ᵀ P (e − m),   P = (Σ + λ·tr(Σ)/E·I)⁻¹,

with m and Σ from ``n_fit`` training windows under the training views, and the shrinkage λ keeping
P finite where channels are nearly collinear. Calibration: the threshold is the ``quantile`` of d²
over the validation windows (a seed training never saw), under the same random views; the model
stores 1/threshold, so its score is d² / threshold — 1 at the threshold, and the share of
in-distribution windows above 1 is 1 − ``quantile`` by construction on validation.

A second part looks at the input, not the network: the noise gate (:func:`noise_share`, the share of
the window's variance that is uncorrelated from pixel to pixel and frame to frame). A window under
noise as strong as the image keeps an embedding close enough to a poor training window to pass the
first part (measured: 11 % of such windows did), yet its noise share is 4–5× anything in training.
The score is the larger of the two parts, each over its own threshold. An estimate whose score is
above 1 is published as not reliable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from edge_agent.core import metrics
from edge_agent.core.reliability import THRESHOLD
from edge_agent.ml.augment import ViewRanges, random_views
from edge_agent.model.network import MCSDR, noise_share
from edge_agent.sim.clips import ClipArrays


@dataclass(frozen=True)
class OodFit:
    """What was fitted, for the artefact's sidecar."""

    n_fit: int
    n_calibrate: int
    quantile: float
    shrinkage: float
    threshold_d2: float
    embed_dim: int
    noise_quantile: float
    noise_threshold: tuple[float, ...]  # noise share at the gate, per axis t, y, x

    def sidecar(self) -> dict:
        return {
            "kind": "mahalanobis_pooled_encoder+noise_gate",
            "fit_on": f"{self.n_fit} training windows (training views)",
            "threshold_on": f"{self.n_calibrate} validation windows (training views)",
            "rule": (
                f"score = max(d² / {self.quantile:g}-quantile of validation d², noise share / its "
                f"{self.noise_quantile:g}-quantile over training and validation windows, per axis); "
                "reliable when score ≤ 1"
            ),
            "quantile": self.quantile,
            "shrinkage": self.shrinkage,
            "threshold_d2": self.threshold_d2,
            "embed_dim": self.embed_dim,
            "noise_quantile": self.noise_quantile,
            "noise_threshold_t_y_x": list(self.noise_threshold),
        }


@torch.no_grad()
def embeddings(
    model: MCSDR,
    arr: ClipArrays,
    views: ViewRanges | None,
    seed: int,
    batch: int = 32,
    desc: str = "embedding",
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled encoder embeddings (N, E) and noise shares (N, 3) (:func:`noise_share`) of every window
    of ``arr``, each under a random view when ``views`` is given (seeded: the same call gives the
    same numbers)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    emb, noise = [], []
    for s in tqdm(range(0, len(arr), batch), desc=desc, unit="batch"):
        clips = torch.from_numpy(arr.clips[s : s + batch])
        if views is not None:
            clips = random_views(clips, gen, views)
        emb.append(model.embedding(model.stage_maps(clips)).numpy())
        noise.append(noise_share(clips).numpy())
    return np.concatenate(emb).astype(np.float64), np.concatenate(noise).astype(np.float64)


def mahalanobis_d2(emb: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """emb (N, E) → (N,) squared Mahalanobis distances."""
    z = emb - mean
    return np.einsum("ne,ef,nf->n", z, precision, z)


def gaussian_fit(emb: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean (E,) and shrunk precision (E, E) of embeddings (N, E)."""
    mean = emb.mean(0)
    cov = np.cov(emb, rowvar=False)
    cov += shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
    return mean, np.linalg.inv(cov)


def fit_ood(
    model: MCSDR,
    train: ClipArrays,
    val: ClipArrays,
    views: ViewRanges | None,
    quantile: float = 0.99,
    n_fit: int = 2000,
    shrinkage: float = 0.01,
    noise_quantile: float = 0.999,
) -> OodFit:
    """Fit the score's statistics on training windows, its threshold on validation windows, and store
    them in the model's buffers (``ood_mean``, ``ood_precision``, ``ood_inv_threshold``; the
    whitening the graph uses is derived from them).

    The noise gate's threshold per axis is the ``noise_quantile`` of the noise share over the fit
    and the validation windows together: a fixed statistic with nothing learned from either set,
    so both are fair, and together they hold every image generation training mixed.
    """
    idx = np.random.default_rng(0).permutation(len(train))[:n_fit]
    emb, noise_fit = embeddings(model, train.take(idx), views, seed=1, desc="OOD fit")
    mean, precision = gaussian_fit(emb, shrinkage)
    emb_val, noise_val = embeddings(model, val, views, seed=2, desc="OOD threshold")
    threshold = float(np.quantile(mahalanobis_d2(emb_val, mean, precision), quantile))
    noise_threshold = np.quantile(np.r_[noise_fit, noise_val], noise_quantile, axis=0)
    model.ood_mean.copy_(torch.from_numpy(mean).float())
    model.ood_precision.copy_(torch.from_numpy(precision).float())
    model.ood_inv_threshold.fill_(1.0 / threshold)
    model.ood_noise_inv_threshold.copy_(torch.from_numpy(1.0 / noise_threshold).float())
    model.refresh_ood()
    return OodFit(
        len(idx),
        len(val),
        quantile,
        shrinkage,
        threshold,
        len(mean),
        noise_quantile,
        tuple(round(float(x), 6) for x in noise_threshold),
    )


# ---------------------------------------------------------------- checking it: corrupted inputs

# What a bedside feed can show instead of an apical four-chamber beat (issue 12's list).
CORRUPTIONS = ("wrong_view", "blank_sector", "non_cardiac", "heavy_noise")


def _sector(clip: np.ndarray) -> np.ndarray:
    """Where the clip (F, H, W) uint8 has image at all: pixels ever above 8 grey levels (H, W) bool."""
    return clip.max(axis=0) > 8


def corrupt(clip: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """An aligned beat (F, H, W) uint8 → the same length of video of one corrupted ``kind``:

    * ``wrong_view``: the lower half of the frame (atria and valves) enlarged 2×: the probe aims
      past the LV, whose apex and walls leave the picture;
    * ``blank_sector``: the sector with no echo in it (probe lifted off the chest): dark noise;
    * ``non_cardiac``: a textured scene panning across the whole frame (a camera, another organ);
    * ``heavy_noise``: the beat under noise as strong as the image (σ 60 grey levels).
    """
    f, h, w = clip.shape
    if kind == "wrong_view":
        lower = clip[:, h // 2 :, w // 4 : w - w // 4]
        return np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR) for x in lower])
    if kind == "blank_sector":
        dark = rng.normal(6.0, 3.0, clip.shape).clip(0, 255).astype(np.uint8)
        return np.where(_sector(clip)[None], dark, 0).astype(np.uint8)
    if kind == "non_cardiac":
        big = cv2.GaussianBlur(rng.normal(0, 1, (h * 2, w * 2)).astype(np.float32), (0, 0), 4.0)
        big = np.clip(110 + 60 * big / big.std(), 0, 255).astype(np.uint8)
        dy, dx = rng.integers(1, 3, size=2)
        return np.stack([big[i * dy : i * dy + h, i * dx : i * dx + w] for i in range(f)])
    if kind == "heavy_noise":
        return np.clip(clip + rng.normal(0, 60.0, clip.shape), 0, 255).astype(np.uint8)
    raise ValueError(f"corruption {kind!r} is not one of {CORRUPTIONS}")


def separation(
    familiar_scores: np.ndarray,
    familiar_widths: np.ndarray,
    scores: np.ndarray,
    widths: np.ndarray,
    min_width_ratio: float = 3.0,
) -> dict[str, float]:
    """How well the score sets one kind of input apart from familiar windows (pure).

    Scores (N,) are OOD scores (≤ 1 familiar), widths (N,) the published 90 % interval widths (EF
    points). Returns ``auroc`` (this kind vs familiar windows), ``flagged`` (share with score > 1),
    ``width_ratio`` (median width over the familiar median) and ``handled`` (share either flagged
    or published at least ``min_width_ratio`` × the familiar median width: never a tight interval
    that looks trustworthy).
    """
    labels = np.r_[np.zeros(len(familiar_scores)), np.ones(len(scores))]
    typical = float(np.median(familiar_widths))
    flagged = scores > THRESHOLD
    handled = flagged | (widths >= min_width_ratio * typical)
    return {
        "auroc": metrics.auroc(np.r_[familiar_scores, scores], labels),
        "flagged": float(np.mean(flagged)),
        "median_score": float(np.median(scores)),
        "width_ratio": float(np.median(widths) / typical),
        "handled": float(np.mean(handled)),
    }


def reliability_summary(
    samples: list[np.ndarray] | np.ndarray, truth: np.ndarray, ood: np.ndarray, big_error: float = 15.0
) -> dict[str, Any]:
    """What the reliability flag does on labelled data (pure): published posteriors (each 1-D, EF %),
    truth (N,) EF %, OOD scores (N,) (NaN: the model has none, every estimate reliable).

    ``confidently_wrong``: estimates off by more than ``big_error`` points whose 90 % interval
    misses the truth and that were still published as reliable — the one thing a monitor must not
    show; ``wrong_but_flagged``: the same errors marked LOW CONFIDENCE. MAE and PICP90 are given for
    the reliable and the flagged estimates apart (None where there are none).
    """
    means = np.array([np.mean(s) for s in samples])
    lo, hi = np.array([np.quantile(s, [0.05, 0.95]) for s in samples]).T
    reliable = ~(ood > THRESHOLD)  # NaN (no score) compares False: reliable, as core.reliability says
    err = np.abs(means - truth)
    wrong = (err > big_error) & ((truth < lo) | (truth > hi))
    covered = (truth >= lo) & (truth <= hi)

    def part(mask: np.ndarray, values: np.ndarray) -> float | None:
        return float(values[mask].mean()) if mask.any() else None

    return {
        "n": len(means),
        "scored": bool(np.isfinite(ood).any()),
        "flagged": float(np.mean(~reliable)),
        "mae_reliable": part(reliable, err),
        "mae_flagged": part(~reliable, err),
        "picp90_reliable": part(reliable, covered.astype(float)),
        "picp90_flagged": part(~reliable, covered.astype(float)),
        "big_error": big_error,
        "confidently_wrong": int((wrong & reliable).sum()),
        "wrong_but_flagged": int((wrong & ~reliable).sum()),
    }
