"""Posterior speed, backends side by side: what one window's K = 40 posterior costs on this machine.

Measured in one run, one thread, one window at a time (B = 1), each variant warmed up and then
timed for at least ``min_seconds`` and ``min_samples`` calls:

* ``encoder``: the encoder graph alone (ONNX Runtime) — the floor: no sampler can cost less;
* ``default``: the fused posterior graph (ONNX Runtime: encoder once, 10 DDIM steps unrolled);
* ``torch``: the torch module, encoder once and the K trajectories batched;
* ``naive``: the paper-style loop in torch — the whole model, video encoder included, called at
  every DDIM step.

Absolute times only mean something on the machine that produced them; the ratios, measured in the
same run, are the figures to compare (``default / encoder`` ≤ 1.5 and ``naive / default`` ≥ 8 are
the targets on a 2-core CPU).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.export import random_inputs

VARIANTS = ("encoder", "default", "torch", "naive")


def timings(fn: Callable[[], Any], min_seconds: float, min_samples: int, warmup: int = 3) -> np.ndarray:
    """Seconds per call of ``fn`` after ``warmup`` calls, for at least min_seconds and min_samples."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_seconds or len(out) < min_samples:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return np.asarray(out)


def stats_ms(seconds: np.ndarray) -> dict[str, float | int]:
    """min, mean, p50, p90, p99, max in ms and the sample count."""
    ms = 1000.0 * seconds
    return {
        "n": int(ms.size),
        "min": float(ms.min()),
        "mean": float(ms.mean()),
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
    }


def posterior_speed(
    model: str | Path = "engines/mcsdr_default.pt",
    min_seconds: float = 3.0,
    min_samples: int = 20,
    threads: int = 1,
) -> dict[str, Any]:
    """Time the four variants (module docstring) on one random window, with the K of the exported
    graph; returns per-variant stats (ms) and the ratios ``default_over_encoder`` and
    ``naive_over_default`` (medians)."""
    import onnxruntime as ort
    import torch

    from edge_agent.train import load_model

    torch.set_num_threads(threads)
    pt = Path(model).with_suffix(".pt")
    net, _side = load_model(pt)
    k = int(json.loads(Path(f"{pt.with_suffix('.onnx')}.json").read_text())["k"])
    feeds = random_inputs(1, k, seed=0)
    video, demo, mask, noise = (torch.from_numpy(feeds[n]) for n in ("video", "demo", "demo_mask", "noise"))
    known = mask > 0.5
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1

    def session(suffix: str) -> ort.InferenceSession:
        return ort.InferenceSession(str(pt.with_suffix(suffix)), options, providers=["CPUExecutionProvider"])

    fused, encoder = session(".onnx"), session(".encoder.onnx")
    enc_feeds = {n: feeds[n] for n in ("video", "demo", "demo_mask")}
    steps = net.schedule.timesteps().tolist()
    coef = net.schedule.step_coefficients().tolist()

    @torch.inference_mode()
    def naive() -> torch.Tensor:
        y = noise
        for (a, b), t in zip(coef, steps, strict=True):
            kv = net.condition(video, demo, known)  # re-encoded every step, as a plain scheduler loop does
            y = a * y + b * net.eps(y, torch.full_like(y, t, dtype=torch.int64), kv)
        return y

    @torch.inference_mode()
    def batched() -> torch.Tensor:
        return net.sample(video, demo, known, noise)

    calls = {
        "encoder": lambda: encoder.run(None, enc_feeds),
        "default": lambda: fused.run(None, feeds),
        "torch": batched,
        "naive": naive,
    }
    results = {name: stats_ms(timings(fn, min_seconds, min_samples)) for name, fn in calls.items()}
    p50 = {name: r["p50"] for name, r in results.items()}
    return {
        "k": k,
        "threads": threads,
        "min_seconds": min_seconds,
        "min_samples": min_samples,
        "variants": results,
        "default_over_encoder": p50["default"] / p50["encoder"],
        "naive_over_default": p50["naive"] / p50["default"],
    }


def speed_table(result: dict[str, Any]) -> str:
    """Markdown table of :func:`posterior_speed`'s result."""
    rows = [
        "| variant | p50 ms | p90 ms | p99 ms | n | × default |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = result["variants"]["default"]["p50"]
    for name in VARIANTS:
        r = result["variants"][name]
        cells = (f"{r[q]:.1f}" for q in ("p50", "p90", "p99"))
        rows.append(f"| {name} | {' | '.join(cells)} | {r['n']} | {r['p50'] / base:.2f} |")
    rows.append("")
    rows.append(
        f"default / encoder = {result['default_over_encoder']:.2f} (target ≤ 1.5); "
        f"naive / default = {result['naive_over_default']:.1f} (target ≥ 8); K = {result['k']}, "
        f"{result['threads']} thread(s)"
    )
    return "\n".join(rows)
