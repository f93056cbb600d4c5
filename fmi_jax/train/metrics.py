"""Classification metrics from a confusion matrix.

For a confusion matrix C (C[i, j] = examples of true class i predicted as j):

    precision_k = C[k, k] / sum_i C[i, k]      (0 when class k is never predicted)
    recall_k    = C[k, k] / sum_j C[k, j]      (0 when class k has no examples)
    f1_k        = 2 precision_k recall_k / (precision_k + recall_k)   (0 when both are 0)
    accuracy    = trace(C) / sum(C)

Macro averages are unweighted means over the classes that occur in the labels
or the predictions (scikit-learn's `average='macro'` convention, including its
zero_division=0 behaviour).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["classification_report", "markdown_table", "scalar_table"]


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def classification_report(
    confusion: np.ndarray, *, loss: float | None = None, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Loss, accuracy and macro / per-class precision, recall and F1."""
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    if (cm < 0).any():
        raise ValueError("confusion matrix has negative counts")
    n = cm.sum()
    if n == 0:
        raise ValueError("confusion matrix is empty: no examples were evaluated")
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(cm))]
    if len(names) != len(cm):
        raise ValueError(f"{len(names)} class names for a {len(cm)}-class confusion matrix")
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = (support > 0) | (predicted > 0)
    report = {
        "loss": None if loss is None else float(loss),
        "accuracy": float(tp.sum() / n),
        "precision": float(precision[present].mean()),
        "recall": float(recall[present].mean()),
        "f1": float(f1[present].mean()),
        "count": int(n),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, support)
        },
        "confusion": cm.astype(np.int64).tolist(),
    }
    return report


def markdown_table(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """The evaluation table: one row per split, macro precision/recall/F1."""
    lines = [
        "| Split | Loss | Accuracy | Macro precision | Macro recall | Macro F1 |",
        "|---|---|---|---|---|---|",
    ]
    for split, r in reports.items():
        loss = "-" if r.get("loss") is None else f"{r['loss']:.4f}"
        lines.append(
            f"| {split} | {loss} | {100 * r['accuracy']:.2f}% | {100 * r['precision']:.2f}% "
            f"| {100 * r['recall']:.2f}% | {100 * r['f1']:.2f}% |"
        )
    return "\n".join(lines)


def scalar_table(reports: Mapping[str, Mapping[str, Any]], keys: Sequence[str]) -> str:
    """One row per split, one column per scalar metric (e.g. an autoencoder's MSE)."""
    lines = ["| Split | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for split, r in reports.items():
        lines.append(f"| {split} | " + " | ".join(f"{r[k]:.4g}" for k in keys) + " |")
    return "\n".join(lines)
