"""The live agent: configuration, ``compose`` (every stage wired in one place) and the supervisor.

    per stream:  Capture ──ring──► Windower ──┐
                                               ├─► Hub ◄──► Worker × N
    per stream:  Capture ──ring──► Windower ──┘     │
                                                    └─► PUB: lvef.<stream>, status.<stream>, heartbeat

Every stage is a real OS process (multiprocessing "spawn": no inherited threads or torch state)
with the same small lifecycle — ``start()``, ``process()`` until it returns False or SIGTERM
arrives, ``stop()`` — run by :func:`edge_agent.core.stage.run_child`. The supervisor
(:class:`Agent`, a stage too: :meth:`Agent.run` runs it with the same loop) starts the hub,
the workers, then per stream the windower and the capture; restarts a process that dies (a dead
capture takes its windower with it: the new capture makes a new ring); and on SIGINT/SIGTERM stops
the captures first, then the rest, with a deadline, SIGKILLs what is left, unlinks any ring a dead
capture left in /dev/shm and removes its run directory. Children ask the kernel to SIGTERM them if
the supervisor itself dies (PR_SET_PDEATHSIG), so not even a SIGKILLed supervisor leaves orphans.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import multiprocessing as mp
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.clients.alarms import AlarmConfig
from edge_agent.clients.prometheus import MetricsConfig, MetricsExporter, connect_endpoint
from edge_agent.clients.ward import WardServer, WebConfig
from edge_agent.config import ConfigError, from_mapping, load_yaml, parse_with_overrides
from edge_agent.core.stage import Stage, run_child, run_stage
from edge_agent.live.capture import Capture, CaptureConfig, StreamConfig
from edge_agent.live.cycles import CycleConfig
from edge_agent.live.hub import Hub, HubConfig
from edge_agent.live.ringbuffer import SHM_DIR, cleanup_stale, segment_name
from edge_agent.live.windower import WindowConfig, Windower
from edge_agent.live.worker import Worker, WorkerConfig
from edge_agent.protocol.security import check_exposure
from edge_agent.protocol.transport import TransportConfig, endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupervisorConfig:
    """Supervisor (YAML section ``supervisor``).

    restart: restart a process that exits with an error. max_restarts: restarts allowed per
    process within restart_window_s before the agent gives up and stops (a crash loop is a fault
    to report, not to hide). restart_delay_s: pause before a restart. stop_timeout_s: how long
    each stage may take to stop before SIGKILL. log_level: DEBUG, INFO, WARNING, ERROR.
    """

    restart: bool = True
    max_restarts: int = 5
    restart_window_s: float = 60.0
    restart_delay_s: float = 0.5
    stop_timeout_s: float = 5.0
    log_level: str = "INFO"


@dataclass(frozen=True)
class AgentConfig:
    """The whole agent: one section per stage (see configs/default.yaml)."""

    streams: tuple[StreamConfig, ...] = (StreamConfig(),)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    cycles: CycleConfig = field(default_factory=CycleConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    alarms: AlarmConfig = field(default_factory=AlarmConfig)  # for the monitor and the ward page
    web: WebConfig = field(default_factory=WebConfig)


SECTIONS: dict[str, type] = {
    "capture": CaptureConfig,
    "cycles": CycleConfig,
    "windows": WindowConfig,
    "transport": TransportConfig,
    "worker": WorkerConfig,
    "hub": HubConfig,
    "supervisor": SupervisorConfig,
    "metrics": MetricsConfig,
    "alarms": AlarmConfig,
    "web": WebConfig,
}


def parse_agent_config(data: Mapping[str, Any], source: str) -> AgentConfig:
    """A mapping of sections → AgentConfig; unknown sections/keys and bad values raise ConfigError."""
    unknown = sorted(map(str, set(data) - set(SECTIONS) - {"streams"}))
    if unknown:
        raise ConfigError(
            f"{source}: unknown section(s) {unknown}; valid sections are {sorted([*SECTIONS, 'streams'])}"
        )
    raw_streams = data.get("streams", [dataclasses.asdict(StreamConfig())])
    if not isinstance(raw_streams, list) or not raw_streams:
        raise ConfigError(f"{source}:streams: expected a list of at least one stream, got {raw_streams!r}")
    streams = tuple(
        from_mapping(StreamConfig, s, f"{source}:streams[{i}]") for i, s in enumerate(raw_streams)
    )
    ids = [s.id for s in streams]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{source}:streams: stream ids must be unique, got {ids}")
    sections = {name: from_mapping(cls, data.get(name), f"{source}:{name}") for name, cls in SECTIONS.items()}
    cfg = AgentConfig(streams=streams, **sections)
    if cfg.worker.count < 0:
        raise ConfigError(
            f"{source}:worker.count: must be >= 0 (0: only remote workers), got {cfg.worker.count}"
        )
    check_exposure(cfg.transport, source)  # nothing binds beyond loopback without CURVE or consent
    return cfg


def load_agent_config(
    path: str | Path | None, overrides: Sequence[str] = (), sources: Sequence[str] | None = None
) -> AgentConfig:
    """Read a YAML config (None: the built-in defaults), replace its streams by ``sources`` (URIs,
    named bed1, bed2, ...) when given, and apply ``section.key=value`` overrides (``streams.0.fps=30``)."""
    data = load_yaml(path) if path is not None else {}
    if sources:
        data["streams"] = [{"id": f"bed{i + 1}", "source": uri} for i, uri in enumerate(sources)]
    elif "streams" not in data:
        data["streams"] = [dataclasses.asdict(StreamConfig())]
    return parse_with_overrides(
        parse_agent_config, data, overrides, str(path) if path is not None else "defaults"
    )


# ---------------------------------------------------------------- stage processes


@dataclass
class _Proc:
    name: str
    factory: Callable[[], Stage]
    order: int  # start order; stop runs in reverse
    process: mp.process.BaseProcess | None = None
    ready: Any = None  # multiprocessing Event set by the stage once started
    restarts: list[float] = field(default_factory=list)
    finished: bool = False  # exited 0: its source ended; not restarted


class AgentError(RuntimeError):
    """The agent cannot go on (a process keeps crashing); the message names it."""


class Agent:
    """Compose and supervise the live agent. ``start`` → ``check`` periodically → ``stop``, or ``run``."""

    def __init__(self, cfg: AgentConfig, run_dir: str | Path | None = None) -> None:
        self.cfg = cfg
        self._own_run_dir = run_dir is None
        self.run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="edge_agent_"))
        t = cfg.transport
        self.endpoints = {k: endpoint(getattr(t, k), self.run_dir) for k in ("windows", "workers", "publish")}
        self.rings = {s.id: segment_name(s.id) for s in cfg.streams}
        self.procs = compose(cfg, self.endpoints, self.rings)
        self._ctx = mp.get_context("spawn")
        self.started = False

    @staticmethod
    def _release(p: _Proc) -> None:
        """Free a dead process's handle now (its sentinel pipe), not whenever the GC gets to it: a
        supervisor that restarts workers for months must not accumulate descriptors."""
        if p.process is not None and p.process.exitcode is not None:
            p.process.close()
            p.process = None

    def _launch(self, p: _Proc) -> None:
        self._release(p)
        p.ready = self._ctx.Event()
        proc = self._ctx.Process(
            target=run_child,
            args=(p.name, p.factory, self.cfg.supervisor.log_level, p.ready),
            name=p.name,
            daemon=False,
        )
        proc.start()
        p.process = proc

    def start(self, ready_timeout_s: float = 120.0) -> None:
        """Start every process: hub, then workers, then per stream windower and capture, each group
        once the one before it is ready (a capture must not make beats before a worker can take them);
        returns once the captures have opened their sources, i.e. frames are flowing."""
        for rank in sorted({p.order for p in self.procs}):
            group = [p for p in self.procs if p.order == rank]
            for p in group:
                self._launch(p)
            for p in group if rank != 2 else []:  # windowers wait for their ring by themselves
                self._wait_ready(p, time.monotonic() + ready_timeout_s)
        self.started = True

    def _wait_ready(self, p: _Proc, deadline: float) -> None:
        assert p.process is not None
        while not p.ready.wait(0.1):
            if not p.process.is_alive() or time.monotonic() > deadline:
                code = p.process.exitcode
                self.stop()
                why = f"exited with code {code}" if code is not None else "was not ready in time"
                raise AgentError(f"{p.name} failed to start: it {why}; see its log above")
        log.info("agent: %d processes; publishing on %s", len(self.procs), self.endpoints["publish"])

    def _stream_of(self, p: _Proc) -> str | None:
        for kind in ("capture:", "windower:"):
            if p.name.startswith(kind):
                return p.name[len(kind) :]
        return None

    def check(self) -> None:
        """Reap dead processes and restart them (raises AgentError on a crash loop)."""
        sup = self.cfg.supervisor
        for p in self.procs:
            proc = p.process
            if proc is None or proc.is_alive() or p.finished:
                continue
            code = proc.exitcode
            if code == 0:
                p.finished = True
                log.info("agent: %s finished", p.name)
                continue
            log.error("agent: %s died (exit code %s)", p.name, code)
            if not sup.restart:
                raise AgentError(f"{p.name} died with exit code {code} and supervisor.restart is false")
            now = time.monotonic()
            p.restarts = [t for t in p.restarts if now - t < sup.restart_window_s] + [now]
            if len(p.restarts) > sup.max_restarts:
                raise AgentError(
                    f"{p.name} died {len(p.restarts)} times within {sup.restart_window_s:.0f} s (last exit "
                    f"code {code}); see its log above; raise supervisor.max_restarts only if that is expected"
                )
            stream = self._stream_of(p)
            if p.name.startswith("capture:") and stream is not None:
                # The windower holds the dead capture's ring; both start again on a new ring.
                self._terminate([q for q in self.procs if q.name == f"windower:{stream}"])
                cleanup_stale(self.rings[stream])
                todo = [q for q in self.procs if q.name in (f"windower:{stream}", p.name)]
            else:
                todo = [p]
            time.sleep(sup.restart_delay_s)
            for q in sorted(todo, key=lambda q: q.order):
                log.info("agent: restarting %s", q.name)
                self._launch(q)

    def _terminate(self, procs: Sequence[_Proc]) -> None:
        """SIGTERM, wait up to stop_timeout_s, then SIGKILL."""
        live = [p.process for p in procs if p.process is not None and p.process.is_alive()]
        for proc in live:
            proc.terminate()
        deadline = time.monotonic() + self.cfg.supervisor.stop_timeout_s
        for proc in live:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("agent: %s did not stop in time; killing it", proc.name)
                proc.kill()
                proc.join(2.0)

    def stop_sources(self) -> None:
        """Stop the captures and windowers (the hub and workers finish the windows in flight)."""
        sources = [p for p in self.procs if p.order >= 2]
        self._terminate(sorted(sources, key=lambda p: -p.order))
        for p in sources:
            p.finished = True  # stopped on purpose: not to be restarted

    @property
    def sources_running(self) -> bool:
        return any(not p.finished for p in self.procs if p.order >= 2)

    def stop(self) -> None:
        """Stop everything in reverse start order; leave no process, ring or socket file behind."""
        order = sorted(self.procs, key=lambda p: -p.order)
        for rank in sorted({p.order for p in order}, reverse=True):
            self._terminate([p for p in order if p.order == rank])
        for p in self.procs:
            self._release(p)
        for name in self.rings.values():
            cleanup_stale(name)
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self.started = False

    def leftovers(self) -> dict[str, list]:
        """Processes still alive and rings still in /dev/shm (both empty after a clean stop)."""
        return {
            "processes": [p.name for p in self.procs if p.process is not None and p.process.is_alive()],
            "rings": [n for n in self.rings.values() if (SHM_DIR / n).exists()],
        }

    def process(self) -> bool:
        """One supervision tick (the agent run as a :class:`Stage`): reap and restart, wait 0.2 s."""
        self.check()
        time.sleep(0.2)
        return True

    def run(self, duration_s: float | None = None) -> None:
        """Start, supervise until SIGINT/SIGTERM (or ``duration_s``), stop. For ``edge-agent run``."""

        def said(signum: int) -> None:
            log.info("agent: %s received, stopping", signal.Signals(signum).name)

        run_stage(lambda: self, duration_s=duration_s, on_signal=said)


def compose(cfg: AgentConfig, endpoints: Mapping[str, str], rings: Mapping[str, str]) -> list[_Proc]:
    """Every stage of the agent, wired: which process reads which ring and talks to which socket.

    Start order: 0 hub (binds every socket), 1 workers, the metrics exporter (when
    ``metrics.port`` is set) and the ward page (``web.port``), 2 windowers, 3 captures; stop is
    the reverse.
    """
    t = cfg.transport
    procs = [_Proc("hub", functools.partial(Hub, cfg.hub, t, dict(endpoints)), 0)]
    procs += [
        _Proc(
            f"worker:{i}",
            functools.partial(Worker, cfg.worker, t, endpoints["workers"], identity=f"worker:{i}"),
            1,
        )
        for i in range(cfg.worker.count)
    ]
    if cfg.metrics.port is not None:  # a subscriber like any monitor: nothing added to the hub's loop
        publish = connect_endpoint(endpoints["publish"])
        procs.append(_Proc("metrics", functools.partial(MetricsExporter, cfg.metrics, publish, t), 1))
    if cfg.web.port is not None:  # another subscriber
        publish = connect_endpoint(endpoints["publish"])
        procs.append(_Proc("web", functools.partial(WardServer, cfg.web, publish, cfg.alarms, t), 1))
    for s in cfg.streams:
        procs.append(
            _Proc(
                f"windower:{s.id}",
                functools.partial(
                    Windower, s.id, rings[s.id], cfg.cycles, cfg.windows, t, endpoints["windows"]
                ),
                2,
            )
        )
        procs.append(_Proc(f"capture:{s.id}", functools.partial(Capture, s, cfg.capture, rings[s.id]), 3))
    return procs


def remote_worker(cfg: AgentConfig, workers_endpoint: str) -> None:
    """Run one worker in this process against a hub elsewhere (``edge-agent worker --connect``)."""
    run_child(
        "worker",
        functools.partial(Worker, cfg.worker, cfg.transport, workers_endpoint),
        cfg.supervisor.log_level,
    )
