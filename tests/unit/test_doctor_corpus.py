"""The doctor on real compose files from public projects (``fixtures/compose_corpus``, sources in
its README): what it finds in each, and that ``--fix`` changes only the lines of its fixes.

For every file: the findings are exactly the expected ones (no false alarm); the fixed text
means exactly the fixed document; every line it removes or changes lies in the YAML node a fix
targets (or is the comment right above one), every line it adds lies in the service being
fixed; line endings, document markers and everything else are the original's bytes; and a
second run finds nothing left to fix.
"""

from __future__ import annotations

import difflib
import io
import shutil
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from chromaguard.doctor import apply_fixes, check_files
from chromaguard.doctor.compose import merged_services

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "compose_corpus"
FILES = sorted(CORPUS.glob("*.yml"))

# (rule, line) per file. What must NOT be there matters as much: no CG101 for curl on Chroma's
# 0.5 Dockerfile (23: curl is installed since 0.5.0), no CG102 for `bash -c` with /dev/tcp (10,
# 12, 19, 20), no CG302 where a tmpfs is meant, findings for Chroma built from source (01-04, 23).
EXPECTED: dict[str, set[tuple[str, int]]] = {
    "01": {("CG104", 8), ("CG207", 27), ("CG207", 28)},  # 0.x from source; CHROMA_OTEL_EXPORTER_* never existed
    "02": {("CG207", 26), ("CG207", 27), ("CG105", 36)},  # curl check on 0.6 from source: fine
    "03": {("CG209", 21), ("CG101", 29), ("CG105", 29)},  # 1.0 from rust/cli/Dockerfile: no curl; empty endpoint
    "04": {("CG104", 2), ("CG302", 2)},
    "05": {("CG104", 23), ("CG207", 40)},
    "06": {("CG104", 7), ("CG107", 8), ("CG201", 10), ("CG301", 14)},  # volume at /chroma/chroma/ (a slash)
    "07": {("CG104", 1350)},  # 1,639 lines, anchors and x- fields: 0.5.20 with token auth is right
    "08": {("CG104", 323)},  # before the project's upgrade (0.6.2) ...
    "09": {("CG104", 323), ("CG301", 330), ("CG303", 334), ("CG202", 336)},  # ... after (1.1.1): data lost, auth gone
    "10": {("CG201", 15), ("CG201", 16), ("CG105", 18)},
    "11": {("CG104", 4), ("CG201", 10), ("CG201", 11), ("CG201", 12), ("CG301", 14)},
    "12": {("CG107", 3), ("CG105", 9)},
    "13": {("CG304", 42), ("CG104", 92), ("CG201", 101), ("CG301", 105)},
    "14": {("CG304", 59), ("CG302", 131), ("CG201", 135), ("CG105", 144)},
    "15": {("CG104", 88), ("CG302", 88)},  # CRLF line endings
    "16": {("CG107", 15), ("CG201", 26), ("CG201", 29), ("CG201", 30), ("CG207", 33), ("CG206", 34),
           ("CG208", 34), ("CG207", 42), ("CG301", 47), ("CG101", 61), ("CG103", 61), ("CG104", 87),
           ("CG302", 87), ("CG107", 88), ("CG201", 95), ("CG207", 96)},
    "17": {("CG104", 13)},  # no final newline
    "18": {("CG104", 17), ("CG107", 18), ("CG202", 22), ("CG201", 24)},
    "19": {("CG201", 23), ("CG201", 24), ("CG105", 26)},  # a `---` document marker
    "20": {("CG107", 4), ("CG301", 9), ("CG201", 11)},  # CMD-SHELL `timeout 2 bash -c '</dev/tcp/...'`
    "21": {("CG304", 10), ("CG107", 26), ("CG301", 30), ("CG207", 32), ("CG201", 33), ("CG207", 34),
           ("CG207", 35), ("CG101", 39), ("CG103", 39), ("CG104", 45)},
    "22": {("CG104", 5), ("CG107", 6), ("CG301", 10), ("CG202", 12), ("CG201", 13)},
    "23": {("CG207", 26), ("CG207", 27), ("CG105", 36)},
}


def test_the_corpus_is_what_its_readme_lists() -> None:
    readme = (CORPUS / "README.md").read_text()
    assert len(FILES) >= 10 and all(f"`{f.name}`" in readme for f in FILES)
    assert sorted(EXPECTED) == [f.name[:2] for f in FILES]


@pytest.mark.parametrize("path", FILES, ids=[f.name[:2] for f in FILES])
def test_findings_are_the_expected_ones(path: Path) -> None:
    assert {(f.rule.id, f.location.line) for f in check_files([path]).findings} == EXPECTED[path.name[:2]]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block(lines: list[str], n: int) -> range:
    """Line ``n`` (0-based) and the lines that belong to it: deeper ones, and list items under a key."""
    depth, item = _indent(lines[n]), lines[n].lstrip().startswith("- ")
    end = n + 1
    while end < len(lines):
        line = lines[end]
        if line.strip() and not line.strip().startswith("#"):
            if _indent(line) < depth or (_indent(line) == depth and (item or not line.lstrip().startswith("- "))):
                break
        end += 1
    return range(n, end)


def _with_comment_above(lines: list[str], span: range) -> set[int]:
    start = span.start
    while start > 0 and lines[start - 1].strip().startswith("#"):
        start -= 1
    return set(range(start, span.stop))


def _plain(text: str) -> object:
    return YAML(typ="safe", pure=True).load(io.StringIO(text))


@pytest.mark.parametrize("path", FILES, ids=[f.name[:2] for f in FILES])
def test_fix_changes_only_the_lines_of_its_fixes(path: Path, tmp_path: Path) -> None:
    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    original = copy.read_bytes().decode()
    report = check_files([copy])
    fixable = [f for f in report.findings if f.fixable]
    changes = apply_fixes(report)
    if not fixable:
        assert changes == {}
        return
    fixed = changes[copy][1]
    assert _plain(fixed) == _plain(report.files[0].dump()), "the text means exactly the fixed document"

    lines = original.splitlines(keepends=True)
    may_change: set[int] = set()
    for finding in fixable:
        may_change |= _with_comment_above(lines, _block(lines, finding.location.line - 1))
    for finding in fixable:  # a key all of whose settings went goes with them (`environment:` emptied)
        n = finding.location.line - 1
        parent = next((k for k in range(n - 1, -1, -1) if lines[k].strip() and not lines[k].strip().startswith("#")
                       and _indent(lines[k]) < _indent(lines[n])), None)
        if parent is not None and all(k in may_change or not lines[k].strip() or lines[k].strip().startswith("#")
                                      for k in _block(lines, parent) if k != parent):
            may_change |= _with_comment_above(lines, range(parent, parent + 1))
    services = {s.name: s for s in merged_services(report.files)}
    may_add: set[int] = set()
    for finding in fixable:
        span = _block(lines, services[finding.service].location.line - 1)
        may_add |= set(range(span.start, span.stop + 1))
    new_lines = fixed.splitlines(keepends=True)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, lines, new_lines, autojunk=False).get_opcodes():
        if tag in ("replace", "delete"):
            assert set(range(i1, i2)) <= may_change, f"lines {i1 + 1}-{i2} changed: {lines[i1:i2]}"
        if tag in ("replace", "insert"):
            assert i1 in may_add, f"lines added at {i1 + 1}, outside the fixed services: {new_lines[j1:j2]}"
    if "\r\n" in original:
        assert fixed.count("\n") == fixed.count("\r\n"), "CRLF line endings kept"
    for marker in ("---\n", "...\n"):
        assert original.count(marker) == fixed.count(marker)

    copy.write_text(fixed, newline="")
    again = check_files([copy]).findings
    assert [f.rule.id for f in again if f.fixable] == [], "a second run finds nothing to fix"
    assert {(f.rule.id, f.message) for f in again} <= {(f.rule.id, f.message) for f in report.findings}, \
        "fixing never raises a new finding"
