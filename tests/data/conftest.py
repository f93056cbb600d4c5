"""Fixtures for fmi_jax.data tests: small datasets written in the original formats.

Nothing here touches the network: `isolated` replaces the tfds network probe
and hides the machine's own data (``$FMI_DATA_DIR``, Debian's package), so a
test sees exactly the files it wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fmi_jax.data import cifar, idx, registry, sources, tfds_source
from fmi_jax.data.errors import Unavailable

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def make_arrays(num: int, shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images and balanced labels 0..9 (label i % 10, shuffled)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num, *shape), dtype=np.uint8)
    labels = rng.permutation(np.arange(num) % 10).astype(np.uint8)
    return images, labels


@pytest.fixture
def write_idx_split() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """Writes images+labels of one split as MNIST-style IDX files into a folder."""

    def write(folder: Path, split: str, num: int = 30, seed: int = 0, gz: bool = True):
        folder.mkdir(parents=True, exist_ok=True)
        images, labels = make_arrays(num, (28, 28, 1), seed)
        image_name, label_name = IDX_NAMES[split]
        if not gz:
            image_name, label_name = image_name.removesuffix(".gz"), label_name.removesuffix(".gz")
        idx.write_idx(folder / image_name, images[..., 0])
        idx.write_idx(folder / label_name, labels)
        return images, labels

    return write


@pytest.fixture
def write_idx_dataset(write_idx_split) -> Callable[..., dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Writes train (seed) and test (seed + 1) IDX splits into a folder."""

    def write(folder: Path, num_train: int = 40, num_test: int = 20, seed: int = 0):
        return {
            "train": write_idx_split(folder, "train", num_train, seed),
            "test": write_idx_split(folder, "test", num_test, seed + 1),
        }

    return write


@pytest.fixture
def write_cifar_dataset() -> Callable[..., dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Writes a small CIFAR-10 python-format folder; returns the arrays per split."""

    def write(folder: Path, num_train: int = 25, num_test: int = 10, seed: int = 0):
        train = make_arrays(num_train, (32, 32, 3), seed)
        test = make_arrays(num_test, (32, 32, 3), seed + 1)
        cifar.write_cifar_batches(
            folder,
            train_images=train[0],
            train_labels=train[1],
            test_images=test[0],
            test_labels=test[1],
            label_names=registry.CIFAR10_CLASSES,
        )
        return {"train": train, "test": test}

    return write


@pytest.fixture
def probe_calls(monkeypatch) -> list[str]:
    """Replaces the tfds network probe by an 'offline' answer; records the URLs probed."""
    calls: list[str] = []

    def offline(url: str, timeout: float = tfds_source.PROBE_TIMEOUT_S) -> tfds_source.ProbeResult:
        calls.append(url)
        return tfds_source.ProbeResult(False, "DNS lookup failed (patched in tests)")

    monkeypatch.setattr(tfds_source, "probe_url", offline)
    return calls


@pytest.fixture
def isolated(monkeypatch, tmp_path, probe_calls) -> Path:
    """No $FMI_DATA_DIR, no Debian package, an empty tfds folder, offline probe.

    Returns the empty tfds data folder to pass as ``tfds_data_dir``.
    """
    monkeypatch.delenv(sources.FMI_DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(
        sources,
        "find_debian_folder",
        lambda package, names: Unavailable(f"package {package} hidden by the test"),
    )
    tfds_dir = tmp_path / "tfds_empty"
    tfds_dir.mkdir()
    return tfds_dir
