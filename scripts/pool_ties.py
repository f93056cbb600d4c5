r"""How much the choice among tied max-pooling inputs moves a saliency map.

    python scripts/pool_ties.py            # the benchmark's model: cnn_fmnist, seed 0
    python scripts/pool_ties.py --num_images=64

A 2 x 2 max-pooling window over a uniform background holds four equal activations;
each is a valid subgradient. ``fmi_jax.models.layers.max_pool`` sends the gradient to
the first in row-major order, as PyTorch's and XLA's kernels do on a CPU. This script
computes |saliency| (the benchmark's options) on the first ``--num_images``
Fashion-MNIST test images with the benchmark's randomly initialised ``cnn_fmnist``,
once with that rule and once sending every tie to the *last* maximum, and prints the
relative L2 and max differences and the share of the difference on background
pixels. It bounds what tie-breaking alone can do to a saliency comparison: a GPU
convolution, whose rounding may differ between positions, breaks some ties by the last
bit, and two frameworks need not break them alike (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmi_jax import attribution, data, models  # noqa: E402
from fmi_jax.models import layers  # noqa: E402
from fmi_jax.train.input_pipeline import to_float  # noqa: E402


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def last_max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """``layers.max_pool`` with the gradient of a tie sent to its last maximum."""
    return layers._windows(x, window).max(axis=-1)


@last_max_pool.defjvp
def _last_max_pool_jvp(window, primals, tangents):
    (x,), (t,) = primals, tangents
    xw = layers._windows(x, window)
    size = xw.shape[-1]
    last = jax.nn.one_hot(size - 1 - jnp.argmax(xw[..., ::-1], axis=-1), size, dtype=bool)
    return jnp.where(last, xw, 0).sum(-1), jnp.where(last, layers._windows(t, window), 0).sum(-1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=int, default=256)
    args = parser.parse_args(argv)
    if args.num_images < 1:
        print("error: --num_images must be at least 1", file=sys.stderr)
        return 2
    try:
        images = data.load("fashion_mnist", "test", download=False).images[: args.num_images]
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    x = to_float(jnp.asarray(images))
    model = models.get_model("cnn_fmnist")
    variables = models.init_variables(model, jax.random.key(0), jnp.zeros((1, *x.shape[1:])))
    fn = lambda z: model.apply(variables, z)
    target = jnp.argmax(fn(x), axis=-1)
    first = np.asarray(attribution.saliency(fn, x, target, abs=True))
    original, layers.max_pool = layers.max_pool, last_max_pool
    try:
        last = np.asarray(attribution.saliency(fn, x, target, abs=True))
    finally:
        layers.max_pool = original
    diff = np.abs(last - first)
    pixels = np.asarray(x)
    background = pixels == pixels.min()
    print(
        f"{len(pixels)} images: first vs last maximum of tied windows moves |saliency| by "
        f"{np.linalg.norm(diff) / np.linalg.norm(first):.2e} relative L2, "
        f"{diff.max() / np.abs(first).max():.2e} relative max; "
        f"{diff[background].sum() / diff.sum():.0%} of the change on background pixels "
        f"({background.mean():.0%} of all)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
