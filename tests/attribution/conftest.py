"""Tiny models and the table of all methods shared by the attribution tests."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from fmi_jax.attribution import (
    deeplift,
    feature_permutation,
    gaussian_smoothed_saliency,
    gradient_shap,
    input_x_gradient,
    integrated_gradients,
    noise_tunnel,
    occlusion,
    saliency,
    smoothgrad,
)
from tests import testdata

IMAGE_SHAPE = (4, 4, 2)  # H, W, C of the images used by the cross-method tests
CLASSES = 3


class SmallCNN(nn.Module):
    """Conv -> ReLU -> max-pool -> Dense: the layers DeepLIFT needs rules for."""

    classes: int = CLASSES

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(3, (3, 3), padding="SAME")(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.classes)(x)


KEY = jax.random.key(42)

_LOWERINGS = [0]


def _count_lowering(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
        _LOWERINGS[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_lowering)


@pytest.fixture
def lowerings():
    """``lowerings()``: how many programs this process has lowered for compilation so
    far (counted whether or not the persistent compilation cache then serves them)."""
    return lambda: _LOWERINGS[0]


@pytest.fixture(scope="session")
def images():
    """Five images in [0, 1) of shape IMAGE_SHAPE."""
    return testdata.uniform(jax.random.key(7), (5, *IMAGE_SHAPE))


@pytest.fixture(scope="session")
def cnn_fn():
    """A SmallCNN with fixed random weights, as a function batch -> logits (un-jitted).
    The weights come from one compiled model.init: the same values as an eager init."""
    model = SmallCNN()
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)))
    return lambda x: model.apply(variables, x)


# Features the `masked_cnn_fn` model ignores: all of channel 1 and pixel (1, 2) of channel 0.
IGNORED = jnp.ones(IMAGE_SHAPE).at[..., 1].set(0.0).at[1, 2, 0].set(0.0)


@pytest.fixture(scope="session")
def masked_cnn_fn(cnn_fn):
    """The SmallCNN applied to x * IGNORED: it ignores channel 1 and pixel (1, 2, 0)."""
    return lambda x: cnn_fn(x * IGNORED)


_SHAP_BASELINES = testdata.uniform(jax.random.key(9), (3, *IMAGE_SHAPE))

# Every public method as method(fn, x, target, batch_size=...), with small settings
# (saliency and its Gaussian smoothing with their default, signed maps).
METHODS = {
    "saliency": saliency,
    "input_x_gradient": input_x_gradient,
    "integrated_gradients": functools.partial(integrated_gradients, steps=6, baseline=0.25),
    "deeplift": functools.partial(deeplift, baseline=0.25),
    "smoothgrad": functools.partial(smoothgrad, key=KEY, samples=3),
    "gradient_shap": functools.partial(
        gradient_shap, key=KEY, baseline=_SHAP_BASELINES, samples=3, stdev=0.1
    ),
    "gaussian_smoothed_saliency": functools.partial(gaussian_smoothed_saliency, sigma=0.8),
    # One-channel windows, so the channel the model ignores is never occluded with the other.
    "occlusion": functools.partial(occlusion, window=(2, 2, 1), stride=1),
    "feature_permutation": functools.partial(feature_permutation, key=KEY),
    # The noise tunnel as a transform: SmoothGrad over integrated gradients.
    "ig_smoothgrad": functools.partial(
        noise_tunnel(integrated_gradients, samples=3, stdev=0.1), key=KEY, steps=4, baseline=0.25
    ),
}
NOISY = {"smoothgrad", "gradient_shap", "feature_permutation", "ig_smoothgrad"}
# Methods that spread one perturbation's effect over every feature it touched, so a
# single ignored pixel next to used ones is not zero (whole ignored channels still are).
SPREADING = {"gaussian_smoothed_saliency", "occlusion"}
# Methods whose answer for an example depends on the other examples of the batch.
BATCH_COUPLED = {"feature_permutation"}


@pytest.fixture(scope="module", params=sorted(METHODS))
def method_name(request):
    """The name of each public attribution method in turn (a key of METHODS)."""
    return request.param


@pytest.fixture(scope="module")
def method(method_name):
    """That method as method(fn, x, target, batch_size=...)."""
    return METHODS[method_name]


@pytest.fixture(scope="module")
def noisy(method_name):
    """Whether the method draws random noise."""
    return method_name in NOISY


@pytest.fixture(scope="module")
def spreading(method_name):
    """Whether the method spreads an effect over neighbouring features (SPREADING)."""
    return method_name in SPREADING


@pytest.fixture(scope="module")
def batch_coupled(method_name):
    """Whether an example's answer depends on the rest of the batch (BATCH_COUPLED)."""
    return method_name in BATCH_COUPLED
