"""Validation holdout, limits and synthetic data: deterministic, disjoint, balanced."""

from __future__ import annotations

import numpy as np
import pytest

from fmi_jax.data import load_splits, splits
from fmi_jax.data.dataset import Dataset
from fmi_jax.data.errors import DataError
from fmi_jax.data.registry import DATASETS
from fmi_jax.data.synthetic import load_synthetic, make_images


def _dataset(num: int = 100, num_classes: int = 10) -> Dataset:
    # Image i carries its own index in its first two pixels, so subsets can be traced back.
    images = np.zeros((num, 2, 2, 1), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = np.arange(num) // 256, np.arange(num) % 256
    labels = np.arange(num) % num_classes
    return Dataset(
        images, labels, "toy", "train", tuple(map(str, range(num_classes))), source="toy"
    )


def _origin(ds: Dataset) -> np.ndarray:
    return ds.images[:, 0, 0, 0].astype(int) * 256 + ds.images[:, 0, 1, 0]


def test_split_sizes_disjoint_and_complete():
    ds = _dataset(100)
    train, validation = splits.train_validation_split(ds, 20, seed=0)
    assert (len(train), len(validation)) == (80, 20)
    assert (train.split, validation.split) == ("train", "validation")
    assert not set(_origin(train)) & set(_origin(validation))
    assert sorted([*_origin(train), *_origin(validation)]) == list(range(100))
    np.testing.assert_array_equal(train.labels, ds.labels[_origin(train)])
    assert "20 examples held out for validation with seed 0" in validation.source


def test_split_is_deterministic_in_seed():
    ds = _dataset(100)
    first = _origin(splits.train_validation_split(ds, 20, seed=3)[1])
    again = _origin(splits.train_validation_split(ds, 20, seed=3)[1])
    other = _origin(splits.train_validation_split(ds, 20, seed=4)[1])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_split_is_stratified():
    ds = _dataset(1000)
    _, validation = splits.train_validation_split(ds, 95, seed=0)
    counts = np.bincount(validation.labels, minlength=10)
    assert counts.sum() == 95 and counts.max() - counts.min() <= 1


def test_stratified_indices_follow_class_proportions():
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    chosen = splits.stratified_indices(labels, 20, np.random.default_rng(0))
    assert np.bincount(labels[chosen]).tolist() == [16, 3, 1]
    assert np.all(np.diff(chosen) > 0)


def test_validation_size_zero_gives_empty_dataset_with_right_shapes():
    ds = _dataset(10)
    train, validation = splits.train_validation_split(ds, 0, seed=0)
    assert len(train) == 10 and len(validation) == 0
    assert validation.images.shape == (0, 2, 2, 1) and validation.images.dtype == np.uint8
    assert validation.labels.shape == (0,) and validation.labels.dtype == np.int32


@pytest.mark.parametrize(
    "size, pattern",
    [(10, r"in \[0, 10\).*got 10"), (11, r"got 11"), (-1, r"got -1"), (2.0, r"must be an integer")],
)
def test_bad_validation_size(size, pattern):
    with pytest.raises(
        DataError, match=rf"validation_size .*{pattern}|validation_size must be an integer"
    ):
        splits.train_validation_split(_dataset(10), size, seed=0)


def test_limit_is_balanced_deterministic_and_optional():
    ds = _dataset(200)
    small = splits.limit(ds, 30, seed=1)
    assert len(small) == 30 and np.bincount(small.labels).tolist() == [3] * 10
    np.testing.assert_array_equal(_origin(small), _origin(splits.limit(ds, 30, seed=1)))
    assert splits.limit(ds, None, seed=1) is ds
    assert splits.limit(ds, 500, seed=1) is ds
    with pytest.raises(DataError, match=r"train_limit must be positive or None, got 0"):
        splits.limit(ds, 0, seed=1)


@pytest.mark.parametrize("name", ["synthetic", "synthetic_rgb"])
def test_synthetic_shapes_dtypes_balance(name):
    spec = DATASETS[name]
    ds = load_synthetic(spec, "train", num_train=95, seed=0)
    assert ds.images.shape == (95, *spec.image_shape) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and np.bincount(ds.labels).tolist() == [10] * 5 + [9] * 5
    assert (ds.name, ds.split, ds.num_classes) == (name, "train", 10)


def test_synthetic_is_deterministic_and_splits_differ():
    spec = DATASETS["synthetic"]
    a = load_synthetic(spec, "train", num_train=50, seed=7)
    b = load_synthetic(spec, "train", num_train=50, seed=7)
    c = load_synthetic(spec, "train", num_train=50, seed=8)
    test = load_synthetic(spec, "test", num_test=50, seed=7)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.images, test.images)


def test_synthetic_renders_every_chunk():
    images, labels = make_images(1500, (28, 28, 1), 10, seed=0)  # crosses the 1024-image chunk
    assert images.shape == (1500, 28, 28, 1) and labels.shape == (1500,)
    assert images[1024:].std() > 0


def test_synthetic_class_is_where_the_blob_is():
    """Known answer: the brightest smoothed spot sits at the class's angle on the circle."""
    ds = load_synthetic(DATASETS["synthetic"], "test", num_test=200, seed=0)
    hits = 0
    for image, label in zip(ds.images[..., 0].astype(float), ds.labels, strict=True):
        # 5x5 box filter, so a thin distractor bar scores lower than the round blob.
        padded = np.pad(image, 2)
        smooth = sum(padded[dy : dy + 28, dx : dx + 28] for dy in range(5) for dx in range(5))
        y, x = np.unravel_index(np.argmax(smooth), smooth.shape)
        angle = np.arctan2(x - 13.5, -(y - 13.5)) % (2 * np.pi)
        hits += int(np.rint(angle / (2 * np.pi / 10))) % 10 == label
    assert hits / len(ds) > 0.9


def test_synthetic_is_learnable_by_position_not_by_brightness():
    spec = DATASETS["synthetic"]
    train = load_synthetic(spec, "train", num_train=1000, seed=0)
    test = load_synthetic(spec, "test", num_test=300, seed=0)
    x, xt = train.images.reshape(len(train), -1) / 255.0, test.images.reshape(len(test), -1) / 255.0
    centroids = np.stack([x[train.labels == k].mean(0) for k in range(10)])
    nearest = np.argmin(((xt[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (nearest == test.labels).mean() > 0.9
    brightness = np.array([x[train.labels == k].mean() for k in range(10)])
    by_brightness = np.argmin(np.abs(xt.mean(1)[:, None] - brightness[None]), axis=1)
    assert (by_brightness == test.labels).mean() < 0.25  # chance is 0.1


@pytest.mark.parametrize(
    "kwargs", [{"num_train": 0}, {"num_train": -3}, {"num_train": 2.5}, {"num_train": True}]
)
def test_synthetic_rejects_bad_sizes(kwargs):
    with pytest.raises(DataError, match=r"num_train must be a positive integer"):
        load_synthetic(DATASETS["synthetic"], "train", **kwargs)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_a_seed_that_is_no_count_is_a_data_error(seed):
    with pytest.raises(DataError, match=r"seed must be an int >= 0 .*got"):
        load_splits("synthetic", validation_size=2, seed=seed, num_train=20, num_test=5)
