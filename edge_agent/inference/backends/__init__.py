"""Inference backends: one small interface, one module per backend, heavy imports inside ``load``.

A backend turns windows into raw posterior samples; everything around it (decoding, noises,
recalibration, summaries) is the worker's and is identical for every backend::

    backend = load_backend("auto", "engines/mcsdr_default.pt")
    samples, ood_score = backend.posterior(frames, demo, mask, noise)   # (B, K) EF %, (B,)

``auto`` picks the first backend, in the order of ``_BACKENDS``, whose runtime is installed and which
can load the artefact: TensorRT where it is installed and the worker's device is a GPU (it builds
or reuses a cached engine from the exported ``.onnx``), else on a GPU the CUDA backend (torch with
CUDA: fp16 and CUDA graphs, no TensorRT), else ONNX Runtime (needs the exported ``.onnx`` next to
the checkpoint), else torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

# Preference order of "auto": the fastest backend that can run here comes first.
_BACKENDS = {
    "tensorrt": ("edge_agent.inference.backends.tensorrt_backend", "TensorRTBackend", "tensorrt"),
    "cuda": ("edge_agent.inference.backends.cuda_backend", "CudaBackend", "torch"),
    "onnxruntime": ("edge_agent.inference.backends.onnxruntime_backend", "OnnxRuntimeBackend", "onnxruntime"),
    "torch": ("edge_agent.inference.backends.torch_backend", "TorchBackend", "torch"),
}


class BackendError(RuntimeError):
    """A backend cannot be loaded here; the message names the backend, the artefact and the fix."""


class RawPosterior(NamedTuple):
    """What a backend returns for a batch of B windows."""

    samples: np.ndarray  # (B, K) float64 EF %, before the sidecar's dispersion recalibration
    ood_score: np.ndarray  # (B,) float64 out-of-distribution score (≤ 1 familiar); NaN: none fitted


class StageTimes(NamedTuple):
    """Device time of one ``posterior()`` call on the backend's CUDA stream, ms (CUDA events): the
    inputs host → device, the model (engine or module), the outputs device → host; summed over the
    chunks of a batch run in parts. What ``trtexec`` reports as H2D Latency, GPU Compute Time and
    D2H Latency. Host-side staging and conversions fall outside all three; compute includes any
    wait for the host's enqueue (with a replayed CUDA graph, one launch)."""

    h2d_ms: float
    compute_ms: float
    d2h_ms: float


def no_ood_score(b: int) -> np.ndarray:
    """The score of B windows from an artefact exported before the score existed: unknown (NaN)."""
    return np.full(b, np.nan)


class Backend(ABC):
    """A loaded model. ``sidecar`` is the artefact's JSON (schedule, target transform, recalibration)."""

    name: str
    sidecar: dict[str, Any]
    # GPU backends: with ``profile`` set, each call records CUDA events and leaves its stage times in
    # ``last_stages`` (the bench's device split); off by default, so workers pay nothing for it.
    profile: bool = False
    last_stages: StageTimes | None = None

    @abstractmethod
    def posterior(
        self, frames: np.ndarray, demo: np.ndarray, mask: np.ndarray, noise: np.ndarray
    ) -> RawPosterior:
        """Posterior samples and out-of-distribution scores of a batch of windows.

        frames (B, 32, 112, 112) uint8; demo (B, 4) float32 (age y, sex 1 male, weight kg, height
        cm); mask (B, 4) bool, True where known; noise (B, K) float32 starting noises y_T.
        Returns samples (B, K) float64 EF %, before the sidecar's dispersion recalibration, and
        ood_score (B,).
        """

    @abstractmethod
    def close(self) -> None:
        """Free the backend's resources (device memory, threads, engines)."""


def cuda_device_index(device: str, backend: str) -> int:
    """CUDA device index of "cuda" (0) or "cuda:N" (N) for a GPU-only ``backend``; anything else
    is a BackendError naming the fix."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device.strip())
    if not match:
        raise BackendError(
            f"worker.device: {device!r} cannot run the {backend} backend; use cuda or cuda:N "
            "(or the torch / onnxruntime backends on cpu)"
        )
    return int(match.group(1) or 0)


def available_backends() -> list[str]:
    """Backends whose runtime package is installed here, in "auto"'s preference order."""
    return [name for name, (_m, _c, package) in _BACKENDS.items() if importlib.util.find_spec(package)]


def load_backend(
    name: str,
    model: str | Path,
    device: str = "cpu",
    threads: int | None = None,
    precision: str | None = None,
    engine: Mapping[str, Any] | None = None,
) -> Backend:
    """Load ``model`` (an artefact with its sidecar JSON) on backend ``name`` ("auto" picks).

    precision: fp32 | fp16 | int8, or None for the backend's own default (TensorRT fp16, the others
    fp32). ONNX Runtime runs int8 from the calibrated ``<model>.int8.onnx``; torch runs fp32 only.
    engine: options of the GPU backends (TensorRT's ``max_batch``, ``cuda_graph``,
    ``calibration_cache``; the CUDA backend's ``cuda_graph``); the CPU backends have none.
    """
    if name == "auto":
        found = available_backends()
        if not found:
            raise BackendError(f"no inference backend is installed; install one of {list(_BACKENDS)}")
        errors = []
        for candidate in found:
            try:
                return load_backend(candidate, model, device, threads, precision, engine)
            except BackendError as e:  # e.g. no exported ONNX: the next backend may still run
                errors.append(str(e))
        raise BackendError("no installed backend could load the model: " + "; ".join(errors))
    if name not in _BACKENDS:
        raise BackendError(
            f"worker.backend: unknown backend {name!r}; choose auto or one of {list(_BACKENDS)}"
        )
    module, cls, _package = _BACKENDS[name]
    backend = getattr(importlib.import_module(module), cls)
    options: dict[str, Any] = {} if precision is None else {"precision": precision}
    if name == "tensorrt":
        options.update(engine or {})
    elif name == "cuda" and engine and "cuda_graph" in engine:
        options["cuda_graph"] = engine["cuda_graph"]
    return backend.load(Path(model), device=device, threads=threads, **options)
