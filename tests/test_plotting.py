"""Figures come back as Figures and are written only when asked, the heat-map scaling
does what the docstrings say (per map or shared across a figure), and importing fmi_jax
leaves matplotlib's backend and pyplot alone."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from fmi_jax import plotting

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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


def test_heatmap_with_a_given_scale_divides_by_it():
    a = np.array([[2.0, -1.0], [0.0, 4.0]])
    np.testing.assert_allclose(plotting.heatmap(a, sign="all", scale=8.0), a / 8.0)
    np.testing.assert_allclose(plotting.heatmap(a, sign="absolute", scale=2.0), [[1, 0.5], [0, 1]])
    with pytest.raises(ValueError, match="scale"):
        plotting.heatmap(a, scale=-1.0)


def test_map_scale_is_the_percentile_of_all_maps_together():
    a, b = np.full((2, 2), 1.0), np.array([[-3.0, 0.0], [0.0, 0.0]])
    assert plotting.map_scale([a, b], outlier_percentile=0) == 3.0
    # channels are summed before the absolute value, as they are drawn
    assert plotting.map_scale([np.ones((2, 2, 3))], outlier_percentile=0) == 3.0
    np.testing.assert_allclose(
        plotting.map_scale([a, b], outlier_percentile=50),
        np.percentile([1, 1, 1, 1, 3, 0, 0, 0], 50),
    )


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


# ----------------------------------------------------------- every public figure function
_RNG = np.random.default_rng(0)
_IMAGE = _RNG.uniform(size=(12, 12, 1))
_MAPS = {"saliency": np.abs(_RNG.normal(size=(12, 12, 1))), "ig": _RNG.normal(size=(12, 12, 1))}
_HISTORY = [
    {"epoch": 1, "train_loss": 1, "train_accuracy": 0.5, "learning_rate": 1e-3},
    {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.7, "learning_rate": 5e-4},
]
# name -> (function, positional arguments before `path`, keyword arguments)
FIGURES = {
    "explanation_sheet": (
        plotting.explanation_sheet,
        (_IMAGE, _MAPS),
        {
            "title": "t",
            "stats": {
                k: {"mean": float(v.mean()), "max": float(v.max())} for k, v in _MAPS.items()
            },
            "correlation": np.array([[1.0, 0.3], [0.3, 1.0]]),
        },
    ),
    "sign_modes": (plotting.sign_modes, (_IMAGE, _MAPS["ig"]), {"method": "ig"}),
    "class_gallery": (
        plotting.class_gallery,
        (_RNG.uniform(size=(4, 12, 12, 1)), _RNG.normal(size=(4, 12, 12, 1)), [0, 0, 1, 2]),
        {"class_names": ["a", "b", "c"]},
    ),
    "layer_grid": (
        plotting.layer_grid,
        (_RNG.uniform(size=(2, 12, 12, 3)), {"c1": _RNG.normal(size=(2, 12, 12))}),
        {"row_titles": ["x", "y"]},
    ),
    "agreement_matrices": (
        plotting.agreement_matrices,
        ({"Pearson": np.eye(2)}, ["a", "b"]),
        {},
    ),
    "concept_scores": (
        plotting.concept_scores,
        (
            {"conv2": _RNG.uniform(size=(3, 2)), "conv3": _RNG.uniform(size=(3, 2))},
            {"conv2": np.eye(3, 2, dtype=bool), "conv3": np.ones((3, 2), bool)},
            ["a", "b", "c"],
            ["x", "y"],
        ),
        {},
    ),
    "training_curves": (plotting.training_curves, (_HISTORY,), {}),
    "confusion_matrix": (plotting.confusion_matrix, (np.eye(3) * 5, ["a", "b", "c"]), {}),
    "faithfulness_curves": (
        plotting.faithfulness_curves,
        ({"ig": {"deletion": np.linspace(1, 0, 5), "insertion": np.linspace(0, 1, 5)}},),
        {},
    ),
    "randomization_curves": (
        plotting.randomization_curves,
        (["out", "c1"], {"ig": {"spearman_abs": np.array([1.0, 0.2]), "ssim": np.ones(2)}}),
        {"threshold": 0.5},
    ),
    "atom_grid": (plotting.atom_grid, (_RNG.normal(size=(4, 5, 5)),), {}),
    "reconstructions": (plotting.reconstructions, (_RNG.uniform(size=(2, 5, 5)),) * 2, {}),
    "latent_usage": (plotting.latent_usage, (np.array([0, 3, 5]),), {"num_samples": 10}),
    "image_explanation": (
        plotting.image_explanation,
        (_RNG.uniform(size=(12, 12, 3)), _RNG.normal(size=(12, 12, 3)), ["cat", "dog"], [0.9, 0.1]),
        {},
    ),
    "summary_sheet": (
        plotting.summary_sheet,
        (_RNG.uniform(size=(2, 12, 12, 3)), _RNG.normal(size=(2, 12, 12, 3)), ["a", "b"]),
        {},
    ),
}


def test_every_public_figure_function_is_covered():
    drawing = {
        name
        for name in plotting.__all__
        if callable(getattr(plotting, name))
        and getattr(plotting, name).__annotations__.get("return") == "Figure"
    }
    assert drawing == set(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_is_returned_and_written_only_when_given_a_path(tmp_path, name):
    fn, args, kwargs = FIGURES[name]
    fig = fn(*args, **kwargs)
    assert isinstance(fig, Figure) and fig.axes
    assert fig._repr_png_().startswith(PNG_MAGIC)  # what a notebook shows
    assert list(tmp_path.iterdir()) == []
    path = tmp_path / "sub" / f"{name}.png"
    assert isinstance(fn(*args, path=path, **kwargs), Figure)
    assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 2_000
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [path.name]  # no temp left


def test_save_writes_other_formats_by_suffix(tmp_path):
    fig = plotting.confusion_matrix(np.eye(2), ["a", "b"])
    assert plotting.save(fig, tmp_path / "cm.svg").read_text().lstrip().startswith("<?xml")


def test_confusion_matrix_numbers_unnamed_classes_and_checks_the_names():
    fig = plotting.confusion_matrix(np.eye(3), None)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "1", "2"]
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        plotting.confusion_matrix(np.eye(3), ["a", "b"])


def test_curves_name_their_axis_and_a_method_without_data():
    fig = plotting.faithfulness_curves(
        {"ig": {"SIC": np.linspace(0, 1, 11)}, "cam": {"SIC": np.full(11, np.nan)}},
        panels=("SIC",),
        xlabel="normalised information",
    )
    ax = fig.axes[0]
    assert ax.get_xlabel() == "normalised information"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ig (0.500)", "cam (no data)"]
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [11, 0]


def test_panels_of_image_figures():
    fn, args, kwargs = FIGURES["image_explanation"]
    assert plotting.panels(fn(*args, **kwargs)) == plotting.IMAGE_PANELS
    fn, args, kwargs = FIGURES["summary_sheet"]
    assert plotting.panels(fn(*args, **kwargs)) == ("image_0", "ig_0", "image_1", "ig_1")


# ------------------------------------------------------------------------ colour scales
def _panel(fig, label):
    (ax,) = [ax for ax in fig.axes if ax.get_label() == label]
    return ax


def _colorbars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def _half_and_full():
    m = np.abs(np.random.default_rng(1).normal(size=(8, 8))) + 0.1
    return m, 2 * m


def test_shared_scale_shows_a_map_twice_as_large_twice_as_intense():
    m, double = _half_and_full()
    fig = plotting.explanation_sheet(
        np.zeros((8, 8)), {"one": m, "two": double}, scale="shared", outlier_percentile=0
    )
    one = np.asarray(_panel(fig, "map:one").images[0].get_array())
    two = np.asarray(_panel(fig, "map:two").images[0].get_array())
    np.testing.assert_allclose(one, 0.5 * two)
    np.testing.assert_allclose(two, double / double.max())  # the scale is the max of both maps


def test_each_scale_saturates_every_map():
    m, double = _half_and_full()
    fig = plotting.explanation_sheet(
        np.zeros((8, 8)), {"one": m, "two": double}, scale="each", outlier_percentile=0
    )
    one = np.asarray(_panel(fig, "map:one").images[0].get_array())
    two = np.asarray(_panel(fig, "map:two").images[0].get_array())
    np.testing.assert_allclose(one, two)
    assert one.max() == 1.0


def test_shared_colorbar_is_in_real_units():
    m, double = _half_and_full()
    maps = {"one": m, "two": double}
    fig = plotting.explanation_sheet(np.zeros((8, 8)), maps, scale="shared", colorbar=True)
    (bar,) = _colorbars(fig)
    expected = np.percentile(np.abs(np.concatenate([m.ravel(), double.ravel()])), 99)
    assert expected == plotting.map_scale(maps.values())
    np.testing.assert_allclose(bar.get_ylim(), (0.0, expected))
    # a signed map gets its own diverging bar on the same scale
    signed = {"one": m, "two": -double}
    fig = plotting.explanation_sheet(
        np.zeros((8, 8)), signed, scale="shared", colorbar=True, outlier_percentile=0
    )
    limits = sorted(tuple(bar.get_ylim()) for bar in _colorbars(fig))
    np.testing.assert_allclose(limits, [(-double.max(), double.max()), (0.0, double.max())])


def test_each_colorbar_is_per_map_in_its_units():
    m, double = _half_and_full()
    fig = plotting.explanation_sheet(
        np.zeros((8, 8)), {"one": m, "two": double}, colorbar=True, outlier_percentile=0
    )
    limits = sorted(bar.get_ylim()[1] for bar in _colorbars(fig))
    np.testing.assert_allclose(limits, [m.max(), double.max()])


def test_a_numeric_scale_is_used_as_given():
    m, _ = _half_and_full()
    fig = plotting.explanation_sheet(np.zeros((8, 8)), {"one": m}, scale=10.0, colorbar=True)
    np.testing.assert_allclose(_panel(fig, "map:one").images[0].get_array(), m / 10.0)
    np.testing.assert_allclose(_colorbars(fig)[0].get_ylim(), (0.0, 10.0))
    with pytest.raises(ValueError, match="unknown scale"):
        plotting.explanation_sheet(np.zeros((8, 8)), {"one": m}, scale="common")
    with pytest.raises(ValueError, match="finite and > 0"):
        plotting.explanation_sheet(np.zeros((8, 8)), {"one": m}, scale=0.0)


def _check_blends(first, second, scale):
    """Blended panels of a map and of twice that map, over a black image: the same
    for 'each', the first expected exactly from half the heat for 'shared'."""
    first = np.asarray(first.images[0].get_array(), np.float64)
    second = np.asarray(second.images[0].get_array(), np.float64)
    if scale == "each":
        np.testing.assert_allclose(first, second)
    else:
        m, double = _half_and_full()
        black = np.zeros((8, 8))
        np.testing.assert_allclose(first, plotting.blend(black, m, scale=double.max()))
        np.testing.assert_allclose(second, plotting.blend(black, double, scale=double.max()))
        assert not np.allclose(first, second)


def test_layer_grid_and_class_gallery_share_one_scale():
    m, double = _half_and_full()
    for scale in ("each", "shared"):
        fig = plotting.layer_grid(
            np.zeros((1, 8, 8)),
            {"a": m[None], "b": double[None]},
            scale=scale,
            colorbar=True,
            outlier_percentile=0,
        )
        first, second = fig.axes[1], fig.axes[2]
        assert first.get_title() == "a" and second.get_title() == "b"
        _check_blends(first, second, scale)
        bars = _colorbars(fig)
        assert len(bars) == (1 if scale == "shared" else 2)
        assert bars[-1].get_ylim()[1] == pytest.approx(double.max())

        fig = plotting.class_gallery(
            np.zeros((2, 8, 8)),
            np.stack([m, double]),
            [0, 1],
            ["a", "b"],
            per_class=1,
            sign="absolute",
            scale=scale,
            colorbar=True,
            outlier_percentile=0,
        )
        _check_blends(*fig.axes[:2], scale)
        assert len(_colorbars(fig)) == (1 if scale == "shared" else 2)


def test_layer_grid_keeps_the_sign_of_signed_layer_maps():
    # A signed layer method (layer IG): left half negative, right half positive. Drawn
    # as magnitudes both halves would look alike; by default the grid draws the signs.
    signed = np.ones((1, 8, 8))
    signed[:, :, :4] = -1.0
    fig = plotting.layer_grid(np.zeros((1, 8, 8)), {"conv": signed}, outlier_percentile=0)
    rgb = np.asarray(fig.axes[1].images[0].get_array())
    left, right = rgb[:, :4].mean((0, 1)), rgb[:, 4:].mean((0, 1))
    assert left[2] > left[0] and right[0] > right[2]  # blue negative, red positive
    assert fig._suptitle.get_text() == "each layer's map"
    cam = plotting.layer_grid(np.zeros((1, 8, 8)), {"conv": np.abs(signed)}, method="Grad-CAM")
    assert cam._suptitle.get_text() == "Grad-CAM of each layer"
    rgb = np.asarray(cam.axes[1].images[0].get_array())
    np.testing.assert_allclose(rgb[:, :4], rgb[:, 4:])  # magnitudes: the halves alike


def test_agreement_matrices_share_one_scale_and_mark_undefined_entries():
    # Without negative entries the scale stays [-1, 1]: 0 is white in every matrix.
    overlap = np.array([[1.0, 0.0], [0.0, 1.0]])
    spearman = np.array([[1.0, np.nan], [np.nan, 1.0]])
    fig = plotting.agreement_matrices({"overlap": overlap, "Spearman": spearman}, ["a", "b"])
    for ax in fig.axes[:2]:
        assert ax.images[0].get_clim() == (-1, 1)
    image = fig.axes[0].images[0]
    np.testing.assert_allclose(image.cmap(image.norm(0.0))[:3], [0.97, 0.97, 0.97], atol=0.03)
    assert "n/a" in [t.get_text() for t in fig.axes[1].texts]


def test_class_gallery_refuses_labels_without_a_name():
    with pytest.raises(ValueError, match=r"labels hold classes \[3\] without a name"):
        plotting.class_gallery(np.zeros((2, 8, 8)), np.ones((2, 8, 8)), [0, 3], ["a", "b", "c"])


def test_images_outside_the_unit_range_are_flagged_and_uint8_is_read_as_0_to_255():
    attr = np.ones((4, 4))
    with pytest.warns(UserWarning, match=r"values from -1 to 2 are clipped"):
        plotting.blend(np.linspace(-1, 2, 16).reshape(4, 4), attr)
    grey = np.full((4, 4), 0.5)
    np.testing.assert_allclose(
        plotting.blend(np.full((4, 4), 255, np.uint8), attr), plotting.blend(np.ones((4, 4)), attr)
    )
    assert not np.allclose(plotting.blend(grey, attr), plotting.blend(np.ones((4, 4)), attr))


def test_a_map_that_does_not_fit_its_image_is_refused():
    image, cam = np.zeros((16, 20)), np.ones((1, 16, 20))  # a batch of one map
    with pytest.raises(ValueError, match=r"\(1, 16, 20\): one map of a batch"):
        plotting.heatmap(cam)
    with pytest.raises(ValueError, match="one map of a batch"):
        plotting.sign_modes(image, cam)
    with pytest.raises(ValueError, match=r"map of \(H, W\) \(4, 5\) does not fit"):
        plotting.blend(image, np.ones((4, 5)))  # a layer's map, not resized
    assert plotting.blend(np.zeros((16, 20, 3)), np.ones((16, 20, 3))).shape == (16, 20, 3)


def test_sign_modes_shared_scale_shows_the_balance_of_signs():
    attr = np.ones((6, 6))
    attr[:3] = -0.25  # weak negative evidence
    each = plotting.sign_modes(np.zeros((6, 6)), attr, outlier_percentile=0)
    shared = plotting.sign_modes(np.zeros((6, 6)), attr, scale="shared", outlier_percentile=0)
    negative = 2  # axes: input, positive, negative, ...
    assert each.axes[negative].get_title() == "negative"
    assert np.asarray(each.axes[negative].images[0].get_array()).max() == 1.0
    assert np.asarray(shared.axes[negative].images[0].get_array()).max() == 0.25
    assert {bar.get_ylim()[1] for bar in _colorbars(shared)} == {1.0}
    assert not _colorbars(plotting.sign_modes(np.zeros((6, 6)), attr, colorbar=False))


# ------------------------------------------------------------- imports leave matplotlib be
_IMPORT_CHECK = """
import json, sys
import matplotlib
if {import_fmi_jax}:
    import fmi_jax, fmi_jax.plotting, fmi_jax.studies, fmi_jax.train
    import numpy as np
    fig = fmi_jax.plotting.explanation_sheet(
        np.zeros((4, 4)), {{"a": np.ones((4, 4))}}, sys.argv[1], colorbar=True
    )
backend = dict.__getitem__(matplotlib.rcParams, "backend")  # without resolving it
pyplot = "matplotlib.pyplot" in sys.modules
print(json.dumps({{
    "backend": backend if isinstance(backend, str) else "<not chosen>",
    "pyplot": pyplot,
    "reported": matplotlib.get_backend() if isinstance(backend, str) else None,
}}))
"""


def _import_check(import_fmi_jax: bool, mplbackend: str | None, tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    if mplbackend is not None:
        env["MPLBACKEND"] = mplbackend
    script = textwrap.dedent(_IMPORT_CHECK.format(import_fmi_jax=import_fmi_jax))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "sheet.png")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mplbackend", [None, "svg"])
def test_importing_fmi_jax_leaves_the_backend_and_pyplot_alone(tmp_path, mplbackend):
    reference = _import_check(False, mplbackend, tmp_path)
    after = _import_check(True, mplbackend, tmp_path)
    assert (tmp_path / "sheet.png").exists()  # a figure was drawn and saved, headless
    assert after == reference
    assert after["pyplot"] is False
    if mplbackend is None:
        assert after["backend"] == "<not chosen>"
    else:
        assert after["reported"] == mplbackend


def test_concept_scores_checks_its_shapes():
    with pytest.raises(ValueError, match=r"significant\['conv2'\] has shape \(2, 2\)"):
        plotting.concept_scores(
            {"conv2": np.zeros((3, 2))}, {"conv2": np.ones((2, 2), bool)}, "abc", "xy"
        )
    with pytest.raises(ValueError, match="at least one layer"):
        plotting.concept_scores({}, {}, "abc", "xy")


def test_panels_scaled_to_themselves_say_their_scale_and_a_zero_map_says_so():
    """Each map saturates at its own scale: without a colour bar, the value drawn at
    full colour is written under the panel (a 1e-5 map beside a 1e-2 one), and an
    all-zero map's colour bar has no invented range."""
    images = np.zeros((2, 8, 8))
    maps = {"weak": np.full((2, 8, 8), 1e-5), "strong": np.full((2, 8, 8), 2e-2)}
    maps["weak"][1] = 0.0
    fig = plotting.layer_grid(images, maps)
    labels = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
    assert labels == [
        "full colour at 1e-05",
        "full colour at 0.02",
        "all zero",
        "full colour at 0.02",
    ]
    assert not [
        ax for ax in plotting.layer_grid(images, maps, scale="shared").axes if ax.get_xlabel()
    ]
    with_bars = plotting.layer_grid(images, maps, colorbar=True)
    assert not [ax for ax in with_bars.axes if ax.get_xlabel()]
    bars = [ax for ax in with_bars.axes if ax.get_label() == "<colorbar>"]
    assert [ax.get_ylabel() for ax in bars].count("all zero") == 1
    assert [len(ax.get_yticks()) for ax in bars if ax.get_ylabel() == "all zero"] == [0]
    gallery = plotting.class_gallery(images, maps["weak"], [0, 0], ["a"], per_class=2)
    assert [ax.get_xlabel() for ax in gallery.axes] == ["full colour at 1e-05", "all zero"]


def test_sheet_marks_undefined_correlations_and_draws_uint8_inputs_in_grey_levels():
    ramp = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    maps = {"a": np.ones((16, 16)), "b": np.zeros((16, 16))}
    correlation = np.array([[1.0, np.nan], [np.nan, np.nan]])
    fig = plotting.explanation_sheet(ramp, maps, correlation=correlation)
    panel = next(ax for ax in fig.axes if ax.get_label() == "correlation")
    assert [t.get_text() for t in panel.texts] == ["1.00", "n/a", "n/a", "n/a"]
    assert panel.images[0].cmap.get_bad()[3] == 1.0  # an opaque grey, not white (= 0)
    drawn = next(ax for ax in fig.axes if ax.get_label() == "input").images[0].get_array()
    np.testing.assert_allclose(np.asarray(drawn)[0, :, 0], np.arange(0, 256, 16) / 255)


def test_arguments_that_do_not_fit_the_maps_are_one_line_errors():
    """Each of these used to draw a wrong figure (examples left out, a matrix cropped,
    a method that is not drawn in the table) or fail deep inside."""
    image, maps = np.zeros((8, 8)), {"a": np.ones((8, 8)), "b": -np.ones((8, 8))}
    cases = [
        (
            lambda: plotting.class_gallery(np.zeros((6, 8, 8)), np.ones((6, 8, 8)), [0, 1], "ab"),
            r"one map and one label per image, got 6 images, 6 maps and 2 labels",
        ),
        (
            lambda: plotting.layer_grid(
                np.zeros((2, 8, 8)), {"l": np.ones((2, 8, 8))}, row_titles=["x"]
            ),
            r"row_titles has 1 labels for 2 images",
        ),
        (
            lambda: plotting.concept_scores({"l": np.zeros((3, 2))}, {}, "abc", "xy"),
            r"significant has no entry for the layer\(s\) \['l'\]",
        ),
        (
            lambda: plotting.explanation_sheet(image, maps, correlation=np.eye(3)),
            r"the correlation matrix has shape \(3, 3\), expected \(2, 2\)",
        ),
        (
            lambda: plotting.explanation_sheet(image, maps, stats={"c": {"sum": 1.0}}),
            r"stats name \['c'\], which are not among the maps \['a', 'b'\]",
        ),
        (
            lambda: plotting.agreement_matrices({"Spearman": np.eye(3)}, ["a", "b"]),
            r"the 'Spearman' matrix has shape \(3, 3\), expected \(2, 2\)",
        ),
        (
            lambda: plotting.heatmap(np.ones((8, 8)), outlier_percentile=200),
            r"outlier_percentile must be in \[0, 100\)",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
