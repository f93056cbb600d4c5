"""ImageNet-1k labels and torchvision's input normalisation.

``IMAGENET_CLASSES[i]`` is the name of class ``i`` of the ILSVRC-2012 classifiers
(torchvision's ``weights.meta['categories']``, index 0 ``'tench'``), for labelling the
predictions of pretrained models such as MobileNetV3. The names are read from
``imagenet_classes.txt`` next to this module (one a line, in index order; written by
``scripts/make_mobilenet_fixture.py --classes``).

Pretrained torchvision models expect RGB images in [0, 1] normalised per channel:
``(image - IMAGENET_MEAN) / IMAGENET_STD`` (:func:`normalize`, which also takes uint8
pixels and other statistics in the same [0, 1] units).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import numpy as np

__all__ = [
    "IMAGENET_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "check_mean_std",
    "normalize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _read_classes() -> tuple[str, ...]:
    text = resources.files("fmi_jax.data").joinpath("imagenet_classes.txt").read_text("utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt has {len(names)} names, expected 1000")
    return names


IMAGENET_CLASSES: tuple[str, ...] = _read_classes()


def check_mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``mean`` and ``std`` as float32 ``(3,)`` arrays, or ValueError: three values each,
    in the units of images scaled to [0, 1] (``0 <= mean <= 1``, ``0 < std <= 1``), so
    pixel-scale statistics (``mean=(123.675, ...)``, as some toolkits write them), which
    would turn every image into a nearly constant grey, are refused."""
    mean_arr = np.asarray(mean, np.float32)
    std_arr = np.asarray(std, np.float32)
    if mean_arr.shape != (3,) or std_arr.shape != (3,) or not np.all(std_arr > 0):
        raise ValueError(f"mean and std need three values (std > 0), got {mean}, {std}")
    if not (np.all((mean_arr >= 0) & (mean_arr <= 1)) and np.all(std_arr <= 1)):
        raise ValueError(
            f"mean and std apply to images scaled to [0, 1], got mean={tuple(mean)}, "
            f"std={tuple(std)}: divide pixel-scale values by 255"
        )
    return mean_arr, std_arr


def normalize(
    images: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """RGB images ``(..., 3)``, uint8 in [0, 255] or floating-point in [0, 1] -> float32
    ``(image - mean) / std``, by default as torchvision's pretrained models expect.

    Other integer types, and floating-point values outside [0, 1] (pixels not yet divided
    by 255), are a ValueError rather than a silently wrong input.
    """
    mean_arr, std_arr = check_mean_std(mean, std)
    images = np.asarray(images)
    if images.dtype == np.uint8:
        scaled = images.astype(np.float32) / np.float32(255)
    elif np.issubdtype(images.dtype, np.floating):
        if images.size and not (images.min() >= 0 and images.max() <= 1):
            raise ValueError(
                f"floating-point images must be in [0, 1], got values in "
                f"[{images.min():g}, {images.max():g}]: pass uint8 pixels or divide by 255"
            )
        scaled = images.astype(np.float32)
    else:
        raise ValueError(
            f"images must be uint8 (0..255) or floating-point in [0, 1], got {images.dtype}"
        )
    if scaled.shape[-1:] != (3,):
        raise ValueError(f"images must be RGB with channels last (..., 3), got {images.shape}")
    return ((scaled - mean_arr) / std_arr).astype(np.float32)
