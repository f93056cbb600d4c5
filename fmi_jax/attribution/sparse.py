"""Attribution through a sparse code: decoder-weighted attribution.

For a model that classifies the sparse code of an autoencoder,
``s(x) = g(z(x))`` with ``z(x)`` the k-sparse code (k active units) and
``d_j`` the decoder atom of unit j, decoder-weighted attribution explains the
class score in two steps:

1. Code space. Each active unit's contribution to the target score is its
   activation times the score's gradient with respect to it (gradient x input
   in code space, Shrikumar et al. 2016):

       c_j(x) = z_j(x) * d g_t(z) / d z_j |_{z = z(x)}         (0 for inactive units)

   For a classifier linear in the code, ``g_t(z) = w_t . z + b_t``, this is exact:
   ``c_j = w_tj z_j`` and ``sum_j c_j = s_t(x) - g_t(0)``.

2. Pixel space. Each contribution is spread over the pixels by the unit's atom,
   the pattern that unit adds to the reconstruction:

       A(x)_p = sum_j c_j(x) * a_j(p)

   with ``a_j = d_j`` (``normalize='none'``: the literal "contribution times atom",
   signed by both) or ``a_j = |d_j| / ||d_j||_1`` (``normalize='l1'``, the default:
   every unit's contribution is shared among the pixels its atom draws, in
   proportion to how strongly it draws them, so ``sum_p A(x)_p = sum_j c_j``; for a
   linear classifier that is ``s_t(x) - g_t(0)``, a completeness property like IG's).

The method needs the model's inside: a Linen model handle
(``flax_model(module, variables)``, or the ``(module, variables)`` tuple) whose module
has the methods ``encode(x)``, ``classify_codes(z)`` and ``decoder_atoms()`` (as
:class:`fmi_jax.models.SparseAutoencoderClassifier` has). It follows the idea of
explaining a prediction through dictionary features (Bricken et al. 2023, "Towards
Monosemanticity"), made a pixel map through the decoder.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fmi_jax.attribution.core import (
    Array,
    Target,
    as_input,
    refuse_baseline,
    resolve_target,
    select_target,
)
from fmi_jax.attribution.handle import as_flax_model

__all__ = ["NORMALIZATIONS", "code_contributions", "decoder_weighted"]

NORMALIZATIONS = ("l1", "none")


def _module_and_variables(model: Any, name: str) -> tuple[Any, Any]:
    """The Linen module and variables behind a handle, checked for the sparse-code
    methods."""
    handle = as_flax_model(model, name)
    module, variables = getattr(handle, "module", None), getattr(handle, "variables", None)
    if variables is None:
        raise ValueError(f"{name} needs a Linen model handle: flax_model(module, variables)")
    _check_model(module)
    return module, variables


def _check_model(model: Any) -> None:
    missing = [m for m in ("encode", "classify_codes", "decoder_atoms") if not hasattr(model, m)]
    if missing:
        raise ValueError(
            f"decoder_weighted needs a sparse-code model with encode, classify_codes and "
            f"decoder_atoms; {type(model).__name__} lacks {', '.join(missing)} "
            "(use fmi_jax.models.SparseAutoencoderClassifier)"
        )


def code_contributions(model: Any, x: Array, target: Target = None) -> Array:
    """``c_j(x) = z_j * d g_t / d z_j``, shape ``(N, latents)`` (step 1 above)."""
    model, variables = _module_and_variables(model, "code_contributions")
    x = as_input(x)

    def fn(inputs):
        return model.apply(variables, inputs)

    target = resolve_target(fn, x, target)
    codes = model.apply(variables, x, method=model.encode)

    def score(z):
        logits = model.apply(variables, z, method=model.classify_codes)
        return jnp.sum(select_target(logits, target))

    # Examples do not interact in inference, so one backward pass of the batch sum
    # gives every example's gradient (as in core.target_logit_grad).
    return codes * jax.grad(score)(codes)


def decoder_weighted(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    normalize: str = "l1",
) -> Array:
    """Decoder-weighted attribution ``A(x)_p = sum_j c_j(x) a_j(p)`` (module docstring).

    Args:
      model: ``flax_model(module, variables)`` (or ``(module, variables)``) of a Linen
        module with ``encode``, ``classify_codes`` and ``decoder_atoms``.
      x: images ``(N, H, W, C)``.
      target: class per example ``(N,)``, one int, or ``None`` for the predicted class.
      key: unused (deterministic); accepted so every method has one signature.
      baseline: must be None (the reference is the empty code, implicitly).
      batch_size: unused: one pass through the code layer is cheap; accepted so every
        method has one signature.
      normalize: ``'l1'`` (atoms as ``|d_j| / ||d_j||_1``: the map sums to the
        code-space total) or ``'none'`` (signed atoms).

    Returns:
      float32 maps shaped like ``x``.
    """
    refuse_baseline(baseline, "decoder_weighted")
    x = as_input(x)
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    contributions = code_contributions(model, x, target)
    model, variables = _module_and_variables(model, "decoder_weighted")
    atoms = model.apply(variables, method=model.decoder_atoms)
    flat = atoms.reshape(atoms.shape[0], -1)
    if flat.shape[1] != x[0].size:
        raise ValueError(
            f"decoder atoms have {flat.shape[1]} pixels but inputs {x.shape[1:]} have {x[0].size}"
        )
    if normalize == "l1":
        mass = jnp.sum(jnp.abs(flat), axis=1, keepdims=True)
        flat = jnp.abs(flat) / jnp.maximum(mass, jnp.finfo(flat.dtype).tiny)
    return (contributions @ flat).reshape(x.shape).astype(jnp.float32)
