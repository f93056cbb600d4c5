"""tensorflow-datasets without TensorFlow and without network.

The reading path runs against ``tfds.testing.mock_data``, whose
``as_data_source`` returns deterministic mock examples; only ``ds[i]`` is used
(the mock's ``__getitems__`` is broken). The network probe runs against
loopback sockets only.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from unittest import mock

import numpy as np
import pytest

from fmi_jax.data import DataError, DataNotFoundError, load, tfds_source
from fmi_jax.data.registry import DATASETS

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture
def mock_tfds():
    """tfds mocked to 12 examples per split; yields a function reading the mock's own examples."""
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):

        def examples(name: str, split: str) -> list[dict]:
            source = tfds.builder(name).as_data_source(split)
            return [source[i] for i in range(len(source))]

        yield examples


def _prepared(value: bool = True):
    return mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", lambda self: value)


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10"])
def test_prepared_dataset_is_read_through_data_source(isolated, mock_tfds, name):
    spec = DATASETS[name]
    with _prepared():
        ds = load(name, "test", tfds_data_dir=str(isolated))
    expected = mock_tfds(spec.tfds_name, "test")
    assert len(ds) == 12 and ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
    assert ds.image_shape == spec.image_shape and ds.class_names == spec.class_names
    np.testing.assert_array_equal(ds.images, np.stack([e["image"] for e in expected]))
    np.testing.assert_array_equal(ds.labels, [int(e["label"]) for e in expected])
    assert (
        ds.source.startswith(f"tensorflow-datasets {spec.tfds_name}:")
        and "split 'test'" in ds.source
    )
    assert "tensorflow" not in sys.modules


def test_not_prepared_without_tensorflow_never_prepares_and_probes_once_for_the_originals(
    isolated, mock_tfds, probe_calls
):
    with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as prepare:
        with pytest.raises(DataNotFoundError) as info:
            load("mnist", "train", tfds_data_dir=str(isolated))
    prepare.assert_not_called()
    assert "not prepared, and TensorFlow is not installed" in str(info.value)
    assert "download of the original files: offline" in str(info.value)
    assert "pip install tensorflow-cpu" in str(info.value)
    assert probe_calls == [DATASETS["mnist"].original_urls["train-images-idx3-ubyte.gz"]]


def test_not_prepared_offline_probes_once_and_gives_up(
    isolated, mock_tfds, probe_calls, monkeypatch
):
    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: True)
    with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as prepare:
        with pytest.raises(
            DataNotFoundError, match=r"not prepared, and offline: DNS lookup failed"
        ):
            load("fashion_mnist", "train", tfds_data_dir=str(isolated))
    assert probe_calls == [DATASETS["fashion_mnist"].tfds_download_url]
    prepare.assert_not_called()


def test_not_prepared_online_prepares_array_record_then_reads(isolated, mock_tfds, monkeypatch):
    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: True)
    monkeypatch.setattr(
        tfds_source, "probe_url", lambda url: tfds_source.ProbeResult(True, "patched online")
    )
    with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as prepare:
        ds = load("mnist", "train", tfds_data_dir=str(isolated))
    prepare.assert_called_once_with(file_format="array_record")
    assert len(ds) == 12 and ds.class_names == DATASETS["mnist"].class_names


def test_failed_download_is_reported(isolated, mock_tfds, monkeypatch):
    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: True)
    monkeypatch.setattr(
        tfds_source, "probe_url", lambda url: tfds_source.ProbeResult(True, "patched online")
    )
    failing = mock.patch.object(
        tfds.core.DatasetBuilder,
        "download_and_prepare",
        side_effect=ConnectionError("connection reset"),
    )
    with (
        failing,
        pytest.raises(
            DataNotFoundError,
            match=r"download_and_prepare failed \(ConnectionError: connection reset\)",
        ),
    ):
        load("mnist", "train", tfds_data_dir=str(isolated))


def test_download_false_is_respected(isolated, mock_tfds, probe_calls):
    with pytest.raises(DataNotFoundError, match=r"not prepared, and download=False"):
        load("cifar10", "train", tfds_data_dir=str(isolated), download=False)
    assert probe_calls == []


class _TfrecordOnlyBuilder:
    """Stands in for a builder prepared in tfrecord format (as_data_source refuses it)."""

    class info:  # noqa: N801 -- mimics the attribute
        supervised_keys = ("image", "label")

    def as_data_source(self, split):
        raise NotImplementedError(
            "Random access data source for file format tfrecord is not supported."
        )


def test_tfrecord_without_tensorflow_says_what_to_do(monkeypatch):
    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: False)
    with pytest.raises(
        DataError,
        match=r"X is prepared in the tfrecord format.*pip install tensorflow-cpu.*array_record",
    ):
        tfds_source.read_prepared(_TfrecordOnlyBuilder(), DATASETS["mnist"], "train", "X")


def test_examples_of_the_wrong_shape_are_a_data_error(mock_tfds):
    builder = tfds.builder("cifar10")  # 32x32x3 examples, read as if they were MNIST
    with pytest.raises(
        DataError,
        match=r"W: example 0 has a uint8 image of shape \(32, 32, 3\); expected uint8 \(28, 28, 1\)",
    ):
        tfds_source.read_prepared(builder, DATASETS["mnist"], "train", "W")


def test_builder_construction_touches_no_network(isolated, monkeypatch):
    touched: list[object] = []

    def refuse(*args, **kwargs):
        touched.append(args)
        raise AssertionError("network used")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(DataNotFoundError):
        load("mnist", "test", tfds_data_dir=str(isolated))
    assert touched == []


def test_gcs_access_is_disabled_in_installed_tfds():
    """tfds_source's docstring relies on this; a tfds upgrade that flips it must be noticed."""
    from tensorflow_datasets.core.utils import gcs_utils

    assert gcs_utils._is_gcs_disabled is True


def test_whole_not_found_path_is_fast_with_a_failing_probe(isolated, monkeypatch):
    monkeypatch.setattr(
        tfds_source, "tensorflow_available", lambda: True
    )  # so the probe is reached
    start = time.monotonic()
    for name in ("mnist", "fashion_mnist", "cifar10"):
        with pytest.raises(DataNotFoundError):
            load(name, "train", tfds_data_dir=str(isolated))
    assert time.monotonic() - start < 10


# --- the network probe, on loopback only ------------------------------------------------------


def test_probe_reaches_a_local_listener():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        result = tfds_source.probe_host("127.0.0.1", server.getsockname()[1], timeout=2)
    assert result.online and "connected to 127.0.0.1" in result.detail


def test_probe_reports_a_refused_connection():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nobody listens once it is closed
    result = tfds_source.probe_host("127.0.0.1", port, timeout=2)
    assert not result.online and f"could not connect to 127.0.0.1:{port}" in result.detail


def test_probe_gives_up_on_a_hanging_dns_lookup(monkeypatch):
    release = threading.Event()

    def hanging_lookup(*args, **kwargs):
        release.wait(30)
        raise socket.gaierror("released by the test")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    start = time.monotonic()
    try:
        result = tfds_source.probe_host("dataset-host.invalid", 443, timeout=0.3)
    finally:
        release.set()
    assert time.monotonic() - start < 1.5
    assert not result.online and "did not answer within 0.3 s" in result.detail


def test_probe_reports_a_failed_dns_lookup(monkeypatch):
    def failing_lookup(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", failing_lookup)
    result = tfds_source.probe_host("dataset-host.invalid", 80)
    assert not result.online and "DNS lookup of dataset-host.invalid failed" in result.detail


@pytest.mark.parametrize(
    "url, host, port",
    [
        (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
            80,
        ),
        ("https://storage.googleapis.com/cvdf-datasets/mnist/", "storage.googleapis.com", 443),
        ("https://example.org:8443/x", "example.org", 8443),
    ],
)
def test_probe_url_picks_host_and_port(monkeypatch, url, host, port):
    seen = []
    monkeypatch.setattr(
        tfds_source,
        "probe_host",
        lambda h, p, t: seen.append((h, p)) or tfds_source.ProbeResult(False, ""),
    )
    tfds_source.probe_url(url)
    assert seen == [(host, port)]
