r"""Modified backpropagation: Guided Backprop, Deconvolution, LRP and Guided Grad-CAM,
and the jaxpr interpreter they share with DeepLIFT.

All of these methods are "the gradient, with the derivative of some nodes replaced".
Instead of hooking layers, the model function is traced into a jaxpr
(``jax.make_jaxpr(fn)(x)``) and re-evaluated by :class:`Interpreter`: values that depend
on the input are wrapped in :class:`Tracked`, every equation with a tracked operand
goes to the method's *rule* for its primitive if it has one, and each rule wraps its
node in a ``jax.custom_vjp`` whose backward pass is the method's replacement derivative.
``jax.grad`` through the re-evaluated program then gives the modified gradient. Nested
jaxprs (``jit``, ``custom_jvp_call`` -- ``jax.nn.relu`` is a custom_jvp around
``max(z, 0)`` --, ``custom_vjp_call`` through its forward jaxpr, ``remat``,
``closed_call``) are interpreted recursively, so rules see through them. The same
interpreter, with pairs (input branch, baseline branch) as tracked values and a strict
table of rules, is :func:`~fmi_jax.attribution.deeplift`.

Guided Backprop (Springenberg, Dosovitskiy, Brox & Riedmiller 2015, "Striving for
Simplicity: The All Convolutional Net") and Deconvolution (Zeiler & Fergus 2014,
"Visualizing and Understanding Convolutional Networks") change only the backward pass
of ReLU, y = max(z, 0), whose ordinary derivative is g_in = g_out * [z > 0]:

    guided backprop:  g_in = relu(g_out) * [z > 0]
    deconvolution:    g_in = relu(g_out)            (the forward mask is ignored)

A ReLU is any ``max(z, c)`` of one input-dependent operand z and an input-independent
c (``jax.nn.relu``, ``flax.linen.relu``, ``jnp.maximum(z, 0)``); for c != 0 it is a
shifted ReLU and the mask is [z > c]. A ReLU written ``jnp.where(z > 0, z, 0)`` or
``z * (z > 0)`` is a select or a product, not a max: a model with no ReLU gets its plain
gradient, with a warning. Every other node keeps its ordinary derivative:
other activations (leaky ReLU, GELU, SiLU, sigmoid, ...), including those computed
with a ``max`` inside (softplus, mish, log-sigmoid and CELU: ``jax.nn``'s functions and
any function with a custom derivative that does more than clamp run whole), ``max`` of two
input-dependent values, ``min``/``clamp`` (the cap of ReLU6), and max pooling, whose
gradient routes g_out to the argmax of each window. Captum's counterparts
(``captum.attr.GuidedBackprop``, ``captum.attr.Deconvolution``) hook ``torch.nn.ReLU``
modules only and likewise leave everything else, max pooling included, at its plain
gradient; here functional ReLUs (``F.relu`` in torch terms) get the rule too.
The attributions are the modified gradient itself (no multiplication by the input), as
in Captum.

Layer-wise relevance propagation (Bach, Binder, Montavon, Klauschen, Müller & Samek
2015, "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise
Relevance Propagation"; rules as in Montavon, Binder, Lapuschkin, Samek & Müller 2019,
"Layer-Wise Relevance Propagation: An Overview") is written as a modified gradient
times input. For a value a with modified gradient g, its relevance is R = a * g; the
target logit starts with g = 1, i.e. relevance f_t(x), and the input's relevances
(the attributions) are x * g_x. A layer is a linear map z = W a of an input-dependent a
with an input-independent weight operand W (``dot_general`` and
``conv_general_dilated``: dense and convolutional layers) together with the
elementwise affine maps of constants that follow it, y = s * z + c: its bias, and an
inference-mode batch norm (a - mean) * scale + shift, are folded into the layer as
they are traced, with casts between float dtypes on the way, whatever module or
custom-derivative call holds the linear map (the batch norm merged into the
convolution, as zennit's canonizers do). A layer output used twice (a shortcut that
leaves before the batch norm) is one such layer on each path; an affine map inside a
nested call of its own (a batch norm under its own ``jax.jit``) is not folded. Its backward pass
redistributes the relevance R_k = y_k g_k of each output k to the inputs in proportion
to their contributions a_j w_jk s_k under the rule, with the constant c_k an input of
activation 1 (Montavon et al.'s bias). Below, w_jk is the folded weight w_jk s_k
(W^+ = max(W, 0), W^- = min(W, 0)):

* epsilon (LRP-0 for epsilon -> 0): R_j = sum_k a_j w_jk R_k / (y_k + epsilon
  sign(y_k)). With epsilon -> 0 the backward pass is the ordinary gradient, and
  LRP-epsilon of a ReLU network equals gradient x input (Ancona et al. 2018).
* gamma: the weights W + gamma W^+ and the constant c + gamma c^+, favouring positive
  contributions: R_j = sum_k a_j (w_jk + gamma w_jk^+) R_k / (sum_i a_i (w_ik + gamma
  w_ik^+) + c_k + gamma c_k^+); gamma = 0 is the epsilon rule.
* alpha-beta: positive and negative contributions are redistributed separately,
  R_j = sum_k [alpha (a_j w_jk)^+ / z_k^+ - beta (a_j w_jk)^- / z_k^-] R_k with
  z_k^+ = sum_j (a_j w_jk)^+ + c_k^+ and z_k^- = sum_j (a_j w_jk)^- + c_k^-. Since
  (a w)^+ = a^+ w^+ + a^- w^- and (a w)^- = a^+ w^- + a^- w^+, the backward pass is
  g_a = [a > 0] (W^+ u - W^- v) + [a < 0] (W^- u - W^+ v) with u = alpha R / z^+ and
  v = beta R / z^- (a negative scale s_k swaps which of the unfolded W^+, W^- each
  term uses). With alpha = 1, beta = 0 (the z^+ rule) the relevances stay >= 0 where
  the inputs and the target logit are >= 0 in a chain of such layers, ReLUs and
  poolings; a residual sum, or an affine map of constants after a ReLU, passes
  relevance on in proportion to signed values and can make it negative. The input
  relevances sum to f_t(x) for alpha - beta = 1 only where every neuron has
  contributions of both signs (z^+ > 0 > z^-; a neuron with only positive ones passes
  on alpha R) and no constant takes a share. Montavon et al. state the rule for a >= 0
  (after a ReLU); the signed form above also covers signed inputs such as standardised
  pixels.

``stabilise`` adds epsilon away from zero (y + epsilon for y >= 0, y - epsilon
otherwise; z^+ + epsilon and z^- - epsilon), so a neuron with no contribution passes
no relevance on instead of dividing by zero. Every other node keeps its ordinary
gradient, which already redistributes relevance conservatively: ReLU (R_in = relu(z)
g = R_out), max pooling (all relevance to the window's argmax), sums, average pooling
and residual additions (R_a + R_b = (a + b) g). The constants c_k absorb their share
(c_k R_k / y_k for the epsilon rule), which is why relevance is conserved exactly
only for networks without biases or batch-norm shifts. A constant added after
anything other than a layer's linear map (after a ReLU, a pooling or a residual sum)
keeps its ordinary gradient and likewise absorbs its share. The same rule is used for
every layer (Montavon et al. recommend mixing rules by depth; compose them in the model if
needed). A ``dot_general`` or convolution of two input-dependent operands (attention)
keeps its ordinary gradient. Captum's counterpart ``captum.attr.LRP`` hooks ``Linear``,
``Conv2d``, pooling and batch-norm modules (default ``EpsilonRule`` with epsilon
1e-9) and offers the gamma rule and only the alpha=1, beta=0 case of alpha-beta
(``Alpha1_Beta0_Rule``, which assumes non-negative activations). Its rules modify the
weights only (a batch norm is a layer of its own, and the gamma and alpha=1, beta=0
rules leave the bias whole in the denominator), so the two agree on those rules for
bias-free layers; its epsilon rule includes the bias as here.

Guided Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep
Networks via Gradient-based Localization") is guided backprop times the Grad-CAM map
of a layer, upsampled bilinearly to the input and broadcast over its channels.
Captum counterpart: ``captum.attr.GuidedGradCam``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import os
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jax_core
from jax.extend import source_info_util

from fmi_jax.attribution.cam import grad_cam
from fmi_jax.attribution.core import (
    Array,
    ModelFn,
    Target,
    as_input,
    refuse_baseline,
    resolve_target,
    select_target,
    sum_over_samples,
)
from fmi_jax.attribution.handle import as_flax_model

__all__ = [
    "Tracked",
    "Lazy",
    "Rule",
    "Interpreter",
    "LINEAR",
    "INDEX_OPERANDS",
    "BILINEAR",
    "CALLS",
    "bind",
    "apply",
    "inner_jaxpr",
    "is_linear",
    "on_every_branch",
    "modified_gradient",
    "LRP_RULES",
    "guided_backprop",
    "deconvolution",
    "lrp",
    "guided_grad_cam",
]


@functools.partial(jax.tree_util.register_dataclass, data_fields=["branches"], meta_fields=[])
@dataclasses.dataclass(frozen=True, eq=False)
class Tracked:
    """An input-dependent value: one array per branch of the evaluation (one branch for
    the modified gradients here; the input and the baseline branch for DeepLIFT). A
    pytree of its branches, so tracked values can be arguments of a jitted function."""

    branches: tuple[Array, ...]


class Lazy:
    """An input-dependent value a rule has described but not built yet, so that later
    equations can still change how it is built (LRP folds a layer's bias and batch norm
    into the layer). ``settle()`` builds it as a ``Tracked``; the interpreter settles a
    lazy operand before any equation other than one of its ``lazy_rules``."""

    def settle(self) -> Tracked:
        raise NotImplementedError


# A rule gets an equation and its operands (at least one ``Tracked``) and returns the
# equation's outputs, or None to decline (the equation is then linear or unruled).
Rule = Callable[[jax_core.JaxprEqn, list[Any]], "list[Any] | None"]


# ----------------------------------------------------------------------------------------
# Primitive tables, by primitive name.

# Linear in their input-dependent operands, jointly: evaluated unchanged on every branch,
# so the ordinary derivative is their exact derivative (and DeepLIFT multiplier).
LINEAR = frozenset(
    {
        "add",
        "add_any",
        "sub",
        "neg",
        "copy",
        "convert_element_type",
        "reshape",
        "squeeze",
        "broadcast_in_dim",
        "transpose",
        "rev",
        "slice",
        "pad",
        "tile",
        "concatenate",
        "stack",
        "split",
        "unstack",
        "reduce_sum",
        "cumsum",
        "reduce_window_sum",
        "select_n",
        "dynamic_slice",
        "dynamic_update_slice",
        "gather",
        "scatter",
        "scatter-add",
        "scatter-sub",
        "sharding_constraint",
        "optimization_barrier",
    }
)

# Operands that say where values go (predicates, indices). The ops above are linear
# only while these do not depend on the input. Maps name -> positions, given the
# number of operands.
INDEX_OPERANDS: dict[str, Callable[[int], range]] = {
    "select_n": lambda n: range(0, 1),
    "dynamic_slice": lambda n: range(1, n),
    "dynamic_update_slice": lambda n: range(2, n),
    "gather": lambda n: range(1, 2),
    "scatter": lambda n: range(1, 2),
    "scatter-add": lambda n: range(1, 2),
    "scatter-sub": lambda n: range(1, 2),
}

# Bilinear: linear when one operand is input-independent.
BILINEAR = frozenset({"mul", "dot_general", "conv_general_dilated"})

# Primitives that call a nested jaxpr.
CALLS = frozenset({"jit", "closed_call", "call", "remat2", "custom_jvp_call", "custom_vjp_call"})


def bind(eqn: jax_core.JaxprEqn, operands: Sequence[Any]) -> list[Any]:
    """Apply an equation's primitive to new operands; always returns a list of outputs."""
    out = eqn.primitive.bind(*operands, **eqn.primitive.get_bind_params(eqn.params))
    return list(out) if eqn.primitive.multiple_results else [out]


def inner_jaxpr(eqn: jax_core.JaxprEqn) -> tuple[jax_core.Jaxpr, Sequence[Any]]:
    """The jaxpr and constants a call equation (one of ``CALLS``) evaluates."""
    inner = eqn.params["jaxpr"] if "jaxpr" in eqn.params else eqn.params["call_jaxpr"]
    if isinstance(inner, jax_core.ClosedJaxpr):
        return inner.jaxpr, inner.consts
    return inner, ()


def apply(eqn: jax_core.JaxprEqn, operands: Sequence[Any]) -> list[Any]:
    """Evaluate one equation on plain operands. A nested call runs through its jaxpr, so
    forward-mode derivatives work even when it is a custom_vjp function."""
    if eqn.primitive.name in CALLS:
        jaxpr, consts = inner_jaxpr(eqn)
        return jax.core.eval_jaxpr(jaxpr, consts, *operands)
    return bind(eqn, operands)


def is_linear(eqn: jax_core.JaxprEqn, dependent: Sequence[bool]) -> bool:
    """Whether the equation is linear in its operands flagged input-dependent."""
    name = eqn.primitive.name
    if name in LINEAR:
        index_operands = INDEX_OPERANDS.get(name, lambda n: range(0))(len(dependent))
        if any(dependent[i] for i in index_operands):
            return False
        if name == "convert_element_type":
            dtypes = (eqn.invars[0].aval.dtype, eqn.outvars[0].aval.dtype)
            return all(jnp.issubdtype(d, jnp.floating) for d in dtypes)
        return True
    if name in BILINEAR:
        return sum(dependent) == 1
    if name == "div":
        return list(dependent) == [True, False]
    return False


def on_every_branch(eqn: jax_core.JaxprEqn, operands: Sequence[Any]) -> list[Tracked]:
    """The equation evaluated unchanged on every branch of its tracked operands."""
    count = next(len(v.branches) for v in operands if isinstance(v, Tracked))
    per_branch = [
        bind(eqn, [v.branches[i] if isinstance(v, Tracked) else v for v in operands])
        for i in range(count)
    ]
    return [Tracked(tuple(outputs)) for outputs in zip(*per_branch)]


@dataclasses.dataclass(frozen=True, eq=False)
class Interpreter:
    """Evaluates a jaxpr with ``Tracked`` input-dependent values and per-primitive rules.

    An equation without tracked operands is evaluated once, unchanged. One with tracked
    operands goes, in this order, to

    0. ``lazy_rules[primitive name]`` if an operand is ``Lazy``, unless that rule
       returns None; otherwise every lazy operand is settled first;
    1. ``call_rule`` if it is a nested call (``CALLS``) and the rule accepts it,
       otherwise the nested jaxpr is interpreted recursively, as one jitted program
       (when not ``strict``, a nested call whose body needs no rule is bound as a
       whole, keeping its custom derivatives);
    2. ``rules[primitive name]``, unless that rule returns None;
    3. evaluation on every branch, if the equation is linear in its tracked operands
       (:func:`is_linear`) or the interpreter is not ``strict``;
    4. a ``NotImplementedError`` naming the primitive and ``method``, ending in ``hint``.

    Attributes:
      method: the method's name, for error messages.
      rules: primitive name -> rule.
      strict: whether a nonlinear primitive without a rule raises (DeepLIFT: treating it
        as linear would break summation-to-delta) or keeps its ordinary derivative.
      call_rule: a rule offered every nested call first (DeepLIFT's activation
        functions); None for none.
      hint: the end of the NotImplementedError message.
      lazy_rules: primitive name -> rule offered the equations with a ``Lazy``
        operand (LRP's bias and batch-norm folding); empty for most methods.

    Interpreters compare and hash by identity: an interpreter is part of the key of the
    programs compiled for its nested calls, so build one per method and options once.
    """

    method: str
    rules: Mapping[str, Rule]
    strict: bool = False
    call_rule: Rule | None = None
    hint: str = ""
    lazy_rules: Mapping[str, Rule] = dataclasses.field(default_factory=dict)

    def evaluate(
        self, jaxpr: jax_core.Jaxpr, consts: Sequence[Any], args: Sequence[Any]
    ) -> list[Any]:
        """The outputs of ``jaxpr`` on ``args``; arguments that are ``Tracked`` are
        input-dependent, and so are the outputs computed from them."""
        env: dict[Any, Any] = {}

        def read(atom: Any) -> Any:
            return atom.val if isinstance(atom, jax_core.Literal) else env[atom]

        env.update(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, args))
        for eqn in jaxpr.eqns:
            operands = [read(atom) for atom in eqn.invars]
            if any(isinstance(v, (Tracked, Lazy)) for v in operands):
                outputs = self._tracked(eqn, operands)
            else:
                outputs = bind(eqn, operands)  # input-independent: evaluated once
            env.update(zip(eqn.outvars, outputs))
        return [read(atom) for atom in jaxpr.outvars]

    def _tracked(self, eqn: jax_core.JaxprEqn, operands: list[Any]) -> list[Any]:
        name = eqn.primitive.name
        if any(isinstance(v, Lazy) for v in operands):
            lazy_rule = self.lazy_rules.get(name)
            if lazy_rule is not None:
                outputs = lazy_rule(eqn, operands)
                if outputs is not None:
                    return outputs
            operands = [v.settle() if isinstance(v, Lazy) else v for v in operands]
        if name in CALLS:
            if self.call_rule is not None:
                outputs = self.call_rule(eqn, operands)
                if outputs is not None:
                    return outputs
            jaxpr, consts = inner_jaxpr(eqn)
            if not self.strict and not self._needs_rules(jaxpr):
                return on_every_branch(eqn, operands)
            sites = _CALL_SITES.set((eqn, *_CALL_SITES.get()))
            try:
                return _evaluate_call(self, jaxpr, consts, operands)
            finally:
                _CALL_SITES.reset(sites)
        rule = self.rules.get(name)
        if rule is not None:
            outputs = rule(eqn, operands)
            if outputs is not None:
                return outputs
        if any(self._needs_rules(inner) for inner in _control_flow_bodies(eqn)):
            # Bound whole, the body would keep its ordinary derivatives: a silently
            # different method.
            raise NotImplementedError(
                f"{self.method} cannot apply its rules inside '{name}'{_source_line(eqn)} "
                "(control flow such as lax.scan, lax.cond or nn.scan over layers); unroll "
                f"those layers to explain this model. {self.hint}".rstrip()
            )
        dependent = [isinstance(v, Tracked) for v in operands]
        if not self.strict or is_linear(eqn, dependent):
            return on_every_branch(eqn, operands)
        shapes = ", ".join(str(v.aval) for v, d in zip(eqn.invars, dependent) if d)
        raise NotImplementedError(
            f"{self.method} has no rule for primitive '{name}' applied to an "
            f"input-dependent value ({shapes}){_source_line(eqn)}. {self.hint}"
        )

    def _needs_rules(self, jaxpr: jax_core.Jaxpr) -> bool:
        """Whether any equation of ``jaxpr``, nested calls and control flow included,
        has a rule."""
        return any(
            eqn.primitive.name in self.rules
            or (eqn.primitive.name in CALLS and self._needs_rules(inner_jaxpr(eqn)[0]))
            or any(self._needs_rules(inner) for inner in _control_flow_bodies(eqn))
            for eqn in jaxpr.eqns
        )


# interpreter -> {nested call's body: its evaluation, jitted}. Both levels are weak, so
# a program lives as long as its interpreter and the traced body it interprets (which
# JAX keeps in its cache of the jitted function the body came from) and holds neither.
_CALL_PROGRAMS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _evaluate_call(
    interpreter: Interpreter, jaxpr: jax_core.Jaxpr, consts: Sequence[Any], args: Sequence[Any]
) -> list[Any]:
    """``interpreter.evaluate`` of a nested call's body, as one compiled program.

    Called eagerly, interpreting equation by equation compiles every primitive (and its
    rule) on its own; jitted, a model whose forward pass is one jitted function (a
    model handle, a ``jax.jit`` of ``model.apply``) is interpreted in one program per
    method, model and input shape, reused by later calls: JAX keeps one traced body per
    jitted function and argument shapes, and that body keys the program here. Under an
    outer trace the call stays one ``jit`` equation, which XLA inlines when it compiles.
    """
    programs = _CALL_PROGRAMS.setdefault(interpreter, weakref.WeakKeyDictionary())
    program = programs.get(jaxpr)
    if program is None:
        program = jax.jit(_evaluation(weakref.ref(interpreter), weakref.ref(jaxpr)))
        programs[jaxpr] = program
    return program(consts, args)


def _evaluation(interpreter: weakref.ref, jaxpr: weakref.ref) -> Callable[..., list[Any]]:
    """``evaluate(consts, args)`` of the body, holding it and the interpreter weakly (the
    caller holds both while it runs)."""

    def evaluate(consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
        return interpreter().evaluate(jaxpr(), consts, args)

    return evaluate


def _control_flow_bodies(eqn: jax_core.JaxprEqn) -> list[jax_core.Jaxpr]:
    """The jaxprs a non-call equation runs (scan and while bodies, cond branches)."""
    if eqn.primitive.name in CALLS:
        return []
    bodies: list[jax_core.Jaxpr] = []
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax_core.ClosedJaxpr):
                bodies.append(item.jaxpr)
            elif isinstance(item, jax_core.Jaxpr):
                bodies.append(item)
    return bodies


def modified_gradient(
    interpreter: Interpreter,
    fn: ModelFn,
    x: Array,
    target: Array,
    check: Callable[[jax_core.Jaxpr], None] | None = None,
) -> Array:
    """The gradient of ``sum_i f_t(x_i)`` with respect to ``x``, with every node that has
    a rule in ``interpreter`` (one branch) differentiated by that rule; ``check``, if
    given, sees the model's program first (and may refuse it)."""
    program = jax.make_jaxpr(fn)(x)
    if check is not None:
        check(program.jaxpr)

    def target_sum(x: Array) -> Array:
        [logits] = interpreter.evaluate(program.jaxpr, program.consts, [Tracked((x,))])
        if isinstance(logits, Lazy):
            logits = logits.settle()
        if isinstance(logits, Tracked):
            logits = logits.branches[0]
        return jnp.sum(select_target(logits, target))

    return jax.grad(target_sum)(x)


# ----------------------------------------------------------------------------------------
# Guided backprop and deconvolution: rules at ReLU.


def _relu_rule(backward: Callable[[Array, Array, Array], Array]) -> Rule:
    """A rule for ``max(z, c)`` with one input-dependent operand z (a ReLU, shifted by an
    input-independent c): forward max(z, c), backward ``backward(g_out, z, c)``."""

    def rule(eqn: jax_core.JaxprEqn, operands: list[Any]) -> list[Any] | None:
        dependent = [isinstance(v, Tracked) for v in operands]
        if sum(dependent) != 1:
            return None  # max of two input-dependent values: ordinary derivative
        shape = eqn.outvars[0].aval.shape
        dtype = eqn.outvars[0].aval.dtype
        z = jnp.broadcast_to(operands[dependent.index(True)].branches[0], shape)
        c = jnp.broadcast_to(jnp.asarray(operands[dependent.index(False)], dtype), shape)

        @jax.custom_vjp
        def relu(z: Array, c: Array) -> Array:
            return lax.max(z, c)

        def forward(z: Array, c: Array) -> tuple[Array, tuple[Array, Array]]:
            return lax.max(z, c), (z, c)

        def backward_pass(residuals: tuple[Array, Array], g: Array) -> tuple[Array, None]:
            return backward(g, *residuals), None

        relu.defvjp(forward, backward_pass)
        return [Tracked((relu(z, c),))]

    return rule


# jax.nn's functions other than the ReLUs, by the name their jit call carries: some hold
# a max that is not a ReLU (softplus is max(z, 0) + log1p(exp(-|z|)), CELU adds a
# ReLU to its negative part), so they run whole, with their ordinary derivative.
_NOT_RELUS = frozenset(n for n in dir(jax.nn) if not n.startswith("_")) - {"relu", "relu6"}


def _only_clamps(jaxpr: jax_core.Jaxpr) -> bool:
    """Whether ``jaxpr``, nested calls included, only clamps (max and min, casts): the
    body of ``jax.nn.relu`` and ``relu6``."""
    return all(
        _only_clamps(inner_jaxpr(e)[0])
        if e.primitive.name in CALLS
        else e.primitive.name in ("max", "min", "convert_element_type", "broadcast_in_dim")
        for e in jaxpr.eqns
    )


def _activation_call(eqn: jax_core.JaxprEqn, operands: list[Any]) -> list[Any] | None:
    """A nested call that is an activation but not a ReLU, run whole with its ordinary
    derivative: a function with a custom derivative whose body does more than clamp
    (``jnp.logaddexp``, under softplus, mish and log-sigmoid), or one of ``jax.nn``'s
    functions by name; None (interpret it, ReLU rule included) for anything else."""
    name = eqn.primitive.name
    if name in ("custom_jvp_call", "custom_vjp_call"):
        return None if _only_clamps(inner_jaxpr(eqn)[0]) else on_every_branch(eqn, operands)
    if name == "jit" and eqn.params.get("name") in _NOT_RELUS:
        return on_every_branch(eqn, operands)
    return None


_GUIDED_BACKPROP = Interpreter(
    "guided_backprop",
    {"max": _relu_rule(lambda g, z, c: jnp.where(z > c, jnp.maximum(g, 0), 0))},
    call_rule=_activation_call,
)
_DECONVOLUTION = Interpreter(
    "deconvolution",
    {"max": _relu_rule(lambda g, z, c: jnp.maximum(g, 0))},
    call_rule=_activation_call,
)


def _has_relu(jaxpr: jax_core.Jaxpr) -> bool:
    """Whether ``jaxpr`` holds a ``max`` that the ReLU rule would see: nested calls
    included, the activations run whole (:func:`_activation_call`) left out."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "max":
            return True
        if name in CALLS:
            if name == "jit" and eqn.params.get("name") in _NOT_RELUS:
                continue
            inner = inner_jaxpr(eqn)[0]
            if name in ("custom_jvp_call", "custom_vjp_call") and not _only_clamps(inner):
                continue
            if _has_relu(inner):
                return True
        elif any(_has_relu(inner) for inner in _control_flow_bodies(eqn)):
            return True  # a ReLU in a scan or cond body: refused later, not called absent
    return False


def _warn_without_relu(method: str) -> Callable[[jax_core.Jaxpr], None]:
    """A check for :func:`modified_gradient`: a model without a ReLU gets its plain
    gradient, as in Captum, with a warning, since the usual cause is a ReLU the rule
    does not recognise."""

    def check(jaxpr: jax_core.Jaxpr) -> None:
        if not _has_relu(jaxpr):
            warnings.warn(
                f"{method}: the model has no ReLU (max(z, c)) for the rule to change, so "
                "the result is its plain gradient (saliency). A ReLU written as "
                "jnp.where(z > 0, z, 0) or z * (z > 0) is not recognised: write "
                "jax.nn.relu(z) or jnp.maximum(z, 0)",
                stacklevel=2,
            )

    return check


def _relu_backprop(
    interpreter: Interpreter, fn: ModelFn, x: Any, target: Target, baseline: Any, batch_size: Any
) -> Array:
    refuse_baseline(baseline, interpreter.method)
    x = as_input(x)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    check = _warn_without_relu(interpreter.method)
    return sum_over_samples(
        lambda example, _: modified_gradient(interpreter, fn, x[example], target[example], check),
        x.shape[0],
        batch_size=batch_size,
    )


def guided_backprop(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
) -> Array:
    """Guided backpropagation: the gradient of the target logit with every ReLU's
    backward pass replaced by ``relu(g_out) * [z > 0]`` (Springenberg et al. 2015; the
    module docstring says which nodes count as ReLU). Captum counterpart:
    ``captum.attr.GuidedBackprop``.

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: unused (deterministic); accepted so every method has one signature.
      baseline: must be None (no reference input).
      batch_size: examples per backward pass; ``None`` processes all at once.

    Returns:
      float32 array shaped like ``x``.
    """
    return _relu_backprop(_GUIDED_BACKPROP, fn, x, target, baseline, batch_size)


def deconvolution(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
) -> Array:
    """Deconvolution: the gradient of the target logit with every ReLU's backward pass
    replaced by ``relu(g_out)``, ignoring the forward mask (Zeiler & Fergus 2014; the
    module docstring says which nodes count as ReLU). Captum counterpart:
    ``captum.attr.Deconvolution``.

    Args: as :func:`guided_backprop`.

    Returns:
      float32 array shaped like ``x``.
    """
    return _relu_backprop(_DECONVOLUTION, fn, x, target, baseline, batch_size)


# ----------------------------------------------------------------------------------------
# LRP: rules at linear maps with a constant weight operand.

LRP_RULES = ("epsilon", "gamma", "alpha_beta")


def _stabilise(z: Array, epsilon: float) -> Array:
    """z moved epsilon away from zero (z + epsilon for z >= 0, z - epsilon otherwise)."""
    return z + jnp.where(z >= 0, epsilon, -epsilon)


def _divide(numerator: Array, denominator: Array) -> Array:
    """numerator / denominator, and 0 where the denominator is 0 (epsilon = 0 and a
    neuron without contributions: it has no relevance to pass on)."""
    zero = denominator == 0
    return jnp.where(zero, 0, numerator / jnp.where(zero, 1, denominator))


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["a", "w", "scale", "shift", "constants"],
    meta_fields=["steps", "build"],
)
@dataclasses.dataclass(frozen=True, eq=False)
class _Affine(Lazy):
    """A dense or convolutional layer's output z = W a followed by elementwise affine
    maps of constants (its bias, an inference-mode batch norm, casts between float
    dtypes), pending: ``steps`` (the equations, with the pending operand's position) and
    their ``constants`` replay them exactly on z, and ``scale * z + shift`` (float32)
    is the same map for the LRP rule, which ``build(a, w, scale, shift, constants,
    steps)`` applies to the whole affine layer. A pytree, so it can leave a nested
    jitted call."""

    a: Array
    w: Array
    scale: Array
    shift: Array
    constants: tuple[Any, ...]
    steps: tuple[tuple[jax_core.JaxprEqn, int], ...]
    build: Callable[..., Array]

    def settle(self) -> Tracked:
        y = self.build(self.a, self.w, self.scale, self.shift, self.constants, self.steps)
        return Tracked((y,))


def _replay(z: Array, constants: Sequence[Any], steps: Sequence[Any]) -> Array:
    """The equations folded into a layer, applied to its linear output ``z``."""
    for constant, (eqn, position) in zip(constants, steps):
        operands = [z] if constant is None else [None, None]
        if constant is not None:
            operands[position], operands[1 - position] = z, constant
        z = bind(eqn, operands)[0]
    return z


def _fold_affine(eqn: jax_core.JaxprEqn, operands: list[Any]) -> list[Any] | None:
    """A lazy rule: ``add``, ``sub``, ``mul``, ``div`` or ``neg`` of a pending layer
    output and a constant, or its cast to another float dtype, folds into the layer.
    Declines (the layer is then built and the equation evaluated as usual) for two
    input-dependent operands, or a constant that would change the output's shape."""
    name = eqn.primitive.name
    dependent = [isinstance(v, (Tracked, Lazy)) for v in operands]
    if sum(dependent) != 1:
        return None
    position = dependent.index(True)
    pending = operands[position]
    if not isinstance(pending, _Affine):
        return None
    out = eqn.outvars[0].aval
    if out.shape != eqn.invars[position].aval.shape:
        return None
    scale, shift = pending.scale, pending.shift
    constant = None
    if name in ("neg", "convert_element_type"):
        if name == "convert_element_type" and not jnp.issubdtype(out.dtype, jnp.floating):
            return None
        if name == "neg":
            scale, shift = -scale, -shift
    else:
        constant = operands[1 - position]
        c = jnp.asarray(constant, jnp.float32)
        if name == "add":
            shift = shift + c
        elif name == "sub" and position == 0:
            shift = shift - c
        elif name == "sub":
            scale, shift = -scale, c - shift
        elif name == "mul":
            scale, shift = scale * c, shift * c
        elif name == "div" and position == 0:
            scale, shift = scale / c, shift / c
        else:
            return None
    return [
        dataclasses.replace(
            pending,
            scale=scale,
            shift=shift,
            constants=(*pending.constants, constant),
            steps=(*pending.steps, (eqn, position)),
        )
    ]


_AFFINE = ("add", "sub", "mul", "div", "neg", "convert_element_type")


def _lrp_rule(rule: str, epsilon: float, gamma: float, alpha: float, beta: float) -> Rule:
    """The LRP rule for dot_general / conv_general_dilated with one input-dependent
    operand a and an input-independent weight operand W, applied to the affine layer
    ``s * W a + c`` that the constants folded in later give (module docstring)."""

    def lrp_linear(eqn: jax_core.JaxprEqn, operands: list[Any]) -> list[Any] | None:
        dependent = [isinstance(v, Tracked) for v in operands]
        if sum(dependent) != 1:
            return None  # a product of two input-dependent values: ordinary derivative
        position = dependent.index(True)
        weight_position = 1 - position

        def linear(a: Array, w: Array, out_dtype: Any = None) -> Array:
            args = [None, None]
            args[position], args[weight_position] = a, w
            if out_dtype is None or "preferred_element_type" not in eqn.params:
                return bind(eqn, args)[0]
            params = {**eqn.params, "preferred_element_type": out_dtype}
            return eqn.primitive.bind(*args, **params)

        def transpose(w: Array, a: Array, s: Array) -> Array:
            """W^T s: the vjp of the linear map a -> linear(a, w) (independent of a), in
            the dtype of s (a layer that asks for a float16 output is widened)."""
            return jax.vjp(lambda v: linear(v, w, s.dtype), a)[1](s)[0]

        def backward(residuals: tuple[Array, ...], g: Array) -> tuple[Any, ...]:
            a, w, scale, shift, z, y = residuals
            # The rule in float32 whatever the model's dtype, each W^T s too: R / epsilon
            # would overflow float16.
            relevance = g.astype(jnp.float32) * y.astype(jnp.float32)
            s_pos, s_neg = jnp.maximum(scale, 0), jnp.minimum(scale, 0)
            w_pos, w_neg = jnp.maximum(w, 0), jnp.minimum(w, 0)

            wide = a.astype(jnp.float32)

            def back(weight: Array, s: Array) -> Array:
                return transpose(weight.astype(jnp.float32), wide, s).astype(a.dtype)

            if rule == "epsilon":
                v = _divide(relevance, _stabilise(y.astype(jnp.float32), epsilon))
                g_a = back(w, scale * v)
            elif rule == "gamma":
                # W^- = W - W^+: one more product with W^+ only, forward and back.
                z_pos = linear(a, w_pos).astype(jnp.float32)
                z_neg = z.astype(jnp.float32) - z_pos
                z_rule = y.astype(jnp.float32) + gamma * (
                    s_pos * z_pos + s_neg * z_neg + jnp.maximum(shift, 0)
                )
                v = _divide(relevance, _stabilise(z_rule, epsilon))
                g_a = back(w, (scale + gamma * s_neg) * v) + gamma * back(w_pos, jnp.abs(scale) * v)
            else:
                a_pos, a_neg = jnp.maximum(a, 0), jnp.minimum(a, 0)
                positive_sum = (linear(a_pos, w_pos) + linear(a_neg, w_neg)).astype(jnp.float32)
                negative_sum = (linear(a_pos, w_neg) + linear(a_neg, w_pos)).astype(jnp.float32)
                z_pos = s_pos * positive_sum + s_neg * negative_sum + jnp.maximum(shift, 0)
                z_neg = s_pos * negative_sum + s_neg * positive_sum + jnp.minimum(shift, 0)
                u = alpha * _divide(relevance, z_pos + epsilon)
                v = beta * _divide(relevance, z_neg - epsilon)
                # Coefficients of the contributions (a_j w_jk)^+ and (a_j w_jk)^-.
                on_pos, on_neg = s_pos * u - s_neg * v, s_neg * u - s_pos * v
                positive = back(w_pos, on_pos) + back(w_neg, on_neg)
                negative = back(w_neg, on_pos) + back(w_pos, on_neg)
                g_a = jnp.where(a > 0, positive, jnp.where(a < 0, negative, 0))
            return (g_a, None, None, None, None)

        @functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
        def layer(a, w, scale, shift, constants, steps) -> Array:
            return _replay(linear(a, w), constants, steps)

        def forward(a, w, scale, shift, constants, steps):
            z = linear(a, w)
            y = _replay(z, constants, steps)  # exactly the model's own output
            scale = jnp.broadcast_to(scale, z.shape)
            shift = jnp.broadcast_to(shift, z.shape)
            return y, (a, w, scale, shift, z, y)

        def backward_pass(steps, residuals, g):
            return backward(residuals, g)

        layer.defvjp(forward, backward_pass)
        weight = jnp.asarray(operands[weight_position], eqn.invars[weight_position].aval.dtype)
        one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32)
        return [_Affine(operands[position].branches[0], weight, one, zero, (), (), layer)]

    return lrp_linear


@functools.lru_cache(maxsize=64)
def _lrp_interpreter(
    rule: str, epsilon: float, gamma: float, alpha: float, beta: float
) -> Interpreter:
    """One interpreter per choice of rule and constants: its identity keys the compiled
    programs of :func:`_evaluate_call`, so repeated calls reuse them."""
    linear_rule = _lrp_rule(rule, epsilon, gamma, alpha, beta)
    return Interpreter(
        "lrp",
        {"dot_general": linear_rule, "conv_general_dilated": linear_rule},
        lazy_rules=dict.fromkeys(_AFFINE, _fold_affine),
    )


def _as_nonnegative(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}") from None
    if not number >= 0:  # also refuses NaN
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return number


def lrp(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    rule: str = "epsilon",
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    alpha: float = 1.0,
    beta: float = 0.0,
) -> Array:
    """Layer-wise relevance propagation of the target logit, ``x * g_x`` with the LRP
    backward pass at every dense and convolutional layer, its bias and a batch norm
    after it folded in (Bach et al. 2015; rules of Montavon et al. 2019, derived in the
    module docstring). The relevances sum to ``f_t(x)`` minus what biases and
    batch-norm shifts absorb: exactly, for ReLU networks without them, up to epsilon,
    and for alpha-beta with ``alpha - beta = 1`` where every neuron has contributions
    of both signs. Captum counterpart: ``captum.attr.LRP``.

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: unused (deterministic); accepted so every method has one signature.
      baseline: must be None (no reference input).
      batch_size: examples per backward pass; ``None`` processes all at once.
      rule: ``'epsilon'``, ``'gamma'`` or ``'alpha_beta'``, used at every layer.
      epsilon: the stabiliser added to every denominator (all rules).
      gamma: the weight of positive weights in the gamma rule (0: the epsilon rule).
      alpha, beta: the weights of positive and negative contributions in the
        alpha-beta rule; relevance is conserved for ``alpha - beta = 1``.

    Returns:
      float32 array shaped like ``x``: the input relevances.
    """
    refuse_baseline(baseline, "lrp")
    if rule not in LRP_RULES:
        raise ValueError(f"rule must be one of {', '.join(map(repr, LRP_RULES))}, got {rule!r}")
    epsilon = _as_nonnegative(epsilon, "epsilon")
    gamma = _as_nonnegative(gamma, "gamma")
    alpha = _as_nonnegative(alpha, "alpha")
    beta = _as_nonnegative(beta, "beta")
    x = as_input(x)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    interpreter = _lrp_interpreter(rule, epsilon, gamma, alpha, beta)
    return sum_over_samples(
        lambda example, _: (
            x[example] * modified_gradient(interpreter, fn, x[example], target[example])
        ),
        x.shape[0],
        batch_size=batch_size,
    )


# ----------------------------------------------------------------------------------------
# Guided Grad-CAM.


def guided_grad_cam(
    model: Any,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: None = None,
    batch_size: int | None = None,
    layer: str,
) -> Array:
    """Guided Grad-CAM: guided backprop times the Grad-CAM map of ``layer`` (ReLU
    applied, upsampled bilinearly to the input), broadcast over channels (Selvaraju et
    al. 2017). Captum counterpart: ``captum.attr.GuidedGradCam``.

    Args:
      model: a model handle, ``flax_model(module, variables, train=False)`` or
        ``flax_model(nnx_module)``; a ``(module, variables)`` tuple also works.
      x: images ``(N, H, W, C)`` or ``(N, H, W)``.
      target: class per example, one class for all, or ``None`` (predicted class).
      key: unused (deterministic); accepted so every method has one signature.
      baseline: must be None (no reference input).
      batch_size: examples per backward pass; ``None`` processes all at once.
      layer: module path of the Grad-CAM layer (see
        :func:`~fmi_jax.attribution.layer_names`).

    Returns:
      float32 array shaped like ``x``.
    """
    refuse_baseline(baseline, "guided_grad_cam")
    handle = as_flax_model(model, "guided_grad_cam")
    x = as_input(x)
    if x.ndim not in (3, 4):
        raise ValueError(
            f"guided_grad_cam needs images (N, H, W, C) or (N, H, W), got shape {x.shape}"
        )
    # The target first: it checks that the model maps x to (N, classes), and says so
    # for one example without its batch axis, (H, W, C) read as (N, H, W).
    target = resolve_target(handle, x, target, batch_size=batch_size)
    handle.layer_shape(x, layer)  # a clear error for a bad layer, before any tracing
    maps = grad_cam(handle, x, target, batch_size=batch_size, layer=layer)
    guided = guided_backprop(handle, x, target, batch_size=batch_size)
    return guided * (maps[..., None] if x.ndim == 4 else maps)


# The nested calls being interpreted, innermost first: the equations inside a library's
# jitted function (jnp.sort) carry no line of the user's code, their call does.
_CALL_SITES: contextvars.ContextVar[tuple[jax_core.JaxprEqn, ...]] = contextvars.ContextVar(
    "_CALL_SITES", default=()
)


def _source_line(eqn: jax_core.JaxprEqn) -> str:
    """Where the model's code made ``eqn`` (or the innermost call around it that has a
    line), as " at file:line:column (function)", so that an error about a primitive
    points at the line to change: the innermost line outside installed packages and
    fmi_jax, followed by the library's line when the primitive came from a library
    layer (flax's ``PReLU``); empty when JAX kept no line."""
    for site in (eqn, *_CALL_SITES.get()):
        frames = source_info_util.summarize(site.source_info, num_frames=_FRAMES).splitlines()
        frames = [f for f in reversed(frames) if f and not f.startswith("unknown")]
        if not frames:
            continue
        own = next((f for f in frames if not _in_a_library(f)), None)
        if own is None or own == frames[0]:
            return f" at {own or frames[0]}"
        return f" at {own}, in {frames[0]}"
    return ""


_FRAMES = 64  # user frames to look through, innermost first
# fmi_jax's folder as imported and as resolved (a symlinked checkout), with the
# separator, so that a user's fmi_jax_models/ next to it is not taken for it.
_FMI_JAX = tuple(
    {str(Path(__file__).parents[1]) + os.sep, str(Path(__file__).resolve().parents[1]) + os.sep}
)


def _in_a_library(frame: str) -> bool:
    """Whether a ``file:line:column (function)`` summary is a line of an installed
    package or of fmi_jax itself, not of the user's own code."""
    path = frame.rsplit(" (", 1)[0]
    return any(part in path for part in ("site-packages", "dist-packages")) or path.startswith(
        _FMI_JAX
    )
