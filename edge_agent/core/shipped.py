"""Where the shipped files are: the default model and its engines, the cycle detector's signal net,
the YAML configurations and the INT8 calibration windows.

In a checkout (or an editable install of one) they are its ``engines/``, ``configs/`` and
``calibration/``. A built wheel carries copies of those three folders inside the package
(``edge_agent/_shipped/``, mapped in pyproject.toml), so an installed edge-agent finds its default
model from any directory. Paths in the configuration and on the command line are written as in the
checkout (``engines/mcsdr_default.pt``): :func:`resolve` tries them from the current directory first,
then here.
"""

from __future__ import annotations

from glob import escape
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]
_WHEEL = Path(__file__).resolve().parents[1] / "_shipped"
FOLDERS = ("engines", "configs", "calibration")  # what a wheel carries (pyproject.toml package-dir)


def shipped_root() -> Path:
    """The folder holding ``engines/``, ``configs/`` and ``calibration/``: the checkout's when the
    package runs from one, else the wheel's copy."""
    return _CHECKOUT if (_CHECKOUT / "engines" / "mcsdr_default.json").is_file() else _WHEEL


def shipped(relative: str | Path) -> Path:
    """A shipped file by its checkout-relative path (``configs/default.yaml``)."""
    return shipped_root() / relative


def resolve(path: str | Path) -> Path:
    """A user's path: as given when absolute or present from the current directory, else the shipped
    file of that name (or artefact stem: ``engines/mcsdr_default`` for its .pt, .json, .onnx) when
    there is one, else as given (its error then names the user's path)."""
    p = Path(path)
    if p.is_absolute() or p.exists() or any(p.parent.glob(f"{escape(p.name)}.*")):
        return p
    candidate = shipped(p)
    found = candidate.exists() or any(candidate.parent.glob(f"{escape(candidate.name)}.*"))
    return candidate if found else p
