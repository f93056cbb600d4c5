"""Brief training on the real Fashion-MNIST: test accuracy above 80%.

Runs wherever fmi_jax finds the data without a download (Debian's
dataset-fashion-mnist, $FMI_DATA_DIR/fashion_mnist, a prepared tfds data_dir);
skipped with the reason otherwise. CI installs the Debian package, so it runs there.
"""

import json

import pytest

import configs
from fmi_jax import data, train

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fashion_mnist_source():
    try:
        return data.load("fashion_mnist", "test", download=False).source
    except data.DataNotFoundError as e:
        pytest.skip(f"real Fashion-MNIST not available offline: {str(e).splitlines()[0]}")


@pytest.mark.slow
def test_one_epoch_on_real_fashion_mnist_beats_80_percent(tmp_path, fashion_mnist_source):
    config = configs.load("cnn_fmnist")
    config.data.download = False
    config.num_epochs = 1
    config.warmup_epochs = 0.1
    config.model.features = (16, 32, 32)
    config.model.dense = (64,)
    config.progress = False
    result = train.train_and_evaluate(config, tmp_path)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["test_accuracy"] > 0.80, (summary, fashion_mnist_source)
    assert result.history[0]["val_accuracy"] > 0.80
    assert result.train_step_compiles == 1
