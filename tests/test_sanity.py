"""Randomisation sanity checks (Adebayo et al. 2018), SSIM and the random-logit test
(Sixt et al. 2020), with known answers."""

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax.attribution import explainer, noise_tunnel, saliency
from fmi_jax.evaluation.agreement import spearman
from fmi_jax.evaluation.sanity import (
    cascading_randomization,
    efficient_mprt,
    entropy_rise,
    independent_randomization,
    input_invariance,
    layer_order,
    passes_sanity_check,
    random_logit,
    random_other_classes,
    randomize_layers,
    ssim,
)
from fmi_jax.models import get_model
from tests import testdata


def ssim_by_hand(a, b, window=7, data_range=None, k1=0.01, k2=0.03):
    """Wang et al. 2004 SSIM over every window inside the map, the slow, obvious way
    (float64, sample statistics with ddof=1 as skimage's default)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if data_range is None:
        data_range = max(a.max(), b.max()) - min(a.min(), b.min())
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    values = []
    for i in range(a.shape[0] - window + 1):
        for j in range(a.shape[1] - window + 1):
            wa = a[i : i + window, j : j + window].ravel()
            wb = b[i : i + window, j : j + window].ravel()
            ma, mb = wa.mean(), wb.mean()
            va, vb = wa.var(ddof=1), wb.var(ddof=1)
            cov = np.cov(wa, wb, ddof=1)[0, 1]
            values.append(
                (2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
            )
    return float(np.mean(values))


@pytest.fixture(scope="module")
def maps():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 11, 9)).astype(np.float32)
    b = (a + 0.7 * rng.normal(size=a.shape)).astype(np.float32)
    return jnp.asarray(a), jnp.asarray(b)


def test_ssim_identical_is_exactly_one_and_symmetric(maps):
    a, b = maps
    assert np.all(np.asarray(ssim(a, a)) == 1.0)
    assert np.all(np.asarray(ssim(a, a, data_range=0.3)) == 1.0)
    # Symmetric up to float32 rounding (XLA may contract a*a + b*b into an FMA).
    np.testing.assert_allclose(ssim(a, b), ssim(b, a), rtol=1e-6)
    # Two identical constant maps (data range 0) are identical: 1, not NaN.
    c = jnp.full((1, 7, 7), 2.0)
    assert float(ssim(c, c)[0]) == 1.0


def test_ssim_of_a_map_with_nan_or_inf_is_nan_not_one(maps):
    """A non-finite value makes every window's denominator NaN, which must not be read
    as the 0 of two identical constant windows (similarity 1)."""
    a, b = maps
    for bad in (jnp.nan, jnp.inf):
        broken = b.at[0, 0, 0].set(bad)
        for data_range in (None, 1.0):
            got = np.asarray(ssim(a, broken, data_range=data_range))
            assert np.isnan(got[0]), (bad, data_range, got)
            assert np.all(np.isfinite(got[1:]))  # the other pairs are untouched


def test_ssim_matches_direct_formula(maps):
    a, b = maps
    got = np.asarray(ssim(a, b))
    want = [ssim_by_hand(a[i], b[i]) for i in range(a.shape[0])]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.all(got < 0.99)
    got = np.asarray(ssim(a, b, window=3, data_range=2.0))
    want = [ssim_by_hand(a[i], b[i], window=3, data_range=2.0) for i in range(a.shape[0])]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # data_range=None is max - min over both maps of the pair.
    r = jnp.maximum(a.max((1, 2)), b.max((1, 2))) - jnp.minimum(a.min((1, 2)), b.min((1, 2)))
    np.testing.assert_allclose(ssim(a, b), ssim(a, b, data_range=r), rtol=1e-6)


def test_ssim_drops_under_offset_and_contrast_change(maps):
    a, _ = maps
    a = (a - a.min()) / (a.max() - a.min())  # in [0, 1]
    offset = np.asarray(ssim(a, a + 0.3, data_range=1.0))
    contrast = np.asarray(ssim(a, 0.5 * a + 0.25, data_range=1.0))
    assert np.all(offset < 1.0) and np.all(contrast < 1.0)
    np.testing.assert_allclose(
        offset, [ssim_by_hand(a[i], a[i] + 0.3, data_range=1.0) for i in range(3)], atol=1e-5
    )


def test_ssim_rejects_bad_input(maps):
    a, _ = maps
    with pytest.raises(ValueError, match="reduce"):
        ssim(a[..., None], a[..., None])
    with pytest.raises(ValueError, match="odd"):
        ssim(a, a, window=4)
    with pytest.raises(ValueError, match="exceeds"):
        ssim(a, a, window=11)


# ---------------------------------------------------------------- randomisation


def _init(model, x):
    return testdata.init(model, x, 0)


@pytest.fixture(scope="module")
def cnn():
    model = get_model("simple_cnn", features=(4, 4), pool=(True, True), dense=(8,), num_classes=3)
    x = testdata.uniform(jax.random.key(1), (6, 8, 8, 1))
    variables = _init(model, x)
    # Like a trained model: no leaf constant (zero biases would stay zero when re-drawn).
    variables = jax.tree_util.tree_map(
        lambda p: p + 0.05 * testdata.normal(jax.random.key(9), p.shape), variables
    )
    target = jnp.arange(6) % 3
    return model, variables, x, target


@functools.lru_cache
def saliency_of(model):
    """make_explain for saliency maps of `model`: every variables' explainer runs one
    compiled program (the variables are its argument), shared by the tests."""

    @jax.jit
    def saliency(v, x, target, key):
        return explainer("saliency", lambda x: model.apply(v, x))(x, target, key)

    return lambda v: functools.partial(saliency, v)


def same_tree(a, b):
    return jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda p, q: bool(np.array_equal(p, q)), a, b)
    )


def all_differ(a, b):
    return jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda p, q: bool(np.all(np.asarray(p) != np.asarray(q))), a, b)
    )


def test_layer_order_is_output_first(cnn):
    _, variables, _, _ = cnn
    assert layer_order(variables) == ("head", "fc1", "conv2", "conv1")
    assert layer_order(variables["params"]) == ("head", "fc1", "conv2", "conv1")


def test_nnx_state_needs_the_layers_named_output_first():
    # NNX sorts a module's state by attribute name: 'classifier' before 'features'
    # whatever the call order, so a default order read from it could be input first.
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.features = nnx.Linear(4, 3, rngs=rngs)
            self.classifier = nnx.Linear(3, 2, rngs=rngs)

    state = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
    assert list(state) == ["classifier", "features"]
    for variables in (state, {"params": state}):
        with pytest.raises(ValueError, match="NNX state is sorted by attribute name"):
            layer_order(variables)
    with pytest.raises(ValueError, match=r"for an NNX model pass \{'params'"):
        cascading_randomization(None, {"classifier": 1}, jnp.ones((1, 4)), 0, jax.random.key(0))
    randomized = randomize_layers({"params": state}, ["classifier"], jax.random.key(1))
    assert not np.allclose(
        randomized["params"]["classifier"]["kernel"], state["classifier"]["kernel"]
    )


def test_randomize_layers_touches_only_named_layers():
    model = get_model(
        "simple_cnn", features=(4,), pool=(True,), dense=(), num_classes=3, batch_norm=True
    )
    variables = _init(model, jnp.zeros((1, 8, 8, 1)))
    variables = jax.tree_util.tree_map(
        lambda p: p + 0.1 * jnp.arange(p.size).reshape(p.shape), variables
    )
    new = randomize_layers(variables, ["conv1"], jax.random.key(3))
    assert same_tree(new["batch_stats"], variables["batch_stats"])
    assert same_tree(new["params"]["head"], variables["params"]["head"])
    assert all_differ(new["params"]["conv1"], variables["params"]["conv1"])
    shapes = jax.tree_util.tree_map(lambda p: (p.shape, p.dtype), new)
    assert shapes == jax.tree_util.tree_map(lambda p: (p.shape, p.dtype), variables)
    # Same key, same draw; the draw keeps each leaf's scale.
    again = randomize_layers(variables, ["conv1"], jax.random.key(3))
    assert same_tree(new, again)
    kernel, old = (
        new["params"]["conv1"]["conv"]["kernel"],
        variables["params"]["conv1"]["conv"]["kernel"],
    )
    assert 0.5 < float(kernel.std() / old.std()) < 2.0
    with pytest.raises(ValueError, match="unknown layers"):
        randomize_layers(variables, ["conv9"], jax.random.key(3))
    with pytest.raises(ValueError, match="not a single string"):
        randomize_layers(variables, "conv1", jax.random.key(3))
    # As documented: leaf j of layer L is mean + std * N(0, 1) drawn eagerly from
    # fold_in(fold_in(key, crc32(L)), j), bit for bit.
    layer_key = jax.random.fold_in(jax.random.key(3), zlib.crc32(b"conv1") & 0x7FFFFFFF)
    leaves = jax.tree_util.tree_leaves(variables["params"]["conv1"])
    for j, (leaf, got) in enumerate(zip(leaves, jax.tree_util.tree_leaves(new["params"]["conv1"]))):
        noise = jax.random.normal(jax.random.fold_in(layer_key, j), leaf.shape, jnp.float32)
        np.testing.assert_array_equal(got, leaf.mean() + leaf.std() * noise)


def recording(make_explain):
    seen = []

    def make(v):
        seen.append(v)
        return make_explain(v)

    return make, seen


def test_cascading_is_cumulative_and_independent_is_one_layer(cnn):
    model, variables, x, target = cnn
    order = layer_order(variables)
    key = jax.random.key(5)
    make, seen = recording(saliency_of(model))
    cascading_randomization(make, variables, x, target, key)
    assert same_tree(seen[0], variables)  # the original model first
    for step, v in enumerate(seen[1:]):
        for i, name in enumerate(order):
            if i <= step:
                assert all_differ(v["params"][name], variables["params"][name]), (step, name)
            else:
                assert same_tree(v["params"][name], variables["params"][name]), (step, name)

    make, seen_ind = recording(saliency_of(model))
    independent_randomization(make, variables, x, target, key)
    for step, v in enumerate(seen_ind[1:]):
        for i, name in enumerate(order):
            if i == step:
                assert all_differ(v["params"][name], variables["params"][name])
                # The same random weights as in the cascade.
                assert same_tree(v["params"][name], seen[-1]["params"][name])
            else:
                assert same_tree(v["params"][name], variables["params"][name])


def test_randomising_changes_saliency_maps_and_method_passes(cnn):
    model, variables, x, target = cnn
    result = cascading_randomization(saliency_of(model), variables, x, target, jax.random.key(7))
    assert result["layers"] == ("head", "fc1", "conv2", "conv1")
    assert result["fully_randomized"]
    for metric in ("spearman", "spearman_abs", "ssim"):
        assert result[metric].shape == (4, 6)
        assert result["mean"][metric].shape == (4,)
    final = result["mean"]
    assert final["spearman_abs"][-1] < 0.5
    assert abs(float(final["spearman"][-1])) < 0.5
    assert final["ssim"][-1] < 0.9
    assert passes_sanity_check(result)


def test_weight_independent_method_is_flagged(cnn):
    _, variables, x, target = cnn

    def make_explain(v):
        return lambda x, t, k: x  # the input itself: blind to the weights

    for run in (cascading_randomization, independent_randomization):
        result = run(make_explain, variables, x, target, jax.random.key(0))
        for metric in ("spearman", "spearman_abs", "ssim"):
            np.testing.assert_allclose(result[metric], 1.0, rtol=0, atol=1e-6)
        assert np.all(np.asarray(result["ssim"]) == 1.0)
    assert not passes_sanity_check(
        cascading_randomization(make_explain, variables, x, target, jax.random.key(0))
    )
    with pytest.raises(ValueError, match="cascading"):
        passes_sanity_check(result)  # the independent one


def test_pass_or_fail_of_constant_maps_and_the_threshold(cnn):
    _, variables, x, target = cnn

    def cascade(explain):
        return cascading_randomization(lambda v: explain, variables, x, target, jax.random.key(0))

    # Zeros for every model: nothing depends on the weights.
    zeros = cascade(lambda xs, t, k: jnp.zeros(xs.shape[:3]))
    assert np.isnan(np.asarray(zeros["spearman"])).all()
    assert not passes_sanity_check(zeros)

    # The same undefined correlations where only the randomised maps are constant: the
    # maps changed completely.
    def dies_when_randomized(v):
        trained = same_tree(v, variables)
        return lambda xs, t, k: xs[..., 0] * (1.0 if trained else 0.0)

    dead = cascading_randomization(dies_when_randomized, variables, x, target, jax.random.key(0))
    assert np.isnan(np.asarray(dead["spearman"])).all()
    assert passes_sanity_check(dead)
    for threshold in (-0.1, 1.5, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="threshold"):
            passes_sanity_check(dead, threshold=threshold)


def test_maps_with_nan_are_refused_not_ranked_or_skipped(cnn, linear):
    # A NaN would rank as an ordinary value (Spearman) or drop out of the means, and a
    # method that breaks on the randomised model would pass the check.
    _, variables, x, target = cnn

    def make_explain(v):
        broken = not same_tree(v, variables)
        return lambda xs, t, k: xs.at[:, 0, 0].set(jnp.nan) if broken else xs * xs

    for run in (cascading_randomization, independent_randomization):
        with pytest.raises(ValueError, match="explanation with 'head' randomised contains NaN"):
            run(make_explain, variables, x, target, jax.random.key(0))
    with pytest.raises(
        ValueError, match="efficient_mprt: the explanation of the randomised model contains"
    ):
        efficient_mprt(make_explain, variables, x, target, jax.random.key(0))
    _, _, _, x, target = linear
    with pytest.raises(ValueError, match="random_logit: explain's output contains NaN"):
        random_logit(
            lambda xs, t, k: jnp.where(t[:, None, None] == 0, jnp.nan, xs),
            x,
            target,
            jax.random.key(0),
            num_classes=C,
            similarity="spearman",
        )


def test_one_layer_name_as_a_string_is_refused_not_split_into_letters(cnn):
    _, variables, x, target = cnn
    make = lambda v: lambda xs, t, k: xs * xs
    for run in (cascading_randomization, independent_randomization, efficient_mprt):
        with pytest.raises(ValueError, match="layers must be a sequence of layer names, not a"):
            run(make, variables, x, target, jax.random.key(0), layers="head")


def test_same_key_same_result(cnn):
    model, variables, x, target = cnn
    layers = ("head", "conv1")
    make = saliency_of(model)
    r1 = independent_randomization(make, variables, x, target, jax.random.key(2), layers=layers)
    r2 = independent_randomization(make, variables, x, target, jax.random.key(2), layers=layers)
    r3 = independent_randomization(make, variables, x, target, jax.random.key(3), layers=layers)
    assert r1["layers"] == layers and not r1["fully_randomized"]
    for metric in ("spearman", "spearman_abs", "ssim"):
        assert np.array_equal(np.asarray(r1[metric]), np.asarray(r2[metric]))
    assert not np.array_equal(np.asarray(r1["spearman"]), np.asarray(r3["spearman"]))


def test_target_must_be_explicit(cnn):
    model, variables, x, _ = cnn
    with pytest.raises(ValueError, match="target"):
        cascading_randomization(saliency_of(model), variables, x, None, jax.random.key(0))


def histogram_entropy(maps, bins=100):
    """numpy.histogram + scipy.stats.entropy per map, as Quantus' discrete_entropy."""
    from scipy import stats

    maps = np.asarray(maps, np.float64)
    return np.array([stats.entropy(np.histogram(m, bins=bins)[0]) for m in maps])


def test_efficient_mprt_is_the_relative_rise_of_the_histogram_entropy(cnn):
    model, variables, x, target = cnn
    key = jax.random.key(11)
    param_key, explain_key = jax.random.split(key)
    make = saliency_of(model)
    original = histogram_entropy(make(variables)(x, target, explain_key), bins=20)
    for layers in (None, ("head", "conv1")):
        chosen = layer_order(variables) if layers is None else layers
        randomized = randomize_layers(variables, chosen, param_key)
        after = histogram_entropy(make(randomized)(x, target, explain_key), bins=20)
        got = efficient_mprt(make, variables, x, target, key, layers=layers, bins=20)
        np.testing.assert_allclose(got, (after - original) / original, rtol=1e-4, atol=1e-6)
    # The cascade's last model is the fully randomised one: its maps give the same.
    cascade = cascading_randomization(make, variables, x, target, key)
    from_cascade = entropy_rise(cascade["original_maps"], cascade["last_maps"], bins=20)
    full = efficient_mprt(make, variables, x, target, key, bins=20)
    np.testing.assert_array_equal(np.asarray(from_cascade), np.asarray(full))


def test_efficient_mprt_of_a_weight_independent_method_is_zero(cnn):
    _, variables, x, target = cnn
    got = efficient_mprt(lambda v: lambda x, t, k: x, variables, x, target, jax.random.key(0))
    assert np.all(np.asarray(got) == 0.0)
    constant = efficient_mprt(
        lambda v: lambda x, t, k: jnp.ones_like(x), variables, x, target, jax.random.key(0)
    )
    assert np.all(np.isnan(np.asarray(constant)))
    with pytest.raises(ValueError, match="target"):
        efficient_mprt(lambda v: lambda x, t, k: x, variables, x, None, jax.random.key(0))
    with pytest.raises(ValueError, match="repeat"):
        efficient_mprt(
            lambda v: lambda x, t, k: x,
            variables,
            x,
            target,
            jax.random.key(0),
            layers=("head",) * 2,
        )
    with pytest.raises(ValueError, match="changed shape"):
        efficient_mprt(
            lambda v: lambda x, t, k: x[:, :4] if v is not variables else x,
            variables,
            x,
            target,
            jax.random.key(0),
        )
    with pytest.raises(ValueError, match="must return maps"):
        efficient_mprt(lambda v: lambda x, t, k: x[0], variables, x, target, jax.random.key(0))


def test_smooth_mprt_is_the_cascade_of_a_noise_tunnel(linear):
    # sMPRT (Hedström et al. 2023) composes: the cascade over noise_tunnel-averaged
    # maps. The gradient of a linear model is the same at every noisy copy, so its
    # smoothed cascade is the plain one.
    _, _, w, x, target = linear
    variables = {"params": {"dense": {"kernel": w}}}

    def logits(v):
        return lambda inputs: inputs.reshape(inputs.shape[0], -1) @ v["params"]["dense"]["kernel"]

    smooth = noise_tunnel(saliency, samples=4, stdev_spread=0.2)

    def smoothed(v):
        return lambda inputs, t, k: smooth(logits(v), inputs, t, key=k)

    def plain(v):
        return lambda inputs, t, k: saliency(logits(v), inputs, t)

    key = jax.random.key(4)
    got = cascading_randomization(smoothed, variables, x, target, key)
    want = cascading_randomization(plain, variables, x, target, key)
    for metric in ("spearman", "spearman_abs", "ssim"):
        np.testing.assert_allclose(got[metric], want[metric], atol=1e-5)


# ----------------------------------------------------------------- random logit

C, SIDE = 5, 8


@pytest.fixture(scope="module")
def linear():
    """A linear model on 8 x 8 maps: the gradient of logit c is W[:, c] as a map."""
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.normal(size=(SIDE * SIDE, C)), jnp.float32)
    x = jnp.asarray(rng.uniform(size=(6, SIDE, SIDE)), jnp.float32)
    target = jnp.array([0, 1, 2, 3, 4, 1], jnp.int32)

    def fn(inputs):
        return inputs.reshape(inputs.shape[0], -1) @ w

    def gradient(inputs, t, key):  # d logit_t / d x = W[:, t], whatever the input
        return w.T[t].reshape(inputs.shape)

    return fn, gradient, w, x, target


def unit_abs(m):
    """|m| rescaled to [0, 1] per map, as the module normalises maps for SSIM."""
    m = np.abs(np.asarray(m, np.float64))
    lo, hi = m.min((1, 2), keepdims=True), m.max((1, 2), keepdims=True)
    return jnp.asarray((m - lo) / (hi - lo), jnp.float32)


def test_random_logit_of_a_class_independent_map_is_one(linear):
    _, _, _, x, target = linear
    x = jnp.stack([x, x * x], axis=-1)  # (N, H, W, 2): channels summed first
    key = jax.random.key(1)

    def keyed(xs, t, keys):  # depends on the input and the key, not on the class
        phase = (jax.random.key_data(keys)[:, -1] % 97).astype(jnp.float32)
        return jnp.sin(5 * xs + phase[:, None, None, None])

    for explain in (lambda xs, t, k: xs, keyed):
        got = random_logit(explain, x, target, key, num_classes=C)
        assert got.shape == (6,) and got.dtype == jnp.float32
        assert np.all(np.asarray(got) == 1.0)
        for similarity in ("spearman", "spearman_abs"):
            got = random_logit(explain, x, target, key, num_classes=C, similarity=similarity)
            np.testing.assert_allclose(got, 1.0, rtol=0, atol=1e-6)


def test_random_logit_of_a_linear_gradient_is_ssim_of_the_weight_maps(linear):
    fn, gradient, w, x, target = linear
    key = jax.random.key(4)
    seen = []

    def recording(xs, t, k):
        seen.append(np.asarray(t))
        return gradient(xs, t, k)

    got = np.asarray(random_logit(recording, x, target, key, fn=fn))
    other = np.asarray(random_other_classes(target, key, C))
    assert other.dtype == np.int32 and np.all(other != np.asarray(target))
    # One call explaining every example for its target and for its other class.
    (classes,) = seen
    np.testing.assert_array_equal(classes.reshape(-1, 2), np.stack([target, other], 1))
    maps = np.asarray(w.T).reshape(C, SIDE, SIDE)
    want = ssim(unit_abs(maps[target]), unit_abs(maps[other]), data_range=1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.all(got < 0.9)  # distinct weight maps: the gradient depends on the class
    want = spearman(maps[target], maps[other])
    got = random_logit(gradient, x, target, key, num_classes=C, similarity="spearman")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # target=None explains the predicted class.
    predicted = jnp.argmax(fn(x), axis=1)
    np.testing.assert_array_equal(
        random_logit(gradient, x, None, key, fn=fn),
        random_logit(gradient, x, predicted, key, num_classes=C),
    )


def test_random_logit_depends_only_on_the_key(linear):
    _, gradient, _, x, target = linear
    key = jax.random.key(5)
    got = np.asarray(random_logit(gradient, x, target, key, num_classes=C))
    # Example i's draws come from fold_in(key, i): the same with those keys given one per
    # example, and they move with the example when the batch is reordered.
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(6))
    order = np.array([3, 0, 5, 1, 4, 2])
    np.testing.assert_array_equal(
        got[order],
        random_logit(gradient, x[order], target[order], keys[order], num_classes=C),
    )
    assert not np.array_equal(
        random_other_classes(target, key, C), random_other_classes(target, jax.random.key(6), C)
    )
    # Chunks of 4 inputs (a lax.map), all inside one jitted program: the same values.
    jitted = jax.jit(random_logit, static_argnums=0, static_argnames=("num_classes", "batch_size"))
    np.testing.assert_allclose(
        jitted(gradient, x, target, key, num_classes=C, batch_size=4), got, rtol=0, atol=1e-6
    )


def test_random_other_classes_are_uniform_over_the_other_classes():
    n = 4000
    target = jnp.arange(n, dtype=jnp.int32) % 4
    other = np.asarray(random_other_classes(target, jax.random.key(7), 4))
    assert np.all(other != np.asarray(target))
    for t in range(4):
        counts = np.bincount(other[t::4], minlength=4)
        assert counts[t] == 0
        # n / 4 examples per target, spread over 3 classes: 333 each, sd about 15.
        assert np.all(np.abs(np.delete(counts, t) - n / 12) < 75), (t, counts)


def test_random_logit_rejects_bad_input(linear):
    fn, gradient, _, x, target = linear
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        random_logit(gradient, x, 0, key, num_classes=1)
    with pytest.raises(ValueError, match="at least 2 classes, but fn returns 1"):
        random_logit(gradient, x, 0, key, fn=lambda z: fn(z)[:, :1])
    with pytest.raises(ValueError, match="num_classes= or fn="):
        random_logit(gradient, x, target, key)
    with pytest.raises(ValueError, match="num_classes=4 but fn returns 5"):
        random_logit(gradient, x, target, key, fn=fn, num_classes=4)
    with pytest.raises(ValueError, match=r"target out of range.*\[0, 5\)"):
        random_logit(gradient, x, 5, key, num_classes=C)
    with pytest.raises(ValueError, match="needs fn="):
        random_logit(gradient, x, None, key, num_classes=C)
    with pytest.raises(ValueError, match="unknown similarity"):
        random_logit(gradient, x, target, key, num_classes=C, similarity="pearson")
    with pytest.raises(ValueError, match="unknown channel reduction"):
        random_logit(gradient, x, target, key, num_classes=C, channels="mean")
    with pytest.raises(ValueError, match=r"leading axis 12"):
        random_logit(lambda xs, t, k: xs[:1], x, target, key, num_classes=C)
    flat = x.reshape(6, -1)
    with pytest.raises(ValueError, match="similarity='spearman'"):
        random_logit(lambda xs, t, k: xs, flat, target, key, num_classes=C)
    with pytest.raises(ValueError, match="shape"):
        random_other_classes(1, key, C)
    with pytest.raises(ValueError, match="asks for class 4294967297"):
        random_other_classes(np.array([0, 2**32 + 1]), key, C)  # not wrapped to class 1


# -------------------------------------------------------------- input invariance


def test_input_invariance_separates_gradients_from_input_times_gradient(cnn):
    model, variables, x, target = cnn
    fn = functools.partial(model.apply, variables)

    def make(name, **options):
        return lambda f: jax.jit(explainer(name, f, **options))

    key = jax.random.key(3)
    # The gradient of z -> fn(z - s) at x + s is the gradient of fn at x; SmoothGrad
    # too, its noise drawn from the same key and scaled by the shift-free value range.
    assert np.all(np.asarray(input_invariance(make("saliency"), fn, x, target)))
    smooth = make("smoothgrad", samples=4)
    assert np.all(np.asarray(input_invariance(smooth, fn, x, None, key)))
    # x * grad changes by s * grad; IG from the fixed zero baseline integrates another
    # path; the input itself moves by s. A map that ignores the input cannot move.
    for method in (make("input_x_gradient"), make("integrated_gradients", steps=8)):
        assert not np.any(np.asarray(input_invariance(method, fn, x, target, shift=0.5)))
    assert not np.any(np.asarray(input_invariance(lambda f: lambda x, t, k: x, fn, x, target)))
    constant = input_invariance(lambda f: lambda x, t, k: jnp.ones_like(x), fn, x, target)
    assert np.all(np.asarray(constant))
    with pytest.raises(ValueError, match="shift must be a finite number"):
        input_invariance(make("saliency"), fn, x, target, shift=float("inf"))
    with pytest.raises(ValueError, match="rtol and atol"):
        input_invariance(make("saliency"), fn, x, target, atol=-1.0)
    with pytest.raises(ValueError, match="must return maps"):
        input_invariance(lambda f: lambda x, t, k: x[0], fn, x, target)
