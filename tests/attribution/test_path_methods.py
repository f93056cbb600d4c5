"""Blur IG and Guided IG: known answers, PAIR's discretisations, completeness, batching."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from fmi_jax.attribution import integrated_gradients
from fmi_jax.attribution.path_methods import (
    blur_ig,
    default_max_sigma,
    gaussian_blur,
    guided_ig,
)
from tests import testdata

X = testdata.uniform(jax.random.key(0), (3, 8, 8, 2))
T = np.array([0, 2, 1])
W1 = 0.3 * testdata.normal(jax.random.key(1), (128, 6))
W2 = testdata.normal(jax.random.key(2), (6, 3))


def smooth(x):
    """A tanh MLP: every path integrand is analytic."""
    return jnp.tanh(x.reshape(x.shape[0], -1) @ W1) @ W2


_gradient = jax.jit(jax.grad(lambda v, t: smooth(v[None])[0, t]))


def gradient64(x, t):
    """d smooth(x)[t] / dx for one example, as float64 (for the numpy references)."""
    return np.asarray(_gradient(jnp.asarray(x, jnp.float32), t), np.float64)


# ---------------------------------------------------------------------------- blur


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.7, 20.0])
def test_gaussian_blur_matches_scipy_with_zero_boundary(sigma):
    expected = ndimage.gaussian_filter(
        np.asarray(X, np.float64), (0, sigma, sigma, 0), mode="constant", truncate=12.0
    )
    np.testing.assert_allclose(gaussian_blur(X, sigma), expected, rtol=0, atol=1e-6)
    # Channel-less images are blurred alike.
    np.testing.assert_allclose(gaussian_blur(X[..., 0], sigma), expected[..., 0], atol=1e-6)


def test_gaussian_blur_of_zero_sigma_is_the_identity_and_per_image_sigmas_work():
    np.testing.assert_array_equal(gaussian_blur(X, 0.0), X)
    blurred = gaussian_blur(X, jnp.array([0.0, 1.0, 2.0]))
    np.testing.assert_array_equal(blurred[0], X[0])
    np.testing.assert_allclose(blurred[2], gaussian_blur(X[2:], 2.0)[0], atol=1e-7)


def test_gaussian_blur_of_any_sigma_traced_or_not_is_the_untruncated_kernel():
    """Known answer: each pixel of a blurred all-ones image is the product over both
    axes of sum_j exp(-(i - j)^2 / (2 s^2)) / sum_{k in Z} exp(-k^2 / (2 s^2)), the
    kernel's whole mass (float64). Sigmas on both sides of 1
    and far beyond the image, also traced under jit."""
    ones = np.ones((1, 6, 5, 1), np.float32)
    for sigma in (0.4, 0.999, 1.0, 1.001, 3.0, 40.0, 1e4, 1e6):
        if sigma < 1e3:
            k = np.arange(-int(40 * sigma + 50), int(40 * sigma + 50) + 1, dtype=np.float64)
            mass = np.exp(-(k**2) / (2 * sigma**2)).sum()
        else:  # the sum's value to 1e-300 relative (Poisson summation)
            mass = sigma * np.sqrt(2 * np.pi)
        axes = [
            np.exp(-((np.arange(n)[:, None] - np.arange(n)[None]) ** 2) / (2 * sigma**2)).sum(1)
            / mass
            for n in (6, 5)
        ]
        expected = (axes[0][:, None] * axes[1][None])[None, ..., None]
        for blur in (gaussian_blur, jax.jit(gaussian_blur)):
            np.testing.assert_allclose(blur(ones, sigma), expected, rtol=2e-6, err_msg=sigma)


def test_default_max_sigma_scales_pairs_value_to_the_image():
    assert default_max_sigma(224, 224) == 50.0
    assert default_max_sigma(28, 28) == 6.25
    assert default_max_sigma(32, 16) == pytest.approx(50 * 32 / 224)


# ---------------------------------------------------------------------------- Blur IG


def test_blur_ig_completeness_gap_shrinks_with_steps():
    """The attributions sum to f_t(x) - f_t(blur(x, max_sigma)); Gauss-Legendre's error
    falls fast on this analytic path."""
    gaps = []
    for steps in (4, 16, 64):
        run = jax.jit(
            functools.partial(blur_ig, smooth, steps=steps, max_sigma=3.0, return_delta=True)
        )
        gaps.append(float(jnp.max(jnp.abs(run(X, T)[1]))))
    assert gaps[0] > 10 * gaps[1] > 100 * gaps[2]
    assert gaps[2] < 1e-4
    # The reference really is the blurred image: the logit difference is large.
    f = lambda v: smooth(v)[np.arange(3), T]  # noqa: E731
    assert float(jnp.min(jnp.abs(f(X) - f(gaussian_blur(X, 3.0))))) > 0.05


def test_blur_ig_reproduces_pairs_discretisation():
    """rule='riemann_right' with grad_step=h is PAIR's BlurIG: gradients at sigma_i =
    i s / n (i = 0..n-1) times the forward difference of scipy's blur, times -s / n.
    Reference built here with scipy (untruncated) and per-example gradients."""
    steps, max_sigma, h = 10, 2.5, 0.01
    attributions = blur_ig(
        smooth, X, T, steps=steps, max_sigma=max_sigma, rule="riemann_right", grad_step=h
    )

    def blur(image, sigma):
        if sigma == 0:
            return image
        return ndimage.gaussian_filter(image, (sigma, sigma, 0), mode="constant", truncate=12.0)

    for i in range(3):
        image = np.asarray(X[i], np.float64)
        expected = np.zeros_like(image)
        for k in range(steps):
            sigma = k * max_sigma / steps
            direction = (blur(image, sigma + h) - blur(image, sigma)) / h
            expected -= max_sigma / steps * direction * gradient64(blur(image, sigma), T[i])
        # float32 differences of blurs 0.01 apart lose ~5 digits: PAIR's estimate is
        # only that accurate in float32 (the exact derivative, our default, is not).
        np.testing.assert_allclose(attributions[i], expected, rtol=1e-3, atol=3e-5)


def test_blur_ig_exact_derivative_is_the_limit_of_the_finite_difference():
    exact = blur_ig(smooth, X, T, steps=8, max_sigma=3.0)
    for h, tol in ((1e-2, 2e-2), (1e-3, 3e-3)):
        approx = blur_ig(smooth, X, T, steps=8, max_sigma=3.0, grad_step=h)
        assert float(jnp.max(jnp.abs(approx - exact))) < tol * float(jnp.max(jnp.abs(exact)))


def test_blur_ig_batch_size_never_changes_the_result():
    full = blur_ig(smooth, X, T, steps=8)
    for batch_size in (1, 5):
        np.testing.assert_allclose(
            blur_ig(smooth, X, T, steps=8, batch_size=batch_size), full, rtol=1e-6, atol=1e-7
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"baseline": 0.0}, "no reference input"),
        ({"max_sigma": 0.0}, "max_sigma must be a finite number > 0"),
        ({"max_sigma": "big"}, "max_sigma must be a finite number > 0"),
        ({"grad_step": -0.1}, "grad_step must be a finite number > 0"),
        ({"max_sigma": float("inf")}, "max_sigma must be a finite number > 0, got inf"),
        ({"rule": "simpson"}, "unknown quadrature rule"),
        ({"steps": 0}, "steps must be an integer >= 1"),
    ],
)
def test_blur_ig_refuses_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        blur_ig(smooth, X, T, **kwargs)


def test_blur_ig_refuses_inputs_that_are_not_images():
    with pytest.raises(ValueError, match=r"\(N, H, W, C\) or \(N, H, W\)"):
        blur_ig(smooth, X.reshape(3, -1), T)


# ---------------------------------------------------------------------------- Guided IG


def pair_guided_ig(x, baseline, t, steps, fraction, max_dist):
    """Guided IG as PAIR saliency describes it, in float64 with plain numpy loops: per
    step, lagging features jump to the lower bound, then rounds of the `fraction` of
    all features with the smallest |gradient| (those at the upper bound excluded) move
    to the upper bound until the step's L1 target is within reach."""
    x, baseline = np.asarray(x, np.float64), np.asarray(baseline, np.float64)
    span = x - baseline
    total = np.abs(span).sum()
    point, attributions = baseline.copy(), np.zeros_like(x)
    for k in range(steps):
        gradient = gradient64(point, t)
        alpha = (k + 1) / steps
        low = baseline + span * max(alpha - max_dist, 0.0)
        high = baseline + span * min(alpha + max_dist, 1.0)
        goal = total * (1 - alpha)
        start = point.copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            position = np.where(span != 0, (point - baseline) / span, np.inf)
        point = np.where(position < max(alpha - max_dist, 0.0), low, point)
        while True:
            gap = np.abs(point - x).sum() - goal
            if gap <= 1e-12 * total:
                break
            ranked = np.where(point == high, np.inf, np.abs(gradient))
            threshold = np.quantile(ranked, fraction, method="lower")
            chosen = (ranked <= threshold) & (point != high)
            reach = np.abs(point - high)[chosen].sum()
            if reach == 0:
                break
            if gap > reach:
                point[chosen] = high[chosen]
            else:
                point[chosen] += gap / reach * (high - point)[chosen]
                break
        attributions += (point - start) * gradient
    return attributions


def test_guided_ig_matches_an_independent_float64_implementation():
    baseline = jnp.full_like(X, 0.2)
    steps, fraction, max_dist = 12, 0.25, 0.1
    result = guided_ig(
        smooth, X, T, baseline=baseline, steps=steps, fraction=fraction, max_dist=max_dist
    )
    for i in range(3):
        expected = pair_guided_ig(X[i], baseline[i], T[i], steps, fraction, max_dist)
        np.testing.assert_allclose(result[i], expected, rtol=1e-4, atol=1e-5)
    # ... and the path really left the straight line: the result is not IG's.
    ig = integrated_gradients(smooth, X, T, baseline=baseline, steps=steps, rule="riemann_left")
    assert float(jnp.max(jnp.abs(result - ig))) > 0.01


@pytest.mark.parametrize("options", [{"max_dist": 0.0}, {"fraction": 1.0, "max_dist": 0.5}])
def test_guided_ig_on_the_straight_line_is_riemann_left_integrated_gradients(options):
    baseline = jnp.linspace(-0.5, 0.5, 128).reshape(8, 8, 2)
    ig = integrated_gradients(smooth, X, T, baseline=baseline, steps=10, rule="riemann_left")
    guided = guided_ig(smooth, X, T, baseline=baseline, steps=10, **options)
    np.testing.assert_allclose(guided, ig, rtol=1e-5, atol=1e-6)


def test_guided_ig_completeness_gap_shrinks_with_steps():
    gaps = []
    for steps in (8, 64):
        _, delta = guided_ig(smooth, X, T, steps=steps, return_delta=True)
        gaps.append(float(jnp.max(jnp.abs(delta))))
    assert gaps[1] < gaps[0] / 4
    assert gaps[1] < 0.05 * float(jnp.max(jnp.abs(smooth(X))))


def test_guided_ig_batch_size_never_changes_the_result():
    full = guided_ig(smooth, X, T, steps=12, fraction=0.25, max_dist=0.1)
    for batch_size in (1, 2):
        np.testing.assert_allclose(
            guided_ig(smooth, X, T, steps=12, fraction=0.25, max_dist=0.1, batch_size=batch_size),
            full,
            rtol=1e-6,
            atol=1e-7,
        )


def test_guided_ig_of_the_baseline_itself_is_zero():
    assert not np.any(np.asarray(guided_ig(smooth, X, T, baseline=X, steps=12)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fraction": 1.5}, "fraction must be a number in"),
        ({"fraction": None}, "fraction must be a number in"),
        ({"max_dist": -0.1}, "max_dist must be a number in"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"baseline": jnp.zeros((2, 3))}, "does not broadcast"),
    ],
)
def test_guided_ig_refuses_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        guided_ig(smooth, X, T, **kwargs)
