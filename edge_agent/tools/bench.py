"""Posterior speed, backends side by side: what one window's K = 40 posterior costs on this machine.

Measured in one run, one thread, one window at a time (B = 1), each variant warmed up and then
timed for at least ``min_seconds`` and ``min_samples`` calls:

* ``encoder``: the encoder graph alone (ONNX Runtime) — the floor: no sampler can cost less;
* ``default``: the fused posterior graph (ONNX Runtime: encoder once, 10 DDIM steps unrolled);
* ``torch``: the torch module, encoder once and the K trajectories batched;
* ``naive``: the paper-style loop in torch — the whole model, video encoder included, called at
  every DDIM step.

Absolute times only mean something on the machine that produced them; the ratios, measured in the
same run, are the figures to compare (``default / encoder`` ≤ 1.5 and ``naive / default`` ≥ 8 are
the targets on a 2-core CPU). Next to them, the arithmetic each ONNX graph did (:func:`graph_macs`,
multiply-accumulates of its convolutions and matrix products as ONNX Runtime ran them) and the rate
it ran at: where both run at one rate, ``default / encoder`` is the ratio of their MACs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge_agent.core.shipped import resolve
from edge_agent.inference.export import random_inputs
from edge_agent.tools.timing import stats_ms, timings

log = logging.getLogger(__name__)

VARIANTS = ("encoder", "default", "torch", "naive")
GRAPHS = {"encoder": ".encoder.onnx", "default": ".onnx"}  # the ONNX graphs among them, by file suffix
GATINGS = ("ecg", "image")


def posterior_speed(
    model: str | Path = "engines/mcsdr_default.pt",
    min_seconds: float = 3.0,
    min_samples: int = 20,
    threads: int = 1,
) -> dict[str, Any]:
    """Time the four variants (module docstring) on one random window, with the K of the exported
    graph; returns per-variant stats (ms) and the ratios ``default_over_encoder`` and
    ``naive_over_default`` (medians)."""
    import onnxruntime as ort
    import torch

    from edge_agent.model.artefact import load_model

    torch.set_num_threads(threads)
    pt = Path(model).with_suffix(".pt")
    net, _side = load_model(pt)
    k = int(json.loads(Path(f"{pt.with_suffix('.onnx')}.json").read_text())["k"])
    feeds = random_inputs(1, k, seed=0)
    video, demo, mask, noise = (torch.from_numpy(feeds[n]) for n in ("video", "demo", "demo_mask", "noise"))
    known = mask > 0.5
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1

    def session(suffix: str) -> ort.InferenceSession:
        return ort.InferenceSession(str(pt.with_suffix(suffix)), options, providers=["CPUExecutionProvider"])

    fused, encoder = session(GRAPHS["default"]), session(GRAPHS["encoder"])
    enc_feeds = {n: feeds[n] for n in ("video", "demo", "demo_mask")}
    naive_loop = _naive_loop(net)
    mask_np = feeds["demo_mask"] > 0.5

    @torch.inference_mode()
    def batched() -> torch.Tensor:
        return net.sample(video, demo, known, noise)

    calls = {
        "encoder": lambda: encoder.run(None, enc_feeds),
        "default": lambda: fused.run(None, feeds),
        "torch": batched,
        "naive": lambda: naive_loop(feeds["video"], feeds["demo"], mask_np, feeds["noise"]),
    }
    results = {name: stats_ms(timings(fn, min_seconds, min_samples)) for name, fn in calls.items()}
    p50 = {name: r["p50"] for name, r in results.items()}
    macs = {name: graph_macs(pt.with_suffix(suffix), feeds) for name, suffix in GRAPHS.items()}
    return {
        "macs": macs,
        "gflops": {name: 2e-6 * m / p50[name] for name, m in macs.items()},
        "k": k,
        "threads": threads,
        "min_seconds": min_seconds,
        "min_samples": min_samples,
        "variants": results,
        "default_over_encoder": p50["default"] / p50["encoder"],
        "naive_over_default": p50["naive"] / p50["default"],
    }


MAC_OPS = ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm")  # float graphs


def graph_macs(session_path: str | Path, feeds: dict[str, np.ndarray]) -> int:
    """Multiply-accumulates one run of an ONNX graph does in its convolutions and matrix products,
    counted from the shapes ONNX Runtime's profiler reports for each node it ran: a matrix product's
    output elements × its inner dimension, a convolution's output elements × its weight's fan-in.
    The session fuses but does not change layouts (the NCHWc layout pads channels to its block and
    would count the padding). Elementwise ops, normalisations and softmax are not counted (they move
    memory more than they compute)."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "macs")
        session = ort.InferenceSession(str(session_path), options, providers=["CPUExecutionProvider"])
        session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
        events = json.loads(Path(session.end_profiling()).read_text())
    total = 0
    for e in events:
        args = e.get("args", {})
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if args.get("op_name") not in MAC_OPS:
            continue
        shapes = [next(iter(d.values())) for d in args["input_type_shape"]]
        out = int(np.prod(next(iter(args["output_type_shape"][0].values()))))
        conv = "Conv" in args["op_name"]
        # Conv: weight (C_out, C_in/groups, *kernel); a matrix product: A's last dim (Gemm's transA
        # is not used by our graphs' exporter: torch emits (M, K) @ (K, N) or transB).
        total += out * int(np.prod(shapes[1][1:]) if conv else shapes[0][-1])
    return total


def speed_table(result: dict[str, Any]) -> str:
    """Markdown table of :func:`posterior_speed`'s result."""
    rows = [
        "| variant | p50 ms | p90 ms | p99 ms | n | × default |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = result["variants"]["default"]["p50"]
    for name in VARIANTS:
        r = result["variants"][name]
        cells = (f"{r[q]:.1f}" for q in ("p50", "p90", "p99"))
        rows.append(f"| {name} | {' | '.join(cells)} | {r['n']} | {r['p50'] / base:.2f} |")
    rows.append("")
    rows.append(
        f"default / encoder = {result['default_over_encoder']:.2f} (target ≤ 1.5); "
        f"naive / default = {result['naive_over_default']:.1f} (target ≥ 8); K = {result['k']}, "
        f"{result['threads']} thread(s)"
    )
    enc = result["variants"]["encoder"]["p50"]
    macs, rate = result["macs"], result["gflops"]
    rows.append("")
    rows.append(
        f"Arithmetic: encoder {macs['encoder'] / 1e6:.0f} MMAC at {rate['encoder']:.0f} GFLOP/s, fused "
        f"posterior {macs['default'] / 1e6:.0f} MMAC at {rate['default']:.0f} GFLOP/s: its arithmetic is "
        f"{macs['default'] / macs['encoder']:.2f} × the encoder's (their time ratio at one rate)."
    )
    rows.append("")
    rows.append(
        f"Inside a worker's `infer` stage (one fused graph): encoder {enc:.1f} ms, sampler (10 DDIM "
        f"steps × K trajectories) {base - enc:.1f} ms (default − encoder, p50); the posterior summary "
        "runs in the hub, inside `publish`."
    )
    return "\n".join(rows)


# ---------------------------------------------------------------- scenarios (MLPerf-style)


def posterior_variants(
    model: str | Path, threads: int = 1, gpu: str = "cuda:0"
) -> dict[str, Callable[..., np.ndarray]]:
    """Every way this machine can compute a window's posterior, as ``fn(frames, demo, mask, noise)
    -> (B, K) EF %``: each installed backend that loads (fp32 and, for ONNX Runtime, the INT8 model
    when it exists), plus the naive paper-style torch loop (re-encodes at every step)."""
    from edge_agent.inference.backends import BackendError, available_backends, load_backend

    pt = Path(model).with_suffix(".pt")
    out: dict[str, Callable[..., np.ndarray]] = {}
    for name in available_backends():
        # Each backend on the device it runs on: the GPU backends on ``gpu``, the others on the CPU.
        device = gpu if name in ("tensorrt", "cuda") else "cpu"
        try:
            out[name] = _samples_of(load_backend(name, pt, device=device, threads=threads))
        except BackendError as e:  # e.g. tensorrt installed on a machine without a GPU
            log.warning("bench: %s is not a variant of this machine: %s", name, e)
    int8 = pt.with_suffix(".int8.onnx")
    if "onnxruntime" in out and int8.exists():
        out["onnxruntime-int8"] = _samples_of(load_backend("onnxruntime", int8, threads=threads))
    if "torch" in out:
        from edge_agent.model.artefact import load_model

        out["naive"] = _naive_loop(load_model(pt)[0])
    return out


def _samples_of(backend: Any) -> Callable[..., np.ndarray]:
    """A backend's posterior as ``fn(frames, demo, mask, noise) -> (B, K) EF %`` (its score dropped)."""
    return lambda frames, demo, mask, noise: backend.posterior(frames, demo, mask, noise).samples


def _naive_loop(net: Any) -> Callable[..., np.ndarray]:
    """The paper-style sampler around a torch MCSDR: the whole model, video encoder included, at
    every DDIM step; ``fn(frames, demo, mask, noise) -> (B, K) EF %``."""
    import torch

    from edge_agent.model.ddim import ddim_sample

    @torch.inference_mode()
    def run(frames: np.ndarray, demo: np.ndarray, mask: np.ndarray, noise: np.ndarray) -> np.ndarray:
        video, d = torch.from_numpy(np.array(frames)), torch.from_numpy(np.asarray(demo, np.float32))
        known, y = torch.from_numpy(np.asarray(mask, bool)), torch.from_numpy(np.asarray(noise, np.float32))

        def eps_fn(y_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return net.denoiser(net.condition(video, d, known)[0])(y_t, t)  # the whole model at every step

        return net.transform.inverse_np(ddim_sample(eps_fn, y, net.schedule).numpy())

    return run


def bench_windows(n: int = 8, seed: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n simulated beats cut as the agent cuts them: (frames (n, 32, 112, 112) u8, demo, mask)."""
    from edge_agent.sim.clips import synthetic_example

    examples = [synthetic_example(seed=seed, index=i) for i in range(n)]
    return (
        np.stack([e.clip for e in examples]),
        np.stack([e.demographics for e in examples]),
        np.stack([e.demo_mask for e in examples]),
    )


def capture_cost(min_seconds: float, min_samples: int) -> dict[str, dict[str, float | int | None]]:
    """The capture stage per frame, ms: preprocessing (grayscale, sector crop, resize to 112×112)
    plus the write into a real shared-memory ring, for a 112×112 simulator frame (taken as it is)
    and for a 480×640 colour frame, a scanner's video output (the same image, upscaled, with the
    sector found from 30 warm-up frames as the capture does). The estimate's clock starts at the
    ring write, so this time comes before every latency the live scenario reports. ``ring CRC``:
    the slot checksum alone (:func:`~edge_agent.live.ringbuffer.slot_checksum`, inside each write
    and again in each reader) of a 112×112 frame."""
    import cv2

    from edge_agent.live.preprocess import Preprocessor
    from edge_agent.live.ringbuffer import AUX_LEN, FrameRing, segment_name, slot_checksum
    from edge_agent.live.sources import open_source

    with open_source("synthetic://?seed=9&hr=75") as src:
        small = [src.read().pixels for _ in range(40)]
    large = [cv2.cvtColor(cv2.resize(f, (640, 480)), cv2.COLOR_GRAY2RGB) for f in small]
    out: dict[str, dict[str, float | int | None]] = {}
    for name, frames in (("112x112 gray", small), ("480x640 RGB", large)):
        pre = Preprocessor()
        for f in frames[:30]:
            pre.push(f)
        pre.drain()
        ring = FrameRing.create(segment_name(f"bench{len(out)}"), 64, (112, 112))
        frame_no = itertools.count()

        def one(
            pre: Preprocessor = pre, ring: FrameRing = ring, frames: list = frames, n: Iterator = frame_no
        ) -> None:
            i = next(n)
            ring.write(pre.push(frames[i % len(frames)]), i, time.monotonic())

        try:
            out[name] = stats_ms(timings(one, min_seconds, min_samples))
        finally:
            ring.close()
    aux = np.full(AUX_LEN, np.nan)
    out["ring CRC"] = stats_ms(
        timings(lambda: slot_checksum(2, small[0], 7, 1.5, 0, aux), min_seconds, min_samples)
    )
    return out


def single_stream(
    fn: Callable[..., np.ndarray], windows: tuple, noise: np.ndarray, min_seconds: float, min_samples: int
) -> dict[str, float | int]:
    """MLPerf SingleStream: one window at a time, the next when the previous returns; latency of
    the posterior plus its summary (what a worker does per window), ms."""
    from edge_agent.model.posterior import summarize

    frames, demo, mask = windows
    i = 0

    def query() -> None:
        nonlocal i
        j = i % len(frames)
        summarize(fn(frames[j : j + 1], demo[j : j + 1], mask[j : j + 1], noise[None])[0])
        i += 1

    seconds = timings(query, min_seconds, min_samples)
    return {**stats_ms(seconds), "samples_ms": [round(1000.0 * x, 3) for x in seconds.tolist()]}


def offline(
    fn: Callable[..., np.ndarray], windows: tuple, noise: np.ndarray, min_seconds: float, batch: int = 8
) -> dict[str, float | int]:
    """MLPerf Offline: windows per second with batches of ``batch`` windows."""
    frames, demo, mask = (np.resize(a, (batch, *a.shape[1:])) for a in windows)
    noises = np.repeat(noise[None], batch, axis=0)
    seconds = timings(lambda: fn(frames, demo, mask, noises), min_seconds, 3)
    return {"batch": batch, "windows_per_s": float(batch / np.median(seconds)), "n": int(seconds.size)}


@dataclass(frozen=True)
class BenchConfig:
    """The benchmark (YAML section ``bench``; ``configs/bench_jetson.yaml`` is the Jetson profile,
    ``configs/bench_gpu.yaml`` the workstation-GPU one).

    model: checkpoint whose exported graphs are benchmarked. min_seconds, min_samples: per
    variant and scenario, after warm-up. streams: stream counts for the live scenarios (the real
    multi-process agent, simulated feeds at ``fps``), each run for ``stream_seconds``; workers:
    inference workers there (0: one per stream, at most 2). threads: per backend/worker.
    gating: how the live runs find each beat's closing end-diastole, one run per entry and stream
    count: ``ecg`` — the feed carries the echo machine's ECG R waves (``synthetic://?ecg=1``), the
    window closes on the R-wave frame itself; ``image`` — no ECG, the detector finds EDs in the
    images and can confirm one only once ejection is under way (≈ 0.1–0.3 s after it).
    sim_loop_s: the simulated feeds render this many seconds once and replay them like recorded
        cines (``synthetic://?loop_s=``), so the simulator (≈ 4 ms of CPU per frame: 1.2 of 2
        cores for four 50 fps streams) does not compete with the agent under test; 0 renders live.
    ward_beds, ward_seconds: the ward page server under that many beds for that long
        (:func:`~edge_agent.tools.ward_load.ward_load`); 0 beds: not run.
    device_batches: batch sizes (beds served by one call) of the ``device`` section, every backend
        and precision on its own device (:mod:`edge_agent.tools.device_latency`); empty: not run.
    gpu: the CUDA device the GPU backends run on ("cuda:N").
    """

    model: str = "engines/mcsdr_default.pt"
    min_seconds: float = 5.0
    min_samples: int = 50
    streams: tuple[int, ...] = (1, 4)
    stream_seconds: float = 30.0
    fps: float = 50.0
    workers: int = 0
    threads: int = 1
    offline_batch: int = 8
    gating: tuple[str, ...] = ("ecg", "image")
    sim_loop_s: float = 20.0
    tegrastats_interval_ms: int = 200  # from the YAML's telemetry section
    ward_beds: int = 16
    ward_seconds: float = 30.0
    device_batches: tuple[int, ...] = (1, 4, 64)
    gpu: str = "cuda:0"

    def __post_init__(self) -> None:
        bad = sorted(set(self.gating) - set(GATINGS))
        if bad or not self.gating:
            raise ValueError(f"bench.gating: {list(self.gating)} — use a list of {list(GATINGS)}")
        if any(b < 1 for b in self.device_batches):
            raise ValueError(f"bench.device_batches: {list(self.device_batches)} — use batch sizes ≥ 1")


QUICK = {
    "min_seconds": 0.5,
    "min_samples": 5,
    "stream_seconds": 10.0,
    "ward_seconds": 5.0,
    "device_batches": [1, 4],
}
# --quick as overrides that come before the command line's own: an explicit --set still wins.
QUICK_OVERRIDES = tuple(f"bench.{key}={value}" for key, value in QUICK.items())


def bench_config(data: dict[str, Any], source: str) -> tuple[BenchConfig, tuple[str, ...]]:
    """A bench YAML (sections ``bench``, ``worker``, ``telemetry``) → (BenchConfig, agent overrides
    for the live runs, e.g. ``worker.backend=tensorrt``). Unknown sections and keys are errors."""
    from edge_agent.config import ConfigError, from_mapping
    from edge_agent.live.worker import WorkerConfig

    unknown = sorted(set(data) - {"bench", "worker", "telemetry"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown section(s) {unknown}; valid sections are bench, worker, telemetry"
        )
    bench = dict(data.get("bench") or {})
    telemetry = from_mapping(TelemetryConfig, data.get("telemetry"), f"{source}:telemetry")
    cfg = from_mapping(BenchConfig, bench, f"{source}:bench")
    cfg = dataclasses.replace(cfg, tegrastats_interval_ms=telemetry.tegrastats_interval_ms)
    from_mapping(WorkerConfig, data.get("worker"), f"{source}:worker")  # only validates the keys
    overrides = tuple(f"worker.{k}={json.dumps(v)}" for k, v in (data.get("worker") or {}).items())
    return cfg, overrides


@dataclass(frozen=True)
class TelemetryConfig:
    """Telemetry during a benchmark (YAML section ``telemetry``): tegrastats_interval_ms, the
    sampling period of ``tegrastats`` on a Jetson (ms)."""

    tegrastats_interval_ms: int = 200


def live(
    n_streams: int, gating: str, cfg: BenchConfig, agent_overrides: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The multi-stream and end-to-end scenarios: ``n_streams`` simulated feeds through the real
    agent (capture, ring, windows, ZeroMQ, workers, hub, subscriber), beats gated by ``gating``
    (see :class:`BenchConfig`); the demo's summary."""
    import io

    from rich.console import Console

    from edge_agent.live.agent import load_agent_config
    from edge_agent.tools.demo import run_demo

    workers = cfg.workers or min(2, n_streams)
    extra = ("&ecg=1" if gating == "ecg" else "") + (f"&loop_s={cfg.sim_loop_s:g}" if cfg.sim_loop_s else "")
    sources = [f"synthetic://?seed={100 + i}&fps={cfg.fps:g}{extra}" for i in range(n_streams)]
    overrides = [
        "transport.publish=ipc://{run}/publish",
        "supervisor.log_level=WARNING",
        f"worker.count={workers}",
        f"worker.threads={cfg.threads}",
        *agent_overrides,
    ]
    agent_cfg = load_agent_config(None, overrides, sources=sources)
    summary = run_demo(agent_cfg, cfg.stream_seconds, console=Console(file=io.StringIO()))
    return {**summary, "n_streams": n_streams, "gating": gating, "workers": workers, "fps": cfg.fps}


def run_bench(cfg: BenchConfig, agent_overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every scenario, every variant this machine has, in one run; ratios to the naive loop."""
    from edge_agent.live.worker import starting_noises
    from edge_agent.tools.device_latency import device_latency
    from edge_agent.tools.telemetry import TegrastatsSampler, environment

    cfg = dataclasses.replace(cfg, model=str(resolve(cfg.model)))  # from here, else the shipped model
    windows = bench_windows()
    noise = starting_noises(
        int(json.loads(Path(f"{Path(cfg.model).with_suffix('.onnx')}.json").read_text())["k"]), 0
    )
    result: dict[str, Any] = {"config": dataclasses.asdict(cfg), "environment": environment()}
    with TegrastatsSampler(interval_ms=cfg.tegrastats_interval_ms) as telemetry:
        variants = posterior_variants(cfg.model, cfg.threads, cfg.gpu)
        result["single_stream"] = {
            name: single_stream(fn, windows, noise, cfg.min_seconds, cfg.min_samples)
            for name, fn in tqdm(variants.items(), desc="single-stream", unit="variant")
        }
        result["offline"] = {
            name: offline(fn, windows, noise, cfg.min_seconds, cfg.offline_batch)
            for name, fn in tqdm(variants.items(), desc="offline", unit="variant")
            if name != "naive"
        }
        del variants  # free the models before the live runs start their own processes
        if cfg.device_batches:
            result["device"] = device_latency(
                cfg.model,
                windows,
                noise,
                cfg.device_batches,
                cfg.min_seconds,
                cfg.min_samples,
                cfg.threads,
                cfg.gpu,
            )
        result["capture"] = capture_cost(cfg.min_seconds, cfg.min_samples)
        runs = [(n, g) for g in cfg.gating for n in cfg.streams]
        result["live"] = [live(n, g, cfg, agent_overrides) for n, g in tqdm(runs, desc="live", unit="run")]
        if cfg.ward_beds:
            from edge_agent.tools.ward_load import ward_load

            result["ward"] = ward_load(cfg.ward_beds, cfg.ward_seconds)
    result["telemetry"] = telemetry.summary()
    result["posterior_speed"] = posterior_speed(cfg.model, cfg.min_seconds, cfg.min_samples, cfg.threads)
    naive = result["single_stream"].get("naive", {}).get("p50")
    result["ratios_to_naive"] = {
        name: naive / s["p50"] for name, s in result["single_stream"].items() if naive and name != "naive"
    }
    result["targets"] = check_targets(result, default_variant(result["single_stream"], agent_overrides))
    return result


def default_variant(measured: dict[str, Any], agent_overrides: tuple[str, ...] = ()) -> str:
    """The single-stream variant the live workers run: ``worker.backend``, or for auto the first
    backend in auto's order that loaded here (``measured`` holds those that did); ``-int8`` for
    ONNX Runtime at int8 precision."""
    from edge_agent.inference.backends import available_backends
    from edge_agent.live.agent import load_agent_config

    worker = load_agent_config(None, agent_overrides).worker
    name = worker.backend
    if name == "auto":
        name = next((b for b in available_backends() if b in measured), "none")
    return f"{name}-int8" if name == "onnxruntime" and worker.precision == "int8" else name


# The issues' targets on the 2-core CPU: (what, streams, gating, limit). With ECG gating every
# window counts; image gating (issue 13) is judged after each stream's first beat, which waits for
# the second (latency_steady_ms; the first beat's wait is reported by detector_accuracy).
TARGETS = (
    ("e2e p99 ≤ 50 ms, 1 stream", 1, "ecg", 50.0),
    ("e2e p99 ≤ 100 ms and 0 dropped, 4 streams", 4, "ecg", 100.0),
    ("e2e p99 ≤ 150 ms after the first beat, 1 stream", 1, "image", 150.0),
)


def check_targets(result: dict[str, Any], default: str) -> list[dict[str, Any]]:
    """Each target with its measured figure and whether it is met (live runs per gating; the
    default backend's speed-up over the naive loop ≥ 8)."""
    out = []
    for what, n, gating, limit in TARGETS:
        for run in result["live"]:
            if run["n_streams"] != n or run["gating"] != gating:
                continue
            p99 = run["latency_steady_ms" if gating == "image" else "latency_ms"].get("p99")
            met = p99 is not None and p99 <= limit and (n == 1 or run["windows_dropped"] == 0)
            measured = "no estimate" if p99 is None else f"p99 {p99:.1f} ms, {run['windows_dropped']} dropped"
            out.append({"target": f"{what} ({run['gating']} gating)", "measured": measured, "met": bool(met)})
    capture = result.get("capture", {})
    if "ring CRC" in capture:
        share = capture["ring CRC"]["p50"] / capture["480x640 RGB"]["p50"]
        out.append(
            {
                "target": "ring CRC ≤ 5 % of the capture stage (480×640 RGB frame)",
                "measured": f"{100 * share:.1f} % ({1e3 * capture['ring CRC']['p50']:.1f} µs)",
                "met": share <= 0.05,
            }
        )
    ward = result.get("ward")
    if ward:
        p99 = ward["latency_ms"]["p99"]
        out.append(
            {
                "target": f"ward page, {ward['beds']} beds: updates p99 ≤ 1 s, server CPU < 10 % of one core",
                "measured": f"p99 {p99:.1f} ms, CPU {100 * ward['cpu_share']:.1f} %, "
                f"{ward['delivered']} of {ward['estimates']} delivered",
                "met": p99 is not None
                and p99 <= 1000.0
                and ward["cpu_share"] < 0.1
                and ward["delivered"] == ward["estimates"],
            }
        )
    ratio = result["ratios_to_naive"].get(default)
    out.append(
        {
            "target": f"default backend ({default}) ≥ 8× faster than the naive loop",
            "measured": "not measured" if ratio is None else f"{ratio:.1f}×",
            "met": ratio is not None and ratio >= 8.0,
        }
    )
    return out


def report_markdown(result: dict[str, Any]) -> str:
    """The benchmark's tables: environment, single-stream, offline, live (multi-stream, end to end)."""
    env = result["environment"]
    lines = ["# edge-agent benchmark", ""]
    lines.append("Environment: " + ", ".join(f"{k}: {v}" for k, v in _flat_env(env).items()))
    cfg = result["config"]
    lines += [
        "",
        f"Each variant warmed up, then timed for at least {cfg['min_seconds']} s and {cfg['min_samples']} "
        f"queries; live runs {cfg['stream_seconds']} s per stream count at {cfg['fps']:g} fps, "
        + (
            f"simulated feeds rendered once for {cfg['sim_loop_s']:g} s and replayed."
            if cfg.get("sim_loop_s")
            else "simulated feeds rendered live (the simulator shares the CPU with the agent)."
        ),
        "",
        "## Single stream (one window at a time: posterior + summary; headline p90)",
        "",
        "| variant | min | mean | p50 | p90 | p99 | max | n | × faster than naive |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in result["single_stream"].items():
        ratio = result["ratios_to_naive"].get(name)
        cells = " | ".join(f"{s[q]:.1f}" for q in ("min", "mean", "p50", "p90", "p99", "max"))
        lines.append(f"| {name} | {cells} | {s['n']} | {'—' if ratio is None else f'{ratio:.1f}'} |")
    lines += ["", "## Offline (batches of windows)", "", "| variant | batch | windows/s |", "|---|---:|---:|"]
    for name, o in result["offline"].items():
        lines.append(f"| {name} | {o['batch']} | {o['windows_per_s']:.1f} |")
    if "device" in result:
        from edge_agent.tools.device_latency import device_table

        lines += [
            "",
            "## Each backend on its device, by batch (beds per call)",
            "",
            device_table(result["device"]),
        ]
    lines += [
        "",
        "## Capture stage per frame (preprocessing + ring write; before every latency below)",
        "",
        "| frame | p50 ms | p99 ms | n |",
        "|---|---:|---:|---:|",
    ]
    for name, c in result.get("capture", {}).items():
        lines.append(f"| {name} | {c['p50']:.3f} | {c['p99']:.3f} | {c['n']} |")
    lines += [
        "",
        "## Live: the multi-process agent, simulated streams (headline p99, windows dropped)",
        "",
        "| streams | gating | workers | estimates | dropped | e2e from last frame p50 / p99 ms "
        "| the same after each stream's first beat | from completing frame p50 / p99 ms "
        "| stage p50 ms (detect / window / to_worker / infer / publish / deliver) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in result["live"]:
        a, b = run["latency_ms"], run["latency_from_ready_ms"]
        st = run["stages_ms"]
        stage = " / ".join(
            f"{st[k]['p50']:.1f}" if k in st else "—"
            for k in ("detect", "window", "to_worker", "infer", "publish", "deliver")
        )
        lines.append(
            f"| {run['n_streams']} | {run['gating']} | {run['workers']} | {run['n_estimates']} | "
            f"{run['windows_dropped']} | "
            f"{_pair(a)} | {_pair(run.get('latency_steady_ms', {}))} | {_pair(b)} | {stage} |"
        )
    lines += _ward_section(result.get("ward"))
    lines += ["", "## Targets (2-core CPU, default backend)", "", "| target | measured | met |"]
    lines.append("|---|---|---|")
    for t in result.get("targets", []):
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
    speed = result.get("posterior_speed")
    if speed:
        lines += ["", "## Posterior alone, backends side by side", "", speed_table(speed)]
    tele = result.get("telemetry") or {}
    lines += ["", "## Telemetry", "", "```", json.dumps(tele, indent=1)[:3000], "```"]
    return "\n".join(lines) + "\n"


def _ward_section(ward: dict[str, Any] | None) -> list[str]:
    """The ward page server's load run as a report section (none when it did not run)."""
    if not ward:
        return []
    lat = ward["latency_ms"]
    return [
        "",
        f"## Ward page: {ward['beds']} beds at {ward['hr_bpm']:g} bpm for {ward['seconds']:g} s "
        "(estimate published → event at the page)",
        "",
        "| estimates | delivered | p50 ms | p99 ms | max ms | server CPU, % of one core |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {ward['estimates']} | {ward['delivered']} | {lat['p50']:.1f} | {lat['p99']:.1f} | "
        f"{lat['max']:.1f} | {100 * ward['cpu_share']:.1f} |",
    ]


def _pair(p: dict[str, Any]) -> str:
    return "—" if p.get("p50") is None else f"{p['p50']:.1f} / {p['p99']:.1f}"


def _flat_env(env: dict[str, Any]) -> dict[str, Any]:
    """The environment in one line: CPU, cores, GPU, package versions, Jetson power mode."""
    cpu, gpu, jetson = env.get("cpu", {}), env.get("gpu", {}), env.get("jetson", {})
    versions = {k: v.get("version") for k, v in env.get("packages", {}).items() if v.get("version")}
    return {
        "CPU": f"{cpu.get('model')} ({cpu.get('usable_cores')} cores)",
        "GPU": gpu.get("name") or gpu.get("reason", "none"),
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "Jetson": jetson.get("power_mode") or jetson.get("reason", "no"),
    }


def plot_report(result: dict[str, Any], out: Path) -> list[Path]:
    """Latency CDFs (single stream per variant; live end to end per stream count) and the per-stage
    breakdown of the live runs, as PNGs in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, s in result["single_stream"].items():
        v = np.sort(np.asarray(s["samples_ms"]))
        ax.plot(v, np.arange(1, v.size + 1) / v.size, label=name)
    ax.set(
        xscale="log",
        xlabel="latency per window, ms (log)",
        ylabel="fraction of queries",
        title="Single stream: posterior + summary per window",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(out / "single_stream_cdf.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in result["live"]:
        for key, style, origin in (
            ("latencies_ms", "-", "last frame"),
            ("latencies_from_ready_ms", "--", "completing frame"),
        ):
            v = np.sort(np.asarray(run.get(key, [])))
            if v.size:
                label = f"{run['n_streams']} stream(s), {run['gating']} gating, from {origin}"
                ax.plot(v, np.arange(1, v.size + 1) / v.size, style, label=label)
    ax.set(
        xlabel="end-to-end latency, ms",
        ylabel="fraction of estimates",
        title="Live agent: window → subscriber",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(out / "live_cdf.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    stages = ("detect", "window", "to_worker", "infer", "publish", "deliver")
    fig, ax = plt.subplots(figsize=(7, 3 + 0.3 * len(result["live"])))
    labels = [f"{r['n_streams']} stream(s), {r['gating']}" for r in result["live"]]
    left = np.zeros(len(labels))
    for stage in stages:
        widths = np.array([r["stages_ms"].get(stage, {}).get("p50") or 0.0 for r in result["live"]])
        ax.barh(labels, widths, left=left, label=stage)
        left += widths
    ax.set(xlabel="median time per stage, ms", title="Where an estimate's time goes")
    ax.legend(fontsize=8, ncol=3)
    paths.append(out / "stages.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths
