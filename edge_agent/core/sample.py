"""One labelled beat: the sample every dataset loader and the simulator return."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.core.clip import CLIP_FRAMES, CLIP_SIZE
from edge_agent.core.demographics import DEMOGRAPHIC_FIELDS

QUALITY_LEVELS = ("good", "medium", "poor")


class DatasetError(ValueError):
    """A dataset file is missing or wrong; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class ClipSample:
    """One labelled beat: the unit every loader returns.

    clip: (32, 112, 112) uint8, one beat ED→ED made by :func:`edge_agent.core.clip.make_clip`.
    ef: LVEF in percent, 0–100.
    demographics: (4,) float32 ``[age years, sex (1 male, 0 female), weight kg, height cm]``
        in :data:`DEMOGRAPHIC_FIELDS` order, 0 where absent.
    demo_mask: (4,) bool, True where the matching demographic is present.
    quality: ``"good"``/``"medium"``/``"poor"`` where the dataset grades its images, else None.
    name: the sample's id, unique within its dataset (EchoNet file stem, CAMUS ``patient0001_4CH``).
    lv_area: optional (32,) float32 LV cavity area at each clip frame relative to the first (ED)
        frame — the simulator knows it; real datasets trace only ED and ES, so they leave it None.
    beat_how: how the beat was chosen: a :func:`edge_agent.core.clip.beat_bounds` rule
        (``"ed_period"``, ``"period"``, ``"ed_fixed"``, ...) or a dataset rule (``"camus_mirrored"``).
    """

    clip: np.ndarray
    ef: float
    demographics: np.ndarray
    demo_mask: np.ndarray
    quality: str | None
    name: str
    beat_how: str
    lv_area: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Catch a malformed sample where it is made, not deep inside a training batch.
        want = (CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE)
        if self.clip.shape != want or self.clip.dtype != np.uint8:
            raise DatasetError(
                f"{self.name}: clip is {self.clip.dtype}{self.clip.shape}, expected uint8{want}; "
                "build clips with edge_agent.core.clip.make_clip"
            )
        n = len(DEMOGRAPHIC_FIELDS)
        if self.demographics.shape != (n,) or self.demographics.dtype != np.float32:
            raise DatasetError(f"{self.name}: demographics must be float32 ({n},), see DEMOGRAPHIC_FIELDS")
        if self.demo_mask.shape != (n,) or self.demo_mask.dtype != np.bool_:
            raise DatasetError(f"{self.name}: demo_mask must be bool ({n},)")
        if self.quality is not None and self.quality not in QUALITY_LEVELS:
            raise DatasetError(f"{self.name}: quality {self.quality!r} is not one of {QUALITY_LEVELS}")
