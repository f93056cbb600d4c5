r"""Milliseconds per call of the symmetric-border Gaussian blur two ways: the grouped
convolution of a padded image, one pass per axis, and the two matrix products of
`fmi_jax.attribution.smoothing.separable_filter` with the smoothing matrices of
`reflected_gaussian_matrix`, on the same images, interleaved in one process.

    python scripts/time_blur.py

Both are jitted and compiled before timing; each sample is back-to-back calls lasting
at least 0.3 s, and the table gives the median of 3 samples per side, and the largest
difference between the two results. docs/performance.md reports what it measured.
"""

import statistics
import sys
import time
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from fmi_jax.attribution.smoothing import (  # noqa: E402
    gaussian_kernel,
    reflected_gaussian_matrix,
    separable_filter,
)

CASES = [((64, 28, 28, 1), 1.0), ((64, 28, 28, 1), 5.0), ((64, 28, 28, 1), 100.0)]
CASES += [((16, 224, 224, 3), 1.0), ((16, 224, 224, 3), 5.0)]


def padded_convolution(images, taps):
    """The blur as a depthwise convolution of the image padded by symmetric reflection."""
    radius = len(taps) // 2
    channels = images.shape[-1]
    for axis in (1, 2):
        pad = [(0, 0)] * images.ndim
        pad[axis] = (radius, radius)
        window = (len(taps), 1) if axis == 1 else (1, len(taps))
        kernel = jnp.broadcast_to(
            jnp.asarray(taps, images.dtype).reshape(window + (1, 1)), window + (1, channels)
        )
        images = jax.lax.conv_general_dilated(
            jnp.pad(images, pad, mode="symmetric"),
            kernel,
            (1, 1),
            "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels,
            precision=jax.lax.Precision.HIGHEST,
        )
    return images


def _sample(call, x):
    calls, start = 0, time.perf_counter()
    while True:
        jax.block_until_ready(call(x))
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= 0.3:
            return 1e3 * elapsed / calls


def main():
    print("| images | sigma | padded convolution, ms | two matrix products, ms | max diff |")
    print("|---|---|---|---|---|")
    for shape, sigma in CASES:
        x = jax.random.normal(jax.random.key(0), shape)
        taps = gaussian_kernel(sigma, 4.0)
        rows = reflected_gaussian_matrix(shape[1], sigma)
        cols = reflected_gaussian_matrix(shape[2], sigma)
        conv = jax.jit(lambda x, taps=taps: padded_convolution(x, taps))
        matrix = jax.jit(lambda x, rows=rows, cols=cols: separable_filter(x, rows, cols))
        diff = float(jnp.max(jnp.abs(conv(x) - matrix(x))))
        samples = {"conv": [], "matrix": []}
        for _ in range(3):
            samples["conv"].append(_sample(conv, x))
            samples["matrix"].append(_sample(matrix, x))
        c, m = (statistics.median(samples[k]) for k in ("conv", "matrix"))
        size = "x".join(map(str, shape))
        print(f"| {size} | {sigma:g} | {c:,.1f} | {m:,.1f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
