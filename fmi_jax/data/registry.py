"""What fmi_jax knows about each dataset: shapes, classes, files, sources.

:data:`DATASETS` maps a dataset name to its :class:`DatasetSpec`. The file
names are those of the original distributions; the tensorflow-datasets names
and download URLs are those of tensorflow-datasets 4.9.x (the URL's host is
what the network probe in :mod:`fmi_jax.data.tfds_source` tries to reach).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Literal

from fmi_jax.data import cifar
from fmi_jax.data.errors import DataError

__all__ = ["DATASETS", "DatasetSpec", "LOADABLE_SPLITS", "get_spec"]

#: Splits that :func:`fmi_jax.data.load` accepts; 'validation' comes from
#: :func:`fmi_jax.data.load_splits`.
LOADABLE_SPLITS: tuple[str, ...] = ("train", "test")

FileFormat = Literal["idx", "cifar10_python", "synthetic"]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one dataset.

    Attributes:
        name: The name used by :func:`fmi_jax.data.load`.
        image_shape: ``(H, W, C)`` of one image.
        class_names: One name per class, in label order.
        file_format: ``'idx'``, ``'cifar10_python'`` or ``'synthetic'``.
        files: Split -> original file names (empty for synthetic data). IDX:
            ``(images, labels)``; the un-gzipped names (without ``.gz``) are
            accepted too. CIFAR-10: the batch files inside
            ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``.
        homepage: Where to download the original files.
        tfds_name: Name in tensorflow-datasets, if it has one.
        tfds_download_url: The URL tensorflow-datasets downloads from.
        debian_package: Debian package that installs the original files.
        original_urls: Original file name -> URL, for fetching the original
            files through tfds's download manager when TensorFlow (needed to
            prepare a tfds dataset) is not installed.
    """

    name: str
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    file_format: FileFormat
    files: Mapping[str, tuple[str, ...]]
    homepage: str | None = None
    tfds_name: str | None = None
    tfds_download_url: str | None = None
    debian_package: str | None = None
    original_urls: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def all_files(self) -> tuple[str, ...]:
        """Original file names of every split, train first."""
        return tuple(name for split in LOADABLE_SPLITS for name in self.files.get(split, ()))


_IDX_FILES = types.MappingProxyType(
    {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
)


def _urls(base: str, files: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    return {name: base + name for split in LOADABLE_SPLITS for name in files[split]}


FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_SPECS = (
    DatasetSpec(
        name="fashion_mnist",
        image_shape=(28, 28, 1),
        class_names=FASHION_MNIST_CLASSES,
        file_format="idx",
        files=_IDX_FILES,
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        tfds_name="fashion_mnist",
        tfds_download_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        debian_package="dataset-fashion-mnist",
        original_urls=_urls(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", _IDX_FILES
        ),
    ),
    DatasetSpec(
        name="mnist",
        image_shape=(28, 28, 1),
        class_names=MNIST_CLASSES,
        file_format="idx",
        files=_IDX_FILES,
        homepage="https://storage.googleapis.com/cvdf-datasets/mnist/",
        tfds_name="mnist",
        tfds_download_url="https://storage.googleapis.com/cvdf-datasets/mnist/",
        original_urls=_urls("https://storage.googleapis.com/cvdf-datasets/mnist/", _IDX_FILES),
    ),
    DatasetSpec(
        name="cifar10",
        image_shape=(32, 32, 3),
        class_names=CIFAR10_CLASSES,
        file_format="cifar10_python",
        files=types.MappingProxyType({"train": cifar.TRAIN_BATCHES, "test": cifar.TEST_BATCHES}),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        tfds_name="cifar10",
        tfds_download_url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        original_urls={
            "cifar-10-python.tar.gz": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
        },
    ),
    DatasetSpec(
        name="synthetic",
        image_shape=(28, 28, 1),
        class_names=tuple(f"blob_{k}" for k in range(10)),
        file_format="synthetic",
        files=types.MappingProxyType({}),
    ),
    DatasetSpec(
        name="synthetic_rgb",
        image_shape=(32, 32, 3),
        class_names=tuple(f"blob_{k}" for k in range(10)),
        file_format="synthetic",
        files=types.MappingProxyType({}),
    ),
)

#: Dataset name -> :class:`DatasetSpec` (read-only).
DATASETS: Mapping[str, DatasetSpec] = types.MappingProxyType({spec.name: spec for spec in _SPECS})


def get_spec(name: str) -> DatasetSpec:
    """Returns the spec of dataset ``name``.

    Raises:
        DataError: If the name is unknown; the message lists the known names.
    """
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise DataError(
            f"Unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}."
        ) from None
