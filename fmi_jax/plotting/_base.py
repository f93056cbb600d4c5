"""Shared figure plumbing: building figures outside pyplot, and saving them.

Figures are :class:`matplotlib.figure.Figure` objects built directly, never through
pyplot: nothing is registered with pyplot's global figure list (so figures made in a
loop are freed when dropped, and a notebook does not display them twice), and no
backend is chosen, so importing fmi_jax leaves a notebook's backend alone and
drawing works headless. ``Figure.savefig`` renders with Agg on its own.

Jupyter shows a figure that ends a cell through its ``_repr_png_``, whether or not
pyplot or ``%matplotlib inline`` was ever used (with the inline backend active,
IPython's own figure formatter takes precedence; either way it is shown once).
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

from matplotlib.figure import Figure

__all__ = ["finish", "new_figure", "save"]


class _Figure(Figure):
    """A plain Figure that also renders itself as a PNG for notebooks."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


def new_figure(**kwargs) -> Figure:
    """A Figure that pyplot does not know about (`kwargs` go to ``Figure``)."""
    return _Figure(**kwargs)


def save(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Writes `fig` to `path` atomically (a temporary file in the same folder, then a
    rename), creating the parent folders; the format follows the suffix (PNG without
    one). The bounding box is cropped to what was drawn."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix[1:].lower() or "png"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:  # the umask sets its mode, as for any other file
            fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def finish(fig: Figure, path: str | Path | None) -> Figure:
    """Saves `fig` when a path is given; returns the figure either way."""
    if path is not None:
        save(fig, path)
    return fig
