r"""Explain every image of a folder: top-k predictions and integrated gradients.

    python -m experiments.explain_images --images=photos/ --workdir=runs/photos \
        --config=configs/explain_images.py --config.weights=mobilenet_v3_large.pth
    python -m experiments.explain_images --images='photos/**/*.jpg' --workdir=runs/jpg \
        --config=configs/explain_images.py --config.ig.steps=300
    python -m experiments.explain_images --images=photos/ --workdir=/tmp/smoke \
        --config=configs/explain_images.py:smoke

--images is a folder (searched recursively), a glob (quote it) or one file. Writes
predictions.json, attributions.npz, figures/<name>.png, summary.png and skipped.json
under --workdir (see fmi_jax/studies/explain_images.py).
"""

import sys
from pathlib import Path

if not __package__:  # started as `python path/to/experiments/<script>.py`, from any folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

import configs  # noqa: E402
from experiments import _cli  # noqa: E402
from fmi_jax import studies  # noqa: E402

_CONFIG = _cli.define_config(configs.path("explain_images"), "Image explanation config.")
_IMAGES = flags.DEFINE_string("images", None, "A folder of images, a glob or one file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the results go.")
flags.mark_flags_as_required(["images", "workdir"])


def main():
    studies.run_explain_images(_CONFIG.value, _IMAGES.value, _WORKDIR.value)


if __name__ == "__main__":
    _cli.run(main)
