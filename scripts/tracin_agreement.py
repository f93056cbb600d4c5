r"""TracInCP against Captum's ``TracInCP`` on a trained CNN's kept checkpoints.

    make .venv-bench/.installed           # torch + Captum, the benchmark's venv
    .venv-bench/bin/python scripts/tracin_agreement.py --workdir=runs/cnn_fmnist

Every checkpoint kept in --workdir is copied into PyTorch (the benchmark's
``TorchCNN``). Both sides score the first ``--num_train`` training images on the first
``--num_test`` test images with the plain cross-entropy of one example (the run trained
with label smoothing; the comparison needs only the same loss on both sides), every
trainable parameter (batch-norm statistics excluded), learning rate 1 at every
checkpoint, ``--batch_size`` training examples per chunk. It prints the relative L2
difference of the score matrices and of the self-influences, how many of each test
image's top-5 proponents agree, and each side's wall time (fmi_jax's first call
includes compiling, which later calls with the same loss function reuse; the second
call is timed too). Then Captum's ``SimilarityInfluence`` against
``similarity_influence``: the top 5 training images per test image at each of ``--layers``
(the last checkpoint), by cosine similarity and by Euclidean distance, with the share
of indices that agree in order and the largest score difference. docs/captum.md
reports what it measured. Without torch and Captum, or without a run in --workdir, it ends in one
``error:`` line and exit status 2.
"""

import sys
import tempfile
import time
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from experiments import _cli  # noqa: E402
from fmi_jax import attribution  # noqa: E402
from fmi_jax.train import evaluate as evaluate_lib  # noqa: E402
from fmi_jax.train import loop as loop_lib  # noqa: E402
from fmi_jax.train.input_pipeline import to_float  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/cnn_fmnist", "A trained run of a SimpleCNN.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 200, "First training images to score.")
_NUM_TEST = flags.DEFINE_integer("num_test", 10, "First test images to explain.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 50, "Training examples per chunk.")
_LAYERS = flags.DEFINE_list(
    "layers", ["conv2", "conv3"], "The layers SimilarityInfluence compares at (two or more)."
)


def main():
    torch, influence, torch_data, similarity = _cli.reference_packages(
        "torch",
        "captum.influence",
        "torch.utils.data",
        "captum.influence._core.similarity_influence",
    )
    top = 5
    TracInCP, TensorDataset = influence.TracInCP, torch_data.TensorDataset
    from fmi_jax.benchmark import torch_side

    workdir = Path(_WORKDIR.value)
    model, variables, run_config, _ = evaluate_lib.restore_model(workdir)
    epochs = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    checkpoints = [evaluate_lib.restore_model(workdir, checkpoint=e)[1] for e in epochs]
    data = loop_lib.load_data(run_config.data)
    train_images = np.asarray(to_float(jnp.asarray(data["train"].images[: _NUM_TRAIN.value])))
    train_labels = np.asarray(data["train"].labels[: _NUM_TRAIN.value], np.int32)
    test_images = np.asarray(to_float(jnp.asarray(data["test"].images[: _NUM_TEST.value])))
    test_labels = np.asarray(data["test"].labels[: _NUM_TEST.value], np.int32)

    def loss(variables, example):
        x, label = example
        logits = model.apply(variables, x[None], train=False)[0]
        return -jax.nn.log_softmax(logits)[label]

    def params_only(path):
        return path.startswith("params/")

    options = dict(select=params_only, batch_size=_BATCH_SIZE.value)
    train, test = (train_images, train_labels), (test_images, test_labels)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        ours = np.asarray(
            jax.block_until_ready(attribution.tracin(loss, checkpoints, train, test, **options))
        )
        seconds.append(time.perf_counter() - start)
    self_seconds = []
    for _ in range(2):
        start = time.perf_counter()
        ours_self = np.asarray(
            jax.block_until_ready(attribution.self_influence(loss, checkpoints, train, **options))
        )
        self_seconds.append(time.perf_counter() - start)

    shape = tuple(train_images.shape[1:])

    def nchw(a):
        return torch.from_numpy(np.array(a, np.float32)).permute(0, 3, 1, 2).contiguous()

    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for epoch, v in zip(epochs, checkpoints):
            path = Path(folder) / f"epoch{epoch}.pt"
            torch.save(torch_side.from_flax(model, v, shape).state_dict(), path)
            paths.append(str(path))
        net = torch_side.from_flax(model, checkpoints[0], shape).eval()

        def load(net, path):
            net.load_state_dict(torch.load(path))
            net.eval()
            return 1.0

        explainer = TracInCP(
            net,
            TensorDataset(nchw(train_images), torch.from_numpy(train_labels).long()),
            checkpoints=paths,
            checkpoints_load_func=load,
            loss_fn=torch.nn.CrossEntropyLoss(reduction="none"),
            batch_size=_BATCH_SIZE.value,
            sample_wise_grads_per_batch=False,
        )
        start = time.perf_counter()
        theirs = explainer.influence(
            (nchw(test_images), torch.from_numpy(test_labels).long())
        ).numpy()
        captum_seconds = time.perf_counter() - start
        start = time.perf_counter()
        theirs_self = explainer.self_influence(show_progress=False).numpy()
        captum_self_seconds = time.perf_counter() - start

        # SimilarityInfluence at two conv blocks (the last checkpoint's weights). Captum
        # 0.9 fails on a single layer (its LayerActivation returns a list that it wraps
        # in another), so both layers go into one Captum call.
        handle = attribution.flax_model(model, checkpoints[-1])
        last = torch_side.from_flax(model, checkpoints[-1], shape).eval()
        names = {
            layer: next(
                n for n, m in last.named_modules() if m is torch_side.conv_block_output(last, layer)
            )
            for layer in _LAYERS.value
        }
        similar = []

        # Captum's metrics call .view on the activations, which fails on the
        # non-contiguous ReLU outputs of this model: they get contiguous copies.
        def contiguous(captum_metric):
            return lambda a, b, **kw: captum_metric(a.contiguous(), b.contiguous(), **kw)

        for metric, captum_metric, direction in (
            ("cosine", contiguous(similarity.cosine_similarity), "max"),
            ("euclidean", contiguous(similarity.euclidean_distance), "min"),
        ):
            search = similarity.SimilarityInfluence(
                last,
                list(names.values()),
                nchw(train_images),
                str(Path(folder) / f"activations_{metric}"),
                similarity_metric=captum_metric,
                similarity_direction=direction,
                batch_size=_BATCH_SIZE.value,
            )
            start = time.perf_counter()
            theirs_k = search.influence(nchw(test_images), top_k=top)
            theirs_seconds = time.perf_counter() - start
            for layer, name in names.items():
                start = time.perf_counter()
                ours_k = jax.block_until_ready(
                    attribution.similarity_influence(
                        handle,
                        test_images,
                        train_images,
                        layer=layer,
                        metric=metric,
                        top_k=top,
                        batch_size=_BATCH_SIZE.value,
                    )
                )
                similar.append(
                    (
                        f"{metric}, {layer}",
                        np.asarray(ours_k.indices),
                        np.asarray(ours_k.scores),
                        theirs_k[name][0].numpy(),
                        theirs_k[name][1].numpy(),
                        time.perf_counter() - start,
                        theirs_seconds,
                    )
                )

    def relative(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    agree = np.mean(
        [
            len(set(np.argsort(-o)[:top]) & set(np.argsort(-t)[:top])) / top
            for o, t in zip(ours, theirs)
        ]
    )
    print(
        f"checkpoints (epochs): {epochs}; {len(test_images)} test x {len(train_images)} train images"
    )
    print(
        "| quantity | relative L2 | top-5 proponents shared | fmi_jax s (first / second call) | Captum s |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| influence | {relative(ours, theirs):.2g} | {agree:.2f} | {seconds[0]:.1f} / {seconds[1]:.1f} "
        f"| {captum_seconds:.1f} |"
    )
    print(
        f"| self-influence | {relative(ours_self, theirs_self):.2g} | - | "
        f"{self_seconds[0]:.1f} / {self_seconds[1]:.1f} "
        f"| {captum_self_seconds:.1f} |"
    )
    print(
        f"\nsimilarity_influence (last checkpoint), top {top} per test image; Captum's time "
        "is one call for all layers, fmi_jax's one call per layer (compiling included):"
    )
    print(
        "| metric, layer | same indices, in order | largest score difference | fmi_jax s | Captum s |"
    )
    print("|---|---|---|---|---|")
    for metric, oi, os_, ti, ts, o_s, t_s in similar:
        print(
            f"| {metric} | {np.mean(oi == ti):.0%} | {np.abs(os_ - ts).max():.2g} | {o_s:.1f} "
            f"| {t_s:.1f} |"
        )


if __name__ == "__main__":
    _cli.run(main)
