"""The MNIST CNN: two conv layers, two max-pools, two fully connected layers.

A variant of the Fashion-MNIST config: same training recipe, other data and model.

    python -m experiments.train --config=configs/cnn_mnist.py --workdir=runs/cnn_mnist
"""

from configs import cnn_fmnist, common


def get_config(arg=None):
    config = cnn_fmnist.get_config()
    config.data = common.data_config("mnist", validation_size=5000)
    config.model = {
        "name": "cnn_mnist",
        "features": (32, 64),
        "kernel_size": 5,
        "dense": (128,),
        "dropout": 0.5,
    }
    config.num_epochs = 8
    config.learning_rate = 1e-3
    config.label_smoothing = 0.0
    # Digits are not mirror-symmetric: no flips.
    config.augment = {"flip": False, "crop_padding": 2, "erasing": 0.0}
    config = common.finalize(config, arg)
    if arg == "smoke":
        config.model.features = (8, 16)
        config.model.dense = (32,)
    return config
