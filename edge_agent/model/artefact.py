"""The trained model artefact: ``<name>.pt`` (EMA weights) with its sidecar ``<name>.json``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from edge_agent.config import from_mapping
from edge_agent.core.artefacts import file_sha256
from edge_agent.model.ddim import DiffusionSchedule
from edge_agent.model.network import MCSDR, ModelConfig, TargetTransform

# Buffers an older artefact may lack (see load_model).
OPTIONAL_BUFFERS = {"ood_mean", "ood_precision", "ood_inv_threshold", "ood_noise_inv_threshold"}


def load_model(path: str | Path) -> tuple[MCSDR, dict]:
    """Load <artefact>.pt with its sidecar JSON; checks the content hash."""
    path = Path(path).with_suffix(".pt")
    side_path = path.with_suffix(".json")
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such model artefact; give the .pt of a trained model (the shipped one: "
            "engines/mcsdr_default.pt)"
        )
    if not side_path.exists():
        raise FileNotFoundError(
            f"{path}: sidecar {side_path.name} is missing; re-export with `edge-agent train`"
        )
    side = json.loads(side_path.read_text())
    digest = file_sha256(path)
    if digest != side["sha256"]:
        raise ValueError(
            f"{path}: content hash {digest[:12]} does not match its sidecar ({side['sha256'][:12]})"
        )
    model = MCSDR(
        from_mapping(ModelConfig, side["model"]),
        TargetTransform(mu=side["target_transform"]["mu"], sigma=side["target_transform"]["sigma"]),
        DiffusionSchedule.from_dict(side["diffusion"]),
    )
    missing, unexpected = model.load_state_dict(torch.load(path, weights_only=True)["ema"], strict=False)
    # Artefacts from before the out-of-distribution score lack its buffers: they load, unscored (NaN);
    # those from before the noise gate load with the gate off.
    if unexpected or set(missing) - OPTIONAL_BUFFERS:
        raise ValueError(
            f"{path}: weights do not fit the sidecar's model section (missing {missing}, "
            f"unexpected {unexpected}); re-train or restore the matching {side_path.name}"
        )
    model.eval()
    return model, side
