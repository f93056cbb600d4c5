"""The in-memory dataset every loader returns.

A :class:`Dataset` is a pair of host-side numpy arrays plus provenance:

* ``images``: ``uint8`` of shape ``(N, H, W, C)`` (NHWC; ``C == 1`` for the
  MNIST family, ``3`` for CIFAR-10);
* ``labels``: ``int32`` of shape ``(N,)`` with values in ``[0, num_classes)``.

The arrays are stored as read-only views, so an array handed to several
datasets (or to the training code) cannot be changed in place by accident.
Copy (``np.array(ds.images)``) if you need a writable array.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence

import numpy as np

from fmi_jax.data.errors import DataError
from fmi_jax.data.validation import validate_arrays

__all__ = ["Dataset", "SPLITS"]

#: Split names a Dataset may carry.
SPLITS: tuple[str, ...] = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels of one split of one dataset, with where they came from.

    Attributes:
        images: ``uint8`` array of shape ``(N, H, W, C)``.
        labels: ``int32`` array of shape ``(N,)``; any integer array is accepted
            and converted after its range is checked.
        name: Dataset name, e.g. ``'fashion_mnist'``, ``'mnist'``, ``'cifar10'``,
            ``'synthetic'``.
        split: One of ``'train'``, ``'validation'``, ``'test'``.
        class_names: One human-readable name per class; its length is the
            number of classes.
        source: Human-readable provenance, e.g.
            ``"IDX files t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in
            /usr/share/datasets/fashion-mnist"``.

    Raises:
        DataError: On construction, if the arrays break the contract above.
    """

    images: np.ndarray
    labels: np.ndarray
    name: str
    split: str
    class_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise DataError(f"Unknown split {self.split!r} for a Dataset; use one of {SPLITS}.")
        class_names = tuple(self.class_names)
        if not class_names or not all(isinstance(c, str) for c in class_names):
            raise DataError(
                f"class_names must be a non-empty sequence of str, got {self.class_names!r}."
            )
        if not isinstance(self.images, np.ndarray) or self.images.ndim != 4:
            shape = getattr(self.images, "shape", None)
            raise DataError(
                f"images of {self.name}/{self.split} must be (N, H, W, C), got shape {shape}."
            )
        images, labels = validate_arrays(
            self.images,
            self.labels,
            image_shape=self.images.shape[1:],
            num_classes=len(class_names),
            images_from=f"{self.name}/{self.split} ({self.source})",
            allow_empty=True,
        )
        object.__setattr__(self, "images", _read_only(images))
        object.__setattr__(self, "labels", _read_only(labels))
        object.__setattr__(self, "class_names", class_names)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(H, W, C)`` of one image."""
        height, width, channels = self.images.shape[1:]
        return height, width, channels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, num_examples={len(self)}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes}, "
            f"source={self.source!r})"
        )

    def take(self, n: int) -> Dataset:
        """Returns the first ``min(n, len(self))`` examples (like ``tf.data``'s take).

        Args:
            n: Non-negative number of examples.

        Raises:
            DataError: If ``n`` is not a non-negative integer.
        """
        n = _as_count(n, "take(n)")
        return self.subset(np.arange(min(n, len(self))))

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """Returns the examples at ``indices``, in that order.

        Args:
            indices: 1-D integer indices in ``[0, len(self))``; repeats are allowed.

        Raises:
            DataError: If the indices are not 1-D integers or are out of range.
        """
        idx = np.asarray(indices)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise DataError(
                f"subset() needs a 1-D array of integer indices, got dtype {idx.dtype} "
                f"and shape {idx.shape}. Use np.flatnonzero(mask) for a boolean mask."
            )
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise DataError(
                f"subset() indices must lie in [0, {len(self)}) for {self.name}/{self.split}, "
                f"got range [{idx.min()}, {idx.max()}]."
            )
        return dataclasses.replace(self, images=self.images[idx], labels=self.labels[idx])


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _as_count(value: int, what: str) -> int:
    try:
        count = operator.index(value)
    except TypeError:
        raise DataError(f"{what} must be an integer, got {value!r}.") from None
    if count < 0:
        raise DataError(f"{what} must be non-negative, got {count}.")
    return count
