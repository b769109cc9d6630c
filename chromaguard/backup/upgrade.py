"""A backup before an engine upgrade: Chroma does not support downgrades (chroma-core/chroma#1130),
and an upgrade can fail on an old data dir (chroma-core/chroma#4217).

The data dir records which chromadb last served it (``.chromaguard-engine.json``, written once
the engine is up). When the installed one differs, or nothing is recorded but there is data,
``serve`` backs the dir up before starting the new engine: to the backup repository when one is
set, else to an archive beside the data dir (inside it when it is a mount point, such as a
Docker volume, whose parent would not outlive the container). ``CHROMAGUARD_UPGRADE_BACKUP=off``
skips it. A backup that fails stops the start: better no service than an upgrade without a way back.
"""

from __future__ import annotations

import json
import logging
import os
import time
from importlib.metadata import version
from pathlib import Path

from ..errors import ChromaguardError, StartupError
from .snapshot import SQLITE, UPGRADE_BACKUPS

MARKER = ".chromaguard-engine.json"

log = logging.getLogger("chromaguard.backup")


def recorded_version(data_dir: Path) -> str | None:
    try:
        found = json.loads((data_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    value = found.get("chromadb") if isinstance(found, dict) else None
    return value if isinstance(value, str) else None


def record_version(data_dir: Path) -> None:
    """Note the engine that now serves the dir (written whole: a temp file renamed over it)."""
    marker = data_dir / MARKER
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(json.dumps({"chromadb": version("chromadb"), "since": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    os.replace(partial, marker)


def archive_folder(data_dir: Path) -> Path:
    if os.path.ismount(data_dir):
        return data_dir / UPGRADE_BACKUPS
    return data_dir.with_name(data_dir.name + "-before-upgrade")


def backup_before_upgrade(data_dir: Path, repository: str | None, password: str | None = None) -> str | None:
    """Back the data dir up when the installed engine is not the one that last served it (the
    caller holds the data dir's lock); where it went, or None when nothing was needed."""
    if not (data_dir / SQLITE).is_file():
        return None  # a new data dir: nothing to lose
    installed, recorded = version("chromadb"), recorded_version(data_dir)
    if recorded == installed:
        return None
    from . import take

    why = f"chromadb {installed} is about to open a data dir last served by " + \
        (f"chromadb {recorded}" if recorded else "an unrecorded version")
    log.info("%s: backing it up first (CHROMAGUARD_UPGRADE_BACKUP=off skips this)", why)
    try:
        if repository:
            from .repository import Repository

            info = take.offline_to(data_dir, Repository.open(repository, create=True, password=password),
                                      lock_held=True)
            where = f"backup {info.id} in {repository}"
        else:
            result = take.offline(data_dir, archive_folder(data_dir), lock_held=True)
            where = str(result.path)
    except take.UnreadableData as exc:  # nothing a backup could restore: the engine will say more
        log.warning("%s, but it cannot be backed up: %s; starting the engine on it as it is", why, exc)
        return None
    except (ChromaguardError, OSError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StartupError(f"{why}, and the backup before the upgrade failed: {detail}; fix that, or start with "
                           "CHROMAGUARD_UPGRADE_BACKUP=off to upgrade without one") from None
    log.info("backed up before the upgrade: %s", where)
    return where
