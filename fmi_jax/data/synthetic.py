"""Deterministic synthetic image datasets that a small CNN can learn quickly.

Two datasets, for tests and smoke runs that must not depend on downloaded data:

* ``synthetic``: 28x28x1, like the MNIST family;
* ``synthetic_rgb``: 32x32x3, like CIFAR-10.

Each has 10 balanced classes. An image of class ``k`` shows a bright Gaussian
blob whose centre sits at angle ``36 * k`` degrees on a circle around the image
centre, jittered by about a pixel, with random size, brightness and (for RGB)
colour. Every image also carries a dimmer distractor bar at a random place and
angle, a random background level and pixel noise. The class is decided by
*where* the bright blob is, not by overall brightness or colour, so
attributions of a trained model should highlight the blob.

Measured with 2048 training and 512 test images (seed 0): a two-conv-layer CNN
trained with Adam (lr 1e-3, batch 64) reaches 97-98% test accuracy on
``synthetic`` and 99-100% on ``synthetic_rgb`` within 100-300 steps; a
nearest-class-mean classifier gets 98% / 99.6%; classifying by mean brightness
gets 10% (chance). The remaining errors are blobs jittered towards a
neighbouring class's position.

Generation is deterministic in ``seed``; the train and test splits are drawn
from independent streams of the same seed, so they never share images.
"""

from __future__ import annotations

import numpy as np

from fmi_jax.data.dataset import Dataset
from fmi_jax.data.errors import DataError
from fmi_jax.data.registry import DatasetSpec
from fmi_jax.data.validation import validate_arrays

__all__ = ["DEFAULT_SIZES", "load_synthetic", "make_images"]

#: Default number of examples per split.
DEFAULT_SIZES: dict[str, int] = {"train": 2048, "test": 512}
_SPLIT_STREAM = {"train": 0, "test": 1}
_CHUNK = 1024  # images rendered at once; bounds float32 scratch memory


def load_synthetic(
    spec: DatasetSpec,
    split: str,
    *,
    num_train: int = DEFAULT_SIZES["train"],
    num_test: int = DEFAULT_SIZES["test"],
    seed: int = 0,
) -> Dataset:
    """Generates one split of a synthetic dataset.

    Args:
        spec: The dataset's spec (``DATASETS['synthetic']`` or
            ``DATASETS['synthetic_rgb']``).
        split: ``'train'`` or ``'test'``.
        num_train: Number of training examples.
        num_test: Number of test examples.
        seed: Seed; equal seeds give identical datasets.

    Returns:
        A :class:`Dataset` with balanced labels.

    Raises:
        DataError: If a size is not a positive integer.
    """
    num = {"train": num_train, "test": num_test}[split]
    if not isinstance(num, (int, np.integer)) or isinstance(num, bool) or num <= 0:
        raise DataError(f"num_{split} must be a positive integer, got {num!r}.")
    images, labels = make_images(
        int(num), spec.image_shape, spec.num_classes, seed=seed, stream=_SPLIT_STREAM[split]
    )
    where = f"synthetic generator ({spec.name}, seed={seed})"
    images, labels = validate_arrays(
        images,
        labels,
        image_shape=spec.image_shape,
        num_classes=spec.num_classes,
        images_from=where,
    )
    return Dataset(images, labels, spec.name, split, spec.class_names, source=where)


def make_images(
    num: int,
    image_shape: tuple[int, int, int],
    num_classes: int,
    *,
    seed: int,
    stream: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Renders ``num`` synthetic images and their balanced labels.

    Args:
        num: Number of images.
        image_shape: ``(H, W, C)``; ``C`` is 1 or 3.
        num_classes: Number of blob positions (classes).
        seed: Seed of the generator.
        stream: Independent sub-stream of the seed (one per split).

    Returns:
        ``uint8`` images ``(num, H, W, C)`` and ``int32`` labels ``(num,)``,
        each class occurring ``num // num_classes`` or one more times.
    """
    rng = np.random.default_rng([seed, stream])
    height, width, channels = image_shape
    labels = rng.permutation(np.arange(num) % num_classes).astype(np.int32)
    params = _draw_parameters(rng, labels, num_classes, height, width, channels)
    images = np.empty((num, height, width, channels), np.uint8)
    for start in range(0, num, _CHUNK):
        chunk = slice(start, min(start + _CHUNK, num))
        images[chunk] = _render({k: v[chunk] for k, v in params.items()}, rng, height, width)
    return images, labels


def _draw_parameters(
    rng: np.random.Generator,
    labels: np.ndarray,
    num_classes: int,
    height: int,
    width: int,
    channels: int,
) -> dict[str, np.ndarray]:
    num = labels.shape[0]
    angle = 2 * np.pi * labels / num_classes
    radius = 0.3 * min(height, width)
    colour = np.ones((num, channels)) if channels == 1 else rng.uniform(0.35, 1.0, (num, channels))
    return {
        "blob_y": (height - 1) / 2 - radius * np.cos(angle) + rng.normal(0, 1.0, num),
        "blob_x": (width - 1) / 2 + radius * np.sin(angle) + rng.normal(0, 1.0, num),
        "blob_sigma": rng.uniform(1.4, 2.4, num),
        "blob_amp": rng.uniform(150, 220, num),
        "bar_y": rng.uniform(0, height - 1, num),
        "bar_x": rng.uniform(0, width - 1, num),
        "bar_angle": rng.uniform(0, np.pi, num),
        "bar_amp": rng.uniform(80, 150, num),
        "background": rng.uniform(0, 40, num),
        "colour": colour,
    }


def _render(
    p: dict[str, np.ndarray], rng: np.random.Generator, height: int, width: int
) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy[None], xx[None]

    def col(name: str) -> np.ndarray:
        return p[name].astype(np.float32)[:, None, None]

    blob = col("blob_amp") * np.exp(
        -((yy - col("blob_y")) ** 2 + (xx - col("blob_x")) ** 2) / (2 * col("blob_sigma") ** 2)
    )
    # A bar: distance to a line through (bar_y, bar_x), cut to half-length 5 px.
    dy, dx = yy - col("bar_y"), xx - col("bar_x")
    sin, cos = np.sin(col("bar_angle")), np.cos(col("bar_angle"))
    across, along = np.abs(dx * sin - dy * cos), np.abs(dx * cos + dy * sin)
    bar = col("bar_amp") * np.exp(-(across**2) / 1.0) * (along < 5)
    colour = p["colour"].astype(np.float32)[:, None, None, :]
    pixels = col("background")[..., None] + (blob + bar)[..., None] * colour
    pixels += rng.normal(0, 20, pixels.shape).astype(np.float32)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
