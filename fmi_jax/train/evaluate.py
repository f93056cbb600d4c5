"""Evaluate a trained workdir on train, validation and test.

Writes, under the workdir:
  metrics.json            {"checkpoint_epoch", "checkpoint", "splits": {split: report}}
  metrics.md              the evaluation table (Markdown)

The confusion matrix figure is drawn by the caller (fmi_jax.train does not import
plotting): `fmi_jax.studies.figures.confusion_matrix(result, workdir)`, as
experiments/evaluate.py and the tune study do.

An existing metrics.json of another checkpoint is kept as metrics.epoch<E>.json (or
metrics.epoch<E>.<k>.json, never over an older one), with its metrics.md and
confusion_matrix.png beside it under the same suffix; one of the same checkpoint is
returned as it is when it holds every split asked for, and otherwise gains the missing
ones; `overwrite` recomputes the splits asked for and keeps the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from fmi_jax import data as data_lib
from fmi_jax import runs
from fmi_jax.train import loop as loop_lib
from fmi_jax.train import metrics as metrics_lib
from fmi_jax.train import tasks as tasks_lib
from fmi_jax.train import trainer as trainer_lib
from fmi_jax.train.input_pipeline import DeviceDataset

__all__ = ["evaluate_workdir", "restore_model"]

SPLITS = data_lib.SPLITS


def restore_model(workdir: str | Path, *, checkpoint: str = "best", dtype: str | None = "float32"):
    """(model, variables, run config, epoch) of a trained workdir.

    `checkpoint` is 'best' (by the run's task: highest validation accuracy, lowest
    validation MSE), 'latest', or an epoch number.

    The model computes in `dtype`, float32 unless asked otherwise: a run trained with
    `dtype='auto'` computes in bfloat16 on GPUs and TPUs, whose 8-bit significand
    rounds every operation by up to 0.4%: gradients, completeness gaps and agreement
    with a float32 reference would measure that rounding. The parameters are float32
    either way; `dtype=None` keeps the run's own compute dtype.
    """
    workdir = Path(workdir)
    config = loop_lib.load_run_config(workdir)
    if not (workdir / "checkpoints").exists():
        raise FileNotFoundError(
            f"no checkpoints in {workdir / 'checkpoints'}: train first with "
            f"`python -m experiments.train --workdir={workdir} --config=...`"
        )
    ckpt = loop_lib.run_checkpoints(workdir, config)
    if checkpoint == "best":
        epoch = ckpt.best_epoch()
    elif checkpoint == "latest":
        epoch = ckpt.latest_epoch()
    else:
        try:
            epoch = int(checkpoint)
        except ValueError:
            raise ValueError(
                f"checkpoint must be 'best', 'latest' or an epoch number, got {checkpoint!r}"
            ) from None
        if epoch not in ckpt.epochs():
            raise ValueError(
                f"epoch {epoch} is not among the kept checkpoints {ckpt.epochs()} in {workdir}"
            )
    if epoch is None:
        raise FileNotFoundError(f"{workdir / 'checkpoints'} holds no checkpoint yet; train first")
    arch = ckpt.check_model(epoch, config.model, config.data.name)
    model = loop_lib.model_from_config(config.model, dtype=dtype)
    # Only the structure, shapes and dtypes: every value comes from the checkpoint, so
    # nothing is initialised or compiled (an eager init compiles each layer's ops).
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *arch["image_shape"])), train=False)
    )
    target = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    restored = ckpt.restore(epoch, target, partial=True)
    ckpt.close()
    variables = {"params": restored["params"]}
    if restored["batch_stats"]:
        variables["batch_stats"] = restored["batch_stats"]
    return model, variables, config, epoch


def evaluate_workdir(
    workdir: str | Path,
    *,
    checkpoint: str = "best",
    splits: Sequence[str] = SPLITS,
    batch_size: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The run task's report on each split: loss, accuracy, precision, recall, F1 (macro and
    per class) for classifiers; MSE, dead latents, active units for autoencoders."""
    workdir = Path(workdir)
    if not splits:
        raise ValueError(f"splits is empty: name one or more of {SPLITS}")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose from {SPLITS}")
    model, variables, config, epoch = restore_model(workdir, checkpoint=checkpoint)
    out_path = workdir / "metrics.json"
    previous = runs.read_json(out_path, rewritable=True) or {}
    kept: dict[str, Any] = {}  # splits of this epoch evaluated earlier, kept beside new ones
    if previous.get("checkpoint_epoch") == epoch:
        kept = dict(previous.get("splits", {}))
        if overwrite:  # recomputes the splits asked for, keeps the others
            kept = {s: r for s, r in kept.items() if s not in splits}
        elif set(splits) <= set(kept):
            logging.info(
                "%s already holds the evaluation of epoch %d; pass overwrite to recompute",
                out_path,
                epoch,
            )
            print(metrics_lib.markdown_table({s: previous["splits"][s] for s in splits}))
            return previous
    elif previous:
        _keep_aside(out_path, previous.get("checkpoint_epoch"))
    splits = [s for s in splits if s not in kept]

    data = loop_lib.load_data(config.data)
    state = _EvalState(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
    )
    task = tasks_lib.task_from_config(config)
    eval_fn = trainer_lib.make_eval_fn(task)
    reports = {}
    for split in splits:
        ds = data[split]
        if len(ds) == 0:
            logging.info("split %s is empty; skipped", split)
            continue
        reports[split] = loop_lib.evaluate_dataset(
            state,
            DeviceDataset.from_numpy(ds.images, ds.labels),
            batch_size=batch_size or config.eval_batch_size,
            class_names=ds.class_names,
            eval_fn=eval_fn,
            task=task,
        )
    merged = {**kept, **reports}
    result = {
        "checkpoint": checkpoint,
        "checkpoint_epoch": epoch,
        "model": config.model.name,
        "dataset": config.data.name,
        "splits": {s: merged[s] for s in SPLITS if s in merged},
    }
    reports = result["splits"]
    runs.write_json_atomic(out_path, result, sort_keys=False)
    if task.name == "classification":
        table = metrics_lib.markdown_table(reports)
    else:
        table = metrics_lib.scalar_table(reports, task.record_metrics)
    runs.write_text_atomic(workdir / "metrics.md", table + "\n")
    print(table)
    return result


#: What an evaluation leaves in the workdir besides metrics.json: its table, and the
#: confusion matrix the caller draws from it (fmi_jax.studies.figures).
_COMPANIONS = ("metrics.md", "confusion_matrix.png")


def _keep_aside(path: Path, epoch: Any) -> None:
    """Moves the evaluation of another checkpoint to ``metrics.epoch<E>.json`` (or
    ``metrics.epoch<E>.<k>.json`` when that name is taken: never over an older one),
    and its table and confusion matrix beside it with the same suffix."""

    def aside(name: str, suffix: str) -> Path:
        return path.with_name(f"{Path(name).stem}.{suffix}{Path(name).suffix}")

    names = (path.name, *_COMPANIONS)
    k, suffix = 1, f"epoch{epoch}"
    while any(aside(name, suffix).exists() for name in names):
        k += 1
        suffix = f"epoch{epoch}.{k}"
    for name in names:
        if path.with_name(name).exists():
            path.with_name(name).rename(aside(name, suffix))


class _EvalState:
    """The fields of TrainState that `eval_step` reads, without an optimizer."""

    def __init__(self, apply_fn, params, batch_stats):
        self.apply_fn, self.params, self.batch_stats = apply_fn, params, batch_stats


jax.tree_util.register_pytree_node(
    _EvalState,
    lambda s: ((s.params, s.batch_stats), s.apply_fn),
    lambda apply_fn, children: _EvalState(apply_fn, *children),
)
