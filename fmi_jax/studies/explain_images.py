"""Explain a folder of images: top-k predictions and integrated gradients per image.

`run_explain_images(config, images, workdir)` decodes every image of a folder
(recursively), a glob or a file (see :mod:`fmi_jax.data.images` for which files count,
how grayscale / palette / alpha become RGB, and the torchvision ImageNet preprocessing),
classifies them in batches of `config.batch_size` with `config.model` (torchvision
weights from `config.weights`, or random ones with a warning when it is empty), and
explains the top-1 class of each with integrated gradients. It writes under `workdir`:

  predictions.json    per image: file, figure, top-k classes / labels / probabilities,
                      IG target, completeness gap (`ig_delta` = sum of the map minus
                      (f_t(x) - f_t(baseline)), in logits, and `ig_relative_delta`, its
                      size relative to |f_t(x) - f_t(baseline)|), seconds; and the run's
                      model, weights, IG settings and compile seconds
  attributions.npz    files, pixels (N, crop, crop, 3) uint8 (the un-normalised crops),
                      attributions (N, crop, crop, 3) float32 in normalised input space,
                      top_k_classes, top_k_probs, ig_target, ig_delta
  figures/<name>.png  per image: input, top-k bars, IG positive overlay, IG all-sign
                      map (`<name>` is the path below the folder without its suffix,
                      '/' replaced by '__'; '_<ext>' is appended where two files would
                      share a name, ignoring case, e.g. cat.jpg and Cat.png; a name
                      over 180 bytes is cut and ends in a hash of the path)
  summary.png         all images (image, all-sign IG, top-1 label and probability);
                      summary_001.png, summary_002.png, ... when there are more than
                      `config.summary.per_page`
  skipped.json        the files that are not readable images, with the reason
  config.json, inputs.json   the config and the input files this folder belongs to
                      (absolute paths, so 'photos/' and './photos' are one input,
                      and each file's SHA-256: a photo replaced under its name is
                      refused like a changed list of files); the weights file is an
                      input too, known by its SHA-256 wherever it lies, so other
                      weights under the same name are refused, even halfway through
                      a run, and the same file by another path is accepted

What this study writes is never an input: a workdir inside the photo folder (or an
earlier run's, found by its inputs.json and config.json) does not explain its
figures; other files in it still count.

Integrated gradients: `config.ig.steps` Gauss-Legendre nodes (by default) along the
straight path from the baseline to the input, evaluated `config.ig.batch_size`
(image, step) pairs at a time, so memory does not grow with the number of steps (300,
1000, ... run in the memory of one chunk). Baseline: `config.ig.baseline = 'black'`
(default) is the black image, pixel value 0 before normalisation, i.e. -mean/std in the
model's input space, as in the IG paper; 'zeros' is zero in the normalised space, i.e.
the mean colour. Attributions are in the normalised input space; figures sum them over
the channels.

Seconds per image are a batch's prediction + IG time (excluding compilation, which is
done ahead of time per batch shape and reported as `compile_seconds`) divided by the
images in the batch.

Re-running with the same config and the same input files reuses the results and only
draws missing figures; a different config or a different set of files for the same
workdir is an error (choose another `--workdir`), so results are never overwritten.
An interrupted run goes on from the batch it was in: each finished batch is saved
under `batches/` until attributions.npz and predictions.json hold them all.
The model code is pure JAX under `jit`: the same run works on CPU, GPU and TPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fmi_jax import attribution, models, plotting, runs
from fmi_jax.data import images as images_lib
from fmi_jax.data.errors import DataError

__all__ = ["ExplainImagesResult", "run_explain_images"]

BASELINES = ("black", "zeros")


@dataclasses.dataclass
class ExplainImagesResult:
    out_dir: Path
    predictions: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    # Figures drawn by this call (figures already on disk are not redrawn): per-image
    # figures by file name in predictions.json, and the summary pages.
    figures: dict[str, plotting.SavedFigure]
    summary: list[plotting.SavedFigure]
    reused: bool


def _absolute(path: str | Path) -> str:
    """``path`` absolute and normalised ('photos/', './photos' and '/home/me/photos' are
    one folder), without resolving symbolic links; a glob stays a glob."""
    return os.path.abspath(path)


def _absolute_inputs(record: dict[str, Any]) -> dict[str, Any]:
    """``{"images": spec, "files": files, "sha256": digests, "weights": ...}`` with every
    path :func:`_absolute` (no digests in a record written without them, no weights in
    one written before the weights were recorded)."""
    spec = record.get("images")
    inputs = {
        "images": [_absolute(s) for s in spec]
        if isinstance(spec, (list, tuple))
        else _absolute(spec),
        "files": [_absolute(f) for f in record.get("files") or []],
        "sha256": list(record.get("sha256") or []),
    }
    if "weights" in record:
        inputs["weights"] = record["weights"]
    return inputs


def _weights(config: Any) -> dict[str, str | None] | None:
    """``{"file": absolute path, "sha256": digest}`` of `config.weights`, None for
    random weights: the weights are compared by their contents, not their name."""
    weights = str(config.weights or "")
    return {"file": _absolute(weights), "sha256": _digest(Path(weights))} if weights else None


def _weights_digest(record: dict[str, str | None] | None) -> str | None:
    return None if record is None else record["sha256"]


def _digest(file: Path) -> str | None:
    """The file's SHA-256, read in 1 MiB blocks; None for a file that cannot be read
    (the image loader skips it, with its reason in skipped.json)."""
    digest = hashlib.sha256()
    try:
        with open(file, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _claim(config: Any, spec: Any, files: Sequence[Path], out: Path) -> None:
    """Claims `out` for this config and these input files, their contents included
    (never another run's; see fmi_jax/runs.py): both are checked before either is
    recorded. A file whose contents changed under the same name since the run finished
    is refused like a changed list of files, by the SHA-256 digests recorded beside the
    paths, unless the run skipped it as no readable image and it still is none. So are
    other weights, under any name, once any result exists: every batch depends on them."""
    inputs = _absolute_inputs({"images": spec, "files": files, "weights": _weights(config)})
    inputs["sha256"] = [_digest(f) for f in files]
    records = {
        "config.json": (config, "another config"),
        "inputs.json": (inputs, "other input files"),
    }
    # Finished batches of an interrupted run are results of the recorded config too.
    has_results = (out / "predictions.json").exists() or any((out / _BATCHES).glob("*.npz"))
    hint = "pass another --workdir (or move that folder away)"
    saved = runs.read_json(out / "inputs.json", rewritable=True)
    earlier = _absolute_inputs(saved) if isinstance(saved, dict) else None
    if earlier is not None and all(earlier[k] == inputs[k] for k in ("images", "files")):
        if (
            has_results
            and "weights" in earlier
            and _weights_digest(earlier["weights"]) != _weights_digest(inputs["weights"])
        ):
            before, now = (
                "random weights" if w is None else repr(w["file"])
                for w in (earlier["weights"], inputs["weights"])
            )
            what = (
                f"{now} changed since this folder's results were computed with it"
                if now == before
                else f"this folder's results were computed with {before}, and {now} "
                "holds other weights"
            )
            raise runs.RunConfigError(
                f"config.weights: {what} (SHA-256 differs); {hint}. Nothing was overwritten.",
                changed="weights.sha256",
            )
        changed = [
            f
            for f, old, new in zip(inputs["files"], earlier["sha256"], inputs["sha256"])
            if old != new
        ]
        # A finished run's results would be replaced: refused. The finished batches of
        # an interrupted run record their files' sizes and modification times, and a
        # changed one is computed again. (A record written before digests were kept has
        # none to compare: its files are taken as they are now.)
        if changed and (out / "predictions.json").exists():
            # A file the run skipped as no readable image that is still none (notes
            # beside the photos): the results hold nothing of it.
            skipped = {_absolute(s["file"]) for s in runs.read_json(out / "skipped.json") or []}
            changed = [f for f in changed if f not in skipped or _readable(f, config)]
        if changed and (out / "predictions.json").exists():
            raise runs.RunConfigError(
                f"{len(changed)} input file(s) changed since this folder's results were "
                f"computed from them, e.g. {changed[0]!r}; {hint}. Nothing was overwritten.",
                changed="sha256",
            )
    # ig.batch_size only bounds memory: lowering it after running out resumes the run.
    # The weights are compared by their SHA-256 in inputs.json, not by how their path
    # is spelt (a record written before the digest was kept compares the path).
    by_digest = ("weights",) if earlier is None or "weights" in earlier else ()
    free = {"config.json": ("ig.batch_size", *by_digest), "inputs.json": ()}
    runs.check(
        out,
        config,
        has_results=has_results,
        name="config.json",
        what="another config",
        hint=hint,
        free=free["config.json"],
    )
    if earlier is not None and all(earlier[k] == inputs[k] for k in ("images", "files")):
        if saved != inputs:
            # The same inputs, recorded relative to this folder or without digests (or
            # changed before any result): recorded again, absolute and with digests.
            runs.write_json_atomic(out / "inputs.json", inputs, sort_keys=False)
    for claim in (runs.check, runs.claim):
        for name, (record, what) in records.items():
            claim(
                out,
                record,
                has_results=has_results,
                name=name,
                what=what,
                hint=hint,
                free=free[name],
            )


def _readable(file: str, config: Any) -> bool:
    """Whether the study would read `file` as an image now."""
    loaded = images_lib.load_images(
        [file], resize=int(config.resize), crop=int(config.crop), alpha=config.alpha
    )
    return bool(loaded.files)


def _root(spec: Any, files: Sequence[Path]) -> Path:
    if isinstance(spec, (str, Path)) and Path(spec).is_dir():
        return Path(spec)
    if len(files) == 1:
        return files[0].parent
    return Path(os.path.commonpath([str(f.absolute()) for f in files]))


def _relative(file: Path, root: Path) -> str:
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return file.absolute().relative_to(root).as_posix()


def figure_names(relative: Sequence[str]) -> list[str]:
    """'sub/cat.jpg' -> 'sub__cat'; '_jpg' etc. appended where names would collide; a
    name too long for a file system is cut and ends in a hash of the relative path.
    Names are distinct ignoring case ('Cat.jpg' and 'cat.jpg' get two figures on the
    case-insensitive disks of macOS and Windows too)."""
    stems = [r.rsplit(".", 1)[0] if "." in r.rsplit("/", 1)[-1] else r for r in relative]
    stems = [s.replace("/", "__") for s in stems]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s.casefold()] = counts.get(s.casefold(), 0) + 1
    names, used = [], set()
    for r, s in zip(relative, stems):
        name = s
        if counts[s.casefold()] > 1 and "." in r.rsplit("/", 1)[-1]:
            name = f"{s}_{r.rsplit('.', 1)[1]}"
        base, i = name, 1
        while name.casefold() in used:
            i += 1
            name = f"{base}_{i}"
        if len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES:
            digest = hashlib.sha1(r.encode("utf-8", "surrogateescape")).hexdigest()[:10]
            name = f"{_shorten(name, _MAX_NAME_BYTES - 11)}_{digest}"
        used.add(name.casefold())
        names.append(name)
    return names


# File systems allow 255 bytes per name; '.png' and the temporary suffix of an atomic
# write need some of them.
_MAX_NAME_BYTES = 180


def _shorten(name: str, size: int) -> str:
    """The longest prefix of ``name`` that fits in ``size`` bytes."""
    while len(name.encode("utf-8", "surrogateescape")) > size:
        name = name[:-1]
    return name


def _variables(config: Any, model: Any, image_shape: tuple[int, int, int]) -> Any:
    weights = str(config.weights or "")
    if weights:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"config.weights: no such file {weights!r}")
        from fmi_jax.models import torchvision_import  # noqa: PLC0415  (optional, heavy)

        logging.info("loading %s", weights)
        return torchvision_import.load_weights(weights, model, image_shape)
    logging.warning(
        "\n%s\nconfig.weights is empty: the model has RANDOM weights (seed %d). Its "
        "predictions and attributions mean nothing; pass --config.weights=<file.pth>.\n%s",
        "!" * 78,
        int(config.seed),
        "!" * 78,
    )
    x = jnp.zeros((1, *image_shape))
    return models.init_variables(model, jax.random.key(int(config.seed)), x)


def _class_names(setting: Any, num_classes: int) -> list[str]:
    names: Sequence[str] | None
    if isinstance(setting, str):
        if setting != "imagenet":
            raise ValueError(f"class_names must be 'imagenet' or a tuple, got {setting!r}")
        try:
            from fmi_jax.data.imagenet import IMAGENET_CLASSES  # noqa: PLC0415

            names = list(IMAGENET_CLASSES)
        except ImportError as error:
            logging.warning("no ImageNet class names (%s)", error)
            names = None
    else:
        names = [str(n) for n in setting]
    if names is None or len(names) != num_classes:
        if names is not None:
            logging.warning(
                "%d class names for a model with %d classes: using 'class <i>'",
                len(names),
                num_classes,
            )
        names = [f"class {i}" for i in range(num_classes)]
    return list(names)


def _baseline(ig: Any, mean: np.ndarray, std: np.ndarray) -> np.ndarray | None:
    if ig.baseline == "black":
        return (0.0 - mean) / std
    if ig.baseline == "zeros":
        return None
    raise ValueError(f"ig.baseline must be one of {BASELINES}, got {ig.baseline!r}")


class _Explainer:
    """Top-k and IG for one batch, compiled ahead of time once per batch shape."""

    def __init__(self, config: Any, model: Any, variables: Any, baseline: Any):
        top_k, ig = int(config.top_k), config.ig

        def predict(variables, x):
            probs = jax.nn.softmax(model.apply(variables, x), axis=-1)
            return jax.lax.top_k(probs, top_k)

        def explain(variables, x, target):
            return attribution.integrated_gradients(
                lambda z: model.apply(variables, z),
                x,
                target,
                baseline=baseline,
                steps=int(ig.steps),
                rule=str(ig.rule),
                batch_size=int(ig.batch_size),
                return_delta=True,
            )

        self._functions = {"predict": jax.jit(predict), "explain": jax.jit(explain)}
        self._compiled: dict[tuple[str, tuple[int, ...]], Any] = {}
        self.variables = variables
        self.compile_seconds = 0.0

    def _get(self, name: str, *args: Any) -> Any:
        key = (name, args[1].shape)
        if key not in self._compiled:
            start = time.perf_counter()
            self._compiled[key] = self._functions[name].lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key]

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        x = jnp.asarray(x)
        target_spec = jax.ShapeDtypeStruct((x.shape[0],), jnp.int32)
        predict = self._get("predict", self.variables, x)
        explain = self._get("explain", self.variables, x, target_spec)
        start = time.perf_counter()
        probs, classes = predict(self.variables, x)
        maps, delta = explain(self.variables, x, classes[:, 0].astype(jnp.int32))
        maps, delta = jax.block_until_ready((maps, delta))
        seconds = time.perf_counter() - start
        return np.asarray(probs), np.asarray(classes), np.asarray(maps), np.asarray(delta), seconds


def _check(config: Any) -> None:
    if config.ig.baseline not in BASELINES:
        raise ValueError(f"ig.baseline must be one of {BASELINES}, got {config.ig.baseline!r}")
    for key in ("batch_size", "top_k", "crop", "resize"):
        if int(config[key]) < 1:
            raise ValueError(f"config.{key} must be >= 1, got {config[key]}")
    if int(config.ig.steps) < 1 or int(config.ig.batch_size) < 1:
        raise ValueError("config.ig.steps and config.ig.batch_size must be >= 1")
    try:
        attribution.quadrature(str(config.ig.rule), int(config.ig.steps))
    except ValueError as error:
        raise ValueError(f"config.ig.rule: {error}") from None
    num_classes = config.model.get("num_classes")
    if num_classes is not None and int(config.top_k) > int(num_classes):
        raise ValueError(
            f"config.top_k={config.top_k} exceeds the model's {num_classes} classes "
            "(config.model.num_classes)"
        )
    if int(config.crop) > int(config.resize):
        raise ValueError(
            f"config.crop ({config.crop}) must be <= config.resize ({config.resize}): the "
            "crop is cut from the image resized to config.resize on its shorter side"
        )
    images_lib.check_mean_std(config.mean, config.std)
    if config.alpha not in images_lib.ALPHA_MODES:
        raise ValueError(
            f"config.alpha must be one of {images_lib.ALPHA_MODES}, got {config.alpha!r}"
        )
    if int(config.summary.per_page) < 1:
        raise ValueError("config.summary.per_page must be >= 1")
    weights = str(config.weights or "")
    if weights and not Path(weights).is_file():
        raise FileNotFoundError(f"config.weights: no such file {weights!r}")


def run_explain_images(
    config: ml_collections.ConfigDict,
    images: str | Path | Sequence[str | Path],
    workdir: str | Path,
) -> ExplainImagesResult:
    """Predictions, integrated gradients and figures for every image of `images` (a
    folder, searched recursively; a glob; a file; or a list of those), written under
    `workdir` (see the module docstring).

    Raises:
      FileNotFoundError: `images` names no files (the message names the path), or only
        this study's outputs, or `config.weights` does not exist.
      DataError: none of the files is a readable image.
      ValueError: a bad config value (named), or `workdir` holds results of another
        config or other input files.
    """
    _check(config)
    out = Path(workdir)
    files = _inputs(images, out)
    _claim(config, images, files, out)
    root = _root(images, files)
    npz_path, json_path = out / "attributions.npz", out / "predictions.json"
    # predictions.json is written last: with it, the results are complete.
    saved_json = runs.read_json(json_path, rewritable=True) if npz_path.exists() else None
    reused = saved_json is not None
    if reused:
        logging.info("%s exists: reusing the results, drawing missing figures only", json_path)
        saved = np.load(npz_path)
        pixels, maps = saved["pixels"], saved["attributions"]
        predictions = saved_json["images"]
        skipped = runs.read_json(out / "skipped.json") or []
    else:
        pixels, maps, predictions, skipped = _compute(config, files, root, out)
    figures = _image_figures(out, pixels, maps, predictions)
    summary = _summary(config, out, pixels, maps, predictions)
    logging.info("explained %d image(s) (%d skipped) into %s", len(predictions), len(skipped), out)
    return ExplainImagesResult(out, predictions, skipped, figures, summary, reused)


_OUTPUT_FILES = frozenset(
    ("predictions.json", "attributions.npz", "skipped.json", "config.json", "inputs.json")
)


def _is_output(relative: tuple[str, ...]) -> bool:
    """Whether a path relative to a run folder is one this study writes there."""
    if len(relative) == 1:
        name = relative[0]
        return name in _OUTPUT_FILES or (name.startswith("summary") and name.endswith(".png"))
    return relative[0] in ("figures", _BATCHES)


def _is_run(folder: Path) -> bool:
    return (folder / "inputs.json").is_file() and (folder / "config.json").is_file()


def _check_fresh(out: Path) -> None:
    """Refuses a workdir that is not yet a run of this study but holds files where the
    study writes its figures, summaries and results (a photo folder with a ``figures/``
    subfolder given as the workdir): they would be overwritten, or taken for outputs
    and left out of the inputs. The records ``config.json`` and ``inputs.json`` are
    :func:`_claim`'s to check."""
    if not out.is_dir() or _is_run(out):
        return
    results = [out / name for name in sorted(_OUTPUT_FILES - {"config.json", "inputs.json"})]
    taken = [p for p in results if p.exists()] + sorted(out.glob("summary*.png"))
    for folder in ("figures", _BATCHES):
        taken += sorted(p for p in (out / folder).rglob("*") if p.is_file())
    if taken:
        raise ValueError(
            f"the workdir {str(out)!r} already holds {str(taken[0])!r}, where this study "
            "writes its outputs: pass another --workdir"
        )


def _inputs(images: Any, out: Path) -> list[Path]:
    """The files of ``images``, less the outputs of this study: the figures, summaries
    and records it writes into ``out`` and into any earlier run folder of it at or
    below the folder searched (a workdir inside the photo folder holds figures, which
    are not photos to explain). Other files in those folders stay inputs."""
    _check_fresh(Path(out))
    files = images_lib.list_image_files(images)
    root = Path(os.path.abspath(_root(images, files)))
    out = Path(os.path.abspath(out))
    run_folders: dict[Path, bool] = {}

    def is_run(folder: Path) -> bool:
        if folder not in run_folders:
            run_folders[folder] = folder == out or _is_run(folder)
        return run_folders[folder]

    def output(file: Path) -> bool:
        path = Path(os.path.abspath(file))
        if path.is_relative_to(out) and _is_output(path.relative_to(out).parts):
            return True
        for folder in path.parents:
            if not folder.is_relative_to(root):
                return False
            if is_run(folder) and _is_output(path.relative_to(folder).parts):
                return True
        return False

    kept = [f for f in files if not output(f)]
    if not kept:
        raise FileNotFoundError(
            f"{images!r} holds no files besides the outputs of explain_images runs"
        )
    if len(kept) < len(files):
        logging.info("left out %d file(s) written by explain_images runs", len(files) - len(kept))
    return kept


# Each batch's results, saved as it finishes, so that an interrupted run goes on from
# the batch it was in; removed once attributions.npz and predictions.json hold them all.
_BATCHES = "batches"


@dataclasses.dataclass
class _Batch:
    files: list[Path]
    skipped: list[tuple[Path, str]]
    pixels: np.ndarray
    probs: np.ndarray | None = None
    classes: np.ndarray | None = None
    maps: np.ndarray | None = None
    deltas: np.ndarray | None = None
    seconds: list[float] = dataclasses.field(default_factory=list)


def _stamps(files: Sequence[Path]) -> np.ndarray:
    """Size and modification time (ns) of each file, ``(len(files), 2)`` int64; -1 for
    a file that is gone. A saved batch is reused only for files with the same stamps."""
    stamps = np.full((len(files), 2), -1, np.int64)
    for i, file in enumerate(files):
        try:
            status = os.stat(file)
        except OSError:
            continue
        stamps[i] = status.st_size, status.st_mtime_ns
    return stamps


def _save_batch(path: Path, batch: _Batch) -> None:
    skipped = [f for f, _ in batch.skipped]
    arrays = {
        "files": np.asarray([_absolute(f) for f in batch.files], dtype=str),
        "skipped_files": np.asarray([_absolute(f) for f in skipped], dtype=str),
        "skipped_reasons": np.asarray([r for _, r in batch.skipped], dtype=str),
        "stamps": _stamps([*batch.files, *skipped]),
        "pixels": batch.pixels,
        "seconds": np.asarray(batch.seconds, np.float64),
    }
    if batch.files:
        arrays.update(
            probs=batch.probs, classes=batch.classes, maps=batch.maps, deltas=batch.deltas
        )
    runs.save_npz_atomic(path, **arrays)


def _load_batch(path: Path, files: Sequence[Path]) -> _Batch | None:
    """The saved results of the batch of ``files``, or None when there are none, or
    they belong to other files, or a file changed since (size or modification time)."""
    if not path.is_file():
        return None
    by_name = {_absolute(f): f for f in files}
    with np.load(path) as saved:
        names = list(saved["files"]) + list(saved["skipped_files"])
        if sorted(names) != sorted(by_name):
            return None
        if not np.array_equal(saved["stamps"], _stamps([by_name[n] for n in names])):
            return None
        batch = _Batch(
            [by_name[f] for f in saved["files"]],
            [
                (by_name[f], str(r))
                for f, r in zip(saved["skipped_files"], saved["skipped_reasons"])
            ],
            saved["pixels"],
            seconds=[float(s) for s in saved["seconds"]],
        )
        if batch.files:
            batch.probs, batch.classes = saved["probs"], saved["classes"]
            batch.maps, batch.deltas = saved["maps"], saved["deltas"]
    return batch


def _remove(saved_batches: Sequence[Path]) -> None:
    """Deletes the batch files this study wrote, and their folder when that leaves it
    empty (nothing else in it is touched)."""
    for path in saved_batches:
        path.unlink(missing_ok=True)
    if saved_batches:
        try:
            saved_batches[0].parent.rmdir()
        except OSError:  # not empty, or never made
            pass


def _compute(config: Any, files: Sequence[Path], root: Path, out: Path):
    crop = int(config.crop)
    image_shape = (crop, crop, 3)
    mean, std = images_lib.check_mean_std(config.mean, config.std)
    model_kwargs = {k: v for k, v in runs.plain(config.model).items() if k != "name"}
    model_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in model_kwargs.items()}
    model = models.get_model(config.model.name, **model_kwargs)
    variables = _variables(config, model, image_shape)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x), variables, jnp.zeros((1, *image_shape)))
    num_classes = int(logits.shape[-1])
    if int(config.top_k) > num_classes:
        raise ValueError(f"top_k={config.top_k} exceeds the model's {num_classes} classes")
    class_names = _class_names(config.class_names, num_classes)
    explainer = _Explainer(config, model, variables, _baseline(config.ig, mean, std))
    logging.info(
        "explaining %d file(s) with %s, IG %d steps (%s, %s baseline), batches of %d",
        len(files),
        config.model.name,
        int(config.ig.steps),
        config.ig.rule,
        config.ig.baseline,
        int(config.batch_size),
    )

    batch_size = int(config.batch_size)
    good, skipped, pixels, maps, seconds = [], [], [], [], []
    probs, classes, deltas = [], [], []
    resumed = 0
    saved_batches = [
        out / _BATCHES / f"{i:06d}.npz" for i in range(math.ceil(len(files) / batch_size))
    ]
    for start, saved_batch in zip(range(0, len(files), batch_size), saved_batches):
        part = files[start : start + batch_size]
        done = _load_batch(saved_batch, part)
        if done is None:
            batch = images_lib.load_images(
                part,
                resize=int(config.resize),
                crop=crop,
                mean=mean,
                std=std,
                alpha=str(config.alpha),
            )
            done = _Batch(batch.files, batch.skipped, batch.pixels)
            if batch.files:
                done.probs, done.classes, m, done.deltas, s = explainer(batch.images)
                if not np.isfinite(m).all():
                    finite = np.isfinite(m).all((1, 2, 3))
                    bad = [str(f) for f, ok in zip(batch.files, finite) if not ok]
                    raise FloatingPointError(f"integrated gradients gave NaN or Inf for {bad}")
                done.maps, done.seconds = m, [s / len(batch.files)] * len(batch.files)
            _save_batch(saved_batch, done)
        else:
            resumed += len(part)
        skipped.extend(done.skipped)
        if done.files:
            good.extend(done.files)
            pixels.append(done.pixels)
            maps.append(done.maps)
            probs.append(done.probs)
            classes.append(done.classes)
            deltas.append(done.deltas)
            seconds.extend(done.seconds)
        logging.info("%d / %d files", min(start + batch_size, len(files)), len(files))
    if resumed:
        logging.info("%d file(s) came from batches an interrupted run had finished", resumed)

    skipped_json = [{"file": str(f), "reason": r} for f, r in skipped]
    runs.write_json_atomic(out / "skipped.json", skipped_json, sort_keys=False)
    if skipped:
        logging.warning(
            "skipped %d file(s) that are not readable images:\n%s",
            len(skipped),
            "\n".join(f"  {f}: {r}" for f, r in skipped),
        )
    if not good:
        _remove(saved_batches)  # nothing to resume: a rerun reads the files again
        raise DataError(
            f"none of the {len(files)} file(s) is a readable image: "
            f"{out / 'skipped.json'} lists each with the decoder's reason"
        )

    pixels, maps = np.concatenate(pixels), np.concatenate(maps).astype(np.float32)
    probs, classes, deltas = np.concatenate(probs), np.concatenate(classes), np.concatenate(deltas)
    relative = [_relative(f, root) for f in good]
    names = figure_names(relative)
    logit_difference = maps.reshape(len(maps), -1).sum(1) - deltas
    predictions = []
    for i, file in enumerate(good):
        predictions.append(
            {
                "file": relative[i],
                "path": str(file),
                "figure": f"figures/{names[i]}.png",
                "top_k": [
                    {"class": int(c), "label": class_names[int(c)], "prob": float(p)}
                    for c, p in zip(classes[i], probs[i])
                ],
                "ig_target": int(classes[i, 0]),
                "ig_delta": float(deltas[i]),
                "ig_relative_delta": float(
                    abs(deltas[i]) / max(abs(float(logit_difference[i])), 1e-12)
                ),
                "seconds": float(seconds[i]),
            }
        )
    runs.save_npz_atomic(
        out / "attributions.npz",
        files=np.asarray([p["file"] for p in predictions]),
        pixels=pixels,
        attributions=maps,
        top_k_classes=classes.astype(np.int32),
        top_k_probs=probs.astype(np.float32),
        ig_target=classes[:, 0].astype(np.int32),
        ig_delta=deltas.astype(np.float32),
    )
    summary = {
        "model": runs.plain(config.model),
        "weights": _weights(config),
        "ig": runs.plain(config.ig),
        "backend": jax.default_backend(),
        "compile_seconds": explainer.compile_seconds,
        "images": predictions,
    }
    runs.write_json_atomic(out / "predictions.json", summary, sort_keys=False)
    _remove(saved_batches)  # all of it is in attributions.npz and predictions.json
    logging.info(
        "IG completeness gap: mean |delta| %.3g, max %.3g (logits)",
        float(np.abs(deltas).mean()),
        float(np.abs(deltas).max()),
    )
    return pixels, maps, predictions, skipped_json


def _shown(name: str) -> str:
    """A file name as text a figure can draw: bytes that are not UTF-8 (kept by Python
    as surrogate escapes) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _label(prediction: dict[str, Any]) -> str:
    best = prediction["top_k"][0]
    return f"{best['label']} ({best['prob']:.2f})"


def _image_figures(out, pixels, maps, predictions) -> dict[str, plotting.SavedFigure]:
    drawn = {}
    for i, prediction in enumerate(predictions):
        path = out / prediction["figure"]
        if path.exists():
            continue
        fig = plotting.image_explanation(
            pixels[i] / 255.0,
            maps[i],
            [t["label"] for t in prediction["top_k"]],
            [t["prob"] for t in prediction["top_k"]],
            path,
            title=(
                f"{_shown(prediction['file'])}: {_label(prediction)}; IG of class "
                f"{prediction['ig_target']}, completeness gap {prediction['ig_delta']:.3g}"
            ),
        )
        drawn[prediction["file"]] = plotting.SavedFigure(path, plotting.panels(fig))
    return drawn


def _summary(config, out, pixels, maps, predictions) -> list[plotting.SavedFigure]:
    per_page = int(config.summary.per_page)
    pages = math.ceil(len(predictions) / per_page)
    drawn = []
    for page in range(pages):
        path = out / ("summary.png" if pages == 1 else f"summary_{page + 1:03d}.png")
        if path.exists():
            continue
        part = slice(page * per_page, (page + 1) * per_page)
        fig = plotting.summary_sheet(
            pixels[part] / 255.0,
            maps[part],
            [f"{_shown(p['file'])}: {_label(p)}" for p in predictions[part]],
            path,
            columns=int(config.summary.columns),
            title=f"integrated gradients of the top-1 class (page {page + 1} of {pages})",
        )
        drawn.append(plotting.SavedFigure(path, plotting.panels(fig)))
    return drawn
