"""Tasks, best_mode='min' checkpoints, frozen parameters and phased runs (init_from).

Known answers: every loss, sum and report below is recomputed by hand in numpy
(float64) from small hand-made arrays; the end-to-end runs are tiny (two epochs of
four steps on synthetic data) and checked for exact parameter equality where
parameters must not move.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import configs
from fmi_jax import train
from fmi_jax.train import checkpoint, optim, tasks
from fmi_jax.train import loop as loop_lib
from fmi_jax.train.input_pipeline import eval_batches, to_float
from fmi_jax.train.metrics import classification_report

RNG = np.random.default_rng(0)


def f32(x):
    return jnp.asarray(np.asarray(x, np.float32))


def log_softmax(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------- reconstruction
IMAGES = RNG.uniform(size=(3, 2, 2, 1)).astype(np.float32)
RECON = RNG.uniform(size=(3, 2, 2, 1)).astype(np.float32)
AUX = RNG.normal(size=(3, 2, 2, 1)).astype(np.float32)
CODES = np.array([[0.0, 1.5, 0.0, 0.2], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.1]], np.float32)


def hand_mse(a, b):
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def test_reconstruction_loss_is_the_pixel_mse_without_aux():
    task = tasks.reconstruction()
    loss, metrics = task.loss(
        {"reconstruction": f32(RECON), "codes": f32(CODES)}, f32(IMAGES), jnp.zeros(3, jnp.int32)
    )
    assert float(loss) == pytest.approx(hand_mse(IMAGES, RECON), rel=1e-6)
    assert float(metrics["mse"]) == pytest.approx(hand_mse(IMAGES, RECON), rel=1e-6)
    # Nonzero codes per row: 2, 0, 2.
    assert float(metrics["active"]) == pytest.approx(4 / 3)
    assert "aux_mse" not in metrics and "dead" not in metrics


@pytest.mark.parametrize("num_dead", [0, 3])
def test_reconstruction_loss_adds_aux_k_only_when_latents_are_dead(num_dead):
    aux_coef = 0.25
    task = tasks.reconstruction(aux_coef=aux_coef)
    outputs = {
        "reconstruction": f32(RECON),
        "codes": f32(CODES),
        "aux_reconstruction": f32(AUX),
        "num_dead": jnp.asarray(num_dead, jnp.int32),
    }
    loss, metrics = task.loss(outputs, f32(IMAGES), jnp.zeros(3, jnp.int32))
    mse = hand_mse(IMAGES, RECON)
    aux = hand_mse(IMAGES.astype(np.float64) - RECON, AUX) if num_dead else 0.0
    assert float(loss) == pytest.approx(mse + aux_coef * aux, rel=1e-6)
    assert float(metrics["mse"]) == pytest.approx(mse, rel=1e-6)
    assert float(metrics["aux_mse"]) == pytest.approx(aux, rel=1e-6, abs=0.0)
    assert float(metrics["dead"]) == num_dead
    if num_dead == 0:
        assert float(loss) == float(metrics["mse"])  # exactly: the aux term is a zero


def test_aux_k_residual_is_held_fixed_in_the_gradient():
    """d loss / d reconstruction is the MSE's alone: the residual is stop_gradient'ed;
    d loss / d aux = -2 aux_coef (residual - aux) / n."""
    aux_coef = 0.5
    task = tasks.reconstruction(aux_coef=aux_coef)
    n = IMAGES.size

    def loss(recon, aux):
        outputs = {
            "reconstruction": recon,
            "codes": f32(CODES),
            "aux_reconstruction": aux,
            "num_dead": jnp.asarray(1),
        }
        return task.loss(outputs, f32(IMAGES), jnp.zeros(3, jnp.int32))[0]

    g_recon, g_aux = jax.grad(loss, argnums=(0, 1))(f32(RECON), f32(AUX))
    x, r, a = (np.asarray(v, np.float64) for v in (IMAGES, RECON, AUX))
    np.testing.assert_allclose(g_recon, -2 * (x - r) / n, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g_aux, -2 * aux_coef * ((x - r) - a) / n, rtol=1e-5, atol=1e-7)


def test_reconstruction_report_ignores_padded_rows():
    """Two evaluation batches summed as the loop sums them; the padded row (mask 0)
    fires the otherwise dead latent 2 and has a huge error: neither may count."""
    task = tasks.reconstruction()
    images_a, recon_a = IMAGES[:2], RECON[:2]
    codes_a = CODES[:2]  # rows fire {1, 3} and {}
    images_b = np.stack([IMAGES[2], np.zeros_like(IMAGES[2])])
    recon_b = np.stack([RECON[2], np.full_like(RECON[2], 100.0)])
    codes_b = np.array([CODES[2], [0.0, 0.0, 9.0, 0.0]], np.float32)  # {0, 3}; padded: {2}
    sums_a = task.eval_sums(
        {"reconstruction": f32(recon_a), "codes": f32(codes_a)},
        f32(images_a),
        jnp.zeros(2, jnp.int32),
        f32([1, 1]),
    )
    sums_b = task.eval_sums(
        {"reconstruction": f32(recon_b), "codes": f32(codes_b)},
        f32(images_b),
        jnp.zeros(2, jnp.int32),
        f32([1, 0]),
    )
    totals = jax.device_get(jax.tree.map(jnp.add, sums_a, sums_b))
    report = task.report(totals, class_names=None)

    per_example = [hand_mse(IMAGES[i], RECON[i]) for i in range(3)]
    assert report["count"] == 3
    assert report["fired"] == [1, 1, 0, 2]
    assert report["dead_fraction"] == 0.25  # latent 2 only
    assert report["mean_active"] == pytest.approx(4 / 3)  # (2 + 0 + 2) / 3
    assert report["mse"] == pytest.approx(np.mean(per_example), rel=1e-6)
    assert report["loss"] == report["mse"]
    assert set(task.record_metrics) <= set(report)


def test_reconstruction_report_of_nothing_raises():
    task = tasks.reconstruction()
    sums = task.eval_sums(
        {"reconstruction": f32(RECON), "codes": f32(CODES)},
        f32(IMAGES),
        jnp.zeros(3, jnp.int32),
        f32([0, 0, 0]),
    )
    with pytest.raises(ValueError, match="no examples"):
        task.report(jax.device_get(sums), None)


# --------------------------------------------------------------------------- classification
LOGITS = np.array(
    [[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [1.0, 3.0, 0.0], [0.0, 0.0, 5.0], [4.0, 0.0, 0.0]],
    np.float32,
)
LABELS = np.array([0, 2, 1, 0, 2], np.int32)
MASK = np.array([1, 1, 1, 1, 0], np.float32)


def test_classification_report_equals_the_hand_confusion_matrix_report():
    task = tasks.classification(label_smoothing=0.3)  # evaluation loss is unsmoothed
    sums = jax.device_get(task.eval_sums(f32(LOGITS), None, jnp.asarray(LABELS), f32(MASK)))
    # Predictions 0, 1, 1, 2 (the padded fifth row, 2 -> 0, is not counted).
    hand = np.zeros((3, 3), np.int64)
    hand[0, 0] = hand[2, 1] = hand[1, 1] = hand[0, 2] = 1
    np.testing.assert_array_equal(sums["confusion"], hand)
    hand_loss = -np.mean(log_softmax(LOGITS[:4])[np.arange(4), LABELS[:4]])
    names = ["a", "b", "c"]
    report = task.report(sums, names)
    expected = classification_report(hand, loss=hand_loss, class_names=names)
    assert report.pop("loss") == pytest.approx(expected.pop("loss"), rel=1e-6)
    assert report == expected
    assert report["accuracy"] == 0.5 and report["count"] == 4


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_classification_loss_with_label_smoothing(smoothing):
    task = tasks.classification(label_smoothing=smoothing)
    loss, metrics = task.loss(f32(LOGITS), None, jnp.asarray(LABELS))
    targets = (1 - smoothing) * np.eye(3)[LABELS] + smoothing / 3
    hand = -np.mean(np.sum(targets * log_softmax(LOGITS), axis=-1))
    assert float(loss) == pytest.approx(hand, rel=1e-6)
    # Predictions 0, 1, 1, 2, 0 against labels 0, 2, 1, 0, 2.
    assert float(metrics["accuracy"]) == pytest.approx(2 / 5)


def test_task_from_config():
    def cfg(**fields):
        return ml_collections.ConfigDict(fields)

    def smoothed_loss(task):
        return float(task.loss(f32(LOGITS), None, jnp.asarray(LABELS))[0])

    default = tasks.task_from_config(cfg())
    assert (default.name, default.best_metric, default.best_mode) == (
        "classification",
        "val_accuracy",
        "max",
    )
    # The run's label_smoothing is picked up; task_options overrides it.
    from_run = tasks.task_from_config(cfg(label_smoothing=0.2))
    assert smoothed_loss(from_run) == smoothed_loss(tasks.classification(label_smoothing=0.2))
    assert smoothed_loss(from_run) != smoothed_loss(default)
    overridden = tasks.task_from_config(
        cfg(label_smoothing=0.2, task_options={"label_smoothing": 0.05})
    )
    assert smoothed_loss(overridden) == smoothed_loss(tasks.classification(label_smoothing=0.05))

    recon = tasks.task_from_config(cfg(task="reconstruction", task_options={"aux_coef": 2.0}))
    assert (recon.name, recon.best_metric, recon.best_mode) == ("reconstruction", "val_mse", "min")
    outputs = {
        "reconstruction": f32(RECON),
        "codes": f32(CODES),
        "aux_reconstruction": f32(AUX),
        "num_dead": jnp.asarray(1),
    }
    loss, m = recon.loss(outputs, f32(IMAGES), None)
    assert float(loss) == pytest.approx(float(m["mse"]) + 2.0 * float(m["aux_mse"]), rel=1e-6)

    with pytest.raises(ValueError, match="unknown task 'segmentation'"):
        tasks.task_from_config(cfg(task="segmentation"))
    with pytest.raises(ValueError, match="does not take options"):
        tasks.task_from_config(cfg(task="reconstruction", task_options={"aux_coeff": 1.0}))
    with pytest.raises(ValueError, match="does not take options"):
        tasks.task_from_config(cfg(task="classification", task_options={"aux_coef": 1.0}))


# --------------------------------------------------------------------------- checkpoints
ARCH = {"model": {"name": "m"}, "dataset": "d", "image_shape": [2, 2, 1], "num_classes": 3}


def ckpt_tree(value):
    return {"params": {"w": jnp.full((2,), value, jnp.float32)}}


def test_best_mode_min_keeps_and_picks_the_lowest(tmp_path):
    ckpt = checkpoint.Checkpoints(tmp_path, keep=1, best_metric="val_mse", best_mode="min")
    for epoch, mse in zip(range(1, 5), [0.5, 0.2, 0.3, 0.4]):
        ckpt.save(epoch, ckpt_tree(epoch), architecture=ARCH, metrics={"val_mse": mse})
    assert ckpt.epochs() == [2, 4]  # the lowest and the latest
    assert ckpt.best_epoch() == 2
    np.testing.assert_array_equal(ckpt.restore(2, ckpt_tree(0))["params"]["w"], [2.0, 2.0])
    ckpt.close()
    # Re-opened read-only (as run_checkpoints does), the ranking is the same.
    with checkpoint.Checkpoints(
        tmp_path, read_only=True, best_metric="val_mse", best_mode="min"
    ) as again:
        assert again.best_epoch() == 2


def test_best_mode_min_breaks_ties_towards_the_latest(tmp_path):
    ckpt = checkpoint.Checkpoints(tmp_path, keep=3, best_metric="val_mse", best_mode="min")
    for epoch, mse in zip(range(1, 4), [0.3, 0.1, 0.1]):
        ckpt.save(epoch, ckpt_tree(epoch), architecture=ARCH, metrics={"val_mse": mse})
    assert ckpt.epochs() == [1, 2, 3] and ckpt.best_epoch() == 3
    ckpt.close()


def test_invalid_best_mode_raises(tmp_path):
    with pytest.raises(ValueError, match="best_mode must be 'max' or 'min'"):
        checkpoint.Checkpoints(tmp_path, best_metric="val_mse", best_mode="lowest")


# --------------------------------------------------------------------------- freeze
def toy_params():
    return {
        "enc": {"kernel": f32(RNG.normal(size=(3, 2))), "bias": f32(RNG.normal(size=(2,)))},
        "head": {"kernel": f32(RNG.normal(size=(2, 2))), "bias": f32(RNG.normal(size=(2,)))},
    }


def run_steps(tx, params, steps=3, zero_grads=False):
    state = tx.init(params)
    for i in range(steps):
        grads = jax.tree.map(
            lambda p, i=i: jnp.zeros_like(p) if zero_grads else jnp.full_like(p, i + 1.0), params
        )
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def assert_tree_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def assert_all_changed(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert not np.any(np.asarray(x) == np.asarray(y))


@pytest.mark.parametrize("zero_grads", [False, True])
def test_frozen_leaves_get_no_step_and_no_weight_decay(zero_grads):
    """With zero gradients only AdamW's weight decay moves anything: it must not move
    the frozen kernel, and must move the trainable one."""
    params = toy_params()
    tx = optim.freeze(optax.adamw(0.1, weight_decay=0.5), ("/enc/",))
    after = run_steps(tx, params, zero_grads=zero_grads)
    assert_tree_equal(after["enc"], params["enc"])
    if zero_grads:
        assert_all_changed(after["head"], params["head"])  # decay applies to bias too here
        # Hand-computed: Adam's update is 0 for zero grads, so p <- p (1 - lr wd) per step.
        np.testing.assert_allclose(
            after["head"]["kernel"], np.asarray(params["head"]["kernel"]) * 0.95**3, rtol=1e-6
        )
    else:
        assert_all_changed(after["head"], params["head"])


def test_freezing_a_leaf_path_freezes_only_that_leaf():
    params = toy_params()
    after = run_steps(optim.freeze(optax.adamw(0.1, weight_decay=0.5), ("enc/kernel",)), params)
    np.testing.assert_array_equal(after["enc"]["kernel"], params["enc"]["kernel"])
    assert_all_changed(
        {"b": after["enc"]["bias"], "h": after["head"]},
        {"b": params["enc"]["bias"], "h": params["head"]},
    )


def test_freeze_without_paths_is_the_transform_itself():
    tx = optax.adam(0.1)
    assert optim.freeze(tx, ()) is tx
    assert optim.freeze(tx, ("", "/")) is tx


@pytest.mark.parametrize("prefix", ["en", "decoder", "enc/kernel/x"])
def test_freezing_a_path_that_names_no_parameter_raises(prefix):
    tx = optim.freeze(optax.adam(0.1), (prefix,))
    with pytest.raises(
        ValueError, match=r"names no parameters; top-level modules: \['enc', 'head'\]"
    ):
        tx.init(toy_params())


def test_make_optimizer_reads_frozen_from_the_config():
    config = ml_collections.ConfigDict(
        {
            "num_epochs": 1,
            "learning_rate": 0.1,
            "optimizer": "adamw",
            "schedule": "constant",
            "weight_decay": 0.5,
            "frozen": ("head",),
        }
    )
    tx, _ = optim.make_optimizer(config, steps_per_epoch=3)
    params = toy_params()
    after = run_steps(tx, params)
    assert_tree_equal(after["head"], params["head"])
    assert_all_changed(after["enc"], params["enc"])
    config.frozen = ("heads",)
    tx, _ = optim.make_optimizer(config, steps_per_epoch=3)
    with pytest.raises(ValueError, match="heads"):
        tx.init(params)


# --------------------------------------------------------------------------- end to end
SAE = {"latents": 32, "k": 4, "image_shape": (28, 28, 1), "aux_k": 8, "dead_after_steps": 2}


def small_config(**overrides):
    """cnn_fmnist:smoke on 'synthetic': 128 train / 64 val / 64 test, 4 steps an epoch,
    evaluation in batches of 48 (so the last one is padded)."""
    config = configs.load("cnn_fmnist", "smoke")
    config.data.name = "synthetic"
    config.data.options = {"num_train": 192, "num_test": 64}
    config.data.train_limit = None
    config.data.validation_size = 64
    config.progress = False
    config.augment = {"flip": False, "crop_padding": 0, "erasing": 0.0}
    config.num_epochs = 2
    config.eval_batch_size = 48
    config.learning_rate = 5e-3
    with config.unlocked():  # task, task_options, frozen, init_from: not in cnn_fmnist
        for key, value in overrides.items():
            config[key] = value
    return config


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("autoencoder")
    config = small_config(
        task="reconstruction",
        task_options={"aux_coef": 1.0 / 32},
        model={"name": "k_sparse_autoencoder", **SAE},
    )
    result = train.train_and_evaluate(config, workdir)
    return workdir, result


def test_reconstruction_run_logs_its_metrics_and_ranks_by_lowest_val_mse(ae_run):
    workdir, result = ae_run
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        for key in (
            "train_loss",
            "train_mse",
            "train_active",
            "train_aux_mse",
            "train_dead",
            "val_loss",
            "val_mse",
            "val_dead_fraction",
            "val_mean_active",
        ):
            assert np.isfinite(r[key]), key
        assert "train_accuracy" not in r and "val_accuracy" not in r
        assert 0.0 <= r["val_dead_fraction"] <= 1.0
        assert 0.0 < r["val_mean_active"] <= SAE["k"]
        assert r["val_loss"] == r["val_mse"]
    assert records[-1]["train_mse"] < records[0]["train_mse"]

    summary = json.loads((workdir / "train_summary.json").read_text())
    best = min(records, key=lambda r: (r["val_mse"], -r["epoch"]))
    assert summary["best_epoch"] == best["epoch"] == result.best_epoch
    assert summary["best_val_mse"] == best["val_mse"]
    for key in ("test_loss", "test_mse", "test_dead_fraction", "test_mean_active"):
        assert np.isfinite(summary[key]), key
    assert "test_accuracy" not in summary

    with loop_lib.run_checkpoints(workdir) as ckpt:
        assert (ckpt.best_metric, ckpt.best_epoch()) == ("val_mse", best["epoch"])


def test_reconstruction_test_metrics_match_a_recomputation(ae_run):
    """test_mse / dead_fraction / mean_active of the summary, recomputed from the best
    checkpoint on the whole test split at once (no batching, no padding)."""
    workdir, _ = ae_run
    summary = json.loads((workdir / "train_summary.json").read_text())
    model, variables, config, epoch = train.restore_model(workdir)
    assert epoch == summary["best_epoch"]
    test = loop_lib.load_data(config.data)["test"]
    assert len(test) == 64 and len(list(eval_batches(len(test), 48))) == 2
    images = to_float(jnp.asarray(test.images))
    out = model.apply(variables, images, train=False)
    x, r = np.asarray(images, np.float64), np.asarray(out["reconstruction"], np.float64)
    codes = np.asarray(out["codes"])
    assert summary["test_mse"] == pytest.approx(np.mean((x - r) ** 2), rel=1e-5)
    assert summary["test_dead_fraction"] == np.mean(~np.any(codes != 0, axis=0))
    assert summary["test_mean_active"] == pytest.approx(np.mean(np.sum(codes != 0, axis=1)))


def test_evaluate_workdir_reports_an_autoencoder_with_its_task(ae_run):
    workdir, _ = ae_run
    summary = json.loads((workdir / "train_summary.json").read_text())
    result = train.evaluate_workdir(workdir, splits=("test",), batch_size=48)
    test = result["splits"]["test"]
    assert test["mse"] == pytest.approx(summary["test_mse"], rel=1e-6)
    assert test["dead_fraction"] == summary["test_dead_fraction"]
    table = (workdir / "metrics.md").read_text()
    assert table.startswith("| Split | loss | mse | dead_fraction | mean_active |")
    assert not (workdir / "confusion_matrix.png").exists()


def classifier_config(ae_workdir, **overrides):
    fields = dict(
        model={"name": "sae_classifier", "hidden": (16,), "dropout": 0.0, **SAE},
        frozen=("autoencoder",),
        init_from={"workdir": str(ae_workdir), "into": "autoencoder"},
    )
    fields.update(overrides)
    return small_config(**fields)


def test_classifier_on_frozen_codes_starts_from_the_autoencoder(ae_run, tmp_path):
    ae_workdir, _ = ae_run
    _, ae_vars, _, _ = train.restore_model(ae_workdir)  # the best checkpoint (lowest val_mse)
    config = classifier_config(ae_workdir)
    assert config.weight_decay > 0  # AdamW decay would move the autoencoder were it not frozen
    result = train.train_and_evaluate(config, tmp_path)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert "val_accuracy" in result.history[-1]

    final = jax.device_get(result.state)
    assert_tree_equal(final.params["autoencoder"], ae_vars["params"])
    assert_tree_equal(final.batch_stats["autoencoder"], ae_vars["batch_stats"])
    # Every checkpoint of the run holds the autoencoder unchanged; the classifier moves.
    _, epoch1, _, _ = train.restore_model(tmp_path, checkpoint="1")
    _, epoch2, _, _ = train.restore_model(tmp_path, checkpoint="2")
    for variables in (epoch1, epoch2):
        assert_tree_equal(variables["params"]["autoencoder"], ae_vars["params"])
    assert_tree_equal(epoch2["params"]["classifier"], final.params["classifier"])
    # (Not every entry: fc1 rows of latents that never fire get no gradient.)
    for x, y in zip(
        jax.tree.leaves(epoch1["params"]["classifier"]),
        jax.tree.leaves(epoch2["params"]["classifier"]),
    ):
        assert np.any(np.asarray(x) != np.asarray(y))


def test_init_from_a_run_without_checkpoints_raises(ae_run, tmp_path):
    ae_workdir, _ = ae_run
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError):
        train.train_and_evaluate(classifier_config(empty), tmp_path / "a")
    # A workdir with the run's config but no checkpoint yet.
    (empty / "config.json").write_text((ae_workdir / "config.json").read_text())
    with pytest.raises(FileNotFoundError):
        train.train_and_evaluate(classifier_config(empty), tmp_path / "b")
    (empty / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        train.train_and_evaluate(classifier_config(empty), tmp_path / "c")


def test_init_from_into_a_missing_submodule_raises(ae_run, tmp_path):
    ae_workdir, _ = ae_run
    config = classifier_config(
        ae_workdir, init_from={"workdir": str(ae_workdir), "into": "encoder"}
    )
    with pytest.raises(
        ValueError, match=r"no 'encoder' here; found \['autoencoder', 'classifier'\]"
    ):
        train.train_and_evaluate(config, tmp_path)
