r"""Every benchmark method, timed under each convolution implementation of
fmi_jax.models.layers, interleaved in one process.

    python scripts/compare_convs.py --batch=64 --convs=im2col,hybrid
    python scripts/compare_convs.py --batch=256 --methods=saliency,grad_cam --rounds=5

The model is configs/benchmark.py's (freshly initialised: the time does not depend on
the weights), the images Fashion-MNIST's test set, the options the benchmark's. Each
method is compiled once per implementation, then timed in `--rounds` rounds that
visit every implementation in turn (so drift hits all alike); each sample is
back-to-back calls lasting at least `--sample_s`. Prints one line per method: the
median milliseconds per call of each implementation. docs/performance.md reports
what it measured.
"""

import statistics
import sys
import time
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

import configs  # noqa: E402
from fmi_jax import data, models  # noqa: E402
from fmi_jax.benchmark import runner  # noqa: E402
from fmi_jax.models import layers  # noqa: E402
from fmi_jax.train.input_pipeline import to_float  # noqa: E402

_BATCH = flags.DEFINE_integer("batch", 64, "Images per call.")
_METHODS = flags.DEFINE_list(
    "methods", [m for m in configs.load("benchmark").methods if m != "infidelity"], "Rows."
)
_CONVS = flags.DEFINE_list("convs", ["im2col", "hybrid"], "layers.CONV_IMPLEMENTATIONS.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Samples per implementation.")
_SAMPLE_S = flags.DEFINE_float("sample_s", 0.3, "Least seconds of calls per sample.")


def _call(name, options, model, variables, x, conv):
    with layers.use_conv(conv):
        fn = jax.jit(lambda x: model.apply(variables, x))
        target = jnp.argmax(fn(x), -1)
        if name in runner.METRICS:
            call = runner.jax_metric_call(name, fn, options, model, variables)
        else:
            call = runner.jax_method_call(name, fn, options, model, variables)
        jax.block_until_ready(call(x, target))  # traced and compiled with `conv`
    return call, target


def main(argv):
    del argv
    config = configs.load("benchmark")
    unknown = [m for m in _METHODS.value if m not in runner.REFERENCES or m == "infidelity"]
    if unknown:
        raise app.UsageError(f"--methods: cannot time {unknown} here")
    model = models.get_model(config.model_name)
    images = data.load(config.data_name, "test", download=False).images[: _BATCH.value]
    x = to_float(jnp.asarray(images))
    variables = model.init(jax.random.key(0), x[:1])
    for name in _METHODS.value:
        options = dict(config.options.get(name, {}))
        calls = {c: _call(name, options, model, variables, x, c) for c in _CONVS.value}
        times: dict[str, list[float]] = {c: [] for c in calls}
        for _ in range(_ROUNDS.value):
            for conv, (call, target) in calls.items():
                time.sleep(0.1)
                start, n = time.perf_counter(), 0
                while time.perf_counter() - start < _SAMPLE_S.value:
                    jax.block_until_ready(call(x, target))
                    n += 1
                times[conv].append((time.perf_counter() - start) / n)
        medians = {c: f"{statistics.median(v) * 1e3:.1f}" for c, v in times.items()}
        print(name, _BATCH.value, medians, flush=True)


if __name__ == "__main__":
    app.run(main)
