r"""Layer and neuron DeepLIFT (``at_layer``, ``at_neuron``) against Captum on a trained CNN.

    make .venv-bench/.installed           # torch + Captum, the benchmark's venv
    .venv-bench/bin/python scripts/composition_agreement.py --workdir=runs/cnn_fmnist

The benchmark (``make bench``) compares every composition with its Captum class on a
freshly initialised CNN and dithered images. This script looks at the trained CNN of
--workdir and its first ``--num_images`` test images as they are, where Fashion-MNIST's
black background ties the maxima of max-pool windows. For layer DeepLIFT at conv3 and
conv2 (Captum's ``LayerDeepLift``) and neuron DeepLIFT of one conv3 unit
(``NeuronDeepLift``), from the black image and from one uniform random reference, on
the raw images and on the benchmark's dithered ones, it prints the relative L2
difference of the maps and each side's largest summation-to-delta gap. docs/captum.md
(item 20) reports what it measured. Without torch and Captum, or without a run in
--workdir, it ends in one ``error:`` line and exit status 2.
"""

import sys
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from experiments import _cli  # noqa: E402
from fmi_jax import attribution  # noqa: E402
from fmi_jax.train import evaluate as evaluate_lib  # noqa: E402
from fmi_jax.train import loop as loop_lib  # noqa: E402
from fmi_jax.train.input_pipeline import to_float  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/cnn_fmnist", "A trained run of a SimpleCNN.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 64, "First test images to explain.")
_NEURON = (3, 3, 0)  # row, column, channel of conv3, as in configs/benchmark.py


def main():
    torch, captum_attr = _cli.reference_packages("torch", "captum.attr")
    from fmi_jax.benchmark import runner, torch_side

    model, variables, run_config, _ = evaluate_lib.restore_model(_WORKDIR.value)
    test = loop_lib.load_data(run_config.data)["test"]
    shape = tuple(test.images.shape[1:])
    net = torch_side.from_flax(model, variables, shape).eval()
    handle = attribution.flax_model(model, variables, train=False)
    raw = np.asarray(to_float(jnp.asarray(test.images[: _NUM_IMAGES.value])))
    uniform = runner.reference_images(1, shape)

    def nchw(a):
        return torch.from_numpy(np.array(a, np.float32)).permute(0, 3, 1, 2).contiguous()

    def nhwc(t):
        return t.detach().permute(0, 2, 3, 1).numpy()

    rows = np.arange(len(raw))
    print("| map | reference | images | relative L2 | largest gap fmi_jax | largest gap Captum |")
    print("|---|---|---|---|---|---|")
    for images_name, x in (("raw", raw), ("dithered", runner.dither(raw, 1 / 768))):
        target = np.asarray(jnp.argmax(handle(x), axis=-1))
        for reference_name, reference in (("black", np.zeros_like(uniform)), ("uniform", uniform)):
            for layer in ("conv3", "conv2"):
                ours = np.asarray(
                    attribution.at_layer(attribution.deeplift)(
                        handle, x, target, layer=layer, baseline=reference
                    )
                )
                explain = captum_attr.LayerDeepLift(net, torch_side.conv_block_output(net, layer))
                theirs = nhwc(
                    explain.attribute(
                        nchw(x), baselines=nchw(reference), target=torch.from_numpy(target)
                    )
                )
                change = (
                    np.asarray(handle(x))[rows, target] - np.asarray(handle(reference))[0, target]
                )
                _row(f"layer DeepLIFT, {layer}", reference_name, images_name, ours, theirs, change)
            ours = np.asarray(
                attribution.at_neuron(attribution.deeplift)(
                    handle, x, layer="conv3", neuron=_NEURON, baseline=reference
                )
            )
            explain = captum_attr.NeuronDeepLift(net, torch_side.conv_block_output(net, "conv3"))
            row, column, channel = _NEURON
            theirs = nhwc(
                explain.attribute(
                    nchw(x), neuron_selector=(channel, row, column), baselines=nchw(reference)
                )
            )
            unit = (slice(None), *_NEURON)
            change = np.asarray(handle.capture(x, "conv3")[1])[unit] - float(
                np.asarray(handle.capture(reference, "conv3")[1])[unit][0]
            )
            _row(
                f"neuron DeepLIFT, conv3 {_NEURON}",
                reference_name,
                images_name,
                ours,
                theirs,
                change,
            )


def _row(name, reference, images, ours, theirs, change):
    difference = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
    gaps = [np.abs(a.reshape(len(a), -1).sum(axis=1) - change).max() for a in (ours, theirs)]
    print(f"| {name} | {reference} | {images} | {difference:.2g} | {gaps[0]:.2g} | {gaps[1]:.2g} |")


if __name__ == "__main__":
    _cli.run(main)
