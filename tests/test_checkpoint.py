"""Checkpoints: exact round trip, latest-N plus best kept, architecture checks."""

import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging

from fmi_jax.train import checkpoint

ARCH = {
    "model": {"name": "m", "features": [4]},
    "dataset": "d",
    "image_shape": [2, 2, 1],
    "num_classes": 3,
}


def tree(value):
    return {
        "params": {"w": jnp.full((2, 3), value, jnp.float32)},
        "step": jnp.asarray(int(value), jnp.int32),
    }


def test_keeps_latest_n_and_the_best_and_restores_exactly(tmp_path):
    ckpt = checkpoint.Checkpoints(tmp_path, keep=2)
    for epoch, acc in zip(range(1, 6), [0.5, 0.9, 0.6, 0.7, 0.65]):
        ckpt.save(epoch, tree(epoch), architecture=ARCH, metrics={"val_accuracy": acc})
    assert ckpt.epochs() == [2, 4, 5]  # best (2) and the latest two
    assert ckpt.best_epoch() == 2 and ckpt.latest_epoch() == 5
    restored = ckpt.restore(2, tree(0))
    np.testing.assert_array_equal(restored["params"]["w"], np.full((2, 3), 2.0))
    assert restored["step"].dtype == jnp.int32 and int(restored["step"]) == 2
    assert ckpt.meta(4)["metrics"]["val_accuracy"] == pytest.approx(0.7)
    ckpt.close()


def test_a_resumed_run_keeps_the_best_of_the_epochs_before_it(tmp_path):
    # A resume opens the checkpoints anew: the best must be known from what is on disk.
    for stop in (1, 2):
        directory = tmp_path / f"stopped_after_{stop}"
        ckpt = checkpoint.Checkpoints(directory, keep=2)
        for epoch, acc in enumerate([0.9, 0.1, 0.2, 0.3], start=1):
            if epoch == stop + 1:
                ckpt.close()
                ckpt = checkpoint.Checkpoints(directory, keep=2)
            ckpt.save(epoch, tree(epoch), architecture=ARCH, metrics={"val_accuracy": acc})
        assert ckpt.epochs() == [1, 3, 4] and ckpt.best_epoch() == 1
        ckpt.close()


def test_checkpoints_without_stored_metrics_are_kept_not_deleted(tmp_path):
    """Checkpoints whose metrics orbax never stored (written without a best_fn) may hold
    the best epoch: a manager that ranks by metrics keeps them rather than guess."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(tmp_path, options=ocp.CheckpointManagerOptions(create=True))
    for epoch, acc in ((1, 0.9), (2, 0.1)):
        meta = {"epoch": epoch, "architecture": ARCH, "metrics": {"val_accuracy": acc}}
        args = ocp.args.Composite(
            state=ocp.args.PyTreeSave(tree(epoch)), meta=ocp.args.JsonSave(meta)
        )
        manager.save(epoch, args=args)
    manager.close()
    ckpt = checkpoint.Checkpoints(tmp_path, keep=1)
    for epoch in (3, 4):
        ckpt.save(epoch, tree(epoch), architecture=ARCH, metrics={"val_accuracy": 0.2})
    assert ckpt.epochs() == [1, 2, 4] and ckpt.best_epoch() == 1
    ckpt.close()


def test_without_validation_only_the_latest_are_kept(tmp_path):
    ckpt = checkpoint.Checkpoints(tmp_path, keep=1, best_metric=None)
    for epoch in range(1, 4):
        ckpt.save(epoch, tree(epoch), architecture=ARCH, metrics={"train_loss": 1.0 / epoch})
    assert ckpt.epochs() == [3] and ckpt.best_epoch() == 3


def test_partial_restore_skips_what_the_target_does_not_name(tmp_path):
    ckpt = checkpoint.Checkpoints(tmp_path, keep=1)
    ckpt.save(1, tree(7.0), architecture=ARCH, metrics={"val_accuracy": 1.0})
    got = ckpt.restore(1, {"params": {"w": jnp.zeros((2, 3))}}, partial=True)
    np.testing.assert_array_equal(got["params"]["w"], 7.0)


def test_architecture_mismatch_names_the_difference(tmp_path):
    ckpt = checkpoint.Checkpoints(tmp_path, keep=1)
    ckpt.save(1, tree(1.0), architecture=ARCH, metrics={"val_accuracy": 1.0})
    ckpt.check_architecture(ARCH)  # same: fine
    other = dict(ARCH, num_classes=10)
    with pytest.raises(
        checkpoint.CheckpointMismatchError,
        match="num_classes: checkpoint has 3, config asks for 10",
    ):
        ckpt.check_architecture(other)


def test_the_training_examples_digest_is_checked_when_recorded(tmp_path):
    images = np.arange(24, dtype=np.uint8).reshape(6, 2, 2, 1)
    labels = np.array([0, 1, 2, 0, 1, 2], np.int32)
    digest = checkpoint.data_digest(images, labels)
    assert digest == checkpoint.data_digest(images.copy(), labels.copy())
    for other in (
        checkpoint.data_digest(images[::-1], labels[::-1]),  # another order
        checkpoint.data_digest(images, np.roll(labels, 1)),  # other labels
        checkpoint.data_digest(images.reshape(6, 4, 1, 1), labels),  # the same bytes
    ):
        assert other != digest
    recorded = checkpoint.Checkpoints(tmp_path / "new", keep=1)
    recorded.save(1, tree(1.0), architecture=dict(ARCH, train_digest=digest), metrics={})
    recorded.check_architecture(dict(ARCH, train_digest=digest))
    with pytest.raises(checkpoint.CheckpointMismatchError, match="the training examples"):
        recorded.check_architecture(dict(ARCH, train_digest=other))
    # Another difference is named alone: it changes the examples too.
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"\(num_classes: .* 10\)\."):
        recorded.check_architecture(dict(ARCH, num_classes=10, train_digest=other))
    # Checkpoints from before runs recorded the digests resume as they did.
    older = checkpoint.Checkpoints(tmp_path / "old", keep=1)
    older.save(1, tree(1.0), architecture=ARCH, metrics={})
    older.check_architecture(dict(ARCH, train_digest=digest, holdout_digest=digest))
    both = checkpoint.Checkpoints(tmp_path / "both", keep=1)
    both.save(
        1,
        tree(1.0),
        architecture=dict(ARCH, train_digest=digest, holdout_digest=digest),
        metrics={},
    )
    with pytest.raises(checkpoint.CheckpointMismatchError, match="the validation holdout"):
        both.check_architecture(dict(ARCH, train_digest=digest, holdout_digest=other))


def test_restoring_into_other_shapes_is_a_mismatch_error(tmp_path):
    ckpt = checkpoint.Checkpoints(tmp_path, keep=1)
    ckpt.save(1, tree(1.0), architecture=ARCH, metrics={"val_accuracy": 1.0})
    wrong = {"params": {"w": jnp.zeros((5, 5))}, "step": jnp.zeros((), jnp.int32)}
    with pytest.raises(checkpoint.CheckpointMismatchError, match="does not fit"):
        ckpt.restore(1, wrong)


def test_reading_logs_no_warning_of_its_own_read_only_mode(tmp_path, caplog):
    ckpt = checkpoint.Checkpoints(tmp_path, keep=2)
    ckpt.save(1, tree(1), architecture=ARCH, metrics={"val_accuracy": 0.5})
    ckpt.close()
    with caplog.at_level("WARNING"):
        assert checkpoint.Checkpoints(tmp_path, read_only=True).latest_epoch() == 1
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []
    # The filter is gone afterwards: the absl logger's other warnings still show.
    assert not absl_logging.get_absl_logger().filters


def test_reading_a_missing_directory_says_to_train_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="train first"):
        checkpoint.Checkpoints(tmp_path / "nothing", read_only=True)


def test_keep_must_allow_resuming(tmp_path):
    with pytest.raises(ValueError, match="keep must be >= 1"):
        checkpoint.Checkpoints(tmp_path, keep=0)


def test_missing_and_damaged_records_are_named_and_best_leaves_them_out(tmp_path):
    ckpt = checkpoint.Checkpoints(tmp_path, keep=3, best_metric="val_accuracy")
    for epoch, acc in ((1, 0.9), (2, 0.5), (3, 0.7)):
        ckpt.save(epoch, tree(epoch), architecture=ARCH, metrics={"val_accuracy": acc})
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"no checkpoint of epoch 9; "):
        ckpt.meta(9)
    # The best epoch's record damaged: the best of the others, with a warning.
    (tmp_path / "1" / "meta" / "metadata").write_text("{")
    assert ckpt.best_epoch() == 3
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"/1 could not be read: its meta"):
        ckpt.meta(1)
    # A checkpoint without its meta item (plain orbax, or the folder lost).
    shutil.rmtree(tmp_path / "2" / "meta")
    reopened = checkpoint.Checkpoints(tmp_path, read_only=True, best_metric="val_accuracy")
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"/2 has no meta record") as e:
        reopened.meta(2)
    assert "\n" not in str(e.value)
    assert reopened.best_epoch() == 3
