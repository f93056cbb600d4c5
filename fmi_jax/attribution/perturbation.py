"""Perturbation attributions: feature permutation and occlusion.

Both change part of the input, run the model again and attribute the drop of the
target output to the changed part,

    drop_i(P) = f_t(x_i) - f_t(x_i with the features in P perturbed),

and differ in what ``P`` is and how it is perturbed:

* Feature permutation (Fisher, Rudin & Dominici, JMLR 2019, arXiv:1801.01489; in
  Molnar's "Interpretable Machine Learning" as permutation feature importance),
  Captum's ``FeaturePermutation``: the features are partitioned into groups by
  ``feature_mask``; for each group ``g`` the batch is shuffled by a random
  permutation ``pi_g`` of its examples *inside the group only*, and every feature of
  the group gets ``drop_i(g)`` with ``x_i[g]`` replaced by ``x_{pi_g(i)}[g]``. The
  permutation is never the identity (drawn again until it is not, like Captum), so
  every group is perturbed; a batch of one cannot be permuted and is an error. Unlike
  the other methods, an example's attribution depends on the rest of its batch by
  definition.
* Occlusion (Zeiler & Fergus, ECCV 2014, arXiv:1311.2901), Captum's ``Occlusion``: a
  window slides over the input with a stride, the window is replaced by
  ``baseline``, and every feature gets the mean of ``drop_i(window)`` over the windows
  that cover it. Along an axis of size F the window starts at ``0, s, 2s, ...`` for
  ``ceil((F - w) / s) + 1`` positions, the last one cut off at the edge when ``s``
  does not divide ``F - w`` (Captum's rule), so with ``stride <= window`` every
  feature is covered.

All ``N * (groups or windows)`` perturbed forward passes (and the N unperturbed ones)
are evaluated by the shared :func:`~fmi_jax.attribution.core.map_over_samples`,
``batch_size`` at a time, keeping one number per (example, perturbation); no
perturbed copy of the whole batch is ever materialised. The maps are then assembled
from those drops: a gather for feature groups, an einsum with one 0/1 matrix per axis
for the windows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
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
    image_size,
    layout_checked,
    map_over_samples,
    per_example,
    refuse_baseline,
    require_key,
    resolve_target,
    select_target,
)

__all__ = ["feature_groups", "feature_permutation", "occlusion", "square_patches"]

# perturb(example, index) -> the perturbed inputs (B, ...) of those (example, perturbation) pairs
Perturb = Callable[[Array, Array], Array]


def _drops(
    fn: ModelFn,
    x: Array,
    target: Array,
    count: int,
    perturb: Perturb,
    batch_size: int | None,
) -> Array:
    """``drop[i, p] = f_t(x_i) - f_t(perturbation p of x_i)``, shape ``(N, count)``.

    The unperturbed input is evaluated as one more perturbation (index ``count``) in the
    same equally shaped chunks as the others (:func:`map_over_samples`), so that a
    perturbation the model ignores gives a drop of exactly zero: XLA rounds a row
    differently for different batch sizes. It costs N extra forward passes.
    """

    def evaluate(example: Array, index: Array) -> Array:
        perturbed = perturb(example, jnp.minimum(index, count - 1))
        unchanged = per_example(index == count, perturbed)
        return select_target(fn(jnp.where(unchanged, x[example], perturbed)), target[example])

    outputs = map_over_samples(evaluate, x.shape[0], count + 1, batch_size=batch_size)
    return outputs[:, -1:] - outputs[:, :-1]


def square_patches(image_shape: Sequence[int], size: int | Sequence[int]) -> np.ndarray:
    """A feature mask grouping an image into square (or ``(h, w)``) patches.

    Args:
      image_shape: ``(H, W)`` or ``(H, W, C)``.
      size: patch side, or ``(h, w)``. Patches at the bottom and right edges are
        smaller when the size does not divide the image.

    Returns:
      int32 group ids numbered row-major over patches, shaped ``(H, W, 1)`` for
      ``(H, W, C)`` (the trailing 1 makes a patch cover all of its channels) and
      ``(H, W)`` for grayscale ``(H, W)``: the mask broadcasts to one example.
    """
    if len(image_shape) not in (2, 3):
        raise ValueError(f"image_shape must be (H, W) or (H, W, C), got {tuple(image_shape)}")
    image_size(jax.ShapeDtypeStruct((1, *image_shape), jnp.float32), "square_patches")
    h, w = (size, size) if np.ndim(size) == 0 else tuple(size)
    h, w = as_count(h, "patch height"), as_count(w, "patch width")
    rows, cols = int(image_shape[0]), int(image_shape[1])
    if h > rows or w > cols:  # like occlusion's window: one feature would explain nothing
        raise ValueError(
            f"patch ({h}, {w}) is larger than the image ({rows}, {cols}): use a patch of at "
            f"most ({rows}, {cols})"
        )
    per_row = -(-cols // w)
    ids = (np.arange(rows)[:, None] // h) * per_row + np.arange(cols)[None, :] // w
    ids = ids.astype(np.int32)
    return ids[..., None] if len(image_shape) == 3 else ids


def feature_groups(feature_mask: Any, x: Array) -> tuple[Array, int]:
    """Group index per feature, shaped ``x.shape[1:]``, numbered 0..G-1, and G: the
    ``feature_mask`` convention of every method over groups of features (``None``:
    every element its own group; a mask broadcastable to one example, shared by the
    batch)."""
    features = x.shape[1:]
    if feature_mask is None:
        return jnp.arange(math.prod(features), dtype=jnp.int32).reshape(features), math.prod(
            features
        )
    if isinstance(feature_mask, jax.core.Tracer):
        raise ValueError(
            "feature_mask must be a concrete array (the number of groups sets the number "
            "of forward passes); build it outside jax.jit"
        )
    mask = np.asarray(feature_mask)
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"feature_mask must hold integer group ids, got dtype {mask.dtype}")
    if mask.ndim == x.ndim and mask.shape[0] == 1:
        mask = mask[0]
    try:
        mask = np.broadcast_to(mask, features)
    except ValueError:
        raise ValueError(
            f"feature_mask of shape {np.shape(feature_mask)} does not broadcast to one "
            f"example's shape {features} (the mask is shared by the whole batch)"
        ) from None
    ids, inverse = np.unique(mask, return_inverse=True)
    return jnp.asarray(inverse.reshape(features), jnp.int32), len(ids)


def _non_identity_permutation(key: Array, n: int) -> Array:
    """A uniform random permutation of ``range(n)`` other than the identity (n >= 2):
    permutations are drawn from ``fold_in(key, attempt)`` until one moves an element."""
    identity = jnp.arange(n)

    def draw(attempt):
        return jax.random.permutation(jax.random.fold_in(key, attempt), n)

    def again(state):
        return jnp.all(state[1] == identity)

    def body(state):
        attempt = state[0] + 1
        return attempt, draw(attempt)

    return jax.lax.while_loop(again, body, (0, draw(0)))[1]


@functools.partial(jax.jit, static_argnums=(1, 2))
def _group_permutations(key: Array, count: int, n: int) -> Array:
    """Group g's permutation of the batch, drawn from ``fold_in(key, g)``: (count, n).
    Jitted here, once per (count, n): called eagerly, the draws' while_loop would be
    traced and compiled again on every call (seconds on a CPU)."""
    group_keys = jax.vmap(lambda g: jax.random.fold_in(key, g))(jnp.arange(count))
    return jax.vmap(lambda k: _non_identity_permutation(k, n))(group_keys)


def _single_key(key: Array) -> Array:
    key = jnp.asarray(key)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    if key.shape != ():
        raise ValueError(
            "feature_permutation takes one PRNG key (the permutations are across the "
            f"batch, not per example), got key shape {key.shape}"
        )
    return key


def feature_permutation(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    feature_mask: Array | np.ndarray | None = None,
) -> Array:
    """Permutation importance of each feature group, per example (module docstring).

    Args:
      fn: model function, batch -> logits.
      x: inputs ``(N, ...)`` with ``N >= 2``.
      target: class per example, one class, or ``None`` (predicted class).
      key: PRNG key (required); group g is shuffled by a permutation drawn from
        ``fold_in(key, g)``, so the result depends on neither ``batch_size`` nor on the
        order groups are run.
      baseline: must be None (the replacement values come from the other examples).
      batch_size: perturbed examples per forward pass.
      feature_mask: integer group ids broadcastable to one example's shape
        (``x.shape[1:]``, or with a leading 1), e.g. :func:`square_patches`; ``None``
        makes every scalar feature its own group.

    Returns:
      float32 attributions shaped like ``x``: every feature holds its group's drop.

    Raises:
      ValueError: a batch of one, a mask that does not fit, a non-integer mask.
    """
    refuse_baseline(baseline, "feature_permutation")
    require_key(key, "feature_permutation")
    x = as_input(x)
    n = x.shape[0]
    if n < 2:
        raise ValueError(
            "feature_permutation permutes features across the batch, so it needs at "
            f"least 2 examples, got a batch of {n}; explain more examples at once"
        )
    key = _single_key(key)
    with layout_checked(fn, x):  # a mask that does not fit a misread x: say why
        groups, count = feature_groups(feature_mask, x)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    perms = _group_permutations(key, count, n)  # (G, N)

    def perturb(example: Array, group: Array) -> Array:
        inside = groups[None] == per_example(group, groups[None])
        return jnp.where(inside, x[perms[group, example]], x[example])

    drops = _drops(fn, x, target, count, perturb, batch_size)
    return jnp.take(drops, groups, axis=1)  # every feature gets its group's drop


# Its maps depend on the other examples of the batch: transforms that hand a method one
# example's copies at a time (noise_tunnel) refuse it.
feature_permutation.mixes_examples = True


def _window_geometry(
    shape: tuple[int, ...], window, stride
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Window, stride and number of positions per axis of one example of ``x`` of
    ``shape``, checked."""
    features = shape[1:]
    if np.ndim(window) == 0:
        # An int: a square spatial window on images (H, W, C), else every axis.
        window = (window,) * (2 if len(features) == 3 else len(features))
    window = tuple(window)
    if len(window) == len(features) - 1:  # images: the window spans all channels
        if len(features) == 3:
            image_size(jax.ShapeDtypeStruct(shape, jnp.float32), "occlusion")
        window = window + (features[-1],)
        stride = stride if np.ndim(stride) == 0 else tuple(stride) + (features[-1],)
    if len(window) != len(features):
        raise ValueError(
            f"window {window} must give a size for every axis of one example {features} "
            f"(or for all but the channel axis)"
        )
    stride = (stride,) * len(window) if np.ndim(stride) == 0 else tuple(stride)
    if len(stride) != len(window):
        raise ValueError(f"stride {stride} must be an int or match the window {window}")
    window = tuple(as_count(w, "window size") for w in window)
    stride = tuple(as_count(s, "stride") for s in stride)
    too_big = [i for i, (w, f) in enumerate(zip(window, features)) if w > f]
    if too_big:
        raise ValueError(f"window {window} is larger than the input {features} on axis {too_big}")
    gaps = [i for i, (w, f, s) in enumerate(zip(window, features, stride)) if w < f and s > w]
    if gaps:
        raise ValueError(
            f"stride {stride} is larger than the window {window} on axis {gaps}: features "
            "between windows would never be occluded; use a stride <= the window"
        )
    positions = tuple(-(-(f - w) // s) + 1 for f, w, s in zip(features, window, stride))
    return window, stride, positions


def occlusion(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: float | Array | None = None,
    batch_size: int | None = None,
    window: int | Sequence[int],
    stride: int | Sequence[int] = 1,
) -> Array:
    """Sliding-window occlusion (module docstring).

    Args:
      fn: model function, batch -> logits.
      x: inputs ``(N, ...)``.
      target: class per example, one class, or ``None`` (predicted class).
      key: unused (deterministic); accepted so every method has one signature.
      baseline: what fills the window: ``None`` (zeros), a scalar, or an array
        broadcastable to ``x``.
      batch_size: occluded examples per forward pass.
      window: window size along every axis of one example (``x.shape[1:]``), or along
        all but the last (channel) axis, which it then covers whole: ``(4, 4)`` on
        ``(N, 28, 28, 1)`` images. An int on images ``(N, H, W, C)`` is a square
        spatial window over all channels (``4`` means ``(4, 4)``); on other inputs it
        is the size along every axis.

    Returns:
      float32 attributions shaped like ``x``.
    """
    x = as_input(x)
    features = x.shape[1:]
    with layout_checked(fn, x):  # a window that does not fit a misread x: say why
        window, stride, positions = _window_geometry(x.shape, window, stride)
        baseline = as_baseline(baseline, x)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    grids = [
        jnp.arange(f).reshape((1,) + (1,) * d + (f,) + (1,) * (len(features) - d - 1))
        for d, f in enumerate(features)
    ]

    def perturb(example: Array, position: Array) -> Array:
        corner = jnp.unravel_index(position, positions)
        inside = jnp.ones((position.shape[0],) + features, bool)
        for d, grid in enumerate(grids):
            start = per_example(corner[d] * stride[d], grid)
            inside &= (grid >= start) & (grid < start + window[d])
        return jnp.where(inside, baseline[example], x[example])

    drops = _drops(fn, x, target, math.prod(positions), perturb, batch_size)
    # Window p covers feature f along axis d iff start_d(p) <= f_d < start_d(p) + w_d, so
    # the sum over windows factorises into one 0/1 matrix per axis: an einsum.
    covers = [
        (np.arange(f)[None] >= s * np.arange(p)[:, None])
        & (np.arange(f)[None] < s * np.arange(p)[:, None] + w)
        for f, w, s, p in zip(features, window, stride, positions)
    ]
    covers = [jnp.asarray(c, jnp.float32) for c in covers]
    axes = "abcdefgh"[: len(features)]
    spec = ",".join(f"{a}{a.upper()}" for a in axes)
    total = jnp.einsum(f"n{axes},{spec}->n{axes.upper()}", drops.reshape((-1, *positions)), *covers)
    covered = jnp.einsum(
        f"{axes},{spec}->{axes.upper()}", jnp.ones(positions, jnp.float32), *covers
    )
    return jnp.where(covered > 0, total / jnp.maximum(covered, 1.0), 0.0)
