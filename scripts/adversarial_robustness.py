r"""Adversarial robustness of a trained CNN, and which attribution method names the
pixels whose removal changes its prediction soonest.

    python scripts/adversarial_robustness.py --workdir=runs/cnn_fmnist --out=runs/adversarial

On the first ``--num_test`` test images (in [0, 1], attacks clipped to [0, 1], labels as
targets) it measures the accuracy under

* FGSM and 20-step L-infinity PGD (step ``epsilon / 4``, random start) for ``epsilon`` in
  ``--epsilons``;
* 20-step L2 PGD (step ``radius / 4``, random start) for ``radius`` in ``--radii``;

and, on the first ``--num_search`` of them, each image's smallest L-infinity PGD radius
that changes its predicted class (``min_perturbation``, bisection over ``--epsilons``'s
range in steps of 0.0025). Then, for every method in ``--methods`` (and a random map as
the baseline), the smallest number ``k`` of its most-attributed pixels that, set to 0
(the images' background), change the predicted class (``top_k_removal``, ``k`` = 0, 4,
..., 784, every value tried): fewer is more faithful. The methods explain the predicted
class; Grad-CAM's map (layer ``conv3``) is upsampled to the image.

Writes ``results.json`` and ``adversarial.png`` (the accuracy curves, the cumulative
share of images changed against ``k`` per method, and four images with their PGD
adversarials) under --out, which must be new or empty; docs/results.md reports what it
measured. Needs a trained run (``make train``) and Fashion-MNIST; without them, one
``error:`` line and exit status 2.
"""

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
from fmi_jax import attribution, evaluation, runs  # noqa: E402
from fmi_jax.train import evaluate as evaluate_lib  # noqa: E402
from fmi_jax.train import loop as loop_lib  # noqa: E402
from fmi_jax.train.input_pipeline import to_float  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/cnn_fmnist", "A trained run of a SimpleCNN.")
_OUT = flags.DEFINE_string("out", "runs/adversarial", "Output folder (new or empty).")
_NUM_TEST = flags.DEFINE_integer("num_test", 1000, "First test images to attack.")
_NUM_SEARCH = flags.DEFINE_integer("num_search", 200, "First test images for the searches.")
_EPSILONS = flags.DEFINE_list(
    "epsilons", ["0", "0.01", "0.02", "0.03", "0.05", "0.1"], "L-infinity radii."
)
_RADII = flags.DEFINE_list("radii", ["0", "0.25", "0.5", "1", "1.5", "2"], "L2 radii.")
_METHODS = flags.DEFINE_list(
    "methods",
    ["saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "grad_cam"],
    "Attribution methods compared by top-k removal.",
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 250, "Images per forward/backward pass.")
_SEED = flags.DEFINE_integer("seed", 0, "Random starts, SmoothGrad's noise, the random map.")
STEPS = 20


def _floats(values, name):
    try:
        out = [float(v) for v in values]
    except ValueError:
        raise ValueError(f"--{name} must be numbers, got {values}") from None
    if not out or min(out) < 0:
        raise ValueError(f"--{name} must be numbers >= 0, got {values}")
    return out


def main():
    out = Path(_OUT.value)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: pass another --out (nothing is overwritten)")
    epsilons, radii = _floats(_EPSILONS.value, "epsilons"), _floats(_RADII.value, "radii")
    if len(epsilons) < 2 or len(radii) < 2 or max(epsilons) < 0.0025:
        raise ValueError(
            "--epsilons and --radii need two values or more each, and --epsilons one of "
            "0.0025 or more (the radius search's first step)"
        )
    for name in _METHODS.value:
        if name not in attribution.METHODS:
            raise ValueError(
                f"unknown method {name!r} in --methods; available: "
                f"{', '.join(attribution.available_methods())}"
            )
    workdir = Path(_WORKDIR.value)
    model, variables, run_config, _ = evaluate_lib.restore_model(workdir)
    test = loop_lib.load_data(run_config.data)["test"]
    x = np.asarray(to_float(jnp.asarray(test.images[: _NUM_TEST.value])))
    labels = np.asarray(test.labels[: _NUM_TEST.value], np.int32)
    handle = attribution.flax_model(model, variables)
    key = jax.random.key(_SEED.value)
    batch = _BATCH_SIZE.value
    apply = jax.jit(handle)

    def accuracy(images):
        return float(np.mean(np.argmax(np.asarray(apply(images)), 1) == labels[: len(images)]))

    # Robust accuracy: one compiled program per attack, the radius traced.
    attacks = {
        "FGSM": jax.jit(
            lambda e: evaluation.fgsm(handle, x, labels, epsilon=e, bounds=(0, 1), batch_size=batch)
        ),
        "PGD Linf": jax.jit(
            lambda e: evaluation.pgd(
                handle,
                x,
                labels,
                radius=e,
                step_size=e / 4,
                steps=STEPS,
                random_start=True,
                key=key,
                bounds=(0, 1),
                batch_size=batch,
            )
        ),
        "PGD L2": jax.jit(
            lambda r: evaluation.pgd(
                handle,
                x,
                labels,
                radius=r,
                step_size=r / 4,
                steps=STEPS,
                norm="l2",
                random_start=True,
                key=key,
                bounds=(0, 1),
                batch_size=batch,
            )
        ),
    }
    curves, seconds, examples = {}, {}, {}
    for name, attack in attacks.items():
        grid = radii if name == "PGD L2" else epsilons
        start = time.perf_counter()
        adversarial = [np.asarray(attack(jnp.float32(e))) for e in grid]
        seconds[name] = time.perf_counter() - start
        curves[name] = {"radius": grid, "accuracy": [accuracy(a) for a in adversarial]}
        examples[name] = (grid[-2], adversarial[-2][:4])
        print(f"{name}: accuracy {curves[name]['accuracy']} ({seconds[name]:.0f} s)", flush=True)

    n = _NUM_SEARCH.value
    xs = x[:n]
    predicted = np.argmax(np.asarray(apply(xs)), 1).astype(np.int32)
    levels = np.arange(0.0025, max(epsilons) + 1e-9, 0.0025)
    start = time.perf_counter()
    smallest = jax.jit(
        lambda images: evaluation.min_perturbation(
            handle,
            images,
            predicted,
            params=levels,
            mode="binary",
            batch_size=batch,
            perturb=lambda xi, e, _, t: evaluation.pgd(
                handle, xi[None], t, radius=e, step_size=e / 4, steps=STEPS, bounds=(0, 1)
            )[0],
            aux=jnp.asarray(predicted),
        )
    )(xs)
    seconds["min PGD radius"] = time.perf_counter() - start
    radius = np.asarray(smallest.param)
    print(f"smallest PGD radius: median {np.nanmedian(radius):.4f}", flush=True)

    # The smallest number of most-attributed pixels whose removal changes the prediction.
    options = {
        "saliency": {"abs": True},
        "smoothgrad": {"samples": 50},
        "grad_cam": {"layer": "conv3"},
    }
    ks = np.arange(0, xs[0].size + 1, 4)
    search = jax.jit(
        lambda images, maps: evaluation.min_perturbation(
            handle,
            images,
            predicted,
            perturb=evaluation.top_k_removal(),
            params=ks,
            aux=maps,
            batch_size=4 * batch,
        )
    )
    removal = {}
    for name in [*_METHODS.value, "random"]:
        start = time.perf_counter()
        if name == "random":
            maps = np.asarray(jax.random.uniform(jax.random.fold_in(key, 1), xs.shape))
        else:
            explain = attribution.explainer(name, handle, **options.get(name, {}))
            maps = np.asarray(explain(xs, predicted, jax.random.fold_in(key, 2)))
            if maps.ndim == 3:  # (N, H, W) CAMs remove whole pixels
                maps = maps[..., None]
        found = search(xs, maps)
        k = np.where(np.asarray(found.index) >= 0, np.asarray(found.param), np.nan)
        removal[name] = {
            "k": [None if np.isnan(v) else int(v) for v in k],
            "median_k": float(np.nanmedian(k)),
            "changed": float(np.mean(~np.isnan(k))),
            "seconds": time.perf_counter() - start,
        }
        print(
            f"{name}: median k {removal[name]['median_k']:.0f}, changed "
            f"{removal[name]['changed']:.2f} ({removal[name]['seconds']:.0f} s)",
            flush=True,
        )

    out.mkdir(parents=True, exist_ok=True)
    results = {
        "workdir": str(workdir),
        "num_test": len(x),
        "num_search": n,
        "clean_accuracy": accuracy(x),
        "steps": STEPS,
        "curves": curves,
        "min_pgd_radius": {
            "median": float(np.nanmedian(radius)),
            "quartiles": [float(q) for q in np.nanpercentile(radius, [25, 75])],
            "changed": float(np.mean(~np.isnan(radius))),
        },
        "top_k_removal": removal,
        "seconds": seconds,
        "device": jax.devices()[0].device_kind,
    }
    runs.write_json_atomic(out / "results.json", results)
    names = test.class_names
    _figure(out / "adversarial.png", curves, removal, ks, x[:4], examples, labels[:4], apply, names)
    print(f"wrote {out / 'results.json'} and {out / 'adversarial.png'}")


def _figure(path, curves, removal, ks, images, examples, labels, apply, names):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5.8))
    grid = fig.add_gridspec(2, 8, height_ratios=[1.5, 1])
    ax = fig.add_subplot(grid[0, :3])
    for name in ("FGSM", "PGD Linf"):
        ax.plot(curves[name]["radius"], curves[name]["accuracy"], marker="o", label=name)
    ax.set(xlabel="L-infinity radius", ylabel="test accuracy", title="Accuracy under attack")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(grid[0, 3:5])
    ax.plot(curves["PGD L2"]["radius"], curves["PGD L2"]["accuracy"], marker="o", color="C2")
    ax.set(xlabel="L2 radius", title="PGD L2")
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(grid[0, 5:])
    for i, (name, result) in enumerate(removal.items()):
        k = np.array([np.inf if v is None else v for v in result["k"]])
        share = [(k <= v).mean() for v in ks]
        ax.plot(
            ks,
            share,
            label=f"{name} (median {result['median_k']:.0f})",
            linestyle="--" if name == "random" else "-",
            color=f"C{i}",
        )
    ax.set(
        xlabel="most-attributed pixels removed (k)",
        ylabel="share of predictions changed",
        title="Top-k removal",
        xscale="symlog",
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    radius, adversarial = examples["PGD Linf"]
    shown = (("clean", images), (f"PGD Linf {radius:g}", adversarial))
    for j in range(4):
        for col, (name, batch) in enumerate(shown):
            ax = fig.add_subplot(grid[1, 2 * j + col])
            pred = int(np.argmax(np.asarray(apply(batch[j : j + 1]))[0]))
            ax.imshow(batch[j, ..., 0], cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{name}: {names[pred]}\n(label {names[labels[j]]})", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    _cli.run(main)
