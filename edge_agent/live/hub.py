"""Hub: the broker between windowers and workers, and the publisher of every topic.

Binds (see :mod:`edge_agent.protocol.transport`):
    windows  PULL   windows and status reports from the windowers
    workers  ROUTER workers: READY credit, windows out, results in
    publish  XPUB   ``lvef.<stream>.``, ``status.<stream>.``, ``heartbeat`` to any subscriber

Load balancing with credit (the ZeroMQ guide's load-balancing broker): a worker receives a window
only after it said READY or returned a result, so windows never queue inside a slow worker; they
wait here, at most ``queue_per_stream`` per stream, the oldest dropped (and counted) first — the
newest beat is the one a bedside monitor wants. The oldest waiting window of any stream goes first.

Peers that take windows and never answer (a hung remote worker, a hostile process on the workers
endpoint) cannot starve the others: ready workers that have returned a result are served before
those that never have, and a worker whose window timed out gets no other (its READYs are ignored)
until it returns a well-formed result or a back-off has passed: result_timeout_s, doubling with each
timeout in a row, at most BENCH_MAX_S (a refused answer neither lifts the bench nor earns
preference). Log lines peers can provoke are rate-limited with counts
(:class:`~edge_agent.core.ratelimit.RateLimitedLog`). What the hub remembers of peers is bounded:
at most MAX_PEERS identities (those unseen the longest, holding no window, are forgotten first, so
a flood of new identities cannot exhaust memory; a worker forgotten is learned again at its next
READY, which idle workers repeat), and
at most MAX_EXPIRED timed-out windows whose late result would still be un-counted, and at most
MAX_STREAMS stream names: windows and status reports naming a new stream past it are refused and
counted invalid (the agent's own windowers name only the configured streams).

Results come back as posterior samples; the hub keeps each stream's running posterior (it is the
one place every beat of a stream meets, whichever worker computed it) and publishes the beat's
summary with the running estimate. A window numbered at or below the stream's last one means its
windower restarted: window numbers start again at 0 and the running estimate starts afresh.

XPUB sees each new subscription, and the hub answers it with the last message of every matching
topic (a last-value cache): a monitor that joins late shows the latest estimate at once.
Subscribers already connected may then see that message twice; they drop an estimate whose
(stream, seq) they have seen.
"""

from __future__ import annotations

import logging
import os
import re
import socket as pysocket
import time
from collections import deque
from dataclasses import dataclass, field

import zmq

from edge_agent.core.ratelimit import RateLimitedLog
from edge_agent.core.reliability import is_reliable
from edge_agent.model.posterior import RunningPosterior, summarize
from edge_agent.protocol import security, wire
from edge_agent.protocol.transport import TransportConfig, socket

log = logging.getLogger(__name__)
peer_log = RateLimitedLog(log)
BENCH_MAX_S = 300.0  # longest back-off of a worker whose windows keep timing out
MAX_PEERS = 256  # worker identities remembered (a real deployment has a handful)
MAX_EXPIRED = 1024  # timed-out windows remembered (their late results are un-counted)
MAX_STREAMS = 256  # stream names served (a ward has tens of beds)


@dataclass(frozen=True)
class HubConfig:
    """Hub (YAML section ``hub``).

    queue_per_stream: windows waiting for a worker per stream before the oldest is dropped.
    result_timeout_s: s after which a window sent to a worker counts as dropped (a remote worker
        died: the agent's own workers keep their identity, so their loss is known at restart);
        a result that still arrives later is published and un-counted.
    status_period_s, heartbeat_period_s: s between status / heartbeat messages.
    stale_after_s: s without a new estimate (while the stream is up) before its status is "stale".
    running_beats: beats pooled in the running estimate.
    max_gap_s: a pause longer than this (s) restarts the running estimate.
    publish_demographics: put the window's demographics (``demo``) into each published estimate;
        false (default) keeps patient data off the publish socket.
    """

    queue_per_stream: int = 2
    result_timeout_s: float = 10.0
    status_period_s: float = 0.5
    heartbeat_period_s: float = 1.0
    stale_after_s: float = 5.0
    running_beats: int = 5
    max_gap_s: float = 10.0
    publish_demographics: bool = False


@dataclass
class _Stream:
    running: RunningPosterior
    queue: deque = field(default_factory=deque)  # (t_sent, header Window, message parts)
    report: wire.Status | None = None  # the windower's latest status
    t_report: float = 0.0
    t_first: float = field(default_factory=time.monotonic)
    t_estimate: float | None = None
    dropped: int = 0  # windows dropped here (queue overflow, worker lost)
    failed: int = 0  # windows a worker failed on (wire.FAILED) or whose result was refused
    estimates: int = 0
    last_seq: int | None = None  # of the last window received
    restarts: int = 0
    missing: int = 0  # window numbers skipped in what arrived here (see windows_missing)


@dataclass
class _Peer:
    """A worker identity, as the hub has seen it answer."""

    last_seen: float  # monotonic s of its last message
    incarnation: bytes = b""  # its process's, from READY: a new one means it restarted
    answered: int = 0  # results and failures it returned
    strikes: int = 0  # its windows that timed out in a row
    benched_until: float = 0.0  # monotonic s: no window for it (its READY ignored) before this


def stage_times(result: wire.Result, t_published: float) -> dict[str, float]:
    """Per-stage durations (ms) of one window, from the timestamps its result carries (all on the
    capture host's monotonic clock when hub, windower and worker share a host)."""
    t_start = result.t_done - result.infer_ms / 1000.0  # the worker received the window
    return {
        "detect": 1000.0 * (result.t_ready - result.t[1]),
        "window": 1000.0 * (result.t_sent - result.t_ready),
        "to_worker": 1000.0 * (t_start - result.t_sent),
        "infer": float(result.infer_ms),
        "publish": 1000.0 * (t_published - result.t_done),
    }


def host_name() -> str:
    """This host's name in the heartbeat's character set."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", pysocket.gethostname())[:255] or "host"


class Hub:
    """The hub's lifecycle: ``start`` binds, ``process`` handles what arrived, ``stop`` closes."""

    def __init__(self, cfg: HubConfig, transport: TransportConfig, endpoints: dict[str, str]) -> None:
        self.cfg, self.transport, self.endpoints = cfg, transport, endpoints
        self.streams: dict[str, _Stream] = {}
        self.ready: deque[bytes] = deque()
        self.in_flight: dict[bytes, tuple[str, int, float]] = {}  # worker → (stream, seq, t sent)
        self.expired: dict[tuple[str, int], None] = {}  # timed-out windows, oldest first (a set in order)
        self.cache: dict[bytes, list[bytes]] = {}  # topic → last message (last-value cache)
        self.peers: dict[bytes, _Peer] = {}  # worker identity → how it has answered
        self.peers_forgotten = 0
        self.pub_counts: dict[str, int] = {}  # topic → messages published on it
        self.invalid = 0
        self.ctx: zmq.Context | None = None
        self.auth: security.ThreadAuthenticator | None = None  # CURVE's ZAP handler, when on

    def start(self) -> None:
        self.t_start = time.monotonic()
        self.ctx = zmq.Context()
        self.pull = socket(self.ctx, zmq.PULL, self.transport, hwm=100)
        self.router = socket(self.ctx, zmq.ROUTER, self.transport, hwm=100)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished worker raises instead of dropping
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted worker takes its identity over
        self.xpub = socket(self.ctx, zmq.XPUB, self.transport, hwm=self.transport.pub_hwm)
        self.xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, even repeated, reaches the cache
        # CURVE (when configured) on every tcp socket, its authenticator running before any bind.
        sockets = {"windows": self.pull, "workers": self.router, "publish": self.xpub}
        self.auth = security.secure_server(self.ctx, sockets, self.endpoints, self.transport)
        self.pull.bind(self.endpoints["windows"])
        self.router.bind(self.endpoints["workers"])
        self.xpub.bind(self.endpoints["publish"])
        self.poller = zmq.Poller()
        for s in (self.pull, self.router, self.xpub):
            self.poller.register(s, zmq.POLLIN)
        self._next_status = self._next_heartbeat = time.monotonic()
        log.info(
            "hub: windows %s, workers %s, publish %s",
            *(self.endpoints[k] for k in ("windows", "workers", "publish")),
        )

    # ----- one turn of the loop ------------------------------------------------------------------
    def process(self, timeout: float = 0.05) -> bool:
        """Handle everything that arrived within ``timeout`` s, dispatch, publish due status; True."""
        for sock, _ in self.poller.poll(int(timeout * 1000)):
            while True:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                if sock is self.pull:
                    self._on_window_socket(parts)
                elif sock is self.router:
                    self._on_worker(parts)
                else:
                    self._on_subscription(parts[0].bytes)
        now = time.monotonic()
        self._expire(now)
        self._dispatch()
        if now >= self._next_status:
            self._next_status = now + self.cfg.status_period_s
            for name in self.streams:
                self._publish_status(name, now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.cfg.heartbeat_period_s
            heartbeat = wire.Heartbeat(
                host=host_name(),
                pid=os.getpid(),
                uptime_s=now - self.t_start,
                t=now,
                invalid=self.invalid,  # messages refused since start (each logged with its reason)
                pub_seq=self._pub_seq(wire.HEARTBEAT_TOPIC),
            )
            self._publish(heartbeat.encode())
        return True

    def _stream(self, name: str) -> _Stream | None:
        """The record of stream ``name``, new if need be; None (refused, counted invalid) for a new
        name past MAX_STREAMS."""
        st = self.streams.get(name)
        if st is None and len(self.streams) >= MAX_STREAMS:
            self.invalid += 1
            peer_log.error(
                "stream-limit",
                "hub: a message for new stream %r dropped: %d streams are served already (MAX_STREAMS); "
                "a windower on the windows endpoint names streams the agent was not configured with",
                name,
                MAX_STREAMS,
            )
        elif st is None:
            st = self.streams[name] = _Stream(RunningPosterior(self.cfg.running_beats, self.cfg.max_gap_s))
        return st

    def _on_window_socket(self, parts: list[zmq.Frame]) -> None:
        try:
            if parts[0].bytes.startswith(wire.STATUS_PREFIX.encode()):
                report = wire.Status.decode(parts)
                st = self._stream(report.stream)
                if st is not None:
                    changed = st.report is None or st.report.signal != report.signal
                    st.report, st.t_report = report, time.monotonic()
                    if changed:  # a signal change goes out at once, not at the next status period
                        self._publish_status(report.stream, st.t_report)
                return
            window = wire.decode_window(parts)
        except wire.WireError as e:
            self.invalid += 1
            peer_log.error("windower-invalid", "hub: invalid message from a windower dropped: %s", e)
            return
        st = self._stream(window.stream)
        if st is None:
            return
        if st.last_seq is not None and window.seq <= st.last_seq:
            # The stream's windower restarted (its capture died): numbering and view epochs begin
            # again, and the running estimate must not pool beats from before the interruption.
            st.running = RunningPosterior(self.cfg.running_beats, self.cfg.max_gap_s)
            st.restarts += 1
            log.warning("hub: %s restarted (window seq %d after %d)", window.stream, window.seq, st.last_seq)
        elif st.last_seq is not None and window.seq > st.last_seq + 1:
            # Numbers skipped: windows that never reached the hub (the windower counts its own
            # drops; anything beyond them was lost on the way). Reported on the status.
            st.missing += window.seq - st.last_seq - 1
        st.last_seq = window.seq
        if len(st.queue) >= self.cfg.queue_per_stream:
            _t, old, _p = st.queue.popleft()
            st.dropped += 1
            log.warning("hub: %s window %d dropped (workers busy)", old.stream, old.seq)
        st.queue.append((window.t_sent, window, parts))

    def _on_worker(self, parts: list[zmq.Frame]) -> None:
        identity, kind = parts[0].bytes, parts[1].bytes
        peer = self._peer(identity)
        if kind == wire.READY:
            incarnation = parts[2].bytes if len(parts) > 2 else peer.incarnation
            if peer.incarnation not in (b"", incarnation) and identity in self.in_flight:
                # A new process under a known identity: its predecessor died with this window.
                stream, seq, _t = self.in_flight.pop(identity)
                self._stream(stream).dropped += 1
                log.warning("hub: %s restarted; %s window %d it held is lost", identity.decode(), stream, seq)
            peer.incarnation = incarnation
            # Idle workers repeat READY (so a restarted hub learns of them): one credit per worker,
            # none while its window is out (the READY crossed the window on the wire) or while it
            # is benched for letting windows time out.
            benched = time.monotonic() < peer.benched_until
            if identity not in self.in_flight and identity not in self.ready and not benched:
                self.ready.append(identity)
            return
        if kind not in (wire.RESULT, wire.FAILED):
            self.invalid += 1
            peer_log.error(
                "worker-unknown", "hub: unknown message %r from a worker dropped (counted invalid)", kind[:16]
            )
            return
        window = self.in_flight.pop(identity, None)  # (stream, seq, t sent) of its window, if any
        try:
            if kind == wire.FAILED:
                failure = wire.Failure.decode(parts[2:])
                self._answered(peer)
                self._window_failed(window, f"{failure.reason}: {failure.detail}")
            else:
                result = wire.Result.decode(parts[2:])
                self._answered(peer)
                key = (result.stream, result.seq)
                if key in self.expired:  # counted as dropped when it timed out; it came back after all
                    del self.expired[key]
                    self._stream(key[0]).dropped -= 1
                self._publish_estimate(result)
        except wire.WireError as e:
            self.invalid += 1
            # Not an answer: no preference earned and no bench lifted (its credit comes back, as a
            # buggy backend's worker must keep serving; answering workers are served first).
            self._window_failed(window, f"its message was refused (counted invalid): {e}")
        if identity not in self.ready and time.monotonic() >= peer.benched_until:
            self.ready.append(identity)

    def _peer(self, identity: bytes) -> _Peer:
        """The record of a worker identity, seen now; past MAX_PEERS the longest unseen are forgotten."""
        now = time.monotonic()
        peer = self.peers.pop(identity, None) or _Peer(last_seen=now)
        peer.last_seen = now
        self.peers[identity] = peer  # re-inserted: the dict stays in order of last message
        if len(self.peers) > MAX_PEERS:
            # Forget a quarter at once (oldest first, never one holding a window): amortised O(1).
            idle = [i for i in self.peers if i not in self.in_flight][: MAX_PEERS // 4]
            for gone in idle:
                del self.peers[gone]
            self.ready = deque(i for i in self.ready if i in self.peers)
            self.peers_forgotten += len(idle)
            peer_log.warning(
                "peers-forgotten",
                "hub: over %d worker identities; %d forgotten so far",
                MAX_PEERS,
                self.peers_forgotten,
            )
        return peer

    @staticmethod
    def _answered(peer: _Peer) -> None:
        """A well-formed result or failure: the worker answers; its timeouts are forgiven."""
        peer.answered, peer.strikes, peer.benched_until = peer.answered + 1, 0, 0.0

    def _bench(self, peer: _Peer, now: float) -> float:
        """One more timeout in a row: no window for the back-off, returned (s)."""
        peer.strikes += 1
        back_off = min(BENCH_MAX_S, self.cfg.result_timeout_s * 2 ** (peer.strikes - 1))
        peer.benched_until = now + back_off
        return back_off

    def _window_failed(self, window: tuple[str, int, float] | None, why: str) -> None:
        """A worker gave no usable posterior for the window it had: count it in the stream's
        windows_failed (a window that already expired was counted dropped) and say why."""
        if window is None:
            peer_log.error(
                "worker-failed", "hub: a worker failed with no window out (expired or unknown): %s", why
            )
            return
        stream, seq, _t = window
        self._stream(stream).failed += 1
        peer_log.error(
            "worker-failed", "hub: %s window %d failed in a worker, not published: %s", stream, seq, why
        )

    def _expire(self, now: float) -> None:
        """A window out for longer than result_timeout_s counts as dropped (its worker probably
        died or never answers) and its worker is benched: no window until it returns a result or
        its back-off (result_timeout_s doubling per timeout in a row, at most BENCH_MAX_S) is over."""
        for identity, (stream, seq, t_sent) in list(self.in_flight.items()):
            if now - t_sent > self.cfg.result_timeout_s:
                del self.in_flight[identity]
                self.expired[(stream, seq)] = None
                if len(self.expired) > MAX_EXPIRED:
                    del self.expired[next(iter(self.expired))]
                self.streams[stream].dropped += 1
                back_off = self._bench(self.peers[identity], now)  # in flight: never forgotten
                peer_log.warning(
                    "worker-timeout",
                    "hub: no result for %s window %d after %.1f s; that worker gets no window for %.1f s",
                    stream,
                    seq,
                    now - t_sent,
                    back_off,
                )

    def _dispatch(self) -> None:
        while self.ready:
            waiting = [(st.queue[0][0], name) for name, st in self.streams.items() if st.queue]
            if not waiting:
                return
            _t, name = min(waiting)
            # Workers that have answered before those that never have.
            identity = next((i for i in self.ready if self.peers[i].answered), self.ready[0])
            self.ready.remove(identity)
            _t_sent, window, parts = self.streams[name].queue.popleft()
            try:
                self.router.send_multipart([identity, *parts], copy=False)
            except zmq.ZMQError:  # that worker is gone: put the window back, try the next worker
                self.streams[name].queue.appendleft((_t_sent, window, parts))
                continue
            self.in_flight[identity] = (name, window.seq, time.monotonic())

    # ----- publishing ------------------------------------------------------------------------------
    def _publish(self, parts: list) -> None:
        message = [bytes(p) for p in parts]
        self.cache[message[0]] = message
        self.xpub.send_multipart(message)

    def _pub_seq(self, topic: str) -> int:
        """The next message number on ``topic`` (0, 1, ...): subscribers find their losses by it."""
        n = self.pub_counts.get(topic, 0)
        self.pub_counts[topic] = n + 1
        return n

    def _on_subscription(self, event: bytes) -> None:
        if not event or event[0] != 1:
            return  # unsubscribe
        prefix = event[1:]
        for topic, message in self.cache.items():
            if topic.startswith(prefix):
                self.xpub.send_multipart(message)

    def _publish_estimate(self, result: wire.Result) -> None:
        name = result.stream
        st = self._stream(name)
        truth = dict(result.truth)
        st.running.add(
            result.seq,
            result.samples,
            result.view,
            t=result.t[1],
            truth_ef=truth.get("ef"),
            fixed=result.beat == "fixed",
            ood_score=result.ood_score,
        )
        running_truth = st.running.truth_mean()
        running_ood = st.running.ood_score()
        if running_truth is not None:
            truth["ef_running"] = running_truth
        now = time.monotonic()
        estimate = wire.Estimate(
            stream=name,
            seq=result.seq,
            frame_seq=result.frame_seq,
            t=result.t,
            t_ready=result.t_ready,
            t_published=now,
            beat=summarize(result.samples).to_dict(),
            running={**st.running.summary().to_dict(), "n_beats": st.running.beats},
            reliable=is_reliable(running_ood),
            ood_score=running_ood,
            beat_ood_score=result.ood_score,
            hr_bpm=result.hr_bpm,
            backend=result.backend,
            latency_ms=1000.0 * (now - result.t[1]),
            stages=stage_times(result, now),
            truth=truth,
            demo=result.demo if self.cfg.publish_demographics else {},  # patient data: only when asked
            pub_seq=self._pub_seq(wire.estimate_topic(name)),
        )
        self._publish(estimate.encode())
        st.t_estimate = now
        st.estimates += 1

    def _publish_status(self, name: str, now: float) -> None:
        st = self.streams[name]
        report = st.report
        # No report for three periods: the windower (or its capture) is gone.
        recent = report is not None and now - st.t_report < 3 * self.cfg.status_period_s + 1.0
        fresh = report if recent else None
        signal = "lost" if fresh is None else fresh.signal
        last = st.t_estimate if st.t_estimate is not None else st.t_first
        if signal == "ok" and now - last > self.cfg.stale_after_s:
            signal = "stale"
        # The windower's counters, 0 before its first report (or when it has no frame checks); bad
        # input comes from its frame checks (live/frame_checks.py), failed posteriors from here.
        counted = (*wire.BASE_COUNTERS, *wire.FRAME_COUNTERS, *wire.DETECTOR_COUNTERS)
        counts = {k: getattr(report, k, None) or 0 for k in counted}
        counts["windows_dropped"] += st.dropped
        status = wire.Status(
            stream=name,
            t=now,
            fps=0.0 if fresh is None else fresh.fps,
            hr_bpm=None if report is None else report.hr_bpm,
            signal=signal,
            queue=len(st.queue),  # windows waiting here for a worker (metrics exporter's queue depth)
            windows_failed=st.failed,
            windows_missing=st.missing,
            beat_source=None if report is None else report.beat_source,
            pub_seq=self._pub_seq(wire.status_topic(name)),
            **counts,
        )
        self._publish(status.encode())

    @property
    def busy(self) -> bool:
        """Windows waiting or being computed."""
        return bool(self.in_flight) or any(st.queue for st in self.streams.values())

    def stop(self) -> None:
        if self.auth is not None:
            self.auth.stop()  # its thread's sockets must close before the context is destroyed
        if self.ctx is not None:
            self.ctx.destroy()
        total = sum(st.estimates for st in self.streams.values())
        dropped = sum(st.dropped for st in self.streams.values())
        log.info(
            "hub: %d estimates published, %d windows dropped here, %d invalid", total, dropped, self.invalid
        )
