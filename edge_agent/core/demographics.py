"""Patient demographics as the model and the wire carry them: four fields, each of which may be absent."""

from __future__ import annotations

import numpy as np

# Order of the demographic vector; the model's demographic tokens follow it.
DEMOGRAPHIC_FIELDS = ("age_years", "sex_male", "weight_kg", "height_cm")


def demographics_vector(
    age_years: float | None = None,
    sex_male: float | None = None,
    weight_kg: float | None = None,
    height_cm: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Demographics → ((4,) float32 values with 0 where absent, (4,) bool mask of present values)."""
    values = (age_years, sex_male, weight_kg, height_cm)
    vec = np.array([0.0 if v is None else v for v in values], dtype=np.float32)
    mask = np.array([v is not None for v in values], dtype=np.bool_)
    return vec, mask
