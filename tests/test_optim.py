"""Schedules and optimizers built from a config."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from fmi_jax.train import optim


def cfg(**kw):
    base = dict(
        num_epochs=10,
        learning_rate=0.1,
        schedule="cosine",
        warmup_epochs=1.0,
        optimizer="adamw",
        weight_decay=0.1,
    )
    base.update(kw)
    return ml_collections.ConfigDict(base)


def test_cosine_warms_up_then_decays_to_zero():
    s = optim.make_schedule(cfg(), steps_per_epoch=100)
    assert float(s(0)) == 0.0
    assert float(s(100)) == pytest.approx(0.1)
    assert float(s(550)) == pytest.approx(0.05, rel=1e-3)  # half-way through the cosine
    assert float(s(1000)) == pytest.approx(0.0, abs=1e-7)


def test_a_warm_up_as_long_as_the_run_is_warned_about(caplog):
    # One epoch of the default config (warm-up 1.0): the rate peaks at the last step.
    with caplog.at_level("WARNING"):
        s = optim.make_schedule(cfg(num_epochs=1), steps_per_epoch=100)
    assert float(s(99)) < 0.1 and "the whole run is warm-up" in caplog.text
    assert "never decays" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        optim.make_schedule(cfg(num_epochs=2), steps_per_epoch=100)
    assert "warm-up" not in caplog.text


def test_onecycle_peaks_inside_the_run():
    s = optim.make_schedule(cfg(schedule="onecycle"), steps_per_epoch=100)
    values = np.array([float(s(i)) for i in range(0, 1001, 10)])
    assert values.max() == pytest.approx(0.1, rel=1e-2)
    assert 0 < values.argmax() < len(values) - 1 and values[-1] < 1e-3


def test_weight_decay_spares_biases():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    zero = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros((2,))}  # no gradient: only decay acts
    tx, _ = optim.make_optimizer(
        cfg(schedule="constant", warmup_epochs=0.0, learning_rate=1.0), steps_per_epoch=1
    )
    updates, _ = tx.update(zero, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["kernel"], 1 - 0.1)  # decayed by lr * wd
    np.testing.assert_allclose(new["bias"], 1.0)  # untouched


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("schedule", "linear", "unknown schedule 'linear'"),
        ("optimizer", "lion", "unknown optimizer 'lion'"),
    ],
)
def test_unknown_names(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        optim.make_optimizer(cfg(**{field: value}), steps_per_epoch=10)
