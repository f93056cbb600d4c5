"""Reading and writing IDX files, the format of MNIST and Fashion-MNIST.

An IDX file (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS") is

* a 4-byte magic number: two zero bytes, a type code, and the number of
  dimensions ``ndim``;
* ``ndim`` sizes, each a 4-byte big-endian unsigned integer;
* the values in C order, big-endian, of the coded type: ``0x08`` unsigned byte,
  ``0x09`` signed byte, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32,
  ``0x0E`` float64.

The MNIST-family files use two of them: images ``*-images-idx3-ubyte`` with
magic ``2051`` (``0x00000803``: unsigned bytes, 3 dims ``N, 28, 28``) and
labels ``*-labels-idx1-ubyte`` with magic ``2049`` (``0x00000801``: unsigned
bytes, 1 dim ``N``). They are usually distributed gzip-compressed with a
``.gz`` suffix; a path ending in ``.gz`` is read and written as gzip, any other
path as raw bytes.

Parsing is a single ``np.frombuffer`` over the decompressed bytes, so the
60,000 Fashion-MNIST training images load in about half a second (gzip
decompression dominates). Every problem -- a wrong magic number, a truncated
or overlong payload, a corrupt gzip stream -- raises
:class:`~fmi_jax.data.errors.DataError` naming the file.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from fmi_jax.data.errors import DataError

__all__ = [
    "IMAGES_MAGIC",
    "LABELS_MAGIC",
    "read_idx",
    "read_images",
    "read_labels",
    "write_idx",
]

#: Magic number of an unsigned-byte IDX file with 3 dimensions (images).
IMAGES_MAGIC = 0x00000803
#: Magic number of an unsigned-byte IDX file with 1 dimension (labels).
LABELS_MAGIC = 0x00000801

# IDX type code -> big-endian numpy dtype.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike[str], *, expected_magic: int | None = None) -> np.ndarray:
    """Reads an IDX file (raw, or gzip-compressed if the name ends in ``.gz``).

    Args:
        path: The file.
        expected_magic: If given, the file's magic number must equal it, e.g.
            :data:`IMAGES_MAGIC` or :data:`LABELS_MAGIC`.

    Returns:
        The array with the declared shape, in native byte order. ``uint8``
        arrays are read-only views of the file's bytes.

    Raises:
        DataError: If the file cannot be read, is not valid gzip, has a wrong
            magic number, or its payload size does not match its header.
    """
    path = Path(path)
    return _parse(_read_bytes(path), path, expected_magic)


def read_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an ``idx3-ubyte`` image file into ``uint8`` NHWC ``(N, H, W, 1)``.

    Raises:
        DataError: As :func:`read_idx`; also if the magic number is not 2051.
    """
    images = read_idx(path, expected_magic=IMAGES_MAGIC)
    return images.reshape(images.shape + (1,))


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an ``idx1-ubyte`` label file into a ``uint8`` array ``(N,)``.

    Raises:
        DataError: As :func:`read_idx`; also if the magic number is not 2049.
    """
    return read_idx(path, expected_magic=LABELS_MAGIC)


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Writes ``array`` as an IDX file, gzip-compressed if the name ends in ``.gz``.

    To write MNIST-style files, pass images as ``uint8`` ``(N, H, W)`` (drop the
    channel axis: ``images[..., 0]``) and labels as ``uint8`` ``(N,)``.

    Args:
        path: Destination file; its parent folder must exist.
        array: Array of dtype uint8, int8, int16, int32, float32 or float64,
            with at most 255 dimensions.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: If the dtype or shape cannot be represented in IDX.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _type_code(array.dtype)
    if array.ndim > 255 or any(size >= 2**32 for size in array.shape):
        raise DataError(
            f"Cannot write {path}: IDX allows at most 255 dims of size < 2**32, got shape {array.shape}."
        )
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    path.write_bytes(payload)
    return path


def _type_code(dtype: np.dtype) -> int:
    for code, idx_dtype in _DTYPES.items():
        if dtype.kind == idx_dtype.kind and dtype.itemsize == idx_dtype.itemsize:
            return code
    supported = ", ".join(str(d.newbyteorder("=")) for d in _DTYPES.values())
    raise DataError(f"IDX cannot store dtype {dtype}; convert the array to one of: {supported}.")


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"Cannot read {path}: {error}.") from error
    if not path.name.endswith(".gz"):
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as error:
        raise DataError(
            f"{path} is a truncated gzip file ({error}). The download was probably "
            "interrupted; download the file again."
        ) from error
    except (gzip.BadGzipFile, zlib.error) as error:
        raise DataError(
            f"{path} is not a valid gzip file ({type(error).__name__}: {error}). "
            "Download it again, or drop the .gz suffix if it is an uncompressed IDX file."
        ) from error


def _parse(data: bytes, path: Path, expected_magic: int | None) -> np.ndarray:
    if len(data) < 4:
        raise DataError(f"{path} has {len(data)} bytes, too few for the 4-byte IDX magic number.")
    magic = int.from_bytes(data[:4], "big")
    zero_a, zero_b, code, ndim = data[:4]
    if zero_a or zero_b or code not in _DTYPES:
        raise DataError(
            f"{path} is not an IDX file: {_describe_magic(magic, expected_magic)}{_gzip_hint(data, path)}"
        )
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            f"{path} has the wrong kind of IDX data: {_describe_magic(magic, expected_magic)}"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(
            f"{path} is truncated: its header declares {ndim} dimensions "
            f"({header_size} header bytes) but the file has only {len(data)} bytes."
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _DTYPES[code]
    count = math.prod(shape)
    expected, actual = count * dtype.itemsize, len(data) - header_size
    if actual != expected:
        problem = "is truncated" if actual < expected else "is too long"
        raise DataError(
            f"{path} {problem}: its header declares shape {shape} of {dtype.newbyteorder('=')}, "
            f"i.e. {expected} payload bytes, but the file has {actual} after the header. "
            "Download the file again."
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header_size).reshape(shape)
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def _describe_magic(magic: int, expected_magic: int | None) -> str:
    found = f"magic number {magic} (0x{magic:08x})"
    if expected_magic is None:
        return f"{found} is not 0x0000TTDD (TT a type code in {sorted(_DTYPES)}, DD the number of dims)."
    kinds = {IMAGES_MAGIC: "images, idx3-ubyte", LABELS_MAGIC: "labels, idx1-ubyte"}
    expected = f"{expected_magic} ({kinds.get(expected_magic, 'IDX')})"
    if magic in kinds:
        return f"found {found}, i.e. {kinds[magic]}, but expected {expected}. Are the images and labels files swapped?"
    return f"found {found} but expected {expected}."


def _gzip_hint(data: bytes, path: Path) -> str:
    if data.startswith(_GZIP_MAGIC) and not path.name.endswith(".gz"):
        return " It looks gzip-compressed: name it with a .gz suffix or gunzip it."
    return " Download the file again."
