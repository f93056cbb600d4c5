"""The explain study: attributions of a trained classifier, compared across methods.

`run_explain(config, workdir)` loads a checkpoint of `workdir`, picks samples,
runs every configured attribution method on them, and writes under
`workdir/<config.output>/`:

  attributions.npz   images, labels, predictions, probabilities, indices, one
                     array of maps per method, and the completeness gaps
  stats.json         per method: mean, max, min, std, mean |A|, seconds; the
                     completeness gaps of IG and DeepLift; mean Pearson and
                     Spearman matrices; mean top-k overlap matrix
  config.json        the study config
  sheets/            per sample: input + heat maps, overlays, stats + correlations
  gallery_<m>.png    per method: rows of classes, blended maps
  signs_<m>.png      signed methods: the sign modes of the first sample
  agreement.png      the mean correlation and top-k overlap matrices
  layer_<method>.png per-layer CAM: the map of every conv layer (first to last)
                     for the first `layer_cam.samples` samples (maps in the npz
                     as `layer_cam_<layer>`)
  index.html         all of the above on one offline page (tables and figures)

Re-running with the same config reuses attributions.npz and only draws
missing figures; a different config for the same output folder is an error
(choose another `--config.output`), so finished results are never overwritten. The
methods, their options and the CAM layers are checked against the model before the
folder is claimed (fmi_jax/runs.py), so a mistyped layer leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fmi_jax import attribution, evaluation, plotting, runs
from fmi_jax.plotting.html import Image, Link, Section, Table
from fmi_jax.train import evaluate as evaluate_lib
from fmi_jax.train import loop as loop_lib
from fmi_jax.train.input_pipeline import to_float
from fmi_jax.train.tensorboard import TENSORBOARD_DIR, EventLog

__all__ = [
    "ExplainResult",
    "check_layer_cam_method",
    "check_model_output",
    "claim_output",
    "explain_model",
    "free_fields",
    "layer_cams",
    "map_agreement",
    "method_options",
    "run_explain",
    "select_samples",
]

# Methods whose maps should sum to f(x) - f(baseline); their gaps go into stats.json.
COMPLETE_METHODS = ("integrated_gradients", "deeplift")


@dataclasses.dataclass
class ExplainResult:
    out_dir: Path
    stats: dict[str, Any]
    maps: dict[str, np.ndarray]
    indices: np.ndarray


def _probabilities(fn, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Softmax outputs for uint8 images, in fixed-size batches (one compile)."""
    probs = jax.jit(lambda x: jax.nn.softmax(fn(to_float(x)), axis=-1))
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pad = batch_size - len(chunk)
        padded = (
            np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            if pad
            else chunk
        )
        out.append(np.asarray(probs(padded))[: len(chunk)])
    return np.concatenate(out)


def select_samples(
    fn, images: np.ndarray, labels: np.ndarray, selection: Any, batch_size: int
) -> np.ndarray:
    """Indices to explain: given explicitly, or confident correct ones balanced by class."""
    _check_selection(selection, len(images))
    if selection.kind == "indices":
        return np.asarray(list(selection.indices), dtype=np.int64)
    if selection.kind == "high_confidence":
        pool = min(int(selection.pool), len(images))
        probs = _probabilities(fn, images[:pool], batch_size)
        idx = evaluation.high_confidence_correct(
            probs,
            labels[:pool],
            per_class=int(selection.per_class),
            threshold=float(selection.threshold),
            seed=int(selection.seed),
        )
        if idx.size == 0:
            raise ValueError(
                f"none of the first {pool} images is predicted correctly with confidence "
                f"above selection.threshold={float(selection.threshold)}: lower "
                "--config.selection.threshold, or pick images with "
                "--config.selection.kind=indices --config.selection.indices=(0, 1, ...)"
            )
        return idx
    raise AssertionError(selection.kind)  # _check_selection knows every kind


def _check_selection(selection: Any, num_images: int) -> None:
    """A ValueError naming the first bad field of ``config.selection`` for a split of
    ``num_images`` images (before anything is computed or written)."""
    kind = selection.kind
    if kind == "indices":
        idx = np.asarray(list(selection.indices), dtype=np.int64)
        if idx.size == 0:
            raise ValueError(
                "selection.kind='indices' needs --config.selection.indices=(i, j, ...)"
            )
        bad = idx[(idx < 0) | (idx >= num_images)]
        if bad.size:
            raise ValueError(f"selection indices {bad.tolist()} are outside [0, {num_images})")
    elif kind == "high_confidence":
        for field in ("pool", "per_class"):
            if int(selection[field]) < 1:
                raise ValueError(f"config.selection.{field} must be >= 1, got {selection[field]}")
        if not 0.0 <= float(selection.threshold) < 1.0:
            raise ValueError(
                f"config.selection.threshold must be in [0, 1), got {selection.threshold}"
            )
    else:
        raise ValueError(f"unknown selection kind {kind!r}; choose 'high_confidence' or 'indices'")


def free_fields(config: Any) -> tuple[str, ...]:
    """The config paths that cannot alter the study's results, which an output folder
    therefore accepts changed: ``batch_size`` (it bounds memory: lowering it after
    running out of memory resumes the run), ``checkpoint`` (``'best'``, ``'latest'`` or
    an epoch: only the epoch it names matters, and ``checkpoint.json`` compares that)
    and ``options.<name>`` of the methods the
    study does not run (new methods' default options in a later version of the config
    included). The per-layer figure's method counts as run (``config.layer_cam``,
    where the study has one)."""
    used = set(config.methods)
    settings = config.get("layer_cam")
    if settings and int(settings.samples):
        used.add(settings.method)
    free = ("batch_size", "checkpoint")
    return free + tuple(f"options.{name}" for name in config.options if name not in used)


def method_options(config: Any, name: str) -> dict[str, Any]:
    """The keyword options the study passes to method ``name``: ``config.options[name]``
    with lists as tuples and, where the method takes one, ``config.batch_size``."""
    options = dict(runs.plain(config.options).get(name, {}) or {})
    spec = attribution.METHODS[name]
    if "batch_size" in spec.options and "batch_size" not in options:
        options["batch_size"] = int(config.batch_size)
    for key, value in list(options.items()):
        if isinstance(value, list):
            options[key] = tuple(value)
    return options


def _stats(maps: np.ndarray, seconds: float) -> dict[str, float]:
    return {
        "mean": float(maps.mean()),
        "mean_abs": float(np.abs(maps).mean()),
        "max": float(maps.max()),
        "min": float(maps.min()),
        "std": float(maps.std()),
        "seconds": float(seconds),
    }


def map_agreement(maps: dict[str, np.ndarray], fraction: float) -> dict[str, Any]:
    """Cross-method agreement of the maps (channels summed): Pearson and Spearman
    matrices, mean over images and per image, and the top-``fraction`` overlap."""
    names = list(maps)
    flat = {k: evaluation.reduce_channels(jnp.asarray(v), "sum") for k, v in maps.items()}
    pearson, pearson_per = evaluation.correlation_matrix(flat, method="pearson")
    spearman, spearman_per = evaluation.correlation_matrix(flat, method="spearman")
    overlap, _ = evaluation.overlap_matrix(flat, fraction=fraction)
    return {
        "methods": names,
        "pearson": pearson.tolist(),
        "spearman": spearman.tolist(),
        "topk_fraction": fraction,
        "topk_overlap": overlap.tolist(),
        "_per_sample": {"pearson": pearson_per, "spearman": spearman_per},
    }


OUTPUT_HINT = "pass --config.output=<new name> (or move that folder away)"


def _check(config: Any, fn: Any, model: Any, variables: Any, images: np.ndarray) -> None:
    """Everything about `config` that can fail cheaply, before `out` is claimed: the
    method names, their options (each method traced on two images), the batch size, the
    top-k fraction, the selection and every CAM layer named (or implied) by `options`
    and `layer_cam`, against the model's layers for inputs like `images`."""
    unknown = sorted(set(config.methods) - set(attribution.available_methods()))
    if unknown:
        raise ValueError(
            f"unknown method(s) {unknown}; available: {attribution.available_methods()}"
        )
    if not config.methods:
        raise ValueError("config.methods is empty: name at least one method")
    attribution.require_class_methods(config.methods, "the explain study")
    if config.target not in ("predicted", "label"):
        raise ValueError(f"config.target must be 'predicted' or 'label', got {config.target!r}")
    if not isinstance(config.batch_size, int) or config.batch_size < 1:
        raise ValueError(f"config.batch_size must be an integer >= 1, got {config.batch_size!r}")
    if not 0.0 < float(config.topk_fraction) <= 1.0:
        raise ValueError(f"config.topk_fraction must be in (0, 1], got {config.topk_fraction}")
    _check_selection(config.selection, len(images))
    figures = config.get("figures") or {}
    for field, minimum in (("max_sheets", 0), ("gallery_per_class", 1)):
        value = figures.get(field, minimum)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(
                f"config.figures.{field} must be an integer >= {minimum}, got {value!r}"
            )
    x = to_float(jnp.asarray(images[:1]))
    pair = to_float(jnp.asarray(images[:2]))
    handle = attribution.flax_model(model, variables)
    for name in config.methods:
        options = method_options(config, name)
        explain = attribution.explainer(name, fn, model=model, variables=variables, **options)
        if "layer" in options:
            handle.layer_shape(x, options["layer"])
        attribution.check_explainer(explain, pair)
    settings = config.get("layer_cam")
    if settings and int(settings.samples):
        for layer in _cam_layers(settings.method, model, tuple(settings.layers)):
            handle.layer_shape(x, layer)
            attribution.check_explainer(
                attribution.explainer(settings.method, handle, layer=layer), pair
            )


def claim_output(
    config: Any,
    out: Path,
    *,
    epoch: int,
    model_name: str,
    has_results: bool,
    results_file: str,
    output_field: str = "output",
    write: bool = True,
) -> None:
    """Claims the output folder `out` of a study configured like this one (its
    `free_fields`, its `output` field) for `config` and the model and checkpoint epoch
    it reads (never another's; see `fmi_jax.runs.claim_study`). `results_file`: the
    file of `out` whose ``model`` and ``checkpoint_epoch`` the results themselves
    record (for folders written before the checkpoint record). `write=False` only
    checks, writing nothing."""
    runs.claim_study(
        out,
        config,
        epoch=epoch,
        model=model_name,
        free=free_fields(config),
        has_results=has_results,
        hint=OUTPUT_HINT.replace("config.output", f"config.{output_field}"),
        results=runs.read_json(out / results_file, rewritable=True),
        write=write,
    )


def check_model_output(
    config: Any, out: Path, *, epoch: int, model_name: str, output_field: str = "output"
) -> None:
    """Raises where :func:`explain_model` would refuse `out` for `config` and this model
    and checkpoint epoch, writing nothing: a study that writes other files before it
    explains (the sparse autoencoder's figures) checks first."""
    _claim(config, out, output_field, epoch, model_name, write=False)


def _claim(
    config: Any, out: Path, output_field: str, epoch: int, model_name: str, write: bool = True
) -> None:
    has_results = (out / "stats.json").exists() or (out / "attributions.npz").exists()
    claim_output(
        config,
        out,
        epoch=epoch,
        model_name=model_name,
        has_results=has_results,
        results_file="stats.json",
        output_field=output_field,
        write=write,
    )


def run_explain(config: ml_collections.ConfigDict, workdir: str | Path) -> ExplainResult:
    """Runs the explain study on the trained run in `workdir` (see the module docstring)."""
    workdir = Path(workdir)
    out = runs.subfolder(workdir, config.output, "output")
    model, variables, run_config, epoch = evaluate_lib.restore_model(
        workdir, checkpoint=config.checkpoint
    )
    split = loop_lib.load_split(run_config.data, config.split, "split")
    result = explain_model(
        config, out, model, variables, split, epoch=epoch, model_name=run_config.model.name
    )
    if run_config.get("tensorboard", True):
        _sheets_to_tensorboard(workdir, config.output, out, epoch)
    return result


def _sheets_to_tensorboard(workdir: Path, output: str, out: Path, epoch: int) -> None:
    """The run's TensorBoard gets the explained sheets as images (tag
    `explain/<output>/<sheet>`, at the explained checkpoint's epoch); called only for a
    run trained with TensorBoard on."""
    with EventLog(workdir / TENSORBOARD_DIR) as events:
        for sheet in sorted((out / "sheets").glob("*.png")):
            events.image(f"explain/{output}/{sheet.stem}", sheet, step=int(epoch or 0))


def explain_model(
    config: Any,
    out: Path,
    model: Any,
    variables: Any,
    split: Any,
    *,
    epoch: int,
    model_name: str,
    output_field: str = "output",
) -> ExplainResult:
    """The study on an already restored model (a Flax module mapping images to logits
    and its variables) and a loaded split; writes under `out` (see the module docstring).

    Studies whose model is not one training run (the sparse autoencoder's composed
    classifier) call this directly; `output_field` is the config field that named
    `out` (`'explain.output'` there), for the advice when `out` is refused.
    """
    fn = jax.jit(lambda x: model.apply(variables, x))
    _check(config, fn, model, variables, split.images)
    npz_path = out / "attributions.npz"
    # stats.json is written last: with it, the attributions are complete.
    stats = runs.read_json(out / "stats.json", rewritable=True) if npz_path.exists() else None
    # The images to explain, when they are not reused, are chosen before `out` is claimed:
    # a threshold no image passes is refused with nothing written.
    if stats is None:
        indices = select_samples(
            fn, split.images, split.labels, config.selection, int(config.batch_size)
        )
    _claim(config, out, output_field, epoch, model_name)
    logging.info("explaining %s (epoch %d) on %s/%s", model_name, epoch, split.name, config.split)

    if stats is not None:
        logging.info("%s exists: reusing the attributions, drawing missing figures only", npz_path)
        saved = np.load(npz_path)
        indices = saved["indices"]
        maps = {m: saved[f"map_{m}"] for m in config.methods}
        images = saved["images"]
        labels, preds, probs = saved["labels"], saved["predictions"], saved["probabilities"]
        layer_maps = {
            layer: saved[f"layer_cam_{_key(layer)}"]
            for layer in stats.get("layer_cam", {}).get("layers", [])
        }
    else:
        images = to_float(jnp.asarray(split.images[indices]))
        labels = split.labels[indices]
        probs = np.asarray(jax.nn.softmax(fn(images), axis=-1))
        preds = probs.argmax(-1)
        target = jnp.asarray(preds if config.target == "predicted" else labels, jnp.int32)
        key = jax.random.key(int(config.seed))
        maps, stats = {}, {"methods": {}, "completeness": {}}
        for name in config.methods:
            options = method_options(config, name)
            explain = attribution.jit_method(
                name, attribution.explainer(name, fn, model=model, variables=variables, **options)
            )
            start = time.perf_counter()
            result = np.asarray(jax.block_until_ready(explain(images, target, key)))
            seconds = time.perf_counter() - start
            if not np.isfinite(result).all():
                raise FloatingPointError(
                    f"{name} produced NaN or Inf attributions with options {options}"
                )
            maps[name] = result
            stats["methods"][name] = _stats(result, seconds)
            if name in COMPLETE_METHODS:
                delta = np.asarray(
                    attribution.completeness_delta(
                        fn, images, target, result, baseline=options.get("baseline")
                    )
                )
                stats["completeness"][name] = {
                    "mean_abs_delta": float(np.abs(delta).mean()),
                    "max_abs_delta": float(np.abs(delta).max()),
                    "per_sample": delta.tolist(),
                }
            logging.info("%s: %.2f s for %d samples", name, seconds, len(indices))
        layer_maps = _layer_cams(config, fn, model, variables, images, target)
        agreement = map_agreement(maps, float(config.topk_fraction))
        per_sample = agreement.pop("_per_sample")
        stats.update(
            agreement=agreement,
            samples=len(indices),
            checkpoint_epoch=epoch,
            model=model_name,
            dataset=split.name,
            split=config.split,
        )
        images = np.asarray(images)
        runs.save_npz_atomic(
            npz_path,
            indices=indices,
            images=images,
            labels=labels,
            predictions=preds,
            probabilities=probs,
            pearson_per_sample=per_sample["pearson"],
            spearman_per_sample=per_sample["spearman"],
            **{f"map_{m}": v for m, v in maps.items()},
            **{f"layer_cam_{_key(layer)}": v for layer, v in layer_maps.items()},
        )
        if layer_maps:
            stats["layer_cam"] = {"method": config.layer_cam.method, "layers": list(layer_maps)}
        runs.write_json_atomic(out / "stats.json", stats, sort_keys=False)

    _figures(out, config, images, labels, preds, probs, maps, stats, split.class_names)
    if layer_maps:
        path = out / f"layer_{config.layer_cam.method}.png"
        if not path.exists():
            n = len(next(iter(layer_maps.values())))
            plotting.layer_grid(
                images[:n],
                layer_maps,
                path,
                row_titles=[
                    f"{split.class_names[labels[i]]} -> {split.class_names[preds[i]]}"
                    for i in range(n)
                ],
                method=config.layer_cam.method,
            )
    _write_index(out, stats, indices, labels, preds, split.class_names)
    return ExplainResult(out_dir=out, stats=stats, maps=maps, indices=np.asarray(indices))


def _write_index(out: Path, stats, indices, labels, preds, class_names) -> None:
    """`out/index.html`: the summary numbers and every figure of the run that exists."""
    completeness = stats.get("completeness", {})
    rows = [
        [m, s["seconds"], s["mean_abs"], completeness.get(m, {}).get("mean_abs_delta")]
        for m, s in stats["methods"].items()
    ]
    header = ["method", "seconds (incl. compile)", "mean |A|", "mean |completeness gap|"]

    def images(paths, caption=lambda p: ""):
        return [Image(p.relative_to(out).as_posix(), caption(p)) for p in paths if p.is_file()]

    def sheet_caption(p):
        i = int(p.stem.removeprefix("sample_"))
        return (
            f"sample {i} (index {indices[i]}): true {class_names[labels[i]]}, "
            f"predicted {class_names[preds[i]]}"
        )

    figures = {
        "Agreement between methods": images([out / "agreement.png"]),
        "Galleries": images([out / f"gallery_{m}.png" for m in stats["methods"]]),
        "Sign modes": images([out / f"signs_{m}.png" for m in stats["methods"]]),
        "CAM of every layer": images(sorted(out.glob("layer_*.png"))),
        "Samples": images(
            [out / "sheets" / f"sample_{i:03d}.png" for i in range(len(indices))], sheet_caption
        ),
    }
    files = ("stats.json", "attributions.npz", "config.json")
    plotting.write_page(
        out / "index.html",
        title=f"Explain: {stats['model']} on {stats['dataset']}/{stats['split']}",
        intro=f"{stats['samples']} samples, checkpoint epoch {stats['checkpoint_epoch']}.",
        sections=[Section("Summary", table=Table(header, rows))]
        + [Section(h, images=imgs) for h, imgs in figures.items() if imgs]
        + [Section("Files", links=[Link(f) for f in files if (out / f).is_file()])],
    )


def _key(layer: str) -> str:
    return layer.replace("/", "__")


def _layer_cams(config, fn, model, variables, images, target) -> dict[str, np.ndarray]:
    """`config.layer_cam`'s maps (`layer_cams`) for its first `samples` images."""
    settings = config.get("layer_cam")
    if not settings or not int(settings.samples):
        return {}
    n = min(int(settings.samples), len(images))
    return layer_cams(
        settings.method, fn, model, variables, images[:n], target[:n], tuple(settings.layers)
    )


def layer_cams(
    method: str,
    fn: Any,
    model: Any,
    variables: Any,
    images: Any,
    target: Any,
    layers: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """The CAM `method`'s map of every layer in `layers` (empty: the model's
    `conv_layer_names`, first to last), one (N, H, W) array per layer: what the
    per-layer figures of the explain and tuning studies show."""
    layers = _cam_layers(method, model, layers)
    out = {}
    for layer in layers:
        # One compiled program per layer (eagerly, every operation of the capture and
        # its gradient would compile on its own).
        explain = jax.jit(
            attribution.explainer(method, fn, model=model, variables=variables, layer=layer)
        )
        maps = np.asarray(explain(images, target, None))[..., 0]
        if not np.isfinite(maps).all():
            raise FloatingPointError(f"{method} of layer {layer} produced NaN or Inf")
        out[layer] = maps
        logging.info("%s of %s: %d samples", method, layer, len(maps))
    return out


def _cam_layers(method: str, model: Any, layers: Sequence[str]) -> tuple[str, ...]:
    """`layers`, or the model's `conv_layer_names` when empty; checks `method` is a CAM."""
    layers = tuple(layers) or tuple(getattr(model, "conv_layer_names", ()))
    if not layers:
        raise ValueError(
            f"{type(model).__name__} does not list its conv layers; set "
            "--config.layer_cam.layers=(...) to the module paths to compare"
        )
    check_layer_cam_method(method)
    return layers


def _is_layer_map(spec: Any) -> bool:
    """A deterministic one-layer map that needs no option but `layer` (the figure
    passes no other)."""
    if not (spec.spatial and "layer" in spec.options and not spec.stochastic):
        return False
    try:
        if spec.check is not None:
            spec.check({"layer": "layer"})
    except ValueError:  # e.g. layer_deeplift_shap needs its references
        return False
    return True


def check_layer_cam_method(method: str) -> None:
    """A one-line ValueError unless `method` can draw the per-layer figure
    (`layer_cams`): a deterministic method with one (N, H, W) map of a named layer and
    no option it cannot do without but the layer."""
    spec = attribution.METHODS.get(method)
    if spec is None or not _is_layer_map(spec):
        cams = [m for m, s in attribution.METHODS.items() if _is_layer_map(s)]
        raise ValueError(
            "layer_cam.method must be a deterministic map of one layer that needs no other "
            f"option, one of {cams}; got {method!r}"
        )


def _figures(out: Path, config, images, labels, preds, probs, maps, stats, class_names) -> None:
    names = list(maps)
    signs = {
        m: ("all" if attribution.METHODS[m].is_signed(method_options(config, m)) else "absolute")
        for m in names
    }
    per_sample = np.load(out / "attributions.npz")["spearman_per_sample"]
    # The class each map explains (the labels when the config says so).
    target = preds if config.target == "predicted" else labels
    for i in range(min(int(config.figures.max_sheets), len(images))):
        path = out / "sheets" / f"sample_{i:03d}.png"
        if path.exists():
            continue
        # Statistics of the map drawn: channels summed.
        drawn = {m: plotting.drawn_map(maps[m][i]) for m in names}
        sample_stats = {
            m: {"mean": float(a.mean()), "max": float(a.max()), "std": float(a.std())}
            for m, a in drawn.items()
        }
        title = (
            f"true {class_names[labels[i]]}, predicted {class_names[preds[i]]} "
            f"({probs[i].max():.2f})"
        )
        if labels[i] != preds[i]:
            title += f"; maps explain {class_names[target[i]]}"
        plotting.explanation_sheet(
            images[i],
            {m: maps[m][i] for m in names},
            path,
            title=title,
            stats=sample_stats,
            correlation=per_sample[i],
            signs=signs,
        )
    for m in names:
        path = out / f"gallery_{m}.png"
        if not path.exists():
            plotting.class_gallery(  # rows: the class each map explains
                images,
                maps[m],
                target,
                class_names,
                path,
                method=f"{m} of the {config.target} class",
                sign=signs[m],
                per_class=int(config.figures.gallery_per_class),
            )
        if (
            signs[m] == "all"
            and config.figures.sign_modes
            and not (out / f"signs_{m}.png").exists()
        ):
            plotting.sign_modes(
                images[0],
                maps[m][0],
                out / f"signs_{m}.png",
                method=m,
                title=f"{m}: sign modes (explaining {class_names[target[0]]}, "
                f"true {class_names[labels[0]]})",
            )
    if not (out / "agreement.png").exists():
        a = stats["agreement"]
        plotting.agreement_matrices(
            {
                "Pearson": np.array(a["pearson"]),
                "Spearman": np.array(a["spearman"]),
                f"top {100 * a['topk_fraction']:g}% overlap": np.array(a["topk_overlap"]),
            },
            a["methods"],
            out / "agreement.png",
        )
