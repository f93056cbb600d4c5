"""Noisy linear imputation of removed pixels, the perturbation of ROAD.

Rong, Leemann, Borisov, Kasneci & Kasneci, "A Consistent and Efficient Evaluation
Strategy for Attribution Methods", ICML 2022, arXiv:2202.00449. Replacing removed
pixels by a constant (deletion curves with a black substrate) leaks the *shape* of the
removal mask to the model: a classifier can read the class from where the holes are,
so a map can score well without being faithful. ROAD fills each removed pixel from its
neighbours instead, so that the filled image carries (nearly) no information about
which pixels were removed.

For an image ``x`` of shape ``(H, W, C)`` and a removal mask ``m`` of shape ``(H, W)``
(1 = removed), the imputed values ``v`` solve, at every removed pixel ``p`` and for
every channel separately::

    d_p v_p - sum_{o : p+o removed} w_o v_{p+o} = sum_{o : p+o kept} w_o x_{p+o}

over the 8 neighbour offsets ``o`` that stay inside the image, with ``w_o = 1/6`` for
the 4 edge neighbours and ``1/12`` for the 4 diagonal ones (they sum to 1), and
``d_p = sum_o w_o`` over the same in-image offsets. Every removed pixel is thus the
weighted mean of its in-image neighbours, removed ones included, all at once. The
result is ``v + noise * z``, ``z ~ N(0, 1)`` per removed pixel and channel, in the
removed pixels and ``x`` in the kept ones (``noise = 0.01``, the paper's default, in
the units of the model's input).

Solver. The authors' code (github.com/tleemann/road_evaluation, ``imputations.py``,
also shipped by pytorch-grad-cam) assembles the sparse system on the host and calls
``scipy.sparse.linalg.spsolve``, one image at a time. Here it is solved matrix-free by
conjugate gradients (``jax.scipy.sparse.linalg.cg``) on the whole grid::

    A v = m (d (m v) - N(m v)) + (1 - m) v,    b = m N((1 - m) x)

with ``N`` the weighted neighbour sum, zeros outside the image (a 3 x 3 stencil).
``A`` is symmetric because ``w_o = w_{-o}``, and positive definite whenever at least one
pixel is kept: every connected group of removed pixels then touches a kept one (the
8-neighbour grid is connected), which makes the removed block a Dirichlet problem of a
weighted graph Laplacian; the identity on the kept pixels, where ``b = 0``, keeps the
full-grid operator positive definite and its solution 0 there. When every pixel is
removed the system is singular (any constant solves it; the reference's ``spsolve``
fails); then ``b = 0`` and the imputation here is 0 plus noise. CG stops at
``||b - A v|| <= tol ||b||``; its iterations grow with the width of the largest hole
(the condition number grows with its square). In float32 the condition number, not
``tol``, sets the accuracy for large holes: against a float64 sparse solve the error is
a few 1e-6 on 28 x 28 images and about 1.5e-3 for a single hole of 90% of a 224 x 224
image (at any ``tol`` from 1e-5 to 1e-8), below the default noise of 0.01. Each channel of each image is solved
separately under ``vmap``, so a value never depends on the other images or channels
of a batch, and the function is jit-, vmap- and scan-compatible.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fmi_jax.attribution.core import Array, as_input, example_keys

__all__ = ["DEFAULT_IMPUTATION_NOISE", "noisy_linear_imputation"]

DEFAULT_IMPUTATION_NOISE = 0.01

# (row offset, column offset, weight): the reference's 8-neighbour weights.
_NEIGHBOURS = (
    (-1, -1, 1 / 12),
    (-1, 0, 1 / 6),
    (-1, 1, 1 / 12),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (1, -1, 1 / 12),
    (1, 0, 1 / 6),
    (1, 1, 1 / 12),
)


def _neighbour_sum(v: Array) -> Array:
    """``N(v)[p] = sum_o w_o v[p + o]`` over the 8 neighbours, zeros outside ``(H, W)``."""
    h, w = v.shape
    padded = jnp.pad(v, 1)
    total = jnp.zeros_like(v)
    for di, dj, weight in _NEIGHBOURS:
        total = total + weight * padded[1 + di : 1 + di + h, 1 + dj : 1 + dj + w]
    return total


def _solve_channel(x: Array, removed: Array, tol: float, maxiter: int | None) -> Array:
    """The noise-free imputation of one channel ``x`` ``(H, W)``; ``removed`` is 0/1 float."""
    kept = 1.0 - removed
    degree = _neighbour_sum(jnp.ones_like(x))

    def operator(v: Array) -> Array:
        inside = removed * v
        return removed * (degree * inside - _neighbour_sum(inside)) + kept * v

    rhs = removed * _neighbour_sum(kept * x)
    values, _ = jax.scipy.sparse.linalg.cg(operator, rhs, tol=tol, atol=0.0, maxiter=maxiter)
    return jnp.where(removed > 0, values, x)


def _impute_one(
    x: Array, removed: Array, key: Array, noise: float, tol: float, maxiter: int | None
) -> Array:
    """One image ``(H, W, C)`` with its mask ``(H, W)`` (bool)."""
    mask = removed.astype(x.dtype)
    solve = jax.vmap(lambda channel: _solve_channel(channel, mask, tol, maxiter), 2, 2)
    filled = solve(x)
    if noise:
        filled = filled + noise * mask[..., None] * jax.random.normal(key, x.shape, x.dtype)
    return filled


def noisy_linear_imputation(
    x: Array,
    removed: Array,
    key: Array | None = None,
    *,
    noise: float = DEFAULT_IMPUTATION_NOISE,
    tol: float = 1e-6,
    maxiter: int | None = None,
) -> Array:
    """Images with their removed pixels filled by ROAD's noisy linear imputation.

    Args:
      x: images ``(N, H, W, C)``.
      removed: which pixels to fill, boolean ``(N, H, W)`` (or ``(N, H, W, 1)``); all
        channels of a removed pixel are filled.
      key: a PRNG key, or one key per image ``(N,)``; image ``i`` draws its noise from
        ``fold_in(key, i)``. Needed unless ``noise`` is 0.
      noise: standard deviation of the Gaussian noise added to every filled value, in
        the units of ``x`` (0.01, the paper's default).
      tol: relative residual at which conjugate gradients stop (module docstring: on
        large holes float32 rounding, not ``tol``, limits the accuracy).
      maxiter: conjugate-gradient iterations at most (``None``: JAX's default, 10 times
        the number of pixels; the solve converges long before).

    Returns:
      float32 ``(N, H, W, C)``: ``x`` in the kept pixels, the imputed values plus noise
      in the removed ones (module docstring).

    Raises:
      ValueError: inputs that are not images, a mask of another shape, no key with
        ``noise > 0``, or a negative ``noise``.
    """
    x = as_input(x)
    if x.ndim != 4:
        raise ValueError(f"noisy_linear_imputation needs images (N, H, W, C), got shape {x.shape}")
    removed = jnp.asarray(removed)
    if removed.shape == x.shape[:-1] + (1,):
        removed = removed[..., 0]
    if removed.shape != x.shape[:-1]:
        raise ValueError(
            f"removed must be a mask (N, H, W) = {x.shape[:-1]} for images {x.shape}, "
            f"got shape {removed.shape}"
        )
    noise = _as_noise(noise)
    if noise and key is None:
        raise ValueError("noisy_linear_imputation needs key= for its noise (or noise=0)")
    keys = example_keys(key if key is not None else jax.random.key(0), x.shape[0])
    return jax.vmap(lambda xi, mi, ki: _impute_one(xi, mi, ki, noise, tol, maxiter))(
        x, removed.astype(bool), keys
    )


def _as_noise(noise: Any) -> float:
    if isinstance(noise, jax.core.Tracer):
        raise ValueError("noise must be a static Python number (mark it static under jax.jit)")
    try:
        noise = float(noise)
    except (TypeError, ValueError):
        raise ValueError(f"noise must be a number >= 0, got {noise!r}") from None
    if not noise >= 0 or noise == float("inf"):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    return noise
