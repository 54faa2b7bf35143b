"""Environment capture and Jetson telemetry for ``edge-agent bench``.

A benchmark number without the machine it came from cannot be compared or reproduced, so the bench
report carries:

* :func:`environment`: CPU, memory, OS / kernel, Python, GPU (``nvidia-smi``), the versions of the
  inference packages (read from the installed distributions' metadata, nothing is imported) and,
  on a Jetson, the L4T / JetPack release, the ``nvpmodel`` power mode and whether ``jetson_clocks``
  has locked the clocks. It never raises on a missing tool: each such entry says "not available"
  and why.
* :class:`TegrastatsSampler`: runs ``tegrastats`` for the length of the run and summarises GPU load,
  per-rail power and temperatures (:func:`summarize_tegrastats`).

The parsers (:func:`parse_tegrastats_line`, :func:`parse_nvpmodel`, :func:`parse_jetson_clocks`,
:func:`parse_nv_tegra_release`) are pure functions tested on outputs recorded on real boards
(tests/data/tegrastats/).

Units: memory in MiB (what tegrastats calls "MB"), frequencies in MHz in tegrastats samples and in
the units ``jetson_clocks --show`` prints (kHz for CPUs, Hz for GPU / EMC), power in mW, energy in
J, temperatures in °C, times in s.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
TOOL_TIMEOUT_S = 5.0

# Report key -> the distributions that provide it, first found wins. TensorRT ships as "tensorrt"
# (a pip meta package, or the egg-info of JetPack's python3-libnvinfer) or as its CUDA-specific
# wheels; ONNX Runtime and OpenCV come in several builds under different names.
PACKAGES: dict[str, tuple[str, ...]] = {
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "torch": ("torch",),
    "pyzmq": ("pyzmq",),
    "numpy": ("numpy",),
    "opencv": (
        "opencv-python",
        "opencv-python-headless",
        "opencv-contrib-python",
        "opencv-contrib-python-headless",
    ),
}


def _unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


def _run_tool(cmd: list[str], timeout_s: float = TOOL_TIMEOUT_S) -> tuple[str | None, str | None]:
    """(stdout, None) of ``cmd``, or (None, why it could not run) — never raises."""
    exe = shutil.which(cmd[0])
    if exe is None:
        return None, f"{cmd[0]} not found on PATH"
    try:
        done = subprocess.run(
            [exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return None, f"`{' '.join(cmd)}` timed out after {timeout_s:g} s"
    except OSError as e:
        return None, f"`{' '.join(cmd)}` could not start: {e}"
    if done.returncode != 0:
        err = (done.stderr.strip() or done.stdout.strip()).splitlines()
        return (
            None,
            f"`{' '.join(cmd)}` exited with status {done.returncode}: {err[0] if err else ''}".strip(),
        )
    return done.stdout, None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


# ---------------------------------------------------------------- tegrastats


_TIMESTAMP = re.compile(r"^\s*(\d{2})-(\d{2})-(\d{4}) (\d{2}):(\d{2}):(\d{2})\s")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB\b")
# "CPU [2%@729,off,...]" (per-core clocks) or the L4T 28 form "cpu [17%,13%]@408" (one shared clock).
_CPU = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?", re.IGNORECASE)
_CPU_CORE = re.compile(r"^(\d+)%(?:@(\d+))?$")
# "GR3D_FREQ 0%", "0%@114" (Xavier / Nano), "63%@[621]" and "0%@[0,0]" (JetPack 6: one clock per
# GPC), "@[314,314,314]" (Thor: no load figure), "GR3D 3%@76" (L4T 28). GR3D2_FREQ, the second GPC
# of JetPack 5 AGX Orin, is left out: GR3D_FREQ is the figure every release prints.
_GR3D = re.compile(r"\bGR3D(?:_FREQ)? (?:(\d+)%)?(?:@\[?([\d,]+)\]?)?")
_EMC = re.compile(r"\bEMC(?:_FREQ)? (?:(\d+)%)?(?:@(\d+))?")
# "cpu@45.5C", "GPU@36.5C", "CV0@-256C"; JetPack 7 adds the running maximum: "cpu@34.3C/34.8C".
_TEMP = re.compile(r"(?<![\w@])([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C(?=[\s/]|$)")
# "VDD_GPU_SOC 2388mW/2388mW" (now/average), "POM_5V_GPU 122/122" (JetPack 4: mW, no unit),
# "VDD_GPU 4925mW/4925mW/4925mW" (JetPack 7: now/average/maximum).
_RAIL = re.compile(r"(?<![\w@])([A-Za-z][A-Za-z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/\d+(?:mW)?)?(?=\s|$)")
# tegrastats prints -256C for a sensor that is absent or powered off (CV engines, a gated GPU).
_NO_SENSOR_C = -256.0
# Unconnected INA3221 channels are printed as "NC", possibly several times: not a rail.
_NOT_CONNECTED = "NC"


def parse_tegrastats_line(line: str) -> dict[str, Any]:
    """One ``tegrastats`` output line (JetPack 4 to 7: Nano, TX1/TX2, Xavier, Orin, Thor) as a dict.

    Keys (a field the line does not carry is None, or empty for the collections):
    ``timestamp`` (ISO 8601 local time when the line starts with ``MM-DD-YYYY HH:MM:SS``),
    ``ram_used_mb``, ``ram_total_mb`` (MiB), ``cpu_load_pct`` / ``cpu_freq_mhz`` (one entry per
    core, None for an "off" core), ``gpu_load_pct``, ``gpu_freq_mhz`` (the highest GPC clock),
    ``emc_load_pct``, ``emc_freq_mhz``, ``temps_c`` {sensor: °C} (absent sensors, printed as -256C,
    left out), ``power_mw`` {rail: {"now": mW, "avg": mW}} ("avg" is tegrastats' own running
    average since it started). Fields this parser does not know (SWAP, APE, NVENC, ...) are ignored.

    Raises ValueError when the line is not tegrastats output.
    """
    text = line.strip()
    if not text:
        raise ValueError("empty line: not a tegrastats sample")
    ram = _RAM.search(text)
    if ram is None:
        raise ValueError(f"not a tegrastats line (no 'RAM <used>/<total>MB' field): {text[:80]!r}")
    out: dict[str, Any] = {
        "timestamp": None,
        "ram_used_mb": int(ram.group(1)),
        "ram_total_mb": int(ram.group(2)),
        "cpu_load_pct": [],
        "cpu_freq_mhz": [],
        "gpu_load_pct": None,
        "gpu_freq_mhz": None,
        "emc_load_pct": None,
        "emc_freq_mhz": None,
        "temps_c": {},
        "power_mw": {},
    }
    if ts := _TIMESTAMP.match(text):
        month, day, year, hh, mm, ss = (int(g) for g in ts.groups())
        out["timestamp"] = datetime(year, month, day, hh, mm, ss).isoformat()
    if cpu := _CPU.search(text):
        shared = int(cpu.group(2)) if cpu.group(2) else None
        for entry in (e.strip() for e in cpu.group(1).split(",")):
            if entry.lower() == "off":
                out["cpu_load_pct"].append(None)
                out["cpu_freq_mhz"].append(None)
                continue
            core = _CPU_CORE.match(entry)
            if core is None:
                raise ValueError(f"unrecognised CPU core entry {entry!r} in {cpu.group(0)!r}")
            out["cpu_load_pct"].append(int(core.group(1)))
            out["cpu_freq_mhz"].append(int(core.group(2)) if core.group(2) else shared)
    if gr3d := _GR3D.search(text):
        load, freqs = gr3d.groups()
        out["gpu_load_pct"] = int(load) if load else None
        out["gpu_freq_mhz"] = max(int(f) for f in freqs.split(",") if f) if freqs else None
    if emc := _EMC.search(text):
        out["emc_load_pct"] = int(emc.group(1)) if emc.group(1) else None
        out["emc_freq_mhz"] = int(emc.group(2)) if emc.group(2) else None
    for name, value in _TEMP.findall(text):
        if float(value) > _NO_SENSOR_C:
            out["temps_c"][name] = float(value)
    for name, now, avg in _RAIL.findall(text):
        if name != _NOT_CONNECTED:
            out["power_mw"][name] = {"now": float(now), "avg": float(avg)}
    return out


def _stats(values: list[float]) -> dict[str, float | int]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize_tegrastats(samples: list[dict[str, Any]], interval_s: float | None = None) -> dict[str, Any]:
    """Summary of parsed tegrastats samples (:func:`parse_tegrastats_line` dicts).

    ``metrics``: {name: {mean, min, max, n}} for ram_used_mb, cpu_load_pct (per sample, the mean
    over the online cores), gpu_load_pct, gpu_freq_mhz, emc_load_pct — a metric no sample carries
    is left out. ``power_mw``: per rail the mean / min / max of the instantaneous power (mW) and,
    when the sampling interval ``interval_s`` (s) is given, ``energy_j``: each sample stands for one
    interval (sum of mW × interval / 1000). ``temps_max_c``: the hottest reading per sensor (°C).
    ``duration_s``: samples × interval (None without an interval).
    """
    series: dict[str, list[float]] = {
        "ram_used_mb": [],
        "cpu_load_pct": [],
        "gpu_load_pct": [],
        "gpu_freq_mhz": [],
        "emc_load_pct": [],
    }
    rails: dict[str, list[float]] = {}
    temps: dict[str, float] = {}
    for s in samples:
        for key in ("ram_used_mb", "gpu_load_pct", "gpu_freq_mhz", "emc_load_pct"):
            if s.get(key) is not None:
                series[key].append(float(s[key]))
        online = [c for c in s.get("cpu_load_pct", []) if c is not None]
        if online:
            series["cpu_load_pct"].append(statistics.fmean(online))
        for rail, p in s.get("power_mw", {}).items():
            rails.setdefault(rail, []).append(float(p["now"]))
        for sensor, c in s.get("temps_c", {}).items():
            temps[sensor] = max(c, temps.get(sensor, c))
    power: dict[str, dict[str, float | int]] = {}
    for rail, mw in rails.items():
        power[rail] = _stats(mw)
        if interval_s is not None:
            power[rail]["energy_j"] = sum(mw) * interval_s / 1000.0
    return {
        "n_samples": len(samples),
        "interval_s": interval_s,
        "duration_s": len(samples) * interval_s if interval_s is not None else None,
        "metrics": {k: _stats(v) for k, v in series.items() if v},
        "power_mw": power,
        "temps_max_c": temps,
    }


class TegrastatsSampler:
    """Runs ``tegrastats --interval N`` for the duration of a ``with`` block and parses its lines.

    Where tegrastats is not on PATH (any machine but a Jetson) the block runs normally and
    ``available`` is False with the ``reason``. ``samples`` are the parsed lines, each with ``t_s``
    (s since start, host clock, when the line was read); lines that do not parse are counted in
    ``parse_errors`` (the first kept in ``first_error``) — stderr is merged into stdout so that an
    error message from tegrastats shows up there instead of filling an unread pipe.
    """

    def __init__(self, interval_ms: int = 200, executable: str = "tegrastats") -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive, got {interval_ms}")
        self.interval_ms = interval_ms
        self.executable = executable
        self.available: bool | None = None
        self.reason: str | None = None
        self.parse_errors = 0
        self.first_error: str | None = None
        self.returncode: int | None = None
        self._samples: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def __enter__(self) -> TegrastatsSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def samples(self) -> list[dict[str, Any]]:
        """Copies of the samples parsed so far (safe while the reader thread runs; editing them
        leaves the sampler's own untouched)."""
        with self._lock:
            return [dict(s) for s in self._samples]

    def start(self) -> None:
        """Start tegrastats and the reader thread, or record why it is not available."""
        exe = shutil.which(self.executable)
        if exe is None:
            self.available, self.reason = False, f"{self.executable} not found on PATH"
            return
        try:
            # Own session: stop() signals the whole group, so a wrapper script's children go too.
            self._proc = subprocess.Popen(
                [exe, "--interval", str(self.interval_ms)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
        except OSError as e:
            self.available, self.reason = False, f"{exe} could not start: {e}"
            return
        self.available = True
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._read, args=(self._proc.stdout,), daemon=True)
        self._thread.name = "tegrastats-reader"
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if not line.strip():
                continue
            t_s = time.monotonic() - self._t0
            try:
                sample = parse_tegrastats_line(line)
            except ValueError as e:
                with self._lock:
                    self.parse_errors += 1
                    self.first_error = self.first_error or str(e)
                continue
            sample["t_s"] = t_s
            with self._lock:
                self._samples.append(sample)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Terminate tegrastats (SIGTERM, then SIGKILL after ``timeout_s``), reap it, join the reader."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        else:
            # It ended on its own before we stopped it: the run has no telemetry from then on.
            self.reason = f"{self.executable} exited early with status {proc.returncode}"
        self.returncode = proc.returncode
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        if proc.stdout is not None:
            proc.stdout.close()

    def summary(self) -> dict[str, Any]:
        """:func:`summarize_tegrastats` of the samples at the nominal interval, plus availability,
        parse errors and ``wall_s`` (s between the first and last sample, host clock)."""
        samples = self.samples
        out = summarize_tegrastats(samples, interval_s=self.interval_ms / 1000.0)
        out.update(
            available=bool(self.available),
            reason=self.reason,
            interval_ms=self.interval_ms,
            parse_errors=self.parse_errors,
            first_error=self.first_error,
            wall_s=samples[-1]["t_s"] - samples[0]["t_s"] if len(samples) > 1 else None,
        )
        return out


# ---------------------------------------------------------------- nvpmodel / jetson_clocks / L4T


_NVP_MODE = re.compile(r"NV Power Mode:\s*(\S+)")


def parse_nvpmodel(text: str) -> dict[str, Any]:
    """``nvpmodel -q`` (or ``-q --verbose``) output: {"mode_name": "MAXN", "mode_id": 0,
    "warnings": [...]}; mode_id is None when the output carries no id line.

    Raises ValueError when there is no "NV Power Mode:" line.
    """
    mode = _NVP_MODE.search(text)
    if mode is None:
        raise ValueError(f"no 'NV Power Mode:' line in nvpmodel output: {text.strip()[:80]!r}")
    # The id is the first line holding only a number, printed right after the mode name.
    ids = re.findall(r"^\s*(\d+)\s*$", text[mode.end() :], re.MULTILINE)
    warnings = [ln.strip() for ln in text.splitlines() if re.match(r"\s*NVPM ?WARN", ln)]
    return {"mode_name": mode.group(1), "mode_id": int(ids[0]) if ids else None, "warnings": warnings}


# "cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: ..."
# L4T 28 (TX1) prints "cpu0: Gonvernor=interactive MinFreq=... " (sic) and no Online field.
_JC_CPU = re.compile(
    r"^\s*(cpu\d+):\s+(?:Online=(\d)\s+)?Go\w*?=(\S+)\s+MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)",
    re.MULTILINE,
)
_JC_CLOCK = re.compile(
    r"^\s*(GPU|EMC) MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)(?: FreqOverride=(\d))?", re.MULTILINE
)


def parse_jetson_clocks(text: str) -> dict[str, Any]:
    """``jetson_clocks --show`` output, with the verdict on whether the clocks are locked.

    Returns ``soc_family``, ``machine``, ``online_cpus`` (as printed, e.g. "0-11"), ``cpus``
    {cpuN: {online, governor, min_khz, max_khz, cur_khz}}, ``gpu`` {min_hz, max_hz, cur_hz} and
    ``emc`` {min_hz, max_hz, cur_hz, freq_override} (None when absent), ``power_mode`` (the
    nvpmodel name it prints, or None), ``locked`` and ``evidence`` (one line per check).

    ``locked`` is True when every online CPU has MinFreq == MaxFreq == CurrentFreq and the GPU has
    MinFreq == MaxFreq (what ``jetson_clocks`` sets), False when any of these differs, None
    (unknown) when the output has no CPU or no GPU line to judge by.

    Raises ValueError when the text has neither CPU nor GPU / EMC clock lines (for instance the
    "run as root" refusal).
    """
    cpus = {
        name: {
            "online": online != "0",
            "governor": gov,
            "min_khz": int(lo),
            "max_khz": int(hi),
            "cur_khz": int(cur),
        }
        for name, online, gov, lo, hi, cur in _JC_CPU.findall(text)
    }
    clocks = {m[0]: m for m in _JC_CLOCK.findall(text)}
    if not cpus and not clocks:
        raise ValueError(f"no CPU or GPU clock lines in jetson_clocks output: {text.strip()[:80]!r}")
    gpu = emc = None
    if "GPU" in clocks:
        _, lo, hi, cur, _ = clocks["GPU"]
        gpu = {"min_hz": int(lo), "max_hz": int(hi), "cur_hz": int(cur)}
    if "EMC" in clocks:
        _, lo, hi, cur, override = clocks["EMC"]
        emc = {
            "min_hz": int(lo),
            "max_hz": int(hi),
            "cur_hz": int(cur),
            "freq_override": override == "1" if override else None,
        }

    evidence: list[str] = []
    checks: list[bool] = []
    for name, c in sorted(cpus.items(), key=lambda kv: int(kv[0][3:])):
        if not c["online"]:
            evidence.append(f"{name}: offline (not judged)")
            continue
        ok = c["min_khz"] == c["max_khz"] == c["cur_khz"]
        checks.append(ok)
        evidence.append(
            f"{name}: MinFreq={c['min_khz']} MaxFreq={c['max_khz']} CurrentFreq={c['cur_khz']} kHz "
            + ("pinned" if ok else "not pinned")
        )
    if gpu is not None:
        ok = gpu["min_hz"] == gpu["max_hz"]
        checks.append(ok)
        evidence.append(
            f"GPU: MinFreq={gpu['min_hz']} MaxFreq={gpu['max_hz']} CurrentFreq={gpu['cur_hz']} Hz "
            + ("pinned" if ok else "not pinned")
        )
    if not cpus or gpu is None:
        locked = None
        evidence.append("no " + ("CPU" if not cpus else "GPU") + " clock line: lock state unknown")
    else:
        locked = all(checks)
    soc = re.search(r"SOC family:\s*(\S+)\s+Machine:\s*(.+)", text)
    online_cpus = re.search(r"Online CPUs:\s*(\S+)", text)
    mode = _NVP_MODE.search(text)
    return {
        "soc_family": soc.group(1) if soc else None,
        "machine": soc.group(2).strip() if soc else None,
        "online_cpus": online_cpus.group(1) if online_cpus else None,
        "cpus": cpus,
        "gpu": gpu,
        "emc": emc,
        "power_mode": mode.group(1) if mode else None,
        "locked": locked,
        "evidence": evidence,
    }


_L4T = re.compile(r"#\s*R(\d+)\s*\((\w+)\),\s*REVISION:\s*([\d.]+)(.*)")


def parse_nv_tegra_release(text: str) -> dict[str, Any]:
    """``/etc/nv_tegra_release``: {"l4t": "36.4.4", "release": "R36", "revision": "4.4",
    "board", "date", "kernel_variant"} (the last three None when absent).

    Raises ValueError when the first line is not "# R<major> (release), REVISION: <x.y>".
    """
    m = _L4T.search(text)
    if m is None:
        raise ValueError(f"not an nv_tegra_release file: {text.strip()[:80]!r}")
    major, _kind, revision, rest = m.groups()
    fields = dict(re.findall(r"(\w+):\s*([^,]+)", rest))
    variant = re.search(r"KERNEL_VARIANT:\s*(\S+)", text)
    return {
        "l4t": f"{major}.{revision}",
        "release": f"R{major}",
        "revision": revision,
        "board": fields.get("BOARD", "").strip() or None,
        "date": fields.get("DATE", "").strip() or None,
        "kernel_variant": variant.group(1) if variant else None,
    }


# ---------------------------------------------------------------- environment


def _cpu_info() -> dict[str, Any]:
    cpuinfo = _read_text(Path("/proc/cpuinfo")) or ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    name = model.group(1).strip() if model else None
    if name is None:
        # ARM kernels (Jetson) print no "model name"; lscpu names the core (e.g. Cortex-A78AE).
        out, _ = _run_tool(["lscpu"])
        lscpu = re.search(r"^Model name:\s*(.+)$", out or "", re.MULTILINE)
        name = lscpu.group(1).strip() if lscpu else (platform.processor() or None)
    # Physical cores: distinct (package, core) pairs; ARM kernels print neither field (None then).
    cores = set()
    for block in cpuinfo.split("\n\n"):
        pkg = re.search(r"^physical id\s*:\s*(\d+)", block, re.MULTILINE)
        core = re.search(r"^core id\s*:\s*(\d+)", block, re.MULTILINE)
        if pkg and core:
            cores.add((pkg.group(1), core.group(1)))
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    return {
        "model": name or "not available",
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": len(cores) or None,
        "usable_cores": usable,  # this process's affinity: what a container or taskset leaves
    }


def _memory_info() -> dict[str, Any]:
    meminfo = _read_text(Path("/proc/meminfo"))
    if meminfo is None:
        return _unavailable("/proc/meminfo not readable")
    kib = {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB", meminfo, re.MULTILINE)}
    return {
        "total_mb": kib["MemTotal"] // 1024 if "MemTotal" in kib else None,
        "available_mb": kib["MemAvailable"] // 1024 if "MemAvailable" in kib else None,
        "swap_total_mb": kib["SwapTotal"] // 1024 if "SwapTotal" in kib else None,
    }


def _os_info() -> dict[str, Any]:
    try:
        distro = platform.freedesktop_os_release().get("PRETTY_NAME")
    except OSError:
        distro = None
    return {
        "system": platform.system(),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "distribution": distro or "not available",
    }


def _gpu_info() -> dict[str, Any]:
    out, why = _run_tool(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"]
    )
    if out is None:
        return _unavailable(why or "nvidia-smi printed nothing")
    gpus = []
    for row in (r for r in out.splitlines() if r.strip()):
        name, driver, memory = ([*(c.strip() for c in row.split(",")), "", ""])[:3]
        gpus.append(
            {
                "name": name,
                "driver_version": driver,
                "memory_total_mb": int(memory) if memory.isdigit() else None,  # "[N/A]" on Jetson
            }
        )
    return {"available": True, "gpus": gpus}


def package_versions() -> dict[str, dict[str, Any]]:
    """{report key: {"version", "distribution"}} of the PACKAGES, read from installed metadata
    (nothing is imported); a missing one has version None and the reason."""
    out: dict[str, dict[str, Any]] = {}
    for key, dists in PACKAGES.items():
        for dist in dists:
            try:
                out[key] = {"version": importlib.metadata.version(dist), "distribution": dist}
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        else:
            out[key] = {"version": None, "reason": f"not installed (looked for {', '.join(dists)})"}
    return out


def _dpkg_version(package: str) -> dict[str, Any]:
    out, why = _run_tool(["dpkg-query", "--show", "--showformat=${Version}", package])
    if out is None or not out.strip():
        return _unavailable(why or f"{package} is not installed")
    return {"available": True, "version": out.strip()}


def jetson_info(
    release_path: Path = NV_TEGRA_RELEASE, model_path: Path = DEVICE_TREE_MODEL
) -> dict[str, Any]:
    """Whether this is a Jetson and, if so, its model, L4T and JetPack release, power mode and
    clock lock state; every part that cannot be read says so with the reason.

    A Jetson is recognised by ``release_path`` existing or the device-tree model naming
    "Jetson" / "NVIDIA".
    """
    release = _read_text(release_path)
    model_raw = _read_text(model_path)
    model = model_raw.replace("\x00", "").strip() if model_raw else None
    if release is None and not (model and ("Jetson" in model or "NVIDIA" in model)):
        return {
            "is_jetson": False,
            "reason": f"no {release_path} and the device-tree model "
            + (f"{model!r} names neither Jetson nor NVIDIA" if model else f"({model_path}) is absent"),
        }
    info: dict[str, Any] = {"is_jetson": True, "model": model or "not available"}
    if release is None:
        info["l4t"] = _unavailable(f"{release_path} not readable")
    else:
        try:
            info["l4t"] = parse_nv_tegra_release(release)
        except ValueError as e:
            info["l4t"] = _unavailable(str(e))
    info["l4t_core_package"] = _dpkg_version("nvidia-l4t-core")
    info["jetpack"] = _dpkg_version("nvidia-jetpack")  # the meta package; absent on minimal images
    for key, cmd, parse in (
        ("power_mode", ["nvpmodel", "-q"], parse_nvpmodel),
        ("clocks", ["jetson_clocks", "--show"], parse_jetson_clocks),
    ):
        out, why = _run_tool(cmd)
        if out is None:
            refused = key == "clocks" and why is not None and "exited with status" in why
            hint = " (jetson_clocks --show usually needs root)" if refused else ""
            info[key] = _unavailable((why or "") + hint)
            continue
        try:
            info[key] = {"available": True, **parse(out)}
        except ValueError as e:
            info[key] = _unavailable(str(e))
    return info


def environment(
    release_path: Path = NV_TEGRA_RELEASE, model_path: Path = DEVICE_TREE_MODEL
) -> dict[str, Any]:
    """The machine a benchmark ran on, for the report: ``captured_at`` (UTC), ``hostname``,
    ``python``, ``os``, ``cpu``, ``memory`` (MiB), ``gpu`` (``nvidia-smi``), ``packages``
    (:func:`package_versions`) and ``jetson`` (:func:`jetson_info`; the paths are its inputs).

    Never raises on a missing tool or file; every external command runs with a timeout
    (TOOL_TIMEOUT_S).
    """
    return {
        "captured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "os": _os_info(),
        "cpu": _cpu_info(),
        "memory": _memory_info(),
        "gpu": _gpu_info(),
        "packages": package_versions(),
        "jetson": jetson_info(release_path, model_path),
    }
