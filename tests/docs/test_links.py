"""The README stays a front door whose relative links (and their anchors) resolve, and the
repository paths the documentation names exist. Links between the site's pages are
checked by ``mkdocs build --strict`` (scripts/test.sh)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from tests.plugins.daemon import ROOT

README = ROOT / "README.md"
#: Paths the docs name before the branch that adds them is merged, with that branch's
#: issue; the check skips them while they are missing.
AWAITED = {"deploy/kubernetes/": "issue 13 adds the Kubernetes manifests"}
#: Top-level folders and files whose paths, written in backticks, must exist.
REPO_ROOTS = ("tusd_py/", "tests/", "bench/", "config/", "deploy/", "docs/", "scripts/",
              "requirements/", "web-src/", ".ci/", "Dockerfile", "docker-compose.yml",
              "pyproject.toml", "package.json", "mkdocs.yml")


def markdown_links(text: str) -> list[str]:
    """Targets of inline links and images, outside code blocks and code spans."""
    text = re.sub(r"(?ms)^(```|~~~).*?^\1", "", text)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc (MkDocs) and GitHub give a plain heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    text = re.sub(r"(?ms)^(```|~~~).*?^\1", "", path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"(?m)^#{1,6}\s+(.+?)\s*#*\s*$", text)}


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in markdown_links(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
            continue  # http:, https:, mailto:
        path_part, _, anchor = target.partition("#")
        resolved = (doc.parent / path_part).resolve() if path_part else doc
        if not resolved.exists() or root not in (resolved, *resolved.parents):
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    return broken


def test_every_relative_link_in_the_readme_resolves() -> None:
    links = markdown_links(README.read_text(encoding="utf-8"))
    assert len([t for t in links if not t.startswith("http")]) >= 20  # the parser found them
    assert broken_links(README) == []


def test_the_link_checker_sees_broken_links_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("# Title\n\n## The cost of `storage.fsync: true`\n")
    doc = tmp_path / "a.md"
    doc.write_text("[ok](b.md#the-cost-of-storagefsync-true) [gone](c.md) [bad](b.md#nope) "
                   "`[code](x.md)` [web](https://example.com/x) [self](#here)\n\n## Here\n")
    broken = [b.split(":")[0] for b in broken_links(doc, root=tmp_path)]
    assert broken == ["c.md", "b.md#nope"]


def test_the_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert 100 <= len(lines) <= 300, f"README.md has {len(lines)} lines; details go into docs/"


def _named_paths() -> list[tuple[str, str]]:
    found = []
    docs = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for doc in docs:
        if "internals-notes" in doc.parts:
            continue
        for span in re.findall(r"`([^`\s]+)`", doc.read_text(encoding="utf-8")):
            path = span.split(":")[0] if span.endswith(".py") or ".py:" in span else span
            if path.startswith(REPO_ROOTS) and not re.search(r"[*<>{}$]", path):
                found.append((doc.relative_to(ROOT).as_posix(), path))
    return found


@pytest.mark.parametrize("doc", sorted({doc for doc, _ in _named_paths()}))
def test_repository_paths_named_in_the_docs_exist(doc: str) -> None:
    missing = []
    for named_in, path in _named_paths():
        if named_in != doc or (ROOT / path).exists():
            continue
        if path in AWAITED:
            continue
        missing.append(path)
    assert missing == []


@pytest.mark.parametrize("path", sorted(AWAITED))
def test_awaited_paths(path: str) -> None:
    if not (ROOT / path).exists():
        pytest.skip(f"{path} is not there yet: {AWAITED[path]}")
    assert any((ROOT / path).iterdir())
