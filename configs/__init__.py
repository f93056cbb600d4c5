"""ml_collections configs, one `get_config(arg)` per study and model.

Load them by path from the command line (`--config=configs/cnn_fmnist.py`,
`--config=configs/cnn_fmnist.py:smoke`), or in Python with
`configs.load('cnn_fmnist:smoke')` (or `configs.load('cnn_fmnist', 'smoke')`).
Scripts take their default `--config` from `configs.path(name)`, which is absolute, so
they start from any working directory.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import ml_collections

__all__ = ["DIRECTORY", "load", "path"]

DIRECTORY = Path(__file__).resolve().parent


def path(spec: str) -> str:
    """The absolute `--config` value of `spec` ('explain' or 'explain:smoke')."""
    name, colon, variant = spec.partition(":")
    file = DIRECTORY / f"{name}.py"
    if not file.is_file():
        known = sorted(
            p.stem for p in DIRECTORY.glob("*.py") if p.stem not in ("__init__", "common")
        )
        raise ValueError(f"unknown config {name!r} (no {file}); choose one of {known}")
    return f"{file}{colon}{variant}"


def load(spec: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`configs/<name>.py:get_config(arg)`, locked; `spec` may carry the variant ('name:smoke').

    Locked as `--config` locks it: existing fields take new values, and a misspelt one
    (`config.num_epoch = 2`) raises an AttributeError that suggests the right name
    instead of adding a field nothing reads. `with config.unlocked():` adds fields.
    """
    name, _, variant = spec.partition(":")
    if variant and arg is not None:
        raise ValueError(f"config {spec!r} names a variant and arg={arg!r} names another")
    path(name)  # a clear error for an unknown name
    config = importlib.import_module(f"configs.{name}").get_config(variant or arg)
    config.lock()
    return config
