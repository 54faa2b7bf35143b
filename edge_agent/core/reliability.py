"""When an estimate may be shown as a confident interval: the one rule the hub, the monitor and the
evaluation apply to the model's out-of-distribution score (``edge_agent.ml.ood``).

The score is a Mahalanobis distance divided by its in-distribution threshold, so 1 is the edge of
familiar inputs whatever the model: at most ``THRESHOLD`` is reliable.
"""

from __future__ import annotations

THRESHOLD = 1.0


def is_reliable(ood_score: float | None) -> bool:
    """Whether inputs with this out-of-distribution score are familiar (score ≤ 1), or the model
    carries no score (None: nothing to judge by, the estimate is shown as before)."""
    return ood_score is None or ood_score <= THRESHOLD
