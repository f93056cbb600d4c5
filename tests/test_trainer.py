"""`fmi_jax.train.Trainer`: the object `train_and_evaluate` and the benchmark both train with."""

import ast
import dataclasses
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax import train
from fmi_jax.train import loop as loop_lib
from fmi_jax.train.input_pipeline import DeviceDataset

ROOT = Path(__file__).resolve().parents[1]


def test_one_epoch_of_trainer_equals_one_epoch_of_train_and_evaluate(tmp_path, synthetic_config):
    config = synthetic_config(num_epochs=1)
    result = train.train_and_evaluate(config, tmp_path / "run")

    splits = loop_lib.load_data(config.data)
    trainer = train.Trainer(config, splits["train"].images, splits["train"].labels)
    seen = []
    stats = trainer.run_epoch(1, on_window=lambda window, s: seen.append((len(window), s.steps)))

    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
        jax.device_get(trainer.state.params),
        jax.device_get(result.state.params),
    )
    assert int(trainer.state.step) == int(result.state.step) == trainer.steps_per_epoch
    record = result.history[0]
    assert stats.steps == trainer.steps_per_epoch
    assert stats.mean("loss") == record["train_loss"]
    assert float(stats.last["learning_rate"]) == record["learning_rate"]
    assert stats.compile_s is not None  # the trainer's first dispatch is timed apart
    assert sum(n for n, _ in seen) == trainer.steps_per_epoch
    assert seen[-1][1] == trainer.steps_per_epoch
    assert trainer.compiles == 1
    val = splits["validation"]
    report = trainer.evaluate(
        trainer.device_dataset(val.images, val.labels), class_names=val.class_names
    )
    assert report["accuracy"] == record["val_accuracy"]


def test_benchmark_imports_no_private_name_of_the_loop():
    tree = ast.parse((ROOT / "fmi_jax" / "benchmark" / "training.py").read_text())
    loop_aliases = {"fmi_jax.train.loop"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "fmi_jax.train.loop":
            assert not [a.name for a in node.names if a.name.startswith("_")]
        if isinstance(node, ast.ImportFrom) and node.module == "fmi_jax.train":
            loop_aliases |= {a.asname or a.name for a in node.names if a.name == "loop"}
        if isinstance(node, ast.Import):
            loop_aliases |= {a.asname or a.name for a in node.names if a.name.endswith(".loop")}
    private = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and ast.unparse(node.value) in loop_aliases
    ]
    assert private == []


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((4, 8, 8, 1), np.float32), [0, 1, 2, 0], r"uint8 images.*np.round"),
        (np.zeros((4, 1, 8, 8), np.uint8), [0, 1, 2, 0], r"channels last.*transpose"),
        (np.zeros((4, 8, 8), np.uint8), [0, 1, 2, 0], r"add a channel axis"),
        (np.zeros((4, 8, 8, 1), np.uint8), np.eye(4, 3, dtype=int), r"one-hot.*argmax"),
        (np.zeros((4, 8, 8, 1), np.uint8), [0, 1, -1, 0], r"labels must be in \[0, 3\)"),
        (np.zeros((4, 8, 8, 1), np.uint8), [0, 1, 3, 0], r"from 0 to 3"),
    ],
    ids=["float", "channels-first", "no-channel-axis", "one-hot", "negative", "too-large"],
)
def test_training_data_a_model_would_misread_is_refused(images, labels, message):
    # A label of 3 for a 3-class model would be dropped from the confusion matrix (and
    # -1 would count as class 2), so accuracy would be computed over the others.
    with pytest.raises(ValueError, match=message):
        DeviceDataset.from_numpy(images, np.asarray(labels), num_classes=3)
    assert len(DeviceDataset.from_numpy(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 2]))) == 2


def test_a_model_with_other_classes_than_the_data_is_refused_before_writing(
    tmp_path, synthetic_config, monkeypatch
):
    config = synthetic_config(**{"model.num_classes": 5})
    with pytest.raises(ValueError, match=r"model.num_classes is 5.*num_classes=10"):
        train.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()
    # A model that says nothing of its classes but returns more logits than the data has
    # would fail only at the first evaluation, an epoch in.

    class Wide(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(12)(x.reshape(x.shape[0], -1).astype(jnp.float32))

    monkeypatch.setattr(loop_lib, "model_from_config", lambda _: Wide())
    with pytest.raises(ValueError, match=r"returns 12 logits, but 'synthetic' has 10 classes"):
        train.train_and_evaluate(synthetic_config(), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # Fewer logits than the data's classes, where the training labels never reach the
    # missing one (the labels' own check cannot see it): refused the same way.

    class Narrow(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(9)(x.reshape(x.shape[0], -1).astype(jnp.float32))

    real_load = loop_lib.load_data

    def without_class_9(data_config):
        splits = real_load(data_config)
        for name in ("train", "validation"):
            ds = splits[name]
            keep = ds.labels != 9
            splits[name] = dataclasses.replace(ds, images=ds.images[keep], labels=ds.labels[keep])
        return splits

    monkeypatch.setattr(loop_lib, "model_from_config", lambda _: Narrow())
    monkeypatch.setattr(loop_lib, "load_data", without_class_9)
    with pytest.raises(ValueError, match=r"returns 9 logits, but 'synthetic' has 10 classes"):
        train.train_and_evaluate(synthetic_config(), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_guides_own_model_and_data_example_runs_and_its_model_can_be_explained():
    """The guide's "Your own model and data" block, as written, then its last sentence:
    the trained state explained through a Linen handle."""
    text = (ROOT / "docs" / "guide.md").read_text()
    start = text.index("**Your own model and data.**")
    (block,) = re.findall(r"```python\n(.*?)```", text[start : text.index("\n## ", start)], re.S)
    namespace: dict = {"__name__": "guide"}
    exec(compile(block, "docs/guide.md", "exec"), namespace)  # noqa: S102
    metrics, stats = namespace["metrics"], namespace["stats"]
    assert 0.0 <= metrics["accuracy"] <= 1.0 and np.isfinite(stats.mean("loss"))
    assert stats.epoch == 2 and namespace["trainer"].dispatches > 0
    # Its Net says nothing of its classes: they are the width of its logits, and a
    # label outside them is refused (its examples would count as no class at all).
    trainer, images, labels = namespace["trainer"], namespace["images"], namespace["labels"]
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got values from 0 to 5"):
        trainer.device_dataset(images[448:], np.where(labels[448:] == 2, 5, labels[448:]))
    with pytest.raises(ValueError, match=r"images of shape \(\d+, \d+, 1\) for a model trained on"):
        trainer.device_dataset(images[448:, :-1, :-1], labels[448:])

    from fmi_jax import attribution

    net = namespace["Net"]()
    fn = attribution.flax_model(net, {"params": trainer.state.params}, train=False)
    x = namespace["images"][:4].astype(np.float32) / 255
    np.testing.assert_allclose(
        fn(x), net.apply({"params": trainer.state.params}, x), rtol=1e-6, atol=1e-6
    )
    assert attribution.saliency(fn, x).shape == x.shape


def test_a_model_without_the_train_flag_or_not_linen_is_refused_with_the_signature(
    synthetic_config,
):
    import flax.linen as nn
    from flax import nnx

    class NoFlag(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x.reshape(len(x), -1))

    images, labels = np.zeros((8, 4, 4, 1), np.uint8), np.zeros(8, int)
    with pytest.raises(ValueError, match=r"NoFlag.__call__ must take a `train` keyword"):
        train.Trainer(synthetic_config(batch_size=4), images, labels, model=NoFlag())
    with pytest.raises(ValueError, match="trains Linen modules.*got Linear"):
        model = nnx.Linear(16, 3, rngs=nnx.Rngs(0))
        train.Trainer(synthetic_config(batch_size=4), images, labels, model=model)
