"""Orbax checkpoints of a training run: every epoch, the latest N and the best.

Layout: `workdir/checkpoints/<epoch>/{state,meta}`. `state` holds params,
batch_stats, opt_state and the optimizer step; `meta` (JSON) holds what the
checkpoint is of (the model config, the dataset, the input shape, a digest of
the training examples) and the epoch's metrics. One `CheckpointManager` with the
preservation policy `LatestN(keep) or BestN(1, by val_accuracy)` keeps both the
checkpoints a resumed run needs and the best one evaluation wants.

Before anything is restored or written, the `meta` of the latest checkpoint is
compared with the run's own: a workdir that holds a different architecture or
dataset, or was trained on other examples, raises `CheckpointMismatchError`, and
nothing is overwritten.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

__all__ = ["CheckpointMismatchError", "Checkpoints", "architecture_of", "data_digest"]


class CheckpointMismatchError(ValueError):
    """The workdir holds checkpoints of another model or dataset."""


def architecture_of(
    model_config: Mapping[str, Any], image_shape, num_classes: int, dataset: str
) -> dict[str, Any]:
    """What must agree between a checkpoint and the run that restores it."""
    return {
        "model": json.loads(json.dumps(dict(model_config), default=list)),
        "dataset": dataset,
        "image_shape": [int(s) for s in image_shape],
        "num_classes": int(num_classes),
    }


def data_digest(images: Any, labels: Any) -> str:
    """A short digest of a split's images and labels, in their order (BLAKE2b, 16 hex
    digits): equal for the same examples wherever they were read from."""
    digest = hashlib.blake2b(digest_size=8)
    for array in (images, labels):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


# The digests of a run's examples a checkpoint records (fmi_jax.train.loop.run_identity),
# and what each covers. Checkpoints written before one was recorded resume without it.
_DIGESTS = {
    "train_digest": "the training examples",
    "holdout_digest": "the validation holdout",
}


def _describe_difference(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    diffs = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if key in _DIGESTS:  # what differs about the data, when nothing else does
            if a != b and all(
                saved.get(k) == wanted.get(k) for k in set(saved) | set(wanted) if k not in _DIGESTS
            ):
                diffs.append(
                    f"{_DIGESTS[key]}: the checkpoint's were other images or labels, "
                    "or in another order (a changed data setting such as data.options, or "
                    "another copy of the dataset: check --config.data.data_dir and "
                    "$FMI_DATA_DIR)"
                )
        elif isinstance(a, Mapping) and isinstance(b, Mapping):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    diffs.append(
                        f"{key}.{sub}: checkpoint has {a.get(sub)!r}, config asks for {b.get(sub)!r}"
                    )
        elif a != b:
            diffs.append(f"{key}: checkpoint has {a!r}, config asks for {b!r}")
    return "; ".join(diffs)


def _quiet_read_only(record: Any) -> bool:
    return record.msg != "Given directory is read only=%s"


class Checkpoints:
    """The checkpoints of one run directory.

    Args:
      directory: where the checkpoints live (created when saving).
      keep: how many of the most recent epochs to keep.
      best_metric: a key of the saved metrics to keep the best checkpoint by, or
        None to keep only the latest ones.
      best_mode: 'max' (higher `best_metric` is better) or 'min'.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep: int = 2,
        best_metric: str | None = "val_accuracy",
        best_mode: str = "max",
        read_only: bool = False,
    ):
        if keep < 1:
            raise ValueError(f"keep must be >= 1 to resume a run, got {keep}")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        sign = 1.0 if best_mode == "max" else -1.0
        self._score = lambda value: sign * float(value)
        policies = [checkpoint_managers.LatestN(n=keep)]
        if best_metric:
            policies.append(
                checkpoint_managers.BestN(
                    get_metric_fn=lambda m: self._score(m[best_metric]),
                    n=1,
                    # Every checkpoint saved here has its metrics; one without them was
                    # written before they were stored, and may be the best: kept.
                    keep_checkpoints_without_metrics=True,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            # Only with a best_fn does orbax write each checkpoint's metrics to disk; without
            # them a reopened manager (a resumed run) sees the old checkpoints as having
            # none, and BestN lets LatestN delete the best one.
            best_fn=(lambda m: self._score(m[best_metric])) if best_metric else None,
            create=not read_only,
            read_only=read_only,
            # orbax would reset it for a read-only manager, with a warning.
            save_interval_steps=0 if read_only else 1,
            enable_async_checkpointing=False,
        )
        if read_only and not self.directory.exists():
            raise FileNotFoundError(
                f"no checkpoints in {self.directory}: train first with "
                f"`python -m experiments.train --workdir={self.directory.parent} --config=...`"
            )
        # orbax warns that a read-only manager is read-only: every study's restore would
        # print it before its own output.
        absl_logger = logging.get_absl_logger()
        absl_logger.addFilter(_quiet_read_only)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        finally:
            absl_logger.removeFilter(_quiet_read_only)

    # ---------------------------------------------------------------- queries
    def epochs(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def meta(self, epoch: int) -> dict[str, Any]:
        """The JSON record saved with ``epoch``: its architecture and metrics.

        Raises:
          CheckpointMismatchError: no checkpoint of ``epoch`` is kept, or its record is
            missing (not written by fmi_jax's training) or damaged.
        """
        if epoch not in self.epochs():
            raise CheckpointMismatchError(
                f"{self.directory} holds no checkpoint of epoch {epoch}; "
                f"it keeps epochs {self.epochs()}"
            )
        try:
            restored = self._manager.restore(
                epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
        except KeyError as e:  # no meta item: orbax names the items it found
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / str(epoch)} has no meta record of what it is "
                f"({e}), so it was not written by fmi_jax's training, or its meta folder was "
                f"lost: restore it with orbax directly, or {self._instead(epoch)}"
            ) from e
        except (ValueError, OSError) as e:  # json's JSONDecodeError is a ValueError
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / str(epoch)} could not be read: its meta "
                f"(JSON) is damaged or incomplete ({type(e).__name__}: {e}); "
                f"{self._instead(epoch)}"
            ) from e
        if not isinstance(restored["meta"], Mapping):
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / str(epoch)} could not be read: its meta is "
                f"not a JSON object; {self._instead(epoch)}"
            )
        return dict(restored["meta"])

    def _instead(self, epoch: int) -> str:
        """What to do about a damaged checkpoint of ``epoch``."""
        others = [k for k in self.epochs() if k != epoch]
        return (
            f"restore another of the kept epochs {others} (evaluate's --checkpoint, the "
            "studies' --config.checkpoint), or move it away"
            if others
            else "move it away"
        ) + " (a training run then resumes from the epoch before, or starts again)"

    def best_epoch(self) -> int | None:
        """The kept epoch with the best `best_metric` (the latest among ties)."""
        if not self.best_metric:
            return self.latest_epoch()
        scored = []
        for epoch in self.epochs():
            try:
                record = self.meta(epoch)
            except CheckpointMismatchError as e:  # one damaged record leaves the others
                logging.warning("left out of the choice of the best epoch: %s", e)
                continue
            value = record.get("metrics", {}).get(self.best_metric)
            if value is not None:
                scored.append((self._score(value), epoch))
        return max(scored)[1] if scored else self.latest_epoch()

    # ---------------------------------------------------------------- checks
    def check_architecture(self, wanted: Mapping[str, Any]) -> None:
        """Raises CheckpointMismatchError unless the latest checkpoint is of `wanted`."""
        latest = self.latest_epoch()
        if latest is None:
            return
        saved = self.meta(latest).get("architecture", {})
        wanted = dict(wanted)
        for key in _DIGESTS:
            if key not in saved:  # checkpoints written before runs recorded it
                wanted.pop(key, None)
        if saved != wanted:
            raise CheckpointMismatchError(
                f"{self.directory} holds checkpoints of a different model or dataset "
                f"({_describe_difference(saved, wanted)}). Use a new --workdir for this config, "
                "or match the config to the checkpoint. Nothing was overwritten."
            )

    def check_model(self, epoch: int, model_config: Mapping[str, Any], dataset: str) -> dict:
        """The architecture recorded with `epoch`, after checking that `model_config` and
        `dataset` (a run's config.json, which a restore builds the model from) are the
        ones it was trained with, the compute dtype aside: a restore takes only the
        parameters the config's model needs, so another model would load without
        complaint. One-line
        CheckpointMismatchError otherwise, or for a checkpoint without the record."""
        saved = self.meta(epoch).get("architecture")
        if not isinstance(saved, Mapping) or "image_shape" not in saved:
            raise CheckpointMismatchError(
                f"{self.directory / str(epoch)} records no model description, so it was not "
                "written by fmi_jax's training: restore it with orbax directly"
            )
        wanted = architecture_of(
            model_config, saved["image_shape"], saved.get("num_classes", 0), dataset
        )
        recorded = {key: saved.get(key) for key in wanted}
        # The compute dtype is the restorer's choice: the parameters are float32 either way.
        for record in (wanted, recorded):
            if isinstance(record["model"], Mapping):
                record["model"] = {k: v for k, v in record["model"].items() if k != "dtype"}
        if recorded != wanted:
            raise CheckpointMismatchError(
                f"{self.directory} holds checkpoints of another model or dataset than its "
                f"run's config.json describes ({_describe_difference(recorded, wanted)}): "
                "restore it with the config it was trained with"
            )
        return dict(saved)

    # ---------------------------------------------------------------- save / restore
    def save(
        self,
        epoch: int,
        state_tree: Any,
        *,
        architecture: Mapping[str, Any],
        metrics: Mapping[str, float],
    ) -> None:
        meta = {
            "epoch": int(epoch),
            "architecture": dict(architecture),
            "metrics": {k: float(v) for k, v in metrics.items()},
        }
        saved = self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(state_tree), meta=ocp.args.JsonSave(meta)
            ),
            metrics=meta["metrics"] if self.best_metric in meta["metrics"] else None,
        )
        if not saved:
            raise RuntimeError(f"orbax declined to save epoch {epoch} in {self.directory}")
        self._manager.wait_until_finished()

    def restore(self, epoch: int, target: Any, *, partial: bool = False) -> Any:
        """Restores the `state` item of `epoch` into the structure and shapes of `target`.

        With `partial`, `target` may name a subset of the saved keys (e.g. params and
        batch_stats without the optimizer state).
        """
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        # `target` may hold arrays or jax.ShapeDtypeStructs (from jax.eval_shape, whose
        # sharding is None): either way the restored arrays land on their sharding or
        # on the first device.
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                x.shape, x.dtype, sharding=getattr(x, "sharding", None) or device
            ),
            target,
        )
        try:
            item = ocp.args.PyTreeRestore(
                abstract,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                partial_restore=partial,
            )
            restored = self._manager.restore(epoch, args=ocp.args.Composite(state=item))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / str(epoch)} does not fit the model built from the "
                f"config ({type(e).__name__}: {e}). Use a new --workdir or the config the checkpoint "
                "was trained with."
            ) from e
        except Exception as e:
            if type(e) is not Exception:  # TensorStore's read failures are bare Exceptions
                raise
            # Its message runs to dozens of lines of the array's TensorStore spec; the
            # array is the spec's relative path.
            arrays = [p for p in re.findall(r"'path': '([^']+)'", str(e)) if not p.startswith("/")]
            what = f"array {arrays[-1].rstrip('/')}" if arrays else "an array"
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / str(epoch)} could not be read: {what} is "
                f"damaged or incomplete; {self._instead(epoch)}"
            ) from e
        logging.info("restored epoch %d from %s", epoch, self.directory)
        return restored["state"]

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
