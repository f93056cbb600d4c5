"""Choosing which examples to explain."""

from __future__ import annotations

import numpy as np
from absl import logging

__all__ = ["high_confidence_correct"]


def high_confidence_correct(
    probabilities: np.ndarray,
    labels: np.ndarray,
    *,
    per_class: int,
    threshold: float = 0.8,
    seed: int = 0,
) -> np.ndarray:
    """Indices of correctly classified examples with confidence > threshold, balanced by class.

    For each class (in class order), up to `per_class` examples are drawn at
    random (numpy Generator seeded with `seed`) among those the model predicts
    correctly with probability above `threshold`. Random rather than most-confident
    so the selection is representative of confident predictions, not only the
    easiest ones. A class with too few qualifying examples gives what it has, and
    a warning says so.

    Returns sorted-by-class int64 indices into `labels`.
    """
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or len(probabilities) != len(labels):
        raise ValueError(
            f"probabilities must be (N, classes) for N={len(labels)} labels, "
            f"got {probabilities.shape}"
        )
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    preds = probabilities.argmax(-1)
    conf = probabilities.max(-1)
    ok = (preds == labels) & (conf > threshold)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(probabilities.shape[1]):
        pool = np.flatnonzero(ok & (labels == c))
        if len(pool) < per_class:
            logging.warning(
                "class %d: only %d correct predictions above %.2f confidence (wanted %d)",
                c,
                len(pool),
                threshold,
                per_class,
            )
        take = (
            rng.choice(pool, size=min(per_class, len(pool)), replace=False) if len(pool) else pool
        )
        chosen.append(np.sort(take))
    return np.concatenate(chosen).astype(np.int64)
