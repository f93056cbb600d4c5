"""Building blocks shared by the model families: convolutions and max pooling that
compute what `lax.conv_general_dilated` and `flax.linen.max_pool` compute, with
derivatives that XLA:CPU runs faster. Models pick a convolution with
`model_conv(train)`; `use_conv` overrides the pick. What each one gains, with the
machine and the command, is in docs/performance.md.

`im2col_conv` (training on XLA:CPU): the convolution as strided slices and one
matmul, with autodiff's own rules (forward and reverse mode); its weight gradient is
one matmul, `cols^T @ G`, where XLA:CPU lowers the weight gradient of its own
convolution to a slow convolution.

`conv_general_dilated` (`use_conv('matmul_grad')`): the same forward pass, and a
`jax.custom_vjp` whose *weight* gradient is one matmul per kernel tap instead of
XLA:CPU's slow convolution. For a KH x KW kernel with strides s and rhs dilation d,

    dW[kh, kw, ci, co] = sum_{b, i, j} Xpad[b, i*s_h + kh*d_h, j*s_w + kw*d_w, ci] * G[b, i, j, co]

i.e. one (Ci x B*OH*OW) @ (B*OH*OW x Co) matmul per tap over a strided slice of the
padded input. The input gradient keeps XLA's own (transposed convolution) rule. A
custom_vjp supports reverse mode but not forward mode.

`hybrid_conv` (evaluation on XLA:CPU, what attribution methods run and
differentiate): XLA's convolution forward, whose kernels fuse with the batch norm,
ReLU and pooling around them, and, through a `jax.custom_jvp`, the derivative of
`im2col_conv`, which XLA:CPU runs faster than the transposed convolution.

`max_pool`: non-overlapping max pooling with flax's values and gradients, written so
that its gradient avoids XLA:CPU's slow `select_and_scatter`.

On GPUs and TPUs the models use `lax.conv_general_dilated` unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

__all__ = [
    "CONV_IMPLEMENTATIONS",
    "conv_general_dilated",
    "hybrid_conv",
    "im2col_conv",
    "max_pool",
    "model_conv",
    "use_conv",
]

_NHWC = ("NHWC", "HWIO", "NHWC")


def _plain_conv(lhs, rhs, strides, pads, rhs_dilation, precision):
    return lax.conv_general_dilated(
        lhs,
        rhs,
        strides,
        pads,
        rhs_dilation=rhs_dilation,
        dimension_numbers=_NHWC,
        precision=precision,
    )


def _pad_spatial(lhs, pads):
    return lax.pad(
        lhs,
        jnp.zeros((), lhs.dtype),
        [(0, 0, 0), (pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0), (0, 0, 0)],
    )


def _taps(xp, kernel_hw, out_hw, strides, rhs_dilation):
    """For each kernel tap (kh, kw), row-major: the strided window of the padded input
    ``xp`` that the tap multiplies, shape (B, OH, OW, Cin)."""
    batch, cin = xp.shape[0], xp.shape[3]
    for kh in range(kernel_hw[0]):
        for kw in range(kernel_hw[1]):
            h0, w0 = kh * rhs_dilation[0], kw * rhs_dilation[1]
            yield lax.slice(
                xp,
                (0, h0, w0, 0),
                (
                    batch,
                    h0 + (out_hw[0] - 1) * strides[0] + 1,
                    w0 + (out_hw[1] - 1) * strides[1] + 1,
                    cin,
                ),
                (1, strides[0], strides[1], 1),
            )


def _weight_grad(lhs, g, kernel_shape, strides, pads, rhs_dilation, dtype):
    """dW as one matmul per kernel tap (see the module docstring)."""
    cin, cout = kernel_shape[2], kernel_shape[3]
    taps = [
        jnp.dot(patch.reshape(-1, cin).T, g.reshape(-1, cout), preferred_element_type=jnp.float32)
        for patch in _taps(
            _pad_spatial(lhs, pads), kernel_shape[:2], g.shape[1:3], strides, rhs_dilation
        )
    ]
    return jnp.stack(taps).reshape(kernel_shape).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_matmul_wgrad(lhs, rhs, strides, pads, rhs_dilation, precision):
    return _plain_conv(lhs, rhs, strides, pads, rhs_dilation, precision)


def _fwd(lhs, rhs, strides, pads, rhs_dilation, precision):
    return _plain_conv(lhs, rhs, strides, pads, rhs_dilation, precision), (lhs, rhs)


def _bwd(strides, pads, rhs_dilation, precision, residuals, g):
    lhs, rhs = residuals
    _, lhs_vjp = jax.vjp(lambda x: _plain_conv(x, rhs, strides, pads, rhs_dilation, precision), lhs)
    (dlhs,) = lhs_vjp(g)
    drhs = _weight_grad(lhs, g, rhs.shape, strides, pads, rhs_dilation, rhs.dtype)
    return dlhs, drhs


_conv_matmul_wgrad.defvjp(_fwd, _bwd)


def _is_nhwc(lhs_shape, rhs_shape, dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    want = lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)
    have = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    return tuple(want) == tuple(have)


def _dispatch(fast):
    """A function with `lax.conv_general_dilated`'s signature that runs
    `fast(lhs, rhs, strides, pads, rhs_dilation, precision)` on the 2-D NHWC/HWIO
    convolutions the fast rules cover, and `lax.conv_general_dilated` unchanged on the
    rest (grouped or depthwise, input dilation, a preferred element type, other
    layouts)."""

    @functools.wraps(fast)
    def conv(
        lhs: jax.Array,
        rhs: jax.Array,
        window_strides: Sequence[int],
        padding: str | Sequence[tuple[int, int]],
        lhs_dilation: Sequence[int] | None = None,
        rhs_dilation: Sequence[int] | None = None,
        dimension_numbers: Any = None,
        feature_group_count: int = 1,
        batch_group_count: int = 1,
        precision: Any = None,
        preferred_element_type: Any = None,
    ) -> jax.Array:
        if (
            lhs.ndim != 4
            or feature_group_count != 1
            or batch_group_count != 1
            or any(int(d) != 1 for d in (lhs_dilation or ()))
            or preferred_element_type is not None
            or not _is_nhwc(lhs.shape, rhs.shape, dimension_numbers)
        ):
            return lax.conv_general_dilated(
                lhs,
                rhs,
                window_strides,
                padding,
                lhs_dilation=lhs_dilation,
                rhs_dilation=rhs_dilation,
                dimension_numbers=dimension_numbers,
                feature_group_count=feature_group_count,
                batch_group_count=batch_group_count,
                precision=precision,
                preferred_element_type=preferred_element_type,
            )
        strides = tuple(int(s) for s in window_strides)
        rhs_dil = tuple(int(d) for d in (rhs_dilation or (1, 1)))
        if isinstance(padding, str):
            dilated_kernel = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], rhs_dil)]
            padding = lax.padtype_to_pads(lhs.shape[1:3], dilated_kernel, strides, padding)
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        return fast(lhs, rhs, strides, pads, rhs_dil, precision)

    return conv


@_dispatch
def conv_general_dilated(lhs, rhs, strides, pads, rhs_dilation, precision):
    """`lax.conv_general_dilated` with a matmul-per-tap weight-gradient rule.

    Cases the fast rule does not cover (not 2-D NHWC/HWIO, grouped or depthwise
    convolutions, input dilation, a preferred element type) fall back to
    `lax.conv_general_dilated` and its native gradient, so the function is always
    a correct replacement.
    """
    return _conv_matmul_wgrad(lhs, rhs, strides, pads, rhs_dilation, precision)


def _im2col(lhs, rhs, strides, pads, rhs_dilation, precision):
    kh, kw, cin, cout = rhs.shape
    xp = _pad_spatial(lhs, pads)
    out_hw = tuple(
        (xp.shape[1 + i] - (rhs.shape[i] - 1) * rhs_dilation[i] - 1) // strides[i] + 1
        for i in range(2)
    )
    cols = jnp.concatenate(list(_taps(xp, (kh, kw), out_hw, strides, rhs_dilation)), axis=-1)
    y = jnp.dot(cols.reshape(-1, kh * kw * cin), rhs.reshape(-1, cout), precision=precision)
    return y.reshape(lhs.shape[0], *out_hw, cout)


@_dispatch
def im2col_conv(lhs, rhs, strides, pads, rhs_dilation, precision):
    """`lax.conv_general_dilated` as explicit patches and one matmul.

    ``y = concat_taps(window_tap(pad(x))) @ reshape(W, (KH*KW*Cin, Cout))``. It needs no
    custom derivative: autodiff transposes the slices into pads and adds and the matmul
    into a matmul, so forward and reverse mode both work, and DeepLIFT's interpreter
    sees only linear operations. Its derivative is what `hybrid_conv` uses.
    The patches take KH*KW times the input's memory while the matmul runs, so bound
    attribution memory with the methods' `batch_size`. Unsupported cases fall back
    to `lax.conv_general_dilated`.
    """
    return _im2col(lhs, rhs, strides, pads, rhs_dilation, precision)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5))
def _xla_forward_im2col_derivative(lhs, rhs, strides, pads, rhs_dilation, precision):
    return _plain_conv(lhs, rhs, strides, pads, rhs_dilation, precision)


def _hybrid_jvp(strides, pads, rhs_dilation, precision, primals, tangents):
    lhs, rhs = primals
    dlhs, drhs = tangents
    out = _plain_conv(lhs, rhs, strides, pads, rhs_dilation, precision)
    # The convolution is bilinear: d(x * w) = dx * w + x * dw, each term an im2col
    # convolution (linear in its tangent, so reverse mode transposes it into im2col's
    # derivative); a symbolic zero tangent (the weights, when differentiating with
    # respect to the input) costs nothing.
    terms = []
    if not isinstance(dlhs, SymbolicZero):
        terms.append(_im2col(dlhs, rhs, strides, pads, rhs_dilation, precision))
    if not isinstance(drhs, SymbolicZero):
        terms.append(_im2col(lhs, drhs, strides, pads, rhs_dilation, precision))
    if not terms:
        return out, SymbolicZero(jax.typeof(out).to_tangent_aval())
    return out, functools.reduce(jnp.add, terms)


_xla_forward_im2col_derivative.defjvp(_hybrid_jvp, symbolic_zeros=True)


@_dispatch
def hybrid_conv(lhs, rhs, strides, pads, rhs_dilation, precision):
    """`lax.conv_general_dilated` forward, `im2col_conv` derivatives (for inference).

    On XLA:CPU the native convolution runs the forward pass faster than im2col (its
    kernels fuse with the batch norm, ReLU and pooling around them), while im2col's
    derivative (pads, adds and one matmul) runs the input gradient faster at the
    batch sizes attribution uses. A `custom_jvp` gets both: the primal is XLA's
    convolution, the tangent the im2col convolution of the tangent, so forward mode
    works, reverse mode transposes into im2col's rule, and a model evaluated without
    derivatives (occlusion, Score-CAM, the faithfulness curves) runs XLA's kernel
    only. DeepLIFT's interpreter reads the primal: a `conv_general_dilated`.
    Unsupported cases fall back to `lax.conv_general_dilated`.
    """
    return _xla_forward_im2col_derivative(lhs, rhs, strides, pads, rhs_dilation, precision)


CONV_IMPLEMENTATIONS = ("auto", "xla", "matmul_grad", "im2col", "hybrid")
_conv_choice = threading.local()


@contextlib.contextmanager
def use_conv(implementation: str) -> Iterator[None]:
    """Within the block, models trace their convolutions with `implementation`:
    'auto' (the default: `model_conv`'s rule), 'xla' (`lax.conv_general_dilated`
    everywhere), 'matmul_grad' (`conv_general_dilated`), 'im2col' (`im2col_conv`) or
    'hybrid' (`hybrid_conv`).
    All compute the same function and differ in speed and in float32 rounding; a
    jitted function keeps the choice it was traced with. Per thread."""
    if implementation not in CONV_IMPLEMENTATIONS:
        raise ValueError(
            f"unknown conv implementation {implementation!r}; choose one of "
            f"{', '.join(CONV_IMPLEMENTATIONS)}"
        )
    before = getattr(_conv_choice, "value", "auto")
    _conv_choice.value = implementation
    try:
        yield
    finally:
        _conv_choice.value = before


def model_conv(train: bool) -> Callable[..., jax.Array] | None:
    """The conv function a model's `nn.Conv(conv_general_dilated=...)` should use.

    By default (`use_conv('auto')`), on XLA:CPU: `im2col_conv` when training (its
    derivatives are matmuls, where XLA:CPU's weight gradient is a slow convolution),
    and in evaluation (what attribution methods run and differentiate) XLA's
    convolution with im2col's derivative (`hybrid_conv`). Elsewhere None: flax's default,
    `lax.conv_general_dilated`, whose GPU/TPU kernels are fast. Inside `use_conv`,
    the implementation it names.
    """
    choice = getattr(_conv_choice, "value", "auto")
    if choice == "xla":
        return None
    if choice == "matmul_grad":
        return conv_general_dilated
    if choice == "im2col":
        return im2col_conv
    if choice == "hybrid":
        return hybrid_conv
    if jax.default_backend() != "cpu":
        return None
    return im2col_conv if train else hybrid_conv


def _windows(x: jax.Array, window: int) -> jax.Array:
    """NHWC -> (N, OH, OW, C, window * window), each window's entries in row-major order."""
    n, h, w, c = x.shape
    oh, ow = h // window, w // window
    x = x[:, : oh * window, : ow * window].reshape(n, oh, window, ow, window, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(n, oh, ow, c, window * window)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Non-overlapping ``window x window`` max pooling of NHWC ``x`` (stride = window,
    VALID: trailing rows and columns that do not fill a window are dropped).

    Equals ``flax.linen.max_pool(x, (w, w), strides=(w, w))``, values and gradients, but
    is written as a reshape and a max over each window instead of a ``reduce_window``,
    because the ``reduce_window`` gradient (``select_and_scatter``) is slow on XLA:CPU.

    Gradient at ties: the derivative of a plain max reduction splits the gradient
    equally among the positions that share a window's maximum. Ties are common in
    image models (a uniform background gives every position of a window the same
    activation), and PyTorch, Captum and ``select_and_scatter`` all send the whole
    gradient to the *first* maximum in row-major order (the equal split moves
    saliency maps visibly away from Captum's). The JVP
    rule here therefore routes the tangent through the first maximum, as they do.
    It is a ``custom_jvp``, so forward and reverse mode both work, and DeepLIFT's
    jaxpr interpreter sees the primal ``reduce_max``.
    """
    return _windows(x, window).max(axis=-1)


@max_pool.defjvp
def _max_pool_jvp(window, primals, tangents):
    (x,), (t,) = primals, tangents
    xw = _windows(x, window)
    first = jax.nn.one_hot(jnp.argmax(xw, axis=-1), xw.shape[-1], dtype=bool)
    # The primal as the first maximum too (the same value as xw.max): a derivative of
    # this rule (forward over reverse, for Hessian-vector products) then follows the
    # same routing instead of max's equal split among ties.
    out = jnp.where(first, xw, 0).sum(axis=-1)
    return out, jnp.where(first, _windows(t, window), 0).sum(axis=-1)
