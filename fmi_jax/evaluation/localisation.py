"""Localisation: does a map put its relevance on a region known to matter?

Every metric compares each example's map ``a`` (``P`` features, highest first) with a
boolean ground-truth mask ``s`` of the region (a segmentation, a bounding box, the
pixels a synthetic task planted), and returns one value per example, NaN where the
mask is empty (and, for the ROC AUC, full). Maps are taken as given: pass ``abs``
or positive maps where the metric should ignore the sign, as the papers do. Images
``(N, H, W, C)`` with per-pixel masks ``(N, H, W)`` are summed over channels first, as
the faithfulness metrics do; otherwise maps and masks have the same shape.

* Pointing game (Zhang, Bargal, Lin, Brandt, Shen & Sclaroff, "Top-down neural
  attention by excitation backprop", IJCV 2018, arXiv:1608.00507): 1 if the map's
  maximum lies in the mask, else 0. When several features share the maximum, one of
  them in the mask is a hit (Quantus' rule). The paper also counts a hit within 15
  pixels of the region; here the mask is the region (dilate it for a tolerance).
* Relevance mass accuracy (Arras, Osman & Samek, "CLEVR-XAI: A benchmark dataset for
  the ground truth evaluation of neural network explanations", Information Fusion
  2022, arXiv:2003.07258): ``sum_{i in s} a_i / sum_i a_i``, the share of the map's
  mass inside the mask; with positive relevance only it is Kohlbrenner et al.'s
  attribution localisation (2020).
* Relevance rank accuracy (Arras et al. 2022): with ``K = |s|``, the share of the
  ``K`` highest-ranked features that lie in the mask.
* Top-k intersection (Theiner, Müller-Budack & Ewerth, "Interpretable semantic photo
  geolocation", WACV 2022, arXiv:2104.14995): the share of the ``k`` highest-ranked
  features that lie in the mask.
* ROC AUC of the map as a score for the mask (Fawcett 2006; Quantus' ``AUC``): the
  probability that a random feature inside the mask outranks a random one outside,
  ties counting one half (the Mann-Whitney statistic, equal to the trapezoid area
  under the ROC curve); 0.5 for a map unrelated to the mask.

Ranks break ties by feature index, lower first (as the faithfulness curves), except
for the pointing game and the AUC, which treat ties symmetrically as above. All
functions are jit-compatible (``k`` static).
"""

from __future__ import annotations

import operator
from typing import Any

import jax.numpy as jnp

from fmi_jax.attribution.core import Array, check_finite
from fmi_jax.evaluation.agreement import average_ranks

__all__ = [
    "localisation_auc",
    "pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "top_k_intersection",
]


def _rows(attributions: Any, masks: Any) -> tuple[Array, Array]:
    """``(N, P)`` float32 maps and ``(N, P)`` boolean masks."""
    a = jnp.asarray(attributions, jnp.float32)
    s = jnp.asarray(masks)
    if a.ndim == 4 and s.shape == a.shape[:-1]:
        a = a.sum(-1)
    if a.ndim < 2 or s.shape != a.shape:
        raise ValueError(
            f"masks of shape {s.shape} do not fit maps of shape {a.shape}: give one mask "
            "per map of the same shape, or per pixel (N, H, W) for images (N, H, W, C)"
        )
    check_finite(a, "attributions")
    n = a.shape[0]
    return a.reshape(n, -1), s.reshape(n, -1).astype(bool)


def _nan_where_empty(values: Array, s: Array) -> Array:
    return jnp.where(s.any(1), values, jnp.nan)


def _top_ranked(a: Array, count: Array) -> Array:
    """Boolean ``(N, P)``: the ``count[i]`` highest-ranked features of row ``i`` (ties by
    index, lower first)."""
    n, p = a.shape
    order = jnp.argsort(-a, axis=1, stable=True)
    rank = jnp.zeros((n, p), jnp.int32).at[jnp.arange(n)[:, None], order].set(jnp.arange(p))
    return rank < count[:, None]


def pointing_game(attributions: Array, masks: Array) -> Array:
    """1.0 where the map's maximum lies in the mask, 0.0 where not, NaN for an empty
    mask; shape ``(N,)`` (module docstring)."""
    a, s = _rows(attributions, masks)
    at_max = a == a.max(1, keepdims=True)
    return _nan_where_empty(jnp.any(at_max & s, axis=1).astype(jnp.float32), s)


def relevance_mass_accuracy(attributions: Array, masks: Array) -> Array:
    """``sum_{i in s} a_i / sum_i a_i`` per example, shape ``(N,)``; NaN for an empty mask
    or a map that sums to 0 (module docstring)."""
    a, s = _rows(attributions, masks)
    total = a.sum(1)
    inside = jnp.where(s, a, 0.0).sum(1)
    value = jnp.where(total != 0, inside / jnp.where(total != 0, total, 1.0), jnp.nan)
    return _nan_where_empty(value, s)


def relevance_rank_accuracy(attributions: Array, masks: Array) -> Array:
    """Share of the ``K = |s|`` highest-ranked features that lie in the mask, per example,
    shape ``(N,)``; NaN for an empty mask (module docstring)."""
    a, s = _rows(attributions, masks)
    size = s.sum(1)
    hits = (_top_ranked(a, size) & s).sum(1)
    return _nan_where_empty(hits / jnp.maximum(size, 1), s)


def top_k_intersection(attributions: Array, masks: Array, *, k: int) -> Array:
    """Share of the ``k`` highest-ranked features that lie in the mask, per example,
    shape ``(N,)``; NaN for an empty mask (module docstring)."""
    a, s = _rows(attributions, masks)
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be an integer, got {k!r}") from None
    if not 1 <= k <= a.shape[1]:
        raise ValueError(f"k must be in [1, {a.shape[1]}] (the features per map), got {k}")
    top = _top_ranked(a, jnp.full(a.shape[0], k, jnp.int32))
    return _nan_where_empty((top & s).sum(1) / k, s)


def localisation_auc(attributions: Array, masks: Array) -> Array:
    """ROC AUC of the map as a score for the mask per example, shape ``(N,)``: the
    Mann-Whitney statistic with average ranks for ties; NaN when the mask is empty or
    covers every feature (module docstring)."""
    a, s = _rows(attributions, masks)
    ranks = average_ranks(a) + 1.0  # 1-based, ties share their average
    positives = s.sum(1).astype(jnp.float32)
    negatives = s.shape[1] - positives
    u = jnp.where(s, ranks, 0.0).sum(1) - positives * (positives + 1) / 2
    defined = (positives > 0) & (negatives > 0)
    return jnp.where(defined, u / jnp.where(defined, positives * negatives, 1.0), jnp.nan)
