"""Shared fixtures: tiny configs on synthetic data (no downloads, seconds on a CPU)."""

import os

import pytest

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import configs  # noqa: E402  (the repository root is on sys.path: setup.cfg `pythonpath`)


def _synthetic_config():
    config = configs.load("cnn_fmnist", "smoke")
    config.data.name = "synthetic"
    config.data.options = {"num_train": 704, "num_test": 128}
    config.data.train_limit = None
    config.progress = False
    # The synthetic classes differ by where their patterns sit: no flips or crops.
    config.augment = {"flip": False, "crop_padding": 0, "erasing": 0.0}
    config.learning_rate = 5e-3
    return config


@pytest.fixture
def synthetic_config():
    """cnn_fmnist:smoke on the 'synthetic' dataset: 640 train / 64 val / 128 test images."""

    def make(**overrides):
        config = _synthetic_config()
        with config.unlocked():  # fields the config lacks, e.g. model.kernel_size
            for key, value in overrides.items():
                target = config
                *path, last = key.split(".")
                for part in path:
                    target = target[part]
                target[last] = value
        return config

    return make


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory):
    """A workdir of `synthetic_config(num_epochs=2)` trained once per test process.

    Tests only read it; the studies they run on it write their own output folders
    (each test picks an output name no other test uses)."""
    from fmi_jax import train

    config = _synthetic_config()
    config.num_epochs = 2
    workdir = tmp_path_factory.mktemp("synthetic_run")
    train.train_and_evaluate(config, workdir)
    return workdir


def pytest_collection_modifyitems(config, items):
    """Modules with a `slow` test run first: with pytest-xdist handing out whole files
    (`--dist=loadfile`), starting the longest ones first keeps a long file from being
    the last one left while the other worker idles. The order within a module, and
    of the modules otherwise, is unchanged."""
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_files)
