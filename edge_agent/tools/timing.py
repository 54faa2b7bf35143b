"""Timing a call repeatedly, and the statistics of the times: what every benchmark scenario shares."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_agent.core.metrics import distribution


def timings(fn: Callable[[], Any], min_seconds: float, min_samples: int, warmup: int = 3) -> np.ndarray:
    """Seconds per call of ``fn`` after ``warmup`` calls, for at least min_seconds and min_samples."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_seconds or len(out) < min_samples:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return np.asarray(out)


def stats_ms(seconds: np.ndarray) -> dict[str, float | int | None]:
    """Timings in s → min, mean, p50, p90, p99, max in ms and the sample count."""
    return distribution(1000.0 * np.asarray(seconds))
