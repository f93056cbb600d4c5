"""CIFAR-10 python format: round trips from folder and archive, corruption, unsafe pickles."""

from __future__ import annotations

import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fmi_jax.data import cifar
from fmi_jax.data.errors import DataError
from fmi_jax.data.registry import CIFAR10_CLASSES


def _archive(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(folder, arcname=cifar.FOLDER_NAME)
    return dest


def test_channel_major_rows_become_nhwc(tmp_path):
    # One image whose red plane is 1, green 2, blue 3, except the pixel (row 0, col 1).
    row = np.concatenate([np.full(1024, 1), np.full(1024, 2), np.full(1024, 3)]).astype(np.uint8)
    row[1], row[1024 + 1], row[2048 + 1] = 10, 20, 30
    batch = {b"data": row[None], b"labels": [7]}
    folder = tmp_path / cifar.FOLDER_NAME
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    [parsed], names = cifar.read_cifar10(folder, ["test_batch"])
    assert names is None  # no batches.meta
    assert parsed.images.shape == (1, 32, 32, 3)
    assert parsed.images[0, 0, 0].tolist() == [1, 2, 3]
    assert parsed.images[0, 0, 1].tolist() == [10, 20, 30]
    assert parsed.labels.tolist() == [7]


@pytest.mark.parametrize("protocol", [2, 4])
def test_labels_written_as_numpy_integers_are_read(tmp_path, protocol):
    # list(np.array(labels)) pickles each label as a numpy scalar (numpy...scalar).
    rows = np.arange(2 * 3072, dtype=np.int64).reshape(2, 3072).astype(np.uint8)
    batch = {b"data": rows, b"labels": list(np.array([3, 9])), b"batch_label": b""}
    folder = tmp_path / cifar.FOLDER_NAME
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    [parsed], _ = cifar.read_cifar10(folder, ["test_batch"])
    assert parsed.labels.tolist() == [3, 9]
    assert parsed.images[1, 0, 0].tolist() == [rows[1, 0], rows[1, 1024], rows[1, 2048]]


def test_folder_round_trip_is_exact(tmp_path, write_cifar_dataset):
    arrays = write_cifar_dataset(tmp_path / cifar.FOLDER_NAME, num_train=23)
    assert sorted(p.name for p in (tmp_path / cifar.FOLDER_NAME).iterdir()) == sorted(
        [*cifar.TRAIN_BATCHES, *cifar.TEST_BATCHES, cifar.META_FILE]
    )
    batches, names = cifar.read_cifar10(tmp_path / cifar.FOLDER_NAME, cifar.TRAIN_BATCHES)
    assert [len(b.labels) for b in batches] == [5, 5, 5, 4, 4]
    np.testing.assert_array_equal(np.concatenate([b.images for b in batches]), arrays["train"][0])
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), arrays["train"][1])
    assert names == CIFAR10_CLASSES


def test_a_missing_training_batch_is_named(tmp_path, isolated, write_cifar_dataset):
    """With data_batch_3 gone, the error names it rather than listing all five."""
    from fmi_jax.data import load

    write_cifar_dataset(tmp_path / cifar.FOLDER_NAME)
    (tmp_path / cifar.FOLDER_NAME / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py lacks data_batch_3 of data_batch_1"):
        load("cifar10", "train", data_dir=tmp_path)


def test_archive_round_trip_is_exact(tmp_path, write_cifar_dataset):
    arrays = write_cifar_dataset(tmp_path / "src" / cifar.FOLDER_NAME)
    archive = _archive(tmp_path / "src" / cifar.FOLDER_NAME, tmp_path / cifar.ARCHIVE_NAME)
    [test], names = cifar.read_cifar10(archive, cifar.TEST_BATCHES)
    np.testing.assert_array_equal(test.images, arrays["test"][0])
    np.testing.assert_array_equal(test.labels, arrays["test"][1])
    assert test.where == f"{archive}:{cifar.FOLDER_NAME}/test_batch"
    assert names == CIFAR10_CLASSES


def test_find_prefers_extracted_folder_and_needs_all_batches(tmp_path, write_cifar_dataset):
    assert cifar.find_cifar10(tmp_path, cifar.TEST_BATCHES) is None
    (tmp_path / cifar.ARCHIVE_NAME).write_bytes(b"")
    assert cifar.find_cifar10(tmp_path, cifar.TEST_BATCHES) == tmp_path / cifar.ARCHIVE_NAME
    write_cifar_dataset(tmp_path / cifar.FOLDER_NAME)
    assert cifar.find_cifar10(tmp_path, cifar.TEST_BATCHES) == tmp_path / cifar.FOLDER_NAME
    assert (
        cifar.find_cifar10(tmp_path / cifar.FOLDER_NAME, cifar.TRAIN_BATCHES)
        == tmp_path / cifar.FOLDER_NAME
    )
    (tmp_path / cifar.FOLDER_NAME / "data_batch_3").unlink()
    assert cifar.find_cifar10(tmp_path, cifar.TRAIN_BATCHES) == tmp_path / cifar.ARCHIVE_NAME


def test_truncated_pickle(tmp_path, write_cifar_dataset):
    folder = write_cifar_dataset(tmp_path / "b") and tmp_path / "b"
    blob = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(
        DataError, match=r"b/test_batch is not a valid CIFAR-10 pickle.*truncated or corrupt"
    ):
        cifar.read_cifar10(folder, cifar.TEST_BATCHES)


def test_garbage_file(tmp_path):
    (tmp_path / "test_batch").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match=r"test_batch is not a valid CIFAR-10 pickle"):
        cifar.read_cifar10(tmp_path, cifar.TEST_BATCHES)


def test_truncated_archive(tmp_path, write_cifar_dataset):
    write_cifar_dataset(tmp_path / "src")
    archive = _archive(tmp_path / "src", tmp_path / cifar.ARCHIVE_NAME)
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(
        DataError, match=r"cifar-10-python.tar.gz is not a readable tar.gz archive.*download"
    ):
        cifar.read_cifar10(archive, cifar.TEST_BATCHES)


def test_archive_without_the_batch(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    archive = _archive(tmp_path / "other", tmp_path / cifar.ARCHIVE_NAME)
    with pytest.raises(DataError, match=r"has no member cifar-10-batches-py/test_batch"):
        cifar.read_cifar10(archive, cifar.TEST_BATCHES)


def test_missing_batch_in_folder(tmp_path, write_cifar_dataset):
    write_cifar_dataset(tmp_path)
    (tmp_path / "data_batch_2").unlink()
    with pytest.raises(DataError, match=r"Cannot read CIFAR-10 file .*data_batch_2"):
        cifar.read_cifar10(tmp_path, cifar.TRAIN_BATCHES)


@pytest.mark.parametrize(
    "batch, pattern",
    [
        ([1, 2], r"expected a pickled dict, got list"),
        ({b"labels": [0]}, r"has no 'data' key \(keys: \['labels'\]\)"),
        ({b"data": np.zeros((1, 3072), np.uint8)}, r"has no 'labels' key"),
        (
            {b"data": np.zeros((1, 1024), np.uint8), b"labels": [0]},
            r"'data' should be a uint8 array of shape \(N, 3072\), got uint8 \(1, 1024\)",
        ),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, r"got float32"),
        (
            {b"data": np.zeros((1, 3072), np.uint8), b"labels": ["cat"]},
            r"'labels' should be a list of ints",
        ),
    ],
)
def test_wrong_structure_names_the_file(tmp_path, batch, pattern):
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=rf"test_batch: .*{pattern}"):
        cifar.read_cifar10(tmp_path, cifar.TEST_BATCHES)


class _Exploit:
    """Pickles to a call of os.mkdir: what a malicious 'CIFAR file' could do."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return os.mkdir, (self.target,)


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    target = tmp_path / "pwned"
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Exploit(target)}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(
        DataError,
        match=r"test_batch refers to the global (posix|os|nt)\.mkdir.*refusing to unpickle",
    ):
        cifar.read_cifar10(tmp_path, cifar.TEST_BATCHES)
    assert not target.exists()
    # bytes() makes b''; with a size it would allocate whatever a file asks for.
    (tmp_path / "test_batch").write_bytes(b"c__builtin__\nbytes\n(I200000000\ntR.")
    with pytest.raises(DataError, match=r"bytes\(\.\.\.\) with arguments is not allowed"):
        cifar.read_cifar10(tmp_path, cifar.TEST_BATCHES)


def test_meta_with_wrong_structure(tmp_path, write_cifar_dataset):
    write_cifar_dataset(tmp_path)
    (tmp_path / cifar.META_FILE).write_bytes(pickle.dumps({b"label_names": "cat"}, protocol=2))
    with pytest.raises(DataError, match=r"batches.meta: 'label_names' should be a list of strings"):
        cifar.read_cifar10(tmp_path, cifar.TEST_BATCHES)


def test_writer_rejects_wrong_images(tmp_path):
    with pytest.raises(DataError, match=r"images must be uint8 \(N, 32, 32, 3\)"):
        cifar.write_cifar_batches(
            tmp_path,
            train_images=np.zeros((5, 28, 28, 1), np.uint8),
            train_labels=np.zeros(5, int),
            test_images=np.zeros((1, 32, 32, 3), np.uint8),
            test_labels=np.zeros(1, int),
            label_names=CIFAR10_CLASSES,
        )


def _binstring(data: bytes) -> bytes:
    return (
        b"U" + bytes([len(data)]) + data
        if len(data) < 256
        else b"T" + struct.pack("<I", len(data)) + data
    )


def _python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way the originals were: Python 2, numpy 1.x names, str payloads."""
    rows, cols = data.shape
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + _binstring(b"b")
        + b"\x87R"
        + b"(K\x01M"
        + struct.pack("<H", rows)
        + b"M"
        + struct.pack("<H", cols)
        + b"\x86"
        + b"cnumpy\ndtype\n"
        + _binstring(b"u1")
        + b"K\x00K\x01\x87R"
        + b"(K\x03"
        + _binstring(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + b"\x89"
        + _binstring(data.tobytes())
        + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([label]) for label in labels) + b"e"
    return b"\x80\x02}(" + _binstring(b"data") + array + _binstring(b"labels") + label_list + b"u."


def test_python2_pickle_with_legacy_numpy_module_names(tmp_path):
    data = (np.arange(2 * 3072) % 251).astype(np.uint8).reshape(2, 3072)
    (tmp_path / "test_batch").write_bytes(_python2_batch(data, [3, 9]))
    [batch], _ = cifar.read_cifar10(tmp_path, cifar.TEST_BATCHES)
    assert batch.labels.tolist() == [3, 9]
    np.testing.assert_array_equal(batch.images[1].transpose(2, 0, 1).reshape(-1), data[1])


def test_a_batch_with_more_images_than_labels_is_a_damaged_file(tmp_path):
    from fmi_jax.data import load

    folder = tmp_path / cifar.FOLDER_NAME
    folder.mkdir()
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"2 images in .*test_batch but 1 labels.*file is damaged"):
        load("cifar10", "test", data_dir=tmp_path)


def test_the_binary_version_is_named_as_not_read(tmp_path):
    from fmi_jax.data import load

    (tmp_path / "cifar-10-batches-bin").mkdir()
    with pytest.raises(DataError, match=r"binary version: fmi_jax reads the python one"):
        load("cifar10", "test", data_dir=tmp_path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_batch_pickled_again_with_any_protocol_loads(tmp_path, write_cifar_dataset, protocol):
    # Protocol 5 rebuilds arrays through numpy's _frombuffer, which the unpickler allows.
    arrays = write_cifar_dataset(tmp_path)
    batch = pickle.loads((tmp_path / "test_batch").read_bytes(), encoding="bytes")  # our own
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    (got,), _ = cifar.read_cifar10(tmp_path, cifar.TEST_BATCHES)
    np.testing.assert_array_equal(got.images, arrays["test"][0])
    np.testing.assert_array_equal(got.labels, arrays["test"][1])
