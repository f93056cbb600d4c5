"""A model handle: a Flax classifier as a model function that can also capture a layer.

Every attribution method takes a model function ``fn(x) -> logits``. The methods that
look inside the model (Grad-CAM and friends) also need one layer's activation ``A`` and
the gradient flowing into it. :func:`flax_model` turns a Flax classifier into a
:class:`FlaxModel` that is both:

    handle = flax_model(linen_module, variables, train=False)     # Linen
    handle = flax_model(nnx_module)                                # NNX
    logits = handle(x)                                             # a model function
    logits, A = handle.capture(x, "conv2")                         # plus a layer
    dy_dA = jax.grad(lambda d: handle.capture(x, "conv2", d)[0][:, c].sum())(zeros)
    handle.layer_type(x, "conv2/bn")                               # flax.linen.BatchNorm
    b = handle.output_at_zero(x, "conv2/bn")                       # its constant term

``capture(x, layer, delta)`` replaces the layer's output ``A`` by ``A + delta`` for the
rest of the forward pass, so the gradient with respect to ``delta`` at zero is exactly
``dy/dA``; ``logits_with(x, layer, value)`` gives the logits with the output replaced by
``value`` outright, which lets XLA skip the layers that only feed it; and
``output_at_zero(x, layer)`` is the layer's output on a zero input, an affine layer's
bias at every position (FullGrad's bias terms). The user's model is never edited, and
every call is a pure function of its array arguments, so a handle can be used inside
``jax.grad``, ``jax.vmap``, ``jax.lax.scan`` and ``jax.jit``.

Layers are named by their module path, ``'/'``-joined (``'conv2'``, ``'block/conv'``,
``'blocks/0/conv'`` for the first entry of a list of NNX modules). The candidates,
listed by :meth:`FlaxModel.layer_names` in call order, are the submodules whose
``__call__`` returns one array with the batch axis first (``(N, h, w, K)`` from a
convolution, ``(N, K)`` from a dense layer, ``(N, T, D)`` from a token layer) exactly once
per forward pass and whose output :meth:`FlaxModel.capture` can hand back (a module that
returns a tuple or a dict is not one); asking for any other layer is a one-line
``ValueError`` that says why (unknown, called several times, hidden inside a transform)
raised before any array is built from the layer's shape. A pass with
:func:`jax.eval_shape` finds the layers and counts their calls (cached per input shape).

Only a four-axis output can be an image, and not every one is: a general dense layer
that splits its features into two axes (attention's query, key and value) turns tokens
``(N, T, D)`` into ``(N, T, heads, head_dim)``. Every layer can be captured (layer and
neuron attributions, concept activations and :func:`~fmi_jax.attribution.at_layer` take
any shape), but the methods that draw a layer's output as a map over the image (the
CAMs, FullGrad's map, the registry's layer maps) refuse the layers without image rows
and columns through :func:`image_layer_call`, and ``layer_names(x, images_only=True)``
leaves them out. :func:`tokens_as_image` makes a vision transformer's token layer
``(N, 1 + h w, D)`` one of them: a handle on which it returns its patch tokens as
``(N, h, w, D)``, and on which a ``delta`` or ``value`` at the layer goes back to them.

How a layer is captured:

* Linen: :func:`flax.linen.intercept_methods` sees the named module return its output.
  The interceptor does not smuggle values out through Python (a value produced inside a
  lifted transform such as ``nn.remat`` would escape as a leaked tracer); it uses the
  module's own variable collections, which Flax threads through its lifted transforms:
  ``module.sow`` stores ``A`` in a private collection returned by ``apply``, and
  ``module.perturb`` adds ``delta``, passed in as another private collection. So a layer
  wrapped in ``nn.remat``, or inside a remat'd parent, is captured exactly as without
  remat. A layer inside ``nn.scan`` or ``nn.vmap`` is refused: those transforms drop the
  collection or return the layer's output stacked, not as one ``(N, ...)`` array.
* NNX: ``nnx.capture`` needs the model's own code to call ``self.perturb`` to inject a
  ``delta`` (that would mean editing the model), and its ``method_outputs`` option
  records outputs by patching every submodule's *class* for the whole process while it
  runs. Instead, the module is snapshotted once with ``nnx.split`` (later training of
  the user's module is not seen: make a new handle) and every call runs on a fresh
  ``nnx.merge`` copy in eval mode (``.eval()``: BatchNorm uses its running averages and
  Dropout is off). On that copy only, the instance to capture (every submodule, in
  the pass that lists the layers) gets a class of its own: a cached subclass of its
  class whose ``__call__`` hands the output to the hook registered for that instance
  during that call. Values stay in the trace that computes the forward pass, so this is
  sound under ``jax.grad``, ``jax.vmap``, ``lax.scan`` and ``jax.jit``; the user's
  module, its classes and every other instance are untouched. A module that the model
  calls inside an NNX transform (``nnx.remat``, ``nnx.scan``) runs there as a copy the
  hook does not see; it is reported as not called and refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fmi_jax.attribution.core import (
    Array,
    InputLayoutError,
    as_count,
    as_input,
    layout_mistake,
    missing_channel_axis,
    select_target,
)

__all__ = [
    "FlaxModel",
    "flax_model",
    "as_flax_model",
    "tokens_as_image",
    "activation_and_gradient",
    "layer_call",
    "image_layer_call",
]

# Private names for the Linen collections the capture goes through.
_CAPTURE = "fmi_jax_capture"  # collection the layer's output is sown into
_DELTA = "fmi_jax_delta"  # collection holding the delta added to that output
_NAME = "fmi_jax_layer_output"  # variable name inside both collections


@dataclasses.dataclass(frozen=True)
class _Layer:
    """What one pass saw of a layer: how often it was called and what it returned."""

    calls: int
    shape: tuple[int, ...]
    dtype: Any
    problem: str | None = None  # why capture cannot hand back its output, if it cannot
    module_type: type | None = None  # the class of the module that returns it
    not_an_image: str | None = None  # why its axes 1 and 2 are no image rows and columns


def _path(parts: tuple[Any, ...]) -> str:
    return "/".join(str(part) for part in parts)


class FlaxModel:
    """A model function fn(x) -> logits on a batch that can also capture a named layer.

    Build one with :func:`flax_model`. Calls are pure functions of their array
    arguments, so a handle works inside ``jax.grad``, ``jax.vmap``, ``jax.lax.scan`` and
    ``jax.jit``. Each pass through the model is a jitted function of the weights, so a
    method called eagerly compiles the forward pass once (and its gradient once) rather
    than once per primitive, and handles of the same model and call keywords share those
    programs. That needs call keywords that are plain values (bools, numbers, strings,
    None) or functions, and weights whose every leaf is an array; otherwise (an array or
    NNX ``Rngs`` among the keywords, a string in a collection) the passes run
    uncompiled (eagerly, one program per primitive). The layer tables the checks use
    are found with :func:`jax.eval_shape` and cached per input shape and dtype.
    """

    def __init__(self, name: str, static: _Static, weights: Any, passes: _Passes) -> None:
        self._name = name
        self._tables: dict[tuple[tuple[int, ...], Any], dict[str, _Layer]] = {}
        self._modes: set[tuple[tuple[int, ...], Any]] = set()
        self._static = static
        self._weights = weights
        self._passes = _COMPILED[passes] if static.compilable(weights) else passes

    def __repr__(self) -> str:
        return f"FlaxModel({self._name})"

    def __call__(self, x: Array) -> Array:
        """Logits ``(N, classes)`` for the batch ``x``.

        Raises:
          InputLayoutError: the model fails on ``x`` but takes ``x[None]`` (one example
            without its batch axis) or ``x.transpose(0, 2, 3, 1)`` (a channels-first
            batch), instead of the shape error from inside the model.
        """
        x = jnp.asarray(x)
        try:
            logits, _ = self._forward(x, None, None)
        except InputLayoutError:
            raise
        except Exception:
            self._refuse_layout(x)
            raise
        return logits

    def _logits(self, x: Array) -> Array:
        return self._forward(x, None, None)[0]

    def _refuse_layout(self, x: Array) -> None:
        """After a pass on ``x`` failed: an :class:`InputLayoutError` when the layout of
        ``x`` is why (:func:`~fmi_jax.attribution.core.layout_mistake`)."""
        problem = layout_mistake(self._logits, x)
        if problem is not None:
            raise InputLayoutError(problem) from None

    def layer_names(self, x: Array, *, images_only: bool = False) -> tuple[str, ...]:
        """The layers :meth:`capture` can take, for inputs like ``x``: every submodule
        whose ``__call__`` returns one ``(N, ...)`` array (the batch axis first) once per
        forward pass, as its ``'/'``-joined module path, in the order the calls return (so
        a block comes right after the layers inside it). ``images_only`` keeps only the
        ``(N, h, w, K)`` layers with image rows and columns on axes 1 and 2 (the CAMs'
        choices; :meth:`not_an_image`)."""
        table = self._table(jnp.asarray(x))
        return tuple(
            name
            for name, info in table.items()
            if _refusal(info) is None and not (images_only and info.not_an_image)
        )

    def not_an_image(self, x: Array, layer: str) -> str | None:
        """Why ``layer``'s output has no image rows and columns on its axes 1 and 2 (it
        is not ``(N, h, w, K)``, or it is attention's query, key or value), or None when
        it has them.

        Raises:
          ValueError: as :meth:`capture`, for a layer it cannot take.
        """
        return self._check(jnp.asarray(x), layer).not_an_image

    def layer_shape(self, x: Array, layer: str) -> tuple[int, ...]:
        """The shape of ``layer``'s output for inputs like ``x``.

        Raises:
          ValueError: as :meth:`capture`, for a layer it cannot take.
        """
        return self._check(jnp.asarray(x), layer).shape

    def capture(self, x: Array, layer: str, delta: Array | None = None) -> tuple[Array, Array]:
        """``(logits, A)``: the model's output and ``layer``'s output ``A``.

        With ``delta`` (shaped like ``A``), the layer's output is replaced by
        ``A + delta`` for the rest of the forward pass (``A`` itself is returned), so
        ``jax.grad`` with respect to ``delta`` at zero is ``dy/dA`` exactly. ``delta`` is
        cast to ``A``'s dtype. The user's model is never edited.

        Raises:
          ValueError: the model has no such layer returning an ``(N, ...)`` array (the
            message lists the ones it has), the layer is called more than once (or,
            NNX, only inside a transform) per forward pass, it runs inside a transform
            that does not hand its output back, or ``delta`` has the wrong shape.
        """
        x = jnp.asarray(x)
        self._check(x, layer)
        if delta is not None:
            delta = self._like_output(x, layer, delta, "delta")
        logits, activation = self._forward(x, layer, delta)
        return logits, activation

    def layer_type(self, x: Array, layer: str) -> type:
        """The class of the module whose output is ``layer`` (``flax.linen.Conv``,
        ``flax.nnx.BatchNorm``, a block of the user's, ...).

        Raises:
          ValueError: as :meth:`capture`, for a layer it cannot take.
        """
        return self._check(jnp.asarray(x), layer).module_type

    def refused_layers(
        self, x: Array, *, images_only: bool = False
    ) -> dict[str, tuple[type | None, int, str]]:
        """The submodules with an ``(N, ...)`` output (or, NNX, never called by the
        model's own code) that :meth:`capture` cannot take, for inputs like ``x``: name ->
        (module class, calls seen in one forward pass, why). ``images_only`` leaves out
        those whose output, as far as it was seen, has no image rows and columns."""
        table = self._table(jnp.asarray(x))
        return {
            name: (info.module_type, info.calls, reason)
            for name, info in table.items()
            if (reason := _refusal(info)) is not None and not (images_only and info.not_an_image)
        }

    def perturb_layers(self, x: Array, deltas: Mapping[str, Array]) -> Array:
        """The logits with every named layer's output ``A_l`` replaced by ``A_l + delta_l``
        for the rest of the pass: ``jax.grad`` with respect to the deltas at zero gives
        the gradient at every one of those layers in one backward pass.

        Raises:
          ValueError: as :meth:`capture`, for a layer it cannot take or a delta of the
            wrong shape.
        """
        x = jnp.asarray(x)
        checked = {
            layer: self._like_output(x, layer, delta, "delta") for layer, delta in deltas.items()
        }
        return self._perturbed(x, checked)

    def output_at_zero(self, x: Array, layer: str) -> Array:
        """``layer``'s output when its first input is replaced by zeros (its other
        arguments and the rest of the pass unchanged): for an affine layer, a convolution
        or a batch norm in inference mode, its constant term, the bias at every position
        (a batch norm's ``beta - gamma mean / sqrt(var + eps)``).

        Raises:
          ValueError: as :meth:`capture`, for a layer it cannot take.
        """
        x = jnp.asarray(x)
        self._check(x, layer)
        return self._zero_input_output(x, layer)

    def logits_with(self, x: Array, layer: str, value: Array) -> Array:
        """The logits with ``layer``'s output replaced by ``value`` (shaped like it) for the
        rest of the forward pass.

        Nothing reads the layer's own output, so when the call is compiled (under
        ``jax.jit``, or inside ``lax.scan``) XLA drops the part of the network that
        only feeds the layer: evaluating the network after a layer at many activations
        (ablated channels, points of a path at the layer) costs the rest of the
        network alone. Called eagerly, every layer still runs. Whatever bypasses the
        layer (a skip connection around it) still sees ``x``.

        Raises:
          ValueError: as :meth:`capture`.
        """
        x = jnp.asarray(x)
        value = self._like_output(x, layer, value, "value")
        logits, _ = self._forward(x, layer, value, replace=True)
        return logits

    def _like_output(self, x: Array, layer: str, value: Any, name: str) -> Array:
        """``value`` checked to have ``layer``'s output shape, in its dtype; a
        ValueError naming ``name`` otherwise (and for a layer :meth:`capture` refuses)."""
        info = self._check(x, layer)
        value = jnp.asarray(value)
        if tuple(value.shape) != info.shape:
            raise ValueError(
                f"{name} must have the shape of layer {layer!r}'s output {info.shape}, "
                f"got {tuple(value.shape)}"
            )
        return value.astype(info.dtype)

    def _forward(
        self, x: Array, layer: str | None, delta: Array | None, replace: bool = False
    ) -> tuple[Any, Any]:
        """The logits and, when ``layer`` is given, its output; the rest of the pass sees
        the output plus ``delta``, or ``delta`` alone with ``replace``."""
        self._check_mode(x)
        return self._passes.forward(
            self._static, self._weights, x, delta, layer=layer, replace=replace
        )

    def _zero_input_output(self, x: Array, layer: str) -> Array:
        """``layer``'s output with its first input replaced by zeros."""
        self._check_mode(x)
        return self._passes.zero_input_output(self._static, self._weights, x, layer=layer)

    def _perturbed(self, x: Array, deltas: Mapping[str, Array]) -> Array:
        """The logits with ``deltas[l]`` added to every named layer's output."""
        self._check_mode(x)
        return self._passes.perturbed(self._static, self._weights, x, dict(deltas))

    def _check_mode(self, x: Array) -> None:
        """Refuses a model in training mode, once per input shape (see the backends)."""
        key = (tuple(x.shape), jnp.dtype(x.dtype))
        if key not in self._modes:
            self._refuse_training_mode(x)
            self._modes.add(key)

    # Each backend implements these.

    def _refuse_training_mode(self, x: Array) -> None:
        """A ValueError when a forward pass on inputs like ``x`` runs in training mode."""
        raise NotImplementedError

    def _find_layers(self, x: jax.ShapeDtypeStruct) -> dict[str, _Layer]:
        """Every submodule whose call returns an ``(N, ...)`` array, in call order."""
        raise NotImplementedError

    def _table(self, x: Array) -> dict[str, _Layer]:
        key = (tuple(x.shape), jnp.dtype(x.dtype))
        if key not in self._tables:
            try:
                table = self._find_layers(jax.ShapeDtypeStruct(*key))
            except Exception:
                self._refuse_layout(x)
                raise
            if key[0][0] == 1:
                table = self._per_example_at_one(table, key)
            self._tables[key] = table
        return self._tables[key]

    def _per_example_at_one(
        self, table: dict[str, _Layer], key: tuple[tuple[int, ...], Any]
    ) -> dict[str, _Layer]:
        """``table``, found on one example, without the outputs whose first axis of 1 is
        not the batch (a positional embedding's ``(1, T, D)``): the layers of a batch of
        two are the layers, so that a method sees the same ones at every batch size."""
        try:
            two = self._find_layers(jax.ShapeDtypeStruct((2, *key[0][1:]), key[1]))
        except Exception:  # noqa: BLE001  (a model that only runs on one example)
            return table
        return {name: info for name, info in table.items() if name in two}

    def _check(self, x: Array, layer: str) -> _Layer:
        table = self._table(x)
        info = table.get(layer) if isinstance(layer, str) else None  # a list is unhashable
        if info is None:
            images = self.layer_names(x, images_only=True)
            others = [name for name in self.layer_names(x) if name not in images]
            available = ", ".join(images) or "(none)"
            if others:
                available += f"; not images (layer methods only, no CAMs): {', '.join(others)}"
            raise ValueError(
                f"{self._name} has no layer {layer!r} returning one (N, ...) array; "
                f"available layers: {available}"
            )
        refusal = _refusal(info)
        if refusal is not None:
            raise ValueError(f"layer {layer!r} of {self._name} {refusal}")
        return info


def _refusal(info: _Layer) -> str | None:
    """Why :meth:`FlaxModel.capture` cannot take a layer (None when it can)."""
    if info.problem is not None:
        return info.problem
    if info.calls == 0:
        return (
            "is not called by the model's own code in a forward pass (a module called "
            "inside an NNX transform such as nnx.jit, nnx.remat or nnx.scan runs as a copy that "
            "cannot be captured); CAMs and layer methods need a layer that is called once, outside "
            "such transforms"
        )
    if info.calls != 1:
        return (
            f"is called {info.calls} times in one forward pass; CAMs and layer methods need "
            "a layer that is called once (give each use its own module, or pick another layer)"
        )
    return None


def _not_an_image(module: Any, shape: tuple[int, ...]) -> str | None:
    """Why ``module``'s output of ``shape`` has no image rows and columns on its axes 1
    and 2, if it has none.

    Only a four-axis output ``(N, h, w, K)`` can have them: features ``(N, K)``, tokens
    ``(N, T, D)`` and volumes have not. Nor has a general dense layer whose features span
    several axes: it leaves fewer than two of its input's axes before them, so on tokens
    ``(N, T, D)`` it returns ``(N, T, heads, head_dim)`` (attention's query, key and
    value), and resizing axes 1 and 2 onto the image would paint tokens as rows and heads
    as columns."""
    if len(shape) != 4:
        what = {2: "features", 3: "a sequence of tokens"}.get(len(shape), "no image")
        return f"returns {what} (shape {shape}), not an (N, h, w, channels) map over the image"
    if isinstance(module, nn.DenseGeneral):
        features = module.features
    elif isinstance(module, nnx.LinearGeneral):
        features = module.out_features
    else:
        return None
    if isinstance(features, int) or len(tuple(features)) < 2:
        return None
    return (
        f"is a {type(module).__name__} that splits its features into {len(tuple(features))} "
        "axes, as attention's query, key and value do ((N, tokens, heads, head_dim)): its "
        "axes 1 and 2 are not an image's rows and columns; pick a layer with an "
        "image-shaped output"
    )


def _per_example(out: Any, x: jax.ShapeDtypeStruct) -> bool:
    """Whether a module's output is an array with the batch axis of the model's input
    ``x`` first and features after it: what :meth:`FlaxModel.capture` can take."""
    shape = getattr(out, "shape", None)
    return shape is not None and len(shape) >= 2 and shape[0] == x.shape[0]


def _zero_first_input(
    call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], layer: str
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` of a call to ``call`` with its first input, positional or
    named, replaced by zeros."""
    if args:
        return (jax.tree.map(jnp.zeros_like, args[0]), *args[1:]), kwargs
    names = list(inspect.signature(call).parameters)[1:]  # after the instance
    if not names or names[0] not in kwargs:
        raise ValueError(f"layer {layer!r} was called without an input to replace by zeros")
    return args, {**kwargs, names[0]: jax.tree.map(jnp.zeros_like, kwargs[names[0]])}


# Linen.


def _nested(path: tuple[str, ...], leaf: Any) -> dict[str, Any]:
    tree: dict[str, Any] = {_NAME: leaf}
    for part in reversed(path):
        tree = {part: tree}
    return tree


def _lookup(tree: Any, path: tuple[str, ...]) -> Any:
    for part in (*path, _NAME):
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


# Keyword values a compiled pass can take as part of its static key: immutable and
# compared by value. Anything else (arrays, NNX ``Rngs``, other objects) runs uncompiled.
_STATIC_VALUES = (bool, int, float, complex, str, bytes, type(None))
_STATIC_CALLABLES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType)


class _Static:
    """The static part of a handle's passes: the module (Linen) or graph definition
    (NNX) and the call's keyword arguments. Compared by value, with each keyword's type
    (``train=0`` is not ``train=False``), so handles of the same model and keywords share
    compiled programs."""

    __slots__ = ("model", "kwargs", "_key")

    def __init__(self, model: Any, kwargs: dict[str, Any]) -> None:
        self.model = model
        self.kwargs = kwargs
        leaves, treedef = jax.tree.flatten(kwargs)
        self._key = (type(model), model, treedef, tuple((type(v), v) for v in leaves))

    def compilable(self, weights: Any) -> bool:
        """Whether the passes can be jitted with this as their static key and ``weights``
        as arguments: the model and keywords hash, every keyword is a plain value or a
        function, and every leaf of the weights is an array (a string in a collection, or
        a Python int an NNX module reads as one, would not survive tracing)."""
        try:
            hash(self._key)
        except TypeError:
            return False
        keywords = jax.tree.leaves(self.kwargs)
        return all(
            isinstance(v, _STATIC_VALUES) or isinstance(v, _STATIC_CALLABLES) for v in keywords
        ) and all(isinstance(v, (jax.Array, np.ndarray)) for v in jax.tree.leaves(weights))

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Static) and self._key == other._key


class _Passes(NamedTuple):
    """A backend's three passes through the model, each ``pass(static, weights, x, ...)``."""

    forward: Callable[..., tuple[Any, Any]]
    zero_input_output: Callable[..., Array]
    perturbed: Callable[..., Array]


def _jitted(passes: _Passes) -> _Passes:
    """The passes as jitted functions of the weights and inputs, keyed on ``static``.

    Called eagerly, a jitted forward pass is one XLA program (and its gradient one more)
    instead of one per primitive, which is most of a method's first-call time. Under a
    caller's ``jax.jit``, or inside a method's own trace, a pass stays one ``jit``
    equation of the caller's program, which XLA inlines when it compiles.
    """
    return _Passes(
        jax.jit(passes.forward, static_argnums=0, static_argnames=("layer", "replace")),
        jax.jit(passes.zero_input_output, static_argnums=0, static_argnames=("layer",)),
        jax.jit(passes.perturbed, static_argnums=0),
    )


_INFERENCE_HINT = (
    "attribution needs the model in inference mode: pass its mode flag to the handle, "
    "e.g. flax_model({}, train=False) (or deterministic=True)"
)


# Mode flags kept as module attributes rather than call arguments, with their
# inference values.
_MODE_ATTRIBUTES = {"train": False, "training": False, "is_training": False, "deterministic": True}


def _mode_attribute(module: Any) -> tuple[str, bool] | None:
    """The mode attribute of ``module`` set for training, with its inference value, or
    None: a ``train: bool = True`` field, say, which no call keyword can change."""
    for name, value in _MODE_ATTRIBUTES.items():
        current = getattr(module, name, None)
        if isinstance(current, bool) and current != value:
            return name, value
    return None


def _inference_hint(module: Any, handle_args: str) -> str:
    """How to put ``module`` in inference mode: through the handle's call keywords
    when its ``__call__`` takes a mode flag, else through its mode attribute when it
    has one set for training."""
    found = _mode_attribute(module)
    try:
        keywords = set(inspect.signature(type(module).__call__).parameters)
    except (TypeError, ValueError):
        keywords = set()
    if found is None or keywords & set(_MODE_ATTRIBUTES):  # a mode the call takes comes first
        return _INFERENCE_HINT.format(handle_args)
    name, value = found
    kind = type(module).__name__
    how = (
        f"build it as {kind}(..., {name}={value})"
        if isinstance(module, nn.Module)
        else f"set module.{name} = {value} before making the handle"
    )
    return (
        f"attribution needs the model in inference mode: its {name} attribute is {not value}: {how}"
    )


@contextlib.contextmanager
def _linen_inference(module: nn.Module) -> Iterator[None]:
    """Flax's errors for a Linen model in training mode (batch statistics it may not
    update, dropout without an rng) as one ValueError that says how to fix it."""
    try:
        yield
    except (flax.errors.ModifyScopeVariableError, flax.errors.InvalidRngError) as error:
        reason = str(error).split(" (https://", 1)[0].strip().rstrip(".")
        hint = _inference_hint(module, "module, variables")
        raise ValueError(
            f"{type(module).__name__}'s forward pass failed: {reason}; {hint}"
        ) from None
    except flax.errors.ScopeCollectionNotFound as error:
        reason = str(error).split(" (https://", 1)[0].strip().rstrip(".")
        raise ValueError(
            f"{type(module).__name__}'s forward pass failed: {reason}; pass every "
            "collection the model reads, e.g. {'params': ..., 'batch_stats': ...} "
            "(a train state's params alone lack the batch statistics)"
        ) from None


def _linen_forward(
    static: _Static, variables: Any, x: Array, delta: Any, *, layer: str | None, replace: bool
) -> tuple[Any, Any]:
    module, kwargs = static.model, static.kwargs
    if layer is None:
        with _linen_inference(module):
            return module.apply(variables, x, **kwargs), None
    target = tuple(layer.split("/"))
    variables = dict(variables)
    if delta is not None:
        variables[_DELTA] = _nested(target, delta)

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and tuple(context.module.path) == target:
            context.module.sow(_CAPTURE, _NAME, out)
            if delta is not None:
                # Replacing: zeros plus delta, so nothing downstream reads `out`.
                base = jnp.zeros_like(out) if replace else out
                out = context.module.perturb(_NAME, base, collection=_DELTA)
        return out

    with _linen_inference(module), nn.intercept_methods(intercept):
        logits, state = module.apply(variables, x, mutable=[_CAPTURE], **kwargs)
    (activation,) = _lookup(state.get(_CAPTURE, {}), target)
    return logits, activation


def _linen_zero_input_output(static: _Static, variables: Any, x: Array, *, layer: str) -> Array:
    target = tuple(layer.split("/"))

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and tuple(context.module.path) == target:
            # The module alone, unbound, on its own variables: calling the bound one
            # again would re-enter this interceptor and count as a second call.
            alone = context.module.clone(parent=None)
            variables = {
                k: v for k, v in context.module.variables.items() if k not in (_CAPTURE, _DELTA)
            }
            zero_args, zero_kwargs = _zero_first_input(
                type(context.module).__call__, args, kwargs, layer
            )
            zero = alone.apply(variables, *zero_args, **zero_kwargs)
            context.module.sow(_CAPTURE, _NAME, zero)
        return out

    with _linen_inference(static.model), nn.intercept_methods(intercept):
        _, state = static.model.apply(variables, x, mutable=[_CAPTURE], **static.kwargs)
    (zero,) = _lookup(state.get(_CAPTURE, {}), target)
    return zero


def _linen_perturbed(
    static: _Static, variables: Any, x: Array, deltas: Mapping[str, Array]
) -> Array:
    targets = {tuple(layer.split("/")) for layer in deltas}
    tree: dict[str, Any] = {}
    for layer, delta in deltas.items():
        node = tree
        for part in layer.split("/"):
            node = node.setdefault(part, {})
        node[_NAME] = delta
    variables = {**variables, _DELTA: tree}

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and tuple(context.module.path) in targets:
            out = context.module.perturb(_NAME, out, collection=_DELTA)
        return out

    with _linen_inference(static.model), nn.intercept_methods(intercept):
        return static.model.apply(variables, x, **static.kwargs)


_LINEN = _Passes(_linen_forward, _linen_zero_input_output, _linen_perturbed)


class _LinenModel(FlaxModel):
    """A Linen module with its variables, evaluated as ``module.apply(variables, x, **kw)``."""

    def __init__(
        self, module: nn.Module, variables: Mapping[str, Any], kwargs: dict[str, Any]
    ) -> None:
        super().__init__(type(module).__name__, _Static(module, kwargs), variables, _LINEN)

    def _refuse_training_mode(self, x: Array) -> None:
        """Nothing to do: Flax itself refuses to update batch statistics or draw dropout
        noise without ``mutable=`` or ``rngs=``, which the passes turn into ValueErrors."""

    @property
    def module(self) -> nn.Module:
        """The Linen module (for methods that call its other methods, e.g. ``encode``)."""
        return self._static.model

    @property
    def variables(self) -> Mapping[str, Any]:
        """Its variables."""
        return self._weights

    def _find_layers(self, x: jax.ShapeDtypeStruct) -> dict[str, _Layer]:
        # The interceptor sees every call, even inside lifted transforms, but only the
        # sown values (threaded out of the transforms by Flax) say what capture gets.
        seen: dict[tuple[str, ...], list[tuple[int, ...]]] = {}
        modules: dict[tuple[str, ...], nn.Module] = {}

        def record(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            path = tuple(context.module.path)
            if context.method_name == "__call__" and path and _per_example(out, x):
                seen.setdefault(path, []).append(tuple(out.shape))
                modules[path] = context.module
                context.module.sow(_CAPTURE, _NAME, out)
            return out

        def forward(x):
            with _linen_inference(self.module), nn.intercept_methods(record):
                _, state = self.module.apply(
                    self._weights, x, mutable=[_CAPTURE], **self._static.kwargs
                )
            return state.get(_CAPTURE, {})

        sown = jax.eval_shape(forward, x)
        table: dict[str, _Layer] = {}
        for path, shapes in seen.items():
            values = _lookup(sown, path)
            if not values or any(tuple(v.shape) not in shapes for v in values):
                out = f" (it comes out as {tuple(values[0].shape)})" if values else ""
                table[_path(path)] = _Layer(
                    calls=len(shapes),
                    shape=shapes[0],
                    dtype=None,
                    problem=(
                        "runs inside a Flax transform (such as nn.scan or nn.vmap) that "
                        f"does not hand its output back as one {shapes[0]} array"
                        f"{out}; capture a layer outside the transform"
                    ),
                    module_type=type(modules[path]),
                    not_an_image=_not_an_image(modules[path], shapes[0]),
                )
            else:
                table[_path(path)] = _Layer(
                    calls=len(values),
                    shape=tuple(values[0].shape),
                    dtype=values[0].dtype,
                    module_type=type(modules[path]),
                    not_an_image=_not_an_image(modules[path], tuple(values[0].shape)),
                )
        return table


# NNX.

_TAPPED_CLASSES: dict[type, type] = {}
_TAPPED_LOCK = threading.Lock()
# id(module copy) -> hook, only while a forward pass on that copy runs.
# hook(output, at_zero) returns what the rest of the pass sees; at_zero(layer) is the
# module's output on a zero first input (layer names it in errors).
_HOOKS: dict[int, Callable[[Any, Callable[[str], Any]], Any]] = {}


def _tapped_class(cls: type) -> type:
    """A subclass of ``cls`` whose ``__call__`` passes its output through the hook
    registered for the instance (unchanged when none is). One per class, cached."""
    with _TAPPED_LOCK:
        if cls not in _TAPPED_CLASSES:

            def __call__(self, *args, **kwargs):
                out = cls.__call__(self, *args, **kwargs)
                hook = _HOOKS.get(id(self))
                if hook is None:
                    return out

                # The hook may also ask for the output on a zero first input.
                def at_zero(layer):
                    zero_args, zero_kwargs = _zero_first_input(cls.__call__, args, kwargs, layer)
                    return cls.__call__(self, *zero_args, **zero_kwargs)

                return hook(out, at_zero)

            namespace = {
                "__call__": __call__,
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
            }
            _TAPPED_CLASSES[cls] = type(cls)(cls.__name__, (cls,), namespace)
        return _TAPPED_CLASSES[cls]


@contextlib.contextmanager
def _tap(
    hooks: Mapping[int, tuple[nnx.Module, Callable[[Any, Callable[[str], Any]], Any]]],
) -> Iterator[None]:
    """Route the outputs of the given module copies through their hooks while open."""
    for module, hook in hooks.values():
        object.__setattr__(module, "__class__", _tapped_class(type(module)))
        _HOOKS[id(module)] = hook
    try:
        yield
    finally:
        for key in hooks:
            _HOOKS.pop(key, None)


def _submodules(model: nnx.Module) -> dict[str, nnx.Module]:
    """Path -> callable submodule (the model itself left out)."""
    return {_path(p): m for p, m in nnx.iter_modules(model) if p and callable(m)}


def _call(model: nnx.Module, x: Any, kwargs: Mapping[str, Any]) -> Any:
    """``model(x, **kwargs)``, past an ``nnx.jit`` on the model's own ``__call__``: every
    pass of a handle is jitted already, and the copies of the model that ``nnx.jit``
    makes would run its layers out of the hooks' sight."""
    call = type(model).__call__
    if type(call).__name__ == "JitWrapped" and type(call).__module__.startswith("flax.nnx"):
        return call.__wrapped__(model, x, **kwargs)
    return model(x, **kwargs)


def _is_bound(obj: Any) -> bool:
    """A Linen module with its variables, ``model.bind(variables)``."""
    return isinstance(obj, nn.Module) and obj.scope is not None


def _nnx_copy(static: _Static, state: Any) -> nnx.Module:
    # copy=True: anything the forward pass writes goes to fresh Variables.
    return nnx.merge(static.model, state, copy=True)


def _key_path(path: tuple[Any, ...]) -> str:
    """A pytree key path of an NNX state as a module path, ``'bn/mean'``."""
    parts = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path]
    return _path(tuple(parts[:-1] if parts and parts[-1] == "value" else parts))


# What a forward pass in training mode changes: batch statistics and rng counters.
_TRAINING_STATE = nnx.Any(nnx.BatchStat, nnx.RngState)


def _training_state(model: nnx.Module) -> list[tuple[str, Any]]:
    """(path, value) of every batch statistic and rng state of ``model``."""
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(model, _TRAINING_STATE))[0]
    return [(_key_path(path), value) for path, value in flat]


def _rewritten(static: _Static, state: Any, x: Any) -> list[str]:
    """The batch statistics and rng states a forward pass writes (new arrays, perhaps
    of the same values), found while tracing ``x``'s shape: a cheap first look."""
    written: list[str] = []

    def forward(state: Any, x: Array) -> None:
        model = _nnx_copy(static, state)
        before = _training_state(model)
        _call(model, x, static.kwargs)
        after = [value for _, value in _training_state(model)]
        written.extend(path for (path, old), new in zip(before, after) if old is not new)

    jax.eval_shape(forward, state, x)
    return written


def _training_evidence(static: _Static, state: Any, x: Array) -> tuple[Array, Array]:
    """Whether a forward pass on ``x`` changes each batch statistic's value, and whether
    its output depends on the rng state (the same pass with every rng stream moved on).
    Values, not writes: transforms such as ``nnx.split_rngs`` advance rng counters and
    write back batch statistics in inference mode too, without changing the output."""
    model = _nnx_copy(static, state)
    before = jax.tree.leaves(nnx.state(model, nnx.BatchStat))  # the values, before the pass
    out = _call(model, x, static.kwargs)
    after = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    changed = [~jnp.array_equal(a, b, equal_nan=True) for a, b in zip(before, after)]
    graphdef, rngs, rest = nnx.split(_nnx_copy(static, state), nnx.RngState, ...)

    def move_on(value: Array) -> Array:
        if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            return jax.random.fold_in(value, 1)
        return value + 1  # a stream's counter

    other = _call(nnx.merge(graphdef, jax.tree.map(move_on, rngs), rest), x, static.kwargs)
    random = [
        ~jnp.array_equal(a, b, equal_nan=True)
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(other))
    ]
    return jnp.stack(changed + [jnp.bool_(False)]), jnp.any(jnp.stack(random + [jnp.bool_(False)]))


_TRAINING_EVIDENCE = jax.jit(_training_evidence, static_argnums=0)


def _refuse_training_mode(static: _Static, state: Any, x: Any, name: str) -> None:
    """A ValueError when a forward pass on inputs like ``x`` updates batch statistics
    or draws random numbers: ``.eval()`` does not override a mode flag the call passes
    (``use_running_average=not train``), and in training mode each example's
    attribution depends on the rest of the batch, or on dropout noise. Tracing finds
    the state a pass writes; only when it writes any do two passes on a ramp image
    (compiled once per model and shape) look at the values: changed batch statistics,
    or an output that changes with the rng state."""
    struct = jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)
    try:
        if not _rewritten(static, state, struct):
            return
    except flax.errors.TraceContextError:
        # The call's keywords hold NNX state (an `nnx.Rngs` the model draws from),
        # which cannot be traced: such a handle runs uncompiled, and is not checked.
        return
    evidence = _TRAINING_EVIDENCE if static.compilable(state) else _training_evidence
    with jax.ensure_compile_time_eval():  # concrete, even when called inside a trace
        # A ramp, not zeros: its batch statistics differ from any running ones.
        size = int(np.prod(struct.shape))
        ramp = jnp.linspace(0.0, 1.0, size, dtype=jnp.float32).reshape(struct.shape)
        changed, random = evidence(static, state, ramp.astype(struct.dtype))
    stats = jax.tree_util.tree_flatten_with_path(
        nnx.state(_nnx_copy(static, state), nnx.BatchStat)
    )[0]
    found = [f"updates {_key_path(p)}" for (p, _), flag in zip(stats, np.asarray(changed)) if flag]
    if bool(random):
        found.append("gives another output with other random numbers (dropout)")
    if found:
        raise ValueError(
            f"{name} runs in training mode even on an .eval() copy: its forward pass "
            f"{', '.join(found)}; {_inference_hint(_nnx_copy(static, state), 'module')}"
        )


def _nnx_forward(
    static: _Static, state: Any, x: Array, delta: Any, *, layer: str | None, replace: bool
) -> tuple[Any, Any]:
    model = _nnx_copy(static, state)
    if layer is None:
        return _call(model, x, static.kwargs), None
    captured: list[Any] = []

    def hook(out, at_zero):
        captured.append(out)
        return out if delta is None else delta if replace else out + delta

    target = _submodules(model)[layer]
    with _tap({id(target): (target, hook)}):
        logits = _call(model, x, static.kwargs)
    return logits, captured[0]


def _nnx_zero_input_output(static: _Static, state: Any, x: Array, *, layer: str) -> Array:
    model = _nnx_copy(static, state)
    captured: list[Any] = []

    def hook(out, at_zero):
        captured.append(at_zero(layer))
        return out

    target = _submodules(model)[layer]
    with _tap({id(target): (target, hook)}):
        _call(model, x, static.kwargs)
    return captured[0]


def _nnx_perturbed(static: _Static, state: Any, x: Array, deltas: Mapping[str, Array]) -> Array:
    model = _nnx_copy(static, state)
    modules = _submodules(model)

    def adder(delta):
        return lambda out, at_zero: out + delta

    hooks = {id(modules[layer]): (modules[layer], adder(d)) for layer, d in deltas.items()}
    with _tap(hooks):
        return _call(model, x, static.kwargs)


_NNX = _Passes(_nnx_forward, _nnx_zero_input_output, _nnx_perturbed)


class _NnxModel(FlaxModel):
    """An NNX module, snapshotted, run as a fresh eval-mode copy per call."""

    def __init__(self, module: nnx.Module, kwargs: dict[str, Any]) -> None:
        snapshot = nnx.clone(module)  # new Variables: the user's module is not touched
        snapshot.eval()
        graphdef, state = nnx.split(snapshot)
        super().__init__(type(module).__name__, _Static(graphdef, kwargs), state, _NNX)

    def _refuse_training_mode(self, x: Array) -> None:
        _refuse_training_mode(self._static, self._weights, x, self._name)

    def _find_layers(self, x: jax.ShapeDtypeStruct) -> dict[str, _Layer]:
        calls: dict[str, list[Any]] = {}  # every output of every call, in call order
        names: list[str] = []

        found: dict[str, nnx.Module] = {}

        def forward(x):
            model = _nnx_copy(self._static, self._weights)
            modules = _submodules(model)
            names.extend(modules)
            found.update(modules)

            def recorder(name):
                def hook(out, at_zero):
                    calls.setdefault(name, []).append(
                        jax.ShapeDtypeStruct(out.shape, out.dtype) if _per_example(out, x) else None
                    )
                    return out

                return hook

            hooks = {id(m): (m, recorder(name)) for name, m in modules.items()}
            with _tap(hooks):
                return _call(model, x, self._static.kwargs)

        jax.eval_shape(forward, x)
        table = {}
        for name, outs in calls.items():
            arrays = [out for out in outs if out is not None]
            if arrays:
                shape = tuple(arrays[0].shape)
                table[name] = _Layer(
                    len(outs),
                    shape,
                    arrays[0].dtype,
                    module_type=type(found[name]),
                    not_an_image=_not_an_image(found[name], shape),
                )
        # Modules the forward pass never called: the hooks see only calls made on the
        # copy itself, not on the copies NNX transforms make of it.
        for name in names:
            if name not in calls:
                table[name] = _Layer(calls=0, shape=(), dtype=None, module_type=type(found[name]))
        return table


# Each backend's passes, jitted once for every handle whose static part allows it.
_COMPILED = {passes: _jitted(passes) for passes in (_LINEN, _NNX)}


# Construction.


def _called_function(model: Any, method: Any) -> Any:
    """The function a handle's pass calls as ``function(module, x, **keywords)``: the
    model's ``__call__``, or Linen's ``method=`` (a name or a function), unbound as
    ``Module.apply`` unbinds it; None where that is not known before the first call (a
    name that :meth:`setup` defines)."""
    if method is None:
        return type(model).__call__
    if isinstance(method, str):
        method = getattr(type(model), method, None)
        return method if callable(method) and not isinstance(method, nn.Module) else None
    if inspect.ismethod(method) and isinstance(method.__self__, nn.Module):
        return method.__func__
    return method


def _check_call_keywords(model: Any, keywords: Mapping[str, Any], method: Any = None) -> None:
    """A ValueError for a call keyword the model's method has no parameter for (say
    ``train=False`` for a ``__call__(self, x, training)``), naming the keywords it takes,
    and for a parameter after ``x`` without a default that no keyword gives (a
    ``__call__(self, x, train)`` given no ``train=``); a method with ``**kwargs``, or
    one that cannot be inspected, takes any keyword."""
    function = _called_function(model, method)
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    skipped = {p.name for p in positional[:2]}  # the module and x
    takes = [
        p.name
        for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skipped
    ]
    name = f"{type(model).__name__}.{getattr(function, '__name__', 'method')}"
    unknown = [key for key in keywords if key not in takes]
    if unknown:
        mode = _mode_attribute(model)
        attribute = (
            f" ({type(model).__name__} has a {mode[0]} attribute instead: set it to {mode[1]})"
            if mode is not None and mode[0] in unknown
            else ""
        )
        raise ValueError(
            f"flax_model: {name} takes no keyword {', '.join(f'{k}=' for k in unknown)}; "
            f"the keywords it takes: {', '.join(takes) if takes else 'none'}{attribute}"
        )
    missing = [
        p.name
        for p in parameters
        if p.name in takes and p.default is p.empty and p.name not in keywords
    ]
    if missing:
        given = ", ".join(f"{key}=..." for key in missing)
        args = "module" if isinstance(model, nnx.Module) else "module, variables"
        mode = (
            " (train=False or deterministic=True for inference)"
            if set(missing) & set(_MODE_ATTRIBUTES)
            else ""
        )
        raise ValueError(
            f"flax_model: {name} needs {', '.join(missing)}, and every pass calls it with "
            f"x alone: give the handle the value, e.g. flax_model({args}, {given}){mode}"
        )


def flax_model(model: Any, variables: Any = None, /, **apply_kwargs: Any) -> FlaxModel:
    """A :class:`FlaxModel` for a Linen module with its variables, or an NNX module.

    Linen: ``flax_model(module, variables, train=False)`` evaluates
    ``module.apply(variables, x, **apply_kwargs)`` (a bound module,
    ``module.bind(variables)``, comes without its variables); ``apply_kwargs`` may hold
    ``method=`` (a method name or function), ``mutable=False`` and the call's keywords,
    such as ``train=False`` or ``deterministic=True`` (attribution needs inference mode).

    NNX: ``flax_model(module, **call_kwargs)`` calls ``module(x, **call_kwargs)`` on an
    eval-mode copy of a snapshot taken now (see the module docstring): later training
    of ``module`` is not seen, so make a new handle after it.

    The keywords are the same for every call: methods evaluate the model on chunks,
    paths and perturbations of ``x``, so an array with one row per example of ``x``
    (a conditioning input) would not follow its examples. Make it part of ``x``, or
    explain one example (with its row bound) at a time.

    Raises:
      ValueError: ``model`` is neither; Linen without variables (or with its parameters
        alone, not ``{'params': ...}``) or NNX with them; a truthy ``mutable`` or
        ``capture_intermediates``, which make Linen's ``apply`` return (logits, state)
        and, for ``mutable``, update batch statistics; Linen ``rngs``, which would keep
        dropout on; a call keyword the method called (``__call__`` or Linen's
        ``method=``) has no parameter for, unless it takes ``**kwargs``, or a parameter
        after ``x`` without a default that no keyword gives. A model that runs in
        training mode anyway (updates batch statistics, needs or draws random numbers)
        is refused when it is first called, with the same advice: pass its inference
        flag, or set its mode attribute (a ``train`` field, an NNX ``training``).
    """
    if _is_bound(model):
        if variables is not None:
            raise ValueError(
                f"flax_model got the bound Linen module {type(model).__name__} and variables: "
                "a bound module carries its own, so pass it with the call's keywords alone, "
                "e.g. flax_model(module, train=False)"
            )
        model, variables = model.unbind()
    if isinstance(model, nn.Module):
        if variables is None:
            raise ValueError(
                f"flax_model needs the variables of the Linen module {type(model).__name__}: "
                "flax_model(module, variables, train=False)"
            )
        if not isinstance(variables, Mapping):
            raise ValueError(
                "flax_model takes the Linen variables as a mapping "
                f"({{'params': ..., 'batch_stats': ...}}), got {type(variables).__name__}"
            )
        if variables and "params" not in variables:
            raise ValueError(
                "flax_model takes all of the Linen module's variables, {'params': params, "
                "...} with 'batch_stats' where it has batch norm; got a mapping with keys "
                f"{sorted(map(str, variables))[:4]}: pass {{'params': params}} rather than "
                "the parameters alone"
            )
        kwargs = dict(apply_kwargs)
        if kwargs.get("rngs") is not None:
            raise ValueError(
                "flax_model does not take rngs=: a model that draws random numbers (dropout) "
                "is not one fixed function to explain; attribution needs inference mode: "
                "pass train=False (or the model's equivalent) instead"
            )
        kwargs.pop("rngs", None)
        for option in ("mutable", "capture_intermediates"):
            if kwargs.get(option):
                effect = " and update batch statistics" if option == "mutable" else ""
                raise ValueError(
                    f"flax_model does not take {option}={kwargs[option]!r}: it makes apply "
                    f"return (logits, state){effect}; attribution needs inference mode: "
                    "pass train=False (or the model's equivalent) and leave it unset"
                )
            kwargs.pop(option, None)
        call_keywords = {k: v for k, v in kwargs.items() if k != "method"}
        _check_call_keywords(model, call_keywords, kwargs.get("method"))
        return _LinenModel(model, variables, kwargs)
    if isinstance(model, nnx.Module):
        if variables is not None:
            raise ValueError(
                "an NNX module carries its own variables: call flax_model(module, "
                "**call_kwargs) without a variables argument"
            )
        _check_call_keywords(model, apply_kwargs)
        return _NnxModel(model, dict(apply_kwargs))
    raise ValueError(
        "flax_model takes a Linen module with its variables or an nnx.Module, got "
        f"{type(model).__name__}"
    )


class _TokenGrid(FlaxModel):
    """``inner`` with one token layer read as an image (see :func:`tokens_as_image`)."""

    def __init__(self, inner: FlaxModel, layer: str, grid: tuple[int, int] | None, prefix: int):
        self._name = inner._name
        self._tables = {}
        self._inner = inner
        self._layer = layer
        self._grid = grid
        self._prefix = prefix

    def __repr__(self) -> str:
        return f"tokens_as_image({self._inner!r}, {self._layer!r})"

    def _check_mode(self, x: Array) -> None:
        """Nothing to do: every pass goes through ``inner``, which checks."""

    def _grid_of(self, shape: tuple[int, ...]) -> tuple[tuple[int, int] | None, str | None]:
        """``((h, w), None)`` for a token layer of ``shape``, or ``(None, why not)``."""
        if len(shape) != 3:
            return None, (
                f"returns shape {shape}, not tokens (N, T, D): tokens_as_image reads a token "
                "layer as an image"
            )
        count = shape[1] - self._prefix
        if count <= 0:
            return None, (
                f"returns {shape[1]} tokens, no more than the {self._prefix} prefix tokens: "
                "check prefix_tokens="
            )
        after = f" after the {self._prefix} prefix tokens" if self._prefix else ""
        if self._grid is not None:
            if count != self._grid[0] * self._grid[1]:
                return None, (
                    f"returns {shape[1]} tokens: {count}{after} do not fill the "
                    f"{self._grid[0]} x {self._grid[1]} grid; check grid= and prefix_tokens="
                )
            return self._grid, None
        side = math.isqrt(count)
        if side * side != count:
            return None, (
                f"returns {shape[1]} tokens: {count}{after} make no square grid; give "
                "grid=(h, w), and prefix_tokens= for a class token before the patches"
            )
        return (side, side), None

    def _table(self, x: Array) -> dict[str, _Layer]:
        key = (tuple(x.shape), jnp.dtype(x.dtype))
        if key not in self._tables:
            table = dict(self._inner._table(x))
            info = table.get(self._layer)
            if info is None or _refusal(info) is not None:
                self._inner._check(x, self._layer)  # its own error names the layer
            grid, problem = self._grid_of(info.shape)
            if grid is None:
                table[self._layer] = dataclasses.replace(info, problem=problem)
            else:
                shape = (info.shape[0], *grid, info.shape[2])
                table[self._layer] = dataclasses.replace(info, shape=shape, not_an_image=None)
            self._tables[key] = table
        return self._tables[key]

    def _to_grid(self, tokens: Array) -> Array:
        n, _, d = tokens.shape
        h, w = self._grid_of(tokens.shape)[0]
        return tokens[:, self._prefix :].reshape(n, h, w, d)

    def _to_tokens(self, grid: Array, prefix: Array | None = None) -> Array:
        """``grid`` as tokens, after ``prefix`` (zeros when None)."""
        n, h, w, d = grid.shape
        if prefix is None:
            prefix = jnp.zeros((n, self._prefix, d), grid.dtype)
        return jnp.concatenate([prefix, grid.reshape(n, h * w, d)], axis=1)

    def _forward(
        self, x: Array, layer: str | None, delta: Array | None, replace: bool = False
    ) -> tuple[Any, Any]:
        if layer != self._layer:
            return self._inner._forward(x, layer, delta, replace)
        if delta is None or not replace:
            delta = None if delta is None else self._to_tokens(delta)
            logits, tokens = self._inner._forward(x, layer, delta)
            return logits, self._to_grid(tokens)
        if self._prefix:  # the prefix tokens keep their own values
            tokens = self._inner._forward(x, layer, None)[1]
            value = self._to_tokens(delta, tokens[:, : self._prefix])
        else:
            value = self._to_tokens(delta)
        logits, _ = self._inner._forward(x, layer, value, replace=True)
        return logits, delta

    def _zero_input_output(self, x: Array, layer: str) -> Array:
        out = self._inner._zero_input_output(x, layer)
        return self._to_grid(out) if layer == self._layer else out

    def _perturbed(self, x: Array, deltas: Mapping[str, Array]) -> Array:
        deltas = {
            layer: self._to_tokens(delta) if layer == self._layer else delta
            for layer, delta in deltas.items()
        }
        return self._inner._perturbed(x, deltas)


def _is_int(n: Any) -> bool:
    return isinstance(n, (int, np.integer)) and not isinstance(n, bool)


def tokens_as_image(
    model: Any, layer: str, *, grid: tuple[int, int] | None = None, prefix_tokens: int = 0
) -> FlaxModel:
    """A handle on which the token layer ``layer`` reads as an image, so that the CAMs
    and every other map over the image can be pointed at a vision transformer.

    ``layer`` returns tokens ``(N, T, D)``: ``prefix_tokens`` of them first (a class
    token, registers), then one per patch, row by row, as
    ``patches.reshape(N, h * w, D)`` lays out a patch embedding's ``(N, h, w, D)``
    output. On the new handle ``layer`` returns the patch tokens as ``(N, h, w, D)``;
    a ``delta`` or ``value`` given to :meth:`~FlaxModel.capture` or
    :meth:`~FlaxModel.logits_with` goes back to the patch tokens, and the prefix tokens
    keep their own values. It is pytorch-grad-cam's ``reshape_transform`` for ViTs,
    made two-way, so that the CAMs that change the layer's output (Ablation-CAM) work
    as the gradient ones do. Every other layer, and the model's output, are ``model``'s.
    With prefix tokens, :meth:`~FlaxModel.logits_with` runs the model once more to read
    their values.

    Args:
      model: a model handle (:func:`flax_model`), a ``(module, variables)`` tuple or an
        ``nnx.Module``.
      layer: the token layer's module path (``handle.layer_names(x)`` lists it).
      grid: ``(h, w)`` patches; None reads ``T - prefix_tokens`` as a square.
      prefix_tokens: tokens before the patches (1 for a ViT's class token).

    Raises:
      ValueError: ``grid`` is not two positive ints, ``prefix_tokens`` is negative, or
        ``model`` is a plain function; when first used on inputs, a layer that is not
        ``(N, T, D)`` or whose patch tokens do not fill the grid.
    """
    handle = as_flax_model(model, "tokens_as_image")
    if not isinstance(layer, str):
        raise ValueError(f"tokens_as_image: layer must be a module path string, got {layer!r}")
    if grid is not None:
        if (
            not isinstance(grid, (tuple, list))
            or len(grid) != 2
            or not all(_is_int(n) and n > 0 for n in grid)
        ):
            raise ValueError(
                f"tokens_as_image: grid must be (h, w), two positive ints, got {grid!r}"
            )
        grid = (int(grid[0]), int(grid[1]))
    if not (_is_int(prefix_tokens) and prefix_tokens >= 0):
        raise ValueError(
            "tokens_as_image: prefix_tokens must be an int >= 0 (1 for a class token), got "
            f"{prefix_tokens!r}"
        )
    return _TokenGrid(handle, layer, grid, int(prefix_tokens))


def as_flax_model(obj: Any, method_name: str) -> FlaxModel:
    """``obj`` as a :class:`FlaxModel`, for methods that look inside the model.

    A handle is returned as is, a ``(linen_module, variables)`` pair, a bound Linen
    module (``module.bind(variables)``) and an ``nnx.Module`` go through
    :func:`flax_model`; anything else (such as a plain model
    function, which has no layers to capture) is a ValueError naming ``method_name``.
    """
    if isinstance(obj, FlaxModel):
        return obj
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], nn.Module):
        return flax_model(*obj)
    if _is_bound(obj):
        return flax_model(obj)
    if isinstance(obj, nnx.Module):
        return flax_model(obj)
    raise ValueError(
        f"{method_name} looks inside the model: pass "
        "fmi_jax.attribution.flax_model(model, variables, train=False) (Linen) or "
        "flax_model(nnx_module), not a plain function"
    )


def layer_call(
    model: Any, x: Any, layer: str, method: str, batch_size: int | None = None
) -> tuple[FlaxModel, Array, tuple[int, ...]]:
    """What every method that looks at a layer checks first: the handle (a one-line
    error naming ``method`` for a plain function), ``x`` as a checked float input, and
    ``layer``'s output shape for it (a one-line error for a layer the handle cannot
    take), and ``batch_size``, all before anything is traced."""
    handle = as_flax_model(model, method)
    x = as_input(x)
    try:
        shape = handle.layer_shape(x, layer)
    except Exception:
        if x.ndim == 3 and _takes(handle, x[None], layer):
            raise ValueError(
                f"x of shape {x.shape} looks like one example without its batch axis: pass "
                "x[None] (a batch of one)"
            ) from None
        if x.ndim == 3 and _takes(handle, x[..., None], layer):
            raise InputLayoutError(missing_channel_axis(tuple(x.shape))) from None
        raise
    if batch_size is not None:
        as_count(batch_size, "batch_size")
    return handle, x, shape


def image_layer_call(
    model: Any, x: Any, layer: str, method: str, batch_size: int | None = None
) -> tuple[FlaxModel, Array, tuple[int, ...]]:
    """:func:`layer_call` for a method that draws ``layer``'s output as a map over the
    image: also a one-line error for a layer whose axes 1 and 2 are not image rows and
    columns (:meth:`FlaxModel.not_an_image`)."""
    handle, x, shape = layer_call(model, x, layer, method, batch_size)
    reason = handle.not_an_image(x, layer)
    if reason is not None:
        if len(shape) == 3:
            reason += (
                "; a vision transformer's patch tokens read as one through "
                "A.tokens_as_image(handle, layer, prefix_tokens=1 for a class token)"
            )
        elif len(shape) != 4:
            reason += (
                "; the layer methods (A.layer_integrated_gradients and the others, called "
                "directly) attribute to its units"
            )
        raise ValueError(f"{method}: layer {layer!r} {reason}")
    return handle, x, shape


def _takes(handle: FlaxModel, x: Array, layer: str) -> bool:
    """Whether ``handle`` runs on ``x`` as far as ``layer`` and maps it to one row of
    logits per example (a 1-D conv also runs on an extra leading axis, to no logits)."""
    try:
        handle.layer_shape(x, layer)
        logits = jax.eval_shape(handle, x)
    except Exception:  # noqa: BLE001  (any failure: it does not)
        return False
    return logits.ndim == 2 and logits.shape[0] == x.shape[0]


def activation_and_gradient(
    handle: FlaxModel,
    x: Array,
    target: Array | Callable[[Array], Array],
    layer: str,
    delta: Array | None = None,
) -> tuple[Array, Array]:
    """``A(x)`` at ``layer`` and ``dy_t/dA`` there, with the layer's output replaced by
    ``A(x) + delta`` for the rest of the pass (``delta`` zero when None), for a chunk of
    examples in one backward pass: the gradient of the batch sum of target logits is
    every example's own, because in inference mode examples do not interact. What the
    CAMs and the layer methods differentiate. ``target`` is a class per example, or a
    function from the chunk's float32 logits ``(B, classes)`` to one score per example
    ``(B,)`` (a contrast of classes, for instance)."""
    if delta is None:
        delta = jnp.zeros(handle.layer_shape(x, layer), jnp.float32)
    score = target if callable(target) else functools.partial(select_target, target=target)

    def target_sum(delta: Array) -> tuple[Array, Array]:
        logits, activation = handle.capture(x, layer, delta)
        return jnp.sum(score(logits.astype(jnp.float32))), activation

    gradient, activation = jax.grad(target_sum, has_aux=True)(delta)
    return activation.astype(jnp.float32), gradient.astype(jnp.float32)
