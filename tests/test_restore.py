"""restore_model on run folders whose checkpoint does not fit, or cannot be read: one
CheckpointMismatchError (a ValueError: scripts end in one line) naming the folder."""

import json
import shutil

import pytest

from fmi_jax.train import evaluate as evaluate_lib
from fmi_jax.train.checkpoint import CheckpointMismatchError


def _copy(synthetic_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(synthetic_run, workdir)
    return workdir


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c["model"].update(features=c["model"]["features"][:-1]),
            r"holds checkpoints of another model or dataset than its run's config\.json "
            r"describes \(model\.features: checkpoint has",
        ),
        (lambda c: c["data"].update(name="mnist"), r"dataset: checkpoint has 'synthetic'"),
    ],
    ids=["fewer_layers", "other_dataset"],
)
def test_a_checkpoint_of_another_model_is_refused_not_partly_restored(
    synthetic_run, tmp_path, edit, message
):
    """A restore takes only the parameters the config's model needs: a config edited to
    one conv block fewer would load the checkpoint's first blocks and drop the rest."""
    workdir = _copy(synthetic_run, tmp_path)
    config = json.loads((workdir / "config.json").read_text())
    edit(config)
    (workdir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match=message):
        evaluate_lib.restore_model(workdir)


def test_a_damaged_checkpoint_is_one_line_naming_it(synthetic_run, tmp_path):
    """TensorStore raises a bare Exception of dozens of lines for a truncated array file."""
    workdir = _copy(synthetic_run, tmp_path)
    epoch = evaluate_lib.restore_model(workdir)[3]
    data = workdir / "checkpoints" / str(epoch) / "state" / "ocdbt.process_0" / "d"
    # Every data file: which of them hold the parameters (and not only the optimizer
    # state, which a restore for evaluation leaves unread) varies from run to run.
    for file in data.iterdir():
        file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(CheckpointMismatchError) as raised:
        evaluate_lib.restore_model(workdir)
    message = str(raised.value)
    assert "\n" not in message and len(message) < 600, message
    assert message.startswith(
        f"checkpoint {workdir / 'checkpoints' / str(epoch)} could not be read: array params."
    )


def test_a_checkpoint_without_a_model_description_is_refused(synthetic_run, tmp_path):
    workdir = _copy(synthetic_run, tmp_path)
    epoch = evaluate_lib.restore_model(workdir)[3]
    meta = workdir / "checkpoints" / str(epoch) / "meta" / "metadata"
    record = json.loads(meta.read_text())
    del record["architecture"]
    meta.write_text(json.dumps(record))
    with pytest.raises(CheckpointMismatchError, match="records no model description"):
        evaluate_lib.restore_model(workdir)


@pytest.mark.parametrize(
    "damage, cause",
    [
        (lambda meta: meta.write_text(meta.read_text()[:40]), r"\(JSONDecodeError: "),
        (lambda meta: meta.unlink(), r"\(FileNotFoundError: "),
        (lambda meta: meta.write_text("[1, 2]"), r"its meta is not a JSON object"),
    ],
    ids=["truncated", "missing", "not_an_object"],
)
def test_a_damaged_meta_is_one_line_naming_the_checkpoint(synthetic_run, tmp_path, damage, cause):
    """The JSON written beside the state after a crash mid-write: json's own message
    named neither the file nor what to do."""
    workdir = _copy(synthetic_run, tmp_path)
    epoch = evaluate_lib.restore_model(workdir, checkpoint="latest")[3]
    damage(workdir / "checkpoints" / str(epoch) / "meta" / "metadata")
    with pytest.raises(CheckpointMismatchError, match=cause) as raised:
        evaluate_lib.restore_model(workdir, checkpoint=str(epoch))
    message = str(raised.value)
    assert "\n" not in message, message
    assert message.startswith(f"checkpoint {workdir / 'checkpoints' / str(epoch)} could not be")
    assert "(evaluate's --checkpoint, the studies' --config.checkpoint), or move it away" in message
    # 'best' is chosen among the records that can be read (with a warning for the other).
    assert evaluate_lib.restore_model(workdir)[3] != epoch
