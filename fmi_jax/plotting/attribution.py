"""Attribution figures: heat maps, overlays, sign modes, per-sample sheets, galleries.

Conventions (numpy in, Figure out; a PNG only when given a path):
  * images are float arrays in [0, 1], (H, W) or (H, W, C) with C in {1, 3};
  * attribution maps are shaped like the image; channels are summed (signed);
  * sign modes: 'positive' (evidence for the class), 'negative' (against),
    'absolute' (magnitude) and 'all' (signed, on a diverging colour map centred
    at zero so that white means no attribution);
  * scaling: a map is divided by a scale and clipped to [0, 1] ([-1, 1] for 'all').
    By default (``scale='each'``) the scale is the (100 - outlier_percentile)-th
    percentile of the map's own absolute values, so a few extreme pixels do not wash
    out the rest (Captum's `visualize_image_attr` does the same with `outlier_perc`);
    every map then saturates, whatever its magnitude. Figures with several maps take
    ``scale='shared'`` to divide all of them by one value, the same percentile of all
    their absolute values together, so that magnitudes can be compared across panels
    (a map twice as large is drawn twice as intense), or a number, to share one scale
    across several figures. ``colorbar=True`` draws the scale in the maps' own units;
    without it, a panel scaled to itself says under it which value is drawn at full
    colour (a map of 1e-5 beside one of 1e-2 is as saturated, not as important).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from fmi_jax.layout import looks_channels_first
from fmi_jax.plotting._base import finish, new_figure

__all__ = [
    "SCALES",
    "SIGNS",
    "agreement_matrices",
    "blend",
    "class_gallery",
    "concept_scores",
    "default_sign",
    "drawn_map",
    "explanation_sheet",
    "heatmap",
    "layer_grid",
    "map_scale",
    "sign_modes",
]

SIGNS = ("positive", "negative", "absolute", "all")
SCALES = ("each", "shared")
CMAPS = {"positive": "Reds", "negative": "Blues", "absolute": "inferno", "all": "RdBu_r"}
# What a colour bar's numbers are, per sign mode, in the maps' own units.
UNITS = {
    "positive": "positive part",
    "negative": "|negative part|",
    "absolute": "|attribution|",
    "all": "attribution",
}


def drawn_map(attr: np.ndarray) -> np.ndarray:
    """The (H, W) map a figure draws of an (H, W) or (H, W, C) attribution: channels
    summed (signed), float64. Statistics shown beside a figure are of this map."""
    return _as_hw(attr)


def _as_hw(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.ndim == 3 and looks_channels_first(a.shape):
        raise ValueError(
            f"expected an (H, W) or (H, W, C) map, got shape {a.shape}: one map of a "
            "batch (pass maps[i]) or a channels-first (C, H, W) map?"
        )
    if a.ndim == 3:
        return a.sum(-1)
    if a.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, C) map, got shape {a.shape}")
    return a


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:  # 0..255, as matplotlib reads them
        image = image / 255.0
    image = np.asarray(image, np.float64)
    if image.size and (image.min() < -1e-3 or image.max() > 1 + 1e-3):
        warnings.warn(
            f"images are drawn in [0, 1]; values from {image.min():.3g} to {image.max():.3g} "
            "are clipped (pass the images before their normalisation)",
            stacklevel=3,
        )
    image = np.clip(image, 0.0, 1.0)
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


def _signed(attr: np.ndarray, sign: str) -> np.ndarray:
    """The (H, W) map in sign mode `sign`, before scaling."""
    if sign not in SIGNS:
        raise ValueError(f"unknown sign mode {sign!r}; choose one of {SIGNS}")
    a = _as_hw(attr)
    if not np.isfinite(a).all():
        raise ValueError("attribution map contains NaN or Inf")
    if sign == "positive":
        return np.maximum(a, 0)
    if sign == "negative":
        return np.maximum(-a, 0)
    if sign == "absolute":
        return np.abs(a)
    return a


def _percentile_scale(values: np.ndarray, outlier_percentile: float) -> float:
    """The (100 - outlier_percentile)-th percentile of |values|; their maximum when
    that is 0 (a sparse map); 0 only for an all-zero map."""
    if not 0 <= outlier_percentile < 100:
        raise ValueError(
            f"outlier_percentile must be in [0, 100) (the share of the largest |values| "
            f"left out of the scale), got {outlier_percentile!r}"
        )
    v = np.abs(np.asarray(values, np.float64)).ravel()
    if not v.size:
        return 0.0
    scale = float(np.percentile(v, 100 - outlier_percentile))
    return scale if scale > 0 else float(v.max())


def map_scale(maps: Iterable[np.ndarray], *, outlier_percentile: float = 1.0) -> float:
    """One scale for several maps: the (100 - outlier_percentile)-th percentile of the
    absolute values of all of them together (channels summed, as drawn).

    Pass it as ``scale=`` to several figures to draw them on one colour scale.
    """
    flat = [_as_hw(m).ravel() for m in maps]
    if not flat:
        raise ValueError("map_scale needs at least one map")
    values = np.concatenate(flat)
    if not np.isfinite(values).all():
        raise ValueError("attribution map contains NaN or Inf")
    return _percentile_scale(values, outlier_percentile)


def heatmap(
    attr: np.ndarray,
    *,
    sign: str = "absolute",
    outlier_percentile: float = 1.0,
    scale: float | None = None,
) -> np.ndarray:
    """(H, W) map divided by `scale` and clipped to [0, 1] ([-1, 1] for sign='all').

    `scale` defaults to the map's own (100 - outlier_percentile)-th percentile of
    absolute values (in sign mode `sign`); give one (e.g. from :func:`map_scale`) to
    draw several maps on a common scale.
    """
    a = _signed(attr, sign)
    if scale is None:
        scale = _percentile_scale(a, outlier_percentile)
    elif not np.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be a finite number >= 0, got {scale}")
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
    scale: float | None = None,
) -> np.ndarray:
    """The heat map alpha-composited over a greyed copy of the image, (H, W, 3) in [0, 1].

    Each pixel's opacity is alpha * |heat|, so unattributed pixels show the image.
    `scale` is as in :func:`heatmap`.
    """
    h = heatmap(attr, sign=sign, outlier_percentile=outlier_percentile, scale=scale)
    if h.shape != np.shape(image)[:2]:
        raise ValueError(
            f"a map of (H, W) {h.shape} does not fit an image of shape {np.shape(image)}: "
            "resize the map to the image first (a CAM's upsample=True)"
        )
    cmap = colormaps[CMAPS[sign]]
    colours = cmap((h + 1) / 2 if sign == "all" else h)[..., :3]
    base = _rgb(image).mean(-1, keepdims=True) * np.ones(3)  # grey: colour belongs to the map
    base = 0.25 + 0.6 * base
    opacity = alpha * np.abs(h)[..., None]
    return np.clip((1 - opacity) * base + opacity * colours, 0, 1)


def _scales(
    items: Sequence[tuple[np.ndarray, str]], scale: str | float, outlier_percentile: float
) -> list[float]:
    """The value each (map, sign) of a figure is divided by, for a `scale` argument."""
    if isinstance(scale, str):
        if scale == "each":
            return [_percentile_scale(_signed(a, s), outlier_percentile) for a, s in items]
        if scale == "shared":
            for a, s in items:
                _signed(a, s)  # validate sign and values before combining
            shared = map_scale([a for a, _ in items], outlier_percentile=outlier_percentile)
            return [shared] * len(items)
        raise ValueError(f"unknown scale {scale!r}; choose one of {SCALES} or a number > 0")
    value = float(scale)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"a numeric scale must be finite and > 0, got {scale}")
    return [value] * len(items)


def _colorbar(fig: Figure, sign: str, scale: float, *, ax=None, cax=None):
    """A colour bar of sign mode `sign` from 0 (or -scale) to scale, in the maps' units."""
    vmax = scale if scale > 0 else 1.0  # an all-zero map: any range shows its white
    norm = Normalize(vmin=-vmax if sign == "all" else 0.0, vmax=vmax)
    mappable = ScalarMappable(norm=norm, cmap=CMAPS[sign])
    if cax is not None:
        bar = fig.colorbar(mappable, cax=cax)
        bar.set_label(UNITS[sign], fontsize=7)
    else:  # beside one panel, whose title names the sign mode
        bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04)
    if scale <= 0:  # its ticks would invent a range
        bar.set_ticks([])
        bar.set_label("all zero", fontsize=7)
    bar.ax.set_label("<colorbar>")
    bar.ax.tick_params(labelsize=7)
    bar.ax.yaxis.get_offset_text().set_fontsize(7)
    return bar


def _no_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _scale_label(ax, scale: float) -> None:
    """Under a panel scaled to itself and drawn without a colour bar: the value drawn
    at full colour, so that a near-zero map, stretched to saturation like any other,
    reads as such."""
    text = "all zero" if scale <= 0 else f"full colour at {scale:.2g}"
    ax.set_xlabel(text, fontsize=6, labelpad=2)


def _show_map(ax, attr, sign, title=None, *, scale=None):
    h = heatmap(attr, sign=sign, scale=scale)
    if sign == "all":
        im = ax.imshow(h, cmap=CMAPS[sign], vmin=-1, vmax=1)
    else:
        im = ax.imshow(h, cmap=CMAPS[sign], vmin=0, vmax=1)
    _no_ticks(ax)
    if title:
        ax.set_title(title, fontsize=9)
    return im


def _show_image(ax, image, title=None):
    ax.imshow(_rgb(image))  # uint8 or [0, 1], as the overlays read it
    _no_ticks(ax)
    if title:
        ax.set_title(title, fontsize=9)


def _grid(fig: Figure, rows: int, cols: int, *, bar_column: bool):
    """A rows x cols array of axes and, with `bar_column`, a narrow axes to their
    right spanning all rows for one shared colour bar (else None)."""
    if not bar_column:
        return fig.subplots(rows, cols, squeeze=False), None
    gs = fig.add_gridspec(rows, cols + 1, width_ratios=[1.0] * cols + [0.07])
    axes = np.array([[fig.add_subplot(gs[r, c]) for c in range(cols)] for r in range(rows)])
    return axes, fig.add_subplot(gs[:, cols])


def sign_modes(
    image: np.ndarray,
    attr: np.ndarray,
    path: str | Path | None = None,
    *,
    method: str = "",
    title: str = "",
    scale: str | float = "each",
    colorbar: bool = True,
    outlier_percentile: float = 1.0,
) -> Figure:
    """Image, then the map as positive, negative, absolute and signed ('all') heat maps,
    then the signed blend over the image.

    With ``scale='each'`` every panel saturates; with ``'shared'`` all four are divided
    by one value, so the balance of positive and negative evidence shows. `colorbar`
    puts a colour bar in the map's units beside each heat map. Saved when `path` is given.
    """
    scales = _scales([(attr, s) for s in SIGNS], scale, outlier_percentile)
    fig = new_figure(figsize=(15, 2.9))
    axes = fig.subplots(1, 6)
    _show_image(axes[0], image, "input")
    for ax, sign, value in zip(axes[1:5], SIGNS, scales):
        _show_map(ax, attr, sign, f"{method} {sign}".strip(), scale=value)
        if colorbar:
            _colorbar(fig, sign, value, ax=ax)
        elif scale == "each":
            _scale_label(ax, value)
    axes[5].imshow(blend(image, attr, sign="all", scale=scales[SIGNS.index("all")]))
    axes[5].set_title("blended (all)", fontsize=9)
    _no_ticks(axes[5])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return finish(fig, path)


def _check_square(matrix: Any, names: Sequence[str], what: str) -> None:
    """A method-by-method matrix must have one row and column per name."""
    shape = np.shape(matrix)
    if shape != (len(names), len(names)):
        raise ValueError(
            f"the {what} matrix has shape {shape}, expected {(len(names), len(names))}: "
            f"one row and column per method {list(names)}"
        )


def explanation_sheet(
    image: np.ndarray,
    maps: Mapping[str, np.ndarray],
    path: str | Path | None = None,
    *,
    title: str = "",
    stats: Mapping[str, Mapping[str, float]] | None = None,
    correlation: np.ndarray | None = None,
    signs: Mapping[str, str] | None = None,
    scale: str | float = "each",
    colorbar: bool = False,
    outlier_percentile: float = 1.0,
) -> Figure:
    """The per-sample figure of the explain study.

    Row 1: the input and one heat map per method. Row 2: each map blended over the
    input. Row 3: per-method statistics (a table) and the cross-method correlation
    matrix of this sample.

    `scale` (see the module docstring): 'each' scales every map to itself, 'shared'
    divides all maps by one value so that methods' magnitudes can be compared (only
    meaningful when the maps are in the same units). `colorbar` draws the scale in the
    maps' units: one bar beside each map for 'each', one per colour map (sign mode)
    at the right of the maps for a shared scale.

    Panels carry ids as their matplotlib labels: 'input', 'map:<name>',
    'overlay:<name>', 'statistics', 'correlation'. Saved when `path` is given.
    """
    names = list(maps)
    if not names:
        raise ValueError("explanation_sheet needs at least one map")
    extra = [n for n in stats or {} if n not in maps]
    if extra:
        raise ValueError(f"stats name {extra}, which are not among the maps {names}")
    if correlation is not None:
        _check_square(correlation, names, "correlation")
    signs = dict(signs or {})
    sign_of = {name: signs.get(name) or default_sign(maps[name]) for name in names}
    scales = dict(
        zip(names, _scales([(maps[n], sign_of[n]) for n in names], scale, outlier_percentile))
    )
    # A shared scale gets one bar per colour map, in a column of its own.
    bar_signs = list(dict.fromkeys(sign_of.values())) if colorbar and scale != "each" else []
    bar_each = colorbar and not bar_signs
    cols = 1 + len(names)
    bar_width = 0.32 * len(bar_signs)
    fig = new_figure(figsize=(2.3 * (cols + bar_width) * (1.15 if bar_each else 1), 7.6))
    gs = fig.add_gridspec(
        3,
        cols + bool(bar_signs),
        width_ratios=[1.0] * cols + ([bar_width] if bar_signs else []),
        height_ratios=[1, 1, 1.15],
        hspace=0.35,
        wspace=0.45 if bar_each else None,  # room for each bar's tick labels
    )
    ax = fig.add_subplot(gs[0, 0], label="input")
    _show_image(ax, image, "input")
    _show_image(fig.add_subplot(gs[1, 0]), image, "overlays ->")
    for j, name in enumerate(names, start=1):
        sign, value = sign_of[name], scales[name]
        ax = fig.add_subplot(gs[0, j], label=f"map:{name}")
        _show_map(ax, maps[name], sign, f"{name}\n({sign})", scale=value)
        if bar_each:
            _colorbar(fig, sign, value, ax=ax)
        elif scale == "each":
            _scale_label(ax, value)
        ax = fig.add_subplot(gs[1, j], label=f"overlay:{name}")
        ax.imshow(blend(image, maps[name], sign=sign, scale=value))
        _no_ticks(ax)
    if bar_signs:
        bars = gs[0, cols].subgridspec(
            1, 2 * len(bar_signs), width_ratios=[1, 2.2] * len(bar_signs)
        )
        for k, sign in enumerate(bar_signs):
            _colorbar(fig, sign, scales[names[0]], cax=fig.add_subplot(bars[0, 2 * k]))
    split = max(1, cols // 2)
    if stats:
        ax = fig.add_subplot(gs[2, :split], label="statistics")
        ax.axis("off")
        keys = list(next(iter(stats.values())).keys())
        cells = [[f"{stats[n][k]:.3g}" for k in keys] for n in stats]
        table = ax.table(cellText=cells, rowLabels=list(stats), colLabels=keys, loc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        table.scale(1, 1.2)
        ax.set_title("statistics", fontsize=9)
    if correlation is not None:
        ax = fig.add_subplot(gs[2, split:cols], label="correlation")
        cmap = colormaps["RdBu_r"].with_extremes(bad="#bdbdbd")  # undefined: grey, n/a
        im = ax.imshow(np.asarray(correlation, np.float64), cmap=cmap, vmin=-1, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for i in range(len(names)):
            for j in range(len(names)):
                _cell_label(ax, im, i, j, correlation[i, j])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.set_label("<colorbar>")
        ax.set_title("Spearman correlation", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return finish(fig, path)


def class_gallery(
    images: np.ndarray,
    maps: np.ndarray,
    labels: Sequence[int],
    class_names: Sequence[str],
    path: str | Path | None = None,
    *,
    method: str = "",
    sign: str | None = None,
    per_class: int = 3,
    scale: str | float = "each",
    colorbar: bool = False,
    outlier_percentile: float = 1.0,
) -> Figure:
    """Rows are classes; each row shows up to `per_class` examples blended with their maps.

    `scale` and `colorbar` are as in :func:`explanation_sheet`; 'shared' is over the
    maps drawn. Saved when `path` is given.
    """
    images, maps, labels = np.asarray(images), np.asarray(maps), np.asarray(labels)
    if not len(images) == len(maps) == len(labels):
        raise ValueError(
            f"class_gallery needs one map and one label per image, got {len(images)} "
            f"images, {len(maps)} maps and {len(labels)} labels"
        )
    unnamed = sorted({int(c) for c in labels if not 0 <= c < len(class_names)})
    if unnamed:
        raise ValueError(
            f"labels hold classes {unnamed} without a name in class_names "
            f"({len(class_names)} names): their examples would be left out of the gallery"
        )
    sign = sign or default_sign(maps)
    classes = [c for c in range(len(class_names)) if (labels == c).any()]
    if not classes:
        raise ValueError("class_gallery got no examples")
    shown = [np.flatnonzero(labels == c)[:per_class] for c in classes]
    drawn = [int(i) for idx in shown for i in idx]
    values = dict(zip(drawn, _scales([(maps[i], sign) for i in drawn], scale, outlier_percentile)))
    one_bar = colorbar and scale != "each"
    fig = new_figure(figsize=(1.9 * per_class + 0.5 * one_bar, 1.9 * len(classes)))
    axes, cax = _grid(fig, len(classes), per_class, bar_column=one_bar)
    for r, (c, idx) in enumerate(zip(classes, shown)):
        for k in range(per_class):
            ax = axes[r, k]
            _no_ticks(ax)
            if k < len(idx):
                i = int(idx[k])
                ax.imshow(blend(images[i], maps[i], sign=sign, scale=values[i]))
                if colorbar and not one_bar:
                    _colorbar(fig, sign, values[i], ax=ax)
                elif scale == "each":
                    _scale_label(ax, values[i])
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(class_names[c], fontsize=8)
    if one_bar:
        _colorbar(fig, sign, values[drawn[0]], cax=cax)
    fig.suptitle(f"{method} ({sign})".strip(), fontsize=10)
    # Leave the title its own band: a narrow gallery (one column) is shorter than it.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return finish(fig, path)


def _cell_label(ax, image, i: int, j: int, value: float) -> None:
    """A matrix cell's value, in white on dark cells and black on light ones (by the
    luminance of the cell's own colour), so it stays readable at both ends of a map."""
    if not np.isfinite(value):  # undefined (a constant map): a grey cell
        ax.text(j, i, "n/a", ha="center", va="center", fontsize=6, color="black")
        return
    r, g, b, _ = image.cmap(image.norm(value))
    ink = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color=ink)


def agreement_matrices(
    matrices: Mapping[str, np.ndarray], names: Sequence[str], path: str | Path | None = None
) -> Figure:
    """Side-by-side method-by-method matrices (correlations in [-1, 1], overlaps in [0, 1]),
    all on one diverging scale from -1 to 1, so that 0 (no agreement) is white in every
    matrix and run; an undefined entry (NaN) is a grey cell marked n/a. Saved when
    `path` is given."""
    for title, m in matrices.items():
        _check_square(m, names, repr(title))
    fig = new_figure(figsize=(1.2 + 3.6 * len(matrices), 1.4 + 0.45 * len(names)))
    axes = fig.subplots(1, len(matrices), squeeze=False)
    cmap = colormaps["RdBu_r"].with_extremes(bad="#bdbdbd")
    for ax, (title, m) in zip(axes[0], matrices.items()):
        m = np.asarray(m, np.float64)
        im = ax.imshow(m, cmap=cmap, vmin=-1, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for i in range(len(names)):
            for j in range(len(names)):
                _cell_label(ax, im, i, j, m[i, j])
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return finish(fig, path)


def concept_scores(
    scores: Mapping[str, np.ndarray],
    significant: Mapping[str, np.ndarray],
    classes: Sequence[str],
    concepts: Sequence[str],
    path: str | Path | None = None,
) -> Figure:
    """TCAV scores, one panel per layer (the keys of ``scores``): rows are the classes
    under test, columns the concepts, cells the mean sign count in [0, 1] (above 0.5:
    the concept raises the class's logit). Cells whose concept is not significant for
    that class (``significant`` False) are grey, their value in parentheses. Saved
    when ``path`` is given."""
    layers = list(scores)
    if not layers:
        raise ValueError("concept_scores needs the scores of at least one layer")
    shape = (len(classes), len(concepts))
    missing = [layer for layer in layers if layer not in significant]
    if missing:
        raise ValueError(f"significant has no entry for the layer(s) {missing} of scores")
    for layer in layers:
        for name, values in (("scores", scores[layer]), ("significant", significant[layer])):
            if np.shape(values) != shape:
                raise ValueError(
                    f"{name}[{layer!r}] has shape {np.shape(values)}, expected {shape} "
                    "(classes, concepts)"
                )
    fig = new_figure(figsize=(1.4 + (1.0 + 0.42 * shape[1]) * len(layers), 1.6 + 0.4 * shape[0]))
    axes = fig.subplots(1, len(layers), squeeze=False)
    cmap = colormaps["RdBu_r"].with_extremes(bad="#e4e4e4")
    for ax, layer in zip(axes[0], layers):
        values = np.asarray(scores[layer], np.float64)
        keep = np.asarray(significant[layer], bool)
        im = ax.imshow(np.ma.masked_where(~keep, values), cmap=cmap, vmin=0.0, vmax=1.0)
        for i in range(shape[0]):
            for j in range(shape[1]):
                if keep[i, j]:
                    _cell_label(ax, im, i, j, values[i, j])
                else:
                    ax.text(
                        j,
                        i,
                        f"({values[i, j]:.2f})",
                        ha="center",
                        va="center",
                        fontsize=5,
                        color="#707070",
                    )
        ax.set_xticks(range(shape[1]), concepts, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(shape[0]), classes, fontsize=7)
        ax.set_xlabel("concept", fontsize=8)
        ax.set_ylabel("class under test", fontsize=8)
        ax.set_title(layer, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="TCAV score (sign count)")
    fig.tight_layout()
    return finish(fig, path)


def layer_grid(
    images: np.ndarray,
    maps: Mapping[str, np.ndarray],
    path: str | Path | None = None,
    *,
    row_titles: Sequence[str] | None = None,
    method: str | None = None,
    sign: str | None = None,
    scale: str | float = "each",
    colorbar: bool = False,
    outlier_percentile: float = 1.0,
) -> Figure:
    """One row per sample: the input, then the map of each layer over it.

    Args:
      images: ``(N, H, W[, C])`` in [0, 1].
      maps: layer name -> ``(N, H, W)`` maps (already resized to the input), in the
        order the columns should appear (first layer first).
      row_titles: a label per sample (e.g. true and predicted class).
      method: the method's name, for the title ("<method> of each layer").
      sign: a sign mode (:data:`SIGNS`); None chooses from the maps, 'all' when any
        is negative (a signed layer method), else 'absolute' (a CAM).
      scale, colorbar: as in :func:`explanation_sheet`; 'shared' is over every
        layer and sample, so that layers' magnitudes can be compared.
      path: saved there when given.
    """
    layers = list(maps)
    if not layers:
        raise ValueError("layer_grid needs the maps of at least one layer")
    n = len(images)
    if row_titles is not None and len(row_titles) != n:
        raise ValueError(f"row_titles has {len(row_titles)} labels for {n} images: give one each")
    for layer in layers:
        if len(maps[layer]) != n:
            raise ValueError(f"{layer}: {len(maps[layer])} maps for {n} images")
    if sign is None:
        sign = "all" if any(np.min(maps[layer]) < 0 for layer in layers) else "absolute"
    cells = [(layer, i) for i in range(n) for layer in layers]
    values = dict(
        zip(
            cells,
            _scales([(maps[layer][i], sign) for layer, i in cells], scale, outlier_percentile),
        )
    )
    one_bar = colorbar and scale != "each"
    cols = 1 + len(layers)
    fig = new_figure(figsize=(1.9 * cols + 0.5 * one_bar, 1.9 * n))
    axes, cax = _grid(fig, n, cols, bar_column=one_bar)
    for i in range(n):
        _show_image(axes[i, 0], images[i], "input" if i == 0 else None)
        if row_titles is not None:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=8)
        for j, layer in enumerate(layers, start=1):
            ax = axes[i, j]
            value = values[layer, i]
            ax.imshow(blend(images[i], maps[layer][i], sign=sign, scale=value))
            _no_ticks(ax)
            if colorbar and not one_bar:
                _colorbar(fig, sign, value, ax=ax)
            elif scale == "each":
                _scale_label(ax, value)
            if i == 0:
                ax.set_title(layer, fontsize=9)
    if one_bar:
        _colorbar(fig, sign, values[cells[0]], cax=cax)
    fig.suptitle("each layer's map" if method is None else f"{method} of each layer", fontsize=11)
    fig.tight_layout()
    return finish(fig, path)
