r"""The k-sparse autoencoder study: train the autoencoder, the classifier on its codes,
optionally fine-tune end to end, then explain pixels -> codes -> prediction.

    python -m experiments.sae_study --config=configs/sae_fmnist.py --workdir=runs/sae_fmnist
    python -m experiments.sae_study --config=configs/sae_fmnist.py:smoke --workdir=/tmp/sae

Re-running with the same --workdir resumes each phase and skips finished ones.
Writes autoencoder/, classifier/, (finetune/), explain/, sae_metrics.json and the
dictionary figures under --workdir.
"""

import sys
from pathlib import Path

if not __package__:  # started as `python path/to/experiments/<script>.py`, from any folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from experiments import _cli  # noqa: E402
from fmi_jax import studies  # noqa: E402

_CONFIG = _cli.define_config(None, "Sparse autoencoder study config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the phases and results go.")
flags.mark_flags_as_required(["config", "workdir"])


def main():
    studies.run_sae_study(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    _cli.run(main)
