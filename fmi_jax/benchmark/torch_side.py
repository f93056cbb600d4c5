"""The PyTorch + Captum side of the benchmark (needs the `bench` extra).

`TorchCNN` mirrors `fmi_jax.models.SimpleCNN` layer for layer, and
`from_flax` copies a trained Flax model's variables into it, so both sides
compute the same function: conv kernels HWIO -> OIHW, dense kernels (in, out) ->
(out, in), batch-norm statistics as running mean/var (eval mode), and the
flatten done in NHWC order as Flax does. Every ReLU is its own module, which
Captum's DeepLift needs (it hooks modules); the last ReLU of conv block i is what
fmi_jax calls layer `conv{i+1}` (the block output before pooling), the layer the
CAM methods hook.

`captum_method(name, net, options)` builds the PyTorch counterpart of a benchmark
method: Captum for everything except the CAMs Captum does not have (Score-CAM,
XGrad-CAM, HiResCAM, LayerCAM, Ablation-CAM, and those only the comparison scripts
run), which come from the `grad-cam` package (`GRAD_CAM_PACKAGE`).

Only this module imports torch; the rest of fmi_jax never does.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import types
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import torch
from torch import nn

from fmi_jax.benchmark.runner import METHOD_REFERENCES, METRIC_REFERENCES, reference_images

__all__ = [
    "CAPTUM_METHODS",
    "GRAD_CAM_PACKAGE",
    "TorchCNN",
    "captum_method",
    "captum_metric",
    "conv_block_output",
    "from_flax",
    "import_grad_cam",
    "square_patch_mask",
    "synchronizer",
]


class TorchCNN(nn.Module):
    """conv blocks (conv, optional BN, ReLU, optional 2x2 max-pool) -> dense -> head, NCHW."""

    def __init__(
        self,
        in_channels,
        features,
        kernel_size,
        pool,
        dense,
        num_classes,
        batch_norm,
        flat_features,
    ):
        super().__init__()
        blocks, c = [], in_channels
        for feats, do_pool in zip(features, pool):
            layers = [nn.Conv2d(c, feats, kernel_size, padding="same", bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(feats, eps=1e-5))
            layers.append(nn.ReLU())
            if do_pool:
                layers.append(nn.MaxPool2d(2, 2))
            blocks.append(nn.Sequential(*layers))
            c = feats
        self.blocks = nn.Sequential(*blocks)
        fcs, width = [], flat_features
        for d in dense:
            fcs += [nn.Linear(width, d), nn.ReLU()]
            width = d
        self.fcs = nn.Sequential(*fcs)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.blocks(x)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # NHWC flatten, as Flax
        return self.head(self.fcs(x))


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def from_flax(model: Any, variables: Mapping[str, Any], image_shape) -> TorchCNN:
    """A TorchCNN holding the same weights as a Flax SimpleCNN."""
    params, stats = variables["params"], variables.get("batch_stats", {})
    h, w, c = image_shape
    for do_pool in model.pool:
        if do_pool:
            h, w = h // 2, w // 2
    net = TorchCNN(
        c,
        tuple(model.features),
        model.kernel_size,
        tuple(model.pool),
        tuple(model.dense),
        model.num_classes,
        model.batch_norm,
        h * w * model.features[-1],
    )
    with torch.no_grad():
        for i, block in enumerate(net.blocks):
            name = f"conv{i + 1}"
            conv = block[0]
            conv.weight.copy_(_t(params[name]["conv"]["kernel"]).permute(3, 2, 0, 1))
            if conv.bias is not None:
                conv.bias.copy_(_t(params[name]["conv"]["bias"]))
            if model.batch_norm:
                bn = block[1]
                bn.weight.copy_(_t(params[name]["bn"]["scale"]))
                bn.bias.copy_(_t(params[name]["bn"]["bias"]))
                bn.running_mean.copy_(_t(stats[name]["bn"]["mean"]))
                bn.running_var.copy_(_t(stats[name]["bn"]["var"]))
        linears = [m for m in net.fcs if isinstance(m, nn.Linear)]
        for j, lin in enumerate(linears):
            lin.weight.copy_(_t(params[f"fc{j + 1}"]["kernel"]).T)
            lin.bias.copy_(_t(params[f"fc{j + 1}"]["bias"]))
        net.head.weight.copy_(_t(params["head"]["kernel"]).T)
        net.head.bias.copy_(_t(params["head"]["bias"]))
    return net.eval()


def conv_block_output(net: TorchCNN, layer: str) -> nn.Module:
    """The module whose output is fmi_jax's layer `layer`: for "conv1", "conv2", ... the
    block's ReLU, i.e. conv -> (BN) -> ReLU before the max-pool; for "conv1/conv", ...
    the block's convolution itself."""
    block, _, part = layer.partition("/")
    if not (block.startswith("conv") and block[4:].isdigit()) or part not in ("", "conv"):
        raise ValueError(f"layer must be 'conv1', 'conv2', ... or 'conv1/conv', ...; got {layer!r}")
    i = int(block[4:]) - 1
    if not 0 <= i < len(net.blocks):
        raise ValueError(f"layer {layer!r}: the model has conv1..conv{len(net.blocks)}")
    if part == "conv":
        return net.blocks[i][0]
    relus = [m for m in net.blocks[i] if isinstance(m, nn.ReLU)]
    return relus[-1]


def square_patch_mask(height: int, width: int, size: int) -> torch.Tensor:
    """Group ids (1, 1, H, W) of size x size patches, row-major over patches, the same
    for every channel (fmi_jax's `square_patches`, NCHW)."""
    rows = np.arange(height)[:, None] // size
    cols = np.arange(width)[None, :] // size
    ids = rows * (-(-width // size)) + cols
    return torch.from_numpy(ids.astype(np.int64))[None, None]


def _chunk_to_perturbations(batch_size: int | None, n: int, total: int) -> int:
    """Captum's `perturbations_per_eval` for fmi_jax's `batch_size` (model inputs per
    evaluation): the same number of images per forward pass on both sides; None means
    every perturbation in one pass, as fmi_jax does without a batch_size."""
    if batch_size is None:
        return max(1, total)
    return max(1, min(total, int(batch_size) // max(n, 1)))


def _occlusion_shapes(c: int, window, stride) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """fmi_jax's window/stride (NHWC, over (H, W) or (H, W, C)) as Captum's NCHW ones."""
    window = tuple(int(w) for w in window)
    if len(window) == 2:
        window = (*window, c)  # spatial only: every channel at once
    if len(window) != 3:
        raise ValueError(f"occlusion window must have 2 or 3 entries (H, W[, C]); got {window}")
    if isinstance(stride, int):
        stride = (stride, stride, stride)
    stride = tuple(int(s) for s in stride)
    if len(stride) == 2:
        stride = (*stride, c)
    if len(stride) != 3:
        raise ValueError(f"occlusion stride must be an int or match the window; got {stride}")
    return (window[2], window[0], window[1]), (stride[2], stride[0], stride[1])


class _LogSoftmaxTarget:
    """log p_t(output): pytorch_grad_cam's ScoreCAM takes softmax over channels of the
    per-channel scores, so with this target its weights are
    p_t(x * H_k) / sum_j p_t(x * H_j), the Score-CAM paper's weights (Wang et al. 2020)
    up to a per-image factor that its min-max scaling removes. Its default
    target (the raw logit) gives softmax_k(logit_t(x * H_k)), a different method."""

    def __init__(self, category: int):
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(model_output, dim=-1)[..., self.category]


def _stub_torchvision() -> dict[str, types.ModuleType]:
    """Modules standing in for torchvision while `pytorch_grad_cam` is imported.

    The grad-cam package imports torchvision at module level for code the benchmark
    never runs (image preprocessing, box IoU, SESS); ScoreCAM and the code it calls
    use torch, numpy and cv2 only. PyPI's torchvision wheels for Linux are CUDA
    builds that cannot load next to a CPU torch (`operator torchvision::nms does not
    exist`), and the CPU build is not on PyPI, so without a working torchvision the
    package is imported against these stubs, whose every attribute raises."""

    def missing(name):
        def call(*args, **kwargs):
            raise RuntimeError(
                f"torchvision.{name} is not available (the benchmark imported grad-cam "
                "without torchvision); install a torchvision built for this torch"
            )

        return call

    mods = {}
    for name, attrs in (
        ("torchvision", ()),
        ("torchvision.transforms", ("Compose", "Normalize", "ToTensor")),
        ("torchvision.transforms.functional", ("resize",)),
        ("torchvision.ops", ("box_iou", "nms")),
    ):
        mod = types.ModuleType(name)
        for attr in attrs:
            setattr(mod, attr, missing(f"{name.split('.', 1)[-1]}.{attr}"))
        mods[name] = mod
    mods["torchvision"].transforms = mods["torchvision.transforms"]
    mods["torchvision"].ops = mods["torchvision.ops"]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
    return mods


# fmi_jax's CAMs that Captum lacks, and their classes in the grad-cam package.
GRAD_CAM_PACKAGE = {
    "score_cam": ("score_cam", "ScoreCAM"),
    "xgrad_cam": ("xgrad_cam", "XGradCAM"),
    "hires_cam": ("hirescam", "HiResCAM"),
    "layer_cam": ("layer_cam", "LayerCAM"),
    "ablation_cam": ("ablation_cam", "AblationCAM"),
    "grad_cam_elementwise": ("grad_cam_elementwise", "GradCAMElementWise"),
    "shapley_cam": ("shapley_cam", "ShapleyCAM"),
    "eigen_grad_cam": ("eigen_grad_cam", "EigenGradCAM"),
    "kpca_cam": ("kpca_cam", "KPCA_CAM"),
    "fem": ("fem", "FEM"),
}


def import_grad_cam(module_name: str) -> types.ModuleType:
    """The grad-cam package's module `pytorch_grad_cam.<module_name>`, imported without
    torchvision if need be (`_stub_torchvision`)."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or the RuntimeError of a CUDA build beside CPU torch
        for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[mod]
        stubs = _stub_torchvision()
        sys.modules.update(stubs)
        try:
            return importlib.import_module(f"pytorch_grad_cam.{module_name}")
        finally:
            for mod in stubs:
                sys.modules.pop(mod, None)
    return importlib.import_module(f"pytorch_grad_cam.{module_name}")


@functools.cache
def _grad_cam_class(name: str):
    """The grad-cam package's class for fmi_jax's method `name` (`GRAD_CAM_PACKAGE`),
    with its per-image progress bars off (tqdm(disable=True); no other change)."""
    module_name, class_name = GRAD_CAM_PACKAGE[name]
    module = import_grad_cam(module_name)
    import tqdm

    if hasattr(module, "tqdm"):
        module.tqdm = types.SimpleNamespace(tqdm=functools.partial(tqdm.tqdm, disable=True))
    return getattr(module, class_name)


def _references(options: Mapping[str, Any], x: torch.Tensor) -> torch.Tensor:
    """The DeepLiftShap rows' `options["references"]` uniform reference images, NCHW on
    `x`'s device: the same images fmi_jax's side draws (`reference_images`)."""
    shape = (x.shape[2], x.shape[3], x.shape[1])  # one NHWC example
    nhwc = reference_images(options["references"], shape)
    return torch.from_numpy(nhwc).permute(0, 3, 1, 2).to(x.device)


def _layer_image(attributions: torch.Tensor, x: torch.Tensor, options: Mapping[str, Any]):
    """A layer method's (N, K, h, w) attributions as fmi_jax's registry gives them: summed
    over channels and, unless `upsample=False`, resized bilinearly to the input."""
    from captum import attr as ca

    maps = attributions.sum(dim=1, keepdim=True)
    if options.get("upsample", True):
        maps = ca.LayerAttribution.interpolate(maps, tuple(x.shape[-2:]), "bilinear")
    return maps


def captum_method(name: str, net: nn.Module, options: Mapping[str, Any]):
    """`run(x_nchw, target) -> attributions` (a NCHW tensor) with the PyTorch library
    that is the benchmark's reference for `name` (`runner.REFERENCES`); CAM maps come back as
    (N, 1, H, W)."""
    from captum import attr as ca

    steps = options.get("steps", 50)
    samples = options.get("samples", 25)
    stdev = options.get("stdev", 0.15)
    if name == "saliency":
        m = ca.Saliency(net)
        # fmi_jax's saliency is signed unless abs=True; Captum's is |gradient| unless abs=False.
        absolute = bool(options.get("abs", False))
        return lambda x, t: m.attribute(x, target=t, abs=absolute)
    if name == "input_x_gradient":
        m = ca.InputXGradient(net)
        return lambda x, t: m.attribute(x, target=t)
    if name == "integrated_gradients":
        m = ca.IntegratedGradients(net)
        return lambda x, t: m.attribute(
            x, baselines=0.0, target=t, n_steps=steps, method="gausslegendre"
        )
    if name == "smoothgrad":
        m = ca.NoiseTunnel(ca.Saliency(net))
        return lambda x, t: m.attribute(
            x, nt_type="smoothgrad", nt_samples=samples, stdevs=stdev, target=t, abs=False
        )
    if name == "ig_smoothgrad":
        m = ca.NoiseTunnel(ca.IntegratedGradients(net))
        # fmi_jax's batch_size: noisy inputs per IG call; Captum's nt_samples_batch_size
        # counts noise samples per call, each over the whole batch.
        return lambda x, t: m.attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=samples,
            nt_samples_batch_size=_chunk_to_perturbations(
                options.get("batch_size"), x.shape[0], samples
            ),
            stdevs=stdev,
            target=t,
            baselines=0.0,
            n_steps=steps,
            method="gausslegendre",
        )
    if name == "deeplift":
        m = ca.DeepLift(net)
        return lambda x, t: m.attribute(x, baselines=0.0, target=t)
    if name == "gradient_shap":
        m = ca.GradientShap(net)
        return lambda x, t: m.attribute(
            x, baselines=torch.zeros_like(x[:1]), target=t, n_samples=samples, stdevs=0.0
        )
    if name == "grad_cam":
        m = ca.LayerGradCam(net, conv_block_output(net, options["layer"]))
        relu = bool(options.get("relu", True))
        upsample = bool(options.get("upsample", True))

        def grad_cam(x, t):
            cam = m.attribute(x, target=t, relu_attributions=relu)
            if upsample:  # align_corners=False, as jax.image.resize
                cam = ca.LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")
            return cam

        return grad_cam
    if name in GRAD_CAM_PACKAGE:
        if not options.get("upsample", True):
            raise ValueError(f"pytorch_grad_cam's {name} always upsamples to the input size")
        package_class = _grad_cam_class(name)
        layer = conv_block_output(net, options["layer"])
        batch_size = options.get("batch_size")
        from pytorch_grad_cam.utils import model_targets

        if name == "score_cam" and options.get("target_kind") != "logit":
            target_class = _LogSoftmaxTarget
        elif name == "shapley_cam" and options.get("score", "rest") == "rest":
            target_class = model_targets.ClassifierOutputReST  # fmi_jax's default utility
        else:
            target_class = model_targets.ClassifierOutputTarget
        # KPCA-CAM's kernel options and FEM's k go to the package's constructor;
        # fmi_jax's default gamma (None: 1 / K) is scikit-learn's.
        constructor = {"kpca_cam": ("kernel", "gamma"), "fem": ("k",)}.get(name, ())
        extra = {k: options[k] for k in constructor if k in options}

        def run_package_cam(x, t):
            # One object per call: its forward hooks must not outlive the call.
            with package_class(net, [layer], **extra) as cam:
                if name in ("score_cam", "ablation_cam"):  # channels per forward pass
                    cam.batch_size = int(batch_size or layer_channels(net, options["layer"]))
                maps = cam(input_tensor=x, targets=[target_class(int(c)) for c in t])
            return torch.from_numpy(maps)[:, None]

        return run_package_cam
    if name == "occlusion":
        m = ca.Occlusion(net)
        baseline = float(options.get("baseline", 0.0))

        def occlusion(x, t):
            window, stride = _occlusion_shapes(
                x.shape[1], options["window"], options.get("stride", 1)
            )
            windows = 1
            for size, w, s in zip(x.shape[1:], window, stride):
                windows *= (size - w) // s + 1
            ppe = _chunk_to_perturbations(options.get("batch_size"), x.shape[0], windows)
            return m.attribute(
                x,
                sliding_window_shapes=window,
                strides=stride,
                baselines=baseline,
                target=t,
                perturbations_per_eval=ppe,
            )

        return occlusion
    if name == "feature_permutation":
        m = ca.FeaturePermutation(net)
        mask = options.get("feature_mask")

        def feature_permutation(x, t):
            if mask is None:
                fm = square_patch_mask(x.shape[2], x.shape[3], int(options["patch"]))
            else:  # fmi_jax's (H, W, 1 or C) group ids, as NCHW
                fm = torch.from_numpy(np.asarray(mask, np.int64).transpose(2, 0, 1))[None]
            fm = fm.to(x.device)
            groups = int(fm.max()) + 1
            ppe = _chunk_to_perturbations(options.get("batch_size"), x.shape[0], groups)
            return m.attribute(x, target=t, feature_mask=fm, perturbations_per_eval=ppe)

        return feature_permutation
    if name in ("guided_backprop", "deconvolution"):
        m = (ca.GuidedBackprop if name == "guided_backprop" else ca.Deconvolution)(net)
        return lambda x, t: m.attribute(x, target=t)
    if name == "guided_grad_cam":
        m = ca.GuidedGradCam(net, conv_block_output(net, options["layer"]))
        # fmi_jax upsamples the Grad-CAM map bilinearly (half-pixel centres).
        return lambda x, t: m.attribute(x, target=t, interpolate_mode="bilinear")
    if name == "lrp":
        if options.get("rule", "epsilon") != "epsilon":
            raise ValueError("the benchmark compares LRP's epsilon rule only")
        m = ca.LRP(net)
        return lambda x, t: m.attribute(x, target=t)
    if name == "deeplift_shap":
        m = ca.DeepLiftShap(net)

        def deeplift_shap(x, t):
            return m.attribute(x, baselines=_references(options, x), target=t)

        return deeplift_shap
    if name in ("feature_ablation", "shapley_value_sampling", "kernel_shap", "lime"):
        kind = {
            "feature_ablation": ca.FeatureAblation,
            "shapley_value_sampling": ca.ShapleyValueSampling,
            "kernel_shap": ca.KernelShap,
            "lime": ca.Lime,
        }[name]
        m = kind(net)

        def grouped(x, t):
            fm = square_patch_mask(x.shape[2], x.shape[3], int(options["patch"])).to(x.device)
            extra = {} if name == "feature_ablation" else {"n_samples": samples}
            if name in ("feature_ablation", "shapley_value_sampling"):
                groups = int(fm.max()) + 1
                per = groups if name == "feature_ablation" else groups + 1
                extra["perturbations_per_eval"] = _chunk_to_perturbations(
                    options.get("batch_size"), x.shape[0], per
                )
            else:  # one example per call in Captum's surrogate methods
                extra["perturbations_per_eval"] = max(1, int(options.get("batch_size") or 1))
                return torch.cat(
                    [
                        m.attribute(x[i : i + 1], target=t[i : i + 1], feature_mask=fm, **extra)
                        for i in range(x.shape[0])
                    ]
                )
            return m.attribute(x, target=t, feature_mask=fm, baselines=0.0, **extra)

        return grouped
    if name in LAYER_METHODS:
        kind = {
            "layer_integrated_gradients": ca.LayerIntegratedGradients,
            "layer_conductance": ca.LayerConductance,
            "layer_gradient_x_activation": ca.LayerGradientXActivation,
            "internal_influence": ca.InternalInfluence,
        }[name]
        m = kind(net, conv_block_output(net, options["layer"]))
        extra = {}
        if name in ("layer_integrated_gradients", "internal_influence"):
            extra = {"n_steps": steps, "method": options.get("rule", "gausslegendre")}
        elif name == "layer_conductance":
            # fmi_jax's conductance uses the nodes k / steps: Captum's riemann_trapezoid
            # alphas, linspace(0, 1, steps + 1) (docs/captum.md).
            extra = {"n_steps": steps, "method": "riemann_trapezoid"}

        def layer_map(x, t):
            return _layer_image(m.attribute(x, target=t, **extra), x, options)

        return layer_map
    if name in COMPOSED_LAYER_METHODS:
        kind = {
            "layer_deeplift": ca.LayerDeepLift,
            "layer_deeplift_shap": ca.LayerDeepLiftShap,
            "layer_lrp": ca.LayerLRP,
        }[name]
        m = kind(net, conv_block_output(net, options["layer"]))

        def composed_layer_map(x, t):
            extra = {}
            if name == "layer_deeplift":
                extra["baselines"] = float(options.get("baseline", 0.0))
            elif name == "layer_deeplift_shap":
                extra["baselines"] = _references(options, x)
            return _layer_image(m.attribute(x, target=t, **extra), x, options)

        return composed_layer_map
    if name in COMPOSED_NEURON_METHODS:
        kind = {
            "neuron_deeplift": ca.NeuronDeepLift,
            "neuron_guided_backprop": ca.NeuronGuidedBackprop,
            "neuron_deconvolution": ca.NeuronDeconvolution,
            "neuron_feature_ablation": ca.NeuronFeatureAblation,
        }[name]
        m = kind(net, conv_block_output(net, options["layer"]))
        h, w, k = options["neuron"]  # fmi_jax's NHWC unit as Captum's NCHW selector
        selector = (int(k), int(h), int(w))

        def composed_neuron_map(x, t):
            extra = {}
            if name == "neuron_deeplift":
                extra["baselines"] = float(options.get("baseline", 0.0))
            elif name == "neuron_feature_ablation":
                fm = square_patch_mask(x.shape[2], x.shape[3], int(options["patch"]))
                groups = int(fm.max()) + 1
                extra["feature_mask"] = fm.to(x.device)
                extra["baselines"] = float(options.get("baseline", 0.0))
                extra["perturbations_per_eval"] = _chunk_to_perturbations(
                    options.get("batch_size"), x.shape[0], groups
                )
            return m.attribute(x, neuron_selector=selector, **extra)

        return composed_neuron_map
    if name in ("neuron_gradient", "neuron_integrated_gradients", "neuron_conductance"):
        layer = conv_block_output(net, options["layer"])
        h, w, k = options["neuron"]  # fmi_jax's NHWC unit as Captum's NCHW selector
        selector = (int(k), int(h), int(w))
        if name == "neuron_gradient":
            m = ca.NeuronGradient(net, layer)
            return lambda x, t: m.attribute(x, neuron_selector=selector)
        if name == "neuron_integrated_gradients":
            m = ca.NeuronIntegratedGradients(net, layer)
            rule = options.get("rule", "gausslegendre")
            return lambda x, t: m.attribute(x, neuron_selector=selector, n_steps=steps, method=rule)
        # fmi_jax's default rule for conductance, riemann_left, passed to Captum too.
        m = ca.NeuronConductance(net, layer)
        rule = options.get("rule", "riemann_left")
        return lambda x, t: m.attribute(
            x, neuron_selector=selector, target=t, n_steps=steps, method=rule
        )
    raise ValueError(f"no PyTorch counterpart for {name!r}; have {CAPTUM_METHODS}")


# fmi_jax's compositions at_layer(method) and at_neuron(method) with a Captum class.
COMPOSED_LAYER_METHODS = ("layer_deeplift", "layer_deeplift_shap", "layer_lrp")
COMPOSED_NEURON_METHODS = (
    "neuron_deeplift",
    "neuron_guided_backprop",
    "neuron_deconvolution",
    "neuron_feature_ablation",
)

# Layer methods: fmi_jax's registry sums their maps over channels and upsamples them.
LAYER_METHODS = (
    "layer_integrated_gradients",
    "layer_conductance",
    "layer_gradient_x_activation",
    "internal_influence",
)


def captum_metric(
    name: str, net: nn.Module, options: Mapping[str, Any], *, replay: torch.Tensor | None = None
):
    """Captum's counterpart of a benchmark metric row: `infidelity` ->
    `run(x, t, attributions)`, `max_sensitivity` -> `run(x, t)`, each returning one value
    per image (a tensor (N,)).

    Same options as fmi_jax's side: `samples` (n_perturb_samples), infidelity's `stdev`
    (Gaussian I ~ N(0, stdev^2) per feature, perturbed input x - I, as in Captum's
    docstring example and fmi_jax's `perturbation='gaussian'`) and `normalize`,
    max_sensitivity's `radius` (Captum's default uniform L-inf perturbation), `norm_ord`
    and `explain` / `explain_options` (the explainer, via `captum_method`).
    `batch_size` (perturbed inputs per forward pass on fmi_jax's side) becomes
    `max_examples_per_batch`. `replay`: perturbations to use instead of drawing noise,
    shaped (N * samples, C, H, W), row i * samples + s (the order Captum's
    `repeat_interleave` expansion has): infidelity's noise I, or sensitivity's perturbed
    inputs."""
    from captum import metrics as cm

    samples = int(options.get("samples", 10))
    batch_size = options.get("batch_size")
    batch_size = None if batch_size is None else int(batch_size)

    def replayed(inputs):
        if tuple(inputs.shape) != tuple(replay.shape):
            raise ValueError(
                f"replayed perturbations {tuple(replay.shape)} do not match Captum's "
                f"expanded inputs {tuple(inputs.shape)} (max_examples_per_batch must be None)"
            )
        return replay

    if name == "infidelity":
        stdev = float(options.get("stdev", 0.003))
        normalize = bool(options.get("normalize", False))

        def perturb(inputs):
            noise = replayed(inputs) if replay is not None else stdev * torch.randn_like(inputs)
            return noise, inputs - noise

        def run_infidelity(x, t, attributions):
            return cm.infidelity(
                net,
                perturb,
                x,
                attributions,
                target=t,
                n_perturb_samples=samples,
                max_examples_per_batch=batch_size,
                normalize=normalize,
            )

        return run_infidelity
    if name == "max_sensitivity":
        explain_opts = options.get("explain_options", {}) or {}
        if hasattr(explain_opts, "to_dict"):
            explain_opts = explain_opts.to_dict()
        explain = captum_method(options.get("explain", "saliency"), net, explain_opts)
        radius = float(options.get("radius", 0.02))
        norm_ord = options.get("norm_ord", "fro")

        def explanation_func(inputs, target):
            # Captum passes the clean inputs as a 1-tuple; it iterates over what comes
            # back, so return a tuple too.
            if isinstance(inputs, tuple):
                (inputs,) = inputs
            return (explain(inputs, target),)

        extra = {}
        if replay is not None:
            extra["perturb_func"] = lambda inputs, perturb_radius: replayed(inputs)

        def run_sensitivity(x, t):
            return cm.sensitivity_max(
                explanation_func,
                x,
                perturb_radius=radius,
                n_perturb_samples=samples,
                norm_ord=norm_ord,
                max_examples_per_batch=batch_size,
                target=t,
                **extra,
            )

        return run_sensitivity
    raise ValueError(f"no Captum metric for {name!r}; have {METRIC_REFERENCES}")


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Float32 matrix products and convolutions on both sides while inside: JAX's
    'highest' matmul precision (programs traced inside) and torch with TF32 off. On
    Ampere and newer GPUs both frameworks default to TF32 for float32 convolutions, and
    JAX for its dot products too while torch keeps those in float32: left alone, the
    two sides would time different arithmetic and agree only to TF32's rounding (about
    1e-3 relative per product, flipping ReLU and max-pool choices). No effect on a CPU."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# What `full_float32` computes in, as the results record it.
PRECISION = "float32: JAX matmul precision 'highest', torch TF32 off"


def synchronizer(device: torch.device):
    """`wrap(call)`: the call, then waiting for the device (CUDA launches are
    asynchronous, so a clock stopped without it times only the launch)."""

    def wrap(call):
        if device.type != "cuda":
            return call

        def synced(*args):
            out = call(*args)
            torch.cuda.synchronize(device)
            return out

        return synced

    return wrap


def layer_channels(net: TorchCNN, layer: str) -> int:
    i = int(layer[4:]) - 1
    convs = [m for m in net.blocks[i] if isinstance(m, nn.Conv2d)]
    return convs[0].out_channels


CAPTUM_METHODS = tuple(METHOD_REFERENCES)
