r"""Hyper-parameter tuning: a grid of trainings ranked on validation, the best retrained.

    python -m experiments.tune --config=configs/tune_cnn.py --workdir=runs/tune_cnn
    python -m experiments.tune --config=configs/tune_resnet.py --workdir=runs/tune_resnet
    python -m experiments.tune --config=configs/tune_resnet.py:smoke --workdir=/tmp/tune

Re-running with the same --workdir skips finished trials and resumes an interrupted
one. Writes trials/<point>/, results.{md,csv,json} and best/ under --workdir.
"""

import sys
from pathlib import Path

if not __package__:  # started as `python path/to/experiments/<script>.py`, from any folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from experiments import _cli  # noqa: E402
from fmi_jax import studies  # noqa: E402

_CONFIG = _cli.define_config(None, "Tuning study config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the trials and tables go.")
flags.mark_flags_as_required(["config", "workdir"])


def main():
    studies.run_tune(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    _cli.run(main)
