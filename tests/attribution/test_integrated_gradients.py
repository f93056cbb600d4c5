"""Integrated gradients: quadrature rules, known answers, completeness, memory bounds."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax.attribution import QUADRATURE_RULES, integrated_gradients, quadrature
from tests import testdata

RIEMANN = [r for r in QUADRATURE_RULES if r.startswith("riemann")]

KEY_W, KEY_X, KEY_B = jax.random.split(jax.random.key(1), 3)
W = testdata.normal(KEY_W, (6, 3))
X = testdata.normal(KEY_X, (4, 6))
T = np.array([2, 0, 1, 2])


def linear(x):
    return x @ W - 1.0


def smooth_mlp(x):
    """A tanh/softplus MLP: the IG integrand along any path is analytic."""
    w1 = jnp.linspace(-1.0, 1.0, 6 * 5).reshape(6, 5)
    w2 = jnp.linspace(1.0, -0.5, 5 * 3).reshape(5, 3)
    return jax.nn.softplus(jnp.tanh(x @ w1) * 2.0) @ w2


# ------------------------------------------------------------------------- quadrature


@pytest.mark.parametrize(
    "rule, alphas, weights",
    [
        ("riemann_left", [0, 1 / 4, 2 / 4, 3 / 4], [1 / 4] * 4),
        ("riemann_right", [1 / 4, 2 / 4, 3 / 4, 1], [1 / 4] * 4),
        ("riemann_middle", [1 / 8, 3 / 8, 5 / 8, 7 / 8], [1 / 4] * 4),
        ("riemann_trapezoid", [0, 1 / 3, 2 / 3, 1], [1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    ],
)
def test_riemann_nodes_and_weights_at_four_steps(rule, alphas, weights):
    a, w = quadrature(rule, 4)
    assert a.dtype == w.dtype == np.float64
    np.testing.assert_allclose(a, alphas, rtol=0, atol=1e-15)
    np.testing.assert_allclose(w, weights, rtol=0, atol=1e-15)


def test_gauss_legendre_two_nodes():
    a, w = quadrature("gausslegendre", 2)
    np.testing.assert_allclose(a, [0.5 - 0.5 / math.sqrt(3), 0.5 + 0.5 / math.sqrt(3)], atol=1e-15)
    np.testing.assert_allclose(w, [0.5, 0.5], atol=1e-15)


def test_gauss_legendre_matches_numpy_leggauss():
    """Our Newton iteration against numpy's eigenvalue method (whose weights are the less
    accurate of the two at n = 64, by the polynomial test below)."""
    for n in range(1, 65):
        nodes, weights = np.polynomial.legendre.leggauss(n)
        a, w = quadrature("gausslegendre", n)
        np.testing.assert_allclose(a, (nodes + 1) / 2, rtol=0, atol=1e-15)
        np.testing.assert_allclose(w, weights / 2, rtol=1e-11, atol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 64])
def test_gauss_legendre_integrates_degree_2n_minus_1_exactly(n):
    a, w = quadrature("gausslegendre", n)
    for degree in range(2 * n):
        assert math.isclose(np.sum(w * a**degree), 1 / (degree + 1), rel_tol=1e-13), degree
    if n <= 8:  # ... and not degree 2n: the error there is real, far above float64 rounding
        assert abs(np.sum(w * a ** (2 * n)) - 1 / (2 * n + 1)) > 1e-11


@pytest.mark.parametrize("rule", QUADRATURE_RULES)
@pytest.mark.parametrize("steps", [2, 3, 10, 1000])
def test_weights_sum_to_one_and_nodes_lie_in_the_unit_interval(rule, steps):
    a, w = quadrature(rule, steps)
    assert a.shape == w.shape == (steps,)
    assert math.fsum(w) == pytest.approx(1.0, abs=1e-14)
    assert np.all(w > 0) and np.all((a >= 0) & (a <= 1)) and np.all(np.diff(a) > 0)


def test_captum_trapezoid_weights_sum_to_n_minus_1_over_n():
    """Captum (captum/attr/_utils/approximation_methods.py, riemann_builders) uses
    alphas = linspace(0, 1, n) but step sizes [1/n] * n with the two ends halved. Its
    weights are ours times (n - 1) / n, so Captum's trapezoid IG of a linear model is
    (x - x') w (n - 1) / n: a completeness gap of a factor 1/n that ours does not have."""
    for n in [2, 3, 4, 10, 50]:
        captum_steps = [1 / n] * n
        captum_steps[0] /= 2
        captum_steps[-1] /= 2
        captum_alphas = np.linspace(0, 1, n)
        alphas, weights = quadrature("riemann_trapezoid", n)
        np.testing.assert_allclose(captum_alphas, alphas, atol=1e-15)
        assert math.fsum(captum_steps) == pytest.approx((n - 1) / n, abs=1e-14)
        np.testing.assert_allclose(captum_steps, weights * (n - 1) / n, atol=1e-15)
        # IG of f(x) = x . w with Captum's weights: the gradient is w at every node.
        w = np.array([2.0, -1.0])
        x = np.array([1.0, 3.0])
        np.testing.assert_allclose(x * w * math.fsum(captum_steps), x * w * (n - 1) / n)

    attributions = integrated_gradients(linear, X, T, steps=10, rule="riemann_trapezoid")
    np.testing.assert_allclose(attributions, X * W[:, T].T, rtol=1e-5, atol=1e-6)


def test_quadrature_errors():
    with pytest.raises(
        ValueError, match="unknown quadrature rule 'simpson'; choose one of gausslegendre"
    ):
        quadrature("simpson", 4)
    with pytest.raises(ValueError, match=r"riemann_trapezoid needs steps >= 2"):
        quadrature("riemann_trapezoid", 1)
    for steps in [0, -1, 2.0]:
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            quadrature("gausslegendre", steps)


# ---------------------------------------------------------------------- known answers


@pytest.mark.parametrize("rule", QUADRATURE_RULES)
def test_linear_model_gives_x_minus_baseline_times_w_for_any_rule_and_steps(rule):
    """The gradient of a linear model is constant, so every rule whose weights sum to
    one is exact, for any number of steps and any baseline."""
    baseline = testdata.normal(KEY_B, X.shape)
    expected = (X - baseline) * W[:, T].T
    for steps in [1, 7] if rule != "riemann_trapezoid" else [2, 7]:
        attributions = integrated_gradients(
            linear, X, T, baseline=baseline, steps=steps, rule=rule, batch_size=5
        )
        np.testing.assert_allclose(attributions, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("baseline", [None, 0.5, jnp.linspace(0, 1, 6)])
def test_baseline_forms(baseline):
    b = np.broadcast_to(0.0 if baseline is None else np.asarray(baseline), X.shape)
    np.testing.assert_allclose(
        integrated_gradients(linear, X, T, baseline=baseline, steps=3),
        (X - b) * W[:, T].T,
        rtol=1e-5,
        atol=1e-6,
    )


def ig_paper_model(x):
    """f(x1, x2) = ReLU(ReLU(x1) - 1 - ReLU(x2)), Sundararajan et al. 2017, section 2."""
    relu = jax.nn.relu
    return relu(relu(x[:, 0]) - 1 - relu(x[:, 1]))[:, None]


@pytest.mark.parametrize("rule", QUADRATURE_RULES)
def test_ig_paper_example(rule):
    """At x = (3, 1), baseline 0: f = 1 and the path crosses f's kink at a = 1/2,
    where x1 - 1 - x2 = 3a - 1 - a becomes positive; IG = (3, -1) * 1/2 = (1.5, -0.5)."""
    attributions = integrated_gradients(
        ig_paper_model, jnp.array([[3.0, 1.0]]), 0, steps=1000, rule=rule
    )
    np.testing.assert_allclose(attributions, [[1.5, -0.5]], atol=1e-2)


# ---------------------------------------------------------------------- completeness


@jax.jit
def _completeness_gaps(x):
    """For every rule at 4 and 32 steps, max_i |sum(IG_i) - (f_t(x_i) - f_t(x'_i))| for
    the smooth MLP, baseline -0.5. One compiled program for all ten integrals (un-jitted,
    each would compile its primitives on its own for its number of steps)."""
    rows = np.arange(len(T))
    difference = smooth_mlp(x)[rows, T] - smooth_mlp(jnp.full_like(x, -0.5))[rows, T]
    gaps = {}
    for rule in QUADRATURE_RULES:
        gaps[rule] = []
        for steps in (4, 32):
            attributions = integrated_gradients(
                smooth_mlp, x, T, steps=steps, rule=rule, baseline=-0.5
            )
            gaps[rule].append(jnp.max(jnp.abs(attributions.sum(axis=1) - difference)))
    return gaps


def test_completeness_gap_shrinks_with_steps_and_gauss_legendre_wins():
    """Going from 4 to 32 steps, the gap of the first-order rules (left, right) falls by
    about 8 = 32/4, that of the second-order ones (middle, trapezoid) by about 64 or
    more, and Gauss-Legendre's reaches float32 rounding. At equal steps Gauss-Legendre
    is the most accurate rule."""
    gaps = jax.tree.map(float, _completeness_gaps(X))
    order = {"riemann_left": 1, "riemann_right": 1, "riemann_middle": 2, "riemann_trapezoid": 2}
    for rule in RIEMANN:
        few, many = gaps[rule]
        assert few / many > 0.6 * 8 ** order[rule], (rule, gaps[rule])
    for i in range(2):
        assert gaps["gausslegendre"][i] < min(gaps[m][i] for m in RIEMANN), gaps
    assert gaps["gausslegendre"][1] < 1e-5, gaps


def test_delta_is_sum_of_attributions_minus_logit_difference():
    attributions, delta = integrated_gradients(
        smooth_mlp, X, T, steps=5, baseline=0.3, return_delta=True
    )
    logits, baseline_logits = smooth_mlp(X), smooth_mlp(jnp.full_like(X, 0.3))
    difference = logits[np.arange(4), T] - baseline_logits[np.arange(4), T]
    np.testing.assert_allclose(delta, attributions.sum(axis=1) - difference, atol=1e-6)


# --------------------------------------------------------------------------- memory


def test_thousand_steps_do_not_depend_on_the_chunk_size():
    x = jnp.tile(X, (8, 1))  # 32 examples, 32 000 gradient evaluations
    t = np.tile(T, 8)

    @jax.jit  # the four integrals as one compiled program
    def run(x):
        # 999 divides neither N nor steps
        chunked = [
            integrated_gradients(smooth_mlp, x, t, steps=1000, batch_size=batch_size)
            for batch_size in [4096, 999, 1000]
        ]
        middle = integrated_gradients(smooth_mlp, x, t, steps=1000, rule="riemann_middle")
        return chunked, middle

    (reference, *chunked), middle = run(x)
    for attributions in chunked:
        np.testing.assert_allclose(attributions, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reference, middle, atol=1e-4)


def _temp_bytes(steps, batch_size, images=256):
    """Peak scratch memory XLA plans for integrated_gradients on 256 8x8 images."""
    w = jnp.ones((64, 10)) / 64
    fn = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w)
    x = jax.ShapeDtypeStruct((images, 8, 8, 1), jnp.float32)
    compiled = (
        jax.jit(lambda x: integrated_gradients(fn, x, 0, steps=steps, batch_size=batch_size))
        .lower(x)
        .compile()
    )
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_is_bounded_by_batch_size_not_steps():
    """steps=1000 on 256 images: 256 000 gradients of 8x8 inputs. Chunked by 1024, the
    scratch memory does not grow with steps; unchunked it holds all 256 000 inputs."""
    chunked_100, chunked_1000 = _temp_bytes(100, 1024), _temp_bytes(1000, 1024)
    unchunked_1000 = _temp_bytes(1000, None)
    assert chunked_1000 <= chunked_100 * 1.1
    assert unchunked_1000 > 256 * 1000 * 64 * 4  # all evaluation points at once
    assert chunked_1000 < unchunked_1000 / 20


# --------------------------------------------------------------------------- errors


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown quadrature rule 'gauss'"):
        integrated_gradients(linear, X, T, rule="gauss")
    with pytest.raises(ValueError, match="riemann_trapezoid needs steps >= 2"):
        integrated_gradients(linear, X, T, rule="riemann_trapezoid", steps=1)
    with pytest.raises(TypeError, match="method"):  # the old name of `rule` is not accepted
        integrated_gradients(linear, X, T, method="riemann_middle")
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        integrated_gradients(linear, X, T, steps=0)
    with pytest.raises(ValueError, match=r"baseline of shape \(5,\) does not broadcast"):
        integrated_gradients(linear, X, T, baseline=jnp.zeros(5))
    with pytest.raises(ValueError, match="baseline contains NaN"):
        integrated_gradients(linear, X, T, baseline=jnp.full(6, jnp.nan))
    with pytest.raises(ValueError, match="target out of range"):
        integrated_gradients(linear, X, 3)
