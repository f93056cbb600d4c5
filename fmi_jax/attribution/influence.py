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

Influence functions (Koh & Liang 2017, "Understanding Black-box Predictions via
Influence Functions", ICML, arXiv:1703.04730) ask the question of a model at one set of
parameters ``theta``, the minimum of the training objective
``sum_i l(theta, z_i) + lambda / 2 |theta|^2``: how would the loss on z' change if z
weighed a little more in that objective? With ``H = sum_i grad^2 l(theta, z_i)`` (over
the ``data`` given to :func:`hessian_eigen`: the training set, or a sample of it, which
scales ``H`` by its share) the minimum moves by
``d theta / d eps = -(H + lambda I)^-1 grad l(theta, z)`` when z's weight grows by eps,
so

    IF(z, z') = grad l(theta, z') . (H + lambda I)^-1 grad l(theta, z)
              = -d l(theta_eps, z') / d eps,

positive for proponents as in TracIn (Koh & Liang's ``I_up,loss`` is its negative);
removing z (eps = -1) raises the loss on z' by about ``IF(z, z')``. Tests check both
against refitting a ridge and a logistic regression. ``lambda`` (``damping``) is that
L2 penalty; a model trained on the *mean* loss with weight decay ``wd`` has
``lambda = N wd``. A network's ``H`` is not invertible and has negative eigenvalues,
so the inverse is taken over its top eigenpairs ``(mu_k, u_k)``
(:func:`hessian_eigen`),

    IF(z, z') = sum_k (u_k . grad l(z')) (u_k . grad l(z)) / (mu_k + lambda),

over the pairs with ``mu_k + lambda > min_eigenvalue`` (the directions left out count
0, not ``1 / lambda``; by default ``min_eigenvalue`` is the float32 rounding floor
``100 eps max |mu_k|``: a Hessian over fewer examples than parameters has many zero
eigenvalues, which come out of a float32 eigendecomposition as noise within a few
``eps max |mu_k|`` of 0): an "influence embedding"
``e(z)_k = u_k . grad l(z) / sqrt(mu_k + lambda)`` per example, and a score that is
the dot product of two embeddings. The eigenpairs come from the Hessian itself
(``solver='exact'``: ``P`` Hessian-vector products and an eigendecomposition, for up to
16,384 parameters, the last layer of a small classifier: the Fashion-MNIST CNN's has
2,570) or from the Arnoldi iteration of Schioppa, Zablotskaia, Vilar & Sokolov (2022,
"Scaling Up Influence Functions", AAAI, arXiv:2112.03052; ``solver='arnoldi'``):
``iterations`` Hessian-vector products (``jax.jvp`` of ``jax.grad``, never the matrix)
from a random start, each new direction orthogonalised twice against all earlier
ones, then the eigenpairs of the small projected matrix (Ritz pairs), whose extremes
converge first. Memory: ``(iterations + 1) x P`` floats for the basis.

Differences from Captum's ``NaiveInfluenceFunction`` and ``ArnoldiInfluenceFunction``:

* The same score, with Captum's ``hessian_reg`` as ``damping`` and its
  ``hessian_inverse_tol`` as ``min_eigenvalue`` (Captum's defaults: 1e-6 and 1e-5 for
  the naive solver, 1e-3 and 1e-4 for Arnoldi; here 0 and ``100 eps max |mu_k|``, a
  cut-off relative to the spectrum, as a pseudo-inverse takes it), and its
  ``projection_dim`` as ``rank``. The Hessian is computed once
  (:func:`hessian_eigen`) and passed to any number of calls, for any training and
  test examples.
* Captum's Arnoldi orthogonalises each new direction once, uses ``arnoldi_dim - 1``
  of its steps, and stops when a new direction's norm falls below ``arnoldi_tol``,
  an absolute 0.1 by default, in the units of a Hessian that grows with the number of
  examples. Here a direction is orthogonalised twice (in float32 once is not enough
  after a few dozen steps); one whose norm is below 1e-4 of the largest
  ``|H q|`` so far is rounding error (the basis spans an invariant subspace: a
  Hessian of low rank, a parameter the loss never reads, repeated eigenvalues) and
  is replaced by a random direction orthogonal to the basis, so every one of the
  ``iterations`` steps adds a direction and ``iterations = P`` is exact. Captum takes
  the eigenpairs of the unsymmetric projected matrix with ``torch.linalg.eig``; here
  of its symmetric part.

Similarity (:func:`similarity_influence`, Captum's ``SimilarityInfluence``) is the
gradient-free neighbour: the training examples whose activation at a layer is closest
to the test example's, by cosine similarity (largest first) or Euclidean distance
(smallest first): which training images the model sees this one as. Captum writes every
training activation to disk and reads it back; here the training set streams through the
model ``batch_size`` examples at a time and only the ``(N_test, N_train)`` scores are
kept.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from fmi_jax.attribution.core import (
    Array,
    as_count,
    as_input,
    as_number,
    map_over_samples,
    require_key,
)
from fmi_jax.attribution.handle import layer_call

__all__ = [
    "DEFAULT_ARNOLDI_ITERATIONS",
    "DEFAULT_ARNOLDI_RANK",
    "EXACT_HESSIAN_LIMIT",
    "HESSIAN_SOLVERS",
    "SIMILARITY_METRICS",
    "HessianEigen",
    "SimilarExamples",
    "hessian_eigen",
    "influence_function",
    "influence_function_self",
    "self_influence",
    "similarity_influence",
    "tracin",
]

SIMILARITY_METRICS = ("cosine", "euclidean")
HESSIAN_SOLVERS = ("exact", "arnoldi")
DEFAULT_ARNOLDI_ITERATIONS = 200
DEFAULT_ARNOLDI_RANK = 50
EXACT_HESSIAN_LIMIT = 16384

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


def _jit(kind: Callable[..., Array], loss: Loss, chosen: tuple[bool, ...], batch_size, donate):
    return jax.jit(
        functools.partial(kind, loss=loss, chosen=chosen, batch_size=batch_size),
        donate_argnums=donate,
    )


_cached = functools.lru_cache(maxsize=8)(_jit)


def _compiled(
    kind: Callable[..., Array],
    loss: Loss,
    chosen: tuple[bool, ...],
    batch_size,
    donate: tuple[int, ...] = (),
):
    """``kind`` jitted for one loss, selection and chunk size (its ``donate``
    arguments donated). Kept for the last eight, so that repeated calls with the same
    loss function compile once per shape; the cache holds those loss functions (and
    what they close over), and no more. A loss defined anew for every call (a lambda)
    compiles every time, and one that cannot be hashed is compiled for this call only."""
    try:
        return _cached(kind, loss, chosen, batch_size, donate)
    except TypeError:
        return _jit(kind, loss, chosen, batch_size, donate)


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
    _check_scalar_loss(loss, checkpoints[0], test)
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
    _check_scalar_loss(loss, checkpoints[0], data)
    influence = _compiled(_self_influence, loss, chosen, batch_size)
    total = jnp.zeros((count,), jnp.float32)
    for variables, rate in zip(checkpoints, rates):
        total = total + influence(variables, jnp.float32(rate), data)
    return total


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["values", "vectors"], meta_fields=["paths"]
)
@dataclasses.dataclass(frozen=True)
class HessianEigen:
    """Top eigenpairs of the training Hessian ``H = sum_i grad^2 l(theta, z_i)`` of the
    selected parameters (:func:`hessian_eigen`), largest eigenvalue first. A pytree
    (``paths`` is static), so it can be jitted over, moved and saved.

    Attributes:
      values: float32 ``(K,)``, descending.
      vectors: float32 ``(P, K)``, orthonormal columns over the ``P`` selected
        parameters, flattened leaf by leaf in the order of ``paths``.
      paths: the ``'/'``-joined paths of the differentiated leaves.
    """

    values: Array
    vectors: Array
    paths: tuple[str, ...]


def _flat_loss(loss: Loss, variables: Any, chosen: tuple[bool, ...]):
    """``(theta, example_loss)``: the selected leaves as one vector (their common
    dtype) and the loss of one example as a function of that vector, the other leaves
    held fixed."""
    treedef = jax.tree.structure(variables)
    leaves = jax.tree.leaves(variables)
    selected = [leaf for leaf, c in zip(leaves, chosen) if c]
    fixed = [leaf for leaf, c in zip(leaves, chosen) if not c]
    theta, unravel = ravel_pytree(selected)

    def example_loss(flat: Array, example: Any) -> Array:
        it_s, it_f = iter(unravel(flat)), iter(fixed)
        merged = [next(it_s) if c else next(it_f) for c in chosen]
        return jnp.asarray(loss(jax.tree.unflatten(treedef, merged), example), jnp.float32)

    return theta, example_loss


def _sum_over_chunks(evaluate: Callable[[Array, Array], Array], count: int, batch_size):
    """``sum`` of ``evaluate(index, weight)`` over chunks of ``batch_size`` examples;
    the last chunk is padded with copies of the last example, weighted 0."""
    chunk = count if batch_size is None else min(batch_size, count)
    num_chunks = -(-count // chunk)

    def chunk_value(c: Array) -> Array:
        index = c * chunk + jnp.arange(chunk, dtype=jnp.int32)
        weight = (index < count).astype(jnp.float32)
        return evaluate(jnp.minimum(index, count - 1), weight)

    if num_chunks == 1:
        return chunk_value(jnp.int32(0))
    zeros = jnp.zeros(jax.eval_shape(chunk_value, jnp.int32(0)).shape, jnp.float32)
    total, _ = jax.lax.scan(
        lambda t, c: (t + chunk_value(c), None), zeros, jnp.arange(num_chunks, dtype=jnp.int32)
    )
    return total


def _hessian_products(variables, data, vectors, *, loss, chosen, batch_size):
    """``H v`` for every row ``v`` of ``vectors`` ``(K, P)``: forward-over-reverse
    products of the summed loss over ``data``, ``batch_size`` examples at a time."""
    theta, example_loss = _flat_loss(loss, variables, chosen)

    def evaluate(index: Array, weight: Array) -> Array:
        chunk = _take(data, index)

        def total(flat: Array) -> Array:
            return jnp.sum(weight * jax.vmap(example_loss, (None, 0))(flat, chunk))

        gradient = jax.grad(total)
        tangents = vectors.astype(theta.dtype)
        products = jax.vmap(lambda v: jax.jvp(gradient, (theta,), (v,))[1])(tangents)
        return products.astype(jnp.float32)

    return _sum_over_chunks(evaluate, _count(data), batch_size)


_EXACT_COLUMNS = 32  # Hessian columns per pass of the exact solver


def _exact_hessian(variables, data, *, loss, chosen, batch_size):
    """The ``(P, P)`` Hessian, ``_EXACT_COLUMNS`` unit vectors per pass, symmetrised."""
    size = int(_flat_loss(loss, variables, chosen)[0].shape[0])
    blocks = -(-size // _EXACT_COLUMNS)

    def columns(block: Array) -> Array:
        rows = block * _EXACT_COLUMNS + jnp.arange(_EXACT_COLUMNS)
        units = (rows[:, None] == jnp.arange(size)[None, :]).astype(jnp.float32)
        return _hessian_products(
            variables, data, units, loss=loss, chosen=chosen, batch_size=batch_size
        )

    matrix = jax.lax.map(columns, jnp.arange(blocks)).reshape(-1, size)[:size]
    return 0.5 * (matrix + matrix.T)


def _orthogonalise(basis: Array, vector: Array) -> tuple[Array, Array]:
    """``vector`` minus its projection on the rows of ``basis``, taken twice (once is
    not enough in float32 after a few dozen rows); returns the coefficients too."""
    highest = jax.lax.Precision.HIGHEST
    first = jnp.matmul(basis, vector, precision=highest)
    left = vector - jnp.matmul(first, basis, precision=highest)
    second = jnp.matmul(basis, left, precision=highest)
    return first + second, left - jnp.matmul(second, basis, precision=highest)


def _set_row(basis: Array, k: Array, left: Array) -> tuple[Array, Array]:
    """``basis`` with ``left / |left|`` as row ``k + 1``, and ``|left|``."""
    norm = jnp.sqrt(jnp.sum(left * left))
    row = jnp.where(norm > 0, left / jnp.where(norm > 0, norm, 1.0), 0.0)
    return basis.at[k + 1].set(row), norm


def _arnoldi_step(variables, data, basis, k, *, loss, chosen, batch_size):
    """One Arnoldi step: ``w = H q_k`` orthogonalised against the rows of ``basis``
    (rows after ``k`` are zero). Returns the coefficients ``(n + 1,)``, ``|H q_k|``,
    the norm of what is left and ``basis`` with that direction, normalised, as row
    ``k + 1``."""
    products = _hessian_products(
        variables, data, basis[k][None], loss=loss, chosen=chosen, batch_size=batch_size
    )[0]
    column, left = _orthogonalise(basis, products)
    basis, norm = _set_row(basis, k, left)
    return column, jnp.sqrt(jnp.sum(products * products)), norm, basis


@functools.partial(jax.jit, donate_argnums=0)
def _restart_row(basis: Array, k: Array, key: Array) -> Array:
    """``basis`` with a random unit direction orthogonal to its rows as row ``k + 1``."""
    vector = jax.random.normal(jax.random.fold_in(key, k), basis.shape[1:], jnp.float32)
    basis = basis.at[k + 1].set(0.0)  # the rounding error the step normalised
    return _set_row(basis, k, _orthogonalise(basis, vector)[1])[0]


_BREAKDOWN = 1e-4  # relative size of a new Arnoldi direction taken for rounding error


def _arnoldi(variables, data, key, *, steps, size, loss, chosen, batch_size):
    """The Ritz values (descending) and the orthonormal basis of ``steps`` Arnoldi
    steps. When ``H q_k`` lies in the span of the basis up to ``_BREAKDOWN`` of the
    largest ``|H q|`` (an invariant subspace: a Hessian of low rank, a parameter the
    loss never reads, repeated eigenvalues), what is left is rounding error: it is
    dropped, and the iteration goes on from a random direction orthogonal to the
    basis, so that ``steps = P`` spans the whole space. ``size`` is ``P``, the number
    of chosen parameters."""
    start_key, restart_key = jax.random.split(key)
    start = jax.random.normal(start_key, (size,), jnp.float32)
    basis = jnp.zeros((steps + 1, size), jnp.float32).at[0].set(start / jnp.linalg.norm(start))
    step = _compiled(_arnoldi_step, loss, chosen, batch_size, donate=(2,))
    projected = np.zeros((steps, steps), np.float64)
    scale = 0.0
    for k in range(steps):
        column, length, norm, basis = step(variables, data, basis, jnp.int32(k))
        column, length, norm = np.asarray(column, np.float64), float(length), float(norm)
        if not (np.all(np.isfinite(column)) and math.isfinite(norm)):
            raise ValueError(
                "the Hessian-vector products are not finite: the loss or its second "
                "derivatives are NaN or Inf at these variables"
            )
        projected[: k + 1, k] = column[: k + 1]
        scale = max(scale, length)
        if k + 1 == steps:
            break
        if norm > _BREAKDOWN * scale:
            projected[k + 1, k] = norm
        else:
            basis = _restart_row(basis, jnp.int32(k), restart_key)
    values, vectors = np.linalg.eigh(0.5 * (projected + projected.T))
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order], basis[:steps]


def _selected(variables: Any, chosen: tuple[bool, ...]) -> tuple[tuple[str, ...], int]:
    """The paths of the chosen leaves and their number of parameters."""
    picked = [(path, leaf) for (path, leaf), c in zip(_leaves(variables), chosen) if c]
    return tuple(path for path, _ in picked), sum(int(np.size(leaf)) for _, leaf in picked)


def _check_scalar_loss(loss: Loss, variables: Any, data: Any) -> None:
    """One line instead of an error from inside ``vmap`` when ``loss`` is not the scalar
    loss of one example (a loss written for a batch fails on one, or returns a vector)."""
    try:
        shape = jax.eval_shape(loss, variables, _take(data, 0)).shape
    except (TypeError, ValueError, IndexError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"loss(variables, example) failed on one example ({type(error).__name__}: "
            f"{first}); it must be the scalar loss of one example, without the batch axis "
            "(the batch axis is vmapped over)"
        ) from error
    if shape != ():
        raise ValueError(
            f"loss returned shape {shape}; it must be the scalar loss of one example "
            "(the batch axis is vmapped over)"
        )


def hessian_eigen(
    loss: Loss,
    variables: Any,
    data: Any,
    *,
    rank: int | None = None,
    solver: str = "exact",
    iterations: int | None = None,
    key: Array | None = None,
    select: Callable[[str], bool] | None = None,
    batch_size: int | None = None,
) -> HessianEigen:
    """The top ``rank`` eigenpairs of ``H = sum_i grad^2 l(theta, z_i)`` over ``data``,
    the inverse that :func:`influence_function` applies (module docstring).

    Args:
      loss: ``loss(variables, example) -> scalar``, the loss of one example.
      variables: the parameters ``theta`` to explain (one checkpoint).
      data: the examples the Hessian sums over, a pytree of arrays ``(N, ...)``:
        the training set, or a sample of it (which scales ``H`` by its share).
      rank: how many eigenpairs to keep, largest eigenvalue first; None: all ``P``
        for ``'exact'``, ``min(DEFAULT_ARNOLDI_RANK, iterations)`` for ``'arnoldi'``
        (the Ritz pairs from the middle of the spectrum have not converged: keep
        ``rank`` well below ``iterations``, unless ``iterations = P``).
      solver: ``'exact'`` forms the ``P x P`` Hessian (``P`` Hessian-vector products,
        ``EXACT_HESSIAN_LIMIT`` parameters at most) and decomposes it; ``'arnoldi'``
        runs ``iterations`` Hessian-vector products and keeps the Ritz pairs.
      iterations: Arnoldi steps (``'arnoldi'`` only); None:
        ``min(DEFAULT_ARNOLDI_ITERATIONS, P)``. At ``P`` the result is exact.
      key: PRNG key of Arnoldi's start vector (required by ``'arnoldi'``).
      select: which leaves to differentiate, by ``'/'``-joined path, as in
        :func:`tracin`; None: every floating leaf (batch-norm statistics too: pass
        ``lambda path: path.startswith('params/')`` for a Linen model's parameters).
      batch_size: examples per pass over ``data``; None: all at once. The exact
        solver pushes 32 tangents through each chunk, Arnoldi one.

    Returns:
      :class:`HessianEigen`.
    """
    if solver not in HESSIAN_SOLVERS:
        raise ValueError(f"solver must be one of {HESSIAN_SOLVERS}, got {solver!r}")
    data, _ = _examples(data, "data")
    if batch_size is not None:
        as_count(batch_size, "batch_size")
    chosen = _selection(variables, select)
    paths, size = _selected(variables, chosen)
    _check_scalar_loss(loss, variables, data)
    if solver == "exact":
        if iterations is not None:
            raise ValueError(
                "iterations is the Arnoldi solver's: drop it, or pass solver='arnoldi'"
            )
        if size > EXACT_HESSIAN_LIMIT:
            raise ValueError(
                f"solver='exact' forms the {size} x {size} Hessian of the selected "
                f"parameters (at most {EXACT_HESSIAN_LIMIT} parameters): pass "
                "solver='arnoldi', or select fewer leaves (the last layer's, say)"
            )
        rank = size if rank is None else as_count(rank, "rank", 1, size)
        hessian = _compiled(_exact_hessian, loss, chosen, batch_size)(variables, data)
        if not bool(jnp.all(jnp.isfinite(hessian))):
            raise ValueError(
                "the Hessian is not finite: the loss or its second derivatives are NaN "
                "or Inf at these variables"
            )
        values, vectors = jnp.linalg.eigh(hessian)
        values, vectors = values[::-1][:rank], vectors[:, ::-1][:, :rank]
    else:
        key = require_key(key, "hessian_eigen(solver='arnoldi')")
        steps = min(DEFAULT_ARNOLDI_ITERATIONS, size) if iterations is None else iterations
        steps = as_count(steps, "iterations", 1, size)
        if rank is None:
            rank = min(DEFAULT_ARNOLDI_RANK, steps)
        rank = as_count(rank, "rank (at most iterations)", 1, steps)
        ritz_values, ritz_vectors, basis = _arnoldi(
            variables,
            data,
            key,
            steps=steps,
            size=size,
            loss=loss,
            chosen=chosen,
            batch_size=batch_size,
        )
        values = jnp.asarray(ritz_values[:rank], jnp.float32)
        vectors = jnp.matmul(
            basis.T,
            jnp.asarray(ritz_vectors[:, :rank], jnp.float32),
            precision=jax.lax.Precision.HIGHEST,
        )
    return HessianEigen(values=values, vectors=vectors, paths=paths)


# The default cut-off, in units of float32 eps times the largest |eigenvalue|: the zero
# eigenvalues of a Hessian of low rank come out of a float32 eigendecomposition within
# a few eps of it (noise that a plain inverse turns into scores of 1e6 and more), while
# a direction of real curvature that float32 resolves lies well above.
_ROUNDING_EPS = 100


def _rounding_floor(values: Array) -> float:
    """``100 eps max_k |mu_k|`` (float32 ``eps``): the default cut-off of
    :func:`influence_function` (see ``_ROUNDING_EPS``)."""
    largest = float(jnp.max(jnp.abs(values))) if np.size(values) else 0.0
    return _ROUNDING_EPS * float(np.finfo(np.float32).eps) * largest


def _embedding_scale(hessian: HessianEigen, damping: float, min_eigenvalue: float | None) -> Array:
    """``1 / sqrt(mu_k + lambda)`` for the kept eigenpairs, 0 for the others."""
    damping = as_number(damping, "damping", minimum=0)
    if min_eigenvalue is None:
        min_eigenvalue = _rounding_floor(hessian.values)
    min_eigenvalue = as_number(min_eigenvalue, "min_eigenvalue", minimum=0)
    shifted = hessian.values + jnp.float32(damping)
    keep = shifted > min_eigenvalue
    if not bool(jnp.any(keep)):
        raise ValueError(
            f"no eigenvalue of the Hessian plus damping={damping} is above "
            f"min_eigenvalue={min_eigenvalue:.3g} (largest: {float(jnp.max(shifted)):.3g}): "
            "raise damping"
        )
    return jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, shifted, 1.0)), 0.0)


def _influence_setup(variables, hessian, damping, min_eigenvalue, batch_size):
    if not isinstance(hessian, HessianEigen):
        raise ValueError(
            f"hessian must be a HessianEigen (from hessian_eigen), got {type(hessian).__name__}"
        )
    if np.shape(hessian.values) != np.shape(hessian.vectors)[1:]:
        raise ValueError(
            f"hessian has {np.shape(hessian.values)} eigenvalues for eigenvectors of shape "
            f"{np.shape(hessian.vectors)}: one eigenvalue per column"
        )
    leaves = _leaves(variables)
    known = {path for path, _ in leaves}
    missing = [path for path in hessian.paths if path not in known]
    if missing:
        raise ValueError(
            f"variables have no leaf {missing[0]!r} of the Hessian's parameters: pass the "
            "variables (and leaf selection) that hessian_eigen was given"
        )
    chosen = tuple(path in hessian.paths for path, _ in leaves)
    _, size = _selected(variables, chosen)
    if size != hessian.vectors.shape[0]:
        raise ValueError(
            f"the Hessian's eigenvectors have {hessian.vectors.shape[0]} entries, the "
            f"variables' selected leaves {size} parameters: pass the variables that "
            "hessian_eigen was given"
        )
    if batch_size is not None:
        as_count(batch_size, "batch_size")
    scale = _embedding_scale(hessian, damping, min_eigenvalue)
    return chosen, scale


def _embeddings(gradients, variables, vectors, scale, data):
    return (
        jnp.matmul(gradients(variables, data), vectors, precision=jax.lax.Precision.HIGHEST) * scale
    )


def _function_influence(variables, vectors, scale, train, test, *, loss, chosen, batch_size):
    gradients = _gradient_fn(loss, jax.tree.structure(variables), chosen)

    def embed(data: Any) -> Callable[[Array, Array], Array]:
        return lambda example, _: _embeddings(
            gradients, variables, vectors, scale, _take(data, example)
        )

    reference = map_over_samples(embed(test), _count(test), 1, batch_size=batch_size)[:, 0]

    def evaluate(example: Array, sample: Array) -> Array:
        return jnp.matmul(
            embed(train)(example, sample), reference.T, precision=jax.lax.Precision.HIGHEST
        )

    return map_over_samples(evaluate, _count(train), 1, batch_size=batch_size)[:, 0].T


def _function_self_influence(variables, vectors, scale, data, *, loss, chosen, batch_size):
    gradients = _gradient_fn(loss, jax.tree.structure(variables), chosen)

    def evaluate(example: Array, _: Array) -> Array:
        e = _embeddings(gradients, variables, vectors, scale, _take(data, example))
        return jnp.sum(e * e, axis=1)

    return map_over_samples(evaluate, _count(data), 1, batch_size=batch_size)[:, 0]


def influence_function(
    loss: Loss,
    variables: Any,
    train: Any,
    test: Any,
    hessian: HessianEigen,
    *,
    damping: float = 0.0,
    min_eigenvalue: float | None = None,
    batch_size: int | None = None,
) -> Array:
    """Influence-function scores of every training example on every test example
    (module docstring): ``scores[i, j] = grad l(test_i) . (H + damping I)^-1
    grad l(train_j)``, the inverse taken over ``hessian``'s eigenpairs with
    ``mu_k + damping > min_eigenvalue``. About how much the loss on ``test_i`` would
    rise if ``train_j`` were left out of training.

    Args:
      loss: ``loss(variables, example) -> scalar``, the loss of one example.
      variables: the parameters the Hessian was computed at.
      train: the training examples to score, a pytree of arrays ``(N_train, ...)``.
      test: the examples to explain, a pytree like ``train`` with ``N_test`` rows.
      hessian: :func:`hessian_eigen` of ``loss`` at ``variables``; its leaves are the
        ones differentiated here.
      damping: ``lambda``, added to every eigenvalue (an L2 penalty
        ``lambda / 2 |theta|^2`` on the training objective); Captum's ``hessian_reg``.
      min_eigenvalue: eigenpairs with ``mu_k + damping`` at or below it are left out
        (negative curvature, and directions too flat to invert); Captum's
        ``hessian_inverse_tol``. None: the float32 rounding floor ``100 eps max |mu_k|``, so
        that the zero eigenvalues of a Hessian of low rank (fewer examples than
        parameters), which float32 returns as tiny positive numbers, are left out
        rather than inverted into scores of 1e6 and more; 0 keeps every positive one.
      batch_size: examples per pass of per-example gradients; None: all at once.

    Returns:
      float32 ``(N_test, N_train)``.
    """
    chosen, scale = _influence_setup(variables, hessian, damping, min_eigenvalue, batch_size)
    train, _ = _examples(train, "train")
    test, _ = _examples(test, "test")
    influence = _compiled(_function_influence, loss, chosen, batch_size)
    return influence(variables, hessian.vectors, scale, train, test)


def influence_function_self(
    loss: Loss,
    variables: Any,
    data: Any,
    hessian: HessianEigen,
    *,
    damping: float = 0.0,
    min_eigenvalue: float | None = None,
    batch_size: int | None = None,
) -> Array:
    """``IF(z, z) = grad l(z) . (H + damping I)^-1 grad l(z)`` for every example of
    ``data`` (arguments as in :func:`influence_function`): float32 ``(N,)``, the
    examples whose removal would most change their own loss first, mislabelled ones
    among them."""
    chosen, scale = _influence_setup(variables, hessian, damping, min_eigenvalue, batch_size)
    data, _ = _examples(data, "data")
    influence = _compiled(_function_self_influence, loss, chosen, batch_size)
    return influence(variables, hessian.vectors, scale, data)


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
