"""The tuning study: a grid of training configs, ranked on validation, best retrained.

`run_tune(config, workdir)` takes a config with

  trial      a full training config (what `experiments.train` takes)
  grid       nested dict of value lists, paths into `trial`
             (e.g. {'model': {'filters': (32, 64), 'num_blocks': (3, 4, 5)}})
  final      overrides for the retrain of the best configuration (e.g. more epochs)
  retrain    whether to retrain and evaluate the best configuration
  layer_cam  {'method': 'grad_cam', 'samples': 8}: per-layer CAM figure of the best
             model (samples 0 switches it off)

and writes under `workdir`:

  trials/<name>/     one training run per grid point (train_and_evaluate's files);
                     the name spells the point, e.g. `filters-32_num_blocks-3`
  results.json/.csv/.md
                     the trials ranked by best validation accuracy (ties keep the
                     grid's order): the grid values, validation accuracy and loss,
                     best epoch, epochs, training time, parameters. Test accuracy is
                     not in the table: selection sees validation only. Rewritten
                     after every trial: until the last one, results.md says how many
                     of the grid's trials it ranks.
  best/              the best point retrained with `final` (train_and_evaluate), its
                     evaluation table on train, validation and test (metrics.json/.md,
                     confusion_matrix.png) and layer_<method>.png. metrics.json is
                     computed in float32; a trial trained with dtype='auto' on an
                     accelerator chose its epoch and wrote train_summary.json in
                     bfloat16, so the two can differ in the last digits.

Before anything is written, every trial's config and every point's retrain config
(`final` applied) pass the checks training runs first (`validate_train_config`), so
a bad value in one point of the grid, or in `final`, is refused up front.

Re-running resumes: finished trials are read, not retrained; an interrupted trial
resumes from its checkpoint. A trial folder that holds a run of another config is
an error (nothing is overwritten), and so is a study folder whose results.json
records another `trial` config (but for the fields a trial folder accepts changed,
and more epochs). The grid may change between runs (a wider grid
trains only its new points): the results tables rank the grid as given (trials of
other grids stay in trials/), and a best/ retrained for a point that is no longer the
best is refused, saying so, before anything is retrained.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fmi_jax import plotting, runs
from fmi_jax.studies import explain as explain_lib
from fmi_jax.studies import figures
from fmi_jax.train import evaluate as evaluate_lib
from fmi_jax.train import loop as loop_lib
from fmi_jax.train.input_pipeline import to_float
from fmi_jax.train.validation import validate_train_config

__all__ = ["TuneResult", "grid_points", "run_tune", "trial_config", "trial_name"]


@dataclasses.dataclass
class TuneResult:
    trials: list[dict[str, Any]]  # ranked, best first
    best: dict[str, Any] | None  # the best trial's row
    evaluation: dict[str, Any] | None  # the retrained best: evaluate_workdir's result
    workdir: Path


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def grid_points(grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, as {'model.filters': 32, ...} dicts, in
    the order of the grid's paths (the last path varies fastest)."""
    flat = _flatten(runs.plain(grid))
    if not flat:
        # One point of no values, named '': its run would land in trials/ itself.
        raise ValueError(
            "the grid is empty: give it at least one path with a list of values, "
            "e.g. grid.model.filters=(32, 64)"
        )
    for path, values in flat.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"grid.{path} must be a non-empty list of values, got {values!r}")
    paths = list(flat)
    return [dict(zip(paths, combo)) for combo in itertools.product(*(flat[p] for p in paths))]


def trial_name(point: Mapping[str, Any]) -> str:
    """A folder name that spells the grid point: `conv1_filters-32_filter_size-3`."""
    parts = []
    for path, value in point.items():
        text = "x".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f"{path.rsplit('.', 1)[-1]}-{text}")
    return "_".join(parts).replace("/", "-")


def _set(config: ml_collections.ConfigDict, path: str, value: Any, what: str) -> None:
    *parents, last = path.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node:
            raise ValueError(
                f"{what} path {path!r}: the trial config has no {'.'.join(parents[: i + 1])!r}"
            )
        node = node[part]
    if last not in node:
        raise ValueError(
            f"{what} path {path!r}: the trial config has no {last!r} there; it has "
            f"{', '.join(sorted(node.keys()))}"
        )
    node[last] = value


def trial_config(
    base: ml_collections.ConfigDict,
    point: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
) -> ml_collections.ConfigDict:
    """`base` with the grid point (and then `overrides`, flattened paths) applied."""
    config = ml_collections.ConfigDict(runs.plain(base))
    for path, value in point.items():
        _set(config, path, value, "grid")
    for path, value in _flatten(runs.plain(overrides or {})).items():
        _set(config, path, value, "final")
    return config


def _validate(
    config: ml_collections.ConfigDict,
    points: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    trials: Sequence[ml_collections.ConfigDict],
) -> None:
    """Refuses, before anything is trained, a trial config or a retrain config (any
    point may turn out the best) that training would refuse: a bad value in one point
    of the grid, or a path or value in `final`, would otherwise surface only when its
    run starts, after the trials before it trained."""
    retrain = config.get("retrain", True)
    for point, name, trial in zip(points, names, trials):
        what = f"grid point {name}"
        try:
            validate_train_config(trial)
            if retrain:
                what = f"the retrain of grid point {name} with config.final"
                validate_train_config(trial_config(config.trial, point, config.get("final")))
        except ValueError as error:
            raise type(error)(f"{what}: {error}") from None


def _check_trial_dir(path: Path, config: ml_collections.ConfigDict) -> None:
    """Refuses, before anything is trained, what `train_and_evaluate` would refuse in
    `path` (a changed `trial` or `final` setting for a folder with checkpoints)."""
    checkpoints = path / "checkpoints"
    runs.check(
        path,
        config,
        extendable=loop_lib.EXTENDABLE,
        free=loop_lib.FREE,
        has_results=checkpoints.is_dir() and any(checkpoints.iterdir()),
        hint="use another --workdir or move that folder away",
        required=True,
    )


def _check_study_record(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Refuses a study folder whose results tables rank trials of another `trial`
    config. A grid whose folder names all differ from the earlier ones meets no trial
    folder that would refuse it, and the tables would be rewritten for another study
    (another study's config, or a changed setting, run into the same --workdir)."""
    record = workdir / "results.json"
    # A table fmi_jax writes again: a truncated one, or one without the trial config it
    # ranks, leaves nothing to compare with (the trial folders are checked apart).
    saved = runs.read_json(record, rewritable=True)
    if not isinstance(saved, dict) or "trial" not in saved:
        return
    runs.check(
        workdir,
        {"trial": runs.plain(config.trial)},
        name=record.name,
        extendable=[f"trial.{path}" for path in loop_lib.EXTENDABLE],
        # What a trial folder accepts changed, and what the tables record beside it.
        free=["grid", "trials", "trials_done", "trials_total"]
        + [f"trial.{path}" for path in loop_lib.FREE],
        has_results=True,
        what="a tuning study of another config.trial",
        hint="use another --workdir, or rerun with that study's config",
    )


def _check_trial_data(folders: Sequence[tuple[Path, ml_collections.ConfigDict]]) -> None:
    """Refuses, before anything is trained, a folder whose checkpoints were trained on
    other examples than its config reads now (another copy of the dataset: see
    `fmi_jax.train.loop.run_identity`). Training would refuse it only when its turn came,
    after the trials before it trained, and a finished trial would be read as it is,
    ranked beside trials of the other examples."""
    splits: dict[str, Any] = {}  # one read per data config
    for path, run_config in folders:
        checkpoints = path / "checkpoints"
        if not (checkpoints.is_dir() and any(checkpoints.iterdir())):
            continue
        key = json.dumps(runs.plain(run_config.data), sort_keys=True)
        if key not in splits:
            splits[key] = loop_lib.load_data(run_config.data)
        train_ds, val_ds = splits[key]["train"], splits[key]["validation"]
        with loop_lib.run_checkpoints(path, run_config) as ckpt:
            ckpt.check_architecture(loop_lib.run_identity(run_config, train_ds, val_ds))


def _row(point: Mapping[str, Any], summary: Mapping[str, Any], history) -> dict[str, Any]:
    best = next((r for r in history if r["epoch"] == summary.get("best_epoch")), {})
    return {
        **{path.rsplit(".", 1)[-1]: value for path, value in point.items()},
        "val_accuracy": summary.get("best_val_accuracy"),
        "val_loss": best.get("val_loss"),
        "best_epoch": summary.get("best_epoch"),
        "epochs": summary.get("epochs"),
        "train_time_s": summary.get("train_time_s"),
        "parameters": summary.get("parameters"),
    }


def _history(path: Path) -> list[dict[str, Any]]:
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _write_tables(out: Path, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> None:
    runs.write_json_atomic(out / "results.json", {**meta, "trials": list(rows)}, sort_keys=False)
    if not rows:
        return
    columns = ["rank", *rows[0].keys()]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for rank, row in enumerate(rows, start=1):
        writer.writerow({"rank": rank, **row})
    runs.write_text_atomic(out / "results.csv", buffer.getvalue())
    done, total = meta.get("trials_done", len(rows)), meta.get("trials_total", len(rows))
    partial = f"Partial: {done} of the grid's {total} trials so far.\n\n" if done < total else ""
    runs.write_text_atomic(out / "results.md", partial + markdown(rows) + "\n")


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The ranked table: configuration columns, validation accuracy, training time."""

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if key == "val_accuracy":
            return f"{100 * value:.2f}%"
        if key == "val_loss":
            return f"{value:.4f}"
        if key == "train_time_s":
            return f"{value:.0f}"
        if isinstance(value, (list, tuple)):
            return "x".join(map(str, value))
        return str(value)

    keys = [k for k in rows[0] if k != "trial"]  # the folder name repeats the values
    columns = ["rank", *keys]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for rank, row in enumerate(rows, start=1):
        lines.append("| " + " | ".join([str(rank)] + [cell(k, row[k]) for k in keys]) + " |")
    return "\n".join(lines)


def run_tune(config: ml_collections.ConfigDict, workdir: str | Path) -> TuneResult:
    """Runs the study described in the module docstring."""
    workdir = Path(workdir)
    points = grid_points(config.grid)
    configs = [trial_config(config.trial, p) for p in points]
    names = [trial_name(p) for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"grid points with the same folder name: {names}")
    _validate(config, points, names, configs)
    if configs[0].get("task", "classification") != "classification" or not int(
        configs[0].data.get("validation_size") or 0
    ):
        # Ranked on nothing, the first grid point would be called the best.
        raise ValueError(
            "the trials are ranked on validation accuracy: the trial must be a "
            "classification run with trial.data.validation_size > 0"
        )
    settings = config.get("layer_cam")
    if settings and int(settings.samples):  # drawn after the last trial: checked first
        explain_lib.check_layer_cam_method(settings.method)
    runs.refuse_other_kind(workdir, "tuning study")
    folders = [(workdir / "trials" / name, trial) for name, trial in zip(names, configs)]
    for path, trial in folders:
        _check_trial_dir(path, trial)
    _check_study_record(workdir, config)
    if (workdir / "best" / runs.CONFIG_FILE).is_file():  # best/'s data as it was retrained
        folders.append((workdir / "best", loop_lib.load_run_config(workdir / "best")))
    _check_trial_data(folders)
    if not workdir.exists():  # data that does not load leaves no folder behind
        loop_lib.load_data(configs[0].data)
    workdir.mkdir(parents=True, exist_ok=True)
    meta = {"grid": runs.plain(config.grid), "trial": runs.plain(config.trial)}

    rows = []
    for k, (point, name, trial) in enumerate(zip(points, names, configs), start=1):
        path = workdir / "trials" / name
        summary = runs.read_json(path / "train_summary.json", rewritable=True)
        # A summary of fewer epochs than asked (num_epochs grew): trained on from there.
        if summary is not None and summary.get("epochs") == trial.num_epochs:
            logging.info("trial %d/%d %s: finished earlier, read", k, len(points), name)
        else:
            logging.info("trial %d/%d %s: training", k, len(points), name)
            summary = loop_lib.train_and_evaluate(
                trial, path, on_epoch_end=figures.training_curves(trial)
            ).summary
        rows.append({"trial": name, **_row(point, summary, _history(path))})
        ranked = sorted(rows, key=lambda r: -(r["val_accuracy"] or 0.0))
        _write_tables(workdir, ranked, {**meta, "trials_done": k, "trials_total": len(points)})
    print(markdown(ranked))

    best = ranked[0]
    evaluation = None
    if config.get("retrain", True):
        best_point = points[names.index(best["trial"])]
        final = trial_config(config.trial, best_point, config.get("final"))
        best_dir = workdir / "best"
        try:
            _check_trial_dir(best_dir, final)
        except runs.RunConfigError as error:
            retrained = runs.read_json(best_dir / "grid_point.json", rewritable=True)
            if retrained is None or retrained == runs.plain(best_point):
                # The same point with another `final` (or trial setting): the tables
                # were rewritten by now, so not "nothing was overwritten".
                raise runs.RunConfigError(
                    f"{best_dir} holds a retrain with other settings than this one's "
                    f"({error.changed}; a retrain's config is the trial config with "
                    "config.final over it): the trials and the results tables are up to "
                    "date; move best/ away and rerun to retrain with these settings (or "
                    "rerun with the earlier config.final, or --config.retrain=False)",
                    changed=error.changed,
                ) from None
            raise runs.RunConfigError(
                f"the grid's best is now {best['trial']}, but {best_dir} holds the retrain "
                f"of another configuration ({error.changed}): the trials and the results "
                "tables are up to date; move best/ away and rerun to retrain the new best "
                "(or rerun with --config.retrain=False)"
            ) from None
        logging.info("retraining the best configuration %s in %s", best["trial"], best_dir)
        loop_lib.train_and_evaluate(final, best_dir, on_epoch_end=figures.training_curves(final))
        evaluation = evaluate_lib.evaluate_workdir(best_dir)
        figures.confusion_matrix(evaluation, best_dir)
        runs.write_json_atomic(best_dir / "grid_point.json", best_point, sort_keys=False)
        _layer_figure(config, best_dir, evaluation["checkpoint_epoch"])
    return TuneResult(trials=ranked, best=best, evaluation=evaluation, workdir=workdir)


def _layer_figure(config: ml_collections.ConfigDict, best_dir: Path, epoch: int) -> None:
    """The per-layer CAM figure of the retrained best model (its checkpoint `epoch`), on
    the first test images; drawn again when the best checkpoint has moved since or
    another number of samples is asked for (both are recorded beside it), the earlier
    figure kept as ``layer_<method>.<n>.png``."""
    settings = config.get("layer_cam")
    if not settings or not int(settings.samples):
        return
    path = best_dir / f"layer_{settings.method}.png"
    record = best_dir / f"layer_{settings.method}.json"
    wanted = {"checkpoint_epoch": int(epoch), "samples": int(settings.samples)}
    drawn = runs.read_json(record, rewritable=True)
    if isinstance(drawn, dict) and "samples" not in drawn:  # recorded before samples were
        drawn = {**drawn, "samples": wanted["samples"]}
    if path.exists() and (drawn is None or drawn == wanted):
        return  # no record: a figure this study did not draw
    model, variables, run_config, _ = evaluate_lib.restore_model(best_dir)
    test = loop_lib.load_data(run_config.data)["test"]
    n = min(int(settings.samples), len(test))
    images = to_float(jnp.asarray(test.images[:n]))
    predicted = np.asarray(jnp.argmax(jax.jit(model.apply)(variables, images), -1))
    fn = jax.jit(lambda x: model.apply(variables, x))
    maps = explain_lib.layer_cams(
        settings.method, fn, model, variables, images, jnp.asarray(predicted)
    )
    names = test.class_names
    if path.exists():  # drawn from another checkpoint or samples: kept, now that maps exist
        runs.set_aside(path)
    plotting.layer_grid(
        np.asarray(images),
        maps,
        path,
        row_titles=[f"{names[test.labels[i]]} -> {names[predicted[i]]}" for i in range(n)],
        method=f"{settings.method} ({run_config.model.name})",
    )
    runs.write_json_atomic(record, wanted)
