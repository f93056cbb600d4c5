"""`train_and_evaluate(config, workdir)`: the training loop every study uses.

What a run writes under `workdir`:
  config.json            the run's resolved config (fmi_jax.runs.claim)
  extensions.jsonl       when and how far num_epochs grew, if it did
  checkpoints/<epoch>/   orbax checkpoints (latest `checkpoint_keep` and the best)
  metrics.jsonl          one JSON line per epoch, appended; on resume it is reconciled
                         with the checkpoints (see `_reconcile_history`) and, if that
                         changed anything, rewritten atomically
  train_summary.json     best epoch and its test metrics, written once at the end
  tensorboard/           TensorBoard events: the config, every epoch's metrics and the
                         test metrics (`config.tensorboard=False` turns them off)

The workdir belongs to one config (see fmi_jax/runs.py): the config is checked, the
data loaded and the model built before config.json is written; a workdir without
checkpoints takes a changed config, one with checkpoints refuses it (naming the
changed fields) except for a larger num_epochs, which continues the run. Every JSON
file is written atomically.

Figures are not drawn here (fmi_jax.train does not import plotting): the caller
passes `on_epoch_end(history, workdir)`, called on process 0 after each epoch's
metrics line is written; experiments/train.py and the studies pass
`fmi_jax.studies.figures.training_curves(config)`, which draws training_curves.png.

The setup, the epochs, evaluation and the checkpointed state tree are a
`fmi_jax.train.trainer.Trainer` (the training benchmark times the same object);
this module adds the run folder around it.

Re-running with the same workdir resumes from the latest checkpoint. All
randomness is a function of (config.seed, epoch, optimizer step): the epoch's
permutation is `fold_in(data_key, epoch)` and the step's dropout/augmentation
key is `fold_in(train_key, step)`, so a resumed run ends with the same
parameters as an uninterrupted one.

Loop structure (config.loop):
  'scan'  `lax.scan` over `steps_per_dispatch` steps per call ('auto' picks it);
  'step'  one jitted call per optimizer step (gather + step fused, state donated).
Every call of a compiled XLA program allocates its temporary buffers afresh, and on
CPU the operating system maps those pages in again on first touch each time (the
im2col training step's temporaries are large). A scan reuses one allocation for all
its steps, which is why it runs faster on CPU (docs/guide.md, "Training", has the
measurement); on accelerators it also saves the per-step dispatch.

Devices (config.num_devices; see fmi_jax/parallel.py): 1 (the default) runs on
`jax.devices()[0]` alone; n > 1 (or 0, all devices) builds a mesh over the first n
devices, replicates the dataset and the state on it and shards each batch along
its first axis inside the jitted steps, so XLA all-reduces the gradients
(data parallelism). batch_size and eval_batch_size must be multiples of n. The
results equal a single-device run up to the order of float reductions. In a
multi-process run (fmi_jax.parallel.initialize_distributed) the mesh must span all
devices (num_devices 0) and only process 0 writes config.json, metrics.jsonl, the
figures and train_summary.json; all processes take part in checkpointing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging
from tqdm.auto import tqdm

from fmi_jax import data as data_lib
from fmi_jax import parallel, runs
from fmi_jax.train import checkpoint as ckpt_lib
from fmi_jax.train import tasks as tasks_lib
from fmi_jax.train.steps import TrainState
from fmi_jax.train.tensorboard import TENSORBOARD_DIR, EventLog
from fmi_jax.train.trainer import (
    NonFiniteLossError,
    Trainer,
    compute_dtype,
    evaluate_dataset,
    model_from_config,
)
from fmi_jax.train.validation import validate_train_config

__all__ = [
    "NonFiniteLossError",
    "run_checkpoints",
    "TrainResult",
    "compute_dtype",
    "check_split",
    "evaluate_dataset",
    "load_run_config",
    "load_split",
    "model_from_config",
    "run_identity",
    "train_and_evaluate",
]


# Config fields a workdir with checkpoints may change: they may only grow (more epochs
# continue the run), and each growth is recorded in extensions.jsonl.
EXTENDABLE = ("num_epochs",)
# Config fields a workdir with checkpoints accepts changed (or absent from its record):
# they do not touch results (the evaluation's batch size only the rounding of its summed
# loss; lower it after running out of memory and the run resumes; the device count only
# the order of float sums, so a run preempted on 8 devices goes on on 4). Where the data
# lies is free as $FMI_DATA_DIR is: the checkpoints' digests refuse other examples
# (run_identity), so the same files moved elsewhere resume.
FREE = (
    "progress",
    "tensorboard",
    "eval_batch_size",
    "num_devices",
    "data.data_dir",
    "data.tfds_data_dir",
)


@dataclasses.dataclass
class TrainResult:
    """What `train_and_evaluate` returns. `state` is the last epoch's; `summary`'s test
    metrics are the best epoch's (`best_epoch`, chosen on validation), the checkpoint
    `evaluate.restore_model(workdir)` loads by default: explain that one to explain
    the reported model."""

    state: TrainState
    history: list[dict[str, Any]]
    best_epoch: int | None
    summary: dict[str, Any]
    train_step_compiles: int
    eval_step_compiles: int


# --------------------------------------------------------------------------- config helpers
def load_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config.json a training run wrote into its workdir."""
    path = Path(workdir) / "config.json"
    runs.refuse_other_kind(workdir, "training run")  # a study's folder: say where its runs are
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: {workdir} is not a training workdir. Train first with "
            f"`python -m experiments.train --config=configs/cnn_fmnist.py --workdir={workdir}`."
        )
    return ml_collections.ConfigDict(runs.read_json(path))


def run_identity(config: Any, train_ds: Any, val_ds: Any = None) -> dict[str, Any]:
    """What a checkpoint must share with the run restoring it: the model, the dataset's
    name, shape and split, and digests of the training examples and of the validation
    holdout (`val_ds`, where there is one) themselves, so that a run resumed on another
    copy of the data (another folder, tfds instead of IDX files: another order, so
    another holdout; a holdout image changed on disk, which would pick the best
    checkpoint on other images) is refused instead of training on."""
    identity = ckpt_lib.architecture_of(
        config.model, train_ds.image_shape, train_ds.num_classes, config.data.name
    )
    d = runs.plain(config.data)
    identity["data_split"] = {k: d.get(k) for k in ("validation_size", "split_seed", "train_limit")}
    identity["train_digest"] = ckpt_lib.data_digest(train_ds.images, train_ds.labels)
    if val_ds is not None and len(val_ds):
        identity["holdout_digest"] = ckpt_lib.data_digest(val_ds.images, val_ds.labels)
    task = config.get("task", "classification")
    if task != "classification":  # classification runs predate tasks; their identity stays
        identity["task"] = task
    return identity


def run_checkpoints(workdir: str | Path, config: Any | None = None) -> ckpt_lib.Checkpoints:
    """The checkpoints of a finished or running workdir, read-only, ranked by its task's
    best metric (validation accuracy for classifiers, validation MSE for autoencoders)."""
    config = config if config is not None else load_run_config(workdir)
    task = tasks_lib.task_from_config(config)
    return ckpt_lib.Checkpoints(
        Path(workdir) / "checkpoints",
        read_only=True,
        best_metric=task.best_metric,
        best_mode=task.best_mode,
    )


def _subtree(tree: Any, path: str) -> Any:
    for part in [p for p in path.split("/") if p]:
        if not isinstance(tree, Mapping) or part not in tree:
            names = sorted(tree) if isinstance(tree, Mapping) else []
            raise ValueError(f"init_from.into={path!r}: no {part!r} here; found {names}")
        tree = tree[part]
    return tree


def _with_subtree(tree: Any, path: str, value: Any) -> Any:
    parts = [p for p in path.split("/") if p]
    if not parts:
        return value
    return {**tree, parts[0]: _with_subtree(tree[parts[0]], "/".join(parts[1:]), value)}


def _init_from(state: TrainState, spec: Mapping[str, Any], workdir: Path) -> TrainState:
    """Copies the params (and batch statistics) of another run's best checkpoint into
    the submodule `spec['into']` ('' for the whole model) of a freshly built state. A
    relative `spec['workdir']` is taken from this run's `workdir`.

    This is how a later phase of a multi-phase study starts from an earlier one (the
    sparse autoencoder's classifier starts from the trained autoencoder).
    """
    source = Path(workdir) / spec["workdir"]  # an absolute path stays itself
    into = spec.get("into", "") or ""
    ckpt = run_checkpoints(source)
    epoch = ckpt.best_epoch() if spec.get("checkpoint", "best") == "best" else ckpt.latest_epoch()
    if epoch is None:
        raise FileNotFoundError(
            f"init_from: {source / 'checkpoints'} holds no checkpoint (a relative "
            "init_from.workdir is taken from this run's folder); run that phase first"
        )
    target = {
        "params": _subtree(state.params, into),
        "batch_stats": _subtree(state.batch_stats, into) if state.batch_stats else {},
    }
    restored = ckpt.restore(epoch, target, partial=True)
    ckpt.close()
    logging.info("initialised %r from %s (epoch %d)", into or "the model", source, epoch)
    state = state.replace(params=_with_subtree(state.params, into, restored["params"]))
    if state.batch_stats:
        state = state.replace(
            batch_stats=_with_subtree(state.batch_stats, into, restored["batch_stats"])
        )
    # The optimizer state was built for the old params; its moments are zeros, so
    # rebuilding it from the grafted params changes nothing but keeps it consistent.
    return state.replace(opt_state=state.tx.init(state.params))


def check_split(split: Any, field: str) -> None:
    """A ValueError naming ``config.<field>`` unless ``split`` is a split name; the
    cheap check a study makes before it writes or trains anything."""
    if split not in data_lib.SPLITS:
        raise ValueError(f"config.{field} must be one of {data_lib.SPLITS}, got {split!r}")


def load_split(data_config: Any, split: Any, field: str) -> data_lib.Dataset:
    """One split of the run's data, ``config.<field>`` named in the error for a split
    that does not exist (a typo, or 'validation' in a run without one)."""
    check_split(split, field)
    recorded = runs.plain(data_config).get("data_dir")
    if recorded and not Path(recorded).expanduser().is_dir():
        raise data_lib.DataError(
            f"this run's data lay in data.data_dir={recorded!r} (its config.json), which is no "
            "folder now: if the data moved, record the new folder by running the training "
            "script on this workdir with its config and --config.data.data_dir=<new folder> "
            "(a finished run trains no further)"
        )
    splits = load_data(data_config)
    # A run without validation data has an empty validation split, not none.
    held = tuple(name for name, part in splits.items() if len(part.labels))
    if split not in held:
        raise ValueError(
            f"config.{field}={split!r}: this run's data has only {held} "
            "(a validation split needs data.validation_size > 0)"
        )
    return splits[split]


def load_data(data_config: Any) -> dict[str, data_lib.Dataset]:
    d = runs.plain(data_config)
    extra = dict(d.get("options") or {})
    return data_lib.load_splits(
        d["name"],
        validation_size=int(d.get("validation_size") or 0),
        seed=int(d.get("split_seed") or 0),
        data_dir=d.get("data_dir"),
        tfds_data_dir=d.get("tfds_data_dir"),
        download=bool(d.get("download", True)),
        train_limit=d.get("train_limit"),
        test_limit=d.get("test_limit"),
        **extra,
    )


def _mesh_from_config(config: Any) -> jax.sharding.Mesh | None:
    """The data-parallel mesh of `config.num_devices` (1: none, the single-device
    loop; 0: all devices; n: the first n), its batch sizes checked."""
    n = int(config.get("num_devices", 1))
    if n < 0:
        raise ValueError(f"config.num_devices must be >= 0 (0 = all devices), got {n}")
    if jax.process_count() > 1 and n not in (0, jax.device_count()):
        raise ValueError(
            f"this run has {jax.process_count()} processes; the mesh must span all "
            f"{jax.device_count()} devices: set --config.num_devices=0"
        )
    if (n or jax.device_count()) == 1 and jax.process_count() == 1:
        return None
    mesh = parallel.make_mesh(n)
    parallel.check_divisible(int(config.batch_size), mesh, "batch_size")
    parallel.check_divisible(int(config.eval_batch_size), mesh, "eval_batch_size")
    return mesh


# --------------------------------------------------------------------------- history
EpochHook = Callable[[list[dict[str, Any]], Path], None]


def _parse_history(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """(the file's text, its records). A last line that does not parse and does not
    end in a newline is a crash in the middle of an append (`_append_jsonl` writes the
    newline last): it is dropped. Any other line that does not parse is an error."""
    text = path.read_text() if path.exists() else ""
    lines = text.split("\n")
    records = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if line_no == len(lines):  # the text after the last newline: a torn append
                logging.warning("%s:%d is a partly written line; dropped", path, line_no)
                continue
            raise ValueError(
                f"{path}:{line_no} is not valid JSON ({e}); fix or move the file"
            ) from e
    return text, records


def _record_from_checkpoint(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """An epoch's metrics line rebuilt from its checkpoint's meta, which holds every
    numeric field of the line (as floats): epoch and step are integers again."""
    record = dict(metrics)
    for key in ("epoch", "step"):
        if key in record:
            record[key] = int(record[key])
    return record


def _reconcile_history(
    path: Path, ckpt: ckpt_lib.Checkpoints, up_to_epoch: int, *, write: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Makes metrics.jsonl match the checkpoints before a run (re)starts from epoch
    `up_to_epoch` (its latest checkpoint; 0 for none). Returns (history, the records
    re-created from checkpoints).

    The loop saves epoch E's checkpoint and then appends E's line, so a crash can
    leave (a) a checkpoint without its line, (b) a torn last line, or, if
    checkpoints were removed by hand, (c) lines of epochs after the latest
    checkpoint. (b) and (c) are dropped; (a) is re-created from the checkpoint's
    meta, which records the epoch's numeric metrics (all the line holds).

    Only the latest checkpoint's line can be missing, so its checkpoint is always
    there to re-create it from: lines are written in epoch order, each right after
    its own checkpoint, and the run stops at the first failure. A run that dies
    between E's checkpoint and E's line leaves E as the latest checkpoint; the next
    run calls this before it trains epoch E+1, so E's line is written before E+1's
    checkpoint can exist, hence before `checkpoint_keep` can delete E's. An older
    gap (a workdir from before this reconciliation) has no checkpoint left to
    re-create it from; it is logged and left as a gap.

    With `write` (process 0), the file is rewritten atomically when its text differs
    from the reconciled history; an unchanged file is not touched.
    """
    text, records = _parse_history(path)
    by_epoch: dict[int, dict[str, Any]] = {}
    for record in records:
        if record.get("epoch", 0) <= up_to_epoch:
            by_epoch[record["epoch"]] = record
    missing = [e for e in range(1, up_to_epoch + 1) if e not in by_epoch]
    recreated = []
    if missing:
        kept = set(ckpt.epochs())
        for epoch in missing:
            if epoch in kept:
                metrics = ckpt.meta(epoch).get("metrics") or {}
                if metrics:
                    by_epoch[epoch] = _record_from_checkpoint(metrics)
                    recreated.append(by_epoch[epoch])
                    logging.info("%s: epoch %d's line re-created from its checkpoint", path, epoch)
                    continue
            logging.warning(
                "%s has no line for epoch %d and no checkpoint is left to re-create it from",
                path,
                epoch,
            )
    history = [by_epoch[e] for e in sorted(by_epoch)]
    if write:
        new_text = "".join(json.dumps(r) + "\n" for r in history)
        if new_text != text and (path.exists() or new_text):
            runs.write_text_atomic(path, new_text)
    return history, recreated


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    """Appends one line; the newline is written last, so a torn append is a last line
    without one (see `_parse_history`)."""
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- Ctrl-C
class _Interrupt:
    """Ctrl-C (SIGINT) during training stops at a step boundary: the dispatch under way
    finishes, nothing of the unfinished epoch is saved (the latest checkpoint stays as
    it is), one line is logged and KeyboardInterrupt raised; re-running resumes from
    the latest checkpoint. A second Ctrl-C interrupts at once (Python's default).

    Installed only in the main thread (where Python runs signal handlers) of a
    single-process run: one process of a multi-process run stopping alone would
    leave the others waiting in collectives, so those keep the default. `restore`
    puts the previous handler back."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self.restore()
            raise KeyboardInterrupt
        self.requested = True  # read by `check` between dispatches; nothing else here

    def restore(self) -> None:
        if self._installed:
            previous = self._previous
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
            self._installed = False

    def check(
        self, epochs_done: int, state: TrainState, ckpt: Any, events: Any, num_epochs: int
    ) -> None:
        """Raises KeyboardInterrupt if Ctrl-C was pressed; `epochs_done` is the last
        finished (checkpointed) epoch of the run's `num_epochs`."""
        if not self.requested:
            return
        step = int(state.step)  # waits for the dispatch under way
        # Epochs count from 1, as in the progress bar; the unfinished one starts over.
        now = epochs_done + 1
        if epochs_done >= num_epochs:  # after the last checkpoint: nothing left to train
            message = (
                f"interrupted after the last epoch ({epochs_done}), before the test "
                "evaluation and the run's summary: run the same command to finish them "
                "(nothing is trained again)"
            )
        elif epochs_done:
            message = (
                f"interrupted in epoch {now} at optimizer step {step}; epoch {epochs_done} is "
                f"the last checkpoint: run the same command to resume with epoch {now} from "
                "its start"
            )
        else:
            message = (
                f"interrupted in epoch 1 at optimizer step {step}, before the first "
                "checkpoint: run the same command to start again from epoch 1"
            )
        logging.warning(message)
        events.close()
        ckpt.close()
        raise KeyboardInterrupt(message)


# --------------------------------------------------------------------------- the loop
def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    on_epoch_end: EpochHook | None = None,
) -> TrainResult:
    """Trains `config.model` on `config.data`, resuming from `workdir` if it has checkpoints.

    `on_epoch_end(history, workdir)`, if given, is called on process 0 after each
    epoch's line is written to metrics.jsonl, with the history so far (the figures:
    see fmi_jax.studies.figures.training_curves).
    """
    validate_train_config(config)  # before anything is read or written
    runs.refuse_other_kind(workdir, "training run")
    mesh = _mesh_from_config(config)  # before anything is written
    num_devices = 1 if mesh is None else int(mesh.devices.size)
    main_process = parallel.is_main_process()
    workdir = Path(workdir)
    logging.info(
        "backend %s, devices %s; training on %d device(s)%s",
        jax.default_backend(),
        jax.devices(),
        num_devices,
        f" over {jax.process_count()} processes" if jax.process_count() > 1 else "",
    )

    splits = load_data(config.data)
    train_ds, val_ds, test_ds = splits["train"], splits["validation"], splits["test"]
    for name, ds in splits.items():
        logging.info("%s: %d examples from %s", name, len(ds), ds.source)
    class_names = train_ds.class_names
    identity = run_identity(config, train_ds, val_ds)
    task = tasks_lib.task_from_config(config)

    def checkpoints() -> ckpt_lib.Checkpoints:
        return ckpt_lib.Checkpoints(
            workdir / "checkpoints",
            keep=config.get("checkpoint_keep", 2),
            best_metric=task.best_metric if len(val_ds) else None,
            best_mode=task.best_mode,
        )

    claim = dict(
        extendable=EXTENDABLE,
        free=FREE,
        hint="use a new --workdir for this config (or the config it was run with)",
        required=True,  # checkpoints without a record would go on under any config
    )
    # An earlier run's checkpoints and config refuse a change before the model is built
    # (reading them writes nothing: the folder exists). The processes of a multi-process
    # run all open the checkpoints here, whatever each sees on disk, since orbax may
    # synchronise them when they do; a refused multi-process command may leave the
    # empty folders behind.
    ckpt = None
    if (workdir / "checkpoints").is_dir() or jax.process_count() > 1:
        workdir.mkdir(parents=True, exist_ok=True)
        ckpt = checkpoints()
    if ckpt is not None:
        ckpt.check_architecture(identity)
    has_results = ckpt is not None and ckpt.latest_epoch() is not None
    runs.check(workdir, config, has_results=has_results, **claim)
    model = model_from_config(config.model)
    outputs = getattr(model, "num_classes", None)  # the zoo's models say how many
    if isinstance(outputs, int) and outputs != train_ds.num_classes:
        raise ValueError(
            f"model.num_classes is {outputs}, but {config.data.name!r} has "
            f"{train_ds.num_classes} classes: set --config.model.num_classes="
            f"{train_ds.num_classes}"
        )
    # The trainer checks the rest (the loop, the batch size against the data, the model's
    # own init) before the workdir is made, so a refused single-process command leaves
    # no trace.
    trainer = Trainer(config, train_ds.images, train_ds.labels, mesh=mesh, model=model)
    if trainer.num_classes is not None and trainer.num_classes != train_ds.num_classes:
        # Logits for other classes than the data's would fail only at the first
        # evaluation's confusion matrix, an epoch in (fewer logits than the labels use
        # are refused by the trainer's own check of the labels, before this).
        raise ValueError(
            f"the model returns {trainer.num_classes} logits, but {config.data.name!r} has "
            f"{train_ds.num_classes} classes: give the model {train_ds.num_classes} outputs"
        )
    # Checked all that is checkable: now the workdir is this config's.
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt or checkpoints()
    (runs.claim if main_process else runs.check)(
        workdir, config, has_results=ckpt.latest_epoch() is not None, **claim
    )
    device_val = trainer.device_dataset(val_ds.images, val_ds.labels) if len(val_ds) else None
    device_test = trainer.device_dataset(test_ds.images, test_ds.labels)
    batch_size, steps_per_epoch = trainer.batch_size, trainer.steps_per_epoch
    logging.info(
        "model %s: %d parameters; %d steps per epoch",
        config.model.name,
        trainer.num_params,
        steps_per_epoch,
    )

    start_epoch = ckpt.latest_epoch() or 0
    if start_epoch:
        trainer.restore(ckpt, start_epoch)
        logging.info(
            "resuming after epoch %d (optimizer step %d)", start_epoch, int(trainer.state.step)
        )
    elif config.get("init_from") and config.init_from.get("workdir"):
        trainer.state = trainer.put(
            _init_from(trainer.state, runs.plain(config.init_from), workdir)
        )
    history, recreated = _reconcile_history(
        workdir / "metrics.jsonl", ckpt, start_epoch, write=main_process
    )
    events = EventLog(
        workdir / TENSORBOARD_DIR, enabled=main_process and bool(config.get("tensorboard", True))
    )
    if not start_epoch:
        events.config(runs.plain(config))
    for record in recreated:  # their events were lost with their lines
        events.record(record["epoch"], record)
    logging.info(
        "loop: %s (%d step(s) per dispatch%s)",
        trainer.loop,
        trainer.chunk,
        f", the last of each epoch {trainer.tail}" if trainer.tail else "",
    )

    num_epochs = int(config.num_epochs)
    run_start = time.perf_counter()
    interrupt = _Interrupt()  # Ctrl-C: stop at the next dispatch, see _Interrupt
    try:
        for epoch in range(start_epoch + 1, num_epochs + 1):
            bar = tqdm(
                total=steps_per_epoch,
                desc=f"epoch {epoch}/{num_epochs}",
                unit="step",
                disable=not config.get("progress", True),
                leave=False,
                mininterval=1.0,
            )

            def show(window, stats, bar=bar):
                bar.update(stats.steps - bar.n)
                bar.set_postfix(
                    loss=f"{stats.mean('loss'):.4f}",
                    **{task.metric: f"{stats.mean(task.metric):.4f}"},
                )

            stats = trainer.run_epoch(
                epoch,
                on_window=show,
                before_dispatch=lambda epoch=epoch: interrupt.check(
                    epoch - 1, trainer.state, ckpt, events, num_epochs
                ),
            )
            bar.close()
            sums, last = stats.sums, stats.last
            record: dict[str, Any] = {
                "epoch": epoch,
                "step": int(trainer.state.step),
                "train_loss": sums["loss"] / steps_per_epoch,
                **{
                    f"train_{m}": sums[m] / steps_per_epoch for m in task.train_metrics if m in sums
                },
                "grad_norm": sums["grad_norm"] / steps_per_epoch,
                "param_norm": float(last["param_norm"]),
                "learning_rate": float(last["learning_rate"]),
                "epoch_time_s": stats.time_s,
                "images_per_s": stats.images_per_s(batch_size),
            }
            if stats.compile_s is not None:
                record["compile_s"] = stats.compile_s
            if device_val is not None:
                val = trainer.evaluate(device_val, class_names=class_names)
                record.update({f"val_{m}": val[m] for m in task.record_metrics})
            trainer.save(
                ckpt,
                epoch,
                architecture=identity,
                metrics={k: v for k, v in record.items() if isinstance(v, (int, float))},
            )
            history.append(record)
            if main_process:
                _append_jsonl(workdir / "metrics.jsonl", record)
                events.record(epoch, record)
                if on_epoch_end is not None:
                    on_epoch_end(history, workdir)
            logging.info(
                "epoch %d: %s",
                epoch,
                ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in ("epoch", "step")),
            )
    finally:
        interrupt.restore()
    interrupt.check(num_epochs, trainer.state, ckpt, events, num_epochs)

    best_epoch = ckpt.best_epoch()
    summary_path = workdir / "train_summary.json"
    summary = runs.read_json(summary_path, rewritable=True) if start_epoch >= num_epochs else None
    if summary is not None and summary.get("epochs") != num_epochs:
        # A shorter run's (num_epochs grew and the run was stopped after its last
        # checkpoint, before its summary): recomputed; _write_new keeps the old one.
        summary = None
    if summary is not None:
        logging.info("workdir already holds a finished run; summary left as it is")
    else:
        best_state = trainer.state
        if best_epoch is not None and best_epoch != ckpt.latest_epoch():
            best_state = trainer.checkpoint_state(ckpt, best_epoch)
        test = trainer.evaluate(device_test, class_names=class_names, state=best_state)
        summary = {
            "best_epoch": best_epoch,
            "epochs": num_epochs,
            f"best_{task.best_metric}": next(
                (r.get(task.best_metric) for r in history if r["epoch"] == best_epoch), None
            ),
            **{f"test_{m}": test[m] for m in task.record_metrics},
            "train_time_s": sum(r["epoch_time_s"] for r in history),
            "this_run_wall_time_s": time.perf_counter() - run_start,
            "parameters": trainer.num_params,
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "loop": trainer.loop,
            "num_devices": num_devices,
        }
        if jax.process_count() > 1:
            summary["num_processes"] = jax.process_count()
        if main_process:
            _write_new(summary_path, summary)
        logging.info("best epoch %s: test %s %.4f", best_epoch, task.metric, test[task.metric])
        events.record(num_epochs, {k: v for k, v in summary.items() if k.startswith("test_")})
    events.close()
    ckpt.close()
    return TrainResult(
        state=trainer.state,
        history=history,
        best_epoch=best_epoch,
        summary=summary,
        train_step_compiles=trainer.compiles,
        eval_step_compiles=trainer.eval_compiles,
    )


def _write_new(path: Path, payload: Mapping[str, Any]) -> None:
    """Writes JSON atomically; an existing file is kept as `<name>.<n>.json` rather than
    overwritten."""
    if path.exists():
        runs.set_aside(path)
    runs.write_json_atomic(path, payload, sort_keys=False)
