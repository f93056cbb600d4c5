"""The MNIST study: Grad-CAM, Score-CAM, SmoothGrad and saliency side by side.

    python -m experiments.train --config=configs/cnn_mnist.py --workdir=runs/cnn_mnist
    python -m experiments.explain --workdir=runs/cnn_mnist --config=configs/explain_mnist.py

A variant of the explain study (configs/explain.py) for the two-conv MNIST CNN:
the CAMs look at `conv2`, the last conv block (14 x 14 before its pool), and the
per-layer figure shows Grad-CAM of `conv1` and `conv2` side by side.
"""

from configs import explain


def get_config(arg=None):
    config = explain.get_config(arg)
    config.methods = ("grad_cam", "score_cam", "smoothgrad", "saliency")
    config.options = {
        "saliency": {"abs": True},
        "grad_cam": {"layer": "conv2"},
        # 64 channels x the explained samples, in masked batches of `batch_size`.
        "score_cam": {"layer": "conv2"},
        "smoothgrad": config.options.smoothgrad.to_dict(),
    }
    config.figures.sign_modes = False
    return config
