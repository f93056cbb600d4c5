"""Plain gradient attributions: saliency and input x gradient.

Both read the gradient of the target logit with respect to the input once per
example, computed for a whole chunk of examples with one backward pass
(:func:`fmi_jax.attribution.core.target_logit_grad`).
"""

from __future__ import annotations

import jax.numpy as jnp

from fmi_jax.attribution.core import (
    Array,
    ModelFn,
    Target,
    as_input,
    refuse_baseline,
    resolve_target,
    sum_over_samples,
    target_logit_grad,
)

__all__ = ["saliency", "input_x_gradient"]


def _gradients(fn: ModelFn, x: Array, target: Array, batch_size: int | None) -> Array:
    """d f_t(x_i) / d x_i for every example, ``batch_size`` examples per backward pass."""
    return sum_over_samples(
        lambda example, _: target_logit_grad(fn, x[example], target[example]),
        x.shape[0],
        batch_size=batch_size,
    )


def saliency(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    abs: bool = False,
) -> Array:
    """Saliency map: the gradient of the target logit with respect to the input.

    ``saliency(x)_i = d f_t(x) / d x_i`` (Simonyan, Vedaldi & Zisserman 2014,
    "Deep Inside Convolutional Networks: Visualising Image Classification Models and
    Saliency Maps"). Signed, like every method here; ``abs=True`` gives the magnitude
    ``|d f_t / d x_i|`` that the paper visualises (and then the maximum over colour
    channels, which is left to plotting), which is also the default of Captum's
    ``captum.attr.Saliency``.

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: unused (deterministic); accepted so every method has one signature.
      baseline: must be None (saliency has no reference input).
      batch_size: examples per backward pass; ``None`` processes all at once.
      abs: return ``|gradient|`` instead of the signed gradient.

    Returns:
      float32 array shaped like ``x``.
    """
    refuse_baseline(baseline, "saliency")
    x = as_input(x)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    grads = _gradients(fn, x, target, batch_size)
    return jnp.abs(grads) if abs else grads


def input_x_gradient(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
) -> Array:
    """Input times gradient: ``x_i * d f_t(x) / d x_i``.

    Shrikumar et al. 2016/2017 ("Learning Important Features Through Propagating
    Activation Differences") introduced it as a DeepLIFT precursor; Ancona et al. 2018
    ("Towards better understanding of gradient-based attribution methods for Deep
    Neural Networks") show it equals DeepLIFT-Rescale and epsilon-LRP with a zero
    baseline for ReLU networks without biases, and equals integrated gradients with a
    zero baseline for linear models. Captum counterpart: ``captum.attr.InputXGradient``.

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: unused (deterministic); accepted so every method has one signature.
      baseline: must be None (the implicit reference is zero; for another reference
        use :func:`~fmi_jax.attribution.integrated_gradients`).
      batch_size: examples per backward pass; ``None`` processes all at once.

    Returns:
      float32 array shaped like ``x``.
    """
    refuse_baseline(baseline, "input_x_gradient")
    x = as_input(x)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    return x * _gradients(fn, x, target, batch_size)
