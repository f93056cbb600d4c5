"""Layer and neuron attribution against known answers.

The model is conv1 (3 x 3, affine in x) -> softplus -> conv2 (1 x 1) -> softplus ->
conv3 (1 x 1) -> spatial mean -> dense, so

* after conv3 the network is linear: dy_t/dA_ijk = W[k, t] / (h w) everywhere, which
  makes every layer method at conv3 a closed form;
* conv1 is affine in the input: the input path maps onto the straight activation path,
  so conductance and internal influence turn into layer integrated gradients there, and
  a conv1 unit's input gradient is its kernel placed around the unit;
* conv2 is nonlinear on both sides; softplus makes everything smooth, and away from
  conv3 completeness holds only up to the quadrature error.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fmi_jax import attribution as A
from fmi_jax.attribution import (
    at_layer,
    at_neuron,
    completeness_delta,
    deconvolution,
    deeplift,
    deeplift_shap,
    feature_ablation,
    feature_permutation,
    flax_model,
    grad_cam,
    gradient_shap,
    guided_backprop,
    input_x_gradient,
    integrated_gradients,
    lrp,
    noise_tunnel,
    saliency,
)
from fmi_jax.attribution.layer import (
    internal_influence,
    layer_conductance,
    layer_gradient_x_activation,
    layer_integrated_gradients,
    neuron_conductance,
    neuron_gradient,
    neuron_integrated_gradients,
)

SIDE, CHANNELS, CLASSES = 4, 2, 3
TARGET = np.array([0, 2, 1, 2], np.int32)
UNIT = (1, 2, 0)  # a conv1 unit: row 1, column 2, channel 0
STEPS = 8


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        a = nn.Conv(3, (3, 3), padding="SAME", name="conv1")(x)
        a = nn.Conv(2, (1, 1), name="conv2")(nn.softplus(a))
        a = nn.Conv(2, (1, 1), name="conv3")(nn.softplus(a))
        return nn.Dense(CLASSES, name="head")(a.mean(axis=(1, 2)))


class Tiny(nn.Module):
    """One 2 x 2 conv with two units, so a test can sum over every unit of the layer."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        a = nn.softplus(nn.Conv(2, (2, 2), padding="VALID", name="hidden")(x))
        return nn.Dense(CLASSES, name="head")(jnp.tanh(a.reshape(a.shape[0], -1)))


def numpy_variables(model: nn.Module, shape: tuple[int, ...], seed: int):
    """Variables drawn by NumPy (flax's initialisers would compile threefry per shape)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
    return jax.tree.map(
        lambda leaf: jnp.asarray(rng.normal(0.0, 0.7, leaf.shape), leaf.dtype), shapes
    )


@pytest.fixture(scope="module")
def net():
    """(handle, variables, x, baseline) for Net: four images and a nonzero baseline."""
    variables = numpy_variables(Net(), (1, SIDE, SIDE, CHANNELS), 0)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(0, 1, (4, SIDE, SIDE, CHANNELS)), jnp.float32)
    baseline = jnp.asarray(rng.uniform(0, 0.3, (SIDE, SIDE, CHANNELS)), jnp.float32)
    return flax_model(Net(), variables, train=False), variables, x, baseline


def activation(handle, x, layer):
    return handle.capture(x, layer)[1]


def head_gradient(variables, target):
    """dy_t/dA at conv3, (N, h, w, K): the dense weight of channel k, over h w pixels."""
    w = np.asarray(variables["params"]["head"]["kernel"])  # (K, classes)
    per_channel = w[:, target].T / (SIDE * SIDE)  # (N, K)
    return np.broadcast_to(per_channel[:, None, None, :], (len(target), SIDE, SIDE, 2))


def test_layer_gradient_x_activation_after_a_linear_head(net):
    handle, variables, x, _ = net
    got = layer_gradient_x_activation(handle, x, TARGET, layer="conv3")
    expected = activation(handle, x, "conv3") * head_gradient(variables, TARGET)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    # A linear head: the map sums to the logit minus its bias.
    bias = np.asarray(variables["params"]["head"]["bias"])[TARGET]
    logits = np.asarray(handle(x))[np.arange(4), TARGET]
    np.testing.assert_allclose(got.sum(axis=(1, 2, 3)), logits - bias, rtol=1e-5, atol=1e-5)


def test_layer_methods_at_a_layer_followed_by_a_linear_head(net):
    """g is constant after conv3, so every path method is exact: layer IG and conductance
    are (A(x) - A(x')) g, complete to float rounding; internal influence is g itself."""
    handle, variables, x, baseline = net
    g = head_gradient(variables, TARGET)
    change = activation(handle, x, "conv3") - activation(
        handle, jnp.broadcast_to(baseline, x.shape), "conv3"
    )
    common = dict(target=TARGET, layer="conv3", baseline=baseline, steps=3)
    for attributions in (
        layer_integrated_gradients(handle, x, **common),
        layer_conductance(handle, x, **common),
    ):
        np.testing.assert_allclose(attributions, change * g, rtol=1e-4, atol=1e-6)
        gap = completeness_delta(handle, x, TARGET, attributions, baseline=baseline)
        np.testing.assert_allclose(gap, 0.0, atol=2e-5)
    np.testing.assert_allclose(internal_influence(handle, x, **common), g, rtol=1e-5)


@pytest.fixture(scope="module")
def conv1_results(net):
    """Every layer method at conv1, default and chunked (batch_size 3: of the 4 * STEPS
    (example, node) evaluations, or of the 4 examples for conductance)."""
    handle, _, x, baseline = net
    common = dict(target=TARGET, layer="conv1", baseline=baseline, steps=STEPS)
    results = {}
    for batch_size in (None, 3):
        results[batch_size] = {
            "lig_gauss": layer_integrated_gradients(handle, x, **common, batch_size=batch_size),
            "lig_left": layer_integrated_gradients(
                handle, x, **common, rule="riemann_left", batch_size=batch_size
            ),
            "conductance": layer_conductance(handle, x, **common, batch_size=batch_size),
            "influence": internal_influence(handle, x, **common, batch_size=batch_size),
            "gxa": layer_gradient_x_activation(
                handle, x, TARGET, layer="conv1", batch_size=batch_size
            ),
        }
    return results


def test_layer_integrated_gradients_is_complete_up_to_quadrature(net, conv1_results):
    """Softplus after conv1: smooth, so Gauss-Legendre with 8 nodes is complete to float
    precision, while the first-order left Riemann rule misses by far more."""
    handle, _, x, baseline = net
    gauss = completeness_delta(
        handle, x, TARGET, conv1_results[None]["lig_gauss"], baseline=baseline
    )
    left = completeness_delta(handle, x, TARGET, conv1_results[None]["lig_left"], baseline=baseline)
    np.testing.assert_allclose(gauss, 0.0, atol=2e-5)
    assert np.all(np.abs(left) > 100 * np.abs(gauss).max())


def test_conductance_of_an_affine_layer_is_layer_integrated_gradients(conv1_results):
    """conv1 is affine in x: each input step moves A by (A(x) - A(x')) / n, so conductance
    is layer IG with the left Riemann rule on the same nodes k / n."""
    results = conv1_results[None]
    np.testing.assert_allclose(results["conductance"], results["lig_left"], rtol=1e-4, atol=1e-6)


def test_internal_influence_of_an_affine_layer_times_the_change_is_layer_ig(net, conv1_results):
    handle, _, x, baseline = net
    change = activation(handle, x, "conv1") - activation(
        handle, jnp.broadcast_to(baseline, x.shape), "conv1"
    )
    results = conv1_results[None]
    np.testing.assert_allclose(
        results["influence"] * change, results["lig_gauss"], rtol=1e-4, atol=1e-6
    )


def test_layer_methods_do_not_depend_on_batch_size(conv1_results):
    for name, value in conv1_results[None].items():
        np.testing.assert_allclose(
            conv1_results[3][name], value, rtol=1e-5, atol=1e-6, err_msg=name
        )


def split_at_conv2(variables):
    """Net cut by hand at conv2's output, without the handle: (x -> A, A -> logits)."""
    params = variables["params"]

    def conv(name, size, a):
        module = nn.Conv(params[name]["kernel"].shape[-1], size, padding="SAME")
        return module.apply({"params": params[name]}, a)

    def head(a):
        a = conv("conv3", (1, 1), nn.softplus(a)).mean(axis=(1, 2))
        return nn.Dense(CLASSES).apply({"params": params["head"]}, a)

    return lambda x: conv("conv2", (1, 1), nn.softplus(conv("conv1", (3, 3), x))), head


def test_layer_conductance_against_the_formula_on_a_hand_split_model(net):
    """conv2 is nonlinear on both sides: sum_k g(x(k/n)) (A(x((k+1)/n)) - A(x(k/n))) from
    the model cut by hand, for one segment and for four, in any chunks of examples
    (3 examples in chunks of 2 pad the last one); the completeness gap falls like 1/n."""
    handle, variables, x, baseline = net
    to_layer, head = split_at_conv2(variables)
    common = dict(layer="conv2", baseline=baseline)
    for n in (1, 4):
        expected = 0.0
        for k in range(n):
            start = baseline + k / n * (x - baseline)
            end = baseline + (k + 1) / n * (x - baseline)
            a = to_layer(start)
            g = jax.grad(lambda a: jnp.take_along_axis(head(a), TARGET[:, None], 1).sum())(a)
            expected = expected + g * (to_layer(end) - a)
        coarse = layer_conductance(handle, x, TARGET, **common, steps=n)
        np.testing.assert_allclose(coarse, expected, rtol=1e-4, atol=1e-6)
        padded = layer_conductance(handle, x[:3], TARGET[:3], **common, steps=n, batch_size=2)
        np.testing.assert_allclose(padded, expected[:3], rtol=1e-4, atol=1e-6)
    fine = layer_conductance(handle, x, TARGET, **common, steps=8 * n)
    gaps = [
        np.abs(completeness_delta(handle, x, TARGET, c, baseline=baseline)) for c in (coarse, fine)
    ]
    assert np.all(gaps[1] < gaps[0] / 4)


def conv1_unit_gradient(variables, unit):
    """dA_unit/dx for a 3 x 3 SAME conv: its kernel placed around the unit, cut at the edge."""
    kernel = np.asarray(variables["params"]["conv1"]["kernel"])  # (3, 3, C, K)
    i, j, k = unit
    grad = np.zeros((SIDE, SIDE, CHANNELS), np.float32)
    for di in range(3):
        for dj in range(3):
            r, c = i + di - 1, j + dj - 1
            if 0 <= r < SIDE and 0 <= c < SIDE:
                grad[r, c] = kernel[di, dj, :, k]
    return grad


def test_neuron_gradient_and_ig_of_an_affine_unit(net):
    handle, variables, x, baseline = net
    w = conv1_unit_gradient(variables, UNIT)
    for batch_size in (None, 3):
        got = neuron_gradient(handle, x, layer="conv1", neuron=UNIT, batch_size=batch_size)
        np.testing.assert_allclose(got, np.broadcast_to(w, x.shape), rtol=1e-6, atol=1e-7)
    # Negative indices count from the end, as in Python.
    got = neuron_gradient(handle, x, layer="conv1", neuron=(1, -2, -3))
    np.testing.assert_allclose(got, np.broadcast_to(w, x.shape), rtol=1e-6, atol=1e-7)
    ig = neuron_integrated_gradients(
        handle, x, layer="conv1", neuron=UNIT, baseline=baseline, steps=2, rule="riemann_right"
    )
    np.testing.assert_allclose(ig, w * (x - baseline), rtol=1e-5, atol=1e-7)


def test_neuron_integrated_gradients_is_complete_for_a_nonlinear_unit(net):
    """A conv2 unit is a softplus network of x: completeness up to quadrature error."""
    handle, _, x, baseline = net
    unit = (2, 1, 1)
    results = [
        neuron_integrated_gradients(
            handle, x, layer="conv2", neuron=unit, baseline=baseline, steps=STEPS, batch_size=b
        )
        for b in (None, 3)
    ]
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-7)
    full = jnp.broadcast_to(baseline, x.shape)
    expected = (
        activation(handle, x, "conv2")[:, 2, 1, 1] - activation(handle, full, "conv2")[:, 2, 1, 1]
    )
    np.testing.assert_allclose(results[0].sum(axis=(1, 2, 3)), expected, atol=2e-5)


def test_neuron_conductance_sums_to_the_layer_conductance_of_the_unit(net, conv1_results):
    """Riemann-left nodes k / n in both; the unit is affine in x, so its finite differences
    are its directional derivative and the totals agree exactly."""
    handle, _, x, baseline = net
    common = dict(layer="conv1", neuron=UNIT, baseline=baseline, steps=STEPS)
    results = [neuron_conductance(handle, x, TARGET, **common, batch_size=b) for b in (None, 3)]
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-7)
    layer_total = conv1_results[None]["conductance"][(slice(None), *UNIT)]
    np.testing.assert_allclose(results[0].sum(axis=(1, 2, 3)), layer_total, rtol=1e-4, atol=1e-6)


def test_neuron_conductance_over_every_unit_is_integrated_gradients():
    """sum_j dy/dA_j dA_j/dx = dy/dx (every path goes through the layer), so the unit
    conductances add up to integrated gradients with the same rule, for any rule."""
    variables = numpy_variables(Tiny(), (1, 2, 2, 1), 2)
    handle = flax_model(Tiny(), variables, train=False)
    x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (3, 2, 2, 1)), jnp.float32)
    common = dict(baseline=0.2, steps=5, rule="gausslegendre")
    total = sum(
        neuron_conductance(handle, x, 1, layer="hidden", neuron=(0, 0, k), **common)
        for k in range(2)
    )
    expected = integrated_gradients(handle, x, 1, **common)
    np.testing.assert_allclose(total, expected, rtol=1e-5, atol=1e-7)


class Mlp(nn.Module):
    """flatten -> fc1 (affine in x) -> softplus -> fc2 -> head: linear after fc2."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        a = nn.Dense(5, name="fc1")(x.reshape(x.shape[0], -1))
        a = nn.Dense(4, name="fc2")(nn.softplus(a))
        return nn.Dense(CLASSES, name="head")(a)


class NnxMlp(nnx.Module):
    def __init__(self, params):
        rngs = nnx.Rngs(0)
        self.fc1 = nnx.Linear(SIDE * SIDE * CHANNELS, 5, rngs=rngs)
        self.fc2 = nnx.Linear(5, 4, rngs=rngs)
        self.head = nnx.Linear(4, CLASSES, rngs=rngs)
        for name in ("fc1", "fc2", "head"):
            getattr(self, name).kernel[...] = params[name]["kernel"]
            getattr(self, name).bias[...] = params[name]["bias"]

    def __call__(self, x):
        a = self.fc2(nnx.softplus(self.fc1(x.reshape(x.shape[0], -1))))
        return self.head(a)


@pytest.mark.parametrize("backend", ["linen", "nnx"])
def test_layer_and_neuron_methods_at_dense_layers(net, backend):
    """Dense layers return (N, units): the layer and neuron methods take them and meet
    the closed forms of an affine unit and of a layer followed by a linear head."""
    _, _, x, baseline = net
    variables = numpy_variables(Mlp(), (1, SIDE, SIDE, CHANNELS), 4)
    params = variables["params"]
    if backend == "linen":
        handle = flax_model(Mlp(), variables, train=False)
    else:
        handle = flax_model(NnxMlp(params))
    assert handle.layer_names(x) == ("fc1", "fc2", "head")
    assert handle.layer_names(x, images_only=True) == ()
    w_head = np.asarray(params["head"]["kernel"])[:, TARGET].T  # (N, 4): dy_t/dA at fc2
    fc2 = activation(handle, x, "fc2")
    got = layer_gradient_x_activation(handle, x, TARGET, layer="fc2")
    np.testing.assert_allclose(got, fc2 * w_head, rtol=1e-5, atol=1e-6)
    full = jnp.broadcast_to(baseline, x.shape)
    lig = layer_integrated_gradients(handle, x, TARGET, layer="fc2", baseline=baseline)
    change = fc2 - activation(handle, full, "fc2")
    np.testing.assert_allclose(lig, change * w_head, rtol=1e-4, atol=1e-6)
    # Complete at fc1, behind a softplus: up to the quadrature error.
    lig = layer_integrated_gradients(handle, x, TARGET, layer="fc1", baseline=baseline, steps=64)
    rows = np.arange(4)
    expected = np.asarray(handle(x))[rows, TARGET] - np.asarray(handle(full))[rows, TARGET]
    np.testing.assert_allclose(lig.sum(axis=1), expected, rtol=1e-3, atol=1e-4)
    # Unit 3 of fc1 is affine in x: its gradient is its kernel column, laid out like x.
    column = np.asarray(params["fc1"]["kernel"])[:, 3].reshape(SIDE, SIDE, CHANNELS)
    got = neuron_gradient(handle, x, layer="fc1", neuron=(3,))
    np.testing.assert_allclose(got, np.broadcast_to(column, x.shape), rtol=1e-5, atol=1e-7)
    got = neuron_integrated_gradients(handle, x, layer="fc1", neuron=(-2,), baseline=baseline)
    np.testing.assert_allclose(got, column * (x - baseline), rtol=1e-4, atol=1e-6)
    # Any method at the layer: integrated gradients over fc2's units is layer IG.
    lig = at_layer(integrated_gradients)(handle, x, TARGET, layer="fc2", baseline=baseline)
    np.testing.assert_allclose(lig, change * w_head, rtol=1e-4, atol=1e-6)
    one_line_error(lambda: neuron_gradient(handle, x, layer="fc1", neuron=(0, 0, 0)), "neuron")
    one_line_error(lambda: grad_cam(handle, x, TARGET, layer="fc2"), "returns features")


def one_line_error(call, match):
    with pytest.raises(ValueError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


def test_bad_arguments_are_one_line_value_errors(net):
    handle, _, x, _ = net
    one_line_error(lambda: layer_conductance(handle, x, layer="nope"), "no layer 'nope'")
    one_line_error(
        lambda: layer_integrated_gradients(handle, x, layer="conv1", rule="simpson"),
        "unknown quadrature rule",
    )
    one_line_error(
        lambda: neuron_gradient(handle, x, layer="conv1", neuron=(4, 0, 0)), "out of range"
    )
    one_line_error(
        lambda: neuron_conductance(handle, x, layer="conv2", neuron=(0, 0, 2)), "out of range"
    )
    one_line_error(
        lambda: neuron_integrated_gradients(handle, x, layer="conv1", neuron=(1, 2)),
        "tuple of 3 ints",
    )
    one_line_error(
        lambda: neuron_gradient(handle, x, layer="conv1", neuron=5), "not an index tuple"
    )
    for method in (neuron_gradient, neuron_integrated_gradients):
        one_line_error(
            lambda method=method: method(handle, x, 0, layer="conv1", neuron=UNIT),
            "leave it None",
        )
    one_line_error(
        lambda: layer_gradient_x_activation(handle, x, layer="conv1", baseline=0.5),
        "no reference input",
    )
    one_line_error(lambda: internal_influence(handle, x, layer="conv1", batch_size=0), "batch_size")
    one_line_error(
        lambda: layer_conductance(handle.__call__, x, layer="conv1"), "looks inside the model"
    )


# Any method at a layer (at_layer) or of one unit (at_neuron).


def test_the_transforms_rebuild_the_layer_and_neuron_methods(net):
    """Four methods written out above are compositions too: the two constructions agree."""
    handle, _, x, baseline = net
    common = dict(layer="conv2", steps=STEPS)
    np.testing.assert_allclose(
        at_layer(integrated_gradients)(handle, x, TARGET, baseline=baseline, **common),
        layer_integrated_gradients(handle, x, TARGET, baseline=baseline, **common),
        rtol=1e-5,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        at_layer(input_x_gradient)(handle, x, TARGET, layer="conv2"),
        layer_gradient_x_activation(handle, x, TARGET, layer="conv2"),
        rtol=1e-5,
        atol=1e-7,
    )
    unit = dict(layer="conv2", neuron=(2, 1, 1))
    np.testing.assert_allclose(
        at_neuron(saliency)(handle, x, **unit), neuron_gradient(handle, x, **unit), rtol=1e-5
    )
    np.testing.assert_allclose(
        at_neuron(integrated_gradients)(handle, x, baseline=baseline, steps=STEPS, **unit),
        neuron_integrated_gradients(handle, x, baseline=baseline, steps=STEPS, **unit),
        rtol=1e-5,
        atol=1e-7,
    )


def test_methods_at_a_layer_followed_by_a_linear_head(net):
    """After conv3 the logit is linear in A with gradient g: ablating a unit to a value,
    DeepLIFT, GradientSHAP without noise, DeepLiftShap and LRP-epsilon all reduce to
    (A(x) - reference) * g, the reference being the baseline's activation, or zero (LRP:
    the bias absorbs its share, as for gradient x activation)."""
    handle, variables, x, baseline = net
    g = head_gradient(variables, TARGET)
    a = activation(handle, x, "conv3")
    a0 = activation(handle, baseline[None], "conv3")
    references = jnp.stack([baseline, 1 - baseline, 0.5 * baseline])
    a_refs = activation(handle, references, "conv3")
    common = dict(layer="conv3")
    cases = {
        "feature_ablation to zero": (at_layer(feature_ablation)(handle, x, TARGET, **common), a),
        "feature_ablation to A(x')": (
            at_layer(feature_ablation)(handle, x, TARGET, baseline=baseline, **common),
            a - a0,
        ),
        "deeplift": (at_layer(deeplift)(handle, x, TARGET, baseline=baseline, **common), a - a0),
        "gradient_shap": (
            at_layer(gradient_shap)(
                handle, x, TARGET, key=jax.random.key(0), baseline=baseline, samples=3, **common
            ),
            a - a0,
        ),
        "deeplift_shap": (
            at_layer(deeplift_shap)(handle, x, TARGET, baseline=references, **common),
            a - a_refs.mean(axis=0),
        ),
        # A method bound with functools.partial keeps its distribution of references.
        "deeplift_shap through functools.partial": (
            at_layer(functools.partial(deeplift_shap))(
                handle, x, TARGET, baseline=references, **common
            ),
            a - a_refs.mean(axis=0),
        ),
        "lrp": (at_layer(lrp)(handle, x, TARGET, epsilon=1e-9, **common), a),
        "feature_ablation to 0.5 at the layer": (
            at_layer(feature_ablation)(handle, x, TARGET, layer_baseline=0.5, **common),
            a - 0.5,
        ),
        # One reference per example, given with broadcasting axes.
        "deeplift, (N, 1, 1, 1) baseline": (
            at_layer(deeplift)(handle, x, TARGET, baseline=jnp.full((4, 1, 1, 1), 0.2), **common),
            a - activation(handle, jnp.full(x.shape, 0.2), "conv3"),
        ),
    }
    for name, (got, change) in cases.items():
        np.testing.assert_allclose(got, change * g, rtol=1e-4, atol=1e-6, err_msg=name)
    # Permuting a unit across the batch moves its contribution g_j A_j from one example
    # to another: whatever the permutation, each unit's maps sum to zero over the batch.
    permuted = at_layer(feature_permutation)(handle, x, TARGET, key=jax.random.key(3), **common)
    assert float(jnp.abs(permuted).max()) > 1e-3
    target_g = jnp.asarray(g)
    np.testing.assert_allclose((permuted / target_g).sum(axis=0), 0.0, atol=1e-4)


def test_layer_gradient_shap_behind_a_nonlinear_head_integrates_along_the_activations(net):
    """At conv2 the gradient changes along the path: GradientSHAP from one reference and
    without noise averages it at random points between A(x') and A(x), so with many
    samples it approaches layer IG from that reference, and not the gradient at A(x)
    times the change (a method that ignored the point, or evaluated elsewhere)."""
    handle, _, x, baseline = net
    common = dict(layer="conv2", baseline=baseline)
    shap = at_layer(gradient_shap)(
        handle, x, TARGET, key=jax.random.key(4), samples=256, batch_size=512, **common
    )
    lig = layer_integrated_gradients(handle, x, TARGET, steps=16, **common)
    at_end = at_layer(input_x_gradient)(handle, x, TARGET, layer="conv2") - activation(
        handle, baseline[None], "conv2"
    ) * at_layer(saliency)(handle, x, TARGET, layer="conv2")
    error = float(jnp.linalg.norm(shap - lig))
    assert error < float(jnp.linalg.norm(at_end - lig)) / 4, error
    assert error < 0.1 * float(jnp.linalg.norm(lig)), error


def test_layer_deeplift_sums_to_the_logit_difference_behind_a_nonlinear_head(net):
    """Summation-to-delta at the layer: sum_j C_j = y_t(x) - y_t(x'), for a per-example
    baseline and in chunks; DeepLiftShap sums to y_t(x) minus the references' mean."""
    handle, _, x, baseline = net
    full = jnp.broadcast_to(baseline, x.shape) + jnp.linspace(0, 0.1, 4)[:, None, None, None]
    rows = np.arange(4)
    logit_change = handle(x)[rows, TARGET] - handle(full)[rows, TARGET]
    for layer in ("conv1", "conv2"):
        for batch_size in (None, 3):
            got = at_layer(deeplift)(
                handle, x, TARGET, baseline=full, layer=layer, batch_size=batch_size
            )
            np.testing.assert_allclose(got.sum(axis=(1, 2, 3)), logit_change, atol=2e-5)
    references = full[:3]
    shap = at_layer(deeplift_shap)(handle, x, TARGET, baseline=references, layer="conv2")
    expected = handle(x)[rows, TARGET] - handle(references)[:, TARGET].mean(axis=0)
    np.testing.assert_allclose(shap.sum(axis=(1, 2, 3)), expected, atol=2e-5)


def test_neuron_methods_of_an_affine_unit_and_a_nonlinear_one(net):
    """A conv1 unit is affine in x with gradient w (its kernel in place): ablating pixel p
    changes it by w_p (x_p - x'_p), and GradientSHAP without noise is w (x - x'). A conv2
    unit is not: neuron DeepLIFT sums to A_n(x) - A_n(x'), in any chunks."""
    handle, variables, x, baseline = net
    w = conv1_unit_gradient(variables, UNIT)
    unit = dict(layer="conv1", neuron=UNIT)
    np.testing.assert_allclose(
        at_neuron(feature_ablation)(handle, x, baseline=baseline, **unit),
        w * (x - baseline),
        rtol=1e-4,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        at_neuron(gradient_shap)(
            handle, x, key=jax.random.key(1), baseline=baseline, samples=2, **unit
        ),
        w * (x - baseline),
        rtol=1e-4,
        atol=1e-6,
    )
    deep = dict(layer="conv2", neuron=(2, 1, 1), baseline=baseline)
    results = [at_neuron(deeplift)(handle, x, batch_size=b, **deep) for b in (None, 3)]
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-7)
    full = jnp.broadcast_to(baseline, x.shape)
    change = (
        activation(handle, x, "conv2")[:, 2, 1, 1] - activation(handle, full, "conv2")[:, 2, 1, 1]
    )
    np.testing.assert_allclose(results[0].sum(axis=(1, 2, 3)), change, atol=2e-5)


class ReluNet(nn.Module):
    """conv1 (3 x 3) -> ReLU -> conv2 (1 x 1) -> dense: a conv2 unit reads the ReLUs of
    one conv1 position, so its modified gradients are closed forms."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        a = nn.Conv(3, (3, 3), padding="SAME", name="conv1")(x)
        a = nn.Conv(2, (1, 1), name="conv2")(nn.relu(a))
        return nn.Dense(CLASSES, name="head")(a.reshape(a.shape[0], -1))


def test_neuron_guided_backprop_and_deconvolution_of_a_unit_after_one_relu(net):
    """A_n = sum_k c_k relu(z_k) + b with z_k a conv1 pre-activation (affine, gradient
    dz_k/dx) and c the 1 x 1 kernel: the gradient is sum_k c_k [z_k > 0] dz_k/dx, guided
    backprop keeps relu(c_k) [z_k > 0], deconvolution relu(c_k) without the mask."""
    _, _, x, _ = net
    variables = numpy_variables(ReluNet(), (1, SIDE, SIDE, CHANNELS), 11)
    handle = flax_model(ReluNet(), variables, train=False)
    i, j, n = 1, 2, 0
    c = np.asarray(variables["params"]["conv2"]["kernel"])[0, 0, :, n]  # (3,)
    z = np.asarray(activation(handle, x, "conv1"))[:, i, j, :]  # (N, 3)
    relu_c = np.maximum(c, 0)
    # Every rule matters here: an active ReLU with a negative weight (guided backprop
    # differs from the gradient), an inactive one with a positive weight (deconvolution
    # differs from guided backprop).
    assert np.any((z > 0) & (c < 0)) and np.any((z <= 0) & (c > 0))
    dz = np.stack([conv1_unit_gradient(variables, (i, j, k)) for k in range(3)])  # (3, H, W, C)

    def expected(weights):  # weights (N, 3) -> sum_k weights_k dz_k/dx
        return np.einsum("nk,khwc->nhwc", weights, dz)

    unit = dict(layer="conv2", neuron=(i, j, n))
    for method, weights in (
        (saliency, c * (z > 0)),
        (guided_backprop, relu_c * (z > 0)),
        (deconvolution, np.broadcast_to(relu_c, z.shape)),
    ):
        got = at_neuron(method)(handle, x, **unit)
        np.testing.assert_allclose(got, expected(weights), rtol=1e-5, atol=1e-6)


class Residual(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        a = nn.Conv(CHANNELS, (3, 3), padding="SAME", name="inner")(x)
        a = nn.relu(a + x)
        a = nn.Conv(2, (1, 1), name="after")(a)
        return nn.Dense(CLASSES, name="head")(a.reshape(a.shape[0], -1))


class JittedResidual(nn.Module):
    """The same bypass, inside a jax.jit the model calls."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        a = nn.Conv(CHANNELS, (3, 3), padding="SAME", name="inner")(x)
        a = jax.jit(lambda a, x: nn.relu(a + x))(a, x)
        a = nn.Conv(2, (1, 1), name="after")(a)
        return nn.Dense(CLASSES, name="head")(a.reshape(a.shape[0], -1))


class NnxResidual(nnx.Module):
    def __init__(self, rngs):
        self.inner = nnx.Conv(CHANNELS, CHANNELS, (3, 3), rngs=rngs)
        self.after = nnx.Conv(CHANNELS, 2, (1, 1), rngs=rngs)
        self.head = nnx.Linear(SIDE * SIDE * 2, CLASSES, rngs=rngs)

    def __call__(self, x):
        a = self.after(nnx.relu(self.inner(x) + x))
        return self.head(a.reshape(a.shape[0], -1))


def test_a_layer_a_skip_connection_bypasses_is_refused():
    model = Residual()
    x = jnp.asarray(np.random.default_rng(5).uniform(0, 1, (2, SIDE, SIDE, CHANNELS)), jnp.float32)
    handle = flax_model(model, numpy_variables(model, x.shape, 6), train=False)
    jitted = flax_model(JittedResidual(), numpy_variables(JittedResidual(), x.shape, 6))
    for bypassed in (handle, jitted, flax_model(NnxResidual(nnx.Rngs(0)))):
        one_line_error(
            lambda h=bypassed: at_layer(deeplift)(h, x, layer="inner"), "skip connection"
        )
    # After the junction every path goes through the layer.
    got = at_layer(deeplift)(handle, x, 0, layer="after")
    np.testing.assert_allclose(
        got.sum(axis=(1, 2, 3)),
        handle(x)[:, 0] - handle.logits_with(x, "after", jnp.zeros((2, SIDE, SIDE, 2)))[:, 0],
        atol=1e-5,
    )


def test_a_distribution_of_references_stays_one_under_the_noise_tunnel(net):
    """A batch of as many references as examples is still a distribution for
    DeepLiftShap at a layer: without noise the tunnel changes nothing, in any chunks."""
    handle, _, x, baseline = net
    x, target = x[:2], TARGET[:2]
    common = dict(layer="conv1", baseline=jnp.stack([baseline, 1 - baseline]))
    expected = at_layer(deeplift_shap)(handle, x, target, **common)
    tunneled = noise_tunnel(at_layer(deeplift_shap), samples=1, stdev=0.0)
    got = tunneled(handle, x, target, key=jax.random.key(0), batch_size=1, **common)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_the_transforms_under_jit_and_their_errors(net):
    handle, _, x, baseline = net
    layer_shap = at_layer(gradient_shap)
    jitted = jax.jit(
        lambda x, key: layer_shap(
            handle, x, TARGET, key=key, baseline=baseline, layer="conv2", samples=2
        )
    )
    eager = layer_shap(
        handle, x, TARGET, key=jax.random.key(2), baseline=baseline, layer="conv2", samples=2
    )
    np.testing.assert_allclose(jitted(x, jax.random.key(2)), eager, rtol=1e-5, atol=1e-6)
    one_line_error(lambda: at_layer(grad_cam), "looks inside a model handle")
    one_line_error(lambda: at_neuron(layer_conductance), "looks inside a model handle")
    one_line_error(
        lambda: at_neuron(saliency)(handle, x, 0, layer="conv1", neuron=UNIT), "leave it None"
    )
    one_line_error(
        lambda: at_layer(deeplift)(handle, x, layer="conv1", baseline=jnp.zeros((3, 3))),
        "must be one input",
    )
    one_line_error(lambda: at_layer(deeplift)(handle, x, layer="nope"), "no layer 'nope'")
    one_line_error(lambda: at_layer(lrp)(handle, x, layer="conv1", baseline=0.0), "no reference")
    one_line_error(
        lambda: at_layer(deeplift)(handle, x, layer="conv1", baseline=jnp.zeros((3, 4, 4, 2))),
        r"layer_deeplift: baseline is a reference input, so it must be one input",
    )
    one_line_error(
        lambda: at_layer(deeplift)(handle, x, layer="conv1", baseline=0.0, layer_baseline=0.0),
        "not both",
    )
    one_line_error(
        lambda: at_layer(deeplift)(handle, x, layer="conv1", baseline="blur"),
        "layer_deeplift: baseline must be a number or an array",
    )
    one_line_error(
        lambda: at_neuron(deeplift)(handle, x, layer="conv1", neuron=(9, 0, 0)), "out of range"
    )


class _SmallLastBlock(nn.Module):
    """A CIFAR-style network whose last block is a small map with many channels,
    (N, 3, 3, 16), read by a linear head: mean over the map, then dense."""

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(4, (3, 3), name="conv1")(x)), (4, 4), (4, 4))
        x = nn.relu(nn.Conv(16, (3, 3), name="conv2")(x))
        return nn.Dense(3, name="head")(x.mean((1, 2)))


def test_image_methods_at_a_small_many_channel_layer_read_it_channels_last():
    # A 3x3 map of 16 channels would look channels-first as an input; a layer's
    # activations are channels-last by construction. Occluding one position (all 16
    # channels) of conv2's output a removes its share of the logit through the ReLU:
    # sum_k head[k, t] relu(a[i, j, k]) / 9.
    x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 3))
    variables = jax.jit(_SmallLastBlock().init)(jax.random.key(1), x)
    fn = A.flax_model(_SmallLastBlock(), variables)
    target = np.array([0, 2])
    got = A.at_layer(A.occlusion)(fn, x, target, layer="conv2", window=1)
    activation = A.layer_activations(fn, x, layer="conv2")
    weights = np.asarray(variables["params"]["head"]["kernel"])[:, target].T  # (N, 16)
    share = (np.maximum(np.asarray(activation), 0) * weights[:, None, None, :]).sum(
        -1, keepdims=True
    ) / 9
    expected = np.broadcast_to(share, activation.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    smoothed = A.at_layer(A.gaussian_smoothed_saliency)(fn, x, target, layer="conv2")
    assert smoothed.shape == activation.shape
