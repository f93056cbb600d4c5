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

# (name, options, the direct call on (x, target, key))
CASES = [
    ("saliency", {}, lambda x, t, key: A.saliency(fn, x, t)),
    ("input_x_gradient", {}, lambda x, t, key: A.input_x_gradient(fn, x, t)),
    ("integrated_gradients", {"steps": 8}, lambda x, t, key: ig8(x, t)),
    ("deeplift", {}, lambda x, t, key: A.deeplift(fn, x, t)),
    ("smoothgrad", {"samples": 4}, lambda x, t, key: A.smoothgrad(fn, x, t, key, samples=4)),
    (
        "smoothgrad",
        {"samples": 4, "abs": True},
        lambda x, t, key: A.smoothgrad(fn, x, t, key, samples=4, abs=True),
    ),
    (
        "vargrad",
        {"samples": 4},
        lambda x, t, key: A.noise_tunnel(signed_saliency, x, t, key, samples=4, kind="vargrad"),
    ),
    (
        "ig_smoothgrad",
        {"samples": 4, "steps": 8},
        lambda x, t, key: A.noise_tunnel(ig8, x, t, key, samples=4),
    ),
    (
        "gradient_shap",
        {"samples": 4, "baselines": jnp.zeros((1, 3))},
        lambda x, t, key: A.gradient_shap(fn, x, t, jnp.zeros((1, 3)), key, samples=4),
    ),
]


@pytest.fixture(scope="module")
def by_name_and_by_hand():
    """For every case, the named method's and the direct call's attributions of (X, T,
    KEY), all traced into one compiled program (un-jitted, every primitive of every
    call compiles on its own; separately jitted, every random draw compiles again)."""
    explainers = [A.explainer(name, fn, **options) for name, options, _ in CASES]

    @jax.jit
    def run(x, t, key):
        return [(e(x, t, key), direct(x, t, key)) for e, (*_, direct) in zip(explainers, CASES)]

    return run(X, T, KEY)


@pytest.mark.parametrize(
    "case", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_named_method_equals_the_direct_call(case, by_name_and_by_hand):
    by_name, by_hand = by_name_and_by_hand[case]
    np.testing.assert_allclose(by_name, by_hand, rtol=1e-5, atol=1e-6)


def test_every_method_runs_on_images_with_the_same_signature():
    images = jax.random.uniform(jax.random.key(1), (2, 6, 6, 1))
    w = jax.random.normal(jax.random.key(2), (36, 3))
    image_fn = lambda x: jnp.tanh(x.reshape(x.shape[0], -1)) @ w
    explainers = {}
    for name in A.available_methods():
        spec = A.METHODS[name]
        if spec.needs_model:
            continue  # the CAM family: tests/attribution/test_cam.py
        options = {"samples": 2} if spec.stochastic and "samples" in spec.options else {}
        if name in ("integrated_gradients", "ig_smoothgrad"):
            options["steps"] = 4
        if name == "occlusion":
            options["window"] = (3, 3)
        explainers[name] = A.explainer(name, image_fn, **options)
    # Every method called the same way, all in one compiled program (un-jitted, each
    # compiles primitive by primitive; separately jitted, each random draw again).
    every_map = jax.jit(lambda x, t, key: {n: e(x, t, key) for n, e in explainers.items()})(
        images, jnp.array([0, 2]), KEY
    )
    for name, maps in every_map.items():
        assert maps.shape == images.shape and bool(jnp.isfinite(maps).all()), name


def test_unknown_method_and_option_are_named():
    with pytest.raises(ValueError, match="unknown attribution method 'gradcam'.*saliency"):
        A.explainer("gradcam", fn)
    with pytest.raises(
        ValueError, match="integrated_gradients does not take stpes; it takes: .*steps"
    ):
        A.explainer("integrated_gradients", fn, stpes=300)
