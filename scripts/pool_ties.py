r"""How far near-ties in max-pooling windows move a saliency map.

    python scripts/pool_ties.py            # the benchmark's model: cnn_fmnist, seed 0
    python scripts/pool_ties.py --num_images=64

The benchmark compares maps on dithered images (``config.dither``, a third of an
8-bit step of noise per pixel), so that no max-pooling window holds an exact tie,
where the gradient is undefined. A window whose two largest activations differ by
less than the rounding of the two frameworks' convolutions is still decided by the
last bit, and a GPU convolution rounds differently from a CPU one. This script takes
the benchmark's model (``cnn_fmnist``, randomly initialised with seed 0) and agreement
images (the first ``--num_images`` Fashion-MNIST test images, dithered the same way),
and computes |saliency| once as ``fmi_jax.models.layers.max_pool`` routes the
gradient (to the window's maximum) and once sending it, in every window whose two
largest values are within ``eps`` of each other (relative), to the second largest.
It prints the relative L2 difference for eps from 1e-7 to 1e-4: how large a
disagreement rounding of that size can cause (docs/gpu.md).
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
from fmi_jax.benchmark.runner import dither  # noqa: E402
from fmi_jax.models import layers  # noqa: E402
from fmi_jax.train.input_pipeline import to_float  # noqa: E402

EPS = (1e-7, 1e-6, 1e-5, 1e-4)


def near_tie_pool(eps: float):
    """``layers.max_pool`` whose gradient goes to the window's second largest value
    where the two largest are within ``eps`` (relative to the largest)."""

    @functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
    def pool(x: jax.Array, window: int = 2) -> jax.Array:
        return layers._windows(x, window).max(axis=-1)

    @pool.defjvp
    def _jvp(window, primals, tangents):
        (x,), (t,) = primals, tangents
        xw = layers._windows(x, window)
        size = xw.shape[-1]
        first = jnp.argmax(xw, axis=-1)
        rest = jnp.where(jax.nn.one_hot(first, size, dtype=bool), -jnp.inf, xw)
        second = jnp.argmax(rest, axis=-1)
        top, runner_up = xw.max(axis=-1), rest.max(axis=-1)
        near = top - runner_up <= eps * jnp.abs(top)
        chosen = jax.nn.one_hot(jnp.where(near, second, first), size, dtype=bool)
        return top, jnp.where(chosen, layers._windows(t, window), 0).sum(axis=-1)

    return pool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=int, default=256)
    parser.add_argument("--dither", type=float, default=1 / 768, help="configs/benchmark.py's")
    args = parser.parse_args(argv)
    if args.num_images < 1:
        print("error: --num_images must be at least 1", file=sys.stderr)
        return 2
    try:
        images = data.load("fashion_mnist", "test", download=False).images[: args.num_images]
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    x = jnp.asarray(dither(np.asarray(to_float(jnp.asarray(images))), args.dither))
    model = models.get_model("cnn_fmnist")
    variables = models.init_variables(model, jax.random.key(0), jnp.zeros((1, *x.shape[1:])))
    fn = lambda z: model.apply(variables, z)
    target = jnp.argmax(fn(x), axis=-1)
    base = np.asarray(attribution.saliency(fn, x, target, abs=True))
    original = layers.max_pool
    print(f"{len(base)} images, dither {args.dither:.2e}: |saliency| moved by routing near-ties")
    for eps in EPS:
        layers.max_pool = near_tie_pool(eps)
        try:
            moved = np.asarray(attribution.saliency(fn, x, target, abs=True))
        finally:
            layers.max_pool = original
        error = np.linalg.norm(moved - base) / np.linalg.norm(base)
        print(f"  windows within {eps:.0e} (relative): {error:.2e} relative L2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
