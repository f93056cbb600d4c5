r"""How much information each method's top pixels restore, and the information curves
under a second key.

    python scripts/pic_information.py --workdir=runs/cnn_fmnist

Reads the maps the attribution-metrics study cached (`<workdir>/attribution_metrics/
methods/<method>.npz`, from `experiments.evaluate_attributions` with
configs/evaluate_attributions.py), scores the first `pic.max_images` of them with the
study's Softmax Information Curve settings but the key `--seed` (the study folds its
own), and prints per method: the area under the median curve, the mean of the images'
areas, the median normalised information restored at 0.5%, 2% and 5% of the pixels,
and how many images are already at full information (clipped to 1) by 5%.
docs/results.md reports what it measured. Bad input (no study in --workdir) ends in one
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
from fmi_jax import evaluation, runs  # noqa: E402
from fmi_jax.train import evaluate as evaluate_lib  # noqa: E402
from fmi_jax.train import loop as loop_lib  # noqa: E402
from fmi_jax.train.input_pipeline import to_float  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/cnn_fmnist", "A run with a metrics study.")
_OUTPUT = flags.DEFINE_string("output", "attribution_metrics", "The study's output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Key of the random pixels (jax.random.key(seed)).")


def main():
    out = Path(_WORKDIR.value) / _OUTPUT.value
    recorded = runs.read_json(out / "config.json")
    if recorded is None or "pic" not in recorded:
        raise ValueError(
            f"no metrics study with information curves in {out}; run "
            "experiments.evaluate_attributions"
        )
    pic = recorded["pic"]
    model, variables, run_config, _ = evaluate_lib.restore_model(_WORKDIR.value)
    split = loop_lib.load_data(run_config.data)[recorded["split"]]
    if recorded["selection"] != "first":
        raise ValueError(f"{out} did not take the first images of its split")
    n = min(int(pic["max_images"]) or int(recorded["num_images"]), int(recorded["num_images"]))
    x = jnp.asarray(to_float(split.images[:n]))
    fn = jax.jit(lambda inputs: model.apply(variables, inputs))
    target = jnp.argmax(fn(x), axis=-1)
    if recorded["target"] == "label":
        target = jnp.asarray(split.labels[:n], jnp.int32)
    thresholds = tuple(float(t) for t in pic["thresholds"])
    columns = [thresholds.index(t) for t in (0.005, 0.02, 0.05) if t in thresholds]
    print(
        "| method | SIC median curve | SIC mean of images | median information at "
        + ", ".join(f"{100 * thresholds[c]:g}%" for c in columns)
        + " | images at full information by 5% |"
    )
    print("|---|---|---|---|---|")
    for name in recorded["methods"]:
        with np.load(out / "methods" / f"{name}.npz") as saved:
            maps = np.asarray(saved["maps"][:n])
        result = evaluation.performance_information_curve(
            fn,
            x,
            target,
            np.broadcast_to(maps, x.shape) if maps.shape != x.shape else maps,
            jax.random.key(_SEED.value),
            thresholds=thresholds,
            random_fraction=float(pic["random_fraction"]),
            min_score=float(pic["min_score"]),
            batch_size=int(recorded["batch_size"]),
        )
        kept = np.flatnonzero([not reason for reason in result.skipped])
        information = result.information[kept]
        at_five = (
            f"{int((information[:, thresholds.index(0.05)] == 1.0).sum())} of {len(kept)}"
            if 0.05 in thresholds
            else "-"
        )
        print(
            f"| {name} | {evaluation.aggregate_pic(result)[1]:.3f} | "
            f"{np.mean(result.auc[kept]):.3f} | "
            + ", ".join(f"{np.median(information[:, c]):.2f}" for c in columns)
            + f" | {at_five} |"
        )


if __name__ == "__main__":
    _cli.run(main)
