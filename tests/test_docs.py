"""The documentation sits beside the code it describes: no tracked file points at a document
outside the repository, and every relative link in README.md and docs/*.md reaches a file.

The public interfaces are docs/INTERFACES.md and the layout is docs/ARCHITECTURE.md. A comment
or docstring that needs to cite one names that file, for example "docs/INTERFACES.md §4".
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

# References to documents that live outside the repository: a path out of it ("../shared/..."),
# the old contract by name ("CONTRACT section 4", "CONTRACT's", "CONTRACT v2"; CONTRACT_FIELDS
# and other identifiers are not matched), and ARCHITECTURE without ".md" after it.
EXTERNAL = re.compile(r"\.\./shared|\bCONTRACT\b|ARCHITECTURE(?!\.md)")

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    return [name for name in out.decode().split("\0") if name]


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file (a NUL byte, or not UTF-8) or one that a
    sparse checkout left out."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def external_references(text: str) -> list[tuple[int, str]]:
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if EXTERNAL.search(line)
    ]


def relative_links(markdown: str) -> list[str]:
    """Link and image targets that are paths in the repository: no URL scheme, no bare anchor,
    and nothing inside code."""
    prose = _CODE_SPAN.sub("", _FENCE.sub("", markdown))
    targets = _INLINE_LINK.findall(prose) + _REFERENCE_LINK.findall(prose)
    return [
        target.split("#", 1)[0]
        for target in targets
        if not _SCHEME.match(target) and not target.startswith(("#", "//"))
    ]


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_checks_see_what_they_are_meant_to_see() -> None:
    assert external_references("see CONTRACT section 4\nfine\n(../shared/X.md)") == [
        (1, "see CONTRACT section 4"),
        (3, "(../shared/X.md)"),
    ]
    assert external_references('ARCHITECTURE "data flow"') != []
    assert external_references("docs/ARCHITECTURE.md, CONTRACT_FIELDS, import contracts") == []
    assert relative_links(
        "[a](docs/A.md) ![b](b.png#x) [c](https://x.org) [d](#top) `[e](e.md)`\n"
        "```\n[f](f.md)\n```\n[g]: g.md\n"
    ) == ["docs/A.md", "b.png", "g.md"]


def test_no_tracked_file_refers_to_a_document_outside_the_repository() -> None:
    found = []
    for name in tracked_files():
        if name == THIS or name.startswith("static/vendor/"):  # third-party files, as shipped
            continue
        text = text_of(ROOT / name)
        if text is None:
            continue
        found += [f"{name}:{number}: {line}" for number, line in external_references(text)]
    assert not found, "cite docs/INTERFACES.md §N or docs/ARCHITECTURE.md instead:\n" + "\n".join(
        found
    )


def test_every_relative_link_in_the_documentation_reaches_a_file() -> None:
    broken = []
    for doc in markdown_files():
        for target in relative_links(doc.read_text(encoding="utf-8")):
            if target and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT).as_posix()}: {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)
