"""A tiny Linen classifier and its loss of one example, shared by the training-data
attribution tests (TracIn, influence functions): tanh, batch norm in inference mode
(statistics that are variables but not parameters) and a dense head."""

from __future__ import annotations

import flax.linen as nn
import jax

__all__ = ["MLP", "cross_entropy", "params_only"]


class MLP(nn.Module):
    """Inputs -> 5 tanh units -> batch norm (running statistics) -> 3 logits."""

    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(5, name="hidden")(x))
        x = nn.BatchNorm(use_running_average=True, name="bn")(x)
        return nn.Dense(3, name="head")(x)


def cross_entropy(variables, example):
    """The cross-entropy of one ``(x, label)`` example without its batch axis."""
    x, label = example
    return -jax.nn.log_softmax(MLP().apply(variables, x[None])[0])[label]


def params_only(path):
    """``select`` for the parameters, batch-norm statistics left out."""
    return path.startswith("params/")
