"""The command line, run as a user runs it: a real subprocess of `python -m edge_agent`."""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from fixtures import dicom_cine

from edge_agent.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


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


def test_every_verb_is_documented_and_its_help_shows_its_defaults(monkeypatch):
    """README has a `### edge-agent VERB` section per verb and no other; a verb's help shows each
    default that is a value (not a flag's, not one its help text already explains)."""
    monkeypatch.setenv("COLUMNS", "200")  # no option's help wraps in the middle of a default
    documented = set(re.findall(r"^### `edge-agent ([a-z-]+)", README.read_text(), re.MULTILINE))
    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(verbs) == documented
    for name, verb_parser in verbs.items():
        text = " ".join(verb_parser.format_help().split())
        for action in verb_parser._actions:
            value = action.default
            is_value = action.nargs != 0 and isinstance(value, (str, int, float))  # nargs 0: a flag
            if is_value and "default" not in (action.help or ""):
                assert f"(default: {value})" in text, (name, action.dest)


def test_version():
    out = _run("--version")
    assert out.returncode == 0 and re.fullmatch(r"edge-agent \d+\.\d+\.\d+\S*\n", out.stdout)


def test_subscribe_to_no_agent_says_so_and_exits_1():
    """Silence for --timeout with not one message (an agent heartbeats every few seconds) is "no
    agent there", not "a quiet agent"."""
    out = _run("subscribe", "--connect", "tcp://127.0.0.1:1", "--timeout", "1")
    assert out.returncode == 1 and out.stdout == ""
    assert "no message from tcp://127.0.0.1:1 in 1 s" in out.stderr


def test_bad_config_is_a_clear_error_with_exit_code_2(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"stepz": 1}}))
    out = _run("train", "--config", str(cfg))
    assert out.returncode == 2
    assert "configuration error" in out.stderr and "stepz" in out.stderr and str(cfg) in out.stderr
    out = _run("train", "--config", str(cfg), "--set", "train.steps")
    assert out.returncode == 2 and "section.key=value" in out.stderr


def test_config_show_prints_a_config_that_loads_back_to_itself(tmp_path):
    # From another directory: the shipped default config is found all the same.
    out = _run("config", "show", "--set", "worker.count=2", "--set", "cycles.early_s=0.12", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["worker"]["count"] == 2 and shown["cycles"]["early_s"] == 0.12
    assert shown["streams"][0]["id"] == "bed1" and shown["hub"]["running_beats"] == 5  # defaults too
    (tmp_path / "effective.yaml").write_text(out.stdout)
    again = _run("config", "show", "--config", str(tmp_path / "effective.yaml"))
    assert again.returncode == 0 and again.stdout == out.stdout


def _dicom_claiming(path: Path, rows: int, columns: int, frames: int) -> Path:
    """A small real cine whose header claims another size (a damaged or hostile file)."""
    import numpy as np

    cine = dicom_cine(np.zeros((6, 64, 64), np.uint8), FrameTime=20.0, Rows=rows, Columns=columns)
    cine.NumberOfFrames = frames
    cine.save_as(path, enforce_file_format=True)
    return path


def test_user_mistakes_end_in_one_line_and_exit_2(tmp_path):
    huge = _dicom_claiming(tmp_path / "huge.dcm", 60000, 60000, 100000)
    (tmp_path / "huge.yaml").write_text(yaml.safe_dump({"streams": [{"id": "bed1", "source": str(huge)}]}))
    cases = [
        (("run", "--config", str(tmp_path / "huge.yaml"), "--seconds", "5"), "the header does not match"),
        (("demo", "--source", str(huge), "--seconds", "5"), "the header does not match"),
        (("evaluate", "--model", str(tmp_path / "nope"), "--synthetic"), "no such model artefact"),
        (("export", "--model", str(tmp_path / "nope.pt")), "no such model artefact"),
        (("calibrate", "--model", str(tmp_path / "nope.onnx")), "the fused ONNX graph"),
        (("worker", "--connect", "tcp://127.0.0.1:1", "--set", "worker.backend=tensorrt"), "worker.device"),
        (("run", "--set", "worker.bogus=1"), "command line (--set):worker: unknown key(s) ['bogus']"),
    ]
    for args, message in cases:
        out = _run(*args, cwd=tmp_path)
        errors = [line for line in out.stderr.splitlines() if line.startswith("edge-agent")]
        assert out.returncode == 2, (args, out.stderr[-2000:])
        assert "Traceback" not in out.stderr and len(errors) == 1 and message in errors[0], (args, out.stderr)


def test_simulate_writes_an_echonet_dataset(tmp_path):
    out = _run("simulate", "--out", str(tmp_path / "sim"), "--n", "2", "--beats", "2.2", "--workers", "1")
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "sim" / "FileList.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(10 <= float(r["EF"]) <= 90 for r in rows)
    assert all((tmp_path / "sim" / "Videos" / f"{r['FileName']}.avi").stat().st_size > 0 for r in rows)
