"""Simulator side of the cycle detector: fitting its signal model and measuring its accuracy.

Kept apart from :mod:`edge_agent.cycles` so the live windowing process never imports the phantom.

* :func:`fit_lv_area_weights` / :func:`write_signal_weights`: the LV-area signal model (a ridge
  regression from 14×14 area-downsampled frames to the LV cavity area of the simulator's contours),
  saved as ``engines/cycle_signal.npz`` with a JSON sidecar.
* :func:`detector_accuracy`: streams simulated patients frame by frame through
  :class:`~edge_agent.cycles.CycleDetector` and scores the beats against the simulator's EDs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import cv2
import numpy as np

from edge_agent.cycles import SIGNAL_GRID, SIGNAL_WEIGHTS, BeatWindow, CycleConfig, CycleDetector
from edge_agent.phantom import QUALITIES, EchoPhantom, draw_case


def contour_area(contours: np.ndarray) -> np.ndarray:
    """Areas (px²) of contours (F, P, 2) by the shoelace formula → (F,)."""
    x, y = contours[..., 0], contours[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, -1) - y * np.roll(x, -1, -1)).sum(-1))


def _grid(frames: np.ndarray) -> np.ndarray:
    """Frames (F, H, W) uint8 → (F, SIGNAL_GRID²) float64, the signal model's input."""
    g = SIGNAL_GRID
    return (
        np.stack([cv2.resize(f, (g, g), interpolation=cv2.INTER_AREA) for f in frames])
        .reshape(len(frames), -1)
        .astype(np.float64)
    )


def _case_frames(seed: int, index: int, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """n_frames random instants of one simulated patient: (features (n, 196), relative LV-area change (n,)).

    Both are centred on the case's mean: the detector only uses changes over time, so the model
    is fitted to within-patient variation (gain and heart size drop out).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    case = draw_case(rng, quality=QUALITIES[index % 3])
    phantom = EchoPhantom(case, rng, duration_s=20.0)
    # Half the instants near an ED (−0.2…+0.25 s): the detector times ED from there, so the fit must
    # be right there (valve closure, atrial kick), not only on average over the beat.
    eds = np.array([b.t_ed for b in phantom.beats])
    eds = eds[(eds > 2.0) & (eds < 12.0)]
    near = rng.choice(eds, n_frames // 2) + rng.uniform(-0.2, 0.25, n_frames // 2)
    times = np.sort(np.concatenate([rng.uniform(2.0, 12.0, n_frames - n_frames // 2), near]))
    frames, contours = phantom.render(times)
    x, area = _grid(frames), contour_area(contours)
    return x - x.mean(0), (area - area.mean()) / area.mean()


def fit_lv_area_weights(
    n_cases: int = 300, frames_per_case: int = 24, seed: int = 7, lam: float = 1e4
) -> tuple[np.ndarray, dict]:
    """Ridge regression of the relative LV area on 14×14 pixels, over simulated patients.

    Returns the weights (14, 14) float32 and metrics on ``n_cases // 5`` held-out patients:
    within-patient correlation of the prediction with the true area (median, 10th percentile).
    About 4 ms of rendering per frame: the defaults take ~45 s.
    """
    xs, ys = zip(*(_case_frames(seed, i, frames_per_case) for i in range(n_cases)), strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    w = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)
    held = [_case_frames(seed + 1, i, frames_per_case) for i in range(max(3, n_cases // 5))]
    corr = np.array([np.corrcoef(hx @ w, hy)[0, 1] for hx, hy in held])
    metrics = {
        "heldout_cases": len(held),
        "within_case_corr_median": float(np.median(corr)),
        "within_case_corr_p10": float(np.percentile(corr, 10)),
    }
    return w.reshape(SIGNAL_GRID, SIGNAL_GRID).astype(np.float32), metrics


def write_signal_weights(path: str | Path = SIGNAL_WEIGHTS, **fit_kwargs) -> dict:
    """Refit the signal model and write ``<path>`` (.npz, key ``w``) and its ``.json`` sidecar."""
    path = Path(path)
    params = {"n_cases": 300, "frames_per_case": 24, "seed": 7, "lam": 1e4} | fit_kwargs
    w, metrics = fit_lv_area_weights(**params)
    np.savez(path, w=w)
    sidecar = {
        "artefact": "cycle-signal",
        "what": "LV cavity area signal for edge_agent.cycles.CycleDetector: relative LV area change "
        "≈ w · (frame area-resized to 14×14, uint8 values as float), up to a per-patient constant",
        "weights": path.name,
        "shape": list(w.shape),
        "trained": "ridge regression (lambda = lam) on phantom frames, half at random instants, half "
        "within -0.2..+0.25 s of an ED; good/medium/poor in turn; target: shoelace area of the "
        "simulator's LV contour relative to the patient's "
        "mean, inputs and target centred per patient; edge_agent.cycles_eval.write_signal_weights",
        "params": params,
        "metrics": metrics,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar


def stream_case(
    detector: CycleDetector, phantom: EchoPhantom, t0: float, n_frames: int, chunk: int = 50
) -> tuple[list, float]:
    """Render n_frames from t0 at the case's fps and push them one by one.

    Returns the windows with the frame number (from 0) whose push emitted them, and the total
    time (s) spent inside ``push``.
    """
    fps = phantom.case.fps
    out, busy = [], 0.0
    for c0 in range(0, n_frames, chunk):
        idx = np.arange(c0, min(c0 + chunk, n_frames))
        frames, _ = phantom.render(t0 + idx / fps)
        for i, fr in zip(idx, frames, strict=True):
            tic = time.perf_counter()
            beats = detector.push(int(i), float(t0 + i / fps), fr)
            busy += time.perf_counter() - tic
            out.extend((int(i), b) for b in beats)
    return out, busy


def score_beats(
    windows: list[BeatWindow],
    ed_exact: np.ndarray,
    n_frames: int,
    fps: float,
    tol_frames: float = 2.0,
    warmup_s: float = 3.0,
) -> dict:
    """Score the ``ed_ed`` windows of one stream (frame_seq = frame number from 0) against true EDs.

    ed_exact: true ED instants in frames (fractional); the truth is the nearest frame. Returns
    counts ``true``, ``correct``, ``extra`` and, per correct beat, the start error (frames, emitted −
    exact) and the heart-rate error (bpm).
    """
    ed = np.round(ed_exact)
    lo, hi = warmup_s * fps, n_frames - 0.6 * fps
    scored = [j for j in range(len(ed) - 1) if ed[j] >= lo and ed[j + 1] <= hi]
    bounds = [
        (w.frame_seq[0] + w.start, w.frame_seq[0] + w.end, w.hr_bpm) for w in windows if w.how == "ed_ed"
    ]
    used: set[int] = set()
    errors, hr_errors = [], []
    for j in scored:
        hit = [
            i
            for i, (s, e, _) in enumerate(bounds)
            if i not in used and abs(s - ed[j]) <= tol_frames and abs(e - ed[j + 1]) <= tol_frames
        ]
        if hit:
            used.add(hit[0])
            s, _, hr = bounds[hit[0]]
            errors.append(float(s - ed_exact[j]))
            hr_errors.append(float(hr - 60.0 * fps / (ed_exact[j + 1] - ed_exact[j])))
    span_lo, span_hi = (ed[scored[0]], ed[scored[-1] + 1]) if scored else (lo, hi)
    extra = sum(
        1
        for i, (s, e, _) in enumerate(bounds)
        if i not in used and s >= span_lo - tol_frames and e <= span_hi + tol_frames
    )
    return {
        "true": len(scored),
        "correct": len(used),
        "extra": extra,
        "errors": errors,
        "hr_errors": hr_errors,
    }


def detector_accuracy(
    n_cases: int,
    seconds: float,
    quality: str,
    hrv: float = 0.1,
    fps: float = 50.0,
    seed: int = 0,
    cfg: CycleConfig | None = None,
    tol_frames: float = 2.0,
    warmup_s: float = 3.0,
) -> dict:
    """Stream ``n_cases`` simulated patients (``seconds`` each) through the detector and score it.

    Truth: the simulator's EDs (beat ``t_ed``) as nearest frames, the labelling rule of
    :func:`edge_agent.phantom.label_clip`. Every true beat starting after ``warmup_s`` whose closing
    ED is at least 0.6 s before the end (time to confirm it) is scored: correct when one emitted
    ``ed_ed`` window has both boundaries within ``tol_frames`` of its EDs. Emitted windows in that
    span matching no true beat are extra; missed and extra beats are failures:
    ``accuracy = correct / (true beats + extra)``. Also reports the boundary error (frames,
    emitted − exact ED instant) and the detector's cost per push (ms).
    """
    cfg = CycleConfig() if cfg is None else cfg
    n_true = n_ok = n_extra = n_frames_total = 0
    errors, hr_err, per_case, busy = [], [], [], 0.0
    for k in range(n_cases):
        rng = np.random.default_rng(np.random.SeedSequence([seed, QUALITIES.index(quality), int(fps), k]))
        case = dataclasses.replace(draw_case(rng, quality=quality, fps=fps), hrv=hrv)
        phantom = EchoPhantom(case, rng, duration_s=seconds + 10.0)
        t0 = phantom.beats[1].t_ed + float(rng.uniform(0, 1)) * phantom.beats[1].rr
        n = round(seconds * fps)
        emitted, dt = stream_case(CycleDetector(cfg, fps), phantom, t0, n)
        busy += dt
        n_frames_total += n
        ed_exact = (np.array([b.t_ed for b in phantom.beats]) - t0) * fps
        score = score_beats([w for _, w in emitted], ed_exact, n, fps, tol_frames, warmup_s)
        n_true, n_ok, n_extra = n_true + score["true"], n_ok + score["correct"], n_extra + score["extra"]
        per_case.append(f"{score['correct']}/{score['true']}+{score['extra']} @{case.hr_bpm:.0f}bpm")
        errors += score["errors"]
        hr_err += score["hr_errors"]
    errors_a, hr_a = np.array(errors), np.array(hr_err)
    return {
        "quality": quality,
        "fps": fps,
        "hrv": hrv,
        "cases": n_cases,
        "seconds": seconds,
        "true_beats": n_true,
        "correct": n_ok,
        "missed": n_true - n_ok,
        "extra": n_extra,
        "accuracy": n_ok / max(1, n_true + n_extra),
        "bias_frames": float(errors_a.mean()) if len(errors_a) else float("nan"),
        "abs_err_p95_frames": float(np.percentile(np.abs(errors_a), 95)) if len(errors_a) else float("nan"),
        "hr_abs_err_bpm": float(np.abs(hr_a).mean()) if len(hr_a) else float("nan"),
        "push_ms": 1e3 * busy / max(1, n_frames_total),
        "per_case": per_case,  # correct/true+extra at the case's mean heart rate
    }
