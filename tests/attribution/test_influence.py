"""TracIn against known answers: a closed form for linear regression, an independent
per-example loop, symmetry, and the first-order change of a loss under one SGD step."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from fmi_jax.attribution import self_influence, tracin
from tests import testdata
from tests.tiny_models import MLP, cross_entropy, params_only


def squared_error(variables, example):
    x, y = example
    return 0.5 * (variables["w"] @ x + variables["b"] - y) ** 2


def test_linear_regression_closed_form():
    """grad = r (x, 1) with the residual r = w.x + b - y, so
    TracIn(z, z') = sum_c eta_c r_c(z) r_c(z') (x.x' + 1)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=7)
    xt, yt = rng.normal(size=(4, 3)), rng.normal(size=4)
    checkpoints = [
        {"w": jnp.asarray(rng.normal(size=3), jnp.float32), "b": jnp.float32(rng.normal())}
        for _ in range(3)
    ]
    rates = [0.1, 0.05, 0.01]
    expected = np.zeros((4, 7))
    for c, eta in zip(checkpoints, rates):
        w, b = np.asarray(c["w"], np.float64), float(c["b"])
        r_train, r_test = x @ w + b - y, xt @ w + b - yt
        expected += eta * np.outer(r_test, r_train) * (xt @ x.T + 1)
    data = (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    test = (jnp.asarray(xt, jnp.float32), jnp.asarray(yt, jnp.float32))
    for batch_size in (None, 3):
        got = tracin(
            squared_error, checkpoints, data, test, learning_rates=rates, batch_size=batch_size
        )
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # Only the weights: the "+ 1" of the bias goes.
    only_w = tracin(
        squared_error,
        checkpoints,
        data,
        test,
        learning_rates=rates,
        select=lambda path: path == "w",
    )
    expected_w = sum(
        eta
        * np.outer(
            xt @ np.asarray(c["w"]) + float(c["b"]) - yt, x @ np.asarray(c["w"]) + float(c["b"]) - y
        )
        * (xt @ x.T)
        for c, eta in zip(checkpoints, rates)
    )
    np.testing.assert_allclose(only_w, expected_w, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(1)
    shapes = jax.eval_shape(MLP().init, jax.random.key(0), jnp.zeros((1, 4)))
    checkpoints = [
        jax.tree.map(
            lambda s: jnp.asarray(rng.normal(0, 0.6, s.shape), s.dtype),
            shapes,
        )
        for _ in range(2)
    ]
    for c in checkpoints:  # running variances must be positive
        c["batch_stats"]["bn"]["var"] = jnp.abs(c["batch_stats"]["bn"]["var"]) + 0.5
    x = jnp.asarray(rng.normal(size=(9, 4)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, 9), jnp.int32)
    return checkpoints, (x, labels)


def test_tracin_is_the_sum_of_per_example_gradient_products(mlp):
    """An independent loop: jax.grad of each example's loss with respect to the
    parameters (batch-norm statistics held fixed), flattened with ravel_pytree."""
    checkpoints, (x, labels) = mlp
    rates = [0.3, 0.1]
    test = (x[:4], labels[:4])
    expected = np.zeros((4, 9))
    for variables, eta in zip(checkpoints, rates):

        def loss_of_params(params, example, stats=variables["batch_stats"]):
            return cross_entropy({"params": params, "batch_stats": stats}, example)

        def flat_grad(example, variables=variables, loss_of_params=loss_of_params):
            return ravel_pytree(jax.grad(loss_of_params)(variables["params"], example))[0]

        g_train = np.stack([flat_grad((x[j], labels[j])) for j in range(9)])
        g_test = np.stack([flat_grad((x[i], labels[i])) for i in range(4)])
        expected += eta * g_test @ g_train.T
    for batch_size in (None, 4):
        got = tracin(
            cross_entropy,
            checkpoints,
            (x, labels),
            test,
            learning_rates=rates,
            select=params_only,
            batch_size=batch_size,
        )
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # Test examples drawn from the training set: a symmetric block whose diagonal is
    # the self-influence.
    own = np.asarray(got)[:, :4]
    np.testing.assert_allclose(own, own.T, rtol=1e-5, atol=1e-6)
    influence = self_influence(
        cross_entropy,
        checkpoints,
        (x, labels),
        learning_rates=rates,
        select=params_only,
        batch_size=2,
    )
    np.testing.assert_allclose(np.diag(own), influence[:4], rtol=1e-5)
    assert np.all(np.asarray(influence) > 0)


def test_the_last_layer_alone(mlp):
    checkpoints, (x, labels) = mlp
    head = tracin(
        cross_entropy,
        checkpoints,
        (x, labels),
        (x[:2], labels[:2]),
        select=lambda path: path.startswith("params/head/"),
    )
    expected = np.zeros((2, 9))
    for variables in checkpoints:

        def loss_of_head(head, example, variables=variables):
            params = dict(variables["params"], head=head)
            return cross_entropy(dict(variables, params=params), example)

        def flat_grad(example, variables=variables, loss_of_head=loss_of_head):
            return ravel_pytree(jax.grad(loss_of_head)(variables["params"]["head"], example))[0]

        g = np.stack([flat_grad((x[j], labels[j])) for j in range(9)])
        expected += g[:2] @ g.T
    np.testing.assert_allclose(head, expected, rtol=1e-4, atol=1e-6)


def test_one_sgd_step_changes_the_test_loss_by_minus_tracin(mlp):
    """theta' = theta - eta grad l(theta, z): l(theta', z') - l(theta, z') =
    -TracIn(z, z') + O(eta^2), so the ratio tends to -1 as eta shrinks."""
    checkpoints, (x, labels) = mlp
    variables = checkpoints[0]
    z, test = (x[0], labels[0]), (x[5], labels[5])
    score = float(
        tracin(
            cross_entropy,
            [variables],
            (x[:1], labels[:1]),
            (x[5:6], labels[5:6]),
            select=params_only,
        )[0, 0]
    )
    gaps = []
    for eta in (1e-2, 1e-3):
        grad = jax.grad(lambda p: cross_entropy(dict(variables, params=p), z))(variables["params"])
        stepped = jax.tree.map(lambda p, g, eta=eta: p - eta * g, variables["params"], grad)
        before = float(cross_entropy(variables, test))
        after = float(cross_entropy(dict(variables, params=stepped), test))
        gaps.append(abs((after - before) / eta + score))
    assert abs(score) > 1e-3
    assert gaps[1] < 0.2 * gaps[0]  # the first-order error shrinks with eta
    assert gaps[1] < 0.05 * abs(score)


def test_nnx_parameters_integer_leaves_and_scalar_rates():
    """An NNX model's parameters (paths 'kernel', 'bias') give linear regression's
    closed form; an integer leaf is held fixed without select; a 0-d learning rate
    serves every checkpoint."""
    from flax import nnx

    rng = np.random.default_rng(3)
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    x, y = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=5).astype(np.float32)

    def loss(state, example):
        xi, yi = example
        return 0.5 * (nnx.merge(graphdef, state["params"])(xi[None])[0, 0] - yi) ** 2

    variables = {"params": params, "step": jnp.int32(7)}
    selected = []
    got = tracin(
        loss,
        [variables, variables],
        (x, y),
        (x[:2], y[:2]),
        learning_rates=np.float32(0.5),
        select=lambda path: selected.append(path) or path.startswith("params/"),
    )
    assert sorted(selected) == ["params/bias", "params/kernel", "step"]
    w, b = np.asarray(params["kernel"][...])[:, 0], float(params["bias"][...][0])
    r = x @ w + b - y
    expected = np.outer(r[:2], r) * (x[:2] @ x.T + 1)  # two checkpoints at rate 0.5
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # Without select, the integer step is simply not differentiated (one checkpoint,
    # rate 1: the same total).
    np.testing.assert_allclose(
        tracin(loss, [variables], (x, y), (x[:2], y[:2])),
        expected,
        rtol=1e-5,
        atol=1e-6,
    )


def test_bad_arguments_are_one_line_value_errors(mlp):
    checkpoints, (x, labels) = mlp
    data = (x, labels)

    def batch_loss(variables, batch):  # written for a batch: fails on one example
        logits = MLP().apply(variables, batch[0])
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), batch[1][:, None], 1).mean()

    cases = [
        (lambda: tracin(cross_entropy, [], data, data), "checkpoints is empty"),
        (lambda: tracin(cross_entropy, checkpoints[0], data, data), "sequence of parameter"),
        (
            lambda: tracin(cross_entropy, checkpoints, data, data, learning_rates=[1.0]),
            "2 checkpoints",
        ),
        (
            lambda: tracin(cross_entropy, checkpoints, data, data, select=lambda p: False),
            "chose none",
        ),
        (lambda: tracin(cross_entropy, checkpoints, (x, labels[:3]), data), "one common"),
        (
            lambda: tracin(cross_entropy, checkpoints, data, (x.at[0, 0].set(jnp.nan), labels)),
            "NaN",
        ),
        (lambda: tracin(cross_entropy, [checkpoints[0], {"w": x}], data, data), "structure"),
        (lambda: tracin(cross_entropy, checkpoints, data, data, batch_size=0), "batch_size"),
        (
            lambda: tracin(lambda v, e: MLP().apply(v, e[0][None]), checkpoints, data, data),
            "scalar loss",
        ),
        (
            lambda: self_influence(batch_loss, checkpoints, data),
            r"failed on one example \(.*\); it must be the scalar loss of one example",
        ),
        (lambda: self_influence(cross_entropy, checkpoints, {}), "holds no arrays"),
        (
            lambda: tracin(cross_entropy, checkpoints, data, data, learning_rates=-1.0),
            "non-negative",
        ),
        (
            lambda: tracin(
                cross_entropy,
                [checkpoints[0], jax.tree.map(lambda a: a[..., :1], checkpoints[1])],
                data,
                data,
            ),
            "checkpoints\\[1\\] has .* of shape",
        ),
        (
            lambda: tracin(
                lambda v, e: cross_entropy(v["m"], e),
                [{"m": checkpoints[0], "step": 1}],
                data,
                data,
                select=lambda path: True,
            ),
            "select chose step, of dtype int",
        ),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match) as error:
            call()
            pytest.fail(f"no error for {match!r}")
        assert "\n" not in str(error.value), str(error.value)


class TwoConv(nn.Module):
    """A conv layer named 'features' and a dense head: a layer to compare at."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3), padding="SAME", name="features")(x))
        return nn.Dense(4)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_similarity_influence_is_a_numpy_nearest_neighbour_search(metric):
    """On the inputs (layer=None) and at a conv layer: numpy's ranking of the flattened
    activations, any chunking; a test example that is also a training example finds
    itself first (similarity 1, distance exactly 0)."""
    from fmi_jax.attribution import flax_model, layer_activations, similarity_influence

    rng = np.random.default_rng(4)
    train = rng.uniform(size=(9, 4, 4, 2)).astype(np.float32)
    test = np.concatenate([train[[6]], rng.uniform(size=(2, 4, 4, 2))]).astype(np.float32)
    model = TwoConv()
    handle = flax_model(model, testdata.init(model, jnp.zeros((1, 4, 4, 2))))

    def expected(a, b):
        a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1)
        if metric == "cosine":
            table = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (
                b / np.linalg.norm(b, axis=1, keepdims=True)
            ).T
            return np.argsort(-table, axis=1, kind="stable"), -np.sort(-table, axis=1)
        table = np.linalg.norm(a[:, None] - b[None], axis=2)
        return np.argsort(table, axis=1, kind="stable"), np.sort(table, axis=1)

    for layer in (None, "features"):
        if layer is None:
            want = expected(test, train)
        else:
            acts = np.asarray(
                layer_activations(handle, jnp.concatenate([test, train]), layer=layer)
            )
            want = expected(acts[:3], acts[3:])
        for batch_size in (None, 4):
            got = similarity_influence(
                handle, test, train, layer=layer, metric=metric, top_k=3, batch_size=batch_size
            )
            np.testing.assert_array_equal(got.indices, want[0][:, :3])
            np.testing.assert_allclose(got.scores, want[1][:, :3], rtol=2e-5, atol=2e-6)
        assert got.indices[0, 0] == 6
        assert got.scores[0, 0] == (0.0 if metric == "euclidean" else pytest.approx(1.0, abs=1e-6))


def test_similarity_influence_ties_zero_rows_and_errors():
    from fmi_jax.attribution import similarity_influence

    train = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 1.0]], np.float32)
    test = np.array([[3.0, 0.0], [0.0, 0.0]], np.float32)
    got = similarity_influence(None, test, train, top_k=4)
    # Cosine ignores the scale: rows 0 and 1 tie at 1, in the training set's order; a
    # zero row has similarity 0 with everything (Captum's replace_nan=0).
    np.testing.assert_array_equal(got.indices[0], [0, 1, 2, 3])
    np.testing.assert_allclose(got.scores[0], [1, 1, 0, 0], atol=1e-7)
    np.testing.assert_allclose(got.scores[1], [0, 0, 0, 0])
    for kwargs, message in (
        ({"metric": "dot"}, "metric must be one of"),
        ({"top_k": 5}, "top_k must be in"),
        ({"layer": "features"}, "flax_model"),
    ):
        with pytest.raises(ValueError, match=message):
            similarity_influence(lambda x: x, test, train, **kwargs)
    with pytest.raises(ValueError, match="differ"):
        similarity_influence(None, test, train[:, :1])
