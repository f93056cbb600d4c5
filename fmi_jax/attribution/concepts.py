r"""Testing with concept activation vectors (TCAV): how much a class depends on a concept.

Kim, Wattenberg, Gilmer, Cai, Wexler, Viegas & Sayres (2018), "Interpretability Beyond
Feature Attribution: Quantitative Testing with Concept Activation Vectors (TCAV)",
ICML, arXiv:1711.11279. Instead of a map over pixels, TCAV answers a global question
("is the 'zebra' logit sensitive to stripes?") with a few dozen images of the concept
and a few sets of random images. Below, ``A(x)`` is the activation of a named layer,
flattened to a vector, and ``y_k`` the logit of class k.

* A **concept activation vector** (CAV) ``v_C`` is the normal of a linear boundary that
  separates the activations of concept examples (label +1) from those of random
  examples (label -1), pointing towards the concept. :func:`concept_activation_vector`
  fits it one of two ways:

  - ``'logistic'`` (the default): L2-regularised logistic regression,

        min_{w, b}  mean_i log(1 + exp(-y_i (w . A_i + b))) + (l2 / 2) |w|^2,

    strictly convex, so the CAV is unique: the same activations give the same vector
    on any machine and in any order. The minimiser lies in the span of the training
    activations (the penalty's gradient removes any other component), so it is solved
    there, as a problem of at most n + 1 unknowns for n examples however large the
    layer, by Newton's method with a backtracking line search, in float64 on the host.
  - ``'mean_difference'``: ``w = mean(concept) - mean(random)``, the direction of the
    nearest-centroid classifier. It is also the limit of the logistic CAV as ``l2``
    grows (at ``w = 0`` with the best bias the loss gradient is
    ``-(n_c n_r / n^2) (mean_c - mean_r)``), and it needs no solver.

  ``accuracy`` is the classifier's accuracy on held-out examples: of each set, evenly
  spaced examples (a fraction ``test_fraction``) are kept out of the fit. A CAV near
  50% separates nothing and its scores mean nothing (Kim et al. report it per CAV).
* The **conceptual sensitivity** of class k at x is the directional derivative of the
  logit along the unit CAV (Kim et al., eq. 1),

      S_{C,k}(x) = grad_A y_k(x) . v_C / |v_C|.

* The **TCAV score** of class k is the fraction of its examples whose logit rises
  along the concept, ``sign_count = |{x : S(x) > 0}| / |X|`` (eq. 2), and its
  magnitude-weighted companion ``magnitude = sum_x max(S, 0) / sum_x |S|``, both in
  [0, 1] (NaN for ``magnitude`` when every S is 0).
* **Significance.** A CAV against one random set can be noise. :func:`fit_cavs` fits
  each concept against each of R random sets and, as the null, random set
  ``(i + 1) mod R`` against random set i; :func:`tcav` scores a class along all of
  them (R scores per concept, R null scores) and compares each concept's sign counts
  with the null's by a two-sided Student t-test (equal variances, as Kim et al.'s code
  calls ``scipy.stats.ttest_ind``). A concept is significant when ``p < alpha / C``
  for C concepts tested together (Bonferroni, as in the paper). The test is the
  paper's, not an exact one: the R concept CAVs share one concept set and each random
  set serves in two null CAVs, so neither sample holds independent values, as the
  t-test assumes. Their scores vary together, and a concept drawn like the random sets
  comes out significant more often than ``alpha``; read the p-value as a screen.
  The CAVs do not depend on the class, so one :class:`ConceptBank` serves every class::

      cavs = fit_cavs(handle, layer="conv3", concepts={"stripes": s}, random_sets=r)
      results = tcav(handle, x_zebra, zebra, cavs=cavs)   # {"stripes": ConceptTest}

Differences from Captum's ``TCAV`` (``captum.concept``):

* Its default classifier trains scikit-learn's ``SGDClassifier`` (hinge loss, i.e. a
  linear SVM, ``alpha=0.01``) by stochastic gradient descent on a split drawn with
  Python's ``random``: the CAV, and so the scores, change from run to run. Here the fit
  is deterministic; its held-out split is fixed.
* Its ``magnitude`` is computed as the mean directional derivative along the
  *unnormalised* classifier weights (``torch.mean(tcav_score, dim=1)`` in
  ``_tcav_sub_computation``), although its docstring gives the ratio above: it is
  not bounded, its scale is the SVM's weight norm, and for the two "classes" of a
  concept-vs-random CAV it is ``m`` and ``-m``. ``sign_count`` agrees exactly when both
  use the same CAV (docs/captum.md).
* It has no significance test; its tutorial runs SciPy's ``ttest_ind`` by hand.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.attribution.core import (
    Array,
    Target,
    as_input,
    map_over_samples,
    refuse_baseline,
    resolve_target,
)
from fmi_jax.attribution.handle import activation_and_gradient, layer_call

__all__ = [
    "CAV_CLASSIFIERS",
    "ConceptBank",
    "ConceptTest",
    "ConceptVector",
    "concept_activation_vector",
    "concept_sensitivity",
    "fit_cavs",
    "held_out",
    "layer_activations",
    "t_test",
    "tcav",
    "tcav_score",
]

CAV_CLASSIFIERS = ("logistic", "mean_difference")


class ConceptVector(NamedTuple):
    """A linear classifier of concept (+1) against random (-1) activations.

    ``weights`` (shaped like one activation) and ``bias``: the boundary
    ``weights . A + bias = 0``; ``accuracy``: on the held-out examples (NaN when none are
    held out). ``direction`` is the unit CAV.
    """

    weights: np.ndarray
    bias: float
    accuracy: float

    @property
    def direction(self) -> np.ndarray:
        return self.weights / np.linalg.norm(self.weights)


class ConceptTest(NamedTuple):
    """One concept tested against R random sets (:func:`tcav`); arrays have length R.

    ``sign_count``, ``magnitude``: TCAV scores of the concept's CAV against each random
    set; ``accuracy``: those CAVs' held-out accuracies; ``null_sign_count``,
    ``null_accuracy``: the same for the random-against-random CAVs; ``p_value``: the
    two-sided t-test of ``sign_count`` against ``null_sign_count``; ``significant``:
    ``p_value < alpha / number of concepts``.
    """

    sign_count: np.ndarray
    magnitude: np.ndarray
    accuracy: np.ndarray
    null_sign_count: np.ndarray
    null_accuracy: np.ndarray
    p_value: float
    significant: bool


def layer_activations(model: Any, x: Array, *, layer: str, batch_size: int | None = None) -> Array:
    """The activation ``A(x)`` of ``layer``, float32 ``(N, ...)``, ``batch_size``
    examples per forward pass (Captum: ``LayerActivation``)."""
    handle, x, _ = layer_call(model, x, layer, "layer_activations", batch_size)

    def evaluate(example: Array, _: Array) -> Array:
        return handle.capture(x[example], layer)[1].astype(jnp.float32)

    values = map_over_samples(evaluate, x.shape[0], 1, batch_size=batch_size)
    return values[:, 0]


def _flat(values: Any, name: str) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if values.ndim < 2 or values.shape[0] < 2:
        raise ValueError(
            f"{name} must be activations (M, ...) of at least 2 examples, got shape "
            f"{values.shape}; compute them with layer_activations(model, images, layer=...)"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or Inf")
    return values.reshape(values.shape[0], -1)


def held_out(count: int, fraction: float) -> np.ndarray:
    """Which of ``count`` examples :func:`concept_activation_vector` holds out to measure
    a CAV's accuracy: evenly spaced positions, ``floor(count * fraction)`` of them
    (example i is held out when ``floor((i + 1) f)`` exceeds ``floor(i f)``), so the
    split needs no key and is the same on every run."""
    index = np.arange(count)
    return np.floor((index + 1) * fraction) > np.floor(index * fraction)


def _logistic_loss(margins: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, -margins)


def _fit_logistic(a: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression solved in the span of the rows of ``a``.

    The rows are centred first: the unpenalised bias absorbs the mean exactly, and an
    offset shared by every row no longer degrades the conditioning. With the thin SVD
    of the centred rows, ``U S V^T``, the minimiser is ``w = V beta`` and
    ``|w| = |beta|``, so the problem in ``(beta, b)`` is the same with features
    ``U S``: at most n + 1 unknowns. Newton steps with backtracking (Armijo). The
    weights' curvature is at least ``l2``, but the bias's is the mean of
    ``p (1 - p)``, which underflows to 0 when every margin saturates (separable
    activations of a large scale); a ridge of ``1e-12 l2`` on that one entry keeps
    the system invertible (the line search keeps every step a descent step, so the
    ridge changes the path, not the minimiser). Stops when the Newton decrement is at
    float64 round-off of the objective, or no step lowers it.
    """
    mean = a.mean(axis=0)
    centred = a - mean
    # U and S from the n x n Gram matrix (8x faster than an SVD of the n x D rows at
    # D = 12,544); singular values under 1e-6 of the largest, the float32 resolution
    # of the activations, are dropped.
    eigenvalues, vectors = np.linalg.eigh(centred @ centred.T)
    keep = eigenvalues > eigenvalues.max() * 1e-12
    u, s = vectors[:, keep], np.sqrt(eigenvalues[keep])
    features = np.concatenate([u * s, np.ones((a.shape[0], 1))], axis=1)
    penalty = np.full(features.shape[1], l2)
    penalty[-1] = 0.0  # the bias is not penalised
    # The weights' curvature is at least l2; the bias's alone can underflow to 0.
    ridge = np.zeros_like(penalty)
    ridge[-1] = 1e-12 * l2
    n = a.shape[0]

    def objective(theta: np.ndarray) -> float:
        return _logistic_loss(y * (features @ theta)).mean() + 0.5 * np.sum(penalty * theta**2)

    theta = np.zeros(features.shape[1])
    value = objective(theta)
    for _ in range(500):
        margins = y * (features @ theta)
        p = np.exp(-np.logaddexp(0.0, margins))  # sigmoid(-margin), without overflow
        gradient = -(features.T @ (y * p)) / n + penalty * theta
        hessian = (features.T * (p * (1.0 - p))) @ features / n + np.diag(penalty + ridge)
        step = -np.linalg.solve(hessian, gradient)
        decrement = -gradient @ step
        if not decrement > 1e-16 * value:
            break  # half the decrement estimates the gap to the minimum: float64 round-off
        t = 1.0
        while t > 1e-16:
            candidate = objective(theta + t * step)
            if candidate <= value - 1e-4 * t * decrement:
                break
            t *= 0.5
        else:
            break  # no step lowers the objective: converged to round-off
        if not candidate < value:
            break  # the step no longer changes the objective in float64
        theta, value = theta + t * step, candidate
    else:
        raise RuntimeError(
            "the logistic CAV did not converge in 500 Newton steps; please report the "
            "activations (classifier='mean_difference' needs no solver)"
        )
    weights = centred.T @ (u @ (theta[:-1] / s))  # V beta, with V = centred^T U S^-1
    return weights, float(theta[-1] - weights @ mean)


def concept_activation_vector(
    concept: Any,
    random: Any,
    *,
    classifier: str = "logistic",
    l2: float = 0.01,
    test_fraction: float = 1 / 3,
) -> ConceptVector:
    """The CAV that separates ``concept`` activations from ``random`` ones (module
    docstring for the two classifiers).

    Args:
      concept: activations ``(M_c, ...)`` of the concept's examples at one layer
        (:func:`layer_activations`); at least 2.
      random: activations ``(M_r, ...)`` of random examples at the same layer.
      classifier: ``'logistic'`` (L2-regularised logistic regression, solved exactly) or
        ``'mean_difference'``.
      l2: the logistic penalty ``(l2 / 2) |w|^2`` next to the mean loss; > 0, which
        makes the CAV unique (scikit-learn's ``LogisticRegression`` with
        ``C = 1 / (l2 * n)`` solves the same problem).
      test_fraction: fraction of each set held out to measure the accuracy, in [0, 1);
        0 fits on everything and reports a NaN accuracy.

    Returns:
      A :class:`ConceptVector`; its ``direction`` is the unit CAV.

    Raises:
      ValueError: mismatched shapes, non-finite values, too few examples, a bad option,
        or sets the classifier cannot tell apart (a zero CAV).
    """
    if classifier not in CAV_CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CAV_CLASSIFIERS}, got {classifier!r}")
    if not (isinstance(l2, numbers.Real) and math.isfinite(l2) and l2 > 0):
        raise ValueError(f"l2 must be a positive number, got {l2!r}")
    if not (isinstance(test_fraction, numbers.Real) and 0 <= test_fraction < 1):
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    shape_c, shape_r = np.shape(concept)[1:], np.shape(random)[1:]
    if shape_c != shape_r:
        raise ValueError(
            f"concept and random activations differ in shape: {shape_c} vs {shape_r}; "
            "take both at the same layer"
        )
    concept_flat, random_flat = _flat(concept, "concept"), _flat(random, "random")
    test_c = held_out(concept_flat.shape[0], test_fraction)
    test_r = held_out(random_flat.shape[0], test_fraction)
    if test_fraction > 0 and not (test_c.any() and test_r.any()):
        raise ValueError(
            f"test_fraction={test_fraction} holds out no example of a set of "
            f"{min(len(test_c), len(test_r))}; use more examples, a larger "
            "test_fraction, or test_fraction=0"
        )
    train_c, train_r = concept_flat[~test_c], random_flat[~test_r]
    if classifier == "logistic":
        a = np.concatenate([train_c, train_r])
        y = np.concatenate([np.ones(len(train_c)), -np.ones(len(train_r))])
        weights, bias = _fit_logistic(a, y, float(l2))
    else:
        mean_c, mean_r = train_c.mean(axis=0), train_r.mean(axis=0)
        weights = mean_c - mean_r
        bias = float(-weights @ (mean_c + mean_r) / 2)
    # A CAV is zero when it moves no logit (logistic: the margins of the training rows
    # vary by under 1e-8) or when the two means differ by less than float32 resolves
    # (the activations come from a float32 model): round-off, not a direction.
    rows = np.concatenate([train_c, train_r])
    if classifier == "logistic":
        flat = np.ptp(rows @ weights) <= 1e-8
    else:
        flat = np.abs(weights).max() <= 1e-7 * np.abs(rows).max()
    if flat:
        raise ValueError(
            "the concept and random activations cannot be told apart at this layer (the "
            "CAV is zero): use other examples or another layer"
        )
    accuracy = math.nan
    if test_fraction > 0:
        held_c = concept_flat[test_c] @ weights + bias > 0
        held_r = random_flat[test_r] @ weights + bias <= 0
        accuracy = float(np.concatenate([held_c, held_r]).mean())
    return ConceptVector(weights.reshape(shape_c).astype(np.float32), bias, accuracy)


def _directions(cav: Any, layer_shape: tuple[int, ...]) -> tuple[Array, bool]:
    """Unit CAVs as rows ``(C, D)``, and whether a single CAV was given."""
    if isinstance(cav, ConceptVector):
        cav = cav.direction
    cav = jnp.asarray(cav, jnp.float32)
    size = math.prod(layer_shape)
    if cav.shape in {layer_shape, (size,)}:
        rows, single = cav.reshape(1, size), True
    elif cav.ndim >= 2 and cav.shape[0] > 0 and cav.shape[1:] in {layer_shape, (size,)}:
        rows, single = cav.reshape(cav.shape[0], size), False
    else:
        raise ValueError(
            f"cav has shape {cav.shape}; expected one activation {layer_shape} of this "
            f"layer, or a stack (C, *{layer_shape}) of them"
        )
    norms = jnp.linalg.norm(rows, axis=1, keepdims=True)
    if not isinstance(norms, jax.core.Tracer) and not bool(jnp.all(norms > 0)):
        raise ValueError("cav has a zero vector: a CAV needs a direction")
    return rows / norms, single


def concept_sensitivity(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layer: str,
    cav: Any,
) -> Array:
    """The directional derivative ``grad_A y_t(x) . v / |v|`` of the target logit along
    one or several CAVs at ``layer``.

    Args:
      model: a model handle, ``flax_model(module, variables, train=False)`` or
        ``flax_model(nnx_module)``; a ``(module, variables)`` tuple also works.
      x: inputs ``(N, ...)``.
      target: class per example, one class for all, or ``None`` (predicted class).
      key: unused (deterministic); accepted so every method has one signature.
      baseline: must be None (no reference input).
      batch_size: examples per backward pass; ``None`` processes all at once.
      layer: module path of the layer the CAVs live in.
      cav: a :class:`ConceptVector`, one activation-shaped vector, or a stack
        ``(C, h, w, K)`` of them; each is normalised to unit length.

    Returns:
      float32 ``(N,)`` for one CAV, ``(N, C)`` for a stack: one gradient per example,
      projected on every CAV.
    """
    name = "concept_sensitivity"
    refuse_baseline(baseline, name)
    handle, x, shape = layer_call(model, x, layer, name, batch_size)
    directions, single = _directions(cav, shape[1:])
    target = resolve_target(handle, x, target, batch_size=batch_size)

    def evaluate(example: Array, _: Array) -> Array:
        gradient = activation_and_gradient(handle, x[example], target[example], layer)[1]
        return gradient.reshape(gradient.shape[0], -1) @ directions.T

    values = map_over_samples(evaluate, x.shape[0], 1, batch_size=batch_size)[:, 0]
    return values[:, 0] if single else values


def tcav_score(sensitivities: Any) -> tuple[Array, Array]:
    """``(sign_count, magnitude)`` over the examples (axis 0) of conceptual
    sensitivities ``(N,)`` or ``(N, C)``: the fraction with ``S > 0``, and
    ``sum max(S, 0) / sum |S|`` (NaN where every S is 0)."""
    s = jnp.asarray(sensitivities, jnp.float32)
    if s.ndim not in (1, 2) or s.shape[0] == 0:
        raise ValueError(f"sensitivities must be (N,) or (N, C), got shape {s.shape}")
    sign_count = jnp.mean(s > 0, axis=0)
    total = jnp.sum(jnp.abs(s), axis=0)
    magnitude = jnp.sum(jnp.maximum(s, 0), axis=0) / jnp.where(total > 0, total, jnp.nan)
    return sign_count, magnitude


def t_test(a: Any, b: Any) -> float:
    """Two-sided p-value of Student's two-sample t-test with equal variances
    (``scipy.stats.ttest_ind``'s default). Two constant samples give 1 when their means
    are equal and 0 when they differ."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size < 2 or b.size < 2:
        raise ValueError(f"t_test needs at least 2 values per sample, got {a.size} and {b.size}")
    df = a.size + b.size - 2
    pooled = (((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / df
    difference = a.mean() - b.mean()
    if pooled == 0:
        return 1.0 if difference == 0 else 0.0
    from scipy import special  # a dependency of jax; float64, unlike jax.scipy's

    t = difference / math.sqrt(pooled * (1 / a.size + 1 / b.size))
    return float(2 * special.stdtr(df, -abs(t)))  # P(|T| > |t|), df degrees of freedom


def _as_sets(random_sets: Any) -> list[Array]:
    if isinstance(random_sets, (np.ndarray, jax.Array)):
        random_sets = list(random_sets)
    if not isinstance(random_sets, Sequence) or len(random_sets) < 2:
        raise ValueError(
            "random_sets must be a sequence of at least 2 sets of random images (R, M, "
            "...): the null distribution is made of CAVs between them"
        )
    return [as_input(s, f"random_sets[{i}]") for i, s in enumerate(random_sets)]


class ConceptBank(NamedTuple):
    """The CAVs :func:`tcav` tests, fitted once by :func:`fit_cavs` and reusable for any
    class: ``concepts[name][i]`` separates the concept from random set i; ``null[i]``
    separates random set ``(i + 1) mod R`` from random set i."""

    layer: str
    concepts: dict[str, tuple[ConceptVector, ...]]
    null: tuple[ConceptVector, ...]


@functools.lru_cache(maxsize=4)
def _compiled(handle: Any, layer: str, batch_size: int | None) -> tuple[Any, Any]:
    """The jitted activation and sensitivity passes of one handle at one layer.

    Kept for the last four (handle, layer, batch_size), so that testing every class
    against one :class:`ConceptBank` compiles once per input shape; the cache holds
    those handles' weights, and no more. A handle made per call (from a
    ``(module, variables)`` tuple) compiles each time: pass ``flax_model(...)``.
    """
    activations = jax.jit(
        lambda x: layer_activations(handle, x, layer=layer, batch_size=batch_size)
    )
    sensitivities = jax.jit(
        lambda x, target, directions: concept_sensitivity(
            handle, x, target, batch_size=batch_size, layer=layer, cav=directions
        )
    )
    return activations, sensitivities


def fit_cavs(
    model: Any,
    *,
    layer: str,
    concepts: Mapping[str, Any],
    random_sets: Any,
    batch_size: int | None = None,
    classifier: str = "logistic",
    l2: float = 0.01,
    test_fraction: float = 1 / 3,
) -> ConceptBank:
    """Every CAV :func:`tcav` needs at ``layer``: each concept against each of the R
    random sets, and random set ``(i + 1) mod R`` against random set i (the null).

    Args:
      model: a model handle, as in :func:`concept_sensitivity`.
      layer: module path of the layer (``handle.layer_names(x)``).
      concepts: concept name -> images ``(M, ...)`` of that concept, on the model's
        input scale.
      random_sets: R >= 2 sets of random images, ``(R, M, ...)`` or a sequence.
      batch_size: images per forward pass.
      classifier, l2, test_fraction: as in :func:`concept_activation_vector`.

    Returns:
      A :class:`ConceptBank`.
    """
    if not isinstance(concepts, Mapping) or not concepts:
        raise ValueError("concepts must be a non-empty mapping of name -> concept images")
    sets = _as_sets(random_sets)
    handle, first, _ = layer_call(model, sets[0], layer, "fit_cavs", batch_size)

    def activations(images: Any, name: str) -> np.ndarray:
        images = as_input(images, name)
        if images.shape[1:] != first.shape[1:]:
            raise ValueError(
                f"{name} has images {images.shape[1:]}, random_sets[0] has {first.shape[1:]}"
            )
        return np.asarray(_compiled(handle, layer, batch_size)[0](images))

    random_acts = [activations(s, f"random_sets[{i}]") for i, s in enumerate(sets)]
    concept_acts = {
        name: activations(images, f"concepts[{name!r}]") for name, images in concepts.items()
    }
    fit = dict(classifier=classifier, l2=l2, test_fraction=test_fraction)
    count = len(random_acts)
    null = tuple(
        concept_activation_vector(random_acts[(i + 1) % count], random_acts[i], **fit)
        for i in range(count)
    )
    fitted = {
        name: tuple(concept_activation_vector(acts, r, **fit) for r in random_acts)
        for name, acts in concept_acts.items()
    }
    return ConceptBank(layer, fitted, null)


def tcav(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    cavs: ConceptBank,
    batch_size: int | None = None,
    alpha: float = 0.05,
) -> dict[str, ConceptTest]:
    """Test each concept of ``cavs`` on the class ``target`` of the examples ``x``
    (Kim et al.; module docstring).

    The TCAV scores of ``x`` along every CAV of :func:`fit_cavs`, and for each concept
    the t-test of its R sign counts against the R of the null CAVs; the layer gradients
    of ``x`` are computed once and projected on every CAV.

    Args:
      model: a model handle, as in :func:`concept_sensitivity`.
      x: the examples of the class under test, ``(N, ...)``.
      target: their class (an int, per-example ints, or ``None``: the predicted class).
      cavs: the :class:`ConceptBank` from :func:`fit_cavs` on the same model.
      batch_size: examples per forward and backward pass.
      alpha: the significance level, Bonferroni-corrected for the number of concepts.

    Returns:
      concept name -> :class:`ConceptTest`.
    """
    if not isinstance(cavs, ConceptBank):
        raise ValueError(
            "cavs must be the ConceptBank of fit_cavs(model, layer=..., concepts=..., "
            f"random_sets=...), got {type(cavs).__name__}"
        )
    if not (isinstance(alpha, numbers.Real) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    count = len(cavs.null)
    if count < 2 or any(len(fitted) != count for fitted in cavs.concepts.values()):
        raise ValueError(
            f"cavs has {count} null CAVs and {[len(f) for f in cavs.concepts.values()]} per "
            "concept: each concept needs one CAV per random set (R >= 2); build it with fit_cavs"
        )
    vectors = list(cavs.null) + [c for fitted in cavs.concepts.values() for c in fitted]
    weights = np.stack([np.asarray(c.weights, np.float64).ravel() for c in vectors])
    if not (np.all(np.isfinite(weights)) and np.all(np.any(weights != 0, axis=1))):
        raise ValueError("cavs holds a zero or non-finite CAV; build it with fit_cavs")
    handle, x, _ = layer_call(model, x, cavs.layer, "tcav", batch_size)
    target = resolve_target(handle, x, target, batch_size=batch_size)
    stack = np.stack([c.direction for c in vectors])
    sensitivities = _compiled(handle, cavs.layer, batch_size)[1](x, target, stack)
    sign_count, magnitude = (np.asarray(v, np.float64) for v in tcav_score(sensitivities))
    null_sign = sign_count[:count]
    results = {}
    for i, (name, fitted) in enumerate(cavs.concepts.items()):
        columns = slice(count * (i + 1), count * (i + 2))
        p_value = t_test(sign_count[columns], null_sign)
        results[name] = ConceptTest(
            sign_count=sign_count[columns],
            magnitude=magnitude[columns],
            accuracy=np.array([c.accuracy for c in fitted]),
            null_sign_count=null_sign,
            null_accuracy=np.array([c.accuracy for c in cavs.null]),
            p_value=p_value,
            significant=bool(p_value < alpha / len(cavs.concepts)),
        )
    return results
