"""The figures of a training run, drawn above fmi_jax.train (which does not import
plotting): a hook for `train_and_evaluate(on_epoch_end=...)` and the confusion
matrix of an `evaluate_workdir` result.

    train.train_and_evaluate(config, workdir, on_epoch_end=figures.training_curves(config))
    figures.confusion_matrix(train.evaluate_workdir(workdir), workdir)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from fmi_jax import plotting
from fmi_jax.train import loop as loop_lib
from fmi_jax.train import tasks as tasks_lib

__all__ = ["confusion_matrix", "training_curves"]


def training_curves(config: ml_collections.ConfigDict) -> loop_lib.EpochHook:
    """`on_epoch_end` drawing workdir/training_curves.png (loss, the task's metric and the
    learning rate per epoch) after every epoch."""

    def draw(history: list[dict[str, Any]], workdir: Path) -> None:
        # The task is looked up here, after train_and_evaluate has validated the config.
        metric = tasks_lib.task_from_config(config).metric
        plotting.training_curves(history, Path(workdir) / "training_curves.png", metric=metric)

    return draw


def confusion_matrix(evaluation: Mapping[str, Any], workdir: str | Path) -> Path | None:
    """workdir/confusion_matrix.png of `evaluate_workdir`'s result on the test split, for
    classifiers (whose reports hold a confusion matrix); returns its path, or None when
    there is nothing to draw."""
    test = (evaluation.get("splits") or {}).get("test")
    if not test or "confusion" not in test:
        return None
    path = Path(workdir) / "confusion_matrix.png"
    plotting.confusion_matrix(
        test["confusion"],
        list(test["per_class"]),
        path,
        title=(
            f"{evaluation['model']} on {evaluation['dataset']} test "
            f"(epoch {evaluation['checkpoint_epoch']})"
        ),
    )
    return path
