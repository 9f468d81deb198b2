"""docs/architecture.md's tree is the map a newcomer reads first: it must name every package and nothing gone.

The tree is the fenced block under ``## The tree``: one folder per line, nested by two spaces, each name ending
with ``/`` and followed by a short description. Folders move often during a reorganisation; this test is what
keeps the map from going stale.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
SOURCE_PACKAGES = ("edge_protocol", "edge_agent", "hub", "fleet_simulator", "mqtt_session")
TOP_LEVEL_FOLDERS = ("containers", "configs", "bench", "docs", "scripts", "tests")
# Where the reasons live now; the repository refers to nothing outside itself.
FORBIDDEN_REFERENCES = ("../shared", "DESIGN.md")

_LINE = re.compile(r"^(?P<indent> *)(?P<name>[^\s/]+/)(?:\s{2,}(?P<description>\S.*))?$")


def tree_block(text: str) -> list[str]:
    """The lines of the first fenced block after the ``## The tree`` heading (only blank lines between)."""
    lines = text.splitlines()
    start = lines.index("## The tree")
    rest = lines[start + 1 :]
    fence = next(i for i, line in enumerate(rest) if line.strip())
    assert rest[fence].startswith("```"), "the tree must be a fenced block right under '## The tree'"
    end = next(i for i in range(fence + 1, len(rest)) if rest[i].startswith("```"))
    return [line for line in rest[fence + 1 : end] if line.strip()]


def listed_folders(block: list[str]) -> dict[str, str]:
    """Relative folder path (no trailing slash) -> its description, from the tree's lines."""
    folders: dict[str, str] = {}
    stack: list[str] = []
    for line in block:
        match = _LINE.match(line)
        assert match, f"not 'name/  description': {line!r}"
        indent = len(match["indent"])
        assert indent % 2 == 0, f"bad indentation: {line!r}"
        assert indent // 2 <= len(stack), f"bad indentation: {line!r}"
        assert match["description"], f"no description: {line!r}"
        del stack[indent // 2 :]
        stack.append(match["name"].rstrip("/"))
        path = "/".join(stack)
        assert path not in folders, f"listed twice: {path}/"
        folders[path] = match["description"]
    return folders


def package_dirs() -> set[str]:
    """Every directory holding an __init__.py under the source packages that exist."""
    found: set[str] = set()
    for package in SOURCE_PACKAGES:
        for init in (ROOT / package).rglob("__init__.py") if (ROOT / package).is_dir() else ():
            found.add(init.parent.relative_to(ROOT).as_posix())
    return found


def _folders() -> dict[str, str]:
    return listed_folders(tree_block(ARCHITECTURE.read_text()))


def test_every_listed_folder_exists() -> None:
    missing = sorted(path for path in _folders() if not (ROOT / path).is_dir())
    assert not missing, f"docs/architecture.md lists folders that do not exist: {missing}"


def test_every_package_and_top_level_folder_is_listed() -> None:
    listed = set(_folders())
    wanted = package_dirs() | {f for f in TOP_LEVEL_FOLDERS if (ROOT / f).is_dir()}
    unlisted = sorted(wanted - listed)
    assert not unlisted, f"docs/architecture.md's tree does not list: {unlisted}"


def test_docs_refer_to_nothing_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(ref in line for ref in FORBIDDEN_REFERENCES)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_parser_reads_nesting() -> None:
    block = ["hub/        the cloud side", "  api/      HTTP", "    routes/  endpoints", "  cli/      typer"]
    assert list(listed_folders(block)) == ["hub", "hub/api", "hub/api/routes", "hub/cli"]
