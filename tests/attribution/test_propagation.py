"""Guided backprop, deconvolution, LRP and Guided Grad-CAM: known answers from linear
models and NumPy implementations of each rule, gradient x input and relevance
conservation for LRP, batch-size invariance, and refusals."""

import gc
import warnings
import weakref

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax import attribution as A
from fmi_jax.attribution.propagation import deconvolution, guided_backprop, guided_grad_cam, lrp
from tests import testdata

rng = np.random.default_rng(0)
W1 = rng.normal(size=(6, 8)).astype(np.float32)
W2 = rng.normal(size=(8, 5)).astype(np.float32)
W3 = rng.normal(size=(5, 3)).astype(np.float32)
B1 = rng.normal(size=8).astype(np.float32)
B2 = rng.normal(size=5).astype(np.float32)
X = rng.normal(size=(5, 6)).astype(np.float32)
TARGET = np.array([0, 1, 2, 1, 0])


def mlp(x):
    """Two ReLU layers, written once with jax.nn.relu (a custom_jvp around max) and once
    with jnp.maximum, so both spellings of ReLU are seen."""
    h = jax.nn.relu(x @ W1 + B1)
    h = jnp.maximum(h @ W2 + B2, 0.0)
    return h @ W3


def bias_free_mlp(x):
    return jax.nn.relu(jax.nn.relu(x @ W1) @ W2) @ W3


# A wider bias-free MLP: alpha-beta conserves relevance only where every neuron that
# receives relevance has both positive and negative contributions (z^+ > 0 > z^-), which
# many inputs per neuron make all but certain.
WIDE = [rng.normal(size=shape).astype(np.float32) for shape in [(16, 32), (32, 32), (32, 3)]]
X_WIDE = rng.normal(size=(5, 16)).astype(np.float32)


def wide_mlp(x):
    return jax.nn.relu(jax.nn.relu(x @ WIDE[0]) @ WIDE[1]) @ WIDE[2]


def numpy_relu_backprop(x, target, guided):
    """The guided-backprop / deconvolution rule on ``mlp``, by hand."""
    z1 = x @ W1 + B1
    z2 = np.maximum(z1, 0) @ W2 + B2
    g = W3[:, target].T  # d logit / d h2, one row per example
    g = np.maximum(g, 0) * (z2 > 0 if guided else 1)
    g = g @ W2.T
    g = np.maximum(g, 0) * (z1 > 0 if guided else 1)
    return g @ W1.T


def numpy_lrp(weights, x, target, rule, epsilon=1e-6, gamma=0.25, alpha=1.0, beta=0.0):
    """Textbook LRP on the bias-free ReLU MLP with ``weights``, layer by layer (Montavon et al. 2019): forward
    activations, then relevances R_j = sum_k c_jk R_k / stabilise(sum_j c_jk) from the
    contributions c_jk = a_j w_jk under each rule."""
    x = x.astype(np.float64)
    activations = [x]
    for w in weights[:-1]:
        activations.append(np.maximum(activations[-1] @ w, 0))
    logits = activations[-1] @ weights[-1]
    relevance = np.zeros_like(logits)
    rows = np.arange(len(x))
    relevance[rows, target] = logits[rows, target]

    def redistribute(c, r):  # c: (N, J, K) contributions, r: (N, K)
        z = c.sum(axis=1, keepdims=True)
        stabilised = z + np.where(z >= 0, epsilon, -epsilon)
        return (c / stabilised * r[:, None, :]).sum(axis=2)

    for a, w in zip(reversed(activations), reversed(weights)):
        if rule == "epsilon":
            relevance = redistribute(a[:, :, None] * w, relevance)
        elif rule == "gamma":
            relevance = redistribute(a[:, :, None] * (w + gamma * np.maximum(w, 0)), relevance)
        else:
            c = a[:, :, None] * w
            positive, negative = np.maximum(c, 0), np.minimum(c, 0)
            z_pos = positive.sum(axis=1, keepdims=True) + epsilon
            z_neg = negative.sum(axis=1, keepdims=True) - epsilon
            relevance = (
                (alpha * positive / z_pos - beta * negative / z_neg) * relevance[:, None, :]
            ).sum(axis=2)
    return relevance


# The wide MLP with biases and, after its first layer, an inference-mode batch norm
# whose scale is negative in some channels.
WIDE_BIASES = [rng.normal(size=w.shape[1]).astype(np.float32) for w in WIDE]
BN_MEAN, BN_SHIFT = (rng.normal(size=32).astype(np.float32) for _ in range(2))
BN_SCALE = (rng.normal(size=32) + 0.5).astype(np.float32)


def wide_mlp_with_biases_and_batch_norm(x):
    h = x @ WIDE[0] + WIDE_BIASES[0]
    h = jax.nn.relu((h - BN_MEAN) * BN_SCALE + BN_SHIFT)
    h = jax.nn.relu(h @ WIDE[1] + WIDE_BIASES[1])
    return h @ WIDE[2] + WIDE_BIASES[2]


def numpy_lrp_affine(x, target, rule, epsilon=1e-6, gamma=0.25, alpha=1.0, beta=0.0):
    """Textbook LRP of ``wide_mlp_with_biases_and_batch_norm`` (Montavon et al. 2019, as
    zennit computes it): the batch norm merged into the layer before it (weights
    ``w * scale``, bias ``(b - mean) * scale + shift``), and every bias an input of
    activation 1 under the rule, in the denominators only."""
    layers = [
        (WIDE[0] * BN_SCALE, (WIDE_BIASES[0] - BN_MEAN) * BN_SCALE + BN_SHIFT),
        (WIDE[1], WIDE_BIASES[1]),
        (WIDE[2], WIDE_BIASES[2]),
    ]
    layers = [(w.astype(np.float64), b.astype(np.float64)) for w, b in layers]
    activations = [x.astype(np.float64)]
    for w, b in layers[:-1]:
        activations.append(np.maximum(activations[-1] @ w + b, 0))
    w, b = layers[-1]
    logits = activations[-1] @ w + b
    rows = np.arange(len(x))
    relevance = np.zeros_like(logits)
    relevance[rows, target] = logits[rows, target]
    for a, (w, b) in zip(reversed(activations), reversed(layers)):
        if rule in ("epsilon", "gamma"):
            g = gamma if rule == "gamma" else 0.0
            c = a[:, :, None] * (w + g * np.maximum(w, 0))
            z = c.sum(axis=1) + b + g * np.maximum(b, 0)
            z = z + np.where(z >= 0, epsilon, -epsilon)
            relevance = (c / z[:, None, :] * relevance[:, None, :]).sum(axis=2)
        else:
            c = a[:, :, None] * w
            positive, negative = np.maximum(c, 0), np.minimum(c, 0)
            z_pos = positive.sum(axis=1) + np.maximum(b, 0) + epsilon
            z_neg = negative.sum(axis=1) + np.minimum(b, 0) - epsilon
            share = alpha * positive / z_pos[:, None, :] - beta * negative / z_neg[:, None, :]
            relevance = (share * relevance[:, None, :]).sum(axis=2)
    return relevance


def compiled(method, fn, x, target, **options):
    return jax.jit(lambda x, t: method(fn, x, t, **options))(x, target)


# -------------------------------------------------------------- guided backprop, deconv


@pytest.mark.parametrize("method", [guided_backprop, deconvolution])
def test_linear_model_gives_its_weights(method):
    """No ReLU: both are the plain gradient, the target's weight column, with a warning
    that says so."""
    fn = lambda x: x @ W1 + B1
    with pytest.warns(UserWarning, match=r"no ReLU .* plain gradient \(saliency\)"):
        np.testing.assert_allclose(compiled(method, fn, X, TARGET), W1[:, TARGET].T, rtol=1e-6)


@pytest.mark.parametrize("method", [guided_backprop, deconvolution])
def test_a_relu_written_with_where_is_not_one_and_says_so(method):
    """jnp.where(z > 0, z, 0) is a select: the model's gradient, and the warning names
    the spellings the rule recognises. A ReLU among them: no warning."""
    relu_by_hand = lambda z: jnp.where(z > 0, z, 0.0)
    fn = lambda x: relu_by_hand(relu_by_hand(x @ W1) @ W2) @ W3
    gradient = jax.jit(lambda x: A.saliency(fn, x, TARGET))(X)
    with pytest.warns(UserWarning, match=r"jnp\.where\(z > 0, z, 0\) .* jax\.nn\.relu"):
        np.testing.assert_allclose(compiled(method, fn, X, TARGET), gradient, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled(method, mlp, X, TARGET)


@pytest.mark.parametrize("method, guided", [(guided_backprop, True), (deconvolution, False)])
def test_relu_rules_match_numpy(method, guided):
    expected = numpy_relu_backprop(X, TARGET, guided)
    np.testing.assert_allclose(compiled(method, mlp, X, TARGET), expected, rtol=1e-5, atol=1e-5)
    # Batched, and with the last chunk padded: the same answer.
    np.testing.assert_allclose(
        compiled(method, mlp, X, TARGET, batch_size=2), expected, rtol=1e-5, atol=1e-5
    )


def test_other_nonlinearities_keep_their_gradient():
    """Sigmoid, leaky ReLU and min (a ReLU6 cap) keep their ordinary derivative."""
    fn = lambda x: jnp.minimum(jax.nn.leaky_relu(jax.nn.sigmoid(x @ W1) @ W2), 0.5) @ W3
    gradient = jax.jit(lambda x: A.saliency(fn, x, TARGET))(X)
    with pytest.warns(UserWarning, match="no ReLU"):
        np.testing.assert_allclose(compiled(guided_backprop, fn, X, TARGET), gradient, rtol=1e-5)
        np.testing.assert_allclose(compiled(deconvolution, fn, X, TARGET), gradient, rtol=1e-5)


@pytest.mark.parametrize(
    "activation",
    [jax.nn.softplus, jax.nn.mish, jax.nn.log_sigmoid, jax.nn.celu, lambda z: jnp.logaddexp(z, 0)],
    ids=["softplus", "mish", "log_sigmoid", "celu", "logaddexp"],
)
def test_activations_computed_with_a_max_inside_keep_their_gradient(activation):
    # softplus is max(z, 0) + log1p(exp(-|z|)) inside: given the ReLU rule, that max
    # would flip the sign of negative gradients (guided) or exceed softplus' slope of 1
    # (deconvolution). As in Captum, which hooks ReLU modules only, the model without a
    # ReLU has its plain gradient under both.
    fn = lambda x: activation(activation(x @ W1) @ W2) @ W3
    gradient = jax.jit(lambda x: A.saliency(fn, x, TARGET))(X)
    with pytest.warns(UserWarning, match="no ReLU"):  # the max inside is not one
        np.testing.assert_allclose(compiled(guided_backprop, fn, X, TARGET), gradient, rtol=1e-5)
        np.testing.assert_allclose(compiled(deconvolution, fn, X, TARGET), gradient, rtol=1e-5)


def test_a_relu_next_to_softplus_still_gets_the_rule():
    # relu(softplus(x W1) W2) W3 by hand: the guided rule at the ReLU, softplus' own
    # derivative (the logistic sigmoid) below it.
    fn = lambda x: jax.nn.relu(jax.nn.softplus(x @ W1) @ W2) @ W3
    z1 = X @ W1
    z2 = np.logaddexp(z1, 0) @ W2
    g = np.maximum(W3[:, TARGET].T, 0) * (z2 > 0)
    expected = ((g @ W2.T) / (1 + np.exp(-z1))) @ W1.T
    guided = compiled(guided_backprop, fn, X, TARGET)
    np.testing.assert_allclose(guided, expected, rtol=1e-4, atol=1e-5)


def test_a_jitted_model_is_interpreted_as_one_program_that_later_calls_reuse(lowerings):
    """A model function that is one jitted call (a model handle, ``jax.jit(apply)``) is
    interpreted in one compiled program per method and options: called eagerly it gives
    the by-hand answer, and calling again, even through a second jitted wrapper of the
    same function, compiles nothing. Other options of LRP are programs of their own."""
    jitted = jax.jit(mlp)
    expected = numpy_relu_backprop(X, TARGET, guided=True)
    np.testing.assert_allclose(guided_backprop(jitted, X, TARGET), expected, rtol=1e-5, atol=1e-5)
    before = lowerings()
    again = guided_backprop(jax.jit(mlp), X, TARGET)
    np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-5)
    assert lowerings() == before

    want = lrp(bias_free_mlp, X, TARGET, epsilon=0.5)
    np.testing.assert_allclose(
        lrp(jax.jit(bias_free_mlp), X, TARGET, epsilon=0.5), want, rtol=1e-5, atol=1e-6
    )
    before = lowerings()
    lrp(jax.jit(bias_free_mlp), X, TARGET, epsilon=0.5)
    assert lowerings() == before
    lrp(jax.jit(bias_free_mlp), X, TARGET, epsilon=0.25)
    assert lowerings() > before

    # DeepLIFT shares the interpreter: the same attributions as equation by equation.
    ours = A.deeplift(jitted, X, TARGET, return_delta=True)
    plain = A.deeplift(mlp, X, TARGET, return_delta=True)
    for got, want in zip(ours, plain, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_programs_for_nested_calls_do_not_keep_a_models_weights():
    """The compiled interpretation of a nested call holds neither the traced body nor
    its constants: once the user's functions are gone, so are the weights they closed
    over."""

    def model():
        weights = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)
        inner = jax.jit(lambda y: jax.nn.relu(y @ weights))
        return jax.jit(lambda x: inner(x) @ W2), weakref.ref(weights)

    fn, alive = model()
    for method in (guided_backprop, A.deeplift):
        jax.block_until_ready(method(fn, X, TARGET))
    del fn
    gc.collect()
    assert alive() is None


# ------------------------------------------------------------------------------- LRP


class BiasFreeCNN(nn.Module):
    """Conv -> ReLU -> max-pool -> Conv -> ReLU -> Dense, without biases."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), use_bias=False)(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(4, (2, 2), use_bias=False)(x))
        return nn.Dense(3, use_bias=False)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def cnn():
    """(fn, images, targets) for a BiasFreeCNN with fixed weights."""
    model = BiasFreeCNN()
    images = testdata.uniform(jax.random.key(1), (3, 6, 6, 2)) - 0.3
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), images)
    return (lambda x: model.apply(variables, x)), images, jnp.array([0, 2, 1])


def test_lrp_epsilon_is_gradient_times_input():
    """With epsilon -> 0 the LRP backward pass of a ReLU network is the gradient."""
    expected = jax.jit(lambda x: A.input_x_gradient(bias_free_mlp, x, TARGET))(X)
    attributions = compiled(lrp, bias_free_mlp, X, TARGET, epsilon=1e-9)
    np.testing.assert_allclose(attributions, expected, rtol=1e-4, atol=1e-5)


def test_lrp_epsilon_is_gradient_times_input_through_conv_and_max_pool(cnn):
    fn, images, target = cnn
    expected = jax.jit(lambda x: A.input_x_gradient(fn, x, target))(images)
    attributions = compiled(lrp, fn, images, target, epsilon=1e-9)
    np.testing.assert_allclose(attributions, expected, rtol=1e-4, atol=1e-6)
    # Conservation: the input relevances sum to the target logit.
    logits = fn(images)[jnp.arange(3), target]
    np.testing.assert_allclose(attributions.sum(axis=(1, 2, 3)), logits, rtol=1e-4)


@pytest.mark.parametrize(
    "options",
    [
        dict(rule="epsilon", epsilon=0.01),
        dict(rule="gamma", gamma=0.5),
        dict(rule="alpha_beta", alpha=1.0, beta=0.0),
        dict(rule="alpha_beta", alpha=2.0, beta=1.0),
    ],
    ids=["epsilon", "gamma", "alpha1beta0", "alpha2beta1"],
)
def test_lrp_rules_match_numpy_and_conserve(options):
    """Each rule against a layer-by-layer NumPy implementation; for gamma and alpha-beta
    with alpha - beta = 1 the input relevances sum to f_t(x) (bias-free network)."""
    attributions = compiled(lrp, wide_mlp, X_WIDE, TARGET, **options)
    expected = numpy_lrp(WIDE, X_WIDE, TARGET, **options)
    np.testing.assert_allclose(attributions, expected, rtol=1e-4, atol=1e-4)
    if options["rule"] != "epsilon":  # epsilon = 0.01 absorbs some; conservation for
        # epsilon -> 0 is checked on the CNN above
        logits = np.asarray(wide_mlp(X_WIDE))[np.arange(5), TARGET]
        np.testing.assert_allclose(attributions.sum(axis=1), logits, rtol=1e-4)


@pytest.mark.parametrize(
    "options",
    [
        dict(rule="epsilon", epsilon=0.1),
        dict(rule="gamma", gamma=0.25, epsilon=1e-6),
        dict(rule="alpha_beta", epsilon=1e-6),
        dict(rule="alpha_beta", alpha=2.0, beta=1.0, epsilon=1e-6),
    ],
    ids=["epsilon", "gamma", "alpha1beta0", "alpha2beta1"],
)
def test_lrp_rules_fold_biases_and_batch_norm_into_their_layer(options):
    """A bias, and a batch norm after the layer (negative scales included), are part of
    the layer the rule sees, as in Montavon et al. and zennit: the same maps as LRP of
    the network with the batch norm merged into the layer, by hand in NumPy."""
    fn = wide_mlp_with_biases_and_batch_norm
    attributions = compiled(lrp, fn, X_WIDE, TARGET, **options)
    expected = numpy_lrp_affine(X_WIDE, TARGET, **options)
    np.testing.assert_allclose(attributions, expected, rtol=1e-4, atol=1e-5)


CNN_SHAPE = dict(features=(4, 8), pool=(True, True), dense=(8,), num_classes=3)
CNN_IMAGES = jnp.asarray(np.random.default_rng(3).uniform(size=(6, 8, 8, 1)), jnp.float32)


def cnn_with_batch_norm():
    """SimpleCNN variables with batch norms of both signs and shifts large enough to
    flip signs, and biases: what a bias-free rule gets wrong."""
    from fmi_jax import models

    noise = np.random.default_rng(4)
    variables = jax.tree.map(
        lambda leaf: leaf + jnp.asarray(noise.normal(size=leaf.shape), leaf.dtype) * 0.5,
        models.SimpleCNN(batch_norm=True, **CNN_SHAPE).init(jax.random.key(0), CNN_IMAGES),
    )
    variables["batch_stats"] = jax.tree.map(jnp.abs, variables["batch_stats"])  # var > 0
    params = dict(variables["params"])
    for block in ("conv1", "conv2"):
        bn = dict(params[block]["bn"])
        bn["scale"] = bn["scale"] * jnp.where(jnp.arange(bn["scale"].size) % 2 == 0, 1.0, -1.0)
        bn["bias"] = bn["bias"] * 4.0
        params[block] = {**params[block], "bn": bn}
    return {**variables, "params": params}


@pytest.mark.parametrize("rule", ["gamma", "alpha_beta"])
def test_batch_norm_of_the_projects_cnn_is_merged_into_its_conv(rule):
    """SimpleCNN with batch norm (each conv inside a custom-derivative call, the batch
    norm outside it) gives the maps of the same network with every batch norm merged
    into its conv by hand (kernel * s, bias shift - mean * s); alpha=1, beta=0 maps of
    non-negative images are non-negative wherever the target logit is positive."""
    from fmi_jax import models

    variables = cnn_with_batch_norm()
    params = dict(variables["params"])
    for block in ("conv1", "conv2"):
        bn, stats = params[block]["bn"], variables["batch_stats"][block]["bn"]
        s = bn["scale"] / jnp.sqrt(stats["var"] + 1e-5)
        kernel = params[block]["conv"]["kernel"]
        params[block] = {"conv": {"kernel": kernel * s, "bias": bn["bias"] - stats["mean"] * s}}
    handles = [
        A.flax_model(models.SimpleCNN(batch_norm=True, **CNN_SHAPE), variables),
        A.flax_model(models.SimpleCNN(batch_norm=False, **CNN_SHAPE), {"params": params}),
    ]
    logits = handles[0](CNN_IMAGES)
    np.testing.assert_allclose(logits, handles[1](CNN_IMAGES), rtol=1e-5, atol=1e-5)
    target = jnp.argmax(logits, axis=1)
    maps = [compiled(lrp, h, CNN_IMAGES, target, rule=rule, epsilon=1e-6) for h in handles]
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-4, atol=1e-6)
    if rule == "alpha_beta":
        positive = np.asarray(logits)[np.arange(6), target] > 0
        assert positive.any() and (np.asarray(maps[0])[positive] >= -1e-6).all()


def test_a_bfloat16_model_folds_its_batch_norm_like_a_float32_one():
    """In bfloat16, Flax's batch norm computes in float32 after a cast of the conv's
    output: the cast folds too, so the z+ maps are those of the float32 model up to
    bfloat16's rounding (not uncorrelated, as without the batch norm in the rule)."""
    from fmi_jax import models

    variables = cnn_with_batch_norm()
    handles = [
        A.flax_model(models.SimpleCNN(batch_norm=True, dtype=dtype, **CNN_SHAPE), variables)
        for dtype in (jnp.float32, jnp.bfloat16)
    ]
    target = jnp.argmax(handles[0](CNN_IMAGES), axis=1)
    maps = [
        np.asarray(compiled(lrp, h, CNN_IMAGES, target, rule="alpha_beta"), np.float32)
        for h in handles
    ]
    correlation = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(*maps)]
    assert np.median(correlation) > 0.99 and min(correlation) > 0.8, correlation


def test_alpha1_beta0_keeps_relevance_positive_through_a_bias():
    """One neuron, f = x1 - 2 x2 + 2 at x = (1, 1): f = 1 and the only positive
    contributions are x1 w1 = 1 and the bias 2, so the z+ rule gives x1 the share 1/3 and
    x2 none; the gamma rule divides by x1 (1 + gamma) - 2 x2 + 2 (1 + gamma)."""
    w = jnp.array([[1.0], [-2.0]])
    fn = lambda x: x @ w + 2.0
    x = jnp.ones((1, 2))
    np.testing.assert_allclose(
        compiled(lrp, fn, x, 0, rule="alpha_beta", epsilon=0.0), [[1 / 3, 0.0]], rtol=1e-6
    )
    np.testing.assert_allclose(
        compiled(lrp, fn, x, 0, rule="gamma", gamma=0.25, epsilon=0.0),
        [[1.25 / 1.75, -2 / 1.75]],
        rtol=1e-6,
    )


def test_lrp_gamma_zero_is_epsilon():
    gamma = compiled(lrp, mlp, X, TARGET, rule="gamma", gamma=0.0, epsilon=1e-3)
    epsilon = compiled(lrp, mlp, X, TARGET, rule="epsilon", epsilon=1e-3)
    np.testing.assert_allclose(gamma, epsilon, rtol=1e-6, atol=1e-7)


def test_lrp_batch_size_does_not_change_results():
    options = dict(rule="alpha_beta", alpha=2.0, beta=1.0)
    whole = compiled(lrp, mlp, X, TARGET, **options)
    np.testing.assert_allclose(
        compiled(lrp, mlp, X, TARGET, batch_size=2, **options), whole, rtol=1e-6, atol=1e-7
    )


def test_biases_absorb_relevance():
    """One dense layer with a bias, z = x w + b: the inputs get x_j w_j, which sums to
    z - b; the bias keeps its share b."""
    w, b = W1[:, :1], np.float32(2.0)
    fn = lambda x: x @ w + b
    attributions = compiled(lrp, fn, X, 0, epsilon=1e-9)
    np.testing.assert_allclose(attributions, X * w[:, 0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- Guided Grad-CAM


class TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(3, (3, 3), name="features")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_guided_grad_cam_is_guided_backprop_times_grad_cam():
    model = TinyCNN()
    images = testdata.uniform(jax.random.key(3), (3, 6, 6, 2))
    variables = jax.jit(model.init)(jax.random.key(2, impl="rbg"), images)
    handle = A.flax_model(model, variables, train=False)
    target = jnp.array([2, 0, 1])
    result = jax.jit(lambda x: guided_grad_cam(handle, x, target, layer="features"))(images)
    cam = A.grad_cam(handle, images, target, layer="features", upsample=False)
    expected = guided_backprop(handle, images, target) * A.upsample_maps(cam, (6, 6))[..., None]
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(result)).max() > 0


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "method, options, message",
    [
        (guided_backprop, dict(baseline=0.0), "baseline"),
        (deconvolution, dict(baseline=0.0), "baseline"),
        (lrp, dict(baseline=0.0), "baseline"),
        (lrp, dict(rule="z_plus"), "rule must be one of"),
        (lrp, dict(epsilon=-1.0), "epsilon must be a number >= 0"),
        (lrp, dict(beta="one"), "beta must be a number >= 0"),
    ],
)
def test_refusals(method, options, message):
    with pytest.raises(ValueError, match=message):
        method(mlp, X, 0, **options)


# ----------------------------------------------------------------- agreement with Captum


def test_agreement_with_captum():
    """Guided backprop, deconvolution and LRP-epsilon (biases included) against Captum on
    a conv -> ReLU -> max-pool -> dense -> ReLU -> dense network with identical weights.
    Needs torch and captum (the benchmark environment); skipped without them."""
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
            self.relu1 = torch.nn.ReLU()
            self.pool = torch.nn.MaxPool2d(2)
            self.dense = torch.nn.Linear(4 * 3 * 3, 8)
            self.relu2 = torch.nn.ReLU()
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            x = self.pool(self.relu1(self.conv(x)))
            return self.head(self.relu2(self.dense(x.flatten(1))))

    torch.manual_seed(0)
    net = Net().eval()
    p = {name: jnp.asarray(v.detach().numpy()) for name, v in net.named_parameters()}

    def fn(x):  # the same network on NCHW inputs
        x = jax.lax.conv_general_dilated(
            x, p["conv.weight"], (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        x = jax.nn.relu(x + p["conv.bias"][:, None, None])
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        x = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["dense.weight"].T + p["dense.bias"])
        return x @ p["head.weight"].T + p["head.bias"]

    images = np.random.default_rng(1).normal(size=(4, 2, 6, 6)).astype(np.float32)
    target = [0, 1, 2, 1]
    inputs = torch.from_numpy(images)
    np.testing.assert_allclose(fn(images), net(inputs).detach().numpy(), rtol=1e-4, atol=1e-5)
    cases = [
        (guided_backprop, {}, captum_attr.GuidedBackprop),
        (deconvolution, {}, captum_attr.Deconvolution),
        (lrp, {"epsilon": 1e-9}, captum_attr.LRP),
    ]
    for method, options, counterpart in cases:
        ours = compiled(method, fn, images, jnp.asarray(target), **options)
        theirs = counterpart(net).attribute(inputs, target=target).detach().numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-5, err_msg=method.__name__)


@pytest.mark.parametrize("rule", ["epsilon", "gamma", "alpha_beta"])
def test_lrp_rules_agree_with_captum(rule):
    """Each LRP rule against Captum's (EpsilonRule(0.1), GammaRule(0.25),
    Alpha1_Beta0_Rule) on a bias-free conv -> ReLU -> dense -> ReLU -> dense network and
    non-negative images, where the two formulations coincide (Captum stabilises the output
    with its bias, and its Alpha1_Beta0_Rule assumes non-negative activations)."""
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr")
    from captum.attr._utils import lrp_rules

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 4, 3, bias=False)
            self.relu1 = torch.nn.ReLU()
            self.dense = torch.nn.Linear(4 * 4 * 4, 8, bias=False)
            self.relu2 = torch.nn.ReLU()
            self.head = torch.nn.Linear(8, 3, bias=False)

        def forward(self, x):
            x = self.relu1(self.conv(x))
            return self.head(self.relu2(self.dense(x.flatten(1))))

    torch.manual_seed(0)
    net = Net().eval()
    p = {name: jnp.asarray(v.detach().numpy()) for name, v in net.named_parameters()}

    def fn(x):
        x = jax.lax.conv_general_dilated(
            x, p["conv.weight"], (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        x = jax.nn.relu(jax.nn.relu(x).reshape(x.shape[0], -1) @ p["dense.weight"].T)
        return x @ p["head.weight"].T

    images = np.random.default_rng(2).uniform(size=(4, 2, 6, 6)).astype(np.float32)
    target = [0, 1, 2, 1]
    options, make_rule = {
        "epsilon": ({"epsilon": 0.1}, lambda: lrp_rules.EpsilonRule(epsilon=0.1)),
        "gamma": ({"gamma": 0.25, "epsilon": 1e-9}, lambda: lrp_rules.GammaRule(gamma=0.25)),
        "alpha_beta": ({"epsilon": 1e-9}, lrp_rules.Alpha1_Beta0_Rule),
    }[rule]
    for layer in (net.conv, net.dense, net.head):
        layer.rule = make_rule()
    theirs = captum_attr.LRP(net).attribute(torch.from_numpy(images), target=target)
    ours = compiled(lrp, fn, images, jnp.asarray(target), rule=rule, **options)
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-3, atol=1e-6)


def test_rules_inside_control_flow_are_refused_rather_than_silently_dropped():
    w1 = jnp.array([[1.0, -2.0], [0.5, 1.0]])
    w2 = jnp.array([[3.0], [-1.0]])

    def scanned(x):  # the hidden layer inside lax.scan, as nn.scan layer stacks trace
        h, _ = jax.lax.scan(lambda c, _: (jax.nn.relu(c @ w1), None), x, None, length=1)
        return h @ w2

    x = jnp.array([[1.0, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the ReLU in the scan is one: no "no ReLU" warning
        for method in (guided_backprop, deconvolution, lrp):
            with pytest.raises(NotImplementedError, match=r"cannot apply its rules inside 'scan'"):
                method(scanned, x, 0)


def test_lrp_epsilon_with_biases_agrees_with_captum_at_any_epsilon():
    """Biases are inside the stabilised denominator, as in Captum's EpsilonRule, so the
    two agree with biases at epsilon = 0.1, not only as epsilon -> 0 (conv -> ReLU ->
    dense -> ReLU -> dense, every layer with a bias). Needs torch and captum."""
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr")
    from captum.attr._utils import lrp_rules

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu1 = torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU()
            self.dense, self.relu2 = torch.nn.Linear(4 * 4 * 4, 8), torch.nn.ReLU()
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            x = self.relu1(self.conv(x))
            return self.head(self.relu2(self.dense(x.flatten(1))))

    torch.manual_seed(0)
    net = Net().eval()
    p = [jnp.asarray(v.detach().numpy()) for v in net.parameters()]

    def fn(x):
        x = jax.lax.conv_general_dilated(
            x, p[0], (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        x = jax.nn.relu(
            jax.nn.relu(x + p[1][:, None, None]).reshape(x.shape[0], -1) @ p[2].T + p[3]
        )
        return x @ p[4].T + p[5]

    for layer in (net.conv, net.dense, net.head):
        layer.rule = lrp_rules.EpsilonRule(epsilon=0.1)
    images = np.random.default_rng(2).uniform(size=(4, 2, 6, 6)).astype(np.float32)
    target = [0, 1, 2, 1]
    theirs = captum_attr.LRP(net).attribute(torch.from_numpy(images), target=target)
    ours = compiled(lrp, fn, images, jnp.asarray(target), epsilon=0.1)
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-3, atol=1e-6)


def test_the_rule_is_computed_in_float32_for_a_float16_model():
    """A neuron with no positive contribution and a negative logit: the z+ rule passes
    nothing on, but R / epsilon = -2e6 overflows float16 (inf * 0 = NaN) unless the rule
    and its transposes run in float32."""
    w = jnp.array([[-1.0], [-0.5]], jnp.float16)
    fn = lambda x: x.astype(jnp.float16) @ w - jnp.float16(1.0)
    x = jnp.ones((2, 2), jnp.float32)
    maps = compiled(lrp, fn, x, 0, rule="alpha_beta")
    np.testing.assert_array_equal(np.asarray(maps, np.float32), 0.0)
