"""Properties every attribution method must have, checked on all of them (the `method`
fixture of conftest.py runs each public method with small settings, on a CNN that
ignores some input features)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

TARGET = np.array([0, 2, 1, 1, 0], dtype=np.int32)
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def reference(method, images, masked_cnn_fn):
    """The method's attributions for the five test images, computed once per method."""
    return method(masked_cnn_fn, images, TARGET)


def test_shape_dtype_and_finite(reference, images):
    assert reference.shape == images.shape
    assert reference.dtype == jnp.float32
    assert np.all(np.isfinite(reference))


def test_ignored_features_get_exactly_zero(reference, spreading):
    """The model multiplies channel 1 and pixel (1, 2, 0) by zero, so nothing may be
    attributed to them: exactly zero, not approximately. (Gaussian smoothing spreads
    neighbouring saliency onto the pixel by design, and occlusion gives a window's drop to
    every pixel of the window; both stay within their channel.)"""
    attributions = np.asarray(reference)
    assert np.all(attributions[..., 1] == 0)
    if not spreading:
        assert np.all(attributions[:, 1, 2, 0] == 0)
    assert np.count_nonzero(attributions[..., 0]) > attributions[..., 0].size // 2


def test_batch_size_does_not_change_the_result(method, reference, images, masked_cnn_fn):
    # 3 divides neither the 5 examples nor the 5 * samples (example, sample) pairs.
    result = method(masked_cnn_fn, images, TARGET, batch_size=3)
    np.testing.assert_allclose(result, reference, **TOL)


def test_a_prefix_of_the_batch_gives_the_first_rows(
    method, noisy, batch_coupled, reference, images, masked_cnn_fn
):
    """Per-example keys: the first two examples get the same noise alone as in the batch.
    (For deterministic methods the vmap test below is the stronger statement.)"""
    if not noisy:
        pytest.skip("deterministic: covered by test_vmap_over_examples_equals_the_batched_call")
    if batch_coupled:
        pytest.skip("permutes across the batch: a prefix is another experiment by definition")
    result = method(masked_cnn_fn, images[:2], TARGET[:2], batch_size=2)
    np.testing.assert_allclose(result, reference[:2], **TOL)


def test_jit_equals_eager_and_compiles_once(method, reference, images, masked_cnn_fn):
    traces = []

    def counted_fn(x):
        traces.append(None)
        return masked_cnn_fn(x)

    jitted = jax.jit(lambda x, t: method(counted_fn, x, t))
    np.testing.assert_allclose(jitted(images, TARGET), reference, **TOL)
    traced = len(traces)
    jitted(images[::-1] * 0.5, TARGET[::-1].copy())  # new data of the same shapes
    assert len(traces) == traced, "a second call with same-shaped data must not retrace fn"
    assert jitted._cache_size() == 1


def test_vmap_over_examples_equals_the_batched_call(
    method, noisy, reference, images, masked_cnn_fn
):
    """Example i's attribution depends on example i only. (Noisy methods draw from
    fold_in(key, i), so a one-example call differs by design; vmap with per-example
    keys is tested in test_noise_tunnel.py and test_shap.py.)"""
    if noisy:
        pytest.skip("needs per-example keys: see test_noise_tunnel.py / test_shap.py")
    # Compiled as one program: un-jitted, vmap runs (and compiles) every batched
    # primitive on its own.
    one = jax.jit(jax.vmap(lambda x, t: method(masked_cnn_fn, x[None], t[None])[0]))(images, TARGET)
    np.testing.assert_allclose(one, reference, **TOL)
