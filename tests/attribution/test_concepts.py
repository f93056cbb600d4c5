"""TCAV against known answers.

The model is conv "hidden" (3 x 3) -> softplus -> conv "top" (1 x 1) -> flatten ->
dense, so after "top" the network is linear: dy_t/dA is the dense kernel's column t,
the same for every input, and the conceptual sensitivity along any CAV is a closed
form. At "hidden" the rest of the network is nonlinear; there the directional
derivative is checked against central differences of the logits with the layer's
output moved along the CAV.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from fmi_jax.attribution import concepts, flax_model
from fmi_jax.attribution.concepts import (
    ConceptVector,
    concept_activation_vector,
    concept_sensitivity,
    fit_cavs,
    layer_activations,
    t_test,
    tcav,
    tcav_score,
)

SIDE, CLASSES = 5, 3


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        a = nn.softplus(nn.Conv(3, (3, 3), padding="SAME", name="hidden")(x))
        a = nn.Conv(2, (1, 1), name="top")(a)
        return nn.Dense(CLASSES, name="head")(a.reshape(a.shape[0], -1))


@pytest.fixture(scope="module")
def net():
    """(handle, variables, x): NumPy-drawn weights, six images."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(Net().init, jax.random.key(0), jnp.zeros((1, SIDE, SIDE, 1)))
    variables = jax.tree.map(
        lambda leaf: jnp.asarray(rng.normal(0.0, 0.5, leaf.shape), leaf.dtype), shapes
    )
    x = jnp.asarray(rng.normal(size=(6, SIDE, SIDE, 1)), jnp.float32)
    return flax_model(Net(), variables, train=False), variables, x


def head_column(variables, target):
    """dy_t/dA at "top", shaped like one activation."""
    kernel = np.asarray(variables["params"]["head"]["kernel"])  # (h w K, classes)
    return kernel[:, target].reshape(SIDE, SIDE, 2)


def test_layer_activations_are_the_captured_layer_in_any_chunking(net):
    handle, _, x = net
    expected = handle.capture(x, "hidden")[1]
    for batch_size in (None, 4):
        got = layer_activations(handle, x, layer="hidden", batch_size=batch_size)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_sensitivity_after_a_linear_head_is_the_head_column_along_the_cav(net):
    handle, variables, x = net
    rng = np.random.default_rng(1)
    cavs = rng.normal(size=(4, SIDE, SIDE, 2))
    units = cavs.reshape(4, -1) / np.linalg.norm(cavs.reshape(4, -1), axis=1, keepdims=True)
    for target in (0, 2):
        expected = head_column(variables, target).reshape(-1) @ units.T  # (4,)
        got = concept_sensitivity(handle, x, target, layer="top", cav=cavs, batch_size=4)
        assert got.shape == (6, 4)
        np.testing.assert_allclose(got, np.broadcast_to(expected, (6, 4)), rtol=1e-5, atol=1e-6)
        # One CAV, flattened or activation-shaped, scaled: (N,) and the same values.
        single = concept_sensitivity(handle, x, target, layer="top", cav=3.0 * cavs[1])
        np.testing.assert_allclose(single, got[:, 1], rtol=1e-5, atol=1e-6)


def test_sensitivity_in_a_nonlinear_network_is_the_directional_derivative(net):
    handle, _, x = net
    direction = np.random.default_rng(2).normal(size=(SIDE, SIDE, 3))
    unit = jnp.asarray(direction / np.linalg.norm(direction), jnp.float32)
    activation = handle.capture(x, "hidden")[1]
    target = np.array([0, 1, 2, 0, 1, 2], np.int32)

    def logit(value):
        return np.asarray(handle.logits_with(x, "hidden", value))[np.arange(6), target]

    eps = 1e-2
    central = (logit(activation + eps * unit) - logit(activation - eps * unit)) / (2 * eps)
    got = concept_sensitivity(handle, x, target, layer="hidden", cav=direction)
    np.testing.assert_allclose(got, central, rtol=1e-3, atol=1e-4)
    # target=None is the predicted class.
    predicted = np.asarray(handle(x)).argmax(axis=1)
    np.testing.assert_array_equal(
        concept_sensitivity(handle, x, layer="hidden", cav=direction),
        concept_sensitivity(handle, x, predicted, layer="hidden", cav=direction),
    )


def fitted_problem(seed=3, count=(14, 19), dims=12):
    rng = np.random.default_rng(seed)
    concept = rng.normal(size=(count[0], dims)) + np.linspace(0.0, 1.0, dims)
    random = rng.normal(size=(count[1], dims))
    return concept, random


def training_rows(values, fraction):
    return values[~concepts.held_out(len(values), fraction)]


def test_logistic_cav_is_the_stationary_point_of_the_regularised_loss():
    """Checked in float64 from the returned weights alone: the gradient of
    mean log(1 + exp(-y (w.a + b))) + (l2 / 2) |w|^2 in w and in b vanishes."""
    concept, random = fitted_problem()
    for l2, fraction in ((0.01, 1 / 3), (1.0, 0.0), (1e-3, 0.25)):
        cav = concept_activation_vector(concept, random, l2=l2, test_fraction=fraction)
        a = np.concatenate([training_rows(concept, fraction), training_rows(random, fraction)])
        y = np.concatenate(
            [
                np.ones(len(a) - len(training_rows(random, fraction))),
                -np.ones(len(training_rows(random, fraction))),
            ]
        )
        w = cav.weights.astype(np.float64)
        p = 1.0 / (1.0 + np.exp(y * (a @ w + cav.bias)))
        grad_w = -(a.T @ (y * p)) / len(y) + l2 * w
        grad_b = -np.mean(y * p)
        # float32 weights: the gradient is zero up to their rounding.
        assert np.abs(grad_w).max() < 1e-6
        assert abs(grad_b) < 1e-6
        assert math.isnan(cav.accuracy) == (fraction == 0)


def test_logistic_cav_tends_to_the_mean_difference_as_l2_grows():
    """At w = 0 with the best bias the loss gradient is -(n_c n_r / n^2) (mean_c - mean_r)
    for any set sizes, so strong regularisation gives the mean-difference direction."""
    concept, random = fitted_problem(count=(9, 20))
    strong = concept_activation_vector(concept, random, l2=1e6)
    means = concept_activation_vector(concept, random, classifier="mean_difference")
    np.testing.assert_allclose(strong.direction @ means.direction, 1.0, atol=1e-6)
    expected = training_rows(concept, 1 / 3).mean(0) - training_rows(random, 1 / 3).mean(0)
    np.testing.assert_allclose(means.weights, expected, rtol=1e-6)
    # A weak penalty fits a different boundary.
    assert concept_activation_vector(concept, random, l2=1e-3).direction @ means.direction < 0.99


def test_swapping_concept_and_random_negates_the_cav():
    concept, random = fitted_problem(count=(12, 12))
    for classifier in concepts.CAV_CLASSIFIERS:
        forward = concept_activation_vector(concept, random, classifier=classifier)
        backward = concept_activation_vector(random, concept, classifier=classifier)
        np.testing.assert_allclose(backward.weights, -forward.weights, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(backward.bias, -forward.bias, rtol=1e-6, atol=1e-9)
        assert backward.accuracy == forward.accuracy


def test_held_out_accuracy_counts_the_evenly_spaced_examples():
    """With test_fraction 1/3, examples 2 and 5 of each set of six are held out."""
    np.testing.assert_array_equal(np.flatnonzero(concepts.held_out(6, 1 / 3)), [2, 5])
    concept = np.ones((6, 2)) * [1.0, 0.0]
    concept[2] = [-5.0, 0.0]  # held out, on the random side of the boundary
    random = -np.ones((6, 2)) * [1.0, 0.0]
    cav = concept_activation_vector(concept, random, classifier="mean_difference")
    np.testing.assert_allclose(cav.weights, [2.0, 0.0])
    assert cav.bias == 0.0
    assert cav.accuracy == 0.75  # 3 of the 4 held-out examples
    assert concept_activation_vector(concept, random).accuracy == 0.75


def test_logistic_cav_survives_saturated_margins_and_shared_offsets():
    """68 rows in 2,000 dimensions are separable; at scales of 3e5 and 3e6 every margin
    saturates (the bias's curvature underflows to 0, which made an undamped Newton
    system singular). The fit still ends at the stationary point. An offset shared by
    every row only moves the bias: the weights stay the same."""
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(34), -np.ones(34)]
    for scale in (3e3, 3e4, 3e5, 3e6):
        concept = np.abs(rng.normal(size=(34, 2000))) * scale + 0.5
        random = np.abs(rng.normal(size=(34, 2000))) * scale
        cav = concept_activation_vector(concept, random, test_fraction=0.0)
        a = np.concatenate([concept, random])
        w = cav.weights.astype(np.float64)
        p = np.exp(-np.logaddexp(0.0, y * (a @ w + cav.bias)))
        # Relative to the size of each term: float32 weights round both by ~1e-7.
        grad_w = -(a.T @ (y * p)) / len(y) + 0.01 * w
        assert np.abs(grad_w).max() <= 1e-5 * np.abs(0.01 * w).max(), scale
        assert math.isnan(cav.accuracy)  # nothing held out
    concept = rng.normal(size=(34, 300)) + 2.0
    random = rng.normal(size=(34, 300))
    plain = concept_activation_vector(concept, random)
    shifted = concept_activation_vector(concept + 1e4, random + 1e4)
    np.testing.assert_allclose(shifted.weights, plain.weights, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(
        shifted.bias + 1e4 * shifted.weights.astype(np.float64).sum(), plain.bias, rtol=1e-4
    )
    # numpy scalars are numbers too.
    concept_activation_vector(concept, random, l2=np.float32(0.01), test_fraction=np.float64(0.25))


def test_round_off_is_not_a_concept():
    """Sets the classifier cannot tell apart give a CAV of round-off size: refused, not
    returned as a random direction."""
    rng = np.random.default_rng(7)
    same = np.tile(rng.normal(size=(1, 20)), (9, 1))
    with pytest.raises(ValueError, match="cannot be told apart"):
        concept_activation_vector(same[:6], same)
    values = rng.normal(size=(12, 20)) * 1e3
    for classifier in concepts.CAV_CLASSIFIERS:
        with pytest.raises(ValueError, match="cannot be told apart"):
            concept_activation_vector(
                values, values[::-1], classifier=classifier, test_fraction=0.0
            )


def test_tcav_score_known_answers():
    sign_count, magnitude = tcav_score(np.array([1.0, -1.0, 2.0, 0.0]))
    assert float(sign_count) == 0.5
    np.testing.assert_allclose(magnitude, 0.75)
    sign_count, magnitude = tcav_score(np.array([[1.0, 0.0], [-3.0, 0.0]]))
    np.testing.assert_allclose(sign_count, [0.5, 0.0])
    np.testing.assert_allclose(magnitude[0], 0.25)
    assert np.isnan(magnitude[1])


def test_t_test_matches_scipy_and_the_closed_form_for_two_degrees_of_freedom():
    rng = np.random.default_rng(4)
    for size_a, size_b in ((5, 5), (3, 8), (10, 4)):
        a, b = rng.normal(size=size_a), rng.normal(0.7, 2.0, size=size_b)
        expected = scipy.stats.ttest_ind(a, b).pvalue
        np.testing.assert_allclose(t_test(a, b), expected, rtol=1e-10)
    # Far in the tail, in float64.
    a, b = np.linspace(0.0, 1.0, 20), np.linspace(5.0, 6.0, 20)
    np.testing.assert_allclose(t_test(a, b), scipy.stats.ttest_ind(a, b).pvalue, rtol=1e-9)
    assert 0 < t_test(a, b) < 1e-30
    # df = 2: P(|T| > |t|) = 1 - |t| / sqrt(2 + t^2).
    a, b = np.array([0.0, 1.0]), np.array([2.0, 4.0])
    pooled = (0.5 + 2.0) / 2
    t = (0.5 - 3.0) / math.sqrt(pooled * (1 / 2 + 1 / 2))
    np.testing.assert_allclose(t_test(a, b), 1 - abs(t) / math.sqrt(2 + t * t), rtol=1e-12)
    assert t_test([1.0, 1.0], [1.0, 1.0]) == 1.0
    assert t_test([1.0, 1.0], [0.0, 0.0]) == 0.0


@pytest.fixture(scope="module")
def tested(net):
    """tcav at "top" for class 0: one concept built to raise y_0, four random sets."""
    handle, variables, x = net
    rng = np.random.default_rng(5)
    random_sets = rng.normal(size=(4, 12, SIDE, SIDE, 1)).astype(np.float32)
    # A pattern that raises y_0: the input whose "top" activation best aligns with the
    # head column of class 0 is not closed form, so take the gradient of y_0 itself.
    pattern = np.asarray(jax.grad(lambda z: handle(z)[:, 0].sum())(jnp.zeros((1, SIDE, SIDE, 1))))
    pattern = 3.0 * pattern / np.abs(pattern).max()
    images = rng.normal(size=(12, SIDE, SIDE, 1)).astype(np.float32) + pattern
    cavs = fit_cavs(
        handle,
        layer="top",
        concepts={"raises y_0": images},
        random_sets=random_sets,
        batch_size=5,
    )
    results = tcav(handle, x, 0, cavs=cavs, batch_size=4)
    return results, handle, variables, x, images, random_sets, cavs


def test_tcav_is_the_composition_of_its_parts(tested):
    results, handle, variables, x, images, random_sets, _ = tested
    result = results["raises y_0"]
    acts = [np.asarray(layer_activations(handle, s, layer="top")) for s in random_sets]
    concept_acts = np.asarray(layer_activations(handle, images, layer="top"))
    column = head_column(variables, 0).reshape(-1)
    for i in range(4):
        cav = concept_activation_vector(concept_acts, acts[i])
        # Linear after "top": every example has the same sensitivity, sign count 0 or 1.
        assert result.sign_count[i] == float(column @ cav.direction.reshape(-1) > 0)
        assert result.accuracy[i] == cav.accuracy
        null = concept_activation_vector(acts[(i + 1) % 4], acts[i])
        assert result.null_sign_count[i] == float(column @ null.direction.reshape(-1) > 0)
        assert result.null_accuracy[i] == null.accuracy
        s = concept_sensitivity(handle, x, 0, layer="top", cav=cav)
        np.testing.assert_allclose(result.magnitude[i], tcav_score(s)[1], rtol=1e-6)
    np.testing.assert_allclose(
        result.p_value, t_test(result.sign_count, result.null_sign_count), rtol=1e-12
    )
    assert result.significant == (result.p_value < 0.05)


def test_one_bank_of_cavs_serves_every_class(tested):
    """The CAVs do not depend on the class: after the linear head, class t's sign count
    along a CAV is whether the head's column t points along it."""
    _, handle, variables, x, _, _, cavs = tested
    for target in (1, 2):
        result = tcav(handle, x, target, cavs=cavs)["raises y_0"]
        column = head_column(variables, target).reshape(-1)
        expected = [
            float(column @ c.direction.reshape(-1) > 0) for c in cavs.concepts["raises y_0"]
        ]
        np.testing.assert_array_equal(result.sign_count, expected)
        expected = [float(column @ c.direction.reshape(-1) > 0) for c in cavs.null]
        np.testing.assert_array_equal(result.null_sign_count, expected)


def test_a_concept_built_to_raise_the_logit_scores_one(tested):
    result = tested[0]["raises y_0"]
    np.testing.assert_array_equal(result.sign_count, 1.0)
    np.testing.assert_array_equal(result.magnitude, 1.0)
    assert np.all(result.accuracy == 1.0)


def test_bad_arguments_are_one_line_value_errors(net, tested):
    handle, _, x = net
    bank = tested[-1]
    concept, random = fitted_problem()
    cases = [
        (lambda: concept_activation_vector(concept, random, classifier="svm"), "classifier"),
        (lambda: concept_activation_vector(concept, random, l2=0.0), "l2"),
        (lambda: concept_activation_vector(concept, random, test_fraction=1.0), "test_fraction"),
        (lambda: concept_activation_vector(concept, random[:, :5]), "differ in shape"),
        (lambda: concept_activation_vector(concept[:1], random), "at least 2"),
        (lambda: concept_activation_vector(concept[:5], random, test_fraction=0.1), "holds out no"),
        (lambda: concept_activation_vector(np.where(concept > 0, np.nan, 0), random), "NaN"),
        (lambda: concept_activation_vector(random, random), "cannot be told apart"),
        (lambda: concept_sensitivity(handle, x, layer="top", cav=np.ones(7)), "cav has shape"),
        (lambda: concept_sensitivity(handle, x, layer="top", cav=np.zeros(50)), "zero vector"),
        (
            lambda: concept_sensitivity(handle, x, layer="top", cav=np.ones(50), baseline=0.0),
            "baseline",
        ),
        (lambda: concept_sensitivity(handle, x, layer="nope", cav=np.ones(50)), "nope"),
        (
            lambda: concept_sensitivity(handle.__call__, x, layer="top", cav=np.ones(50)),
            "flax_model",
        ),
        (lambda: fit_cavs(handle, layer="top", concepts={}, random_sets=[x, x]), "concepts"),
        (
            lambda: fit_cavs(handle, layer="top", concepts={"c": x}, random_sets=x[None]),
            "at least 2",
        ),
        (
            lambda: fit_cavs(handle, layer="top", concepts={"c": x[..., 0]}, random_sets=[x, x]),
            "images",
        ),
        (lambda: fit_cavs(handle, layer="nope", concepts={"c": x}, random_sets=[x, x]), "nope"),
        (lambda: tcav(handle, x, cavs={"c": x}), "ConceptBank"),
        (lambda: tcav(handle, x, cavs=bank, alpha=1), "alpha"),
        (lambda: tcav(handle, x, cavs=bank._replace(layer="hidden")), "cav has shape"),
        (lambda: tcav(handle, x, cavs=bank._replace(null=bank.null[:3])), "one CAV per random"),
        (
            lambda: tcav(
                handle,
                x,
                cavs=bank._replace(
                    null=(bank.null[0]._replace(weights=0 * bank.null[0].weights),) + bank.null[1:]
                ),
            ),
            "zero or non-finite",
        ),
        (lambda: tcav_score(np.zeros((2, 2, 2))), "sensitivities"),
        (lambda: t_test([1.0], [1.0, 2.0]), "at least 2"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match) as error:
            call()
            pytest.fail(f"no error for {match!r}")
        assert "\n" not in str(error.value), str(error.value)


def test_a_concept_vector_is_accepted_as_the_cav(net):
    handle, _, x = net
    cav = ConceptVector(np.ones((SIDE, SIDE, 2), np.float32), 0.0, 1.0)
    np.testing.assert_allclose(
        concept_sensitivity(handle, x, 1, layer="top", cav=cav),
        concept_sensitivity(handle, x, 1, layer="top", cav=np.ones(50)),
        rtol=1e-6,
    )
