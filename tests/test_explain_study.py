"""The explain study end to end on a synthetic smoke run."""

import json

import numpy as np
import pytest

import configs
from fmi_jax import studies, train


@pytest.fixture
def trained_run(tmp_path, synthetic_config):
    config = synthetic_config(num_epochs=2)
    train.train_and_evaluate(config, tmp_path)
    return tmp_path


def test_explain_writes_maps_stats_and_figures(trained_run):
    config = configs.load("explain", "smoke")
    result = studies.run_explain(config, trained_run)
    out = trained_run / "explain"
    saved = np.load(out / "attributions.npz")
    n = len(saved["indices"])
    assert n == 10  # one per class (smoke: threshold 0)
    assert np.bincount(saved["labels"], minlength=10).tolist() == [1] * 10
    for m in config.methods:
        assert saved[f"map_{m}"].shape == saved["images"].shape, m
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats["methods"]) == set(config.methods)
    for m in config.methods:
        assert {"mean", "max", "std", "seconds"} <= set(stats["methods"][m])
    # DeepLift is exact; IG with 8 Gauss-Legendre steps on a tiny ReLU net is close.
    assert stats["completeness"]["deeplift"]["max_abs_delta"] < 1e-3
    assert len(stats["completeness"]["integrated_gradients"]["per_sample"]) == n
    spearman = np.array(stats["agreement"]["spearman"])
    np.testing.assert_allclose(np.diag(spearman), 1.0)
    np.testing.assert_allclose(spearman, spearman.T)
    assert stats["agreement"]["methods"] == list(config.methods)
    assert len(list((out / "sheets").glob("*.png"))) == config.figures.max_sheets
    for m in config.methods:
        assert (out / f"gallery_{m}.png").exists()
    assert (out / "signs_integrated_gradients.png").exists()
    assert not (out / "signs_saliency.png").exists()  # unsigned: no sign modes
    assert (out / "agreement.png").stat().st_size > 10_000
    assert set(result.maps) == set(config.methods)


def test_rerun_reuses_results_and_other_config_is_refused(trained_run):
    config = configs.load("explain", "smoke")
    studies.run_explain(config, trained_run)
    npz = trained_run / "explain" / "attributions.npz"
    before = npz.stat().st_mtime_ns
    (trained_run / "explain" / "agreement.png").unlink()
    studies.run_explain(config, trained_run)
    assert npz.stat().st_mtime_ns == before  # not recomputed
    assert (trained_run / "explain" / "agreement.png").exists()  # missing figure redrawn
    other = configs.load("explain", "smoke")
    other.options.integrated_gradients.steps = 16
    with pytest.raises(ValueError, match="another config.*--config.output"):
        studies.run_explain(other, trained_run)


def test_explicit_indices_and_bad_ones(trained_run):
    config = configs.load("explain", "smoke")
    config.selection.kind = "indices"
    config.selection.indices = (0, 5, 7)
    config.methods = ("saliency",)
    config.output = "explain_indices"
    result = studies.run_explain(config, trained_run)
    np.testing.assert_array_equal(result.indices, [0, 5, 7])
    config.selection.indices = (0, 10_000)
    config.output = "explain_bad"
    with pytest.raises(ValueError, match=r"selection indices \[10000\] are outside"):
        studies.run_explain(config, trained_run)


def test_unknown_method_is_refused_before_any_work(trained_run):
    config = configs.load("explain", "smoke")
    config.methods = ("saliency", "gradcam")
    with pytest.raises(ValueError, match="unknown method"):
        studies.run_explain(config, trained_run)
    assert not (trained_run / "explain").exists()
