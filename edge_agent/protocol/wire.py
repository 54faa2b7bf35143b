"""Wire format of edge-agent's ZeroMQ messages: pure, versioned encode/decode functions, no sockets.

Every message is a ZeroMQ multipart message, a list of frames. Encoders return
``list[bytes | memoryview]`` for ``socket.send_multipart(parts, copy=False)``; decoders take the
received frames (``bytes``, ``memoryview``, ``zmq.Frame`` via its ``.buffer``, or any C-contiguous
buffer-protocol object), validate every field and return plain Python values, or raise
:class:`WireError` naming the field. Decoders never unpickle and never evaluate anything: a map
is msgpack, the pixels are raw ``uint8`` bytes.

Each message kind is also a frozen dataclass that validates on construction: :class:`Window`,
:class:`Result`, :class:`Failure`, :class:`Estimate`, :class:`Status`, :class:`Heartbeat`. The
pipeline's stages build and read those; the published messages' module functions take and return
plain maps, what subscribers keep, print and store as JSON (``Estimate.decode`` and the like give
the typed view).

Schema version 2 (``SCHEMA_VERSION``)
-------------------------------------

| Message   | Path                                  | Frames                                              |
|-----------|---------------------------------------|-----------------------------------------------------|
| window    | capture/windower → inference worker   | 0: msgpack header map · 1: raw pixels, C order      |
| estimate  | worker → publisher → subscribers      | 0: topic ``lvef.<stream>.`` · 1: msgpack body map   |
| status    | publisher → subscribers               | 0: topic ``status.<stream>.`` · 1: msgpack body map |
| heartbeat | publisher → subscribers               | 0: topic ``heartbeat`` · 1: msgpack body map        |

Every map starts with ``v`` (int, the schema version, 2) and ``kind`` (the message name). Times
``t…`` are seconds on the capture host's monotonic clock (``time.monotonic()``: comparable between
processes of one host, not across hosts). ``stream`` is 1–64 characters of ``[A-Za-z0-9_-]`` (no
dot: a topic ends with one, so ``lvef.bed1.`` is no prefix of ``lvef.bed10.``).

Window header (frame 0); frame 1 holds exactly ``prod(shape)`` bytes:

| Key         | Type                 | Meaning                                                            |
|-------------|----------------------|--------------------------------------------------------------------|
| `v`         | int                  | schema version, 2                                                  |
| `kind`      | str                  | `"window"`                                                         |
| `stream`    | str                  | stream id                                                          |
| `seq`       | int ≥ 0              | window sequence number within the stream                           |
| `frame_seq` | [int, int]           | first, last source frame sequence number (first ≤ last)            |
| `t`         | [float, float]       | first, last frame capture time, s (first ≤ last)                   |
| `t_ready`   | float                | capture time of the frame that completed the window, s (≥ t[1]:   |
|             |                      | a causal detector confirms an ED only after it)                    |
| `t_sent`    | float                | time the window was sent, s                                        |
| `shape`     | [int, int, int]      | frames, height, width: [32, 112, 112]; at most [64, 1024, 1024]    |
| `dtype`     | str                  | `"uint8"`                                                          |
| `fps`       | float > 0            | source frame rate, frames/s                                        |
| `hr_bpm`    | float > 0 or nil     | heart rate, beats/min; nil when unknown                            |
| `beat`      | str                  | how the window was cut: `"ed_ed"`, `"r_wave"`, `"fixed"`           |
| `view`      | int ≥ 0              | view epoch: the windower adds one when the image changes so much   |
|             |                      | that it is another view or patient; the running estimate restarts  |
| `demo`      | map, optional        | any subset of `age_years`, `sex_male` (1 male, 0 female),          |
|             |                      | `weight_kg`, `height_cm` → float; omitted when none is known       |
| `truth`     | map, optional        | simulator ground truth, name → float, e.g. `{"ef": 55.0}` (EF %)   |

Result (worker → hub, over the hub's ROUTER socket; not published): frame 0 the msgpack header, the
window header's fields but `shape`/`dtype`, plus `backend` (str), `infer_ms` (float ≥ 0, decode +
posterior time in the worker, ms), `t_done` (float, s) and `n_samples` (int ≥ 1), and optionally
`ood_score` (float ≥ 0, the window's out-of-distribution score; absent when the model has none);
frame 1 the posterior samples, ``n_samples`` float32 EF % (already recalibrated), native byte
order; 1 ≤ ``n_samples`` ≤ 4096, every sample finite and in [0, 100].

Failure (worker → hub, after the ``FAILED`` frame, instead of a result): one msgpack map, `v`,
`kind` (`"failure"`), `reason` (`"invalid_window"`: the window did not decode; `"bad_samples"`: the
backend returned NaN, infinite or out-of-range samples), `detail` (str, 1–500 characters, the
error), and the window's `stream` and `seq` when it decoded. The hub counts it in the stream's
`windows_failed` and gives the worker its credit back; nothing is published for that window.

Estimate body (topic ``lvef.<stream>.``):

| Key           | Type                 | Meaning                                                          |
|---------------|----------------------|------------------------------------------------------------------|
| `v`, `kind`   | int, str             | 2, `"estimate"`                                                  |
| `stream`      | str                  | stream id, equal to the topic's                                  |
| `seq`         | int ≥ 0              | the window's `seq`                                               |
| `frame_seq`   | [int, int]           | the window's `frame_seq`                                         |
| `t`           | [float, float]       | the window's first, last capture time, s                         |
| `t_ready`     | float                | the window's `t_ready`                                           |
| `t_published` | float                | time the estimate was published, s                               |
| `beat`        | summary              | posterior of this window (one beat)                              |
| `running`     | summary + `n_beats`  | running posterior over the last `n_beats` (int ≥ 1) beats        |
| `reliable`    | bool                 | false: the running estimate rests on inputs unlike the model's   |
|               |                      | training data (`ood_score` > 1): show it as LOW CONFIDENCE, not  |
|               |                      | as a tight interval                                              |
| `ood_score`   | float ≥ 0 or nil     | out-of-distribution score of the running estimate, the median of |
|               |                      | its beats' (≤ 1 familiar; 1 = the model's threshold, a quantile  |
|               |                      | of validation windows); nil when the model carries no score      |
| `beat_ood_score` | float ≥ 0 or nil  | this beat's out-of-distribution score                            |
| `hr_bpm`      | float > 0 or nil     | heart rate, beats/min                                            |
| `backend`     | str                  | backend: `"onnxruntime"`, `"torch"`, `"tensorrt"`, `"cuda"`      |
| `latency_ms`  | float                | window's last frame capture → publish, ms                        |
| `demo`        | map, optional        | the window's `demo`; only when the hub's `publish_demographics`  |
|               |                      | is true (off by default: patient data stays off the network)     |
| `truth`       | map, optional        | as in the window                                                 |
| `stages`      | map                  | where the time went, ms: `detect` (t_ready − t[1], the detector's |
|               |                      | confirmation delay), `window` (t_ready → sent), `to_worker`       |
|               |                      | (sent → a worker starts: queueing and transport), `infer`         |
|               |                      | (decode + posterior in the worker), `publish` (worker done →     |
|               |                      | published)                                                        |
| `pub_seq`     | int ≥ 0, optional    | the publisher's count of messages on this topic before this one: |
|               |                      | a subscriber that sees it skip has lost messages (slow to read), |
|               |                      | one that sees it repeat got the last-value cache's resend        |

Summary map (the keys of ``edge_agent.model.posterior.PosteriorSummary.to_dict()``): `n_samples` (int ≥ 1);
`mean`, `median`, `std`, `q05`, `q25`, `q75`, `q95` (EF %, in [0, 100]); `ci90`, `ci95` ([lo, hi],
EF %); `p_ef_lt_40`, `p_ef_lt_50` (share of samples, in [0, 1]); `multimodal` (bool).

Status body (topic ``status.<stream>.``):

| Key                | Type             | Meaning                                                      |
|--------------------|------------------|--------------------------------------------------------------|
| `v`, `kind`        | int, str         | 2, `"status"`                                                |
| `stream`           | str              | stream id, equal to the topic's                              |
| `t`                | float            | time of this status, s                                       |
| `fps`              | float ≥ 0        | measured capture rate, frames/s (0 when no frames arrive)    |
| `hr_bpm`           | float > 0 or nil | latest heart rate, beats/min                                 |
| `signal`           | str              | `"ok"`, `"lost"` (no frames) or `"stale"` (no recent window) |
|                    |                  | or, when half the last second's frames are bad, `"blank"`,   |
|                    |                  | `"frozen"` or `"saturated"` (`edge_agent/live/frame_checks.py`) |
|                    |                  | or `"no_sector"`: frames arrive but no ultrasound sector is  |
|                    |                  | found in them (noise, a desktop; set the stream's `region`)  |
| `windows_dropped`  | int ≥ 0          | windows dropped since start                                  |
| `frames_dropped`   | int ≥ 0          | frames dropped since start (ring overwritten, reader lapped) |
| `seq_gaps`         | int ≥ 0          | gaps seen in frame sequence numbers since start              |
| `queue`            | int ≥ 0          | windows of this stream waiting in the hub for a worker;      |
|                    |                  | optional: only the hub's status has it (a windower's report  |
|                    |                  | to the hub has none)                                         |
| `frames_blank`     | int ≥ 0          | frames since start that were dark or uniform; optional, as   |
|                    |                  | the four below (the hub's status always has them)            |
| `frames_frozen`    | int ≥ 0          | frames since start identical to their predecessors ≥ 0.2 s   |
| `frames_saturated` | int ≥ 0          | frames since start with ≥ 25 % of the pixels at ≥ 250        |
| `windows_rejected` | int ≥ 0          | beats not sent since start: > 20 % of their frames were bad, |
|                    |                  | or the window came out malformed (each logged)               |
| `windows_failed`   | int ≥ 0          | windows since start whose posterior failed: the worker       |
|                    |                  | refused the window or its backend returned NaN, infinite or  |
|                    |                  | out-of-range samples, or the hub refused the result          |
| `windows_missing`  | int ≥ 0          | window numbers the hub never received (skipped `seq`): the   |
|                    |                  | windower's own drops plus anything lost on the way; optional |
| `beat_source`      | str              | how the latest window was timed: `"ecg"` (R waves), `"area"` |
|                    |                  | (the LV-area image signal), `"principal"` (its principal     |
|                    |                  | component, for weak swings) or `"fixed"` (no beat found:     |
|                    |                  | fixed-length windows); optional, as the six below: absent    |
|                    |                  | before the first window (``edge_agent/live/cycles.py``)      |
| `beats_detected`   | int ≥ 0          | beat windows (ED→ED) the cycle detector cut since start      |
| `windows_fixed`    | int ≥ 0          | fixed-length windows cut since start (no beat found)         |
| `eds_rejected`     | int ≥ 0          | candidate EDs giving an implausible beat, not used           |
| `eds_corrected`    | int ≥ 0          | early EDs found premature afterwards (their beat cut short)  |
| `signal_switches`  | int ≥ 0          | changes between the area and its principal component         |
| `detector_resets`  | int ≥ 0          | detector history dropped: loop seam, sequence gap, frame     |
|                    |                  | time going back or frame size changing                       |
| `pub_seq`          | int ≥ 0          | optional; as in the estimate (the hub's status always has it) |

Heartbeat body (topic ``heartbeat``): `v`, `kind` (`"heartbeat"`), `host` (str, 1–255 of
``[A-Za-z0-9_.-]``), `pid` (int ≥ 1), `uptime_s` (float ≥ 0, s), `t` (float, s); optional `invalid`
(int ≥ 0: messages the hub refused since start — malformed windows, reports and results, unknown
worker messages; each is logged with the field at fault) and `pub_seq` (as in the estimate).

Rules: every number is finite (NaN and ±inf are refused) and every integer fits int64; a message of
another version is refused with both versions named; a key marked optional may be absent. Additive
fields: within a version, new optional keys may appear at the top level of the published messages
(estimate, status, heartbeat); subscribers ignore keys they do not know (these decoders drop them),
so adding one is not a new version. Removing or renaming a key, changing a type or a topic
is. Between edge-agent's own processes (window, result, failure) a key not in the table is an
error. :func:`json_schema` gives every message as JSON Schema (``edge-agent schema``), built from the
same field checks the codec uses. Limits: window header ≤ 64 KiB,
window pixels exactly ``prod(shape)`` bytes, result header ≤ 64 KiB and samples exactly
4 × ``n_samples`` bytes, failure map ≤ 4 KiB, topic ≤ 128 bytes, body ≤ 256 KiB, at most 64 items
per msgpack array or map, no msgpack bin or ext values.

ZeroMQ SUB filters by prefix: subscribe to ``lvef.bed1.`` for bed 1's estimates alone (the trailing
dot keeps out ``lvef.bed10.``), ``lvef.`` for every stream's, ``status.bed1.``, ``heartbeat``.
:func:`estimate_topic` and :func:`status_topic` build them.

Versions: 1 (to 2026-12-04) had topics without the trailing dot, dots allowed in stream ids, and
refused unknown keys everywhere; 2 (2026-12-05) is this table.
"""

from __future__ import annotations

import math
import numbers
import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import msgpack
import numpy as np

from edge_agent.core.clip import CLIP_FRAMES, CLIP_SIZE
from edge_agent.core.demographics import DEMOGRAPHIC_FIELDS, demographics_vector

SCHEMA_VERSION = 2
WINDOW_SHAPE = (CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE)
WINDOW_DTYPE = "uint8"
MAX_SHAPE = (64, 1024, 1024)  # frames, height, width
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 256 * 1024
MAX_TOPIC_BYTES = 128
# Longest msgpack array/map accepted; msgpack refuses longer ones while parsing, before allocating.
MAX_CONTAINER_LEN = 64
MAX_TRUTH_KEYS = 16
MAX_INT = 2**63 - 1  # int64: every consumer language can hold it
# "blank", "frozen", "saturated": most of the last second's frames were (live/frame_checks.py).
SIGNAL_STATES = ("ok", "lost", "stale", "blank", "frozen", "saturated", "no_sector")
ESTIMATE_PREFIX, STATUS_PREFIX, HEARTBEAT_TOPIC = "lvef.", "status.", "heartbeat"
TOPIC_END = "."  # ends every stream's topic: no stream's topic is a prefix of another's
NAME_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
STREAM_PATTERN = r"[A-Za-z0-9_-]{1,64}"  # no dot: see TOPIC_END
# Control frames: the first frame of a worker's message to the hub (after the ROUTER's identity
# frame): READY (then the worker's incarnation) asks for a window, RESULT precedes a result's two
# frames, FAILED a failure map.
READY, RESULT, FAILED = b"READY", b"RESULT", b"FAILED"


class WireError(ValueError):
    """A message is malformed or of another schema version; the message names the field."""


class HasBuffer(Protocol):
    """What pyzmq's ``zmq.Frame`` offers: its bytes as a memoryview (no zmq import needed)."""

    @property
    def buffer(self) -> memoryview: ...


FrameLike = bytes | bytearray | memoryview | np.ndarray | HasBuffer
Check = Callable[[Any, str], Any]


# ---------------------------------------------------------------- field checks
# Each check takes (value, field name) and returns the value normalised to plain Python types
# (int, float, str, bool, None, list, dict), or raises WireError naming the field. Encoders and
# decoders share them, so a producer can never send what a consumer would refuse. Each also carries
# the JSON Schema of what it accepts (``check.schema``, see json_schema), so the published schema
# and the codec cannot drift apart.


def _described(check: Check, schema: dict[str, Any] | Callable[[], dict[str, Any]]) -> Check:
    """Attach the JSON Schema of what ``check`` accepts: a map, or a function making it (records,
    built on every message, describe themselves only when json_schema asks)."""
    check.schema = schema  # type: ignore[attr-defined]
    return check


def _schema_of(check: Check) -> dict[str, Any]:
    schema = check.schema  # type: ignore[attr-defined]
    return schema() if callable(schema) else schema


# repr of untrusted values for error messages: short, and bounded in depth, because a hostile
# message can nest 1000 lists deep and a plain repr() would raise RecursionError.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 40, 40, 4, 4


def _show(value: Any) -> str:
    return _REPR.repr(value)


def _int(lo: int, hi: int = MAX_INT) -> Check:
    def check(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise WireError(f"{name}: expected an integer >= {lo}, got {_show(value)}")
        if not lo <= value <= hi:
            limit = "(and < 2**63)" if hi == MAX_INT else f"and <= {hi}"
            raise WireError(f"{name}: must be an integer >= {lo} {limit}, got {value}")
        return int(value)

    return _described(check, {"type": "integer", "minimum": lo, "maximum": hi})


def _float(lo: float | None = None, hi: float | None = None, gt: float | None = None) -> Check:
    """A finite number, within [lo, hi] and above gt where given; ints are accepted as floats."""

    def check(value: Any, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise WireError(f"{name}: expected a number, got {_show(value)}")
        try:
            number = float(value)
        except (OverflowError, ValueError):
            raise WireError(f"{name}: {_show(value)} does not fit a float64") from None
        if not math.isfinite(number):
            raise WireError(f"{name}: must be finite (NaN and inf are refused), got {number}")
        if lo is not None and hi is not None and not lo <= number <= hi:
            raise WireError(f"{name}: must be in [{lo}, {hi}], got {number}")
        if lo is not None and number < lo:
            raise WireError(f"{name}: must be >= {lo}, got {number}")
        if gt is not None and number <= gt:
            raise WireError(f"{name}: must be > {gt}, got {number}")
        return number

    bounds = {"minimum": lo, "maximum": hi, "exclusiveMinimum": gt}
    return _described(check, {"type": "number", **{k: v for k, v in bounds.items() if v is not None}})


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise WireError(f"{name}: expected true or false, got {_show(value)}")
    return bool(value)


_bool = _described(_check_bool, {"type": "boolean"})


def _text(pattern: str, what: str) -> Check:
    compiled = re.compile(pattern)

    def check(value: Any, name: str) -> str:
        if not isinstance(value, str) or compiled.fullmatch(value) is None:
            raise WireError(f"{name}: expected {what}, got {_show(value)}")
        return value

    return _described(check, {"type": "string", "pattern": f"^{pattern}$", "description": what})


def _choice(options: tuple[str, ...]) -> Check:
    def check(value: Any, name: str) -> str:
        if not isinstance(value, str) or value not in options:
            raise WireError(f"{name}: expected one of {list(options)}, got {_show(value)}")
        return value

    return _described(check, {"enum": list(options)})


def _optional(inner: Check) -> Check:
    def check(value: Any, name: str) -> Any:
        return None if value is None else inner(value, name)

    return _described(check, {"anyOf": [_schema_of(inner), {"type": "null"}]})


def _pair(inner: Check) -> Check:
    """[first, last] with first <= last (a range of sequence numbers or times)."""

    def check(value: Any, name: str) -> list[Any]:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise WireError(f"{name}: expected [first, last], got {_show(value)}")
        first, last = inner(value[0], f"{name}[0]"), inner(value[1], f"{name}[1]")
        if first > last:
            raise WireError(f"{name}: first {first} is after last {last}; send [first, last]")
        return [first, last]

    item = _schema_of(inner)
    return _described(check, {"type": "array", "prefixItems": [item, item], "items": False, "minItems": 2})


def _number_map(keys: Mapping[str, Check] | None, max_len: int) -> Check:
    """A map name → number: names from ``keys`` (each with its own check), else any NAME_PATTERN name."""
    any_number = _float()
    key_name = re.compile(NAME_PATTERN)

    def check(value: Any, name: str) -> dict[str, float]:
        if not isinstance(value, Mapping):
            raise WireError(f"{name}: expected a map of name → number, got {_show(value)}")
        if len(value) > max_len:
            raise WireError(f"{name}: {len(value)} entries, at most {max_len} allowed")
        out = {}
        for key, item in value.items():
            if keys is not None and key not in keys:
                raise WireError(f"{name}: unknown key {_show(key)}; allowed keys are {list(keys)}")
            if keys is None and not (isinstance(key, str) and key_name.fullmatch(key)):
                raise WireError(f"{name}: key {_show(key)} is not 1-64 characters of [A-Za-z0-9_.-]")
            out[key] = (keys[key] if keys is not None else any_number)(item, f"{name}.{key}")
        return out

    if keys is None:
        schema = {
            "propertyNames": {"pattern": f"^{NAME_PATTERN}$"},
            "additionalProperties": _schema_of(any_number),
        }
    else:
        schema = {"properties": {k: _schema_of(c) for k, c in keys.items()}, "additionalProperties": False}
    return _described(check, {"type": "object", "maxProperties": max_len, **schema})

    return check


def _record(
    required: Mapping[str, Check], optional: Mapping[str, Check] | None = None, open_: bool = False
) -> Check:
    """A map with the ``required`` keys plus any of the ``optional`` ones; any other key is an error,
    or with ``open_`` (published messages: additive fields) dropped."""
    optional = optional or {}

    def check(value: Any, name: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise WireError(f"{name}: expected a msgpack map, got {type(value).__name__}")
        for key in value:
            if key not in required and key not in optional and not open_:
                raise WireError(
                    f"{name}: unknown key {_show(key)} in schema v{SCHEMA_VERSION}; "
                    f"allowed keys are {[*required, *optional]}"
                )
        out = {}
        for key, inner in required.items():
            if key not in value:
                raise WireError(f"{name}.{key}: required key missing (schema v{SCHEMA_VERSION})")
            out[key] = inner(value[key], f"{name}.{key}")
        for key, inner in optional.items():
            if key in value:
                out[key] = inner(value[key], f"{name}.{key}")
        return out

    def schema() -> dict[str, Any]:
        properties = {k: _schema_of(c) for k, c in {**required, **optional}.items()}
        return {
            "type": "object",
            "required": list(required),
            "properties": properties,
            "additionalProperties": open_,
        }

    return _described(check, schema)


def _check_message(
    value: Any,
    name: str,
    kind: str,
    required: Mapping[str, Check],
    optional: Mapping[str, Check],
    open_: bool = False,
) -> dict[str, Any]:
    """Version and kind first, so a message of another version fails on ``v``, not on its keys;
    ``open_``: unknown keys are dropped (published messages), else refused."""
    if not isinstance(value, Mapping):
        raise WireError(f"{name}: expected a msgpack map, got {type(value).__name__}")
    version = value.get("v")
    if isinstance(version, bool) or not isinstance(version, int) or version != SCHEMA_VERSION:
        raise WireError(
            f"{name}.v: schema version {_show(version)} is not supported; this edge-agent speaks "
            f"version {SCHEMA_VERSION}: run the same edge-agent version at both ends"
        )
    if value.get("kind") != kind:
        raise WireError(f"{name}.kind: expected {kind!r}, got {_show(value.get('kind'))}")
    return _message_record(kind, required, optional, open_)(value, name)


def _message_record(
    kind: str, required: Mapping[str, Check], optional: Mapping[str, Check], open_: bool
) -> Check:
    """The whole map of one message kind: ``v`` (this version), ``kind``, then its fields."""
    return _record({"v": _VERSION, "kind": _choice((kind,)), **required}, optional, open_)


_VERSION = _described(_int(SCHEMA_VERSION, SCHEMA_VERSION), {"const": SCHEMA_VERSION})


_STREAM = _text(STREAM_PATTERN, "a stream id of 1-64 characters of [A-Za-z0-9_-]")
_SEQ = _int(0)
_TIME = _float()
_HR = _optional(_float(gt=0.0))
_EF = _float(0.0, 100.0)
_OOD = _optional(_float(lo=0.0))  # out-of-distribution score, nil when the model has none
_SHARE = _float(0.0, 1.0)
_TRUTH = _number_map(None, MAX_TRUTH_KEYS)
# Sex is coded 1 male / 0 female; ages, weights and heights cannot be negative.
_DEMO_CHECKS = {key: _float(0.0, 1.0) if key == "sex_male" else _float(lo=0.0) for key in DEMOGRAPHIC_FIELDS}
_DEMO = _number_map(_DEMO_CHECKS, len(_DEMO_CHECKS))

# The keys of edge_agent.model.posterior.PosteriorSummary.to_dict(); tests check they stay identical.
SUMMARY_CHECKS: dict[str, Check] = {
    "n_samples": _int(1),
    "mean": _EF,
    "median": _EF,
    "std": _EF,
    "q05": _EF,
    "q25": _EF,
    "q75": _EF,
    "q95": _EF,
    "ci90": _pair(_EF),
    "ci95": _pair(_EF),
    "p_ef_lt_40": _SHARE,
    "p_ef_lt_50": _SHARE,
    "multimodal": _bool,
}

_WINDOW_FIELDS: dict[str, Check] = {
    "stream": _STREAM,
    "seq": _SEQ,
    "frame_seq": _pair(_SEQ),
    "t": _pair(_TIME),
    "t_ready": _TIME,
    "t_sent": _TIME,
    "fps": _float(gt=0.0),
    "hr_bpm": _HR,
    "beat": _text(NAME_PATTERN, "a beat rule name of 1-64 characters of [A-Za-z0-9_.-], e.g. 'ed_ed'"),
    "view": _int(0),
}
_WINDOW_OPTIONAL: dict[str, Check] = {"demo": _DEMO, "truth": _TRUTH}

_ESTIMATE_FIELDS: dict[str, Check] = {
    "stream": _STREAM,
    "seq": _SEQ,
    "frame_seq": _pair(_SEQ),
    "t": _pair(_TIME),
    "t_ready": _TIME,
    "t_published": _TIME,
    "beat": _record(SUMMARY_CHECKS),
    "running": _record({**SUMMARY_CHECKS, "n_beats": _int(1)}),
    "hr_bpm": _HR,
    "backend": _text(NAME_PATTERN, "a backend name such as 'onnxruntime', 'torch', 'tensorrt' or 'cuda'"),
    "latency_ms": _float(),
    "stages": _number_map(None, 16),
    "reliable": _bool,
    "ood_score": _OOD,
    "beat_ood_score": _OOD,
}
_PUB_SEQ = _int(0)  # the publisher's per-topic message count (see the estimate table)
_ESTIMATE_OPTIONAL: dict[str, Check] = {"demo": _DEMO, "truth": _TRUTH, "pub_seq": _PUB_SEQ}
# Status counters, ints >= 0 counted since start (see the status table): every status has
# BASE_COUNTERS; the windower's frame checks add FRAME_COUNTERS, which the hub passes on, and the
# hub adds HUB_COUNTERS. The status checks, Status, the hub and the exporters take them from here.
BASE_COUNTERS = ("windows_dropped", "frames_dropped", "seq_gaps")
FRAME_COUNTERS = ("frames_blank", "frames_frozen", "frames_saturated", "windows_rejected")
# The windower's cycle detector adds these (and beat_source), which the hub passes on as well.
DETECTOR_COUNTERS = (
    "beats_detected",
    "windows_fixed",
    "eds_rejected",
    "eds_corrected",
    "signal_switches",
    "detector_resets",
)
BEAT_SOURCES = ("ecg", "area", "principal", "fixed")
HUB_COUNTERS = ("windows_failed", "windows_missing")
_COUNT = _int(0)
_STATUS_FIELDS: dict[str, Check] = {
    "stream": _STREAM,
    "t": _TIME,
    "fps": _float(lo=0.0),
    "hr_bpm": _HR,
    "signal": _choice(SIGNAL_STATES),
    **dict.fromkeys(BASE_COUNTERS, _COUNT),
}
# Optional so that a windower's report to the hub (which has no queue) stays a valid status.
_STATUS_OPTIONAL: dict[str, Check] = {
    "queue": _COUNT,
    # Bad input and the hub's losses; optional: a status without them is v1 too.
    **dict.fromkeys((*FRAME_COUNTERS, *HUB_COUNTERS), _COUNT),
    "beat_source": _choice(BEAT_SOURCES),
    **dict.fromkeys(DETECTOR_COUNTERS, _COUNT),
    "pub_seq": _PUB_SEQ,
}
_HEARTBEAT_FIELDS: dict[str, Check] = {
    "host": _text(r"[A-Za-z0-9_.-]{1,255}", "a host name of 1-255 characters of [A-Za-z0-9_.-]"),
    "pid": _int(1),
    "uptime_s": _float(lo=0.0),
    "t": _TIME,
}
_HEARTBEAT_OPTIONAL: dict[str, Check] = {"invalid": _int(0), "pub_seq": _PUB_SEQ}


# ---------------------------------------------------------------- frames and msgpack


def _view(part: Any, name: str) -> memoryview:
    """One received frame → flat byte memoryview, without copying."""
    # zmq.Frame exposes its bytes as .buffer; anything else must speak the buffer protocol itself.
    source = getattr(part, "buffer", part)
    try:
        return memoryview(source).cast("B")
    except TypeError:
        raise WireError(
            f"{name}: expected a C-contiguous bytes-like frame, got {type(part).__name__}"
        ) from None


def _unpack(part: Any, name: str, limit: int) -> Any:
    view = _view(part, name)
    if view.nbytes > limit:
        raise WireError(f"{name}: {view.nbytes} bytes exceeds the {limit}-byte limit")
    try:
        return msgpack.unpackb(
            view,
            raw=False,
            strict_map_key=True,
            max_str_len=limit,
            max_bin_len=0,
            max_ext_len=0,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
        )
    except (ValueError, msgpack.UnpackException) as e:
        raise WireError(f"{name}: not valid msgpack within the v{SCHEMA_VERSION} limits ({e})") from None


def _pack(value: dict[str, Any]) -> bytes:
    """A validated map → msgpack; the field checks bound its size far below the decoders' limits."""
    return msgpack.packb(value, use_bin_type=True)


# ---------------------------------------------------------------- typed messages


M = TypeVar("M", bound="_Message")  # typing.Self needs Python 3.11; the package supports 3.10


class _Message:
    """What the typed messages share (each a frozen dataclass): construction checks every field
    with the checks the codec uses, so a message that exists can be sent, and raises WireError
    naming the field otherwise. ``_KIND`` names the message in errors, ``_FIELDS`` and ``_OPTIONAL``
    map its fields to their checks; an optional field may be None (absent from the wire)."""

    _KIND: ClassVar[str]
    _FIELDS: ClassVar[Mapping[str, Check]]
    _OPTIONAL: ClassVar[Mapping[str, Check]]

    def __post_init__(self) -> None:
        for key, check in {**self._FIELDS, **self._OPTIONAL}.items():
            value = getattr(self, key)
            if value is None and key in self._OPTIONAL:
                continue
            value = check(value, f"{self._KIND}.{key}")
            # frozen: normalised values (tuples, floats, fresh dicts) are written once, here.
            object.__setattr__(self, key, tuple(value) if isinstance(value, list) else value)

    def body(self) -> dict[str, Any]:
        """The message's map without ``v`` and ``kind``; optional fields that are None or an empty
        map are left out (the wire omits what is not known)."""
        out = {key: getattr(self, key) for key in self._FIELDS}
        for key in self._OPTIONAL:
            value = getattr(self, key)
            if value is not None and not (isinstance(value, Mapping) and not value):
                out[key] = value
        return out

    @classmethod
    def from_map(cls: type[M], message: Mapping[str, Any], **extra: Any) -> M:
        """A decoded map → the typed message; keys that are no field of it (``v``, ``kind``,
        ``n_samples``) are dropped, ``extra`` fields added."""
        known = {**cls._FIELDS, **cls._OPTIONAL}
        return cls(**{k: v for k, v in message.items() if k in known}, **extra)


@dataclass(frozen=True, eq=False)  # eq=False: its subclasses carry numpy arrays
class WindowMeta(_Message):
    """What a window header says about its beat (see the window header table above), without the
    pixels: a :class:`Window` adds them, a :class:`Result` the posterior computed from them.

    frame_seq: (first, last) source frame sequence numbers; t: (first, last) capture times, s
        (monotonic clock); t_ready: capture time of the frame that completed the window (default
        t[1]); t_sent: send time, s; fps: source frames/s; hr_bpm: beats/min or None.
    beat: how the window was cut (``"ed_ed"``, ``"fixed"``, ...).
    demo: any subset of DEMOGRAPHIC_FIELDS → float (years, 1 male/0 female, kg, cm).
    truth: simulator ground truth, e.g. {"ef": 55.0} (EF %); empty for real sources.
    view: view epoch of the stream (the running estimate restarts when it changes).
    Construction validates every field and raises WireError naming it.
    """

    stream: str
    seq: int
    frame_seq: tuple[int, int]
    t: tuple[float, float]
    t_sent: float
    fps: float
    hr_bpm: float | None
    beat: str
    demo: Mapping[str, float] = field(default_factory=dict)
    truth: Mapping[str, float] = field(default_factory=dict)
    view: int = 0
    t_ready: float | None = None  # None: the last frame's time t[1]
    _KIND, _FIELDS, _OPTIONAL = "window", _WINDOW_FIELDS, _WINDOW_OPTIONAL

    def __post_init__(self) -> None:
        if self.t_ready is None and isinstance(self.t, list | tuple) and len(self.t) == 2:
            object.__setattr__(self, "t_ready", self.t[1])
        super().__post_init__()


@dataclass(frozen=True, eq=False, kw_only=True)  # eq=False: == on a numpy field is ambiguous
class Window(WindowMeta):
    """One beat of one stream, as a worker receives it: :class:`WindowMeta` and its pixels.

    frames: (F, H, W) uint8, (32, 112, 112) for the model, made by edge_agent.core.clip.make_clip;
        a decoded window's frames are a read-only view of the received buffer.
    """

    frames: np.ndarray = field(repr=False)  # 400 kB of pixels make a useless repr

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_frames(self.frames)

    def demographics_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(values (4,) float32 [age years, sex (1 male), weight kg, height cm], 0 where absent;
        mask (4,) bool, True where present), in DEMOGRAPHIC_FIELDS order."""
        return demographics_vector(**self.demo)


# ---------------------------------------------------------------- window


def _check_shape(value: Any, name: str) -> tuple[int, int, int]:
    if not isinstance(value, list | tuple) or len(value) != len(MAX_SHAPE):
        raise WireError(f"{name}: expected [frames, height, width], got {_show(value)}")
    for axis, (n, cap) in enumerate(zip(value, MAX_SHAPE, strict=True)):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= cap:
            raise WireError(f"{name}[{axis}]: expected an integer in [1, {cap}], got {_show(n)}")
    return (int(value[0]), int(value[1]), int(value[2]))


_described(
    _check_shape,
    {
        "type": "array",
        "prefixItems": [{"type": "integer", "minimum": 1, "maximum": cap} for cap in MAX_SHAPE],
        "items": False,
        "minItems": len(MAX_SHAPE),
    },
)
_WINDOW_HEADER = {**_WINDOW_FIELDS, "shape": _check_shape, "dtype": _choice((WINDOW_DTYPE,))}


def _check_frames(frames: Any) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        what = f"{frames.dtype} array" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise WireError(
            f"window.frames: expected a uint8 array (F, H, W), got {what}; "
            "build windows with edge_agent.core.clip.make_clip"
        )
    _check_shape(frames.shape, "window.frames.shape")


def encode_window(window: Window) -> list[bytes | memoryview]:
    """Window → [msgpack header, pixel buffer]; the pixels are a memoryview of the array, not a copy.

    With ``send_multipart(parts, copy=False)`` ZeroMQ reads the array after the call returns:
    do not write into ``window.frames`` until the message is gone (or send with copy=True).
    """
    header: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "kind": "window",
        "stream": window.stream,
        "seq": window.seq,
        "frame_seq": list(window.frame_seq),
        "t": list(window.t),
        "t_ready": window.t_ready,
        "t_sent": window.t_sent,
        "shape": list(window.frames.shape),
        "dtype": WINDOW_DTYPE,
        "fps": window.fps,
        "hr_bpm": window.hr_bpm,
        "beat": window.beat,
        "view": window.view,
    }
    # Optional maps are omitted when empty, so the header carries only what is known.
    if window.demo:
        header["demo"] = dict(window.demo)
    if window.truth:
        header["truth"] = dict(window.truth)
    # Copies only when the caller's array is a strided view; a make_clip array goes out as is.
    pixels = np.ascontiguousarray(window.frames)
    return [_pack(header), memoryview(pixels).cast("B")]


def decode_window(
    parts: Sequence[FrameLike], expected_shape: tuple[int, int, int] | None = WINDOW_SHAPE
) -> Window:
    """[msgpack header, pixel buffer] → Window whose frames view the received buffer (no copy).

    ``expected_shape``: the shape the consumer's model takes, (32, 112, 112) by default; None
    accepts any shape within MAX_SHAPE. Raises WireError naming the offending field.
    """
    if len(parts) != 2:
        raise WireError(f"window: expected 2 frames (msgpack header, pixels), got {len(parts)}")
    header = _unpack(parts[0], "window header", MAX_HEADER_BYTES)
    fields = _check_message(header, "window", "window", _WINDOW_HEADER, _WINDOW_OPTIONAL)
    shape = fields["shape"]
    if expected_shape is not None and shape != tuple(expected_shape):
        raise WireError(
            f"window.shape: {list(shape)} is not the model's input {list(expected_shape)}; "
            "cut windows with edge_agent.core.clip.make_clip"
        )
    pixels = _view(parts[1], "window pixels")
    if pixels.nbytes != math.prod(shape):
        raise WireError(
            f"window pixels: {pixels.nbytes} bytes, but shape {list(shape)} uint8 needs {math.prod(shape)}"
        )
    frames = np.frombuffer(pixels, dtype=np.uint8).reshape(shape)
    frames.flags.writeable = False  # the buffer belongs to the socket layer
    for key in ("v", "kind", "shape", "dtype"):
        del fields[key]
    return Window(frames=frames, **fields)


# ---------------------------------------------------------------- result (worker → hub)

MAX_SAMPLES = 4096
# The worker's fields of a result, after the window's; n_samples, the samples frame's length, last.
_RESULT_OWN: dict[str, Check] = {
    "backend": _text(NAME_PATTERN, "a backend name such as 'onnxruntime', 'torch', 'tensorrt' or 'cuda'"),
    "infer_ms": _float(lo=0.0),
    "t_done": _TIME,
}
_RESULT_FIELDS: dict[str, Check] = {**_WINDOW_FIELDS, **_RESULT_OWN, "n_samples": _int(1, MAX_SAMPLES)}
_RESULT_OPTIONAL: dict[str, Check] = {**_WINDOW_OPTIONAL, "ood_score": _OOD}


def check_samples(samples: Any, name: str = "result.samples") -> np.ndarray:
    """Posterior samples as they go on the wire: (K,) float32 EF %, 1 <= K <= MAX_SAMPLES, every one
    finite and in [0, 100]. Returns them flattened (a copy only when not float32 already); raises
    WireError counting the NaN, infinite and out-of-range ones. The worker checks its backend's
    output with it, so it never sends what the hub would refuse."""
    try:
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: refused below
            values = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as e:
        raise WireError(f"{name}: not an array of numbers ({e})") from None
    if not 1 <= values.size <= MAX_SAMPLES:
        raise WireError(f"{name}: expected 1-{MAX_SAMPLES} samples, got {values.size}")
    with np.errstate(invalid="ignore", over="ignore"):  # counted below, not warned about
        n_nan = int(np.count_nonzero(np.isnan(values)))
        n_inf = int(np.count_nonzero(np.isinf(values)))
        n_out = int(np.count_nonzero((values < 0.0) | (values > 100.0))) - n_inf
    if n_nan or n_inf or n_out:
        raise WireError(
            f"{name}: every sample must be a finite EF in [0, 100] %; of {values.size}, {n_nan} are NaN, "
            f"{n_inf} infinite and {n_out} outside [0, 100]"
        )
    return values


@dataclass(frozen=True, eq=False, kw_only=True)  # eq=False: == on a numpy field is ambiguous
class Result(WindowMeta):
    """A window's posterior, worker → hub: the window's metadata (not its pixels), so the hub needs
    no state per window in flight, and what the worker adds.

    backend: the inference backend's name; infer_ms: decode + posterior time in the worker, ms;
    t_done: when the worker finished, s (monotonic clock).
    samples: (K,) float32 EF %, the posterior of this one window (already recalibrated), every one
        finite and in [0, 100], 1 <= K <= MAX_SAMPLES (:func:`check_samples`).
    ood_score: the window's out-of-distribution score (≥ 0; ≤ 1 familiar), None when the model has none.
    """

    backend: str
    infer_ms: float
    t_done: float
    samples: np.ndarray = field(repr=False)
    ood_score: float | None = None
    _KIND, _FIELDS, _OPTIONAL = "result", {**_WINDOW_FIELDS, **_RESULT_OWN}, _RESULT_OPTIONAL

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "samples", check_samples(self.samples))

    def encode(self) -> list[bytes | memoryview]:
        """→ [msgpack header, float32 samples]; the samples go as a memoryview, not a copy."""
        header = {"v": SCHEMA_VERSION, "kind": "result", **self.body(), "n_samples": self.samples.size}
        fields = _check_message(header, "result", "result", _RESULT_FIELDS, _RESULT_OPTIONAL)
        return [_pack(fields), memoryview(self.samples).cast("B")]

    @classmethod
    def decode(cls, parts: Sequence[FrameLike]) -> Result:
        """[msgpack header, float32 samples] → Result (its samples a copy); see :func:`decode_result`."""
        header, samples = decode_result(parts)
        return cls.from_map(header, samples=samples)


def encode_result(
    window: WindowMeta,
    samples: np.ndarray,
    backend: str,
    infer_ms: float,
    t_done: float,
    ood_score: float | None = None,
) -> list[bytes | memoryview]:
    """A window's posterior → [msgpack header, float32 samples]: the :class:`Result` of ``window``.

    samples: (K,) EF %, the posterior of this one window; ood_score: its out-of-distribution score.
    """
    meta = {key: getattr(window, key) for key in (*_WINDOW_FIELDS, *_WINDOW_OPTIONAL)}
    return Result(
        **meta, backend=backend, infer_ms=infer_ms, t_done=t_done, samples=samples, ood_score=ood_score
    ).encode()


def decode_result(parts: Sequence[FrameLike]) -> tuple[dict[str, Any], np.ndarray]:
    """[msgpack header, float32 samples] → (validated header, samples (K,) float32 EF %, a copy)."""
    if len(parts) != 2:
        raise WireError(f"result: expected 2 frames (msgpack header, samples), got {len(parts)}")
    header = _unpack(parts[0], "result header", MAX_HEADER_BYTES)
    fields = _check_message(header, "result", "result", _RESULT_FIELDS, _RESULT_OPTIONAL)
    view = _view(parts[1], "result samples")
    if view.nbytes != 4 * fields["n_samples"]:
        raise WireError(
            f"result samples: {view.nbytes} bytes, but n_samples {fields['n_samples']} float32 need "
            f"{4 * fields['n_samples']}"
        )
    samples = check_samples(np.frombuffer(view, dtype=np.float32), "result samples").copy()
    return fields, samples


# ---------------------------------------------------------------- failure (worker → hub)

FAILURE_REASONS = ("invalid_window", "bad_samples")
MAX_DETAIL_CHARS = 500
MAX_FAILURE_BYTES = 4096
_FAILURE_FIELDS: dict[str, Check] = {
    "reason": _choice(FAILURE_REASONS),
    # Any text: [\s\S] rather than (?s). so the JSON Schema (ECMA-262 regex) says the same.
    "detail": _text(rf"[\s\S]{{1,{MAX_DETAIL_CHARS}}}", f"1-{MAX_DETAIL_CHARS} characters of text"),
}
_FAILURE_OPTIONAL: dict[str, Check] = {"stream": _STREAM, "seq": _SEQ}


def encode_failure(reason: str, detail: str, window: Window | None = None) -> list[bytes]:
    """A window the worker could not turn into a posterior → [msgpack failure map] (send it after
    the FAILED marker frame). reason: ``"invalid_window"`` (it did not decode) or ``"bad_samples"``
    (the backend returned NaN, infinite or out-of-range samples); detail: the error, cut to
    MAX_DETAIL_CHARS; window: the decoded window, when there is one (its stream and seq go along)."""
    body: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "kind": "failure",
        "reason": reason,
        "detail": (detail or "-")[:MAX_DETAIL_CHARS],
    }
    if window is not None:
        body.update(stream=window.stream, seq=window.seq)
    return [_pack(_check_message(body, "failure", "failure", _FAILURE_FIELDS, _FAILURE_OPTIONAL))]


def decode_failure(parts: Sequence[FrameLike]) -> dict[str, Any]:
    """[msgpack failure map] → validated map (``reason``, ``detail``, optional ``stream``, ``seq``)."""
    if len(parts) != 1:
        raise WireError(f"failure: expected 1 frame (msgpack map), got {len(parts)}")
    body = _unpack(parts[0], "failure", MAX_FAILURE_BYTES)
    return _check_message(body, "failure", "failure", _FAILURE_FIELDS, _FAILURE_OPTIONAL)


@dataclass(frozen=True)
class Failure(_Message):
    """A worker's failure on a window, as the hub reads it (see :func:`encode_failure`): reason, one
    of FAILURE_REASONS; detail, the error; the window's stream and seq, None when it did not decode."""

    reason: str
    detail: str
    stream: str | None = None
    seq: int | None = None
    _KIND, _FIELDS, _OPTIONAL = "failure", _FAILURE_FIELDS, _FAILURE_OPTIONAL

    @classmethod
    def decode(cls, parts: Sequence[FrameLike]) -> Failure:
        """[msgpack failure map] → Failure; raises WireError as :func:`decode_failure`."""
        return cls.from_map(decode_failure(parts))


# ---------------------------------------------------------------- published messages


def _encode_published(
    kind: str,
    topic: str,
    stream: str | None,
    body: Mapping[str, Any],
    required: Mapping[str, Check],
    optional: Mapping[str, Check],
) -> list[bytes | memoryview]:
    """Fill in ``v``, ``kind`` (and ``stream``) where the body lacks them, validate, pack. A key the
    schema does not have is refused here: only subscribers skip unknown keys."""
    filled = {"v": SCHEMA_VERSION, "kind": kind, **({} if stream is None else {"stream": stream}), **body}
    message = _check_message(filled, kind, kind, required, optional)
    if stream is not None:
        _topic_stream(message, stream, kind)
    return [(topic if stream is None else topic + stream + TOPIC_END).encode("ascii"), _pack(message)]


def estimate_topic(stream: str) -> str:
    """The topic of one stream's estimates, ``lvef.<stream>.`` (subscribe to exactly this stream)."""
    return ESTIMATE_PREFIX + _STREAM(stream, "stream") + TOPIC_END


def status_topic(stream: str) -> str:
    """The topic of one stream's status, ``status.<stream>.``."""
    return STATUS_PREFIX + _STREAM(stream, "stream") + TOPIC_END


def _topic_stream(body: Mapping[str, Any], stream: str, kind: str) -> None:
    if body["stream"] != stream:
        raise WireError(f"{kind}.stream: body names {body['stream']!r} but the topic names {stream!r}")


def encode_estimate(stream: str, body: Mapping[str, Any]) -> list[bytes | memoryview]:
    """(stream id, estimate body) → [b"lvef.<stream>.", msgpack body]. ``v``, ``kind`` and ``stream``
    are filled in when the body lacks them. Raises WireError naming a missing or wrong field."""
    _STREAM(stream, "estimate.stream")
    return _encode_published("estimate", ESTIMATE_PREFIX, stream, body, _ESTIMATE_FIELDS, _ESTIMATE_OPTIONAL)


def encode_status(stream: str, body: Mapping[str, Any]) -> list[bytes | memoryview]:
    """(stream id, status body) → [b"status.<stream>.", msgpack body]; as :func:`encode_estimate`."""
    _STREAM(stream, "status.stream")
    return _encode_published("status", STATUS_PREFIX, stream, body, _STATUS_FIELDS, _STATUS_OPTIONAL)


def encode_heartbeat(body: Mapping[str, Any]) -> list[bytes | memoryview]:
    """Heartbeat body (host, pid, uptime_s, t) → [b"heartbeat", msgpack body]."""
    return _encode_published("heartbeat", HEARTBEAT_TOPIC, None, body, _HEARTBEAT_FIELDS, _HEARTBEAT_OPTIONAL)


def _read_topic(parts: Sequence[FrameLike]) -> str:
    if len(parts) != 2:
        raise WireError(f"topic message: expected 2 frames (topic, msgpack body), got {len(parts)}")
    view = _view(parts[0], "topic")
    if view.nbytes > MAX_TOPIC_BYTES:
        raise WireError(f"topic: {view.nbytes} bytes exceeds the {MAX_TOPIC_BYTES}-byte limit")
    try:
        return view.tobytes().decode("ascii")
    except UnicodeDecodeError:
        raise WireError(f"topic: not ASCII: {_show(view.tobytes())}") from None


def _decode_published(
    parts: Sequence[FrameLike],
    kind: str,
    prefix: str,
    required: Mapping[str, Check],
    optional: Mapping[str, Check],
) -> dict[str, Any]:
    topic = _read_topic(parts)
    if not topic.startswith(prefix):
        raise WireError(f"topic: {topic!r} is not a {kind} topic ({prefix}...)")
    raw = _unpack(parts[1], f"{kind} body", MAX_BODY_BYTES)
    body = _check_message(raw, kind, kind, required, optional, open_=True)  # additive fields: skipped
    if "stream" in required:
        if not topic.endswith(TOPIC_END):
            raise WireError(f"topic: {topic!r} does not end with {TOPIC_END!r} ({prefix}<stream>{TOPIC_END})")
        _topic_stream(body, _STREAM(topic[len(prefix) : -len(TOPIC_END)], "topic stream"), kind)
    elif topic != prefix:
        raise WireError(f"topic: expected {prefix!r}, got {topic!r}")
    return body


def decode_estimate(parts: Sequence[FrameLike]) -> dict[str, Any]:
    """[b"lvef.<stream>.", msgpack body] → validated estimate body (plain dict, lists for pairs);
    keys this version does not know are dropped (additive fields)."""
    return _decode_published(parts, "estimate", ESTIMATE_PREFIX, _ESTIMATE_FIELDS, _ESTIMATE_OPTIONAL)


def decode_status(parts: Sequence[FrameLike]) -> dict[str, Any]:
    """[b"status.<stream>.", msgpack body] → validated status body."""
    return _decode_published(parts, "status", STATUS_PREFIX, _STATUS_FIELDS, _STATUS_OPTIONAL)


def decode_heartbeat(parts: Sequence[FrameLike]) -> dict[str, Any]:
    """[b"heartbeat", msgpack body] → validated heartbeat body."""
    return _decode_published(parts, "heartbeat", HEARTBEAT_TOPIC, _HEARTBEAT_FIELDS, _HEARTBEAT_OPTIONAL)


def decode_published(parts: Sequence[FrameLike]) -> dict[str, Any]:
    """Any PUB message → its validated body; dispatch on ``body["kind"]`` (for subscribers of all topics)."""
    topic = _read_topic(parts)
    if topic.startswith(ESTIMATE_PREFIX):
        return decode_estimate(parts)
    if topic.startswith(STATUS_PREFIX):
        return decode_status(parts)
    if topic == HEARTBEAT_TOPIC:
        return decode_heartbeat(parts)
    raise WireError(
        f"topic: {topic!r} is none of {ESTIMATE_PREFIX}<stream>{TOPIC_END}, "
        f"{STATUS_PREFIX}<stream>{TOPIC_END}, {HEARTBEAT_TOPIC}"
    )


def json_schema() -> dict[str, Any]:
    """Every message of this schema version as JSON Schema (draft 2020-12): ``$defs`` holds one
    schema per kind (its msgpack map), built from the field checks the codec itself uses. The
    published kinds (estimate, status, heartbeat) allow additional properties (additive fields);
    the internal ones do not. Frames besides the map (topic, pixels, samples) are described in
    each schema's ``description``."""
    kinds = {
        "window": (
            _WINDOW_HEADER,
            _WINDOW_OPTIONAL,
            "frame 0 of a window; frame 1: the raw uint8 pixels, C order",
        ),
        "result": (_RESULT_FIELDS, _RESULT_OPTIONAL, "frame 0 after RESULT; frame 1: n_samples float32 EF %"),
        "failure": (_FAILURE_FIELDS, _FAILURE_OPTIONAL, "the map after FAILED"),
        "estimate": (
            _ESTIMATE_FIELDS,
            _ESTIMATE_OPTIONAL,
            f"body on topic {ESTIMATE_PREFIX}<stream>{TOPIC_END}",
        ),
        "status": (_STATUS_FIELDS, _STATUS_OPTIONAL, f"body on topic {STATUS_PREFIX}<stream>{TOPIC_END}"),
        "heartbeat": (_HEARTBEAT_FIELDS, _HEARTBEAT_OPTIONAL, f"body on topic {HEARTBEAT_TOPIC}"),
    }
    published = {"estimate", "status", "heartbeat"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"edge-agent wire schema, version {SCHEMA_VERSION} (edge_agent.protocol.wire)",
        "description": "msgpack maps; every number is finite (NaN and infinities are refused, which JSON "
        "cannot say) and every integer fits int64",
        "$defs": {
            kind: {
                **_schema_of(_message_record(kind, required, optional, kind in published)),
                "description": what,
            }
            for kind, (required, optional, what) in kinds.items()
        },
    }


@dataclass(frozen=True)
class Estimate(_Message):
    """An estimate (see the estimate body table above): one beat's posterior summary and the running
    one, published by the hub on ``lvef.<stream>.``.

    frame_seq, t, t_ready: the window's; t_published: s (monotonic clock). beat: the summary map
    (``PosteriorSummary.to_dict()``); running: the same plus ``n_beats``. latency_ms: the window's
    last frame → published, ms; stages: ms per stage. reliable: the running estimate's inputs are
    familiar; ood_score, beat_ood_score: the running (median of its beats) and this beat's
    out-of-distribution scores, None when the model has none. demo, truth: empty maps are left off
    the wire; pub_seq: None leaves it off.
    """

    stream: str
    seq: int
    frame_seq: tuple[int, int]
    t: tuple[float, float]
    t_ready: float
    t_published: float
    beat: Mapping[str, Any]
    running: Mapping[str, Any]
    hr_bpm: float | None
    backend: str
    latency_ms: float
    stages: Mapping[str, float]
    reliable: bool
    ood_score: float | None
    beat_ood_score: float | None
    demo: Mapping[str, float] = field(default_factory=dict)
    truth: Mapping[str, float] = field(default_factory=dict)
    pub_seq: int | None = None
    _KIND, _FIELDS, _OPTIONAL = "estimate", _ESTIMATE_FIELDS, _ESTIMATE_OPTIONAL

    def encode(self) -> list[bytes | memoryview]:
        """→ [b"lvef.<stream>", msgpack body]."""
        return encode_estimate(self.stream, self.body())

    @classmethod
    def decode(cls, parts: Sequence[FrameLike]) -> Estimate:
        """[b"lvef.<stream>", msgpack body] → Estimate; raises WireError as :func:`decode_estimate`."""
        return cls.from_map(decode_estimate(parts))


@dataclass(frozen=True)
class Status(_Message):
    """A stream's status (see the status body table above): the hub's on ``status.<stream>.``, and a
    windower's report to the hub, which has neither ``queue``, the HUB_COUNTERS nor ``pub_seq``.

    t: s (monotonic clock); fps: frames/s; hr_bpm: beats/min or None; signal: one of
    SIGNAL_STATES; beat_source: one of BEAT_SOURCES or None. The counters (BASE_COUNTERS,
    FRAME_COUNTERS, DETECTOR_COUNTERS, HUB_COUNTERS) count since start;
    an optional field left None is left off the wire.
    """

    stream: str
    t: float
    fps: float
    hr_bpm: float | None
    signal: str
    windows_dropped: int
    frames_dropped: int
    seq_gaps: int
    queue: int | None = None
    frames_blank: int | None = None
    frames_frozen: int | None = None
    frames_saturated: int | None = None
    windows_rejected: int | None = None
    windows_failed: int | None = None
    windows_missing: int | None = None
    beat_source: str | None = None
    beats_detected: int | None = None
    windows_fixed: int | None = None
    eds_rejected: int | None = None
    eds_corrected: int | None = None
    signal_switches: int | None = None
    detector_resets: int | None = None
    pub_seq: int | None = None
    _KIND, _FIELDS, _OPTIONAL = "status", _STATUS_FIELDS, _STATUS_OPTIONAL

    def encode(self) -> list[bytes | memoryview]:
        """→ [b"status.<stream>", msgpack body]."""
        return encode_status(self.stream, self.body())

    @classmethod
    def decode(cls, parts: Sequence[FrameLike]) -> Status:
        """[b"status.<stream>", msgpack body] → Status; raises WireError as :func:`decode_status`."""
        return cls.from_map(decode_status(parts))


@dataclass(frozen=True)
class Heartbeat(_Message):
    """The publisher's heartbeat on ``heartbeat`` (see the heartbeat paragraph above): host, pid,
    uptime_s (s), t (s, monotonic clock); invalid (messages the hub refused since start) and
    pub_seq are optional, None leaves them off the wire."""

    host: str
    pid: int
    uptime_s: float
    t: float
    invalid: int | None = None
    pub_seq: int | None = None
    _KIND, _FIELDS, _OPTIONAL = "heartbeat", _HEARTBEAT_FIELDS, _HEARTBEAT_OPTIONAL

    def encode(self) -> list[bytes | memoryview]:
        """→ [b"heartbeat", msgpack body]."""
        return encode_heartbeat(self.body())

    @classmethod
    def decode(cls, parts: Sequence[FrameLike]) -> Heartbeat:
        """[b"heartbeat", msgpack body] → Heartbeat; raises WireError as :func:`decode_heartbeat`."""
        return cls.from_map(decode_heartbeat(parts))
