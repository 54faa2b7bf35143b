"""Rate-limited peer logs: a flood becomes a few lines and a count, nothing vanishes uncounted."""

from __future__ import annotations

import logging

import pytest

from edge_agent.core.ratelimit import RateLimitedLog


def test_a_flood_is_cut_to_the_burst_and_the_next_line_says_how_many_were_held(caplog) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("peer"), burst=3, period_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="peer"):
        for i in range(1000):
            limited.error("bad", "bad message %d", i)
        limited.warning("other", "another kind")  # keys are limited apart
        assert [r.getMessage() for r in caplog.records] == [
            "bad message 0",
            "bad message 1",
            "bad message 2",
            "another kind",
        ]
        assert limited.held("bad") == 997 and limited.held("other") == 0
        now[0] = 61.0
        limited.error("bad", "bad message %d", 1000)
    assert caplog.records[-1].getMessage() == (
        "bad message 1000 (and 997 more like it held back since the last one logged)"
    )
    assert caplog.records[-1].levelno == logging.ERROR and limited.held("bad") == 0


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="burst"):
        RateLimitedLog(logging.getLogger("peer"), burst=0)
