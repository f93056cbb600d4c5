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

The layer is named by its Flax module path, ``'/'``-joined (``'conv2'``,
``'conv2/conv'``, ``'stage1/block0'``); :func:`layer_names` lists the candidates (every
submodule whose ``__call__`` returns an ``(N, h, w, K)`` array). The activation and the
gradient flowing into it are captured with :func:`flax.linen.intercept_methods`: the
interceptor returns the named module's output plus a zero ``delta`` and the gradient is
taken with respect to ``delta``, so ``dy/d delta = dy/dA`` exactly, the model itself is
not edited, and its outputs are unchanged (the test suite checks it).

Every function takes the Flax module and its variables (the model is evaluated with
``model.apply(variables, x)``, i.e. inference mode) and returns float32 maps of shape
``(N, H, W)`` for inputs ``(N, H, W, C)`` (``(N, h, w)`` with ``upsample=False``).
Captum's ``LayerGradCam`` defaults to ``relu_attributions=False``; here ``relu=True``, as
in the paper.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmi_jax.attribution.core import (
    Array,
    Target,
    as_count,
    as_input,
    resolve_target,
    select_target,
    sum_over_samples,
)

__all__ = [
    "layer_names",
    "grad_cam",
    "grad_cam_plus_plus",
    "score_cam",
    "upsample_maps",
    "capture_layer",
]


def _path(module: nn.Module) -> str:
    return "/".join(module.path)


def _layer_shapes(model: nn.Module, variables: Any, x: Array) -> dict[str, tuple[int, ...]]:
    """Module path -> output shape of every submodule returning a 4-D array."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        name = _path(context.module)
        if context.method_name == "__call__" and name and getattr(out, "ndim", 0) == 4:
            shapes.setdefault(name, tuple(out.shape))
        return out

    def forward(x):
        with nn.intercept_methods(record):
            return model.apply(variables, x)

    jax.eval_shape(forward, x)
    return shapes


def layer_names(model: nn.Module, variables: Any, x: Array) -> tuple[str, ...]:
    """The layers a CAM method can be pointed at, in call order, for inputs like ``x``."""
    return tuple(_layer_shapes(model, variables, as_input(x)))


def _check_layer(model: nn.Module, variables: Any, x: Array, layer: str) -> tuple[int, ...]:
    shapes = _layer_shapes(model, variables, x)
    if layer not in shapes:
        raise ValueError(
            f"{type(model).__name__} has no layer {layer!r} with an (N, h, w, channels) "
            f"output; available layers: {', '.join(shapes) or '(none)'}"
        )
    return shapes[layer]


def capture_layer(
    model: nn.Module, variables: Any, x: Array, layer: str, delta: Array | None = None
) -> tuple[Array, Array]:
    """``(logits, A)``: the model's output and the named layer's output ``A``.

    With ``delta`` (shaped like ``A``), the layer's output is replaced by ``A + delta``
    for the rest of the forward pass, so ``jax.grad`` with respect to ``delta`` at zero
    is the gradient flowing into the layer. The model is not edited: the output is
    caught with :func:`flax.linen.intercept_methods` as the module returns it.
    """
    captured: list[Array] = []

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and _path(context.module) == layer:
            if delta is not None:
                out = out + delta
            captured.append(out)
        return out

    with nn.intercept_methods(intercept):
        logits = model.apply(variables, x)
    if len(captured) != 1:
        raise ValueError(
            f"layer {layer!r} is called {len(captured)} times in one forward pass; CAM "
            "methods need a layer that is called once"
        )
    return logits, captured[0]


def _model_fn(model: nn.Module, variables: Any):
    return lambda x: model.apply(variables, x)


def _activation_and_gradient(
    model: nn.Module, variables: Any, x: Array, target: Target, layer: str
) -> tuple[Array, Array]:
    """``A`` and ``dy_t/dA`` at the named layer, for every example, in one backward pass.

    The gradient of the batch sum of target logits is every example's own gradient,
    because in inference mode examples do not interact (see ``target_logit_grad``).
    """
    x = as_input(x)
    shape = _check_layer(model, variables, x, layer)
    target = resolve_target(_model_fn(model, variables), x, target)

    def target_sum(delta):
        logits, activation = capture_layer(model, variables, x, layer, delta)
        return jnp.sum(select_target(logits, target)), activation

    gradient, activation = jax.grad(target_sum, has_aux=True)(jnp.zeros(shape, jnp.float32))
    return activation.astype(jnp.float32), gradient


def upsample_maps(maps: Array, size: tuple[int, int]) -> Array:
    """``(N, h, w)`` maps resized to ``(N, H, W)`` by bilinear interpolation with half-pixel
    centres (PyTorch's ``interpolate(..., mode='bilinear', align_corners=False)``)."""
    return jax.image.resize(maps, (maps.shape[0], *size), method="bilinear")


def _finish(maps: Array, x: Array, relu: bool, upsample: bool) -> Array:
    if relu:
        maps = jax.nn.relu(maps)
    if upsample:
        maps = upsample_maps(maps, x.shape[1:3])
    return maps.astype(jnp.float32)


def grad_cam(
    model: nn.Module,
    variables: Any,
    x: Array,
    target: Target = None,
    *,
    layer: str,
    relu: bool = True,
    upsample: bool = True,
) -> Array:
    """Grad-CAM map of ``layer`` for the ``target`` class (see the module docstring).

    Args:
      model: Flax module mapping ``(N, H, W, C)`` images to logits.
      variables: its variables (``{'params': ..., 'batch_stats': ...}``).
      x: images ``(N, H, W, C)``.
      target: class per example, one class for all, or ``None`` (predicted class).
      layer: module path of the layer (see :func:`layer_names`).
      relu: keep only the positive evidence, as the paper does.
      upsample: resize the ``(h, w)`` map to the input's ``(H, W)``, bilinearly.

    Returns:
      ``(N, H, W)`` float32 maps (``(N, h, w)`` when ``upsample=False``).
    """
    activation, gradient = _activation_and_gradient(model, variables, x, target, layer)
    weights = gradient.mean(axis=(1, 2), keepdims=True)
    return _finish(jnp.sum(weights * activation, axis=-1), x, relu, upsample)


def grad_cam_plus_plus(
    model: nn.Module,
    variables: Any,
    x: Array,
    target: Target = None,
    *,
    layer: str,
    relu: bool = True,
    upsample: bool = True,
) -> Array:
    """Grad-CAM++ map of ``layer`` (module docstring); same arguments as :func:`grad_cam`."""
    activation, g = _activation_and_gradient(model, variables, x, target, layer)
    g2 = g * g
    denominator = 2.0 * g2 + activation.sum(axis=(1, 2), keepdims=True) * g2 * g
    nonzero = denominator != 0
    a = jnp.where(nonzero, g2 / jnp.where(nonzero, denominator, 1.0), 0.0)
    weights = jnp.sum(a * jax.nn.relu(g), axis=(1, 2), keepdims=True)
    return _finish(jnp.sum(weights * activation, axis=-1), x, relu, upsample)


def score_cam(
    model: nn.Module,
    variables: Any,
    x: Array,
    target: Target = None,
    *,
    layer: str,
    upsample: bool = True,
    batch_size: int | None = None,
) -> Array:
    """Score-CAM map of ``layer`` (module docstring).

    Args:
      model, variables, x, target, layer, upsample: as in :func:`grad_cam`.
      batch_size: masked images per forward pass (of the ``N * K`` in all); bounds
        memory, never changes the result.

    Returns:
      ``(N, H, W)`` float32 maps (``(N, h, w)`` when ``upsample=False``), ReLU applied.
    """
    x = as_input(x)
    _check_layer(model, variables, x, layer)
    if batch_size is not None:
        as_count(batch_size, "batch_size")
    fn = _model_fn(model, variables)
    target = resolve_target(fn, x, target)
    _, activation = capture_layer(model, variables, x, layer)
    activation = activation.astype(jnp.float32)
    channels = activation.shape[-1]

    def weighted_channel(example: Array, channel: Array) -> Array:
        a = activation[example, :, :, channel]  # (B, h, w)
        up = upsample_maps(a, x.shape[1:3])
        low = up.min(axis=(1, 2), keepdims=True)
        span = up.max(axis=(1, 2), keepdims=True) - low
        mask = jnp.where(span > 0, (up - low) / jnp.where(span > 0, span, 1.0), 0.0)
        probs = jax.nn.softmax(fn(x[example] * mask[..., None]), axis=-1)
        score = select_target(probs, target[example])
        return score[:, None, None] * a

    maps = sum_over_samples(weighted_channel, x.shape[0], channels, batch_size=batch_size)
    return _finish(maps, x, True, upsample)
