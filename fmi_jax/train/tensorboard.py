"""TensorBoard event files for a run, without TensorFlow.

JAX researchers look at runs in TensorBoard (the flax examples log there), so every
run also writes event files under ``<workdir>/tensorboard/``: one scalar per metric per
epoch, the run's config as text, and figures (the explain study's sheets) as images.
``metrics.jsonl`` stays the record the code reads back; the events are for people.

The writer is ``tensorboardX`` (pure Python on top of ``protobuf``, which fmi_jax's
other dependencies already install): TensorBoard's own writer needs TensorFlow. Only
process 0 writes, as for every other file of a run; elsewhere :class:`EventLog` does
nothing. A resumed run appends a new event file to the same folder, and TensorBoard
merges the files of a folder by step.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EventLog", "TENSORBOARD_DIR"]

TENSORBOARD_DIR = "tensorboard"


class EventLog:
    """Scalars, text and images of one run, as TensorBoard event files.

    Args:
      logdir: the folder of the event files (created), e.g. ``workdir / 'tensorboard'``.
      enabled: ``False`` (or not process 0) makes every call a no-op, so callers need
        no conditions of their own.
    """

    def __init__(self, logdir: str | Path, *, enabled: bool = True) -> None:
        self.logdir = Path(logdir)
        self._enabled = enabled
        self._open = None

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def _writer(self) -> Any:
        """The writer, made at the first entry: a run that writes nothing (a finished
        run started again) leaves no empty event file behind."""
        if self._enabled and self._open is None:
            from tensorboardX import SummaryWriter  # imported only where events are written

            self.logdir.mkdir(parents=True, exist_ok=True)
            self._open = SummaryWriter(str(self.logdir), flush_secs=30)
        return self._open

    def scalars(self, step: int, values: Mapping[str, Any], *, prefix: str = "") -> None:
        """One scalar per finite number in ``values``, tagged ``prefix + name``
        (``'train/loss'``); strings, lists and non-finite values are skipped."""
        numbers = {
            name: float(value)
            for name, value in values.items()
            if isinstance(value, (int, float, np.number))
            and not isinstance(value, bool)
            and np.isfinite(value)
        }
        if numbers and self._writer is not None:
            for name, value in numbers.items():
                self._writer.add_scalar(f"{prefix}{name}", value, int(step))

    def record(self, step: int, record: Mapping[str, Any]) -> None:
        """A ``metrics.jsonl``-style record, grouped the way TensorBoard shows it:
        ``train_loss`` -> ``train/loss``, ``val_accuracy`` -> ``val/accuracy``,
        ``test_f1`` -> ``test/f1``, anything else under ``run/`` (``run/epoch_time_s``)."""
        grouped: dict[str, Any] = {}
        for name, value in record.items():
            if name in ("epoch", "step"):
                continue
            split, _, rest = name.partition("_")
            tag = f"{split}/{rest}" if split in ("train", "val", "test") and rest else f"run/{name}"
            grouped[tag] = value
        self.scalars(step, grouped)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """A text entry (TensorBoard renders it as markdown)."""
        if self._writer is not None:
            self._writer.add_text(tag, text, int(step))

    def config(self, config: Mapping[str, Any]) -> None:
        """The run's resolved config as indented JSON, shown verbatim."""
        body = json.dumps(config, indent=2, sort_keys=True, default=str)
        self.text("config", "    " + body.replace("\n", "\n    "))

    def image(self, tag: str, png: str | Path, step: int = 0) -> None:
        """A figure already written as a PNG file, as an image entry."""
        if self._writer is None:
            return
        from matplotlib.image import imread

        pixels = imread(str(png))  # (H, W, 3 or 4) floats in [0, 1]
        self._writer.add_image(tag, pixels[..., :3], int(step), dataformats="HWC")

    def flush(self) -> None:
        if self._open is not None:
            self._open.flush()

    def close(self) -> None:
        """Closes the event file; entries after it go to a new one."""
        if self._open is not None:
            self._open.close()
            self._open = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
