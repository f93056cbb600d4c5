"""Augmentation smoothing (test-time augmentation): average any attribution method over
mirrored and rescaled copies of the input, each map mapped back onto the original.

``augmentation_smoothing(method, flip=True, factors=(0.9, 1.0, 1.1))`` is a transform,
like :func:`~fmi_jax.attribution.noise_tunnel`: it takes a method with the one
signature of :mod:`fmi_jax.attribution` and returns another, which explains every
augmented copy ``x_a = c * F(x)`` (``F`` the identity or the left-right mirror, ``c``
a brightness factor) for the same class and averages the maps brought back,

    A(x) = 1 / |augmentations| * sum_a F(method(x_a)),

since mirroring is its own inverse. This is pytorch-grad-cam's ``aug_smooth=True``
(its default augmentations, through the ``ttach`` package: the mirror and the factors
0.9, 1 and 1.1, six copies), which "centres" a CAM on the object: evidence the model
finds only on one side of it, or only at one brightness, is averaged down. A model
that is itself mirror-symmetric gives the same map with or without the mirror.

Scaling: the package min-max scales every copy's map to ``[0, 1]`` (its CAMs come out
so) and averages those. ``scale='minmax'`` does the same (after a ReLU, as the
package's CAMs have); ``scale='none'``, the default, averages the maps as they come,
which keeps a signed method's signs and a map's units (a copy at factor 1.1 then
weighs in with whatever its own scale is).

Options tied to the input are transformed with it: a ``baseline`` (a number or an
array of images) becomes ``c * F(baseline)``, and a ``feature_mask`` of pixel groups
is mirrored with the image, so integrated gradients of a copy runs from the copy of
its baseline and a group of pixels stays the same pixels; ``patch=s`` (the grouped
methods' square patches) becomes that feature mask first, since patches laid out on a
mirrored copy of an image whose width ``s`` does not divide would start from its other
edge. Every other option is passed on unchanged: an occlusion window's grid is laid
from the left edge of each copy.

Targets: ``target=None`` is resolved once, on the clean input, so every copy explains
the class the model predicts for ``x``. Keys: with one key, copy ``a`` gets
``fold_in(key, a)`` (and the method splits it per example as it always does); with one
key per example, copy ``a`` of example ``i`` gets ``fold_in(key_i, a)``. A stochastic
method thus draws fresh noise per copy; a deterministic one may be given no key.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fmi_jax.attribution.core import (
    Array,
    Method,
    Target,
    as_input,
    baseline_is_distribution,
    image_size,
    method_name,
    minmax_scale,
    require_key,
    resolve_target,
)
from fmi_jax.attribution.handle import as_flax_model
from fmi_jax.attribution.perturbation import square_patches

__all__ = ["AUGMENTATION_SCALES", "augmentation_smoothing"]

#: How :func:`augmentation_smoothing` treats each copy's map before averaging.
AUGMENTATION_SCALES = ("none", "minmax")


def _mirrored(value: Any, mirror: bool, grayscale: bool) -> Any:
    """An option that broadcasts to the images, mirrored left to right. With channels,
    its width is its second-to-last axis whenever it has two or more (``(W, C)``,
    ``(H, W, C)``, ``(N, H, W, C)``, a batch of references ``(K, H, W, C)``); numbers
    and vectors over the channels are kept as given. For grayscale ``(N, H, W)`` images
    the width is the last axis of anything but a number."""
    # A concrete mask stays concrete (NumPy): the grouped methods read it on the host.
    array = value if isinstance(value, np.ndarray) else jnp.asarray(value)
    if not mirror or array.ndim < (1 if grayscale else 2):
        return array
    axis = -1 if grayscale else -2
    return (
        np.flip(array, axis=axis) if isinstance(array, np.ndarray) else jnp.flip(array, axis=axis)
    )


def augmentation_smoothing(
    method: Method,
    *,
    flip: bool = True,
    factors: Sequence[float] = (0.9, 1.0, 1.1),
    scale: str = "none",
) -> Method:
    """``method`` averaged over mirrored and brightness-scaled copies of each image
    (module docstring).

    Args:
      method: an attribution method with the common signature (a CAM, saliency,
        integrated gradients, ...) whose maps are images, ``(N, H, W)`` or
        ``(N, H, W, C)``.
      flip: also explain each image mirrored left to right.
      factors: the brightness factors, positive numbers; ``(1.0,)`` for none.
      scale: ``'none'`` averages the maps as they are; ``'minmax'`` scales each copy's
        map, after a ReLU, to ``[0, 1]`` per image first, as pytorch-grad-cam does.

    Returns:
      ``augmented(model, x, target=None, *, key=None, **options)``; ``model``, ``key``
      and every other option go to ``method`` for each copy. Maps are float32, shaped
      as ``method``'s.
    """
    name = method_name(method, "augmentation_smoothing")
    if not isinstance(flip, (bool, np.bool_)):
        raise ValueError(f"augmentation_smoothing: flip must be True or False; got {flip!r}")
    try:
        factors = tuple(factors)
    except TypeError:
        raise ValueError(
            f"augmentation_smoothing: factors must be a sequence of positive numbers; got "
            f"{factors!r}"
        ) from None
    if not factors or not all(
        isinstance(f, numbers.Real) and not isinstance(f, bool) and 0 < f < np.inf for f in factors
    ):
        raise ValueError(
            f"augmentation_smoothing: factors must be one or more positive numbers; got {factors!r}"
        )
    if scale not in AUGMENTATION_SCALES:
        raise ValueError(
            f"augmentation_smoothing: scale must be one of {AUGMENTATION_SCALES}; got {scale!r}"
        )
    copies = [
        (mirror, float(f)) for mirror in ((False, True) if flip else (False,)) for f in factors
    ]

    def augmented(
        model: Any, x: Array, target: Target = None, *, key: Array | None = None, **options: Any
    ) -> Array:
        x = as_input(x)
        # Mirrors W: (N, H, W, C) or grayscale (N, H, W); refuses (N, C, H, W).
        image_size(x, f"augmentation_smoothing({name})")
        grayscale = x.ndim == 3
        # A Flax model (a (module, variables) pair or an NNX module) becomes its handle
        # once: the predicted class and every copy's method share it.
        if isinstance(model, (tuple, nnx.Module)):
            model = as_flax_model(model, name)
        target = resolve_target(model, x, target, batch_size=options.get("batch_size"))
        keys = None if key is None else jnp.asarray(require_key(key, augmented.__name__))
        if flip and options.get("patch") is not None and options.get("feature_mask") is None:
            options["feature_mask"] = square_patches(x.shape[1:], options.pop("patch"))
        if keys is not None and not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
            keys = jax.random.wrap_key_data(keys)  # a legacy uint32 key, or a batch
        total = None
        for index, (mirror, factor) in enumerate(copies):
            inputs = factor * (x[:, :, ::-1] if mirror else x)
            copy_options = dict(options)
            if "baseline" in options and options["baseline"] is not None:
                copy_options["baseline"] = factor * _mirrored(
                    options["baseline"], mirror, grayscale
                )
            if "feature_mask" in options and options["feature_mask"] is not None:
                copy_options["feature_mask"] = _mirrored(options["feature_mask"], mirror, grayscale)
            if keys is not None:
                fold = lambda k, a=index: jax.random.fold_in(k, a)
                copy_options["key"] = fold(keys) if keys.ndim == 0 else jax.vmap(fold)(keys)
            maps = jnp.asarray(method(model, inputs, target, **copy_options), jnp.float32)
            if mirror:
                maps = maps[:, :, ::-1]
            if scale == "minmax":
                maps = minmax_scale(jax.nn.relu(maps), tuple(range(1, maps.ndim)))
            total = maps if total is None else total + maps
        return total / len(copies)

    augmented.__name__ = augmented.__qualname__ = f"augmentation_smoothing({name})"
    augmented.baseline_is_distribution = baseline_is_distribution(method)
    return augmented
