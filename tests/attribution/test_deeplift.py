"""DeepLIFT-Rescale as a jaxpr interpreter: hand-computed answers, summation-to-delta on
real flax models, reused modules, every activation rule, and refusals."""

import functools
import inspect
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax import models
from fmi_jax.attribution import deeplift, flax_model, integrated_gradients
from tests import testdata

relu = jax.nn.relu


def scalar(f):
    """Wrap f(x) -> (N,) into a one-class model."""
    return lambda x: f(x)[:, None]


def compiled(fn, x, target, baseline=None, **kwargs):
    """``deeplift(fn, x, target, **kwargs)`` traced and compiled as one XLA program, for
    most tests below: un-jitted, each primitive of the paired program and of its gradient
    compiles on its own. (Several small hand-computed cases stay un-jitted.)"""
    run = lambda x, target, baseline: deeplift(fn, x, target, baseline=baseline, **kwargs)
    return jax.jit(run)(x, target, baseline)


def init(model, x, seed):
    """The model's variables, from one compiled ``model.init`` with an RBG key (XLA's own
    random-bit generator compiles far faster than threefry inlined per parameter)."""
    return jax.jit(model.init)(jax.random.key(seed, impl="rbg"), x)


# -------------------------------------------------------------- hand-computed answers


def test_linear_model_equals_integrated_gradients():
    w = testdata.normal(jax.random.key(0), (6, 3))
    x = testdata.normal(jax.random.key(1), (4, 6))
    baseline = testdata.normal(jax.random.key(2), (4, 6))
    fn = lambda x: x @ w + 2.0
    expected = (x - baseline) * w[:, 1]
    np.testing.assert_allclose(
        compiled(fn, x, 1, baseline=baseline), expected, rtol=1e-5, atol=1e-6
    )
    ig = jax.jit(lambda x: integrated_gradients(fn, x, 1, baseline=baseline))(x)
    np.testing.assert_allclose(ig, expected, rtol=1e-5, atol=1e-6)


def test_ig_paper_model_by_hand():
    """f = ReLU(ReLU(x1) - 1 - ReLU(x2)) at (3, 1), baseline 0. Inner ReLUs: deltas 3 and 1,
    multipliers 1. Their combination u = h1 - 1 - h2 goes from -1 to 1, the outer ReLU
    from 0 to 1: multiplier 1/2. Attributions (3 * 1/2, 1 * -1 * 1/2) = (1.5, -0.5)."""
    fn = scalar(lambda x: relu(relu(x[:, 0]) - 1 - relu(x[:, 1])))
    attributions, delta = compiled(fn, jnp.array([[3.0, 1.0]]), 0, return_delta=True)
    np.testing.assert_allclose(attributions, [[1.5, -0.5]], rtol=1e-6)
    np.testing.assert_allclose(delta, [0.0], atol=1e-6)


def test_where_rescale_and_integrated_gradients_differ_by_hand():
    """f = ReLU(ReLU(x1) + ReLU(x2 - 1/2) - 2) at (3, 1), baseline 0.
    DeepLIFT: h1: 0 -> 3 (m = 1); h2: 0 -> 1/2 for dx2 = 1 (m = 1/2); u: -2 -> 3/2, out:
    0 -> 3/2 (m = 3/7). A = (3 * 3/7, 1 * 1/2 * 3/7) = (9/7, 3/14).
    IG: on the path (3a, a) the output is active for a > 5/8, where the gradient is (1, 1):
    IG = (3 * 3/8, 1 * 3/8) = (9/8, 3/8). Both sum to f(x) - f(0) = 3/2."""
    fn = scalar(lambda x: relu(relu(x[:, 0]) + relu(x[:, 1] - 0.5) - 2))
    x = jnp.array([[3.0, 1.0]])
    np.testing.assert_allclose(compiled(fn, x, 0), [[9 / 7, 3 / 14]], rtol=1e-6)
    ig = jax.jit(lambda x: integrated_gradients(fn, x, 0, steps=4000, rule="riemann_middle"))
    np.testing.assert_allclose(ig(x), [[9 / 8, 3 / 8]], rtol=1e-3)


def test_product_of_two_input_dependent_values_is_the_shapley_split():
    """x1 * x2 from (1, 1) to (3, 2): dx1 * (x2 + x2') / 2 = 2 * 3/2 = 3,
    dx2 * (x1 + x1') / 2 = 1 * 2 = 2; together 6 - 1 = 5."""
    fn = scalar(lambda x: x[:, 0] * x[:, 1])
    attributions, delta = deeplift(fn, jnp.array([[3.0, 2.0]]), 0, baseline=1.0, return_delta=True)
    np.testing.assert_allclose(attributions, [[3.0, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(delta, [0.0], atol=1e-6)


def test_max_of_two_input_dependent_values_is_the_shapley_split():
    """max(x1, x2) from (0, 2) to (3, 1): phi1 = [(max(3, 2) - max(0, 2)) + (max(3, 1) -
    max(0, 1))] / 2 = 3/2, phi2 = [(max(0, 1) - max(0, 2)) + (max(3, 1) - max(3, 2))] / 2
    = -1/2."""
    fn = scalar(lambda x: jnp.maximum(x[:, 0], x[:, 1]))
    attributions = deeplift(fn, jnp.array([[3.0, 1.0]]), 0, baseline=jnp.array([0.0, 2.0]))
    np.testing.assert_allclose(attributions, [[1.5, -0.5]], rtol=1e-6)


@pytest.mark.parametrize(
    "x, baseline, expected",
    [
        # max rises 3 -> 4: all of it goes to the input's argmax (position 1, change 4).
        ([1.0, 4.0, 2.0], [3.0, 0.0, 1.0], [0.0, 1.0, 0.0]),
        # max falls 3 -> 2.5: it goes to the baseline's argmax (position 0, change -2).
        ([1.0, 2.0, 2.5], [3.0, 0.0, 1.0], [-0.5, 0.0, 0.0]),
    ],
)
def test_max_pooling_rule_by_hand(x, baseline, expected):
    """Captum's rule, for reduce_max and for flax's nn.max_pool (reduce_window_max)."""
    x, baseline = jnp.array([x]), jnp.array(baseline)
    np.testing.assert_allclose(
        compiled(scalar(lambda v: jnp.max(v, axis=1)), x, 0, baseline=baseline),
        [expected],
        rtol=1e-6,
    )
    pooled = lambda v: nn.max_pool(v.reshape(1, 1, 3, 1), (1, 3)).reshape(1, 1)
    np.testing.assert_allclose(compiled(pooled, x, 0, baseline=baseline), [expected], rtol=1e-6)


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_erf": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
    "mish": jax.nn.mish,
    "hard_tanh": jax.nn.hard_tanh,
    "hard_swish": jax.nn.hard_swish,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "exp": jnp.exp,
    "abs": jnp.abs,
    "clip": lambda v: jnp.clip(v, -1.0, 1.5),
    "maximum_const": lambda v: jnp.maximum(v, 0.3),
    "x_times_sigmoid_x": lambda v: v * jax.nn.sigmoid(v),
    "cube": lambda v: v**3,
    "rational": lambda v: v / (1 + jnp.abs(v)),
    "reciprocal_of_dependent": lambda v: 1.0 / (1.0 + v**2),
    "max_of_two_branches": lambda v: jnp.maximum(v, jnp.sin(v)),
}


def test_elementwise_function_gets_exactly_its_own_difference():
    """For f(x) = sum_j g(x_j) the contribution of x_j is g(x_j) - g(x0_j): one scalar
    path, so summation-to-delta pins the multiplier to the secant. This exercises every
    nonlinear rule (Rescale, Shapley products/max, activation functions rescaled whole).
    Class a of the model is sum_j g_a(x_j); example a explains class a (one compilation
    for all activations)."""
    names = sorted(ACTIVATIONS)
    x = jnp.linspace(-4.0, 4.0, 12)
    baseline = jnp.flip(x) * 0.5 + 0.1

    def fn(v):
        return jnp.stack([jnp.sum(ACTIVATIONS[name](v), axis=1) for name in names], axis=1)

    batch = jnp.tile(x, (len(names), 1))
    attributions = compiled(fn, batch, jnp.arange(len(names)), baseline=baseline)
    for row, name in enumerate(names):
        g = ACTIVATIONS[name]
        np.testing.assert_allclose(
            attributions[row], g(x) - g(baseline), rtol=1e-5, atol=1e-6, err_msg=name
        )


@pytest.mark.parametrize("ulps", [1, 16, 4096, 2**20])
def test_multipliers_stay_accurate_when_input_and_baseline_nearly_agree(ulps):
    """x0 = x (1 + ulps * 2^-23). Within a few ulps the float32 quotient
    (exp(z) - exp(z0)) / (z - z0) is mostly rounding noise; the midpoint slope is used
    there, so the multiplier matches the exact secant (float64) at every distance."""
    x = jnp.array([[0.3, -1.0, 2.0, 0.05]])
    weights = np.array([1.0, -2.0, 0.5, 3.0])
    baseline = x * np.float32(1 + ulps * 2.0**-23)
    fn = scalar(lambda v: jnp.sum(jnp.exp(v) * weights, axis=1))
    multipliers = deeplift(fn, x, 0, baseline=baseline) / (x - baseline)
    x64, b64 = np.float64(x), np.float64(baseline)
    secant = weights * (np.exp(x64) - np.exp(b64)) / (x64 - b64)
    np.testing.assert_allclose(multipliers, secant, rtol=1e-5)


# ------------------------------------------------------------ summation-to-delta


def _delta(fn, x, baseline=0.0, target=None):
    attributions, delta = compiled(fn, x, target, baseline=baseline, return_delta=True)
    assert np.all(np.isfinite(attributions))
    return np.asarray(delta)


def test_summation_to_delta_on_a_relu_mlp():
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for width in (16, 16):
                x = nn.relu(nn.Dense(width)(x))
            return nn.Dense(4)(x)

    x = testdata.uniform(jax.random.key(0), (6, 10))
    model = MLP()
    variables = init(model, x, 1)
    np.testing.assert_allclose(
        _delta(lambda v: model.apply(variables, v), x, baseline=0.5), 0, atol=1e-5
    )
    # Parameters passed to jit as traced arguments become traced constants of the jaxpr.
    jitted = jax.jit(
        lambda variables, v: deeplift(lambda q: model.apply(variables, q), v, 2, baseline=0.5)
    )
    np.testing.assert_allclose(
        jitted(variables, x),
        deeplift(lambda v: model.apply(variables, v), x, 2, baseline=0.5),
        rtol=1e-5,
        atol=1e-6,
    )


def test_summation_to_delta_on_a_flax_cnn_with_max_pooling(cnn_fn, images):
    delta = _delta(cnn_fn, images, baseline=images[::-1])
    np.testing.assert_allclose(delta, 0, atol=1e-5)


def test_model_zoo_cnn_with_its_own_pooling_equals_the_flax_max_pool_program(monkeypatch):
    """SimpleCNN pools with `layers.max_pool` (a custom_jvp around a max reduction). The
    interpreter must see through it: the maps sum to delta and equal those of the same
    network pooled with flax's reduce_window max_pool."""
    model = models.get_model("cnn_fmnist", features=(4, 6, 8), dense=(12,), dropout=0.0)
    x = testdata.uniform(jax.random.key(5), (3, 28, 28, 1))
    variables = init(model, x, 6)
    fn = lambda v: model.apply(variables, v)
    ours, delta = compiled(fn, x, 1, return_delta=True)  # one program for both
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(delta, 0, atol=1e-5)
    monkeypatch.setattr(
        models.layers, "max_pool", lambda v, w: nn.max_pool(v, (w, w), strides=(w, w))
    )
    np.testing.assert_allclose(compiled(fn, x, 1), ours, rtol=1e-5, atol=1e-6)


class ReusedBlock(nn.Module):
    """One Dense module and one activation function, each applied twice: the pattern that
    breaks Captum's module hooks (the second call overwrites the first's saved input)."""

    shared: bool = True

    @nn.compact
    def __call__(self, x):
        dense = nn.Dense(x.shape[-1], name="dense")
        act = jax.nn.relu
        x = act(dense(x))
        x = act(dense(x) - 0.2)
        return nn.Dense(3, name="head")(x)


def test_reused_module_and_activation_sum_to_delta_and_equal_the_unshared_program():
    x = testdata.normal(jax.random.key(3), (5, 8))
    model = ReusedBlock()
    variables = init(model, x, 4)
    fn = lambda v: model.apply(variables, v)
    np.testing.assert_allclose(_delta(fn, x, baseline=0.3), 0, atol=1e-5)

    params = variables["params"]

    def written_out(v):  # the same function with each layer written separately
        d = params["dense"]
        h = jax.nn.relu(v @ d["kernel"] + d["bias"])
        h = jax.nn.relu(h @ d["kernel"] + d["bias"] - 0.2)
        return h @ params["head"]["kernel"] + params["head"]["bias"]

    both = jax.jit(  # one compiled program for the two
        lambda x: [deeplift(f, x, 1, baseline=0.3) for f in (fn, written_out)]
    )
    np.testing.assert_allclose(*both(x), rtol=1e-5, atol=1e-6)


def test_summation_to_delta_with_gates_and_normalisation():
    """x * sigmoid(x) written out, a squeeze-and-excitation gate (a product of two branches
    with different shapes), LayerNorm ((x - mean) * rsqrt(var)), softmax output."""

    class Gated(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3))(x)
            x = x * jax.nn.sigmoid(x)
            gate = jax.nn.sigmoid(nn.Dense(4)(jnp.mean(x, axis=(1, 2), keepdims=True)))
            x = nn.LayerNorm()(x * gate)
            return jax.nn.softmax(nn.Dense(3)(x.reshape(x.shape[0], -1)))

    x = testdata.uniform(jax.random.key(5), (4, 5, 5, 2))
    baseline = testdata.uniform(jax.random.key(6), (4, 5, 5, 2))
    model = Gated()
    variables = init(model, x, 6)
    np.testing.assert_allclose(
        _delta(lambda v: model.apply(variables, v), x, baseline), 0, atol=1e-5
    )


@jax.custom_vjp
def _custom_vjp_conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


_custom_vjp_conv.defvjp(
    lambda x, w: (_custom_vjp_conv(x, w), None), lambda _, g: (None, None)
)  # never used: DeepLIFT reads the forward


def test_nested_jit_checkpoint_and_custom_vjp_forward():
    w = testdata.normal(jax.random.key(7), (3, 3, 2, 3)) / 3
    head = testdata.normal(jax.random.key(8), (5 * 5 * 3, 2))

    @jax.jit
    def fn(x):
        h = jax.checkpoint(lambda v: jax.nn.gelu(_custom_vjp_conv(v, w)))(x)
        return jnp.tanh(h.reshape(x.shape[0], -1)) @ head

    x = testdata.uniform(jax.random.key(9), (3, 5, 5, 2))
    np.testing.assert_allclose(_delta(fn, x, baseline=0.5), 0, atol=1e-5)


def test_baseline_equal_to_input_gives_zero():
    x = testdata.normal(jax.random.key(0), (3, 4))
    fn = lambda v: jnp.tanh(v) @ jnp.ones((4, 2))
    attributions, delta = deeplift(fn, x, 0, baseline=x, return_delta=True)
    np.testing.assert_array_equal(attributions, 0)
    np.testing.assert_array_equal(delta, 0)


# ----------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "f, primitive",
    [
        (lambda v: jnp.sort(v, axis=1), "sort"),
        (lambda v: jax.lax.cummax(v, axis=1), "cummax"),
        (lambda v: jnp.where(v > 0, v, 0.0), "gt"),  # comparison outside an activation
        (lambda v: v**v, "pow"),
    ],
)
def test_unknown_nonlinear_primitives_raise_naming_them(f, primitive):
    x = jnp.ones((2, 3))
    with pytest.raises(NotImplementedError, match=f"no rule for primitive '{primitive}'"):
        deeplift(lambda v: f(v) @ jnp.ones((3, 2)), x, 0)


def test_the_refusal_names_the_line_of_the_model_that_made_the_primitive():
    def model(v):
        return jnp.sort(v, axis=1) @ jnp.ones((3, 2))

    line = model.__code__.co_firstlineno + 1
    message = rf"'sort' .* at \S*test_deeplift\.py:{line}:\d+ \(.*model\)\. "
    with pytest.raises(NotImplementedError, match=message):
        deeplift(model, jnp.ones((2, 3)), 0)

    # A library layer's primitive: the user's line first, then the library's.
    class Net(nn.Module):
        @nn.compact
        def __call__(self, v):
            return nn.Dense(2)(nn.PReLU()(v))

    x = jnp.ones((2, 3))
    handle = flax_model(Net(), Net().init(jax.random.key(0), x))
    line = inspect.unwrap(Net.__call__).__code__.co_firstlineno + 2
    message = rf"'ge' .* at \S*test_deeplift\.py:{line}:\d+ \(.*Net.__call__\), in \S*flax\S*"
    with pytest.raises(NotImplementedError, match=message):
        deeplift(handle, x, 0)


def test_a_user_folder_named_like_the_package_is_the_user_s_code():
    from fmi_jax.attribution import propagation

    package = Path(propagation.__file__).parents[1]
    assert propagation._in_a_library(f"{package}/attribution/core.py:1:1 (f)")
    assert not propagation._in_a_library(f"{package}_models/net.py:5:27 (Net.__call__)")
    assert propagation._in_a_library("/x/lib/python3/site-packages/flax/a.py:9:8 (PReLU.f)")


def test_an_activation_wrapped_in_jit_is_rescaled_whole():
    """The NotImplementedError's advice: jnp.where(v > 0, v, 0) inside jax.jit is an
    elementwise function of one input-dependent array, i.e. an activation."""
    act = jax.jit(lambda v: jnp.where(v > 0, v, 0.0))
    x = jnp.array([[1.0, -2.0, 3.0]])
    np.testing.assert_allclose(
        deeplift(scalar(lambda v: jnp.sum(act(v), axis=1)), x, 0, baseline=-0.5), [[1.0, 0.0, 3.0]]
    )
