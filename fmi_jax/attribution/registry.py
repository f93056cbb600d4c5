"""Attribution methods by name, for studies whose configs list methods as strings.

    explain = explainer("ig_smoothgrad", fn, steps=32, samples=10)
    maps = explain(x, target, key)          # same call for every method

`explainer(name, fn, **options)` returns `explain(x, target, key)`, a function
with one signature for every method (deterministic methods ignore `key`).
Options are the keyword arguments of the underlying function; a misspelt option
is an error that lists the accepted ones, because a silently ignored
`stpes=300` would be a wrong experiment.

Methods that look inside the model (the CAM family) also need the Flax module and
its variables: `explainer("grad_cam", fn, model=model, variables=variables,
layer="conv2")`; their maps get a trailing channel axis, `(N, H, W, 1)`, so they
line up with the input-shaped maps of the other methods.

Composite names are compositions, not new code: `ig_smoothgrad` is
`noise_tunnel(partial(integrated_gradients, fn, ...))`, `smoothgrad_sq` and
`vargrad` are the other noise-tunnel kinds over signed saliency.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp

from fmi_jax.attribution import cam, perturbation, sparse
from fmi_jax.attribution.core import Array, ModelFn, resolve_target
from fmi_jax.attribution.deeplift import deeplift
from fmi_jax.attribution.gradients import input_x_gradient, saliency
from fmi_jax.attribution.integrated_gradients import integrated_gradients
from fmi_jax.attribution.noise_tunnel import noise_tunnel
from fmi_jax.attribution.shap import gradient_shap
from fmi_jax.attribution.smoothing import gaussian_smoothed_saliency

__all__ = ["METHODS", "MethodSpec", "available_methods", "explainer"]

Explain = Callable[[Array, Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A named attribution method.

    Attributes:
      name: registry name.
      build: `build(fn, **options) -> explain(x, target, key)`.
      options: the option names `build` accepts.
      stochastic: whether the result depends on `key`.
      signed: whether maps carry sign (shown on a diverging colour map).
      captum: the Captum counterpart, for the README table.
      paper: the reference.
      needs_model: `build` also takes `model=` (the Flax module) and `variables=`.
    """

    name: str
    build: Callable[..., Explain]
    options: tuple[str, ...]
    stochastic: bool
    signed: bool
    captum: str
    paper: str
    needs_model: bool = False


def _keywords(fn: Callable[..., Any]) -> tuple[str, ...]:
    return tuple(
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    )


def _deterministic(method: Callable[..., Array]) -> Callable[..., Explain]:
    def build(fn: ModelFn, **options: Any) -> Explain:
        return lambda x, target, key: method(fn, x, target, **options)

    return build


def _tunnel_over(
    method: Callable[..., Array],
    kind: str,
    inner: tuple[str, ...],
    inner_defaults: Mapping[str, Any] | None = None,
):
    """noise_tunnel(partial(method, fn, **inner options), kind=kind, **tunnel options)."""

    def build(fn: ModelFn, **options: Any) -> Explain:
        inner_opts = dict(inner_defaults or {})
        inner_opts.update({k: v for k, v in options.items() if k in inner})
        tunnel_opts = {k: v for k, v in options.items() if k not in inner}
        wrapped = functools.partial(method, fn, **inner_opts)

        def explain(x: Array, target: Array, key: Array) -> Array:
            target = resolve_target(fn, x, target)
            return noise_tunnel(wrapped, x, target, key, kind=kind, **tunnel_opts)

        return explain

    return build


def _gradient_shap(fn: ModelFn, baselines: Array | None = None, **options: Any) -> Explain:
    """GradientSHAP with a baseline distribution; None means the one all-zero image."""

    def explain(x: Array, target: Array, key: Array) -> Array:
        base = jnp.zeros((1,) + x.shape[1:], x.dtype) if baselines is None else baselines
        return gradient_shap(fn, x, target, base, key, **options)

    return explain


def _layer_method(method: Callable[..., Array]) -> Callable[..., Explain]:
    """A CAM method on the module: maps `(N, H, W)` -> `(N, H, W, 1)`."""

    def build(fn: ModelFn, *, model: Any, variables: Any, **options: Any) -> Explain:
        return lambda x, target, key: method(model, variables, x, target, **options)[..., None]

    return build


def _model_method(method: Callable[..., Array]) -> Callable[..., Explain]:
    """A method on the module whose maps are already shaped like the input."""

    def build(fn: ModelFn, *, model: Any, variables: Any, **options: Any) -> Explain:
        return lambda x, target, key: method(model, variables, x, target, **options)

    return build


def _feature_permutation(
    fn: ModelFn, patch: int | None = None, feature_mask: Any = None, **options: Any
) -> Explain:
    """Feature permutation; `patch=s` groups the image into s x s patches."""
    if patch is not None and feature_mask is not None:
        raise ValueError("feature_permutation takes `patch` or `feature_mask`, not both")

    def explain(x: Array, target: Array, key: Array) -> Array:
        mask = feature_mask if patch is None else perturbation.square_patches(x.shape[1:], patch)
        return perturbation.feature_permutation(fn, x, target, key, feature_mask=mask, **options)

    return explain


_TUNNEL = ("samples", "stdev_spread", "stdev", "batch_size")
_SALIENCY_OPTS = ("abs",)
# Under a noise tunnel, gradients are averaged signed (as `smoothgrad` does and the
# SmoothGrad and VarGrad papers define them); abs=True gives Captum's default.
_SIGNED = {"abs": False}
_IG_OPTS = ("baseline", "steps", "method")


def _spec(name, build, options, stochastic, signed, captum, paper, needs_model=False) -> MethodSpec:
    return MethodSpec(name, build, tuple(options), stochastic, signed, captum, paper, needs_model)


def _cam_spec(method: Callable[..., Array], captum: str, paper: str) -> MethodSpec:
    return _spec(
        method.__name__,
        _layer_method(method),
        _keywords(method),
        False,
        False,
        captum,
        paper,
        needs_model=True,
    )


METHODS: Mapping[str, MethodSpec] = {
    s.name: s
    for s in (
        _spec(
            "saliency",
            _deterministic(saliency),
            _keywords(saliency),
            False,
            False,
            "Saliency",
            "Simonyan et al. 2014",
        ),
        _spec(
            "input_x_gradient",
            _deterministic(input_x_gradient),
            _keywords(input_x_gradient),
            False,
            True,
            "InputXGradient",
            "Shrikumar et al. 2016",
        ),
        _spec(
            "integrated_gradients",
            _deterministic(integrated_gradients),
            tuple(k for k in _keywords(integrated_gradients) if k != "return_delta"),
            False,
            True,
            "IntegratedGradients",
            "Sundararajan et al. 2017",
        ),
        _spec(
            "smoothgrad",
            _tunnel_over(saliency, "smoothgrad", _SALIENCY_OPTS, _SIGNED),
            _TUNNEL + _SALIENCY_OPTS,
            True,
            True,
            "NoiseTunnel(Saliency)",
            "Smilkov et al. 2017",
        ),
        _spec(
            "smoothgrad_sq",
            _tunnel_over(saliency, "smoothgrad_sq", _SALIENCY_OPTS, _SIGNED),
            _TUNNEL + _SALIENCY_OPTS,
            True,
            False,
            "NoiseTunnel(Saliency, nt_type='smoothgrad_sq')",
            "Hooker et al. 2019",
        ),
        _spec(
            "vargrad",
            _tunnel_over(saliency, "vargrad", _SALIENCY_OPTS, _SIGNED),
            _TUNNEL + _SALIENCY_OPTS,
            True,
            False,
            "NoiseTunnel(Saliency, nt_type='vargrad')",
            "Adebayo et al. 2018",
        ),
        _spec(
            "ig_smoothgrad",
            _tunnel_over(integrated_gradients, "smoothgrad", _IG_OPTS),
            _TUNNEL + _IG_OPTS,
            True,
            True,
            "NoiseTunnel(IntegratedGradients)",
            "Smilkov et al. 2017 over Sundararajan et al. 2017",
        ),
        _spec(
            "gaussian_saliency",
            _deterministic(gaussian_smoothed_saliency),
            _keywords(gaussian_smoothed_saliency),
            False,
            False,
            "(none)",
            "Simonyan et al. 2014, smoothed in image space",
        ),
        _spec(
            "deeplift",
            _deterministic(deeplift),
            tuple(k for k in _keywords(deeplift) if k != "return_delta"),
            False,
            True,
            "DeepLift",
            "Shrikumar et al. 2017 (Rescale rule)",
        ),
        _spec(
            "gradient_shap",
            _gradient_shap,
            ("baselines",) + tuple(k for k in _keywords(gradient_shap)),
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
        _cam_spec(cam.score_cam, "(none; pytorch-grad-cam ScoreCAM)", "Wang et al. 2020"),
        _spec(
            "occlusion",
            _deterministic(perturbation.occlusion),
            _keywords(perturbation.occlusion),
            False,
            True,
            "Occlusion",
            "Zeiler & Fergus 2014",
        ),
        _spec(
            "feature_permutation",
            _feature_permutation,
            ("patch",) + _keywords(perturbation.feature_permutation),
            True,
            True,
            "FeaturePermutation",
            "Fisher et al. 2019",
        ),
        _spec(
            "decoder_weighted",
            _model_method(sparse.decoder_weighted),
            _keywords(sparse.decoder_weighted),
            False,
            True,
            "(none)",
            "gradient x activation in code space (Shrikumar et al. 2016), through the decoder",
            needs_model=True,
        ),
    )
}


def available_methods() -> tuple[str, ...]:
    return tuple(METHODS)


def explainer(
    name: str, fn: ModelFn, *, model: Any = None, variables: Any = None, **options: Any
) -> Explain:
    """`explain(x, target, key) -> attributions` for the method called `name`.

    `model` and `variables` (the Flax module and its variables) are needed by the
    methods with `METHODS[name].needs_model` (the CAM family) and ignored by the rest.
    """
    if name not in METHODS:
        raise ValueError(
            f"unknown attribution method {name!r}; available: {', '.join(available_methods())}"
        )
    spec = METHODS[name]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(
            f"{name} does not take {', '.join(unknown)}; it takes: {', '.join(spec.options)}"
        )
    if spec.needs_model:
        if model is None or variables is None:
            raise ValueError(
                f"{name} looks inside the model: pass the Flax module and its variables, "
                f"explainer({name!r}, fn, model=model, variables=variables, ...)"
            )
        if "layer" in spec.options and "layer" not in options:
            raise ValueError(
                f"{name} needs layer=<module path of a conv layer>, e.g. layer='conv2'; "
                "fmi_jax.attribution.layer_names(model, variables, x) lists them"
            )
        return spec.build(fn, model=model, variables=variables, **options)
    return spec.build(fn, **options)
