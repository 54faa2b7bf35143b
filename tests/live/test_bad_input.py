"""Bad input gets a clear error, a counter, and the agent keeps running.

Every test provokes the bad input for real — garbage over real ZeroMQ sockets to a running hub and
a running worker process, blank/frozen/saturated frames through a real shared-memory ring into the
windowing stage, damaged AVI/MP4/DICOM files written in their real formats, broken configs and
command lines — and checks the error names what is wrong, the counter moved, and the component
still serves the next good input.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import msgpack
import numpy as np
import pytest
import yaml
import zmq
from fixtures import dicom_cine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from edge_agent.cli import main
from edge_agent.clients.subscriber import Subscriber
from edge_agent.config import ConfigError, load_yaml
from edge_agent.live.agent import SECTIONS, Agent, AgentConfig, load_agent_config, parse_agent_config
from edge_agent.live.cycles import CycleConfig
from edge_agent.live.frame_checks import (
    BLANK,
    FROZEN,
    OK,
    REPEAT,
    SATURATED,
    FrameCheckConfig,
    FrameQuality,
    check_frame,
)
from edge_agent.live.hub import Hub, HubConfig
from edge_agent.live.preprocess import Preprocessor
from edge_agent.live.ringbuffer import FrameRing, segment_name
from edge_agent.live.sources import SourceError, open_source
from edge_agent.live.windower import WindowConfig, Windower
from edge_agent.protocol import wire
from edge_agent.protocol.transport import TransportConfig
from edge_agent.protocol.wire import READY, RESULT

ROOT = Path(__file__).resolve().parents[2]
CINE = get_testdata_file("color3d_jpeg_baseline.dcm")
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    return sock


def _synthetic_frames(n: int, seed: int = 3, quality: str = "good") -> list[np.ndarray]:
    with open_source(f"synthetic://?ef=50&hr=75&quality={quality}&seed={seed}") as src:
        return [src.read().pixels for _ in range(n)]


def _window(stream: str, seq: int, frames: np.ndarray | None = None, **overrides: Any) -> wire.Window:
    if frames is None:
        frames = np.random.default_rng(seq).integers(20, 200, (32, 112, 112), dtype=np.uint8)
    fields: dict[str, Any] = {
        "stream": stream,
        "seq": seq,
        "frame_seq": (50 * seq, 50 * seq + 49),
        "t": (1.0 * seq, 1.0 * seq + 0.98),
        "t_sent": time.monotonic(),
        "fps": 50.0,
        "hr_bpm": 61.0,
        "beat": "ed_ed",
        "frames": frames,
    }
    return wire.Window(**{**fields, **overrides})


def _remap(parts: list[Any], index: int, change: Callable[[dict[str, Any]], None]) -> list[bytes]:
    """Decode the msgpack map at parts[index], let ``change`` edit it, pack it again."""
    out = [bytes(p) for p in parts]
    data = msgpack.unpackb(out[index], raw=False)
    change(data)
    out[index] = msgpack.packb(data, use_bin_type=True)
    return out


# ================================================================ 1. frame checks (pure)


def test_real_echo_frames_pass_the_checks() -> None:
    """No false alarms: the simulator at every quality, and the real DICOM cine preprocessed as the
    capture does (it repeats single frames every ~16 frames: not frozen)."""
    cfg = FrameCheckConfig()
    for quality in ("good", "medium", "poor"):
        for seed in (1, 2):
            frames = _synthetic_frames(60, seed=seed, quality=quality)
            kinds = {check_frame(f, p, cfg) for f, p in zip(frames[1:], frames[:-1], strict=True)}
            assert kinds == {OK}, (quality, seed, kinds)
    pre, cine = Preprocessor("auto"), []
    with open_source(CINE) as src:
        while (frame := src.read()) is not None:
            out = pre.push(frame.pixels)
            if out is not None:
                cine += [*pre.drain(), out]
    quality = FrameQuality(fps=30.0)
    kinds = [quality.push(k, f) for k, f in enumerate(cine)]
    assert len(cine) == 120 and set(kinds) == {OK} and quality.state() == OK
    assert sum(check_frame(f, p, cfg) == REPEAT for f, p in zip(cine[1:], cine[:-1], strict=True)) == 7
    assert dict(quality.frames) == {BLANK: 0, FROZEN: 0, SATURATED: 0}


def test_check_frame_finds_blank_saturated_and_repeated_frames() -> None:
    cfg = FrameCheckConfig()
    good = _synthetic_frames(1)[0]
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 12, good.shape, dtype=np.uint8)  # "no signal": noise below the dark level
    assert check_frame(dark, None, cfg) == BLANK
    assert check_frame(np.full(good.shape, 90, np.uint8), None, cfg) == BLANK  # uniform grey
    overlay = dark.copy()
    overlay[50:52, 10:60] = 255  # a line of text on a black screen: still blank
    assert check_frame(overlay, None, cfg) == BLANK
    assert check_frame(np.full(good.shape, 255, np.uint8), None, cfg) == SATURATED  # white screen
    burnt = np.where(good > 0, 255, good).astype(np.uint8)  # the whole sector white
    assert check_frame(burnt, None, cfg) == SATURATED
    assert check_frame(good, None, cfg) == OK
    assert check_frame(good.copy(), good, cfg) == REPEAT
    assert check_frame(good, good[:, :100], cfg) == OK  # another size is no repeat
    with pytest.raises(ValueError, match=r"expected an \(H, W\) uint8 frame"):
        check_frame(good.astype(np.float32), None, cfg)
    with pytest.raises(ValueError, match="must be a fraction"):
        FrameCheckConfig(max_bad_fraction=1.5)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda h: st.tuples(
            st.just(h), st.integers(1, 40), st.integers(0, 255), st.integers(0, 255), st.integers(0, 2**32)
        )
    )
)
def test_check_frame_answers_every_uint8_frame(shape_and_levels: tuple[int, int, int, int, int]) -> None:
    h, w, lo, hi, seed = shape_and_levels
    lo, hi = min(lo, hi), max(lo, hi)
    frame = np.random.default_rng(seed).integers(lo, hi + 1, (h, w), dtype=np.uint8)
    kind = check_frame(frame, None, FrameCheckConfig())
    assert kind in (OK, BLANK, SATURATED)
    if hi <= 16:
        assert kind == BLANK  # nothing above the dark level
    if lo >= 250:
        assert kind == SATURATED


def test_frozen_needs_a_run_and_is_counted_back_to_its_start() -> None:
    frames = _synthetic_frames(40)
    quality = FrameQuality(fps=50.0)  # a run of 10 repeats (0.2 s) is frozen
    assert quality.frozen_min_run == 10
    kinds = [quality.push(k, f) for k, f in enumerate(frames[:20])]
    still = frames[19]
    kinds += [quality.push(20 + k, still.copy()) for k in range(9)]  # 9 repeats: not yet frozen
    assert set(kinds) == {OK} and quality.frames[FROZEN] == 0
    assert quality.push(29, still.copy()) == FROZEN  # the 10th: the whole run is frozen
    assert quality.frames[FROZEN] == 10
    assert quality.state() == OK  # 10 of the last 50 frames
    for k in range(30, 60):
        assert quality.push(k, still.copy()) == FROZEN
    assert quality.frames[FROZEN] == 40 and quality.state() == FROZEN
    # A beat over the live frames goes; one over the frozen run is withheld and counted.
    assert quality.withhold((0, 19)) is None and quality.withhold((4, 23)) is None  # 4 of 20: 20 %
    assert quality.withhold((25, 59)) == FROZEN and quality.rejected[FROZEN] == 1
    assert quality.windows_rejected == 1
    # Single repeats (a 25 fps scanner captured at 50 fps) are never frozen.
    doubled = FrameQuality(fps=50.0)
    for k, f in enumerate(frames):
        assert doubled.push(2 * k, f) == OK and doubled.push(2 * k + 1, f.copy()) == OK
    assert doubled.frames[FROZEN] == 0


def test_a_sequence_gap_breaks_a_run() -> None:
    still = _synthetic_frames(1)[0]
    quality = FrameQuality(fps=50.0)
    for k in range(8):
        quality.push(k, still)
    quality.reset()  # frames 8..99 lost: the next frame is not compared with frame 7
    for k in range(100, 108):
        quality.push(k, still)
    assert quality.frames[FROZEN] == 0


# ================================================================ 2. the windower on a real ring


def _run_windower(tmp_path: Path, bad: Callable[[np.ndarray, int], np.ndarray], name: str) -> tuple:
    """4 s of a simulated heart, 6 s of bad frames made by ``bad(last good frame, k)``, 4 s of the
    heart again, through a real ring into the windowing stage; returns (windows, statuses,
    bad frame_seq range, stage counters)."""
    frames = _synthetic_frames(400, seed=5)
    endpoint = f"ipc://{tmp_path}/windows"
    ctx = zmq.Context()
    pull = _socket(ctx, zmq.PULL)
    pull.bind(endpoint)
    ring = FrameRing.create(segment_name(name), 1024, (112, 112), info={"fps": 50.0})
    stage = Windower(
        name,
        ring.name,
        CycleConfig(),
        WindowConfig(status_period_s=0.0),  # a status after every batch of frames
        TransportConfig(linger_ms=0),
        endpoint,
    )
    written = [*frames[:200], *(bad(frames[199], k) for k in range(300)), *frames[200:]]
    windows, statuses = [], []
    try:
        stage.start()
        for k, pixels in enumerate(written):
            ring.write(pixels, k, 100.0 + k / 50.0)
            if k % 10 == 9:
                stage.process()
                # What the last batch sent may still be on its way: wait for it at the end.
                while pull.poll(200 if k == len(written) - 1 else 0):
                    parts = pull.recv_multipart()
                    if parts[0].startswith(b"status."):
                        statuses.append((k, wire.decode_status(parts)))
                    else:
                        windows.append(wire.decode_window(parts))
        counters = (dict(stage.quality.frames), stage.quality.windows_rejected, stage.malformed, stage.sent)
    finally:
        stage.stop()
        ring.close()
        ctx.destroy(linger=0)
    return windows, statuses, (200, 499), counters


@pytest.mark.parametrize(
    ("kind", "bad"),
    [
        (BLANK, lambda last, k: np.random.default_rng(k).integers(0, 10, (112, 112), dtype=np.uint8)),
        (FROZEN, lambda last, k: last.copy()),
        (SATURATED, lambda last, k: np.where(last > 0, 255, 0).astype(np.uint8)),
    ],
    ids=[BLANK, FROZEN, SATURATED],
)
def test_windower_counts_bad_frames_says_why_and_sends_no_window_of_them(
    tmp_path: Path, kind: str, bad: Callable[[np.ndarray, int], np.ndarray]
) -> None:
    windows, statuses, (first_bad, last_bad), (frames, rejected, malformed, sent) = _run_windower(
        tmp_path, bad, f"bad{kind}"
    )
    # Counted: every bad frame, of the right kind only.
    assert frames[kind] == 300 and sum(frames.values()) == 300, frames
    # No window is made mostly of them; the heart before and after still gives windows.
    for w in windows:
        overlap = max(0, min(w.frame_seq[1], last_bad) - max(w.frame_seq[0], first_bad) + 1)
        assert overlap <= 0.2 * (w.frame_seq[1] - w.frame_seq[0] + 1), (w.frame_seq, w.beat)
    assert any(w.frame_seq[1] < first_bad for w in windows)
    assert any(w.frame_seq[0] > last_bad for w in windows)  # it recovered
    assert sent == len(windows) and [w.seq for w in windows] == list(range(len(windows)))
    # 6 s of a blank screen: the detector fell back to fixed windows, and each was withheld.
    assert rejected >= 2
    # The status says why, while it lasts, and counts; "ok" again once the heart is back.
    during = [s for k, s in statuses if first_bad + 60 <= k <= last_bad]
    assert during and all(s["signal"] == kind for s in during)
    final = statuses[-1][1]
    assert final["signal"] == "ok" and final[f"frames_{kind}"] == 300
    assert final["windows_rejected"] == rejected + malformed
    assert all(s["signal"] == "ok" for k, s in statuses if k < first_bad)


# ================================================================ 3. hub, worker, subscriber


def _pump(hub: Hub, until: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < end, "timed out"
        hub.process(0.01)


def _garbage_for_the_windows_socket() -> list[list[bytes]]:
    valid = wire.encode_window(_window("a", 0))
    status = wire.encode_status(
        "a",
        {
            "t": 1.0,
            "fps": 50.0,
            "hr_bpm": None,
            "signal": "ok",
            "windows_dropped": 0,
            "frames_dropped": 0,
            "seq_gaps": 0,
        },
    )
    return [
        [b"garbage"],
        [os.urandom(64), os.urandom(1000)],
        [b""],
        _remap(valid, 0, lambda h: h.update(t_sent=math.nan)),
        _remap(valid, 0, lambda h: h.update(v=3)),  # another schema version
        _remap(valid, 0, lambda h: h.update(dtype="float32")),
        _remap(valid, 0, lambda h: h.update(demo={"age_years": math.inf})),
        [bytes(valid[0]), bytes(valid[1])[:-1]],  # truncated pixels
        [bytes(valid[0])[:20], bytes(valid[1])],  # truncated header
        wire.encode_window(_window("a", 0, frames=np.zeros((2, 3, 4), np.uint8))),  # not the model's shape
        _remap(status, 1, lambda b: b.update(fps=math.nan)),
        [b"status.a", b"\xc1"],
    ]


def test_hub_counts_garbage_from_windowers_and_workers_and_keeps_serving(
    tmp_path: Path, ctx: zmq.Context
) -> None:
    endpoints = {k: f"ipc://{tmp_path}/{k}" for k in ("windows", "workers", "publish")}
    hub = Hub(
        HubConfig(status_period_s=0.05, heartbeat_period_s=0.05), TransportConfig(linger_ms=0), endpoints
    )
    hub.start()
    try:
        push, dealer, sub = _socket(ctx, zmq.PUSH), _socket(ctx, zmq.DEALER), _socket(ctx, zmq.SUB)
        push.connect(endpoints["windows"])
        dealer.connect(endpoints["workers"])
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoints["publish"])
        garbage = _garbage_for_the_windows_socket()
        for parts in garbage:
            push.send_multipart(parts)
        _pump(hub, lambda: hub.invalid == len(garbage))
        assert not hub.streams.get("a") or not hub.streams["a"].queue  # nothing garbage got queued

        def serve(seq: int) -> wire.Window:
            """The hub still takes a window and hands it to the worker."""
            push.send_multipart(wire.encode_window(_window("a", seq)))
            _pump(hub, lambda: dealer.poll(0))
            return wire.decode_window(dealer.recv_multipart())

        dealer.send(READY)
        got = serve(0)
        # A result with NaN samples (a worker that does not check its backend): refused, counted.
        header, _ = wire.encode_result(got, np.full(40, 50.0), "torch", 1.0, 2.0)
        nan_samples = np.full(40, np.nan, np.float32).tobytes()
        dealer.send_multipart([RESULT, bytes(header), nan_samples])
        _pump(hub, lambda: hub.streams["a"].failed == 1)
        assert hub.invalid == len(garbage) + 1
        # Its credit came back: the next window goes out. A worker's FAILED is counted, not invalid.
        got = serve(1)
        dealer.send_multipart([wire.FAILED, *wire.encode_failure("bad_samples", "40 are NaN", got)])
        _pump(hub, lambda: hub.streams["a"].failed == 2)
        assert hub.invalid == len(garbage) + 1
        dealer.send_multipart([wire.FAILED, b"\x93garbage"])  # an unreadable failure: both counts
        dealer.send_multipart([b"HELLO", b"?"])  # not a worker message at all
        _pump(hub, lambda: hub.invalid == len(garbage) + 3)
        # And a good result is still published.
        got = serve(2)
        dealer.send_multipart([RESULT, *wire.encode_result(got, np.full(40, 42.0), "torch", 1.0, 2.0)])
        seen: dict[str, dict[str, Any]] = {}

        def published() -> bool:
            while sub.poll(0):
                msg = wire.decode_published(sub.recv_multipart())
                seen[msg["kind"]] = msg
            return (
                "estimate" in seen
                and seen.get("heartbeat", {}).get("invalid") == len(garbage) + 3
                and seen.get("status", {}).get("windows_failed") == 2
            )

        _pump(hub, published)
        assert seen["estimate"]["seq"] == 2 and seen["estimate"]["beat"]["mean"] == pytest.approx(42.0)
        assert seen["status"]["frames_blank"] == 0 and seen["status"]["windows_dropped"] == 0
    finally:
        hub.stop()


def _bad_onnx(path: Path, k: int = 40) -> Path:
    """A real ONNX posterior graph (the fused graph's inputs and output) that returns NaN samples
    for an all-black window, +inf for an all-white one, and 40 + noise otherwise — a broken engine,
    run by the real onnxruntime backend."""
    import onnx
    from onnx import TensorProto, helper

    def const(name: str, value: float) -> onnx.NodeProto:
        return helper.make_node(
            "Constant", [], [name], value=helper.make_tensor(name, TensorProto.FLOAT, [], [value])
        )

    nodes = [
        const("c40", 40.0),
        const("c255", 255.0),
        const("c1", 1.0),
        helper.make_node("Cast", ["video"], ["vf"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["vf"], ["flat"], axis=1),
        helper.make_node("ReduceMean", ["flat"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Log", ["m"], ["log_m"]),
        helper.make_node("Sub", ["log_m", "log_m"], ["nan_if_black"]),  # -inf - -inf
        helper.make_node("Sub", ["c255", "m"], ["headroom"]),
        helper.make_node("Div", ["c1", "headroom"], ["inf_if_white"]),  # 1 / 0
        helper.make_node("Add", ["noise", "c40"], ["base"]),
        helper.make_node("Add", ["base", "nan_if_black"], ["with_nan"]),
        helper.make_node("Add", ["with_nan", "inf_if_white"], ["samples"]),
    ]
    graph = helper.make_graph(
        nodes,
        "broken_posterior",
        [
            helper.make_tensor_value_info("video", TensorProto.UINT8, ["B", 32, 112, 112]),
            helper.make_tensor_value_info("demo", TensorProto.FLOAT, ["B", 4]),
            helper.make_tensor_value_info("demo_mask", TensorProto.FLOAT, ["B", 4]),
            helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["B", k]),
        ],
        [helper.make_tensor_value_info("samples", TensorProto.FLOAT, ["B", k])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    sidecar = json.loads((ROOT / "engines" / "mcsdr_default.onnx.json").read_text())
    Path(f"{path}.json").write_text(json.dumps({**sidecar, "k": k}))
    return path


def test_worker_process_refuses_garbage_and_never_sends_nan_samples(tmp_path: Path, ctx: zmq.Context) -> None:
    """A real `edge-agent worker` process on a broken ONNX model, served by a test hub over tcp."""
    model = _bad_onnx(tmp_path / "broken.onnx")
    router = _socket(ctx, zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_agent",
            "worker",
            "--connect",
            f"tcp://127.0.0.1:{port}",
            "--set",
            f"worker.model={model}",
            "--set",
            "worker.backend=onnxruntime",
            "--set",
            "worker.threads=1",
            "--set",
            "supervisor.log_level=INFO",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        assert router.poll(120_000), "the worker never said READY"
        identity, kind, *_ = router.recv_multipart()
        assert kind == READY

        def exchange(parts: list[Any]) -> list[bytes]:
            """Send the worker one message; its answer (READY repeats skipped)."""
            router.send_multipart([identity, *parts])
            while True:
                assert router.poll(60_000), "the worker stopped answering"
                _identity, *reply = router.recv_multipart()
                if reply[0] != READY:
                    return reply

        def failure(reply: list[bytes]) -> dict[str, Any]:
            assert reply[0] == wire.FAILED
            return wire.decode_failure(reply[1:])

        garbage = failure(exchange([b"\x00not msgpack", b"pixels"]))
        assert garbage["reason"] == "invalid_window" and "window header" in garbage["detail"]
        bumped = _remap(wire.encode_window(_window("bed1", 0)), 0, lambda h: h.update(v=9))
        assert "schema version 9" in failure(exchange(bumped))["detail"]
        black = failure(
            exchange(wire.encode_window(_window("bed1", 1, frames=np.zeros((32, 112, 112), np.uint8))))
        )
        assert black["reason"] == "bad_samples" and (black["stream"], black["seq"]) == ("bed1", 1)
        assert "onnxruntime backend samples" in black["detail"] and "40 are NaN" in black["detail"]
        white = failure(
            exchange(wire.encode_window(_window("bed1", 2, frames=np.full((32, 112, 112), 255, np.uint8))))
        )
        assert white["seq"] == 2 and "40 infinite" in white["detail"]  # caught before recalibration
        # It still serves: a good window gives 40 finite samples in [0, 100] %.
        reply = exchange(wire.encode_window(_window("bed1", 3)))
        assert reply[0] == RESULT
        header, samples = wire.decode_result(reply[1:])
        assert header["seq"] == 3 and samples.shape == (40,) and np.all(np.isfinite(samples))
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr[-2000:]
    assert "worker: 1 windows served, 2 invalid, 2 failed" in stderr
    assert "worker: bed1 window 1 not published" in stderr and "Traceback" not in stderr


def test_subscriber_counts_invalid_messages_and_keeps_receiving(tmp_path: Path, ctx: zmq.Context) -> None:
    endpoint = f"ipc://{tmp_path}/publish"
    pub = _socket(ctx, zmq.PUB)
    pub.bind(endpoint)
    heartbeat = wire.encode_heartbeat({"host": "h", "pid": 1, "uptime_s": 1.0, "t": 2.0, "invalid": 0})
    with Subscriber(endpoint, context=ctx) as sub:
        while sub.recv(0.05) is None:  # until the subscription has reached the publisher
            pub.send_multipart(heartbeat)
        while sub.recv(0.2) is not None:
            pass
        garbage = [
            _remap(heartbeat, 1, lambda b: b.update(uptime_s=math.nan)),
            _remap(heartbeat, 1, lambda b: b.update(v=3)),
            _remap(heartbeat, 1, lambda b: b.update(invalid=-1)),
            [b"heartbeat", bytes(heartbeat[1])[:-3]],
            [b"lvef.bed1", os.urandom(40)],
            [b"status.bed1"],
        ]
        for parts in garbage:
            pub.send_multipart(parts)
        pub.send_multipart(_remap(heartbeat, 1, lambda b: b.update(invalid=5)))
        msg = sub.recv(5.0)
        assert msg is not None and msg["invalid"] == 5
        assert sub.invalid == len(garbage) and "expected 2 frames" in (sub.last_error or "")


# ================================================================ 4. damaged files


def _write_avi(path: Path, n: int = 40, fourcc: str = "MJPG") -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25.0, (64, 48))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(n):
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()


def _play(uri: str, limit: int = 500, **kwargs: Any) -> int:
    """Frames read until the end; more than ``limit`` means it never ends (a hang)."""
    with open_source(uri, **kwargs) as src:
        n = 0
        while src.read() is not None:
            n += 1
            assert n <= limit, "the source never ended"
    return n


def test_video_cut_off_mid_stream_plays_the_frames_before_then_ends_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    whole = tmp_path / "whole.avi"
    _write_avi(whole)
    data = whole.read_bytes()
    assert _play(str(whole)) == 40
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with (
        caplog.at_level(logging.WARNING, logger="edge_agent.live.sources.video"),
        open_source(str(cut)) as src,
    ):
        frames = []
        while (f := src.read()) is not None:
            frames.append(f)
        assert src.missing_frames == 40 - len(frames)
    assert 10 <= len(frames) < 40 and all(f.pixels.shape == (48, 64) for f in frames)
    assert f"{cut}: the stream ends after {len(frames)} of the 40 frames" in caplog.text
    # Looping a cut-off file loops over what is there.
    with open_source(str(cut), loop=True) as src:
        assert all(src.read() is not None for _ in range(3 * len(frames)))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.avi", b"", r"empty\.avi: the video file is empty \(0 bytes\)"),
        ("empty.mp4", b"", r"empty\.mp4: the video file is empty"),
        (
            "junk.avi",
            b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(range(256)) * 40,
            r"junk\.avi: cannot be opened",
        ),
        ("text.mp4", b"this is not a video\n" * 200, r"text\.mp4: cannot be opened.*ffmpeg"),
    ],
)
def test_unplayable_video_files_are_a_source_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SourceError, match=message):
        open_source(str(path)).open()


def test_an_mp4_cut_off_before_its_index_is_a_source_error(tmp_path: Path) -> None:
    whole = tmp_path / "whole.mp4"
    _write_avi(whole, fourcc="mp4v")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 9 // 10])
    with pytest.raises(SourceError, match=r"cut\.mp4: cannot be opened as a video \(corrupt, truncated"):
        open_source(str(cut)).open()


@functools.cache
def _seed_file(suffix: str) -> bytes:
    """The bytes of a small valid file of that kind (written once, in a directory removed after)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"seed{suffix}"
        if suffix == ".avi":
            _write_avi(path, n=12)
        else:
            _dicom(_cine(4)).save_as(path, enforce_file_format=True)
        return path.read_bytes()


def _check_damaged(data: st.DataObject, suffix: str, limit: int) -> None:
    """A valid file cut short and/or with bytes flipped plays 1..limit frames or raises a
    SourceError naming the file — never another exception, never a hang."""
    blob = bytearray(_seed_file(suffix))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    for _ in range(data.draw(st.integers(0, 6))):
        if blob:
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(bytes(blob))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's own notes on the damage it meets
            try:
                n = _play(str(path), limit=limit)
            except SourceError as e:
                assert str(path) in str(e)
            else:
                assert 1 <= n <= limit


@FUZZ
@given(st.data())
def test_fuzz_damaged_avi_gives_frames_or_a_source_error(data: st.DataObject) -> None:
    _check_damaged(data, ".avi", limit=200)


def _dicom(frames: np.ndarray, **tags: Any) -> Dataset:
    return dicom_cine(frames, **{"FrameTime": 20.0, **tags})


def _cine(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 32, 48), dtype=np.uint8)


def _without_pixels(ds: Dataset) -> Dataset:
    del ds.PixelData
    return ds


def _with(ds: Dataset, **tags: Any) -> Dataset:
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: _without_pixels(_dicom(_cine())), r"no Pixel Data \(7FE0,0010\).*export the cine again"),
        (
            lambda: _with(_dicom(_cine()), PhotometricInterpretation="PALETTE COLOR"),
            r"Photometric Interpretation \(0028,0004\) 'PALETTE COLOR' is not supported.*re-export",
        ),
        (
            lambda: _with(_dicom(_cine()), PhotometricInterpretation="HSV"),
            r"Photometric Interpretation \(0028,0004\) 'HSV' is not supported",
        ),
        (
            lambda: _with(_dicom(_cine()), BitsAllocated=12),
            r"Bits Allocated \(0028,0100\) is 12; only 8 or 16 bits per sample are supported: re-export",
        ),
        (
            lambda: _with(_dicom(_cine()), BitsStored=16),
            r"Bits Stored \(0028,0101\) is 16, not an integer in \[1, 8\]",
        ),
        (
            lambda: _with(_dicom(_cine()), BitsAllocated=16),
            r"Pixel Data \(7FE0,0010\) holds 9216 bytes, but .* needs 18432: the header does not match",
        ),
        (
            lambda: _with(_dicom(_cine()), NumberOfFrames=10),
            r"Pixel Data \(7FE0,0010\) holds 9216 bytes, but .* × 10 needs 15360",
        ),
        (
            lambda: _with(_dicom(_cine()), SamplesPerPixel=3),
            r"Samples per Pixel \(0028,0002\) is 3, but MONOCHROME2 images have 1",
        ),
        (lambda: _with(_dicom(_cine()), Rows=0), r"Rows \(0028,0010\) is 0, not an integer in \[1, 65535\]"),
    ],
    ids=[
        "no-pixels",
        "palette",
        "unknown-photometric",
        "bits12",
        "stored>allocated",
        "bits16",
        "frames",
        "spp",
        "rows0",
    ],
)
def test_unplayable_dicom_is_a_source_error_naming_file_tag_and_fix(
    tmp_path: Path, make: Callable[[], Dataset], message: str
) -> None:
    path = tmp_path / "bad.dcm"
    make().save_as(path, enforce_file_format=True)
    with pytest.raises(SourceError, match=rf"^{path}: .*{message}"):
        open_source(str(path)).open()


def test_dicom_with_its_pixel_data_cut_off(tmp_path: Path) -> None:
    whole = tmp_path / "whole.dcm"
    _dicom(_cine()).save_as(whole, enforce_file_format=True)
    assert _play(str(whole)) == 6
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:-3000])
    with pytest.raises(
        SourceError, match=r"cut\.dcm: Pixel Data \(7FE0,0010\) is cut off: it declares 9216 bytes"
    ):
        open_source(str(cut)).open()
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty\.dcm: the file is empty \(0 bytes\)"):
        open_source(str(empty)).open()


def test_a_compressed_cine_cut_off_plays_the_frames_before_the_damage_then_fails_clearly(
    tmp_path: Path,
) -> None:
    """The real JPEG cine of pydicom-data, cut in half: frames 1-59 decode, frame 60 is named."""
    data = Path(CINE).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    delivered = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own note about the missing end marker
        with pytest.raises(SourceError) as info, open_source(str(cut)) as src:
            while src.read() is not None:
                delivered += 1
    assert delivered == 59
    assert str(info.value).startswith(f"{cut}: frame 60 of 120 cannot be decoded from Pixel Data (7FE0,0010)")
    assert "copy or export the cine again" in str(info.value)


@FUZZ
@given(st.data())
def test_fuzz_damaged_dicom_gives_frames_or_a_source_error(data: st.DataObject) -> None:
    _check_damaged(data, ".dcm", limit=10)


# ================================================================ 5. configs and the command line


NAMES = sorted(
    {"streams", "bogus", *SECTIONS}
    | {f for cls in SECTIONS.values() for f in cls.__dataclass_fields__}
    | {"id", "source", "fps", "loop", "region", "demographics", "age_years", "sex_male"}
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["auto", "synthetic://?seed=1", "tcp://0.0.0.0:5556", "1e-3", "fp16", "INFO"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(NAMES), inner, max_size=4),
    max_leaves=16,
)
CONFIGS = st.dictionaries(
    st.sampled_from(NAMES),
    st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=5) | st.lists(VALUES, max_size=3) | VALUES,
    max_size=5,
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(CONFIGS)
def test_fuzz_agent_config_mappings(data: dict[str, Any]) -> None:
    """Any mapping of sections gives an AgentConfig or a ConfigError naming the file — nothing else."""
    try:
        cfg = parse_agent_config(data, "fuzz.yaml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.yaml")
    else:
        assert isinstance(cfg, AgentConfig)


OVERRIDE_KEYS = st.sampled_from(
    [
        "worker.count",
        "worker.k",
        "streams.0.fps",
        "streams.0.source",
        "streams.3.id",
        "streams.0.demographics.age_years",
        "streams.0.region",
        "hub",
        "hub.max_gap_s",
        "cycles.hr_min_bpm",
        "windows.status_period_s",
        "transport.publish",
        "a.b.c",
        ".",
        "worker..k",
        "streams.x",
    ]
) | st.text(max_size=12)
OVERRIDE_VALUES = st.sampled_from(
    [
        "1",
        "-1",
        "1e400",
        ".nan",
        ".inf",
        "[",
        "{a: 1}",
        "[1, 2, 3, 4]",
        "null",
        "true",
        "*a",
        "1: 2",
        "{1: 2}",
    ]
) | st.text(max_size=10)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(OVERRIDE_KEYS, OVERRIDE_VALUES).map("=".join) | st.text(max_size=16), max_size=4))
def test_fuzz_set_overrides(overrides: list[str]) -> None:
    try:
        cfg = load_agent_config(None, overrides)
    except ConfigError as e:
        assert str(e).startswith(("command line", "defaults")), str(e)
    else:
        assert isinstance(cfg, AgentConfig)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
        CONFIGS.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    ),
    st.booleans(),
)
def test_fuzz_yaml_files(text: str, as_bytes: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "agent.yaml"
        if as_bytes:
            path.write_bytes(text.encode("latin-1", "replace"))
        else:
            path.write_text(text, encoding="utf-8")
        try:
            cfg = load_agent_config(path)
        except ConfigError as e:
            assert str(e).startswith(str(path)), str(e)
        else:
            assert isinstance(cfg, AgentConfig)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("worker:\n  count: many\n", r"agent\.yaml:worker\.count: expected an integer, got 'many'"),
        (
            "streams:\n  - demographics: {age_years: old}\n",
            r"streams\[0\]\.demographics\.age_years: expected a number",
        ),
        ("hub:\n  max_gap_s: .nan\n", r"hub\.max_gap_s: expected a finite number, got nan"),
        ("cycles:\n  hr_min_bpm: 1e999\n", r"cycles\.hr_min_bpm: expected a finite number"),
        ("hub:\n  max_gap_s: " + "9" * 400 + "\n", r"hub\.max_gap_s: expected a number"),
        ("streams:\n  - region: [0, 0, x, 10]\n", r"streams\[0\]\.region"),
        ("1: 2\nworker: {}\n", r"agent\.yaml: key 1 is not a name"),
        ("worker: {null: 3}\n", r"agent\.yaml: key None in worker is not a name"),
        ("worker: [unclosed\n", r"agent\.yaml: not valid YAML"),
        ("worker: " + "[" * 3000 + "]" * 3000 + "\n", r"agent\.yaml: not valid YAML"),
        ("- just\n- a list\n", r"agent\.yaml: top level must be a mapping"),
    ],
    ids=[
        "int",
        "demo-value",
        "nan",
        "inf",
        "huge-int",
        "region-item",
        "int-key",
        "null-key",
        "yaml",
        "deep",
        "list",
    ],
)
def test_bad_config_files_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_agent_config(path)


def test_unreadable_config_files(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=r"binary\.yaml: not UTF-8 text"):
        load_yaml(binary)
    with pytest.raises(ConfigError, match=rf"{tmp_path}: cannot be read"):
        load_yaml(tmp_path)
    # The "billion laughs": 10 aliases deep would be 10^9 nodes if walked naively.
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text("\n".join([*bomb, "worker: {count: *a9}"]) + "\n")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="unknown section"):
        load_agent_config(laughs)
    assert time.monotonic() - start < 5.0


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "--set", "nonsense"), "override 'nonsense' must look like section.key=value"),
        (("frobnicate",), "edge-agent: error: argument VERB: invalid choice: 'frobnicate'"),
        (("run", "--seconds", "abc"), "edge-agent run: error: argument --seconds: 'abc' is not a number"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(args: tuple[str, ...], message: str) -> None:
    done = _cli(*args)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--seconds", "-5"], "argument --seconds: '-5' is not a number of seconds > 0"),
        (["run", "--seconds", "nan"], "argument --seconds: 'nan' is not a number of seconds > 0"),
        (["demo", "--seconds", "inf"], "argument --seconds: 'inf' is not a number of seconds > 0"),
        (
            ["subscribe", "--connect", "tcp://a:1", "--count", "0"],
            "argument --count: '0' is not an integer >= 1",
        ),
        (
            ["subscribe", "--connect", "localhost:5556"],
            "argument --connect: 'localhost:5556' is not a ZeroMQ endpoint",
        ),
        (["monitor", "--connect", "tcp://a:1", "--stale-after", "0"], "argument --stale-after: '0'"),
        (["worker", "--connect", "hub"], "argument --connect: 'hub' is not a ZeroMQ endpoint"),
        (["demo", "--publish", "5556"], "argument --publish: '5556' is not a ZeroMQ endpoint"),
        (["simulate", "--out", "x", "--n", "-2"], "argument --n: '-2' is not an integer >= 1"),
        (["export", "--k", "1.5"], "argument --k: '1.5' is not an integer >= 1"),
        (["run", "--bogus"], "unrecognized arguments: --bogus"),
        (["run", "--set"], "argument --set: expected one argument"),
    ],
)
def test_bad_arguments_are_one_line_errors_with_status_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "see `edge-agent" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--set", "worker.count=-1"], "worker.count: must be >= 0"),
        (["run", "--set", "worker.bogus=1"], "worker: unknown key(s) ['bogus']"),
        (["run", "--set", "streams.0.fps=["], "override 'streams.0.fps=[': the value is not valid YAML"),
        (["run", "--set", "streams.4.fps=30"], "'4' is not an index of a list of 1"),
        (["run", "--set", "hub.max_gap_s=.nan"], "hub.max_gap_s: expected a finite number"),
        (["run", "--config", "/nonexistent/agent.yaml"], "/nonexistent/agent.yaml: no such config file"),
        (
            ["run", "--source", "/nonexistent/a4c.avi"],
            "streams[0] (bed1).source: /nonexistent/a4c.avi: no such file",
        ),
        (["demo", "--source", "synthetic://?ef=500"], "ef='500' must be a number in [5, 90]"),
        (["run", "--source", "notes.txt"], "cannot tell the file type from the suffix '.txt'"),
        (["run", "--source", "ftp://host/a.avi"], "unknown source scheme 'ftp'"),
    ],
)
def test_bad_configurations_on_the_command_line_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-agent: configuration error: ") and err.count("\n") == 1
    assert message in err


def test_a_video_with_no_ultrasound_sector_is_reported_within_seconds(tmp_path: Path) -> None:
    """Frames arrive but none has a sector (noise: nothing sector-shaped moves): the stream's status
    says no_sector and the capture logs why, with the fix, within a few seconds."""
    path = tmp_path / "noise.avi"
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (320, 240))
    for _ in range(60):
        writer.write(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    writer.release()
    cfg = load_agent_config(
        None,
        ["transport.publish=ipc://{run}/publish", "supervisor.log_level=WARNING", "worker.count=0"],
        sources=[str(path)],
    )
    agent = Agent(cfg)
    agent.start()
    states: list[str] = []
    try:
        with Subscriber(agent.endpoints["publish"], topics=["status."]) as sub:
            end = time.monotonic() + 12.0
            while time.monotonic() < end and "no_sector" not in states:
                agent.check()
                msg = sub.recv(0.1)
                if msg is not None:
                    states.append(msg["signal"])
    finally:
        agent.stop()
    assert "no_sector" in states, states
    assert states.index("no_sector") <= 8  # one status a second, from the stream's start
