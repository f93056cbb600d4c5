"""Noise tunnel: average any attribution method over noisy copies of the input.

``noise_tunnel(method, samples=..., kind=...)`` is a transform: it takes a method
with the one signature of :mod:`fmi_jax.attribution` and returns another, which draws
``samples`` noisy inputs ``x + eps``, ``eps ~ N(0, sigma^2 I)``, per example, runs
``method`` on them and aggregates the attributions ``A_s``:

* ``smoothgrad``    mean_s A_s          (Smilkov et al. 2017, "SmoothGrad: removing noise by
  adding noise")
* ``smoothgrad_sq`` mean_s A_s^2        (Hooker, Erhan, Kindermans & Kim 2019, "A Benchmark for
  Interpretability Methods in Deep Neural Networks")
* ``vargrad``       var_s A_s           (Adebayo, Gilmer, Goodfellow & Kim 2018, "Local Explanation
  Methods for Deep Neural Networks Lack Sensitivity to Parameter Values")

The tunnel composes with every method instead of being a subclass of each, the way
optax chains gradient transforms: SmoothGrad over integrated gradients is
``noise_tunnel(integrated_gradients, samples=10)(fn, x, key=key, steps=32)``.
Captum counterpart: ``captum.attr.NoiseTunnel``.

Noise scale: ``stdev_spread`` (0.15 unless ``stdev`` is given) is a fraction of each example's value
range, ``sigma_i = stdev_spread * (max(x_i) - min(x_i))``, the SmoothGrad paper's
"noise level" and PAIR saliency's ``stdev_spread``; it adapts to images in [0, 1],
[0, 255] or standardised units alike. ``stdev`` is an absolute sigma, as Captum's
``stdevs``. Giving both is an error.

Targets: ``target=None`` is resolved once, on the clean input, so every noisy copy
explains the class the model predicts for ``x`` (a noisy copy's own prediction may
differ).

Keys: example i draws its noise from ``fold_in(key, i)`` and its sample s from
``fold_in(fold_in(key, i), s)``, so results do not depend on ``batch_size``, and the
rows of a call on a prefix of the batch equal the first rows of the full call. ``key``
may also hold one key per example (shape ``(N,)``) to tie the noise to dataset indices.
A stochastic inner method gets ``fold_in(sample key, 1)`` per noisy copy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fmi_jax.attribution.core import (
    Array,
    Method,
    ModelFn,
    Target,
    as_baseline,
    as_count,
    as_input,
    as_number,
    baseline_is_distribution,
    example_keys,
    method_name,
    per_example,
    refuse_baseline,
    require_key,
    resolve_target,
    sample_keys,
    sum_over_samples,
)
from fmi_jax.attribution.gradients import saliency

__all__ = ["noise_tunnel", "smoothgrad", "NOISE_KINDS"]

NOISE_KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")

DEFAULT_STDEV_SPREAD = 0.15


def _noise_scale(x: Array, stdev_spread: float | None, stdev: float | None) -> Array:
    """Per-example noise standard deviation, shape ``(N,)`` (arguments checked by
    :func:`_check_scale`): ``stdev`` if given, else ``stdev_spread`` (default
    ``DEFAULT_STDEV_SPREAD``) of each example's range."""
    if stdev is not None:
        return jnp.full(x.shape[0], stdev, dtype=jnp.float32)
    spread = DEFAULT_STDEV_SPREAD if stdev_spread is None else stdev_spread
    flat = x.reshape(x.shape[0], -1)
    return spread * (flat.max(axis=1) - flat.min(axis=1))


def _check_scale(stdev_spread: float | None, stdev: float | None) -> None:
    if stdev_spread is not None and stdev is not None:
        raise ValueError(
            "give stdev_spread (relative to each example's range) or stdev (absolute), not "
            f"both; got stdev_spread={stdev_spread!r}, stdev={stdev!r}"
        )
    for name, value in (("stdev", stdev), ("stdev_spread", stdev_spread)):
        if value is not None:
            as_number(value, name, minimum=0)


def _rows(baseline: Any, x: Array) -> Array | None:
    """``baseline`` as an array of the shape of ``x`` when it has one reference per
    example (``N > 1`` rows that broadcast to ``x``); None when it is shared."""
    shape = jnp.shape(baseline)
    if len(shape) != x.ndim or shape[0] != x.shape[0] or shape[0] == 1:
        return None  # shared, or a set of references a wrapper passes on whole
    return as_baseline(baseline, x)


def _chunk_baseline(method: Method, baseline: Any, x: Array) -> Callable[[Array], Any]:
    """``for_chunk(example) -> baseline`` to pass ``method`` for the examples of a chunk:
    a baseline with one reference per example split into the chunk's rows, one the same
    for every example passed whole.

    ``method`` sees a chunk of (example, sample) pairs, not ``x``, so a baseline with
    the batch axis of ``x`` (the full ``x.shape``, or anything else with ``N > 1`` rows
    that broadcasts to it, e.g. ``(N, 1)`` for ``x`` of shape ``(N, F)``) must be split
    into the chunk's rows: passed whole, it would broadcast against the wrong rows or
    not at all. Shared are a scalar, one example's shape (``x.shape[1:]`` or
    ``(1, ...)``) and the reference distribution of a method marked
    ``baseline_is_distribution`` (GradientSHAP), whatever its length; so is an array of
    another length, which a wrapper of a distribution method passes on whole. A tuple
    of baselines (XRAI averages over them) is read element by element. A per-example
    baseline that does not broadcast to ``x`` is a ValueError that names the caller's
    shapes (:func:`~fmi_jax.attribution.core.as_baseline`)."""
    if baseline is None or baseline_is_distribution(method):
        return lambda example: baseline
    if isinstance(baseline, tuple):
        parts = [_rows(b, x) for b in baseline]
        return lambda example: tuple(
            b if rows is None else rows[example] for b, rows in zip(baseline, parts)
        )
    rows = _rows(baseline, x)
    return (lambda example: baseline) if rows is None else (lambda example: rows[example])


def noise_tunnel(
    method: Method,
    *,
    samples: int = 25,
    stdev_spread: float | None = None,
    stdev: float | None = None,
    kind: str = "smoothgrad",
) -> Method:
    """``method`` averaged over ``samples`` Gaussian-perturbed copies of each input.

    With ``A_s = method(fn, x + eps_s, t)``, ``eps_s ~ N(0, sigma_i^2 I)``:
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
      method: an attribution method with the common signature, e.g.
        :func:`~fmi_jax.attribution.integrated_gradients`.
      samples: noisy copies per example.
      stdev_spread: sigma as a fraction of each example's range ``max - min``; when
        neither this nor ``stdev`` is given, 0.15 (the SmoothGrad paper's 10-20%).
      stdev: absolute sigma, instead of ``stdev_spread``.
      kind: ``'smoothgrad'``, ``'smoothgrad_sq'`` or ``'vargrad'``.

    Returns:
      ``tunneled(fn, x, target=None, *, key, baseline=None, batch_size=None, **options)``:
      ``key`` is required (the noise); ``baseline`` and ``options`` go to ``method``
      (one with a reference per example, any ``(N, ...)`` that broadcasts to ``x``,
      is split per example; a scalar or one example's reference is shared); ``batch_size``
      is the number of noisy inputs per call of ``method`` (which evaluates each such
      chunk whole, e.g. ``batch_size * steps`` gradients for integrated gradients).
      ``None`` passes all ``N * samples`` at once. Results are float32, shaped like ``x``.
    """
    inner = method_name(method, "noise_tunnel")
    if getattr(getattr(method, "func", method), "mixes_examples", False):
        raise ValueError(
            f"noise_tunnel({inner}): {inner} compares the examples of a batch with each "
            "other, and noise_tunnel hands it the noisy copies of one example at a time; "
            "use a method of one example, such as feature_ablation or occlusion"
        )
    if kind not in NOISE_KINDS:
        raise ValueError(
            f"unknown noise tunnel kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}"
        )
    samples = as_count(samples, "samples")
    _check_scale(stdev_spread, stdev)
    name = f"noise_tunnel({inner})"

    def tunneled(
        fn: ModelFn,
        x: Array,
        target: Target = None,
        *,
        key: Array | None = None,
        baseline: Any = None,
        batch_size: int | None = None,
        **options: Any,
    ) -> Array:
        require_key(key, name)
        x = as_input(x)
        num_examples = x.shape[0]
        target = resolve_target(fn, x, target, batch_size=batch_size)
        sigma = _noise_scale(x, stdev_spread, stdev)
        keys = example_keys(key, num_examples)
        for_chunk = _chunk_baseline(method, baseline, x)

        def attribute(inputs: Array, example: Array, inner_keys: Array) -> Array:
            # baseline= only when given: None would override one bound into `method`.
            given = {}
            if baseline is not None:
                given["baseline"] = for_chunk(example)
            return method(fn, inputs, target[example], key=inner_keys, **options, **given)

        def noisy_attribution(example: Array, sample: Array) -> Array:
            pair_keys = sample_keys(keys, example, sample)
            normal = functools.partial(jax.random.normal, shape=x.shape[1:], dtype=x.dtype)
            noise = jax.vmap(normal)(pair_keys)
            noisy = x[example] + per_example(sigma[example], noise) * noise
            inner_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(pair_keys)
            return attribute(noisy, example, inner_keys)

        if kind == "smoothgrad":
            total = sum_over_samples(
                noisy_attribution, num_examples, samples, batch_size=batch_size
            )
            return total / samples
        if kind == "smoothgrad_sq":
            total = sum_over_samples(
                lambda e, s: noisy_attribution(e, s) ** 2,
                num_examples,
                samples,
                batch_size=batch_size,
            )
            return total / samples

        def clean_attribution(example: Array, _: Array) -> Array:
            clean_keys = jax.vmap(lambda k: jax.random.fold_in(k, samples))(keys[example])
            return attribute(x[example], example, clean_keys)

        clean = sum_over_samples(clean_attribution, num_examples, batch_size=batch_size)

        def deviation_moments(example: Array, sample: Array) -> tuple[Array, Array]:
            deviation = noisy_attribution(example, sample) - clean[example]
            return deviation, deviation**2

        first, second = sum_over_samples(
            deviation_moments, num_examples, samples, batch_size=batch_size
        )
        return second / samples - (first / samples) ** 2

    tunneled.__name__ = f"{kind}_over_{getattr(method, '__name__', 'method')}"
    tunneled.baseline_is_distribution = baseline_is_distribution(method)
    return tunneled


def smoothgrad(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    samples: int = 25,
    stdev_spread: float | None = None,
    stdev: float | None = None,
    abs: bool = False,
) -> Array:
    """SmoothGrad: the gradient of the target logit averaged over noisy inputs.

    ``SG(x) = mean_s grad f_t(x + eps_s)``, ``eps_s ~ N(0, sigma^2 I)`` (Smilkov,
    Thorat, Kim, Viegas & Wattenberg 2017, "SmoothGrad: removing noise by adding
    noise"), i.e. :func:`noise_tunnel` over :func:`fmi_jax.attribution.saliency`.

    Signed, like every method here: the paper averages the raw gradients, so gradient
    noise that flips sign from sample to sample cancels, and takes the absolute value
    only to draw the final map. ``abs=True`` averages ``|gradient|`` instead, which is
    what Captum's ``NoiseTunnel(Saliency(model))`` computes by default (``Saliency`` has
    ``abs=True``); the two differ wherever the gradient changes sign under the noise.
    PAIR saliency's ``GetSmoothedMask`` averages raw gradients with
    ``magnitude=False``; its default, ``magnitude=True``, averages squared gradients,
    which is the ``smoothgrad_sq`` kind of :func:`noise_tunnel`.

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class of the clean input.
      key: a PRNG key, or one key per example (shape ``(N,)``); required.
      baseline: must be None (SmoothGrad has no reference input).
      batch_size: noisy inputs per backward pass; ``None`` processes all at once.
      samples: noisy copies per example.
      stdev_spread: sigma as a fraction of each example's range; 0.15 when neither
        this nor ``stdev`` is given.
      stdev: absolute sigma, instead of ``stdev_spread``.
      abs: average absolute gradients (Captum's default) instead of signed ones.

    Returns:
      float32 array shaped like ``x``.
    """
    refuse_baseline(baseline, "smoothgrad")
    require_key(key, "smoothgrad")
    tunneled = noise_tunnel(
        saliency, samples=samples, stdev_spread=stdev_spread, stdev=stdev, kind="smoothgrad"
    )
    return tunneled(fn, x, target, key=key, batch_size=batch_size, abs=abs)
