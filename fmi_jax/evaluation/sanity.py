"""Model-randomisation sanity checks for attribution maps (Adebayo et al. 2018).

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

Layer order (:func:`layer_order`): the top-level names of ``variables["params"]``
in the order Flax created them, which for ``nn.compact`` modules is call order,
input to output; the cascade runs it reversed, output first. A params tree that
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
experiments).

References:
  J. Adebayo, J. Gilmer, M. Muelly, I. Goodfellow, M. Hardt, B. Kim. Sanity Checks
  for Saliency Maps. NeurIPS 2018. arXiv:1810.03292.
  Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli. Image Quality Assessment:
  From Error Visibility to Structural Similarity. IEEE TIP 13(4), 2004.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.evaluation.agreement import reduce_channels, spearman

__all__ = [
    "cascading_randomization",
    "independent_randomization",
    "layer_order",
    "passes_sanity_check",
    "randomize_layers",
    "ssim",
]

Explain = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
MakeExplain = Callable[[Any], Explain]

METRICS = ("spearman", "spearman_abs", "ssim")


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
    identical maps give exactly 1. Reduce (N, H, W, C) maps first with
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
    s = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 1.0)
    return s.mean((1, 2))


# ------------------------------------------------------------------ randomisation


def _params(variables: Mapping[str, Any]) -> Mapping[str, Any]:
    if "params" not in variables:
        raise ValueError(f"variables have no 'params' collection (found {list(variables)})")
    return variables["params"]


def layer_order(variables: Mapping[str, Any]) -> tuple[str, ...]:
    """Top-level parameter modules from the output back to the input.

    ``variables`` is a Flax variables dict (``{"params": ...}``) or its ``params``.
    The order is that of the dict, i.e. module creation (call) order for Flax
    modules, reversed: ``('head', 'fc1', 'conv2', 'conv1')`` for a SimpleCNN.
    """
    params = variables["params"] if "params" in variables else variables
    return tuple(reversed(list(params)))


def _layer_key(key: jax.Array, name: str) -> jax.Array:
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def _redraw(leaf: jax.Array, key: jax.Array) -> jax.Array:
    x = jnp.asarray(leaf)
    xf = x.astype(jnp.float32)
    noise = jax.random.normal(key, x.shape, jnp.float32)
    return (xf.mean() + xf.std() * noise).astype(x.dtype)


def randomize_layers(variables: Mapping[str, Any], layers: Sequence[str], key: jax.Array):
    """``variables`` with every parameter of the named top-level modules re-drawn.

    Each leaf becomes ``mean + std * N(0, 1)`` with its own mean and std (same shape
    and dtype); layer ``name``'s draws depend only on ``key`` and ``name``. Other
    layers, ``batch_stats`` and other collections are returned unchanged (the same
    arrays). The input is not modified.
    """
    if isinstance(layers, str):
        raise TypeError("layers must be a sequence of layer names, not a single string")
    params = _params(variables)
    unknown = [name for name in layers if name not in params]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; the model has {list(params)}")
    new_params = dict(params)
    for name in layers:
        leaves, treedef = jax.tree_util.tree_flatten(params[name])
        lkey = _layer_key(key, name)
        new = [_redraw(leaf, jax.random.fold_in(lkey, j)) for j, leaf in enumerate(leaves)]
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
    m = jnp.abs(m)
    lo = m.min((1, 2), keepdims=True)
    span = m.max((1, 2), keepdims=True) - lo
    return jnp.where(span > 0, (m - lo) / jnp.where(span > 0, span, 1.0), 0.0)


def _similarity(orig: jax.Array, rand: jax.Array, window: int) -> dict[str, jax.Array]:
    return {
        "spearman": spearman(orig, rand),
        "spearman_abs": spearman(jnp.abs(orig), jnp.abs(rand)),
        "ssim": ssim(_unit_abs(orig), _unit_abs(rand), window=window, data_range=1.0),
    }


def _run(mode, make_explain, variables, x, target, key, layers, channels, window):
    if target is None:
        raise ValueError(
            "pass the classes to explain explicitly (e.g. labels or the original "
            "model's predictions): with target=None every randomised model would "
            "explain its own predicted class"
        )
    all_layers = layer_order(_params(variables))
    layers = all_layers if layers is None else tuple(layers)
    if not layers:
        raise ValueError("no layers to randomise")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers repeat a name: {layers}")
    param_key, explain_key = jax.random.split(key)
    original = _as_2d(make_explain(variables)(x, target, explain_key), channels)
    per_layer = {m: [] for m in METRICS}
    for i, name in enumerate(layers):
        chosen = layers[: i + 1] if mode == "cascading" else (name,)
        randomized = randomize_layers(variables, chosen, param_key)
        maps = _as_2d(make_explain(randomized)(x, target, explain_key), channels)
        if maps.shape != original.shape:
            raise ValueError(f"maps changed shape: {original.shape} -> {maps.shape}")
        for metric, value in _similarity(original, maps, window).items():
            per_layer[metric].append(value)
    result: dict[str, Any] = {"mode": mode, "layers": layers}
    result.update({m: jnp.stack(v) for m, v in per_layer.items()})
    result["mean"] = {m: jnp.nanmean(result[m], axis=1) for m in METRICS}
    result["fully_randomized"] = mode == "cascading" and set(layers) == set(all_layers)
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
    skipped); ``fully_randomized``: whether the last step randomised every layer.
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
    skipped); ``fully_randomized``: whether the last step randomised every layer.
    """
    return _run("independent", make_explain, variables, x, target, key, layers, channels, window)


def passes_sanity_check(result: Mapping[str, Any], threshold: float = 0.5) -> bool:
    """Whether a method's maps stop resembling the original after the full cascade.

    Fails when the mean over examples of ``|spearman|`` or of ``|spearman_abs|``
    at the last cascading step is above ``threshold`` (see the module docstring for
    the choice of 0.5). Examples with an undefined correlation (a constant map) are
    skipped; if every example is undefined the maps carry no ranking of the
    original and the check passes. Needs a cascading result; it is meaningful when
    ``result["fully_randomized"]`` is true.
    """
    if result.get("mode") != "cascading":
        raise ValueError(
            "passes_sanity_check needs a cascading_randomization result: only the "
            "full cascade leaves a fully random model"
        )
    scores = []
    for metric in ("spearman", "spearman_abs"):
        last = np.abs(np.asarray(result[metric][-1], np.float64))
        if np.isfinite(last).any():
            scores.append(float(np.nanmean(last)))
    return not scores or max(scores) <= threshold
