"""Measuring attributions: agreement between methods, faithfulness (deletion and
insertion curves, pixel flipping, ROAD with noisy linear imputation, faithfulness
correlation), robustness (infidelity, max- and average sensitivity, local Lipschitz
estimate), sanity checks (parameter randomisation, SSIM), complexity (sparseness,
entropy, effective complexity), and
which examples to explain."""

from fmi_jax.evaluation.agreement import (
    average_ranks,
    correlation_matrix,
    pearson,
    reduce_channels,
    spearman,
    topk_overlap,
)
from fmi_jax.evaluation.faithfulness import (
    ROAD_FRACTIONS,
    aopc,
    auc,
    complexity,
    deletion_curve,
    effective_complexity,
    faithfulness_correlation,
    insertion_curve,
    pixel_flipping,
    road,
    sparseness,
)
from fmi_jax.evaluation.imputation import DEFAULT_IMPUTATION_NOISE, noisy_linear_imputation
from fmi_jax.evaluation.robustness import (
    DEFAULT_INFIDELITY_STDEV,
    DEFAULT_LIPSCHITZ_STDEV,
    DEFAULT_SENSITIVITY_RADIUS,
    avg_sensitivity,
    gaussian_perturbation,
    infidelity,
    local_lipschitz,
    max_sensitivity,
    uniform_perturbation,
)
from fmi_jax.evaluation.sanity import (
    cascading_randomization,
    independent_randomization,
    layer_order,
    passes_sanity_check,
    randomize_layers,
    ssim,
)
from fmi_jax.evaluation.selection import high_confidence_correct

__all__ = [
    "DEFAULT_IMPUTATION_NOISE",
    "DEFAULT_INFIDELITY_STDEV",
    "DEFAULT_LIPSCHITZ_STDEV",
    "DEFAULT_SENSITIVITY_RADIUS",
    "ROAD_FRACTIONS",
    "aopc",
    "auc",
    "avg_sensitivity",
    "average_ranks",
    "cascading_randomization",
    "complexity",
    "correlation_matrix",
    "deletion_curve",
    "effective_complexity",
    "faithfulness_correlation",
    "gaussian_perturbation",
    "high_confidence_correct",
    "independent_randomization",
    "infidelity",
    "insertion_curve",
    "layer_order",
    "local_lipschitz",
    "max_sensitivity",
    "noisy_linear_imputation",
    "passes_sanity_check",
    "pearson",
    "pixel_flipping",
    "randomize_layers",
    "reduce_channels",
    "road",
    "sparseness",
    "spearman",
    "ssim",
    "topk_overlap",
    "uniform_perturbation",
]
