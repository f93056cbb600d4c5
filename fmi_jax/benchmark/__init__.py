"""fmi_jax against PyTorch + Captum (experiments/benchmark.py).

torch and captum are imported only when a benchmark runs (the `bench` extra);
importing this package does not need them.
"""

from fmi_jax.benchmark.runner import machine_description, markdown, run_benchmark

__all__ = ["machine_description", "markdown", "run_benchmark"]
