"""The engine's catalogue (tenants, databases, collections), read straight from its SQLite file.

Read-only and without waiting on the engine's locks: for status pages and
metrics, never for anything that must be exact under concurrent writes.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

SQLITE_NAME = "chroma.sqlite3"


@dataclass(frozen=True)
class CollectionEntry:
    tenant: str
    database: str
    name: str
    id: str
    dimension: int | None


def _connect(data_dir: Path) -> sqlite3.Connection | None:
    path = data_dir / SQLITE_NAME
    if not path.exists():
        return None
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=0.2)  # as_uri escapes # ? %


def collections(data_dir: Path) -> list[CollectionEntry]:
    try:
        db = _connect(data_dir)
        if db is None:
            return []
        with db:
            rows = db.execute(
                "SELECT d.tenant_id, d.name, c.name, c.id, c.dimension FROM collections c "
                "JOIN databases d ON d.id = c.database_id ORDER BY d.tenant_id, d.name, c.name").fetchall()
        db.close()
    except sqlite3.Error:
        return []
    return [CollectionEntry(*row) for row in rows]


def count_collections(data_dir: Path) -> int | None:
    try:
        db = _connect(data_dir)
        if db is None:
            return None
        with db:
            count = int(db.execute("SELECT COUNT(*) FROM collections").fetchone()[0])
        db.close()
        return count
    except sqlite3.Error:
        return None


def directory_size(path: Path) -> int:
    total = 0
    for item in path.rglob("*"):
        try:
            if item.is_file():
                total += item.stat().st_size
        except OSError:
            pass
    return total
