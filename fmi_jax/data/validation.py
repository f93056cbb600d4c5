"""The one check that every source's arrays pass before they become a Dataset.

Each source (IDX files, CIFAR-10 pickles, tensorflow-datasets, synthetic data)
parses its own format and then hands its arrays to :func:`validate_arrays`, so
every dataset, wherever it came from, satisfies the same contract:

* images: ``uint8``, shape ``(N, H, W, C)`` with ``(H, W, C)`` as expected;
* labels: an integer array of shape ``(N,)`` with values in ``[0, num_classes)``,
  returned as ``int32``;
* as many images as labels, and ``N > 0`` unless empty arrays are allowed.

Errors are :class:`~fmi_jax.data.errors.DataError` and name the file (or other
source) the offending array came from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fmi_jax.data.errors import DataError

__all__ = ["validate_arrays"]


def validate_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    image_shape: Sequence[int],
    num_classes: int,
    images_from: str,
    labels_from: str | None = None,
    allow_empty: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Checks images and labels against the dataset contract.

    Args:
        images: Array that should be ``uint8`` of shape ``(N, *image_shape)``.
        labels: Integer array that should have shape ``(N,)`` and values in
            ``[0, num_classes)``.
        image_shape: Expected ``(H, W, C)`` of one image.
        num_classes: Number of classes; labels must lie in ``[0, num_classes)``.
        images_from: Where the images came from (a file path or a description);
            used in error messages.
        labels_from: Where the labels came from, if not from ``images_from``.
        allow_empty: Whether ``N == 0`` is acceptable (e.g. a validation split
            of size 0).

    Returns:
        ``(images, labels)`` with images unchanged and labels as ``int32``.

    Raises:
        DataError: If any check fails. The message names the source.
    """
    labels_from = images_from if labels_from is None else labels_from
    _check_images(images, tuple(image_shape), images_from)
    _check_labels(labels, num_classes, labels_from)
    if images.shape[0] != labels.shape[0]:
        cause = (
            "The file is damaged; replace it with the original."
            if labels_from == images_from
            else "The files are truncated or belong to different splits; replace them "
            "with a matching pair."
        )
        raise DataError(
            f"{images.shape[0]} images in {images_from} but {labels.shape[0]} labels "
            f"in {labels_from}: every image needs exactly one label. {cause}"
        )
    if images.shape[0] == 0 and not allow_empty:
        raise DataError(
            f"{images_from} holds no images; a dataset split must not be empty. Replace the file with a complete copy."
        )
    return images, labels.astype(np.int32, copy=False)


def _check_images(images: np.ndarray, image_shape: tuple[int, ...], where: str) -> None:
    if not isinstance(images, np.ndarray):
        raise DataError(f"images from {where} are a {type(images).__name__}, not a numpy array.")
    if images.dtype != np.uint8:
        raise DataError(
            f"images from {where} have dtype {images.dtype}; expected uint8 pixels "
            "in [0, 255]. Convert with np.clip(x, 0, 255).astype(np.uint8) if the "
            "values are already pixel intensities."
        )
    if images.ndim != 4 or images.shape[1:] != image_shape:
        raise DataError(
            f"images from {where} have shape {images.shape}; expected "
            f"(N, {', '.join(map(str, image_shape))}) in NHWC layout. Is this file "
            "from a different dataset?"
        )


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if not isinstance(labels, np.ndarray):
        raise DataError(f"labels from {where} are a {type(labels).__name__}, not a numpy array.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels from {where} have dtype {labels.dtype}; expected integers.")
    if labels.ndim != 1:
        raise DataError(f"labels from {where} have shape {labels.shape}; expected (N,).")
    if labels.size == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        raise DataError(
            f"labels from {where} must lie in [0, {num_classes}) but range over "
            f"[{low}, {high}] (first bad one: label {int(labels[bad])} at index {bad}). "
            "The file is corrupt or belongs to a dataset with more classes."
        )
