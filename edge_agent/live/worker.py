"""Inference worker: window in → posterior samples out.

Connects a DEALER socket to the hub's ``workers`` endpoint (ipc on one host, tcp across hosts)
and announces itself with READY: the hub sends it one window at a time, only when it has credit,
so a slow worker never accumulates a queue. Per window it runs the backend — the video and
demographics encoded once, the K = 40 fixed starting noises as the batch, 10 DDIM steps — applies
the artefact's dispersion recalibration and returns the K samples (EF %) with the window's
metadata. Summaries and the running estimate are the hub's: consecutive beats of one stream may
be computed by different workers.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import zmq

from edge_agent.core.shipped import resolve
from edge_agent.inference.backends import Backend, load_backend
from edge_agent.model.posterior import recalibrate
from edge_agent.protocol import security, wire
from edge_agent.protocol.transport import TransportConfig, socket

log = logging.getLogger(__name__)
READY_EVERY_S = 2.0
MAX_OOD_SCORE = 1e9  # what an overflowed (infinite) score is sent as: finite on the wire, far above 1


@dataclass(frozen=True)
class WorkerConfig:
    """Inference workers (YAML section ``worker``).

    count: worker processes on this host. backend: auto | onnxruntime | torch (auto: the first, in
        that order, that is installed and can load the model; onnxruntime needs the exported .onnx).
    model: artefact path (.pt with its sidecar .json); relative paths are tried from the current
        directory, then among the shipped files (checkout or wheel). device: cpu | cuda[:n].
    k: posterior samples per window (the paper's 40). seed: seed of the K fixed starting noises
        (the same noises for every window: results are reproducible).
    threads: intra-op threads per worker (share the cores between workers).
    recalibrate: apply the sidecar's dispersion recalibration (see the evaluation report).
    precision: fp32 | fp16 | bf16 | int8, or null for the backend's default (TensorRT and cuda
        fp16, else fp32); TensorRT builds or reuses the engine of that precision, cuda runs under
        autocast (fp16, bf16), ONNX Runtime int8 runs the calibrated ``<model>.int8.onnx``.
    max_batch, cuda_graph, calibration_cache: the GPU backends': the engine's largest batch (null:
        the ONNX sidecar's, else 8; the plan ``build-engine --max-batch`` made), CUDA-graph replay
        (TensorRT and cuda), and the TensorRT 10.x INT8 calibration cache for an int8 engine from
        a float ONNX.
    """

    count: int = 1
    backend: str = "auto"
    model: str = "engines/mcsdr_default.pt"
    device: str = "cpu"
    k: int = 40
    seed: int = 0
    threads: int = 1
    recalibrate: bool = True
    precision: Literal["fp32", "fp16", "bf16", "int8"] | None = None
    max_batch: int | None = None
    cuda_graph: bool = True
    calibration_cache: str | None = None


def starting_noises(k: int, seed: int) -> np.ndarray:
    """The K fixed DDIM starting noises y_T (K,) float32, N(0, 1)."""
    return np.random.default_rng(seed).standard_normal(k).astype(np.float32)


class Worker:
    """The worker's lifecycle: ``start`` loads the backend and connects, ``process`` serves one
    window, ``stop`` closes."""

    def __init__(
        self,
        cfg: WorkerConfig,
        transport: TransportConfig,
        workers_endpoint: str,
        identity: str | None = None,
    ) -> None:
        """identity: the worker's name at the hub, kept by its restarted successor (the agent's
        workers are ``worker:<i>``), so the hub knows at once that the window the dead one held
        is lost; None: ZeroMQ's random identity (remote workers: the hub's result timeout)."""
        self.cfg, self.transport, self.endpoint = cfg, transport, workers_endpoint
        self.identity = identity
        # This process's incarnation, sent with every READY: a READY from a new incarnation of an
        # identity that had a window out means that window died with its predecessor.
        self.incarnation = f"{os.getpid()}-{time.time_ns()}".encode()
        self.served = 0
        self.invalid = 0  # windows that did not decode
        self.failed = 0  # windows whose backend samples were NaN, infinite, out of range or misshapen
        self.backend: Backend | None = None
        self.ctx: zmq.Context | None = None

    def start(self) -> None:
        self.backend = load_backend(
            self.cfg.backend,
            resolve(self.cfg.model),
            device=self.cfg.device,
            threads=self.cfg.threads,
            precision=self.cfg.precision,
            engine={
                "max_batch": self.cfg.max_batch,
                "cuda_graph": self.cfg.cuda_graph,
                "calibration_cache": self.cfg.calibration_cache,
            },
        )
        recal = self.backend.sidecar.get("recalibration") or {}
        self.scale = float(recal["scale"]) if self.cfg.recalibrate and recal.get("scale") else None
        self.noise = starting_noises(self.cfg.k, self.cfg.seed)[None]
        self.ctx = zmq.Context()
        self.sock = socket(self.ctx, zmq.DEALER, self.transport, hwm=4)
        self.handshakes = security.secure_client(self.sock, self.endpoint, self.transport)  # CURVE on tcp
        if self.identity is not None:
            self.sock.setsockopt(zmq.IDENTITY, self.identity.encode())
        self.sock.connect(self.endpoint)
        self._ready()
        log.info(
            "worker: %s backend, K=%d, recalibration %s → %s",
            self.backend.name,
            self.cfg.k,
            self.scale,
            self.endpoint,
        )

    def infer(self, window: wire.Window) -> tuple[np.ndarray, float | None]:
        """One window → its posterior samples (K,) EF %, recalibrated when configured, and its
        out-of-distribution score (None when the model has none).

        Raises WireError when the backend's samples are not K finite EFs in [0, 100] % — checked
        before the recalibration too, whose clipping would hide an infinite sample: such a
        posterior is never sent (a broken engine, an fp16 overflow)."""
        demo, mask = window.demographics_arrays()
        out = self.backend.posterior(window.frames[None], demo[None], mask[None], self.noise)
        raw = np.asarray(out.samples)
        if raw.shape != (1, self.cfg.k):
            raise wire.WireError(
                f"{self.backend.name} backend samples: shape {raw.shape}, expected (1, {self.cfg.k})"
            )
        wire.check_samples(raw[0], f"{self.backend.name} backend samples")
        samples = recalibrate(raw[0], self.scale) if self.scale else raw[0]
        wire.check_samples(samples, "recalibrated samples")
        # NaN: the model has no score. A score past float range (an fp16 engine on an input very
        # far from the training data) is still a score: far above 1, never "unknown".
        score = float(out.ood_score[0])
        return samples, (None if np.isnan(score) else min(max(score, 0.0), MAX_OOD_SCORE))

    def _fail(self, reason: str, error: wire.WireError, window: wire.Window | None = None) -> None:
        """Tell the hub this window has no posterior (it counts it in the stream's windows_failed
        and sends the next one: a failure, like a result, is a request for more)."""
        self.sock.send_multipart([wire.FAILED, *wire.encode_failure(reason, str(error), window)])
        self._last_ready = time.monotonic()

    def _ready(self) -> None:
        self.sock.send_multipart([wire.READY, self.incarnation])
        self._last_ready = time.monotonic()

    def process(self, timeout: float = 0.2) -> bool:
        """Serve at most one window (waits up to ``timeout`` s); always True (a worker runs until stopped).

        An idle worker repeats READY every READY_EVERY_S: a hub that restarted (and forgot its
        credits) learns of it again; the hub keeps one credit per worker whatever it hears.
        """
        if not self.sock.poll(int(timeout * 1000)):
            now = time.monotonic()
            if now - self._last_ready > READY_EVERY_S:
                self._ready()
            return True
        parts = self.sock.recv_multipart(copy=False)
        t0 = time.monotonic()
        try:
            window = wire.decode_window(parts)
        except wire.WireError as e:  # never let one bad message kill the worker: say so, ask for more
            self.invalid += 1
            log.error("worker: invalid window dropped (%d so far): %s", self.invalid, e)
            self._fail("invalid_window", e)
            return True
        try:
            samples, ood_score = self.infer(window)
        except wire.WireError as e:
            self.failed += 1
            log.error(
                "worker: %s window %d not published (%d failed so far): %s",
                window.stream,
                window.seq,
                self.failed,
                e,
            )
            self._fail("bad_samples", e, window)
            return True
        done = time.monotonic()
        result = wire.encode_result(
            window, samples, self.backend.name, 1000.0 * (done - t0), done, ood_score=ood_score
        )
        self.sock.send_multipart([wire.RESULT, *result], copy=False)
        self._last_ready = time.monotonic()  # a result is also a request for the next window
        self.served += 1
        return True

    def stop(self) -> None:
        if self.ctx is not None:
            self.ctx.destroy()
        if self.backend is not None:
            self.backend.close()
        log.info("worker: %d windows served, %d invalid, %d failed", self.served, self.invalid, self.failed)
