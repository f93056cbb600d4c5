"""Deterministic, stratified subsets (each class keeps its share of the examples):
validation holdout and size limits.

Both use :func:`stratified_indices`: a seeded numpy ``Generator`` permutes the
examples, and each class contributes its share of the requested size (largest
remainder rounding), taken in permuted order. The result depends only on the
labels, the size and the seed -- not on the platform or the numpy build beyond
``numpy.random.default_rng``'s documented stream stability.
"""

from __future__ import annotations

import dataclasses
import operator

import numpy as np
from absl import logging

from fmi_jax.data.dataset import Dataset
from fmi_jax.data.errors import DataError

__all__ = ["limit", "stratified_indices", "train_validation_split"]


def stratified_indices(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Picks ``size`` indices with class proportions as in ``labels``.

    Args:
        labels: Integer labels ``(N,)``.
        size: Number of indices, ``0 <= size <= N``.
        rng: Source of randomness.

    Returns:
        Sorted ``int64`` indices into ``labels``.
    """
    order = rng.permutation(labels.shape[0])
    classes, counts = np.unique(labels, return_counts=True)
    quotas = _largest_remainder(counts, size)
    permuted_labels = labels[order]
    chosen = [order[permuted_labels == c][:q] for c, q in zip(classes, quotas, strict=True)]
    return np.sort(np.concatenate(chosen + [np.empty(0, np.int64)])).astype(np.int64)


def train_validation_split(ds: Dataset, validation_size: int, seed: int) -> tuple[Dataset, Dataset]:
    """Holds out a stratified validation set (class proportions as in ``ds``) from a
    training set.

    Args:
        ds: The training set.
        validation_size: Number of held-out examples, ``0 <= size < len(ds)``;
            ``0`` gives an empty validation Dataset with the right shapes.
        seed: Seed of the numpy Generator; equal seeds give equal splits.

    Returns:
        ``(train, validation)``: disjoint, together exactly ``ds``, each in the
        original order, with ``split`` set to ``'train'`` and ``'validation'``.

    Raises:
        DataError: If ``validation_size`` is negative, not an integer, or leaves
            no training examples.
    """
    size = _as_int(validation_size, "validation_size")
    if not 0 <= size < len(ds):
        raise DataError(
            f"validation_size must be in [0, {len(ds)}) for the {len(ds)} training examples "
            f"of {ds.name}, got {size}. Hold out fewer examples."
        )
    held_out = stratified_indices(ds.labels, size, np.random.default_rng(seed))
    keep = np.ones(len(ds), bool)
    keep[held_out] = False
    train = ds.subset(np.flatnonzero(keep))
    validation = ds.subset(held_out)
    note = f"{size} examples held out for validation with seed {seed}"
    return (
        dataclasses.replace(train, split="train", source=f"{ds.source}; minus {note}"),
        dataclasses.replace(validation, split="validation", source=f"{ds.source}; {note}"),
    )


def limit(ds: Dataset, max_size: int | None, seed: int) -> Dataset:
    """Returns a stratified subset (class proportions kept) of at most ``max_size``
    examples: a class too rare for a share of one example at this size gets none.

    Args:
        ds: The dataset.
        max_size: Positive maximum size, or ``None`` for no limit. A limit of
            at least ``len(ds)`` returns ``ds`` itself.
        seed: Seed of the numpy Generator.

    Raises:
        DataError: If ``max_size`` is not a positive integer or ``None``.
    """
    if max_size is None:
        return ds
    size = _as_int(max_size, f"{ds.split}_limit")
    if size <= 0:
        raise DataError(f"{ds.split}_limit must be positive or None, got {size}.")
    if size >= len(ds):
        logging.info("%s_limit=%d keeps all %d examples of %s.", ds.split, size, len(ds), ds.name)
        return ds
    subset = ds.subset(stratified_indices(ds.labels, size, np.random.default_rng(seed)))
    return dataclasses.replace(
        subset, source=f"{ds.source}; stratified subset of {size} (seed {seed})"
    )


def _largest_remainder(counts: np.ndarray, size: int) -> np.ndarray:
    """Splits ``size`` into per-class quotas proportional to ``counts`` (exactly, in integers)."""
    scaled = counts.astype(np.int64) * size
    total = max(int(counts.sum()), 1)
    quotas, remainders = scaled // total, scaled % total
    shortfall = size - int(quotas.sum())
    # Stable sort: ties go to the lower class, so the result is deterministic.
    quotas[np.argsort(-remainders, kind="stable")[:shortfall]] += 1
    return quotas


def _as_int(value: int, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise DataError(f"{what} must be an integer, got {value!r}.") from None
