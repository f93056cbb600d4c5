"""The PyTorch side of the training-time benchmark (needs the `bench` extra).

The idiomatic PyTorch training loop of the original projects, for the same CNN,
from the same initial weights as fmi_jax's run (`torch_side.from_flax`), on the
same data in the same order:

* data: uint8 images (N, C, H, W) and int64 labels held in memory on `device`;
  each step indexes them with a slice of the epoch's permutation (the same
  permutation fmi_jax's loop draws) and converts to float in [0, 1];
* model: `torch_side.TorchCNN` in train mode (batch norm normalises with the batch
  statistics, running statistics updated with torch momentum 0.1 = flax momentum
  0.9), with `nn.Dropout` after every hidden dense ReLU, where flax's SimpleCNN
  has it (TorchCNN itself has no dropout: it is the inference twin);
* optimizer: `torch.optim.AdamW` (or Adam) with the config's learning rate, betas
  (0.9, 0.999), eps 1e-8, and decoupled weight decay on kernels only (parameters
  with ndim > 1), as `fmi_jax.train.optim` masks biases and batch-norm parameters
  out of optax.adamw's decay; the learning rate per step is `LambdaLR` over the
  same schedule (`optim.make_schedule`: linear warm-up then cosine decay, etc.),
  stepped after every optimizer step, so step i uses schedule(i) on both sides;
  optional global-norm gradient clipping (`clip_grad_norm_`);
* loss: `nn.CrossEntropyLoss(label_smoothing=...)` (optax.smooth_labels is the same
  (1 - a) * one_hot + a / K target);
* augmentation, batched on the device: horizontal flip with probability 1/2, then
  zero-pad by `crop_padding` and cut a random H x W window per image (the order
  and distribution of `fmi_jax.train.augment`; random erasing is not mirrored);
* metrics kept on the device (summed loss and accuracy), read every
  `log_every_steps` steps, as fmi_jax's loop reads its metrics window.

One known difference that does not touch the parameters: torch updates
`running_var` with the unbiased batch variance, flax with the biased one (a
relative difference of 1/(B*H*W - 1) per update).

Only the benchmark imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fmi_jax.benchmark import torch_side

__all__ = [
    "TorchTrainer",
    "augment",
    "flax_layout",
    "lr_lambda",
    "make_optimizer",
    "train_net",
]


def train_net(
    model: Any, variables: Mapping[str, Any], image_shape, *, dropout: bool = True
) -> torch_side.TorchCNN:
    """The TorchCNN twin of a flax SimpleCNN, in train mode, with dropout after every
    hidden dense ReLU when `dropout` and the model has a dropout rate."""
    if getattr(model, "padding", "SAME") != "SAME":
        raise ValueError(f"the PyTorch twin supports padding='SAME' only, got {model.padding!r}")
    net = torch_side.from_flax(model, variables, image_shape)
    rate = float(getattr(model, "dropout", 0.0) or 0.0)
    if dropout and rate:
        layers = []
        for layer in net.fcs:
            layers.append(layer)
            if isinstance(layer, nn.ReLU):
                layers.append(nn.Dropout(rate))
        net.fcs = nn.Sequential(*layers)
    return net.train()


def lr_lambda(config: Any, steps_per_epoch: int):
    """The multiplier of `config.learning_rate` at optimizer step i: the same function
    as `fmi_jax.train.optim.make_schedule` (optax's linear / warmup-cosine schedules)."""
    total = int(config.num_epochs * steps_per_epoch)
    warmup = int(round(config.get("warmup_epochs", 0.0) * steps_per_epoch))
    name = config.get("schedule", "constant")

    def cosine(step: int, steps: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))

    if name == "constant":
        return lambda i: min(i / warmup, 1.0) if warmup else 1.0
    if name == "cosine":
        if not warmup:
            return lambda i: cosine(i, max(total, 1))
        decay = max(total, warmup + 1) - warmup
        return lambda i: i / warmup if i < warmup else cosine(i - warmup, decay)
    raise ValueError(f"schedule {name!r} has no PyTorch mirror here (constant, cosine)")


def make_optimizer(net: nn.Module, config: Any, steps_per_epoch: int):
    """(optimizer, LambdaLR scheduler) mirroring `fmi_jax.train.optim.make_optimizer`."""
    if tuple(config.get("frozen", ()) or ()):
        raise ValueError("frozen parameters are not mirrored on the PyTorch side")
    name = config.get("optimizer", "adamw")
    lr = float(config.learning_rate)
    wd = float(config.get("weight_decay", 0.0))
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    if name == "adamw":
        groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    elif name == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    else:
        raise ValueError(f"optimizer {name!r} has no PyTorch mirror here (adamw, adam)")
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config, steps_per_epoch))


def augment(
    x: torch.Tensor,
    *,
    flip: bool = False,
    crop_padding: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Batched flip then pad-and-crop of float NCHW images (fmi_jax.train.augment's
    transforms and order, torch's random numbers)."""
    b, _, h, w = x.shape
    dev = x.device
    if flip:
        mask = torch.rand(b, device=dev, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    if crop_padding:
        p = int(crop_padding)
        padded = F.pad(x, (p, p, p, p))
        off = torch.randint(0, 2 * p + 1, (b, 2), device=dev, generator=generator)
        rows = off[:, :1] + torch.arange(h, device=dev)  # (B, H)
        cols = off[:, 1:] + torch.arange(w, device=dev)  # (B, W)
        batch = torch.arange(b, device=dev)[:, None, None]
        # advanced indices separated by a slice go first: (B, H, W, C)
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2).contiguous()
    return x


def flax_layout(net: torch_side.TorchCNN) -> dict[str, np.ndarray]:
    """The net's parameters as flat '<flax path>' -> array in flax's layout (HWIO
    conv kernels, (in, out) dense kernels), to compare with a flax params tree."""
    out = {}
    for i, block in enumerate(net.blocks):
        name = f"conv{i + 1}"
        conv = block[0]
        out[f"{name}/conv/kernel"] = conv.weight.detach().cpu().numpy().copy().transpose(2, 3, 1, 0)
        if conv.bias is not None:
            out[f"{name}/conv/bias"] = conv.bias.detach().cpu().numpy().copy()
        bns = [m for m in block if isinstance(m, nn.BatchNorm2d)]
        if bns:
            out[f"{name}/bn/scale"] = bns[0].weight.detach().cpu().numpy().copy()
            out[f"{name}/bn/bias"] = bns[0].bias.detach().cpu().numpy().copy()
    linears = [m for m in net.fcs if isinstance(m, nn.Linear)]
    for j, lin in enumerate(linears):
        out[f"fc{j + 1}/kernel"] = lin.weight.detach().cpu().numpy().copy().T
        out[f"fc{j + 1}/bias"] = lin.bias.detach().cpu().numpy().copy()
    out["head/kernel"] = net.head.weight.detach().cpu().numpy().copy().T
    out["head/bias"] = net.head.bias.detach().cpu().numpy().copy()
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TorchTrainer:
    """The PyTorch training loop for `config` (a fmi_jax training config), from the
    flax `variables`.

    `run(perm, start, steps)` runs `steps` optimizer steps on batches
    `start .. start + steps - 1` of `perm` and returns when the device is idle (so the
    caller can stop its clock); `losses=True` also returns every step's loss (one
    host sync per step: for the agreement check, not for timing).
    """

    def __init__(
        self,
        config: Any,
        model: Any,
        variables: Mapping[str, Any],
        images: np.ndarray,
        labels: np.ndarray,
        *,
        steps_per_epoch: int,
        device: str | torch.device = "cpu",
        stochastic: bool = True,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"want uint8 NHWC images, got {images.dtype} {images.shape}")
        self.device = torch.device(device)
        self.batch_size = int(config.batch_size)
        self.steps_per_epoch = int(steps_per_epoch)
        self.log_every = max(1, int(config.get("log_every_steps", 50)))
        self.dtype = dtype
        self.net = train_net(model, variables, images.shape[1:], dropout=stochastic).to(
            self.device, dtype
        )
        aug = dict(config.get("augment", {}) or {})
        if stochastic and float(aug.get("erasing", 0.0) or 0.0):
            raise ValueError("random erasing is not mirrored on the PyTorch side")
        self.augmentation = (
            {"flip": bool(aug.get("flip")), "crop_padding": int(aug.get("crop_padding") or 0)}
            if stochastic
            else {}
        )
        self.optimizer, self.scheduler = make_optimizer(self.net, config, steps_per_epoch)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=float(config.get("label_smoothing", 0)))
        self.clip = float(config.get("grad_clip_norm", 0.0) or 0.0)
        self.images = torch.from_numpy(np.array(images.transpose(0, 3, 1, 2), order="C")).to(
            self.device
        )
        self.labels = torch.from_numpy(np.asarray(labels, np.int64)).to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def run(self, perm: torch.Tensor, start: int, steps: int, *, losses: bool = False):
        perm = perm.to(self.device)
        b = self.batch_size
        net, opt, sched, loss_fn = self.net, self.optimizer, self.scheduler, self.loss_fn
        net.train()
        per_step = []
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = []
        for i in range(start, start + steps):
            idx = perm[i * b : (i + 1) * b]
            x = self.images[idx].to(self.dtype).div_(255.0)
            y = self.labels[idx]
            if self.augmentation:
                x = augment(x, generator=self.generator, **self.augmentation)
            out = net(x)
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip > 0:
                nn.utils.clip_grad_norm_(net.parameters(), self.clip)
            opt.step()
            sched.step()
            loss_sum += loss.detach()
            correct += (out.detach().argmax(1) == y).sum()
            if losses:
                per_step.append(float(loss.item()))
            elif (i + 1 - start) % self.log_every == 0:
                seen.append((float(loss_sum.item()), int(correct.item())))
        _sync(self.device)
        self.last_metrics = {"loss_sum": float(loss_sum.item()), "correct": int(correct.item())}
        if not math.isfinite(self.last_metrics["loss_sum"]):
            raise FloatingPointError("the PyTorch training loss is not finite")
        return per_step if losses else None

    def params(self) -> dict[str, np.ndarray]:
        return flax_layout(self.net)
