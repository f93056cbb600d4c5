"""`fmi_jax.report.report` and the HTML page writer, on a linear model with known answers.

For `f(x) = x.reshape(N, -1) @ W` and a zero baseline, input x gradient and Integrated
Gradients are both `x * W[:, t]` and sum to `f_t(x) - f_t(0)` exactly, so their
completeness gap is rounding only and they agree perfectly with each other.
"""

import html.parser
import json
import logging
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from fmi_jax import attribution
from fmi_jax import report as report_module
from fmi_jax.plotting import html as page
from fmi_jax.report import report
from tests import testdata

METHODS = ("saliency", "integrated_gradients", "input_x_gradient")
CLASS_NAMES = ("left", "middle", "right")


def _linear_model():
    w = testdata.normal(jax.random.key(1), (64, 3)) / 8.0
    return lambda x: x.reshape(x.shape[0], -1) @ w


def _images():
    return testdata.uniform(jax.random.key(2), (4, 8, 8, 1))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report"
    index = report(
        _linear_model(),
        _images(),
        methods=METHODS,
        out=out,
        labels=[0, 1, 2, 0],
        class_names=CLASS_NAMES,
    )
    return out, index


class _Refs(html.parser.HTMLParser):
    """Every src/href of a page, the <img> sources, and the text of its table cells."""

    def __init__(self):
        super().__init__()
        self.refs, self.images, self.cells, self._cell = [], [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.refs += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.cells.append(self._cell)
            self._cell = None


def _parse(path: Path) -> _Refs:
    refs = _Refs()
    refs.feed(path.read_text(encoding="utf-8"))
    return refs


def _assert_references_exist(index: Path) -> _Refs:
    refs = _parse(index)
    for ref in refs.refs:
        if ref.startswith("#"):
            continue
        assert not urllib.parse.urlsplit(ref).scheme, ref  # offline: nothing fetched
        assert (index.parent / urllib.parse.unquote(ref)).is_file(), ref
    return refs


def test_report_writes_sheets_stats_and_page(written):
    out, index = written
    assert index == out / "index.html"
    assert sorted(p.name for p in (out / "sheets").iterdir()) == [f"{i}.png" for i in range(4)]
    assert (out / "agreement.png").stat().st_size > 5_000
    assert not list(out.rglob(".*"))  # no temporary files left
    stats = json.loads((out / "stats.json").read_text())
    assert list(stats["methods"]) == list(METHODS)
    for m in ("integrated_gradients", "input_x_gradient"):
        gap = stats["methods"][m]["completeness"]
        assert gap["max_abs_gap"] < 1e-5, m
        assert gap["mean_abs_logit_difference"] > 0.1, m  # the gap is small against this
    assert stats["methods"]["saliency"]["completeness"]["mean_abs_gap"] > 1e-2
    for m in METHODS:
        assert stats["methods"][m]["seconds"] > 0 and stats["methods"][m]["first_call_seconds"] > 0
    agreement = stats["agreement"]
    assert agreement["methods"] == list(METHODS)
    spearman, overlap = np.array(agreement["spearman"]), np.array(agreement["topk_overlap"])
    assert spearman[0, 0] == 1.0 and overlap[0, 0] == 1.0  # saliency with itself
    ig, ixg = METHODS.index("integrated_gradients"), METHODS.index("input_x_gradient")
    np.testing.assert_allclose(spearman[ig, ixg], 1.0, atol=1e-6)
    np.testing.assert_allclose(overlap[ig, ixg], 1.0)
    assert stats["predictions"] == stats["target"]  # target=None: the predicted class


def test_page_references_only_files_that_exist(written):
    out, index = written
    refs = _assert_references_exist(index)
    assert sorted(refs.images) == ["agreement.png"] + [f"sheets/{i}.png" for i in range(4)]
    assert "stats.json" in refs.refs
    assert set(METHODS) <= set(refs.cells)
    text = index.read_text()
    assert "#2, label right, predicted" in text


def test_bad_input_is_refused_with_one_line(tmp_path):
    fn, x = _linear_model(), _images()
    cases = [
        (dict(methods=("saliency", "gradcam")), r"unknown method\(s\) 'gradcam'; available:"),
        (dict(methods=()), "methods is empty"),
        (dict(methods=("saliency", "smoothgrad")), "smoothgrad draws random samples.*key="),
        (dict(methods=("saliency",), options={"occlusion": {}}), "occlusion.*not among"),
        (dict(methods=("saliency",), x=(x * 255).astype(jnp.uint8)), "dtype uint8.*astype"),
        (dict(methods=("saliency",), x=x[0]), r"without its batch axis: pass x\[None\]"),
        (dict(methods=("saliency",), images=x[:2]), r"images of shape \(2, 8, 8, 1\) do not fit"),
        (dict(methods=("saliency",), images=x - 0.5), r"images must be in \[0, 1\] for display"),
        (dict(methods=("saliency",), labels=[0, 1, 2, 7]), r"labels must be classes in \[0, 3\)"),
        (dict(methods=("saliency",), class_names="abc"), "a list of names, got the string 'abc'"),
        (dict(methods=("saliency",), max_sheets=-1), "max_sheets must be None or an integer >= 0"),
        (dict(methods=("saliency",), max_sheets=1.7), "max_sheets must be None or an integer"),
        (
            dict(methods=("saliency",), fn=lambda z: jnp.log(fn(z) - 9.0)),
            r"fn returned NaN or infinite logits for 4 of the 4 examples \(the first: #0\)",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            report(kwargs.pop("fn", fn), kwargs.pop("x", x), out=tmp_path / "new", **kwargs)
        assert "\n" not in str(error.value)
    assert not (tmp_path / "new").exists()  # nothing written
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a previous report.*notes.txt") as error:
        report(fn, x, methods=("saliency",), out=foreign)
    assert "\n" not in str(error.value)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert (foreign / "notes.txt").read_text() == "mine"
    (foreign / "notes.txt").unlink()
    (foreign / "stats.json").write_text("{}")  # a report's name, but not a report
    with pytest.raises(ValueError, match="stats.json"):
        report(fn, x, methods=("saliency",), out=foreign)
    assert (foreign / "stats.json").read_text() == "{}"
    # A researcher's own page and figure under a report's names, without a report's
    # stats.json: neither is replaced or deleted.
    (foreign / "stats.json").unlink()
    (foreign / "sheets").mkdir()
    (foreign / "sheets" / "7.png").write_bytes(b"mine")
    (foreign / "index.html").write_text("my own page")
    with pytest.raises(ValueError, match="index.html without a report's stats.json"):
        report(fn, x, methods=("saliency",), out=foreign)
    assert (foreign / "index.html").read_text() == "my own page"
    assert (foreign / "sheets" / "7.png").read_bytes() == b"mine"


def test_probabilities_instead_of_logits_are_flagged(tmp_path, caplog):
    linear, x = _linear_model(), _images()
    for fn, flagged in ((linear, False), (lambda x: jax.nn.softmax(linear(x)), True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            report(fn, x, methods=("saliency",), out=tmp_path / str(flagged), max_sheets=0)
        assert ("they look like probabilities" in caplog.text) is flagged


def test_sheets_draw_the_images_given_else_x_min_max_scaled(tmp_path, monkeypatch):
    # Standardised inputs (mean 0, std 1 per channel): min-max scaling cannot undo a
    # per-channel normalisation, so the photos as they were can be given for display.
    drawn = []

    def sheet(image, maps, *, path, **kwargs):
        drawn.append(image)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")

    monkeypatch.setattr(report_module.plotting, "explanation_sheet", sheet)
    photos = _images()
    x = (photos - 0.5) / 0.25
    report(_linear_model(), x, methods=("saliency",), out=tmp_path / "a", images=photos)
    np.testing.assert_allclose(np.stack(drawn), photos, rtol=1e-6)
    drawn.clear()
    as_read = np.round(np.asarray(photos) * 255).astype(np.uint8)  # photos as read
    report(_linear_model(), x, methods=("saliency",), out=tmp_path / "u", images=as_read)
    np.testing.assert_allclose(np.stack(drawn), as_read / 255, rtol=1e-6)
    drawn.clear()
    report(_linear_model(), x, methods=("saliency",), out=tmp_path / "b")
    lo, hi = x.min(axis=(1, 2, 3), keepdims=True), x.max(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(np.stack(drawn), (x - lo) / (hi - lo), rtol=1e-5)


def test_a_previous_report_is_replaced(tmp_path, written):
    out = tmp_path / "again"
    shutil.copytree(written[0], out)
    report(
        _linear_model(),
        _images()[:2],
        methods=("saliency", "occlusion"),
        out=out,
        options={"occlusion": {"window": (2, 2)}},
    )
    assert sorted(p.name for p in (out / "sheets").iterdir()) == ["0.png", "1.png"]
    assert list(json.loads((out / "stats.json").read_text())["methods"]) == [
        "saliency",
        "occlusion",
    ]
    _assert_references_exist(out / "index.html")


class _TinyCNN(nn.Module):
    """A strided conv (8x8 -> 4x4, biased, so the activation of the zero input is not
    zero), tanh, a conv, ReLU and a dense head: not linear after the first layer."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(3, (3, 3), strides=2, bias_init=nn.initializers.constant(0.3), name="conv1")(x)
        x = nn.relu(nn.Conv(4, (3, 3), name="conv2")(jnp.tanh(x)))
        return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))


def test_completeness_gap_is_of_the_attributions_against_the_methods_reference(tmp_path):
    # Layer maps are resized to the image for display, which does not keep their total;
    # the gap is of the layer's attributions, against the reference each method uses
    # (a distribution's mean, the zero activation or layer_baseline at a layer).
    module = _TinyCNN()
    x = testdata.normal(jax.random.key(3), (2, 8, 8, 1))
    handle = attribution.flax_model(module, module.init(jax.random.key(4), x))
    references = testdata.normal(jax.random.key(5), (5, 8, 8, 1))
    options = {
        "layer_integrated_gradients": {"layer": "conv1", "steps": 128},
        "layer_deeplift": {"layer": "conv1"},  # reference: the zero activation
        "layer_deeplift_shap": {"layer": "conv1", "baseline": references},
        "deeplift_shap": {"baseline": references},
        "layer_feature_ablation": {"layer": "conv1", "layer_baseline": 0.5},
        "grad_cam": {"layer": "conv1"},
    }
    report(handle, x, methods=tuple(options), options=options, out=tmp_path / "r", max_sheets=0)
    stats = json.loads((tmp_path / "r" / "stats.json").read_text())["methods"]
    # complete methods: IG up to its quadrature error (the rest of the network is not
    # linear), DeepLIFT and DeepLiftShap exactly
    for m, within in (
        ("layer_integrated_gradients", 2e-2),
        ("layer_deeplift", 1e-4),
        ("layer_deeplift_shap", 1e-4),
        ("deeplift_shap", 1e-4),
    ):
        gap = stats[m]["completeness"]
        assert gap["max_abs_gap"] < within * gap["mean_abs_logit_difference"], (m, gap)
    # the logit difference is measured from the layer's reference, not an input
    target = jnp.argmax(handle(x), -1)
    at_layer = handle.logits_with(x, "conv1", jnp.full((2, 4, 4, 3), 0.5))
    np.testing.assert_allclose(
        stats["layer_feature_ablation"]["completeness"]["mean_abs_logit_difference"],
        np.abs(np.take_along_axis(handle(x) - at_layer, target[:, None], 1)).mean(),
        rtol=1e-5,
    )
    # the maps compared and drawn are the explainer's own, resized as it resizes them
    for m in ("layer_integrated_gradients", "grad_cam"):
        raw, shown = report_module._explainer(m, handle, options[m])(x, target, None)
        assert raw.shape == (2, 4, 4, 1)
        expected = attribution.explainer(m, handle, **options[m])(x, target)
        np.testing.assert_allclose(shown, expected, rtol=1e-5, atol=1e-6)


def test_page_writer_escapes_formats_and_refuses_missing_files(tmp_path):
    (tmp_path / "a b.png").write_bytes(b"png")
    path = page.write_page(
        tmp_path / "index.html",
        title="<script>alert(1)</script>",
        intro="x & y",
        sections=[
            page.Section(
                "Numbers",
                table=page.Table(["name", "value"], [["<b>", 1234567.0], ["small", 1.5e-7]]),
                images=[page.Image("a b.png", "a caption")],
            )
        ],
    )
    text = path.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text and "x &amp; y" in text
    assert "1.235e+06" in text and "1.500e-07" in text and 'src="a%20b.png"' in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a b.png", "index.html"]
    assert page.format_number(0.5) == "0.5" and page.format_number(3) == "3"
    assert page.format_number(float("nan")) == "nan" and page.format_number(None) == "–"
    for src, message in [
        ("missing.png", "does not exist"),
        ("/etc/passwd", "relative"),
        ("../a b.png", "relative"),
        ("https://example.com/a.png", "relative"),
    ]:
        with pytest.raises(ValueError, match=message):
            page.write_page(
                tmp_path / "other.html",
                title="t",
                sections=[page.Section("s", images=[page.Image(src)])],
            )
    assert not (tmp_path / "other.html").exists()
    # An odd but real file name, which reads as a URL scheme.
    odd = ["x:y.png"]
    for name in odd:
        (tmp_path / name).write_bytes(b"x")
    page.write_page(
        tmp_path / "odd.html",
        title="t",
        sections=[page.Section("s", images=[page.Image(name) for name in odd])],
    )
    text = (tmp_path / "odd.html").read_text()
    assert 'src="x%3Ay.png"' in text
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        page.render_page(
            title="t", sections=[page.Section("s", table=page.Table(["a", "b"], [[1]]))]
        )


def test_study_pages_link_what_exists(tmp_path):
    from fmi_jax.studies import evaluate_attributions, explain

    (tmp_path / "sheets").mkdir()
    for name in ("agreement.png", "gallery_saliency.png", "sheets/sample_000.png", "stats.json"):
        (tmp_path / name).write_bytes(b"x")
    stats = {
        "methods": {"saliency": {"seconds": 0.5, "mean_abs": 0.1}},
        "completeness": {},
        "samples": 2,
        "checkpoint_epoch": 3,
        "model": "cnn",
        "dataset": "synthetic",
        "split": "test",
    }
    explain._write_index(tmp_path, stats, [7, 9], [0, 1], [0, 0], ["a", "b"])
    refs = _assert_references_exist(tmp_path / "index.html")
    assert refs.images == ["agreement.png", "gallery_saliency.png", "sheets/sample_000.png"]
    assert "saliency" in refs.cells

    row = {"method": "saliency", **{k: 0.25 for k, _ in evaluate_attributions.COLUMNS}}
    meta = {
        "model": "cnn",
        "dataset": "synthetic",
        "split": "test",
        "checkpoint_epoch": 3,
        "images": 4,
        "selection": "first",
        "target": "predicted",
        "accuracy": 0.5,
        "sanity_layers": ["dense"],
        "sanity_images": 2,
        "sanity_threshold": 0.5,
    }
    other = tmp_path / "eval"
    other.mkdir()
    (other / "leaderboard.md").write_text("|")
    (other / "randomization.png").write_bytes(b"x")
    evaluate_attributions._write_index(other, [row], meta)
    refs = _assert_references_exist(other / "index.html")
    assert refs.images == ["randomization.png"] and "leaderboard.md" in refs.refs
    assert "deletion AUC ↓" in refs.cells  # directions as arrows keep the table narrow


def test_lower_layers_do_not_import_the_report():
    root = Path(__file__).resolve().parents[1] / "fmi_jax"
    for layer in ("attribution", "evaluation", "plotting", "data", "models", "train"):
        for source in (root / layer).rglob("*.py"):
            text = source.read_text()
            assert "fmi_jax.report" not in text and "import report" not in text, source
    plotting_sources = "".join(p.read_text() for p in (root / "plotting").rglob("*.py"))
    assert "import jax" not in plotting_sources and "fmi_jax.attribution" not in plotting_sources


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_page_renders_in_a_headless_browser(request, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium or chromium-browser on PATH (apt-get install chromium)")
    out, index = request.getfixturevalue("written")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags += ["--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,2000", index.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    assert (pixels < 0.9).any(-1).mean() > 0.05  # not blank
    # The heat maps and agreement matrices are the only saturated colours on the page:
    # missing images would leave just text, tables and a few blue links.
    saturated = (pixels.max(-1) - pixels.min(-1)) > 0.35
    assert saturated.mean() > 0.02, saturated.mean()
    dom = subprocess.run(
        [*flags, "--dump-dom", index.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    refs = _Refs()
    refs.feed(dom)
    assert sorted(refs.images) == ["agreement.png"] + [f"sheets/{i}.png" for i in range(4)]
    assert "integrated_gradients" in refs.cells and "ms per call" in refs.cells
