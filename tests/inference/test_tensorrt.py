"""TensorRT engine building and the TensorRT backend.

The first half runs anywhere (cache keys and paths, refusing stale engines, argument checks, the
error when TensorRT is missing). The ``gpu`` tests need TensorRT, cuda-python and a CUDA device and
are skipped elsewhere: they build engines from a tiny ONNX graph made here (and from the exported
model when ``engines/mcsdr_default.onnx`` exists) and compare them with ONNX Runtime.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.inference import engine_build
from edge_agent.inference.backends import BackendError, cuda_device_index
from edge_agent.inference.backends.tensorrt_backend import TensorRTBackend, onnx_files
from edge_agent.inference.engine_build import (
    EngineBuildError,
    EngineKey,
    cached_engine,
    engine_paths,
    validate_build_args,
    write_engine_sidecar,
)

K = 40
REAL_ONNX = Path(__file__).resolve().parents[2] / "engines" / "mcsdr_default.onnx"
REAL_QDQ = REAL_ONNX.with_name("mcsdr_default.qdq.onnx")
WINDOWS = Path(__file__).resolve().parents[2] / "calibration" / "windows.npz"


def _gpu_reason() -> str | None:
    """Why the gpu tests cannot run here, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (pip install 'edge-agent[tensorrt-cu12]', or JetPack on a Jetson)"
    try:
        cudart = engine_build.import_cudart()
    except EngineBuildError:
        return "cuda-python is not installed (pip install 'edge-agent[tensorrt-cu12]')"
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count < 1:
        return "no CUDA device is present"
    return None


GPU_REASON = _gpu_reason()


def gpu(test):
    """Mark ``test`` as needing a GPU and skip it, with the reason, where there is none."""
    return pytest.mark.gpu(pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))(test))


KEY = EngineKey(
    gpu="NVIDIA Jetson AGX Orin (nvgpu)",
    compute_capability="8.7",
    trt_version="10.3.0",
    precision="fp16",
    max_batch=8,
)


# ----------------------------------------------------------------------------------------- CPU


def test_plan_name_sanitises_gpu_and_names_every_key_field():
    assert (
        KEY.plan_name("mcsdr_default")
        == "mcsdr_default.nvidia-jetson-agx-orin-nvgpu.sm87.trt10.3.0.fp16.b8.plan"
    )
    orin = EngineKey("Orin", "8.7", "10.3.0.30", "int8", 4)
    assert orin.plan_name("m") == "m.orin.sm87.trt10.3.0.30.int8.b4.plan"
    weird = EngineKey("RTX/4090 ../..", "8.9", "10.7.0+cuda12", "fp32", 1)
    name = weird.plan_name("m")
    assert "/" not in name and ".." not in name and name.endswith(".fp32.b1.plan")
    assert KEY.timing_cache_name() == "timing.nvidia-jetson-agx-orin-nvgpu.sm87.trt10.3.0.cache"
    assert EngineKey.from_dict(json.loads(json.dumps(KEY.to_dict()))) == KEY


def test_engine_paths_default_to_cache_dir_next_to_the_onnx(tmp_path):
    plan, side = engine_paths(tmp_path / "engines" / "mcsdr_default.onnx", KEY)
    assert plan.parent == tmp_path / "engines" / "cache"
    assert side == plan.with_suffix(".json") and side.name.endswith(".fp16.b8.json")
    plan2, _ = engine_paths(tmp_path / "m.onnx", KEY, cache_dir=tmp_path / "elsewhere")
    assert plan2.parent == tmp_path / "elsewhere"


def test_plans_are_looked_for_next_to_the_model_then_in_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    onnx = tmp_path / "engines" / "m.onnx"
    beside, user = engine_build.plan_dirs(onnx)
    assert (beside, user) == (tmp_path / "engines" / "cache", tmp_path / "xdg" / "edge-agent" / "engines")
    assert engine_build.build_dir(onnx) == beside  # the folder can be made and written: plans go beside
    # Where nothing can be created next to the model (here its "folder" is a file; in deployment a
    # root-owned install run by a service user), a new plan goes to the user's cache.
    (tmp_path / "blocked").write_text("a file, not a folder")
    assert engine_build.build_dir(tmp_path / "blocked" / "m.onnx") == user


def _fake_build(tmp_path: Path, key: EngineKey = KEY) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx v1")
    plan, _ = engine_paths(onnx, key)
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes(b"plan")
    write_engine_sidecar(plan, key, onnx, {"inputs": [], "outputs": []}, 1.0)
    return onnx, plan


def test_cached_engine_reused_only_when_key_and_onnx_hash_match(tmp_path):
    onnx, plan = _fake_build(tmp_path)
    assert cached_engine(onnx, KEY) == plan
    side = json.loads(plan.with_suffix(".json").read_text())
    assert side["key"] == KEY.to_dict() and side["onnx_sha256"] == engine_build.file_sha256(onnx)

    for other in (
        EngineKey(**{**KEY.to_dict(), "trt_version": "10.4.0"}),
        EngineKey(**{**KEY.to_dict(), "gpu": "NVIDIA H100"}),
        EngineKey(**{**KEY.to_dict(), "max_batch": 4}),
    ):
        assert cached_engine(onnx, other) is None  # different file name: never built

    # Same file name, but the sidecar was written for another key (e.g. a hand-copied plan).
    side["key"]["compute_capability"] = "8.6"
    plan.with_suffix(".json").write_text(json.dumps(side))
    assert cached_engine(onnx, KEY) is None

    onnx2, _ = _fake_build(tmp_path / "b")
    onnx2.write_bytes(b"onnx v2")  # re-exported: the plan is stale
    assert cached_engine(onnx2, KEY) is None


def test_cached_engine_refuses_missing_or_broken_sidecar(tmp_path):
    onnx, plan = _fake_build(tmp_path)
    plan.with_suffix(".json").write_text("{not json")
    assert cached_engine(onnx, KEY) is None
    plan.with_suffix(".json").unlink()
    assert cached_engine(onnx, KEY) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("fp8", 8), "fp32, fp16, int8"),
        (("fp16", 0), "max_batch"),
        (("fp16", 2.5), "max_batch"),
        (("fp16", True), "max_batch"),
        (("fp16", 8, 0), "workspace_mb"),
    ],
)
def test_build_arguments_are_validated(args, message):
    with pytest.raises(EngineBuildError, match=message):
        validate_build_args(*args)


def test_valid_build_arguments_pass():
    validate_build_args("int8", 1, 64)
    validate_build_args("fp32", 16)


def test_device_strings():
    assert cuda_device_index("cuda", "tensorrt") == 0
    assert cuda_device_index("cuda:1", "tensorrt") == 1
    for bad in ("cpu", "cuda:x", "gpu0"):
        with pytest.raises(BackendError, match="cannot run the tensorrt backend; use cuda or cuda:N"):
            cuda_device_index(bad, "tensorrt")


def test_missing_tensorrt_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(BackendError, match=r"pip install 'edge-agent\[tensorrt-cu12\]'.*JetPack"):
        TensorRTBackend.load(tmp_path / "m", device="cuda:0")
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(EngineBuildError, match=r"pip install 'edge-agent\[tensorrt-cu12\]'"):
        engine_build.build_engine(tmp_path / "m.onnx", precision="fp32")


def test_build_refuses_missing_onnx_before_touching_tensorrt(tmp_path):
    with pytest.raises(EngineBuildError, match="no such ONNX file"):
        engine_build.build_engine(tmp_path / "absent.onnx")


def test_onnx_files_sidecars(tmp_path):
    with pytest.raises(BackendError, match="missing"):
        onnx_files(tmp_path / "m")
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(BackendError, match="ONNX sidecar"):
        onnx_files(tmp_path / "m.pt")
    (tmp_path / "m.onnx.json").write_text(json.dumps({"k": K, "model_sha256": "a" * 64}))
    onnx, onnx_side, side = onnx_files(tmp_path / "m.pt")
    assert onnx == tmp_path / "m.onnx" and side is onnx_side
    (tmp_path / "m.json").write_text(json.dumps({"sha256": "a" * 64, "recalibration": {"scale": 1.5}}))
    assert onnx_files(tmp_path / "m")[2]["recalibration"] == {"scale": 1.5}
    (tmp_path / "m.json").write_text(json.dumps({"sha256": "b" * 64}))
    with pytest.raises(BackendError, match="re-export the ONNX"):
        onnx_files(tmp_path / "m")
    # int8 on TensorRT builds the Q/DQ graph of `edge-agent calibrate`, described by the same m.json.
    with pytest.raises(BackendError, match=r"m\.qdq\.onnx is missing; run `edge-agent calibrate`"):
        onnx_files(tmp_path / "m.pt", ".qdq")
    (tmp_path / "m.qdq.onnx").write_bytes(b"onnx")
    (tmp_path / "m.qdq.onnx.json").write_text(json.dumps({"k": K, "model_sha256": "b" * 64}))
    onnx, _onnx_side, side = onnx_files(tmp_path / "m.pt", ".qdq")
    assert onnx == tmp_path / "m.qdq.onnx" and side == {"sha256": "b" * 64}


# ----------------------------------------------------------------------------------------- GPU


def _tiny_onnx(path: Path, seed: int = 0) -> Path:
    """A graph with the fused model's interface: samples = 40 + 5 noise + (demo*mask) W + 10 mean(video/255).

    The video mean is taken over (H, W) then frames, so no fp16 sum exceeds 112*112.
    """
    onnx = pytest.importorskip("onnx", reason="the onnx package builds the test graph")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(0, 0.05, (4, K)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array([1 / 255], np.float32), "inv255"),
        numpy_helper.from_array(np.array([5.0], np.float32), "five"),
        numpy_helper.from_array(np.array([10.0], np.float32), "ten"),
        numpy_helper.from_array(np.array([40.0], np.float32), "forty"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Cast", ["video"], ["vf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["vf", "inv255"], ["vs"]),
        helper.make_node("ReduceMean", ["vs"], ["vhw"], axes=[2, 3], keepdims=0),
        helper.make_node("ReduceMean", ["vhw"], ["vm"], axes=[1], keepdims=0),
        helper.make_node("Unsqueeze", ["vm", "axis1"], ["vm1"]),
        helper.make_node("Mul", ["demo", "demo_mask"], ["dm"]),
        helper.make_node("MatMul", ["dm", "w"], ["dw"]),
        helper.make_node("Mul", ["noise", "five"], ["n5"]),
        helper.make_node("Mul", ["vm1", "ten"], ["v10"]),
        helper.make_node("Add", ["n5", "dw"], ["a"]),
        helper.make_node("Add", ["a", "v10"], ["b"]),
        helper.make_node("Add", ["b", "forty"], ["samples"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mcsdr",
        [
            helper.make_tensor_value_info("video", TensorProto.UINT8, ["B", 32, 112, 112]),
            helper.make_tensor_value_info("demo", TensorProto.FLOAT, ["B", 4]),
            helper.make_tensor_value_info("demo_mask", TensorProto.FLOAT, ["B", 4]),
            helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["B", K]),
        ],
        [helper.make_tensor_value_info("samples", TensorProto.FLOAT, ["B", K])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    sidecar = {
        "inputs": [
            {"name": "video", "shape": ["B", 32, 112, 112], "dtype": "uint8"},
            {"name": "demo", "shape": ["B", 4], "dtype": "float32"},
            {"name": "demo_mask", "shape": ["B", 4], "dtype": "float32"},
            {"name": "noise", "shape": ["B", K], "dtype": "float32"},
        ],
        "outputs": [{"name": "samples", "shape": ["B", K], "dtype": "float32"}],
        "k": K,
        "opset": 13,
        "max_batch": 8,
    }
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar))
    return path


def _inputs(b: int, k: int = K, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "video": rng.integers(0, 256, (b, 32, 112, 112), dtype=np.uint8),
        "demo": np.tile(np.array([[60, 1, 75, 170]], np.float32), (b, 1))
        + rng.normal(0, 5, (b, 4)).astype(np.float32),
        "demo_mask": rng.random((b, 4)) < 0.7,
        "noise": rng.standard_normal((b, k)).astype(np.float32),
    }


def _onnxruntime(onnx: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the reference")
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    feed = {**inputs, "demo_mask": inputs["demo_mask"].astype(np.float32)}
    return session.run(["samples"], feed)[0]


def _posterior(backend: TensorRTBackend, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The engine's posterior samples (B, K); its OOD scores are checked in their own test."""
    return backend.posterior(inputs["video"], inputs["demo"], inputs["demo_mask"], inputs["noise"]).samples


def _trt_major() -> int:
    import tensorrt

    return engine_build.trt_major(tensorrt.__version__)


@gpu
def test_tiny_fp32_engine_matches_onnxruntime(tmp_path):
    onnx = _tiny_onnx(tmp_path / "tiny.onnx")
    backend = TensorRTBackend.load(tmp_path / "tiny", device="cuda:0", precision="fp32")
    try:
        for b in (1, 3, 8, 11):  # 11 > max batch 8: two executions of 8, the second padded
            inputs = _inputs(b, seed=b)
            got = _posterior(backend, inputs)
            assert got.shape == (b, K) and got.dtype == np.float64
            np.testing.assert_allclose(got, _onnxruntime(onnx, inputs), rtol=1e-3)
            # A graph without the ood_score output (exported before the score): unknown, NaN.
            ood = backend.posterior(inputs["video"], inputs["demo"], inputs["demo_mask"], inputs["noise"])[1]
            assert ood.shape == (b,) and np.isnan(ood).all()
    finally:
        backend.close()
        backend.close()  # idempotent


@gpu
def test_tiny_fp16_engine(tmp_path):
    onnx = _tiny_onnx(tmp_path / "tiny.onnx")
    if _trt_major() >= 11:
        # Strongly typed only: an fp32 ONNX cannot become an fp16 engine, and the error says how to fix it.
        with pytest.raises(EngineBuildError, match=r"modelopt\.onnx\.autocast"):
            engine_build.build_engine(onnx, precision="fp16")
        return
    backend = TensorRTBackend.load(tmp_path / "tiny", device="cuda:0", precision="fp16")
    try:
        inputs = _inputs(4)
        np.testing.assert_allclose(_posterior(backend, inputs), _onnxruntime(onnx, inputs), atol=0.5)
    finally:
        backend.close()


@gpu
def test_engine_cache_key_and_reuse(tmp_path):
    onnx = _tiny_onnx(tmp_path / "tiny.onnx")
    plan = engine_build.build_engine(onnx, precision="fp32", max_batch=4)
    key = engine_build.engine_key("fp32", 4)
    assert plan == engine_paths(onnx, key)[0] and plan.parent == tmp_path / "cache"
    meta = json.loads(plan.with_suffix(".json").read_text())
    assert meta["key"] == key.to_dict()
    assert [t["name"] for t in meta["inputs"]] == ["video", "demo", "demo_mask", "noise"]
    assert (tmp_path / "cache" / key.timing_cache_name()).is_file()

    built = plan.stat().st_mtime_ns
    assert engine_build.build_engine(onnx, precision="fp32", max_batch=4) == plan
    assert plan.stat().st_mtime_ns == built  # reused, not rebuilt

    _tiny_onnx(onnx, seed=2)  # re-exported with other weights: rebuilt
    assert engine_build.build_engine(onnx, precision="fp32", max_batch=4) == plan
    meta = json.loads(plan.with_suffix(".json").read_text())
    assert meta["onnx_sha256"] == engine_build.file_sha256(onnx)


@gpu
def test_cuda_graph_replay_equals_plain_enqueue(tmp_path):
    _tiny_onnx(tmp_path / "tiny.onnx")
    graphed = TensorRTBackend.load(tmp_path / "tiny", device="cuda:0", precision="fp32")
    plain = TensorRTBackend.load(tmp_path / "tiny", device="cuda:0", precision="fp32", cuda_graph=False)
    try:
        inputs = _inputs(3)
        reference = _posterior(plain, inputs)
        first = _posterior(graphed, inputs)  # plain enqueue after the shape change
        assert not graphed.graph_active
        second = _posterior(graphed, inputs)  # captured, then replayed
        assert graphed.graph_active
        other = _inputs(3, seed=7)  # new data through the same graph (fixed addresses)
        np.testing.assert_allclose(_posterior(graphed, other), _posterior(plain, other), rtol=1e-6)
        for got in (first, second):
            np.testing.assert_allclose(got, reference, rtol=1e-6)
        _posterior(graphed, _inputs(5))  # a new batch size drops the graph
        assert not graphed.graph_active
    finally:
        graphed.close()
        plain.close()


@gpu
def test_profiled_calls_split_their_device_time_over_chunks(tmp_path):
    _tiny_onnx(tmp_path / "tiny.onnx")
    backend = TensorRTBackend.load(tmp_path / "tiny", device="cuda:0", precision="fp32", max_batch=4)
    try:
        _posterior(backend, _inputs(2))
        assert backend.last_stages is None  # off by default
        backend.profile = True
        _posterior(backend, _inputs(2))
        one = backend.last_stages
        assert one is not None and min(one) >= 0 and one.compute_ms > 0
        _posterior(backend, _inputs(10))  # three chunks of 4: their times summed
        assert backend.last_stages.h2d_ms > one.h2d_ms
    finally:
        backend.close()


@gpu
def test_a_corrupt_timing_cache_is_replaced_and_the_plan_kept(tmp_path):
    onnx = _tiny_onnx(tmp_path / "tiny.onnx")
    key = engine_build.engine_key("fp32", 4)
    timing = tmp_path / "cache" / key.timing_cache_name()
    timing.parent.mkdir()
    timing.write_bytes(b"\x00not a timing cache" * 64)
    plan = engine_build.build_engine(onnx, precision="fp32", max_batch=4)
    assert plan.is_file() and plan.with_suffix(".json").is_file()
    assert timing.read_bytes()[:19] != b"\x00not a timing cache"  # replaced by the new build's


@gpu
def test_batches_over_max_batch_keep_one_shape_and_the_graph(tmp_path):
    onnx = _tiny_onnx(tmp_path / "tiny.onnx")
    backend = TensorRTBackend.load(tmp_path / "tiny", device="cuda:0", precision="fp32", max_batch=4)
    try:
        for _ in range(3):  # 10 windows: chunks of 4, 4 and 4 (2 padded), one shape throughout
            inputs = _inputs(10, seed=3)
            np.testing.assert_allclose(_posterior(backend, inputs), _onnxruntime(onnx, inputs), rtol=1e-3)
        assert backend.graph_active
        for b in (1, 4, 1, 4):  # alternating batch sizes: right answers, the graph rebuilt as needed
            inputs = _inputs(b, seed=b)
            np.testing.assert_allclose(_posterior(backend, inputs), _onnxruntime(onnx, inputs), rtol=1e-3)
    finally:
        backend.close()


@gpu
def test_a_truncated_plan_is_rebuilt_on_load(tmp_path):
    onnx = _tiny_onnx(tmp_path / "tiny.onnx")
    plan = engine_build.build_engine(onnx, precision="fp32", max_batch=4)
    size = plan.stat().st_size
    plan.write_bytes(plan.read_bytes()[: size // 2])  # cut short: a full disk, an interrupted copy
    backend = TensorRTBackend.load(tmp_path / "tiny", device="cuda:0", precision="fp32", max_batch=4)
    try:
        inputs = _inputs(2)
        np.testing.assert_allclose(_posterior(backend, inputs), _onnxruntime(onnx, inputs), rtol=1e-3)
        assert backend.plan == plan and plan.stat().st_size > size // 2  # rebuilt in place
    finally:
        backend.close()


@gpu
def test_the_int8_calibration_cache_round_trips_on_tensorrt_10(tmp_path):
    if _trt_major() >= 11:
        pytest.skip("TensorRT >= 11 has no INT8 calibrators: INT8 comes from the Q/DQ graph alone")
    onnx = _tiny_onnx(tmp_path / "tiny.onnx")
    cache = tmp_path / "calib.cache"
    batches = [
        {**_inputs(4, seed=s), "demo_mask": _inputs(4, seed=s)["demo_mask"].astype(np.float32)}
        for s in range(4)
    ]
    plan = engine_build.build_engine(
        onnx, precision="int8", max_batch=4, calibration_cache=cache, calibration_data=batches
    )
    written = cache.read_bytes()
    assert written  # the calibrator wrote its scales
    # Rebuilt from the cache alone (no batches): the calibrator reads it and writes it back unchanged.
    again = engine_build.build_engine(
        onnx, precision="int8", max_batch=4, calibration_cache=cache, force=True
    )
    assert again == plan and cache.read_bytes() == written
    backend = TensorRTBackend.load(
        tmp_path / "tiny", device="cuda:0", precision="int8", max_batch=4, calibration_cache=str(cache)
    )
    try:
        inputs = _inputs(3, seed=9)
        np.testing.assert_allclose(_posterior(backend, inputs), _onnxruntime(onnx, inputs), atol=1.0)
    finally:
        backend.close()


@gpu
def test_load_and_close_twenty_times_returns_the_device_memory(tmp_path):
    from cuda.bindings import runtime as cudart

    _tiny_onnx(tmp_path / "tiny.onnx")
    TensorRTBackend.load(tmp_path / "tiny", device="cuda:0", precision="fp32").close()  # builds the plan
    free_before = cudart.cudaMemGetInfo()[1]
    for _ in range(20):
        backend = TensorRTBackend.load(tmp_path / "tiny", device="cuda:0", precision="fp32")
        _posterior(backend, _inputs(2))
        _posterior(backend, _inputs(2))  # captured: the graph is freed too
        backend.close()
    assert cudart.cudaMemGetInfo()[1] >= free_before - (16 << 20)  # within 16 MiB of the baseline


@gpu
@pytest.mark.slow
@pytest.mark.skipif(not REAL_ONNX.is_file(), reason=f"{REAL_ONNX} has not been exported")
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 0.05), ("fp16", 0.5)])
def test_real_model_matches_onnxruntime(precision, tolerance):
    if precision == "fp16" and _trt_major() >= 11:
        pytest.skip("TensorRT >= 11 needs an FP16 (AutoCast) ONNX for an fp16 engine")
    k = int(json.loads(REAL_ONNX.with_name(REAL_ONNX.name + ".json").read_text())["k"])
    backend = TensorRTBackend.load(REAL_ONNX.with_suffix(""), device="cuda:0", precision=precision)
    try:
        inputs = _inputs(2, k=k)
        got = _posterior(backend, inputs)
        want = _onnxruntime(REAL_ONNX, inputs)
        # Posterior means (EF points); fp16 runs 10 unrolled DDIM steps in half precision.
        np.testing.assert_allclose(got.mean(axis=1), want.mean(axis=1), atol=tolerance)
    finally:
        backend.close()


@gpu
@pytest.mark.slow
@pytest.mark.skipif(not REAL_QDQ.is_file(), reason=f"{REAL_QDQ} has not been made (edge-agent calibrate)")
def test_real_qdq_int8_engine_stays_within_two_points_of_fp32():
    """INT8 from the Q/DQ graph (TensorRT 10 and 11 alike): the posterior means of the calibration
    windows move by less than 2 EF points on average, as the same graph does on ONNX Runtime."""
    k = int(json.loads(REAL_ONNX.with_name(REAL_ONNX.name + ".json").read_text())["k"])
    with np.load(WINDOWS) as z:
        inputs = {"video": z["video"][:8], "demo": z["demo"][:8], "demo_mask": z["demo_mask"][:8] > 0.5}
    inputs["noise"] = np.random.default_rng(0).standard_normal((8, k)).astype(np.float32)
    backend = TensorRTBackend.load(REAL_ONNX.with_suffix(""), device="cuda:0", precision="int8")
    try:
        assert backend.plan.name.startswith("mcsdr_default.qdq")  # the Q/DQ graph, not a calibrator
        shift = np.abs(
            _posterior(backend, inputs).mean(axis=1) - _onnxruntime(REAL_ONNX, inputs).mean(axis=1)
        )
        assert shift.mean() < 2.0, shift
    finally:
        backend.close()
