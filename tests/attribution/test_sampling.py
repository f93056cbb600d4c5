"""Feature ablation, Shapley value sampling, KernelSHAP, LIME and DeepLiftShap: known
answers on linear models, exact Shapley values by enumerating every coalition, the
efficiency (completeness) constraint, and invariance to batch size and to splitting
the batch across calls."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax.attribution import deeplift
from fmi_jax.attribution.sampling import (
    deeplift_shap,
    feature_ablation,
    kernel_shap,
    lime,
    shapley_value_sampling,
)
from tests import testdata

FEATURES = 6
MASK = np.array([0, 0, 1, 2, 3, 3])  # 4 groups, two of them of two elements
GROUPS = 4
X = testdata.uniform(jax.random.key(0), (3, FEATURES), minval=-1.0, maxval=1.0)
BASELINE = np.linspace(-0.3, 0.4, FEATURES).astype(np.float32)
TARGET = np.array([0, 1, 1])
WEIGHTS = testdata.normal(jax.random.key(1), (FEATURES, 2))
KEY = jax.random.key(3)


def linear(x):
    return x @ WEIGHTS


def game(x):
    """Nonlinear, with interactions of two and three groups (no group is a dummy)."""
    a = jnp.sin(2 * x[:, 0]) * x[:, 1] + x[:, 2] * x[:, 4] - x[:, 3]
    b = jnp.tanh(x[:, 0] + x[:, 3] * x[:, 5]) + x[:, 1] * x[:, 2] * x[:, 4] + x[:, 2] ** 2
    return jnp.stack([a, b], axis=1)


def _jit(method, fn, **static):
    """``method(fn, x, target, ...)`` compiled once per set of static options; the
    feature mask is a constant of the program."""
    return jax.jit(
        lambda x, target, key=None, baseline=BASELINE, **kw: method(
            fn, x, target, key=key, baseline=baseline, **static, **kw
        ),
        static_argnames=("batch_size", "samples", "alpha", "distance"),
    )


def _group_sums(values, mask=MASK):
    """Per-group sums ``(N, F)`` of per-element values ``(N, D)``."""
    values = np.asarray(values)
    return np.stack([values[:, mask == g].sum(axis=1) for g in range(mask.max() + 1)], 1)


def _per_group(attributions, mask=MASK):
    """One value per group (every element of a group holds the same), checked."""
    attributions = np.asarray(attributions)
    firsts = np.stack([attributions[:, mask == g][:, 0] for g in range(mask.max() + 1)], 1)
    np.testing.assert_array_equal(attributions, firsts[:, mask])
    return firsts


def _linear_shapley(x, target, baseline=BASELINE, mask=MASK):
    """The Shapley values of a linear model: group sums of w_t (x - b)."""
    contribution = np.asarray(WEIGHTS).T[target] * (np.asarray(x) - baseline)
    return _group_sums(contribution, mask)


def _exact_shapley(fn, x, target, baseline=BASELINE, mask=MASK):
    """Shapley values by the definition, enumerating all 2^F coalitions: (N, F)."""
    x, count = np.asarray(x), mask.max() + 1
    coalitions = np.array(list(itertools.product([0, 1], repeat=count)), bool)  # (2^F, F)
    inputs = np.where(coalitions[:, mask][None], x[:, None], baseline)  # (N, 2^F, D)
    logits = np.asarray(fn(jnp.asarray(inputs.reshape(-1, x.shape[1]))), np.float64)
    v = logits.reshape(len(x), len(coalitions), -1)[np.arange(len(x)), :, target]
    index = {tuple(c): i for i, c in enumerate(coalitions)}
    phi = np.zeros((len(x), count))
    for c in coalitions:
        size = int(c.sum())
        for j in np.flatnonzero(~c):
            weight = math.factorial(size) * math.factorial(count - size - 1) / math.factorial(count)
            with_j = c.copy()
            with_j[j] = True
            phi[:, j] += weight * (v[:, index[tuple(with_j)]] - v[:, index[tuple(c)]])
    return phi, v[:, -1] - v[:, 0]


@pytest.fixture(scope="module")
def exact_game():
    return _exact_shapley(game, X, TARGET)


# ------------------------------- feature ablation ----------------------------------
ablation_linear = _jit(feature_ablation, linear, feature_mask=MASK)
ablation_game = _jit(feature_ablation, game, feature_mask=MASK)


def test_feature_ablation_of_a_linear_model_is_the_group_sum_of_w_times_x_minus_baseline():
    got = _per_group(ablation_linear(X, TARGET))
    np.testing.assert_allclose(got, _linear_shapley(X, TARGET), atol=1e-5)


def test_feature_ablation_is_the_drop_when_one_group_is_set_to_the_baseline():
    got = _per_group(ablation_game(X, TARGET))
    full = np.asarray(game(X))[np.arange(3), TARGET]
    for g in range(GROUPS):
        ablated = np.where(MASK == g, BASELINE, np.asarray(X))
        drop = full - np.asarray(game(jnp.asarray(ablated)))[np.arange(3), TARGET]
        np.testing.assert_allclose(got[:, g], drop, atol=1e-6)
    # Default mask: every scalar its own feature.
    single = feature_ablation(linear, X, TARGET, baseline=BASELINE)
    np.testing.assert_allclose(
        single, np.asarray(WEIGHTS).T[TARGET] * (np.asarray(X) - BASELINE), atol=1e-5
    )


# ---------------------------- Shapley value sampling -------------------------------
shapley_linear = _jit(shapley_value_sampling, linear, feature_mask=MASK)
shapley_game = _jit(shapley_value_sampling, game, feature_mask=MASK)


def test_shapley_sampling_of_a_linear_model_is_exact_for_any_number_of_orders():
    got = _per_group(shapley_linear(X, TARGET, KEY, samples=2))
    np.testing.assert_allclose(got, _linear_shapley(X, TARGET), atol=1e-5)


def test_shapley_sampling_sums_to_the_difference_and_converges_to_the_shapley_values(
    exact_game,
):
    exact, delta = exact_game
    errors = {}
    for samples in (2, 600):
        got = _per_group(shapley_game(X, TARGET, KEY, samples=samples))
        # Every order telescopes: efficiency holds exactly for any number of orders.
        np.testing.assert_allclose(got.sum(axis=1), delta, atol=1e-5)
        errors[samples] = np.abs(got - exact).max()
    assert errors[600] < 0.05 * np.abs(exact).max()
    assert errors[600] < errors[2] / 4


@pytest.mark.parametrize("method", [shapley_value_sampling, kernel_shap], ids=lambda m: m.__name__)
def test_a_single_group_gets_the_whole_difference(method):
    run = _jit(method, game, feature_mask=np.zeros(FEATURES, int))
    full, base = game(X), game(jnp.broadcast_to(BASELINE, X.shape))
    delta = np.asarray(full - base)[np.arange(3), TARGET]
    got = run(X, TARGET, KEY, samples=2)
    np.testing.assert_allclose(got, np.repeat(delta[:, None], FEATURES, 1), atol=1e-6)


# ------------------------------------ KernelSHAP -----------------------------------
kernel_linear = _jit(kernel_shap, linear)  # 6 single-element groups: 62 coalitions
kernel_game = _jit(kernel_shap, game, feature_mask=MASK)  # 4 groups: 14 coalitions


def test_kernel_shap_of_a_linear_model_is_exact_from_sampled_coalitions():
    got = kernel_linear(X, TARGET, KEY, samples=40)  # sampled: 40 < 2^6 - 2
    expected = np.asarray(WEIGHTS).T[TARGET] * (np.asarray(X) - BASELINE)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_kernel_shap_enumerating_every_coalition_gives_the_exact_shapley_values(exact_game):
    exact, _ = exact_game
    got = _per_group(kernel_game(X, TARGET, KEY, samples=2**GROUPS - 2))
    np.testing.assert_allclose(got, exact, atol=1e-4)


def test_kernel_shap_from_sampled_coalitions_keeps_efficiency_and_is_close():
    # Six single-element groups: 62 coalitions, 50 of them drawn (with repeats).
    exact, delta = _exact_shapley(game, X, TARGET, mask=np.arange(FEATURES))
    got = np.asarray(_jit(kernel_shap, game)(X, TARGET, KEY, samples=50))
    np.testing.assert_allclose(got.sum(axis=1), delta, atol=1e-4)
    assert np.abs(got - exact).max() < 0.1 * np.abs(exact).max()


# --------------------------------------- LIME --------------------------------------
lime_linear = _jit(lime, linear, feature_mask=MASK)
lime_game = _jit(lime, game, feature_mask=MASK)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_lime_of_a_linear_model_recovers_its_weights_without_penalty(distance):
    got = _per_group(lime_linear(X, TARGET, KEY, samples=40, alpha=0.0, distance=distance))
    np.testing.assert_allclose(got, _linear_shapley(X, TARGET), atol=1e-4)


def test_lime_ridge_penalty_shrinks_the_coefficients_toward_zero():
    plain, ridge = (
        _per_group(lime_linear(X, TARGET, KEY, samples=40, alpha=alpha, distance="cosine"))
        for alpha in (0.0, 1.0)
    )
    assert 0 < np.linalg.norm(ridge) < 0.8 * np.linalg.norm(plain)


# ------------------------------------ DeepLiftShap ---------------------------------
MLP_W1 = testdata.normal(jax.random.key(4), (FEATURES, 5))
MLP_W2 = testdata.normal(jax.random.key(5), (5, 2))
REFERENCES = testdata.uniform(jax.random.key(6), (3, FEATURES))


def mlp(x):
    return jax.nn.relu(x @ MLP_W1 + 0.1) @ MLP_W2


def test_deeplift_shap_is_the_mean_of_deeplift_over_the_references():
    got = deeplift_shap(mlp, X, TARGET, baseline=REFERENCES)
    separate = [deeplift(mlp, X, TARGET, baseline=b) for b in REFERENCES]
    np.testing.assert_allclose(got, np.mean(separate, axis=0), atol=1e-5)
    # Summation to delta against the mean reference output.
    reference_mean = np.asarray(mlp(REFERENCES))[:, TARGET].mean(axis=0)
    delta = np.asarray(mlp(X))[np.arange(3), TARGET] - reference_mean
    np.testing.assert_allclose(np.asarray(got).sum(axis=1), delta, atol=1e-5)
    for batch_size in (2, 4):
        again = deeplift_shap(mlp, X, TARGET, baseline=REFERENCES, batch_size=batch_size)
        np.testing.assert_allclose(again, got, atol=1e-6)


# ------------------------ batching, keys and bad arguments --------------------------
STOCHASTIC = {
    "shapley_value_sampling": (shapley_game, {"samples": 2}),
    "kernel_shap": (kernel_game, {"samples": 6}),
    "lime": (lime_game, {"samples": 9, "alpha": 0.01, "distance": "cosine"}),
}


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_results_depend_on_neither_batch_size_nor_how_the_batch_is_split(name):
    run, options = STOCHASTIC[name]
    whole = run(X, TARGET, KEY, **options)
    np.testing.assert_allclose(run(X, TARGET, KEY, batch_size=4, **options), whole, atol=1e-5)
    # One example per call, each with its key of the whole batch, fold_in(KEY, i).
    keys = jax.vmap(lambda i: jax.random.fold_in(KEY, i))(jnp.arange(3))
    parts = [run(X[i : i + 1], TARGET[i : i + 1], keys[i : i + 1], **options) for i in range(3)]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-5)
    assert not np.allclose(run(X, TARGET, jax.random.key(4), **options), whole)


def test_feature_ablation_does_not_depend_on_batch_size():
    whole = ablation_game(X, TARGET)
    for batch_size in (2, 5):
        np.testing.assert_array_equal(ablation_game(X, TARGET, batch_size=batch_size), whole)


@pytest.mark.parametrize(
    "method", [shapley_value_sampling, kernel_shap, lime], ids=lambda m: m.__name__
)
def test_random_methods_refuse_to_run_without_a_key(method):
    with pytest.raises(ValueError, match=f"{method.__name__} draws random numbers"):
        method(linear, X, TARGET)


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="needs baseline="):
        deeplift_shap(mlp, X, TARGET)
    with pytest.raises(ValueError, match=r"batch of references \(M, 6\)"):
        deeplift_shap(mlp, X, TARGET, baseline=REFERENCES[0])
    with pytest.raises(ValueError, match="does not broadcast"):
        feature_ablation(linear, X, TARGET, feature_mask=np.zeros(4, int))
    with pytest.raises(ValueError, match="integer group ids"):
        kernel_shap(linear, X, TARGET, key=KEY, feature_mask=np.zeros(FEATURES))
    with pytest.raises(ValueError, match="samples must be an integer"):
        shapley_value_sampling(linear, X, TARGET, key=KEY, samples=0)
    with pytest.raises(ValueError, match="kernel_width"):
        lime(linear, X, TARGET, key=KEY, kernel_width=0.0)
    with pytest.raises(ValueError, match="distance must be one of"):
        lime(linear, X, TARGET, key=KEY, distance="l1")


def test_lime_weights_do_not_underflow_far_from_the_input():
    """exp(-d^2 / 2) underflows for every sample once d > ~13; the ridge normalises the
    weights, so they are taken relative to the largest and stay exact."""
    w = jnp.arange(64, dtype=jnp.float32).reshape(64, 1) / 64.0
    linear = lambda x: x.reshape(x.shape[0], -1) @ w  # noqa: E731
    x = testdata.uniform(jax.random.key(1), (2, 8, 8), minval=4.0, maxval=8.0)
    run = jax.jit(  # one program per width (a static option), not one per eager op
        lambda width: lime(
            linear,
            x,
            0,
            key=jax.random.key(2),
            samples=400,
            distance="euclidean",
            alpha=0.0,
            kernel_width=width,
        ),
        static_argnums=0,
    )
    # Distances of 10-40: every weight below 1e-20 in absolute terms, yet finite maps.
    assert bool(jnp.isfinite(run(1.0)).all())
    # Wide enough a kernel that the samples' weights are comparable: the linear model.
    np.testing.assert_allclose(run(50.0), x * w.reshape(8, 8), rtol=1e-3, atol=1e-3)
