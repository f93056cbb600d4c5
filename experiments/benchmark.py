r"""Benchmark fmi_jax against PyTorch + Captum on the same model, weights and images.

    python -m experiments.benchmark --config=configs/benchmark.py \
        --config.model_workdir=runs/cnn_fmnist --workdir=runs/benchmark/cpu

Checks that both sides agree first, then times them alternately; prints the table
and writes benchmark.json and benchmark.md under --workdir.
"""

import os
import sys
from pathlib import Path

# Before jax is imported: on a GPU, JAX's default preallocation of 75% of the device
# would starve the PyTorch side (fmi_jax.benchmark refuses to run with it).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

if not __package__:  # started as `python path/to/experiments/<script>.py`, from any folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

import configs  # noqa: E402
from experiments import _cli  # noqa: E402
from fmi_jax import benchmark  # noqa: E402

_CONFIG = _cli.define_config(configs.path("benchmark"), "Benchmark config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/benchmark", "Where the results go.")


def main():
    config = _CONFIG.value
    # The training row's config is named like --config (`cnn_fmnist:smoke`) and found in
    # this repository's configs/, wherever the script is started.
    spec = config.train.get("config") if config.get("train") else None
    train_config = configs.load(spec) if spec else None
    benchmark.run_benchmark(config, _WORKDIR.value, train_config=train_config)


if __name__ == "__main__":
    _cli.run(main)
