"""`validate_train_config(config)`: the checks `train_and_evaluate` runs before it
touches the workdir, so a bad value is refused up front with one line naming the
field and what it allows, instead of failing after the data is loaded (a negative
batch size would reach the loop as a negative step count, zero a division by zero,
zero epochs a summary of an untrained model).

Only the fields a config has are checked: the studies build training configs with
different subsets (an autoencoder phase has no label smoothing, a hand-built test
config may have no learning rate).
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

from fmi_jax import data as data_lib
from fmi_jax import models
from fmi_jax.train import augment as augment_lib
from fmi_jax.train import optim

# config.augment is passed to augment_lib.augment as keywords: its fields are those.
_AUGMENT_FIELDS = tuple(
    p.name
    for p in inspect.signature(augment_lib.augment).parameters.values()
    if p.kind is p.KEYWORD_ONLY
)

__all__ = ["ConfigValueError", "require_at_least", "validate_train_config"]


class ConfigValueError(ValueError):
    """A training config field has a value outside what it allows."""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def require_at_least(
    config: Any,
    field: str,
    minimum: float,
    *,
    integer: bool = True,
    where: str = "config",
    optional: bool = False,
) -> None:
    """Raises ConfigValueError unless `config[field]` is an integer (or, with
    `integer=False`, a finite real number; never a bool) >= `minimum`. A missing field, or
    None with `optional=True`, passes when `optional`; otherwise it is an error."""
    value = config[field] if field in config else None
    if value is None and optional:
        return
    ok = _is_int(value) if integer else _is_real(value) and math.isfinite(value)
    if not ok or value < minimum:
        kind = "an integer" if integer else "a finite number"
        raise ConfigValueError(f"{where}.{field} must be {kind} >= {minimum:g}, got {value!r}")


def _positive_int(config: Any, field: str, *, minimum: int = 1) -> None:
    require_at_least(config, field, minimum, optional=True)


def _name(config: Any, section: str, known: tuple[str, ...], what: str) -> None:
    if section not in config or config[section] is None:
        return
    part = config[section]
    if not hasattr(part, "get") or "name" not in part:
        return
    name = part["name"]
    if name not in known:
        raise ConfigValueError(
            f"config.{section}.name: unknown {what} {name!r}; choose one of {', '.join(known)}"
        )


def validate_train_config(config: Any) -> None:
    """Raises ConfigValueError (a ValueError) naming the first bad field of a training
    config: batch_size, eval_batch_size and steps_per_dispatch positive integers,
    num_epochs >= 1, learning_rate a number > 0 and not infinite (a NaN is left to the
    training loop, which names the step it breaks), model.name and data.name
    registered names; the model's layer widths, filter counts, kernel sizes and block
    count integers >= 1; label_smoothing, momentum and model.dropout in [0, 1),
    augment.erasing in [0, 1]; checkpoint_keep >= 1; warmup_epochs, weight_decay and
    grad_clip_norm finite and >= 0; augment.crop_padding and data.split_seed >= 0; no
    weight_decay with optimizer 'adam', which would ignore it; optimizer and schedule
    registered names; augment's fields those of ``augment``. Fields a config does not
    have are not checked."""
    _positive_int(config, "batch_size")
    _positive_int(config, "eval_batch_size")
    _positive_int(config, "num_epochs")
    if "learning_rate" in config:
        lr = config["learning_rate"]
        # A NaN rate is left to the loop's non-finite loss check (which names the step;
        # tests/test_train.py uses a NaN rate to exercise it).
        if not _is_real(lr) or float(lr) <= 0 or math.isinf(lr):
            raise ConfigValueError(f"config.learning_rate must be a finite number > 0, got {lr!r}")
    _name(config, "model", models.available_models(), "model")
    _name(config, "data", tuple(sorted(data_lib.DATASETS)), "dataset")
    # Values that would train without an error and mean nothing: a dead model
    # (dropout 1.5), a loss that rewards wrong classes (label smoothing 2), a negative
    # penalty, or a setting silently treated as off.
    _fraction(config, "label_smoothing", "config", closed=False)
    _fraction(config, "momentum", "config", closed=False)
    _positive_int(config, "checkpoint_keep")
    _fraction(config.get("model") or {}, "dropout", "config.model", closed=False)
    _model_sizes(config.get("model") or {})
    _fraction(config.get("augment") or {}, "erasing", "config.augment", closed=True)
    for field in ("warmup_epochs", "weight_decay", "grad_clip_norm"):
        require_at_least(config, field, 0, integer=False, optional=True)
    if config.get("optimizer") == "adam" and config.get("weight_decay"):
        raise ConfigValueError(
            f"config.weight_decay is {config.weight_decay}, but optimizer 'adam' has no "
            "weight decay: set --config.weight_decay=0, or use 'adamw' (decoupled decay)"
        )
    _positive_int(config, "steps_per_dispatch")
    for field, known in (("optimizer", optim.OPTIMIZERS), ("schedule", optim.SCHEDULES)):
        if field in config and config[field] not in known:
            raise ConfigValueError(
                f"config.{field}: unknown {field} {config[field]!r}; choose one of "
                f"{', '.join(known)}"
            )
    augment = config.get("augment") or {}
    unknown = sorted(set(augment) - set(_AUGMENT_FIELDS)) if hasattr(augment, "keys") else []
    if unknown:
        raise ConfigValueError(
            f"config.augment has no field {unknown[0]!r}; its fields are "
            f"{', '.join(_AUGMENT_FIELDS)}"
        )
    require_at_least(augment, "crop_padding", 0, where="config.augment", optional=True)
    data = config.get("data") or {}
    require_at_least(data, "split_seed", 0, where="config.data", optional=True)


def _fraction(section: Any, field: str, where: str, *, closed: bool) -> None:
    """``section[field]``, when present, a number in [0, 1) (or [0, 1] when ``closed``)."""
    if not hasattr(section, "get") or section.get(field) is None:
        return
    value = section[field]
    if not _is_real(value) or not (0 <= value <= 1 if closed else 0 <= value < 1):
        bounds = "[0, 1]" if closed else "[0, 1)"
        raise ConfigValueError(f"{where}.{field} must be a number in {bounds}, got {value!r}")


def _model_sizes(model: Any) -> None:
    """The model's sizes and width lists, by the rules the built-in models check when
    they are built (`fmi_jax.models.argument_problem`), before the data is loaded."""
    if not hasattr(model, "get"):
        return
    for field in (*models.SIZE_ARGUMENTS, *models.WIDTH_ARGUMENTS):
        if model.get(field) is None:
            continue
        problem = models.argument_problem(field, model[field])
        if problem is not None:
            raise ConfigValueError(f"config.model.{problem}")
