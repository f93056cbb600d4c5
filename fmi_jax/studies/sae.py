"""The k-sparse autoencoder study: pixels -> sparse codes -> prediction.

`run_sae_study(config, workdir)` runs, under `workdir`:

  autoencoder/   phase 1: the KSparseAutoencoder, MSE reconstruction loss (+ AuxK),
                 the `reconstruction` task of the one training loop
  classifier/    phase 2: SparseCodeClassifier on the frozen codes, the composed
                 model starting from autoencoder/'s best checkpoint
  finetune/      optional: end to end (encoder + classifier; the decoder atoms stay
                 frozen), from classifier/'s best checkpoint
  explain/       attribution of the final classifier from pixels through the code
                 (IG, gradients, SmoothGrad, decoder-weighted), on confident correct
                 test samples balanced by class, with the explain study's sheets,
                 correlations and top-1% pixel agreement
  sae_metrics.json    reconstruction MSE, dead latents, mean active units,
                      classifier accuracy (and the goals they meet), the
                      attribution agreement
  decoder_atoms.png   the dictionary, most used atoms first
  reconstructions.png test images and their reconstructions
  latent_usage.png    how often each latent fires on the test set
  figures.json        the phase, checkpoint epoch and settings each figure shows

Every phase resumes from its checkpoints; finished phases are skipped; figures
and results that exist are kept (an older sae_metrics.json that differs is moved
to sae_metrics.<n>.json, a figure of another checkpoint or other figure settings
to <name>.<n>.png, and drawn again). A changed config for a workdir whose phases already ran
is refused, naming the section that changed (where the data lies, `data.data_dir` and
`data.tfds_data_dir`, may change: the checkpoints know their examples by digest); so is
one the explain folder's results do
not belong to (other explain settings, or another final phase), before any figure or
record changes. `config.stop_after='autoencoder'`
trains and reports only the autoencoder (e.g. to compare dead-latent mitigations).
"""

from __future__ import annotations

import dataclasses
import json
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
from fmi_jax.train import tasks as tasks_lib
from fmi_jax.train.input_pipeline import DeviceDataset, to_float

__all__ = ["GOALS", "SaeResult", "phase_config", "run_sae_study"]

# The study's goals on the Fashion-MNIST test set.
GOALS = {"max_mse": 0.01, "min_accuracy": 0.89, "max_dead_fraction": 0.05}
# Sections whose change would make the finished phases a different experiment.
_FIXED_SECTIONS = ("seed", "data", "sae", "autoencoder", "classifier")
_TRAINING_KEYS = (
    "num_epochs",
    "batch_size",
    "optimizer",
    "learning_rate",
    "schedule",
    "warmup_epochs",
    "weight_decay",
    "grad_clip_norm",
    "label_smoothing",
    "momentum",
    "nesterov",
    "task_options",
    "checkpoint_keep",
    "log_every_steps",
    "loop",
    "steps_per_dispatch",
)


@dataclasses.dataclass
class SaeResult:
    metrics: dict[str, Any]
    explain: explain_lib.ExplainResult | None  # None when stopped after the autoencoder


# The training runs of the study, each in the workdir's folder of that name.
_PHASES = ("autoencoder", "classifier", "finetune")
_FIGURES_RECORD = "figures.json"  # which checkpoint and settings each figure shows


def phase_config(config: Any, phase: str, workdir: str | Path) -> ml_collections.ConfigDict:
    """The training config of one phase ('autoencoder', 'classifier', 'finetune'): the
    phase's section, the shared data, seed and autoencoder fields, its model and task."""
    if phase not in _PHASES:
        raise ValueError(f"unknown phase {phase!r}")
    workdir = Path(workdir)
    section = runs.plain(config[phase])
    sae = runs.plain(config.sae)
    unknown = sorted(set(section) - set(_TRAINING_KEYS) - {"hidden", "dropout"})
    if unknown:
        raise ValueError(f"config.{phase} does not take {unknown}; it takes {_TRAINING_KEYS}")
    out = {k: v for k, v in section.items() if k not in ("hidden", "dropout")}
    out.update(
        seed=int(config.seed),
        data=runs.plain(config.data),
        eval_batch_size=int(config.eval_batch_size),
        progress=bool(config.progress),
        augment={},
    )
    classifier = runs.plain(config.classifier)
    composed = {
        "name": "sae_classifier",
        "hidden": classifier.get("hidden", (512, 256)),
        "dropout": classifier.get("dropout", 0.3),
        **sae,
    }
    if phase == "autoencoder":
        out.update(task="reconstruction", model={"name": "k_sparse_autoencoder", **sae})
    elif phase == "classifier":
        out.update(
            task="classification",
            model=composed,
            frozen=("autoencoder",),
            # Relative to the phase's own folder: the same study however its
            # --workdir is spelled, and wherever the folder is moved.
            init_from={"workdir": "../autoencoder", "into": "autoencoder"},
        )
    else:
        if sae.get("tied"):
            raise ValueError(
                "config.sae.tied=True with finetune.num_epochs > 0: a tied decoder's atoms "
                "are the encoder's weights, which fine-tuning would change; set "
                "finetune.num_epochs=0 or sae.tied=False"
            )
        out.update(
            task="classification",
            model=composed,
            # The atoms stay as phase 1 learned them: decoder-weighted attribution and
            # the dictionary figure describe the dictionary the codes were trained on.
            frozen=("autoencoder/w_dec",),
            init_from={"workdir": "../classifier", "into": ""},
        )
    return ml_collections.ConfigDict(out)


def _relative_init_from(phase_dir: Path, phase_run: Any) -> None:
    """A phase folder written when `init_from.workdir` was recorded as the path the
    study was given ('runs/sae/autoencoder') records it as the relative path it is now
    ('../autoencoder'): that record always named the study's folder of that phase,
    however the study was spelled then or where it lies now, so the phase resumes."""
    saved = runs.read_json(phase_dir / runs.CONFIG_FILE, rewritable=True)
    if not saved or not phase_run.get("init_from"):
        return
    old, new = (saved.get("init_from") or {}).get("workdir"), phase_run.init_from.workdir
    if old and old != new and Path(old).name == Path(new).name:
        saved["init_from"]["workdir"] = new
        runs.write_json_atomic(phase_dir / runs.CONFIG_FILE, saved)


def _check_study_config(config: Any, workdir: Path, *, write: bool) -> None:
    """Claims `workdir` (fmi_jax/runs.py, as study_config.json): once a phase has a
    checkpoint, only the sections outside `_FIXED_SECTIONS` may change. `write=False`
    only checks: a folder that has a record keeps it until the explain folder has been
    checked too, so a refused run leaves the record of the run that wrote the results."""
    name = "study_config.json"
    saved = runs.read_json(workdir / name, rewritable=True) or {}
    free = sorted((set(runs.plain(config)) | set(saved)) - set(_FIXED_SECTIONS))
    # Where the data lies is free, as for one training run (loop_lib.FREE): the phases'
    # checkpoints know their examples by digest and refuse others.
    free += [field for field in loop_lib.FREE if field.startswith("data.")]
    has_results = any(
        (workdir / phase / "checkpoints").is_dir()
        and any((workdir / phase / "checkpoints").iterdir())
        for phase in _PHASES
    )
    (runs.claim if write else runs.check)(
        workdir,
        config,
        free=free,
        has_results=has_results,
        name=name,
        hint="use a new --workdir (or the config it was run with)",
    )


def _write_if_changed(path: Path, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=2)
    if path.exists() and path.read_text() != text:
        runs.set_aside(path)
    runs.write_text_atomic(path, text)


def _autoencoder_of(model: Any, variables: Any):
    """The KSparseAutoencoder inside the composed classifier, with its variables."""
    ae_vars = {"params": variables["params"]["autoencoder"]}
    if "batch_stats" in variables:
        ae_vars["batch_stats"] = variables["batch_stats"]["autoencoder"]
    return model.autoencoder, ae_vars


def _reconstruction_report(ae, ae_vars, split, batch_size: int) -> dict[str, Any]:
    state = evaluate_lib._EvalState(
        apply_fn=ae.apply, params=ae_vars["params"], batch_stats=ae_vars.get("batch_stats", {})
    )
    return loop_lib.evaluate_dataset(
        state,
        DeviceDataset.from_numpy(split.images, split.labels),
        batch_size=batch_size,
        class_names=split.class_names,
        task=tasks_lib.reconstruction(),
    )


def _classification_report(model, variables, split, batch_size: int) -> dict[str, Any]:
    state = evaluate_lib._EvalState(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
    )
    return loop_lib.evaluate_dataset(
        state,
        DeviceDataset.from_numpy(split.images, split.labels),
        batch_size=batch_size,
        class_names=split.class_names,
    )


def _summary(workdir: Path) -> dict[str, Any]:
    path = workdir / "train_summary.json"
    return runs.read_json(path, rewritable=True) or {}


def _figures(
    config, workdir: Path, ae, ae_vars, split, fired: np.ndarray, source: dict[str, Any]
) -> None:
    """The three figures, each drawn unless it exists and ``figures.json`` says it shows
    this ``source`` (the phase and checkpoint epoch the autoencoder comes from) with
    these settings; a figure drawn from another model or other settings is kept as
    ``<name>.<n>.png`` and drawn again."""
    wanted = {
        "decoder_atoms.png": {**source, "atoms": int(config.figures.atoms)},
        "reconstructions.png": {**source, "reconstructions": int(config.figures.reconstructions)},
        "latent_usage.png": dict(source),
    }
    record_path = workdir / _FIGURES_RECORD
    drawn = runs.read_json(record_path, rewritable=True) or {}
    todo = set()
    for name, settings in wanted.items():
        if (workdir / name).exists() and drawn.get(name) == settings:
            continue
        if (workdir / name).exists():
            runs.set_aside(workdir / name)
        todo.add(name)
    if "decoder_atoms.png" in todo:
        plotting.atom_grid(
            np.asarray(ae.apply(ae_vars, method=ae.decoder_atoms)),
            workdir / "decoder_atoms.png",
            order=np.argsort(-fired, kind="stable"),
            max_atoms=int(config.figures.atoms),
            title=f"decoder atoms, most used first (k={ae.k} of {ae.latents})",
        )
    if "reconstructions.png" in todo:
        n = min(int(config.figures.reconstructions), len(split))
        images = to_float(jnp.asarray(split.images[:n]))
        recon = np.asarray(ae.apply(ae_vars, images)["reconstruction"])
        # The MSE the study reports (unclipped); the drawing is clipped to [0, 1].
        errors = np.mean((np.asarray(images) - recon) ** 2, axis=(1, 2, 3))
        recon = np.clip(recon, 0.0, 1.0)
        plotting.reconstructions(
            np.asarray(images),
            recon,
            workdir / "reconstructions.png",
            errors=errors,
            title=f"test images and their reconstructions from {ae.k} active latents",
        )
    if "latent_usage.png" in todo:
        plotting.latent_usage(
            fired,
            workdir / "latent_usage.png",
            num_samples=len(split),
            k=ae.k,
            title=f"latent usage on the {split.name} test split",
        )
    if todo or drawn != wanted:
        runs.write_json_atomic(record_path, wanted, sort_keys=False)


def _attribution_summary(stats: dict[str, Any]) -> dict[str, Any]:
    agreement = stats["agreement"]
    return {
        "samples": stats["samples"],
        "methods": agreement["methods"],
        "pearson": agreement["pearson"],
        "spearman": agreement["spearman"],
        "topk_fraction": agreement["topk_fraction"],
        "topk_overlap": agreement["topk_overlap"],
        "completeness": {
            m: {k: v for k, v in c.items() if k != "per_sample"}
            for m, c in stats.get("completeness", {}).items()
        },
        "per_method": stats["methods"],
    }


def run_sae_study(config: ml_collections.ConfigDict, workdir: str | Path) -> SaeResult:
    """Runs the study's phases in `workdir` (see the module docstring)."""
    workdir = Path(workdir)
    phases = ["autoencoder", "classifier"]
    if int(config.finetune.num_epochs) > 0:
        phases.append("finetune")
    stop_after = config.get("stop_after", "") or ""
    if stop_after:
        if stop_after not in phases:
            raise ValueError(f"stop_after must be one of {phases} (or empty), got {stop_after!r}")
        phases = phases[: phases.index(stop_after) + 1]
    for phase in phases:
        phase_config(config, phase, workdir)  # checks each section before anything is written
    if phases[-1] != "autoencoder":  # the explanation comes after hours of training
        loop_lib.check_split(config.explain.split, "explain.split")
        if config.explain.split == "validation" and not int(config.data.validation_size or 0):
            raise ValueError("config.explain.split='validation' needs data.validation_size > 0")
        explain_out = runs.subfolder(
            workdir, config.explain.output, "explain.output", reserved=_PHASES
        )
    runs.refuse_other_kind(workdir, "sparse-autoencoder study")
    # A new folder is marked as this study's at once (its kind is known by the record).
    _check_study_config(config, workdir, write=not (workdir / "study_config.json").exists())
    for phase in phases:
        logging.info("phase %s", phase)
        phase_run = phase_config(config, phase, workdir)
        _relative_init_from(workdir / phase, phase_run)
        try:
            loop_lib.train_and_evaluate(
                phase_run, workdir / phase, on_epoch_end=figures.training_curves(phase_run)
            )
        except KeyboardInterrupt as interrupt:
            if str(interrupt):  # training's own message: where it stopped, how to resume
                raise
            raise KeyboardInterrupt(
                f"interrupted in phase {phase} before its training began: run the same "
                "command to resume (finished phases are kept)"
            ) from None
    final = phases[-1]

    model, variables, run_config, epoch = evaluate_lib.restore_model(
        workdir / final, checkpoint=config.explain.checkpoint
    )
    splits = loop_lib.load_data(run_config.data)
    test = splits["test"]
    batch = int(config.eval_batch_size)
    if final == "autoencoder":
        ae, ae_vars = model, variables
    else:
        ae, ae_vars = _autoencoder_of(model, variables)
    model_name = f"sae_classifier ({final})"
    if final != "autoencoder":  # refused here, before a figure or a record changes
        explain_lib.check_model_output(
            config.explain,
            explain_out,
            epoch=epoch,
            model_name=model_name,
            output_field="explain.output",
        )
    _check_study_config(config, workdir, write=True)
    recon = _reconstruction_report(ae, ae_vars, test, batch)
    fired = np.asarray(recon.pop("fired"))
    _figures(config, workdir, ae, ae_vars, test, fired, {"phase": final, "checkpoint_epoch": epoch})

    ae_summary = _summary(workdir / "autoencoder")
    metrics = {
        "dataset": test.name,
        "split": "test",
        "final_phase": final,
        "reconstruction": {
            # of the final phase's encoder (fine-tuning moves it); epochs and
            # train_time_s are the autoencoder phase's
            "phase": final,
            "mse": recon["mse"],
            "dead_fraction": recon["dead_fraction"],
            "dead_latents": int(np.sum(fired == 0)),
            "latents": int(ae.latents),
            "k": int(ae.k),
            "mean_active_units": recon["mean_active"],
            "min_firing_count": int(fired.min()),
            "mitigation": ae.mitigation,
            "epochs": ae_summary.get("epochs"),
            "train_time_s": ae_summary.get("train_time_s"),
        },
        "phases": {
            phase: {
                k: _summary(workdir / phase).get(k)
                for k in ("epochs", "best_epoch", "train_time_s", "test_accuracy", "test_mse")
                if k in _summary(workdir / phase)
            }
            for phase in phases
        },
        "goals": {
            "mse_at_most_0.01": recon["mse"] <= GOALS["max_mse"],
            "dead_at_most_5%": recon["dead_fraction"] <= GOALS["max_dead_fraction"],
        },
    }
    result = None
    if final != "autoencoder":
        classification = _classification_report(model, variables, test, batch)
        result = explain_lib.explain_model(
            config.explain,
            explain_out,
            model,
            variables,
            splits[config.explain.split],
            epoch=epoch,
            model_name=model_name,
            output_field="explain.output",
        )
        metrics["classifier"] = {
            "accuracy": classification["accuracy"],
            "precision": classification["precision"],
            "recall": classification["recall"],
            "f1": classification["f1"],
            "loss": classification["loss"],
            "checkpoint_epoch": epoch,
        }
        metrics["goals"]["accuracy_at_least_0.89"] = (
            classification["accuracy"] >= GOALS["min_accuracy"]
        )
        metrics["attribution"] = _attribution_summary(result.stats)
    metrics.update(backend=jax.default_backend(), device=str(jax.devices()[0].device_kind))
    _write_if_changed(workdir / "sae_metrics.json", metrics)
    logging.info(
        "test: reconstruction MSE %.5f, dead latents %.2f%% (%d of %d), %.1f active units%s",
        recon["mse"],
        100 * recon["dead_fraction"],
        int(np.sum(fired == 0)),
        int(ae.latents),
        recon["mean_active"],
        f", accuracy {100 * metrics['classifier']['accuracy']:.2f}%" if result else "",
    )
    return SaeResult(metrics=metrics, explain=result)
