r"""Explain a trained classifier with several attribution methods.

    python -m experiments.explain --workdir=runs/cnn_fmnist --config=configs/explain.py
    python -m experiments.explain --workdir=runs/cnn_fmnist --config=configs/explain.py \
        --config.methods='("saliency","deeplift")' --config.output=explain_two
    python -m experiments.explain --workdir=runs/cnn_mnist --config=configs/explain_mnist.py

Methods are named as in fmi_jax.attribution.METHODS (saliency, integrated_gradients,
smoothgrad, deeplift, grad_cam, score_cam, occlusion, feature_permutation, ...).
Writes attributions.npz, stats.json and figures (per-sample sheets, galleries, the
per-layer Grad-CAM figure) under <workdir>/<output>/.
"""

import sys
from pathlib import Path

if not __package__:  # started as `python path/to/experiments/<script>.py`, from any folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

import configs  # noqa: E402
from experiments import _cli  # noqa: E402
from fmi_jax import studies  # noqa: E402

_CONFIG = _cli.define_config(configs.path("explain"), "Explain study config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by experiments.train.")
flags.mark_flag_as_required("workdir")


def main():
    config = _CONFIG.value
    result = studies.run_explain(config, _WORKDIR.value)
    print(
        f"explanations of {len(result.indices)} {config.split} images: "
        f"{result.out_dir / 'index.html'}"
    )


if __name__ == "__main__":
    _cli.run(main)
