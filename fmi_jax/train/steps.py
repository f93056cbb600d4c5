"""TrainState and the pure training / evaluation steps.

    train_step(state, batch, rng, *, ...) -> (state, metrics)
    eval_step(state, batch) -> sums (loss, confusion matrix, count)

Both are pure; the loop binds the keyword options with `functools.partial` and
jits them at the call site (the state donated), the way big_vision does.
`batch` holds uint8 images (B, H, W, C) and int32 labels (B,); evaluation
batches also carry a float `mask` so the last, padded batch has the same shape.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from fmi_jax.train.augment import augment
from fmi_jax.train.input_pipeline import to_float

__all__ = ["TrainState", "create_train_state", "eval_step", "train_step"]


class TrainState(train_state.TrainState):
    """flax TrainState plus batch-norm statistics (an empty dict when the model has none)."""

    batch_stats: Any = None


def create_train_state(
    model: nn.Module, key: jax.Array, image_shape: tuple[int, ...], tx: optax.GradientTransformation
) -> TrainState:
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
    )
    # flax starts `step` as a Python int; after one update it is a weak-typed array,
    # which would make the second call of the jitted step compile again.
    return state.replace(step=jnp.zeros((), jnp.int32))


def global_norm(tree: Any) -> jax.Array:
    """L2 norm of all leaves of a pytree together."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def variables_of(state: TrainState) -> dict[str, Any]:
    """The variables dict `model.apply` wants (params, and batch_stats if any)."""
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example cross-entropy with optional label smoothing (Szegedy et al. 2016)."""
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    schedule: optax.Schedule,
    label_smoothing: float = 0.0,
    augmentation: dict[str, Any] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on one batch.

    Metrics: loss, accuracy (on the augmented batch, before the update),
    learning_rate, grad_norm (global L2 norm of the gradient), param_norm (after
    the update).
    """
    k_augment, k_dropout = jax.random.split(rng)
    images = to_float(batch["image"])
    if augmentation:
        images = augment(images, k_augment, **augmentation)
    labels = batch["label"]
    has_bn = bool(state.batch_stats)

    def loss_fn(params):
        variables = (
            {"params": params, "batch_stats": state.batch_stats} if has_bn else {"params": params}
        )
        out = state.apply_fn(
            variables,
            images,
            train=True,
            rngs={"dropout": k_dropout},
            mutable=["batch_stats"] if has_bn else False,
        )
        logits, updates = out if has_bn else (out, {})
        return cross_entropy(logits, labels, label_smoothing).mean(), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads)
    if has_bn:
        new_state = new_state.replace(batch_stats=updates["batch_stats"])
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
        "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
        "grad_norm": global_norm(grads),
        "param_norm": global_norm(new_state.params),
    }
    return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Sums over a (masked) batch: cross-entropy, confusion matrix, example count.

    confusion[i, j] counts examples of true class i predicted as class j.
    """
    logits = state.apply_fn(variables_of(state), to_float(batch["image"]), train=False)
    num_classes = logits.shape[-1]
    mask = batch["mask"]
    labels = batch["label"]
    preds = jnp.argmax(logits, -1)
    confusion = (
        jnp.zeros((num_classes, num_classes), jnp.int32)
        .at[labels, preds]
        .add(mask.astype(jnp.int32))
    )
    return {
        "loss_sum": jnp.sum(cross_entropy(logits, labels) * mask),
        "confusion": confusion,
        "count": jnp.sum(mask),
    }
