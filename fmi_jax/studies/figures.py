"""The figures of a training run, drawn above fmi_jax.train (which does not import
plotting): a hook for `train_and_evaluate(on_epoch_end=...)` and the confusion
matrix of an `evaluate_workdir` result.

    train.train_and_evaluate(config, workdir, on_epoch_end=figures.training_curves(config))
    figures.confusion_matrix(train.evaluate_workdir(workdir), workdir)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_collections

from fmi_jax import plotting
from fmi_jax.train import loop as loop_lib
from fmi_jax.train import tasks as tasks_lib

__all__ = ["confusion_matrix", "training_curves"]


def training_curves(
    config: ml_collections.ConfigDict,
    *,
    max_share: float = 0.05,
    clock: Callable[[], float] = time.perf_counter,
) -> loop_lib.EpochHook:
    """`on_epoch_end` drawing workdir/training_curves.png (loss, the task's metric and the
    learning rate per epoch).

    Drawing takes a few tenths of a second, which short epochs (an accelerator's, a
    smoke run's) would spend mostly on the figure, so the figure is redrawn only when
    the time since the last drawing is at least `1 / max_share` times what that drawing
    took (at most `max_share` of the run goes to it), and always after the first epoch
    this hook sees and the last epoch (`config.num_epochs`). Epochs of more than a few
    seconds are drawn every time; a run stopped early (Ctrl-C, a non-finite loss) may
    leave the figure a few epochs behind metrics.jsonl until it is resumed. `clock`
    gives the time in seconds."""
    if not 0 < max_share <= 1:
        raise ValueError(f"max_share must be in (0, 1], got {max_share!r}")
    last = {"end": clock(), "took": 0.0}

    def draw(history: list[dict[str, Any]], workdir: Path) -> None:
        now = clock()
        final = bool(history) and history[-1]["epoch"] >= int(config.num_epochs)
        if not final and now - last["end"] < last["took"] / max_share:
            return
        # The task is looked up here, after train_and_evaluate has validated the config.
        metric = tasks_lib.task_from_config(config).metric
        plotting.training_curves(history, Path(workdir) / "training_curves.png", metric=metric)
        last["end"] = clock()
        last["took"] = last["end"] - now

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
