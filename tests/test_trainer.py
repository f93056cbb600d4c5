"""`fmi_jax.train.Trainer`: the object `train_and_evaluate` and the benchmark both train with."""

import ast
from pathlib import Path

import jax
import numpy as np

from fmi_jax import train
from fmi_jax.train import loop as loop_lib

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
