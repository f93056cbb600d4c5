"""The run-folder protocol (fmi_jax/runs.py) and the training loop and studies using it."""

import functools
import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

import configs
from fmi_jax import runs, studies, train

# --------------------------------------------------------------------------- plain


def test_plain_makes_configs_json_able_and_copies():
    config = ml_collections.ConfigDict({"a": (1, 2), "b": {"c": 0.5}, "d": None})
    assert runs.plain(config) == {"a": [1, 2], "b": {"c": 0.5}, "d": None}
    assert runs.plain(ml_collections.FrozenConfigDict(config)) == runs.plain(config)
    nested = {"x": config.b, "y": (np.int64(3), {"z"}), "p": np.arange(2), "f": np.float32(1)}
    assert runs.plain(nested) == {"x": {"c": 0.5}, "y": [3, ["z"]], "p": [0, 1], "f": 1.0}
    assert runs.plain(None) is None and runs.plain(3) == 3
    mapping = {"k": [1]}
    runs.plain(mapping)["k"].append(2)
    assert mapping == {"k": [1]}


# --------------------------------------------------------------------------- claim


def _config(**overrides):
    config = {"seed": 0, "num_epochs": 2, "model": {"name": "cnn", "features": [4, 8]}}
    config.update(overrides)
    return ml_collections.ConfigDict(config)


def test_claim_writes_a_new_record_and_keeps_the_same(tmp_path):
    folder = tmp_path / "run"
    assert runs.claim(folder, _config(), has_results=False) == {}
    path = folder / "config.json"
    assert json.loads(path.read_text()) == runs.plain(_config())
    # The same text config.json always had: sorted keys, indent 2, no newline.
    assert path.read_text() == json.dumps(runs.plain(_config()), indent=2, sort_keys=True)
    stamp = path.stat().st_mtime_ns
    assert runs.claim(folder, _config(), has_results=True) == {}
    assert path.stat().st_mtime_ns == stamp
    assert not (folder / "extensions.jsonl").exists()


def test_a_changed_config_with_results_is_refused_naming_every_field(tmp_path):
    runs.claim(tmp_path, _config(), has_results=False)
    before = (tmp_path / "config.json").read_text()
    changed = _config(seed=1, model={"name": "cnn", "features": [4, 16]}, extra=True)
    with pytest.raises(runs.RunConfigError) as error:
        runs.claim(tmp_path, changed, has_results=True, hint="use another --workdir")
    message = str(error.value)
    assert "\n" not in message
    for part in ("seed: 0 -> 1", "model.features: [4, 8] -> [4, 16]", "extra: (absent) -> true"):
        assert part in message
    assert "use another --workdir" in message and "Nothing was overwritten" in message
    assert (tmp_path / "config.json").read_text() == before
    many = _config(**{f"f{i}": i for i in range(8)})
    with pytest.raises(runs.RunConfigError, match=r"f4: \(absent\) -> 4 and 3 more\);"):
        runs.claim(tmp_path, many, has_results=True)
    assert isinstance(runs.RunConfigError("x"), ValueError)
    # Lists too long to show whole (a study's input files) are told apart by their items.
    files = [f"/home/someone/photos/holiday/{i:04d}.jpg" for i in range(3)]
    runs.claim(tmp_path / "inputs", {"files": files}, has_results=False)
    with pytest.raises(runs.RunConfigError, match=r"files: added 1: \[\"/home/someone/photos"
                       r"/holiday/0003\.jpg\"\]\)"):  # fmt: skip
        runs.claim(tmp_path / "inputs", {"files": files + [files[0][:-8] + "0003.jpg"]},
                   has_results=True)  # fmt: skip
    with pytest.raises(runs.RunConfigError, match=r"files: removed 1: .*0001\.jpg\"\]\)"):
        runs.claim(tmp_path / "inputs", {"files": files[::2]}, has_results=True)


def test_a_changed_config_without_results_replaces_the_record(tmp_path):
    runs.claim(tmp_path, _config(model={"name": "nosuchnet"}), has_results=False)
    runs.claim(tmp_path, _config(), has_results=False)
    assert json.loads((tmp_path / "config.json").read_text()) == runs.plain(_config())
    assert not (tmp_path / "extensions.jsonl").exists()


def test_a_record_of_another_kind_of_run_is_never_replaced(tmp_path):
    # Another study's record: its results are not the caller's to see (has_results is
    # the caller's own), so other fields are refused even without results.
    runs.claim(tmp_path, _config(batch_size=32), has_results=False)
    before = (tmp_path / "config.json").read_text()
    other = ml_collections.ConfigDict({"images": "a/", "ig": {}, "seed": 0, "top_k": 5})
    with pytest.raises(
        runs.RunConfigError,
        match=r"other fields than this config.s \(batch_size, ig, images, model, num_epochs"
        r" \.\.\.\): another kind of run.s record",
    ):
        runs.claim(tmp_path, other, has_results=False, hint="pass another --workdir")
    assert (tmp_path / "config.json").read_text() == before
    # A record of another version of the same config (a field more or less): an earlier
    # attempt without results, replaced as before; so are records too small to tell.
    runs.claim(tmp_path, _config(batch_size=32, label_smoothing=0.1), has_results=False)
    assert json.loads((tmp_path / "config.json").read_text())["label_smoothing"] == 0.1
    runs.claim(tmp_path / "small", {"a": 1}, has_results=False)
    runs.claim(tmp_path / "small", {"b": 1}, has_results=False)


def test_a_study_of_a_checkpoint_that_moved_is_refused(tmp_path):
    study = functools.partial(runs.claim_study, tmp_path, model="cnn", hint="pass another")
    study(_config(), epoch=8, has_results=False)
    record = {"model": "cnn", "checkpoint_epoch": 8}
    assert json.loads((tmp_path / "checkpoint.json").read_text()) == record
    study(_config(), epoch=8, has_results=True)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    with pytest.raises(
        runs.RunConfigError, match=r"another checkpoint \(checkpoint_epoch: 8 -> 10"
    ):
        study(_config(), epoch=10, has_results=True)
    with pytest.raises(runs.RunConfigError, match=r'another checkpoint \(model: "cnn" -> "other"'):
        runs.claim_study(tmp_path, _config(), epoch=8, model="other", has_results=True, hint="x")
    # Both records are checked before either is written.
    with pytest.raises(runs.RunConfigError, match="seed: 0 -> 1"):
        study(_config(seed=1), epoch=10, has_results=True)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before
    study(_config(), epoch=10, has_results=False)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["checkpoint_epoch"] == 10


def test_results_from_before_the_checkpoint_record_keep_what_they_record(tmp_path):
    runs.claim(tmp_path, _config(), has_results=False)  # as written before checkpoint.json
    study = functools.partial(runs.claim_study, tmp_path, _config(), hint="x", has_results=True)
    with pytest.raises(runs.RunConfigError, match=r"checkpoint_epoch: 3 -> 7"):
        study(model="cnn", epoch=7, results={"checkpoint_epoch": 3})
    # Another model's results of the same epoch (the SAE study's two classifiers).
    (tmp_path / "checkpoint.json").unlink()
    classifier = {"model": "sae (classifier)", "checkpoint_epoch": 5}
    with pytest.raises(
        runs.RunConfigError, match=r'model: "sae \(classifier\)" -> "sae \(finetune'
    ):
        study(model="sae (finetune)", epoch=5, results=classifier)
    study(model="sae (classifier)", epoch=5, results=classifier)
    # A record that named the epoch alone gains the model.
    (tmp_path / "checkpoint.json").write_text('{"checkpoint_epoch": 5}')
    study(model="sae (classifier)", epoch=5, results=classifier)
    assert json.loads((tmp_path / "checkpoint.json").read_text()) == classifier


def test_extendable_fields_may_grow_and_growth_is_recorded(tmp_path):
    runs.claim(tmp_path, _config(), has_results=False)
    grown = runs.claim(
        tmp_path, _config(num_epochs=5), extendable=("num_epochs",), has_results=True
    )
    assert grown == {"num_epochs": (2, 5)}
    assert json.loads((tmp_path / "config.json").read_text())["num_epochs"] == 5
    (line,) = (tmp_path / "extensions.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["fields"] == {"num_epochs": {"before": 2, "after": 5}} and record["time"]
    with pytest.raises(runs.RunConfigError, match="num_epochs: 5 -> 3.*only grow"):
        runs.claim(tmp_path, _config(num_epochs=3), extendable=("num_epochs",), has_results=True)
    with pytest.raises(runs.RunConfigError, match="seed: 0 -> 1"):
        runs.claim(
            tmp_path, _config(num_epochs=9, seed=1), extendable=("num_epochs",), has_results=True
        )
    assert json.loads((tmp_path / "config.json").read_text())["num_epochs"] == 5
    assert len((tmp_path / "extensions.jsonl").read_text().splitlines()) == 1


def test_free_fields_change_without_refusal(tmp_path):
    runs.claim(tmp_path, _config(), has_results=False, name="study.json")
    runs.claim(tmp_path, _config(seed=3), free=("seed",), has_results=True, name="study.json")
    assert json.loads((tmp_path / "study.json").read_text())["seed"] == 3


def test_a_truncated_record_is_rewritten_only_without_results(tmp_path):
    (tmp_path / "config.json").write_text('{"seed": ')
    runs.claim(tmp_path, _config(), has_results=False)
    assert json.loads((tmp_path / "config.json").read_text()) == runs.plain(_config())
    # With results it cannot be compared with: a changed config would go on from them.
    (tmp_path / "config.json").write_text('{"seed": ')
    with pytest.raises(
        runs.RunConfigError,
        match=r"config\.json is damaged \(.*\), and .* "
        r"holds results of the config it recorded: write that config back",
    ):
        runs.claim(tmp_path, _config(), has_results=True)
    assert (tmp_path / "config.json").read_text() == '{"seed": '


def test_a_missing_record_is_refused_only_where_required_and_with_results(tmp_path):
    runs.claim(tmp_path / "a", _config(), has_results=True)  # a legacy folder: recorded
    assert json.loads((tmp_path / "a" / "config.json").read_text()) == runs.plain(_config())
    runs.claim(tmp_path / "b", _config(), has_results=False, required=True)
    assert (tmp_path / "b" / "config.json").exists()
    (tmp_path / "c").mkdir()
    with pytest.raises(
        runs.RunConfigError,
        match=r"c holds results but no config\.json, so nothing shows which config they came "
        r"from: put the run's config\.json back .*, or use another workdir",
    ):
        runs.claim(tmp_path / "c", _config(), has_results=True, required=True)
    assert list((tmp_path / "c").iterdir()) == []


# --------------------------------------------------------------------------- files


def test_atomic_writers_replace_whole_files_and_leave_no_temporary(tmp_path):
    path = tmp_path / "a" / "b.json"
    runs.write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}'
    runs.write_json_atomic(path, {"b": 1, "a": 2}, sort_keys=False)
    assert list(json.loads(path.read_text())) == ["b", "a"]
    runs.write_text_atomic(tmp_path / "t.md", "hello\n")
    assert (tmp_path / "t.md").read_text() == "hello\n"
    runs.save_npz_atomic(tmp_path / "x.npz", x=np.arange(3))
    with np.load(tmp_path / "x.npz") as saved:
        np.testing.assert_array_equal(saved["x"], [0, 1, 2])
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.json", "t.md", "x.npz"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failure_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    runs.write_json_atomic(path, {"old": True})
    runs.save_npz_atomic(tmp_path / "x.npz", x=np.zeros(2))

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        runs.write_json_atomic(path, {"new": True})
    with pytest.raises(OSError, match="disk full"):
        runs.save_npz_atomic(tmp_path / "x.npz", x=np.ones(2))
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": True}
    with np.load(tmp_path / "x.npz") as saved:
        np.testing.assert_array_equal(saved["x"], [0, 0])
    with pytest.raises(TypeError):
        runs.write_json_atomic(path, {"new": object()})
    assert json.loads(path.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "x.npz"]


def test_read_json_of_missing_empty_and_truncated_files(tmp_path):
    path = tmp_path / "f.json"
    assert runs.read_json(path) is None
    for text in ("", '{"a": [1, '):
        path.write_text(text)
        assert runs.read_json(path, rewritable=True) is None
        with pytest.raises(ValueError, match="f.json is not valid JSON"):
            runs.read_json(path)
    path.write_text('{"a": 1}')
    assert runs.read_json(path) == {"a": 1}


# --------------------------------------------------------------------------- training


def test_training_refuses_a_changed_config_and_extends_num_epochs(
    tmp_path, synthetic_config, synthetic_run
):
    workdir = tmp_path / "run"
    shutil.copytree(synthetic_run, workdir)
    before = (workdir / "config.json").read_text()
    with pytest.raises(runs.RunConfigError, match=r"learning_rate: 0\.005 -> 0\.01.*--workdir"):
        train.train_and_evaluate(synthetic_config(num_epochs=2, learning_rate=0.01), workdir)
    with pytest.raises(runs.RunConfigError, match=r"label_smoothing: 0\.1 -> 0\.2, seed: 0 -> 1"):
        train.train_and_evaluate(
            synthetic_config(num_epochs=2, seed=1, label_smoothing=0.2), workdir
        )
    assert (workdir / "config.json").read_text() == before
    # Without its record, the checkpoints would go on under any config: refused.
    (workdir / "config.json").rename(tmp_path / "kept.json")
    with pytest.raises(runs.RunConfigError, match=r"results but no config\.json"):
        train.train_and_evaluate(synthetic_config(num_epochs=2, learning_rate=0.01), workdir)
    assert not (workdir / "config.json").exists()
    (tmp_path / "kept.json").rename(workdir / "config.json")
    (workdir / "train_summary.json").write_text("")  # as a crash of an in-place writer left it
    # The progress bar, TensorBoard, the evaluation's batch size and the device count do
    # not touch results: switching them is accepted on the way (and with
    # tensorboard=False, epoch 3 writes no events).
    events = sorted((p.name, p.stat().st_size) for p in (workdir / "tensorboard").rglob("*"))
    other = {"progress": True, "tensorboard": False, "eval_batch_size": 24, "num_devices": 0}
    other["data.data_dir"] = str(tmp_path)  # the same examples moved: the digests compare
    assert train.load_run_config(workdir).num_devices == 1  # 0: every device there is
    result = train.train_and_evaluate(synthetic_config(num_epochs=3, **other), workdir)
    assert (
        sorted((p.name, p.stat().st_size) for p in (workdir / "tensorboard").rglob("*")) == events
    )
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert train.load_run_config(workdir).num_epochs == 3
    (line,) = (workdir / "extensions.jsonl").read_text().splitlines()
    assert json.loads(line)["fields"] == {"num_epochs": {"before": 2, "after": 3}}
    assert json.loads((workdir / "train_summary.json").read_text())["epochs"] == 3


def test_a_failed_first_run_does_not_claim_the_workdir(tmp_path, synthetic_config):
    with pytest.raises(ValueError, match="nosuchnet"):
        train.train_and_evaluate(synthetic_config(**{"model.name": "nosuchnet"}), tmp_path)
    assert not (tmp_path / "config.json").exists()
    # A config.json an earlier version wrote before failing is replaced, not kept.
    stale = runs.plain(synthetic_config(**{"model.name": "nosuchnet"}))
    runs.write_json_atomic(tmp_path / "config.json", stale)
    train.train_and_evaluate(synthetic_config(num_epochs=1), tmp_path)
    assert runs.plain(train.load_run_config(tmp_path)) == runs.plain(synthetic_config(num_epochs=1))
    assert not list(tmp_path.glob(".*.tmp"))
    # An empty summary, as a crash of an in-place writer left it, is written again.
    (tmp_path / "train_summary.json").write_text("")
    again = train.train_and_evaluate(synthetic_config(num_epochs=1), tmp_path)
    assert runs.read_json(tmp_path / "train_summary.json") == json.loads(json.dumps(again.summary))


# --------------------------------------------------------------------------- studies


def test_explain_with_an_unknown_cam_layer_claims_nothing(synthetic_run):
    config = configs.load("explain", "smoke")
    config.methods = ("saliency", "grad_cam")
    config.selection.kind = "indices"
    config.selection.indices = (0, 1)
    config.figures.max_sheets = 1
    config.output = "runs_explain_layer"
    config.options.grad_cam.layer = "nosuchlayer"
    out = synthetic_run / config.output
    with pytest.raises(ValueError, match="nosuchlayer"):
        studies.run_explain(config, synthetic_run)
    assert not out.exists()
    config.options.grad_cam.layer = "conv3"
    config.layer_cam.layers = ("conv1", "nosuchlayer")
    config.layer_cam.samples = 1
    with pytest.raises(ValueError, match="nosuchlayer"):
        studies.run_explain(config, synthetic_run)
    assert not out.exists()
    config.layer_cam.layers = ("conv1",)
    result = studies.run_explain(config, synthetic_run)
    assert set(result.maps) == {"saliency", "grad_cam"}
    assert runs.read_json(out / "config.json") == runs.plain(config)
    config.seed = 1
    with pytest.raises(runs.RunConfigError, match=r"seed: 0 -> 1.*--config.output"):
        studies.run_explain(config, synthetic_run)


def test_subfolder_is_strictly_inside_the_workdir(tmp_path):
    assert runs.subfolder(tmp_path, "explain", "output") == tmp_path / "explain"
    assert runs.subfolder(tmp_path, "a/b", "output") == tmp_path / "a" / "b"
    for name in ("", " ", ".", "./", "..", "a/../../b", "/abs"):
        with pytest.raises(ValueError, match=r"config\.explain\.output must name a folder"):
            runs.subfolder(tmp_path, name, "explain.output")
    # Nor a folder that belongs to the run: a phase of an SAE study, its checkpoints.
    (tmp_path / "classifier" / "checkpoints").mkdir(parents=True)
    for name in ("classifier", "classifier/explain", "checkpoints", "tensorboard/x"):
        with pytest.raises(ValueError, match="belongs to (the|a training) run: name another fol"):
            runs.subfolder(tmp_path, name, "explain.output")
    # A study's own output folder (it holds checkpoint.json) is its to write again.
    (tmp_path / "explain").mkdir()
    (tmp_path / "explain" / runs.CHECKPOINT_FILE).write_text("{}")
    assert runs.subfolder(tmp_path, "explain", "output") == tmp_path / "explain"


def test_a_folder_of_another_kind_of_run_is_refused_with_where_its_runs_are(
    tmp_path, synthetic_config, synthetic_run
):
    tuning = tmp_path / "tune"
    (tuning / "trials" / "a-1").mkdir(parents=True)
    sae = tmp_path / "sae"
    sae.mkdir()
    (sae / "study_config.json").write_text("{}")
    for folder, kind, where in (
        (tuning, "tuning study", "/best"),
        (sae, "sparse-autoencoder study", "/classifier"),
    ):
        before = sorted(p.name for p in folder.rglob("*"))
        with pytest.raises(ValueError, match=f"holds a {kind}, not a training run: .*{where}"):
            train.train_and_evaluate(synthetic_config(), folder)
        with pytest.raises(ValueError, match=f"holds a {kind}, not a training run: .*{where}"):
            train.load_run_config(folder)
        assert sorted(p.name for p in folder.rglob("*")) == before
    with pytest.raises(ValueError, match="holds a training run, not a sparse-autoencoder study"):
        studies.run_sae_study(configs.load("sae_fmnist", "smoke"), synthetic_run)
    with pytest.raises(ValueError, match="holds a training run, not a tuning study"):
        studies.run_tune(configs.load("tune_cnn", "smoke"), synthetic_run)
    # A tuning study's trials/ folder (it holds training runs): neither a study nor a
    # run goes into it.
    trial = tuning / "trials" / "a-1"
    (trial / "checkpoints").mkdir()
    # Until the study writes its tables, its trials/ is merely a folder named so.
    assert runs.folder_kind(tuning / "trials") is None
    (tuning / "results.json").write_text("{}")
    trials = "holds the trials of the tuning study .*tune, not a {}: .*--workdir=.*tune` resumes"
    before = sorted(p.name for p in tuning.rglob("*"))
    with pytest.raises(ValueError, match=trials.format("tuning study")):
        studies.run_tune(configs.load("tune_cnn", "smoke"), tuning / "trials")
    with pytest.raises(ValueError, match=trials.format("training run")):
        train.train_and_evaluate(synthetic_config(), tuning / "trials")
    assert sorted(p.name for p in tuning.rglob("*")) == before
    plain_trials = tmp_path / "elsewhere" / "trials"  # a folder of runs merely named so
    (plain_trials / "cnn1" / "checkpoints").mkdir(parents=True)
    assert runs.folder_kind(plain_trials) is None
    # A study's output inside a training run: its config.json is not a run's, and no
    # study writes into it; the advice names the run it read.
    output = tmp_path / "run" / "explain"
    output.mkdir(parents=True)
    (output / runs.CONFIG_FILE).write_text('{"methods": ["saliency"]}')
    (output / runs.CHECKPOINT_FILE).write_text('{"checkpoint_epoch": 2, "model": "cnn"}')
    study = "holds a study output \\(explain, evaluate_attributions or TCAV\\), not a"
    for call, kind in (
        (lambda: train.load_run_config(output), "training run"),
        (lambda: studies.run_tune(configs.load("tune_cnn", "smoke"), output), "tuning study"),
        (lambda: studies.run_sae_study(configs.load("sae_fmnist", "smoke"), output), "sparse"),
    ):
        with pytest.raises(ValueError, match=f"{study} {kind}.*read is {tmp_path / 'run'}\\)$"):
            call()
    assert sorted(p.name for p in output.iterdir()) == ["checkpoint.json", "config.json"]
    # A file given as the workdir.
    with pytest.raises(ValueError, match=r"config\.json is a file, not a folder: --workdir"):
        train.load_run_config(output / runs.CONFIG_FILE)
    with pytest.raises(ValueError, match=r"config\.json is a file, not a folder: --workdir"):
        train.train_and_evaluate(synthetic_config(), output / runs.CONFIG_FILE)
