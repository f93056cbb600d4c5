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

__all__ = ["gaussian_kernel", "gaussian_smoothed_saliency"]


def gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps, float64, length ``2 * radius + 1``."""
    radius = int(truncate * sigma + 0.5)
    if sigma == 0 or radius == 0:
        return np.ones(1)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def _smooth_axis(maps: Array, kernel: np.ndarray, axis: int) -> Array:
    """Convolve every channel of NHWC ``maps`` with ``kernel`` along H (1) or W (2)."""
    radius = len(kernel) // 2
    pad = [(0, 0)] * maps.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(maps, pad, mode="symmetric")
    channels = maps.shape[-1]
    window = (len(kernel), 1) if axis == 1 else (1, len(kernel))
    taps = jnp.asarray(kernel, maps.dtype).reshape(window + (1, 1))
    taps = jnp.broadcast_to(taps, window + (1, channels))  # HWIO, one filter per channel
    return jax.lax.conv_general_dilated(
        padded,
        taps,
        window_strides=(1, 1),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
        precision=jax.lax.Precision.HIGHEST,
    )


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
      x: images ``(N, H, W, C)``.
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
    if x.ndim != 4:
        raise ValueError(f"x must be a batch of images (N, H, W, C), got shape {x.shape}")
    image_size(x, "gaussian_smoothed_saliency")  # blurs over (H, W): refuses (N, C, H, W)
    maps = saliency(fn, x, target, abs=abs, batch_size=batch_size)
    kernel = gaussian_kernel(sigma, truncate)
    return _smooth_axis(_smooth_axis(maps, kernel, axis=1), kernel, axis=2)
