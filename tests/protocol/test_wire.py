"""Tests for edge_agent.protocol.wire: round trips, zero-copy decoding, every refusal, and decoder fuzzing."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_agent.core.demographics import DEMOGRAPHIC_FIELDS, demographics_vector
from edge_agent.model import posterior
from edge_agent.protocol import wire
from edge_agent.protocol.wire import WireError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- builders


def make_window(frames: np.ndarray | None = None, **overrides: Any) -> wire.Window:
    if frames is None:
        frames = np.random.default_rng(0).integers(0, 256, wire.WINDOW_SHAPE, dtype=np.uint8)
    fields: dict[str, Any] = {
        "stream": "bed-1_a2",
        "seq": 7,
        "frame_seq": (100, 151),
        "t": (12.5, 13.52),
        "t_sent": 13.6,
        "fps": 50.0,
        "hr_bpm": 58.8,
        "beat": "ed_ed",
        "demo": {"age_years": 61.0, "sex_male": 1.0},
        "truth": {"ef": 55.0},
    }
    return wire.Window(frames=frames, **{**fields, **overrides})


def summary(seed: int = 0) -> dict[str, Any]:
    samples = np.random.default_rng(seed).normal(52.0, 6.0, size=40)
    return posterior.summarize(samples).to_dict()


def estimate_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "seq": 7,
        "frame_seq": [100, 151],
        "t": [12.5, 13.52],
        "t_ready": 13.6,
        "t_published": 13.7,
        "beat": summary(0),
        "running": {**summary(1), "n_beats": 5},
        "hr_bpm": 58.8,
        "backend": "torch",
        "latency_ms": 180.0,
        "stages": {"detect": 150.0, "infer": 20.0},
        "reliable": True,
        "ood_score": 0.42,
        "beat_ood_score": 0.57,
        "truth": {"ef": 55.0},
    }
    return {**body, **overrides}


def status_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "t": 20.0,
        "fps": 49.8,
        "hr_bpm": None,
        "signal": "ok",
        "windows_dropped": 0,
        "frames_dropped": 3,
        "seq_gaps": 1,
    }
    return {**body, **overrides}


def heartbeat_body(**overrides: Any) -> dict[str, Any]:
    return {**{"host": "edge-01.local", "pid": 4242, "uptime_s": 12.25, "t": 30.0}, **overrides}


def with_map(parts: Sequence[Any], index: int, change: Callable[[dict[str, Any]], None]) -> list[Any]:
    """Unpack the msgpack map at ``parts[index]``, let ``change`` edit it, and pack it back."""
    data = msgpack.unpackb(bytes(parts[index]), raw=False)
    change(data)
    out = list(parts)
    out[index] = msgpack.packb(data, use_bin_type=True)
    return out


def setter(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value

    return change


def deleter(path: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        for key in path[:-1]:
            data = data[key]
        del data[path[-1]]

    return change


# ---------------------------------------------------------------- window round trips


def test_window_round_trip_is_bit_identical_and_zero_copy() -> None:
    window = make_window()
    parts = wire.encode_window(window)
    assert len(parts) == 2
    # Encoding hands ZeroMQ a view of the caller's array, not a copy.
    assert isinstance(parts[1], memoryview)
    assert np.shares_memory(np.asarray(parts[1]), window.frames)

    received = bytearray(parts[1])  # what a socket hands over: a fresh buffer
    out = wire.decode_window([bytes(parts[0]), received])
    assert out.frames.shape == wire.WINDOW_SHAPE and out.frames.dtype == np.uint8
    assert np.array_equal(out.frames, window.frames)
    assert np.shares_memory(out.frames, np.frombuffer(received, dtype=np.uint8))
    assert not out.frames.flags.writeable
    for name in ("stream", "seq", "frame_seq", "t", "t_sent", "fps", "hr_bpm", "beat", "demo", "truth"):
        assert getattr(out, name) == getattr(window, name), name
    assert out.frame_seq == (100, 151) and out.t == (12.5, 13.52)


def test_window_decodes_a_zmq_frame_like_object_without_copying() -> None:
    class FrameLike:  # the part of zmq.Frame the decoder relies on
        def __init__(self, data: bytes) -> None:
            self.buffer = memoryview(data)

    window = make_window()
    header, pixels = wire.encode_window(window)
    received = bytes(pixels)
    out = wire.decode_window([FrameLike(bytes(header)), FrameLike(received)])
    assert np.array_equal(out.frames, window.frames)
    assert np.shares_memory(out.frames, np.frombuffer(received, dtype=np.uint8))


def test_window_header_is_msgpack_with_the_documented_keys() -> None:
    header = msgpack.unpackb(wire.encode_window(make_window())[0], raw=False)
    assert header == {
        "v": 2,
        "kind": "window",
        "stream": "bed-1_a2",
        "seq": 7,
        "frame_seq": [100, 151],
        "t": [12.5, 13.52],
        "t_ready": 13.52,
        "t_sent": 13.6,
        "shape": [32, 112, 112],
        "dtype": "uint8",
        "fps": 50.0,
        "hr_bpm": 58.8,
        "beat": "ed_ed",
        "view": 0,
        "demo": {"age_years": 61.0, "sex_male": 1.0},
        "truth": {"ef": 55.0},
    }
    assert wire.SCHEMA_VERSION == 2


def test_result_round_trip_carries_the_window_metadata_and_samples() -> None:
    window = make_window(view=3)
    samples = np.linspace(30.0, 60.0, 40)
    parts = wire.encode_result(window, samples, "torch", 41.5, 20.0)
    header, got = wire.decode_result([bytes(p) for p in parts])
    assert got.dtype == np.float32 and np.allclose(got, samples)
    assert header["stream"] == window.stream and header["seq"] == 7 and header["view"] == 3
    assert header["frame_seq"] == [100, 151] and header["truth"] == {"ef": 55.0}
    assert header["backend"] == "torch" and header["infer_ms"] == 41.5 and header["n_samples"] == 40
    with pytest.raises(wire.WireError, match="n_samples 40 float32 need 160"):
        wire.decode_result([bytes(parts[0]), bytes(parts[1])[:-4]])
    with pytest.raises(wire.WireError, match="EF in"):
        wire.decode_result(wire.encode_result(window, samples + 100.0, "torch", 1.0, 1.0))
    with pytest.raises(wire.WireError, match="finite"):
        wire.encode_result(window, np.array([np.nan]), "torch", 1.0, 1.0)


def test_window_without_optional_maps_omits_them() -> None:
    window = make_window(demo={}, truth={}, hr_bpm=None, beat="fixed")
    parts = wire.encode_window(window)
    header = msgpack.unpackb(parts[0], raw=False)
    assert "demo" not in header and "truth" not in header and header["hr_bpm"] is None
    out = wire.decode_window(parts)
    assert out.demo == {} and out.truth == {} and out.hr_bpm is None and out.beat == "fixed"
    values, mask = out.demographics_arrays()
    assert values.tolist() == [0.0, 0.0, 0.0, 0.0] and mask.tolist() == [False] * 4


def test_demographics_arrays_follow_the_model_order() -> None:
    out = wire.decode_window(wire.encode_window(make_window(demo={"height_cm": 172.0, "sex_male": 0.0})))
    values, mask = out.demographics_arrays()
    assert DEMOGRAPHIC_FIELDS == ("age_years", "sex_male", "weight_kg", "height_cm")
    assert values.dtype == np.float32 and mask.dtype == np.bool_
    assert values.tolist() == [0.0, 0.0, 0.0, 172.0]
    assert mask.tolist() == [False, True, False, True]
    expected = demographics_vector(height_cm=172.0, sex_male=0.0)
    assert np.array_equal(values, expected[0]) and np.array_equal(mask, expected[1])


def test_window_normalises_numpy_and_int_fields() -> None:
    window = make_window(seq=np.int64(3), fps=50, t_sent=np.float32(2.5), frame_seq=[1, 2])
    assert type(window.seq) is int and type(window.fps) is float and type(window.t_sent) is float
    assert window.frame_seq == (1, 2)


def test_strided_frames_are_sent_contiguous() -> None:
    base = np.arange(32 * 112 * 224, dtype=np.uint32).astype(np.uint8).reshape(32, 112, 224)
    strided = base[:, :, ::2]
    out = wire.decode_window(wire.encode_window(make_window(frames=strided)))
    assert np.array_equal(out.frames, strided)


def test_other_shapes_decode_only_when_the_consumer_allows() -> None:
    small = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    parts = wire.encode_window(make_window(frames=small))
    with pytest.raises(WireError, match=r"window\.shape.*\[32, 112, 112\]"):
        wire.decode_window(parts)
    assert np.array_equal(wire.decode_window(parts, expected_shape=None).frames, small)
    assert wire.decode_window(parts, expected_shape=(2, 3, 4)).frames.shape == (2, 3, 4)


# ---------------------------------------------------------------- window refusals


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("kind",), "estimate", "window.kind"),
        (("stream",), "", "window.stream"),
        (("stream",), "bed 1", "window.stream"),
        (("stream",), "x" * 65, "window.stream"),
        (("stream",), 5, "window.stream"),
        (("seq",), -1, "window.seq"),
        (("seq",), 1.5, "window.seq"),
        (("seq",), True, "window.seq"),
        (("seq",), "7", "window.seq"),
        (("frame_seq",), [151, 100], "window.frame_seq"),
        (("frame_seq",), [100], "window.frame_seq"),
        (("frame_seq",), [-1, 100], "window.frame_seq[0]"),
        (("t",), [math.nan, 13.0], "window.t[0]"),
        (("t",), [12.0, math.inf], "window.t[1]"),
        (("t",), [14.0, 13.0], "window.t"),
        (("t_sent",), math.nan, "window.t_sent"),
        (("t_sent",), -math.inf, "window.t_sent"),
        (("t_sent",), None, "window.t_sent"),
        (("shape",), [32, 112], "window.shape"),
        (("shape",), [65, 112, 112], "window.shape[0]"),
        (("shape",), [32, 1025, 112], "window.shape[1]"),
        (("shape",), [32, 112, 0], "window.shape[2]"),
        (("shape",), [32, 112, 112.0], "window.shape[2]"),
        (("dtype",), "float32", "window.dtype"),
        (("dtype",), "<u1", "window.dtype"),
        (("fps",), 0, "window.fps"),
        (("fps",), -50.0, "window.fps"),
        (("hr_bpm",), 0.0, "window.hr_bpm"),
        (("hr_bpm",), "72", "window.hr_bpm"),
        (("beat",), 3, "window.beat"),
        (("beat",), "", "window.beat"),
        (("demo",), None, "window.demo"),
        (("demo",), {"bmi": 22.0}, "window.demo"),
        (("demo", "sex_male"), 2.0, "window.demo.sex_male"),
        (("demo", "age_years"), math.nan, "window.demo.age_years"),
        (("demo", "weight_kg"), -70.0, "window.demo.weight_kg"),
        (("truth",), [55.0], "window.truth"),
        (("truth", "ef"), math.inf, "window.truth.ef"),
        (("truth", "ef"), "55", "window.truth.ef"),
        (("extra_key",), 1, "extra_key"),
    ],
)
def test_window_header_refusals_name_the_field(path: tuple[str, ...], value: Any, field: str) -> None:
    parts = with_map(wire.encode_window(make_window()), 0, setter(path, value))
    with pytest.raises(WireError) as info:
        wire.decode_window(parts)
    assert field in str(info.value)


@pytest.mark.parametrize("key", ["v", "kind", "stream", "seq", "frame_seq", "t", "t_sent", "shape", "dtype"])
def test_window_missing_key_is_named(key: str) -> None:
    parts = with_map(wire.encode_window(make_window()), 0, deleter((key,)))
    with pytest.raises(WireError, match=rf"window\.{key}\b"):
        wire.decode_window(parts)


@pytest.mark.parametrize("version", [0, 1, 3, "2", 2.0, True, None])
def test_window_other_version_names_both_versions(version: Any) -> None:
    parts = with_map(wire.encode_window(make_window()), 0, setter(("v",), version))
    with pytest.raises(WireError, match=r"window\.v: schema version .* not supported.*speaks version 2"):
        wire.decode_window(parts)


def test_version_is_checked_before_the_keys() -> None:
    # A v3 header may have other keys: the error must blame the version, not a key.
    parts = with_map(wire.encode_window(make_window()), 0, lambda h: h.update(v=3, new_field=1))
    with pytest.raises(WireError, match=r"window\.v: schema version 3"):
        wire.decode_window(parts)


@pytest.mark.parametrize("delta", [-1, 1, -wire.WINDOW_SHAPE[2]])
def test_pixel_buffer_must_match_the_shape_exactly(delta: int) -> None:
    header, pixels = wire.encode_window(make_window())
    data = bytes(pixels)
    wrong = data[:delta] if delta < 0 else data + b"\0" * delta
    with pytest.raises(WireError, match=r"window pixels: \d+ bytes.*needs 401408"):
        wire.decode_window([header, wrong])


@pytest.mark.parametrize("count", [0, 1, 3])
def test_window_needs_two_frames(count: int) -> None:
    header, pixels = wire.encode_window(make_window())
    with pytest.raises(WireError, match=r"window: expected 2 frames"):
        wire.decode_window([header, pixels, b""][:count])


def test_oversized_header_is_refused_before_parsing() -> None:
    header = msgpack.packb({"v": 2, "pad": "x" * wire.MAX_HEADER_BYTES})
    with pytest.raises(WireError, match=r"window header: \d+ bytes exceeds the 65536-byte limit"):
        wire.decode_window([header, b""])


class Boom:
    """Unpickling this would run code: the decoders must never get that far."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, ("raise SystemExit('unpickled!')",))


@pytest.mark.parametrize(
    "header",
    [
        pickle.dumps(Boom()),
        pickle.dumps({"v": 2, "kind": "window"}),
        b"",
        b"\xc1",  # reserved msgpack byte
        msgpack.packb([1, "window"]),
        msgpack.packb({"v": 2}) + b"\x00",  # trailing bytes
        msgpack.packb({1: "int key"}),
        msgpack.packb({"v": 2, "kind": "window", "truth": {"ef": msgpack.ExtType(1, b"x")}}),
        msgpack.packb({"v": 2, "kind": "window", "stream": b"bytes"}, use_bin_type=True),
        msgpack.packb({"v": 2, "kind": "window", "big": list(range(wire.MAX_CONTAINER_LEN + 1))}),
        msgpack.packb({"v": 2, "kind": "window", "t_sent": msgpack.Timestamp(1, 0)}, datetime=False),
        msgpack.packb({"v": 2, "kind": "window", "\udcff": 1}, unicode_errors="surrogateescape"),
        # 1000 nested arrays: within msgpack's stack limit, beyond a plain repr()'s recursion limit.
        b"\x83"  # a map of 3: v, kind, and a stream nested 1000 arrays deep
        + b"".join(msgpack.packb(x) for x in ("v", 1, "kind", "window", "stream"))
        + b"\x91" * 1000
        + b"\xc0",
    ],
    ids=[
        "pickle-rce",
        "pickle-dict",
        "empty",
        "reserved-byte",
        "array",
        "trailing-bytes",
        "int-key",
        "ext-type",
        "bin-value",
        "long-array",
        "timestamp",
        "bad-utf8",
        "deep-nesting",
    ],
)
def test_hostile_or_broken_headers_raise_wire_error(header: bytes) -> None:
    pixels = bytes(math.prod(wire.WINDOW_SHAPE))
    with pytest.raises(WireError, match=r"^window"):
        wire.decode_window([header, pixels])


@pytest.mark.parametrize(
    "frame",
    ["a string", 12, None, np.zeros((4, 4), dtype=np.uint8)[:, ::2]],
    ids=["str", "int", "none", "strided"],
)
def test_frames_that_are_not_contiguous_bytes_are_refused(frame: Any) -> None:
    header, _ = wire.encode_window(make_window())
    with pytest.raises(WireError, match=r"window pixels: expected a C-contiguous bytes-like frame"):
        wire.decode_window([header, frame])


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"frames": np.zeros(wire.WINDOW_SHAPE, dtype=np.float32)}, "window.frames"),
        ({"frames": np.zeros((32, 112), dtype=np.uint8)}, "window.frames.shape"),
        ({"frames": np.zeros((65, 8, 8), dtype=np.uint8)}, "window.frames.shape[0]"),
        ({"frames": [[[0]]]}, "window.frames"),
        ({"seq": -3}, "window.seq"),
        ({"stream": "bed/1"}, "window.stream"),
        ({"t": (1.0, math.nan)}, "window.t[1]"),
        ({"demo": {"Age": 40.0}}, "window.demo"),
        ({"truth": {f"k{i}": 1.0 for i in range(wire.MAX_TRUTH_KEYS + 1)}}, "window.truth"),
        ({"seq": 2**63}, "window.seq"),
        ({"fps": 10**400}, "window.fps"),
    ],
)
def test_bad_windows_are_refused_where_they_are_made(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(WireError) as info:
        make_window(**overrides)
    assert str(info.value).startswith(field)


# ---------------------------------------------------------------- published messages


def test_summary_keys_are_those_of_posterior_summary() -> None:
    assert list(wire.SUMMARY_CHECKS) == list(summary().keys())


def test_estimate_round_trip() -> None:
    body = estimate_body()
    parts = wire.encode_estimate("bed-1", body)
    assert parts[0] == b"lvef.bed-1."
    out = wire.decode_estimate([bytes(p) for p in parts])
    assert out == {"v": 2, "kind": "estimate", "stream": "bed-1", **body}
    assert list(out["beat"]) == list(summary().keys())
    assert wire.decode_published(parts) == out


def test_estimate_without_truth_and_with_numpy_values() -> None:
    body = estimate_body(hr_bpm=None, latency_ms=np.float32(12.5), seq=np.int32(9))
    del body["truth"]
    out = wire.decode_estimate(wire.encode_estimate("s", body))
    assert "truth" not in out and out["hr_bpm"] is None
    assert out["latency_ms"] == 12.5 and out["seq"] == 9


def test_status_round_trip() -> None:
    parts = wire.encode_status("bed-1", status_body())
    assert parts[0] == b"status.bed-1."
    out = wire.decode_status(parts)
    assert out == {"v": 2, "kind": "status", "stream": "bed-1", **status_body()}
    assert wire.decode_published(parts) == out


def test_heartbeat_round_trip() -> None:
    parts = wire.encode_heartbeat(heartbeat_body())
    assert parts[0] == b"heartbeat"
    out = wire.decode_heartbeat(parts)
    assert out == {"v": 2, "kind": "heartbeat", **heartbeat_body()}
    assert wire.decode_published(parts) == out


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (setter(("v",), 3), "estimate.v"),
        (setter(("kind",), "status"), "estimate.kind"),
        (setter(("stream",), "bed-2"), "estimate.stream"),
        (setter(("seq",), -1), "estimate.seq"),
        (setter(("t_published",), math.nan), "estimate.t_published"),
        (setter(("latency_ms",), math.inf), "estimate.latency_ms"),
        (setter(("backend",), ""), "estimate.backend"),
        (deleter(("beat", "q05")), "estimate.beat.q05"),
        (deleter(("running", "n_beats")), "estimate.running.n_beats"),
        (deleter(("running", "ci95")), "estimate.running.ci95"),
        (setter(("beat", "n_beats"), 3), "estimate.beat"),
        (setter(("beat", "mean"), math.nan), "estimate.beat.mean"),
        (setter(("beat", "mean"), 101.0), "estimate.beat.mean"),
        (setter(("beat", "ci90"), [60.0, 40.0]), "estimate.beat.ci90"),
        (setter(("beat", "p_ef_lt_40"), 1.5), "estimate.beat.p_ef_lt_40"),
        (setter(("beat", "multimodal"), 1), "estimate.beat.multimodal"),
        (setter(("beat", "n_samples"), 0), "estimate.beat.n_samples"),
        (setter(("running", "n_beats"), 0), "estimate.running.n_beats"),
        (setter(("beat",), None), "estimate.beat"),
        (deleter(("hr_bpm",)), "estimate.hr_bpm"),
    ],
)
def test_estimate_refusals_name_the_field(change: Callable[[dict[str, Any]], None], field: str) -> None:
    parts = with_map(wire.encode_estimate("bed-1", estimate_body()), 1, change)
    with pytest.raises(WireError) as info:
        wire.decode_estimate(parts)
    assert str(info.value).startswith(field)
    # The producer side refuses the same body before it reaches a socket.
    body = msgpack.unpackb(parts[1], raw=False)
    with pytest.raises(WireError, match=r"^estimate"):
        wire.encode_estimate("bed-1", body)


@pytest.mark.parametrize(
    ("topic", "pattern"),
    [
        (b"status.bed-1", r"topic: 'status.bed-1' is not a estimate topic"),
        (b"lvef.", r"topic stream"),
        (b"lvef.bed 1.", r"topic stream"),
        (b"lvef.bed.1.", r"topic stream"),  # v2: no dot inside a stream id
        (b"lvef.bed-1", r"does not end with '\.'"),  # a v1 topic
        (b"lvef.\xff", r"topic: not ASCII"),
        (b"lvef." + b"x" * wire.MAX_TOPIC_BYTES, r"topic: \d+ bytes exceeds"),
    ],
)
def test_estimate_topic_refusals(topic: bytes, pattern: str) -> None:
    _, body = wire.encode_estimate("bed-1", estimate_body())
    with pytest.raises(WireError, match=pattern):
        wire.decode_estimate([topic, body])


def test_body_limit_and_frame_count() -> None:
    big = msgpack.packb({"v": 2, "pad": "x" * wire.MAX_BODY_BYTES})
    with pytest.raises(WireError, match=r"estimate body: \d+ bytes exceeds the 262144-byte limit"):
        wire.decode_estimate([b"lvef.a", big])
    with pytest.raises(WireError, match=r"topic message: expected 2 frames"):
        wire.decode_published([b"lvef.a"])


def test_encoders_refuse_bad_streams_and_bodies() -> None:
    with pytest.raises(WireError, match=r"^estimate\.stream"):
        wire.encode_estimate("bed/1", estimate_body())
    with pytest.raises(WireError, match=r"^estimate\.stream: body names 'b'"):
        wire.encode_estimate("a", estimate_body(stream="b"))
    with pytest.raises(WireError, match=r"^estimate: unknown key 'confidence'"):
        wire.encode_estimate("a", estimate_body(confidence=0.9))
    with pytest.raises(
        WireError,
        match=r"^status\.signal: expected one of \['ok', 'lost', 'stale', 'blank', 'frozen', 'saturated', "
        r"'no_sector'\]",
    ):
        wire.encode_status("a", status_body(signal="bad"))
    with pytest.raises(WireError, match=r"^status\.windows_dropped"):
        wire.encode_status("a", status_body(windows_dropped=-1))
    with pytest.raises(WireError, match=r"^status\.fps"):
        wire.encode_status("a", status_body(fps=math.nan))
    with pytest.raises(WireError, match=r"^heartbeat\.pid"):
        wire.encode_heartbeat(heartbeat_body(pid=0))
    with pytest.raises(WireError, match=r"^heartbeat\.uptime_s"):
        wire.encode_heartbeat(heartbeat_body(uptime_s=-1.0))
    with pytest.raises(WireError, match=r"^heartbeat\.host"):
        wire.encode_heartbeat(heartbeat_body(host=""))


def test_topic_and_body_kinds_must_agree() -> None:
    _, status = wire.encode_status("a", status_body())
    with pytest.raises(WireError, match=r"^estimate\.kind"):
        wire.decode_estimate([b"lvef.a", status])
    _, heartbeat = wire.encode_heartbeat(heartbeat_body())
    with pytest.raises(WireError, match=r"^topic: expected 'heartbeat'"):
        wire.decode_heartbeat([b"heartbeat2", heartbeat])
    with pytest.raises(WireError, match=r"^topic: 'window' is none of"):
        wire.decode_published([b"window", heartbeat])


# ---------------------------------------------------------------- typed messages

FULL_STATUS = status_body(
    queue=2,
    pub_seq=9,
    beat_source="principal",
    **dict.fromkeys((*wire.FRAME_COUNTERS, *wire.DETECTOR_COUNTERS, *wire.HUB_COUNTERS), 4),
)


def typed_examples() -> list[tuple[Any, list[Any]]]:
    """(typed message, the same message from the map encoders) for every published kind."""
    return [
        (wire.Estimate(stream="bed-1", **estimate_body()), wire.encode_estimate("bed-1", estimate_body())),
        (wire.Status(stream="bed-1", **status_body()), wire.encode_status("bed-1", status_body())),
        (wire.Status(stream="bed-1", **FULL_STATUS), wire.encode_status("bed-1", FULL_STATUS)),
        (wire.Heartbeat(**heartbeat_body()), wire.encode_heartbeat(heartbeat_body())),
        (
            wire.Heartbeat(**heartbeat_body(invalid=0, pub_seq=3)),
            wire.encode_heartbeat(heartbeat_body(invalid=0, pub_seq=3)),
        ),
    ]


@pytest.mark.parametrize(("message", "parts"), typed_examples())
def test_typed_messages_encode_to_the_bytes_of_the_map_encoders(message: Any, parts: list[Any]) -> None:
    assert [bytes(p) for p in message.encode()] == [bytes(p) for p in parts]
    assert type(message).decode(parts) == message


def test_typed_fields_are_the_wire_keys() -> None:
    """Each typed message has a field per key of its map (v and kind aside), the Status one per counter."""
    keys = {
        wire.Estimate: wire.decode_estimate(
            wire.encode_estimate("a", estimate_body(pub_seq=1, demo={"age_years": 1.0}))
        ),
        wire.Status: wire.decode_status(wire.encode_status("a", FULL_STATUS)),
        wire.Heartbeat: wire.decode_heartbeat(wire.encode_heartbeat(heartbeat_body(invalid=0, pub_seq=0))),
    }
    for cls, message in keys.items():
        assert [f.name for f in dataclasses.fields(cls)] == [k for k in message if k not in ("v", "kind")], (
            cls
        )
    counters = (*wire.BASE_COUNTERS, *wire.FRAME_COUNTERS, *wire.DETECTOR_COUNTERS, *wire.HUB_COUNTERS)
    assert len(set(counters)) == 15 and set(counters) <= {f.name for f in dataclasses.fields(wire.Status)}
    with pytest.raises(WireError, match=r"^status: unknown key 'frames_lost'"):
        wire.encode_status("a", status_body(frames_lost=1))


def test_typed_messages_leave_unknown_optional_keys_off_the_wire() -> None:
    report = wire.Status(stream="bed-1", **status_body())  # a windower's report: no queue, no hub counters
    assert report.queue is None and report.windows_failed is None
    assert set(wire.decode_status(report.encode())) == {"v", "kind", "stream", *status_body()}
    estimate = wire.Estimate(stream="s", **{**estimate_body(), "truth": {}})
    assert estimate.pub_seq is None and "truth" not in wire.decode_estimate(estimate.encode())
    assert wire.Estimate.decode(estimate.encode()) == estimate


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: wire.Estimate(stream="s", **estimate_body(seq=-1)), "estimate.seq"),
        (
            lambda: wire.Estimate(stream="s", **estimate_body(beat={**summary(), "mean": 101.0})),
            "estimate.beat.mean",
        ),
        (lambda: wire.Estimate(stream="s/1", **estimate_body()), "estimate.stream"),
        (lambda: wire.Status(stream="s", **status_body(fps=math.nan)), "status.fps"),
        (lambda: wire.Status(stream="s", **status_body(signal="dim")), "status.signal"),
        (lambda: wire.Status(stream="s", **status_body(windows_failed=-1)), "status.windows_failed"),
        (lambda: wire.Heartbeat(**heartbeat_body(pid=0)), "heartbeat.pid"),
        (lambda: wire.Heartbeat(**heartbeat_body(invalid=True)), "heartbeat.invalid"),
    ],
)
def test_typed_construction_names_the_bad_field(build: Callable[[], Any], field: str) -> None:
    with pytest.raises(WireError) as info:
        build()
    assert str(info.value).startswith(field)


def test_typed_result_round_trip_and_refusals() -> None:
    window = make_window(view=3)
    samples = np.linspace(30.0, 60.0, 40)
    parts = wire.encode_result(window, samples, "torch", 41.5, 20.0)
    result = wire.Result.decode([bytes(p) for p in parts])
    assert result.samples.dtype == np.float32 and np.allclose(result.samples, samples)
    for name in (
        "stream",
        "seq",
        "frame_seq",
        "t",
        "t_ready",
        "t_sent",
        "fps",
        "hr_bpm",
        "beat",
        "view",
        "demo",
        "truth",
    ):
        assert getattr(result, name) == getattr(window, name), name
    assert (result.backend, result.infer_ms, result.t_done) == ("torch", 41.5, 20.0)
    assert [bytes(p) for p in result.encode()] == [bytes(p) for p in parts]
    meta = {f.name: getattr(window, f.name) for f in dataclasses.fields(wire.WindowMeta)}
    with pytest.raises(WireError, match=r"^result\.samples: every sample must be a finite EF"):
        wire.Result(**meta, backend="torch", infer_ms=1.0, t_done=1.0, samples=np.array([50.0, np.inf]))
    with pytest.raises(WireError, match=r"^result\.infer_ms"):
        wire.Result(**meta, backend="torch", infer_ms=-1.0, t_done=1.0, samples=samples)
    with pytest.raises(WireError, match=r"^result\.backend"):
        wire.Result(**meta, backend="", infer_ms=1.0, t_done=1.0, samples=samples)


# ---------------------------------------------------------------- hypothesis: round trips

STREAMS = st.from_regex(wire.STREAM_PATTERN, fullmatch=True)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
SEQS = st.integers(0, 2**63 - 1)


def ordered(values: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, Any]]:
    return st.tuples(values, values).map(lambda p: (min(p), max(p)))


def demo_maps() -> st.SearchStrategy[dict[str, float]]:
    values = {
        "age_years": st.floats(0, 120),
        "sex_male": st.sampled_from([0.0, 1.0]),
        "weight_kg": st.floats(0, 300),
        "height_cm": st.floats(0, 250),
    }
    return st.fixed_dictionaries({}, optional=values)


WINDOWS = st.builds(
    wire.Window,
    stream=STREAMS,
    seq=SEQS,
    frame_seq=ordered(SEQS),
    t=ordered(FINITE),
    t_sent=FINITE,
    fps=st.floats(min_value=0.0, exclude_min=True, allow_infinity=False),
    hr_bpm=st.none() | st.floats(min_value=0.0, exclude_min=True, allow_infinity=False),
    beat=st.sampled_from(["ed_ed", "fixed", "ed_period", "r_wave"]),
    frames=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=6)),
    demo=demo_maps(),
    truth=st.dictionaries(STREAMS, FINITE, max_size=wire.MAX_TRUTH_KEYS),
)


@FAST
@given(WINDOWS)
def test_window_round_trip_property(window: wire.Window) -> None:
    parts = wire.encode_window(window)
    received = [bytes(parts[0]), bytearray(parts[1])]
    out = wire.decode_window(received, expected_shape=None)
    assert np.array_equal(out.frames, window.frames) and out.frames.dtype == np.uint8
    assert np.shares_memory(out.frames, np.frombuffer(received[1], dtype=np.uint8))
    for name in ("stream", "seq", "frame_seq", "t", "t_sent", "fps", "hr_bpm", "beat", "demo", "truth"):
        assert getattr(out, name) == getattr(window, name), name


EF = st.floats(0.0, 100.0)
SUMMARIES = st.fixed_dictionaries(
    {
        "n_samples": st.integers(1, 1000),
        **{k: EF for k in ("mean", "median", "std", "q05", "q25", "q75", "q95")},
        "ci90": ordered(EF).map(list),
        "ci95": ordered(EF).map(list),
        "p_ef_lt_40": st.floats(0.0, 1.0),
        "p_ef_lt_50": st.floats(0.0, 1.0),
        "multimodal": st.booleans(),
    }
)
OOD_SCORES = st.none() | st.floats(min_value=0.0, allow_infinity=False, allow_nan=False)
ESTIMATES = st.fixed_dictionaries(
    {
        "seq": SEQS,
        "frame_seq": ordered(SEQS).map(list),
        "t": ordered(FINITE).map(list),
        "t_ready": FINITE,
        "t_published": FINITE,
        "beat": SUMMARIES,
        "running": st.tuples(SUMMARIES, st.integers(1, 10**6)).map(lambda p: {**p[0], "n_beats": p[1]}),
        "hr_bpm": st.none() | st.floats(min_value=1e-3, max_value=400.0),
        "backend": st.sampled_from(["torch", "onnxruntime", "tensorrt"]),
        "latency_ms": FINITE,
        "stages": st.dictionaries(st.sampled_from(["detect", "infer"]), FINITE),
        "reliable": st.booleans(),
        "ood_score": OOD_SCORES,
        "beat_ood_score": OOD_SCORES,
    },
    optional={"truth": st.dictionaries(STREAMS, FINITE, max_size=wire.MAX_TRUTH_KEYS)},
)


@FAST
@given(STREAMS, ESTIMATES)
def test_estimate_round_trip_property(stream: str, body: dict[str, Any]) -> None:
    out = wire.decode_published(wire.encode_estimate(stream, body))
    assert out == {"v": 2, "kind": "estimate", "stream": stream, **body}


@FAST
@given(STREAMS, ESTIMATES)
def test_typed_estimate_round_trip_property(stream: str, body: dict[str, Any]) -> None:
    estimate = wire.Estimate(stream=stream, **body)
    parts = estimate.encode()
    sent = {k: v for k, v in body.items() if k != "truth" or v}  # an empty truth map is left off
    assert [bytes(p) for p in parts] == [bytes(p) for p in wire.encode_estimate(stream, sent)]
    assert wire.Estimate.decode(parts) == estimate


COUNTS = st.integers(0, 2**63 - 1)
STATUSES = st.fixed_dictionaries(
    {
        "stream": STREAMS,
        "t": FINITE,
        "fps": st.floats(min_value=0.0, allow_infinity=False),
        "hr_bpm": st.none() | st.floats(min_value=1e-3, max_value=400.0),
        "signal": st.sampled_from(wire.SIGNAL_STATES),
        **dict.fromkeys(wire.BASE_COUNTERS, COUNTS),
    },
    optional={
        **dict.fromkeys(("queue", *wire.FRAME_COUNTERS, *wire.DETECTOR_COUNTERS, *wire.HUB_COUNTERS), COUNTS),
        "beat_source": st.sampled_from(wire.BEAT_SOURCES),
        "pub_seq": COUNTS,
    },
)


@FAST
@given(STATUSES)
def test_typed_status_round_trip_property(fields: dict[str, Any]) -> None:
    status = wire.Status(**fields)
    parts = status.encode()
    assert wire.decode_status(parts) == {"v": 2, "kind": "status", **fields}
    assert wire.Status.decode(parts) == status


@FAST
@given(WINDOWS, hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(0.0, 100.0, width=32)))
def test_typed_result_round_trip_property(window: wire.Window, samples: np.ndarray) -> None:
    result = wire.Result.decode(wire.encode_result(window, samples, "onnxruntime", 3.0, 4.0))
    assert np.array_equal(result.samples, samples)
    for f in dataclasses.fields(wire.WindowMeta):
        assert getattr(result, f.name) == getattr(window, f.name), f.name


# ---------------------------------------------------------------- hypothesis: fuzzing


def decode_any_window(parts: Sequence[Any]) -> wire.Window:
    return wire.decode_window(parts, expected_shape=None)


DECODERS = [
    decode_any_window,
    wire.decode_window,
    wire.decode_estimate,
    wire.decode_status,
    wire.decode_heartbeat,
    wire.decode_published,
    wire.decode_result,
    wire.decode_failure,
    wire.Result.decode,
    wire.Failure.decode,
    wire.Estimate.decode,
    wire.Status.decode,
    wire.Heartbeat.decode,
]
SMALL_FRAMES = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
BAD_INPUT_COUNTERS = {
    "frames_blank": 3,
    "frames_frozen": 40,
    "frames_saturated": 1,
    "windows_rejected": 2,
    "windows_failed": 1,
}
# (decoder, valid message as received bytes, index of its msgpack map)
VALID = [
    (decode_any_window, wire.encode_window(make_window(frames=SMALL_FRAMES)), 0),
    (wire.decode_estimate, wire.encode_estimate("bed-1", estimate_body()), 1),
    (wire.decode_status, wire.encode_status("bed-1", status_body()), 1),
    (wire.decode_status, wire.encode_status("bed-1", status_body(signal="frozen", **BAD_INPUT_COUNTERS)), 1),
    (wire.decode_heartbeat, wire.encode_heartbeat(heartbeat_body()), 1),
    (wire.decode_heartbeat, wire.encode_heartbeat(heartbeat_body(invalid=7)), 1),
    (
        wire.decode_result,
        wire.encode_result(make_window(), np.linspace(20.0, 60.0, 40), "torch", 9.0, 14.0),
        0,
    ),
    (wire.decode_failure, wire.encode_failure("bad_samples", "3 samples are NaN", make_window()), 0),
]
VALID = [(decode, [bytes(p) for p in parts], index) for decode, parts, index in VALID]


def only_wire_errors(parts: list[Any]) -> None:
    """Every decoder either returns or raises WireError; anything else fails the test."""
    for decode in DECODERS:
        with contextlib.suppress(WireError):
            decode(parts)


def test_fuzz_seeds_are_valid() -> None:
    for decode, parts, _ in VALID:
        decode(parts)


@FAST
@given(st.lists(st.binary(max_size=64), max_size=3))
def test_fuzz_arbitrary_frames(parts: list[bytes]) -> None:
    only_wire_errors(parts)


@FAST
@given(st.sampled_from(VALID), st.data())
def test_fuzz_truncated_messages(valid: tuple[Any, list[bytes], int], data: st.DataObject) -> None:
    decode, parts, _ = valid
    index = data.draw(st.integers(0, len(parts) - 1))
    cut = data.draw(st.integers(0, len(parts[index]) - 1))
    mutated = [*parts[:index], parts[index][:cut], *parts[index + 1 :]]
    only_wire_errors(mutated)
    with pytest.raises(WireError):  # a cut-off frame never passes as the message it was cut from
        decode(mutated)
    with pytest.raises(WireError):
        decode(parts[:index])


@FAST
@given(st.sampled_from(VALID), st.data())
def test_fuzz_byte_mutations(valid: tuple[Any, list[bytes], int], data: st.DataObject) -> None:
    _, parts, _ = valid
    index = data.draw(st.integers(0, len(parts) - 1))
    frame = bytearray(parts[index])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        at = data.draw(st.integers(0, max(len(frame) - 1, 0)))
        if op == "flip" and frame:
            frame[at] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            frame[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif frame:
            del frame[at]
    only_wire_errors([*parts[:index], bytes(frame), *parts[index + 1 :]])


MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@FAST
@given(st.sampled_from(VALID), st.data())
def test_fuzz_structural_mutations(valid: tuple[Any, list[bytes], int], data: st.DataObject) -> None:
    # Replace one value at any depth of the valid map with arbitrary msgpack: type confusion.
    _, parts, index = valid
    doc = msgpack.unpackb(parts[index], raw=False)
    node = doc
    while True:
        key = data.draw(st.sampled_from(sorted(node)))
        if isinstance(node[key], dict) and data.draw(st.booleans()):
            node = node[key]
            continue
        node[key] = data.draw(MSGPACK_VALUES)
        break
    packed = msgpack.packb(doc, use_bin_type=True)
    only_wire_errors([*parts[:index], packed, *parts[index + 1 :]])


@FAST
@given(MSGPACK_VALUES, st.lists(st.binary(max_size=32), max_size=2))
def test_fuzz_random_msgpack_documents(doc: Any, rest: list[bytes]) -> None:
    """Any msgpack document, as the first or second frame of a message, gives WireError or a value."""
    packed = msgpack.packb(doc, use_bin_type=True)
    only_wire_errors([packed, *rest])
    only_wire_errors([b"lvef.bed-1.", packed])
    only_wire_errors([b"heartbeat", packed])


def test_readme_documents_the_schema_the_code_enforces() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    doc = wire.__doc__
    assert doc is not None
    schema = doc[doc.index("Every map starts with") :].strip()
    assert schema in readme, "README's message schema differs from edge_agent/protocol/wire.py's docstring"


# ---------------------------------------------------------------- bad input: every float, samples, caps


def float_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths (keys and list indices) to every float in a decoded msgpack map, at any depth."""
    if isinstance(value, float):
        return [path]
    if isinstance(value, dict):
        return [p for key in sorted(value) for p in float_paths(value[key], (*path, key))]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in float_paths(item, (*path, i))]
    return []


def field_name(path: tuple[Any, ...]) -> str:
    """(t, 1) → "t[1]", (demo, age_years) → "demo.age_years": how the decoders name a field."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".")


NON_FINITE = [math.nan, math.inf, -math.inf]
FLOAT_CASES = [
    (decode, parts, index, path, bad)
    for decode, parts, index in VALID
    for path in float_paths(msgpack.unpackb(parts[index], raw=False))
    for bad in NON_FINITE
]


def test_every_float_field_of_every_message_is_covered() -> None:
    # The window's demo and truth, the result's timings, the estimate's summaries and stages.
    names = {field_name(path) for _d, _p, _i, path, _b in FLOAT_CASES}
    assert {"demo.age_years", "demo.sex_male", "truth.ef", "t[0]", "t[1]", "t_sent", "fps"} <= names
    assert {"infer_ms", "t_done", "beat.mean", "running.ci95[1]", "stages.detect", "uptime_s"} <= names
    assert len(FLOAT_CASES) > 3 * 60


@pytest.mark.parametrize(("decode", "parts", "index", "path", "bad"), FLOAT_CASES)
def test_nan_and_inf_in_every_float_field_are_refused_by_name(
    decode: Callable[..., Any], parts: list[bytes], index: int, path: tuple[Any, ...], bad: float
) -> None:
    def change(data: dict[str, Any]) -> None:
        node: Any = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = bad

    with pytest.raises(WireError) as info:
        decode(with_map(parts, index, change))
    assert field_name(path) in str(info.value) and "finite" in str(info.value)


def result_parts(samples: np.ndarray) -> list[bytes]:
    """A result header for len(samples) samples, with the raw float32 samples: what a broken worker
    (one that does not check its backend's output) would send."""
    header, _ = wire.encode_result(make_window(), np.full(len(samples), 50.0), "torch", 1.0, 2.0)
    return [bytes(header), np.asarray(samples, dtype=np.float32).tobytes()]


@FAST
@given(
    hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(0.0, 100.0, width=32)),
    st.data(),
)
def test_non_finite_or_out_of_range_samples_are_refused_at_both_ends(
    samples: np.ndarray, data: st.DataObject
) -> None:
    header, got = wire.decode_result(result_parts(samples))
    assert np.array_equal(got, samples) and header["n_samples"] == len(samples)
    bad = samples.copy()
    where = data.draw(st.lists(st.integers(0, len(bad) - 1), min_size=1, unique=True))
    bad[where] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf, -0.5, 100.5, 1e30]))
    with pytest.raises(WireError, match=r"^result samples: every sample must be a finite EF"):
        wire.decode_result(result_parts(bad))
    with pytest.raises(WireError, match=r"^result\.samples: every sample must be a finite EF"):
        wire.encode_result(make_window(), bad, "torch", 1.0, 2.0)
    with pytest.raises(WireError, match=r"^worker backend: every sample must be a finite EF"):
        wire.check_samples(bad.astype(np.float64), "worker backend")


def test_check_samples_counts_what_is_wrong() -> None:
    values = np.array([np.nan, np.inf, -np.inf, 120.0, -1.0, 50.0, 1e39])  # 1e39: beyond float32
    with pytest.raises(WireError) as info:
        wire.check_samples(values, "backend samples")
    assert str(info.value).endswith("of 7, 1 are NaN, 3 infinite and 2 outside [0, 100]")
    with pytest.raises(WireError, match="expected 1-4096 samples, got 0"):
        wire.check_samples(np.array([]))
    with pytest.raises(WireError, match="not an array of numbers"):
        wire.check_samples(["fifty"])
    assert wire.check_samples(np.array([[0.0, 100.0]])).tolist() == [0.0, 100.0]


def test_result_sample_count_is_capped_before_the_buffer_is_read() -> None:
    def change(data: dict[str, Any]) -> None:
        data["n_samples"] = wire.MAX_SAMPLES + 1

    parts = with_map(result_parts(np.full(4, 50.0)), 0, change)
    with pytest.raises(WireError, match=r"^result\.n_samples: must be an integer >= 1 and <= 4096"):
        wire.decode_result([parts[0], bytes(4 * (wire.MAX_SAMPLES + 1))])
    with pytest.raises(WireError, match=r"^result header: \d+ bytes exceeds the 65536-byte limit"):
        wire.decode_result([msgpack.packb({"v": 2, "pad": "x" * wire.MAX_HEADER_BYTES}), b""])


@FAST
@given(
    st.tuples(st.integers(-2, 2000), st.integers(-2, 2000), st.integers(-2, 2000)),
    st.sampled_from(["uint8", "float32", "<u1", "int8", "uint16", "", "UINT8"]),
)
def test_fuzz_flipped_shape_and_dtype(shape: tuple[int, int, int], dtype: str) -> None:
    """A header whose shape or dtype no longer matches the pixel buffer it came with is refused."""
    parts = wire.encode_window(make_window(frames=SMALL_FRAMES))
    flipped = with_map(parts, 0, lambda h: h.update(shape=list(shape), dtype=dtype))
    if list(shape) == [2, 3, 4] and dtype == "uint8":
        assert wire.decode_window(flipped, expected_shape=None).frames.shape == (2, 3, 4)
        return
    with pytest.raises(WireError, match=r"^window(\.shape|\.dtype| pixels)"):
        wire.decode_window(flipped, expected_shape=None)


@FAST
@given(st.sampled_from(VALID), st.integers(-(2**63), 2**64 - 1).filter(lambda v: v != wire.SCHEMA_VERSION))
def test_fuzz_version_bumps_are_refused_with_both_versions(
    valid: tuple[Any, list[bytes], int], version: int
) -> None:
    decode, parts, index = valid
    with pytest.raises(WireError, match=rf"\.v: schema version {version} is not supported.*speaks version 2"):
        decode(with_map(parts, index, setter(("v",), version)))


def test_failure_round_trip_and_refusals() -> None:
    window = make_window(seq=12)
    (part,) = wire.encode_failure("bad_samples", "x" * 2000, window)
    body = wire.decode_failure([part])
    assert body["reason"] == "bad_samples" and body["stream"] == window.stream and body["seq"] == 12
    assert body["detail"] == "x" * wire.MAX_DETAIL_CHARS  # cut, not refused: the worker's error text
    assert "stream" not in wire.decode_failure(wire.encode_failure("invalid_window", ""))
    with pytest.raises(
        WireError, match=r"^failure\.reason: expected one of \['invalid_window', 'bad_samples'\]"
    ):
        wire.encode_failure("oops", "x")
    with pytest.raises(WireError, match=r"^failure: expected 1 frame"):
        wire.decode_failure([part, part])
    with pytest.raises(WireError, match=r"^failure: \d+ bytes exceeds the 4096-byte limit"):
        wire.decode_failure([msgpack.packb({"v": 2, "kind": "failure", "detail": "y" * 5000})])
    with pytest.raises(WireError, match=r"^failure\.detail"):
        wire.decode_failure(with_map([part], 0, setter(("detail",), "z" * 501)))


def test_typed_failure_reads_what_the_worker_sent() -> None:
    (part,) = wire.encode_failure("bad_samples", "40 are NaN", make_window(seq=12))
    assert wire.Failure.decode([part]) == wire.Failure("bad_samples", "40 are NaN", "bed-1_a2", 12)
    unreadable = wire.Failure.decode(wire.encode_failure("invalid_window", "no msgpack"))
    assert unreadable.stream is None and unreadable.seq is None
    with pytest.raises(WireError, match=r"^failure\.detail"):
        wire.Failure("bad_samples", "")


def test_status_and_heartbeat_carry_the_bad_input_counters() -> None:
    body = status_body(signal="blank", **BAD_INPUT_COUNTERS)
    assert wire.decode_status(wire.encode_status("bed-1", body)) == {
        "v": 2,
        "kind": "status",
        "stream": "bed-1",
        **body,
    }
    for state in ("blank", "frozen", "saturated"):
        assert wire.decode_status(wire.encode_status("a", status_body(signal=state)))["signal"] == state
    for key in BAD_INPUT_COUNTERS:
        with pytest.raises(WireError, match=rf"^status\.{key}: must be an integer >= 0"):
            wire.encode_status("a", status_body(**{key: -1}))
    assert wire.decode_heartbeat(wire.encode_heartbeat(heartbeat_body(invalid=3)))["invalid"] == 3
    with pytest.raises(WireError, match=r"^heartbeat\.invalid: expected an integer"):
        wire.encode_heartbeat(heartbeat_body(invalid=1.5))


# ---------------------------------------------------------------- v2: topics, additive fields, JSON Schema


def test_a_subscriber_of_bed1_does_not_get_bed10() -> None:
    """Real PUB/SUB: the trailing dot makes a stream's topic no prefix of another's."""
    import zmq

    with zmq.Context() as ctx:
        pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        sub.subscribe(wire.estimate_topic("bed1").encode())
        sub.subscribe(wire.status_topic("bed1").encode())
        sub.connect(f"tcp://127.0.0.1:{port}")
        got: list[dict[str, Any]] = []
        for _ in range(200):  # the slow-joiner: publish until the subscription has arrived
            for stream in ("bed1", "bed10", "bed1x"):
                pub.send_multipart(wire.encode_estimate(stream, estimate_body()))
                pub.send_multipart(wire.encode_status(stream, status_body()))
            while sub.poll(10):
                got.append(wire.decode_published(sub.recv_multipart()))
            if len(got) >= 20:
                break
        for sock in (pub, sub):
            sock.close(linger=0)
    assert len(got) >= 20 and {m["stream"] for m in got} == {"bed1"}
    assert {m["kind"] for m in got} == {"estimate", "status"}
    assert wire.estimate_topic("bed1") == "lvef.bed1." and wire.status_topic("bed10") == "status.bed10."
    with pytest.raises(WireError, match="stream id"):
        wire.estimate_topic("bed.1")


def test_subscribers_skip_keys_a_later_publisher_adds_but_publishers_never_send_unknown_ones() -> None:
    topic, body = wire.encode_estimate("bed1", estimate_body())
    newer = msgpack.unpackb(body, raw=False) | {"new_field": [1, 2], "another": {"x": 1}}
    decoded = wire.decode_estimate([topic, msgpack.packb(newer)])
    assert decoded == wire.decode_estimate([topic, body])  # the unknown keys are dropped
    status_topic, status = wire.encode_status("bed1", status_body())
    newer_status = msgpack.unpackb(status, raw=False) | {"frames_warped": 3}
    assert "frames_warped" not in wire.decode_status([status_topic, msgpack.packb(newer_status)])
    with pytest.raises(WireError, match="unknown key 'new_field'"):
        wire.encode_estimate("bed1", {**estimate_body(), "new_field": 1})
    # Between edge-agent's own processes an unknown key is still an error.
    header, pixels = wire.encode_window(make_window())
    extra = msgpack.packb(msgpack.unpackb(header, raw=False) | {"new_field": 1})
    with pytest.raises(WireError, match="unknown key 'new_field'"):
        wire.decode_window([extra, pixels])


def test_the_json_schema_accepts_what_the_codec_sends_and_refuses_what_it_refuses() -> None:
    jsonschema = pytest.importorskip("jsonschema")  # in the dev extra
    schema = wire.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)

    def validator(kind: str):
        return jsonschema.Draft202012Validator({**schema, "$ref": f"#/$defs/{kind}"})

    sent = {
        "estimate": wire.encode_estimate("bed1", estimate_body())[1],
        "status": wire.encode_status("bed1", status_body())[1],
        "heartbeat": wire.encode_heartbeat(heartbeat_body())[1],
        "window": wire.encode_window(make_window())[0],
    }
    for kind, packed in sent.items():
        message = msgpack.unpackb(packed, raw=False)
        assert not list(validator(kind).iter_errors(message)), kind
        # (JSON has no NaN: the finite-number rule is the codec's alone, stated in the title.)
        for broken in (
            message | {"v": 1},
            message | {"stream": 7} if "stream" in message else message | {"pid": 0},
        ):
            assert list(validator(kind).iter_errors(broken)), (kind, broken)
    estimate = msgpack.unpackb(sent["estimate"], raw=False)
    assert not list(validator("estimate").iter_errors(estimate | {"new_field": 1}))  # additive
    window = msgpack.unpackb(sent["window"], raw=False)
    assert list(validator("window").iter_errors(window | {"new_field": 1}))  # internal: closed
    assert list(validator("estimate").iter_errors(estimate | {"stream": "bed.1"}))
