"""`Trainer`: one training run's compiled state and its epochs, without the run folder.

`train_and_evaluate` (fmi_jax.train.loop) wraps a Trainer with what a run folder
needs (the config claim, resume, metrics.jsonl, TensorBoard, Ctrl-C); the training
benchmark (fmi_jax.benchmark.training) times a Trainer's epochs. Both drive the same
object, so what the benchmark times is what a training run executes.

Construction does the setup from the config:
  the model (`model_from_config(config.model)`), the optimizer and learning-rate
  schedule (`optim.make_optimizer`), the keys `init_key, data_key, train_key` split
  from `config.seed`, the state (`create_train_state`, committed to the device),
  `train_step` bound with the schedule, the augmentation and the task, the loop
  ('step' or 'scan', see `choose_loop`) and its steps per dispatch, the jitted
  dispatch and the metrics window (`config.log_every_steps`).

All randomness is a function of (config.seed, epoch, optimizer step): an epoch's
batches are `fold_in(data_key, epoch)`'s permutation, a step's dropout and
augmentation key is `fold_in(train_key, step)`. A Trainer restored from a checkpoint
therefore continues exactly as an uninterrupted one.

Placement: `mesh=None` puts the state on `jax.devices()[0]` and leaves the data
uncommitted; with a mesh (fmi_jax.parallel.make_mesh) the state, keys and data are
replicated on it and each batch is sharded along its first axis inside the jitted
steps (data parallelism).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax import models, parallel, runs
from fmi_jax.train import checkpoint as ckpt_lib
from fmi_jax.train import optim
from fmi_jax.train import tasks as tasks_lib
from fmi_jax.train.input_pipeline import DeviceDataset, eval_batches, gather_batch
from fmi_jax.train.steps import TrainState, create_train_state, eval_step, train_step

__all__ = [
    "CountingJit",
    "EpochStats",
    "NonFiniteLossError",
    "Trainer",
    "choose_loop",
    "compute_dtype",
    "dispatch_plan",
    "evaluate_dataset",
    "make_eval_fn",
    "model_from_config",
]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


# --------------------------------------------------------------------------- config helpers
def compute_dtype(name: str) -> str:
    """A model's compute dtype: 'auto' is bfloat16 on GPUs and TPUs (parameters stay
    float32; logits are cast back to float32) and float32 on CPUs, where bfloat16
    matmuls are emulated and slower."""
    if name != "auto":
        return name
    return "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"


def model_from_config(model_config: Mapping[str, Any], *, dtype: str | None = None):
    """The model `model_config` describes. `dtype`, when given, replaces its compute
    dtype (models without one, like the sparse autoencoders, compute in float32)."""
    kwargs = {
        k: (tuple(v) if isinstance(v, list) else v)
        for k, v in dict(model_config).items()
        if k != "name"
    }
    if "dtype" in kwargs:
        kwargs["dtype"] = compute_dtype(kwargs["dtype"])
    model = models.get_model(model_config["name"], **kwargs)
    if dtype is not None and "dtype" in getattr(model, "__dataclass_fields__", {}):
        model = model.clone(dtype=compute_dtype(dtype))
    return model


def choose_loop(config: Any) -> str:
    """`config.loop`, with 'auto' resolved: 'scan' (`lax.scan` over
    `steps_per_dispatch` steps per call) on every backend (see fmi_jax.train.loop on
    why); 'step' (one jitted call per optimizer step) only when asked for."""
    loop = config.get("loop", "auto")
    if loop == "auto":
        return "scan"
    if loop not in ("step", "scan"):
        raise ValueError(f"config.loop must be 'auto', 'step' or 'scan', got {loop!r}")
    return loop


def _put(tree: Any, place: Any) -> Any:
    """`jax.device_put(tree, place)`. Across processes jax only places host values (the
    same on every process) onto a sharding with other processes' devices, so the
    tree goes through the host there."""
    if jax.process_count() > 1:
        tree = jax.device_get(tree)
    return jax.device_put(tree, place)


def _largest_divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, min(n, max(k, 1)) + 1) if n % d == 0)


def dispatch_plan(steps: int, per_dispatch: int) -> tuple[int, int]:
    """`(chunk, tail)`: an epoch of `steps` optimizer steps runs as dispatches of `chunk`
    steps, the last one `tail` steps long when `tail` > 0.

    The largest divisor of `steps` up to `per_dispatch` when it is at least half of
    `per_dispatch` (every dispatch alike: one program); otherwise `per_dispatch` steps
    and a shorter last dispatch (a second program, compiled once). A prime number of
    steps (859 at batch 64 on 55,000 images) would otherwise run one step per dispatch.
    """
    k = max(1, min(int(per_dispatch), int(steps)))
    d = _largest_divisor_at_most(int(steps), k)
    return (d, 0) if 2 * d >= k else (k, int(steps) % k)


# --------------------------------------------------------------------------- jitted steps
class CountingJit:
    """`jax.jit(fn, **kwargs)` that counts how often `fn` is traced.

    Each trace of a new input signature is followed by a compile, so `traces` is
    the number of programs this run compiled for `fn`.
    """

    def __init__(self, fn, **jit_kwargs):
        self.traces = 0
        self.fn = fn  # uncounted and unjitted, for analysis (jax.make_jaxpr)

        def counted(*args):
            self.traces += 1
            return fn(*args)

        self._jitted = jax.jit(counted, **jit_kwargs)

    def __call__(self, *args):
        return self._jitted(*args)


def make_eval_fn(task: tasks_lib.Task | None = None, mesh: jax.sharding.Mesh | None = None):
    """Jitted `eval_step` (a `CountingJit`). Batches have one fixed shape for every split
    (the last is padded and masked), so this compiles once per run. With a mesh, each
    batch is sharded over its devices and the sums come back replicated."""
    step = functools.partial(eval_step, task=task or tasks_lib.classification())
    if mesh is None:
        return CountingJit(step)

    def sharded_step(state, batch):
        batch = jax.lax.with_sharding_constraint(batch, parallel.batch_sharded(mesh))
        return step(state, batch)

    return CountingJit(sharded_step, out_shardings=parallel.replicated(mesh))


def _make_chunk_runner(step_fn, batch_size: int, chunk: int, loop: str, mesh=None):
    """A jitted `(state, data, perm, start, key) -> (state, metrics)` running `chunk` steps.

    With a mesh, each gathered batch is sharded over its devices and the new state
    and the metrics come back replicated (the same shardings as the inputs, so the
    step compiles once)."""
    jit_kwargs: dict[str, Any] = {"donate_argnums": 0}
    if mesh is not None:
        jit_kwargs["out_shardings"] = parallel.replicated(mesh)

    def one(state, data, perm, i, key):
        batch = gather_batch(data, perm, i, batch_size)
        if mesh is not None:
            batch = jax.lax.with_sharding_constraint(batch, parallel.batch_sharded(mesh))
        return step_fn(state, batch, jax.random.fold_in(key, state.step))

    if loop == "step":
        return CountingJit(one, **jit_kwargs)

    def many(state, data, perm, start, key):
        def body(s, i):
            return one(s, data, perm, start + i, key)

        return jax.lax.scan(body, state, jnp.arange(chunk))

    return CountingJit(many, **jit_kwargs)


# --------------------------------------------------------------------------- evaluation
@jax.jit
def _take(data: DeviceDataset, idx: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    return {"image": data.images[idx], "label": data.labels[idx], "mask": mask}


def evaluate_dataset(
    state: TrainState,
    data: DeviceDataset,
    *,
    batch_size: int,
    class_names,
    eval_fn=None,
    task: tasks_lib.Task | None = None,
) -> dict[str, Any]:
    """The task's report of `state` on a device dataset (default, classification:
    loss, accuracy, precision, recall, F1)."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    task = task or tasks_lib.classification()
    eval_fn = eval_fn or make_eval_fn(task)
    totals = None
    for idx, mask in eval_batches(len(data), batch_size):
        sums = eval_fn(state, _take(data, idx, mask))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return task.report(jax.device_get(totals), class_names)


# --------------------------------------------------------------------------- host metrics
def _unstack(window: list[dict[str, np.ndarray]], stacked: bool) -> list[dict[str, np.ndarray]]:
    """Per-step metrics of a window of dispatches (a scan's are stacked along axis 0)."""
    if not stacked:
        return window
    return [{k: v[i] for k, v in m.items()} for m in window for i in range(len(m["loss"]))]


def _check_finite(
    window: list[dict[str, np.ndarray]], first_step: int, epoch: int, steps_per_epoch: int
) -> None:
    for offset, m in enumerate(window):
        if not np.isfinite(m["loss"]):
            step = first_step + offset
            prev = window[offset - 1] if offset else None
            raise NonFiniteLossError(
                f"training loss is {m['loss']} at optimizer step {step} (epoch {epoch}, batch "
                f"{step - (epoch - 1) * steps_per_epoch + 1} of {steps_per_epoch}); gradient norm "
                f"{m['grad_norm']:.4g}, parameter norm {m['param_norm']:.4g}, learning rate "
                f"{m['learning_rate']:.4g}"
                + (f", previous loss {prev['loss']:.4g}" if prev else "")
                + ". Lower --config.learning_rate or set --config.grad_clip_norm (another "
                "config is another run: give it a new --workdir), or check the data. The "
                "checkpoints of finished epochs are untouched."
            )


def _state_tree(state: TrainState) -> dict[str, Any]:
    """What a checkpoint holds of a state (the rest is rebuilt from the config)."""
    return {
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "step": state.step,
    }


@dataclasses.dataclass
class EpochStats:
    """What `Trainer.run_epoch` measured, read on the host.

    `sums`: each step metric summed over the `steps` steps run so far; `last`: the
    latest step's metrics; `time_s`: wall seconds of the epoch (its permutation and
    every dispatch); `compile_s`: seconds of the dispatches that compiled (the
    trainer's first, and the first shorter last dispatch of an epoch, see
    `dispatch_plan`) when this epoch held any (else None), `compile_steps` their steps."""

    epoch: int
    steps: int = 0
    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    last: dict[str, Any] = dataclasses.field(default_factory=dict)
    time_s: float = 0.0
    compile_s: float | None = None
    compile_steps: int = 0

    def mean(self, name: str) -> float:
        return self.sums[name] / self.steps

    def images_per_s(self, batch_size: int) -> float:
        """Training throughput; the compiling dispatches are left out when there is more."""
        steps, seconds = self.steps, self.time_s
        if self.compile_s is not None and self.steps > self.compile_steps:
            steps, seconds = self.steps - self.compile_steps, self.time_s - self.compile_s
        return steps * batch_size / seconds


WindowHook = Callable[[list[dict[str, np.ndarray]], EpochStats], None]


# --------------------------------------------------------------------------- the trainer
def _logit_width(model: Any, image_shape: tuple[int, ...]) -> int | None:
    """The last axis of `model`'s output for one image (traced, nothing computed); None
    when the output is not (1, classes)."""

    def logits(x):
        variables = models.init_variables(model, jax.random.key(0), x, train=False)
        return model.apply(variables, x, train=False)

    try:
        out = jax.eval_shape(logits, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
    except Exception:  # noqa: BLE001  (the steps report a model that cannot run)
        return None
    shape = getattr(out, "shape", ())
    return int(shape[-1]) if len(shape) == 2 else None


class Trainer:
    """A training run of `config` on uint8 NHWC `images` and int `labels`, in memory.

    Attributes: `config`, `model`, `task`, `state` (the current TrainState; assign a
    placed one, see `put`), `data` (the training DeviceDataset), `batch_size`,
    `steps_per_epoch`, `loop` ('step' or 'scan'), `chunk` (optimizer steps per
    dispatch) and `tail` (the steps of a shorter last dispatch of each epoch, 0 when
    there is none; see `dispatch_plan`), `log_every` (steps between reads of the
    metrics window, a multiple of `chunk`), `mesh`, `schedule`, `data_key`,
    `train_key`, `num_params`, `dispatches` (how many dispatches this trainer ran).

    `model`, when given, is used instead of `model_from_config(config.model)`.
    """

    def __init__(
        self,
        config: Any,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        mesh: jax.sharding.Mesh | None = None,
        model: Any = None,
    ):
        self.config = config
        self.mesh = mesh
        # One device: the state is committed to it, the data left uncommitted.
        # A mesh: both replicated on it; batches are sharded inside the jitted steps.
        self._place = jax.devices()[0] if mesh is None else parallel.replicated(mesh)
        self._data_place = None if mesh is None else self._place
        self.model = model if model is not None else model_from_config(config.model)
        # The classes the model scores (the zoo's models say; another classifier's are
        # the width of its logits): every label must be one of them, or its examples
        # would be trained on and evaluated as no class at all.
        self._num_classes = getattr(self.model, "num_classes", None)
        if self._num_classes is None and config.get("task", "classification") == "classification":
            self._num_classes = _logit_width(self.model, images.shape[1:])
        self.data = self.device_dataset(images, labels)
        self.batch_size = int(config.batch_size)
        self.steps_per_epoch = self.data.steps_per_epoch(self.batch_size)
        self.task = tasks_lib.task_from_config(config)
        tx, self.schedule = optim.make_optimizer(config, self.steps_per_epoch)
        init_key, data_key, train_key = jax.random.split(jax.random.key(config.seed), 3)
        # Committed to the device like restored checkpoints are: committedness is part of
        # the jit cache key, and a mix would compile the steps twice.
        self.state = self.put(create_train_state(self.model, init_key, images.shape[1:], tx))
        if mesh is not None:
            data_key, train_key = (
                jax.random.wrap_key_data(self.put(jax.random.key_data(k)))
                for k in (data_key, train_key)
            )
        self.data_key, self.train_key = data_key, train_key
        self.num_params = int(sum(x.size for x in jax.tree.leaves(self.state.params)))

        augmentation = dict(runs.plain(config.get("augment", {})) or {})
        step_fn = functools.partial(
            train_step,
            schedule=self.schedule,
            augmentation={k: v for k, v in augmentation.items() if v},
            task=self.task,
        )
        self.loop = choose_loop(config)
        self.chunk, self.tail = (
            (1, 0)
            if self.loop == "step"
            else dispatch_plan(self.steps_per_epoch, int(config.get("steps_per_dispatch", 50)))
        )
        self._runners: dict[int, CountingJit] = {}
        self._make_runner = functools.partial(
            _make_chunk_runner, step_fn, self.batch_size, loop=self.loop, mesh=mesh
        )
        self._run_chunk = self._runner(self.chunk)
        self._eval_fn = make_eval_fn(self.task, mesh)
        self.log_every = max(1, int(config.get("log_every_steps", 50)) // self.chunk) * self.chunk
        self.dispatches = 0  # dispatches run by this trainer

    @property
    def num_classes(self) -> int | None:
        """The classes the model scores: its ``num_classes``, or else the width of a
        classifier's logits; None for other tasks."""
        return self._num_classes if isinstance(self._num_classes, int) else None

    # ------------------------------------------------------------------ placement
    def put(self, tree: Any) -> Any:
        """`tree` placed as the state is: on the device, or replicated on the mesh."""
        return _put(tree, self._place)

    def device_dataset(self, images: np.ndarray, labels: np.ndarray) -> DeviceDataset:
        """Images and labels on the device(s), placed as the training data is, of the
        training images' shape (the model's parameters are shaped by it)."""
        trained = getattr(getattr(self, "data", None), "images", None)
        if trained is not None and np.shape(images)[1:] != trained.shape[1:]:
            raise ValueError(
                f"images of shape {tuple(np.shape(images)[1:])} for a model trained on "
                f"{tuple(trained.shape[1:])}: resize or crop them to the training images' shape"
            )
        return DeviceDataset.from_numpy(
            images, np.asarray(labels), self._data_place, num_classes=self.num_classes
        )

    # ------------------------------------------------------------------ compiles
    def _runner(self, steps: int) -> CountingJit:
        """The jitted dispatch of `steps` steps (made on first use)."""
        if steps not in self._runners:
            self._runners[steps] = self._make_runner(steps)
        return self._runners[steps]

    @property
    def programs(self) -> int:
        """Dispatch programs a whole epoch needs: 1, or 2 with a shorter last dispatch."""
        return 1 + (self.tail > 0)

    @property
    def compiles(self) -> int:
        """Programs compiled for the training dispatches: `programs` once whole epochs
        have run, one more for each other dispatch length (`run_epoch(steps=...)`)."""
        return sum(runner.traces for runner in self._runners.values())

    @property
    def dispatch_fn(self):
        """The pure function one `dispatch` runs jitted, `(state, data, perm, start,
        key) -> (state, metrics)`, for analysis (tracing it compiles nothing and
        leaves `compiles` alone)."""
        return self._run_chunk.fn

    @property
    def eval_compiles(self) -> int:
        """Programs compiled for the evaluation step."""
        return self._eval_fn.traces

    # ------------------------------------------------------------------ training
    def permutation(self, epoch: int) -> jax.Array:
        """The order of the training examples in `epoch`."""
        perm = self.data.epoch_permutation(self.data_key, epoch)
        return perm if self.mesh is None else self.put(perm)

    def dispatch(self, perm: jax.Array, start: int, steps: int | None = None) -> Any:
        """Runs `steps` (default `chunk`) optimizer steps on the batches `start, start + 1,
        ...` of `perm`; updates `state` (the old one is donated) and returns the steps'
        metrics, still on the device (stacked along a first axis of `steps` for the
        'scan' loop)."""
        steps = self.chunk if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"a dispatch runs at least one step, not {steps}")
        if self.loop == "step" and steps != 1:
            raise ValueError(f"the 'step' loop dispatches one step at a time, not {steps}")
        run = self._runner(steps)
        self.state, metrics = run(self.state, self.data, perm, start, self.train_key)
        self.dispatches += 1
        return metrics

    def run_epoch(
        self,
        epoch: int,
        *,
        steps: int | None = None,
        on_window: WindowHook | None = None,
        before_dispatch: Callable[[], None] | None = None,
    ) -> EpochStats:
        """Runs the first `steps` steps (None: all) of `epoch` (1-based, as the optimizer
        step `(epoch - 1) * steps_per_epoch` starts it), dispatch by dispatch: `chunk`
        steps at a time, the last dispatch shorter where `steps` (or the epoch) ends
        (a length not planned by `dispatch_plan` compiles once more).

        Every `log_every` steps and at the end, the metrics window is read to the host,
        checked (`NonFiniteLossError` names the first non-finite step) and summed, and
        `on_window(window, stats)` is called with its per-step metrics and the running
        stats. `before_dispatch()` is called before each dispatch (the loop stops there
        on Ctrl-C). A dispatch that compiles (the trainer's first, the first shorter
        last one) is waited for and timed apart (`EpochStats.compile_s`)."""
        n = self.steps_per_epoch if steps is None else int(steps)
        stats = EpochStats(epoch=epoch)
        epoch_start = time.perf_counter()
        perm = self.permutation(epoch)
        window: list[Any] = []
        window_first_step = (epoch - 1) * self.steps_per_epoch
        for start in range(0, n, self.chunk):
            length = min(self.chunk, n - start)
            if before_dispatch is not None:
                before_dispatch()
            if self._runner(length).traces == 0:  # this dispatch compiles: timed apart,
                jax.block_until_ready(self.state)  # after the dispatches queued before it
                t0 = time.perf_counter()
                m = jax.block_until_ready(self.dispatch(perm, start, length))
                stats.compile_s = (stats.compile_s or 0.0) + time.perf_counter() - t0
                stats.compile_steps += length
            else:
                m = self.dispatch(perm, start, length)
            window.append(m)
            done = start + length
            if done % self.log_every == 0 or done == n:
                host = _unstack(jax.device_get(window), stacked=self.loop == "scan")
                _check_finite(host, window_first_step, epoch, self.steps_per_epoch)
                for m_ in host:
                    for k, v in m_.items():
                        stats.sums[k] = stats.sums.get(k, 0.0) + float(v)
                stats.last = host[-1]
                stats.steps = done
                if on_window is not None:
                    on_window(host, stats)
                window, window_first_step = [], (epoch - 1) * self.steps_per_epoch + done
        stats.time_s = time.perf_counter() - epoch_start
        return stats

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        data: DeviceDataset,
        *,
        class_names=None,
        state: TrainState | None = None,
        batch_size: int | None = None,
    ) -> dict[str, Any]:
        """The task's report of `state` (default: the current one) on `data` (see
        `device_dataset`), in batches of `batch_size` (default config.eval_batch_size)."""
        return evaluate_dataset(
            self.state if state is None else state,
            data,
            batch_size=int(batch_size or self.config.eval_batch_size),
            class_names=class_names,
            eval_fn=self._eval_fn,
            task=self.task,
        )

    # ------------------------------------------------------------------ checkpoints
    def save(self, ckpt: ckpt_lib.Checkpoints, epoch: int, **meta: Any) -> None:
        """Saves the state as `epoch`'s checkpoint (`meta`: Checkpoints.save's keywords,
        e.g. architecture and metrics)."""
        ckpt.save(epoch, _state_tree(self.state), **meta)

    def checkpoint_state(self, ckpt: ckpt_lib.Checkpoints, epoch: int) -> TrainState:
        """`epoch`'s checkpointed state, placed as the state is (`state` is unchanged)."""
        restored = ckpt.restore(epoch, _state_tree(self.state))
        # orbax restores onto the target's shardings; put again to be sure of it.
        return self.put(self.state.replace(**restored))

    def restore(self, ckpt: ckpt_lib.Checkpoints, epoch: int) -> None:
        """Continues from `epoch`'s checkpoint: `state` becomes its state."""
        self.state = self.checkpoint_state(ckpt, epoch)
