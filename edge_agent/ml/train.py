"""Training: DDPM ε-prediction for MCSDR plus the two baseline heads, on any dataset format.

Loss (summed, one encoder pass per clip):
  * auxiliary (simulated data only): the LV cavity area over the beat relative to ED (phase-free
    models: to the window's largest area), predicted per encoder time step — a dense, easy signal
    that teaches the encoder where the cavity is long before the scalar EF alone would;
  * diffusion, Ho et al. 2020 eq. 14 (L_simple): ||ε − ε_θ(√ᾱ_t y₀ + √(1−ᾱ_t) ε, t, c)||², with
    ``noise_draws`` (t, ε) pairs per clip — the head is cheap next to the encoder, so several
    draws per encoder pass cut the variance of the diffusion loss at almost no cost;
  * regression baseline: MSE on y₀;
  * Gaussian baseline: NLL ½(log σ² + (y₀ − μ)²/σ²).
Modality dropout hides demographic fields at random so any subset may be missing at inference.
An EMA of the weights is what gets saved and evaluated.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from edge_agent.config import from_mapping, load_sections, to_mapping
from edge_agent.core.artefacts import file_sha256
from edge_agent.core.clip import WindowErrors
from edge_agent.ml.augment import ViewRanges, random_views
from edge_agent.ml.ood import OodFit, fit_ood
from edge_agent.model.ddim import DiffusionSchedule, ddim_sample
from edge_agent.model.network import MCSDR, ModelConfig, TargetTransform, area_length_ef
from edge_agent.sim.clips import ClipArrays, generate, is_perturbed


@dataclass(frozen=True)
class DataConfig:
    """Where training clips come from. ``format: synthetic`` simulates them (seeded, cached in ``cache``)."""

    format: Literal["synthetic", "echonet", "pediatric", "camus"] = "synthetic"
    root: str | None = None  # dataset folder for the real formats
    n_train: int = 6000  # synthetic only
    n_val: int = 400  # synthetic only
    train_seed: int = 1
    val_seed: int = 2
    pediatric: bool = False  # synthetic only: children's demographics and sizes
    cache: str | None = "data/synthetic"  # folder for simulated arrays (reused when present)
    workers: int = 2
    generation: int = 1  # synthetic only: simulator generation (1, or 2: real-echo statistics, DCM, WMA)
    # synthetic only: share of training beats cut as a live windower may (core.clip.WindowErrors:
    # ±3 frames, period ±20 %, 10 % double, 5 % half), and of those the share starting at any phase.
    perturbed_windows: float = 0.0
    window_phase: float = 0.0
    # synthetic, generation 2 only: this many generation-1 beats (seed ``mix_seed``, cut the same
    # way) join the training set, so the model stays right on the generation-1 feed the live demo
    # and tests play. Validation stays generation 2.
    mix_generation1: int = 0
    mix_seed: int = 3

    def window_errors(self) -> WindowErrors | None:
        """How perturbed training windows are cut, or None when every window is exact ED→ED."""
        return WindowErrors(p_phase=self.window_phase) if self.perturbed_windows > 0 else None

    def cache_name(self, name: str, n: int, seed: int) -> str:
        """The simulated set's file name: everything that changes its content is in it."""
        extra = "_ped" if self.pediatric else ""
        extra += f"_gen{self.generation}" if self.generation != 1 else ""
        if self.perturbed_windows > 0:
            extra += f"_pw{self.perturbed_windows:g}_ph{self.window_phase:g}"
        return f"{name}_n{n}_seed{seed}{extra}.npz"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. Steps are counted in batches of ``batch_size`` clips."""

    steps: int = 4500
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 200
    noise_draws: int = 8
    ema: float = 0.998
    baseline_weight: float = 1.0
    recal_min_picp90: float = 0.85  # recalibration: CRPS-optimal among scales covering ≥ this on val
    # Out-of-distribution score (ml/ood.py): fitted on this many training windows; its threshold is
    # this quantile of the validation windows' distances.
    ood_n_fit: int = 2000
    ood_quantile: float = 0.99
    ood_noise_quantile: float = 0.999
    area_weight: float = 1.0  # auxiliary LV-area curve loss (simulated data; 0 contribution without it)
    # Random views per training clip (ml/augment.py ViewRanges half-widths; all 0: gain ±20 % only).
    view_zoom: float = 0.0
    view_aspect: float = 0.0
    view_rotate_deg: float = 0.0
    view_gain_db: float = 0.0
    seed: int = 0
    threads: int = 2
    eval_every: int = 500
    checkpoint_every: int = 250
    out: str = "runs/default"
    artefact: str = "engines/mcsdr_default"  # final weights: <artefact>.pt + <artefact>.json
    device: str = "cpu"
    amp: bool = True  # mixed precision (bf16 autocast) on CUDA only


SECTIONS = {"data": DataConfig, "model": ModelConfig, "diffusion": DiffusionSchedule, "train": TrainConfig}


def _simulated(cfg: DataConfig, name: str, n: int, seed: int) -> ClipArrays:
    """One simulated set, from the cache when it holds it (the file name says what is in it)."""
    path = Path(cfg.cache or ".") / cfg.cache_name(name, n, seed)
    if cfg.cache and path.exists():
        return ClipArrays.load(str(path))
    arr = generate(
        n,
        seed,
        pediatric=cfg.pediatric,
        workers=cfg.workers,
        desc=f"simulating {name}",
        generation=cfg.generation,
        # Validation windows are cut like training's, so recalibration sees live-like windows.
        window_errors=cfg.window_errors(),
        perturbed_share=cfg.perturbed_windows,
    )
    if cfg.cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        arr.save(str(path))
    return arr


def load_data(cfg: DataConfig) -> tuple[ClipArrays, ClipArrays]:
    """Training and validation arrays for the configured source."""
    if cfg.format == "synthetic":
        train = _simulated(cfg, "train", cfg.n_train, cfg.train_seed)
        if cfg.mix_generation1 > 0:
            if cfg.generation == 1:
                raise ValueError("data.mix_generation1: mixes generation-1 beats into generation 2; set 0")
            gen1 = dataclasses.replace(cfg, generation=1)
            train = ClipArrays.concat([train, _simulated(gen1, "train", cfg.mix_generation1, cfg.mix_seed)])
        return train, _simulated(cfg, "val", cfg.n_val, cfg.val_seed)
    from edge_agent.ml.datasets import open_dataset

    if cfg.root is None:
        raise ValueError(f"data.root: format {cfg.format!r} needs the dataset folder; set data.root")
    return (
        ClipArrays.from_dataset(open_dataset(cfg.root, cfg.format, "TRAIN"), "reading train"),
        ClipArrays.from_dataset(open_dataset(cfg.root, cfg.format, "VAL"), "reading val"),
    )


def drop_demographics(mask: torch.Tensor, cfg: ModelConfig, gen: torch.Generator) -> torch.Tensor:
    """Modality dropout: hide each field with p = demo_dropout, all fields with p = demo_drop_all."""
    keep = torch.rand(mask.shape, generator=gen) >= cfg.demo_dropout
    keep &= torch.rand(mask.shape[0], 1, generator=gen) >= cfg.demo_drop_all
    return mask & keep


def losses(model: MCSDR, batch: dict[str, torch.Tensor], draws: int, gen: torch.Generator) -> dict:
    """The three training losses on one batch (see module docstring)."""
    y0 = model.transform.forward(batch["ef"])
    f = model.features(batch["clips"])
    tok = model.tokens_from(f, batch["demo"], batch["mask"])
    kv = [x for blk in model.blocks for x in blk.keys_values(tok)]
    b = y0.shape[0]
    # Noise comes from a CPU generator (reproducible on any device), then moves to the model.
    t = torch.randint(0, model.schedule.num_train_timesteps, (b, draws), generator=gen).to(y0.device)
    eps = torch.randn(b, draws, generator=gen).to(y0.device)
    y_t = model.schedule.add_noise(y0[:, None].expand(b, draws), eps, t)
    eps_loss = (model.eps(y_t, t, kv).float() - eps).pow(2).mean()
    reg, mu, logvar = (x.float() for x in model.baselines(tok))
    s = model.cfg.target_scale  # baseline losses at unit scale, comparable across target scales
    reg_loss = ((reg - y0) / s).pow(2).mean()
    nll = 0.5 * (logvar - 2 * math.log(s) + (y0 - mu).pow(2) / logvar.exp()).mean()
    out = {"eps": eps_loss, "reg": reg_loss, "nll": nll}
    if "lv_area" in batch:  # auxiliary: LV area curve, where the data knows it (the simulator)
        pred = model.area(f).float()
        area = batch["lv_area"]  # (B, 32) LV area / ED area, NaN where unknown
        if model.cfg.phase_free:  # relative to the window's largest area: no ED frame is assumed
            area = area / area.nan_to_num(-1.0).amax(dim=1, keepdim=True)
        target = (1 - area) / 0.2
        target = target.reshape(len(target), pred.shape[1], -1).mean(-1)  # pool to T' steps
        known = torch.isfinite(target)
        out["area"] = (pred - target.nan_to_num()).pow(2)[known].mean() if known.any() else pred.sum() * 0
    return out


def view_ranges(cfg: TrainConfig) -> ViewRanges | None:
    """The random views training draws from, or None when the config asks for none."""
    ranges = ViewRanges(cfg.view_zoom, cfg.view_aspect, cfg.view_rotate_deg, cfg.view_gain_db)
    return ranges if any(dataclasses.astuple(ranges)) else None


def _batch(
    arr: ClipArrays,
    idx: np.ndarray,
    gen: torch.Generator,
    augment: bool,
    device: str = "cpu",
    views: ViewRanges | None = None,
) -> dict[str, torch.Tensor]:
    clips = torch.from_numpy(arr.clips[idx])
    if augment and views is not None:  # depth, zoom, angle and gain differ between scanners, EF does not
        clips = random_views(clips, gen, views)
    elif augment:  # overall gain ±20 %: scanners differ in gain, EF does not
        g = 0.8 + 0.4 * torch.rand(len(idx), 1, 1, 1, generator=gen)
        clips = (clips.float() * g).clamp(0, 255).to(torch.uint8)
    batch = {
        "clips": clips,
        "ef": torch.from_numpy(arr.ef[idx]).float(),
        "demo": torch.from_numpy(arr.demo[idx]),
        "mask": torch.from_numpy(arr.mask[idx]),
        "lv_area": torch.from_numpy(arr.lv_area[idx]),
    }
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def sample_arrays(
    model: MCSDR, arr: ClipArrays, k: int = 40, batch: int = 16, seed: int = 0, desc: str | None = None
) -> dict[str, np.ndarray]:
    """Posterior samples (N, K) EF % for every clip, the three baselines' predictions and the
    out-of-distribution score, from one encoder pass per clip.

    Noises are drawn from ``seed`` per clip so results do not depend on the batch size.
    Returns keys ``samples``, ``reg`` (N,), ``gauss_mu`` (N,), ``gauss_sigma`` (N,) — the last three
    in the standardised target space y — ``gauss_samples`` (N, K) EF % from the Gaussian head,
    ``area_ef`` (N,) EF % by the area-length method from the LV-area head (:func:`area_length_ef`)
    and ``ood_score`` (N,) (NaN when the model has no fitted score).
    """
    model.eval()
    device = next(model.parameters()).device
    n = len(arr)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, k, generator=gen)
    out: dict[str, list[np.ndarray]] = {key: [] for key in ("y", "reg", "mu", "sd", "area", "ood")}
    rng = range(0, n, batch)
    for s in tqdm(rng, desc=desc, unit="batch", disable=desc is None):
        sl = np.arange(s, min(n, s + batch))
        b = _batch(arr, sl, gen, augment=False, device=str(device))
        maps = model.stage_maps(b["clips"])
        tok = model.tokens_from(maps[-1], b["demo"], b["mask"])
        kv = [x for blk in model.blocks for x in blk.keys_values(tok)]
        y = ddim_sample(model.denoiser(kv), noise[sl].to(device), model.schedule)
        reg, mu, logvar = model.baselines(tok)
        parts = (
            y,
            reg,
            mu,
            torch.exp(0.5 * logvar),
            model.area(maps[-1]),
            model.ood_score(model.embedding(maps), b["clips"]),
        )
        for key, value in zip(out, parts, strict=True):
            out[key].append(value.cpu().numpy())
    cat = {key: np.concatenate(v) for key, v in out.items()}
    tr = model.transform
    return {
        "samples": tr.inverse_np(cat["y"]),
        "reg": cat["reg"],
        "gauss_mu": cat["mu"],
        "gauss_sigma": cat["sd"],
        "gauss_samples": tr.inverse_np(cat["mu"][:, None] + cat["sd"][:, None] * noise.numpy()),
        "area_ef": area_length_ef(cat["area"]),
        "ood_score": cat["ood"].astype(np.float64),
    }


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


@dataclass
class TrainState:
    model: MCSDR
    ema: MCSDR
    opt: torch.optim.Optimizer
    step: int = 0
    history: list = field(default_factory=list)


def save_checkpoint(state: TrainState, path: Path, sections: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": state.model.state_dict(),
            "ema": state.ema.state_dict(),
            "opt": state.opt.state_dict(),
            "step": state.step,
            "history": state.history,
            "config": {k: to_mapping(v) for k, v in sections.items()},
            "transform": to_mapping(state.model.transform),
        },
        tmp,
    )
    tmp.replace(path)  # atomic: a crash mid-save never leaves a torn checkpoint


def train(sections: dict, resume: bool = True) -> Path:
    """Train from parsed config sections; returns the path of the saved artefact (.pt)."""
    dcfg: DataConfig = sections["data"]
    mcfg: ModelConfig = sections["model"]
    sched: DiffusionSchedule = sections["diffusion"]
    tcfg: TrainConfig = sections["train"]
    torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    t_start = time.time()
    train_arr, val_arr = load_data(dcfg)
    out = Path(tcfg.out)
    ckpt_path = out / "checkpoint.pt"
    ckpt = (
        torch.load(ckpt_path, weights_only=False, map_location="cpu")
        if resume and ckpt_path.exists()
        else None
    )
    transform = (
        from_mapping(TargetTransform, ckpt["transform"])
        if ckpt
        else TargetTransform.fit(train_arr.ef, mcfg.target_scale)
    )
    device = torch.device(tcfg.device)
    model = MCSDR(mcfg, transform, sched).to(device)
    ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    state = TrainState(model, ema, opt)
    views = view_ranges(tcfg)
    if ckpt:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        state.step, state.history = ckpt["step"], ckpt["history"]
    gen = torch.Generator().manual_seed(tcfg.seed * 1000 + state.step)
    rng = np.random.default_rng([tcfg.seed, state.step])
    n = len(train_arr)
    bar = tqdm(total=tcfg.steps, initial=state.step, desc="training", unit="step")
    running: dict[str, float] = {}
    while state.step < tcfg.steps:
        model.train()
        idx = rng.choice(n, tcfg.batch_size, replace=False)
        batch = _batch(train_arr, idx, gen, augment=True, views=views)
        batch["mask"] = drop_demographics(batch["mask"], mcfg, gen)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        for g in opt.param_groups:
            g["lr"] = _lr(state.step, tcfg)
        # Mixed precision on CUDA only (bf16 needs no loss scaling); the CPU trains in fp32.
        with torch.autocast("cuda", torch.bfloat16, enabled=tcfg.amp and device.type == "cuda"):
            parts = losses(model, batch, tcfg.noise_draws, gen)
        loss = parts["eps"] + tcfg.baseline_weight * (parts["reg"] + parts["nll"])
        loss = loss + tcfg.area_weight * parts.get("area", 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=False):
                pe.lerp_(pm, 1 - tcfg.ema)
            for be, bm in zip(ema.buffers(), model.buffers(), strict=False):
                be.copy_(bm)
        state.step += 1
        for k, v in parts.items():
            running[k] = 0.98 * running.get(k, v.item()) + 0.02 * v.item()
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()})
        if state.step % tcfg.eval_every == 0 or state.step == tcfg.steps:
            res = sample_arrays(ema, val_arr, k=20, seed=1)
            mae = float(np.abs(res["samples"].mean(1) - val_arr.ef).mean())
            state.history.append({"step": state.step, "val_mae": mae, **running})
            bar.write(f"step {state.step}: val MAE {mae:.2f} EF points (EMA, K=20)")
        if state.step % tcfg.checkpoint_every == 0 or state.step == tcfg.steps:
            save_checkpoint(state, ckpt_path, sections)
    bar.close()
    return save_artefact(state, sections, train_arr, val_arr, time.time() - t_start)


def save_artefact(
    state: TrainState, sections: dict, train_arr: ClipArrays, val_arr: ClipArrays, seconds: float
) -> Path:
    """Write <artefact>.pt (EMA weights with the fitted out-of-distribution statistics, ml/ood.py) and
    its sidecar JSON, with the dispersion recalibration fitted on the validation set
    (posterior.fit_dispersion_scale)."""
    from edge_agent.model.posterior import fit_dispersion_scale

    tcfg: TrainConfig = sections["train"]
    ood = _fit_ood(state.ema, tcfg, train_arr, val_arr)
    res = sample_arrays(state.ema, val_arr, k=40, seed=2, desc="validation posterior")
    dcfg: DataConfig = sections["data"]
    # Simulated validation beats cut like the live windower's (is_perturbed) form their own group:
    # the published interval must cover on those as on exact beats.
    live_cut = dcfg.format == "synthetic" and dcfg.perturbed_windows > 0
    groups = (
        np.array([is_perturbed(i, dcfg.perturbed_windows) for i in range(len(val_arr))]) if live_cut else None
    )
    scale = fit_dispersion_scale(res["samples"], val_arr.ef, min_picp90=tcfg.recal_min_picp90, groups=groups)
    path = Path(tcfg.artefact).with_suffix(".pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ema": state.ema.state_dict()}, path)
    sidecar = {
        "artefact": "mcsdr-checkpoint",
        "format_version": 1,
        "weights": path.name,
        "sha256": file_sha256(path),
        "model": to_mapping(sections["model"]),
        "diffusion": to_mapping(sections["diffusion"]),
        "target_transform": {"kind": "standardised_logit", **to_mapping(state.ema.transform)},
        "recalibration": {
            "kind": "logit_dispersion_scale",
            "scale": scale,
            "fit_on": "validation set",
            "rule": f"min CRPS subject to PICP90 >= {tcfg.recal_min_picp90}"
            + (" on exact and on live-cut validation windows alike" if live_cut else ""),
        },
        "ood": ood.sidecar(),
        "input": {
            "video": "uint8 (B, 32, 112, 112), one beat ED→ED via cycles.make_clip",
            "demographics": "float32 (B, 4) [age y, sex 1=M, weight kg, height cm]",
            "demo_mask": "bool (B, 4)",
        },
        "parameters": {
            "diffusion_path": state.ema.diffusion_parameters(),
            "total_with_baselines": sum(p.numel() for p in state.ema.parameters()),
        },
        "training": {
            "data": to_mapping(sections["data"]),
            "train": to_mapping(tcfg),
            "steps": state.step,
            "wall_seconds": round(seconds, 1),
            "history": state.history,
        },
        "metrics": {},
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    return path


def _fit_ood(model: MCSDR, tcfg: TrainConfig, train_arr: ClipArrays, val_arr: ClipArrays) -> OodFit:
    return fit_ood(
        model,
        train_arr,
        val_arr,
        view_ranges(tcfg),
        quantile=tcfg.ood_quantile,
        n_fit=tcfg.ood_n_fit,
        noise_quantile=tcfg.ood_noise_quantile,
    )


def refit_ood(sections: dict) -> Path:
    """Refit the out-of-distribution score of the trained artefact ``train.artefact`` on the config's
    data, without training: rewrites <artefact>.pt and its sidecar's ``ood`` and ``sha256``. All else
    stays, the recalibration included (the score does not touch the samples). Exported ONNX graphs
    carry the old score until re-exported."""
    from edge_agent.model.artefact import load_model

    tcfg: TrainConfig = sections["train"]
    path = Path(tcfg.artefact).with_suffix(".pt")
    model, side = load_model(path)
    train_arr, val_arr = load_data(sections["data"])
    side["ood"] = _fit_ood(model, tcfg, train_arr, val_arr).sidecar()
    torch.save({"ema": model.state_dict()}, path)
    side["sha256"] = file_sha256(path)
    path.with_suffix(".json").write_text(json.dumps(side, indent=2))
    return path


def parse_config(data: dict, source: str) -> dict:
    return load_sections(data, SECTIONS, source)
