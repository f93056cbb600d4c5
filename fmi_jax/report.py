"""One call that explains a model's decisions on a few images and writes it all down.

    from fmi_jax.report import report
    page = report(fn, x, methods=("saliency", "integrated_gradients", "smoothgrad"),
                  out="report/", key=jax.random.key(0), labels=y, class_names=names)
    # open report/index.html in a browser

`fn(x) -> logits` is any model function (for the CAM family, a model handle from
`fmi_jax.attribution`); `x` is a batch of float images ``(N, H, W[, C])``. Every named
method runs through the registry (:func:`fmi_jax.attribution.explainer`) and the report
measures, per method:

* **seconds** of one call after compilation (the first call compiles and is timed
  separately), for all N images;
* the **completeness gap** ``sum_j A_ij - (f_t(x_i) - f_t(x'_i))`` per example, with
  ``x'`` the method's reference: its ``baseline`` option (zeros by default), the mean
  of ``f_t`` over the references for GradientSHAP and DeepLiftShap, and for a method at
  a layer without a reference input the layer's ``layer_baseline`` (the zero
  activation by default). ``A`` is what the method computes, before a layer map is
  resized to the image (bilinear resizing does not keep a total). The gap is about
  zero for Integrated Gradients (its quadrature error; Sundararajan et al. 2017) and
  DeepLift (summation-to-delta; Shrikumar et al. 2017), at the input or a layer, and
  for other methods a measure of how far the maps are from accounting for the logit
  difference ``f_t(x) - f_t(x')``, which is reported beside it for scale;
* **agreement** with every other method: the mean over examples of the Spearman rank
  correlation and of the top-k overlap of the channel-summed maps
  (:mod:`fmi_jax.evaluation.agreement`). Spearman ranks signed values, so a signed map
  (IG) and a non-negative one (a CAM) can correlate near 0 while they agree on where
  the evidence is; the top-k overlap ranks by ``|value|`` and shows that agreement.

It writes under `out`:

  index.html   the page: summary table, agreement figure, every sheet with its caption
  stats.json   all the numbers above, per method and per example
  agreement.png  the mean Spearman and top-k overlap matrices
  sheets/<i>.png per image: the input, each method's map and overlay, the example's
               statistics and cross-method correlations

`out` must be new, empty, or a previous report (which is then replaced), known by its
stats.json (written first, with ``kind``); a folder holding anything else, or a
report's file names without that record, is refused, so nothing of the researcher's
is overwritten.
Every file is written atomically (a temporary file, then a rename).

This module sits above attribution, evaluation and plotting (beside the studies) and
imports them; nothing in those layers imports it.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from fmi_jax import attribution, evaluation, plotting, runs
from fmi_jax.attribution import METHODS
from fmi_jax.attribution.core import as_input
from fmi_jax.plotting.html import Image, Link, Section, Table, write_page

__all__ = ["REPORT_KIND", "report"]

# stats.json's "kind": how a later call recognises a folder as a report it may replace.
REPORT_KIND = "fmi_jax.report"

_OWN_FILES = ("index.html", "stats.json", "agreement.png")
_SHEET = re.compile(r"\d+\.png")
_TEMPORARY = re.compile(r"\..+\.tmp")  # left by an interrupted atomic write


def report(
    fn: Callable[[jax.Array], jax.Array],
    x: Any,
    target: Any = None,
    *,
    methods: Sequence[str],
    out: str | Path,
    key: jax.Array | int | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    labels: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    batch_size: int | None = None,
    topk_fraction: float = 0.1,
    max_sheets: int | None = None,
    images: Any = None,
    title: str = "Attribution report",
) -> Path:
    """Explains `x` with every method in `methods` and writes the report under `out`.

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``; for methods
        with ``METHODS[name].needs_model`` (the CAM family), a model handle.
      x: float images ``(N, H, W)`` or ``(N, H, W, C)``, as `fn` takes them.
      target: the class to explain: ``None`` (each example's predicted class), one int
        or an int array ``(N,)``; resolved once and passed to every method.
      methods: registry names (``attribution.available_methods()``).
      out: the report folder (new, empty, or a previous report).
      key: a PRNG key (or an int seed) for the methods that draw randomness; required
        when one of them is requested, ignored by the others.
      options: per method, the keyword options of its explainer,
        e.g. ``{"occlusion": {"window": (4, 4)}}``.
      labels: the true class of each example, shown in the captions.
      class_names: names for class indices, shown in the captions.
      batch_size: examples per forward pass for the target, the completeness gaps and
        every method that takes ``batch_size`` (unless its options set one).
      topk_fraction: the fraction of pixels whose overlap the agreement counts.
      max_sheets: draw sheets for the first `max_sheets` examples only (None: all).
      images: what the sheets draw under the maps, ``(N, H, W)`` or ``(N, H, W, C)``
        in [0, 1] (or uint8), e.g. the photos before their per-channel normalisation; by default
        each image of `x` min-max scaled, which cannot undo a per-channel one.
      title: the page title.

    Returns:
      The path of ``index.html``.

    Raises:
      ValueError: an unknown or repeated method, no methods, options for a method not
        requested or that it does not take, no `key` for a stochastic method, bad
        shapes of `x`, `target`, `labels` or `class_names`, or an `out` that exists and
        holds something other than a previous report. Nothing is written then.
    """
    names = _check_methods(methods, options)
    options = {m: dict((options or {}).get(m, {})) for m in names}
    stochastic = [m for m in names if METHODS[m].stochastic]
    if stochastic and key is None:
        raise ValueError(
            f"{', '.join(stochastic)} draw{'s' if len(stochastic) == 1 else ''} random "
            "samples: pass key=jax.random.key(seed)"
        )
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        key = jax.random.key(int(key))
    out = Path(out)
    _check_out(out)
    x = as_input(x)  # float32; integer images (uint8 in [0, 255]) and NaN are refused
    if x.ndim not in (3, 4) or x.shape[0] == 0:
        raise ValueError(f"x must be images (N, H, W) or (N, H, W, C), got shape {x.shape}")
    n = x.shape[0]
    if images is not None:
        images = np.asarray(images)
        if images.dtype == np.uint8:  # photos as read, 0..255
            images = images / 255.0
        images = np.asarray(as_input(images, "images"))
        if images.shape[:3] != x.shape[:3] or images.ndim not in (3, 4):
            raise ValueError(
                f"images of shape {images.shape} do not fit x of shape {x.shape}: give one "
                "image (N, H, W) or (N, H, W, C) per example"
            )
        if images.min() < 0 or images.max() > 1:
            raise ValueError(
                f"images must be in [0, 1] for display, got values from {images.min():g} "
                f"to {images.max():g}"
            )
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be {n} integer classes, got {labels.dtype} {labels.shape}"
            )
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a list of names, got the string {class_names!r}")
    if max_sheets is not None and (
        isinstance(max_sheets, bool)
        or not isinstance(max_sheets, (int, np.integer))
        or max_sheets < 0
    ):
        raise ValueError(f"max_sheets must be None or an integer >= 0, got {max_sheets!r}")
    if not 0 < topk_fraction <= 1:
        raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction}")
    # The target checked first (shapes only): that fn maps x to (N, classes) logits,
    # with a clear error for one image without its batch axis. The predicted class
    # comes from the logits, so the model runs over x once.
    checked = attribution.resolve_target(fn, x, 0 if target is None else target)
    logits = _logits(fn, x, batch_size)
    bad = ~np.all(np.isfinite(logits), axis=-1)
    if bad.any():
        raise ValueError(
            f"fn returned NaN or infinite logits for {int(bad.sum())} of the {n} examples "
            f"(the first: #{int(np.argmax(bad))}): no class or probability to explain"
        )
    if labels is not None and (labels.min() < 0 or labels.max() >= logits.shape[-1]):
        raise ValueError(
            f"labels must be classes in [0, {logits.shape[-1]}) of the model's "
            f"{logits.shape[-1]} logits, got {int(labels.min())}..{int(labels.max())}"
        )
    target = jnp.asarray(logits.argmax(-1), jnp.int32) if target is None else checked
    if np.all(logits >= 0) and np.allclose(logits.sum(-1), 1, atol=1e-4):
        logging.warning(
            "fn's outputs are non-negative and sum to 1: they look like probabilities, "
            "not logits; the captions' probabilities apply a softmax to them (pass the "
            "model without its final softmax)"
        )
    used = [logits.argmax(-1), np.asarray(target)] + ([labels] if labels is not None else [])
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        top = max(int(np.max(u)) for u in used)
        if top >= len(class_names):
            raise ValueError(f"class_names has {len(class_names)} names, but class {top} occurs")
    for m in names:
        spec = METHODS[m]
        if batch_size is not None and "batch_size" in spec.options:
            options[m].setdefault("batch_size", batch_size)
    explainers = {m: _explainer(m, fn, options[m]) for m in names}

    chosen = np.asarray(logits)[np.arange(n), np.asarray(target)].astype(np.float64)
    maps, sums, method_stats = {}, {}, {}
    for m in names:
        maps[m], sums[m], method_stats[m] = _run_method(
            m, explainers[m], fn, x, target, chosen, key, options[m], batch_size
        )
    agreement, per_example = _agreement(maps, topk_fraction)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    preds = probs.argmax(-1)
    stats = {
        "kind": REPORT_KIND,
        "examples": n,
        "input_shape": list(x.shape[1:]),
        "target": np.asarray(target).tolist(),
        "predictions": preds.tolist(),
        "probabilities": probs.max(-1).tolist(),
        "labels": None if labels is None else labels.tolist(),
        "class_names": class_names,
        "methods": method_stats,
        "agreement": agreement,
    }

    out.mkdir(parents=True, exist_ok=True)
    if not (out / "stats.json").exists():  # marks the folder as a report's from the start
        runs.write_text_atomic(out / "stats.json", json.dumps({"kind": REPORT_KIND}))
    x = np.asarray(x)
    sheets = []
    for i in range(n if max_sheets is None else min(int(max_sheets), n)):
        sheets.append(f"sheets/{i}.png")
        plotting.explanation_sheet(
            _for_display(x[i]) if images is None else images[i],
            {m: maps[m][i] for m in names},
            path=out / sheets[-1],
            title=_caption(i, stats, short=True),
            stats={
                m: {
                    "sum": float(sums[m][i]),
                    "gap": method_stats[m]["completeness"]["per_example"][i],
                    "max |A|": float(np.abs(plotting.drawn_map(maps[m][i])).max()),
                }
                for m in names
            },
            correlation=per_example[i],
            signs={m: "all" if METHODS[m].is_signed(options[m]) else "absolute" for m in names},
        )
    # a previous report's extra sheets, and temporaries of interrupted writes
    for stale in (out / "sheets").glob("*"):
        if stale.is_file() and f"sheets/{stale.name}" not in sheets:
            stale.unlink()
    for stale in out.iterdir():
        if stale.is_file() and _TEMPORARY.fullmatch(stale.name):
            stale.unlink()
    plotting.agreement_matrices(
        {
            "Spearman": np.asarray(agreement["spearman"], np.float64),
            f"top {100 * topk_fraction:g}% overlap": np.asarray(agreement["topk_overlap"]),
        },
        names,
        path=out / "agreement.png",
    )
    runs.write_text_atomic(out / "stats.json", json.dumps(_json_safe(stats), indent=2))
    return _write_page(out, stats, sheets, title)


# --------------------------------------------------------------------- checks


def _check_methods(methods: Any, options: Mapping[str, Any] | None) -> list[str]:
    names = [methods] if isinstance(methods, str) else list(methods)
    available = attribution.available_methods()
    if not names:
        raise ValueError(f"methods is empty; choose from: {', '.join(available)}")
    unknown = [m for m in names if m not in available]
    if unknown:
        raise ValueError(
            f"unknown method(s) {', '.join(map(repr, unknown))}; available: {', '.join(available)}"
        )
    repeated = sorted({m for m in names if names.count(m) > 1})
    if repeated:
        raise ValueError(f"methods repeat {', '.join(repeated)}")
    attribution.require_class_methods(names, "the report")
    extra = sorted(set(options or {}) - set(names))
    if extra:
        raise ValueError(
            f"options given for {', '.join(extra)}, which is not among the methods {names}"
        )
    return names


def _check_out(out: Path) -> None:
    """`out` may be missing, empty, or hold a previous report and nothing else: a
    report's files beside the ``stats.json`` of a report (written first, marked with
    ``kind``), so a researcher's own ``index.html`` or ``sheets/0.png`` is never taken
    for one."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"out={str(out)!r} exists and is not a folder")
    foreign = []
    for entry in sorted(out.iterdir()):
        if entry.name in _OWN_FILES and entry.is_file() or _TEMPORARY.fullmatch(entry.name):
            continue
        if entry.name == "sheets" and entry.is_dir():
            foreign += [
                f"sheets/{p.name}"
                for p in sorted(entry.iterdir())
                if not (p.is_file() and (_SHEET.fullmatch(p.name) or _TEMPORARY.fullmatch(p.name)))
            ]
            continue
        foreign.append(entry.name)
    holds = any(not _TEMPORARY.fullmatch(entry.name) for entry in out.iterdir())
    if not foreign and holds:
        try:
            kind = json.loads((out / "stats.json").read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind != REPORT_KIND:
            own = sorted(e.name for e in out.iterdir() if not _TEMPORARY.fullmatch(e.name))
            foreign += [f"{name} without a report's stats.json" for name in own]
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise ValueError(
            f"out={str(out)!r} holds files that are not a previous report ({shown}); "
            "choose a new or empty folder (nothing was written)"
        )


# ------------------------------------------------------------------- numbers


def _logits(fn, x: jax.Array, batch_size: int | None) -> np.ndarray:
    size = x.shape[0] if batch_size is None else int(batch_size)
    return np.concatenate(
        [np.asarray(fn(x[s : s + size]), np.float32) for s in range(0, x.shape[0], size)]
    )


def _explainer(name, fn, options):
    """`explain(x, target, key) -> (attributions, maps)`, compiled where the method can
    be. A method that resizes its maps to the input (`upsample`, the CAMs and the layer
    methods) runs unresized and the resize follows: bilinear resizing does not keep a
    map's total, and the completeness gap is of the attributions the method computes
    (layer integrated gradients sums to the logit difference at the layer's resolution).
    The maps shown are the method's own upsampled ones, as the explainer returns them."""
    resize = "upsample" in METHODS[name].options and options.get("upsample", True)
    if not resize:
        explain = attribution.explainer(name, fn, **options)
        return attribution.jit_method(name, lambda x, t, k: (explain(x, t, k),) * 2)
    explain = attribution.explainer(name, fn, **{**options, "upsample": False})

    def resized(x, target, key):
        raw = explain(x, target, key)  # (N, h, w, 1): spatial maps get a channel axis
        return raw, attribution.upsample_maps(raw[..., 0], x.shape[1:3])[..., None]

    return attribution.jit_method(name, resized)


def _run_method(name, explain, fn, x, target, chosen, key, options, batch_size):
    """Maps (from the first, compiling call), their totals, the seconds of a second
    call, and the completeness gap per example against the logits `chosen`, f_t(x)."""
    start = time.perf_counter()
    raw, maps = (np.asarray(a) for a in jax.block_until_ready(explain(x, target, key)))
    first = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(explain(x, target, key))
    seconds = time.perf_counter() - start
    if not np.isfinite(raw).all():
        raise FloatingPointError(f"{name} produced NaN or Inf attributions with {options}")
    total = raw.reshape(raw.shape[0], -1).sum(1).astype(np.float64)
    difference = chosen - _reference_logits(name, fn, x, target, options, batch_size)
    gap = total - difference
    spec = METHODS[name]
    return (
        maps,
        total,
        {
            "seconds": seconds,
            "first_call_seconds": first,
            "stochastic": spec.stochastic,
            "signed": spec.signed,
            "paper": spec.paper,
            "options": {k: _option_value(v) for k, v in options.items()},
            "mean_abs": float(np.abs(maps).mean()),
            "completeness": {
                "mean_abs_gap": float(np.abs(gap).mean()),
                "max_abs_gap": float(np.abs(gap).max()),
                # sum(A) - gap = f_t(x) - f_t(x'): the scale the gap is measured against
                "mean_abs_logit_difference": float(np.abs(difference).mean()),
                "per_example": gap.tolist(),
            },
        },
    )


def _reference_logits(name, fn, x, target, options, batch_size) -> np.ndarray:
    """``f_t(x')`` per example, with ``x'`` the reference the method's maps are measured
    from: its `baseline` (zeros unless given); the mean over the references for a method
    whose baseline is a distribution (GradientSHAP, DeepLiftShap); and for `at_layer` of
    a method without a reference input, the network after the layer at `layer_baseline`
    (zeros unless given), the all-zero activation being the method's own default there."""
    spec = METHODS[name]
    inner = spec.composition
    inner = inner[len("at_layer(") : -1] if inner.startswith("at_layer(") else name
    distribution = getattr(METHODS[inner].method, "baseline_is_distribution", False)
    reference, evaluate, example = options.get("baseline"), fn, x.shape[1:]
    if inner != name and reference is None:
        handle, layer = attribution.as_flax_model(fn, name), options["layer"]
        reference, example = options.get("layer_baseline"), handle.layer_shape(x, layer)[1:]

        def evaluate(values):  # the network after the layer sees nothing but its values
            inputs = jnp.broadcast_to(x[:1], (values.shape[0], *x.shape[1:]))
            return handle.logits_with(inputs, layer, values)

    target = np.asarray(target)
    if not distribution:
        points = jnp.broadcast_to(
            jnp.asarray(0.0 if reference is None else reference), (len(target), *example)
        )
        logits = _logits(evaluate, points.astype(jnp.float32), batch_size)
        return logits[np.arange(len(target)), target].astype(np.float64)
    # A distribution of references: None one zero example, one example one reference.
    references = jnp.asarray(0.0 if reference is None else reference, jnp.float32)
    if references.ndim < len(example) + 1:
        references = jnp.broadcast_to(references, (1, *example))
    return _logits(evaluate, references, batch_size).astype(np.float64).mean(0)[target]


def _agreement(maps: Mapping[str, np.ndarray], fraction: float) -> tuple[dict, np.ndarray]:
    """Mean Spearman and top-k overlap matrices of the channel-summed maps, and the
    per-example Spearman matrices ``(N, M, M)``."""
    names = list(maps)
    flat = {
        m: evaluation.reduce_channels(jnp.asarray(v), "sum") if v.ndim == 4 else jnp.asarray(v)
        for m, v in maps.items()
    }
    spearman, per_example = evaluation.correlation_matrix(flat, method="spearman")
    overlap, _ = evaluation.overlap_matrix(flat, fraction=fraction)
    return {
        "methods": names,
        "spearman": spearman.tolist(),
        "topk_fraction": fraction,
        "topk_overlap": overlap.tolist(),
    }, per_example


def _option_value(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, (int, float, str)) for v in value):
        return list(value)
    shape = getattr(value, "shape", None)
    return f"array{tuple(shape)}" if shape is not None else repr(value)


def _json_safe(value: Any) -> Any:
    """NaN and Inf (an undefined correlation) become null: stats.json stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# -------------------------------------------------------------------- files


def _for_display(image: np.ndarray) -> np.ndarray:
    """The image min-max scaled to [0, 1] (plotting shows [0, 1]; the maps were
    computed on the image as given)."""
    lo, hi = float(image.min()), float(image.max())
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def _class(c: int, stats: Mapping[str, Any]) -> str:
    names = stats["class_names"]
    return str(c) if names is None else names[c]


def _caption(i: int, stats: Mapping[str, Any], short: bool = False) -> str:
    parts = [f"#{i}"]
    if stats["labels"] is not None:
        parts.append(f"label {_class(stats['labels'][i], stats)}")
    parts.append(
        f"predicted {_class(stats['predictions'][i], stats)} (p = {stats['probabilities'][i]:.2f})"
    )
    if stats["target"][i] != stats["predictions"][i] or not short:
        parts.append(f"explained class {_class(stats['target'][i], stats)}")
    return ", ".join(parts)


def _write_page(out: Path, stats: Mapping[str, Any], sheets: Sequence[str], title: str) -> Path:
    names = list(stats["methods"])
    rows = [
        [
            m,
            1e3 * s["seconds"],
            1e3 * s["first_call_seconds"],
            s["completeness"]["mean_abs_gap"],
            s["completeness"]["max_abs_gap"],
            s["completeness"]["mean_abs_logit_difference"],
            s["paper"],
        ]
        for m, s in stats["methods"].items()
    ]
    n, shape = stats["examples"], " × ".join(map(str, stats["input_shape"]))
    a = stats["agreement"]
    sections = [
        Section(
            "Summary",
            paragraphs=[
                "Milliseconds of one call on all images after compilation (the first "
                "call, which compiles, is timed separately). Completeness gap: sum of the "
                "attributions (a layer method's at the layer, before the resize to the "
                "image) minus f_t(x) − f_t(x′), with x′ the method's reference (its "
                "baseline, zeros unless set); it is about 0 for Integrated Gradients and "
                "DeepLift, and shows for other methods how much of the logit difference "
                "(last numeric column) the map leaves unexplained.",
            ],
            table=Table(
                [
                    "method",
                    "ms per call",
                    "ms, first call (compiles)",
                    "mean |completeness gap|",
                    "max |completeness gap|",
                    "mean |f_t(x) − f_t(x′)|",
                    "reference",
                ],
                rows,
            ),
        ),
        Section(
            "Agreement between methods",
            paragraphs=[
                f"Mean over the {n} images of the Spearman rank correlation of the "
                f"channel-summed maps, and of the fraction of the top "
                f"{100 * a['topk_fraction']:g}% pixels (by |attribution|) two maps share; "
                "an image where one of the two maps is constant ranks nothing and is "
                "left out of that pair's mean.",
            ],
            images=[Image("agreement.png", f"Agreement of {', '.join(names)}")],
        ),
    ]
    if sheets:
        sections.append(
            Section(
                "Examples",
                paragraphs=[
                    f"Per image{'' if len(sheets) == n else f' (the first {len(sheets)} of {n})'}: "
                    "the input (min-max scaled for display unless images were given), each method's map "
                    "and its overlay, the attributions' sum, completeness gap and largest |value|, "
                    "and the Spearman correlations between methods on this image.",
                ],
                images=[Image(src, _caption(i, stats)) for i, src in enumerate(sheets)],
            )
        )
    sections.append(
        Section(
            "Files",
            links=[Link("stats.json", "stats.json: every number on this page, per example")],
        )
    )
    return write_page(
        out / "index.html",
        title=title,
        intro=f"{n} images of shape {shape}, explained with {len(names)} "
        f"method{'s' if len(names) != 1 else ''}: {', '.join(names)}.",
        sections=sections,
    )
