"""GradientSHAP: expected gradients over random baselines and random path positions.

SHAP values (Lundberg & Lee 2017, "A Unified Approach to Interpreting Model
Predictions") average a feature's contribution over reference inputs. GradientSHAP
approximates them by integrated gradients whose baseline is drawn from a
distribution of references and whose path integral is estimated by one random point
per sample: with ``b ~ baselines``, ``a ~ U(0, 1)`` and optional input noise,

    phi(x) = E_{b, a, eps} [ (x~ - b) * grad f_t(b + a (x~ - b)) ],  x~ = x + eps,

which, averaged over a, is integrated gradients from baseline b, and averaged over b
the expected gradients of Erion et al. 2021. Each sample costs one gradient.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fmi_jax.attribution.core import (
    Array,
    ModelFn,
    Target,
    as_count,
    as_input,
    as_number,
    as_reference,
    check_finite,
    example_keys,
    layout_checked,
    per_example,
    require_key,
    resolve_target,
    sample_keys,
    sum_over_samples,
    target_logit_grad,
)

__all__ = ["gradient_shap"]


def _as_references(baseline: Any, x: Array) -> Array:
    """The reference distribution as a batch ``(B, ...)``: None is one all-zero example,
    a scalar one constant example, one example's shape one reference, and a batch of
    ``B`` examples is ``B`` references drawn from uniformly."""
    if baseline is None:
        return jnp.zeros((1,) + x.shape[1:], jnp.float32)
    references = as_reference(baseline)
    if references.ndim == 0:
        references = jnp.full((1,) + x.shape[1:], references)
    elif references.shape == x.shape[1:]:
        references = references[None]
    if references.shape[1:] != x.shape[1:] or references.shape[0] < 1:
        raise ValueError(
            f"gradient_shap's baseline must be one reference of shape {x.shape[1:]} or a "
            f"non-empty batch of references (B, {', '.join(map(str, x.shape[1:]))}), "
            f"got shape {references.shape}"
        )
    check_finite(references, "baseline")
    return references


def gradient_shap(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: Any = None,
    batch_size: int | None = None,
    samples: int = 25,
    stdev: float = 0.0,
) -> Array:
    """GradientSHAP attributions (Lundberg & Lee 2017), with Captum's sampling.

    For every example and each of ``samples`` samples: draw a reference ``b`` uniformly
    from the references in ``baseline``, noise ``eps ~ N(0, stdev^2 I)``, and
    ``a ~ U(0, 1)``; with ``x~ = x + eps`` the sample is
    ``(x~ - b) * grad f_t(b + a (x~ - b))``. The attribution is the mean over samples.
    As in Captum the multiplier ``x~ - b`` uses the noisy input. For a linear model
    ``f(x) = x . W`` the gradient is constant, so without noise the result is exactly
    ``W[:, t] * (x - mean of the drawn baselines)``.

    Captum counterpart: ``captum.attr.GradientShap`` (``n_samples``, ``stdevs``),
    which draws with the global torch RNG; here sample s of example i draws from
    ``fold_in(fold_in(key, i), s)``, so results do not depend on ``batch_size`` or on
    how examples are batched.

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: a PRNG key, or one key per example (shape ``(N,)``); required.
      baseline: the reference distribution (Captum's ``baselines``): a batch of
        references ``(B, ...)`` with the example shape of ``x``, e.g. a sample of
        training images, drawn from uniformly; one reference of one example's shape; a
        scalar; or ``None``, the all-zero image. Unlike the other methods' baselines, a
        batch is a distribution shared by every example, never one reference per example.
      batch_size: samples per backward pass; ``None`` processes all ``N * samples``
        at once.
      samples: samples per example.
      stdev: standard deviation of the Gaussian noise added to the input (absolute).

    Returns:
      float32 array shaped like ``x``.
    """
    require_key(key, "gradient_shap")
    samples = as_count(samples, "samples")
    stdev = as_number(stdev, "stdev", minimum=0)
    x = as_input(x)
    with layout_checked(fn, x):  # references that do not fit a misread x: say why
        baselines = _as_references(baseline, x)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    keys = example_keys(key, x.shape[0])

    def draw(sample_key: Array) -> tuple[Array, Array, Array]:
        """One baseline, one noise tensor and one path position for one sample."""
        pick_key, noise_key, alpha_key = jax.random.split(sample_key, 3)
        baseline = baselines[jax.random.randint(pick_key, (), 0, baselines.shape[0])]
        if stdev > 0:
            noise = stdev * jax.random.normal(noise_key, x.shape[1:], x.dtype)
        else:  # the default: skip generating zeros
            noise = jnp.zeros(x.shape[1:], x.dtype)
        return baseline, noise, jax.random.uniform(alpha_key, (), x.dtype)

    def sample_attribution(example: Array, sample: Array) -> Array:
        baseline, noise, alpha = jax.vmap(draw)(sample_keys(keys, example, sample))
        noisy = x[example] + noise
        point = baseline + per_example(alpha, noisy) * (noisy - baseline)
        return (noisy - baseline) * target_logit_grad(fn, point, target[example])

    return (
        sum_over_samples(sample_attribution, x.shape[0], samples, batch_size=batch_size) / samples
    )


# A batch of references is one distribution for every example (noise_tunnel reads it).
gradient_shap.baseline_is_distribution = True
