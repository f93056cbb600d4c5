r"""Train a classifier.

    python -m experiments.train --config=configs/cnn_fmnist.py --workdir=runs/cnn_fmnist
    python -m experiments.train --config=configs/cnn_fmnist.py:smoke --workdir=/tmp/smoke \
        --config.num_epochs=2

Re-running with the same --workdir resumes from its latest checkpoint.
"""

import sys
from pathlib import Path

if not __package__:  # started as `python path/to/experiments/<script>.py`, from any folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from experiments import _cli, _distributed  # noqa: E402
from fmi_jax import train  # noqa: E402
from fmi_jax.studies import figures  # noqa: E402

_CONFIG = _cli.define_config(None, "Training config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and figures go.")
flags.mark_flags_as_required(["config", "workdir"])


def main():
    _distributed.maybe_initialize()
    config = _CONFIG.value
    train.train_and_evaluate(config, _WORKDIR.value, on_epoch_end=figures.training_curves(config))


if __name__ == "__main__":
    _cli.run(main)
