"""Studies: what the experiment scripts run. Each takes a config and a workdir.

This layer sits above everything else (it may import train, attribution,
evaluation and plotting); nothing below imports it.
"""

from fmi_jax.studies.evaluate_attributions import (
    EvaluateAttributionsResult,
    run_evaluate_attributions,
)
from fmi_jax.studies.explain import ExplainResult, run_explain
from fmi_jax.studies.explain_images import ExplainImagesResult, run_explain_images
from fmi_jax.studies.sae import SaeResult, run_sae_study
from fmi_jax.studies.tcav import TcavResult, run_tcav
from fmi_jax.studies.tune import TuneResult, run_tune

__all__ = [
    "EvaluateAttributionsResult",
    "ExplainImagesResult",
    "ExplainResult",
    "SaeResult",
    "TcavResult",
    "TuneResult",
    "run_evaluate_attributions",
    "run_explain",
    "run_explain_images",
    "run_sae_study",
    "run_tcav",
    "run_tune",
]
