"""What every attribution method shares: targets, input checks, chunked evaluation, keys.

Conventions used by every method in :mod:`fmi_jax.attribution`:

* ``fn`` maps a batch ``x`` of shape ``(N, ...)`` to logits of shape ``(N, classes)``,
  e.g. ``lambda x: model.apply(variables, x)``. Methods never see parameters,
  modules or hooks, only this function.
* ``target`` is an int array of shape ``(N,)``, a Python int (the same class for
  every example) or ``None`` (each example's predicted class, ``argmax fn(x)``).
  :func:`resolve_target` turns all three into an ``int32`` array of shape ``(N,)``.
* Attributions have the shape of ``x`` and dtype ``float32``.
* ``x`` is a float batch: one example without its batch axis, and integer images
  (uint8 in [0, 255]), are refused with a message that says how to fix them
  (:func:`as_input`, :func:`resolve_target`), because the model would silently see
  something other than what it was trained on.

Checks on values (NaN/Inf in ``x``, a target out of range) need concrete arrays.
They run whenever the value is concrete and are skipped for tracers, i.e. when the
caller wraps a method in ``jax.jit``/``jax.vmap``; a target that cannot be checked
and turns out to be out of range gives NaN attributions rather than a silently
wrong answer (see :func:`select_target`).

Memory and chunking: every method evaluates the model through
:func:`sum_over_samples`, which walks over the ``N * samples`` (example, sample)
evaluations in chunks of ``batch_size`` and accumulates per-example sums, so peak
memory is set by ``batch_size`` (plus an accumulator the size of ``x``) however
many samples or integration steps a method asks for.

Randomness: example ``i`` draws from ``fold_in(key, i)`` (:func:`example_keys`) and its
sample ``s`` from ``fold_in(fold_in(key, i), s)`` (:func:`sample_keys`). The noise an
example receives therefore depends on neither ``batch_size`` nor on how the work is
chunked or spread over devices. It does depend on the example's index ``i`` in the call:
to give an example the same noise in any batch, pass one key per example (see
:func:`example_keys`). (This needs random bits that do not change under
``jax.vmap`` over keys, which JAX guarantees for its default threefry keys; keys made
with ``impl='rbg'`` or ``'unsafe_rbg'`` do not promise it.)
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
import numbers
import operator
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fmi_jax.layout import looks_channels_first

__all__ = [
    "Array",
    "ModelFn",
    "Target",
    "Method",
    "Explain",
    "InputLayoutError",
    "as_input",
    "image_size",
    "layout_mistake",
    "channels_last_known",
    "missing_channel_axis",
    "layout_checked",
    "require_key",
    "check_explain",
    "method_name",
    "refuse_baseline",
    "check_finite",
    "as_rows",
    "flat_rows",
    "as_baseline",
    "as_reference",
    "baseline_is_distribution",
    "as_count",
    "as_number",
    "as_target",
    "resolve_target",
    "select_target",
    "refuse_one_output",
    "target_probability",
    "target_logit_grad",
    "sum_over_samples",
    "map_over_samples",
    "completeness_delta",
    "minmax_scale",
    "example_keys",
    "sample_keys",
    "per_example",
]

Array = jax.Array
ModelFn = Callable[[Array], Array]
Target = int | Array | np.ndarray | None


class Method(Protocol):
    """The one signature of every attribution method in :mod:`fmi_jax.attribution`."""

    def __call__(
        self,
        fn: ModelFn,
        x: Array,
        target: Target = None,
        *,
        key: Array | None = None,
        baseline: Any = None,
        batch_size: int | None = None,
        **options: Any,
    ) -> Array: ...


class Explain(Protocol):
    """A method bound to a model and its options: ``explain(x, target, key) -> maps``.

    :func:`fmi_jax.attribution.explainer` returns one; the evaluation metrics
    (sanity checks, robustness) call one on perturbed inputs and randomised models.
    """

    def __call__(self, x: Array, target: Target = None, key: Array | None = None) -> Array: ...


def require_key(key: Array | None, method: str) -> Array:
    """``key`` itself; a ValueError naming ``method`` when it is None (the method draws
    random numbers, and fmi_jax never draws them from a hidden global state) or not a
    PRNG key (an int seed, say)."""
    if key is None:
        raise ValueError(f"{method} draws random numbers: pass key=jax.random.key(seed) (keyword)")
    _check_key(key, method)
    return key


def _check_key(key: Any, where: str) -> None:
    """A ValueError unless ``key`` is a typed PRNG key or legacy raw key data (uint32,
    last axis the key's words), one or a batch."""
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == np.uint32 and getattr(key, "ndim", 0) >= 1
    if not (typed or raw):
        shown = f"{type(key).__name__} {key!r}" if np.ndim(key) == 0 else type(key).__name__
        raise ValueError(
            f"{where}: key must be a PRNG key, got {shown}: pass key=jax.random.key(seed)"
        )


def refuse_baseline(baseline: Any, method: str) -> None:
    """A ValueError when ``baseline`` is given to a method without a reference input:
    it would be silently ignored, and the caller clearly meant something by it."""
    if baseline is not None:
        raise ValueError(
            f"{method} has no reference input, so baseline= would be ignored; leave it "
            "None (the path, DeepLIFT, SHAP and perturbation methods take one, such as "
            "integrated_gradients, deeplift, gradient_shap and occlusion)"
        )


def _is_concrete(value: Any) -> bool:
    return not isinstance(value, jax.core.Tracer)


def check_finite(value: Array, name: str) -> None:
    """ValueError if a concrete ``value`` holds NaN or Inf (checked on the host, so it
    also works for concrete arrays met while tracing)."""
    if _is_concrete(value) and not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(f"{name} contains NaN or Inf values")


def flat_rows(values: Array, name: str) -> Array:
    """``values`` ``(N, ...)`` as ``(N, D)``, one row per example; a ValueError naming
    ``name`` for fewer than two axes or an empty batch (whose -1 reshape JAX cannot
    resolve)."""
    if values.ndim < 2:
        raise ValueError(f"{name} must be (N, ...) with one map per example, got {values.shape}")
    if values.shape[0] == 0:
        raise ValueError(f"{name} holds no examples (shape {values.shape}): pass at least one")
    return values.reshape(values.shape[0], -1)


def as_rows(values: Any, inputs: Array, what: str, *, min_ndim: int = 1) -> Array:
    """``values`` (what a user's function returned for ``inputs``) as float32, with a
    ValueError unless it has one row per input and at least ``min_ndim`` axes; ``what``
    says who must return what, e.g. ``"explain must return maps (B, ...)"``."""
    values = jnp.asarray(values, dtype=jnp.float32)
    if values.ndim < min_ndim or values.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"{what} with leading axis {inputs.shape[0]} for inputs of shape "
            f"{inputs.shape}, got shape {values.shape}"
        )
    return values


def _refuse_integers(dtype: Any, name: str) -> None:
    if jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
        raise ValueError(
            f"{name} has dtype {dtype}; attribution needs float inputs on the model's "
            f"scale: convert first, e.g. {name}.astype('float32') / 255 for uint8 images "
            "of a model trained on [0, 1]"
        )


def as_input(x: Any, name: str = "x") -> Array:
    """``x`` as a float32 array with a batch axis, checked for NaN/Inf when concrete.

    Integer (and boolean) inputs are refused: uint8 images in [0, 255] would be fed to
    a model trained on [0, 1] (or standardised) floats and change every prediction
    without an error. The caller converts them the way the model was trained.
    """
    dtype = getattr(x, "dtype", None)
    _refuse_integers(np.asarray(x).dtype if dtype is None else dtype, name)
    x = jnp.asarray(x, dtype=jnp.float32)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must have a non-empty batch axis first, got shape {x.shape}")
    check_finite(x, name)
    return x


# Set while a method runs on a layer's activations (at_layer), which a channels-last
# model lays out (N, h, w, K) by construction: a small map with many channels, such
# as a CIFAR network's last 4x4 block, is not a channels-first batch.
_CHANNELS_LAST_KNOWN = contextvars.ContextVar("channels_last_known", default=False)


@contextlib.contextmanager
def channels_last_known() -> Iterator[None]:
    """Inside this block :func:`image_size` reads every 4-D batch as ``(N, H, W, C)``
    without asking whether it looks channels-first: for inputs whose layout is known,
    such as a layer's activations."""
    token = _CHANNELS_LAST_KNOWN.set(True)
    try:
        yield
    finally:
        _CHANNELS_LAST_KNOWN.reset(token)


def image_size(x: Any, method: str) -> tuple[int, int]:
    """``(H, W)`` of an image batch ``x``, ``(N, H, W, C)`` or ``(N, H, W)``: the plane
    a method that works over the image (a CAM resized to the input, patches, segments)
    draws on.

    Channels come last, as in Flax. A 4-D batch that looks channels-first
    (:func:`fmi_jax.layout.looks_channels_first`: a second axis of at most 4, a last
    one of more) is refused, because read as ``(N, H, W, C)`` it would give maps of
    ``(C, H)`` instead of ``(H, W)``: a channels-first model's images are explained by
    a model that transposes them inside, fed channels-last. Inside
    :func:`channels_last_known` (a layer's activations) that question is not asked.
    """
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    if len(shape) not in (3, 4):
        raise ValueError(
            f"{method} works over the image plane: x must be (N, H, W, C) or (N, H, W), "
            f"got shape {shape}"
        )
    if len(shape) == 4 and not _CHANNELS_LAST_KNOWN.get() and looks_channels_first(shape[1:]):
        raise ValueError(
            f"{method}: x of shape {shape} looks channels-first; image methods read "
            "(N, H, W, C): pass x.transpose(0, 2, 3, 1) to a model that transposes it "
            "back first"
        )
    return int(shape[1]), int(shape[2])


def as_reference(value: Any, name: str = "baseline", *, scaled: bool = True) -> Array:
    """A reference input (a baseline, the references of a SHAP method) as a float32
    array. An integer or boolean array is refused like an integer ``x`` when it stands
    on the input's scale (``scaled``: a uint8 grey of 128 would be 128 times the
    brightest pixel of a model trained on [0, 1]); a Python number is read as a float."""
    dtype = getattr(value, "dtype", None)
    if scaled and dtype is not None:
        _refuse_integers(dtype, name)
    try:
        return jnp.asarray(value, dtype=jnp.float32)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a number or an array of the input's shape, got {value!r}"
        ) from None


def as_baseline(baseline: Any, x: Array, name: str = "baseline", *, scaled: bool = True) -> Array:
    """``baseline`` broadcast to the shape of ``x``: None means zeros; a scalar, one
    example's shape ``x.shape[1:]`` or the full ``x.shape`` are all accepted; an
    integer array only when not ``scaled`` (see :func:`as_reference`)."""
    if baseline is None:
        return jnp.zeros_like(x)
    baseline = as_reference(baseline, name, scaled=scaled)
    try:
        broadcast_shape = np.broadcast_shapes(baseline.shape, x.shape)
    except ValueError:
        broadcast_shape = None
    if broadcast_shape != x.shape:
        raise ValueError(
            f"{name} of shape {baseline.shape} does not broadcast to the input shape {x.shape}"
        )
    check_finite(baseline, name)
    return jnp.broadcast_to(baseline, x.shape)


def baseline_is_distribution(method: Any) -> bool:
    """Whether ``method`` reads ``baseline`` as one distribution of references shared by
    every example, of any length (GradientSHAP, DeepLIFT-SHAP: the function attribute
    ``baseline_is_distribution``), rather than as a reference input that broadcasts to
    ``x``; a ``functools.partial`` is read through to its function."""
    return bool(getattr(getattr(method, "func", method), "baseline_is_distribution", False))


def as_number(
    value: Any, name: str, *, minimum: float | None = None, inclusive: bool = True
) -> float:
    """A finite real ``value`` (a Python or NumPy number, or a concrete 0-d integer or
    float array; not a bool) as a Python float, ``>= minimum`` (``>`` with
    ``inclusive=False``) when a minimum is given; otherwise a one-line ValueError that
    names ``name``."""
    bound = "" if minimum is None else f" {'>=' if inclusive else '>'} {minimum:g}"
    dtype = getattr(value, "dtype", None)
    real = isinstance(value, numbers.Real) or (
        dtype is not None
        and np.ndim(value) == 0
        and (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating))
    )
    try:
        number = float(value) if real and not isinstance(value, (bool, np.bool_)) else math.nan
    except (TypeError, jax.errors.ConcretizationTypeError):
        number = math.nan
    if not math.isfinite(number) or (
        minimum is not None and (number < minimum if inclusive else number <= minimum)
    ):
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return number


def as_count(value: Any, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """A Python int >= ``minimum`` (and <= ``maximum`` when given): steps, samples,
    batch sizes and feature counts are static."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if maximum is not None and not minimum <= count <= maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {count}")
    if count < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {count}")
    return count


def method_name(method: Any, where: str) -> str:
    """The name of ``method``, an attribution function handed to a transform (``where``,
    e.g. ``'noise_tunnel'``); a ValueError for a method's name given as a string, or
    anything else that cannot be called, when the transform is built."""
    if isinstance(method, str):
        raise ValueError(
            f"{where} takes the method's function, e.g. fmi_jax.attribution.{method}, not "
            f"its name {method!r} (by name: attribution.explainer({method!r}, fn, ...))"
        )
    if not callable(method):
        raise ValueError(f"{where}: method must be an attribution function, got {method!r}")
    inner = getattr(method, "func", method)  # a functools.partial names its function
    return getattr(inner, "__name__", type(inner).__name__)


def check_explain(explain: Any, where: str) -> None:
    """ValueError unless ``explain`` can be an :class:`Explain`, ``explain(x, target, key)
    -> maps``: an attribution method itself (whose first argument is the model) would
    take the images for the model and the targets for the images, and fail far from
    the mistake, so it is refused with the binding to make."""
    if not callable(explain):
        raise ValueError(f"{where}: explain must be a function explain(x, target, key)")
    try:
        first = next(iter(inspect.signature(explain).parameters), None)
    except (TypeError, ValueError):  # a builtin or a C function: nothing to read
        return
    if first in ("fn", "model"):
        inner = getattr(explain, "func", explain)  # a functools.partial names its function
        name = getattr(inner, "__name__", type(inner).__name__)
        raise ValueError(
            f"{where}: explain takes the model first, {name}({first}, x, ...); it is called "
            f"explain(x, target, key): bind the model first, "
            f"attribution.explainer({name!r}, fn, **options)"
        )


def _is_logits(out: Any, num_examples: int) -> bool:
    return hasattr(out, "shape") and len(out.shape) == 2 and out.shape[0] == num_examples


def _maps_to_logits(fn: ModelFn, shape: tuple[int, ...], dtype: Any) -> bool:
    """Whether ``fn`` maps a batch of ``shape`` to logits ``(shape[0], classes)``."""
    try:
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct(shape, dtype))
    except Exception:  # noqa: BLE001  (any failure means: it does not)
        return False
    return _is_logits(out, shape[0])


def _unbatched(fn: ModelFn, x: Array) -> bool:
    """Whether ``fn`` maps ``x[None]`` to logits ``(1, classes)``, i.e. ``x`` is one example
    that lost its batch axis."""
    return _maps_to_logits(fn, (1,) + tuple(x.shape), x.dtype)


class InputLayoutError(ValueError):
    """``x`` is laid out other than the model takes it: one example without its batch
    axis, or a channels-first batch ``(N, C, H, W)`` for a channels-last model. The
    message says which, and the fix."""


def missing_channel_axis(shape: tuple[int, ...]) -> str:
    """The message for a grayscale batch ``(N, H, W)`` given to a model that takes
    ``(N, H, W, 1)``, as MNIST-style loaders often leave it."""
    return (
        f"x of shape {shape} looks like grayscale images without their channel axis: "
        "pass x[..., None]; the model takes (N, H, W, 1)"
    )


def _misread_layout(fn: ModelFn, x: Array) -> str | None:
    """Why ``fn``, which does not map ``x`` to ``(N, classes)`` logits, would with ``x``
    laid out otherwise: ``x`` is one example without its batch axis (``fn`` takes
    ``x[None]``), a grayscale batch without its channel axis (``fn`` takes
    ``x[..., None]``), or a channels-first batch (``fn`` takes ``x.transpose(0, 2, 3, 1)``);
    None when neither fixes it. Only the model's answer decides, so no valid batch is
    refused on its shape alone."""
    shape = tuple(x.shape)
    if _unbatched(fn, x):
        batch = "(N, H, W, C)" if len(shape) == 3 else "(N, ...)"
        return (
            f"x of shape {shape} looks like one example without its batch axis: pass "
            f"x[None] (a batch of one); x must be a batch {batch}"
        )
    if len(shape) == 3 and _maps_to_logits(fn, shape + (1,), x.dtype):
        return missing_channel_axis(shape)
    if len(shape) == 4 and _maps_to_logits(fn, (shape[0], *shape[2:], shape[1]), x.dtype):
        return (
            f"x of shape {shape} looks channels-first (N, C, H, W), but the model takes "
            "channels-last images (N, H, W, C): pass x.transpose(0, 2, 3, 1)"
        )
    return None


def layout_mistake(fn: ModelFn, x: Array) -> str | None:
    """A one-line message when ``fn`` cannot take ``x`` because of how ``x`` is laid out
    (one example without its batch axis, or channels-first for a channels-last model),
    else None. ``fn`` taking ``x`` as a batch (an output with ``N`` rows) rules both
    out. A few :func:`jax.eval_shape` passes: for error paths, not for every call."""
    try:
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct(tuple(x.shape), x.dtype))
    except InputLayoutError as error:
        return str(error)
    except Exception:  # noqa: BLE001  (any failure: ask whether the layout is why)
        return _misread_layout(fn, x)
    if tuple(getattr(out, "shape", ())[:1]) == (x.shape[0],):
        return None
    return _misread_layout(fn, x)


@contextlib.contextmanager
def layout_checked(fn: ModelFn, x: Array) -> Iterator[None]:
    """Checks of other arguments against the example shape ``x.shape[1:]`` (a window,
    a feature mask, references, a baseline) run inside this block: when one fails
    because ``x`` itself is laid out wrong (:func:`layout_mistake`), the error says
    so, with the fix, instead of blaming the argument that was right. Valid input costs
    nothing: the model is asked only after a check has failed."""
    try:
        yield
    except ValueError:
        _refuse_module(fn)
        problem = layout_mistake(fn, x)
        if problem is None:
            raise
        raise InputLayoutError(problem) from None


def _refuse_module(fn: Any) -> None:
    """A ValueError for a Flax module given where a model function goes: a Linen module
    has no variables, and an NNX module called inside ``jax.grad`` runs in whatever
    mode it is in (and fails if that mode updates batch statistics)."""
    if isinstance(fn, nnx.Module):
        raise ValueError(
            f"fn is the NNX module {type(fn).__name__}: pass "
            "fmi_jax.attribution.flax_model(module), which runs an eval-mode copy of it"
        )
    if isinstance(fn, tuple) and fn and isinstance(fn[0], (nn.Module, nnx.Module)):
        raise ValueError(
            f"fn is a ({type(fn[0]).__name__}, variables) tuple, not a model function: pass "
            "fmi_jax.attribution.flax_model(module, variables, train=False)"
        )
    if isinstance(fn, nn.Module) and fn.scope is None:  # a bound module is a model function
        raise ValueError(
            f"fn is the Linen module {type(fn).__name__} without its variables: pass "
            "fmi_jax.attribution.flax_model(module, variables, train=False)"
        )


def _num_classes(fn: ModelFn, x: Array) -> int:
    """The number of classes of ``fn``, checking that ``fn`` maps the batch ``x`` to
    ``(N, classes)`` logits. A single example without its batch axis (``fn`` accepts
    ``x[None]``) and a channels-first batch for a channels-last model (``fn`` accepts
    ``x.transpose(0, 2, 3, 1)``) are recognised and refused with that diagnosis,
    instead of the shape error from deep inside the model. A Flax module given as
    ``fn`` is refused with the handle to pass instead."""
    _refuse_module(fn)
    try:
        out = jax.eval_shape(fn, x)
    except InputLayoutError as error:  # a model handle diagnosed it already
        raise InputLayoutError(str(error)) from None  # without the notes of JAX's trace
    except Exception:
        problem = _misread_layout(fn, x)
        if problem is not None:
            raise InputLayoutError(problem) from None
        raise
    if not _is_logits(out, x.shape[0]):
        # Only an output whose first axis is not the batch suggests a misread x: a model
        # returning one score per example, (N,), is a wrong model, not a wrong x.
        first = tuple(getattr(out, "shape", ())[:1])
        problem = None if first == (x.shape[0],) else _misread_layout(fn, x)
        if problem is not None:
            raise InputLayoutError(problem)
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"fn must map a batch of shape {x.shape} to logits of shape "
            f"({x.shape[0]}, classes), got {shape}{_several_outputs_hint(out, x.shape[0])}"
        )
    return out.shape[1]


def _several_outputs_hint(out: Any, num_examples: int) -> str:
    """For a model returning a tuple, list or dict: how to explain its logits alone,
    naming the entry shaped like ``(N, classes)`` logits when exactly one is."""
    if isinstance(out, Mapping):
        entries = list(out.items())
    elif isinstance(out, (tuple, list)):
        entries = list(enumerate(out))
    else:
        return ""
    logits = [index for index, value in entries if _is_logits(value, num_examples)]
    if len(logits) == 1:
        pick = f"[{logits[0]!r}]"
    elif isinstance(out, Mapping):
        keys = ", ".join(repr(key) for key, _ in entries[:8])
        pick = f"[key] (its keys: {keys}{', ...' if len(entries) > 8 else ''})"
    else:
        pick = "[i] (the logits' position)"
    return (
        "; for a model with several outputs, explain the logits alone: a Linen handle "
        f"takes method=lambda module, x, **kw: module(x, **kw){pick}, an NNX model a "
        "wrapper module whose __call__ returns them"
    )


def as_target(target: Any, num_examples: int, num_classes: int | None = None) -> Array:
    """An int or integer array of targets as an int32 array of shape ``(N,)``.

    Checks the range ``[0, num_classes)`` when the target is concrete and
    ``num_classes`` is known (``[0, 2**31)``, what int32 holds, otherwise). The check
    reads the values as given, before the cast to int32: a wider integer such as
    ``np.int64(2**32 + 1)`` would wrap around to a valid class (1) and explain it
    without an error.
    """
    if all(_is_concrete(leaf) for leaf in jax.tree.leaves(target)):
        host = _host_integers(target)
        if host.shape not in ((), (num_examples,)):
            raise ValueError(
                f"target must be an int or have shape ({num_examples},) (one class per "
                f"example), got shape {host.shape}"
            )
        values = np.broadcast_to(host, (num_examples,))
        upper = _INT32_LIMIT if num_classes is None else min(num_classes, _INT32_LIMIT)
        bad = np.flatnonzero((values < 0) | (values >= upper))
        if bad.size:
            valid = f"[0, {num_classes})" if num_classes is not None else "[0, 2**31)"
            raise ValueError(
                f"target out of range: example {int(bad[0])} asks for class "
                f"{int(values[bad[0]])}, but classes must be in {valid}"
            )
        return jnp.broadcast_to(jnp.asarray(values, jnp.int32), (num_examples,))
    target = jnp.asarray(target)  # traced (a list of tracers too)
    if not jnp.issubdtype(target.dtype, jnp.integer):
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.shape not in ((), (num_examples,)):
        raise ValueError(
            f"target must be an int or have shape ({num_examples},) (one class per example), "
            f"got shape {target.shape}"
        )
    return jnp.broadcast_to(target, (num_examples,)).astype(jnp.int32)


_INT32_LIMIT = 2**31


def _host_integers(target: Any) -> np.ndarray:
    """A concrete ``target`` as a NumPy array of its exact integer values (Python ints
    too large for int64 kept as objects); a ValueError unless every value is an integer
    (a bool is not a class index)."""
    host = np.asarray(target)
    if host.dtype == object and all(
        isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
        for value in host.flat
    ):
        return host
    if not np.issubdtype(host.dtype, np.integer):
        raise ValueError(f"target must hold integer class indices, got dtype {host.dtype}")
    return host


def resolve_target(
    fn: ModelFn, x: Array, target: Target, *, batch_size: int | None = None
) -> Array:
    """The class to explain for every example, as an int32 array of shape ``(N,)``.

    Args:
      fn: model function, batch -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: ``None`` (the predicted class ``argmax fn(x)[i]``, computed in chunks of
        ``batch_size`` examples), a Python int (the same class for every example) or an
        integer array of shape ``(N,)``.
      batch_size: examples per forward pass when ``target`` is ``None``.

    Raises:
      ValueError: ``fn`` does not return ``(N, classes)`` logits, or the target has the
        wrong shape, a non-integer dtype, or (when concrete) a class outside
        ``[0, classes)``.
    """
    classes = _num_classes(fn, x)
    if target is None:
        if batch_size is None or as_count(batch_size, "batch_size") >= x.shape[0]:
            logits = fn(x)  # one chunk: the model on the batch as given
        else:
            logits = sum_over_samples(
                lambda example, _: fn(x[example]), x.shape[0], batch_size=batch_size
            )
        return _predicted_class(logits)
    return as_target(target, x.shape[0], classes)


@jax.jit
def _predicted_class(logits: Array) -> Array:
    return jnp.argmax(logits, axis=1).astype(jnp.int32)


def refuse_one_output(logits: Array, score: str, instead: str | None = None) -> None:
    """A ValueError when ``logits`` has one column: a model with one output (a sigmoid
    classifier's single logit) has softmax 1 and argmax 0 for every input, so ``score``
    (what a metric reads off the output) could not tell inputs apart. ``instead``: what
    else the caller can do, where the metric has an option for it."""
    if logits.ndim == 2 and logits.shape[1] == 1:
        raise ValueError(
            f"fn returns one output per example (a single column), so {score} is "
            "the same for every input: return one logit per class (for a sigmoid model z, "
            "the two logits [0, z] have softmax [1 - sigmoid(z), sigmoid(z)])"
            + (f", or {instead}" if instead else "")
        )


def target_probability(logits: Array, target: Array, *, instead: str | None = None) -> Array:
    """``softmax(logits)[i, target[i]]`` for every row i (see :func:`select_target`);
    a model with one output is refused (:func:`refuse_one_output`)."""
    refuse_one_output(logits, "the softmax probability of its target", instead)
    return select_target(jax.nn.softmax(logits, axis=-1), target)


# Jitted, like the other small helpers every method calls: eagerly, each primitive
# would be a program of its own, compiled on a method's first call.
@jax.jit
def select_target(logits: Array, target: Array) -> Array:
    """``logits[i, target[i]]`` for every row i.

    A target outside ``[0, classes)`` (possible only when it was a tracer and could not be
    checked) selects NaN, and NaN also flows into every gradient taken through it, so
    a bad target shows up as NaN attributions instead of a plausible wrong map.
    """
    classes = logits.shape[1]
    in_range = (target >= 0) & (target < classes)
    picked = jnp.take_along_axis(logits, jnp.clip(target, 0, classes - 1)[:, None], axis=1)
    return jnp.where(in_range, 1.0, jnp.nan) * picked[:, 0]


def target_logit_grad(fn: ModelFn, x: Array, target: Array) -> Array:
    """Row i holds the gradient of example i's target logit, d fn(x)[i, t_i] / d x_i.

    Computed with one backward pass as the gradient of the batch sum
    ``sum_i fn(x)[i, t_i]`` with respect to the whole batch. That is valid because in
    inference mode examples do not interact: logit i depends on ``x_i`` only, so the
    derivative of the sum with respect to ``x_i`` is the derivative of logit i. (A
    model in training mode, e.g. BatchNorm using batch statistics, would break this;
    evaluate models with ``train=False``.)
    """
    return jax.grad(lambda x: jnp.sum(select_target(fn(x), target)))(x)


def per_example(values: Array, like: Array) -> Array:
    """Reshape a per-example vector ``(N,)`` so it broadcasts against ``like`` ``(N, ...)``."""
    return values.reshape(values.shape + (1,) * (like.ndim - 1))


def sum_over_samples(
    evaluate: Callable[[Array, Array], Any],
    num_examples: int,
    num_samples: int = 1,
    *,
    batch_size: int | None = None,
) -> Any:
    """``out[i] = sum_s evaluate(i, s)`` for every example i, in chunks of ``batch_size``.

    The ``num_examples * num_samples`` (example, sample) pairs are laid out example
    by example, ``k = i * num_samples + s``, and evaluated ``batch_size`` pairs at a
    time inside a ``lax.scan`` whose carry is the running per-example sum. Peak memory
    is therefore one chunk's evaluation plus the accumulator, independent of
    ``num_samples``. The last chunk is padded with copies of the last pair and the
    padding is masked out of the sum, so any ``batch_size`` gives the same result (up to
    the order of float additions).

    Args:
      evaluate: ``evaluate(example_index, sample_index)`` gets two int32 vectors of
        length B (the chunk) and returns a pytree of arrays with leading axis B: row j
        is the contribution of pair ``(example_index[j], sample_index[j])``.
      num_examples: N.
      num_samples: samples (or integration steps) per example.
      batch_size: pairs per chunk; ``None`` evaluates all pairs at once.

    Returns:
      The pytree of ``evaluate``, each leaf with leading axis N instead of B.
    """
    num_examples = as_count(num_examples, "num_examples")
    num_samples = as_count(num_samples, "num_samples")
    total = num_examples * num_samples
    chunk = total if batch_size is None else min(as_count(batch_size, "batch_size"), total)
    num_chunks = -(-total // chunk)

    def accumulate(sums, chunk_index):
        pair = chunk_index * chunk + jnp.arange(chunk, dtype=jnp.int32)
        valid = pair < total
        pair = jnp.minimum(pair, total - 1)
        example, sample = pair // num_samples, pair % num_samples
        values = evaluate(example, sample)
        sums = jax.tree.map(
            lambda s, v: s.at[example].add(jnp.where(per_example(valid, v), v, 0)),
            sums,
            values,
        )
        return sums, None

    if num_chunks == 1:
        # Everything in one evaluation: no loop, and the per-example sum is a reshape
        # (pairs are laid out example-major) instead of a scatter-add into the carry.
        pair = jnp.arange(total, dtype=jnp.int32)
        if num_samples == 1:
            values = evaluate(pair, jnp.zeros_like(pair))
            if all(jnp.issubdtype(v.dtype, jnp.inexact) for v in jax.tree.leaves(values)):
                return values  # one sample per example: the sum is the value itself
        else:
            values = evaluate(pair // num_samples, pair % num_samples)
        return jax.tree.map(
            lambda v: v.reshape((num_examples, num_samples) + v.shape[1:]).sum(axis=1), values
        )
    index_spec = jax.ShapeDtypeStruct((chunk,), jnp.int32)
    shapes = jax.eval_shape(evaluate, index_spec, index_spec)
    zeros = jax.tree.map(lambda s: jnp.zeros((num_examples,) + s.shape[1:], s.dtype), shapes)
    sums, _ = jax.lax.scan(accumulate, zeros, jnp.arange(num_chunks, dtype=jnp.int32))
    return sums


def map_over_samples(
    evaluate: Callable[[Array, Array], Array],
    num_examples: int,
    num_samples: int,
    *,
    batch_size: int | None = None,
) -> Array:
    """``out[i, s] = evaluate(i, s)``, evaluated ``batch_size`` pairs at a time.

    The counterpart of :func:`sum_over_samples` for methods that need every value, not
    a sum (perturbation methods keep one model output per perturbation). Pairs are laid
    out example by example and *every* chunk has exactly ``batch_size`` pairs (the last
    one padded with copies of the last pair, then dropped): XLA can round a row of a
    batched computation differently for different batch sizes (never differently for
    different places in the batch), so values that must be comparable to the last bit,
    like a reference output and a perturbed output that should equal it, have to come
    from calls of the same shape.

    Args:
      evaluate: ``evaluate(example_index, sample_index)`` gets two int32 vectors of
        length B and returns an array with leading axis B (one value per pair).
      num_examples, num_samples: N and S.
      batch_size: pairs per chunk; ``None`` evaluates all pairs at once.

    Returns:
      The values, shaped ``(N, S) + evaluate's trailing shape``.
    """
    num_examples = as_count(num_examples, "num_examples")
    num_samples = as_count(num_samples, "num_samples")
    total = num_examples * num_samples
    chunk = total if batch_size is None else min(as_count(batch_size, "batch_size"), total)
    num_chunks = -(-total // chunk)
    pair = jnp.minimum(jnp.arange(num_chunks * chunk, dtype=jnp.int32), total - 1)
    example, sample = pair // num_samples, pair % num_samples
    if num_chunks == 1:
        values = evaluate(example, sample)
    else:
        values = jax.lax.map(
            lambda es: evaluate(*es),
            (example.reshape(num_chunks, chunk), sample.reshape(num_chunks, chunk)),
        )
        values = values.reshape((num_chunks * chunk,) + values.shape[2:])
    return values[:total].reshape((num_examples, num_samples) + values.shape[1:])


def example_keys(key: Array, num_examples: int) -> Array:
    """One PRNG key per example.

    ``key`` is either a single key (new-style ``jax.random.key`` or legacy
    ``PRNGKey``), in which case example i gets ``fold_in(key, i)``, or already a batch
    of ``num_examples`` keys, used as given. The second form lets a caller that splits a
    dataset into batches keep each example's noise tied to its dataset index:
    ``jax.vmap(lambda i: jax.random.fold_in(key, i))(dataset_indices)``.
    """
    _check_key(key, "example_keys")
    key = jnp.asarray(key)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    if key.shape == ():
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(
            jnp.arange(num_examples, dtype=jnp.int32)
        )
    if key.shape == (num_examples,):
        return key
    raise ValueError(
        f"key must be a single PRNG key or one key per example ({num_examples},), "
        f"got key shape {key.shape}"
    )


def sample_keys(keys: Array, example: Array, sample: Array) -> Array:
    """``fold_in(keys[example[j]], sample[j])`` for every pair j of a chunk."""
    return jax.vmap(jax.random.fold_in)(keys[example], sample)


def minmax_scale(values: Array, axis: int | tuple[int, ...]) -> Array:
    """``values`` shifted and scaled to [0, 1] over ``axis`` (each slice on its own): the
    smallest entry becomes 0 and the largest 1; a constant slice becomes all 0, not a
    0/0."""
    low = values.min(axis=axis, keepdims=True)
    span = values.max(axis=axis, keepdims=True) - low
    return jnp.where(span > 0, (values - low) / jnp.where(span > 0, span, 1.0), 0.0)


def completeness_delta(
    fn: ModelFn,
    x: Array,
    target: Target,
    attributions: Array,
    *,
    baseline: Array | None = None,
    batch_size: int | None = None,
) -> Array:
    """Completeness gap per example: ``sum_j A_ij - (f_t(x_i) - f_t(x'_i))``, shape ``(N,)``.

    Zero for methods that satisfy completeness (IG up to quadrature error; DeepLift's
    summation-to-delta), so it measures their numerical error; for other methods it
    says how far their maps are from explaining the logit difference. ``target`` as
    in every method (``None``: the predicted class of ``x``). ``attributions`` have one
    row per example, of any shape: the input's, or a layer's for layer attributions.
    """
    x = as_input(x)
    if isinstance(attributions, tuple):
        raise ValueError(
            "attributions is a tuple: a method called with return_delta=True returns "
            "(attributions, delta); pass the attributions alone"
        )
    attributions = as_rows(attributions, x, "attributions must have one row per example")
    with layout_checked(fn, x):  # a baseline that does not fit a misread x: say why
        baseline = as_baseline(baseline, x)
    target = resolve_target(fn, x, target, batch_size=batch_size)

    def logit_difference(example: Array, _: Array) -> Array:
        return select_target(fn(x[example]), target[example]) - select_target(
            fn(baseline[example]), target[example]
        )

    difference = sum_over_samples(logit_difference, x.shape[0], batch_size=batch_size)
    return jnp.reshape(attributions, (x.shape[0], -1)).sum(axis=1) - difference
