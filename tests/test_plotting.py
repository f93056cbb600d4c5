"""Figures are written, and the heat-map scaling does what the docstring says."""

import numpy as np
import pytest

from fmi_jax import plotting


def test_heatmap_sign_modes():
    a = np.array([[2.0, -1.0], [0.0, 4.0]])
    np.testing.assert_allclose(
        plotting.heatmap(a, sign="positive", outlier_percentile=0), [[0.5, 0], [0, 1]]
    )
    np.testing.assert_allclose(
        plotting.heatmap(a, sign="negative", outlier_percentile=0), [[0, 1], [0, 0]]
    )
    np.testing.assert_allclose(
        plotting.heatmap(a, sign="all", outlier_percentile=0), [[0.5, -0.25], [0, 1]]
    )
    np.testing.assert_allclose(plotting.heatmap(np.zeros((3, 3))), 0)
    with pytest.raises(ValueError, match="unknown sign mode"):
        plotting.heatmap(a, sign="both")
    with pytest.raises(ValueError, match="NaN"):
        plotting.heatmap(np.array([[np.nan]]))


def test_outliers_are_clipped_not_allowed_to_wash_out_the_map():
    a = np.ones((10, 10))
    a[0, 0] = 1000.0
    h = plotting.heatmap(a, sign="absolute", outlier_percentile=2)
    assert h[5, 5] == 1.0 and h[0, 0] == 1.0


def test_blend_keeps_unattributed_pixels_grey():
    image = np.full((4, 4, 1), 0.5)
    attr = np.zeros((4, 4, 1))
    attr[0, 0] = 1.0
    out = plotting.blend(image, attr, sign="absolute")
    assert out.shape == (4, 4, 3)
    np.testing.assert_allclose(out[3, 3], out[3, 3].mean())  # grey
    assert not np.allclose(out[0, 0], out[0, 0].mean())  # coloured


def test_figures_are_written(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(28, 28, 1))
    maps = {"saliency": np.abs(rng.normal(size=(28, 28, 1))), "ig": rng.normal(size=(28, 28, 1))}
    stats = {
        k: {"mean": float(v.mean()), "max": float(v.max()), "std": float(v.std())}
        for k, v in maps.items()
    }
    paths = [
        plotting.explanation_sheet(
            image,
            maps,
            tmp_path / "sheet.png",
            title="t",
            stats=stats,
            correlation=np.array([[1.0, 0.3], [0.3, 1.0]]),
        ),
        plotting.sign_modes(image, maps["ig"], tmp_path / "signs.png", method="ig"),
        plotting.class_gallery(
            rng.uniform(size=(6, 28, 28, 1)),
            rng.normal(size=(6, 28, 28, 1)),
            [0, 0, 1, 1, 2, 2],
            ["a", "b", "c"],
            tmp_path / "gallery.png",
        ),
        plotting.training_curves(
            [
                {"epoch": 1, "train_loss": 1, "train_accuracy": 0.5, "learning_rate": 1e-3},
                {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.7, "learning_rate": 5e-4},
            ],
            tmp_path / "curves.png",
        ),
        plotting.confusion_matrix(np.eye(3) * 5, ["a", "b", "c"], tmp_path / "cm.png"),
    ]
    for p in paths:
        assert p.exists() and p.stat().st_size > 5_000
