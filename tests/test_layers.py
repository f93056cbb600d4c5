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
from tests import testdata

NHWC = ("NHWC", "HWIO", "NHWC")

# Test inputs are drawn as in tests/testdata.py.


@testdata.jit(static_argnums=1)
def _normals(keys, shapes):
    """[jax.random.normal(keys[i], shapes[i]), ...], drawn by one program."""
    return [jax.random.normal(key, shape) for key, shape in zip(keys, shapes)]


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
    ref = lambda x, w: lax.conv_general_dilated(
        x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC
    )
    ours = lambda x, w: layers.conv_general_dilated(
        x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC
    )
    x_shape, w_shape = (3, *hw, cin), (*kernel, cin, cout)
    out = jax.eval_shape(ref, *(jax.ShapeDtypeStruct(s, jnp.float32) for s in (x_shape, w_shape)))
    # x, w and the output cotangent g from keys kx, kw, kg = split(key(0), 3)
    x, w, g = _normals(jax.random.split(jax.random.key(0), 3), (x_shape, w_shape, out.shape))
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    _, ref_vjp = jax.vjp(ref, x, w)
    _, our_vjp = jax.vjp(jax.jit(ours), x, w)
    for a, b in zip(our_vjp(g), ref_vjp(g)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_depthwise_falls_back_to_lax():
    x = testdata.normal(jax.random.key(1), (2, 6, 6, 4))
    w = testdata.normal(jax.random.key(2), (3, 3, 1, 4))
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
    assert layers.model_conv(True) is (layers.im2col_conv if cpu else None)
    assert layers.model_conv(False) is (layers.hybrid_conv if cpu else None)


def test_use_conv_picks_the_implementation_a_model_traces_with():
    from fmi_jax import models

    model = models.get_model("cnn_fmnist", features=(4, 8), pool=(True, True), dense=(8,))
    x = testdata.uniform(jax.random.key(0), (2, 12, 12, 1))
    variables = testdata.init(model, x, 1)
    outs = {}
    for name in layers.CONV_IMPLEMENTATIONS:
        with layers.use_conv(name):
            for train in (True, False):
                want = {
                    "xla": None,
                    "matmul_grad": layers.conv_general_dilated,
                    "im2col": layers.im2col_conv,
                    "hybrid": layers.hybrid_conv,
                }.get(name)
                if name == "auto":
                    assert layers.model_conv(train) is (
                        (layers.im2col_conv if train else layers.hybrid_conv)
                        if jax.default_backend() == "cpu"
                        else None
                    )
                else:
                    assert layers.model_conv(train) is want
            outs[name] = model.apply(variables, x)
    assert layers.model_conv(True) is not None or jax.default_backend() != "cpu"  # restored
    for name, out in outs.items():  # the same function, rounding apart
        np.testing.assert_allclose(out, outs["xla"], rtol=1e-5, atol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match="unknown conv implementation 'cudnn'; choose one of"):
        with layers.use_conv("cudnn"):
            pass


@pytest.mark.parametrize("impl", ["im2col_conv", "hybrid_conv"])
@pytest.mark.parametrize("hw,cin,cout,kernel,strides,padding,dilation", CASES)
def test_eval_convs_forward_and_both_autodiff_modes_match_lax(
    impl, hw, cin, cout, kernel, strides, padding, dilation
):
    # x, w and the tangent from keys kx, kw, kt = split(key(5), 3)
    x_shape = (2, *hw, cin)
    x, w, tangent = _normals(
        jax.random.split(jax.random.key(5), 3), (x_shape, (*kernel, cin, cout), x_shape)
    )
    conv = lambda impl: (
        lambda x, w: impl(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC)
    )
    ours, ref = conv(getattr(layers, impl)), conv(lax.conv_general_dilated)
    loss = lambda f: lambda x, w: (f(x, w) ** 2).sum()

    @jax.jit  # forward, reverse and forward mode (no custom_vjp), one program
    def ours_all(x, w, tangent):
        return (
            ours(x, w),
            jax.grad(loss(ours), (0, 1))(x, w),
            jax.jvp(lambda v: ours(v, w), (x,), (tangent,))[1],
        )

    forward, grads, jvp = ours_all(x, w, tangent)
    np.testing.assert_allclose(forward, ref(x, w), rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, jax.grad(loss(ref), (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        jvp,
        jax.jvp(lambda v: ref(v, w), (x,), (tangent,))[1],
        rtol=1e-4,
        atol=1e-4,
    )


def test_hybrid_conv_runs_xla_forward_and_im2col_input_gradient():
    """Without derivatives the program holds XLA's convolution only; the input
    gradient adds one matmul (im2col's transpose), not a transposed convolution, and
    nothing for the weights' tangent, which is a symbolic zero."""
    x = testdata.normal(jax.random.key(1), (2, 8, 8, 3))
    w = testdata.normal(jax.random.key(2), (3, 3, 3, 4))
    conv = lambda x: layers.hybrid_conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
    forward = str(jax.make_jaxpr(conv)(x))
    assert forward.count("conv_general_dilated") == 1 and "dot_general" not in forward
    backward = str(jax.make_jaxpr(jax.grad(lambda x: (conv(x) ** 2).sum()))(x))
    assert backward.count("conv_general_dilated") == 1
    assert backward.count("dot_general") == 1


def test_im2col_falls_back_to_lax_for_grouped_convolutions():
    x = testdata.normal(jax.random.key(1), (2, 6, 6, 4))
    w = testdata.normal(jax.random.key(2), (3, 3, 1, 4))
    kwargs = dict(dimension_numbers=NHWC, feature_group_count=4)
    np.testing.assert_allclose(
        layers.im2col_conv(x, w, (1, 1), "SAME", **kwargs),
        lax.conv_general_dilated(x, w, (1, 1), "SAME", **kwargs),
        rtol=1e-6,
    )


def test_vmap_and_jit():
    x = testdata.normal(jax.random.key(3), (4, 2, 7, 7, 3))
    w = testdata.normal(jax.random.key(4), (3, 3, 3, 2))
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
    x = testdata.normal(jax.random.key(1), (3, 7, 9, 4))
    for window in (2, 3):
        want = nn.max_pool(x, (window, window), strides=(window, window))
        np.testing.assert_array_equal(layers.max_pool(x, window), want)


@pytest.mark.parametrize("window", [2, 3])
def test_max_pool_gradient_equals_flax_ties_included(window):
    # Values from {0, 1, 2} on a 7x9 map: most windows hold ties, some of the maximum.
    x = testdata.randint(jax.random.key(2), (2, 7, 9, 3), 0, 3).astype(jnp.float32)
    g = testdata.normal(jax.random.key(3), (2, 7 // window, 9 // window, 3))
    ours = jax.vjp(lambda v: layers.max_pool(v, window), x)[1](g)[0]
    theirs = jax.vjp(lambda v: nn.max_pool(v, (window, window), strides=(window, window)), x)[1](g)
    np.testing.assert_array_equal(ours, theirs[0])
    # Each window's gradient lands on exactly one position.
    assert int((ours != 0).sum()) == g.size


@pytest.mark.parametrize("window", [2, 3])
def test_max_pool_second_derivatives_equal_flax_ties_included(window):
    """Forward over reverse (a Hessian, as ShapleyCAM's Hessian-vector product takes) goes
    through the JVP rule's own derivative: its primal must route ties to the first
    maximum too, or the Hessian splits them where the gradient does not."""
    x = testdata.randint(jax.random.key(4), (2, 7, 9, 3), 0, 3).astype(jnp.float32)
    w = testdata.normal(jax.random.key(5), (2, 7 // window, 9 // window, 3))

    def curved(pool):
        return lambda v: jax.nn.logsumexp(pool(v) * w)

    ours = jax.hessian(curved(lambda v: layers.max_pool(v, window)))(x)
    theirs = jax.hessian(
        curved(lambda v: nn.max_pool(v, (window, window), strides=(window, window)))
    )(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


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
