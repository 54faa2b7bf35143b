"""The CUDA backend: the fused posterior on an NVIDIA GPU with torch alone (no TensorRT), in fp32,
fp16 or bf16, replayed as a CUDA graph.

``CudaBackend.load("engines/mcsdr_default.pt", device="cuda:0", precision="fp16")`` loads the
trained module onto the GPU. ``posterior()`` runs what the fused ONNX graph runs (the encoder once,
the 10 DDIM steps over the K trajectories as the batch, the bounded-target inverse), under
``torch.autocast`` for fp16/bf16: matmuls and convolutions in half precision, the sampler's update,
the softmax and the normalisations in fp32 (autocast's own op lists).

CUDA graphs, as the TensorRT backend does them: the first call at a batch size runs eagerly; the
second warms up on a side stream, captures one forward into a ``torch.cuda.CUDAGraph`` over static
input and output tensors, and replays it; later calls at that batch size copy their inputs into the
static tensors and replay (no Python or kernel-launch overhead for the ~2,000 kernels of a window).
A new batch size drops the graph and starts over; a failed capture is logged and the backend stays
eager. Needs torch built with CUDA (``pip install torch`` from the CUDA index, or JetPack's wheel on
a Jetson): several hundred MB instead of TensorRT's several GB.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.inference.backends import Backend, BackendError, RawPosterior, StageTimes, cuda_device_index

log = logging.getLogger(__name__)

DTYPES = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}  # None: no autocast
WARMUP_CALLS = 2  # eager forwards on the side stream before a capture (torch's CUDA-graph recipe)


class CudaBackend(Backend):
    name = "cuda"

    def __init__(
        self, torch: Any, model: Any, sidecar: dict[str, Any], index: int, dtype: Any, cuda_graph: bool
    ) -> None:
        self._torch = torch
        self.model = model
        self.sidecar = sidecar
        self.device = torch.device("cuda", index)
        self._dtype = dtype
        self._use_graph = cuda_graph
        self._batch = 0  # batch size of the calls counted in _calls_at_batch
        self._calls_at_batch = 0
        self._graph: Any = None
        self._static_in: tuple[Any, ...] = ()
        self._static_out: tuple[Any, ...] = ()
        # Stage marks for ``profile``: before the inputs' copy, after it, after the model, after the
        # outputs' copy; recorded on the current stream, where the copies and the replay run.
        self._marks = tuple(torch.cuda.Event(enable_timing=True) for _ in range(4))

    @classmethod
    def load(
        cls,
        path: Path,
        device: str = "cuda:0",
        threads: int | None = None,
        precision: str = "fp16",
        cuda_graph: bool = True,
    ) -> CudaBackend:
        """Load artefact ``path`` (.pt with its sidecar) onto GPU ``device`` ("cuda" / "cuda:N").

        threads: unused (kept for the common signature); precision: fp32 | fp16 | bf16;
        cuda_graph: replay repeated same-batch calls as a CUDA graph.
        """
        index = cuda_device_index(device, "cuda")
        if precision not in DTYPES:
            raise BackendError(
                f"worker.precision: the cuda backend runs {', '.join(DTYPES)}, not {precision!r}"
            )
        import torch

        from edge_agent.model.artefact import load_model

        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise BackendError(
                f"worker.device: {device!r} but torch {torch.__version__} sees "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA device(s): install "
                "a CUDA build of torch (or JetPack's on a Jetson), or use the onnxruntime backend on cpu"
            )
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise BackendError(f"worker.precision: bf16 needs an Ampere or newer GPU ({device}); use fp16")
        try:
            model, sidecar = load_model(path)
        except FileNotFoundError as e:
            raise BackendError(f"worker.model: {e}") from None
        try:
            torch.cuda.set_device(index)
            model = model.to(torch.device("cuda", index)).eval()
        except torch.cuda.OutOfMemoryError as e:
            raise BackendError(f"worker.model: {path} does not fit on {device}: {e}") from None
        dtype = getattr(torch, DTYPES[precision]) if DTYPES[precision] else None
        log.info("cuda: %s on cuda:%d (%s, CUDA graphs %s)", Path(path).name, index, precision, cuda_graph)
        return cls(torch, model, sidecar, index, dtype, cuda_graph)

    @property
    def graph_active(self) -> bool:
        """Whether the next call at the current batch size replays a captured CUDA graph."""
        return self._graph is not None

    def _forward(self, video: Any, demo: Any, mask: Any, noise: Any) -> tuple[Any, Any]:
        """Device tensors → (samples (B, K) EF % float32, ood_score (B,) float32), all on the GPU."""
        torch = self._torch
        # No autocast weight cache: a captured graph must not hold casts made outside it.
        half = torch.autocast(
            "cuda", self._dtype or torch.float32, self._dtype is not None, cache_enabled=False
        )
        with torch.no_grad(), half:
            y, ood = self.model.posterior(video, demo, mask, noise)
        return self.model.transform.inverse(y.float()), ood.float()

    def posterior(
        self, frames: np.ndarray, demo: np.ndarray, mask: np.ndarray, noise: np.ndarray
    ) -> RawPosterior:
        """frames (B, 32, 112, 112) uint8, demo (B, 4) float32, mask (B, 4) bool, noise (B, K) float32
        -> samples (B, K) float64 EF %, before recalibration, and ood_score (B,)."""
        if self.model is None:
            raise BackendError("cuda: posterior() after close()")
        torch = self._torch
        torch.cuda.set_device(self.device)  # per host thread: the worker's may not be the loading one
        b = np.asarray(frames).shape[0]
        if b == 0:
            return RawPosterior(np.empty((0, noise.shape[1])), np.empty(0))
        host = [
            torch.from_numpy(np.array(a, dtype=t))
            for a, t in ((frames, np.uint8), (demo, np.float32), (mask, bool), (noise, np.float32))
        ]
        self._mark(0)  # after the host-side conversions: the span to mark 1 is the copies alone
        inputs = tuple(t.to(self.device, non_blocking=False) for t in host)
        self._mark(1)
        samples, ood = self._run(inputs)
        samples, ood = samples.double(), ood.double()
        self._mark(2)
        out = RawPosterior(samples.cpu().numpy(), ood.cpu().numpy())
        if self.profile:
            self._mark(3)
            self._marks[3].synchronize()
            self.last_stages = StageTimes(*(a.elapsed_time(z) for a, z in itertools.pairwise(self._marks)))
        return out

    def _mark(self, i: int) -> None:
        """Record stage mark i on the current stream when profiling."""
        if self.profile:
            self._marks[i].record()

    def _run(self, inputs: tuple[Any, ...]) -> tuple[Any, Any]:
        """Device inputs → (samples, ood) on the device: eager, or a captured CUDA graph replayed
        (the graph's static outputs, valid until the next replay)."""
        b = inputs[0].shape[0]
        if b != self._batch:
            self._drop_graph()
            self._batch, self._calls_at_batch = b, 0
        self._calls_at_batch += 1
        if self._graph is None and self._use_graph and self._calls_at_batch >= 2:
            self._capture(inputs)
        if self._graph is None:
            return self._forward(*inputs)
        for static, new in zip(self._static_in, inputs, strict=True):
            static.copy_(new)
        self._graph.replay()
        return self._static_out

    def _capture(self, inputs: tuple[Any, ...]) -> None:
        """Warm up on a side stream, then capture one forward over static copies of ``inputs``; on
        failure log why and stay eager."""
        torch = self._torch
        static_in = tuple(t.clone() for t in inputs)
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_CALLS):
                    self._forward(*static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(*static_in)
        except RuntimeError as e:
            self._use_graph = False
            log.warning("cuda: CUDA graph capture failed (%s); running without graphs", e)
            return
        self._graph, self._static_in, self._static_out = graph, static_in, static_out

    def _drop_graph(self) -> None:
        self._graph, self._static_in, self._static_out = None, (), ()

    def close(self) -> None:
        """Drop the graph, the static tensors and the model, and return their memory; safe twice."""
        if self.model is None:
            return
        self._torch.cuda.synchronize(self.device)
        self._drop_graph()
        self.model = None
        self._torch.cuda.empty_cache()
