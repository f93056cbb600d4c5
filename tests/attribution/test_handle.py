"""The model handle: a Linen or NNX classifier as fn(x) -> logits that also captures a
layer. Checked against independent computations (Linen's own capture_intermediates, the
model split by hand at the layer), Linen against NNX with the same weights, under
jit / vmap / scan, and the errors for layers it cannot capture."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fmi_jax.attribution.handle import FlaxModel, as_flax_model, flax_model

CHANNELS, FEATURES, CLASSES = 2, 4, 3
IMAGE_LAYERS = ("conv1", "bn", "drop", "conv2")  # every (N, h, w, K) output, in call order
LAYERS = (*IMAGE_LAYERS, "head")  # and the dense head's (N, classes)


class LinenCNN(nn.Module):
    """conv -> BatchNorm -> ReLU -> Dropout -> conv -> ReLU -> avg-pool -> dense, with
    the flax examples' ``train`` convention."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(FEATURES, (3, 3), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        x = nn.Dropout(0.5, deterministic=not train, name="drop")(nn.relu(x))
        x = nn.Conv(FEATURES, (3, 3), name="conv2")(x)
        return linen_tail(x)


def linen_tail(a):
    """Everything after conv2, as in LinenCNN (the head's parameters come separately)."""
    a = nn.avg_pool(nn.relu(a), (2, 2), strides=(2, 2))
    return nn.Dense(CLASSES, name="head")(a.reshape(a.shape[0], -1))


class Tail(nn.Module):
    @nn.compact
    def __call__(self, a):
        return linen_tail(a)


class NnxCNN(nnx.Module):
    """LinenCNN in NNX (built in training mode, as a user's module usually is)."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(CHANNELS, FEATURES, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(FEATURES, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.conv2 = nnx.Conv(FEATURES, FEATURES, (3, 3), rngs=rngs)
        self.head = nnx.Linear(4 * 4 * FEATURES, CLASSES, rngs=rngs)

    def __call__(self, x):
        x = self.drop(nnx.relu(self.bn(self.conv1(x))))
        x = nn.avg_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        return self.head(x.reshape(x.shape[0], -1))


def randomised(tree, seed):
    """Random values for every leaf of a tree of shapes (variances positive, counters
    zero, PRNG keys from the seed). NumPy draws them: flax's initialisers would compile
    the threefry generator for every shape, seconds on a CPU."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = {getattr(entry, "key", None) for entry in path}
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        if jnp.issubdtype(leaf.dtype, jnp.integer):
            return jnp.zeros(leaf.shape, leaf.dtype)
        if "var" in names:
            return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.5, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, tree)


def linen_variables(model, x, seed=1, **kwargs):
    """Random variables for a Linen model and inputs like ``x``."""
    return randomised(jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **kwargs), x), seed)


def nnx_module_of(cls, seed=1):
    """An NNX module of class ``cls`` with random state."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(nnx.Rngs(0))))
    return nnx.merge(graphdef, randomised(state, seed))


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(0).uniform(0, 1, (4, 8, 8, CHANNELS)), jnp.float32)


@pytest.fixture(scope="module")
def linen(x):
    """(module, variables) of LinenCNN, every parameter and batch statistic random."""
    model = LinenCNN()
    return model, linen_variables(model, x, train=False)


@pytest.fixture(scope="module")
def linen_handle(linen):
    return flax_model(*linen, train=False)


@pytest.fixture(scope="module")
def nnx_module(linen):
    """NnxCNN carrying LinenCNN's weights and batch statistics."""
    model = nnx_module_of(NnxCNN, seed=2)
    params, stats = linen[1]["params"], linen[1]["batch_stats"]
    for name in ("conv1", "conv2", "head"):
        getattr(model, name).kernel[...] = params[name]["kernel"]
        getattr(model, name).bias[...] = params[name]["bias"]
    model.bn.scale[...] = params["bn"]["scale"]
    model.bn.bias[...] = params["bn"]["bias"]
    model.bn.mean[...] = stats["bn"]["mean"]
    model.bn.var[...] = stats["bn"]["var"]
    return model


@pytest.fixture(scope="module")
def nnx_handle(nnx_module):
    return flax_model(nnx_module)


@pytest.fixture(scope="module", params=["linen", "nnx"])
def handle(request, linen_handle, nnx_handle):
    return linen_handle if request.param == "linen" else nnx_handle


def host_copy(leaf):
    """A NumPy copy of a state leaf (PRNG keys as their key data)."""
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.array(leaf)


def close(a, b, tol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol)


def target_grad(handle, x, layer, target=0):
    """(A, d logit_target / dA) through capture with a zero delta."""
    shape = handle.layer_shape(x, layer)

    def target_sum(delta):
        logits, activation = handle.capture(x, layer, delta)
        return logits[:, target].sum(), activation

    gradient, activation = jax.grad(target_sum, has_aux=True)(jnp.zeros(shape))
    return activation, gradient


# --- Linen ---------------------------------------------------------------------


def test_linen_logits_and_activations_match_flax(linen, linen_handle, x):
    model, variables = linen
    expected, state = model.apply(
        variables, x, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    close(linen_handle(x), expected)
    assert linen_handle.layer_names(x) == LAYERS
    assert linen_handle.layer_names(x, images_only=True) == IMAGE_LAYERS
    for layer in LAYERS:
        logits, activation = linen_handle.capture(x, layer)
        close(logits, expected)
        close(activation, state["intermediates"][layer]["__call__"][0])
        assert linen_handle.layer_shape(x, layer) == activation.shape


def test_linen_capture_gradient_and_delta_match_the_model_split_at_the_layer(
    linen, linen_handle, x
):
    """d logit / dA from capture equals the gradient of the model's tail after conv2,
    and a nonzero delta replaces conv2's output by A + delta."""
    head = {"params": {"head": linen[1]["params"]["head"]}}
    tail = lambda a: Tail().apply(head, a)
    activation, gradient = target_grad(linen_handle, x, "conv2", target=1)
    close(gradient, jax.grad(lambda a: tail(a)[:, 1].sum())(activation))
    delta = jnp.asarray(np.random.default_rng(3).normal(size=activation.shape), jnp.float32)
    logits, same = linen_handle.capture(x, "conv2", delta)
    close(logits, tail(activation + delta), 1e-5)
    close(same, activation)


def test_linen_method_and_falsy_mutable_are_passed_through(linen, linen_handle, x):
    model, variables = linen
    handle = flax_model(model, variables, method=lambda mdl, x: mdl(x, train=False), mutable=False)
    close(handle(x), linen_handle(x))


@pytest.mark.parametrize("option", ["mutable", "capture_intermediates"])
def test_linen_state_returning_apply_is_refused(linen, option):
    with pytest.raises(ValueError, match=f"{option}=.*inference mode: pass train=False"):
        flax_model(*linen, **{option: ["batch_stats"]}, train=False)


def test_linen_needs_variables_and_nnx_refuses_them(linen, nnx_module):
    with pytest.raises(ValueError, match="needs the variables of the Linen module LinenCNN"):
        flax_model(linen[0])
    with pytest.raises(ValueError, match="NNX module carries its own variables"):
        flax_model(nnx_module, linen[1])
    with pytest.raises(ValueError, match="Linen module with its variables or an nnx.Module"):
        flax_model(lambda x: x)


def test_linen_rngs_and_parameters_alone_are_refused(linen, x):
    model, variables = linen
    with pytest.raises(ValueError, match="does not take rngs=.*pass train=False"):
        flax_model(model, variables, rngs={"dropout": jax.random.key(0)})
    with pytest.raises(ValueError, match=r"got a mapping with keys \['bn', 'conv1'.*'params'"):
        flax_model(model, variables["params"], train=False)
    # A train state's params without the batch statistics: one line naming the collection.
    params_only = flax_model(model, {"params": variables["params"]}, train=False)
    with pytest.raises(ValueError, match=r'"batch_stats".*pass every collection') as error:
        params_only(x)
    assert "\n" not in str(error.value)


def test_a_call_keyword_the_method_has_no_parameter_for_is_refused_with_those_it_has(
    linen, linen_handle, nnx_module, x
):
    """A misnamed inference flag fails when the handle is made, in one line naming the
    keywords the called method takes; a method taking **kwargs takes any."""
    cases = [
        (lambda: flax_model(*linen, training=False), r"LinenCNN.__call__ .*training=; .*: train$"),
        (lambda: flax_model(nnx_module, train=False), r"NnxCNN.__call__ .*train=; .*: none$"),
        (
            lambda: flax_model(*linen, method="__call__", train=False, scale=2.0),
            r"LinenCNN.__call__ takes no keyword scale=",
        ),
        (
            lambda: flax_model(*linen, method=lambda mdl, x: mdl(x, train=False), train=False),
            r"<lambda> takes no keyword train=; the keywords it takes: none$",
        ),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            make()
        assert "\n" not in str(error.value)
    forwards = flax_model(*linen, method=lambda mdl, x, **kw: mdl(x, **kw), train=False)
    close(forwards(x), linen_handle(x))


class _TrainField(nn.Module):
    """The mode as a module attribute, not a call argument."""

    train: bool = True

    @nn.compact
    def __call__(self, x):
        x = nn.BatchNorm(use_running_average=not self.train)(nn.Conv(2, (3, 3))(x))
        return nn.Dense(3)(x.mean((1, 2)))


class _TrainFlagAndField(nn.Module):
    """A train call flag beside an unrelated ``deterministic`` field."""

    deterministic: bool = False

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.BatchNorm(use_running_average=not train)(nn.Conv(2, (3, 3))(x))
        return nn.Dense(3)(x.mean((1, 2)))


class _TrainingAttribute(nnx.Module):
    def __init__(self, rngs, training=True):
        self.training = training
        self.conv = nnx.Conv(CHANNELS, 2, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(2, rngs=rngs)
        self.head = nnx.Linear(2, 3, rngs=rngs)

    def __call__(self, x):
        x = self.bn(self.conv(x), use_running_average=not self.training)
        return self.head(x.mean((1, 2)))


def test_a_mode_kept_as_a_module_attribute_is_named_in_the_fix(x):
    """A ``train`` field (Linen) or ``training`` attribute (NNX) cannot be changed by a
    call keyword: both errors say to set the attribute, and doing so works."""
    variables = _TrainField(train=False).init(jax.random.key(0), x)
    with pytest.raises(
        ValueError,
        match=r"its train attribute is True: build it as _TrainField\(\.\.\., train=False\)",
    ):
        A.saliency(flax_model(_TrainField(), variables), x)
    with pytest.raises(
        ValueError,
        match=r"keyword train=; .*\(_TrainField has a train attribute instead: set it to False\)",
    ):
        flax_model(_TrainField(), variables, train=False)
    # A mode the call takes is what the handle can set: it is named first.
    with pytest.raises(ValueError, match=r"pass its mode flag to the handle, e\.g\. flax_model"):
        A.saliency(flax_model(_TrainFlagAndField(), variables), x)
    fn = flax_model(_TrainField(train=False), variables)
    np.testing.assert_allclose(fn(x), _TrainField(train=False).apply(variables, x), atol=1e-6)
    module = _TrainingAttribute(nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=r"its training attribute is True: set module\.training = False before making",
    ):
        A.saliency(flax_model(module), x)
    module.training = False
    assert A.saliency(flax_model(module), x).shape == x.shape


class _NeedsTrain(nn.Module):
    """A mode flag without a default, as in many training scripts."""

    @nn.compact
    def __call__(self, x, train):
        x = nn.Dropout(0.5, deterministic=not train)(nn.Conv(2, (3, 3), name="conv")(x))
        return nn.Dense(3)(x.reshape(len(x), -1))


def test_a_call_parameter_without_a_default_is_asked_for_when_the_handle_is_made(x):
    """Every pass calls the model with ``x`` alone, so a required ``train`` missing from
    the handle fails at once, in one line with the keyword to pass, not as Python's
    TypeError from inside the first method."""
    variables = _NeedsTrain().init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match=r"^flax_model: _NeedsTrain.__call__ needs train, ") as e:
        flax_model(_NeedsTrain(), variables)
    assert "flax_model(module, variables, train=...)" in str(e.value)
    fn = flax_model(_NeedsTrain(), variables, train=False)
    expected = _NeedsTrain().apply(variables, x, train=False)
    np.testing.assert_array_equal(fn(x), expected)


class NnxFlagged(NnxCNN):
    """NnxCNN with a mode flag its call passes on, ported-from-Linen style: ``.eval()``
    does not override it."""

    def __call__(self, x, train: bool = True):
        x = self.bn(self.conv1(x), use_running_average=not train)
        x = self.drop(nnx.relu(x), deterministic=not train)
        x = nn.avg_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        return self.head(x.reshape(x.shape[0], -1))


def test_a_model_in_training_mode_is_refused_with_the_flag_to_pass(linen, nnx_module, x):
    """In training mode every example's map would depend on the rest of the batch (batch
    statistics) or on dropout noise: the handle refuses, on its first pass, and says
    which flag to pass."""
    trains = flax_model(*linen)  # LinenCNN's train flag defaults to True
    for call in (lambda: trains(x), lambda: trains.layer_names(x)):
        with pytest.raises(ValueError, match='"batch_stats" is immutable; .*train=False'):
            call()
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: NnxFlagged(nnx.Rngs(0))))
    flagged = nnx.merge(graphdef, nnx.state(nnx_module))
    trains = flax_model(flagged)
    changed = (
        "updates bn/mean, updates bn/var, gives another output with other random numbers "
        "\\(dropout\\); .* flax_model\\(module, train=False\\)"
    )
    for call in (lambda: trains(x), lambda: trains.capture(x, "conv2")):
        with pytest.raises(ValueError, match=changed):
            call()
    # With the flag, the eval-mode model: NnxCNN's logits, which has no flag.
    close(flax_model(flagged, train=False)(x), flax_model(nnx_module)(x))


class NnxMembers(nnx.Module):
    """Dropout members under nnx.split_rngs + nnx.vmap (an MC-dropout ensemble): in
    eval mode the pass advances the rng counter and writes it back, yet the output does
    not depend on it, so the model is in inference mode."""

    def __init__(self, rngs: nnx.Rngs):
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(8 * 8 * CHANNELS, CLASSES, rngs=rngs)

    def __call__(self, x):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0, None), out_axes=0)
        def members(drop, x):
            return drop(x)

        return self.head(members(self.drop, x.reshape(len(x), -1)).mean(0))


def test_an_inference_pass_that_only_moves_an_rng_counter_is_not_training_mode(x):
    model = nnx_module_of(NnxMembers, seed=3)
    model.eval()
    close(flax_model(model)(x), model(x))


# --- NNX against Linen ---------------------------------------------------------


def test_nnx_matches_linen(linen_handle, nnx_handle, x):
    """Same weights: same logits, layers, activations and d logit / dA."""
    assert nnx_handle.layer_names(x) == LAYERS
    close(nnx_handle(x), linen_handle(x))
    for layer in LAYERS:
        a_linen, g_linen = target_grad(linen_handle, x, layer, target=2)
        a_nnx, g_nnx = target_grad(nnx_handle, x, layer, target=2)
        close(a_nnx, a_linen)
        close(g_nnx, g_linen)
        assert float(jnp.abs(g_linen).max()) > 0


def test_nnx_user_module_is_never_modified(nnx_module, x):
    """Calls run on eval-mode copies of a snapshot: the user's module keeps its training
    mode and its state, and later changes to it are not seen by the handle."""
    before = jax.tree.map(host_copy, nnx.state(nnx_module))
    handle = flax_model(nnx_module)
    logits = handle(x)
    target_grad(handle, x, "bn")
    jax.jit(handle)(x)
    assert not nnx_module.drop.deterministic and not nnx_module.bn.use_running_average
    after = jax.tree.map(host_copy, nnx.state(nnx_module))
    jax.tree.map(np.testing.assert_array_equal, after, before)
    changed = nnx.clone(nnx_module)
    changed.head.bias[...] = changed.head.bias[...] + 1.0
    handle = flax_model(changed)
    changed.head.bias[...] = changed.head.bias[...] + 1.0
    close(handle(x), logits + 1.0, 1e-5)


# --- transformations -----------------------------------------------------------


def test_jit_vmap_and_scan_agree_with_the_eager_handle(handle, x):
    activation, gradient = target_grad(handle, x, "conv2")
    logits = handle(x)

    jitted = jax.jit(lambda x: (handle(x), *target_grad(handle, x, "conv2")))(x)
    for got, want in zip(jitted, (logits, activation, gradient), strict=True):
        close(got, want)

    # One example at a time: in inference mode examples do not interact.
    per_example = jax.vmap(lambda xi: target_grad(handle, xi[None], "conv2"))(x)
    close(per_example[0][:, 0], activation)
    close(per_example[1][:, 0], gradient)

    # A chunk loop, as the attribution methods run one.
    def chunk(_, xc):
        return None, target_grad(handle, xc, "conv2")

    _, (a, g) = jax.lax.scan(chunk, None, x.reshape(2, 2, *x.shape[1:]))
    close(a.reshape(activation.shape), activation)
    close(g.reshape(gradient.shape), gradient)


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_a_pass_is_one_program_shared_by_handles_of_one_model(kind, linen, x, lowerings):
    """Eagerly, a forward pass is one jitted call (not one program per primitive), and a
    second handle of the same model with other weights reuses its compiled programs
    while computing with its own weights, not the first handle's."""
    if kind == "linen":
        model, variables = linen
        other = jax.tree.map(lambda v: v * 1.5 if v.dtype == jnp.float32 else v, variables)
        first = flax_model(model, variables, train=False)
        second = flax_model(model, other, train=False)
        want = model.apply(other, x, train=False)
    else:
        first = flax_model(nnx_module_of(NnxCNN, seed=3))
        other = nnx_module_of(NnxCNN, seed=4)
        second = flax_model(other)
        other.eval()
        want = other(x)

    program = jax.make_jaxpr(first)(x)
    assert [eqn.primitive.name for eqn in program.jaxpr.eqns] == ["jit"]

    first(x), first.capture(x, "conv2")
    before = lowerings()
    close(second(x), want, tol=1e-5)
    logits, _ = second.capture(x, "conv2")
    close(logits, want, tol=1e-5)
    assert lowerings() == before


class Keyed(nn.Module):
    """A dense head whose output depends on two call keywords, one compared with `is`."""

    @nn.compact
    def __call__(self, x, scale, train: bool = False):
        logits = nn.Dense(CLASSES, name="head")(x.reshape(x.shape[0], -1)) * scale
        return logits + (0.0 if train is False else 100.0)


def test_handles_a_program_cannot_key_run_uncompiled_and_right(x):
    """An array among the call keywords, or a string among the variables, cannot be part
    of a compiled pass's key or arguments: such handles run uncompiled, each with its own
    keywords. Keywords are compared with their types: train=0 is not train=False."""
    model = Keyed()
    scale = jnp.ones((CLASSES,))
    variables = linen_variables(model, x, seed=5, scale=scale)
    for factor in (1.0, 2.0):
        handle = flax_model(model, variables, scale=scale * factor)
        assert "jit" not in {eqn.primitive.name for eqn in jax.make_jaxpr(handle)(x).jaxpr.eqns}
        close(handle(x), model.apply(variables, x, scale * factor))

    tagged = {**variables, "meta": {"tag": "run-1"}}
    close(flax_model(model, tagged, scale=2.0)(x), model.apply(variables, x, 2.0))

    for train in (False, 0):
        close(
            flax_model(model, variables, scale=1.0, train=train)(x),
            model.apply(variables, x, 1.0, train=train),
        )


def test_an_nnx_handle_whose_keywords_carry_rngs_runs(x):
    """NNX call keywords that hold state (an `nnx.Rngs` the model draws from) cannot be
    traced into a shared program; the handle runs them uncompiled."""

    class Noisy(nnx.Module):
        def __init__(self, rngs):
            self.head = nnx.Linear(8 * 8 * CHANNELS, CLASSES, rngs=rngs)

        def __call__(self, x, rngs):
            noise = jax.random.normal(rngs.noise(), (CLASSES,))
            return self.head(x.reshape(x.shape[0], -1)) + 0.0 * noise

    model = nnx_module_of(lambda rngs: Noisy(rngs), seed=6)
    handle = flax_model(model, rngs=nnx.Rngs(noise=0))
    close(handle(x), model.head(x.reshape(x.shape[0], -1)))


# --- layers capture cannot take --------------------------------------------------


def test_unknown_layer_lists_the_available_ones(handle, x):
    model = "LinenCNN" if "Linen" in repr(handle) else "NnxCNN"
    message = (
        f"{model} has no layer 'conv3'.*available layers: conv1, bn, drop, conv2; "
        r"not images \(layer methods only, no CAMs\): head$"
    )
    with pytest.raises(ValueError, match=message):
        handle.capture(x, "conv3")
    with pytest.raises(ValueError, match=r"has no layer \['conv1'\].*: conv1, bn"):  # a list
        handle.capture(x, ["conv1"])


class LinenTwice(nn.Module):
    @nn.compact
    def __call__(self, x):
        shared = nn.Conv(CHANNELS, (3, 3), name="shared")
        x = nn.Conv(CHANNELS, (1, 1), name="first")(x)
        x = shared(nn.max_pool(shared(x), (2, 2), strides=(2, 2)))
        return x.mean(axis=(1, 2))


class NnxTwice(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.first = nnx.Conv(CHANNELS, CHANNELS, (1, 1), rngs=rngs)
        self.shared = nnx.Conv(CHANNELS, CHANNELS, (3, 3), rngs=rngs)

    def __call__(self, x):
        x = self.first(x)
        x = self.shared(nn.max_pool(self.shared(x), (2, 2), strides=(2, 2)))
        return x.mean(axis=(1, 2))


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_a_layer_called_twice_is_refused_before_any_shape_arithmetic(kind, x):
    if kind == "linen":
        model = LinenTwice()
        handle = flax_model(model, linen_variables(model, x))
    else:
        handle = flax_model(nnx_module_of(NnxTwice))
    assert handle.layer_names(x) == ("first",)
    message = (
        "layer 'shared' of .* is called 2 times .*layer methods need a layer that is called once"
    )
    with pytest.raises(ValueError, match=message):
        handle.layer_shape(x, "shared")
    with pytest.raises(ValueError, match=message):
        handle.capture(x, "shared", jnp.zeros((4, 8, 8, CHANNELS)))


class LinenPatchAttention(nn.Module):
    """Patches (a conv: an image plane), then self-attention over the 16 tokens, whose
    query, key and value are (N, tokens, heads, head_dim): four axes and no image."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (2, 2), strides=(2, 2), name="patch")(x)
        tokens = x.reshape(x.shape[0], -1, 8)
        tokens = nn.MultiHeadDotProductAttention(2, name="attn")(tokens)
        return nn.Dense(CLASSES, name="head")(tokens.mean(axis=1))


class NnxPatchAttention(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.patch = nnx.Conv(CHANNELS, 8, (2, 2), strides=(2, 2), rngs=rngs)
        self.attn = nnx.MultiHeadAttention(2, 8, decode=False, rngs=rngs)
        self.head = nnx.Linear(8, CLASSES, rngs=rngs)

    def __call__(self, x):
        x = self.patch(x)
        tokens = x.reshape(x.shape[0], -1, 8)
        return self.head(self.attn(tokens).mean(axis=1))


@pytest.fixture(scope="module", params=["linen", "nnx"])
def attention(request, x):
    if request.param == "linen":
        model = LinenPatchAttention()
        return flax_model(model, linen_variables(model, x))
    return flax_model(nnx_module_of(NnxPatchAttention))


PROJECTIONS = ("attn/query", "attn/key", "attn/value")


def test_attention_projections_are_layers_but_not_image_planes(attention, x):
    tokens = ("attn/out", "attn", "head")  # (N, T, D) twice, then (N, classes)
    assert attention.layer_names(x) == ("patch", *PROJECTIONS, *tokens)
    assert attention.layer_names(x, images_only=True) == ("patch",)
    assert attention.not_an_image(x, "patch") is None
    assert "returns a sequence of tokens (shape (4, 16, 8))" in attention.not_an_image(x, "attn")
    assert "returns features (shape (4, 3))" in attention.not_an_image(x, "head")
    # A misspelt layer's error sets the image layers (a CAM's choices) apart.
    message = r"available layers: patch; not images \(layer methods only, no CAMs\): attn/"
    with pytest.raises(ValueError, match=message):
        attention.capture(x, "attn/querry")
    for layer in PROJECTIONS:
        assert "splits its features into 2 axes" in attention.not_an_image(x, layer)
    # Layer attributions take any shape: layer IG at the query sums to the logit
    # change from swapping the query's output for its output on the baseline.
    from fmi_jax.attribution import layer_integrated_gradients

    attributions = layer_integrated_gradients(attention, x, 1, layer="attn/query", steps=16)
    assert attributions.shape == (4, 16, 2, 4)
    at_baseline = attention.capture(jnp.zeros_like(x), "attn/query")[1]
    change = attention(x)[:, 1] - attention.logits_with(x, "attn/query", at_baseline)[:, 1]
    close(attributions.sum(axis=(1, 2, 3)), change, tol=1e-4)
    assert float(jnp.abs(change).min()) > 1e-3


def test_maps_over_the_image_refuse_attention_projections(attention, x):
    # Resizing (tokens, heads) onto the image would paint tokens as rows and heads as
    # columns: every method that draws a layer over the image refuses the projections.
    from fmi_jax import attribution

    message = r"{}: layer 'attn/query' .* splits its features into 2 axes.* not an image's rows"
    assert attribution.layer_names(attention, x) == ("patch",)
    assert attribution.grad_cam(attention, x, 0, layer="patch").shape == (4, 8, 8)
    for method in (attribution.grad_cam, attribution.score_cam, attribution.eigen_cam):
        with pytest.raises(ValueError, match=message.format(method.__name__)):
            method(attention, x, 0, layer="attn/query", upsample=False)
    explain = attribution.explainer("layer_integrated_gradients", attention, layer="attn/query")
    with pytest.raises(ValueError, match=message.format("layer_integrated_gradients")):
        explain(x, 0)
    # FullGrad: the projections' bias terms are full-gradient terms, but have no map.
    assert attribution.bias_layers(attention, x) == ("patch",)
    terms = attribution.full_gradients(attention, x, 0, layers=("patch", "attn/query"))
    assert terms.biases["attn/query"].shape == (4, 16, 2, 4)
    with pytest.raises(ValueError, match=message.format("full_grad")):
        attribution.full_grad(attention, x, 0, layers=("patch", "attn/query"))


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(FEATURES, (3, 3), name="conv")(x))


class LinenRemat(nn.Module):
    """A remat'd layer and a layer inside a remat'd parent (or neither)."""

    remat: bool

    @nn.compact
    def __call__(self, x):
        wrap = nn.remat if self.remat else (lambda cls: cls)
        x = wrap(nn.Conv)(FEATURES, (3, 3), name="conv1")(x)
        x = wrap(Block)(name="block")(x)
        return nn.Dense(CLASSES, name="head")(x.mean(axis=(1, 2)))


def test_remat_layers_are_captured_as_without_remat(x):
    variables = linen_variables(LinenRemat(remat=False), x)
    plain = flax_model(LinenRemat(remat=False), variables)
    remat = flax_model(LinenRemat(remat=True), variables)
    layers = ("conv1", "block/conv", "block", "head")
    assert remat.layer_names(x) == plain.layer_names(x) == layers
    close(remat(x), plain(x))
    for layer in plain.layer_names(x):
        a_plain, g_plain = target_grad(plain, x, layer)
        a_remat, g_remat = target_grad(remat, x, layer)
        close(a_remat, a_plain)
        close(g_remat, g_plain)


class LinenScan(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(FEATURES, (3, 3), name="conv1")(x)
        step = lambda module, carry, _: (module(carry), None)
        stack = nn.scan(step, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)
        x, _ = stack(Block(name="stack"), x, None)
        return x.mean(axis=(1, 2))


def test_a_layer_inside_nn_scan_is_refused(x):
    model = LinenScan()
    handle = flax_model(model, linen_variables(model, x))
    assert handle.layer_names(x) == ("conv1",)
    with pytest.raises(ValueError, match="'stack/conv' .*inside a Flax transform"):
        handle.layer_shape(x, "stack/conv")


class NnxRemat(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(CHANNELS, FEATURES, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(FEATURES, FEATURES, (3, 3), rngs=rngs)

    def __call__(self, x):
        x = nnx.remat(lambda conv, x: conv(x))(self.conv2, self.conv1(x))
        return x.mean(axis=(1, 2))


def test_nnx_layer_inside_an_nnx_transform_is_refused(x):
    handle = flax_model(nnx_module_of(NnxRemat))
    assert handle.layer_names(x) == ("conv1",)
    with pytest.raises(ValueError, match="'conv2' of NnxRemat is not called .*nnx.remat"):
        handle.capture(x, "conv2")


class NnxJitted(NnxCNN):
    """NnxCNN with its forward pass under nnx.jit, as NNX's examples write it."""

    @nnx.jit
    def __call__(self, x):
        return super().__call__(x)


def test_an_nnx_jit_on_the_model_s_call_hides_no_layer(nnx_module, nnx_handle, x):
    # nnx.jit would run copies of the layers that the hooks never see; the handle's
    # passes are jitted anyway, so they call the function nnx.jit wraps.
    jitted = nnx_module_of(NnxJitted)
    nnx.update(jitted, nnx.state(nnx_module))
    handle = flax_model(jitted)
    assert handle.layer_names(x) == nnx_handle.layer_names(x)
    for layer in ("conv1", "conv2"):
        close(A.grad_cam(handle, x, 1, layer=layer), A.grad_cam(nnx_handle, x, 1, layer=layer))
    close(handle(x), nnx_handle(x), 1e-5)


def test_a_bound_linen_module_carries_its_variables(linen, linen_handle, x):
    model, variables = linen
    bound = model.bind(variables)
    close(flax_model(bound, train=False)(x), linen_handle(x))
    assert isinstance(as_flax_model(bound, "grad_cam"), FlaxModel)  # a CAM takes it
    with pytest.raises(ValueError, match="got the bound Linen module LinenCNN and variables"):
        flax_model(bound, variables)


def test_capture_checks_the_shape_of_delta(linen_handle, x):
    with pytest.raises(ValueError, match=r"delta must have the shape .*\(4, 8, 8, 4\)"):
        linen_handle.capture(x, "conv2", jnp.zeros((4, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"value must have the shape .*\(4, 8, 8, 4\)"):
        linen_handle.logits_with(x, "conv2", jnp.zeros((4, 8, 8, 3)))


def test_logits_with_runs_only_the_layers_after_the_layer(handle, linen, x):
    """logits_with(x, 'conv2', v) is the model's tail after conv2 applied to v, and under jit
    XLA drops both convolutions (nothing reads conv2's own output)."""
    head = {"params": {"head": linen[1]["params"]["head"]}}
    value = jnp.asarray(np.random.default_rng(4).normal(size=(4, 8, 8, FEATURES)), jnp.float32)
    replaced = jax.jit(lambda x, v: handle.logits_with(x, "conv2", v))
    close(replaced(x, value), Tail().apply(head, value), 1e-5)
    hlo = replaced.lower(x, value).compile().as_text()
    assert "convolution" not in hlo
    assert "convolution" in jax.jit(handle).lower(x).compile().as_text()


def test_logits_with_reaches_a_layer_under_remat(x):
    variables = linen_variables(LinenRemat(remat=False), x)
    plain = flax_model(LinenRemat(remat=False), variables)
    remat = flax_model(LinenRemat(remat=True), variables)
    value = jnp.asarray(np.random.default_rng(5).normal(size=(4, 8, 8, FEATURES)), jnp.float32)
    for layer in ("block/conv", "block"):
        expected = plain.capture(x, layer, value - plain.capture(x, layer)[1])[0]
        close(remat.logits_with(x, layer, value), expected, 1e-5)
        close(plain.logits_with(x, layer, value), expected, 1e-5)


# --- as_flax_model -----------------------------------------------------------------


def test_as_flax_model(linen, linen_handle, nnx_module):
    assert as_flax_model(linen_handle, "grad_cam") is linen_handle
    assert isinstance(as_flax_model(linen, "grad_cam"), FlaxModel)
    assert isinstance(as_flax_model(nnx_module, "grad_cam"), FlaxModel)
    message = (
        r"^score_cam looks inside the model: pass fmi_jax.attribution.flax_model\(model, "
        r"variables, train=False\) \(Linen\) or flax_model\(nnx_module\), not a plain function$"
    )
    with pytest.raises(ValueError, match=message):
        as_flax_model(lambda x: x, "score_cam")


# ------------------------------------------------------------------------------------
# Every attribution method through the handle: the handle is a model function like a
# hand-written one, and a Linen and an NNX model with the same weights explain alike.

from fmi_jax import attribution as A  # noqa: E402

# Options per method for 8x8 images (CAMs on conv2; perturbations on 2x2 regions).
METHOD_OPTIONS = {
    "integrated_gradients": {"steps": 4},
    "smoothgrad": {"samples": 2},
    "smoothgrad_sq": {"samples": 2},
    "vargrad": {"samples": 2},
    "ig_smoothgrad": {"samples": 2, "steps": 2},
    "gradient_shap": {"samples": 2},
    "grad_cam": {"layer": "conv2"},
    "grad_cam_plus_plus": {"layer": "conv2"},
    "score_cam": {"layer": "conv2"},
    "xgrad_cam": {"layer": "conv2"},
    "hires_cam": {"layer": "conv2"},
    "layer_cam": {"layer": "conv2"},
    "ablation_cam": {"layer": "conv2"},
    "eigen_cam": {"layer": "conv2"},
    "grad_cam_elementwise": {"layer": "conv2"},
    "shapley_cam": {"layer": "conv2"},
    "eigen_grad_cam": {"layer": "conv2"},
    "finer_cam": {"layer": "conv2"},
    "kpca_cam": {"layer": "conv2"},
    "fem": {"layer": "conv2"},
    "blur_ig": {"steps": 4},
    "guided_ig": {"steps": 4},
    "xrai": {"steps": 2},
    "guided_grad_cam": {"layer": "conv2"},
    "feature_ablation": {"patch": 4},
    "shapley_value_sampling": {"patch": 4, "samples": 2},
    "kernel_shap": {"patch": 4, "samples": 3},
    "lime": {"patch": 4, "samples": 3},
    "deeplift_shap": {"baseline": jnp.zeros((2, 8, 8, CHANNELS))},
    "layer_gradient_x_activation": {"layer": "conv2"},
    "layer_integrated_gradients": {"layer": "conv2", "steps": 2},
    "layer_conductance": {"layer": "conv2", "steps": 2},
    "internal_influence": {"layer": "conv2", "steps": 2},
    "neuron_conductance": {"layer": "conv2", "neuron": (1, 1, 0), "steps": 2},
    "occlusion": {"window": 2, "stride": 2},
    "feature_permutation": {"patch": 4},
    "layer_deeplift": {"layer": "conv2"},
    "layer_deeplift_shap": {"layer": "conv2", "baseline": jnp.zeros((2, 8, 8, CHANNELS))},
    "layer_gradient_shap": {"layer": "conv2", "samples": 2},
    "layer_lrp": {"layer": "conv2"},
    "layer_feature_ablation": {"layer": "conv2"},
    "layer_feature_permutation": {"layer": "conv2"},
    "neuron_deeplift_shap": {"baseline": jnp.zeros((2, 8, 8, CHANNELS))},
    "neuron_gradient_shap": {"samples": 2},
    "neuron_feature_ablation": {"patch": 4},
}
METHODS = [
    m for m in A.available_methods() if m != "decoder_weighted" and A.METHODS[m].explains == "class"
]


# The handle against a plain `apply`, for the methods whose computation depends on how
# `fn` traces: the jaxpr interpreters (a handle is one nested `jit` equation, a lambda
# its primitives), plus one gradient and one forward-only method. Every other method
# that takes a plain function reaches it through the same `fn(x)` and `jax.grad` calls
# as one of these, so a second compile of it would test nothing new.
BY_HAND = (
    "saliency",
    "occlusion",
    "deeplift",
    "deeplift_shap",
    "guided_backprop",
    "deconvolution",
    "lrp",
)


def explained(method, fn, x, target):
    """One jitted call of the registry's `method` on `fn` (one compile per case)."""
    explain = A.explainer(method, fn, **METHOD_OPTIONS.get(method, {}))
    return A.jit_method(method, lambda x, t: explain(x, t, jax.random.key(3)))(x, target)


def test_the_methods_checked_by_hand_take_a_plain_function():
    assert {m for m in BY_HAND if m in METHODS and not A.METHODS[m].needs_model} == set(BY_HAND)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_the_same_through_the_handle_and_through_nnx(
    method, linen, linen_handle, nnx_handle, x
):
    model, variables = linen
    target = jnp.argmax(linen_handle(x), axis=-1)
    through_handle = explained(method, linen_handle, x, target)
    assert bool(jnp.isfinite(through_handle).all())
    if method in BY_HAND:
        by_hand = explained(method, lambda x: model.apply(variables, x, train=False), x, target)
        close(through_handle, by_hand)
    close(explained(method, nnx_handle, x, target), through_handle)


NEURON_METHODS = [m for m in A.available_methods() if A.METHODS[m].explains == "neuron"]


@pytest.mark.parametrize("method", NEURON_METHODS)
def test_neuron_methods_are_the_same_through_linen_and_nnx(method, linen_handle, nnx_handle, x):
    # The unit most active on average, so no gradient through it is zero by a dead ReLU.
    activation = linen_handle.capture(x, "conv2")[1].mean(axis=0)
    neuron = tuple(int(i) for i in np.unravel_index(int(jnp.argmax(activation)), activation.shape))
    options = {"layer": "conv2", "neuron": neuron, **METHOD_OPTIONS.get(method, {})}
    if "steps" in A.METHODS[method].options:
        options["steps"] = 2
    target = None  # a neuron method explains the unit, not a class

    def run(handle):
        explain = A.explainer(method, handle, **options)
        return jax.jit(lambda x: explain(x, target, jax.random.key(3)))(x)

    through_linen = run(linen_handle)
    assert float(jnp.abs(through_linen).sum()) > 0
    close(run(nnx_handle), through_linen)


def test_target_none_is_the_predicted_class_through_the_handle(handle, x):
    predicted = jnp.argmax(handle(x), axis=-1)
    for method in (A.grad_cam, A.integrated_gradients):
        options = {"layer": "conv2"} if method is A.grad_cam else {"steps": 4}
        np.testing.assert_array_equal(
            method(handle, x, **options), method(handle, x, predicted, **options)
        )


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_cams_refuse_a_layer_called_twice_with_the_clear_error(kind, x):
    """The layer's two outputs differ in shape: the error names the count, it is not a
    shape mismatch from adding delta."""
    if kind == "linen":
        model = LinenTwice()
        handle = flax_model(model, linen_variables(model, x))
    else:
        handle = flax_model(nnx_module_of(NnxTwice))
    for method in (A.grad_cam, A.grad_cam_plus_plus, A.score_cam):
        with pytest.raises(ValueError, match="called 2 times"):
            method(handle, x, 0, layer="shared")


def test_grad_cam_of_a_remat_layer_equals_grad_cam_without_remat(x):
    variables = linen_variables(LinenRemat(remat=False), x)
    plain = flax_model(LinenRemat(remat=False), variables)
    remat = flax_model(LinenRemat(remat=True), variables)
    for layer in ("conv1", "block/conv"):
        close(A.grad_cam(remat, x, 1, layer=layer), A.grad_cam(plain, x, 1, layer=layer))


def test_the_cam_transforms_take_an_nnx_module(nnx_module, linen_handle, x):
    """across_layers and augmentation_smoothing over a CAM accept an NNX module built
    in training mode, as the CAMs do, and give its Linen twin's maps."""
    transforms = {
        "across_layers": A.across_layers(A.grad_cam, ("conv1", "conv2")),
        "augmentation_smoothing": lambda model, x, t: A.augmentation_smoothing(
            A.grad_cam, factors=(1.0,)
        )(model, x, t, layer="conv2"),
    }
    for name, transform in transforms.items():
        np.testing.assert_allclose(
            transform(nnx_module, x, None),
            transform(linen_handle, x, None),
            rtol=1e-5,
            atol=1e-6,
            err_msg=name,
        )


# --- token layers read as images -------------------------------------------------


class PatchNet(nn.Module):
    """Patches, a per-patch dense layer "mix", mean and head, on the patch grid
    (N, 4, 4, 8) or on the same patches as tokens (N, 16, 8): the same function."""

    tokens: bool

    @nn.compact
    def __call__(self, x):
        a = nn.Conv(8, (2, 2), strides=(2, 2), name="patch")(x)
        a = a.reshape(a.shape[0], -1, 8) if self.tokens else a
        a = nn.Dense(6, name="mix")(a)
        a = nn.Dense(5, name="mlp")(nn.softplus(a))
        mean = a.mean(axis=1) if self.tokens else a.mean(axis=(1, 2))
        return nn.Dense(CLASSES, name="head")(nn.softplus(mean))


class PositionEmbedding(nn.Module):
    """One learnt vector per token, (1, T, D): no batch axis, and no layer."""

    @nn.compact
    def __call__(self, tokens):
        return self.param("table", nn.initializers.zeros, (1, *tokens.shape[1:]))


class ClassTokenNet(nn.Module):
    """A one-block ViT: patches, a class token first, position embeddings, layer norm,
    self-attention, and the head on the class token."""

    @nn.compact
    def __call__(self, x):
        a = nn.Conv(8, (2, 2), strides=(2, 2), name="patch")(x)
        tokens = a.reshape(a.shape[0], -1, 8)
        cls = jnp.broadcast_to(self.param("cls", nn.initializers.zeros, (1, 1, 8)), (len(x), 1, 8))
        tokens = jnp.concatenate([cls, tokens], axis=1)
        tokens = tokens + PositionEmbedding(name="pos")(tokens)
        tokens = tokens + nn.MultiHeadDotProductAttention(2, name="attn")(
            nn.LayerNorm(name="norm")(tokens)
        )
        return nn.Dense(CLASSES, name="head")(tokens[:, 0])


def test_cams_on_tokens_read_as_an_image_are_the_cams_on_the_grid(x):
    """The token model and the grid model are one function with one set of weights:
    the CAMs are the same at "mix" on both. One CAM for each way a CAM uses the layer
    (its gradient, a second-order pass through it, its activations as input masks, a
    value put in its place, its activations alone): the other CAMs share those."""
    from fmi_jax import attribution as A

    variables = linen_variables(PatchNet(tokens=False), x)
    grid = flax_model(PatchNet(tokens=False), variables)
    plain = flax_model(PatchNet(tokens=True), variables)
    tokens = A.tokens_as_image(plain, "mix")
    assert "returns a sequence of tokens" in plain.not_an_image(x, "mix")
    assert tokens.layer_names(x, images_only=True) == ("patch", "mix")
    assert tokens.layer_shape(x, "mix") == (4, 4, 4, 6)
    close(tokens(x), grid(x), 1e-5)
    for method in (A.grad_cam, A.shapley_cam, A.score_cam, A.ablation_cam, A.eigen_cam):
        close(method(tokens, x, 1, layer="mix"), method(grid, x, 1, layer="mix"), 1e-5)


def test_a_class_token_keeps_its_value_and_the_patches_make_the_map(x):
    from fmi_jax import attribution as A

    model = ClassTokenNet()
    plain = flax_model(model, linen_variables(model, x))
    view = A.tokens_as_image(plain, "norm", prefix_tokens=1)
    target = 2
    # Grad-CAM by hand on the 16 patch tokens: their gradient reaches the class token
    # through attention, and the class token's own is left out.
    activation, gradient = target_grad(plain, x, "norm", target=target)
    maps = activation[:, 1:].reshape(4, 4, 4, 8)
    weights = gradient[:, 1:].reshape(4, 4, 4, 8).mean(axis=(1, 2), keepdims=True)
    expected = jax.nn.relu((maps * weights).sum(axis=-1))
    got = A.grad_cam(view, x, target, layer="norm", upsample=False)
    close(got, expected, 1e-5)
    assert float(expected.max()) > 1e-3
    # A value given at the layer replaces the patch tokens only.
    close(view.logits_with(x, "norm", maps), plain(x), 1e-5)
    zeroed = activation.at[:, 1:].set(0.0)
    close(view.logits_with(x, "norm", 0 * maps), plain.logits_with(x, "norm", zeroed), 1e-5)


def test_tokens_that_make_no_grid_are_named(x):
    from fmi_jax import attribution as A

    model = ClassTokenNet()
    plain = flax_model(model, linen_variables(model, x))
    cases = {
        "norm": (dict(), "returns 17 tokens: 17 make no square grid; give grid="),
        "attn": (dict(grid=(3, 5), prefix_tokens=1), "returns 17 tokens: 16 after the 1 prefix"),
        "head": (dict(), r"returns shape \(4, 3\), not tokens \(N, T, D\)"),
        "patch": (dict(), r"returns shape \(4, 4, 4, 8\), not tokens"),
        "attn/out": (dict(prefix_tokens=17), "returns 17 tokens, no more than the 17 prefix"),
    }
    for layer, (options, message) in cases.items():
        view = A.tokens_as_image(plain, layer, **options)
        with pytest.raises(ValueError, match=f"layer '{layer}' of ClassTokenNet {message}"):
            A.grad_cam(view, x, 0, layer=layer)
    for options, message in (
        (dict(grid=(4,)), r"grid must be \(h, w\), two positive ints"),
        (dict(grid=(4, 0)), r"grid must be \(h, w\)"),
        (dict(prefix_tokens=-1), "prefix_tokens must be an int >= 0"),
        (dict(prefix_tokens=True), "prefix_tokens must be an int >= 0"),
    ):
        with pytest.raises(ValueError, match=f"tokens_as_image: {message}"):
            A.tokens_as_image(plain, "norm", **options)
    with pytest.raises(ValueError, match="tokens_as_image looks inside the model"):
        A.tokens_as_image(lambda x: x, "norm")


def test_a_module_without_the_batch_axis_is_no_layer_even_for_one_example(x):
    # On one example the position table's (1, T, D) looks per example; it is not a
    # layer at any batch size, so a method that evaluates paths in batches sees the
    # same layers as its first check.
    from fmi_jax import attribution as A

    model = ClassTokenNet()
    plain = flax_model(model, linen_variables(model, x))
    assert "pos" not in plain.layer_names(x)
    assert plain.layer_names(x[:1]) == plain.layer_names(x)
    with pytest.raises(ValueError, match="has no layer 'pos' returning one"):
        A.layer_integrated_gradients(plain, x[:1], 0, layer="pos")
    assert A.layer_integrated_gradients(plain, x[:1], 0, layer="norm").shape == (1, 17, 8)
