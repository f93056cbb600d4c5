"""The tuning study over ResNet depth and width, the grid of the original project.

    python -m experiments.tune --config=configs/tune_resnet.py --workdir=runs/tune_resnet

6 trials: residual blocks {3, 4, 5} x filters {32, 64}, with random crops, flips and
random erasing, label smoothing and a one-cycle learning rate; bfloat16 compute
(float32 parameters) on accelerators, float32 on CPUs (`trial.model.dtype='auto'`).
`:smoke` is a two-trial study of seconds.
"""

import ml_collections
from ml_collections import config_dict

from configs import cnn_fmnist


def get_config(arg=None):
    trial = cnn_fmnist.get_config(arg)
    trial.model = {
        "name": "resnet",
        "num_blocks": 3,
        "filters": 32,
        "pre_activation": False,
        "dropout": 0.0,
        # bfloat16 compute on GPUs and TPUs, float32 on CPUs (fmi_jax/train/loop.py).
        "dtype": "auto",
    }
    trial.num_epochs = 15
    trial.optimizer = "sgd"
    trial.learning_rate = 0.1
    trial.schedule = "onecycle"
    trial.weight_decay = 5e-4
    trial.label_smoothing = 0.1
    trial.augment = {"flip": True, "crop_padding": 2, "erasing": 0.25}
    trial.progress = False

    config = ml_collections.ConfigDict()
    config.trial = trial
    config.grid = {"model": {"num_blocks": (3, 4, 5), "filters": (32, 64)}}
    # Trials may screen on a subset (--config.trial.data.train_limit=10000); the best is
    # retrained on the whole training split.
    config.final = {"num_epochs": 40, "data": {"train_limit": config_dict.placeholder(int)}}
    config.retrain = True
    config.layer_cam = {"method": "grad_cam", "samples": 8}
    if arg == "smoke":
        trial.num_epochs = 1  # the epochs set above replaced the smoke shrink's
        config.grid = {"model": {"num_blocks": (1, 2), "filters": (4,)}}
        config.final.num_epochs = 1
        config.final.data.train_limit = 256
        config.layer_cam.samples = 3
    return config
