"""Figures: numpy in, PNG out. No jax here.

Every function takes plain arrays / dicts and a path, writes one PNG (creating
the parent folder) and returns the path.
"""

from fmi_jax.plotting.attribution import (
    SIGNS,
    agreement_matrices,
    blend,
    class_gallery,
    default_sign,
    explanation_sheet,
    heatmap,
    layer_grid,
    sign_modes,
)
from fmi_jax.plotting.dictionary import atom_grid, latent_usage, reconstructions
from fmi_jax.plotting.images import IMAGE_PANELS, SavedFigure, image_explanation, summary_sheet
from fmi_jax.plotting.metrics import faithfulness_curves, randomization_curves
from fmi_jax.plotting.training import confusion_matrix, training_curves

__all__ = [
    "IMAGE_PANELS",
    "SIGNS",
    "SavedFigure",
    "agreement_matrices",
    "atom_grid",
    "blend",
    "class_gallery",
    "confusion_matrix",
    "default_sign",
    "explanation_sheet",
    "faithfulness_curves",
    "heatmap",
    "image_explanation",
    "latent_usage",
    "layer_grid",
    "randomization_curves",
    "reconstructions",
    "sign_modes",
    "summary_sheet",
    "training_curves",
]
