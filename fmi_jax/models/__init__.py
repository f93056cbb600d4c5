"""Flax linen models and a name registry.

    model = get_model("cnn_fmnist", dropout=0.2)

Every model maps float32 images in [0, 1] (NHWC) to logits and takes a keyword
`train` flag (dropout, batch-norm statistics). Conv blocks are named submodules
so attribution methods can capture their outputs by name.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.models import resnet as resnet_lib
from fmi_jax.models.cnn import ConvBlock, SimpleCNN
from fmi_jax.models.mobilenet_v3 import MobileNetV3
from fmi_jax.models.resnet import ResidualBlock, ResNet
from fmi_jax.models.sparse_autoencoder import (
    KSparseAutoencoder,
    SparseAutoencoderClassifier,
    SparseCodeClassifier,
    top_k_mask,
)

__all__ = [
    "ConvBlock",
    "KSparseAutoencoder",
    "MobileNetV3",
    "ResNet",
    "ResidualBlock",
    "SIZE_ARGUMENTS",
    "SimpleCNN",
    "SparseAutoencoderClassifier",
    "SparseCodeClassifier",
    "WIDTH_ARGUMENTS",
    "argument_problem",
    "available_models",
    "get_model",
    "init_variables",
    "jit_draws",
    "register_model",
    "top_k_mask",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: registers a factory `(**kwargs) -> nn.Module` under `name`."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return wrap


def available_models() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds the model registered as `name`, with `kwargs` overriding its preset."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(available_models())}")
    factory = _REGISTRY[name]
    accepted = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(
                f"model {name!r} does not take {', '.join(unknown)}; "
                f"it takes: {', '.join(accepted)}"
            )
    if factory.__module__ == __name__:  # the built-in models; a user's own decide for themselves
        _check_arguments(name, kwargs)
    return factory(**kwargs)


# The arguments the registered models share, checked before a model is built: a size of
# 0 would fail deep inside Flax's initialisers (a division by a fan-in of 0), a dropout
# rate of 1 or more trains a dead network, and an unknown dtype name fails in numpy.
# Training configs are checked against the same rules before their data is loaded.
SIZE_ARGUMENTS = (
    "num_classes",
    "kernel_size",
    "filters",
    "num_blocks",
    "conv1_filters",
    "conv2_filters",
    "filter_size",
    "dense_width",
    "latents",
)
WIDTH_ARGUMENTS = ("features", "dense", "hidden")


def argument_problem(field: str, value: Any) -> str | None:
    """What is wrong with ``value`` as the built-in models' argument ``field`` (one of
    ``SIZE_ARGUMENTS``, ``WIDTH_ARGUMENTS``, ``dropout`` or ``dtype``), e.g. "dropout
    must be a rate in [0, 1), got 1.5"; None when nothing is, or for any other field."""

    def is_size(v: Any) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1

    if field in SIZE_ARGUMENTS and not is_size(value):
        return f"{field} must be an integer >= 1, got {value!r}"
    if field in WIDTH_ARGUMENTS and (
        isinstance(value, (str, bytes))
        or not isinstance(value, (Sequence, np.ndarray))
        or not all(is_size(w) for w in value)
    ):
        return f"{field} must be a list of integers >= 1, got {value!r}"
    if field == "dropout" and value is not None:
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < 1):
            return f"dropout must be a rate in [0, 1), got {value!r}"
    if field == "dtype" and not _is_float_dtype(value):
        return f"dtype must be a floating dtype such as 'float32' or 'bfloat16', got {value!r}"
    return None


def _check_arguments(name: str, kwargs: dict[str, Any]) -> None:
    """A ValueError naming the first argument of ``kwargs`` that `argument_problem`
    finds wrong."""
    for field, value in kwargs.items():
        problem = argument_problem(field, value)
        if problem is not None:
            raise ValueError(f"model {name!r}: {problem}")


def _is_float_dtype(value: Any) -> bool:
    try:
        return bool(jnp.issubdtype(jnp.dtype(value), jnp.floating))
    except TypeError:
        return False


# XLA:CPU's default LLVM optimisation spends most of an initialisation's compile time on
# the threefry code of its random draws; level 1 compiles the same HLO several times
# faster. For the library's models the variables come out bit for bit as eager
# `model.init` draws them on XLA:CPU (observed: scripts/time_init.py; checked for a
# CNN by tests/test_models.py).
_CPU_INIT_OPTIONS = {"xla_backend_optimization_level": 1}


def _init(model: nn.Module, kwargs: tuple[tuple[str, Any], ...], key: jax.Array, *inputs: Any):
    return model.init(key, *inputs, **dict(kwargs))


def _tracing(*trees: Any) -> bool:
    """True inside a transformation (jit, eval_shape, scan, vmap of the inputs, ...),
    where jit options are refused and `model.init` is traced anyway."""
    leaves = jax.tree.leaves(trees)
    return any(isinstance(x, jax.core.Tracer) for x in [jnp.zeros(()), *leaves])


def init_variables(model: nn.Module, key: jax.Array, *inputs: Any, **kwargs: Any) -> Any:
    """``model.init(key, *inputs, **kwargs)``, compiled as one program.

    Called eagerly, ``model.init`` compiles every initialiser of every distinct shape
    as a program of its own; one program (at LLVM level 1 on CPU) makes the first
    initialisation of the default CNN in a process several times faster
    (docs/performance.md), and an equal model initialises again without compiling.
    ``inputs`` are arrays (they are traced); options such as ``train=False`` go in
    ``kwargs``. A custom initialiser can round differently once XLA fuses it: the
    sparse autoencoder's unit-norm rows ``w / ||w||`` come out within a few float32
    ulps (3e-8) of their eager values, and as accurate. Inside a transformation this
    is plain ``model.init``.
    """
    if _tracing(key, inputs, kwargs):
        return model.init(key, *inputs, **kwargs)
    frozen = tuple(sorted(kwargs.items()))
    try:
        hash((model, frozen))
    except TypeError:  # a field or option that cannot be a static argument
        return jit_draws(functools.partial(model.init, **kwargs))(key, *inputs)
    return _compiled_init(model, frozen, key, *inputs)


def jit_draws(fn: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
    """``jax.jit(fn, **jit_kwargs)`` for a program that draws random numbers.

    On XLA:CPU the program compiles at LLVM level 1, as :func:`init_variables` does:
    the default level spends about a second on each threefry program of a new shape,
    level 1 a fraction of it, and ``jax.random``'s draws come out bit for bit as
    eagerly. Other arithmetic in ``fn`` is fused as in any jit and can round
    differently from eager operations. Elsewhere, and when called inside a
    transformation (where jit options are refused), it is plain ``jax.jit``.
    """
    plain = jax.jit(fn, **jit_kwargs)
    cpu = jax.jit(fn, compiler_options=_CPU_INIT_OPTIONS, **jit_kwargs)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if jax.default_backend() != "cpu" or _tracing(args, kwargs):
            return plain(*args, **kwargs)
        return cpu(*args, **kwargs)

    return call


# `model` and the keyword arguments are static: equal models reuse one program.
_compiled_init = jit_draws(_init, static_argnums=(0, 1))


@register_model("simple_cnn")
def _simple_cnn(**kwargs: Any) -> nn.Module:
    """Any SimpleCNN; every field is a keyword."""
    fields = set(SimpleCNN.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"SimpleCNN has no field {', '.join(unknown)}; fields: {', '.join(sorted(fields))}"
        )
    return SimpleCNN(**kwargs)


@register_model("cnn_fmnist")
def _cnn_fmnist(
    features=(32, 64, 128),
    kernel_size=3,
    pool=None,
    dense=(256,),
    dropout=0.3,
    batch_norm=True,
    num_classes=10,
    dtype="float32",
) -> nn.Module:
    """The Fashion-MNIST CNN: three conv blocks, each pooled (``pool``: one True/False
    per block; every block by default), then fully connected layers."""
    return SimpleCNN(
        features=tuple(features),
        kernel_size=kernel_size,
        pool=(True,) * len(features) if pool is None else tuple(pool),
        dense=tuple(dense),
        dropout=dropout,
        batch_norm=batch_norm,
        num_classes=num_classes,
        dtype=dtype,
    )


@register_model("cnn_mnist")
def _cnn_mnist(
    features=(32, 64), kernel_size=5, dense=(128,), dropout=0.5, num_classes=10, dtype="float32"
) -> nn.Module:
    """The MNIST CNN: two conv layers, two max-pools, two fully connected layers."""
    return SimpleCNN(
        features=tuple(features),
        kernel_size=kernel_size,
        pool=(True,) * len(features),
        dense=tuple(dense),
        dropout=dropout,
        batch_norm=False,
        num_classes=num_classes,
        dtype=dtype,
    )


@register_model("cnn_tunable")
def _cnn_tunable(
    conv1_filters=32,
    conv2_filters=64,
    filter_size=3,
    dense_width=128,
    dropout=0.5,
    batch_norm=False,
    num_classes=10,
    dtype="float32",
) -> nn.Module:
    """The tuning study's CNN: conv(conv1_filters) -> pool -> conv(conv2_filters) -> pool -> dense."""
    return SimpleCNN(
        features=(conv1_filters, conv2_filters),
        kernel_size=filter_size,
        pool=(True, True),
        dense=(dense_width,),
        dropout=dropout,
        batch_norm=batch_norm,
        num_classes=num_classes,
        dtype=dtype,
    )


@register_model("cifarnet")
def _cifarnet(
    features=(6, 16), kernel_size=5, dense=(120, 84), num_classes=10, dtype="float32"
) -> nn.Module:
    """The PyTorch CIFAR-10 tutorial network ("Training a classifier"): conv 5x5 (6) ->
    ReLU -> max-pool -> conv 5x5 (16) -> ReLU -> max-pool -> fc 120 -> fc 84 -> 10, with
    unpadded convolutions (32x32 -> 28 -> 14 -> 10 -> 5, so fc1 sees 16 x 5 x 5 = 400)."""
    return SimpleCNN(
        features=tuple(features),
        kernel_size=kernel_size,
        pool=(True,) * len(features),
        dense=tuple(dense),
        dropout=0.0,
        batch_norm=False,
        num_classes=num_classes,
        dtype=dtype,
        padding="VALID",
    )


@register_model("resnet")
def _resnet(
    num_blocks=3,
    filters=64,
    pre_activation=False,
    dropout=0.0,
    num_classes=10,
    dtype="float32",
    padding="same",
) -> nn.Module:
    """The tuning study's ResNet: stem, `num_blocks` residual blocks in three stages,
    global average pooling, dense head (see fmi_jax/models/resnet.py; `padding`
    'symmetric' pads as PyTorch does)."""
    if padding not in resnet_lib.PADDINGS:
        raise ValueError(
            f"config.model.padding must be one of {resnet_lib.PADDINGS}, got {padding!r}"
        )
    return ResNet(
        num_blocks=num_blocks,
        filters=filters,
        pre_activation=pre_activation,
        dropout=dropout,
        num_classes=num_classes,
        dtype=dtype,
        padding=padding,
    )


@register_model("mobilenet_v3_large")
def _mobilenet_v3_large(
    width_mult=1.0, num_classes=1000, dropout=0.2, dtype="float32"
) -> nn.Module:
    """MobileNetV3-Large as torchvision builds it (ImageNet head by default); see
    fmi_jax/models/mobilenet_v3.py, and fmi_jax/models/torchvision_import.py for its
    weights."""
    return MobileNetV3(
        variant="large",
        width_mult=width_mult,
        num_classes=num_classes,
        dropout=dropout,
        dtype=dtype,
    )


@register_model("mobilenet_v3_small")
def _mobilenet_v3_small(
    width_mult=1.0, num_classes=1000, dropout=0.2, dtype="float32"
) -> nn.Module:
    """MobileNetV3-Small as torchvision builds it (ImageNet head by default)."""
    return MobileNetV3(
        variant="small",
        width_mult=width_mult,
        num_classes=num_classes,
        dropout=dropout,
        dtype=dtype,
    )


_SAE_FIELDS = set(KSparseAutoencoder.__dataclass_fields__) - {"parent", "name"}


def _autoencoder(fields: dict[str, Any]) -> KSparseAutoencoder:
    unknown = sorted(set(fields) - _SAE_FIELDS)
    if unknown:
        raise ValueError(
            f"KSparseAutoencoder has no field {', '.join(unknown)}; "
            f"fields: {', '.join(sorted(_SAE_FIELDS))}"
        )
    if "image_shape" in fields:
        fields = {**fields, "image_shape": tuple(fields["image_shape"])}
    return KSparseAutoencoder(**fields)


@register_model("k_sparse_autoencoder")
def _k_sparse_autoencoder(**fields: Any) -> nn.Module:
    """The k-sparse autoencoder (784 -> 1024, top-50, linear decoder by default);
    every KSparseAutoencoder field is a keyword."""
    return _autoencoder(fields)


@register_model("sae_classifier")
def _sae_classifier(
    hidden=(512, 256), dropout=0.3, num_classes=10, **autoencoder: Any
) -> nn.Module:
    """The MLP classifier on the k-sparse codes, composed with the encoder so it maps
    images to logits; the remaining keywords are the autoencoder's fields."""
    return SparseAutoencoderClassifier(
        autoencoder=_autoencoder(autoencoder),
        classifier=SparseCodeClassifier(
            hidden=tuple(hidden), dropout=dropout, num_classes=num_classes
        ),
    )
