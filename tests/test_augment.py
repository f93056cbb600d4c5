"""Augmentation keeps shapes and dtypes, is a function of the key, and does what it says."""

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.train.augment import augment as eager_augment
from tests import testdata

# Training runs augment inside the jitted train step; so do these tests, one compiled
# program per set of options instead of dozens of eagerly compiled operations.
augment = jax.jit(eager_augment, static_argnames=("flip", "crop_padding", "erasing"))


def images(n=16, h=12, w=10, c=1):
    return testdata.uniform(jax.random.key(0), (n, h, w, c))


def test_shape_dtype_and_determinism():
    x = images()
    kw = dict(flip=True, crop_padding=2, erasing=0.5)
    a = augment(x, jax.random.key(1), **kw)
    b = augment(x, jax.random.key(1), **kw)
    c = augment(x, jax.random.key(2), **kw)
    assert a.shape == x.shape and a.dtype == x.dtype
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_nothing_enabled_is_identity():
    x = images()
    np.testing.assert_array_equal(eager_augment(x, jax.random.key(1)), x)
    np.testing.assert_array_equal(augment(x, jax.random.key(1)), x)


def test_flip_mirrors_some_images_exactly():
    x = images(n=64)
    y = augment(x, jax.random.key(3), flip=True)
    flipped = np.array([np.array_equal(y[i], x[i, :, ::-1]) for i in range(64)])
    kept = np.array([np.array_equal(y[i], x[i]) for i in range(64)])
    assert (flipped | kept).all() and 10 < flipped.sum() < 54


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = images(n=32, h=8, w=8)
    y = np.asarray(augment(x, jax.random.key(4), crop_padding=2))
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(32):
        assert any(
            np.array_equal(y[i], padded[i, r : r + 8, c : c + 8])
            for r in range(5)
            for c in range(5)
        )


def test_erasing_replaces_one_rectangle_with_noise():
    x = jnp.zeros((32, 16, 16, 1))
    y = np.asarray(augment(x, jax.random.key(5), erasing=1.0))
    for i in range(32):
        rows, cols = np.nonzero(y[i, :, :, 0])
        area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert 0.02 * 256 * 0.5 <= area <= 0.4 * 256 * 1.5  # rounding of the sides
        assert len(rows) >= 0.9 * area  # filled, up to exact zeros of the noise
