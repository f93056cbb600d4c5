r"""Performance information curves (PIC): the model's score against the information a
map's most salient pixels restore, the XRAI paper's faithfulness metric.

Kapishnikov, Bolukbasi, Viégas & Terry, "XRAI: Better Attributions Through Regions",
ICCV 2019, arXiv:1906.02825 (section 4), as implemented in PAIR saliency
(``saliency.metrics.pic``). An insertion curve plots the score against the *fraction* of
pixels restored; but a fraction of flat background costs less information than the same
fraction of texture, so the axis says little about how much of the image a map really
needed. PIC measures the restored image by its information instead, estimated by the
size of its lossless WebP encoding, and draws the restored images as "bokeh" images:
the restored pixels kept, everything else linearly interpolated from them, so that the
unrestored part is smooth rather than a constant that leaks the shape of the mask.

For one image ``x`` (uint8, see below), its map ``a`` (pixels of higher value first;
pass ``abs`` maps to rank by magnitude, as PAIR leaves to the caller), a random set
``r`` of ``floor(f P)`` of its ``P`` pixels (``f = random_fraction``, 1%) and the
thresholds ``t_1 < ... < t_T``:

* ``B(S)``: the pixels of ``S`` and the four corners kept, every other pixel the linear
  interpolation of the kept ones over their Delaunay triangulation (scipy's ``griddata``
  ``'linear'``), each channel separately, rounded to uint8; ``B(S) = x`` when ``S`` is
  every pixel.
* ``H(img)``: the size in bytes of ``img`` as lossless WebP (quality 100): an estimate
  of its information.
* ``S_t = {p : a_p >= quantile(a, 1 - t)} | r``: the top fraction ``t`` of the map (ties
  at the quantile all restored, as PAIR's rule) plus the random pixels. A map tied at
  its minimum on more than ``1 - t`` of the image (Grad-CAM's zeros) restores the whole
  image from threshold ``t`` on, and a constant map at every threshold: its curve is
  the diagonal, AUC 0.5, whatever the model.
* ``f(img)``: the target's softmax probability (``score='probability'``: the Softmax
  Information Curve, SIC), or 1 where the target is the top class and 0 elsewhere
  (``score='correct'``: the Accuracy Information Curve, AIC).
* The points: ``e_t = clip((H(B(S_t)) - H(B(r))) / (H(x) - H(B(r))), 0, 1)`` and
  ``s_t = clip((f(B(S_t)) - f(B(r))) / (f(x) - f(B(r))), 0, 1)``; with ``monotone``
  (the paper's choice) ``s_t`` is the largest of ``s_1 ... s_t``.
* The curve: the piecewise linear interpolation of ``(e_t, s_t)`` together with
  ``(0, 0)`` and ``(1, 1)``, read at ``k / n`` for ``k = 0 ... n - 1`` and at 1
  (``n = points``); its trapezoid area is the image's AUC (higher: fewer bits of the
  image bring back the model's score).
* Points that share an entropy (several ``e_t`` clipped to 0 or 1, mostly): the points
  are ordered by entropy, ties in the order thresholds, ``(0, 0)``, ``(1, 1)``; the curve
  at ``e`` is the value of the last point at ``e`` and leaves it towards the next
  larger entropy, while the segment that arrives at ``e`` heads for the first point
  there. This is what PAIR's ``scipy.interpolate.interp1d`` gives, written out: a
  threshold whose image carries no more information than ``B(r)`` only counts through
  the running maximum, and one clipped to 1 pulls the curve before it.
* An image is skipped (NaN, with its reason) when ``f(x) < min_score`` (0.8: the paper
  keeps images the model is sure of), else when ``H(B(r)) >= H(x)``, else when
  ``f(B(r)) >= f(x)``: PAIR's three ``ComputePicMetricError`` cases, in its order. A
  model that returns NaN or Inf on any of the images is refused.
* Over a dataset, :func:`aggregate_pic` takes the median (PAIR's default) or the mean of
  the kept images' curves, point by point, and its trapezoid area.

Inputs. ``x`` is on the model's scale; ``value_range = (lo, hi)``, numbers or one per
channel (for inputs standardised per channel: ``lo = -mean / std``,
``hi = (1 - mean) / std`` for pixels in [0, 1]), maps it to uint8 by
``round(255 (x - lo) / (hi - lo))`` (inputs outside the range are refused), every image
of the curve (``x`` included) is built in uint8 like PAIR's, and the model sees
``lo + q (hi - lo) / 255``. For data that came from uint8 pixels divided by 255 the
quantisation is exact. Images are grayscale or RGB (WebP encodes nothing else), at
least 2 x 2. Maps are ranked in float64.

Differences from PAIR saliency 0.2.1 (docs/captum.md): the random pixels come from an
explicit ``key`` (example ``i`` from ``fold_in(key, i)``), so every method compared with
the same key sees the same blurred image, which PAIR asks its callers to arrange;
skipped images are NaN and named instead of exceptions; one triangulation serves every
channel (PAIR builds one per channel; the same values). PAIR's ``compute_pic_metric``
calls ``np.trapz``, which NumPy 2.4 and later do not have, and fails on a grayscale
image when a threshold restores every pixel; here the trapezoid rule is written out.

Not jit-compatible: the information estimate is a compressor on the host, and so is
the triangulation (both on a thread per core). The model runs on the device through
:func:`~fmi_jax.attribution.core.map_over_samples`, ``batch_size`` images at a time:
first on every image's two ends (``B(r)`` and ``x``), which decide whether it is
skipped, then on the ``T`` threshold images of the kept ones. Images are built, sized
and scored a group of ``batch_size // T`` examples at a time (every example when
``batch_size`` is None), so about ``batch_size`` uint8 images exist at once; results
do not depend on ``batch_size`` beyond the model's float rounding.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.attribution.core import (
    Array,
    ModelFn,
    Target,
    as_count,
    as_input,
    check_finite,
    example_keys,
    map_over_samples,
    refuse_one_output,
    require_key,
    resolve_target,
    target_probability,
)

__all__ = [
    "PIC_THRESHOLDS",
    "PicResult",
    "aggregate_pic",
    "blurred_image",
    "performance_information_curve",
]

PIC_THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75)
"""The fractions of the most salient pixels restored (PAIR's example thresholds)."""

_PIC_SCORES = ("probability", "correct")
_SKIP_SCORE = "the model's score on the image is below min_score"
_SKIP_ENTROPY = "the blurred image carries no less information than the image"
_SKIP_BLURRED = "the model scores the blurred image no lower than the image"


class PicResult(NamedTuple):
    """Per-image performance information curves (NumPy arrays).

    Attributes:
      x: the normalised information the curves are read at, ``(points + 1,)``.
      curves: the normalised score per image, ``(N, points + 1)``; NaN rows for skipped
        images.
      auc: the area under each curve, ``(N,)``; NaN for skipped images.
      information: the normalised information ``e_t`` per threshold, ``(N, T)``.
      scores: the raw model scores ``f`` of the blurred image, each threshold's image
        and the image, ``(N, T + 2)``; a skipped image has only the first and last.
      skipped: per image, ``''`` where kept, else why it was skipped.
      random_pixels: each image's random pixels ``r``, ``(N, H, W)`` bool (what PAIR asks
        its users to save with the results: here the key reproduces them).
    """

    x: np.ndarray
    curves: np.ndarray
    auc: np.ndarray
    information: np.ndarray
    scores: np.ndarray
    skipped: tuple[str, ...]
    random_pixels: np.ndarray


def performance_information_curve(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    key: Array,
    *,
    score: str = "probability",
    thresholds: Sequence[float] = PIC_THRESHOLDS,
    value_range: tuple[float, float] = (0.0, 1.0),
    random_fraction: float = 0.01,
    min_score: float = 0.8,
    monotone: bool = True,
    points: int = 1000,
    batch_size: int | None = None,
) -> PicResult:
    """Softmax (SIC) or accuracy (AIC) information curves of maps (module docstring).

    Args:
      fn: model function, batch -> logits ``(N, classes)``.
      x: images ``(N, H, W, C)``, ``C`` 1 or 3, within ``value_range``.
      target: class per example ``(N,)``, one int for all, or ``None`` (predicted class).
      attributions: maps shaped like ``x`` (summed over channels) or per pixel
        ``(N, H, W)``; higher values are restored first.
      key: a PRNG key, or one per example ``(N,)``: draws each image's random pixels.
      score: ``'probability'`` (SIC, default) or ``'correct'`` (AIC).
      thresholds: increasing fractions in ``(0, 1)`` of the map's top pixels.
      value_range: ``(lo, hi)``, the input values that mean uint8 0 and 255, numbers or
        one per channel.
      random_fraction: the share of pixels in the blurred image's seed, in ``[0, 1]``.
      min_score: images the model scores below this are skipped (PAIR's 0.8).
      monotone: make each image's normalised scores non-decreasing over the thresholds.
      points: the curve is read at ``points + 1`` places, ``k / points`` and 1 (>= 2).
      batch_size: images per forward pass, and about as many built at once; ``None``
        builds and evaluates all at once.

    Returns:
      A :class:`PicResult`.

    Raises:
      ValueError: inputs that are not grayscale or RGB images of at least 2 x 2 or lie
        outside ``value_range``, attributions that do not fit or are not finite,
        thresholds that are not increasing fractions, an unknown score, a min_score that
        is not finite, no key, or a model that returns NaN or Inf.
    """
    if score not in _PIC_SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {', '.join(_PIC_SCORES)}")
    x = as_input(x)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(
            f"performance_information_curve needs grayscale or RGB images (N, H, W, 1 or 3), "
            f"got input shape {x.shape}"
        )
    if min(x.shape[1:3]) < 2:
        raise ValueError(f"images must be at least 2 x 2 pixels, got input shape {x.shape}")
    relevance = _pixel_map(x, attributions)
    thresholds = _as_thresholds(thresholds)
    lo, hi = _as_range(value_range, x.shape[-1])
    random_fraction = _as_fraction(random_fraction, "random_fraction")
    try:
        finite = math.isfinite(float(min_score))
    except (TypeError, ValueError):
        finite = False
    if not finite:
        raise ValueError(f"min_score must be a finite number, got {min_score!r}")
    min_score = float(min_score)
    points = as_count(points, "points", minimum=2)
    require_key(key, "performance_information_curve (the blurred image's random pixels)")
    target = resolve_target(fn, x, target, batch_size=batch_size)
    pixels = np.asarray(_quantise(x, lo, hi, value_range))
    n, height, width = relevance.shape
    seeds = np.asarray(_random_pixels(example_keys(key, n), height * width, random_fraction))
    seeds = seeds.reshape(n, height, width)

    def measure(pool, build, indices, count):
        """WebP sizes and scores ``(len(indices), count)`` of the ``count`` images
        ``build(i)`` makes for each index, a group of indices at a time so that about
        ``batch_size`` images exist at once."""
        group = len(indices) if batch_size is None else max(1, batch_size // count)
        sizes, scores = [], []
        for start in range(0, len(indices), group):
            part = indices[start : start + group]
            images = np.stack(list(pool.map(build, part)))
            flat = images.reshape((-1,) + images.shape[2:])
            sizes.append(np.reshape(list(pool.map(_webp_size, flat)), (len(part), count)))
            scores.append(_scores(fn, images, target[part], lo, hi, score, batch_size))
        return np.concatenate(sizes), np.concatenate(scores)

    scores = np.full((n, len(thresholds) + 2), np.nan)
    information = np.full((n, len(thresholds)), np.nan)
    grid = np.append(np.linspace(0.0, 1.0, num=points, endpoint=False), 1.0)
    curves = np.full((n, points + 1), np.nan)
    with ThreadPoolExecutor(max_workers=_cores()) as pool:
        # The ends of every curve first: B(r) and the image decide whether it is
        # skipped, and a skipped image needs no threshold images (PAIR stops there too).
        def ends(i):
            return np.stack([blurred_image(pixels[i], seeds[i]), pixels[i]])

        end_sizes, scores[:, [0, -1]] = measure(pool, ends, np.arange(n), 2)
        skipped = tuple(
            _SKIP_SCORE
            if original < min_score
            else _SKIP_ENTROPY
            if end_sizes[i, 0] >= end_sizes[i, 1]
            else _SKIP_BLURRED
            if blurred >= original
            else ""
            for i, (blurred, original) in enumerate(scores[:, [0, -1]])
        )
        kept = np.flatnonzero([not reason for reason in skipped])
        if len(kept):

            def middle(i):
                return _threshold_images(pixels[i], relevance[i], seeds[i], thresholds)

            sizes, scores[kept, 1:-1] = measure(pool, middle, kept, len(thresholds))
    if len(kept):
        gain = (sizes - end_sizes[kept, :1]) / (end_sizes[kept, 1:] - end_sizes[kept, :1])
        information[kept] = np.clip(gain, 0.0, 1.0)
        blurred, original = scores[kept, :1], scores[kept, -1:]
        restored = np.clip((scores[kept, 1:-1] - blurred) / (original - blurred), 0.0, 1.0)
        if monotone:
            restored = np.maximum.accumulate(restored, axis=1)
        for row, i in enumerate(kept):
            curves[i] = _interpolate_curve(information[i], restored[row], grid)
    auc = _trapezoid(curves, grid)
    return PicResult(grid, curves, auc, information, scores, skipped, seeds)


def aggregate_pic(result: PicResult, *, method: str = "median") -> tuple[np.ndarray, float]:
    """The median (PAIR's default) or mean of the kept images' curves and its area.

    Returns:
      ``(curve, auc)``: the aggregate curve read at ``result.x`` and its trapezoid area.

    Raises:
      ValueError: an unknown method, or every image skipped.
    """
    if method not in ("median", "mean"):
        raise ValueError(f"unknown method {method!r}; choose 'median' or 'mean'")
    kept = np.asarray(result.curves)[[not reason for reason in result.skipped]]
    if not len(kept):
        reasons = sorted(set(result.skipped))
        raise ValueError(
            f"every image was skipped ({'; '.join(reasons)}): explain images the model is "
            "sure of, or lower min_score"
        )
    curve = np.median(kept, axis=0) if method == "median" else np.mean(kept, axis=0)
    return curve, float(_trapezoid(curve, np.asarray(result.x)))


def _interpolate_curve(information: np.ndarray, scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The PIC through ``(e_t, s_t)``, ``(0, 0)`` and ``(1, 1)`` read at ``grid`` in [0, 1].

    Points are ordered by entropy, stably, with ``(0, 0)`` and ``(1, 1)`` after the
    thresholds'; at each ``g`` the curve runs from the last point at or left of ``g``
    towards the next point right of it (module docstring)."""
    xs = np.concatenate([np.asarray(information, np.float64), [0.0, 1.0]])
    ys = np.concatenate([np.asarray(scores, np.float64), [0.0, 1.0]])
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    left = np.searchsorted(xs, grid, side="right") - 1
    right = np.minimum(left + 1, len(xs) - 1)
    run = xs[right] - xs[left]
    slope = np.divide(ys[right] - ys[left], run, out=np.zeros_like(run), where=run > 0)
    return slope * (grid - xs[left]) + ys[left]


def _trapezoid(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The trapezoid area along the last axis (NumPy's ``trapezoid``, which 1.26 lacks)."""
    return (np.diff(x) * (y[..., 1:] + y[..., :-1]) / 2.0).sum(-1)


def _pixel_map(x: Array, attributions: Any) -> np.ndarray:
    """Per-pixel maps ``(N, H, W)`` in float64 (ranked on the host, as PAIR ranks the
    map it is given; a float64 map keeps its near-ties apart)."""
    attributions = np.asarray(attributions, np.float64)
    if attributions.shape == x.shape:
        attributions = attributions.sum(-1)
    elif attributions.shape != x.shape[:-1]:
        raise ValueError(
            f"attributions of shape {attributions.shape} do not fit images of shape "
            f"{x.shape}: give one map per image, {x.shape} or per pixel {x.shape[:-1]}"
        )
    check_finite(attributions, "attributions")
    return attributions


def _as_thresholds(thresholds: Any) -> tuple[float, ...]:
    if isinstance(thresholds, (str, bytes)):
        raise ValueError(f"thresholds must be numbers in (0, 1), got {thresholds!r}")
    listed = list(thresholds) if isinstance(thresholds, Iterable) else [thresholds]
    try:
        values = tuple(float(t) for t in listed)
    except (TypeError, ValueError):
        raise ValueError(f"thresholds must be numbers in (0, 1), got {thresholds!r}") from None
    if (
        not values
        or any(not 0.0 < t < 1.0 for t in values)
        or any(b <= a for a, b in zip(values, values[1:]))
    ):
        raise ValueError(
            f"thresholds must be one or more increasing fractions in (0, 1), got {thresholds!r}"
        )
    return values


def _as_range(value_range: Any, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)``, each a number or one per channel, as float64 arrays ``(C,)``."""
    try:
        lo, hi = (np.broadcast_to(np.asarray(v, np.float64), (channels,)) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"value_range must be (lo, hi), numbers or one per channel ({channels}), "
            f"got {value_range!r}"
        ) from None
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo < hi).all()):
        raise ValueError(f"value_range must be finite with lo < hi, got {value_range!r}")
    return lo, hi


def _as_fraction(value: Any, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return value


def _quantise(x: Array, lo: np.ndarray, hi: np.ndarray, value_range: Any) -> Array:
    """``x`` on ``[lo, hi]`` (per channel) as uint8 pixels; values outside are refused."""
    tolerance = 1e-6 * (hi - lo)
    below = bool(jnp.any(x < lo - tolerance))
    if below or bool(jnp.any(x > hi + tolerance)):
        raise ValueError(
            f"inputs span [{float(jnp.min(x)):.4g}, {float(jnp.max(x)):.4g}], outside "
            f"value_range {value_range!r}: pass value_range=(lo, hi), the input values "
            "that stand for pixel values 0 and 255 (numbers or one per channel)"
        )
    return jnp.round(jnp.clip((x - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(jnp.uint8)


@jax.jit
def _random_pixels_of(keys: Array, order: Array) -> Array:
    return jax.vmap(lambda k: jax.random.permutation(k, order))(keys)


def _random_pixels(keys: Array, num_pixels: int, fraction: float) -> Array:
    """Per key, a boolean mask ``(P,)`` with ``floor(fraction P)`` random pixels set."""
    count = int(num_pixels * fraction)
    ranks = _random_pixels_of(keys, jnp.arange(num_pixels))
    return jnp.argsort(ranks, axis=-1) < count


def _threshold_images(
    pixels: np.ndarray, relevance: np.ndarray, seed: np.ndarray, thresholds: Sequence[float]
) -> np.ndarray:
    """``(T, H, W, C)`` uint8: ``B(S_t)`` for each threshold."""
    return np.stack(
        [
            blurred_image(pixels, (relevance >= np.quantile(relevance, 1.0 - t)) | seed)
            for t in thresholds
        ]
    )


def _cores() -> int:
    """Threads for the host work: the triangulation and the WebP encoder release the
    GIL, so the cores this process may use all help."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def blurred_image(pixels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``B(S)``: uint8 ``pixels`` ``(H, W)`` or ``(H, W, C)`` kept where ``keep``
    ``(H, W)`` and at the corners, linearly interpolated over the Delaunay triangulation
    of the kept pixels elsewhere, rounded (PAIR's ``create_blurred_image``, float32
    rounding included).

    Raises:
      ValueError: pixels that are not a uint8 image, or a mask of another shape.
    """
    from scipy.interpolate import LinearNDInterpolator

    pixels, keep = np.asarray(pixels), np.array(keep, bool)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(
            f"pixels must be a uint8 image (H, W) or (H, W, C), got {pixels.dtype} of shape "
            f"{pixels.shape}: quantise it first, e.g. round(255 * x) for x in [0, 1]"
        )
    if keep.shape != pixels.shape[:2] or min(keep.shape) < 2:
        raise ValueError(
            f"keep must be a mask (H, W) of at least 2 x 2 for pixels of shape "
            f"{pixels.shape}, got shape {keep.shape}"
        )
    if pixels.ndim == 2:
        return blurred_image(pixels[..., None], keep)[..., 0]
    keep[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    if keep.all():
        return np.array(pixels, np.uint8)
    known, unknown = np.argwhere(keep), np.argwhere(~keep)
    filled = LinearNDInterpolator(known, pixels[keep].astype(np.float64))(unknown)
    # The corners are kept, so the hull is the whole grid; PAIR fills with the mean.
    filled = np.where(np.isnan(filled), pixels.mean(axis=(0, 1)), filled)
    out = pixels.astype(np.float32)
    out[~keep] = filled
    return np.round(out).astype(np.uint8)


def _webp_size(pixels: np.ndarray) -> int:
    """``H``: bytes of the image as lossless WebP (grayscale as a 2-D array, as PAIR)."""
    from PIL import Image, features

    if not features.check("webp"):
        raise RuntimeError(
            "this Pillow build cannot write WebP, which the information estimate needs: "
            "install Pillow from PyPI (pip install --force-reinstall pillow)"
        )
    buffer = io.BytesIO()
    image = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    Image.fromarray(image).save(buffer, format="webp", lossless=True, quality=100)
    return buffer.tell()


def _scores(
    fn: ModelFn,
    images: np.ndarray,
    target: Array,
    lo: np.ndarray,
    hi: np.ndarray,
    score: str,
    batch_size: int | None,
) -> Array:
    """``f`` of every image ``(N, K, H, W, C)`` uint8, ``(N, K)`` float64 (normalised
    afterwards in float64, as PAIR's NumPy arithmetic on the model's scores)."""
    images = jnp.asarray(images)

    def evaluate(example: Array, sample: Array) -> Array:
        scaled = lo + images[example, sample].astype(jnp.float32) * ((hi - lo) / 255.0)
        logits = fn(scaled)
        if score == "correct":
            refuse_one_output(logits, "whether its top class is the target")
            return (jnp.argmax(logits, axis=-1) == target[example]).astype(jnp.float32)
        return target_probability(logits, target[example])

    values = map_over_samples(evaluate, images.shape[0], images.shape[1], batch_size=batch_size)
    values = np.asarray(values, np.float64)
    if not np.isfinite(values).all():
        raise ValueError(
            "the model returned NaN or Inf on the curve's images: check the model on inputs "
            "in value_range"
        )
    return values
