"""Measuring attributions: agreement between methods, and which examples to explain."""

from fmi_jax.evaluation.agreement import (
    average_ranks,
    correlation_matrix,
    pearson,
    reduce_channels,
    spearman,
    topk_overlap,
)
from fmi_jax.evaluation.selection import high_confidence_correct

__all__ = [
    "average_ranks",
    "correlation_matrix",
    "high_confidence_correct",
    "pearson",
    "reduce_channels",
    "spearman",
    "topk_overlap",
]
