"""Random test inputs and initial variables, drawn by jitted programs.

Eagerly, every `jax.random` call and every layer initialiser of `model.init` is a
program of its own, and XLA:CPU's default LLVM optimisation spends seconds on each
threefry (random-bits) program. These draw the same values in one program each,
compiled at LLVM optimisation level 1, which takes a tenth of the time.

Only test *data* comes from here: the code under test is always compiled at XLA's
default level, the one users run. (Lower levels are not bit-for-bit the same program
in general; where a test's known answer depends on exact values, it computes them.)
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from fmi_jax.models import init_variables

__all__ = ["init", "jit", "normal", "randint", "uniform"]

LEVEL_1 = {"xla_backend_optimization_level": 1}


def jit(fn=None, **jit_kwargs):
    """`jax.jit` at LLVM level 1, for a function that draws test data (decorator too)."""
    if fn is None:
        return functools.partial(jit, **jit_kwargs)
    return jax.jit(fn, compiler_options=LEVEL_1, **jit_kwargs)


uniform = jit(jax.random.uniform, static_argnums=1, static_argnames="dtype")
normal = jit(jax.random.normal, static_argnums=1, static_argnames="dtype")
randint = jit(jax.random.randint, static_argnums=(1,), static_argnames="dtype")


def init(model: Any, x: Any, seed: int = 0, **kwargs: Any) -> Any:
    """`model.init(jax.random.key(seed), x, **kwargs)` as one program: the library's
    `init_variables`, whose compiled programs the code under test shares."""
    return init_variables(model, jax.random.key(seed), x, **kwargs)
