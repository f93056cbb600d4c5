"""FGSM, PGD and the smallest prediction-changing perturbation, against answers derived
by hand for linear models (where the loss gradient and the worst case in a ball are
known in closed form) and against direct loops over the same attacks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax.evaluation import (
    cross_entropy,
    fgsm,
    min_perturbation,
    pgd,
    top_k_removal,
)
from tests import testdata

N, SHAPE, CLASSES = 5, (2, 3, 2), 4
D = int(np.prod(SHAPE))


@pytest.fixture(scope="module")
def linear():
    """logits = x w + b on flattened examples, with inputs in (0.2, 0.8)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(D, CLASSES))
    b = rng.normal(size=CLASSES)
    x = rng.uniform(0.2, 0.8, size=(N,) + SHAPE)
    labels = np.array([0, 1, 2, 3, 1])
    wj, bj = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)

    def fn(inputs):
        return inputs.reshape(inputs.shape[0], -1) @ wj + bj

    return fn, w, b, x, labels


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ce_gradient(w, b, x, labels):
    """d/dx -log softmax(x w + b)_y = w (p - e_y), in float64."""
    flat = x.reshape(len(x), -1)
    p = softmax(flat @ w + b)
    p[np.arange(len(x)), labels] -= 1.0
    return (p @ w.T).reshape(x.shape)


@pytest.fixture(scope="module")
def two_class():
    """A two-class linear model: the cross-entropy gradient of class 0 is p_1 (w_1 - w_0),
    so its direction is the same everywhere and the worst case in a ball is known."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(D, 2))
    x = rng.uniform(0.3, 0.7, size=(3,) + SHAPE)
    wj = jnp.asarray(w, jnp.float32)

    def fn(inputs):
        return inputs.reshape(inputs.shape[0], -1) @ wj

    return fn, (w[:, 1] - w[:, 0]).reshape(SHAPE), x


def test_fgsm_is_the_sign_of_the_cross_entropy_gradient(linear):
    fn, w, b, x, labels = linear
    grad = ce_gradient(w, b, x, labels)
    out = fgsm(fn, jnp.asarray(x, jnp.float32), labels, epsilon=0.1)
    np.testing.assert_allclose(out, x + 0.1 * np.sign(grad), atol=1e-6)
    # Targeted: down the gradient of the target class's loss.
    goal = np.array([3, 3, 0, 0, 2])
    out = fgsm(fn, jnp.asarray(x, jnp.float32), goal, epsilon=0.1, targeted=True)
    np.testing.assert_allclose(out, x - 0.1 * np.sign(ce_gradient(w, b, x, goal)), atol=1e-6)


def test_fgsm_clips_masks_and_defaults_to_the_predicted_class(linear):
    fn, w, b, x, _ = linear
    xj = jnp.asarray(x, jnp.float32)
    predicted = np.argmax(x.reshape(N, -1) @ w + b, axis=1)
    step = 0.5 * np.sign(ce_gradient(w, b, x, predicted))
    mask = np.zeros(SHAPE)
    mask[0] = 1.0
    out = fgsm(fn, xj, epsilon=0.5, bounds=(0.0, 1.0), mask=mask)
    np.testing.assert_allclose(out, np.clip(x + step * mask, 0, 1), atol=1e-6)
    # A mask per example (the batch's shape) freezes each example's own features.
    masks = np.zeros((N,) + SHAPE)
    masks[np.arange(N), np.arange(N) % SHAPE[0]] = 1.0
    out = fgsm(fn, xj, epsilon=0.5, bounds=(0.0, 1.0), mask=masks)
    np.testing.assert_allclose(out, np.clip(x + step * masks, 0, 1), atol=1e-6)


def test_fgsm_zero_threshold_leaves_confident_examples_unchanged():
    """Captum's 1e-6 threshold: the gradient of a confidently classified example is
    tiny but has a sign, and only the threshold stops FGSM from following it."""
    w = jnp.asarray(np.random.default_rng(5).normal(size=(D, CLASSES)), jnp.float32)
    b = jnp.array([30.0, 0.0, 0.0, 0.0])

    def fn(inputs):
        return inputs.reshape(inputs.shape[0], -1) @ w + b

    x = jnp.full((1,) + SHAPE, 0.5)
    grad = jax.grad(lambda z: jnp.sum(cross_entropy(fn(z), jnp.array([0]))))(x)
    assert 0 < np.abs(grad).max() < 1e-6
    moved = fgsm(fn, x, 0, epsilon=0.1)
    np.testing.assert_allclose(moved, x + 0.1 * np.sign(grad), atol=1e-7)
    assert np.array_equal(fgsm(fn, x, 0, epsilon=0.1, zero_threshold=1e-6), x)


@pytest.mark.parametrize("norm", ["linf", "L2"])
def test_pgd_reaches_the_worst_case_of_the_ball(two_class, norm):
    fn, direction, x = two_class
    radius = 0.2
    out = pgd(fn, jnp.asarray(x, jnp.float32), 0, radius=radius, step_size=0.05, steps=8, norm=norm)
    if norm == "linf":
        worst = x + radius * np.sign(direction)
    else:
        worst = x + radius * direction / np.linalg.norm(direction)
    np.testing.assert_allclose(out, worst, atol=2e-6)


def test_pgd_l2_is_not_a_projected_sign_step(two_class):
    """The worst case in the L2 ball raises the logit margin by radius * ||w_1 - w_0||_2;
    sign steps projected onto the ball (Captum's L2 PGD) stay on sign(w_1 - w_0) and
    raise it by radius * ||w_1 - w_0||_1 / sqrt(d), which is less."""
    fn, direction, x = two_class
    radius = 0.2
    xj = jnp.asarray(x, jnp.float32)
    out = pgd(fn, xj, 0, radius=radius, step_size=0.05, steps=8, norm="l2")
    margin = lambda z: np.asarray(fn(z)[:, 1] - fn(z)[:, 0])  # noqa: E731
    gain = margin(out) - margin(xj)
    np.testing.assert_allclose(gain, radius * np.linalg.norm(direction), rtol=1e-5)
    sign_gain = radius * np.abs(direction).sum() / np.sqrt(D)
    assert np.all(gain > sign_gain * 1.05)


def test_pgd_stays_in_the_ball_and_bounds_and_raises_the_loss(linear):
    fn, *_, x, labels = linear
    x = np.clip(x, 0.25, 0.75).astype(np.float32)
    xj = jnp.asarray(x)
    key = jax.random.key(0)
    ball = dict(random_start=True, key=key, bounds=(0.25, 0.75))
    l2 = pgd(fn, xj, labels, radius=0.3, step_size=0.2, steps=4, norm="l2", **ball)
    distance = np.linalg.norm((np.asarray(l2) - x).reshape(N, -1), axis=1)
    assert distance.max() <= 0.3 + 1e-6 and l2.min() >= 0.25 and l2.max() <= 0.75
    linf = dict(radius=0.1, step_size=0.04, steps=5, **ball)
    out = pgd(fn, xj, labels, **linf)
    assert np.abs(np.asarray(out) - x).max() <= 0.1 + 1e-6
    assert out.min() >= 0.25 and out.max() <= 0.75
    assert np.all(cross_entropy(fn(out), labels) > cross_entropy(fn(xj), labels))
    # Chunking and jit change nothing; keys are per example.
    np.testing.assert_allclose(pgd(fn, xj, labels, batch_size=2, **linf), out, atol=1e-6)
    jitted = jax.jit(lambda z: pgd(fn, z, labels, **linf))(xj)
    np.testing.assert_allclose(jitted, out, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_uniform_in_the_ball(norm):
    """With step_size 0 PGD returns its start: inside the ball, and for L2 with the
    radius distribution of a uniform point of a d-ball, E[|delta| / r] = d / (d + 1)."""
    shape = (4,)
    x = jnp.zeros((2000,) + shape)

    def fn(inputs):
        return jnp.stack([inputs.sum(1), -inputs.sum(1)], axis=1)

    out = np.asarray(
        pgd(
            fn,
            x,
            0,
            radius=0.5,
            step_size=0.0,
            steps=1,
            norm=norm,
            random_start=True,
            key=jax.random.key(1),
        )
    )
    if norm == "linf":
        assert np.abs(out).max() <= 0.5
        assert abs(np.abs(out).mean() - 0.25) < 0.01  # |U[-r, r]| has mean r / 2
    else:
        lengths = np.linalg.norm(out, axis=1) / 0.5
        assert lengths.max() <= 1 + 1e-6
        assert abs(lengths.mean() - 4 / 5) < 0.015


def test_targeted_pgd_reaches_the_target(linear):
    fn, *_, x, _ = linear
    out = pgd(
        fn, jnp.asarray(x, jnp.float32), 2, targeted=True, radius=5.0, step_size=0.5, steps=20
    )
    assert np.all(np.argmax(fn(out), axis=1) == 2)


def test_min_perturbation_finds_the_known_threshold():
    """Adding s * v to x moves the margin f_0 - f_1 by s * v.(w_0 - w_1): the prediction
    changes at s* = margin / (v.(w_1 - w_0)), and the answer is the first grid value
    above it, in both search modes."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(D, 2))
    x = rng.uniform(0.2, 0.8, size=(6,) + SHAPE)
    wj = jnp.asarray(w, jnp.float32)
    v = ((w[:, 1] - w[:, 0]) / np.linalg.norm(w[:, 1] - w[:, 0])).reshape(SHAPE)

    def fn(inputs):
        return inputs.reshape(inputs.shape[0], -1) @ wj

    logits = x.reshape(6, -1) @ w
    predicted = logits.argmax(1)
    # Move towards the other class: +v for class 0, -v for class 1.
    toward = np.where(predicted == 0, 1.0, -1.0)
    threshold = np.abs(logits[:, 0] - logits[:, 1]) / np.linalg.norm(w[:, 1] - w[:, 0])
    params = np.linspace(0.0, 1.0, 41)
    expected = np.searchsorted(params, threshold, side="right")
    expected = np.where(expected < len(params), expected, -1)

    def perturb(xi, s, key, sign):
        del key
        return xi + s * sign * jnp.asarray(v, jnp.float32)

    for mode in ("linear", "binary"):
        found = min_perturbation(
            fn,
            jnp.asarray(x, jnp.float32),
            perturb=perturb,
            params=params,
            aux=toward,
            mode=mode,
            batch_size=7,
        )
        np.testing.assert_array_equal(found.index, expected)
        hit = expected >= 0
        np.testing.assert_allclose(found.param[hit], params[expected[hit]], rtol=1e-6)
        assert np.all(np.isnan(found.param[~hit]))
        assert np.all(np.argmax(fn(found.perturbed), 1)[hit] != predicted[hit])
        np.testing.assert_array_equal(found.perturbed[~hit], np.asarray(x, np.float32)[~hit])
    assert hit.any() and (~hit).any()


def test_min_perturbation_of_fgsm_matches_a_loop_over_epsilon(linear):
    fn, *_, x, labels = linear
    xj = jnp.asarray(x, jnp.float32)
    params = np.linspace(0.0, 0.6, 13)
    found = min_perturbation(
        fn,
        xj,
        labels,
        perturb=lambda xi, e, _, t: fgsm(fn, xi[None], t, epsilon=e)[0],
        params=params,
        aux=jnp.asarray(labels),
    )
    attacked = jax.jit(jax.vmap(lambda e: fgsm(fn, xj, labels, epsilon=e)))(params)
    wrong = (np.argmax(jax.vmap(fn)(attacked), -1) != labels).T
    expected = np.where(wrong.any(1), wrong.argmax(1), -1)
    np.testing.assert_array_equal(found.index, expected)


@testdata.jit
def _attempt_noise(key):
    """noise[i, j, a] from fold_in(fold_in(fold_in(key, i), j), a), as documented: 6
    images, 4 scales, 3 attempts, one standard normal each."""
    fold = jax.vmap(jax.random.fold_in, in_axes=(None, 0))
    keys = jax.vmap(lambda k: jax.vmap(lambda kj: fold(kj, jnp.arange(3)))(fold(k, jnp.arange(4))))(
        fold(key, jnp.arange(6))
    )
    return jax.vmap(jax.vmap(jax.vmap(lambda k: jax.random.normal(k, (1,))[0])))(keys)


def test_min_perturbation_attempts_take_any_success():
    """With Gaussian noise and several attempts, an example counts as changed at the
    first level where any attempt changes it; the keys are the documented ones."""

    def fn(inputs):
        return jnp.stack([inputs[:, 0], jnp.zeros(inputs.shape[0])], axis=1)

    x = jnp.array([[0.3], [1.0], [2.0], [0.8], [1.5], [0.6]])
    params = np.array([0.1, 0.5, 1.0, 2.0])
    key = jax.random.key(4)

    def perturb(xi, s, k, _):
        return xi + s * jax.random.normal(k, xi.shape)

    # One jitted program: eagerly, every random draw compiles on its own.
    search = jax.jit(
        lambda x, mode: min_perturbation(
            fn, x, 0, perturb=perturb, params=params, key=key, attempts=3, mode=mode
        ),
        static_argnums=1,
    )
    found, bisected = search(x, "linear"), search(x, "binary")
    # noise[i, j, a] from fold_in(fold_in(fold_in(key, i), j), a), as documented.
    noise = np.asarray(_attempt_noise(key))
    changed = (np.asarray(x)[:, :, None] + params[None, :, None] * noise < 0).any(2)
    expected = np.where(changed.any(1), changed.argmax(1), -1)
    assert len(set(expected)) > 1
    np.testing.assert_array_equal(found.index, expected)
    # The input returned is the first attempt that changed the prediction at that level,
    # and attempt 0 alone would have answered later for at least one example.
    hit = expected >= 0
    rows = np.arange(6)[hit]
    levels = expected[hit]
    first = (
        np.asarray(x)[rows, :, None] + params[levels, None, None] * noise[rows, levels][:, None] < 0
    )
    attempt = first[:, 0].argmax(1)
    np.testing.assert_allclose(
        np.asarray(found.perturbed)[rows, 0],
        np.asarray(x)[rows, 0] + params[levels] * noise[rows, levels, attempt],
        rtol=1e-6,
    )
    alone = np.asarray(x) + params[None, :] * noise[:, :, 0] < 0
    assert np.any(np.where(alone.any(1), alone.argmax(1), 99) > np.where(hit, expected, 99))
    # Bisection with attempts ends on a level that changed it after one that did not.
    ends = np.asarray(bisected.index)
    for i, j in enumerate(ends):
        if j >= 0:
            assert changed[i, j] and (j == 0 or not changed[i, j - 1])


def test_top_k_removal_removes_the_largest_first_with_ties_by_position():
    perturb = top_k_removal(fill=-1.0)
    x = jnp.arange(6.0).reshape(2, 3) + 10
    attribution = jnp.array([[0.5, 2.0, 0.5], [3.0, 0.5, -1.0]])
    out = perturb(x, jnp.float32(3), None, attribution)
    # Ranks: 3.0 (1, 0), 2.0 (0, 1), then the first 0.5, at (0, 0).
    np.testing.assert_array_equal(out, [[-1, -1, 12], [-1, 14, 15]])
    # A per-pixel map removes every channel of the pixel.
    image = jnp.ones((2, 2, 3))
    out = perturb(image, jnp.float32(1.9), None, jnp.array([[[0.0], [5.0]], [[1.0], [2.0]]]))
    np.testing.assert_array_equal(out[0, 1], [-1, -1, -1])
    assert float(out.sum()) == 9 - 3
    # So does a channel-less (H, W) map, as the CAMs return.
    flat = perturb(image, jnp.float32(1.9), None, jnp.array([[0.0, 5.0], [1.0, 2.0]]))
    np.testing.assert_array_equal(flat, out)
    # A channel-less image's row is no pixel map: refused, not spread over the columns.
    with pytest.raises(ValueError, match="does not broadcast to an example of shape"):
        perturb(jnp.ones((3, 2)), jnp.float32(1), None, jnp.ones(3))


def test_top_k_removal_on_a_linear_model_matches_numpy(linear):
    """Input x gradient is each feature's exact contribution to a linear logit, so
    removing features in its order can be replayed in numpy. The prediction can change
    back as more features go, so only the linear search is exact; bisection still ends
    on a change whose predecessor is no change."""
    fn, w, b, x, _ = linear
    xj = jnp.asarray(x, jnp.float32)
    predicted = np.argmax(x.reshape(N, -1) @ w + b, 1)
    attribution = x * w.T[predicted].reshape(x.shape)
    found = min_perturbation(
        fn, xj, perturb=top_k_removal(), params=np.arange(D + 1), aux=attribution
    )
    changed = np.zeros((N, D + 1), bool)
    for i in range(N):
        order = np.argsort(-attribution[i].reshape(-1), kind="stable")
        flat = x[i].reshape(-1).copy()
        for k in range(D + 1):
            changed[i, k] = np.argmax(flat @ w + b) != predicted[i]
            if k < D:
                flat[order[k]] = 0.0
    np.testing.assert_array_equal(found.index, np.where(changed.any(1), changed.argmax(1), -1))
    bisected = min_perturbation(
        fn,
        xj,
        perturb=top_k_removal(),
        params=np.arange(D + 1),
        aux=attribution,
        mode="binary",
    )
    index = np.asarray(bisected.index)
    assert np.all(index >= 1)  # every prediction changes, none at k = 0 (no removal)
    assert np.all(changed[np.arange(N), index]) and np.all(~changed[np.arange(N), index - 1])
    assert not np.array_equal(index, found.index)  # this draw is not monotone


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda fn, x: fgsm(fn, x, epsilon=0.1, targeted=True), "targeted attack needs target"),
        (lambda fn, x: fgsm(fn, x, epsilon=-1.0), "epsilon must be a finite number"),
        (lambda fn, x: fgsm(fn, x, epsilon=0.1, bounds=(1, 0)), "low < high"),
        (lambda fn, x: fgsm(fn, x, epsilon=0.1, mask=jnp.ones((3,))), "mask of shape"),
        (lambda fn, x: fgsm(fn, x, epsilon=0.1, loss=lambda z, t: z), "one loss per example"),
        (lambda fn, x: pgd(fn, x, radius=1, step_size=1, steps=1, norm="l1"), "norm must be"),
        (lambda fn, x: pgd(fn, x, radius=1, step_size=1, steps=0), "steps must be"),
        (
            lambda fn, x: pgd(fn, x, radius=1, step_size=1, steps=1, random_start=True),
            "pass key=",
        ),
        (
            lambda fn, x: min_perturbation(fn, x, perturb=top_k_removal(), params=[2, 1]),
            "strictly increasing",
        ),
        (
            lambda fn, x: min_perturbation(
                fn, x, perturb=top_k_removal(), params=[1, 2], attempts=2
            ),
            "pass key=",
        ),
        (
            lambda fn, x: min_perturbation(
                fn, x, perturb=top_k_removal(), params=[1, 2], aux=jnp.ones((2,) + SHAPE)
            ),
            "one row per example",
        ),
        (
            lambda fn, x: min_perturbation(fn, x, perturb=top_k_removal(), params=[1], mode="x"),
            "mode must be",
        ),
        (lambda fn, x: fgsm(fn, x + 5.0, epsilon=0.1, bounds=(0, 1)), "outside bounds"),
        (
            lambda fn, x: min_perturbation(
                fn, x, perturb=top_k_removal(), params=[1], aux=x, correct=lambda z, t: True
            ),
            "one bool per example",
        ),
        (
            lambda fn, x: min_perturbation(
                fn, x, perturb=top_k_removal(), params=[1], aux=x[:, 0, :, 0]
            ),
            "does not broadcast to an example of shape",
        ),
        (
            lambda fn, x: min_perturbation(
                fn, x, perturb=top_k_removal(), params=[1], aux=x.at[1, 0, 0, 0].set(jnp.nan)
            ),
            "the attributions \\(aux\\) contains NaN",
        ),
        (
            lambda fn, x: min_perturbation(fn, x, perturb=top_k_removal(), params=[1]),
            "ranks features by aux=",
        ),
        (
            lambda fn, x: jax.jit(lambda b: fgsm(fn, x, epsilon=0.1, bounds=(0.0, b)))(1.0),
            "must be concrete",
        ),
    ],
)
def test_bad_input_is_one_clear_error(linear, call, message):
    fn, *_, x, _ = linear
    with pytest.raises(ValueError, match=message):
        call(fn, jnp.asarray(x, jnp.float32))


def test_the_default_loss_and_success_test_refuse_a_model_with_one_output():
    def fn(x):
        return x.sum((1, 2, 3))[:, None]

    x = jnp.ones((2, 3, 3, 1))
    with pytest.raises(ValueError, match=r"so the cross-entropy of its target.*pass a loss="):
        fgsm(fn, x, 0, epsilon=0.1)
    # A loss of the logit itself attacks it: the sum falls by epsilon per pixel.
    moved = fgsm(fn, x, 0, epsilon=0.1, loss=lambda logits, t: logits[:, 0])
    np.testing.assert_allclose(fn(moved), 9 * 1.1, rtol=1e-6)
