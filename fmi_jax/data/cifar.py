"""Reading and writing CIFAR-10 in its original "python version" format.

The archive ``cifar-10-python.tar.gz`` (https://www.cs.toronto.edu/~kriz/cifar.html)
unpacks to a folder ``cifar-10-batches-py/`` holding

* ``data_batch_1`` ... ``data_batch_5`` (training, 10,000 images each) and
  ``test_batch`` (10,000 test images): each a pickled dict (written by
  Python 2, hence ``encoding='bytes'`` and ``bytes`` keys) with ``b'data'``, a
  ``uint8`` array ``(N, 3072)`` whose rows are one 32x32 RGB image stored
  channel-major (1024 red, then 1024 green, then 1024 blue values, each plane
  row by row), and ``b'labels'``, a list of ``N`` ints in ``[0, 10)``;
* ``batches.meta``: a pickled dict whose ``b'label_names'`` lists the ten
  class names.

This module reads either the archive (members are read straight from the tar
stream; nothing is extracted to disk) or the extracted folder, and converts
the rows to NHWC ``(N, 32, 32, 3)``.

Unpickling runs code named by the file, so a malicious file could do anything.
The files are therefore read with a restricted unpickler that only rebuilds
plain Python containers and numpy arrays; any other global in the pickle is
refused with a :class:`~fmi_jax.data.errors.DataError`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmi_jax.data.errors import DataError

__all__ = [
    "ARCHIVE_NAME",
    "FOLDER_NAME",
    "META_FILE",
    "TEST_BATCHES",
    "TRAIN_BATCHES",
    "CifarBatch",
    "find_cifar10",
    "read_cifar10",
    "write_cifar_batches",
]

ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES: tuple[str, ...] = ("test_batch",)
META_FILE = "batches.meta"

_SIDE = 32
_CHANNELS = 3
_ROW_SIZE = _SIDE * _SIDE * _CHANNELS


@dataclasses.dataclass(frozen=True)
class CifarBatch:
    """One batch file, converted.

    Attributes:
        where: The file, e.g. ``".../cifar-10-batches-py/data_batch_1"`` or
            ``".../cifar-10-python.tar.gz:cifar-10-batches-py/data_batch_1"``.
        images: ``uint8`` ``(N, 32, 32, 3)``.
        labels: Integer ``(N,)``, not yet range-checked.
    """

    where: str
    images: np.ndarray
    labels: np.ndarray


def find_cifar10(folder: str | os.PathLike[str], batch_names: Sequence[str]) -> Path | None:
    """Finds CIFAR-10 python files holding ``batch_names`` in ``folder``.

    Looks, in this order, for ``folder`` itself holding all the batch files,
    ``folder/cifar-10-batches-py/`` holding them, and
    ``folder/cifar-10-python.tar.gz`` (whose members are checked when read).

    Args:
        folder: Where to look.
        batch_names: The batches needed, e.g. :data:`TRAIN_BATCHES`.

    Returns:
        The batch folder or the archive, or ``None`` if there is neither.
    """
    folder = Path(folder)
    for candidate in (folder, folder / FOLDER_NAME):
        if all((candidate / name).is_file() for name in batch_names):
            return candidate
    archive = folder / ARCHIVE_NAME
    return archive if archive.is_file() else None


def read_cifar10(
    location: str | os.PathLike[str], batch_names: Sequence[str]
) -> tuple[list[CifarBatch], tuple[str, ...] | None]:
    """Reads batch files and the class names from a batch folder or the archive.

    The archive is read in a single pass over its gzip stream.

    Args:
        location: A folder holding the batch files, or ``cifar-10-python.tar.gz``.
        batch_names: Which batches, e.g. :data:`TRAIN_BATCHES`.

    Returns:
        One :class:`CifarBatch` per name in the order given, and the class names
        from ``batches.meta`` (``None`` if that file is absent).

    Raises:
        DataError: If a batch is missing, not a valid pickle, refers to a
            disallowed global, or lacks the expected keys and shapes.
    """
    blobs = _read_members(Path(location), [*batch_names, META_FILE], optional=META_FILE)
    batches = [_parse_batch(blobs[name][0], blobs[name][1]) for name in batch_names]
    meta = blobs.get(META_FILE)
    return batches, None if meta is None else _parse_label_names(*meta)


def write_cifar_batches(
    folder: str | os.PathLike[str],
    *,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    label_names: Sequence[str],
    num_train_batches: int = len(TRAIN_BATCHES),
) -> Path:
    """Writes images in the original CIFAR-10 python format (for tests and tools).

    The training images are split into ``num_train_batches`` near-equal batches
    ``data_batch_1..``; the test images go to ``test_batch``; ``label_names``
    go to ``batches.meta``. Pickles use protocol 2 with ``bytes`` keys, like
    the originals.

    Args:
        folder: Destination folder (created if missing), e.g.
            ``tmp / 'cifar-10-batches-py'``.
        train_images: ``uint8`` ``(N, 32, 32, 3)``.
        train_labels: Integer ``(N,)``.
        test_images: ``uint8`` ``(M, 32, 32, 3)``.
        test_labels: Integer ``(M,)``.
        label_names: Class names for ``batches.meta``.
        num_train_batches: Number of training batch files (5 in the original).

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.
    """
    folder = Path(folder)
    train_images, train_labels = np.asarray(train_images), np.asarray(train_labels)
    test_images, test_labels = np.asarray(test_images), np.asarray(test_labels)
    for what, images, labels in (
        ("train", train_images, train_labels),
        ("test", test_images, test_labels),
    ):
        if len(images) != len(labels):
            raise DataError(
                f"Cannot write {folder}: {len(images)} {what} images but {len(labels)} labels."
            )
    folder.mkdir(parents=True, exist_ok=True)
    train_parts = zip(
        np.array_split(train_images, num_train_batches),
        np.array_split(train_labels, num_train_batches),
        strict=True,
    )
    for i, (images, labels) in enumerate(train_parts, start=1):
        _write_batch(
            folder / f"data_batch_{i}", images, labels, f"training batch {i} of {num_train_batches}"
        )
    _write_batch(folder / TEST_BATCHES[0], test_images, test_labels, "testing batch 1 of 1")
    meta = {
        b"label_names": [name.encode("utf-8") for name in label_names],
        b"num_cases_per_batch": int(len(train_labels) // max(num_train_batches, 1)),
        b"num_vis": _ROW_SIZE,
    }
    (folder / META_FILE).write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def _write_batch(path: Path, images: np.ndarray, labels: np.ndarray, batch_label: str) -> None:
    if images.dtype != np.uint8 or images.shape[1:] != (_SIDE, _SIDE, _CHANNELS):
        raise DataError(
            f"Cannot write {path}: images must be uint8 (N, 32, 32, 3), got {images.dtype} {images.shape}."
        )
    rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), _ROW_SIZE)
    batch = {
        b"batch_label": batch_label.encode("utf-8"),
        b"labels": [int(label) for label in labels],
        b"data": rows,
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(images))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def _read_members(
    location: Path, names: Sequence[str], optional: str
) -> dict[str, tuple[str, bytes]]:
    """Returns ``{name: (where, bytes)}`` from a folder or the tar.gz archive.

    Every name must be present except ``optional``.
    """
    if location.is_dir():
        return {
            name: (str(location / name), _read_file(location / name))
            for name in names
            if name != optional or (location / name).is_file()
        }
    wanted = {f"{FOLDER_NAME}/{name}": name for name in names}
    found: dict[str, tuple[str, bytes]] = {}
    try:
        with tarfile.open(location, mode="r:gz") as archive:
            for member in archive:  # one pass over the stream; no seeking back
                if member.name in wanted and member.isfile():
                    found[wanted[member.name]] = (
                        f"{location}:{member.name}",
                        archive.extractfile(member).read(),
                    )
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataError(
            f"{location} is not a readable tar.gz archive ({type(error).__name__}: {error}). "
            f"It is probably truncated or corrupt; download {ARCHIVE_NAME} again."
        ) from error
    missing = [f"{FOLDER_NAME}/{name}" for name in names if name not in found and name != optional]
    if missing:
        raise DataError(
            f"{location} has no member {', '.join(missing)}; is it the original {ARCHIVE_NAME}?"
        )
    return found


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"Cannot read CIFAR-10 file {path}: {error}.") from error


def _parse_label_names(where: str, blob: bytes) -> tuple[str, ...]:
    names = _get(_unpickle(blob, where), "label_names", where)
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(
            f"{where}: 'label_names' should be a list of strings, got {type(names).__name__}."
        )
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in names)


def _parse_batch(where: str, blob: bytes) -> CifarBatch:
    batch = _unpickle(blob, where)
    data = _get(batch, "data", where)
    labels = _get(batch, "labels", where)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _ROW_SIZE
    ):
        described = (
            f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        )
        raise DataError(
            f"{where}: 'data' should be a uint8 array of shape (N, {_ROW_SIZE}), got {described}."
        )
    label_array = np.asarray(labels) if isinstance(labels, (list, np.ndarray)) else None
    if (
        label_array is None
        or label_array.ndim != 1
        or not (label_array.size == 0 or np.issubdtype(label_array.dtype, np.integer))
    ):
        raise DataError(f"{where}: 'labels' should be a list of ints, got {type(labels).__name__}.")
    images = data.reshape(-1, _CHANNELS, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return CifarBatch(where, np.ascontiguousarray(images), label_array.astype(np.int64))


def _get(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict):
        raise DataError(
            f"{where}: expected a pickled dict, got {type(mapping).__name__}. Is this a CIFAR-10 python file?"
        )
    for candidate in (key.encode("ascii"), key):
        if candidate in mapping:
            return mapping[candidate]
    keys = sorted(k.decode("ascii", "replace") if isinstance(k, bytes) else str(k) for k in mapping)
    raise DataError(
        f"{where}: the pickled dict has no {key!r} key (keys: {keys}). Is this a CIFAR-10 python file?"
    )


def _unpickle(blob: bytes, where: str) -> Any:
    try:
        return _RestrictedUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except _DisallowedGlobal as error:
        raise DataError(
            f"{where} refers to {error}, which a CIFAR-10 file never needs; refusing to unpickle it "
            "(unpickling can run arbitrary code). Use the original files from "
            "https://www.cs.toronto.edu/~kriz/cifar.html."
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        MemoryError,
    ) as error:
        raise DataError(
            f"{where} is not a valid CIFAR-10 pickle ({type(error).__name__}: {error}); it is probably "
            "truncated or corrupt. Download the files again."
        ) from error


class _DisallowedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the allowlist."""


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The one use of ``_codecs.encode`` in protocol-2 pickles written by Python 3."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """A numeric numpy scalar (``list(np.array(labels))`` pickles its items as these)."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"a numpy scalar of dtype {dtype} is not allowed")
    return np.frombuffer(data, dtype, count=1)[0]


def _numpy_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """How protocol 5 pickles an array (numpy's ``_frombuffer``): its bytes, read as
    ``dtype`` and reshaped; nothing larger than the bytes the file holds."""
    if (
        not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer))
        or not isinstance(dtype, np.dtype)
        or dtype.kind not in "biuf"
        or not isinstance(shape, tuple)
        or not all(isinstance(n, int) for n in shape)
        or order not in ("C", "F")
    ):
        raise pickle.UnpicklingError("a numpy array from a buffer of this kind is not allowed")
    return np.frombuffer(buffer, dtype).reshape(shape, order=order)


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()``, how protocol-2 pickles write ``b''`` (others go through
    ``_codecs.encode``); with arguments it could allocate any amount of memory."""
    if args:
        raise pickle.UnpicklingError("bytes(...) with arguments is not allowed")
    return b""


# The only globals the original batches (Python 2 pickles) and protocol-2 pickles
# written by Python 3 (e.g. by write_cifar_batches) reference, what protocol 5 uses for
# arrays, and what a batch written by hand needs for labels stored as numpy integers or
# an empty bytes value.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and builtin containers only."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _DisallowedGlobal(f"the global {module}.{name}") from None
