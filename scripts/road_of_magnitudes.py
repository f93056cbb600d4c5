r"""ROAD of the metrics study's maps as computed and of their magnitudes.

    python scripts/road_of_magnitudes.py --workdir=runs/cnn_fmnist

Reads the maps the attribution-metrics study cached (`<workdir>/attribution_metrics/
methods/<method>.npz`, from `experiments.evaluate_attributions` with
configs/evaluate_attributions.py) and scores each method's maps and their absolute
values with ROAD as the study does (the predicted class, 10%, ..., 90% removed, noise
0.01, 1 where the predicted class is still on top), printing the mean MoRF, LeRF and
their gap for both. For a signed map, "least relevant first" removes its most
negative pixels, which can matter as much as the most positive ones; the magnitude
ranks pixels by importance alone. docs/results.md reports what it measured. Bad input
(no study in --workdir) ends in one `error:` line and exit status 2.
"""

import sys
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from configs import evaluate_attributions as study_config  # noqa: E402
from experiments import _cli  # noqa: E402
from fmi_jax import evaluation, runs  # noqa: E402
from fmi_jax.train import evaluate as evaluate_lib  # noqa: E402
from fmi_jax.train import loop as loop_lib  # noqa: E402
from fmi_jax.train.input_pipeline import to_float  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/cnn_fmnist", "A run with a metrics study.")
_OUTPUT = flags.DEFINE_string("output", "attribution_metrics", "The study's output folder.")


def main():
    out = Path(_WORKDIR.value) / _OUTPUT.value
    recorded = runs.read_json(out / "config.json")
    if recorded is None:
        raise ValueError(f"no metrics study in {out}; run experiments.evaluate_attributions")
    config = study_config.get_config()
    if recorded["num_images"] != config.num_images or recorded["selection"] != "first":
        raise ValueError(f"{out} was not run with the default images of the study config")
    model, variables, run_config, _ = evaluate_lib.restore_model(_WORKDIR.value)
    split = loop_lib.load_data(run_config.data)[recorded["split"]]
    x = jnp.asarray(to_float(split.images[: recorded["num_images"]]))
    fn = lambda inputs: model.apply(variables, inputs)  # noqa: E731
    target = jnp.argmax(jax.jit(fn)(x), axis=-1)
    road = jax.jit(
        lambda maps, order: evaluation.road(
            fn,
            x,
            target,
            maps,
            jax.random.key(0),
            order=order,
            fractions=tuple(recorded["road"]["fractions"]),
            noise=float(recorded["road"]["noise"]),
            score="correct",
            batch_size=int(recorded["batch_size"]),
        ),
        static_argnums=1,
    )
    print("| method | MoRF | LeRF | gap | MoRF of abs | LeRF of abs | gap of abs |")
    print("|---|---|---|---|---|---|---|")
    for name in recorded["methods"]:
        with np.load(out / "methods" / f"{name}.npz") as saved:
            maps = jnp.asarray(saved["maps"])
        cells = []
        for m in (maps, jnp.abs(maps)):
            morf, lerf = (float(road(m, order).mean()) for order in ("morf", "lerf"))
            cells += [f"{morf:.3f}", f"{lerf:.3f}", f"{lerf - morf:.3f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    _cli.run(main)
