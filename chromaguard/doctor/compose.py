"""Compose files read with their positions, merged the way ``docker compose -f a -f b`` merges them.

Round-trip YAML (ruamel) keeps comments, order and quoting, so ``--fix`` can write the
files back changing only what it fixes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from .model import DoctorError, Location

DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
_OVERRIDES = ("compose.override.yaml", "compose.override.yml", "docker-compose.override.yaml",
              "docker-compose.override.yml")
_INDENTS = ((2, 4, 2), (2, 2, 0), (4, 4, 2), (4, 6, 4), (2, 4, 4), (4, 4, 0))


def _yaml(indent: tuple[int, int, int] = (2, 4, 2)) -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=indent[0], sequence=indent[1], offset=indent[2])
    return yaml


@dataclass
class ComposeFile:
    path: Path
    text: str
    doc: CommentedMap
    indent: tuple[int, int, int] | None  # None: no indentation style round-trips this file exactly

    def dump(self) -> str:
        stream = io.StringIO()
        _yaml(self.indent or (2, 4, 2)).dump(self.doc, stream)
        return stream.getvalue()

    def services(self) -> CommentedMap:
        return self.doc.get("services") or CommentedMap()


def load(path: Path) -> ComposeFile:
    try:
        text = path.read_bytes().decode("utf-8")  # as written: CRLF line ends stay
    except (OSError, UnicodeDecodeError) as exc:
        raise DoctorError(f"{path}: cannot read ({exc})") from None
    try:
        doc = _yaml().load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DoctorError(f"{path}{where}: not valid YAML ({problem})") from None
    if not isinstance(doc, CommentedMap) or not isinstance(doc.get("services"), CommentedMap):
        raise DoctorError(f"{path}: not a compose file (no 'services:' mapping at the top level)")
    indent = None
    for candidate in _INDENTS:
        stream = io.StringIO()
        _yaml(candidate).dump(doc, stream)
        if stream.getvalue() == text:
            indent = candidate
            break
    return ComposeFile(path, text, doc, indent)


def emptied_by(file: ComposeFile, before: set[int]) -> None:
    """Drop the ``environment`` keys a fix left empty (``before``: the ids of those that were not);
    one that merges another map (``<<: *x``) is never empty."""
    for node in file.services().values():
        if isinstance(node, CommentedMap):
            env = node.get("environment")
            if id(env) in before and isinstance(env, (CommentedMap, CommentedSeq)) and not env \
                    and not (isinstance(env, CommentedMap) and merged_maps(env)):
                del node["environment"]


def filled(file: ComposeFile) -> set[int]:
    """The ids of the non-empty ``environment`` nodes, for ``emptied_by``."""
    return {id(node["environment"]) for node in file.services().values()
            if isinstance(node, CommentedMap) and node.get("environment")}


def default_files(directory: Path) -> list[Path]:
    """What ``docker compose`` reads by default: the first compose file, then its override."""
    found = [directory / name for name in DEFAULT_FILES if (directory / name).is_file()][:1]
    found += [directory / name for name in _OVERRIDES if (directory / name).is_file()][:1]
    return found


def location(file: ComposeFile, node: Any, key: Any = None, index: int | None = None) -> Location:
    """1-based line and column of a key (or item) in ``node``."""
    try:
        if index is not None and isinstance(node, CommentedSeq):
            line, col = node.lc.item(index)
        elif key is not None and isinstance(node, CommentedMap):
            line, col = node.lc.key(key)
        else:
            line, col = node.lc.line, node.lc.col
        return Location(str(file.path), line + 1, col + 1)
    except (AttributeError, KeyError, IndexError, TypeError):
        return Location(str(file.path))


@dataclass
class EnvVar:
    name: str
    value: str | None
    file: ComposeFile
    node: CommentedMap | CommentedSeq
    key: Any  # the mapping key, or the list index
    list_form: bool

    @property
    def location(self) -> Location:
        if self.list_form:
            return location(self.file, self.node, index=self.key)
        return location(self.file, self.node, key=self.key)

    def _indexes(self) -> list[int]:
        """Where the items of this name are now (earlier fixes may have removed items before
        them; a name listed twice is one variable, the last value winning)."""
        return [i for i, existing in enumerate(self.node) if str(existing).partition("=")[0] == self.name]

    def rename(self, new: str) -> None:
        if self.list_form:
            indexes = self._indexes()
            if indexes:
                old = self.node[indexes[-1]]
                self.node[indexes[-1]] = type(old)(f"{new}={self.value}" if self.value is not None else new)
            for index in reversed(indexes[:-1]):
                self._delete(index)
        else:
            mapping = self.node
            assert isinstance(mapping, CommentedMap)
            position = list(mapping.keys()).index(self.key)
            value = mapping.pop(self.key)
            mapping.insert(position, new, value)

    def remove(self) -> None:
        if self.list_form:
            for index in reversed(self._indexes()):
                self._delete(index)
        elif isinstance(self.node, CommentedMap):
            self.node.pop(self.key, None)

    def _delete(self, index: int) -> None:
        comments = self.node.ca.items
        if index in comments and index > 0 and index - 1 not in comments:
            comments[index - 1] = comments.pop(index)  # keep the comment lines that followed it
        del self.node[index]


@dataclass
class Entry:
    """One value of a merged service, and where it is written."""

    value: Any
    file: ComposeFile
    parent: Any
    key: Any

    @property
    def location(self) -> Location:
        if isinstance(self.parent, CommentedSeq):
            return location(self.file, self.parent, index=self.key)
        return location(self.file, self.parent, key=self.key)


@dataclass
class Service:
    """A service as all the files together define it (later files win, as in compose)."""

    name: str
    parts: list[tuple[ComposeFile, CommentedMap]] = field(default_factory=list)

    def get(self, key: str) -> Entry | None:
        for file, node in reversed(self.parts):
            if key in node:
                return Entry(node[key], file, node, key)
        return None

    @property
    def first(self) -> tuple[ComposeFile, CommentedMap]:
        return self.parts[0]

    @property
    def location(self) -> Location:
        file, _ = self.first
        return location(file, file.services(), key=self.name)

    def image(self) -> str:
        entry = self.get("image")
        return str(entry.value) if entry else ""

    def command(self) -> str:
        entry = self.get("command")
        if entry is None:
            return ""
        value = entry.value
        return " ".join(str(v) for v in value) if isinstance(value, list) else str(value)

    def environment(self) -> dict[str, EnvVar]:
        merged: dict[str, EnvVar] = {}
        for file, node in self.parts:
            env = node.get("environment")
            if isinstance(env, CommentedSeq):
                for index, item in enumerate(env):
                    name, sep, value = str(item).partition("=")  # "NAME = v" names "NAME ", as compose reads it
                    merged[name] = EnvVar(name, value if sep else None, file, env, index, True)
            elif isinstance(env, CommentedMap):
                own = {key for key, _ in env.non_merged_items()}
                for key, value in env.items():  # a merged key (`<<: *x`) lives in the map merged in
                    home = env if key in own else next((m for m in merged_maps(env) if key in m), env)
                    merged[str(key)] = EnvVar(str(key), None if value is None else str(value), file, home, key,
                                              False)
        return merged

    def items(self, key: str) -> Iterator[Entry]:
        """Every item of a list-valued key (volumes, ports) across files."""
        for file, node in self.parts:
            values = node.get(key)
            if isinstance(values, CommentedSeq):
                for index, value in enumerate(values):
                    yield Entry(value, file, values, index)

    def healthcheck(self) -> dict[str, Entry]:
        merged: dict[str, Entry] = {}
        for file, node in self.parts:
            check = node.get("healthcheck")
            if isinstance(check, CommentedMap):
                for key, value in check.items():
                    merged[str(key)] = Entry(value, file, check, key)
        return merged


def merged_maps(node: CommentedMap) -> list[CommentedMap]:
    merge = getattr(node, "merge", None) or []
    return [m[1] if isinstance(m, tuple) else m for m in merge]


def merged_services(files: list[ComposeFile]) -> list[Service]:
    services: dict[str, Service] = {}
    for file in files:
        for name, node in file.services().items():
            if isinstance(node, CommentedMap):
                services.setdefault(str(name), Service(str(name))).parts.append((file, node))
    return list(services.values())
