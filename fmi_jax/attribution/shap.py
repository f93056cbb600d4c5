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

import jax
import jax.numpy as jnp

from fmi_jax.attribution.core import (
    Array,
    ModelFn,
    Target,
    as_count,
    as_input,
    check_finite,
    example_keys,
    per_example,
    resolve_target,
    sample_keys,
    sum_over_samples,
    target_logit_grad,
)

__all__ = ["gradient_shap"]


def _as_baselines(baselines: Array, x: Array) -> Array:
    baselines = jnp.asarray(baselines, dtype=jnp.float32)
    if baselines.ndim != x.ndim or baselines.shape[1:] != x.shape[1:] or baselines.shape[0] < 1:
        raise ValueError(
            f"baselines must be a non-empty batch of reference inputs of shape (B, "
            f"{', '.join(map(str, x.shape[1:]))}), got shape {baselines.shape}"
        )
    check_finite(baselines, "baselines")
    return baselines


def gradient_shap(
    fn: ModelFn,
    x: Array,
    target: Target,
    baselines: Array,
    key: Array,
    *,
    samples: int = 25,
    stdev: float = 0.0,
    batch_size: int | None = None,
) -> Array:
    """GradientSHAP attributions (Lundberg & Lee 2017), with Captum's sampling.

    For every example and each of ``samples`` samples: draw a baseline ``b`` uniformly
    from the rows of ``baselines``, noise ``eps ~ N(0, stdev^2 I)``, and
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
      baselines: reference inputs ``(B, ...)`` (same example shape as ``x``), e.g. a
        sample of training images, or a single zero image ``(1, ...)``.
      key: a PRNG key, or one key per example (shape ``(N,)``).
      samples: samples per example.
      stdev: standard deviation of the Gaussian noise added to the input (absolute).
      batch_size: samples per backward pass; ``None`` processes all ``N * samples``
        at once.

    Returns:
      float32 array shaped like ``x``.
    """
    samples = as_count(samples, "samples")
    if not stdev >= 0:
        raise ValueError(f"stdev must be >= 0, got {stdev!r}")
    x = as_input(x)
    baselines = _as_baselines(baselines, x)
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
