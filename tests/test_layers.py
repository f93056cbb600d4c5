"""The CPU-friendly layers equal their lax/flax counterparts: the matmul weight-gradient
convolution (training), the im2col convolution (evaluation), and max pooling written as
a reshape and a max."""

import flax.linen as nn
import jax
import jax.numpy as jnp
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


def test_model_conv_is_chosen_per_backend_and_mode():
    cpu = jax.default_backend() == "cpu"
    assert layers.model_conv(True) is (layers.conv_general_dilated if cpu else None)
    assert layers.model_conv(False) is (layers.im2col_conv if cpu else None)


@pytest.mark.parametrize("hw,cin,cout,kernel,strides,padding,dilation", CASES)
def test_im2col_forward_and_both_autodiff_modes_match_lax(
    hw, cin, cout, kernel, strides, padding, dilation
):
    kx, kw, kt = jax.random.split(jax.random.key(5), 3)
    x = jax.random.normal(kx, (2, *hw, cin))
    w = jax.random.normal(kw, (*kernel, cin, cout))
    conv = lambda impl: (
        lambda x, w: impl(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC)
    )
    ours, ref = conv(layers.im2col_conv), conv(lax.conv_general_dilated)
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda x, w: (f(x, w) ** 2).sum()
    for a, b in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    tangent = jax.random.normal(kt, x.shape)  # forward mode works: no custom rule
    np.testing.assert_allclose(
        jax.jvp(lambda v: ours(v, w), (x,), (tangent,))[1],
        jax.jvp(lambda v: ref(v, w), (x,), (tangent,))[1],
        rtol=1e-4,
        atol=1e-4,
    )


def test_im2col_falls_back_to_lax_for_grouped_convolutions():
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 4))
    w = jax.random.normal(jax.random.key(2), (3, 3, 1, 4))
    kwargs = dict(dimension_numbers=NHWC, feature_group_count=4)
    np.testing.assert_allclose(
        layers.im2col_conv(x, w, (1, 1), "SAME", **kwargs),
        lax.conv_general_dilated(x, w, (1, 1), "SAME", **kwargs),
        rtol=1e-6,
    )


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


def test_max_pool_forward_equals_flax_including_odd_sizes():
    x = jax.random.normal(jax.random.key(1), (3, 7, 9, 4))
    for window in (2, 3):
        want = nn.max_pool(x, (window, window), strides=(window, window))
        np.testing.assert_array_equal(layers.max_pool(x, window), want)


@pytest.mark.parametrize("window", [2, 3])
def test_max_pool_gradient_equals_flax_ties_included(window):
    # Values from {0, 1, 2} on a 7x9 map: most windows hold ties, some of the maximum.
    x = jax.random.randint(jax.random.key(2), (2, 7, 9, 3), 0, 3).astype(jnp.float32)
    g = jax.random.normal(jax.random.key(3), (2, 7 // window, 9 // window, 3))
    ours = jax.vjp(lambda v: layers.max_pool(v, window), x)[1](g)[0]
    theirs = jax.vjp(lambda v: nn.max_pool(v, (window, window), strides=(window, window)), x)[1](g)
    np.testing.assert_array_equal(ours, theirs[0])
    # Each window's gradient lands on exactly one position.
    assert int((ours != 0).sum()) == g.size


def test_max_pool_ties_route_to_the_first_maximum_in_forward_and_reverse_mode():
    x = jnp.array([[1.0, 5.0], [5.0, 2.0]]).reshape(1, 2, 2, 1)
    grad = jax.grad(lambda v: layers.max_pool(v, 2).sum())(x)
    np.testing.assert_array_equal(grad.reshape(2, 2), [[0, 1], [0, 0]])
    _, tangent = jax.jvp(lambda v: layers.max_pool(v, 2), (x,), (jnp.arange(4.0).reshape(x.shape),))
    np.testing.assert_array_equal(tangent.reshape(()), 1.0)
    # A window beyond the last full one gets no gradient: VALID pooling drops it.
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    grad = jax.grad(lambda v: layers.max_pool(v, 2).sum())(x)
    np.testing.assert_array_equal(grad.reshape(3, 3), [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
