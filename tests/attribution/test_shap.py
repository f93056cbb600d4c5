"""GradientSHAP: exact answers for linear models, expectation = integrated gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax.attribution import gradient_shap, integrated_gradients

W = jnp.array([[1.0, 0.5], [-2.0, 1.0], [0.5, 0.0], [3.0, -1.0], [-1.5, 2.0]])  # 5 features
X = jnp.array([[1.0, 2.0, 3.0, 4.0, 5.0], [-1.0, 0.5, 2.0, 0.0, 1.0]])
KEY = jax.random.key(0)


def linear(x):
    return x @ W + 1.0


def shap(fn, x, target, baseline, key, **options):
    """``gradient_shap`` compiled as one program, the arrays traced (un-jitted, every
    primitive, random draw included, compiles on its own for each shape)."""
    run = lambda x, target, baseline, key: gradient_shap(
        fn, x, target, key=key, baseline=baseline, **options
    )
    return jax.jit(run)(x, target, baseline, key)


def test_linear_model_gives_w_times_x_minus_the_mean_drawn_baseline():
    """For a linear model every sample is w * (x - b), whatever alpha is, so the result is
    w * (x - mean of the drawn baselines). With one-hot baselines e_0, e_1, e_2 the mean
    drawn baseline is (n_0, n_1, n_2, 0, 0) / samples: recovering it must give whole
    draw counts that add up to the number of samples."""
    baselines = jnp.eye(5)[:3]
    samples = 16
    # Both batch sizes in one compiled program.
    attributions, chunked = jax.jit(
        lambda x, baselines, key: [
            gradient_shap(
                linear, x, 0, key=key, baseline=baselines, samples=samples, batch_size=batch_size
            )
            for batch_size in (None, 5)
        ]
    )(X, baselines, KEY)
    mean_baseline = np.asarray(X - attributions / W[:, 0])
    counts = mean_baseline * samples
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)
    np.testing.assert_allclose(counts[:, 3:], 0, atol=1e-3)
    np.testing.assert_allclose(counts.sum(axis=1), samples, atol=1e-3)
    assert np.all(np.round(counts[:, :3]) >= 0) and len(np.unique(np.round(counts))) > 2
    np.testing.assert_allclose(chunked, attributions, rtol=1e-6)


def test_a_single_baseline_gives_w_times_x_minus_baseline():
    baseline = jnp.array([[0.5, -1.0, 0.0, 2.0, 1.0]])
    np.testing.assert_allclose(
        shap(linear, X, 1, baseline, KEY, samples=3),
        (X - baseline) * W[:, 1],
        rtol=1e-5,
        atol=1e-6,
    )
    # One example's shape is that one reference, a scalar a constant one, None zeros.
    np.testing.assert_allclose(
        shap(linear, X, 1, baseline[0], KEY, samples=3),
        (X - baseline) * W[:, 1],
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        shap(linear, X, 1, 0.5, KEY, samples=3), (X - 0.5) * W[:, 1], rtol=1e-5, atol=1e-6
    )
    by_default = jax.jit(lambda x, key: gradient_shap(linear, x, 1, key=key, samples=3))(X, KEY)
    np.testing.assert_allclose(by_default, X * W[:, 1], rtol=1e-5, atol=1e-6)


def test_expectation_over_alpha_is_integrated_gradients():
    """Averaged over alpha ~ U(0, 1), one baseline, no noise, each sample is an unbiased
    one-point estimate of the IG integral."""

    def fn(x):
        return jnp.tanh(x @ W) ** 2

    baseline = jnp.full((1, 5), 0.2)
    ig = jax.jit(lambda x: integrated_gradients(fn, x, 0, baseline=baseline, steps=64))(X)
    expectation = shap(fn, X, 0, baseline, KEY, samples=20000, batch_size=20000)
    np.testing.assert_allclose(expectation, ig, atol=0.03 * float(jnp.max(jnp.abs(ig))))


def test_per_example_keys_and_vmap():
    baselines = jnp.eye(5)[:3]
    run = functools.partial(gradient_shap, linear, baseline=baselines, samples=4)
    keys = jax.vmap(lambda i: jax.random.fold_in(KEY, i))(jnp.arange(2))

    @jax.jit  # the three calls in one compiled program
    def three_ways(x, key, keys):
        full = run(x=x, target=0, key=key)
        subset = run(x=x[1:], target=0, key=keys[1:])
        one_by_one = jax.vmap(lambda x, k: run(x=x[None], target=0, key=k[None])[0])(x, keys)
        return full, subset, one_by_one

    full, subset, one_by_one = three_ways(X, KEY, keys)
    np.testing.assert_allclose(subset, full[1:], rtol=1e-6)
    np.testing.assert_allclose(one_by_one, full, rtol=1e-6)


def test_bad_arguments():
    message = (
        r"gradient_shap's baseline must be one reference of shape \(5,\) or a non-empty "
        r"batch of references \(B, 5\), got shape \(3,\)"
    )
    with pytest.raises(ValueError, match=message):
        gradient_shap(linear, X, 0, key=KEY, baseline=jnp.zeros(3))
    with pytest.raises(ValueError, match=r"\(B, 5\), got shape \(2, 4\)"):
        gradient_shap(linear, X, 0, key=KEY, baseline=jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"got shape \(0, 5\)"):
        gradient_shap(linear, X, 0, key=KEY, baseline=jnp.zeros((0, 5)))
    with pytest.raises(ValueError, match="baseline contains NaN"):
        gradient_shap(linear, X, 0, key=KEY, baseline=jnp.full((2, 5), jnp.nan))
    with pytest.raises(ValueError, match="stdev must be a finite number >= 0"):
        gradient_shap(linear, X, 0, key=KEY, baseline=jnp.zeros((1, 5)), stdev=-0.1)
    for stdev in (float("inf"), None, [0.1, 0.2]):  # all-NaN maps or a TypeError before
        with pytest.raises(ValueError, match="stdev must be a finite number >= 0"):
            gradient_shap(linear, X, 0, key=KEY, stdev=stdev)
    with pytest.raises(ValueError, match=r"baseline has dtype uint8; .*\.astype\('float32'\)"):
        gradient_shap(linear, X, 0, key=KEY, baseline=np.full((1, 5), 128, np.uint8))
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        gradient_shap(linear, X, 0, key=KEY, baseline=jnp.zeros((1, 5)), samples=0)
    with pytest.raises(ValueError, match="gradient_shap draws random numbers: pass key="):
        gradient_shap(linear, X, 0, baseline=jnp.zeros((1, 5)))
