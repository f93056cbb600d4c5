r"""Coalition attributions: feature ablation, Shapley value sampling, KernelSHAP, LIME;
and DeepLiftShap.

The first four explain the target logit by evaluating the model on *coalitions*: the
features are partitioned into ``F`` groups by ``feature_mask`` (as in
:func:`~fmi_jax.attribution.feature_permutation`; ``None`` makes every scalar of an
example its own group, Captum's default), and a coalition ``z in {0, 1}^F`` is the input

    h_x(z) = x where the feature's group is in z, baseline elsewhere,

so ``v(z) = f_t(h_x(z))`` is a cooperative game with ``v(1) = f_t(x)`` and
``v(0) = f_t(baseline)``. Every element of a group gets its group's value (Captum's
convention), so with groups of several elements the *groups*, not the elements, sum to
the explained difference.

* Feature ablation (Captum's ``FeatureAblation``; the leave-one-out occlusion of
  Zeiler & Fergus 2014 with arbitrary groups): ``phi_j = v(1) - v(1 - e_j)``, one
  evaluation per group.
* Shapley value sampling (Strumbelj & Kononenko 2010, "An Efficient Explanation of
  Individual Classifications using Game Theory", JMLR 11; Castro, Gomez & Tejada 2009),
  Captum's ``ShapleyValueSampling``: for random orders ``pi`` of the groups, add the
  groups to the baseline one by one and credit each with its marginal contribution,

      phi_j = mean_pi [ v(P_j^pi + e_j) - v(P_j^pi) ],  P_j^pi = the groups before j in pi.

  Each order telescopes, so ``sum_j phi_j = v(1) - v(0)`` holds for any number of
  samples (up to float rounding), and the estimate is unbiased for the Shapley values
  ``phi_j = sum_{S not containing j} |S|! (F - |S| - 1)! / F! [v(S + j) - v(S)]``. Every
  order costs ``F - 1`` evaluations (``v(0)`` and ``v(1)`` are shared by all orders).
* KernelSHAP (Lundberg & Lee 2017, "A Unified Approach to Interpreting Model
  Predictions", NeurIPS), Captum's ``KernelShap``: the Shapley values are the solution of
  the weighted least squares

      min_phi sum_z pi(z) [v(z) - v(0) - z . phi]^2  s.t.  sum_j phi_j = v(1) - v(0),
      pi(z) = (F - 1) / (C(F, |z|) |z| (F - |z|)),

  over the coalitions ``0 < |z| < F``. ``samples`` coalitions are drawn from ``pi``
  (a size k with probability proportional to ``1 / (k (F - k))``, then a uniform subset
  of that size), in complementary pairs ``z, 1 - z`` (paired sampling, which cancels
  much of the variance; Covert & Lee 2021), each with weight 1. When ``samples >=
  2^F - 2`` every coalition is enumerated once with its exact weight instead, and the
  result is the exact Shapley values (at most ``samples`` evaluations). The constraint
  is imposed exactly: ``phi = (v(1) - v(0)) / F + psi`` with ``psi`` orthogonal to the
  all-ones vector, found by ``jnp.linalg.lstsq`` (minimum norm when fewer coalitions
  than groups leave it underdetermined). Captum instead appends ``z = 1`` and ``z = 0``
  with weight 10^6 and fits an unconstrained linear model with scikit-learn, which
  satisfies the constraint only approximately, and does not pair its samples.
* LIME (Ribeiro, Singh & Guestrin 2016, "Why Should I Trust You?", KDD), Captum's
  ``Lime``: ``samples`` coalitions with every group present independently with
  probability 1/2, weighted by the similarity of the perturbed input to x,
  ``w = exp(-d(x, h_x(z))^2 / (2 kernel_width^2))`` with ``d`` the cosine distance
  (``distance="cosine"``) or Euclidean distance of the flattened inputs, and a linear
  surrogate ``v(z) ~ c + z . beta`` fitted by weighted ridge regression with an
  unpenalised intercept,

      min_{c, beta} sum_s w_s (v(z_s) - c - z_s . beta)^2 / sum_s w_s + alpha |beta|^2;

  ``phi = beta``. Sampling, kernel and width are Captum's defaults
  (``default_perturb_func``, ``get_exp_kernel_similarity_function("cosine", 1.0)``,
  ``n_samples=25``). Captum's default surrogate is ``SkLearnLasso(alpha=0.01)``, which
  needs an iterative solver; here it is ridge, solved in closed form on the device, with
  the same default ``alpha=0.01`` on the weighted mean squared error. For a model that is
  linear in ``z`` (e.g. a linear model) and ``alpha=0`` the surrogate is exact:
  ``beta_j = v(e_j) - v(0)``, the group sum of ``w (x - baseline)``.

All model evaluations (``N`` examples times the coalitions each needs) go through
:func:`~fmi_jax.attribution.core.map_over_samples`, ``batch_size`` at a time, keeping
one number per (example, coalition); the regressions are solved for all examples at
once with ``jnp.linalg.lstsq``. Random orders and coalitions of example i, sample s
come from ``fold_in(fold_in(key, i), s)``, so no result depends on ``batch_size`` or on
how examples are split across calls (given per-example keys).

DeepLiftShap (Lundberg & Lee 2017, section 4.2), Captum's ``DeepLiftShap``: DeepLIFT
(:func:`~fmi_jax.attribution.deeplift`) against each of ``M`` references, averaged,

    phi(x) = mean_m deeplift(x; b_m),  sum_j phi_j = f_t(x) - mean_m f_t(b_m),

which approximates SHAP values with the references as the background distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.attribution.core import (
    Array,
    ModelFn,
    Target,
    as_baseline,
    as_count,
    as_input,
    as_number,
    as_reference,
    check_finite,
    example_keys,
    layout_checked,
    map_over_samples,
    require_key,
    resolve_target,
    sample_keys,
    select_target,
    sum_over_samples,
)
from fmi_jax.attribution.deeplift import deeplift
from fmi_jax.attribution.perturbation import feature_groups

__all__ = [
    "feature_ablation",
    "shapley_value_sampling",
    "kernel_shap",
    "lime",
    "deeplift_shap",
    "LIME_DISTANCES",
]

LIME_DISTANCES = ("cosine", "euclidean")

# coalition(example, index) -> bool (B, F): which groups of those (example, coalition)
# pairs keep the input's values (True) rather than the baseline's.
Coalition = Callable[[Array, Array], Array]


def _coalition_values(
    fn: ModelFn,
    x: Array,
    baseline: Array,
    target: Array,
    groups: Array,
    coalition: Coalition,
    count: int,
    batch_size: int | None,
    distance: Callable[[Array, Array], Array] | None = None,
) -> Array:
    """``v[i, c] = f_t(h_{x_i}(coalition c of example i))``, shape ``(N, count)``; with
    ``distance`` also ``distance(x_i, h)`` per row, shape ``(N, count, 2)``.

    Evaluated in equally shaped chunks (:func:`map_over_samples`), so coalitions that
    produce the same input (e.g. the full one in every order) give bit-identical values.
    """

    def evaluate(example: Array, index: Array) -> Array:
        keep = jnp.take(coalition(example, index), groups, axis=1)  # (B, *features)
        inputs = jnp.where(keep, x[example], baseline[example])
        value = select_target(fn(inputs), target[example])
        if distance is None:
            return value
        return jnp.stack([value, distance(x[example], inputs)], axis=1)

    return map_over_samples(evaluate, x.shape[0], count, batch_size=batch_size)


def _prepare(
    fn: ModelFn,
    x: Any,
    target: Target,
    baseline: Any,
    feature_mask: Any,
    batch_size: int | None,
) -> tuple[Array, Array, Array, Array, int]:
    """The checked input, baseline, targets, groups and number of groups."""
    x = as_input(x)
    with layout_checked(fn, x):  # a mask that does not fit a misread x: say why
        baseline = as_baseline(baseline, x)
        groups, count = feature_groups(feature_mask, x)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    return x, baseline, target, groups, count


def _spread(values: Array, groups: Array) -> Array:
    """Per-group values ``(N, F)`` onto the features: every element gets its group's."""
    return jnp.take(values, groups, axis=1)


def _draw(draw: Callable[[Array], Array], keys: Array, samples: int) -> Array:
    """``draw(fold_in(keys[i], s))`` for every example i and sample s, ``(N, S, ...)``:
    all the random coalitions (or orders) at once, before any model evaluation. They
    are small next to the inputs (a row of F group indicators per sample)."""
    n = keys.shape[0]
    example = jnp.repeat(jnp.arange(n, dtype=jnp.int32), samples)
    sample = jnp.tile(jnp.arange(samples, dtype=jnp.int32), n)
    drawn = jax.vmap(draw)(sample_keys(keys, example, sample))
    return drawn.reshape((n, samples) + drawn.shape[1:])


def _with_ends(inside: Array, index: Array) -> Array:
    """Coalition index 0 is empty (the baseline), 1 is full (the input), others as drawn."""
    inside = jnp.where((index == 0)[:, None], False, inside)
    return jnp.where((index == 1)[:, None], True, inside)


def feature_ablation(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: float | Array | None = None,
    batch_size: int | None = None,
    feature_mask: Array | np.ndarray | None = None,
) -> Array:
    """Feature ablation: the drop of the target logit when one group is set to the baseline.

    ``phi_j = f_t(x) - f_t(x with group j replaced by the baseline)``, on every element of
    group j (module docstring). For a linear model it is the group sum of
    ``w_t (x - baseline)``. Captum counterpart: ``captum.attr.FeatureAblation``.

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: unused (deterministic); accepted so every method has one signature.
      baseline: the replacement values: ``None`` (zeros), a scalar, or an array
        broadcastable to ``x``.
      batch_size: model evaluations per pass (``N * (F + 1)`` in all).
      feature_mask: integer group ids broadcastable to one example's shape, e.g.
        :func:`~fmi_jax.attribution.square_patches`; ``None`` makes every scalar its own
        group.

    Returns:
      float32 attributions shaped like ``x``.
    """
    x, baseline, target, groups, count = _prepare(fn, x, target, baseline, feature_mask, batch_size)

    def coalition(example: Array, index: Array) -> Array:
        # Coalition j < F drops group j; coalition F is the unperturbed input.
        return jnp.arange(count)[None] != index[:, None]

    values = _coalition_values(fn, x, baseline, target, groups, coalition, count + 1, batch_size)
    return _spread(values[:, -1:] - values[:, :-1], groups)


def shapley_value_sampling(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: float | Array | None = None,
    batch_size: int | None = None,
    feature_mask: Array | np.ndarray | None = None,
    samples: int = 25,
) -> Array:
    """Shapley values of the groups estimated from random orders (module docstring).

    Each of ``samples`` uniformly random orders of the F groups adds them one by one to
    the baseline; a group's attribution is its mean marginal contribution. The groups'
    attributions sum to ``f_t(x) - f_t(baseline)`` for any ``samples``, and converge to
    the exact Shapley values. Cost: ``N * (2 + samples * (F - 1))`` evaluations. Captum
    counterpart: ``captum.attr.ShapleyValueSampling`` (``n_samples``, default 25).

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: a PRNG key, or one key per example (shape ``(N,)``); required. Order s of
        example i is drawn from ``fold_in(fold_in(key, i), s)``.
      baseline: the values of absent groups: ``None`` (zeros), a scalar, or an array
        broadcastable to ``x``.
      batch_size: model evaluations per pass.
      feature_mask: integer group ids broadcastable to one example's shape; ``None``
        makes every scalar its own group.
      samples: random orders per example.

    Returns:
      float32 attributions shaped like ``x``; every element holds its group's value.
    """
    require_key(key, "shapley_value_sampling")
    samples = as_count(samples, "samples")
    x, baseline, target, groups, count = _prepare(fn, x, target, baseline, feature_mask, batch_size)
    n = x.shape[0]
    keys = example_keys(key, n)
    inner = max(count - 1, 1)  # evaluations per order: the proper non-empty prefixes
    # ranks[i, s, j]: the position of group j in order s of example i.
    ranks = _draw(lambda k: jnp.argsort(jax.random.permutation(k, count)), keys, samples)

    def coalition(example: Array, index: Array) -> Array:
        # Index 0 is the baseline, 1 the input, 2 + s (F - 1) + (k - 1) the first k groups
        # of order s, k = 1 .. F - 1.
        order, k = jnp.maximum(index - 2, 0) // inner, (index - 2) % inner + 1
        return _with_ends(ranks[example, order] < k[:, None], index)

    total = 2 + samples * (count - 1)
    values = _coalition_values(fn, x, baseline, target, groups, coalition, total, batch_size)
    ends = jnp.broadcast_to(values[:, None, :2], (n, samples, 2))
    prefix = jnp.concatenate(  # v(first k groups of order s), k = 0 .. F: (N, S, F + 1)
        [ends[..., :1], values[:, 2:].reshape(n, samples, count - 1), ends[..., 1:]], axis=2
    )
    marginal = jnp.diff(prefix, axis=2)  # of the group at position k of order s
    phi = jnp.take_along_axis(marginal, ranks, axis=2).mean(axis=1)
    return _spread(phi, groups)


def _kernel_weights(count: int) -> np.ndarray:
    """The Shapley kernel of every coalition size 0..F (zero at the ends)."""
    size = np.arange(count + 1)
    weights = np.zeros(count + 1)
    inner = size[1:-1]
    weights[1:-1] = (count - 1) / (
        np.array([math.comb(count, int(k)) for k in inner], float) * inner * (count - inner)
    )
    return weights


def _shapley_regression(z: Array, y: Array, w: Array, delta: Array) -> Array:
    """``argmin_phi sum_r w_r (y_r - z_r . phi)^2`` subject to ``sum(phi) = delta``.

    ``phi = delta / F + psi``: the residual becomes ``y - delta |z| / F - (z - |z| / F)
    psi`` once ``sum(psi) = 0``, and ``z - |z| / F`` annihilates the all-ones vector, so
    appending the row ``1 . psi = 0`` imposes the constraint exactly and keeps the least
    squares full rank along that direction. ``lstsq`` gives the minimum-norm ``psi`` when
    the coalitions leave it underdetermined, which treats every group alike.
    """
    count = z.shape[1]
    a_dtype = jnp.result_type(jnp.float32, y)  # float32 inputs stay float32 under x64
    size = z.sum(axis=1)
    root = jnp.sqrt(w)[:, None]
    a = jnp.concatenate([(z - size[:, None] / count) * root, jnp.ones((1, count), a_dtype)])
    b = jnp.concatenate([(y - delta * size / count) * root[:, 0], jnp.zeros(1, a_dtype)])
    return delta / count + jnp.linalg.lstsq(a, b)[0]


def kernel_shap(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: float | Array | None = None,
    batch_size: int | None = None,
    feature_mask: Array | np.ndarray | None = None,
    samples: int = 25,
) -> Array:
    """KernelSHAP: Shapley values of the groups by weighted least squares (module docstring).

    Draws ``samples`` coalitions from the Shapley kernel in complementary pairs, evaluates
    the model on them, and solves the kernel-weighted regression under the efficiency
    constraint ``sum_j phi_j = f_t(x) - f_t(baseline)`` on the device. Exact for models
    linear in the coalition (a linear model: the group sums of ``w_t (x - baseline)``)
    once the coalitions determine the fit. With ``samples >= 2^F - 2`` all coalitions are
    enumerated with their exact kernel weights, which gives the exact Shapley values.
    Cost: ``N * (2 + min(samples, 2^F - 2))`` evaluations. Captum counterpart:
    ``captum.attr.KernelShap`` (``n_samples``, default 25).

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: a PRNG key, or one key per example (shape ``(N,)``); required (also when the
        coalitions are enumerated, so that a setting does not change the signature).
        Pair p of example i is drawn from ``fold_in(fold_in(key, i), p)``.
      baseline: the values of absent groups: ``None`` (zeros), a scalar, or an array
        broadcastable to ``x``.
      batch_size: model evaluations per pass.
      feature_mask: integer group ids broadcastable to one example's shape; ``None``
        makes every scalar its own group.
      samples: coalitions per example (besides the empty and the full one).

    Returns:
      float32 attributions shaped like ``x``; every element holds its group's value.
    """
    require_key(key, "kernel_shap")
    samples = as_count(samples, "samples")
    x, baseline, target, groups, count = _prepare(fn, x, target, baseline, feature_mask, batch_size)
    n = x.shape[0]
    keys = example_keys(key, n)
    exact = count <= 30 and samples >= 2**count - 2
    rows = 2**count - 2 if exact else samples
    if count < 2:  # one group: it gets everything
        rows = 0
    # A coalition's size k is drawn with the kernel's total weight on that size,
    # C(F, k) pi(k) = (F - 1) / (k (F - k)), then a uniform subset of that size.
    size = np.arange(1, max(count, 2))
    log_size = jnp.asarray(-np.log(size * np.maximum(count - size, 1)), jnp.float32)

    def draw(pair_key: Array) -> Array:
        """A coalition drawn from the kernel, and its complement: (2, F)."""
        size_key, subset_key = jax.random.split(pair_key)
        size = jax.random.categorical(size_key, log_size) + 1
        inside = jnp.argsort(jax.random.permutation(subset_key, count)) < size
        return jnp.stack([inside, ~inside])

    if rows == 0:
        z = jnp.zeros((n, 1, max(count, 1)), bool)
    elif exact:  # row r: the coalition whose bits are r + 1 (all but the empty and full)
        bits = (np.arange(1, rows + 1)[:, None] >> np.arange(count)) & 1 == 1
        z = jnp.broadcast_to(jnp.asarray(bits), (n, rows, count))
    else:  # row r: pair r // 2, complemented for odd r; pair p from fold_in(key_i, p)
        z = _draw(draw, keys, -(-rows // 2)).reshape(n, -1, count)[:, :rows]

    def coalition(example: Array, index: Array) -> Array:
        return _with_ends(z[example, jnp.clip(index - 2, 0, z.shape[1] - 1)], index)

    values = _coalition_values(fn, x, baseline, target, groups, coalition, 2 + rows, batch_size)
    delta = values[:, 1] - values[:, 0]
    if rows == 0:
        return _spread(delta[:, None], groups)
    z = z.astype(jnp.float32)
    if exact:
        w = jnp.asarray(_kernel_weights(count), jnp.float32)[z.sum(axis=2).astype(jnp.int32)]
        w = w / w.mean(axis=1, keepdims=True)
    else:  # drawn from the kernel: equal weights
        w = jnp.ones((n, rows), jnp.float32)
    y = values[:, 2:] - values[:, :1]
    phi = jax.vmap(_shapley_regression)(z, y, w, delta)
    return _spread(phi, groups)


def _cosine_distance(x: Array, perturbed: Array) -> Array:
    """1 - cos(x, perturbed) per row of the flattened inputs (a zero vector: distance 1)."""
    x, perturbed = x.reshape(x.shape[0], -1), perturbed.reshape(perturbed.shape[0], -1)
    norms = jnp.linalg.norm(x, axis=1) * jnp.linalg.norm(perturbed, axis=1)
    return 1.0 - jnp.sum(x * perturbed, axis=1) / jnp.maximum(norms, 1e-8)


def _euclidean_distance(x: Array, perturbed: Array) -> Array:
    return jnp.linalg.norm((x - perturbed).reshape(x.shape[0], -1), axis=1)


def _ridge(z: Array, y: Array, w: Array, alpha: float) -> Array:
    """``beta`` of ``min sum w (y - c - z . beta)^2 / sum w + alpha |beta|^2``: the
    intercept is removed by weighted centring, the penalty by ``sqrt(alpha) I`` rows;
    ``lstsq`` gives the minimum-norm ``beta`` when ``alpha = 0`` leaves it open."""
    w = w / jnp.sum(w)
    zc = z - w @ z
    yc = y - w @ y
    root = jnp.sqrt(w)[:, None]
    count = z.shape[1]
    a_dtype = jnp.result_type(jnp.float32, y)  # float32 inputs stay float32 under x64
    ridge = jnp.sqrt(jnp.asarray(alpha, a_dtype)) * jnp.eye(count, dtype=a_dtype)
    a = jnp.concatenate([zc * root, ridge])
    b = jnp.concatenate([yc * root[:, 0], jnp.zeros(count, a_dtype)])
    return jnp.linalg.lstsq(a, b)[0]


def lime(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: float | Array | None = None,
    batch_size: int | None = None,
    feature_mask: Array | np.ndarray | None = None,
    samples: int = 25,
    kernel_width: float = 1.0,
    alpha: float = 0.01,
    distance: str = "cosine",
) -> Array:
    """LIME: the coefficients of a weighted linear surrogate on random coalitions.

    Every group is kept with probability 1/2 in each of ``samples`` coalitions; the
    surrogate ``c + z . beta`` is fitted to the target logit by ridge regression weighted
    with ``exp(-d(x, h_x(z))^2 / (2 kernel_width^2))`` (module docstring). Captum
    counterpart: ``captum.attr.Lime`` with its default sampling and kernel; its default
    surrogate is Lasso (``alpha=0.01``), here ridge with the same ``alpha``, solved in
    closed form. Cost: ``N * samples`` evaluations.

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: a PRNG key, or one key per example (shape ``(N,)``); required. Coalition s
        of example i is drawn from ``fold_in(fold_in(key, i), s)``.
      baseline: the values of absent groups: ``None`` (zeros), a scalar, or an array
        broadcastable to ``x``.
      batch_size: model evaluations per pass.
      feature_mask: integer group ids broadcastable to one example's shape; ``None``
        makes every scalar its own group.
      samples: coalitions per example (at least F + 1 for a determined fit with
        ``alpha=0``; fewer give the minimum-norm coefficients).
      kernel_width: width of the exponential similarity kernel, > 0.
      alpha: ridge penalty on the coefficients, >= 0, relative to the weighted mean
        squared error.
      distance: ``"cosine"`` (Captum's default) or ``"euclidean"``, between the
        flattened input and perturbed input.

    Returns:
      float32 attributions shaped like ``x``; every element holds its group's
      coefficient.
    """
    require_key(key, "lime")
    samples = as_count(samples, "samples")
    kernel_width = as_number(kernel_width, "kernel_width", minimum=0, inclusive=False)
    alpha = as_number(alpha, "alpha", minimum=0)
    if distance not in LIME_DISTANCES:
        raise ValueError(f"distance must be one of {LIME_DISTANCES}, got {distance!r}")
    x, baseline, target, groups, count = _prepare(fn, x, target, baseline, feature_mask, batch_size)
    n = x.shape[0]
    keys = example_keys(key, n)
    measure = _cosine_distance if distance == "cosine" else _euclidean_distance

    # A float32 p draws float32 uniforms: the same coalitions with jax_enable_x64 on.
    z = _draw(lambda k: jax.random.bernoulli(k, jnp.float32(0.5), (count,)), keys, samples)

    def coalition(example: Array, index: Array) -> Array:
        return z[example, index]

    out = _coalition_values(
        fn, x, baseline, target, groups, coalition, samples, batch_size, distance=measure
    )
    values, d = out[..., 0], out[..., 1]
    # The ridge normalises the weights, so they are exponentiated relative to each
    # example's largest: exp(-d^2 / 2w^2) underflows to 0 for every sample at large d.
    log_w = -(d**2) / (2 * kernel_width**2)
    w = jnp.exp(log_w - jnp.max(log_w, axis=-1, keepdims=True))
    z = z.astype(jnp.float32)
    beta = jax.vmap(lambda z, y, w: _ridge(z, y, w, alpha))(z, values, w)
    return _spread(beta, groups)


def _as_references(baseline: Any, x: Array) -> Array:
    """The references as a batch ``(M, ...)`` with the example shape of ``x``."""
    if baseline is None:
        raise ValueError(
            "deeplift_shap needs baseline=: a batch of references (M, "
            f"{', '.join(map(str, x.shape[1:]))}), e.g. a sample of training inputs"
        )
    references = as_reference(baseline)
    if references.ndim != x.ndim or references.shape[1:] != x.shape[1:] or not len(references):
        raise ValueError(
            f"deeplift_shap's baseline must be a non-empty batch of references (M, "
            f"{', '.join(map(str, x.shape[1:]))}), got shape {references.shape}; for one "
            "reference pass baseline[None]"
        )
    check_finite(references, "baseline")
    return references


def deeplift_shap(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: Array | None = None,
    batch_size: int | None = None,
) -> Array:
    """DeepLiftShap: DeepLIFT-Rescale against every reference, averaged (module docstring).

    ``phi(x) = mean_m deeplift(fn, x, t, baseline=b_m)``, so the attributions sum to
    ``f_t(x) - mean_m f_t(b_m)``. Captum counterpart: ``captum.attr.DeepLiftShap``, which
    requires at least two references; one is accepted here (it is DeepLIFT).

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``, evaluated in
        inference mode; the model's ops need DeepLIFT rules (see
        :mod:`~fmi_jax.attribution.deeplift`).
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: unused (deterministic); accepted so every method has one signature.
      baseline: the references (required): a batch ``(M, ...)`` with the example shape
        of ``x``, shared by every example (a background distribution, not one reference
        per example).
      batch_size: (example, reference) pairs per paired DeepLIFT evaluation.

    Returns:
      float32 attributions shaped like ``x``.
    """
    x = as_input(x)
    with layout_checked(fn, x):  # references that do not fit a misread x: say why
        references = _as_references(baseline, x)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    count = references.shape[0]

    def evaluate(example: Array, reference: Array) -> Array:
        return deeplift(fn, x[example], target[example], baseline=references[reference])

    return sum_over_samples(evaluate, x.shape[0], count, batch_size=batch_size) / count


# A batch of references is one distribution for every example (noise_tunnel reads it).
deeplift_shap.baseline_is_distribution = True
