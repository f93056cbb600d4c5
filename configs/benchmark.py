"""Benchmark: fmi_jax attribution against Captum on the same model, weights and images.

    python -m experiments.benchmark --config=configs/benchmark.py \
        --config.model_workdir=runs/cnn_fmnist --workdir=runs/benchmark/cpu

Needs the `bench` extra (torch CPU + captum) and the grad-cam package (Score-CAM's
reference), installed as `make bench` does; see the README.
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
    config.batch_sizes = (64, 256)
    # The PyTorch side's device: 'auto' is CUDA when torch sees a GPU, else the CPU.
    config.torch_device = "auto"
    # Write a JAX profiler trace of one warm call per row under workdir/profile/
    # (TensorBoard's profile plugin or Perfetto read it).
    config.profile = False
    # Peak memory of every method at the largest batch, each side in a fresh process
    # (fmi_jax/benchmark/memory_probe.py): host RSS, and device memory on a GPU.
    config.memory_probe = True
    config.methods = (
        "saliency",
        "input_x_gradient",
        "integrated_gradients",
        "smoothgrad",
        "ig_smoothgrad",
        "deeplift",
        "gradient_shap",
        "grad_cam",
        "score_cam",
        "occlusion",
        "feature_permutation",
        # Metric rows: fmi_jax.evaluation against captum.metrics (see runner.py).
        "infidelity",
        "max_sensitivity",
    )
    # Same semantics on both sides: absolute noise stdev (Captum's `stdevs`), signed
    # SmoothGrad, Gauss-Legendre IG from a zero baseline. CAMs on the last conv block
    # (cnn_fmnist: conv3, 7x7 before its pool), ReLU on, maps upsampled bilinearly to
    # 28x28. Occlusion: 4x4 windows over all channels, stride 2 (13 x 13 = 169 windows),
    # zero baseline. Feature permutation: 4x4 patches (49 groups) shared by all channels.
    # `batch_size`: images per forward pass for the perturbation methods, the same on
    # both sides (Captum's perturbations_per_eval = batch_size // batch; see runner.py).
    # 64 because on the 2-core CPU small chunks run fastest (they stay in cache; the
    # measurement is in docs/benchmark.md).
    config.options = {
        # |gradient|, Captum's Saliency default (fmi_jax's maps are signed by default).
        "saliency": {"abs": True},
        "integrated_gradients": {"steps": 50},
        "smoothgrad": {"samples": 25, "stdev": 0.15, "abs": False},
        # 256 noisy inputs x 20 steps per pass on both sides (all 51,200 evaluations of
        # 256 images at once would need 29.6 GB).
        "ig_smoothgrad": {"samples": 10, "steps": 20, "stdev": 0.15, "batch_size": 256},
        "gradient_shap": {"samples": 25},
        "grad_cam": {"layer": "conv3"},
        "score_cam": {"layer": "conv3", "batch_size": 64},
        "occlusion": {"window": (4, 4), "stride": 2, "baseline": 0.0, "batch_size": 64},
        "feature_permutation": {"patch": 4, "batch_size": 64},
        # The rows below are not in `methods` by default (name them to time them):
        # modified-backward rules, more CAMs, the sampling family over 4x4 patches (49 groups),
        # DeepLiftShap against 10 uniform reference images, and the layer methods on
        # conv3, summed over channels and upsampled on both sides.
        "guided_grad_cam": {"layer": "conv3"},
        # The CAMs Captum lacks, against the grad-cam package, on conv3 like the others;
        # Ablation-CAM's batch_size counts ablated forward passes, as Score-CAM's.
        "xgrad_cam": {"layer": "conv3"},
        "hires_cam": {"layer": "conv3"},
        "layer_cam": {"layer": "conv3"},
        "ablation_cam": {"layer": "conv3", "batch_size": 64},
        "lrp": {"rule": "epsilon", "epsilon": 1e-9},
        "deeplift_shap": {"references": 10},
        "feature_ablation": {"patch": 4, "batch_size": 64},
        "shapley_value_sampling": {"patch": 4, "samples": 5, "batch_size": 64},
        "kernel_shap": {"patch": 4, "samples": 100, "batch_size": 64},
        "lime": {"patch": 4, "samples": 100, "batch_size": 64},
        "layer_integrated_gradients": {"layer": "conv3", "steps": 50},
        "layer_conductance": {"layer": "conv3", "steps": 50},
        "layer_gradient_x_activation": {"layer": "conv3"},
        "internal_influence": {"layer": "conv3", "steps": 50},
        # Neuron rows: unit (3, 3, 0) (row, column, channel) of conv3.
        "neuron_gradient": {"layer": "conv3", "neuron": (3, 3, 0)},
        "neuron_integrated_gradients": {"layer": "conv3", "neuron": (3, 3, 0), "steps": 50},
        "neuron_conductance": {"layer": "conv3", "neuron": (3, 3, 0), "steps": 50},
        # Compositions (at_layer, at_neuron) against Captum's layer and neuron classes:
        # the reference input's activation A(0) on both sides (baseline 0.0 is an input).
        "layer_deeplift": {"layer": "conv3", "baseline": 0.0},
        "layer_deeplift_shap": {"layer": "conv3", "references": 10},
        # LRP at conv3's convolution: Captum's LayerLRP has no rule for the ReLU module
        # whose output is conv3 (docs/captum.md).
        "layer_lrp": {"layer": "conv3/conv", "epsilon": 1e-9},
        "neuron_deeplift": {"layer": "conv3", "neuron": (3, 3, 0), "baseline": 0.0},
        "neuron_guided_backprop": {"layer": "conv3", "neuron": (3, 3, 0)},
        "neuron_deconvolution": {"layer": "conv3", "neuron": (3, 3, 0)},
        "neuron_feature_ablation": {
            "layer": "conv3",
            "neuron": (3, 3, 0),
            "patch": 4,
            "baseline": 0.0,
            "batch_size": 64,
        },
        # Infidelity of the signed gradient (the attributions are computed once by
        # fmi_jax and given to both sides; only the metric is timed), Gaussian
        # I ~ N(0, 0.003^2), 10 perturbations per image; max-sensitivity of saliency
        # (|gradient|, re-run on every perturbed copy by each side), uniform noise of
        # radius 0.02, 10 perturbations, Frobenius norm: both metrics' (and Captum's)
        # defaults. All N x 10 perturbed copies in one pass on both sides.
        "infidelity": {
            "attribution": "saliency",
            "attribution_options": {"abs": False},
            "stdev": 0.003,
            "samples": 10,
        },
        "max_sensitivity": {
            "explain": "saliency",
            "explain_options": {"abs": True},
            "radius": 0.02,
            "samples": 10,
        },
    }
    # Peak device memory of IG as integration steps and batch_size (model evaluations
    # per chunk) vary, on 256 images: XLA's plan for every pair (compile only), then the
    # most steps run once at the smallest batch_size. Empty `steps` skips it.
    config.memory_scaling = {
        "method": "integrated_gradients",
        "images": 256,
        "steps": (50, 1000),
        "batch_sizes": (None, 256, 1024, 4096),
        "run": True,
    }
    # The training row: an epoch of `config` (a configs/ name, ':variant' allowed) on
    # data_name's training split, fmi_jax's loop against the PyTorch loop
    # (fmi_jax/benchmark/training.py); `steps` None times whole epochs, a number times
    # that many steps and scales to an epoch. Empty `config` skips it.
    config.train = {
        "config": "cnn_fmnist",
        "steps": config_dict.placeholder(int),
        "repeats": 2,
        "agreement_steps": 5,
        "limit": config_dict.placeholder(int),
    }
    config.repeats = 5
    # Each timed sample: back-to-back calls lasting at least this long (see runner.py).
    config.min_sample_s = 0.2
    # Pause before each sample, so the other side's spinning worker threads go idle.
    config.settle_s = 0.5
    # Relative L2 error allowed between the frameworks' maps (see fmi_jax/benchmark/runner.py:
    # max-pool ties make elementwise agreement impossible, not wrong).
    config.tolerance = 1e-2
    # The agreement check's images get uniform noise in [0, dither) per pixel (a third
    # of an 8-bit step), so that no max-pool window holds an exact tie, where the
    # gradient is undefined and each framework picks a different member.
    config.dither = 1 / 768
    # Score-CAM against pytorch_grad_cam: per-image Pearson correlation of the maps,
    # worst image and median (its masks are resized with align_corners=True, ours with
    # half-pixel centres; the correlations measured are in docs/benchmark.md).
    config.min_pearson = 0.95
    config.median_pearson = 0.99
    config.allow_disagreement = False

    arg = common.variant(arg)
    if arg == "smoke":
        config.batch_sizes = (4,)
        config.repeats = 1
        config.min_sample_s = 0.0
        config.settle_s = 0.0
        config.options.integrated_gradients.steps = 4
        config.memory_scaling.images = 4
        config.memory_scaling.steps = (4, 8)
        config.memory_scaling.batch_sizes = (None, 8)
        config.train.config = "cnn_fmnist:smoke"
        config.train.steps = 2
        config.train.repeats = 1
        config.train.agreement_steps = 2
        config.train.limit = 128
    return config
