"""The attribution-metrics study: every method scored by every metric, as a leaderboard.

    python -m experiments.evaluate_attributions --workdir=runs/cnn_fmnist \
        --config=configs/evaluate_attributions.py

Reads the run's checkpoint (best by validation accuracy) and writes under
`<workdir>/<output>/` (see fmi_jax/studies/evaluate_attributions.py). Method options
are those of the explain study (configs/explain.py), plus occlusion. `:smoke`: 8
images, three methods, seconds.
"""

import ml_collections

from configs import common
from configs import explain as explain_config


def get_config(arg=None):
    arg = common.variant(arg)
    explain = explain_config.get_config(arg or None)

    config = ml_collections.ConfigDict()
    config.checkpoint = "best"
    config.split = "test"
    config.output = "attribution_metrics"
    config.seed = 0
    # 'first': the first num_images of the split (deterministic, no selection bias);
    # 'random': a subset drawn with selection_seed (kept in index order).
    config.num_images = 500
    config.selection = "first"
    config.selection_seed = 0
    # Explain (and score) the predicted class ('predicted') or the true label ('label').
    config.target = "predicted"
    # fmi_jax.attribution.METHODS names, plus the controls 'input' (the map is the image)
    # and 'random' (uniform noise), which fail the sanity check by construction.
    config.methods = (
        "saliency",
        "input_x_gradient",
        "integrated_gradients",
        "smoothgrad",
        "gaussian_saliency",
        "deeplift",
        "ig_smoothgrad",
        "grad_cam",
        "occlusion",
        "input",
        "random",
    )
    # The explain study's options; occlusion (deterministic, per image, unlike
    # feature_permutation whose maps depend on the other images of the batch) on
    # 4 x 4 patches.
    options = explain.options.to_dict()
    options["occlusion"] = {"window": (4, 4), "stride": (4, 4)}
    config.options = options
    # Faithfulness. step: pixels per step, an int or a fraction in (0, 1]; 0 = one
    # image row (28 pixels on 28 x 28). The LeRF curve uses the deletion settings.
    # Insertion starts from 'gaussian' (sigma-5 blur, symmetric borders), the substrate
    # of the reported numbers; 'rise_blur' is RISE's own (11 x 11, zero borders), the
    # library's default, and gives other AUCs (docs/guide.md).
    config.deletion = {"substrate": "zero", "step": 0, "blur_sigma": 5.0}
    config.insertion = {"substrate": "gaussian", "step": 0, "blur_sigma": 5.0}
    # ROAD: is the target still the top class after removing each fraction of the pixels
    # (most / least relevant first), filled by noisy linear imputation with this noise
    # (the paper's 0.01)? With target 'label' the mean is the paper's accuracy.
    config.road = {"fractions": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), "noise": 0.01}
    # Faithfulness correlation: `samples` random subsets of `subset_size` pixels (0: one
    # image row, 28 on 28 x 28), zero substrate, logits (Quantus' defaults).
    config.faithfulness_correlation = {"samples": 100, "subset_size": 0}
    # Performance information curves (the XRAI paper's SIC and AIC, PAIR saliency's
    # procedure) on the first max_images images (0: all): the model's score against the
    # information (WebP size) of blurred images that restore each threshold's top pixels;
    # images the model scores below min_score are left out. The maps rank pixels as
    # computed (signed maps: most positive first), as for deletion and insertion. The
    # thresholds are PAIR's (fmi_jax.evaluation.PIC_THRESHOLDS).
    config.pic = {
        "thresholds": (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1, 0.13, 0.21, 0.34, 0.5, 0.75),
        "random_fraction": 0.01,
        "min_score": 0.8,
        "max_images": 100,
    }
    # Infidelity: Gaussian perturbations; normalize rescales each map by its
    # least-squares factor (scale-free, so methods of different scales compare).
    config.infidelity = {"stdev": 0.003, "samples": 10, "normalize": True}
    # Max-sensitivity re-runs a method `samples` times per image: computed on the first
    # max_images images (0: all), fewer for the methods in images_per_method.
    config.sensitivity = {
        "radius": 0.02,
        "samples": 10,
        "max_images": 0,
        "images_per_method": {
            "integrated_gradients": 100,
            "smoothgrad": 100,
            "ig_smoothgrad": 50,
            "occlusion": 100,
        },
    }
    # Cascading randomisation of `layers` (empty: every layer, output first) on the
    # first max_images images (0: all); pass/fail at `threshold` (mean |Spearman|).
    # efficient_mprt: also the relative rise of the maps' histogram entropy (100 bins)
    # from the original to the cascade's last, fully randomised model (from the
    # cascade's maps: no more explanations). random_logit: also the SSIM between the maps of the target and of a
    # random other class on the same images (two more maps per image).
    config.sanity = {
        "layers": (),
        "max_images": 100,
        "threshold": 0.5,
        "window": 7,
        "efficient_mprt": True,
        "random_logit": True,
    }
    # Cross-method agreement of the maps (the explain study's Pearson/Spearman/top-k).
    config.agreement = True
    config.topk_fraction = 0.01
    # Images (or model evaluations) per chunk: bounds memory, never changes results.
    config.batch_size = 256

    if arg == "smoke":
        config.num_images = 8
        config.methods = ("saliency", "grad_cam", "input")
        config.infidelity.samples = 4
        config.road.fractions = (0.3, 0.7)
        config.faithfulness_correlation.samples = 8
        config.pic.thresholds = (0.05, 0.2, 0.5)
        config.sensitivity.samples = 3
        config.sensitivity.images_per_method = {"grad_cam": 4}
        config.sanity.max_images = 8
        config.batch_size = 64
    return config
