"""The command line, run as a user runs it: a real subprocess of `python -m edge_agent`."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import yaml


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_help_lists_every_verb():
    out = _run("--help")
    assert out.returncode == 0
    for verb in ("train", "simulate", "evaluate", "sim-stats"):
        assert verb in out.stdout


def test_bad_config_is_a_clear_error_with_exit_code_2(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"stepz": 1}}))
    out = _run("train", "--config", str(cfg))
    assert out.returncode == 2
    assert "configuration error" in out.stderr and "stepz" in out.stderr and str(cfg) in out.stderr
    out = _run("train", "--config", str(cfg), "--set", "train.steps")
    assert out.returncode == 2 and "section.key=value" in out.stderr


def test_simulate_writes_an_echonet_dataset(tmp_path):
    out = _run("simulate", "--out", str(tmp_path / "sim"), "--n", "2", "--beats", "2.2", "--workers", "1")
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "sim" / "FileList.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(10 <= float(r["EF"]) <= 90 for r in rows)
    assert all((tmp_path / "sim" / "Videos" / f"{r['FileName']}.avi").stat().st_size > 0 for r in rows)
