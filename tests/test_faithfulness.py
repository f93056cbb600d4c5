"""Faithfulness curves and sparseness with known answers, on tiny hand-built models."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax import evaluation
from fmi_jax.evaluation import faithfulness as F
from fmi_jax.evaluation.imputation import noisy_linear_imputation
from tests import testdata

# Most known-answer tests run each curve as one jitted program ("every function is
# jit-compatible with the non-array arguments static", the module docstring) instead of
# dozens of eagerly compiled operations; the eager path keeps its own tests (ties,
# batch sizes, sparseness, jit against eager, refused inputs). Random test inputs come
# from tests/testdata.py.
_STATIC = ("substrate", "step", "blur_sigma", "batch_size", "probabilities")
jit_deletion_curve = jax.jit(F.deletion_curve, static_argnums=0, static_argnames=_STATIC)
jit_insertion_curve = jax.jit(F.insertion_curve, static_argnums=0, static_argnames=_STATIC)
jit_pixel_flipping = jax.jit(
    F.pixel_flipping, static_argnums=0, static_argnames=_STATIC + ("order",)
)


def linear_model(w, bias=0.0):
    """Two-class linear model: class 0 scores ``sum_j w_j x_j + bias``, class 1 zero."""
    w = jnp.asarray(w, jnp.float32).reshape(-1)

    def fn(x):
        score = x.reshape(x.shape[0], -1) @ w + bias
        return jnp.stack([score, jnp.zeros_like(score)], axis=1)

    return fn


@testdata.jit(static_argnums=(1, 2))
def _mlp_weights(key, d, classes):
    k1, k2 = jax.random.split(key)
    return jax.random.normal(k1, (d, 8)) / np.sqrt(d), jax.random.normal(k2, (8, classes))


def tiny_mlp(key, shape, classes=3):
    w1, w2 = _mlp_weights(key, int(np.prod(shape)), classes)
    return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


def rise_gkern(klen, nsig):
    """RISE's ``gkern(klen, nsig)`` 2-D kernel: ``scipy.ndimage.gaussian_filter`` of a
    centred delta; without scipy, the same from the formula: the 1-D Gaussian truncated at
    ``r = round(4 nsig)``, normalised, summed over the mirror images of the centre under
    half-sample reflection (period ``2 klen``)."""
    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1.0
    try:
        from scipy import ndimage
    except ImportError:
        pass
    else:
        return ndimage.gaussian_filter(delta, nsig)
    r = int(4.0 * nsig + 0.5)
    d = np.arange(-r, r + 1)
    g = np.exp(-0.5 * (d / nsig) ** 2) if nsig > 0 else (d == 0).astype(float)
    g /= g.sum()
    k1 = np.zeros(klen)
    for i in range(klen):
        for n in range(i - r, i + r + 1):
            m = n % (2 * klen)
            if min(m, 2 * klen - 1 - m) == klen // 2:
                k1[i] += g[i - n + r]
    return np.outer(k1, k1)


def rise_blur_reference(x, nsig=5.0, klen=11):
    """RISE's ``conv2d(x, kern, padding=klen // 2)`` with ``kern[c, c] = gkern``, in numpy,
    float64, for NHWC ``x``."""
    x = np.asarray(x, np.float64)
    k = rise_gkern(klen, nsig)
    p = klen // 2
    h, w = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))  # zeros
    out = np.zeros_like(x)
    for a in range(klen):
        for b in range(klen):
            out += k[a, b] * padded[:, a : a + h, b : b + w]
    return out


def test_deletion_with_oracle_order_on_hand_example():
    # One 2x2 image whose pixels contribute 2, 4, 1, 3 to the score (w * x).
    w = np.array([1.0, 2.0, 1.0, 3.0])
    x = np.array([2.0, 2.0, 1.0, 1.0]).reshape(1, 2, 2, 1)
    fn = linear_model(w)
    oracle = w.reshape(1, 2, 2, 1) * x
    kw = dict(step=1, probabilities=False)
    best = jit_deletion_curve(fn, x, 0, oracle, **kw)
    worst = jit_deletion_curve(fn, x, 0, -oracle, **kw)
    np.testing.assert_array_equal(best, [[10, 6, 3, 1, 0]])  # remove 4, 3, 2, 1
    np.testing.assert_array_equal(worst, [[10, 9, 7, 4, 0]])  # remove 1, 2, 3, 4
    # Trapezoids over 4 intervals of 1/4: (5 + 6 + 3 + 1 + 0) / 4 and (5 + 9 + 7 + 4 + 0) / 4.
    np.testing.assert_allclose(F.auc(best), [3.75])
    np.testing.assert_allclose(F.auc(worst), [6.25])
    np.testing.assert_allclose(F.auc(worst) - F.auc(best), [2.5])
    # AOPC: mean of 10 - c_k.
    np.testing.assert_allclose(F.aopc(best), [(0 + 4 + 7 + 9 + 10) / 5])


@pytest.mark.parametrize("step", [1, 3, 0.25])
def test_deletion_curve_is_cumulative_sum_of_sorted_contributions(step):
    rng = np.random.default_rng(0)
    w = rng.uniform(0.1, 1.0, size=16)
    x = rng.uniform(0.1, 1.0, size=(3, 4, 4, 1)).astype(np.float32)
    fn = linear_model(w, bias=0.5)
    contributions = (w.reshape(1, 4, 4, 1) * x).reshape(3, -1)
    got = np.asarray(
        jit_deletion_curve(fn, x, 0, contributions.reshape(x.shape), step=step, probabilities=False)
    )
    m = step if isinstance(step, int) else 4
    removed = np.minimum(np.arange(0, -(-16 // m) + 1) * m, 16)
    assert got.shape == (3, len(removed))
    for i in range(3):
        cum = np.concatenate([[0.0], np.cumsum(np.sort(contributions[i])[::-1])])
        np.testing.assert_allclose(got[i], contributions[i].sum() + 0.5 - cum[removed], atol=1e-5)


def test_ties_are_broken_by_pixel_index_and_channels_are_summed():
    w = np.arange(1.0, 7.0)  # 1x3 image with 2 channels
    x = np.ones((1, 1, 3, 2), np.float32)
    fn = linear_model(w)
    # Channel sums 0, 0, 0: all tied, so pixels go in index order: pixel 0 (w 1 + 2), ...
    flat = F.deletion_curve(
        fn, x, 0, np.array([[[[1.0, -1.0], [2.0, -2.0], [0.0, 0.0]]]]), step=1, probabilities=False
    )
    np.testing.assert_array_equal(flat, [[21, 18, 11, 0]])
    # Per-pixel maps (N, H, W) are accepted too: pixel 2 (5 + 6) first, then 1, then 0.
    per_pixel = F.deletion_curve(
        fn, x, 0, np.array([[[0.0, 1.0, 2.0]]]), step=1, probabilities=False
    )
    np.testing.assert_array_equal(per_pixel, [[21, 10, 3, 0]])
    lerf = F.pixel_flipping(
        fn, x, 0, np.array([[[0.0, 1.0, 2.0]]]), order="lerf", step=1, probabilities=False
    )
    np.testing.assert_array_equal(lerf, [[21, 18, 11, 0]])


def test_insertion_and_deletion_endpoints_with_blur_and_probabilities():
    fn = tiny_mlp(jax.random.key(0), (6, 5, 2))
    x = testdata.uniform(jax.random.key(1), (4, 6, 5, 2))
    maps = testdata.normal(jax.random.key(2), x.shape)
    target = jnp.array([0, 1, 2, 1])
    blurred = F._substrate("gaussian", x, 1.5)
    prob = lambda z: np.asarray(jax.nn.softmax(fn(z)))[np.arange(4), np.asarray(target)]  # noqa: E731
    ins = jit_insertion_curve(fn, x, target, maps, substrate="gaussian", blur_sigma=1.5)
    dele = jit_deletion_curve(fn, x, target, maps, substrate="zero")
    assert ins.shape == dele.shape == (4, 7)  # default step: one row of 5 pixels, 30 pixels
    np.testing.assert_allclose(ins[:, 0], prob(blurred), atol=1e-6)
    np.testing.assert_allclose(ins[:, -1], prob(x), atol=1e-6)
    np.testing.assert_allclose(dele[:, 0], prob(x), atol=1e-6)
    np.testing.assert_allclose(dele[:, -1], prob(jnp.zeros_like(x)), atol=1e-6)


def test_gaussian_substrate_matches_scipy_and_keeps_a_constant_image():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(1).uniform(size=(2, 7, 9, 3)).astype(np.float32)
    got = np.asarray(F._substrate("gaussian", jnp.asarray(x), 1.3))
    want = ndimage.gaussian_filter(x, sigma=(0, 1.3, 1.3, 0), mode="reflect", truncate=4.0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # A constant image is its own blur (even with the kernel wider than the image), so
    # deleting pixels into the Gaussian substrate changes nothing.
    const = np.full((2, 4, 4, 1), 0.7, np.float32)
    fn = tiny_mlp(jax.random.key(3), (4, 4, 1))
    maps = np.random.default_rng(2).normal(size=const.shape)
    curve = np.asarray(jit_deletion_curve(fn, const, None, maps, substrate="gaussian", step=3))
    np.testing.assert_allclose(curve, np.broadcast_to(curve[:, :1], curve.shape), atol=1e-6)


@pytest.mark.parametrize(("shape", "sigma"), [((2, 14, 17, 3), 5.0), ((1, 6, 9, 2), 1.5)])
def test_rise_blur_is_rises_formula_borders_included(shape, sigma):
    # A random image with several channels, larger and smaller than the 11 x 11 kernel;
    # every pixel is compared, the 5-pixel frame that zero padding darkens included.
    x = np.random.default_rng(5).uniform(size=shape).astype(np.float32)
    got = np.asarray(F._substrate("rise_blur", jnp.asarray(x), sigma))
    np.testing.assert_allclose(got, rise_blur_reference(x, sigma), atol=1e-5)
    # RISE's kernel sums to 1: the Gaussian's mass outside the window is folded back in.
    np.testing.assert_allclose(rise_gkern(11, sigma).sum(), 1.0, atol=1e-12)


def test_rise_blur_darkens_the_borders_of_a_constant_image():
    const = jnp.full((1, 20, 20, 2), 0.7, jnp.float32)
    rise = np.asarray(F._substrate("rise_blur", const, 5.0))[0, :, :, 0]
    gaussian = np.asarray(F._substrate("gaussian", const, 5.0))[0, :, :, 0]
    np.testing.assert_allclose(gaussian, 0.7, atol=1e-6)
    # 5 or more pixels from every border the whole kernel lies inside the image.
    np.testing.assert_allclose(rise[5:-5, 5:-5], 0.7, atol=1e-6)
    frame = np.ones((20, 20), bool)
    frame[5:-5, 5:-5] = False
    assert np.all(rise[frame] < 0.7 - 1e-3)
    # At a corner only the kernel's inner quarter sees the image: 0.7 (sum k1[5:])^2.
    # At sigma 5 the folded kernel is nearly a box, far from the Gaussian normalised
    # over the 11 x 11 window (end taps 0.088 against 0.066 of k1).
    k1 = rise_gkern(11, 5.0)[5] / np.sqrt(rise_gkern(11, 5.0)[5, 5])
    window = np.exp(-0.5 * ((np.arange(11) - 5) / 5.0) ** 2)
    np.testing.assert_allclose(k1[[0, 5]], [0.0880, 0.0940], atol=1e-4)
    np.testing.assert_allclose((window / window.sum())[[0, 5]], [0.0663, 0.1094], atol=1e-4)
    np.testing.assert_allclose(rise[0, 0], 0.7 * k1[5:].sum() ** 2, atol=1e-6)
    np.testing.assert_allclose(rise, rise_blur_reference(const, 5.0)[0, :, :, 0], atol=1e-6)


def test_a_blur_far_wider_than_the_image_is_its_mean_or_refused():
    """blur_sigma 1e4 on a 6 x 5 image: the symmetric blur makes every pixel its
    channel's mean, without a 80,001-tap convolution; RISE's kernel becomes the box
    1/11, so the zero-bordered blur is a mean over the pixels within 5 of each pixel.
    A radius beyond what is computed is a one-line error naming blur_sigma."""
    x = np.random.default_rng(6).uniform(size=(2, 6, 5, 3)).astype(np.float32)
    mean = np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
    gaussian = F._substrate("gaussian", jnp.asarray(x), 1e4)
    np.testing.assert_allclose(gaussian, mean, atol=1e-6)
    np.testing.assert_allclose(F._rise_kernel(1e4), np.full(11, 1 / 11), atol=1e-7)
    # Every pixel of a 6 x 5 image lies within 5 rows and columns of every other.
    rise = F._substrate("rise_blur", jnp.asarray(x), 1e4)
    box = np.broadcast_to(x.sum(axis=(1, 2), keepdims=True) / 121, x.shape)
    np.testing.assert_allclose(rise, box, atol=1e-6)
    with pytest.raises(ValueError, match=r"^blur_sigma: sigma=1e\+09 with truncate=4 reaches"):
        F._substrate("gaussian", jnp.asarray(x), 1e9)


def test_insertion_starts_at_the_rise_blur_by_default():
    fn = tiny_mlp(jax.random.key(10), (12, 12, 3))
    x = testdata.uniform(jax.random.key(11), (3, 12, 12, 3))
    maps = testdata.normal(jax.random.key(12), x.shape)
    ins = jit_insertion_curve(fn, x, None, maps, step=0.25)
    target = np.argmax(np.asarray(fn(x)), axis=1)
    prob = lambda z: np.asarray(jax.nn.softmax(fn(jnp.asarray(z, jnp.float32))))[  # noqa: E731
        np.arange(3), target
    ]
    assert ins.shape == (3, 5)
    np.testing.assert_allclose(ins[:, 0], prob(rise_blur_reference(x)), atol=1e-5)
    np.testing.assert_allclose(ins[:, -1], prob(x), atol=1e-6)
    explicit = jit_insertion_curve(fn, x, None, maps, step=0.25, substrate="rise_blur")
    np.testing.assert_array_equal(ins, explicit)


@pytest.mark.parametrize("curve_fn", [F.deletion_curve, F.insertion_curve])
def test_batch_size_does_not_change_results(curve_fn):
    fn = tiny_mlp(jax.random.key(4), (5, 5, 1))
    x = testdata.uniform(jax.random.key(5), (3, 5, 5, 1))
    maps = testdata.normal(jax.random.key(6), x.shape)
    kw = dict(substrate="gaussian", blur_sigma=1.0, step=4)
    full = curve_fn(fn, x, None, maps, **kw)
    for batch_size in (3, 7):
        chunked = curve_fn(fn, x, None, maps, batch_size=batch_size, **kw)
        np.testing.assert_allclose(chunked, full, atol=1e-6)


def test_jit_matches_eager_and_works_on_flat_inputs():
    fn = tiny_mlp(jax.random.key(7), (10,))
    x = testdata.uniform(jax.random.key(8), (3, 10))
    maps = testdata.normal(jax.random.key(9), x.shape)
    curve = functools.partial(F.deletion_curve, fn, step=0.2, batch_size=4)
    eager = curve(x, 1, maps)
    jitted = jax.jit(curve, static_argnums=1)(x, 1, maps)
    assert eager.shape == (3, 6)
    np.testing.assert_allclose(jitted, eager, atol=1e-6)


def test_morf_falls_faster_than_lerf_on_linear_model():
    rng = np.random.default_rng(3)
    w = rng.uniform(0.1, 1.0, size=36)
    x = rng.uniform(0.1, 1.0, size=(4, 6, 6, 1)).astype(np.float32)
    fn = linear_model(w)
    oracle = w.reshape(1, 6, 6, 1) * x
    kw = dict(step=2, probabilities=False)
    morf = jit_pixel_flipping(fn, x, 0, oracle, order="morf", **kw)
    lerf = jit_pixel_flipping(fn, x, 0, oracle, order="lerf", **kw)
    np.testing.assert_array_equal(morf, jit_deletion_curve(fn, x, 0, oracle, **kw))
    assert np.all(F.auc(morf) < F.auc(lerf))
    assert np.all(F.aopc(morf) > F.aopc(lerf))


jit_road = jax.jit(
    F.road, static_argnums=0, static_argnames=("order", "fractions", "noise", "score", "batch_size")
)
jit_faithfulness_correlation = jax.jit(
    F.faithfulness_correlation,
    static_argnums=0,
    static_argnames=("subset_size", "samples", "substrate", "probabilities", "batch_size"),
)


def test_faithfulness_correlation_of_the_exact_map_of_a_linear_model_is_one():
    # f(x) = w.x + b with the zero substrate: removing a subset S lowers f by exactly
    # sum_{S} w x, the relevance of S under the map w * x, for every subset.
    w = testdata.normal(jax.random.key(10), (6, 6, 2))
    x = testdata.uniform(jax.random.key(11), (3, 6, 6, 2))
    fn = linear_model(w, bias=0.3)
    exact = x * w
    key = jax.random.key(12)
    corr = jit_faithfulness_correlation(fn, x, 0, exact, key, samples=30)
    np.testing.assert_allclose(corr, 1.0, atol=1e-6)
    np.testing.assert_allclose(
        jit_faithfulness_correlation(fn, x, 0, -exact, key, samples=30), -1.0, atol=1e-6
    )
    # Every subset has the same size, so shifting every pixel's relevance by a constant
    # (or scaling it) shifts every subset's sum alike and leaves the correlation alone.
    shifted = exact * 2.5 + 7.0
    np.testing.assert_allclose(
        jit_faithfulness_correlation(fn, x, 0, shifted, key, samples=30), corr, atol=1e-5
    )
    unrelated = testdata.normal(jax.random.key(13), x.shape)
    assert np.all(np.abs(jit_faithfulness_correlation(fn, x, 0, unrelated, key, samples=30)) < 0.6)


@testdata.jit
def _permutation(key, example, sample):
    return jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, example), sample), 16)


def test_faithfulness_correlation_follows_its_documented_subsets():
    # Recomputed by hand for one example of a nonlinear model: subset s is the first
    # subset_size pixels of permutation(fold_in(fold_in(key, i), s)), replaced by the
    # substrate; Pearson between the subsets' relevance and the drops of the logit.
    fn = tiny_mlp(jax.random.key(14), (4, 4, 1))
    x = testdata.uniform(jax.random.key(15), (2, 4, 4, 1))
    maps = testdata.normal(jax.random.key(16), (2, 4, 4))
    key = jax.random.key(17)
    got = jit_faithfulness_correlation(fn, x, 1, maps, key, subset_size=5, samples=6)
    logits = np.asarray(fn(x))
    for i in range(2):
        sums, drops = [], []
        for s in range(6):
            chosen = np.asarray(_permutation(key, i, s))[:5]
            keep = np.ones(16, bool)
            keep[chosen] = False
            perturbed = np.asarray(x[i]).reshape(16) * keep
            sums.append(np.asarray(maps[i]).reshape(16)[chosen].sum())
            drops.append(logits[i, 1] - fn(perturbed.reshape(1, 4, 4, 1))[0, 1])
        np.testing.assert_allclose(got[i], np.corrcoef(sums, drops)[0, 1], atol=1e-5)
    np.testing.assert_allclose(
        F.faithfulness_correlation(fn, x, 1, maps, key, subset_size=5, samples=6, batch_size=5),
        got,
        atol=1e-6,
    )


jit_sensitivity_n = jax.jit(
    F.sensitivity_n,
    static_argnums=0,
    static_argnames=("sizes", "samples", "substrate", "probabilities", "batch_size"),
)


def test_sensitivity_n_of_the_exact_map_of_a_linear_model_is_one_at_every_size():
    # Ancona et al.: a linear model and the zero substrate make sum_S w x the exact drop
    # for every subset, so the exact map satisfies sensitivity-n at every n.
    w = testdata.normal(jax.random.key(20), (5, 5, 1))
    x = testdata.uniform(jax.random.key(21), (2, 5, 5, 1))
    fn = linear_model(w, bias=-0.2)
    key = jax.random.key(22)
    sizes = (1, 3, 0.5, 24)
    got = jit_sensitivity_n(fn, x, 0, x * w, key, sizes=sizes, samples=12)
    assert got.shape == (2, 4)
    np.testing.assert_allclose(got, 1.0, atol=1e-5)
    # A map that misplaces relevance is exact for no size but the trivial ones.
    swapped = jnp.flip(x * w, axis=1)
    assert np.all(jit_sensitivity_n(fn, x, 0, swapped, key, sizes=sizes[:3], samples=12) < 0.99)
    # Sizes as an array; a constant map gives every subset the same relevance: NaN.
    constant = F.sensitivity_n(fn, x, 0, np.ones_like(x), key, sizes=np.array([2, 5]), samples=3)
    assert constant.shape == (2, 2) and np.all(np.isnan(constant))


def test_sensitivity_n_columns_are_faithfulness_correlations_of_their_documented_subsets():
    fn = tiny_mlp(jax.random.key(23), (4, 4, 1))
    x = testdata.uniform(jax.random.key(24), (2, 4, 4, 1))
    maps = testdata.normal(jax.random.key(25), (2, 4, 4))
    key = jax.random.key(26)
    got = F.sensitivity_n(fn, x, 1, maps, key, sizes=(5, 0.5), samples=6, batch_size=7)
    np.testing.assert_allclose(
        got[:, 0],
        jit_faithfulness_correlation(fn, x, 1, maps, key, subset_size=5, samples=6),
        atol=1e-6,
    )
    # Size j draws its subsets from samples j * samples + s: recomputed by hand for size 8.
    logits = np.asarray(fn(x))
    for i in range(2):
        sums, drops = [], []
        for s in range(6):
            chosen = np.asarray(_permutation(key, i, 6 + s))[:8]
            keep = np.ones(16, bool)
            keep[chosen] = False
            perturbed = np.asarray(x[i]).reshape(16) * keep
            sums.append(np.asarray(maps[i]).reshape(16)[chosen].sum())
            drops.append(logits[i, 1] - fn(perturbed.reshape(1, 4, 4, 1))[0, 1])
        np.testing.assert_allclose(got[i, 1], np.corrcoef(sums, drops)[0, 1], atol=1e-5)


def _aix360_monotonicity(fn, x, target, relevance, base):
    """AIX360's ``monotonicity_metric``, one example, one pixel per step, in NumPy: put
    the pixels of x into the base in ascending order of relevance and check that the
    target's probability never falls."""
    flat_x, current = np.asarray(x).reshape(-1), np.asarray(base).reshape(-1).copy()
    probabilities = []
    for pixel in np.argsort(np.asarray(relevance).reshape(-1), kind="stable"):
        current[pixel] = flat_x[pixel]
        logits = np.asarray(fn(current.reshape((1,) + x.shape)), np.float64)[0]
        probabilities.append(
            np.exp(logits[target] - logits.max()) / np.exp(logits - logits.max()).sum()
        )
    return bool(np.all(np.diff(probabilities) >= 0))


def test_monotonicity_is_aix360s_check():
    fn = tiny_mlp(jax.random.key(32), (2, 2))
    x = testdata.uniform(jax.random.key(28), (6, 2, 2))
    maps = testdata.normal(jax.random.key(29), (6, 2, 2))
    got = jax.jit(F.monotonicity, static_argnums=0)(fn, x, 2, maps)
    expected = [_aix360_monotonicity(fn, x[i], 2, maps[i], np.zeros((2, 2))) for i in range(6)]
    np.testing.assert_array_equal(got, expected)
    assert 0 < np.sum(expected) < 6  # both outcomes are checked
    np.testing.assert_array_equal(F.monotonicity(fn, x, 2, maps, batch_size=4), got)


def test_monotonicity_of_a_linear_model_depends_on_the_contributions_after_the_first():
    # Logit sum_j w_j x_j against a zero class: every insertion after the first moves the
    # logit by its pixel's contribution w_j x_j, whatever the order of the map.
    x = np.ones((1, 2, 2, 1), np.float32)
    positive = linear_model([1.0, 2.0, 3.0, 4.0])
    one_negative = linear_model([-1.0, 2.0, 3.0, 4.0])
    two_negative = linear_model([-1.0, -2.0, 3.0, 4.0])
    contributions = np.asarray([[1.0, 2.0, 3.0, 4.0]]).reshape(x.shape)
    assert F.monotonicity(positive, x, 0, -contributions, probabilities=False)[0]
    # The only falling step is the first one, which the check leaves out...
    assert F.monotonicity(one_negative, x, 0, contributions, probabilities=False)[0]
    # ...unless the map ranks the negative pixel later.
    assert not F.monotonicity(one_negative, x, 0, -contributions, probabilities=False)[0]
    signed = np.asarray([-1.0, -2.0, 3.0, 4.0]).reshape(x.shape)
    assert not F.monotonicity(two_negative, x, 0, signed, probabilities=False)[0]


def test_monotonicity_correlation_of_a_linear_model_with_a_fixed_substrate():
    # Replacing pixel j by 0 moves the logit by w_j x_j, so v_j = (w_j x_j)^2 and |w x|
    # ranks the pixels exactly; -|w x| reverses the ranks.
    w = testdata.normal(jax.random.key(30), (4, 4, 1))
    x = testdata.uniform(jax.random.key(31), (2, 4, 4, 1))
    fn = linear_model(w)
    exact = x * w
    got = F.monotonicity_correlation(fn, x, 0, exact, None, substrate="zero", probabilities=False)
    np.testing.assert_allclose(got, 1.0, atol=1e-6)
    reversed_ = F.monotonicity_correlation(
        fn, x, 0, 1.0 / (np.abs(exact) + 1), None, substrate="zero", probabilities=False
    )
    np.testing.assert_allclose(reversed_, -1.0, atol=1e-6)


def test_monotonicity_correlation_follows_its_documented_groups_and_draws():
    fn = tiny_mlp(jax.random.key(32), (3, 3, 2))
    x = testdata.uniform(jax.random.key(33), (2, 3, 3, 2))
    maps = testdata.normal(jax.random.key(34), (2, 3, 3, 2))
    key = jax.random.key(35)
    got = F.monotonicity_correlation(fn, x, 1, maps, key, step=2, samples=3, batch_size=5)
    # Replacement s of group g of example i draws U(0, 1) from fold_in(fold_in(key, i),
    # g * samples + s); ceil(9 / 2) = 5 groups, the last of one pixel.
    draws = _uniform_draws(key, 2, 15, (3, 3, 2))
    probabilities = np.asarray(jax.nn.softmax(fn(x)))[:, 1]
    for i in range(2):
        relevance = np.abs(np.asarray(maps[i]).sum(-1).reshape(9))
        order = np.argsort(relevance, kind="stable")
        groups = [order[2 * g : 2 * g + 2] for g in range(5)]
        perturbed = np.repeat(np.asarray(x[i]).reshape(1, 9, 2), 15, axis=0)
        for g, pixels in enumerate(groups):
            for s in range(3):
                perturbed[g * 3 + s, pixels] = draws[i, g * 3 + s].reshape(9, 2)[pixels]
        p = np.asarray(jax.nn.softmax(fn(perturbed.reshape(15, 3, 3, 2))))[:, 1]
        moved = ((p - probabilities[i]) ** 2).reshape(5, 3).mean(1)
        sums = [relevance[pixels].sum() for pixels in groups]
        ranks = [np.argsort(np.argsort(v)) for v in (sums, moved)]
        np.testing.assert_allclose(got[i], np.corrcoef(*ranks)[0, 1], atol=1e-5)


def test_faithfulness_estimate_of_a_linear_model_is_one_with_a_zero_substrate():
    # Replacing a group by 0 drops the logit by the group's sum of w_j x_j: the groups'
    # relevance is their drop, whatever the grouping; the negated map gives -1.
    w = testdata.normal(jax.random.key(40), (4, 4, 2))
    x = testdata.uniform(jax.random.key(41), (2, 4, 4, 2))
    fn = linear_model(w)
    for step in (1, 3):
        got = F.faithfulness_estimate(fn, x, 0, x * w, step=step)
        np.testing.assert_allclose(got, 1.0, atol=1e-6)
        np.testing.assert_allclose(
            F.faithfulness_estimate(fn, x, 0, -x * w, step=step), -1.0, atol=1e-6
        )


def test_faithfulness_estimate_follows_its_documented_groups():
    fn = tiny_mlp(jax.random.key(42), (3, 3, 2))
    x = testdata.uniform(jax.random.key(43), (2, 3, 3, 2))
    maps = testdata.normal(jax.random.key(44), (2, 3, 3, 2))
    got = F.faithfulness_estimate(fn, x, 2, maps, step=2, batch_size=4)
    logits = np.asarray(fn(x))[:, 2]
    for i in range(2):
        relevance = np.asarray(maps[i]).sum(-1).reshape(9)
        order = np.argsort(-relevance, kind="stable")  # highest first
        groups = [order[2 * g : 2 * g + 2] for g in range(5)]  # the last of one pixel
        perturbed = np.repeat(np.asarray(x[i]).reshape(1, 9, 2), 5, axis=0)
        for g, pixels in enumerate(groups):
            perturbed[g, pixels] = 0.0
        drops = logits[i] - np.asarray(fn(perturbed.reshape(5, 3, 3, 2)))[:, 2]
        sums = [relevance[pixels].sum() for pixels in groups]
        np.testing.assert_allclose(got[i], np.corrcoef(sums, drops)[0, 1], atol=1e-5)


def test_non_sensitivity_of_a_linear_model_counts_the_mismatched_pixels():
    # A linear model depends on pixel j exactly when w_j x_j != 0 (replaced by 0, the
    # logit moves by w_j x_j): x * w is zero on exactly those pixels, the gradient w
    # is not zero where x is.
    w = np.asarray(testdata.normal(jax.random.key(45), (4, 4, 1)))
    w = np.sign(w) * (0.5 + np.abs(w))
    w.reshape(-1)[::3] = 0.0  # 6 pixels the model ignores
    x = np.asarray(testdata.uniform(jax.random.key(46), (2, 4, 4, 1))) + 0.5
    x[1].reshape(-1)[[1, 2, 4]] = 0.0  # black pixels with a nonzero weight
    fn = linear_model(w)
    gradient = np.broadcast_to(w, x.shape)

    def count(maps, **kwargs):
        return np.asarray(F.non_sensitivity(fn, x, 0, maps, probabilities=False, **kwargs))

    np.testing.assert_array_equal(count(x * w), [0, 0])
    np.testing.assert_array_equal(count(gradient), [0, 3])
    np.testing.assert_array_equal(count(np.ones_like(x)), [6, 9])
    # Relevance below eps times the map's largest counts as zero.
    np.testing.assert_array_equal(count(x * w + 1e-7), [0, 0])
    np.testing.assert_array_equal(count(x * w + 1e-7, eps=0.0), [6, 9])
    # Groups 0-4, 5-9, 10-14 and 15 in index order: zero when all their pixels are,
    # insensitive when the model ignores all of them (group 3, w_15 = 0; and in the
    # second image group 0 too, whose pixels have w = 0 or x = 0).
    np.testing.assert_array_equal(count(np.ones_like(x), step=5), [1, 2])
    np.testing.assert_array_equal(count(np.zeros_like(x), step=5), [3, 2])


def test_non_sensitivity_follows_its_documented_groups():
    fn = tiny_mlp(jax.random.key(47), (3, 3, 2))
    x = np.array(testdata.uniform(jax.random.key(48), (2, 3, 3, 2)))
    x[0, 0, :2] = 0.0  # two black pixels: the model cannot depend on them
    maps = np.array(testdata.normal(jax.random.key(49), (2, 3, 3, 2)))
    maps[:, 1] = 0.0  # a row of pixels without relevance
    maps[1, 2, 2] = [1e-3, -1e-3]  # cancels over the channels, but |a| does not
    got = np.asarray(F.non_sensitivity(fn, x, 1, maps, step=2, eps=1e-5, batch_size=3))
    probabilities = np.asarray(jax.nn.softmax(fn(x)))[:, 1]
    for i in range(2):
        relevance = np.abs(maps[i]).sum(-1).reshape(9)
        perturbed = np.repeat(x[i].reshape(1, 9, 2), 5, axis=0)
        for g in range(5):
            perturbed[g, 2 * g : 2 * g + 2] = 0.0
        moved = np.asarray(jax.nn.softmax(fn(perturbed.reshape(5, 3, 3, 2))))[:, 1]
        insensitive = np.abs(moved - probabilities[i]) <= 1e-5
        zero = [np.all(relevance[2 * g : 2 * g + 2] <= 1e-5 * relevance.max()) for g in range(5)]
        assert got[i] == np.sum(np.asarray(zero) != insensitive)
    assert got[0] >= 1  # the black pixels are a group the model ignores


def test_discrete_entropy_known_values():
    np.testing.assert_allclose(F.discrete_entropy(np.full((1, 5, 5), 3.0)), [0.0], atol=0)
    # 0..99 into 100 bins over [0, 99]: one value per bin.
    ramp = np.arange(100.0).reshape(1, 10, 10)
    np.testing.assert_allclose(F.discrete_entropy(ramp), [np.log(100)], rtol=1e-6)
    # 0..39 into 8 bins: 5 values each, in any order and under any affine map.
    values = np.random.default_rng(5).permutation(np.arange(40.0)).reshape(1, 40)
    for a in (values, -2.5 * values + 7.0):
        np.testing.assert_allclose(F.discrete_entropy(a, bins=8), [np.log(8)], rtol=1e-6)
    # By hand: 0, 0, 0, 1 into 2 bins -> p = 3/4, 1/4.
    np.testing.assert_allclose(
        F.discrete_entropy(np.array([[0.0, 0.0, 0.0, 1.0]]), bins=2),
        [-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))],
        rtol=1e-6,
    )
    from scipy import stats

    maps = np.random.default_rng(6).normal(size=(3, 10, 10, 3)).astype(np.float32)
    for bins in (10, 100):
        want = [stats.entropy(np.histogram(m, bins=bins)[0]) for m in maps]
        np.testing.assert_allclose(F.discrete_entropy(maps, bins=bins), want, rtol=1e-5)
    with pytest.raises(ValueError, match="bins"):
        F.discrete_entropy(maps, bins=0)


@testdata.jit(static_argnums=(1, 2, 3))
def _uniform_draws(key, examples, samples, shape):
    def draw(i, s):
        return jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, i), s), shape)

    return jax.vmap(lambda i: jax.vmap(lambda s: draw(i, s))(jnp.arange(samples)))(
        jnp.arange(examples)
    )


jit_selectivity = jax.jit(
    F.selectivity,
    static_argnums=0,
    static_argnames=("patch_size", "substrate", "probabilities", "batch_size"),
)


def test_selectivity_of_one_pixel_patches_is_the_deletion_curve():
    fn = tiny_mlp(jax.random.key(36), (4, 4, 2))
    x = testdata.uniform(jax.random.key(37), (2, 4, 4, 2))
    maps = testdata.normal(jax.random.key(38), (2, 4, 4))
    np.testing.assert_allclose(
        jit_selectivity(fn, x, 1, maps, patch_size=1),
        jit_deletion_curve(fn, x, 1, maps, step=1),
        atol=1e-6,
    )


def test_selectivity_removes_whole_patches_by_their_summed_relevance():
    # Logit w.x on a 5 x 5 image in 3 x 3 patches (the edge patches 3 x 2, 2 x 3, 2 x 2):
    # each removal lowers the logit by its patch's contribution, in the order of the
    # map's patch sums, whatever the map does inside a patch.
    w = testdata.normal(jax.random.key(39), (5, 5, 1))
    x = testdata.uniform(jax.random.key(40), (1, 5, 5, 1))
    contribution = np.asarray(x * w)[0, ..., 0]
    patches = [(slice(0, 3), slice(0, 3)), (slice(0, 3), slice(3, 5))]
    patches += [(slice(3, 5), slice(0, 3)), (slice(3, 5), slice(3, 5))]
    # Sums remove patch 2, 0, 3, then 1; the means (sizes 9, 6, 6, 4) would put 3
    # before 0.
    ranking = np.asarray([2.0, -1.0, 5.0, 1.5])
    maps = np.zeros((5, 5), np.float32)
    for value, (rows, cols) in zip(ranking, patches):
        block = maps[rows, cols]
        block[...] = np.linspace(-1, 1, block.size).reshape(block.shape)
        block.flat[0] += value  # the patch sums to `value`
    fn = linear_model(w, bias=1.0)
    got = jit_selectivity(fn, x, 0, maps[None], patch_size=3, probabilities=False)
    start = float(fn(x)[0, 0])
    drops = np.cumsum([contribution[patches[p]].sum() for p in (2, 0, 3, 1)])
    np.testing.assert_allclose(got[0], np.concatenate([[start], start - drops]), atol=1e-5)


def test_irof_is_nan_where_the_clean_score_is_not_positive():
    # The logit of a linear model with bias -30 is negative: q = f(x_k) / f(x) would
    # flip the curve, so the example has no IROF.
    w = np.ones((2, 2, 1), np.float32)
    x = np.ones((1, 2, 2, 1), np.float32)
    segments = np.asarray([[0, 1], [1, 1]])
    logit = F.irof(linear_model(w, bias=-30.0), x, 0, x, segments, probabilities=False)
    assert np.isnan(logit[0])
    # With bias 0: both segments have mean 1, so the lower label, the one-pixel
    # segment, goes first and leaves 3/4, then 0: 1 - (1 + 2 * 0.75 + 0) / 4.
    got = F.irof(linear_model(w), x, 0, x, segments, substrate="zero", probabilities=False)
    np.testing.assert_allclose(got[0], 1.0 - (1.0 + 2 * 0.75 + 0.0) / 4, atol=1e-6)


def _irof_reference(fn, x, target, relevance, segments):
    """IROF recomputed in NumPy for one image: mean relevance per segment, segments
    replaced by each channel's mean, descending (stable), 1 - trapezoid AUC of the
    probability over the clean one."""
    x = np.asarray(x)
    labels = np.asarray(segments)
    count = labels.max() + 1
    means = [relevance[labels == s].mean() for s in range(count)]
    fill = x.mean((0, 1))
    current, scores = x.copy(), []
    for s in [None, *np.argsort(-np.asarray(means), kind="stable")]:
        if s is not None:
            current[labels == s] = fill
        scores.append(float(jax.nn.softmax(fn(current[None]))[0, target]))
    q = np.asarray(scores) / scores[0]
    return 1.0 - (q.sum() - 0.5 * (q[0] + q[-1])) / count


def test_irof_is_the_area_over_the_normalised_segment_curve():
    fn = tiny_mlp(jax.random.key(41), (4, 4, 3))
    x = testdata.uniform(jax.random.key(42), (2, 4, 4, 3))
    maps = testdata.normal(jax.random.key(43), (2, 4, 4, 3))
    # Example 0 in 3 segments, example 1 in 5: each gets its own abscissa.
    segments = np.zeros((2, 4, 4), np.int32)
    segments[0, :, 2:] = 1
    segments[0, 3] = 2
    segments[1] = np.arange(16).reshape(4, 4) % 5
    segments[1, :, :2] = 0  # segment 0 covers 10 pixels, 1-4 two or fewer each
    # Example 1's map is constant on each segment: segment 0's mean (0.3) is below
    # segment 3's (0.5) while its sum (3.0) is the largest, so ranking by sums would
    # remove it first and by means does not.
    per_segment = np.asarray([0.3, -0.2, 0.1, 0.5, 0.2], np.float32)
    maps = maps.at[1].set(jnp.broadcast_to(per_segment[segments[1]][..., None] / 3, (4, 4, 3)))
    # Segments are concrete (their label counts set the curve's length): under jit they
    # come from the closure.
    got = jax.jit(lambda x, maps: F.irof(fn, x, 0, maps, segments, batch_size=7))(x, maps)
    relevance = np.asarray(maps).sum(-1)
    for i in range(2):
        expected = _irof_reference(fn, x[i], 0, relevance[i], segments[i])
        np.testing.assert_allclose(got[i], expected, atol=1e-5)


def test_road_removes_in_order_and_fills_from_the_neighbours():
    # The model reads one pixel (its logit is 10 x[p]); x is 1 there and 0 elsewhere,
    # and the map ranks p first. Removing p (MoRF) fills it from its zero neighbours, so
    # the logit falls to 0 at once; LeRF keeps p until the very end.
    p = (2, 3)
    w = np.zeros((6, 6, 1))
    w[p] = 10.0
    fn = linear_model(w)
    x = np.zeros((1, 6, 6, 1), np.float32)
    x[0, p[0], p[1]] = 1.0
    maps = jnp.asarray(x)
    key = jax.random.key(0)
    kw = dict(fractions=(0.0, 0.5, 0.95), noise=0.0, score="logit")
    np.testing.assert_allclose(jit_road(fn, x, 0, maps, key, **kw), [[10.0, 0.0, 0.0]], atol=1e-5)
    lerf = jit_road(fn, x, 0, maps, key, order="lerf", **kw)
    np.testing.assert_allclose(lerf, [[10.0, 10.0, 10.0]], atol=1e-5)
    # A constant image is its own imputation: no removal changes the output (noise 0).
    flat = np.full((2, 6, 6, 1), 0.4, np.float32)
    mlp = tiny_mlp(jax.random.key(1), (6, 6, 1))
    curve = jit_road(mlp, flat, 2, testdata.normal(key, flat.shape), key, noise=0.0)
    np.testing.assert_allclose(curve, jax.nn.softmax(mlp(flat))[:, 2:3] * np.ones(9), atol=1e-5)


def test_road_orders_tied_pixels_at_random():
    # The top half of the image is 1, the bottom half 0, and the model sums the top
    # half. A map that is 0 everywhere ties every pixel: in index order, removing half
    # of them would take exactly the top half, filled from the zeros below (logit 0);
    # in a random order the removed pixels are scattered, and the kept ones around
    # them fill them with values near 1.
    w = np.zeros((8, 8, 1))
    w[:4] = 1.0
    x = np.zeros((1, 8, 8, 1), np.float32)
    x[0, :4] = 1.0
    kw = dict(fractions=(0.5,), noise=0.0, score="logit")
    logit = jit_road(linear_model(w), x, 0, np.zeros_like(x), jax.random.key(0), **kw)
    assert 0.3 * 32 < float(logit[0, 0]) < 32


def test_road_scores_noise_and_batch_size():
    fn = tiny_mlp(jax.random.key(18), (6, 6, 1))
    x = testdata.uniform(jax.random.key(19), (3, 6, 6, 1))
    maps = testdata.normal(jax.random.key(20), x.shape)
    top = jnp.argmax(fn(x), axis=1)
    key = jax.random.key(21)
    kw = dict(fractions=(0.2, 0.6))
    probability = jit_road(fn, x, top, maps, key, **kw)
    correct = jit_road(fn, x, top, maps, key, score="correct", **kw)
    assert probability.shape == correct.shape == (3, 2)
    assert set(np.unique(correct)) <= {0.0, 1.0}
    # Both scores come from the same imputed images (the same keys).
    assert np.all(correct[probability > 0.5] == 1.0)
    np.testing.assert_allclose(
        jit_road(fn, x, top, maps, key, batch_size=4, **kw), probability, atol=1e-6
    )
    # Example i at fraction j: floor(f P) pixels of highest relevance (no ties here)
    # filled with noise from fold_in(split(fold_in(key, i))[1], j); another key, other
    # noise.
    i, j = 1, 1
    removed = np.zeros(36, bool)
    removed[np.argsort(-np.asarray(maps[i]).reshape(36), kind="stable")[:21]] = True
    imputed = jax.jit(noisy_linear_imputation)(
        x[i : i + 1],
        removed.reshape(1, 6, 6),
        jax.random.fold_in(jax.random.split(jax.random.fold_in(key, i))[1], j)[None],
    )
    expected = jax.nn.softmax(fn(imputed))[0, top[i]]
    np.testing.assert_allclose(probability[i, j], expected, atol=1e-5)
    assert not np.allclose(jit_road(fn, x, top, maps, jax.random.key(22), **kw), probability)


def test_sparseness_known_values():
    n = 10
    uniform = np.full((1, n), 3.0)
    one_hot = np.zeros((1, 2, 5))
    one_hot[0, 1, 2] = -4.0  # sign ignored
    np.testing.assert_allclose(F.sparseness(uniform), [0.0], atol=1e-6)
    np.testing.assert_allclose(F.sparseness(one_hot), [(n - 1) / n], atol=1e-6)
    np.testing.assert_array_equal(F.sparseness(np.zeros((2, 3, 3))), [0.0, 0.0])
    # By hand: sorted |a| = 0, 1, 1, 2; weights 2i - n - 1 = -3, -1, 1, 3 -> (0 - 1 + 1 + 6) / (4 * 4).
    a = np.array([[1.0, -2.0, 0.0, 1.0]])
    np.testing.assert_allclose(F.sparseness(a), [6 / 16], atol=1e-6)
    b = np.random.default_rng(4).normal(size=(3, 4, 4, 2))
    np.testing.assert_allclose(F.sparseness(b * 123.0), F.sparseness(b), atol=1e-6)
    assert F.sparseness(b).shape == (3,)


def test_complexity_known_values():
    n = 12
    one_hot = np.zeros((1, 3, 4))
    one_hot[0, 2, 1] = -5.0
    uniform = np.full((1, 3, 4), 0.25)
    np.testing.assert_allclose(F.complexity(one_hot), [0.0], atol=1e-6)
    assert not np.signbit(np.asarray(F.complexity(one_hot))).any()  # 0.0, not -0.0
    np.testing.assert_allclose(F.complexity(uniform), [np.log(n)], rtol=1e-6)
    np.testing.assert_allclose(F.complexity(np.zeros((1, 3, 4))), [np.log(n)], rtol=1e-6)
    # By hand: |a| = 1, 1, 2 -> p = 1/4, 1/4, 1/2 -> entropy 1.5 ln 2; scale-free.
    a = np.array([[1.0, -1.0, 2.0, 0.0]])
    np.testing.assert_allclose(F.complexity(a), [1.5 * np.log(2)], rtol=1e-6)
    np.testing.assert_allclose(F.complexity(7 * a), F.complexity(a), rtol=1e-6)
    np.testing.assert_array_equal(F.effective_complexity(a), [3])
    np.testing.assert_array_equal(F.effective_complexity(a, eps=1.5), [1])
    with pytest.raises(ValueError, match="eps"):
        F.effective_complexity(a, eps=-1.0)


def test_bad_inputs_raise():
    fn = linear_model(np.ones(4))
    x = np.ones((2, 2, 2, 1), np.float32)
    with pytest.raises(ValueError, match=r"\(2, 3, 2, 1\).*\(2, 2, 2, 1\)"):
        F.deletion_curve(fn, x, 0, np.ones((2, 3, 2, 1)))
    for name in ("noise", "blur"):
        with pytest.raises(ValueError, match=f"substrate '{name}'.*'rise_blur'.*'gaussian'"):
            F.deletion_curve(fn, x, 0, np.ones_like(x), substrate=name)
    with pytest.raises(ValueError, match="order"):
        F.pixel_flipping(fn, x, 0, np.ones_like(x), order="random")
    for step in (0, 1.5, True, "a"):
        with pytest.raises(ValueError, match="step"):
            F.deletion_curve(fn, x, 0, np.ones_like(x), step=step)
    with pytest.raises(ValueError, match="images"):
        F.insertion_curve(linear_model(np.ones(3)), np.ones((2, 3)), 0, np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        F.deletion_curve(fn, x, 0, np.full_like(x, np.nan))
    # (N, C, H, W) read as (N, H, W, C) would remove whole rows of one channel per "pixel".
    first = np.ones((2, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"x of shape \(2, 3, 8, 8\) looks channels-first"):
        F.deletion_curve(linear_model(np.ones(192)), first, 0, first)
    with pytest.raises(ValueError, match="2 points"):
        F.auc(np.ones((3, 1)))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="subset_size.*leave some pixels out"):
        F.faithfulness_correlation(fn, x, 0, np.ones_like(x), key, subset_size=4)
    with pytest.raises(ValueError, match="subset_size must be"):
        F.faithfulness_correlation(fn, x, 0, np.ones_like(x), key, subset_size=0)
    with pytest.raises(ValueError, match="fractions"):
        F.road(fn, x, 0, np.ones_like(x), key, fractions=(0.5, 1.5))
    with pytest.raises(ValueError, match="score"):
        F.road(fn, x, 0, np.ones_like(x), key, score="accuracy")
    with pytest.raises(ValueError, match="order"):
        F.road(fn, x, 0, np.ones_like(x), key, order="random")
    with pytest.raises(ValueError, match="images"):
        F.road(linear_model(np.ones(3)), np.ones((2, 3)), 0, np.ones((2, 3)), key)
    with pytest.raises(ValueError, match="pass key="):
        F.road(fn, x, 0, np.ones_like(x), None)
    with pytest.raises(ValueError, match="pass key="):
        F.faithfulness_correlation(fn, x, 0, np.ones_like(x), None)
    with pytest.raises(ValueError, match="samples must be an integer >= 2"):
        F.faithfulness_correlation(fn, x, 0, np.ones_like(x), key, samples=1)
    with pytest.raises(ValueError, match="static"):
        jax.jit(lambda f: F.road(fn, x, 0, np.ones_like(x), key, fractions=(f,)))(0.5)
    with pytest.raises(ValueError, match="sizes 4 gives 4 of 4 pixels"):
        F.sensitivity_n(fn, x, 0, np.ones_like(x), key, sizes=(1, 4))
    with pytest.raises(ValueError, match="at least one subset size"):
        F.sensitivity_n(fn, x, 0, np.ones_like(x), key, sizes=())
    with pytest.raises(ValueError, match="a fixed substrate is replaced once"):
        F.monotonicity_correlation(fn, x, 0, np.ones_like(x), key, substrate="zero", samples=5)
    with pytest.raises(ValueError, match="pass key="):
        F.monotonicity_correlation(fn, x, 0, np.ones_like(x), None)
    with pytest.raises(ValueError, match="inserts every pixel in one step"):
        F.monotonicity(fn, x, 0, np.ones_like(x), step=1.0)
    with pytest.raises(ValueError, match="into 2 group.*at least 3"):
        F.monotonicity_correlation(fn, x, 0, np.ones_like(x), key, step=2)
    with pytest.raises(ValueError, match="static"):
        jax.jit(lambda n: F.sensitivity_n(fn, x, 0, np.ones_like(x), key, sizes=n))(np.array([1]))
    with pytest.raises(ValueError, match="every label 0 .. 2"):
        F.irof(fn, x, 0, np.ones_like(x), np.array([[0, 0], [2, 2]]))
    with pytest.raises(ValueError, match="one segment"):
        F.irof(fn, x, 0, np.ones_like(x), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="integer labels"):
        F.irof(fn, x, 0, np.ones_like(x), np.asarray([[0.0, 1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="integer labels"):
        F.irof(fn, x, 0, np.ones_like(x), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="labels >= 0"):
        F.irof(fn, x, 0, np.ones_like(x), np.asarray([[0, -1], [1, 0]]))
    with pytest.raises(ValueError, match="one patch"):
        F.selectivity(fn, x, 0, np.ones_like(x), patch_size=2)
    with pytest.raises(ValueError, match="images"):
        F.selectivity(linear_model(np.ones(3)), np.ones((2, 3)), 0, np.ones((2, 3)))
    with pytest.raises(ValueError, match="uniform_range"):
        F.monotonicity_correlation(fn, x, 0, np.ones_like(x), key, uniform_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="into 2 group.*at least 3"):
        F.faithfulness_estimate(fn, x, 0, np.ones_like(x), step=2)
    for eps in (-1.0, float("nan"), "small"):
        with pytest.raises(ValueError, match="eps must be"):
            F.non_sensitivity(fn, x, 0, np.ones_like(x), eps=eps)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_confidence_on_the_explanation_masked_input_of_a_linear_model():
    """Class 0 of the linear model has p_0 = sigmoid(x . w + b): with E the min-max scaled
    map, Y = sigmoid(x . w + b) and O = sigmoid((x * E) . w + b), computed in float64."""
    x = testdata.uniform(jax.random.key(40), (4, 3, 3, 2))
    w = testdata.normal(jax.random.key(41), (3, 3, 2))
    relevance = testdata.normal(jax.random.key(42), (4, 3, 3))
    fn = linear_model(w, bias=0.3)
    x64, w64, r64 = (np.asarray(a, np.float64) for a in (x, w, relevance))
    flat = r64.reshape(4, -1)
    low, high = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    mask = ((flat - low) / (high - low)).reshape(4, 3, 3, 1)
    y = _sigmoid((x64 * w64).reshape(4, -1).sum(1) + 0.3)
    o = _sigmoid((x64 * mask * w64).reshape(4, -1).sum(1) + 0.3)
    expected = {
        "average_drop": np.maximum(y - o, 0) / y,
        "increase_in_confidence": (o > y).astype(float),
        "average_gain": np.maximum(o - y, 0) / (1 - y),
    }
    assert 0 < expected["increase_in_confidence"].sum() < 4  # both branches are exercised
    for name, want in expected.items():
        metric = getattr(F, name)
        got = metric(fn, x, 0, relevance)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=name)
        # Min-max scaling: a positive affine change of the map changes nothing, a map
        # per feature is summed over channels, and chunking changes nothing.
        per_feature = jnp.repeat(relevance[..., None], 2, axis=-1) * 1.5 + 7.0
        np.testing.assert_allclose(metric(fn, x, 0, per_feature, batch_size=3), got, rtol=1e-5)


def test_adcc_of_input_times_gradient_on_a_linear_model():
    """Input x gradient of class 0 of the linear model is ``x * w``, so the map of the
    masked input ``x * E`` is ``E`` times the map of ``x``, pixel by pixel: coherency is
    ``(corr(A, E A) + 1) / 2``, complexity the mean of ``E``, the drop the float64
    sigmoids', and ADCC their harmonic mean, all in NumPy."""
    x = testdata.uniform(jax.random.key(44), (5, 4, 4, 2)) - 0.3
    w = testdata.normal(jax.random.key(45), (4, 4, 2))
    fn = linear_model(w, bias=0.2)
    calls = []

    def explain(inputs, target, keys):
        calls.append(keys.shape)
        return inputs * w

    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    a = (x64 * w64).sum(-1).reshape(5, -1)
    e = (a - a.min(1, keepdims=True)) / (a.max(1, keepdims=True) - a.min(1, keepdims=True))
    r = np.array([np.corrcoef(a_i, e_i * a_i)[0, 1] for a_i, e_i in zip(a, e)])
    y = _sigmoid((x64 * w64).reshape(5, -1).sum(1) + 0.2)
    o = _sigmoid((x64 * e.reshape(5, 4, 4, 1) * w64).reshape(5, -1).sum(1) + 0.2)
    drop = np.maximum(y - o, 0) / y
    parts = np.stack([(r + 1) / 2, 1 - e.mean(1), 1 - drop])
    expected = 3 / (1 / parts).sum(0)
    key = jax.random.key(0)
    got = F.adcc(explain, x, 0, key, fn=fn, batch_size=2)
    np.testing.assert_allclose(got.coherency, (r + 1) / 2, rtol=1e-5)
    np.testing.assert_allclose(got.complexity, e.mean(1), rtol=1e-5)
    np.testing.assert_allclose(got.average_drop, drop, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.adcc, expected, rtol=1e-5)
    assert calls and all(shape == (2,) for shape in calls)  # one key per example, chunked
    # Given maps skip the first explanation; target None is the predicted class (0 here
    # wherever the score is positive) and needs the model.
    maps = x * w
    again = F.coherency(explain, x, 0, key, attributions=maps)
    np.testing.assert_allclose(again, got.coherency, rtol=1e-6)
    # target=None is the predicted class: an explainer whose map depends on the class
    # (class 1 scores the negative sum here) shows which one it got.
    # A bias between two of the scores makes both classes predicted.
    scores = (x64 * w64).reshape(5, -1).sum(1)
    bias = -np.sort(scores)[1:3].mean()
    split = linear_model(w, bias=float(bias))
    predicted = np.where(scores + bias > 0, 0, 1)
    assert 0 < predicted.sum() < 5
    by_class = lambda inputs, t, k: jnp.where(t == 0, 1.0, -1.0)[:, None, None, None] * inputs * w
    got = F.coherency(by_class, x, None, key, fn=split)
    np.testing.assert_allclose(got, F.coherency(by_class, x, predicted, key), rtol=1e-6)
    assert not np.allclose(got, F.coherency(by_class, x, 0, key))
    with pytest.raises(ValueError, match="coherency needs explicit targets or fn="):
        F.coherency(explain, x, None, key)


def test_adcc_at_its_ends():
    """A map that stays itself under its own mask is fully coherent; one that turns into
    its negative has coherency 0, and so has a constant map; either gives ADCC 0."""
    x = testdata.uniform(jax.random.key(46), (3, 4, 4, 1))
    fn = linear_model(jnp.ones((4, 4, 1)))
    pattern = testdata.normal(jax.random.key(47), (3, 4, 4, 1))
    key = jax.random.key(1)

    def fixed(inputs, target, keys):
        return jnp.broadcast_to(pattern[: inputs.shape[0]], inputs.shape)

    def flipped(inputs, target, keys):  # the pattern on x, its negative on x * E
        return jnp.where(jnp.allclose(inputs, x), 1.0, -1.0) * pattern

    np.testing.assert_allclose(F.coherency(fixed, x, 0, key), 1.0, rtol=1e-6)
    result = F.adcc(flipped, x, 0, key, fn=fn)
    np.testing.assert_allclose(result.coherency, 0.0, atol=1e-6)
    np.testing.assert_allclose(result.adcc, 0.0, atol=1e-5)
    constant = F.adcc(lambda inputs, t, k: jnp.ones_like(inputs), x, 0, key, fn=fn)
    np.testing.assert_array_equal(constant.coherency, 0.0)
    np.testing.assert_array_equal(constant.adcc, 0.0)
    with pytest.raises(ValueError, match="adcc: scale must be one of"):
        F.adcc(fixed, x, 0, key, fn=fn, scale="max")

    # A class the model lacks is refused before anything is explained; a map that is
    # not a mask under scale='none' once it is known.
    def never(inputs, t, k):
        raise AssertionError("explained")

    with pytest.raises(ValueError, match="target out of range"):
        F.adcc(never, x, 5, key, fn=fn)
    with pytest.raises(ValueError, match=r"scale='none' the maps must lie in \[0, 1\]"):
        F.adcc(fixed, x, 0, key, fn=fn, scale="none")
    np.testing.assert_array_equal(
        F.adcc(
            fixed, x, 0, key, fn=fn, scale="none", attributions=jnp.full(x.shape, 0.5)
        ).complexity,
        0.5,
    )
    # A CAM explainer's one-channel maps fit colour images, here and in the drop.
    rgb = jnp.repeat(x, 3, axis=-1)
    rgb_fn = linear_model(jnp.ones((4, 4, 3)))
    one_channel = pattern[..., :1]
    np.testing.assert_allclose(
        F.average_drop(rgb_fn, rgb, 0, one_channel),
        F.average_drop(rgb_fn, rgb, 0, one_channel[..., 0]),
    )
    with pytest.raises(ValueError, match="explain must return maps"):
        F.coherency(lambda inputs, t, k: inputs[:1], x, 0, key)


def test_arcc_is_the_harmonic_mean_of_coherency_complexity_and_the_road_gap():
    """ARCC's parts from the library's own coherency and ROAD (keys ``fold_in(key_i,
    1)``), combined in NumPy; a map that ranks the pixels backwards has a negative gap,
    clipped to 0, and an ARCC of 0."""
    x = testdata.uniform(jax.random.key(48), (4, 6, 6, 1))
    w = testdata.normal(jax.random.key(49), (6, 6, 1))
    fn = linear_model(w, bias=0.1)
    key = jax.random.key(3)
    fractions = (0.25, 0.5)
    road_keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(key, i), 1) for i in range(4)])

    def parts(x, sign):
        explain = lambda inputs, t, k: sign * inputs * w
        scaled = minmax_per_example((sign * x * w)[..., 0])
        curves = [
            F.road(fn, x, 0, scaled, road_keys, order=o, fractions=fractions)
            for o in ("lerf", "morf")
        ]
        got = F.arcc(explain, x, 0, key, fn=fn, fractions=fractions, batch_size=3)
        return got, F.coherency(explain, x, 0, key), scaled, curves

    run = jax.jit(parts)  # one program for both signs
    for sign in (1.0, -1.0):
        got, coherent, scaled, (lerf, morf) = run(x, jnp.float32(sign))
        e = np.asarray(scaled, np.float64).reshape(4, -1)
        gap = np.clip(np.asarray(lerf - morf, np.float64).mean(1), 0, 1)
        np.testing.assert_allclose(got.road, gap, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.coherency, coherent, rtol=1e-6)
        np.testing.assert_allclose(got.complexity, e.mean(1), rtol=1e-5)
        combined = np.stack([np.asarray(coherent), 1 - e.mean(1), gap])
        safe = np.maximum(combined, 1e-30)
        expected = np.where((combined > 0).all(0), 3 / (1 / safe).sum(0), 0)
        np.testing.assert_allclose(got.arcc, expected, rtol=1e-5, atol=1e-7)
        if sign > 0:
            assert (gap > 0).all()
        else:  # backwards: the least relevant by the map are the most by the model
            assert (np.asarray(lerf - morf).mean(1) < 0).all()
            np.testing.assert_array_equal(got.arcc, 0.0)
    with pytest.raises(ValueError, match=r"arcc needs images \(N, H, W, C\)"):
        F.arcc(lambda i, t, k: i, jnp.ones((2, 36)), 0, key, fn=fn)


def minmax_per_example(maps):
    """Each map scaled to [0, 1] over its pixels (in float32, as the library does)."""
    flat = maps.reshape(maps.shape[0], -1)
    low, high = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    return ((flat - low) / (high - low)).reshape(maps.shape)


def test_confidence_metrics_at_their_ends():
    """A map of ones keeps the input (no drop, no gain, no increase); a constant map is
    scaled to 0 and leaves sigmoid(b); a target already at probability 1 has no room to
    gain, and one at 0 nothing to drop."""
    x = testdata.uniform(jax.random.key(43), (2, 2, 2, 1))
    fn = linear_model(jnp.ones((2, 2, 1)), bias=-1.0)
    ones = jnp.ones((2, 2, 2))
    for name in ("average_drop", "increase_in_confidence", "average_gain"):
        np.testing.assert_array_equal(getattr(F, name)(fn, x, 0, ones, scale="none"), 0.0)
    y = _sigmoid(np.asarray(x, np.float64).reshape(2, -1).sum(1) - 1.0)
    np.testing.assert_allclose(
        F.average_drop(fn, x, 0, ones), np.maximum(y - _sigmoid(-1.0), 0) / y, rtol=1e-5
    )
    saturated = linear_model(jnp.ones((2, 2, 1)), bias=200.0)  # p_0 = 1, p_1 = 0 in float32
    zeros = jnp.zeros((2, 2, 2))
    np.testing.assert_array_equal(F.average_gain(saturated, x, 0, zeros, scale="none"), 0.0)
    np.testing.assert_array_equal(F.average_drop(saturated, x, 1, zeros, scale="none"), 0.0)
    with pytest.raises(
        ValueError, match=r"average_drop: scale must be one of \('minmax', 'none'\)"
    ):
        F.average_drop(fn, x, 0, ones, scale="max")
    with pytest.raises(ValueError, match="do not fit images"):
        F.average_gain(fn, x, 0, jnp.ones((2, 3, 3)))
    # With scale='none' the map is the mask: one outside [0, 1] would score best.
    for name in ("average_drop", "increase_in_confidence", "average_gain"):
        with pytest.raises(ValueError, match=rf"^{name}: with scale='none' the maps must lie in"):
            getattr(F, name)(fn, x, 0, 5.0 * ones, scale="none")


def test_a_model_with_one_output_is_refused_where_its_probability_or_top_class_is_read():
    """softmax of one logit is 1 and its argmax 0 for every input: the probability
    metrics would be constants (deletion AUC 1, Average Drop 0). Refused, naming the way
    out; the logit itself is still scored where the metric offers it."""
    w = jnp.arange(1.0, 17.0).reshape(4, 4, 1)
    x = jnp.ones((2, 4, 4, 1))

    def fn(x):
        return (x.reshape(x.shape[0], -1) @ w.reshape(-1))[:, None]

    maps = x * w
    message = r"fn returns one output per example \(a single column\), so the softmax"
    with pytest.raises(ValueError, match=message + r".*\[0, z\].*probabilities=False"):
        F.deletion_curve(fn, x, 0, maps)
    with pytest.raises(ValueError, match=r"one output.*score='logit'"):
        F.road(fn, x, 0, maps, jax.random.key(0), score="correct")
    with pytest.raises(ValueError, match=r"one output per example(?!.*probabilities=False)"):
        F.average_drop(fn, x, 0, maps)
    # The logit: removing the 16 pixels in order of weight takes 136, 120, ..., 16, 0.
    curve = F.deletion_curve(fn, x, 0, maps, probabilities=False, step=1)
    np.testing.assert_allclose(
        curve[0], 136 - np.concatenate([[0], np.cumsum(np.arange(16, 0, -1))])
    )


@pytest.mark.parametrize(
    "metric",
    [
        lambda m: F.sparseness(m),
        lambda m: F.complexity(m),
        lambda m: F.effective_complexity(m),
        lambda m: F.discrete_entropy(m),
        lambda m: evaluation.pointing_game(m, np.zeros(m.shape[:3], bool)),
        lambda m: evaluation.localisation_auc(m, np.zeros(m.shape[:3], bool)),
        lambda m: evaluation.topk_overlap(m, m),
        lambda m: evaluation.correlation_matrix({"a": m, "b": m}),
        lambda m: evaluation.entropy_rise(m, m),
    ],
)
def test_an_empty_batch_of_maps_is_one_value_error(metric):
    with pytest.raises(ValueError, match=r"holds no examples \(shape \(0, 4, 4"):
        metric(jnp.zeros((0, 4, 4, 1)))
