"""Gaussian-smoothed saliency: known kernel, mass preservation, sigma -> 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax.attribution import gaussian_smoothed_saliency, saliency
from fmi_jax.attribution.smoothing import (
    MAX_KERNEL_RADIUS,
    gaussian_kernel,
    reflected_gaussian_matrix,
)
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


@pytest.mark.parametrize(
    ("size", "sigma", "truncate"), [(10, 0.7, 4.0), (9, 6.0, 4.0), (7, 2.3, 1.3), (5, 3.0, 10.0)]
)
def test_the_matrix_is_the_padded_convolution_for_any_radius(size, sigma, truncate):
    """Column j of S is the unit vector e_j padded by numpy's half-sample symmetric
    reflection (which reflects again and again for a radius beyond the signal) and
    convolved with the taps: radii 3, 24, 3 and 30 on 10, 9, 7 and 5 pixels."""
    taps = gaussian_kernel(sigma, truncate)
    radius = len(taps) // 2
    expected = np.stack(
        [np.convolve(np.pad(e, radius, mode="symmetric"), taps, "valid") for e in np.eye(size)],
        axis=1,
    )
    np.testing.assert_allclose(
        reflected_gaussian_matrix(size, sigma, truncate), expected, atol=1e-15
    )


def test_a_kernel_far_wider_than_the_image_is_the_image_mean():
    """A radius of 40,000 pixels on an 8 x 6 image: each pixel becomes its channel's mean
    (to 1e-7, the truncated Gaussian's deviation from flat over 16 pixels), computed from
    the folded taps instead of an 80,001-tap convolution; the total is kept exactly."""
    weights = testdata.normal(jax.random.key(2), (8, 6, 2))
    x = testdata.uniform(jax.random.key(3), (2, 8, 6, 2))
    smoothed = gaussian_smoothed_saliency(linear_model(weights), x, 0, sigma=1e4)
    mean = np.broadcast_to(np.asarray(weights).mean(axis=(0, 1)), (2, 8, 6, 2))
    np.testing.assert_allclose(smoothed, mean, atol=1e-7)
    matrix = reflected_gaussian_matrix(8, 1e4)
    np.testing.assert_allclose(matrix.sum(axis=0), 1.0, atol=1e-14)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-16)


def test_grayscale_images_without_a_channel_axis_are_smoothed_the_same():
    weights = testdata.normal(jax.random.key(4), (10, 9))
    fn = lambda x: jnp.sum(x * weights, axis=(1, 2))[:, None]
    gray = gaussian_smoothed_saliency(fn, X[..., 0], 0, sigma=1.5)
    with_channel = gaussian_smoothed_saliency(
        linear_model(weights[..., None]), X[..., :1], 0, sigma=1.5
    )
    assert gray.shape == (2, 10, 9)
    np.testing.assert_allclose(gray, with_channel[..., 0], rtol=1e-6, atol=1e-7)
    expected = (
        reflected_gaussian_matrix(10, 1.5)
        @ np.asarray(weights)
        @ reflected_gaussian_matrix(9, 1.5).T
    )
    np.testing.assert_allclose(gray[1], expected, rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    fn = linear_model(jnp.ones((10, 9, 2)))
    plane = r"^gaussian_smoothed_saliency works over the image plane: x must be \(N, H, W, C\) or"
    with pytest.raises(ValueError, match=plane):
        gaussian_smoothed_saliency(lambda x: x[:, :1], X[..., 0, 0], 0)
    with pytest.raises(ValueError, match="looks channels-first"):
        gaussian_smoothed_saliency(fn, jnp.zeros((2, 3, 8, 8)), 0)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        gaussian_smoothed_saliency(fn, X, 0, sigma=-1.0)
    with pytest.raises(ValueError, match="truncate must be a finite number > 0"):
        gaussian_smoothed_saliency(fn, X, 0, truncate=0.0)
    wide = r"^gaussian_smoothed_saliency: sigma=1e\+09 with truncate=4 reaches 4,000,000,000 "
    with pytest.raises(ValueError, match=wide + r".*pass sigma <= 2\.5e\+06$"):
        gaussian_smoothed_saliency(fn, X, 0, sigma=1e9)
    reflected_gaussian_matrix(3, MAX_KERNEL_RADIUS / 4.0)  # the widest kernel it builds
    with pytest.raises(ValueError, match="gaussian_smoothed_saliency has no reference input"):
        gaussian_smoothed_saliency(fn, X, 0, baseline=0.0)
