"""Noise tunnel (SmoothGrad, SmoothGrad^2, VarGrad) and its keys."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax.attribution import (
    METHODS,
    at_layer,
    augmentation_smoothing,
    deeplift_shap,
    feature_permutation,
    gradient_shap,
    integrated_gradients,
    noise_tunnel,
    saliency,
    smoothgrad,
)

A = jnp.array([1.0, -2.0, 0.5, 3.0])  # f_0(x) = sum_j A_j x_j^2, f_1(x) = sum_j x_j
X = jnp.array([[0.0, 1.0, 2.0, 4.0], [1.0, -1.0, 0.5, 0.0], [2.0, 2.0, 2.0, 3.0]])
KEY = jax.random.key(0)


def quadratic(x):
    return jnp.stack([jnp.sum(A * x**2, axis=1), jnp.sum(x, axis=1)], axis=1)


def two_logits(x):
    """A model of any number of features: the feature sum and its negative."""
    return jnp.stack([jnp.sum(x, axis=1), -jnp.sum(x, axis=1)], axis=1)


def identity(fn, x, target=None, *, key=None, baseline=None, batch_size=None):
    """A 'method' returning its (noisy) input: noise_tunnel(identity) is the mean noisy input."""
    return x


def gradient(x, t):
    """The signed gradient of `quadratic` (2 A x for class 0), without noise."""
    return saliency(quadratic, x, t, abs=False)


def test_known_moments_of_the_noisy_gradient():
    """For f = sum A x^2 the gradient at x + eps is 2 A (x + eps), eps ~ N(0, sigma^2), so
    smoothgrad -> 2 A x, smoothgrad_sq -> 4 A^2 (x^2 + sigma^2), vargrad -> 4 A^2 sigma^2,
    with sigma_i = 0.2 * (max x_i - min x_i) per example."""
    sigma = 0.2 * (X.max(axis=1) - X.min(axis=1))[:, None]

    def run(x, key, kind):
        tunneled = noise_tunnel(saliency, samples=4000, stdev_spread=0.2, kind=kind)
        return tunneled(quadratic, x, 0, key=key, batch_size=5000)

    # The three kinds as one compiled program (un-jitted, each compiles op by op).
    kinds = ("smoothgrad", "vargrad", "smoothgrad_sq")
    smooth, var, squared = jax.jit(lambda x, key: [run(x, key, kind) for kind in kinds])(X, KEY)
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
    spread = noise_tunnel(identity, samples=4000, stdev_spread=None, stdev=0.5, kind="vargrad")(
        quadratic, X, 1, key=KEY, batch_size=5000
    )
    np.testing.assert_allclose(spread, 0.25, rtol=0.1)


def test_without_noise_the_tunnel_is_the_wrapped_method():
    clean = gradient(X, 0)

    def run(x, key, **tunnel):
        return noise_tunnel(saliency, samples=3, **tunnel)(quadratic, x, 0, key=key)

    smooth, squared, var = jax.jit(  # the three calls as one compiled program
        lambda x, key: [
            run(x, key, stdev_spread=0.0),
            run(x, key, stdev_spread=0.0, kind="smoothgrad_sq"),
            run(x, key, stdev_spread=None, stdev=0.0, kind="vargrad"),
        ]
    )(X, KEY)
    np.testing.assert_allclose(smooth, clean, rtol=1e-6)
    np.testing.assert_allclose(squared, clean**2, rtol=1e-6)
    np.testing.assert_allclose(var, 0, atol=1e-10)


def test_vargrad_does_not_depend_on_batch_size():
    """VarGrad also evaluates the clean input (its shift) in chunks of batch_size."""
    run = functools.partial(noise_tunnel(saliency, samples=5, kind="vargrad"), quadratic, target=0)
    chunked, at_once = jax.jit(  # one compiled program for both
        lambda x, key: [run(x, key=key, batch_size=4), run(x, key=key)]
    )(X, KEY)
    np.testing.assert_allclose(chunked, at_once, rtol=1e-5, atol=1e-6)


def test_keys():
    """Same key, same result; another key, another result. A single key means the
    per-example keys fold_in(key, i); with one key per example (e.g. folded from dataset
    indices) any subset of the batch, or a vmap over single examples, reproduces the full
    batch's rows exactly."""
    tunneled = noise_tunnel(saliency, samples=3)
    # One compiled program per input shape (un-jitted, every primitive compiles alone).
    jitted = jax.jit(lambda x, key: tunneled(quadratic, x, 0, key=key))

    def run(x, target, key):
        assert target == 0
        return jitted(x, key)

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
    the mean noisy input, which the identity 'method' returns with the same keys. A
    baseline goes to the inner method, one of the full shape of x row by row: IG from b
    is (x - b) * w. The tunnel's batch_size (noisy inputs per call) changes nothing."""
    w = jnp.array([[1.0], [2.0], [-1.0], [0.5]])
    lin = lambda x: x @ w
    baseline = jnp.linspace(-1.0, 1.0, X.size).reshape(X.shape)

    def run(x, key):
        ig = noise_tunnel(integrated_gradients, samples=5)
        return (
            ig(lin, x, 0, key=key, steps=3),
            noise_tunnel(identity, samples=5)(lin, x, 0, key=key),
            ig(lin, x, 0, key=key, steps=3, baseline=baseline),
            ig(lin, x, 0, key=key, steps=3, baseline=baseline, batch_size=4),
            ig(lin, x, 0, key=key, steps=3, baseline=baseline[1]),
        )

    # One compiled program for all of them.
    smoothed, mean_noisy_input, from_rows, chunked, from_one = jax.jit(run)(X, KEY)
    np.testing.assert_allclose(smoothed, mean_noisy_input * w[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        from_rows, (mean_noisy_input - baseline) * w[:, 0], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(chunked, from_rows, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        from_one, (mean_noisy_input - baseline[1]) * w[:, 0], rtol=1e-5, atol=1e-6
    )


def test_a_stochastic_inner_method_gets_keys():
    """GradientSHAP inside the tunnel draws from keys the tunnel hands it: for a linear
    model and one reference b, every sample is (x~ - b) * w, so without tunnel noise the
    result is exactly (x - b) * w; with noise, the tunnel's batch_size changes nothing."""
    w = jnp.array([[1.0], [2.0], [-1.0], [0.5]])
    lin = lambda x: x @ w
    b = jnp.array([0.5, -1.0, 0.0, 2.0])

    def run(x, key):
        tunneled = noise_tunnel(gradient_shap, samples=2)
        return (
            noise_tunnel(gradient_shap, samples=2, stdev=0.0)(
                lin, x, 0, key=key, baseline=b, samples=3
            ),
            tunneled(lin, x, 0, key=key, baseline=b, samples=3),
            tunneled(lin, x, 0, key=key, baseline=b, samples=3, batch_size=2),
        )

    exact, noisy, chunked = jax.jit(run)(X, KEY)
    np.testing.assert_allclose(exact, (X - b) * w[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked, noisy, rtol=1e-5, atol=1e-6)
    assert bool(jnp.isfinite(noisy).all()) and not np.allclose(noisy, exact)


def test_smoothgrad_is_the_tunnel_over_saliency_for_the_clean_prediction():
    """target=None is resolved once, on the clean input, and every noisy copy explains
    that class; signed gradients by default, absolute ones (Captum's default) on request."""
    predicted = jnp.argmax(quadratic(X), axis=1)
    assert len(set(np.asarray(predicted).tolist())) == 2

    tunneled = noise_tunnel(saliency, samples=4)

    @jax.jit  # the four calls as one compiled program
    def run(x, predicted, key):
        return (
            smoothgrad(quadratic, x, None, key=key, samples=4),
            tunneled(quadratic, x, predicted, key=key),
            smoothgrad(quadratic, x, 0, key=key, samples=4, abs=True),
            tunneled(quadratic, x, 0, key=key, abs=True),
        )

    for_none, for_predicted, absolute_smoothgrad, absolute = run(X, predicted, KEY)
    np.testing.assert_allclose(for_none, for_predicted, rtol=1e-6)
    np.testing.assert_allclose(absolute_smoothgrad, absolute, rtol=1e-6)


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_target_none_is_the_class_predicted_for_the_clean_input(kind):
    """The tunnel resolves target=None once, on the clean input: exactly the same maps as
    passing those classes (a noisy copy's own prediction may differ)."""
    predicted = jnp.argmax(quadratic(X), axis=1)
    assert len(set(np.asarray(predicted).tolist())) == 2
    tunneled = noise_tunnel(saliency, samples=4, kind=kind)
    for_none, for_predicted = jax.jit(  # one compiled program for both
        lambda x, t, key: [
            tunneled(quadratic, x, None, key=key),
            tunneled(quadratic, x, t, key=key),
        ]
    )(X, predicted, KEY)
    np.testing.assert_array_equal(for_none, for_predicted)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="magnitude"), "unknown noise tunnel kind 'magnitude'; choose one of smoothgrad"),
        (dict(stdev_spread=0.1, stdev=0.1), "give stdev_spread .* or stdev .*, not both"),
        (dict(stdev_spread=-0.1), "stdev_spread must be a finite number >= 0"),
        (dict(stdev=-1.0), "stdev must be a finite number >= 0"),
        (dict(stdev_spread=None, stdev=-1.0), "stdev must be a finite number >= 0"),
        # Captum's per-input `stdevs` tuple, one per example, infinity: one number.
        (
            dict(stdev_spread=None, stdev=(0.1,)),
            r"stdev must be a finite number >= 0, got \(0\.1,\)",
        ),
        (dict(stdev_spread=None, stdev=jnp.array([0.1, 0.2, 0.3])), "stdev must be a finite"),
        (dict(stdev_spread=float("inf")), "stdev_spread must be a finite number >= 0, got inf"),
        (dict(samples=0), "samples must be an integer >= 1"),
        (dict(key=jax.random.split(KEY, 2)), r"one key per example \(3,\), got key shape \(2,\)"),
        (dict(key=None), r"noise_tunnel\(saliency\) draws random numbers: pass key="),
        (dict(target=jnp.array([0, 1])), r"got shape \(2,\)"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = dict(key=KEY, target=0)
    args.update({k: kwargs.pop(k) for k in ["key", "target"] if k in kwargs})
    with pytest.raises(ValueError, match=message):
        noise_tunnel(saliency, **kwargs)(quadratic, X, args["target"], key=args["key"])


def test_absolute_stdev_alone_and_the_default_spread():
    """`stdev=` needs no `stdev_spread=None`; giving neither means 15% of the range."""
    x = jnp.stack([jnp.zeros((2000,)), jnp.linspace(0.0, 2.0, 2000)])

    def run(x, key, **scale):
        tunneled = noise_tunnel(identity, samples=8, kind="smoothgrad_sq", **scale)
        return tunneled(two_logits, x, 0, key=key)

    absolute, default, spread = jax.jit(  # the three calls as one compiled program
        lambda x, key: [
            run(x, key, stdev=0.5),
            run(x, key),
            run(x, key, stdev_spread=0.15),
        ]
    )(x, KEY)
    np.testing.assert_allclose(absolute[0].mean(), 0.25, rtol=0.05)  # E[eps^2] = 0.5^2
    np.testing.assert_array_equal(default, spread)
    assert float(default[0].max()) == 0.0  # range 0: no noise


def test_a_gradient_shap_distribution_as_long_as_the_batch_is_shared_not_indexed():
    """GradientSHAP's baseline is one distribution for every example, even with exactly
    N references: the tunnel must not split it per example, so the result does not
    depend on batch_size and, without noise, equals plain GradientSHAP."""
    from fmi_jax.attribution import gradient_shap

    references = jnp.stack([X[0] * 0.5, -X[1]])  # as many references as examples
    x = X[:2]
    tunneled = noise_tunnel(gradient_shap, samples=2, stdev=0.0)

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def run(batch_size, samples, target):
        return tunneled(
            two_logits,
            x,
            target,
            key=KEY,
            baseline=references,
            batch_size=batch_size,
            samples=samples,
        )

    results = [run(b, 4, 0) for b in (None, 1, 2)]
    for result in results[1:]:
        np.testing.assert_allclose(result, results[0], rtol=1e-6)
    # f_1 is linear: every sample is (x - b) * 1, so the mean over drawn references is
    # x minus a mixture of the two references, never a per-example pick only.
    linear = run(None, 64, 1)
    drawn = x - linear  # each row is a convex combination of the references
    assert not np.allclose(drawn, references, atol=1e-3)


def test_a_baseline_bound_into_the_method_is_not_overridden():
    from fmi_jax.attribution import integrated_gradients

    bound = functools.partial(integrated_gradients, baseline=1.0, steps=4)
    bound.__name__ = "integrated_gradients"
    tunneled = noise_tunnel(bound, samples=2, stdev=0.0)
    got, expected = jax.jit(  # one compiled program for both
        lambda x: (
            tunneled(two_logits, x, 1, key=KEY),
            integrated_gradients(two_logits, x, 1, baseline=1.0, steps=4),
        )
    )(X)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_without_noise_every_baseline_integrated_gradients_takes_gives_its_answer():
    """IG of f_0 = sum_j A_j x_j^2 from b is exactly A (x^2 - b^2) (the gradient is linear
    along the path, so Gauss-Legendre is exact). Without noise the tunnel must give that
    for every baseline IG accepts, in any chunks of (example, sample) pairs: shared ones
    (a scalar, one example, (1, F)) and per-example ones, of the full shape or only
    broadcasting to it, (N, 1): those must follow their examples into each chunk."""
    n, f = X.shape
    baselines = {
        "scalar": jnp.float32(0.5),
        "one example": jnp.linspace(-1.0, 1.0, f),
        "(1, F)": jnp.linspace(-1.0, 1.0, f)[None],
        "(N, 1)": jnp.array([[0.0], [1.0], [2.0]]),
        "(N, F)": jnp.linspace(-1.0, 1.0, n * f).reshape(n, f),
    }
    tunneled = noise_tunnel(integrated_gradients, samples=2, stdev=0.0)
    batch_sizes = (n, None, 2)  # N pairs, all of them, and chunks across examples
    results = jax.jit(  # one compiled program for all of them
        lambda x, key: {
            (name, str(batch_size)): tunneled(
                quadratic, x, 0, key=key, baseline=b, steps=2, batch_size=batch_size
            )
            for name, b in baselines.items()
            for batch_size in batch_sizes
        }
    )(X, KEY)
    for (name, batch_size), got in results.items():
        expected = A * (X**2 - jnp.broadcast_to(baselines[name], X.shape) ** 2)
        message = f"{name}, batch_size={batch_size}"
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=message)


def test_a_distribution_bound_with_functools_partial_is_still_shared():
    """functools.partial(gradient_shap, ...) still reads its baseline as one distribution:
    with as many references as examples, in any chunks, the same result as the tunnel
    over gradient_shap itself with the same keys (not a per-example pick)."""
    references = jnp.stack([X[0] * 0.5, -X[1], X[2] + 1.0])  # as many as examples
    bound = functools.partial(gradient_shap, samples=4)
    plain = noise_tunnel(gradient_shap, samples=2, stdev=0.0)
    partial = noise_tunnel(bound, samples=2, stdev=0.0)
    expected, *got = jax.jit(  # one compiled program for all of them
        lambda x, key: [
            plain(two_logits, x, 1, key=key, baseline=references, samples=4),
            *(
                partial(two_logits, x, 1, key=key, baseline=references, batch_size=b)
                for b in (None, 1, 2)
            ),
        ]
    )(X, KEY)
    for result in got:
        np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)


def test_a_wrapper_passes_a_reference_set_of_another_length_on_whole():
    """A wrapper of a distribution method (here a plain lambda, which carries no
    ``baseline_is_distribution``) gets M != N references whole: they are not x's rows."""
    references = jnp.stack([X[0] * 0.5, -X[1]])  # two references for three examples
    wrapped = noise_tunnel(lambda *a, **k: deeplift_shap(*a, **k), samples=2, stdev=0.0)
    expected = deeplift_shap(quadratic, X, 0, baseline=references)
    for batch_size in (None, 2):
        got = wrapped(quadratic, X, 0, key=KEY, baseline=references, batch_size=batch_size)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_tunnel_over_a_tunnel_keeps_the_reference_set_whole():
    """The inner tunnel carries its method's ``baseline_is_distribution``, so the outer one
    hands it as many references as examples whole, not one per example."""
    references = jnp.stack([X[0] * 0.5, -X[1], X[2] + 1.0])  # as many as examples
    inner = noise_tunnel(deeplift_shap, samples=1, stdev=0.0)
    outer = noise_tunnel(inner, samples=2, stdev=0.0)
    expected = deeplift_shap(quadratic, X, 0, baseline=references)
    for batch_size in (None, 2):
        got = outer(quadratic, X, 0, key=KEY, baseline=references, batch_size=batch_size)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["layer_gradient_shap", "layer_deeplift_shap", "kernel_shap"])
def test_the_registry_wrappers_carry_the_inner_methods_reading_of_baseline(name):
    from fmi_jax.attribution import METHODS, augmentation_smoothing
    from fmi_jax.attribution.core import baseline_is_distribution

    inner = {
        "layer_gradient_shap": True,
        "layer_deeplift_shap": True,
        "kernel_shap": False,  # its baseline is one reference per example
    }[name]
    method = METHODS[name].method
    assert baseline_is_distribution(method) is inner
    assert baseline_is_distribution(augmentation_smoothing(method)) is inner
    assert baseline_is_distribution(noise_tunnel(method)) is inner


def differences(fn, x, target=None, *, key=None, baseline=None, batch_size=None):
    """A 'method' that, like XRAI, takes a tuple of baselines: x minus their sum."""
    return x - sum(jnp.broadcast_to(b, x.shape) for b in baseline)


def test_a_tuple_of_baselines_is_split_element_by_element():
    """A per-example element of a tuple is split into each chunk's rows; a shared one
    (a scalar, one example's shape) is passed whole."""
    per_example_baseline = X * 0.25 + 1.0
    baselines = (per_example_baseline, 0.5, X[0] * 0.1)
    expected = X - per_example_baseline - 0.5 - X[0] * 0.1
    tunneled = noise_tunnel(differences, samples=2, stdev=0.0)
    for batch_size in (None, 2, 1):
        got = tunneled(quadratic, X, 0, key=KEY, baseline=baselines, batch_size=batch_size)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_transforms_refuse_a_method_name_or_a_batch_method_when_built():
    for transform in (noise_tunnel, at_layer, augmentation_smoothing):
        with pytest.raises(ValueError, match=r"fmi_jax\.attribution\.saliency, not its name"):
            transform("saliency")
    with pytest.raises(ValueError, match="method must be an attribution function, got 3"):
        noise_tunnel(3)
    # It permutes across the batch; noise_tunnel hands it one example's noisy copies.
    for method in (feature_permutation, METHODS["feature_permutation"].method):  # registry's too
        with pytest.raises(ValueError, match=r"noise_tunnel\(feature_permutation\): .* one exa"):
            noise_tunnel(method)
