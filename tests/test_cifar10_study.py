"""CifarNet and the CIFAR-10 study on CIFAR-10 files written in the original format."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs
from fmi_jax import attribution, models, studies, train
from fmi_jax.data import cifar, registry
from tests import testdata


@pytest.mark.slow
def test_cifarnet_is_the_tutorial_network():
    model = models.get_model("cifarnet")
    x = jnp.zeros((2, 32, 32, 3))
    variables = testdata.init(model, x, 0)
    # conv1 456 + conv2 2,416 + fc1 48,120 + fc2 10,164 + fc3 850 (PyTorch's tutorial).
    assert sum(p.size for p in jax.tree.leaves(variables["params"])) == 62_006
    assert variables["params"]["fc1"]["kernel"].shape == (400, 120)
    assert model.apply(variables, x).shape == (2, 10)
    assert {"conv1", "conv2"} <= set(attribution.layer_names((model, variables), x))
    assert attribution.flax_model(model, variables).capture(x, "conv1")[1].shape == (2, 28, 28, 6)
    assert attribution.flax_model(model, variables).capture(x, "conv2")[1].shape == (2, 10, 10, 16)


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    rng = np.random.default_rng(0)
    labels = {
        s: rng.integers(0, 10, n).astype(np.int64) for s, n in (("train", 400), ("test", 100))
    }
    # A class-dependent colour, so the tiny run learns something.
    images = {
        s: np.clip(
            rng.normal(128, 30, (len(y), 32, 32, 3)) + (y[:, None, None, None] - 4.5) * 20, 0, 255
        ).astype(np.uint8)
        for s, y in labels.items()
    }
    cifar.write_cifar_batches(
        folder,
        train_images=images["train"],
        train_labels=labels["train"],
        test_images=images["test"],
        test_labels=labels["test"],
        label_names=registry.CIFAR10_CLASSES,
    )
    return folder.parent


@pytest.mark.slow
def test_train_and_explain_on_original_format_files(tmp_path, cifar_folder):
    config = configs.load("cifarnet_cifar10", "smoke")
    config.data.data_dir = str(cifar_folder)
    config.data.download = False
    config.data.train_limit = None
    config.data.validation_size = 50
    config.progress = False
    result = train.train_and_evaluate(config, tmp_path)
    assert result.summary["parameters"] == 62_006
    assert np.isfinite(result.summary["test_accuracy"])

    explain = configs.load("explain_cifar10", "smoke")
    explain.selection.pool = 100
    out = studies.run_explain(explain, tmp_path)
    stats = json.loads((out.out_dir / "stats.json").read_text())
    assert stats["agreement"]["methods"] == [
        "saliency",
        "integrated_gradients",
        "ig_smoothgrad",
        "deeplift",
    ]
    # IG's convergence delta is reported per sample; DeepLift (Rescale) is exact here.
    n = stats["samples"]
    assert len(stats["completeness"]["integrated_gradients"]["per_sample"]) == n
    assert stats["completeness"]["deeplift"]["max_abs_delta"] < 1e-3
    maps = np.load(out.out_dir / "attributions.npz")["map_integrated_gradients"]
    assert maps.shape == (n, 32, 32, 3)
