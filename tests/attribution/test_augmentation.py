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
    """One key: copy ``a`` gets ``fold_in(key, a)`` and the method folds in the example;
    one key per example: copy ``a`` of example ``i`` gets ``fold_in(key_i, a)``. A
    method that returns its own noise shows the keys (mirrored back where the copy was
    mirrored)."""
    x = testdata.uniform(jax.random.key(63), (2, 5, 6, 2))

    def noise(fn, x, target=None, *, key=None):
        keys = key if key.ndim else jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(2))
        return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:]))(keys)

    def expected(copy_key):
        draws = [jax.random.normal(copy_key(a), x.shape[1:]) for a in range(4)]
        draws[2], draws[3] = draws[2][:, ::-1], draws[3][:, ::-1]
        return np.mean(draws, axis=0)

    smoothed = A.augmentation_smoothing(noise, factors=(1.0, 2.0))
    key = jax.random.key(7)
    single = smoothed(linear, x, 0, key=key)
    fold = jax.random.fold_in
    want = [expected(lambda a, i=i: fold(fold(key, a), i)) for i in range(2)]
    np.testing.assert_allclose(single, np.stack(want), rtol=1e-6)
    keys = jax.random.split(key, 2)
    batched = smoothed(linear, x, 0, key=keys)
    want = [expected(lambda a, i=i: fold(keys[i], a)) for i in range(2)]
    np.testing.assert_allclose(batched, np.stack(want), rtol=1e-6)
    # A legacy uint32 key is one key too.
    legacy = smoothed(linear, x, 0, key=jax.random.PRNGKey(7))
    np.testing.assert_allclose(
        legacy,
        smoothed(linear, x, 0, key=jax.random.wrap_key_data(jax.random.PRNGKey(7))),
        rtol=1e-6,
    )
    # A method that takes one key only gets one.
    permuted = A.augmentation_smoothing(A.feature_permutation, flip=False, factors=(1.0,))
    mask = np.arange(30).reshape(5, 6, 1) // 2
    np.testing.assert_allclose(
        permuted(linear, x, 0, key=key, feature_mask=mask),
        A.feature_permutation(linear, x, 0, key=fold(key, 0), feature_mask=mask),
        rtol=1e-6,
    )


def test_baselines_and_feature_masks_follow_the_copies():
    """Integrated gradients of a linear model is ``(x - b) W``: copy ``c F(x)`` with
    baseline ``c F(b)`` gives ``c F(x - b) W``, mirrored back ``c (x - b) F(W)``; the
    average is ``(x - b) (W + F(W)) / 2``. A feature mask mirrored with the image keeps
    each group on the same pixels: ablating groups of a linear model, the
    map is the group's contribution wherever the mask puts it."""
    x = testdata.uniform(jax.random.key(64), (3, 5, 6, 2))
    b = testdata.uniform(jax.random.key(65), (3, 5, 6, 2)) * 0.3
    smoothed = A.augmentation_smoothing(A.integrated_gradients)
    got = smoothed(linear, x, 0, baseline=b, steps=4)
    expected = np.asarray(x - b) * (W + W[:, ::-1]) / 2
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # A baseline that only broadcasts, (W, C), is mirrored along its width too.
    row = b[0, 0]  # (6, 2)
    got = smoothed(linear, x, 0, baseline=row, steps=4)
    expected = (np.asarray(x) - np.asarray(row)) * (W + W[:, ::-1]) / 2
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    rows, cols = np.mgrid[:5, :6]
    mask = ((rows + cols) // 2)[..., None]  # diagonal bands: mirroring moves them
    assert not all(len(set(mask[:, ::-1][mask == g])) == 1 for g in np.unique(mask))
    ablated = A.augmentation_smoothing(A.feature_ablation, factors=(1.0,))
    got = ablated(linear, x, 0, feature_mask=mask)
    # The mirrored copy's groups, mirrored back, are the same pixels, scored with F(W):
    # every pixel gets its group's total of x (W + F(W)) / 2.
    share = (np.asarray(x, np.float64) * (W + W[:, ::-1]) / 2).sum(-1)  # (3, 5, 6)
    totals = np.stack([np.bincount(mask.ravel(), s.ravel()) for s in share])
    np.testing.assert_allclose(got[..., 0], totals[:, mask[..., 0]], rtol=1e-4, atol=1e-5)


def test_square_patches_of_a_mirrored_copy_are_the_same_pixels():
    """Width 5 in patches of 2: columns {0, 1}, {2, 3}, {4}. Laid out on the mirrored
    copy they would be {4, 3}, {2, 1}, {0} of the image; ``patch=2`` is the feature mask
    of the image's own patches for every copy, so it equals that mask given outright."""
    x = testdata.uniform(jax.random.key(66), (2, 4, 5, 1))
    w = W[:4, :5, :1]
    fn = lambda x: jnp.sum(x * w, axis=(1, 2, 3))[:, None] * jnp.array([1.0, -1.0])
    ablation = A.METHODS["feature_ablation"].method  # takes patch=
    smoothed = A.augmentation_smoothing(ablation, factors=(1.0,))
    mask = A.square_patches((4, 5, 1), 2)
    got = smoothed(fn, x, 0, patch=2)
    np.testing.assert_allclose(got, smoothed(fn, x, 0, feature_mask=mask), rtol=1e-6)
    # Each pixel gets its patch's total of x (W + F(W)) / 2, constant on the patch.
    share = (np.asarray(x, np.float64) * (w + w[:, ::-1]) / 2)[..., 0]
    totals = np.stack([np.bincount(mask.ravel(), s.ravel()) for s in share])
    np.testing.assert_allclose(got[..., 0], totals[:, mask[..., 0]], rtol=1e-4, atol=1e-6)


def test_grayscale_images_are_mirrored_with_their_baseline_and_patches():
    """``(N, H, W)`` images without a channel axis give the maps of the same images with
    one channel: a per-pixel baseline and the patches of width 5 in 2s (which a mirror
    would lay out differently) are mirrored along the last axis."""
    x = testdata.uniform(jax.random.key(67), (2, 4, 5, 1))
    baseline = testdata.uniform(jax.random.key(68), (4, 5, 1))
    w = W[:4, :5, :1]
    sign = jnp.array([1.0, -1.0])
    with_channel = lambda x: jnp.sum(x * w, axis=(1, 2, 3))[:, None] * sign
    gray = lambda x: jnp.sum(x * w[..., 0], axis=(1, 2))[:, None] * sign
    ablation = A.METHODS["feature_ablation"].method  # takes patch=
    ig = A.augmentation_smoothing(A.integrated_gradients)
    np.testing.assert_allclose(
        ig(gray, x[..., 0], 0, baseline=baseline[..., 0], steps=4),
        ig(with_channel, x, 0, baseline=baseline, steps=4)[..., 0],
        rtol=1e-5,
        atol=1e-6,
    )
    patches = A.augmentation_smoothing(ablation)
    np.testing.assert_allclose(
        patches(gray, x[..., 0], 0, patch=2),
        patches(with_channel, x, 0, patch=2)[..., 0],
        rtol=1e-5,
        atol=1e-6,
    )


def test_bad_augmentations_are_one_line_errors():
    for factors in ((), (0.0,), (-1.0,), (True,), ("1",), 1.0):
        with pytest.raises(ValueError, match="factors must be"):
            A.augmentation_smoothing(A.saliency, factors=factors)
    with pytest.raises(ValueError, match="flip must be True or False"):
        A.augmentation_smoothing(A.saliency, flip="yes")
    with pytest.raises(ValueError, match=r"scale must be one of \('none', 'minmax'\)"):
        A.augmentation_smoothing(A.saliency, scale="max")
    plane = (
        r"^augmentation_smoothing\(saliency\) works over the image plane: x must be \(N, H, W, C\)"
    )
    with pytest.raises(ValueError, match=plane):
        A.augmentation_smoothing(A.saliency)(lambda x: x[:, :2], jnp.ones((2, 3)), 0)
    with pytest.raises(ValueError, match=r"\(saliency\): key must be a PRNG key, got int 5"):
        A.augmentation_smoothing(A.saliency)(linear, jnp.ones((1, 5, 6, 2)), 0, key=5)
