"""The CUDA backend (torch with CUDA, no TensorRT).

The first tests run anywhere (what it refuses and why). The ``gpu`` tests need torch built with
CUDA and a CUDA device, and are skipped elsewhere with the reason: CUDA-graph capture and replay
with new data, the capture state machine, capture failure, device memory back to its baseline, and
fp16/bf16 against fp32 on the calibration windows, the profiled split of device time, and the
bench's device section on the GPU.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.inference.backends import BackendError, load_backend
from edge_agent.inference.backends.cuda_backend import CudaBackend
from edge_agent.live.worker import starting_noises

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "engines" / "mcsdr_default.pt"
WINDOWS = ROOT / "calibration" / "windows.npz"


def _gpu_reason() -> str | None:
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} has no CUDA device here (a CPU build, or no GPU/driver)"
    return None


GPU_REASON = _gpu_reason()
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))


def _windows(n: int) -> tuple[np.ndarray, ...]:
    """The first n calibration windows (frames, demo, mask) and the worker's K = 40 noises."""
    with np.load(WINDOWS) as z:
        frames, demo, mask = z["video"][:n], z["demo"][:n], z["demo_mask"][:n] > 0.5
    return frames, demo, mask, np.repeat(starting_noises(40, 0)[None], n, axis=0)


def test_the_cuda_backend_refuses_a_cpu_device_and_unknown_precisions() -> None:
    with pytest.raises(BackendError, match="cannot run the cuda backend; use cuda or cuda:N"):
        CudaBackend.load(MODEL, device="cpu")
    with pytest.raises(BackendError, match="runs fp32, fp16, bf16, not 'int8'"):
        CudaBackend.load(MODEL, device="cuda:0", precision="int8")


@pytest.mark.skipif(GPU_REASON is None, reason="this machine has a CUDA device")
def test_without_a_cuda_device_the_cuda_backend_says_what_to_install() -> None:
    with pytest.raises(BackendError, match="install a CUDA build of torch"):
        CudaBackend.load(MODEL, device="cuda:0")
    # "auto" on a GPU-less machine passes it by and runs ONNX Runtime.
    assert load_backend("auto", MODEL, device="cpu", threads=1).name == "onnxruntime"


@gpu
@needs_gpu
def test_graph_capture_replays_new_data_and_follows_the_batch_size() -> None:
    frames, demo, mask, noise = _windows(4)
    graphed = CudaBackend.load(MODEL, device="cuda:0", precision="fp32")
    plain = CudaBackend.load(MODEL, device="cuda:0", precision="fp32", cuda_graph=False)
    try:
        reference = plain.posterior(frames[:2], demo[:2], mask[:2], noise[:2]).samples
        first = graphed.posterior(frames[:2], demo[:2], mask[:2], noise[:2]).samples  # eager
        assert not graphed.graph_active
        second = graphed.posterior(frames[:2], demo[:2], mask[:2], noise[:2]).samples  # captured, replayed
        assert graphed.graph_active
        for got in (first, second):
            np.testing.assert_allclose(got, reference, atol=1e-3)
        # New data through the same graph (its static inputs are refilled, not re-captured).
        other = graphed.posterior(frames[2:], demo[2:], mask[2:], noise[2:])
        want = plain.posterior(frames[2:], demo[2:], mask[2:], noise[2:])
        np.testing.assert_allclose(other.samples, want.samples, atol=1e-3)
        np.testing.assert_allclose(other.ood_score, want.ood_score, rtol=1e-3)
        graphed.posterior(frames[:3], demo[:3], mask[:3], noise[:3])  # a new batch size drops it
        assert not graphed.graph_active
    finally:
        graphed.close()
        plain.close()


@gpu
@needs_gpu
def test_a_failed_capture_leaves_the_backend_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    frames, demo, mask, noise = _windows(2)
    backend = CudaBackend.load(MODEL, device="cuda:0", precision="fp32")

    def refuse(*_a, **_k):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "graph", refuse)
    try:
        runs = [backend.posterior(frames, demo, mask, noise).samples for _ in range(3)]
        assert not backend.graph_active
        np.testing.assert_allclose(runs[2], runs[0], atol=1e-4)
    finally:
        backend.close()


@gpu
@needs_gpu
def test_close_returns_the_device_memory_and_is_idempotent() -> None:
    frames, demo, mask, noise = _windows(2)
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    for _ in range(5):
        backend = CudaBackend.load(MODEL, device="cuda:0", precision="fp16")
        for _ in range(3):
            backend.posterior(frames, demo, mask, noise)
        assert backend.graph_active
        backend.close()
        backend.close()
    assert torch.cuda.memory_allocated() <= baseline + (1 << 20)


@gpu
@needs_gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_moves_the_posterior_mean_by_at_most_half_a_point(precision: str) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16 (pre-Ampere)")
    frames, demo, mask, noise = _windows(12)
    half = CudaBackend.load(MODEL, device="cuda:0", precision=precision)
    full = CudaBackend.load(MODEL, device="cuda:0", precision="fp32")
    try:
        shift = np.abs(
            half.posterior(frames, demo, mask, noise).samples.mean(1)
            - full.posterior(frames, demo, mask, noise).samples.mean(1)
        )
        assert shift.mean() <= 0.5, shift
    finally:
        half.close()
        full.close()


@gpu
@needs_gpu
def test_profiled_calls_split_their_device_time() -> None:
    frames, demo, mask, noise = _windows(4)
    backend = CudaBackend.load(MODEL, device="cuda:0", precision="fp16")
    try:
        backend.posterior(frames, demo, mask, noise)
        assert backend.last_stages is None  # off by default: a worker pays nothing for it
        backend.profile = True
        for _ in range(3):  # eager, captured and replayed, replayed
            t0 = time.perf_counter()
            backend.posterior(frames, demo, mask, noise)
            wall_ms = 1e3 * (time.perf_counter() - t0)
            stages = backend.last_stages
            assert stages is not None and min(stages) >= 0 and stages.compute_ms > 0
            assert sum(stages) <= wall_ms  # device time inside the call's wall time
        assert backend.graph_active
    finally:
        backend.close()


@gpu
@needs_gpu
def test_the_bench_device_section_times_every_cuda_precision_with_its_split() -> None:
    from edge_agent.tools.device_latency import device_latency, device_table

    frames, demo, mask, noise = _windows(4)
    result = device_latency(MODEL, (frames, demo, mask), noise[0], (1, 4), 0.0, 8)
    for key in ("cuda-fp32", "cuda-fp16"):
        for run in result[key]["batches"].values():
            assert run["compute_ms"]["p50"] > 0 and run["wall_ms"]["p50"] >= run["compute_ms"]["p50"]
    assert "| cuda-fp16 | cuda:0 | 4 |" in device_table(result)
