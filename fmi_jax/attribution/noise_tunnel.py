"""Noise tunnel: average any attribution method over noisy copies of the input.

``noise_tunnel(method, x, target, key)`` draws ``samples`` noisy inputs
``x + eps``, ``eps ~ N(0, sigma^2 I)``, per example, runs ``method`` on them and
aggregates the attributions ``A_s``:

* ``smoothgrad``    mean_s A_s          (Smilkov et al. 2017, "SmoothGrad: removing noise by
  adding noise")
* ``smoothgrad_sq`` mean_s A_s^2        (Hooker, Erhan, Kindermans & Kim 2019, "A Benchmark for
  Interpretability Methods in Deep Neural Networks")
* ``vargrad``       var_s A_s           (Adebayo, Gilmer, Goodfellow & Kim 2018, "Local Explanation
  Methods for Deep Neural Networks Lack Sensitivity to Parameter Values")

``method`` is any callable ``method(x, target) -> attributions``, so the tunnel composes
with every method instead of being a subclass of each, e.g. SmoothGrad over
integrated gradients is
``noise_tunnel(functools.partial(integrated_gradients, fn, steps=50), x, target, key)``.
Captum counterpart: ``captum.attr.NoiseTunnel``.

Noise scale: ``stdev_spread`` (0.15 unless ``stdev`` is given) is a fraction of each example's value
range, ``sigma_i = stdev_spread * (max(x_i) - min(x_i))``, the SmoothGrad paper's
"noise level" and PAIR saliency's ``stdev_spread``; it adapts to images in [0, 1],
[0, 255] or standardised units alike. ``stdev`` is an absolute sigma, as Captum's
``stdevs``. Giving both is an error.

Keys: example i draws its noise from ``fold_in(key, i)`` and its sample s from
``fold_in(fold_in(key, i), s)``, so results do not depend on ``batch_size``, and the
rows of a call on a prefix of the batch equal the first rows of the full call. ``key``
may also hold one key per example (shape ``(N,)``) to tie the noise to dataset indices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fmi_jax.attribution.core import (
    Array,
    ModelFn,
    Target,
    as_count,
    as_input,
    as_target,
    example_keys,
    per_example,
    resolve_target,
    sample_keys,
    sum_over_samples,
)
from fmi_jax.attribution.gradients import saliency

__all__ = ["noise_tunnel", "smoothgrad", "NOISE_KINDS"]

NOISE_KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")

AttributionMethod = Callable[[Array, Array], Array]


DEFAULT_STDEV_SPREAD = 0.15


def _noise_scale(x: Array, stdev_spread: float | None, stdev: float | None) -> Array:
    """Per-example noise standard deviation, shape ``(N,)``.

    Neither given: ``DEFAULT_STDEV_SPREAD`` of each example's range. One given: that one.
    Both given: ambiguous, an error.
    """
    if stdev_spread is not None and stdev is not None:
        raise ValueError(
            "give stdev_spread (relative to each example's range) or stdev (absolute), not "
            f"both; got stdev_spread={stdev_spread!r}, stdev={stdev!r}"
        )
    if stdev is not None:
        if not stdev >= 0:
            raise ValueError(f"stdev must be >= 0, got {stdev!r}")
        return jnp.full(x.shape[0], stdev, dtype=jnp.float32)
    if stdev_spread is None:
        stdev_spread = DEFAULT_STDEV_SPREAD
    if not stdev_spread >= 0:
        raise ValueError(f"stdev_spread must be >= 0, got {stdev_spread!r}")
    flat = x.reshape(x.shape[0], -1)
    return stdev_spread * (flat.max(axis=1) - flat.min(axis=1))


def _explicit_target(target: Target, num_examples: int) -> Array:
    if target is None:
        raise ValueError(
            "noise_tunnel needs explicit targets: noise can change the predicted class from "
            "sample to sample. Resolve them on the clean input first, e.g. "
            "resolve_target(fn, x, None)."
        )
    return as_target(target, num_examples)


def noise_tunnel(
    method: AttributionMethod,
    x: Array,
    target: Target,
    key: Array,
    *,
    samples: int = 25,
    stdev_spread: float | None = None,
    stdev: float | None = None,
    kind: str = "smoothgrad",
    batch_size: int | None = None,
) -> Array:
    """Aggregate ``method`` over ``samples`` Gaussian-perturbed copies of each input.

    With ``A_s = method(x + eps_s, target)``, ``eps_s ~ N(0, sigma_i^2 I)``:
    ``smoothgrad`` = mean_s A_s (Smilkov et al. 2017), ``smoothgrad_sq`` = mean_s A_s^2,
    ``vargrad`` = mean_s A_s^2 - (mean_s A_s)^2 (Adebayo et al. 2018). Captum
    counterpart: ``captum.attr.NoiseTunnel`` (``nt_type``, ``nt_samples``, ``stdevs``);
    unlike Captum the noise of example i depends only on ``key`` and i, never on the
    batch it came in.

    VarGrad is computed about the noise-free attribution ``c = method(x)``:
    ``var = mean (A_s - c)^2 - (mean (A_s - c))^2``, algebraically the same variance but
    free of the cancellation in ``mean A^2 - (mean A)^2`` when the variance is small
    next to the mean (and exactly zero without noise). It costs one extra call of
    ``method`` per example.

    Args:
      method: ``method(x, target) -> attributions`` on a batch, e.g.
        ``functools.partial(integrated_gradients, fn, steps=32)``.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)`` or one int for all. ``None`` is refused: the
        predicted class of a noisy copy may differ from the clean one's, so resolve it
        on the clean input (:func:`fmi_jax.attribution.resolve_target`).
      key: a PRNG key, or one key per example (shape ``(N,)``).
      samples: noisy copies per example.
      stdev_spread: sigma as a fraction of each example's range ``max - min``; when
        neither this nor ``stdev`` is given, 0.15 (the SmoothGrad paper's 10-20%).
      stdev: absolute sigma, instead of ``stdev_spread``.
      kind: ``'smoothgrad'``, ``'smoothgrad_sq'`` or ``'vargrad'``.
      batch_size: noisy inputs per call of ``method``; bounds memory (together with
        ``method``'s own ``batch_size``). ``None`` passes all ``N * samples`` at once.

    Returns:
      float32 array shaped like ``x``.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(
            f"unknown noise tunnel kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}"
        )
    samples = as_count(samples, "samples")
    x = as_input(x)
    num_examples = x.shape[0]
    target = _explicit_target(target, num_examples)
    sigma = _noise_scale(x, stdev_spread, stdev)
    keys = example_keys(key, num_examples)

    def noisy_attribution(example: Array, sample: Array) -> Array:
        normal = functools.partial(jax.random.normal, shape=x.shape[1:], dtype=x.dtype)
        noise = jax.vmap(normal)(sample_keys(keys, example, sample))
        noisy = x[example] + per_example(sigma[example], noise) * noise
        return method(noisy, target[example])

    if kind == "smoothgrad":
        return (
            sum_over_samples(noisy_attribution, num_examples, samples, batch_size=batch_size)
            / samples
        )
    if kind == "smoothgrad_sq":
        return (
            sum_over_samples(
                lambda e, s: noisy_attribution(e, s) ** 2,
                num_examples,
                samples,
                batch_size=batch_size,
            )
            / samples
        )

    clean = sum_over_samples(
        lambda example, _: method(x[example], target[example]), num_examples, batch_size=batch_size
    )

    def deviation_moments(example: Array, sample: Array) -> tuple[Array, Array]:
        deviation = noisy_attribution(example, sample) - clean[example]
        return deviation, deviation**2

    first, second = sum_over_samples(
        deviation_moments, num_examples, samples, batch_size=batch_size
    )
    return second / samples - (first / samples) ** 2


def smoothgrad(
    fn: ModelFn,
    x: Array,
    target: Target,
    key: Array,
    *,
    samples: int = 25,
    stdev_spread: float | None = None,
    stdev: float | None = None,
    abs: bool = False,
    batch_size: int | None = None,
) -> Array:
    """SmoothGrad: the gradient of the target logit averaged over noisy inputs.

    ``SG(x) = mean_s grad f_t(x + eps_s)``, ``eps_s ~ N(0, sigma^2 I)`` (Smilkov,
    Thorat, Kim, Viegas & Wattenberg 2017, "SmoothGrad: removing noise by adding
    noise"), i.e. :func:`noise_tunnel` over :func:`fmi_jax.attribution.saliency`.

    Signed by default (``abs=False``): the paper averages the raw gradients, so
    gradient noise that flips sign from sample to sample cancels, and takes the
    absolute value only to draw the final map; PAIR saliency does the same.
    ``abs=True`` averages ``|gradient|`` instead, which is what Captum's
    ``NoiseTunnel(Saliency(model))`` computes by default (``Saliency`` has
    ``abs=True``); the two differ wherever the gradient changes sign under the noise.

    The target is resolved on the clean input (``None`` = the predicted class of x),
    so every noisy copy explains the same class.

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: a PRNG key, or one key per example (shape ``(N,)``).
      samples: noisy copies per example.
      stdev_spread: sigma as a fraction of each example's range; 0.15 when neither
        this nor ``stdev`` is given.
      stdev: absolute sigma, instead of ``stdev_spread``.
      abs: average absolute gradients (Captum's default) instead of signed ones.
      batch_size: noisy inputs per backward pass; ``None`` processes all at once.

    Returns:
      float32 array shaped like ``x``.
    """
    x = as_input(x)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    return noise_tunnel(
        functools.partial(saliency, fn, abs=abs),
        x,
        target,
        key,
        samples=samples,
        stdev_spread=stdev_spread,
        stdev=stdev,
        kind="smoothgrad",
        batch_size=batch_size,
    )
