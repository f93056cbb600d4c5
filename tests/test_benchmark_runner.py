"""The benchmark's fmi_jax side without torch: its config builds every method, and
the agreement and table helpers of fmi_jax/benchmark/runner.py behave.

The PyTorch side (fmi_jax/benchmark/torch_side.py) is never imported here; it runs
only in the bench venv (`make bench`).
"""

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs
from fmi_jax import data, models
from fmi_jax.benchmark import runner
from tests import testdata


def test_every_benchmark_method_builds_and_traces_with_its_options(monkeypatch):
    """Option names, the CAM layer, the occlusion window and the patches all fit the
    benchmark's model: each method traces (jax.eval_shape, no compute) to maps shaped
    like the input on a batch of two (`:smoke` changes only step counts and sizes); the
    metric rows (infidelity, max_sensitivity) trace to one value per image, without
    torch."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    config = configs.load("benchmark")
    model = models.get_model(config.model_name)
    shape = data.DATASETS[config.data_name].image_shape
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.int32)
    # The variables are traced too (an argument of the traced function): nothing is
    # initialised or compiled.
    variables = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    )

    def traced(name, variables, *args):
        fn = lambda x: model.apply(variables, x)
        call = runner.jax_method_call(
            name, fn, dict(config.options.get(name, {})), model, variables
        )
        return call(*args)

    assert set(runner.METRICS) <= set(config.methods)
    for name in config.methods:
        if name in runner.METRICS:
            args = (x, t, x) if name == "infidelity" else (x, t)
            out = jax.eval_shape(functools.partial(traced, name), variables, *args)
            assert out.shape == (2,), name
            continue
        out = jax.eval_shape(functools.partial(traced, name), variables, x, t)
        assert out.shape == x.shape, name


def test_per_image_pearson_ignores_scale_and_handles_constant_maps():
    rng = np.random.default_rng(0)
    a = rng.random((3, 8, 8, 1))
    b = 5.0 * a + 2.0  # min-max scaling (as pytorch_grad_cam does) changes nothing
    b[1] = rng.random((8, 8, 1))
    a[2] = 0.0
    b[2] = 0.0  # both constant: agree
    r = runner._per_image_pearson(a, b)
    assert r[0] == pytest.approx(1.0)
    assert abs(r[1]) < 0.5
    assert r[2] == 1.0
    a[2, 0, 0] = 1.0  # one constant, one not: disagree
    assert runner._per_image_pearson(a, b)[2] == 0.0


def test_markdown_names_references_agreement_kinds_and_options():
    results = {
        "machine": {
            "cpu": "CPU",
            "cores": 2,
            "jax": "0",
            "jax_backend": "cpu",
            "torch": "2",
            "torch_threads": 2,
            "captum": "0.9",
            "grad_cam": "1.5.7",
        },
        "model": "m",
        "images": "i",
        "agreement": {
            "saliency": {"relative_l2_error": 2.6e-7},
            "gradient_shap": "stochastic (random path points); not compared",
            "score_cam": {"min_pearson": 0.9936, "median_pearson": 0.9993, "images": 64},
            "feature_permutation": {"relative_l2_error": 1.5e-6, "images": 2},
            "infidelity": {
                "relative_l2_error": 3.0e-6,
                "fmi_jax_mean": 0.0125,
                "captum_mean_replayed_noise": 0.0125,
                "captum_mean_own_noise": 0.0131,
                "images": 64,
            },
            "train_epoch": {
                "steps": 5,
                "update_relative_l2_error": 8.6e-4,
                "update_rounding_relative_l2": {"fmi_jax": 1.1e-3, "pytorch": 2.1e-5},
                "loss_max_relative_diff": 3.2e-4,
            },
        },
        "rows": [
            {
                "method": name,
                "reference": ref,
                "batch": 64,
                "fmi_jax_s": 1.0,
                "pytorch_s": 2.0,
                "speedup": 2.0,
                "fmi_jax_compile_s": 1.0,
                "options": opts,
            }
            for name, ref, opts in (
                ("saliency", "Captum Saliency", {}),
                ("gradient_shap", "Captum GradientShap", {"samples": 25}),
                ("score_cam", "grad-cam ScoreCAM", {"layer": "conv3"}),
                ("feature_permutation", "Captum FeaturePermutation", {"patch": 4}),
                ("occlusion", "Captum Occlusion", {"window": (4, 4), "stride": 2}),
                (
                    "infidelity",
                    "Captum metrics.infidelity",
                    {"attribution_options": {"abs": False}, "stdev": 0.003},
                ),
                ("train_epoch", "PyTorch training loop", {}),
            )
        ],
    }
    table = runner.markdown(results)
    assert "grad-cam 1.5.7" in table
    # images/s: 64 images in 1 s and in 2 s
    assert "| saliency | Captum Saliency | 64 | 64 | 32 | 2.00x | n/a | 1.00 | 2.6e-07 |" in table
    assert "n/a (random path points)" in table
    assert "Pearson min 0.9936, median 0.9993 (per image, 64 images)" in table
    assert "1.5e-06 (2 images)" in table
    assert (
        "updates 8.6e-04 (float32 rounding alone: 1.1e-03), losses 3.2e-04 "
        "(after 5 steps from the same weights)" in table
    )
    assert "occlusion: stride=2, window=4x4" in table
    assert (
        "3.0e-06 (same noise; means fmi_jax 0.0125, Captum 0.0125, Captum own noise 0.0131)"
        in table
    )
    assert "infidelity: attribution_options={abs=False}, stdev=0.003" in table
    # A row timed although its method disagrees (allow_disagreement) meets no goal,
    # and the arithmetic both sides ran is named.
    results["machine"]["precision"] = "float32: JAX matmul precision 'highest', torch TF32 off"
    results["rows"][0]["goal"] = {"target": 1.0, "met": False, "agreement_failed": True}
    results["rows"][1]["goal"] = {"target": 1.0, "met": True}
    table = runner.markdown(results)
    assert "| 2.00x (>= 1x: **not met: disagrees with its reference**) |" in table
    assert "| 2.00x (>= 1x: met) |" in table
    assert "captum 0.9, grad-cam 1.5.7; float32: JAX matmul precision 'highest'" in table


def test_metric_noise_replays_what_the_metrics_draw():
    """The perturbations handed to Captum in the agreement check are the ones fmi_jax's
    metrics use: replaying them through a perturb callable (infidelity) reproduces the
    metric exactly; the perturbed inputs of max_sensitivity lie within the radius."""

    rng = np.random.default_rng(0)
    x = rng.random((3, 4, 4, 1)).astype(np.float32)
    w = rng.standard_normal((16, 2)).astype(np.float32)
    fn = lambda v: jnp.tanh(v.reshape(v.shape[0], -1) @ w)
    t = jnp.asarray([0, 1, 0])
    a = jnp.asarray(rng.standard_normal(x.shape).astype(np.float32))
    opts = {"stdev": 0.01, "samples": 5}
    noise = runner._metric_noise("infidelity", opts, x).reshape(3, 5, 4, 4, 1)
    ours = runner.jax_metric_call("infidelity", fn, opts)(jnp.asarray(x), t, a)

    @jax.jit  # the replay, one compiled program
    def replayed(x, noise, t, a):
        diffs = fn(x)[jnp.arange(3), t][:, None] - jax.vmap(lambda xi, ni, ti: fn(xi - ni)[:, ti])(
            x[:, None], noise, t
        )
        dots = jnp.sum(noise * a[:, None], axis=(2, 3, 4))
        return jnp.mean((dots - diffs) ** 2, axis=1)

    np.testing.assert_allclose(ours, replayed(jnp.asarray(x), jnp.asarray(noise), t, a), rtol=1e-4)
    noisy = runner._metric_noise("max_sensitivity", {"radius": 0.02, "samples": 5}, x)
    delta = noisy.reshape(3, 5, 4, 4, 1) - x[:, None]
    assert noisy.shape == (15, 4, 4, 1) and 0 < np.abs(delta).max() <= 0.02


def test_goals_follow_the_issue_by_machine_and_batch():
    """GPU: 5x for IG and SmoothGrad at batch 256, 2x otherwise; CPU: parity."""
    gpu, cpu = {"jax_backend": "gpu"}, {"jax_backend": "cpu"}
    row = lambda name, batch, speedup: {"method": name, "batch": batch, "speedup": speedup}
    assert runner.goal(row("integrated_gradients", 256, 4.9), gpu) == {"target": 5.0, "met": False}
    assert runner.goal(row("smoothgrad", 256, 5.0), gpu)["met"]
    assert runner.goal(row("smoothgrad", 64, 2.1), gpu) == {"target": 2.0, "met": True}
    assert runner.goal(row("grad_cam", 256, 1.9), gpu) == {"target": 2.0, "met": False}
    assert runner.goal(row("grad_cam", 256, 0.99), cpu) == {"target": 1.0, "met": False}
    assert runner.goal(row("integrated_gradients", 256, 1.0), cpu)["met"]


def test_markdown_shows_goals_memory_and_the_memory_scaling_table():
    mib = 2**20
    results = {
        "machine": {
            "cpu": "C",
            "cores": 2,
            "jax": "0",
            "jax_backend": "cpu",
            "torch": "2",
            "torch_threads": 2,
            "captum": "0.9",
        },
        "model": "m",
        "images": "i",
        "agreement": {"saliency": {"relative_l2_error": 1e-7}},
        "rows": [
            {
                "method": "saliency",
                "reference": "Captum Saliency",
                "batch": 256,
                "fmi_jax_s": 2.0,
                "pytorch_s": 1.0,
                "speedup": 0.5,
                "fmi_jax_compile_s": 1.0,
                "options": {},
                "goal": {"target": 1.0, "met": False},
                "fmi_jax_xla_memory": {"total_bytes": 3 * mib},
                "memory_probe": {
                    "fmi_jax": {"rss_increase_bytes": 5 * mib},
                    "pytorch": {"rss_increase_bytes": 7 * mib},
                },
            }
        ],
        "memory_scaling": {
            "method": "integrated_gradients",
            "images": 256,
            "rows": [
                {"steps": 1000, "batch_size": None, "total_bytes": 100 * mib, "temp_bytes": mib},
                {"steps": 1000, "batch_size": 256, "total_bytes": 2 * mib, "temp_bytes": mib},
            ],
            "run": {
                "steps": 1000,
                "batch_size": 256,
                "seconds_with_compile": 12.0,
                "rss_increase_bytes": 4 * mib,
                "finite": True,
            },
        },
    }
    table = runner.markdown(results)
    assert "| 0.50x (>= 1x: **missed**) |" in table
    assert "| saliency | 256 | 3.0 | 5.0 | 7.0 | n/a | n/a |" in table
    assert "| 1000 | all at once | 100.0 | 1.0 |" in table
    assert "| 1000 | 256 | 2.0 | 1.0 |" in table
    assert "1000 steps, batch_size 256: 12.0 s" in table


@pytest.mark.slow
def test_xla_memory_of_integrated_gradients_is_set_by_batch_size_not_steps():
    """The memory claim of the benchmark's memory_scaling, as a test: with `batch_size`
    fixed, XLA's planned device memory for IG does not grow from 100 to 1000 steps; it
    grows with batch_size, and without chunking it grows with steps (compile only)."""
    model = models.get_model("cnn_fmnist", features=(4, 8, 8), dense=(16,))
    variables = testdata.init(model, jnp.zeros((1, 28, 28, 1)))
    fn = lambda x: model.apply(variables, x)
    x = jax.ShapeDtypeStruct((16, 28, 28, 1), jnp.float32)
    t = jax.ShapeDtypeStruct((16,), jnp.int32)

    def planned(steps, batch_size):
        from fmi_jax import attribution

        explain = attribution.explainer(
            "integrated_gradients", fn, steps=steps, batch_size=batch_size
        )
        return runner.xla_memory(lambda x, t: explain(x, t, jax.random.key(0)), x, t)

    small, many = planned(100, 64), planned(1000, 64)
    assert many["total_bytes"] <= 1.05 * small["total_bytes"]
    assert planned(1000, 512)["temp_bytes"] > 4 * many["temp_bytes"]
    assert planned(200, None)["temp_bytes"] > 1.8 * planned(100, None)["temp_bytes"]


def test_peak_rss_sees_an_allocation_inside_the_block():
    with runner.PeakRSS(interval_s=0.001) as rss:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        block[::512] = 2.0
        import time

        time.sleep(0.05)
        del block
    if rss.start is None:
        pytest.skip("no /proc/self/statm on this system")
    assert rss.increase >= 48 * 2**20


def test_memory_probe_refuses_an_unknown_side():
    from fmi_jax.benchmark import memory_probe

    spec = {
        "side": "tensorflow",
        "method": "saliency",
        "batch": 2,
        "config": {"model_name": "cnn_fmnist", "data_name": "synthetic"},
    }
    with pytest.raises(ValueError, match="side must be 'fmi_jax' or 'pytorch'"):
        memory_probe.probe(spec)


def test_profile_names_the_ops_that_take_the_time(tmp_path):
    """--config.profile: a trace is written and its summary attributes XLA op time to
    the JAX operations it came from (here a matmul dominates a cheap elementwise op)."""
    a = jnp.ones((512, 512))
    call = jax.jit(lambda a, b: jnp.tanh(a @ b @ a @ b))
    call(a, a).block_until_ready()
    out = runner._profile(call, (a, a), tmp_path / "trace")
    assert list((tmp_path / "trace").rglob("*.trace.json.gz"))
    ops = out["top_ops"]
    assert ops and abs(sum(o["share"] for o in ops) - 1.0) < 0.05
    assert "dot_general" in ops[0]["from"]


@pytest.mark.parametrize(
    "env, leaves_room",
    [
        ({}, False),
        ({"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}, True),
        ({"XLA_PYTHON_CLIENT_MEM_FRACTION": ".4"}, True),
        ({"XLA_PYTHON_CLIENT_MEM_FRACTION": ".9"}, False),
        ({"XLA_PYTHON_CLIENT_ALLOCATOR": "platform"}, True),
        ({"XLA_CLIENT_MEM_FRACTION": ".3"}, True),
        ({"XLA_CLIENT_MEM_FRACTION": ".9", "XLA_PYTHON_CLIENT_MEM_FRACTION": ".3"}, False),
        ({"XLA_PYTHON_CLIENT_PREALLOCATE": "FALSE"}, False),
    ],
)
def test_gpu_room_for_pytorch_reads_jax_allocator_settings(monkeypatch, env, leaves_room):
    for name in (
        "XLA_PYTHON_CLIENT_PREALLOCATE",
        "XLA_PYTHON_CLIENT_MEM_FRACTION",
        "XLA_PYTHON_CLIENT_ALLOCATOR",
        "XLA_CLIENT_MEM_FRACTION",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert runner.jax_leaves_gpu_room() is leaves_room


def test_benchmark_script_turns_preallocation_off_before_jax_starts():
    source = (Path(__file__).resolve().parents[1] / "experiments" / "benchmark.py").read_text()
    assert source.index('setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")') < source.index(
        "from fmi_jax"
    )


# --------------------------------------------------------------------------- run folder
def _bench_config(**changes):
    config = configs.load("benchmark", "smoke")
    with config.unlocked():
        for field, value in changes.items():
            parent = config
            *path, leaf = field.split(".")
            for part in path:
                parent = parent[part]
            parent[leaf] = value
    return config


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("methods", ("saliency", "xrai"), r"config.methods: no PyTorch reference for \['xrai'\]"),
        ("methods", (), "config.methods: empty"),
        ("batch_sizes", (64, 0), r"config.batch_sizes must be integers >= 1, got \(64, 0\)"),
        ("repeats", 0, "config.repeats must be an integer >= 1, got 0"),
        ("tolerance", 0.0, "config.tolerance must be a number > 0"),
        ("data_name", "mnisst", "config.data_name: unknown dataset 'mnisst'"),
        ("model_name", "nosuchnet", "config.model_name: unknown model 'nosuchnet'"),
        ("model_workdir", "/nonexistent/run", "holds no checkpoints; train it first"),
        ("train.repeats", 0, "config.train.repeats must be an integer >= 1"),
        ("train.limit", -5, "config.train.limit must be an integer >= 1, got -5"),
    ],
)
def test_a_bad_benchmark_config_is_refused_in_one_line_naming_the_field(
    tmp_path, monkeypatch, field, value, message
):
    monkeypatch.setitem(sys.modules, "torch", None)  # refused before torch is imported
    config = _bench_config(**{field: value})
    train_config = configs.load("cnn_fmnist", "smoke")
    with pytest.raises(ValueError, match=message) as info:
        runner.run_benchmark(config, tmp_path / "bench", train_config=train_config)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "bench").exists()  # refused before anything is written


def test_a_bad_training_row_config_is_refused_before_the_folder_is_claimed(tmp_path):
    train_config = configs.load("cnn_fmnist", "smoke")
    with train_config.unlocked():
        train_config.batch_size = -32
    with pytest.raises(ValueError, match="config.batch_size must be an integer >= 1"):
        runner.run_benchmark(_bench_config(), tmp_path / "bench", train_config=train_config)
    assert not (tmp_path / "bench").exists()


def test_the_benchmark_folder_is_claimed_and_never_loses_a_measurement(tmp_path):
    from fmi_jax import runs

    workdir = tmp_path / "bench"
    config, train_config = _bench_config(), configs.load("cnn_fmnist", "smoke")
    assert runner.claim_workdir(config, workdir, train_config) is None
    assert runs.read_json(workdir / "config.json") == runs.plain(config)
    assert runs.read_json(workdir / "train_config.json") == runs.plain(train_config)

    first = {"started": "2026-01-02T03:04:05+00:00", "rows": [{"method": "saliency"}]}
    runs.write_json_atomic(workdir / "benchmark.json", first)
    (workdir / "benchmark.md").write_text("| the table |\n")
    # The same config measures again; the earlier results move aside, unchanged.
    kept = runner.claim_workdir(config, workdir, train_config)
    assert kept == workdir / "previous" / "2026-01-02T030405+0000"
    assert runs.read_json(kept / "benchmark.json") == first
    assert (kept / "benchmark.md").read_text() == "| the table |\n"
    assert not (workdir / "benchmark.json").exists()

    # With results present, another config is refused, naming the field; nothing moves.
    runs.write_json_atomic(workdir / "benchmark.json", first)
    with pytest.raises(runs.RunConfigError, match=r"repeats: 1 -> 3.*another --workdir"):
        runner.claim_workdir(_bench_config(repeats=3), workdir, train_config)
    changed = configs.load("cnn_fmnist", "smoke")
    with changed.unlocked():
        changed.seed = 7
    with pytest.raises(runs.RunConfigError, match="another training config.*seed: 0 -> 7"):
        runner.claim_workdir(config, workdir, changed)
    assert runs.read_json(workdir / "benchmark.json") == first
    assert runs.read_json(workdir / "config.json") == runs.plain(config)
    # Training settings that cannot change a measurement may change (or be absent from
    # a record written before they existed).
    quiet = configs.load("cnn_fmnist", "smoke")
    quiet.progress, quiet.tensorboard = False, False
    runner.claim_workdir(config, workdir, quiet)
    older = runs.plain(train_config)
    del older["tensorboard"]
    runs.write_json_atomic(workdir / "train_config.json", older)
    runs.write_json_atomic(workdir / "benchmark.json", first)
    runner.claim_workdir(config, workdir, train_config)
    # Settings that change no measured number may differ.
    runner.claim_workdir(_bench_config(profile=True, memory_probe=False), workdir, train_config)
    assert runs.read_json(workdir / "config.json")["profile"] is True


def test_dither_separates_every_tie_by_far_more_than_float32_rounding():
    images = np.zeros((2, 28, 28, 1), np.float32)  # a uniform background: all ties
    images[:, 10:20, 10:20] = 1.0
    out = runner.dither(images, 1 / 768)
    assert out.dtype == np.float32
    assert np.array_equal(out, runner.dither(images, 1 / 768))  # fixed seed
    noise = out - images
    assert noise.min() >= 0.0 and noise.max() < 1 / 768
    windows = out.reshape(2, 14, 2, 14, 2).transpose(0, 1, 3, 2, 4).reshape(2, 14, 14, 4)
    top2 = np.sort(windows, axis=-1)[..., -2:]
    # the largest two of each 2x2 max-pool window differ by far more than an ulp of 1
    assert (top2[..., 1] - top2[..., 0]).min() > 1e-7
    assert runner.dither(images, 0.0) is images


# --------------------------------------------------------------------------- FLOPs
def test_flop_count_of_matmuls_convolutions_and_loops_is_exact():
    from jax import lax

    from fmi_jax.benchmark import flops

    a, b = jnp.ones((10, 16, 32)), jnp.ones((32, 8))
    assert flops.count(lambda a: a @ b, a) == flops.Count(2.0 * 10 * 16 * 32 * 8)
    # a scan's body counts `length` times (XLA's cost analysis counts it once)
    assert flops.count(lambda a: lax.map(lambda m: m @ b, a), a).flops == 2.0 * 10 * 16 * 32 * 8
    x, w = jnp.ones((4, 9, 9, 3)), jnp.ones((3, 3, 3, 5))
    nhwc = ("NHWC", "HWIO", "NHWC")
    conv = lambda x: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=nhwc)
    forward = 2.0 * 4 * 9 * 9 * 5 * (3 * 3 * 3)
    assert flops.count(conv, x).flops == forward
    grouped = jnp.ones((3, 3, 1, 3))  # depthwise: one input feature per output
    depthwise = lambda x: lax.conv_general_dilated(
        x, grouped, (1, 1), "SAME", dimension_numbers=nhwc, feature_group_count=3
    )
    assert flops.count(depthwise, x).flops == 2.0 * 4 * 9 * 9 * 3 * 9
    # the input gradient is the transposed convolution: as many FLOPs again; what
    # the gradient does not use (a linear loss needs no forward pass) is not counted
    assert flops.count(jax.grad(lambda x: jnp.sin(conv(x)).sum()), x).flops == 2 * forward
    assert flops.count(jax.grad(lambda x: conv(x).sum()), x).flops == forward
    # a while loop of unknown length: its body once, flagged
    loop = flops.count(
        lambda m: lax.while_loop(lambda c: c.sum() < 0, lambda c: c @ b @ b.T, m), a[0]
    )
    assert loop.flops == 2 * 2.0 * 16 * 32 * 8 and not loop.exact


def test_peak_columns_and_the_table_show_the_fraction_of_the_matmul_rate():
    from fmi_jax.benchmark import flops

    cols = runner.peak_columns(flops.Count(4e9), 0.5, 100e9)
    assert cols["fmi_jax_flops_per_s"] == 8e9 and cols["peak_fraction"] == pytest.approx(0.08)
    assert runner._peak_text(cols) == "8 (8%)"
    assert runner._peak_text(runner.peak_columns(flops.Count(4e9, False), 0.5, 100e9)).endswith("*")
    assert flops.matmul_peak(size=64, repeats=2) > 0


def test_a_training_step_costs_about_three_forward_passes():
    from fmi_jax.benchmark import flops, training

    config = configs.load("cnn_fmnist", "smoke")
    images = np.zeros((4 * config.batch_size, 28, 28, 1), np.uint8)
    trainer = training.JaxTrainer(config, images, np.zeros(len(images), np.int32))
    step = trainer.step_flops()
    x = jnp.zeros((config.batch_size, 28, 28, 1))
    forward = flops.count(lambda x: trainer.model.apply(trainer.initial_variables, x), x).flops
    # forward + weight gradient + input gradient (none for the first layer's input)
    assert step.exact and 2.5 * forward < step.flops <= 3.0 * forward
    assert trainer.compiles == 0  # counting traces, it compiles nothing
