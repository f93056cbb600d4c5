"""The sparse autoencoder study end to end on synthetic data (smoke config)."""

import json

import numpy as np
import pytest

import configs
from fmi_jax import studies, train
from fmi_jax.studies import sae as sae_lib


def smoke_config(**overrides):
    config = configs.load("sae_fmnist", "smoke")
    config.data.name = "synthetic"
    config.data.options = {"num_train": 704, "num_test": 128}
    config.data.train_limit = None
    config.progress = False
    config.autoencoder.num_epochs = 3
    config.classifier.num_epochs = 4
    config.classifier.learning_rate = 3e-3
    for key, value in overrides.items():
        target = config
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    return config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sae")
    config = smoke_config()
    return workdir, config, studies.run_sae_study(config, workdir)


@pytest.mark.slow
def test_every_phase_and_output_is_written(study):
    workdir, config, result = study
    for phase in ("autoencoder", "classifier", "finetune"):
        assert (workdir / phase / "train_summary.json").exists(), phase
    for name in ("decoder_atoms.png", "reconstructions.png", "latent_usage.png"):
        assert (workdir / name).stat().st_size > 5_000, name
    out = workdir / "explain"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["agreement"]["methods"] == list(config.explain.methods)
    assert "integrated_gradients" in stats["completeness"]
    assert stats["agreement"]["topk_fraction"] == 0.01
    assert len(list((out / "sheets").glob("*.png"))) >= 1
    saved = np.load(out / "attributions.npz")
    for m in config.explain.methods:
        assert saved[f"map_{m}"].shape == saved["images"].shape
        assert np.isfinite(saved[f"map_{m}"]).all()
    # Explained samples are correct predictions (smoke threshold 0).
    np.testing.assert_array_equal(saved["predictions"], saved["labels"])
    assert result.explain.out_dir == out


def test_sae_metrics_agree_with_the_runs(study):
    workdir, config, result = study
    metrics = json.loads((workdir / "sae_metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    recon = metrics["reconstruction"]
    assert recon["latents"] == config.sae.latents and recon["k"] == config.sae.k
    assert 0 < recon["mean_active_units"] <= config.sae.k
    assert recon["dead_latents"] == round(recon["dead_fraction"] * recon["latents"])
    assert recon["epochs"] == 3
    # Fine-tuning kept the decoder atoms, so the final model reconstructs like phase 1
    # only if the encoder did not move; the reported MSE is the final model's.
    assert np.isfinite(recon["mse"]) and recon["mse"] > 0
    summary = json.loads((workdir / "finetune" / "train_summary.json").read_text())
    assert metrics["final_phase"] == "finetune"
    assert metrics["classifier"]["accuracy"] == pytest.approx(summary["test_accuracy"])
    goals = metrics["goals"]
    assert goals["mse_at_most_0.01"] == (recon["mse"] <= 0.01)
    assert goals["accuracy_at_least_0.89"] == (metrics["classifier"]["accuracy"] >= 0.89)
    assert goals["dead_at_most_5%"] == (recon["dead_fraction"] <= 0.05)
    assert set(metrics["attribution"]["methods"]) == set(config.explain.methods)


def test_fine_tuning_moves_the_encoder_but_not_the_atoms(study):
    workdir, _, _ = study
    _, ae, _, _ = train.restore_model(workdir / "autoencoder")
    _, clf, _, _ = train.restore_model(workdir / "classifier")
    _, fine, _, _ = train.restore_model(workdir / "finetune")
    a, c, f = ae["params"], clf["params"]["autoencoder"], fine["params"]["autoencoder"]
    for name in ("w_enc", "b_enc", "w_dec", "b_dec"):  # frozen in phase 2
        np.testing.assert_array_equal(c[name], a[name])
    np.testing.assert_array_equal(f["w_dec"], a["w_dec"])
    assert not np.array_equal(f["w_enc"], a["w_enc"])


def test_rerun_resumes_without_retraining_or_rewriting(study, monkeypatch):
    """Also when the workdir is spelled another way (relative to another directory),
    when a phase recorded where it started from as the path the study was given, and
    when the data lies elsewhere (a mistyped data_dir must not bind the folder)."""
    workdir, config, result = study
    config = smoke_config(**{"data.data_dir": str(workdir.parent / "moved")})
    lines = {
        p: (workdir / p / "metrics.jsonl").read_text()
        for p in ("autoencoder", "classifier", "finetune")
    }
    mtimes = {p: p.stat().st_mtime_ns for p in workdir.glob("*.png")}
    record = workdir / "classifier" / "config.json"
    legacy = json.loads(record.read_text())
    assert legacy["init_from"]["workdir"] == "../autoencoder"
    legacy["init_from"]["workdir"] = str(workdir / "autoencoder")
    record.write_text(json.dumps(legacy))
    monkeypatch.chdir(workdir.parent)
    again = studies.run_sae_study(config, workdir.name)
    assert json.loads(record.read_text())["init_from"]["workdir"] == "../autoencoder"
    for phase, text in lines.items():
        assert (workdir / phase / "metrics.jsonl").read_text() == text, phase
    assert {p: p.stat().st_mtime_ns for p in workdir.glob("*.png")} == mtimes
    assert again.metrics == json.loads(json.dumps(result.metrics))
    assert not list(workdir.glob("sae_metrics.*.json"))


def test_a_changed_config_is_refused_and_nothing_is_touched(study):
    workdir, _, _ = study
    before = (workdir / "study_config.json").read_text()
    with pytest.raises(ValueError, match=r"another config \(sae\.k: \d+ -> 4\).*new --workdir"):
        studies.run_sae_study(smoke_config(**{"sae.k": 4}), workdir)
    assert (workdir / "study_config.json").read_text() == before


@pytest.mark.parametrize(
    "overrides, message",
    [
        # The final phase is the classifier now: another model than the explained one.
        ({"finetune.num_epochs": 0}, r"another checkpoint \(.*model: .*finetune.*classifier"),
        ({"explain.options.integrated_gradients.steps": 3}, r"another config \(options\."),
    ],
)
def test_a_rerun_the_explain_folder_refuses_changes_no_figure_or_record(study, overrides, message):
    workdir, _, _ = study
    names = ("study_config.json", "figures.json", "sae_metrics.json")
    before = {n: (workdir / n).read_text() for n in names}
    figures = {p.name: p.read_bytes() for p in workdir.glob("*.png")}
    with pytest.raises(ValueError, match=message):
        studies.run_sae_study(smoke_config(**overrides), workdir)
    assert {n: (workdir / n).read_text() for n in names} == before
    assert {p.name: p.read_bytes() for p in workdir.glob("*.png")} == figures


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"explain.split": "tset"}, r"config\.explain\.split must be one of"),
        (
            {"explain.split": "validation", "data.validation_size": 0},
            r"explain\.split='validation' needs data\.validation_size > 0",
        ),
        ({"explain.output": "classifier"}, "belongs to the run"),
    ],
)
def test_explain_settings_are_refused_before_hours_of_training(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        studies.run_sae_study(smoke_config(**overrides), tmp_path)
    assert not any(tmp_path.iterdir())


def test_phase_configs_chain_the_phases(tmp_path):
    config = smoke_config()
    ae = sae_lib.phase_config(config, "autoencoder", tmp_path)
    assert (ae.task, ae.model.name, ae.model.k) == ("reconstruction", "k_sparse_autoencoder", 8)
    clf = sae_lib.phase_config(config, "classifier", tmp_path)
    assert clf.frozen == ("autoencoder",)
    assert clf.init_from.workdir == "../autoencoder"  # from the phase's own folder
    assert tuple(clf.model.hidden) == (32, 16) and clf.model.latents == 64
    fine = sae_lib.phase_config(config, "finetune", tmp_path)
    assert fine.frozen == ("autoencoder/w_dec",)
    assert fine.init_from.workdir == "../classifier"
    with pytest.raises(ValueError, match="unknown phase"):
        sae_lib.phase_config(config, "pretrain", tmp_path)
    # A tied decoder's atoms are the encoder's weights: fine-tuning would move them.
    with pytest.raises(ValueError, match="tied=True with finetune.num_epochs > 0"):
        sae_lib.phase_config(smoke_config(**{"sae.tied": True}), "finetune", tmp_path)


def test_stop_after_the_autoencoder_reports_only_the_reconstruction(tmp_path):
    result = studies.run_sae_study(smoke_config(stop_after="autoencoder"), tmp_path)
    assert result.explain is None
    assert not (tmp_path / "classifier").exists()
    metrics = json.loads((tmp_path / "sae_metrics.json").read_text())
    assert metrics["final_phase"] == "autoencoder" and "classifier" not in metrics
    summary = json.loads((tmp_path / "autoencoder" / "train_summary.json").read_text())
    assert metrics["reconstruction"]["mse"] == pytest.approx(summary["test_mse"], rel=1e-6)
    assert set(metrics["goals"]) == {"mse_at_most_0.01", "dead_at_most_5%"}
    with pytest.raises(ValueError, match="stop_after must be one of"):
        studies.run_sae_study(smoke_config(stop_after="explain"), tmp_path)


def test_figures_of_another_checkpoint_or_other_settings_are_kept_and_redrawn(tmp_path):
    """figures.json says which checkpoint and settings each figure shows: more atoms
    redraw decoder_atoms.png only; figures of another epoch's autoencoder are all
    redrawn. A replaced figure is kept as <name>.<n>.png."""
    names = ("decoder_atoms.png", "reconstructions.png", "latent_usage.png")
    studies.run_sae_study(smoke_config(stop_after="autoencoder"), tmp_path)
    record = json.loads((tmp_path / "figures.json").read_text())
    assert record["latent_usage.png"] == {"phase": "autoencoder", "checkpoint_epoch": 3}
    first = {n: (tmp_path / n).read_bytes() for n in names}
    atoms = int(smoke_config().figures.atoms) + 4
    studies.run_sae_study(
        smoke_config(stop_after="autoencoder", **{"figures.atoms": atoms}), tmp_path
    )
    assert (tmp_path / "decoder_atoms.1.png").read_bytes() == first["decoder_atoms.png"]
    assert (tmp_path / "decoder_atoms.png").read_bytes() != first["decoder_atoms.png"]
    for name in names[1:]:
        assert (tmp_path / name).read_bytes() == first[name]
        assert not (tmp_path / name.replace(".png", ".1.png")).exists()
    # As if drawn from epoch 2's checkpoint (a run that trained on since).
    record = json.loads((tmp_path / "figures.json").read_text())
    (tmp_path / "figures.json").write_text(
        json.dumps({n: {**r, "checkpoint_epoch": 2} for n, r in record.items()})
    )
    studies.run_sae_study(
        smoke_config(stop_after="autoencoder", **{"figures.atoms": atoms}), tmp_path
    )
    assert json.loads((tmp_path / "figures.json").read_text()) == record
    assert (tmp_path / "decoder_atoms.2.png").exists()
    for name in names[1:]:
        assert (tmp_path / name.replace(".png", ".1.png")).read_bytes() == first[name]


@pytest.mark.parametrize(
    "raised, message",
    [
        (KeyboardInterrupt(), r"^interrupted in phase autoencoder before its training began: run "),
        (KeyboardInterrupt("training's own"), r"^training's own$"),  # kept as it is
    ],
)
def test_an_interrupt_says_how_to_resume(tmp_path, monkeypatch, raised, message):
    def interrupted(config, workdir, **kwargs):
        raise raised

    monkeypatch.setattr(sae_lib.loop_lib, "train_and_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt, match=message):
        studies.run_sae_study(smoke_config(), tmp_path)
