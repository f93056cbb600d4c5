r"""Score every attribution method by every metric and write a leaderboard.

    python -m experiments.evaluate_attributions --workdir=runs/cnn_fmnist \
        --config=configs/evaluate_attributions.py
    python -m experiments.evaluate_attributions --workdir=runs/cnn_fmnist \
        --config=configs/evaluate_attributions.py:smoke --config.output=metrics_smoke

Metrics: deletion/insertion AUC, MoRF/LeRF AOPC, infidelity, max-sensitivity,
sparseness, cascading-randomisation sanity check, seconds. Writes leaderboard.md/.csv/
.json, curves.npz, deletion_insertion.png, randomization.png, agreement.json/.png and
per-method caches (methods/) under <workdir>/<output>/; a rerun skips finished methods.
"""

import sys
from pathlib import Path

if not __package__:  # started as `python path/to/experiments/<script>.py`, from any folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

import configs  # noqa: E402
from experiments import _cli  # noqa: E402
from fmi_jax import studies  # noqa: E402

_CONFIG = _cli.define_config(
    configs.path("evaluate_attributions"), "Attribution-metrics study config."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by experiments.train.")
flags.mark_flag_as_required("workdir")


def main():
    studies.run_evaluate_attributions(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    _cli.run(main)
