"""ResNet: stage layout, parameter counts by hand, batch norm in training and evaluation,
named blocks for Grad-CAM."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax import attribution, models
from fmi_jax.models import resnet
from fmi_jax.models.resnet import stage_of_blocks
from tests import testdata

# Shapes, dtypes and parameter counts come from jax.eval_shape (traced, never compiled);
# tests that need values run the model jitted, one program per call.


def _count(variables):
    return sum(x.size for x in jax.tree.leaves(variables["params"]))


def _abstract_params(model, shape=(1, 28, 28, 1)):
    variables = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32)
    )
    return variables, _count(variables)


def _init(model, shape=(1, 28, 28, 1)):
    return testdata.init(model, jnp.zeros(shape))


@pytest.fixture(scope="module")
def small_resnet():
    """4 blocks (2 + 1 + 1: the second block of the first stage has no projection),
    4 filters, initialised once and shared (read-only) by the tests that need values."""
    model = models.get_model("resnet", num_blocks=4, filters=4)
    return model, _init(model)


@pytest.mark.parametrize(
    "blocks,stages", [(1, (0,)), (3, (0, 1, 2)), (4, (0, 0, 1, 2)), (5, (0, 0, 1, 1, 2))]
)
def test_blocks_are_spread_over_three_stages(blocks, stages):
    assert stage_of_blocks(blocks) == stages


def test_parameter_count_by_hand():
    """3 blocks, 32 filters, one input channel:
    stem 3*3*1*32 + BN 2*32 = 352
    block1 32->32:  2 * (9*32*32 + 64)                               = 18,560
    block2 32->64 (stride 2): 9*32*64 + 9*64*64 + 2*128 + proj 32*64 + 128 = 57,728
    block3 64->128 (stride 2): 9*64*128 + 9*128*128 + 2*256 + 64*128 + 256 = 230,144
    head 128*10 + 10 = 1,290                                 total 308,074"""
    _, count = _abstract_params(models.get_model("resnet", num_blocks=3, filters=32))
    assert count == 352 + 18_560 + 57_728 + 230_144 + 1_290
    # Pre-activation: no BN after the stem's conv (-64), no projection BNs (-128 - 256),
    # each block's first BN normalises its input, so blocks 2 and 3 have it over 32 and 64
    # channels instead of 64 and 128 (-64 - 128), and a final BN over 128 channels (+256).
    _, pre = _abstract_params(
        models.get_model("resnet", num_blocks=3, filters=32, pre_activation=True)
    )
    assert pre == count - 64 - (128 + 256) - (64 + 128) + 256


@pytest.mark.parametrize("pre_activation", [False, True])
def test_shapes_of_every_block_and_the_logits(pre_activation):
    model = models.get_model("resnet", num_blocks=4, filters=8, pre_activation=pre_activation)
    x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
    variables, _ = _abstract_params(model)
    apply = functools.partial(model.apply, capture_intermediates=True, mutable=["intermediates"])
    logits, state = jax.eval_shape(apply, variables, x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    shapes = {
        name: state["intermediates"][name]["__call__"][0].shape for name in model.conv_layer_names
    }
    assert shapes == {
        "stem": (2, 28, 28, 8),
        "block1": (2, 28, 28, 8),
        "block2": (2, 28, 28, 8),
        "block3": (2, 14, 14, 16),
        "block4": (2, 7, 7, 32),
    }


def test_batch_norm_statistics_change_in_training_and_not_in_evaluation(small_resnet):
    model, variables = small_resnet
    x = testdata.uniform(jax.random.key(2), (8, 28, 28, 1)) * 3.0 + 1.0
    train = functools.partial(model.apply, train=True, mutable=["batch_stats"])

    @jax.jit  # the batch and its first examples, in training and in evaluation: one program
    def run(variables, x):
        return {
            "train": train(variables, x),
            "train_first_two": train(variables, x[:2]),
            "eval": model.apply(variables, x),
            "eval_first": model.apply(variables, x[:1]),
        }

    out = run(variables, x)
    _, updated = out["train"]
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updated["batch_stats"])
    assert all(not np.allclose(a, b) for a, b in zip(before, after))
    # Evaluation uses the stored statistics: an example's logits do not depend on its batch.
    alone = out["eval_first"]
    together = out["eval"][:1]
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-6)
    # ...while in training the batch statistics make them depend on the batch.
    train_alone, _ = out["train_first_two"]
    train_together, _ = out["train"]
    assert not np.allclose(train_alone, train_together[:2])


def test_each_block_starts_as_the_identity_plus_shortcut(small_resnet):
    """The last BN of a block's branch starts at zero scale, so at initialisation a block
    without projection returns relu(x) = x for its (non-negative) input."""
    model, variables = small_resnet
    x = testdata.uniform(jax.random.key(3), (2, 28, 28, 1))
    apply = functools.partial(model.apply, capture_intermediates=True, mutable=["intermediates"])
    _, state = jax.jit(apply)(variables, x)
    inter = state["intermediates"]
    np.testing.assert_allclose(inter["block1"]["__call__"][0], inter["stem"]["__call__"][0])
    np.testing.assert_allclose(inter["block2"]["__call__"][0], inter["block1"]["__call__"][0])


def test_grad_cam_can_name_every_block(small_resnet):
    model, variables = small_resnet
    x = testdata.uniform(jax.random.key(4), (2, 28, 28, 1))
    names = attribution.layer_names((model, variables), x)
    for layer in model.conv_layer_names:
        assert layer in names
    # Every block's map in one compiled program.
    all_maps = jax.jit(
        lambda v, x: {
            layer: attribution.grad_cam((model, v), x, layer=layer)
            for layer in model.conv_layer_names
        }
    )(variables, x)
    for layer in model.conv_layer_names:
        maps = all_maps[layer]
        assert maps.shape == (2, 28, 28) and bool(jnp.isfinite(maps).all())


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    model = models.get_model("resnet", num_blocks=3, filters=4, dtype="bfloat16")

    variables = _init(model)
    params, logits = variables["params"], jax.jit(model.apply)(variables, jnp.ones((2, 28, 28, 1)))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())


def test_zero_blocks_is_an_error():
    # get_model names the argument; the module built directly says what it needs.
    with pytest.raises(ValueError, match="^model 'resnet': num_blocks must be an integer >= 1"):
        models.get_model("resnet", num_blocks=0)
    with pytest.raises(ValueError, match="at least one residual block"):
        _abstract_params(models.ResNet(num_blocks=0))


def test_auto_compute_dtype_is_float32_on_cpu_and_bfloat16_on_accelerators(monkeypatch):
    from fmi_jax.train import loop

    model = loop.model_from_config({"name": "resnet", "num_blocks": 1, "dtype": "auto"})
    expected = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    assert model.dtype == expected
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert loop.compute_dtype("auto") == "bfloat16"
    assert loop.compute_dtype("float32") == "float32"


@pytest.mark.parametrize("padding, first", [("same", 1), ("symmetric", 0)])
def test_a_stride_2_conv_is_centred_where_its_padding_puts_it(padding, first):
    """A 3x3 kernel that copies its centre, stride 2, on an 8 x 8 map: 'SAME' pads
    (0, 1) and centres output (i, j) on input (2i + 1, 2j + 1), half an output pixel
    from the 1x1 projection's (2i, 2j); 'symmetric' pads (1, 1), as PyTorch."""
    x = jnp.arange(64.0).reshape(1, 8, 8, 1)
    conv = resnet._conv(1, 3, 2, False, jnp.float32, name="conv", padding=padding)
    centre = jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0)
    out = conv.apply({"params": {"kernel": centre}}, x)
    np.testing.assert_array_equal(out, x[:, first::2, first::2])
    proj = resnet._conv(1, 1, 2, False, jnp.float32, name="proj", padding=padding)
    np.testing.assert_array_equal(
        proj.apply({"params": {"kernel": jnp.ones((1, 1, 1, 1))}}, x), x[:, ::2, ::2]
    )


def test_symmetric_padding_has_the_same_parameters_and_other_values_are_refused():
    x = jnp.zeros((1, 28, 28, 1))
    shapes = {
        padding: jax.tree.map(
            jnp.shape,
            jax.eval_shape(
                models.get_model("resnet", filters=4, padding=padding).init, jax.random.key(0), x
            ),
        )
        for padding in ("same", "symmetric")
    }
    assert shapes["same"] == shapes["symmetric"]
    with pytest.raises(
        ValueError, match=r"config\.model\.padding must be one of \('same', 'symmetric'\)"
    ):
        models.get_model("resnet", padding="valid")
