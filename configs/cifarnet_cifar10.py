"""CifarNet on CIFAR-10: the PyTorch tutorial network, trained with this repo's recipe.

    python -m experiments.train --config=configs/cifarnet_cifar10.py --workdir=runs/cifarnet \
        --config.data.data_dir=/path/to/cifar-10-batches-py   # or the .tar.gz's folder

CIFAR-10 comes from the original python files (`cifar-10-python.tar.gz` or its
extracted `cifar-10-batches-py/`) in `data.data_dir` or `$FMI_DATA_DIR/cifar10`,
else from tensorflow-datasets (which downloads it when online).
"""

from configs import cnn_fmnist, common


def get_config(arg=None):
    config = cnn_fmnist.get_config()
    config.data = common.data_config("cifar10", validation_size=5000)
    config.model = {
        "name": "cifarnet",
        "features": (6, 16),
        "kernel_size": 5,
        "dense": (120, 84),
    }
    config.num_epochs = 30
    config.learning_rate = 1e-3
    config.label_smoothing = 0.0
    # Natural images: mirror flips and padded crops are label-preserving.
    config.augment = {"flip": True, "crop_padding": 4, "erasing": 0.0}
    config = common.finalize(config, arg)
    return config
