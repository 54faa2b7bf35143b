"""Artefact files (checkpoints, ONNX graphs, engines, calibration sets) and their sidecar JSON.

Every artefact carries ``<file>.json`` beside it that records what it is and its content hash, so a
reader never assumes: it checks the hash and reads the facts from the sidecar.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path) -> str:
    """The file's sha256 as 64 hex digits, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_sidecar(path: Path, data: dict[str, Any]) -> None:
    """Write ``<path>.json``: ``data`` plus the file's name and sha256."""
    data = {**data, "sha256": file_sha256(path), "file": path.name}
    Path(f"{path}.json").write_text(json.dumps(data, indent=2) + "\n")
