r"""Evaluate a trained workdir: loss, accuracy, precision, recall, F1 per split.

    python -m experiments.evaluate --workdir=runs/cnn_fmnist

Prints the table, writes metrics.json, metrics.md and confusion_matrix.png.
"""

import sys
from pathlib import Path

if not __package__:  # started as `python path/to/experiments/<script>.py`, from any folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from experiments import _cli  # noqa: E402
from fmi_jax import train  # noqa: E402
from fmi_jax.studies import figures  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by experiments.train.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or an epoch number.")
_SPLITS = flags.DEFINE_list("splits", ["train", "validation", "test"], "Splits to evaluate.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Recompute even if metrics.json has this checkpoint."
)
flags.mark_flag_as_required("workdir")


def main():
    result = train.evaluate_workdir(
        _WORKDIR.value,
        checkpoint=_CHECKPOINT.value,
        splits=_SPLITS.value,
        overwrite=_OVERWRITE.value,
    )
    figures.confusion_matrix(result, _WORKDIR.value)


if __name__ == "__main__":
    _cli.run(main)
