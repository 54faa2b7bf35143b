"""Export and inference backends: the ONNX graphs agree with torch, "auto" picks what can run,
and the ONNX Runtime path never imports torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_agent.core.artefacts import file_sha256
from edge_agent.inference import export as export_mod
from edge_agent.inference.backends import BackendError, load_backend
from edge_agent.inference.export import ExportError, ExportRequest, export
from edge_agent.live.worker import starting_noises
from edge_agent.sim.clips import synthetic_example
from edge_agent.tools.bench import graph_macs, posterior_speed, speed_table
from edge_agent.tools.timing import stats_ms, timings

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "engines" / "mcsdr_default.pt"


def _windows(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulated beats as the agent sends them, with some demographics missing."""
    examples = [synthetic_example(seed=21, index=i) for i in range(n)]
    mask = np.stack([e.demo_mask for e in examples])
    mask[0, :2] = False
    return np.stack([e.clip for e in examples]), np.stack([e.demographics for e in examples]), mask


def test_shipped_onnx_agrees_with_torch_within_005_ef_points() -> None:
    frames, demo, mask = _windows(3)
    noise = np.repeat(starting_noises(40, 0)[None], 3, axis=0)
    ort_backend = load_backend("onnxruntime", MODEL, threads=1)
    torch_backend = load_backend("torch", MODEL, threads=1)
    try:
        a, ood_a = ort_backend.posterior(frames, demo, mask, noise)
        b, ood_b = torch_backend.posterior(frames, demo, mask, noise)
    finally:
        ort_backend.close()
        torch_backend.close()
    assert a.shape == b.shape == (3, 40)
    assert np.abs(a.mean(1) - b.mean(1)).max() < 0.05 and np.abs(a - b).max() < 0.05
    # The shipped model carries a fitted out-of-distribution score: finite, the same on both.
    assert ood_a.shape == ood_b.shape == (3,) and np.isfinite(ood_a).all()
    np.testing.assert_allclose(ood_a, ood_b, rtol=1e-3, atol=1e-3)
    sidecar = json.loads((MODEL.parent / "mcsdr_default.onnx.json").read_text())
    assert sidecar["model_sha256"] == json.loads(MODEL.with_suffix(".json").read_text())["sha256"]
    assert sidecar["sha256"] == file_sha256(MODEL.with_suffix(".onnx")), "re-run `edge-agent export`"


def test_export_writes_the_fused_graph_its_parts_and_sidecars(tmp_path: Path) -> None:
    paths = export(ExportRequest(model=str(MODEL), out=str(tmp_path), k=8))
    assert paths["fused"] == tmp_path / "mcsdr_default.onnx"  # --out is a folder: named after the model
    assert sorted(paths) == ["encoder", "fused", "step"]
    fused = json.loads(Path(f"{paths['fused']}.json").read_text())
    assert [i["name"] for i in fused["inputs"]] == ["video", "demo", "demo_mask", "noise"]
    assert fused["inputs"][0] == {"name": "video", "shape": ["B", 32, 112, 112], "dtype": "uint8"}
    assert fused["outputs"] == [
        {"name": "samples", "shape": ["B", 8], "dtype": "float32"},
        {"name": "ood_score", "shape": ["B"], "dtype": "float32"},
    ]
    assert fused["k"] == 8 and fused["diffusion"]["num_inference_steps"] == 10 and fused["opset"] == 17
    assert fused["checked_max_abs_diff_ef"] < 0.05
    step = json.loads(Path(f"{paths['step']}.json").read_text())
    assert [i["name"] for i in step["inputs"]][:2] == ["y", "t"] and step["outputs"][0]["name"] == "eps"
    for p in paths.values():
        assert json.loads(Path(f"{p}.json").read_text())["sha256"] == file_sha256(p)
    # The unrolled sampler is lean: its ten timestep embeddings are constants (no Sin/Cos left to
    # run, in fp16 or otherwise) and it adds no shape arithmetic to the encoder's.
    ops = {
        name: Counter(n.op_type for n in onnx.load(paths[name]).graph.node) for name in ("fused", "encoder")
    }
    assert ops["fused"]["Sin"] == ops["fused"]["Cos"] == 0
    for shape_op in ("Shape", "ConstantOfShape", "Expand"):
        assert ops["fused"][shape_op] == ops["encoder"][shape_op], shape_op


def test_export_refuses_a_graph_that_disagrees_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(export_mod, "TOLERANCE_EF", -1.0)  # no graph can meet it: the check must fire
    with pytest.raises(ExportError, match="differs from the torch model"):
        export(ExportRequest(model=str(MODEL), out=str(tmp_path), k=4))
    assert list(tmp_path.iterdir()) == []


def test_auto_prefers_onnxruntime_and_falls_back_to_torch(tmp_path: Path) -> None:
    for suffix in (".pt", ".json"):
        shutil.copy(MODEL.with_suffix(suffix), tmp_path / f"m{suffix}")
    backend = load_backend("auto", tmp_path / "m.pt")
    assert backend.name == "torch"  # no exported graph next to this checkpoint
    backend.close()
    for name in ("mcsdr_default.onnx", "mcsdr_default.onnx.json"):
        shutil.copy(MODEL.parent / name, tmp_path / name.replace("mcsdr_default", "m"))
    backend = load_backend("auto", tmp_path / "m.pt")
    assert backend.name == "onnxruntime"
    backend.close()


def test_worker_on_onnxruntime_never_imports_torch(tmp_path: Path) -> None:
    script = f"""
import sys
import numpy as np
from edge_agent.protocol import wire
from edge_agent.protocol.transport import TransportConfig
from edge_agent.live.worker import Worker, WorkerConfig
worker = Worker(WorkerConfig(backend="onnxruntime", model={str(MODEL)!r}), TransportConfig(linger_ms=0),
                "ipc://{tmp_path}/workers")
worker.start()
window = wire.Window(stream="a", seq=0, frame_seq=(0, 49), t=(0.0, 1.0), t_sent=1.0, fps=50.0, hr_bpm=60.0,
                     beat="ed_ed", frames=np.full((32, 112, 112), 40, np.uint8), demo={{"age_years": 60.0}})
samples, ood_score = worker.infer(window)
worker.stop()
assert samples.shape == (40,) and 0 < samples.min() <= samples.max() < 100
assert ood_score > 1.0, ood_score  # a flat grey window is nothing like an echo beat
print("torch" in sys.modules, worker.backend.name)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "onnxruntime"]


def test_bench_statistics_and_a_quick_side_by_side_run() -> None:
    stats = stats_ms(np.array([0.001, 0.002, 0.003, 0.004]))
    assert stats["n"] == 4 and stats["min"] == pytest.approx(1.0) and stats["max"] == pytest.approx(4.0)
    assert stats["p50"] == pytest.approx(2.5) and stats["mean"] == pytest.approx(2.5)
    calls = []
    samples = timings(lambda: calls.append(1), min_seconds=0.0, min_samples=7, warmup=2)
    assert samples.size == 7 and len(calls) == 9
    result = posterior_speed(MODEL, min_seconds=0.0, min_samples=7)  # medians of 7: robust to a busy CPU
    assert set(result["variants"]) == {"encoder", "default", "torch", "naive"}
    # Real measurements, so only what holds on any machine: ten encoder passes cost more than one.
    assert result["naive_over_default"] > 1.0 and result["default_over_encoder"] > 1.0
    # The sampler adds arithmetic to the encoder's, and both graphs ran at a positive rate.
    assert result["macs"]["default"] > result["macs"]["encoder"] > 0
    assert all(r > 0 for r in result["gflops"].values())
    table = speed_table(result)
    assert "| naive |" in table and "MMAC" in table


def test_graph_macs_counts_convolutions_and_matrix_products_as_run(tmp_path: Path) -> None:
    """A graph with a known count: Conv 3×(2·3·3) per output pixel over 5×5, a batched MatMul
    (4×8)·(8×16) and a transB Gemm (4×8)·(16×8)ᵀ, plus a Relu that computes nothing counted."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MatMul", ["a", "m"], ["p"]),
        helper.make_node("Gemm", ["g", "gw"], ["q"], transB=1),
    ]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "macs",
        [
            helper.make_tensor_value_info("x", f32, [1, 2, 5, 5]),
            helper.make_tensor_value_info("a", f32, [1, 4, 8]),
            helper.make_tensor_value_info("g", f32, [4, 8]),
        ],
        [helper.make_tensor_value_info(n, f32, None) for n in ("r", "p", "q")],
        [init("w", 3, 2, 3, 3), init("m", 8, 16), init("gw", 16, 8)],
    )
    path = tmp_path / "macs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    feeds = {
        "x": rng.standard_normal((1, 2, 5, 5)).astype(np.float32),
        "a": rng.standard_normal((1, 4, 8)).astype(np.float32),
        "g": rng.standard_normal((4, 8)).astype(np.float32),
    }
    assert graph_macs(path, feeds) == 3 * 25 * 18 + 4 * 16 * 8 + 4 * 16 * 8
    assert not list(tmp_path.glob("*.json")) and not list(Path.cwd().glob("macs*.json"))


def test_tensorrt_backend_module_does_not_import_torch() -> None:
    """The TensorRT path cannot run here (no GPU), but its modules must stay torch-free too."""
    script = (
        "import sys\n"
        "import edge_agent.inference.backends.tensorrt_backend, edge_agent.inference.engine_build\n"
        "import edge_agent.live.worker\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"]


def test_bench_quick_run_writes_every_scenario_report_and_plots(tmp_path: Path) -> None:
    from edge_agent.tools.bench import BenchConfig, plot_report, report_markdown, run_bench

    cfg = BenchConfig(
        min_seconds=0.0,
        min_samples=3,
        streams=(1,),
        stream_seconds=8.0,
        gating=("ecg",),
        device_batches=(1, 2),
    )
    result = run_bench(cfg)
    assert {"onnxruntime", "torch", "naive"} <= set(result["single_stream"])
    assert all(s["n"] >= 3 and len(s["samples_ms"]) == s["n"] for s in result["single_stream"].values())
    assert result["offline"]["onnxruntime"]["windows_per_s"] > 0 and "naive" not in result["offline"]
    assert result["ratios_to_naive"]["onnxruntime"] > 1.0  # ten encoder passes cost more than one
    (run,) = result["live"]
    assert run["n_streams"] == 1 and run["n_estimates"] >= 2 and run["windows_dropped"] == 0
    assert run["gating"] == "ecg" and run["beats_missed"] == 0
    # ECG gating: the window closes on the R-wave frame, so the two latency origins coincide.
    assert run["latency_ms"]["p50"] == pytest.approx(run["latency_from_ready_ms"]["p50"])
    targets = {t["target"]: t for t in result["targets"]}
    assert "e2e p99 ≤ 50 ms, 1 stream (ecg gating)" in targets
    speed = targets["default backend (onnxruntime) ≥ 8× faster than the naive loop"]
    assert speed["measured"] == f"{result['ratios_to_naive']['onnxruntime']:.1f}×"
    assert run["stages_ms"]["infer"]["n"] == run["n_estimates"] and run["leftovers"]["processes"] == []
    assert result["environment"]["packages"]["onnxruntime"]["version"]
    # The capture stage: a 112×112 frame passes untouched, a 480×640 colour frame is cropped and resized.
    cap = result["capture"]
    assert cap["112x112 gray"]["n"] >= 3 and cap["480x640 RGB"]["p50"] > cap["112x112 gray"]["p50"]
    # Every backend and precision on its own device: the CPU ones run, the rest say why not.
    device = result["device"]
    assert device["onnxruntime-fp32"]["batches"][2]["windows_per_s"] > 0
    assert "compute_ms" not in device["onnxruntime-int8"]["batches"][1]  # no device split on the CPU
    assert all(
        "skipped" in device[k] or device[k]["device"] == "cuda:0" for k in ("cuda-fp16", "tensorrt-fp16")
    )
    text = report_markdown(result)
    assert "| onnxruntime-fp32 | cpu | 2 |" in text
    assert "## Single stream" in text and "| naive |" in text and "## Live" in text and "## Targets" in text
    assert "| 480x640 RGB |" in text
    # The ring's CRC, measured apart and judged against the capture stage.
    crc = targets["ring CRC ≤ 5 % of the capture stage (480×640 RGB frame)"]
    assert cap["ring CRC"]["n"] >= 3 and crc["measured"].endswith("µs)")
    paths = plot_report(result, tmp_path)
    assert [p.name for p in paths] == ["single_stream_cdf.png", "live_cdf.png", "stages.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    json.dumps(result, default=str)  # the JSON the CLI writes


def test_bench_profiles_parse_and_unknown_keys_are_errors(tmp_path: Path) -> None:
    from edge_agent.config import ConfigError, load_yaml, parse_with_overrides
    from edge_agent.tools.bench import QUICK_OVERRIDES, bench_config

    cfg, overrides = bench_config(load_yaml(ROOT / "configs" / "bench_jetson.yaml"), "bench_jetson.yaml")
    assert cfg.streams == (1, 4) and cfg.fps == 30.0 and cfg.tegrastats_interval_ms == 200
    assert 'worker.backend="tensorrt"' in overrides and 'worker.device="cuda"' in overrides
    gpu, overrides = bench_config(load_yaml(ROOT / "configs" / "bench_gpu.yaml"), "bench_gpu.yaml")
    assert gpu.device_batches == (1, 4, 64) and gpu.gpu == "cuda:0" and 'worker.backend="cuda"' in overrides
    # --quick is overrides put before the command line's: an explicit --set of the same key wins.
    quick, _ = parse_with_overrides(bench_config, {}, [*QUICK_OVERRIDES, "bench.ward_seconds=30"], "defaults")
    assert quick.min_seconds == 0.5 and quick.stream_seconds == 10.0 and quick.ward_seconds == 30.0
    for bad, match in (
        ({"bench": {"stream_secs": 3}}, r"bench: unknown key\(s\) \['stream_secs'\]"),
        ({"worker": {"dla": 0}}, r"worker: unknown key\(s\) \['dla'\]"),
        ({"telemetry": {"tegrastats": True}}, r"telemetry: unknown key"),
        ({"benchmark": {}}, "unknown section"),
        ({"bench": {"gating": ["ekg"]}}, r"bench.gating: \['ekg'\]"),
    ):
        with pytest.raises(ConfigError, match=match):
            bench_config(bad, "x.yaml")


def test_trtexec_line_names_the_plan_and_every_input_shape() -> None:
    from edge_agent.tools.device_latency import trtexec_command

    line = trtexec_command("/cache/mcsdr.plan", 4, 40)
    assert line.startswith("trtexec --loadEngine=/cache/mcsdr.plan ")
    assert "--shapes=video:4x32x112x112,demo:4x4,demo_mask:4x4,noise:4x40 " in line
    assert "--useCudaGraph" in line


def test_precision_selects_the_int8_model_or_is_refused() -> None:
    frames, demo, mask = _windows(1)
    noise = starting_noises(40, 0)[None]
    int8 = load_backend("onnxruntime", MODEL, threads=1, precision="int8")
    fp32 = load_backend("auto", MODEL, threads=1)
    try:
        assert int8.sidecar["quantization"] and "quantization" not in fp32.sidecar
        # The calibrated model: close to fp32, but not the same graph.
        a, b = (
            int8.posterior(frames, demo, mask, noise).samples,
            fp32.posterior(frames, demo, mask, noise).samples,
        )
        assert 0 < abs(a.mean() - b.mean()) < 2.0
    finally:
        int8.close()
        fp32.close()
    with pytest.raises(BackendError, match="torch backend runs fp32 only"):
        load_backend("torch", MODEL, precision="int8")
    with pytest.raises(BackendError, match="onnxruntime runs fp32 or int8"):
        load_backend("onnxruntime", MODEL, precision="fp16")
    assert load_backend("auto", MODEL, precision="int8").name == "onnxruntime"


def test_engine_options_reach_tensorrt_and_the_others_ignore_them() -> None:
    """worker.max_batch / cuda_graph / calibration_cache are TensorRT's; the signature takes them
    (a CPU device is then refused with the fix), and ONNX Runtime loads as if they were not there."""
    engine = {"max_batch": 16, "cuda_graph": False, "calibration_cache": "engines/cache/calib.cache"}
    with pytest.raises(BackendError, match="cannot run the tensorrt backend; use cuda"):
        load_backend("tensorrt", MODEL, device="cpu", engine=engine)
    frames, demo, mask = _windows(1)
    noise = starting_noises(40, 0)[None]
    with_options = load_backend("onnxruntime", MODEL, threads=1, engine=engine)
    plain = load_backend("onnxruntime", MODEL, threads=1)
    try:
        got, want = (b.posterior(frames, demo, mask, noise) for b in (with_options, plain))
        np.testing.assert_array_equal(got.samples, want.samples)  # the same session, the same numbers
        np.testing.assert_array_equal(got.ood_score, want.ood_score)
    finally:
        with_options.close()
        plain.close()
