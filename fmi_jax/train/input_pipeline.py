"""The dataset on the accelerator, and batches gathered there.

Images stay uint8 on the device (60k Fashion-MNIST images are 47 MB); each
training step gathers its batch from them with a device-side permutation, so a
step never copies data from the host. Conversion to float happens inside the
jitted step.

Randomness is a pure function of (seed, epoch): the permutation of epoch `e` is
`permutation(fold_in(data_key, e))`, so a run resumed at epoch `e` sees exactly
the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.layout import looks_channels_first

__all__ = ["DeviceDataset", "eval_batches", "to_float"]


def to_float(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [0, 1], the input range every model expects."""
    return images.astype(jnp.float32) / 255.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeviceDataset:
    """uint8 images (N, H, W, C) and int32 labels (N,), resident on the device."""

    images: jax.Array
    labels: jax.Array

    @classmethod
    def from_numpy(
        cls,
        images: np.ndarray,
        labels: np.ndarray,
        device=None,
        *,
        num_classes: int | None = None,
    ) -> DeviceDataset:
        """Checks and places the arrays; labels must be class indices in
        ``[0, num_classes)`` (a label outside would be dropped from the confusion
        matrix, or wrap round to another class, without an error)."""
        images, labels = np.asarray(images), np.asarray(labels)
        if images.dtype != np.uint8:
            raise ValueError(
                f"DeviceDataset wants uint8 images in [0, 255], got {images.dtype}: the "
                "training steps divide by 255 (to_float); convert, e.g. "
                "np.round(images * 255).astype(np.uint8) for images in [0, 1]"
            )
        if images.ndim != 4 or looks_channels_first(images.shape[1:]):
            raise ValueError(
                f"DeviceDataset wants images (N, H, W, C), channels last, got shape "
                f"{images.shape}: add a channel axis (images[..., None]) or transpose "
                "channels-first images (images.transpose(0, 2, 3, 1))"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be class indices (N,) of an integer dtype, got {labels.dtype} "
                f"of shape {labels.shape} (one-hot labels: labels.argmax(-1))"
            )
        if len(labels) and (labels.min() < 0 or (num_classes and labels.max() >= num_classes)):
            classes = f"[0, {num_classes})" if num_classes else "[0, classes)"
            raise ValueError(
                f"labels must be in {classes}, got values from {labels.min()} to {labels.max()}"
            )
        return cls(jax.device_put(images, device), jax.device_put(labels.astype(np.int32), device))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full batches per epoch (the remainder is dropped so every step has one shape)."""
        steps = len(self) // batch_size
        if steps == 0:
            raise ValueError(
                f"batch_size {batch_size} is larger than the {len(self)} training examples; "
                "lower --config.batch_size"
            )
        return steps

    def epoch_permutation(self, data_key: jax.Array, epoch: int) -> jax.Array:
        return jax.random.permutation(jax.random.fold_in(data_key, epoch), len(self))


def gather_batch(
    data: DeviceDataset, perm: jax.Array, step_in_epoch: jax.Array, batch_size: int
) -> dict[str, jax.Array]:
    """The `step_in_epoch`-th batch of a permutation, gathered on the device."""
    idx = jax.lax.dynamic_slice_in_dim(perm, step_in_epoch * batch_size, batch_size)
    return {"image": data.images[idx], "label": data.labels[idx]}


def eval_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index and mask arrays covering 0..n-1 in batches of one fixed shape.

    The last batch is padded with index 0 and mask 0, so evaluation compiles once.
    """
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        mask = idx < n
        yield np.where(mask, idx, 0).astype(np.int32), mask.astype(np.float32)
