"""Attribution-metric figures: deletion/insertion curves and randomisation curves.

Each returns its Figure and writes it only when given a path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from fmi_jax.plotting._base import finish, new_figure

__all__ = ["faithfulness_curves", "randomization_curves"]


def faithfulness_curves(
    curves: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path | None = None,
    *,
    panels: Sequence[str] = ("deletion", "insertion"),
    ylabel: str = "target probability",
    fractions: Sequence[float] | None = None,
    xlabel: str = "fraction of pixels changed",
) -> Figure:
    """One panel per curve kind (`panels`), one line per method: the mean curve over
    images against the fraction of pixels changed (or what `xlabel` names).

    `curves[method][kind]` is a 1-D mean curve. Its points are equally spaced in
    [0, 1] and the legend shows the trapezoid AUC, or, with `fractions` (the x of every
    point, e.g. ROAD's 0.1, ..., 0.9), the mean over the points.
    """
    fig = new_figure(figsize=(5.2 * len(panels), 4.0))
    axes = fig.subplots(1, len(panels), squeeze=False)
    summary = "AUC" if fractions is None else "mean"
    for ax, kind in zip(axes[0], panels, strict=True):
        for method, by_kind in curves.items():
            if kind not in by_kind:
                continue
            c = np.asarray(by_kind[kind], np.float64)
            if not np.isfinite(c).any():  # e.g. every image left out of the metric
                ax.plot([], [], label=f"{method} (no data)", **_style(list(curves).index(method)))
                continue
            if fractions is None:
                xs = np.linspace(0.0, 1.0, len(c))
                value = (c.sum() - 0.5 * (c[0] + c[-1])) / (len(c) - 1)
            else:
                xs, value = np.asarray(fractions, np.float64), c.mean()
            style = _style(list(curves).index(method), None if fractions is None else ".")
            ax.plot(xs, c, label=f"{method} ({value:.3f})", **style)
        ax.set_title(f"{kind} ({summary} in legend)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return finish(fig, path)


def _style(i: int, marker: str | None = None) -> dict:
    """A distinct colour and line style per method: more methods than the default
    cycle's ten colours would otherwise share colours."""
    style = {"color": colormaps["tab10"](i % 10), "ls": ("-", "--", ":")[(i // 10) % 3]}
    if marker:
        style["marker"] = marker
    return style


def randomization_curves(
    layers: Sequence[str],
    similarity: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path | None = None,
    *,
    metrics: Sequence[str] = ("spearman_abs", "ssim"),
    threshold: float | None = None,
) -> Figure:
    """Cascading randomisation: mean similarity to the original maps after each step
    (x: the layers randomised so far, output first), one line per method and one
    panel per metric. `similarity[method][metric]` is a (len(layers),) array;
    `threshold` draws the pass/fail line on the Spearman panels."""
    steps = np.arange(len(layers))
    labels = [f"+{name}" if i else name for i, name in enumerate(layers)]
    fig = new_figure(figsize=(max(5.0, 0.9 * len(layers) + 2.5) * len(metrics), 4.0))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for method, values in similarity.items():
            ax.plot(
                steps,
                np.asarray(values[metric]),
                label=method,
                **_style(list(similarity).index(method), marker="o"),
            )
        if threshold is not None and metric.startswith("spearman"):
            ax.axhline(threshold, color="k", ls="--", lw=0.8, label="pass/fail")
        ax.set_xticks(steps, labels, rotation=30, ha="right")
        ax.set_title(f"cascading randomisation: {metric}")
        ax.set_xlabel("layers randomised (cumulative, output first)")
        ax.set_ylim(-0.05 if metric == "ssim" else -1.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return finish(fig, path)
