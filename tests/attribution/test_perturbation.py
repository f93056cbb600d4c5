"""Occlusion and feature permutation: known answers on linear models, and the rules
of the permutation (only the permuted group changes, never the identity, one key one
answer)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax import attribution as A
from fmi_jax.attribution import perturbation
from tests import testdata

SHAPE = (5, 6, 2)  # H, W, C: 5 rows so that windows and patches do not tile exactly
X = testdata.uniform(jax.random.key(0), (4, *SHAPE))
WEIGHTS = testdata.normal(jax.random.key(1), (int(np.prod(SHAPE)), 3))
TARGET = np.array([0, 2, 1, 2])
# The library's permutation draw, compiled once per number of examples n (it is called
# here once per key; un-jitted, every call would compile its while_loop again).
non_identity_permutation = jax.jit(perturbation._non_identity_permutation, static_argnums=1)


def linear(x):
    return x.reshape(x.shape[0], -1) @ WEIGHTS


# Occlusion compiled as one program per geometry (un-jitted, every primitive compiles
# on its own, again for every window shape).
occlusion = jax.jit(
    lambda x, target, baseline=0.0, **kwargs: A.occlusion(
        linear, x, target, baseline=baseline, **kwargs
    ),
    static_argnames=("window", "stride"),
)


def _w(target):
    """The weight of every feature for each example's target class, shaped like X."""
    return np.asarray(WEIGHTS).T[target].reshape(len(target), *SHAPE)


# --------------------------------- occlusion ---------------------------------------
def _occlusion_by_hand(x, baseline, window, stride):
    """Mean over the covering windows of sum_{j in window} w_j (x_j - b_j)."""
    x, w = np.asarray(x), _w(TARGET)
    contribution = w * (x - baseline)
    total, count = np.zeros_like(x), np.zeros_like(x)
    starts = [range(0, f - w + s, s) for f, w, s in zip(SHAPE, window, stride)]  # last: cut off
    for r, c in itertools.product(*starts):
        part = (slice(None), slice(r, r + window[0]), slice(c, c + window[1]))
        drop = contribution[part].sum(axis=(1, 2, 3))
        total[part] += drop[:, None, None, None]
        count[part] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


@pytest.mark.parametrize(
    "window,stride", [((2, 3), (2, 3)), ((2, 2), (1, 1)), ((3, 2), (2, 1))], ids=str
)
@pytest.mark.parametrize("baseline", [0.0, 0.5, "image"])
def test_occlusion_of_a_linear_model_is_the_window_sum_of_w_times_x_minus_baseline(
    window, stride, baseline
):
    if baseline == "image":
        baseline = np.asarray(testdata.uniform(jax.random.key(2), SHAPE))
    got = occlusion(X, TARGET, baseline, window=window, stride=stride)
    expected = _occlusion_by_hand(X, baseline, window, stride)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_occlusion_edge_windows_are_cut_off_and_windows_can_split_channels():
    # 5 rows, window 2, stride 2: windows start at rows 0, 2 and 4, the last one row high
    # (Captum's rule), so row 4 holds the drop of occluding just its own 1 x 2 window.
    got = occlusion(X, TARGET, window=(2, 2), stride=2)
    contribution = _w(TARGET) * np.asarray(X)
    for c in (0, 2, 4):
        drop = contribution[:, 4, c : c + 2].sum(axis=(1, 2))
        np.testing.assert_allclose(got[:, 4, c, 0], drop, atol=1e-5)
    # A window of one channel: each channel's features get their own contributions.
    per_channel = occlusion(X, TARGET, window=(1, 1, 1))
    np.testing.assert_allclose(per_channel, _w(TARGET) * np.asarray(X), rtol=1e-5, atol=1e-5)


def test_an_int_window_on_images_is_a_square_spatial_window_over_all_channels():
    """window=w on (N, H, W, C) images means (w, w), i.e. (w, w, C); on inputs without a
    channel axis an int is the size along every axis."""
    for stride in (1, 2):
        square = occlusion(X, TARGET, window=2, stride=stride)
        np.testing.assert_array_equal(square, occlusion(X, TARGET, window=(2, 2), stride=stride))
        np.testing.assert_array_equal(
            square, occlusion(X, TARGET, window=(2, 2, 2), stride=(stride, stride, 2))
        )
        expected = _occlusion_by_hand(X, 0.0, (2, 2), (stride, stride))
        np.testing.assert_allclose(square, expected, rtol=1e-5, atol=1e-5)
    flat = np.asarray(X).reshape(len(X), -1)  # (4, 60): one axis, an int is its window
    by_int = A.occlusion(linear, flat, TARGET, window=3, stride=3)
    np.testing.assert_array_equal(by_int, A.occlusion(linear, flat, TARGET, window=(3,), stride=3))
    contribution = (_w(TARGET) * np.asarray(X)).reshape(len(X), 20, 3).sum(axis=2)
    np.testing.assert_allclose(by_int, np.repeat(contribution, 3, axis=1), rtol=1e-5, atol=1e-5)


def test_occlusion_batch_size_and_jit_do_not_change_the_result():
    ref = A.occlusion(linear, X, TARGET, window=(2, 2), stride=1)
    np.testing.assert_allclose(
        A.occlusion(linear, X, TARGET, window=(2, 2), stride=1, batch_size=7), ref, atol=1e-5
    )
    jitted = jax.jit(lambda x, t: A.occlusion(linear, x, t, window=(2, 2), stride=1))
    np.testing.assert_allclose(jitted(X, TARGET), ref, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"window": (6, 2)}, "larger than the input"),
        ({"window": (2,)}, "must give a size for every axis"),
        ({"window": (2, 2), "stride": (1, 1, 1, 1)}, "stride"),
        ({"window": (2, 2), "stride": 3}, "stride .* is larger than the window"),
        ({"window": (2, 0)}, "window size must be an integer >= 1"),
        ({"window": (2, 2), "baseline": np.zeros((3, 3))}, "does not broadcast"),
    ],
)
def test_occlusion_bad_geometry_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        A.occlusion(linear, X, TARGET, **kwargs)


def test_occlusion_names_the_callers_shape_of_a_channels_first_batch():
    """A spatial window on a (N, C, H, W) batch is refused with x's own shape."""
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"^occlusion: x of shape \(2, 1, 8, 8\) looks channels"):
        A.occlusion(lambda x: x.reshape(len(x), -1)[:, :2], x, 0, window=2)


# ----------------------------- feature permutation ---------------------------------
MASK = A.square_patches(SHAPE, 2)  # 3 x 3 patches, the last row and column narrower


def test_square_patches_numbers_patches_row_major():
    expected = np.array(
        [
            [0, 0, 1, 1, 2, 2],
            [0, 0, 1, 1, 2, 2],
            [3, 3, 4, 4, 5, 5],
            [3, 3, 4, 4, 5, 5],
            [6, 6, 7, 7, 8, 8],
        ]
    )
    np.testing.assert_array_equal(MASK[..., 0], expected)
    assert MASK.shape == (5, 6, 1) and MASK.dtype == np.int32
    # Grayscale (H, W): a mask of the same shape, which broadcasts to one example.
    np.testing.assert_array_equal(A.square_patches((4, 4), (4, 2)), [[0, 0, 1, 1]] * 4)


def test_feature_permutation_of_two_examples_swaps_them():
    """With two examples the only permutation that is not the identity is the swap, so
    for a linear model group g of example i gets sum_{j in g} w_j (x_ij - x_{1-i,j})."""
    x, t = X[:2], TARGET[:2]
    got = np.asarray(A.feature_permutation(linear, x, t, key=jax.random.key(3), feature_mask=MASK))
    contribution = _w(t) * (np.asarray(x) - np.asarray(x)[::-1])
    expected = np.zeros_like(got)
    groups = np.broadcast_to(MASK, SHAPE)
    for g in np.unique(groups):
        inside = groups == g
        expected[:, inside] = (contribution[:, inside]).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_feature_permutation_changes_only_the_permuted_group():
    """Each group's drop is the linear model's change when exactly that group's features
    take the values of the example the group's permutation points to."""
    key = jax.random.key(4)
    got = np.asarray(A.feature_permutation(linear, X, TARGET, key=key, feature_mask=MASK))
    groups = np.broadcast_to(MASK, SHAPE)
    x, contribution = np.asarray(X), _w(TARGET)
    for g in np.unique(groups):
        perm = np.asarray(non_identity_permutation(jax.random.fold_in(key, int(g)), len(x)))
        assert not np.array_equal(perm, np.arange(len(x)))
        inside = groups == g
        drop = (contribution * (x - x[perm]))[:, inside].sum(axis=1)
        np.testing.assert_allclose(
            got[:, inside], np.repeat(drop[:, None], inside.sum(), 1), atol=1e-5
        )


def test_feature_permutation_ignored_features_get_zero_and_key_rules():
    ignore = np.ones(SHAPE, np.float32)
    ignore[:, :, 1] = 0  # the model ignores channel 1
    fn = lambda x: linear(x * ignore)
    key = jax.random.key(5)

    # Every call in one compiled program (un-jitted, or jitted one by one, each call
    # compiles its own copy of the permutation draws' while_loop, seconds apiece).
    @jax.jit
    def run(x, target, key, other_key):
        every_batch_size = [
            A.feature_permutation(fn, x, target, key=key, batch_size=batch_size)
            for batch_size in (None, 1, 3, 1000)
        ]
        return every_batch_size, A.feature_permutation(fn, x, target, key=other_key)

    # No feature_mask: every scalar feature is its own group.
    (ref, *chunked), other = run(X, TARGET, key, jax.random.key(6))
    assert np.all(np.asarray(ref)[..., 1] == 0)
    assert np.count_nonzero(np.asarray(ref)[..., 0]) > ref[..., 0].size // 2
    for result in chunked:  # batch sizes 1, 3 and 1000
        np.testing.assert_allclose(result, ref, atol=1e-5)
    again = run(X, TARGET, jax.random.key(5), jax.random.key(6))[0][0]
    np.testing.assert_array_equal(again, ref)
    assert not np.allclose(other, ref)


def test_non_identity_permutations_are_permutations_and_never_the_identity():
    for n in (2, 3):
        seen = set()
        for k in range(40):
            perm = np.asarray(non_identity_permutation(jax.random.key(k), n))
            assert sorted(perm) == list(range(n))
            assert not np.array_equal(perm, np.arange(n))
            seen.add(tuple(perm))
        assert len(seen) == (1 if n == 2 else 5)  # every non-identity permutation occurs


@pytest.mark.parametrize(
    "x,kwargs,message",
    [
        (X[:1], {}, "at least 2 examples, got a batch of 1"),
        (X, {"feature_mask": np.zeros((3, 3), np.int32)}, "does not broadcast"),
        (X, {"feature_mask": np.zeros(SHAPE, np.float32)}, "integer group ids"),
    ],
)
def test_feature_permutation_bad_input_is_named(x, kwargs, message):
    with pytest.raises(ValueError, match=message):
        A.feature_permutation(linear, x, None, key=jax.random.key(0), **kwargs)


def test_feature_permutation_takes_one_key():
    keys = jax.random.split(jax.random.key(0), len(X))
    with pytest.raises(ValueError, match="one PRNG key"):
        A.feature_permutation(linear, X, TARGET, key=keys)
    with pytest.raises(ValueError, match="feature_permutation draws random numbers: pass key="):
        A.feature_permutation(linear, X, TARGET)
    with pytest.raises(ValueError, match="feature_permutation has no reference input"):
        A.feature_permutation(linear, X, TARGET, key=jax.random.key(0), baseline=0.0)


def test_registry_patch_option_is_square_patches():
    key = jax.random.key(7)
    by_name = A.explainer("feature_permutation", linear, patch=2)(X, TARGET, key)
    direct = A.feature_permutation(linear, X, TARGET, key=key, feature_mask=MASK)
    np.testing.assert_array_equal(by_name, direct)
    with pytest.raises(ValueError, match="not both"):
        A.explainer("feature_permutation", linear, patch=2, feature_mask=MASK)
    # A patch larger than the image is one feature: refused like occlusion's window.
    for name in ("lime", "kernel_shap", "feature_ablation"):
        with pytest.raises(ValueError, match=r"patch \(9, 9\) is larger than the image \(5, 6\)"):
            A.explainer(name, linear, patch=9)(X, TARGET, key)


def test_patches_of_grayscale_images_without_a_channel_axis():
    """(N, H, W) images: ``patch=2`` groups 2 x 2 pixels, and ablating a patch of a
    linear model removes sum_{j in patch} w_j x_j, which every pixel of it reports."""
    w = np.asarray(testdata.normal(jax.random.key(8), (4, 6)))
    x = np.asarray(testdata.uniform(jax.random.key(9), (3, 4, 6)))
    fn = lambda x: jnp.sum(x * w, axis=(1, 2))[:, None]
    got = A.explainer("feature_ablation", fn, patch=2)(x, 0)
    per_patch = (x * w).reshape(3, 2, 2, 3, 2).sum(axis=(2, 4))
    expected = np.repeat(np.repeat(per_patch, 2, axis=1), 2, axis=2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_float32_inputs_give_float32_maps_when_x64_is_enabled():
    # jax_enable_x64, switched on elsewhere in a user's program, must not turn the maps
    # of a float32 model into float64 through constants built without a dtype.
    mask = A.square_patches(SHAPE, 3)
    key = jax.random.key(3)
    calls = {
        "occlusion": lambda: A.occlusion(linear, X, TARGET, window=(2, 3)),
        "kernel_shap": lambda: A.kernel_shap(linear, X, TARGET, key=key, feature_mask=mask),
        "lime": lambda: A.lime(linear, X, TARGET, key=key, feature_mask=mask),
    }
    for name, call in calls.items():
        expected = call()
        with jax.enable_x64(True):
            got = call()
        assert got.dtype == jnp.float32, name
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=name)
