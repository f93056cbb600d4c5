"""The Fashion-MNIST CNN: three conv blocks with batch norm, dense 256, dropout.

python -m experiments.train --config=configs/cnn_fmnist.py --workdir=runs/cnn_fmnist
"""

from configs import common


def get_config(arg=None):
    config = common.training_config()
    config.data = common.data_config("fashion_mnist", validation_size=5000)
    config.model = {
        "name": "cnn_fmnist",
        "features": (32, 64, 128),
        "dense": (256,),
        "dropout": 0.3,
        "batch_norm": True,
    }
    config.num_epochs = 20
    config.learning_rate = 2e-3
    config.label_smoothing = 0.1
    config.augment = {"flip": True, "crop_padding": 2, "erasing": 0.0}
    config = common.finalize(config, arg)
    if arg == "smoke":
        config.model.features = (8, 16, 16)
        config.model.dense = (32,)
    return config
