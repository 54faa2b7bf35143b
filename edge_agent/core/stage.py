"""The stage runtime: one lifecycle (:class:`Stage`) and one run loop (:func:`run_stage`) for every
long-running part of edge-agent — the agent's processes (hub, workers, windowers, captures, the
metrics exporter), the supervisor itself, and the recorder and exporter run from the command line.

How they differ is a parameter of the one loop: which signals stop the stage (a child of the agent
stops on SIGTERM and ignores Ctrl-C, which its supervisor handles; a command stops on either),
whether it runs for a fixed time, whether it tells its parent when it has started, whether it puts
the old signal handlers back. :func:`run_child` is the agent's process entry point on top of it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

# Ctrl-C or ``kill``: how a command run in the foreground is stopped.
FOREGROUND_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stage(Protocol):
    """``start()`` once, ``process()`` until it returns False (done) or a stop signal arrives,
    ``stop()`` once, also after a ``start`` that failed half-way."""

    def start(self) -> None: ...
    def process(self) -> bool: ...
    def stop(self) -> None: ...


def run_stage(
    factory: Callable[[], Stage],
    *,
    duration_s: float | None = None,
    stop_on: Sequence[signal.Signals] = FOREGROUND_SIGNALS,
    ignore: Sequence[signal.Signals] = (),
    ready: Any = None,
    on_signal: Callable[[int], None] | None = None,
    restore_signals: bool = True,
) -> None:
    """Build the stage (``factory()``, with the signal handlers already in place), start it, call
    ``process`` until it returns False, a ``stop_on`` signal arrives or ``duration_s`` s passed
    (None: no limit), then stop it.

    ignore: signals ignored while it runs. ready: a multiprocessing Event set once ``start``
    returned. on_signal: called with the number of a stop signal when it arrives (to log it).
    restore_signals: put the previous handlers back afterwards (False for a process that exits
    next: a second signal during its exit must not kill it half-way).
    """
    stopping = False

    def on_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if on_signal is not None:
            on_signal(signum)

    old = {s: signal.signal(s, on_stop) for s in stop_on}
    old.update({s: signal.signal(s, signal.SIG_IGN) for s in ignore})
    end = None if duration_s is None else time.monotonic() + duration_s
    try:
        stage = factory()
        try:
            stage.start()
            if ready is not None:
                ready.set()
            while not stopping and (end is None or time.monotonic() < end) and stage.process():
                pass
        finally:
            stage.stop()
    finally:
        if restore_signals:
            for s, handler in old.items():
                signal.signal(s, handler)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (no orphans, even after SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)


def run_child(name: str, factory: Callable[[], Stage], log_level: str = "INFO", ready: Any = None) -> None:
    """Entry point of one of the agent's processes: it dies with its parent, logs as ``name`` and
    runs the stage until SIGTERM or until it is done. ``ready`` (a multiprocessing Event) is set
    once ``start`` returned, so the supervisor can start the next group only when this one can
    take its input. SIGINT is ignored: on Ctrl-C the supervisor stops its children in order."""
    die_with_parent()
    logging.basicConfig(
        level=log_level, format=f"%(asctime)s {name} %(levelname)s %(message)s", stream=sys.stderr
    )
    run_stage(factory, stop_on=(signal.SIGTERM,), ignore=(signal.SIGINT,), ready=ready, restore_signals=False)
