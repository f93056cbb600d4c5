"""The README's "Explain your own model" code runs as written, so it cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Explain your own model"


def _blocks() -> list[str]:
    """The ```python blocks of the README's "Explain your own model" section, in order."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end >= 0 else None]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_a_linen_and_an_nnx_block():
    blocks = _blocks()
    assert len(blocks) >= 2
    assert any("flax.linen" in b for b in blocks)
    assert any("nnx" in b for b in blocks)
    assert all(len(b.strip().splitlines()) <= 24 for b in blocks)


@pytest.mark.slow
def test_readme_explain_your_own_model_runs(tmp_path, monkeypatch):
    """Every block, in order, in one namespace (later blocks reuse `x` and the imports),
    with the working directory in a temporary folder for the report it writes."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for block in _blocks():
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    x = np.asarray(namespace["x"])
    for name in ("ig", "cam"):
        value = np.asarray(namespace[name])
        assert np.isfinite(value).all()
        assert value.shape[0] == x.shape[0]
    assert (tmp_path / "report" / "index.html").exists()


def _anchors(md: Path) -> set[str]:
    """GitHub's anchors of the headings of `md`."""
    out = set()
    for line in md.read_text().splitlines():
        if line.startswith("#"):
            title = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower())
            out.add(title.replace(" ", "-"))
    return out


def test_every_relative_link_of_the_readme_and_docs_resolves():
    """Files and section anchors that README.md and docs/*.md link to exist, so moving
    a section cannot leave a dead link behind."""
    root = README.parent
    dead = []
    for md in [README, *sorted((root / "docs").glob("*.md"))]:
        for link in re.findall(r"\]\(([^)\s]+)\)", md.read_text()):
            if link.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = link.partition("#")
            target = (md.parent / path) if path else md
            if not target.exists():
                dead.append(f"{md.name}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                dead.append(f"{md.name}: {link} (no such section)")
    assert not dead, dead


@pytest.mark.parametrize(
    "page", [README, *sorted((README.parent / "docs").glob("*.md"))], ids=lambda p: p.name
)
def test_every_code_fence_closes_where_it_should(page):
    """A stray fence swallows the headings after it into a code block: inside a block a
    fence with a language (```python) is text, and the page must end outside one."""
    opened = None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        fence = re.match(r"\s*(```+|~~~+)(.*)", line)
        if not fence:
            continue
        if opened is None:
            opened = number
        elif fence.group(2).strip():
            pytest.fail(
                f"{page.name}:{number}: {line.strip()!r} inside the block opened at {opened}"
            )
        else:
            opened = None
    assert opened is None, f"{page.name}: the block opened at line {opened} never closes"
