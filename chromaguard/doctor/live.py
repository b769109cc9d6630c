"""``chromaguard doctor --live URL``: what a running Chroma, chromaguard or Ollama really does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from ..probe import client_tls
from ..proxy.configpolicy import ConfigPolicy
from .model import Finding, Location
from .rules import RULES

_DATA = "/api/v2/tenants/default_tenant/databases/default_database/collections"
_FOREIGN_ORIGIN = "https://doctor.invalid"


@dataclass
class LiveReport:
    url: str
    kind: str = "unknown"
    facts: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def add(self, rule: str, message: str, why: str, fix: str) -> None:
        self.findings.append(Finding(RULES[rule], self.kind, message, Location(self.url), why, fix))


def _get(http: httpx.Client, path: str, **kwargs: Any) -> httpx.Response | None:
    try:
        return http.get(path, **kwargs)
    except httpx.HTTPError:
        return None


def examine(url: str, *, token: str | None = None, models: list[str] | None = None,
            timeout: float = 10.0) -> LiveReport:
    url = url.rstrip("/")
    report = LiveReport(url)
    with httpx.Client(base_url=url, timeout=timeout, verify=client_tls(url)) as http:
        tags = _get(http, "/api/tags")
        if tags is not None and tags.status_code == 200 and "models" in tags.text:
            return _ollama(report, tags, models or [])
        v2 = _get(http, "/api/v2/heartbeat")
        if v2 is None:
            report.add("CG504", f"{url} does not answer", "nothing listens there or a firewall drops it",
                       "check the address and that the server runs")
            return report
        v1 = _get(http, "/api/v1/heartbeat")
        report.facts["v2_heartbeat"] = v2.status_code
        report.facts["v1_heartbeat"] = v1.status_code if v1 is not None else None
        guard = _get(http, "/healthz")
        report.kind = "chromaguard" if guard is not None and guard.status_code == 200 else "chroma"
        version = _get(http, "/api/v2/version")
        report.facts["version"] = version.json() if version is not None and version.status_code == 200 else None
        if v2.status_code != 200:
            report.add("CG504", f"/api/v2/heartbeat answered {v2.status_code}", v2.text[:200],
                       "look at the server's logs (chromaguard status shows the engine's last failure)")
        if v1 is not None and v1.status_code == 410:
            report.add("CG503", "/api/v1/heartbeat answers 410 Gone", "Chroma 1.x without chromaguard",
                       "health checks must call /api/v2/heartbeat, or put chromaguard in front")
        ready = _get(http, "/readyz" if report.kind == "chromaguard" else "/api/v2/healthcheck")
        report.facts["ready"] = ready.status_code if ready is not None else None
        if ready is not None and ready.status_code != 200:
            report.add("CG504", f"not ready ({ready.status_code}): {ready.text[:200]}", "a readiness check failed",
                       "see /readyz for which one")
        anonymous = _get(http, _DATA)
        report.facts["data_without_credentials"] = anonymous.status_code if anonymous is not None else None
        if anonymous is not None and anonymous.status_code == 200:
            report.add("CG501", f"GET {_DATA} answered 200 without credentials", "no auth is enforced",
                       "put chromaguard with CHROMA_SERVER_AUTH_PROVIDER=token in front")
        if token:
            authed = _get(http, _DATA, headers={"authorization": f"Bearer {token}"})
            report.facts["data_with_token"] = authed.status_code if authed is not None else None
        _stored_configurations(http, report, {"authorization": f"Bearer {token}"} if token else {})
        try:
            preflight = http.options(_DATA, headers={"origin": _FOREIGN_ORIGIN,
                                                     "access-control-request-method": "GET"})
            allowed = preflight.headers.get("access-control-allow-origin")
        except httpx.HTTPError:
            allowed = None
        report.facts["cors_foreign_origin"] = allowed
        if allowed in ("*", _FOREIGN_ORIGIN):
            report.add("CG502", f"a preflight from {_FOREIGN_ORIGIN} was allowed ({allowed})",
                       "any web page can call the API from a user's browser",
                       "set CHROMA_SERVER_CORS_ALLOW_ORIGINS to your origins")
    return report


def _stored_configurations(http: httpx.Client, report: LiveReport, headers: dict[str, str]) -> None:
    """Collections whose stored configuration would make clients run code (CG506)."""
    policy = ConfigPolicy()
    checked = 0
    for tenant, database in _databases(http, headers):
        base = f"/api/v2/tenants/{quote(tenant, safe='')}/databases/{quote(database, safe='')}/collections"
        listed = _get(http, base + "?limit=100000", headers=headers)
        if listed is None or listed.status_code != 200:
            continue
        for collection in listed.json():
            checked += 1
            why = policy.refusal_in(collection, "")
            if why:
                name = collection.get("name")
                report.add("CG506", f"collection {tenant}/{database}/{name} ({collection.get('id')}): {why}",
                           "every client that opens this collection would run the model repository's code",
                           f"in Python: client.get_collection({name!r}, embedding_function=<a safe one>)"
                           ".modify(configuration={'embedding_function': <the same, without trust_remote_code>}), "
                           "or recreate the collection without it; chromaguard refuses new ones")
    report.facts["collections_checked"] = checked


def _databases(http: httpx.Client, headers: dict[str, str]) -> list[tuple[str, str]]:
    """(tenant, database) pairs to look in: every tenant's databases when chromaguard's status
    lists them (an admin), else the default tenant's."""
    found = {("default_tenant", "default_database")}
    status = _get(http, "/chromaguard/status", headers=headers)
    if status is not None and status.status_code == 200:
        for entry in status.json().get("collections", []):
            if isinstance(entry, dict) and entry.get("tenant") and entry.get("database"):
                found.add((str(entry["tenant"]), str(entry["database"])))
    databases = _get(http, "/api/v2/tenants/default_tenant/databases", headers=headers)
    if databases is not None and databases.status_code == 200:
        found |= {("default_tenant", str(d.get("name"))) for d in databases.json() if isinstance(d, dict)}
    return sorted(found)


def _ollama(report: LiveReport, tags: httpx.Response, models: list[str]) -> LiveReport:
    from ..probe import model_present

    report.kind = "ollama"
    present = [m.get("name") for m in tags.json().get("models", [])]
    report.facts["models"] = present
    for model in models:
        if not model_present(model, present):
            report.add("CG505", f"model {model} is not pulled", f"pulled: {', '.join(present) or 'none'}",
                       f"ollama pull {model}")
    return report
