"""Infidelity and sensitivity of explanations (Yeh et al. 2019), the local Lipschitz
estimate (Alvarez-Melis & Jaakkola 2018), continuity under translation (Montavon et al.
2018) and relative stability (Agarwal et al. 2022).

Both metrics come from Yeh, Hsieh, Suggala, Inouye & Ravikumar (2019), "On the
(In)fidelity and Sensitivity of Explanations", NeurIPS, arXiv:1901.09392, and follow
the definitions and defaults of Captum's ``captum.metrics.infidelity`` and
``captum.metrics.sensitivity_max`` (Captum 0.9), so the numbers are comparable (for a
stochastic method, see below).

Infidelity of attributions ``phi`` of example ``x`` for the target logit ``f``::

    INFD(phi, f, x) = E_I[ (I^T phi - (f(x) - f(x - I)))^2 ]

estimated by the mean over ``samples`` perturbations ``I_s``; ``I^T phi`` is the sum
over all features of ``I * phi``. A perturbation is a pair ``(I, x - I)``, exactly as
Captum's ``perturb_func`` returns ``(perturbations, perturbed_inputs)``. Captum has no
default perturbation for infidelity; ``perturbation='gaussian'`` here draws
``I ~ N(0, stdev^2)`` independently per feature, with ``stdev=0.003`` by default (the
perturbation of Captum's ``infidelity`` docstring example,
``noise = np.random.normal(0, 0.003, inputs.shape); return noise, inputs - noise``).
Any other distribution is a callable ``perturb(key, x_i) -> (I, perturbed x_i)`` on one
example. Since ``f(x) - f(x - I) = grad f(x)^T I + O(|I|^2)``, the gradient (saliency
without ``abs``) is the attribution with the least infidelity under small real-valued
noise, and for a linear model ``f(x) = w^T x + b`` it is exact: ``phi = w`` gives 0.

With ``normalize=True`` the attribution is first rescaled by the least-squares factor
(Captum's ``normalize``, from the paper's official code)::

    beta = E[ I^T phi (f(x) - f(x - I)) ] / E[ (I^T phi)^2 ]
    INFD = E[ (beta I^T phi - (f(x) - f(x - I)))^2 ]

which Captum evaluates as ``(beta^2 sum a^2 - 2 beta sum ab + sum b^2) / samples`` with
``a = I^T phi``, ``b = f(x) - f(x - I)`` and ``beta = sum ab / sum a^2`` (the
denominator replaced by 1 when it is 0, Captum's ``safe_div``). This module computes
the same expression, so the value does not change when ``phi`` is scaled. The
expansion cancels when ``phi`` is nearly exact and rounding can then make it slightly
negative; here it is clipped at 0 (Captum returns the tiny negative number).

Max-sensitivity of an explanation function ``Phi`` at ``x``::

    SENS_MAX(Phi, x) = max_s ||Phi(x + delta_s) - Phi(x)|| / ||Phi(x)||,
    delta_s ~ U[-radius, radius]^d   (iid per feature)

with ``radius=0.02``, ``samples=10`` and the Frobenius norm of the flattened map, as
Captum's ``sensitivity_max`` with its ``default_perturb_func``. Like Captum (and
unlike the paper, whose definition has no denominator) the norm of the change is
divided by the norm of the explanation of the clean input, replaced by 1 when that norm
is 0. Note the sign conventions: Captum's sensitivity perturbs to ``x + delta`` and
its infidelity to ``x - I``; both are kept.

A stochastic method (SmoothGrad, IG + SmoothGrad) explains every perturbed copy with
the clean input's key by default, so its noise is the same in ``Phi(x + delta_s)`` and
``Phi(x)``: the ratio measures how the map moves with the input alone, and a map that
depends only on the key scores 0. Captum calls the explanation function afresh, which
draws new noise each time and adds the method's sampling variance to the ratio;
``independent_explain_keys=True`` does that. The two agree for deterministic methods.

Average sensitivity (:func:`avg_sensitivity`, the paper's ``SENS_AVG``) is the mean of
the same ratios over the same perturbations. The local Lipschitz estimate
(:func:`local_lipschitz`; Alvarez-Melis & Jaakkola, "On the Robustness of
Interpretability Methods", 2018, arXiv:1806.08049) divides the change of the map by the
change of the input instead, ``max_s ||Phi(x'_s) - Phi(x)||_2 / ||x'_s - x||_2`` with
``x'_s = x + N(0, 0.1^2)`` per feature and 200 samples, the sampling estimate and the
defaults of Quantus' ``LocalLipschitzEstimate`` (the paper maximises over the
neighbourhood by optimisation). Both share max-sensitivity's keys, targets and
chunking.

Continuity (:func:`continuity`; Montavon, Samek & Müller, "Methods for interpreting and
understanding deep neural networks", 2018) replaces the noise by translations of the
input along one axis, ``max_s ||Phi(x'_s) - Phi(x)||_1 / ||x'_s - x||_2``, on the grid and
with the fill of Quantus' ``Continuity`` (its function documents the differences).

Relative stability (Agarwal, Johnson, Pawelczyk, Krishna, Saxena, Zitnik & Lakkaraju,
"Rethinking Stability for Attribution-based Explanations", 2022, arXiv:2203.06877)
relates the relative change of the explanation ``e`` to the relative change of the
input (:func:`relative_input_stability`), to the change of the logits ``h = fn``
(:func:`relative_output_stability`) or to the relative change of an internal
representation ``L`` (:func:`relative_representation_stability`)::

    RIS(x) = max_s ||(e(x) - e(x'_s)) / e(x)|| / max(||(x - x'_s) / x||, eps_min)
    ROS(x) = max_s ||(e(x) - e(x'_s)) / e(x)|| / max(||h(x) - h(x'_s)||, eps_min)
    RRS(x) = max_s ||(e(x) - e(x'_s)) / e(x)|| / max(||(L(x) - L(x'_s)) / L(x)||, eps_min)

The divisions inside the norms are elementwise, every norm is over the flattened
example (``norm_ord``, the 2-norm by default), and the maximum runs over the perturbed
inputs that keep the clean input's predicted class, ``argmax h(x'_s) = argmax h(x)``
(the paper's condition ``y_x = y_x'``), which is why all three need ``fn``. Lower is
more stable. Conventions and defaults are those of Quantus' ``RelativeInputStability``,
``RelativeOutputStability`` and ``RelativeRepresentationStability`` (Quantus 0.6):

* ``x'_s = x + U[0.02, 0.2]`` per feature, 200 samples. Quantus' default perturbation,
  ``batch_uniform_noise`` with its ``lower_bound=0.02`` and the ``upper_bound=0.2`` these
  metrics pass, draws from ``[lower_bound, upper_bound]``: it shifts every feature *up*.
  ``minval`` and ``maxval`` set the interval (``-r`` and ``r`` for symmetric noise).
* ``eps_min = 1e-6``. An element of ``e(x)``, ``x`` or ``L(x)`` that is exactly 0 is
  replaced by ``eps_min`` where it divides, so an element that is 0 at ``x`` but not at
  ``x'_s`` contributes ``|e(x'_s)| / eps_min``; on images with exact zeros (a black
  background) such elements dominate both norms of RIS.
* ROS's change of the logits is absolute; only RIS and RRS divide elementwise.

Differences from Quantus:

* The denominator is ``max(norm, eps_min)``, the paper's formula; Quantus replaces only
  a norm that is exactly 0 by ``eps_min``, which differs for norms in ``(0, eps_min)``.
* A perturbed input whose predicted class changed is left out of the maximum, and an
  example is NaN only when none of its ``samples`` keeps the class. Quantus sets that
  sample's score to NaN and takes ``np.max``, which propagates NaN, so a single changed
  prediction among its 200 samples makes the example's score NaN.
* ``L`` is a function of the input batch (``lambda xs: handle.capture(xs, layer)[1]``
  for a :func:`~fmi_jax.attribution.flax_model` handle) instead of Quantus'
  ``layer_names``/``layer_indices``, and it is required: the paper's RRS is about a
  hidden layer, and ``representation=fn`` (the logits' elementwise relative change) has
  to be asked for.
* Quantus' ``abs`` and ``normalise`` options (off by default) belong in ``explain``
  here. Keys, ``target=None`` and ``independent_explain_keys`` work as for
  ``max_sensitivity`` (below).

Differences from Captum:

* ``target=None`` means each example's predicted class ``argmax fn(x)``, resolved on
  the clean input (Captum passes ``None`` through to the model's output). For
  ``max_sensitivity`` every perturbed copy explains that same class.
* Randomness comes from ``key`` only: example ``i`` uses ``fold_in(key, i)`` and its
  perturbation ``s`` ``fold_in(., s)`` (:func:`fmi_jax.attribution.example_keys`,
  :func:`~fmi_jax.attribution.sample_keys`), so no value depends on ``batch_size`` or
  on how a dataset is split into batches. Captum draws from torch's global generator.
* ``max_sensitivity`` calls a stochastic explainer (SmoothGrad, GradientSHAP, ...) with
  the same key for the clean and every perturbed input by default (common random
  numbers), so the score measures how the map moves with the input rather than the
  explainer's own Monte Carlo noise. ``independent_explain_keys=True`` gives every
  call its own key, which is what Captum's repeated calls on the global generator do.

Memory: the metrics walk over the ``N * samples`` (example, perturbation) pairs in
chunks of ``batch_size`` pairs (:func:`fmi_jax.attribution.sum_over_samples` and
:func:`~fmi_jax.attribution.map_over_samples`); no Python loop over examples or
samples, and peak memory is one chunk's model or explainer evaluation. When more than
one chunk is needed the evaluation runs inside ``lax.scan``/``lax.map``, so ``fn`` and
``explain`` must be traceable (every method of :mod:`fmi_jax.attribution` is); the
metrics can also be wrapped in ``jax.jit`` whole (value checks are then skipped).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.attribution.core import (
    Array,
    Explain,
    ModelFn,
    Target,
    as_count,
    as_input,
    as_number,
    as_rows,
    as_target,
    check_explain,
    check_finite,
    example_keys,
    map_over_samples,
    resolve_target,
    sample_keys,
    select_target,
    sum_over_samples,
)

__all__ = [
    "DEFAULT_EPS_MIN",
    "DEFAULT_INFIDELITY_STDEV",
    "DEFAULT_LIPSCHITZ_STDEV",
    "DEFAULT_SENSITIVITY_RADIUS",
    "DEFAULT_STABILITY_MAXVAL",
    "DEFAULT_STABILITY_MINVAL",
    "avg_sensitivity",
    "continuity",
    "gaussian_perturbation",
    "translate",
    "infidelity",
    "local_lipschitz",
    "max_sensitivity",
    "relative_input_stability",
    "relative_output_stability",
    "relative_representation_stability",
    "uniform_perturbation",
]

DEFAULT_INFIDELITY_STDEV = 0.003
DEFAULT_SENSITIVITY_RADIUS = 0.02
DEFAULT_LIPSCHITZ_STDEV = 0.1
DEFAULT_STABILITY_MINVAL = 0.02
DEFAULT_STABILITY_MAXVAL = 0.2
DEFAULT_EPS_MIN = 1e-6

Perturb = Callable[[Array, Array], tuple[Array, Array]]


def gaussian_perturbation(key: Array, x: Array, stdev: float) -> tuple[Array, Array]:
    """``I ~ N(0, stdev^2)`` per feature; returns ``(I, x - I)`` for one example ``x``."""
    noise = stdev * jax.random.normal(key, x.shape, x.dtype)
    return noise, x - noise


def uniform_perturbation(key: Array, x: Array, radius: float) -> Array:
    """``x + delta``, ``delta ~ U[-radius, radius]`` per feature (Captum's
    ``sensitivity.default_perturb_func``), for one example ``x``."""
    return x + jax.random.uniform(key, x.shape, x.dtype, minval=-radius, maxval=radius)


def _as_scale(value: Any, name: str) -> float:
    return as_number(value, name, minimum=0)


def _as_bound(value: Any, name: str) -> float:
    return as_number(value, name)


def _resolve_perturb(perturbation: str | Perturb, stdev: float) -> Perturb:
    if callable(perturbation):
        return perturbation
    if perturbation == "gaussian":
        return functools.partial(gaussian_perturbation, stdev=_as_scale(stdev, "stdev"))
    raise ValueError(
        f"unknown perturbation {perturbation!r}; use 'gaussian' or a callable "
        "perturb(key, x_i) -> (I, perturbed x_i)"
    )


def _flat_norm(values: Array, norm_ord: str | float) -> Array:
    """Per-row norm of ``values`` flattened to ``(B, -1)``, like ``torch.norm(p=ord, dim=1)``."""
    flat = values.reshape(values.shape[0], -1)
    if norm_ord in ("fro", 2, 2.0):
        return jnp.sqrt(jnp.sum(flat * flat, axis=1))
    if norm_ord in ("inf", np.inf):
        return jnp.max(jnp.abs(flat), axis=1)
    if norm_ord == 1:
        return jnp.sum(jnp.abs(flat), axis=1)
    return jnp.sum(jnp.abs(flat) ** norm_ord, axis=1) ** (1.0 / norm_ord)


def _check_norm_ord(norm_ord: Any) -> str | float:
    if norm_ord in ("fro", "inf"):
        return norm_ord
    if isinstance(norm_ord, bool) or not isinstance(norm_ord, (int, float)) or not norm_ord > 0:
        raise ValueError(f"norm_ord must be 'fro', 'inf' or a number > 0, got {norm_ord!r}")
    return float(norm_ord)


def _target_logits(fn: ModelFn, x: Array, target: Array, batch_size: int | None) -> Array:
    """``fn(x)[i, target[i]]`` for every example, ``batch_size`` examples per call."""
    return map_over_samples(
        lambda example, _: select_target(fn(x[example]), target[example]),
        x.shape[0],
        1,
        batch_size=batch_size,
    )[:, 0]


def infidelity(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    key: Array,
    *,
    perturbation: str | Perturb = "gaussian",
    stdev: float = DEFAULT_INFIDELITY_STDEV,
    samples: int = 10,
    normalize: bool = False,
    batch_size: int | None = None,
) -> Array:
    """Infidelity ``E_I[(I^T phi - (f(x) - f(x - I)))^2]`` of every example's attributions.

    Captum: ``captum.metrics.infidelity(forward_func, perturb_func, inputs,
    attributions, target=..., n_perturb_samples=samples, normalize=...)``; see the
    module docstring for the definition, the normalisation and the differences.

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the predicted
        class; ``f`` is this class's logit.
      attributions: ``phi``, shaped like ``x``.
      key: a PRNG key, or one key per example (shape ``(N,)``).
      perturbation: ``'gaussian'`` (``I ~ N(0, stdev^2)`` per feature) or a callable
        ``perturb(key, x_i) -> (I, perturbed x_i)`` on one example ``x_i`` of shape
        ``x.shape[1:]``: ``I`` multiplies ``phi`` and the model is evaluated on the
        perturbed input. For maps of the gradient (``saliency``) that is
        ``(I, x_i - I)``. For maps already multiplied by the input's change
        (``input_x_gradient``, IG, DeepLIFT: the paper's "global" attributions) ``I`` is
        the random binary mask ``m`` itself and the input ``x_i - m * (x_i - baseline)``
        (Captum's ``infidelity_perturb_func_decorator(multiply_by_inputs=True)``);
        returning ``m * (x_i - baseline)`` as ``I`` would count the input twice.
      stdev: standard deviation of the Gaussian perturbation.
      samples: perturbations per example (Captum's ``n_perturb_samples``).
      normalize: rescale ``phi`` by the least-squares ``beta`` first (Captum's
        ``normalize``), which makes the score invariant to scaling ``phi``.
      batch_size: perturbed inputs per forward pass; ``None`` evaluates all
        ``N * samples`` at once.

    Returns:
      float32 array ``(N,)``.

    Raises:
      ValueError: ``attributions`` not shaped like ``x``, a bad target, a bad
        perturbation, or NaN/Inf in the inputs.
    """
    samples = as_count(samples, "samples")
    x = as_input(x)
    attributions = jnp.asarray(attributions, dtype=jnp.float32)
    if attributions.shape != x.shape:
        raise ValueError(
            f"attributions of shape {attributions.shape} must have the shape of the input "
            f"x {x.shape}"
        )
    check_finite(attributions, "attributions")
    perturb = _resolve_perturb(perturbation, stdev)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    num_examples = x.shape[0]
    keys = example_keys(key, num_examples)
    clean = _target_logits(fn, x, target, batch_size)

    def terms(example: Array, sample: Array) -> tuple[Array, Array, Array]:
        noise, perturbed = jax.vmap(perturb)(sample_keys(keys, example, sample), x[example])
        if noise.shape != perturbed.shape or noise.shape[1:] != x.shape[1:]:
            raise ValueError(
                "perturb must return (I, perturbed x_i) shaped like one example "
                f"{x.shape[1:]}, got shapes {noise.shape[1:]} and {perturbed.shape[1:]}"
            )
        a = jnp.sum((noise * attributions[example]).reshape(noise.shape[0], -1), axis=1)
        b = clean[example] - select_target(fn(perturbed), target[example])
        if normalize:
            return a * a, a * b, b * b
        return ((a - b) ** 2,)

    sums = sum_over_samples(terms, num_examples, samples, batch_size=batch_size)
    if normalize:
        aa, ab, bb = sums
        beta = ab / jnp.where(aa == 0, 1.0, aa)
        # A sum of squares, but the expansion cancels: rounding can leave it a hair
        # below zero when phi is (nearly) exact, so clip at 0 (Captum does not).
        value = jnp.maximum(beta * beta * aa - 2 * beta * ab + bb, 0.0)
    else:
        (value,) = sums
    return value / samples


def max_sensitivity(
    explain: Explain,
    x: Array,
    target: Target,
    key: Array,
    *,
    radius: float = DEFAULT_SENSITIVITY_RADIUS,
    samples: int = 10,
    norm_ord: str | float = "fro",
    fn: ModelFn | None = None,
    independent_explain_keys: bool = False,
    batch_size: int | None = None,
) -> Array:
    """Max-sensitivity ``max_s ||Phi(x + delta_s) - Phi(x)|| / ||Phi(x)||`` per example.

    Captum: ``captum.metrics.sensitivity_max(explanation_func, inputs,
    perturb_radius=radius, n_perturb_samples=samples, norm_ord=norm_ord, target=...)``
    with the default uniform perturbation; see the module docstring.

    Args:
      explain: ``explain(x, target, key) -> maps`` on a batch, the signature of
        :func:`fmi_jax.attribution.explainer`; maps have leading axis ``N`` (any
        trailing shape, e.g. CAM maps ``(N, H, W, 1)``). It receives one key per
        example (shape ``(N,)``), which every method of :mod:`fmi_jax.attribution`
        accepts.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)`` or one int for all; ``None`` (the predicted
        class) needs ``fn`` and is resolved on the clean input, so that every perturbed
        copy explains the same class.
      key: a PRNG key, or one key per example (shape ``(N,)``).
      radius: half-width of the uniform noise ``U[-radius, radius]`` per feature.
      samples: perturbations per example (Captum's ``n_perturb_samples``).
      norm_ord: ``'fro'`` (Captum's default; the 2-norm of the flattened map),
        ``'inf'`` or a number ``p > 0``.
      fn: the model, only needed for ``target=None``.
      independent_explain_keys: give the explainer a fresh key for every perturbed
        copy instead of the clean input's key (matters only for stochastic methods).
      batch_size: inputs per call of ``explain``; ``None`` explains all ``N * samples``
        perturbed copies at once.

    Returns:
      float32 array ``(N,)``.

    Raises:
      ValueError: a bad target, ``target=None`` without ``fn``, maps without leading
        axis ``N``, or NaN/Inf in the inputs.
    """
    check_explain(explain, "max_sensitivity")
    ratios = _uniform_sensitivity(
        "max_sensitivity",
        explain,
        x,
        target,
        key,
        radius,
        samples,
        norm_ord,
        fn,
        independent_explain_keys,
        batch_size,
    )
    return ratios.max(axis=1)


def avg_sensitivity(
    explain: Explain,
    x: Array,
    target: Target,
    key: Array,
    *,
    radius: float = DEFAULT_SENSITIVITY_RADIUS,
    samples: int = 10,
    norm_ord: str | float = "fro",
    fn: ModelFn | None = None,
    independent_explain_keys: bool = False,
    batch_size: int | None = None,
) -> Array:
    """Average sensitivity ``mean_s ||Phi(x + delta_s) - Phi(x)|| / ||Phi(x)||`` per
    example: :func:`max_sensitivity` with the mean over the same perturbations instead
    of the maximum (Yeh et al.'s ``SENS_AVG``; Quantus' ``AvgSensitivity``, whose
    defaults are radius 0.2 and 200 samples). Arguments and result as
    :func:`max_sensitivity`; with the same key it never exceeds it."""
    check_explain(explain, "avg_sensitivity")
    ratios = _uniform_sensitivity(
        "avg_sensitivity",
        explain,
        x,
        target,
        key,
        radius,
        samples,
        norm_ord,
        fn,
        independent_explain_keys,
        batch_size,
    )
    return ratios.mean(axis=1)


def local_lipschitz(
    explain: Explain,
    x: Array,
    target: Target,
    key: Array,
    *,
    stdev: float = DEFAULT_LIPSCHITZ_STDEV,
    samples: int = 200,
    fn: ModelFn | None = None,
    independent_explain_keys: bool = False,
    batch_size: int | None = None,
) -> Array:
    """Local Lipschitz estimate ``max_s ||Phi(x'_s) - Phi(x)|| / ||x'_s - x||`` per example,
    ``x'_s = x + N(0, stdev^2)`` per feature, both norms Euclidean over the flattened
    arrays (Alvarez-Melis & Jaakkola, "On the Robustness of Interpretability Methods",
    2018, arXiv:1806.08049, who maximise over a neighbourhood; Quantus'
    ``LocalLipschitzEstimate`` samples it with these defaults: stdev 0.1, 200 samples).

    Unlike the sensitivities it is not relative to the map's size: scaling ``Phi``
    scales it. For ``Phi(x) = c x`` it is exactly ``|c|``. Other arguments and the
    result as :func:`max_sensitivity` (``x'`` explains the same class as ``x``).
    """
    check_explain(explain, "local_lipschitz")
    stdev = _as_scale(stdev, "stdev")
    if stdev == 0:
        raise ValueError("stdev must be > 0: the estimate divides by the input's change")
    return _sensitivity(
        "local_lipschitz",
        explain,
        x,
        target,
        key,
        perturb=lambda k, xi, _: xi + stdev * jax.random.normal(k, xi.shape, xi.dtype),
        score=_map_change("fro", over_input=True),
        samples=samples,
        fn=fn,
        independent_explain_keys=independent_explain_keys,
        batch_size=batch_size,
    ).max(axis=1)


def translate(x: Array, shift: Array, *, axis: int = -2, fill: Any = "min") -> Array:
    """One example ``x`` moved by ``shift`` positions along ``axis`` (positive: towards
    higher indices; ``axis=-2`` is the width of an ``(H, W, C)`` image), the positions
    it uncovers set to ``fill``: a number, or ``'min'``, the example's smallest value
    (Quantus' ``'black'``). A shift of the axis' length or more leaves only ``fill``."""
    x = jnp.asarray(x)
    axis = _as_axis(axis, x.ndim, f"an axis of an example of shape {x.shape}")
    fill = _as_fill(fill)
    if not isinstance(shift, jax.core.Tracer) and not jnp.issubdtype(
        jnp.asarray(shift).dtype, jnp.integer
    ):
        raise ValueError(f"shift must be an integer number of positions, got {shift!r}")
    size = x.shape[axis]
    source = jnp.arange(size) - shift
    inside = (source >= 0) & (source < size)
    moved = jnp.take(x, jnp.clip(source, 0, size - 1), axis=axis)
    shape = [1] * x.ndim
    shape[axis] = size
    value = jnp.min(x) if isinstance(fill, str) and fill == "min" else fill
    return jnp.where(inside.reshape(shape), moved, value)


def _as_axis(axis: Any, ndim: int, what: str) -> int:
    """``axis`` as an index in ``[0, ndim)`` (negative counts from the end)."""
    try:
        axis = operator.index(axis)
    except TypeError:
        raise ValueError(f"axis must be an int, got {axis!r}") from None
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is not {what}")
    return axis % ndim


def _as_fill(fill: Any) -> float | str:
    if isinstance(fill, str):
        if fill != "min":
            raise ValueError(f"fill must be 'min' or a number, got {fill!r}")
        return fill
    return _as_bound(fill, "fill")


def continuity(
    explain: Explain,
    x: Array,
    target: Target,
    key: Array,
    *,
    steps: int = 28,
    shifts: Any = None,
    axis: int = -2,
    fill: float | str = "min",
    fn: ModelFn | None = None,
    keep_prediction: bool = False,
    independent_explain_keys: bool = False,
    batch_size: int | None = None,
) -> Array:
    """Continuity ``max_s ||Phi(x'_s) - Phi(x)||_1 / ||x'_s - x||_2`` over translations
    ``x'_s`` of the input (lower is more continuous).

    Montavon, Samek & Müller, "Methods for interpreting and understanding deep neural
    networks", Digital Signal Processing 73, 2018, sec. 5.1, define an explanation's
    continuity by the largest ratio of this kind over nearby inputs; Quantus'
    ``Continuity`` (0.6) estimates it with horizontal translations, and the defaults
    here are its: the shifts ``-W + k * dx`` for ``k = 1, ..., steps`` with
    ``dx = (2W + 1) // steps`` along an axis of size ``W``, uncovered positions filled
    with the example's minimum. Every translated copy explains the clean input's
    target. The L1 change of the map over the L2 change of the input makes the score
    scale with the map: ``Phi(x) = c x`` scores ``|c|`` times that of ``Phi(x) = x``.

    Differences from Quantus:

    * A shift of 0 is left out (Quantus' grid contains it when ``dx`` divides ``W``, as
      for 28 pixels and 28 steps): the input does not change, and Quantus' ratio
      ``|Phi(x) - Phi(x)|_1 / (0 + 1e-9)`` is 0 for a deterministic map but ``1e9``
      times any difference between two calls of a stochastic one. Likewise any
      translation that leaves the input unchanged (an image constant along the axis) is
      left out, and an example none of whose translations counts is NaN.
    * Quantus' ``abs=True`` and ``normalise=True`` (its defaults) belong in ``explain``
      here; Quantus normalises by the batch's largest value, not each map's (see
      docs/captum.md).
    * ``keep_prediction=True`` (Quantus' ``return_nan_when_prediction_changes``) leaves
      out the translations that change the clean input's predicted class and needs
      ``fn``; Quantus instead makes the example NaN as soon as one translation's
      prediction differs from the *target* (for a misclassified image with its label as
      the target, every translation that keeps the model's mistake).
    * When ``steps`` divides ``2W + 1`` the grid's last shift is ``W + 1``, a copy that
      is all ``fill`` (Quantus raises an IndexError there).

    Args:
      explain: ``explain(x, target, key) -> maps`` on a batch, as for
        :func:`max_sensitivity`.
      x: inputs ``(N, ...)``.
      target: class per example or one int; ``None`` needs ``fn``.
      key: a PRNG key (or one per example) for the explainer.
      steps: the number of translations of Quantus' grid (``nr_steps``).
      shifts: explicit shifts (ints) instead of the grid.
      axis: the axis of one example to translate along (``-2``: the width of
        ``(H, W, C)`` images; for ``(H, W)`` images without a channel axis the width
        is ``-1``, and ``-2`` their height).
      fill: ``'min'`` (each example's minimum) or a number.
      fn: the model, for ``target=None`` and ``keep_prediction``.
      keep_prediction: count only translations that keep the predicted class.
      independent_explain_keys, batch_size: as for :func:`max_sensitivity`.

    Returns:
      float32 array ``(N,)``.
    """
    check_explain(explain, "continuity")
    x = as_input(x)
    if x.ndim < 2:
        raise ValueError(f"continuity translates examples along an axis: x has shape {x.shape}")
    axis = _as_axis(axis, x.ndim - 1, f"an axis of one example of shape {x.shape[1:]}")
    size = x.shape[1:][axis]
    if shifts is None:
        steps = as_count(steps, "steps")
        step = (2 * size + 1) // steps
        if step == 0:
            raise ValueError(
                f"steps must be at most 2 * {size} + 1 (twice the axis' size plus 1), got {steps}"
            )
        grid = -size + step * np.arange(1, steps + 1)
    else:
        try:
            grid = np.asarray(shifts)
        except ValueError:
            grid = np.asarray([])
        if grid.ndim != 1 or grid.size == 0 or not np.issubdtype(grid.dtype, np.integer):
            raise ValueError(f"shifts must be a non-empty 1-D sequence of ints, got {shifts!r}")
    grid = grid[grid != 0]
    if grid.size == 0:
        raise ValueError("shifts has no shift other than 0, which leaves the input unchanged")
    fill = _as_fill(fill)
    if keep_prediction and not callable(fn):
        raise ValueError("keep_prediction=True needs fn= (the model) to tell the prediction")
    # A shift of the axis' size or more leaves only the fill: clipping changes no value
    # and keeps every shift inside int32.
    shift_of = jnp.asarray(np.clip(grid, -size, size), jnp.int32)

    def make_score(x: Array, clean: Array) -> Score:
        predicted = resolve_target(fn, x, None, batch_size=batch_size) if keep_prediction else None

        def score(example: Array, moved: Array, maps: Array) -> Array:
            change = jnp.sum(jnp.abs((maps - clean[example]).reshape(maps.shape[0], -1)), 1)
            distance = _flat_norm(moved - x[example], "fro")
            counts = distance > 0
            if keep_prediction:
                counts &= jnp.argmax(fn(moved), axis=1) == predicted[example]
            return jnp.where(counts, change / jnp.where(distance > 0, distance, 1.0), -jnp.inf)

        return score

    scores = _sensitivity(
        "continuity",
        explain,
        x,
        target,
        key,
        perturb=lambda _, xi, s: translate(xi, shift_of[s], axis=axis, fill=fill),
        score=make_score,
        samples=int(grid.size),
        fn=fn,
        independent_explain_keys=independent_explain_keys,
        batch_size=batch_size,
    )
    best = scores.max(axis=1)
    return jnp.where(best == -jnp.inf, jnp.nan, best)


def relative_input_stability(
    explain: Explain,
    x: Array,
    target: Target,
    key: Array,
    *,
    minval: float = DEFAULT_STABILITY_MINVAL,
    maxval: float = DEFAULT_STABILITY_MAXVAL,
    samples: int = 200,
    eps_min: float = DEFAULT_EPS_MIN,
    norm_ord: str | float = "fro",
    fn: ModelFn | None = None,
    independent_explain_keys: bool = False,
    batch_size: int | None = None,
) -> Array:
    """Relative input stability (RIS, Agarwal et al. 2022) per example::

        max_s ||(e(x) - e(x'_s)) / e(x)|| / max(||(x - x'_s) / x||, eps_min)

    over the perturbed inputs ``x'_s = x + U[minval, maxval]`` (per feature) whose
    predicted class ``argmax fn(x'_s)`` is that of ``x``; lower is more stable. Quantus:
    ``RelativeInputStability``; see the module docstring for the conventions (an
    element of ``e(x)`` or ``x`` that is exactly 0 divides as ``eps_min``) and the
    differences. For input x gradient of a linear model it is 1 (inputs and weights
    without zeros), since then ``(e(x) - e(x')) / e(x) = (x - x') / x``; for an
    explanation that does not change with the input (the gradient of a linear model) it
    is 0.

    Args:
      explain: ``explain(x, target, key) -> maps``, as for :func:`max_sensitivity`.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the predicted
        class of the clean input; every perturbed copy explains the same class.
      key: a PRNG key, or one key per example (shape ``(N,)``).
      minval, maxval: the uniform noise ``U[minval, maxval]`` added to every feature.
        Quantus' default ``[0.02, 0.2]`` shifts every feature up; ``minval=-r,
        maxval=r`` is symmetric noise.
      samples: perturbations per example (Quantus' ``nr_samples``).
      eps_min: the floor of the denominator's norm, and what an exact 0 of ``e(x)`` or
        ``x`` is replaced by in the elementwise divisions.
      norm_ord: the norm ``||.||_p`` over the flattened example, for both the map and
        the input: ``'fro'`` (the 2-norm, Quantus), ``'inf'`` or a number ``p > 0``.
      fn: the model, batch -> logits ``(N, classes)``: required, for the condition that
        the perturbed input keeps the clean input's predicted class.
      independent_explain_keys: a fresh explainer key for every perturbed copy, as for
        :func:`max_sensitivity`.
      batch_size: inputs per call of ``explain`` and ``fn``; ``None`` evaluates all
        ``N * samples`` perturbed copies at once.

    Returns:
      float32 array ``(N,)``; NaN for an example none of whose perturbed copies keeps
      its predicted class.

    Raises:
      ValueError: no ``fn``, ``minval > maxval``, ``eps_min <= 0``, a bad target or
        norm, maps without leading axis ``N``, or NaN/Inf in the inputs.
    """
    check_explain(explain, "relative_input_stability")
    return _relative_stability(
        "relative_input_stability",
        explain,
        x,
        target,
        key,
        view=None,
        relative_view=True,
        minval=minval,
        maxval=maxval,
        samples=samples,
        eps_min=eps_min,
        norm_ord=norm_ord,
        fn=fn,
        independent_explain_keys=independent_explain_keys,
        batch_size=batch_size,
    )


def relative_output_stability(
    explain: Explain,
    x: Array,
    target: Target,
    key: Array,
    *,
    minval: float = DEFAULT_STABILITY_MINVAL,
    maxval: float = DEFAULT_STABILITY_MAXVAL,
    samples: int = 200,
    eps_min: float = DEFAULT_EPS_MIN,
    norm_ord: str | float = "fro",
    fn: ModelFn | None = None,
    independent_explain_keys: bool = False,
    batch_size: int | None = None,
) -> Array:
    """Relative output stability (ROS, Agarwal et al. 2022) per example::

        max_s ||(e(x) - e(x'_s)) / e(x)|| / max(||h(x) - h(x'_s)||, eps_min)

    with ``h = fn`` the logits; the change of the logits is absolute, not relative to
    ``h(x)``, as in Quantus' ``RelativeOutputStability``. Perturbations, the condition on
    the predicted class and every argument as :func:`relative_input_stability` (``fn`` is
    required)."""
    check_explain(explain, "relative_output_stability")
    return _relative_stability(
        "relative_output_stability",
        explain,
        x,
        target,
        key,
        view=fn,
        relative_view=False,
        minval=minval,
        maxval=maxval,
        samples=samples,
        eps_min=eps_min,
        norm_ord=norm_ord,
        fn=fn,
        independent_explain_keys=independent_explain_keys,
        batch_size=batch_size,
    )


def relative_representation_stability(
    explain: Explain,
    x: Array,
    target: Target,
    key: Array,
    *,
    representation: Callable[[Array], Array] | None = None,
    minval: float = DEFAULT_STABILITY_MINVAL,
    maxval: float = DEFAULT_STABILITY_MAXVAL,
    samples: int = 200,
    eps_min: float = DEFAULT_EPS_MIN,
    norm_ord: str | float = "fro",
    fn: ModelFn | None = None,
    independent_explain_keys: bool = False,
    batch_size: int | None = None,
) -> Array:
    """Relative representation stability (RRS, Agarwal et al. 2022) per example::

        max_s ||(e(x) - e(x'_s)) / e(x)|| / max(||(L(x) - L(x'_s)) / L(x)||, eps_min)

    with ``L = representation``, required: a function from a batch of inputs to an
    internal representation ``(N, ...)``, e.g. a hidden layer's activation
    ``lambda xs: handle.capture(xs, 'conv2')[1]`` for a
    :func:`~fmi_jax.attribution.flax_model` handle (Quantus' ``layer_names``). An
    element of ``L(x)`` that is exactly 0 divides as ``eps_min``, as in Quantus'
    ``RelativeRepresentationStability``. ``representation=fn`` gives the variant with the
    logits' elementwise relative change, which differs from
    :func:`relative_output_stability` (absolute change). Perturbations, the condition on
    the predicted class and every other argument as :func:`relative_input_stability`
    (``fn`` is required)."""
    check_explain(explain, "relative_representation_stability")
    if representation is None or not callable(representation):
        raise ValueError(
            "relative_representation_stability needs representation=, a function from a "
            "batch of inputs to an internal representation (N, ...), e.g. "
            "lambda xs: handle.capture(xs, layer)[1]"
        )
    return _relative_stability(
        "relative_representation_stability",
        explain,
        x,
        target,
        key,
        view=representation,
        relative_view=True,
        minval=minval,
        maxval=maxval,
        samples=samples,
        eps_min=eps_min,
        norm_ord=norm_ord,
        fn=fn,
        independent_explain_keys=independent_explain_keys,
        batch_size=batch_size,
    )


def _uniform_sensitivity(
    name: str,
    explain: Explain,
    x: Array,
    target: Target,
    key: Array,
    radius: float,
    samples: int,
    norm_ord: str | float,
    fn: ModelFn | None,
    independent_explain_keys: bool,
    batch_size: int | None,
) -> Array:
    """The ratios of max- and average sensitivity, ``(N, samples)``: uniform noise of
    ``radius``, the change of the map relative to its norm."""
    radius = _as_scale(radius, "radius")
    return _sensitivity(
        name,
        explain,
        x,
        target,
        key,
        perturb=lambda k, xi, _: uniform_perturbation(k, xi, radius),
        score=_map_change(_check_norm_ord(norm_ord), over_input=False),
        samples=samples,
        fn=fn,
        independent_explain_keys=independent_explain_keys,
        batch_size=batch_size,
    )


# score(example, x'_s, Phi(x'_s)) -> (B,) for a chunk of (example, perturbation) pairs,
# built once by make_score(x, Phi(x)) from the checked inputs and the clean maps.
Score = Callable[[Array, Array, Array], Array]
MakeScore = Callable[[Array, Array], Score]


def _map_change(norm_ord: str | float, *, over_input: bool) -> MakeScore:
    """The sensitivities' score: ``||Phi(x') - Phi(x)||`` over ``||Phi(x)||`` (1 where it
    is 0), or over ``||x' - x||_2`` with ``over_input`` (the Lipschitz estimate)."""

    def make_score(x: Array, clean: Array) -> Score:
        clean_norm = _flat_norm(clean, norm_ord)
        clean_norm = jnp.where(clean_norm == 0, 1.0, clean_norm)

        def score(example: Array, noisy: Array, maps: Array) -> Array:
            change = _flat_norm(maps - clean[example], norm_ord)
            if over_input:
                return change / _flat_norm(noisy - x[example], "fro")
            return change / clean_norm[example]

        return score

    return make_score


def _nonzero(values: Array, eps: float) -> Array:
    """``values`` with every exact 0 replaced by ``eps`` (Quantus' ``a + (a == 0) * eps``)."""
    return jnp.where(values == 0, eps, values)


_RETURN_REPRESENTATION = "representation must return an array"


def _relative_stability(
    name: str,
    explain: Explain,
    x: Array,
    target: Target,
    key: Array,
    *,
    view: Callable[[Array], Array] | None,
    relative_view: bool,
    minval: float,
    maxval: float,
    samples: int,
    eps_min: float,
    norm_ord: str | float,
    fn: ModelFn | None,
    independent_explain_keys: bool,
    batch_size: int | None,
) -> Array:
    """RIS (``view=None``: the input itself), ROS (``view=fn``, absolute change) or RRS
    (``view=representation``): the largest score over the perturbations that keep the
    predicted class, NaN where none does."""
    if fn is None:
        raise ValueError(
            f"{name} needs fn= (the model): only perturbed inputs that keep the clean "
            "input's predicted class count"
        )
    minval, maxval = _as_bound(minval, "minval"), _as_bound(maxval, "maxval")
    if minval > maxval:
        raise ValueError(f"minval must be <= maxval, got minval={minval} > maxval={maxval}")
    eps_min = _as_scale(eps_min, "eps_min")
    if eps_min == 0:
        raise ValueError("eps_min must be > 0: it keeps every denominator away from 0")
    norm_ord = _check_norm_ord(norm_ord)

    def make_score(x: Array, clean: Array) -> Score:
        predicted = resolve_target(fn, x, None, batch_size=batch_size)
        clean_view = x
        if view is not None:
            clean_view = map_over_samples(
                lambda example, _: as_rows(view(x[example]), x[example], _RETURN_REPRESENTATION),
                x.shape[0],
                1,
                batch_size=batch_size,
            )[:, 0]

        def score(example: Array, noisy: Array, maps: Array) -> Array:
            before = clean[example]
            map_change = _flat_norm((before - maps) / _nonzero(before, eps_min), norm_ord)
            logits = fn(noisy)
            if view is None:
                after = noisy
            elif view is fn:
                after = jnp.asarray(logits, dtype=jnp.float32)
            else:
                after = as_rows(view(noisy), noisy, _RETURN_REPRESENTATION)
            change = clean_view[example] - after
            if relative_view:
                change = change / _nonzero(clean_view[example], eps_min)
            ratio = map_change / jnp.maximum(_flat_norm(change, norm_ord), eps_min)
            kept = jnp.argmax(logits, axis=1) == predicted[example]
            return jnp.where(kept, ratio, -jnp.inf)

        return score

    scores = _sensitivity(
        name,
        explain,
        x,
        target,
        key,
        perturb=lambda k, xi, _: xi + jax.random.uniform(k, xi.shape, xi.dtype, minval, maxval),
        score=make_score,
        samples=samples,
        fn=fn,
        independent_explain_keys=independent_explain_keys,
        batch_size=batch_size,
    )
    best = scores.max(axis=1)
    return jnp.where(best == -jnp.inf, jnp.nan, best)


def _sensitivity(
    name: str,
    explain: Explain,
    x: Array,
    target: Target,
    key: Array,
    *,
    perturb: Callable[[Array, Array, Array], Array],
    score: MakeScore,
    samples: int,
    fn: ModelFn | None,
    independent_explain_keys: bool,
    batch_size: int | None,
) -> Array:
    """``(N, samples)``: ``score(x, Phi(x))(i, x'_s, Phi(x'_s))`` for every example ``i``
    and perturbation ``x'_s = perturb(key_s, x_i, s)``, in chunks of ``batch_size`` pairs."""
    samples = as_count(samples, "samples")
    x = as_input(x)
    num_examples = x.shape[0]
    if target is None:
        if fn is None:
            raise ValueError(
                f"{name} needs explicit targets or fn= to resolve target=None to the "
                "predicted class"
            )
        target = resolve_target(fn, x, None, batch_size=batch_size)
    elif fn is not None:
        # Checked against the model's classes here: inside the chunks the explainer's
        # own check sees traced targets, and a class out of range would be clamped.
        target = resolve_target(fn, x, target, batch_size=batch_size)
    else:
        target = as_target(target, num_examples)
    # Two streams per example: the input noise and the explainer's own randomness.
    split = jax.vmap(jax.random.split)(example_keys(key, num_examples))
    noise_keys, explain_keys = split[:, 0], split[:, 1]

    def explain_rows(inputs: Array, example: Array, row_keys: Array) -> Array:
        return as_rows(
            explain(inputs, target[example], row_keys), inputs, "explain must return maps"
        )

    clean = map_over_samples(
        lambda example, _: explain_rows(x[example], example, explain_keys[example]),
        num_examples,
        1,
        batch_size=batch_size,
    )[:, 0]
    pair_score = score(x, clean)

    def evaluate(example: Array, sample: Array) -> Array:
        noisy = jax.vmap(perturb)(sample_keys(noise_keys, example, sample), x[example], sample)
        row_keys = (
            sample_keys(explain_keys, example, sample)
            if independent_explain_keys
            else explain_keys[example]
        )
        return pair_score(example, noisy, explain_rows(noisy, example, row_keys))

    return map_over_samples(evaluate, num_examples, samples, batch_size=batch_size)
