"""Localisation metrics against hand-computed values and a pairwise count."""

import jax
import numpy as np
import pytest

from fmi_jax.evaluation import localisation as L

# One map per row, 6 features; the mask marks features 1 and 2 of each.
MAPS = np.array(
    [
        [0.1, 0.9, 0.3, 0.0, 0.2, 0.4],  # maximum (0.9) inside
        [0.5, 0.1, 0.2, 0.5, 0.0, 0.3],  # maximum (0.5, twice) outside
        [0.2, 0.7, 0.1, 0.7, 0.3, 0.0],  # maximum tied inside and outside: a hit
    ],
    np.float32,
)
MASKS = np.zeros((3, 6), bool)
MASKS[:, 1:3] = True


def test_pointing_game_and_its_tie_rule():
    np.testing.assert_array_equal(L.pointing_game(MAPS, MASKS), [1.0, 0.0, 1.0])


def test_relevance_mass_accuracy_by_hand():
    expected = [(0.9 + 0.3) / 1.9, (0.1 + 0.2) / 1.6, (0.7 + 0.1) / 2.0]
    np.testing.assert_allclose(L.relevance_mass_accuracy(MAPS, MASKS), expected, rtol=1e-6)


def test_rank_accuracy_and_top_k_break_ties_by_index():
    # K = |s| = 2. Row 0: top two 0.9 (1), 0.4 (5) -> 1/2. Row 1: 0.5 (0), 0.5 (3) -> 0.
    # Row 2: 0.7 (1), 0.7 (3) -> 1/2.
    np.testing.assert_allclose(L.relevance_rank_accuracy(MAPS, MASKS), [0.5, 0.0, 0.5])
    # k = 3: row 0 adds 0.3 (2) -> 2/3; row 1 adds 0.3 (5) -> 0; row 2 adds 0.3 (4) -> 1/3.
    np.testing.assert_allclose(L.top_k_intersection(MAPS, MASKS, k=3), [2 / 3, 0.0, 1 / 3])


def test_auc_is_the_share_of_inside_outside_pairs_won():
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 4, size=(5, 30)).astype(np.float32)  # many ties
    masks = rng.random((5, 30)) < 0.4
    got = np.asarray(L.localisation_auc(maps, masks))
    for a, s, value in zip(maps, masks, got):
        inside, outside = a[s][:, None], a[~s][None, :]
        pairs = (inside > outside) + 0.5 * (inside == outside)
        np.testing.assert_allclose(value, pairs.mean(), rtol=1e-6)
    perfect = np.where(MASKS, 1.0, 0.0) + 0.01 * np.arange(6)
    np.testing.assert_allclose(L.localisation_auc(perfect, MASKS), 1.0)
    np.testing.assert_allclose(L.localisation_auc(-perfect, MASKS), 0.0)


def test_images_are_summed_over_channels_and_empty_masks_give_nan():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    masks = rng.random((2, 4, 4)) < 0.5
    masks[1] = False
    for metric in (L.pointing_game, L.relevance_mass_accuracy, L.localisation_auc):
        summed = metric(maps.sum(-1), masks)
        np.testing.assert_allclose(metric(maps, masks), summed, rtol=1e-6)
        assert np.isfinite(summed[0]) and np.isnan(summed[1])
    assert np.isnan(L.top_k_intersection(maps, masks, k=2)[1])
    full = np.ones((1, 4, 4), bool)
    assert np.isnan(L.localisation_auc(maps[:1], full)[0])


def test_jit_and_bad_input():
    jitted = jax.jit(L.top_k_intersection, static_argnames="k")
    np.testing.assert_allclose(jitted(MAPS, MASKS, k=3), L.top_k_intersection(MAPS, MASKS, k=3))
    with pytest.raises(ValueError, match="masks of shape"):
        L.pointing_game(MAPS, MASKS[:, :4])
    with pytest.raises(ValueError, match="k must be in"):
        L.top_k_intersection(MAPS, MASKS, k=7)
    with pytest.raises(ValueError, match="NaN"):
        L.relevance_mass_accuracy(np.full((1, 6), np.nan), MASKS[:1])


def test_a_constant_map_points_nowhere_wherever_the_object_lies():
    # All-zero maps tie everywhere: their maximum is every feature (a hit for any mask)
    # and their top features by index are the first ones, so every answer is NaN.
    blank = np.zeros((2, 6), np.float32)
    masks = np.zeros((2, 6), bool)
    masks[0, :2], masks[1, 4:] = True, True
    for metric in (L.pointing_game, L.relevance_rank_accuracy, L.relevance_mass_accuracy):
        assert np.isnan(metric(blank, masks)).all(), metric.__name__
    assert np.isnan(L.top_k_intersection(blank, masks, k=2)).all()
    np.testing.assert_array_equal(L.localisation_auc(blank, masks), [0.5, 0.5])
    one_peak = blank.copy()
    one_peak[:, 0] = 1.0
    np.testing.assert_array_equal(L.pointing_game(one_peak, masks), [1.0, 0.0])


def test_masks_must_be_boolean_or_zero_one():
    np.testing.assert_array_equal(
        L.pointing_game(MAPS, MASKS.astype(np.float32)), L.pointing_game(MAPS, MASKS)
    )
    with pytest.raises(ValueError, match=r"masks must be booleans or 0/1.*masks > 0.5"):
        L.relevance_mass_accuracy(MAPS, MASKS * 0.999 + 1e-7)  # a resized mask's halo
    with pytest.raises(ValueError, match="swapped"):
        L.relevance_mass_accuracy(MASKS.astype(np.float32), MAPS)


def test_focus_is_the_positive_share_on_the_marked_tiles():
    quadrants = np.array([[True, False, False, True], [False, True, True, False]])
    # Tiles top-left, top-right, bottom-left, bottom-right of a 6 x 4 map, one value
    # each: the share of the positive part on the marked ones.
    tiles = np.array([1.0, 2.0, 4.0, 8.0])
    a = np.zeros((2, 6, 4))
    a[:, :3, :2], a[:, :3, 2:], a[:, 3:, :2], a[:, 3:, 2:] = tiles
    np.testing.assert_allclose(L.focus(a, quadrants), [9 / 15, 6 / 15], rtol=1e-6)
    one_column = np.array([[True, False, True, False]])  # the left tiles, 1 + 4
    np.testing.assert_allclose(L.focus(a[:1, ..., None], one_column), [5 / 15], rtol=1e-6)
    # Positive only on the marked tiles, negative elsewhere (which does not count): 1.
    marked = np.where(a[:1] < 2.0, 1.0, -3.0)  # positive on the top-left tile only
    np.testing.assert_allclose(L.focus(marked, quadrants[:1]), [1.0])
    np.testing.assert_allclose(L.focus(np.ones((2, 6, 4)), quadrants), [0.5, 0.5])
    # By hand on odd sizes: 5 x 3, the top tiles 2 rows, the left tiles 1 column.
    a = np.arange(15.0).reshape(1, 5, 3) - 2.0  # -2..12; rows 0-1 top, column 0 left
    top_left, bottom_right = a[0, :2, :1], a[0, 2:, 1:]
    positive = np.maximum(a, 0).sum()
    want = (np.maximum(top_left, 0).sum() + np.maximum(bottom_right, 0).sum()) / positive
    np.testing.assert_allclose(L.focus(a, quadrants[:1]), [want], rtol=1e-6)
    assert np.isnan(L.focus(-np.ones((1, 4, 4)), quadrants[:1])[0])
    for bad in (np.ones((2, 3), bool), np.full((2, 4), 0.5), np.array([[2, 0, 0, 0]] * 2)):
        with pytest.raises(ValueError, match=r"quadrants must be \(N, 4\) booleans"):
            L.focus(np.ones((2, 4, 4)), bad)


def test_mosaics_put_two_images_of_the_class_on_the_marked_tiles():
    rng = np.random.default_rng(7)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 3])
    images = rng.uniform(size=(8, 4, 6, 2)).astype(np.float32)
    key = jax.random.key(3)
    x, target, quadrants = L.mosaics(images, labels, key, count=20, downsample=False)
    assert x.shape == (20, 8, 12, 2) and target.shape == (20,) and quadrants.shape == (20, 4)
    assert set(np.asarray(target).tolist()) <= {0, 1, 2}  # class 3 has one image
    np.testing.assert_array_equal(np.asarray(quadrants).sum(1), 2)
    for m in range(20):
        tiles = [x[m, :4, :6], x[m, :4, 6:], x[m, 4:, :6], x[m, 4:, 6:]]
        found = [
            int(np.flatnonzero(np.all(images == np.asarray(t), axis=(1, 2, 3)))[0]) for t in tiles
        ]
        assert len(set(found)) == 4  # four different images
        for t, index in enumerate(found):
            assert (labels[index] == target[m]) == bool(quadrants[m, t])
    # Halved tiles: the 2 x 2 block means of the same draws; the same key, the same mosaics.
    small, target2, quadrants2 = L.mosaics(images, labels, key, count=20)
    half = x.reshape(20, 4, 2, 6, 2, 2).mean((2, 4))
    np.testing.assert_allclose(small, half, rtol=1e-6)
    np.testing.assert_array_equal(target2, target)
    np.testing.assert_array_equal(quadrants2, quadrants)
    with pytest.raises(ValueError, match="a class with at least two images"):
        L.mosaics(images[:3], labels[:3], key, count=2)
    # Class 0 has two images but only one image of another class exists.
    with pytest.raises(ValueError, match="two images of other classes"):
        L.mosaics(images[:3], np.array([0, 0, 1]), key, count=2)
    few = np.array([0, 0, 0, 1, 2])  # only class 0 qualifies
    _, only, _ = L.mosaics(images[:5], few, key, count=6)
    np.testing.assert_array_equal(only, 0)
    with pytest.raises(ValueError, match="even height and width"):
        L.mosaics(images[:, :3], labels, key, count=2)
