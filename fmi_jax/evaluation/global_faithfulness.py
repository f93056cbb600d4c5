"""Consistency and sufficiency of explanations over a dataset (Dasgupta et al. 2022).

Dasgupta, Frost & Moshkovitz, "Framework for Evaluating Faithfulness of Local
Explanations" (ICML 2022, arXiv:2202.00734), ask of a set of explanations what one map
alone cannot show: do examples that get the *same* explanation get the same
prediction? Both metrics take the maps of ``N`` examples (``(N, ...)``, every value a
feature, as given: reduce channels first for per-pixel maps) and the model's
predicted class of each, and return one value per example, the share of its
comparable examples (itself excluded) that the model puts in its class; NaN where it
has none. High is good. Both depend, by definition, on which examples are scored
together. Quantus' versions take ``|a|`` by default (``abs=True``; pass
``jnp.abs(maps)`` for that, which makes every sign in a consistency explanation
positive) and score an example without comparable ones 0.

* Consistency (Quantus' ``Consistency``): examples are comparable when their maps
  discretise to the same explanation. The explanation of a map here is its ``k``
  features of largest ``|a|`` (ties: the lower index) with their signs, as a set (the
  order within the top ``k`` does not matter). Quantus' default discretisation,
  ``top_n_sign``, takes the signs of the *first* ``n`` values of the flattened map,
  not of its ``n`` most important ones (two maps whose corners agree are "the same
  explanation" whatever their top features).
* Sufficiency (Quantus' ``Sufficiency``): examples are comparable when their maps
  lie close, ``d(a_i, a_j) <= threshold * max_{k, l} d(a_k, a_l)``, with ``d`` the
  standardised Euclidean distance, ``d(a, b)^2 = sum_f (a_f - b_f)^2 / V_f`` and
  ``V_f`` the variance of feature ``f`` over the ``N`` maps (``ddof=1``). Quantus
  computes the same with ``scipy.spatial.distance.cdist(..., 'seuclidean')``
  divided by its largest entry (a constant factor in scipy's ``V`` cancels there);
  a feature that is the same in every map (a corner pixel every map leaves at 0)
  makes every scipy distance NaN, so Quantus then finds no neighbours at all. Here
  such features are left out: they do not tell any two maps apart.

Pairs are compared one row at a time (``lax.map`` over the examples), so memory is
``O(N F)``, not ``O(N^2 F)``. Both functions are jit-compatible with ``k`` and
``threshold`` static.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fmi_jax.attribution.core import Array, as_count, as_number, check_finite

__all__ = ["consistency", "sufficiency"]


def _rows(attributions: Any, predictions: Any) -> tuple[Array, Array]:
    a = jnp.asarray(attributions, jnp.float32)
    p = jnp.asarray(predictions)
    if a.ndim < 2 or a.shape[0] < 2:
        raise ValueError(
            f"attributions must be (N, ...) maps of N >= 2 examples (the metrics compare "
            f"examples with each other), got shape {a.shape}"
        )
    if p.shape != a.shape[:1] or not jnp.issubdtype(p.dtype, jnp.integer):
        raise ValueError(
            f"predictions must be the predicted classes, integers of shape ({a.shape[0]},), "
            f"e.g. fn(x).argmax(-1); got {p.dtype} of shape {p.shape}"
        )
    check_finite(a, "attributions")
    return a.reshape(a.shape[0], -1), p


def _share_of_same_class(comparable: Any, predictions: Array) -> Array:
    """Per example: the share of its comparable examples (``comparable(i) -> (N,)``
    bools, itself excluded here) with its prediction; NaN where there are none."""
    n = predictions.shape[0]

    def row(i):
        others = comparable(i) & (jnp.arange(n) != i)
        count = others.sum()
        same = (others & (predictions == predictions[i])).sum()
        return jnp.where(count > 0, same / jnp.maximum(count, 1), jnp.nan)

    return jax.lax.map(row, jnp.arange(n)).astype(jnp.float32)


def consistency(attributions: Array, predictions: Array, *, k: int = 5) -> Array:
    """Per example, the share of the other examples with the same explanation (the set
    of the ``k`` largest ``|a|`` features and their signs) that share its predicted
    class, shape ``(N,)``; NaN where no other example has that explanation (module
    docstring).

    Args:
      attributions: maps ``(N, ...)``, N >= 2; every value is a feature.
      predictions: int ``(N,)``, the model's predicted class of each example.
      k: features per explanation (Quantus' ``n``, 5), between 1 and the features of a
        map.

    Raises:
      ValueError: fewer than 2 maps, predictions of the wrong shape or type, a bad ``k``.
    """
    a, p = _rows(attributions, predictions)
    k = as_count(k, "k", maximum=a.shape[1])
    top = jnp.sort(jnp.argsort(-jnp.abs(a), axis=1, stable=True)[:, :k], axis=1)
    signs = jnp.sign(jnp.take_along_axis(a, top, axis=1)).astype(top.dtype)
    label = jnp.concatenate([top, signs], axis=1)
    return _share_of_same_class(lambda i: jnp.all(label == label[i], axis=1), p)


def sufficiency(attributions: Array, predictions: Array, *, threshold: float = 0.6) -> Array:
    """Per example, the share of the other examples whose maps lie within ``threshold``
    of the largest pairwise distance that share its predicted class, shape ``(N,)``;
    NaN where no other map is that close (module docstring).

    Args:
      attributions: maps ``(N, ...)``, N >= 2; every value is a feature.
      predictions: int ``(N,)``, the model's predicted class of each example.
      threshold: the largest relative standardised Euclidean distance of a neighbour,
        in ``[0, 1]`` (Quantus' 0.6).

    Raises:
      ValueError: fewer than 2 maps, predictions of the wrong shape or type, a
        threshold outside ``[0, 1]``.
    """
    a, p = _rows(attributions, predictions)
    threshold = as_number(threshold, "threshold", minimum=0.0)  # NumPy and 0-d arrays too
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (of the largest distance), got {threshold}")
    variance = a.var(axis=0, ddof=1)
    varies = variance > 0
    z = jnp.where(varies, (a - a.mean(0)) / jnp.sqrt(jnp.where(varies, variance, 1.0)), 0.0)

    def distances(i):
        return jnp.sqrt(jnp.sum((z - z[i]) ** 2, axis=1))

    largest = jax.lax.map(lambda i: distances(i).max(), jnp.arange(a.shape[0])).max()
    return _share_of_same_class(lambda i: distances(i) <= threshold * largest, p)
