"""FullGrad: the full-gradient decomposition of a network's output and its saliency map.

Srinivas & Fleuret, "Full-Gradient Representation for Neural Network Visualization",
NeurIPS 2019, arXiv:1905.00780.

A network built of affine layers (convolutions, dense layers, batch norms in inference
mode) and positively homogeneous nonlinearities (ReLU, max-pooling) is, around any
input where it is differentiable, exactly

    f_c(x) = sum_i (grad_x f_c * x)_i + sum_l sum_ijk g^l_ijk b^l_ijk

where, for every affine layer ``l`` with output ``z^l``, ``b^l`` is its constant term and
``g^l = df_c / dz^l`` the gradient arriving at its output (the paper's bias-gradients
``g^l * b^l``). The input-gradient term is input x gradient; the rest is what the biases
contribute, which input x gradient alone misses. :func:`full_gradients` returns the
terms: the input's and those of the layers named in ``layers``. A layer's constant term
is its output on a zero input (:meth:`~fmi_jax.attribution.FlaxModel.output_at_zero`):
a convolution's bias at every position, a batch norm's
``beta - gamma mean / sqrt(var + eps)``, so no layer type needs special code. The terms
of the layers left out (a dense layer's bias has no spatial map) make up the rest of
``f_c(x)``; the test suite checks the sum on Linen and NNX networks.

The saliency map (:func:`full_grad`) adds every term's post-processed map,

    S = psi(grad_x f_c * x) + sum_l resize(psi(g^l * b^l))

with ``psi`` the absolute value min-max scaled to [0, 1] over each example's whole
tensor and then summed over channels (the authors' code), and ``resize`` bilinear with
half-pixel centres (as every CAM here; the authors' code aligns corners).
``normalize='channel'`` scales every channel separately instead, as pytorch-grad-cam
1.5.7's ``FullGrad`` does (which also min-max scales the final map; here maps keep their
scale). By default ``layers`` are every convolution and batch norm the handle can
capture, in call order, as in both reference implementations.

Both functions take a model handle (:func:`~fmi_jax.attribution.flax_model`), as the
CAMs do; every term costs one backward pass per chunk of ``batch_size`` examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from fmi_jax.attribution.cam import upsample_maps
from fmi_jax.attribution.core import (
    Array,
    Target,
    as_count,
    as_input,
    refuse_baseline,
    resolve_target,
    select_target,
    sum_over_samples,
)
from fmi_jax.attribution.handle import FlaxModel, activation_and_gradient, as_flax_model

__all__ = [
    "FULL_GRAD_NORMALIZATIONS",
    "FullGradients",
    "bias_layers",
    "full_grad",
    "full_gradients",
]

#: How :func:`full_grad` scales each term: over the whole tensor, or per channel.
FULL_GRAD_NORMALIZATIONS = ("layer", "channel")

# The module classes whose outputs are affine in their inputs and carry a bias.
_BIASED = (
    nn.Conv,
    nn.ConvTranspose,
    nn.ConvLocal,
    nn.BatchNorm,
    nnx.Conv,
    nnx.ConvTranspose,
    nnx.BatchNorm,
)


class FullGradients(NamedTuple):
    """The full-gradient terms of every example (module docstring).

    Attributes:
      input: ``grad_x f_c * x``, shaped like the input ``(N, H, W, C)``.
      biases: layer name -> ``g^l * b^l``, shaped like that layer's output
        ``(N, h, w, K)`` (a dict, so JAX keeps its keys sorted, not in call order).
    """

    input: Array
    biases: dict[str, Array]


def bias_layers(model: Any, x: Array) -> tuple[str, ...]:
    """The convolutions and batch norms of ``model`` a handle can capture, for inputs
    like ``x``, in call order: :func:`full_gradients`' default ``layers``."""
    handle = as_flax_model(model, "bias_layers")
    x = as_input(x)
    return tuple(
        name for name in handle.layer_names(x) if issubclass(handle.layer_type(x, name), _BIASED)
    )


def _layers(
    handle: FlaxModel, x: Array, layers: Sequence[str] | None, name: str
) -> tuple[str, ...]:
    if layers is None:
        return bias_layers(handle, x)
    if isinstance(layers, str) or not all(isinstance(layer, str) for layer in layers):
        raise ValueError(f"{name}: layers must be a sequence of layer names; got {layers!r}")
    for layer in layers:
        handle.layer_shape(x, layer)  # an unknown layer is refused before anything runs
    return tuple(layers)


def full_gradients(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    layers: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> FullGradients:
    """The full-gradient decomposition of the ``target`` logit (module docstring).

    Args:
      model: a model handle, ``flax_model(module, variables, train=False)`` or
        ``flax_model(nnx_module)``; a ``(module, variables)`` tuple also works.
      x: images ``(N, H, W, C)``.
      target: class per example, one class for all, or ``None`` (predicted class).
      layers: the affine layers whose bias-gradients to return; ``None`` is
        :func:`bias_layers`.
      batch_size: examples per backward pass; ``None`` processes all at once.

    Returns:
      :class:`FullGradients`, float32.
    """
    handle = as_flax_model(model, "full_gradients")
    x = as_input(x)
    if batch_size is not None:
        as_count(batch_size, "batch_size")
    layers = _layers(handle, x, layers, "full_gradients")
    target = resolve_target(handle, x, target, batch_size=batch_size)

    def chunk_terms(example: Array, _: Array) -> tuple[Array, dict[str, Array]]:
        images, classes = x[example], target[example]
        gradient = jax.grad(lambda z: jnp.sum(select_target(handle(z), classes)))(images)
        biases = {}
        for layer in layers:
            _, g = activation_and_gradient(handle, images, classes, layer)
            constant = handle.output_at_zero(images, layer).astype(jnp.float32)
            biases[layer] = g * constant
        return (gradient * images).astype(jnp.float32), biases

    inputs, biases = sum_over_samples(chunk_terms, x.shape[0], batch_size=batch_size)
    return FullGradients(inputs, biases)


def _post_process(term: Array, per_channel: bool) -> Array:
    """``psi``: ``|term|`` min-max scaled to [0, 1] per example (or per example and
    channel), summed over channels; ``(N, h, w)``."""
    term = jnp.abs(term)
    axes = (1, 2) if per_channel else (1, 2, 3)
    low = term.min(axis=axes, keepdims=True)
    span = term.max(axis=axes, keepdims=True) - low
    scaled = jnp.where(span > 0, (term - low) / jnp.where(span > 0, span, 1.0), 0.0)
    return scaled.sum(axis=-1)


def full_grad(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layers: Sequence[str] | None = None,
    normalize: str = "layer",
) -> Array:
    """FullGrad saliency map (module docstring).

    Args:
      model, x, target, layers, batch_size: as in :func:`full_gradients`.
      key: unused (deterministic); accepted so every method has one signature.
      baseline: must be None (no reference input).
      normalize: ``'layer'`` scales each term over all its channels (the paper's
        authors), ``'channel'`` each channel on its own (pytorch-grad-cam).

    Returns:
      ``(N, H, W)`` float32 maps, non-negative.
    """
    del key
    refuse_baseline(baseline, "full_grad")
    if normalize not in FULL_GRAD_NORMALIZATIONS:
        raise ValueError(
            f"full_grad: normalize must be one of {FULL_GRAD_NORMALIZATIONS}; got {normalize!r}"
        )
    terms = full_gradients(model, x, target, layers=layers, batch_size=batch_size)
    per_channel = normalize == "channel"
    size = terms.input.shape[1:3]
    maps = _post_process(terms.input, per_channel)
    for term in terms.biases.values():
        maps = maps + upsample_maps(_post_process(term, per_channel), size)
    return maps.astype(jnp.float32)
