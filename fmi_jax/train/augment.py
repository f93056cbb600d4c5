"""On-device data augmentation for float images (B, H, W, C) in [0, 1].

All transforms are pure functions of a key, vectorised over the batch, and keep
shape and dtype:

* horizontal flip with probability 1/2;
* random crop: zero-pad by `crop_padding` pixels on each side and cut a random
  H x W window (the CIFAR/ResNet recipe of He et al. 2016);
* random erasing (Zhong et al. 2020, "Random Erasing Data Augmentation"): with
  probability `erasing`, a rectangle covering 2%-40% of the image with aspect
  ratio in [0.3, 3.3] is filled with uniform noise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["augment"]


def _flip(x: jax.Array, key: jax.Array) -> jax.Array:
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1, :], x)


def _crop(x: jax.Array, key: jax.Array, padding: int) -> jax.Array:
    b, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)
    cut = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c))
    return jax.vmap(cut)(padded, offsets)


def _erase(
    x: jax.Array, key: jax.Array, probability: float, area=(0.02, 0.4), aspect=(0.3, 3.3)
) -> jax.Array:
    b, h, w, _ = x.shape
    k_apply, k_area, k_aspect, k_top, k_left, k_fill = jax.random.split(key, 6)
    apply = jax.random.bernoulli(k_apply, probability, (b,))
    target_area = jax.random.uniform(k_area, (b,), minval=area[0], maxval=area[1]) * h * w
    log_ratio = jax.random.uniform(
        k_aspect, (b,), minval=jnp.log(aspect[0]), maxval=jnp.log(aspect[1])
    )
    ratio = jnp.exp(log_ratio)
    eh = jnp.clip(jnp.round(jnp.sqrt(target_area * ratio)), 1, h).astype(jnp.int32)
    ew = jnp.clip(jnp.round(jnp.sqrt(target_area / ratio)), 1, w).astype(jnp.int32)
    top = jnp.floor(jax.random.uniform(k_top, (b,)) * (h - eh + 1)).astype(jnp.int32)
    left = jnp.floor(jax.random.uniform(k_left, (b,)) * (w - ew + 1)).astype(jnp.int32)
    rows = jnp.arange(h)[None, :]
    cols = jnp.arange(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]
    fill = jax.random.uniform(k_fill, x.shape, x.dtype)
    return jnp.where(mask[..., None], fill, x)


def augment(
    images: jax.Array,
    key: jax.Array,
    *,
    flip: bool = False,
    crop_padding: int = 0,
    erasing: float = 0.0,
) -> jax.Array:
    """Applies the enabled transforms in the order flip, crop, erase."""
    k_flip, k_crop, k_erase = jax.random.split(key, 3)
    if flip:
        images = _flip(images, k_flip)
    if crop_padding:
        images = _crop(images, k_crop, crop_padding)
    if erasing:
        images = _erase(images, k_erase, erasing)
    return images
