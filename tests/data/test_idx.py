"""IDX reading and writing: exact round trips and a DataError for every corruption."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from fmi_jax.data import idx
from fmi_jax.data.errors import DataError


def _header(magic: int, *dims: int) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims)


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_write_read_round_trip_is_exact(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    array = (rng.normal(0, 50, (3, 4, 5))).astype(dtype)
    path = idx.write_idx(tmp_path / f"a-idx3{suffix}", array)
    back = idx.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_known_bytes_of_a_labels_file(tmp_path):
    path = idx.write_idx(tmp_path / "labels-idx1-ubyte", np.array([7, 0, 255], np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 255])
    np.testing.assert_array_equal(idx.read_labels(path), [7, 0, 255])


def test_known_bytes_of_an_images_file(tmp_path):
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(_header(2051, 2, 2, 3) + bytes(range(12)))
    images = idx.read_images(path)
    assert images.shape == (2, 2, 3, 1) and images.dtype == np.uint8
    assert images[1, 0, 2, 0] == 8  # second image, first row, third column: byte 6 + 2


def test_big_endian_values_are_decoded(tmp_path):
    path = tmp_path / "x-idx1-int"
    path.write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">ii", -2, 70000))
    np.testing.assert_array_equal(idx.read_idx(path), [-2, 70000])


def test_gzip_file_written_with_gz_suffix(tmp_path):
    path = idx.write_idx(tmp_path / "l.gz", np.arange(5, dtype=np.uint8))
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(path.read_bytes())[:4] == bytes([0, 0, 8, 1])


def test_bad_magic_names_file_and_numbers(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_header(0x12345678, 1) + b"\0")
    with pytest.raises(
        DataError,
        match=r"train-images-idx3-ubyte is not an IDX file: found magic number 305419896 \(0x12345678\) but expected 2051",  # noqa: E501
    ):
        idx.read_images(path)


def test_labels_file_read_as_images_says_which_is_which(tmp_path):
    path = idx.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(
        DataError, match=r"train-labels-idx1-ubyte.gz.*2049 .*labels.*expected 2051.*swapped"
    ):
        idx.read_images(path)


def test_images_with_wrong_number_of_dims(tmp_path):
    path = idx.write_idx(tmp_path / "images.gz", np.zeros((2, 3), np.uint8))  # idx2: magic 2050
    with pytest.raises(DataError, match=r"images.gz.*found magic number 2050.*expected 2051"):
        idx.read_images(path)


def test_truncated_payload_names_expected_and_actual_bytes(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(_header(2051, 10, 28, 28) + bytes(7000))
    with pytest.raises(
        DataError,
        match=r"t10k-images-idx3-ubyte is truncated.*\(10, 28, 28\).*7840 payload bytes.*7000",
    ):
        idx.read_images(path)


def test_overlong_payload_is_rejected(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(_header(2049, 3) + bytes(5))
    with pytest.raises(DataError, match=r"labels is too long.*3 payload bytes.*5"):
        idx.read_labels(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(
        DataError,
        match=r"short is truncated: its header declares 3 dimensions \(16 header bytes\).*6 bytes",
    ):
        idx.read_idx(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty has 0 bytes"):
        idx.read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    path = idx.write_idx(
        tmp_path / "train-images-idx3-ubyte.gz", np.arange(5000, dtype=np.uint8).reshape(5, 10, 100)
    )
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is a truncated gzip file"):
        idx.read_images(path)


def test_garbage_gzip(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(b"this is not gzip at all")
    with pytest.raises(
        DataError, match=r"train-labels-idx1-ubyte.gz is not a valid gzip file \(BadGzipFile"
    ):
        idx.read_labels(path)


def test_corrupt_deflate_data(tmp_path):
    path = idx.write_idx(tmp_path / "x.gz", np.arange(2000, dtype=np.uint8))
    data = bytearray(path.read_bytes())
    data[20:40] = bytes(20)  # zero a run inside the deflate stream
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"x.gz is not a valid gzip file|x.gz is a truncated gzip"):
        idx.read_idx(path)


def test_gzip_content_under_raw_name_gets_a_hint(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(gzip.compress(_header(2049, 1) + b"\x03"))
    with pytest.raises(DataError, match=r"looks gzip-compressed: name it with a .gz suffix"):
        idx.read_labels(path)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"Cannot read .*nope.gz"):
        idx.read_idx(tmp_path / "nope.gz")


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(DataError, match=r"IDX cannot store dtype uint16"):
        idx.write_idx(tmp_path / "x", np.zeros(3, np.uint16))
