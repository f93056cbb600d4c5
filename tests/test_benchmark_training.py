"""The training-time row of the benchmark (fmi_jax/benchmark/training.py).

The fmi_jax side runs without torch (CI); the cross-framework agreement test needs
torch and is skipped where it is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

from configs import cnn_fmnist
from fmi_jax.benchmark import training


def _data(n: int = 256, seed: int = 0):
    """Learnable uint8 images: each class is a brightness level plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = labels[:, None, None, None] * 22 + rng.integers(0, 30, (n, 28, 28, 1))
    return images.astype(np.uint8), labels


def _config(**overrides):
    config = cnn_fmnist.get_config("smoke")  # features (8, 16, 16), batch 32
    config.num_epochs = 4
    for k, v in overrides.items():
        setattr(config, k, v)
    return config


@pytest.fixture(scope="module")
def trained():
    images, labels = _data()
    trainer = training.JaxTrainer(_config(), images, labels)
    compile_s = trainer.compile()
    losses = [trainer.run(epoch) for epoch in (1, 2, 3)]
    return trainer, compile_s, losses


@pytest.mark.slow
def test_jax_trainer_runs_the_library_loop_and_learns(trained):
    trainer, compile_s, losses = trained
    assert trainer.loop == "scan"  # what Trainer (choose_loop) picks for "auto"
    assert trainer.steps_per_epoch == 256 // 32
    assert all(len(epoch) == trainer.steps_per_epoch for epoch in losses)
    assert np.mean(losses[-1]) < np.mean(losses[0])
    assert compile_s > 0
    assert trainer.compiles == 1  # one program for the warm-up and every epoch
    assert int(trainer.state.step) == 2 * trainer.chunk + 3 * trainer.steps_per_epoch


def test_jax_trainer_params_flat_and_moved(trained):
    trainer, _, _ = trained
    params = trainer.params()
    assert "conv1/conv/kernel" in params and "head/bias" in params
    assert params["conv1/conv/kernel"].shape == (3, 3, 1, 8)
    initial = trainer.initial_variables["params"]["head"]["kernel"]
    assert not np.allclose(params["head/kernel"], initial)


def test_timed_steps_rounds_to_dispatches():
    images, labels = _data(n=320)
    trainer = training.JaxTrainer(
        _config(loop="scan", steps_per_dispatch=4), images, labels
    )  # 10 steps per epoch -> 2 steps per dispatch (largest divisor of 10 <= 4)
    assert trainer.chunk == 2
    assert trainer.timed_steps(None) == 10
    assert trainer.timed_steps(3) == 4
    assert trainer.timed_steps(50) == 10
    with pytest.raises(ValueError, match="at least 1"):
        trainer.timed_steps(0)


def test_compile_warms_the_shorter_last_dispatch_so_epochs_compile_nothing():
    images, labels = _data(n=416)  # 13 steps per epoch: dispatches of 4, 4, 4 and 1
    config = _config(loop="scan", steps_per_dispatch=4, log_every_steps=8)
    trainer = training.JaxTrainer(config, images, labels)
    assert (trainer.chunk, trainer.trainer.tail, trainer.programs) == (4, 1, 2)
    assert trainer.compile() > 0
    assert trainer.compiles == 2
    assert len(trainer.run(1)) == 13
    assert trainer.compiles == 2  # the timed epoch compiled nothing
    # The metrics are read every 8 steps and at the end of the epoch: windows of 8 and 5.
    windows = []
    stats = trainer.trainer.run_epoch(
        2, on_window=lambda window, stats: windows.append((len(window), stats.steps))
    )
    assert windows == [(8, 8), (5, 13)]
    assert stats.compile_s is None and stats.steps == 13


def test_epoch_row_extrapolates_per_step_time():
    row = training.epoch_row(
        jax_times=[2.0, 1.0, 3.0],
        torch_times=[4.0, 5.0, 6.0],
        steps_timed=10,
        steps_per_epoch=100,
        batch=128,
        compile_s=0.5,
        options={"x": 1},
    )
    assert row["method"] == "train_epoch" and row["reference"] == "PyTorch training loop"
    assert row["fmi_jax_s"] == pytest.approx(20.0)  # median 2 s per 10 steps x 10
    assert row["pytorch_s"] == pytest.approx(50.0)
    assert row["speedup"] == pytest.approx(2.5)
    assert row["fmi_jax_images_per_s"] == pytest.approx(1280 / 2.0)
    assert row["pytorch_images_per_s"] == pytest.approx(1280 / 5.0)
    assert row["steps_timed"] == 10 and row["steps_per_epoch"] == 100
    assert row["fmi_jax_compile_s"] == 0.5
    assert row["options"]["x"] == 1
    assert "10 steps x 100" in row["options"]["per_epoch"]
    whole = training.epoch_row(
        jax_times=[1.0],
        torch_times=[1.0],
        steps_timed=100,
        steps_per_epoch=100,
        batch=1,
        compile_s=0.0,
        options={},
    )
    assert whole["fmi_jax_s"] == 1.0 and whole["options"]["per_epoch"].startswith("measured")


def test_agreement_config_is_deterministic():
    config = cnn_fmnist.get_config()
    c = training.agreement_config(config, 5)
    assert c.model.dropout == 0.0 and not any(c.augment.values())
    assert c.num_epochs == 1 and round(c.warmup_epochs * 5) == 2
    assert config.model.dropout == 0.3 and config.augment.flip  # the original is untouched


def test_bad_input_is_a_clear_error():
    images, labels = _data(n=64)
    with pytest.raises(ValueError, match="uint8 NHWC"):
        training.JaxTrainer(_config(), images.astype(np.float32) / 255, labels)
    with pytest.raises(ValueError, match="64 images but 63 labels"):
        training.JaxTrainer(_config(), images, labels[:63])
    with pytest.raises(ValueError, match="uint8 NHWC"):
        training.training_benchmark(_config(), images[..., 0], labels, repeats=1)


@pytest.mark.parametrize("threads", [1, 2])
def test_agreement_with_pytorch_on_the_smoke_model(threads):
    torch = pytest.importorskip("torch")
    images, labels = _data(n=5 * 32)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        record = training._agreement(
            _config(), images, labels, 5, "cpu", training.DEFAULT_TOLERANCE
        )
    finally:
        torch.set_num_threads(before)
    assert record["initial_params_relative_l2_error"] == 0.0
    assert record["passed"], record
    assert record["update_relative_l2_error"] < 1e-3
    assert record["update_rounding_relative_l2"]["pytorch"] > 0  # float64 differs


def _updates(rng, shapes, noise):
    """initial, and final parameters of four runs: exact, two float32 runs of the same
    code in different summation orders (spread `noise`), and one of other code."""
    initial = {k: rng.standard_normal(s) for k, s in shapes.items()}
    step = {k: 1e-2 * rng.standard_normal(s) for k, s in shapes.items()}
    exact = {k: initial[k] + step[k] for k in shapes}
    jitter = lambda: {
        k: exact[k] + noise * 1e-2 * rng.standard_normal(s) for k, s in shapes.items()
    }
    return initial, exact, jitter(), jitter(), jitter()


def test_update_agreement_allows_rounding_and_refuses_a_real_difference():
    rng = np.random.default_rng(0)
    shapes = {"conv/kernel": (3, 3, 8, 16), "bn/bias": (16,)}
    initial, exact, ours, reordered, theirs = _updates(rng, shapes, noise=1e-4)
    record = training.update_agreement(initial, ours, theirs, exact, reordered)
    assert record["passed"], record
    assert 1e-5 < record["update_relative_l2_error"] < 1e-3
    # Rounding-free runs: identical sides pass, the floor keeps the allowance positive.
    same = training.update_agreement(initial, exact, exact, exact, exact)
    assert same["passed"] and same["update_error_over_allowed"] == 0.0
    # A 1% change of one tensor's step on one side (a learning rate 1% off, say: in
    # both of that side's runs) is refused, and named as the worst tensor.
    off = lambda run: dict(run, **{"bn/bias": run["bn/bias"] + 0.01 * step["bn/bias"]})
    step = {k: exact[k] - initial[k] for k in shapes}
    record = training.update_agreement(initial, off(ours), theirs, exact, off(reordered))
    assert not record["passed"]
    assert record["worst_tensor"] == "bn/bias"
    assert record["worst_tensor_error_over_allowed"] > 1.0
    record = training.update_agreement(initial, ours, off(theirs), off(exact), reordered)
    assert not record["passed"] and record["worst_tensor"] == "bn/bias"
    # A tensor whose own spread happens to vanish is floored by the model-wide one.
    lucky = dict(reordered, **{"bn/bias": ours["bn/bias"]})
    assert training.update_agreement(initial, ours, theirs, exact, lucky)["passed"]
    with pytest.raises(ValueError, match="parameter sets"):
        training.update_agreement(initial, ours, {"x": 1}, exact, reordered)


def test_pytorch_augment_matches_the_transforms():
    torch = pytest.importorskip("torch")
    from fmi_jax.benchmark import torch_training

    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4) + 1
    g = torch.Generator().manual_seed(0)
    y = torch_training.augment(x, flip=True, crop_padding=1, generator=g)
    assert y.shape == x.shape
    for i in range(2):
        # every output row is a (possibly flipped) shifted window of the zero-padded image
        padded = torch.nn.functional.pad(torch.stack([x[i], x[i].flip(-1)]), (1, 1, 1, 1))
        windows = [
            padded[f, :, r : r + 4, c : c + 4] for f in (0, 1) for r in range(3) for c in range(3)
        ]
        assert any(torch.equal(y[i], w) for w in windows)
