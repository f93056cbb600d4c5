"""The tuning study: grids, names, config paths, the ranked tables, skipping finished
trials, and a two-trial smoke study end to end on synthetic data."""

import csv
import dataclasses
import json
import re
from pathlib import Path
from unittest import mock

import pytest
from absl import flags
from ml_collections import config_flags

import configs
from fmi_jax import runs, studies
from fmi_jax.studies import tune
from fmi_jax.train import CheckpointMismatchError
from fmi_jax.train import loop as loop_lib


def test_the_original_grids():
    cnn = tune.grid_points(configs.load("tune_cnn").grid)
    assert len(cnn) == 2 * 2 * 2 * 3
    assert cnn[0] == {
        "model.conv1_filters": 32,
        "model.conv2_filters": 64,
        "model.filter_size": 3,
        "model.dense_width": 32,
    }
    assert {p["model.dense_width"] for p in cnn} == {32, 64, 128}
    resnet = tune.grid_points(configs.load("tune_resnet").grid)
    assert [(p["model.num_blocks"], p["model.filters"]) for p in resnet] == [
        (3, 32), (3, 64), (4, 32), (4, 64), (5, 32), (5, 64)
    ]  # fmt: skip


def test_trial_names_and_configs():
    point = {"model.num_blocks": 3, "model.filters": 64}
    assert tune.trial_name(point) == "num_blocks-3_filters-64"
    base = configs.load("tune_resnet").trial
    config = tune.trial_config(base, point, {"num_epochs": 40})
    assert config.model.num_blocks == 3 and config.model.filters == 64
    assert config.num_epochs == 40 and base.num_epochs == 15  # the base is not modified
    with pytest.raises(ValueError, match="grid path 'model.width'.*it has .*filters"):
        tune.trial_config(base, {"model.width": 3})
    with pytest.raises(ValueError, match="final path 'optim.lr'.*no 'optim'"):
        tune.trial_config(base, {}, {"optim": {"lr": 0.1}})
    with pytest.raises(ValueError, match="grid.model.filters must be a non-empty list"):
        tune.grid_points({"model": {"filters": ()}})


def test_markdown_table_format():
    rows = [
        {
            "trial": "a",
            "filters": 64,
            "val_accuracy": 0.9312,
            "val_loss": 0.2,
            "train_time_s": 12.4,
        },
        {"trial": "b", "filters": 32, "val_accuracy": 0.9, "val_loss": None, "train_time_s": 9.0},
    ]
    assert tune.markdown(rows).splitlines() == [
        "| rank | filters | val_accuracy | val_loss | train_time_s |",
        "|---|---|---|---|---|",
        "| 1 | 64 | 93.12% | 0.2000 | 12 |",
        "| 2 | 32 | 90.00% | - | 9 |",
    ]


@pytest.fixture
def smoke_study(synthetic_config):
    def make(name="tune_resnet"):
        config = configs.load(name, "smoke")
        base = synthetic_config()
        config.trial.data = base.data
        config.trial.augment = base.augment
        config.trial.progress = False
        return config

    return make


@pytest.mark.parametrize(
    "name, grid, final, message",
    [
        # The second point's value: refused before the first point trains.
        ("tune_resnet", {"model": {"dropout": (0.0, 1.5)}}, None,
         r"^grid point dropout-1\.5: config\.model\.dropout must be a number in \[0, 1\), got 1\.5$"),
        ("tune_cnn", {"model": {"dense_width": (16, -4)}}, None,
         r"^grid point dense_width--4: config\.model\.dense_width must be an integer >= 1, got -4$"),
        # `final` is applied only after every trial trained: its values and paths are
        # checked for every point (any may be the best) before the first.
        ("tune_resnet", None, {"num_epochs": 1, "weight_decay": -1.0},
         r"^the retrain of grid point num_blocks-1_filters-4 with config\.final: "
         r"config\.weight_decay must be a finite number >= 0, got -1\.0$"),
        ("tune_resnet", None, {"num_epoch": 1},
         r"final path 'num_epoch': the trial config has no 'num_epoch' there"),
        # One point of no values would write its run into trials/ itself.
        ("tune_resnet", {}, None, r"^the grid is empty: give it at least one path"),
    ],
)  # fmt: skip
def test_bad_trial_or_final_values_are_refused_before_anything_is_written(
    tmp_path, smoke_study, name, grid, final, message
):
    config = smoke_study(name)
    if grid is not None:
        config.grid = grid
    if final is not None:
        config.final = final
    with pytest.raises(ValueError, match=message) as error:
        studies.run_tune(config, tmp_path / "study")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "study").exists()


def test_data_that_does_not_load_leaves_no_study_folder(tmp_path, smoke_study):
    config = smoke_study("tune_cnn")
    config.trial.data.name = "fashion_mnist"
    config.trial.data.options = {}
    config.trial.data.data_dir = str(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"data_dir='.*nope' is not a folder"):
        studies.run_tune(config, tmp_path / "study")
    assert not (tmp_path / "study").exists()


# ml_collections loads config files with importlib's deprecated load_module().
@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
@pytest.mark.parametrize("name", ["tune_cnn", "tune_resnet"])
def test_the_final_train_limit_is_an_int_field_the_command_line_sets(tmp_path, name):
    """`final.data.train_limit` is None in the full configs (the best is retrained on
    the whole training split) and an int field, so the command line can screen the
    retrain on a subset too; a run recorded with either value resumes."""
    path = str(Path(configs.__file__).parent / f"{name}.py")
    parsed = {}
    for limit in (None, 10_000):
        override = [] if limit is None else [f"--config.final.data.train_limit={limit}"]
        argv = ["prog", f"--config={path}", *override]
        values = flags.FlagValues()
        config_flags.DEFINE_config_file(
            "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
        )
        values(argv)
        config = values.config
        assert config.final.data.train_limit == limit
        point = tune.grid_points(config.grid)[0]
        parsed[limit] = retrain = tune.trial_config(config.trial, point, config.final)
        assert retrain.data.train_limit == limit
        folder = tmp_path / str(limit)
        folder.mkdir()
        runs.write_json_atomic(folder / runs.CONFIG_FILE, runs.plain(retrain))
        assert json.loads((folder / runs.CONFIG_FILE).read_text())["data"]["train_limit"] == limit
        assert runs.check(folder, retrain, has_results=True) == {}  # the same config resumes
    with pytest.raises(ValueError, match=r"data\.train_limit: null -> 10000"):
        runs.check(tmp_path / "None", parsed[10_000], has_results=True)


@pytest.mark.slow
def test_two_trial_study_ranks_retrains_and_resumes(tmp_path, smoke_study):
    config = smoke_study()
    result = studies.run_tune(config, tmp_path)
    names = ["num_blocks-1_filters-4", "num_blocks-2_filters-4"]
    assert sorted(r["trial"] for r in result.trials) == names
    accuracies = [r["val_accuracy"] for r in result.trials]
    assert accuracies == sorted(accuracies, reverse=True)
    assert result.best == result.trials[0]

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["trials"] == result.trials and saved["grid"]["model"]["filters"] == [4]
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["rank"] for r in rows] == ["1", "2"]
    assert {"num_blocks", "filters", "val_accuracy", "train_time_s"} <= set(rows[0])
    assert (tmp_path / "results.md").read_text().startswith("| rank | num_blocks | filters |")

    best = tmp_path / "best"
    assert set(result.evaluation["splits"]) == {"train", "validation", "test"}
    for split in result.evaluation["splits"].values():
        assert {"loss", "accuracy", "precision", "recall", "f1"} <= set(split)
    point = json.loads((best / "grid_point.json").read_text())
    assert tune.trial_name(point) == result.best["trial"]
    assert (best / "layer_grad_cam.png").stat().st_size > 5_000
    epoch = result.evaluation["checkpoint_epoch"]
    samples = int(config.layer_cam.samples)
    wanted = {"checkpoint_epoch": epoch, "samples": samples}
    assert json.loads((best / "layer_grad_cam.json").read_text()) == wanted
    drawn = (best / "layer_grad_cam.png").stat().st_mtime_ns
    tune._layer_figure(config, best, epoch)  # the same checkpoint: not drawn again
    assert (best / "layer_grad_cam.png").stat().st_mtime_ns == drawn
    assert (best / "confusion_matrix.png").exists()

    # Re-running reads the finished trials instead of training them again.
    stamps = {n: (tmp_path / "trials" / n / "metrics.jsonl").stat().st_mtime_ns for n in names}
    again = studies.run_tune(smoke_study(), tmp_path)
    assert again.trials == result.trials
    for n in names:
        assert (tmp_path / "trials" / n / "metrics.jsonl").stat().st_mtime_ns == stamps[n]

    # Another copy of the data (its examples in another order): every folder trained
    # on the old examples, finished trials and best/ too, is refused before any work.
    real_load = loop_lib.load_data

    def reordered(data_config):
        splits = real_load(data_config)
        train_ds = splits["train"]
        splits["train"] = dataclasses.replace(
            train_ds, images=train_ds.images[::-1], labels=train_ds.labels[::-1]
        )
        return splits

    def files():  # with their times: results.json is rewritten with the same bytes
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")
                if p.is_file()}  # fmt: skip

    before = files()
    with mock.patch.object(loop_lib, "load_data", reordered):
        with pytest.raises(CheckpointMismatchError, match=r"the training examples: .*data_dir"):
            studies.run_tune(smoke_study(), tmp_path)
        for folder in [tmp_path / "trials" / n for n in names] + [best]:
            with pytest.raises(
                CheckpointMismatchError, match=f"^{re.escape(str(folder))}.*training examples"
            ):
                tune._check_trial_data([(folder, loop_lib.load_run_config(folder))])
    assert files() == before

    # Until the last trial, results.md says it ranks part of the grid.
    tune._write_tables(
        tmp_path / "partial", result.trials[:1], {"trials_done": 1, "trials_total": 2}
    )
    text = (tmp_path / "partial" / "results.md").read_text()
    assert text.startswith("Partial: 1 of the grid's 2 trials so far.\n\n| rank |")
    # Without a validation split every trial ties at nothing: refused before any work.
    blind = smoke_study()
    blind.trial.data.validation_size = 0
    with pytest.raises(ValueError, match="ranked on validation accuracy"):
        studies.run_tune(blind, tmp_path / "blind")
    assert not (tmp_path / "blind").exists()
    # The per-layer figure is drawn after the last trial; a method that cannot draw it
    # is refused before the first.
    no_layer = smoke_study()
    no_layer.layer_cam.method, no_layer.layer_cam.samples = "layer_deeplift_shap", 2
    with pytest.raises(ValueError, match="layer_cam.method must be a deterministic map"):
        studies.run_tune(no_layer, tmp_path / "no_layer")
    assert not (tmp_path / "no_layer").exists()

    # A changed trial config for existing folders is refused before anything is trained.
    changed = smoke_study()
    changed.trial.learning_rate = 0.5
    with pytest.raises(ValueError, match="holds a run of another config"):
        studies.run_tune(changed, tmp_path)
    # ... and so is a changed trial config whose grid meets none of them (another
    # study run into the same folder): the tables would rank the other study's trials.
    elsewhere = smoke_study()
    elsewhere.grid.model.num_blocks = (3,)
    elsewhere.trial.learning_rate = 0.5
    before = files()
    with pytest.raises(
        ValueError, match=r"a tuning study of another config\.trial \(trial\.learning_rate: "
    ) as error:
        studies.run_tune(elsewhere, tmp_path)
    assert "\n" not in str(error.value) and "Nothing was overwritten" in str(error.value)
    assert files() == before and not (tmp_path / "trials" / "num_blocks-3_filters-4").exists()
    # A truncated results.json is a table to write again, not a record to refuse on.
    tables = (tmp_path / "results.json").read_text()
    (tmp_path / "results.json").write_text(tables[: len(tables) // 2])
    tune._check_study_record(tmp_path, elsewhere)
    (tmp_path / "results.json").write_text(tables)

    # A grid without the best point: the tables follow the grid, and best/ (the old
    # best's retrain) is refused with what to do, before anything is retrained.
    worse = json.loads(
        (tmp_path / "trials" / result.trials[1]["trial"] / "config.json").read_text()
    )
    narrowed = smoke_study()
    narrowed.grid.model.num_blocks = (worse["model"]["num_blocks"],)
    with pytest.raises(ValueError, match=r"the grid's best is now .*move best/ away") as error:
        studies.run_tune(narrowed, tmp_path)
    assert "Nothing was overwritten" not in str(error.value)
    assert json.loads((best / "grid_point.json").read_text()) == point
    # The same best point with another `final`: refused, naming the field and `final`.
    refinal = smoke_study()
    refinal.final.data.train_limit = 128
    with pytest.raises(
        ValueError, match=r"data.train_limit: .* -> 128; .*config\.final over"
    ) as error:
        studies.run_tune(refinal, tmp_path)
    # The tables were rewritten (the same ranking) before best/ was reached: not claimed
    # untouched.
    assert "results tables are up to date" in str(error.value)
    assert "Nothing was overwritten" not in str(error.value)

    # The best checkpoint moved (training went on): the figure is drawn again, and the
    # earlier one kept.
    first = (best / "layer_grad_cam.png").read_bytes()
    tune._layer_figure(config, best, epoch + 1)
    assert json.loads((best / "layer_grad_cam.json").read_text())["checkpoint_epoch"] == epoch + 1
    assert (best / "layer_grad_cam.png").stat().st_mtime_ns != drawn
    assert (best / "layer_grad_cam.1.png").read_bytes() == first
    # Another number of samples: drawn again too.
    more = smoke_study()
    more.layer_cam.samples = samples + 1
    tune._layer_figure(more, best, epoch + 1)
    assert json.loads((best / "layer_grad_cam.json").read_text())["samples"] == samples + 1
    assert (best / "layer_grad_cam.2.png").exists()

    # More epochs per trial: every trial goes on from where it stopped (none is read as
    # finished with fewer epochs than asked).
    longer = smoke_study()
    longer.retrain = False
    longer.trial.num_epochs += 1
    grown = studies.run_tune(longer, tmp_path)
    for n in names:
        history = (tmp_path / "trials" / n / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in history][-1] == longer.trial.num_epochs
        summary = json.loads((tmp_path / "trials" / n / "train_summary.json").read_text())
        assert summary["epochs"] == longer.trial.num_epochs
    assert len(grown.trials) == 2
