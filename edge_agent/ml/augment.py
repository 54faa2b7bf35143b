"""View changes about the sector apex: the zoom, aspect, rotation and gain real acquisitions differ by.

One implementation serves training (random views per clip, :func:`random_views`) and the robustness
check (fixed views, :mod:`edge_agent.ml.robustness`). Clips are (B, F, H, W) uint8 with the sector
apex at the top centre, as every clip the agent cuts; EF does not change with the view, so the
label stays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The display maps this many dB of echo amplitude onto 0–255 (the simulator's default dynamic range),
# so a gain of g dB shifts the log-compressed image by 255·g/55 grey levels.
DISPLAY_DYNAMIC_RANGE_DB = 55.0


@dataclass(frozen=True)
class ViewRanges:
    """Half-widths of the random views: zoom and aspect as factors (log-uniform in [1/(1+r), 1+r]),
    rotation in degrees (uniform ±), gain in dB (uniform ±)."""

    zoom: float = 0.3
    aspect: float = 0.12
    rotate_deg: float = 12.0
    gain_db: float = 6.0


def views_about_apex(
    clips: torch.Tensor,
    zoom: torch.Tensor,
    aspect: torch.Tensor,
    rotate_deg: torch.Tensor,
    gain_db: torch.Tensor,
) -> torch.Tensor:
    """Clips (B, F, H, W) uint8 → the same clips seen with another view, (B, F, H, W) uint8.

    Per clip (each parameter (B,)): the image is scaled by ``zoom`` about the apex (top centre),
    stretched by ``aspect`` sideways, rotated by ``rotate_deg`` (positive: counter-clockwise on
    screen) and its displayed brightness inside the sector shifted by ``gain_db``; what comes from
    outside the frame is black, and black stays black.
    """
    h, w = clips.shape[-2:]
    x = clips.float()
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    cx = (w - 1) / 2.0
    dx, dy = xs - cx, ys  # destination pixel relative to the apex (H, W)
    theta = torch.deg2rad(rotate_deg.float())[:, None, None]
    cos, sin = torch.cos(theta), torch.sin(theta)
    # Inverse map: undo the rotation, then the scale, to find where each output pixel comes from.
    # On screen (y down) a counter-clockwise rotation by θ maps (x, y) to
    # (x cos θ + y sin θ, −x sin θ + y cos θ); its inverse is the transpose.
    ux = cos * dx - sin * dy
    uy = sin * dx + cos * dy
    sx = ux / (zoom.float() * aspect.float())[:, None, None] + cx
    sy = uy / zoom.float()[:, None, None]
    grid = torch.stack([2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1], dim=-1)  # (B, H, W, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    inside = out > 0.5
    out = out + (255.0 * gain_db.float() / DISPLAY_DYNAMIC_RANGE_DB)[:, None, None, None] * inside
    return out.round().clamp(0, 255).to(torch.uint8)


def random_views(clips: torch.Tensor, gen: torch.Generator, ranges: ViewRanges) -> torch.Tensor:
    """Each clip of (B, F, H, W) uint8 seen with a random view drawn from ``ranges`` (one per clip)."""
    b = clips.shape[0]

    def uniform(half: float) -> torch.Tensor:
        return (2 * torch.rand(b, generator=gen) - 1) * half

    zoom = torch.exp(uniform(math.log1p(ranges.zoom)))
    aspect = torch.exp(uniform(math.log1p(ranges.aspect)))
    return views_about_apex(clips, zoom, aspect, uniform(ranges.rotate_deg), uniform(ranges.gain_db))
