"""Figures for a k-sparse autoencoder (dictionary learning) study.

Conventions (numpy in, Figure out; a PNG only when given a path):
  * decoder atoms are ``(K, H, W)`` or ``(K, H, W, C)`` with C in {1, 3}; a
    single-channel atom is drawn on a diverging colour map centred at zero (white
    means zero weight, scaled per atom by its largest absolute value), an RGB atom
    is min-max scaled to [0, 1] per atom;
  * images are float arrays in [0, 1], ``(N, H, W)`` or ``(N, H, W, C)``;
  * latent usage is a count per latent of the samples it was active in, shown as a
    firing frequency ``count / num_samples``; a latent that never fired is dead.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fmi_jax.plotting._base import finish, new_figure

__all__ = ["atom_grid", "latent_usage", "reconstructions"]


def _as_images(a: np.ndarray, name: str, *, lead: str) -> np.ndarray:
    """``(N, H, W)`` or ``(N, H, W, C)`` with C in {1, 3} -> ``(N, H, W)`` or ``(N, H, W, 3)``."""
    a = np.asarray(a, np.float64)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[-1] != 3):
        raise ValueError(
            f"{name} must have shape ({lead}, H, W) or ({lead}, H, W, C) with C in {{1, 3}}, "
            f"got shape {a.shape}"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    return a


def _no_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def atom_grid(
    atoms: np.ndarray,
    path: str | Path | None = None,
    *,
    order: np.ndarray | None = None,
    max_atoms: int = 100,
    title: str | None = None,
) -> Figure:
    """Decoder atoms in a near-square grid, each panel titled with the atom's index.

    Args:
      atoms: ``(K, H, W)`` or ``(K, H, W, C)`` with C in {1, 3}.
      order: indices into the K atoms giving the order in which to draw them (e.g.
        the most-used latents first); default ``0 .. K-1``.
      max_atoms: draw at most this many atoms (the first ones of `order`).
    """
    a = _as_images(atoms, "atoms", lead="K")
    num = len(a)
    if order is None:
        idx = np.arange(num)
    else:
        idx = np.asarray(order)
        if idx.ndim != 1 or idx.size == 0:
            raise ValueError(f"order must be a non-empty 1-D index array, got shape {idx.shape}")
        if not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"order must hold integer indices, got dtype {idx.dtype}")
        bad = idx[(idx < 0) | (idx >= num)]
        if bad.size:
            raise ValueError(
                f"order indices must lie in [0, {num}) for {num} atoms, got e.g. {bad[:5].tolist()}"
            )
    if max_atoms < 1:
        raise ValueError(f"max_atoms must be >= 1, got {max_atoms}")
    idx = idx[:max_atoms]
    n = len(idx)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig = new_figure(figsize=(1.1 * cols, 1.2 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, i in zip(axes.ravel(), idx):
        atom = a[i]
        if atom.ndim == 2:
            vmax = float(np.max(np.abs(atom)))
            if not np.isfinite(vmax) or vmax <= 0:
                vmax = 1.0
            ax.imshow(atom, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        else:
            lo, hi = float(atom.min()), float(atom.max())
            rgb = (atom - lo) / (hi - lo) if hi > lo else np.full_like(atom, 0.5)
            ax.imshow(np.clip(rgb, 0, 1))
        _no_ticks(ax)
        ax.set_title(str(int(i)), fontsize=6, pad=2)
    fig.suptitle(title or "decoder atoms", fontsize=10)
    fig.tight_layout()
    return finish(fig, path)


def reconstructions(
    originals: np.ndarray,
    reconstructed: np.ndarray,
    path: str | Path | None = None,
    *,
    errors: np.ndarray | None = None,
    max_images: int = 10,
    title: str | None = None,
) -> Figure:
    """Originals (top row) above their reconstructions (bottom row).

    Args:
      originals, reconstructed: the same shape, ``(N, H, W)`` or ``(N, H, W, C)``
        with C in {1, 3}, values in [0, 1].
      errors: ``(N,)`` per-image MSE, written under each reconstruction.
      max_images: draw at most this many columns (the first images).
    """
    o_shape, r_shape = np.shape(originals), np.shape(reconstructed)
    if o_shape != r_shape:
        raise ValueError(
            f"originals and reconstructed must have the same shape, got {o_shape} and {r_shape}"
        )
    orig = _as_images(originals, "originals", lead="N")
    recon = _as_images(reconstructed, "reconstructed", lead="N")
    num = len(orig)
    if errors is not None:
        errors = np.asarray(errors, np.float64)
        if errors.shape != (num,):
            raise ValueError(
                f"errors must have shape ({num},), one per image, got shape {errors.shape}"
            )
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    n = min(num, max_images)
    fig = new_figure(figsize=(1.5 * n + 0.6, 3.5))
    axes = fig.subplots(2, n, squeeze=False)
    for j in range(n):
        for r, img in enumerate((orig[j], recon[j])):
            ax = axes[r, j]
            ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            _no_ticks(ax)
        if errors is not None:
            axes[1, j].set_xlabel(f"mse {errors[j]:.2g}", fontsize=7)
    axes[0, 0].set_ylabel("original", fontsize=9)
    axes[1, 0].set_ylabel("reconstruction", fontsize=9)
    fig.suptitle(title or "reconstructions", fontsize=10)
    fig.tight_layout()
    return finish(fig, path)


def latent_usage(
    counts: np.ndarray,
    path: str | Path | None = None,
    *,
    num_samples: int,
    k: int | None = None,
    title: str | None = None,
) -> Figure:
    """How often each latent fires: a histogram and a rank plot of firing frequencies.

    Left: histogram of ``counts / num_samples`` over the latents that fired at least
    once (log x-axis), with the number of dead latents written in the panel. Right:
    the firing frequencies sorted descending (log y-axis); with `k` given, a line at
    ``k / K``, the frequency every latent would have if usage were uniform.

    Args:
      counts: ``(K,)`` number of the `num_samples` samples each latent was active in.
      num_samples: how many samples the counts were taken over.
      k: active latents per sample (the k of the k-sparse autoencoder).
    """
    c = np.asarray(counts)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array (K,), got shape {c.shape}")
    c = c.astype(np.float64)
    if not np.isfinite(c).all():
        raise ValueError("counts contains NaN or Inf")
    if num_samples <= 0:
        raise ValueError(f"num_samples must be > 0, got {num_samples}")
    if (c < 0).any():
        raise ValueError(f"counts must be non-negative, got minimum {c.min():g}")
    if (c > num_samples).any():
        raise ValueError(f"counts must be <= num_samples = {num_samples}, got maximum {c.max():g}")
    num = c.size
    if k is not None and not 1 <= k <= num:
        raise ValueError(f"k must lie in [1, {num}] for {num} latents, got {k}")
    freq = c / num_samples
    alive = np.sort(freq[freq > 0])[::-1]
    dead = num - alive.size
    lo, hi = 1.0 / num_samples, 1.0
    if lo >= hi:
        lo = hi / 10
    uniform = None if k is None else k / num

    fig = new_figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2)
    if alive.size:
        left.hist(alive, bins=np.geomspace(lo, hi, 41), color="tab:blue")
    left.set_xscale("log")
    left.set_xlim(lo, hi)
    left.set_xlabel("firing frequency (fraction of samples)")
    left.set_ylabel("latents")
    left.set_title("firing frequency of live latents", fontsize=9)
    left.text(
        0.03,
        0.95,
        f"dead: {dead} of {num} ({100 * dead / num:.1f}%)",
        transform=left.transAxes,
        ha="left",
        va="top",
        fontsize=8,
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
    )
    left.grid(alpha=0.3)

    if alive.size:
        right.plot(np.arange(alive.size), alive, color="tab:blue", label="latents (live)")
    if uniform is not None:
        right.axhline(uniform, color="tab:red", ls="--", label=f"uniform k/K = {uniform:.3g}")
    right.set_yscale("log")
    right.set_ylim(0.5 * min(lo, uniform or lo), 1.5)
    right.set_xlim(0, max(num - 1, 1))
    right.set_xlabel("latent rank")
    right.set_ylabel("firing frequency")
    right.set_title("latents sorted by firing frequency", fontsize=9)
    if alive.size or uniform is not None:
        right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(title or "latent usage", fontsize=10)
    fig.tight_layout()
    return finish(fig, path)
