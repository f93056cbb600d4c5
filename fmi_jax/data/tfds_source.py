"""tensorflow-datasets (tfds) as a source, usable without TensorFlow.

What tfds 4.9.10 can and cannot do without TensorFlow (measured, not assumed):

* Importing ``tensorflow_datasets``, constructing a builder and asking
  ``builder.is_prepared()`` work without TensorFlow and without network: GCS
  access (``tfds.core.utils.gcs_utils``) is disabled by default in 4.9.10
  (``_is_gcs_disabled = True``), and a test here checks that building a builder
  makes no DNS lookup or connection.
* It READS an already prepared ``array_record`` (or ``parquet``) dataset:
  ``builder.as_data_source(split)`` is a random-access sequence of numpy
  examples, the images decoded by PIL.
* It cannot PREPARE ``mnist``, ``fashion_mnist`` or ``cifar10``: their
  generators open files with ``tf.io.gfile.GFile``, and the ``Image`` feature
  encodes PNG with ``tf.image.encode_png``. Both raise ``ModuleNotFoundError``
  -- but only after the download, so this module checks for TensorFlow first.
* A dataset prepared in the default ``tfrecord`` format needs TensorFlow to
  read (``tfds.as_numpy(builder.as_dataset(split, batch_size=-1))``);
  ``as_data_source`` raises ``NotImplementedError`` for it.
* Offline, ``download_and_prepare`` does not fail fast: urllib3 retries each
  file with back-off; on this machine (DNS answers "unknown host" at once) it
  took 205 s to give up on Fashion-MNIST. Where DNS times out instead, it is
  longer still.

* Its download manager does NOT need TensorFlow for http(s) URLs (requests does
  the work; only archive *extraction* goes through ``tf.io.gfile``). So without
  TensorFlow, :func:`download_originals` fetches the original files (IDX
  ``*.gz``, CIFAR-10's python tarball) through ``tfds.download.DownloadManager``,
  verified against tfds's registered checksums where tfds has them, and the
  original-file readers of this package parse them.

So, for a dataset that is not prepared, this module checks that TensorFlow is
importable, then probes the download host (DNS in a thread with a join timeout,
since ``socket.getaddrinfo`` has no timeout of its own, then one TCP connect;
:data:`PROBE_TIMEOUT_S` in total), and only then lets tfds download.

So offline, ``load('mnist', 'train')`` with no copy anywhere ends in
``DataNotFoundError`` within about a second, even where DNS hangs (a test makes it
hang and checks the bound).

tfds examples are converted to the package contract (``uint8`` NHWC images,
``int32`` labels) and checked by :func:`fmi_jax.data.validation.validate_arrays`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import socket
import threading
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from fmi_jax.data.dataset import Dataset
from fmi_jax.data.errors import DataError, Unavailable
from fmi_jax.data.registry import DatasetSpec
from fmi_jax.data.validation import validate_arrays

__all__ = [
    "PROBE_TIMEOUT_S",
    "PREPARE_HINT",
    "ProbeResult",
    "download_originals",
    "load_tfds",
    "probe_host",
    "probe_url",
    "read_prepared",
    "tensorflow_available",
]

#: Upper bound in seconds on the network probe (DNS lookup plus TCP connect).
PROBE_TIMEOUT_S = 3.0

#: How to make tfds able to prepare a dataset.
PREPARE_HINT = "preparing a tfds dataset needs TensorFlow: `pip install tensorflow-cpu` (or `pip install 'fmi_jax[tfds-prepare]'`)"


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Outcome of a network probe.

    Attributes:
        online: Whether a TCP connection to the host succeeded.
        detail: What happened, for logs and error messages.
    """

    online: bool
    detail: str


def tensorflow_available() -> bool:
    """Whether TensorFlow could be imported (checked without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


def probe_host(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Tries to open a TCP connection to ``host:port`` within ``timeout`` seconds.

    The DNS lookup runs in a daemon thread that is abandoned if it does not
    answer in time (``socket.getaddrinfo`` cannot be interrupted); the connect
    attempts share what is left of the time budget.

    Args:
        host: Host name or address.
        port: TCP port.
        timeout: Total budget in seconds.

    Returns:
        Whether the host was reachable, and what happened.
    """
    deadline = time.monotonic() + timeout
    outcome: dict[str, Any] = {}

    def resolve() -> None:
        try:
            outcome["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            outcome["error"] = error

    resolver = threading.Thread(target=resolve, name=f"fmi-dns-probe-{host}", daemon=True)
    resolver.start()
    resolver.join(timeout)
    if resolver.is_alive():
        return ProbeResult(False, f"DNS lookup of {host} did not answer within {timeout:.1f} s")
    if "error" in outcome:
        return ProbeResult(False, f"DNS lookup of {host} failed ({outcome['error']})")
    last_error: OSError | None = None
    for family, sock_type, proto, _, address in outcome["addresses"]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            with socket.socket(family, sock_type, proto) as sock:
                sock.settimeout(remaining)
                sock.connect(address)
            return ProbeResult(True, f"connected to {host}:{port} ({address[0]})")
        except OSError as error:
            last_error = error
    reason = f"({last_error})" if last_error else f"(no time left of {timeout:.1f} s)"
    return ProbeResult(False, f"could not connect to {host}:{port} {reason}")


def probe_url(url: str, timeout: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Probes the host of ``url`` (port from the URL, else 443 for https, 80 for http)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return probe_host(parts.hostname or "", port, timeout)


def load_tfds(
    spec: DatasetSpec,
    split: str,
    *,
    tfds_data_dir: str | None,
    download: bool,
) -> Dataset | Unavailable:
    """Loads a split through tensorflow-datasets, preparing it if allowed and possible.

    Args:
        spec: Dataset spec with a ``tfds_name``.
        split: ``'train'`` or ``'test'``.
        tfds_data_dir: tfds data folder; ``None`` for tfds's default
            (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
        download: Whether a dataset that is not prepared may be downloaded and
            prepared (needs TensorFlow and internet).

    Returns:
        The dataset, or :class:`~fmi_jax.data.errors.Unavailable` saying why
        tfds could not provide it.

    Raises:
        DataError: If a prepared copy exists but cannot be read or is invalid.
    """
    if spec.tfds_name is None:
        return Unavailable(f"tensorflow-datasets has no {spec.name!r}")
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        return Unavailable(f"tensorflow-datasets is not installed ({error})")
    builder = tfds.builder(spec.tfds_name, data_dir=tfds_data_dir)
    where = f"tensorflow-datasets {spec.tfds_name}:{builder.version} in {builder.data_dir}"
    if not builder.is_prepared():
        not_prepared = _prepare(builder, spec, where, download)
        if not_prepared is not None:
            return not_prepared
    return read_prepared(builder, spec, split, where)


def read_prepared(builder: Any, spec: DatasetSpec, split: str, where: str) -> Dataset:
    """Reads a split of a prepared tfds dataset into a :class:`Dataset`.

    ``array_record``/``parquet`` are read through ``builder.as_data_source``
    (no TensorFlow); ``tfrecord`` needs TensorFlow and ``builder.as_dataset``.

    Args:
        builder: A ``tfds.core.DatasetBuilder`` whose data is prepared.
        spec: The dataset's spec.
        split: Split name.
        where: Description of the builder for messages and ``Dataset.source``.

    Raises:
        DataError: If the data is in tfrecord format and TensorFlow is missing,
            or if the examples break the contract.
    """
    start = time.monotonic()
    image_key, label_key = _supervised_keys(builder, where)
    try:
        source = builder.as_data_source(split)
    except NotImplementedError:
        images, labels = _read_with_tensorflow(builder, split, where, image_key, label_key)
        fmt = "tfrecord"
    else:
        images, labels = _collect(source, spec.image_shape, image_key, label_key, where)
        fmt = "random access"
    images, labels = validate_arrays(
        images,
        labels,
        image_shape=spec.image_shape,
        num_classes=spec.num_classes,
        images_from=where,
    )
    logging.info(
        "Read %d %s examples from %s (%s) in %.1f s.",
        len(labels),
        split,
        where,
        fmt,
        time.monotonic() - start,
    )
    return Dataset(
        images, labels, spec.name, split, spec.class_names, source=f"{where}, split {split!r}"
    )


def _prepare(builder: Any, spec: DatasetSpec, where: str, download: bool) -> Unavailable | None:
    """Downloads and prepares the dataset; returns why not if it cannot."""
    if not download:
        return Unavailable(f"{where}: not prepared, and download=False")
    if not tensorflow_available():
        return Unavailable(
            f"{where}: not prepared, and TensorFlow is not installed ({PREPARE_HINT}; "
            "or use the original files instead)"
        )
    probe = probe_url(spec.tfds_download_url or "")
    logging.info("Network probe for %s: %s.", spec.tfds_name, probe.detail)
    if not probe.online:
        return Unavailable(f"{where}: not prepared, and offline: {probe.detail}")
    logging.info("Preparing %s with tfds (array_record format).", where)
    try:
        builder.download_and_prepare(file_format="array_record")
    except Exception as error:  # noqa: BLE001 -- tfds raises many types; report whichever it was
        logging.warning("tfds download_and_prepare of %s failed: %r", where, error)
        return Unavailable(
            f"{where}: download_and_prepare failed ({type(error).__name__}: {error})"
        )
    return None


def _supervised_keys(builder: Any, where: str) -> tuple[str, str]:
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise DataError(
            f"{where} has no (image, label) supervised keys (got {keys!r}); is it an image classification dataset?"
        )
    return keys[0], keys[1]


def _collect(
    source: Sequence[dict[str, Any]],
    image_shape: tuple[int, int, int],
    image_key: str,
    label_key: str,
    where: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Copies a random-access tfds source into preallocated arrays, one ``source[i]`` at a time."""
    num = len(source)
    images = np.empty((num, *image_shape), np.uint8)
    labels = np.empty(num, np.int64)
    for i in range(num):
        example = source[i]
        image = np.asarray(example[image_key])
        if image.shape != image_shape or image.dtype != np.uint8:
            raise DataError(
                f"{where}: example {i} has a {image.dtype} image of shape {image.shape}; expected "
                f"uint8 {image_shape}. The prepared data does not match this dataset; prepare it again."
            )
        images[i] = image
        labels[i] = int(example[label_key])
    return images, labels


def _read_with_tensorflow(
    builder: Any, split: str, where: str, image_key: str, label_key: str
) -> tuple[np.ndarray, np.ndarray]:
    if not tensorflow_available():
        raise DataError(
            f"{where} is prepared in the tfrecord format, which only TensorFlow can read, and "
            "TensorFlow is not installed. Install it (`pip install tensorflow-cpu`), or prepare the "
            "dataset again in another folder with file_format='array_record' (readable without "
            "TensorFlow), or use the original files."
        )
    import tensorflow_datasets as tfds

    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    return np.asarray(arrays[image_key]), np.asarray(arrays[label_key])


def download_originals(spec: DatasetSpec, *, tfds_data_dir: str | None) -> Path | Unavailable:
    """Fetches the original files with tfds's download manager; no TensorFlow needed.

    The files land in ``<tfds data_dir>/downloads`` under tfds's own names
    (checksummed against tfds's registry where the URL is registered there) and
    are then linked, or copied, under their original names into
    ``<tfds data_dir>/downloads/fmi_jax_originals/<name>/``, the folder this
    function returns. A folder that already holds every file is returned as is.

    Returns:
        The folder of original files, or :class:`Unavailable` saying why not.
    """
    if not spec.original_urls:
        return Unavailable(f"no original-file URLs are known for {spec.name}")
    root = Path(
        tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    ).expanduser()
    folder = root / "downloads" / "fmi_jax_originals" / spec.name
    if all((folder / name).is_file() for name in spec.original_urls):
        return folder
    first_url = next(iter(spec.original_urls.values()))
    probe = probe_url(first_url)
    logging.info("Network probe for the original %s files: %s.", spec.name, probe.detail)
    if not probe.online:
        return Unavailable(f"offline: {probe.detail}")
    import tensorflow_datasets as tfds

    url_infos = {}
    if spec.tfds_name:
        known = tfds.builder(spec.tfds_name, data_dir=tfds_data_dir).url_infos or {}
        url_infos = {url: info for url, info in known.items() if url in spec.original_urls.values()}
    manager = tfds.download.DownloadManager(
        download_dir=root / "downloads", url_infos=url_infos or None, dataset_name=spec.tfds_name
    )
    logging.info(
        "Downloading the original %s files (%s) with tfds's download manager.",
        spec.name,
        ", ".join(spec.original_urls),
    )
    try:
        paths = manager.download(dict(spec.original_urls))
    except Exception as error:  # noqa: BLE001 -- tfds/requests raise many types; report whichever it was
        return Unavailable(f"failed ({type(error).__name__}: {error})")
    folder.mkdir(parents=True, exist_ok=True)
    for name, downloaded in paths.items():
        _place(Path(os.fspath(downloaded)), folder / name)
    return folder


def _place(source: Path, target: Path) -> None:
    """Hard-links (or copies) ``source`` to ``target`` atomically."""
    if target.is_file():
        return
    tmp = target.with_name(f".{target.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    tmp.replace(target)
