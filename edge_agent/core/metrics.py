"""Evaluation metrics of a sampled LVEF posterior.

Every function takes ``samples`` (N, K): K posterior samples of EF in % for each of N clips, and
``truth`` (N,): the reference EF in %. The point estimate is the posterior (sample) mean, as in
MCSDR. Pure numpy, vectorised over clips; no function mutates its inputs. One helper of another
kind sits here too, shared by the cycle detector and its checks: :func:`pearson`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PICP_LEVELS = (0.5, 0.9, 0.95)
AUROC_THRESHOLDS = (50.0, 40.0)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two arrays of one size (flattened); 0 when either is constant."""
    x, y = np.ravel(x) - np.mean(x), np.ravel(y) - np.mean(y)
    return float(x @ y / (np.sqrt((x @ x) * (y @ y)) + 1e-12))


def check_samples(samples: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to float64: samples (N, K), truth (N,), all finite."""
    s = np.asarray(samples, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 1:
        raise ValueError(
            f"samples: expected shape (N, K) with K >= 1 posterior samples per clip, got {s.shape}; "
            "stack one row of samples per clip"
        )
    if y.shape != (s.shape[0],):
        raise ValueError(
            f"truth: expected shape ({s.shape[0]},) to match samples {s.shape}, got {y.shape}; "
            "pass one reference EF per clip"
        )
    if s.shape[0] == 0:
        raise ValueError("samples: no clips (N = 0); evaluate at least one clip")
    if not np.isfinite(s).all():
        raise ValueError("samples: contains NaN or inf; check the sampler output before evaluating")
    if not np.isfinite(y).all():
        raise ValueError("truth: contains NaN or inf; drop clips without a reference EF")
    return s, y


def posterior_std(samples: np.ndarray) -> np.ndarray:
    """Spread of each sample set (ddof=0, the population std of the K samples): (N, K) → (N,) in %."""
    return np.asarray(samples, dtype=np.float64).std(axis=1)


def mae(samples: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute error of the posterior mean vs truth, in EF %."""
    s, y = check_samples(samples, truth)
    return float(np.mean(np.abs(s.mean(axis=1) - y)))


def rmse(samples: np.ndarray, truth: np.ndarray) -> float:
    """Root mean squared error of the posterior mean vs truth, in EF %."""
    s, y = check_samples(samples, truth)
    return float(np.sqrt(np.mean((s.mean(axis=1) - y) ** 2)))


def r2(samples: np.ndarray, truth: np.ndarray) -> float:
    """Coefficient of determination 1 − SS_res/SS_tot of the posterior mean (dimensionless).

    Raises ValueError when truth is constant, because SS_tot = 0 leaves R² undefined.
    """
    s, y = check_samples(samples, truth)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        raise ValueError("truth: all reference EFs are equal, so R² is undefined; evaluate a varied set")
    return 1.0 - float(np.sum((s.mean(axis=1) - y) ** 2)) / ss_tot


def crps(samples: np.ndarray, truth: np.ndarray, fair: bool = False) -> np.ndarray:
    """Continuous ranked probability score per clip, energy form E|X−y| − ½E|X−X'|, in EF %.

    samples (N, K), truth (N,) → (N,). ``fair=False`` is the biased V-statistic the MCSDR authors
    report: the pair term averages over all K² pairs, i=j included. ``fair=True`` divides the
    pair sum by K(K−1) (i≠j only), an unbiased estimate of the CRPS of the distribution the
    samples come from; it needs K >= 2.

    The pair sum uses the sorted-samples identity Σ_i Σ_j |x_i − x_j| = 2 Σ_i (2i − K − 1) x_(i)
    (i = 1..K over the sorted x_(i)), O(K log K) instead of the O(K²) double loop.
    """
    s, y = check_samples(samples, truth)
    k = s.shape[1]
    if fair and k < 2:
        raise ValueError(f"samples: the fair CRPS needs K >= 2 samples per clip, got K = {k}; use fair=False")
    abs_err = np.mean(np.abs(s - y[:, None]), axis=1)
    weights = 2.0 * np.arange(1, k + 1) - k - 1
    half_pair_sum = np.sort(s, axis=1) @ weights  # = ½ Σ_i Σ_j |x_i − x_j|
    pair_term = half_pair_sum / (k * (k - 1)) if fair else half_pair_sum / k**2
    return abs_err - pair_term


def _central_bounds(s: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central interval bounds from sample quantiles: (N, K), (L,) → lo (L, N), hi (L, N)."""
    if np.any(levels <= 0.0) or np.any(levels >= 1.0):
        raise ValueError(f"level: central interval levels must lie in (0, 1), got {levels.tolist()}")
    lo = np.quantile(s, (1.0 - levels) / 2.0, axis=1)
    hi = np.quantile(s, (1.0 + levels) / 2.0, axis=1)
    return lo, hi


def coverage_curve(samples: np.ndarray, truth: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Observed coverage of the central intervals at each nominal level (reliability diagram data).

    samples (N, K), truth (N,), levels (L,) in (0, 1) → (L,) share of truths inside
    [q_{(1−l)/2}, q_{(1+l)/2}] (bounds inclusive; linear sample quantiles).
    """
    s, y = check_samples(samples, truth)
    lv = np.asarray(levels, dtype=np.float64).reshape(-1)
    lo, hi = _central_bounds(s, lv)
    return np.mean((y >= lo) & (y <= hi), axis=1)


def picp(samples: np.ndarray, truth: np.ndarray, level: float) -> float:
    """Prediction interval coverage probability of the central ``level`` interval (share in [0, 1])."""
    return float(coverage_curve(samples, truth, [level])[0])


def qice(samples: np.ndarray, truth: np.ndarray, n_bins: int = 10) -> float:
    """Quantile interval coverage error (CARD, Han et al. 2022), dimensionless in [0, 2(M−1)/M²].

    Each posterior (row of samples (N, K)) is split into M = ``n_bins`` intervals by its sample
    quantiles at 0, 1/M, …, 1. A truth below the minimum counts in the first bin and above the
    maximum in the last, as in CARD's code. QICE = mean over bins of |share of truths − 1/M|;
    0 for a perfectly calibrated posterior (up to sampling noise).
    """
    s, y = check_samples(samples, truth)
    if n_bins < 1:
        raise ValueError(f"n_bins: need at least one quantile bin, got {n_bins}")
    # Only the interior edges 1/M … (M−1)/M decide the bin, which folds out-of-range truths
    # into the outer bins.
    interior = np.quantile(s, np.arange(1, n_bins) / n_bins, axis=1)  # (M−1, N)
    bin_index = np.sum(y[None, :] >= interior, axis=0)  # (N,) in 0 … M−1
    share = np.bincount(bin_index, minlength=n_bins) / y.size
    return float(np.mean(np.abs(share - 1.0 / n_bins)))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x (n,), tied values sharing the average of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    first = last - counts + 1
    return ((first + last) / 2.0)[inverse.reshape(-1)]


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the Mann–Whitney U statistic, ties counted as ½.

    scores (n,) higher = more likely positive; labels (n,) bool/0-1. Raises ValueError when only
    one class is present, since the AUROC is then undefined.
    """
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1)
    if sc.shape != lab.shape:
        raise ValueError(
            f"scores and labels: lengths differ ({sc.size} vs {lab.size}); pass one label per score"
        )
    if not np.isfinite(sc).all():
        raise ValueError("scores: contains NaN or inf; AUROC needs finite scores")
    if not np.isin(lab, (0, 1)).all():
        raise ValueError("labels: must be boolean or 0/1 (1 = positive class)")
    pos = lab.astype(bool)
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        missing = "positive" if n_pos == 0 else "negative"
        raise ValueError(f"labels: no {missing} examples among {pos.size}, so AUROC is undefined")
    ranks = _average_ranks(sc)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auroc_below(samples: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    """AUROC for detecting truth < threshold (e.g. reduced EF < 40 %) from the posterior.

    Score per clip = P(EF < threshold), the share of its K samples below the threshold. With
    K samples this score takes only K+1 values, so clips whose posteriors lie wholly on one side
    tie (counted as ½); no tie-break by the posterior mean is applied.
    """
    s, y = check_samples(samples, truth)
    return auroc(np.mean(s < threshold, axis=1), y < threshold)


def pit(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Probability integral transform per clip: samples (N, K), truth (N,) → (N,) in [0, 1].

    Share of samples below the truth, samples equal to it counting ½; uniform on [0, 1] for a
    calibrated posterior (the PIT histogram is flat).
    """
    s, y = check_samples(samples, truth)
    below = np.sum(s < y[:, None], axis=1)
    equal = np.sum(s == y[:, None], axis=1)
    return (below + 0.5 * equal) / s.shape[1]


def frac_out_of_range(samples: np.ndarray, lo: float = 0.0, hi: float = 100.0) -> float:
    """Share of all samples (any shape) outside the open interval (lo, hi), i.e. <= lo or >= hi."""
    s = np.asarray(samples, dtype=np.float64)
    if s.size == 0:
        raise ValueError("samples: empty array; nothing to count")
    return float(np.mean((s <= lo) | (s >= hi)))


def _by_group(values: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Mean of values (N,) per distinct group label (N,), keys sorted."""
    return {str(g): float(values[groups == g].mean()) for g in np.unique(groups)}


def _auroc_or_none(samples: np.ndarray, truth: np.ndarray, threshold: float) -> float | None:
    # An evaluation subset may hold no reduced-EF clip; report null rather than failing the run.
    if (truth < threshold).all() or (truth >= threshold).all():
        return None
    return auroc_below(samples, truth, threshold)


def evaluate_samples(
    samples: np.ndarray, truth: np.ndarray, quality: Sequence[str] | None = None
) -> dict[str, Any]:
    """All headline metrics as plain JSON types.

    samples (N, K) EF in %, truth (N,) EF in %, quality (N,) optional image-quality label per clip
    (e.g. CAMUS Good/Medium/Poor). Keys: n, k, mae, rmse, r2 (None if truth is constant), crps,
    crps_fair (None if K = 1), picp50, picp90, picp95, qice, auroc_ef50, auroc_ef40 (None when a
    class is absent), frac_out_of_range, mean_std; with quality also std_by_quality,
    mae_by_quality and n_by_quality (dicts label → value).
    """
    s, y = check_samples(samples, truth)
    k = s.shape[1]
    out: dict[str, Any] = {
        "n": int(s.shape[0]),
        "k": int(k),
        "mae": mae(s, y),
        "rmse": rmse(s, y),
        "r2": r2(s, y) if np.ptp(y) > 0 else None,
        "crps": float(crps(s, y).mean()),
        "crps_fair": float(crps(s, y, fair=True).mean()) if k >= 2 else None,
    }
    coverage = coverage_curve(s, y, PICP_LEVELS)
    for level, cov in zip(PICP_LEVELS, coverage, strict=True):
        out[f"picp{round(level * 100)}"] = float(cov)
    out["qice"] = qice(s, y)
    for thr in AUROC_THRESHOLDS:
        out[f"auroc_ef{round(thr)}"] = _auroc_or_none(s, y, thr)
    out["frac_out_of_range"] = frac_out_of_range(s)
    std = posterior_std(s)
    out["mean_std"] = float(std.mean())
    if quality is not None:
        q = np.asarray([str(v) for v in quality])
        if q.shape != y.shape:
            raise ValueError(
                f"quality: expected {y.size} labels (one per clip), got {q.size}; "
                "pass None to skip the per-quality breakdown"
            )
        out["std_by_quality"] = _by_group(std, q)
        out["mae_by_quality"] = _by_group(np.abs(s.mean(axis=1) - y), q)
        out["n_by_quality"] = {g: int(np.sum(q == g)) for g in np.unique(q).tolist()}
    return out


def distribution(values) -> dict[str, float | int | None]:
    """Sample count, min, mean, p50, p90, p99 and max of a list of values (e.g. latencies, ms);
    the statistics are None when there is no value."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not v.size:
        return {"n": 0, **dict.fromkeys(("min", "mean", "p50", "p90", "p99", "max"))}
    return {
        "n": int(v.size),
        "min": float(v.min()),
        "mean": float(v.mean()),
        "p50": float(np.percentile(v, 50)),
        "p90": float(np.percentile(v, 90)),
        "p99": float(np.percentile(v, 99)),
        "max": float(v.max()),
    }
