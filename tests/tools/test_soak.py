"""The soak run, short: the real agent with worker kills and signal losses injected, then checked
for leaks and for windows that vanished without being counted. The pure checks on made-up figures."""

from __future__ import annotations

import pytest

from edge_agent.tools.soak import (
    SoakConfig,
    fd_growth,
    memory_growth,
    report_markdown,
    run_soak,
    soak_checks,
    soak_sources,
    window_accounting,
)


def _sample(t: float, rss: dict[str, int], fds: dict[str, int]) -> dict:
    return {"t": t, "procs": {n: {"pid": 1, "rss_kb": rss[n], "fds": fds[n]} for n in rss}}


def test_memory_and_fd_growth_compare_after_warmup() -> None:
    rss = [100, 500, 1000, 1000, 1010, 1000, 1040, 1050, 1060]  # total kB; warm-up ends at t=2
    samples = [_sample(t, {"worker:0": r}, {"worker:0": 20 + (t == 8)}) for t, r in enumerate(rss)]
    assert memory_growth(samples, warmup_s=2) == pytest.approx(1050 / 1000 - 1)
    assert memory_growth(samples[:6], warmup_s=2) is None  # fewer than 3 + 3 samples after warm-up
    assert fd_growth(samples, warmup_s=2) == {"worker": 1}


def test_window_accounting_finds_windows_lost_silently() -> None:
    seqs = {"bed1": {0, 1, 2, 4, 5}, "bed2": {0, 1, 2, 3}}
    status = {"bed1": {"windows_dropped": 1, "windows_failed": 0}, "bed2": {"windows_dropped": 0}}
    acct = window_accounting(seqs, status)
    assert acct["bed1"] == {
        "numbered": 6,
        "estimated": 5,
        "dropped": 1,
        "failed": 0,
        "unaccounted": 0,
        "not_estimated": [3],
    }
    assert acct["bed2"]["unaccounted"] == 0
    status["bed1"]["windows_dropped"] = 0  # seq 3 neither estimated nor counted: found
    assert window_accounting(seqs, status)["bed1"]["unaccounted"] == 1


def test_config_and_sources() -> None:
    with pytest.raises(ValueError, match="no time to measure"):
        SoakConfig(seconds=60.0, warmup_s=60.0)
    uris = soak_sources(SoakConfig(streams=2, outage_every_s=20, outage_s=3))
    assert "outage_every_s=20&" in uris[0] and "outage_every_s=22.6&" in uris[1] and "ecg=1" in uris[0]


def test_short_soak_with_kills_and_outages_loses_nothing_silently() -> None:
    cfg = SoakConfig(
        seconds=60.0,
        streams=2,
        workers=2,
        loop_s=8.0,
        kill_worker_every_s=12.0,
        outage_every_s=25.0,
        outage_s=4.0,
        sample_every_s=2.0,
        warmup_s=20.0,
    )
    result = run_soak(cfg)
    checks = {c["check"]: c for c in result["checks"]}
    assert result["worker_kills"] >= 4
    assert checks["every window estimated or counted as dropped"]["passed"], result["accounting"]
    assert checks["every killed worker restarted within 2 s"]["passed"], result["events"]
    assert checks["no leaked process, ring or file descriptor"]["passed"], result["leftovers"]
    assert checks["no file descriptor growth per process kind"]["passed"], result["fd_growth"]
    assert result["memory_growth"] is not None  # measured; the ≤ 5 % target needs a long run
    for stream, a in result["accounting"].items():
        assert a["estimated"] >= 10, stream
        assert result["signals"][stream].get("lost", 0) >= 1  # each stream's outage was reported
    assert result["windower_restarts"] == {}  # outages are handled inside the capture
    assert soak_checks(result, cfg) == result["checks"]
    assert "| bed1 |" in report_markdown(result)
