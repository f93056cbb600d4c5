"""Benchmark: fmi_jax attribution against Captum on the same model, weights and images.

    python -m experiments.benchmark --config=configs/benchmark.py \
        --config.model_workdir=runs/cnn_fmnist --workdir=runs/benchmark/cpu

Needs the `bench` extra (torch CPU + captum); see the README.
"""

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    # A trained workdir (its best checkpoint); unset: `model_name` freshly initialised.
    config.model_workdir = config_dict.placeholder(str)
    config.model_name = "cnn_fmnist"
    config.data_name = "fashion_mnist"
    config.batch_sizes = (64,)
    config.methods = (
        "saliency",
        "input_x_gradient",
        "integrated_gradients",
        "smoothgrad",
        "ig_smoothgrad",
        "deeplift",
        "gradient_shap",
    )
    # Same semantics on both sides: absolute noise stdev (Captum's `stdevs`), signed
    # SmoothGrad, Gauss-Legendre IG from a zero baseline.
    config.options = {
        "integrated_gradients": {"steps": 50},
        "smoothgrad": {"samples": 25, "stdev": 0.15, "abs": False},
        "ig_smoothgrad": {"samples": 10, "steps": 20, "stdev": 0.15},
        "gradient_shap": {"samples": 25},
    }
    config.repeats = 5
    # Each timed sample: back-to-back calls lasting at least this long (see runner.py).
    config.min_sample_s = 0.2
    # Pause before each sample, so the other side's spinning worker threads go idle.
    config.settle_s = 0.5
    # Relative L2 error allowed between the frameworks' maps (see fmi_jax/benchmark/runner.py:
    # max-pool ties make elementwise agreement impossible, not wrong).
    config.tolerance = 1e-2
    config.allow_disagreement = False

    arg = arg or ""
    if arg not in common.VARIANTS:
        raise ValueError(
            f"unknown config variant {arg!r}; choose one of {common.VARIANTS[1:]} or none"
        )
    if arg == "smoke":
        config.batch_sizes = (4,)
        config.repeats = 1
        config.min_sample_s = 0.0
        config.settle_s = 0.0
        config.options.integrated_gradients.steps = 4
    return config
