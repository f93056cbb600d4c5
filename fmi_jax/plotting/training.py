"""Training curves and confusion matrices.

Each returns its Figure and writes it only when given a path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fmi_jax.plotting._base import finish, new_figure

__all__ = ["confusion_matrix", "training_curves"]


def training_curves(
    history: Sequence[Mapping[str, Any]],
    path: str | Path | None = None,
    *,
    metric: str = "accuracy",
) -> Figure:
    """Loss, `metric` (accuracy, or MSE for autoencoders) and learning rate per epoch
    (train and, if present, validation)."""
    epochs = [r["epoch"] for r in history]
    fig = new_figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], metric, metric)):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        if any(f"val_{key}" in r for r in history):
            ax.plot(
                epochs, [r.get(f"val_{key}", np.nan) for r in history], "s-", label="validation"
            )
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[2].plot(epochs, [r["learning_rate"] for r in history], "o-")
    axes[2].set_title("learning rate (end of epoch)")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return finish(fig, path)


def confusion_matrix(
    confusion: np.ndarray,
    class_names: Sequence[str] | None = None,
    path: str | Path | None = None,
    *,
    title: str = "confusion matrix",
    normalize: bool = True,
) -> Figure:
    """Heat map of a confusion matrix (rows: true class, columns: predicted); classes are
    numbered when `class_names` is None."""
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix is square (classes, classes), got {cm.shape}")
    if class_names is None:
        class_names = [str(c) for c in range(len(cm))]
    if len(class_names) != len(cm):
        raise ValueError(f"{len(class_names)} class names for {len(cm)} classes")
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    n = len(cm)
    fig = new_figure(figsize=(1.0 + 0.65 * n, 0.8 + 0.6 * n))
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if shown[i, j] > 0.5 * shown.max() else "black",
            )
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(
        im,
        ax=ax,
        fraction=0.046,
        pad=0.04,
        label="fraction of true class" if normalize else "count",
    )
    fig.tight_layout()
    return finish(fig, path)
