"""Methods by name: same answers as the direct calls, and clear errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax import attribution as A

W = jnp.array([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]])
fn = lambda x: jnp.tanh(x) @ W
X = jnp.array([[0.3, -0.2, 0.9], [1.0, 0.5, -0.4]])
T = jnp.array([0, 1])
KEY = jax.random.key(0)
signed_saliency = functools.partial(A.saliency, fn, abs=False)
ig8 = functools.partial(A.integrated_gradients, fn, steps=8)

CASES = [
    ("saliency", {}, lambda: A.saliency(fn, X, T)),
    ("input_x_gradient", {}, lambda: A.input_x_gradient(fn, X, T)),
    ("integrated_gradients", {"steps": 8}, lambda: ig8(X, T)),
    ("deeplift", {}, lambda: A.deeplift(fn, X, T)),
    ("smoothgrad", {"samples": 4}, lambda: A.smoothgrad(fn, X, T, KEY, samples=4)),
    (
        "smoothgrad",
        {"samples": 4, "abs": True},
        lambda: A.smoothgrad(fn, X, T, KEY, samples=4, abs=True),
    ),
    (
        "vargrad",
        {"samples": 4},
        lambda: A.noise_tunnel(signed_saliency, X, T, KEY, samples=4, kind="vargrad"),
    ),
    (
        "ig_smoothgrad",
        {"samples": 4, "steps": 8},
        lambda: A.noise_tunnel(ig8, X, T, KEY, samples=4),
    ),
    (
        "gradient_shap",
        {"samples": 4, "baselines": jnp.zeros((1, 3))},
        lambda: A.gradient_shap(fn, X, T, jnp.zeros((1, 3)), KEY, samples=4),
    ),
]


@pytest.mark.parametrize(
    "name,options,direct", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_named_method_equals_the_direct_call(name, options, direct):
    explain = A.explainer(name, fn, **options)
    np.testing.assert_allclose(explain(X, T, KEY), direct(), rtol=1e-5, atol=1e-6)


def test_every_method_runs_on_images_with_the_same_signature():
    images = jax.random.uniform(jax.random.key(1), (2, 6, 6, 1))
    w = jax.random.normal(jax.random.key(2), (36, 3))
    image_fn = lambda x: jnp.tanh(x.reshape(x.shape[0], -1)) @ w
    for name in A.available_methods():
        spec = A.METHODS[name]
        if spec.needs_model:
            continue  # the CAM family: tests/attribution/test_cam.py
        options = {"samples": 2} if spec.stochastic and "samples" in spec.options else {}
        if name in ("integrated_gradients", "ig_smoothgrad"):
            options["steps"] = 4
        if name == "occlusion":
            options["window"] = (3, 3)
        maps = A.explainer(name, image_fn, **options)(images, jnp.array([0, 2]), KEY)
        assert maps.shape == images.shape and bool(jnp.isfinite(maps).all()), name


def test_unknown_method_and_option_are_named():
    with pytest.raises(ValueError, match="unknown attribution method 'gradcam'.*saliency"):
        A.explainer("gradcam", fn)
    with pytest.raises(
        ValueError, match="integrated_gradients does not take stpes; it takes: .*steps"
    ):
        A.explainer("integrated_gradients", fn, stpes=300)
