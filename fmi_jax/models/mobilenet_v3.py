"""MobileNetV3 (Large and Small), layer for layer torchvision's architecture.

Howard et al., "Searching for MobileNetV3", ICCV 2019, arXiv:1905.02244, as implemented
in torchvision (``torchvision/models/mobilenetv3.py``, ``_mobilenet_v3_conf`` without
the reduced tail or dilation)::

    features_0:   3x3 conv, stride 2 (16 channels) -> BN -> hardswish
    features_1..: inverted residual blocks (Tables 1 and 2 of the paper):
                    [1x1 expand conv -> BN -> act]   (only when expanded != input)
                    kxk depthwise conv -> BN -> act
                    [squeeze-excitation]             (avgpool -> 1x1 conv -> ReLU
                                                      -> 1x1 conv -> hardsigmoid, x *)
                    1x1 project conv -> BN
                  with a residual connection when stride is 1 and in == out channels
    features_N:   1x1 conv to 6 x (last block's channels) -> BN -> hardswish
    global average pooling
    classifier_0: dense (1280 Large / 1024 Small, scaled by width_mult) -> hardswish
    -> dropout -> classifier_3: dense to the logits

Channel counts are scaled by ``width_mult`` and rounded with torchvision's
``_make_divisible(c, 8)``. Convolutions pad ``(k - 1) // 2`` on every side, as torch
does (not ``'SAME'``, which pads stride-2 convolutions asymmetrically). Batch norm uses
eps 1e-3 and torch momentum 0.01 (flax momentum 0.99); its statistics live in
``batch_stats``. Note: torch updates ``running_var`` with the unbiased batch variance,
flax with the biased one, so training statistics differ slightly; evaluation (what the
converted torchvision weights are for) is identical.

Submodules mirror torchvision's ``state_dict`` keys, so a checkpoint maps by name
(see :mod:`fmi_jax.models.torchvision_import`): ``features.3.block.1.0.weight`` is
``features_3/block_1/conv/kernel``, ``features.3.block.2.fc1.bias`` is
``features_3/block_2/fc1/bias``, ``features.0.1.running_var`` is
``batch_stats/features_0/bn/var``, ``classifier.3.weight`` is ``classifier_3/kernel``.
Every ``features_<i>`` is a named submodule whose output Grad-CAM can capture;
``conv_layer_names`` lists them first to last.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmi_jax.models import layers

__all__ = [
    "BlockConfig",
    "ConvBNAct",
    "InvertedResidual",
    "MobileNetV3",
    "SqueezeExcitation",
    "block_configs",
    "make_divisible",
]

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # torch's momentum=0.01


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: ``v`` rounded to a multiple of ``divisor``, at
    least ``min_value`` (default ``divisor``), and not more than 10% below ``v``."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class BlockConfig(NamedTuple):
    """One inverted residual block (channels already scaled by the width multiplier)."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hs: bool
    stride: int


# (input, kernel, expanded, out, squeeze-excitation, activation, stride), Tables 1 and 2.
_LARGE = (
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
)
_SMALL = (
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
    (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1),
)
_LAST_CHANNEL = {"large": 1280, "small": 1024}


def block_configs(variant: str, width_mult: float = 1.0) -> tuple[tuple[BlockConfig, ...], int]:
    """The inverted residual blocks of ``variant`` and the classifier's hidden width,
    as torchvision's ``_mobilenet_v3_conf(variant, width_mult)``."""
    if variant not in _LAST_CHANNEL:
        raise ValueError(f"MobileNetV3 variant must be 'large' or 'small', got {variant!r}")
    table = _LARGE if variant == "large" else _SMALL

    def adjust(c: int) -> int:
        return make_divisible(c * width_mult, 8)

    blocks = tuple(
        BlockConfig(adjust(i), k, adjust(e), adjust(o), se, act == "HS", s)
        for i, k, e, o, se, act, s in table
    )
    return blocks, adjust(_LAST_CHANNEL[variant])


def _conv(
    features: int,
    kernel: int,
    train: bool,
    dtype,
    name: str,
    strides: int = 1,
    groups: int = 1,
    use_bias: bool = False,
) -> nn.Conv:
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        conv_general_dilated=layers.model_conv(train),
        name=name,
    )


class ConvBNAct(nn.Module):
    """torchvision's ``Conv2dNormActivation``: conv (no bias) -> BN -> activation.
    ``activation`` is ``'relu'``, ``'hardswish'`` or ``None``; ``groups`` equal to the
    channels makes the conv depthwise."""

    features: int
    kernel: int = 1
    strides: int = 1
    groups: int = 1
    activation: str | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = _conv(self.features, self.kernel, train, self.dtype, "conv", self.strides, self.groups)(
            x
        )
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            dtype=self.dtype,
            name="bn",
        )(x)
        if self.activation == "relu":
            return nn.relu(x)
        if self.activation == "hardswish":
            return nn.hard_swish(x)
        if self.activation is not None:
            raise ValueError(f"unknown activation {self.activation!r}")
        return x


class SqueezeExcitation(nn.Module):
    """Hu et al., CVPR 2018 (arXiv:1709.01507), as torchvision's ``SqueezeExcitation``
    with a hardsigmoid gate: ``x * hardsigmoid(fc2(relu(fc1(avgpool(x)))))``, where
    fc1 and fc2 are 1x1 convolutions with bias."""

    squeeze_channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        scale = x.mean(axis=(1, 2), keepdims=True)
        scale = _conv(self.squeeze_channels, 1, train, self.dtype, "fc1", use_bias=True)(scale)
        scale = nn.relu(scale)
        scale = _conv(x.shape[-1], 1, train, self.dtype, "fc2", use_bias=True)(scale)
        return x * nn.hard_sigmoid(scale)


class InvertedResidual(nn.Module):
    """The MobileNetV3 bottleneck (Sandler et al., CVPR 2018, arXiv:1801.04381, with
    squeeze-excitation and hardswish from Howard et al. 2019). Its layers are
    ``block_0``, ``block_1``, ... in torchvision's order (the expand conv is absent
    when the block does not expand, shifting the indices)."""

    config: BlockConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        cnf = self.config
        act = "hardswish" if cnf.use_hs else "relu"
        y = x
        index = 0
        if cnf.expanded_channels != cnf.input_channels:
            y = ConvBNAct(
                cnf.expanded_channels, 1, activation=act, dtype=self.dtype, name=f"block_{index}"
            )(y, train=train)
            index += 1
        y = ConvBNAct(
            cnf.expanded_channels,
            cnf.kernel,
            cnf.stride,
            groups=cnf.expanded_channels,
            activation=act,
            dtype=self.dtype,
            name=f"block_{index}",
        )(y, train=train)
        index += 1
        if cnf.use_se:
            squeeze = make_divisible(cnf.expanded_channels // 4, 8)
            y = SqueezeExcitation(squeeze, self.dtype, name=f"block_{index}")(y, train=train)
            index += 1
        y = ConvBNAct(cnf.out_channels, 1, dtype=self.dtype, name=f"block_{index}")(y, train=train)
        if cnf.stride == 1 and cnf.input_channels == cnf.out_channels:
            y = y + x
        return y


class MobileNetV3(nn.Module):
    """See the module docstring.

    Attributes:
      variant: ``'large'`` or ``'small'``.
      width_mult: channel multiplier (torchvision's ``width_mult``).
      num_classes: logits.
      dropout: dropout rate between the two classifier layers (train only).
      dtype: compute dtype (parameters stay float32).
    """

    variant: str = "large"
    width_mult: float = 1.0
    num_classes: int = 1000
    dropout: float = 0.2
    dtype: jnp.dtype = jnp.float32

    @property
    def conv_layer_names(self) -> tuple[str, ...]:
        """``features_0`` (stem), every block, and the last 1x1 conv, first to last."""
        blocks, _ = block_configs(self.variant, self.width_mult)
        return tuple(f"features_{i}" for i in range(len(blocks) + 2))

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        blocks, last_channel = block_configs(self.variant, self.width_mult)
        x = x.astype(self.dtype)
        x = ConvBNAct(
            blocks[0].input_channels,
            3,
            2,
            activation="hardswish",
            dtype=self.dtype,
            name="features_0",
        )(x, train=train)
        for i, cnf in enumerate(blocks):
            x = InvertedResidual(cnf, self.dtype, name=f"features_{i + 1}")(x, train=train)
        x = ConvBNAct(
            6 * blocks[-1].out_channels,
            1,
            activation="hardswish",
            dtype=self.dtype,
            name=f"features_{len(blocks) + 1}",
        )(x, train=train)
        x = x.mean(axis=(1, 2))
        x = nn.Dense(last_channel, dtype=self.dtype, name="classifier_0")(x)
        x = nn.hard_swish(x)
        if self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier_3")(x)
        return x.astype(jnp.float32)
