"""Attribution methods as pure functions of a model function ``fn(x) -> logits``.

Every method takes ``fn`` (batch ``(N, ...)`` -> logits ``(N, classes)``), inputs ``x``
and a ``target`` (int array ``(N,)``, one int, or ``None`` for the predicted class),
returns float32 attributions shaped like ``x``, takes its options as keywords, draws
randomness only from an explicit ``key`` and bounds memory with ``batch_size``.

=============================  ====================================  ========================
method                         module                                Captum counterpart
=============================  ====================================  ========================
saliency                       :mod:`.gradients`                     Saliency
input_x_gradient               :mod:`.gradients`                     InputXGradient
integrated_gradients           :mod:`.integrated_gradients`          IntegratedGradients
noise_tunnel, smoothgrad       :mod:`.noise_tunnel`                  NoiseTunnel
gaussian_smoothed_saliency     :mod:`.smoothing`                     (none)
gradient_shap                  :mod:`.shap`                          GradientShap
deeplift                       :mod:`.deeplift`                      DeepLift
grad_cam                       :mod:`.cam`                           LayerGradCam
grad_cam_plus_plus             :mod:`.cam`                           (pytorch-grad-cam)
score_cam                      :mod:`.cam`                           (pytorch-grad-cam)
occlusion                      :mod:`.perturbation`                  Occlusion
feature_permutation            :mod:`.perturbation`                  FeaturePermutation
decoder_weighted               :mod:`.sparse`                        (none)
=============================  ====================================  ========================

The CAM family looks inside the model: it takes the Flax module, its variables and a
layer name (``grad_cam(model, variables, x, target, layer='conv2')``) and returns one
``(N, H, W)`` map per example.

Shared machinery (targets, checks, chunking, keys) lives in :mod:`.core`; methods by
name, with one call signature for all, in :mod:`.registry` (``explainer``).
"""

from fmi_jax.attribution.cam import (
    capture_layer,
    grad_cam,
    grad_cam_plus_plus,
    layer_names,
    score_cam,
    upsample_maps,
)
from fmi_jax.attribution.core import completeness_delta, resolve_target
from fmi_jax.attribution.deeplift import deeplift
from fmi_jax.attribution.gradients import input_x_gradient, saliency
from fmi_jax.attribution.integrated_gradients import (
    QUADRATURE_METHODS,
    integrated_gradients,
    quadrature,
)
from fmi_jax.attribution.noise_tunnel import NOISE_KINDS, noise_tunnel, smoothgrad
from fmi_jax.attribution.perturbation import feature_permutation, occlusion, square_patches
from fmi_jax.attribution.registry import METHODS, MethodSpec, available_methods, explainer
from fmi_jax.attribution.shap import gradient_shap
from fmi_jax.attribution.smoothing import gaussian_smoothed_saliency
from fmi_jax.attribution.sparse import code_contributions, decoder_weighted

__all__ = [
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "quadrature",
    "QUADRATURE_METHODS",
    "noise_tunnel",
    "smoothgrad",
    "NOISE_KINDS",
    "gaussian_smoothed_saliency",
    "gradient_shap",
    "deeplift",
    "grad_cam",
    "grad_cam_plus_plus",
    "score_cam",
    "layer_names",
    "capture_layer",
    "upsample_maps",
    "occlusion",
    "feature_permutation",
    "square_patches",
    "decoder_weighted",
    "code_contributions",
    "resolve_target",
    "completeness_delta",
    "METHODS",
    "MethodSpec",
    "available_methods",
    "explainer",
]
