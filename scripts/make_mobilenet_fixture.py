"""Reference data for fmi_jax's MobileNetV3, made with torchvision (needs torch and
torchvision; the tests that use its output do not).

    python scripts/make_mobilenet_fixture.py            # tests/fixtures/*.npz
    python scripts/make_mobilenet_fixture.py --classes  # fmi_jax/data/imagenet_classes.txt
    python scripts/make_mobilenet_fixture.py --full     # full-width Large and Small vs fmi_jax

The fixtures are reduced-width torchvision models (``width_mult`` 0.25 for Small, 0.2 for
Large, 10 classes) with
random weights *and* randomised batch-norm statistics and affine parameters (so a
converter that mishandled batch norm could not pass), their ``state_dict`` under the
torch keys as float32, ``__input__`` (NHWC float32 images) and ``__logits__`` (what
torchvision computes in eval mode). Inputs are 2 images of 72 x 72, whose odd
intermediate sizes (after the 5 stride-2 layers: 36, 18, 9, 5, 3) exercise torch's
symmetric padding.

``--full`` builds full-width (1.0) Large and Small ImageNet models with random weights
and statistics, converts them with ``fmi_jax.models.torchvision_import`` and prints the
largest absolute logit difference at 224 x 224 (needs jax and flax next to torch).
"""

from __future__ import annotations

import argparse
import os
import sys
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
# Width multipliers of the fixtures: both files together stay under 2 MB.
FIXTURE_WIDTHS = {"small": 0.25, "large": 0.2}


def _import_torchvision():
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        # A torchvision wheel whose compiled ops do not load (e.g. a CUDA build next to
        # a CPU torch) fails while registering fake ops for them; the model code needs
        # none of those ops, so skip that registration.
        if "does not exist" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType(
            "torchvision._meta_registrations"
        )
        import torchvision  # noqa: F401
    import torchvision

    return torch, torchvision


def _randomise(model, torch, seed: int) -> None:
    """Random batch-norm statistics and affine parameters (default init is identity),
    random biases, and larger classifier weights."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            with torch.no_grad():
                module.weight.copy_(0.5 + torch.rand(c, generator=gen))
                module.bias.copy_(0.2 * torch.randn(c, generator=gen))
                module.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(c, generator=gen))
        elif isinstance(module, torch.nn.Linear):
            # torchvision initialises these with std 0.01, which leaves logits ~0.01;
            # logits of order 1 make the 1e-4 tolerance a meaningful test.
            with torch.no_grad():
                w = torch.randn(module.weight.shape, generator=gen)
                module.weight.copy_(4.0 * w / module.in_features**0.5)
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
        elif isinstance(module, torch.nn.Conv2d) and module.bias is not None:
            with torch.no_grad():
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))


def _build(torch, torchvision, variant: str, seed: int, **kwargs):
    torch.manual_seed(seed)
    builder = getattr(torchvision.models, f"mobilenet_v3_{variant}")
    model = builder(weights=None, **kwargs)
    _randomise(model, torch, seed + 1)
    return model.eval()


def _reference(torch, model, images_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())
        return model(x).numpy().astype(np.float32)


def _state_arrays(model) -> dict[str, np.ndarray]:
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        out[key] = value.detach().cpu().numpy().astype(np.float32)
    return out


def make_fixtures(widths: dict[str, float], size: int) -> None:
    torch, torchvision = _import_torchvision()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(FIXTURES, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.uniform(-2.0, 2.5, size=(2, size, size, 3)).astype(np.float32)
    for seed, (variant, width_mult) in enumerate(widths.items()):
        model = _build(torch, torchvision, variant, seed, width_mult=width_mult, num_classes=10)
        arrays = _state_arrays(model)
        arrays["__input__"] = images
        arrays["__logits__"] = _reference(torch, model, images)
        arrays["__width_mult__"] = np.float32(width_mult)
        path = os.path.join(FIXTURES, f"mobilenet_v3_{variant}_fixture.npz")
        np.savez_compressed(path, **arrays)
        print(f"{path}: {os.path.getsize(path) / 1e6:.3f} MB, logits {arrays['__logits__'][0]}")


def write_classes() -> None:
    _, torchvision = _import_torchvision()
    categories = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(categories) == 1000, len(categories)
    path = os.path.join(ROOT, "fmi_jax", "data", "imagenet_classes.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(categories) + "\n")
    print(f"{path}: {len(categories)} classes")


def full_comparison(size: int = 224, batch: int = 2) -> None:
    torch, torchvision = _import_torchvision()
    sys.path.insert(0, ROOT)
    import jax

    from fmi_jax.models.mobilenet_v3 import MobileNetV3
    from fmi_jax.models.torchvision_import import mobilenet_v3_variables

    rng = np.random.default_rng(1)
    images = rng.uniform(-2.0, 2.5, size=(batch, size, size, 3)).astype(np.float32)
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, jax {jax.__version__}"
    )
    for seed, variant in enumerate(("large", "small")):
        model = _build(torch, torchvision, variant, 100 + seed)
        expected = _reference(torch, model, images)
        flax_model = MobileNetV3(variant=variant)
        variables = mobilenet_v3_variables(_state_arrays(model), flax_model, (size, size, 3))
        got = np.asarray(jax.jit(flax_model.apply)(variables, images))
        diff = np.abs(got - expected)
        print(
            f"mobilenet_v3_{variant} {size}x{size} batch {batch}: max |logit diff| "
            f"{diff.max():.3e}, logit scale (max |logit|) {np.abs(expected).max():.3f}, "
            f"same argmax: {bool((got.argmax(-1) == expected.argmax(-1)).all())}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full-width comparison at 224")
    parser.add_argument("--classes", action="store_true", help="write imagenet_classes.txt")
    parser.add_argument("--size", type=int, default=72)
    args = parser.parse_args()
    if args.full:
        full_comparison()
    elif args.classes:
        write_classes()
    else:
        make_fixtures(FIXTURE_WIDTHS, args.size)


if __name__ == "__main__":
    main()
