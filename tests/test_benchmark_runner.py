"""The benchmark's fmi_jax side without torch: its config builds every method, and
the agreement and table helpers of fmi_jax/benchmark/runner.py behave.

The PyTorch side (fmi_jax/benchmark/torch_side.py) is never imported here; it runs
only in the bench venv (`make bench`).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs
from fmi_jax import data, models
from fmi_jax.benchmark import runner


@pytest.mark.slow
def test_every_benchmark_method_builds_and_traces_with_its_options():
    """Option names, the CAM layer, the occlusion window and the patches all fit the
    benchmark's model: each method traces (jax.eval_shape, no compute) to maps shaped
    like the input on a batch of two (`:smoke` changes only step counts and sizes); the
    metric rows (infidelity, max_sensitivity) trace to one value per image."""
    config = configs.load("benchmark")
    model = models.get_model(config.model_name)
    shape = data.DATASETS[config.data_name].image_shape
    variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)))
    fn = lambda x: model.apply(variables, x)
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.int32)
    assert set(runner.METRICS) <= set(config.methods)
    for name in config.methods:
        call = runner._jax_call(name, fn, dict(config.options.get(name, {})), model, variables)
        if name in runner.METRICS:
            args = (x, t, x) if name == "infidelity" else (x, t)
            assert jax.eval_shape(call, *args).shape == (2,), name
            continue
        out = jax.eval_shape(call, x, t)
        assert out.shape == x.shape, name
    assert "torch" not in sys.modules


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
            )
        ],
    }
    table = runner.markdown(results)
    assert "grad-cam 1.5.7" in table
    assert "| saliency | Captum Saliency | 64 | 1.0000 | 2.0000 | 2.00x | 1.00 | 2.6e-07 |" in table
    assert "n/a (random path points)" in table
    assert "Pearson min 0.9936, median 0.9993 (per image, 64 images)" in table
    assert "1.5e-06 (2 images)" in table
    assert "occlusion: stride=2, window=4x4" in table
    assert (
        "3.0e-06 (same noise; means fmi_jax 0.0125, Captum 0.0125, Captum own noise 0.0131)"
        in table
    )
    assert "infidelity: attribution_options={abs=False}, stdev=0.003" in table


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
    ours = runner._jax_metric("infidelity", fn, opts)(jnp.asarray(x), t, a)
    diffs = fn(jnp.asarray(x))[jnp.arange(3), t][:, None] - jax.vmap(
        lambda xi, ni, ti: fn(xi - ni)[:, ti]
    )(jnp.asarray(x)[:, None], jnp.asarray(noise), t)
    dots = jnp.sum(jnp.asarray(noise) * a[:, None], axis=(2, 3, 4))
    np.testing.assert_allclose(ours, jnp.mean((dots - diffs) ** 2, axis=1), rtol=1e-4)
    noisy = runner._metric_noise("max_sensitivity", {"radius": 0.02, "samples": 5}, x)
    delta = noisy.reshape(3, 5, 4, 4, 1) - x[:, None]
    assert noisy.shape == (15, 4, 4, 1) and 0 < np.abs(delta).max() <= 0.02
