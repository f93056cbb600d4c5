"""Image layout: fmi_jax's images are channels-last, ``(H, W, C)``, as in Flax.

One rule, shared by every layer that takes images (the attribution methods and metrics
that draw on the image plane, the training data, the figures), tells an array laid out
channels-first, ``(C, H, W)`` as PyTorch has it, from a channels-last one without
knowing the model: read the wrong way, such an array gives maps of ``(C, H)`` or trains
on rows as if they were pixels, without an error. Nothing here imports jax or numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MAX_CHANNELS", "looks_channels_first"]

#: The most channels an image has: grey, RGB, RGBA.
MAX_CHANNELS = 4


def looks_channels_first(shape: Sequence[int]) -> bool:
    """Whether the last three axes of ``shape`` read as ``(C, H, W)``: the first could
    be channels (at most ``MAX_CHANNELS``) and the last could not. No channels-last
    image taller than ``MAX_CHANNELS`` pixels, or of at most ``MAX_CHANNELS``
    channels, is taken for one."""
    *_, first, _, last = shape
    return first <= MAX_CHANNELS < last
