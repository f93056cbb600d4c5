"""Adversarial robustness of a classifier: FGSM, PGD, and the smallest perturbation that
changes a prediction.

The fast gradient sign method (Goodfellow, Shlens & Szegedy 2015, "Explaining and
Harnessing Adversarial Examples", arXiv:1412.6572) takes one step of size ``epsilon``
along the sign of the loss gradient::

    x' = clip(x + epsilon * sign(grad_x L(f(x), y)))          (untargeted, y = true class)
    x' = clip(x - epsilon * sign(grad_x L(f(x), t)))          (targeted, t = class to reach)

Projected gradient descent (Madry, Makelov, Schmidt, Tsipras & Vladu 2018, "Towards Deep
Learning Models Resistant to Adversarial Attacks", arXiv:1706.06083) repeats such steps
and projects back onto the ball ``||x' - x|| <= radius`` after each one::

    x_{k+1} = clip(P_radius(x_k + step_size * d(grad_x L(f(x_k), y))))

where ``d`` is the steepest-ascent direction *of the ball's norm*: ``sign(g)`` for the
L-infinity ball and ``g / ||g||_2`` for the L2 ball, ``P_radius`` clamps every feature
to ``[x - radius, x + radius]`` (L-infinity) or rescales the whole perturbation to
length ``radius`` when it is longer (L2), and ``clip`` keeps the input in ``bounds``
(``(0, 1)`` for images scaled like fmi_jax's). ``random_start`` begins at a uniform
point of the ball instead of at ``x``.

:func:`min_perturbation` finds, for every example, the smallest value of a perturbation's
parameter (a noise level, an attack's ``epsilon``, the number of most-attributed pixels
removed by :func:`top_k_removal`) at which the model's prediction changes: Captum's
``MinParamPerturbation``.

Conventions and defaults follow Captum's ``captum.robust`` (0.9), with these
differences (docs/captum.md derives each):

* The loss is of the *logits* ``fn`` returns: cross-entropy ``-log softmax(f(x))_y`` by
  default, or any ``loss(logits, target) -> (B,)``. Captum's default loss is
  ``-log(output)``, i.e. it assumes the model outputs probabilities. On logits its
  gradient is ``-grad z_y / z_y``: it lowers the target logit ``z_y`` where it is
  positive and *raises* it where it is negative (the loss itself is NaN there), so
  Captum users pass ``loss_func=CrossEntropyLoss(reduction='none')`` to get this
  default.
* ``target=None`` attacks each example's predicted class (Captum requires the labels).
* L2 PGD steps along ``g / ||g||_2``. Captum's ``PGD(norm='L2')`` steps along
  ``sign(g)`` (FGSM's step) and only projects onto the L2 ball, which is not ascent in
  L2: on a linear model it stays on the direction ``sign(w)`` and never reaches the
  ball's worst case ``x + radius * w / ||w||_2``.
* A gradient element counts as zero only when it is exactly zero
  (``zero_threshold=0.0``). Captum leaves a feature unchanged when its gradient is at
  most ``1e-6`` in magnitude. The cross-entropy gradient is
  ``sum_{k != y} p_k (grad z_k - grad z_y)``, which shrinks with ``1 - p_y``, so for a
  confidently classified example it can fall below any fixed threshold everywhere,
  and the step then does nothing although the gradient has a sign.
  ``zero_threshold=1e-6`` reproduces Captum.
* :func:`min_perturbation` answers per example, not for a whole batch (Captum's default
  ``correct_fn`` asks whether *all* examples are still right, so its parameter is that
  of the first example to change), and it takes the parameter values as an array
  instead of Captum's ``arg_min``, ``arg_max`` and ``arg_step``, whose floating-point
  accumulation can add or lose the last value.

Memory: the attacks run ``batch_size`` examples at a time (one forward and backward pass
of the chunk per step), and :func:`min_perturbation` evaluates ``batch_size`` perturbed
inputs at a time, through :func:`fmi_jax.attribution.map_over_samples`. The inputs, the
targets, ``epsilon``, ``radius``, ``step_size``, ``mask``, ``aux`` and ``key`` can be
traced, so the functions can be wrapped in ``jax.jit`` whole (the checks on values are
then skipped); ``bounds``, ``steps``, ``norm``, ``params``, ``attempts`` and ``mode``
shape the computation and must be concrete (close over them). A perturbation that runs
the model (PGD inside ``perturb``) can round differently in chunks of another size; like
any computation on floats, its result may then move by a rounding error and, at a
boundary, change which parameter is the first to succeed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmi_jax.attribution.core import (
    Array,
    ModelFn,
    Target,
    as_baseline,
    as_count,
    as_input,
    check_finite,
    example_keys,
    map_over_samples,
    per_example,
    refuse_one_output,
    resolve_target,
    select_target,
)

__all__ = [
    "ATTACK_NORMS",
    "SEARCH_MODES",
    "Loss",
    "Perturbation",
    "MinPerturbation",
    "cross_entropy",
    "fgsm",
    "pgd",
    "min_perturbation",
    "top_k_removal",
]

ATTACK_NORMS = ("linf", "l2")
SEARCH_MODES = ("linear", "binary")

Loss = Callable[[Array, Array], Array]
"""``loss(logits (B, classes), target (B,)) -> (B,)``: the per-example loss an attack
increases (or, targeted, decreases)."""

Perturbation = Callable[[Array, Array, Any, Any], Array]
"""``perturb(x_i, param, key, aux_i) -> x_i'`` on one example (no batch axis)."""


def cross_entropy(logits: Array, target: Array) -> Array:
    """``-log softmax(logits)[i, target[i]]`` per row: the default loss of the attacks
    (zero, with a zero gradient, for a model with one output: refused)."""
    refuse_one_output(logits, "the cross-entropy of its target", "pass a loss= of the logit")
    return -select_target(jax.nn.log_softmax(logits, axis=-1), target)


def _is_tracer(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def _as_size(value: Any, name: str) -> Any:
    """A finite number >= 0 (a traced value passes unchecked, so that an attack can be
    the perturbation of :func:`min_perturbation`, whose parameter is traced)."""
    if _is_tracer(value):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}") from None
    if not (np.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def _concrete(value: Any, name: str) -> None:
    if any(_is_tracer(leaf) for leaf in jax.tree.leaves(value)):
        raise ValueError(
            f"{name} must be concrete (it shapes the computation): close over it instead "
            "of passing it through jax.jit as an argument"
        )


def _as_bounds(bounds: Any) -> tuple[float, float]:
    _concrete(bounds, "bounds")
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(
            f"bounds must be a pair (low, high) of numbers, e.g. (0.0, 1.0) for images in "
            f"[0, 1], got {bounds!r}"
        ) from None
    if np.isnan(low) or np.isnan(high) or not low < high:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}")
    return low, high


def _as_norm(norm: Any) -> str:
    name = norm.lower() if isinstance(norm, str) else norm
    if name not in ATTACK_NORMS:
        raise ValueError(f"norm must be one of {ATTACK_NORMS}, got {norm!r}")
    return name


def _as_mask(mask: Any, x: Array) -> Array:
    """``mask`` broadcast to ``x.shape`` (one example's shape or the batch's); ones when
    None."""
    return jnp.ones_like(x) if mask is None else as_baseline(mask, x, "mask", scaled=False)


def _check_loss(loss: Loss, fn: ModelFn, x: Array, target: Array) -> None:
    """A ValueError unless ``loss(fn(x), target)`` has one value per example."""
    out = jax.eval_shape(lambda x: loss(fn(x), target), x)
    if getattr(out, "shape", None) != (x.shape[0],):
        raise ValueError(
            f"loss must map logits (N, classes) and targets (N,) to one loss per example "
            f"({x.shape[0]},), got {getattr(out, 'shape', type(out).__name__)}"
        )


def _attack_target(fn: ModelFn, x: Array, target: Target, targeted: bool, batch_size) -> Array:
    if targeted and target is None:
        raise ValueError(
            "a targeted attack needs target= the class (or classes) to reach; "
            "target=None means the predicted class, which the input already reaches"
        )
    return resolve_target(fn, x, target, batch_size=batch_size)


def _flat_l2(values: Array) -> Array:
    """The Euclidean norm of every example, shaped to broadcast against ``values``."""
    return per_example(
        jnp.sqrt(jnp.sum(jnp.square(values.reshape(values.shape[0], -1)), 1)), values
    )


def _direction(grad: Array, mask: Array, norm: str, zero_threshold: float) -> Array:
    """The unit step of steepest ascent of the loss in ``norm``, on the masked features."""
    if norm == "linf":
        return jnp.where(jnp.abs(grad) > zero_threshold, jnp.sign(grad), 0.0) * mask
    grad = jnp.where(jnp.abs(grad) > zero_threshold, grad, 0.0) * mask
    length = _flat_l2(grad)
    return jnp.where(length > 0, grad / jnp.where(length > 0, length, 1.0), 0.0)


def _project(delta: Array, radius: Any, norm: str) -> Array:
    """The closest point of the ``norm`` ball of ``radius`` to ``delta`` (per example)."""
    if norm == "linf":
        return jnp.clip(delta, -radius, radius)
    length = _flat_l2(delta)
    return delta * jnp.minimum(1.0, radius / jnp.where(length > 0, length, 1.0))


def _random_start(key: Array, shape: tuple[int, ...], radius: Any, norm: str) -> Array:
    """A uniform point of the ``norm`` ball of ``radius`` around 0, for one example."""
    if norm == "linf":
        return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0) * radius
    direction_key, radius_key = jax.random.split(key)
    u = jax.random.normal(direction_key, shape)
    u = u / jnp.maximum(jnp.sqrt(jnp.sum(u * u)), jnp.finfo(jnp.float32).tiny)
    size = math.prod(shape)
    return u * radius * jax.random.uniform(radius_key) ** (1.0 / size)


def _gradient_attack(
    fn: ModelFn,
    x: Array,
    target: Target,
    *,
    loss: Loss | None,
    targeted: bool,
    mask: Any,
    bounds: Any,
    zero_threshold: Any,
    batch_size: int | None,
    key: Array | None,
    steps: int,
    step_size: Any,
    radius: Any,
    norm: str,
    random_start: bool,
) -> Array:
    """What FGSM and PGD share: ``steps`` projected steps, ``batch_size`` examples at a time."""
    x = as_input(x)
    low, high = _as_bounds(bounds)
    if not _is_tracer(x):
        span = float(np.min(np.asarray(x))), float(np.max(np.asarray(x)))
        if span[0] < low or span[1] > high:
            raise ValueError(
                f"x lies outside bounds=({low}, {high}) (its values span [{span[0]}, "
                f"{span[1]}]): pass the bounds of the model's input scale"
            )
    zero_threshold = _as_size(zero_threshold, "zero_threshold")
    loss = cross_entropy if loss is None else loss
    if not callable(loss):
        raise ValueError(f"loss must be a callable loss(logits, target) -> (N,), got {loss!r}")
    target = _attack_target(fn, x, target, targeted, batch_size)
    _check_loss(loss, fn, x, target)
    mask = _as_mask(mask, x)
    sign = -1.0 if targeted else 1.0
    if random_start:
        if key is None:
            raise ValueError(
                "random_start=True draws random numbers: pass key=jax.random.key(seed)"
            )
        keys = example_keys(key, x.shape[0])
    else:
        keys = jnp.zeros((x.shape[0],), jnp.int32)

    def grad_of_loss(inputs: Array, labels: Array) -> Array:
        return jax.grad(lambda z: jnp.sum(loss(fn(z), labels)))(inputs)

    def attack(example: Array, _: Array) -> Array:
        start, labels, weights = x[example], target[example], mask[example]
        current = start
        if random_start:
            noise = jax.vmap(lambda k: _random_start(k, start.shape[1:], radius, norm))(
                keys[example]
            )
            current = jnp.clip(start + noise * weights, low, high)

        def step(_, current):
            direction = _direction(grad_of_loss(current, labels), weights, norm, zero_threshold)
            moved = current + sign * step_size * direction
            if radius is not None:
                moved = start + _project(moved - start, radius, norm)
            return jnp.clip(moved, low, high)

        return jax.lax.fori_loop(0, steps, step, current)

    return map_over_samples(attack, x.shape[0], 1, batch_size=batch_size)[:, 0]


def fgsm(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    epsilon: float,
    targeted: bool = False,
    loss: Loss | None = None,
    mask: Array | None = None,
    bounds: tuple[float, float] = (-np.inf, np.inf),
    zero_threshold: float = 0.0,
    batch_size: int | None = None,
) -> Array:
    """Fast gradient sign method: ``clip(x +- epsilon * sign(grad_x loss))``.

    Goodfellow et al. 2015; Captum's ``captum.robust.FGSM`` (see the module docstring
    for the differences).

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: untargeted, the true class per example (``(N,)`` or one int), or ``None``
        for the predicted class; targeted, the class to reach (required).
      epsilon: the step, in input units (e.g. ``8 / 255`` for images in ``[0, 1]``).
      targeted: decrease the loss of ``target`` instead of increasing it.
      loss: ``loss(logits, target) -> (N,)``; cross-entropy of the logits by default.
      mask: which features may change (1) and which may not (0), with the shape of one
        example or of ``x``; a feature's step is multiplied by it.
      bounds: ``(low, high)`` the result is clipped to; ``(0, 1)`` for images in [0, 1].
      zero_threshold: gradient elements of at most this magnitude leave their feature
        unchanged (Captum uses ``1e-6``).
      batch_size: examples per forward and backward pass; ``None`` does all at once.

    Returns:
      The perturbed inputs, float32, shaped like ``x``.
    """
    epsilon = _as_size(epsilon, "epsilon")
    return _gradient_attack(
        fn,
        x,
        target,
        loss=loss,
        targeted=targeted,
        mask=mask,
        bounds=bounds,
        zero_threshold=zero_threshold,
        batch_size=batch_size,
        key=None,
        steps=1,
        step_size=epsilon,
        radius=None,
        norm="linf",
        random_start=False,
    )


def pgd(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    radius: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    targeted: bool = False,
    random_start: bool = False,
    key: Array | None = None,
    loss: Loss | None = None,
    mask: Array | None = None,
    bounds: tuple[float, float] = (-np.inf, np.inf),
    zero_threshold: float = 0.0,
    batch_size: int | None = None,
) -> Array:
    """Projected gradient descent in the ``norm`` ball of ``radius`` around ``x``.

    Madry et al. 2018; Captum's ``captum.robust.PGD`` (see the module docstring for the
    differences, in particular the L2 step).

    Args:
      fn, x, target, targeted, loss, mask, bounds, zero_threshold, batch_size: as
        :func:`fgsm`.
      radius: the ball's radius, in input units.
      step_size: the length of one step in ``norm`` (``step_size * sign(g)`` for
        ``'linf'``, ``step_size * g / ||g||_2`` for ``'l2'``).
      steps: the number of steps (static).
      norm: ``'linf'`` or ``'l2'`` (Captum's ``'Linf'`` and ``'L2'`` are accepted too).
      random_start: start at a uniform random point of the ball (clipped to
        ``bounds``; a ``mask`` multiplies it, as in Captum, so masked features start
        at ``x``), drawn from ``fold_in(key, i)`` for example ``i``.
      key: a PRNG key, or one per example; needed only with ``random_start``.

    Returns:
      The perturbed inputs, float32, shaped like ``x``: within ``radius`` of ``x`` in
      ``norm`` and within ``bounds``.
    """
    return _gradient_attack(
        fn,
        x,
        target,
        loss=loss,
        targeted=targeted,
        mask=mask,
        bounds=bounds,
        zero_threshold=zero_threshold,
        batch_size=batch_size,
        key=key,
        steps=as_count(steps, "steps"),
        step_size=_as_size(step_size, "step_size"),
        radius=_as_size(radius, "radius"),
        norm=_as_norm(norm),
        random_start=bool(random_start),
    )


class MinPerturbation(NamedTuple):
    """What :func:`min_perturbation` found for every example.

    Attributes:
      param: ``(N,)`` float32, the smallest parameter value at which the prediction
        changed; NaN where none of ``params`` changed it.
      index: ``(N,)`` int32, its position in ``params``; -1 where none did.
      perturbed: ``(N, ...)`` the perturbed input that changed the prediction (the first
        successful attempt at ``param``); ``x`` itself where none did.
    """

    param: Array
    index: Array
    perturbed: Array


def _default_correct(logits: Array, target: Array) -> Array:
    refuse_one_output(logits, "its top class", "pass correct= a test of the logit")
    return jnp.argmax(logits, axis=-1) == target


def _as_params(params: Any) -> Array:
    _concrete(params, "params")
    values = np.asarray(params, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"params must be a non-empty 1-D array, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("params contains NaN or Inf values")
    if values.size > 1 and not np.all(np.diff(values) > 0):
        raise ValueError(
            "params must be strictly increasing (the search looks for the first value "
            "that changes the prediction), e.g. np.linspace(0, 0.5, 51)"
        )
    return jnp.asarray(values, dtype=jnp.float32)


def _as_aux(aux: Any, num_examples: int) -> Any:
    for leaf in jax.tree.leaves(aux):
        if getattr(leaf, "shape", ())[:1] != (num_examples,):
            raise ValueError(
                f"aux must hold arrays with one row per example ({num_examples}, ...), "
                f"got a leaf of shape {getattr(leaf, 'shape', ())}"
            )
    return jax.tree.map(jnp.asarray, aux)


def min_perturbation(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    perturb: Perturbation,
    params: Array,
    aux: Any = None,
    key: Array | None = None,
    attempts: int = 1,
    mode: str = "linear",
    correct: Callable[[Array, Array], Array] | None = None,
    batch_size: int | None = None,
) -> MinPerturbation:
    """The smallest parameter of a perturbation that changes each example's prediction.

    Example ``i`` is perturbed to ``perturb(x_i, params[j], key_ija, aux_i)`` for
    attempt ``a`` at parameter ``params[j]``; the parameter *changes the prediction*
    when ``correct(fn(x'), target)`` is False for at least one of the ``attempts``. The
    answer is the first such ``params[j]``. Captum's ``MinParamPerturbation`` with
    per-example answers (see the module docstring).

    ``mode='linear'`` evaluates every parameter value and so finds the first one
    exactly; ``mode='binary'`` bisects the positions of ``params`` in
    ``ceil(log2(len(params) + 1))`` rounds, which finds the same value when the
    prediction, once changed, stays changed for larger parameters (true of most
    perturbations that grow with their parameter). The keys are the same in both
    modes: ``fold_in(fold_in(fold_in(key, i), j), a)``, with ``j`` the position in
    ``params`` (a refined or extended grid draws new noise). An answer whose replay
    does not change the prediction again (possible only when ``perturb`` rounds
    differently between calls) counts as none.

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: the class that counts as correct, per example or one int; ``None`` for
        the predicted class of the clean input.
      perturb: ``perturb(x_i, param, key, aux_i) -> x_i'`` on one example (no batch
        axis); it is vmapped, so it must be traceable. Examples: Gaussian noise,
        ``lambda x, s, key, _: x + s * jax.random.normal(key, x.shape)``; FGSM,
        ``lambda x, e, _, t: fgsm(fn, x[None], t, epsilon=e, bounds=(0, 1))[0]`` with
        ``aux=labels``; removing the most-attributed pixels, :func:`top_k_removal`
        with ``aux=attributions``.
      params: the parameter values to try, a strictly increasing 1-D array.
      aux: an array or a pytree (a dict, a tuple) of per-example arrays (leading axis
        ``N``); ``perturb`` receives example ``i``'s rows.
      key: a PRNG key (or one per example) for perturbations that sample; ``None``
        passes ``key=None`` to a deterministic ``perturb``.
      attempts: perturbations drawn per parameter value (>1 needs ``key``).
      mode: ``'linear'`` or ``'binary'``.
      correct: ``correct(logits (B, classes), target (B,)) -> bool (B,)``; by default
        whether the predicted class is ``target``.
      batch_size: perturbed inputs per forward pass; ``None`` evaluates all at once,
        ``N * len(params) * attempts`` inputs in linear mode: set it for large grids.

    Returns:
      A :class:`MinPerturbation`.
    """
    x = as_input(x)
    num_examples = x.shape[0]
    values = _as_params(params)
    attempts = as_count(attempts, "attempts")
    mode = mode.lower() if isinstance(mode, str) else mode
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
    if not callable(perturb):
        raise ValueError(
            f"perturb must be a callable perturb(x_i, param, key, aux_i) -> x_i', got {perturb!r}"
        )
    if attempts > 1 and key is None:
        raise ValueError(
            "attempts > 1 repeats a random perturbation: pass key=jax.random.key(seed)"
        )
    correct = _default_correct if correct is None else correct
    target = resolve_target(fn, x, target, batch_size=batch_size)
    aux = _as_aux(aux, num_examples)
    check_aux = getattr(perturb, "check_aux", None)  # a perturbation's own input checks
    if check_aux is not None:
        check_aux(x, aux)
    keys = None if key is None else example_keys(key, num_examples)
    num_params = values.shape[0]

    def perturbed(example: Array, position: Array, attempt: Array) -> Array:
        if keys is None:
            row_keys = None
        else:
            row_keys = jax.vmap(lambda k, j, a: jax.random.fold_in(jax.random.fold_in(k, j), a))(
                keys[example], position, attempt
            )
        rows = jax.tree.map(lambda a: a[example], aux)
        return jax.vmap(perturb)(x[example], values[position], row_keys, rows)

    def changed(example: Array, position: Array, attempt: Array) -> Array:
        inputs = perturbed(example, position, attempt)
        if inputs.shape != (example.shape[0],) + x.shape[1:]:
            raise ValueError(
                f"perturb must return one example of shape {x.shape[1:]}, got {inputs.shape[1:]}"
            )
        verdict = jnp.asarray(correct(fn(inputs), target[example]))
        if verdict.shape != (example.shape[0],):
            raise ValueError(
                f"correct must return one bool per example, shape ({example.shape[0]},), got "
                f"{verdict.shape} (Captum's correct_fn answers for the whole batch; here "
                "correct(logits, target) answers per row)"
            )
        return ~verdict.astype(bool)

    if mode == "linear":
        flips = map_over_samples(
            lambda example, sample: changed(example, sample // attempts, sample % attempts),
            num_examples,
            num_params * attempts,
            batch_size=batch_size,
        ).reshape(num_examples, num_params, attempts)
        hit = flips.any(axis=2)
        first = jnp.argmax(hit, axis=1).astype(jnp.int32)
        index = jnp.where(hit.any(axis=1), first, num_params)
    else:
        low = jnp.full((num_examples,), -1, jnp.int32)
        index = jnp.full((num_examples,), num_params, jnp.int32)
        for _ in range(math.ceil(math.log2(num_params + 1))):
            middle = (low + index) // 2
            flips = map_over_samples(
                lambda example, attempt, middle=middle: changed(example, middle[example], attempt),
                num_examples,
                attempts,
                batch_size=batch_size,
            ).any(axis=1)
            open_ = index - low > 1
            index = jnp.where(open_ & flips, middle, index)
            low = jnp.where(open_ & ~flips, middle, low)

    position = jnp.minimum(index, num_params - 1)
    # Replay the attempts at the answer, keep their inputs, and check those very inputs:
    # the perturbed input returned is one the model was seen to change on (a
    # perturbation that runs the model, like PGD, can round differently in another
    # chunk shape, so an answer that this check does not confirm counts as none).
    inputs = map_over_samples(
        lambda example, attempt: perturbed(example, position[example], attempt),
        num_examples,
        attempts,
        batch_size=batch_size,
    )
    flips = map_over_samples(
        lambda example, attempt: (
            ~jnp.asarray(correct(fn(inputs[example, attempt]), target[example])).astype(bool)
        ),
        num_examples,
        attempts,
        batch_size=batch_size,
    )
    found = (index < num_params) & flips.any(axis=1)
    attempt = jnp.argmax(flips, axis=1)
    winner = inputs[jnp.arange(num_examples), attempt]
    return MinPerturbation(
        param=jnp.where(found, values[position], jnp.nan),
        index=jnp.where(found, index, -1).astype(jnp.int32),
        perturbed=jnp.where(per_example(found, x), winner, x),
    )


def top_k_removal(fill: float = 0.0) -> Perturbation:
    """A :func:`min_perturbation` perturbation that sets the ``k = param`` features of
    largest attribution to ``fill``; ``aux`` holds the attributions.

    The attribution of one example must broadcast to the example's shape (a map
    ``(H, W, 1)`` or ``(H, W)`` removes whole pixels of an ``(H, W, C)`` image), and be
    finite (checked by :func:`min_perturbation` before it runs). Ties are broken by
    position, the earlier feature first, so the order is a total one; a fractional
    ``param`` is rounded down. With ``params = np.arange(0, d + 1)`` the answer is the
    number of most-attributed features whose removal changes the prediction, a
    faithfulness score (fewer is more faithful) that does not depend on the
    attribution's scale.
    """
    fill = float(fill)

    def fit(attribution: Any, shape: tuple[int, ...]) -> Array:
        """One example's attribution, a channel axis added to an ``(H, W)`` map of an
        ``(H, W, C)`` image (only there: a row of a channel-less image is no pixel map)."""
        attribution = jnp.asarray(attribution, jnp.float32)
        if len(shape) == 3 and attribution.shape == shape[:-1]:
            attribution = attribution[..., None]
        try:
            fits = np.broadcast_shapes(attribution.shape, shape) == shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"top_k_removal: an attribution of shape {attribution.shape} does not "
                f"broadcast to an example of shape {shape}: pass aux= one map per example, "
                "shaped like the example or without its channel axis"
            )
        return attribution

    def check_aux(x: Array, aux: Any) -> None:
        if aux is None or isinstance(aux, (dict, list, tuple)):
            raise ValueError("top_k_removal ranks features by aux=: pass one map per example")
        check_finite(aux, "top_k_removal: the attributions (aux)")
        fit(jnp.asarray(aux)[0], x.shape[1:])

    def perturb(x: Array, param: Array, key: Any, attribution: Array) -> Array:
        del key
        attribution = fit(attribution, x.shape)
        order = jnp.argsort(-attribution.reshape(-1), stable=True)
        rank = jnp.zeros(order.shape, jnp.int32).at[order].set(jnp.arange(order.size))
        keep = rank.reshape(attribution.shape) >= jnp.floor(param).astype(jnp.int32)
        return jnp.where(jnp.broadcast_to(keep, x.shape), x, fill)

    perturb.check_aux = check_aux  # type: ignore[attr-defined]
    return perturb
