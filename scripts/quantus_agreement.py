r"""fmi_jax's Quantus-style metrics against Quantus itself, on the same model and maps.

    .venv-bench/bin/pip install quantus==0.6.0
    .venv-bench/bin/python scripts/quantus_agreement.py --workdir=runs/cnn_fmnist

The trained run's CNN (float32) and a PyTorch copy with the same weights
(`fmi_jax.benchmark.torch_side.from_flax`) score the first `--images` Fashion-MNIST
test images, explaining the true label with signed saliency computed once by fmi_jax
and handed to Quantus as `a_batch`. Quantus' map rescaling (`normalise`) is off
where it would change the value (the defaults of both sides otherwise; the docstrings
of `fmi_jax.evaluation` say where they differ):

* deterministic, compared per image: ROAD without noise (accuracy per removed
  fraction), monotonicity of the saliency map and of a random one (where Quantus'
  differs: its `Monotonicity` never inserts a pixel of the input), complexity,
  effective complexity (eps relative to each map's largest value, and to the batch's:
  Quantus' default normalisation divides the whole batch of maps by its one largest
  value), sparseness, the discrete entropy of the efficient MPRT, the faithfulness
  estimate and non-sensitivity (one pixel per group), Focus on 2 x 2 mosaics of the
  same images, consistency (given fmi_jax's discretisation, and with Quantus'
  default) and sufficiency over the maps of all the images; localisation of |saliency| against the garment's silhouette
  (the pixels that are not 0): pointing game, relevance mass and rank accuracy,
  top-100 intersection, ROC AUC;
* random on both sides (Quantus draws from NumPy's global generator, seeded here,
  fmi_jax from keys), compared as means with their standard errors and by the mean
  of the per-image differences: faithfulness correlation (400 subsets of one image
  row; Quantus' default normalisation is one positive factor for the batch, which a
  correlation ignores), average sensitivity and the local Lipschitz estimate (the
  maps from the same saliency function on both sides, 10 samples), the monotonicity
  correlation (one pixel per group, 10 uniform draws each), relative input and
  output stability (50 samples; only the images where Quantus' score is not NaN);
* continuity of |saliency| under Quantus' 28 horizontal translations, per image.

Prints a Markdown table (about 8 minutes on 2 cores, most of it Quantus'
monotonicity correlation); docs/captum.md reports what it measured. Bad
input (no run in --workdir, no torch or Quantus in this environment) ends in one
`error:` line and exit status 2.
"""

import sys
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from experiments import _cli  # noqa: E402
from fmi_jax import attribution, evaluation  # noqa: E402
from fmi_jax.train import evaluate as evaluate_lib  # noqa: E402
from fmi_jax.train import loop as loop_lib  # noqa: E402
from fmi_jax.train.input_pipeline import to_float  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/cnn_fmnist", "A trained SimpleCNN run.")
_IMAGES = flags.DEFINE_integer("images", 64, "The first images of the test split.")
_SAMPLES = flags.DEFINE_integer("samples", 10, "Perturbations of the sensitivity metrics.")

FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _bench_modules():
    """quantus, torch and fmi_jax's PyTorch side, or a ValueError saying how to get them."""
    try:
        import quantus
        import torch

        from fmi_jax.benchmark import torch_side
    except ImportError as error:
        raise ValueError(
            f"{error}: run this in the benchmark venv (.venv-bench, which `make bench` "
            "builds) with Quantus installed: .venv-bench/bin/pip install quantus==0.6.0"
        ) from None
    return quantus, torch, torch_side


def main():
    quantus, torch, torch_side = _bench_modules()
    np.random.seed(0)  # Quantus draws from NumPy's global generator
    model, variables, config, _ = evaluate_lib.restore_model(_WORKDIR.value)
    split = loop_lib.load_data(config.data)["test"]
    n = _IMAGES.value
    x = jnp.asarray(to_float(split.images[:n]))
    labels = jnp.asarray(split.labels[:n], jnp.int32)
    fn = jax.jit(lambda inputs: model.apply(variables, inputs))
    saliency = jax.jit(attribution.explainer("saliency", fn))
    maps = np.asarray(saliency(x, labels))  # (N, H, W, 1), signed
    net = torch_side.from_flax(model, variables, x.shape[1:])
    x_t = np.asarray(x).transpose(0, 3, 1, 2)  # NCHW for Quantus and torch
    a_t = maps.transpose(0, 3, 1, 2)
    y = np.asarray(labels)
    common = dict(disable_warnings=True, display_progressbar=False)
    call = dict(model=net, x_batch=x_t, y_batch=y, a_batch=a_t, device="cpu", channel_first=True)
    rows = []

    def exact(name, ours, theirs):
        ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
        rows.append((name, f"{ours.mean():.6g}", f"{theirs.mean():.6g}", _max_diff(ours, theirs)))

    def statistical(name, ours, theirs):
        paired = np.asarray(ours, np.float64) - np.asarray(theirs, np.float64)
        rows.append((name, _mean_se(ours), _mean_se(theirs), f"paired: {_mean_se(paired)}"))

    # ROAD without noise: still correct after removing each fraction, most relevant
    # first, per image (Quantus averages a batch, so it scores one image at a time).
    road = quantus.ROAD(percentages=[100 * f for f in FRACTIONS], noise=0.0, **common)
    theirs = [
        [road(**dict(call, **_one(call, i)), softmax=False)[100 * f] for f in FRACTIONS]
        for i in range(n)
    ]
    key = jax.random.key(0)
    ours = evaluation.road(
        fn, x, labels, maps, key, fractions=FRACTIONS, noise=0.0, score="correct"
    )
    exact("ROAD, 1 if still correct at 10/30/50/70/90% (MoRF, noise 0)", ours, theirs)
    exact(
        "complexity (entropy)",
        evaluation.complexity(maps),
        quantus.Complexity(**common)(**call),
    )
    theirs = quantus.EffectiveComplexity(**common)(**call)
    peak = np.abs(maps).reshape(n, -1).max(1).reshape(n, 1, 1, 1)
    exact(
        "effective complexity, eps 1e-5 of each map's peak",
        evaluation.effective_complexity(maps / peak),
        theirs,
    )
    # Quantus' default normalisation divides the whole a_batch by its one largest value.
    exact(
        "effective complexity, eps 1e-5 of the batch's peak",
        evaluation.effective_complexity(maps / np.abs(maps).max()),
        theirs,
    )
    exact("sparseness (Gini)", evaluation.sparseness(maps), quantus.Sparseness(**common)(**call))
    exact(
        "discrete entropy (100 bins; eMPRT's complexity)",
        evaluation.discrete_entropy(maps),
        [quantus.functions.complexity_func.discrete_entropy(a=a, x=None) for a in a_t],
    )
    exact(
        "faithfulness estimate (one pixel per group, logits)",
        evaluation.faithfulness_estimate(fn, x, labels, maps, batch_size=4096),
        quantus.FaithfulnessEstimate(features_in_step=1, normalise=False, **common)(
            **call, softmax=False
        ),
    )
    # Quantus thresholds |a| after its rescaling; maps divided by their own peak make
    # its threshold fmi_jax's (eps times each map's largest |a|).
    exact(
        "non-sensitivity (one pixel per group, eps 1e-5 of each map's peak)",
        evaluation.non_sensitivity(fn, x, labels, maps, batch_size=4096),
        quantus.NonSensitivity(features_in_step=1, normalise=False, **common)(
            **dict(call, a_batch=a_t / peak)
        ),
    )

    # Localisation against the garment's silhouette (the pixels that are not 0), with
    # the magnitude of the saliency map.
    silhouette = (x_t.sum(1, keepdims=True) > 0).astype(np.float32)
    magnitude = dict(call, a_batch=np.abs(a_t), s_batch=silhouette)
    masks, size = silhouette[:, 0], np.abs(maps)
    for label, ours_fn, theirs_metric in (
        ("pointing game", evaluation.pointing_game, quantus.PointingGame(**common)),
        (
            "relevance mass accuracy",
            evaluation.relevance_mass_accuracy,
            quantus.RelevanceMassAccuracy(**common),
        ),
        (
            "relevance rank accuracy",
            evaluation.relevance_rank_accuracy,
            quantus.RelevanceRankAccuracy(**common),
        ),
        (
            "top-100 intersection",
            lambda a, s: evaluation.top_k_intersection(a, s, k=100),
            quantus.TopKIntersection(k=100, **common),
        ),
        ("ROC AUC", evaluation.localisation_auc, quantus.AUC(**common)),
    ):
        exact(
            f"{label} (abs saliency vs silhouette)",
            ours_fn(size, masks),
            theirs_metric(**magnitude),
        )

    # Focus on 2 x 2 mosaics of the same images (tiles halved to 14 x 14), saliency of
    # the mosaic's class.
    tiles, tile_class, quadrants = evaluation.mosaics(
        x, labels, jax.random.key(2), count=n, downsample=True
    )
    mosaic_maps = np.asarray(saliency(tiles, tile_class))
    exact(
        "Focus (saliency of 2 x 2 mosaics)",
        evaluation.focus(mosaic_maps, quadrants),
        quantus.Focus(**common)(
            **dict(
                call,
                x_batch=np.asarray(tiles).transpose(0, 3, 1, 2),
                y_batch=np.asarray(tile_class),
                a_batch=mosaic_maps.transpose(0, 3, 1, 2),
            ),
            custom_batch=np.asarray(quadrants, np.int64),
        ),
    )

    row = x.shape[2]
    subsets = 400  # Quantus' 100, more here to tighten the comparison
    ours = evaluation.faithfulness_correlation(
        fn, x, labels, maps, key, subset_size=row, samples=subsets
    )
    theirs = quantus.FaithfulnessCorrelation(
        nr_runs=subsets, subset_size=row, return_aggregate=False, **common
    )(**call, softmax=False)
    statistical(f"faithfulness correlation ({subsets} subsets of {row} pixels)", ours, theirs)

    # Monotonicity, one image row per step. Quantus' Monotonicity writes its baseline
    # into a copy of the baseline, so no pixel of x ever enters and every map passes:
    # the random map's row shows it.
    noise = np.asarray(jax.random.normal(jax.random.key(1), maps.shape))
    for label, a in (("saliency", maps), ("a random map", noise)):
        exact(
            f"monotonicity of {label}, one row per step (1: the score never falls)",
            evaluation.monotonicity(fn, x, labels, a, step=row),
            quantus.Monotonicity(features_in_step=row, abs=False, normalise=False, **common)(
                **dict(call, a_batch=a.transpose(0, 3, 1, 2))
            ),
        )
    repeats = 10
    ours = evaluation.monotonicity_correlation(
        fn, x, labels, maps, key, samples=repeats, batch_size=4096
    )
    theirs = quantus.MonotonicityCorrelation(
        nr_samples=repeats, features_in_step=1, normalise=False, **common
    )(**call)
    statistical(f"monotonicity correlation (one pixel per group, {repeats} draws)", ours, theirs)

    def explain(model, inputs, targets, **kwargs):
        """Quantus' explain_func: fmi_jax's saliency of the NCHW batch, as NCHW."""
        nhwc = jnp.asarray(np.asarray(inputs).transpose(0, 2, 3, 1))
        return np.asarray(saliency(nhwc, jnp.asarray(targets))).transpose(0, 3, 1, 2)

    samples = _SAMPLES.value
    ours = evaluation.avg_sensitivity(
        lambda inputs, t, k: saliency(inputs, t), x, labels, key, samples=samples
    )
    theirs = quantus.AvgSensitivity(
        nr_samples=samples, lower_bound=evaluation.DEFAULT_SENSITIVITY_RADIUS, **common
    )(**call, explain_func=explain)
    statistical(f"average sensitivity (radius 0.02, {samples} samples)", ours, theirs)
    ours = evaluation.local_lipschitz(
        lambda inputs, t, k: saliency(inputs, t), x, labels, key, samples=samples
    )
    theirs = quantus.LocalLipschitzEstimate(nr_samples=samples, normalise=False, **common)(
        **call, explain_func=explain
    )
    statistical(f"local Lipschitz estimate (stdev 0.1, {samples} samples)", ours, theirs)

    # Relative stability: Quantus makes an image NaN when any of its perturbed copies
    # changes the prediction, fmi_jax leaves those copies out, so the images where
    # Quantus has a value are compared.
    stable = 50
    for label, ours_fn, theirs_metric in (
        ("input", evaluation.relative_input_stability, quantus.RelativeInputStability),
        ("output", evaluation.relative_output_stability, quantus.RelativeOutputStability),
    ):
        ours = np.asarray(
            ours_fn(lambda inputs, t, k: saliency(inputs, t), x, labels, key, samples=stable, fn=fn)
        )
        theirs = np.asarray(
            theirs_metric(nr_samples=stable, **common)(**call, explain_func=explain), np.float64
        )
        kept = np.isfinite(theirs) & np.isfinite(ours)
        statistical(
            f"relative {label} stability ({stable} samples; the {kept.sum()} images Quantus "
            "scores)",
            ours[kept],
            theirs[kept],
        )

    # Consistency and sufficiency compare the 64 maps with each other (predicted classes),
    # signed on both sides (Quantus' default abs=True would compare |maps|).
    predictions = np.asarray(fn(x)).argmax(-1)

    def top_k_signs(a, **kwargs):
        """fmi_jax's discretisation for Quantus: the largest |a| and its sign (k=1: no
        two of these maps share their top 5)."""
        top = np.sort(np.argsort(-np.abs(a), kind="stable")[:1])
        return hash(bytes(np.concatenate([top, np.sign(a[top])]).astype(np.int64)))

    consistent = np.asarray(evaluation.consistency(maps, predictions, k=1))
    ours = np.nan_to_num(consistent, nan=0.0)  # no other example alike: Quantus' 0
    theirs = quantus.Consistency(discretise_func=top_k_signs, abs=False, **common)(**call)
    exact(
        f"consistency, top-1 |a| with sign (Quantus given that discretisation; "
        f"{np.isfinite(consistent).sum()} images share theirs with another)",
        ours,
        theirs,
    )
    theirs = quantus.Consistency(abs=False, **common)(**call)
    rows.append(
        (
            "consistency, Quantus' default top_n_sign (the signs of the first 5 values)",
            f"{np.nanmean(consistent):.6g} (top-1, where defined)",
            f"{np.mean(theirs):.6g}",
            "not the same discretisation",
        )
    )
    ours = np.nan_to_num(np.asarray(evaluation.sufficiency(maps, predictions)), nan=0.0)
    theirs = quantus.Sufficiency(abs=False, **common)(**call)
    exact("sufficiency, threshold 0.6 (no neighbour: 0, as Quantus)", ours, theirs)

    # Continuity: |saliency| on both sides (Quantus' abs=True), Quantus' normalisation
    # (by the batch's largest value, before and after each translation) off; its
    # translation by 0 scores 0 for a deterministic map, which fmi_jax leaves out.
    ours = evaluation.continuity(
        lambda inputs, t, k: jnp.abs(saliency(inputs, t)), x, labels, key, batch_size=n
    )
    theirs = quantus.Continuity(nr_steps=28, normalise=False, **common)(
        **call, explain_func=explain
    )
    exact("continuity (|saliency|, 28 horizontal translations)", ours, theirs)

    print(f"{n} images, signed saliency of the true label, torch {torch.__version__}, ")
    print(f"quantus {quantus.__version__}\n")
    print("| metric | fmi_jax | Quantus | largest difference per image |")
    print("|---|---|---|---|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


def _one(call: dict, i: int) -> dict:
    """The batch arrays of `call` cut to image `i`."""
    return {k: call[k][i : i + 1] for k in ("x_batch", "y_batch", "a_batch")}


def _max_diff(ours: np.ndarray, theirs: np.ndarray) -> str:
    return f"{np.abs(ours.reshape(-1) - theirs.reshape(-1)).max():.1e}"


def _mean_se(values) -> str:
    values = np.asarray(values, np.float64).reshape(-1)
    return f"{values.mean():.4f} ± {values.std(ddof=1) / np.sqrt(len(values)):.4f}"


if __name__ == "__main__":
    _cli.run(main)
