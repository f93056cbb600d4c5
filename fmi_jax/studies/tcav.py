"""The TCAV study: which classes of a trained classifier depend on which concepts.

`run_tcav(config, workdir)` loads a checkpoint of `workdir` and tests every class of
its dataset against every class taken as a concept (Kim et al. 2018; the method is
:mod:`fmi_jax.attribution.concepts`). From the split it draws, all disjoint:
`concept_size` images of each class (the concept), `num_images` of each class (the
images under test, explained for their own label) and `random_sets` sets of
`random_size` images of any class. At each layer the CAVs are fitted once
(`fit_cavs`) and every class is scored along them (`tcav`): a classes x concepts matrix
of TCAV scores, each cell t-tested against the random CAVs.

The diagonal is a known answer: a class's logit rises towards the activations of its
own images, so a trained model should score it near 1, significantly. The rest shows
which classes the model sees as sharing directions; `confusion_spearman` compares it
with the model's own confusions on the split: the Spearman correlation, over the
pairs of different classes, of the symmetrised score matrix with the symmetrised
confusion counts (classes the model mixes up should raise each other's logits).

Writes under `workdir/<config.output>/`:

  tcav.npz      per layer `<layer>/...`: sign_count and magnitude (classes, concepts,
                R), p_value (classes, concepts), cav_accuracy (concepts, R),
                null_sign_count (classes, R), null_accuracy (R,); and the indices
                of the concept images, the images under test and the random sets,
                and the model's confusion matrix on the split
  tcav.json     per layer: the mean sign count and magnitude matrices, p-values,
                significance, mean CAV accuracy per concept, confusion_spearman;
                the model and data
  tcav.png      the score matrices, one panel per layer (non-significant cells grey)
  config.json   the study config

Re-running with the same config reuses tcav.npz and redraws what is missing; a
different config for the same output folder is refused. The layers, set sizes and CAV
options are checked before the folder is claimed, so a mistyped layer leaves nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fmi_jax import attribution, evaluation, plotting, runs
from fmi_jax.train import evaluate as evaluate_lib
from fmi_jax.train import loop as loop_lib
from fmi_jax.train.input_pipeline import to_float

__all__ = ["TcavResult", "draw_sets", "run_tcav", "score_concepts"]

OUTPUT_HINT = "pass --config.output=<new name> (or move that folder away)"
# The arrays tcav.npz holds per layer, under "<layer>/<name>" (layers are module paths,
# which may contain '/' themselves).
_FIELDS = (
    "sign_count",
    "magnitude",
    "p_value",
    "significant",
    "null_sign_count",
    "cav_accuracy",
    "null_accuracy",
)


@dataclasses.dataclass
class TcavResult:
    out_dir: Path
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]


def draw_sets(
    labels: np.ndarray,
    *,
    num_classes: int,
    concept_size: int,
    num_images: int,
    random_sets: int,
    random_size: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint indices: concept images ``(classes, concept_size)``, images under test
    ``(classes, num_images)`` and random sets ``(random_sets, random_size)``, drawn from
    one permutation of the split (seeded), each class's first images its concept."""
    order = np.random.default_rng(seed).permutation(len(labels))
    concept, tested, used = [], [], np.zeros(len(labels), bool)
    for c in range(num_classes):
        members = order[labels[order] == c]
        if len(members) < concept_size + num_images:
            raise ValueError(
                f"class {c} has {len(members)} images in this split; the study needs "
                f"concept_size + num_images = {concept_size + num_images} of each: lower them"
            )
        concept.append(members[:concept_size])
        tested.append(members[concept_size : concept_size + num_images])
        used[members[: concept_size + num_images]] = True
    pool = order[~used[order]]
    if len(pool) < random_sets * random_size:
        raise ValueError(
            f"{len(pool)} images are left for the random sets, which need random_sets x "
            f"random_size = {random_sets * random_size}: lower them"
        )
    random = pool[: random_sets * random_size].reshape(random_sets, random_size)
    return np.stack(concept), np.stack(tested), random


def score_concepts(
    handle: Any,
    images: Any,
    concept_index: np.ndarray,
    test_index: np.ndarray,
    random_index: np.ndarray,
    *,
    layer: str,
    classifier: str,
    l2: float,
    test_fraction: float,
    alpha: float,
    batch_size: int | None,
) -> dict[str, np.ndarray]:
    """Every class (rows of ``test_index``, explained for its own label) against every
    class's concept (rows of ``concept_index``) at ``layer``: the arrays of tcav.npz
    for that layer."""
    names = [str(c) for c in range(len(concept_index))]
    cavs = attribution.fit_cavs(
        handle,
        layer=layer,
        concepts={name: images[index] for name, index in zip(names, concept_index)},
        random_sets=[images[index] for index in random_index],
        batch_size=batch_size,
        classifier=classifier,
        l2=l2,
        test_fraction=test_fraction,
    )
    rows = []
    for c, index in enumerate(test_index):
        results = attribution.tcav(
            handle, images[index], c, cavs=cavs, batch_size=batch_size, alpha=alpha
        )
        rows.append([results[name] for name in names])
        logging.info("tcav %s: class %d of %d tested", layer, c + 1, len(test_index))
    return {
        "sign_count": np.array([[r.sign_count for r in row] for row in rows]),
        "magnitude": np.array([[r.magnitude for r in row] for row in rows]),
        "p_value": np.array([[r.p_value for r in row] for row in rows]),
        "significant": np.array([[r.significant for r in row] for row in rows]),
        "null_sign_count": np.array([row[0].null_sign_count for row in rows]),
        "cav_accuracy": np.array([rows[0][j].accuracy for j in range(len(names))]),
        "null_accuracy": rows[0][0].null_accuracy,
    }


def _check(config: Any, handle: Any, split: Any) -> tuple[np.ndarray, ...]:
    """Everything that can fail cheaply, before the folder is claimed: the layers, the
    set sizes against the split, and the CAV options (a fit on tiny sets of the
    configured sizes runs the same checks as the real ones)."""
    x = to_float(jnp.asarray(split.images[:1]))
    if not config.layers:
        raise ValueError("layers is empty: name at least one, e.g. --config.layers='(\"conv3\",)'")
    for layer in config.layers:
        handle.layer_shape(x, layer)
    if not 0 < float(config.alpha) < 1:
        raise ValueError(f"alpha must be in (0, 1), got {config.alpha}")
    for field, minimum in (
        ("concept_size", 2),
        ("num_images", 1),
        ("random_sets", 2),  # the null needs two
        ("random_size", 2),
        ("batch_size", 1),
    ):
        if not int(config[field]) >= minimum:
            raise ValueError(f"{field} must be at least {minimum}, got {config[field]}")
    # The sizes against the split first: the trial fit's cost grows with them.
    sets = draw_sets(
        split.labels,
        num_classes=len(split.class_names),
        concept_size=int(config.concept_size),
        num_images=int(config.num_images),
        random_sets=int(config.random_sets),
        random_size=int(config.random_size),
        seed=int(config.seed),
    )
    rng = np.random.default_rng(0)
    attribution.concept_activation_vector(
        rng.normal(size=(int(config.concept_size), 2)) + 1.0,
        rng.normal(size=(int(config.random_size), 2)),
        classifier=config.classifier,
        l2=float(config.l2),
        test_fraction=float(config.test_fraction),
    )
    return sets


def _confusion(handle: Any, images: Any, labels: np.ndarray, classes: int, batch_size: int):
    """The model's confusion counts on the split, ``[true, predicted]``."""
    predict = jax.jit(lambda x: jnp.argmax(handle(x), axis=-1))
    predicted = np.concatenate(
        [np.asarray(predict(images[i : i + batch_size])) for i in range(0, len(labels), batch_size)]
    )
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def _confusion_spearman(sign_count: np.ndarray, count: int, confusion: np.ndarray) -> float:
    """Spearman correlation over the pairs of different classes of the symmetrised
    scores and the symmetrised confusion counts. The scores enter as integers, the
    number of (image, random set) pairs with a positive sensitivity (``sign_count``
    times the ``count`` images per class, summed over the random sets; the same order
    as the mean sign count), so that float rounding neither makes nor breaks a tie."""
    positive = np.rint(sign_count * count).sum(axis=-1)
    pairs = ~np.eye(len(positive), dtype=bool)
    a, b = (positive + positive.T)[pairs], (confusion + confusion.T)[pairs]
    return float(evaluation.spearman(jnp.asarray(a)[None], jnp.asarray(b)[None])[0])


def _summary(arrays: dict[str, np.ndarray], layers, split, model_name, epoch) -> dict[str, Any]:
    per_layer = {}
    for layer in layers:
        a = {name: arrays[f"{layer}/{name}"] for name in _FIELDS}
        per_layer[layer] = {
            "sign_count_mean": a["sign_count"].mean(axis=-1).tolist(),
            "sign_count_std": a["sign_count"].std(axis=-1, ddof=1).tolist(),
            "magnitude_mean": np.nanmean(a["magnitude"], axis=-1).tolist(),
            "null_sign_count_mean": a["null_sign_count"].mean(axis=-1).tolist(),
            "p_value": a["p_value"].tolist(),
            "significant": a["significant"].tolist(),
            "cav_accuracy_mean": a["cav_accuracy"].mean(axis=-1).tolist(),
            "null_accuracy_mean": float(a["null_accuracy"].mean()),
            "diagonal_sign_count_mean": float(np.diag(a["sign_count"].mean(axis=-1)).mean()),
            "diagonal_significant": int(np.diag(a["significant"]).sum()),
            "confusion_spearman": _confusion_spearman(
                a["sign_count"], arrays["test_index"].shape[1], arrays["confusion"]
            ),
        }
    return {
        "layers": per_layer,
        "classes": list(split.class_names),
        "model": model_name,
        "checkpoint_epoch": epoch,
        "dataset": split.name,
        "split": split.split,
    }


def run_tcav(config: ml_collections.ConfigDict, workdir: str | Path) -> TcavResult:
    """Runs the TCAV study on the trained run in `workdir` (see the module docstring)."""
    workdir = Path(workdir)
    out = runs.subfolder(workdir, config.output, "output")
    model, variables, run_config, epoch = evaluate_lib.restore_model(
        workdir, checkpoint=config.checkpoint
    )
    split = loop_lib.load_split(run_config.data, config.split, "split")
    handle = attribution.flax_model(model, variables)
    concept_index, test_index, random_index = _check(config, handle, split)
    npz_path, json_path = out / "tcav.npz", out / "tcav.json"
    runs.claim_study(
        out,
        config,
        epoch=epoch,
        model=run_config.model.name,
        has_results=npz_path.exists(),
        hint=OUTPUT_HINT,
        # Memory only; the epoch a checkpoint name resolves to is checkpoint.json's.
        free=("batch_size", "checkpoint"),
        results=runs.read_json(json_path, rewritable=True),
    )

    if npz_path.exists():
        logging.info("%s exists: reusing the scores, drawing missing figures only", npz_path)
        arrays = dict(np.load(npz_path))
    else:
        images = to_float(jnp.asarray(split.images))
        arrays = {
            "concept_index": concept_index,
            "test_index": test_index,
            "random_index": random_index,
            "confusion": _confusion(
                handle, images, split.labels, len(split.class_names), int(config.batch_size)
            ),
        }
        for layer in config.layers:
            count = (len(concept_index) + 1) * int(config.random_sets)
            logging.info("tcav %s: fitting %d CAVs", layer, count)
            found = score_concepts(
                handle,
                images,
                concept_index,
                test_index,
                random_index,
                layer=layer,
                classifier=config.classifier,
                l2=float(config.l2),
                test_fraction=float(config.test_fraction),
                alpha=float(config.alpha),
                batch_size=int(config.batch_size),
            )
            arrays.update({f"{layer}/{k}": v for k, v in found.items()})
        runs.save_npz_atomic(npz_path, **arrays)
    summary = _summary(arrays, config.layers, split, run_config.model.name, epoch)
    if not json_path.exists():
        runs.write_json_atomic(json_path, summary, sort_keys=False)
    figure = out / "tcav.png"
    if not figure.exists():
        classes = list(split.class_names)
        plotting.concept_scores(
            {
                layer: np.asarray(summary["layers"][layer]["sign_count_mean"])
                for layer in config.layers
            },
            {layer: np.asarray(summary["layers"][layer]["significant"]) for layer in config.layers},
            classes,
            classes,
            figure,
        )
    return TcavResult(out, summary, arrays)
