"""The attribution-metrics study end to end on a synthetic smoke run."""

import csv
import json

import numpy as np
import pytest

import configs
from fmi_jax import evaluation, studies
from fmi_jax.studies import evaluate_attributions as study
from tests import testdata


@pytest.fixture(scope="module")
def trained_run(synthetic_run):
    """The shared synthetic run (tests/conftest.py); the study writes its own folders."""
    return synthetic_run


def test_config_variants():
    full = configs.load("evaluate_attributions")
    assert full.num_images == 500 and full.output == "attribution_metrics"
    assert {"saliency", "integrated_gradients", "grad_cam", "occlusion", "input"} <= set(
        full.methods
    )
    assert full.options.integrated_gradients.steps == 50  # the explain study's options
    assert tuple(full.pic.thresholds) == evaluation.PIC_THRESHOLDS
    smoke = configs.load("evaluate_attributions", "smoke")
    assert smoke.num_images == 8 and len(smoke.methods) == 3
    with pytest.raises(ValueError, match="variant"):
        configs.load("evaluate_attributions", "big")


def test_select_images():
    np.testing.assert_array_equal(study.select_images(100, 5, "first", 0), np.arange(5))
    idx = study.select_images(100, 10, "random", 3)
    assert len(set(idx.tolist())) == 10 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, study.select_images(100, 10, "random", 3))
    assert len(study.select_images(4, 10, "first", 0)) == 4
    with pytest.raises(ValueError, match="selection"):
        study.select_images(10, 2, "best", 0)


def _config():
    # smoke without grad_cam (keeps the test under a minute on two shared cores)
    config = configs.load("evaluate_attributions", "smoke")
    config.methods = ("saliency", "input")
    config.sensitivity.images_per_method = {"saliency": 4}
    return config


@pytest.mark.slow
def test_study_writes_leaderboard_reuses_and_refuses(trained_run):
    config = _config()
    result = studies.run_evaluate_attributions(config, trained_run)
    out = trained_run / "attribution_metrics"
    assert result.computed == list(config.methods)
    for name in (
        "config.json",
        "leaderboard.md",
        "leaderboard.csv",
        "leaderboard.json",
        "curves.npz",
        "deletion_insertion.png",
        "road.png",
        "pic.png",
        "randomization.png",
        "agreement.json",
        "agreement.png",
    ):
        assert (out / name).exists(), name
    for m in config.methods:
        assert (out / "methods" / f"{m}.npz").exists() and (out / "methods" / f"{m}.json").exists()

    board = json.loads((out / "leaderboard.json").read_text())
    assert [r["method"] for r in board["rows"]] == list(config.methods)
    assert board["images"] == 8
    numeric = [h for h in board["columns"][1:] if "sanity check" not in h]
    assert "deletion AUC (lower is better)" in numeric
    assert "insertion AUC (higher is better)" in numeric
    for row in board["rows"]:
        for h in numeric:
            assert np.isfinite(row[h]), (row["method"], h)
        assert row["sanity check (pass is better)"] in ("pass", "fail")
    with open(out / "leaderboard.csv") as f:
        assert len(list(csv.DictReader(f))) == len(config.methods)
    md = (out / "leaderboard.md").read_text()
    assert sum(line.startswith("| saliency") for line in md.splitlines()) == 1
    assert "a stochastic method's noise is held fixed" in md  # what max-sensitivity means

    # Known answers: the image as its own map ignores the model entirely -> fails the
    # sanity check (Spearman 1 after full randomisation); saliency passes.
    by_method = {r["method"]: r for r in result.rows}
    assert by_method["input"]["sanity_pass"] == "fail"
    assert by_method["input"]["sanity_spearman_abs"] == pytest.approx(1.0)
    assert by_method["saliency"]["sanity_pass"] == "pass"
    assert by_method["saliency"]["sanity_fully_randomized"]
    # Random logit: the image ignores the class (SSIM 1); saliency of a trained model
    # does not.
    assert by_method["input"]["random_logit_ssim"] == pytest.approx(1.0)
    assert by_method["saliency"]["random_logit_ssim"] < 0.9
    # Efficient MPRT: the image's histogram is the same for any weights (exactly 0).
    assert by_method["input"]["efficient_mprt"] == 0.0
    assert np.isfinite(by_method["saliency"]["efficient_mprt"])
    assert by_method["saliency"]["sensitivity_images"] == 4  # per-method cap
    assert by_method["input"]["sensitivity_images"] == 8

    curves = np.load(out / "curves.npz")
    layers = list(curves["layers"])
    assert layers[0] == by_method["saliency"]["sanity_layers"][0]
    assert curves["deletion_saliency"].shape == (8, 29)  # one row (28 px) per step
    assert curves["sanity_ssim_input"].shape == (len(layers), 8)
    # ROAD: one 0/1 (still correct) per image and removed fraction, averaged in the table.
    np.testing.assert_array_equal(curves["road_fractions"], config.road.fractions)
    road = curves["road_morf_saliency"]
    assert road.shape == (8, 2) and set(np.unique(road)) <= {0.0, 1.0}
    assert by_method["saliency"]["road_morf"] == pytest.approx(road.mean())
    assert -1.0 <= by_method["saliency"]["faithfulness_correlation"] <= 1.0
    # PIC: every method from the same random pixels, so the same images are kept, and
    # the table's area is the median curve's.
    assert curves["sic_saliency"].shape == curves["pic_x"].shape == (1001,)
    saliency, image = by_method["saliency"], by_method["input"]
    assert saliency["pic_images"] == 8
    assert 0 < saliency["sic_images"] == image["sic_images"] <= 8
    assert saliency["aic_images"] == image["aic_images"]
    with (
        np.load(out / "methods" / "saliency.npz") as a,
        np.load(out / "methods" / "input.npz") as b,
    ):
        np.testing.assert_array_equal(a["pic_random_pixels"], b["pic_random_pixels"])
        assert a["pic_random_pixels"].shape == (8, 28, 28)
    area = np.trapezoid(curves["sic_saliency"], curves["pic_x"])
    assert saliency["sic_auc"] == pytest.approx(area, abs=1e-9)

    # Rerun: every method comes from the cache, nothing is recomputed.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "methods").iterdir()}
    again = studies.run_evaluate_attributions(config, trained_run)
    assert again.computed == []
    assert {p.name: p.stat().st_mtime_ns for p in (out / "methods").iterdir()} == before
    assert [r["method"] for r in again.rows] == list(config.methods)

    # Options of a method the study does not run cannot alter its results.
    unused = _config()
    unused.options.grad_cam.layer = "conv1"
    assert studies.run_evaluate_attributions(unused, trained_run).computed == []
    other = _config()
    other.num_images = 4
    with pytest.raises(ValueError, match="another config.*--config.output"):
        studies.run_evaluate_attributions(other, trained_run)


def test_unknown_method_is_refused_before_any_work(trained_run):
    config = configs.load("evaluate_attributions", "smoke")
    config.methods = ("saliency", "gradcam")
    config.output = "metrics_unknown"
    with pytest.raises(ValueError, match="unknown method"):
        studies.run_evaluate_attributions(config, trained_run)
    assert not (trained_run / "metrics_unknown").exists()
    config.methods = ("saliency",)
    config.pic.thresholds = (0.5, 0.2)
    with pytest.raises(ValueError, match="pic.thresholds must be increasing"):
        studies.run_evaluate_attributions(config, trained_run)
    assert not (trained_run / "metrics_unknown").exists()
    config.pic.thresholds = configs.load("evaluate_attributions", "smoke").pic.thresholds
    for field, value, message in (
        ("selection", "bogus", "selection must be 'first' or 'random', got 'bogus'"),
        ("num_images", 0, "num_images must be >= 1, got 0"),
        ("infidelity.samples", 0, "infidelity.samples must be >= 1, got 0"),
        ("split", "tset", r"config\.split must be one of"),
        # Used minutes in, after every method's other metrics: checked first too.
        ("sensitivity.radius", -1.0, r"config\.sensitivity\.radius must be a finite number"),
        ("sanity.window", 0, r"config\.sanity\.window must be an odd integer >= 3, got 0"),
        ("sanity.window", 99, r"config\.sanity\.window 99 exceeds the images' size"),
        ("sanity.layers", ("conv9",), r"config\.sanity\.layers names unknown layers \['conv9'\]"),
        ("sanity.threshold", 1.5, r"config\.sanity\.threshold is a rank correlation in"),
    ):
        bad = configs.load("evaluate_attributions", "smoke")
        bad.methods, bad.output = ("saliency",), "metrics_unknown"
        section, _, name = field.rpartition(".")
        (bad[section] if section else bad)[name] = value
        with pytest.raises(ValueError, match=message):
            studies.run_evaluate_attributions(bad, trained_run)
        assert not (trained_run / "metrics_unknown").exists()
    bad = configs.load("evaluate_attributions", "smoke")
    bad.methods, bad.output = ("saliency", "smoothgrad"), "metrics_unknown"
    bad.options.smoothgrad.samples = 0  # checked by the method only when it runs
    with pytest.raises(ValueError, match=r"^smoothgrad: samples must be an integer >= 1"):
        studies.run_evaluate_attributions(bad, trained_run)
    assert not (trained_run / "metrics_unknown").exists()


@pytest.mark.slow
def test_every_configured_method_runs_with_its_options():
    """The full config's methods and options build and run on a small CNN (the smoke
    study runs only a few of them): a misspelt or mis-shaped option fails here, not
    after an hour of the real study."""
    import jax
    import jax.numpy as jnp

    from fmi_jax import attribution, models

    config = configs.load("evaluate_attributions")
    model = models.get_model("cnn_fmnist", features=(4, 4, 4), dense=(8,), dropout=0.0)
    x = testdata.uniform(jax.random.key(0), (2, 28, 28, 1))
    variables = testdata.init(model, x, 1)
    fn = lambda v: model.apply(variables, v)  # noqa: E731
    for name in config.methods:
        if name in study.CONTROLS:
            continue
        options = study.method_options(config, name)
        explain = attribution.explainer(name, fn, model=model, variables=variables, **options)
        # Jitted, as the study runs it: one compile per method instead of one per
        # operation and shape.
        maps = np.asarray(jax.jit(explain)(x, jnp.array([0, 1]), jax.random.key(2)))
        assert maps.shape[:3] == x.shape[:3] and np.isfinite(maps).all(), name
