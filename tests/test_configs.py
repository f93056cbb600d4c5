"""Every config loads, in full and as :smoke, and builds its model."""

from pathlib import Path

import pytest

import configs
from fmi_jax import models

TRAINING_CONFIGS = sorted(
    p.stem
    for p in (Path(configs.__file__).parent).glob("*.py")
    if p.stem not in ("__init__", "common")
)


@pytest.mark.parametrize("name", TRAINING_CONFIGS)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_config_loads_and_builds_its_model(name, arg):
    config = configs.load(name, arg)
    if "model" in config:
        kwargs = {k: v for k, v in config.model.items() if k != "name"}
        models.get_model(config.model.name, **kwargs)
    if arg == "smoke":
        # A run of seconds: a tuning study's trials and its retrain too.
        for part in (config, config.get("trial"), config.get("final")):
            if part is not None and "num_epochs" in part:
                assert part.num_epochs <= 2


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown config variant 'tiny'"):
        configs.load("cnn_fmnist", "tiny")


def test_a_loaded_config_is_locked_like_the_flag():
    """A misspelt field is an error that names the right one, not a new field nothing
    reads; existing fields take values, and unlocked() still adds a model argument."""
    config = configs.load("cnn_fmnist:smoke")
    config.num_epochs = 2
    with pytest.raises(AttributeError, match='Did you mean "num_epochs"'):
        config.num_epoch = 2
    with pytest.raises(AttributeError, match="locked"):
        config.model.kernel_sise = 5
    with config.unlocked():
        config.model.kernel_size = 5
    assert config.num_epochs == 2 and config.model.kernel_size == 5
    assert "num_epoch" not in config
