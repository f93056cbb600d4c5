"""Attribution methods by name, for studies whose configs list methods as strings.

    explain = explainer("ig_smoothgrad", fn, steps=32, samples=10)
    maps = explain(x, target, key)          # the same call for every method

`explainer(name, fn, **options)` returns `explain(x, target=None, key=None)`, the
method with its options bound (deterministic methods ignore `key`; the others refuse
to run without one). Options are the keyword arguments of the underlying function; a
misspelt option is an error that lists the accepted ones, because a silently ignored
`stpes=300` would be a wrong experiment.

Methods that look inside the model (the CAM family, decoder-weighted attribution)
take a model handle as `fn` (`flax_model(module, variables, train=False)` or
`flax_model(nnx_module)`). `explainer(name, fn, model=module, variables=variables)`
builds `flax_model(module, variables)`, with no call keywords: it suits a Linen
module whose call runs in inference mode without them; for one with a flag to set
(`train=False`, `deterministic=True`, ...) pass the handle made with it as `fn`.
Their `(N, H, W)` maps get a trailing channel axis, `(N, H, W, 1)`, so they line up
with the input-shaped maps of the other methods.

The layer methods (`layer_integrated_gradients`, `layer_conductance`,
`layer_gradient_x_activation`, `internal_influence`) are registered as image maps like
the CAMs: their `(N, h, w, K)` attributions summed over channels and upsampled (call
the functions in `fmi_jax.attribution.layer` for the per-unit maps). Neuron gradient and
neuron integrated gradients explain one unit (`neuron=`) and take no target
(`MethodSpec.explains`); neuron conductance explains the target class through a unit.

Composite names are compositions, not new code: `ig_smoothgrad` is
`noise_tunnel(integrated_gradients)`, `smoothgrad_sq` and `vargrad` are the other
noise-tunnel kinds over signed saliency, and Captum's remaining layer and neuron
classes are `at_layer` and `at_neuron` of a method, under Captum's names in snake case
(`layer_deeplift` is `at_layer(deeplift)`, summed over channels like the other layer
methods; `neuron_guided_backprop` is `at_neuron(guided_backprop)`;
`MethodSpec.composition` names each).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from fmi_jax.attribution import (
    cam,
    full_gradient,
    layer,
    path_methods,
    perturbation,
    propagation,
    sampling,
    sparse,
    xrai,
)
from fmi_jax.attribution.core import (
    Array,
    Explain,
    InputLayoutError,
    Method,
    ModelFn,
    baseline_is_distribution,
    image_size,
)
from fmi_jax.attribution.deeplift import deeplift
from fmi_jax.attribution.gradients import input_x_gradient, saliency
from fmi_jax.attribution.handle import FlaxModel, as_flax_model, flax_model, image_layer_call
from fmi_jax.attribution.integrated_gradients import integrated_gradients
from fmi_jax.attribution.noise_tunnel import noise_tunnel, smoothgrad
from fmi_jax.attribution.shap import gradient_shap
from fmi_jax.attribution.smoothing import gaussian_smoothed_saliency

__all__ = [
    "METHODS",
    "MethodSpec",
    "available_methods",
    "check_explainer",
    "explainer",
    "jit_method",
    "require_class_methods",
]

# Options of the noise tunnel itself; the rest go to the method inside it.
_TUNNEL = ("samples", "stdev_spread", "stdev")


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A named attribution method.

    Attributes:
      name: registry name.
      method: the function, with the common signature
        `method(fn, x, target=None, *, key=None, baseline=None, batch_size=None, ...)`.
      options: the option names the explainer accepts.
      stochastic: whether the result depends on `key` (a key is then required).
      signed: whether maps carry sign with the default options (see `is_signed`).
      captum: the Captum counterpart, for the README table.
      paper: the reference.
      needs_model: `fn` must be a model handle (the method looks inside the model).
      spatial: the method returns one `(N, H, W)` map per image (the CAMs), which the
        explainer gives a trailing channel axis.
      check: `check(options)` raises a ValueError for options that cannot go together,
        when the explainer is built rather than when it first runs.
      explains: what the maps explain: 'class' (the target logit) or 'neuron' (one
        unit of a layer, `neuron=`; such a method takes no target, so the studies,
        which explain classes, do not run it).
      traceable: whether the method can run inside `jax.jit` (XRAI cannot: it
        segments the concrete images on the host); see `jit_method`.
      composition: how the method is built from another by a transform, e.g.
        `'at_layer(deeplift)'`; empty for a method of its own.
      per_example: whether an example's map depends on that example (and its key)
        alone; False for feature permutation, which permutes features across the
        batch, so splitting a batch into chunks changes its maps.
    """

    name: str
    method: Method
    options: tuple[str, ...]
    stochastic: bool
    signed: bool
    captum: str
    paper: str
    needs_model: bool = False
    spatial: bool = False
    check: Callable[[Mapping[str, Any]], None] | None = None
    explains: str = "class"
    traceable: bool = True
    composition: str = ""
    per_example: bool = True

    def is_signed(self, options: Mapping[str, Any] | None = None) -> bool:
        """Whether maps carry sign under `options` (`abs=True` makes them magnitudes; a
        CAM with `relu=False` keeps its negative part)."""
        options = options or {}
        if "relu" in self.options and options.get("relu", True) is False:
            return True
        return self.signed and not options.get("abs", False)


def _keywords(fn: Callable[..., Any], leave_out: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The keyword-only options of a method, without `key` (given per call) and without
    those typed `None`, which it refuses to be given (`baseline: None = None` of a
    method without a reference input), so an error lists only what it takes."""
    return tuple(
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        and name not in ("key",) + leave_out
        and p.annotation not in (None, "None")
    )


def _tunnel(kind: str, inner: Method) -> Method:
    """`noise_tunnel(inner, kind=kind)` as a method whose tunnel settings are options."""

    def method(fn, x, target=None, *, key=None, baseline=None, batch_size=None, **options):
        settings = {k: options.pop(k) for k in _TUNNEL if k in options}
        tunneled = noise_tunnel(inner, kind=kind, **settings)
        return tunneled(fn, x, target, key=key, baseline=baseline, batch_size=batch_size, **options)

    method.__name__ = f"{kind}_over_{inner.__name__}"
    method.baseline_is_distribution = baseline_is_distribution(inner)
    return method


def _patch_or_mask(name: str) -> Callable[[Mapping[str, Any]], None]:
    def check(options: Mapping[str, Any]) -> None:
        if options.get("patch") is not None and options.get("feature_mask") is not None:
            raise ValueError(f"{name} takes `patch` or `feature_mask`, not both")

    return check


def _needs_references(name: str) -> Callable[[Mapping[str, Any]], None]:
    def check(options: Mapping[str, Any]) -> None:
        if options.get("baseline") is None:
            raise ValueError(
                f"{name} needs baseline=: a batch of references (M, ...) shaped like "
                "the inputs, e.g. a sample of training images"
            )

    return check


def _over_patches(method: Method) -> Method:
    """A method over groups of features (`feature_mask`) that also takes `patch=s`:
    an image grouped into s x s patches shared by all channels (`square_patches`)."""

    def grouped(fn, x, target=None, *, patch=None, feature_mask=None, **common):
        _patch_or_mask(method.__name__)({"patch": patch, "feature_mask": feature_mask})
        if patch is not None:
            image_size(x, method.__name__)
            feature_mask = perturbation.square_patches(np.shape(x)[1:], patch)
        return method(fn, x, target, feature_mask=feature_mask, **common)

    grouped.__name__ = method.__name__
    grouped.baseline_is_distribution = baseline_is_distribution(method)
    grouped.mixes_examples = getattr(method, "mixes_examples", False)  # noise_tunnel reads it
    grouped.__doc__ = f"`{method.__name__}`; `patch=s` groups an image into s x s patches."
    return grouped


def _grouped_spec(method: Method, stochastic: bool, captum: str, paper: str) -> MethodSpec:
    return MethodSpec(
        method.__name__,
        _over_patches(method),
        ("patch",) + _keywords(method),
        stochastic,
        True,
        captum,
        paper,
        check=_patch_or_mask(method.__name__),
    )


def _over_layer(method: Method) -> Method:
    """A layer method as an image map, like the CAMs: its `(N, h, w, K)` attributions
    summed over the layer's channels (for the complete methods, layer IG and
    conductance, each position's share of the explained logit difference) and, with
    `upsample=True`, resized to the input bilinearly."""

    def spatial(model, x, target=None, *, upsample=True, **options):
        if "layer" in options:  # drawn over the image: its axes 1 and 2 must be rows, columns
            image_layer_call(model, x, options["layer"], method.__name__)
        size = image_size(x, method.__name__) if upsample else None
        maps = method(model, x, target, **options).sum(axis=-1)
        return maps if size is None else cam.upsample_maps(maps, size)

    spatial.__name__ = method.__name__
    spatial.baseline_is_distribution = baseline_is_distribution(method)
    spatial.__doc__ = (
        f"`{method.__name__}` summed over the layer's channels, upsampled to the input "
        "unless `upsample=False`."
    )
    return spatial


def _layer_spec(method: Method, captum: str, paper: str) -> MethodSpec:
    options = _keywords(method) + ("upsample",)
    return MethodSpec(
        method.__name__, _over_layer(method), options, False, True, captum, paper, True, True
    )


def _neuron_spec(method: Method, captum: str, paper: str, explains: str = "neuron") -> MethodSpec:
    return MethodSpec(
        method.__name__,
        method,
        _keywords(method),
        False,
        True,
        captum,
        paper,
        needs_model=True,
        explains=explains,
    )


def _composed_spec(
    transform: str,
    inner: Method,
    captum: str,
    paper: str,
    *,
    stochastic: bool = False,
    check: Callable[[Mapping[str, Any]], None] | None = None,
    inner_options: tuple[str, ...] | None = None,
) -> MethodSpec:
    """`at_layer(inner)` (an image map, like the other layer methods) or
    `at_neuron(inner)` (one unit explained by the input features), with
    `inner_options`, the options of `inner` unless given."""
    if inner_options is None:
        inner_options = _keywords(inner, ("return_delta",))
    at_layer = transform == "at_layer"
    method = (layer.at_layer if at_layer else layer.at_neuron)(inner)
    if at_layer:
        reference = ("layer_baseline",) if "baseline" in inner_options else ()
        options = ("layer",) + inner_options + reference + ("upsample",)
    else:
        options = ("layer", "neuron") + inner_options
    return MethodSpec(
        method.__name__,
        _over_layer(method) if at_layer else method,
        options,
        stochastic,
        True,
        captum,
        paper,
        needs_model=True,
        spatial=at_layer,
        check=check,
        explains="class" if at_layer else "neuron",
        composition=f"{transform}({inner.__name__})",
    )


def _spec(name, method, options, stochastic, signed, captum, paper, needs_model=False):
    return MethodSpec(name, method, tuple(options), stochastic, signed, captum, paper, needs_model)


def _cam_spec(method: Method, captum: str, paper: str) -> MethodSpec:
    return MethodSpec(
        method.__name__, method, _keywords(method), False, False, captum, paper, True, True
    )


METHODS: Mapping[str, MethodSpec] = {
    s.name: s
    for s in (
        _spec(
            "saliency",
            saliency,
            _keywords(saliency),
            False,
            True,
            "Saliency (abs=True there by default)",
            "Simonyan et al. 2014",
        ),
        _spec(
            "input_x_gradient",
            input_x_gradient,
            _keywords(input_x_gradient),
            False,
            True,
            "InputXGradient",
            "Shrikumar et al. 2016",
        ),
        _spec(
            "integrated_gradients",
            integrated_gradients,
            _keywords(integrated_gradients, ("return_delta",)),
            False,
            True,
            "IntegratedGradients",
            "Sundararajan et al. 2017",
        ),
        _spec(
            "smoothgrad",
            smoothgrad,
            _keywords(smoothgrad),
            True,
            True,
            "NoiseTunnel(Saliency)",
            "Smilkov et al. 2017",
        ),
        _spec(
            "smoothgrad_sq",
            _tunnel("smoothgrad_sq", saliency),
            _TUNNEL + _keywords(saliency),
            True,
            False,
            "NoiseTunnel(Saliency, nt_type='smoothgrad_sq')",
            "Hooker et al. 2019",
        ),
        _spec(
            "vargrad",
            _tunnel("vargrad", saliency),
            _TUNNEL + _keywords(saliency),
            True,
            False,
            "NoiseTunnel(Saliency, nt_type='vargrad')",
            "Adebayo et al. 2018",
        ),
        _spec(
            "ig_smoothgrad",
            _tunnel("smoothgrad", integrated_gradients),
            _TUNNEL + _keywords(integrated_gradients, ("return_delta",)),
            True,
            True,
            "NoiseTunnel(IntegratedGradients)",
            "Smilkov et al. 2017 over Sundararajan et al. 2017",
        ),
        _spec(
            "gaussian_saliency",
            gaussian_smoothed_saliency,
            _keywords(gaussian_smoothed_saliency),
            False,
            True,
            "(none)",
            "Simonyan et al. 2014, smoothed in image space",
        ),
        _spec(
            "deeplift",
            deeplift,
            _keywords(deeplift, ("return_delta",)),
            False,
            True,
            "DeepLift",
            "Shrikumar et al. 2017 (Rescale rule)",
        ),
        _spec(
            "gradient_shap",
            gradient_shap,
            _keywords(gradient_shap),
            True,
            True,
            "GradientShap",
            "Lundberg & Lee 2017",
        ),
        _cam_spec(cam.grad_cam, "LayerGradCam", "Selvaraju et al. 2017"),
        _cam_spec(
            cam.grad_cam_plus_plus,
            "(none; pytorch-grad-cam GradCAMPlusPlus)",
            "Chattopadhay et al. 2018",
        ),
        _cam_spec(cam.xgrad_cam, "(none; pytorch-grad-cam XGradCAM)", "Fu et al. 2020"),
        _cam_spec(cam.hires_cam, "(none; pytorch-grad-cam HiResCAM)", "Draelos & Carin 2020"),
        _cam_spec(cam.layer_cam, "(none; pytorch-grad-cam LayerCAM)", "Jiang et al. 2021"),
        _cam_spec(
            cam.grad_cam_elementwise,
            "(none; pytorch-grad-cam GradCAMElementWise)",
            "pytorch-grad-cam (no paper)",
        ),
        _cam_spec(cam.shapley_cam, "(none; pytorch-grad-cam ShapleyCAM)", "Cai 2025"),
        _cam_spec(
            cam.eigen_grad_cam,
            "(none; pytorch-grad-cam EigenGradCAM)",
            "pytorch-grad-cam (no paper)",
        ),
        _cam_spec(cam.finer_cam, "(none; pytorch-grad-cam FinerCAM)", "Zhang et al. 2025"),
        _cam_spec(cam.score_cam, "(none; pytorch-grad-cam ScoreCAM)", "Wang et al. 2020"),
        _cam_spec(
            cam.ablation_cam, "(none; pytorch-grad-cam AblationCAM)", "Desai & Ramaswamy 2020"
        ),
        _cam_spec(cam.eigen_cam, "(none; pytorch-grad-cam EigenCAM)", "Muhammad & Yeasin 2020"),
        _cam_spec(cam.kpca_cam, "(none; pytorch-grad-cam KPCA_CAM)", "Karmani et al. 2024"),
        _cam_spec(cam.fem, "(none; pytorch-grad-cam FEM)", "Fuad et al. 2020"),
        _cam_spec(
            full_gradient.full_grad, "(none; pytorch-grad-cam FullGrad)", "Srinivas & Fleuret 2019"
        ),
        _spec(
            "occlusion",
            perturbation.occlusion,
            _keywords(perturbation.occlusion),
            False,
            True,
            "Occlusion",
            "Zeiler & Fergus 2014",
        ),
        _grouped_spec(
            perturbation.feature_permutation, True, "FeaturePermutation", "Fisher et al. 2019"
        ),
        _grouped_spec(sampling.feature_ablation, False, "FeatureAblation", "Zeiler & Fergus 2014"),
        _grouped_spec(
            sampling.shapley_value_sampling,
            True,
            "ShapleyValueSampling",
            "Strumbelj & Kononenko 2010",
        ),
        _grouped_spec(sampling.kernel_shap, True, "KernelShap", "Lundberg & Lee 2017"),
        _grouped_spec(sampling.lime, True, "Lime", "Ribeiro, Singh & Guestrin 2016"),
        MethodSpec(
            "deeplift_shap",
            sampling.deeplift_shap,
            _keywords(sampling.deeplift_shap),
            False,
            True,
            "DeepLiftShap",
            "Lundberg & Lee 2017 (Deep SHAP) over Shrikumar et al. 2017",
            check=_needs_references("deeplift_shap"),
        ),
        _spec(
            "blur_ig",
            path_methods.blur_ig,
            _keywords(path_methods.blur_ig, ("return_delta",)),
            False,
            True,
            "(none; PAIR saliency BlurIG)",
            "Xu et al. 2020",
        ),
        _spec(
            "guided_ig",
            path_methods.guided_ig,
            _keywords(path_methods.guided_ig, ("return_delta",)),
            False,
            True,
            "(none; PAIR saliency GuidedIG)",
            "Kapishnikov et al. 2021",
        ),
        MethodSpec(
            "xrai",
            xrai.xrai,
            _keywords(xrai.xrai),
            False,
            True,
            "(none; PAIR saliency XRAI)",
            "Kapishnikov et al. 2019",
            spatial=True,
            check=xrai.check_xrai_options,
            traceable=False,
        ),
        _spec(
            "guided_backprop",
            propagation.guided_backprop,
            _keywords(propagation.guided_backprop),
            False,
            True,
            "GuidedBackprop",
            "Springenberg et al. 2015",
        ),
        _spec(
            "deconvolution",
            propagation.deconvolution,
            _keywords(propagation.deconvolution),
            False,
            True,
            "Deconvolution",
            "Zeiler & Fergus 2014",
        ),
        _spec(
            "lrp",
            propagation.lrp,
            _keywords(propagation.lrp),
            False,
            True,
            "LRP",
            "Bach et al. 2015; rules of Montavon et al. 2019",
        ),
        _spec(
            "guided_grad_cam",
            propagation.guided_grad_cam,
            _keywords(propagation.guided_grad_cam),
            False,
            True,
            "GuidedGradCam",
            "Selvaraju et al. 2017",
            needs_model=True,
        ),
        _spec(
            "decoder_weighted",
            sparse.decoder_weighted,
            _keywords(sparse.decoder_weighted),
            False,
            True,
            "(none)",
            "gradient x activation in code space (Shrikumar et al. 2016), through the decoder",
            needs_model=True,
        ),
        _layer_spec(
            layer.layer_gradient_x_activation,
            "LayerGradientXActivation",
            "Shrikumar et al. 2016, at a layer",
        ),
        _layer_spec(
            layer.layer_integrated_gradients,
            "LayerIntegratedGradients",
            "Sundararajan et al. 2017, at a layer",
        ),
        _layer_spec(
            layer.layer_conductance,
            "LayerConductance (method='riemann_trapezoid')",
            "Dhamdhere et al. 2018",
        ),
        _layer_spec(layer.internal_influence, "InternalInfluence", "Leino et al. 2018"),
        _neuron_spec(layer.neuron_gradient, "NeuronGradient", "Simonyan et al. 2014, of a unit"),
        _neuron_spec(
            layer.neuron_integrated_gradients,
            "NeuronIntegratedGradients",
            "Sundararajan et al. 2017, of a unit",
        ),
        # Explains the target class, through one unit.
        _neuron_spec(
            layer.neuron_conductance, "NeuronConductance", "Dhamdhere et al. 2018", "class"
        ),
        # Compositions: any method at a layer, or of one unit.
        _composed_spec(
            "at_layer",
            deeplift,
            "LayerDeepLift",
            "Shrikumar et al. 2017, at a layer",
        ),
        _composed_spec(
            "at_layer",
            sampling.deeplift_shap,
            "LayerDeepLiftShap",
            "Lundberg & Lee 2017 over Shrikumar et al. 2017, at a layer",
            check=_needs_references("layer_deeplift_shap"),
        ),
        _composed_spec(
            "at_layer",
            gradient_shap,
            "LayerGradientShap (moves the input there; docs/captum.md)",
            "Lundberg & Lee 2017, at a layer",
            stochastic=True,
        ),
        _composed_spec("at_layer", propagation.lrp, "LayerLRP", "Bach et al. 2015, at a layer"),
        _composed_spec(
            "at_layer",
            sampling.feature_ablation,
            "LayerFeatureAblation",
            "Zeiler & Fergus 2014, at a layer",
        ),
        _composed_spec(
            "at_layer",
            perturbation.feature_permutation,
            "LayerFeaturePermutation",
            "Fisher et al. 2019, at a layer",
            stochastic=True,
        ),
        _composed_spec(
            "at_neuron",
            deeplift,
            "NeuronDeepLift",
            "Shrikumar et al. 2017, of a unit",
        ),
        _composed_spec(
            "at_neuron",
            sampling.deeplift_shap,
            "NeuronDeepLiftShap",
            "Lundberg & Lee 2017 over Shrikumar et al. 2017, of a unit",
            check=_needs_references("neuron_deeplift_shap"),
        ),
        _composed_spec(
            "at_neuron",
            gradient_shap,
            "NeuronGradientShap",
            "Lundberg & Lee 2017, of a unit",
            stochastic=True,
        ),
        _composed_spec(
            "at_neuron",
            propagation.guided_backprop,
            "NeuronGuidedBackprop",
            "Springenberg et al. 2015, of a unit",
        ),
        _composed_spec(
            "at_neuron",
            propagation.deconvolution,
            "NeuronDeconvolution",
            "Zeiler & Fergus 2014, of a unit",
        ),
        _composed_spec(
            "at_neuron",
            _over_patches(sampling.feature_ablation),
            "NeuronFeatureAblation",
            "Zeiler & Fergus 2014, of a unit",
            inner_options=("patch",) + _keywords(sampling.feature_ablation),
            check=_patch_or_mask("neuron_feature_ablation"),
        ),
    )
}
METHODS = {
    name: dataclasses.replace(spec, per_example=False)
    if name in ("feature_permutation", "layer_feature_permutation")
    else spec
    for name, spec in METHODS.items()
}


def jit_method(name: str, explain: Callable[..., Array]) -> Callable[..., Array]:
    """`jax.jit(explain)` for the method called `name`, or `explain` itself when the
    method cannot be traced (`MethodSpec.traceable`): one call site for both kinds."""
    return jax.jit(explain) if METHODS[name].traceable else explain


def check_explainer(
    explain: Callable[..., Array], x: Array, target: Any = None, *, key: Array | None = None
) -> None:
    """Trace `explain` (from :func:`explainer`) on `x` without running it.

    A method checks some of its options (``steps=0``, a negative ``sigma``), its layer
    and its inputs' shapes only when it runs; a study that explains hundreds of images
    with several methods calls this on one image per method before it writes anything,
    so a bad value ends the study with the method's own one-line message rather than
    after earlier methods' work. ``jax.eval_shape`` compiles and computes nothing. A
    method that cannot be traced (``MethodSpec.traceable``: XRAI) was checked as far as
    its options go when it was built (``MethodSpec.check``).

    Args:
      explain: an explainer.
      x: a batch like the ones it will explain; two images are enough (feature
        permutation needs two to permute).
      target: as for `explain`; ``None`` traces the predicted class.
      key: for a stochastic method; ``None`` uses a fixed key (the values are not
        computed).

    Raises:
      ValueError: what the method would raise for these inputs or options, and, for a
        model the method has no rule for (DeepLIFT or LRP meeting an unsupported
        primitive, a NotImplementedError when called), a ValueError that says so.
    """
    spec = getattr(explain, "spec", None)
    if spec is not None and not spec.traceable:
        return
    if key is None and (spec is None or spec.stochastic):
        key = jax.random.key(0)
    try:
        jax.eval_shape(lambda x, key: explain(x, target, key), x, key)
    except NotImplementedError as err:  # a rule-based method meeting a primitive it lacks
        name = spec.name if spec is not None else getattr(explain, "__name__", "the method")
        raise ValueError(f"{name} cannot explain this model, so leave it out: {err}") from err
    except ValueError as err:
        # An InputLayoutError is about x, not the method: its type and message stay.
        if spec is None or isinstance(err, InputLayoutError) or str(err).startswith(spec.name):
            raise
        raise ValueError(f"{spec.name}: {err}") from err


def require_class_methods(names: Any, where: str) -> None:
    """A one-line ValueError if any of `names` explains a neuron rather than a class:
    `where` (a study, the report) attributes the target class of every image."""
    neuron = [n for n in names if n in METHODS and METHODS[n].explains != "class"]
    if neuron:
        raise ValueError(
            f"{where} explains classes; {', '.join(neuron)} explain(s) one neuron of a layer "
            "(neuron=) and take no target: call fmi_jax.attribution."
            f"{neuron[0]}(handle, x, layer=..., neuron=...) directly"
        )


def available_methods() -> tuple[str, ...]:
    return tuple(METHODS)


def explainer(
    name: str, fn: ModelFn | Any, *, model: Any = None, variables: Any = None, **options: Any
) -> Explain:
    """`explain(x, target=None, key=None) -> attributions` for the method called `name`.

    Args:
      name: a key of `METHODS`.
      fn: the model function; for the methods with `METHODS[name].needs_model`, a model
        handle (`flax_model(...)`), unless `model` and `variables` are given.
      model, variables: a Linen module and its variables, turned into
        `flax_model(model, variables)` for the methods that look inside the model;
        that passes no call keywords, so for a module with an inference flag to set
        pass `flax_model(model, variables, train=False)` (its own flag) as `fn`.
      **options: the method's keyword options (`METHODS[name].options`).

    The function returned carries the method's `MethodSpec` as `explain.spec`.
    """
    if name not in METHODS:
        raise ValueError(
            f"unknown attribution method {name!r}; available: {', '.join(available_methods())}"
        )
    spec = METHODS[name]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        why = " (it has no reference input)" if "baseline" in unknown else ""
        raise ValueError(
            f"{name} does not take {', '.join(unknown)}{why}; it takes: {', '.join(spec.options)}"
        )
    if spec.check is not None:
        spec.check(options)
    if spec.needs_model:
        if model is not None:
            if variables is None:
                raise ValueError(f"{name}: give variables= with model= (or pass flax_model(...))")
            if isinstance(fn, FlaxModel):
                raise ValueError(
                    f"{name}: fn is already a model handle; model= and variables= would "
                    "replace it by flax_model(model, variables) without its call keywords "
                    "(train=False, ...): pass one or the other"
                )
            fn = flax_model(model, variables)
        fn = as_flax_model(fn, name)
        if "layer" in spec.options and "layer" not in options:
            raise ValueError(
                f"{name} needs layer=<module path of a conv layer>, e.g. layer='conv2'; "
                "fmi_jax.attribution.layer_names(handle, x) lists them"
            )
        if "neuron" in spec.options and "neuron" not in options:
            raise ValueError(
                f"{name} needs neuron=<index tuple into the layer's activation without the "
                "batch axis>, e.g. neuron=(3, 4, 0)"
            )
    required = [
        p.name
        for p in inspect.signature(spec.method).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in options
    ]
    if required:
        raise ValueError(
            f"{name} needs {', '.join(f'{p}=' for p in required)} (see the docstring of "
            f"fmi_jax.attribution.{getattr(spec.method, '__name__', name)})"
        )
    method = spec.method
    bound = dict(options)

    def explain(x: Array, target: Any = None, key: Array | None = None) -> Array:
        maps = method(fn, x, target, key=key, **bound)
        return maps[..., None] if spec.spatial else maps

    explain.spec = spec  # type: ignore[attr-defined]  (read by parallel.attribute_dataset)
    return explain
