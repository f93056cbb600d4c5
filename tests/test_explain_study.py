"""The explain study end to end on a synthetic smoke run."""

import json
import shutil

import numpy as np
import pytest

import configs
from fmi_jax import studies, train
from fmi_jax.data import idx, synthetic
from fmi_jax.train import evaluate as evaluate_lib


@pytest.fixture(scope="module")
def trained_run(synthetic_run):
    """The shared synthetic run; each test below writes its own output folder in it."""
    return synthetic_run


@pytest.mark.slow
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
    # The sheets also go to the run's TensorBoard, as images tagged by the output.
    events = b"".join(p.read_bytes() for p in (trained_run / "tensorboard").glob("events.*"))
    assert events.count(b"explain/explain/sample_") == config.figures.max_sheets
    for m in config.methods:
        assert (out / f"gallery_{m}.png").exists()
    assert (out / "signs_integrated_gradients.png").exists()
    assert not (out / "signs_saliency.png").exists()  # unsigned: no sign modes
    assert (out / "agreement.png").stat().st_size > 10_000
    assert set(result.maps) == set(config.methods)
    # The Fashion-MNIST study's additions: Grad-CAM and feature permutation on 7 x 7
    # patches (every pixel of a patch holds the patch's drop), and the per-layer figure.
    assert {"grad_cam", "feature_permutation"} <= set(config.methods)
    fp = saved["map_feature_permutation"][..., 0]
    patches = fp.reshape(n, 4, 7, 4, 7)
    np.testing.assert_array_equal(patches, patches[:, :, :1, :, :1] * np.ones_like(patches))
    assert np.all(saved["map_grad_cam"] >= 0)
    assert stats["layer_cam"] == {"method": "grad_cam", "layers": ["conv1", "conv2", "conv3"]}
    for layer in ("conv1", "conv2", "conv3"):
        assert saved[f"layer_cam_{layer}"].shape == (3, 28, 28)
    assert (out / "layer_grad_cam.png").stat().st_size > 10_000


def test_rerun_reuses_results_and_other_config_is_refused(trained_run, monkeypatch):
    config = configs.load("explain", "smoke")
    config.methods = ("saliency", "integrated_gradients")
    config.layer_cam.samples = 0
    config.output = "explain_rerun"
    studies.run_explain(config, trained_run)
    npz = trained_run / "explain_rerun" / "attributions.npz"
    before = npz.stat().st_mtime_ns
    (trained_run / "explain_rerun" / "agreement.png").unlink()
    studies.run_explain(config, trained_run)
    assert npz.stat().st_mtime_ns == before  # not recomputed
    assert (trained_run / "explain_rerun" / "agreement.png").exists()  # missing figure redrawn
    other = configs.load("explain", "smoke")
    other.methods = config.methods
    other.layer_cam.samples = 0
    other.output = config.output
    other.options.integrated_gradients.steps = 16
    with pytest.raises(ValueError, match="another config.*--config.output"):
        studies.run_explain(other, trained_run)
    # Options of a method the study does not run cannot alter its results, nor can the
    # chunk size (lowered after running out of memory).
    other.options.integrated_gradients.steps = config.options.integrated_gradients.steps
    other.options.grad_cam.layer = "conv1"
    other.batch_size = config.batch_size // 2
    studies.run_explain(other, trained_run)
    assert npz.stat().st_mtime_ns == before
    # Another name for the same checkpoint reads the same weights; checkpoint.json
    # compares the epoch it names.
    epoch = json.loads((trained_run / "explain_rerun" / "checkpoint.json").read_text())
    other.checkpoint = "latest" if epoch["checkpoint_epoch"] == 2 else "1"
    studies.run_explain(other, trained_run)
    assert npz.stat().st_mtime_ns == before
    other.checkpoint = str(3 - epoch["checkpoint_epoch"])
    with pytest.raises(ValueError, match=r"another checkpoint \(checkpoint_epoch: \d -> \d\)"):
        studies.run_explain(other, trained_run)
    # Training went on and the best checkpoint is another epoch: not reused, refused.
    restore = evaluate_lib.restore_model
    moved = lambda *args, **kwargs: (*restore(*args, **kwargs)[:3], 99)  # noqa: E731
    monkeypatch.setattr(evaluate_lib, "restore_model", moved)
    with pytest.raises(ValueError, match=r"another checkpoint \(checkpoint_epoch: \d -> 99\)"):
        studies.run_explain(config, trained_run)
    assert npz.stat().st_mtime_ns == before


def test_a_run_trained_without_tensorboard_gets_no_events_from_explain(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("tensorboard", "explain*"))
    record = json.loads((run / "config.json").read_text())
    record["tensorboard"] = False
    (run / "config.json").write_text(json.dumps(record))
    config = configs.load("explain", "smoke")
    config.methods = ("saliency",)
    config.selection.kind = "indices"
    config.selection.indices = (0, 1)
    studies.run_explain(config, run)
    assert list((run / "explain" / "sheets").glob("*.png"))
    assert not (run / "tensorboard").exists()


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


@pytest.mark.parametrize("output", ["", ".", "./", "../elsewhere", "/tmp/explain_abs"])
def test_an_output_folder_outside_the_run_or_the_run_itself_is_refused(trained_run, output):
    """'' or '.' would make the training run's own config.json the study's record."""
    record = (trained_run / "config.json").read_text()
    config = configs.load("explain", "smoke")
    config.output = output
    with pytest.raises(ValueError, match=r"config\.output must name a folder inside the workdir"):
        studies.run_explain(config, trained_run)
    assert (trained_run / "config.json").read_text() == record


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("split", "tset", r"config\.split must be one of \('train', 'validation', 'test'\)"),
        ("target", "labels", r"config\.target must be 'predicted' or 'label', got 'labels'"),
        ("selection.pool", 0, r"config\.selection\.pool must be >= 1"),
        ("selection.threshold", 0.999999, r"none of the first .* above selection\.threshold"),
        ("selection.per_class", 0, r"config\.selection\.per_class must be >= 1, got 0"),
        ("selection.threshold", 1.5, r"config\.selection\.threshold must be in \[0, 1\)"),
        ("batch_size", 0, r"config\.batch_size must be an integer >= 1, got 0"),
        ("topk_fraction", 0.0, r"config\.topk_fraction must be in \(0, 1\], got 0\.0"),
        ("methods", (), r"config\.methods is empty"),
        # Drawn after every map is computed: checked first, or the folder holds its value.
        ("figures.gallery_per_class", -2, r"config\.figures\.gallery_per_class must be an int"),
        ("figures.max_sheets", -1, r"config\.figures\.max_sheets must be an integer >= 0"),
    ],
)
def test_bad_study_settings_are_one_error_naming_the_field(trained_run, field, value, message):
    config = configs.load("explain", "smoke")
    config.methods = ("saliency",)
    config.output = "explain_bad_" + "".join(c if c.isalnum() else "_" for c in f"{field}{value}")
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(ValueError, match=message):
        studies.run_explain(config, trained_run)
    assert not (trained_run / config.output).exists()  # found before the folder is claimed


def test_unknown_method_is_refused_before_any_work(trained_run):
    config = configs.load("explain", "smoke")
    config.methods = ("saliency", "gradcam")
    config.output = "explain_unknown"
    with pytest.raises(ValueError, match="unknown method"):
        studies.run_explain(config, trained_run)
    assert not (trained_run / "explain_unknown").exists()


def test_a_bad_option_value_is_refused_before_any_work(trained_run):
    """`steps=0` is checked by integrated gradients only when it runs: the study traces
    every method on two images before it claims its folder."""
    config = configs.load("explain", "smoke")
    config.methods = ("saliency", "integrated_gradients")
    config.options.integrated_gradients.steps = 0
    config.output = "explain_bad_steps"
    with pytest.raises(ValueError, match=r"^integrated_gradients: steps must be an integer >= 1"):
        studies.run_explain(config, trained_run)
    assert not (trained_run / "explain_bad_steps").exists()


@pytest.mark.parametrize(
    "method, message",
    [
        ("full_grad", r"layer_cam\.method must be a deterministic map of one layer"),
        ("layer_gradient_shap", r"layer_cam\.method must be a deterministic map of one layer"),
        ("layer_deeplift_shap", r"layer_cam\.method must be a deterministic map of one layer"),
    ],
)
def test_a_per_layer_figure_method_that_cannot_draw_it_is_refused_first(
    trained_run, method, message
):
    """The per-layer figure is drawn after every method has run: its method is checked,
    and traced on every layer, before the folder is claimed."""
    config = configs.load("explain", "smoke")
    config.methods = ("saliency",)
    config.layer_cam.method = method
    config.output = "explain_bad_layer_cam"
    with pytest.raises(ValueError, match=message):
        studies.run_explain(config, trained_run)
    assert not (trained_run / "explain_bad_layer_cam").exists()


def test_methods_of_every_family_run_in_the_study_and_neuron_methods_are_refused(trained_run):
    """A modified-backward rule, a layer method (a CAM-like map), XRAI (outside jit) and a
    sampling method over patches, side by side; a neuron method is refused up front."""
    config = configs.load("explain", "smoke")
    config.methods = ("guided_backprop", "layer_integrated_gradients", "xrai", "kernel_shap")
    with config.unlocked():
        config.options.layer_integrated_gradients = {"layer": "conv2", "steps": 4}
        config.options.xrai = {"steps": 4}
        config.options.kernel_shap = {"patch": 7, "samples": 16}
    config.layer_cam.samples = 0
    config.output = "explain_families"
    result = studies.run_explain(config, trained_run)
    for name in config.methods:
        maps = result.maps[name]
        assert maps.shape[1:3] == (28, 28) and np.isfinite(maps).all(), name
        assert np.abs(maps).max() > 0, name
    config.methods = ("saliency", "neuron_gradient")
    config.output = "explain_neuron"
    with pytest.raises(ValueError, match="explain study explains classes; neuron_gradient"):
        studies.run_explain(config, trained_run)
    assert not (trained_run / "explain_neuron").exists()


@pytest.mark.slow
def test_mnist_study_on_files_in_the_original_format(tmp_path):
    """configs/explain_mnist.py on a cnn_mnist:smoke run whose data are MNIST IDX files
    written here (MNIST cannot be downloaded on the test machines)."""
    data_dir = tmp_path / "mnist"
    data_dir.mkdir()
    for split, stream, num in (("train", 0, 512), ("t10k", 1, 128)):
        images, labels = synthetic.make_images(num, (28, 28, 1), 10, seed=0, stream=stream)
        idx.write_idx(data_dir / f"{split}-images-idx3-ubyte.gz", images[..., 0])
        idx.write_idx(data_dir / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    run_config = configs.load("cnn_mnist", "smoke")
    run_config.data.data_dir = str(data_dir)
    run_config.data.download = False
    run_config.data.train_limit = None
    run_config.progress = False
    run_config.augment = {"flip": False, "crop_padding": 0, "erasing": 0.0}
    run_config.num_epochs = 2
    run_config.learning_rate = 5e-3
    workdir = tmp_path / "run"
    train.train_and_evaluate(run_config, workdir)

    config = configs.load("explain_mnist", "smoke")
    result = studies.run_explain(config, workdir)
    assert list(result.maps) == ["grad_cam", "score_cam", "smoothgrad", "saliency"]
    for name, maps in result.maps.items():
        assert maps.shape == (len(result.indices), 28, 28, 1) and np.isfinite(maps).all(), name
    assert np.all(result.maps["score_cam"] >= 0) and np.any(result.maps["score_cam"] > 0)
    assert result.stats["dataset"] == "mnist"
    assert result.stats["layer_cam"]["layers"] == ["conv1", "conv2"]
    assert (result.out_dir / "layer_grad_cam.png").exists()
    assert (result.out_dir / "gallery_score_cam.png").exists()


@pytest.mark.parametrize("target", ["predicted", "label"])
def test_figures_name_the_class_each_map_explains(tmp_path, monkeypatch, target):
    """A misclassified sample's map explains the predicted class by default: the
    gallery's rows, the sign-modes title and the sheet's title name that class; the
    sheet's statistics are of the map drawn (channels summed)."""
    from fmi_jax.studies import explain as explain_study

    calls = {}
    for name in ("class_gallery", "sign_modes", "explanation_sheet", "agreement_matrices"):
        monkeypatch.setattr(
            explain_study.plotting,
            name,
            lambda *a, _name=name, **k: calls.setdefault(_name, []).append((a, k)),
        )
    config = configs.load("explain", "smoke")
    config.methods = ("integrated_gradients",)
    config.target = target
    config.figures.max_sheets = 2
    labels, preds = np.array([0, 1, 2]), np.array([1, 1, 0])
    maps = {"integrated_gradients": np.ones((3, 4, 4, 3)) * np.array([1.0, -1.0, 0.5])}
    np.savez(tmp_path / "attributions.npz", spearman_per_sample=np.ones((3, 1, 1)))
    names = ["zero", "one", "two"]
    probs = np.full((3, 3), 1 / 3)
    agreement = {"agreement": dict.fromkeys(("pearson", "spearman", "topk_overlap", "methods"), [])}
    agreement["agreement"]["topk_fraction"] = 0.1
    explain_study._figures(
        tmp_path,
        config,
        np.zeros((3, 4, 4, 3)),
        labels,
        preds,
        probs,
        maps,
        agreement,
        names,
    )
    explained = preds if target == "predicted" else labels
    ((gallery_args, gallery_kw),) = calls["class_gallery"]
    np.testing.assert_array_equal(gallery_args[2], explained)
    assert gallery_kw["method"] == f"integrated_gradients of the {target} class"
    ((_, signs_kw),) = calls["sign_modes"]
    assert (
        signs_kw["title"]
        == f"integrated_gradients: sign modes (explaining {names[explained[0]]}, true zero)"
    )
    titles = [k["title"] for _, k in calls["explanation_sheet"]]
    assert titles == [
        f"true zero, predicted one (0.33); maps explain {names[explained[0]]}",
        "true one, predicted one (0.33)",
    ]
    assert calls["explanation_sheet"][0][1]["stats"]["integrated_gradients"]["max"] == 0.5
