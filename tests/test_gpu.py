"""Attribution on an accelerator equals attribution on the CPU, weights and inputs alike.

Run by `make gpu-check` (`pytest -m gpu`); skipped where JAX sees no GPU or TPU.
Both sides compute at float32 matmul precision ('highest'): by default XLA may use
TF32 (10-bit significand) for float32 convolutions on recent NVIDIA GPUs, which
would measure TF32's rounding, not the method. The tolerance is a relative L2 error
of 1e-4: float32 sums reassociated differently by two backends differ by ~1e-6
relative per reduction; Score-CAM and occlusion divide and difference such sums.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmi_jax import attribution, models
from tests import testdata

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        jax.default_backend() == "cpu", reason="needs a GPU or TPU (run by make gpu-check)"
    ),
]

KEY = jax.random.key(0)
# Every method that explains an image classifier (decoder_weighted needs a sparse
# autoencoder's decoder; it is matrix products, tested in tests/attribution/test_sparse.py).
METHODS = tuple(
    name
    for name, spec in attribution.METHODS.items()
    if not spec.needs_model or "layer" in spec.options
)


def _options(name: str) -> dict:
    spec = attribution.METHODS[name]
    options = {"samples": 4} if spec.stochastic and "samples" in spec.options else {}
    if "steps" in spec.options:
        options["steps"] = 16
    if "layer" in spec.options:
        options["layer"] = "conv2"
    if name == "occlusion":
        options["window"] = (4, 4)
    return options


def every_map(device) -> dict[str, np.ndarray]:
    """Every method's maps of one small CNN, with weights and inputs put on `device`."""
    model = models.get_model("cnn_mnist", features=(8, 16), dense=(32,))
    # Drawn once, on the CPU, and copied: initialisers drawn on two backends may
    # differ in the last bit.
    with jax.default_device(jax.devices("cpu")[0]):
        x = testdata.uniform(jax.random.key(1), (4, 28, 28, 1))
        host_variables = testdata.init(model, x[:1], train=False)
    with jax.default_device(device), jax.default_matmul_precision("highest"):
        variables = jax.device_put(host_variables, device)
        images = jax.device_put(x, device)
        maps = {}
        for name in METHODS:
            explain = attribution.explainer(
                name,
                lambda images: model.apply(variables, images),
                model=model,
                variables=variables,
                **_options(name),
            )
            maps[name] = np.asarray(jax.jit(explain)(images, jnp.arange(4), KEY))
    return maps


@pytest.fixture(scope="module")
def maps_on_cpu_and_accelerator():
    return every_map(jax.devices("cpu")[0]), every_map(jax.devices()[0])


@pytest.mark.parametrize("name", METHODS)
def test_every_method_on_the_accelerator_equals_the_cpu(name, maps_on_cpu_and_accelerator):
    cpu, accelerator = (maps[name] for maps in maps_on_cpu_and_accelerator)
    assert np.isfinite(accelerator).all()
    error = np.linalg.norm(accelerator - cpu) / max(np.linalg.norm(cpu), 1e-12)
    assert error < 1e-4, f"{name}: relative L2 error {error:.2e} between devices"
