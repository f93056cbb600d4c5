"""Noise tunnel (SmoothGrad, SmoothGrad^2, VarGrad) and its keys."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax.attribution import integrated_gradients, noise_tunnel, saliency, smoothgrad

A = jnp.array([1.0, -2.0, 0.5, 3.0])  # f_0(x) = sum_j A_j x_j^2, f_1(x) = sum_j x_j
X = jnp.array([[0.0, 1.0, 2.0, 4.0], [1.0, -1.0, 0.5, 0.0], [2.0, 2.0, 2.0, 3.0]])
KEY = jax.random.key(0)


def quadratic(x):
    return jnp.stack([jnp.sum(A * x**2, axis=1), jnp.sum(x, axis=1)], axis=1)


def gradient(x, t):
    """The signed gradient of `quadratic` (2 A x for class 0), as an attribution method."""
    return saliency(quadratic, x, t, abs=False)


def identity(x, t):
    """A 'method' returning its (noisy) input: noise_tunnel(identity) is the mean noisy input."""
    return x


def test_known_moments_of_the_noisy_gradient():
    """For f = sum A x^2 the gradient at x + eps is 2 A (x + eps), eps ~ N(0, sigma^2), so
    smoothgrad -> 2 A x, smoothgrad_sq -> 4 A^2 (x^2 + sigma^2), vargrad -> 4 A^2 sigma^2,
    with sigma_i = 0.2 * (max x_i - min x_i) per example."""
    sigma = 0.2 * (X.max(axis=1) - X.min(axis=1))[:, None]
    run = functools.partial(noise_tunnel, gradient, samples=4000, stdev_spread=0.2, batch_size=5000)
    # The three kinds as one compiled program (un-jitted, each compiles op by op).
    kinds = ("smoothgrad", "vargrad", "smoothgrad_sq")
    smooth, var, squared = jax.jit(lambda x, key: [run(x, 0, key, kind=kind) for kind in kinds])(
        X, KEY
    )
    standard_error = 2 * jnp.abs(A) * sigma / np.sqrt(4000)
    assert np.all(np.abs(smooth - 2 * A * X) < 4 * standard_error)
    np.testing.assert_allclose(var, 4 * A**2 * sigma**2, rtol=0.1)
    np.testing.assert_allclose(
        squared,
        4 * A**2 * (X**2 + sigma**2),
        rtol=0.1,
        atol=0.2 * float(jnp.max(4 * A**2 * sigma**2)),
    )


def test_absolute_stdev_is_the_same_for_every_example():
    spread = noise_tunnel(
        identity,
        X,
        1,
        KEY,
        samples=4000,
        stdev_spread=None,
        stdev=0.5,
        kind="vargrad",
        batch_size=5000,
    )
    np.testing.assert_allclose(spread, 0.25, rtol=0.1)


def test_without_noise_the_tunnel_is_the_wrapped_method():
    clean = gradient(X, 0)
    run = functools.partial(noise_tunnel, gradient, target=0, samples=3)
    smooth, squared, var = jax.jit(  # the three calls as one compiled program
        lambda x, key: [
            run(x, key=key, stdev_spread=0.0),
            run(x, key=key, stdev_spread=0.0, kind="smoothgrad_sq"),
            run(x, key=key, stdev_spread=None, stdev=0.0, kind="vargrad"),
        ]
    )(X, KEY)
    np.testing.assert_allclose(smooth, clean, rtol=1e-6)
    np.testing.assert_allclose(squared, clean**2, rtol=1e-6)
    np.testing.assert_allclose(var, 0, atol=1e-10)


def test_vargrad_does_not_depend_on_batch_size():
    """VarGrad also evaluates the clean input (its shift) in chunks of batch_size."""
    run = functools.partial(noise_tunnel, gradient, target=0, samples=5, kind="vargrad")
    chunked, at_once = jax.jit(  # one compiled program for both
        lambda x, key: [run(x, key=key, batch_size=4), run(x, key=key)]
    )(X, KEY)
    np.testing.assert_allclose(chunked, at_once, rtol=1e-5, atol=1e-6)


def test_keys():
    """Same key, same result; another key, another result. A single key means the
    per-example keys fold_in(key, i); with one key per example (e.g. folded from dataset
    indices) any subset of the batch, or a vmap over single examples, reproduces the full
    batch's rows exactly."""
    run = functools.partial(noise_tunnel, gradient, samples=3)
    first = run(X, 0, KEY)
    np.testing.assert_array_equal(run(X, 0, KEY), first)
    assert np.all(np.asarray(run(X, 0, jax.random.key(1))) != np.asarray(first))

    keys = jax.vmap(lambda i: jax.random.fold_in(KEY, i))(jnp.arange(3))
    np.testing.assert_array_equal(run(X, 0, keys), first)
    np.testing.assert_allclose(run(X[1:], 0, keys[1:]), first[1:], rtol=1e-6)
    # Compiled as one program (un-jitted, vmap runs every batched primitive on its own).
    one_by_one = jax.jit(jax.vmap(lambda x, k: run(x[None], 0, k[None])[0]))(X, keys)
    np.testing.assert_allclose(one_by_one, first, rtol=1e-6)


def test_smoothgrad_over_integrated_gradients_is_one_call():
    """IG of a linear model from a zero baseline is x * w, so SmoothGrad over IG is w times
    the mean noisy input, which the identity 'method' returns with the same keys."""
    w = jnp.array([[1.0], [2.0], [-1.0], [0.5]])
    ig = functools.partial(integrated_gradients, lambda x: x @ w, steps=3)
    smoothed, mean_noisy_input = jax.jit(  # one compiled program for both
        lambda x, key: [noise_tunnel(method, x, 0, key, samples=5) for method in (ig, identity)]
    )(X, KEY)
    np.testing.assert_allclose(smoothed, mean_noisy_input * w[:, 0], rtol=1e-5, atol=1e-6)


def test_smoothgrad_is_the_tunnel_over_saliency_for_the_clean_prediction():
    """target=None is resolved once, on the clean input, and every noisy copy explains
    that class; signed gradients by default, absolute ones (Captum's default) on request."""
    predicted = jnp.argmax(quadratic(X), axis=1)
    assert len(set(np.asarray(predicted).tolist())) == 2

    @jax.jit  # the four calls as one compiled program
    def run(x, predicted, key):
        return (
            smoothgrad(quadratic, x, None, key, samples=4),
            noise_tunnel(gradient, x, predicted, key, samples=4),
            smoothgrad(quadratic, x, 0, key, samples=4, abs=True),
            noise_tunnel(functools.partial(saliency, quadratic), x, 0, key, samples=4),
        )

    for_none, for_predicted, absolute_smoothgrad, absolute = run(X, predicted, KEY)
    np.testing.assert_allclose(for_none, for_predicted, rtol=1e-6)
    np.testing.assert_allclose(absolute_smoothgrad, absolute, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="magnitude"), "unknown noise tunnel kind 'magnitude'; choose one of smoothgrad"),
        (dict(stdev_spread=0.1, stdev=0.1), "give stdev_spread .* or stdev .*, not both"),
        (dict(stdev_spread=-0.1), "stdev_spread must be >= 0"),
        (dict(stdev=-1.0), "stdev must be >= 0"),
        (dict(stdev_spread=None, stdev=-1.0), "stdev must be >= 0"),
        (dict(samples=0), "samples must be an integer >= 1"),
        (dict(key=jax.random.split(KEY, 2)), r"one key per example \(3,\), got key shape \(2,\)"),
        (dict(target=None), "noise_tunnel needs explicit targets"),
        (dict(target=jnp.array([0, 1])), r"got shape \(2,\)"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = dict(key=KEY, target=0)
    args.update({k: kwargs.pop(k) for k in ["key", "target"] if k in kwargs})
    with pytest.raises(ValueError, match=message):
        noise_tunnel(gradient, X, args["target"], args["key"], **kwargs)


def test_absolute_stdev_alone_and_the_default_spread():
    """`stdev=` needs no `stdev_spread=None`; giving neither means 15% of the range."""
    identity = lambda x, target: x
    x = jnp.stack([jnp.zeros((2000,)), jnp.linspace(0.0, 2.0, 2000)])
    run = functools.partial(noise_tunnel, identity, target=0, samples=8, kind="smoothgrad_sq")
    absolute, default, spread = jax.jit(  # the three calls as one compiled program
        lambda x, key: [
            run(x, key=key, stdev=0.5),
            run(x, key=key),
            run(x, key=key, stdev_spread=0.15),
        ]
    )(x, KEY)
    np.testing.assert_allclose(absolute[0].mean(), 0.25, rtol=0.05)  # E[eps^2] = 0.5^2
    np.testing.assert_array_equal(default, spread)
    assert float(default[0].max()) == 0.0  # range 0: no noise
