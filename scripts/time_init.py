r"""Seconds to initialise each study's model, eagerly (`model.init`) and as one compiled
program (`fmi_jax.models.init_variables`), each in a fresh process so that nothing is
compiled beforehand; and whether the two give the same variables.

    python scripts/time_init.py

Prints a Markdown table; docs/performance.md reports what it measured. The
persistent compilation cache is off in the child processes.
"""

import json
import tempfile
from pathlib import Path

from fresh_process import run_fresh

# (label, registry name, keyword arguments, image shape)
MODELS = [
    ("default CNN (cnn_fmnist)", "cnn_fmnist", {}, (28, 28, 1)),
    ("MNIST CNN (cnn_mnist)", "cnn_mnist", {}, (28, 28, 1)),
    (
        "tuning ResNet, 3 blocks x 32",
        "resnet",
        {"num_blocks": 3, "filters": 32, "dtype": "float32"},
        (28, 28, 1),
    ),
    ("CIFAR-10 CNN (cifarnet)", "cifarnet", {}, (32, 32, 3)),
    (
        "k-sparse autoencoder, 1024 x top-50",
        "k_sparse_autoencoder",
        {"latents": 1024, "k": 50},
        (28, 28, 1),
    ),
    ("MobileNetV3-small, 224 x 224", "mobilenet_v3_small", {}, (224, 224, 3)),
]

CHILD = """
import json, sys, time
import jax, jax.numpy as jnp
from fmi_jax import models
name, kwargs, shape, how = json.loads(sys.argv[1])
model = models.get_model(name, **kwargs)
x = jnp.zeros((1, *shape))
start = time.perf_counter()
if how == "eager":
    variables = model.init(jax.random.key(0), x, train=False)
else:
    variables = models.init_variables(model, jax.random.key(0), x, train=False)
jax.block_until_ready(variables)
seconds = time.perf_counter() - start
import numpy as np
np.savez(sys.argv[2], *[np.asarray(v) for v in jax.tree.leaves(variables)])
print(json.dumps(seconds))
"""


def _run(spec, how, out):
    return run_fresh(
        CHILD, json.dumps([*spec, how]), str(out), what=f"initialising {spec[0]} ({how})"
    )


def main():
    import numpy as np  # noqa: PLC0415

    print("| model | eager `model.init` (s) | `init_variables` (s) | same variables |")
    print("|---|---|---|---|")
    for label, name, kwargs, shape in MODELS:
        spec = (name, kwargs, shape)
        with tempfile.TemporaryDirectory() as tmp:
            eager = _run(spec, "eager", Path(tmp) / "eager.npz")
            compiled = _run(spec, "compiled", Path(tmp) / "compiled.npz")
            with np.load(Path(tmp) / "eager.npz") as a, np.load(Path(tmp) / "compiled.npz") as b:
                assert a.files == b.files, (a.files, b.files)
                diffs = [abs(a[k].astype(np.float64) - b[k]).max() for k in a.files]
        same = "bit for bit" if max(diffs) == 0 else f"max difference {max(diffs):.1e}"
        print(f"| {label} | {eager:.1f} | {compiled:.1f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
