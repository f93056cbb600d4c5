"""The attribution-metrics study: every method scored by every metric, as a leaderboard.

`run_evaluate_attributions(config, workdir)` restores a trained run, takes
`config.num_images` images of `config.split` (`selection='first'`: the first N in the
split's order, the default, deterministic and free of selection bias; `'random'`: a
subset drawn without replacement with `selection_seed`, kept in index order), explains
the `target` class (`'predicted'` or `'label'`) with every method of `config.methods`
and scores the maps with :mod:`fmi_jax.evaluation`:

  faithfulness  deletion curve (substrate `deletion.substrate`, default zero) -> AUC,
                lower is better; insertion curve (`insertion.substrate`)
                -> AUC, higher is better; pixel flipping with the deletion substrate:
                MoRF AOPC (higher is better) and LeRF AOPC (lower is better);
                faithfulness correlation (`faithfulness_correlation.samples` random
                subsets of `subset_size` pixels) -> mean, higher is better; ROAD
                (pixels filled by noisy linear imputation, `road.fractions` removed)
                -> the share of (image, fraction) pairs whose top class is still the
                target (the accuracy with `target='label'`), MoRF lower is better,
                LeRF higher is better; performance information curves (the XRAI
                paper's SIC and AIC, on the first `pic.max_images` images, every
                method from the same random pixels) -> the area under the median
                curve of the images the model is sure of, higher is better
  robustness    infidelity (Yeh et al., `infidelity.normalize` rescales each map by
                its least-squares factor so that methods with different scales compare)
                -> mean, lower is better; max-sensitivity -> mean, lower is better.
                Max-sensitivity re-runs the method `sensitivity.samples` times per
                image, so it is computed on the first `sensitivity.max_images` of the N
                images, or fewer for a method listed in `sensitivity.images_per_method`
                (the expensive ones); the leaderboard reports how many. Every perturbed
                copy is explained with the clean image's key: SmoothGrad's noise is
                held fixed (common random numbers; Captum draws it afresh), and the
                `random` control scores 0
  complexity    sparseness (Gini of |map| per pixel) -> mean, higher is better
  sanity        cascading model randomisation (Adebayo et al.) of `sanity.layers`
                (empty: every layer, output first) on the first `sanity.max_images`
                images: mean |Spearman| of |maps| and SSIM after the last step (lower
                is better), and pass/fail by `evaluation.passes_sanity_check`
                (`sanity.threshold`); with `sanity.efficient_mprt`, the efficient
                MPRT (Hedström et al.) of the cascade's fully randomised model on
                the same images, from the cascade's maps (summed over channels): the
                relative rise of the entropy of their value histograms -> mean, higher is better (a map that ignores the
                weights scores 0); with `sanity.random_logit`, the random-logit
                test (Sixt et al.) on the same images: SSIM between the map of the
                target and that of another class, drawn per image and the same for
                every method -> mean, lower is better (a map that ignores the class
                scores 1)
  seconds       wall time of the method's maps for the N images (compile included),
                and of all its metrics

Besides the methods of `fmi_jax.attribution.METHODS`, `methods` may name two
controls: `input` (the map is the image itself) and `random` (uniform noise drawn
from the explanation key). Neither depends on the model, so both fail the sanity
check by construction (the same key draws the same noise for the randomised model);
`random` also marks chance level for faithfulness, but not for max-sensitivity, where
its map, a function of the key alone, does not move.

Outputs under `workdir/<config.output>/`:

  config.json         the study config (a different config here is refused)
  methods/<m>.npz     per method: maps, per-image curves and metric values (cache)
  methods/<m>.json    per method: the scalar results and timings (cache; written last,
                      so its presence marks the method as finished)
  leaderboard.md/.csv/.json
                      one row per method, columns named with their direction
  curves.npz          per method: deletion_/insertion_/lerf_<m> curves (N, S + 1),
                      road_morf_/road_lerf_<m> (N, F) (1 where still correct),
                      sanity_<metric>_<m> (L, n), sic_<m>/aic_<m> the median
                      curves read at `pic_x`; `layers`, `indices`, `road_fractions`
  deletion_insertion.png   mean deletion and insertion curves per method
  road.png            ROAD: share with the target still on top per removed fraction,
                      MoRF and LeRF, per method
  pic.png             the median SIC and AIC per method
  randomization.png        mean Spearman (|maps|) and SSIM per cascade step per method
  agreement.json/.png cross-method agreement of the maps (the explain study's
                      `map_agreement`: Pearson, Spearman, top-k overlap)
  index.html          the leaderboard and the figures on one offline page

Re-running with the same config reads the finished methods from `methods/` and only
computes the missing ones, then rewrites the tables and figures.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fmi_jax import attribution, evaluation, plotting, runs
from fmi_jax.attribution.core import Explain, example_keys
from fmi_jax.plotting.html import Image, Link, Section, Table
from fmi_jax.studies.explain import (
    claim_output,
    map_agreement,
    method_options,
)
from fmi_jax.train import evaluate as evaluate_lib
from fmi_jax.train import loop as loop_lib
from fmi_jax.train.input_pipeline import to_float

__all__ = [
    "COLUMNS",
    "CONTROLS",
    "EvaluateAttributionsResult",
    "evaluate_attributions",
    "run_evaluate_attributions",
    "select_images",
]

CONTROLS = ("input", "random")
_PIC_STREAM = 2**31 - 1  # folded into the study's key, far from the method indices
_RANDOM_LOGIT_STREAM = 2**31 - 2
_PIC = ("sic", "aic")  # softmax and accuracy information curves

# Leaderboard columns: (row key, header with its direction).
COLUMNS = (
    ("deletion_auc", "deletion AUC (lower is better)"),
    ("insertion_auc", "insertion AUC (higher is better)"),
    ("morf_aopc", "MoRF AOPC (higher is better)"),
    ("lerf_aopc", "LeRF AOPC (lower is better)"),
    ("faithfulness_correlation", "faithfulness correlation (higher is better)"),
    ("road_morf", "ROAD MoRF, target still on top (lower is better)"),
    ("road_lerf", "ROAD LeRF, target still on top (higher is better)"),
    ("sic_auc", "SIC AUC, median curve (higher is better)"),
    ("aic_auc", "AIC AUC, median curve (higher is better)"),
    ("infidelity", "infidelity (lower is better)"),
    ("max_sensitivity", "max-sensitivity (lower is better)"),
    ("sparseness", "sparseness Gini (higher is better)"),
    ("sanity_spearman_abs", "sanity Spearman of abs maps, fully randomised (lower is better)"),
    ("sanity_ssim", "sanity SSIM, fully randomised (lower is better)"),
    ("sanity_pass", "sanity check (pass is better)"),
    ("efficient_mprt", "efficient MPRT, entropy rise when fully randomised (higher is better)"),
    ("random_logit_ssim", "random logit SSIM, target vs another class (lower is better)"),
    ("seconds_maps", "maps seconds (lower is better)"),
    ("seconds_metrics", "metrics seconds"),
    ("sensitivity_images", "sensitivity images"),
)


@dataclasses.dataclass
class EvaluateAttributionsResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    indices: np.ndarray
    computed: list[str]  # methods computed in this call (the others came from the cache)


# ----------------------------------------------------------------------- config


def _check(config: Any, model: Any, variables: Any, images: np.ndarray) -> None:
    """Everything about `config` that can fail cheaply, before the output is claimed:
    method names, their options (each method traced on two images), and the CAM layers
    they name."""
    known = set(attribution.available_methods()) | set(CONTROLS)
    unknown = sorted(set(config.methods) - known)
    if unknown:
        raise ValueError(
            f"unknown method(s) {unknown}; available: {attribution.available_methods()} "
            f"and the controls {CONTROLS}"
        )
    if len(set(config.methods)) != len(config.methods):
        raise ValueError(f"methods repeat a name: {tuple(config.methods)}")
    attribution.require_class_methods(config.methods, "the leaderboard")
    if config.target not in ("predicted", "label"):
        raise ValueError(f"target must be 'predicted' or 'label', got {config.target!r}")
    if config.selection not in ("first", "random"):
        raise ValueError(f"selection must be 'first' or 'random', got {config.selection!r}")
    for field in ("num_images", "infidelity.samples", "sensitivity.samples"):
        section, _, name = field.rpartition(".")
        value = (config[section] if section else config)[name]
        if int(value) < 1:
            raise ValueError(f"{field} must be >= 1, got {value}")
    fractions = tuple(np.atleast_1d(np.asarray(config.road.fractions, np.float64)))
    if not fractions or not all(0.0 <= float(f) <= 1.0 for f in fractions):
        raise ValueError(f"road.fractions must be numbers in [0, 1], got {fractions}")
    if not 0 <= float(config.road.noise) < float("inf"):
        raise ValueError(f"road.noise must be a finite number >= 0, got {config.road.noise}")
    correlation = config.faithfulness_correlation
    if int(correlation.samples) < 2:
        raise ValueError(
            "faithfulness_correlation.samples must be >= 2 (a correlation needs two subsets), "
            f"got {correlation.samples}"
        )
    if not 0.0 <= float(config.sanity.threshold) <= 1.0:
        raise ValueError(
            "config.sanity.threshold is a rank correlation in [0, 1], got "
            f"{config.sanity.threshold}"
        )
    pic = config.pic
    thresholds = [float(t) for t in np.atleast_1d(np.asarray(pic.thresholds, np.float64))]
    increasing = all(b > a for a, b in zip(thresholds, thresholds[1:]))
    if not thresholds or not increasing or not all(0.0 < t < 1.0 for t in thresholds):
        raise ValueError(
            f"pic.thresholds must be increasing fractions in (0, 1), got {tuple(thresholds)}"
        )
    if not 0.0 <= float(pic.random_fraction) <= 1.0:
        raise ValueError(f"pic.random_fraction must be in [0, 1], got {pic.random_fraction}")
    if not 0.0 <= float(pic.min_score) <= 1.0:
        raise ValueError(f"pic.min_score must be in [0, 1] (a probability), got {pic.min_score}")
    if int(pic.max_images) < 0:
        raise ValueError(f"pic.max_images must be >= 0 (0: all), got {pic.max_images}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or min(images.shape[1:3]) < 2:
        raise ValueError(
            "performance information curves (WebP sizes) need grayscale or RGB images of at "
            f"least 2 x 2, got images of shape {images.shape[1:]}"
        )
    pixels = int(np.prod(images.shape[1:3]))
    if not 0 <= int(correlation.subset_size) < pixels:
        raise ValueError(
            f"faithfulness_correlation.subset_size must be in [0, {pixels}) (0: one image "
            f"row), got {correlation.subset_size}"
        )
    # Used only after every method's other metrics (minutes in): checked here.
    radius = config.sensitivity.radius
    if isinstance(radius, bool) or not 0 <= float(radius) < float("inf"):
        raise ValueError(f"config.sensitivity.radius must be a finite number >= 0, got {radius}")
    window = config.sanity.window
    if isinstance(window, bool) or not isinstance(window, int) or window < 3 or window % 2 == 0:
        raise ValueError(f"config.sanity.window must be an odd integer >= 3, got {window!r}")
    if window > min(images.shape[1:3]):
        raise ValueError(
            f"config.sanity.window {window} exceeds the images' size {images.shape[1:3]}"
        )
    params = variables["params"] if "params" in variables else variables
    unknown = [name for name in config.sanity.layers if name not in params]
    if unknown:
        raise ValueError(
            f"config.sanity.layers names unknown layers {unknown}; the model's are {list(params)}"
        )
    x = to_float(jnp.asarray(images[:1]))
    pair = to_float(jnp.asarray(images[:2]))
    handle = attribution.flax_model(model, variables)
    fn = lambda inputs: model.apply(variables, inputs)  # noqa: E731
    for name in config.methods:
        if name in CONTROLS:
            continue
        options = method_options(config, name)
        explain = attribution.explainer(name, fn, model=model, variables=variables, **options)
        if "layer" in options:
            handle.layer_shape(x, options["layer"])
        attribution.check_explainer(explain, pair)


def _claim(config: Any, out: Path, epoch: int, model_name: str) -> None:
    """Claims `out` (results: any cached method) for this config, model and epoch."""
    has_results = any((out / "methods").glob("*.json")) or (out / "leaderboard.json").exists()
    claim_output(
        config,
        out,
        epoch=epoch,
        model_name=model_name,
        has_results=has_results,
        results_file="leaderboard.json",
    )


def select_images(num_available: int, num_images: int, selection: str, seed: int) -> np.ndarray:
    """Indices of the images to evaluate: the first `num_images` ('first') or a seeded
    random subset without replacement, sorted ('random'); all if fewer are available."""
    n = min(int(num_images), num_available)
    if n < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if selection == "first":
        return np.arange(n, dtype=np.int64)
    if selection == "random":
        rng = np.random.default_rng(int(seed))
        return np.sort(rng.choice(num_available, size=n, replace=False)).astype(np.int64)
    raise ValueError(f"unknown selection {selection!r}; choose 'first' or 'random'")


# --------------------------------------------------------------------- explaining


def _control(name: str) -> Explain:
    if name == "input":
        return lambda x, target, key: x
    if name == "random":

        def random_map(x, target, key):
            keys = example_keys(key, x.shape[0])
            return jax.vmap(lambda k, xi: jax.random.uniform(k, xi.shape, xi.dtype))(keys, x)

        return random_map
    raise ValueError(f"unknown control {name!r}")


def _builder(config: Any, name: str, model: Any) -> Callable[[Any], Explain]:
    """variables -> explain(x, target, keys), one compile for any variables."""
    if name in CONTROLS:
        explain = jax.jit(_control(name))
        return lambda variables: explain
    options = method_options(config, name)

    def run(variables, x, target, keys):
        fn = lambda inputs: model.apply(variables, inputs)  # noqa: E731
        build = attribution.explainer(name, fn, model=model, variables=variables, **options)
        return build(x, target, keys)

    jitted = attribution.jit_method(name, run)
    return lambda variables: lambda x, target, keys: jitted(variables, x, target, keys)


def _chunked(explain: Explain, batch_size: int) -> Explain:
    """`explain` over `batch_size` images at a time (padded: one compile), with one key
    per image (a single key is folded with the image's position), so the maps do not
    depend on `batch_size`."""

    def run(x, target, key):
        x = jnp.asarray(x)
        target = jnp.broadcast_to(jnp.asarray(target, jnp.int32), x.shape[:1])
        keys = example_keys(key, x.shape[0])
        n, out = x.shape[0], []
        size = min(batch_size, n)
        for start in range(0, n, size):
            stop = min(start + size, n)
            pad = size - (stop - start)
            xs, ts, ks = x[start:stop], target[start:stop], keys[start:stop]
            if pad:
                xs = jnp.concatenate([xs, jnp.repeat(xs[:1], pad, axis=0)])
                ts = jnp.concatenate([ts, jnp.repeat(ts[:1], pad, axis=0)])
                ks = jnp.concatenate([ks, jnp.repeat(ks[:1], pad, axis=0)])
            out.append(np.asarray(explain(xs, ts, ks))[: stop - start])
        return np.concatenate(out)

    return run


def _full_shape(maps: np.ndarray, images: np.ndarray) -> np.ndarray:
    """CAM maps (N, H, W, 1) broadcast to the images' channels."""
    if maps.shape != images.shape:
        maps = np.broadcast_to(maps, images.shape)
    return np.ascontiguousarray(maps, dtype=np.float32)


def _limit(value: Any, n: int) -> int:
    return n if value is None or int(value) <= 0 else min(int(value), n)


# ----------------------------------------------------------------------- metrics


def _evaluate_method(
    config: Any,
    name: str,
    model: Any,
    variables: Any,
    images: jax.Array,
    target: jax.Array,
    key: jax.Array,
    pic_key: jax.Array,
    logit_key: jax.Array,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    bs = int(config.batch_size)
    build = _builder(config, name, model)
    explain = _chunked(build(variables), bs)
    n = images.shape[0]
    map_key, infd_key, sens_key, sanity_key = jax.random.split(jax.random.fold_in(key, 0), 4)
    road_key, correlation_key = jax.random.split(jax.random.fold_in(key, 1))
    timings: dict[str, float] = {}

    start = time.perf_counter()
    maps = explain(images, target, map_key)
    timings["maps"] = time.perf_counter() - start
    if not np.isfinite(maps).all():
        raise FloatingPointError(f"{name} produced NaN or Inf attributions")
    full = _full_shape(maps, np.asarray(images))
    arrays: dict[str, np.ndarray] = {"maps": maps}

    def timed(label, compute):
        t0 = time.perf_counter()
        value = np.asarray(jax.block_until_ready(compute()))
        timings[label] = time.perf_counter() - t0
        return value

    metrics = _shared_metrics(config, model)
    for label in ("deletion", "insertion", "lerf", "sparseness"):
        arrays[label] = timed(label, lambda f=metrics[label]: f(variables, images, target, full))
    arrays["infidelity"] = timed(
        "infidelity",
        lambda: metrics["infidelity"](variables, images, target, full, infd_key),
    )
    arrays["faithfulness_correlation"] = timed(
        "faithfulness_correlation",
        lambda: metrics["faithfulness_correlation"](
            variables, images, target, full, correlation_key
        ),
    )
    for order in ("morf", "lerf"):
        arrays[f"road_{order}"] = timed(
            f"road_{order}",
            lambda f=metrics[f"road_{order}"]: f(variables, images, target, full, road_key),
        )
    pic, areas = config.pic, {}
    n_pic = _limit(pic.max_images, n)
    for kind, score in zip(_PIC, ("probability", "correct"), strict=True):
        t0 = time.perf_counter()
        curves = evaluation.performance_information_curve(
            functools.partial(metrics["model"], variables),
            images[:n_pic],
            target[:n_pic],
            full[:n_pic],
            pic_key,
            score=score,
            thresholds=tuple(float(t) for t in pic.thresholds),
            random_fraction=float(pic.random_fraction),
            min_score=float(pic.min_score),
            batch_size=bs,
        )
        timings[kind] = time.perf_counter() - t0
        arrays[f"{kind}_auc"] = curves.auc
        arrays["pic_x"] = curves.x
        arrays["pic_random_pixels"] = curves.random_pixels
        arrays[f"{kind}_kept"] = np.asarray([not reason for reason in curves.skipped])
        arrays[f"{kind}_curve"], areas[kind] = (
            evaluation.aggregate_pic(curves)
            if arrays[f"{kind}_kept"].any()
            else (np.full(curves.x.shape, np.nan), None)
        )
    sens = config.sensitivity
    per_method = runs.plain(sens.images_per_method) or {}
    n_sens = _limit(per_method.get(name, sens.max_images), n)
    n_sens = min(n_sens, _limit(sens.max_images, n))
    single = build(variables)
    arrays["max_sensitivity"] = timed(
        "max_sensitivity",
        lambda: evaluation.max_sensitivity(
            lambda x, t, k: _full_shape_jnp(single(x, t, k), x),
            images[:n_sens],
            target[:n_sens],
            example_keys(sens_key, n)[:n_sens],
            radius=float(sens.radius),
            samples=int(sens.samples),
            batch_size=bs,
        ),
    )
    san = config.sanity
    n_san = _limit(san.max_images, n)
    layers = tuple(san.layers) or None
    t0 = time.perf_counter()
    cascade = evaluation.cascading_randomization(
        lambda v: _chunked(build(v), bs),
        variables,
        images[:n_san],
        target[:n_san],
        sanity_key,
        layers=layers,
        window=int(san.window),
    )
    timings["sanity"] = time.perf_counter() - t0
    for metric in ("spearman", "spearman_abs", "ssim"):
        arrays[f"sanity_{metric}"] = np.asarray(cascade[metric])
    if bool(san.random_logit):
        logit_keys = example_keys(logit_key, n)[:n_san]
        arrays["random_logit"] = timed(
            "random_logit",
            lambda: evaluation.random_logit(
                lambda x, t, k: _full_shape_jnp(single(x, t, k), x),
                images[:n_san],
                target[:n_san],
                logit_keys,
                fn=functools.partial(metrics["model"], variables),
                window=int(san.window),
                batch_size=bs,
            ),
        )

    if bool(san.efficient_mprt):
        # From the cascade's own maps: its last model is the fully randomised one.
        arrays["efficient_mprt"] = timed(
            "efficient_mprt",
            lambda: evaluation.entropy_rise(cascade["original_maps"], cascade["last_maps"]),
        )

    passed = evaluation.passes_sanity_check(cascade, threshold=float(san.threshold))
    summary = {
        "method": name,
        "deletion_auc": float(evaluation.auc(arrays["deletion"]).mean()),
        "insertion_auc": float(evaluation.auc(arrays["insertion"]).mean()),
        "morf_aopc": float(evaluation.aopc(arrays["deletion"]).mean()),
        "lerf_aopc": float(evaluation.aopc(arrays["lerf"]).mean()),
        # NaN for an image whose subsets all have the same relevance (a constant map).
        "faithfulness_correlation": _nanmean(arrays["faithfulness_correlation"]),
        "faithfulness_correlation_undefined": int(
            np.isnan(arrays["faithfulness_correlation"]).sum()
        ),
        "road_morf": float(arrays["road_morf"].mean()),
        "road_lerf": float(arrays["road_lerf"].mean()),
        # The area under the median curve of the kept images; None when none was kept.
        "sic_auc": areas["sic"],
        "aic_auc": areas["aic"],
        "pic_images": n_pic,
        "sic_images": int(arrays["sic_kept"].sum()),
        "aic_images": int(arrays["aic_kept"].sum()),
        "infidelity": float(arrays["infidelity"].mean()),
        "max_sensitivity": float(arrays["max_sensitivity"].mean()),
        "sparseness": float(arrays["sparseness"].mean()),
        "sanity_spearman": float(np.nanmean(np.abs(arrays["sanity_spearman"][-1]))),
        "sanity_spearman_abs": float(np.nanmean(np.abs(arrays["sanity_spearman_abs"][-1]))),
        "sanity_ssim": float(np.nanmean(arrays["sanity_ssim"][-1])),
        "sanity_pass": "pass" if passed else "fail",
        "random_logit_ssim": (
            _nanmean(arrays["random_logit"]) if "random_logit" in arrays else None
        ),
        "efficient_mprt": (
            _nanmean(arrays["efficient_mprt"]) if "efficient_mprt" in arrays else None
        ),
        "seconds_maps": timings["maps"],
        "seconds_metrics": sum(v for k, v in timings.items() if k != "maps"),
        "sensitivity_images": n_sens,
        "sanity_images": n_san,
        "sanity_layers": list(cascade["layers"]),
        "sanity_fully_randomized": bool(cascade["fully_randomized"]),
        "sanity_mean": {m: np.asarray(v).tolist() for m, v in cascade["mean"].items()},
        "seconds": timings,
    }
    return arrays, summary


_SHARED: dict[tuple[int, str], dict[str, Callable[..., jax.Array]]] = {}


def _shared_metrics(config: Any, model: Any) -> dict[str, Callable[..., jax.Array]]:
    """The metrics that only see the maps, jitted with the variables as an argument, so
    they compile once for all methods (the cache key is the model and the config)."""
    cache_key = (id(model), json.dumps(runs.plain(config), sort_keys=True))
    if cache_key in _SHARED:
        return _SHARED[cache_key]
    bs = int(config.batch_size)
    dele, ins, infd = config.deletion, config.insertion, config.infidelity

    def model_fn(variables):
        return lambda x: model.apply(variables, x)

    def curve(kind, settings, **extra):
        def run(variables, images, target, full):
            return kind(
                model_fn(variables),
                images,
                target,
                full,
                substrate=settings.substrate,
                step=settings.step or None,
                blur_sigma=float(settings.blur_sigma),
                batch_size=bs,
                **extra,
            )

        return jax.jit(run)

    def infidelity(variables, images, target, full, key):
        return evaluation.infidelity(
            model_fn(variables),
            images,
            target,
            full,
            key,
            stdev=float(infd.stdev),
            samples=int(infd.samples),
            normalize=bool(infd.normalize),
            batch_size=bs,
        )

    def road(order):
        def run(variables, images, target, full, key):
            return evaluation.road(
                model_fn(variables),
                images,
                target,
                full,
                key,
                order=order,
                fractions=tuple(float(f) for f in config.road.fractions),
                noise=float(config.road.noise),
                score="correct",
                batch_size=bs,
            )

        return jax.jit(run)

    def correlation(variables, images, target, full, key):
        settings = config.faithfulness_correlation
        return evaluation.faithfulness_correlation(
            model_fn(variables),
            images,
            target,
            full,
            key,
            subset_size=int(settings.subset_size) or None,
            samples=int(settings.samples),
            batch_size=bs,
        )

    fns = {
        "model": jax.jit(lambda variables, x: model.apply(variables, x)),
        "deletion": curve(evaluation.deletion_curve, dele),
        "road_morf": road("morf"),
        "road_lerf": road("lerf"),
        "faithfulness_correlation": jax.jit(correlation),
        "insertion": curve(evaluation.insertion_curve, ins),
        "lerf": curve(evaluation.pixel_flipping, dele, order="lerf"),
        "infidelity": jax.jit(infidelity),
        "sparseness": jax.jit(
            lambda variables, images, target, full: evaluation.sparseness(
                evaluation.reduce_channels(full, "sum")
            )
        ),
    }
    _SHARED.clear()  # one model at a time
    _SHARED[cache_key] = fns
    return fns


def _nanmean(values: np.ndarray) -> float | None:
    """The mean of the finite values; None (a '-' in the table) when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _full_shape_jnp(maps: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.broadcast_to(maps, x.shape) if maps.shape != x.shape else maps


# ------------------------------------------------------------------------ tables


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if key.startswith("seconds"):
            return f"{value:.1f}"
        return f"{value:.4g}"
    return str(value)


# What the max-sensitivity column measures for the methods that draw noise.
_SENSITIVITY_NOTE = (
    "Max-sensitivity explains every perturbed copy with the clean image's key: a "
    "stochastic method's noise is held fixed, so the column measures how its map moves "
    "with the image alone (Captum's sensitivity_max draws new noise per call, which adds "
    "the method's sampling variance), and the random control, whose map ignores the "
    "image, scores 0."
)


def _write_tables(out: Path, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> None:
    headers = ["method", *(header for _, header in COLUMNS)]
    table = [{"method": r["method"], **{header: r[key] for key, header in COLUMNS}} for r in rows]
    runs.write_json_atomic(
        out / "leaderboard.json",
        {**meta, "columns": headers, "rows": table, "details": list(rows)},
        sort_keys=False,
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=headers, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    runs.write_text_atomic(out / "leaderboard.csv", buffer.getvalue())
    lines = [
        f"# Attribution metrics: {meta['model']} on {meta['dataset']}/{meta['split']}",
        "",
        f"{meta['images']} images ({meta['selection']}), target: {meta['target']}, "
        f"checkpoint epoch {meta['checkpoint_epoch']}. Sanity: cascading randomisation of "
        f"{', '.join(meta['sanity_layers'])} on {meta['sanity_images']} images, "
        f"threshold {meta['sanity_threshold']}. {_SENSITIVITY_NOTE}",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    for r in rows:
        cells = [r["method"], *(_cell(key, r[key]) for key, _ in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    runs.write_text_atomic(out / "leaderboard.md", "\n".join(lines) + "\n")


# -------------------------------------------------------------------------- study


def run_evaluate_attributions(
    config: ml_collections.ConfigDict, workdir: str | Path
) -> EvaluateAttributionsResult:
    """Runs the study on the trained run in `workdir` (see the module docstring)."""
    workdir = Path(workdir)
    out = runs.subfolder(workdir, config.output, "output")
    model, variables, run_config, epoch = evaluate_lib.restore_model(
        workdir, checkpoint=config.checkpoint
    )
    split = loop_lib.load_split(run_config.data, config.split, "split")
    return evaluate_attributions(
        config,
        out,
        model,
        variables,
        split,
        epoch=epoch,
        model_name=run_config.model.name,
    )


def evaluate_attributions(
    config: Any,
    out: Path,
    model: Any,
    variables: Any,
    split: Any,
    *,
    epoch: int,
    model_name: str,
) -> EvaluateAttributionsResult:
    """The study on a restored model (Flax module -> logits, and its variables) and a
    loaded split; writes under `out` (see the module docstring)."""
    out = Path(out)
    _check(config, model, variables, split.images)
    _claim(config, out, epoch, model_name)
    fn = jax.jit(lambda x: model.apply(variables, x))
    indices = select_images(
        len(split.images), int(config.num_images), config.selection, int(config.selection_seed)
    )
    images = to_float(jnp.asarray(split.images[indices]))
    labels = np.asarray(split.labels[indices])
    logits = np.concatenate(
        [
            np.asarray(fn(images[s : s + int(config.batch_size)]))
            for s in range(0, len(indices), int(config.batch_size))
        ]
    )
    preds = logits.argmax(-1)
    target = jnp.asarray(preds if config.target == "predicted" else labels, jnp.int32)
    key = jax.random.key(int(config.seed))
    # One key for every method's performance information curves: the same random pixels,
    # so every method's curves start from the same blurred images.
    pic_key = jax.random.fold_in(key, _PIC_STREAM)
    # One for the random-logit test: every method compares the same pair of classes.
    logit_key = jax.random.fold_in(key, _RANDOM_LOGIT_STREAM)
    logging.info(
        "evaluating %d methods on %d %s/%s images of %s (epoch %d), accuracy %.3f",
        len(config.methods),
        len(indices),
        split.name,
        config.split,
        model_name,
        epoch,
        float((preds == labels).mean()),
    )

    cache = out / "methods"
    cache.mkdir(exist_ok=True)
    rows, arrays, computed = [], {}, []
    for i, name in enumerate(config.methods):
        json_path, npz_path = cache / f"{name}.json", cache / f"{name}.npz"
        cached = runs.read_json(json_path, rewritable=True) if npz_path.exists() else None
        if cached is not None:
            logging.info("[%d/%d] %s: cached in %s", i + 1, len(config.methods), name, cache)
            rows.append(cached)
            with np.load(npz_path) as saved:
                arrays[name] = dict(saved)
            continue
        logging.info("[%d/%d] %s: computing", i + 1, len(config.methods), name)
        start = time.perf_counter()
        method_key = jax.random.fold_in(key, i)
        result, summary = _evaluate_method(
            config, name, model, variables, images, target, method_key, pic_key, logit_key
        )
        runs.save_npz_atomic(npz_path, **result)
        runs.write_json_atomic(json_path, summary, sort_keys=False)  # written last: marks done
        rows.append(summary)
        arrays[name] = result
        computed.append(name)
        logging.info(
            "[%d/%d] %s: %.1f s (maps %.1f s); deletion AUC %.4f, insertion AUC %.4f, sanity %s",
            i + 1,
            len(config.methods),
            name,
            time.perf_counter() - start,
            summary["seconds_maps"],
            summary["deletion_auc"],
            summary["insertion_auc"],
            summary["sanity_pass"],
        )

    layers = rows[0]["sanity_layers"]
    meta = {
        "model": model_name,
        "dataset": split.name,
        "split": config.split,
        "checkpoint_epoch": epoch,
        "images": len(indices),
        "selection": config.selection,
        "target": config.target,
        "accuracy": float((preds == labels).mean()),
        "sanity_layers": layers,
        "sanity_images": rows[0]["sanity_images"],
        "sanity_threshold": float(config.sanity.threshold),
    }
    _write_tables(out, rows, meta)
    runs.save_npz_atomic(
        out / "curves.npz",
        indices=indices,
        layers=np.asarray(layers),
        road_fractions=np.asarray(config.road.fractions, np.float64),
        pic_x=arrays[config.methods[0]]["pic_x"],
        **{f"{kind}_{m}": arrays[m][f"{kind}_curve"] for m in config.methods for kind in _PIC},
        **{
            f"{kind}_{m}": arrays[m][kind]
            for m in config.methods
            for kind in ("deletion", "insertion", "lerf", "road_morf", "road_lerf")
        },
        **{
            f"sanity_{metric}_{m}": arrays[m][f"sanity_{metric}"]
            for m in config.methods
            for metric in ("spearman", "spearman_abs", "ssim")
        },
    )
    plotting.faithfulness_curves(
        {m: {k: arrays[m][k].mean(0) for k in ("deletion", "insertion")} for m in config.methods},
        out / "deletion_insertion.png",
    )
    plotting.faithfulness_curves(
        {
            m: {order: arrays[m][f"road_{order}"].mean(0) for order in ("morf", "lerf")}
            for m in config.methods
        },
        out / "road.png",
        panels=("morf", "lerf"),
        ylabel="target still the top class (ROAD)",
        fractions=tuple(config.road.fractions),
    )
    plotting.faithfulness_curves(
        {m: {kind.upper(): arrays[m][f"{kind}_curve"] for kind in _PIC} for m in config.methods},
        out / "pic.png",
        panels=("SIC", "AIC"),
        ylabel="normalised score, median over images",
        xlabel="normalised information (lossless WebP size)",
    )
    plotting.randomization_curves(
        layers,
        {
            m: {
                metric: np.nanmean(arrays[m][f"sanity_{metric}"], axis=1)
                for metric in ("spearman_abs", "ssim")
            }
            for m in config.methods
        },
        out / "randomization.png",
        threshold=float(config.sanity.threshold),
    )
    if config.agreement and len(config.methods) > 1:
        agreement = map_agreement(
            {m: arrays[m]["maps"] for m in config.methods}, float(config.topk_fraction)
        )
        agreement.pop("_per_sample")
        runs.write_json_atomic(out / "agreement.json", agreement, sort_keys=False)
        plotting.agreement_matrices(
            {
                "Pearson": np.array(agreement["pearson"]),
                "Spearman": np.array(agreement["spearman"]),
                f"top {100 * agreement['topk_fraction']:g}% overlap": np.array(
                    agreement["topk_overlap"]
                ),
            },
            agreement["methods"],
            out / "agreement.png",
        )
    _write_index(out, rows, meta)
    logging.info("leaderboard: %s", out / "leaderboard.md")
    return EvaluateAttributionsResult(out_dir=out, rows=rows, indices=indices, computed=computed)


def _write_index(out: Path, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> None:
    """`out/index.html`: the leaderboard as a table and the figures that exist."""
    arrows = {" (lower is better)": " ↓", " (higher is better)": " ↑", " (pass is better)": ""}
    header = ["method"]
    for _, h in COLUMNS:
        for words, arrow in arrows.items():
            h = h.replace(words, arrow)
        header.append(h)
    table = Table(header, [[r["method"], *(r[k] for k, _ in COLUMNS)] for r in rows])
    figures = [
        Image(name, caption)
        for name, caption in (
            ("deletion_insertion.png", "mean deletion and insertion curves"),
            ("road.png", "ROAD: target still on top as pixels are removed and imputed"),
            ("pic.png", "median softmax and accuracy information curves (SIC, AIC)"),
            ("randomization.png", "cascading model randomisation, per step"),
            ("agreement.png", "agreement between the methods' maps"),
        )
        if (out / name).is_file()
    ]
    files = ["leaderboard.md", "leaderboard.csv", "leaderboard.json", "agreement.json"]
    files += ["curves.npz", "config.json"]
    plotting.write_page(
        out / "index.html",
        title=f"Attribution metrics: {meta['model']} on {meta['dataset']}/{meta['split']}",
        intro=f"{meta['images']} images ({meta['selection']}), target: {meta['target']}, "
        f"checkpoint epoch {meta['checkpoint_epoch']}, accuracy {meta['accuracy']:.3f}. "
        f"Sanity: cascading randomisation of {', '.join(meta['sanity_layers'])} on "
        f"{meta['sanity_images']} images, threshold {meta['sanity_threshold']}.",
        sections=[Section("Leaderboard", ["↓ lower is better, ↑ higher is better."], table)]
        + ([Section("Figures", images=figures)] if figures else [])
        + [Section("Files", links=[Link(f) for f in files if (out / f).is_file()])],
    )
