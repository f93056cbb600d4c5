"""The matmul weight-gradient convolution equals lax's convolution and its gradients."""

import jax
import numpy as np
import pytest
from jax import lax

from fmi_jax.models import layers

NHWC = ("NHWC", "HWIO", "NHWC")

CASES = [
    # (input HxW, Cin, Cout, kernel, strides, padding, rhs_dilation)
    ((9, 9), 3, 4, (3, 3), (1, 1), "SAME", (1, 1)),
    ((9, 7), 2, 5, (3, 3), (1, 1), "VALID", (1, 1)),
    ((10, 10), 3, 2, (3, 3), (2, 2), "SAME", (1, 1)),
    ((11, 9), 2, 3, (5, 3), (2, 1), ((2, 1), (0, 3)), (1, 1)),
    ((12, 12), 2, 2, (3, 3), (1, 1), "SAME", (2, 2)),
    ((8, 8), 4, 6, (1, 1), (1, 1), "VALID", (1, 1)),
]


@pytest.mark.parametrize("hw,cin,cout,kernel,strides,padding,dilation", CASES)
def test_forward_and_gradients_match_lax(hw, cin, cout, kernel, strides, padding, dilation):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, *hw, cin))
    w = jax.random.normal(kw, (*kernel, cin, cout))
    ref = lambda x, w: lax.conv_general_dilated(
        x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC
    )
    ours = lambda x, w: layers.conv_general_dilated(
        x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC
    )
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, ref(x, w).shape)
    _, ref_vjp = jax.vjp(ref, x, w)
    _, our_vjp = jax.vjp(jax.jit(ours), x, w)
    for a, b in zip(our_vjp(g), ref_vjp(g)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_depthwise_falls_back_to_lax():
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 4))
    w = jax.random.normal(jax.random.key(2), (3, 3, 1, 4))
    f = lambda w, impl: (
        impl(x, w, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=4).sum() ** 2
    )
    np.testing.assert_allclose(
        jax.grad(f)(w, layers.conv_general_dilated),
        jax.grad(f)(w, lax.conv_general_dilated),
        rtol=1e-5,
    )


def test_used_only_for_training_on_cpu():
    assert layers.training_conv(False) is None
    expected = layers.conv_general_dilated if jax.default_backend() == "cpu" else None
    assert layers.training_conv(True) is expected


def test_vmap_and_jit():
    x = jax.random.normal(jax.random.key(3), (4, 2, 7, 7, 3))
    w = jax.random.normal(jax.random.key(4), (3, 3, 3, 2))
    loss = lambda w, x, impl: (impl(x, w, (1, 1), "SAME", dimension_numbers=NHWC) ** 2).sum()
    ours = jax.jit(jax.vmap(jax.grad(loss), (None, 0, None)), static_argnums=2)
    ref = jax.vmap(jax.grad(loss), (None, 0, None))
    np.testing.assert_allclose(
        ours(w, x, layers.conv_general_dilated),
        ref(w, x, lax.conv_general_dilated),
        rtol=1e-4,
        atol=1e-4,
    )
