"""Figures: numpy in, Figure out. No jax here.

Every function takes plain arrays / dicts and returns a :class:`matplotlib.figure.Figure`
built without pyplot (importing this package chooses no backend and registers nothing
with pyplot, so it is safe in notebooks and headless). Given ``path``, the figure is also
written there atomically (creating the parent folders). In a notebook, a returned figure
is shown once by ending a cell with it or by ``IPython.display.display(fig)``.

Figures that draw several attribution maps over images (``sign_modes``,
``explanation_sheet``, ``layer_grid``, ``class_gallery``) take ``scale='each'`` (every
map scaled to its own percentile) or ``scale='shared'`` (one scale for all, so
magnitudes compare), and ``colorbar=True`` for the scale in the maps' units.
"""

from fmi_jax.plotting._base import save
from fmi_jax.plotting.attribution import (
    SCALES,
    SIGNS,
    agreement_matrices,
    blend,
    class_gallery,
    concept_scores,
    default_sign,
    drawn_map,
    explanation_sheet,
    heatmap,
    layer_grid,
    map_scale,
    sign_modes,
)
from fmi_jax.plotting.dictionary import atom_grid, latent_usage, reconstructions
from fmi_jax.plotting.html import write_page
from fmi_jax.plotting.images import (
    IMAGE_PANELS,
    SavedFigure,
    image_explanation,
    panels,
    summary_sheet,
)
from fmi_jax.plotting.metrics import faithfulness_curves, randomization_curves
from fmi_jax.plotting.training import confusion_matrix, training_curves

__all__ = [
    "IMAGE_PANELS",
    "SCALES",
    "SIGNS",
    "SavedFigure",
    "agreement_matrices",
    "atom_grid",
    "blend",
    "class_gallery",
    "concept_scores",
    "confusion_matrix",
    "default_sign",
    "drawn_map",
    "explanation_sheet",
    "faithfulness_curves",
    "heatmap",
    "image_explanation",
    "latent_usage",
    "layer_grid",
    "map_scale",
    "panels",
    "randomization_curves",
    "reconstructions",
    "save",
    "sign_modes",
    "summary_sheet",
    "training_curves",
    "write_page",
]
