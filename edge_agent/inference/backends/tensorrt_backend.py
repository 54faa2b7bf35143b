"""The TensorRT backend: the fused ONNX graph (encoder + 10 unrolled DDIM steps) as a TensorRT engine.

``TensorRTBackend.load("engines/mcsdr_default", device="cuda:0")`` finds ``mcsdr_default.onnx`` and
its ``.onnx.json`` sidecar, builds or reuses the cached plan for this GPU (see
:mod:`edge_agent.inference.engine_build`), and keeps for the backend's lifetime: one execution context,
device buffers sized for the engine's max batch, pinned host staging buffers and one CUDA stream.

``posterior()`` stages the inputs (mask bool -> float32) in pinned memory, copies them to the
device, runs the engine and copies the samples (and the out-of-distribution scores) back. The
first call at a batch size enqueues with ``execute_async_v3`` (TensorRT needs one plain enqueue
after a shape change before capture); the next call at that batch size captures the enqueue into
a CUDA graph, which later calls replay. If capture fails (some engines, e.g. with
data-dependent shapes, cannot be captured) the backend logs why and keeps enqueueing. A new batch
size drops the graph and starts over.

Everything past argument and file checks needs an NVIDIA GPU with TensorRT and cuda-python; the
tensorrt / cuda imports happen inside ``load`` so that importing this module never fails.
Not thread-safe: one worker thread per backend.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.inference import engine_build
from edge_agent.inference.backends import (
    Backend,
    BackendError,
    RawPosterior,
    StageTimes,
    cuda_device_index,
    no_ood_score,
)
from edge_agent.inference.engine_build import CudaError, EngineBuildError, cuda_call

log = logging.getLogger(__name__)

INPUTS = ("video", "demo", "demo_mask", "noise")
OUTPUT = "samples"
OOD = "ood_score"  # absent from engines of graphs exported before the score


def onnx_files(path: Path, variant: str = "") -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(onnx path, ONNX sidecar, backend sidecar) of artefact ``path`` (with or without suffix);
    ``variant`` ".qdq" picks ``<stem>.qdq.onnx``, the Q/DQ graph ``edge-agent calibrate`` makes.

    The backend sidecar is the artefact's ``<stem>.json`` (recalibration, target transform) when it
    exists, else the ONNX sidecar; when both name the weights' hash they must agree, so the
    recalibration applied to the samples belongs to the weights inside the ONNX.
    """
    stem = Path(path).with_suffix("")
    onnx = stem.with_name(f"{stem.name}{variant}.onnx")
    side_path = onnx.with_name(onnx.name + ".json")
    if not onnx.is_file():
        make = "run `edge-agent calibrate`" if variant == ".qdq" else "export the model to ONNX first"
        raise BackendError(f"worker.model: {onnx} is missing; {make}")
    if not side_path.is_file():
        raise BackendError(
            f"worker.model: {side_path.name} (the ONNX sidecar) is missing; re-export the ONNX"
        )
    onnx_side = json.loads(side_path.read_text())
    artefact_path = stem.with_name(f"{stem.name}.json")
    if not artefact_path.is_file():
        return onnx, onnx_side, onnx_side
    artefact = json.loads(artefact_path.read_text())
    weights, exported = artefact.get("sha256"), onnx_side.get("model_sha256")
    if weights and exported and weights != exported:
        raise BackendError(
            f"worker.model: {onnx.name} was exported from weights {exported[:12]} but {artefact_path.name} "
            f"describes weights {weights[:12]}; re-export the ONNX"
        )
    return onnx, onnx_side, artefact


def _has_qdq(path: Path) -> bool:
    stem = Path(path).with_suffix("")
    return stem.with_name(f"{stem.name}.qdq.onnx").is_file()


class _Pinned:
    """Page-locked host memory viewed as a flat numpy array of ``dtype`` (async copies need it)."""

    def __init__(self, cudart: Any, count: int, dtype: np.dtype) -> None:
        self.nbytes = count * dtype.itemsize
        self.ptr = cuda_call(cudart, cudart.cudaMallocHost(self.nbytes), "cudaMallocHost")
        raw = (ctypes.c_uint8 * self.nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=dtype, count=count)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(
        self,
        trt: Any,
        cudart: Any,
        runtime: Any,
        engine: Any,
        sidecar: dict[str, Any],
        plan: Path,
        cuda_graph: bool,
        device_index: int = 0,
    ) -> None:
        """Create the context, buffers and stream for ``engine`` on GPU ``device_index``. Needs a GPU."""
        self.sidecar = sidecar
        self.plan = plan
        self._index = device_index
        self._trt, self._cudart, self._runtime, self._engine = trt, cudart, runtime, engine
        self._use_graph = cuda_graph
        self._graph_exec: Any = None
        self._batch = 0  # batch size the context's input shapes are set to (0: none yet)
        self._calls_at_batch = 0
        self._device: dict[str, int] = {}
        self._host: dict[str, _Pinned] = {}
        self._stream: Any = None
        self._marks: list[
            Any
        ] = []  # CUDA events for ``profile``: before H2D, after it, after the engine, after D2H
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"worker.model: TensorRT could not create an execution context for {plan}")
        try:
            self._allocate()
        except Exception as e:
            self.close()
            if isinstance(e, CudaError):  # e.g. out of device memory: "auto" may fall back
                raise BackendError(f"worker.model: {plan.name}: {e}") from None
            raise

    def _allocate(self) -> None:
        trt, cudart, engine = self._trt, self._cudart, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if sorted(inputs) != sorted(INPUTS) or sorted(outputs) not in ([OOD, OUTPUT], [OUTPUT]):
            raise BackendError(
                f"worker.model: {self.plan.name} has inputs {inputs} and outputs {outputs}; "
                f"expected {list(INPUTS)} and [{OUTPUT!r}, {OOD!r}]"
            )
        self.outputs = outputs
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        # Profile 0's max shapes size every buffer; the output's follows from the inputs' shapes.
        self.max_shapes = {n: tuple(engine.get_tensor_profile_shape(n, 0)[2]) for n in inputs}
        for n in inputs:
            self._context.set_input_shape(n, self.max_shapes[n])
        for n in outputs:
            self.max_shapes[n] = tuple(self._context.get_tensor_shape(n))
        self.max_batch, self.k = self.max_shapes[OUTPUT]
        # Non-blocking: the legacy default stream (other libraries' work) does not serialise with it.
        self._stream = cuda_call(
            cudart,
            cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
            "cudaStreamCreateWithFlags",
        )
        self._marks = [cuda_call(cudart, cudart.cudaEventCreate(), "cudaEventCreate") for _ in range(4)]
        for n in names:
            count = int(np.prod(self.max_shapes[n]))
            self._device[n] = cuda_call(
                cudart, cudart.cudaMalloc(count * self.dtypes[n].itemsize), "cudaMalloc"
            )
            self._host[n] = _Pinned(cudart, count, self.dtypes[n])
            # Fixed addresses for the backend's lifetime: a captured graph bakes them in.
            self._context.set_tensor_address(n, self._device[n])
        self._batch = self.max_batch  # the shapes just set

    @classmethod
    def load(
        cls,
        path: Path,
        device: str = "cuda:0",
        threads: int | None = None,
        precision: str = "fp16",
        max_batch: int | None = None,
        cuda_graph: bool = True,
        calibration_cache: str | None = None,
    ) -> TensorRTBackend:
        """Load artefact ``path`` on GPU ``device`` ("cuda" / "cuda:N"), building its engine if needed.

        threads: unused (the GPU does the work; kept for the common ``load`` signature); precision:
        fp32 | fp16 | int8 (int8 builds ``<stem>.qdq.onnx``, the explicitly quantised graph of
        ``edge-agent calibrate``, on TensorRT 10 and 11 alike: its denoiser stays float; only
        without it, on TensorRT 10.x, the float ONNX with ``calibration_cache``, the entropy
        calibrator's cache, which quantises every layer it can); max_batch: the engine's largest
        batch (default: the ONNX sidecar's ``max_batch``, else 8; ``worker.max_batch``, the plan
        ``build-engine --max-batch`` made); cuda_graph: replay same-batch enqueues as a CUDA graph.
        """
        index = cuda_device_index(device, "tensorrt")
        try:
            trt = engine_build.import_tensorrt()
            cudart = engine_build.import_cudart()
        except EngineBuildError as e:
            raise BackendError(f"worker.backend: tensorrt: {e}") from None
        qdq = precision == "int8" and (calibration_cache is None or _has_qdq(path))
        onnx, onnx_side, sidecar = onnx_files(path, ".qdq" if qdq else "")
        batch = max_batch if max_batch is not None else int(onnx_side.get("max_batch", 8))
        try:
            cuda_call(cudart, cudart.cudaSetDevice(index), f"cudaSetDevice({index})")
            build = {"precision": precision, "max_batch": batch, "device": index}
            plan = engine_build.build_engine(onnx, calibration_cache=calibration_cache, **build)
            runtime = trt.Runtime(engine_build.trt_logger(trt))
            engine = runtime.deserialize_cuda_engine(plan.read_bytes())
            if engine is None:
                # A plan TensorRT refuses (corrupt, or built by an incompatible patch release): rebuild once.
                log.warning("TensorRT could not deserialize %s; rebuilding it", plan)
                plan = engine_build.build_engine(
                    onnx, calibration_cache=calibration_cache, force=True, **build
                )
                engine = runtime.deserialize_cuda_engine(plan.read_bytes())
            if engine is None:
                raise BackendError(f"worker.model: TensorRT cannot deserialize {plan}")
        except (EngineBuildError, CudaError) as e:
            raise BackendError(f"worker.model: {e}") from None
        log.info("tensorrt: %s on cuda:%d (%s)", plan.name, index, precision)
        return cls(trt, cudart, runtime, engine, sidecar, plan, cuda_graph, index)

    @property
    def graph_active(self) -> bool:
        """Whether the next call at the current batch size replays a captured CUDA graph."""
        return self._graph_exec is not None

    def posterior(
        self, frames: np.ndarray, demo: np.ndarray, mask: np.ndarray, noise: np.ndarray
    ) -> RawPosterior:
        """frames (B, 32, 112, 112) uint8, demo (B, 4) float32, mask (B, 4) bool, noise (B, K) float32
        -> samples (B, K) float64 EF %, before recalibration, and ood_score (B,). Batches over the
        engine's max batch run as chunks of exactly max batch (the last one padded), so that the
        shape stays put and the captured CUDA graph is kept."""
        frames, demo, mask, noise = (np.asarray(a) for a in (frames, demo, mask, noise))
        b = frames.shape[0]
        expected = {
            "video": (b, *self.max_shapes["video"][1:]),
            "demo": (b, *self.max_shapes["demo"][1:]),
            "demo_mask": (b, *self.max_shapes["demo_mask"][1:]),
            "noise": (b, self.k),
        }
        arrays = {"video": frames, "demo": demo, "demo_mask": mask, "noise": noise}
        for name, array in arrays.items():
            if array.shape != expected[name]:
                raise ValueError(f"{name}: shape {array.shape}, expected {expected[name]}")
        if b == 0:
            return RawPosterior(np.empty((0, self.k)), np.empty(0))
        if b > self.max_batch:
            pad = -b % self.max_batch
            arrays = {n: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for n, a in arrays.items()}
        step = min(b, self.max_batch)
        staged: list[StageTimes] = []
        chunks = [
            self._run({n: a[i : i + step] for n, a in arrays.items()}, staged) for i in range(0, b, step)
        ]
        if self.profile:
            self.last_stages = StageTimes(*np.sum(staged, axis=0).tolist())
        samples = np.concatenate([c[OUTPUT] for c in chunks])[:b].astype(np.float64)
        if OOD not in self.outputs:
            return RawPosterior(samples, no_ood_score(b))
        return RawPosterior(samples, np.concatenate([c[OOD] for c in chunks])[:b].astype(np.float64))

    def _run(self, arrays: dict[str, np.ndarray], staged: list[StageTimes]) -> dict[str, np.ndarray]:
        """One engine execution on at most max_batch windows; returns each output, (b, K) samples and
        (b,) scores, in the output dtype; when profiling, appends its stage times to ``staged``."""
        cudart, stream = self._cudart, self._stream
        # The current device is per host thread: the worker's may not be the one that loaded.
        cuda_call(cudart, cudart.cudaSetDevice(self._index), f"cudaSetDevice({self._index})")
        b = arrays["video"].shape[0]
        for name, array in arrays.items():
            self._host[name].array[: array.size].reshape(array.shape)[...] = array  # casts the bool mask
        self._mark(0)  # after the host staging: the span to mark 1 is the copies alone
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name, array in arrays.items():
            nbytes = array.size * self.dtypes[name].itemsize
            cuda_call(
                cudart,
                cudart.cudaMemcpyAsync(self._device[name], self._host[name].ptr, nbytes, h2d, stream),
                "H2D",
            )
        self._mark(1)
        if b != self._batch:
            self._drop_graph()
            for name in INPUTS:
                self._context.set_input_shape(name, (b, *self.max_shapes[name][1:]))
            self._batch, self._calls_at_batch = b, 0
        self._calls_at_batch += 1
        if self._graph_exec is None and self._use_graph and self._calls_at_batch >= 2:
            self._capture()
        if self._graph_exec is not None:
            cuda_call(cudart, cudart.cudaGraphLaunch(self._graph_exec, stream), "cudaGraphLaunch")
        elif not self._context.execute_async_v3(int(stream)):
            raise RuntimeError(f"TensorRT execute_async_v3 failed on {self.plan.name}; see its log")
        self._mark(2)
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        shapes = {OUTPUT: (b, self.k), OOD: (b,)}
        for name in self.outputs:
            out, count = self._host[name], int(np.prod(shapes[name]))
            nbytes = count * self.dtypes[name].itemsize
            cuda_call(cudart, cudart.cudaMemcpyAsync(out.ptr, self._device[name], nbytes, d2h, stream), "D2H")
        self._mark(3)
        cuda_call(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        if self.profile:
            staged.append(
                StageTimes(
                    *(
                        cuda_call(cudart, cudart.cudaEventElapsedTime(a, z), "cudaEventElapsedTime")
                        for a, z in itertools.pairwise(self._marks)
                    )
                )
            )
        return {
            name: self._host[name].array[: int(np.prod(shapes[name]))].reshape(shapes[name]).copy()
            for name in self.outputs
        }

    def _mark(self, i: int) -> None:
        """Record stage mark i on the stream when profiling."""
        if self.profile:
            cuda_call(
                self._cudart, self._cudart.cudaEventRecord(self._marks[i], self._stream), "cudaEventRecord"
            )

    def _capture(self) -> None:
        """Capture one enqueue into a CUDA graph; on failure log why and stop trying."""
        cudart, stream = self._cudart, self._stream
        # Thread-local mode: only this thread's unsafe calls (e.g. cudaMalloc) invalidate the capture.
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        graph = None
        try:
            cuda_call(cudart, cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
            try:
                enqueued = self._context.execute_async_v3(int(stream))
            finally:
                graph = cuda_call(cudart, cudart.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
            if not enqueued:
                raise CudaError("execute_async_v3 failed while capturing")
            self._graph_exec = cuda_call(
                cudart, cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate"
            )
        except CudaError as e:
            cudart.cudaGetLastError()  # clear the (non-sticky) capture error before plain enqueues
            self._use_graph = False
            log.warning("tensorrt: CUDA graph capture failed (%s); enqueueing without graphs", e)
        finally:
            if graph is not None:
                cuda_call(cudart, cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def _drop_graph(self) -> None:
        if self._graph_exec is not None:
            cuda_call(
                self._cudart, self._cudart.cudaGraphExecDestroy(self._graph_exec), "cudaGraphExecDestroy"
            )
            self._graph_exec = None

    def close(self) -> None:
        """Free the graph, buffers, stream, context and engine; safe to call twice. Every resource is
        released even when a CUDA call fails; the first failure is raised (as BackendError) after."""
        if self._cudart is None:
            return
        cudart = self._cudart
        errors: list[str] = []

        def attempt(result: tuple[Any, ...], what: str) -> None:
            try:
                cuda_call(cudart, result, what)
            except CudaError as e:
                errors.append(str(e))

        if self._stream is not None:
            attempt(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        if self._graph_exec is not None:
            attempt(cudart.cudaGraphExecDestroy(self._graph_exec), "cudaGraphExecDestroy")
            self._graph_exec = None
        for ptr in self._device.values():
            attempt(cudart.cudaFree(ptr), "cudaFree")
        for pinned in self._host.values():
            attempt(cudart.cudaFreeHost(pinned.ptr), "cudaFreeHost")
        for mark in self._marks:
            attempt(cudart.cudaEventDestroy(mark), "cudaEventDestroy")
        self._marks = []
        self._device.clear()
        self._host.clear()
        if self._stream is not None:
            attempt(cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None
        # Context before engine before runtime: TensorRT objects must die in reverse creation order.
        self._context = None
        self._engine = None
        self._runtime = None
        self._cudart = None
        if errors:
            raise BackendError(f"tensorrt: closing {self.plan.name}: {'; '.join(errors)}")
