r"""Training-data attribution: which training examples a prediction owes its loss to.

TracIn (Pruthi, Liu, Kale & Sundararajan 2020, "Estimating Training Data Influence by
Tracing Gradient Descent", NeurIPS, arXiv:2002.08484), in its checkpoint form
TracInCP: with parameters ``theta_c`` saved during training and the learning rate
``eta_c`` in force after each,

    TracIn(z, z') = sum_c eta_c  grad l(theta_c, z) . grad l(theta_c, z'),

the first-order change of the loss on a test example z' caused by the gradient steps
taken on the training example z, summed over the checkpoints: one step
``theta' = theta - eta grad l(theta, z)`` changes ``l(z')`` by
``-eta grad l(theta, z) . grad l(theta, z') + O(eta^2)`` (a test checks this). Positive
scores are *proponents* (training on z lowered the loss on z'), negative ones
*opponents*. ``TracIn(z, z)``, the **self-influence**, is large for examples that are
hard or mislabelled (the paper's data-cleaning use).

The contract is a loss of **one** example, ``loss(variables, example) -> scalar``, with
``example`` a pytree of arrays without the batch axis (an image and its label, say);
the per-example gradients are ``jax.vmap(jax.grad(loss))`` over a chunk of examples,
``batch_size`` at a time, and the test gradients are computed once per checkpoint.
``select`` names the leaves that are differentiated by their ``'/'``-joined path in
``variables`` (``'params/head/kernel'``): ``lambda path: path.startswith('params/')``
leaves batch-norm statistics out, ``lambda path: path.startswith('params/head/')`` is
the last layer only (the cheap variant the paper and Captum's ``TracInCPFast`` use);
without it every floating leaf is differentiated. For NNX, pass the state of
``nnx.split(model, nnx.Param, ...)``'s parameters as the variables (paths like
``'head/kernel'``) and let ``loss`` merge them with the rest.
Cost: one backward pass per example and checkpoint, and an ``(N_test, P)`` by
``(P, batch_size)`` product per chunk for P selected parameters; the programs are
compiled once per loss function (the same Python object), selection and shapes.

Differences from Captum's ``TracInCP`` (``captum.influence``):

* Captum loads each checkpoint into the model and computes per-example gradients by
  one backward pass per example (``sample_wise_grads_per_batch=False``) or with its
  own batched hooks (``True``, for a few layer types); here they are ``vmap`` of
  ``grad``, for any model and any loss.
* Captum's ``layers=`` chooses modules; ``select`` chooses parameters, so a layer's
  bias can be left out, and non-trainable state (batch-norm statistics) is excluded by
  path rather than by being a buffer.

Similarity (:func:`similarity_influence`, Captum's ``SimilarityInfluence``) is the
gradient-free neighbour: the training examples whose activation at a layer is closest
to the test example's, by cosine similarity (largest first) or Euclidean distance
(smallest first): which training images the model sees this one as. Captum writes every training activation to disk and reads it
back; here the training set streams through the model ``batch_size`` examples at a
time and only the ``(N_test, N_train)`` scores are kept.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.attribution.core import Array, as_count, as_input, map_over_samples
from fmi_jax.attribution.handle import layer_call

__all__ = [
    "SIMILARITY_METRICS",
    "SimilarExamples",
    "self_influence",
    "similarity_influence",
    "tracin",
]

SIMILARITY_METRICS = ("cosine", "euclidean")

Loss = Callable[[Any, Any], Array]


def _path(key_path: tuple[Any, ...]) -> str:
    """``'params/head/kernel'`` for a Linen variable, ``'layers/0/kernel'`` for a list
    entry; the trailing ``value`` of an NNX variable's array is dropped, so an
    ``nnx.State`` leaf reads ``'head/kernel'``."""
    parts = []
    for key in key_path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    if len(parts) > 1 and parts[-1] == "value" and hasattr(key_path[-1], "name"):
        parts.pop()
    return "/".join(parts)


def _leaves(variables: Any) -> list[tuple[str, Any]]:
    return [(_path(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]]


def _checkpoints(checkpoints: Any, learning_rates: Any) -> tuple[list[Any], list[float]]:
    if not isinstance(checkpoints, Sequence) or isinstance(checkpoints, (str, bytes)):
        raise ValueError(
            "checkpoints must be a sequence of parameter pytrees (one per saved checkpoint)"
        )
    if not checkpoints:
        raise ValueError("checkpoints is empty: pass at least one set of parameters")
    rates = np.asarray(learning_rates, np.float64)
    if rates.ndim == 0:
        rates = np.full(len(checkpoints), float(rates))
    rates = [float(r) for r in rates.ravel()]
    if len(rates) != len(checkpoints):
        raise ValueError(
            f"{len(rates)} learning rates for {len(checkpoints)} checkpoints: give one per "
            "checkpoint, or one for all"
        )
    if not (all(math.isfinite(r) and r >= 0 for r in rates) and any(r > 0 for r in rates)):
        raise ValueError(
            f"learning rates must be finite, non-negative and not all zero, got {rates}"
        )
    first = _leaves(checkpoints[0])
    for i, variables in enumerate(checkpoints[1:], start=1):
        leaves = _leaves(variables)
        if [p for p, _ in leaves] != [p for p, _ in first]:
            raise ValueError(
                f"checkpoints[{i}] has another structure than checkpoints[0]: every "
                "checkpoint must hold the same model's variables"
            )
        for (path, a), (_, b) in zip(first, leaves):
            if np.shape(a) != np.shape(b) or jnp.result_type(a) != jnp.result_type(b):
                raise ValueError(
                    f"checkpoints[{i}] has {path} of shape {np.shape(b)} "
                    f"{jnp.result_type(b)}, checkpoints[0] {np.shape(a)} {jnp.result_type(a)}"
                )
    return list(checkpoints), rates


def _selection(variables: Any, select: Callable[[str], bool] | None) -> tuple[bool, ...]:
    """Which leaves are differentiated: ``select(path)``, or with None every leaf
    whose dtype is floating (a step counter or any other integer leaf is fixed)."""
    leaves = _leaves(variables)

    def floating(leaf: Any) -> bool:
        return jnp.issubdtype(jnp.result_type(leaf), jnp.floating)

    if select is None:
        chosen = [floating(leaf) for _, leaf in leaves]
    else:
        chosen = [bool(select(path)) for path, _ in leaves]
        for (path, leaf), c in zip(leaves, chosen):
            if c and not floating(leaf):
                raise ValueError(
                    f"select chose {path}, of dtype {jnp.result_type(leaf)}: only floating "
                    "leaves have gradients"
                )
    if not any(chosen):
        paths = [path for path, _ in leaves]
        raise ValueError(
            f"select chose none of the {len(paths)} leaves (paths like {paths[:3]}): "
            "it gets each leaf's '/'-joined path and returns True to differentiate it"
        )
    return tuple(chosen)


def _examples(data: Any, name: str) -> tuple[Any, int]:
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(f"{name} holds no arrays: pass a pytree of batched arrays (x, y)")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes or len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            f"{name} must be a pytree of arrays with one common, non-empty batch axis "
            f"first; got leading sizes {sorted(str(s) for s in sizes)}"
        )
    for leaf in leaves:
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating) and not bool(
            jnp.all(jnp.isfinite(leaf))
        ):
            raise ValueError(f"{name} contains NaN or Inf")
    return jax.tree.map(jnp.asarray, data), sizes.pop()


def _gradient_fn(loss: Loss, treedef: Any, chosen: tuple[bool, ...]):
    """``(variables, chunk) -> (B, P)``: the flattened float32 per-example gradients
    of the selected leaves, the others held fixed."""

    def per_example(selected: list[Array], fixed: list[Array], example: Any) -> Array:
        def example_loss(selected):
            it_s, it_f = iter(selected), iter(fixed)
            leaves = [next(it_s) if c else next(it_f) for c in chosen]
            return jnp.asarray(loss(jax.tree.unflatten(treedef, leaves), example))

        shape = jax.eval_shape(example_loss, selected).shape
        if shape != ():
            raise ValueError(
                f"loss returned shape {shape}; it must be the scalar loss of one example "
                "(the batch axis is vmapped over)"
            )
        gradient = jax.grad(example_loss)(selected)
        return jnp.concatenate([g.astype(jnp.float32).ravel() for g in gradient])

    def gradients(variables: Any, chunk: Any) -> Array:
        leaves = jax.tree.leaves(variables)
        selected = [leaf for leaf, c in zip(leaves, chosen) if c]
        fixed = [leaf for leaf, c in zip(leaves, chosen) if not c]
        return jax.vmap(per_example, in_axes=(None, None, 0))(selected, fixed, chunk)

    return gradients


def _take(data: Any, index: Array) -> Any:
    return jax.tree.map(lambda leaf: leaf[index], data)


def _count(data: Any) -> int:
    return jax.tree.leaves(data)[0].shape[0]


def _chunked_gradients(gradients, variables: Any, data: Any, batch_size: int | None) -> Array:
    """``(N, P)`` gradients of every example, ``batch_size`` examples per pass."""

    def evaluate(example: Array, _: Array) -> Array:
        return gradients(variables, _take(data, example))

    return map_over_samples(evaluate, _count(data), 1, batch_size=batch_size)[:, 0]


def _influence(variables, rate, train, test, *, loss, chosen, batch_size):
    gradients = _gradient_fn(loss, jax.tree.structure(variables), chosen)
    test_gradients = _chunked_gradients(gradients, variables, test, batch_size)  # (N_test, P)

    def evaluate(example: Array, _: Array) -> Array:
        return gradients(variables, _take(train, example)) @ test_gradients.T

    scores = map_over_samples(evaluate, _count(train), 1, batch_size=batch_size)[:, 0]
    return rate * scores.T


def _self_influence(variables, rate, data, *, loss, chosen, batch_size):
    gradients = _gradient_fn(loss, jax.tree.structure(variables), chosen)

    def evaluate(example: Array, _: Array) -> Array:
        g = gradients(variables, _take(data, example))
        return jnp.sum(g * g, axis=1)

    return rate * map_over_samples(evaluate, _count(data), 1, batch_size=batch_size)[:, 0]


@functools.lru_cache(maxsize=4)
def _cached(kind: Callable[..., Array], loss: Loss, chosen: tuple[bool, ...], batch_size):
    return jax.jit(functools.partial(kind, loss=loss, chosen=chosen, batch_size=batch_size))


def _compiled(kind: Callable[..., Array], loss: Loss, chosen: tuple[bool, ...], batch_size):
    """``kind`` jitted for one loss, selection and chunk size. Kept for the last four,
    so that repeated calls with the same loss function compile once per shape; the
    cache holds those loss functions (and what they close over), and no more. A loss
    defined anew for every call (a lambda) compiles every time, and one that cannot
    be hashed is compiled for this call only."""
    try:
        return _cached(kind, loss, chosen, batch_size)
    except TypeError:
        return jax.jit(functools.partial(kind, loss=loss, chosen=chosen, batch_size=batch_size))


def tracin(
    loss: Loss,
    checkpoints: Sequence[Any],
    train: Any,
    test: Any,
    *,
    learning_rates: float | Sequence[float] = 1.0,
    select: Callable[[str], bool] | None = None,
    batch_size: int | None = None,
) -> Array:
    """TracInCP scores of every training example on every test example (module
    docstring): ``scores[i, j] = sum_c eta_c grad l(theta_c, train_j) .
    grad l(theta_c, test_i)``.

    Args:
      loss: ``loss(variables, example) -> scalar``, the loss of one example.
      checkpoints: the variables saved during training, one pytree per checkpoint.
      train: the training examples, a pytree of arrays ``(N_train, ...)`` (e.g.
        ``(images, labels)``).
      test: the examples to explain, a pytree like ``train`` with ``N_test`` rows.
      learning_rates: the learning rate after each checkpoint, or one for all.
      select: which leaves to differentiate, by ``'/'``-joined path; None: every
        floating leaf (batch-norm statistics too: pass
        ``lambda path: path.startswith('params/')`` for a Linen model's parameters).
      batch_size: examples per pass of per-example gradients, training and test;
        None: all at once. Memory: the test gradients, ``N_test x P`` floats, plus
        one chunk's ``batch_size x P`` gradients and its activations.

    Returns:
      float32 ``(N_test, N_train)``.
    """
    checkpoints, rates = _checkpoints(checkpoints, learning_rates)
    train, num_train = _examples(train, "train")
    test, num_test = _examples(test, "test")
    if batch_size is not None:
        as_count(batch_size, "batch_size")
    chosen = _selection(checkpoints[0], select)
    influence = _compiled(_influence, loss, chosen, batch_size)
    total = jnp.zeros((num_test, num_train), jnp.float32)
    for variables, rate in zip(checkpoints, rates):
        total = total + influence(variables, jnp.float32(rate), train, test)
    return total


def self_influence(
    loss: Loss,
    checkpoints: Sequence[Any],
    data: Any,
    *,
    learning_rates: float | Sequence[float] = 1.0,
    select: Callable[[str], bool] | None = None,
    batch_size: int | None = None,
) -> Array:
    """``TracIn(z, z) = sum_c eta_c |grad l(theta_c, z)|^2`` for every example of
    ``data`` (arguments as in :func:`tracin`): float32 ``(N,)``, highest for the
    examples the model found hardest to fit, mislabelled ones first."""
    checkpoints, rates = _checkpoints(checkpoints, learning_rates)
    data, count = _examples(data, "data")
    if batch_size is not None:
        as_count(batch_size, "batch_size")
    chosen = _selection(checkpoints[0], select)
    influence = _compiled(_self_influence, loss, chosen, batch_size)
    total = jnp.zeros((count,), jnp.float32)
    for variables, rate in zip(checkpoints, rates):
        total = total + influence(variables, jnp.float32(rate), data)
    return total


class SimilarExamples(NamedTuple):
    """The ``top_k`` training examples closest to each test example, closest first.

    Attributes:
      indices: int32 ``(N_test, top_k)``, positions in the training set.
      scores: float32 ``(N_test, top_k)``: cosine similarities (descending) or
        Euclidean distances (ascending).
    """

    indices: Array
    scores: Array


def _rows(values: Array) -> Array:
    return values.reshape(values.shape[0], -1).astype(jnp.float32)


def _unit_rows(rows: Array) -> Array:
    """Rows divided by their L2 norm; a zero row stays zero (its cosine similarity with
    anything is then 0, Captum's ``replace_nan=0``)."""
    norms = jnp.sqrt(jnp.sum(rows * rows, axis=1, keepdims=True))
    return jnp.where(norms > 0, rows / jnp.where(norms > 0, norms, 1.0), 0.0)


def similarity_influence(
    model: Any,
    test: Array,
    train: Array,
    *,
    layer: str | None = None,
    metric: str = "cosine",
    top_k: int = 1,
    batch_size: int | None = None,
) -> SimilarExamples:
    """The training examples whose activations at ``layer`` are most similar to each
    test example's (Captum's ``SimilarityInfluence``).

    Cosine similarity ``a . b / (|a| |b|)`` of the flattened activations, largest
    first, or Euclidean distance ``|a - b|``, smallest first (computed from the
    differences, so an identical activation is at distance exactly 0). Ties keep the
    training set's order.

    Args:
      model: a model handle (:func:`~fmi_jax.attribution.flax_model`); unused, and may
        be None, when ``layer`` is None.
      test: the inputs to explain, ``(N_test, ...)``.
      train: the training inputs, ``(N_train, ...)``, examples shaped like ``test``'s.
      layer: the module path of the layer to compare at (``'conv3'``); None compares
        the inputs themselves.
      metric: ``'cosine'`` or ``'euclidean'``.
      top_k: how many training examples to return per test example.
      batch_size: training (and test) examples per forward pass; None: all at once.

    Returns:
      :class:`SimilarExamples`.
    """
    if metric not in SIMILARITY_METRICS:
        raise ValueError(f"metric must be one of {SIMILARITY_METRICS}, got {metric!r}")
    test, train = as_input(test, "test"), as_input(train, "train")
    if test.shape[1:] != train.shape[1:]:
        raise ValueError(
            f"test examples of shape {test.shape[1:]} and training examples of shape "
            f"{train.shape[1:]} differ: both go through the same model"
        )
    top_k = as_count(top_k, "top_k", 1, train.shape[0])
    if layer is None:
        if batch_size is not None:
            as_count(batch_size, "batch_size")

        def activations(x: Array) -> Array:
            return _rows(x)
    else:
        handle, _, _ = layer_call(model, test, layer, "similarity_influence", batch_size)

        def activations(x: Array) -> Array:
            return _rows(handle.capture(x, layer)[1])

    reference = map_over_samples(
        lambda example, _: activations(test[example]), test.shape[0], 1, batch_size=batch_size
    )[:, 0]
    if metric == "cosine":
        reference = _unit_rows(reference)

    def scores(example: Array, _: Array) -> Array:
        rows = activations(train[example])
        if metric == "cosine":
            return _unit_rows(rows) @ reference.T
        # One test row at a time: the differences of a chunk, never (chunk, N_test, D).
        return jax.lax.map(lambda r: jnp.sqrt(jnp.sum(jnp.square(rows - r), axis=1)), reference).T

    table = map_over_samples(scores, train.shape[0], 1, batch_size=batch_size)[:, 0].T
    ranked = table if metric == "cosine" else -table
    values, indices = jax.lax.top_k(ranked, top_k)
    return SimilarExamples(
        indices=indices.astype(jnp.int32), scores=values if metric == "cosine" else -values
    )
