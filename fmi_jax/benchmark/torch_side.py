"""The PyTorch + Captum side of the benchmark (needs the `bench` extra).

`TorchCNN` mirrors `fmi_jax.models.SimpleCNN` layer for layer, and
`from_flax` copies a trained Flax model's variables into it, so both sides
compute the same function: conv kernels HWIO -> OIHW, dense kernels (in, out) ->
(out, in), batch-norm statistics as running mean/var (eval mode), and the
flatten done in NHWC order as Flax does. Every ReLU is its own module, which
Captum's DeepLift needs (it hooks modules).

Only this module imports torch; the rest of fmi_jax never does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["CAPTUM_METHODS", "TorchCNN", "captum_method", "from_flax"]


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


def captum_method(name: str, net: nn.Module, options: Mapping[str, Any]):
    """`run(x_nchw, target) -> attributions` with Captum, for the benchmark's method names."""
    from captum import attr as ca

    steps = options.get("steps", 50)
    samples = options.get("samples", 25)
    stdev = options.get("stdev", 0.15)
    if name == "saliency":
        m = ca.Saliency(net)
        return lambda x, t: m.attribute(x, target=t, abs=True)
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
        return lambda x, t: m.attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=samples,
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
    raise ValueError(f"no Captum counterpart for {name!r}; have {CAPTUM_METHODS}")


CAPTUM_METHODS = (
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "smoothgrad",
    "ig_smoothgrad",
    "deeplift",
    "gradient_shap",
)
