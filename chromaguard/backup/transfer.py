"""``chromaguard export`` / ``import``: collections as gzip-compressed JSON Lines, through the official client.

Portable across Chroma versions and deployments (local, remote, Chroma Cloud). One JSON
object per line:

    {"type": "header", "format": "chromaguard-export", "version": 1, "chromadb": "1.5.9", "created_at": ...}
    {"type": "collection", "name": ..., "metadata": {...}|null, "configuration": {...}, "count": N}
    {"type": "record", "collection": ..., "id": ..., "embedding": [...], "document": ...|null,
     "metadata": {...}|null, "uri": ...|null}
    ...

Records follow their collection's line. Embeddings are float32 values written exactly.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ChromaguardError

FORMAT = "chromaguard-export"
FORMAT_VERSION = 1


class TransferError(ChromaguardError):
    exit_code = 1


@dataclass
class TransferResult:
    collections: int
    records: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def connect(url: str, token: str | None, tenant: str, database: str) -> Any:
    import chromadb
    from chromadb.config import Settings

    parts = urlsplit(url if "://" in url else f"http://{url}")
    settings: dict[str, Any] = {"anonymized_telemetry": False}
    if token:
        settings |= {"chroma_client_auth_provider": "chromadb.auth.token_authn.TokenAuthClientProvider",
                     "chroma_client_auth_credentials": token,
                     "chroma_auth_token_transport_header": "X-Chroma-Token"}
    if parts.scheme == "https":  # the same choice as every client of ours (probe.client_tls)
        from ..probe import CACERT_ENV, INSECURE_ENV

        settings["chroma_server_ssl_verify"] = (False if os.environ.get(INSECURE_ENV) == "1"
                                                else os.environ.get(CACERT_ENV) or True)
    try:
        return chromadb.HttpClient(host=parts.hostname or "localhost",
                                   port=parts.port or (443 if parts.scheme == "https" else 8000),
                                   ssl=parts.scheme == "https", tenant=tenant, database=database,
                                   settings=Settings(**settings))
    except Exception as exc:  # the client raises many kinds; all mean "cannot use this server"
        raise TransferError(f"cannot connect to {url}: {exc}") from None


def _configuration(collection: Any) -> dict[str, Any]:
    raw = getattr(collection, "configuration_json", None) or {}
    return {k: v for k, v in raw.items() if v is not None and k != "embedding_function"}


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def export(url: str, output: Path, *, token: str | None = None, names: list[str] | None = None,
           tenant: str = "default_tenant", database: str = "default_database",
           progress: Callable[[int], None] | None = None) -> TransferResult:
    started = time.monotonic()
    client = connect(url, token, tenant, database)
    batch = client.get_max_batch_size()
    available = sorted(c.name for c in client.list_collections())
    chosen = names or available
    for name in chosen:
        if name not in available:
            raise TransferError(f"no collection {name!r} at {url} (there are: {', '.join(available) or 'none'})")
    partial = output.with_name(output.name + ".partial")
    records = 0
    try:
        with gzip.open(partial, "wt", encoding="utf-8", compresslevel=3) as out:
            _line(out, {"type": "header", "format": FORMAT, "version": FORMAT_VERSION,
                        "chromadb": version("chromadb"), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                    time.gmtime()),
                        "source": {"tenant": tenant, "database": database}})
            for name in chosen:
                collection = client.get_collection(name, embedding_function=None)
                count = collection.count()
                _line(out, {"type": "collection", "name": name, "metadata": collection.metadata,
                            "configuration": _configuration(collection), "count": count})
                for offset in range(0, count, batch):
                    page = collection.get(limit=batch, offset=offset,
                                          include=["embeddings", "documents", "metadatas", "uris"])
                    ids = page["ids"]
                    columns = [_plain(page.get(key)) or [None] * len(ids)
                               for key in ("embeddings", "documents", "metadatas", "uris")]
                    for rid, emb, doc, meta, uri in zip(ids, *columns):
                        _line(out, {"type": "record", "collection": name, "id": rid, "embedding": _plain(emb),
                                    "document": doc, "metadata": meta, "uri": uri})
                    records += len(ids)
                    if progress:
                        progress(len(ids))
        partial.replace(output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return TransferResult(len(chosen), records, time.monotonic() - started)


def _line(out: Any, item: dict[str, Any]) -> None:
    out.write(json.dumps(item, separators=(",", ":"), ensure_ascii=False))
    out.write("\n")


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    yield number, json.loads(line)
                except ValueError:
                    raise TransferError(f"{path}: line {number} is not JSON") from None
    except (OSError, EOFError) as exc:
        raise TransferError(f"{path}: not a readable export ({exc})") from None


def import_(path: Path, url: str, *, token: str | None = None, replace: bool = False,
            tenant: str = "default_tenant", database: str = "default_database",
            progress: Callable[[int], None] | None = None) -> TransferResult:
    started = time.monotonic()
    lines = _lines(path)
    first = next(lines, None)
    if first is None or first[1].get("format") != FORMAT:
        raise TransferError(f"{path}: not a chromaguard export (no header line)")
    if first[1].get("version") != FORMAT_VERSION:
        raise TransferError(f"{path}: export format version {first[1].get('version')} is not supported")
    client = connect(url, token, tenant, database)
    batch_size = client.get_max_batch_size()
    existing = {c.name for c in client.list_collections()}
    collection: Any = None
    expected = 0
    pending: list[dict[str, Any]] = []
    collections = records = 0

    def flush() -> None:
        nonlocal records
        # The client takes a column whole or not at all: group records by which fields they have.
        groups: dict[tuple[bool, ...], list[dict[str, Any]]] = {}
        for row in pending:
            if row.get("metadata") == {}:  # Chroma returns {} for "no metadata" but refuses it on add
                row["metadata"] = None
            groups.setdefault(tuple(row.get(k) is None for k in ("document", "metadata", "uri")), []).append(row)
        for rows in groups.values():
            try:
                collection.add(ids=[r["id"] for r in rows], embeddings=[r["embedding"] for r in rows],
                               documents=_column(rows, "document"), metadatas=_column(rows, "metadata"),
                               uris=_column(rows, "uri"))
            except Exception as exc:  # the client's validation and the server's errors alike
                raise TransferError(f"collection {final_name}: the server refused a batch starting at "
                                    f"{rows[0]['id']!r}: {exc}") from None
        records += len(pending)
        if progress and pending:
            progress(len(pending))
        pending.clear()

    final_name = ""  # a replacement is imported under a temporary name, swapped in only when complete

    def finish() -> None:
        nonlocal collection
        flush()
        if collection is None:
            return
        if collection.count() != expected:
            raise TransferError(f"collection {final_name}: {collection.count()} records after import, "
                                f"the export has {expected}")
        if collection.name != final_name:
            client.delete_collection(final_name)
            collection.modify(name=final_name)
        collection = None

    try:
        for number, item in lines:
            kind = item.get("type")
            if kind == "collection":
                finish()
                final_name = item["name"]
                name = final_name
                if final_name in existing:
                    if not replace:
                        raise TransferError(f"collection {final_name!r} already exists at {url}; delete it or "
                                            "use --replace")
                    name = f"{final_name}-import-{uuid.uuid4().hex[:8]}"
                collection = client.create_collection(name, metadata=item.get("metadata"),
                                                      configuration=item.get("configuration") or None,
                                                      embedding_function=None)
                expected = int(item.get("count", 0))
                collections += 1
            elif kind == "record":
                if collection is None or item.get("collection") != final_name:
                    raise TransferError(f"{path}: line {number}: a record outside its collection")
                pending.append(item)
                if len(pending) >= batch_size:
                    flush()
            else:
                raise TransferError(f"{path}: line {number}: unknown line type {kind!r}")
        finish()
    except BaseException:
        if collection is not None:  # the half-imported one: the original (if any) is untouched
            with contextlib.suppress(Exception):
                client.delete_collection(collection.name)
        raise
    return TransferResult(collections, records, time.monotonic() - started)


def _column(rows: list[dict[str, Any]], key: str) -> list[Any] | None:
    values = [row.get(key) for row in rows]
    return None if all(v is None for v in values) else values
