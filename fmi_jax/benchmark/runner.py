"""fmi_jax against PyTorch libraries: same model, same weights, same images, same machine.

The reference for every method is Captum, except the CAMs Captum does not have
(Score-CAM, XGrad-CAM, HiResCAM, LayerCAM, Ablation-CAM): their reference is the
`grad-cam` package (pytorch-grad-cam).

Protocol (`run_benchmark`):
  1. Build the model (a trained workdir's best checkpoint, or a fresh init) and
     copy its weights into the equivalent PyTorch module.
  2. Agreement check before any timing: logits, and every deterministic method's
     maps, must agree across frameworks; noisy methods are checked through their
     noise-free limit (stdev 0), where they are deterministic. A fast wrong answer
     cannot win: a failed check stops the run unless `config.allow_disagreement`,
     and then the method's rows meet no goal (`goal.agreement_failed`) and
     `agreement_failures` says why. Everything runs in full float32 on both sides
     (`torch_side.full_float32`: on GPUs both frameworks default to TF32).
     The criterion is the relative L2 error ||A_jax - A_captum|| / ||A_captum||
     on dithered images (`dither`): uniform image regions give exactly tied
     activations inside a max-pool window, XLA and PyTorch round the convolution
     differently, so a tie on one side is a strict maximum on the other and the
     gradient goes to a different (equally valid) member of the window; the dither
     removes the ties, so the maps compared are uniquely defined and agree to
     float32 rounding.
     Some methods are checked differently:
     * xgrad_cam, hires_cam, layer_cam, ablation_cam: the package returns each map
       min-max scaled to [0, 1] (it scales at the layer's size, resizes, and scales
       again; scaling is affine and bilinear resizing keeps constants, so that is the
       resized map scaled once), so fmi_jax's maps get the same scaling before the
       relative L2 error. Its Ablation-CAM sets a channel to 0 only when the image's
       activation at the layer has a 0 (true after the ReLU these rows hook unless
       every unit is on), divides by the logit where fmi_jax divides by its magnitude
       (the same for a positive logit), and its XGrad-CAM adds 1e-7 to each channel's
       sum (docs/captum.md).
     * score_cam: by the Pearson correlation of each image's map with the package's
       (`config.min_pearson` for the worst image, `config.median_pearson` for the
       median), not by equality. pytorch_grad_cam min-max scales every map to [0, 1]
       (Pearson is blind to that) and resizes the channel masks with
       align_corners=True where fmi_jax uses half-pixel centres, which changes the
       masks and so the weights a little (a PyTorch re-implementation with
       align_corners=True masks reproduces the package's maps; the correlations
       measured are in docs/benchmark.md and docs/captum.md). The package's weights are a
       softmax over channels of its target's scores; its target here is log p_c, so
       the weights are p_c(x * H_k) normalised to sum 1, the paper's weights up to
       the factor its min-max scaling removes. Its default target, the raw logit, is
       a different weighting, recorded as
       `*_pearson_package_default_target` but not required.
     * feature_permutation: random (a permutation of the batch per feature group),
       so it is compared on the first TWO images, where the only permutation other
       than the identity (which neither side uses) is the swap and both sides are
       deterministic; it is timed on the benchmark batch.
     * infidelity and max_sensitivity (rows for fmi_jax.evaluation's metrics against
       `captum.metrics.infidelity` / `captum.metrics.sensitivity_max`): the metric
       values, one per image, are compared with Captum fed the very noise fmi_jax
       drew (a `perturb_func` that replays it; both lay the N x samples perturbed
       copies out example by example), so they must agree to float rounding (the
       relative L2 error of the N values against `config.tolerance`). Captum with its
       own noise is recorded beside it (`captum_mean_own_noise`, the same quantity
       in expectation). Timing uses each side's own noise generator. Infidelity is
       timed on fixed attributions (fmi_jax's `attribution` method, given to both
       sides), so only the metric is timed; max_sensitivity times the explainer it
       re-runs on every perturbed copy (fmi_jax's and Captum's own).
     Perturbation methods evaluate the same number of images per forward pass on
     both sides: fmi_jax's `batch_size`, Captum's `perturbations_per_eval` =
     batch_size // N, the package's ScoreCAM `batch_size` = min(batch_size, channels)
     (it loops over images).
  3. Timing, per method and batch size: the jitted JAX call is timed first
     once (compile + run: `compile_s` is that minus a steady run), then both
     sides alternate `repeats` times; the median is reported. Captum gets one
     warm-up call. Each timed sample is a run of back-to-back calls lasting at
     least `min_sample_s` (the per-call time is the run's time divided by its
     calls), and starts after a pause of `settle_s`, so that neither side is timed
     while the other's worker threads are still busy (on the 2-core CPU, timing
     single calls right after the other side's made millisecond rows swing by a
     factor of two between runs).
     Known bias, against fmi_jax: both frameworks share one process, and XLA:CPU
     runs slower once torch has run in it (docs/benchmark.md has the measurement),
     so the rows understate fmi_jax somewhat; one process per side would remove
     this.
     Threads: torch uses every core (`torch.set_num_threads`), as XLA:CPU does.
  4. Memory: XLA's planned device memory of every fmi_jax call (`xla_memory`), and at
     the largest batch, after the training row, each side's measured peak in a fresh
     process (`memory_probe`: two frameworks in one process reuse each other's pages,
     so an in-process peak says little). `memory_scaling`: IG's planned memory by steps and
     batch_size. `config.profile`: a JAX profiler trace per row and its top ops.
  5. The training row (fmi_jax/benchmark/training.py), with its own agreement check.
Outputs under workdir, which is claimed for the config first (`claim_workdir`, after
`validate_config`): benchmark.json (everything, with the machine) and benchmark.md
(the tables), rewritten atomically after every method; a re-run of the same config
keeps the earlier pair under previous/.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fmi_jax import attribution, data, models, runs
from fmi_jax.benchmark import flops
from fmi_jax.train import evaluate as evaluate_lib
from fmi_jax.train import loop as train_loop
from fmi_jax.train.input_pipeline import to_float
from fmi_jax.train.validation import require_at_least, validate_train_config

__all__ = [
    "FREE_FIELDS",
    "METHOD_REFERENCES",
    "METRICS",
    "METRIC_REFERENCES",
    "PACKAGE_SCALED",
    "REFERENCES",
    "PeakRSS",
    "claim_workdir",
    "dither",
    "goal",
    "jax_method_call",
    "reference_images",
    "jax_metric_call",
    "jax_leaves_gpu_room",
    "machine_description",
    "markdown",
    "memory_scaling",
    "peak_columns",
    "run_benchmark",
    "validate_config",
    "xla_memory",
]

# The PyTorch library each row is compared with (named in the table).
METHOD_REFERENCES = {
    "saliency": "Captum Saliency",
    "input_x_gradient": "Captum InputXGradient",
    "integrated_gradients": "Captum IntegratedGradients",
    "smoothgrad": "Captum NoiseTunnel(Saliency)",
    "ig_smoothgrad": "Captum NoiseTunnel(IntegratedGradients)",
    "deeplift": "Captum DeepLift",
    "gradient_shap": "Captum GradientShap",
    "grad_cam": "Captum LayerGradCam",
    "score_cam": "grad-cam ScoreCAM",
    "xgrad_cam": "grad-cam XGradCAM",
    "hires_cam": "grad-cam HiResCAM",
    "layer_cam": "grad-cam LayerCAM",
    "ablation_cam": "grad-cam AblationCAM",
    "occlusion": "Captum Occlusion",
    "feature_permutation": "Captum FeaturePermutation",
    "guided_backprop": "Captum GuidedBackprop",
    "deconvolution": "Captum Deconvolution",
    "guided_grad_cam": "Captum GuidedGradCam",
    "lrp": "Captum LRP",
    "deeplift_shap": "Captum DeepLiftShap",
    "feature_ablation": "Captum FeatureAblation",
    "shapley_value_sampling": "Captum ShapleyValueSampling",
    "kernel_shap": "Captum KernelShap",
    "lime": "Captum Lime",
    "layer_integrated_gradients": "Captum LayerIntegratedGradients",
    "layer_conductance": "Captum LayerConductance",
    "layer_gradient_x_activation": "Captum LayerGradientXActivation",
    "internal_influence": "Captum InternalInfluence",
    "neuron_gradient": "Captum NeuronGradient",
    "neuron_integrated_gradients": "Captum NeuronIntegratedGradients",
    "neuron_conductance": "Captum NeuronConductance",
    "layer_deeplift": "Captum LayerDeepLift",
    "layer_deeplift_shap": "Captum LayerDeepLiftShap",
    "layer_lrp": "Captum LayerLRP",
    "neuron_deeplift": "Captum NeuronDeepLift",
    "neuron_guided_backprop": "Captum NeuronGuidedBackprop",
    "neuron_deconvolution": "Captum NeuronDeconvolution",
    "neuron_feature_ablation": "Captum NeuronFeatureAblation",
}
# CAMs whose reference (the grad-cam package) returns each map min-max scaled to
# [0, 1] at the input's size: fmi_jax's maps are compared after the same scaling.
PACKAGE_SCALED = ("xgrad_cam", "hires_cam", "layer_cam", "ablation_cam")
# Rows that time an explanation metric (fmi_jax.evaluation) rather than a method.
METRIC_REFERENCES = {
    "infidelity": "Captum metrics.infidelity",
    "max_sensitivity": "Captum metrics.sensitivity_max",
}
METRICS = tuple(METRIC_REFERENCES)
REFERENCES = METHOD_REFERENCES | METRIC_REFERENCES

RESULTS = ("benchmark.json", "benchmark.md")
TRAIN_CONFIG_FILE = "train_config.json"
# Settings that add columns or decide whether a disagreement stops the run, but do not
# change a measured number: a re-run may change them.
FREE_FIELDS = ("profile", "memory_probe", "allow_disagreement")


def machine_description() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = jax.devices()[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_device": getattr(device, "device_kind", str(device)),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def _model(config) -> tuple[Any, dict[str, Any], str]:
    if config.get("model_workdir"):
        model, variables, _, epoch = evaluate_lib.restore_model(config.model_workdir)
        return model, variables, f"{config.model_workdir} (epoch {epoch})"
    model = models.get_model(config.model_name)
    shape = data.DATASETS[config.data_name].image_shape
    variables = models.init_variables(model, jax.random.key(0), jnp.zeros((1, *shape)))
    return model, variables, f"{config.model_name}, random init (seed 0)"


def _images(config, n: int) -> np.ndarray:
    ds = data.load(config.data_name, "test", download=False)
    images = ds.images[:n]
    if len(images) < n:
        images = np.concatenate([images] * (-(-n // len(images))))[:n]
    return np.asarray(to_float(jnp.asarray(images)))


def dither(images: np.ndarray, amount: float, seed: int = 0) -> np.ndarray:
    """`images` plus uniform noise in [0, amount) per pixel (fixed seed), for the
    agreement check.

    Exactly tied maxima in a max-pool window (a uniform background gives them by the
    hundred, above all in a freshly initialised model) leave the gradient undefined:
    each framework picks a member of the window, and as the two round convolutions
    differently they pick differently, so two correct implementations disagree. The
    dither separates tied values by far more than float32 rounding, so every compared
    map is uniquely defined. Non-negative noise keeps a zero background non-negative
    (where a negative pre-activation gives 0 after the ReLU, a tie of zeros has a zero
    gradient on every member and needs no dither)."""
    if not amount:
        return images
    noise = np.random.default_rng(seed).uniform(0.0, amount, images.shape)
    return (images + noise).astype(images.dtype)


def _seconds(call, *args, calls: int = 1) -> float:
    """Wall time per call of `calls` back-to-back calls (the caller blocks on JAX
    results inside `call`)."""
    start = time.perf_counter()
    for _ in range(calls):
        call(*args)
    return (time.perf_counter() - start) / calls


def _calls_per_sample(seconds_per_call: float, min_sample_s: float) -> int:
    return max(1, math.ceil(min_sample_s / max(seconds_per_call, 1e-9)))


def run_benchmark(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    train_config: ml_collections.ConfigDict | None = None,
) -> dict[str, Any]:
    """Runs the protocol in the module docstring; returns and writes the results.

    `train_config` is the training config that `config.train.config` names, loaded by
    the caller (`experiments/benchmark.py` resolves it in the repository's configs/);
    the training row needs it whenever `config.train.config` is set.
    """
    validate_config(config, train_config)
    try:
        import torch

        from fmi_jax.benchmark import torch_side
    except ImportError as e:
        raise ModuleNotFoundError(
            "the benchmark's PyTorch side needs torch and captum: `pip install torch==2.13.0 "
            "--index-url https://download.pytorch.org/whl/cpu && pip install -e '.[bench]'` "
            f"({e})"
        ) from e
    import captum

    methods = tuple(config.methods)
    device = torch_device(config.get("torch_device", "auto"))
    if device.type == "cuda" and jax.default_backend() == "gpu" and not jax_leaves_gpu_room():
        raise ValueError(
            "JAX holds 75% of the GPU's memory from its first call (preallocation), which "
            "starves the PyTorch side; set XLA_PYTHON_CLIENT_PREALLOCATE=false before jax "
            "is imported (experiments/benchmark.py does)"
        )
    workdir = Path(workdir)
    claim_workdir(config, workdir, train_config)
    with torch_side.full_float32():  # the same arithmetic on both sides
        torch.set_num_threads(os.cpu_count() or 1)
        model, variables, model_desc = _model(config)
        fn = jax.jit(lambda x: model.apply(variables, x))
        net = torch_side.from_flax(model, variables, data.DATASETS[config.data_name].image_shape)
        net = net.to(device)
        largest = max(config.batch_sizes)
        x_all = _images(config, largest)
        target_all = np.asarray(jnp.argmax(fn(x_all), -1)).astype(np.int64)
        nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(device)
        nhwc = lambda t: t.detach().cpu().numpy().transpose(0, 2, 3, 1)
        ttarget = lambda a: torch.from_numpy(np.asarray(a, np.int64)).to(device)

        results: dict[str, Any] = {
            "started": _now(),
            "machine": machine_description()
            | {
                "torch": torch.__version__,
                "captum": captum.__version__,
                "torch_threads": torch.get_num_threads(),
                "torch_device": str(device),
                "precision": torch_side.PRECISION,
            }
            | _package_versions(methods),
            "model": model_desc,
            "images": f"{config.data_name} test[:{largest}]",
            "agreement": {},
            "rows": [],
        }
        with torch.no_grad():
            logit_err = float(np.abs(np.asarray(fn(x_all)) - net(nchw(x_all)).cpu().numpy()).max())
        results["agreement"]["logits_max_abs_diff"] = logit_err
        logging.info("logits agree to %.2e", logit_err)

        checking = time.perf_counter()
        # 2. agreement, on the first batch size's images, dithered so that no max-pool
        # window holds an exact tie (see `dither`)
        n0 = min(config.batch_sizes)
        x_check = dither(x_all[: max(n0, 2)], config.get("dither", 0.0))
        failures: dict[str, str] = {}  # method -> why it disagrees
        for name in methods:
            opts = dict(config.options.get(name, {}))
            if name == "gradient_shap":
                results["agreement"][name] = "stochastic (random path points); not compared"
                continue
            if name in ("shapley_value_sampling", "kernel_shap", "lime"):
                results["agreement"][name] = "stochastic (random coalitions); not compared"
                continue
            if name in METRICS:
                record = _metric_agreement(
                    name, fn, opts, model, variables, net, x_check[:n0], target_all[:n0], nchw
                )
                results["agreement"][name] = record
                if not record["relative_l2_error"] <= config.tolerance:
                    failures[name] = (
                        f"relative L2 error {record['relative_l2_error']:.2e} > {config.tolerance}"
                    )
                continue
            spec = attribution.METHODS[name]
            # Noise tunnels are checked through their noise-free limit (stdev 0).
            noise_free = "stdev" in spec.options and spec.stochastic
            check_opts = dict(opts, stdev=0.0) if noise_free else opts
            n_check = 2 if name == "feature_permutation" else n0
            if len(x_all) < n_check:
                raise ValueError(f"{name}: the agreement check needs {n_check} images")
            x0, t0 = x_check[:n_check], target_all[:n_check]
            ours = np.asarray(
                jax_method_call(name, fn, check_opts, model, variables)(
                    jnp.asarray(x0), jnp.asarray(t0)
                )
            )
            theirs = nhwc(torch_side.captum_method(name, net, check_opts)(nchw(x0), ttarget(t0)))
            if name in PACKAGE_SCALED:
                ours = _minmax(ours).reshape(ours.shape)
            if name == "score_cam":
                package_default = nhwc(
                    torch_side.captum_method(name, net, dict(check_opts, target_kind="logit"))(
                        nchw(x0), ttarget(t0)
                    )
                )
                record = _pearson_agreement(ours, theirs, package_default)
                results["agreement"][name] = record
                if not (
                    record["min_pearson"] >= config.min_pearson
                    and record["median_pearson"] >= config.median_pearson
                ):
                    failures[name] = (
                        f"per-image Pearson min {record['min_pearson']:.4f} "
                        f"(need {config.min_pearson}), median {record['median_pearson']:.4f} "
                        f"(need {config.median_pearson})"
                    )
                continue
            scale = max(float(np.linalg.norm(theirs)), 1e-12)
            rel = float(np.linalg.norm(ours - theirs)) / scale
            results["agreement"][name] = {
                "relative_l2_error": rel,
                "relative_max_error": float(
                    np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-12)
                ),
                "pearson": float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]),
                "checked_with": (
                    "stdev=0"
                    if noise_free
                    else "each image's map min-max scaled to [0, 1], as the package returns it"
                    if name in PACKAGE_SCALED
                    else "2 images (the swap is the only non-identity permutation)"
                    if n_check == 2
                    else "as timed"
                ),
                "images": n_check,
            }
            if name in ("deeplift", "deeplift_shap"):
                references = (
                    reference_images(opts["references"], x0.shape[1:])
                    if name == "deeplift_shap"
                    else np.zeros((1, *x0.shape[1:]), np.float32)
                )
                completeness = _summation_gaps(fn, x0, t0, ours, theirs, references)
                results["agreement"][name].update(completeness)
                if rel > config.tolerance and completeness["captum_complete"] is False:
                    # Summation-to-delta is DeepLIFT's defining property; the side that
                    # breaks it is the wrong one, so this is not a disagreement of ours.
                    results["agreement"][name]["verdict"] = (
                        "Captum violates summation-to-delta (see docs/captum.md); fmi_jax holds it"
                    )
                    logging.warning(
                        "%s: Captum's attributions miss summation-to-delta by up to "
                        "%.1e of |f(x) - f(baseline)| (fmi_jax: %.1e); agreement not required",
                        name,
                        completeness["captum_relative_delta"],
                        completeness["fmi_jax_relative_delta"],
                    )
                    if not completeness["fmi_jax_complete"]:
                        failures[name] = "fmi_jax misses summation-to-delta"
                    continue
            if not rel <= config.tolerance:
                failures[name] = f"relative L2 error {rel:.2e} > {config.tolerance}"
        disagree = "; ".join(f"{name}: {why}" for name, why in failures.items())
        if failures and not config.allow_disagreement:
            raise AssertionError("fmi_jax and its PyTorch reference disagree: " + disagree)
        if failures:  # allowed, but every table and goal says so
            logging.warning("timing methods that disagree with their reference: %s", disagree)
            results["agreement_failures"] = failures

        # 3. timing, and how far each row is from the machine's matmul rate
        sync = torch_side.synchronizer(device)
        agreed = time.perf_counter()
        peak = flops.matmul_peak()
        logging.info(
            "agreement of %d method(s) checked in %.0f s; matmul peak %.0f GFLOP/s in %.0f s",
            len(methods),
            agreed - checking,
            peak / 1e9,
            time.perf_counter() - agreed,
        )
        results["machine"]["matmul_peak_flops"] = peak
        for name in methods:
            opts = dict(config.options.get(name, {}))
            for bs in config.batch_sizes:
                x, t = jnp.asarray(x_all[:bs]), jnp.asarray(target_all[:bs])
                xt, tt = nchw(x_all[:bs]), ttarget(target_all[:bs])
                if name in METRICS:
                    ours, theirs = _metric_calls(
                        name, fn, opts, model, variables, net, x_all[:bs], target_all[:bs], nchw
                    )
                else:
                    ours = jax_method_call(name, fn, opts, model, variables)
                    theirs = torch_side.captum_method(name, net, opts)
                row = {
                    "method": name,
                    "reference": REFERENCES[name],
                    "batch": bs,
                    **_time_pair(config, ours, (x, t), sync(theirs), (xt, tt)),
                    "options": {k: runs.plain(v) for k, v in opts.items()},
                }
                row.update(peak_columns(flops.count(ours, x, t), row["fmi_jax_s"], peak))
                if config.get("profile"):
                    row["profile"] = _profile(ours, (x, t), workdir / "profile" / f"{name}_b{bs}")
                row["goal"] = goal(row, results["machine"])
                if name in failures:  # a fast wrong answer does not meet a goal
                    row["goal"] = {**row["goal"], "met": False, "agreement_failed": True}
                results["rows"].append(row)
                logging.info(
                    "%s @%d: fmi_jax %.4f s, %s %.4f s, x%.2f",
                    name,
                    bs,
                    row["fmi_jax_s"],
                    REFERENCES[name],
                    row["pytorch_s"],
                    row["speedup"],
                )
            _write(workdir, results)  # after every method: a long run keeps what it measured

        if config.get("train") and config.train.get("config"):
            results.update(_training_rows(config, train_config, results, device))
            _write(workdir, results)

        # Memory last: a fresh process per side and method (seconds each), so that a run
        # stopped by a time limit has its speed rows first.
        if config.get("memory_probe"):
            for row in results["rows"]:
                if row["method"] in methods and row["batch"] == largest:
                    options = dict(config.options.get(row["method"], {}))
                    row["memory_probe"] = _probe_memory(config, row["method"], options, largest)
                    _write(workdir, results)

        if config.get("memory_scaling") and config.memory_scaling.get("steps"):
            results["memory_scaling"] = memory_scaling(
                fn, x_all, target_all, config.memory_scaling, workdir=workdir
            )
        _write(workdir, results)
        print(markdown(results))
        return results


def _training_rows(config, train_config, results: dict[str, Any], device) -> dict[str, Any]:
    """The training-epoch row (fmi_jax/benchmark/training.py): `train_config` trained on
    `data_name`'s training split (at most `config.train.limit` images)."""
    from fmi_jax.benchmark import training

    spec = config.train
    ds = data.load(config.data_name, "train", download=False)
    limit = spec.get("limit")
    images, labels = ds.images[:limit], ds.labels[:limit]
    out = training.training_benchmark(
        train_config,
        images,
        labels,
        repeats=int(spec.get("repeats", 2)),
        settle_s=float(config.get("settle_s", 0.0)),
        steps=spec.get("steps"),
        agreement_steps=int(spec.get("agreement_steps", 5)),
        allow_disagreement=bool(config.allow_disagreement),
        device=str(device),
    )
    for row in out["rows"]:
        count = row.pop("epoch_flops")
        row.update(peak_columns(count, row["fmi_jax_s"], results["machine"]["matmul_peak_flops"]))
        row["goal"] = goal(row, results["machine"])
        if row["goal"]["met"] and results["machine"].get("jax_backend") == "gpu":
            # and under a second per epoch on a GPU for the default CNN
            row["goal"]["met"] = row["fmi_jax_s"] < 1.0
        if not out["agreement"]["passed"]:  # timed although the steps disagree
            row["goal"] = {**row["goal"], "met": False, "agreement_failed": True}
            results.setdefault("agreement_failures", {})["train_epoch"] = (
                "the training steps disagree (agreement.train_epoch)"
            )
        logging.info(
            "train_epoch @%d: fmi_jax %.2f s, PyTorch %.2f s, x%.2f",
            row["batch"],
            row["fmi_jax_s"],
            row["pytorch_s"],
            row["speedup"],
        )
    return {
        "rows": results["rows"] + out["rows"],
        "agreement": results["agreement"] | {"train_epoch": out["agreement"]},
        "train_images": f"{config.data_name} train[:{len(images)}]",
    }


def validate_config(
    config: ml_collections.ConfigDict, train_config: ml_collections.ConfigDict | None = None
) -> None:
    """Raises ValueError naming the first field of a benchmark config (and of the
    training row's config) that cannot run, before anything is imported, loaded or
    written: the methods have references, batch sizes and repeats are positive, the
    model workdir holds checkpoints, the training row has its config."""
    methods = tuple(config.get("methods") or ())
    unknown = [m for m in methods if m not in REFERENCES]
    if not methods or unknown:
        raise ValueError(
            f"config.methods: {'no PyTorch reference for ' + repr(unknown) if unknown else 'empty'}"
            f"; choose from {', '.join(REFERENCES)}"
        )
    sizes = tuple(config.get("batch_sizes") or ())
    if not sizes or not all(
        isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in sizes
    ):
        raise ValueError(f"config.batch_sizes must be integers >= 1, got {sizes!r}")
    require_at_least(config, "repeats", 1)
    require_at_least(config, "min_sample_s", 0, integer=False)
    require_at_least(config, "settle_s", 0, integer=False)
    tolerance = config.get("tolerance")
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or tolerance <= 0:
        raise ValueError(f"config.tolerance must be a number > 0, got {tolerance!r}")
    if config.get("data_name") not in data.DATASETS:
        raise ValueError(
            f"config.data_name: unknown dataset {config.get('data_name')!r}; "
            f"choose one of {', '.join(data.DATASETS)}"
        )
    workdir = config.get("model_workdir")
    if workdir:
        if not (Path(workdir) / "checkpoints").is_dir():
            raise ValueError(
                f"config.model_workdir={workdir!r} holds no checkpoints; train it first "
                "(`make train`) or leave it unset to time a freshly initialised model"
            )
    elif config.get("model_name") not in models.available_models():
        raise ValueError(
            f"config.model_name: unknown model {config.get('model_name')!r}; "
            f"choose one of {', '.join(models.available_models())}"
        )
    if config.get("train") and config.train.get("config"):
        if train_config is None:
            raise ValueError(
                f"config.train.config={config.train.config!r} asks for the training row; pass "
                "its loaded config as train_config= (experiments.benchmark does), or set "
                "config.train.config='' to skip the row"
            )
        validate_train_config(train_config)
        require_at_least(config.train, "repeats", 1, where="config.train")
        require_at_least(config.train, "agreement_steps", 1, where="config.train")
        for field in ("steps", "limit"):
            require_at_least(config.train, field, 1, where="config.train", optional=True)


def claim_workdir(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    train_config: ml_collections.ConfigDict | None = None,
) -> Path | None:
    """Claims `workdir` for this benchmark config (fmi_jax/runs.py): `config.json`, and
    `train_config.json` for the training row's config.

    A folder that holds results of another config (any field but `FREE_FIELDS`) is
    refused with a `runs.RunConfigError` naming the changed fields. The same config
    measures again: the earlier benchmark.json and benchmark.md move to
    `previous/<when they were measured>/` first, so no measurement is ever overwritten.
    Returns that folder, or None when there was nothing to keep.
    """
    workdir = Path(workdir)
    has_results = any((workdir / name).exists() for name in RESULTS)
    common = dict(has_results=has_results, hint="use another --workdir")
    runs.check(workdir, config, free=FREE_FIELDS, what="another benchmark config", **common)
    if train_config is not None:
        runs.check(
            workdir,
            train_config,
            name=TRAIN_CONFIG_FILE,
            what="another training config",
            free=train_loop.FREE,
            **common,
        )
    runs.claim(workdir, config, free=FREE_FIELDS, **common)
    if train_config is not None:
        runs.claim(workdir, train_config, name=TRAIN_CONFIG_FILE, free=train_loop.FREE, **common)
    kept = None
    if has_results:
        earlier = runs.read_json(workdir / RESULTS[0], rewritable=True) or {}
        stamp = earlier.get("started") or _now((workdir / RESULTS[0]).stat().st_mtime)
        kept = workdir / "previous" / stamp.replace(":", "")
        kept.mkdir(parents=True, exist_ok=True)
        for name in RESULTS:
            if (workdir / name).exists():
                os.replace(workdir / name, kept / name)
        logging.info("the earlier results are kept in %s", kept)
    return kept


def _now(timestamp: float | None = None) -> str:
    when = (
        datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
        if timestamp is not None
        else datetime.datetime.now(datetime.timezone.utc)
    )
    return when.isoformat(timespec="seconds")


def _write(workdir: Path, results: dict[str, Any]) -> None:
    runs.write_json_atomic(workdir / RESULTS[0], results, sort_keys=False)
    runs.write_text_atomic(workdir / RESULTS[1], markdown(results) + "\n")


def jax_leaves_gpu_room() -> bool:
    """Whether this process's JAX leaves GPU memory to another framework: with
    preallocation off (memory taken as needed, and the device peak is the program's
    own) or capped at half the device by XLA_PYTHON_CLIENT_MEM_FRACTION."""
    if os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE") in ("false", "0"):  # as jaxlib reads it
        return True
    if os.environ.get("XLA_PYTHON_CLIENT_ALLOCATOR") == "platform":
        return True
    # XLA_CLIENT_MEM_FRACTION is the current name; jaxlib prefers it to the older one.
    fraction = os.environ.get(
        "XLA_CLIENT_MEM_FRACTION", os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "1")
    )
    try:
        return float(fraction) <= 0.5
    except ValueError:
        return False


def torch_device(name: str = "auto"):
    """The torch device of the PyTorch side: 'auto' is CUDA when torch sees a GPU (the
    comparison on a GPU machine is GPU against GPU), else the CPU."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"torch_device={name!r}, but this torch has no CUDA device "
            f"(torch {torch.__version__}); use 'cpu' or 'auto'"
        )
    return torch.device(name)


# --------------------------------------------------------------------------- timing, memory
def peak_columns(count: flops.Count, seconds: float, peak: float) -> dict[str, Any]:
    """A row's FLOPs per call (`flops.count`), its FLOP rate and that rate's fraction
    of the machine's `flops.matmul_peak`."""
    rate = count.flops / seconds
    return {
        "fmi_jax_flops": count.flops,
        "flops_counted_exactly": count.exact,
        "fmi_jax_flops_per_s": rate,
        "peak_fraction": rate / peak,
    }


def _time_pair(config, ours, our_args, theirs, their_args) -> dict[str, Any]:
    """Times the jitted fmi_jax call and its PyTorch counterpart as the module docstring
    says (compile apart, warm-up excluded, `repeats` alternating samples, medians), and
    adds XLA's memory plan for the fmi_jax call."""
    start = time.perf_counter()
    jax.block_until_ready(ours(*our_args))
    first = time.perf_counter() - start
    run_ours = lambda *a, f=ours: jax.block_until_ready(f(*a))
    min_sample_s = float(config.get("min_sample_s", 0.0))
    n_ours = _calls_per_sample(_seconds(run_ours, *our_args), min_sample_s)
    n_theirs = _calls_per_sample(_seconds(theirs, *their_args), min_sample_s)  # + warm-up
    jax_times, torch_times = [], []
    settle_s = float(config.get("settle_s", 0.0))
    for _ in range(config.repeats):  # alternate, so drift hits both sides alike
        time.sleep(settle_s)
        jax_times.append(_seconds(run_ours, *our_args, calls=n_ours))
        time.sleep(settle_s)
        torch_times.append(_seconds(theirs, *their_args, calls=n_theirs))
    j, p = statistics.median(jax_times), statistics.median(torch_times)
    batch = int(our_args[0].shape[0])
    return {
        "fmi_jax_s": j,
        "pytorch_s": p,
        "speedup": p / j,
        "fmi_jax_images_per_s": batch / j,
        "pytorch_images_per_s": batch / p,
        "fmi_jax_compile_s": max(first - j, 0.0),
        "calls_per_sample": {"fmi_jax": n_ours, "pytorch": n_theirs},
        **_memory_columns(ours, our_args),
    }


class PeakRSS:
    """Peak resident set size of this process while the block runs, sampled every
    `interval_s` by a thread (Linux /proc/self/statm; None elsewhere), and its increase
    over the RSS at entry (`increase`)."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.start = self.peak = None

    @staticmethod
    def current() -> int | None:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return None
        return pages * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakRSS:
        import threading

        self.start = self.peak = self.current()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(self.interval_s):
                now = self.current()
                if now is not None and self.peak is not None:
                    self.peak = max(self.peak, now)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        now = self.current()
        if now is not None and self.peak is not None:
            self.peak = max(self.peak, now)

    @property
    def increase(self) -> int | None:
        return None if self.start is None else self.peak - self.start


def xla_memory(call, *args) -> dict[str, int] | None:
    """The device memory XLA plans for `call(*args)`: arguments, outputs and temporaries
    of the compiled program (`Compiled.memory_analysis()`), on any backend. This is the
    program's peak (what must fit on the device); None where the backend does not say."""
    try:
        analysis = jax.jit(call).lower(*args).compile().memory_analysis()
    except Exception as e:  # noqa: BLE001 - some backends/plugins do not implement it
        logging.warning("no XLA memory analysis: %s", e)
        return None
    if analysis is None:
        return None
    out = {
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
        "temp_bytes": int(analysis.temp_size_in_bytes),
    }
    out["total_bytes"] = sum(out.values())
    return out


def _memory_columns(ours, our_args) -> dict[str, Any]:
    """fmi_jax's device memory for one call as XLA plans it (any backend). Measured
    peaks (host RSS, device) come from `memory_probe`, one fresh process per side."""
    return {"fmi_jax_xla_memory": xla_memory(ours, *our_args)}


def _probe_memory(config, name: str, options: dict[str, Any], batch: int) -> dict[str, Any]:
    from fmi_jax.benchmark import memory_probe

    base = {
        "config": {
            "model_workdir": config.get("model_workdir"),
            "model_name": config.model_name,
            "data_name": config.data_name,
            "torch_device": config.get("torch_device", "auto"),
        },
        "method": name,
        "options": {k: runs.plain(v) for k, v in options.items()},
        "batch": batch,
    }
    return {
        side: memory_probe.probe_in_subprocess(dict(base, side=side))
        for side in ("fmi_jax", "pytorch")
    }


def _profile(call, args, directory: Path, top: int = 8) -> dict[str, Any]:
    """A JAX profiler trace of one (compiled, warm) call, for TensorBoard / Perfetto,
    and its summary: the XLA ops that took the most time, each named by the JAX
    operation it came from (the HLO's `op_name` metadata, e.g.
    `transpose(jvp(SimpleCNN))/conv2/conv/dot_general`: the backward pass of conv2)."""
    directory.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(directory)):
        jax.block_until_ready(call(*args))
    hlo = jax.jit(call).lower(*args).compile().as_text()
    return {"trace": str(directory), "top_ops": profile_summary(directory, hlo, top=top)}


def profile_summary(directory: Path, hlo_text: str = "", top: int = 8) -> list[dict[str, Any]]:
    """The `top` XLA ops by total time in the newest trace under `directory`, with their
    share of all XLA op time and the JAX operation each came from. Times are summed
    over threads (`thread_ms`: an op split across XLA:CPU's worker threads counts each
    thread's part)."""
    import gzip
    import re

    traces = sorted(Path(directory).rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        return []
    events = json.loads(gzip.open(traces[-1]).read())["traceEvents"]
    origin = dict(re.findall(r"%(\S+) = .*?metadata=\{op_name=\"([^\"]+)\"", hlo_text))
    threads = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    totals: dict[str, float] = {}
    for e in events:
        if e.get("ph") != "X" or e["name"] not in origin:
            continue  # python frames, executor bookkeeping: not XLA ops
        if "XLA" not in threads.get((e["pid"], e["tid"]), "XLA"):
            continue
        totals[e["name"]] = totals.get(e["name"], 0.0) + float(e["dur"])
    overall = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [
        {
            "op": name,
            "thread_ms": us / 1e3,
            "share": us / overall,
            "from": re.sub(r"^(jit\([^)]*\)/)+", "", origin.get(name, "")),
        }
        for name, us in ranked
    ]


def memory_scaling(fn, x_all, target_all, spec, *, workdir: Path | None = None) -> dict[str, Any]:
    """Peak device memory of a many-step method as steps and `batch_size` vary.

    For every (steps, batch_size) in `spec.steps` x `spec.batch_sizes`: XLA's planned
    bytes for `spec.method` on `spec.images` images (compile only). Then the largest
    step count runs once at the smallest batch_size, timed, with the process's RSS
    increase measured, to show it runs in that memory. The claim under test: peak
    memory is set by batch_size, not by steps.
    """
    method = spec.get("method", "integrated_gradients")
    n = int(spec.get("images", 256))
    if len(x_all) < n:
        raise ValueError(f"memory_scaling needs {n} images; add {n} to batch_sizes")
    x, t = jnp.asarray(x_all[:n]), jnp.asarray(target_all[:n])
    rows = []
    for steps in spec.steps:
        for batch_size in spec.batch_sizes:
            explain = attribution.explainer(method, fn, steps=int(steps), batch_size=batch_size)
            call = jax.jit(lambda x, t, e=explain: e(x, t, jax.random.key(0)))
            memory = xla_memory(call, x, t)
            rows.append({"steps": int(steps), "batch_size": batch_size, **(memory or {})})
            logging.info("memory %s steps=%s batch_size=%s: %s", method, steps, batch_size, memory)
    out: dict[str, Any] = {"method": method, "images": n, "rows": rows}
    if spec.get("run", True):
        steps, batch_size = max(spec.steps), min(b for b in spec.batch_sizes if b)
        explain = attribution.explainer(method, fn, steps=int(steps), batch_size=batch_size)
        call = jax.jit(lambda x, t: explain(x, t, jax.random.key(0)))
        start = time.perf_counter()
        with PeakRSS() as rss:
            maps = jax.block_until_ready(call(x, t))
        seconds = time.perf_counter() - start
        stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
        out["run"] = {
            "steps": int(steps),
            "batch_size": batch_size,
            "seconds_with_compile": seconds,
            "rss_increase_bytes": rss.increase,
            "finite": bool(jnp.isfinite(maps).all()),
            "device_peak_so_far_bytes": (stats or {}).get("peak_bytes_in_use"),
        }
    return out


# --------------------------------------------------------------------------- goals
# The project's speed goals, by machine: on an H100/H200 GPU, 5x PyTorch + Captum for IG
# and SmoothGrad at batch 256 and 2x for everything else; on a CPU, parity.
GPU_GOALS = {"integrated_gradients": 5.0, "smoothgrad": 5.0}


def goal(row: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    """The speed-up a row must reach on this machine, and whether it did (a training
    epoch on a GPU: 3x, and also under a second for the default CNN, checked by the
    caller)."""
    if machine.get("jax_backend") == "gpu" and row["method"] == "train_epoch":
        target = 3.0
    elif machine.get("jax_backend") == "gpu":
        target = GPU_GOALS.get(row["method"], 2.0) if row["batch"] >= 256 else 2.0
    else:
        target = 1.0
    return {"target": target, "met": bool(row["speedup"] >= target)}


def _summation_gaps(
    fn, x, target, ours, theirs, references, tolerance: float = 1e-4
) -> dict[str, Any]:
    """Both sides' summation-to-delta gaps, |sum(A) - (f_t(x) - mean_m f_t(b_m))|, over
    the references `b_m` (one all-zero image for DeepLIFT's black baseline), relative to
    the largest |f_t(x) - mean f_t(b)|."""
    x = jnp.asarray(x)
    rows = jnp.arange(len(x))
    reference_logits = jnp.mean(fn(jnp.asarray(references)), axis=0)  # (classes,)
    change = np.asarray(fn(x)[rows, target] - reference_logits[jnp.asarray(target)])
    scale = max(float(np.abs(change).max()), 1e-12)
    gap = lambda maps: float(np.abs(maps.reshape(len(x), -1).sum(1) - change).max()) / scale
    ours, theirs = gap(np.asarray(ours)), gap(np.asarray(theirs))
    return {
        "fmi_jax_relative_delta": ours,
        "captum_relative_delta": theirs,
        "fmi_jax_complete": ours <= tolerance,
        "captum_complete": theirs <= tolerance,
    }


def jax_method_call(name: str, fn, options: dict[str, Any], model=None, variables=None):
    """The jitted `explain(x, target)` of fmi_jax; CAM methods also get the Flax module
    and its variables (they look inside the model). For the METRICS rows, the jitted
    metric: `infidelity(x, target, attributions)`, `max_sensitivity(x, target)`, each
    returning one value per image."""
    if name in METRICS:
        return jax_metric_call(name, fn, options, model, variables)
    spec = attribution.METHODS[name]
    model_args = (
        {"model": model, "variables": variables} if getattr(spec, "needs_model", False) else {}
    )
    key = jax.random.key(0)
    if "references" in options:  # deeplift_shap: the references depend on the image shape
        count, rest = options["references"], {k: v for k, v in options.items() if k != "references"}

        def with_references(x, t):
            baseline = reference_images(count, x.shape[1:])
            explain = attribution.explainer(name, fn, **model_args, baseline=baseline, **rest)
            return explain(x, t, key)

        return jax.jit(with_references)
    explain = attribution.explainer(name, fn, **model_args, **options)
    if spec.explains == "neuron":
        # These explain the neuron alone and take no target (Captum's ignore none).
        return jax.jit(lambda x, t: explain(x, None, key))
    return jax.jit(lambda x, t: explain(x, t, key))


def reference_images(count: int, shape: tuple[int, ...]) -> np.ndarray:
    """`count` reference inputs of one example's `shape` (NHWC), uniform in [0, 1) from
    a fixed seed: the baseline distribution both sides of the DeepLiftShap row use."""
    rng = np.random.default_rng(0)
    return rng.uniform(0.0, 1.0, (int(count), *shape)).astype(np.float32)


def _metric_explainer(options: dict[str, Any], key: str) -> tuple[str, dict[str, Any]]:
    """The fmi_jax explainer a metric row uses (`options[key]`, default saliency)."""
    name = options.get(key, "saliency")
    return name, dict(runs.plain(options.get(f"{key}_options", {})) or {})


def jax_metric_call(name: str, fn, options: dict[str, Any], model=None, variables=None):
    """The jitted fmi_jax metric of a METRICS row with the benchmark's options:
    `infidelity(x, target, attributions)` or `max_sensitivity(x, target)`."""
    from fmi_jax.evaluation import robustness

    key = jax.random.key(0)
    samples = int(options.get("samples", 10))
    batch_size = options.get("batch_size")
    if name == "infidelity":
        stdev = float(options.get("stdev", robustness.DEFAULT_INFIDELITY_STDEV))
        normalize = bool(options.get("normalize", False))
        return jax.jit(
            lambda x, t, a: robustness.infidelity(
                fn,
                x,
                t,
                a,
                key,
                stdev=stdev,
                samples=samples,
                normalize=normalize,
                batch_size=batch_size,
            )
        )
    if name == "max_sensitivity":
        method, method_opts = _metric_explainer(options, "explain")
        spec = attribution.METHODS[method]
        model_args = (
            {"model": model, "variables": variables} if getattr(spec, "needs_model", False) else {}
        )
        explain = attribution.explainer(method, fn, **model_args, **method_opts)
        radius = float(options.get("radius", robustness.DEFAULT_SENSITIVITY_RADIUS))
        norm_ord = options.get("norm_ord", "fro")
        return jax.jit(
            lambda x, t: robustness.max_sensitivity(
                explain,
                x,
                t,
                key,
                radius=radius,
                samples=samples,
                norm_ord=norm_ord,
                batch_size=batch_size,
            )
        )
    raise ValueError(f"unknown metric {name!r}; have {METRICS}")


def _metric_noise(name: str, options: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """The perturbations fmi_jax's metric draws with key(0), as Captum's perturb_func
    sees its batch: (N * samples, ...), example by example (row i * samples + s).
    infidelity: the noise I (Captum's `perturbations`); max_sensitivity: the perturbed
    inputs x + delta. Re-derived from the metrics' documented key scheme; if it drifted
    from theirs, the agreement check would fail rather than pass."""
    from fmi_jax.attribution.core import example_keys
    from fmi_jax.evaluation import robustness

    key = jax.random.key(0)
    samples = int(options.get("samples", 10))
    x = jnp.asarray(x, jnp.float32)
    keys = example_keys(key, x.shape[0])
    if name == "infidelity":
        stdev = float(options.get("stdev", robustness.DEFAULT_INFIDELITY_STDEV))
        draw = lambda k, xi: robustness.gaussian_perturbation(k, xi, stdev)[0]
    else:
        keys = jax.vmap(jax.random.split)(keys)[:, 0]
        radius = float(options.get("radius", robustness.DEFAULT_SENSITIVITY_RADIUS))
        draw = lambda k, xi: robustness.uniform_perturbation(k, xi, radius)
    per_example = lambda k, xi: jax.vmap(lambda s: draw(jax.random.fold_in(k, s), xi))(
        jnp.arange(samples, dtype=jnp.int32)
    )
    out = jax.vmap(per_example)(keys, x)
    return np.asarray(out.reshape(-1, *x.shape[1:]))


def _infidelity_attributions(fn, options, model, variables, x, t) -> np.ndarray:
    method, method_opts = _metric_explainer(options, "attribution")
    return np.asarray(jax_method_call(method, fn, method_opts, model, variables)(x, t))


def _metric_calls(name, fn, options, model, variables, net, x, t, nchw, replay=None):
    """(fmi_jax call(x, t), Captum call(x_nchw, t)) for a METRICS row on the images x;
    infidelity's attributions (fmi_jax's, the same for both) are bound in. `replay`:
    Captum uses these perturbations (see `_metric_noise`) instead of drawing its own."""
    from fmi_jax.benchmark import torch_side

    metric = jax_metric_call(name, fn, options, model, variables)
    theirs = torch_side.captum_metric(name, net, options, replay=replay)
    if name == "infidelity":
        a = _infidelity_attributions(fn, options, model, variables, jnp.asarray(x), jnp.asarray(t))
        a_jax, a_torch = jnp.asarray(a), nchw(a)
        return (
            lambda x, t: metric(x, t, a_jax),
            lambda x, t: theirs(x, t, a_torch),
        )
    return metric, theirs


def _metric_agreement(name, fn, options, model, variables, net, x, t, nchw) -> dict[str, Any]:
    """fmi_jax's metric values against Captum's on the same noise (replayed), and
    against Captum with its own noise (informational)."""
    import torch

    noise = _metric_noise(name, options, x)
    replay = nchw(noise)
    xj, tj = jnp.asarray(x), jnp.asarray(t)
    xt = nchw(x)
    tt = torch.from_numpy(np.asarray(t, np.int64)).to(xt.device)
    ours_call, replayed_call = _metric_calls(
        name, fn, options, model, variables, net, x, t, nchw, replay=replay
    )
    _, own_call = _metric_calls(name, fn, options, model, variables, net, x, t, nchw)
    ours = np.asarray(ours_call(xj, tj), np.float64)
    theirs = replayed_call(xt, tt).detach().cpu().numpy().astype(np.float64)
    own = own_call(xt, tt).detach().cpu().numpy().astype(np.float64)
    scale = max(float(np.linalg.norm(theirs)), 1e-30)
    return {
        "relative_l2_error": float(np.linalg.norm(ours - theirs)) / scale,
        "relative_max_error": float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30)),
        "pearson": float(np.corrcoef(ours, theirs)[0, 1]) if len(ours) > 1 else 1.0,
        "fmi_jax_mean": float(ours.mean()),
        "captum_mean_replayed_noise": float(theirs.mean()),
        "captum_mean_own_noise": float(own.mean()),
        "checked_with": "Captum fed fmi_jax's noise (replaying perturb_func)",
        "images": len(ours),
    }


def _minmax(maps: np.ndarray) -> np.ndarray:
    """Each image's map scaled to [0, 1] (as pytorch_grad_cam returns them)."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    return np.where(span > 0, (flat - low) / np.where(span > 0, span, 1.0), 0.0)


def _per_image_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each image's min-max scaled maps; two constant maps agree
    (1), a constant map against a varying one does not (0)."""
    a, b = _minmax(a), _minmax(b)
    out = []
    for u, v in zip(a, b):
        su, sv = u.std(), v.std()
        if su == 0 or sv == 0:
            out.append(1.0 if su == sv else 0.0)
        else:
            out.append(float(np.corrcoef(u, v)[0, 1]))
    return np.asarray(out)


def _pearson_agreement(ours, theirs, package_default) -> dict[str, Any]:
    r = _per_image_pearson(ours, theirs)
    r_default = _per_image_pearson(ours, package_default)
    return {
        "min_pearson": float(r.min()),
        "median_pearson": float(np.median(r)),
        "per_image_pearson": [round(float(v), 6) for v in r],
        "relative_l2_error_minmax": float(
            np.linalg.norm(_minmax(ours) - _minmax(theirs))
            / max(float(np.linalg.norm(_minmax(theirs))), 1e-12)
        ),
        "min_pearson_package_default_target": float(r_default.min()),
        "median_pearson_package_default_target": float(np.median(r_default)),
        "checked_with": "per-image Pearson of min-max scaled maps, package target log p_c",
        "images": len(r),
    }


def _package_versions(methods) -> dict[str, str]:
    from importlib import metadata

    versions = {}
    if any(m == "score_cam" or m in PACKAGE_SCALED for m in methods):
        try:
            versions["grad_cam"] = metadata.version("grad-cam")
        except metadata.PackageNotFoundError:
            versions["grad_cam"] = "unknown"
    return versions


def _peak_text(row: dict[str, Any]) -> str:
    if "peak_fraction" not in row:
        return "n/a"
    rate = row["fmi_jax_flops_per_s"] / 1e9
    return f"{rate:,.0f} ({row['peak_fraction']:.0%}){'' if row['flops_counted_exactly'] else ' *'}"


def _agreement_text(agree: Any) -> str:
    if not isinstance(agree, dict):
        return "n/a (random path points)" if "random path" in str(agree) else "n/a"
    if "update_relative_l2_error" in agree:  # the training row
        rounding = agree.get("update_rounding_relative_l2") or {}
        spread = max(rounding.values()) if rounding else None
        return (
            f"updates {agree['update_relative_l2_error']:.1e}"
            + (f" (float32 rounding alone: {spread:.1e})" if spread is not None else "")
            + f", losses {agree['loss_max_relative_diff']:.1e} (after "
            f"{agree.get('steps', '?')} steps from the same weights)"
        )
    if "min_pearson" in agree:
        return (
            f"Pearson min {agree['min_pearson']:.4f}, median {agree['median_pearson']:.4f} "
            f"(per image, {agree['images']} images)"
        )
    text = f"{agree['relative_l2_error']:.1e}"
    if "captum_mean_own_noise" in agree:
        text += (
            f" (same noise; means fmi_jax {agree['fmi_jax_mean']:.4g}, Captum "
            f"{agree['captum_mean_replayed_noise']:.4g}, Captum own noise "
            f"{agree['captum_mean_own_noise']:.4g})"
        )
    elif "verdict" in agree:
        text += f" (Captum misses summation-to-delta by {agree['captum_relative_delta']:.1e})"
    elif agree.get("images") == 2:
        text += " (2 images)"
    return text


def _option_text(value: Any) -> str:
    value = runs.plain(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_option_text(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value)
    return str(value)


def _mib(value: Any) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.1f}"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    grad_cam_pkg = f", grad-cam {m['grad_cam']}" if "grad_cam" in m else ""
    torch_device = m.get("torch_device", "cpu")
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores; jax {m['jax']} ({m['jax_backend']}, "
        f"{m.get('jax_device', '')}), torch {m['torch']} ({torch_device}, "
        f"{m['torch_threads']} threads), captum {m['captum']}{grad_cam_pkg}"
        f"{'; ' + m['precision'] if 'precision' in m else ''}. "
        f"Model: {results['model']}. Images: {results['images']}.",
        "",
        "| method | PyTorch reference | batch | fmi_jax (images/s) | PyTorch (images/s) "
        "| fmi_jax / PyTorch speed (goal) | fmi_jax GFLOP/s (of matmul peak) "
        "| fmi_jax compile (s) | agreement (rel. L2 unless noted) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        agree = _agreement_text(results["agreement"].get(r["method"]))
        speed = f"{r['speedup']:.2f}x"
        if "goal" in r:
            mark = "met" if r["goal"]["met"] else "**missed**"
            if r["goal"].get("agreement_failed"):
                mark = "**not met: disagrees with its reference**"
            speed += f" (>= {r['goal']['target']:g}x: {mark})"
        lines.append(
            f"| {r['method']} | {r.get('reference', 'Captum')} | {r['batch']} "
            f"| {r.get('fmi_jax_images_per_s', r['batch'] / r['fmi_jax_s']):,.0f} "
            f"| {r.get('pytorch_images_per_s', r['batch'] / r.get('pytorch_s', r.get('captum_s'))):,.0f} "
            f"| {speed} | {_peak_text(r)} | {r['fmi_jax_compile_s']:.2f} | {agree} |"
        )
    if "matmul_peak_flops" in m:
        lines += [
            "",
            f"FLOPs: 2 x the multiply-adds of every matmul and convolution of one call "
            f"(fmi_jax/benchmark/flops.py); matmul peak: the best float32 2048^3 matmul "
            f"on this machine, {m['matmul_peak_flops'] / 1e9:,.0f} GFLOP/s (* a `while` "
            "loop's body counted once: a lower bound).",
        ]
    if any("fmi_jax_xla_memory" in r for r in results["rows"]):
        lines += [
            "",
            "Memory of one call (MiB): fmi_jax's device memory as XLA plans it (arguments + "
            "outputs + temporaries), and, at the largest batch, each side measured in a "
            "fresh process (`memory_probe`): the peak increase of host RSS during its first "
            "call (compilation included) and the device's peak (GPU only).",
            "",
            "| method | batch | fmi_jax XLA plan | fmi_jax RSS increase | PyTorch RSS increase "
            "| fmi_jax device peak | PyTorch device peak |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in results["rows"]:
            if "fmi_jax_xla_memory" not in r:  # the training row
                continue
            plan = (r.get("fmi_jax_xla_memory") or {}).get("total_bytes")
            probe = r.get("memory_probe") or {}
            ours, theirs = probe.get("fmi_jax", {}), probe.get("pytorch", {})
            lines.append(
                f"| {r['method']} | {r['batch']} | {_mib(plan)} "
                f"| {_mib(ours.get('rss_increase_bytes'))} "
                f"| {_mib(theirs.get('rss_increase_bytes'))} "
                f"| {_mib(ours.get('device_peak_bytes'))} "
                f"| {_mib(theirs.get('device_peak_bytes'))} |"
            )
    scaling = results.get("memory_scaling")
    if scaling:
        lines += [
            "",
            f"Peak device memory of {scaling['method']} on {scaling['images']} images "
            "(XLA plan, MiB) by integration steps and batch_size (model evaluations per chunk):",
            "",
            "| steps | batch_size | XLA plan (MiB) | of which temporaries |",
            "|---|---|---|---|",
        ]
        for r in scaling["rows"]:
            lines.append(
                f"| {r['steps']} | {r['batch_size'] or 'all at once'} "
                f"| {_mib(r.get('total_bytes'))} | {_mib(r.get('temp_bytes'))} |"
            )
        run = scaling.get("run")
        if run:
            lines += [
                "",
                f"Run: {run['steps']} steps, batch_size {run['batch_size']}: "
                f"{run['seconds_with_compile']:.1f} s with compilation, process RSS increase "
                f"{_mib(run['rss_increase_bytes'])} MiB, finite: {run['finite']}.",
            ]
    profiled = [r for r in results["rows"] if (r.get("profile") or {}).get("top_ops")]
    if profiled:
        lines += ["", "Where fmi_jax's time goes (JAX profiler, share of XLA op time):", ""]
        for r in profiled:
            ops = "; ".join(
                f"{o['share']:.0%} {o['from'] or o['op']}" for o in r["profile"]["top_ops"][:4]
            )
            lines.append(f"- {r['method']} @{r['batch']}: {ops}")
    options = {}
    for r in results["rows"]:
        if r["options"] and r["method"] not in options:
            options[r["method"]] = ", ".join(
                f"{k}={_option_text(v)}" for k, v in sorted(r["options"].items())
            )
    if options:
        lines += ["", "Options (both sides): " + "; ".join(f"{k}: {v}" for k, v in options.items())]
    return "\n".join(lines)
