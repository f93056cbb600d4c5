r"""DeepLIFT with the Rescale rule (Shrikumar, Greenside & Kundaje 2017, "Learning
Important Features Through Propagating Activation Differences"), as an interpreter
of the model's jaxpr.

DeepLIFT explains the difference of the target logit between the input x and a
baseline (reference) x0. Every node of the network gets a *multiplier*
m = d(Delta out) / d(Delta in) such that Delta out = m * Delta in holds exactly, and the
multipliers compose by the chain rule, so the attributions

    A_j = (x_j - x0_j) * M_j,   M = multiplier of the target logit w.r.t. the input,

sum exactly to f_t(x) - f_t(x0) ("summation-to-delta"). For linear nodes the
multiplier is the ordinary derivative; the method differs from the gradient only at
nonlinearities.

How it works, for any ``fn`` (no model code to edit, no hooks):

1. ``jax.make_jaxpr(fn)(x)`` traces the model into a jaxpr: a list of primitive
   equations. Parameters and other constants become jaxpr constants.
2. The jaxpr is evaluated on the pair (x, x0) at once: every value that depends on the
   input is a pair (value on the input branch, value on the baseline branch); values
   that do not (parameters, shapes, anything computed from them) are evaluated once.
3. Linear primitives (add, sub, dot_general/conv/mul by an input-independent operand,
   reshape, broadcast, transpose, slice, pad, concatenate, reduce_sum, gather with
   fixed indices, select_n with a fixed predicate, ...; an explicit allow-list) run
   unchanged on both branches, so autodiff's derivative is their multiplier.
4. Every nonlinear application is wrapped in its own ``jax.custom_vjp`` whose backward
   pass multiplies by the DeepLIFT multiplier instead of the local derivative:

   * elementwise g(z) of one input-dependent operand (ReLU = max(z, 0), min/clamp with
     constants, abs, tanh, logistic, exp, log, erf, sqrt, rsqrt, integer_pow, ...):
     Rescale, m = (g(z) - g(z0)) / (z - z0) (where z ~= z0 see "The multiplier where
     z ~= z0" below);
   * a product of two input-dependent operands, ``a * b``, and more generally any
     bilinear B(a, b) (dot_general or conv of two input-dependent operands): the exact
     two-player Shapley split
     Delta B = B(Delta a, (b + b0) / 2) + B((a + a0) / 2, Delta b),
     i.e. the backward pass is the vjp of B at the midpoints. Needed for SiLU written as
     ``x * sigmoid(x)``, hard-swish, squeeze-and-excitation gates, LayerNorm's
     ``(x - mean) * rsqrt(var)``, attention;
   * a / b with both input-dependent: a * (1 / b), Rescale on the reciprocal then the
     product split;
   * max/min of two input-dependent operands: the two-player Shapley split
     phi_a = [(g(a, b0) - g(a0, b0)) + (g(a, b) - g(a0, b))] / 2, and symmetrically;
   * max pooling (``reduce_window_max``, what ``flax.linen.max_pool`` emits) and
     ``reduce_max``/``reduce_min``: Captum's rule. The positive part of each output's
     change is routed to the argmax of the *input* window and the negative part to the
     argmax of the *baseline* window (argmin for min), and divided there by the change
     of that position. The divisor is never smaller than what is routed to it (the
     input's argmax k has x[k] - x0[k] >= max(x) - max(x0)), so the multiplier stays
     bounded and summation-to-delta holds exactly; the ordinary gradient is used only
     where the position did not change at all, where nothing nonzero is routed.

5. The attributions are ``(x - x0) * grad_x sum_i [f_t(x_i) - f_t(x0_i)]`` through the
   paired program: the gradient of the target difference, with every nonlinearity's
   derivative replaced by its multiplier, is the DeepLIFT multiplier M.

The traversal (equation evaluation, dependence tracking, the linear allow-list, nested
calls) is :class:`fmi_jax.attribution.propagation.Interpreter`, which guided backprop,
deconvolution and LRP share; DeepLIFT is its strict table of pair-valued rules, with
every input-dependent value a ``Tracked`` pair (input branch, baseline branch).

Nested jaxprs (``jit``, ``custom_jvp_call`` -- ``jax.nn.relu`` is a custom_jvp around
``max`` --, ``custom_vjp_call`` through its forward jaxpr, ``remat``, ``closed_call``)
are interpreted recursively, with one exception: a nested call whose only
input-dependent operand is one array and whose body is elementwise and nonlinear is an
*activation function* (every ``jax.nn`` activation is such a jitted function) and gets
the Rescale rule as a whole, as DeepLIFT prescribes for activation layers. For a
function of one scalar, summation-to-delta pins the multiplier down to
(g(z) - g(z0)) / (z - z0) anyway, so this agrees with composing per-primitive rules
where those exist, and it also covers activations built from comparisons and
``where`` (leaky_relu, elu, hard_tanh, the NaN guard inside softplus), which have no
per-primitive rule.

Anything else that depends on the input raises ``NotImplementedError`` naming the
primitive (sort, cumulative max, control flow, comparisons outside an activation,
...). An unknown nonlinear op is never treated as linear: that would silently break
summation-to-delta.

The multiplier where z ~= z0. The difference quotient (g(z) - g(z0)) / (z - z0) loses
accuracy as z0 -> z, because g(z) and g(z0) are each rounded:

* piecewise linear g (max/min/clamp/abs and activations made only of such ops): the
  quotient is computed exactly whenever z and z0 lie on the same linear piece and is
  bounded by the largest slope otherwise, so only z == z0 needs another value, g'(z);
* smooth g: the quotient has a rounding error of at most about
  R = 2 eps max(|g(z)|, |g(z0)|) / |z - z0| (eps: machine epsilon). The derivative at
  the midpoint, g'((z + z0) / 2), has no rounding problem and differs from the secant
  only by g''' (z - z0)^2 / 24. Each element uses the quotient if it differs from the
  midpoint slope by more than R (then the difference is real curvature, which the
  quotient captures to within R), and the midpoint slope otherwise (the two agree to
  within the quotient's own noise, and for tiny |z - z0|, where R is large, the
  midpoint slope is the accurate one). A fixed threshold on |z - z0| cannot make
  this choice, because the right one depends on the scale of g: rsqrt(var + 1e-6) in
  a normalisation layer changes by a factor 1000 within 1e-6, exp near 0 by only 1e-6
  there. R is scale-free, and for quadratics the midpoint slope is exact. Captum uses
  the quotient wherever |z - z0| >= 1e-10 and g'(z) below; for smooth g and small
  differences its quotient is mostly rounding noise (in float32 exp(z) - exp(z0)
  rounds to 0 near 0 for |z - z0| < 6e-8), and that error multiplies every
  contribution routed through the node.

Differences from Captum (``captum.attr.DeepLift``):

* Captum hooks ``torch.nn.Module`` instances: nonlinearities called as functions
  (``F.relu``, ``torch.sigmoid``, ``x * torch.sigmoid(x)``) keep their plain gradient,
  and a module instance used twice (one ``nn.ReLU`` shared by two layers) has its saved
  input overwritten by the second call; both silently break summation-to-delta.
  Here every equation of the traced program is its own node, so functional
  activations, products of input-dependent tensors and reused modules are all handled,
  and unsupported ops raise instead of falling back to gradients.
* The Captum API is ``DeepLift(model).attribute(inputs, baselines, target)``; a
  ``deeplift(model, variables, x, target)`` signature would follow it. Tracing makes a
  plain function ``fn`` enough (``lambda x: model.apply(variables, x)``), which also
  covers models that are not a single module (ensembles, preprocessing, a jitted apply),
  so ``fn`` it is.
* Products and max/min of two input-dependent values use the Shapley split, and the
  multiplier where input and baseline nearly agree is chosen by a rounding-error
  bound (above).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jax_core

from fmi_jax.attribution.core import (
    Array,
    ModelFn,
    Target,
    as_baseline,
    as_input,
    layout_checked,
    resolve_target,
    select_target,
    sum_over_samples,
)
from fmi_jax.attribution.propagation import (
    BILINEAR,
    CALLS,
    Interpreter,
    Rule,
    Tracked,
    apply,
    bind,
    inner_jaxpr,
)

__all__ = ["deeplift"]


# ----------------------------------------------------------------------------------------
# Primitive tables, by primitive name. The linear allow-list (LINEAR, INDEX_OPERANDS,
# BILINEAR with one input-dependent operand, div by an input-independent value) and the
# nested calls (CALLS) are the interpreter's, in fmi_jax.attribution.propagation.

# Smooth elementwise functions of one input-dependent operand (the others constant).
# div appears here for a dependent denominator; a dependent numerator alone is linear.
_SMOOTH = frozenset(
    {
        "exp",
        "exp2",
        "expm1",
        "log",
        "log1p",
        "tanh",
        "logistic",
        "erf",
        "erfc",
        "erf_inv",
        "sqrt",
        "rsqrt",
        "cbrt",
        "square",
        "integer_pow",
        "pow",
        "div",
        "sin",
        "cos",
        "tan",
        "asin",
        "acos",
        "atan",
        "atan2",
        "sinh",
        "cosh",
        "asinh",
        "acosh",
        "atanh",
        "lgamma",
        "digamma",
    }
)

# Piecewise linear elementwise functions.
_PIECEWISE_LINEAR = frozenset({"max", "min", "clamp", "abs"})

# Piecewise constant elementwise ops (comparisons, rounding, logic). Their secant is
# unbounded, so they have no rule of their own; they may appear inside an activation
# function, which is rescaled as a whole.
_STEP = frozenset(
    {
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "and",
        "or",
        "not",
        "xor",
        "sign",
        "floor",
        "ceil",
        "round",
        "is_finite",
    }
)

# Elementwise ops an activation function may be built from.
_ELEMENTWISE = (
    frozenset(
        {
            "add",
            "add_any",
            "sub",
            "neg",
            "copy",
            "convert_element_type",
            "select_n",
            "mul",
            "stop_gradient",
        }
    )
    | _SMOOTH
    | _PIECEWISE_LINEAR
    | _STEP
)

# Reductions that pick one element: name -> True for max-like, False for min-like.
_CHOOSERS = {
    "reduce_max": True,
    "reduce_window_max": True,
    "reduce_min": False,
    "reduce_window_min": False,
}


# ----------------------------------------------------------------------------------------
# The rule table. Every input-dependent value is a pair Tracked((x branch, baseline
# branch)); each rule returns None where the equation is linear (one input-dependent
# factor), and the interpreter then evaluates it on both branches.


def _dependent(operands: Sequence[Any]) -> list[bool]:
    return [isinstance(v, Tracked) for v in operands]


def _identity(eqn: jax_core.JaxprEqn, operands: list[Any]) -> list[Any]:
    """stop_gradient only matters for derivatives; JAX code uses it for value-preserving
    tricks (softmax's max shift). Blocking the multiplier there would lose part of the
    difference, so it is the identity here."""
    return operands


def _product_rule(eqn: jax_core.JaxprEqn, operands: list[Any]) -> list[Any] | None:
    """mul, dot_general, conv of two input-dependent operands: the Shapley split."""
    if not all(_dependent(operands)):
        return None
    if eqn.primitive.name == "mul":
        operands = [_broadcast(v, eqn.outvars[0].aval.shape) for v in operands]
    return [_bilinear(lambda a, b: bind(eqn, [a, b])[0], *operands)]


def _div_rule(eqn: jax_core.JaxprEqn, operands: list[Any]) -> list[Any] | None:
    dependent = _dependent(operands)
    if all(dependent):
        return [_quotient(*(_broadcast(v, eqn.outvars[0].aval.shape) for v in operands))]
    if dependent[0]:
        return None  # an input-dependent numerator alone: linear
    return [_rescale_equation(eqn, operands, smooth=True)]


def _max_min_rule(eqn: jax_core.JaxprEqn, operands: list[Any]) -> list[Any]:
    if all(_dependent(operands)):
        shape = eqn.outvars[0].aval.shape
        a, b = (_broadcast(v, shape) for v in operands)
        return [_shapley(lambda a, b: bind(eqn, [a, b])[0], a, b)]
    return [_rescale_equation(eqn, operands, smooth=False)]


def _elementwise_rule(smooth: bool) -> Rule:
    def rule(eqn: jax_core.JaxprEqn, operands: list[Any]) -> list[Any] | None:
        if sum(_dependent(operands)) != 1:
            return None
        return [_rescale_equation(eqn, operands, smooth=smooth)]

    return rule


def _chooser_rule(eqn: jax_core.JaxprEqn, operands: list[Any]) -> list[Any]:
    largest = _CHOOSERS[eqn.primitive.name]
    return [_chooser(lambda z: bind(eqn, [z])[0], operands[0], largest)]


def _activation_rule(eqn: jax_core.JaxprEqn, operands: list[Any]) -> list[Any] | None:
    """A nested call that is an activation function is rescaled as a whole."""
    kind = _activation_kind(eqn, inner_jaxpr(eqn)[0], _dependent(operands))
    if kind is None:
        return None
    return [_rescale_equation(eqn, operands, smooth=kind == "smooth")]


_RULES: dict[str, Rule] = {
    "stop_gradient": _identity,
    **{name: _product_rule for name in BILINEAR},
    **{name: _elementwise_rule(smooth=True) for name in _SMOOTH},
    **{name: _elementwise_rule(smooth=False) for name in _PIECEWISE_LINEAR},
    "div": _div_rule,
    "max": _max_min_rule,
    "min": _max_min_rule,
    **{name: _chooser_rule for name in _CHOOSERS},
}

_INTERPRETER = Interpreter(
    "deeplift",
    _RULES,
    strict=True,
    call_rule=_activation_rule,
    hint=(
        "Linear primitives are on an explicit allow-list and nonlinear ones need a DeepLIFT "
        "rule; treating it as linear would silently break summation-to-delta. If it is "
        "part of an elementwise activation function, wrap that function in jax.jit: a "
        "jitted elementwise function of one input-dependent array is rescaled as a single "
        "nonlinearity."
    ),
)


def _broadcast(value: Tracked, shape: tuple[int, ...]) -> Tracked:
    return Tracked(tuple(jnp.broadcast_to(v, shape) for v in value.branches))


# ----------------------------------------------------------------------------------------
# Activation functions.


def _activation_kind(
    eqn: jax_core.JaxprEqn, jaxpr: jax_core.Jaxpr, dependent: list[bool]
) -> str | None:
    """'smooth' or 'piecewise' if the call is an elementwise nonlinear function of a
    single input-dependent array (an activation function), else None."""
    if sum(dependent) != 1 or len(eqn.outvars) != 1:
        return None
    z, out = eqn.invars[dependent.index(True)], eqn.outvars[0]
    if out.aval.shape != z.aval.shape or not jnp.issubdtype(out.aval.dtype, jnp.floating):
        return None
    kinds = _elementwise_kinds(jaxpr, dependent, z.aval.shape)
    if not kinds:  # not elementwise, or elementwise but linear
        return None
    return "smooth" if "smooth" in kinds else "piecewise"


def _elementwise_kinds(
    jaxpr: jax_core.Jaxpr, dependent: Sequence[bool], shape: tuple[int, ...]
) -> set[str] | None:
    """The kinds of nonlinearity ('smooth', 'piecewise') met on the input-dependent part
    of ``jaxpr``, or None if that part is not elementwise on arrays of ``shape``."""
    tainted = {v for v, d in zip(jaxpr.invars, dependent) if d}
    kinds: set[str] = set()
    for eqn in jaxpr.eqns:
        flags = [not isinstance(v, jax_core.Literal) and v in tainted for v in eqn.invars]
        if not any(flags):
            continue
        shapes = [v.aval.shape for v, f in zip(eqn.invars, flags) if f]
        shapes += [v.aval.shape for v in eqn.outvars]
        if any(s != shape for s in shapes):
            return None
        name = eqn.primitive.name
        if name in CALLS:
            inner = _elementwise_kinds(inner_jaxpr(eqn)[0], flags, shape)
            if inner is None:
                return None
            kinds |= inner
        elif name in _ELEMENTWISE:
            kinds |= {_elementwise_kind(name, flags)} - {None}
        else:
            return None
        tainted.update(eqn.outvars)
    return kinds


def _elementwise_kind(name: str, dependent: list[bool]) -> str | None:
    """'smooth', 'piecewise' or None (linear) for an elementwise primitive applied to
    operands of which those flagged in ``dependent`` depend on the input."""
    if name in ("mul", "div"):
        one_factor = dependent == [True, False] or (name == "mul" and dependent == [False, True])
        return None if one_factor else "smooth"
    if name in _SMOOTH:
        return "smooth"
    if name == "select_n":
        return "piecewise" if dependent[0] else None
    if name in _PIECEWISE_LINEAR or name in _STEP:
        return "piecewise"
    return None  # add, sub, neg, copy, convert_element_type, stop_gradient


# ----------------------------------------------------------------------------------------
# Rules for nonlinear nodes. Each is a custom_vjp over (input branch, baseline branch):
# the forward pass evaluates both branches, the backward pass sends the input branch's
# cotangent through the DeepLIFT multiplier. Attributions differentiate with respect to
# the input branch only (the baseline is a constant), so the baseline branch gets no
# cotangent (None).


def _rescale_equation(eqn: jax_core.JaxprEqn, operands: list[Any], smooth: bool) -> Tracked:
    """Rescale rule for an elementwise equation with exactly one input-dependent operand."""
    position = next(i for i, v in enumerate(operands) if isinstance(v, Tracked))
    z = _broadcast(operands[position], eqn.outvars[0].aval.shape)
    constants = tuple(
        jnp.asarray(v, atom.aval.dtype)
        for i, (v, atom) in enumerate(zip(operands, eqn.invars))
        if i != position
    )

    def g(z: Array, constants: tuple[Array, ...]) -> Array:
        args = list(constants)
        args.insert(position, z)
        return apply(eqn, args)[0]

    return _rescale(g, z, constants, smooth)


def _rescale(g: Callable[[Array, Any], Array], z: Tracked, constants: Any, smooth: bool) -> Tracked:
    """y = g(z) elementwise, with multiplier (g(z) - g(z0)) / (z - z0)."""

    @jax.custom_vjp
    def rescaled(z, z0, constants):
        return g(z, constants), g(z0, constants)

    def forward(z, z0, constants):
        y, y0 = g(z, constants), g(z0, constants)
        return (y, y0), _secant(lambda v: g(v, constants), z, z0, y, y0, smooth)

    def backward(multiplier, cotangents):
        return cotangents[0] * multiplier, None, None

    rescaled.defvjp(forward, backward)
    return Tracked(tuple(rescaled(*z.branches, constants)))


def _secant(
    g: Callable[[Array], Array], z: Array, z0: Array, y: Array, y0: Array, smooth: bool
) -> Array:
    """The secant slope (g(z) - g(z0)) / (z - z0), estimated accurately where z ~= z0
    (see "The multiplier where z ~= z0" in the module docstring)."""
    dz = z - z0

    def slope_at(point):
        return jax.jvp(g, (point,), (jnp.ones_like(point),))[1]

    if not smooth:
        unchanged = dz == 0
        return jnp.where(unchanged, slope_at(z), (y - y0) / jnp.where(unchanged, 1, dz))
    quotient = (y - y0) / jnp.where(dz == 0, 1, dz)
    midpoint_slope = slope_at(z0 + dz / 2)
    rounding = 2 * jnp.finfo(dz.dtype).eps * jnp.maximum(jnp.abs(y), jnp.abs(y0)) / jnp.abs(dz)
    return jnp.where(jnp.abs(quotient - midpoint_slope) > rounding, quotient, midpoint_slope)


def _bilinear(product: Callable[[Array, Array], Array], a: Tracked, b: Tracked) -> Tracked:
    """Two-player Shapley split of a bilinear B(a, b) = product(a, b), both operands
    input-dependent.

    B(a, b) - B(a0, b0) = B(Delta a, (b + b0) / 2) + B((a + a0) / 2, Delta b) exactly,
    so the multipliers are B's partial derivatives at the midpoints (a + a0) / 2,
    (b + b0) / 2: the backward pass is B's vjp there.
    """

    @jax.custom_vjp
    def split(a, a0, b, b0):
        return product(a, b), product(a0, b0)

    def forward(a, a0, b, b0):
        return (product(a, b), product(a0, b0)), ((a + a0) / 2, (b + b0) / 2)

    def backward(midpoints, cotangents):
        _, pullback = jax.vjp(product, *midpoints)
        da, db = pullback(cotangents[0])
        return da, None, db, None

    split.defvjp(forward, backward)
    return Tracked(tuple(split(*a.branches, *b.branches)))


def _quotient(a: Tracked, b: Tracked) -> Tracked:
    """a / b with both input-dependent, as a * (1 / b)."""
    reciprocal = _rescale(lambda z, _: 1 / z, b, (), smooth=True)
    return _bilinear(lax.mul, a, reciprocal)


def _shapley(g: Callable[[Array, Array], Array], a: Tracked, b: Tracked) -> Tracked:
    """Two-player Shapley split of an elementwise, piecewise linear g(a, b) (max, min).

    phi_a = [(g(a, b0) - g(a0, b0)) + (g(a, b) - g(a0, b))] / 2 is a's average
    contribution over both orders of switching a and b from baseline to input; phi_a +
    phi_b = g(a, b) - g(a0, b0). Multipliers phi / Delta, with the partial derivative
    averaged over b0 and b where an operand did not change.
    """

    def multiplier(phi, delta, partial_derivatives):
        fallback = sum(partial_derivatives) / 2
        return jnp.where(delta == 0, fallback, phi / jnp.where(delta == 0, 1, delta))

    def partial_derivative(f, at):
        return jax.jvp(f, (at,), (jnp.ones_like(at),))[1]

    @jax.custom_vjp
    def split(a, a0, b, b0):
        return g(a, b), g(a0, b0)

    def forward(a, a0, b, b0):
        y, y0 = g(a, b), g(a0, b0)
        a_moved, b_moved = g(a, b0), g(a0, b)
        m_a = multiplier(
            ((a_moved - y0) + (y - b_moved)) / 2,
            a - a0,
            [partial_derivative(lambda v: g(v, b0), a), partial_derivative(lambda v: g(v, b), a)],
        )
        m_b = multiplier(
            ((b_moved - y0) + (y - a_moved)) / 2,
            b - b0,
            [partial_derivative(lambda v: g(a0, v), b), partial_derivative(lambda v: g(a, v), b)],
        )
        return (y, y0), (m_a, m_b)

    def backward(multipliers, cotangents):
        m_a, m_b = multipliers
        return cotangents[0] * m_a, None, cotangents[0] * m_b, None

    split.defvjp(forward, backward)
    return Tracked(tuple(split(*a.branches, *b.branches)))


def _chooser(op: Callable[[Array], Array], z: Tracked, largest: bool) -> Tracked:
    """Captum's max-pooling rule for reductions that pick one element per output.

    Each output's change dy is split into the part that moves towards the input
    (max(dy, 0) for max, min(dy, 0) for min) and the rest. The first is routed to the
    chosen element of the input window, the second to the chosen element of the
    baseline window (routing = the ordinary vjp of op, which sends a cotangent to the
    argmax), and both are divided by the change of the element they land on. Where
    an element did not change, nothing nonzero was routed to it and its ordinary
    gradient is used.
    """

    @jax.custom_vjp
    def chosen(z, z0):
        return op(z), op(z0)

    def forward(z, z0):
        y, y0 = op(z), op(z0)
        return (y, y0), (z, z0, y - y0)

    def backward(residuals, cotangents):
        z, z0, dy = residuals
        ct = cotangents[0]
        to_input = jnp.maximum(dy, 0) if largest else jnp.minimum(dy, 0)
        _, route = jax.vjp(op, z)
        _, route_baseline = jax.vjp(op, z0)
        routed = route(ct * to_input)[0] + route_baseline(ct * (dy - to_input))[0]
        dz = z - z0
        unchanged = dz == 0
        return jnp.where(unchanged, route(ct)[0], routed / jnp.where(unchanged, 1, dz)), None

    chosen.defvjp(forward, backward)
    return Tracked(tuple(chosen(*z.branches)))


# ----------------------------------------------------------------------------------------
# Public entry point.


def _deeplift_chunk(fn: ModelFn, x: Array, baseline: Array, target: Array) -> tuple[Array, Array]:
    """Attributions and summation-to-delta gaps for one chunk of examples."""
    program = jax.make_jaxpr(fn)(x)

    def target_difference(x: Array) -> tuple[Array, Array]:
        [logits] = _INTERPRETER.evaluate(program.jaxpr, program.consts, [Tracked((x, baseline))])
        if not isinstance(logits, Tracked):  # the output does not depend on the input
            logits = Tracked((logits, logits))
        on_input, on_baseline = logits.branches
        difference = select_target(on_input, target) - select_target(on_baseline, target)
        return jnp.sum(difference), difference

    multipliers, difference = jax.grad(target_difference, has_aux=True)(x)
    attributions = (x - baseline) * multipliers
    delta = attributions.reshape(x.shape[0], -1).sum(axis=1) - difference
    return attributions, delta


def deeplift(
    fn: ModelFn,
    x: Array,
    target: Target = None,
    *,
    key: Array | None = None,
    baseline: Array | float | None = None,
    batch_size: int | None = None,
    return_delta: bool = False,
) -> Array | tuple[Array, Array]:
    """DeepLIFT-Rescale attributions of the target logit relative to a baseline.

    ``A = (x - x0) * M`` where M is the DeepLIFT multiplier of ``f_t`` with respect to
    the input (Shrikumar et al. 2017), so that ``sum(A_i) = f_t(x_i) - f_t(x0_i)``.
    For linear models it equals integrated gradients and ``(x - x0) * gradient``; for
    ReLU networks with a zero baseline and no biases, input x gradient (Ancona et al.
    2018, "Towards better understanding of gradient-based attribution methods for Deep
    Neural Networks"). The module docstring describes the jaxpr interpreter and every
    rule. Captum counterpart: ``captum.attr.DeepLift`` (Rescale rule).

    Takes ``fn`` rather than ``(model, variables)``: the interpreter traces any
    function, which is strictly more general (a jitted apply, an ensemble, a model with
    preprocessing all work), and ``fn = lambda x: model.apply(variables, x)`` is the
    two-argument form.

    Args:
      fn: model function, batch ``(N, ...)`` -> logits ``(N, classes)``, evaluated in
        inference mode.
      x: inputs ``(N, ...)``.
      target: class per example ``(N,)``, one int for all, or ``None`` for the
        predicted class.
      key: unused (deterministic); accepted so every method has one signature.
      baseline: the reference input x0. ``None`` = zeros; a scalar, an array of one
        example's shape or of the full shape of ``x``.
      batch_size: examples per paired evaluation; ``None`` processes all at once.
      return_delta: also return the summation-to-delta gap per example.

    Returns:
      float32 attributions shaped like ``x``; with ``return_delta`` also ``delta``
      of shape ``(N,)``: ``sum(A_i) - (f_t(x_i) - f_t(x0_i))``, zero up to float
      rounding.

    Raises:
      NotImplementedError: the model applies a nonlinear primitive without a DeepLIFT
        rule to an input-dependent value (the message names it).
    """
    x = as_input(x)
    with layout_checked(fn, x):  # a baseline that does not fit a misread x: say why
        baseline = as_baseline(baseline, x)
    target = resolve_target(fn, x, target, batch_size=batch_size)
    attributions, delta = sum_over_samples(
        lambda example, _: _deeplift_chunk(fn, x[example], baseline[example], target[example]),
        x.shape[0],
        batch_size=batch_size,
    )
    return (attributions, delta) if return_delta else attributions
