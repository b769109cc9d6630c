"""The official chromadb clients get the same answers through chromaguard as from the bare engine."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import chromadb
import numpy as np
import pytest
from chromadb.config import Settings
from support.clients import http_client
from support.procs import BareEngine, Guard

DIM = 16


def _vectors(n: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return rng.random((n, DIM), dtype=np.float32).round(4).tolist()


def _outcome(call: Callable[[], Any]) -> Any:
    """The result of a call, or the type and message of the error it raised."""
    try:
        return _plain(call())
    except Exception as exc:  # the engine's errors must reach the client unchanged too
        return {"raised": type(exc).__name__, "message": str(exc)}


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.round(4).tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "name") and hasattr(value, "metadata") and hasattr(value, "id"):
        return {"name": value.name, "metadata": value.metadata}
    if isinstance(value, float):
        return round(value, 4)
    return value


def exercise(client: chromadb.ClientAPI, tag: str) -> dict[str, Any]:
    """Every data operation a user makes, with results that do not depend on ids or timing."""
    out: dict[str, Any] = {}
    tenant, database = f"tenant-{tag}", f"db-{tag}"
    admin = chromadb.AdminClient(Settings(chroma_api_impl="chromadb.api.fastapi.FastAPI",
                                          chroma_server_host=client._server._api_url.split("//")[1].split(":")[0],
                                          chroma_server_http_port=int(client._server._api_url.split(":")[-1].split("/")[0]),
                                          anonymized_telemetry=False))
    out["create_tenant"] = _outcome(lambda: admin.create_tenant(tenant))
    out["get_tenant"] = _outcome(lambda: admin.get_tenant(tenant))
    out["create_database"] = _outcome(lambda: admin.create_database(database, tenant))
    out["get_database"] = _outcome(lambda: {k: v for k, v in admin.get_database(database, tenant).items() if k != "id"})
    out["list_databases"] = _outcome(lambda: sorted(d["name"] for d in admin.list_databases(tenant=tenant)))
    client.set_tenant(tenant, database)

    col = client.create_collection("items", metadata={"kind": "test", "hnsw:space": "cosine"},
                                   embedding_function=None)
    out["create_collection_again"] = _outcome(lambda: client.create_collection("items", embedding_function=None))
    out["get_or_create"] = _outcome(lambda: client.get_or_create_collection("items", embedding_function=None))
    out["list"] = _outcome(lambda: sorted(c.name for c in client.list_collections()))
    out["count_collections"] = _outcome(client.count_collections)

    ids = [f"id-{i}" for i in range(60)]
    vectors = _vectors(60, 1)
    out["add"] = _outcome(lambda: col.add(
        ids=ids[:50], embeddings=vectors[:50], documents=[f"document number {i} {'red' if i % 2 else 'blue'}"
                                                          for i in range(50)],
        metadatas=[{"n": i, "color": "red" if i % 2 else "blue", "f": i / 10} for i in range(50)]))
    out["add_duplicate"] = _outcome(lambda: col.add(ids=["id-0"], embeddings=[vectors[0]]))
    out["add_wrong_dimension"] = _outcome(lambda: col.add(ids=["bad"], embeddings=[[0.1, 0.2]]))
    out["upsert"] = _outcome(lambda: col.upsert(ids=ids[45:60], embeddings=vectors[45:60],
                                                metadatas=[{"n": i, "color": "green"} for i in range(45, 60)]))
    out["update"] = _outcome(lambda: col.update(ids=["id-1"], embeddings=[vectors[59]],
                                                documents=["updated red document"],
                                                metadatas=[{"n": 1, "color": "red", "updated": True}]))
    out["count"] = _outcome(col.count)
    out["peek"] = _outcome(lambda: col.peek(5)["ids"])
    out["get_ids"] = _outcome(lambda: col.get(ids=["id-1", "id-2", "missing"], include=["documents", "metadatas",
                                                                                         "embeddings"]))
    out["get_where"] = _outcome(lambda: sorted(col.get(where={"$and": [{"color": "red"}, {"n": {"$lt": 20}}]})["ids"]))
    out["get_where_in"] = _outcome(lambda: sorted(col.get(where={"color": {"$in": ["green", "blue"]}},
                                                          limit=10, offset=0)["ids"]))
    out["get_where_document"] = _outcome(lambda: sorted(col.get(where_document={"$contains": "red"})["ids"]))
    out["get_page"] = _outcome(lambda: col.get(limit=7, offset=3, include=[])["ids"])
    out["query"] = _outcome(lambda: col.query(query_embeddings=vectors[:3], n_results=5,
                                              include=["distances", "metadatas", "documents"]))
    out["query_where"] = _outcome(lambda: col.query(query_embeddings=[vectors[7]], n_results=4,
                                                    where={"color": "green"}, include=["distances"]))
    out["query_where_document"] = _outcome(lambda: col.query(query_embeddings=[vectors[7]], n_results=4,
                                                             where_document={"$not_contains": "blue"}))
    out["query_bad_filter"] = _outcome(lambda: col.query(query_embeddings=[vectors[0]], where={"n": {"$bogus": 1}}))
    out["delete_ids"] = _outcome(lambda: col.delete(ids=["id-3", "id-4"]))
    out["delete_where"] = _outcome(lambda: col.delete(where={"color": "green"}))
    out["count_after_delete"] = _outcome(col.count)
    out["modify"] = _outcome(lambda: col.modify(name="items-renamed", metadata={"kind": "renamed"}))
    out["get_renamed"] = _outcome(lambda: client.get_collection("items-renamed"))
    out["fork"] = _outcome(lambda: col.fork("items-fork"))
    out["get_missing"] = _outcome(lambda: client.get_collection("does-not-exist"))

    big = client.create_collection("big", embedding_function=None)
    limit = client.get_max_batch_size()
    out["max_batch"] = limit
    big_vectors = np.random.default_rng(7).random((limit, DIM), dtype=np.float32)
    out["add_max_batch"] = _outcome(lambda: big.add(ids=[f"b{i}" for i in range(limit)], embeddings=big_vectors))
    out["count_max_batch"] = _outcome(big.count)
    out["add_over_max_batch"] = _outcome(lambda: big.add(ids=[f"o{i}" for i in range(limit + 1)],
                                                         embeddings=np.zeros((limit + 1, DIM), dtype=np.float32)))
    out["query_big"] = _outcome(lambda: big.query(query_embeddings=big_vectors[:2], n_results=3,
                                                  include=["distances"])["ids"])
    out["delete_collection"] = _outcome(lambda: client.delete_collection("big"))
    out["list_after_delete"] = _outcome(lambda: sorted(c.name for c in client.list_collections()))
    out["delete_missing"] = _outcome(lambda: client.delete_collection("big"))
    return out


def test_sync_client_same_results_as_bare_engine(guard: Guard, bare: BareEngine) -> None:
    tag = uuid.uuid4().hex[:8]
    through_guard = exercise(http_client(guard.port), tag)
    direct = exercise(http_client(bare.port), tag)
    assert through_guard.keys() == direct.keys()
    for key in direct:
        assert through_guard[key] == direct[key], key
    # The scenario really did something: these are facts about the data, not just "equal".
    assert direct["count"] == 60 and direct["count_after_delete"] == 43
    assert direct["get_ids"]["documents"] == ["updated red document", "document number 2 blue"]
    assert direct["count_max_batch"] == direct["max_batch"] > 1000
    assert "raised" in direct["get_missing"] and "raised" in direct["add_over_max_batch"]


async def exercise_async(port: int, name: str) -> dict[str, Any]:
    client = await chromadb.AsyncHttpClient(host="127.0.0.1", port=port,
                                            settings=Settings(anonymized_telemetry=False))
    out: dict[str, Any] = {"heartbeat_is_int": isinstance(await client.heartbeat(), int)}
    col = await client.create_collection(name, metadata={"a": 1}, embedding_function=None)
    vectors = _vectors(30, 3)
    await col.add(ids=[f"x{i}" for i in range(30)], embeddings=vectors, documents=[f"doc {i}" for i in range(30)],
                  metadatas=[{"i": i} for i in range(30)])
    await col.upsert(ids=["x0", "y0"], embeddings=vectors[:2], metadatas=[{"i": 100}, {"i": 101}])
    await col.update(ids=["x1"], embeddings=vectors[5:6], documents=["changed"])
    out["count"] = await col.count()
    out["get"] = _plain(await col.get(where={"i": {"$gte": 28}}, include=["metadatas", "documents"]))
    # The engine's index catches up with the upsert on its own time: a query right after it may
    # not see y0 yet (seen on the bare engine too). Wait until it does, through either port, so
    # that what is compared is the relay, not that race.
    for _ in range(100):
        found = await col.query(query_embeddings=vectors[:2], n_results=3, include=["distances"])
        if found["ids"][1][:1] == ["y0"]:
            break
        await asyncio.sleep(0.05)
    out["query"] = _plain(found)
    out["peek"] = _plain((await col.peek(3))["ids"])
    await col.delete(ids=["x2"])
    out["count_after_delete"] = await col.count()
    await col.modify(metadata={"a": 2})
    out["metadata"] = (await client.get_collection(name)).metadata
    out["listed"] = name in [c.name for c in await client.list_collections()]
    await client.delete_collection(name)
    try:
        await client.get_collection(name)
        out["after_delete"] = "still there"
    except Exception as exc:
        out["after_delete"] = type(exc).__name__
    return out


async def test_async_client_same_results_as_bare_engine(guard: Guard, bare: BareEngine, name: str) -> None:
    through_guard = await exercise_async(guard.port, name)
    direct = await exercise_async(bare.port, name)
    assert through_guard == direct
    assert direct["count"] == 31 and direct["count_after_delete"] == 30 and direct["heartbeat_is_int"]


def test_reset_follows_allow_reset(guard: Guard) -> None:
    """The shared guard runs with --allow-reset; a default guard refuses reset like Chroma does."""
    with Guard() as strict:
        client = http_client(strict.port, allow_reset=True)
        client.create_collection("keep-me", embedding_function=None)
        with pytest.raises(Exception, match="(?i)reset"):
            client.reset()
        assert [c.name for c in client.list_collections()] == ["keep-me"]
