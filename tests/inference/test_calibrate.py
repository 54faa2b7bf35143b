"""Calibration: windows drawn through the live windowing code, stored with a manifest and reused;
static INT8 graphs of the shipped fused model that run in ONNX Runtime and agree with fp32."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from edge_agent.core.artefacts import file_sha256
from edge_agent.inference import calibrate
from edge_agent.inference.calibrate import (
    CPU_INT8,
    TRT_QDQ,
    CalibrationError,
    Windows,
    calibration_set,
    quantize,
    tensorrt_calibration_cache,
)
from edge_agent.live.sources import open_source
from edge_agent.live.worker import starting_noises

MODEL = Path(__file__).resolve().parents[2] / "engines" / "mcsdr_default.onnx"


def _recording(path: Path, seconds: float = 6.0, fps: float = 50.0) -> Path:
    """A simulator feed written as an MJPG AVI: a "recording" for the file path of the drawer."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (112, 112), isColor=False)
    with open_source(f"synthetic://?seed=77&quality=good&fps={fps:g}") as src:
        for _ in range(round(seconds * fps)):
            writer.write(src.read().pixels)
    writer.release()
    return path


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> tuple[Path, Windows, dict, Path]:
    out = tmp_path_factory.mktemp("calibration")
    rec = _recording(out.parent / "rec.avi")
    windows, manifest = calibration_set(out, n=3, recordings=[str(rec)])
    return out, windows, manifest, rec


def test_windows_come_from_every_source_with_the_live_shapes(drawn) -> None:
    _out, w, manifest, rec = drawn
    assert w.video.shape[1:] == (32, 112, 112) and w.video.dtype == np.uint8
    assert w.demo.shape == w.demo_mask.shape == (len(w), 4) and w.demo_mask.dtype == np.float32
    assert set(np.unique(w.demo_mask)) <= {0.0, 1.0}
    # One simulator feed per quality level (1 window each), then the recording (up to n = 3).
    uris = [s["uri"] for s in manifest["sources"]]
    assert [u.split("quality=")[1].split("&")[0] for u in uris[:3]] == ["good", "medium", "poor"]
    assert uris[3] == str(rec)
    assert [s["windows"] for s in manifest["sources"][:3]] == [1, 1, 1]
    assert 1 <= manifest["sources"][3]["windows"] <= 3
    assert set(w.how) <= {"ed_ed", "fixed", "r_wave"}
    assert not w.demo_mask[w.source == 3].any()  # a plain video file carries no demographics
    assert w.demo_mask[w.source < 3].any(axis=1).all()  # the simulator's patients do


def test_manifest_records_the_request_hash_and_the_npz_hash(drawn) -> None:
    out, w, manifest, rec = drawn
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["windows"]["sha256"] == file_sha256(out / "windows.npz")
    assert manifest["windows"]["n"] == len(w) == sum(manifest["windows"]["by_beat_rule"].values())
    assert manifest["seeds"] == [1000, 1001, 1002] and 3 not in manifest["seeds"]  # never the test seed
    assert manifest["recordings"][0]["sha256"] == file_sha256(rec)
    assert manifest["beat_rule"]["cycles"]["hysteresis"] > 0 and manifest["code_version"]["edge_agent"]
    assert len(manifest["request_sha256"]) == 64 and manifest["created"]


def test_a_stored_set_is_reused_without_drawing_and_redrawn_when_altered(drawn, monkeypatch) -> None:
    out, w, manifest, rec = drawn

    def no_drawing(*_args, **_kwargs):
        raise AssertionError("the stored set should have been reused")

    monkeypatch.setattr(calibrate, "draw_windows", no_drawing)
    again, manifest2 = calibration_set(out, n=3, recordings=[str(rec)])
    assert manifest2 == manifest and np.array_equal(again.video, w.video)
    with pytest.raises(AssertionError, match="reused"):  # another request draws again
        calibration_set(out, n=4, recordings=[str(rec)])
    with pytest.raises(CalibrationError, match="no such file"):
        calibration_set(out, n=3, recordings=[str(out / "missing.avi")])


@pytest.fixture(scope="module")
def quantized(drawn, tmp_path_factory) -> dict[str, Path]:
    _out, w, manifest, _rec = drawn
    dest = tmp_path_factory.mktemp("int8")
    sha = manifest["windows"]["sha256"]
    return {
        spec.suffix: quantize(MODEL, w, sha, spec, out=dest / f"m.{spec.suffix}.onnx")
        for spec in (CPU_INT8, TRT_QDQ)
    }


def test_int8_graphs_run_and_agree_with_fp32_on_the_calibration_windows(drawn, quantized) -> None:
    import onnxruntime as ort

    _out, w, _manifest, _rec = drawn
    noise = np.broadcast_to(starting_noises(40, 0), (len(w), 40)).copy()
    feeds = {"video": w.video, "demo": w.demo, "demo_mask": w.demo_mask, "noise": noise}
    run = {
        name: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        for name, p in {"fp32": MODEL, **quantized}.items()
    }
    for name in quantized:
        assert run[name].shape == run["fp32"].shape and np.isfinite(run[name]).all()
        # Posterior means within 4 EF points: the shipped model's INT8 graphs moved them by 0.84 / 1.12
        # on average and 2.7 / 3.3 at most (int8 / qdq, engines/mcsdr_default.int8.eval.json, 200 beats).
        assert np.abs(run[name].mean(1) - run["fp32"].mean(1)).max() < 4.0, name


def test_qdq_graph_is_symmetric_int8_and_keeps_the_denoiser_float(quantized) -> None:
    graph = onnx.load(str(quantized["qdq"])).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # TensorRT's form
    side = json.loads(Path(f"{quantized['qdq']}.json").read_text())
    assert side["quantization"]["quantized_nodes"]["Conv"] == 9  # all but the 2-channel stem
    assert side["k"] == 40 and side["recalibration"]["scale"] > 0  # the worker's recalibration travels
    # Nothing downstream of the noise input is quantised: the DDIM steps' MatMuls stay float.
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert not [
        n.name for n in graph.node if n.op_type == "MatMul" and "blocks" in n.name and dq & set(n.input)
    ]
    # The out-of-distribution score's own MatMul (the precision matrix) stays float too.
    feeds_samples = calibrate._ancestors(graph, "samples")
    ood_only = [n for n in graph.node if n.op_type == "MatMul" and n.name not in feeds_samples]
    assert ood_only and not [n.name for n in ood_only if dq & set(n.input[1:])]


def test_simulator_sources_render_the_asked_generation() -> None:
    assert all("gen=" not in uri for uri, _ in calibrate.simulator_sources(4))
    sources = calibrate.simulator_sources(4, generation=2)
    assert [count for _, count in sources] == [2, 1, 1] and all(uri.endswith("&gen=2") for uri, _ in sources)


def test_a_quantised_model_is_reused_when_nothing_changed(drawn, quantized) -> None:
    _out, w, manifest, _rec = drawn
    path = quantized["int8"]
    before = path.stat().st_mtime_ns
    assert quantize(MODEL, w, manifest["windows"]["sha256"], CPU_INT8, out=path) == path
    assert path.stat().st_mtime_ns == before


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_cache_says_it_needs_a_tensorrt_machine(drawn, tmp_path) -> None:
    _out, w, manifest, _rec = drawn
    with pytest.raises(CalibrationError, match=r"TensorRT 10\.x and an NVIDIA GPU.*edge-agent calibrate"):
        tensorrt_calibration_cache(MODEL, w, manifest["windows"]["sha256"], tmp_path)


def test_a_retrained_signal_net_makes_the_calibration_set_stale(tmp_path: Path) -> None:
    """The signal net decides where beats are cut, so its hash is part of the request: the shipped
    set was drawn with the shipped net (its manifest says so), and another net asks for a new set."""
    from edge_agent.live.cycles import SIGNAL_WEIGHTS, CycleConfig

    shipped = calibrate.calibration_request(12, [], CycleConfig(), 30, 2)
    assert shipped["beat_rule"]["signal_net_sha256"] == file_sha256(SIGNAL_WEIGHTS)
    manifest = json.loads((Path(__file__).resolve().parents[2] / "calibration" / "manifest.json").read_text())
    assert manifest["beat_rule"]["signal_net_sha256"] == file_sha256(SIGNAL_WEIGHTS)
    with np.load(SIGNAL_WEIGHTS) as z:
        retrained = {k: z[k] + (0.01 if k == "b0" else 0.0) for k in z.files}
    np.savez(tmp_path / "net.npz", **retrained)
    other = calibrate.calibration_request(12, [], CycleConfig(weights=str(tmp_path / "net.npz")), 30, 2)
    assert other["beat_rule"]["signal_net_sha256"] != shipped["beat_rule"]["signal_net_sha256"]
