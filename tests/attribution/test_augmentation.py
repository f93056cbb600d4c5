"""Augmentation smoothing: known answers on a linear model, the plain method without
augmentations, and the package's scaling of every copy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax import attribution as A
from tests import testdata

W = np.asarray(testdata.normal(jax.random.key(60), (5, 6, 2)))


def linear(x):
    """Class 0 scores ``sum x * W``; class 1 its negative."""
    score = jnp.sum(x * W, axis=(1, 2, 3))
    return jnp.stack([score, -score], axis=1)


def test_input_x_gradient_of_a_linear_model_averages_w_and_its_mirror():
    """Copy ``c F(x)`` has map ``c F(x) W``; mirrored back, ``c x F(W)``. Over the factors
    and both mirrors the average is ``mean(c) x (W + F(W)) / 2``."""
    x = testdata.uniform(jax.random.key(61), (3, 5, 6, 2))
    smoothed = A.augmentation_smoothing(A.input_x_gradient)
    got = smoothed(linear, x, 0)
    expected = np.asarray(x) * (W + W[:, ::-1]) / 2  # mean(0.9, 1, 1.1) = 1
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # Class 1 is the negative; without augmentations it is the method itself.
    np.testing.assert_allclose(smoothed(linear, x, 1), -expected, rtol=1e-5, atol=1e-6)
    plain = A.augmentation_smoothing(A.input_x_gradient, flip=False, factors=(1.0,))
    np.testing.assert_array_equal(plain(linear, x, 0), A.input_x_gradient(linear, x, 0))
    # Factors only: mean(c) x W.
    brighter = A.augmentation_smoothing(A.input_x_gradient, flip=False, factors=(1.0, 3.0))
    np.testing.assert_allclose(brighter(linear, x, 0), 2 * np.asarray(x) * W, rtol=1e-5)


def test_minmax_scales_every_copy_and_target_none_is_the_clean_prediction():
    """With ``scale='minmax'`` each copy's map is ReLU'd and scaled to [0, 1] before the
    average, so a copy's scale no longer counts; the predicted class of the clean input
    is explained for every copy."""
    x = testdata.uniform(jax.random.key(62), (4, 5, 6, 2)) - 0.5
    scaled = A.augmentation_smoothing(
        A.input_x_gradient, flip=False, factors=(1.0, 3.0), scale="minmax"
    )
    m = np.maximum(np.asarray(A.input_x_gradient(linear, x, 0)), 0).reshape(4, -1)
    low, high = m.min(1, keepdims=True), m.max(1, keepdims=True)
    expected = ((m - low) / (high - low)).reshape(x.shape)  # both copies scale alike
    np.testing.assert_allclose(scaled(linear, x, 0), expected, rtol=1e-5, atol=1e-6)
    predicted = jnp.argmax(linear(x), axis=1)
    smoothed = A.augmentation_smoothing(A.saliency)
    np.testing.assert_array_equal(smoothed(linear, x), smoothed(linear, x, predicted))


def test_a_stochastic_method_gets_a_key_per_copy():
    """Copy ``a`` of example ``i`` draws with ``fold_in(key_i, a)``: a method that returns
    its own noise shows the keys (mirrored back where the copy was mirrored)."""
    x = testdata.uniform(jax.random.key(63), (2, 5, 6, 2))

    def noise(fn, x, target=None, *, key=None):
        return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:]))(key)

    key = jax.random.key(7)
    got = A.augmentation_smoothing(noise, factors=(1.0, 2.0))(linear, x, 0, key=key)
    keys = [jax.random.fold_in(key, i) for i in range(2)]  # example i: fold_in(key, i)
    expected = []
    for k in keys:
        draws = [jax.random.normal(jax.random.fold_in(k, a), x.shape[1:]) for a in range(4)]
        draws[2], draws[3] = draws[2][:, ::-1], draws[3][:, ::-1]
        expected.append(np.mean(draws, axis=0))
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-6)


def test_bad_augmentations_are_one_line_errors():
    for factors in ((), (0.0,), (-1.0,), (True,), ("1",), 1.0):
        with pytest.raises(ValueError, match="factors must be"):
            A.augmentation_smoothing(A.saliency, factors=factors)
    with pytest.raises(ValueError, match="flip must be True or False"):
        A.augmentation_smoothing(A.saliency, flip="yes")
    with pytest.raises(ValueError, match=r"scale must be one of \('none', 'minmax'\)"):
        A.augmentation_smoothing(A.saliency, scale="max")
    with pytest.raises(ValueError, match=r"mirrors images: x must be \(N, H, W, C\)"):
        A.augmentation_smoothing(A.saliency)(lambda x: x[:, :2], jnp.ones((2, 3)), 0)
