"""Attribution methods as pure functions of a model function ``fn(x) -> logits``.

Every method has one signature::

    method(fn, x, target=None, *, key=None, baseline=None, batch_size=None, **options)

* ``fn`` maps a float batch ``(N, ...)`` to logits ``(N, classes)``. For your own Flax
  model, ``flax_model(module, variables, train=False)`` (Linen) or
  ``flax_model(nnx_module)`` (NNX) is such a function; it also lets the methods that
  look inside the model (the CAM family, the layer and neuron methods) capture a named
  layer.
* ``x`` is a batch of float inputs on the model's scale: one example without its batch
  axis and integer images are refused with a message that says how to fix them.
* ``target`` is an int array ``(N,)``, one int for every example, or ``None``: the
  class the model predicts.
* ``key`` is a PRNG key, required by the methods that draw random numbers (SmoothGrad
  and the other noise tunnels, GradientSHAP, feature permutation, Shapley value
  sampling, KernelSHAP, LIME), which then raise a ValueError naming themselves without
  it; the other methods ignore it.
* ``baseline`` is the reference input (``None``: zeros) of the methods that have one
  (integrated gradients and the other path methods, DeepLIFT, occlusion, the feature
  ablation and sampling family, the layer and neuron path methods; a distribution of
  references for GradientSHAP and DeepLiftShap); the others refuse a baseline rather
  than ignore it.
* ``batch_size`` bounds memory (model evaluations per pass); it changes a result by
  float32 rounding at most (sums of chunks taken in another order).
* Maps are float32, shaped like ``x`` (CAMs: one ``(N, H, W)`` map per image), and
  **signed**: ``abs=True`` (saliency, Gaussian-smoothed saliency, SmoothGrad) gives
  magnitudes, which is what Simonyan et al. draw and Captum's ``Saliency`` returns by
  default.
* Options are keyword-only and named alike across methods: ``steps`` and ``rule``
  (the quadrature rule) for integrated gradients, ``samples``, ``stdev_spread`` and
  ``stdev`` for everything that draws samples, ``layer`` for the CAMs.

=============================  ====================================  ========================
method                         module                                Captum counterpart
=============================  ====================================  ========================
saliency                       :mod:`.gradients`                     Saliency
input_x_gradient               :mod:`.gradients`                     InputXGradient
integrated_gradients           :mod:`.integrated_gradients`          IntegratedGradients
noise_tunnel, smoothgrad       :mod:`.noise_tunnel`                  NoiseTunnel
augmentation_smoothing         :mod:`.augmentation`                  (pytorch-grad-cam)
gaussian_smoothed_saliency     :mod:`.smoothing`                     (none)
gradient_shap                  :mod:`.shap`                          GradientShap
deeplift                       :mod:`.deeplift`                      DeepLift
grad_cam                       :mod:`.cam`                           LayerGradCam
grad_cam_plus_plus             :mod:`.cam`                           (pytorch-grad-cam)
score_cam                      :mod:`.cam`                           (pytorch-grad-cam)
the other ``CAM_METHODS``      :mod:`.cam`                           (pytorch-grad-cam)
across_layers(cam)             :mod:`.cam`                           (pytorch-grad-cam)
full_grad, full_gradients      :mod:`.full_gradient`                  (pytorch-grad-cam)
occlusion                      :mod:`.perturbation`                  Occlusion
feature_permutation            :mod:`.perturbation`                  FeaturePermutation
feature_ablation               :mod:`.sampling`                      FeatureAblation
shapley_value_sampling         :mod:`.sampling`                      ShapleyValueSampling
kernel_shap                    :mod:`.sampling`                      KernelShap
lime                           :mod:`.sampling`                      Lime
deeplift_shap                  :mod:`.sampling`                      DeepLiftShap
guided_backprop                :mod:`.propagation`                   GuidedBackprop
deconvolution                  :mod:`.propagation`                   Deconvolution
lrp                            :mod:`.propagation`                   LRP
guided_grad_cam                :mod:`.propagation`                   GuidedGradCam
blur_ig                        :mod:`.path_methods`                  (PAIR saliency BlurIG)
guided_ig                      :mod:`.path_methods`                  (PAIR saliency GuidedIG)
xrai                           :mod:`.xrai`                          (PAIR saliency XRAI)
decoder_weighted               :mod:`.sparse`                        (none)
layer_gradient_x_activation    :mod:`.layer`                         LayerGradientXActivation
layer_integrated_gradients     :mod:`.layer`                         LayerIntegratedGradients
layer_conductance              :mod:`.layer`                         LayerConductance
internal_influence             :mod:`.layer`                         InternalInfluence
neuron_gradient                :mod:`.layer`                         NeuronGradient
neuron_integrated_gradients    :mod:`.layer`                         NeuronIntegratedGradients
neuron_conductance             :mod:`.layer`                         NeuronConductance
at_layer(method)               :mod:`.layer`                         LayerDeepLift, LayerLRP,
                                                                     LayerGradientShap, ...
at_neuron(method)              :mod:`.layer`                         NeuronDeepLift,
                                                                     NeuronGuidedBackprop, ...
tcav, concept_sensitivity      :mod:`.concepts`                      TCAV (captum.concept)
tracin, self_influence         :mod:`.influence`                     TracInCP (captum.influence)
influence_function(_self)      :mod:`.influence`                     NaiveInfluenceFunction,
hessian_eigen                                                        ArnoldiInfluenceFunction
similarity_influence           :mod:`.influence`                     SimilarityInfluence
=============================  ====================================  ========================

``noise_tunnel(method, samples=..., kind=...)`` is a transform that returns a new
method with the same signature (SmoothGrad over any method); ``at_layer(method)`` and
``at_neuron(method)`` return the method at a layer's units or of one unit (Captum's
``LayerDeepLift`` is ``at_layer(deeplift)`` with ``baseline=0.0``, its
``NeuronGuidedBackprop`` ``at_neuron(guided_backprop)``). Shared machinery
(targets, checks, chunking, keys) lives in :mod:`.core`; the model handle in
:mod:`.handle`; methods by name in :mod:`.registry` (``explainer``).
"""

from fmi_jax.attribution.augmentation import AUGMENTATION_SCALES, augmentation_smoothing
from fmi_jax.attribution.cam import (
    CAM_METHODS,
    FINER_BASES,
    KPCA_KERNELS,
    LAYER_COMBINATIONS,
    SHAPLEY_SCORES,
    ablation_cam,
    across_layers,
    eigen_cam,
    eigen_grad_cam,
    fem,
    finer_cam,
    finer_references,
    grad_cam,
    grad_cam_elementwise,
    grad_cam_plus_plus,
    hires_cam,
    kpca_cam,
    layer_cam,
    layer_names,
    score_cam,
    shapley_cam,
    upsample_maps,
    xgrad_cam,
)
from fmi_jax.attribution.concepts import (
    CAV_CLASSIFIERS,
    ConceptBank,
    ConceptTest,
    ConceptVector,
    concept_activation_vector,
    concept_sensitivity,
    fit_cavs,
    layer_activations,
    t_test,
    tcav,
    tcav_score,
)
from fmi_jax.attribution.core import (
    Explain,
    InputLayoutError,
    Method,
    completeness_delta,
    resolve_target,
)
from fmi_jax.attribution.deeplift import deeplift
from fmi_jax.attribution.full_gradient import (
    AFFINE_LAYER_TYPES,
    FULL_GRAD_NORMALIZATIONS,
    FullGradients,
    bias_layers,
    full_grad,
    full_gradients,
)
from fmi_jax.attribution.gradients import input_x_gradient, saliency
from fmi_jax.attribution.handle import FlaxModel, as_flax_model, flax_model, tokens_as_image
from fmi_jax.attribution.influence import (
    DEFAULT_ARNOLDI_ITERATIONS,
    DEFAULT_ARNOLDI_RANK,
    EXACT_HESSIAN_LIMIT,
    HESSIAN_SOLVERS,
    SIMILARITY_METRICS,
    HessianEigen,
    SimilarExamples,
    hessian_eigen,
    influence_function,
    influence_function_self,
    self_influence,
    similarity_influence,
    tracin,
)
from fmi_jax.attribution.integrated_gradients import (
    QUADRATURE_RULES,
    integrated_gradients,
    quadrature,
)
from fmi_jax.attribution.layer import (
    at_layer,
    at_neuron,
    internal_influence,
    layer_conductance,
    layer_gradient_x_activation,
    layer_integrated_gradients,
    neuron_conductance,
    neuron_gradient,
    neuron_integrated_gradients,
)
from fmi_jax.attribution.noise_tunnel import NOISE_KINDS, noise_tunnel, smoothgrad
from fmi_jax.attribution.path_methods import blur_ig, gaussian_blur, guided_ig
from fmi_jax.attribution.perturbation import (
    feature_groups,
    feature_permutation,
    occlusion,
    square_patches,
)
from fmi_jax.attribution.propagation import deconvolution, guided_backprop, guided_grad_cam, lrp
from fmi_jax.attribution.registry import (
    METHODS,
    MethodSpec,
    available_methods,
    check_explainer,
    explainer,
    jit_method,
    require_class_methods,
)
from fmi_jax.attribution.sampling import (
    LIME_DISTANCES,
    deeplift_shap,
    feature_ablation,
    kernel_shap,
    lime,
    shapley_value_sampling,
)
from fmi_jax.attribution.shap import gradient_shap
from fmi_jax.attribution.smoothing import gaussian_smoothed_saliency
from fmi_jax.attribution.sparse import code_contributions, decoder_weighted
from fmi_jax.attribution.xrai import felzenszwalb, rank_regions, segment_masks, xrai

__all__ = [
    "Method",
    "Explain",
    "FlaxModel",
    "flax_model",
    "as_flax_model",
    "tokens_as_image",
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "quadrature",
    "QUADRATURE_RULES",
    "noise_tunnel",
    "augmentation_smoothing",
    "AUGMENTATION_SCALES",
    "smoothgrad",
    "NOISE_KINDS",
    "gaussian_smoothed_saliency",
    "gradient_shap",
    "deeplift",
    "CAM_METHODS",
    "grad_cam",
    "grad_cam_plus_plus",
    "xgrad_cam",
    "hires_cam",
    "layer_cam",
    "grad_cam_elementwise",
    "shapley_cam",
    "eigen_grad_cam",
    "finer_cam",
    "finer_references",
    "FINER_BASES",
    "across_layers",
    "LAYER_COMBINATIONS",
    "score_cam",
    "ablation_cam",
    "eigen_cam",
    "kpca_cam",
    "fem",
    "KPCA_KERNELS",
    "SHAPLEY_SCORES",
    "full_grad",
    "full_gradients",
    "FullGradients",
    "bias_layers",
    "FULL_GRAD_NORMALIZATIONS",
    "AFFINE_LAYER_TYPES",
    "layer_names",
    "upsample_maps",
    "occlusion",
    "feature_permutation",
    "square_patches",
    "feature_groups",
    "feature_ablation",
    "shapley_value_sampling",
    "kernel_shap",
    "lime",
    "LIME_DISTANCES",
    "deeplift_shap",
    "guided_backprop",
    "deconvolution",
    "lrp",
    "guided_grad_cam",
    "blur_ig",
    "guided_ig",
    "gaussian_blur",
    "xrai",
    "felzenszwalb",
    "segment_masks",
    "rank_regions",
    "decoder_weighted",
    "code_contributions",
    "layer_gradient_x_activation",
    "layer_integrated_gradients",
    "layer_conductance",
    "internal_influence",
    "neuron_gradient",
    "neuron_integrated_gradients",
    "neuron_conductance",
    "at_layer",
    "at_neuron",
    "layer_activations",
    "concept_activation_vector",
    "ConceptVector",
    "CAV_CLASSIFIERS",
    "concept_sensitivity",
    "tcav_score",
    "fit_cavs",
    "ConceptBank",
    "tcav",
    "ConceptTest",
    "t_test",
    "tracin",
    "self_influence",
    "hessian_eigen",
    "HessianEigen",
    "HESSIAN_SOLVERS",
    "DEFAULT_ARNOLDI_ITERATIONS",
    "DEFAULT_ARNOLDI_RANK",
    "EXACT_HESSIAN_LIMIT",
    "influence_function",
    "influence_function_self",
    "similarity_influence",
    "SimilarExamples",
    "SIMILARITY_METRICS",
    "resolve_target",
    "InputLayoutError",
    "completeness_delta",
    "METHODS",
    "MethodSpec",
    "available_methods",
    "check_explainer",
    "explainer",
    "jit_method",
    "require_class_methods",
]
