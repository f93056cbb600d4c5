"""A restored model computes in float32 unless the caller asks otherwise.

Runs trained with dtype='auto' compute in bfloat16 on GPUs and TPUs; evaluation,
explanation, the attribution metrics and the benchmark all restore through
`restore_model`, so its default decides whether attributions run in bfloat16. The
checks read the traced computation itself: a jaxpr prints bfloat16 values as `bf16`.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import pytest

from fmi_jax import attribution
from fmi_jax.train import evaluate as evaluate_lib
from fmi_jax.train import loop as loop_lib


def _run_with_dtype(synthetic_run, tmp_path, dtype):
    """A copy of the synthetic run whose config says it was trained with `dtype`
    (the parameters are float32 whatever the compute dtype, so its checkpoints fit)."""
    workdir = tmp_path / "run"
    shutil.copytree(synthetic_run, workdir)
    config = json.loads((workdir / "config.json").read_text())
    config["model"]["dtype"] = dtype
    (workdir / "config.json").write_text(json.dumps(config))
    return workdir


def _jaxpr(fn, *args) -> str:
    return str(jax.make_jaxpr(fn)(*args))


@pytest.fixture
def bfloat16_run(synthetic_run, tmp_path):
    return _run_with_dtype(synthetic_run, tmp_path, "bfloat16")


def test_restored_model_and_its_attributions_compute_in_float32(bfloat16_run):
    model, variables, config, _ = evaluate_lib.restore_model(bfloat16_run)
    assert config.model.dtype == "bfloat16" and jnp.dtype(model.dtype) == jnp.float32
    x = jnp.zeros((2, 28, 28, 1))
    fn = lambda images: model.apply(variables, images)
    assert "bf16" not in _jaxpr(fn, x)
    for method, options in (("integrated_gradients", {}), ("grad_cam", {"layer": "conv2"})):
        explain = attribution.explainer(method, fn, model=model, variables=variables, **options)
        call = lambda images, explain=explain: explain(images, jnp.array([0, 1]), None)
        traced = _jaxpr(call, x)
        assert "bf16" not in traced, method


def test_the_runs_own_dtype_on_request(bfloat16_run):
    model, variables, _, _ = evaluate_lib.restore_model(bfloat16_run, dtype=None)
    assert jnp.dtype(model.dtype) == jnp.bfloat16
    assert "bf16" in _jaxpr(lambda x: model.apply(variables, x), jnp.zeros((1, 28, 28, 1)))


def test_auto_is_bfloat16_on_an_accelerator_but_restored_in_float32(
    synthetic_run, tmp_path, monkeypatch
):
    workdir = _run_with_dtype(synthetic_run, tmp_path, "auto")
    monkeypatch.setattr(loop_lib.jax, "default_backend", lambda: "gpu")
    assert loop_lib.compute_dtype("auto") == "bfloat16"  # what training on a GPU uses
    model, _, _, _ = evaluate_lib.restore_model(workdir)
    assert jnp.dtype(model.dtype) == jnp.float32
    own, _, _, _ = evaluate_lib.restore_model(workdir, dtype=None)
    assert jnp.dtype(own.dtype) == jnp.bfloat16


def test_models_without_a_compute_dtype_are_left_alone():
    model = loop_lib.model_from_config({"name": "k_sparse_autoencoder"}, dtype="bfloat16")
    assert "dtype" not in model.__dataclass_fields__
    resnet = loop_lib.model_from_config({"name": "resnet", "dtype": "auto"}, dtype="float32")
    assert jnp.dtype(resnet.dtype) == jnp.float32
