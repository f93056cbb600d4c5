r"""Path methods beyond the straight line: Blur IG and Guided IG.

Both integrate the gradient of the target logit along a path gamma from a reference
to the input, like integrated gradients, and so are *complete*:
sum_j A_j = f_t(x) - f_t(gamma(0)) up to the discretisation error
(``return_delta=True`` reports it). Only the path differs.

**Blur IG** (Xu, Venugopalan, Sundararajan, Mohamed & Ahmed 2020, "Attribution in
Scale and Space", CVPR). The path runs through Gaussian blurs of the input, from the
most blurred image (sigma = ``max_sigma``, the baseline) to the input (sigma = 0):
gamma(a) = B(x, sigma_max (1 - a)), a in [0, 1], so

    BlurIG(x) = \int_0^1 grad f_t(gamma(a)) * gamma'(a) da
              = - sigma_max \int_0^1 grad f_t(B(x, s(a))) * dB(x, s)/ds |_{s(a)} da,

with s(a) = sigma_max (1 - a). A quadrature rule (:func:`.quadrature`, as for
integrated gradients) turns it into ``- sigma_max * sum_k w_k grad f_t(B(x, s_k)) *
dB/ds(x, s_k)``.

PAIR saliency's ``BlurIG`` evaluates the gradient at sigma_i = i sigma_max / n,
i = 0..n-1 (the input itself included, the most blurred image left out), weights
each by d sigma = sigma_max / n and negates the sum: in our orientation that is the
``riemann_right`` rule. It estimates dB/ds by the forward difference
(B(x, s + h) - B(x, s)) / h with h = ``grad_step`` = 0.01. Where we differ, and why:

* dB/ds is exact by default (forward-mode differentiation of the blur in sigma):
  no step to choose and no O(h) bias. ``grad_step=h`` reproduces PAIR's difference.
* The default rule is Gauss-Legendre, as for integrated gradients: the blur path is
  analytic in sigma, so for smooth models the error falls exponentially with
  ``steps`` instead of like 1/steps. ``rule='riemann_right'`` is PAIR's nodes.
* The Gaussian kernel is not truncated. scipy's ``gaussian_filter`` (which PAIR
  calls) cuts it at 4 sigma and renormalises, which makes B(x, s) jump by ~e^-8
  wherever the cut radius int(4 s + 1/2) changes; an untruncated kernel keeps the
  path smooth, so the derivative above is the derivative of the path. Its mass is
  summed in closed form (Poisson summation for sigma >= 1), so any sigma costs the
  same: a kernel as wide as 6 sigma would grow with ``max_sigma``.
* ``max_sigma``'s default is relative to the image: 50 * max(H, W) / 224. PAIR's 50
  was chosen for 224 x 224 ImageNet inputs, where it leaves a featureless blob; on a
  28 x 28 image the same absolute 50 would push ~95 % of the image's mass off its
  edges (zero boundary, below) and make the baseline a black image, spending most
  steps on nearly black images. The relative default (6.25 for 28 x 28, 7.1 for
  32 x 32) blurs every image as much, relative to its size, as PAIR's does ImageNet's.

The blur is separable and per channel, on device: B(x, s) = G_H(s) X G_W(s)^T for
every channel, with G(s)_{ij} = exp(-(i - j)^2 / (2 s^2)) / Z(s) over the image's
rows (columns) and Z(s) = sum_k exp(-k^2 / (2 s^2)) the full kernel's mass. Pixels
outside the image count as zero (scipy's ``mode='constant'``, PAIR's choice), so
blurring darkens towards the borders. s = 0 is the identity. Captum has no Blur IG.

**Guided IG** (Kapishnikov, Venugopalan, Avci, Wedin, Terry & Bolukbasi 2021,
"Guided Integrated Gradients: An Adaptive Path Method for Removing Noise", CVPR).
The path is chosen as it is walked: at step k (of n) the L1 distance to the input
must shrink to (1 - a_k) |x - x'|_1 with a_k = (k + 1) / n, and it is made to shrink
by moving the features with the *smallest* absolute gradient first. PAIR saliency's
``guided_ig_impl``, which we follow, does this within each step by repeatedly taking
the ``fraction`` of all features with the smallest |gradient| (features already at
their bound excluded) and moving them to their bound, until moving them all the way
would overshoot the step's L1 target, when they move the fraction gamma of the way
that hits it exactly. ``max_dist`` anchors the path to the straight line: in terms of
a feature's own position alpha_j = (p_j - x'_j) / (x_j - x'_j) along its segment (p the
current point), step k keeps every feature in [a_k - max_dist, a_k + max_dist] (features
that fell behind are first moved up to the lower bound). The gradient is taken once per
step, at the step's start x_k, so the attribution is the chord sum

    GuidedIG(x) = sum_k grad f_t(x_k) * (x_{k+1} - x_k),   x_0 = x', x_n = x.

``max_dist=0`` (or ``fraction=1``: every feature moves by the same share of its
distance) keeps the path on the straight line, x_k = x' + (k / n) (x - x'), and the
sum is integrated gradients with the ``riemann_left`` rule, exactly. Differences from
PAIR: float32 instead of float64; PAIR ends a step's inner loop when the L1 distance
matches the target within 1e-9, which float32 cannot resolve, so here it ends when
the selected features can close the remaining gap (PAIR's gamma <= 1 branch) and the
gap left by rounding is a negligible final partial move; the last step lands on the
input exactly (PAIR reaches it with L1 target 0). Captum has no Guided IG.

Memory: Blur IG walks its ``N * steps`` gradient evaluations in chunks of
``batch_size`` (example, step) pairs (:func:`.core.sum_over_samples`). Guided IG's
steps depend on each other, so ``batch_size`` is the number of examples whose paths
are walked together (one gradient per example per step). Neither changes a result.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.attribution.core import (
    Array,
    ModelFn,
    Target,
    as_baseline,
    as_count,
    as_input,
    as_number,
    completeness_delta,
    image_size,
    layout_checked,
    per_example,
    refuse_baseline,
    resolve_target,
    sum_over_samples,
    target_logit_grad,
)
from fmi_jax.attribution.integrated_gradients import quadrature

__all__ = ["blur_ig", "gaussian_blur", "guided_ig", "default_max_sigma"]

# PAIR's max_sigma, chosen for 224 x 224 inputs; scaled to other sizes by default.
_PAIR_MAX_SIGMA = 50.0
_PAIR_IMAGE_SIDE = 224
# Below this sigma every off-diagonal tap exp(-1 / (2 s^2)) underflows to zero in
# float32: the blur is the identity and its derivative in s is zero.
_MIN_SIGMA = 1e-2


def default_max_sigma(height: int, width: int) -> float:
    """Blur IG's default ``max_sigma`` for ``height x width`` images: PAIR's 50 scaled
    from 224 pixels to the longer side, 50 * max(H, W) / 224."""
    return _PAIR_MAX_SIGMA * max(height, width) / _PAIR_IMAGE_SIDE


def _spatial_shape(x: Array, method: str) -> tuple[int, int]:
    if x.ndim not in (3, 4):
        raise ValueError(
            f"{method} blurs images: x must be (N, H, W, C) or (N, H, W), got shape {x.shape}"
        )
    return image_size(x, method)  # refuses a channels-first batch


def _kernel_mass(sigma: Array) -> Array:
    """The untruncated kernel's mass, sum over all integers k of exp(-k^2 / (2 s^2)):
    summed directly for s < 1 (the terms beyond |k| = 10 are below e^-50), and for
    s >= 1 by Poisson summation, s sqrt(2 pi) (1 + 2 sum_m exp(-2 pi^2 s^2 m^2)), whose
    terms beyond m = 3 are below e^-300. Both are exact in float32 on either side of 1,
    for any sigma, so no array grows with it."""
    s = sigma[..., None]
    k = jnp.arange(-10, 11, dtype=jnp.float32)
    direct = jnp.sum(jnp.exp(-(k**2) / (2 * s**2)), axis=-1)
    m = jnp.arange(1, 4, dtype=jnp.float32)
    dual = 1 + 2 * jnp.sum(jnp.exp(-2 * math.pi**2 * s**2 * m**2), axis=-1)
    return jnp.where(sigma < 1, direct, sigma * math.sqrt(2 * math.pi) * dual)


def _blur_matrix(size: int, sigma: Array) -> Array:
    """G(sigma) of shape ``sigma.shape + (size, size)``: row i holds the Gaussian taps
    exp(-(i - j)^2 / (2 sigma^2)) for the pixels j of the image, divided by the mass of
    the whole kernel (the taps that fall outside the image are lost: zero boundary)."""
    s = jnp.maximum(sigma, _MIN_SIGMA)
    index = jnp.arange(size, dtype=jnp.float32)
    distance = (index[:, None] - index[None, :]) ** 2
    taps = jnp.exp(-distance / (2 * s[..., None, None] ** 2))
    return taps / _kernel_mass(s)[..., None, None]


def _blur(images: Array, sigma: Array) -> Array:
    """``images`` (B, H, W[, C]) each blurred with its own ``sigma`` (B,)."""
    rows = _blur_matrix(images.shape[1], sigma)
    cols = _blur_matrix(images.shape[2], sigma)
    if images.ndim == 3:
        return jnp.einsum("bhi,bij,bwj->bhw", rows, images, cols)
    return jnp.einsum("bhi,bijc,bwj->bhwc", rows, images, cols)


def gaussian_blur(x: Array, sigma: float | Array) -> Array:
    """Gaussian blur of images ``(N, H, W, C)`` or ``(N, H, W)``, per channel.

    Separable, with the untruncated kernel exp(-k^2 / (2 sigma^2)) normalised to mass
    one and zero outside the image (the module docstring has the formula); the same as
    ``scipy.ndimage.gaussian_filter(x, (0, sigma, sigma, 0), mode='constant')`` with a
    large ``truncate``. ``sigma`` is one value for all images or one per image ``(N,)``;
    0 leaves an image unchanged. Differentiable in ``x`` and ``sigma``.
    """
    x = as_input(x)
    _spatial_shape(x, "gaussian_blur")
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
    if not isinstance(sigma, jax.core.Tracer) and not np.all(np.asarray(sigma) >= 0):
        raise ValueError(f"sigma must be >= 0, got {np.asarray(sigma)}")
    return _blur(x, sigma)


def _check_positive(value: float, name: str) -> float:
    return as_number(value, name, minimum=0, inclusive=False)


def blur_ig(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    steps: int = 100,
    max_sigma: float | None = None,
    rule: str = "gausslegendre",
    grad_step: float | None = None,
    return_delta: bool = False,
) -> Array | tuple[Array, Array]:
    """Blur IG: integrated gradients along the path from a blurred image to ``x``.

    ``- max_sigma * sum_k w_k * grad f_t(B(x, s_k)) * dB(x, s)/ds |_{s_k}`` with
    s_k = max_sigma (1 - a_k) for the nodes a_k and weights w_k of ``rule`` (Xu et al.
    2020; the module docstring derives it and lists where it differs from PAIR
    saliency's ``BlurIG``, its counterpart; Captum has none). The attributions sum to
    f_t(x) - f_t(B(x, max_sigma)) up to the quadrature error.

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: images ``(N, H, W, C)`` or ``(N, H, W)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: unused (deterministic); accepted so every method has one signature.
      baseline: must be None: the most blurred image is the reference.
      batch_size: (example, step) gradient evaluations per chunk; ``None`` evaluates
        all ``N * steps`` at once.
      steps: quadrature nodes (model gradients per example); PAIR's default, 100.
      max_sigma: blur of the reference image, in pixels; ``None`` is
        :func:`default_max_sigma` (6.25 for 28 x 28 images, PAIR's 50 for 224 x 224).
      rule: quadrature rule, one of :data:`.QUADRATURE_RULES`; ``'riemann_right'``
        gives PAIR's nodes.
      grad_step: ``None`` differentiates the blur exactly; a step h > 0 uses PAIR's
        forward difference (B(x, s + h) - B(x, s)) / h (PAIR's default h is 0.01).
      return_delta: also return the completeness gap per example,
        ``sum(A_i) - (f_t(x_i) - f_t(B(x_i, max_sigma)))``.

    Returns:
      float32 attributions shaped like ``x``; with ``return_delta`` also ``(N,)`` gaps.
    """
    refuse_baseline(baseline, "blur_ig")
    x = as_input(x)
    height, width = _spatial_shape(x, "blur_ig")
    if max_sigma is None:
        max_sigma = default_max_sigma(height, width)
    max_sigma = _check_positive(max_sigma, "max_sigma")
    if grad_step is not None:
        grad_step = _check_positive(grad_step, "grad_step")
    alphas, weights = (jnp.asarray(a, jnp.float32) for a in quadrature(rule, steps))
    target = resolve_target(fn, x, target, batch_size=batch_size)

    def weighted_gradient(example: Array, step: Array) -> Array:
        images = x[example]
        sigma = max_sigma * (1 - alphas[step])
        if grad_step is None:
            point, direction = jax.jvp(
                lambda s: _blur(images, s), (sigma,), (jnp.ones_like(sigma),)
            )
        else:
            point = _blur(images, sigma)
            direction = (_blur(images, sigma + grad_step) - point) / grad_step
        scale = -max_sigma * weights[step]
        return per_example(scale, point) * direction * target_logit_grad(fn, point, target[example])

    attributions = sum_over_samples(
        weighted_gradient, x.shape[0], len(alphas), batch_size=batch_size
    )
    if not return_delta:
        return attributions
    blurred = _blur(x, jnp.full(x.shape[0], max_sigma, jnp.float32))
    delta = completeness_delta(fn, x, target, attributions, baseline=blurred, batch_size=batch_size)
    return attributions, delta


def _unit_interval(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _guided_step(
    point: Array,
    gradient: Array,
    start: Array,
    end: Array,
    alpha: Array,
    *,
    max_dist: float,
    rank: int,
) -> Array:
    """One Guided IG step for one example (flat vectors of D features): from ``point``
    to the point whose L1 distance to ``end`` is (1 - alpha) |end - start|_1, moving
    the features of smallest |gradient| first (module docstring)."""
    span = end - start
    lower = jnp.maximum(alpha - max_dist, 0.0)
    upper = jnp.minimum(alpha + max_dist, 1.0)
    low_point = start + span * lower
    high_point = start + span * upper
    goal = jnp.sum(jnp.abs(span)) * (1 - alpha)
    moves = span != 0
    position = jnp.where(moves, (point - start) / jnp.where(moves, span, 1.0), upper)
    point = jnp.where(position < lower, low_point, point)
    magnitude = jnp.abs(gradient)

    def unfinished(state: tuple[Array, Array, Array]) -> Array:
        _, done, count = state
        return ~done & (count < point.size + 2)

    def move(state: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        current, _, count = state
        gap = jnp.sum(jnp.abs(current - end)) - goal
        at_bound = current == high_point
        ranked = jnp.where(at_bound, jnp.inf, magnitude)
        threshold = jnp.sort(ranked)[rank]
        selected = (ranked <= threshold) & ~at_bound
        reach = jnp.sum(jnp.where(selected, jnp.abs(current - high_point), 0.0))
        all_the_way = gap > reach
        share = jnp.clip(gap / jnp.where(reach > 0, reach, 1.0), 0.0, 1.0)
        moved = jnp.where(all_the_way, high_point, current + share * (high_point - current))
        current = jnp.where(selected, moved, current)
        return current, ~all_the_way | (reach == 0), count + 1

    point, _, _ = jax.lax.while_loop(unfinished, move, (point, jnp.array(False), 0))
    return point


def guided_ig(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: Array | float | None = None,
    batch_size: int | None = None,
    steps: int = 200,
    fraction: float = 0.25,
    max_dist: float = 0.02,
    return_delta: bool = False,
) -> Array | tuple[Array, Array]:
    """Guided IG: a path from ``baseline`` to ``x`` that moves low-gradient features first.

    ``sum_k grad f_t(x_k) * (x_{k+1} - x_k)`` over the adaptive path x_0 = x', ...,
    x_n = x of Kapishnikov et al. 2021, following PAIR saliency's ``GuidedIG``
    (its counterpart; Captum has none); the module docstring describes the path and
    the differences. The attributions sum to f_t(x) - f_t(x') up to the
    discretisation error. ``max_dist=0`` or ``fraction=1`` walk the straight line and
    give ``integrated_gradients(..., steps=steps, rule='riemann_left')``.

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: unused (deterministic); accepted so every method has one signature.
      baseline: the reference x'. ``None`` = zeros; anything that broadcasts to ``x``.
      batch_size: examples whose paths are walked together (one gradient each per
        step); ``None`` walks all at once.
      steps: path steps n (model gradients per example); PAIR's default, 200.
      fraction: share of all features, in [0, 1], moved per selection round within a
        step (those with the smallest |gradient|).
      max_dist: how far, in [0, 1], a feature's position along its own baseline-input
        segment may lead or trail the straight line's; 0 is the straight line, 1
        leaves the path free within the box spanned by x' and x.
      return_delta: also return the completeness gap per example,
        ``sum(A_i) - (f_t(x_i) - f_t(x'_i))``.

    Returns:
      float32 attributions shaped like ``x``; with ``return_delta`` also ``(N,)`` gaps.
    """
    x = as_input(x)
    with layout_checked(fn, x):  # a baseline that does not fit a misread x: say why
        baseline = as_baseline(baseline, x)
    steps = as_count(steps, "steps")
    fraction = _unit_interval(fraction, "fraction")
    max_dist = _unit_interval(max_dist, "max_dist")
    target = resolve_target(fn, x, target, batch_size=batch_size)
    features = math.prod(x.shape[1:])
    rank = math.floor(fraction * (features - 1))  # numpy's quantile(..., 'lower')
    # a_k = (k + 1) / n: the right Riemann nodes, computed as the quadrature's are.
    alphas = jnp.asarray(quadrature("riemann_right", steps)[0], jnp.float32)
    advance = jax.vmap(
        lambda p, g, s, e, a: _guided_step(p, g, s, e, a, max_dist=max_dist, rank=rank),
        in_axes=(0, 0, 0, 0, None),
    )

    def path_attributions(example: Array, _: Array) -> Array:
        start, end, classes = baseline[example], x[example], target[example]
        flat_start = start.reshape(start.shape[0], -1)
        flat_end = end.reshape(end.shape[0], -1)

        def walk(carry: tuple[Array, Array], step: Array) -> tuple[tuple[Array, Array], None]:
            point, total = carry
            gradient = target_logit_grad(fn, point, classes)
            flat = advance(
                point.reshape(flat_start.shape),
                gradient.reshape(flat_start.shape),
                flat_start,
                flat_end,
                alphas[step],
            )
            following = jnp.where(step == steps - 1, end, flat.reshape(point.shape))
            return (following, total + (following - point) * gradient), None

        steps_index = jnp.arange(steps, dtype=jnp.int32)
        (_, total), _ = jax.lax.scan(walk, (start, jnp.zeros_like(start)), steps_index)
        return total

    attributions = sum_over_samples(path_attributions, x.shape[0], batch_size=batch_size)
    if not return_delta:
        return attributions
    delta = completeness_delta(
        fn, x, target, attributions, baseline=baseline, batch_size=batch_size
    )
    return attributions, delta
