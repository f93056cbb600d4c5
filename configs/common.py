"""What every training config shares, and the `:smoke` shrink.

The argument after the colon (`--config=configs/x.py:smoke`) selects a variant:
  ''/None  the full run;
  'smoke'  a run of seconds for tests and CI: one epoch, a few hundred examples,
           the same code path.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

VARIANTS = ("", "smoke")


def data_config(name: str, validation_size: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "name": name,
            # Directory holding the original files (IDX *-ubyte.gz, CIFAR python batches).
            "data_dir": config_dict.placeholder(str),
            # An already prepared tensorflow-datasets data_dir (or where tfds may prepare one).
            "tfds_data_dir": config_dict.placeholder(str),
            "download": True,
            "validation_size": validation_size,
            "split_seed": 0,
            "train_limit": config_dict.placeholder(int),
            "test_limit": config_dict.placeholder(int),
            # Extra keyword arguments for the source (e.g. num_train for 'synthetic').
            "options": {},
        }
    )


def training_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "seed": 0,
            "batch_size": 128,
            "eval_batch_size": 1000,
            "num_epochs": 10,
            "optimizer": "adamw",
            "learning_rate": 1e-3,
            "momentum": 0.9,
            "nesterov": True,
            "schedule": "cosine",
            "warmup_epochs": 1.0,
            "weight_decay": 5e-4,
            "grad_clip_norm": 0.0,
            "label_smoothing": 0.0,
            "augment": {"flip": False, "crop_padding": 0, "erasing": 0.0},
            # 'auto' ('scan'; see fmi_jax/train/loop.py on why), 'step' or 'scan'.
            "loop": "auto",
            "steps_per_dispatch": 50,
            # Data parallelism (fmi_jax/parallel.py): 1 one device; 0 all; n the first n.
            "num_devices": 1,
            "log_every_steps": 50,
            "checkpoint_keep": 2,
            "progress": True,
            # TensorBoard events under <workdir>/tensorboard/ (False: none).
            "tensorboard": True,
        }
    )


def variant(arg: str | None) -> str:
    """The variant named after the colon ('' for none); an unknown one is an error."""
    arg = arg or ""
    if arg not in VARIANTS:
        raise ValueError(f"unknown config variant {arg!r}; choose one of {VARIANTS[1:]} or none")
    return arg


def finalize(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the variant named by `arg` and returns the config."""
    arg = variant(arg)
    if arg == "smoke":
        config.num_epochs = 1
        config.batch_size = 32
        config.eval_batch_size = 256
        config.warmup_epochs = 0.0
        config.data.validation_size = 64
        config.data.train_limit = 256
        config.data.test_limit = 128
        config.log_every_steps = 4
    return config
