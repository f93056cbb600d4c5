r"""Influence functions against Captum's ``NaiveInfluenceFunction`` and
``ArnoldiInfluenceFunction`` on a trained CNN's last layer.

    make .venv-bench/.installed           # torch + Captum, the benchmark's venv
    .venv-bench/bin/python scripts/influence_agreement.py --workdir=runs/cnn_fmnist

The run's last checkpoint is copied into PyTorch (the benchmark's ``TorchCNN``). Both
sides differentiate the head (the last dense layer, weights and bias) with the plain
cross-entropy of one example, take the Hessian over the first ``--num_hessian``
training images, keep its top ``--rank`` eigenpairs with damping ``--damping``
(Captum's ``hessian_reg``) and cut-off ``--min_eigenvalue`` (``hessian_inverse_tol``),
and score the first ``--num_train`` training images on the first ``--num_test`` test
images. Rows: fmi_jax's exact solver against Captum's naive one (both decompose the
whole Hessian), then each side's Arnoldi solver (``--iterations`` steps, its own
random start) against its own exact scores, Captum's also with its early stop
(``arnoldi_tol``, 0.1 by default) lowered to 1e-6; the self-influence of the training
images likewise. It prints the relative L2 difference of the score matrices, how many
of each test image's top-5 proponents agree, the largest-eigenvalue agreement and
each side's wall time (fmi_jax's includes compiling). docs/captum.md reports what it
measured. Without torch and Captum, or without a run in --workdir, it ends in one
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
_NUM_HESSIAN = flags.DEFINE_integer("num_hessian", 1000, "Training images in the Hessian.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 500, "First training images to score.")
_NUM_TEST = flags.DEFINE_integer("num_test", 20, "First test images to explain.")
_RANK = flags.DEFINE_integer("rank", 50, "Eigenpairs kept (Captum's projection_dim).")
_DAMPING = flags.DEFINE_float("damping", 1e-3, "Captum's hessian_reg.")
_MIN_EIGENVALUE = flags.DEFINE_float("min_eigenvalue", 1e-4, "Captum's hessian_inverse_tol.")
_ITERATIONS = flags.DEFINE_integer("iterations", 200, "Arnoldi steps (Captum's arnoldi_dim).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 250, "Examples per chunk.")


def _timed(call):
    start = time.perf_counter()
    value = jax.block_until_ready(call())
    return value, time.perf_counter() - start


def main():
    # Captum 0.9 exports NaiveInfluenceFunction but not ArnoldiInfluenceFunction.
    torch, influence, arnoldi_module, torch_data = _cli.reference_packages(
        "torch",
        "captum.influence",
        "captum.influence._core.arnoldi_influence_function",
        "torch.utils.data",
    )
    from fmi_jax.benchmark import torch_side

    workdir = Path(_WORKDIR.value)
    model, variables, run_config, _ = evaluate_lib.restore_model(workdir)
    data = loop_lib.load_data(run_config.data)
    count = max(_NUM_HESSIAN.value, _NUM_TRAIN.value)
    images = np.asarray(to_float(jnp.asarray(data["train"].images[:count])))
    labels = np.asarray(data["train"].labels[:count], np.int32)
    test_images = np.asarray(to_float(jnp.asarray(data["test"].images[: _NUM_TEST.value])))
    test_labels = np.asarray(data["test"].labels[: _NUM_TEST.value], np.int32)
    hessian_data = (images[: _NUM_HESSIAN.value], labels[: _NUM_HESSIAN.value])
    train = (images[: _NUM_TRAIN.value], labels[: _NUM_TRAIN.value])
    test = (test_images, test_labels)

    def loss(variables, example):
        x, label = example
        logits = model.apply(variables, x[None], train=False)[0]
        return -jax.nn.log_softmax(logits)[label]

    def head_only(path):
        return path.startswith("params/head/")

    rank, batch = _RANK.value, _BATCH_SIZE.value
    scores = dict(damping=_DAMPING.value, min_eigenvalue=_MIN_EIGENVALUE.value, batch_size=batch)
    ours = {}
    for solver, options in (
        ("exact", {}),
        ("arnoldi", dict(iterations=_ITERATIONS.value, key=jax.random.key(0))),
    ):
        eigen, eigen_seconds = _timed(
            lambda options=options, solver=solver: attribution.hessian_eigen(
                loss,
                variables,
                hessian_data,
                rank=rank,
                solver=solver,
                select=head_only,
                batch_size=batch,
                **options,
            )
        )
        table, table_seconds = _timed(
            lambda eigen=eigen: attribution.influence_function(
                loss, variables, train, test, eigen, **scores
            )
        )
        own, own_seconds = _timed(
            lambda eigen=eigen: attribution.influence_function_self(
                loss, variables, train, eigen, **scores
            )
        )
        ours[solver] = (
            np.asarray(eigen.values),
            np.asarray(table),
            np.asarray(own),
            eigen_seconds + table_seconds + own_seconds,
        )
    size = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(variables["params"]["head"]))

    shape = tuple(images.shape[1:])

    def nchw(a):
        return torch.from_numpy(np.array(a, np.float32)).permute(0, 3, 1, 2).contiguous()

    def long(a):
        return torch.from_numpy(np.array(a, np.int64))

    net = torch_side.from_flax(model, variables, shape).eval()
    theirs = {}
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "last.pt")
        torch.save(net.state_dict(), path)

        def load(net, path):
            net.load_state_dict(torch.load(path))
            net.eval()
            return 1.0

        common = dict(
            checkpoints_load_func=load,
            layers=["head"],
            loss_fn=torch.nn.CrossEntropyLoss(reduction="none"),
            batch_size=batch,
            hessian_dataset=torch_data.TensorDataset(nchw(hessian_data[0]), long(hessian_data[1])),
            projection_dim=rank,
            hessian_reg=_DAMPING.value,
            hessian_inverse_tol=_MIN_EIGENVALUE.value,
        )
        train_set = torch_data.TensorDataset(nchw(train[0]), long(train[1]))
        for name, cls, extra in (
            ("naive", influence.NaiveInfluenceFunction, {}),
            (
                "arnoldi",
                arnoldi_module.ArnoldiInfluenceFunction,
                dict(arnoldi_dim=_ITERATIONS.value),
            ),
            (
                "arnoldi_tol",
                arnoldi_module.ArnoldiInfluenceFunction,
                dict(arnoldi_dim=_ITERATIONS.value, arnoldi_tol=1e-6),
            ),
        ):
            start = time.perf_counter()
            explainer = cls(net, train_set, path, **common, **extra)
            table = explainer.influence((nchw(test[0]), long(test[1])))
            own = explainer.self_influence((nchw(train[0]), long(train[1])), show_progress=False)
            seconds = time.perf_counter() - start
            theirs[name] = (table.detach().numpy(), own.detach().numpy(), seconds)

    def relative(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    def shared(a, b, top=5):
        return np.mean(
            [len(set(np.argsort(-x)[:top]) & set(np.argsort(-y)[:top])) / top for x, y in zip(a, b)]
        )

    exact_table, exact_self = ours["exact"][1], ours["exact"][2]
    print(
        f"head of {workdir}: {size} parameters; Hessian over {_NUM_HESSIAN.value} training "
        f"images; {_NUM_TEST.value} test x {_NUM_TRAIN.value} training images; rank {rank}, "
        f"damping {_DAMPING.value:g}, min_eigenvalue {_MIN_EIGENVALUE.value:g}"
    )
    print(f"top eigenvalues (exact): {np.array2string(ours['exact'][0][:5], precision=4)}")
    print(
        f"top eigenvalues (Arnoldi, {_ITERATIONS.value} steps): "
        f"{np.array2string(ours['arnoldi'][0][:5], precision=4)}"
    )
    print(
        "| scores | against | relative L2 | top-5 proponents shared | self-influence "
        "relative L2 | seconds (scores and self-influence) |"
    )
    print("|---|---|---|---|---|---|")
    naive, arnoldi = theirs["naive"], theirs["arnoldi"]
    rows = (
        (
            "fmi_jax exact",
            "Captum naive",
            exact_table,
            naive[0],
            exact_self,
            naive[1],
            ours["exact"][3],
        ),
        (
            "fmi_jax Arnoldi",
            "fmi_jax exact",
            ours["arnoldi"][1],
            exact_table,
            ours["arnoldi"][2],
            exact_self,
            ours["arnoldi"][3],
        ),
        ("Captum Arnoldi", "Captum naive", arnoldi[0], naive[0], arnoldi[1], naive[1], arnoldi[2]),
        (
            "Captum Arnoldi, arnoldi_tol 1e-6",
            "Captum naive",
            theirs["arnoldi_tol"][0],
            naive[0],
            theirs["arnoldi_tol"][1],
            naive[1],
            theirs["arnoldi_tol"][2],
        ),
        ("Captum naive", "fmi_jax exact", naive[0], exact_table, naive[1], exact_self, naive[2]),
    )
    for name, against, a, b, sa, sb, seconds in rows:
        print(
            f"| {name} | {against} | {relative(a, b):.2g} | {shared(a, b):.2f} | "
            f"{relative(sa, sb):.2g} | {seconds:.1f} |"
        )


if __name__ == "__main__":
    _cli.run(main)
