r"""Test every class of a trained classifier against every class as a concept (TCAV).

    python -m experiments.tcav --workdir=runs/cnn_fmnist --config=configs/tcav.py
    python -m experiments.tcav --workdir=runs/cnn_fmnist --config=configs/tcav.py \
        --config.layers='("conv3",)' --config.output=tcav_conv3

Writes tcav.npz, tcav.json and tcav.png (the classes x concepts score matrices, one
panel per layer) under <workdir>/<output>/.
"""

import sys
from pathlib import Path

if not __package__:  # started as `python path/to/experiments/<script>.py`, from any folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

import configs  # noqa: E402
from experiments import _cli  # noqa: E402
from fmi_jax import studies  # noqa: E402

_CONFIG = _cli.define_config(configs.path("tcav"), "TCAV study config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by experiments.train.")
flags.mark_flag_as_required("workdir")


def main():
    result = studies.run_tcav(_CONFIG.value, _WORKDIR.value)
    for layer, found in result.summary["layers"].items():
        print(
            f"{layer}: own-class concept scores {found['diagonal_sign_count_mean']:.2f} on "
            f"average, significant for {found['diagonal_significant']} of "
            f"{len(result.summary['classes'])} classes; Spearman correlation with the "
            f"model's confusions {found['confusion_spearman']:.2f}"
        )
    print(f"figure: {result.out_dir / 'tcav.png'}")


if __name__ == "__main__":
    _cli.run(main)
