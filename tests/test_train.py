"""The training loop end to end on synthetic data: learning, compiles, resume, errors."""

import dataclasses
import functools
import json
import shutil
from unittest import mock

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from fmi_jax import data, models, train
from fmi_jax.studies import figures
from fmi_jax.train import loop as loop_lib
from fmi_jax.train import steps
from fmi_jax.train import trainer as trainer_lib
from fmi_jax.train.checkpoint import CheckpointMismatchError


def params_of(workdir, which="latest"):
    _, variables, _, _ = train.restore_model(workdir, checkpoint=which)
    return variables


def test_train_step_lowers_the_loss():
    ds = data.load("synthetic", "train", num_train=64, num_test=8)
    model = models.get_model("cnn_fmnist", features=(8, 16, 16), dense=(32,), dropout=0.0)
    tx = optax.adam(3e-3)
    state = steps.create_train_state(model, jax.random.key(0), ds.image_shape, tx)
    batch = {"image": jnp.asarray(ds.images[:64]), "label": jnp.asarray(ds.labels[:64])}
    step = jax.jit(
        functools.partial(steps.train_step, schedule=optax.constant_schedule(3e-3)),
        donate_argnums=0,
    )
    losses = []
    for i in range(30):
        state, m = step(state, batch, jax.random.key(i))
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.3 * losses[0]
    assert int(state.step) == 30
    assert np.isfinite(float(m["grad_norm"])) and float(m["param_norm"]) > 0


def test_end_to_end_writes_everything_and_compiles_once(tmp_path, synthetic_config):
    config = synthetic_config(num_epochs=3)
    drawn = []
    draw = figures.training_curves(config)

    def on_epoch_end(history, workdir):
        drawn.append([r["epoch"] for r in history])
        draw(history, workdir)

    result = train.train_and_evaluate(config, tmp_path, on_epoch_end=on_epoch_end)
    assert drawn == [[1], [1, 2], [1, 2, 3]]
    assert result.train_step_compiles == 1
    assert result.eval_step_compiles == 1
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    record = json.loads(lines[-1])
    for key in (
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "grad_norm",
        "param_norm",
        "learning_rate",
        "epoch_time_s",
    ):
        assert np.isfinite(record[key]), key
    assert (tmp_path / "training_curves.png").stat().st_size > 10_000
    assert (tmp_path / "config.json").exists()
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["best_epoch"] in (1, 2, 3)
    # The synthetic classes are learnable: well above chance (10%) after three tiny epochs.
    assert summary["test_accuracy"] > 0.5, summary
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_training_curves_are_redrawn_at_most_a_set_share_of_the_time(monkeypatch, tmp_path):
    """Epoch 1 and the last epoch are always drawn; in between, only once the time since
    the last drawing is 1 / max_share times what it took."""
    # The hook is made at 0 s. Epoch 1 at 1 s: drawn (nothing drawn yet), until 2 s.
    # Epoch 2 at 3 s and epoch 3 at 5.9 s: under 1 s / 0.25 = 4 s since: skipped. Epoch 4
    # at 6 s: drawn, until 6.5 s. Epoch 5 at 7 s: under 2 s since: skipped. Epoch 6 at
    # 7.1 s, the last: drawn, until 7.2 s.
    clock = iter([0.0, 1.0, 2.0, 3.0, 5.9, 6.0, 6.5, 7.0, 7.1, 7.2])
    drawn = []
    monkeypatch.setattr(
        figures.plotting,
        "training_curves",
        lambda history, path, metric: drawn.append(len(history)),
    )
    config = ml_collections.ConfigDict({"num_epochs": 6, "task": "classification"})
    draw = figures.training_curves(config, max_share=0.25, clock=lambda: next(clock))
    history = []
    for epoch in range(1, 7):
        history.append({"epoch": epoch})
        draw(history, tmp_path)
    assert drawn == [1, 4, 6]
    with pytest.raises(ValueError, match="max_share"):
        figures.training_curves(config, max_share=0)


def test_resumed_run_equals_uninterrupted_run(tmp_path, synthetic_config, synthetic_run):
    config = synthetic_config(num_epochs=2)  # the config of the uninterrupted synthetic_run

    real_append = loop_lib._append_jsonl

    def crash_after_first_epoch(path, record):
        real_append(path, record)
        raise KeyboardInterrupt("simulated interruption")

    with mock.patch.object(loop_lib, "_append_jsonl", crash_after_first_epoch):
        with pytest.raises(KeyboardInterrupt):
            train.train_and_evaluate(config, tmp_path / "resumed")
    assert len((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()) == 1
    train.train_and_evaluate(config, tmp_path / "resumed")

    a = params_of(synthetic_run)
    b = params_of(tmp_path / "resumed")
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)
    assert len((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_run_resumed_on_other_training_examples_is_refused(
    tmp_path, synthetic_config, synthetic_run
):
    # The same dataset name, shape and split settings, read from another copy whose
    # examples come in another order: its validation holdout would be other images.
    workdir = tmp_path / "run"
    shutil.copytree(synthetic_run, workdir)
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    real_load = loop_lib.load_data

    def reordered(data_config):
        splits = real_load(data_config)
        train_ds = splits["train"]
        order = np.arange(len(train_ds))[::-1]
        splits["train"] = dataclasses.replace(
            train_ds, images=train_ds.images[order], labels=train_ds.labels[order]
        )
        return splits

    with mock.patch.object(loop_lib, "load_data", reordered):
        with pytest.raises(CheckpointMismatchError, match=r"the training examples: .*data_dir"):
            train.train_and_evaluate(synthetic_config(num_epochs=3), workdir)
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before

    def other_holdout(data_config):  # one validation image changed on disk
        splits = real_load(data_config)
        val_ds = splits["validation"]
        images = val_ds.images.copy()
        images[0] = 255 - images[0]
        splits["validation"] = dataclasses.replace(val_ds, images=images)
        return splits

    with mock.patch.object(loop_lib, "load_data", other_holdout):
        with pytest.raises(CheckpointMismatchError, match=r"the validation holdout: .*data_dir"):
            train.train_and_evaluate(synthetic_config(num_epochs=3), workdir)
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
    # The same examples resume (here: a finished run, extended by an epoch).
    assert train.train_and_evaluate(synthetic_config(num_epochs=3), workdir).best_epoch


def test_finished_run_is_not_retrained_or_overwritten(tmp_path, synthetic_config):
    config = synthetic_config(num_epochs=1)
    train.train_and_evaluate(config, tmp_path)

    def files():
        paths = [*tmp_path.glob("*.json*"), *(tmp_path / "tensorboard").iterdir()]
        return {p.name: p.read_bytes() for p in paths}

    before = files()
    result = train.train_and_evaluate(config, tmp_path)
    assert files() == before  # no new (empty) event file either
    assert result.train_step_compiles == 0  # nothing left to train


def test_a_longer_run_stopped_before_its_summary_gets_its_own(tmp_path, synthetic_config):
    """num_epochs grew, and the longer run stopped after its last checkpoint but before
    its summary: the rerun writes the longer run's summary instead of keeping the
    shorter run's (which stays beside it)."""
    train.train_and_evaluate(synthetic_config(num_epochs=1), tmp_path)
    real_append = loop_lib._append_jsonl

    def stop_after_epoch_2(path, record):
        real_append(path, record)
        if record.get("epoch") == 2:
            raise KeyboardInterrupt("simulated interruption")

    with mock.patch.object(loop_lib, "_append_jsonl", stop_after_epoch_2):
        with pytest.raises(KeyboardInterrupt):
            train.train_and_evaluate(synthetic_config(num_epochs=2), tmp_path)
    result = train.train_and_evaluate(synthetic_config(num_epochs=2), tmp_path)
    assert result.train_step_compiles == 0  # nothing left to train
    assert json.loads((tmp_path / "train_summary.json").read_text())["epochs"] == 2
    assert json.loads((tmp_path / "train_summary.1.json").read_text())["epochs"] == 1


def test_other_architecture_in_workdir_is_a_clear_error(tmp_path, synthetic_config):
    train.train_and_evaluate(synthetic_config(num_epochs=1), tmp_path)
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    other = synthetic_config(num_epochs=2, **{"model.features": (4, 8, 8)})
    with pytest.raises(
        train.CheckpointMismatchError,
        match=r"model.features: checkpoint has \[8, 16, 16\], config asks for \[4, 8, 8\].*new --workdir",
    ):
        train.train_and_evaluate(other, tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files


def test_nan_loss_fails_fast_naming_the_step(tmp_path, synthetic_config):
    config = synthetic_config(learning_rate=float("nan"), schedule="constant")
    with pytest.raises(train.NonFiniteLossError, match=r"optimizer step 1 \(epoch 1, batch 2 of"):
        train.train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize(
    "steps, per_dispatch, plan",
    [
        (429, 50, (39, 0)),  # a divisor at least half as long: every dispatch alike
        (20, 4, (4, 0)),
        (10, 4, (2, 0)),
        (3, 50, (3, 0)),  # an epoch shorter than a dispatch: one dispatch
        (859, 50, (50, 9)),  # a prime: 17 dispatches of 50 and one of 9
        (214, 50, (50, 14)),  # 2 x 107: dispatches of 2 would be nearly the step loop
        (13, 1, (1, 0)),
    ],
)
def test_dispatch_plan(steps, per_dispatch, plan):
    assert trainer_lib.dispatch_plan(steps, per_dispatch) == plan
    chunk, tail = plan
    assert (steps - tail) % chunk == 0 and tail < chunk


@pytest.mark.gpu
def test_scan_loop_matches_step_loop(tmp_path, synthetic_config):
    # 'highest': on a GPU (`pytest -m gpu`), float32 convolutions may otherwise run in
    # TF32, whose rounding the two programs would accumulate differently.
    with jax.default_matmul_precision("highest"):
        # 640 images in batches of 46: 13 steps per epoch, a prime, so 4-step dispatches
        # and a last one of 1 step (a second program).
        a = train.train_and_evaluate(
            synthetic_config(loop="step", batch_size=46), tmp_path / "step"
        )
        b = train.train_and_evaluate(
            synthetic_config(loop="scan", steps_per_dispatch=4, batch_size=46), tmp_path / "scan"
        )
    assert a.train_step_compiles == 1
    assert b.train_step_compiles == 2
    assert [r["step"] for r in b.history] == [r["step"] for r in a.history]
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
        a.state.params,
        b.state.params,
    )


def test_evaluate_workdir_table_and_files(tmp_path, synthetic_run, capsys):
    # A copy of the shared run: evaluation writes its files into the workdir.
    shutil.copytree(synthetic_run, tmp_path, dirs_exist_ok=True)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    out = train.evaluate_workdir(tmp_path)
    assert not (tmp_path / "confusion_matrix.png").exists()  # train/ draws no figures
    assert figures.confusion_matrix(out, tmp_path) == tmp_path / "confusion_matrix.png"
    printed = capsys.readouterr().out
    assert "| Split | Loss | Accuracy | Macro precision | Macro recall | Macro F1 |" in printed
    assert set(out["splits"]) == {"train", "validation", "test"}
    assert out["checkpoint_epoch"] == summary["best_epoch"]
    assert out["splits"]["test"]["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert out["splits"]["test"]["count"] == 128
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "metrics.json").read_text())["splits"]["test"]["f1"] > 0


def test_evaluating_more_splits_keeps_the_earlier_ones_and_other_epochs(tmp_path, synthetic_run):
    shutil.copytree(synthetic_run, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "metrics.json"
    path.write_text("")  # left empty by a crash: recomputed, not an error
    test = train.evaluate_workdir(tmp_path, splits=("test",))["splits"]["test"]
    both = train.evaluate_workdir(tmp_path, splits=("validation",))
    assert list(both["splits"]) == ["validation", "test"] and both["splits"]["test"] == test
    assert json.loads(path.read_text()) == both
    with pytest.raises(ValueError, match="splits is empty"):
        train.evaluate_workdir(tmp_path, splits=())
    again = train.evaluate_workdir(tmp_path, splits=("test",), overwrite=True)
    assert list(again["splits"]) == ["validation", "test"]  # recomputed test, kept validation
    # The evaluation of another checkpoint is kept aside, never over an older one.
    earlier = {"checkpoint_epoch": 99, "splits": {}}
    (tmp_path / "metrics.epoch99.json").write_text(json.dumps(earlier))
    path.write_text(json.dumps({**earlier, "note": "second"}))
    # Its table and confusion matrix go with it, under a suffix none of the three holds.
    (tmp_path / "metrics.md").write_text("table of 99")
    (tmp_path / "confusion_matrix.png").write_bytes(b"figure of 99")
    (tmp_path / "confusion_matrix.epoch99.2.png").write_bytes(b"older")
    train.evaluate_workdir(tmp_path, splits=("test",))
    assert json.loads((tmp_path / "metrics.epoch99.json").read_text()) == earlier
    assert json.loads((tmp_path / "metrics.epoch99.3.json").read_text())["note"] == "second"
    assert (tmp_path / "metrics.epoch99.3.md").read_text() == "table of 99"
    assert (tmp_path / "confusion_matrix.epoch99.3.png").read_bytes() == b"figure of 99"
    assert (tmp_path / "confusion_matrix.epoch99.2.png").read_bytes() == b"older"
    assert (tmp_path / "metrics.md").read_text().startswith("|")  # the new evaluation's
    assert not (tmp_path / "confusion_matrix.png").exists()  # drawn by the caller


def test_evaluate_without_training_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a training workdir.*experiments.train"):
        train.evaluate_workdir(tmp_path)


def test_a_split_the_run_does_not_hold_is_named_with_its_fix(synthetic_config):
    # Without validation data the validation split is empty: asking for it must say
    # so, not fail later on an empty batch.
    held = synthetic_config(**{"data.validation_size": 0}).data
    message = r"config\.split='validation': this run's data has only \('train', 'test'\) "
    with pytest.raises(ValueError, match=message + r"\(a validation split needs data\."):
        loop_lib.load_split(held, "validation", "split")
    assert len(loop_lib.load_split(held, "test", "split").labels) == 128
    assert len(loop_lib.load_split(synthetic_config().data, "validation", "split").labels) == 64


def test_data_that_moved_since_training_says_how_to_record_the_new_place(tmp_path):
    moved = ml_collections.ConfigDict({"name": "fashion_mnist", "data_dir": str(tmp_path / "gone")})
    message = r"data\.data_dir='.*gone' \(its config\.json\), which is no folder now.*training "
    with pytest.raises(data.DataError, match=message + "script on this workdir"):
        loop_lib.load_split(moved, "test", "split")
