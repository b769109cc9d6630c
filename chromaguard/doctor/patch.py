"""Carry ``--fix``'s change onto the file as it was written, so the diff is only the fix.

A YAML round trip is close to the original but not byte-exact: it re-flows flow-style lists,
drops document markers, re-indents, and moves comments to the node before them. So the fixed
document is never written as dumped. The dump before the fixes (``base``) and the dump after them
(``after``) are compared instead: their difference is the fix, in the dumper's layout. Each
changed hunk is placed in the original text at the lines that match its unchanged neighbours,
and there only its setting lines change: comments and blank lines stay where they were written,
except a comment right above a line the fix removed (it described that line; it goes too) or
renamed (it is updated to the new name). Everything else is copied byte for byte, line endings
included.
"""

from __future__ import annotations

import re
from collections import defaultdict
from difflib import SequenceMatcher


def _bare(line: str) -> str:
    """A line as compared: its indentation is layout (the dumper's may differ from the file's)."""
    return line.strip()


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    text = line.strip()
    return bool(text) and not text.startswith("#")


def _is_comment(line: str) -> bool:
    return line.strip().startswith("#")


def _split(line: str) -> tuple[str, str]:
    """(name, value) of a setting line: ``- NAME=value``, ``key: value``, ``- item``."""
    text = line.strip()
    text = text[2:].strip() if text.startswith("- ") else text
    text = text.strip("'\"")
    match = re.match(r"([^=:\s]+)\s*[=:]\s*(.*)$", text)
    return (match.group(1), match.group(2).strip().strip("'\"")) if match else (text.rstrip(":"), "")


def _same(old: str, new: str) -> bool:
    """The new line is the old one changed (renamed, or given a new value), not another line."""
    (old_name, old_value), (new_name, new_value) = _split(old), _split(new)
    return old_name == new_name or (bool(old_value) and old_value == new_value)


def carry(original: str, base: str, after: str) -> str:
    """``original`` with the change from ``base`` to ``after`` (``base`` is ``original`` as the
    dumper writes it)."""
    o, b, a = original.splitlines(keepends=True), base.splitlines(keepends=True), after.splitlines(keepends=True)
    newline = "\r\n" if "\r\n" in original else "\n"
    where: dict[int, int] = {}  # a line of base -> the same line in the original
    for tag, i1, i2, j1, _ in SequenceMatcher(None, [_bare(x) for x in b], [_bare(x) for x in o],
                                              autojunk=False).get_opcodes():
        if tag == "equal":
            where.update({i1 + k: j1 + k for k in range(i2 - i1)})

    def after_line(i: int) -> int:  # where the original continues after base line i - 1
        mapped = [where[k] for k in range(i - 1, -1, -1) if k in where][:1]
        return mapped[0] + 1 if mapped else 0

    def at_line(i: int) -> int:  # where base line i (or the first mapped one after it) is in the original
        mapped = [where[k] for k in range(i, len(b)) if k in where][:1]
        return mapped[0] if mapped else len(o)

    opcodes = SequenceMatcher(None, b, a, autojunk=False).get_opcodes()
    a_in_o = {j1 + k: where[i1 + k] for tag, i1, i2, j1, _ in opcodes if tag == "equal"
              for k in range(i2 - i1) if i1 + k in where}
    map_step, seq_step = _steps(o)
    depths: dict[int, int] = {}

    def depth_in_o(j: int) -> int:  # how the file would indent line j of the dump
        if j in a_in_o:
            return _indent(o[a_in_o[j]])
        if j not in depths:
            item = a[j].lstrip().startswith("- ")
            parent = next((k for k in range(j - 1, -1, -1) if _is_content(a[k]) and (
                _indent(a[k]) < _indent(a[j]) or (item and _indent(a[k]) == _indent(a[j])
                                                  and not a[k].lstrip().startswith("- ")))), None)
            sibling = None if parent is None else next(  # a child of the same parent the file has already
                (k for k in range(parent + 1, len(a)) if k in a_in_o and _is_content(a[k])
                 and _indent(a[k]) == _indent(a[j]) and a[k].lstrip().startswith("- ") == item), None)
            if parent is None:
                depths[j] = 0
            elif sibling is not None and all(_indent(a[k]) >= _indent(a[j]) or not _is_content(a[k])
                                             for k in range(parent + 1, sibling)):
                depths[j] = _indent(o[a_in_o[sibling]])
            else:
                depths[j] = depth_in_o(parent) + (seq_step if item else map_step)
        return depths[j]

    out: list[str] = []
    copied = 0
    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "equal":
            continue
        new = [" " * depth_in_o(j) + a[j].strip() + newline for j in range(j1, j2) if _is_content(a[j])]
        if tag == "insert":
            start = end = at_line(i1)
        else:  # the changed lines themselves, where the original has them as base does, else their neighbours'
            start = where[i1] if i1 in where else after_line(i1)
            end = max(start, where[i2 - 1] + 1 if i2 - 1 in where else at_line(i2))
        if not any(_is_content(line) for line in o[start:end]):  # lines added; the comments there stay
            if not new:
                continue  # only comments moved by the dumper: they stay where they are written
            start = end = _insertion_point(o, start, _indent(new[0]), floor=copied)
            replacement = new
        else:  # with the comment right above: it may describe a line that goes
            first = next(k for k in range(start, end) if _is_content(o[k]))
            while start > copied and _is_comment(o[start - 1]) and _indent(o[start - 1]) == _indent(o[first]):
                start -= 1
            replacement = _edit(o[start:end], new, o[end] if end < len(o) else "")
        out.extend(o[copied:start])
        if replacement and out and not out[-1].endswith("\n"):  # new lines after a last line without its newline
            out[-1] += newline
        out.extend(replacement)
        copied = end
    out.extend(o[copied:])
    text = "".join(out)
    return text if original.endswith("\n") or not text.endswith("\n") else text.rstrip("\r\n")


def _steps(o: list[str]) -> tuple[int, int]:
    """How the file indents a mapping under its key, and a list under its key (the most usual)."""
    maps: dict[int, int] = defaultdict(int)
    seqs: dict[int, int] = defaultdict(int)
    lines = [line for line in o if _is_content(line)]
    for key, child in zip(lines, lines[1:]):
        if not key.rstrip().endswith(":"):
            continue
        step = _indent(child) - _indent(key)
        if child.lstrip().startswith("- ") and step >= 0:
            seqs[step] += 1
        elif step > 0:
            maps[step] += 1
    return (max(maps, key=maps.__getitem__) if maps else 2), (max(seqs, key=seqs.__getitem__) if seqs else 2)


def _insertion_point(o: list[str], at: int, depth: int, floor: int) -> int:
    """Lines added before ``at`` go above the blank lines and the less indented comments there
    (they belong to the next block), and above a document's end marker."""
    start = at
    while at > floor and (not o[at - 1].strip() or o[at - 1].rstrip("\r\n") == "..."
                          or (_is_comment(o[at - 1]) and _indent(o[at - 1]) < depth)):
        at -= 1
    content = next((line for line in reversed(o[:at]) if _is_content(line)), "")
    if _indent(content) > depth and any(not line.strip() for line in o[at:start]):
        return start  # blank lines after deeper lines may be a block scalar's (`|+`): left as they are
    return at


def _edit(region: list[str], new: list[str], following: str) -> list[str]:
    """The region's setting lines changed to ``new``, its comments and blank lines kept in place."""
    contents = [i for i, line in enumerate(region) if _is_content(line)]
    result: dict[int, str | None] = {}  # content index -> its new text, None when removed
    before: dict[int, list[str]] = defaultdict(list)  # content index -> lines added above it
    taken = 0
    for i in contents:
        match = next((q for q in range(taken, len(new)) if _same(region[i], new[q])), None)
        if match is None:
            result[i] = None
            continue
        before[i] = new[taken:match]
        same_kind = region[i].lstrip().startswith("- ") == new[match].lstrip().startswith("- ")
        result[i] = region[i] if _bare(region[i]) == _bare(new[match]) else \
            region[i][:_indent(region[i])] + new[match].lstrip(" ") if same_kind else new[match]
        taken = match + 1
    tail = new[taken:]
    owner = _comment_owners(region)
    anchor = {min([k for k, i in owner.items() if i == c] or [c]): c for c in contents}  # above its comment
    out: list[str] = []
    for k, line in enumerate(region):
        if k in anchor:
            out.extend(before.pop(anchor[k], []))
        if _is_content(line):
            if result[k] is not None:
                out.append(result[k] or line)
            if k == contents[-1]:
                out.extend(tail)
        elif k in owner:
            i = owner[k]
            if _run_removed(region + [following], result, i):
                continue  # it described lines that all went
            out.append(_renamed(line, region[i], result[i]))
        else:
            out.append(line)
    return out


def _comment_owners(region: list[str]) -> dict[int, int]:
    """Comment line -> the setting line right below it (no blank line between, same indentation)."""
    owners: dict[int, int] = {}
    for i, line in enumerate(region):
        if not _is_content(line):
            continue
        k = i - 1
        while k >= 0 and _is_comment(region[k]) and _indent(region[k]) == _indent(line):
            owners[k] = i
            k -= 1
    return owners


def _run_removed(lines: list[str], result: dict[int, str | None], first: int) -> bool:
    """Whether every setting line of the run starting at ``first`` (lines one after another at
    its indentation, and the lines nested in them) was removed; ``lines`` ends with the first line
    after the hunk, which is kept."""
    depth, item = _indent(lines[first]), lines[first].strip().startswith("-")
    for i in range(first, len(lines)):
        line = lines[i]
        if not _is_content(line) or _indent(line) < depth or (
                i > first and _indent(line) == depth and item and not line.strip().startswith("-")):
            break
        if i == len(lines) - 1 or result.get(i) is not None:
            return False
    return True


def _renamed(comment: str, old: str, new: str | None) -> str:
    """A comment above a renamed setting names it by its new name."""
    if new is None:
        return comment
    old_name, new_name = _split(old)[0], _split(new)[0]
    if not old_name or old_name == new_name:
        return comment
    return re.sub(rf"(?<![A-Za-z0-9_]){re.escape(old_name)}(?![A-Za-z0-9_])", new_name, comment)
