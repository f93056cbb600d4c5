"""What a training run optimises and how it is scored: the loop's one varying part.

`train_and_evaluate` is the same loop for every study; a `Task` supplies the rest:

  loss(outputs, images, labels)              -> (scalar loss, {metric: scalar})
  eval_sums(outputs, images, labels, mask)   -> {name: array}, summed over batches
  report(sums, class_names)                  -> {"loss": float, metric: float, ...}

`outputs` is whatever the model returns for a batch of float images: logits for
a classifier, a dict with a `reconstruction` for an autoencoder. `mask` is 1 for
real and 0 for padding rows of the last evaluation batch.

Two tasks exist:
  'classification'  softmax cross-entropy (optional label smoothing); scored by
                    accuracy, precision, recall, F1 from the confusion matrix.
  'reconstruction'  mean squared error per pixel between the input and
                    `outputs["reconstruction"]`, plus `aux_coef` times the AuxK
                    loss (Gao et al. 2024, "Scaling and evaluating sparse
                    autoencoders", Sec. 2.4) when the model returns an
                    `aux_reconstruction` of its residual; scored by MSE, the
                    fraction of dead latents (never active on the split) and the
                    mean number of active latents per sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmi_jax.train import metrics as metrics_lib

__all__ = ["TASKS", "Task", "classification", "cross_entropy", "reconstruction", "task_from_config"]

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Task:
    """A training objective and its evaluation (see the module docstring).

    Attributes:
      name: 'classification' or 'reconstruction'.
      metric: the per-step training metric shown beside the loss ('accuracy', 'mse').
      train_metrics: every metric `loss` returns (each logged per epoch as train_<m>).
      record_metrics: the report keys logged per epoch as val_<m> and summarised as test_<m>.
      best_metric: the epoch record key that picks the best checkpoint.
      best_mode: 'max' or 'min' for `best_metric`.
    """

    name: str
    loss: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Metrics]]
    eval_sums: Callable[[Any, jax.Array, jax.Array, jax.Array], Metrics]
    report: Callable[[Mapping[str, np.ndarray], Sequence[str]], dict[str, Any]]
    metric: str
    train_metrics: tuple[str, ...]
    record_metrics: tuple[str, ...]
    best_metric: str
    best_mode: str = "max"


# --------------------------------------------------------------------------- classification
def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example cross-entropy with optional label smoothing (Szegedy et al. 2016)."""
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def classification(*, label_smoothing: float = 0.0) -> Task:
    """Softmax cross-entropy on logits; accuracy, precision, recall, F1."""

    def loss(logits, images, labels):
        del images
        value = cross_entropy(logits, labels, label_smoothing).mean()
        return value, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

    def eval_sums(logits, images, labels, mask):
        del images
        num_classes = logits.shape[-1]
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

    def report(sums, class_names):
        return metrics_lib.classification_report(
            sums["confusion"],
            loss=float(sums["loss_sum"] / sums["count"]),
            class_names=class_names,
        )

    return Task(
        name="classification",
        loss=loss,
        eval_sums=eval_sums,
        report=report,
        metric="accuracy",
        train_metrics=("accuracy",),
        record_metrics=("loss", "accuracy", "f1"),
        best_metric="val_accuracy",
        best_mode="max",
    )


# --------------------------------------------------------------------------- reconstruction
def _per_example_mse(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(a - b).reshape(a.shape[0], -1), axis=-1)


def reconstruction(*, aux_coef: float = 1.0 / 32) -> Task:
    """Mean squared error per pixel (+ `aux_coef` x AuxK loss); MSE, dead latents, activity.

    The AuxK term is the MSE between the model's `aux_reconstruction` (the top
    k_aux dead latents decoded) and the main reconstruction's residual, which is
    held fixed (`stop_gradient`): dead latents are pulled towards what the live
    ones miss. It is zero while no latent is dead (`outputs["num_dead"] == 0`).
    """

    def loss(outputs, images, labels):
        del labels
        recon = outputs["reconstruction"]
        mse = jnp.mean(jnp.square(images - recon))
        metrics = {"mse": mse, "active": jnp.mean(jnp.sum(outputs["codes"] != 0, axis=-1))}
        total = mse
        if outputs.get("aux_reconstruction") is not None:
            residual = jax.lax.stop_gradient(images - recon)
            aux = jnp.mean(jnp.square(residual - outputs["aux_reconstruction"]))
            aux = jnp.where(outputs["num_dead"] > 0, aux, 0.0)
            total = total + aux_coef * aux
            metrics.update(aux_mse=aux, dead=outputs["num_dead"].astype(jnp.float32))
        return total, metrics

    def eval_sums(outputs, images, labels, mask):
        del labels
        codes = outputs["codes"]
        active = (codes != 0) & (mask[:, None] > 0)
        return {
            "sq_err_sum": jnp.sum(_per_example_mse(images, outputs["reconstruction"]) * mask),
            "fired": jnp.sum(active, axis=0, dtype=jnp.int32),
            "active_sum": jnp.sum(active),
            "count": jnp.sum(mask),
        }

    def report(sums, class_names):
        del class_names
        count = float(sums["count"])
        if count == 0:
            raise ValueError("no examples were evaluated")
        fired = np.asarray(sums["fired"])
        mse = float(sums["sq_err_sum"]) / count
        return {
            "loss": mse,
            "mse": mse,
            "dead_fraction": float(np.mean(fired == 0)),
            "mean_active": float(sums["active_sum"]) / count,
            "count": int(count),
            "fired": fired.tolist(),
        }

    return Task(
        name="reconstruction",
        loss=loss,
        eval_sums=eval_sums,
        report=report,
        metric="mse",
        train_metrics=("mse", "active", "aux_mse", "dead"),
        record_metrics=("loss", "mse", "dead_fraction", "mean_active"),
        best_metric="val_mse",
        best_mode="min",
    )


TASKS: Mapping[str, Callable[..., Task]] = {
    "classification": classification,
    "reconstruction": reconstruction,
}


def task_from_config(config: Any) -> Task:
    """The task named by `config.task` (default 'classification') with `config.task_options`.

    Classification also reads the run's `label_smoothing`.
    """
    name = config.get("task", "classification")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    options = dict(config.get("task_options", {}) or {})
    if name == "classification":
        options.setdefault("label_smoothing", float(config.get("label_smoothing", 0.0)))
    try:
        return TASKS[name](**options)
    except TypeError as e:
        raise ValueError(f"task {name!r} does not take options {sorted(options)}: {e}") from None
