"""ImageNet-1k labels and torchvision's input normalisation.

``IMAGENET_CLASSES[i]`` is the name of class ``i`` of the ILSVRC-2012 classifiers
(torchvision's ``weights.meta['categories']``, index 0 ``'tench'``), for labelling the
predictions of pretrained models such as MobileNetV3. The names are read from
``imagenet_classes.txt`` next to this module (one a line, in index order; written by
``scripts/make_mobilenet_fixture.py --classes``).

Pretrained torchvision models expect RGB images in [0, 1] normalised per channel:
``(image - IMAGENET_MEAN) / IMAGENET_STD`` (:func:`normalize`).
"""

from __future__ import annotations

from importlib import resources

import numpy as np

__all__ = ["IMAGENET_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "normalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _read_classes() -> tuple[str, ...]:
    text = resources.files("fmi_jax.data").joinpath("imagenet_classes.txt").read_text("utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt has {len(names)} names, expected 1000")
    return names


IMAGENET_CLASSES: tuple[str, ...] = _read_classes()


def normalize(images: np.ndarray) -> np.ndarray:
    """NHWC RGB images in [0, 1] (or uint8 in [0, 255]) -> float32, normalised with
    ``IMAGENET_MEAN`` and ``IMAGENET_STD`` as torchvision's pretrained models expect."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    return ((images.astype(np.float32) - mean) / std).astype(np.float32)
