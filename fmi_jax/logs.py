"""Logging set-up shared by the experiment scripts."""

from __future__ import annotations

import logging as py_logging

from absl import logging

__all__ = ["quiet_libraries"]

_CHATTY = ("/orbax/", "/tensorflow_datasets/", "/etils/")


class _LibraryFilter(py_logging.Filter):
    """Drops INFO and DEBUG records logged from inside orbax, tfds and etils."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        if record.levelno >= py_logging.WARNING:
            return True
        return not any(part in record.pathname for part in _CHATTY)


def quiet_libraries() -> None:
    """Keeps fmi_jax's own INFO logs and the libraries' warnings, not their INFO chatter."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _LibraryFilter) for f in handler.filters):
        handler.addFilter(_LibraryFilter())
