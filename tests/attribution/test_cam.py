"""The CAM family: known answers on hand-built models, the layer capture, and the edge
cases (dead layers, constant channels, unknown names)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax import attribution as A
from fmi_jax import models
from fmi_jax.attribution.handle import activation_and_gradient
from tests import testdata


def numpy_variables(model, x, seed):
    """Variables shaped like ``model.init``'s for inputs like ``x`` (from ``jax.eval_shape``:
    nothing runs), filled by NumPy: kernels ~ N(0, 1 / fan_in), batch-norm scales and
    variances 1, everything else 0. For tests that need some weights but not flax's
    draws, which would compile (threefry, seconds for a full-size model)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            scale = 1 / np.sqrt(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0.0, scale, leaf.shape).astype(leaf.dtype))
        return jnp.asarray(
            np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)
        )

    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree_util.tree_map_with_path(fill, shapes)


# ---------------------------------------------------------------------------------
# A conv head whose Grad-CAM is computable by hand.
#   A = conv1x1(x): A_0 = x, A_1 = 5 - x          (kernel [1, -1], bias [0, 5])
#   y_c = sum_ij sum_k A_ijk W_kc                 (sum pooling, then a linear head)
# so dy_c / dA_ijk = W_kc everywhere, alpha_k = W_kc, and with W = [[2, 0], [1, 1]]
#   Grad-CAM(class 0) = ReLU(2 x + (5 - x)) = x + 5
#   Grad-CAM(class 1) = ReLU(5 - x)
# ---------------------------------------------------------------------------------
W = np.array([[2.0, 0.0], [1.0, 1.0]], np.float32)


class SumHead(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = nn.Conv(2, (1, 1), name="features")(x)
        return a.sum(axis=(1, 2)) @ self.param("w", lambda *_: jnp.asarray(W))


ARANGE = jnp.arange(16.0).reshape(1, 4, 4, 1)
HEAD = SumHead()
HEAD_VARS = {
    "params": {
        "features": {"kernel": jnp.array([[[[1.0, -1.0]]]]), "bias": jnp.array([0.0, 5.0])},
        "w": jnp.asarray(W),
    }
}


def test_grad_cam_of_a_hand_built_conv_head():
    x = ARANGE[0, ..., 0]
    for target, expected in ((0, x + 5), (1, jnp.maximum(5 - x, 0))):
        got = A.grad_cam((HEAD, HEAD_VARS), ARANGE, target, layer="features", upsample=False)
        np.testing.assert_array_equal(got[0], expected)
    raw = A.grad_cam((HEAD, HEAD_VARS), ARANGE, 1, layer="features", relu=False, upsample=False)
    np.testing.assert_array_equal(raw[0], 5 - x)


def test_grad_cam_plus_plus_of_a_hand_built_conv_head():
    """g = W_kc everywhere, so a_k = g^2 / (2 g^2 + S_k g^3) with S_k = sum A_k and
    alpha_k = 16 a_k ReLU(W_kc)."""
    a = np.stack([ARANGE[0, ..., 0], 5 - ARANGE[0, ..., 0]], -1)
    for target in (0, 1):
        g = W[:, target]
        s = a.sum(axis=(0, 1))
        denom = 2 * g**2 + s * g**3
        pixel_weight = np.where(denom != 0, g**2 / np.where(denom != 0, denom, 1), 0)
        alpha = 16 * pixel_weight * np.maximum(g, 0)
        expected = np.maximum((a * alpha).sum(-1), 0)
        got = A.grad_cam_plus_plus(
            (HEAD, HEAD_VARS), ARANGE, target, layer="features", upsample=False
        )
        np.testing.assert_allclose(got[0], expected, rtol=1e-6)


def test_grad_cam_elementwise_of_a_hand_built_conv_head():
    """g = W_kc everywhere: the element-wise map is ReLU(W_0c x) + ReLU(W_1c (5 - x)),
    where HiResCAM sums before its ReLU, ReLU(W_0c x + W_1c (5 - x)): for class 0 the two
    differ wherever 5 - x < 0 (2 x against x + 5)."""
    x = ARANGE[0, ..., 0]
    expected = {0: 2 * x + jnp.maximum(5 - x, 0), 1: jnp.maximum(5 - x, 0)}
    for target in (0, 1):
        got = A.grad_cam_elementwise(
            (HEAD, HEAD_VARS), ARANGE, target, layer="features", upsample=False
        )
        np.testing.assert_array_equal(got[0], expected[target])
    hires = A.hires_cam((HEAD, HEAD_VARS), ARANGE, 0, layer="features", upsample=False)
    np.testing.assert_array_equal(hires[0], x + 5)


def test_grad_cam_elementwise_is_layer_cam_on_a_non_negative_layer(small_cnn, every_cam):
    """ReLU(g A) = ReLU(g) A wherever A >= 0: after a ReLU the two methods are one."""
    model, variables, x = small_cnn
    assert float(A.flax_model(model, variables).capture(x, "conv2")[1].min()) >= 0
    maps = every_cam(variables, x, jnp.arange(4))
    np.testing.assert_allclose(maps["grad_cam_elementwise"], maps["layer_cam"], atol=1e-7)
    assert float(jnp.abs(maps["layer_cam"]).max()) > 0


# ---------------------------------------------------------------------------------
# ShapleyCAM on a head that is quadratic in its 1 x 1 layer v = A[:, 0, 0, :]:
#   y_c = v . w_c + (v . q_c)^2 / 2 + b_c
# g = w_c + (v . q_c) q_c and H v = (v . q_c) q_c, so the ShapleyCAM map (one position)
# is (g - H v / 2) . v = v . w_c + (v . q_c)^2 / 2 = y_c(v) - y_c(0): each unit's exact
# Shapley value, summed. Grad-CAM's g . v counts the interaction twice.
# ---------------------------------------------------------------------------------
QW = np.asarray(testdata.normal(jax.random.key(21), (3, 2)))
QQ = np.asarray(testdata.normal(jax.random.key(22), (3, 2)))


class QuadraticHead(nn.Module):
    @nn.compact
    def __call__(self, x):
        v = nn.Conv(3, (1, 1), name="features")(x)
        v = v.reshape(v.shape[0], -1)
        w, q = self.param("w", lambda *_: QW), self.param("q", lambda *_: QQ)
        return v @ w + 0.5 * (v @ q) ** 2 + jnp.array([0.5, -2.0])


def test_shapley_cam_of_a_quadratic_head_is_the_exact_shapley_total():
    x = testdata.normal(jax.random.key(23), (5, 1, 1, 2))
    model = QuadraticHead()
    variables = testdata.init(model, x, 24)
    handle = A.flax_model(model, variables)
    _, a = handle.capture(x, "features")
    v = np.asarray(a, np.float64).reshape(5, 3)
    for target in (0, 1):
        w, q = QW[:, target].astype(np.float64), QQ[:, target].astype(np.float64)
        shapley_total = v @ w + 0.5 * (v @ q) ** 2  # y_c(v) - y_c(0)
        options = dict(layer="features", relu=False, upsample=False)
        got = A.shapley_cam(handle, x, target, score="logit", **options)[:, 0, 0]
        np.testing.assert_allclose(got, shapley_total, rtol=1e-5, atol=1e-6)
        grad_cam = A.grad_cam(handle, x, target, **options)[:, 0, 0]
        np.testing.assert_allclose(grad_cam, shapley_total + 0.5 * (v @ q) ** 2, rtol=1e-5)


def test_shapley_cam_is_grad_cam_for_logits_and_a_full_hessian_for_rest(small_cnn):
    """After conv2 the small CNN is piecewise linear (ReLU, max-pool, dense): its logits
    have no curvature there, so with score='logit' ShapleyCAM is Grad-CAM. ReST's
    log-softmax has curvature; its weights are checked against the full Hessian of the
    utility in the layer, built by jax.hessian, one example at a time."""
    model, variables, x = small_cnn
    handle = A.flax_model(model, variables)
    target = jnp.array([0, 1, 2, 3])
    options = dict(layer="conv2", relu=False, upsample=False)
    logit = A.shapley_cam(handle, x, target, score="logit", **options)
    np.testing.assert_allclose(logit, A.grad_cam(handle, x, target, **options), atol=1e-7)
    _, activation = handle.capture(x, "conv2")

    def utility(a, image, c):
        logits = handle.logits_with(image[None], "conv2", a[None])[0]
        return logits[c] + jax.nn.log_softmax(logits)[c]

    @jax.jit
    def expected_maps(activation, x, target):
        def one(a, image, c):
            g = jax.grad(utility)(a, image, c)
            hessian = jax.hessian(utility)(a, image, c).reshape(a.size, a.size)
            hvp = (hessian @ a.reshape(-1)).reshape(a.shape)
            weights = jnp.mean(g - 0.5 * hvp, axis=(0, 1))
            return jnp.sum(weights * a, axis=-1)

        return jax.vmap(one)(activation, x, target)

    expected = expected_maps(activation, x, target)
    rest = A.shapley_cam(handle, x, target, **options)
    np.testing.assert_allclose(rest, expected, rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(rest - logit).max()) > 1e-3 * float(jnp.abs(logit).max())


def test_cams_agree_where_the_gradient_is_spatially_constant():
    """Under sum pooling ``g`` is the same at every position, so Grad-CAM's mean, XGrad-CAM's
    activation-weighted mean and HiResCAM's element-wise product all weigh channel k
    by W_kc, and LayerCAM by ReLU(W_kc)."""
    a = np.stack([ARANGE[0, ..., 0], 5 - ARANGE[0, ..., 0]], -1)
    for target in (0, 1):
        options = dict(layer="features", relu=False, upsample=False)
        expected = a @ W[:, target]
        for method in (A.grad_cam, A.xgrad_cam, A.hires_cam):
            got = method((HEAD, HEAD_VARS), ARANGE, target, **options)
            np.testing.assert_allclose(got[0], expected, rtol=1e-6, err_msg=method.__name__)
        got = A.layer_cam((HEAD, HEAD_VARS), ARANGE, target, **options)
        np.testing.assert_allclose(got[0], a @ np.maximum(W[:, target], 0), rtol=1e-6)


# ---------------------------------------------------------------------------------
# A flatten-and-dense head, where the gradient differs from position to position.
#   A = conv1x1(x) as in SumHead;  y_c = sum_ijk A_ijk V_ijkc + b_c
# so g_ijk = V_ijkc, and with P_ijk = V_ijkc A_ijk (the logit's share of each element):
#   HiResCAM = sum_k P_k;  XGrad-CAM weights W_k = sum_ij P_k / sum_ij A_k;
#   LayerCAM = sum_k ReLU(V_kc) A_k;  zeroing channel k lowers y_c by sum_ij P_k.
# Channel 1 (5 - x) sums to -40: the cases with a negative channel total are covered.
# ---------------------------------------------------------------------------------
FLAT_V = np.asarray(testdata.normal(jax.random.key(11), (4, 4, 2, 3)))
FLAT_B = np.array([0.5, -2.0, 40.0], np.float32)


class FlattenHead(nn.Module):
    bias: tuple[float, ...] = tuple(FLAT_B.tolist())

    @nn.compact
    def __call__(self, x):
        a = nn.Conv(2, (1, 1), name="features")(x)
        return jnp.einsum("nijk,ijkc->nc", a, jnp.asarray(FLAT_V)) + jnp.asarray(self.bias)


FLAT_VARS = {"params": {"features": HEAD_VARS["params"]["features"]}}


@pytest.fixture(scope="module")
def flatten_head_maps():
    """Every gradient CAM and Ablation-CAM of every class, before the ReLU, in one program."""
    methods = (A.grad_cam, A.xgrad_cam, A.hires_cam, A.layer_cam, A.ablation_cam)

    @jax.jit
    def run(x):
        options = dict(layer="features", relu=False, upsample=False)
        return {
            m.__name__: [m((FlattenHead(), FLAT_VARS), x, t, **options)[0] for t in range(3)]
            for m in methods
        }

    return jax.tree.map(np.asarray, run(ARANGE))


def test_hires_and_xgrad_cam_conserve_the_logit_and_grad_cam_moves_it(flatten_head_maps):
    a = np.stack([ARANGE[0, ..., 0], 5 - ARANGE[0, ..., 0]], -1)
    for t in range(3):
        share = FLAT_V[..., t] * a  # (4, 4, 2)
        logit = share.sum() + FLAT_B[t]
        hires = flatten_head_maps["hires_cam"][t]
        np.testing.assert_allclose(hires, share.sum(-1), rtol=1e-5, atol=1e-5)
        xgrad_weights = share.sum(axis=(0, 1)) / a.sum(axis=(0, 1))
        xgrad = flatten_head_maps["xgrad_cam"][t]
        np.testing.assert_allclose(xgrad, a @ xgrad_weights, rtol=1e-5, atol=1e-5)
        layer = flatten_head_maps["layer_cam"][t]
        np.testing.assert_allclose(
            layer, (np.maximum(FLAT_V[..., t], 0) * a).sum(-1), rtol=1e-5, atol=1e-5
        )
        # Conservation: both totals are the logit less its bias.
        for name in ("hires_cam", "xgrad_cam"):
            total = flatten_head_maps[name][t].sum()
            scale = np.abs(share).sum()  # float32 sums of terms this large cancel
            np.testing.assert_allclose(total, logit - FLAT_B[t], atol=1e-6 * scale, err_msg=name)
        # Grad-CAM's total is (1/hw) sum_k (sum g_k)(sum A_k): not the logit here.
        grad_cam = flatten_head_maps["grad_cam"][t]
        expected = a @ FLAT_V[..., t].mean(axis=(0, 1))
        np.testing.assert_allclose(grad_cam, expected, rtol=1e-5, atol=1e-5)
        assert abs(grad_cam.sum() - (logit - FLAT_B[t])) > 1.0


def test_ablation_cam_weighs_channels_by_the_relative_drop_of_the_logit(flatten_head_maps):
    a = np.stack([ARANGE[0, ..., 0], 5 - ARANGE[0, ..., 0]], -1)
    for t in range(3):
        share = FLAT_V[..., t] * a
        logit = share.sum() + FLAT_B[t]
        weights = share.sum(axis=(0, 1)) / logit  # (y - y^(k)) / y
        got = flatten_head_maps["ablation_cam"][t]
        np.testing.assert_allclose(got, a @ weights, rtol=1e-4, atol=1e-5)
    # normalize=False keeps the drop itself; batch_size splits the N * K passes.
    run = jax.jit(
        lambda x, batch_size=None: A.ablation_cam(
            (FlattenHead(), FLAT_VARS),
            x,
            2,
            layer="features",
            normalize=False,
            relu=False,
            upsample=False,
            batch_size=batch_size,
        ),
        static_argnames="batch_size",
    )
    x = jnp.concatenate([ARANGE, ARANGE[:, ::-1]])
    whole = run(x)
    for i, image in enumerate(np.asarray(x)[..., 0]):
        a = np.stack([image, 5 - image], -1)
        np.testing.assert_allclose(
            whole[i], a @ (FLAT_V[..., 2] * a).sum(axis=(0, 1)), rtol=1e-4, atol=1e-4
        )
    np.testing.assert_allclose(run(x, batch_size=3), whole, rtol=1e-6, atol=1e-6)


def test_ablation_cam_divides_by_the_magnitude_of_a_negative_logit():
    """Class 2's bias lowered to -100 makes its logit negative. The drops are the same
    (the bias cancels), and dividing them by |y_c| keeps the map's orientation, where
    the paper's y_c would turn every weight's sign."""
    a = np.stack([ARANGE[0, ..., 0], 5 - ARANGE[0, ..., 0]], -1)
    share = FLAT_V[..., 2] * a
    logit = share.sum() - 100.0
    assert logit < 0
    head = FlattenHead(bias=(0.5, -2.0, -100.0))
    run = jax.jit(
        lambda x, normalize: A.ablation_cam(
            (head, FLAT_VARS),
            x,
            2,
            layer="features",
            normalize=normalize,
            relu=False,
            upsample=False,
        ),
        static_argnames="normalize",
    )
    drop = a @ share.sum(axis=(0, 1))
    np.testing.assert_allclose(run(ARANGE, False)[0], drop, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(run(ARANGE, True)[0], drop / abs(logit), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------
# Eigen-CAM of a rank-one layer: A_ijk = x_ij v_k has the single right singular vector
# v / |v| (sign fixed by sum v > 0), so the map is x |v|, or (x - mean x) |v| centred.
# ---------------------------------------------------------------------------------
EIGEN_V = np.array([2.0, -1.0, 0.5], np.float32)


class RankOne(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = Identity(name="features")(x[..., :1] * jnp.asarray(EIGEN_V))
        return a.sum(axis=(1, 2)) @ jnp.eye(3)


class Identity(nn.Module):
    def __call__(self, a):
        return a


def test_eigen_cam_of_a_rank_one_layer():
    x = testdata.uniform(jax.random.key(12), (2, 5, 5, 1)) + 0.1
    norm = np.linalg.norm(EIGEN_V)
    run = jax.jit(
        lambda x, target, center: A.eigen_cam(
            (RankOne(), {}), x, target, layer="features", center=center, upsample=False
        ),
        static_argnames="center",
    )
    image = np.asarray(x)[..., 0]
    np.testing.assert_allclose(run(x, 0, False), image * norm, rtol=1e-5)
    centred = (image - image.mean(axis=(1, 2), keepdims=True)) * norm
    np.testing.assert_allclose(run(x, 0, True), np.maximum(centred, 0), rtol=1e-4, atol=1e-5)
    # Class-agnostic: another target, the same map; a target the model lacks is refused.
    np.testing.assert_array_equal(run(x, 2, False), run(x, 0, False))
    with pytest.raises(ValueError, match=r"target out of range.*class 3"):
        A.eigen_cam((RankOne(), {}), x, 3, layer="features")


class ThreeChannels(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = Identity(name="features")(x)
        return a.sum(axis=(1, 2))


def test_fem_weighs_channels_by_their_share_of_outliers():
    """The layer is the input: a channel with one peak in 16 positions has one position
    above mean + 2 sd (weight 1/16), a constant channel none, and a channel with 4
    peaks none at k = 2 (its peaks sit 1.73 sd above the mean) but 4 at k = 1."""
    peaks = np.zeros((1, 4, 4, 3), np.float32)
    peaks[0, 1, 2, 0] = 8.0
    peaks[0, :, :, 1] = 3.0
    peaks[0, ::2, ::2, 2] = 1.0
    x = jnp.asarray(peaks)
    run = lambda k: A.fem((ThreeChannels(), {}), x, layer="features", k=k, upsample=False)
    np.testing.assert_allclose(run(2.0)[0], peaks[0, :, :, 0] / 16, rtol=1e-6)
    np.testing.assert_allclose(
        run(1.0)[0], peaks[0, :, :, 0] / 16 + peaks[0, :, :, 2] * 4 / 16, rtol=1e-6
    )
    with pytest.raises(ValueError, match="k must be a finite number"):
        A.fem((ThreeChannels(), {}), x, layer="features", k=float("nan"))


def test_upsampling_is_bilinear_with_half_pixel_centres():
    """The values PyTorch's interpolate(mode='bilinear', align_corners=False) gives."""
    got = A.upsample_maps(jnp.arange(4.0).reshape(1, 2, 2), (4, 4))[0]
    expected = [
        [0.0, 0.25, 0.75, 1.0],
        [0.5, 0.75, 1.25, 1.5],
        [1.5, 1.75, 2.25, 2.5],
        [2.0, 2.25, 2.75, 3.0],
    ]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def _torch_bilinear(maps, size):
    """PyTorch's interpolate(mode='bilinear', align_corners=False) in NumPy: output pixel
    d reads the input at s = (d + 0.5) * in / out - 0.5 (clamped at 0), interpolating
    between floor(s) and the next pixel (the last one repeated), in each axis."""

    def weights(n_in, n_out):
        w = np.zeros((n_out, n_in))
        for d in range(n_out):
            s = max((d + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = int(s)
            w[d, i0] += 1 - (s - i0)
            w[d, min(i0 + 1, n_in - 1)] += s - i0
        return w

    return np.einsum(
        "Hh,nhw,Ww->nHW", weights(maps.shape[1], size[0]), maps, weights(maps.shape[2], size[1])
    )


@pytest.mark.parametrize("shape, size", [((7, 7), (28, 28)), ((8, 8), (5, 5)), ((3, 6), (9, 4))])
def test_upsampling_is_torchs_bilinear_growing_or_shrinking(shape, size):
    """A layer larger than the input shrinks its map: interpolated as PyTorch does, not
    antialiased (averaged over each output pixel's footprint)."""
    maps = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    got = A.upsample_maps(jnp.asarray(maps), size)
    np.testing.assert_allclose(got, _torch_bilinear(maps, size), rtol=1e-5, atol=1e-6)


def test_upsample_resizes_the_layer_map_to_the_input(small_cnn):
    model, variables, x = small_cnn  # 16 x 16 images; conv2 comes after one 2 x 2 pool
    small = A.grad_cam((model, variables), x, 2, layer="conv2", upsample=False)
    big = A.grad_cam((model, variables), x, 2, layer="conv2")
    assert small.shape == (4, 8, 8) and big.shape == (4, 16, 16)
    np.testing.assert_allclose(big, A.upsample_maps(small, (16, 16)), rtol=1e-6)


# ---------------------------------------------------------------------------------
# Score-CAM on a model whose layer is a set of known masks.
#   layer 'masks' outputs the fixed channels M_k, whatever the image;
#   logits = sum_ij x_ij V_ijc (a linear model of the image).
# The normalised mask of a binary channel is the channel itself, a constant channel
# gets the zero mask, so alpha_k = softmax(sum_ij x_ij H_kij V_ij)_t and the map is
# ReLU(sum_k alpha_k M_k).
# ---------------------------------------------------------------------------------
SIDE, CLASSES = 4, 3
MASKS = np.zeros((SIDE, SIDE, 4), np.float32)
MASKS[:2, :, 0] = 1  # top half
MASKS[:, :2, 1] = 1  # left half
MASKS[..., 2] = 1  # constant: no spatial information
MASKS[1:3, 1:3, 3] = 3  # a centre square at another height
V = np.asarray(testdata.normal(jax.random.key(3), (SIDE, SIDE, CLASSES)))


class MaskLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        return jnp.asarray(MASKS)[None] + 0.0 * x[..., :1]


class MaskModel(nn.Module):
    @nn.compact
    def __call__(self, x):
        MaskLayer(name="masks")(x)
        return jnp.einsum("nhwc,hwk->nk", x, jnp.asarray(V))


def _expected_score_cam(x, target):
    peak = MASKS.max(axis=(0, 1))
    low = MASKS.min(axis=(0, 1))
    normalised = np.where(peak > low, (MASKS - low) / np.where(peak > low, peak - low, 1), 0)
    maps = []
    for xi, t in zip(np.asarray(x), target):
        logits = np.einsum("hw,hwk,hwc->kc", xi[..., 0], normalised, V)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        maps.append(np.maximum((MASKS * probs[:, t]).sum(-1), 0))
    return np.stack(maps)


def test_score_cam_with_known_channel_masks():
    x = testdata.uniform(jax.random.key(4), (3, SIDE, SIDE, 1))
    target = np.array([0, 2, 1])
    # Each call compiled as one program (un-jitted, every primitive compiles on its own).
    run = jax.jit(
        lambda x, target, batch_size=None: A.score_cam(
            (MaskModel(), {}), x, target, layer="masks", batch_size=batch_size
        ),
        static_argnames="batch_size",
    )
    got = run(x, target)
    np.testing.assert_allclose(got, _expected_score_cam(x, target), rtol=1e-5, atol=1e-6)
    # batch_size splits the N * K = 12 masked passes; the answer stays the same.
    chunked = run(x, target, batch_size=5)
    np.testing.assert_allclose(chunked, got, rtol=1e-6, atol=1e-7)


class SoftmaxMaskModel(nn.Module):
    """MaskModel ending in a softmax, as many ported models do."""

    @nn.compact
    def __call__(self, x):
        return jax.nn.softmax(MaskModel(name="inner")(x))


def test_methods_that_take_the_softmax_refuse_a_model_that_returns_probabilities():
    # The softmax of a probability is not the probability: Score-CAM's weights, the
    # ReST utility and Finer-CAM's reference weights would all be wrong, silently.
    x = testdata.uniform(jax.random.key(4), (2, SIDE, SIDE, 1))
    probs = (SoftmaxMaskModel(), {})
    for method, options in [
        (A.score_cam, {}),
        (A.shapley_cam, {}),
        (A.finer_cam, {}),
    ]:
        name = method.__name__
        with pytest.raises(
            ValueError, match=rf"^{name}: the model's outputs look like probabilities"
        ):
            method(probs, x, layer="inner/masks", **options)
    # A model with one score per example is told what a classifier must return.
    for method in (A.score_cam, A.shapley_cam, A.finer_cam):
        with pytest.raises(ValueError, match=r"to logits of shape \(2, classes\), got \(2,\)"):
            method(A.flax_model(MaskModel(), {}, method=lambda m, x: m(x)[:, 0]), x, layer="masks")
    # The logit utility takes no softmax; and the logits themselves are accepted.
    assert A.shapley_cam(probs, x, layer="inner/masks", score="logit").shape == (2, SIDE, SIDE)
    target = np.array([0, 2])
    np.testing.assert_allclose(
        A.score_cam((MaskModel(), {}), x, target, layer="masks"),
        _expected_score_cam(x, target),
        rtol=1e-5,
        atol=1e-6,
    )


# ---------------------------------------------------------------------------------
# Layer capture, names and edge cases on the codebase's own models. The tests below run
# un-jitted on one model and input shape (small_cnn), so the programs XLA compiles for
# each primitive are shared between them; test_target_none_... needs them for its eager
# calls anyway.
# ---------------------------------------------------------------------------------
ALL_CAMS = (
    A.grad_cam,
    A.grad_cam_plus_plus,
    A.xgrad_cam,
    A.hires_cam,
    A.layer_cam,
    A.grad_cam_elementwise,
    A.shapley_cam,
    A.eigen_grad_cam,
    A.finer_cam,
    A.score_cam,
    A.ablation_cam,
    A.eigen_cam,
    A.kpca_cam,
    A.fem,
)


@pytest.fixture(scope="module")
def small_cnn():
    model = models.get_model("cnn_fmnist", features=(4, 6, 8), dense=(16,))
    x = testdata.uniform(jax.random.key(5), (4, 16, 16, 1))
    # Un-jitted: the init's forward pass compiles the programs the eager tests reuse.
    variables = model.init(jax.random.key(6), x)
    return model, variables, x


@pytest.fixture(scope="module")
def every_cam(small_cnn):
    """Every CAM of small_cnn's layer conv2, for given variables, images and targets, in
    one compiled program."""
    model = small_cnn[0]
    return jax.jit(
        lambda variables, x, target: {
            m.__name__: m((model, variables), x, target, layer="conv2") for m in ALL_CAMS
        }
    )


def test_capture_leaves_the_outputs_unchanged(small_cnn):
    model, variables, x = small_cnn
    plain = model.apply(variables, x)
    logits, activation = A.flax_model(model, variables).capture(x, "conv2")
    np.testing.assert_array_equal(logits, plain)
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    np.testing.assert_array_equal(activation, state["intermediates"]["conv2"]["__call__"][0])
    # Grad-CAM itself does not change what the model computes afterwards either.
    A.grad_cam((model, variables), x, layer="conv2")
    np.testing.assert_array_equal(model.apply(variables, x), plain)


def test_grad_cam_gradient_is_the_gradient_into_the_layer(small_cnn):
    """dy/dA by the zero-delta interception equals dy/dA by finite differences of the
    rest of the network, evaluated through the same interception. (The direction is
    zero where the ReLU is off: max-pooling over tied zeros is not differentiable, and
    a central difference there measures (max + min) / 2, not a gradient.)"""
    model, variables, x = small_cnn
    target = 3
    _, activation = A.flax_model(model, variables).capture(x, "conv3")
    direction = testdata.normal(jax.random.key(7), activation.shape) * (activation > 0)

    def target_logit(delta):
        logits, _ = A.flax_model(model, variables).capture(x, "conv3", delta=delta)
        return logits[:, target].sum()

    grad = jax.grad(target_logit)(jnp.zeros_like(activation))
    eps = 1e-3
    numeric = (target_logit(eps * direction) - target_logit(-eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(grad, direction), numeric, rtol=2e-2)
    weights = grad.mean(axis=(1, 2), keepdims=True)
    expected = jax.nn.relu((weights * activation).sum(-1))
    got = A.grad_cam((model, variables), x, target, layer="conv3", upsample=False)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["cnn_fmnist", "cnn_mnist", "cnn_tunable", "simple_cnn"])
def test_every_conv_layer_of_every_model_can_be_named(name):
    model = models.get_model(name)
    x = testdata.uniform(jax.random.key(8), (2, 8, 8, 1))
    variables = numpy_variables(model, x, 9)
    names = A.layer_names((model, variables), x)
    layers = model.conv_layer_names
    for layer in layers:
        assert layer in names
    # Every layer's map in one compiled program (un-jitted, each full-size model would
    # compile every primitive of its forward and backward pass on its own).
    every_map = jax.jit(
        lambda variables, x: {
            layer: A.grad_cam((model, variables), x, layer=layer) for layer in layers
        }
    )(variables, x)
    for layer in layers:
        maps = every_map[layer]
        assert maps.shape == (2, 8, 8) and bool(jnp.isfinite(maps).all()), layer


def _numpy_projections(maps, center):
    """Each ``(h, w, K)`` map's positions projected on their first principal direction by
    NumPy's LAPACK SVD (channels centred over positions when ``center``), signed so that
    the direction sums to at least 0: Eigen-CAM's rule, in float64."""
    projections = []
    for a in np.asarray(maps, np.float64):
        matrix = a.reshape(-1, a.shape[-1])
        if center:
            matrix = matrix - matrix.mean(axis=0)
        first = np.linalg.svd(matrix)[2][0]
        first = -first if first.sum() < 0 else first
        projections.append((matrix @ first).reshape(a.shape[:2]))
    return np.stack(projections)


def test_eigen_cam_equals_a_numpy_svd_of_the_activation(small_cnn):
    """The first principal direction by NumPy's LAPACK SVD, with the same sign rule."""
    model, variables, x = small_cnn
    _, activation = A.flax_model(model, variables).capture(x, "conv2")
    run = jax.jit(
        lambda x, center: A.eigen_cam(
            (model, variables), x, layer="conv2", center=center, relu=False, upsample=False
        ),
        static_argnames="center",
    )
    for center in (False, True):
        expected = _numpy_projections(activation, center)
        np.testing.assert_allclose(run(x, center), expected, rtol=1e-4, atol=1e-5)


def test_eigen_grad_cam_equals_a_numpy_svd_of_the_gradient_times_activation(small_cnn):
    """pytorch-grad-cam's get_2d_projection (centred) of g * A, with Eigen-CAM's sign."""
    model, variables, x = small_cnn
    handle = A.flax_model(model, variables)
    target = jnp.array([3, 2, 1, 0])
    activation, gradient = activation_and_gradient(handle, x, target, "conv2")
    for center in (False, True):
        expected = _numpy_projections(activation * gradient, center)
        got = A.eigen_grad_cam(
            handle, x, target, layer="conv2", center=center, relu=False, upsample=False
        )
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


def test_eigen_smooth_projects_the_contributions(small_cnn):
    """Grad-CAM with eigen_smooth is the centred projection of ``mean(g) A`` (NumPy's
    SVD), HiResCAM with it is Eigen-Grad-CAM centred, and Finer-CAM and ShapleyCAM
    take it too."""
    model, variables, x = small_cnn
    handle = A.flax_model(model, variables)
    target = jnp.array([3, 2, 1, 0])
    activation, gradient = activation_and_gradient(handle, x, target, "conv2")
    raw = dict(layer="conv2", relu=False, upsample=False)
    maps = jax.jit(
        lambda x: {
            "grad_cam": A.grad_cam(handle, x, target, eigen_smooth=True, **raw),
            "hires_cam": A.hires_cam(handle, x, target, eigen_smooth=True, **raw),
            "eigen_grad_cam": A.eigen_grad_cam(handle, x, target, center=True, **raw),
            "finer": A.finer_cam(handle, x, target, alpha=0.0, eigen_smooth=True, **raw),
            "shapley": A.shapley_cam(handle, x, target, score="logit", eigen_smooth=True, **raw),
        }
    )(x)
    weighted = np.asarray(gradient).mean(axis=(1, 2), keepdims=True) * np.asarray(activation)
    expected = _numpy_projections(weighted, center=True)
    np.testing.assert_allclose(maps["grad_cam"], expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(maps["hires_cam"], maps["eigen_grad_cam"], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(maps["finer"], maps["grad_cam"], rtol=1e-4, atol=1e-7)
    # ShapleyCAM with the logit is Grad-CAM on this piecewise linear tail, smoothed too.
    np.testing.assert_allclose(maps["shapley"], maps["grad_cam"], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="eigen_smooth must be True or False"):
        A.grad_cam(handle, x, target, eigen_smooth="no", **raw)


def _numpy_kernel_pca(a, kernel, gamma):
    """scikit-learn's KernelPCA(n_components=1).fit_transform of the centred positions,
    in NumPy: the centred kernel matrix's top eigenvector times the root of its
    eigenvalue, signed by the centred channel sum."""
    matrix = a.reshape(-1, a.shape[-1])
    matrix = matrix - matrix.mean(axis=0)
    dots = matrix @ matrix.T
    if kernel == "sigmoid":
        gram = np.tanh(gamma * dots + 1)
    elif kernel == "rbf":
        squared = ((matrix[:, None, :] - matrix[None, :, :]) ** 2).sum(-1)
        gram = np.exp(-gamma * squared)
    else:
        gram = dots
    n = len(gram)
    centring = np.eye(n) - np.full((n, n), 1 / n)
    values, vectors = np.linalg.eigh(centring @ gram @ centring)
    first = vectors[:, -1] * np.sqrt(max(values[-1], 0))
    first = -first if first @ matrix.sum(axis=1) < 0 else first
    return first.reshape(a.shape[:2])


def test_kpca_cam_is_kernel_pca_and_linear_kernel_pca_is_the_centred_eigen_cam(small_cnn):
    model, variables, x = small_cnn
    handle = A.flax_model(model, variables)
    _, activation = handle.capture(x, "conv2")
    options = dict(layer="conv2", relu=False, upsample=False)
    for kernel, gamma in (("sigmoid", None), ("rbf", 0.5), ("linear", None)):
        got = A.kpca_cam(handle, x, kernel=kernel, gamma=gamma, **options)
        gamma = 1 / activation.shape[-1] if gamma is None else gamma
        expected = [_numpy_kernel_pca(a, kernel, gamma) for a in np.asarray(activation, "f8")]
        np.testing.assert_allclose(got, np.stack(expected), rtol=1e-3, atol=1e-5)
        if kernel == "linear":
            eigen = A.eigen_cam(handle, x, center=True, **options)
            np.testing.assert_allclose(got, eigen, rtol=1e-3, atol=1e-5)


def test_kpca_cam_keeps_its_digits_on_small_activations(small_cnn):
    """conv2 scaled down 1000-fold puts every sigmoid-kernel entry within 1e-6 of
    tanh(1); the kernel is computed minus that constant, so the jitted and the eager
    maps (differently fused) agree, as does a NumPy kernel PCA, up to the scale."""
    model, variables, x = small_cnn
    params = jax.tree.map(lambda p: p, variables["params"])
    for name in ("scale", "bias"):
        params["conv2"]["bn"][name] = params["conv2"]["bn"][name] * 1e-3
    small = A.flax_model(model, {**variables, "params": params})
    options = dict(layer="conv2", relu=False, upsample=False)
    eager = A.kpca_cam(small, x, **options)
    jitted = jax.jit(lambda x: A.kpca_cam(small, x, **options))(x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-4, atol=1e-4 * float(jnp.abs(eager).max()))
    _, activation = small.capture(x, "conv2")
    gamma = 1 / activation.shape[-1]
    expected = [_numpy_kernel_pca(a, "sigmoid", gamma) for a in np.asarray(activation, "f8")]
    scale = np.abs(np.stack(expected)).max()
    np.testing.assert_allclose(eager, np.stack(expected), rtol=1e-3, atol=1e-3 * scale)
    assert A.kpca_cam(small, x, gamma=np.int64(2), **options).shape == (4, 8, 8)


def test_kpca_cam_stays_finite_on_large_activations(small_cnn):
    """conv2 scaled up 1000-fold puts gamma a.b far past where float32 sinh and cosh
    overflow (|z| > 89); the sigmoid kernel itself stays within (-1, 1)."""
    model, variables, x = small_cnn
    params = jax.tree.map(lambda p: p, variables["params"])
    for name in ("scale", "bias"):
        params["conv2"]["bn"][name] = params["conv2"]["bn"][name] * 1e3
    large = A.flax_model(model, {**variables, "params": params})
    _, activation = large.capture(x, "conv2")
    matrix = np.asarray(activation, "f8").reshape(len(x), -1, activation.shape[-1])
    matrix = matrix - matrix.mean(axis=1, keepdims=True)
    gamma = 1 / activation.shape[-1]
    assert gamma * np.abs(np.einsum("bpk,bqk->bpq", matrix, matrix)).max() > 1000
    got = A.kpca_cam(large, x, layer="conv2", relu=False, upsample=False)
    expected = np.stack(
        [_numpy_kernel_pca(a, "sigmoid", gamma) for a in matrix.reshape(activation.shape)]
    )
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * scale)


def test_bad_cam_options_are_one_line_errors(small_cnn):
    model, variables, x = small_cnn
    handle = A.flax_model(model, variables)
    with pytest.raises(ValueError, match=r"score must be one of \('rest', 'logit'\)"):
        A.shapley_cam(handle, x, layer="conv2", score="softmax")
    with pytest.raises(ValueError, match="kernel must be one of"):
        A.kpca_cam(handle, x, layer="conv2", kernel="cosine")
    for gamma in (0.0, -1.0, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="gamma must be a positive number"):
            A.kpca_cam(handle, x, layer="conv2", gamma=gamma)
    # One output: its softmax is 1 whatever the head, and every channel would weigh 1.
    one = nn.Sequential([nn.Conv(2, (1, 1), name="features"), lambda a: a.sum((1, 2))[:, :1]])
    with pytest.raises(ValueError, match="softmax probability of the target, which is 1"):
        A.score_cam((one, one.init(jax.random.key(0), ARANGE)), ARANGE, layer="layers_0")


def test_elementwise_cams_give_nothing_to_positions_the_model_never_reads():
    """12 x 12 images: conv3 is 3 x 3 and the 2 x 2 max-pool after it keeps 1 x 1, so
    conv3's last row and column never reach the head (their gradient is exactly 0).
    HiResCAM and LayerCAM weigh each position by its own gradient and leave them at 0;
    Grad-CAM's channel weights multiply the whole activation, those positions too."""
    model = models.get_model("cnn_fmnist", features=(4, 6, 8), dense=(16,))
    x = testdata.uniform(jax.random.key(13), (3, 12, 12, 1))
    variables = numpy_variables(model, x, 14)
    maps = jax.jit(
        lambda variables, x: {
            m.__name__: m((model, variables), x, 0, layer="conv3", relu=False, upsample=False)
            for m in (A.grad_cam, A.hires_cam, A.layer_cam)
        }
    )(variables, x)
    for name in ("hires_cam", "layer_cam"):
        np.testing.assert_array_equal(maps[name][:, 2, :], 0.0, err_msg=name)
        np.testing.assert_array_equal(maps[name][:, :, 2], 0.0, err_msg=name)
        assert np.abs(maps[name][:, :2, :2]).max() > 0, name  # the window the pool keeps
    assert np.abs(maps["grad_cam"][:, 2, :]).max() > 0


def test_unknown_layer_lists_the_available_ones(small_cnn):
    model, variables, x = small_cnn
    for method in ALL_CAMS:
        with pytest.raises(ValueError, match=r"no layer 'conv9'.*available layers: conv1/conv"):
            method((model, variables), x, layer="conv9")
    message = (
        r"grad_cam: layer 'fc1' returns features .* not an \(N, h, w, channels\) map over the "
        r"image; the layer methods \(A.layer_integrated_gradients and the others, called "
        "directly\\) attribute to its units"
    )
    with pytest.raises(ValueError, match=message):  # exists, but is not a feature map
        A.grad_cam((model, variables), x, layer="fc1")


@pytest.mark.parametrize("bias", [0.0, -1e3], ids=["all-zero-input", "all-negative-pre-relu"])
def test_dead_layers_give_zero_maps_not_nan(small_cnn, every_cam, bias):
    """All-zero activations (a zero image through blocks whose conv and batch norm add
    no bias, or a bias so negative that every ReLU is off): the gradients, the
    Grad-CAM++ denominators and every Score-CAM channel's range are zero."""
    # small_cnn's convs have no bias of their own: the batch norm after each adds it
    # (its running statistics are flax's initial ones, mean 0 and variance 1).
    model, variables, x = small_cnn
    params = jax.tree.map(lambda p: p, variables["params"])
    params["conv2"]["bn"]["bias"] = jnp.full_like(params["conv2"]["bn"]["bias"], bias)
    if bias == 0.0:
        params["conv1"]["bn"]["bias"] = jnp.zeros_like(params["conv1"]["bn"]["bias"])
        x = jnp.zeros_like(x)
    variables = {**variables, "params": params}
    _, activation = A.flax_model(model, variables).capture(x, "conv2")
    assert not bool(jnp.any(activation))
    for name, maps in every_cam(variables, x, jnp.arange(4)).items():
        assert bool(jnp.isfinite(maps).all()), name
        np.testing.assert_array_equal(maps, 0.0, err_msg=name)


def test_target_none_is_the_predicted_class_and_jit_matches(small_cnn, every_cam):
    model, variables, x = small_cnn
    predicted = jnp.argmax(model.apply(variables, x), -1)
    jitted = every_cam(variables, x, predicted)
    for method in ALL_CAMS:
        eager = method((model, variables), x, None, layer="conv2")
        np.testing.assert_allclose(
            jitted[method.__name__], eager, rtol=1e-5, atol=1e-7, err_msg=method.__name__
        )


def test_registry_needs_the_module_and_a_layer(small_cnn):
    model, variables, x = small_cnn
    fn = lambda x: model.apply(variables, x)
    with pytest.raises(ValueError, match="grad_cam looks inside the model"):
        A.explainer("grad_cam", fn, layer="conv2")
    with pytest.raises(ValueError, match="needs layer="):
        A.explainer("grad_cam", fn, model=model, variables=variables)
    handle = A.flax_model(model, variables)  # would be silently replaced
    with pytest.raises(ValueError, match="fn is already a model handle"):
        A.explainer("grad_cam", handle, model=model, variables=variables, layer="conv2")
    explain = A.explainer("score_cam", fn, model=model, variables=variables, layer="conv2")
    maps = explain(x, jnp.array([0, 1, 2, 3]), jax.random.key(0))
    np.testing.assert_array_equal(
        maps[..., 0], A.score_cam((model, variables), x, jnp.array([0, 1, 2, 3]), layer="conv2")
    )


def test_batch_size_never_changes_the_new_cams(small_cnn, every_cam):
    """Chunks of 3 of the 4 examples (the last one padded) give the unchunked maps."""
    model, variables, x = small_cnn
    target = jnp.arange(4)
    whole = every_cam(variables, x, target)
    methods = (A.grad_cam_elementwise, A.shapley_cam, A.eigen_grad_cam, A.finer_cam, A.kpca_cam)
    chunked = jax.jit(
        lambda x: {
            m.__name__: m((model, variables), x, target, layer="conv2", batch_size=3)
            for m in methods
        }
    )(x)
    for name, maps in chunked.items():
        np.testing.assert_allclose(maps, whole[name], rtol=1e-5, atol=1e-6, err_msg=name)


def _numpy_finer_coefficients(logits, target, ranks, alpha):
    """d u / d y for Finer-CAM's contrast, derived by hand: 1 for the target, and
    ``-alpha w_k (1 + y_k - sum_i w_i y_i)`` for reference k, ``w`` the softmax of the
    references' logits (float64), which are the classes nearest the target's logit."""
    logits = np.asarray(logits, np.float64)
    coefficients = np.zeros_like(logits)
    for i, (row, t) in enumerate(zip(logits, np.asarray(target))):
        others = sorted((c for c in range(len(row)) if c != t), key=lambda c: abs(row[c] - row[t]))
        refs = [others[r - 1] for r in ranks]
        y = row[refs]
        w = np.exp(y - y.max()) / np.exp(y - y.max()).sum()
        coefficients[i, t] = 1.0
        coefficients[i, refs] = -alpha * w * (1.0 + y - (w * y).sum())
    return coefficients


@pytest.mark.parametrize("base", ["grad_cam", "hires_cam"])
def test_finer_cam_is_the_base_cam_of_the_contrast(small_cnn, base):
    """Grad-CAM and HiResCAM are linear in the gradient before their ReLU, and the
    gradient of the contrast is ``sum_c (du/dy_c) dy_c/dA`` at the example, so the
    Finer-CAM map is the same sum of the base method's per-class maps, with the
    coefficients of the hand derivation (references, weights and the weights' own
    derivative included)."""
    model, variables, x = small_cnn
    handle = A.flax_model(model, variables)
    method = getattr(A, base)
    logits = np.asarray(handle(x))
    target = jnp.array([1, 7, 3, 3])
    coefficients = _numpy_finer_coefficients(logits, target, (1, 2, 3), 0.7)
    options = dict(layer="conv2", relu=False, upsample=False)
    per_class = jax.jit(
        lambda x: jnp.stack([method(handle, x, c, **options) for c in range(10)], axis=1)
    )(x)
    expected = np.einsum("nc,nchw->nhw", coefficients, np.asarray(per_class, np.float64))
    got = A.finer_cam(handle, x, target, base=base, alpha=0.7, **options)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)
    # One reference: the target's map minus alpha times the reference's.
    refs = np.asarray(A.finer_references(logits, target, (2,)))[:, 0]
    got = A.finer_cam(handle, x, target, base=base, alpha=0.7, reference_ranks=(2,), **options)
    rows = np.arange(4)
    expected = per_class[rows, np.asarray(target)] - 0.7 * per_class[rows, refs]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)


def test_finer_cam_without_contrast_is_its_base(small_cnn):
    """alpha = 0 leaves ``u = y_n`` (the weights sum to 1): every base's own map, the
    nonlinear ones (Grad-CAM++, LayerCAM, element-wise) too."""
    model, variables, x = small_cnn
    handle = A.flax_model(model, variables)
    maps = jax.jit(
        lambda x: {
            base: (
                A.finer_cam(handle, x, layer="conv2", base=base, alpha=0.0),
                getattr(A, base)(handle, x, layer="conv2"),
            )
            for base in ("grad_cam_plus_plus", "layer_cam", "grad_cam_elementwise")
        }
    )(x)
    for base, (finer, own) in maps.items():
        np.testing.assert_allclose(finer, own, rtol=1e-5, atol=1e-6 * own.max(), err_msg=base)


def test_finer_references_are_the_nearest_logits():
    logits = np.array([[3.0, 1.0, 2.5, 0.0, 2.9], [0.0, 5.0, 1.0, 4.0, 4.0]], np.float32)
    np.testing.assert_array_equal(A.finer_references(logits, [0, 1]), [[4, 2, 1], [3, 4, 2]])
    # Above, a tie went to the lower class (3 before 4); ranks past the last class drop.
    np.testing.assert_array_equal(A.finer_references(logits, [1, 3], (4, 2, 9)), [[0, 2], [0, 1]])
    assert A.finer_references(logits, [0, 0], (5, 6)).shape == (2, 0)
    # No reference left: the contrast is the target logit, the base map.
    three = np.array([[2.0, 1.0, 0.0]], np.float32)
    assert A.finer_references(three, [0]).shape == (1, 2)


def test_bad_finer_cam_options_are_one_line_errors(small_cnn):
    model, variables, x = small_cnn
    handle = A.flax_model(model, variables)
    with pytest.raises(ValueError, match="base must be one of"):
        A.finer_cam(handle, x, layer="conv2", base="score_cam")
    for alpha in (float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="alpha must be a finite number"):
            A.finer_cam(handle, x, layer="conv2", alpha=alpha)
    for ranks in ((), (1, 1), (0,), (1.5,), 3):
        with pytest.raises(ValueError, match="reference_ranks|each of reference_ranks"):
            A.finer_cam(handle, x, layer="conv2", reference_ranks=ranks)
    with pytest.raises(ValueError, match="logits must be"):
        A.finer_references(np.zeros(3), [0])
    logits = np.zeros((2, 10), np.float32)
    for target in ([0.9, 1.7], [7, 10], [0, 1, 2], None):
        with pytest.raises(ValueError, match="target"):
            A.finer_references(logits, target)


def test_across_layers_scales_each_layer_and_averages_or_multiplies(small_cnn):
    """Each layer's map (after its ReLU, at the input's size) scaled to [0, 1] per image
    in NumPy, then their mean and their product; one layer is its own scaled map."""
    model, variables, x = small_cnn
    handle = A.flax_model(model, variables)
    layers = ("conv1", "conv2", "conv3")
    run = jax.jit(
        lambda x: {
            "per_layer": [A.layer_cam(handle, x, layer=name) for name in layers],
            "mean": A.across_layers(A.layer_cam, layers)(handle, x),
            "product": A.across_layers(A.layer_cam, layers, combine="product")(handle, x),
            "one": A.across_layers(A.layer_cam, ["conv2"])(handle, x),
        }
    )(x)
    scaled = []
    for maps in run["per_layer"]:
        m = np.asarray(maps, np.float64)
        low, high = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
        assert (high > low).all()
        scaled.append((m - low) / (high - low))
    np.testing.assert_allclose(run["mean"], np.mean(scaled, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run["product"], np.prod(scaled, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run["one"], scaled[1], rtol=1e-5, atol=1e-6)
    # target=None is the predicted class for every layer, and options reach the method:
    # Finer-CAM's alpha, against its per-layer maps built here (the tuple shorthand).
    predicted = jnp.argmax(handle(x), axis=1)
    finer = A.across_layers(A.finer_cam, ("conv2", "conv3"))
    per_layer = [
        np.asarray(A.finer_cam(handle, x, predicted, layer=name, alpha=0.5))
        for name in ("conv2", "conv3")
    ]
    by_hand = np.mean(
        [(m - m.min((1, 2), keepdims=True)) / np.ptp(m, (1, 2), keepdims=True) for m in per_layer],
        axis=0,
    )
    got = finer((model, variables), x, alpha=0.5)
    np.testing.assert_allclose(got, by_hand, rtol=1e-5, atol=1e-6)
    assert not np.allclose(finer(handle, x, alpha=1.0), got, atol=1e-3)


def test_across_layers_composes_with_augmentation_smoothing(small_cnn):
    """A transform of a CAM (keyword options) is a CAM to across_layers: with one
    brightness and no mirror, augmentation smoothing is the CAM itself."""
    model, variables, x = small_cnn
    handle = A.flax_model(model, variables)
    plain = A.augmentation_smoothing(A.grad_cam, flip=False, factors=(1.0,))
    np.testing.assert_allclose(
        A.across_layers(plain, ("conv2", "conv3"))(handle, x),
        A.across_layers(A.grad_cam, ("conv2", "conv3"))(handle, x),
        rtol=1e-6,
    )


def test_bad_across_layers_arguments_are_one_line_errors(small_cnn):
    model, variables, x = small_cnn
    handle = A.flax_model(model, variables)
    with pytest.raises(ValueError, match="saliency takes no layer="):
        A.across_layers(A.saliency, ["conv2"])
    with pytest.raises(ValueError, match=r"takes the method's function, e\.g\. fmi_jax\."
                       r"attribution\.grad_cam, not its name 'grad_cam'"):  # fmt: skip
        A.across_layers("grad_cam", ["conv2"])
    with pytest.raises(ValueError, match="leave out upsample=False"):
        A.across_layers(A.grad_cam, ["conv2"])(handle, x, upsample=0)
    not_a_cam = A.across_layers(A.augmentation_smoothing(A.saliency), ["conv2"])
    with pytest.raises(ValueError, match="is not a CAM method"):
        not_a_cam(handle, x)
    for layers in ((), ("conv2", "conv2"), (2,)):
        with pytest.raises(ValueError, match="layers must be"):
            A.across_layers(A.grad_cam, layers)
    with pytest.raises(ValueError, match=r"combine must be one of \('mean', 'product'\)"):
        A.across_layers(A.grad_cam, ["conv2"], combine="max")
    with pytest.raises(ValueError, match="sets layer= itself"):
        A.across_layers(A.grad_cam, ["conv2"])(handle, x, layer="conv3")
    with pytest.raises(ValueError, match="no layer 'conv9'"):
        A.across_layers(A.grad_cam, ["conv2", "conv9"])(handle, x)


class ChannelsFirstHead(nn.Module):
    """SumHead reading (N, C, H, W) images, as a model ported from PyTorch does."""

    @nn.compact
    def __call__(self, x):
        return SumHead(name="head")(jnp.transpose(x, (0, 2, 3, 1)))


def test_a_channels_first_batch_is_refused_where_maps_are_resized_to_it():
    # Read as (N, H, W, C), a (1, 1, 8, 8) batch would give maps of shape (1, 8): the
    # image plane is refused before anything runs, and upsample=False, which never reads
    # it, gives the hand-computed map x + 5 at the layer.
    x = jnp.arange(64.0).reshape(1, 1, 8, 8)
    handle = A.flax_model(ChannelsFirstHead(), {"params": {"head": HEAD_VARS["params"]}})
    for method in ALL_CAMS:
        with pytest.raises(ValueError, match=rf"^{method.__name__}: x of shape \(1, 1, 8, 8\) "):
            method(handle, x, 0, layer="head/features")
    maps = A.grad_cam(handle, x, 0, layer="head/features", upsample=False)
    np.testing.assert_allclose(maps[0], x[0, 0] + 5, rtol=1e-6)
    with pytest.raises(ValueError, match="^full_grad: x of shape .* looks channels-first"):
        A.full_grad(handle, x, 0)
    with pytest.raises(ValueError, match="^xrai: x of shape .* looks channels-first"):
        A.xrai(handle, x, 0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="^occlusion: x of shape .* looks channels-first"):
        A.occlusion(handle, x, 0, window=2)
    with pytest.raises(ValueError, match="^feature_ablation: x of shape .* channels-first"):
        A.explainer("feature_ablation", handle, patch=2)(x, 0)
    with pytest.raises(ValueError, match="^square_patches: .* looks channels-first"):
        A.square_patches(x.shape[1:], 2)
    assert A.occlusion(handle, x, 0, window=(1, 2, 2)).shape == x.shape  # explicit: fine
    with pytest.raises(ValueError, match="^layer_gradient_x_activation: .* channels-first"):
        A.explainer("layer_gradient_x_activation", handle, layer="head/features")(x, 0)
    # The methods that blur or mirror the image plane: they would blur over (C, H) and
    # mirror H.
    variables = {"params": {"head": HEAD_VARS["params"]}}
    fn = lambda images: ChannelsFirstHead().apply(variables, images)  # noqa: E731
    assert A.saliency(fn, x, 0).shape == x.shape  # the model itself takes this batch
    with pytest.raises(ValueError, match="^gaussian_smoothed_saliency: .* channels-first"):
        A.gaussian_smoothed_saliency(fn, x, 0)
    with pytest.raises(ValueError, match="^blur_ig: .* channels-first"):
        A.blur_ig(fn, x, 0)
    with pytest.raises(ValueError, match=r"^augmentation_smoothing\(saliency\): .* channels-"):
        A.augmentation_smoothing(A.saliency)(fn, x, 0)


@pytest.mark.parametrize(
    "shape, size",
    [
        ((2, 28, 28, 1), (28, 28)),
        ((2, 28, 28), (28, 28)),
        ((1, 3, 4, 4), (3, 4)),
        ((1, 5, 9, 64), (5, 9)),
        ((1, 5, 5, 16), (5, 5)),
    ],
)
def test_image_size_reads_channels_last_images(shape, size):
    assert A.core.image_size(np.zeros(shape), "m") == size


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 32, 32), (2, 4, 5, 5)])
def test_image_size_refuses_channels_first_batches(shape):
    with pytest.raises(ValueError, match="looks channels-first"):
        A.core.image_size(np.zeros(shape), "m")


@pytest.mark.parametrize("shape", [(2, 784), (2, 28, 28, 1, 1)])
def test_image_size_refuses_what_is_not_an_image_batch(shape):
    with pytest.raises(ValueError, match=r"must be \(N, H, W, C\) or \(N, H, W\)"):
        A.core.image_size(np.zeros(shape), "m")


class GreyHead(nn.Module):
    """SumHead reading (N, H, W) images without a channel axis."""

    @nn.compact
    def __call__(self, x):
        return SumHead(name="head")(x[..., None])


def test_score_cam_masks_images_without_a_channel_axis_as_with_one():
    x = jnp.arange(32.0).reshape(2, 4, 4) / 32
    grey = A.score_cam(
        (GreyHead(), {"params": {"head": HEAD_VARS["params"]}}), x, 1, layer="head/features"
    )
    assert grey.shape == (2, 4, 4)
    np.testing.assert_allclose(
        grey, A.score_cam((HEAD, HEAD_VARS), x[..., None], 1, layer="features"), rtol=1e-6
    )


def test_full_grad_and_guided_grad_cam_read_images_without_a_channel_axis_as_with_one():
    x = jnp.arange(32.0).reshape(2, 4, 4) / 32 - 0.4
    grey = (GreyHead(), {"params": {"head": HEAD_VARS["params"]}})
    full = A.full_grad(grey, x, 1, layers=("head/features",))
    np.testing.assert_allclose(
        full, A.full_grad((HEAD, HEAD_VARS), x[..., None], 1, layers=("features",)), rtol=1e-6
    )
    guided = A.guided_grad_cam(grey, x, 1, layer="head/features")
    assert guided.shape == x.shape
    np.testing.assert_allclose(
        guided,
        A.guided_grad_cam((HEAD, HEAD_VARS), x[..., None], 1, layer="features")[..., 0],
        rtol=1e-6,
    )


class _Conv1D(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Conv(4, (3,), name="conv")(x)).mean(-2))


def test_a_batch_of_sequences_is_not_taken_for_one_image():
    # A 1-D conv also runs on x[None] (to logits of shape (1, 2, 3)): that is no
    # reason to advise a batch axis the input already has.
    x = testdata.normal(jax.random.key(2), (2, 16, 2))
    model = _Conv1D()
    handle = A.flax_model(model, jax.jit(model.init)(jax.random.key(3), x))
    with pytest.raises(ValueError, match="layer 'conv' returns a sequence of tokens") as error:
        A.grad_cam(handle, x, layer="conv")
    assert "x[None]" not in str(error.value)
    assert "A.tokens_as_image(handle, layer" in str(error.value)
    # Layer methods take the sequence: complete at the layer, as on images.
    attributions = A.layer_integrated_gradients(handle, x, 1, layer="conv", steps=64)
    assert attributions.shape == (2, 16, 4)
    change = handle(x)[:, 1] - handle(jnp.zeros_like(x))[:, 1]
    np.testing.assert_allclose(attributions.sum(axis=(1, 2)), change, rtol=1e-3, atol=1e-4)


def test_one_image_without_its_batch_axis_is_named_as_such(small_cnn):
    # (H, W, C) could read as a batch of (H, W) images: the model's refusal says which.
    model, variables, x = small_cnn
    handle = A.flax_model(model, variables)
    for call in (
        lambda: A.grad_cam(handle, x[0], layer="conv2"),
        lambda: A.guided_grad_cam(handle, x[0], layer="conv2"),
        lambda: A.full_grad(handle, x[0]),
    ):
        with pytest.raises(ValueError, match=r"looks like one example without its batch axis"):
            call()
