r"""How much of each CAM sits on layer positions the model never reads, and what the
faithfulness metrics say once those positions are left out.

    python scripts/cam_unread_positions.py --workdir=runs/cnn_fmnist --layer=conv3

A position of the layer is *unread* on these images when the gradient of every class
logit with respect to it is exactly 0 for every image (a max-pool that drops the
layer's last row and column makes them so for any input). For every CAM the script
prints the share of its layer-sized maps (ReLU applied; all images' maps summed) on
unread positions, then the
mean deletion AUC (zero substrate) and insertion AUC (Gaussian blur, sigma 5), one
image row per step as configs/evaluate_attributions.py sets them, of the map as
computed and of the map with the unread positions set to 0 before upsampling.
docs/results.md reports what it measured. Bad input (no run in --workdir, a layer the
model does not have) ends in one `error:` line and exit status 2.
"""

import sys
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

_WORKDIR = flags.DEFINE_string("workdir", "runs/cnn_fmnist", "A trained run.")
_LAYER = flags.DEFINE_string("layer", "conv3", "The CAMs' layer.")
_IMAGES = flags.DEFINE_integer("images", 500, "The first images of the test split.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Model evaluations per chunk.")


def main():
    model, variables, config, _ = evaluate_lib.restore_model(_WORKDIR.value)
    images = loop_lib.load_data(config.data)["test"].images[: _IMAGES.value]
    x = jnp.asarray(to_float(images))
    handle = attribution.flax_model(model, variables, train=False)
    layer, size = _LAYER.value, x.shape[1:3]
    logits, activation = jax.jit(lambda x: handle.capture(x, layer))(x)
    target = jnp.argmax(logits, axis=-1)

    def reads(x: jax.Array, activation: jax.Array) -> jax.Array:
        """sum over images, channels and classes c of |d y_c / dA| at each position."""
        total = 0.0
        for c in range(logits.shape[1]):
            grad = jax.grad(lambda a, c=c: handle.logits_with(x, layer, a)[:, c].sum())(activation)
            total = total + jnp.abs(grad).sum(axis=(0, 3))
        return total

    # Arrays as arguments: closed over, XLA would constant-fold the whole network.
    keep = np.asarray(jax.jit(reads)(x, activation) > 0, np.float32)
    print(f"{layer}: {int((keep == 0).sum())} of {keep.size} positions unread")
    metric = dict(batch_size=8 * _BATCH.value)
    deletion = jax.jit(
        lambda x, t, m: evaluation.auc(
            evaluation.deletion_curve(handle, x, t, m, substrate="zero", **metric)
        ).mean()
    )
    insertion = jax.jit(
        lambda x, t, m: evaluation.auc(
            evaluation.insertion_curve(handle, x, t, m, substrate="gaussian", **metric)
        ).mean()
    )
    print("method | share on unread | deletion AUC, as is / without | insertion AUC, same")
    for name in attribution.CAM_METHODS:
        explain = attribution.explainer(
            name, handle, layer=layer, upsample=False, batch_size=_BATCH.value
        )
        low = jax.jit(lambda x, t, explain=explain: explain(x, t)[..., 0])(x, target)
        share = float((low * (1 - keep)).sum() / jnp.maximum(low.sum(), 1e-12))
        d0, d1, i0, i1 = (
            float(score(x, target, attribution.upsample_maps(maps, size)))
            for score in (deletion, insertion)
            for maps in (low, low * keep)
        )
        print(f"{name} | {share:.1%} | {d0:.3f} / {d1:.3f} | {i0:.3f} / {i1:.3f}")


if __name__ == "__main__":
    _cli.run(main)
