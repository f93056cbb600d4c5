"""Measuring attributions: agreement between methods, faithfulness (deletion and
insertion curves, pixel flipping, ROAD with noisy linear imputation, faithfulness
correlation), robustness (infidelity, max- and average sensitivity, local Lipschitz
estimate), sanity checks (parameter randomisation, SSIM), complexity (sparseness,
entropy, effective complexity), performance information curves (SIC and AIC),
localisation against ground-truth masks (pointing game, relevance mass and rank
accuracy, top-k intersection, ROC AUC), and which examples to explain."""

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
from fmi_jax.evaluation.information import (
    PIC_THRESHOLDS,
    PicResult,
    aggregate_pic,
    blurred_image,
    performance_information_curve,
)
from fmi_jax.evaluation.localisation import (
    localisation_auc,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)
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
    "PIC_THRESHOLDS",
    "PicResult",
    "ROAD_FRACTIONS",
    "aggregate_pic",
    "aopc",
    "auc",
    "average_ranks",
    "avg_sensitivity",
    "blurred_image",
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
    "localisation_auc",
    "max_sensitivity",
    "noisy_linear_imputation",
    "passes_sanity_check",
    "pearson",
    "performance_information_curve",
    "pixel_flipping",
    "pointing_game",
    "randomize_layers",
    "reduce_channels",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "road",
    "sparseness",
    "spearman",
    "ssim",
    "top_k_intersection",
    "topk_overlap",
    "uniform_perturbation",
]
