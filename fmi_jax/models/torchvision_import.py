"""Loading torchvision checkpoints into the Flax models.

    variables = load_weights("mobilenet_v3_small-047dcff4.pth", MobileNetV3("small"))
    logits = model.apply(variables, images)  # NHWC float32, normalised as for torchvision

A checkpoint is a torchvision ``state_dict``: a ``.pth``/``.pt`` file (read with torch,
which is an optional extra imported only here, inside :func:`load_state_dict`) or a
``.npz`` holding the same keys as numpy arrays (read without torch).

The Flax modules are named after torchvision's (see :mod:`fmi_jax.models.mobilenet_v3`),
so each Flax variable's torch key follows from its path: ``features_3/block_1/conv/kernel``
is ``features.3.block.1.0.weight``. Conv weights go OIHW -> HWIO (a depthwise
``(C, 1, k, k)`` becomes flax's grouped ``(k, k, 1, C)``), linear weights
``(out, in)`` -> ``(in, out)``, batch norm ``weight/bias/running_mean/running_var`` ->
``scale/bias/mean/var``; ``num_batches_tracked`` is ignored. Conversion is strict: a
model variable without a key, a key the model does not use, or a shape that does not
fit is a :class:`ValueError` naming every such key.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

__all__ = ["load_state_dict", "load_weights", "mobilenet_v3_variables", "torch_key"]

_MODULE_NAMES = {"conv": "0", "bn": "1"}
_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_IGNORED_SUFFIXES = ("num_batches_tracked",)
_INDEXED = re.compile(r"^([A-Za-z]\w*?)_(\d+)$")


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torchvision ``state_dict`` as ``{key: float32 numpy array}``.

    ``.npz`` files are read with numpy (keys starting ``__``, e.g. a fixture's
    ``__input__``, are skipped); anything else is read with
    ``torch.load(map_location='cpu', weights_only=True)``, which needs torch; a
    training checkpoint's state_dict (under ``'state_dict'`` or, as torchvision's
    reference training script saves it, ``'model'``) is taken from it, and the
    ``module.`` prefix of a DistributedDataParallel model is removed.
    """
    path = os.fspath(path)
    if path.lower().endswith(".npz"):
        try:
            with np.load(path) as data:
                return {k: np.asarray(data[k]) for k in data.files if not k.startswith("__")}
        except (zipfile.BadZipFile, EOFError, ValueError) as error:
            raise ValueError(
                f"{path} is not a readable .npz of weights ({type(error).__name__}: {error}): "
                "it is truncated or another format; write it again with numpy.savez"
            ) from None
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(
            f"reading the PyTorch checkpoint {path!r} needs torch, an optional extra: "
            "pip install torch (the CPU build is enough), or convert the state_dict to "
            ".npz elsewhere"
        ) from err
    # torchvision's reference training script saves its argparse.Namespace beside the
    # weights, which weights_only loading refuses unless it is allowed by name.
    allow = getattr(getattr(torch, "serialization", None), "safe_globals", None)
    with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
        state = torch.load(path, map_location="cpu", weights_only=True)
    # A training checkpoint holds the state_dict under a key: 'state_dict' (Lightning
    # and others) or 'model' (torchvision's reference training script, beside
    # 'optimizer', 'lr_scheduler', 'epoch', 'args' and, with EMA, 'model_ema').
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping) and len(state) <= 8:
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state_dict")
    # Saved from DistributedDataParallel: every key starts with 'module.'.
    if state and all(str(key).startswith("module.") for key in state):
        state = {str(key)[len("module.") :]: value for key, value in state.items()}
    out = {}
    for key, value in state.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            if value.is_floating_point():
                value = value.float()
            value = value.numpy()
        out[key] = np.asarray(value)
    return out


def torch_key(collection: str, path: Sequence[str]) -> str:
    """The torchvision ``state_dict`` key of the Flax variable ``collection/path``."""
    *modules, leaf = path
    parts = []
    for name in modules:
        match = _INDEXED.match(name)
        if match:
            parts += [match.group(1), match.group(2)]
        else:
            parts.append(_MODULE_NAMES.get(name, name))
    if (collection, leaf) not in _LEAF_NAMES:
        raise ValueError(f"no torch name for the flax variable {collection}/{'/'.join(path)}")
    return ".".join(parts + [_LEAF_NAMES[(collection, leaf)]])


def _to_flax(value: np.ndarray, target_ndim: int) -> np.ndarray:
    if value.ndim == 4 and target_ndim == 4:  # conv OIHW -> HWIO (depthwise: C,1,k,k -> k,k,1,C)
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2 and target_ndim == 2:  # linear (out, in) -> (in, out)
        return value.T
    return value


def _variable_shapes(model: nn.Module, image_shape: Sequence[int]) -> dict[str, Any]:
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)


def mobilenet_v3_variables(
    state_dict: Mapping[str, Any],
    model: nn.Module,
    image_shape: Sequence[int] = (224, 224, 3),
) -> dict[str, Any]:
    """Flax variables ``{'params', 'batch_stats'}`` for ``model`` from a torchvision
    ``state_dict`` (of ``torchvision.models.mobilenet_v3_*``; any model whose Flax names
    mirror the torch ones converts the same way).

    Raises a one-line ValueError counting the missing keys (model variables the
    checkpoint lacks), unexpected keys (checkpoint entries the model does not use) and
    shape mismatches, e.g. when the checkpoint is of another variant, width or class
    count, and naming the first eight of each.
    """
    shapes = _variable_shapes(model, image_shape)
    state = {
        k: np.asarray(v)
        for k, v in state_dict.items()
        if not k.endswith(_IGNORED_SUFFIXES) and not k.startswith("__")
    }
    flat: dict[tuple[str, ...], np.ndarray] = {}
    used: set[str] = set()
    missing, mismatched = [], []
    for collection in ("params", "batch_stats"):
        for path, spec in traverse_util.flatten_dict(shapes.get(collection, {})).items():
            key = torch_key(collection, path)
            if key not in state:
                missing.append(key)
                continue
            used.add(key)
            value = _to_flax(state[key], len(spec.shape))
            if tuple(value.shape) != tuple(spec.shape):
                mismatched.append(
                    f"{key}: checkpoint {tuple(state[key].shape)} -> flax {tuple(value.shape)}"
                    f", model wants {tuple(spec.shape)} ({collection}/{'/'.join(path)})"
                )
                continue
            flat[(collection, *path)] = np.asarray(value, dtype=spec.dtype)
    unexpected = sorted(set(state) - used)
    if missing or unexpected or mismatched:
        parts = []
        if not used:
            parts.append(
                f"none of its {len(state)} entries is a variable of the model (is it a "
                "torchvision MobileNetV3 state_dict?)"
            )
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_first(sorted(missing), ', ')}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_first(unexpected, ', ')}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_first(mismatched, '; ')}")
        expected = {torch_key(c, p) for c in shapes for p in traverse_util.flatten_dict(shapes[c])}
        hint = _variant_hint(_feature_blocks(state), _feature_blocks(expected))
        raise ValueError(
            f"the state_dict does not fit {type(model).__name__}: {'; '.join(parts)}{hint}"
        )
    variables = traverse_util.unflatten_dict(flat)
    return jax.tree_util.tree_map(jnp.asarray, variables)


# The feature blocks (``features.<i>``) of torchvision's MobileNetV3 variants.
_VARIANT_BLOCKS = {17: "mobilenet_v3_large", 13: "mobilenet_v3_small"}


def _feature_blocks(keys: Iterable[str]) -> int:
    """How many ``features.<i>`` blocks the keys name (0: none)."""
    indices = [int(m.group(1)) for k in keys if (m := re.match(r"features\.(\d+)\.", k))]
    return max(indices) + 1 if indices else 0


def _variant_hint(checkpoint: int, model: int) -> str:
    """The likeliest fix when the checkpoint has another number of feature blocks than
    the model: the other MobileNetV3 variant (config.model.name)."""
    if not checkpoint or not model or checkpoint == model:
        return ""
    variant = _VARIANT_BLOCKS.get(checkpoint)
    if variant is None:
        return f" (the checkpoint has {checkpoint} feature blocks and the model {model})"
    return (
        f" (the checkpoint has {checkpoint} feature blocks, as {variant} has, and the "
        f"model {model}: set config.model.name to {variant})"
    )


def _first(items: Sequence[str], separator: str, count: int = 8) -> str:
    """The first ``count`` items and how many more: a wrong checkpoint lists hundreds."""
    more = f"{separator}... and {len(items) - count} more" if len(items) > count else ""
    return separator.join(items[:count]) + more


def load_weights(
    path: str | os.PathLike, model: nn.Module, image_shape: Sequence[int] = (224, 224, 3)
) -> dict[str, Any]:
    """:func:`load_state_dict` then :func:`mobilenet_v3_variables`."""
    return mobilenet_v3_variables(load_state_dict(path), model, image_shape)
