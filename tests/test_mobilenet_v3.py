"""MobileNetV3 against torchvision, without torch.

The fixtures in tests/fixtures/ are reduced-width torchvision models with random
weights and batch-norm statistics, their inputs and the logits torchvision computed
(made by scripts/make_mobilenet_fixture.py, which needs torch and torchvision)."""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from fmi_jax.data import images as images_lib
from fmi_jax.data.imagenet import IMAGENET_CLASSES, IMAGENET_MEAN, IMAGENET_STD, normalize
from fmi_jax.models import MobileNetV3, available_models, get_model
from fmi_jax.models.mobilenet_v3 import block_configs, make_divisible
from fmi_jax.models.torchvision_import import (
    load_state_dict,
    load_weights,
    mobilenet_v3_variables,
    torch_key,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# Must match FIXTURE_WIDTHS in scripts/make_mobilenet_fixture.py.
FIXTURE_WIDTHS = {"small": 0.25, "large": 0.2}
# sum(p.numel() for p in torchvision.models.mobilenet_v3_*().parameters()), torchvision 0.28.
TORCHVISION_PARAMS = {"large": 5_483_032, "small": 2_542_856}


def _fixture(variant: str) -> tuple[str, MobileNetV3, dict[str, np.ndarray]]:
    path = os.path.join(FIXTURES, f"mobilenet_v3_{variant}_fixture.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    assert float(arrays["__width_mult__"]) == pytest.approx(FIXTURE_WIDTHS[variant])
    model = MobileNetV3(variant=variant, width_mult=FIXTURE_WIDTHS[variant], num_classes=10)
    return path, model, arrays


def _image_shape(arrays) -> tuple[int, int, int]:
    return tuple(arrays["__input__"].shape[1:])


@pytest.mark.parametrize("variant", ["small", "large"])
def test_logits_match_torchvision(variant):
    path, model, arrays = _fixture(variant)
    variables = load_weights(path, model, _image_shape(arrays))
    logits = np.asarray(jax.jit(model.apply)(variables, arrays["__input__"]))
    expected = arrays["__logits__"]
    assert logits.shape == expected.shape == (2, 10)
    assert np.abs(expected).max() > 1.0  # the fixture's logits are not trivially small
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def _small_state():
    _, model, arrays = _fixture("small")
    state = {k: v for k, v in arrays.items() if not k.startswith("__")}
    return model, state, _image_shape(arrays)


def test_missing_key_is_named():
    model, state, shape = _small_state()
    del state["features.4.block.2.fc1.weight"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): features\.4\.block\.2\.fc1\.weight"):
        mobilenet_v3_variables(state, model, shape)


def test_unexpected_key_is_named():
    model, state, shape = _small_state()
    state["features.99.0.weight"] = np.zeros((8, 8, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): features\.99\.0\.weight"):
        mobilenet_v3_variables(state, model, shape)


def test_shape_mismatch_is_named():
    model, state, shape = _small_state()
    state["classifier.3.weight"] = np.zeros((11, state["classifier.3.weight"].shape[1]), np.float32)
    with pytest.raises(ValueError, match=r"shape mismatches \(1\): classifier\.3\.weight"):
        mobilenet_v3_variables(state, model, shape)


def test_wrong_variant_is_a_clear_error_that_names_the_right_one():
    _, large, arrays = _fixture("large")
    small, state, shape = _small_state()
    with pytest.raises(ValueError, match="does not fit MobileNetV3") as error:
        mobilenet_v3_variables(state, large, shape)
    assert str(error.value).endswith(
        "(the checkpoint has 13 feature blocks, as mobilenet_v3_small has, and the model "
        "17: set config.model.name to mobilenet_v3_small)"
    )
    large_state = {k: v for k, v in arrays.items() if not k.startswith("__")}
    with pytest.raises(ValueError, match="set config.model.name to mobilenet_v3_large"):
        mobilenet_v3_variables(large_state, small, shape)


def test_a_checkpoint_of_another_model_is_one_short_line():
    model, state, shape = _small_state()
    other = {f"encoder.layer{i}.weight": np.zeros((2, 2), np.float32) for i in range(30)}
    with pytest.raises(ValueError) as error:
        mobilenet_v3_variables(other, model, shape)
    message = str(error.value)
    assert "\n" not in message and len(message) < 1500
    assert "none of its 30 entries is a variable of the model" in message
    assert f"missing keys ({len(state)}): " in message and "... and " in message


def test_num_batches_tracked_is_ignored():
    model, state, shape = _small_state()
    state["features.0.1.num_batches_tracked"] = np.array(7)
    variables = mobilenet_v3_variables(state, model, shape)
    assert set(variables) == {"params", "batch_stats"}


def test_torch_keys():
    assert torch_key("params", ("features_0", "conv", "kernel")) == "features.0.0.weight"
    assert torch_key("batch_stats", ("features_12", "block_3", "bn", "var")) == (
        "features.12.block.3.1.running_var"
    )
    assert torch_key("params", ("features_1", "block_1", "fc2", "bias")) == (
        "features.1.block.1.fc2.bias"
    )
    assert torch_key("params", ("classifier_3", "kernel")) == "classifier.3.weight"
    assert torch_key("params", ("features_2", "block_0", "bn", "scale")) == (
        "features.2.block.0.1.weight"
    )


def test_an_upper_case_npz_suffix_is_read_with_numpy(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # not the PyTorch reader
    path = tmp_path / "WEIGHTS.NPZ"
    np.savez(tmp_path / "weights.npz", a=np.arange(3, dtype=np.float32))
    (tmp_path / "weights.npz").rename(path)
    np.testing.assert_array_equal(load_state_dict(path)["a"], [0, 1, 2])


def test_a_truncated_npz_of_weights_is_one_line_naming_it(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, a=np.ones(1000, np.float32))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"weights\.npz is not a readable \.npz of weights"):
        load_state_dict(path)


def test_reading_a_pth_without_torch_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    path = tmp_path / "weights.pth"
    path.write_bytes(b"")
    with pytest.raises(ImportError, match="pip install torch"):
        load_state_dict(path)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"model": sd, "optimizer": {}, "lr_scheduler": {}, "epoch": 3, "args": None},
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {f"module.{key}": value for key, value in sd.items()},
    ],
    ids=["torchvision_reference_training", "state_dict_key", "distributed_data_parallel"],
)
def test_a_training_checkpoints_state_dict_is_found(monkeypatch, tmp_path, wrap):
    """What torch.load returns for a checkpoint of torchvision's reference training
    script, of a trainer that saves 'state_dict', or of a DDP model, reads as the plain
    state_dict (torch.load is stood in for: torch stays out of the tests)."""
    import types

    _, _, arrays = _fixture("small")
    state = {k: v for k, v in arrays.items() if not k.startswith("__")}
    torch = types.SimpleNamespace(load=lambda path, **kwargs: wrap(state))
    monkeypatch.setitem(sys.modules, "torch", torch)
    (tmp_path / "checkpoint.pth").write_bytes(b"")
    loaded = load_state_dict(tmp_path / "checkpoint.pth")
    assert sorted(loaded) == sorted(state)
    np.testing.assert_array_equal(loaded["features.0.0.weight"], state["features.0.0.weight"])


def _abstract_init(model, size=224, batch=2):
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)

    def init_and_apply(x):
        variables = model.init(jax.random.PRNGKey(0), x)
        return variables, model.apply(variables, x)

    return jax.eval_shape(init_and_apply, x)


@pytest.mark.parametrize("variant", ["large", "small"])
def test_full_size_shapes_and_parameter_count(variant):
    model = get_model(f"mobilenet_v3_{variant}")
    variables, logits = _abstract_init(model)
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    n_params = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables["params"]))
    assert n_params == TORCHVISION_PARAMS[variant]
    # Every features_* block is a named submodule Grad-CAM can capture.
    assert set(model.conv_layer_names) == {
        k for k in variables["params"] if k.startswith("features_")
    }


def test_train_mode_updates_batch_stats_and_uses_dropout():
    path, model, arrays = _fixture("small")
    variables = load_weights(path, model, _image_shape(arrays))
    x = arrays["__input__"]
    apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    logits, updates = apply(variables, x, rngs={"dropout": jax.random.PRNGKey(0)})
    assert logits.shape == (2, 10)
    before = traverse_util.flatten_dict(variables["batch_stats"])
    after = traverse_util.flatten_dict(updates["batch_stats"])
    assert before.keys() == after.keys()
    assert any(not np.allclose(before[k], after[k]) for k in before)


def test_registry_and_widths():
    assert {"mobilenet_v3_large", "mobilenet_v3_small"} <= set(available_models())
    model = get_model("mobilenet_v3_small", width_mult=0.5, num_classes=7, dropout=0.0)
    assert (model.variant, model.width_mult, model.num_classes) == ("small", 0.5, 7)
    with pytest.raises(ValueError):
        get_model("mobilenet_v3_large", variant="small")
    with pytest.raises(ValueError, match="variant"):
        block_configs("medium")
    # torchvision's _make_divisible
    assert [make_divisible(v) for v in (3.2, 4.0, 13.6, 24 * 0.75, 1280 * 0.25)] == [
        8,
        8,
        16,
        24,
        320,
    ]


def test_imagenet_classes():
    assert len(IMAGENET_CLASSES) == 1000
    assert len(set(IMAGENET_CLASSES)) >= 998  # torchvision's list repeats two names
    assert IMAGENET_CLASSES[0] == "tench"
    assert IMAGENET_CLASSES[1] == "goldfish"
    assert IMAGENET_CLASSES[999] == "toilet tissue"
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)
    white = normalize(np.full((1, 2, 2, 3), 255, np.uint8))
    np.testing.assert_allclose(
        white[0, 0, 0], (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD), rtol=1e-6
    )


def test_normalize_takes_uint8_or_unit_floats_and_refuses_what_it_would_misread():
    white = (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    for pixels in (np.full((2, 2, 3), 255, np.uint8), np.ones((2, 2, 3), np.float32)):
        np.testing.assert_allclose(normalize(pixels)[1, 1], white, rtol=1e-6)
    grey = normalize(np.full((1, 1, 3), 0.5, np.float64), mean=(0.5,) * 3, std=(0.25,) * 3)
    assert grey.dtype == np.float32 and np.all(grey == 0)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\], got values in \[255, 255\]"):
        normalize(np.full((2, 2, 3), 255.0))  # floats not yet divided by 255
    with pytest.raises(ValueError, match="must be uint8 .* got int64"):
        normalize(np.full((2, 2, 3), 255, np.int64))
    with pytest.raises(ValueError, match=r"channels last \(\.\.\., 3\), got \(1, 3, 2, 2\)"):
        normalize(np.zeros((1, 3, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="divide pixel-scale values by 255"):
        normalize(np.zeros((2, 2, 3), np.uint8), (123.675, 116.28, 103.53), (58.4, 57.1, 57.4))
    # The photo pipeline's normalize is the same function.
    assert images_lib.normalize is normalize
