"""A self-contained HTML page for a run folder: read offline, in any browser, forever.

One file, inline CSS, no JavaScript, nothing fetched from the network: figures are
PNGs referenced by paths relative to the page (so the folder can be moved, zipped or
served as it is), tables are real ``<table>`` elements (selectable, searchable,
readable by screen readers and by ``pandas.read_html``), every text is HTML-escaped
and every number formatted with :func:`format_number`.

    write_page(out / "index.html", title="Saliency on CIFAR-10", sections=[
        Section("Summary", table=Table(["method", "seconds"], [["saliency", 0.012]])),
        Section("Examples", images=[Image("sheets/0.png", "true cat, predicted cat")]),
    ])

Pages refuse to reference what is not there: an image or link must be a relative
path (no ``..``, no URL) to a file that exists next to the page when it is written.
"""

from __future__ import annotations

import dataclasses
import html
import math
import numbers
import os
import re
import urllib.parse
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from fmi_jax import runs

__all__ = ["Image", "Link", "Section", "Table", "format_number", "render_page", "write_page"]


@dataclasses.dataclass(frozen=True)
class Image:
    """A figure on the page: `src` relative to the page, shown with its caption."""

    src: str
    caption: str = ""


@dataclasses.dataclass(frozen=True)
class Link:
    """A link to a file next to the page (a JSON, CSV or NPZ of the run)."""

    href: str
    text: str = ""


@dataclasses.dataclass(frozen=True)
class Table:
    """A table: one header row and rows of cells (text or numbers).

    Numbers are formatted with :func:`format_number` and right-aligned; other cells
    are shown with ``str`` and escaped.
    """

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""


@dataclasses.dataclass(frozen=True)
class Section:
    """A heading, then paragraphs, links, a table and images, in that order."""

    heading: str
    paragraphs: Sequence[str] = ()
    table: Table | None = None
    images: Sequence[Image] = ()
    links: Sequence[Link] = ()


_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: #1d2330; background: #f6f7f9; margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; background: #fff;
  min-height: 100vh; box-sizing: border-box; }
h1 { font-size: 26px; margin: 0 0 8px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #e3e6eb; }
p { margin: 6px 0 10px; max-width: 80ch; }
nav { margin: 10px 0 18px; font-size: 14px; }
nav a { margin-right: 14px; }
a { color: #1f5fbf; }
ul.links { padding-left: 20px; margin: 6px 0 12px; }
.scroll { overflow-x: auto; margin: 8px 0 14px; }
table { border-collapse: collapse; font-size: 13px; }
caption { caption-side: top; text-align: left; color: #555; padding: 0 0 6px; }
th, td { border: 1px solid #d5d9e0; padding: 4px 7px; vertical-align: top; }
th { background: #eef1f5; text-align: left; font-weight: 600; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.figures { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0; padding: 8px; border: 1px solid #e3e6eb; border-radius: 4px;
  background: #fff; max-width: 100%; box-sizing: border-box; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 13px; color: #444; margin-top: 6px; max-width: 80ch; }
"""


def format_number(value: Any) -> str:
    """Numbers for people: ints in full, floats to 4 significant digits (scientific
    notation below 1e-3 or from 1e6 on), NaN as 'nan', booleans as 'yes'/'no'."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if value == 0:
            return "0"
        if 1e-3 <= abs(value) < 1e6:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _relative(target: str, folder: Path | None, what: str) -> str:
    """`target` checked to be a relative path to an existing file inside `folder`,
    returned percent-encoded for an attribute."""
    target = str(target)
    posix = PurePosixPath(target.replace(os.sep, "/"))
    # 'x:y.png' reads as a URL scheme; a file of that name next to the page is taken
    # (':' is percent-encoded below, so the link is relative).
    exists = bool(target) and folder is not None and (folder / posix).is_file()
    if (
        not target
        or (urllib.parse.urlsplit(target).scheme and not exists)
        or posix.is_absolute()
        or ".." in posix.parts
    ):
        raise ValueError(
            f"{what} {target!r} must be a path relative to the page, inside its folder"
        )
    if folder is not None and not exists:
        raise ValueError(f"{what} {target!r} does not exist next to the page (in {folder})")
    return urllib.parse.quote(posix.as_posix())


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, k = base, 2
    while slug in used:
        slug, k = f"{base}-{k}", k + 1
    used.add(slug)
    return slug


def _table(table: Table) -> list[str]:
    width = len(table.header)
    for i, row in enumerate(table.rows):
        if len(row) != width:
            raise ValueError(f"table row {i} has {len(row)} cells for {width} columns")
    out = ['<div class="scroll"><table>']
    if table.caption:
        out.append(f"<caption>{_e(table.caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in table.header))
    out.append("</tr></thead><tbody>")
    for row in table.rows:
        cells = (
            f'<td class="num">{_e(format_number(c))}</td>'
            if _is_number(c)
            else f"<td>{_e(format_number(c))}</td>"
            for c in row
        )
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return out


def render_page(
    *,
    title: str,
    intro: str | Sequence[str] | None = None,
    sections: Sequence[Section] = (),
    folder: str | Path | None = None,
) -> str:
    """The page as a string. With `folder`, every image and link must exist in it."""
    folder = None if folder is None else Path(folder)
    used: set[str] = set()
    slugs = [_slug(s.heading, used) for s in sections]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body><main>",
        f"<h1>{_e(title)}</h1>",
    ]
    for paragraph in [intro] if isinstance(intro, str) else intro or ():
        out.append(f"<p>{_e(paragraph)}</p>")
    if len(sections) > 1:
        out.append(
            "<nav>"
            + "".join(f'<a href="#{slug}">{_e(s.heading)}</a>' for s, slug in zip(sections, slugs))
            + "</nav>"
        )
    for section, slug in zip(sections, slugs):
        out.append(f'<section id="{slug}"><h2>{_e(section.heading)}</h2>')
        out.extend(f"<p>{_e(p)}</p>" for p in section.paragraphs)
        if section.links:
            out.append('<ul class="links">')
            for link in section.links:
                href = _relative(link.href, folder, "link")
                out.append(f'<li><a href="{href}">{_e(link.text or link.href)}</a></li>')
            out.append("</ul>")
        if section.table is not None:
            out.extend(_table(section.table))
        if section.images:
            out.append('<div class="figures">')
            for image in section.images:
                src = _relative(image.src, folder, "image")
                alt = image.caption or image.src
                out.append(
                    f'<figure><a href="{src}"><img src="{src}" alt="{_e(alt)}"></a>'
                    + (f"<figcaption>{_e(image.caption)}</figcaption>" if image.caption else "")
                    + "</figure>"
                )
            out.append("</div>")
        out.append("</section>")
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


def write_page(
    path: str | Path,
    *,
    title: str,
    intro: str | Sequence[str] | None = None,
    sections: Sequence[Section] = (),
) -> Path:
    """Writes the page to `path` atomically (a temporary file in the same folder, then
    `os.replace`), so a reader never sees half a page; returns `path`.

    Raises:
      ValueError: an image or link is not a relative path to an existing file next to
        the page, or a table row has the wrong number of cells.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_page(title=title, intro=intro, sections=sections, folder=path.parent)
    runs.write_text_atomic(path, text)
    return path
