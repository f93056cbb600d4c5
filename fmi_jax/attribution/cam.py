"""Class activation maps: Grad-CAM, Grad-CAM++ and Score-CAM on a named layer.

All three weight the K channels of a layer's activation ``A`` (``(N, h, w, K)``) and
sum them into one map per example,

    L_c = ReLU(sum_k alpha_k^c A_k)          (then resized to the input, bilinear)

and differ in the channel weights ``alpha_k^c`` for the target class c:

* Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391): the spatial mean of the
  gradient of the target logit, ``alpha_k = 1/(h w) sum_ij dy_c / dA_kij``.
* Grad-CAM++ (Chattopadhay et al., WACV 2018, arXiv:1710.11063): a pixel-weighted sum
  of the positive gradient, ``alpha_k = sum_ij a_kij ReLU(g_kij)`` with
  ``a_kij = g^2 / (2 g^2 + sum_ab A_kab g^3)`` (``g = dy_c/dA_kij``, the closed form
  the paper derives for an exponential class score; ``a = 0`` where its denominator is
  zero). The paper's common factor ``exp(y_c)`` is dropped: it scales every channel
  alike, as pytorch-grad-cam also does.
* Score-CAM (Wang et al., CVPR-W 2020, arXiv:1910.01279): no gradients. Every
  channel, resized to the input and min-max normalised to [0, 1] (``H_k``), masks the
  input, and its weight is the softmax probability of the target class on the masked
  input, ``alpha_k = softmax(f(x * H_k))_c``. A constant channel carries no spatial
  information and gets the all-zero mask (min-max normalisation would divide by
  zero), as in pytorch-grad-cam. All ``N * K`` masked forward passes run in batches
  of ``batch_size`` on the device.

The layer is named by its module path, ``'/'``-joined (``'conv2'``, ``'conv2/conv'``,
``'stage1/block0'``); :func:`layer_names` lists the candidates (every submodule whose
call returns an ``(N, h, w, K)`` array). The CAMs look inside the model, so they take a
model handle instead of a plain function: ``flax_model(module, variables, train=False)``
for Linen, ``flax_model(nnx_module)`` for NNX (:mod:`fmi_jax.attribution.handle`); a
``(module, variables)`` tuple and an ``nnx.Module`` are accepted as shorthands. The
handle catches the layer's output ``A`` as the module returns it and replaces it by
``A + delta`` with a zero ``delta``; the gradient is taken with respect to ``delta``,
so ``dy/d delta = dy/dA`` exactly, the model itself is not edited, and its outputs are
unchanged (the test suite checks it).

Every function returns float32 maps of shape ``(N, H, W)`` for inputs
``(N, H, W, C)`` (``(N, h, w)`` with ``upsample=False``). Captum's ``LayerGradCam``
defaults to ``relu_attributions=False``; here ``relu=True``, as in the paper.
Grad-CAM++'s weights follow the paper's closed form; pytorch-grad-cam adds ``1e-6``
to the denominator of ``a_kij``, which moves its maps slightly where gradients are
small (measured in docs/captum.md).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

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
from fmi_jax.attribution.handle import activation_and_gradient, as_flax_model

__all__ = [
    "layer_names",
    "grad_cam",
    "grad_cam_plus_plus",
    "score_cam",
    "upsample_maps",
]


def layer_names(model: Any, x: Array) -> tuple[str, ...]:
    """The layers a CAM method can be pointed at, in call order, for inputs like ``x``.

    ``model`` is a model handle (:func:`~fmi_jax.attribution.flax_model`), a
    ``(linen_module, variables)`` tuple or an ``nnx.Module``.
    """
    return as_flax_model(model, "layer_names").layer_names(as_input(x))


def _gradient_cam(name, channel_weights, model, x, target, key, baseline, batch_size, layer):
    """The (N, h, w) map ``sum_k alpha_k A_k`` of a gradient CAM, ``batch_size`` examples
    per backward pass."""
    refuse_baseline(baseline, name)
    handle = as_flax_model(model, name)
    x = as_input(x)
    handle.layer_shape(x, layer)  # a clear error for a bad layer, before any tracing
    target = resolve_target(handle, x, target, batch_size=batch_size)

    def chunk_maps(example: Array, _: Array) -> Array:
        activation, gradient = activation_and_gradient(handle, x[example], target[example], layer)
        return jnp.sum(channel_weights(activation, gradient) * activation, axis=-1)

    return sum_over_samples(chunk_maps, x.shape[0], batch_size=batch_size)


def upsample_maps(maps: Array, size: tuple[int, int]) -> Array:
    """``(N, h, w)`` maps resized to ``(N, H, W)`` by bilinear interpolation with half-pixel
    centres (PyTorch's ``interpolate(..., mode='bilinear', align_corners=False)``)."""
    return jax.image.resize(maps, (maps.shape[0], *size), method="bilinear")


def _finish(maps: Array, shape: tuple[int, ...], relu: bool, upsample: bool) -> Array:
    if relu:
        maps = jax.nn.relu(maps)
    if upsample:
        maps = upsample_maps(maps, shape[1:3])
    return maps.astype(jnp.float32)


def grad_cam(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layer: str,
    relu: bool = True,
    upsample: bool = True,
) -> Array:
    """Grad-CAM map of ``layer`` for the ``target`` class (see the module docstring).

    Args:
      model: a model handle, ``flax_model(module, variables, train=False)`` or
        ``flax_model(nnx_module)``; a ``(module, variables)`` tuple also works.
      x: images ``(N, H, W, C)``.
      target: class per example, one class for all, or ``None`` (predicted class).
      key: unused (deterministic); accepted so every method has one signature.
      baseline: must be None (no reference input).
      batch_size: examples per backward pass; ``None`` processes all at once.
      layer: module path of the layer (see :func:`layer_names`).
      relu: keep only the positive evidence, as the paper does.
      upsample: resize the ``(h, w)`` map to the input's ``(H, W)``, bilinearly.

    Returns:
      ``(N, H, W)`` float32 maps (``(N, h, w)`` when ``upsample=False``).
    """

    def weights(activation: Array, gradient: Array) -> Array:
        return gradient.mean(axis=(1, 2), keepdims=True)

    maps = _gradient_cam("grad_cam", weights, model, x, target, key, baseline, batch_size, layer)
    return _finish(maps, jnp.shape(x), relu, upsample)


def grad_cam_plus_plus(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layer: str,
    relu: bool = True,
    upsample: bool = True,
) -> Array:
    """Grad-CAM++ map of ``layer`` (module docstring); same arguments as :func:`grad_cam`."""

    def weights(activation: Array, g: Array) -> Array:
        g2 = g * g
        denominator = 2.0 * g2 + activation.sum(axis=(1, 2), keepdims=True) * g2 * g
        nonzero = denominator != 0
        a = jnp.where(nonzero, g2 / jnp.where(nonzero, denominator, 1.0), 0.0)
        return jnp.sum(a * jax.nn.relu(g), axis=(1, 2), keepdims=True)

    maps = _gradient_cam(
        "grad_cam_plus_plus", weights, model, x, target, key, baseline, batch_size, layer
    )
    return _finish(maps, jnp.shape(x), relu, upsample)


def score_cam(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layer: str,
    upsample: bool = True,
) -> Array:
    """Score-CAM map of ``layer`` (module docstring).

    Args:
      model, x, target, key, baseline, layer, upsample: as in :func:`grad_cam`.
      batch_size: masked images per forward pass (of the ``N * K`` in all); bounds
        memory, never changes the result.

    Returns:
      ``(N, H, W)`` float32 maps (``(N, h, w)`` when ``upsample=False``), ReLU applied.
    """
    refuse_baseline(baseline, "score_cam")
    handle = as_flax_model(model, "score_cam")
    x = as_input(x)
    handle.layer_shape(x, layer)
    if batch_size is not None:
        as_count(batch_size, "batch_size")
    target = resolve_target(handle, x, target)
    _, activation = handle.capture(x, layer)
    activation = activation.astype(jnp.float32)
    channels = activation.shape[-1]

    def weighted_channel(example: Array, channel: Array) -> Array:
        a = activation[example, :, :, channel]  # (B, h, w)
        up = upsample_maps(a, x.shape[1:3])
        low = up.min(axis=(1, 2), keepdims=True)
        span = up.max(axis=(1, 2), keepdims=True) - low
        mask = jnp.where(span > 0, (up - low) / jnp.where(span > 0, span, 1.0), 0.0)
        probs = jax.nn.softmax(handle(x[example] * mask[..., None]), axis=-1)
        score = select_target(probs, target[example])
        return score[:, None, None] * a

    maps = sum_over_samples(weighted_channel, x.shape[0], channels, batch_size=batch_size)
    return _finish(maps, x.shape, True, upsample)
