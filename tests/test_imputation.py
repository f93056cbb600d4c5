"""ROAD's noisy linear imputation against an independent sparse solve and known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.sparse import lil_matrix
from scipy.sparse.linalg import spsolve

from fmi_jax.evaluation import imputation as I

# One compiled program for the noise-free imputation of any mask of a given shape.
impute_exact = jax.jit(lambda x, removed: I.noisy_linear_imputation(x, removed, noise=0.0))


def reference_imputation(image, removed):
    """The linear system of the module docstring, assembled pixel by pixel (float64) and
    solved by scipy's sparse LU: ``d_p v_p - sum w v_q (q removed) = sum w x_q (q kept)``
    over in-image neighbours, w = 1/6 for edge and 1/12 for diagonal neighbours."""
    image = np.asarray(image, np.float64)
    h, w, channels = image.shape
    index = {p: i for i, p in enumerate(zip(*np.nonzero(removed)))}
    a = lil_matrix((len(index), len(index)))
    b = np.zeros((len(index), channels))
    for (r, c), i in index.items():
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if (dr, dc) == (0, 0) or not (0 <= rr < h and 0 <= cc < w):
                    continue
                weight = 1 / 12 if dr and dc else 1 / 6
                a[i, i] += weight
                if removed[rr, cc]:
                    a[i, index[(rr, cc)]] = -weight
                else:
                    b[i] += weight * image[rr, cc]
    solution = spsolve(a.tocsc(), b).reshape(len(index), channels)
    out = image.copy()
    for (r, c), i in index.items():
        out[r, c] = solution[i]
    return out


def _masks(rng, shape, fractions):
    """Random masks of a smooth-ish field's top pixels: big holes that touch the borders."""
    masks = []
    for fraction in fractions:
        field = rng.normal(size=shape)
        field = field + np.roll(field, 1, 0) + np.roll(field, 1, 1)
        masks.append(field > np.quantile(field, 1 - fraction))
    return np.stack(masks)


def test_matches_an_independent_sparse_solve():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(4, 12, 10, 3)).astype(np.float32)
    removed = _masks(rng, (12, 10), (0.05, 0.3, 0.7, 0.95))
    out = np.asarray(impute_exact(images, removed))
    for image, mask, got in zip(images, removed, out):
        np.testing.assert_allclose(got, reference_imputation(image, mask), atol=2e-6)
        # Kept pixels are the input, bit for bit.
        np.testing.assert_array_equal(got[~mask], image[~mask])


def test_constant_and_linear_images_are_their_own_imputation():
    rows, cols = np.meshgrid(np.arange(12.0), np.arange(10.0), indexing="ij")
    ramp = (0.05 * rows - 0.03 * cols + 0.2)[None, :, :, None].astype(np.float32)
    constant = np.full((1, 12, 10, 1), 0.7, np.float32)
    rng = np.random.default_rng(1)
    anywhere = _masks(rng, (12, 10), (0.6,))
    interior = np.zeros((1, 12, 10), bool)
    interior[0, 1:-1, 1:-1] = _masks(rng, (10, 8), (0.8,))[0]
    # A constant is the weighted mean of its neighbours everywhere, borders included.
    np.testing.assert_allclose(impute_exact(constant, anywhere), constant, atol=5e-6)
    # A linear function is the mean of symmetric neighbours away from the border (on it
    # the in-image neighbours are one-sided).
    np.testing.assert_allclose(impute_exact(ramp, interior), ramp, atol=1e-5)


def test_noise_is_added_to_removed_pixels_only_and_follows_the_key():
    rng = np.random.default_rng(2)
    images = rng.uniform(size=(2, 16, 16, 2)).astype(np.float32)
    removed = _masks(rng, (16, 16), (0.5, 0.5))
    impute = jax.jit(lambda x, m, k: I.noisy_linear_imputation(x, m, k, noise=0.1))
    key = jax.random.key(3)
    noisy = np.asarray(impute(images, removed, key))
    exact = np.asarray(impute_exact(images, removed))
    difference = noisy - exact
    mask = np.broadcast_to(removed[..., None], difference.shape)
    np.testing.assert_array_equal(difference[~mask], 0.0)
    assert 0.08 < difference[mask].std() < 0.12
    # Image i draws from fold_in(key, i): the same noise alone as in the batch.
    alone = impute(images[1:], removed[1:], jax.random.fold_in(key, 1)[None])
    np.testing.assert_allclose(alone[0], noisy[1], atol=1e-6)
    np.testing.assert_array_equal(impute(images, removed, key), noisy)


def test_everything_removed_gives_zero_plus_noise():
    # The system is then singular (any constant solves it): b = 0, so the solution is 0.
    images = np.random.default_rng(4).uniform(size=(1, 24, 24, 1)).astype(np.float32)
    everything = np.ones((1, 24, 24), bool)
    np.testing.assert_array_equal(impute_exact(images, everything), 0.0)
    impute = jax.jit(lambda x, m, k: I.noisy_linear_imputation(x, m, k, noise=0.5))
    noisy = impute(images, everything, jax.random.key(5))
    assert abs(float(np.mean(noisy))) < 0.1 and 0.45 < float(np.std(noisy)) < 0.55


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"removed": np.zeros((2, 5, 6), bool)}, r"mask \(N, H, W\)"),
        ({"x": np.zeros((2, 36), np.float32)}, r"needs images"),
        ({"key": None}, r"needs key="),
        ({"noise": -0.1}, r"noise must be"),
    ],
)
def test_bad_input_is_one_clear_error(kwargs, match):
    args = {
        "x": np.zeros((2, 6, 6, 1), np.float32),
        "removed": np.zeros((2, 6, 6), bool),
        "key": jax.random.key(0),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        I.noisy_linear_imputation(args.pop("x"), args.pop("removed"), args.pop("key"), **args)


def test_traced_noise_is_refused_with_a_clear_error():
    x, mask = np.zeros((1, 4, 4, 1), np.float32), np.zeros((1, 4, 4), bool)
    impute = jax.jit(lambda n: I.noisy_linear_imputation(x, mask, jax.random.key(0), noise=n))
    with pytest.raises(ValueError, match="static"):
        impute(0.1)


def test_mask_with_a_channel_axis_is_accepted():
    x = jnp.linspace(0.0, 1.0, 36).reshape(1, 6, 6, 1)
    mask = np.zeros((1, 6, 6), bool)
    mask[0, 2:4, 2:4] = True
    np.testing.assert_array_equal(impute_exact(x, mask[..., None]), impute_exact(x, mask))
