"""TensorBoard events: what EventLog writes, read back by an independent parser of the
TFRecord framing and TensorBoard's Event protocol buffer."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from fmi_jax.train.tensorboard import EventLog

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")


def read_events(logdir: Path) -> list:
    """Every Event of every event file in ``logdir``: TFRecords are
    ``uint64 length, uint32 crc, data, uint32 crc`` (little-endian)."""
    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            start = offset + 12
            event = event_pb2.Event()
            event.ParseFromString(data[start : start + length])
            events.append(event)
            offset = start + length + 4
    return events


def values(events, kind: str) -> dict:
    """tag -> [(step, value)] for scalars; tag -> decoded payload for text and images."""
    out: dict = {}
    for event in events:
        for value in event.summary.value:
            if kind == "scalar" and value.HasField("simple_value"):
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
                out[value.tag].sort()
            elif kind == "image" and value.HasField("image"):
                out[value.tag] = value.image
            elif kind == "text" and value.HasField("tensor"):
                out[value.tag] = b"".join(value.tensor.string_val).decode()
    return out


def test_scalars_text_and_images_read_back(tmp_path):
    png = tmp_path / "figure.png"
    from matplotlib.image import imsave

    imsave(png, np.linspace(0, 1, 6 * 8 * 3).reshape(6, 8, 3))
    with EventLog(tmp_path / "tb") as log:
        log.record(4, {"epoch": 4, "train_loss": 0.5, "val_accuracy": 0.75, "epoch_time_s": 3.0})
        log.config({"learning_rate": 0.01, "model": {"name": "cnn"}})
        for epoch, loss in ((1, 2.5), (2, 1.25)):
            log.scalars(
                epoch, {"loss": loss, "accuracy": 0.5 * epoch, "split": "x"}, prefix="train/"
            )
        log.scalars(3, {"loss": float("nan"), "flag": True}, prefix="train/")
        log.image("sheets/sample_000", png, step=2)
    events = read_events(tmp_path / "tb")
    scalars = values(events, "scalar")
    assert scalars == {
        "train/loss": [(1, 2.5), (2, 1.25), (4, 0.5)],
        "val/accuracy": [(4, 0.75)],
        "run/epoch_time_s": [(4, 3.0)],
        "train/accuracy": [(1, 0.5), (2, 1.0)],
    }
    text = values(events, "text")
    assert '"learning_rate": 0.01' in text["config/text_summary"]
    image = values(events, "image")["sheets/sample_000"]
    assert (image.height, image.width) == (6, 8)
    assert image.encoded_image_string.startswith(b"\x89PNG")


def test_a_disabled_log_writes_nothing(tmp_path):
    log = EventLog(tmp_path / "tb", enabled=False)
    log.scalars(1, {"loss": 1.0})
    log.text("t", "x")
    log.close()
    assert not (tmp_path / "tb").exists()


def test_a_training_run_writes_its_metrics_and_config(synthetic_run):
    """The session's 2-epoch synthetic run: one train/loss and val/accuracy point per
    epoch, matching metrics.jsonl, the test metrics at the last epoch, the config."""
    import json

    events = read_events(synthetic_run / "tensorboard")
    scalars = values(events, "scalar")
    history = [json.loads(line) for line in (synthetic_run / "metrics.jsonl").open()]
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]
    np.testing.assert_allclose(
        [v for _, v in scalars["train/loss"]], [r["train_loss"] for r in history], rtol=1e-6
    )
    assert [step for step, _ in scalars["val/accuracy"]] == [1, 2]
    summary = json.loads((synthetic_run / "train_summary.json").read_text())
    assert scalars["test/accuracy"] == [(2, pytest.approx(summary["test_accuracy"]))]
    assert '"num_epochs": 2' in values(events, "text")["config/text_summary"]
