"""Fetching the original files through tfds's download manager, without TensorFlow.

A loopback HTTP server stands in for the dataset host, serving IDX files the
test writes in the original format.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import sys
import threading

import numpy as np
import pytest

from fmi_jax import data
from fmi_jax.data import idx, registry, sources, tfds_source


@pytest.fixture
def idx_server(tmp_path):
    """Serves tiny MNIST-format files on 127.0.0.1; yields (base_url, arrays)."""
    served = tmp_path / "served"
    served.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 30), ("t10k", 12)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        idx.write_idx(served / f"{split}-images-idx3-ubyte.gz", images)
        idx.write_idx(served / f"{split}-labels-idx1-ubyte.gz", labels)
        arrays[split] = (images, labels)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", arrays
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def local_mnist(idx_server, monkeypatch):
    """The 'mnist' spec pointed at the loopback server; no local copies, no TensorFlow."""
    base, arrays = idx_server
    spec = registry.get_spec("mnist")
    local = dataclasses.replace(spec, original_urls={n: base + n for n in spec.original_urls})
    monkeypatch.setattr(
        sources,
        "get_spec",
        lambda name: local if name == "mnist" else registry.get_spec(name),
        raising=False,
    )
    monkeypatch.delenv(sources.FMI_DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: False)
    return local, arrays


def test_download_originals_places_files_under_their_original_names(local_mnist, tmp_path):
    spec, arrays = local_mnist
    folder = tfds_source.download_originals(spec, tfds_data_dir=str(tmp_path / "tfds"))
    assert sorted(p.name for p in folder.iterdir()) == sorted(spec.original_urls)
    test = data.load("mnist", "test", data_dir=str(folder))
    np.testing.assert_array_equal(test.images[..., 0], arrays["t10k"][0])
    np.testing.assert_array_equal(test.labels, arrays["t10k"][1])
    # A second call finds the folder complete and downloads nothing.
    assert tfds_source.download_originals(spec, tfds_data_dir=str(tmp_path / "tfds")) == folder


def test_front_door_falls_back_to_the_download_without_tensorflow(local_mnist, tmp_path):
    spec, arrays = local_mnist
    train = data.load("mnist", "train", tfds_data_dir=str(tmp_path / "tfds"))
    np.testing.assert_array_equal(train.images[..., 0], arrays["train"][0])
    assert "fmi_jax_originals" in train.source
    assert "tensorflow" not in sys.modules


def test_download_is_skipped_when_download_is_false(local_mnist, tmp_path):
    with pytest.raises(data.DataNotFoundError, match="download=False"):
        data.load("mnist", "train", tfds_data_dir=str(tmp_path / "tfds"), download=False)


def test_offline_download_is_unavailable_not_a_hang(monkeypatch, tmp_path):
    spec = registry.get_spec("mnist")
    monkeypatch.setattr(
        tfds_source,
        "probe_url",
        lambda url, timeout=3.0: tfds_source.ProbeResult(False, "no route (test)"),
    )
    result = tfds_source.download_originals(spec, tfds_data_dir=str(tmp_path))
    assert not isinstance(result, type(tmp_path)) and "offline" in result.reason
