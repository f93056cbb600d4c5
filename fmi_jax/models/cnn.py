"""Configurable plain CNNs: the Fashion-MNIST, MNIST and tunable presets.

Every model takes float32 images in [0, 1], NHWC, and returns logits. Each
convolution block (conv -> optional batch norm -> ReLU) is a submodule with a
stable name, `conv1`, `conv2`, ..., whose output (before pooling) is what
Grad-CAM-style methods capture: with `capture_intermediates` it appears as
`intermediates['conv2']['__call__']`. Dense layers are `fc1`, `fc2`, ... and the
classifier is `head`.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmi_jax.models import layers

__all__ = ["ConvBlock", "SimpleCNN"]


class ConvBlock(nn.Module):
    """Conv -> (BatchNorm) -> ReLU. Its output is the block's feature map."""

    features: int
    kernel_size: int = 3
    batch_norm: bool = False
    dtype: jnp.dtype = jnp.float32
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            padding=self.padding,
            use_bias=not self.batch_norm,
            dtype=self.dtype,
            conv_general_dilated=layers.model_conv(train),
            name="conv",
        )(x)
        if self.batch_norm:
            x = nn.BatchNorm(
                use_running_average=not train, momentum=0.9, dtype=self.dtype, name="bn"
            )(x)
        return nn.relu(x)


class SimpleCNN(nn.Module):
    """conv blocks (each optionally followed by 2x2 max-pooling) -> dense layers -> head.

    Attributes:
      features: output channels of each conv block; the number of blocks.
      kernel_size: square kernel size of every conv.
      pool: for each block, whether a 2x2/2 max-pool follows it.
      dense: widths of the hidden fully connected layers.
      num_classes: logits.
      dropout: dropout rate after each hidden dense layer (train only).
      batch_norm: batch norm after each conv (statistics in `batch_stats`).
      dtype: compute dtype (parameters stay float32).
      padding: 'SAME' (default) or 'VALID' (no padding: each conv shrinks the map by
        kernel_size - 1, as in the PyTorch CIFAR-10 tutorial network).
    """

    features: Sequence[int] = (32, 64, 128)
    kernel_size: int = 3
    pool: Sequence[bool] = (True, True, True)
    dense: Sequence[int] = (256,)
    num_classes: int = 10
    dropout: float = 0.0
    batch_norm: bool = False
    dtype: jnp.dtype = jnp.float32
    padding: str = "SAME"

    def setup_check(self) -> None:
        if len(self.pool) != len(self.features):
            raise ValueError(
                f"SimpleCNN: `pool` has {len(self.pool)} entries but there are "
                f"{len(self.features)} conv blocks (features={tuple(self.features)}); "
                "give one True/False per block."
            )

    def _check_size(self, x: jax.Array, size: tuple[int, ...], needs: int, layer: str) -> None:
        """A ValueError when the feature map ``x`` has shrunk below ``needs`` pixels a
        side before ``layer``: too many pooled blocks (or unpadded convolutions) for
        inputs of ``size``, which would otherwise fail inside Flax's initialisers."""
        if min(x.shape[1:3]) < needs:
            h, w = x.shape[1:3]
            raise ValueError(
                f"SimpleCNN: a {size[0]}x{size[1]} input is {h}x{w} before {layer}, which "
                f"needs at least {needs}x{needs}: use fewer conv blocks (features=)"
                + (", a smaller kernel_size" if layer.endswith("(unpadded)") else "")
                + " or larger images"
            )

    @property
    def conv_layer_names(self) -> tuple[str, ...]:
        """Names of the conv blocks, first to last (what Grad-CAM can target)."""
        return tuple(f"conv{i + 1}" for i in range(len(self.features)))

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        self.setup_check()
        size = tuple(x.shape[1:3])
        x = x.astype(self.dtype)
        for name, feats, pool in zip(self.conv_layer_names, self.features, self.pool):
            if isinstance(self.padding, str) and self.padding.upper() == "VALID":
                self._check_size(x, size, self.kernel_size, f"{name} (unpadded)")
            x = ConvBlock(
                feats, self.kernel_size, self.batch_norm, self.dtype, self.padding, name=name
            )(x, train=train)
            if pool:
                x = layers.max_pool(x, 2)
        self._check_size(x, size, 1, "the dense layers")
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.dense):
            x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"fc{i + 1}")(x))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
