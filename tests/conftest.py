"""Shared fixtures: tiny configs on synthetic data (no downloads, seconds on a CPU)."""

import os
import sys
from pathlib import Path

import pytest

# Make `import configs` work however pytest is started.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import configs  # noqa: E402


@pytest.fixture
def synthetic_config():
    """cnn_fmnist:smoke on the 'synthetic' dataset: 640 train / 64 val / 128 test images."""

    def make(**overrides):
        config = configs.load("cnn_fmnist", "smoke")
        config.data.name = "synthetic"
        config.data.options = {"num_train": 704, "num_test": 128}
        config.data.train_limit = None
        config.progress = False
        # The synthetic classes differ by where their patterns sit: no flips or crops.
        config.augment = {"flip": False, "crop_padding": 0, "erasing": 0.0}
        config.learning_rate = 5e-3
        for key, value in overrides.items():
            target = config
            *path, last = key.split(".")
            for part in path:
                target = target[part]
            target[last] = value
        return config

    return make
