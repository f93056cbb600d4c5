"""Methods by name: same answers as the direct calls, and clear errors."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax import attribution as A
from tests import testdata

W = jnp.array([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]])
fn = lambda x: jnp.tanh(x) @ W
X = jnp.array([[0.3, -0.2, 0.9], [1.0, 0.5, -0.4]])
T = jnp.array([0, 1])
KEY = jax.random.key(0)
signed_saliency = functools.partial(A.saliency, fn, abs=False)
ig8 = functools.partial(A.integrated_gradients, fn, steps=8)

# (name, options, the direct call on (x, target, key))
CASES = [
    ("saliency", {}, lambda x, t, key: signed_saliency(x, t)),
    ("saliency", {"abs": True}, lambda x, t, key: A.saliency(fn, x, t, abs=True)),
    ("input_x_gradient", {}, lambda x, t, key: A.input_x_gradient(fn, x, t)),
    ("integrated_gradients", {"steps": 8}, lambda x, t, key: ig8(x, t)),
    (
        "integrated_gradients",
        {"steps": 8, "rule": "riemann_middle", "baseline": 0.5},
        lambda x, t, key: ig8(x, t, rule="riemann_middle", baseline=0.5),
    ),
    ("deeplift", {}, lambda x, t, key: A.deeplift(fn, x, t)),
    ("smoothgrad", {"samples": 4}, lambda x, t, key: A.smoothgrad(fn, x, t, key=key, samples=4)),
    (
        "smoothgrad",
        {"samples": 4, "abs": True},
        lambda x, t, key: A.smoothgrad(fn, x, t, key=key, samples=4, abs=True),
    ),
    (
        "vargrad",
        {"samples": 4},
        lambda x, t, key: A.noise_tunnel(A.saliency, samples=4, kind="vargrad")(
            fn, x, t, key=key, abs=False
        ),
    ),
    (
        "ig_smoothgrad",
        {"samples": 4, "steps": 8},
        lambda x, t, key: A.noise_tunnel(A.integrated_gradients, samples=4)(
            fn, x, t, key=key, steps=8
        ),
    ),
    (
        "gradient_shap",
        {"samples": 4, "baseline": jnp.zeros((1, 3))},
        lambda x, t, key: A.gradient_shap(fn, x, t, key=key, baseline=jnp.zeros((1, 3)), samples=4),
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
    images = testdata.uniform(jax.random.key(1), (2, 6, 6, 1))
    w = testdata.normal(jax.random.key(2), (36, 3))
    image_fn = lambda x: jnp.tanh(x.reshape(x.shape[0], -1)) @ w
    explainers = {}
    for name in A.available_methods():
        spec = A.METHODS[name]
        if spec.needs_model or not spec.traceable:
            continue  # the CAM family: tests/attribution/test_cam.py; XRAI: test_xrai.py
        options = {"samples": 2} if spec.stochastic and "samples" in spec.options else {}
        if name in ("integrated_gradients", "ig_smoothgrad"):
            options["steps"] = 4
        if name == "occlusion":
            options["window"] = (3, 3)
        if name == "deeplift_shap":
            options["baseline"] = jnp.zeros((2, 6, 6, 1))
        if "patch" in spec.options:
            options["patch"] = 3
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
    # The old names of renamed options are misspellings now.
    with pytest.raises(ValueError, match="integrated_gradients does not take method; .*rule"):
        A.explainer("integrated_gradients", fn, method="riemann_middle")
    with pytest.raises(ValueError, match="gradient_shap does not take baselines; .*baseline"):
        A.explainer("gradient_shap", fn, baselines=jnp.zeros((1, 3)))


def test_option_names_are_shared():
    assert set(A.METHODS["integrated_gradients"].options) == {
        "baseline",
        "batch_size",
        "steps",
        "rule",
    }
    assert "baseline" in A.METHODS["gradient_shap"].options
    for name in ("saliency", "smoothgrad", "gaussian_saliency", "smoothgrad_sq", "vargrad"):
        assert "abs" in A.METHODS[name].options, name
    for name, spec in A.METHODS.items():
        assert "key" not in spec.options, name  # given per call
        if spec.stochastic and not name.endswith("feature_permutation"):
            assert "samples" in spec.options, name


def test_explain_defaults_target_none_and_needs_a_key_only_when_stochastic():
    predicted = jnp.argmax(fn(X), axis=1)
    assert len(set(np.asarray(predicted).tolist())) == 2
    explain = A.explainer("integrated_gradients", fn, steps=8)
    np.testing.assert_array_equal(explain(X), explain(X, predicted))
    np.testing.assert_allclose(explain(X), ig8(X, predicted), rtol=1e-6)
    for name in ("smoothgrad", "vargrad", "ig_smoothgrad", "gradient_shap"):
        with pytest.raises(ValueError, match="draws random numbers: pass key="):
            A.explainer(name, fn, samples=2)(X, T)
    # refused when the explainer is built, and not listed among what it takes
    with pytest.raises(ValueError, match=r"saliency does not take baseline \(it has no refer"):
        A.explainer("saliency", fn, baseline=0.5)
    with pytest.raises(
        ValueError, match="saliency does not take stpes; it takes: batch_size, abs$"
    ):
        A.explainer("saliency", fn, stpes=3)
    assert "layer_baseline" not in A.METHODS["layer_lrp"].options  # LRP has no reference
    assert "layer_baseline" in A.METHODS["layer_deeplift"].options


def test_method_spec_fields():
    assert A.METHODS["saliency"].method is A.saliency
    assert A.METHODS["integrated_gradients"].method is A.integrated_gradients
    assert A.METHODS["smoothgrad"].method is A.smoothgrad
    assert A.METHODS["gradient_shap"].method is A.gradient_shap
    assert A.METHODS["saliency"].is_signed() and A.METHODS["saliency"].is_signed({})
    assert not A.METHODS["saliency"].is_signed({"abs": True})
    assert A.METHODS["saliency"].is_signed({"abs": False})
    assert A.METHODS["smoothgrad"].is_signed() and not A.METHODS["smoothgrad"].is_signed(
        {"abs": True}
    )
    assert A.METHODS["gaussian_saliency"].is_signed()
    assert not A.METHODS["gaussian_saliency"].is_signed({"abs": True})
    assert A.METHODS["integrated_gradients"].is_signed({"steps": 8})
    assert not A.METHODS["smoothgrad_sq"].is_signed() and not A.METHODS["vargrad"].is_signed()
    cams = ("grad_cam", "grad_cam_plus_plus", "xgrad_cam", "hires_cam", "layer_cam")
    cams += ("grad_cam_elementwise", "shapley_cam", "eigen_grad_cam", "finer_cam")
    cams += ("score_cam", "ablation_cam", "eigen_cam", "kpca_cam", "fem")
    assert A.CAM_METHODS == cams
    for name in cams:
        spec = A.METHODS[name]
        assert spec.method is getattr(A, name), name
        assert spec.needs_model and spec.spatial and not spec.is_signed(), name
        if "relu" in spec.options:
            assert spec.is_signed({"relu": False}) and not spec.is_signed({"relu": True}), name
    # One (N, H, W) map per image: the CAMs, the layer methods summed over channels, XRAI.
    layer_methods = ("layer_gradient_x_activation", "layer_integrated_gradients")
    layer_methods += ("layer_conductance", "internal_influence")
    layer_methods += tuple(name for name in A.METHODS if name.startswith("layer_"))
    for name, spec in A.METHODS.items():
        if name not in cams + ("xrai", "full_grad") + layer_methods:
            assert not spec.spatial, name


class _TwoConvs(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(4, (3, 3), name="conv2")(x))
        return nn.Dense(3)(x.mean(axis=(1, 2)))


def test_layer_methods_are_registered_as_channel_sums_like_the_cams():
    x = testdata.uniform(jax.random.key(5), (2, 6, 6, 1))
    model = _TwoConvs()
    handle = A.flax_model(model, testdata.init(model, x, 1))
    target = jnp.argmax(handle(x), axis=-1)
    per_unit = A.layer_integrated_gradients(handle, x, target, layer="conv2", steps=3)
    flat = A.explainer("layer_integrated_gradients", handle, layer="conv2", steps=3, upsample=False)
    np.testing.assert_allclose(flat(x, target)[..., 0], per_unit.sum(-1), rtol=1e-6, atol=1e-7)
    up = A.explainer("layer_integrated_gradients", handle, layer="conv2", steps=3)(x, target)
    assert up.shape == x.shape[:3] + (1,)
    np.testing.assert_allclose(
        up[..., 0], A.upsample_maps(per_unit.sum(-1), x.shape[1:3]), rtol=1e-6, atol=1e-7
    )
    # The compositions by name: at_layer's maps summed the same way; at_neuron's as is.
    per_unit = A.at_layer(A.deeplift)(handle, x, target, layer="conv2")
    flat = A.explainer("layer_deeplift", handle, layer="conv2", upsample=False)(x, target)
    np.testing.assert_allclose(flat[..., 0], per_unit.sum(-1), rtol=1e-6, atol=1e-7)
    unit = {"layer": "conv1", "neuron": (1, 2, 0)}
    by_patch = A.explainer("neuron_feature_ablation", handle, patch=2, **unit)(x)
    mask = A.square_patches(x.shape[1:], 2)
    by_hand = A.at_neuron(A.feature_ablation)(handle, x, feature_mask=mask, **unit)
    np.testing.assert_allclose(by_patch, by_hand, rtol=1e-6, atol=1e-7)


def test_deeplift_shap_without_references_is_refused_when_the_explainer_is_built():
    for name in ("deeplift_shap", "layer_deeplift_shap", "neuron_deeplift_shap"):
        with pytest.raises(ValueError, match=rf"^{name} needs baseline=: a batch"):
            A.explainer(name, fn)


def test_a_required_option_is_refused_when_the_explainer_is_built():
    with pytest.raises(ValueError, match=r"^occlusion needs window= \(see the docstring"):
        A.explainer("occlusion", fn)
    assert A.explainer("occlusion", fn, window=2) is not None


def test_neuron_methods_need_a_neuron_and_are_kept_out_of_class_studies():
    spec = A.METHODS["neuron_integrated_gradients"]
    assert spec.explains == "neuron" and A.METHODS["saliency"].explains == "class"
    with pytest.raises(ValueError, match=r"neuron_gradient needs neuron=<index tuple"):
        A.explainer("neuron_gradient", A.flax_model(_TwoConvs(), {}), layer="conv1")
    A.require_class_methods(["saliency", "layer_conductance"], "the report")
    with pytest.raises(
        ValueError, match=r"^the report explains classes; neuron_gradient explain\(s\) one neuron"
    ):
        A.require_class_methods(["saliency", "neuron_gradient"], "the report")


def test_check_explainer_finds_bad_option_values_without_computing_anything():
    """Values a method checks only when it runs fail in the dry run, with the method
    named; the model is traced, never evaluated."""
    calls = []

    def counted(x):
        calls.append(type(x))
        return fn(x)

    for name, options, message in [
        ("integrated_gradients", {"steps": 0}, r"^integrated_gradients: steps must be an int"),
        ("smoothgrad", {"samples": -1}, r"^smoothgrad: samples must be an integer >= 1"),
        ("integrated_gradients", {"rule": "simpson"}, r"unknown quadrature rule 'simpson'"),
    ]:
        explain = A.explainer(name, counted, **options)
        with pytest.raises(ValueError, match=message):
            A.check_explainer(explain, X)
    calls.clear()
    A.check_explainer(A.explainer("ig_smoothgrad", counted, samples=2, steps=4), X)
    assert calls and all(issubclass(t, jax.core.Tracer) for t in calls)
    # A model DeepLIFT has no rule for (a top-k mask, as the sparse autoencoder's): a
    # ValueError, which a study's script reports in one line, not a NotImplementedError.
    top_k = lambda x: fn(x * (x >= jax.lax.top_k(x, 2)[0][:, -1:]))
    with pytest.raises(ValueError, match=r"^deeplift cannot explain this model, so leave it "
                       r"out: deeplift has no rule for primitive 'top_k'"):  # fmt: skip
        A.check_explainer(A.explainer("deeplift", top_k), X)


def test_xrai_options_are_checked_when_the_explainer_is_built():
    """XRAI cannot be traced, so its option values are checked by `MethodSpec.check`."""
    for options, message in [
        ({"steps": 0}, r"steps must be an integer >= 1, got 0"),
        ({"rule": "simpson"}, r"unknown quadrature rule"),
        ({"scales": (0.0,)}, r"scales must hold at least one Felzenszwalb scale > 0"),
        ({"sigma": -1.0}, r"sigma must be a number >= 0"),
        ({"dilation": -1}, r"dilation must be an integer >= 0"),
        ({"min_pixel_diff": 0}, r"min_pixel_diff must be an integer >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            A.explainer("xrai", fn, **options)
    explain = A.explainer("xrai", fn, steps=4, scales=(50.0,), dilation=0)
    A.check_explainer(explain, X)  # untraceable: nothing more to check, nothing run


def test_check_explainer_keeps_the_type_of_an_error_about_x():
    """A channels-first batch is an InputLayoutError from any method; the dry run keeps
    its type and message, so code catching it still does."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.Conv(4, (3, 3))(x).reshape(x.shape[0], -1))

    images = jnp.zeros((2, 8, 8, 1))
    handle = A.flax_model(Net(), Net().init(jax.random.key(0), images))
    with pytest.raises(
        A.InputLayoutError, match=r"^x of shape \(2, 1, 8, 8\) looks channels-first"
    ):
        A.check_explainer(A.explainer("saliency", handle), images.transpose(0, 3, 1, 2))
