"""Model shapes, parameter counts, names, and the registry."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from fmi_jax import models
from tests import testdata


def count(params):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


# Shapes and parameter counts come from jax.eval_shape (traced, never compiled); tests
# that need values run jitted programs, one compile each instead of one per operation.
# Inputs and initial variables come from tests/testdata.py.


def _init(model, x):
    return testdata.init(model, x, 0)


@pytest.mark.parametrize(
    "name,shape,expected",
    [
        # conv 3x3: 1->32 (BN, no bias) 288+64; 32->64: 18432+128; 64->128: 73728+256;
        # 28 -> 14 -> 7 -> 3 after three pools: 3*3*128 = 1152 -> 256: 295168; 256 -> 10: 2570.
        ("cnn_fmnist", (28, 28, 1), 352 + 18560 + 73984 + 295168 + 2570),
        # conv 5x5: 1->32: 800+32; 32->64: 51200+64; 28 -> 14 -> 7: 3136 -> 128: 401536; 128 -> 10: 1290.
        ("cnn_mnist", (28, 28, 1), 832 + 51264 + 401536 + 1290),
        # conv 3x3: 1->32: 320; 32->64: 18496; 7*7*64 = 3136 -> 128: 401536; -> 10: 1290.
        ("cnn_tunable", (28, 28, 1), 320 + 18496 + 401536 + 1290),
    ],
)
def test_parameter_counts_and_logits_shape(name, shape, expected):
    model = models.get_model(name)
    variables = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    )
    assert count(variables["params"]) == expected
    logits = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((5, *shape), jnp.float32))
    assert logits.shape == (5, 10) and logits.dtype == jnp.float32


def test_conv_blocks_are_captured_by_stable_names():
    model = models.get_model("cnn_fmnist")
    x = jnp.ones((2, 28, 28, 1))
    apply = functools.partial(model.apply, capture_intermediates=True, mutable=["intermediates"])
    apply = jax.jit(apply)
    _, state = apply(_init(model, x), x)
    inter = state["intermediates"]
    assert model.conv_layer_names == ("conv1", "conv2", "conv3")
    assert inter["conv1"]["__call__"][0].shape == (2, 28, 28, 32)  # before pooling
    assert inter["conv2"]["__call__"][0].shape == (2, 14, 14, 64)
    assert inter["conv3"]["__call__"][0].shape == (2, 7, 7, 128)
    assert float(inter["conv1"]["__call__"][0].min()) >= 0.0  # after the ReLU


def test_dropout_only_in_training():
    model = models.get_model("cnn_mnist", dropout=0.5)
    x = testdata.uniform(jax.random.key(1), (4, 28, 28, 1))
    variables = _init(model, x)
    evaluate = jax.jit(model.apply)
    np.testing.assert_array_equal(evaluate(variables, x), evaluate(variables, x))
    # (the dropout mask is drawn inside: a random-number program)
    train = jax.jit(functools.partial(model.apply, train=True))
    a = train(variables, x, rngs={"dropout": jax.random.key(1)})
    b = train(variables, x, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)


def test_training_gradients_equal_with_and_without_the_cpu_conv_rule():
    model = models.get_model("cnn_tunable", dropout=0.0)
    x = testdata.uniform(jax.random.key(1), (3, 28, 28, 1))
    variables = _init(model, x)
    loss = lambda p, train: model.apply({"params": p}, x, train=train).sum()
    # Both gradients in one compiled program (train=True: im2col's; train=False: XLA's
    # forward with im2col's derivative, a custom_jvp).
    with_rule, without = jax.jit(lambda p: (jax.grad(loss)(p, True), jax.grad(loss)(p, False)))(
        variables["params"]
    )
    np.testing.assert_allclose(
        ravel_pytree(with_rule)[0],
        ravel_pytree(without)[0],
        rtol=1e-4,
        atol=1e-5,
    )


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*cnn_fmnist"):
        models.get_model("resnet9000")


def test_unknown_keyword_names_what_is_accepted():
    with pytest.raises(ValueError, match="does not take widht.*dense_width"):
        models.get_model("cnn_tunable", widht=3)


def test_pool_length_must_match_blocks():
    model = models.SimpleCNN(features=(4, 8), pool=(True,))
    with pytest.raises(ValueError, match="one True/False per block"):
        model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("cifarnet", {"num_classes": 0}, "num_classes must be an integer >= 1, got 0"),
        ("mobilenet_v3_small", {"num_classes": -3}, "num_classes must be an integer >= 1, got -3"),
        ("cnn_fmnist", {"kernel_size": (3, 3)}, r"kernel_size must be an integer >= 1, got \(3, 3\)"),
        ("cnn_mnist", {"features": 8}, "features must be a list of integers >= 1, got 8"),
        ("cnn_fmnist", {"dense": (0,)}, r"dense must be a list of integers >= 1, got \(0,\)"),
        ("resnet", {"filters": 0}, "filters must be an integer >= 1, got 0"),
        ("resnet", {"dropout": 1.0}, r"dropout must be a rate in \[0, 1\), got 1\.0"),
        ("cnn_mnist", {"dropout": -0.5}, r"dropout must be a rate in \[0, 1\), got -0\.5"),
        ("resnet", {"dtype": "float33"}, "dtype must be a floating dtype .*, got 'float33'"),
        ("resnet", {"dtype": "int32"}, "dtype must be a floating dtype .*, got 'int32'"),
    ],
)  # fmt: skip
def test_arguments_no_model_can_mean_are_refused_by_name(name, kwargs, message):
    # Each would otherwise fail deep inside Flax (a fan-in of 0) or build a dead model.
    with pytest.raises(ValueError, match=f"^model '{name}': {message}$"):
        models.get_model(name, **kwargs)


def test_what_the_argument_checks_leave_alone():
    # Any sequence of widths, dropout None, a padding that is not a string, and every
    # argument of a model a user registers (which decides for itself).
    assert models.get_model("cnn_mnist", features=np.array([8, 16])).features == (8, 16)
    assert models.get_model("cnn_mnist", features=range(8, 10), dropout=None).dropout is None
    model = models.get_model("simple_cnn", features=(2,), pool=(True,), padding=1)
    assert jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    models.register_model("test_free_arguments")(lambda num_blocks: nn.Dense(num_blocks[0]))
    try:
        assert models.get_model("test_free_arguments", num_blocks=(2, 2)).features == 2
    finally:
        del models._REGISTRY["test_free_arguments"]


def test_a_map_pooled_away_is_refused_before_the_dense_layers_and_pool_follows_features():
    # Five pooled blocks take 28 -> 14 -> 7 -> 3 -> 1 -> 0; cifarnet's unpadded third
    # block leaves 1x1, pooled to 0x0. Flax would divide by a fan-in of 0.
    for name, kwargs, image in [
        ("cnn_mnist", {"features": (2,) * 5}, jnp.zeros((1, 28, 28, 1))),
        ("cifarnet", {"features": (2, 2, 2)}, jnp.zeros((1, 32, 32, 3))),
    ]:
        model = models.get_model(name, **kwargs)
        size = f"{image.shape[1]}x{image.shape[2]}"
        with pytest.raises(ValueError, match=f"^SimpleCNN: a {size} input is 0x0 before the dense"):
            jax.eval_shape(model.init, jax.random.key(0), image)
    # A kernel larger than what is left of the map, unpadded: refused before that conv.
    wide = models.get_model("cifarnet", kernel_size=13)  # 32 -> 20, pooled to 10
    with pytest.raises(
        ValueError, match=r"is 10x10 before conv2 \(unpadded\), which needs at least 13x13"
    ):
        jax.eval_shape(wide.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    # The Fashion-MNIST CNN pools every block by default, however many there are.
    assert models.get_model("cnn_fmnist", features=(4, 8)).pool == (True, True)


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("cnn_fmnist")(lambda: nn.Dense(1))


def test_init_variables_are_eager_init_bit_for_bit():
    # Flax's initialisers (truncated normal, zeros, ones, batch-norm statistics), fused
    # into one program at LLVM level 1, draw what eager `model.init` draws: trained runs
    # initialised either way are the same runs.
    model = models.get_model("cnn_fmnist", features=(2,), pool=(True,), dense=())
    key, x = jax.random.key(3), jnp.zeros((1, 6, 6, 1))
    eager = model.init(key, x, train=False)
    compiled = models.init_variables(model, key, x, train=False)
    assert jax.tree.structure(compiled) == jax.tree.structure(eager)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(compiled)):
        np.testing.assert_array_equal(a, b)
    # Inside a transformation it is plain `model.init` (jit refuses compiler options
    # below the top level), whether the key is traced or closed over.
    traced = testdata.jit(lambda k: models.init_variables(model, k, x, train=False))(key)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(traced)):
        np.testing.assert_array_equal(a, b)
    shapes = jax.eval_shape(lambda: models.init_variables(model, key, x, train=False))
    assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(np.shape, eager)


def test_jit_draws_draws_the_eager_bits_at_top_level_and_inside_jit():
    def draws(key, shape):
        k1, k2 = jax.random.split(key)
        return jax.random.normal(k1, shape), jax.random.uniform(k2, shape)

    key = jax.random.key(8)
    eager = draws(key, (3, 5))
    compiled = models.jit_draws(draws, static_argnums=1)
    for a, b in zip(eager, compiled(key, (3, 5)), strict=True):
        np.testing.assert_array_equal(a, b)
    # Nested in a jit or vmap, where compiler options are refused, it is plain jit.
    nested = jax.jit(lambda k: compiled(k, (3, 5))[0] * 2)(key)
    np.testing.assert_array_equal(nested, eager[0] * 2)
    keys = jax.random.split(key, 2)
    mapped = jax.vmap(lambda k: compiled(k, (4,))[1])(keys)
    np.testing.assert_array_equal(mapped[1], draws(keys[1], (4,))[1])
