"""Sanity checks for attribution maps: model randomisation (Adebayo et al. 2018), its
efficient and smooth variants (Hedström et al. 2023), the random-logit test (Sixt et
al. 2020) and input invariance (Kindermans et al. 2019).

An attribution method that explains *the model* must change its maps when the
model's learned weights are destroyed. Adebayo et al., "Sanity Checks for
Saliency Maps" (NeurIPS 2018), test this by re-drawing parameters at random and
comparing the maps of the randomised model with the original ones:

* cascading randomisation: layers are randomised cumulatively from the logits
  towards the input (``head``, then ``head + fc1``, then ``head + fc1 + conv2``,
  ...). After the last step the whole network is random.
* independent randomisation: one layer at a time, every other layer keeping its
  weights.

Similarity between the original map ``e`` and the randomised map ``r`` of the same
example (one value per example, vectorised over the batch):

* ``spearman``: Spearman rank correlation of the signed maps,
  rho = Pearson(rank(e), rank(r)) with average ranks for ties
  (:func:`fmi_jax.evaluation.agreement.spearman`).
* ``spearman_abs``: the same on ``|e|`` and ``|r|``. A sign flip of the whole map
  (common for gradients when a layer is re-drawn) gives ``spearman`` -1 while the
  map's structure is intact; the absolute version sees through it, as the paper
  reports both.
* ``ssim``: the structural similarity index (Wang et al. 2004) between the maps
  normalised as the paper does for its SSIM/visual comparisons: per example
  ``m = |e|``, ``(m - min m) / (max m - min m)`` in [0, 1] (a constant ``|e|``
  becomes all zeros), compared with ``data_range = 1``.

Maps with a channel axis ``(N, H, W, C)`` are first reduced to ``(N, H, W)`` with
:func:`fmi_jax.evaluation.agreement.reduce_channels` (``channels="sum"`` by
default, which keeps the sign); ``(N, H, W)`` maps are used as they are.

SSIM (:func:`ssim`) matches ``skimage.metrics.structural_similarity`` with its
defaults (``gaussian_weights=False``): for every 7 x 7 window fully inside the
image (skimage filters with a uniform 7 x 7 filter and then crops
``(7 - 1) // 2`` pixels on every side, which leaves exactly the windows that do not
touch the padding) with window means mu, sample variances sigma^2 and sample
covariance sigma_ab (``NP / (NP - 1)`` correction, NP = 49),

    S = (2 mu_a mu_b + C1) (2 sigma_ab + C2) / ((mu_a^2 + mu_b^2 + C1) (sigma_a^2 + sigma_b^2 + C2)),
    C1 = (K1 R)^2, C2 = (K2 R)^2, K1 = 0.01, K2 = 0.03,

and the result is the mean of S over those windows. One deliberate difference:
skimage refuses floating-point images without ``data_range``; here
``data_range=None`` means R = max - min over *both* maps of the pair (per
example), which keeps the function symmetric. Where a window's denominator is 0
(only possible with R = 0, i.e. two identical constant maps) S is taken as 1
rather than skimage's NaN. Arithmetic is float32 on device; window variances are
computed from maps shifted by the pair's mean (which leaves them unchanged) to
limit cancellation.

Randomisation (:func:`randomize_layers`) re-draws every parameter leaf of a layer
(a top-level module of ``variables["params"]``: ``conv1``, ..., ``fc1``, ``head``)
independently as ``mean + std * N(0, 1)`` with the leaf's own mean and standard
deviation. This keeps each tensor's scale (so activations neither vanish nor
explode, the role the paper's truncated-normal re-initialisation plays) and
destroys everything learned about which weight sits where. Leaves that are
constant keep their value (a bias still at 0, a batch-norm scale at 1); the
layer's other leaves (the kernel) are still random. ``batch_stats`` and any other
collections are left untouched.

Layer order (:func:`layer_order`, output first): the top-level names of
``variables["params"]`` in the reverse of the order Flax created them, which for
``nn.compact`` modules is call order, input to output; the cascade starts at the
output. A params tree that
has been re-sorted (e.g. alphabetically by a checkpoint library) loses that order;
pass ``layers=`` explicitly then.

Randomness comes only from the ``key`` argument: ``key`` is split into a key for
parameters and a key for the explanations. Layer ``name`` draws from
``fold_in(param_key, crc32(name))`` and its j-th leaf (in ``jax.tree`` order) from
``fold_in`` of that with ``j``, so a layer gets the same random weights whether it
is randomised alone or as part of a cascade. The original and every randomised
model are explained with the same explanation key, so stochastic methods
(SmoothGrad, ...) see the same noise and only the weights differ.

Pass/fail (:func:`passes_sanity_check`): a method fails when, after the full
cascade, its maps still rank features like the original ones: the mean over
examples of ``|spearman|`` or of ``|spearman_abs|`` (whichever is larger) exceeds
``threshold`` (default 0.5). The threshold is a heuristic, not from the paper
(which judges visually and by plots): maps that keep a rank correlation above
0.5 with the trained model's maps share most of their ordering, which is what the
paper's failing methods (Guided BackProp, Guided Grad-CAM) show, whereas gradients
of a random network fall well below it (near 0 in the paper's Inception v3
experiments). Maps that are constant for the trained model (zeros, say) fail: they
cannot show that they depend on the weights.

Efficient and smooth MPRT (Hedström, Weber, Lapuschkin & Höhne, "Sanity checks
revisited: an exploration to repair the model parameter randomisation test", 2023):
noisy maps are dissimilar to each other whether or not the method depends on the
weights, so noise alone can pass the similarity test. The efficient MPRT
(:func:`efficient_mprt`, Quantus' ``EfficientMPRT``) asks instead how much more
complex a map becomes when the whole model is randomised,

    eMPRT_i = (H(r_i) - H(e_i)) / H(e_i),

with ``H`` the entropy of the histogram of the map's values over 100 equal bins
(:func:`~fmi_jax.evaluation.faithfulness.discrete_entropy`), ``e_i`` the original
map and ``r_i`` the map of the fully randomised model (the last step of the cascade,
same keys); higher is better, a method blind to the weights scores exactly 0. The
layer order does not matter to it, only the fully randomised model. The smooth MPRT
denoises both maps by averaging them over noisy copies of the input before the
cascade compares them; here that is a composition, not another function:
``cascading_randomization`` with ``make_explain`` returning a
:func:`~fmi_jax.attribution.noise_tunnel` of the method,
``smooth = noise_tunnel(saliency, samples=50, stdev_spread=0.1)`` and
``lambda v: lambda x, t, k: smooth(model_fn(v), x, t, key=k)``, with the layers in
the paper's bottom-up order, ``layers=tuple(reversed(layer_order(variables)))``, and
its result read from ``spearman_abs`` (Quantus' ``SmoothMPRT`` compares ``|maps|``
by Spearman after a rescaling that does not change ranks). Quantus averages 49 noisy
copies and the clean input where the noise tunnel averages 50 noisy copies, and
both Quantus checks randomise layers with its own initialisers and seed, so their
numbers are not comparable with these draws.

Random logit (:func:`random_logit`): Sixt, Granz & Landgraf, "When Explanations
Lie: Why Many Modified BP Attributions Fail" (ICML 2020) show that many modified
backpropagation rules ignore the parameters of the later layers, and with them the
class being explained; Quantus implements their check as ``RandomLogit``. A map that
explains the class must change when another class is explained. For example i with
target t_i, a class r_i is drawn uniformly from the other C - 1 classes and

    RL_i = sim( e(x_i, t_i), e(x_i, r_i) ),   r_i ~ U{ c in 0, ..., C - 1 : c != t_i },

with ``sim`` one of the similarities above (``ssim`` by default, as Quantus; the maps
reduced and, for SSIM, normalised exactly as for the randomisation checks). Low
values mean the maps depend on the class; a map that ignores the target (the input
itself, or a rule that propagates the same relevance whatever the class) gives
exactly 1. Randomness: example i's key ``fold_in(key, i)``
(:func:`fmi_jax.attribution.example_keys`; or the i-th of ``N`` given keys) is split
into a class key, which draws ``r_i = (t_i + s_i) mod C`` with ``s_i`` uniform in
``{1, ..., C - 1}`` (:func:`random_other_classes`), and an explanation key, passed to
``explain`` for *both* maps, so a stochastic method's own noise does not count as a
difference. Both maps come from ``explain`` in chunks of ``batch_size`` inputs
(:func:`fmi_jax.attribution.map_over_samples`), so nothing depends on
``batch_size`` or on how a dataset is split into batches.

What differs from Quantus' ``RandomLogit``, and why:

* the number of classes comes from ``fn``'s logits (or must be given): Quantus
  defaults to ``num_classes=1000`` and then draws classes the model may not have, or
  never draws some it has.
* the off-class comes from ``key`` per example: Quantus reseeds numpy's global
  generator with ``seed=42`` at every batch (at every example in older versions), so
  an example's class depends on its place in the batch and on the batch size, and
  every batch repeats the same sequence of draws.
* SSIM compares 2-D maps (7 x 7 windows) after this module's ``|e|`` min-max
  normalisation: Quantus divides each map by its largest ``|e|`` (keeping the sign)
  and applies skimage's SSIM to the *flattened* maps, whose windows then run along
  the flattened rows rather than over image neighbourhoods; the numbers are therefore
  not comparable with Quantus'.
* both maps are computed here with the same explanation key: Quantus compares the
  given (or separately computed) target map with an off-class map from a new call.

Input invariance (:func:`input_invariance`): Kindermans, Hooker, Adebayo, Alber,
Schütt, Dähne, Erhan & Kim, "The (un)reliability of saliency methods" (in Explainable
AI, Springer LNCS 11700, 2019; arXiv:1711.00867) shift every input by a constant,
``x + s``, and give the model a first layer whose bias absorbs the shift, so the new
model computes exactly the old function of the old input; a method that explains the
function should not notice. Here the shifted model is the composition
``z -> fn(z - s)``, which is the same function, and a method passes on an example when
its map of the shifted model at ``x + s`` equals its map of ``fn`` at ``x`` within
``numpy.isclose``'s tolerance (``atol=1e-4`` and ``rtol=1e-5``, Quantus'
``InputInvariance``). Gradients pass; ``x * grad`` does not (it changes by
``s * grad``), nor do integrated gradients from a fixed baseline that does not move
with the shift. Methods that differentiate the function see no difference between
the composition and a changed bias; a rule that treats the first layer's bias
specially could, on a model whose bias was changed.

References:
  J. Adebayo, J. Gilmer, M. Muelly, I. Goodfellow, M. Hardt, B. Kim. Sanity Checks
  for Saliency Maps. NeurIPS 2018. arXiv:1810.03292.
  A. Hedström, L. Weber, S. Lapuschkin, M. M.-C. Höhne. Sanity Checks Revisited: An
  Exploration to Repair the Model Parameter Randomisation Test. XAI in Action
  workshop, NeurIPS 2023. arXiv:2401.06465.
  P.-J. Kindermans, S. Hooker, J. Adebayo, M. Alber, K. T. Schütt, S. Dähne, D. Erhan,
  B. Kim. The (Un)reliability of Saliency Methods. In Explainable AI: Interpreting,
  Explaining and Visualizing Deep Learning, LNCS 11700, 2019. arXiv:1711.00867.
  L. Sixt, M. Granz, T. Landgraf. When Explanations Lie: Why Many Modified BP
  Attributions Fail. ICML 2020. arXiv:1912.09818.
  Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli. Image Quality Assessment:
  From Error Visibility to Structural Similarity. IEEE TIP 13(4), 2004.
"""

from __future__ import annotations

import functools
import operator
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.attribution.core import (
    Explain,
    ModelFn,
    Target,
    as_input,
    as_number,
    as_rows,
    as_target,
    check_explain,
    check_finite,
    example_keys,
    map_over_samples,
    minmax_scale,
    resolve_target,
)
from fmi_jax.evaluation.agreement import reduce_channels, spearman
from fmi_jax.evaluation.faithfulness import discrete_entropy
from fmi_jax.models import jit_draws

__all__ = [
    "cascading_randomization",
    "efficient_mprt",
    "entropy_rise",
    "independent_randomization",
    "input_invariance",
    "layer_order",
    "passes_sanity_check",
    "random_logit",
    "random_other_classes",
    "randomize_layers",
    "ssim",
]

MakeExplain = Callable[[Any], Explain]

METRICS = ("spearman", "spearman_abs", "ssim")
CHANNEL_REDUCTIONS = ("sum", "abs_sum", "max_abs")


# --------------------------------------------------------------------------- SSIM


def ssim(
    a: jax.Array,
    b: jax.Array,
    *,
    window: int = 7,
    data_range: float | jax.Array | None = None,
    k1: float = 0.01,
    k2: float = 0.03,
    sample_covariance: bool = True,
) -> jax.Array:
    """Per-example mean SSIM of two batches of 2-D maps (N, H, W), shape (N,).

    skimage's ``structural_similarity`` defaults (uniform ``window`` x ``window``
    windows, K1 = 0.01, K2 = 0.03, sample covariance), averaged over the windows
    that lie fully inside the map. ``data_range``: a scalar or one value per example;
    None means max - min over both maps of each pair. Symmetric in ``a`` and ``b`` (up
    to float32 rounding: XLA may contract ``x * x + y * y`` into a fused multiply-add);
    identical maps give exactly 1, and a NaN or Inf in either map gives NaN. Reduce
    (N, H, W, C) maps first with
    :func:`~fmi_jax.evaluation.agreement.reduce_channels`.
    """
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim != 3:
        raise ValueError(
            f"ssim wants (N, H, W) maps, got shape {a.shape}; reduce a channel axis "
            "first with fmi_jax.evaluation.reduce_channels"
        )
    if isinstance(window, bool) or not isinstance(window, int) or window < 3 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 3, got {window!r}")
    if window > min(a.shape[1:]):
        raise ValueError(f"window {window} exceeds the map size {a.shape[1:]}")
    if k1 < 0 or k2 < 0:
        raise ValueError(f"k1 and k2 must be >= 0, got {k1} and {k2}")
    if data_range is None:
        lo = jnp.minimum(a.min((1, 2)), b.min((1, 2)))
        hi = jnp.maximum(a.max((1, 2)), b.max((1, 2)))
        data_range = hi - lo
    data_range = jnp.broadcast_to(jnp.asarray(data_range, jnp.float32), a.shape[:1])
    return _ssim(a, b, data_range, window, float(k1), float(k2), bool(sample_covariance))


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _ssim(a, b, data_range, window, k1, k2, sample_covariance):
    npix = window * window

    def mean_filter(x):  # mean over every window fully inside the map ("valid")
        s = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, window, window), (1, 1, 1), "VALID")
        return s / npix

    ua, ub = mean_filter(a), mean_filter(b)
    # Variances/covariance are shift invariant: compute them on maps shifted by the
    # pair's mean (the same shift for both) to limit float32 cancellation.
    c = 0.5 * (a.mean((1, 2), keepdims=True) + b.mean((1, 2), keepdims=True))
    a0, b0 = a - c, b - c
    ua0, ub0 = mean_filter(a0), mean_filter(b0)
    cov_norm = npix / (npix - 1) if sample_covariance else 1.0
    va = cov_norm * (mean_filter(a0 * a0) - ua0 * ua0)
    vb = cov_norm * (mean_filter(b0 * b0) - ub0 * ub0)
    vab = cov_norm * (mean_filter(a0 * b0) - ua0 * ub0)
    r = data_range[:, None, None]
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    num = (2 * (ua * ub) + c1) * (2 * vab + c2)
    den = (ua * ua + ub * ub + c1) * (va + vb + c2)
    # A window of two identical constant maps (den 0) is perfectly similar; a NaN or
    # Inf in either map (den NaN) stays NaN, as in pearson and spearman.
    s = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 1.0)
    return jnp.where(jnp.isnan(den), jnp.nan, s).mean((1, 2))


# ------------------------------------------------------------------ randomisation


def _params(variables: Mapping[str, Any]) -> Mapping[str, Any]:
    if "params" not in variables:
        raise ValueError(
            f"variables have no 'params' collection (found {list(variables)}); for an NNX "
            "model pass {'params': nnx.state(model, nnx.Param)}, a make_explain that "
            "merges it back (nnx.merge), and layers= output first"
        )
    return variables["params"]


def layer_order(variables: Mapping[str, Any]) -> tuple[str, ...]:
    """Top-level parameter modules from the output back to the input.

    ``variables`` is a Flax variables dict (``{"params": ...}``) or its ``params``.
    The order is that of the dict, i.e. module creation (call) order for Linen
    modules, reversed: ``('head', 'fc1', 'conv2', 'conv1')`` for a SimpleCNN. NNX
    state is sorted by attribute name, which says nothing of the call order: it is
    refused, and the cascades then need ``layers=`` given output first (so does a plain
    dict made from it, ``nnx.to_pure_dict``, which keeps the sorted order unnoticed).
    """
    params = variables["params"] if "params" in variables else variables
    if type(params).__module__.startswith("flax.nnx"):
        raise ValueError(
            "NNX state is sorted by attribute name, not in call order, so the layers' "
            "output-first order cannot be read from it: pass layers=(...) output first, "
            "e.g. ('head', 'conv2', 'conv1')"
        )
    return tuple(reversed(list(params)))


def _layer_key(key: jax.Array, name: str) -> jax.Array:
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def _leaf_noise(leaves: list[jax.Array], key: jax.Array) -> list[jax.Array]:
    return [
        jax.random.normal(jax.random.fold_in(key, j), jnp.shape(leaf), jnp.float32)
        for j, leaf in enumerate(leaves)
    ]


# A layer's draws in one program (eagerly, each leaf's threefry program compiles on its
# own). The affine map stays eager: fused with the draw, mean + std * noise would round
# differently, and the weights would no longer be those of one eager draw per leaf.
_layer_noise = jit_draws(_leaf_noise)


def _redraw(leaf: jax.Array, noise: jax.Array) -> jax.Array:
    x = jnp.asarray(leaf)
    xf = x.astype(jnp.float32)
    return (xf.mean() + xf.std() * noise).astype(x.dtype)


def randomize_layers(variables: Mapping[str, Any], layers: Sequence[str], key: jax.Array):
    """``variables`` with every parameter of the named top-level modules re-drawn.

    Each leaf becomes ``mean + std * N(0, 1)`` with its own mean and std (same shape
    and dtype); layer ``name``'s draws depend only on ``key`` and ``name``. Other
    layers, ``batch_stats`` and other collections are returned unchanged (the same
    arrays). The input is not modified.
    """
    if isinstance(layers, str):
        raise ValueError("layers must be a sequence of layer names, not a single string")
    params = _params(variables)
    unknown = [name for name in layers if name not in params]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; the model has {list(params)}")
    new_params = dict(params)
    for name in layers:
        leaves, treedef = jax.tree_util.tree_flatten(params[name])
        lkey = _layer_key(key, name)
        new = [_redraw(*pair) for pair in zip(leaves, _layer_noise(leaves, lkey), strict=True)]
        new_params[name] = jax.tree_util.tree_unflatten(treedef, new)
    out = dict(variables)
    out["params"] = type(params)(new_params) if not isinstance(params, dict) else new_params
    return type(variables)(out) if not isinstance(variables, dict) else out


# ------------------------------------------------------------------------ checks


def _as_2d(maps: jax.Array, channels: str) -> jax.Array:
    maps = jnp.asarray(maps, jnp.float32)
    if maps.ndim == 4:
        return reduce_channels(maps, channels)
    if maps.ndim == 3:
        return maps
    raise ValueError(f"maps must be (N, H, W) or (N, H, W, C), got shape {maps.shape}")


@jax.jit
def _unit_abs(m: jax.Array) -> jax.Array:
    """|m| rescaled per example to [0, 1]; a constant |m| becomes zeros."""
    return minmax_scale(jnp.abs(m), (1, 2))


def _similarity_of(metric: str, a: jax.Array, b: jax.Array, window: int) -> jax.Array:
    """One of ``METRICS`` between two batches of maps, shape (N,)."""
    if metric == "spearman":
        return spearman(a, b)
    if metric == "spearman_abs":
        return spearman(jnp.abs(a), jnp.abs(b))
    return ssim(_unit_abs(a), _unit_abs(b), window=window, data_range=1.0)


def _similarity(orig: jax.Array, rand: jax.Array, window: int) -> dict[str, jax.Array]:
    return {metric: _similarity_of(metric, orig, rand, window) for metric in METRICS}


def _run(mode, make_explain, variables, x, target, key, layers, channels, window):
    if target is None:
        raise ValueError(
            "pass the classes to explain explicitly (e.g. labels or the original "
            "model's predictions): with target=None every randomised model would "
            "explain its own predicted class"
        )
    params = _params(variables)
    if isinstance(layers, str):
        raise ValueError("layers must be a sequence of layer names, not a single string")
    layers = layer_order(params) if layers is None else tuple(layers)
    if not layers:
        raise ValueError("no layers to randomise")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers repeat a name: {layers}")
    param_key, explain_key = jax.random.split(key)
    explain = make_explain(variables)
    check_explain(explain, f"{mode}_randomization: make_explain(variables)")
    original = _as_2d(explain(x, target, explain_key), channels)
    # A NaN would rank as an ordinary value or be skipped by the means: refused instead.
    check_finite(original, f"{mode}_randomization: the explanation of the original model")
    per_layer = {m: [] for m in METRICS}
    for i, name in enumerate(layers):
        chosen = layers[: i + 1] if mode == "cascading" else (name,)
        randomized = randomize_layers(variables, chosen, param_key)
        maps = _as_2d(make_explain(randomized)(x, target, explain_key), channels)
        if maps.shape != original.shape:
            raise ValueError(f"maps changed shape: {original.shape} -> {maps.shape}")
        check_finite(maps, f"{mode}_randomization: the explanation with {name!r} randomised")
        for metric, value in _similarity(original, maps, window).items():
            per_layer[metric].append(value)
    result: dict[str, Any] = {"mode": mode, "layers": layers}
    result["original_maps"], result["last_maps"] = original, maps
    result.update({m: jnp.stack(v) for m, v in per_layer.items()})
    result["mean"] = {m: jnp.nanmean(result[m], axis=1) for m in METRICS}
    result["fully_randomized"] = mode == "cascading" and set(layers) == set(params)
    return result


def cascading_randomization(
    make_explain: MakeExplain,
    variables: Mapping[str, Any],
    x: jax.Array,
    target: Any,
    key: jax.Array,
    *,
    layers: Sequence[str] | None = None,
    channels: str = "sum",
    window: int = 7,
) -> dict[str, Any]:
    """Randomise ``layers`` cumulatively (output first) and compare maps to the original.

    ``make_explain(variables)`` returns ``explain(x, target, key) -> maps`` for the
    model with those variables, e.g.
    ``lambda v: explainer("saliency", lambda x: model.apply(v, x))``. ``target`` must
    be given (an int or an (N,) array); ``layers`` defaults to
    :func:`layer_order` (output first). Maps (N, H, W) or (N, H, W, C) (reduced with
    ``reduce_channels(maps, channels)``); SSIM needs H, W >= ``window``.

    Returns a dict: ``mode``; ``layers`` (tuple of names, in the order randomised);
    ``spearman``, ``spearman_abs``, ``ssim``: arrays (L, N), row l comparing the
    original maps with those after randomisation step l; ``mean``: dict of the same
    three names -> (L,) means over examples (NaN entries, from constant maps, are
    skipped); ``fully_randomized``: whether the last step randomised every layer;
    ``original_maps``, ``last_maps``: the reduced maps (N, H, W) of the original model
    and of the last step (for :func:`entropy_rise`).
    """
    return _run("cascading", make_explain, variables, x, target, key, layers, channels, window)


def independent_randomization(
    make_explain: MakeExplain,
    variables: Mapping[str, Any],
    x: jax.Array,
    target: Any,
    key: jax.Array,
    *,
    layers: Sequence[str] | None = None,
    channels: str = "sum",
    window: int = 7,
) -> dict[str, Any]:
    """Randomise each of ``layers`` alone and compare maps to the original.

    ``make_explain(variables)`` returns ``explain(x, target, key) -> maps`` for the
    model with those variables, e.g.
    ``lambda v: explainer("saliency", lambda x: model.apply(v, x))``. ``target`` must
    be given (an int or an (N,) array); ``layers`` defaults to
    :func:`layer_order` (output first). Maps (N, H, W) or (N, H, W, C) (reduced with
    ``reduce_channels(maps, channels)``); SSIM needs H, W >= ``window``.

    Returns a dict: ``mode``; ``layers`` (tuple of names, in the order randomised);
    ``spearman``, ``spearman_abs``, ``ssim``: arrays (L, N), row l comparing the
    original maps with those after randomisation step l; ``mean``: dict of the same
    three names -> (L,) means over examples (NaN entries, from constant maps, are
    skipped); ``fully_randomized``: whether the last step randomised every layer;
    ``original_maps``, ``last_maps``: the reduced maps (N, H, W) of the original model
    and of the last step (for :func:`entropy_rise`).
    """
    return _run("independent", make_explain, variables, x, target, key, layers, channels, window)


def efficient_mprt(
    make_explain: MakeExplain,
    variables: Mapping[str, Any],
    x: jax.Array,
    target: Any,
    key: jax.Array,
    *,
    layers: Sequence[str] | None = None,
    bins: int = 100,
) -> jax.Array:
    """Efficient MPRT (Hedström et al. 2023): the relative rise of each map's discrete
    entropy when the model's parameters are randomised, shape ``(N,)``.

    ``eMPRT_i = (H(r_i) - H(e_i)) / H(e_i)`` with ``e_i`` the map of the model with
    ``variables``, ``r_i`` that of the model with every layer of ``layers`` re-drawn
    (:func:`randomize_layers`; all of them by default, the last step of
    :func:`cascading_randomization` with the same ``key``), and ``H``
    :func:`~fmi_jax.evaluation.faithfulness.discrete_entropy` with ``bins`` bins over
    each map's values as returned (every channel). Higher is better: a map of a random
    model should look like noise. A method that ignores the parameters scores exactly
    0. ``key`` is split as for the cascade, into the parameter key and the key both
    models' explanations get.

    Args:
      make_explain, variables, x, target, key: as :func:`cascading_randomization`.
      layers: the top-level parameter modules to randomise together; all by default.
      bins: histogram bins (Quantus' default 100).

    Returns:
      float32 ``(N,)``; NaN where the original map is constant (``H(e_i) = 0``).
    """
    if target is None:
        raise ValueError(
            "pass the classes to explain explicitly (e.g. labels or the original model's "
            "predictions): with target=None the randomised model would explain its own "
            "predicted class"
        )
    if isinstance(layers, str):
        raise ValueError("layers must be a sequence of layer names, not a single string")
    layers = layer_order(_params(variables)) if layers is None else tuple(layers)
    if not layers:
        raise ValueError("no layers to randomise")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers repeat a name: {layers}")
    x = as_input(x)
    param_key, explain_key = jax.random.split(key)
    what = "make_explain(variables) must return maps (N, ...)"
    explain = make_explain(variables)
    check_explain(explain, "efficient_mprt: make_explain(variables)")
    original = as_rows(explain(x, target, explain_key), x, what, min_ndim=2)
    randomized = make_explain(randomize_layers(variables, layers, param_key))
    randomized = as_rows(randomized(x, target, explain_key), x, what, min_ndim=2)
    if randomized.shape != original.shape:
        raise ValueError(f"maps changed shape: {original.shape} -> {randomized.shape}")
    check_finite(original, "efficient_mprt: the explanation of the original model")
    check_finite(randomized, "efficient_mprt: the explanation of the randomised model")
    return entropy_rise(original, randomized, bins=bins)


def entropy_rise(original: jax.Array, randomized: jax.Array, *, bins: int = 100) -> jax.Array:
    """``(H(r_i) - H(e_i)) / H(e_i)`` per example, shape ``(N,)``: the efficient MPRT of
    maps already computed, e.g. a cascade's ``original_maps`` and ``last_maps`` (its
    last model is :func:`efficient_mprt`'s with the same key and layers). ``H`` is
    :func:`~fmi_jax.evaluation.faithfulness.discrete_entropy` with ``bins`` bins; NaN
    where the original map is constant. A cascade's maps are reduced over channels
    (its ``channels``), where :func:`efficient_mprt` bins every channel's values: the
    two agree for one-channel maps, not for RGB maps."""
    before = discrete_entropy(original, bins=bins)
    after = discrete_entropy(randomized, bins=bins)
    return jnp.where(before > 0, (after - before) / jnp.where(before > 0, before, 1.0), jnp.nan)


def passes_sanity_check(result: Mapping[str, Any], threshold: float = 0.5) -> bool:
    """Whether a method's maps stop resembling the original after the full cascade.

    Fails when the mean over examples of ``|spearman|`` or of ``|spearman_abs|``
    at the last cascading step is above ``threshold``, a number in [0, 1] (see the
    module docstring for the choice of 0.5). Examples with an undefined correlation
    (a constant map) are skipped; if every example is undefined because the randomised
    model's maps are constant, they carry no ranking of the original and the check
    passes. If instead every original map is constant (an explainer that returns
    zeros, a dead network's gradients), nothing shows that the maps depend on the
    weights: it fails. Needs a cascading result; it is meaningful when
    ``result["fully_randomized"]`` is true.
    """
    if result.get("mode") != "cascading":
        raise ValueError(
            "passes_sanity_check needs a cascading_randomization result: only the "
            "full cascade leaves a fully random model"
        )
    threshold = as_number(threshold, "threshold", minimum=0)
    if threshold > 1:
        raise ValueError(f"threshold is a rank correlation in [0, 1], got {threshold!r}")
    original = result.get("original_maps")
    if original is not None:
        flat = np.asarray(original, np.float64).reshape(len(original), -1)
        if flat.size and np.all(flat.max(1) == flat.min(1)):
            return False
    scores = []
    for metric in ("spearman", "spearman_abs"):
        last = np.abs(np.asarray(result[metric][-1], np.float64))
        if np.isfinite(last).any():
            scores.append(float(np.nanmean(last)))
    return not scores or max(scores) <= threshold


# ------------------------------------------------------------------ random logit


def _as_num_classes(value: Any) -> int:
    try:
        count = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        count = None
    if count is None or count < 2:
        raise ValueError(
            f"num_classes must be an integer >= 2 (a class other than the target has to "
            f"exist), got {value!r}"
        )
    return count


@functools.partial(jax.jit, static_argnums=2)
def _draw_other_classes(
    key: jax.Array, target: jax.Array, num_classes: int
) -> tuple[jax.Array, jax.Array]:
    """(other classes, explanation keys): example i's key ``fold_in(key, i)`` (or the
    i-th given key) is split into a key for its class and a key for its maps. One
    compiled program: eagerly, each random-bits operation would be compiled alone."""
    split = jax.vmap(jax.random.split)(example_keys(key, target.shape[0]))
    # s uniform in {1, ..., C - 1}, so (t + s) mod C is uniform over the classes != t.
    shift = jax.vmap(lambda k: jax.random.randint(k, (), 1, num_classes, jnp.int32))(split[:, 0])
    return (target + shift) % num_classes, split[:, 1]


def random_other_classes(target: Any, key: jax.Array, num_classes: int) -> jax.Array:
    """The classes :func:`random_logit` explains besides ``target`` with this ``key``.

    Example i gets ``(target[i] + s_i) mod num_classes`` with ``s_i`` uniform in
    ``{1, ..., num_classes - 1}`` drawn from the first of the two keys of
    ``split(fold_in(key, i))``: a class uniform over those other than ``target[i]``.
    ``target``: integer array ``(N,)``; ``key``: a PRNG key or one key per example.
    Returns int32 ``(N,)``.
    """
    num_classes = _as_num_classes(num_classes)
    # The shape from the target as given: an int64 class cast to int32 first would
    # wrap around into range before as_target could see it.
    if np.ndim(target) != 1:
        raise ValueError(
            f"target must have shape (N,) (one class per example), got shape {np.shape(target)}"
        )
    target = as_target(target, np.shape(target)[0], num_classes)
    return _draw_other_classes(key, target, num_classes)[0]


def random_logit(
    explain: Explain,
    x: jax.Array,
    target: Target,
    key: jax.Array,
    *,
    num_classes: int | None = None,
    fn: ModelFn | None = None,
    similarity: str = "ssim",
    channels: str = "sum",
    window: int = 7,
    batch_size: int | None = None,
) -> jax.Array:
    """Similarity of each example's map for its target and for a random other class.

    The random-logit test of Sixt et al. (2020), Quantus' ``RandomLogit``; see the
    module docstring for the definition and the differences from Quantus. Near 1: the
    map ignores which class it explains.

    Args:
      explain: ``explain(x, target, key) -> maps`` on a batch (the signature of
        :func:`fmi_jax.attribution.explainer`), maps with leading axis ``N``; it
        receives one key per example (shape ``(N,)``), the same for both maps of an
        example.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)`` or one int for all; ``None`` (the predicted
        class) needs ``fn``.
      key: a PRNG key, or one key per example (shape ``(N,)``).
      num_classes: the number of classes C to draw from; taken from ``fn``'s logits
        when ``fn`` is given (then it may be left out), required otherwise.
      fn: the model, batch -> logits ``(N, C)``; needed for ``target=None``.
      similarity: ``'ssim'`` (default; maps ``(N, H, W)`` or ``(N, H, W, C)``, H and W
        at least ``window``), ``'spearman'`` or ``'spearman_abs'`` (maps of any shape
        ``(N, ...)``; NaN for an example with a constant map).
      channels: how ``(N, H, W, C)`` maps are reduced to ``(N, H, W)``
        (:func:`~fmi_jax.evaluation.agreement.reduce_channels`): ``'sum'``,
        ``'abs_sum'`` or ``'max_abs'``.
      window: the SSIM window (odd, >= 3).
      batch_size: inputs per call of ``explain``; ``None`` explains all ``2 N`` (each
        example for both classes) at once. With more than one chunk ``explain`` runs
        inside ``lax.map`` and must be traceable.

    Returns:
      float32 array ``(N,)``. The classes compared are ``target`` and
      :func:`random_other_classes` ``(target, key, C)``.

    Raises:
      ValueError: fewer than 2 classes, ``num_classes`` missing or disagreeing with
        ``fn``, a bad target (out of range, wrong shape, ``None`` without ``fn``), an
        unknown ``similarity`` or ``channels``, maps without leading axis ``N``, maps
        SSIM cannot compare, or NaN/Inf in ``x``.
    """
    check_explain(explain, "random_logit")
    if similarity not in METRICS:
        raise ValueError(
            f"unknown similarity {similarity!r}; choose 'ssim', 'spearman' or 'spearman_abs'"
        )
    if channels not in CHANNEL_REDUCTIONS:
        raise ValueError(
            f"unknown channel reduction {channels!r}; choose 'sum', 'abs_sum' or 'max_abs'"
        )
    x = as_input(x)
    num_examples = x.shape[0]
    if fn is not None:
        target = resolve_target(fn, x, target, batch_size=batch_size)
        fn_classes = int(jax.eval_shape(fn, x).shape[1])
        if fn_classes < 2:
            raise ValueError(
                f"random_logit needs a model with at least 2 classes, but fn returns "
                f"{fn_classes} logit(s) per example"
            )
        if num_classes is not None and _as_num_classes(num_classes) != fn_classes:
            raise ValueError(
                f"num_classes={num_classes} but fn returns {fn_classes} logits per example; "
                "leave num_classes out when fn is given"
            )
        num_classes = _as_num_classes(fn_classes)
    else:
        if num_classes is None:
            raise ValueError(
                "random_logit needs the number of classes to draw from: pass num_classes= "
                "or fn= (the model, whose logits give it)"
            )
        num_classes = _as_num_classes(num_classes)
        if target is None:
            raise ValueError("target=None (the predicted class) needs fn=; pass fn= or the targets")
        target = as_target(target, num_examples, num_classes)
    other, explain_keys = _draw_other_classes(key, target, num_classes)
    classes = jnp.stack([target, other], 1)  # column 0: the target, 1: the other class

    def explain_pairs(example: jax.Array, column: jax.Array) -> jax.Array:
        inputs = x[example]
        maps = explain(inputs, classes[example, column], explain_keys[example])
        return as_rows(maps, inputs, "explain must return maps (B, ...)", min_ndim=2)

    maps = map_over_samples(explain_pairs, num_examples, 2, batch_size=batch_size)
    check_finite(maps, "random_logit: explain's output")
    own, other = maps[:, 0], maps[:, 1]
    if own.ndim == 4:
        own, other = reduce_channels(own, channels), reduce_channels(other, channels)
    if similarity == "ssim" and own.ndim != 3:
        raise ValueError(
            f"similarity='ssim' compares (N, H, W) or (N, H, W, C) maps, got maps of shape "
            f"{(num_examples,) + maps.shape[2:]}; use similarity='spearman' for other maps"
        )
    return _similarity_of(similarity, own, other, window)


# --------------------------------------------------------------- input invariance


def input_invariance(
    make_explain: Callable[[ModelFn], Explain],
    fn: ModelFn,
    x: jax.Array,
    target: Target,
    key: jax.Array | None = None,
    *,
    shift: float = -1.0,
    rtol: float = 1e-5,
    atol: float = 1e-4,
) -> jax.Array:
    """Whether each example's map is unchanged when the input and the model are shifted
    together (Kindermans et al. 2019; module docstring), shape ``(N,)``, bool.

    Args:
      make_explain: ``make_explain(model_fn) -> explain(x, target, key)``, e.g.
        ``lambda f: explainer("saliency", f)``; called for ``fn`` and for
        ``z -> fn(z - shift)``.
      fn: the model, batch -> logits.
      x: inputs ``(N, ...)``.
      target: class per example, one int, or ``None`` for the class ``fn`` predicts
        for ``x`` (the shifted model predicts the same function of the shifted input;
        the classes are resolved once, on ``x``).
      key: passed to both explanations, so a stochastic method's own noise does not
        count as a difference.
      shift: the constant ``s`` added to every input value (Quantus' ``input_shift``,
        -1 by default).
      rtol, atol: ``|e_s - e| <= atol + rtol |e|`` for every value of the map, as
        ``numpy.isclose`` (Quantus' ``atol=1e-4``).

    Returns:
      bool ``(N,)``: True where the map did not change.

    Raises:
      ValueError: a non-finite shift or negative tolerances, maps without one row per
        input or of different shapes, and the input errors of the model's inputs.
    """
    shift, rtol, atol = (
        as_number(v, n) for v, n in ((shift, "shift"), (rtol, "rtol"), (atol, "atol"))
    )
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
    x = as_input(x)
    target = resolve_target(fn, x, target)
    what = "make_explain(model_fn) must return maps (N, ...)"
    explain = make_explain(fn)
    check_explain(explain, "input_invariance: make_explain(model_fn)")
    original = as_rows(explain(x, target, key), x, what)
    moved = x + jnp.float32(shift)
    shifted = as_rows(make_explain(lambda z: fn(z - shift))(moved, target, key), x, what)
    if shifted.shape != original.shape:
        raise ValueError(f"maps changed shape: {original.shape} -> {shifted.shape}")
    close = jnp.abs(shifted - original) <= atol + rtol * jnp.abs(original)
    return jnp.all(close.reshape(close.shape[0], -1), axis=1)
