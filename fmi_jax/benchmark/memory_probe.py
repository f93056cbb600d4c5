"""Peak memory of one explanation call, each side in a fresh process.

    python -m fmi_jax.benchmark.memory_probe '<spec as JSON>'

Both frameworks in one process share its pages: after the timing, each side's
allocator holds pools the other freed, and a peak measured there says little. The
benchmark (`runner.run_benchmark`, `config.memory_probe`) therefore starts this module
once per side and row: it builds the model, the images and the call, records the
resident set size (RSS), runs the call once (compilation included: a user pays it)
and reports the peak RSS increase, sampled every 2 ms, and on a GPU the device's
peak (jax's `peak_bytes_in_use`, torch's `max_memory_allocated`), which in a fresh
process are this call's own.

spec: {"side": "fmi_jax" | "pytorch", "method": name, "options": {...}, "batch": n,
       "config": {"model_workdir", "model_name", "data_name", "torch_device"}}
The last line on stdout is the result as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["probe", "probe_in_subprocess"]


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from fmi_jax.benchmark import runner

    if spec["side"] not in ("fmi_jax", "pytorch"):  # before building anything
        raise ValueError(f"side must be 'fmi_jax' or 'pytorch', got {spec['side']!r}")
    config = ml_collections.ConfigDict(spec["config"])
    name, options, batch = spec["method"], dict(spec.get("options") or {}), int(spec["batch"])
    model, variables, _ = runner._model(config)
    fn = jax.jit(lambda x: model.apply(variables, x))
    x = runner._images(config, batch)
    t = np.asarray(jnp.argmax(fn(x), -1)).astype(np.int64)
    device = None
    if spec["side"] == "fmi_jax":
        if name in runner.METRICS:
            metric = runner.jax_metric_call(name, fn, options, model, variables)
            xj, tj = jnp.asarray(x), jnp.asarray(t)
            if name == "infidelity":
                a = runner._infidelity_attributions(fn, options, model, variables, xj, tj)
                call = lambda: jax.block_until_ready(metric(xj, tj, jnp.asarray(a)))
            else:
                call = lambda: jax.block_until_ready(metric(xj, tj))
        else:
            explain = runner.jax_method_call(name, fn, options, model, variables)
            xj, tj = jnp.asarray(x), jnp.asarray(t)
            call = lambda: jax.block_until_ready(explain(xj, tj))
    else:
        import torch

        from fmi_jax.benchmark import torch_side

        torch.set_num_threads(os.cpu_count() or 1)
        device = runner.torch_device(config.get("torch_device", "auto"))
        net = torch_side.from_flax(model, variables, x.shape[1:]).to(device)
        nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(device)
        xt, tt = nchw(x), torch.from_numpy(t).to(device)
        if name in runner.METRICS:
            _, theirs = runner._metric_calls(name, fn, options, model, variables, net, x, t, nchw)
        else:
            theirs = torch_side.captum_method(name, net, options)
        sync = torch_side.synchronizer(device)
        call = lambda: sync(theirs)(xt, tt)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    # The timed runs' arithmetic (torch_side.full_float32), without importing torch
    # into the fmi_jax side's process.
    if spec["side"] == "fmi_jax":
        precision = jax.default_matmul_precision("highest")
    else:
        precision = torch_side.full_float32()
    with precision, runner.PeakRSS() as rss:
        call()
    out: dict[str, Any] = {
        "rss_before_bytes": rss.start,
        "rss_peak_bytes": rss.peak,
        "rss_increase_bytes": rss.increase,
    }
    if spec["side"] == "fmi_jax":
        stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
        if stats and "peak_bytes_in_use" in stats:
            out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    elif device is not None and device.type == "cuda":
        import torch

        out["device_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def probe_in_subprocess(spec: dict[str, Any], timeout_s: float = 1800) -> dict[str, Any]:
    """`probe(spec)` in a fresh Python process; its error, if any, is raised here."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    # On a GPU, JAX would otherwise take 75% of the device at its first call: the
    # PyTorch side's process builds its model with JAX too, and JAX's own peak would
    # read as the pool's size.
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    proc = subprocess.run(
        [sys.executable, "-m", "fmi_jax.benchmark.memory_probe", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"memory probe of {spec['side']} {spec['method']} (batch {spec['batch']}) failed "
            f"with exit code {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(
            f"usage: python -m fmi_jax.benchmark.memory_probe '<spec json>'\n{__doc__}"
        )
    print(json.dumps(probe(json.loads(argv[1]))))


if __name__ == "__main__":
    main(sys.argv)
