r"""Grad-CAM element-wise, ShapleyCAM, Finer-CAM, FEM, Eigen-Grad-CAM and KPCA-CAM, CAMs
of several layers and augmentation smoothing, and the confidence metrics, against
pytorch-grad-cam, and every CAM's Average Drop, Increase in Confidence, Average Gain
and ADCC on a trained CNN.

    make .venv-bench/.installed           # torch, Captum, grad-cam, scikit-learn
    .venv-bench/bin/python scripts/cam_agreement.py --workdir=runs/cnn_fmnist

The run's weights are copied into PyTorch (the benchmark's ``TorchCNN``); both sides
explain the first ``--num_test`` test images (dithered as the benchmark's agreement
check, so no max-pool window holds a tie) for their labels at ``--layer``, through the
package's whole pipeline, with fmi_jax's maps min-max scaled per image as the package
returns them (the largest absolute difference and the relative L2 error):

* Grad-CAM element-wise, ShapleyCAM (ReST and logit utilities), FEM, and Finer-CAM
  (the package's own references around the predicted class; and, for the labels, its
  ``FinerWeightedTarget`` with ``finer_references``' classes, over LayerCAM with
  alpha 0.5).
* Grad-CAM of conv2 and conv3 averaged (the package's several ``target_layers``) and
  of conv1-3 multiplied (``RefineCAM``), each beside fmi_jax's maps scaled in the
  package's order, which shows what the difference is made of; and Grad-CAM with the
  package's ``aug_smooth=True`` against ``augmentation_smoothing(grad_cam,
  scale='minmax')``.
* FullGrad (every convolution and batch norm; the package scales each channel of each
  term separately, fmi_jax's ``normalize='channel'``).
* Eigen-Grad-CAM, Grad-CAM's ``eigen_smooth`` and KPCA-CAM (sigmoid and RBF kernels):
  the package's projection functions (``get_2d_projection``,
  ``get_2d_projection_kernel``, scikit-learn's ``KernelPCA``) on fmi_jax's own
  activations and gradients, against fmi_jax's projections before the ReLU, so that
  the sign each side picks can be counted: the number of images where the package's
  map is fmi_jax's, where it is its negative, and the largest difference after
  aligning the sign.
* ``average_drop`` and ``increase_in_confidence`` against the package's
  ``DropInConfidence`` and ``IncreaseInConfidence`` (with
  ``ClassifierOutputSoftmaxTarget``) on the same min-max scaled Grad-CAM maps; the
  package's drop is absolute, so it is divided by the probability before the
  comparison.

Then every CAM of ``fmi_jax.attribution.CAM_METHODS``, and FullGrad, is scored by the
three confidence metrics on the first ``--num_metric`` test images (Grad-CAM++'s table,
with Average Gain), by ADCC with its coherency and complexity (the mean of the
min-max scaled maps: the share of the image the masks keep), and by ARCC with its ROAD
gap.
It prints markdown tables and, with ``--out``, writes them and a JSON file there.
docs/captum.md and docs/results.md report what it measured. Without torch and the
package, or without a run in --workdir, it ends in one ``error:`` line and exit status 2.
"""

import importlib.util
import json
import sys
import time
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from experiments import _cli  # noqa: E402
from fmi_jax import attribution, evaluation  # noqa: E402
from fmi_jax.attribution.core import minmax_scale  # noqa: E402
from fmi_jax.attribution.handle import activation_and_gradient  # noqa: E402
from fmi_jax.benchmark import runner  # noqa: E402
from fmi_jax.train import evaluate as evaluate_lib  # noqa: E402
from fmi_jax.train import loop as loop_lib  # noqa: E402
from fmi_jax.train.input_pipeline import to_float  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/cnn_fmnist", "A trained run of a SimpleCNN.")
_LAYER = flags.DEFINE_string("layer", "conv3", "The layer every CAM explains.")
_NUM_TEST = flags.DEFINE_integer("num_test", 64, "Test images compared with the package.")
_NUM_METRIC = flags.DEFINE_integer("num_metric", 1000, "Test images for the metric table.")
_DITHER = flags.DEFINE_float("dither", 1 / 768, "Uniform noise in [0, dither) per pixel.")
_OUT = flags.DEFINE_string("out", None, "Folder for cam_agreement.{md,json} (new files only).")


def _minmax(maps) -> np.ndarray:
    """Each image's map scaled to [0, 1], as pytorch-grad-cam returns them."""
    maps = jnp.asarray(maps, jnp.float32)
    return np.asarray(minmax_scale(maps, tuple(range(1, maps.ndim))), np.float64)


def _package_scaled(maps) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image``: ``(m - min) / (1e-7 + max(m - min))``."""
    maps = np.asarray(maps, np.float64)
    axes = tuple(range(1, maps.ndim))
    maps = maps - maps.min(axis=axes, keepdims=True)
    return maps / (1e-7 + maps.max(axis=axes, keepdims=True))


def _pipeline_row(ours: np.ndarray, theirs: np.ndarray, rescale: bool = True) -> dict:
    """fmi_jax's maps, min-max scaled per image (unless already scaled as the package
    scales them, ``rescale=False``), against the package's: the largest difference, the
    relative L2 error, and the images that agree to 1e-5."""
    a = _minmax(ours) if rescale else np.asarray(ours, np.float64)
    b = theirs.astype(np.float64)
    per_image = np.abs(a - b).reshape(len(a), -1).max(axis=1)
    return {
        "max_abs": float(per_image.max()),
        "relative_l2": float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)),
        "images_within_1e-5": int(np.sum(per_image <= 1e-5)),
    }


def _row_line(label: str, row: dict, images: int) -> str:
    return (
        f"| {label} | {row['max_abs']:.2g} | {row['relative_l2']:.2g} "
        f"| {row['images_within_1e-5']} of {images} |"
    )


def _signed_match(ours: np.ndarray, theirs: np.ndarray, tolerance: float) -> dict:
    """How many images' package maps are fmi_jax's, or its negative, within
    ``tolerance`` of the map's largest magnitude, and the largest difference after
    aligning each image's sign."""
    same = negated = 0
    worst = 0.0
    for a, b in zip(ours.astype(np.float64), theirs.astype(np.float64)):
        scale = max(np.abs(b).max(), 1e-30)
        plus, minus = np.abs(a - b).max() / scale, np.abs(a + b).max() / scale
        same += plus <= tolerance
        negated += minus <= tolerance
        worst = max(worst, min(plus, minus))
    return {"same_sign": int(same), "opposite_sign": int(negated), "worst_aligned": worst}


def main():
    if _OUT.value and (Path(_OUT.value) / "cam_agreement.json").exists():
        raise ValueError(f"{_OUT.value}/cam_agreement.json exists: choose a new --out")
    torch, _ = _cli.reference_packages("torch", "sklearn")
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        raise ValueError(
            "pytorch_grad_cam is not installed here: run this script with the benchmark's "
            "venv, .venv-bench/bin/python (make .venv-bench/.installed)"
        )
    from fmi_jax.benchmark import torch_side

    svd = torch_side.import_grad_cam("utils.svd_on_activations")
    confidence = torch_side.import_grad_cam("metrics.cam_mult_image")
    softmax_target = torch_side.import_grad_cam("utils.model_targets").ClassifierOutputSoftmaxTarget

    model, variables, run_config, _ = evaluate_lib.restore_model(Path(_WORKDIR.value))
    data = loop_lib.load_data(run_config.data)
    count = max(_NUM_TEST.value, _NUM_METRIC.value)
    images = np.asarray(to_float(jnp.asarray(data["test"].images[:count])))
    labels = np.asarray(data["test"].labels[:count], np.int32)
    x = runner.dither(images[: _NUM_TEST.value], _DITHER.value)
    t = labels[: _NUM_TEST.value]
    layer = _LAYER.value
    handle = attribution.flax_model(model, variables)
    net = torch_side.from_flax(model, variables, tuple(x.shape[1:])).eval()
    xt = torch.from_numpy(np.array(x, np.float32)).permute(0, 3, 1, 2).contiguous()
    report = {"layer": layer, "images": len(x), "workdir": _WORKDIR.value}
    lines = [
        f"Against pytorch-grad-cam 1.5.7, {len(x)} test images, layer {layer}.",
        "",
        "| method | max abs difference | relative L2 error | images equal to 1e-5 |",
        "|---|---|---|---|",
    ]

    # Whole pipelines: the package's maps are min-max scaled; so are fmi_jax's here.
    for name, options in (
        ("grad_cam_elementwise", {}),
        ("shapley_cam", {"score": "rest"}),
        ("shapley_cam", {"score": "logit"}),
        ("fem", {}),
    ):
        method = getattr(attribution, name)
        ours = np.asarray(
            jax.jit(lambda x, m=method, o=options: m(handle, x, t, layer=layer, **o))(x)
        )
        theirs = torch_side.captum_method(name, net, {"layer": layer, **options})(xt, t)
        row = _pipeline_row(ours, theirs[:, 0].numpy())
        label = name + (f" ({options['score']})" if options else "")
        report[label] = row
        lines.append(_row_line(label, row, len(x)))

    # Finer-CAM: the package's automatic references around the predicted class, and its
    # FinerWeightedTarget for the labels with fmi_jax's references (another base, alpha;
    # not Grad-CAM++, whose 1e-6 in the package moves its maps on its own).
    finer_package = torch_side.import_grad_cam("finer_cam").FinerCAM
    finer_target = torch_side.import_grad_cam("utils.model_targets").FinerWeightedTarget
    logit_target = torch_side.import_grad_cam("utils.model_targets").ClassifierOutputTarget
    base_classes = {
        "grad_cam": torch_side.import_grad_cam("grad_cam").GradCAM,
        "layer_cam": torch_side.import_grad_cam("layer_cam").LayerCAM,
    }
    conv = torch_side.conv_block_output(net, layer)
    label_references = np.asarray(
        attribution.finer_references(handle(jnp.asarray(x)), jnp.asarray(t))
    )
    for label, base, alpha, target in (
        ("finer_cam (predicted class)", "grad_cam", 1.0, None),
        ("finer_cam (labels, LayerCAM, alpha 0.5)", "layer_cam", 0.5, t),
    ):
        ours = np.asarray(
            jax.jit(
                lambda x, b=base, a=alpha, c=target: attribution.finer_cam(
                    handle, x, c, layer=layer, base=b, alpha=a
                )
            )(x)
        )
        with finer_package(net, [conv], base_method=base_classes[base]) as package_cam:
            targets = None
            if target is not None:
                targets = [
                    finer_target(int(c), [int(r) for r in refs], alpha)
                    for c, refs in zip(target, label_references)
                ]
            theirs = package_cam(input_tensor=xt, targets=targets, alpha=alpha)
        row = _pipeline_row(ours, theirs)
        report[label] = row
        lines.append(_row_line(label, row, len(x)))

    # Several layers: the package's GradCAM with two target layers (it scales each map
    # at the layer's resolution, fmi_jax after resizing: also emulated), and RefineCAM
    # (the product) with Grad-CAM as its base.
    grad_cam_class = base_classes["grad_cam"]
    pair, trio = ("conv2", "conv3"), ("conv1", "conv2", "conv3")
    ours = np.asarray(
        jax.jit(lambda x: attribution.across_layers(attribution.grad_cam, pair)(handle, x, t))(x)
    )
    with grad_cam_class(net, [torch_side.conv_block_output(net, n) for n in pair]) as package_cam:
        theirs = package_cam(input_tensor=xt, targets=[logit_target(int(c)) for c in t])
    row = _pipeline_row(ours, theirs)
    report["across_layers (mean of conv2, conv3)"] = row
    lines.append(_row_line("across_layers(grad_cam), mean of conv2 and conv3", row, len(x)))
    at_layers = [
        _package_scaled(np.maximum(attribution.grad_cam(handle, x, t, layer=n, upsample=False), 0))
        for n in pair
    ]
    emulated = np.mean(
        [np.asarray(attribution.upsample_maps(jnp.asarray(m), x.shape[1:3])) for m in at_layers],
        axis=0,
    )
    row = _pipeline_row(emulated, theirs)
    report["across_layers (mean, scaled at the layers)"] = row
    lines.append(
        _row_line("the same, each map scaled before resizing, as the package", row, len(x))
    )
    refine_class = torch_side.import_grad_cam("refine_cam").RefineCAM
    ours = np.asarray(
        jax.jit(
            lambda x: attribution.across_layers(attribution.grad_cam, trio, combine="product")(
                handle, x, t
            )
        )(x)
    )
    package_cam = refine_class(
        net, [torch_side.conv_block_output(net, n) for n in trio], base_method=grad_cam_class
    )
    theirs = package_cam(input_tensor=xt, targets=[logit_target(int(c)) for c in t])
    for base_cam in package_cam.base_cam_per_layer:
        base_cam.activations_and_grads.release()
    row = _pipeline_row(ours, theirs)
    report["across_layers (product of conv1-3; RefineCAM)"] = row
    lines.append(_row_line("across_layers(grad_cam), product of conv1-3 (RefineCAM)", row, len(x)))
    # The product's largest value can be small, where the package's 1e-7 shows.
    row = _pipeline_row(_package_scaled(ours), theirs, rescale=False)
    row["smallest_product_max"] = float(ours.reshape(len(x), -1).max(axis=1).min())
    report["across_layers (product, scaled as the package)"] = row
    lines.append(_row_line("the same, the product scaled as the package", row, len(x)))

    # Augmentation smoothing: the package's aug_smooth=True (mirror and factors 0.9, 1,
    # 1.1 through ttach), each copy's map scaled to [0, 1], the average not rescaled.
    ours = np.asarray(
        jax.jit(
            lambda x: attribution.augmentation_smoothing(attribution.grad_cam, scale="minmax")(
                handle, x, t, layer=layer
            )
        )(x)
    )
    with grad_cam_class(net, [conv]) as package_cam:
        theirs = package_cam(
            input_tensor=xt, targets=[logit_target(int(c)) for c in t], aug_smooth=True
        )
    row = _pipeline_row(ours, theirs, rescale=False)
    report["augmentation_smoothing (grad_cam)"] = row
    lines.append(_row_line("augmentation_smoothing(grad_cam), scale='minmax'", row, len(x)))

    # FullGrad over every convolution and batch norm, each channel scaled on its own as
    # the package does; its final map is min-max scaled, so fmi_jax's is too.
    full_grad_class = torch_side.import_grad_cam("fullgrad_cam").FullGrad
    ours = np.asarray(
        jax.jit(lambda x: attribution.full_grad(handle, x, t, normalize="channel"))(x)
    )
    with full_grad_class(net, []) as package_full_grad:
        theirs = package_full_grad(input_tensor=xt, targets=[logit_target(int(c)) for c in t])
        # The package's bias-gradient terms (forward order), against fmi_jax's.
        package_terms = [
            np.transpose(g.numpy() * b[None, :, None, None], (0, 2, 3, 1))
            for g, b in zip(
                package_full_grad.activations_and_grads.gradients, package_full_grad.bias_data
            )
        ]
    row = _pipeline_row(ours, theirs)
    report["full_grad (channel)"] = row
    lines.append(_row_line("full_grad (normalize='channel')", row, len(x)))
    terms = attribution.full_gradients(handle, x, t)
    names = [n for n in handle.layer_names(x) if n in terms.biases]
    biased = [n for n in names if float(np.abs(terms.biases[n]).max()) > 0]
    differing = np.zeros(len(x), int)  # entries off by more than 1e-5 of the term's largest
    for name, package_term in zip(biased, package_terms):
        ours_term = np.asarray(terms.biases[name])
        scale = np.abs(package_term).reshape(len(x), -1).max(axis=1)[:, None]
        off = np.abs(ours_term - package_term).reshape(len(x), -1) > 1e-5 * scale
        differing += off.sum(axis=1)
    # fmi_jax's own terms post-processed as the package does: each channel divided by
    # (its range + 1e-7), bilinear resizing, the sum min-max scaled with 1e-7.
    emulated = np.zeros(x.shape[:3])
    for term in [terms.input, *(terms.biases[n] for n in names)]:
        a = np.abs(np.asarray(term, np.float64))
        a = a - a.min(axis=(1, 2), keepdims=True)
        a = a / (1e-7 + a.max(axis=(1, 2), keepdims=True))
        emulated += np.asarray(attribution.upsample_maps(jnp.asarray(a.sum(-1)), x.shape[1:3]))
    emulated = emulated - emulated.min(axis=(1, 2), keepdims=True)
    emulated = emulated / (1e-7 + emulated.max(axis=(1, 2), keepdims=True))
    row = _pipeline_row(emulated, theirs)
    row["images_with_equal_terms"] = int(np.sum(differing == 0))
    row["differing_entries_per_image"] = [int(d) for d in differing]
    report["full_grad (terms, the package's 1e-7)"] = row
    lines.append(_row_line("full_grad's terms, scaled with the package's 1e-7", row, len(x)))

    # Projections: the package's functions on fmi_jax's own activations and gradients.
    activation, gradient = jax.jit(
        lambda x: activation_and_gradient(handle, x, jnp.asarray(t), layer)
    )(x)
    nchw = lambda a: np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))
    raw = dict(layer=layer, relu=False, upsample=False)
    projections = (
        (
            "eigen_grad_cam (centred)",
            attribution.eigen_grad_cam(handle, x, t, center=True, **raw),
            svd.get_2d_projection(nchw(activation * gradient)),
        ),
        (
            "grad_cam (eigen_smooth)",
            attribution.grad_cam(handle, x, t, eigen_smooth=True, **raw),
            svd.get_2d_projection(nchw(activation * gradient.mean(axis=(1, 2), keepdims=True))),
        ),
        (
            "kpca_cam (sigmoid)",
            attribution.kpca_cam(handle, x, **raw),
            svd.get_2d_projection_kernel(nchw(activation), "sigmoid"),
        ),
        (
            "kpca_cam (rbf)",
            attribution.kpca_cam(handle, x, kernel="rbf", **raw),
            svd.get_2d_projection_kernel(nchw(activation), "rbf"),
        ),
    )
    lines += [
        "",
        f"FullGrad's bias-gradient terms equal the package's on {row['images_with_equal_terms']} "
        f"of {len(x)} images (the others differ at "
        f"{sorted(int(d) for d in differing if d)} entries).",
        "",
        "| projection | package's sign = fmi_jax's | opposite | worst difference, sign aligned |",
        "|---|---|---|---|",
    ]
    for label, ours, theirs in projections:
        row = _signed_match(np.asarray(ours), theirs, 1e-3)
        report[label] = row
        lines.append(
            f"| {label} | {row['same_sign']} | {row['opposite_sign']} "
            f"| {row['worst_aligned']:.2g} |"
        )
    # Which sign is the smoothing of Grad-CAM: its correlation with Grad-CAM's own map
    # (the channel sum of the same contributions), per image, before the ReLU.
    plain = np.asarray(attribution.grad_cam(handle, x, t, **raw))
    correlations = {}
    for side, maps in (("fmi_jax", projections[1][1]), ("package", projections[1][2])):
        r = np.array([np.corrcoef(m.ravel(), p.ravel())[0, 1] for m, p in zip(maps, plain)])
        correlations[side] = {"negative": int(np.sum(r < 0)), "median": float(np.median(r))}
    report["eigen_smooth_vs_grad_cam"] = correlations
    lines += [
        "",
        "Grad-CAM's eigen_smooth map against Grad-CAM's own map, before the ReLU: "
        + "; ".join(
            f"{side} median r = {c['median']:.2f}, negative on {c['negative']} of {len(x)}"
            for side, c in correlations.items()
        )
        + ".",
    ]

    # The confidence metrics on the same min-max scaled Grad-CAM maps.
    maps = _minmax(np.asarray(attribution.grad_cam(handle, x, t, layer=layer))).astype(np.float32)
    fn = lambda z: model.apply(variables, z, train=False)
    before = np.asarray(jax.nn.softmax(fn(jnp.asarray(x))))[np.arange(len(x)), t]
    targets = [softmax_target(int(c)) for c in t]
    package_drop = confidence.DropInConfidence()(xt, maps, targets, net) / before
    package_increase = confidence.IncreaseInConfidence()(xt, maps, targets, net)
    ours_drop = np.asarray(evaluation.average_drop(fn, x, t, maps, scale="none"))
    ours_increase = np.asarray(evaluation.increase_in_confidence(fn, x, t, maps, scale="none"))
    report["average_drop"] = {"max_abs": float(np.abs(ours_drop - package_drop).max())}
    report["increase_in_confidence"] = {
        "disagreements": int(np.sum(ours_increase != package_increase))
    }
    lines += [
        "",
        f"Average Drop against DropInConfidence / p: max difference "
        f"{report['average_drop']['max_abs']:.2g}; Increase in Confidence against "
        f"IncreaseInConfidence: {report['increase_in_confidence']['disagreements']} of "
        f"{len(x)} images differ.",
    ]

    # Every CAM, scored: Average Drop, Increase in Confidence, Average Gain (percent).
    xm, tm = images[: _NUM_METRIC.value], labels[: _NUM_METRIC.value]
    lines += [
        "",
        f"Confidence on the explanation-masked input, {len(xm)} test images, layer {layer} "
        "(percent; Average Drop low is good, the others high):",
        "",
        "| method | Average Drop | Increase in Confidence | Average Gain | coherency "
        "| complexity (mean of the mask) | ADCC | ROAD gap | ARCC | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    metrics = {}
    methods = [(name, {"layer": layer}) for name in attribution.CAM_METHODS]
    methods.append(("full_grad", {}))
    for name, options in methods:
        method = getattr(attribution, name)
        start = time.perf_counter()
        cams = jax.block_until_ready(
            jax.jit(lambda x, m=method, o=options: m(handle, x, tm, batch_size=100, **o))(xm)
        )
        seconds = time.perf_counter() - start
        scores = {
            metric: 100
            * float(getattr(evaluation, metric)(fn, xm, tm, cams, batch_size=500).mean())
            for metric in ("average_drop", "increase_in_confidence", "average_gain")
        }
        # ADCC: the same drop, the coherency of the map with the map of x * E, and the
        # complexity, the mean of the scaled map (how much of the image the mask keeps:
        # a map of ones keeps it all and has no drop).
        explain = jax.jit(lambda x, t, k, m=method, o=options: m(handle, x, t, batch_size=100, **o))
        parts = evaluation.adcc(
            explain, xm, tm, jax.random.key(0), fn=fn, attributions=cams, batch_size=500
        )
        for part in ("coherency", "complexity", "adcc"):
            scores[part] = 100 * float(getattr(parts, part).mean())
        # ARCC: the same coherency and complexity, with ROAD's gap for the drop.
        refined = evaluation.arcc(
            explain, xm, tm, jax.random.key(0), fn=fn, attributions=cams, batch_size=500
        )
        scores["road_gap"] = 100 * float(refined.road.mean())
        scores["arcc"] = 100 * float(refined.arcc.mean())
        metrics[name] = {**scores, "seconds_with_compile": seconds}
        lines.append(
            f"| {name} | {scores['average_drop']:.1f} | {scores['increase_in_confidence']:.1f} "
            f"| {scores['average_gain']:.1f} | {scores['coherency']:.1f} "
            f"| {scores['complexity']:.1f} | {scores['adcc']:.1f} | {scores['road_gap']:.1f} "
            f"| {scores['arcc']:.1f} | {seconds:.1f} |"
        )
    report["confidence"] = metrics
    text = "\n".join(lines)
    print(text)
    if _OUT.value:
        out = Path(_OUT.value)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cam_agreement.md").write_text(text + "\n")
        (out / "cam_agreement.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    _cli.run(main)
