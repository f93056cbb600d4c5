r"""Benchmark fmi_jax against PyTorch + Captum on the same model, weights and images.

    python -m experiments.benchmark --config=configs/benchmark.py \
        --config.model_workdir=runs/cnn_fmnist --workdir=runs/benchmark/cpu

Checks that both sides agree first, then times them alternately; prints the table
and writes benchmark.json and benchmark.md under --workdir.
"""

from absl import app, flags
from ml_collections import config_flags

from fmi_jax import benchmark, logs

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/benchmark.py", "Benchmark config.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/benchmark", "Where the results go.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logs.quiet_libraries()
    benchmark.run_benchmark(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
