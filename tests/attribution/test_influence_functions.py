"""Influence functions against known answers: the derivative of a retrained ridge and
logistic regression's test loss with respect to a training example's weight, an
independently formed Hessian (``jax.hessian`` of the flattened parameters) and
NumPy's eigendecomposition of it, a diagonal Hessian of known spectrum for the
Arnoldi solver, and self-influence as the diagonal of the score matrix."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from fmi_jax.attribution import (
    HessianEigen,
    hessian_eigen,
    influence_function,
    influence_function_self,
)
from tests.tiny_models import MLP, cross_entropy, params_only


def features(x):
    """``(x, 1)``: the design matrix of a linear model with a bias."""
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def linear_loss(kind):
    def loss(variables, example):
        x, y = example
        score = variables["w"] @ x + variables["b"]
        if kind == "squared":
            return 0.5 * (score - y) ** 2
        return jax.nn.softplus(score) - y * score  # logistic, y in {0, 1}

    return loss


def fit(phi, y, weights, damping, kind):
    """The minimum of ``sum_i weights_i l_i + damping / 2 |theta|^2`` in float64:
    a linear solve for squared error, Newton's method for the logistic loss."""
    theta = np.zeros(phi.shape[1])
    for _ in range(1 if kind == "squared" else 50):
        score = phi @ theta
        if kind == "squared":
            residual, curvature = score - y, np.ones_like(score)
        else:
            p = 1 / (1 + np.exp(-score))
            residual, curvature = p - y, p * (1 - p)
        gradient = phi.T @ (weights * residual) + damping * theta
        hessian = phi.T @ (phi * (weights * curvature)[:, None]) + damping * np.eye(len(theta))
        theta = theta - np.linalg.solve(hessian, gradient)
    return theta


def held_out_loss(theta, phi_t, y_t, kind):
    score = phi_t @ theta
    if kind == "squared":
        return 0.5 * (score - y_t) ** 2
    return np.logaddexp(0, score) - y_t * score


@pytest.mark.parametrize("kind", ["squared", "logistic"])
@pytest.mark.parametrize("solver", ["exact", "arnoldi"])
def test_the_score_is_minus_the_derivative_of_the_retrained_test_loss(kind, solver):
    """Upweighting training example j by eps moves the regularised minimum; the test
    loss's derivative at eps = 0, by central differences of two float64 refits, is
    ``-IF(z_j, z')``. The logistic loss is not quadratic, so its Hessian depends on
    the fit; the Arnoldi solver with as many steps as parameters is exact."""
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(20, 3)), rng.normal(size=(4, 3))
    if kind == "squared":
        y, yt = x @ [1.0, -2.0, 0.5] + rng.normal(size=20), rng.normal(size=4)
    else:
        y, yt = (rng.random(20) < 0.5).astype(float), (rng.random(4) < 0.5).astype(float)
    damping = 0.7
    phi, phi_t = features(x), features(xt)
    theta = fit(phi, y, np.ones(20), damping, kind)
    eps = 1e-5
    expected = np.zeros((4, 20))
    for j in range(20):
        losses = []
        for sign in (1, -1):
            weights = np.ones(20)
            weights[j] += sign * eps
            losses.append(held_out_loss(fit(phi, y, weights, damping, kind), phi_t, yt, kind))
        expected[:, j] = -(losses[0] - losses[1]) / (2 * eps)
    variables = {"w": jnp.asarray(theta[:3], jnp.float32), "b": jnp.float32(theta[3])}
    loss = linear_loss(kind)
    train = (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    test = (jnp.asarray(xt, jnp.float32), jnp.asarray(yt, jnp.float32))
    options = dict(solver="arnoldi", key=jax.random.key(1)) if solver == "arnoldi" else {}
    hessian = hessian_eigen(loss, variables, train, batch_size=6, **options)
    assert hessian.vectors.shape == (4, 4) and hessian.paths == ("b", "w")
    got = influence_function(loss, variables, train, test, hessian, damping=damping)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5 * np.abs(expected).max())
    # Removing an example (eps = -1) moves the test loss by about the score: for the
    # quadratic loss the first-order prediction has the right sign for every pair.
    if kind == "squared":
        without = np.stack(
            [
                held_out_loss(fit(phi, y, np.arange(20) != j, damping, kind), phi_t, yt, kind)
                for j in range(20)
            ],
            axis=1,
        )
        change = without - held_out_loss(theta, phi_t, yt, kind)[:, None]
        large = np.abs(expected) > 0.1 * np.abs(expected).max()
        assert np.all(np.sign(change[large]) == np.sign(expected[large]))


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(2)
    shapes = jax.eval_shape(MLP().init, jax.random.key(0), jnp.zeros((1, 3)))
    variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.8, s.shape), s.dtype), shapes)
    variables["batch_stats"]["bn"]["var"] = jnp.abs(variables["batch_stats"]["bn"]["var"]) + 0.5
    x = jnp.asarray(rng.normal(size=(12, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, 12), jnp.int32)
    # The Hessian and gradients formed independently: jax.hessian and jax.grad of the
    # flattened parameters, batch-norm statistics fixed.
    flat, unravel = ravel_pytree(variables["params"])

    def example_loss(theta, example):
        return cross_entropy(dict(variables, params=unravel(theta)), example)

    hessian = np.asarray(
        jax.vmap(jax.hessian(example_loss), (None, 0))(flat, (x, labels)), np.float64
    ).sum(axis=0)
    grads = np.asarray(jax.vmap(jax.grad(example_loss), (None, 0))(flat, (x, labels)), np.float64)
    return variables, (x, labels), hessian, grads


def numpy_influence(hessian, g_test, g_train, damping, rank=None, min_eigenvalue=0.0):
    values, vectors = np.linalg.eigh(hessian)
    values, vectors = values[::-1][:rank], vectors[:, ::-1][:, :rank]
    shifted = values + damping
    keep = shifted > min_eigenvalue
    u = vectors[:, keep]
    return (g_test @ u) / shifted[keep] @ (g_train @ u).T


def test_a_hessian_of_low_rank_is_inverted_on_its_range_by_default():
    """Fewer examples than parameters: ``H = Phi^T Phi`` of a least-squares fit has rank
    N < P, and float32 returns its P - N zero eigenvalues as noise. The default cut-off
    leaves them out, so the scores are those of the float64 pseudo-inverse."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(8, 20)).astype(np.float32)
    y = rng.normal(size=8).astype(np.float32)
    variables = {"w": (0.3 * rng.normal(size=20)).astype(np.float32), "b": np.float32(0.1)}
    test = (rng.normal(size=(3, 20)).astype(np.float32), rng.normal(size=3).astype(np.float32))
    loss = linear_loss("squared")
    eigen = hessian_eigen(loss, variables, (x, y))
    theta = np.append(variables["w"], variables["b"]).astype(np.float64)

    def grads(inputs, targets):  # of 0.5 (phi . theta - y)^2, per example
        phi = features(inputs.astype(np.float64))
        return phi * (phi @ theta - targets)[:, None]

    phi = features(x.astype(np.float64))
    # The test gradients leave the training span: the null space is where it matters.
    expected = grads(*test) @ np.linalg.pinv(phi.T @ phi, hermitian=True) @ grads(x, y).T
    got = influence_function(loss, variables, (x, y), test, eigen)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    own = influence_function_self(loss, variables, test, eigen)
    reference = np.einsum("ip,pq,iq->i", grads(*test), np.linalg.pinv(phi.T @ phi), grads(*test))
    np.testing.assert_allclose(own, reference, rtol=1e-3)


def test_an_indefinite_hessian_truncated_by_rank_and_curvature(mlp):
    """A network's Hessian has negative eigenvalues. The exact solver's eigenpairs
    match NumPy's of the independently formed Hessian; scores with a rank, a damping
    and a curvature cut-off match the same truncation done in NumPy; any batch size
    gives the same; self-influence is the diagonal of the scores of the data on itself."""
    variables, (x, labels), hessian, grads = mlp
    reference = np.linalg.eigvalsh(hessian)[::-1]
    assert reference.min() < -1e-3  # the case the cut-off exists for
    eigen = hessian_eigen(cross_entropy, variables, (x, labels), select=params_only)
    size = hessian.shape[0]
    assert eigen.vectors.shape == (size, size)
    scale = np.abs(reference).max()
    np.testing.assert_allclose(eigen.values, reference, atol=2e-5 * scale)
    np.testing.assert_allclose(eigen.vectors.T @ eigen.vectors, np.eye(size), atol=2e-5)
    test = (x[:5], labels[:5])
    for rank, damping, cut in ((None, 0.3, 0.05), (6, 0.0, 1e-2), (20, 0.05, 0.3)):
        truncated = (
            eigen
            if rank is None
            else dataclasses.replace(
                eigen, values=eigen.values[:rank], vectors=eigen.vectors[:, :rank]
            )
        )
        expected = numpy_influence(hessian, grads[:5], grads, damping, rank, cut)
        for batch_size in (None, 5) if rank is None else (5,):
            got = influence_function(
                cross_entropy,
                variables,
                (x, labels),
                test,
                truncated,
                damping=damping,
                min_eigenvalue=cut,
                batch_size=batch_size,
            )
            np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
        own = influence_function_self(
            cross_entropy, variables, test, truncated, damping=damping, min_eigenvalue=cut
        )
        np.testing.assert_allclose(own, np.diag(expected[:, :5]), rtol=1e-3, atol=1e-6)
    assert hessian_eigen(
        cross_entropy, variables, (x, labels), rank=3, select=params_only, batch_size=5
    ).values.shape == (3,)


def test_arnoldi_finds_the_top_of_a_known_spectrum():
    """``l(theta, z_i) = mu_i theta_i^2 / 2`` over one example per parameter: H is
    diagonal with the mu_i, five well separated at the top and 395 in [0, 1]. Forty
    Arnoldi steps recover the five eigenvalues and the unit vectors; a different start
    (key) gives the same pairs up to sign."""
    rng = np.random.default_rng(4)
    top = np.array([100.0, 80.0, 60.0, 45.0, 30.0])
    mu = np.concatenate([top, rng.random(395)]).astype(np.float32)
    order = rng.permutation(400)
    mu = mu[order]
    data = (jnp.asarray(mu), jnp.arange(400, dtype=jnp.int32))

    def loss(variables, example):
        weight, index = example
        return 0.5 * weight * variables["theta"][index] ** 2

    variables = {"theta": jnp.zeros(400, jnp.float32)}
    expected = np.argsort(-mu)[:5]
    for key in (0, 1):
        eigen = hessian_eigen(
            loss,
            variables,
            data,
            solver="arnoldi",
            iterations=40,
            rank=5,
            key=jax.random.key(key),
            batch_size=128,
        )
        np.testing.assert_allclose(eigen.values, top, rtol=1e-4)
        for k in range(5):
            assert abs(float(eigen.vectors[expected[k], k])) > 1 - 1e-4


def test_the_default_cut_off_keeps_curvature_float32_resolves():
    """H = diag(mu) with mu from 1000 down to 1.5e-5 of it (126 float32 eps, far above
    an eigendecomposition's rounding): every direction is kept, and the self-influence
    of example i, ``(mu_i theta_i)^2 / mu_i = mu_i theta_i^2``, is exact for all."""
    size = 200
    mu = np.geomspace(1000.0, 1000.0 * 1.5e-5, size).astype(np.float32)
    theta = np.linspace(1.0, 2.0, size).astype(np.float32)
    data = (jnp.asarray(mu), jnp.arange(size, dtype=jnp.int32))

    def loss(variables, example):
        weight, index = example
        return 0.5 * weight * variables["theta"][index] ** 2

    variables = {"theta": jnp.asarray(theta)}
    eigen = hessian_eigen(loss, variables, data, batch_size=100)
    own = influence_function_self(loss, variables, data, eigen, batch_size=100)
    np.testing.assert_allclose(own, mu * theta**2, rtol=2e-2)


def low_rank_problem(size=50, examples=10):
    """``l(w, (a, b)) = (w . a - b)^2 / 2`` over ``examples`` < ``size`` rows: H = A^T A
    has rank ``examples``, the rest of the space is its null space."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(examples, size))
    data = (jnp.asarray(a, jnp.float32), jnp.asarray(rng.normal(size=examples), jnp.float32))

    def loss(variables, example):
        row, target = example
        return 0.5 * (variables["w"] @ row - target) ** 2

    return loss, {"w": jnp.zeros(size, jnp.float32)}, data, a.T @ a


@pytest.mark.parametrize("iterations", [12, 30, 50])
def test_arnoldi_past_an_invariant_subspace(iterations):
    """Once the Krylov space holds H's range (10 directions here), every new direction
    is rounding error; Arnoldi must not normalise it into the basis. The top
    eigenvalues stay NumPy's, the vectors orthonormal, at any number of steps (50 = P
    spans the whole space)."""
    loss, variables, data, hessian = low_rank_problem()
    eigen = hessian_eigen(
        loss,
        variables,
        data,
        solver="arnoldi",
        iterations=iterations,
        rank=10,
        key=jax.random.key(0),
    )
    reference = np.linalg.eigvalsh(hessian)[::-1][:10]
    np.testing.assert_allclose(eigen.values, reference, rtol=1e-4, atol=1e-4 * reference[0])
    np.testing.assert_allclose(eigen.vectors.T @ eigen.vectors, np.eye(10), atol=1e-4)
    np.testing.assert_allclose(
        hessian @ np.asarray(eigen.vectors, np.float64),
        np.asarray(eigen.vectors) * reference,
        atol=1e-3 * reference[0],
    )


def test_arnoldi_with_an_unused_parameter_and_a_repeated_eigenvalue():
    """A selected leaf the loss never reads (a zero block of H) and an eigenvalue of
    multiplicity three: a Krylov space from one start holds one vector of each
    eigenspace, so only directions drawn afresh reach the rest. With iterations = P
    the eigenvalues are all of H's."""
    mu = np.array([5.0, 5.0, 5.0, 2.0, 1.0, 1.0], np.float32)

    def loss(variables, example):
        weight, index = example
        return 0.5 * weight * variables["theta"][index] ** 2 + 0.0 * jnp.sum(variables["aux"])

    variables = {"aux": jnp.zeros(4, jnp.float32), "theta": jnp.zeros(6, jnp.float32)}
    data = (jnp.asarray(mu), jnp.arange(6, dtype=jnp.int32))
    eigen = hessian_eigen(
        loss, variables, data, solver="arnoldi", iterations=10, rank=10, key=jax.random.key(3)
    )
    np.testing.assert_allclose(
        eigen.values, np.concatenate([np.sort(mu)[::-1], np.zeros(4)]), atol=1e-5
    )
    np.testing.assert_allclose(eigen.vectors.T @ eigen.vectors, np.eye(10), atol=1e-5)


def test_arnoldi_scores_with_a_rank_below_its_steps_equal_the_exact_ones(mlp):
    """The top 8 of 30 Ritz pairs have converged on the MLP's 48 parameters: the
    scores equal the exact solver's top-8 scores. Duplicating the data doubles every
    eigenvalue (H is a sum, not a mean), halving the scores."""
    variables, (x, labels), _, _ = mlp
    data = (x, labels)
    exact = hessian_eigen(cross_entropy, variables, data, rank=8, select=params_only)
    arnoldi = hessian_eigen(
        cross_entropy,
        variables,
        data,
        rank=8,
        solver="arnoldi",
        iterations=30,
        key=jax.random.key(2),
        select=params_only,
    )
    np.testing.assert_allclose(arnoldi.values, exact.values, rtol=1e-4)
    test = (x[:4], labels[:4])
    expected = influence_function(cross_entropy, variables, data, test, exact)
    got = influence_function(cross_entropy, variables, data, test, arnoldi)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
    doubled = hessian_eigen(
        cross_entropy,
        variables,
        (jnp.concatenate([x, x]), jnp.concatenate([labels, labels])),
        rank=8,
        select=params_only,
    )
    np.testing.assert_allclose(doubled.values, 2 * exact.values, rtol=1e-5)
    np.testing.assert_allclose(
        influence_function(cross_entropy, variables, data, test, doubled),
        expected / 2,
        rtol=1e-4,
        atol=1e-5 * np.abs(expected).max(),
    )


def test_nnx_state_and_a_jitted_hessian():
    """An NNX model's parameters (paths 'kernel', 'bias') give the ridge answer of the
    linear model; the HessianEigen passes through jax.jit (its paths are static)."""
    from flax import nnx

    rng = np.random.default_rng(6)
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    x, y = rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=8).astype(np.float32)

    def loss(state, example):
        xi, yi = example
        return 0.5 * (nnx.merge(graphdef, state)(xi[None])[0, 0] - yi) ** 2

    eigen = jax.jit(lambda h: h)(hessian_eigen(loss, params, (x, y)))
    assert eigen.paths == ("bias", "kernel")
    got = influence_function(loss, params, (x, y), (x[:2], y[:2]), eigen, damping=0.5)
    w, b = np.asarray(params["kernel"][...])[:, 0], float(params["bias"][...][0])
    phi = features(x)
    g = phi * (phi @ np.concatenate([w, [b]]) - y)[:, None]  # (bias last, as features())
    expected = g[:2] @ np.linalg.solve(phi.T @ phi + 0.5 * np.eye(4), g.T)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_bad_arguments_are_one_line_value_errors(mlp):
    variables, (x, labels), _, _ = mlp
    data = (x, labels)
    eigen = hessian_eigen(cross_entropy, variables, data, select=params_only)
    head = hessian_eigen(
        cross_entropy, variables, data, select=lambda p: p.startswith("params/head/")
    )
    cases = [
        (lambda: hessian_eigen(cross_entropy, variables, data, solver="lissa"), "solver must"),
        (
            lambda: hessian_eigen(cross_entropy, variables, data, solver="arnoldi"),
            "hessian_eigen\\(solver='arnoldi'\\)",
        ),
        (lambda: hessian_eigen(cross_entropy, variables, data, rank=0), "rank"),
        (
            lambda: hessian_eigen(
                cross_entropy,
                variables,
                data,
                solver="arnoldi",
                iterations=5,
                rank=6,
                key=jax.random.key(0),
            ),
            "rank \\(at most iterations\\)",
        ),
        (
            lambda: hessian_eigen(lambda v, e: cross_entropy(v, e)[None], variables, data),
            "scalar loss",
        ),
        (
            lambda: hessian_eigen(lambda v, e: jnp.sqrt(-cross_entropy(v, e)), variables, data),
            "not finite",
        ),
        (
            lambda: hessian_eigen(
                lambda v, e: jnp.sqrt(-cross_entropy(v, e)),
                variables,
                data,
                solver="arnoldi",
                key=jax.random.key(0),
            ),
            "not finite",
        ),
        (lambda: hessian_eigen(cross_entropy, variables, data, iterations=5), "Arnoldi"),
        (
            lambda: hessian_eigen(
                lambda v, e: 0.5 * jnp.sum(v["big"] ** 2) * e,
                {"big": jnp.zeros(20000)},
                jnp.ones(2),
            ),
            "solver='arnoldi'",
        ),
        (lambda: influence_function(cross_entropy, variables, data, data, None), "HessianEigen"),
        (
            lambda: influence_function(cross_entropy, variables, data, data, eigen, damping=-1.0),
            "damping must",
        ),
        (
            lambda: influence_function(
                cross_entropy, variables, data, data, eigen, min_eigenvalue=float("nan")
            ),
            "min_eigenvalue must",
        ),
        (
            lambda: influence_function(
                cross_entropy, variables, data, data, eigen, min_eigenvalue=1e9
            ),
            "raise damping",
        ),
        (
            lambda: influence_function_self(
                cross_entropy, {"params": variables["params"]["head"]}, data, head
            ),
            "no leaf",
        ),
        (
            lambda: influence_function_self(
                cross_entropy,
                variables,
                data,
                HessianEigen(head.values, head.vectors[:-1], head.paths),
            ),
            "entries",
        ),
        (
            lambda: influence_function_self(
                cross_entropy, variables, data, dataclasses.replace(head, values=head.values[:3])
            ),
            "one eigenvalue per column",
        ),
        (
            lambda: influence_function(cross_entropy, variables, data, (x[:2], labels), eigen),
            "one common",
        ),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match) as error:
            call()
            pytest.fail(f"no error for {match!r}")
        assert "\n" not in str(error.value), str(error.value)
