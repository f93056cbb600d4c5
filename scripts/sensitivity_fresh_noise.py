r"""Max-sensitivity with the method's noise held fixed (the metrics study) and drawn
afresh for every perturbed copy (Captum's sensitivity_max).

    python scripts/sensitivity_fresh_noise.py --workdir=runs/demo

Explains the first `--images` test images of a trained run (the predicted class) with
the options of configs/evaluate_attributions.py and prints, per method, the mean
max-sensitivity of `fmi_jax.evaluation.max_sensitivity` with the study's settings
(radius 0.02, 10 perturbations), once with every copy explained on the clean image's
key (`independent_explain_keys=False`, the study) and once with a fresh key per copy.
The two agree for a deterministic method; for SmoothGrad the second adds its sampling
variance. docs/results.md reports what it measured. Bad input (no run in --workdir)
ends in one `error:` line and exit status 2.
"""

import sys
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import flags  # noqa: E402

from configs import evaluate_attributions as study_config  # noqa: E402
from experiments import _cli  # noqa: E402
from fmi_jax import attribution, evaluation  # noqa: E402
from fmi_jax.attribution.core import example_keys  # noqa: E402
from fmi_jax.studies.explain import method_options  # noqa: E402
from fmi_jax.train import evaluate as evaluate_lib  # noqa: E402
from fmi_jax.train import loop as loop_lib  # noqa: E402
from fmi_jax.train.input_pipeline import to_float  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/cnn_fmnist", "A trained run.")
_IMAGES = flags.DEFINE_integer("images", 100, "Test images (the first ones).")
_METHODS = flags.DEFINE_list(
    "methods", ["saliency", "gaussian_saliency", "smoothgrad", "ig_smoothgrad"], "Methods."
)


def main():
    if _IMAGES.value < 1:
        raise ValueError(f"--images must be at least 1, got {_IMAGES.value}")
    config = study_config.get_config()
    model, variables, run_config, _ = evaluate_lib.restore_model(_WORKDIR.value)
    split = loop_lib.load_data(run_config.data)["test"]
    x = jnp.asarray(to_float(split.images[: _IMAGES.value]))
    fn = jax.jit(lambda inputs: model.apply(variables, inputs))
    target = jnp.argmax(fn(x), axis=-1)
    keys = example_keys(jax.random.key(0), x.shape[0])
    print(
        f"{x.shape[0]} images; radius {config.sensitivity.radius}, "
        f"{config.sensitivity.samples} perturbations"
    )
    print("| method | noise held fixed (study) | fresh noise per copy (Captum) |")
    print("|---|---|---|")
    for name in _METHODS.value:
        explain = attribution.explainer(
            name, fn, model=model, variables=variables, **method_options(config, name)
        )
        cells = [
            float(
                evaluation.max_sensitivity(
                    explain,
                    x,
                    target,
                    keys,
                    radius=float(config.sensitivity.radius),
                    samples=int(config.sensitivity.samples),
                    independent_explain_keys=fresh,
                    batch_size=int(config.batch_size),
                ).mean()
            )
            for fresh in (False, True)
        ]
        print(f"| {name} | {cells[0]:.3f} | {cells[1]:.3f} |", flush=True)


if __name__ == "__main__":
    _cli.run(main)
