"""The CIFAR-10 explain study: saliency, IG, IG + SmoothGrad and DeepLift on CifarNet,
with IG's convergence delta (and DeepLift's summation-to-delta gap) in stats.json.

    python -m experiments.explain --workdir=runs/cifarnet --config=configs/explain_cifar10.py

A variant of configs/explain.py: same selection, agreement and figures.
"""

from configs import explain


def get_config(arg=None):
    config = explain.get_config(arg)
    config.methods = ("saliency", "integrated_gradients", "ig_smoothgrad", "deeplift")
    config.options = {
        "saliency": {"abs": True},
        "integrated_gradients": {"steps": 50, "rule": "gausslegendre"},
        "ig_smoothgrad": {"samples": 10, "steps": 20, "stdev_spread": 0.15},
    }
    # The original CIFAR-10 study has no CAM; no per-layer figure.
    config.layer_cam.samples = 0
    if arg == "smoke":
        config.options.integrated_gradients.steps = 8
        config.options.ig_smoothgrad = {"samples": 2, "steps": 4, "stdev_spread": 0.15}
    return config
