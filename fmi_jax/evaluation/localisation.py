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
  them in the mask is a hit (Quantus' rule), unless all do: a constant map is NaN
  here, where Quantus counts it a hit (below). The paper also counts a hit within 15
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

* Focus (Arias-Duart, Parés, Garcia-Gasulla & Giménez-Ábalos, "Focus! Rating XAI
  methods and finding biases", FUZZ-IEEE 2022, arXiv:2109.15035; Quantus' ``Focus``):
  on a mosaic of four images, two of the explained class and two of others
  (:func:`mosaics`), the share of the map's positive relevance that lies on the two
  tiles of the explained class, ``sum_{i in tiles} max(a_i, 0) / sum_i max(a_i, 0)``:
  relevance mass accuracy of the positive map against the tiles. 0.5 for a map that
  spreads its relevance evenly, 1 for one that finds only the class.

Ranks break ties by feature index, lower first (as the faithfulness curves), except
for the pointing game and the AUC, which treat ties symmetrically as above. A constant
map (a dead layer's, an all-zero one) ranks nothing and points nowhere: the pointing
game, rank accuracy and top-k intersection give it NaN, where ties would make it a hit
for any mask (the pointing game's rule above, and Quantus') or one decided by where the
object lies (ranks by index); the AUC gives it 0.5, relevance mass accuracy NaN for a
map summing to 0. Masks must be booleans or 0/1: a resized soft mask is refused rather
than read as every pixel non-zero (checked on concrete masks, outside ``jax.jit``). All
functions but :func:`mosaics` (which checks its labels on the host) are jit-compatible
(``k`` static).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.attribution.core import Array, as_count, check_finite, flat_rows, require_key
from fmi_jax.evaluation.agreement import average_ranks

__all__ = [
    "focus",
    "localisation_auc",
    "mosaics",
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
    if s.dtype != bool and not isinstance(s, jax.core.Tracer):  # concrete masks only
        values = np.asarray(s)
        if not ((values == 0) | (values == 1)).all():
            raise ValueError(
                f"masks must be booleans or 0/1, got {s.dtype} values from {values.min()} "
                f"to {values.max()}: threshold a resized or soft mask first (masks > 0.5); "
                "are the maps and masks swapped?"
            )
    return flat_rows(a, "attributions"), flat_rows(s, "masks").astype(bool)


def _nan_where_empty(values: Array, s: Array) -> Array:
    return jnp.where(s.any(1), values, jnp.nan)


def _nan_where_constant(values: Array, a: Array) -> Array:
    """NaN for a map that is the same everywhere: it ranks no feature above another,
    so it has no maximum to point with and no top features to count."""
    return jnp.where(a.max(1) > a.min(1), values, jnp.nan)


def _top_ranked(a: Array, count: Array) -> Array:
    """Boolean ``(N, P)``: the ``count[i]`` highest-ranked features of row ``i`` (ties by
    index, lower first)."""
    n, p = a.shape
    order = jnp.argsort(-a, axis=1, stable=True)
    rank = jnp.zeros((n, p), jnp.int32).at[jnp.arange(n)[:, None], order].set(jnp.arange(p))
    return rank < count[:, None]


def pointing_game(attributions: Array, masks: Array) -> Array:
    """1.0 where the map's maximum lies in the mask, 0.0 where not, NaN for an empty
    mask or a constant map; shape ``(N,)`` (module docstring)."""
    a, s = _rows(attributions, masks)
    at_max = a == a.max(1, keepdims=True)
    hit = jnp.any(at_max & s, axis=1).astype(jnp.float32)
    return _nan_where_constant(_nan_where_empty(hit, s), a)


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
    shape ``(N,)``; NaN for an empty mask or a constant map (module docstring)."""
    a, s = _rows(attributions, masks)
    size = s.sum(1)
    hits = (_top_ranked(a, size) & s).sum(1)
    return _nan_where_constant(_nan_where_empty(hits / jnp.maximum(size, 1), s), a)


def top_k_intersection(attributions: Array, masks: Array, *, k: int) -> Array:
    """Share of the ``k`` highest-ranked features that lie in the mask, per example,
    shape ``(N,)``; NaN for an empty mask or a constant map (module docstring)."""
    a, s = _rows(attributions, masks)
    k = as_count(k, "k", maximum=a.shape[1])
    top = _top_ranked(a, jnp.full(a.shape[0], k, jnp.int32))
    return _nan_where_constant(_nan_where_empty((top & s).sum(1) / k, s), a)


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


def _quadrant_masks(quadrants: Any, height: int, width: int) -> Array:
    """``(N, H, W)`` masks of the marked tiles, in the order top-left, top-right,
    bottom-left, bottom-right; the top and left tiles are ``H // 2`` and ``W // 2``."""
    q = jnp.asarray(quadrants)
    concrete = not isinstance(q, jax.core.Tracer)
    if (
        q.ndim != 2
        or q.shape[1] != 4
        or not (q.dtype == bool or jnp.issubdtype(q.dtype, jnp.integer))
        or (concrete and q.dtype != bool and not bool(jnp.all((q == 0) | (q == 1))))
    ):
        raise ValueError(
            f"quadrants must be (N, 4) booleans or 0/1 integers (top-left, top-right, "
            f"bottom-left, bottom-right: the tiles of the explained class), got "
            f"{q.dtype} of shape {q.shape}"
            + (f" with values {np.unique(q).tolist()}" if concrete and q.dtype != bool else "")
        )
    bottom = jnp.arange(height)[:, None] >= height // 2
    right = jnp.arange(width)[None, :] >= width // 2
    tile = 2 * bottom.astype(jnp.int32) + right.astype(jnp.int32)  # (H, W) in 0..3
    return q.astype(bool)[:, tile]


def focus(attributions: Array, quadrants: Array) -> Array:
    """Focus (Arias-Duart et al. 2022) of maps of 2 x 2 mosaics, shape ``(N,)``: the
    share of each map's positive relevance on the tiles marked in ``quadrants``.

    Args:
      attributions: maps of the mosaics, ``(N, H, W)`` or ``(N, H, W, C)`` (the
        positive part of every value counts).
      quadrants: ``(N, 4)`` booleans, True for the tiles of the explained class, in the
        order top-left, top-right, bottom-left, bottom-right (the third output of
        :func:`mosaics`; Quantus' ``custom_batch``). The top and left tiles are
        ``H // 2`` rows and ``W // 2`` columns.

    Returns:
      float32 ``(N,)`` in ``[0, 1]``; NaN where a map has no positive relevance (Quantus
      gives 0 there) or no tile is marked.
    """
    a = jnp.asarray(attributions, jnp.float32)
    if a.ndim not in (3, 4):
        raise ValueError(f"focus needs maps of images, (N, H, W) or (N, H, W, C); got {a.shape}")
    masks = _quadrant_masks(quadrants, a.shape[1], a.shape[2])
    if masks.shape[0] != a.shape[0]:
        raise ValueError(f"{masks.shape[0]} rows of quadrants for {a.shape[0]} maps")
    return relevance_mass_accuracy(jnp.maximum(a, 0.0), masks)


def mosaics(
    images: Array, labels: Array, key: Array, *, count: int, downsample: bool = True
) -> tuple[Array, Array, Array]:
    """2 x 2 mosaics for :func:`focus`: two images of one class and two of others.

    Mosaic ``m`` draws from ``fold_in(key, m)``: its class ``c`` uniformly among the
    classes with at least two images and at least two images of other classes, two
    different images of ``c``, two different images of other classes (any of them),
    and a random placement of the four tiles. The labels are checked on the host, so
    this function does not run under ``jax.jit``.

    Args:
      images: ``(N, H, W, C)``.
      labels: int ``(N,)``.
      key: a PRNG key.
      count: how many mosaics.
      downsample: halve every tile by averaging 2 x 2 blocks (H and W even), so that a
        mosaic has the size of one image, for models that only take that size; with
        ``False`` mosaics are ``(2H, 2W, C)``, as in the paper (models with global
        pooling).

    Returns:
      ``(mosaics, target, quadrants)``: float32 ``(count, H', W', C)``, the class of
      each mosaic ``(count,)`` int32, and ``(count, 4)`` booleans marking its tiles of
      that class (top-left, top-right, bottom-left, bottom-right).

    Raises:
      ValueError: images that are not ``(N, H, W, C)``, labels that do not match, odd
        sizes with ``downsample``, or no class with two images besides another class.
    """
    count = as_count(count, "count")
    require_key(key, "mosaics")
    x = jnp.asarray(images, jnp.float32)
    y = np.asarray(labels)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {x.shape}")
    if y.shape != x.shape[:1] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"labels must be integers of shape ({x.shape[0]},), got {y.dtype} of shape {y.shape}"
        )
    if downsample and (x.shape[1] % 2 or x.shape[2] % 2):
        raise ValueError(
            f"downsample halves the tiles, which needs an even height and width, got "
            f"{x.shape[1:3]}; pass downsample=False for mosaics of twice the size"
        )
    classes, sizes = np.unique(y, return_counts=True)
    eligible = classes[(sizes >= 2) & (len(y) - sizes >= 2)]
    if eligible.size == 0:
        raise ValueError(
            "a mosaic needs a class with at least two images and two images of other "
            f"classes; the labels have counts {dict(zip(classes.tolist(), sizes.tolist()))}"
        )
    if downsample:
        n, h, w, c = x.shape
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4))
    return _draw_mosaics(x, jnp.asarray(y), jnp.asarray(eligible), key, count)


@functools.partial(jax.jit, static_argnums=4)
def _draw_mosaics(x, y, eligible, key, count):
    def one(m):
        k_class, k_own, k_other, k_place = jax.random.split(jax.random.fold_in(key, m), 4)
        cls = jax.random.choice(k_class, eligible)
        own = y == cls
        pick_own = jax.random.choice(k_own, y.shape[0], (2,), replace=False, p=own / own.sum())
        other = ~own
        pick_other = jax.random.choice(
            k_other, y.shape[0], (2,), replace=False, p=other / other.sum()
        )
        place = jax.random.permutation(k_place, 4)  # tile t shows picks[place[t]]
        picks = jnp.concatenate([pick_own, pick_other])[place]
        tiles = x[picks]
        top = jnp.concatenate([tiles[0], tiles[1]], axis=1)
        bottom = jnp.concatenate([tiles[2], tiles[3]], axis=1)
        return jnp.concatenate([top, bottom], axis=0), cls.astype(jnp.int32), place < 2

    return jax.vmap(one)(jnp.arange(count))
