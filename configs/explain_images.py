"""Explain a folder of images: top-k predictions and integrated gradients per image.

    python -m experiments.explain_images --images=photos/ --workdir=runs/photos \
        --config=configs/explain_images.py --config.weights=mobilenet_v3_large.pth

`weights` is a torchvision state_dict (`.pth`) or an `.npz` of it; empty means random
weights (with a warning), for tests and smoke runs. `:smoke` is a tiny random model
on 64 x 64 crops that runs in seconds on a CPU.
"""

import ml_collections

from configs import common


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.model = {"name": "mobilenet_v3_large", "width_mult": 1.0, "num_classes": 1000}
    # torchvision .pth state_dict or .npz of it; '' = random initialisation (warns).
    config.weights = ""
    config.seed = 0  # of the random initialisation
    # 'imagenet' (fmi_jax.data.imagenet.IMAGENET_CLASSES) or a tuple of names; names
    # 'class <i>' are used when their number differs from the model's classes.
    config.class_names = "imagenet"
    # torchvision's ImageNet evaluation preset: shorter side to `resize` (bilinear,
    # antialiased), center crop `crop`, then (x / 255 - mean) / std.
    config.resize = 256
    config.crop = 224
    config.mean = (0.485, 0.456, 0.406)
    config.std = (0.229, 0.224, 0.225)
    # Transparent pixels: 'white' composites them over white, 'drop' discards alpha.
    config.alpha = "white"
    config.batch_size = 16  # images per model call
    config.top_k = 5
    config.ig = {
        "steps": 50,
        "rule": "gausslegendre",
        # (image, step) pairs per gradient evaluation: bounds memory for any `steps`.
        "batch_size": 32,
        # 'black': the black image (-mean / std after normalisation); 'zeros': zero in
        # the normalised space (the mean colour).
        "baseline": "black",
    }
    config.summary = {"per_page": 24, "columns": 4}

    arg = common.variant(arg)
    if arg == "smoke":
        config.model = {"name": "mobilenet_v3_small", "width_mult": 0.25, "num_classes": 10}
        config.crop = 64
        config.resize = 72
        config.ig.steps = 8
        config.ig.batch_size = 16
        config.top_k = 3
        config.batch_size = 8
    return config
