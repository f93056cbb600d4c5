"""Many devices: data parallelism with `jax.sharding`, for training and attribution.

The scheme is the simplest one that scales a small model over many devices:

* One 1-D `Mesh` over the devices, axis 'data' (`make_mesh`).
* Parameters, optimizer state and the device-resident dataset are *replicated*
  (`replicated(mesh)`, `PartitionSpec()`); each batch is *sharded* along its first
  axis (`batch_sharded(mesh)`, `PartitionSpec('data')`).
* The code of a step stays the single-device code. Inside the jitted step the
  batch is constrained to `batch_sharded(mesh)` (`jax.lax.with_sharding_constraint`),
  and XLA's SPMD partitioner turns the batch reductions (the loss mean, batch-norm
  statistics, the gradient) into all-reduces. Results therefore equal
  single-device results up to the order of float reductions.
* Randomness does not depend on the sharding: with `jax_threefry_partitionable`
  (on by default since jax 0.5) the random bits of a sharded array equal the
  unsharded ones, and attribution keys are folded per dataset index
  (`fold_in(key, i)`), so an example's noise does not depend on which device or
  chunk it lands in.

Attribution of a whole dataset (`attribute_dataset`) walks over the dataset in
chunks whose size is a multiple of the device count; each chunk is placed
batch-sharded on the mesh and explained by one jitted program (compiled once).

Several hosts (processes): call `initialize_distributed` first thing (the
`--distributed` flag of experiments/train.py does); `jax.devices()` then lists the
devices of every process, and a mesh over all of them spans the hosts. Every
process runs the same program on the same data; only process 0 writes files.

On a CPU, simulate several devices with
`XLA_FLAGS=--xla_force_host_platform_device_count=4` set before jax starts.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "attribute_dataset",
    "batch_sharded",
    "check_divisible",
    "initialize_distributed",
    "is_main_process",
    "make_mesh",
    "replicated",
]

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None, axis: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh named `axis` over the first `num_devices` of `jax.devices()`
    (None or 0: all of them)."""
    devices = jax.devices()
    n = len(devices) if not num_devices else int(num_devices)
    if n < 0:
        raise ValueError(f"num_devices must be >= 0 (0 = all devices), got {n}")
    if n > len(devices):
        hint = (
            " On a CPU, simulate more devices by starting Python with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n}."
            if jax.default_backend() == "cpu"
            else ""
        )
        raise ValueError(
            f"num_devices={n} but only {len(devices)} {jax.default_backend()} device(s) are "
            f"available; use num_devices <= {len(devices)} (0 = all).{hint}"
        )
    return Mesh(np.asarray(devices[:n]), (axis,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, the dataset)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The first (batch) axis split across the mesh's devices."""
    return NamedSharding(mesh, P(mesh.axis_names[0]))


def check_divisible(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """ValueError unless `batch_size` splits evenly over the mesh's devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"{what} {batch_size} is not divisible by the {n} devices; use a multiple of {n}"
        )


def is_main_process() -> bool:
    """True in process 0, the one that writes files in a multi-process run."""
    return jax.process_index() == 0


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: list[int] | None = None,
    cpu_collectives: str | None = "gloo",
    initialization_timeout: int = 300,
) -> None:
    """`jax.distributed.initialize` for a multi-process (multi-host) run.

    Call it in every process before anything else touches jax. With all arguments
    None, jax detects them on Cloud TPU pods, SLURM and Open MPI; elsewhere pass the
    coordinator's `host:port` (process 0's address), the number of processes and
    this process's id (0 .. num_processes - 1). `cpu_collectives`: the all-reduce
    implementation of CPU processes (XLA:CPU has none across processes by default;
    'gloo' works over TCP); GPUs and TPUs ignore it. None leaves jax's setting.

    `initialization_timeout`: seconds every process waits for the others. A process
    other than 0 first waits that long for the coordinator's port to accept a
    connection and raises a one-line ValueError if it never does: jax's own client
    aborts the interpreter with a C++ stack trace when its connection times out.
    """
    if coordinator_address is not None:
        _host, _, port = str(coordinator_address).rpartition(":")
        if not _host or not port.isdigit():
            raise ValueError(
                "coordinator_address must be host:port (process 0's address and a free "
                f"port, e.g. 10.0.0.1:1234), got {coordinator_address!r}"
            )
    if isinstance(initialization_timeout, bool) or not (
        isinstance(initialization_timeout, int) and initialization_timeout > 0
    ):
        raise ValueError(
            f"initialization_timeout must be a whole number of seconds > 0, got "
            f"{initialization_timeout!r}"
        )
    if coordinator_address is not None and process_id not in (None, 0):
        _wait_for_coordinator(str(coordinator_address), initialization_timeout)
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout,
    )
    logging.info(
        "distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def _wait_for_coordinator(address: str, timeout: float) -> None:
    """Return once ``host:port`` accepts a TCP connection; a one-line ValueError if it
    has not after ``timeout`` seconds (process 0 starts the coordinator service inside
    its own ``jax.distributed.initialize``, so the others may be early)."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            left = max(0.1, deadline - time.monotonic())
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(5, left)):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                reason = error.strerror or type(error).__name__
                raise ValueError(
                    f"no coordinator answers at {address} after {timeout:g} s ({reason}): "
                    "start process 0 with the same address, or check the host and port"
                ) from None
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _typed_key(key: Any) -> jax.Array:
    key = jnp.asarray(key)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if not jnp.issubdtype(key.dtype, jnp.unsignedinteger) or key.ndim != 1:
            raise ValueError(
                f"key must be a PRNG key, e.g. jax.random.key(0), got {key.dtype} of shape "
                f"{key.shape}"
            )
        try:
            key = jax.random.wrap_key_data(key)
        except TypeError:
            raise ValueError(
                f"key data of shape {key.shape} is not a default PRNG key's: pass the key "
                "itself (jax.random.key(0))"
            ) from None
    if key.shape != ():
        raise ValueError(f"key must be a single PRNG key, got shape {key.shape}")
    return key


def _check_chunkable(explain: Any) -> None:
    """A ValueError for an explainer that cannot run in jitted chunks: one the registry
    marks as untraceable (XRAI) or as mixing the examples of a batch (feature
    permutation). A function not made by ``explainer`` is taken as it is."""
    spec = getattr(explain, "spec", None) or getattr(getattr(explain, "func", None), "spec", None)
    if spec is None:  # (a functools.partial of an explainer is checked as the explainer)
        return
    if not spec.traceable:
        raise ValueError(
            f"attribute_dataset runs the explainer inside jax.jit, and {spec.name} cannot be "
            "traced: call it on chunks of the dataset yourself"
        )
    if not spec.per_example:
        raise ValueError(
            f"{spec.name} mixes the examples of a batch (its permutations are across it), so "
            "chunks would change its maps: call it on the whole dataset at once"
        )


def _to_host(array: jax.Array) -> np.ndarray:
    if array.is_fully_addressable:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def attribute_dataset(
    explain: Callable[[jax.Array, Any, jax.Array], jax.Array],
    x: Any,
    target: Any,
    key: Any,
    *,
    mesh: Mesh | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Attributions of a whole dataset, its examples spread over the mesh's devices.

    Args:
      explain: `explain(x, target, keys)`, e.g. `fmi_jax.attribution.explainer(name,
        fn, **options)`; it must be jittable and accept one key per example (XRAI and
        feature permutation, which are not, or mix a batch's examples, are refused).
      x: the inputs, shape (N, ...) (numpy or jax).
      target: None (each example's predicted class), an int, or an int array (N,).
      key: one PRNG key; example i (its index in `x`) gets `fold_in(key, i)`, so the
        result is the same for every device count and every `batch_size`. None for a
        deterministic method (a method that draws noise then asks for one).
      mesh: the devices (default: `make_mesh()`, all of them).
      batch_size: examples per chunk (default min(N, 256)), rounded up to a multiple
        of the device count; the last chunk is padded and the padding dropped.
      progress: show a tqdm bar over the chunks.

    Returns:
      A numpy array, the attributions of all N examples in order.
    """
    mesh = mesh if mesh is not None else make_mesh()
    x = np.asarray(x)
    n = int(x.shape[0]) if x.ndim else 0
    if n == 0:
        raise ValueError(f"x must have a non-empty batch axis first, got shape {x.shape}")
    from fmi_jax.attribution.core import as_target  # here: training needs none of it

    # Targets are checked before they become int32: a class given as int64 would
    # otherwise wrap around into range inside the jitted chunks, where no range check
    # can see it, and a valid class would be explained instead without an error.
    if target is not None and not isinstance(target, (int, np.integer)):
        target = np.asarray(target)
        if target.shape != (n,):
            raise ValueError(f"target must be None, an int or shape ({n},), got {target.shape}")
        target = np.asarray(as_target(target, n))
    elif target is not None:
        target = int(as_target(target, 1)[0])
    _check_chunkable(explain)
    # The key travels as its raw data, placed from the host: a jax key array cannot be
    # placed on the devices of other processes.
    key = None if key is None else _typed_key(key)
    impl = None if key is None else jax.random.key_impl(key)

    devices = mesh.devices.size
    size = min(n, 256) if batch_size is None else int(batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    size = -(-size // devices) * devices
    sharded, repl = batch_sharded(mesh), replicated(mesh)
    per_example_target = isinstance(target, np.ndarray)

    def chunk_fn(xs, ts, key_data, start):
        keys = None
        if key_data is not None:
            key = jax.random.wrap_key_data(key_data, impl=impl)
            indices = start + jnp.arange(size, dtype=jnp.int32)
            keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
            keys = jax.lax.with_sharding_constraint(keys, sharded)
        return explain(xs, ts if per_example_target else target, keys)

    run = jax.jit(
        chunk_fn,
        in_shardings=(sharded, sharded if per_example_target else None, repl, repl),
        out_shardings=sharded,
    )
    key_data = None if key is None else jax.device_put(np.asarray(jax.random.key_data(key)), repl)

    def padded(a: np.ndarray, start: int) -> np.ndarray:
        part = a[start : start + size]
        if len(part) < size:  # repeat the chunk's first example; the copies are dropped
            part = np.concatenate([part, np.repeat(part[:1], size - len(part), axis=0)])
        return part

    outputs = []
    starts = range(0, n, size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="attribution", unit="chunk")
    for start in starts:
        xs = jax.device_put(padded(x, start), sharded)
        ts = jax.device_put(padded(target, start), sharded) if per_example_target else None
        out = run(xs, ts, key_data, jax.device_put(np.int32(start), repl))
        outputs.append(_to_host(out)[: min(size, n - start)])
    return np.concatenate(outputs)
