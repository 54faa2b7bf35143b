"""The MCSDR network, edge-sized: video + demographics → condition tokens → noise predictor.

Shapes and units used throughout:
  video (B, 32, 112, 112) uint8 — one beat, from :func:`edge_agent.core.clip.make_clip`;
  demographics (B, 4) float32 [age years, sex (1 male, 0 female), weight kg, height cm];
  demo_mask (B, 4) bool, True where the value is known;
  y — the LVEF target in the bounded, standardised space of :class:`TargetTransform` (unitless).

The paper (MCSDR, arXiv 2602.08202) conditions ε_θ(y_t, t, c) on a video feature c through a
"cross-attention" over a single condition token, which reduces to adding a projection of c. Here
the noisy-LVEF query attends over many spatio-temporal video tokens and one token per demographic
field, so attention weights actually choose where to look. The condition is encoded once per window
(:meth:`MCSDR.condition`); the K sampling trajectories are the batch dimension of :meth:`MCSDR.eps`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_agent.model.ddim import DiffusionSchedule, EpsFn, ddim_sample

N_DEMO = 4
# Fixed demographic scaling (adult ranges); the model sees (value − centre) / scale.
DEMO_CENTRE = (50.0, 0.5, 75.0, 165.0)
DEMO_SCALE = (25.0, 0.5, 20.0, 20.0)
# Input normalisation of uint8 pixels, inside the graph so every backend sees the same numbers.
PIXEL_MEAN, PIXEL_STD = 40.0, 50.0


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the default edge model (≈ 0.5 M parameters with these values)."""

    encoder: Literal["light", "r2plus1d_18"] = "light"
    width: int = 16  # channels after the stem; doubled per stage (16, 32, 64, 128)
    d_model: int = 64
    n_heads: int = 4
    n_blocks: int = 3
    demo_dropout: float = 0.25  # per-field modality dropout in training
    demo_drop_all: float = 0.3  # probability that a training clip has no demographics at all
    # Spread of the training labels in target units. A one-beat posterior is ~10× narrower than the
    # label distribution; at unit label spread it would be ~0.1 wide, and a 10-step DDIM cannot
    # resolve that (its last jump shrinks a Gaussian of std s by ≈ s/√(s² + 0.38²)). At 8 the
    # posterior is ~1 wide and survives 10 steps.
    target_scale: float = 8.0
    # Phase-free encoder (issue 12): live windows rarely start exactly at ED, and EF does not depend
    # on where a beat is cut. The motion channel is the change from the window's temporal mean (not
    # from its first frame), temporal convolutions wrap around the beat (a one-beat window is one
    # period), and video tokens carry no temporal position: a cyclic shift of the window shifts the
    # tokens, and attention over a set of tokens does not see the order.
    phase_free: bool = False
    # The LV-area curve of the auxiliary head, summarised (max, min, mean, std over the beat; all
    # unchanged by a cyclic shift) as one more condition token.
    area_token: bool = False


@dataclass(frozen=True)
class TargetTransform:
    """EF (%) ↔ y = (logit(EF/100) − mu) / sigma. Every y maps to an EF inside (0, 100)."""

    mu: float = 0.25
    sigma: float = 0.6

    def forward(self, ef: torch.Tensor) -> torch.Tensor:
        p = (ef / 100.0).clamp(1e-4, 1 - 1e-4)  # labels of exactly 0 or 100 % would be infinite
        return (torch.log(p) - torch.log1p(-p) - self.mu) / self.sigma

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return 100.0 * torch.sigmoid(y * self.sigma + self.mu)

    def inverse_np(self, y: np.ndarray) -> np.ndarray:
        """Samples y → EF (%) in float64, strictly inside (0, 100).

        The logit is held within ±30 (EF 1e-11 % from either bound) only so that float64 cannot
        round a wild sample from an untrained network to exactly 0 or 100; a trained model's samples
        never come near it.
        """
        z = np.clip(np.asarray(y, dtype=np.float64) * self.sigma + self.mu, -30.0, 30.0)
        return 100.0 / (1.0 + np.exp(-z))

    @classmethod
    def fit(cls, ef: np.ndarray, scale: float = 1.0) -> TargetTransform:
        """Centre logit(EF/100) over training labels ef (%) and give it standard deviation ``scale``."""
        p = np.clip(np.asarray(ef, dtype=np.float64) / 100, 1e-4, 1 - 1e-4)
        z = np.log(p / (1 - p))
        return cls(mu=float(z.mean()), sigma=float(z.std() + 1e-6) / scale)


def area_length_ef(area: np.ndarray) -> np.ndarray:
    """The classical single-plane estimate from the LV-area head's curve (N, T') → EF (N,) %.

    The head predicts (1 − A/A_ref)/0.2 per encoder time step, so the largest value gives the
    end-systolic area ratio A_ES/A_ED = 1 − 0.2·max. Area-length: V = 8A²/(3πL); with the long
    axis shortening as √A (a shape that scales uniformly), V ∝ A^1.5 and EF = 1 − (A_ES/A_ED)^1.5.
    Each time step pools 4 frames, which blunts the systolic peak: a baseline, not a calibrated
    estimate.
    """
    ratio = np.clip(1.0 - 0.2 * np.asarray(area, dtype=np.float64).max(axis=1), 0.0, 1.0)
    return 100.0 * (1.0 - ratio**1.5)


# The noise gate measures lag-1 correlation along t, y and x on every NOISE_STRIDE-th frame (and the
# frame after each, for t): a quarter of the window tells the noise as well as all of it, for a
# quarter of the cost (~1 ms of ONNX Runtime on one CPU thread for the whole window).
NOISE_LAGS = ("t", "y", "x")
NOISE_STRIDE = 4


def noise_share(video: torch.Tensor) -> torch.Tensor:
    """video (B, F, H, W) uint8 → (B, 3) noise share 1 − ρ₁ along t, y and x, ρ₁ the lag-1
    correlation of the pixels about their mean, on frames 0, 4, 8, … and (for t) the frames after
    them (blank window: ρ₁ = 0, share 1).

    Echo images are smooth over a speckle grain (≈ 2.5 px) and from frame to frame (ρ ≈ 0.97 at
    50 fps): white noise added to a share η of the variance lowers ρ₁ by the factor 1 − η, so the
    share grows with the noise whatever the heart looks like. Means are taken one axis at a time,
    so no partial sum exceeds the axis length in reduced precision (fp16 engines).
    """
    x = video.to(torch.float32) / 255.0
    now, nxt = x[:, 0::NOISE_STRIDE], x[:, 1::NOISE_STRIDE]
    mean = _mean3(now)[:, None, None, None]
    now, nxt = now - mean, nxt - mean
    h, w = now.shape[2] - 1, now.shape[3] - 1
    pairs = (
        (nxt, now),
        (now.narrow(2, 1, h), now.narrow(2, 0, h)),
        (now.narrow(3, 1, w), now.narrow(3, 0, w)),
    )
    shares = [1.0 - _mean3(a * b) / (torch.sqrt(_mean3(a * a) * _mean3(b * b)) + 1e-6) for a, b in pairs]
    return torch.stack(shares, dim=1)


def _mean3(x: torch.Tensor) -> torch.Tensor:
    """(B, F, H, W) → (B,) mean, one axis at a time."""
    return x.mean(dim=3).mean(dim=2).mean(dim=1)


def _norm(c: int) -> nn.GroupNorm:
    """GroupNorm, not BatchNorm: the agent infers one window at a time, and batch statistics from
    training batches of 16 do not transfer to it (measured: a toy model's error grew 7× in eval mode)."""
    return nn.GroupNorm(max(1, c // 8), c)


class Conv2Plus1D(nn.Module):
    """(2+1)D residual block: spatial k×k conv, then temporal 3-tap conv, with a 1×1×1 shortcut.

    ``cyclic``: the temporal conv pads by wrapping the beat around (last frame next to the first), so
    the block commutes with cyclic shifts of the window (exactly for shifts that are multiples of
    the temporal stride). The wrap is two slices and a concat, which every exporter and TensorRT run.
    """

    def __init__(self, cin: int, cout: int, stride_t: int, stride_s: int, cyclic: bool = False):
        super().__init__()
        self.cyclic = cyclic
        self.spatial = nn.Conv3d(cin, cout, (1, 3, 3), (1, stride_s, stride_s), (0, 1, 1), bias=False)
        self.norm1 = _norm(cout)
        pad_t = 0 if cyclic else 1
        self.temporal = nn.Conv3d(cout, cout, (3, 1, 1), (stride_t, 1, 1), (pad_t, 0, 0), bias=False)
        self.norm2 = _norm(cout)
        self.short = nn.Sequential(
            nn.Conv3d(cin, cout, 1, (stride_t, stride_s, stride_s), bias=False), _norm(cout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.spatial(x)))
        if self.cyclic:
            h = torch.cat([h[:, :, -1:], h, h[:, :, :1]], dim=2)
        return F.relu(self.norm2(self.temporal(h)) + self.short(x))


class LightVideoEncoder(nn.Module):
    """(B, 2, 32, 112, 112) float → the three stages' feature maps, the last (B, 8w, 8, 7, 7):
    a stride-4 stem then three (2+1)D stages."""

    def __init__(self, width: int, cyclic: bool = False):
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv3d(2, w, (1, 7, 7), (1, 4, 4), (0, 3, 3), bias=False), _norm(w), nn.ReLU()
        )
        self.stages = nn.Sequential(
            Conv2Plus1D(w, 2 * w, stride_t=1, stride_s=2, cyclic=cyclic),  # 32 × 14 × 14
            Conv2Plus1D(2 * w, 4 * w, stride_t=2, stride_s=1, cyclic=cyclic),  # 16 × 14 × 14
            Conv2Plus1D(4 * w, 8 * w, stride_t=2, stride_s=2, cyclic=cyclic),  # 8 × 7 × 7
        )
        self.out_channels = 8 * w
        self.embed_channels = 14 * w  # pooled stage outputs, for the out-of-distribution score
        self.grid = (8, 7, 7)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps, h = [], self.stem(x)
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        return maps


class R2Plus1DEncoder(nn.Module):
    """torchvision r2plus1d_18 trunk (random init; for users who train on a GPU) → (B, 512, 4, 7, 7)."""

    def __init__(self):
        super().__init__()
        try:  # optional dependency, imported on use
            from torchvision.models.video import r2plus1d_18
        except (ImportError, RuntimeError) as e:
            raise ImportError(
                "model.encoder: r2plus1d_18 needs torchvision matching your torch "
                f"(pip install torchvision); import failed: {e}. Use encoder: light otherwise."
            ) from e

        net = r2plus1d_18(weights=None)
        self.trunk = nn.Sequential(net.stem, net.layer1, net.layer2, net.layer3, net.layer4)
        self.out_channels = 512
        self.embed_channels = 512
        self.grid = (4, 7, 7)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.trunk(torch.cat([x, x[:, 1:2]], dim=1))]  # (frame, change, change) as RGB


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps t (...,) → (..., dim) (Vaswani et al.; DDPM §B)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[..., None] * freqs
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class CrossAttentionBlock(nn.Module):
    """Query (B, K, D) attends over condition tokens; keys/values are precomputed once per window."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm_q = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.norm_ff = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.time = nn.Linear(d, d)

    def keys_values(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, N, D) → k, v (B, H, N, D/H)."""
        n, d = int(tokens.shape[1]), int(tokens.shape[2])
        k, v = self.kv(tokens).reshape(-1, n, 2, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, h: torch.Tensor, temb: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """h (B, K, D) queries, temb (B or 1, K or 1, D), k, v from :meth:`keys_values` → (B, K, D).

        Shapes other than the batch are read as Python ints (constants in an exported graph: the
        unrolled sampler then carries no shape arithmetic), and the batch is left to reshape (-1).
        """
        kk, d = int(h.shape[1]), int(h.shape[2])
        h = h + self.time(temb)
        dh = d // self.n_heads
        q = self.q(self.norm_q(h)).reshape(-1, kk, self.n_heads, dh).transpose(1, 2)
        # The default scale, 1/√d_h, given as a constant: an exporter would compute it from q's shape.
        att = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(dh))  # (B, H, K, D/H)
        h = h + self.out(att.transpose(1, 2).reshape(-1, kk, d))
        return h + self.ff(self.norm_ff(h))


class MCSDR(nn.Module):
    """Conditional score network ε_θ(y_t, t | video, demographics) plus two baseline heads.

    Heads (sharing the encoder and the condition tokens, trained jointly):
      * ``eps``: the diffusion noise predictor (paper eq. for L_simple = ||ε − ε_θ(y_t, t, c)||²);
      * ``regress``: a deterministic regressor (MSE on y);
      * ``gauss``: a heteroscedastic Gaussian head (mean and log-variance of y, NLL).
    """

    def __init__(self, cfg: ModelConfig, transform: TargetTransform, schedule: DiffusionSchedule):
        super().__init__()
        self.cfg, self.transform, self.schedule = cfg, transform, schedule
        d = cfg.d_model
        light = cfg.encoder == "light"
        self.video = LightVideoEncoder(cfg.width, cyclic=cfg.phase_free) if light else R2Plus1DEncoder()
        gt, gh, gw = self.video.grid
        self.proj = nn.Linear(self.video.out_channels, d)
        # Temporal position only where windows are ED-aligned; a phase-free model must not know it.
        self.pos_t = None if cfg.phase_free else nn.Parameter(torch.randn(gt, 1, d) * 0.02)
        self.pos_s = nn.Parameter(torch.randn(1, gh * gw, d) * 0.02)
        self.global_tok = nn.Linear(self.video.out_channels, d)
        # Demographic tokens: value·w + b + type when known, a learned "missing" token when not.
        self.demo_w = nn.Parameter(torch.randn(N_DEMO, d) * 0.02)
        self.demo_b = nn.Parameter(torch.zeros(N_DEMO, d))
        self.demo_missing = nn.Parameter(torch.randn(N_DEMO, d) * 0.02)
        self.register_buffer("demo_centre", torch.tensor(DEMO_CENTRE), persistent=False)
        self.register_buffer("demo_scale", torch.tensor(DEMO_SCALE), persistent=False)
        ab = torch.tensor(schedule.alphas_cumprod, dtype=torch.float32)
        self.register_buffer("alphas_cumprod", ab, persistent=False)
        self.token_norm = nn.LayerNorm(d)
        # LV cavity area over the beat, per encoder time step (auxiliary loss on the simulator's
        # masks; the area-length baseline; with area_token, a condition token).
        self.area_head = nn.Linear(self.video.out_channels, 1)
        self.area_tok = nn.Linear(4, d) if cfg.area_token else None
        # Out-of-distribution statistics of the pooled encoder embedding (fitted after training,
        # :func:`fit_ood`): a Mahalanobis distance d² = (e − m)ᵀ P (e − m) (Lee et al. 2018),
        # divided by its in-distribution threshold, so the score is 1 at the threshold. NaN until
        # fitted (artefacts from before the score carry none).
        e = self.video.embed_channels
        self.register_buffer("ood_mean", torch.zeros(e))
        self.register_buffer("ood_precision", torch.zeros(e, e))
        self.register_buffer("ood_inv_threshold", torch.tensor(float("nan")))
        # Derived, not saved: W with W Wᵀ = P / threshold (Cholesky), so the graph computes the
        # score as ‖(e − m) W‖², a sum of squares of O(1) numbers: no fp16 overflow in products
        # of a precision matrix's large entries, and never negative.
        self.register_buffer("ood_whiten", torch.full((e, e), float("nan")), persistent=False)
        # Second part of the score, on the input itself: a noise gate. 1/threshold of the window's
        # noise share (1 − lag-1 correlation along t, y, x); zeros (gate off) until fitted.
        self.register_buffer("ood_noise_inv_threshold", torch.zeros(len(NOISE_LAGS)))
        # Noise predictor.
        self.y_in = nn.Sequential(nn.Linear(1, d), nn.GELU(), nn.Linear(d, d))
        self.t_in = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList([CrossAttentionBlock(d, cfg.n_heads) for _ in range(cfg.n_blocks)])
        self.eps_out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))
        # Baselines: one learned query through one cross-attention block each.
        self.base_query = nn.Parameter(torch.randn(2, 1, d) * 0.02)
        self.base_blocks = nn.ModuleList([CrossAttentionBlock(d, cfg.n_heads) for _ in range(2)])
        self.regress_out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))
        self.gauss_out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2))

    # ----- condition -----------------------------------------------------------------------------
    def stage_maps(self, video: torch.Tensor) -> list[torch.Tensor]:
        """video (B, 32, 112, 112) uint8 → each encoder stage's feature map, the last (B, C, T', H', W').

        Two input channels: the frame, and its change from a reference — the first frame (an
        ED-aligned window starts at ED, so it is where the walls moved in) or, phase-free, the
        window's temporal mean (the same image wherever the beat was cut).
        """
        x = (video.to(torch.float32)[:, None] - PIXEL_MEAN) / PIXEL_STD
        ref = x.mean(dim=2, keepdim=True) if self.cfg.phase_free else x[:, :, :1]
        return self.video(torch.cat([x, x - ref], dim=1))

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, 32, 112, 112) uint8 → the last stage's feature map (B, C, T', H', W')."""
        return self.stage_maps(video)[-1]

    def area(self, f: torch.Tensor) -> torch.Tensor:
        """LV area curve from features (B, C, T', H', W') → (B, T') of (1 − area/reference)/0.2, the
        reference being the ED area (ED-aligned model) or the window's largest area (phase-free)."""
        return self.area_head(f.mean(dim=(3, 4)).transpose(1, 2))[..., 0]

    @staticmethod
    def embedding(maps: list[torch.Tensor]) -> torch.Tensor:
        """Stage feature maps → (B, E): every stage's channels averaged over time and space (a shift of
        the window's phase leaves it unchanged); the out-of-distribution score's input."""
        return torch.cat([m.mean(dim=(2, 3, 4)) for m in maps], dim=1)

    def ood_score(self, emb: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """Embedding (B, E) and its video (B, 32, 112, 112) uint8 → (B,) out-of-distribution score
        (≤ 1: familiar): the larger of the Mahalanobis d² over its threshold and the noise gate's
        largest noise share over its threshold (:func:`noise_share`)."""
        d2 = ((emb - self.ood_mean) @ self.ood_whiten).pow(2).sum(dim=1)
        gate = (noise_share(video) * self.ood_noise_inv_threshold).amax(dim=1)
        return torch.maximum(d2, gate)

    @torch.no_grad()
    def refresh_ood(self) -> None:
        """Derive the whitening of the score from its saved statistics (after loading or fitting)."""
        inv = float(self.ood_inv_threshold)
        if not (np.isfinite(inv) and inv > 0 and self.ood_precision.abs().sum() > 0):
            self.ood_whiten.fill_(float("nan"))  # not fitted: every score is unknown
            return
        chol = torch.linalg.cholesky(self.ood_precision.double())
        self.ood_whiten.copy_((chol * inv**0.5).to(self.ood_whiten.dtype))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """nn.Module's, then the derived whitening of the loaded OOD statistics."""
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.refresh_ood()
        return out

    def tokens(self, video: torch.Tensor, demo: torch.Tensor, demo_mask: torch.Tensor) -> torch.Tensor:
        """video (B, 32, 112, 112) uint8, demo (B, 4), demo_mask (B, 4) bool → tokens (B, N, D)."""
        return self.tokens_from(self.features(video), demo, demo_mask)

    def tokens_from(self, f: torch.Tensor, demo: torch.Tensor, demo_mask: torch.Tensor) -> torch.Tensor:
        """Feature map (B, C, T', H', W') + demographics → tokens (B, 1 + T'H'W' [+ 1] + 4, D)."""
        b = f.shape[0]
        grid = f.flatten(3).permute(0, 2, 3, 1)  # (B, T', H'W', C)
        vid = self.proj(grid) + self.pos_s
        if self.pos_t is not None:
            vid = vid + self.pos_t
        vid = vid.reshape(b, -1, vid.shape[-1])
        glob = [self.global_tok(f.mean(dim=(2, 3, 4)))[:, None]]
        if self.area_tok is not None:
            # Detached: the area head learns the cavity from the masks alone, not from the EF loss.
            a = self.area(f).detach()
            stats = torch.stack([a.amax(1), a.amin(1), a.mean(1), a.std(1)], dim=1)
            glob.append(self.area_tok(stats)[:, None])
        z = ((demo - self.demo_centre) / self.demo_scale)[..., None]  # (B, 4, 1)
        known = demo_mask.to(z.dtype)[..., None]
        dem = known * (z * self.demo_w + self.demo_b) + (1 - known) * self.demo_missing
        return self.token_norm(torch.cat([*glob, vid, dem], dim=1))

    def condition(
        self, video: torch.Tensor, demo: torch.Tensor, demo_mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Encode one batch of windows once → (per-block keys and values flattened as [k0, v0, k1, v1, …],
        out-of-distribution score (B,))."""
        maps = self.stage_maps(video)
        tok = self.tokens_from(maps[-1], demo, demo_mask)
        kv = [x for blk in self.blocks for x in blk.keys_values(tok)]
        return kv, self.ood_score(self.embedding(maps), video)

    # ----- diffusion head ------------------------------------------------------------------------
    def eps(self, y_t: torch.Tensor, t: torch.Tensor, kv: list[torch.Tensor]) -> torch.Tensor:
        """Noise prediction. y_t (B, K) noisy targets, t (B, K) int64 timesteps (or any shape that
        broadcasts to it: (1, 1) for one shared step) → ε (B, K)."""
        # Input preconditioning (as EDM's c_in): divide y_t by its expected std √(ᾱ_t S² + 1 − ᾱ_t)
        # so the network sees unit-scale inputs at every t whatever the target scale S.
        ab = self.alphas_cumprod[t]
        c_in = torch.rsqrt(ab * self.cfg.target_scale**2 + 1 - ab)
        h = self.y_in((y_t * c_in)[..., None])
        temb = self.t_in(timestep_embedding(t, self.cfg.d_model))
        for i, blk in enumerate(self.blocks):
            h = blk(h, temb, kv[2 * i], kv[2 * i + 1])
        return self.eps_out(h)[..., 0]

    def denoiser(self, kv: list[torch.Tensor]) -> EpsFn:
        """ε_θ closed over one batch's condition, for :func:`ddim_sample`: (y_t (B, K), t (1,)) → ε (B, K).

        The sampler passes the step's one timestep: its embedding is computed once, not per row.
        """
        return lambda y, t: self.eps(y, t[:, None], kv)

    def posterior(
        self,
        video: torch.Tensor,
        demo: torch.Tensor,
        demo_mask: torch.Tensor,
        noise: torch.Tensor,
        num_inference_steps: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic DDIM (eta = 0) from starting noises y_T = noise (B, K) → samples y_0 (B, K),
        and the windows' out-of-distribution scores (B,).

        The condition is encoded once; the K trajectories run as the batch; the sampler owns the
        update y ← a_i·y + b_i·ε_θ(y, t_i) (DDIM eq. 12, :func:`ddim_sample`).
        """
        kv, ood = self.condition(video, demo, demo_mask)
        return ddim_sample(self.denoiser(kv), noise, self.schedule, num_inference_steps), ood

    def sample(
        self,
        video: torch.Tensor,
        demo: torch.Tensor,
        demo_mask: torch.Tensor,
        noise: torch.Tensor,
        num_inference_steps: int | None = None,
    ) -> torch.Tensor:
        """The samples y_0 (B, K) of :meth:`posterior`, without the scores."""
        return self.posterior(video, demo, demo_mask, noise, num_inference_steps)[0]

    # ----- baselines -----------------------------------------------------------------------------
    def baselines(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens (B, N, D) → regression mean (B,), Gaussian mean (B,), Gaussian log-variance (B,)."""
        b = tokens.shape[0]
        outs = []
        for j, blk in enumerate(self.base_blocks):
            k, v = blk.keys_values(tokens)
            q = self.base_query[j].expand(b, 1, -1)
            outs.append(blk(q, torch.zeros_like(q), k, v)[:, 0])
        # Heads work at unit scale; outputs are returned in target units (× S).
        s = self.cfg.target_scale
        reg = self.regress_out(outs[0])[:, 0] * s
        g = self.gauss_out(outs[1])
        return reg, g[:, 0] * s, g[:, 1].clamp(-12, 6) + 2 * math.log(s)

    def diffusion_parameters(self) -> int:
        """Parameters on the diffusion path (encoder, tokens, noise predictor), without baseline heads."""
        skip = ("base_", "regress_out", "gauss_out") + (() if self.cfg.area_token else ("area_head",))
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith(skip))
