r"""FGSM, PGD and the smallest prediction-changing perturbation against Captum's
``captum.robust`` on a trained CNN.

    make .venv-bench/.installed           # torch + Captum, the benchmark's venv
    .venv-bench/bin/python scripts/adversarial_agreement.py --workdir=runs/cnn_fmnist

The run's weights are copied into PyTorch (the benchmark's ``TorchCNN``) and both sides
attack the first ``--num_test`` test images (in [0, 1], bounds (0, 1), their labels as
targets):

* FGSM with ``--epsilon``: fmi_jax with ``zero_threshold=1e-6`` against Captum's ``FGSM``
  with ``loss_func=CrossEntropyLoss(reduction='none')`` (the same computation); then
  fmi_jax's default (``zero_threshold=0``) and Captum's default loss, ``-log(output)``,
  which takes the logits for probabilities.
* L-infinity PGD (``--radius``, ``--step_size``, ``--steps``, no random start), the same
  pairing.
* L2 PGD with radius ``--l2_radius`` in ``--steps`` steps of ``--l2_radius / 4``: fmi_jax's
  normalised-gradient step against Captum's sign step, once with the same ``step_size``
  and once scaled by ``1 / sqrt(d)`` so that its L2 length matches.
* ``min_perturbation`` with :func:`~fmi_jax.evaluation.top_k_removal` of the pixels with
  the largest input x gradient, ``k`` = 0, 4, ..., 784, against Captum's
  ``MinParamPerturbation`` (linear mode) called once per image (its answer is one
  number per call), and once on the whole batch.

It prints, per row, the largest absolute difference of the perturbed images, the share
of features that differ by more than 1e-5, the accuracy on each side's images, and
wall times (fmi_jax's second call, after compiling). docs/captum.md reports what it
measured. Without torch and Captum, or without a run in --workdir, it ends in one
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
from fmi_jax import attribution, evaluation  # noqa: E402
from fmi_jax.train import evaluate as evaluate_lib  # noqa: E402
from fmi_jax.train import loop as loop_lib  # noqa: E402
from fmi_jax.train.input_pipeline import to_float  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/cnn_fmnist", "A trained run of a SimpleCNN.")
_NUM_TEST = flags.DEFINE_integer("num_test", 200, "First test images to attack.")
_NUM_SEARCH = flags.DEFINE_integer("num_search", 50, "First test images for the search.")
_EPSILON = flags.DEFINE_float("epsilon", 0.05, "FGSM step.")
_RADIUS = flags.DEFINE_float("radius", 0.05, "L-infinity PGD radius.")
_STEP_SIZE = flags.DEFINE_float("step_size", 0.01, "L-infinity PGD step.")
_STEPS = flags.DEFINE_integer("steps", 10, "PGD steps.")
_L2_RADIUS = flags.DEFINE_float("l2_radius", 1.0, "L2 PGD radius.")


def _timed(call, *args, repeats: int = 2):
    """``jax.jit(call)(*args)`` and the time of its last of ``repeats`` calls (the first
    one compiles)."""
    call = jax.jit(call)
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(call(*args))
        seconds = time.perf_counter() - start
    return jax.tree.map(np.asarray, out), seconds


def main():
    torch, robust = _cli.reference_packages("torch", "captum.robust")
    from fmi_jax.benchmark import torch_side

    model, variables, run_config, _ = evaluate_lib.restore_model(Path(_WORKDIR.value))
    data = loop_lib.load_data(run_config.data)
    x = np.asarray(to_float(jnp.asarray(data["test"].images[: _NUM_TEST.value])))
    labels = np.asarray(data["test"].labels[: _NUM_TEST.value], np.int32)
    d = int(np.prod(x.shape[1:]))
    apply = jax.jit(lambda z: model.apply(variables, z, train=False))

    def fn(z):
        return model.apply(variables, z, train=False)

    net = torch_side.from_flax(model, variables, tuple(x.shape[1:])).eval()
    ce = torch.nn.CrossEntropyLoss(reduction="none")

    def nchw(a):
        return torch.from_numpy(np.array(a, np.float32)).permute(0, 3, 1, 2).contiguous()

    def nhwc(t):
        return t.detach().permute(0, 2, 3, 1).numpy()

    def captum(call):
        start = time.perf_counter()
        out = nhwc(call())
        return out, time.perf_counter() - start

    def accuracy(images):
        return float(np.mean(np.argmax(np.asarray(apply(jnp.asarray(images))), 1) == labels))

    xt, yt = nchw(x), torch.from_numpy(labels).long()
    rows = []

    def compare(name, ours, theirs):
        (a, a_s), (b, b_s) = ours, theirs
        diff = np.abs(a - b)
        rows.append(
            f"| {name} | {diff.max():.2g} | {np.mean(diff > 1e-5):.2%} | {accuracy(a):.3f} "
            f"| {accuracy(b):.3f} | {a_s:.2f} | {b_s:.2f} |"
        )

    fgsm = robust.FGSM(net, loss_func=ce, lower_bound=0.0, upper_bound=1.0)
    fgsm_default = robust.FGSM(net, lower_bound=0.0, upper_bound=1.0)
    common = dict(bounds=(0.0, 1.0), batch_size=100)
    eps = _EPSILON.value

    def ours_fgsm(**options):
        return _timed(lambda x: evaluation.fgsm(fn, x, labels, epsilon=eps, **common, **options), x)

    thresholded = ours_fgsm(zero_threshold=1e-6)
    plain = ours_fgsm()
    compare(
        "FGSM, threshold 1e-6 / CE loss", thresholded, captum(lambda: fgsm.perturb(xt, eps, yt))
    )
    compare(
        "FGSM, fmi_jax default / Captum default loss",
        plain,
        captum(lambda: fgsm_default.perturb(xt, eps, yt)),
    )
    compare("FGSM, fmi_jax default / fmi_jax threshold 1e-6", plain, thresholded)
    frozen = np.all(thresholded[0] == x, axis=(1, 2, 3))

    steps, radius, step = _STEPS.value, _RADIUS.value, _STEP_SIZE.value
    pgd = robust.PGD(net, loss_func=ce, lower_bound=0.0, upper_bound=1.0)
    pgd_default = robust.PGD(net, lower_bound=0.0, upper_bound=1.0)

    def ours_pgd(**options):
        return _timed(lambda x: evaluation.pgd(fn, x, labels, steps=steps, **common, **options), x)

    compare(
        "PGD Linf, threshold 1e-6 / CE loss",
        ours_pgd(radius=radius, step_size=step, zero_threshold=1e-6),
        captum(lambda: pgd.perturb(xt, radius, step, steps, yt)),
    )
    compare(
        "PGD Linf, fmi_jax default / Captum default loss",
        ours_pgd(radius=radius, step_size=step),
        captum(lambda: pgd_default.perturb(xt, radius, step, steps, yt)),
    )
    l2, l2_step = _L2_RADIUS.value, _L2_RADIUS.value / 4
    ours_l2 = ours_pgd(radius=l2, step_size=l2_step, norm="l2")
    compare(
        f"PGD L2 r={l2:g}, step {l2_step:g} / same step_size",
        ours_l2,
        captum(lambda: pgd.perturb(xt, l2, l2_step, steps, yt, norm="L2")),
    )
    compare(
        f"PGD L2 r={l2:g}, step {l2_step:g} / step_size / sqrt(d)",
        ours_l2,
        captum(lambda: pgd.perturb(xt, l2, l2_step / np.sqrt(d), steps, yt, norm="L2")),
    )

    # The smallest number of most-attributed pixels whose removal changes the predicted
    # class.
    n = _NUM_SEARCH.value
    predicted = np.argmax(np.asarray(apply(jnp.asarray(x[:n]))), 1).astype(np.int32)
    maps = np.asarray(attribution.input_x_gradient(fn, x[:n], predicted, batch_size=100))
    params = np.arange(0, d + 1, 4)
    found, ours_seconds = _timed(
        lambda images, maps: evaluation.min_perturbation(
            fn,
            images,
            predicted,
            perturb=evaluation.top_k_removal(),
            params=params,
            aux=maps,
            batch_size=1000,
        ),
        x[:n],
        maps,
    )

    def remove(inputs, k, attribution):
        flat = attribution.reshape(attribution.shape[0], -1)
        order = torch.argsort(-flat, dim=1, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))
        keep = (rank >= k).reshape(attribution.shape).to(inputs.dtype)
        return inputs * keep

    search = robust.MinParamPerturbation(
        net, remove, "k", arg_min=0, arg_max=d + 1, arg_step=4, mode="linear"
    )
    mt, pt = nchw(maps), torch.from_numpy(predicted).long()
    start = time.perf_counter()
    theirs_k = []
    for i in range(n):
        _, k = search.evaluate(
            xt[i : i + 1],
            target=pt[i : i + 1],
            perturbations_per_eval=50,
            attack_kwargs={"attribution": mt[i : i + 1]},
        )
        theirs_k.append(-1 if k is None else k)
    captum_seconds = time.perf_counter() - start
    ours_k = np.where(found.index >= 0, np.nan_to_num(found.param), -1)
    _, batch_k = search.evaluate(
        xt[:n], target=pt, perturbations_per_eval=1, attack_kwargs={"attribution": mt[:n]}
    )

    print(f"{_WORKDIR.value}: {len(x)} test images, d = {d}, clean accuracy {accuracy(x):.3f}")
    print(
        f"images Captum's 1e-6 threshold leaves unchanged by FGSM: {frozen.sum()}, of which "
        f"fmi_jax's default turns {np.sum(frozen & (np.argmax(apply(plain[0]), 1) != labels))} "
        "into errors"
    )
    print(
        "| attack (left / right) | max abs difference | features differing > 1e-5 "
        "| left accuracy | right accuracy | left s | right s |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    changed = ours_k >= 0
    print(
        f"min_perturbation, top-k removal of input x gradient (predicted class), {n} images: "
        f"the same k as Captum for {np.mean(np.asarray(theirs_k) == ours_k):.0%} (median k "
        f"{np.median(ours_k[changed]):.0f}, {changed.sum()} changed); fmi_jax "
        f"{ours_seconds:.2f} s, Captum one call per image {captum_seconds:.1f} s; Captum on "
        f"the whole batch answers one k, {batch_k} (the smallest per-image k is "
        f"{ours_k[changed].min():.0f})"
    )


if __name__ == "__main__":
    _cli.run(main)
