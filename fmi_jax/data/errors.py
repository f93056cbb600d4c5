"""The two exceptions of :mod:`fmi_jax.data`, and the not-found outcome of a source.

A single class cannot derive from both ``ValueError`` and ``FileNotFoundError``
(their instance layouts conflict), so there are two:

* :class:`DataError` -- the data or the arguments are wrong: a corrupt or
  truncated file, arrays of the wrong shape, an unknown dataset name or split.
  Retrying will not help; the message names the file and what is wrong.
* :class:`DataNotFoundError` -- no source has the data. The message lists every
  place that was tried, what was found there, and every way to get the data.

A source that simply does not have the data returns :class:`Unavailable`
instead of raising, so the resolver can try the next source.
"""

from __future__ import annotations

import dataclasses

__all__ = ["DataError", "DataNotFoundError", "Unavailable"]


class DataError(ValueError):
    """Corrupt or invalid data, or invalid arguments to a data function."""


class DataNotFoundError(FileNotFoundError):
    """No source (given folder, well-known folder, tensorflow-datasets) has the data."""


@dataclasses.dataclass(frozen=True)
class Unavailable:
    """A source's answer when it does not have the data (not an error by itself).

    The resolver in :mod:`fmi_jax.data.sources` collects these from every
    source it tries and puts them into the :class:`DataNotFoundError` message.

    Attributes:
        reason: What the source found, e.g. ``"$FMI_DATA_DIR is not set"``.
    """

    reason: str
