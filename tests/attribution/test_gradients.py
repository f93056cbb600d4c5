"""Saliency and input x gradient against closed-form gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax.attribution import input_x_gradient, saliency
from tests import testdata

KEY_W, KEY_X = jax.random.split(jax.random.key(0))
W = testdata.normal(KEY_W, (12, 4))
B = jnp.arange(4.0)
X = testdata.normal(KEY_X, (5, 2, 3, 2))  # flattened to 12 features
T = np.array([0, 3, 1, 2, 3])


def linear(x):
    return x.reshape(x.shape[0], -1) @ W + B


def w_rows(target):
    """W[:, t_i] reshaped like one example, for every example: the linear model's gradient."""
    return W[:, target].T.reshape(X.shape)


def test_saliency_of_a_linear_model_is_abs_w():
    np.testing.assert_allclose(saliency(linear, X, T, abs=True), jnp.abs(w_rows(T)), rtol=1e-6)
    np.testing.assert_allclose(saliency(linear, X, T, abs=False), w_rows(T), rtol=1e-6)
    # Signed by default.
    np.testing.assert_allclose(saliency(linear, X, T), w_rows(T), rtol=1e-6)


def test_input_x_gradient_of_a_linear_model_is_x_times_w():
    np.testing.assert_allclose(input_x_gradient(linear, X, T), X * w_rows(T), rtol=1e-6)


def test_saliency_of_a_quadratic_model():
    """f_c(x) = sum_j c * x_j^2 has gradient 2 c x."""

    def quadratic(x):
        flat = x.reshape(x.shape[0], -1)
        return jnp.sum(flat**2, axis=1, keepdims=True) * jnp.arange(1.0, 4.0)

    np.testing.assert_allclose(saliency(quadratic, X, 2, abs=False), 6 * X, rtol=1e-6)
    np.testing.assert_allclose(saliency(quadratic, X, 0, abs=True), 2 * jnp.abs(X), rtol=1e-6)
    np.testing.assert_allclose(saliency(quadratic, X, 0), 2 * X, rtol=1e-6)


def test_target_none_explains_the_predicted_class():
    predicted = np.argmax(np.asarray(linear(X)), axis=1)
    np.testing.assert_allclose(
        saliency(linear, X, None, abs=True), jnp.abs(w_rows(predicted)), rtol=1e-6
    )
    np.testing.assert_allclose(
        saliency(linear, X, 1, abs=True), jnp.abs(w_rows(np.ones(5, int))), rtol=1e-6
    )
    np.testing.assert_allclose(input_x_gradient(linear, X), X * w_rows(predicted), rtol=1e-6)


@pytest.mark.parametrize("method", [saliency, input_x_gradient])
def test_bad_inputs(method):
    with pytest.raises(ValueError, match="target out of range"):
        method(linear, X, 4)
    with pytest.raises(ValueError, match="got shape \\(4,\\)"):
        method(linear, X, T[:4])
    with pytest.raises(ValueError, match="x contains NaN"):
        method(linear, X.at[0, 0, 0, 0].set(jnp.nan), T)
    with pytest.raises(ValueError, match=f"{method.__name__} has no reference input"):
        method(linear, X, T, baseline=0.0)


@pytest.mark.parametrize("method", [saliency, input_x_gradient])
def test_the_key_is_accepted_and_ignored(method):
    np.testing.assert_array_equal(method(linear, X, T, key=jax.random.key(1)), method(linear, X, T))
