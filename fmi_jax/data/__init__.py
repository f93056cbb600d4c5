"""Datasets for fmi_jax as host-side numpy arrays: uint8 NHWC images, int32 labels.

Front door::

    from fmi_jax import data

    test = data.load("fashion_mnist", "test")
    sets = data.load_splits("fashion_mnist", validation_size=5000, seed=0)
    tiny = data.load_splits("synthetic", validation_size=100, num_train=1000)

Sources, in the order they are tried (see :mod:`fmi_jax.data.sources`): a
``data_dir`` with the original files; ``$FMI_DATA_DIR/<name>/`` and Debian's
``dataset-fashion-mnist`` package; tensorflow-datasets. Modules:

* :mod:`~fmi_jax.data.idx` -- IDX files (MNIST, Fashion-MNIST);
* :mod:`~fmi_jax.data.cifar` -- CIFAR-10 python pickles;
* :mod:`~fmi_jax.data.tfds_source` -- tensorflow-datasets without TensorFlow;
* :mod:`~fmi_jax.data.synthetic` -- generated datasets for tests;
* :mod:`~fmi_jax.data.validation` -- the one check every source passes;
* :mod:`~fmi_jax.data.splits` -- validation holdout and size limits.

Nothing here touches jax: batching and device placement belong to
:mod:`fmi_jax.train`.
"""

from fmi_jax.data.dataset import SPLITS, Dataset
from fmi_jax.data.errors import DataError, DataNotFoundError
from fmi_jax.data.registry import DATASETS, DatasetSpec
from fmi_jax.data.sources import load, load_splits
from fmi_jax.data.splits import train_validation_split

__all__ = [
    "DATASETS",
    "DataError",
    "DataNotFoundError",
    "Dataset",
    "SPLITS",
    "DatasetSpec",
    "load",
    "load_splits",
    "train_validation_split",
]
