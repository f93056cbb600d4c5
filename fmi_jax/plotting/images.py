"""Figures of the image-folder explanation pipeline (numpy in, Figure out, no jax).

Panels carry an id as their matplotlib label, and :func:`panels` reads back the ids of
the panels actually drawn, so tests and callers can check a figure's layout without
parsing a PNG; :class:`SavedFigure` records a written figure's path and panels.

Attribution maps are (H, W, 3) or (H, W); channels are summed (signed) for display,
as everywhere in :mod:`fmi_jax.plotting`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure

from fmi_jax.plotting._base import finish, new_figure
from fmi_jax.plotting.attribution import (
    _colorbar,
    _percentile_scale,
    _show_image,
    _show_map,
    _signed,
    blend,
)

__all__ = ["IMAGE_PANELS", "SavedFigure", "image_explanation", "panels", "summary_sheet"]

# Panel ids of `image_explanation`, left to right.
IMAGE_PANELS = ("image", "top_k", "ig_positive", "ig_all")


class SavedFigure(NamedTuple):
    """A figure written to disk: its file and the ids of its panels."""

    path: Path
    panels: tuple[str, ...]


def _short(label: str, width: int = 28) -> str:
    return label if len(label) <= width else label[: width - 1] + "\u2026"


def panels(fig: Figure) -> tuple[str, ...]:
    """The ids of the panels of `fig`, in drawing order: the labels of its axes, less
    unlabelled ones and colour bars (labelled '<colorbar>')."""
    return tuple(ax.get_label() for ax in fig.axes if ax.get_label() and ax.get_label()[0] != "<")


def image_explanation(
    image: np.ndarray,
    attribution: np.ndarray,
    labels: Sequence[str],
    probabilities: Sequence[float],
    path: str | Path | None = None,
    *,
    title: str = "",
    method: str = "IG",
) -> Figure:
    """One image: the input, a top-k bar chart, the positive map blended over the
    image and the signed ('all') heat map with its colour bar.

    Args:
      image: (H, W, 3) in [0, 1], un-normalised.
      attribution: (H, W, 3) or (H, W) map for the top-1 class.
      labels, probabilities: the top-k classes, most probable first.
      path: saved there when given.

    The colour bar of the signed map is in the attribution's units.
    """
    if len(labels) != len(probabilities) or not len(labels):
        raise ValueError(f"need as many labels as probabilities (>= 1), got {len(labels)}")
    fig = new_figure(figsize=(14.5, 3.5))
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1.25, 1, 1]})
    for ax, panel in zip(axes, IMAGE_PANELS):
        ax.set_label(panel)
    _show_image(axes[0], image, "input")
    ax = axes[1]
    k = len(labels)
    ax.barh(range(k), probabilities, color=["tab:red"] + ["tab:gray"] * (k - 1))
    ax.set_yticks(range(k), [_short(str(label)) for label in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    for i, p in enumerate(probabilities):
        ax.text(min(float(p), 0.82) + 0.01, i, f"{float(p):.3f}", va="center", fontsize=8)
    ax.set_xlabel("softmax probability", fontsize=8)
    ax.set_title(f"top {k}", fontsize=9)
    axes[2].imshow(blend(image, attribution, sign="positive"))
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    axes[2].set_title(f"{method} positive (overlay)", fontsize=9)
    scale = _percentile_scale(_signed(attribution, "all"), 1.0)
    _show_map(axes[3], attribution, "all", f"{method} all signs", scale=scale)
    _colorbar(fig, "all", scale, ax=axes[3])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return finish(fig, path)


def summary_sheet(
    images: np.ndarray,
    attributions: np.ndarray,
    titles: Sequence[str],
    path: str | Path | None = None,
    *,
    columns: int = 4,
    title: str = "",
) -> Figure:
    """A grid of (image, signed map) pairs, `columns` pairs per row, each image titled
    (e.g. 'file: top-1 label (0.93)'). One page: the caller paginates.

    Panels are 'image_<i>' and 'ig_<i>' for the i-th image of the page. Saved when
    `path` is given.
    """
    images, attributions = np.asarray(images), np.asarray(attributions)
    n = len(images)
    if not n or len(attributions) != n or len(titles) != n:
        raise ValueError(
            f"need as many images, maps and titles (>= 1): {n}, {len(attributions)}, {len(titles)}"
        )
    columns = max(1, min(int(columns), n))
    rows = math.ceil(n / columns)
    fig = new_figure(figsize=(3.3 * columns, 1.95 * rows + 0.4))
    axes = fig.subplots(rows, 2 * columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, columns)
        ax_image, ax_map = axes[r, 2 * c], axes[r, 2 * c + 1]
        ax_image.set_label(f"image_{i}")
        ax_map.set_label(f"ig_{i}")
        ax_image.axis("on")
        ax_map.axis("on")
        _show_image(ax_image, images[i])
        ax_image.set_title(_short(titles[i], 34), fontsize=7, loc="left")
        _show_map(ax_map, attributions[i], "all")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return finish(fig, path)
