"""The shared validation routine and the Dataset container."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fmi_jax.data.dataset import Dataset
from fmi_jax.data.errors import DataError
from fmi_jax.data.validation import validate_arrays

CLASSES = tuple("abcde")


def _dataset(num: int = 10, split: str = "train") -> Dataset:
    images = np.arange(num * 4, dtype=np.uint8).reshape(num, 2, 2, 1)
    return Dataset(images, np.arange(num) % 5, "toy", split, CLASSES, source="test arrays")


def _check(images, labels, **kwargs):
    options = dict(
        image_shape=(2, 2, 1), num_classes=5, images_from="imgs.bin", labels_from="lbls.bin"
    )
    return validate_arrays(images, labels, **{**options, **kwargs})


def test_valid_arrays_pass_and_labels_become_int32():
    images = np.zeros((3, 2, 2, 1), np.uint8)
    out_images, out_labels = _check(images, np.array([0, 4, 2], np.uint8))
    assert out_images is images
    assert out_labels.dtype == np.int32 and out_labels.tolist() == [0, 4, 2]


@pytest.mark.parametrize(
    "images, labels, pattern",
    [
        (
            np.zeros((3, 2, 2, 1), np.float32),
            np.zeros(3, int),
            r"images from imgs.bin have dtype float32; expected uint8",
        ),
        (
            np.zeros((3, 2, 3, 1), np.uint8),
            np.zeros(3, int),
            r"images from imgs.bin have shape \(3, 2, 3, 1\); expected \(N, 2, 2, 1\)",
        ),
        (
            np.zeros((3, 2, 2), np.uint8),
            np.zeros(3, int),
            r"images from imgs.bin have shape \(3, 2, 2\)",
        ),
        (
            np.zeros((3, 2, 2, 1), np.uint8),
            np.zeros(3, float),
            r"labels from lbls.bin have dtype float64; expected integers",
        ),
        (
            np.zeros((3, 2, 2, 1), np.uint8),
            np.zeros((3, 1), int),
            r"labels from lbls.bin have shape \(3, 1\); expected \(N,\)",
        ),
        (
            np.zeros((3, 2, 2, 1), np.uint8),
            np.array([0, 5, 1]),
            r"labels from lbls.bin must lie in \[0, 5\) but range over \[0, 5\] \(first bad one: label 5 at index 1\)",
        ),
        (np.zeros((3, 2, 2, 1), np.uint8), np.array([0, -1, 1]), r"label -1 at index 1"),
        (
            np.zeros((3, 2, 2, 1), np.uint8),
            np.zeros(2, int),
            r"3 images in imgs.bin but 2 labels in lbls.bin",
        ),
        (np.zeros((0, 2, 2, 1), np.uint8), np.zeros(0, int), r"imgs.bin holds no images"),
        ([[0]], np.zeros(1, int), r"images from imgs.bin are a list, not a numpy array"),
    ],
)
def test_each_broken_contract_is_named(images, labels, pattern):
    with pytest.raises(DataError, match=pattern):
        _check(images, labels)


def test_empty_allowed_when_asked():
    images, labels = _check(
        np.zeros((0, 2, 2, 1), np.uint8), np.zeros(0, np.int64), allow_empty=True
    )
    assert images.shape == (0, 2, 2, 1) and labels.dtype == np.int32


def test_dataset_properties_and_read_only_arrays():
    ds = _dataset()
    assert (len(ds), ds.num_classes, ds.image_shape) == (10, 5, (2, 2, 1))
    assert ds.labels.dtype == np.int32 and ds.images.dtype == np.uint8
    with pytest.raises(ValueError):
        ds.images[0, 0, 0, 0] = 1
    assert "num_examples=10" in repr(ds) and "source='test arrays'" in repr(ds)


def test_dataset_does_not_freeze_the_callers_array():
    images = np.zeros((2, 2, 2, 1), np.uint8)
    Dataset(images, np.zeros(2, int), "toy", "train", CLASSES, source="x")
    images[0] = 1  # still writable


def test_dataset_rejects_broken_arrays_and_unknown_split():
    with pytest.raises(DataError, match=r"toy/train \(x\) must lie in \[0, 5\)"):
        Dataset(
            np.zeros((1, 2, 2, 1), np.uint8), np.array([7]), "toy", "train", CLASSES, source="x"
        )
    with pytest.raises(DataError, match=r"Unknown split 'dev'"):
        Dataset(np.zeros((1, 2, 2, 1), np.uint8), np.array([0]), "toy", "dev", CLASSES, source="x")
    with pytest.raises(DataError, match=r"must be \(N, H, W, C\)"):
        Dataset(np.zeros((1, 4), np.uint8), np.array([0]), "toy", "train", CLASSES, source="x")


def test_take_and_subset_are_exact():
    ds = _dataset()
    first = ds.take(3)
    np.testing.assert_array_equal(first.images, ds.images[:3])
    assert first.labels.tolist() == [0, 1, 2]
    assert len(ds.take(100)) == 10 and len(ds.take(0)) == 0
    picked = ds.subset([9, 0, 9])
    assert picked.labels.tolist() == [4, 0, 4]
    np.testing.assert_array_equal(picked.images[1], ds.images[0])
    assert (picked.name, picked.split, picked.class_names, picked.source) == (
        ds.name,
        ds.split,
        ds.class_names,
        ds.source,
    )
    empty = ds.subset([])
    assert empty.images.shape == (0, 2, 2, 1) and empty.labels.dtype == np.int32


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda ds: ds.take(-1), r"take\(n\) must be non-negative"),
        (lambda ds: ds.take(2.5), r"take\(n\) must be an integer"),
        (lambda ds: ds.subset([0, 10]), r"indices must lie in \[0, 10\).*\[0, 10\]"),
        (lambda ds: ds.subset([-1]), r"indices must lie in \[0, 10\)"),
        (lambda ds: ds.subset(np.ones(10, bool)), r"integer indices.*np.flatnonzero"),
        (lambda ds: ds.subset([[0]]), r"1-D array of integer indices"),
    ],
)
def test_take_and_subset_validate(call, pattern):
    with pytest.raises(DataError, match=pattern):
        call(_dataset())


def test_dataset_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _dataset().name = "other"
