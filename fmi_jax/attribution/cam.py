"""Class activation maps: maps of a named layer's activation, weighted for a class.

Every method here weights the K channels of a layer's activation ``A`` (``(N, h, w, K)``)
and sums them into one map per example,

    L_c = ReLU(sum_k W_kij^c A_kij)          (then resized to the input, bilinear)

and differs in the weights ``W^c`` for the target class c. With ``g = dy_c / dA``:

* Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391): one weight per channel,
  the spatial mean of the gradient, ``W_k = 1/(h w) sum_ij g_kij``.
* Grad-CAM++ (Chattopadhay et al., WACV 2018, arXiv:1710.11063): a pixel-weighted sum
  of the positive gradient, ``W_k = sum_ij a_kij ReLU(g_kij)`` with
  ``a_kij = g^2 / (2 g^2 + sum_ab A_kab g^3)`` (the closed form the paper derives for
  an exponential class score; ``a = 0`` where its denominator is zero). The paper's
  common factor ``exp(y_c)`` is dropped: it scales every channel alike, as
  pytorch-grad-cam also does.
* XGrad-CAM (Fu et al., BMVC 2020, arXiv:2008.02312): the activation-weighted mean of
  the gradient, ``W_k = sum_ij g_kij A_kij / sum_ab A_kab`` (0 where the channel sums
  to 0).
* HiResCAM (Draelos & Carin, 2020, arXiv:2011.08891): no averaging, the element-wise
  product, ``W_kij = g_kij``.

  Both keep the gradient-times-activation total before the ReLU,
  ``sum_ij L_c = sum_kij g_kij A_kij`` (XGrad-CAM only over channels whose activation
  does not sum to 0; after a ReLU such a channel is all zero and has no share),
  which is ``y_c`` itself when the rest of the
  network is positively homogeneous of degree 1 in ``A`` (bias-free linear layers,
  ReLU, max-pooling: Euler's theorem), and ``y_c - b_c`` for a flatten and one dense
  layer with bias. XGrad-CAM's paper calls this conservation; HiResCAM's adds that
  each position then gets exactly its own share, where Grad-CAM's spatial mean of
  the gradient moves evidence to positions that had none.
* LayerCAM (Jiang et al., IEEE TIP 2021, doi:10.1109/TIP.2021.3089943): the positive
  gradient element-wise, ``W_kij = ReLU(g_kij)``; meant for shallow layers too, where
  a channel's gradient changes sign across the image.
* Grad-CAM element-wise (pytorch-grad-cam's ``GradCAMElementWise``; no paper):
  HiResCAM's products with the ReLU taken per element before the channel sum,
  ``L_c = sum_k ReLU(g_kij A_kij)``, so a channel's negative evidence at a position
  cannot cancel another channel's positive evidence there.
* ShapleyCAM (Cai, 2025, arXiv:2501.06261): Grad-CAM's spatial mean taken of
  ``g - H A / 2`` instead of ``g``, ``W_k = 1/(h w) sum_ij (g - H A / 2)_kij``, with
  ``H`` the Hessian of the class utility ``u`` in ``A`` (a Hessian-vector product,
  forward-over-reverse). Per element, ``A_i (g - H A / 2)_i`` is unit ``i``'s exact
  Shapley value in the game whose players are the units and an absent unit is 0,
  whenever ``u`` is quadratic in ``A``: then ``grad u(0) = g - H A`` and the value is
  ``A_i grad u(0)_i + A_i (H A)_i / 2``, and the values sum to ``u(A) - u(0)``. The
  utility is the paper's residual softmax target (ReST), ``u = y_c + log p_c``, by
  default, or the logit ``y_c``; a network that is piecewise linear after the layer
  (ReLU, max-pooling, dense) has no curvature in its logits, so with the logit the map
  is Grad-CAM's (the test suite checks both).
* Eigen-Grad-CAM (pytorch-grad-cam's ``EigenGradCAM``; no paper): Eigen-CAM's
  projection (below) of ``g * A`` instead of ``A``, so that the map depends on the class.
* Finer-CAM (Zhang, Gu, Chowdhury, Mai, Carlyn, Berger-Wolf, Su & Chao, CVPR 2025,
  arXiv:2501.11309): a gradient CAM (``base``, Grad-CAM by default) of a contrast
  instead of the target logit: how the example's class ``n`` differs from the classes
  the model finds most like it. The references ``r_1..r_R`` are the classes whose
  logits lie nearest ``y_n`` on the example itself (``reference_ranks``: the 1st, 2nd
  and 3rd nearest by default; :func:`finer_references`), and the score is

      u = sum_i w_i (y_n - alpha y_(r_i)),   w = softmax(y_(r_1), ..., y_(r_R)),

  each reference weighted by its probability ``p_(r_i) / sum_j p_(r_j)`` (the softmax
  over all classes has a normaliser that cancels in the ratio, so the weights come out
  of a softmax over the references alone, which cannot underflow to 0 / 0). The
  weights are differentiated too, as in the authors' code (pytorch-grad-cam's
  ``FinerCAM``), so ``du/dy_(r_k) = -alpha w_k (1 + y_(r_k) - sum_i w_i y_(r_i))``.
  With one reference ``u = y_n - alpha y_r``, and a gradient CAM, linear in the score
  before its ReLU, gives the target's map minus ``alpha`` times the reference's; with
  ``alpha = 0``, ``u = y_n`` and the map is the base method's. The package adds
  ``1e-9`` to the weights' sum and picks the main class as the nearest to the target
  logit, which is the target itself unless another class ties with it exactly.
* Score-CAM (Wang et al., CVPR-W 2020, arXiv:1910.01279): no gradients. Every
  channel, resized to the input and min-max normalised to [0, 1] (``H_k``), masks the
  input, and its weight is the softmax probability of the target class on the masked
  input, ``W_k = softmax(f(x * H_k))_c``. A constant channel carries no spatial
  information and gets the all-zero mask (min-max normalisation would divide by
  zero), as in pytorch-grad-cam. All ``N * K`` masked forward passes run in batches
  of ``batch_size`` on the device.
* Ablation-CAM (Desai & Ramaswamy, WACV 2020): no gradients. A channel's weight is
  the relative drop of the target logit when that channel is set to zero for the
  rest of the forward pass, ``W_k = (y_c - y_c^(k)) / |y_c|`` (0 for an example whose
  ``y_c`` is 0). The paper divides by ``y_c``; for a negative logit that turns every
  weight's sign (a channel whose removal lowers the logit, evidence for the class,
  would get a negative weight and vanish under the ReLU), so here the drop is divided
  by its magnitude, which is the paper's weight whenever ``y_c > 0``. A logit near 0
  scales that example's map up; ``normalize=False`` keeps the drop itself.
  ``N * K`` passes through the layers after the target layer, in batches of
  ``batch_size``: the layer's output is computed once and replaced
  (:meth:`~fmi_jax.attribution.FlaxModel.logits_with`), so under ``jax.jit``, or
  inside the ``lax.scan`` that ``batch_size`` chunks run in, XLA drops the layers
  before it from those passes. pytorch-grad-cam divides by ``y_c`` as the paper does,
  and ablates by zero only when the minimum of that image's activation at the layer
  is 0, otherwise by a value 1e7 below it; here the channel is always zeroed, as in
  the paper (the same after a ReLU whenever some unit of the layer is off).
* Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299): no gradients and no
  class. The ``(h w, K)`` activation matrix of each example is projected on its first
  right singular vector ``v_1``, ``L = ReLU(A v_1)``. A singular vector's sign is
  arbitrary; here it is fixed so that ``sum_k v_1k >= 0``, which is the same as the map
  ``A v_1`` having a non-negative inner product with the channel sum ``A 1``
  (``(A v_1) . (A 1) = sigma_1^2 (v_1 . 1)``). For a post-ReLU layer, whose activations
  are non-negative, ``v_1`` can then be taken non-negative and the map is the
  activation's dominant pattern, not its negative. The direction is ill-defined when
  the two largest singular values tie. ``center=True`` subtracts
  each channel's spatial mean first, as pytorch-grad-cam does (its sign is left to the
  SVD routine there, so its maps can come out inverted). The target is accepted for
  the common signature and ignored: every class gets the same map.
* FEM, the feature explanation method (Fuad, Martin, Giot, Bourqui, Benois-Pineau &
  Zemmari, IPTA 2020, hal-02963298): no gradients and no class. A channel's weight is
  the share of its positions that stand out by the k-sigma rule,
  ``W_k = 1/(h w) #{ij : A_kij > mu_k + k sigma_k}``, with ``mu_k`` and ``sigma_k`` the
  channel's spatial mean and (population) standard deviation, ``k = 2`` by default: a
  channel that fires everywhere or nowhere counts for nothing, one with a few strong
  peaks for more. As in pytorch-grad-cam's ``FEM``; the target is accepted for the
  common signature and ignored.
* KPCA-CAM (Karmani et al., 2024, arXiv:2410.00267): Eigen-CAM with kernel PCA.
  The ``h w`` positions' channel vectors, centred, are compared by a kernel
  ``k(a, b)`` (``'sigmoid'``, ``tanh(gamma a.b + 1)``, the default as in
  pytorch-grad-cam; ``'rbf'``; ``'linear'``), the ``(h w, h w)`` kernel matrix is
  centred in feature space, and the map is its first eigenvector scaled by the root of
  its eigenvalue (scikit-learn's ``KernelPCA.fit_transform``). With the linear kernel
  this is the centred Eigen-CAM exactly. The sign follows Eigen-CAM's rule: the map has
  a non-negative inner product with the centred channel sum (pytorch-grad-cam keeps
  scikit-learn's sign, which makes the entry of largest magnitude positive).

``eigen_smooth=True`` (every gradient CAM, ShapleyCAM and Finer-CAM): the map is the
first principal component of the per-position contributions ``W * A`` (their
``(h w, K)`` matrix, centred over positions) instead of their channel sum,
pytorch-grad-cam's option of the same name (which keeps LAPACK's sign; here Eigen-CAM's
rule fixes it). Eigen-Grad-CAM with ``center=True`` is HiResCAM with it.

Maps of several layers (:func:`across_layers`, a transform of any CAM): each layer's map,
after its ReLU and resized to the input, is min-max scaled to ``[0, 1]`` per example,
and the maps are averaged (pytorch-grad-cam's ``target_layers`` with more than one
layer) or multiplied (RefineCAM: Domeniconi, Stramiglio, Lombardi & Salti, "How to
evaluate and refine your CAM", 2026, arXiv:2605.14641, which multiplies Grad-CAM++'s
maps of several layers, so that a deep layer's coarse map selects the object and a
shallow layer's fine map draws it). The product is in ``[0, 1]`` but rarely reaches 1;
the package min-max scales it, and its average, once more. For the average, the
package scales each layer's map at the layer's own resolution before resizing; here
each is scaled after it, so that every layer's map spans ``[0, 1]`` on the image grid
(measured in docs/captum.md).

The layer is named by its module path, ``'/'``-joined (``'conv2'``, ``'conv2/conv'``,
``'stage1/block0'``); :func:`layer_names` lists the candidates (every submodule whose
call returns an ``(N, h, w, K)`` array with the image's rows and columns on axes 1 and 2;
attention's query, key and value, ``(N, tokens, heads, head_dim)``, are refused). A
vision transformer's tokens ``(N, T, D)`` become such a layer through
:func:`~fmi_jax.attribution.tokens_as_image` (pytorch-grad-cam's ``reshape_transform``,
made two-way, so Ablation-CAM needs no ViT layer of its own). The
CAMs look inside the model, so they take a model handle instead of a plain function:
``flax_model(module, variables, train=False)`` for Linen, ``flax_model(nnx_module)`` for
NNX (:mod:`fmi_jax.attribution.handle`); a ``(module, variables)`` tuple and an
``nnx.Module`` are accepted as shorthands. The handle catches the layer's output ``A``
as the module returns it and replaces it by ``A + delta`` with a zero ``delta``; the
gradient is taken with respect to ``delta``, so ``dy/d delta = dy/dA`` exactly, the
model itself is not edited, and its outputs are unchanged (the test suite checks it).

Every function returns float32 maps of shape ``(N, H, W)`` for inputs
``(N, H, W, C)`` or ``(N, H, W)`` (``(N, h, w)`` with ``upsample=False``). Inputs are
channels-last; a batch that looks channels-first is refused when maps are resized to it
(:func:`~fmi_jax.attribution.core.image_size`). Captum's ``LayerGradCam``
defaults to ``relu_attributions=False``; here ``relu=True``, as in the papers.
pytorch-grad-cam min-max scales every map to [0, 1] after its ReLU; here maps keep
their scale (scaling is the plot's business), so they can be summed and compared.
Grad-CAM++'s weights follow the paper's closed form; pytorch-grad-cam adds ``1e-6``
to the denominator of ``a_kij``, which moves its maps slightly where gradients are
small (measured in docs/captum.md).
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.attribution.core import (
    Array,
    Method,
    Target,
    as_count,
    as_input,
    as_number,
    as_target,
    image_size,
    map_over_samples,
    method_name,
    minmax_scale,
    refuse_baseline,
    resolve_target,
    select_target,
    sum_over_samples,
)
from fmi_jax.attribution.handle import activation_and_gradient, as_flax_model, image_layer_call

#: The registry names of the CAM methods in this module, gradient CAMs first.
CAM_METHODS = (
    "grad_cam",
    "grad_cam_plus_plus",
    "xgrad_cam",
    "hires_cam",
    "layer_cam",
    "grad_cam_elementwise",
    "shapley_cam",
    "eigen_grad_cam",
    "finer_cam",
    "score_cam",
    "ablation_cam",
    "eigen_cam",
    "kpca_cam",
    "fem",
)

__all__ = [
    "CAM_METHODS",
    "FINER_BASES",
    "KPCA_KERNELS",
    "SHAPLEY_SCORES",
    "layer_names",
    *CAM_METHODS,
    "LAYER_COMBINATIONS",
    "across_layers",
    "finer_references",
    "upsample_maps",
]


def layer_names(model: Any, x: Array) -> tuple[str, ...]:
    """The layers a CAM method can be pointed at, in call order, for inputs like ``x``.

    ``model`` is a model handle (:func:`~fmi_jax.attribution.flax_model`), a
    ``(linen_module, variables)`` tuple or an ``nnx.Module``.
    """
    return as_flax_model(model, "layer_names").layer_names(as_input(x), images_only=True)


class _GradientCam(Protocol):
    """The signature of the gradient CAMs (grad_cam, grad_cam_plus_plus, xgrad_cam,
    hires_cam, layer_cam), which differ only in their channel weights."""

    __name__: str

    def __call__(
        self,
        model: Any,
        x: Array,
        target: Target = None,
        *,
        key: Array | None = None,
        baseline: None = None,
        batch_size: int | None = None,
        layer: str,
        relu: bool = True,
        upsample: bool = True,
        eigen_smooth: bool = False,
    ) -> Array: ...


def upsample_maps(maps: Array, size: tuple[int, int]) -> Array:
    """``(N, h, w)`` maps resized to ``(N, H, W)`` by bilinear interpolation with half-pixel
    centres (PyTorch's ``interpolate(..., mode='bilinear', align_corners=False)``). No
    antialiasing, as in PyTorch's default: a map shrunk to a smaller input (a layer
    larger than the image) is interpolated, not averaged over each output pixel."""
    return jax.image.resize(maps, (maps.shape[0], *size), method="bilinear", antialias=False)


def _finish(maps: Array, shape: tuple[int, ...], relu: bool, upsample: bool) -> Array:
    if relu:
        maps = jax.nn.relu(maps)
    if upsample:
        maps = upsample_maps(maps, shape[1:3])
    return maps.astype(jnp.float32)


def _cam_call(
    model: Any, x: Any, layer: str, method: str, batch_size: int | None, upsample: bool
) -> tuple[Any, Array, tuple[int, ...]]:
    """:func:`~fmi_jax.attribution.handle.image_layer_call` (the layer's axes 1 and 2 are
    image rows and columns), and, for maps resized to the input, the input's image plane
    checked (a channels-first batch is refused before anything runs)."""
    handle, x, shape = image_layer_call(model, x, layer, method, batch_size)
    if upsample:
        image_size(x, method)
    return handle, x, shape


#: The per-element contributions of every gradient CAM made by the factory, by name.
_CONTRIBUTIONS: dict[str, Callable[[Array, Array], Array]] = {}


def _contribution_maps(
    handle: Any,
    x: Array,
    layer: str,
    batch_size: int | None,
    contribution: Callable[[Array, Array], Array],
    score: Callable[[Array], Any],
    eigen_smooth: bool = False,
) -> Array:
    """``(N, h, w)``: ``sum_k contribution(A, g)_k`` per example, before the ReLU, with
    ``g`` the gradient at ``layer`` of ``score(example)``, a class per example of the
    chunk or a function of its logits (:func:`activation_and_gradient`); with
    ``eigen_smooth``, the contributions' first principal component instead of their sum
    (centred over positions, signed as Eigen-CAM)."""

    if not isinstance(eigen_smooth, (bool, np.bool_)):
        raise ValueError(f"eigen_smooth must be True or False; got {eigen_smooth!r}")

    def chunk_maps(example: Array, _: Array) -> Array:
        activation, gradient = activation_and_gradient(handle, x[example], score(example), layer)
        contributions = contribution(activation, gradient)
        if eigen_smooth:
            return _principal_projection(contributions, center=True)
        return jnp.sum(contributions, axis=-1)

    return sum_over_samples(chunk_maps, x.shape[0], batch_size=batch_size)


def _gradient_cam_method(
    name: str, contribution: Callable[[Array, Array], Array], title: str
) -> _GradientCam:
    """The public gradient CAM ``name``: ``ReLU(sum_k C_k)``, resized to the input, with
    the per-element contributions ``C = contribution(A, g)`` shaped like ``A``
    (``W * A`` for the methods that weight the activation, :func:`_weighted`)."""

    def method(
        model: Any,
        x: Array,
        target: Target = None,
        *,
        key: Array | None = None,
        baseline: None = None,
        batch_size: int | None = None,
        layer: str,
        relu: bool = True,
        upsample: bool = True,
        eigen_smooth: bool = False,
    ) -> Array:
        refuse_baseline(baseline, name)
        handle, x, _ = _cam_call(model, x, layer, name, batch_size, upsample)
        target = resolve_target(handle, x, target, batch_size=batch_size)
        maps = _contribution_maps(
            handle, x, layer, batch_size, contribution, lambda e: target[e], eigen_smooth
        )
        return _finish(maps, x.shape, relu, upsample)

    _CONTRIBUTIONS[name] = contribution
    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"""{title} of ``layer`` for the ``target`` class (module docstring).

    Args:
      model: a model handle, ``flax_model(module, variables, train=False)`` or
        ``flax_model(nnx_module)``; a ``(module, variables)`` tuple also works.
      x: images ``(N, H, W, C)``.
      target: class per example, one class for all, or ``None`` (predicted class).
      key: unused (deterministic); accepted so every method has one signature.
      baseline: must be None (no reference input).
      batch_size: examples per backward pass; ``None`` processes all at once.
      layer: module path of the layer (see :func:`layer_names`).
      relu: keep only the positive evidence, as the papers do.
      upsample: resize the ``(h, w)`` map to the input's ``(H, W)``, bilinearly.
      eigen_smooth: the first principal component of the per-position contributions
        (centred over positions, Eigen-CAM's sign) instead of their channel sum, as
        pytorch-grad-cam's ``eigen_smooth=True``.

    Returns:
      ``(N, H, W)`` float32 maps (``(N, h, w)`` when ``upsample=False``).
    """
    return method


def _weighted(weights: Callable[[Array, Array], Array]) -> Callable[[Array, Array], Array]:
    """The contributions ``W * A`` of a method whose weights ``W = weights(A, g)``
    broadcast to ``A`` (one per channel, ``(B, 1, 1, K)``, or one per element)."""
    return lambda activation, g: weights(activation, g) * activation


def _positive_product(activation: Array, g: Array) -> Array:
    """Grad-CAM element-wise: ``C_kij = ReLU(g_kij A_kij)``."""
    return jax.nn.relu(g * activation)


def _mean_gradient(activation: Array, g: Array) -> Array:
    """Grad-CAM: ``W_k = mean_ij g_kij``."""
    return g.mean(axis=(1, 2), keepdims=True)


def _plus_plus_weights(activation: Array, g: Array) -> Array:
    """Grad-CAM++: ``W_k = sum_ij a_kij ReLU(g_kij)``, ``a = g^2 / (2 g^2 + sum A_k g^3)``."""
    g2 = g * g
    denominator = 2.0 * g2 + activation.sum(axis=(1, 2), keepdims=True) * g2 * g
    nonzero = denominator != 0
    a = jnp.where(nonzero, g2 / jnp.where(nonzero, denominator, 1.0), 0.0)
    return jnp.sum(a * jax.nn.relu(g), axis=(1, 2), keepdims=True)


def _activation_weighted_gradient(activation: Array, g: Array) -> Array:
    """XGrad-CAM: ``W_k = sum_ij g_kij A_kij / sum_ij A_kij`` (0 where that sum is 0)."""
    total = activation.sum(axis=(1, 2), keepdims=True)
    nonzero = total != 0
    weighted = jnp.sum(g * activation, axis=(1, 2), keepdims=True)
    return jnp.where(nonzero, weighted / jnp.where(nonzero, total, 1.0), 0.0)


def _elementwise_gradient(activation: Array, g: Array) -> Array:
    """HiResCAM: ``W_kij = g_kij``."""
    return g


def _positive_gradient(activation: Array, g: Array) -> Array:
    """LayerCAM: ``W_kij = ReLU(g_kij)``."""
    return jax.nn.relu(g)


grad_cam = _gradient_cam_method("grad_cam", _weighted(_mean_gradient), "Grad-CAM map")
grad_cam_plus_plus = _gradient_cam_method(
    "grad_cam_plus_plus", _weighted(_plus_plus_weights), "Grad-CAM++ map"
)
xgrad_cam = _gradient_cam_method(
    "xgrad_cam", _weighted(_activation_weighted_gradient), "XGrad-CAM map"
)
hires_cam = _gradient_cam_method("hires_cam", _weighted(_elementwise_gradient), "HiResCAM map")
layer_cam = _gradient_cam_method("layer_cam", _weighted(_positive_gradient), "LayerCAM map")
grad_cam_elementwise = _gradient_cam_method(
    "grad_cam_elementwise", _positive_product, "Grad-CAM element-wise map"
)


#: The utilities :func:`shapley_cam` can explain: the target logit, or ReST.
SHAPLEY_SCORES = ("rest", "logit")


def shapley_cam(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layer: str,
    score: str = "rest",
    relu: bool = True,
    upsample: bool = True,
    eigen_smooth: bool = False,
) -> Array:
    """ShapleyCAM map of ``layer``: channel weights from the gradient and the
    Hessian-vector product of the class score (module docstring).

    Args:
      model, x, target, key, baseline, layer, relu, upsample, eigen_smooth: as in
        :func:`grad_cam`.
      batch_size: examples per forward-over-reverse pass; ``None`` processes all at once.
      score: the utility differentiated, ``'rest'`` (the paper's residual softmax
        target, ``y_c + log softmax(y)_c``) or ``'logit'`` (``y_c``, where a piecewise
        linear network has no curvature and the map is Grad-CAM's).

    Returns:
      ``(N, H, W)`` float32 maps (``(N, h, w)`` when ``upsample=False``).
    """
    refuse_baseline(baseline, "shapley_cam")
    if score not in SHAPLEY_SCORES:
        raise ValueError(f"shapley_cam: score must be one of {SHAPLEY_SCORES}; got {score!r}")
    if not isinstance(eigen_smooth, (bool, np.bool_)):
        raise ValueError(f"eigen_smooth must be True or False; got {eigen_smooth!r}")
    handle, x, _ = _cam_call(model, x, layer, "shapley_cam", batch_size, upsample)
    if score == "rest":  # the residual softmax target takes the softmax of the outputs
        _, target = _outputs_and_target(handle, x, target, batch_size, "shapley_cam")
    else:
        target = resolve_target(handle, x, target, batch_size=batch_size)

    def chunk_maps(example: Array, _: Array) -> Array:
        images, classes = x[example], target[example]

        def utility(delta: Array) -> Array:
            logits = handle.capture(images, layer, delta)[0].astype(jnp.float32)
            value = select_target(logits, classes)
            if score == "rest":
                value = value + select_target(jax.nn.log_softmax(logits), classes)
            return jnp.sum(value)

        activation = handle.capture(images, layer)[1].astype(jnp.float32)
        # Forward over reverse: g = du/dA and H A = d/dt du/dA(A + t A) at t = 0, in one
        # pass (the delta is added to A). The batch sum's Hessian is block diagonal
        # (examples do not interact in inference).
        g, hvp = jax.jvp(jax.grad(utility), (jnp.zeros_like(activation),), (activation,))
        weights = jnp.mean(g - 0.5 * hvp, axis=(1, 2), keepdims=True)
        if eigen_smooth:
            return _principal_projection(weights * activation, center=True)
        return jnp.sum(weights * activation, axis=-1)

    maps = sum_over_samples(chunk_maps, x.shape[0], batch_size=batch_size)
    return _finish(maps, x.shape, relu, upsample)


def score_cam(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layer: str,
    upsample: bool = True,
) -> Array:
    """Score-CAM map of ``layer`` (module docstring).

    Args:
      model, x, target, key, baseline, layer, upsample: as in :func:`grad_cam`.
      batch_size: masked images per forward pass (of the ``N * K`` in all), and
        images per pass of the unmasked model; bounds the passes' memory (the layer's
        ``(N, h, w, K)`` activation is held whole), never changes the result.

    Returns:
      ``(N, H, W)`` float32 maps (``(N, h, w)`` when ``upsample=False``), ReLU applied.
    """
    refuse_baseline(baseline, "score_cam")
    handle, x, _ = _cam_call(model, x, layer, "score_cam", batch_size, True)
    if jax.eval_shape(handle, x).shape[-1] == 1:
        raise ValueError(
            "score_cam weighs each channel by the softmax probability of the target, which "
            "is 1 for a model with one output whatever its head: use grad_cam or layer_cam"
        )
    _, target = _outputs_and_target(handle, x, target, batch_size, "score_cam")
    activation = _activation(handle, x, layer, batch_size).astype(jnp.float32)
    channels = activation.shape[-1]

    def weighted_channel(example: Array, channel: Array) -> Array:
        a = activation[example, :, :, channel]  # (B, h, w)
        up = upsample_maps(a, x.shape[1:3])
        mask = minmax_scale(up, (1, 2))
        mask = mask.reshape(mask.shape + (1,) * (x.ndim - 3))  # over every channel
        probs = jax.nn.softmax(handle(x[example] * mask), axis=-1)
        score = select_target(probs, target[example])
        return score[:, None, None] * a

    maps = sum_over_samples(weighted_channel, x.shape[0], channels, batch_size=batch_size)
    return _finish(maps, x.shape, True, upsample)


def _outputs_and_target(
    handle: Any, x: Array, target: Target, batch_size: int | None, method: str
) -> tuple[Array, Array]:
    """The model's outputs on ``x`` (``batch_size`` examples per pass) and the target,
    the predicted class when None, for a method that applies the softmax itself: a
    model whose outputs are already probabilities is refused (when they are concrete),
    since the softmax of a probability is not the probability."""
    # Refuses outputs that are not (N, classes) logits, in one line, before any pass.
    given = resolve_target(handle, x, 0 if target is None else target)
    out = jax.eval_shape(handle, x)
    outputs = sum_over_samples(
        lambda example, _: handle(x[example]).astype(jnp.float32),
        x.shape[0],
        batch_size=batch_size,
    )
    if not isinstance(outputs, jax.core.Tracer) and out.shape[-1] > 1:
        rows = np.asarray(outputs)
        # A softmax computed in 16 bits sums to 1 only to about 1e-2.
        wide = jnp.finfo(out.dtype).bits >= 32
        if np.all(rows >= 0) and np.allclose(rows.sum(-1), 1.0, atol=1e-4 if wide else 2e-2):
            raise ValueError(
                f"{method}: the model's outputs look like probabilities (every row is "
                f"non-negative and sums to 1), but {method} applies the softmax itself: "
                "give it a model function that returns the logits (the layer before "
                "the softmax, e.g. flax_model(module, variables, method=...))"
            )
    if target is None:
        return outputs, jnp.argmax(outputs, axis=1).astype(jnp.int32)
    return outputs, given


def _activation(handle: Any, x: Array, layer: str, batch_size: int | None) -> Array:
    """`layer`'s output for the batch, `batch_size` examples per forward pass."""
    return map_over_samples(
        lambda example, _: handle.capture(x[example], layer)[1],
        x.shape[0],
        1,
        batch_size=batch_size,
    )[:, 0]


def ablation_cam(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layer: str,
    normalize: bool = True,
    relu: bool = True,
    upsample: bool = True,
) -> Array:
    """Ablation-CAM map of ``layer`` (module docstring).

    Args:
      model, x, target, key, baseline, layer, relu, upsample: as in :func:`grad_cam`.
      batch_size: ablated forward passes per chunk (of the ``N * K`` in all), and
        images per pass of the unablated model; bounds the passes' memory (the layer's
        ``(N, h, w, K)`` activation is held whole), never changes the result.
      normalize: divide each channel's logit drop by ``|y_c|`` (the paper divides by
        ``y_c``: the same for a positive logit); ``False`` keeps the drop
        ``y_c - y_c^(k)`` itself.

    Returns:
      ``(N, H, W)`` float32 maps (``(N, h, w)`` when ``upsample=False``).
    """
    refuse_baseline(baseline, "ablation_cam")
    handle, x, _ = _cam_call(model, x, layer, "ablation_cam", batch_size, upsample)
    target = resolve_target(handle, x, target, batch_size=batch_size)
    activation = _activation(handle, x, layer, batch_size)
    # The reference logit through the same path as the ablated ones (the layers after
    # `layer` from its output, in chunks of the same size), so that the drops are
    # differences of like computations.
    score = map_over_samples(
        lambda example, _: select_target(
            handle.logits_with(x[example], layer, activation[example]), target[example]
        ),
        x.shape[0],
        1,
        batch_size=batch_size,
    )[:, 0].astype(jnp.float32)
    channels = activation.shape[-1]

    def ablated_channel(example: Array, channel: Array) -> Array:
        a = activation[example]  # (B, h, w, K)
        keep = 1 - jax.nn.one_hot(channel, channels, dtype=a.dtype)[:, None, None, :]
        # Only the layers after `layer` run: nothing reads the replaced output.
        ablated = handle.logits_with(x[example], layer, a * keep)
        drop = score[example] - select_target(ablated, target[example]).astype(jnp.float32)
        return drop[:, None, None] * activation[example, :, :, channel].astype(jnp.float32)

    maps = sum_over_samples(ablated_channel, x.shape[0], channels, batch_size=batch_size)
    if normalize:
        scale = jnp.abs(score)[:, None, None]
        maps = jnp.where(scale > 0, maps / jnp.where(scale > 0, scale, 1.0), 0.0)
    return _finish(maps, x.shape, relu, upsample)


def eigen_cam(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layer: str,
    center: bool = False,
    relu: bool = True,
    upsample: bool = True,
) -> Array:
    """Eigen-CAM map of ``layer``: its activation projected on the first principal
    direction (module docstring). Class-agnostic: ``target`` is ignored.

    Args:
      model, x, key, baseline, layer, relu, upsample: as in :func:`grad_cam`.
      target: checked like every method's, then ignored (every class gets this map).
      batch_size: examples per forward pass and batched SVD.
      center: subtract each channel's spatial mean before the SVD (pytorch-grad-cam's
        variant); the paper projects the activation as it is.

    Returns:
      ``(N, H, W)`` float32 maps (``(N, h, w)`` when ``upsample=False``).
    """
    del key
    refuse_baseline(baseline, "eigen_cam")
    handle, x, (n, h, w, k) = _cam_call(model, x, layer, "eigen_cam", batch_size, upsample)
    if target is not None:
        resolve_target(handle, x, target)  # a bad target is refused, as everywhere

    def projection(example: Array, _: Array) -> Array:
        _, activation = handle.capture(x[example], layer)
        return _principal_projection(activation.astype(jnp.float32), center)

    maps = sum_over_samples(projection, n, batch_size=batch_size)
    return _finish(maps, x.shape, relu, upsample)


def _principal_projection(activation: Array, center: bool) -> Array:
    """``(B, h, w)``: each example's ``(h w, K)`` matrix (channels centred over positions
    when ``center``) projected on its first right singular vector, signed so that the
    vector sums to at least 0."""
    b, h, w, k = activation.shape
    matrix = activation.reshape(b, h * w, k)
    if center:
        matrix = matrix - matrix.mean(axis=1, keepdims=True)
    _, _, vt = jnp.linalg.svd(matrix, full_matrices=False)
    first = vt[:, 0, :]  # (B, K), unit length
    first = jnp.where(first.sum(axis=-1, keepdims=True) < 0, -first, first)
    return jnp.einsum("bpk,bk->bp", matrix, first).reshape(b, h, w)


def eigen_grad_cam(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layer: str,
    center: bool = False,
    relu: bool = True,
    upsample: bool = True,
) -> Array:
    """Eigen-Grad-CAM map of ``layer``: Eigen-CAM's projection of the gradient-weighted
    activation ``g * A`` (module docstring), so the map depends on the class.

    Args:
      model, x, target, key, baseline, layer, relu, upsample: as in :func:`grad_cam`.
      batch_size: examples per backward pass and batched SVD.
      center: subtract each channel's spatial mean first (pytorch-grad-cam always does).

    Returns:
      ``(N, H, W)`` float32 maps (``(N, h, w)`` when ``upsample=False``).
    """
    refuse_baseline(baseline, "eigen_grad_cam")
    handle, x, _ = _cam_call(model, x, layer, "eigen_grad_cam", batch_size, upsample)
    target = resolve_target(handle, x, target, batch_size=batch_size)

    def projection(example: Array, _: Array) -> Array:
        activation, gradient = activation_and_gradient(handle, x[example], target[example], layer)
        return _principal_projection(gradient * activation, center)

    maps = sum_over_samples(projection, x.shape[0], batch_size=batch_size)
    return _finish(maps, x.shape, relu, upsample)


#: The gradient CAMs :func:`finer_cam` can take as its ``base``: every one the factory
#: made (``grad_cam`` ... ``grad_cam_elementwise``), whose weights come from one gradient.
FINER_BASES = tuple(_CONTRIBUTIONS)


def finer_references(
    logits: Array, target: Array, reference_ranks: Sequence[int] = (1, 2, 3)
) -> Array:
    """The reference classes of :func:`finer_cam`, ``(N, R)`` int32: for each example,
    the classes whose logits lie nearest its target's (the target itself is rank 0, then
    by ``|y_c - y_target|``, ties to the lower class), at ``reference_ranks``. Ranks
    past the last class are dropped (a 3-class model compares with 2 classes at most,
    as pytorch-grad-cam does); ``R`` may then be 0.

    Args:
      logits: ``(N, classes)``.
      target: the class per example, ``(N,)``.
      reference_ranks: positive distinct integers, nearest first.
    """
    logits = jnp.asarray(logits, jnp.float32)
    if logits.ndim != 2:
        raise ValueError(f"finer_references: logits must be (N, classes); got {logits.shape}")
    ranks = _as_ranks(reference_ranks, logits.shape[1])
    if target is None:
        raise ValueError(
            "finer_references: give the target class per example (for the predicted "
            "class, jnp.argmax(logits, axis=1))"
        )
    target = as_target(target, logits.shape[0], logits.shape[1])
    own = select_target(logits, target)
    distance = jnp.abs(logits - own[:, None])
    is_target = jnp.arange(logits.shape[1]) == target[:, None]
    order = jnp.argsort(jnp.where(is_target, -1.0, distance), axis=1, stable=True)
    return order[:, list(ranks)].astype(jnp.int32)


def _as_ranks(reference_ranks: Any, classes: int) -> tuple[int, ...]:
    """Positive distinct Python ints, those below ``classes`` kept in order."""
    try:
        ranks = tuple(reference_ranks)
    except TypeError:
        raise ValueError(
            f"reference_ranks must be a sequence of positive integers; got {reference_ranks!r}"
        ) from None
    for rank in ranks:
        as_count(rank, "each of reference_ranks")
    if not ranks or len(set(ranks)) != len(ranks):
        raise ValueError(
            f"reference_ranks must be one or more distinct positive integers; got {ranks!r}"
        )
    return tuple(int(rank) for rank in ranks if rank < classes)


def _finer_score(logits: Array, main: Array, references: Array, alpha: float) -> Array:
    """Finer-CAM's contrast ``sum_i w_i (y_n - alpha y_(r_i))``, ``w`` the softmax over
    the references' logits, per example (module docstring); ``y_n`` without references."""
    own = select_target(logits, main)
    if references.shape[1] == 0:
        return own
    others = jnp.take_along_axis(logits, references, axis=1)
    weights = jax.nn.softmax(others, axis=1)
    return jnp.sum(weights * (own[:, None] - alpha * others), axis=1)


def finer_cam(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layer: str,
    base: str = "grad_cam",
    alpha: float = 1.0,
    reference_ranks: Sequence[int] = (1, 2, 3),
    relu: bool = True,
    upsample: bool = True,
    eigen_smooth: bool = False,
) -> Array:
    """Finer-CAM map of ``layer``: the ``base`` gradient CAM of the target's contrast with
    the classes the model finds most like it (module docstring).

    Args:
      model, x, target, key, baseline, layer, relu, upsample, eigen_smooth: as in
        :func:`grad_cam`; the references are chosen around ``target`` (the predicted
        class when ``None``).
      batch_size: examples per forward and backward pass; ``None`` processes all at once.
      base: the gradient CAM whose weights are used, one of :data:`FINER_BASES`.
      alpha: the comparison strength; 0 gives the base method's map, larger values
        remove more of what the target shares with its references.
      reference_ranks: which nearest classes to compare with (:func:`finer_references`).

    Returns:
      ``(N, H, W)`` float32 maps (``(N, h, w)`` when ``upsample=False``).
    """
    refuse_baseline(baseline, "finer_cam")
    if base not in FINER_BASES:
        raise ValueError(f"finer_cam: base must be one of {FINER_BASES}; got {base!r}")
    as_number(alpha, "finer_cam: alpha")
    handle, x, _ = _cam_call(model, x, layer, "finer_cam", batch_size, upsample)
    logits, target = _outputs_and_target(handle, x, target, batch_size, "finer_cam")
    references = finer_references(logits, target, reference_ranks)
    alpha = float(alpha)

    def score(example: Array) -> Callable[[Array], Array]:
        return lambda chunk: _finer_score(chunk, target[example], references[example], alpha)

    maps = _contribution_maps(
        handle, x, layer, batch_size, _CONTRIBUTIONS[base], score, eigen_smooth
    )
    return _finish(maps, x.shape, relu, upsample)


#: The kernels of :func:`kpca_cam`.
KPCA_KERNELS = ("sigmoid", "rbf", "linear")


def kpca_cam(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layer: str,
    kernel: str = "sigmoid",
    gamma: float | None = None,
    relu: bool = True,
    upsample: bool = True,
) -> Array:
    """KPCA-CAM map of ``layer``: the first kernel principal component of its positions
    (module docstring). Class-agnostic: ``target`` is ignored.

    Args:
      model, x, key, baseline, layer, relu, upsample: as in :func:`grad_cam`.
      target: checked like every method's, then ignored (every class gets this map).
      batch_size: examples per forward pass and batched eigendecomposition (each
        builds an ``(h w, h w)`` kernel matrix).
      kernel: ``'sigmoid'`` (``tanh(gamma a.b + 1)``), ``'rbf'``
        (``exp(-gamma |a - b|^2)``) or ``'linear'`` (``a.b``: Eigen-CAM with
        ``center=True``), between the centred channel vectors of two positions.
      gamma: the kernel's scale; ``None`` is ``1 / K`` (scikit-learn's default).

    Returns:
      ``(N, H, W)`` float32 maps (``(N, h, w)`` when ``upsample=False``).
    """
    del key
    refuse_baseline(baseline, "kpca_cam")
    if kernel not in KPCA_KERNELS:
        raise ValueError(f"kpca_cam: kernel must be one of {KPCA_KERNELS}; got {kernel!r}")
    handle, x, (n, h, w, k) = _cam_call(model, x, layer, "kpca_cam", batch_size, upsample)
    if gamma is None:
        gamma = 1.0 / k
    elif isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0 < gamma < np.inf:
        raise ValueError(f"kpca_cam: gamma must be a positive number or None; got {gamma!r}")
    if target is not None:
        resolve_target(handle, x, target)  # a bad target is refused, as everywhere

    def projection(example: Array, _: Array) -> Array:
        _, activation = handle.capture(x[example], layer)
        matrix = activation.astype(jnp.float32).reshape(-1, h * w, k)
        matrix = matrix - matrix.mean(axis=1, keepdims=True)
        dots = jnp.einsum("bpk,bqk->bpq", matrix, matrix)
        # Centring removes any constant added to every entry, so the nonlinear kernels
        # are computed minus their value at a.b = 0 (or |a - b| = 0): small activations
        # put every entry near that constant, and subtracting it after rounding would
        # lose the digits the eigenvector is made of. tanh(1 + z) - tanh(1) is
        # tanh(z) (1 - tanh(1) tanh(1 + z)) (the addition formula for tanh), which keeps
        # them near z = 0 and never overflows; exp(-z) - 1 is expm1(-z).
        if kernel == "sigmoid":
            z = gamma * dots
            gram = jnp.tanh(z) * (1.0 - np.tanh(1.0) * jnp.tanh(z + 1.0))
        elif kernel == "rbf":
            norms = jnp.diagonal(dots, axis1=1, axis2=2)
            distances = norms[:, :, None] + norms[:, None, :] - 2.0 * dots
            gram = jnp.expm1(-gamma * jnp.maximum(distances, 0.0))
        else:
            gram = dots
        # Centre in feature space: K - 1K - K1 + 1K1 with 1 the averaging matrix.
        gram = gram - gram.mean(axis=1, keepdims=True)
        gram = gram - gram.mean(axis=2, keepdims=True)
        values, vectors = jnp.linalg.eigh(gram)
        first = vectors[:, :, -1] * jnp.sqrt(jnp.maximum(values[:, -1:], 0.0))
        # The sign that correlates with the centred channel sum (Eigen-CAM's rule).
        total = jnp.sum(first * matrix.sum(axis=-1), axis=-1, keepdims=True)
        first = jnp.where(total < 0, -first, first)
        return first.reshape(-1, h, w)

    maps = sum_over_samples(projection, n, batch_size=batch_size)
    return _finish(maps, x.shape, relu, upsample)


def fem(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layer: str,
    k: float = 2.0,
    relu: bool = True,
    upsample: bool = True,
) -> Array:
    """FEM map of ``layer``: its channels weighted by the share of their positions above
    the k-sigma threshold (module docstring). Class-agnostic: ``target`` is ignored.

    Args:
      model, x, key, baseline, layer, relu, upsample: as in :func:`grad_cam`.
      target: checked like every method's, then ignored (every class gets this map).
      batch_size: examples per forward pass.
      k: the threshold in standard deviations above each channel's mean.

    Returns:
      ``(N, H, W)`` float32 maps (``(N, h, w)`` when ``upsample=False``).
    """
    del key
    refuse_baseline(baseline, "fem")
    as_number(k, "fem: k")
    handle, x, (n, _, _, _) = _cam_call(model, x, layer, "fem", batch_size, upsample)
    if target is not None:
        resolve_target(handle, x, target)  # a bad target is refused, as everywhere

    def weighted(example: Array, _: Array) -> Array:
        _, activation = handle.capture(x[example], layer)
        activation = activation.astype(jnp.float32)
        mean = activation.mean(axis=(1, 2), keepdims=True)
        threshold = mean + float(k) * activation.std(axis=(1, 2), keepdims=True)
        weights = jnp.mean(activation > threshold, axis=(1, 2), keepdims=True)
        return jnp.sum(weights * activation, axis=-1)

    maps = sum_over_samples(weighted, n, batch_size=batch_size)
    return _finish(maps, x.shape, relu, upsample)


#: How :func:`across_layers` combines the layers' maps.
LAYER_COMBINATIONS = ("mean", "product")


def across_layers(method: Method, layers: Sequence[str], *, combine: str = "mean") -> Method:
    """A CAM method of several layers at once: ``method``'s map of every layer in
    ``layers``, each after a ReLU and min-max scaled to ``[0, 1]`` per example at the
    input's size, averaged (``combine='mean'``, pytorch-grad-cam's several
    ``target_layers``) or multiplied (``'product'``, RefineCAM; module docstring).

    The result has the one signature of the CAMs, with ``layer`` taken by the
    transform: ``across_layers(grad_cam_plus_plus, ["conv1", "conv2", "conv3"],
    combine="product")(model, x, target)`` is RefineCAM. ``target=None`` is resolved
    once, so every layer explains the same class; the other options (``key``,
    ``batch_size``, and the method's own, such as ``alpha`` for Finer-CAM) go to every
    call of ``method``.

    Args:
      method: a CAM, any function of :data:`CAM_METHODS`, or a transform of one such
        as ``augmentation_smoothing(grad_cam)`` (it is called with ``layer=``).
      layers: one or more distinct layer names (see :func:`layer_names`).
      combine: one of :data:`LAYER_COMBINATIONS`.

    Returns:
      The method; its maps are ``(N, H, W)`` float32 in ``[0, 1]``.
    """
    name = method_name(method, "across_layers")
    parameters = inspect.signature(method).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if "layer" not in parameters and not takes_any:
        raise ValueError(
            f"across_layers: {name} takes no layer=; pass a CAM method "
            f"({', '.join(CAM_METHODS)}) or a transform of one"
        )
    if isinstance(layers, str):
        layers = (layers,)
    layers = tuple(layers)
    if not layers or not all(isinstance(layer, str) for layer in layers):
        raise ValueError(f"across_layers: layers must be one or more layer names; got {layers!r}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"across_layers: layers must be distinct; got {layers!r}")
    if combine not in LAYER_COMBINATIONS:
        raise ValueError(
            f"across_layers: combine must be one of {LAYER_COMBINATIONS}; got {combine!r}"
        )

    def combined(
        model: Any,
        x: Array,
        target: Target = None,
        *,
        key: Array | None = None,
        baseline: None = None,
        batch_size: int | None = None,
        **options: Any,
    ) -> Array:
        if "layer" in options:
            raise ValueError(f"across_layers({name}) sets layer= itself; leave it out")
        if "upsample" in options and not options["upsample"]:
            raise ValueError(
                f"across_layers({name}) combines maps at the input's size; leave out upsample=False"
            )
        handle = as_flax_model(model, name)
        x = as_input(x)
        for layer in layers:
            handle.layer_shape(x, layer)  # an unknown layer is refused before any work
        target = resolve_target(handle, x, target, batch_size=batch_size)
        maps = []
        for layer in layers:
            try:
                cam = method(
                    handle,
                    x,
                    target,
                    key=key,
                    baseline=baseline,
                    batch_size=batch_size,
                    layer=layer,
                    **options,
                )
            except TypeError as error:  # a transform of a method that takes no layer
                if "'layer'" not in str(error):
                    raise
                raise ValueError(
                    f"across_layers: {name} is not a CAM method (it passes layer= to a "
                    "method that takes none)"
                ) from None
            maps.append(minmax_scale(jax.nn.relu(cam), (1, 2)))
        stacked = jnp.stack(maps)
        return (stacked.mean(axis=0) if combine == "mean" else stacked.prod(axis=0)).astype(
            jnp.float32
        )

    combined.__name__ = combined.__qualname__ = f"across_layers({name})"
    combined.__doc__ = (
        f"{name} of layers {', '.join(layers)}, each scaled to [0, 1], {combine} "
        "(fmi_jax.attribution.across_layers)."
    )
    return combined
