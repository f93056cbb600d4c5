"""The explain study: attribution methods side by side on a trained classifier.

    python -m experiments.explain --workdir=runs/cnn_fmnist --config=configs/explain.py

Reads the run's checkpoint (best by validation accuracy) and writes under
`<workdir>/<output>/`. `:smoke` shrinks it to seconds.
"""

import ml_collections

from configs import common


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.checkpoint = "best"
    config.split = "test"
    config.output = "explain"
    config.seed = 0
    # Explain the predicted class ('predicted') or the true label ('label').
    config.target = "predicted"
    config.selection = {
        "kind": "high_confidence",  # or 'indices'
        "indices": (),
        "per_class": 2,
        "threshold": 0.8,
        "pool": 2000,  # confident samples are drawn from the first `pool` images
        "seed": 0,
    }
    config.methods = (
        "saliency",
        "integrated_gradients",
        "smoothgrad",
        "gaussian_saliency",
        "deeplift",
        "ig_smoothgrad",
        "grad_cam",
        "feature_permutation",
    )
    # Keyword options per method (see fmi_jax.attribution.METHODS[name].options).
    config.options = {
        # Saliency as Simonyan et al. draw it: |gradient| (methods are signed by default).
        "saliency": {"abs": True},
        "integrated_gradients": {"steps": 50, "rule": "gausslegendre"},
        "smoothgrad": {"samples": 25, "stdev_spread": 0.15},
        "ig_smoothgrad": {"samples": 10, "steps": 20, "stdev_spread": 0.15},
        "gaussian_saliency": {"sigma": 1.0, "abs": True},
        # conv3, the last conv block (7 x 7 in cnn_fmnist); the per-layer figure
        # (layer_cam below) shows every block.
        "grad_cam": {"layer": "conv3"},
        # The rest of the CAM family, on the same layer, for when they are named in
        # `methods` (options of methods not run do not alter the study's results).
        "grad_cam_plus_plus": {"layer": "conv3"},
        "xgrad_cam": {"layer": "conv3"},
        "hires_cam": {"layer": "conv3"},
        "layer_cam": {"layer": "conv3"},
        "score_cam": {"layer": "conv3"},
        "ablation_cam": {"layer": "conv3"},
        "eigen_cam": {"layer": "conv3"},
        "grad_cam_elementwise": {"layer": "conv3"},
        "shapley_cam": {"layer": "conv3"},
        "eigen_grad_cam": {"layer": "conv3"},
        "finer_cam": {"layer": "conv3"},
        "kpca_cam": {"layer": "conv3"},
        "fem": {"layer": "conv3"},
        # Image regions: 4 x 4 patches (49 groups), permuted across the explained samples.
        "feature_permutation": {"patch": 4},
    }
    # Per-layer CAM figure: `method` (any CAM, LayerCAM's 'layer_cam' included, with its
    # default options) of every layer in `layers` (empty: the model's conv layers, first
    # to last) for the first `samples` explained images.
    config.layer_cam = {"method": "grad_cam", "layers": (), "samples": 8}
    # Model evaluations per chunk: bounds memory, never changes results.
    config.batch_size = 256
    config.topk_fraction = 0.01
    config.figures = {"max_sheets": 10, "gallery_per_class": 2, "sign_modes": True}

    arg = common.variant(arg)
    if arg == "smoke":
        config.selection.per_class = 1
        config.selection.pool = 200
        config.selection.threshold = 0.0
        config.options.integrated_gradients.steps = 8
        config.options.smoothgrad.samples = 4
        config.options.ig_smoothgrad = {"samples": 2, "steps": 4, "stdev_spread": 0.15}
        config.batch_size = 64
        config.figures.max_sheets = 2
        config.options.feature_permutation.patch = 7
        config.layer_cam.samples = 3
    return config
