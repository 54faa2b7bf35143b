"""The ONNX Runtime backend: the exported fused posterior graph, one call per batch of windows.

Runs ``<artefact>.onnx`` (see :mod:`edge_agent.inference.export`) with the CUDA or TensorRT execution
providers when this onnxruntime build has them and ``device`` asks for a GPU, else on the CPU. It
never imports torch: a Jetson or a small box runs the agent with onnxruntime and numpy only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_agent.inference.backends import Backend, BackendError, RawPosterior, no_ood_score

log = logging.getLogger(__name__)


def onnx_path(path: Path) -> Path:
    """The fused graph of an artefact: ``engines/mcsdr_default.pt`` → ``engines/mcsdr_default.onnx``."""
    return path if path.suffix == ".onnx" else path.with_suffix(".onnx")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, session: ort.InferenceSession, sidecar: dict) -> None:
        self.session = session
        self.sidecar = sidecar
        self.k = int(sidecar["k"])
        # Graphs exported before the out-of-distribution score have "samples" only.
        self.outputs = [o.name for o in session.get_outputs() if o.name in ("samples", "ood_score")]

    @classmethod
    def load(
        cls, path: Path, device: str = "cpu", threads: int | None = None, precision: str = "fp32"
    ) -> OnnxRuntimeBackend:
        if precision not in ("fp32", "int8"):
            raise BackendError(f"worker.precision: onnxruntime runs fp32 or int8, not {precision!r}")
        onnx = onnx_path(path)
        if precision == "int8" and not onnx.name.endswith(".int8.onnx"):
            onnx = onnx.with_suffix(".int8.onnx")  # the calibrated model, from `edge-agent calibrate`
        side_path = Path(f"{onnx}.json")
        if not onnx.exists() or not side_path.exists():
            raise BackendError(
                f"worker.model: {onnx} (with its sidecar {side_path.name}) is missing; make it with "
                f"`edge-agent {'calibrate' if precision == 'int8' else 'export'}`, "
                "or use worker.backend=torch"
            )
        sidecar = json.loads(side_path.read_text())
        options = ort.SessionOptions()
        if threads:
            # Several workers share the cores: each keeps to its own share.
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        wanted = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
            if not gpu:
                raise BackendError(
                    f"worker.device: {device!r} asked for, but this onnxruntime has only {available}; "
                    "install onnxruntime-gpu or use device: cpu"
                )
            wanted = [*gpu, "CPUExecutionProvider"]
        session = ort.InferenceSession(str(onnx), options, providers=wanted)
        log.info("onnxruntime: %s on %s", onnx, session.get_providers())
        return cls(session, sidecar)

    def posterior(
        self, frames: np.ndarray, demo: np.ndarray, mask: np.ndarray, noise: np.ndarray
    ) -> RawPosterior:
        if noise.shape[-1] != self.k:
            raise BackendError(
                f"worker.k: the ONNX graph was exported for K = {self.k} samples, the worker asks for "
                f"{noise.shape[-1]}; re-export with --k {noise.shape[-1]} or set worker.k: {self.k}"
            )
        feeds = {
            "video": np.ascontiguousarray(frames, dtype=np.uint8),
            "demo": np.asarray(demo, dtype=np.float32),
            "demo_mask": np.asarray(mask, dtype=np.float32),
            "noise": np.asarray(noise, dtype=np.float32),
        }
        samples, *ood = self.session.run(self.outputs, feeds)
        score = ood[0].astype(np.float64) if ood else no_ood_score(len(samples))
        return RawPosterior(samples.astype(np.float64), score)

    def close(self) -> None:
        self.session = None
