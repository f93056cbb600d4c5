r"""Seconds for the first call of each attribution method in a fresh process, on the
default CNN (cnn_fmnist, random weights) and a batch of 8 Fashion-MNIST-sized images:
called eagerly through a model handle, eagerly through a plain model function, and
under `jax.jit`; plus the second eager call through the handle. Also the number of
programs XLA compiled for the first eager call through the handle.

    python scripts/time_first_call.py            # every method
    python scripts/time_first_call.py saliency   # some

Prints a Markdown table; docs/performance.md reports what it measured. Each cell runs
in its own process with the persistent compilation cache off, so nothing is compiled
beforehand.
"""

import json
import sys

from fresh_process import run_fresh

# name -> keyword options (a key is added for the methods that draw noise)
METHODS = {
    "saliency": {},
    "integrated_gradients": {"steps": 50},
    "smoothgrad": {"samples": 25},
    "deeplift": {},
    "guided_backprop": {},
    "lrp": {},
    "grad_cam": {"layer": "conv2"},
    "score_cam": {"layer": "conv2"},
    "occlusion": {"window": (7, 7, 1)},
    "layer_integrated_gradients": {"layer": "conv2"},
}
STOCHASTIC = {"smoothgrad"}
PLAIN_OK = {"saliency", "integrated_gradients", "smoothgrad", "deeplift", "guided_backprop"}
PLAIN_OK |= {"lrp", "occlusion"}  # the others look inside the model: a handle only

CHILD = """
import json, sys, time
import jax, jax.numpy as jnp
from fmi_jax import attribution as A, models

compiled = [0]
def count(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        compiled[0] += 1
jax.monitoring.register_event_duration_secs_listener(count)

name, options, stochastic, how = json.loads(sys.argv[1])
model = models.get_model("cnn_fmnist")
x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))
variables = models.init_variables(model, jax.random.key(0), x[:1])
jax.block_until_ready((x, variables))
if stochastic:
    options["key"] = jax.random.key(2)
if "window" in options:
    options["window"] = tuple(options["window"])
method = getattr(A, name)
handle = A.flax_model(model, variables)
fn = handle if how != "plain" else (lambda x: model.apply(variables, x))
call = (lambda: method(fn, x, **options))
if how == "jit":
    jitted = jax.jit(lambda x: method(fn, x, **options))
    call = lambda: jitted(x)
before = compiled[0]
start = time.perf_counter()
jax.block_until_ready(call())
first = time.perf_counter() - start
programs = compiled[0] - before
start = time.perf_counter()
jax.block_until_ready(call())
second = time.perf_counter() - start
print(json.dumps([first, second, programs]))
"""


def _run(name, how):
    spec = [name, METHODS[name], name in STOCHASTIC, how]
    return run_fresh(CHILD, json.dumps(spec), what=f"{name} ({how})")


def main():
    names = sys.argv[1:] or list(METHODS)
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        print(
            f"error: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}",
            file=sys.stderr,
        )
        sys.exit(2)
    print(
        "| method | handle, eager: first call (s) | programs compiled | second call (s) "
        "| plain function, eager: first call (s) | handle under `jax.jit`: first call (s) |"
    )
    print("|---|---|---|---|---|---|")
    for name in names:
        first, second, programs = _run(name, "handle")
        plain = f"{_run(name, 'plain')[0]:.1f}" if name in PLAIN_OK else "(needs a handle)"
        jitted = _run(name, "jit")[0]
        print(
            f"| {name} | {first:.1f} | {programs} | {second:.2f} | {plain} | {jitted:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
