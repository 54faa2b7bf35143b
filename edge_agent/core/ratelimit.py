"""Log lines a peer can provoke, rate-limited with counts: a peer sending garbage in a loop must not
fill the disk, and what was held back is still counted in the log.

    limited = RateLimitedLog(log)
    limited.error("invalid-window", "hub: invalid message from a windower dropped: %s", e)

Per key, the first ``burst`` messages of each ``period_s`` are logged as they come; the rest are
counted, and the next message logged for that key says how many were held back since the last one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Window:
    start: float
    logged: int = 0
    held: int = 0  # messages held back since the last one logged


class RateLimitedLog:
    """A logger's warning/error calls, at most ``burst`` lines per key per ``period_s`` seconds."""

    def __init__(
        self,
        log: logging.Logger,
        burst: int = 5,
        period_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or period_s <= 0:
            raise ValueError(f"need burst >= 1 and period_s > 0, got {burst}, {period_s}")
        self.log, self.burst, self.period_s, self.clock = log, burst, period_s, clock
        self._windows: dict[str, _Window] = {}

    def held(self, key: str) -> int:
        """Messages of ``key`` held back and not yet reported."""
        w = self._windows.get(key)
        return w.held if w else 0

    def warning(self, key: str, msg: str, *args: object) -> None:
        self._log(logging.WARNING, key, msg, args)

    def error(self, key: str, msg: str, *args: object) -> None:
        self._log(logging.ERROR, key, msg, args)

    def _log(self, level: int, key: str, msg: str, args: tuple) -> None:
        now = self.clock()
        w = self._windows.get(key)
        if w is None or now - w.start >= self.period_s:
            w = self._windows[key] = _Window(now, held=w.held if w else 0)
        if w.logged >= self.burst:
            w.held += 1
            return
        w.logged += 1
        if w.held:
            msg += f" (and {w.held} more like it held back since the last one logged)"
            w.held = 0
        self.log.log(level, msg, *args)
