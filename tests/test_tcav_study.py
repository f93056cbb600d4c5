"""The TCAV study end to end on the synthetic smoke run, and its sampling."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

import configs
from fmi_jax import attribution, runs, studies
from fmi_jax.studies.tcav import draw_sets

ROOT = Path(__file__).resolve().parents[1]


def test_draw_sets_are_disjoint_and_by_class():
    labels = np.repeat(np.arange(3), 10)[np.random.default_rng(0).permutation(30)]
    concept, tested, random = draw_sets(
        labels, num_classes=3, concept_size=3, num_images=4, random_sets=2, random_size=4, seed=1
    )
    assert concept.shape == (3, 3) and tested.shape == (3, 4) and random.shape == (2, 4)
    everything = np.concatenate([concept.ravel(), tested.ravel(), random.ravel()])
    assert len(set(everything.tolist())) == everything.size  # disjoint
    for c in range(3):
        assert np.all(labels[concept[c]] == c) and np.all(labels[tested[c]] == c)
    again = draw_sets(
        labels, num_classes=3, concept_size=3, num_images=4, random_sets=2, random_size=4, seed=1
    )
    for a, b in zip(again, (concept, tested, random)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="class 0 has 10 images.*needs .* = 11"):
        draw_sets(
            labels,
            num_classes=3,
            concept_size=6,
            num_images=5,
            random_sets=2,
            random_size=1,
            seed=0,
        )
    with pytest.raises(
        ValueError, match="9 images are left .* need random_sets x random_size = 10"
    ):
        draw_sets(
            labels,
            num_classes=3,
            concept_size=3,
            num_images=4,
            random_sets=2,
            random_size=5,
            seed=0,
        )


@pytest.mark.slow
def test_tcav_study_writes_scores_that_are_the_library_s(synthetic_run):
    config = configs.load("tcav", "smoke")
    result = studies.run_tcav(config, synthetic_run)
    out = synthetic_run / "tcav"
    saved = dict(np.load(out / "tcav.npz"))
    summary = json.loads((out / "tcav.json").read_text())
    assert summary == result.summary
    layer = config.layers[0]
    classes = len(summary["classes"])
    assert saved[f"{layer}/sign_count"].shape == (classes, classes, config.random_sets)
    assert saved[f"{layer}/cav_accuracy"].shape == (classes, config.random_sets)
    # Every cell's p-value is the t-test of its sign counts against the class's null.
    p = np.array(
        [
            [
                attribution.t_test(
                    saved[f"{layer}/sign_count"][c, j], saved[f"{layer}/null_sign_count"][c]
                )
                for j in range(classes)
            ]
            for c in range(classes)
        ]
    )
    np.testing.assert_allclose(saved[f"{layer}/p_value"], p, rtol=1e-12)
    np.testing.assert_array_equal(saved[f"{layer}/significant"], p < config.alpha / classes)
    np.testing.assert_allclose(
        summary["layers"][layer]["sign_count_mean"], saved[f"{layer}/sign_count"].mean(-1)
    )
    # One cell recomputed from the public functions: class 3 against concept 5.
    model_images = _images(synthetic_run)
    handle = _handle(synthetic_run)
    cavs = attribution.fit_cavs(
        handle,
        layer=layer,
        concepts={"5": model_images[saved["concept_index"][5]]},
        random_sets=[model_images[i] for i in saved["random_index"]],
    )
    cell = attribution.tcav(handle, model_images[saved["test_index"][3]], 3, cavs=cavs)["5"]
    np.testing.assert_array_equal(cell.sign_count, saved[f"{layer}/sign_count"][3, 5])
    assert (out / "tcav.png").stat().st_size > 10_000
    # The confusions are the model's on the whole split; their agreement with the
    # scores is scipy's Spearman correlation over the pairs of different classes.
    confusion = saved["confusion"]
    predicted = np.asarray(handle(model_images)).argmax(axis=1)
    labels = np.asarray(_labels(synthetic_run))
    np.testing.assert_array_equal(
        np.diag(confusion), np.bincount(labels[predicted == labels], minlength=classes)
    )
    assert confusion.sum() == len(labels)
    positive = saved[f"{layer}/sign_count"] * config.num_images  # integers, up to rounding
    scores = np.rint(positive).sum(-1)
    pairs = ~np.eye(classes, dtype=bool)
    expected = scipy.stats.spearmanr((scores + scores.T)[pairs], (confusion + confusion.T)[pairs])
    np.testing.assert_allclose(
        summary["layers"][layer]["confusion_spearman"], expected.statistic, rtol=1e-5, atol=1e-6
    )

    # A re-run reuses the scores and redraws only what is missing, also with another
    # batch size, which bounds memory only.
    stamp = (out / "tcav.npz").stat().st_mtime_ns
    (out / "tcav.png").unlink()
    smaller = configs.load("tcav", "smoke")
    smaller.batch_size = int(config.batch_size) // 2
    studies.run_tcav(smaller, synthetic_run)
    assert (out / "tcav.npz").stat().st_mtime_ns == stamp
    assert (out / "tcav.png").exists()
    # A changed config is refused, naming the field; nothing is rewritten.
    changed = configs.load("tcav", "smoke")
    changed.l2 = 0.1
    with pytest.raises(runs.RunConfigError, match="l2: 0.01 -> 0.1"):
        studies.run_tcav(changed, synthetic_run)
    assert (out / "tcav.npz").stat().st_mtime_ns == stamp


def _handle(workdir):
    from fmi_jax.train import evaluate as evaluate_lib

    model, variables, _, _ = evaluate_lib.restore_model(workdir)
    return attribution.flax_model(model, variables)


def _labels(workdir):
    from fmi_jax.train import loop as loop_lib

    run_config = loop_lib.load_run_config(workdir)
    return loop_lib.load_data(run_config.data)["test"].labels


def _images(workdir):
    import jax.numpy as jnp

    from fmi_jax.train import loop as loop_lib
    from fmi_jax.train.input_pipeline import to_float

    run_config = loop_lib.load_run_config(workdir)
    return to_float(jnp.asarray(loop_lib.load_data(run_config.data)["test"].images))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("layers", ("conv9",), "conv9"),
        ("concept_size", 40, "concept_size \\+ num_images = 43"),
        # Compared with the split before the trial fit, whose matrices grow with the sizes.
        ("concept_size", 100_000, "concept_size \\+ num_images = 100003"),
        ("classifier", "svm", "classifier must be one of"),
        ("random_sets", 1, "random_sets must be at least 2"),
        ("num_images", 0, "num_images must be at least 1"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(synthetic_run, field, value, message):
    config = configs.load("tcav", "smoke")
    config.output = "tcav_refused"
    config[field] = value
    with pytest.raises(ValueError, match=message):
        studies.run_tcav(config, synthetic_run)
    assert not (synthetic_run / "tcav_refused").exists()


def test_the_script_ends_a_bad_setting_in_one_line_and_status_2(synthetic_run):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FMI_JAX_VERBOSE")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.tcav",
            f"--workdir={synthetic_run}",
            f"--config={ROOT / 'configs' / 'tcav.py'}:smoke",
            "--config.output=tcav_refused_by_script",
            "--config.layers=('conv9',)",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert "conv9" in errors[0]
    assert not (synthetic_run / "tcav_refused_by_script").exists()


def test_the_summary_reads_layers_whose_names_hold_a_slash():
    """Layers are module paths ('conv2/conv'); tcav.npz keys are '<layer>/<name>'."""
    from fmi_jax.studies import tcav as tcav_study

    rng = np.random.default_rng(0)
    arrays = {"test_index": np.zeros((2, 3), int), "confusion": np.array([[5, 1], [2, 4]])}
    for layer in ("conv2", "conv2/conv"):
        arrays.update(
            {
                f"{layer}/sign_count": rng.uniform(size=(2, 2, 3)).round(1),
                f"{layer}/magnitude": rng.uniform(size=(2, 2, 3)),
                f"{layer}/p_value": rng.uniform(size=(2, 2)),
                f"{layer}/significant": np.eye(2, dtype=bool),
                f"{layer}/null_sign_count": rng.uniform(size=(2, 3)),
                f"{layer}/cav_accuracy": rng.uniform(size=(2, 3)),
                f"{layer}/null_accuracy": rng.uniform(size=3),
            }
        )

    class Split:
        class_names, name, split = ("a", "b"), "synthetic", "test"

    summary = tcav_study._summary(arrays, ("conv2", "conv2/conv"), Split, "m", 1)
    np.testing.assert_allclose(
        summary["layers"]["conv2/conv"]["sign_count_mean"],
        arrays["conv2/conv/sign_count"].mean(-1),
    )
    assert summary["layers"]["conv2"]["diagonal_significant"] == 2
