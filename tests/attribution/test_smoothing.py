"""Gaussian-smoothed saliency: known kernel, mass preservation, sigma -> 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax.attribution import gaussian_smoothed_saliency, saliency
from fmi_jax.attribution.smoothing import gaussian_kernel
from tests import testdata


def linear_model(weights):
    """f(x) = <x, weights> summed over H, W, C, for a single class: saliency = weights."""
    return lambda x: jnp.sum(x * weights, axis=(1, 2, 3))[:, None]


def gaussian_1d(sigma, truncate=4.0):
    radius = int(truncate * sigma + 0.5)
    d = np.arange(-radius, radius + 1)
    k = np.exp(-(d**2) / (2 * sigma**2))
    return k / k.sum()


X = testdata.uniform(jax.random.key(0), (2, 10, 9, 2))


@pytest.mark.parametrize("sigma", [0.5, 0.8, 2.0])
def test_the_kernel_is_the_normalised_truncated_gaussian(sigma):
    np.testing.assert_allclose(gaussian_kernel(sigma, 4.0), gaussian_1d(sigma), rtol=1e-12)


def test_a_point_of_saliency_becomes_the_gaussian_kernel():
    """Saliency concentrated on one interior pixel of channel 1 is smoothed into the 2-D
    kernel k(dh) k(dw) centred there, and channel 0 stays zero."""
    weights = jnp.zeros((10, 9, 2)).at[4, 5, 1].set(-2.0)
    smoothed = gaussian_smoothed_saliency(linear_model(weights), X, 0, sigma=0.8, abs=True)
    k = gaussian_1d(0.8)  # radius 3
    expected = np.zeros((10, 9))
    expected[1:8, 2:9] = 2.0 * np.outer(k, k)
    for example in range(2):
        np.testing.assert_allclose(smoothed[example, ..., 1], expected, rtol=1e-5, atol=1e-7)
        assert np.all(np.asarray(smoothed[example, ..., 0]) == 0)


@pytest.mark.parametrize("sigma", [0.7, 2.0, 6.0])  # radius 3, 8 and 24 > image size
def test_total_attribution_is_preserved_everywhere_including_borders(sigma):
    weights = testdata.normal(jax.random.key(1), (10, 9, 2))
    raw = saliency(linear_model(weights), X, 0, abs=True)
    smoothed = gaussian_smoothed_saliency(linear_model(weights), X, 0, sigma=sigma, abs=True)
    np.testing.assert_allclose(smoothed.sum(axis=(1, 2)), raw.sum(axis=(1, 2)), rtol=1e-5)
    corner = jnp.zeros((10, 9, 2)).at[0, 8, 0].set(1.0)  # all mass on a corner pixel
    smoothed_corner = gaussian_smoothed_saliency(linear_model(corner), X, 0, sigma=sigma, abs=True)
    np.testing.assert_allclose(smoothed_corner.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)


def test_sigma_to_zero_gives_saliency():
    fn = lambda x: jnp.tanh(x.reshape(2, -1) @ jnp.linspace(-1, 1, 180 * 3).reshape(180, 3))
    raw = saliency(fn, X, 2, abs=True)
    for sigma in [0.0, 1e-3, 0.1]:
        np.testing.assert_allclose(
            gaussian_smoothed_saliency(fn, X, 2, sigma=sigma, abs=True), raw, rtol=1e-6
        )
    # Signed by default, like saliency.
    np.testing.assert_allclose(
        gaussian_smoothed_saliency(fn, X, 2, sigma=0.0), saliency(fn, X, 2), rtol=1e-6
    )


def test_signed_smoothing_keeps_the_sign():
    weights = jnp.zeros((10, 9, 2)).at[2, 2, 0].set(-1.0).at[7, 6, 0].set(1.0)
    smoothed = gaussian_smoothed_saliency(linear_model(weights), X, 0, sigma=0.5, abs=False)
    assert smoothed[0, 2, 2, 0] < 0 < smoothed[0, 7, 6, 0]
    np.testing.assert_allclose(smoothed.sum(axis=(1, 2, 3)), 0, atol=1e-6)
    # abs=False is the default.
    np.testing.assert_array_equal(
        gaussian_smoothed_saliency(linear_model(weights), X, 0, sigma=0.5), smoothed
    )


def test_bad_arguments():
    fn = linear_model(jnp.ones((10, 9, 2)))
    with pytest.raises(ValueError, match=r"x must be a batch of images \(N, H, W, C\)"):
        gaussian_smoothed_saliency(lambda x: x[:, :1], X[..., 0, 0], 0)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        gaussian_smoothed_saliency(fn, X, 0, sigma=-1.0)
    with pytest.raises(ValueError, match="truncate must be a finite number > 0"):
        gaussian_smoothed_saliency(fn, X, 0, truncate=0.0)
    with pytest.raises(ValueError, match="gaussian_smoothed_saliency has no reference input"):
        gaussian_smoothed_saliency(fn, X, 0, baseline=0.0)
