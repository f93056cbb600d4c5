"""The tuning study over the two-conv CNN, the grid of the original project.

    python -m experiments.tune --config=configs/tune_cnn.py --workdir=runs/tune_cnn
    python -m experiments.tune --config=configs/tune_cnn.py --workdir=runs/tune_cnn \
        --config.grid.model.filter_size='(3,)' --config.trial.num_epochs=5

24 trials: conv1 filters {32, 64} x conv2 filters {64, 128} x filter size {3, 5} x
dense width {32, 64, 128}. Each trains `trial.num_epochs` on the training split and is
ranked by validation accuracy; the best is retrained with `final` and evaluated on
train, validation and test. `:smoke` is a two-trial study of seconds.
"""

import ml_collections
from ml_collections import config_dict

from configs import cnn_fmnist


def get_config(arg=None):
    trial = cnn_fmnist.get_config(arg)
    trial.model = {
        "name": "cnn_tunable",
        "conv1_filters": 32,
        "conv2_filters": 64,
        "filter_size": 3,
        "dense_width": 128,
        "dropout": 0.3,
        "batch_norm": True,
    }
    trial.num_epochs = 10
    trial.progress = False  # 24 progress bars would bury the study's log

    config = ml_collections.ConfigDict()
    config.trial = trial
    config.grid = {
        "model": {
            "conv1_filters": (32, 64),
            "conv2_filters": (64, 128),
            "filter_size": (3, 5),
            "dense_width": (32, 64, 128),
        }
    }
    # The best configuration is retrained from scratch with these overrides.
    # Trials may screen on a subset (--config.trial.data.train_limit=10000); the best is
    # retrained on the whole training split.
    config.final = {"num_epochs": 30, "data": {"train_limit": config_dict.placeholder(int)}}
    config.retrain = True
    config.layer_cam = {"method": "grad_cam", "samples": 8}
    if arg == "smoke":
        trial.num_epochs = 1  # the epochs set above replaced the smoke shrink's
        trial.model.conv1_filters = 8
        trial.model.conv2_filters = 8
        config.grid = {"model": {"dense_width": (16, 32)}}
        config.final.num_epochs = 1
        config.final.data.train_limit = 256
        config.layer_cam.samples = 3
    return config
