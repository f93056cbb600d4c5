"""TrainState and the pure training / evaluation steps.

    train_step(state, batch, rng, *, ...) -> (state, metrics)
    eval_step(state, batch) -> sums (loss, confusion matrix, count)

Both are pure; the loop binds the keyword options with `functools.partial` and
jits them at the call site (the state donated), the way big_vision does.
`batch` holds uint8 images (B, H, W, C) and int32 labels (B,); evaluation
batches also carry a float `mask` so the last, padded batch has the same shape.
"""

from __future__ import annotations

import inspect
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from fmi_jax import models
from fmi_jax.train import tasks as tasks_lib
from fmi_jax.train.augment import augment
from fmi_jax.train.input_pipeline import to_float
from fmi_jax.train.tasks import cross_entropy

__all__ = ["TrainState", "create_train_state", "cross_entropy", "eval_step", "train_step"]


class TrainState(train_state.TrainState):
    """flax TrainState plus batch-norm statistics (an empty dict when the model has none)."""

    batch_stats: Any = None


def create_train_state(
    model: nn.Module, key: jax.Array, image_shape: tuple[int, ...], tx: optax.GradientTransformation
) -> TrainState:
    _check_trainable(model)
    x = jnp.zeros((1, *image_shape), jnp.float32)
    variables = models.init_variables(model, key, x, train=False)
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
    )
    # flax starts `step` as a Python int; after one update it is a weak-typed array,
    # which would make the second call of the jitted step compile again.
    return state.replace(step=jnp.zeros((), jnp.int32))


def _check_trainable(model: Any) -> None:
    """A Linen module whose call takes the `train` flag the steps pass (True in training:
    dropout on, batch statistics updated; False in evaluation)."""
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"the training loop trains Linen modules (flax.linen.Module), got "
            f"{type(model).__name__}"
        )
    parameters = inspect.signature(type(model).__call__).parameters
    if "train" not in parameters and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    ):
        raise ValueError(
            f"{type(model).__name__}.__call__ must take a `train` keyword (True in the "
            "training steps: dropout on, batch statistics updated), e.g. "
            "def __call__(self, x, train: bool = False)"
        )


def global_norm(tree: Any) -> jax.Array:
    """L2 norm of all leaves of a pytree together."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def variables_of(state: TrainState) -> dict[str, Any]:
    """The variables dict `model.apply` wants (params, and batch_stats if any)."""
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    schedule: optax.Schedule,
    label_smoothing: float = 0.0,
    augmentation: dict[str, Any] | None = None,
    task: tasks_lib.Task | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on one batch.

    `task` (default: classification with `label_smoothing`) gives the loss and its
    metrics (accuracy for classification, on the augmented batch before the
    update). Always added: learning_rate, grad_norm (global L2 norm of the
    gradient), param_norm (after the update).
    """
    task = task or tasks_lib.classification(label_smoothing=label_smoothing)
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
        outputs, updates = out if has_bn else (out, {})
        loss, task_metrics = task.loss(outputs, images, labels)
        return loss, (task_metrics, updates)

    (loss, (task_metrics, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads)
    if has_bn:
        new_state = new_state.replace(batch_stats=updates["batch_stats"])
    metrics = {
        "loss": loss,
        **task_metrics,
        "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
        "grad_norm": global_norm(grads),
        "param_norm": global_norm(new_state.params),
    }
    return new_state, metrics


def eval_step(
    state: TrainState, batch: dict[str, jax.Array], task: tasks_lib.Task | None = None
) -> dict[str, jax.Array]:
    """The task's sums over a (masked) batch (default, classification: cross-entropy,
    confusion matrix, example count; confusion[i, j] counts examples of true class i
    predicted as class j)."""
    task = task or tasks_lib.classification()
    images = to_float(batch["image"])
    outputs = state.apply_fn(variables_of(state), images, train=False)
    return task.eval_sums(outputs, images, batch["label"], batch["mask"])
