"""Every relative link in the README and docs/ points to a file that exists, and to a heading.

The README links reference pages under docs/ and those pages link each other; a
moved file or a renamed section would otherwise leave a dead link nobody notices.
Links are read as GitHub renders them: not inside code or HTML comments, anchors
as GitHub makes them from a heading's text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.server import REPO_ROOT

ROOT = Path(REPO_ROOT)

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
# [text](target "title") and ![alt](target): the target is <...> or has no spaces.
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]"  # [text], one level of [nested] brackets allowed
    r"\(\s*(<[^>]*>|[^\s)]+)(?:\s+\"[^\"]*\")?\s*\)"  # (target "optional title")
)
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
HTML_TARGET = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
HTML_ANCHOR = re.compile(r"""<a\b[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.I)
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")


def documents() -> list[Path]:
    """The Markdown a reader follows: the README, docs/, and each top-level folder's README."""
    found = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found += sorted(
        path for path in ROOT.glob("*/README.md") if not path.parent.name.startswith((".", "docs"))
    )
    return found


def prose(text: str) -> str:
    """The text outside fenced code blocks and HTML comments, line numbers kept."""
    lines = []
    fence = ""
    for line in text.split("\n"):
        opening = FENCE.match(line)
        if fence:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = ""
            lines.append("")
        elif opening:
            fence = opening.group(1)
            lines.append("")
        else:
            lines.append(line)
    kept = "\n".join(lines)
    return HTML_COMMENT.sub(lambda match: "\n" * match.group(0).count("\n"), kept)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation dropped, spaces as -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every #fragment that lands somewhere in a Markdown file."""
    text = prose(path.read_text(encoding="utf-8"))
    found: set[str] = set(HTML_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for line in text.split("\n"):
        heading = ATX_HEADING.match(line)
        if not heading:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def targets(text: str) -> list[tuple[int, str]]:
    """(line, target) of every link and image in Markdown text, code and comments left out."""
    kept = prose(text)
    spans_blanked = CODE_SPAN.sub(lambda match: re.sub(r"[^\n]", " ", match.group(0)), kept)
    found = [
        (match.start(), match.group(1).strip("<>"))
        for pattern in (INLINE_LINK, REFERENCE_DEFINITION, HTML_TARGET)
        for match in pattern.finditer(spans_blanked)
    ]
    return [(spans_blanked.count("\n", 0, start) + 1, target) for start, target in sorted(found)]


def broken_links(path: Path, root: Path) -> list[str]:
    """What is wrong with each relative link of one Markdown file, one line each."""
    problems = []
    for line, target in targets(path.read_text(encoding="utf-8")):
        if SCHEME.match(target):
            continue  # http:, https:, mailto: ...: not this repository's
        file_part, _, fragment = target.partition("#")
        if file_part.startswith("/"):
            destination = root / file_part.lstrip("/")
        elif file_part:
            destination = path.parent / file_part
        else:
            destination = path
        where = f"{path.relative_to(root)}:{line}: {target}"
        resolved = destination.resolve()
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{where}: leaves the repository")
        elif not resolved.exists():
            problems.append(f"{where}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            problems.append(f"{where}: no heading makes #{fragment}")
    return problems


@pytest.mark.parametrize("path", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_lands(path: Path) -> None:
    assert broken_links(path, ROOT) == []


def test_every_docs_page_is_linked() -> None:
    """A page under docs/ that nothing links is a page nobody finds."""
    linked = {
        (path.parent / target.partition("#")[0]).resolve()
        for path in documents()
        for _, target in targets(path.read_text(encoding="utf-8"))
        if not SCHEME.match(target) and target.partition("#")[0]
    }
    pages = sorted((ROOT / "docs").glob("*.md"))
    orphans = [page.name for page in pages if page.resolve() not in linked]
    assert orphans == []


def test_the_check_finds_dead_links_and_ignores_code_and_comments(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Its `second` section: again\n")
    (tmp_path / "README.md").write_text(
        "# Title\n\n## Same\n\n## Same\n\n"
        "[ok](docs/page.md#its-second-section-again) [ok](#same-1) [ok](docs/) "
        "[ok](https://example.org/x.md) ![ok](docs/page.md)\n"
        "[gone](docs/missing.md) [no anchor](docs/page.md#nowhere) [local](#same-2)\n"
        "[out](../elsewhere.md) `[code](docs/missing.md)`\n"
        "<!-- [comment](docs/missing.md) -->\n"
        "```\n[fenced](docs/missing.md)\n```\n"
        '<img src="docs/img/none.png">\n'
        "[ref]: docs/absent.md\n"
    )

    assert broken_links(tmp_path / "README.md", tmp_path) == [
        "README.md:8: docs/missing.md: no such file",
        "README.md:8: docs/page.md#nowhere: no heading makes #nowhere",
        "README.md:8: #same-2: no heading makes #same-2",
        "README.md:9: ../elsewhere.md: leaves the repository",
        "README.md:14: docs/img/none.png: no such file",
        "README.md:15: docs/absent.md: no such file",
    ]
