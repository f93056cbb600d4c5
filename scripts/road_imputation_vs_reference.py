r"""ROAD's noisy linear imputation: fmi_jax's conjugate-gradient solve against the
authors' sparse-LU code as pytorch-grad-cam ships it, on the same images and masks.

    .venv-bench/bin/python scripts/road_imputation_vs_reference.py

Needs the benchmark environment (torch, grad-cam); pytorch-grad-cam's package imports
torchvision and OpenCV, which the imputer does not use, so its file is loaded alone. For
each image size and removed fraction, the masks remove the most "relevant" pixels of a
smooth random map (holes that touch the borders), the imputation runs without noise on
both sides, and the script prints the largest difference and the milliseconds per image,
the median of 5 timings: the reference one image at a time (`NoisyLinearImputer`
assembles the system and calls scipy's `spsolve`), fmi_jax as one jitted call on the
whole batch (compiled before timing). docs/captum.md (item 17) reports what it measured.
Without torch or grad-cam it ends in one `error:` line and exit status 2.
"""

import importlib.util
import sys
import time
import types
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments import _cli  # noqa: E402
from fmi_jax.evaluation import noisy_linear_imputation  # noqa: E402

CASES = [  # (images, height, width, channels, removed fraction)
    (64, 28, 28, 1, 0.1),
    (64, 28, 28, 1, 0.5),
    (64, 28, 28, 1, 0.9),
    (16, 32, 32, 3, 0.5),
    (4, 224, 224, 3, 0.5),
]


def reference_imputer():
    """`NoisyLinearImputer` from pytorch-grad-cam's metrics/road.py. Its package and the
    perturbation-confidence helpers that road.py imports need torchvision and OpenCV,
    so empty stand-ins take their place in `sys.modules` while the file is loaded."""
    spec = importlib.util.find_spec("pytorch_grad_cam")
    if spec is None:
        raise ValueError(
            "pytorch-grad-cam is not installed: run this in the benchmark venv (.venv-bench, "
            "which `make bench` builds)"
        )
    path = Path(spec.submodule_search_locations[0]) / "metrics" / "road.py"
    helpers = types.ModuleType("pytorch_grad_cam.metrics.perturbation_confidence")
    for name in (
        "PerturbationConfidenceMetric",
        "AveragerAcrossThresholds",
        "RemoveMostRelevantFirst",
        "RemoveLeastRelevantFirst",
    ):
        setattr(helpers, name, object)
    stand_ins = {
        "pytorch_grad_cam": types.ModuleType("pytorch_grad_cam"),
        "pytorch_grad_cam.metrics": types.ModuleType("pytorch_grad_cam.metrics"),
        "pytorch_grad_cam.metrics.perturbation_confidence": helpers,
    }
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        namespace: dict = {}
        exec(compile(path.read_text(), str(path), "exec"), namespace)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return namespace["NoisyLinearImputer"](noise=0.0)


def masks(rng, n, h, w, fraction):
    field = rng.normal(size=(n, h, w))
    for axis in (1, 2):  # smooth it a little: contiguous holes
        field = field + np.roll(field, 1, axis) + np.roll(field, -1, axis)
    flat = field.reshape(n, -1)
    count = int(fraction * h * w)
    removed = np.zeros_like(flat, bool)
    np.put_along_axis(removed, np.argsort(-flat, axis=1)[:, :count], True, axis=1)
    return removed.reshape(n, h, w)


def main():
    try:
        import torch
    except ImportError as error:
        raise ValueError(
            f"{error}: run this in the benchmark venv (.venv-bench, which `make bench` builds)"
        ) from None
    reference = reference_imputer()
    impute = jax.jit(lambda x, m: noisy_linear_imputation(x, m, noise=0.0))
    rng = np.random.default_rng(0)
    print(
        "| images | size | removed | max abs difference | reference ms/image | fmi_jax ms/image |"
    )
    print("|---|---|---|---|---|---|")
    for n, h, w, c, fraction in CASES:
        x = rng.uniform(size=(n, h, w, c)).astype(np.float32)
        removed = masks(rng, n, h, w, fraction)

        def run_reference(x=x, removed=removed):
            return np.stack(
                [
                    # The reference takes (C, H, W) and a mask with 1 = keep.
                    reference(torch.from_numpy(xi.transpose(2, 0, 1)), torch.from_numpy(~mi))
                    .numpy()
                    .transpose(1, 2, 0)
                    for xi, mi in zip(x, removed)
                ]
            )

        def run_ours(x=x, removed=removed):
            return np.asarray(jax.block_until_ready(impute(x, removed)))

        run_ours()  # compile
        expected, reference_ms = _timed(run_reference, n)
        got, ours_ms = _timed(run_ours, n)
        difference = np.abs(got - expected).max()
        print(
            f"| {n} | {h} x {w} x {c} | {fraction:.0%} | {difference:.1e} | "
            f"{reference_ms:.3g} | {ours_ms:.3g} |"
        )


def _timed(run, images, repeats=5):
    """The result of `run()` and the median milliseconds per image over `repeats`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return result, 1000 * float(np.median(times)) / images


if __name__ == "__main__":
    _cli.run(main)
