"""Training: state, pure steps, the Trainer, the loop, checkpoints and classification metrics."""

from fmi_jax.train.checkpoint import CheckpointMismatchError, Checkpoints
from fmi_jax.train.evaluate import evaluate_workdir, restore_model
from fmi_jax.train.loop import (
    NonFiniteLossError,
    TrainResult,
    evaluate_dataset,
    load_run_config,
    model_from_config,
    train_and_evaluate,
)
from fmi_jax.train.metrics import classification_report, markdown_table
from fmi_jax.train.steps import TrainState, create_train_state, eval_step, train_step
from fmi_jax.train.trainer import EpochStats, Trainer

__all__ = [
    "CheckpointMismatchError",
    "Checkpoints",
    "EpochStats",
    "NonFiniteLossError",
    "TrainResult",
    "TrainState",
    "Trainer",
    "classification_report",
    "create_train_state",
    "eval_step",
    "evaluate_dataset",
    "evaluate_workdir",
    "load_run_config",
    "markdown_table",
    "model_from_config",
    "restore_model",
    "train_and_evaluate",
    "train_step",
]
