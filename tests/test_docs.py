"""Docs that tests keep true: docs/design.md's module map names every module there is (and none
that is gone), the documents the tests and pyproject.toml cite exist inside the repository, and
docs/checkpoints.md's layout shows what bigan/checkpoint/ writes beside the step directories.

Everything is read from the files at test time, so a module added, moved or deleted anywhere
under bigan/, serving/ or launch/ fails here until the map says so.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.unit

TOPS = ("bigan", "serving", "launch")  # the packages the map covers
DESIGN = ROOT / "docs/design.md"


def _section(text: str, title: str) -> str:
    """The body of the `## title` section of a markdown text."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no '## {title}' section"
    return match.group(1)


def _resolve(token: str, folder: str | None) -> str:
    """A path written in the map, from the repository root: `bigan/cli.py` as it is, `remote.py`
    under the folder its bullet (or its heading) names."""
    if token.split("/")[0] in TOPS or folder is None:
        return token
    return folder + token


def module_map() -> tuple[set[str], set[str]]:
    """(the .py files, the package folders) docs/design.md's module map names, from the root.

    A heading line such as "**Layer 0** (`bigan/`)" sets the folder its bullets start from; a
    bullet (nested ones too) that starts with a folder ("- `bigan/data/`: ...") names the files
    after it in that folder; bullets go on over indented lines; code blocks (pictures) are
    skipped."""
    files: set[str] = set()
    folders: set[str] = set()
    heading_folder: str | None = None
    bullets: list[tuple[str, str | None]] = []
    in_code = False
    for line in _section(DESIGN.read_text(), "Module map").splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
        elif in_code:
            continue
        elif line.startswith("**"):
            named = re.findall(r"`([^`]+/)`", line)
            heading_folder = named[0] if named else None
            folders.update(named)
        elif re.match(r"\s*- ", line):
            bullets.append((line.strip()[2:], heading_folder))
        elif line.startswith(" ") and bullets:
            bullets[-1] = (bullets[-1][0] + " " + line.strip(), bullets[-1][1])
        elif line.strip():
            heading_folder = None  # a paragraph ends the map's bullets
    for text, heading in bullets:
        tokens = re.findall(r"`([^`]+)`", text)
        folder = heading
        if tokens and tokens[0].endswith("/") and text.startswith(f"`{tokens[0]}`"):
            folder = _resolve(tokens[0], heading)
            folders.add(folder)
        for token in tokens:
            if re.fullmatch(r"[\w/]+\.py", token):
                files.add(_resolve(token, folder))
    return files, folders


def source_modules() -> tuple[set[str], set[str]]:
    """(every module file but __init__.py, every package folder) under TOPS, on disk now."""
    files, folders = set(), set()
    for top in TOPS:
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if "__pycache__" in rel:
                continue
            if path.name == "__init__.py":
                folders.add(rel.removesuffix("__init__.py"))
            else:
                files.add(rel)
    return files, folders


def test_the_map_is_read():
    """The parser finds entries of every kind: a heading's folder, a bullet's folder, a path."""
    files, folders = module_map()
    assert {"bigan/layers.py", "bigan/checkpoint/best.py", "bigan/cli.py"} <= files
    assert {"bigan/", "bigan/checkpoint/", "launch/"} <= folders


def test_every_module_is_in_the_module_map():
    files, folders = source_modules()
    named_files, named_folders = module_map()
    missing = sorted(files - named_files) + sorted(folders - named_folders)
    assert not missing, f"docs/design.md's module map does not name: {missing}"


def test_the_module_map_names_no_module_that_is_gone():
    named_files, _ = module_map()
    gone = sorted(f for f in named_files if not (ROOT / f).is_file())
    assert not gone, f"docs/design.md's module map names files that do not exist: {gone}"


# A cited document: a path ending in .md (an anchor after it is allowed), not part of a URL.
_CITED = re.compile(r"(?<![\w/.:-])((?:\.\.?/)*[\w./-]*\w\.md)\b")
_URL = re.compile(r"\w+://\S+")


def cited_documents(path: Path) -> set[str]:
    return set(_CITED.findall(_URL.sub(" ", path.read_text())))


def test_citations_are_found():
    assert "tests/README.md" in cited_documents(ROOT / "tests" / "conftest.py")
    assert cited_documents(ROOT / "pyproject.toml")


@pytest.mark.parametrize("path", sorted((ROOT / "tests").glob("*.py")) + [ROOT / "pyproject.toml"],
                         ids=lambda p: p.name)
def test_cited_documents_are_inside_the_repository(path):
    """A document a test (or pyproject.toml) cites is a path from the repository root that exists
    there: not a sibling checkout's file (../shared/...), not a name of another case."""
    bad = []
    for ref in sorted(cited_documents(path)):
        target = (ROOT / ref).resolve()
        if not target.is_relative_to(ROOT) or not target.is_file() or target.name != Path(ref).name:
            bad.append(ref)
    assert not bad, f"{path.name} cites documents that are not in the repository: {bad}"


def test_checkpoint_layout_shows_best_and_holds():
    """docs/checkpoints.md's layout shows, beside `latest`, the `best` pointer and the holds
    folder under the names bigan/checkpoint/best.py writes them."""
    from bigan.checkpoint import best

    layout = re.search(r"^## The format\n.*?```\n(.*?)```", (ROOT / "docs/checkpoints.md").read_text(),
                       re.S | re.M)
    assert layout, "docs/checkpoints.md has no layout block under '## The format'"
    entries = {line.split()[0] for line in layout.group(1).splitlines() if line.strip()}
    assert {"latest", best.BEST, f"{best.HOLDS}/"} <= entries, entries
