"""Target resolution, input checks, chunked accumulation and keys (fmi_jax.attribution.core)."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fmi_jax import attribution as A
from fmi_jax.attribution import core, resolve_target
from tests import testdata

W = jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])  # 2 features, 3 classes


def fn(x):
    return x @ W


X = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
KEY = jax.random.key(0)


def test_resolve_target_none_is_the_predicted_class():
    expected = np.argmax(np.asarray(fn(X)), axis=1)
    np.testing.assert_array_equal(resolve_target(fn, X, None), expected)
    np.testing.assert_array_equal(resolve_target(fn, X, None, batch_size=3), expected)


def test_resolve_target_int_and_array():
    np.testing.assert_array_equal(resolve_target(fn, X, 2), [2, 2, 2, 2])
    np.testing.assert_array_equal(resolve_target(fn, X, np.int64(1)), [1, 1, 1, 1])
    t = resolve_target(fn, X, np.array([0, 1, 2, 0]))
    np.testing.assert_array_equal(t, [0, 1, 2, 0])
    assert t.dtype == jnp.int32


@pytest.mark.parametrize(
    "target, message",
    [
        (3, r"target out of range: example 0 asks for class 3, but classes must be in \[0, 3\)"),
        (np.array([0, 1, -1, 0]), "example 2 asks for class -1"),
        (np.array([0, 1, 2]), r"shape \(4,\) \(one class per example\), got shape \(3,\)"),
        (np.array([[0, 1, 2, 0]]), r"got shape \(1, 4\)"),
        (np.array([0.0, 1.0, 2.0, 0.0]), "integer class indices"),
    ],
)
def test_bad_targets_raise_naming_the_problem(target, message):
    with pytest.raises(ValueError, match=message):
        resolve_target(fn, X, target)


@pytest.mark.parametrize(
    "target, example, value",
    [
        (np.int64(2**32 + 1), 0, 2**32 + 1),  # int32 would wrap it around to class 1
        (np.array([0, 1, 2, 2**32 + 1]), 3, 2**32 + 1),
        (np.array([0, 1, 2, 2**32 + 2], np.uint64), 3, 2**32 + 2),
        (np.array([0, 1, -(2**32) + 1, 0]), 2, -(2**32) + 1),
        (2**40, 0, 2**40),  # a Python int too large for int32
        (2**70, 0, 2**70),  # ... and for int64
    ],
)
def test_targets_beyond_int32_are_refused_not_wrapped_around(target, example, value):
    message = (
        rf"target out of range: example {example} asks for class {value}, but classes "
        r"must be in \[0, 3\)$"
    )
    with pytest.raises(ValueError, match=message):
        resolve_target(fn, X, target)
    with pytest.raises(ValueError, match=message):
        A.saliency(fn, X, target)
    # With the number of classes unknown, the range is what int32 holds.
    with pytest.raises(ValueError, match=r"must be in \[0, 2\*\*31\)$"):
        core.as_target(target, 4)


def test_a_list_of_traced_targets_is_taken_as_traced():
    """Only concrete targets are range-checked on the host; a list whose entries are
    tracers is one traced target, as a traced array is."""
    traced = jax.jit(lambda *t: A.saliency(fn, X, list(t)))(*(jnp.int32(c) for c in (0, 1, 2, 1)))
    np.testing.assert_allclose(traced, A.saliency(fn, X, [0, 1, 2, 1]), rtol=1e-6)


def test_fn_must_return_logits_of_shape_n_by_classes():
    with pytest.raises(ValueError, match=r"logits of shape \(4, classes\), got \(4,\)"):
        resolve_target(lambda x: x.sum(axis=1), X, 0)
    with pytest.raises(ValueError, match=r"got tuple; for a model with several outputs"):
        resolve_target(lambda x: (fn(x), x), X, 0)


def test_unchecked_target_out_of_range_gives_nan_not_a_wrong_map():
    grads = jax.jit(lambda t: core.target_logit_grad(fn, X, t))(jnp.array([0, 5, 1, 2]))
    assert np.all(np.isnan(grads[1])) and np.all(np.isfinite(np.asarray(grads)[[0, 2, 3]]))


def test_target_logit_grad_rows_are_per_example_gradients():
    grads = core.target_logit_grad(lambda x: jnp.tanh(x) @ W, X, jnp.array([0, 1, 2, 1]))
    for i, t in enumerate([0, 1, 2, 1]):
        expected = jax.grad(lambda v, t=t: (jnp.tanh(v) @ W)[t])(X[i])
        np.testing.assert_allclose(grads[i], expected, rtol=1e-6)


def test_as_input_rejects_nan_and_inf_but_not_under_jit():
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        core.as_input(X.at[1, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        core.as_input(X.at[1, 0].set(jnp.inf))
    with pytest.raises(ValueError, match="non-empty batch axis"):
        core.as_input(jnp.zeros((0, 2)))
    jax.jit(core.as_input)(X.at[1, 0].set(jnp.nan))  # values unknown while tracing: no check


@pytest.mark.parametrize("baseline", [None, 0.5, jnp.array([1.0, 2.0]), X * 2, np.ones((1, 2))])
def test_baselines_that_broadcast(baseline):
    out = core.as_baseline(baseline, X)
    assert out.shape == X.shape
    expected = np.zeros(X.shape) if baseline is None else np.broadcast_to(baseline, X.shape)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("shape", [(3,), (4, 3), (2, 4, 2), (3, 2)])
def test_baselines_that_do_not_broadcast(shape):
    message = re.escape(f"baseline of shape {shape} does not broadcast to the input shape (4, 2)")
    with pytest.raises(ValueError, match=message):
        core.as_baseline(np.zeros(shape), X)


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "4", None])
def test_counts_must_be_positive_integers(value):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        core.as_count(value, "steps")


@pytest.mark.parametrize(
    "value, minimum, inclusive, message",
    [
        (True, None, True, "alpha must be a finite number, got True"),
        ("1", None, True, "alpha must be a finite number, got '1'"),
        (float("nan"), None, True, "alpha must be a finite number, got nan"),
        (-1e-9, 0, True, "alpha must be a finite number >= 0, got -1e-09"),
        (0.0, 0, False, "alpha must be a finite number > 0, got 0.0"),
        (np.bool_(True), None, True, "alpha must be a finite number, got "),
        (np.array([1.0]), None, True, "alpha must be a finite number, got array([1.])"),
        (jnp.complex64(1), None, True, "alpha must be a finite number"),
    ],
)
def test_numbers_must_be_finite_and_above_their_minimum(value, minimum, inclusive, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        core.as_number(value, "alpha", minimum=minimum, inclusive=inclusive)


def test_numbers_are_python_floats():
    for value in (0, 2, np.float32(0.5), np.int64(3), -4.0, jnp.float32(1.5), np.array(2.0)):
        number = core.as_number(value, "alpha")
        assert type(number) is float and number == float(value)
    assert core.as_number(0, "alpha", minimum=0) == 0.0


def test_sum_over_samples_any_batch_size():
    """out[i] = sum_s (i + 1) * 10^s, for chunk sizes that divide N * S or not."""

    def evaluate(example, sample):
        value = (example + 1.0) * 10.0**sample
        return value, jnp.stack([value, -value], axis=1)

    expected = np.array([(i + 1) * 111.0 for i in range(5)])
    for batch_size in [None, 1, 2, 4, 7, 15, 100]:
        total, pair = core.sum_over_samples(evaluate, 5, 3, batch_size=batch_size)
        np.testing.assert_array_equal(total, expected)
        np.testing.assert_array_equal(pair, np.stack([expected, -expected], axis=1))


def test_sum_over_samples_chunk_size_bounds_the_evaluated_batch():
    seen = []

    def evaluate(example, sample):
        seen.append(example.shape[0])
        return jnp.ones_like(example, dtype=jnp.float32)

    core.sum_over_samples(evaluate, 10, 100, batch_size=64)
    assert set(seen) == {64}


def test_map_over_samples_keeps_every_value_in_equal_chunks():
    """out[i, s] = (i, s) pairs, for chunk sizes that divide N * S or not, and every
    evaluation sees exactly batch_size pairs (the padding is dropped)."""
    seen = []

    def evaluate(example, sample):
        seen.append(example.shape[0])
        return jnp.stack([example, sample], axis=1).astype(jnp.float32)

    expected = np.stack(np.meshgrid(np.arange(5), np.arange(3), indexing="ij"), -1)
    for batch_size in [None, 1, 2, 4, 7, 15, 100]:
        seen.clear()
        out = core.map_over_samples(evaluate, 5, 3, batch_size=batch_size)
        np.testing.assert_array_equal(out, expected)
        assert set(seen) == {min(batch_size or 15, 15)}


def test_example_keys_single_legacy_and_per_example():
    key = jax.random.key(3)
    keys = core.example_keys(key, 4)
    assert keys.shape == (4,)
    np.testing.assert_array_equal(
        jax.random.key_data(keys[2]), jax.random.key_data(jax.random.fold_in(key, 2))
    )
    legacy = core.example_keys(jax.random.PRNGKey(3), 4)
    np.testing.assert_array_equal(jax.random.key_data(legacy), jax.random.key_data(keys))
    np.testing.assert_array_equal(
        jax.random.key_data(core.example_keys(keys, 4)), jax.random.key_data(keys)
    )
    with pytest.raises(ValueError, match=r"one key per example \(4,\), got key shape \(3,\)"):
        core.example_keys(keys[:3], 4)
    for seed in (0, np.int64(0), 1.5):
        with pytest.raises(ValueError, match=r"key must be a PRNG key, got .*jax.random.key\("):
            core.example_keys(seed, 4)


def test_a_seed_given_as_key_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"smoothgrad: key must be a PRNG key, got int 0: pass"):
        A.smoothgrad(fn, X, 0, key=0)


# ------------------------------------------------------ the one signature: refusals


class TinyCNN(nn.Module):
    """Conv -> ReLU -> Dense on (N, 8, 8, 1) images, 3 classes."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(2, (3, 3))(x))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def _image_models():
    """An MLP and a CNN, both ``fn`` maps of a batch (N, 8, 8, 1) to 3 logits."""
    w = testdata.normal(jax.random.key(0), (64, 3))
    cnn = TinyCNN()
    variables = jax.jit(cnn.init)(jax.random.key(1), jnp.zeros((1, 8, 8, 1)))
    return {
        "mlp": lambda x: jnp.tanh(x.reshape(x.shape[0], -1)) @ w,
        "cnn": lambda x: cnn.apply(variables, x),
    }


IMAGE_MODELS = _image_models()
IMAGES = testdata.uniform(jax.random.key(2), (2, 8, 8, 1))


@pytest.mark.parametrize("model", sorted(IMAGE_MODELS))
def test_one_example_without_its_batch_axis_is_refused(model):
    fn = IMAGE_MODELS[model]
    one = IMAGES[0]  # (8, 8, 1): the model needs (1, 8, 8, 1)
    message = (
        r"x of shape \(8, 8, 1\) looks like one example without its batch axis: pass x\[None\]"
    )
    with pytest.raises(ValueError, match=message):
        resolve_target(fn, one, None)
    for method in (A.saliency, A.input_x_gradient, A.integrated_gradients, A.deeplift):
        with pytest.raises(ValueError, match="batch axis"):
            method(fn, one, 0)
    with pytest.raises(ValueError, match="batch axis"):
        A.smoothgrad(fn, one, 0, key=KEY, samples=2)
    # ... and x[None] is accepted.
    np.testing.assert_array_equal(resolve_target(fn, one[None], 1), [1])


UNBATCHED = (
    r"^x of shape \(8, 8, 1\) looks like one example without its batch axis: pass x\[None\] "
    r"\(a batch of one\); x must be a batch \(N, H, W, C\)$"
)


@pytest.mark.parametrize("model", sorted(IMAGE_MODELS))
def test_a_missing_batch_axis_is_blamed_not_the_window_mask_or_references(model):
    # Checked against the example shape x.shape[1:], a window, a feature mask or
    # references made for (8, 8, 1) images do not fit (8, 1): the error says why.
    fn, one = IMAGE_MODELS[model], IMAGES[0]
    mask = A.square_patches((8, 8, 1), 4)
    calls = {
        "occlusion": lambda x: A.occlusion(fn, x, 0, window=4, stride=4),
        "occlusion (h, w, c)": lambda x: A.occlusion(fn, x, 0, window=(4, 4, 1), stride=4),
        "feature_ablation": lambda x: A.feature_ablation(fn, x, 0, feature_mask=mask),
        "feature_permutation": lambda x: A.feature_permutation(
            fn, x, 0, key=KEY, feature_mask=mask
        ),
        "kernel_shap": lambda x: A.kernel_shap(fn, x, 0, key=KEY, feature_mask=mask, samples=2),
        "deeplift_shap": lambda x: A.deeplift_shap(fn, x, 0, baseline=jnp.zeros((2, 8, 8, 1))),
        "gradient_shap": lambda x: A.gradient_shap(
            fn, x, 0, key=KEY, baseline=jnp.zeros((2, 8, 8, 1)), samples=2
        ),
        "integrated_gradients": lambda x: A.integrated_gradients(
            fn, x, 0, baseline=jnp.zeros((1, 8, 8, 1)), steps=2
        ),
    }
    for name, call in calls.items():
        with pytest.raises(core.InputLayoutError, match=UNBATCHED):
            call(one)
        assert call(jnp.stack([one, one])).shape == (2, 8, 8, 1), name
    # With x a batch, the argument that does not fit is still the one named.
    with pytest.raises(ValueError, match=r"^feature_mask of shape \(4, 4, 1\) does not"):
        A.feature_ablation(fn, IMAGES, 0, feature_mask=np.zeros((4, 4, 1), np.int32))
    with pytest.raises(ValueError, match=r"^deeplift_shap's baseline must be"):
        A.deeplift_shap(fn, IMAGES, 0, baseline=jnp.zeros((2, 4, 4, 1)))


CHANNELS_FIRST = (
    r"^x of shape \(2, 1, 8, 8\) looks channels-first \(N, C, H, W\), but the model takes "
    r"channels-last images \(N, H, W, C\): pass x\.transpose\(0, 2, 3, 1\)$"
)


GRAYSCALE = (
    r"^x of shape \(2, 8, 8\) looks like grayscale images without their channel axis: "
    r"pass x\[\.\.\., None\]; the model takes \(N, H, W, 1\)$"
)


def test_a_grayscale_batch_without_its_channel_axis_is_refused_with_the_fix():
    # MNIST-style loaders often drop the channel axis; the model's own shape error
    # (a kernel of the wrong size deep inside Flax) would not say so.
    variables = jax.jit(TinyCNN().init)(jax.random.key(1), jnp.zeros((1, 8, 8, 1)))
    handle = A.flax_model(TinyCNN(), variables)
    gray = IMAGES[..., 0]  # (2, 8, 8)
    for call in (
        lambda: handle(gray),
        lambda: A.saliency(handle, gray, 0),
        lambda: A.saliency(lambda x: TinyCNN().apply(variables, x), gray, 0),
        lambda: A.grad_cam(handle, gray, 0, layer="Conv_0"),
    ):
        with pytest.raises(core.InputLayoutError, match=GRAYSCALE):
            call()
    np.testing.assert_array_equal(
        A.saliency(handle, gray[..., None], 0), A.saliency(handle, IMAGES, 0)
    )


def test_a_channels_first_batch_for_a_channels_last_model_is_refused_with_the_transpose():
    variables = jax.jit(TinyCNN().init)(jax.random.key(1), jnp.zeros((1, 8, 8, 1)))
    handle = A.flax_model(TinyCNN(), variables)
    first = IMAGES.transpose(0, 3, 1, 2)  # (2, 1, 8, 8)
    for call in (
        lambda: handle(first),
        lambda: A.saliency(handle, first, 0),
        lambda: A.saliency(lambda x: TinyCNN().apply(variables, x), first, 0),
        lambda: A.grad_cam(handle, first, 0, layer="Conv_0"),
        lambda: handle.layer_names(first),
        lambda: A.occlusion(handle, first, 0, window=2),
    ):
        with pytest.raises(core.InputLayoutError, match=CHANNELS_FIRST):
            call()
    np.testing.assert_allclose(
        A.saliency(handle, first.transpose(0, 2, 3, 1), 0), A.saliency(handle, IMAGES, 0)
    )
    # The model decides, not the shape: channels-last images 3 pixels tall with 32
    # channels are taken as they are.
    tall = jax.jit(TinyCNN().init)(jax.random.key(1), jnp.zeros((1, 3, 32, 32)))
    x = testdata.uniform(jax.random.key(3), (2, 3, 32, 32))
    assert A.saliency(A.flax_model(TinyCNN(), tall), x, 0).shape == (2, 3, 32, 32)


class TwoOutputs(nn.Module):
    """TinyCNN that returns its logits with its features, as a dict or a tuple."""

    as_dict: bool = True

    @nn.compact
    def __call__(self, x):
        features = nn.relu(nn.Conv(2, (3, 3))(x))
        logits = nn.Dense(3)(features.reshape(x.shape[0], -1))
        if self.as_dict:
            return {"features": features, "logits": logits}
        return features, logits


@pytest.mark.parametrize("as_dict, pick", [(True, "['logits']"), (False, "[1]")])
def test_a_model_with_several_outputs_is_told_which_entry_to_explain(as_dict, pick):
    module = TwoOutputs(as_dict)
    variables = jax.jit(module.init)(jax.random.key(1), IMAGES)
    kind = "dict" if as_dict else "tuple"
    message = (
        rf"^fn must map a batch of shape \(2, 8, 8, 1\) to logits of shape \(2, classes\), "
        rf"got {kind}; for a model with several outputs, explain the logits alone: a Linen "
        rf"handle takes method=lambda module, x, \*\*kw: module\(x, \*\*kw\){re.escape(pick)}, "
    )
    with pytest.raises(ValueError, match=message):
        A.saliency(A.flax_model(module, variables), IMAGES, 0)
    # ... and following the hint works.
    entry = "logits" if as_dict else 1
    handle = A.flax_model(module, variables, method=lambda module, x, **kw: module(x, **kw)[entry])
    assert A.saliency(handle, IMAGES, 0).shape == IMAGES.shape


class NnxTiny(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(2, 3, rngs=rngs)

    def __call__(self, x):
        return self.dense(x)


def test_a_flax_module_given_as_fn_is_refused_with_the_handle_to_pass():
    nnx_module = nnx.eval_shape(lambda: NnxTiny(nnx.Rngs(0)))
    for method in (A.saliency, A.integrated_gradients):
        with pytest.raises(ValueError, match=r"NNX module NnxTiny: pass .*flax_model\(module\)"):
            method(nnx_module, X, 0)
        with pytest.raises(ValueError, match=r"Linen module TinyCNN without its variables"):
            method(TinyCNN(), IMAGES, 0)
        with pytest.raises(ValueError, match=r"\(TinyCNN, variables\) tuple, not a model"):
            method((TinyCNN(), {}), IMAGES, 0)  # what the CAMs take
    # A bound Linen module is a model function.
    variables = jax.eval_shape(TinyCNN().init, KEY, IMAGES)
    variables = jax.tree.map(lambda leaf: jnp.full(leaf.shape, 0.1, leaf.dtype), variables)
    bound = TinyCNN().bind(variables)
    np.testing.assert_allclose(
        A.saliency(bound, IMAGES, 0),
        A.saliency(lambda x: TinyCNN().apply(variables, x), IMAGES, 0),
        rtol=1e-6,
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.bool_])
def test_integer_and_boolean_images_are_refused_with_the_conversion(dtype):
    pixels = np.asarray(IMAGES * 255).astype(dtype)
    with pytest.raises(ValueError, match=r"x has dtype .*: .*x\.astype\('float32'\) / 255"):
        core.as_input(pixels)
    with pytest.raises(ValueError, match="astype"):
        core.as_input(jnp.asarray(pixels))
    for method in (A.saliency, A.integrated_gradients):
        with pytest.raises(ValueError, match="astype"):
            method(IMAGE_MODELS["mlp"], pixels, 0)
    # A baseline is an input too: a uint8 grey of 128 is not 128 / 255. A Python number
    # is read as a float, and a mask (not on the input's scale) may be integers.
    grey = np.full(IMAGES.shape[1:], 128).astype(dtype)
    for method in (A.integrated_gradients, functools.partial(A.occlusion, window=2), A.deeplift):
        with pytest.raises(ValueError, match=r"baseline has dtype .*baseline\.astype"):
            method(IMAGE_MODELS["mlp"], IMAGES, 0, baseline=grey)
    assert core.as_baseline(0, IMAGES).dtype == jnp.float32
    assert core.as_baseline(grey, IMAGES, "mask", scaled=False).dtype == jnp.float32
    with pytest.raises(ValueError, match="^baseline must be a number or an array of the input's"):
        A.integrated_gradients(IMAGE_MODELS["mlp"], IMAGES, 0, baseline="black")


# The functions of the methods that draw random numbers, by the name they give.
STOCHASTIC = {
    "smoothgrad": A.smoothgrad,
    "gradient_shap": A.gradient_shap,
    "feature_permutation": A.feature_permutation,
    r"noise_tunnel\(saliency\)": A.noise_tunnel(A.saliency),
}


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_stochastic_methods_need_a_key_and_say_so(name):
    with pytest.raises(ValueError, match=rf"{name} draws random numbers: pass key="):
        STOCHASTIC[name](IMAGE_MODELS["mlp"], IMAGES, 0)


def test_smoothgrad_without_a_key_names_itself_and_the_key():
    with pytest.raises(ValueError, match=r"smoothgrad.*key"):
        A.smoothgrad(IMAGE_MODELS["mlp"], IMAGES, 0)


@pytest.mark.parametrize(
    "method",
    [
        A.saliency,
        A.input_x_gradient,
        A.gaussian_smoothed_saliency,
        functools.partial(A.smoothgrad, key=KEY),
        functools.partial(A.feature_permutation, key=KEY),
    ],
    ids=["saliency", "input_x_gradient", "gaussian", "smoothgrad", "feature_permutation"],
)
def test_methods_without_a_reference_input_refuse_a_baseline(method):
    with pytest.raises(ValueError, match="has no reference input, so baseline= would be ignored"):
        method(IMAGE_MODELS["mlp"], IMAGES, 0, baseline=0.5)
    with pytest.raises(ValueError, match="baseline"):
        method(IMAGE_MODELS["mlp"], IMAGES, 0, baseline=jnp.zeros_like(IMAGES))


def test_deterministic_methods_ignore_the_key():
    fn = IMAGE_MODELS["cnn"]
    methods = (A.saliency, A.input_x_gradient, A.deeplift, A.integrated_gradients)
    # One compiled program for all the calls (un-jitted, each compiles op by op).
    pairs = jax.jit(lambda x, key: [(m(fn, x, 2, key=key), m(fn, x, 2)) for m in methods])(
        IMAGES, KEY
    )
    for with_key, without in pairs:
        np.testing.assert_array_equal(with_key, without)


def test_completeness_delta_target_none_is_the_predicted_class():
    predicted = np.argmax(np.asarray(fn(X)), axis=1)
    attributions = jnp.arange(8.0).reshape(X.shape)
    delta = core.completeness_delta(fn, X, None, attributions, baseline=0.5)
    expected = core.completeness_delta(fn, X, predicted, attributions, baseline=0.5)
    np.testing.assert_array_equal(delta, expected)
    # The known answer: sum of the attributions minus the logit difference.
    rows = np.arange(len(X))
    difference = fn(X)[rows, predicted] - fn(jnp.full_like(X, 0.5))[rows, predicted]
    np.testing.assert_allclose(delta, attributions.sum(axis=1) - difference, rtol=1e-6)
    np.testing.assert_array_equal(
        core.completeness_delta(fn, X, None, attributions, baseline=0.5, batch_size=3), expected
    )
    # Maps of another batch, or IG's (attributions, delta) pair, are refused.
    with pytest.raises(ValueError, match=r"one row per example with leading axis 4 .*\(5, 2\)"):
        core.completeness_delta(fn, X, None, jnp.ones((5, 2)))
    with pytest.raises(ValueError, match=r"returns \(attributions, delta\); pass the attr"):
        core.completeness_delta(fn, X, 0, A.integrated_gradients(fn, X, 0, return_delta=True))


# -------------------------------------------- target=None in every registered method

# Small settings for every method that takes a plain model function.
_OPTIONS = {
    "integrated_gradients": {"steps": 4},
    "ig_smoothgrad": {"steps": 3, "samples": 2},
    "smoothgrad": {"samples": 2},
    "smoothgrad_sq": {"samples": 2},
    "vargrad": {"samples": 2},
    "gradient_shap": {"samples": 3},
    "occlusion": {"window": 3, "stride": 2},
    "feature_permutation": {"patch": 4},
    "feature_ablation": {"patch": 4},
    "blur_ig": {"steps": 4},
    "guided_ig": {"steps": 4},
    "shapley_value_sampling": {"patch": 4, "samples": 2},
    "kernel_shap": {"patch": 4, "samples": 3},
    "lime": {"patch": 4, "samples": 3},
    "deeplift_shap": {"baseline": jnp.zeros((2, 8, 8, 1))},
}
# (XRAI segments on the host and cannot be traced: tests/attribution/test_xrai.py.)
PLAIN_METHODS = sorted(
    n for n in A.available_methods() if not A.METHODS[n].needs_model and A.METHODS[n].traceable
)


@pytest.fixture(scope="module")
def predicted_classes():
    """Three images on which the MLP predicts at least two different classes."""
    x = testdata.uniform(jax.random.key(3), (3, 8, 8, 1)) * 2 - 1
    predicted = np.argmax(np.asarray(IMAGE_MODELS["mlp"](x)), axis=1)
    assert len(set(predicted.tolist())) >= 2, predicted
    return x, predicted


@pytest.mark.parametrize("name", PLAIN_METHODS)
def test_target_none_is_exactly_the_predicted_class_in_every_method(name, predicted_classes):
    x, predicted = predicted_classes
    spec = A.METHODS[name]
    options = _OPTIONS.get(name, {})
    assert set(options) <= set(spec.options), name

    def run(x, target, key):
        return spec.method(IMAGE_MODELS["mlp"], x, target, key=key, **options)

    # One compiled program per method for both calls.
    for_none, for_predicted = jax.jit(lambda x, t, key: (run(x, None, key), run(x, t, key)))(
        x, jnp.asarray(predicted), KEY
    )
    assert for_none.shape == x.shape and bool(jnp.isfinite(for_none).all()), name
    np.testing.assert_array_equal(for_none, for_predicted)
