"""Optimizers and learning-rate schedules built from a config.

Config fields read (all under the run config):
  optimizer:      'adamw' | 'adam' | 'sgd' (sgd uses `momentum`, Nesterov when `nesterov`)
  learning_rate:  peak learning rate
  schedule:       'constant' | 'cosine' | 'onecycle'
  warmup_epochs:  linear warm-up before 'constant' and 'cosine' (may be fractional);
                  'onecycle' has its own warm-up and ignores it
  weight_decay:   weight decay on kernels only (no decay of biases or batch-norm
                  scales, the usual practice since Loshchilov & Hutter 2019): for
                  'adamw' decoupled (torch.optim.AdamW), for 'sgd' an L2 term added
                  to the gradient before momentum (torch.optim.SGD's weight_decay,
                  not the decoupled SGDW); 'adam' has none (validation refuses it)
  grad_clip_norm: clip the global gradient norm when > 0
  frozen:         parameter paths ('autoencoder', 'autoencoder/encoder') that are
                  not updated at all: no step, no weight decay
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from absl import logging

__all__ = ["freeze", "make_optimizer", "make_schedule"]

SCHEDULES = ("constant", "cosine", "onecycle")
OPTIMIZERS = ("adamw", "adam", "sgd")


def make_schedule(config: Any, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate as a function of the optimizer step. A warm-up as long as the
    run is logged as a warning: it is legal, but the peak rate is then never used."""
    total = int(config.num_epochs * steps_per_epoch)
    warmup = int(round(config.get("warmup_epochs", 0.0) * steps_per_epoch))
    lr = float(config.learning_rate)
    name = config.get("schedule", "constant")
    if name in ("constant", "cosine") and total and warmup >= total:
        logging.warning(
            "config.warmup_epochs=%g is not shorter than config.num_epochs=%g: the whole "
            "run is warm-up, the learning rate rises towards %g for all of it%s; set a "
            "shorter warm-up (--config.warmup_epochs=0 for none)",
            config.warmup_epochs,
            config.num_epochs,
            lr,
            " and never decays" if name == "cosine" else "",
        )
    if name == "constant":
        if warmup:
            return optax.join_schedules(
                [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
            )
        return optax.constant_schedule(lr)
    if name == "cosine":
        if not warmup:
            return optax.cosine_decay_schedule(lr, max(total, 1))
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1))
    if name == "onecycle":
        return optax.cosine_onecycle_schedule(max(total, 1), lr)
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def _decay_mask(params: Any) -> Any:
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _path(keys) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in keys)


def freeze(
    tx: optax.GradientTransformation, frozen: tuple[str, ...]
) -> optax.GradientTransformation:
    """`tx` on every parameter except those under the paths in `frozen`, which get a
    zero update (so neither the gradient nor weight decay moves them)."""
    frozen = tuple(p.strip("/") for p in frozen if p.strip("/"))
    if not frozen:
        return tx

    def labels(params):
        paths = [_path(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        missing = [f for f in frozen if not any(p == f or p.startswith(f + "/") for p in paths)]
        if missing:
            tops = sorted({p.split("/")[0] for p in paths})
            raise ValueError(
                f"frozen={list(missing)} names no parameters; top-level modules: {tops}"
            )
        return jax.tree_util.tree_map_with_path(
            lambda k, _: (
                "frozen"
                if any(_path(k) == f or _path(k).startswith(f + "/") for f in frozen)
                else "train"
            ),
            params,
        )

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def make_optimizer(
    config: Any, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optax transform, schedule) for the config."""
    schedule = make_schedule(config, steps_per_epoch)
    name = config.get("optimizer", "adamw")
    wd = float(config.get("weight_decay", 0.0))
    parts = []
    clip = float(config.get("grad_clip_norm", 0.0))
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    if name == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=wd, mask=_decay_mask))
    elif name == "adam":
        parts.append(optax.adam(schedule))
    elif name == "sgd":
        if wd:
            parts.append(optax.add_decayed_weights(wd, mask=_decay_mask))
        parts.append(
            optax.sgd(
                schedule,
                momentum=config.get("momentum", 0.9),
                nesterov=config.get("nesterov", True),
            )
        )
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return freeze(optax.chain(*parts), tuple(config.get("frozen", ()) or ())), schedule
