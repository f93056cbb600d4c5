r"""Finding mislabelled training images by TracIn self-influence (Pruthi et al. 2020, sec. 4.1).

    python scripts/tracin_mislabelled.py --out=runs/tracin_mislabelled

A planted answer: ``--num_train`` Fashion-MNIST training images (a seeded draw) get
``--noise`` of their labels flipped to another class, and are written as IDX files
(the original format) with 2,000 of the real test images; the Fashion-MNIST CNN
(``configs/cnn_fmnist.py``, 500 of the images held out for validation) trains on them
for ``--epochs`` epochs, keeping every checkpoint. Each training image's TracIn
self-influence, ``sum_c eta_c |grad l(theta_c, z)|^2`` over the checkpoints, with
``eta_c`` the mean learning rate of the epoch that ends at checkpoint c, ranks the
images, and the table says which fraction of the flipped labels is found by
inspecting the top 5-30% of the ranking. Against it: the influence function's
self-influence at the last checkpoint, ``grad l(z) . (H + lambda I)^-1 grad l(z)``
(Koh & Liang 2017, sec. 5.4), over the last layer with its exact Hessian and over
every parameter with the top ``--rank`` eigenpairs of ``--iterations`` Arnoldi steps
(both Hessians over the first ``--hessian_images`` training images, damped by
``--damping``); the loss at the last checkpoint; and random inspection (the fraction
itself). The loss is the training loss (cross-entropy with the config's label
smoothing) of one un-augmented image in inference mode, over the parameters
(batch-norm statistics excluded). Writes ``results.json`` and ``mislabelled.png``
(the detection curves, and the 14 images of highest TracIn self-influence with their
given and original labels) under --out; docs/results.md reports what it measured.
Needs Fashion-MNIST (``make data``); without it, one ``error:`` line and exit status 2.
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

import configs  # noqa: E402
from experiments import _cli  # noqa: E402
from fmi_jax import attribution, data, runs, train  # noqa: E402
from fmi_jax.data import idx  # noqa: E402
from fmi_jax.train import evaluate as evaluate_lib  # noqa: E402
from fmi_jax.train import loop as loop_lib  # noqa: E402
from fmi_jax.train import optim, tasks  # noqa: E402
from fmi_jax.train.input_pipeline import to_float  # noqa: E402

_OUT = flags.DEFINE_string("out", "runs/tracin_mislabelled", "Output folder (made fresh).")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 5000, "Training images drawn.")
_NOISE = flags.DEFINE_float("noise", 0.1, "Fraction of their labels flipped.")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Training epochs (every checkpoint is kept).")
_SEED = flags.DEFINE_integer("seed", 0, "Draw of the images and of the flips.")
_HESSIAN_IMAGES = flags.DEFINE_integer(
    "hessian_images", 1000, "Training images the influence functions' Hessians sum over."
)
_RANK = flags.DEFINE_integer("rank", 50, "Eigenpairs of the whole model's Hessian kept.")
_ITERATIONS = flags.DEFINE_integer("iterations", 100, "Arnoldi steps for the whole model.")
_DAMPING = flags.DEFINE_float("damping", 1e-3, "Added to every Hessian eigenvalue.")
FRACTIONS = (0.05, 0.1, 0.2, 0.3)


def main():
    out = Path(_OUT.value)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: pass another --out (nothing is overwritten)")
    rng = np.random.default_rng(_SEED.value)
    source = data.load("fashion_mnist", "train")
    test = data.load("fashion_mnist", "test")
    chosen = rng.choice(len(source.labels), _NUM_TRAIN.value, replace=False)
    images, clean = source.images[chosen], source.labels[chosen].astype(np.int64)
    flipped = rng.random(len(chosen)) < _NOISE.value
    labels = clean.copy()
    labels[flipped] = (clean[flipped] + rng.integers(1, 10, flipped.sum())) % 10
    folder = out / "data" / "fashion_mnist"
    folder.mkdir(parents=True)
    idx.write_idx(folder / "train-images-idx3-ubyte.gz", images[..., 0])
    idx.write_idx(folder / "train-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    idx.write_idx(folder / "t10k-images-idx3-ubyte.gz", test.images[:2000, ..., 0])
    idx.write_idx(folder / "t10k-labels-idx1-ubyte.gz", test.labels[:2000].astype(np.uint8))

    config = configs.load("cnn_fmnist")
    config.data.data_dir = str(out / "data")
    config.data.validation_size = 500
    config.num_epochs = _EPOCHS.value
    config.checkpoint_keep = _EPOCHS.value
    config.progress = False
    start = time.perf_counter()
    train.train_and_evaluate(config, out / "run")
    train_seconds = time.perf_counter() - start

    # The training split as the run saw it (the validation images carved out), matched
    # back to the draw by image and given label.
    split = loop_lib.load_data(config.data)["train"]
    key = {(images[i].tobytes(), int(labels[i])): i for i in range(len(chosen))}
    drawn = np.array(
        [key[(split.images[j].tobytes(), int(split.labels[j]))] for j in range(len(split.labels))]
    )
    is_flipped = flipped[drawn]
    epochs = sorted(
        int(p.name) for p in (out / "run" / "checkpoints").iterdir() if p.name.isdigit()
    )
    restored = [evaluate_lib.restore_model(out / "run", checkpoint=e) for e in epochs]
    model = restored[0][0]
    checkpoints = [r[1] for r in restored]
    steps_per_epoch = len(split.labels) // int(config.batch_size)
    schedule = optim.make_schedule(config, steps_per_epoch)
    # Each checkpoint stands for the epoch that ends there: its mean learning rate.
    rates = [
        float(np.mean([schedule(s) for s in range((e - 1) * steps_per_epoch, e * steps_per_epoch)]))
        for e in epochs
    ]

    def loss(variables, example):
        x, label = example
        logits = model.apply(variables, x[None], train=False)
        return tasks.cross_entropy(logits, label[None], config.label_smoothing)[0]

    x = np.asarray(to_float(jnp.asarray(split.images)))
    y = np.asarray(split.labels, np.int32)
    start = time.perf_counter()
    influence = np.asarray(
        jax.block_until_ready(
            attribution.self_influence(
                loss,
                checkpoints,
                (x, y),
                learning_rates=rates,
                select=lambda path: path.startswith("params/"),
                batch_size=250,
            )
        )
    )
    influence_seconds = time.perf_counter() - start
    last_loss = np.asarray(jax.vmap(lambda x, y: loss(checkpoints[-1], (x, y)))(x, y))
    hessian_data = (x[: _HESSIAN_IMAGES.value], y[: _HESSIAN_IMAGES.value])
    functions, function_seconds = {}, {}
    for name, select, options in (
        ("last_layer", lambda path: path.startswith("params/head/"), dict(solver="exact")),
        (
            "arnoldi",
            lambda path: path.startswith("params/"),
            dict(
                solver="arnoldi",
                rank=_RANK.value,
                iterations=_ITERATIONS.value,
                key=jax.random.key(_SEED.value),
            ),
        ),
    ):
        start = time.perf_counter()
        eigen = attribution.hessian_eigen(
            loss, checkpoints[-1], hessian_data, select=select, batch_size=250, **options
        )
        functions[name] = np.asarray(
            jax.block_until_ready(
                attribution.influence_function_self(
                    loss,
                    checkpoints[-1],
                    (x, y),
                    eigen,
                    damping=_DAMPING.value,
                    min_eigenvalue=0.0,  # every pair with mu + damping > 0 (docs/results.md)
                    batch_size=250,
                )
            )
        )
        function_seconds[name] = time.perf_counter() - start

    def found(scores):
        order = np.argsort(-scores, kind="stable")
        hits = np.cumsum(is_flipped[order]) / is_flipped.sum()
        return hits, {f: float(hits[int(round(f * len(order))) - 1]) for f in FRACTIONS}

    influence_curve, influence_found = found(influence)
    loss_curve, loss_found = found(last_loss)
    function_curves = {name: found(scores)[0] for name, scores in functions.items()}
    function_found = {name: found(scores)[1] for name, scores in functions.items()}
    results = {
        "train_images": int(len(y)),
        "flipped": int(is_flipped.sum()),
        "epochs": epochs,
        "learning_rates": rates,
        "found_by_self_influence": influence_found,
        "found_by_last_loss": loss_found,
        "found_by_influence_function_last_layer": function_found["last_layer"],
        "found_by_influence_function_arnoldi": function_found["arnoldi"],
        "influence_function": {
            "hessian_images": len(hessian_data[1]),
            "damping": _DAMPING.value,
            "arnoldi_rank": _RANK.value,
            "arnoldi_iterations": _ITERATIONS.value,
        },
        "train_seconds": train_seconds,
        "self_influence_seconds": influence_seconds,
        "influence_function_seconds": function_seconds,
    }
    runs.write_json_atomic(out / "results.json", results)
    _figure(
        out / "mislabelled.png",
        {
            "TracIn self-influence": influence_curve,
            "influence function, last layer": function_curves["last_layer"],
            "influence function, Arnoldi": function_curves["arnoldi"],
            "loss at the last checkpoint": loss_curve,
        },
        influence,
        x,
        y,
        clean[drawn],
        split.class_names,
    )
    print(f"{len(y)} training images, {is_flipped.sum()} flipped; checkpoints {epochs}")
    print(
        "| inspected | found by TracIn self-influence | influence function, last layer | "
        "influence function, Arnoldi | the last loss | random |"
    )
    print("|---|---|---|---|---|---|")
    for f in FRACTIONS:
        print(
            f"| top {f:.0%} | {influence_found[f]:.1%} | "
            f"{function_found['last_layer'][f]:.1%} | {function_found['arnoldi'][f]:.1%} | "
            f"{loss_found[f]:.1%} | {f:.0%} |"
        )
    print(
        f"training {train_seconds:.0f} s, TracIn self-influence {influence_seconds:.0f} s, "
        f"influence functions {function_seconds['last_layer']:.0f} s (last layer) and "
        f"{function_seconds['arnoldi']:.0f} s (Arnoldi)"
    )


def _figure(path, curves, influence, x, given, original, names):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.2))
    grid = fig.add_gridspec(2, 10)
    ax = fig.add_subplot(grid[:, :3])
    inspected = np.arange(1, len(influence) + 1) / len(influence)
    for label, curve in curves.items():
        ax.plot(inspected, curve, label=label)
    ax.plot(inspected, inspected, "--", color="grey", label="random")
    ax.set_xlabel("fraction of training images inspected")
    ax.set_ylabel("fraction of flipped labels found")
    ax.legend(fontsize=8)
    top = np.argsort(-influence, kind="stable")[:14]
    for k, i in enumerate(top):
        cell = fig.add_subplot(grid[k // 7, 3 + k % 7])
        cell.imshow(x[i, ..., 0], cmap="gray")
        title = names[given[i]]
        if given[i] != original[i]:
            title += f"\n(flipped, was {names[original[i]]})"
        cell.set_title(title, fontsize=6, color="black" if given[i] == original[i] else "red")
        cell.set_xticks([])
        cell.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    _cli.run(main)
