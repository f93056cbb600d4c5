"""The front door: resolution order, errors that name files and ways out, load_splits."""

from __future__ import annotations

import logging
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from fmi_jax import data
from fmi_jax.data import DataError, DataNotFoundError, cifar, idx, load, load_splits, sources
from fmi_jax.data.errors import Unavailable

DPKG_LISTING = """/.
/usr
/usr/share
/usr/share/datasets
/opt/pkgdata/fashion-mnist
/opt/pkgdata/fashion-mnist/t10k-images-idx3-ubyte.gz
/opt/pkgdata/fashion-mnist/train-images-idx3-ubyte.gz
/usr/share/doc/dataset-fashion-mnist/README.md.gz
"""


def _same(ds: data.Dataset, arrays: tuple[np.ndarray, np.ndarray]) -> bool:
    return np.array_equal(ds.images, arrays[0]) and np.array_equal(ds.labels, arrays[1])


# --- the public surface ----------------------------------------------------------------------


def test_public_api():
    assert sorted(data.__all__) == sorted(
        [
            "DATASETS",
            "DataError",
            "DataNotFoundError",
            "Dataset",
            "DatasetSpec",
            "SPLITS",
            "load",
            "load_splits",
            "train_validation_split",
        ]
    )
    assert issubclass(DataError, ValueError) and issubclass(DataNotFoundError, FileNotFoundError)


def test_registry_known_facts():
    specs = data.DATASETS
    assert set(specs) == {"fashion_mnist", "mnist", "cifar10", "synthetic", "synthetic_rgb"}
    assert specs["fashion_mnist"].class_names == (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
    assert specs["mnist"].class_names == tuple("0123456789")
    assert specs["cifar10"].class_names == (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )
    assert [specs[n].image_shape for n in ("mnist", "cifar10", "synthetic_rgb")] == [
        (28, 28, 1),
        (32, 32, 3),
        (32, 32, 3),
    ]
    assert specs["mnist"].files["test"] == (
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    assert specs["cifar10"].tfds_name == "cifar10" and specs["fashion_mnist"].num_classes == 10


def test_unknown_name_and_split_list_the_known_ones():
    with pytest.raises(
        DataError, match=r"Unknown dataset 'fmnist'; known datasets: cifar10, fashion_mnist, mnist"
    ):
        load("fmnist", "train")
    with pytest.raises(
        DataError, match=r"Unknown split 'validation'.*\('train', 'test'\).*load_splits"
    ):
        load("mnist", "validation")


def test_synthetic_arguments_are_checked():
    with pytest.raises(DataError, match=r"\['num_train'\] only apply to synthetic datasets"):
        load("mnist", "train", num_train=10)
    with pytest.raises(DataError, match=r"Unknown argument\(s\) \['size'\] for 'synthetic'"):
        load("synthetic", "train", size=10)


# --- resolution order ------------------------------------------------------------------------


@pytest.fixture
def three_copies(tmp_path, monkeypatch, isolated, write_idx_dataset):
    """Three different Fashion-MNIST copies: data_dir, $FMI_DATA_DIR/fashion_mnist, 'Debian'."""
    given = write_idx_dataset(tmp_path / "given", seed=10)
    env = write_idx_dataset(tmp_path / "env_root" / "fashion_mnist", seed=20)
    debian = write_idx_dataset(tmp_path / "debian", seed=30)
    monkeypatch.setenv(sources.FMI_DATA_DIR_ENV, str(tmp_path / "env_root"))
    monkeypatch.setattr(sources, "find_debian_folder", lambda package, names: tmp_path / "debian")
    return {"given": given, "env": env, "debian": debian, "root": tmp_path, "tfds": str(isolated)}


def test_data_dir_beats_fmi_data_dir_beats_debian(three_copies, monkeypatch):
    root = three_copies["root"]
    given = load("fashion_mnist", "train", data_dir=root / "given")
    assert _same(given, three_copies["given"]["train"]) and given.source.endswith(
        f"-idx1-ubyte.gz in {root / 'given'}"
    )
    from_env = load("fashion_mnist", "test")
    assert (
        _same(from_env, three_copies["env"]["test"])
        and str(root / "env_root" / "fashion_mnist") in from_env.source
    )
    monkeypatch.delenv(sources.FMI_DATA_DIR_ENV)
    from_debian = load("fashion_mnist", "train")
    assert (
        _same(from_debian, three_copies["debian"]["train"])
        and str(root / "debian") in from_debian.source
    )


def test_empty_fmi_data_dir_folder_falls_through_to_debian(three_copies, monkeypatch):
    root = three_copies["root"]
    monkeypatch.setenv(sources.FMI_DATA_DIR_ENV, str(root / "nothing_here"))
    assert _same(load("fashion_mnist", "train"), three_copies["debian"]["train"])


def test_an_incomplete_fmi_data_dir_copy_is_refused_not_mixed_with_debian(
    three_copies, monkeypatch
):
    """$FMI_DATA_DIR/fashion_mnist with the train files only (or a misnamed labels file)
    is the user's copy: its test split must not come from Debian's copy silently."""
    root = three_copies["root"]
    env = root / "env_root" / "fashion_mnist"
    (env / "t10k-labels-idx1-ubyte.gz").rename(env / "t10k-labels.idx1-ubyte.gz")
    assert _same(load("fashion_mnist", "train"), three_copies["env"]["train"])
    with pytest.raises(DataError) as info:
        load("fashion_mnist", "test")
    message = str(info.value)
    assert message.startswith(f"$FMI_DATA_DIR/fashion_mnist ({env}) does not hold the 'test' files")
    assert "t10k-labels.idx1-ubyte.gz" in message and "\n" not in message
    # An empty folder is skipped, as a missing one is.
    for name in list(env.iterdir()):
        name.unlink()
    assert _same(load("fashion_mnist", "test"), three_copies["debian"]["test"])
    # $FMI_DATA_DIR naming a file is refused.
    monkeypatch.setenv(
        sources.FMI_DATA_DIR_ENV, str(root / "debian" / "train-images-idx3-ubyte.gz")
    )
    with pytest.raises(DataError, match=r"^\$FMI_DATA_DIR='.*' is not a folder"):
        load("fashion_mnist", "test")
    # So is $FMI_DATA_DIR/<name> naming a file, rather than passed over for Debian's copy.
    monkeypatch.setenv(sources.FMI_DATA_DIR_ENV, str(env.parent))
    env.rmdir()
    env.write_text("not a folder")
    with pytest.raises(DataError, match=r"^\$FMI_DATA_DIR/fashion_mnist \(.*\) is a file, not"):
        load("fashion_mnist", "test")


def test_data_dir_subfolder_named_after_the_dataset(three_copies):
    ds = load("fashion_mnist", "train", data_dir=three_copies["root"] / "env_root")
    assert _same(ds, three_copies["env"]["train"])


def test_data_dir_and_its_subfolder_are_never_mixed(tmp_path, write_idx_dataset, write_idx_split):
    # The folder holds the test files only, its subfolder the whole dataset: both
    # splits come from the subfolder, one copy.
    whole = write_idx_dataset(tmp_path / "fashion_mnist", seed=5)
    write_idx_split(tmp_path, "test", 7, seed=9)
    for split in ("train", "test"):
        assert _same(load("fashion_mnist", split, data_dir=tmp_path), whole[split])
    # Each holds a split the other lacks: which copy is meant is not known.
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / "fashion_mnist" / name).rename(tmp_path / name)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).unlink()
    message = r"holds the 'train' files of fashion_mnist and .*fashion_mnist the 'test' files"
    with pytest.raises(DataError, match=message):
        load("fashion_mnist", "train", data_dir=tmp_path)


def test_given_data_dir_without_files_errors_instead_of_falling_through(three_copies):
    empty = three_copies["root"] / "empty"
    empty.mkdir()
    (empty / "README").write_text("x")
    with pytest.raises(DataError) as info:
        load("fashion_mnist", "train", data_dir=empty)
    message = str(info.value)
    assert f"data_dir='{empty}' does not hold the 'train' files of fashion_mnist" in message
    assert "no train-images-idx3-ubyte.gz or train-labels-idx1-ubyte.gz" in message
    assert "It holds: README." in message


def test_given_data_dir_with_a_corrupt_file_errors(three_copies):
    broken = three_copies["root"] / "given" / "train-labels-idx1-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:-5])
    with pytest.raises(
        DataError, match=r"given/train-labels-idx1-ubyte.gz is a truncated gzip file"
    ):
        load("fashion_mnist", "train", data_dir=three_copies["root"] / "given")


def test_corrupt_file_in_a_well_known_folder_is_an_error_too(three_copies):
    broken = three_copies["root"] / "env_root" / "fashion_mnist" / "t10k-images-idx3-ubyte.gz"
    broken.write_bytes(b"garbage")
    with pytest.raises(
        DataError, match=r"fashion_mnist/t10k-images-idx3-ubyte.gz is not a valid gzip file"
    ):
        load("fashion_mnist", "test")


def test_data_dir_that_is_not_a_folder(tmp_path):
    with pytest.raises(
        DataError, match=r"data_dir='.*nope' is not a folder.*train-images-idx3-ubyte.gz"
    ):
        load("mnist", "train", data_dir=tmp_path / "nope")


def test_uncompressed_files_are_accepted(tmp_path, isolated, write_idx_split):
    arrays = write_idx_split(tmp_path, "test", num=7, gz=False)
    unpacked = load("mnist", "test", data_dir=tmp_path)
    assert _same(unpacked, arrays)
    names = "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
    assert unpacked.source == f"IDX files {names} in {tmp_path}"
    # Beside other .gz files, the .gz files are read, and the source says which.
    packed = write_idx_split(tmp_path, "test", num=9, seed=1)
    both = load("mnist", "test", data_dir=tmp_path)
    assert _same(both, packed)
    assert both.source == f"IDX files {names.replace(',', '.gz,')}.gz in {tmp_path}"


def test_only_the_requested_split_is_needed(tmp_path, isolated, write_idx_split):
    write_idx_split(tmp_path, "test")
    assert len(load("mnist", "test", data_dir=tmp_path)) == 30
    with pytest.raises(
        DataError, match=r"no train-images-idx3-ubyte.gz or train-labels-idx1-ubyte.gz"
    ):
        load("mnist", "train", data_dir=tmp_path)


def test_attempts_are_logged(three_copies, monkeypatch, caplog):
    monkeypatch.delenv(sources.FMI_DATA_DIR_ENV)
    with caplog.at_level(logging.INFO):
        load("fashion_mnist", "train")
    logged = caplog.text
    assert "$FMI_DATA_DIR/fashion_mnist: $FMI_DATA_DIR is not set" in logged
    assert "loading from Debian package dataset-fashion-mnist" in logged


# --- nothing anywhere ------------------------------------------------------------------------


def test_missing_everywhere_names_every_way_and_is_fast(isolated, monkeypatch, tmp_path):
    monkeypatch.setenv(sources.FMI_DATA_DIR_ENV, str(tmp_path / "root"))
    start = time.monotonic()
    with pytest.raises(DataNotFoundError) as info:
        load("fashion_mnist", "train", tfds_data_dir=str(isolated))
    assert time.monotonic() - start < 5
    message = str(info.value)
    for expected in [
        "No source has the 'train' split of fashion_mnist. Tried, in order:",
        "data_dir argument: not given",
        f"$FMI_DATA_DIR/fashion_mnist: {tmp_path / 'root' / 'fashion_mnist'} is not a folder",
        "Debian package dataset-fashion-mnist: package dataset-fashion-mnist hidden by the test",
        f"tensorflow-datasets: tensorflow-datasets fashion_mnist:3.0.1 in {isolated}",
        "--config.data.data_dir=DIR",
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz",
        "ROOT/fashion_mnist/ and set FMI_DATA_DIR=ROOT",
        "`apt-get install dataset-fashion-mnist`",
        "pip install tensorflow-cpu",
        "--config.data.tfds_data_dir=DIR",
    ]:
        assert expected in message, expected


def test_missing_cifar_names_its_files_and_no_apt(isolated):
    with pytest.raises(DataNotFoundError) as info:
        load("cifar10", "test", tfds_data_dir=str(isolated))
    message = str(info.value)
    assert "cifar-10-python.tar.gz or its extracted cifar-10-batches-py/" in message
    assert "apt-get" not in message


# --- Debian package lookup -------------------------------------------------------------------


def test_folder_in_dpkg_listing():
    names = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
    assert str(sources.folder_in_dpkg_listing(DPKG_LISTING, names)) == "/opt/pkgdata/fashion-mnist"
    assert (
        sources.folder_in_dpkg_listing("/usr/x/train-images-idx3-ubyte\n", names).as_posix()
        == "/usr/x"
    )
    assert sources.folder_in_dpkg_listing("/usr/share/doc/x/README\n", names) is None


@pytest.fixture
def fake_dpkg(monkeypatch):
    """Replaces subprocess.run in sources; set .outcome to a CompletedProcess or an exception."""
    sources.find_debian_folder.cache_clear()

    class Fake:
        calls: list[list[str]] = []
        outcome: object = None

        @classmethod
        def run(cls, command, **kwargs):
            cls.calls.append(command)
            assert kwargs["timeout"] == sources.DPKG_TIMEOUT_S
            if isinstance(cls.outcome, BaseException):
                raise cls.outcome
            return cls.outcome

    Fake.calls = []
    monkeypatch.setattr(sources.subprocess, "run", Fake.run)
    yield Fake
    sources.find_debian_folder.cache_clear()


def test_debian_lookup_parses_dpkg_and_caches(fake_dpkg):
    fake_dpkg.outcome = subprocess.CompletedProcess([], 0, stdout=DPKG_LISTING, stderr="")
    names = data.DATASETS["fashion_mnist"].all_files()
    folder = sources.find_debian_folder("dataset-fashion-mnist", names)
    assert str(folder) == "/opt/pkgdata/fashion-mnist"
    assert sources.find_debian_folder("dataset-fashion-mnist", names) == folder
    assert fake_dpkg.calls == [["dpkg", "-L", "dataset-fashion-mnist"]]


@pytest.mark.parametrize(
    "outcome, reason",
    [
        (FileNotFoundError("dpkg"), "dpkg is not available"),
        (subprocess.TimeoutExpired(["dpkg"], 5), "did not answer within 5 s"),
        (
            subprocess.CompletedProcess(
                [],
                1,
                stdout="",
                stderr="dpkg-query: package 'dataset-fashion-mnist' is not installed\n",
            ),
            "package dataset-fashion-mnist is not installed (dpkg-query: package",
        ),
        (
            subprocess.CompletedProcess([], 0, stdout="/usr/share/doc/x\n", stderr=""),
            "lists none of",
        ),
    ],
)
def test_debian_lookup_copes_with_absent_dpkg_or_package(fake_dpkg, outcome, reason):
    fake_dpkg.outcome = outcome
    result = sources.find_debian_folder("dataset-fashion-mnist", ("train-images-idx3-ubyte.gz",))
    assert isinstance(result, Unavailable) and reason in result.reason


# --- contract violations found through the front door ----------------------------------------


def test_image_label_count_mismatch_names_both_files(tmp_path, isolated, write_idx_split):
    write_idx_split(tmp_path, "train", num=10)
    idx.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(9, np.uint8))
    with pytest.raises(
        DataError,
        match=r"10 images in .*train-images-idx3-ubyte.gz but 9 labels in .*train-labels-idx1-ubyte.gz",
    ):
        load("mnist", "train", data_dir=tmp_path)


def test_label_out_of_range_names_the_labels_file(tmp_path, isolated, write_idx_split):
    write_idx_split(tmp_path, "test", num=4)
    idx.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 10, 2], np.uint8))
    with pytest.raises(
        DataError,
        match=r"labels from .*t10k-labels-idx1-ubyte.gz must lie in \[0, 10\).*label 10 at index 2",
    ):
        load("mnist", "test", data_dir=tmp_path)


def test_wrong_image_dims_name_the_images_file(tmp_path, isolated, write_idx_split):
    write_idx_split(tmp_path, "test", num=4)
    idx.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((4, 32, 32), np.uint8))
    with pytest.raises(
        DataError,
        match=r"images from .*t10k-images-idx3-ubyte.gz have shape \(4, 32, 32, 1\); expected \(N, 28, 28, 1\)",
    ):
        load("fashion_mnist", "test", data_dir=tmp_path)


@pytest.mark.parametrize("packed", [False, True])
def test_cifar_from_folder_or_archive(tmp_path, isolated, write_cifar_dataset, packed):
    arrays = write_cifar_dataset(tmp_path / "src" / cifar.FOLDER_NAME)
    data_dir = tmp_path / "src"
    if packed:
        data_dir = tmp_path / "packed"
        data_dir.mkdir()
        with tarfile.open(data_dir / cifar.ARCHIVE_NAME, "w:gz") as tar:
            tar.add(tmp_path / "src" / cifar.FOLDER_NAME, arcname=cifar.FOLDER_NAME)
    train = load("cifar10", "train", data_dir=data_dir)
    test = load("cifar10", "test", data_dir=data_dir)
    assert _same(train, arrays["train"]) and _same(test, arrays["test"])
    assert train.image_shape == (32, 32, 3) and train.source.startswith(
        "CIFAR-10 python batches in "
    )


def test_cifar_label_out_of_range_names_the_batch(tmp_path, isolated, write_cifar_dataset):
    write_cifar_dataset(tmp_path)
    images = np.zeros((2, 32, 32, 3), np.uint8)
    cifar.write_cifar_batches(
        tmp_path / "bad",
        train_images=images,
        train_labels=[0, 11],
        test_images=images,
        test_labels=[0, 1],
        label_names=data.DATASETS["cifar10"].class_names,
        num_train_batches=1,
    )
    for name in ("data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"):
        (tmp_path / "bad" / name).write_bytes((tmp_path / name).read_bytes())
    with pytest.raises(DataError, match=r"labels from .*bad/data_batch_1 must lie in \[0, 10\)"):
        load("cifar10", "train", data_dir=tmp_path / "bad")


def test_cifar_meta_with_other_classes_is_rejected(tmp_path, isolated):
    images = np.zeros((1, 32, 32, 3), np.uint8)
    cifar.write_cifar_batches(
        tmp_path,
        train_images=images,
        train_labels=[0],
        test_images=images,
        test_labels=[0],
        label_names=[f"c{i}" for i in range(10)],
        num_train_batches=5,
    )
    with pytest.raises(DataError, match=r"batches.meta names the classes \['c0'.*not CIFAR-10's"):
        load("cifar10", "test", data_dir=tmp_path)


# --- load_splits -----------------------------------------------------------------------------


def test_load_splits_sizes_disjoint_deterministic(tmp_path, isolated, write_idx_dataset):
    arrays = write_idx_dataset(tmp_path, num_train=100, num_test=40)
    first = load_splits("mnist", validation_size=20, seed=5, data_dir=tmp_path)
    again = load_splits("mnist", validation_size=20, seed=5, data_dir=tmp_path)
    other = load_splits("mnist", validation_size=20, seed=6, data_dir=tmp_path)
    assert {k: len(v) for k, v in first.items()} == {"train": 80, "validation": 20, "test": 40}
    assert [first[k].split for k in ("train", "validation", "test")] == [
        "train",
        "validation",
        "test",
    ]
    # Random images are unique, so image bytes identify examples.
    train_keys = {image.tobytes() for image in first["train"].images}
    validation_keys = {image.tobytes() for image in first["validation"].images}
    assert not train_keys & validation_keys
    assert train_keys | validation_keys == {image.tobytes() for image in arrays["train"][0]}
    np.testing.assert_array_equal(first["validation"].images, again["validation"].images)
    assert not np.array_equal(first["validation"].images, other["validation"].images)
    assert _same(first["test"], arrays["test"])


def test_load_splits_with_limits_and_empty_validation(tmp_path, isolated, write_idx_dataset):
    write_idx_dataset(tmp_path, num_train=100, num_test=40)
    sets = load_splits("mnist", validation_size=0, data_dir=tmp_path, train_limit=30, test_limit=10)
    assert {k: len(v) for k, v in sets.items()} == {"train": 30, "validation": 0, "test": 10}
    assert (
        sets["validation"].images.shape == (0, 28, 28, 1)
        and sets["validation"].labels.dtype == np.int32
    )
    assert np.bincount(sets["train"].labels).tolist() == [3] * 10
    assert np.bincount(sets["test"].labels).tolist() == [1] * 10


def test_load_splits_rejects_a_validation_set_as_big_as_train(
    tmp_path, isolated, write_idx_dataset
):
    write_idx_dataset(tmp_path, num_train=10)
    with pytest.raises(DataError, match=r"validation_size must be in \[0, 10\).*got 10"):
        load_splits("mnist", validation_size=10, data_dir=tmp_path)


def test_load_splits_synthetic_uses_the_seed_for_generation():
    a = load_splits("synthetic", validation_size=10, seed=1, num_train=60, num_test=20)
    b = load_splits("synthetic", validation_size=10, seed=1, num_train=60, num_test=20)
    c = load_splits("synthetic", validation_size=10, seed=2, num_train=60, num_test=20)
    assert {k: len(v) for k, v in a.items()} == {"train": 50, "validation": 10, "test": 20}
    np.testing.assert_array_equal(a["train"].images, b["train"].images)
    assert not np.array_equal(a["test"].images, c["test"].images)


def test_no_tensorflow_after_loading_idx_files(tmp_path, isolated, write_idx_dataset):
    write_idx_dataset(tmp_path)
    load("fashion_mnist", "train", data_dir=tmp_path)
    assert "tensorflow" not in sys.modules
