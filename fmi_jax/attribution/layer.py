r"""Layer and neuron attribution: what a hidden layer, or one of its units, contributes.

Layer methods explain the target logit ``y_t`` by the units of a named layer and return
maps shaped like the layer's activation ``A`` (``(N, h, w, K)`` for a convolution,
``(N, K)`` for a dense layer, ``(N, T, D)`` for tokens); neuron methods explain
one unit ``A_n`` of that layer (``neuron=``, an index tuple into ``A`` without the batch
axis, Captum's ``neuron_selector`` tuple) by the input features and return maps shaped
like ``x``. Below, ``x'`` is the baseline, ``x(a) = x' + a (x - x')`` the straight input
path, ``g(.) = dy_t / dA`` the gradient flowing into the layer, and ``(a_k, w_k)`` the
nodes and weights of a :func:`~fmi_jax.attribution.quadrature` rule on [0, 1].

Layer attribution:

* ``layer_gradient_x_activation``: ``A(x) * g(x)``. For a network that is linear after
  the layer the map sums to ``y_t(x)`` minus the head's bias for class t.
  Captum: ``LayerGradientXActivation``.
* ``layer_integrated_gradients``: integrated gradients at the layer, with the layer's
  output (not the input) moved along a straight line,
  ``A(a) = A(x') + a (A(x) - A(x'))``, and the rest of the network run from ``A(a)``:

      LIG_j = (A_j(x) - A_j(x')) * sum_k w_k g_j(A(a_k)).

  Complete at the layer, ``sum_j LIG_j = y_t(x) - y_t(x')`` up to the quadrature error,
  exactly for a network linear after the layer (Sundararajan et al. 2017 applied to the
  layer; Captum: ``LayerIntegratedGradients``, layer output patched the same way). In a
  network with a connection that bypasses the layer, everything outside the layer still
  sees ``x``, as in Captum, and completeness holds only for the part through the layer.
* ``internal_influence``: the path integral of the layer gradient along the *input* path,
  ``II_j = sum_k w_k g_j(x(a_k))`` (Leino et al. 2018, "Influence-Directed Explanations
  for Deep Convolutional Networks", arXiv:1802.03788; Captum: ``InternalInfluence``). No
  difference factor: it is a gradient-like quantity, and for a layer that is affine in
  the input ``II * (A(x) - A(x'))`` is layer integrated gradients with the same rule.
* ``layer_conductance``: the flow of the input path through unit j (Dhamdhere, Sundararajan
  & Yan 2018, "How Important is a Neuron?", arXiv:1805.12233),
  ``Cond_j = int_0^1 g_j(x(a)) dA_j(x(a))/da da``, discretised as Captum's
  ``LayerConductance`` does, as a left Riemann-Stieltjes sum over the uniform nodes
  ``a_k = k / n`` (n = ``steps``):

      Cond_j = sum_{k=0}^{n-1} g_j(x(a_k)) * (A_j(x(a_{k+1})) - A_j(x(a_k))).

  Summed over the layer, ``sum_j g_j dA_j`` is the first-order change of ``y_t`` over each
  step, so the map is complete up to an O(1/n) error; exactly complete for a network
  linear after the layer (g constant: the sum telescopes). For a layer that is affine in
  the input, ``dA = (A(x) - A(x')) / n`` and conductance is layer integrated gradients
  with ``riemann_left``.

  Difference from Captum: Captum takes the n + 1 nodes of the chosen rule
  (``method=``, ``gausslegendre`` by default). Gauss-Legendre nodes do not include 0 and 1,
  so there the differences telescope to ``A(x(a_n)) - A(x(a_0))`` instead of
  ``A(x) - A(x')``: even a network that is linear in x loses part of its logit difference
  (about the fraction ``1 - (a_n - a_0)``). Here the nodes are always ``k / n``, which
  include both end points: it is Captum's ``method='riemann_trapezoid'``, whose nodes are
  ``linspace(0, 1, n + 1)``, and there is no ``rule`` option.

Neuron attribution (``A_n`` is the activation of the unit ``neuron`` of ``layer``):

* ``neuron_gradient``: ``dA_n / dx``. Captum: ``NeuronGradient``.
* ``neuron_integrated_gradients``: integrated gradients of ``A_n`` instead of a logit,
  ``(x - x') * sum_k w_k dA_n(x(a_k))/dx``, complete: it sums to ``A_n(x) - A_n(x')`` up to
  the quadrature error. Captum: ``NeuronIntegratedGradients``.
* ``neuron_conductance``: the conductance of input feature i through unit j to the
  target logit (Dhamdhere et al. 2018, eq. 3),

      NCond_ij = (x_i - x'_i) * sum_k w_k g_j(x(a_k)) dA_j(x(a_k))/dx_i.

  Summed over the inputs it is the total conductance of the unit, ``int g_j dA_j/da da``,
  the quantity ``layer_conductance`` approximates by finite differences: with
  ``rule='riemann_left'`` (the default) both use the same nodes and the same gradients
  ``g_j``, and they agree exactly when the unit is affine in the input. Summed over every
  unit of a layer that all paths go through, ``sum_j g_j dA_j/dx_i = dy_t/dx_i`` (the
  chain rule), so it is integrated gradients with the same rule. Captum's
  ``NeuronConductance`` defaults to ``method='riemann_trapezoid'`` with its weights that
  sum to (n-1)/n (see :mod:`.integrated_gradients`); ours are the rule's.

``neuron_gradient`` and ``neuron_integrated_gradients`` explain an activation, not a
class, and refuse a ``target``; ``neuron_conductance`` explains the target logit.

Any method at a layer or a neuron. Two transforms, like
:func:`~fmi_jax.attribution.noise_tunnel`, turn any method with the common signature
into a layer or a neuron method, instead of a layer and a neuron variant of each:

* ``at_layer(method)`` explains the target logit by the layer's units: it runs
  ``method`` on the rest of the network, ``T(a)`` = the logits with the layer's output
  set to ``a`` (:meth:`FlaxModel.logits_with`), at the input ``A(x)``. A reference input
  ``x'`` (``baseline=``) becomes its activation ``A(x')``, and a batch of references
  (one per example, or GradientSHAP's and DeepLiftShap's distributions) becomes theirs;
  ``layer_baseline=`` gives a reference at the layer itself instead. With neither, the
  method's own default applies at the layer: the all-zero activation, every unit
  switched off. Because ``T`` sees nothing but ``a``, the layer
  must be one that every path from the input to the output goes through; a layer that
  a skip connection bypasses is refused (the jaxpr of the network after the layer is
  checked for a dependence on ``x``).
* ``at_neuron(method)`` explains one unit ``A_n`` by the input features: it runs
  ``method`` on the model function ``x -> A_n(x)`` (one output, so ``target`` must be
  None), with the input, baseline and options unchanged.

Captum's other layer and neuron classes are therefore compositions (with Captum's
reference: ``baseline=0.0``, the zero input, for ``LayerDeepLift``, whose default it
is; ``layer_baseline=`` for ``LayerFeatureAblation``'s ``layer_baselines``; ``~``:
another path, below):

    LayerDeepLift = at_layer(deeplift)        NeuronDeepLift = at_neuron(deeplift)
    LayerDeepLiftShap = at_layer(deeplift_shap)
    NeuronDeepLiftShap = at_neuron(deeplift_shap)
    LayerGradientShap ~ at_layer(gradient_shap)
    NeuronGradientShap = at_neuron(gradient_shap)
    LayerLRP = at_layer(lrp)                  NeuronGuidedBackprop = at_neuron(guided_backprop)
    LayerFeatureAblation = at_layer(feature_ablation)
    NeuronDeconvolution = at_neuron(deconvolution)
    LayerFeaturePermutation = at_layer(feature_permutation)
    NeuronFeatureAblation = at_neuron(feature_ablation)

and so are four of the functions above: ``at_layer(integrated_gradients)`` with
``baseline=x'`` is ``layer_integrated_gradients``, ``at_layer(input_x_gradient)`` is
``layer_gradient_x_activation``, ``at_neuron(saliency)`` is ``neuron_gradient`` and
``at_neuron(integrated_gradients)`` is ``neuron_integrated_gradients`` (the tests check
each pair). The layer pair stays a pair of functions because it also takes a layer
that a skip connection bypasses (everything outside the layer then still sees ``x``);
the neuron pair, because the two are the neuron methods most asked for by name, each
with its formula in its docstring.

DeepLIFT's multipliers from the output back to the layer depend only on ``A(x)``,
``A(x')`` and the network after the layer, so ``at_layer(deeplift)`` is Captum's
``LayerDeepLift`` and sums to ``y_t(x) - y_t(x')``. Captum's ``LayerGradientShap``
differs: it moves the *input* from a reference towards a noisy input and multiplies
the layer gradient there by the change of the layer's activation, which is not
complete at the layer unless the layer is affine in the input; ``at_layer(gradient_shap)``
moves the activation itself, as ``LayerIntegratedGradients`` does, so its expectation
sums to ``y_t(x) - E_b y_t(b)`` (without noise). Captum's ``LayerFeatureAblation``
ablates to 0 at the layer by default, as ``at_layer(feature_ablation)`` without
``baseline`` does.

Like the CAMs, these methods take a model handle (``flax_model(module, variables,
train=False)`` or ``flax_model(nnx_module)``; a ``(module, variables)`` tuple or an
``nnx.Module`` also work), which is itself a model function. ``handle.capture(x, layer,
delta)`` replaces ``A`` by ``A + delta`` for the rest of the forward pass, so the gradient
with respect to ``delta`` is ``dy/dA`` at the patched activation
(:mod:`fmi_jax.attribution.handle`). The layer must be one the handle can capture
(``handle.layer_names(x)``: modules returning one ``(N, ...)`` array, called once).

Memory: every (example, node) evaluation goes through
:func:`fmi_jax.attribution.core.sum_over_samples` in chunks of ``batch_size``, so peak
memory is one chunk plus accumulators the size of the result, whatever ``steps`` is;
``batch_size`` changes a result by float32 rounding at most. ``layer_conductance``
instead walks the path of a chunk of ``batch_size`` examples with a ``lax.scan`` that
carries the previous node's activation and gradient (each segment's end is the next
one's start), so each node costs one forward and one backward pass and memory stays one
node's, whatever ``steps`` is.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

from fmi_jax.attribution.core import (
    Array,
    Method,
    ModelFn,
    Target,
    as_baseline,
    as_count,
    as_input,
    as_reference,
    baseline_is_distribution,
    channels_last_known,
    method_name,
    per_example,
    refuse_baseline,
    resolve_target,
    select_target,
    sum_over_samples,
)
from fmi_jax.attribution.handle import FlaxModel, activation_and_gradient, layer_call
from fmi_jax.attribution.integrated_gradients import quadrature
from fmi_jax.attribution.propagation import CALLS, inner_jaxpr

__all__ = [
    "layer_gradient_x_activation",
    "layer_integrated_gradients",
    "layer_conductance",
    "internal_influence",
    "neuron_gradient",
    "neuron_integrated_gradients",
    "neuron_conductance",
    "at_layer",
    "at_neuron",
]


# Shared pieces.


def _rule(rule: str, steps: int) -> tuple[Array, Array]:
    alphas, weights = quadrature(rule, steps)
    return jnp.asarray(alphas, jnp.float32), jnp.asarray(weights, jnp.float32)


def _path_point(x: Array, baseline: Array, example: Array, alpha: Array) -> Array:
    """``x'_e + alpha (x_e - x'_e)`` for a chunk of examples and one alpha per row."""
    start, end = baseline[example], x[example]
    return start + per_example(alpha, start) * (end - start)


def _activation(handle: FlaxModel, x: Array, layer: str) -> Array:
    return handle.capture(x, layer)[1].astype(jnp.float32)


def _gradient_at(handle: FlaxModel, x: Array, target: Array, layer: str, value: Array) -> Array:
    """``dy_t/dA`` with ``layer``'s output set to ``value``: only the layers after it run
    (:meth:`FlaxModel.logits_with`), forward and backward."""

    def target_sum(value: Array) -> Array:
        return jnp.sum(select_target(handle.logits_with(x, layer, value), target))

    return jax.grad(target_sum)(value).astype(jnp.float32)


def _neuron_index(neuron: Any, layer: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``neuron`` as a tuple of non-negative ints indexing one unit of an activation of
    shape ``shape`` (batch axis included); negative indices count from the end."""
    unit_shape = shape[1:]
    how = (
        f"pass neuron= as a tuple of {len(unit_shape)} ints, one per axis of layer "
        f"{layer!r}'s activation of shape {unit_shape} per example"
    )
    if isinstance(neuron, int | bool) or not isinstance(neuron, tuple | list):
        raise ValueError(f"neuron={neuron!r} is not an index tuple: {how}")
    try:
        index = tuple(operator.index(i) for i in neuron if not isinstance(i, bool))
    except TypeError:
        index = ()
    if len(index) != len(neuron) or len(index) != len(unit_shape):
        raise ValueError(f"neuron={neuron!r} is not a valid index: {how}")
    if not all(-size <= i < size for i, size in zip(index, unit_shape)):
        raise ValueError(
            f"neuron={tuple(neuron)!r} is out of range for layer {layer!r}, whose activation "
            f"has shape {unit_shape} per example"
        )
    return tuple(i % size for i, size in zip(index, unit_shape))


def _refuse_target(target: Target, method: str) -> None:
    if target is not None:
        raise ValueError(
            f"{method} explains the activation of neuron=, not a class, so target= would be "
            "ignored; leave it None (neuron_conductance attributes a class through a neuron)"
        )


def _neuron_sum(handle: FlaxModel, x: Array, layer: str, neuron: tuple[int, ...]) -> Array:
    """The batch sum of the unit's activation: its gradient is every example's own."""
    activation = handle.capture(x, layer)[1].astype(jnp.float32)
    return jnp.sum(activation[(slice(None), *neuron)])


# Layer attribution.


def layer_gradient_x_activation(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layer: str,
) -> Array:
    """Layer activation times the gradient of the target logit, ``A * dy_t/dA``.

    Args:
      model: a model handle, ``flax_model(module, variables, train=False)`` or
        ``flax_model(nnx_module)``; a ``(module, variables)`` tuple also works.
      x: inputs ``(N, ...)``.
      target: class per example, one class for all, or ``None`` (predicted class).
      key: unused (deterministic); accepted so every method has one signature.
      baseline: must be None (no reference input).
      batch_size: examples per backward pass; ``None`` processes all at once.
      layer: module path of the layer (``handle.layer_names(x)``).

    Returns:
      float32 attributions shaped like the layer's activation ``A``.
    """
    name = "layer_gradient_x_activation"
    refuse_baseline(baseline, name)
    handle, x, _ = layer_call(model, x, layer, name, batch_size)
    target = resolve_target(handle, x, target, batch_size=batch_size)

    def product(example: Array, _: Array) -> Array:
        activation, gradient = activation_and_gradient(handle, x[example], target[example], layer)
        return activation * gradient

    return sum_over_samples(product, x.shape[0], batch_size=batch_size)


def layer_integrated_gradients(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: Array | float | None = None,
    batch_size: int | None = None,
    layer: str,
    steps: int = 50,
    rule: str = "gausslegendre",
) -> Array:
    """Integrated gradients at a layer whose output moves from ``A(x')`` to ``A(x)``.

    ``(A(x) - A(x')) * sum_k w_k dy_t/dA (A(x') + a_k (A(x) - A(x')))``, the rest of the
    network run from the interpolated activation (module docstring): the layer's output
    is replaced by each point of the path (:meth:`FlaxModel.logits_with`), so, compiled
    (under ``jax.jit``, or in the ``lax.scan`` of ``batch_size`` chunks), the layers
    before it run only for the two end points. The completeness gap
    is ``completeness_delta(model, x, target, attributions, baseline=baseline)``.

    Args:
      model, x, target, key, layer: as in :func:`layer_gradient_x_activation`.
      baseline: the reference input x' (``None``: zeros; anything that broadcasts to x).
      batch_size: (example, step) evaluations per chunk; bounds memory.
      steps: quadrature nodes (backward passes per example).
      rule: quadrature rule, one of ``QUADRATURE_RULES``.

    Returns:
      float32 attributions shaped like the layer's activation.
    """
    handle, x, _ = layer_call(model, x, layer, "layer_integrated_gradients", batch_size)
    baseline = as_baseline(baseline, x)
    alphas, weights = _rule(rule, steps)
    target = resolve_target(handle, x, target, batch_size=batch_size)

    def end_points(example: Array, _: Array) -> tuple[Array, Array]:
        return (
            _activation(handle, x[example], layer),
            _activation(handle, baseline[example], layer),
        )

    at_input, at_baseline = sum_over_samples(end_points, x.shape[0], batch_size=batch_size)
    difference = at_input - at_baseline

    def weighted_gradient(example: Array, step: Array) -> Array:
        start, change = at_baseline[example], difference[example]
        point = start + per_example(alphas[step], change) * change
        gradient = _gradient_at(handle, x[example], target[example], layer, point)
        return per_example(weights[step], gradient) * gradient

    average_gradient = sum_over_samples(
        weighted_gradient, x.shape[0], len(alphas), batch_size=batch_size
    )
    return difference * average_gradient


def internal_influence(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: Array | float | None = None,
    batch_size: int | None = None,
    layer: str,
    steps: int = 50,
    rule: str = "gausslegendre",
) -> Array:
    """Internal influence: the layer gradient averaged along the input path,
    ``sum_k w_k dy_t/dA (x' + a_k (x - x'))`` (Leino et al. 2018; module docstring).

    Arguments as in :func:`layer_integrated_gradients`. Returns float32 values shaped
    like the layer's activation.
    """
    handle, x, _ = layer_call(model, x, layer, "internal_influence", batch_size)
    baseline = as_baseline(baseline, x)
    alphas, weights = _rule(rule, steps)
    target = resolve_target(handle, x, target, batch_size=batch_size)

    def weighted_gradient(example: Array, step: Array) -> Array:
        point = _path_point(x, baseline, example, alphas[step])
        _, gradient = activation_and_gradient(handle, point, target[example], layer)
        return per_example(weights[step], gradient) * gradient

    return sum_over_samples(weighted_gradient, x.shape[0], len(alphas), batch_size=batch_size)


def layer_conductance(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: Array | float | None = None,
    batch_size: int | None = None,
    layer: str,
    steps: int = 50,
) -> Array:
    """Conductance of every unit of a layer (Dhamdhere et al. 2018; module docstring):
    ``sum_k dy_t/dA(x(a_k)) * (A(x(a_{k+1})) - A(x(a_k)))`` with ``a_k = k / steps``.

    Args:
      model, x, target, key, layer: as in :func:`layer_gradient_x_activation`.
      baseline: the reference input x' (``None``: zeros; anything that broadcasts to x).
      batch_size: examples per forward and backward pass (each pass is one point of
        the path for each of them); bounds memory. ``None``: all at once.
      steps: path segments n (n backward and n + 1 forward passes per example).

    Returns:
      float32 attributions shaped like the layer's activation.
    """
    handle, x, _ = layer_call(model, x, layer, "layer_conductance", batch_size)
    baseline = as_baseline(baseline, x)
    n = as_count(steps, "steps")
    target = resolve_target(handle, x, target, batch_size=batch_size)

    def path(example: Array, _: Array) -> Array:
        # Segment k needs A and dy/dA at its start and A at its end, which is the next
        # segment's start: a scan along the path carries them, so each point costs one
        # forward and one backward pass, and the last point a forward pass only.
        def point(k: int | Array) -> Array:
            alpha = jnp.full(example.shape, k, jnp.int32) / n
            return _path_point(x, baseline, example, alpha)

        def step(carry: tuple[Array, Array, Array], k: Array):
            previous, gradient, total = carry
            activation, next_gradient = activation_and_gradient(
                handle, point(k), target[example], layer
            )
            return (activation, next_gradient, total + gradient * (activation - previous)), None

        start, gradient = activation_and_gradient(handle, point(0), target[example], layer)
        carry = (start, gradient, jnp.zeros_like(start))
        previous, gradient, total = jax.lax.scan(step, carry, jnp.arange(1, n))[0]
        return total + gradient * (_activation(handle, point(n), layer) - previous)

    # Chunks as even as batch_size allows: a padded example would walk the whole path.
    examples = x.shape[0]
    chunk = None if batch_size is None else -(-examples // -(-examples // int(batch_size)))
    return sum_over_samples(path, examples, 1, batch_size=chunk)


# Neuron attribution.


def neuron_gradient(
    model: Any,
    x: Array,
    target: None = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layer: str,
    neuron: tuple[int, ...],
) -> Array:
    """Gradient of one unit's activation with respect to the input, ``dA_n/dx``.

    Args:
      model, x, key, layer: as in :func:`layer_gradient_x_activation`.
      target: must be None (the unit is explained, not a class).
      baseline: must be None (no reference input).
      batch_size: examples per backward pass.
      neuron: index tuple into the layer's activation without the batch axis, e.g.
        ``(i, j, k)`` for row i, column j, channel k of an ``(N, h, w, K)`` layer,
        ``(k,)`` for unit k of an ``(N, K)`` dense layer.

    Returns:
      float32 gradients shaped like ``x``.
    """
    name = "neuron_gradient"
    _refuse_target(target, name)
    refuse_baseline(baseline, name)
    handle, x, shape = layer_call(model, x, layer, name, batch_size)
    index = _neuron_index(neuron, layer, shape)

    def gradient(example: Array, _: Array) -> Array:
        return jax.grad(lambda point: _neuron_sum(handle, point, layer, index))(x[example])

    return sum_over_samples(gradient, x.shape[0], batch_size=batch_size)


def neuron_integrated_gradients(
    model: Any,
    x: Array,
    target: None = None,
    *,
    key: Array | None = None,
    baseline: Array | float | None = None,
    batch_size: int | None = None,
    layer: str,
    neuron: tuple[int, ...],
    steps: int = 50,
    rule: str = "gausslegendre",
) -> Array:
    """Integrated gradients of one unit's activation,
    ``(x - x') * sum_k w_k dA_n(x' + a_k (x - x'))/dx``; sums to ``A_n(x) - A_n(x')`` up to
    the quadrature error.

    Args:
      model, x, key, layer, neuron: as in :func:`neuron_gradient`.
      target: must be None (the unit is explained, not a class).
      baseline: the reference input x' (``None``: zeros; anything that broadcasts to x).
      batch_size: (example, step) evaluations per chunk; bounds memory.
      steps, rule: as in :func:`~fmi_jax.attribution.integrated_gradients`.

    Returns:
      float32 attributions shaped like ``x``.
    """
    name = "neuron_integrated_gradients"
    _refuse_target(target, name)
    handle, x, shape = layer_call(model, x, layer, name, batch_size)
    index = _neuron_index(neuron, layer, shape)
    baseline = as_baseline(baseline, x)
    alphas, weights = _rule(rule, steps)

    def weighted_gradient(example: Array, step: Array) -> Array:
        point = _path_point(x, baseline, example, alphas[step])
        gradient = jax.grad(lambda p: _neuron_sum(handle, p, layer, index))(point)
        return per_example(weights[step], gradient) * gradient

    average_gradient = sum_over_samples(
        weighted_gradient, x.shape[0], len(alphas), batch_size=batch_size
    )
    return (x - baseline) * average_gradient


def neuron_conductance(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: Array | float | None = None,
    batch_size: int | None = None,
    layer: str,
    neuron: tuple[int, ...],
    steps: int = 50,
    rule: str = "riemann_left",
) -> Array:
    """Conductance of every input feature through one unit to the target logit,
    ``(x - x') * sum_k w_k dy_t/dA_n * dA_n/dx`` along the input path (module docstring).

    Args:
      model, x, key, layer, neuron: as in :func:`neuron_gradient`.
      target: class per example, one class for all, or ``None`` (predicted class).
      baseline: the reference input x' (``None``: zeros; anything that broadcasts to x).
      batch_size: (example, step) evaluations per chunk; bounds memory.
      steps: quadrature nodes.
      rule: quadrature rule; the default ``riemann_left`` uses the nodes ``k / steps``
        of :func:`layer_conductance`. Summed over the inputs, the two agree on the
        unit's total when the unit is affine in the input; otherwise they are two
        discretisations of the same integral (a derivative here, finite differences
        there) and differ by their O(1/steps) errors.

    Returns:
      float32 attributions shaped like ``x``.
    """
    handle, x, shape = layer_call(model, x, layer, "neuron_conductance", batch_size)
    index = _neuron_index(neuron, layer, shape)
    baseline = as_baseline(baseline, x)
    alphas, weights = _rule(rule, steps)
    target = resolve_target(handle, x, target, batch_size=batch_size)
    unit = (slice(None), *index)

    def weighted_gradient(example: Array, step: Array) -> Array:
        point = _path_point(x, baseline, example, alphas[step])
        delta = jnp.zeros(handle.layer_shape(point, layer), jnp.float32)

        def outputs(p: Array, d: Array) -> tuple[Array, Array]:
            logits, activation = handle.capture(p, layer, d)
            return select_target(logits, target[example]), activation[unit].astype(jnp.float32)

        (logit, value), pullback = jax.vjp(outputs, point, delta)
        _, layer_gradient = pullback((jnp.ones_like(logit), jnp.zeros_like(value)))
        unit_gradient, _ = pullback((jnp.zeros_like(logit), jnp.ones_like(value)))
        scale = weights[step] * layer_gradient[unit].astype(jnp.float32)
        return per_example(scale, unit_gradient) * unit_gradient

    average = sum_over_samples(weighted_gradient, x.shape[0], len(alphas), batch_size=batch_size)
    return (x - baseline) * average


# Any method at a layer or at a neuron.


def _depends(jaxpr: jax_core.Jaxpr, dependent: list[bool]) -> list[bool]:
    """Which outputs of ``jaxpr`` are computed from the inputs flagged ``dependent``: a
    walk over its equations, into nested calls; any other equation with a dependent
    operand (control flow included) makes all its outputs dependent."""
    reached = {var for var, flag in zip(jaxpr.invars, dependent) if flag}

    def reads(atom: Any) -> bool:
        return not isinstance(atom, jax_core.Literal) and atom in reached

    for eqn in jaxpr.eqns:
        operands = [reads(atom) for atom in eqn.invars]
        if not any(operands):
            continue
        outputs = [True] * len(eqn.outvars)
        if eqn.primitive.name in CALLS:
            inner, _ = inner_jaxpr(eqn)
            if len(inner.invars) == len(operands):
                outputs = _depends(inner, operands)
        reached.update(var for var, flag in zip(eqn.outvars, outputs) if flag)
    return [reads(atom) for atom in jaxpr.outvars]


def _refuse_bypassed(handle: FlaxModel, x: Array, layer: str, method: str) -> None:
    """A ValueError when the logits read the input other than through ``layer`` (a skip
    connection around it): the network after the layer is then not a function of the
    layer's output alone."""
    program = jax.make_jaxpr(lambda x, value: handle.logits_with(x, layer, value))(
        jax.ShapeDtypeStruct(x.shape, x.dtype),
        jax.ShapeDtypeStruct(handle.layer_shape(x, layer), jnp.float32),
    )
    if any(_depends(program.jaxpr, [True, False])):
        raise ValueError(
            f"{method}: the output of {handle!r} also reads the input other than through "
            f"layer {layer!r} (a skip connection around it, or control flow that carries "
            "the input), so the network after the layer is not a function of the layer's "
            "output alone; choose a layer every path goes through (such as a whole "
            "residual block), or use layer_integrated_gradients"
        )


def _rest_of_network(handle: FlaxModel, example_shape: tuple[int, ...], layer: str) -> ModelFn:
    """``a -> logits`` with ``layer``'s output set to ``a``. The input before the layer is
    zeros (nothing after the layer reads it: see :func:`_refuse_bypassed`), so compiled,
    only the layers after ``layer`` run."""

    def rest(value: Array) -> Array:
        zeros = jnp.zeros((value.shape[0], *example_shape), jnp.float32)
        return handle.logits_with(zeros, layer, value)

    return rest


def _activations(handle: FlaxModel, inputs: Array, layer: str, batch_size: int | None) -> Array:
    """``A(inputs)`` for a batch, ``batch_size`` inputs per forward pass."""
    return sum_over_samples(
        lambda example, _: _activation(handle, inputs[example], layer),
        inputs.shape[0],
        batch_size=batch_size,
    )


def _layer_baseline(
    handle: FlaxModel,
    baseline: Any,
    x: Array,
    layer: str,
    method: str,
    batch_size: int | None,
    distribution: bool,
) -> Array:
    """The activation of a reference input. A batch of inputs (anything with the batch
    axis whose example axes broadcast to one input) gives a batch of activations: one
    per example, or, for a method whose baseline is a distribution of references
    (``distribution``), any number of them; one input, or anything that broadcasts to
    one (a scalar), gives one activation."""
    try:
        references = as_reference(baseline)
    except ValueError as error:
        raise ValueError(f"{method}: {error}") from None
    example = x.shape[1:]
    how = (
        f"one input {example}, a batch of {x.shape[0]} (one per example)"
        + (" or of any number of references" if distribution else "")
        + ", or anything that broadcasts to them"
    )
    batched = references.ndim == x.ndim
    try:
        if batched and not distribution and references.shape[0] not in (1, x.shape[0]):
            raise ValueError
        shape = (references.shape[0], *example) if batched else example
        references = jnp.broadcast_to(references, shape)
    except ValueError:
        raise ValueError(
            f"{method}: baseline is a reference input, so it must be {how}; got shape "
            f"{references.shape}"
        ) from None
    if batched:
        return _activations(handle, as_input(references, "baseline"), layer, batch_size)
    return _activation(handle, as_input(references[None], "baseline"), layer)[0]


def _refuse_handle_methods(method: Method, transform: str) -> str:
    """The method's name; a ValueError for a method that takes a model handle (the CAMs,
    the layer methods): what the transform hands it is a plain model function."""
    name = method_name(method, transform)
    parameters = list(inspect.signature(method).parameters)
    if parameters[:1] == ["model"]:
        raise ValueError(
            f"{transform}({name}): {name} looks inside a model handle, and {transform} "
            "gives the method a plain model function; wrap a method of fn(x) -> logits, "
            "such as deeplift, gradient_shap or feature_ablation"
        )
    return name


def at_layer(method: Method) -> Method:
    """``method`` applied at a layer: the layer's units are the features, the rest of the
    network is the model (module docstring).

    ``at_layer(deeplift)(handle, x, t, layer='conv2', baseline=x0)`` is Captum's
    ``LayerDeepLift``: ``method(T, A(x), t, baseline=A(x0), ...)`` with ``T(a)`` the
    logits when the layer outputs ``a``.

    Args:
      method: an attribution method with the common signature that takes a plain model
        function (not one that looks inside a handle, such as a CAM).

    Returns:
      ``layer_method(model, x, target=None, *, key=None, baseline=None,
      batch_size=None, layer, layer_baseline=None, **options)``: ``model`` is a model
      handle (``flax_model(...)``); ``baseline`` is a reference *input* (or a batch of
      them), passed to ``method`` as its activation; ``layer_baseline`` is a reference
      at the layer itself, passed as is (Captum's ``layer_baselines``); with neither,
      ``method`` keeps its own default at the layer (zero activations). ``key``,
      ``batch_size`` and ``options`` go to ``method`` unchanged. It returns what
      ``method`` returns, shaped like the layer's activation.

    Raises:
      ValueError: for a method that takes a model handle (its first parameter is
        ``model``, the library's convention), and, when called, for a layer that a
        connection bypasses, a baseline that is not a reference input, or both
        ``baseline`` and ``layer_baseline``.
    """
    inner = _refuse_handle_methods(method, "at_layer")
    name = f"layer_{inner}"
    distribution = baseline_is_distribution(method)

    def layer_method(
        model: Any,
        x: Array,
        target: Target = None,
        *,
        key: Array | None = None,
        baseline: Any = None,
        batch_size: int | None = None,
        layer: str,
        layer_baseline: Any = None,
        **options: Any,
    ) -> Any:
        handle, x, _ = layer_call(model, x, layer, name, batch_size)
        _refuse_bypassed(handle, x, layer, name)
        if baseline is not None and layer_baseline is not None:
            raise ValueError(
                f"{name}: give baseline (a reference input, whose activation is used) or "
                "layer_baseline (a reference at the layer itself), not both"
            )
        given = {}
        if baseline is not None:
            given["baseline"] = _layer_baseline(
                handle, baseline, x, layer, name, batch_size, distribution
            )
        elif layer_baseline is not None:
            given["baseline"] = layer_baseline
        activation = _activations(handle, x, layer, batch_size)
        rest = _rest_of_network(handle, x.shape[1:], layer)
        with channels_last_known():  # (N, h, w, K) however small h and w are
            return method(
                rest, activation, target, key=key, batch_size=batch_size, **given, **options
            )

    layer_method.__name__ = name
    layer_method.__doc__ = f"``at_layer({inner})``: {inner} with a layer's units as features."
    # A batch of references stays one distribution (noise_tunnel reads this).
    layer_method.baseline_is_distribution = distribution
    return layer_method


def _unit_activation(handle: FlaxModel, layer: str, neuron: tuple[int, ...]) -> ModelFn:
    """The model function ``x -> A_n(x)``, one output per example, ``(N, 1)``."""
    unit = (slice(None), *neuron)

    def unit_activation(x: Array) -> Array:
        return _activation(handle, x, layer)[unit][:, None]

    return unit_activation


def at_neuron(method: Method) -> Method:
    """``method`` applied to one unit of a layer: the model is ``x -> A_n(x)`` (module
    docstring).

    ``at_neuron(guided_backprop)(handle, x, layer='conv2', neuron=(3, 4, 0))`` is Captum's
    ``NeuronGuidedBackprop``.

    Args:
      method: an attribution method with the common signature that takes a plain model
        function (not one that looks inside a handle, such as a CAM).

    Returns:
      ``neuron_method(model, x, target=None, *, key=None, baseline=None,
      batch_size=None, layer, neuron, **options)``: ``model`` is a model handle;
      ``target`` must be None (the unit is explained, not a class); ``neuron`` indexes
      the layer's activation without the batch axis, e.g. ``(i, j, k)``; the rest goes to
      ``method`` unchanged. It returns what ``method`` returns, shaped like ``x``.
    """
    inner = _refuse_handle_methods(method, "at_neuron")
    name = f"neuron_{inner}"

    def neuron_method(
        model: Any,
        x: Array,
        target: None = None,
        *,
        key: Array | None = None,
        baseline: Any = None,
        batch_size: int | None = None,
        layer: str,
        neuron: tuple[int, ...],
        **options: Any,
    ) -> Any:
        _refuse_target(target, name)
        handle, x, shape = layer_call(model, x, layer, name, batch_size)
        unit = _unit_activation(handle, layer, _neuron_index(neuron, layer, shape))
        given = {} if baseline is None else {"baseline": baseline}
        return method(unit, x, 0, key=key, batch_size=batch_size, **given, **options)

    neuron_method.__name__ = name
    neuron_method.__doc__ = f"``at_neuron({inner})``: {inner} of one unit of a layer."
    neuron_method.baseline_is_distribution = baseline_is_distribution(method)
    return neuron_method
