"""How far a benchmark row is from the machine's limit: the floating-point operations
of one call, counted from its jaxpr, against the best matmul throughput measured on
the same machine.

`count(fn, *args)` traces `fn` and sums 2 x multiply-adds over every `dot_general`
and `conv_general_dilated` whose result is used (dead code is left out, as XLA
removes it), the operations that carry nearly all the
arithmetic of a neural network and of its derivatives (elementwise operations,
reductions and the max-pool's comparisons are left out, so the count is a slight
underestimate). It walks nested jaxprs and multiplies a `scan`'s body by its length,
so chunked methods (`lax.map` over `batch_size` chunks) are counted whole; XLA's own
cost analysis counts a loop's body once. A `while` loop's trip count is unknown
before it runs: its body is counted once and `Count.exact` is False.

`matmul_peak()` is the machine's reachable float32 rate: the best of a few large
square matmuls, the operation every backend tunes most. A row's `peak_fraction` is
its FLOPs per second over that rate.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

__all__ = ["Count", "count", "matmul_peak"]


@dataclasses.dataclass(frozen=True)
class Count:
    """FLOPs of one call (2 x multiply-adds of its matmuls and convolutions); `exact`
    is False when a `while` loop's body was counted once."""

    flops: float
    exact: bool = True


def _dot_flops(eqn) -> float:
    lhs = eqn.invars[0].aval.shape
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    depth = math.prod(lhs[d] for d in lhs_contract)
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * depth


def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval.shape
    out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    # Per output element: the kernel's spatial size x its input features (per group).
    per_output = math.prod(rhs) / rhs[out_feature_dim]
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax_core.Jaxpr):
                yield item


def _live(jaxpr, used: list[bool]) -> list[tuple[Any, list[bool]]]:
    """The equations whose results reach a used output (dead code, which XLA removes
    before running, is not counted), each with which of its outputs are used."""
    needed = {v for v, u in zip(jaxpr.outvars, used) if u and not isinstance(v, jax_core.Literal)}
    live = []
    for eqn in reversed(jaxpr.eqns):
        outs = [not isinstance(v, jax_core.DropVar) and v in needed for v in eqn.outvars]
        if not any(outs) and not eqn.effects:
            continue
        live.append((eqn, outs))
        needed.update(v for v in eqn.invars if not isinstance(v, jax_core.Literal))
    return live[::-1]


def _jaxpr_flops(jaxpr, used: list[bool] | None = None) -> tuple[float, bool]:
    total, exact = 0.0, True
    for eqn, outs in _live(jaxpr, used if used is not None else [True] * len(jaxpr.outvars)):
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "scan":
            inner, inner_exact = _jaxpr_flops(eqn.params["jaxpr"].jaxpr)
            total += eqn.params["length"] * inner
            exact &= inner_exact
        elif name == "cond":
            branches = [_jaxpr_flops(b.jaxpr, outs) for b in eqn.params["branches"]]
            total += max(f for f, _ in branches)
            exact &= all(e for _, e in branches)
        else:
            if name == "while":
                exact = False
            for sub in _sub_jaxprs(eqn):
                # a call's outputs are the equation's: count only what is used
                inner_used = outs if len(sub.outvars) == len(outs) else None
                inner, inner_exact = _jaxpr_flops(sub, inner_used)
                total += inner
                exact &= inner_exact
    return total, exact


def count(fn, *args: Any) -> Count:
    """The FLOPs of `fn(*args)` (module docstring); traces, does not run."""
    flops, exact = _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
    return Count(flops, exact)


def matmul_peak(size: int = 2048, repeats: int = 5, min_sample_s: float = 0.02) -> float:
    """FLOP/s of the fastest of `repeats` samples of float32 `size x size` matmuls
    (jitted, after a warm-up call; at the caller's matmul precision): the rate this
    machine's backend reaches on its best-tuned operation. Each sample is a run of
    back-to-back calls lasting at least `min_sample_s`, so that on an accelerator,
    where one product takes a fraction of a millisecond, the launch overhead of a
    single call does not count as matmul time."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    jax.block_until_ready(matmul(a))
    start = time.perf_counter()
    jax.block_until_ready(matmul(a))
    calls = max(1, math.ceil(min_sample_s / max(time.perf_counter() - start, 1e-9)))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):  # queued in order: the last one done means all are
            out = matmul(a)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / calls)
    return 2.0 * size**3 / best
