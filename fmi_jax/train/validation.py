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

import numbers
from typing import Any

from fmi_jax import data as data_lib
from fmi_jax import models

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
    `integer=False`, a real number; never a bool) >= `minimum`. A missing field, or
    None with `optional=True`, passes when `optional`; otherwise it is an error."""
    value = config[field] if field in config else None
    if value is None and optional:
        return
    ok = _is_int(value) if integer else _is_real(value)
    if not ok or value < minimum:
        kind = "an integer" if integer else "a number"
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
    config: batch_size and eval_batch_size positive integers, num_epochs >= 1,
    learning_rate a number > 0, model.name and data.name registered names."""
    _positive_int(config, "batch_size")
    _positive_int(config, "eval_batch_size")
    _positive_int(config, "num_epochs")
    if "learning_rate" in config:
        lr = config["learning_rate"]
        # A NaN rate is left to the loop's non-finite loss check (which names the step;
        # tests/test_train.py uses a NaN rate to exercise it).
        if not _is_real(lr) or float(lr) <= 0:
            raise ConfigValueError(f"config.learning_rate must be a number > 0, got {lr!r}")
    _name(config, "model", models.available_models(), "model")
    _name(config, "data", tuple(sorted(data_lib.DATASETS)), "dataset")
