"""Agreement metrics with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from fmi_jax import evaluation
from tests import testdata


def ranks_by_hand(x):
    """Average ranks the slow, obvious way."""
    out = np.empty(len(x))
    for i, v in enumerate(x):
        out[i] = (x < v).sum() + ((x == v).sum() - 1) / 2
    return out


def test_average_ranks_with_ties():
    x = np.array([[3.0, 0.0, 0.0, 5.0, 0.0, 3.0]])
    np.testing.assert_allclose(evaluation.average_ranks(jnp.asarray(x))[0], ranks_by_hand(x[0]))
    np.testing.assert_allclose(evaluation.average_ranks(jnp.asarray(x))[0], [3.5, 1, 1, 5, 1, 3.5])


def test_pearson_and_spearman_known_values():
    a = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_allclose(evaluation.pearson(a, 2 * a + 1), [1.0], atol=1e-6)
    np.testing.assert_allclose(evaluation.pearson(a, -a), [-1.0], atol=1e-6)
    # A monotone but nonlinear map: Spearman 1, Pearson below 1.
    b = a**3
    np.testing.assert_allclose(evaluation.spearman(a, b), [1.0], atol=1e-6)
    assert float(evaluation.pearson(a, b)[0]) < 0.99


def test_an_exact_linear_relation_stays_within_minus_one_and_one():
    """In float32 about a fifth of these rows came out one ulp beyond 1 in magnitude."""
    a = jax.random.normal(jax.random.key(0), (200, 997))
    for b, sign in ((3 * a + 1, 1.0), (-2 * a + 0.5, -1.0), (1e3 * a, 1.0)):
        r = np.asarray(evaluation.pearson(a, b))
        assert np.all(np.abs(r) <= 1.0)
        np.testing.assert_allclose(r, sign, atol=1e-6)


def test_spearman_matches_rank_formula_on_random_data_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, size=(5, 30)).astype(np.float32)  # many ties
    b = rng.normal(size=(5, 30)).astype(np.float32)
    got = np.asarray(evaluation.spearman(jnp.asarray(a), jnp.asarray(b)))
    for i in range(5):
        ra, rb = ranks_by_hand(a[i]), ranks_by_hand(b[i])
        np.testing.assert_allclose(got[i], np.corrcoef(ra, rb)[0, 1], atol=1e-5)


def test_constant_map_gives_nan_not_a_crash():
    a = jnp.ones((2, 5))
    b = jnp.arange(10.0).reshape(2, 5)
    assert np.isnan(np.asarray(evaluation.pearson(a, b))).all()


def test_topk_overlap_known_answer():
    a = jnp.array([[9.0, 8.0, 7.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    b = jnp.array([[9.0, 0.0, 0.0, 8.0, 7.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(evaluation.topk_overlap(a, b, fraction=0.3), [1 / 3])
    np.testing.assert_allclose(evaluation.topk_overlap(a, a, fraction=0.3), [1.0])
    # absolute: -9 ranks first
    c = jnp.array([[-9.0, 8.0, 7.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(evaluation.topk_overlap(a, c, fraction=0.1), [1.0])
    np.testing.assert_allclose(evaluation.topk_overlap(a, c, fraction=0.1, absolute=False), [0.0])


def test_a_blank_map_has_no_top_features_and_is_left_out_of_the_mean():
    # A blank map ranks nothing (by index it would share every top-k feature with another
    # blank map): NaN, and the matrix averages the examples where both maps rank something.
    a = jnp.array([[9.0, 8.0, 7.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    b = jnp.array([[0.0, 8.0, 9.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(evaluation.topk_overlap(a, b, fraction=0.5), [0.5, np.nan])
    mean, per = evaluation.overlap_matrix({"a": a, "b": b}, fraction=0.5)
    np.testing.assert_array_equal(mean, [[1.0, 0.5], [0.5, 1.0]])
    assert np.isnan(per[1]).all()  # its agreement with itself is undefined too
    np.testing.assert_array_equal(per[0], [[1.0, 0.5], [0.5, 1.0]])
    _, per = evaluation.correlation_matrix({"a": a, "b": b})
    assert np.isnan(per[1]).all() and np.all(np.diagonal(per[0]) == 1.0)


def test_maps_with_nan_are_refused_not_averaged_away():
    good, bad = jnp.ones((2, 4)).at[:, 0].set(2.0), jnp.ones((2, 4)).at[1, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="NaN"):
        evaluation.topk_overlap(good, bad)
    with pytest.raises(ValueError, match=r"maps\['b'\] contains NaN"):
        evaluation.correlation_matrix({"a": good, "b": bad})
    with pytest.raises(ValueError, match="NaN"):
        evaluation.overlap_matrix({"a": good, "b": bad})


def test_a_correlation_with_nan_or_inf_is_nan():
    # Ranks alone would place NaN last and give a finite rank correlation (0.3 here).
    a = jnp.array(
        [[1.0, np.nan, 2.0, 5.0, 3.0], [1.0, np.inf, 2.0, 5.0, 3.0], [1.0, 4.0, 2.0, 5.0, 3.0]]
    )
    b = jnp.array([[1.0, 2.0, 3.0, 4.0, 5.0]] * 3)
    assert np.isnan(scipy.stats.spearmanr(np.asarray(a[0]), np.asarray(b[0]))[0])
    for correlation in (evaluation.spearman, evaluation.pearson):
        for x, y in ((a, b), (b, a)):
            got = np.asarray(correlation(x, y))
            assert np.isnan(got[:2]).all(), correlation
            np.testing.assert_allclose(
                got[2],
                (
                    scipy.stats.spearmanr
                    if correlation is evaluation.spearman
                    else scipy.stats.pearsonr
                )(a[2], b[2])[0],
                atol=1e-6,
            )


def test_correlation_matrix_is_symmetric_with_unit_diagonal():
    normal = testdata.normal
    key = jax.random.key(0)
    x = normal(key, (4, 6, 6, 1))
    maps = {"a": x, "b": 2 * x, "c": -x + 0.1 * normal(jax.random.key(1), x.shape)}
    mean, per = evaluation.correlation_matrix(maps, method="pearson")
    assert per.shape == (4, 3, 3)
    np.testing.assert_allclose(mean, mean.T)
    np.testing.assert_allclose(np.diag(mean), 1.0)
    assert mean[0, 1] == pytest.approx(1.0, abs=1e-5) and mean[0, 2] < -0.9


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        evaluation.pearson(jnp.ones((2, 3)), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="fraction"):
        evaluation.topk_overlap(jnp.ones((1, 3)), jnp.ones((1, 3)), fraction=0.0)
    with pytest.raises(ValueError, match="unknown correlation"):
        evaluation.correlation_matrix({"a": jnp.ones((1, 3))}, method="kendall")


def test_high_confidence_selection_is_balanced_correct_and_confident():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    logits = rng.normal(size=(60, 3))
    logits[np.arange(60), labels] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    idx = evaluation.high_confidence_correct(probs, labels, per_class=4, threshold=0.8, seed=1)
    assert len(idx) == 12
    assert (np.bincount(labels[idx], minlength=3) == 4).all()
    assert (probs[idx].argmax(-1) == labels[idx]).all() and (probs[idx].max(-1) > 0.8).all()
    np.testing.assert_array_equal(
        idx, evaluation.high_confidence_correct(probs, labels, per_class=4, threshold=0.8, seed=1)
    )


def test_selection_with_too_few_confident_examples_returns_what_exists():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.1, 0.9]])
    idx = evaluation.high_confidence_correct(probs, np.array([0, 0, 1]), per_class=2)
    np.testing.assert_array_equal(idx, [0, 2])
