"""A small residual network for 28 x 28 (or 32 x 32) images.

    stem (3x3 conv, BN, ReLU; `filters` channels)
    -> `num_blocks` residual blocks in three stages of widths
       filters, 2 filters, 4 filters, each later stage starting with stride 2
    -> global average pooling -> (dropout) -> dense head

Blocks are spread over the stages as evenly as possible, later stages taking the
remainder last: 3 blocks -> 1 + 1 + 1, 4 -> 2 + 1 + 1, 5 -> 2 + 2 + 1. On 28 x 28
inputs the stages see 28 x 28, 14 x 14 and 7 x 7 maps. A block is two 3x3
conv + BN layers with an identity shortcut, or a 1x1 conv + BN projection where the
width or resolution changes (He et al., CVPR 2016, arXiv:1512.03385, option B). With
`pre_activation` the blocks are BN -> ReLU -> conv twice and the sum is not
activated, followed by one BN + ReLU after the last block (He et al., ECCV 2016,
arXiv:1603.05027).

Padding: flax's ``'SAME'`` (``padding='same'``, the default, what every run and
number in docs/ was made with) pads a stride-2 3x3 convolution of an even-sized map
by 0 before and 1 after, so its output pixel (0, 0) is centred on input pixel 1
while the 1x1 stride-2 projection beside it reads pixel 0: in a downsampling block
the two branches are half an output pixel apart. ``padding='symmetric'`` pads
``kernel // 2`` on every side, as PyTorch's ``padding=1`` and torchvision's ResNets
do, and both branches are centred on the same pixels. Stride-1 layers pad alike
either way.

Batch-norm statistics live in the `batch_stats` collection: updated in training
(`train=True`, the train step marks it mutable), frozen in evaluation. The stem and
every block are named submodules (`stem`, `block1`, ..., `blockN`), so Grad-CAM can
name any of them; `conv_layer_names` lists them first to last.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmi_jax.models import layers

__all__ = ["ResNet", "ResidualBlock", "stage_of_blocks"]


def stage_of_blocks(num_blocks: int, stages: int = 3) -> tuple[int, ...]:
    """The stage (0, 1, 2) of each block: as even as possible, extra blocks early."""
    if num_blocks < 1:
        raise ValueError(f"ResNet needs at least one residual block, got num_blocks={num_blocks}")
    out = []
    for stage in range(stages):
        count = num_blocks // stages + (1 if stage < num_blocks % stages else 0)
        out += [stage] * count
    return tuple(out)


#: How the convolutions pad (see the module docstring).
PADDINGS = ("same", "symmetric")


def _conv(
    features: int, kernel: int, strides: int, train: bool, dtype, name: str, padding: str
) -> nn.Conv:
    if padding not in PADDINGS:
        raise ValueError(f"ResNet padding must be one of {PADDINGS}, got {padding!r}")
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding="SAME" if padding == "same" else ((kernel // 2, kernel // 2),) * 2,
        use_bias=False,
        dtype=dtype,
        conv_general_dilated=layers.model_conv(train),
        name=name,
    )


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (identity, or 1x1 projection when the shape
    changes). Post-activation: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)).
    Pre-activation: conv(relu(bn(conv(relu(bn(x)))))) + shortcut(x)."""

    features: int
    strides: int = 1
    pre_activation: bool = False
    dtype: jnp.dtype = jnp.float32
    padding: str = "same"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = functools.partial(_conv, train=train, dtype=self.dtype, padding=self.padding)
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=self.dtype
        )
        project = self.strides != 1 or x.shape[-1] != self.features
        if self.pre_activation:
            y = nn.relu(norm(name="bn1")(x))
            shortcut = conv(self.features, 1, self.strides, name="proj")(y) if project else x
            y = conv(self.features, 3, self.strides, name="conv1")(y)
            y = nn.relu(norm(name="bn2")(y))
            y = conv(self.features, 3, 1, name="conv2")(y)
            return y + shortcut
        shortcut = x
        if project:
            shortcut = conv(self.features, 1, self.strides, name="proj")(x)
            shortcut = norm(name="proj_bn")(shortcut)
        y = nn.relu(norm(name="bn1")(conv(self.features, 3, self.strides, name="conv1")(x)))
        # The last BN of each branch starts at zero scale, so every block starts as the
        # identity (Goyal et al. 2017), which helps the deeper configurations early on.
        y = norm(name="bn2", scale_init=nn.initializers.zeros)(
            conv(self.features, 3, 1, name="conv2")(y)
        )
        return nn.relu(y + shortcut)


class Stem(nn.Module):
    """3x3 conv -> BN -> ReLU (pre-activation networks: the conv alone)."""

    features: int
    pre_activation: bool = False
    dtype: jnp.dtype = jnp.float32
    padding: str = "same"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = _conv(self.features, 3, 1, train, self.dtype, name="conv", padding=self.padding)(x)
        if self.pre_activation:
            return x
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name="bn")(
            x
        )
        return nn.relu(x)


class ResNet(nn.Module):
    """See the module docstring.

    Attributes:
      num_blocks: residual blocks in all (the tuning grid: 3, 4, 5).
      filters: width of the stem and the first stage (the grid: 32, 64).
      pre_activation: pre-activation blocks instead of the original ones.
      dropout: dropout rate before the head (train only).
      num_classes: logits.
      dtype: compute dtype (parameters stay float32), e.g. bfloat16 on accelerators.
      padding: 'same' (flax's ``'SAME'``) or 'symmetric' (PyTorch's
        ``padding=kernel // 2``); they differ only in the stride-2 convolutions.
    """

    num_blocks: int = 3
    filters: int = 64
    pre_activation: bool = False
    dropout: float = 0.0
    num_classes: int = 10
    dtype: jnp.dtype = jnp.float32
    padding: str = "same"

    @property
    def conv_layer_names(self) -> tuple[str, ...]:
        """The stem and every block, first to last (what Grad-CAM can target)."""
        return ("stem",) + tuple(f"block{i + 1}" for i in range(self.num_blocks))

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        stages = stage_of_blocks(self.num_blocks)
        x = x.astype(self.dtype)
        x = Stem(self.filters, self.pre_activation, self.dtype, self.padding, name="stem")(
            x, train=train
        )
        previous = 0
        for i, stage in enumerate(stages):
            strides = 2 if stage != previous else 1
            previous = stage
            x = ResidualBlock(
                self.filters * 2**stage,
                strides,
                self.pre_activation,
                self.dtype,
                self.padding,
                name=f"block{i + 1}",
            )(x, train=train)
        if self.pre_activation:
            x = nn.BatchNorm(
                use_running_average=not train, momentum=0.9, dtype=self.dtype, name="final_bn"
            )(x)
            x = nn.relu(x)
        x = x.mean(axis=(1, 2))
        if self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
