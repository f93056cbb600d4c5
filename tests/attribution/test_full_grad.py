"""FullGrad: the full-gradient decomposition sums to the logit (Linen and NNX), and the
map is the post-processed sum of its terms."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fmi_jax import attribution as A
from fmi_jax import models
from tests import testdata

X = testdata.uniform(jax.random.key(30), (3, 8, 8, 2))


class BiasedNet(nn.Module):
    """conv (bias) -> batch norm -> ReLU -> 2x2 max-pool -> conv (bias) -> ReLU -> spatial
    mean -> dense (bias): affine layers and positively homogeneous nonlinearities only."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn1")(x)
        x = nn.max_pool(nn.relu(x), (2, 2), (2, 2))
        x = nn.relu(nn.Conv(5, (3, 3), name="conv2")(x))
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


@testdata.jit
def _jittered(variables, key):
    """Every leaf plus N(0, 0.3^2) noise, drawn by one program."""
    keys = iter(jax.random.split(key, 16))
    return jax.tree.map(lambda v: v + 0.3 * jax.random.normal(next(keys), v.shape), variables)


def _initialised(model, seed, norm):
    """``model``'s variables for X with every leaf moved by N(0, 0.3^2) noise: batch
    statistics and biases away from flax's initial 0 and 1, so every bias term (a batch
    norm's beta - gamma mean / sqrt(var + eps) included) is non-zero; the batch norm
    ``norm``'s variances kept positive."""
    variables = _jittered(testdata.init(model, X, seed), jax.random.key(seed + 1))
    variables["batch_stats"][norm]["var"] = jnp.abs(variables["batch_stats"][norm]["var"])
    return variables


def _linen_handle():
    model = BiasedNet()
    variables = _initialised(model, 31, "bn1")
    return A.flax_model(model, variables, train=False), variables


class BiasedNnx(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(2, 4, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(4, rngs=rngs)
        self.conv2 = nnx.Conv(4, 5, (3, 3), rngs=rngs)
        self.head = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        x = self.bn1(self.conv1(x))
        x = nnx.max_pool(nnx.relu(x), (2, 2), (2, 2))
        x = nnx.relu(self.conv2(x))
        return self.head(x.mean(axis=(1, 2)))


def _nnx_handle():
    net = BiasedNnx(nnx.Rngs(33))
    rng = np.random.default_rng(34)
    for layer in (net.conv1, net.conv2, net.head, net.bn1):
        layer.bias[...] = jnp.asarray(rng.normal(0, 0.3, layer.bias.shape), jnp.float32)
    net.bn1.mean[...] = jnp.asarray(rng.normal(0, 0.3, 4), jnp.float32)
    net.bn1.var[...] = jnp.asarray(rng.uniform(0.5, 1.5, 4), jnp.float32)
    return A.flax_model(net), net.head.bias[...]


@pytest.mark.parametrize("backend", ["linen", "nnx"])
def test_the_full_gradient_terms_sum_to_the_logit(backend):
    """f_c(x) = sum(grad_x f_c * x) + sum_l sum(g^l * b^l) + b_head_c: the network is
    affine between positively homogeneous nonlinearities, and the head's bias, a dense
    layer's, is the one term without a spatial map (its gradient is 1 for class c)."""
    if backend == "linen":
        handle, variables = _linen_handle()
        head_bias = variables["params"]["head"]["bias"]
    else:
        handle, head_bias = _nnx_handle()
    assert A.bias_layers(handle, X) == ("conv1", "bn1", "conv2")
    target = jnp.array([0, 1, 2])
    terms = jax.jit(lambda x: A.full_gradients(handle, x, target, batch_size=2))(X)
    assert set(terms.biases) == {"conv1", "bn1", "conv2"}
    total = terms.input.sum(axis=(1, 2, 3)) + head_bias[target]
    for term in terms.biases.values():
        assert float(jnp.abs(term).max()) > 1e-3  # every bias takes part
        total = total + term.sum(axis=(1, 2, 3))
    logits = handle(X)[jnp.arange(3), target]
    np.testing.assert_allclose(total, logits, rtol=1e-4, atol=1e-5)
    # Input x gradient alone misses the biases' share.
    assert float(jnp.abs(terms.input.sum(axis=(1, 2, 3)) - logits).max()) > 1e-2
    # Named, the head's term is its bias times a one-hot gradient: with it the terms
    # alone add up to the logit, and it has no map.
    named = A.full_gradients(handle, X, target, layers=("conv1", "bn1", "conv2", "head"))
    np.testing.assert_allclose(named.biases["head"], jax.nn.one_hot(target, 3) * head_bias)
    total = named.input.sum(axis=(1, 2, 3))
    total += sum(term.reshape(3, -1).sum(axis=1) for term in named.biases.values())
    np.testing.assert_allclose(total, logits, rtol=1e-4, atol=1e-5)
    with pytest.raises(
        ValueError,
        match="full_grad: layer 'head' returns features.*; full_gradients returns its term",
    ):
        A.full_grad(handle, X, target, layers=("conv1", "head"))


def test_full_grad_is_the_post_processed_sum_of_the_terms():
    handle, _ = _linen_handle()
    terms = A.full_gradients(handle, X, 1)

    def psi(term, axes):
        term = np.abs(np.asarray(term, np.float64))
        low, span = term.min(axis=axes, keepdims=True), np.ptp(term, axis=axes, keepdims=True)
        return np.where(span > 0, (term - low) / np.where(span > 0, span, 1), 0).sum(axis=-1)

    for normalize, axes in (("layer", (1, 2, 3)), ("channel", (1, 2))):
        expected = psi(terms.input, axes)
        for term in terms.biases.values():
            expected = expected + np.asarray(A.upsample_maps(jnp.asarray(psi(term, axes)), (8, 8)))
        got = A.full_grad(handle, X, 1, normalize=normalize)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    only_conv2 = A.full_grad(handle, X, 1, layers=("conv2",))
    np.testing.assert_allclose(
        only_conv2,
        psi(terms.input, (1, 2, 3))
        + np.asarray(A.upsample_maps(jnp.asarray(psi(terms.biases["conv2"], (1, 2, 3))), (8, 8))),
        rtol=1e-5,
        atol=1e-5,
    )


def test_full_grad_options_are_checked_before_anything_runs():
    handle, _ = _linen_handle()
    with pytest.raises(ValueError, match="no layer 'conv9'"):
        A.full_grad(handle, X, layers=("conv9",))
    with pytest.raises(ValueError, match="layers must be a sequence of layer names"):
        A.full_grad(handle, X, layers="conv1")
    with pytest.raises(ValueError, match=r"normalize must be one of \('layer', 'channel'\)"):
        A.full_grad(handle, X, normalize="image")
    with pytest.raises(ValueError, match="full_gradients looks inside the model"):
        A.full_gradients(lambda x: x, X)


class KeywordNet(nn.Module):
    """A convolution called with its input by keyword, a batch norm told its mode in the
    call, and a dense layer on the (N, h, w, C) map (a 1 x 1 convolution)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), name="conv")(inputs=x)
        x = nn.relu(nn.BatchNorm(name="bn")(x, use_running_average=not train))
        x = nn.relu(nn.Dense(5, name="mix")(x))
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


def test_keyword_inputs_call_time_modes_and_dense_layers_on_maps():
    model = KeywordNet()
    variables = _initialised(model, 35, "bn")
    handle = A.flax_model(model, variables, train=False)
    assert A.bias_layers(handle, X) == ("conv", "bn", "mix")
    params, stats = variables["params"], variables["batch_stats"]
    np.testing.assert_allclose(
        handle.output_at_zero(X, "bn")[0, 0, 0],
        params["bn"]["bias"]
        - params["bn"]["scale"] * stats["bn"]["mean"] / jnp.sqrt(stats["bn"]["var"] + 1e-5),
        rtol=1e-6,
    )
    np.testing.assert_allclose(handle.output_at_zero(X, "conv")[1, 2, 3], params["conv"]["bias"])
    terms = A.full_gradients(handle, X, 2)
    total = terms.input.sum(axis=(1, 2, 3)) + params["head"]["bias"][2]
    total = total + sum(term.sum(axis=(1, 2, 3)) for term in terms.biases.values())
    np.testing.assert_allclose(total, handle(X)[:, 2], rtol=1e-4, atol=1e-5)


def test_one_backward_pass_gives_every_layers_gradient():
    """perturb_layers' gradients equal capture's, one layer at a time, on Linen and NNX."""
    layers = ("conv1", "bn1", "conv2")
    for handle in (_linen_handle()[0], _nnx_handle()[0]):
        deltas = {layer: jnp.zeros(handle.layer_shape(X, layer)) for layer in layers}
        together = jax.grad(lambda d, h=handle: h.perturb_layers(X, d)[:, 1].sum())(deltas)
        for layer in layers:

            def alone(d, h=handle, layer=layer):
                return h.capture(X, layer, d)[0][:, 1].sum()

            np.testing.assert_allclose(
                together[layer], jax.grad(alone)(deltas[layer]), rtol=1e-5, atol=1e-7
            )


class SharedConv(nn.Module):
    @nn.compact
    def __call__(self, x):
        conv = nn.Conv(2, (3, 3), name="shared")
        x = nn.relu(conv(nn.relu(conv(x))))
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


def test_layers_fullgrad_cannot_use_are_refused_in_one_line():
    handle, _ = _linen_handle()
    model = SharedConv()
    shared = A.flax_model(model, testdata.init(model, X, 37))
    with pytest.raises(ValueError, match=r"layer 'shared' \(Conv\) is called 2 times.*layers="):
        A.full_grad(shared, X)
    cnn = models.get_model("cnn_fmnist", features=(2, 3, 2), dense=(4,))
    blocks = A.flax_model(cnn, testdata.init(cnn, X[..., :1], 38), train=False)
    with pytest.raises(ValueError, match="layer 'conv1' is a ConvBlock, not an affine layer"):
        A.full_gradients(blocks, X[..., :1], layers=("conv1",))
    assert A.bias_layers(blocks, X[..., :1])[:4] == (
        "conv1/conv",
        "conv1/bn",
        "conv2/conv",
        "conv2/bn",
    )
    for bad in (5, (1, 2)):
        with pytest.raises(ValueError, match="layers must be a sequence of layer names"):
            A.full_grad(handle, X, layers=bad)
    # A generator is read once, as the tuple of its names.
    np.testing.assert_array_equal(
        A.full_grad(handle, X, 0, layers=(n for n in ("conv2",))),
        A.full_grad(handle, X, 0, layers=("conv2",)),
    )


class KeywordNnx(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 3, (3, 3), rngs=rngs)
        self.head = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.conv(inputs=x)).mean(axis=(1, 2)))


def test_nnx_layer_called_with_a_keyword_input():
    net = KeywordNnx(nnx.Rngs(39))
    net.conv.bias[...] = jnp.array([0.5, -1.0, 2.0])
    zero = A.flax_model(net).output_at_zero(X, "conv")
    np.testing.assert_array_equal(zero, jnp.broadcast_to(jnp.array([0.5, -1.0, 2.0]), zero.shape))


class UnusedHeadNnx(BiasedNnx):
    """BiasedNnx with a second head it never calls (an auxiliary head, say)."""

    def __init__(self, rngs):
        super().__init__(rngs)
        self.spare = nnx.Linear(5, 3, rngs=rngs)


def test_an_unused_dense_head_is_no_reason_to_refuse():
    handle = A.flax_model(UnusedHeadNnx(nnx.Rngs(40)))
    assert "spare" in handle.refused_layers(X)
    assert A.bias_layers(handle, X) == ("conv1", "bn1", "conv2")
    with pytest.raises(ValueError, match=r"\(8, 8, 2\) looks like one example without its batch"):
        A.full_gradients(handle, X[0])


def _full_grad_temp_bytes(images: int) -> int:
    """Scratch memory XLA plans for full_grad on ``images`` 8x8 images, 16 at a time."""
    handle, _ = _linen_handle()
    x = jax.ShapeDtypeStruct((images, 8, 8, 2), jnp.float32)
    compiled = jax.jit(lambda x: A.full_grad(handle, x, 1, batch_size=16)).lower(x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_full_grad_memory_is_set_by_batch_size_not_by_the_number_of_images():
    """Each chunk's terms are finished into maps inside the chunk: 1024 images need no
    more scratch memory than 64 (holding every layer's term for all of them would take
    1024 * (8*8*4 * 2 + 4*4*5) floats, 2.3 MiB, and 5.9 MB were planned)."""
    small, large = _full_grad_temp_bytes(64), _full_grad_temp_bytes(1024)
    assert large <= small * 1.1 + 64 * 1024, (small, large)
