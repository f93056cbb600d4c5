"""Attribution figures: heat maps, overlays, sign modes, per-sample sheets, galleries.

Conventions (numpy in, PNG out):
  * images are float arrays in [0, 1], (H, W) or (H, W, C) with C in {1, 3};
  * attribution maps are shaped like the image; channels are summed (signed);
  * sign modes: 'positive' (evidence for the class), 'negative' (against),
    'absolute' (magnitude) and 'all' (signed, on a diverging colour map centred
    at zero so that white means no attribution);
  * scaling: a map is divided by the (100 - outlier_percentile)-th percentile of
    its absolute values and clipped, so a few extreme pixels do not wash out the
    rest (Captum's `visualize_image_attr` does the same with `outlier_perc`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.gridspec import GridSpec

from fmi_jax.plotting._base import plt, save

__all__ = [
    "SIGNS",
    "agreement_matrices",
    "blend",
    "class_gallery",
    "explanation_sheet",
    "heatmap",
    "layer_grid",
    "sign_modes",
    "default_sign",
]

SIGNS = ("positive", "negative", "absolute", "all")
CMAPS = {"positive": "Reds", "negative": "Blues", "absolute": "inferno", "all": "RdBu_r"}


def _as_hw(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.ndim == 3:
        return a.sum(-1)
    if a.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, C) map, got shape {a.shape}")
    return a


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.clip(np.asarray(image, np.float64), 0.0, 1.0)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.shape[-1] != 3:
        raise ValueError(f"images must have 1 or 3 channels, got shape {image.shape}")
    return image


def default_sign(attr: np.ndarray) -> str:
    """'all' for a map with negative values, 'absolute' for a non-negative one."""
    return "all" if np.min(attr) < 0 else "absolute"


def heatmap(
    attr: np.ndarray, *, sign: str = "absolute", outlier_percentile: float = 1.0
) -> np.ndarray:
    """(H, W) map scaled to [0, 1] ([-1, 1] for sign='all')."""
    if sign not in SIGNS:
        raise ValueError(f"unknown sign mode {sign!r}; choose one of {SIGNS}")
    a = _as_hw(attr)
    if not np.isfinite(a).all():
        raise ValueError("attribution map contains NaN or Inf")
    if sign == "positive":
        a = np.maximum(a, 0)
    elif sign == "negative":
        a = np.maximum(-a, 0)
    elif sign == "absolute":
        a = np.abs(a)
    scale = np.percentile(np.abs(a), 100 - outlier_percentile)
    if scale <= 0:
        scale = np.abs(a).max()
    if scale <= 0:
        return np.zeros_like(a)
    return np.clip(a / scale, -1 if sign == "all" else 0, 1)


def blend(
    image: np.ndarray,
    attr: np.ndarray,
    *,
    sign: str = "absolute",
    alpha: float = 0.7,
    outlier_percentile: float = 1.0,
) -> np.ndarray:
    """The heat map alpha-composited over a greyed copy of the image, (H, W, 3) in [0, 1].

    Each pixel's opacity is alpha * |heat|, so unattributed pixels show the image.
    """
    h = heatmap(attr, sign=sign, outlier_percentile=outlier_percentile)
    cmap = colormaps[CMAPS[sign]]
    colours = cmap((h + 1) / 2 if sign == "all" else h)[..., :3]
    base = _rgb(image).mean(-1, keepdims=True) * np.ones(3)  # grey: colour belongs to the map
    base = 0.25 + 0.6 * base
    opacity = alpha * np.abs(h)[..., None]
    return np.clip((1 - opacity) * base + opacity * colours, 0, 1)


def _show_map(ax, attr, sign, title=None):
    h = heatmap(attr, sign=sign)
    if sign == "all":
        im = ax.imshow(h, cmap=CMAPS[sign], vmin=-1, vmax=1)
    else:
        im = ax.imshow(h, cmap=CMAPS[sign], vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return im


def _show_image(ax, image, title=None):
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def sign_modes(
    image: np.ndarray, attr: np.ndarray, path: str | Path, *, method: str = "", title: str = ""
) -> Path:
    """Image, then the map as positive, negative, absolute and signed ('all') heat maps,
    then the signed blend over the image."""
    fig, axes = plt.subplots(1, 6, figsize=(15, 2.9))
    _show_image(axes[0], image, "input")
    for ax, sign in zip(axes[1:5], SIGNS):
        im = _show_map(ax, attr, sign, f"{method} {sign}".strip())
    fig.colorbar(im, ax=axes[4], fraction=0.046, pad=0.04)
    axes[5].imshow(blend(image, attr, sign="all"))
    axes[5].set_title("blended (all)", fontsize=9)
    axes[5].set_xticks([])
    axes[5].set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def explanation_sheet(
    image: np.ndarray,
    maps: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    title: str = "",
    stats: Mapping[str, Mapping[str, float]] | None = None,
    correlation: np.ndarray | None = None,
    signs: Mapping[str, str] | None = None,
) -> Path:
    """The per-sample figure of the explain study.

    Row 1: the input and one heat map per method. Row 2: each map blended over the
    input. Row 3: per-method statistics (a table) and the cross-method correlation
    matrix of this sample.
    """
    names = list(maps)
    if not names:
        raise ValueError("explanation_sheet needs at least one map")
    signs = dict(signs or {})
    cols = 1 + len(names)
    fig = plt.figure(figsize=(2.3 * cols, 7.6))
    gs = GridSpec(3, cols, figure=fig, height_ratios=[1, 1, 1.15], hspace=0.35)
    _show_image(fig.add_subplot(gs[0, 0]), image, "input")
    ax = fig.add_subplot(gs[1, 0])
    _show_image(ax, image, "overlays ->")
    for j, name in enumerate(names, start=1):
        sign = signs.get(name) or default_sign(maps[name])
        _show_map(fig.add_subplot(gs[0, j]), maps[name], sign, f"{name}\n({sign})")
        ax = fig.add_subplot(gs[1, j])
        ax.imshow(blend(image, maps[name], sign=sign))
        ax.set_xticks([])
        ax.set_yticks([])
    split = max(1, cols // 2)
    if stats:
        ax = fig.add_subplot(gs[2, :split])
        ax.axis("off")
        keys = list(next(iter(stats.values())).keys())
        cells = [[f"{stats[n][k]:.3g}" for k in keys] for n in stats]
        table = ax.table(cellText=cells, rowLabels=list(stats), colLabels=keys, loc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        table.scale(1, 1.2)
        ax.set_title("statistics", fontsize=9)
    if correlation is not None:
        ax = fig.add_subplot(gs[2, split:])
        im = ax.imshow(correlation, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for i in range(len(names)):
            for j in range(len(names)):
                if np.isfinite(correlation[i, j]):
                    ax.text(j, i, f"{correlation[i, j]:.2f}", ha="center", va="center", fontsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title("Spearman correlation", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, path)


def class_gallery(
    images: np.ndarray,
    maps: np.ndarray,
    labels: Sequence[int],
    class_names: Sequence[str],
    path: str | Path,
    *,
    method: str = "",
    sign: str | None = None,
    per_class: int = 3,
) -> Path:
    """Rows are classes; each row shows up to `per_class` examples blended with their maps."""
    images, maps, labels = np.asarray(images), np.asarray(maps), np.asarray(labels)
    sign = sign or default_sign(maps)
    classes = [c for c in range(len(class_names)) if (labels == c).any()]
    if not classes:
        raise ValueError("class_gallery got no examples")
    fig, axes = plt.subplots(
        len(classes), per_class, figsize=(1.9 * per_class, 1.9 * len(classes)), squeeze=False
    )
    for r, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)[:per_class]
        for k in range(per_class):
            ax = axes[r, k]
            ax.set_xticks([])
            ax.set_yticks([])
            if k < len(idx):
                ax.imshow(blend(images[idx[k]], maps[idx[k]], sign=sign))
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(class_names[c], fontsize=8)
    fig.suptitle(f"{method} ({sign})".strip(), fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def agreement_matrices(
    matrices: Mapping[str, np.ndarray], names: Sequence[str], path: str | Path
) -> Path:
    """Side-by-side method-by-method matrices (correlations in [-1, 1], overlaps in [0, 1])."""
    fig, axes = plt.subplots(
        1,
        len(matrices),
        figsize=(1.2 + 3.6 * len(matrices), 1.4 + 0.45 * len(names)),
        squeeze=False,
    )
    for ax, (title, m) in zip(axes[0], matrices.items()):
        m = np.asarray(m, np.float64)
        lo = -1 if (m < 0).any() else 0
        im = ax.imshow(m, cmap="RdBu_r" if lo < 0 else "viridis", vmin=lo, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return save(fig, path)


def layer_grid(
    images: np.ndarray,
    maps: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    row_titles: Sequence[str] | None = None,
    method: str = "Grad-CAM",
    sign: str = "absolute",
) -> Path:
    """One row per sample: the input, then the map of each layer over it.

    Args:
      images: ``(N, H, W[, C])`` in [0, 1].
      maps: layer name -> ``(N, H, W)`` maps (already resized to the input), in the
        order the columns should appear (first layer first).
      row_titles: a label per sample (e.g. true and predicted class).
    """
    layers = list(maps)
    if not layers:
        raise ValueError("layer_grid needs the maps of at least one layer")
    n = len(images)
    for layer in layers:
        if len(maps[layer]) != n:
            raise ValueError(f"{layer}: {len(maps[layer])} maps for {n} images")
    cols = 1 + len(layers)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n), squeeze=False)
    for i in range(n):
        _show_image(axes[i, 0], images[i], "input" if i == 0 else None)
        if row_titles is not None:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=8)
        for j, layer in enumerate(layers, start=1):
            ax = axes[i, j]
            ax.imshow(blend(images[i], maps[layer][i], sign=sign))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(layer, fontsize=9)
    fig.suptitle(f"{method} of each layer", fontsize=11)
    fig.tight_layout()
    return save(fig, path)
