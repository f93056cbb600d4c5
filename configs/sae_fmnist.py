"""The k-sparse autoencoder study on Fashion-MNIST: pixels -> sparse codes -> prediction.

python -m experiments.sae_study --config=configs/sae_fmnist.py --workdir=runs/sae_fmnist

Three phases under the workdir, each resumable from its own checkpoints:
  autoencoder/  the autoencoder, MSE reconstruction loss (+ AuxK)
  classifier/   the MLP on the frozen codes (starts from autoencoder/)
  finetune/     optional end-to-end fine-tuning (finetune.num_epochs > 0)
  explain/      attributions, agreement and the figures; sae_metrics.json

`:smoke` shrinks it to seconds (tests, CI).
"""

import ml_collections

from configs import common


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = common.data_config("fashion_mnist", validation_size=5000)
    # KSparseAutoencoder fields (fmi_jax/models/sparse_autoencoder.py), shared by every phase.
    config.sae = {
        "latents": 1024,
        "k": 50,
        "image_shape": (28, 28, 1),
        "tied": False,
        "unit_norm_decoder": True,
        # 'aux_k', 'k_schedule' or 'none' (docs/results.md: measured on this dataset).
        "mitigation": "aux_k",
        "aux_k": 256,
        "dead_after_steps": 20,
        "k_start": 200,
        "k_schedule_steps": 3000,
    }
    # Phase 1: the autoencoder (fields of configs.common.training_config override it).
    config.autoencoder = {
        "num_epochs": 30,
        "batch_size": 256,
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "schedule": "constant",
        "warmup_epochs": 0.0,
        "weight_decay": 0.0,
        "task_options": {"aux_coef": 1.0 / 32},
    }
    # Phase 2: the classifier on frozen codes.
    config.classifier = {
        "num_epochs": 50,
        "batch_size": 256,
        "optimizer": "adamw",
        "learning_rate": 1e-3,
        "schedule": "cosine",
        "warmup_epochs": 1.0,
        "weight_decay": 1e-4,
        "label_smoothing": 0.0,
        "hidden": (512, 256),
        "dropout": 0.3,
    }
    # Phase 3 (optional): end-to-end fine-tuning of encoder and classifier (the decoder
    # stays frozen so the dictionary the attributions use is the trained one).
    config.finetune = {
        "num_epochs": 0,
        "batch_size": 256,
        "optimizer": "adamw",
        "learning_rate": 1e-4,
        "schedule": "cosine",
        "warmup_epochs": 0.0,
        "weight_decay": 1e-4,
    }
    config.eval_batch_size = 1000
    # '' runs every phase; 'autoencoder' or 'classifier' stops after that phase.
    config.stop_after = ""
    config.progress = True
    # Phase 3 of the study: attributions of the final classifier, pixels -> prediction.
    config.explain = {
        "output": "explain",
        "checkpoint": "best",
        "split": "test",
        "target": "predicted",
        "seed": 0,
        "selection": {
            "kind": "high_confidence",
            "indices": (),
            "per_class": 3,
            "threshold": 0.8,
            "pool": 2000,
            "seed": 0,
        },
        "methods": (
            "integrated_gradients",
            "saliency",
            "smoothgrad",
            "decoder_weighted",
        ),
        "options": {
            "integrated_gradients": {"steps": 50, "rule": "gausslegendre"},
            # Signed gradients: the code-space contributions they are compared with are signed.
            "saliency": {"abs": False},
            "smoothgrad": {"samples": 25, "stdev": 0.1, "abs": False},
            "decoder_weighted": {"normalize": "l1"},
        },
        "layer_cam": {"method": "grad_cam", "layers": (), "samples": 0},
        "batch_size": 256,
        "topk_fraction": 0.01,
        "figures": {"max_sheets": 10, "gallery_per_class": 2, "sign_modes": True},
    }
    config.figures = {"atoms": 100, "reconstructions": 10}

    arg = common.variant(arg)
    if arg == "smoke":
        config.data.validation_size = 64
        config.data.train_limit = 256
        config.data.test_limit = 128
        config.sae.latents = 64
        config.sae.k = 8
        config.sae.aux_k = 16
        config.sae.dead_after_steps = 4
        config.autoencoder.num_epochs = 2
        config.autoencoder.batch_size = 32
        config.classifier.num_epochs = 2
        config.classifier.batch_size = 32
        config.classifier.hidden = (32, 16)
        config.finetune.num_epochs = 1
        config.finetune.batch_size = 32
        config.eval_batch_size = 64
        config.explain.selection.per_class = 1
        config.explain.selection.threshold = 0.0
        config.explain.selection.pool = 128
        config.explain.options.integrated_gradients.steps = 8
        config.explain.options.smoothgrad.samples = 4
        config.explain.batch_size = 64
        config.explain.figures.max_sheets = 2
        config.figures.atoms = 16
    return config
