r"""Performance information curves: fmi_jax against PAIR saliency, image by image.

    pip install saliency==0.2.1     # PAIR's package, into fmi_jax's venv
    python scripts/pic_agreement.py --workdir=runs/cnn_fmnist

On the first ``--num_images`` test images of a trained run and the maps of a few
methods (absolute saliency, absolute integrated gradients, Gaussian-smoothed saliency,
Grad-CAM, a random map), computes the Softmax and Accuracy Information Curves (SIC, AIC)
with :func:`fmi_jax.evaluation.performance_information_curve` and with PAIR's
``saliency.metrics.pic.compute_pic_metric`` on the same uint8 images, maps, random
pixels (ours, from the key) and model, and prints per method: how many images each
skipped (and whether the same ones), the largest per-image AUC difference, both
median-aggregated AUCs, the seconds of each side, and on how many images PAIR alone
would have failed (the second patch below). Two patches let PAIR 0.2.1 run here: it calls ``np.trapz``,
which NumPy 2.4 removed (the script puts ``np.trapezoid``, the same rule, in its
place), and for a grayscale image whose threshold keeps every pixel (a map whose
quantile is its tied minimum, e.g. Grad-CAM's zeros) its ``create_blurred_image``
returns an ``(H, W, 1)`` array that PIL refuses (the script reshapes it back). docs/results.md and
docs/captum.md report what it measured. Without PAIR's package or a run in --workdir it
ends in one ``error:`` line and exit status 2.
"""

import sys
import time
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from experiments import _cli  # noqa: E402
from fmi_jax import attribution, evaluation  # noqa: E402
from fmi_jax.train import evaluate as evaluate_lib  # noqa: E402
from fmi_jax.train import loop as loop_lib  # noqa: E402
from fmi_jax.train.input_pipeline import to_float  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/cnn_fmnist", "A trained run.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 64, "First test images to score.")


def _methods(fn, handle, x, target):
    return {
        "saliency (abs)": attribution.saliency(fn, x, target, abs=True),
        "integrated gradients (abs)": jnp.abs(
            attribution.integrated_gradients(fn, x, target, steps=32)
        ),
        "gaussian smoothed saliency": attribution.gaussian_smoothed_saliency(fn, x, target),
        "grad-cam (conv3)": attribution.grad_cam(handle, x, target, layer="conv3"),
        "random": jax.random.uniform(jax.random.key(2), x.shape[:-1]),
    }


def main():
    try:
        from saliency.metrics import pic as pair
    except ImportError:
        raise ValueError(
            "PAIR's saliency package is not installed: pip install saliency==0.2.1"
        ) from None
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid
    pair_blur = pair.create_blurred_image
    reshaped = set()  # (method, curve, image) that PAIR alone would have failed on
    current = [None]

    def create_blurred_image(full_img, pixel_mask, method="linear"):
        # PAIR returns a grayscale image as (H, W, 1) when every pixel is kept, which
        # PIL then refuses: squeeze it back.
        out = pair_blur(full_img, pixel_mask, method)
        if out.shape != full_img.shape:
            reshaped.add(current[0])
        return out.reshape(full_img.shape)

    pair.create_blurred_image = create_blurred_image
    model, variables, run_config, _ = evaluate_lib.restore_model(_WORKDIR.value)
    test = loop_lib.load_data(run_config.data)["test"]
    x = jnp.asarray(to_float(test.images[: _NUM_IMAGES.value]))
    handle = attribution.flax_model(model, variables, train=False)
    fn = jax.jit(handle)
    target = jnp.argmax(fn(x), axis=-1)
    key = jax.random.key(0)
    pixels = np.asarray(test.images[: _NUM_IMAGES.value])[..., 0]

    def pred(kind, label):
        def pred_func(batch):
            scaled = jnp.asarray(batch[..., None], jnp.float32) / 255.0
            logits = fn(scaled)
            if kind == "correct":
                return np.asarray(jnp.argmax(logits, -1) == label, np.float64)
            return np.asarray(jax.nn.softmax(logits, -1)[:, label], np.float64)

        return pred_func

    print(
        "| method | curve | skipped (ours / PAIR / same) | max abs AUC difference | "
        "median AUC ours | median AUC PAIR | ours s | PAIR s | images PAIR fails on |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, maps in _methods(fn, handle, x, target).items():
        relevance = np.asarray(maps if maps.ndim == 3 else maps.sum(-1), np.float64)
        for kind, curve in (("probability", "SIC"), ("correct", "AIC")):
            start = time.perf_counter()
            ours = evaluation.performance_information_curve(
                fn, x, target, maps, key, score=kind, batch_size=128
            )
            ours_s = time.perf_counter() - start
            start = time.perf_counter()
            theirs = []
            for i in range(x.shape[0]):
                current[0] = (name, curve, i)
                try:
                    result = pair.compute_pic_metric(
                        img=pixels[i],
                        saliency_map=relevance[i],
                        random_mask=ours.random_pixels[i],
                        pred_func=pred(kind, int(target[i])),
                        saliency_thresholds=evaluation.PIC_THRESHOLDS,
                    )
                    theirs.append(result)
                except pair.ComputePicMetricError:
                    theirs.append(None)
            pair_s = time.perf_counter() - start
            skipped_ours = {i for i, reason in enumerate(ours.skipped) if reason}
            skipped_pair = {i for i, r in enumerate(theirs) if r is None}
            both = [i for i in range(x.shape[0]) if i not in skipped_ours | skipped_pair]
            diff = max(
                (abs(float(ours.auc[i]) - float(theirs[i].auc)) for i in both), default=np.nan
            )
            ours_median = evaluation.aggregate_pic(ours)[1] if both else np.nan
            pair_median = (
                pair.aggregate_individual_pic_results([r for r in theirs if r]).auc
                if both
                else np.nan
            )
            print(
                f"| {name} | {curve} | {len(skipped_ours)} / {len(skipped_pair)} / "
                f"{skipped_ours == skipped_pair} | {diff:.2g} | {ours_median:.4f} | "
                f"{pair_median:.4f} | {ours_s:.1f} | {pair_s:.1f} | "
                f"{sum(key[:2] == (name, curve) for key in reshaped)} |"
            )


if __name__ == "__main__":
    _cli.run(main)
