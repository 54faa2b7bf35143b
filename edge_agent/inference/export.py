"""Export the trained model to ONNX: one fused posterior graph per window, and its parts.

``<artefact>.onnx`` — the fused graph every fast backend runs:

    video uint8 (B, 32, 112, 112), demo float32 (B, 4), demo_mask float32 (B, 4) (1 known, 0 missing),
    noise float32 (B, K)  →  samples float32 (B, K), EF %;  ood_score float32 (B,)

The encoder runs once; the 10 DDIM steps (x ← a_i·x + b_i·ε_θ(x, t_i), DDIM eq. 12 with η = 0) are
unrolled over the K trajectories inside the graph, and the bounded-target inverse (EF = 100·σ(yσ+μ))
ends it, so a backend does one call per window (or per batch of windows: B is dynamic, K static).
The dispersion recalibration is not in the graph: it is the worker's, identical for every backend.
``ood_score`` is the window's out-of-distribution score (:meth:`MCSDR.ood_score`, fitted by
:mod:`edge_agent.ml.ood`; ≤ 1 familiar, NaN for an artefact fitted without one).

``<artefact>.encoder.onnx`` (video, demo, demo_mask → k0, v0, …, ood_score: the per-block keys and
values and the score) and
``<artefact>.step.onnx`` (y (B, K), t (B, K) int64, k0, v0, … → eps (B, K)) are the same network cut
in two, for tools and backends that want to drive the sampler themselves.

Every file gets a sidecar ``<file>.json``: inputs and outputs (names, shapes with "B" for the batch,
dtypes), schedule, target transform, K, opset, the checkpoint's sha256 and the ONNX's own. Each
export is checked against the torch model on random inputs with ONNX Runtime; a disagreement
raises :class:`ExportError` and nothing is left half-written.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_agent.core.artefacts import write_sidecar
from edge_agent.model.artefact import load_model
from edge_agent.model.network import MCSDR

log = logging.getLogger(__name__)

OPSET = 17
INPUTS_FUSED = ("video", "demo", "demo_mask", "noise")
# Agreement with torch fp32 required of an export, in EF points (posterior samples) and in raw units.
TOLERANCE_EF = 0.05
TOLERANCE_RAW = 1e-3


class ExportError(RuntimeError):
    """The exported graph disagrees with the torch model, or the export failed; nothing was written."""


class FusedPosterior(nn.Module):
    """(video, demo, demo_mask as 0/1 floats, noise) → K posterior samples of EF % per window."""

    def __init__(self, model: MCSDR) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor, demo: torch.Tensor, demo_mask: torch.Tensor, noise: torch.Tensor):
        # Traced: the sampler's loop unrolls into the graph, its grid and coefficients become constants.
        y, ood = self.model.posterior(video, demo, demo_mask > 0.5, noise)
        return self.model.transform.inverse(y), ood


class Encoder(nn.Module):
    """(video, demo, demo_mask) → (k0, v0, k1, v1, …, ood_score), the condition encoded once per window."""

    def __init__(self, model: MCSDR) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor, demo: torch.Tensor, demo_mask: torch.Tensor):
        kv, ood = self.model.condition(video, demo, demo_mask > 0.5)
        return (*kv, ood)


class Step(nn.Module):
    """(y (B, K), t (B, K) int64, k0, v0, …) → ε_θ (B, K), one denoiser call."""

    def __init__(self, model: MCSDR) -> None:
        super().__init__()
        self.model = model

    def forward(self, y: torch.Tensor, t: torch.Tensor, *kv: torch.Tensor):
        return self.model.eps(y, t, list(kv))


@dataclass(frozen=True)
class ExportRequest:
    """model: artefact (its stem or .pt, with the .json sidecar); out: folder for the graphs, named
    after the artefact (default: the artefact's folder); k: samples per window (static in the
    graph); max_batch: windows per call the graph is checked with."""

    model: str = "engines/mcsdr_default.pt"
    out: str | None = None
    k: int = 40
    max_batch: int = 8
    opset: int = OPSET
    seed: int = 0


def random_inputs(b: int, k: int, seed: int) -> dict[str, np.ndarray]:
    """Windows of noise video and demographics with a random subset known (fused graph's inputs)."""
    rng = np.random.default_rng(seed)
    mask = (rng.random((b, 4)) < 0.6).astype(np.float32)
    demo = np.stack(
        [rng.uniform(20, 90, b), rng.integers(0, 2, b), rng.uniform(50, 110, b), rng.uniform(150, 195, b)], 1
    )
    return {
        "video": rng.integers(0, 256, (b, 32, 112, 112), dtype=np.uint8),
        "demo": (demo * mask).astype(np.float32),
        "demo_mask": mask,
        "noise": rng.standard_normal((b, k)).astype(np.float32),
    }


def _torch_inputs(arrays: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(arrays[n]) for n in INPUTS_FUSED)


def _io(names: list[str], arrays: list[np.ndarray], dynamic: set[str]) -> list[dict[str, Any]]:
    """Sidecar description of tensors: the batch axis is "B"."""
    return [
        {
            "name": n,
            "shape": ["B" if n in dynamic else None, *a.shape[1:]] if n in dynamic else list(a.shape),
            "dtype": str(a.dtype),
        }
        for n, a in zip(names, arrays, strict=True)
    ]


def _export(
    module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], opset: int
) -> None:
    """torch → ONNX with the first axis of every input and output dynamic (the batch of windows).

    The TorchScript exporter (``dynamo=False``): it keeps each weight once as an initializer shared
    by the ten unrolled steps (1.6 MB), where the dynamo exporter of torch 2.13 repeats the
    denoiser's weights per step (6.4 MB) for no gain in speed or accuracy.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes taken as constants (K is static)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            opset_version=opset,
            dynamic_axes={name: {0: "B"} for name in (*inputs, *outputs)},
            dynamo=False,
        )


def _check(
    path: Path, feeds: dict[str, np.ndarray], expected: dict[str, np.ndarray], tol: float, what: str
) -> float:
    """Run the ONNX with ONNX Runtime (CPU) and compare; returns the largest difference."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(expected), feeds)
    worst = max(_difference(g, e, n == "ood_score") for g, (n, e) in zip(got, expected.items(), strict=True))
    if not worst <= tol:
        raise ExportError(
            f"{path}: {what} differs from the torch model by {worst:.3g} (tolerance {tol:g}) on random "
            "inputs; the export is not faithful — check the opset and the ops the model uses"
        )
    return worst


def _difference(got: np.ndarray, expected: np.ndarray, relative: bool) -> float:
    """Largest absolute difference, or relative where values exceed 1 (the OOD score of a random
    window is ~1e4, and fp32 keeps digits, not decimals); NaN in both agrees (no fitted score)."""
    both_nan = np.isnan(got) & np.isnan(expected)
    diff = np.abs(got - expected) / (np.maximum(1.0, np.abs(expected)) if relative else 1.0)
    return float(np.where(both_nan, 0.0, diff).max())


@dataclass(frozen=True)
class _Part:
    """One graph to export: its module and example inputs, and torch's outputs on them (the reference)."""

    name: str  # its key in export()'s result
    kind: str  # the sidecar's "kind"
    module: nn.Module
    args: tuple[torch.Tensor, ...]
    inputs: dict[str, np.ndarray]  # graph input name → the args as numpy
    outputs: dict[str, np.ndarray]  # graph output name → torch's result
    tolerance: float
    what: str  # what the check compares, for its error
    checked_key: str = "checked_max_abs_diff"

    def sidecar(self, worst: float) -> dict[str, Any]:
        dynamic = {*self.inputs, *self.outputs}  # every input and output has the batch axis
        return {
            "kind": self.kind,
            "inputs": _io(list(self.inputs), list(self.inputs.values()), dynamic),
            "outputs": _io(list(self.outputs), list(self.outputs.values()), dynamic),
            self.checked_key: worst,
        }


def _parts(model: MCSDR, k: int, seed: int) -> list[_Part]:
    """The fused graph, the encoder and the step, with torch's outputs on random inputs."""
    kv_names = [f"{kind}{i}" for i in range(model.cfg.n_blocks) for kind in ("k", "v")]
    feeds = random_inputs(2, k, seed)
    args = _torch_inputs(feeds)
    with torch.no_grad():  # not inference_mode: the tracer re-uses these tensors as example inputs
        fused, enc, step = FusedPosterior(model), Encoder(model), Step(model)
        samples, ood = (x.numpy() for x in fused(*args))
        *kv, _ood = enc(*args[:3])
        t = torch.full((2, k), int(model.schedule.timesteps()[0]), dtype=torch.int64)
        eps = step(args[3], t, *kv).numpy()
    kv_np = dict(zip(kv_names, (x.numpy() for x in kv), strict=True))  # strict: one k and v per block
    return [
        _Part(
            "fused",
            "fused posterior",
            fused,
            args,
            {n: feeds[n] for n in INPUTS_FUSED},
            {"samples": samples, "ood_score": ood},
            TOLERANCE_EF,
            "the posterior samples (EF %)",
            checked_key="checked_max_abs_diff_ef",
        ),
        _Part(
            "encoder",
            "encoder",
            enc,
            args[:3],
            {n: feeds[n] for n in INPUTS_FUSED[:3]},
            {**kv_np, "ood_score": ood},
            TOLERANCE_RAW,
            "the keys and values",
        ),
        _Part(
            "step",
            "denoiser step",
            step,
            (args[3], t, *kv),
            {"y": feeds["noise"], "t": t.numpy(), **kv_np},
            {"eps": eps},
            TOLERANCE_RAW,
            "the noise prediction",
        ),
    ]


def _export_checked(parts: list[_Part], paths: dict[str, Path], opset: int) -> dict[str, float]:
    """Export each part and check it with ONNX Runtime, then move all into place together; on any
    failure none is written. Returns each part's largest difference from torch."""
    tmp = {name: p.with_name(p.name + ".tmp") for name, p in paths.items()}
    worst: dict[str, float] = {}
    try:
        for part in parts:
            path = tmp[part.name]
            _export(part.module, part.args, path, list(part.inputs), list(part.outputs), opset)
            worst[part.name] = _check(path, part.inputs, part.outputs, part.tolerance, part.what)
    except BaseException:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        raise
    for name, p in tmp.items():
        p.replace(paths[name])
    return worst


def export(req: ExportRequest) -> dict[str, Path]:
    """Export the fused graph and the two parts, check each against torch, write the sidecars.

    Returns {"fused": …, "encoder": …, "step": …} paths. Raises ExportError on disagreement.
    """
    model, side = load_model(req.model)
    model = model.float().eval()
    stem = Path(req.model).with_suffix("")  # the artefact's stem: engines/mcsdr_default
    stem = Path(req.out) / stem.name if req.out else stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {
        "fused": stem.with_suffix(".onnx"),
        "encoder": Path(f"{stem}.encoder.onnx"),
        "step": Path(f"{stem}.step.onnx"),
    }
    common = {
        "model": str(req.model),
        "model_sha256": side["sha256"],
        "opset": req.opset,
        "k": req.k,
        "diffusion": side["diffusion"],
        "target_transform": side["target_transform"],
        "recalibration": side.get("recalibration"),
        "ood": side.get("ood"),
        "max_batch": req.max_batch,
    }
    parts = _parts(model, req.k, req.seed)
    worst = _export_checked(parts, paths, req.opset)
    for part in parts:
        write_sidecar(paths[part.name], {**common, **part.sidecar(worst[part.name])})
    for name, p in paths.items():
        log.info("export: %s → %s", name, p)
    return paths
