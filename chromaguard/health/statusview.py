"""``chromaguard status``: the service's state on one screen (rich), or as JSON."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Group
from rich.table import Table

from ..probe import Unhealthy, http_get


def fetch_status(url: str, token: str | None, timeout: float = 10.0) -> dict[str, Any]:
    """GET /chromaguard/status; raises Unhealthy with a one-line reason when it cannot."""
    status, body = http_get(url.rstrip("/") + "/chromaguard/status", timeout, token)
    if status in (401, 403):
        raise Unhealthy(f"{url}: status needs an admin token (--token or CHROMAGUARD_TOKEN); answered {status}")
    if status == 404:
        raise Unhealthy(f"{url}: not a chromaguard service (no /chromaguard/status)")
    if status != 200:
        raise Unhealthy(f"{url}: status answered {status}")
    return json.loads(body)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


def render(data: dict[str, Any]) -> Group:
    guard, engine = data["chromaguard"], data["engine"]
    services = Table(title="chromaguard status", expand=False)
    for column in ("component", "state", "uptime", "restarts", "last failure", "version"):
        services.add_column(column)
    services.add_row("front door", "[green]serving[/green]", _duration(guard["uptime_s"]), "-", "-",
                     f"chromaguard {guard['version']} at {guard['listen']}")
    state = str(engine.get("state"))
    colour = "green" if state == "running" else "red"
    when = engine.get("last_failure_at")
    failure = engine.get("last_failure") or "-"
    if when:
        failure = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))} {failure}"
    services.add_row(f"engine ({engine.get('mode')})", f"[{colour}]{state}[/{colour}]",
                     _duration(engine.get("uptime_s")), str(engine.get("restarts", "-")), failure,
                     f"Chroma API {engine.get('version')} (chromadb {guard['chromadb_package']})")
    ollama = data.get("ollama")
    if ollama:
        colour = "green" if ollama["ok"] else "red"
        services.add_row("ollama", f"[{colour}]{'up' if ollama['ok'] else 'down'}[/{colour}]", "-", "-",
                         "-" if ollama["ok"] else ollama["detail"],
                         f"{ollama['url']}: {', '.join(ollama['models']) or 'no models'}")
    parts: list[Any] = [services]
    if "data" in data:
        disk = Table(title="data")
        for column in ("dir", "size", "free disk"):
            disk.add_column(column)
        disk.add_row(data["data"]["dir"], _size(data["data"]["size_bytes"]), _size(data["data"]["free_bytes"]))
        parts.append(disk)
    if "backup" in data:
        parts.append(_backups(data["backup"]))
    audit = data.get("audit")
    if audit:
        table = Table(title="audit log")
        for column in ("to", "lines written", "lines dropped", "last error"):
            table.add_column(column)
        dropped = f"[red]{audit['dropped']}[/red]" if audit["dropped"] else "0"
        table.add_row(audit["target"], str(audit["written"]), dropped, audit["last_error"] or "-")
        parts.append(table)
    collections = Table(title=f"collections ({len(data['collections'])})")
    for column in ("tenant", "database", "name", "records", "dimension"):
        collections.add_column(column)
    for c in data["collections"]:
        collections.add_row(c["tenant"], c["database"], c["name"], "-" if c["count"] is None else str(c["count"]),
                            "-" if c["dimension"] is None else str(c["dimension"]))
    parts.append(collections)
    return Group(*parts)


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _backups(b: dict[str, Any]) -> Table:
    table = Table(title=f"backups to {b['repository']} ({b['schedule']})")
    for column in ("last backup", "age", "size", "uploaded", "next run", "verified", "problem"):
        table.add_column(column)
    if b["verified_ok"] is None:
        verified = "-"
    else:
        verified = "[green]ok[/green]" if b["verified_ok"] else "[red]FAILED[/red]"
    problem = "[yellow]running[/yellow]" if b["running"] else "-"
    if b["last_error"]:
        problem = f"[red]{b['last_error']}[/red] ({b['failures']} failure(s))"
    table.add_row(f"{b['last_id'] or 'none yet'}", _duration(b["age_s"]), _size(b["last_size"]),
                  _size(b["last_uploaded"]), _when(b["next_run"]), verified, problem)
    return table
