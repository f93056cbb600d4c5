"""Attribution on an accelerator equals attribution on the CPU, weights and inputs alike.

Run by `make gpu-check` (`pytest -m gpu`); skipped where JAX sees no GPU or TPU.
Both sides compute at float32 matmul precision ('highest'): by default XLA may use
TF32 (10-bit significand) for float32 convolutions on recent NVIDIA GPUs, which
would measure TF32's rounding, not the method. The tolerance is a relative L2 error
of 1e-4: float32 sums reassociated differently by two backends differ by ~1e-6
relative per reduction; Score-CAM and occlusion divide and difference such sums.
"""

import concurrent.futures
import os

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
# autoencoder's decoder; it is matrix products, tested in tests/attribution/test_sparse.py),
# but the compositions at_layer(m) and at_neuron(m): they run m, tested here, on what the
# layer methods here also run (the handle's capture and logits_with), and leaving them
# out keeps this step within its share of the GPU check's time.
METHODS = tuple(
    name
    for name, spec in attribution.METHODS.items()
    if (not spec.needs_model or "layer" in spec.options)
    and not spec.composition.startswith(("at_layer", "at_neuron"))
)


def _options(name: str) -> dict:
    """Small settings for every method on 28 x 28 images; what a method requires (a
    neuron, references) included."""
    spec = attribution.METHODS[name]
    options = {"samples": 4} if spec.stochastic and "samples" in spec.options else {}
    if "steps" in spec.options:
        options["steps"] = 16
    if "layer" in spec.options:
        options["layer"] = "conv2"
    if "neuron" in spec.options:
        options["neuron"] = (3, 3, 0)
    if "patch" in spec.options:
        options["patch"] = 7
    if name == "occlusion":
        options["window"] = (4, 4)
    if name.endswith("deeplift_shap"):
        # Drawn on the CPU, as the inputs: two backends' draws may differ in the last bit.
        with jax.default_device(jax.devices("cpu")[0]):
            options["baseline"] = testdata.uniform(jax.random.key(2), (2, 28, 28, 1))
    return options


def _target(name: str):
    """A class per image, or None for the methods that explain a neuron."""
    return None if attribution.METHODS[name].explains == "neuron" else jnp.arange(4)


def every_map(device) -> dict[str, np.ndarray]:
    """Every method's maps of one small CNN, with weights and inputs put on `device`.

    The methods are compiled in threads, one per core (compiling dominates, and XLA
    compiles one program on one thread), then run one after another. The device and
    the matmul precision are per-thread settings, so each thread sets them itself."""
    model = models.get_model("cnn_mnist", features=(8, 16), dense=(32,))
    # Drawn once, on the CPU, and copied: initialisers drawn on two backends may
    # differ in the last bit.
    with jax.default_device(jax.devices("cpu")[0]):
        x = testdata.uniform(jax.random.key(1), (4, 28, 28, 1))
        host_variables = testdata.init(model, x[:1], train=False)
    variables = jax.device_put(host_variables, device)
    images = jax.device_put(x, device)

    def build(name: str):
        with jax.default_device(device), jax.default_matmul_precision("highest"):
            options = _options(name)
            if "baseline" in options:
                options["baseline"] = jax.device_put(options["baseline"], device)
            explain = attribution.explainer(
                name,
                lambda images: model.apply(variables, images),
                model=model,
                variables=variables,
                **options,
            )
            target = _target(name)
            run = attribution.jit_method(name, lambda x, key: explain(x, target, key))
            if attribution.METHODS[name].traceable:
                return run.lower(images, KEY).compile()
            return run

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        runs = dict(zip(METHODS, pool.map(build, METHODS)))
    with jax.default_device(device), jax.default_matmul_precision("highest"):
        return {name: np.asarray(run(images, KEY)) for name, run in runs.items()}


@pytest.fixture(scope="module")
def maps_on_cpu_and_accelerator():
    return every_map(jax.devices("cpu")[0]), every_map(jax.devices()[0])


@pytest.mark.parametrize("name", METHODS)
def test_every_method_on_the_accelerator_equals_the_cpu(name, maps_on_cpu_and_accelerator):
    cpu, accelerator = (maps[name] for maps in maps_on_cpu_and_accelerator)
    assert np.isfinite(accelerator).all()
    error = np.linalg.norm(accelerator - cpu) / max(np.linalg.norm(cpu), 1e-12)
    assert error < 1e-4, f"{name}: relative L2 error {error:.2e} between devices"
