"""Real Fashion-MNIST through the front door, where Debian's package is installed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fmi_jax.data import load, load_splits, sources

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.skipif(
    not (DEBIAN_FOLDER / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real Fashion-MNIST not installed at {DEBIAN_FOLDER} (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture
def debian_only(monkeypatch):
    """Found through `dpkg -L`, not through $FMI_DATA_DIR."""
    monkeypatch.delenv(sources.FMI_DATA_DIR_ENV, raising=False)
    sources.find_debian_folder.cache_clear()


def test_real_train_and_test_sets(debian_only):
    start = time.monotonic()
    train = load("fashion_mnist", "train")
    test = load("fashion_mnist", "test")
    assert time.monotonic() - start < 5
    assert train.source.startswith("IDX files train-images-idx3-ubyte")
    assert train.source.endswith(f"-idx1-ubyte.gz in {DEBIAN_FOLDER}")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and train.labels.min() == 0 and train.labels.max() == 9
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    # Known answers: the first labels of each file and the published pixel mean (0.2860).
    assert train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert test.labels[:5].tolist() == [9, 2, 1, 1, 6]
    assert abs(train.images.mean() / 255 - 0.2860) < 5e-4
    assert train.class_names[9] == "Ankle boot"
    assert "tensorflow" not in sys.modules


def test_real_splits(debian_only):
    sets = load_splits("fashion_mnist", validation_size=5000, seed=0, test_limit=1000)
    assert {k: len(v) for k, v in sets.items()} == {
        "train": 55000,
        "validation": 5000,
        "test": 1000,
    }
    assert np.bincount(sets["validation"].labels).tolist() == [500] * 10
    assert np.bincount(sets["train"].labels).tolist() == [5500] * 10
