"""ml_collections configs, one `get_config(arg)` per study and model.

Load them by path from the command line (`--config=configs/cnn_fmnist.py`,
`--config=configs/cnn_fmnist.py:smoke`), or in Python with
`configs.load('cnn_fmnist', 'smoke')`.
"""

from __future__ import annotations

import importlib

import ml_collections


def load(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`configs/<name>.py:get_config(arg)`, for tests and notebooks."""
    return importlib.import_module(f"configs.{name}").get_config(arg)
