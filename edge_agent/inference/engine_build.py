"""TensorRT engines from the fused ONNX graph, cached per GPU / TensorRT version / precision.

``<artefact>.onnx`` (see :mod:`edge_agent.inference.export`) is parsed with TensorRT's ONNX parser and built
into a serialised engine ("plan") with one optimisation profile: batch 1 / 1 / ``max_batch``
(min / opt / max) on axis 0 of every input. A plan only runs on the GPU model and TensorRT version
that built it, so plans live in ``engines/cache/`` under a name made from an :class:`EngineKey`::

    <stem>.<gpu>.sm<cc>.trt<version>.<precision>.b<max_batch>.plan   (+ .json sidecar)

The sidecar records the key, the ONNX's sha256, the build time and the engine's I/O; a cached
plan is reused only when both the key and the ONNX hash match, else it is rebuilt.

Precision:

* TensorRT 10.x (JetPack 6 ships 10.3): "weakly typed" networks; fp16 sets ``BuilderFlag.FP16``;
  int8 sets ``INT8`` (+ ``FP16`` fallback) and either uses the Q/DQ nodes of an explicitly
  quantised ONNX or calibrates with ``IInt8EntropyCalibrator2`` (a calibration cache file and/or
  batches of numpy inputs).
* TensorRT >= 11: every network is strongly typed and the precision flags and calibrators are
  removed, so the ONNX itself must carry the precision: fp16 needs an FP16 (ModelOpt AutoCast)
  ONNX and int8 a Q/DQ ONNX; anything else is refused with the fix spelled out.

CUDA bindings: ``cuda-python`` (``from cuda.bindings import runtime as cudart``, cuda-python >=
12.6; the older ``from cuda import cudart`` layout is accepted too), not pycuda, because it is
what NVIDIA's own TensorRT samples use, it exposes stream capture / CUDA graphs
(``cudaStreamBeginCapture``, ``cudaGraphInstantiate``, ``cudaGraphLaunch``) which pycuda does not
wrap, and it installs as a prebuilt wheel (``pip install "cuda-python>=12.6,<13"``) on x86_64 and on Jetson
(aarch64, CUDA 12.6 in JetPack 6) where pycuda has to be compiled against the local toolkit.

Everything that touches ``tensorrt`` or ``cudart`` needs an NVIDIA GPU; the key, path, sidecar and
argument helpers at the top of this module are plain Python and run anywhere.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.core.artefacts import file_sha256

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
CACHE_DIRNAME = "cache"  # plans go to <onnx dir>/cache/, i.e. engines/cache/ for engines/*.onnx

INSTALL_HINT = (
    "install TensorRT's Python bindings: `pip install 'edge-agent[tensorrt-cu12]'` (or "
    "`[tensorrt-cu13]` for a CUDA 13 driver) on an x86_64 machine with an NVIDIA driver, or on a "
    "Jetson flash JetPack 6.1+ (TensorRT 10.3, CUDA 12.6; `sudo apt install python3-libnvinfer`) "
    "and `pip install 'cuda-python>=12.6,<13'` (README \"Deploying\")"
)


class EngineBuildError(RuntimeError):
    """An engine cannot be built or reused; the message names the file and the fix."""


class CudaError(RuntimeError):
    """A CUDA runtime call returned an error."""


# --------------------------------------------------------------------------- keys, paths, sidecars


def _sanitise(text: str, keep: str = "") -> str:
    """Lower-case ``text`` with every run of characters outside [a-z0-9``keep``] turned into "-"."""
    return re.sub(rf"[^a-z0-9{re.escape(keep)}]+", "-", text.lower()).strip("-") or "unknown"


@dataclasses.dataclass(frozen=True)
class EngineKey:
    """What a plan is only valid for.

    gpu: the CUDA device name ("Orin", "NVIDIA GeForce RTX 4090"); compute_capability: "8.7";
    trt_version: ``tensorrt.__version__``; precision: fp32 | fp16 | int8; max_batch: the profile's
    largest batch. (No DLA: README "build-engine" says why.)
    """

    gpu: str
    compute_capability: str
    trt_version: str
    precision: str
    max_batch: int

    def _device_part(self) -> str:
        sm = self.compute_capability.replace(".", "")
        return f"{_sanitise(self.gpu)}.sm{_sanitise(sm)}.trt{_sanitise(self.trt_version, keep='.')}"

    def plan_name(self, stem: str) -> str:
        """File name of the plan built from ``<stem>.onnx`` for this key."""
        return f"{stem}.{self._device_part()}.{self.precision}.b{self.max_batch}.plan"

    def timing_cache_name(self) -> str:
        """Default timing-cache file: timings are per device and TensorRT version, not per model."""
        return f"timing.{self._device_part()}.cache"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineKey:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def validate_build_args(precision: str, max_batch: int, workspace_mb: int = 1024) -> None:
    """Raise EngineBuildError naming the bad argument; no GPU needed."""
    if precision not in PRECISIONS:
        raise EngineBuildError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    for name, value in (("max_batch", max_batch), ("workspace_mb", workspace_mb)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EngineBuildError(f"{name} must be an integer >= 1, got {value!r}")


def engine_paths(onnx_path: Path, key: EngineKey, cache_dir: Path | None = None) -> tuple[Path, Path]:
    """(plan, sidecar JSON) for ``onnx_path`` built with ``key``; cache_dir defaults to <onnx dir>/cache."""
    onnx_path = Path(onnx_path)
    directory = Path(cache_dir) if cache_dir is not None else onnx_path.parent / CACHE_DIRNAME
    plan = directory / key.plan_name(onnx_path.stem)
    return plan, plan.with_suffix(".json")


def plan_dirs(onnx_path: Path) -> tuple[Path, Path]:
    """Where the plans of ``onnx_path`` are looked for, in order: ``<onnx dir>/cache`` (what the
    owner of an install built next to the model, e.g. ``sudo edge-agent build-engine``) and this
    user's cache, ``$XDG_CACHE_HOME/edge-agent/engines`` (default ``~/.cache/edge-agent/engines``):
    a service user cannot write inside a root-owned install."""
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-agent" / "engines"
    return Path(onnx_path).parent / CACHE_DIRNAME, user


def build_dir(onnx_path: Path) -> Path:
    """Where a new plan for ``onnx_path`` goes: the first of :func:`plan_dirs` this process may
    create files in (its nearest existing folder is writable), else the user's cache."""
    for directory in plan_dirs(onnx_path):
        existing = directory
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.is_dir() and os.access(existing, os.W_OK):
            return directory
    return plan_dirs(onnx_path)[-1]


def cached_engine(onnx_path: Path, key: EngineKey, cache_dir: Path | None = None) -> Path | None:
    """The cached plan for ``onnx_path`` and ``key``, or None (logging why) when it must be rebuilt.

    A plan is refused when it or its sidecar is missing or unreadable, when the sidecar's key differs
    (another GPU, TensorRT version, precision or max batch) or when the ONNX's sha256
    differs from the one the plan was built from.
    """
    plan, side = engine_paths(onnx_path, key, cache_dir)
    if not plan.is_file() or not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
        recorded_key = EngineKey.from_dict(meta["key"])
        recorded_sha = meta["onnx_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("engine sidecar %s is unreadable (%s); rebuilding", side, e)
        return None
    if recorded_key != key:
        log.info("cached engine %s was built for %s, not %s; rebuilding", plan.name, recorded_key, key)
        return None
    digest = file_sha256(Path(onnx_path))
    if recorded_sha != digest:
        log.info(
            "%s changed since %s was built (sha256 %s, engine built from %s); rebuilding",
            onnx_path,
            plan.name,
            digest[:12],
            str(recorded_sha)[:12],
        )
        return None
    return plan


def write_engine_sidecar(
    plan: Path, key: EngineKey, onnx_path: Path, io: Mapping[str, Any], build_seconds: float
) -> Path:
    """Write ``plan``'s JSON sidecar: key, ONNX path and sha256, build time, I/O (``io``: inputs/outputs)."""
    side = plan.with_suffix(".json")
    meta = {
        "key": key.to_dict(),
        "onnx": str(onnx_path),
        "onnx_sha256": file_sha256(Path(onnx_path)),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(build_seconds, 1),
        **io,
    }
    _atomic_write(side, (json.dumps(meta, indent=2) + "\n").encode())
    return side


def _atomic_write(path: Path, data: Any) -> None:
    """Write bytes-like ``data`` so that a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def trt_major(version: str) -> int:
    """Major version of a ``tensorrt.__version__`` string ("10.3.0" -> 10)."""
    return int(version.split(".", 1)[0])


# --------------------------------------------------------------------------- TensorRT / CUDA (GPU)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or EngineBuildError with the install instructions."""
    try:
        import tensorrt
    except ImportError as e:
        raise EngineBuildError(f"TensorRT is not importable here ({e}); {INSTALL_HINT}") from None
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's runtime module (new ``cuda.bindings`` layout first, then the pre-12.6 one)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as e:
            raise EngineBuildError(f"cuda-python is not importable here ({e}); {INSTALL_HINT}") from None
    return cudart


def cuda_call(cudart: Any, result: tuple[Any, ...], what: str) -> Any:
    """Unpack a cuda-python ``(error, *values)`` result: raise CudaError, else return the value(s)."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        raise CudaError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


_TRT_LOGGER: Any = None


def trt_logger(trt: Any) -> Any:
    """The process's TensorRT logger (TensorRT wants one logger shared by builder and runtimes)."""
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


def engine_key(precision: str, max_batch: int, device: int = 0) -> EngineKey:
    """The EngineKey of this machine's CUDA ``device`` and installed TensorRT. Needs a GPU."""
    validate_build_args(precision, max_batch)
    trt = import_tensorrt()
    cudart = import_cudart()
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return EngineKey(
        gpu=name.strip("\x00 "),
        compute_capability=f"{props.major}.{props.minor}",
        trt_version=trt.__version__,
        precision=precision,
        max_batch=max_batch,
    )


def _describe(tensors: list[Any]) -> list[dict[str, Any]]:
    """Name, shape (-1 = dynamic) and dtype of network tensors, for logs and the sidecar."""
    return [{"name": t.name, "shape": list(t.shape), "dtype": str(t.dtype)} for t in tensors]


def _precision_features(trt: Any, network: Any) -> tuple[bool, bool]:
    """(has FP16 tensors, has Q/DQ layers) of a parsed network: what a strongly typed build gets."""
    qdq = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    has_half = has_qdq = False
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        has_qdq |= layer.type in qdq
        has_half |= any(layer.get_output(j).dtype == trt.DataType.HALF for j in range(layer.num_outputs))
    return has_half, has_qdq


def _batch_profile(builder: Any, inputs: list[Any], low: int, opt: int, high: int) -> Any:
    """An optimisation profile ranging axis 0 of every input over low..high (others must be static)."""
    profile = builder.create_optimization_profile()
    for t in inputs:
        shape = tuple(t.shape)
        if not shape or shape[0] != -1:
            raise EngineBuildError(
                f"input {t.name!r} has shape {shape}: the ONNX must have a dynamic batch axis 0 ('B')"
            )
        if any(d < 0 for d in shape[1:]):
            raise EngineBuildError(f"input {t.name!r} has shape {shape}: only axis 0 may be dynamic")
        tail = shape[1:]
        profile.set_shape(t.name, (low, *tail), (opt, *tail), (high, *tail))
    return profile


def _calibration_stream(
    batches: Iterable[Mapping[str, np.ndarray]] | None, inputs: list[Any], dtypes: Mapping[str, np.dtype]
) -> tuple[Iterator[Mapping[str, np.ndarray]], int | None]:
    """The batches (the first one checked for every input) and their B_cal, None without batches."""
    stream = iter(batches) if batches is not None else iter(())
    first = next(stream, None)
    stream = itertools.chain([first], stream) if first is not None else stream
    batch_size = None
    if first is not None:
        missing = sorted(set(dtypes) - set(first))
        if missing:
            raise EngineBuildError(f"calibration batches lack inputs {missing}; they need {sorted(dtypes)}")
        batch_size = int(np.shape(first[inputs[0].name])[0])
    return stream, batch_size


def _copy_to_device(
    cudart: Any,
    batch: Mapping[str, np.ndarray],
    names: list[str],
    dtypes: Mapping[str, np.dtype],
    device: Mapping[str, int],
    batch_size: int,
) -> list[int]:
    """``batch``'s arrays cast to the input dtypes and copied into the ``device`` buffers; returns
    the buffers' pointers in ``names`` order."""
    pointers = []
    for name in names:
        array = np.ascontiguousarray(batch[name], dtype=dtypes[name])
        if array.shape[0] != batch_size:
            raise ValueError(f"batch of {array.shape[0]} for {name!r}, expected {batch_size}")
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        ptr = device[name]
        cuda_call(cudart, cudart.cudaMemcpy(ptr, array.ctypes.data, array.nbytes, kind), "memcpy")
        pointers.append(ptr)
    return pointers


def _entropy_calibrator(
    trt: Any,
    cudart: Any,
    cache: Path | None,
    batches: Iterable[Mapping[str, np.ndarray]] | None,
    inputs: list[Any],
) -> Any:
    """An ``IInt8EntropyCalibrator2`` reading/writing ``cache`` and feeding ``batches`` (TensorRT 10.x).

    Every batch is a dict input name -> array (B_cal, ...) with the same B_cal; the arrays are cast to
    the network's input dtypes (e.g. a bool mask to float32) and copied into device buffers. The
    calibrator's ``batch_size`` is B_cal (None when calibrating from the cache alone).
    """
    dtypes = {t.name: np.dtype(trt.nptype(t.dtype)) for t in inputs}
    stream, batch_size = _calibration_stream(batches, inputs, dtypes)

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batch_size = batch_size
            self.error: str | None = None
            self.count = 0
            self._device: dict[str, int] = {}
            if batch_size is not None:
                for t in inputs:
                    nbytes = batch_size * int(np.prod(tuple(t.shape)[1:])) * dtypes[t.name].itemsize
                    self._device[t.name] = cuda_call(cudart, cudart.cudaMalloc(nbytes), "cudaMalloc")

        def get_batch_size(self) -> int:
            return self.batch_size or 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            # TensorRT calls this from C++ where an exception would abort: record it, end calibration.
            if self.batch_size is None:
                return None
            try:
                batch = next(stream)
                pointers = _copy_to_device(cudart, batch, names, dtypes, self._device, self.batch_size)
            except StopIteration:
                log.info("calibration: %d batches done", self.count)
                return None
            except Exception as e:  # reported after the build, see _serialize
                self.error = f"calibration batch {self.count}: {e}"
                return None
            self.count += 1
            log.info("calibration batch %d", self.count)
            return pointers

        def read_calibration_cache(self) -> bytes | None:
            if cache is not None and cache.is_file():
                log.info("using calibration cache %s", cache)
                return cache.read_bytes()
            return None

        def write_calibration_cache(self, data: Any) -> None:
            if cache is not None:
                _atomic_write(cache, data)
                log.info("wrote calibration cache %s", cache)

        def free(self) -> None:
            for ptr in self._device.values():
                cuda_call(cudart, cudart.cudaFree(ptr), "cudaFree")
            self._device.clear()

    return _Calibrator()


def _configure_precision(
    trt: Any,
    cudart: Any,
    builder: Any,
    config: Any,
    network: Any,
    inputs: list[Any],
    onnx_path: Path,
    precision: str,
    calibration_cache: Path | None,
    calibration_data: Iterable[Mapping[str, np.ndarray]] | None,
) -> Any:
    """Set precision flags (TensorRT 10) or check the ONNX's own types (>= 11); returns any calibrator."""
    has_half, has_qdq = _precision_features(trt, network)
    if trt_major(trt.__version__) >= 11:
        if precision == "fp16" and not has_half:
            raise EngineBuildError(
                f"TensorRT {trt.__version__} builds strongly typed networks only (BuilderFlag.FP16 was "
                f"removed in 11.0) and {onnx_path} has no FP16 tensors: convert it with NVIDIA ModelOpt "
                f"AutoCast (`python -m modelopt.onnx.autocast --onnx_path {onnx_path} --output_path "
                f"{onnx_path.with_suffix('.fp16.onnx')} --low_precision_type fp16`, keeping the I/O types) "
                "and build that, or build --precision fp32"
            )
        if precision == "int8" and not has_qdq:
            raise EngineBuildError(
                f"TensorRT {trt.__version__} has no INT8 calibrators (removed in 11.0) and {onnx_path} has "
                "no QuantizeLinear/DequantizeLinear nodes: quantise it with NVIDIA ModelOpt "
                "(modelopt.onnx.quantization, int8) and build the Q/DQ ONNX, or use TensorRT 10.x "
                "(JetPack 6) with --calibration-cache"
            )
        if precision == "fp32" and (has_half or has_qdq):
            log.warning("fp32 requested but %s carries fp16/Q-DQ types: the typed ONNX decides", onnx_path)
        return None
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # TF32 is on by default (Ampere and newer): fp32 must mean fp32, or parity with torch slips.
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 too: layers without int8 kernels fall back to fp16
    if precision != "int8":
        return None
    config.set_flag(trt.BuilderFlag.INT8)
    if has_qdq:
        log.info("int8: explicit quantisation from the ONNX's Q/DQ nodes, no calibration")
        return None
    if calibration_data is None and (calibration_cache is None or not calibration_cache.is_file()):
        raise EngineBuildError(
            f"int8 from {onnx_path} needs calibration: pass an existing calibration cache "
            "(--calibration-cache PATH) or calibration batches, or export a Q/DQ (quantised) ONNX"
        )
    calibrator = _entropy_calibrator(trt, cudart, calibration_cache, calibration_data, inputs)
    if calibrator.batch_size is not None:
        # Dynamic-shape networks calibrate at the calibration profile's shapes: fix them to B_cal.
        b = calibrator.batch_size
        config.set_calibration_profile(_batch_profile(builder, inputs, b, b, b))
    config.int8_calibrator = calibrator
    return calibrator


def build_engine(
    onnx_path: str | Path,
    precision: str = "fp16",
    max_batch: int = 8,
    workspace_mb: int = 1024,
    timing_cache: str | Path | None = None,
    calibration_cache: str | Path | None = None,
    calibration_data: Iterable[Mapping[str, np.ndarray]] | None = None,
    device: int = 0,
    cache_dir: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Build (or reuse) the plan of ``onnx_path`` for this GPU; returns the plan's path. Needs a GPU.

    precision: fp32 | fp16 | int8 (see the module docstring for TensorRT 10 vs 11); max_batch: the
    profile's largest batch (min = opt = 1); workspace_mb: the builder's workspace pool (MiB);
    timing_cache: timing-cache file, loaded when present and saved after the build (default:
    ``timing.<gpu>.sm<cc>.trt<ver>.cache`` next to the plans); calibration_cache: INT8 calibration
    cache file, read when present and written after calibrating; calibration_data: iterable of
    dicts input name -> numpy array (B_cal, ...) for INT8 calibration (TensorRT 10 only);
    device: CUDA device index; cache_dir:
    where plans are looked for and go (default: :func:`plan_dirs` searched in order, a new plan in
    :func:`build_dir`); force: rebuild even when a cached plan matches.
    """
    validate_build_args(precision, max_batch, workspace_mb)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"{onnx_path}: no such ONNX file; export the model to ONNX first")
    trt = import_tensorrt()
    cudart = import_cudart()
    cuda_call(cudart, cudart.cudaSetDevice(device), f"cudaSetDevice({device})")
    key = engine_key(precision, max_batch, device)
    searched = (Path(cache_dir),) if cache_dir is not None else plan_dirs(onnx_path)
    plan, _side = engine_paths(onnx_path, key, searched[0] if cache_dir is not None else build_dir(onnx_path))
    hits = [] if force else [h for d in searched if (h := cached_engine(onnx_path, key, d)) is not None]
    if hits:
        log.info("reusing engine %s", hits[0])
        return hits[0]
    timing_path = Path(timing_cache) if timing_cache is not None else plan.parent / key.timing_cache_name()
    calibration_path = Path(calibration_cache) if calibration_cache is not None else None
    _build_plan(
        trt,
        cudart,
        onnx_path,
        key,
        plan,
        timing_path,
        workspace_mb=workspace_mb,
        calibration_cache=calibration_path,
        calibration_data=calibration_data,
    )
    return plan


def _network_io(network: Any) -> tuple[list[Any], dict[str, list[dict[str, Any]]]]:
    """The parsed network's input tensors, and its inputs and outputs described (logged here)."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    io = {"inputs": _describe(inputs), "outputs": _describe(outputs)}
    for kind in ("inputs", "outputs"):
        for t in io[kind]:
            log.info("%s %s shape %s %s", kind[:-1], t["name"], t["shape"], t["dtype"])
    return inputs, io


def _serialize(builder: Any, network: Any, config: Any, calibrator: Any, onnx_path: Path) -> Any:
    """The built, serialised plan; frees the calibrator's device buffers and raises its error."""
    log.info("optimising (tactic timing can take minutes, longer on a Jetson)...")
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if calibrator is not None and calibrator.error:
        raise EngineBuildError(f"{onnx_path}: {calibrator.error}")
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT could not build the engine; see its log above")
    return serialized


def _build_plan(
    trt: Any,
    cudart: Any,
    onnx_path: Path,
    key: EngineKey,
    plan: Path,
    timing_path: Path,
    *,
    workspace_mb: int,
    calibration_cache: Path | None,
    calibration_data: Iterable[Mapping[str, np.ndarray]] | None,
) -> None:
    """Parse ``onnx_path``, build it for ``key`` (precision, max_batch) and write ``plan``,
    its sidecar and the timing cache."""
    started = time.monotonic()
    log.info(
        "building %s engine from %s for %s (TensorRT %s)", key.precision, onnx_path, key.gpu, key.trt_version
    )
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    # TensorRT 10: explicit batch is the default; TensorRT >= 11: networks are always strongly typed.
    network = builder.create_network()
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n  ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: TensorRT's ONNX parser failed:\n  {errors}")
    inputs, io = _network_io(network)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.add_optimization_profile(_batch_profile(builder, inputs, 1, 1, key.max_batch))
    calibrator = _configure_precision(
        trt,
        cudart,
        builder,
        config,
        network,
        inputs,
        onnx_path,
        key.precision,
        calibration_cache,
        calibration_data,
    )
    _use_timing_cache(config, timing_path)

    serialized = _serialize(builder, network, config, calibrator, onnx_path)
    _atomic_write(plan, serialized)  # the plan first: nothing about the timing cache can lose it
    seconds = time.monotonic() - started
    write_engine_sidecar(plan, key, onnx_path, io, seconds)
    try:
        _atomic_write(timing_path, config.get_timing_cache().serialize())
    except Exception as e:  # only the next build's speed depends on it
        log.warning("timing cache %s not saved (%s); the next build times its tactics afresh", timing_path, e)
    log.info("built %s in %.0f s (timing cache %s)", plan, seconds, timing_path)


def _use_timing_cache(config: Any, timing_path: Path) -> None:
    """Give the builder the timing cache at ``timing_path``; a missing, corrupt or foreign one
    (another GPU or TensorRT version) is replaced by an empty cache, with a warning."""
    blob = timing_path.read_bytes() if timing_path.is_file() else b""
    try:
        cache = config.create_timing_cache(blob)
        accepted = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)
    except Exception as e:  # TensorRT raises its own types on a corrupt blob
        log.debug("timing cache %s: %s", timing_path, e)
        accepted = False
    if not accepted and blob:
        log.warning(
            "timing cache %s rejected (corrupt or from another device); starting a new one", timing_path
        )
    if not accepted:
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def build_engine_cli(
    onnx: str | Path,
    precision: str = "fp16",
    max_batch: int = 8,
    calibration_cache: str | Path | None = None,
    workspace_mb: int = 1024,
    force: bool = False,
) -> int:
    """``edge-agent build-engine --onnx PATH --precision fp32|fp16|int8 [--max-batch 8]
    [--calibration-cache PATH]``: build or reuse the plan and print its path. Raises EngineBuildError."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    plan = build_engine(
        onnx,
        precision=precision,
        max_batch=max_batch,
        workspace_mb=workspace_mb,
        calibration_cache=calibration_cache,
        force=force,
    )
    print(f"engine {plan}\nsidecar {plan.with_suffix('.json')}")
    return 0
