"""The front door: :func:`load` and :func:`load_splits`, and where data is looked for.

Synthetic datasets are generated. For the file-based datasets (``mnist``,
``fashion_mnist``, ``cifar10``) the sources are tried in this order, each
attempt logged with ``absl.logging.info``:

1. ``data_dir``, the folder given by the caller (``--config.data.data_dir``),
   or its subfolder ``<name>/``, holding the original files (where both hold
   some, the one that holds every split is read, so the splits come from one
   copy; each holding a split the other lacks is an error). If it is given,
   it is the only folder tried: missing or corrupt files there raise
   :class:`~fmi_jax.data.errors.DataError` at once rather than silently
   loading a different copy.
2. Well-known local folders: ``$FMI_DATA_DIR/<name>/`` and, for Fashion-MNIST,
   the folder of Debian's ``dataset-fashion-mnist`` package, found with
   ``dpkg -L`` (never a hard-coded path). A missing or empty folder is
   skipped; a folder with corrupt files is an error, and so is a
   ``$FMI_DATA_DIR/<name>/`` that holds files but not the split asked for (a
   copy of one's own, incomplete or misnamed, never mixed with another).
3. tensorflow-datasets (:mod:`fmi_jax.data.tfds_source`): a prepared copy in
   ``tfds_data_dir``, or a fresh download if ``download`` is true and
   TensorFlow and the network are there.

If none has the data, :class:`~fmi_jax.data.errors.DataNotFoundError` says what
each attempt found and every way to get the data.

Original file names: MNIST and Fashion-MNIST ``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
``t10k-labels-idx1-ubyte.gz`` (also accepted without ``.gz``); CIFAR-10
``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/``.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from absl import logging

from fmi_jax.data import cifar, idx, splits, synthetic, tfds_source
from fmi_jax.data.dataset import Dataset
from fmi_jax.data.errors import DataError, DataNotFoundError, Unavailable
from fmi_jax.data.registry import LOADABLE_SPLITS, DatasetSpec, get_spec
from fmi_jax.data.validation import validate_arrays

__all__ = [
    "DPKG_TIMEOUT_S",
    "FMI_DATA_DIR_ENV",
    "find_debian_folder",
    "folder_in_dpkg_listing",
    "load",
    "load_splits",
]

#: Environment variable naming a folder with one subfolder per dataset.
FMI_DATA_DIR_ENV = "FMI_DATA_DIR"
#: Seconds to wait for ``dpkg -L``.
DPKG_TIMEOUT_S = 5.0

_SYNTHETIC_KWARGS = ("num_train", "num_test", "seed")
_Found = Path | tuple[Path, Path]  # what a format's finder hands to its reader


def load(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    tfds_data_dir: str | None = None,
    download: bool = True,
    **synthetic_kwargs: int,
) -> Dataset:
    """Loads one split of a dataset as uint8 NHWC images and int32 labels.

    Args:
        name: A key of :data:`~fmi_jax.data.registry.DATASETS`, e.g.
            ``'fashion_mnist'``, ``'mnist'``, ``'cifar10'``, ``'synthetic'``.
        split: ``'train'`` or ``'test'`` (see :func:`load_splits` for
            ``'validation'``).
        data_dir: Folder (or its ``<name>/`` subfolder) with the original
            files. If given, no other source is tried.
        tfds_data_dir: tensorflow-datasets data folder; ``None`` for tfds's
            default.
        download: Whether tensorflow-datasets may download and prepare the
            data when no local copy exists.
        **synthetic_kwargs: For synthetic datasets only: ``num_train``,
            ``num_test``, ``seed``.

    Returns:
        The split as a :class:`Dataset`.

    Raises:
        DataError: Unknown name or split, bad arguments, or corrupt data.
        DataNotFoundError: No source has the data.
    """
    spec = get_spec(name)
    if split not in LOADABLE_SPLITS:
        raise DataError(
            f"Unknown split {split!r} for load(); use one of {LOADABLE_SPLITS}. For a validation "
            "split use load_splits(..., validation_size=N), which holds it out of 'train'."
        )
    if spec.file_format == "synthetic":
        return _load_synthetic(spec, split, data_dir, tfds_data_dir, synthetic_kwargs)
    if synthetic_kwargs:
        raise DataError(
            f"{sorted(synthetic_kwargs)} only apply to synthetic datasets, not {name!r}; "
            "use train_limit/test_limit of load_splits() to shrink real datasets."
        )
    return _resolve(spec, split, data_dir, tfds_data_dir, download)


def load_splits(
    name: str,
    *,
    validation_size: int,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    tfds_data_dir: str | None = None,
    download: bool = True,
    train_limit: int | None = None,
    test_limit: int | None = None,
    **synthetic_kwargs: int,
) -> dict[str, Dataset]:
    """Loads train, validation and test sets.

    The validation set is a stratified holdout (class proportions kept) of
    ``validation_size`` training examples, deterministic in ``seed``
    (:func:`~fmi_jax.data.splits.train_validation_split`). Afterwards
    ``train_limit`` and ``test_limit`` shrink the train and test sets to stratified
    subsets (for smoke runs; a class too rare for its share may get none), also
    deterministic in ``seed``.

    Args:
        name: Dataset name, as for :func:`load`.
        validation_size: Examples held out of train; ``0`` for an empty
            validation set.
        seed: Seed of the holdout and the limits; for synthetic datasets also
            the seed of the generator.
        data_dir: As for :func:`load`.
        tfds_data_dir: As for :func:`load`.
        download: As for :func:`load`.
        train_limit: At most this many training examples, or ``None``.
        test_limit: At most this many test examples, or ``None``.
        **synthetic_kwargs: ``num_train``, ``num_test`` for synthetic datasets.

    Returns:
        ``{'train': ..., 'validation': ..., 'test': ...}``.

    Raises:
        DataError: As :func:`load`, or if ``validation_size`` is negative or
            not smaller than the training set, a limit is not positive, or ``seed``
            is not an int >= 0.
        DataNotFoundError: As :func:`load`.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be an int >= 0 (of the holdout and the limits), got {seed!r}")
    if get_spec(name).file_format == "synthetic":
        synthetic_kwargs = {**synthetic_kwargs, "seed": seed}
    options = dict(
        data_dir=data_dir, tfds_data_dir=tfds_data_dir, download=download, **synthetic_kwargs
    )
    full_train = load(name, "train", **options)
    test = load(name, "test", **options)
    train, validation = splits.train_validation_split(full_train, validation_size, seed)
    return {
        "train": splits.limit(train, train_limit, seed),
        "validation": validation,
        "test": splits.limit(test, test_limit, seed),
    }


@functools.cache
def find_debian_folder(package: str, file_names: tuple[str, ...]) -> Path | Unavailable:
    """Finds the folder where Debian package ``package`` installed ``file_names``.

    Runs ``dpkg -L package`` once per process (the answer is cached; call
    ``find_debian_folder.cache_clear()`` to ask again).

    Args:
        package: Debian package name, e.g. ``'dataset-fashion-mnist'``.
        file_names: File names to look for in the package's file list.

    Returns:
        The folder holding the first listed match, or :class:`Unavailable`
        saying why not (no dpkg, package not installed, no such file).
    """
    command = ["dpkg", "-L", package]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=DPKG_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        return Unavailable("dpkg is not available (not a Debian-based system)")
    except subprocess.TimeoutExpired:
        return Unavailable(f"`{' '.join(command)}` did not answer within {DPKG_TIMEOUT_S:.0f} s")
    except OSError as error:
        return Unavailable(f"`{' '.join(command)}` could not run ({error})")
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[0]
        return Unavailable(f"package {package} is not installed ({detail})")
    folder = folder_in_dpkg_listing(result.stdout, file_names)
    if folder is None:
        return Unavailable(f"`{' '.join(command)}` lists none of {', '.join(file_names)}")
    return folder


def folder_in_dpkg_listing(listing: str, file_names: tuple[str, ...]) -> Path | None:
    """Returns the folder of the first path in ``dpkg -L`` output named like ``file_names``.

    Names are matched with and without a ``.gz`` suffix.
    """
    wanted = set(file_names) | {name.removesuffix(".gz") for name in file_names}
    for line in listing.splitlines():
        path = PurePosixPath(line.strip())
        if path.name in wanted:
            return Path(path.parent)
    return None


def _load_synthetic(
    spec: DatasetSpec,
    split: str,
    data_dir: str | os.PathLike[str] | None,
    tfds_data_dir: str | None,
    kwargs: dict[str, int],
) -> Dataset:
    unknown = sorted(set(kwargs) - set(_SYNTHETIC_KWARGS))
    if unknown:
        raise DataError(
            f"Unknown argument(s) {unknown} for {spec.name!r}; it accepts {list(_SYNTHETIC_KWARGS)}."
        )
    if data_dir is not None or tfds_data_dir is not None:
        logging.warning(
            "%s is generated; ignoring data_dir=%s and tfds_data_dir=%s.",
            spec.name,
            data_dir,
            tfds_data_dir,
        )
    logging.info("Generating %s/%s with %s.", spec.name, split, kwargs or "default sizes")
    return synthetic.load_synthetic(spec, split, **kwargs)


def _resolve(
    spec: DatasetSpec,
    split: str,
    data_dir: str | os.PathLike[str] | None,
    tfds_data_dir: str | None,
    download: bool,
) -> Dataset:
    if data_dir is not None:
        return _load_given_dir(spec, split, Path(data_dir).expanduser())
    attempts = [("data_dir argument", "not given")]
    for label, folder in _well_known_folders(spec):
        found = folder if isinstance(folder, Unavailable) else _find(spec, split, folder)
        if isinstance(found, Unavailable) and label.startswith("$"):
            _refuse_partial_copy(spec, split, label, folder, found)
        if isinstance(found, Unavailable):
            logging.info("%s/%s: %s: %s.", spec.name, split, label, found.reason)
            attempts.append((label, found.reason))
            continue
        logging.info("%s/%s: loading from %s (%s).", spec.name, split, label, folder)
        return _read(spec, split, found)
    logging.info("%s/%s: trying tensorflow-datasets.", spec.name, split)
    result = tfds_source.load_tfds(spec, split, tfds_data_dir=tfds_data_dir, download=download)
    if isinstance(result, Dataset):
        return result
    logging.info("%s/%s: tensorflow-datasets: %s.", spec.name, split, result.reason)
    attempts.append(("tensorflow-datasets", result.reason))
    if download and spec.original_urls and not tfds_source.tensorflow_available():
        folder = tfds_source.download_originals(spec, tfds_data_dir=tfds_data_dir)
        found = folder if isinstance(folder, Unavailable) else _find(spec, split, folder)
        if not isinstance(found, Unavailable):
            logging.info(
                "%s/%s: loading the original files downloaded to %s.", spec.name, split, folder
            )
            return _read(spec, split, found)
        logging.info(
            "%s/%s: tfds download of the original files: %s.", spec.name, split, found.reason
        )
        attempts.append(("tensorflow-datasets download of the original files", found.reason))
    raise DataNotFoundError(_not_found_message(spec, split, attempts))


def _refuse_partial_copy(
    spec: DatasetSpec, split: str, label: str, folder: Any, found: Unavailable
) -> None:
    """A DataError for ``$FMI_DATA_DIR/<name>`` when it exists with files in it but not
    this split's: the user's own copy, incomplete or misnamed, which must not give way
    silently to another copy (Debian's, say) for this split alone. A missing or empty
    folder is skipped; ``$FMI_DATA_DIR`` or ``$FMI_DATA_DIR/<name>`` that is a file is
    refused."""
    root = Path(os.environ.get(FMI_DATA_DIR_ENV, "")).expanduser()
    if os.environ.get(FMI_DATA_DIR_ENV) and root.exists() and not root.is_dir():
        raise DataError(
            f"${FMI_DATA_DIR_ENV}={str(root)!r} is not a folder: point it at the folder "
            f"that holds one subfolder per dataset ({spec.name}/ for this one), or unset it"
        )
    if isinstance(folder, Path) and folder.exists() and not folder.is_dir():
        raise DataError(
            f"{label} ({folder}) is a file, not a folder: put the {spec.name} files in a "
            f"folder of that name, or move the file away to use the other sources"
        )
    if not isinstance(folder, Path) or not folder.is_dir():
        return
    if not any(not p.name.startswith(".") for p in folder.iterdir()):
        return
    raise DataError(
        f"{label} ({folder}) does not hold the {split!r} files of {spec.name} "
        f"({found.reason}); it holds: {_listing(folder)}. Put "
        f"{_files_phrase(spec, split)} there, or move the folder away to use the other "
        "sources for every split"
    )


def _load_given_dir(spec: DatasetSpec, split: str, data_dir: Path) -> Dataset:
    logging.info("%s/%s: looking in data_dir=%s.", spec.name, split, data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"data_dir={str(data_dir)!r} is not a folder. Pass the folder holding "
            f"{_files_phrase(spec, split)} (or leave data_dir unset to search the usual places)."
        )
    folders = (data_dir, data_dir / spec.name)
    found = {folder: _find(spec, split, folder) for folder in folders}
    holding = [f for f in folders if not isinstance(found[f], Unavailable)]
    if holding:
        # One copy: every split from the folder that holds them all, where one does.
        splits = {f: [s for s in spec.files if _has(spec, s, f)] for f in folders}
        complete = [f for f in holding if len(splits[f]) == len(spec.files)]
        if not complete:
            other = next((f for f in folders if f not in holding and splits[f]), None)
            if other is not None:
                raise DataError(
                    f"data_dir={str(data_dir)!r}: {holding[0]} holds the {split!r} files of "
                    f"{spec.name} and {other} the {', '.join(map(repr, splits[other]))} "
                    "files; put every split's files in one of them, so that one copy is read"
                )
        return _read(spec, split, found[(complete or holding)[0]])
    reasons = [f"{folder}: {found[folder].reason}" for folder in folders]
    raise DataError(
        f"data_dir={str(data_dir)!r} does not hold the {split!r} files of {spec.name}. "
        f"{'; '.join(reasons)}. It holds: {_listing(data_dir)}. "
        f"Put {_files_phrase(spec, split)} there, or leave data_dir unset to search the usual places."
    )


def _has(spec: DatasetSpec, split: str, folder: Path) -> bool:
    return not isinstance(_find(spec, split, folder), Unavailable)


def _well_known_folders(spec: DatasetSpec) -> list[tuple[str, Path | Unavailable]]:
    label = f"${FMI_DATA_DIR_ENV}/{spec.name}"
    root = os.environ.get(FMI_DATA_DIR_ENV)
    folders: list[tuple[str, Path | Unavailable]] = [
        (
            label,
            Path(root).expanduser() / spec.name
            if root
            else Unavailable(f"${FMI_DATA_DIR_ENV} is not set"),
        )
    ]
    if spec.debian_package:
        folders.append(
            (
                f"Debian package {spec.debian_package}",
                find_debian_folder(spec.debian_package, spec.all_files()),
            )
        )
    return folders


# --- original files: one finder and one reader per format -----------------------------------


def _find(spec: DatasetSpec, split: str, folder: Path) -> _Found | Unavailable:
    if not folder.is_dir():
        return Unavailable(f"{folder} is not a folder")
    return _FORMATS[spec.file_format][0](spec, split, folder)


def _read(spec: DatasetSpec, split: str, found: _Found) -> Dataset:
    return _FORMATS[spec.file_format][1](spec, split, found)


def _find_idx(spec: DatasetSpec, split: str, folder: Path) -> tuple[Path, Path] | Unavailable:
    paths, missing = [], []
    for name in spec.files[split]:
        candidates = [folder / name, folder / name.removesuffix(".gz")]
        existing = [path for path in candidates if path.is_file()]
        paths.extend(existing[:1])
        if not existing:
            missing.append(name)
    if missing:
        return Unavailable(f"no {' or '.join(missing)} in {folder}")
    return paths[0], paths[1]


def _read_idx(spec: DatasetSpec, split: str, found: tuple[Path, Path]) -> Dataset:
    images_path, labels_path = found
    images, labels = validate_arrays(
        idx.read_images(images_path),
        idx.read_labels(labels_path),
        image_shape=spec.image_shape,
        num_classes=spec.num_classes,
        images_from=str(images_path),
        labels_from=str(labels_path),
    )
    return Dataset(
        images,
        labels,
        spec.name,
        split,
        spec.class_names,
        # Named: a folder may hold both the .gz and the unpacked files (the .gz is read).
        source=f"IDX files {images_path.name}, {labels_path.name} in {images_path.parent}",
    )


def _find_cifar(spec: DatasetSpec, split: str, folder: Path) -> Path | Unavailable:
    location = cifar.find_cifar10(folder, spec.files[split])
    if location is None:
        # Name what is missing where some of the batches are there.
        for candidate in (folder, folder / cifar.FOLDER_NAME):
            missing = [n for n in spec.files[split] if not (candidate / n).is_file()]
            if len(missing) < len(spec.files[split]):
                return Unavailable(
                    f"{candidate} lacks {', '.join(missing)} of {', '.join(spec.files[split])}, "
                    f"and there is no {cifar.ARCHIVE_NAME} in {folder}"
                )
        binary = (
            " (cifar-10-batches-bin/ is the binary version: fmi_jax reads the python one, "
            f"{cifar.ARCHIVE_NAME})"
            if (folder / "cifar-10-batches-bin").is_dir()
            else ""
        )
        return Unavailable(
            f"no {cifar.FOLDER_NAME}/ with {', '.join(spec.files[split])} and no "
            f"{cifar.ARCHIVE_NAME} in {folder}{binary}"
        )
    return location


def _read_cifar(spec: DatasetSpec, split: str, location: Path) -> Dataset:
    batches, label_names = cifar.read_cifar10(location, spec.files[split])
    if label_names is not None and label_names != spec.class_names:
        raise DataError(
            f"{location}: {cifar.META_FILE} names the classes {list(label_names)}, not CIFAR-10's "
            f"{list(spec.class_names)}. Is this another dataset (CIFAR-100 uses other file names)?"
        )
    checked = [
        validate_arrays(
            b.images,
            b.labels,
            image_shape=spec.image_shape,
            num_classes=spec.num_classes,
            images_from=b.where,
        )
        for b in batches
    ]
    images = np.concatenate([images for images, _ in checked])
    labels = np.concatenate([labels for _, labels in checked])
    return Dataset(
        images,
        labels,
        spec.name,
        split,
        spec.class_names,
        source=f"CIFAR-10 python batches in {location}",
    )


_FORMATS = {
    "idx": (_find_idx, _read_idx),
    "cifar10_python": (_find_cifar, _read_cifar),
}


# --- messages ---------------------------------------------------------------------------------


def _files_phrase(spec: DatasetSpec, split: str | None = None) -> str:
    if spec.file_format == "cifar10_python":
        return f"{cifar.ARCHIVE_NAME} or its extracted {cifar.FOLDER_NAME}/"
    names = spec.files[split] if split else spec.all_files()
    return ", ".join(names)


def _listing(folder: Path, limit: int = 10) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError as error:
        return f"(cannot list: {error})"
    if not names:
        return "nothing"
    return ", ".join(names[:limit]) + (
        f" and {len(names) - limit} more" if len(names) > limit else ""
    )


def _not_found_message(spec: DatasetSpec, split: str, attempts: list[tuple[str, str]]) -> str:
    tried = "\n".join(f"  - {label}: {reason}" for label, reason in attempts)
    files = _files_phrase(spec)
    ways = [
        f"pass --config.data.data_dir=DIR (data_dir=DIR), where DIR holds the original files "
        f"{files} from {spec.homepage}",
        f"or put those files in ROOT/{spec.name}/ and set {FMI_DATA_DIR_ENV}=ROOT",
    ]
    if spec.debian_package:
        ways.append(f"or `apt-get install {spec.debian_package}` (Debian/Ubuntu)")
    ways.append(
        f"or, with internet, let tensorflow-datasets fetch it: it downloads the original files "
        "(no TensorFlow needed) or, with TensorFlow (`pip install tensorflow-cpu`, the extra "
        f"fmi_jax[tfds-prepare]), prepares {spec.tfds_name!r}; or pass "
        "--config.data.tfds_data_dir=DIR holding an already prepared copy (array_record "
        "copies read without TensorFlow)"
    )
    how = "\n".join(f"  {i}. {way}" for i, way in enumerate(ways, start=1))
    return f"No source has the {split!r} split of {spec.name}. Tried, in order:\n{tried}\nTo get it:\n{how}"
