"""Infidelity and max-sensitivity (Yeh et al. 2019), the local Lipschitz estimate and
relative stability (Agarwal et al. 2022) with known answers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax.attribution.registry import explainer
from fmi_jax.evaluation.robustness import (
    avg_sensitivity,
    infidelity,
    local_lipschitz,
    max_sensitivity,
    relative_input_stability,
    relative_output_stability,
    relative_representation_stability,
)
from tests import testdata

N, SHAPE, CLASSES = 4, (2, 3), 3
D = int(np.prod(SHAPE))

# The known-answer tests run each metric as one jitted program (the module docstring of
# fmi_jax.evaluation.robustness: "the metrics can also be wrapped in jax.jit whole")
# instead of a few dozen eagerly compiled operations; the eager path keeps its own
# tests below (target=None, custom perturbations, refused inputs).
jit_infidelity = jax.jit(
    infidelity,
    static_argnums=0,
    static_argnames=("perturbation", "stdev", "samples", "normalize", "batch_size"),
)
jit_max_sensitivity = jax.jit(
    max_sensitivity,
    static_argnums=0,
    static_argnames=(
        "radius",
        "samples",
        "norm_ord",
        "fn",
        "independent_explain_keys",
        "batch_size",
    ),
)


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(D, CLASSES)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(CLASSES,)), jnp.float32)
    x = jnp.asarray(rng.uniform(0.5, 1.5, size=(N,) + SHAPE), jnp.float32)
    target = jnp.array([0, 1, 2, 1], jnp.int32)

    def fn(inputs):
        return inputs.reshape(inputs.shape[0], -1) @ w + b

    # The gradient of the target logit, w[:, t], per example, shaped like x.
    grad = w.T[target].reshape(x.shape)
    return fn, x, target, grad


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(1)
    w1 = jnp.asarray(rng.normal(size=(D, 8)), jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(8, CLASSES)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(N,) + SHAPE), jnp.float32)

    def fn(inputs):
        return jnp.tanh(inputs.reshape(inputs.shape[0], -1) @ w1) @ w2

    return fn, x, jnp.array([2, 0, 1, 0], jnp.int32)


def pair_keys(key, samples):
    """keys[i, s] = fold_in(fold_in(key, i), s), the library's per-(example, sample) key."""
    return jax.vmap(
        lambda i: jax.vmap(lambda s: jax.random.fold_in(jax.random.fold_in(key, i), s))(
            jnp.arange(samples)
        )
    )(jnp.arange(N))


@testdata.jit(static_argnums=1)
def _standard_normal_noise(key, samples):
    normal = jax.vmap(jax.vmap(lambda k: jax.random.normal(k, SHAPE, jnp.float32)))
    return normal(pair_keys(key, samples))


def gaussian_noise(key, samples, stdev):
    """I[i, s] exactly as infidelity draws it."""
    return stdev * np.asarray(_standard_normal_noise(key, samples))


@testdata.jit(static_argnums=(1, 2, 3))
def _uniform_noise(key, samples, minval, maxval):
    noise_keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i))[0])(jnp.arange(N))
    keys = jax.vmap(lambda k: jax.vmap(lambda s: jax.random.fold_in(k, s))(jnp.arange(samples)))(
        noise_keys
    )
    uniform = jax.vmap(
        jax.vmap(lambda k: jax.random.uniform(k, SHAPE, jnp.float32, minval, maxval))
    )
    return uniform(keys)


def uniform_noise(key, samples, radius):
    """delta[i, s] as max_sensitivity draws it: noise keys are split(fold_in(key, i))[0]."""
    return np.asarray(_uniform_noise(key, samples, -radius, radius))


def test_infidelity_of_the_gradient_of_a_linear_model_is_zero(linear):
    fn, x, target, grad = linear
    key = jax.random.key(0)
    wrong = jit_infidelity(fn, x, target, jnp.zeros_like(x), key, stdev=0.1)
    exact = jit_infidelity(fn, x, target, grad, key, stdev=0.1)
    assert exact.shape == (N,)
    assert np.all(np.asarray(wrong) > 1e-3)
    np.testing.assert_allclose(exact, 0.0, atol=1e-6 * float(wrong.min()))
    # normalize=True: beta = 1 for exact attributions, and any rescaling is undone.
    for scale in (1.0, -2.5):
        normed = jit_infidelity(fn, x, target, scale * grad, key, stdev=0.1, normalize=True)
        # (the expansion beta^2 sum a^2 - 2 beta sum ab + sum b^2 cancels to rounding)
        np.testing.assert_allclose(normed, 0.0, atol=1e-5 * float(wrong.min()))


def test_infidelity_of_zero_attributions_matches_direct_computation(linear):
    fn, x, target, grad = linear
    key, samples, stdev = jax.random.key(3), 6, 0.05
    got = jit_infidelity(fn, x, target, jnp.zeros_like(x), key, stdev=stdev, samples=samples)
    noise = gaussian_noise(key, samples, stdev)
    # phi = 0: (f(x) - f(x - I))^2 = (w . I)^2 for a linear model.
    w_dot_i = np.einsum(
        "nsd,nd->ns", noise.reshape(N, samples, -1), np.asarray(grad).reshape(N, -1)
    )
    np.testing.assert_allclose(got, (w_dot_i**2).mean(axis=1), rtol=1e-3)


def test_infidelity_of_zero_attributions_expected_value(linear):
    fn, x, target, grad = linear
    stdev = 0.1
    got = jit_infidelity(
        fn, x, target, jnp.zeros_like(x), jax.random.key(4), stdev=stdev, samples=2000
    )
    expected = stdev**2 * np.sum(np.asarray(grad).reshape(N, -1) ** 2, axis=1)
    np.testing.assert_allclose(got, expected, rtol=0.1)  # MC error ~ sqrt(2 / 2000) = 3%


def test_normalized_infidelity_matches_captum_formula_and_is_scale_invariant(mlp):
    fn, x, target = mlp
    key, samples, stdev = jax.random.key(5), 5, 0.2
    phi = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)
    plain = jit_infidelity(fn, x, target, phi, key, stdev=stdev, samples=samples)
    normed = jit_infidelity(fn, x, target, phi, key, stdev=stdev, samples=samples, normalize=True)
    noise = gaussian_noise(key, samples, stdev)
    f = np.asarray(fn(x))[np.arange(N), target]
    flat = (x[:, None] - noise).reshape(N * samples, *SHAPE)
    f_pert = np.asarray(fn(jnp.asarray(flat))).reshape(N, samples, CLASSES)
    bb = f[:, None] - f_pert[np.arange(N), :, np.asarray(target)]
    aa = np.einsum("nsd,nd->ns", noise.reshape(N, samples, -1), np.asarray(phi).reshape(N, -1))
    np.testing.assert_allclose(plain, ((aa - bb) ** 2).mean(axis=1), rtol=1e-4)
    beta = (aa * bb).sum(1) / (aa * aa).sum(1)
    captum = beta**2 * (aa * aa).sum(1) - 2 * beta * (aa * bb).sum(1) + (bb * bb).sum(1)
    np.testing.assert_allclose(normed, captum / samples, rtol=1e-3)
    assert np.all(np.asarray(normed) <= np.asarray(plain) * (1 + 1e-5))  # beta is optimal
    rescaled = jit_infidelity(
        fn, x, target, 7.0 * phi, key, stdev=stdev, samples=samples, normalize=True
    )
    np.testing.assert_allclose(rescaled, normed, rtol=1e-4)


def test_infidelity_with_a_custom_perturbation(linear):
    fn, x, target, grad = linear

    def to_zero(key, xi):
        # Perturbed input: the all-zero baseline. I = (x - perturbed) / (x - baseline) = 1,
        # as Captum's infidelity_perturb_func_decorator(multiply_by_inputs=True) makes
        # it for "global" attributions such as input x gradient.
        return jnp.ones_like(xi), jnp.zeros_like(xi)

    # Input x gradient is complete for a linear model: sum(x * w) = f(x) - f(0).
    value = infidelity(fn, x, target, x * grad, jax.random.key(0), perturbation=to_zero)
    np.testing.assert_allclose(value, 0.0, atol=1e-9)
    assert np.all(
        np.asarray(infidelity(fn, x, target, grad, jax.random.key(0), perturbation=to_zero)) > 0
    )

    def random_mask(key, xi):  # the docstring's recipe for maps multiplied by the input
        m = jax.random.bernoulli(key, 0.5, xi.shape).astype(xi.dtype)
        return m, xi - m * xi

    value = infidelity(fn, x, target, x * grad, jax.random.key(1), perturbation=random_mask)
    np.testing.assert_allclose(value, 0.0, atol=1e-9)


def test_max_sensitivity_of_saliency_on_a_linear_model_is_zero(linear):
    fn, x, target, _ = linear
    got = jit_max_sensitivity(explainer("saliency", fn), x, target, jax.random.key(0))
    assert got.shape == (N,)
    np.testing.assert_array_equal(got, 0.0)


def input_x_gradient_ratios(x, grad, key, samples, radius):
    """Sensitivity ratios of input x gradient on a linear model, by hand, ``(N, samples)``:
    (x + delta) * w - x * w = delta * w, over ||x * w|| (Captum's denominator)."""
    delta = uniform_noise(key, samples, radius)
    w = np.asarray(grad)[:, None]
    return np.linalg.norm((delta * w).reshape(N, samples, -1), axis=2) / np.linalg.norm(
        (np.asarray(x) * np.asarray(grad)).reshape(N, -1), axis=1, keepdims=True
    )


def test_max_sensitivity_of_input_x_gradient_on_a_linear_model(linear):
    fn, x, target, grad = linear
    key, samples, radius = jax.random.key(7), 5, 0.02
    got = jit_max_sensitivity(
        explainer("input_x_gradient", fn), x, target, key, radius=radius, samples=samples
    )
    ratios = input_x_gradient_ratios(x, grad, key, samples, radius)
    np.testing.assert_allclose(got, ratios.max(axis=1), rtol=1e-3)
    assert np.all((np.asarray(got) > 0) & (np.asarray(got) < 0.1))  # radius-scale


def test_avg_sensitivity_is_the_mean_of_the_same_ratios(linear):
    fn, x, target, grad = linear
    key, samples, radius = jax.random.key(7), 5, 0.02
    got = jax.jit(avg_sensitivity, static_argnums=0, static_argnames=("radius", "samples"))(
        explainer("input_x_gradient", fn), x, target, key, radius=radius, samples=samples
    )
    ratios = input_x_gradient_ratios(x, grad, key, samples, radius)
    np.testing.assert_allclose(got, ratios.mean(axis=1), rtol=1e-3)
    maximum = jit_max_sensitivity(
        explainer("input_x_gradient", fn), x, target, key, radius=radius, samples=samples
    )
    assert np.all(np.asarray(got) <= np.asarray(maximum))


@testdata.jit(static_argnums=(1, 2))
def _gaussian_noise_of_sensitivity(key, samples, stdev):
    """x'[i, s] - x[i] as local_lipschitz draws it: stdev * N(0, 1) from
    fold_in(split(fold_in(key, i))[0], s)."""
    noise_keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i))[0])(jnp.arange(N))
    keys = jax.vmap(lambda k: jax.vmap(lambda s: jax.random.fold_in(k, s))(jnp.arange(samples)))(
        noise_keys
    )
    return stdev * jax.vmap(jax.vmap(lambda k: jax.random.normal(k, SHAPE, jnp.float32)))(keys)


def test_local_lipschitz_is_the_largest_ratio_over_the_documented_noise(linear):
    fn, x, target, grad = linear
    key, samples, stdev = jax.random.key(8), 6, 0.1

    # Phi(x) = x^2 moves by d (2 x + d) when x moves by d: recomputed from the same
    # draws, the estimate is the largest ratio of the two norms over the samples.
    def squared(inputs, t, k):
        return inputs * inputs

    lipschitz = jax.jit(
        local_lipschitz, static_argnums=0, static_argnames=("samples", "batch_size")
    )
    got = lipschitz(squared, x, target, key, samples=samples)
    d = np.asarray(_gaussian_noise_of_sensitivity(key, samples, stdev), np.float64)
    xs = np.asarray(x, np.float64)[:, None]
    change = np.linalg.norm((d * (2 * xs + d)).reshape(N, samples, -1), axis=2)
    ratios = change / np.linalg.norm(d.reshape(N, samples, -1), axis=2)
    np.testing.assert_allclose(got, ratios.max(axis=1), rtol=1e-4)
    assert np.all(ratios.max(axis=1) > ratios.mean(axis=1))  # the max, not the mean
    np.testing.assert_allclose(
        lipschitz(squared, x, target, key, samples=samples, batch_size=5), got, rtol=1e-6
    )
    # Phi(x) = c x moves by exactly |c| times the input's move; saliency of a linear
    # model (w, constant in x) not at all.
    np.testing.assert_allclose(
        local_lipschitz(lambda inputs, t, k: -2.5 * inputs, x, target, key, samples=3),
        2.5,
        rtol=1e-5,
    )
    np.testing.assert_array_equal(
        local_lipschitz(explainer("saliency", fn), x, target, key, samples=3), 0.0
    )
    with pytest.raises(ValueError, match="stdev must be > 0"):
        local_lipschitz(squared, x, target, key, stdev=0.0)


def test_batch_size_does_not_change_results(mlp):
    fn, x, target = mlp
    key = jax.random.key(11)
    phi = explainer("saliency", fn, abs=False)(x, target, key)
    ixg = explainer("input_x_gradient", fn)
    results = {}
    for batch_size in (None, 3, 5):
        results[batch_size] = (
            jit_infidelity(
                fn, x, target, phi, key, samples=4, normalize=True, batch_size=batch_size
            ),
            jit_max_sensitivity(ixg, x, target, key, samples=4, batch_size=batch_size),
        )
    for batch_size in (3, 5):
        for got, want in zip(results[batch_size], results[None]):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_keys_decide_the_noise(mlp):
    fn, x, target = mlp
    phi = jnp.zeros_like(x)
    ixg = explainer("input_x_gradient", fn)
    a, b = jax.random.key(0), jax.random.key(1)
    np.testing.assert_array_equal(
        jit_infidelity(fn, x, target, phi, a), jit_infidelity(fn, x, target, phi, a)
    )
    assert not np.allclose(
        jit_infidelity(fn, x, target, phi, a), jit_infidelity(fn, x, target, phi, b)
    )
    np.testing.assert_array_equal(
        jit_max_sensitivity(ixg, x, target, a), jit_max_sensitivity(ixg, x, target, a)
    )
    assert not np.allclose(
        jit_max_sensitivity(ixg, x, target, a), jit_max_sensitivity(ixg, x, target, b)
    )
    # A stochastic explainer: shared keys (default) vs a fresh key per perturbed copy.
    smooth = explainer("smoothgrad", fn, samples=2, stdev=0.5)
    shared = jit_max_sensitivity(smooth, x, target, a, samples=2)
    fresh = jit_max_sensitivity(smooth, x, target, a, samples=2, independent_explain_keys=True)
    assert not np.allclose(shared, fresh)
    # ... and each example keeps its keys however the (example, sample) pairs are chunked.
    chunked = jit_max_sensitivity(smooth, x, target, a, samples=2, batch_size=5)
    np.testing.assert_allclose(chunked, shared, rtol=1e-6, atol=1e-6)


def test_target_none_is_the_predicted_class(mlp):
    fn, x, _ = mlp
    predicted = jnp.argmax(fn(x), axis=1)
    phi = jnp.ones_like(x)
    key = jax.random.key(2)
    np.testing.assert_array_equal(
        infidelity(fn, x, None, phi, key), infidelity(fn, x, predicted, phi, key)
    )
    ixg = explainer("input_x_gradient", fn)
    np.testing.assert_array_equal(
        max_sensitivity(ixg, x, None, key, fn=fn), max_sensitivity(ixg, x, predicted, key)
    )
    with pytest.raises(ValueError, match="fn="):
        max_sensitivity(ixg, x, None, key)


def test_a_method_not_bound_to_its_model_is_refused_with_the_binding():
    # saliency(x, target, key) would read the images as the model and the targets as the
    # images: the error names the explainer to build.
    from fmi_jax import attribution
    from fmi_jax.evaluation import coherency, random_logit

    key, x = jax.random.key(0), jnp.ones((2, 3))
    bind = r"explain takes the model first, saliency\(fn, x, ...\).*explainer\('saliency', fn"
    for metric in (max_sensitivity, local_lipschitz, relative_input_stability):
        with pytest.raises(ValueError, match=rf"^{metric.__name__}: {bind}"):
            metric(attribution.saliency, x, 0, key)
    with pytest.raises(ValueError, match=f"^coherency: {bind}"):
        coherency(attribution.saliency, x, 0, key)
    with pytest.raises(ValueError, match=f"^random_logit: {bind}"):
        random_logit(attribution.saliency, x, 0, key, num_classes=3)
    with pytest.raises(ValueError, match="explain must be a function"):
        max_sensitivity("saliency", x, 0, key)
    by_keyword = functools.partial(attribution.saliency, fn=lambda z: z)  # still first
    with pytest.raises(ValueError, match=rf"^max_sensitivity: {bind}"):
        max_sensitivity(by_keyword, x, 0, key)
    bound = attribution.explainer("saliency", lambda z: jnp.stack([z.sum(-1), -z.sum(-1)], 1))
    assert max_sensitivity(bound, x, 0, key, samples=2).shape == (2,)


def test_a_class_out_of_range_is_refused_whatever_the_chunking(linear):
    """With batch_size, the explainer runs on traced chunks where its own range check
    cannot see the targets (jnp indexing would clamp the class); given fn=, the metric
    checks them against the model's classes first."""
    fn, x, _, _ = linear
    explain = explainer("saliency", fn)
    key = jax.random.key(0)
    for batch_size in (None, 2):
        for metric in (max_sensitivity, avg_sensitivity, local_lipschitz):
            with pytest.raises(ValueError, match=r"class 5, but classes must be in \[0, 3\)"):
                metric(explain, x, 5, key, fn=fn, samples=2, batch_size=batch_size)


def test_bad_inputs_are_refused(linear):
    fn, x, target, grad = linear
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"\(4, 6\).*\(4, 2, 3\)"):
        infidelity(fn, x, target, grad.reshape(N, -1), key)
    with pytest.raises(ValueError, match="shape"):
        infidelity(fn, x, jnp.zeros(3, jnp.int32), grad, key)
    with pytest.raises(ValueError, match="perturbation"):
        infidelity(fn, x, target, grad, key, perturbation="laplace")
    with pytest.raises(ValueError, match=r"leading axis 4.*\(1, 6\)"):
        max_sensitivity(lambda xs, t, k: jnp.ones((1, D)), x, target, key)
    with pytest.raises(ValueError, match="norm_ord"):
        max_sensitivity(explainer("saliency", fn), x, target, key, norm_ord="nuc")
    with pytest.raises(ValueError, match="samples"):
        max_sensitivity(explainer("saliency", fn), x, target, key, samples=0)


# Relative stability. Each test runs its metrics in one jitted program: the metrics
# draw the same noise from the same key, which XLA then computes once, so a test
# compiles a single program of about the size of one metric.


def stability_noise(key, samples, minval=0.02, maxval=0.2):
    """x'[i, s] - x[i] as the relative stabilities draw it (the sensitivities' noise keys,
    Quantus' default U[0.02, 0.2])."""
    return np.asarray(_uniform_noise(key, samples, minval, maxval), np.float32)


def relative_scores(before, after, view_before, view_after, relative, eps=1e-6):
    """The documented score of every (example, sample), in float64, by hand: before/view
    ``(N, ...)``, after ``(N, S, ...)``; exact zeros divide as eps, the norm floor is eps."""

    def norm(values):
        return np.linalg.norm(values.reshape(values.shape[0], values.shape[1], -1), axis=2)

    def nonzero(values):
        return np.where(values == 0, eps, values)

    before, after = np.float64(before)[:, None], np.float64(after)
    view_before, view_after = np.float64(view_before)[:, None], np.float64(view_after)
    change = view_before - view_after
    if relative:
        change = change / nonzero(view_before)
    return norm((before - after) / nonzero(before)) / np.maximum(norm(change), eps)


def squared(inputs, target, key):
    return inputs * inputs


def test_relative_stability_on_a_linear_model(linear):
    fn, x, target, _ = linear
    ixg = explainer("input_x_gradient", fn)
    saliency = explainer("saliency", fn, abs=False)  # w_t, whatever the input

    @jax.jit
    def run(x, key):
        def ris(explain):
            return relative_input_stability(explain, x, target, key, fn=fn, samples=6)

        scaled = ris(lambda xs, t, k: -3.0 * ixg(xs, t, k))
        still = relative_output_stability(saliency, x, target, key, fn=fn, samples=6)
        return ris(ixg), scaled, ris(saliency), still

    got, scaled, *zeros = run(x, jax.random.key(12))
    # Input x gradient: e = w_t * x, so (e(x) - e(x')) / e(x) = (x - x') / x element by
    # element, for any perturbation; scaling the map changes neither.
    assert got.shape == (N,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, 1.0, rtol=1e-4)
    np.testing.assert_allclose(scaled, got, rtol=1e-5)
    # A map that does not move with the input is perfectly stable.
    for value in zeros:
        np.testing.assert_array_equal(value, 0.0)


@pytest.fixture(scope="module")
def hidden_mlp():
    """A tanh network whose hidden layer is the representation, and an input with one
    exact zero (divided as eps_min)."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(size=(D, 5)).astype(np.float32)
    w2 = rng.normal(size=(5, CLASSES)).astype(np.float32)
    x = rng.normal(size=(N,) + SHAPE).astype(np.float32)
    x[1, 0, 2] = 0.0

    def hidden(inputs):
        return jnp.tanh(inputs.reshape(inputs.shape[0], -1) @ w1)

    def fn(inputs):
        return hidden(inputs) @ w2

    return fn, hidden, (w1, w2), x


def test_relative_stabilities_match_the_formulas_by_hand(hidden_mlp):
    fn, hidden, (w1, w2), x = hidden_mlp
    key, samples = jax.random.key(14), 6
    target = jnp.array([0, 2, 1, 1], jnp.int32)

    @jax.jit
    def run(x, key):
        options = dict(fn=fn, samples=samples)
        return (
            relative_input_stability(squared, x, target, key, **options),
            relative_output_stability(squared, x, target, key, **options),
            relative_representation_stability(
                squared, x, target, key, representation=hidden, **options
            ),
            # Chunks of 5 of the 24 (example, perturbation) pairs: the same numbers.
            relative_representation_stability(
                squared, x, target, key, representation=hidden, batch_size=5, **options
            ),
        )

    ris, ros, rrs, rrs_chunked = run(x, key)
    noisy = x[:, None] + stability_noise(key, samples)
    h = np.tanh(np.float64(x).reshape(N, -1) @ w1)
    h_noisy = np.tanh(np.float64(noisy).reshape(N, samples, -1) @ w1)
    logits, logits_noisy = h @ w2, h_noisy @ w2
    kept = logits_noisy.argmax(axis=2) == logits.argmax(axis=1)[:, None]
    assert kept.any(axis=1).all()
    e, e_noisy = x * x, noisy * noisy
    for got, view, view_noisy, relative in (
        (ris, x, noisy, True),
        (ros, logits, logits_noisy, False),  # the logits' change is absolute
        (rrs, h, h_noisy, True),
    ):
        scores = relative_scores(e, e_noisy, view, view_noisy, relative)
        np.testing.assert_allclose(got, np.where(kept, scores, -np.inf).max(axis=1), rtol=1e-4)
    np.testing.assert_allclose(rrs_chunked, rrs, rtol=1e-5)
    # The zero of x[1] divides as eps_min in both norms of RIS, which then hold about
    # x'^2 / eps_min and x' / eps_min: RIS of example 1 is about x' < 0.2 < 1.
    assert float(ris[1]) < 1.0 < float(ris[np.array([0, 2, 3])].min())


def test_perturbed_inputs_that_change_the_prediction_are_left_out():
    # Class 0 while the features sum to less than 6. The noise adds between 0.12 and 1.2
    # to the sum: example 0 never changes class, example 1 sometimes, example 3 always.
    def fn(inputs):
        total = inputs.reshape(inputs.shape[0], -1).sum(axis=1)
        return jnp.stack([6.0 - total, jnp.zeros_like(total)], axis=1)

    levels = np.array([0.5, 0.89, 0.7, 0.99], np.float32)
    x = np.broadcast_to(levels[:, None, None], (N,) + SHAPE).copy()
    key, samples = jax.random.key(15), 6
    ris = jax.jit(relative_input_stability, static_argnums=0, static_argnames=("fn", "samples"))
    got = np.asarray(ris(squared, x, 0, key, fn=fn, samples=samples))

    noisy = x[:, None] + stability_noise(key, samples)
    kept = noisy.reshape(N, samples, -1).sum(axis=2) < 6.0
    assert kept[0].all() and 0 < kept[1].sum() < samples and not kept[3].any()
    scores = relative_scores(x * x, noisy * noisy, x, noisy, relative=True)
    want = np.where(kept, scores, -np.inf).max(axis=1)
    np.testing.assert_allclose(got[:3], want[:3], rtol=1e-4)
    assert got[1] < scores[1].max()  # the largest score came from a changed prediction
    assert np.isnan(got[3])


def test_relative_stability_refuses_bad_arguments(linear):
    fn, x, target, _ = linear
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="relative_input_stability needs fn="):
        relative_input_stability(squared, x, target, key)
    with pytest.raises(ValueError, match="needs representation="):
        relative_representation_stability(squared, x, target, key, fn=fn)
    with pytest.raises(ValueError, match="minval must be <= maxval"):
        relative_output_stability(squared, x, target, key, fn=fn, minval=0.2, maxval=0.1)
    with pytest.raises(ValueError, match="eps_min must be > 0"):
        relative_input_stability(squared, x, target, key, fn=fn, eps_min=0.0)
    with pytest.raises(ValueError, match="norm_ord"):
        relative_input_stability(squared, x, target, key, fn=fn, norm_ord="nuc")
    # Found while tracing, so under jit nothing is compiled before the error.
    with pytest.raises(ValueError, match=r"representation must return .*leading axis 4"):
        jax.jit(
            lambda x: relative_representation_stability(
                squared, x, target, key, fn=fn, representation=lambda xs: xs[:1], samples=2
            )
        )(x)


def np_translate(example, shift, fill):
    """Quantus' batched_translation along the width of one (H, W, C) example, in numpy."""
    width = example.shape[1]
    pad = np.full((example.shape[0], abs(shift), example.shape[2]), fill)
    if shift < 0:
        return np.concatenate([example, pad], axis=1)[:, -width:]
    return np.concatenate([pad, example], axis=1)[:, :width]


def test_translate_moves_along_the_axis_and_fills_what_it_uncovers():
    from fmi_jax.evaluation import translate

    x = jnp.arange(1.0, 7.0).reshape(1, 3, 2) + 0.5  # (H, W, C) = (1, 3, 2)
    for shift in (-4, -3, -1, 0, 1, 2, 3):
        for fill in ("min", -2.0):
            value = float(x.min()) if fill == "min" else fill
            np.testing.assert_array_equal(
                translate(x, shift, fill=fill), np_translate(np.asarray(x), shift, value)
            )
    np.testing.assert_array_equal(translate(x[0], 1, axis=0, fill=0.0)[1], x[0, 0])
    for bad, message in (
        ({"shift": 1.5}, "integer number of positions"),
        ({"shift": 1, "axis": 3}, "is not an axis"),
        ({"shift": 1, "fill": "black"}, "fill must be"),
    ):
        with pytest.raises(ValueError, match=message):
            translate(x, **bad)


def test_continuity_is_quantus_loop_recomputed_in_numpy():
    """Quantus' grid for W = 7 and 4 steps, dx = 15 // 4 = 3: shifts -4, -1, 2, 5 (not
    symmetric, so a wrong sign or an off-by-one grid changes the answer), each scored by
    ||Phi(x') - Phi(x)||_1 / ||x' - x||_2 for a map that is not symmetric either; the
    map scaled by -3 scores 3 times as much."""
    from fmi_jax.evaluation import continuity

    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 1.0, size=(3, 4, 7, 2)).astype(np.float32)
    x[1, :, 2:] = 0.0
    w = rng.normal(size=(4, 7, 2)).astype(np.float32)

    def phi(z):
        return z * w + 0.3 * z**2

    expected = []
    for example in x:
        ratios = []
        for shift in (-4, -1, 2, 5):
            moved = np_translate(example, shift, example.min())
            change = np.abs(phi(moved) - phi(example)).sum()
            ratios.append(change / np.sqrt(((moved - example) ** 2).sum()))
        expected.append(max(ratios))
    key = jax.random.key(0)
    got = continuity(lambda z, t, k: phi(z), jnp.asarray(x), 0, key, steps=4)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    flipped = continuity(lambda z, t, k: phi(z), jnp.asarray(x), 0, key, shifts=[4, 1, -2, -5])
    assert not np.allclose(flipped, expected, rtol=1e-3)
    scaled = continuity(
        lambda z, t, k: -3.0 * phi(z), jnp.asarray(x), 0, key, steps=4, batch_size=5
    )
    np.testing.assert_allclose(scaled, 3 * np.asarray(expected), rtol=1e-5)


def test_continuity_leaves_out_unchanged_inputs_and_changed_predictions():
    from fmi_jax.evaluation import continuity

    # A model whose class is whether the left half holds more mass than the right.
    def fn(z):
        half = z.shape[2] // 2
        left, right = z[:, :, :half].sum((1, 2, 3)), z[:, :, half:].sum((1, 2, 3))
        return jnp.stack([left - right, right - left], axis=1)

    x = np.zeros((2, 2, 4, 1), np.float32)
    x[0, :, 0] = 1.0  # all mass at the left edge: class 0
    x[1] = 0.5  # constant: every translation with fill 'min' is the image itself
    weights = np.array([1.0, 2.0, 3.0, 5.0], np.float32)[None, None, :, None]

    def explain(z, t, k):
        return z * weights

    def ratio(example, shift):
        moved = np_translate(example, shift, example.min())
        return np.abs((moved - example) * weights[0]).sum() / np.linalg.norm(moved - example)

    key = jax.random.key(1)
    # Shift 1 keeps class 0 (mass in column 1); shift 3 moves it to column 3 (class 1)
    # and scores more. The target (1) is not the prediction: the kept translations are
    # those that keep the prediction (Quantus would keep the ones that reach the target).
    plain = continuity(explain, jnp.asarray(x), 1, key, shifts=[1, 3])
    kept = continuity(explain, jnp.asarray(x), 1, key, shifts=[1, 3], fn=fn, keep_prediction=True)
    assert ratio(x[0], 3) > ratio(x[0], 1)
    np.testing.assert_allclose(plain[0], ratio(x[0], 3), rtol=1e-6)
    np.testing.assert_allclose(kept[0], ratio(x[0], 1), rtol=1e-6)
    kept_none = continuity(
        explain, jnp.asarray(x[:1]), 1, key, shifts=[3], fn=fn, keep_prediction=True
    )
    assert np.isnan(kept_none[0])
    assert np.isnan(plain[1]) and np.isnan(kept[1])
    # A shift of the axis' size or more leaves only the fill, however large.
    huge = continuity(explain, jnp.asarray(x[:1]), 1, key, shifts=[2**40])
    np.testing.assert_allclose(huge[0], ratio(x[0], 4), rtol=1e-6)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"shifts": [0]}, "no shift other than 0"),
        ({"shifts": [0.5]}, "sequence of ints"),
        ({"steps": 100}, "steps must be at most"),
        ({"axis": 3}, "not an axis of one example"),
        ({"fill": "black", "steps": 4}, "fill must be 'min' or a number"),
        ({"keep_prediction": True, "steps": 4}, "needs fn="),
        ({"axis": 1.5}, "axis must be an int"),
        ({"shifts": [[1, 2], [3]]}, "sequence of ints"),
    ],
)
def test_continuity_refuses_bad_options_in_one_line(options, message):
    from fmi_jax.evaluation import continuity

    with pytest.raises(ValueError, match=message):
        continuity(lambda z, t, k: z, jnp.ones((1, 2, 4, 1)), 0, jax.random.key(0), **options)
