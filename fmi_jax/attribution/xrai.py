r"""XRAI: attributions of image regions (Kapishnikov, Tsai, Wedin & Bolukbasi 2019,
"XRAI: Better Attributions Through Regions", ICCV).

XRAI turns a pixel attribution map into a region map in three parts:

1. **Base attributions** A. By default integrated gradients, averaged over a black
   and a white baseline, as PAIR saliency's ``XRAI`` does: the constant images
   min(x_i) and max(x_i) of each example (over all pixels and channels), 100 steps.
   Channels are merged by their maximum, A_p = max_c A_pc (PAIR's aggregation).
   ``attributions=`` takes precomputed maps instead.
2. **Segments.** Each image is over-segmented at several scales by the graph method
   of Felzenszwalb & Huttenlocher 2004 ("Efficient Graph-Based Image Segmentation",
   IJCV) (:func:`felzenszwalb`), and every segment is dilated by a disk so that
   segments overlap across edges (:func:`segment_masks`). All segments of all scales
   are candidates.
3. **Greedy selection** (:func:`rank_regions`). Starting from an empty mask S, the
   candidate R with the highest gain density

       gain(R) = sum_{p in R \ S} A_p / |R \ S|

   is added, S <- S | R, until no candidate adds at least ``min_pixel_diff`` new
   pixels. Every pixel gets the gain of the region that first covered it; pixels no
   region covered get the mean attribution over them. The map therefore keeps the
   sum of A (every region's newly added pixels carry their mean). Ties go to the
   earlier candidate (scales in increasing order, segments by label), as in PAIR.

Segmentation, and why Felzenszwalb: it is what the paper and PAIR use, it makes
regions that follow colour edges at a scale set by one parameter, and it is a
Kruskal-style pass over the sorted edges of the pixel grid with a union-find, which
needs no library beyond numpy (scikit-image, which PAIR calls, is not a dependency).
The pass is sequential and runs on the host; the rest (edge weights, sorting,
dilation, the greedy selection's bookkeeping) is vectorised numpy. We follow
scikit-image's ``felzenszwalb``: Gaussian pre-smoothing per channel (reflecting
boundary), 8-connected grid, edge weight = Euclidean colour distance, edges in
increasing weight merge components C1, C2 when w < min(Int(C_i) + k / |C_i|)
(Int = largest weight merged into the component so far; k = scale / 255,
scikit-image's units, in which PAIR's scales are given), then a second pass over the
same edges merges any component smaller than ``min_size`` into its neighbour.

Resolution: PAIR resizes every image to 224 x 224 (bicubic), normalises it to
[-1, 1], segments it with scales (50, 100, 150, 250, 500, 1200), sigma 0.8 and
min_size 150, resizes the label maps back, dilates each segment by a disk of radius
5 pixels and drops candidates adding fewer than 50 pixels. We segment at the image's
own resolution, which is 64 times cheaper for 28 x 28 images, and transform PAIR's
parameters to it with r = sqrt(H W) / 224: upsampling by 1/r spreads an edge's
contrast over 1/r pixels (edge weights times r) and grows components by 1/r^2, and
the merge test w r < Int r + scale r^2 / |C| is the native test with scale * r. So the
defaults are scales 50 r, ..., 1200 r, sigma 0.8 r, min_size max(1, round(150 r^2)),
dilation radius round(5 r) and min_pixel_diff max(1, round(50 r^2)): for 28 x 28
images 6.25 ... 150, 0.1, 2, 1 and 1; PAIR's own values at 224 x 224. (PAIR dilates by
5 pixels at any size, which on a 28 x 28 image covers a third of its width.)

The output is one ``(N, H, W)`` map per image, like the CAMs. Captum has no XRAI.
XRAI needs concrete inputs (segmentation runs on the host): it cannot be wrapped in
``jax.jit``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from fmi_jax.attribution.core import (
    Array,
    ModelFn,
    Target,
    as_baseline,
    as_count,
    as_input,
    image_size,
    resolve_target,
)
from fmi_jax.attribution.integrated_gradients import integrated_gradients, quadrature

__all__ = [
    "xrai",
    "check_xrai_options",
    "felzenszwalb",
    "segment_masks",
    "rank_regions",
    "segmentation_defaults",
]

# PAIR saliency's settings, for 224 x 224 images.
_PAIR_SIDE = 224
_PAIR_SCALES = (50.0, 100.0, 150.0, 250.0, 500.0, 1200.0)
_PAIR_SIGMA = 0.8
_PAIR_MIN_SIZE = 150
_PAIR_DILATION = 5
_PAIR_MIN_PIXEL_DIFF = 50


def segmentation_defaults(height: int, width: int) -> dict[str, Any]:
    """PAIR's segmentation settings transformed to ``height x width`` images (module
    docstring): ``scales``, ``sigma``, ``min_size``, ``dilation``, ``min_pixel_diff``."""
    r = math.sqrt(height * width) / _PAIR_SIDE
    return {
        "scales": tuple(s * r for s in _PAIR_SCALES),
        "sigma": _PAIR_SIGMA * r,
        "min_size": max(1, round(_PAIR_MIN_SIZE * r * r)),
        "dilation": round(_PAIR_DILATION * r),
        "min_pixel_diff": max(1, round(_PAIR_MIN_PIXEL_DIFF * r * r)),
    }


def _as_image(image: Any) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError("image contains NaN or Inf values")
    return image


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter of each channel over both spatial axes: kernel cut at 4 sigma
    and normalised, boundary reflected about the edge (scipy's ``mode='reflect'``)."""
    radius = int(4 * sigma + 0.5)
    if radius == 0:
        return image
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(image, pad, mode="symmetric")
        length = image.shape[axis]
        image = sum(
            w * np.take(padded, np.arange(k, k + length), axis=axis) for k, w in enumerate(kernel)
        )
    return image


def _grid_edges(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel pairs of the 8-connected grid (right, down, down-right, up-right)."""
    index = np.arange(height * width).reshape(height, width)
    pairs = [
        (index[:, :-1], index[:, 1:]),
        (index[:-1, :], index[1:, :]),
        (index[:-1, :-1], index[1:, 1:]),
        (index[1:, :-1], index[:-1, 1:]),
    ]
    first = np.concatenate([a.ravel() for a, _ in pairs])
    second = np.concatenate([b.ravel() for _, b in pairs])
    return first, second


def felzenszwalb(
    image: Any, *, scale: float = 1.0, sigma: float = 0.8, min_size: int = 20
) -> np.ndarray:
    """Felzenszwalb-Huttenlocher graph segmentation of one image.

    The algorithm (and where it follows scikit-image's ``felzenszwalb``) is in the
    module docstring. Larger ``scale`` gives larger segments.

    Args:
      image: ``(H, W)`` or ``(H, W, C)`` array, any float scale (edge weights are
        colour distances in its units).
      scale: the merge threshold's size term, in scikit-image's units: two components
        merge when their connecting edge is below ``scale / 255 / |C|`` plus their
        internal difference; > 0.
      sigma: standard deviation of the Gaussian pre-smoothing, in pixels; 0 skips it.
      min_size: segments smaller than this are merged into a neighbour afterwards.

    Returns:
      int array ``(H, W)`` of labels 0 .. L-1, numbered by each segment's smallest
      pixel index (row-major).
    """
    image = _as_image(image)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not scale > 0:
        raise ValueError(f"scale must be a number > 0, got {scale!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma >= 0:
        raise ValueError(f"sigma must be a number >= 0, got {sigma!r}")
    min_size = as_count(min_size, "min_size")
    height, width = image.shape[:2]
    image = _smooth(image, sigma)
    first, second = _grid_edges(height, width)
    flat = image.reshape(height * width, -1)
    cost = np.sqrt(np.sum((flat[first] - flat[second]) ** 2, axis=1))
    order = np.argsort(cost, kind="stable")
    first, second, cost = first[order].tolist(), second[order].tolist(), cost[order].tolist()

    parent = list(range(height * width))
    size = [1] * (height * width)
    internal = [0.0] * (height * width)
    # scikit-image's (and so PAIR's) units: `scale` counts 8-bit steps, k = scale / 255.
    k = float(scale) / 255.0

    def root(p: int) -> int:
        top = p
        while parent[top] != top:
            top = parent[top]
        while parent[p] != top:  # path compression
            parent[p], p = top, parent[p]
        return top

    def join(a: int, b: int) -> int:
        if size[a] < size[b]:
            a, b = b, a
        parent[b] = a
        size[a] += size[b]
        return a

    for a, b, w in zip(first, second, cost):
        a, b = root(a), root(b)
        if a != b and w < min(internal[a] + k / size[a], internal[b] + k / size[b]):
            internal[join(a, b)] = w
    for a, b in zip(first, second):
        a, b = root(a), root(b)
        if a != b and (size[a] < min_size or size[b] < min_size):
            join(a, b)
    roots = np.array([root(p) for p in range(height * width)])
    _, first_pixel, labels = np.unique(roots, return_index=True, return_inverse=True)
    # Number segments by their first pixel, so labels do not depend on union-find roots.
    relabel = np.empty(len(first_pixel), dtype=np.int64)
    relabel[np.argsort(first_pixel, kind="stable")] = np.arange(len(first_pixel))
    return relabel[labels].reshape(height, width)


def _disk(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) with dy^2 + dx^2 <= radius^2 (scikit-image's ``disk``)."""
    span = range(-radius, radius + 1)
    return [(dy, dx) for dy in span for dx in span if dy * dy + dx * dx <= radius * radius]


def _dilate(masks: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of every mask ``(K, H, W)`` by a disk, outside the image empty."""
    if radius == 0:
        return masks
    height, width = masks.shape[1:]
    padded = np.pad(masks, ((0, 0), (radius, radius), (radius, radius)))
    out = np.zeros_like(masks)
    for dy, dx in _disk(radius):
        out |= padded[:, radius + dy : radius + dy + height, radius + dx : radius + dx + width]
    return out


def _segmentation_options(
    shape: tuple[int, int],
    scales: Sequence[float] | None,
    sigma: float | None,
    min_size: int | None,
    dilation: int | None,
) -> tuple[tuple[float, ...], float, int, int]:
    """The options of :func:`segment_masks`, checked, ``None`` replaced by the defaults."""
    defaults = segmentation_defaults(*shape)
    scales = defaults["scales"] if scales is None else tuple(scales)
    if not scales or not all(isinstance(s, numbers.Real) and s > 0 for s in scales):
        raise ValueError(f"scales must hold at least one Felzenszwalb scale > 0, got {scales!r}")
    sigma = defaults["sigma"] if sigma is None else sigma
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma >= 0:
        raise ValueError(f"sigma must be a number >= 0, got {sigma!r}")
    min_size = as_count(defaults["min_size"] if min_size is None else min_size, "min_size")
    dilation = as_count(defaults["dilation"] if dilation is None else dilation, "dilation", 0)
    return scales, float(sigma), min_size, dilation


def segment_masks(
    image: Any,
    *,
    scales: Sequence[float] | None = None,
    sigma: float | None = None,
    min_size: int | None = None,
    dilation: int | None = None,
) -> np.ndarray:
    """XRAI's candidate regions for one image: the dilated segments of every scale.

    The image is rescaled to [-1, 1] by its own minimum and maximum (as PAIR does, so
    the scales mean the same for every image), segmented by :func:`felzenszwalb` at
    each of ``scales`` and every segment dilated by a disk of radius ``dilation``.
    ``None`` options take :func:`segmentation_defaults` for the image's size.

    Args:
      image: ``(H, W)`` or ``(H, W, C)``.
      scales: Felzenszwalb scales, one segmentation each.
      sigma: pre-smoothing of the segmentation.
      min_size: smallest segment, in pixels.
      dilation: disk radius in pixels; 0 keeps the segments as they are.

    Returns:
      bool array ``(K, H, W)``: the masks of scale 1 by label, then scale 2, ...
    """
    image = _as_image(image)
    scales, sigma, min_size, dilation = _segmentation_options(
        image.shape[:2], scales, sigma, min_size, dilation
    )
    low, high = image.min(), image.max()
    image = 2 * (image - low) / (high - low) - 1 if high > low else np.zeros_like(image)
    masks = []
    for scale in scales:
        labels = felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size)
        masks.append(labels[None] == np.arange(labels.max() + 1)[:, None, None])
    return _dilate(np.concatenate(masks), dilation)


def rank_regions(
    attributions: Any, masks: Any, *, min_pixel_diff: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """XRAI's greedy region selection on one pixel attribution map.

    Repeatedly adds the candidate with the highest density of attribution over the
    pixels it adds (module docstring), dropping candidates that add fewer than
    ``min_pixel_diff`` pixels, until none is left.

    Args:
      attributions: ``(H, W)`` pixel attributions.
      masks: bool ``(K, H, W)`` candidate regions.
      min_pixel_diff: fewest new pixels a candidate must add to be considered.

    Returns:
      ``(gains, order)``: float64 ``(H, W)`` map of the gain of the region that added
      each pixel (the mean attribution of the uncovered pixels where none did) and int
      ``(H, W)`` map of the step (1, 2, ...) at which each pixel was added, 0 where it
      never was.
    """
    attributions = np.asarray(attributions, dtype=np.float64)
    masks = np.asarray(masks)
    if attributions.ndim != 2:
        raise ValueError(f"attributions must be one (H, W) map, got shape {attributions.shape}")
    if masks.ndim != 3 or masks.shape[1:] != attributions.shape or masks.dtype != bool:
        raise ValueError(
            f"masks must be a bool array (K, {attributions.shape[0]}, "
            f"{attributions.shape[1]}), got {masks.dtype} of shape {masks.shape}"
        )
    min_pixel_diff = as_count(min_pixel_diff, "min_pixel_diff")
    flat_masks = masks.reshape(masks.shape[0], -1)
    values = attributions.ravel()
    new_count = flat_masks.sum(axis=1)
    new_sum = flat_masks @ values if len(flat_masks) else np.zeros(0)
    alive = np.ones(len(flat_masks), dtype=bool)
    covered = np.zeros(values.shape, dtype=bool)
    gains = np.zeros(values.shape)
    order = np.zeros(values.shape, dtype=np.int64)
    step = 0
    while True:
        alive &= new_count >= min_pixel_diff
        if not alive.any():
            break
        density = np.where(alive, new_sum / np.maximum(new_count, 1), -np.inf)
        best = int(np.argmax(density))  # the first of equal gains, as PAIR
        added = np.flatnonzero(flat_masks[best] & ~covered)
        step += 1
        gains[added] = density[best]
        order[added] = step
        covered[added] = True
        alive[best] = False
        new_count = new_count - flat_masks[:, added].sum(axis=1)
        new_sum = new_sum - flat_masks[:, added] @ values[added]
    if not covered.all():
        gains[~covered] = values[~covered].mean()
    return gains.reshape(attributions.shape), order.reshape(attributions.shape)


def _base_attributions(
    fn: ModelFn,
    x: Array,
    target: Target,
    baseline: Any,
    batch_size: int | None,
    steps: int,
    rule: str,
) -> Array:
    """Integrated gradients averaged over ``baseline`` (see :func:`xrai`)."""
    target = resolve_target(fn, x, target, batch_size=batch_size)
    if baseline is None:
        flat = x.reshape(x.shape[0], -1)
        shape = (-1,) + (1,) * (x.ndim - 1)
        baselines = [flat.min(axis=1).reshape(shape), flat.max(axis=1).reshape(shape)]
    elif isinstance(baseline, tuple):
        if not baseline:
            raise ValueError("baseline=() holds no baseline; pass None for black and white")
        baselines = list(baseline)
    else:
        baselines = [baseline]
    maps = [
        integrated_gradients(
            fn,
            x,
            target,
            baseline=as_baseline(b, x),
            batch_size=batch_size,
            steps=steps,
            rule=rule,
        )
        for b in baselines
    ]
    return sum(maps) / len(maps)


def check_xrai_options(options: Mapping[str, Any]) -> None:
    """A one-line ValueError for an option of :func:`xrai` out of range.

    XRAI segments on the host and cannot be traced, so a dry run
    (:func:`~fmi_jax.attribution.check_explainer`) cannot reach the checks it makes
    when it runs; the registry calls this when the explainer is built instead. The
    segmentation options are checked for any image size (their defaults depend on it).
    """
    quadrature(options.get("rule", "gausslegendre"), as_count(options.get("steps", 100), "steps"))
    _segmentation_options(
        (_PAIR_SIDE, _PAIR_SIDE),
        options.get("scales"),
        options.get("sigma"),
        options.get("min_size"),
        options.get("dilation"),
    )
    if options.get("min_pixel_diff") is not None:
        as_count(options["min_pixel_diff"], "min_pixel_diff")


def xrai(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: Any = None,
    batch_size: int | None = None,
    attributions: Array | None = None,
    segments: Sequence[Any] | None = None,
    steps: int = 100,
    rule: str = "gausslegendre",
    scales: Sequence[float] | None = None,
    sigma: float | None = None,
    min_size: int | None = None,
    dilation: int | None = None,
    min_pixel_diff: int | None = None,
) -> Array:
    """XRAI region map: every pixel gets the attribution density of its region.

    Kapishnikov et al. 2019; the counterpart of PAIR saliency's ``XRAI`` (its
    ``'full'`` algorithm; Captum has none). The module docstring describes the three
    parts (base attributions, segmentation, greedy selection) and how the defaults
    follow PAIR's.

    Args:
      fn: model function, batch ``(N, H, W[, C])`` -> logits ``(N, classes)``.
      x: images ``(N, H, W, C)`` or ``(N, H, W)``; concrete (segmented on the host).
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: unused (deterministic); accepted so every method has one signature.
      baseline: baselines of the integrated gradients: ``None`` for PAIR's black and
        white (each example's minimum and maximum, constant), a tuple of baselines
        (their maps are averaged), or one baseline (anything that broadcasts to ``x``).
      batch_size: (example, step) gradient evaluations per chunk of the integrated
        gradients; never changes the result.
      attributions: precomputed base maps ``(N, H, W, C)`` or ``(N, H, W)`` instead of
        integrated gradients (then ``fn``, ``target``, ``baseline``, ``steps``, ``rule``
        are not used).
      segments: precomputed candidate regions, one bool array ``(K_i, H, W)`` per
        example, instead of :func:`segment_masks`.
      steps, rule: of the integrated gradients (PAIR uses 100 steps).
      scales, sigma, min_size, dilation: of :func:`segment_masks`; ``None`` takes
        :func:`segmentation_defaults`.
      min_pixel_diff: of :func:`rank_regions`; ``None`` takes
        :func:`segmentation_defaults` (PAIR's 50 pixels, scaled to the image's area).

    Returns:
      float32 ``(N, H, W)`` maps.
    """
    x = as_input(x)
    height, width = image_size(x, "xrai")
    defaults = segmentation_defaults(height, width)
    min_pixel_diff = defaults["min_pixel_diff"] if min_pixel_diff is None else min_pixel_diff
    min_pixel_diff = as_count(min_pixel_diff, "min_pixel_diff")
    if segments is None:
        scales, sigma, min_size, dilation = _segmentation_options(
            (height, width), scales, sigma, min_size, dilation
        )
    elif len(segments) != x.shape[0]:
        raise ValueError(
            f"segments must hold one (K, H, W) bool array per example ({x.shape[0]}), "
            f"got {len(segments)}"
        )
    if attributions is None:
        attributions = _base_attributions(fn, x, target, baseline, batch_size, steps, rule)
    elif jnp.shape(attributions) not in (x.shape, x.shape[:3]):
        raise ValueError(
            f"attributions must have the shape of x {x.shape} or {x.shape[:3]}, "
            f"got {jnp.shape(attributions)}"
        )
    pixel_maps = np.asarray(attributions, dtype=np.float64)
    if pixel_maps.ndim == 4:
        pixel_maps = pixel_maps.max(axis=-1)
    images = np.asarray(x)
    maps = []
    for i in range(x.shape[0]):
        if segments is None:
            masks = segment_masks(
                images[i], scales=scales, sigma=sigma, min_size=min_size, dilation=dilation
            )
        else:
            masks = np.asarray(segments[i])
        gains, _ = rank_regions(pixel_maps[i], masks, min_pixel_diff=min_pixel_diff)
        maps.append(gains)
    return jnp.asarray(np.stack(maps), dtype=jnp.float32)
