"""The posterior on every backend and precision this machine runs, each on its own device, at the
batch sizes of one bed, a few beds and a ward (``edge-agent bench``'s ``device`` section).

Per variant and batch: the wall time of ``posterior()`` (what a worker waits for: host staging,
copies, the model, the result back in numpy) and, on a GPU, its device time split by CUDA events
into host → device copies, compute and device → host copies (:class:`StageTimes`, the split
``trtexec`` reports as H2D Latency, GPU Compute Time and D2H Latency). For TensorRT the report
also gives the ``trtexec`` command that times the same plan at the same shapes, so the two can be
put side by side. The CPU variants (ONNX Runtime fp32 and INT8) run the same batches: the figures
a GPU is compared with.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.core.metrics import distribution
from edge_agent.tools.timing import stats_ms, timings

log = logging.getLogger(__name__)

# (backend, precision, on the GPU): the CPU reference first, then the GPU backends.
VARIANTS = (
    ("onnxruntime", "fp32", False),
    ("onnxruntime", "int8", False),
    ("cuda", "fp32", True),
    ("cuda", "fp16", True),
    ("cuda", "bf16", True),
    ("tensorrt", "fp32", True),
    ("tensorrt", "fp16", True),
    ("tensorrt", "int8", True),
)
STAGES = ("h2d_ms", "compute_ms", "d2h_ms")


def trtexec_command(plan: str | Path, batch: int, k: int) -> str:
    """The ``trtexec`` line that times TensorRT plan ``plan`` at ``batch`` windows of K = ``k``
    samples, as the backend runs it (CUDA graph, inputs copied every query)."""
    shapes = f"video:{batch}x32x112x112,demo:{batch}x4,demo_mask:{batch}x4,noise:{batch}x{k}"
    return f"trtexec --loadEngine={plan} --shapes={shapes} --useCudaGraph --useSpinWait --duration=10"


def _time_batch(
    backend: Any,
    windows: tuple[np.ndarray, ...],
    noise: np.ndarray,
    batch: int,
    min_seconds: float,
    min_samples: int,
) -> dict[str, Any]:
    """Wall time (and, where the backend profiles, the device split) of ``posterior()`` on ``batch``
    windows tiled from ``windows``; at least ``max(5, min_samples // batch)`` calls after 3 warm-ups
    (so a 64-window batch on the CPU does not take minutes)."""
    frames, demo, mask = (np.resize(a, (batch, *a.shape[1:])) for a in windows)
    noises = np.repeat(noise[None], batch, axis=0)
    staged: list[tuple[float, float, float]] = []

    def call() -> None:
        backend.posterior(frames, demo, mask, noises)
        if backend.last_stages is not None:
            staged.append(tuple(backend.last_stages))

    warmup = 3
    seconds = timings(call, min_seconds, max(5, min_samples // batch), warmup=warmup)
    wall = stats_ms(seconds)
    out: dict[str, Any] = {"wall_ms": wall, "windows_per_s": float(batch / np.median(seconds))}
    if staged:
        split = np.asarray(staged[warmup:])  # the timed calls' (h2d, compute, d2h)
        out.update({stage: distribution(split[:, i]) for i, stage in enumerate(STAGES)})
    return out


def device_latency(
    model: str | Path,
    windows: tuple[np.ndarray, ...],
    noise: np.ndarray,
    batches: tuple[int, ...],
    min_seconds: float,
    min_samples: int,
    threads: int = 1,
    gpu: str = "cuda:0",
) -> dict[str, dict[str, Any]]:
    """Every variant of :data:`VARIANTS` at every batch size: ``{"<backend>-<precision>": {"backend",
    "precision", "device", "batches": {b: {"wall_ms", "windows_per_s", and on a GPU "h2d_ms",
    "compute_ms", "d2h_ms"; TensorRT also "trtexec"}}}}``, or ``{"skipped": why}`` for a variant
    this machine cannot run (its runtime missing, no GPU, no INT8 model)."""
    from tqdm import tqdm

    from edge_agent.inference.backends import BackendError, available_backends, load_backend

    pt = Path(model).with_suffix(".pt")
    installed = available_backends()
    out: dict[str, dict[str, Any]] = {}
    for name, precision, on_gpu in tqdm(VARIANTS, desc="device", unit="variant"):
        key, device = f"{name}-{precision}", gpu if on_gpu else "cpu"
        if name not in installed:
            out[key] = {"skipped": f"{name} is not installed here"}
            continue
        try:
            backend = load_backend(name, pt, device=device, threads=threads, precision=precision)
        except BackendError as e:
            out[key] = {"skipped": str(e)}
            log.info("bench: %s is not a variant of this machine: %s", key, e)
            continue
        backend.profile = on_gpu
        try:
            runs = {b: _time_batch(backend, windows, noise, b, min_seconds, min_samples) for b in batches}
            if name == "tensorrt":
                limit = getattr(backend, "max_batch", max(batches))
                for b, run in runs.items():
                    run["trtexec"] = trtexec_command(backend.plan, min(b, limit), noise.size)
        finally:
            backend.close()
        out[key] = {"backend": name, "precision": precision, "device": device, "batches": runs}
    return out


def device_table(result: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per variant and batch (wall p50 / p99, windows/s, device split p50), the
    skipped variants with their reasons, and the ``trtexec`` lines of the TensorRT variants."""
    rows = [
        "| variant | device | batch | wall p50 ms | wall p99 ms | windows/s | H2D p50 ms "
        "| compute p50 / p99 ms | D2H p50 ms | n |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    skipped, trtexec = [], []
    for key, v in result.items():
        if "skipped" in v:
            skipped.append(f"- {key}: {v['skipped']}")
            continue
        for b, run in v["batches"].items():
            wall = run["wall_ms"]
            split = ["—", "—", "—"]
            if "compute_ms" in run:
                c = run["compute_ms"]
                split = [
                    f"{run['h2d_ms']['p50']:.3f}",
                    f"{c['p50']:.2f} / {c['p99']:.2f}",
                    f"{run['d2h_ms']['p50']:.3f}",
                ]
            rows.append(
                f"| {key} | {v['device']} | {b} | {wall['p50']:.2f} | {wall['p99']:.2f} | "
                f"{run['windows_per_s']:.1f} | {' | '.join(split)} | {wall['n']} |"
            )
            if "trtexec" in run:
                trtexec.append(f"- {key}, batch {b}: `{run['trtexec']}`")
    text = "\n".join(rows)
    if trtexec:
        text += (
            "\n\nThe same plans under `trtexec` (compare its GPU Compute Time with the compute column, its "
            "Latency with H2D + compute + D2H; batches above the plan's max run as chunks here):\n\n"
            + "\n".join(trtexec)
        )
    if skipped:
        text += "\n\nNot run on this machine:\n\n" + "\n".join(skipped)
    return text
