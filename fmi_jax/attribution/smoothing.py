"""Saliency smoothed in image space by a Gaussian kernel.

Raw gradients of image classifiers are speckled at the pixel scale; convolving the
saliency map with a Gaussian trades that speckle for spatial resolution. Unlike
SmoothGrad (which smooths in input space by averaging gradients at noisy inputs, one
model evaluation per sample) this costs a single gradient and a convolution.

The kernel is separable: a 1-D Gaussian ``k[d] ∝ exp(-d^2 / (2 sigma^2))``,
``|d| <= radius = round(truncate * sigma)``, normalised to sum 1, applied along H and
then along W, per channel, with output size equal to input size.

Borders are padded by half-sample symmetric reflection (``numpy.pad(mode='symmetric')``,
``scipy.ndimage``'s default ``'reflect'``): ``... c b a | a b c ... x y z | z y x ...``.
Then the smoothing matrix S of an axis (``S[i, j]`` = sum of ``k[n - i]`` over the
positions n of the padded signal that hold a copy of pixel j) is symmetric: the
reflection places the copies of j around i exactly as it places the copies of i around
j, and k is even. Its rows sum to one (each output is a weighted average), hence so do
its columns: every pixel hands out exactly its own attribution mass. Total attribution
is preserved everywhere, borders included, whereas zero padding loses the mass that
falls outside the image and whole-sample reflection (``d c b | a b c``) counts border
pixels unevenly.

The smoothing is computed as that matrix (:func:`reflected_gaussian_matrix`), applied
as ``S_H @ map @ S_W.T`` per channel. The symmetric extension repeats with period
``2 L`` for an axis of L pixels, so the taps are summed by offset modulo ``2 L`` first:
a kernel much wider than the image costs one pass over its taps, not a convolution of a
padded signal as long as the kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.attribution.core import (
    Array,
    ModelFn,
    Target,
    as_input,
    as_number,
    image_size,
    refuse_baseline,
)
from fmi_jax.attribution.gradients import saliency

__all__ = [
    "MAX_KERNEL_RADIUS",
    "gaussian_kernel",
    "gaussian_smoothed_saliency",
    "reflected_gaussian_matrix",
    "separable_filter",
]

#: The widest kernel :func:`reflected_gaussian_matrix` builds, in pixels from its centre
#: (about a second of float64 work); a wider Gaussian has long since made every row of
#: the matrix the image mean.
MAX_KERNEL_RADIUS = 10**7

_TAPS_PER_CHUNK = 1 << 20


def _radius(sigma: float, truncate: float) -> int:
    return int(truncate * sigma + 0.5)


def gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps, float64, length ``2 * radius + 1``."""
    radius = _radius(sigma, truncate)
    if sigma == 0 or radius == 0:
        return np.ones(1)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def reflected_gaussian_matrix(size: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The smoothing matrix S of one axis of ``size`` pixels, float64 ``(size, size)``.

    ``S[i, j]`` is the sum of the taps ``k[d]`` of :func:`gaussian_kernel` over the
    offsets d whose position ``i + d`` of the half-sample symmetric extension holds a
    copy of pixel j, so ``S @ v`` is ``v`` padded by ``numpy.pad(mode='symmetric')`` and
    convolved with k (``scipy.ndimage.gaussian_filter1d(v, sigma, mode='reflect',
    truncate=truncate)``), for any radius: the extension is periodic with period
    ``2 size``, so the taps are first summed by offset modulo the period. The cost is
    one pass over the ``2 radius + 1`` taps and ``O(size^2)``, never a padded signal.

    Raises:
      ValueError: for a radius ``round(truncate * sigma)`` beyond
        :data:`MAX_KERNEL_RADIUS`.
    """
    radius = _radius(sigma, truncate)
    if radius > MAX_KERNEL_RADIUS:
        raise ValueError(
            f"sigma={sigma:g} with truncate={truncate:g} reaches {radius:,} pixels from the "
            f"kernel's centre, beyond the {MAX_KERNEL_RADIUS:,} computed; a kernel far "
            f"wider than the image ({size} pixels) makes every pixel the image mean: pass "
            f"sigma <= {MAX_KERNEL_RADIUS / truncate:g}"
        )
    if sigma == 0 or radius == 0:
        return np.eye(size)
    period = 2 * size
    by_offset = np.zeros(period)  # the taps summed by offset modulo the period
    for start in range(-radius, radius + 1, _TAPS_PER_CHUNK):
        offsets = np.arange(start, min(start + _TAPS_PER_CHUNK, radius + 1), dtype=np.int64)
        taps = np.exp(-0.5 * (offsets / sigma) ** 2)
        by_offset += np.bincount(offsets % period, weights=taps, minlength=period)
    by_offset /= by_offset.sum()
    rows = np.arange(size)[:, None]
    position = (rows + np.arange(period)[None, :]) % period
    pixel = np.where(position < size, position, period - 1 - position)
    matrix = np.zeros((size, size))
    np.add.at(matrix, (np.broadcast_to(rows, pixel.shape), pixel), by_offset)
    return matrix


def separable_filter(images: Array, rows: np.ndarray, cols: np.ndarray) -> Array:
    """Images ``(N, H, W, C)`` filtered as ``rows @ image @ cols.T`` per channel, with
    ``rows`` ``(H, H)`` and ``cols`` ``(W, W)``: a separable filter with any borders as
    two matrix products, which XLA runs faster than the grouped convolution of a padded
    image even for a 9-tap kernel (docs/performance.md)."""
    rows = jnp.asarray(rows, images.dtype)
    cols = jnp.asarray(cols, images.dtype)
    return jnp.einsum("hi,nijc,wj->nhwc", rows, images, cols, precision=jax.lax.Precision.HIGHEST)


def gaussian_smoothed_saliency(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    sigma: float = 1.0,
    truncate: float = 4.0,
    abs: bool = False,
) -> Array:
    """The saliency map convolved with a Gaussian over H and W.

    ``G_sigma * saliency(x)`` per channel, with the separable Gaussian of the module
    docstring and half-sample symmetric borders, which preserve the total attribution.
    ``sigma=0`` returns the saliency map unchanged. Saliency is Simonyan et al. 2014;
    blurring it in image space is a common visualisation step, distinct from
    SmoothGrad (Smilkov et al. 2017), which smooths in input space. No Captum
    counterpart.

    Args:
      fn: model function, batch ``(N, H, W, C)`` -> logits ``(N, classes)``.
      x: images ``(N, H, W, C)``, or ``(N, H, W)`` without a channel axis.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: unused (deterministic); accepted so every method has one signature.
      baseline: must be None (no reference input).
      batch_size: examples per backward pass; ``None`` processes all at once.
      sigma: kernel standard deviation in pixels, >= 0.
      truncate: kernel radius in units of sigma (``round(truncate * sigma)`` pixels),
        as ``scipy.ndimage.gaussian_filter``.
      abs: smooth ``|gradient|`` instead of the signed gradient.

    Returns:
      float32 array shaped like ``x``.
    """
    refuse_baseline(baseline, "gaussian_smoothed_saliency")
    sigma = as_number(sigma, "sigma", minimum=0)
    truncate = as_number(truncate, "truncate", minimum=0, inclusive=False)
    x = as_input(x)
    image_size(x, "gaussian_smoothed_saliency")  # (N, H, W, C) or (N, H, W), not (N, C, H, W)
    try:
        rows = reflected_gaussian_matrix(x.shape[1], sigma, truncate)
        cols = reflected_gaussian_matrix(x.shape[2], sigma, truncate)
    except ValueError as error:
        raise ValueError(f"gaussian_smoothed_saliency: {error}") from None
    maps = saliency(fn, x, target, abs=abs, batch_size=batch_size)
    if x.ndim == 3:  # grayscale without a channel axis
        return separable_filter(maps[..., None], rows, cols)[..., 0]
    return separable_filter(maps, rows, cols)
