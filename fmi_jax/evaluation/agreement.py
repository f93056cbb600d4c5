"""Agreement between attribution maps: correlations and top-k overlap.

All functions take maps of shape (N, ...) (one map per example), flatten each
example's map, and return one value per example; `correlation_matrix` and
`overlap_matrix` reduce a dict of methods to an (M, M) matrix averaged over examples.

* Pearson correlation of the flattened maps.
* Spearman correlation: Pearson correlation of the ranks, with tied values given
  their average rank (as `scipy.stats.spearmanr` does). Ties matter here: with a
  zero baseline, Integrated Gradients and DeepLift give exactly 0 on every
  black background pixel of a Fashion-MNIST image.
* Top-k overlap: |top_k(a) ∩ top_k(b)| / k with k = ceil(fraction * D), where
  top_k ranks features by |attribution| (by value with `absolute=False`); ties
  at the boundary are broken by feature index, so the result is deterministic.

Constant maps have no defined correlation and no top features: the result is NaN for
that example, which the averaging in `correlation_matrix` skips (and counts). A map
holding NaN or Inf has no defined correlation either: `pearson` and `spearman` give
NaN for that example (ranks alone would place a NaN last and hide it;
`scipy.stats.spearmanr` also gives NaN for a NaN, though it ranks an Inf), and
`topk_overlap` and the matrices refuse it, since their averages would skip its NaN
unnoticed.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.attribution.core import check_finite, flat_rows

__all__ = [
    "average_ranks",
    "correlation_matrix",
    "overlap_matrix",
    "pearson",
    "reduce_channels",
    "spearman",
    "topk_overlap",
]


def reduce_channels(maps: jax.Array, how: str = "sum") -> jax.Array:
    """(N, H, W, C) -> (N, H, W): 'sum' (signed), 'abs_sum', or 'max_abs' over channels."""
    if maps.ndim != 4:
        raise ValueError(f"reduce_channels wants (N, H, W, C) maps, got shape {maps.shape}")
    if how == "sum":
        return maps.sum(-1)
    if how == "abs_sum":
        return jnp.abs(maps).sum(-1)
    if how == "max_abs":
        return jnp.abs(maps).max(-1)
    raise ValueError(f"unknown channel reduction {how!r}; choose 'sum', 'abs_sum' or 'max_abs'")


def _flat(a: jax.Array) -> jax.Array:
    return flat_rows(jnp.asarray(a), "maps").astype(jnp.float32)


def _check_pair(a, b) -> None:
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim < 2:
        raise ValueError(f"maps must be (N, ...) with one map per example, got shape {a.shape}")


def _pearson_rows(x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-row correlation in [-1, 1]; NaN for a constant row (NaN and Inf propagate to
    NaN). float32 rounding can put an exact linear relation one ulp beyond 1: clipped."""
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    den = jnp.sqrt((x * x).sum(-1) * (y * y).sum(-1))
    r = jnp.where(den > 0, (x * y).sum(-1) / jnp.where(den > 0, den, 1.0), jnp.nan)
    return jnp.clip(r, -1.0, 1.0)


def average_ranks(x: jax.Array) -> jax.Array:
    """Ranks 0..D-1 along the last axis; tied values share their average rank."""
    s = jnp.sort(x, axis=-1)
    left = jax.vmap(lambda s_, x_: jnp.searchsorted(s_, x_, side="left"))(
        s.reshape(-1, s.shape[-1]), x.reshape(-1, x.shape[-1])
    )
    right = jax.vmap(lambda s_, x_: jnp.searchsorted(s_, x_, side="right"))(
        s.reshape(-1, s.shape[-1]), x.reshape(-1, x.shape[-1])
    )
    return ((left + right - 1) / 2.0).reshape(x.shape).astype(jnp.float32)


@jax.jit
def pearson(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-example Pearson correlation of two batches of maps, shape (N,); NaN where a
    map is constant or holds NaN/Inf."""
    _check_pair(a, b)
    return _pearson_rows(_flat(a), _flat(b))


@jax.jit
def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-example Spearman rank correlation (average ranks for ties), shape (N,); NaN
    where a map is constant or holds NaN/Inf."""
    _check_pair(a, b)
    fa, fb = _flat(a), _flat(b)
    finite = jnp.isfinite(fa).all(-1) & jnp.isfinite(fb).all(-1)
    r = _pearson_rows(average_ranks(fa), average_ranks(fb))
    return jnp.where(finite, r, jnp.nan)


def topk_overlap(
    a: jax.Array, b: jax.Array, *, fraction: float = 0.01, absolute: bool = True
) -> jax.Array:
    """Per-example fraction of shared top-k features, shape (N,); NaN where either map
    is constant (it has no top features: by index, two blank maps would agree fully)."""
    _check_pair(a, b)
    check_finite(a, "maps")
    check_finite(b, "maps")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    d = int(np.prod(a.shape[1:]))
    k = max(1, math.ceil(fraction * d))
    return _topk_overlap(a, b, k, absolute)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _topk_overlap(a, b, k, absolute):
    fa, fb = _flat(a), _flat(b)
    if absolute:
        fa, fb = jnp.abs(fa), jnp.abs(fb)
    d = fa.shape[-1]

    def top_mask(f):
        _, idx = jax.lax.top_k(f, k)  # ties: lower index first
        return jnp.zeros((d,), bool).at[idx].set(True)

    ma, mb = jax.vmap(top_mask)(fa), jax.vmap(top_mask)(fb)
    ranked = (fa.max(-1) > fa.min(-1)) & (fb.max(-1) > fb.min(-1))
    return jnp.where(ranked, (ma & mb).sum(-1) / k, jnp.nan)


def correlation_matrix(
    maps: Mapping[str, jax.Array], *, method: str = "spearman"
) -> tuple[np.ndarray, np.ndarray]:
    """(M, M) mean over examples of the per-example correlations, and the per-example values.

    Returns (mean matrix, per-example array of shape (N, M, M)). Examples where a
    correlation is undefined (a constant map) are NaN in the per-example array, the
    diagonal included, and left out of that entry's mean.
    """
    fns = {"pearson": pearson, "spearman": spearman}
    if method not in fns:
        raise ValueError(f"unknown correlation {method!r}; choose 'pearson' or 'spearman'")
    return _pairwise(maps, fns[method])


def overlap_matrix(
    maps: Mapping[str, jax.Array], *, fraction: float = 0.01, absolute: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(M, M) mean over examples of the per-example top-k overlaps (:func:`topk_overlap`),
    and the per-example values ``(N, M, M)``; an example where a map is constant is NaN
    there and left out of that entry's mean, as in :func:`correlation_matrix`."""
    return _pairwise(maps, functools.partial(topk_overlap, fraction=fraction, absolute=absolute))


def _pairwise(maps: Mapping[str, jax.Array], fn) -> tuple[np.ndarray, np.ndarray]:
    names = list(maps)
    if not names:
        raise ValueError("no maps given")
    for name, m in maps.items():  # a NaN would read as undefined and be averaged away
        check_finite(m, f"maps[{name!r}]")
    n = next(iter(maps.values())).shape[0]
    per = np.ones((n, len(names), len(names)), np.float64)
    for i, a in enumerate(names):
        # A map agrees with itself (1) where the measure is defined: NaN for a constant map.
        itself = np.asarray(fn(maps[a], maps[a]), np.float64)
        per[:, i, i] = np.where(np.isnan(itself), np.nan, 1.0)
        for j in range(i + 1, len(names)):
            c = np.asarray(fn(maps[a], maps[names[j]]), np.float64)
            per[:, i, j] = per[:, j, i] = c
    with warnings.catch_warnings():  # an entry undefined for every example stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(per, axis=0)
    return mean, per
