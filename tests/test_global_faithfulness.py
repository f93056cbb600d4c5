"""Consistency and sufficiency over a set of maps, against hand counts and scipy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax.evaluation import global_faithfulness as G

# Six maps of 4 features. The top-2 |a| sets with signs: {0+, 2-} for maps 0-2 (in
# different orders and scales), {0+, 2+} for map 3 (a sign differs), {1+, 3+} for 4-5.
MAPS = np.array(
    [
        [5.0, 0.1, -4.0, 0.0],
        [2.0, 0.3, -3.0, 0.2],
        [9.0, -1.0, -8.0, 1.0],
        [5.0, 0.1, 4.0, 0.0],
        [0.0, 3.0, 0.5, 2.0],
        [-0.1, 7.0, 0.2, 7.0],
    ],
    np.float32,
)
PREDICTIONS = np.array([0, 0, 1, 0, 2, 2])


def test_consistency_by_hand():
    # Map 0's group is {1, 2}: one of two shares its class; map 2's: none; map 3 is
    # alone (NaN); maps 4 and 5 agree.
    got = np.asarray(G.consistency(MAPS, PREDICTIONS, k=2))
    np.testing.assert_allclose(got, [0.5, 0.5, 0.0, np.nan, 1.0, 1.0])
    # A positive rescaling of a map changes neither its top features nor their signs.
    scaled = MAPS * np.array([1.0, 3.0, 0.5, 2.0, 10.0, 1.0], np.float32)[:, None]
    np.testing.assert_array_equal(np.asarray(G.consistency(scaled, PREDICTIONS, k=2)), got)
    # k = 1: {0+} for maps 0, 2 and 3, {2-} for map 1 alone, {1+} for maps 4 and 5
    # (map 5's 7.0 is tied at features 1 and 3: the lower index).
    np.testing.assert_allclose(
        G.consistency(MAPS, PREDICTIONS, k=1), [0.5, np.nan, 0.0, 0.5, 1.0, 1.0]
    )


def test_sufficiency_is_the_same_class_share_among_close_maps():
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    maps = rng.normal(size=(12, 3, 3)).astype(np.float32)
    maps[:, 0, 0] = 0.0  # the same in every map: no information, left out
    predictions = rng.integers(0, 3, size=12)
    flat = maps.reshape(12, -1)[:, 1:]
    d = cdist(flat, flat, "seuclidean", V=flat.var(0, ddof=1))
    for threshold in (0.3, 0.6, 0.9):
        near = (d <= threshold * d.max()) & ~np.eye(12, dtype=bool)
        same = predictions[:, None] == predictions[None, :]
        with np.errstate(invalid="ignore"):
            want = (near & same).sum(1) / near.sum(1)
        got = G.sufficiency(maps, predictions, threshold=threshold)
        np.testing.assert_allclose(got, want, atol=1e-6)
    # Two tight clusters far apart: each map's neighbours are its own cluster.
    centres = np.repeat(np.array([[0.0, 0.0], [10.0, 10.0]]), 3, axis=0)
    clusters = centres + 0.01 * rng.normal(size=(6, 2))
    got = G.sufficiency(clusters.astype(np.float32), np.array([0, 0, 1, 2, 2, 2]), threshold=0.5)
    np.testing.assert_allclose(got, [0.5, 0.5, 0.0, 1.0, 1.0, 1.0], atol=1e-6)


def test_jit_and_bad_input():
    jitted = jax.jit(G.consistency, static_argnames="k")
    np.testing.assert_array_equal(
        np.isnan(jitted(MAPS, PREDICTIONS, k=2)), np.isnan(G.consistency(MAPS, PREDICTIONS, k=2))
    )
    with pytest.raises(ValueError, match="predictions must be the predicted classes"):
        G.consistency(MAPS, PREDICTIONS.astype(float))
    with pytest.raises(ValueError, match="N >= 2"):
        G.sufficiency(MAPS[:1], PREDICTIONS[:1])
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        G.consistency(MAPS, PREDICTIONS, k=5)
    with pytest.raises(ValueError, match="threshold must be in"):
        G.sufficiency(MAPS, PREDICTIONS, threshold=1.5)
    # NumPy and JAX scalars are numbers too.
    expected = G.sufficiency(MAPS, PREDICTIONS, threshold=0.5)
    for threshold in (np.float32(0.5), jnp.float32(0.5), np.float64(0.5)):
        np.testing.assert_array_equal(
            G.sufficiency(MAPS, PREDICTIONS, threshold=threshold), expected
        )
    for bad in (True, "0.5", jnp.array([0.5, 0.5])):
        with pytest.raises(ValueError, match="threshold must be a finite number"):
            G.sufficiency(MAPS, PREDICTIONS, threshold=bad)
