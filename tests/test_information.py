"""Performance information curves: the curve rule against scipy's interpolation (PAIR's
code path), bokeh images against affine images and per-channel griddata, and the whole
metric's invariances on an analytic model that reads one region."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import interpolate

from fmi_jax import evaluation
from fmi_jax.evaluation import information as I
from tests import testdata

SIZE = 16
REGION = (slice(2, 6), slice(9, 13))  # the 4 x 4 pixels the model reads
THRESHOLDS = (0.05, 0.1, 0.2, 0.4, 0.7)


def _images(n=3, seed=0, channels=1):
    """Smooth backgrounds with fine texture and a bright square in REGION, in [0, 1]
    with values k / 255 (exact under the uint8 quantisation)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 90, SIZE)[None, :, None] + np.linspace(0, 30, SIZE)[:, None, None]
    pixels = ramp[None] + rng.integers(-12, 13, size=(n, SIZE, SIZE, channels))
    pixels[:, REGION[0], REGION[1]] = 230 + rng.integers(-10, 11, size=(n, 4, 4, channels))
    return jnp.asarray(np.clip(pixels, 0, 255).round() / 255.0, jnp.float32)


def _model(x):
    """Class 0 when the region is brighter than the rest of the image."""
    inside = x[:, REGION[0], REGION[1]].mean(axis=(1, 2, 3))
    outside = x.mean(axis=(1, 2, 3))
    return jnp.stack([25.0 * (inside - outside) - 5.0, jnp.zeros_like(inside)], axis=-1)


def _region_map(n, seed=1):
    rng = np.random.default_rng(seed)
    maps = rng.random((n, SIZE, SIZE)) * 0.1
    maps[:, REGION[0], REGION[1]] += 1.0
    return jnp.asarray(maps, jnp.float32)


def _pic(maps, x=None, **options):
    x = _images() if x is None else x
    options = {"thresholds": THRESHOLDS, "points": 200, **options}
    return evaluation.performance_information_curve(
        _model, x, 0, maps, jax.random.key(0), **options
    )


def test_curve_through_one_point_by_hand():
    grid = np.append(np.linspace(0.0, 1.0, 100, endpoint=False), 1.0)
    curve = I._interpolate_curve(np.array([0.5]), np.array([1.0]), grid)
    np.testing.assert_allclose(curve, np.minimum(2 * grid, 1.0), atol=1e-15)
    np.testing.assert_allclose(I._trapezoid(curve, grid), 0.75, atol=1e-15)
    # Two points at 0.5: the segment from (0, 0) heads for the first (0.2), the curve
    # at 0.5 and after it starts from the last (0.6).
    grid = np.array([0.25, 0.5, 0.75, 1.0])
    curve = I._interpolate_curve(np.array([0.5, 0.5]), np.array([0.2, 0.6]), grid)
    np.testing.assert_allclose(curve, [0.1, 0.6, 0.8, 1.0], atol=1e-15)


def test_curve_equals_pairs_interp1d_with_shared_entropies():
    """PAIR builds the curve with scipy's interp1d over the thresholds' points followed
    by (0, 0) and (1, 1); entropies clipped to 0 or 1 repeat, which the rule must
    resolve the same way."""
    rng = np.random.default_rng(0)
    grid = np.append(np.linspace(0.0, 1.0, 1000, endpoint=False), 1.0)
    for _ in range(50):
        e = np.clip(rng.normal(0.5, 0.6, size=8), 0.0, 1.0)
        e[rng.random(8) < 0.2] = e[0]  # more repeats inside (0, 1)
        s = np.maximum.accumulate(rng.random(8))
        reference = interpolate.interp1d(np.append(e, [0.0, 1.0]), np.append(s, [0.0, 1.0]))
        np.testing.assert_allclose(I._interpolate_curve(e, s, grid), reference(grid), atol=1e-12)


def test_blurred_image_reproduces_an_affine_image():
    rows, cols = np.mgrid[:20, :24]
    pixels = (10 + 3 * rows + 2 * cols)[..., None].astype(np.uint8)
    keep = np.random.default_rng(0).random((20, 24)) < 0.1
    np.testing.assert_array_equal(evaluation.blurred_image(pixels, keep), pixels)
    np.testing.assert_array_equal(evaluation.blurred_image(pixels, np.ones((20, 24))), pixels)


def test_blurred_image_equals_griddata_channel_by_channel():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(12, 15, 3), dtype=np.uint8)
    keep = rng.random((12, 15)) < 0.2
    given = keep.copy()
    corners = keep.copy()
    corners[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    expected = pixels.astype(np.float32) * corners[..., None]
    known, unknown = np.argwhere(corners), np.argwhere(~corners)
    for c in range(3):
        values = interpolate.griddata(known, pixels[..., c][corners], unknown, method="linear")
        expected[..., c][~corners] = values
    got = evaluation.blurred_image(pixels, keep)
    np.testing.assert_array_equal(got, np.round(expected).astype(np.uint8))
    np.testing.assert_array_equal(keep, given)  # the caller's mask is left alone


def test_the_models_evidence_first_beats_it_last():
    maps = _region_map(3)
    good, bad = _pic(maps), _pic(-maps)
    assert good.skipped == bad.skipped == ("", "", "")
    assert np.all(good.auc > bad.auc + 0.2), (good.auc, bad.auc)
    # Both start from the same blurred image and end at the image itself.
    np.testing.assert_array_equal(good.random_pixels, bad.random_pixels)
    np.testing.assert_array_equal(good.scores[:, [0, -1]], bad.scores[:, [0, -1]])
    np.testing.assert_allclose(
        good.scores[:, -1], jax.nn.softmax(_model(_images()))[:, 0], rtol=1e-6
    )
    assert good.random_pixels.sum(axis=(1, 2)).tolist() == [int(0.01 * SIZE * SIZE)] * 3
    # The aggregate of three curves is their median point by point.
    curve, area = evaluation.aggregate_pic(good)
    np.testing.assert_allclose(curve, np.median(good.curves, axis=0))
    np.testing.assert_allclose(area, I._trapezoid(curve, good.x))
    assert evaluation.aggregate_pic(good, method="mean")[1] == pytest.approx(
        I._trapezoid(good.curves.mean(0), good.x)
    )


def test_curves_are_the_normalised_points_of_the_measured_sizes_and_scores():
    """Every kept curve rebuilt from the result's own sizes and scores: the information
    from WebP sizes measured here, the scores normalised and (monotone) accumulated."""
    from PIL import Image

    def webp(pixels):
        buffer = io.BytesIO()
        Image.fromarray(pixels[..., 0]).save(buffer, format="webp", lossless=True, quality=100)
        return buffer.tell()

    maps = testdata.uniform(jax.random.key(3), (3, SIZE, SIZE))  # a map that stumbles
    pixels = np.asarray(np.round(_images() * 255), np.uint8)
    bent = False
    for monotone in (True, False):
        result = _pic(maps, monotone=monotone)
        for i in np.flatnonzero([not reason for reason in result.skipped]):
            seed = result.random_pixels[i]
            blurred, original = webp(evaluation.blurred_image(pixels[i], seed)), webp(pixels[i])
            sizes = [
                webp(
                    evaluation.blurred_image(
                        pixels[i], (maps[i] >= np.quantile(maps[i], 1 - t)) | seed
                    )
                )
                for t in THRESHOLDS
            ]
            information = np.clip((np.array(sizes) - blurred) / (original - blurred), 0, 1)
            np.testing.assert_allclose(result.information[i], information, rtol=1e-12)
            f = result.scores[i]
            restored = np.clip((f[1:-1] - f[0]) / (f[-1] - f[0]), 0.0, 1.0)
            bent |= bool(np.any(np.diff(restored) < 0))
            if monotone:
                restored = np.maximum.accumulate(restored)
            expected = I._interpolate_curve(information, restored, result.x)
            np.testing.assert_allclose(result.curves[i], expected, atol=1e-12)
    assert bent  # some curve falls between thresholds, so `monotone` matters above


def test_a_constant_map_restores_everything_at_once():
    result = _pic(jnp.ones((3, SIZE, SIZE)))
    np.testing.assert_allclose(result.auc, 0.5, atol=1e-12)
    np.testing.assert_array_equal(result.information, 1.0)


def test_accuracy_curve_reads_the_top_class():
    result = _pic(_region_map(3), score="correct")
    assert set(np.unique(result.scores)) <= {0.0, 1.0}
    assert np.all(result.scores[:, -1] == 1.0) and np.all(result.scores[:, 0] == 0.0)
    assert np.all(result.auc > 0.5)


def test_only_the_ranks_of_the_map_and_the_key_matter():
    maps = _region_map(3)
    base = _pic(maps)
    for other in (_pic(jnp.exp(3 * maps)), _pic(maps[..., None])):
        np.testing.assert_array_equal(other.auc, base.auc)
        np.testing.assert_array_equal(other.scores, base.scores)
    # Chunks of another shape may round a model output differently, nothing more.
    chunked = _pic(maps, batch_size=4)
    np.testing.assert_allclose(chunked.scores, base.scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(chunked.auc, base.auc, atol=1e-5)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(3))
    per_example = evaluation.performance_information_curve(
        _model, _images(), 0, maps, keys, thresholds=THRESHOLDS, points=200
    )
    np.testing.assert_array_equal(per_example.random_pixels, base.random_pixels)
    other_key = evaluation.performance_information_curve(
        _model, _images(), 0, maps, jax.random.key(5), thresholds=THRESHOLDS, points=200
    )
    assert not np.array_equal(other_key.random_pixels, base.random_pixels)


def test_the_value_range_maps_the_model_scale_to_pixels():
    maps = _region_map(3)
    shifted = evaluation.performance_information_curve(
        lambda z: _model((z + 1.0) / 2.0),
        _images() * 2.0 - 1.0,
        0,
        maps,
        jax.random.key(0),
        thresholds=THRESHOLDS,
        points=200,
        value_range=(-1.0, 1.0),
    )
    np.testing.assert_allclose(shifted.auc, _pic(maps).auc, atol=1e-6)


def test_skipped_images_say_why():
    maps = _region_map(3)
    x = _images()
    flat = x.at[1].set(0.5)  # no information to restore, and a low score
    assert _pic(maps, x=flat).skipped == ("", I._SKIP_SCORE, "")  # PAIR's order
    result = _pic(maps, x=flat, min_score=0.0)
    assert result.skipped == ("", I._SKIP_ENTROPY, "")
    assert np.isnan(result.auc[1]) and np.isnan(result.curves[1]).all()
    assert np.isnan(result.scores[1, 1:-1]).all() and np.isfinite(result.scores[1, [0, -1]]).all()
    curve, _ = evaluation.aggregate_pic(result)
    np.testing.assert_allclose(curve, np.median(result.curves[[0, 2]], axis=0))
    unsure = _pic(maps, min_score=0.9999)
    assert set(unsure.skipped) == {I._SKIP_SCORE}
    constant = evaluation.performance_information_curve(
        lambda z: jnp.ones((z.shape[0], 2)) * jnp.array([3.0, 0.0]),
        x,
        0,
        maps,
        jax.random.key(0),
        thresholds=THRESHOLDS,
    )
    assert set(constant.skipped) == {I._SKIP_BLURRED}
    with pytest.raises(ValueError, match="every image was skipped"):
        evaluation.aggregate_pic(constant)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"thresholds": (0.2, 0.1)}, "increasing fractions"),
        ({"thresholds": (0.0, 0.5)}, "increasing fractions"),
        ({"score": "logit"}, "unknown score"),
        ({"value_range": (1.0, 0.0)}, "lo < hi"),
        ({"value_range": (0.0, 0.5)}, "outside value_range"),
        ({"random_fraction": 2.0}, "random_fraction"),
        ({"points": 0}, "points"),
        ({"key": None}, "key"),
        ({"attributions": jnp.zeros((3, 8, 8))}, "do not fit"),
        ({"x": jnp.zeros((3, SIZE, SIZE, 2))}, "grayscale or RGB"),
        ({"x": jnp.zeros((3, 1, SIZE, 1)), "attributions": jnp.zeros((3, 1, SIZE))}, "2 x 2"),
        ({"points": 1}, "points"),
        ({"min_score": float("nan")}, "min_score"),
        ({"thresholds": "0.5"}, "thresholds"),
    ],
)
def test_bad_input_is_one_value_error(change, message):
    args = {"x": _images(), "attributions": _region_map(3), "key": jax.random.key(0)}
    args.update({k: change.pop(k) for k in list(change) if k in args})
    with pytest.raises(ValueError, match=message):
        evaluation.performance_information_curve(
            _model, args["x"], 0, args["attributions"], args["key"], **change
        )


def test_a_model_that_returns_nan_is_refused():
    with pytest.raises(ValueError, match="NaN or Inf"):
        evaluation.performance_information_curve(
            lambda z: _model(z) * jnp.nan, _images(), 0, _region_map(3), jax.random.key(0)
        )


@pytest.mark.parametrize("score", ["probability", "correct"])
def test_a_model_with_one_output_is_refused(score):
    with pytest.raises(ValueError, match="one output per example"):
        evaluation.performance_information_curve(
            lambda z: _model(z)[:, :1], _images(), 0, _region_map(3), jax.random.key(0), score=score
        )


def test_blurred_image_refuses_what_is_not_a_uint8_image():
    with pytest.raises(ValueError, match="uint8"):
        evaluation.blurred_image(np.zeros((4, 4), np.float32), np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="mask"):
        evaluation.blurred_image(np.zeros((4, 4), np.uint8), np.ones((4, 5), bool))
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4)
    np.testing.assert_array_equal(evaluation.blurred_image(gray, np.zeros((4, 4))), gray)


def test_thresholds_may_be_any_sequence_and_ranges_one_per_channel():
    maps = _region_map(3)
    base = _pic(maps, x=_images(channels=3))
    as_array = _pic(maps, x=_images(channels=3), thresholds=jnp.asarray(THRESHOLDS))
    np.testing.assert_array_equal(as_array.auc, base.auc)
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.3])
    standardised = evaluation.performance_information_curve(
        lambda z: _model(z * std + mean),
        (_images(channels=3) - mean) / std,
        0,
        maps,
        jax.random.key(0),
        thresholds=THRESHOLDS,
        points=200,
        value_range=(-mean / std, (1 - mean) / std),
    )
    np.testing.assert_allclose(standardised.auc, base.auc, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_agrees_with_pair_saliency(channels, monkeypatch):
    """PAIR's own code, where it is installed (scripts/pic_agreement.py runs it on a
    trained model): the same curves, image by image, from the same random pixels."""
    pair = pytest.importorskip("saliency.metrics.pic")
    if not hasattr(np, "trapz"):  # PAIR 0.2.1 calls it; NumPy 2.4 has only trapezoid
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    x = _images(channels=channels)
    maps = np.array(testdata.uniform(jax.random.key(4), (3, SIZE, SIZE)))
    maps[:, REGION[0], REGION[1]] += 0.5
    ours = _pic(maps, x=x, points=1000, min_score=0.5)
    pixels = np.asarray(np.round(x * 255), np.uint8)
    if channels == 1:
        pixels = pixels[..., 0]

    def pred_func(batch):
        z = jnp.asarray(batch, jnp.float32).reshape((-1, SIZE, SIZE, channels)) / 255.0
        return np.asarray(jax.nn.softmax(_model(z))[:, 0], np.float64)

    for i in range(3):
        theirs = pair.compute_pic_metric(
            pixels[i], maps[i], ours.random_pixels[i], pred_func, THRESHOLDS, min_pred_value=0.5
        )
        assert ours.skipped[i] == ""
        np.testing.assert_allclose(ours.curves[i], theirs.curve_y, atol=1e-5)
        np.testing.assert_allclose(ours.auc[i], theirs.auc, atol=1e-5)
