"""XRAI: Felzenszwalb segmentation, greedy region ranking, and the method end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax.attribution import integrated_gradients
from fmi_jax.attribution.xrai import (
    felzenszwalb,
    rank_regions,
    segment_masks,
    segmentation_defaults,
    xrai,
)
from tests import testdata

RNG = np.random.default_rng(0)


def rectangles(height, width, channels):
    """An image of four constant-coloured rectangles and their label map (numbered by
    first pixel in row-major order, as felzenszwalb numbers segments)."""
    labels = np.zeros((height, width), dtype=np.int64)
    top, left = height // 3, width // 2
    labels[:top, left:] = 1
    labels[top:, : left // 2] = 2
    labels[top:, left // 2 :] = 3
    colours = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.2, 0.9], [0.5, 0.5, 0.5]])
    return colours[labels][..., :channels], labels


# ------------------------------------------------------------------------- segmentation


@pytest.mark.parametrize("shape", [(28, 28, 3), (32, 32, 1), (20, 30, 3)])
def test_felzenszwalb_recovers_constant_rectangles(shape):
    image, labels = rectangles(*shape)
    np.testing.assert_array_equal(felzenszwalb(image, scale=1.0, sigma=0.0, min_size=1), labels)
    # ... also with the default segmentation's finest scale (pre-smoothing included).
    masks = segment_masks(image, dilation=0)
    np.testing.assert_array_equal(masks[:4], labels == np.arange(4)[:, None, None])


def test_felzenszwalb_merges_exactly_when_the_edge_is_below_the_size_term():
    """Two constant 4 x 4 halves differ by d; inside each, edges weigh 0, so each half
    is one component (size 16, internal weight 0) and they merge iff d < scale / 255 / 16 (scikit-image's units)."""
    d = 0.3
    image = np.zeros((4, 8))
    image[:, 4:] = d
    assert felzenszwalb(image, scale=255 * 16 * d * 1.01, sigma=0.0, min_size=1).max() == 0
    assert felzenszwalb(image, scale=255 * 16 * d * 0.99, sigma=0.0, min_size=1).max() == 1
    # min_size merges what the threshold kept apart.
    assert felzenszwalb(image, scale=255 * 16 * d * 0.99, sigma=0.0, min_size=17).max() == 0


def test_felzenszwalb_segments_respect_min_size_and_are_numbered_contiguously():
    image = RNG.uniform(size=(24, 24, 3))
    for scale, min_size in ((0.5, 1), (0.5, 5), (5.0, 12)):
        labels = felzenszwalb(image, scale=scale, sigma=0.5, min_size=min_size)
        sizes = np.bincount(labels.ravel())
        assert sizes.min() >= min_size and np.all(sizes > 0)
        first = [np.flatnonzero(labels.ravel() == k)[0] for k in range(len(sizes))]
        assert first == sorted(first)
        np.testing.assert_array_equal(
            felzenszwalb(image, scale=scale, sigma=0.5, min_size=min_size), labels
        )


def test_segment_masks_dilate_by_a_disk():
    image, labels = rectangles(28, 28, 3)
    masks = segment_masks(image, scales=[1.0], sigma=0.0, min_size=1, dilation=2)
    for k in range(4):
        ys, xs = np.nonzero(labels == k)
        yy, xx = np.mgrid[:28, :28]
        distance = np.min((yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2, axis=-1)
        np.testing.assert_array_equal(masks[k], distance <= 4)


def test_segmentation_defaults_are_pairs_at_224_and_scaled_below():
    assert segmentation_defaults(224, 224) == {
        "scales": (50.0, 100.0, 150.0, 250.0, 500.0, 1200.0),
        "sigma": 0.8,
        "min_size": 150,
        "dilation": 5,
        "min_pixel_diff": 50,
    }
    small = segmentation_defaults(28, 28)
    assert small["scales"][0] == 6.25 and small["sigma"] == 0.1
    assert (small["min_size"], small["dilation"], small["min_pixel_diff"]) == (2, 1, 1)


# ------------------------------------------------------------------------- greedy ranking


def brute_force_xrai(attributions, masks, min_pixel_diff):
    """XRAI's greedy loop spelled out: recompute every candidate's gain over the pixels
    it would add, drop those adding too few, take the first best, repeat."""
    covered = np.zeros(attributions.shape, dtype=bool)
    gains = np.full(attributions.shape, np.nan)
    remaining = list(range(len(masks)))
    while True:
        remaining = [k for k in remaining if (masks[k] & ~covered).sum() >= min_pixel_diff]
        if not remaining:
            break
        density = [attributions[masks[k] & ~covered].mean() for k in remaining]
        best = remaining[int(np.argmax(density))]
        gains[masks[best] & ~covered] = max(density)
        covered |= masks[best]
        remaining.remove(best)
    if not covered.all():
        gains[~covered] = attributions[~covered].mean()
    return gains


def random_masks(count, height, width):
    masks = np.zeros((count, height, width), dtype=bool)
    for k in range(count):
        top, left = RNG.integers(0, height - 2), RNG.integers(0, width - 2)
        masks[
            k, top : RNG.integers(top + 1, height + 1), left : RNG.integers(left + 1, width + 1)
        ] = True
    return masks


@pytest.mark.parametrize("min_pixel_diff", [1, 4, 20])
def test_rank_regions_matches_a_brute_force_greedy(min_pixel_diff):
    for _ in range(5):
        attributions = RNG.normal(size=(12, 14))
        masks = random_masks(25, 12, 14)
        gains, order = rank_regions(attributions, masks, min_pixel_diff=min_pixel_diff)
        np.testing.assert_allclose(
            gains, brute_force_xrai(attributions, masks, min_pixel_diff), rtol=1e-12
        )


def test_rank_regions_gives_each_added_region_its_mean_and_keeps_the_total():
    attributions = RNG.normal(size=(16, 16))
    masks = segment_masks(
        RNG.uniform(size=(16, 16, 3)), scales=[0.3, 1.0, 3.0], sigma=0.5, min_size=4
    )
    gains, order = rank_regions(attributions, masks, min_pixel_diff=3)
    assert order.max() > 3
    for step in range(order.max() + 1):
        region = order == step
        if region.any():
            np.testing.assert_allclose(gains[region], attributions[region].mean(), rtol=1e-12)
    np.testing.assert_allclose(gains.sum(), attributions.sum(), rtol=1e-12)


def test_rank_regions_known_answer():
    """Two overlapping regions: the denser goes first, the other keeps what it adds."""
    attributions = np.array([[3.0, 1.0, 0.0, -2.0]])
    a = np.array([[[True, True, False, False]]])
    b = np.array([[[False, True, True, True]]])
    gains, order = rank_regions(attributions, np.concatenate([b, a]))
    np.testing.assert_array_equal(gains, [[2.0, 2.0, -1.0, -1.0]])
    np.testing.assert_array_equal(order, [[1, 1, 2, 2]])
    # a adds too few pixels and is dropped: b goes alone, pixel 0 keeps its own value.
    gains, order = rank_regions(attributions, np.concatenate([b, a]), min_pixel_diff=3)
    np.testing.assert_allclose(gains, [[3.0, -1 / 3, -1 / 3, -1 / 3]], rtol=1e-15)
    np.testing.assert_array_equal(order, [[0, 1, 1, 1]])


# ------------------------------------------------------------------------- end to end

X = testdata.uniform(jax.random.key(3), (3, 12, 12, 3))
T = np.array([1, 0, 1])
KERNEL = 0.3 * testdata.normal(jax.random.key(4), (3, 3, 3, 4))
DENSE = testdata.normal(jax.random.key(5), (4, 2))


def cnn(x):
    h = jax.lax.conv_general_dilated(
        x, KERNEL, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.tanh(h).mean(axis=(1, 2)) @ DENSE


@pytest.fixture(scope="module")
def xrai_default():
    return xrai(cnn, X, T, steps=8)


def test_xrai_base_attributions_are_ig_over_black_and_white(xrai_default):
    low = X.reshape(3, -1).min(axis=1)[:, None, None, None]
    high = X.reshape(3, -1).max(axis=1)[:, None, None, None]
    ig = [integrated_gradients(cnn, X, T, baseline=b, steps=8) for b in (low, high)]
    expected = xrai(cnn, X, T, attributions=(ig[0] + ig[1]) / 2)
    np.testing.assert_allclose(xrai_default, expected, rtol=1e-5, atol=1e-7)
    # An explicit tuple of the same baselines is the same.
    np.testing.assert_allclose(
        xrai(cnn, X, T, steps=8, baseline=(low, high)), xrai_default, rtol=1e-6, atol=1e-8
    )


def test_xrai_with_attributions_is_ranking_of_the_channel_maximum_over_segments():
    attributions = testdata.normal(jax.random.key(6), X.shape)
    result = xrai(None, X, attributions=attributions)
    assert result.shape == (3, 12, 12) and result.dtype == jnp.float32
    for i in range(3):
        masks = segment_masks(np.asarray(X[i]))
        expected, _ = rank_regions(np.asarray(attributions[i]).max(axis=-1), masks)
        np.testing.assert_allclose(result[i], expected, rtol=1e-6)
    segments = [random_masks(6, 12, 12) for _ in range(3)]
    result = xrai(None, X, attributions=attributions[..., 0], segments=segments)
    for i in range(3):
        expected, _ = rank_regions(np.asarray(attributions[i, ..., 0]), segments[i])
        np.testing.assert_allclose(result[i], expected, rtol=1e-6)


def test_xrai_is_deterministic_and_batch_size_never_changes_it(xrai_default):
    np.testing.assert_array_equal(xrai(cnn, X, T, steps=8), xrai_default)
    np.testing.assert_allclose(
        xrai(cnn, X, T, steps=8, batch_size=7), xrai_default, rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"attributions": jnp.zeros((3, 12, 11))}, "attributions must have the shape of x"),
        ({"segments": [np.ones((1, 12, 12), bool)]}, "one \\(K, H, W\\) bool array per example"),
        ({"min_pixel_diff": 0}, "min_pixel_diff must be an integer >= 1"),
        ({"baseline": ()}, "holds no baseline"),
        ({"scales": []}, "at least one Felzenszwalb scale"),
        ({"dilation": -1}, "dilation must be an integer >= 0"),
    ],
)
def test_xrai_refuses_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        xrai(cnn, X, T, steps=2, **kwargs)


def test_xrai_refuses_non_images_and_bad_segmentation_input():
    with pytest.raises(ValueError, match=r"\(N, H, W, C\) or \(N, H, W\)"):
        xrai(cnn, X.reshape(3, -1), T)
    with pytest.raises(ValueError, match="scale must be a number > 0"):
        felzenszwalb(np.zeros((4, 4)), scale=0.0)
    with pytest.raises(ValueError, match="masks must be a bool array"):
        rank_regions(np.zeros((4, 4)), np.ones((2, 4, 4)))
