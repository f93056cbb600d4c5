"""FullGrad: the full-gradient decomposition sums to the logit (Linen and NNX), and the
map is the post-processed sum of its terms."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fmi_jax import attribution as A
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


def _linen_handle():
    model = BiasedNet()
    variables = model.init(jax.random.key(31), X)
    # Batch statistics and biases away from flax's initial 0 and 1, so every bias term
    # (a batch norm's beta - gamma mean / sqrt(var + eps) included) is non-zero.
    keys = iter(jax.random.split(jax.random.key(32), 16))
    variables = jax.tree.map(lambda v: v + 0.3 * jax.random.normal(next(keys), v.shape), variables)
    variables["batch_stats"]["bn1"]["var"] = jnp.abs(variables["batch_stats"]["bn1"]["var"])
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
