"""edge_agent.tools.telemetry: parsers on outputs recorded on real Jetsons (tests/data/tegrastats/,
provenance in each file's "#@" header lines), the tegrastats sampler against a real stand-in executable, and
environment() on this machine."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import pytest

from edge_agent.tools.telemetry import (
    TegrastatsSampler,
    environment,
    jetson_info,
    parse_jetson_clocks,
    parse_nv_tegra_release,
    parse_nvpmodel,
    parse_tegrastats_line,
    summarize_tegrastats,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "tegrastats"
TEGRASTATS_FIXTURES = sorted(
    p.name for p in DATA.glob("*.txt") if not p.name.startswith(("nvpmodel", "jetson_clocks", "nv_tegra"))
)


def recorded(name: str) -> str:
    """The recorded output in fixture ``name``, without its "#@" provenance lines."""
    return "".join(ln for ln in (DATA / name).read_text().splitlines(True) if not ln.startswith("#@"))


def lines(name: str) -> list[str]:
    return [ln for ln in recorded(name).splitlines() if ln.strip()]


def parsed(name: str) -> list[dict]:
    return [parse_tegrastats_line(ln) for ln in lines(name)]


# ---------------------------------------------------------------- parse_tegrastats_line


def test_every_recorded_line_parses_consistently():
    assert len(TEGRASTATS_FIXTURES) == 9
    for name in TEGRASTATS_FIXTURES:
        for s in parsed(name):
            assert 0 < s["ram_used_mb"] <= s["ram_total_mb"], name
            assert len(s["cpu_load_pct"]) == len(s["cpu_freq_mhz"]) >= 4, name
            assert all(t > -256 for t in s["temps_c"].values()), name
            assert all(p["now"] >= 0 and p["avg"] >= 0 for p in s["power_mw"].values()), name


def test_agx_orin_jetpack5():
    first, second, third = parsed("orin_agx_jp5.txt")
    assert first["timestamp"] == "2023-04-24T00:01:24"
    assert (first["ram_used_mb"], first["ram_total_mb"]) == (1282, 62795)
    assert first["cpu_load_pct"] == [0] * 12 and first["cpu_freq_mhz"] == [729] * 12
    assert (first["gpu_load_pct"], first["gpu_freq_mhz"]) == (0, 0)
    assert (first["emc_load_pct"], first["emc_freq_mhz"]) == (0, 2133)
    # -256C sensors (CV0-2, the gated GPU) are absent, the rest keep their names as printed.
    assert first["temps_c"] == {
        "CPU": 42.593,
        "Tboard": 32.0,
        "SOC2": 39.343,
        "Tdiode": 33.25,
        "SOC0": 39.375,
        "tj": 42.593,
        "SOC1": 40.468,
    }
    # The two unconnected "NC" channels are not rails.
    assert first["power_mw"] == {
        "VDD_GPU_SOC": {"now": 2399.0, "avg": 2399.0},
        "VDD_CPU_CV": {"now": 400.0, "avg": 400.0},
        "VIN_SYS_5V0": {"now": 4032.0, "avg": 4032.0},
        "VDDQ_VDD2_1V8AO": {"now": 301.0, "avg": 301.0},
    }
    assert second["timestamp"] == "2023-10-16T10:59:22"
    assert (second["gpu_load_pct"], second["gpu_freq_mhz"], second["emc_freq_mhz"]) == (0, 114, 204)
    assert second["temps_c"]["GPU"] == 38.156 and "CV1" not in second["temps_c"]
    assert second["cpu_load_pct"][2] == 1 and second["cpu_freq_mhz"][5] == 730
    assert third["cpu_freq_mhz"][0] == 732 and third["temps_c"]["GPU"] == 38.0


def test_agx_orin_jetpack6():
    a, b, c = parsed("orin_agx_jp6.txt")
    assert a["timestamp"] == "2026-05-09T18:42:06"
    assert a["cpu_load_pct"] == [14, 5, 8, 14, 46, 47, 2, 10, 4, 5, 6, 10]
    assert a["cpu_freq_mhz"][:4] == [2188, 2112, 2035, 2201]
    assert (a["gpu_load_pct"], a["gpu_freq_mhz"]) == (0, 0)  # "GR3D_FREQ 0%@[0,0]"
    assert (a["emc_load_pct"], a["emc_freq_mhz"]) == (3, 2133)
    assert a["temps_c"] == {"cpu": 52.562, "soc2": 48.437, "soc0": 49.093, "tj": 52.562, "soc1": 49.656}
    assert set(a["power_mw"]) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"}
    assert b["power_mw"]["VIN_SYS_5V0"] == {"now": 4607.0, "avg": 4657.0}
    assert c["power_mw"]["VIN_SYS_5V0"] == {"now": 4707.0, "avg": 4674.0}
    assert c["cpu_load_pct"][7] == 70 and c["emc_load_pct"] == 2


def test_orin_nano_jetpack6():
    busy, no_root = parsed("orin_nano_jp6.txt")
    assert (busy["gpu_load_pct"], busy["gpu_freq_mhz"]) == (63, 621)  # "GR3D_FREQ 63%@[621]"
    assert (busy["emc_load_pct"], busy["emc_freq_mhz"]) == (43, 2133)
    assert busy["temps_c"]["gpu"] == 53.343 and busy["temps_c"]["tj"] == 53.968
    assert busy["power_mw"] == {
        "VDD_IN": {"now": 12479.0, "avg": 12479.0},
        "VDD_CPU_GPU_CV": {"now": 4667.0, "avg": 4667.0},
        "VDD_SOC": {"now": 2817.0, "avg": 2817.0},
    }
    assert (no_root["gpu_load_pct"], no_root["gpu_freq_mhz"]) == (0, None)  # "GR3D_FREQ 0%", no clock
    assert (no_root["emc_load_pct"], no_root["emc_freq_mhz"]) == (None, None)  # no EMC field at all
    assert no_root["cpu_freq_mhz"] == [1420, 1420, 1420, 1420, 729, 729]
    assert no_root["power_mw"]["VDD_IN"]["now"] == 4824.0


def test_thor_jetpack7():
    r38_a, r38_b, _r38_c, r39_a, r39_b = parsed("thor_jp7.txt")
    assert len(r38_a["cpu_load_pct"]) == 14
    assert (r38_a["gpu_load_pct"], r38_a["gpu_freq_mhz"]) == (None, 0)  # "GR3D_FREQ @[0,0,0]": no load
    assert r38_a["temps_c"] == {"cpu": 34.468, "tj": 34.5, "soc012": 33.781, "soc345": 34.5}
    assert r38_b["cpu_freq_mhz"][8:10] == [2601, 2601] and r38_b["cpu_load_pct"][9] == 17
    assert r38_b["power_mw"]["VDD_CPU_SOC_MSS"] == {"now": 4923.0, "avg": 4544.0}
    assert (r39_a["gpu_load_pct"], r39_a["gpu_freq_mhz"]) == (None, 314)
    assert (r39_a["emc_load_pct"], r39_a["emc_freq_mhz"]) == (7, 3200)
    # R39 "cpu@34.312C/34.843C" is now/max and "7953mW/8332mW/8710mW" is now/avg/max: take now (and avg).
    assert r39_b["temps_c"]["cpu"] == 34.312 and r39_b["temps_c"]["gpu"] == 35.906
    assert r39_b["power_mw"]["VDD_CPU_SOC_MSS"] == {"now": 7953.0, "avg": 8332.0}
    assert r39_b["power_mw"]["VDD_GPU"] == {"now": 4925.0, "avg": 4925.0}


def test_xavier_nx_jetpack4_with_and_without_root():
    user, root = parsed("xavier_nx_jp4.txt")
    assert user["timestamp"] is None
    assert (user["gpu_load_pct"], user["gpu_freq_mhz"], user["emc_load_pct"]) == (0, None, 0)
    assert user["power_mw"] == {}
    assert user["temps_c"] == {
        "AO": 31.0,
        "GPU": 31.5,
        "PMIC": 100.0,
        "AUX": 31.5,
        "CPU": 33.0,
        "thermal": 31.95,
    }
    assert (root["gpu_load_pct"], root["gpu_freq_mhz"]) == (0, 114)  # "GR3D_FREQ 0%@114"
    assert (root["emc_load_pct"], root["emc_freq_mhz"]) == (1, 1600)
    assert root["cpu_freq_mhz"][-1] == 1344
    assert root["power_mw"] == {  # JetPack 4 prints mW without the unit
        "VDD_IN": {"now": 3528.0, "avg": 3569.0},
        "VDD_CPU_GPU_CV": {"now": 410.0, "avg": 426.0},
        "VDD_SOC": {"now": 1107.0, "avg": 1115.0},
    }


def test_agx_xavier_short_rail_names():
    (s,) = parsed("agx_xavier_jp4.txt")
    assert len(s["cpu_load_pct"]) == 8 and s["cpu_load_pct"][2] == 2
    assert s["power_mw"] == {
        "GPU": {"now": 0.0, "avg": 0.0},
        "CPU": {"now": 216.0, "avg": 216.0},
        "SOC": {"now": 864.0, "avg": 864.0},
        "CV": {"now": 0.0, "avg": 0.0},
        "VDDRQ": {"now": 144.0, "avg": 144.0},
        "SYS5V": {"now": 1889.0, "avg": 1889.0},
    }
    assert s["temps_c"]["GPU"] == 32.0 and s["temps_c"]["Tdiode"] == 34.75


def test_nano_jetpack4():
    dd, idle, streaming = parsed("nano_jp4.txt")
    assert dd["power_mw"]["POM_5V_IN"] == {"now": 943.0, "avg": 943.0}
    assert idle["ram_used_mb"] == 1122 and idle["power_mw"]["POM_5V_GPU"]["now"] == 0.0
    assert streaming["cpu_load_pct"] == [100, 89, 85, 86] and streaming["cpu_freq_mhz"] == [1479] * 4
    assert (streaming["gpu_load_pct"], streaming["gpu_freq_mhz"]) == (35, None)
    assert streaming["power_mw"] == {
        "POM_5V_IN": {"now": 5607.0, "avg": 5561.0},
        "POM_5V_GPU": {"now": 118.0, "avg": 98.0},
        "POM_5V_CPU": {"now": 2843.0, "avg": 2791.0},
    }
    assert streaming["temps_c"]["thermal"] == 32.25


def test_tx2_offline_cores_are_none():
    a, b = parsed("tx2_jp4.txt")
    assert a["cpu_load_pct"] == [2, None, None, None, None, None]
    assert a["cpu_freq_mhz"] == [345, None, None, None, None, None]
    assert (a["emc_load_pct"], a["emc_freq_mhz"], a["gpu_freq_mhz"]) == (13, 40, 114)
    assert len(a["power_mw"]) == 6 and a["power_mw"]["VDD_GPU"] == {"now": 400.0, "avg": 735.0}
    assert b["cpu_load_pct"] == [1, None, None, 0, 2, 0]
    assert b["cpu_freq_mhz"] == [345, None, None, 345, 346, 345]
    assert b["power_mw"]["VDD_4V0_WIFI"] == {"now": 0.0, "avg": 0.0}
    assert b["power_mw"]["VDD_IN"]["now"] == 1423.0


def test_tx1_l4t28_shared_cpu_clock():
    a, b, c = parsed("tx1_l4t28.txt")
    assert a["cpu_load_pct"] == [17, 13, 29, 5] and a["cpu_freq_mhz"] == [408] * 4
    assert (a["emc_load_pct"], a["emc_freq_mhz"]) == (1, 408)  # "EMC 1%@408"
    assert (a["gpu_load_pct"], a["gpu_freq_mhz"]) == (3, 76)  # "GR3D 3%@76"
    assert a["temps_c"] == {} and a["power_mw"] == {}
    assert b["cpu_freq_mhz"] == [1734] * 4 and b["gpu_load_pct"] == 39
    # "IRAM 0/252kB(lfb 252kB)" is memory, not a rail.
    assert c["power_mw"] == {
        "VDD_IN": {"now": 2532.0, "avg": 2698.0},
        "VDD_CPU": {"now": 76.0, "avg": 178.0},
        "VDD_GPU": {"now": 19.0, "avg": 19.0},
    }


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("", "empty line"),
        ("   \n", "empty line"),
        ("NV Power Mode: MAXN", "no 'RAM <used>/<total>MB' field"),
        ("NVIDIA GeForce RTX 4090, 550.54.15, 24564", "not a tegrastats line"),
        ("RAM 1282/62795 (lfb 15152x4MB)", "not a tegrastats line"),
        ("RAM 1282/62795MB CPU [12%@729,busy]", "unrecognised CPU core entry 'busy'"),
    ],
)
def test_non_tegrastats_lines_raise(line: str, problem: str):
    with pytest.raises(ValueError, match=problem.replace("[", r"\[")):
        parse_tegrastats_line(line)


# ---------------------------------------------------------------- summarize_tegrastats


def test_summary_of_agx_orin_run_with_interval():
    samples = parsed("orin_agx_jp6.txt")
    out = summarize_tegrastats(samples, interval_s=1.0)
    assert out["n_samples"] == 3 and out["duration_s"] == 3.0 and out["interval_s"] == 1.0
    vin = out["power_mw"]["VIN_SYS_5V0"]
    assert vin["mean"] == pytest.approx((4707 + 4607 + 4707) / 3)
    assert (vin["min"], vin["max"], vin["n"]) == (4607.0, 4707.0, 3)
    assert vin["energy_j"] == pytest.approx((4707 + 4607 + 4707) / 1000.0)  # 1 s per sample
    assert out["power_mw"]["VDD_GPU_SOC"]["energy_j"] == pytest.approx(3 * 2.412)
    m = out["metrics"]
    assert m["ram_used_mb"] == {"mean": pytest.approx(18204.0), "min": 18202.0, "max": 18207.0, "n": 3}
    assert m["gpu_load_pct"]["max"] == 0.0 and m["gpu_freq_mhz"]["mean"] == 0.0
    assert m["emc_load_pct"]["mean"] == pytest.approx(8 / 3)
    first_cpu = sum([14, 5, 8, 14, 46, 47, 2, 10, 4, 5, 6, 10]) / 12
    assert m["cpu_load_pct"]["max"] >= first_cpu and m["cpu_load_pct"]["n"] == 3
    assert out["temps_max_c"] == {"cpu": 52.562, "soc2": 48.468, "soc0": 49.218, "tj": 52.562, "soc1": 49.656}


def test_summary_without_interval_and_missing_metrics():
    samples = parsed("thor_jp7.txt")[:3] + parsed("tx2_jp4.txt")
    out = summarize_tegrastats(samples)
    assert out["duration_s"] is None and out["n_samples"] == 5
    assert "energy_j" not in out["power_mw"]["VDD_GPU"]
    # Thor prints no GPU load, the TX2 does: only the two TX2 samples count.
    assert out["metrics"]["gpu_load_pct"]["n"] == 2
    # Offline cores do not dilute the CPU load: TX2 [2 %, off x5] is 2 %, [1, off, off, 0, 2, 0] is 0.75 %.
    tx2 = summarize_tegrastats(parsed("tx2_jp4.txt"))["metrics"]["cpu_load_pct"]
    assert (tx2["min"], tx2["max"], tx2["mean"]) == (0.75, 2.0, 1.375)
    assert out["metrics"]["cpu_load_pct"]["min"] == pytest.approx(8 / 14)  # Thor's first sample
    assert out["temps_max_c"]["tj"] == 36.031 and out["temps_max_c"]["GPU"] == 41.0


def test_summary_of_nothing():
    out = summarize_tegrastats([], interval_s=0.2)
    assert out == {
        "n_samples": 0,
        "interval_s": 0.2,
        "duration_s": 0.0,
        "metrics": {},
        "power_mw": {},
        "temps_max_c": {},
    }


# ---------------------------------------------------------------- nvpmodel / jetson_clocks / nv_tegra_release


def test_parse_nvpmodel_recorded_outputs():
    nano = parse_nvpmodel(recorded("nvpmodel_q_nano_jp4.txt"))
    assert nano == {"mode_name": "MAXN", "mode_id": 0, "warnings": ["NVPM WARN: fan mode is not set!"]}
    assert parse_nvpmodel(recorded("nvpmodel_q_nano_5w.txt")) == {
        "mode_name": "5W",
        "mode_id": 1,
        "warnings": [],
    }
    verbose = parse_nvpmodel(recorded("nvpmodel_q_verbose_orin_nano_jp6.txt"))
    assert (verbose["mode_name"], verbose["mode_id"]) == ("25W", 1)
    assert parse_nvpmodel("NV Power Mode: MAXN_SUPER")["mode_id"] is None
    with pytest.raises(ValueError, match="no 'NV Power Mode:' line"):
        parse_nvpmodel("nvpmodel: command not found")


def test_jetson_clocks_nano_default_is_not_locked():
    out = parse_jetson_clocks(recorded("jetson_clocks_show_nano_jp4_default.txt"))
    assert (out["soc_family"], out["machine"]) == ("tegra210", "NVIDIA Jetson Nano Developer Kit")
    assert out["online_cpus"] == "0-3" and out["power_mode"] == "MAXN"
    assert out["cpus"]["cpu0"] == {
        "online": True,
        "governor": "schedutil",
        "min_khz": 102000,
        "max_khz": 1479000,
        "cur_khz": 1326000,
    }
    assert out["gpu"] == {"min_hz": 76800000, "max_hz": 921600000, "cur_hz": 76800000}
    assert out["emc"]["freq_override"] is False
    assert out["locked"] is False
    assert out["evidence"][0] == "cpu0: MinFreq=102000 MaxFreq=1479000 CurrentFreq=1326000 kHz not pinned"
    assert (
        out["evidence"][-1].startswith("GPU: MinFreq=76800000 MaxFreq=921600000")
        and "not pinned" in out["evidence"][-1]
    )


def test_jetson_clocks_nano_after_jetson_clocks_is_locked():
    out = parse_jetson_clocks(recorded("jetson_clocks_show_nano_jp4_locked.txt"))
    assert out["locked"] is True
    assert all(c["min_khz"] == c["max_khz"] == c["cur_khz"] == 1479000 for c in out["cpus"].values())
    assert out["gpu"]["min_hz"] == out["gpu"]["max_hz"] == 921600000
    assert out["emc"] == {
        "min_hz": 204000000,
        "max_hz": 1600000000,
        "cur_hz": 1600000000,
        "freq_override": True,
    }
    assert len(out["evidence"]) == 5 and all(e.endswith(" pinned") for e in out["evidence"])


def test_jetson_clocks_orin_nano_jp6():
    out = parse_jetson_clocks(recorded("jetson_clocks_show_orin_nano_jp6.txt"))
    assert out["machine"] == "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"
    assert (out["soc_family"], out["online_cpus"], out["power_mode"]) == ("tegra234", "0-5", "25W")
    assert sorted(out["cpus"]) == [f"cpu{i}" for i in range(6)]
    assert out["cpus"]["cpu2"]["cur_khz"] == 1190400
    assert out["gpu"] == {"min_hz": 306000000, "max_hz": 918000000, "cur_hz": 306000000}
    assert out["emc"]["cur_hz"] == 2133000000 and out["emc"]["freq_override"] is False
    assert out["locked"] is False


def test_jetson_clocks_agx_orin_ignores_dla_pva_lines():
    out = parse_jetson_clocks(recorded("jetson_clocks_show_agx_orin_jp5.txt"))
    assert len(out["cpus"]) == 12 and out["gpu"]["max_hz"] == 1300500000
    assert out["locked"] is False
    # Evidence in core order (the tool prints cpu10 after cpu1); cpu0 is at max but not pinned.
    assert [e.split(":")[0] for e in out["evidence"][:12]] == [f"cpu{i}" for i in range(12)]
    assert out["evidence"][0].endswith("not pinned")


def test_jetson_clocks_tx1_l4t28_locked():
    out = parse_jetson_clocks(recorded("jetson_clocks_show_tx1_l4t28_locked.txt"))
    assert out["locked"] is True and out["power_mode"] is None
    assert out["cpus"]["cpu3"] == {
        "online": True,
        "governor": "interactive",
        "min_khz": 1734000,
        "max_khz": 1734000,
        "cur_khz": 1734000,
    }
    assert out["gpu"]["cur_hz"] == 998400000


def test_jetson_clocks_unknown_and_errors():
    gpu_only = "GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=1300500000\n"
    out = parse_jetson_clocks(gpu_only)
    assert out["locked"] is None and "lock state unknown" in out["evidence"][-1]
    offline = recorded("jetson_clocks_show_nano_jp4_locked.txt").replace(
        "cpu3: Online=1 Governor=schedutil MinFreq=1479000",
        "cpu3: Online=0 Governor=schedutil MinFreq=102000",
    )
    out = parse_jetson_clocks(offline)
    assert out["locked"] is True and "cpu3: offline (not judged)" in out["evidence"]
    with pytest.raises(ValueError, match="no CPU or GPU clock lines"):
        parse_jetson_clocks("Error: Run this script(/usr/bin/jetson_clocks) as a root user\n")


def test_parse_nv_tegra_release():
    r36 = parse_nv_tegra_release(recorded("nv_tegra_release_r36_4_3.txt"))
    assert r36 == {
        "l4t": "36.4.3",
        "release": "R36",
        "revision": "4.3",
        "board": "generic",
        "date": "Wed Jan  8 01:49:37 UTC 2025",
        "kernel_variant": "oot",
    }
    r32 = parse_nv_tegra_release(recorded("nv_tegra_release_r32_7_6.txt"))
    assert (r32["l4t"], r32["board"], r32["kernel_variant"]) == ("32.7.6", "t210ref", None)
    with pytest.raises(ValueError, match="not an nv_tegra_release file"):
        parse_nv_tegra_release("Ubuntu 22.04.5 LTS")


# ---------------------------------------------------------------- TegrastatsSampler (real subprocess)


def fake_tool(bin_dir: Path, name: str, body: str) -> Path:
    """An executable ``name`` in ``bin_dir`` running the Python ``body``."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\nimport sys, time, os, signal\n{body}\n")
    path.chmod(0o755)
    return path


def fake_tegrastats(bin_dir: Path, fixture: str, extra: str = "") -> Path:
    """A stand-in ``tegrastats`` that records its argv and pid, writes one error line to stderr, then
    prints the fixture's recorded lines every --interval ms, cycling, until it is signalled."""
    body = f"""
{extra}
open({str(bin_dir / "argv")!r}, "w").write(" ".join(sys.argv[1:]))
open({str(bin_dir / "pid")!r}, "w").write(str(os.getpid()))
interval = int(sys.argv[sys.argv.index("--interval") + 1]) / 1000
print("NVPM WARN: could not read one sensor", file=sys.stderr, flush=True)
lines = {lines(fixture)!r}
i = 0
while True:
    print(lines[i % len(lines)], flush=True)
    i += 1
    time.sleep(interval)
"""
    return fake_tool(bin_dir, "tegrastats", body)


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def assert_reaped(pid: int) -> None:
    # Reaped by wait(): the pid is gone, not a zombie waiting for its parent.
    assert not Path(f"/proc/{pid}").exists()


def test_sampler_runs_and_parses_a_real_subprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bin_dir = tmp_path / "bin"
    fake_tegrastats(bin_dir, "orin_agx_jp6.txt")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with TegrastatsSampler(interval_ms=50) as sampler:
        assert sampler.available is True
        wait_for(lambda: len(sampler.samples) >= 6)
    pid = int((bin_dir / "pid").read_text())
    assert (bin_dir / "argv").read_text() == "--interval 50"
    assert sampler.returncode == -15  # ended by our SIGTERM
    assert_reaped(pid)
    samples = sampler.samples
    expected = parsed("orin_agx_jp6.txt")
    for i, s in enumerate(samples):
        t_s = s.pop("t_s")
        assert t_s >= 0
        assert s == expected[i % 3]
    assert sampler.parse_errors == 1 and "not a tegrastats line" in sampler.first_error
    summary = sampler.summary()
    n = len(samples)
    assert summary["available"] is True and summary["reason"] is None
    assert summary["n_samples"] == n and summary["interval_ms"] == 50 and summary["parse_errors"] == 1
    assert summary["power_mw"]["VDD_GPU_SOC"]["mean"] == 2412.0
    assert summary["power_mw"]["VDD_GPU_SOC"]["energy_j"] == pytest.approx(2412.0 * n * 0.05 / 1000)
    assert summary["temps_max_c"]["cpu"] == 52.562
    assert summary["wall_s"] > 0


def test_sampler_escalates_to_sigkill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bin_dir = tmp_path / "bin"
    fake_tegrastats(bin_dir, "nano_jp4.txt", extra="signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sampler = TegrastatsSampler(interval_ms=20)
    sampler.start()
    wait_for(lambda: len(sampler.samples) >= 2)
    t0 = time.monotonic()
    sampler.stop(timeout_s=0.5)
    assert time.monotonic() - t0 < 5.0
    assert sampler.returncode == -9
    assert_reaped(int((bin_dir / "pid").read_text()))
    assert sampler.samples[0]["power_mw"]["POM_5V_IN"]["now"] == 943.0
    sampler.stop()  # a second stop is a no-op


def test_sampler_records_an_early_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bin_dir = tmp_path / "bin"
    fake_tool(
        bin_dir, "tegrastats", 'print("Error: tegrastats needs to be run as root", flush=True)\nsys.exit(1)'
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with TegrastatsSampler(interval_ms=100) as sampler:
        wait_for(lambda: sampler.parse_errors == 1)
        time.sleep(0.2)
    assert sampler.returncode == 1
    assert sampler.reason == "tegrastats exited early with status 1"
    assert "Error: tegrastats needs" in sampler.first_error
    summary = sampler.summary()
    assert summary["n_samples"] == 0 and summary["wall_s"] is None


def test_sampler_without_tegrastats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    ran = False
    with TegrastatsSampler() as sampler:
        ran = True
    assert ran and sampler.available is False
    assert sampler.reason == "tegrastats not found on PATH"
    summary = sampler.summary()
    assert (summary["available"], summary["n_samples"], summary["interval_ms"]) == (False, 0, 200)
    assert summary["power_mw"] == {} and summary["reason"] == "tegrastats not found on PATH"
    with pytest.raises(ValueError, match="interval_ms must be positive"):
        TegrastatsSampler(interval_ms=0)


# ---------------------------------------------------------------- environment / jetson_info


def test_environment_on_this_machine():
    if Path("/etc/nv_tegra_release").exists():
        pytest.skip("this machine is a Jetson")
    env = environment()
    assert set(env) == {
        "captured_at",
        "hostname",
        "python",
        "os",
        "cpu",
        "memory",
        "gpu",
        "packages",
        "jetson",
    }
    assert env["python"]["version"] == platform.python_version()
    assert env["python"]["executable"] == sys.executable
    assert env["os"]["kernel"] == platform.release() and env["os"]["system"] == "Linux"
    assert env["cpu"]["logical_cores"] == os.cpu_count()
    assert env["cpu"]["model"] and env["cpu"]["model"] != "not available"
    meminfo = Path("/proc/meminfo").read_text().split("\n")[0]  # "MemTotal:  24684324 kB"
    assert env["memory"]["total_mb"] == int(meminfo.split()[1]) // 1024
    if shutil.which("nvidia-smi") is None:
        assert env["gpu"] == {"available": False, "reason": "nvidia-smi not found on PATH"}
    else:
        assert env["gpu"]["available"] is True and env["gpu"]["gpus"][0]["driver_version"]
    import numpy

    packages = env["packages"]
    assert packages["numpy"] == {"version": numpy.__version__, "distribution": "numpy"}
    assert packages["torch"]["version"] == importlib.metadata.version("torch")  # torch is never imported
    assert packages["pyzmq"]["version"] == importlib.metadata.version("pyzmq")
    assert packages["onnxruntime"]["version"] == importlib.metadata.version("onnxruntime")
    assert packages["opencv"]["distribution"] == "opencv-python-headless"
    assert packages["opencv"]["version"] == importlib.metadata.version("opencv-python-headless")
    if importlib.util.find_spec("tensorrt") is None:
        assert packages["tensorrt"]["version"] is None
        assert packages["tensorrt"]["reason"].startswith("not installed (looked for tensorrt")
    assert env["jetson"]["is_jetson"] is False
    assert "/etc/nv_tegra_release" in env["jetson"]["reason"]


def test_environment_never_raises_without_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi, lscpu, dpkg-query, nvpmodel, ...
    env = environment(tmp_path / "no_release", tmp_path / "no_model")
    assert env["gpu"] == {"available": False, "reason": "nvidia-smi not found on PATH"}
    assert env["jetson"]["is_jetson"] is False
    assert env["packages"]["numpy"]["version"]


def test_jetson_info_on_a_stand_in_jetson(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    release = tmp_path / "nv_tegra_release"
    release.write_text(recorded("nv_tegra_release_r36_4_3.txt"))
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00")
    bin_dir = tmp_path / "bin"
    nvp = recorded("nvpmodel_q_verbose_orin_nano_jp6.txt")
    fake_tool(bin_dir, "nvpmodel", f"assert sys.argv[1:] == ['-q']\nprint({nvp!r}, end='')")
    fake_tool(
        bin_dir,
        "jetson_clocks",
        'print("Error: Run this script(/usr/bin/jetson_clocks) as a root user", file=sys.stderr)\n'
        "sys.exit(1)",
    )
    monkeypatch.setenv("PATH", str(bin_dir))
    info = jetson_info(release, model)
    assert info["is_jetson"] is True
    assert info["model"] == "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"
    assert info["l4t"]["l4t"] == "36.4.3"
    assert info["power_mode"] == {"available": True, "mode_name": "25W", "mode_id": 1, "warnings": []}
    assert info["clocks"]["available"] is False
    assert "exited with status 1: Error: Run this script" in info["clocks"]["reason"]
    assert info["clocks"]["reason"].endswith("(jetson_clocks --show usually needs root)")
    assert info["jetpack"] == {"available": False, "reason": "dpkg-query not found on PATH"}

    # Root: the recorded locked output parses into the report.
    clocks = recorded("jetson_clocks_show_nano_jp4_locked.txt")
    fake_tool(bin_dir, "jetson_clocks", f"print({clocks!r}, end='')")
    info = jetson_info(release, model)
    assert info["clocks"]["available"] is True and info["clocks"]["locked"] is True


def test_jetson_info_detection(tmp_path: Path):
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    out = jetson_info(tmp_path / "absent", model)
    assert out["is_jetson"] is False and "'Raspberry Pi 4 Model B Rev 1.4' names neither" in out["reason"]
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    out = jetson_info(tmp_path / "absent", model)
    assert out["is_jetson"] is True and out["l4t"]["available"] is False
