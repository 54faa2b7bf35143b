"""The torch backend: the trained MCSDR module, encoder once per window, K trajectories as the batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edge_agent.inference.backends import Backend, BackendError, RawPosterior
from edge_agent.model.artefact import load_model


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: torch.nn.Module, sidecar: dict, device: torch.device) -> None:
        self.model = model
        self.sidecar = sidecar
        self.device = device

    @classmethod
    def load(
        cls, path: Path, device: str = "cpu", threads: int | None = None, precision: str = "fp32"
    ) -> TorchBackend:
        if precision != "fp32":
            raise BackendError(f"worker.precision: the torch backend runs fp32 only, not {precision!r}")
        if threads:
            # Several workers share the cores: each keeps to its own share instead of all fighting.
            torch.set_num_threads(threads)
        try:
            model, sidecar = load_model(path)
        except FileNotFoundError as e:
            raise BackendError(f"worker.model: {e}") from None
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"worker.device: {device!r} requested but torch sees no CUDA device; use cpu")
        return cls(model.to(dev), sidecar, dev)

    @torch.inference_mode()
    def posterior(
        self, frames: np.ndarray, demo: np.ndarray, mask: np.ndarray, noise: np.ndarray
    ) -> RawPosterior:
        to = self.device
        y, ood = self.model.posterior(
            torch.from_numpy(np.array(frames, dtype=np.uint8)).to(to),  # received buffers are read-only
            torch.from_numpy(np.asarray(demo, dtype=np.float32)).to(to),
            torch.from_numpy(np.asarray(mask, dtype=bool)).to(to),
            torch.from_numpy(np.asarray(noise, dtype=np.float32)).to(to),
        )
        samples = self.model.transform.inverse_np(y.cpu().numpy())
        return RawPosterior(samples, ood.cpu().numpy().astype(np.float64))

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
