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
``beta - gamma mean / sqrt(var + eps)``, so no layer type needs code of its own; it does
not depend on the input, so it is computed once, from the first example. Only layers with an
``(N, h, w, K)`` output have a map: the bias of a dense layer on flattened features (a
classifier's head, ``(N, classes)``) is a term without one, left out of the default
``layers``; name it in ``layers`` and the terms add up to ``f_c(x)`` exactly, as the test
suite checks on Linen and NNX networks.

The saliency map (:func:`full_grad`) adds every term's post-processed map,

    S = psi(grad_x f_c * x) + sum_l resize(psi(g^l * b^l))

with ``psi`` the absolute value min-max scaled to [0, 1] over each example's whole
tensor and then summed over channels (the authors' code), and ``resize`` bilinear with
half-pixel centres (as every CAM here; the authors' code aligns corners).
``normalize='channel'`` scales every channel separately instead, as pytorch-grad-cam
1.5.7's ``FullGrad`` does (which also min-max scales the final map; here maps keep their
scale). By default ``layers`` are every affine layer with a map (:func:`bias_layers`):
the reference implementations take the convolutions and batch norms, and leave out a
convolution without a bias, whose term here is 0 and adds nothing to the map.

Both functions take a model handle (:func:`~fmi_jax.attribution.flax_model`), as the
CAMs do. The input's gradient and every layer's come from one backward pass per chunk
of ``batch_size`` examples (:meth:`~fmi_jax.attribution.FlaxModel.perturb_layers`).
:func:`full_grad` finishes each chunk's maps inside the chunk (``psi`` scales every
example on its own), so its memory is one chunk's terms plus the ``(N, H, W)`` maps;
:func:`full_gradients` returns every term, at its layer's resolution, for all N.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    image_size,
    minmax_scale,
    refuse_baseline,
    resolve_target,
    select_target,
    sum_over_samples,
)
from fmi_jax.attribution.handle import FlaxModel, as_flax_model

__all__ = [
    "AFFINE_LAYER_TYPES",
    "FULL_GRAD_NORMALIZATIONS",
    "FullGradients",
    "bias_layers",
    "full_grad",
    "full_gradients",
]

#: How :func:`full_grad` scales each term: over the whole tensor, or per channel.
FULL_GRAD_NORMALIZATIONS = ("layer", "channel")

#: The module classes whose outputs are affine in their inputs and may carry a bias
#: (dense layers too: applied to an ``(N, h, w, C)`` array they are 1 x 1 convolutions).
AFFINE_LAYER_TYPES = (
    nn.Conv,
    nn.ConvTranspose,
    nn.ConvLocal,
    nn.BatchNorm,
    nn.Dense,
    nn.DenseGeneral,
    nn.Einsum,
    nnx.Conv,
    nnx.ConvTranspose,
    nnx.BatchNorm,
    nnx.Linear,
    nnx.LinearGeneral,
    nnx.Einsum,
)


_DENSE = (nn.Dense, nn.DenseGeneral, nn.Einsum, nnx.Linear, nnx.LinearGeneral, nnx.Einsum)


class FullGradients(NamedTuple):
    """The full-gradient terms of every example (module docstring).

    Attributes:
      input: ``grad_x f_c * x``, shaped like the input ``(N, H, W, C)``.
      biases: layer name -> ``g^l * b^l``, shaped like that layer's output
        ``(N, h, w, K)`` (a dict, so JAX keeps its keys sorted, not in call order).
    """

    input: Array
    biases: dict[str, Array]


def _affine(module_type: type | None) -> bool:
    return module_type is not None and issubclass(module_type, AFFINE_LAYER_TYPES)


def bias_layers(model: Any, x: Array) -> tuple[str, ...]:
    """The affine layers of ``model`` (:data:`AFFINE_LAYER_TYPES`: convolutions, batch
    norms, dense layers) with an ``(N, h, w, K)`` output, for inputs like ``x``, in call
    order: :func:`full_gradients`' default ``layers``. A layer whose axes 1 and 2 are not
    image rows and columns (attention's query, key and value) has no map and is left
    out; :func:`full_gradients` takes it when named in ``layers``.

    Raises:
      ValueError: an affine layer the handle cannot capture (called twice, inside a
        transform): without its term the decomposition would not sum to the logit, so
        name the layers to use with ``layers=`` instead.
    """
    handle = as_flax_model(model, "bias_layers")
    x = as_input(x)
    for name, (module_type, calls, reason) in handle.refused_layers(x, images_only=True).items():
        # A dense layer never seen (NNX: unused, or run inside a transform) may well be
        # a head on flattened features, whose bias has no map anyway.
        if _affine(module_type) and (calls > 0 or not issubclass(module_type, _DENSE)):
            raise ValueError(
                f"bias_layers: layer {name!r} ({module_type.__name__}) "
                f"{reason.split(';')[0]}; without its bias term the full gradients would "
                "not sum to the logit: name the layers to use with layers="
            )
    return tuple(
        name
        for name in handle.layer_names(x, images_only=True)
        if _affine(handle.layer_type(x, name))
    )


def _layers(
    handle: FlaxModel, x: Array, layers: Any, name: str, images_only: bool = False
) -> tuple[str, ...]:
    """``layers`` as a checked tuple of affine layers (:func:`bias_layers` for None);
    with ``images_only``, each with image rows and columns on its axes 1 and 2."""
    if layers is None:
        return bias_layers(handle, x)
    listed = None
    if not isinstance(layers, str):
        try:
            listed = tuple(layers)
        except TypeError:
            pass
    if listed is None or not all(isinstance(layer, str) for layer in listed):
        raise ValueError(f"{name}: layers must be a sequence of layer names; got {layers!r}")
    for layer in listed:
        module_type = handle.layer_type(x, layer)  # an unknown layer is refused here
        if not _affine(module_type):
            raise ValueError(
                f"{name}: layer {layer!r} is a {module_type.__name__}, not an affine layer "
                "(a convolution, batch norm or dense layer), so its output on a zero input "
                "is not a bias: name the affine layers inside it"
            )
        reason = handle.not_an_image(x, layer) if images_only else None
        if reason is not None:
            raise ValueError(
                f"{name}: layer {layer!r} {reason}; full_gradients returns its term without a map"
            )
    return listed


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
      x: images ``(N, H, W, C)`` or ``(N, H, W)``.
      target: class per example, one class for all, or ``None`` (predicted class).
      layers: the affine layers whose bias-gradients to return; ``None`` is
        :func:`bias_layers`.
      batch_size: examples per backward pass; ``None`` processes all at once.

    Returns:
      :class:`FullGradients`, float32.

    Raises:
      ValueError: a plain function for ``model``, an unknown layer, one that is not
        affine, or (``layers=None``) an affine layer the handle cannot capture.
    """
    x, chunk_terms = _chunk_terms(model, x, target, layers, batch_size)
    inputs, biases = sum_over_samples(chunk_terms, x.shape[0], batch_size=batch_size)
    return FullGradients(inputs, biases)


def _chunk_terms(
    model: Any,
    x: Any,
    target: Target,
    layers: Sequence[str] | None,
    batch_size: int | None,
    maps: bool = False,
) -> tuple[Array, Callable[[Array, Array], tuple[Array, dict[str, Array]]]]:
    """The checked input and ``chunk_terms(example, _)``: the full-gradient terms of those
    examples, ``(grad_x f_c * x, {layer: g^l * b^l})``, from one backward pass, for
    :func:`~fmi_jax.attribution.core.sum_over_samples` (arguments as in
    :func:`full_gradients`; ``maps``: for :func:`full_grad`, whose named layers must
    have image rows and columns)."""
    handle = as_flax_model(model, "full_gradients")
    x = as_input(x)
    if x.ndim not in (3, 4):
        raise ValueError(
            f"full_gradients takes images (N, H, W, C) or (N, H, W); got shape {x.shape}"
        )
    if batch_size is not None:
        as_count(batch_size, "batch_size")
    # The target first: it checks that the model maps x to (N, classes), and says so
    # for one example without its batch axis, (H, W, C) read as (N, H, W).
    target = resolve_target(handle, x, target, batch_size=batch_size)
    layers = _layers(handle, x, layers, "full_grad" if maps else "full_gradients", maps)
    # The constant terms do not depend on the input: the first example's, from a pass
    # over the first chunk (a shape the chunks' own passes use anyway).
    first = x[: min(batch_size or x.shape[0], x.shape[0])]
    constants = {
        layer: handle.output_at_zero(first, layer)[:1].astype(jnp.float32) for layer in layers
    }

    def chunk_terms(example: Array, _: Array) -> tuple[Array, dict[str, Array]]:
        images, classes = x[example], target[example]
        deltas = {
            layer: jnp.zeros((images.shape[0], *constant.shape[1:]), jnp.float32)
            for layer, constant in constants.items()
        }

        def score(images: Array, deltas: dict[str, Array]) -> Array:
            return jnp.sum(select_target(handle.perturb_layers(images, deltas), classes))

        gradient, at_layers = jax.grad(score, argnums=(0, 1))(images, deltas)
        biases = {layer: at_layers[layer] * constants[layer] for layer in layers}
        return (gradient * images).astype(jnp.float32), biases

    return x, chunk_terms


def _post_process(term: Array, per_channel: bool) -> Array:
    """``psi``: ``|term|`` min-max scaled to [0, 1] per example (or per example and
    channel), summed over channels; ``(N, h, w)``."""
    return minmax_scale(jnp.abs(term), (1, 2) if per_channel else (1, 2, 3)).sum(axis=-1)


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
      model, x, target, layers, batch_size: as in :func:`full_gradients`; a named
        layer needs image rows and columns on its axes 1 and 2 to be drawn.
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
    size = image_size(x, "full_grad")
    x, chunk_terms = _chunk_terms(model, x, target, layers, batch_size, maps=True)
    per_channel = normalize == "channel"

    # Every term is scaled per example, so each chunk's maps are finished inside the
    # chunk: the terms at every layer's resolution never exist for all N examples.
    def chunk_maps(example: Array, sample: Array) -> Array:
        inputs, biases = chunk_terms(example, sample)
        inputs = inputs if inputs.ndim == 4 else inputs[..., None]  # (B, H, W) images
        maps = _post_process(inputs, per_channel)
        for layer in sorted(biases):
            maps = maps + upsample_maps(_post_process(biases[layer], per_channel), size)
        return maps.astype(jnp.float32)

    return sum_over_samples(chunk_maps, x.shape[0], batch_size=batch_size)
