"""``/readyz`` and ``/chromaguard/status``: what the service depends on, checked now.

Readiness has one entry per check (engine heartbeat and healthcheck; Ollama and
its models when configured; free disk under the data dir); any failing one
makes it 503. Status adds what an operator wants on one screen.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from . import __version__, catalog
from .probe import model_present
from .upstream import UpstreamError, UpstreamPool, fetch

_CHECK_TIMEOUT = 3.0


@dataclass
class Dependencies:
    pool: UpstreamPool
    backend: Any
    data_dir: Path | None = None
    min_free_disk: int = 0
    ollama_url: str | None = None
    ollama_models: tuple[str, ...] = ()
    started_at: float = field(default_factory=time.time)
    listen: str = ""
    upstream: str | None = None


def _check(ok: bool, detail: str) -> dict[str, Any]:
    return {"ok": ok, "detail": detail}


async def _engine(deps: Dependencies, path: str) -> dict[str, Any]:
    if not deps.backend.available:
        return _check(False, deps.backend.unavailable_reason)
    try:
        response = await deps.pool.request("GET", path.encode(), timeout=_CHECK_TIMEOUT)
        body = await response.read()
    except UpstreamError as exc:
        return _check(False, str(exc))
    if response.status != 200:
        return _check(False, f"{path} answered {response.status}: {body[:200].decode(errors='replace')}")
    return _check(True, f"{path} answered 200")


async def ollama_state(url: str, models: tuple[str, ...]) -> dict[str, Any]:
    try:
        status, body = await fetch(url, "/api/tags", timeout=_CHECK_TIMEOUT)
    except UpstreamError as exc:
        return {"ok": False, "detail": f"Ollama at {url} is not reachable: {exc}", "models": [], "missing": []}
    if status != 200:
        return {"ok": False, "detail": f"Ollama at {url} answered {status}", "models": [], "missing": []}
    try:
        present = [m["name"] for m in json.loads(body)["models"]]
    except (ValueError, KeyError, TypeError):
        return {"ok": False, "detail": f"{url} does not answer like Ollama", "models": [], "missing": []}
    missing = [m for m in models if not model_present(m, present)]
    detail = (f"models not pulled: {', '.join(missing)}" if missing else f"up with {len(present)} model(s)")
    return {"ok": not missing, "detail": detail, "models": present, "missing": missing}


def _disk(deps: Dependencies) -> dict[str, Any]:
    assert deps.data_dir is not None
    free = shutil.disk_usage(deps.data_dir).free
    ok = free >= deps.min_free_disk
    detail = f"{free // 2**20} MiB free under the data dir"  # open endpoint: no paths
    if not ok:
        detail += f" (needs at least {deps.min_free_disk // 2**20} MiB: CHROMAGUARD_MIN_FREE_DISK)"
    return _check(ok, detail)


async def readiness(deps: Dependencies) -> tuple[bool, dict[str, Any]]:
    names = ["engine_heartbeat", "engine_healthcheck"]
    jobs = [_engine(deps, "/api/v2/heartbeat"), _engine(deps, "/api/v2/healthcheck")]
    if deps.ollama_url:
        names.append("ollama")
        jobs.append(ollama_state(deps.ollama_url, deps.ollama_models))
    results = dict(zip(names, await asyncio.gather(*jobs)))
    if "ollama" in results:
        results["ollama"] = _check(results["ollama"]["ok"], results["ollama"]["detail"])
    if deps.data_dir is not None and deps.min_free_disk:
        results["disk"] = _disk(deps)
    ready = all(check["ok"] for check in results.values())
    return ready, {"status": "ready" if ready else "not ready", "checks": results}


async def status(deps: Dependencies) -> dict[str, Any]:
    """Everything ``chromaguard status`` shows, as JSON."""
    backend = deps.backend
    engine: dict[str, Any] = {"mode": "upstream" if deps.upstream else "embedded"}
    if hasattr(backend, "restarts"):  # the embedded engine's supervisor
        proc = backend.engine
        engine.update({
            "state": "unresponsive" if backend.state == "running" and not backend.responsive else backend.state,
            "pid": proc.pid, "restarts": backend.restarts, "last_failure": backend.last_failure or None,
            "last_failure_at": backend.last_failure_at,
            "uptime_s": round(time.monotonic() - proc.started_at, 1) if proc.started_at and proc.running else None,
        })
    else:
        engine["url"] = deps.upstream
    try:
        response = await deps.pool.request("GET", b"/api/v2/version", timeout=_CHECK_TIMEOUT)
        engine["version"] = json.loads(await response.read())
        engine.setdefault("state", "running")
    except (UpstreamError, ValueError) as exc:
        engine["version"] = None
        engine.setdefault("state", f"unreachable: {exc}")
    out: dict[str, Any] = {
        "chromaguard": {"version": __version__, "chromadb_package": version("chromadb"), "pid": os.getpid(),
                        "uptime_s": round(time.time() - deps.started_at, 1), "listen": deps.listen},
        "engine": engine,
        "collections": await _collections(deps),
    }
    if deps.data_dir is not None:
        usage = shutil.disk_usage(deps.data_dir)
        out["data"] = {"dir": str(deps.data_dir), "size_bytes": catalog.directory_size(deps.data_dir),
                       "free_bytes": usage.free}
    if deps.ollama_url:
        out["ollama"] = {"url": deps.ollama_url, **(await ollama_state(deps.ollama_url, deps.ollama_models))}
    return out


async def _collections(deps: Dependencies) -> list[dict[str, Any]]:
    if deps.data_dir is not None:
        entries = [(c.tenant, c.database, c.name, c.id, c.dimension) for c in catalog.collections(deps.data_dir)]
    else:
        entries = await _listed(deps)
    out = []
    for tenant, database, name, cid, dimension in entries[:200]:
        count = None
        try:
            path = f"/api/v2/tenants/{tenant}/databases/{database}/collections/{cid}/count"
            response = await deps.pool.request("GET", path.encode(), timeout=_CHECK_TIMEOUT)
            body = await response.read()
            if response.status == 200:
                count = int(json.loads(body))
        except (UpstreamError, ValueError):
            pass
        out.append({"tenant": tenant, "database": database, "name": name, "id": cid, "dimension": dimension,
                    "count": count})
    return out


async def _listed(deps: Dependencies) -> list[tuple[str, str, str, str, int | None]]:
    path = b"/api/v2/tenants/default_tenant/databases/default_database/collections"
    try:
        response = await deps.pool.request("GET", path, timeout=_CHECK_TIMEOUT)
        items = json.loads(await response.read())
    except (UpstreamError, ValueError):
        return []
    if not isinstance(items, list):
        return []
    return [("default_tenant", "default_database", c.get("name"), c.get("id"), c.get("dimension")) for c in items]
