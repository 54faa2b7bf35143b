"""``edge-agent soak``: the live agent for minutes or hours under injected faults, checked for leaks.

Runs the real multi-process agent on ``streams`` simulated feeds (rendered once and replayed, see
``synthetic://?loop_s=``) with ``workers`` local workers, and injects faults while a subscriber
listens:

* every ``kill_worker_every_s`` a random worker is SIGKILLed (the supervisor restarts it; the hub
  counts the window it held as dropped);
* each stream's source loses its signal for ``outage_s`` every ``outage_every_s`` (staggered per
  stream; ``synthetic://?outage_every_s=&outage_s=``): the capture reconnects with backoff, the
  status says lost, estimation resumes by itself.

Every ``sample_every_s`` it samples each agent process's resident memory (VmRSS) and open file
descriptors from ``/proc``. At the end it stops the sources, lets the workers finish, stops the
agent and checks (:func:`soak_checks`, pure):

* memory: the agent's total RSS grows by at most ``max_memory_growth`` from the first samples
  after ``warmup_s`` to the last ones (medians of ``SAMPLES_PER_END`` samples at each end);
* file descriptors: no process kind holds more at the end than after warm-up;
* leaks: no agent process, shared-memory ring or child of this process is left, and this process
  holds no more file descriptors than before the agent started;
* accounting: per stream, every window the windower numbered is either estimated (received here)
  or counted as dropped or failed on the stream's status — none unaccounted;
* restarts: every killed worker's replacement process was up within RESTART_LIMIT_S (2 s).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from tqdm import tqdm

from edge_agent.clients.subscriber import Subscriber
from edge_agent.live.agent import Agent, AgentConfig, load_agent_config
from edge_agent.live.ringbuffer import DEFAULT_PREFIX, SHM_DIR

log = logging.getLogger(__name__)

SAMPLES_PER_END = 3  # samples averaged (median) at each end of the memory comparison
RESTART_LIMIT_S = 2.0  # a killed worker's replacement process must be up within this


@dataclass(frozen=True)
class SoakConfig:
    """The soak run (``edge-agent soak`` options).

    seconds: run length. streams, workers, fps: simulated feeds and local workers. loop_s: seconds
    each feed renders once and replays (0: render live; costs ≈ 0.2 cores per 50 fps stream).
    kill_worker_every_s: s between SIGKILLs of a random worker (0: none). outage_every_s, outage_s:
    each stream's simulated signal loss, stream i's period stretched by 13 % × i so they do not
    coincide (0: none). sample_every_s: s between resource samples. warmup_s: s before the
    memory baseline (models loaded, caches and queues filled). max_memory_growth: the limit on the
    total RSS growth after warm-up (fraction). seed: which worker dies when.
    """

    seconds: float = 600.0
    streams: int = 3
    workers: int = 2
    fps: float = 50.0
    loop_s: float = 20.0
    kill_worker_every_s: float = 45.0
    outage_every_s: float = 60.0
    outage_s: float = 5.0
    sample_every_s: float = 5.0
    warmup_s: float = 60.0
    max_memory_growth: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.streams < 1 or self.workers < 1:
            raise ValueError("seconds must be > 0, streams and workers >= 1")
        if self.warmup_s + SAMPLES_PER_END * self.sample_every_s >= self.seconds:
            raise ValueError(
                f"warmup_s={self.warmup_s:g} plus {SAMPLES_PER_END} samples of {self.sample_every_s:g} s "
                f"leave no time to measure in {self.seconds:g} s: run longer or shorten the warm-up"
            )


def soak_sources(cfg: SoakConfig) -> list[str]:
    """The simulated feeds, one URI per stream (seeds 300 + i, ECG on, outages staggered)."""
    uris = []
    for i in range(cfg.streams):
        uri = f"synthetic://?seed={300 + i}&fps={cfg.fps:g}&ecg=1"
        if cfg.loop_s:
            uri += f"&loop_s={cfg.loop_s:g}"
        if cfg.outage_every_s and cfg.outage_s:
            uri += f"&outage_every_s={cfg.outage_every_s * (1 + 0.13 * i):g}&outage_s={cfg.outage_s:g}"
        uris.append(uri)
    return uris


# ------------------------------------------------------------------------------ /proc sampling


def _proc_status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _fd_targets(pid: int) -> list[str]:
    """What each open file descriptor of ``pid`` points at (``socket:[…]``, ``pipe:[…]``, paths)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile (listdir's own descriptor)
            continue
        out.append(target.split("[")[0] if target.startswith(("socket:", "pipe:", "anon_inode:")) else target)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc/<pid>/stat)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may contain spaces: fields after its closing parenthesis.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def sample_processes(agent: Agent) -> dict[str, dict[str, int]]:
    """Per agent process (by stage name): resident memory (kB) and open file descriptors."""
    out = {}
    for p in agent.procs:
        if p.process is None or not p.process.is_alive() or p.process.pid is None:
            continue
        rss, fds = _proc_status_kb(p.process.pid, "VmRSS"), _fd_count(p.process.pid)
        if rss is not None and fds is not None:
            out[p.name] = {"pid": p.process.pid, "rss_kb": rss, "fds": fds}
    return out


def _kind(stage: str) -> str:
    return stage.split(":", 1)[0]


# ------------------------------------------------------------------------------ checks (pure)


def memory_growth(samples: Sequence[Mapping[str, Any]], warmup_s: float) -> float | None:
    """Relative growth of the agent's total RSS: median of the last SAMPLES_PER_END samples over
    the median of the first SAMPLES_PER_END after ``warmup_s`` (None: too few samples)."""
    after = [s for s in samples if s["t"] >= warmup_s]
    if len(after) < 2 * SAMPLES_PER_END:
        return None
    total = [sum(p["rss_kb"] for p in s["procs"].values()) for s in after]
    first, last = np.median(total[:SAMPLES_PER_END]), np.median(total[-SAMPLES_PER_END:])
    return float(last / first - 1.0)


def fd_growth(samples: Sequence[Mapping[str, Any]], warmup_s: float) -> dict[str, int]:
    """Per process kind (capture, windower, worker, hub, metrics): the most file descriptors one
    process of that kind held in the last sample minus the most in the first sample after warm-up."""
    after = [s for s in samples if s["t"] >= warmup_s]
    if len(after) < 2:
        return {}

    def most(sample: Mapping[str, Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, p in sample["procs"].items():
            out[_kind(name)] = max(out.get(_kind(name), 0), p["fds"])
        return out

    first, last = most(after[0]), most(after[-1])
    return {k: last[k] - first[k] for k in sorted(first) if k in last}


def window_accounting(
    seqs: Mapping[str, set[int]], status: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, int]]:
    """Per stream: windows numbered (highest seq + 1; window numbers start at 0), estimated
    (distinct seqs received), dropped and failed (from the stream's last status), unaccounted
    (numbered − estimated − dropped − failed; 0 when nothing was lost silently) and the first 50
    seqs not estimated."""
    out = {}
    for stream in sorted(set(seqs) | set(status)):
        got = seqs.get(stream, set())
        last = status.get(stream, {})
        numbered = max(got) + 1 if got else 0
        dropped, failed = int(last.get("windows_dropped", 0)), int(last.get("windows_failed", 0))
        out[stream] = {
            "numbered": numbered,
            "estimated": len(got),
            "dropped": dropped,
            "failed": failed,
            "unaccounted": numbered - len(got) - dropped - failed,
            "not_estimated": sorted(set(range(numbered)) - got)[:50],  # which seqs, to look into
        }
    return out


def soak_checks(result: Mapping[str, Any], cfg: SoakConfig) -> list[dict[str, Any]]:
    """Each check of the soak with what was measured and whether it passed."""
    growth = result["memory_growth"]
    fds = result["fd_growth"]
    acct = result["accounting"]
    left = result["leftovers"]
    unaccounted = sum(a["unaccounted"] for a in acct.values())
    restarts = [ev.get("restarted_after_s") for ev in result["events"]]
    slowest = max((r for r in restarts if r is not None), default=None)
    checks = [
        (
            f"every killed worker restarted within {RESTART_LIMIT_S:g} s",
            f"{len(restarts)} kills, slowest restart "
            + ("—" if slowest is None else f"{slowest:.2f} s")
            + (f", {restarts.count(None)} never" if None in restarts else ""),
            bool(restarts) and None not in restarts and slowest is not None and slowest <= RESTART_LIMIT_S,
        ),
        (
            f"memory growth after warm-up ≤ {100 * cfg.max_memory_growth:g} %",
            "too short to measure" if growth is None else f"{100 * growth:+.2f} %",
            growth is not None and growth <= cfg.max_memory_growth,
        ),
        (
            "no file descriptor growth per process kind",
            ", ".join(f"{k} {v:+d}" for k, v in fds.items()) or "no samples",
            bool(fds) and all(v <= 0 for v in fds.values()),
        ),
        (
            "no leaked process, ring or file descriptor",
            json.dumps(left),
            not (left["processes"] or left["rings"] or left["children"] or left["fds_added"]),
        ),
        (
            "every window estimated or counted as dropped",
            f"{unaccounted} unaccounted of {sum(a['numbered'] for a in acct.values())}",
            unaccounted == 0 and all(a["numbered"] > 0 for a in acct.values()),
        ),
    ]
    return [{"check": c, "measured": m, "passed": bool(ok)} for c, m, ok in checks]


# ------------------------------------------------------------------------------ the run


def _agent_config(cfg: SoakConfig, overrides: Sequence[str]) -> AgentConfig:
    return load_agent_config(
        None,
        [
            "transport.publish=ipc://{run}/publish",
            "supervisor.log_level=WARNING",
            f"worker.count={cfg.workers}",
            # Injected kills are expected: never stop the soak for a "crash loop".
            f"supervisor.max_restarts={10**6}",
            *overrides,
        ],
        sources=soak_sources(cfg),
    )


@dataclass
class _Heard:
    """What the soak's subscriber heard, per stream."""

    seqs: dict[str, set[int]] = dataclasses.field(default_factory=dict)
    # Windower restarts seen (seq numbering began again).
    epochs: dict[str, int] = dataclasses.field(default_factory=dict)
    last_seq: dict[str, int] = dataclasses.field(default_factory=dict)  # seq of its latest estimate
    status: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # Signal → status messages saying so.
    signals: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    estimates: int = 0

    def add(self, msg: Mapping[str, Any] | None) -> None:
        if msg is not None and msg["kind"] == "estimate":
            name = msg["stream"]
            if msg["seq"] < self.last_seq.get(name, -1):  # numbering began again: a new windower
                self.epochs[name] = self.epochs.get(name, 0) + 1
            self.last_seq[name] = msg["seq"]
            self.seqs.setdefault(name, set()).add(msg["seq"])
            self.estimates += 1
        elif msg is not None and msg["kind"] == "status":
            self.status[msg["stream"]] = msg
            counts = self.signals.setdefault(msg["stream"], {})
            counts[msg["signal"]] = counts.get(msg["signal"], 0) + 1


def _baseline(my_pid: int) -> tuple[list[str], set[str]]:
    """This process's open file descriptors and the rings on the host, before the agent starts."""
    # Process-lifetime singletons this process would start anyway (ZeroMQ's shared context and its
    # I/O thread, multiprocessing's resource tracker) exist before the baseline: not leaks.
    zmq.Context.instance().socket(zmq.SUB).close()  # its I/O and reaper threads start with a socket
    resource_tracker.ensure_running()
    return _fd_targets(my_pid), {p.name for p in SHM_DIR.glob(DEFAULT_PREFIX + "*")}


def _kill_a_worker(agent: Agent, rng: random.Random, now: float, events: list[dict[str, Any]]) -> None:
    victim = rng.choice([p for p in agent.procs if p.name.startswith("worker:")])
    if victim.process is not None and victim.process.is_alive():
        os.kill(victim.process.pid, signal.SIGKILL)
        events.append({"t": now, "event": "kill", "process": victim.name, "pid": victim.process.pid})
        log.info("soak: SIGKILL %s at %.0f s", victim.name, now)


def _note_restarts(agent: Agent, events: list[dict[str, Any]], t0: float) -> None:
    """When did the supervisor bring each victim back?"""
    for ev in events:
        if "restarted_after_s" not in ev:
            proc = next(p.process for p in agent.procs if p.name == ev["process"])
            if proc is not None and proc.pid != ev["pid"] and proc.is_alive():
                # Now, not the loop's start: the loop's agent.check() waited out the restart delay.
                ev["restarted_after_s"] = time.monotonic() - t0 - ev["t"]


def _run_with_faults(
    agent: Agent, sub: Subscriber, cfg: SoakConfig, drain_s: float
) -> tuple[_Heard, list[dict[str, Any]], list[dict[str, Any]]]:
    """Start the agent, kill workers and sample its processes for cfg.seconds, then stop the sources
    and listen drain_s more; returns what was heard, the kills and the samples."""
    rng = random.Random(cfg.seed)
    heard = _Heard()
    events: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    duration = cfg.seconds
    agent.start()
    t0 = time.monotonic()
    next_kill = cfg.kill_worker_every_s or float("inf")
    next_sample = 0.0
    bar = tqdm(total=int(duration), desc="soak", unit="s")
    stopping_at: float | None = None
    while True:
        now = time.monotonic() - t0
        if stopping_at is None and now >= duration:
            agent.stop_sources()  # the workers finish what is in flight
            stopping_at = now
        if stopping_at is not None and now >= stopping_at + drain_s:
            break
        agent.check()
        heard.add(sub.recv(0.05))
        _note_restarts(agent, events, t0)
        if stopping_at is None and now >= next_kill:
            next_kill += cfg.kill_worker_every_s
            _kill_a_worker(agent, rng, now, events)
        if stopping_at is None and now >= next_sample:
            next_sample += cfg.sample_every_s
            samples.append({"t": now, "estimates": heard.estimates, "procs": sample_processes(agent)})
            bar.n = min(int(now), int(duration))
            bar.set_postfix(estimates=heard.estimates, kills=len(events))
    bar.close()
    return heard, events, samples


def _leftovers(agent: Agent, my_pid: int, fds_before: list[str], rings_before: set[str]) -> dict[str, Any]:
    """What the stopped agent left: its own report, plus new rings, children and descriptors here."""
    leftovers = agent.leftovers()
    # Rings are named after their supervisor's pid: others' (another agent on the host) are not ours.
    mine = {p.name for p in SHM_DIR.glob(f"{DEFAULT_PREFIX}*_{my_pid}")}
    return {
        **leftovers,
        "rings": sorted(set(leftovers["rings"]) | (mine - rings_before)),
        "children": [c for c in children_of(my_pid) if "resource_tracker" not in _cmdline(c)],
        "fds_added": sorted((Counter(_fd_targets(my_pid)) - Counter(fds_before)).elements()),
    }


def run_soak(cfg: SoakConfig, overrides: Sequence[str] = (), drain_s: float = 5.0) -> dict[str, Any]:
    """Run the soak (see the module docstring); returns every figure, the events and the checks."""
    agent_cfg = _agent_config(cfg, overrides)
    my_pid = os.getpid()
    fds_before, rings_before = _baseline(my_pid)
    agent = Agent(agent_cfg)
    # Subscribed before anything runs (ZeroMQ connects once the hub binds): the first windows of a
    # stream whose capture is ready early must not slip past the accounting.
    sub = Subscriber(agent.endpoints["publish"])
    try:
        with sub:
            heard, events, samples = _run_with_faults(agent, sub, cfg, drain_s)
            subscriber = {
                "missed": sub.missed,
                "invalid": sub.invalid,
                "duplicates": sub.duplicates,
                "last_error": sub.last_error,
            }
    finally:
        agent.stop()
    result: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "sources": soak_sources(cfg),
        "seconds": cfg.seconds,
        "estimates": heard.estimates,
        "events": events,
        "worker_kills": len(events),
        "signals": heard.signals,
        "windower_restarts": heard.epochs,
        "samples": samples,
        "memory_growth": memory_growth(samples, cfg.warmup_s),
        "fd_growth": fd_growth(samples, cfg.warmup_s),
        "accounting": window_accounting(heard.seqs, heard.status),
        "subscriber": subscriber,
        "last_status": heard.status,
        "leftovers": _leftovers(agent, my_pid, fds_before, rings_before),
    }
    result["checks"] = soak_checks(result, cfg)
    result["passed"] = all(c["passed"] for c in result["checks"])
    return result


def report_markdown(result: Mapping[str, Any]) -> str:
    """The soak's tables: checks, per-stream accounting, injected faults."""
    cfg = result["config"]
    lines = [
        "# edge-agent soak",
        "",
        f"{cfg['seconds'] / 60:g} min, {cfg['streams']} simulated streams at {cfg['fps']:g} fps, "
        f"{cfg['workers']} workers; a worker SIGKILLed every {cfg['kill_worker_every_s']:g} s "
        f"({result['worker_kills']} kills); each source lost for {cfg['outage_s']:g} s about every "
        f"{cfg['outage_every_s']:g} s; {result['estimates']} estimates.",
        "",
        "| check | measured | passed |",
        "|---|---|---|",
    ]
    for c in result["checks"]:
        lines.append(f"| {c['check']} | {c['measured']} | {'yes' if c['passed'] else '**no**'} |")
    lines += [
        "",
        "| stream | windows numbered | estimated | dropped | failed | unaccounted | status signals |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for stream, a in result["accounting"].items():
        sig = ", ".join(f"{k} {v}" for k, v in sorted(result["signals"].get(stream, {}).items()))
        lines.append(
            f"| {stream} | {a['numbered']} | {a['estimated']} | {a['dropped']} | {a['failed']} | "
            f"{a['unaccounted']} | {sig} |"
        )
    return "\n".join(lines) + "\n"


def plot_soak(result: Mapping[str, Any], out: Path) -> Path:
    """Resident memory per process kind and open file descriptors over the run, kills marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = np.array([s["t"] for s in samples]) / 60.0
    kinds = sorted({_kind(n) for s in samples for n in s["procs"]})
    fig, (ax_mem, ax_fd) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for kind in kinds:
        rss = [sum(p["rss_kb"] for n, p in s["procs"].items() if _kind(n) == kind) / 1024 for s in samples]
        fds = [sum(p["fds"] for n, p in s["procs"].items() if _kind(n) == kind) for s in samples]
        ax_mem.plot(t, rss, label=kind)
        ax_fd.plot(t, fds, label=kind)
    for ev in result["events"]:
        for ax in (ax_mem, ax_fd):
            ax.axvline(ev["t"] / 60.0, color="grey", alpha=0.3, lw=0.8)
    warm = result["config"]["warmup_s"] / 60.0
    for ax in (ax_mem, ax_fd):
        ax.axvspan(0, warm, color="orange", alpha=0.08)
        ax.grid(alpha=0.3)
    ax_mem.set(ylabel="resident memory, MiB", title="Soak: memory and descriptors (grey: worker kills)")
    ax_fd.set(xlabel="minutes", ylabel="open file descriptors")
    ax_mem.legend(fontsize=8, ncol=3)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "soak.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
