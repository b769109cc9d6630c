"""The static checks: merged compose services in, findings (each with its fix, where one is safe) out."""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from .compose import ComposeFile, Entry, EnvVar, Service, merged_maps, merged_services
from .knowledge import (
    CHROMA,
    CHROMAGUARD,
    IGNORED_ON_1X,
    NEVER_IN_0X,
    NONEXISTENT_AUTH_CLASSES,
    OLLAMA,
    Image,
    auth_rename_for_line,
    change_on_rename,
    container_port,
    empty_unless_set,
    identify,
    is_auth_var,
    python_server,
    widens_access,
)
from .lines import LINES
from .model import Finding, Location
from .rules import RULES

_TOOLS = {"curl", "wget", "nc", "ncat", "netcat", "python", "python3", "perl", "bash", "sh", "ollama"}
_OTEL_ENDPOINTS = ("CHROMA_SERVER_OTEL_ENDPOINT", "CHROMA_OTEL_COLLECTION_ENDPOINT", "CHROMA_OPEN_TELEMETRY__ENDPOINT",
                   "OTEL_EXPORTER_OTLP_ENDPOINT")
_CORS = ("CHROMA_SERVER_CORS_ALLOW_ORIGINS", "CHROMA_CORS_ALLOW_ORIGINS")
_START_PERIOD = {CHROMA: "60s", CHROMAGUARD: "60s", OLLAMA: "120s"}


def _finding(rule: str, service: Service, message: str, where: Location, why: str, fix: str,
             apply: Callable[[], None] | None = None) -> Finding:
    return Finding(RULES[rule], service.name, message, where, why, fix, apply)


@dataclass(frozen=True)
class Fix:
    """A fix and the YAML nodes it changes (one another service shares is fixed by hand)."""

    targets: tuple[Any, ...]
    run: Callable[[], None]

    def __call__(self) -> None:
        self.run()


def shared_nodes(services: list[Service]) -> set[int]:
    """Ids of the nodes more than one service reaches (aliases, merge keys) or that carry an anchor."""
    seen: dict[int, set[str]] = {}
    anchored: set[int] = set()

    def walk(node: Any, owner: str) -> None:
        if not isinstance(node, (CommentedMap, CommentedSeq)) or owner in seen.setdefault(id(node), set()):
            return
        seen[id(node)].add(owner)
        if node.anchor.value is not None:
            anchored.add(id(node))
        children = [*node.values(), *merged_maps(node)] if isinstance(node, CommentedMap) else node
        for child in children:
            walk(child, owner)

    for service in services:
        for _, node in service.parts:
            walk(node, service.name)
    return anchored | {key for key, owners in seen.items() if len(owners) > 1}


def _by_hand_if_shared(findings: list[Finding], shared: set[int]) -> None:
    for finding in findings:
        if isinstance(finding.apply, Fix) and any(id(t) in shared for t in finding.apply.targets):
            finding.apply = None
            finding.fix += " (by hand: it touches YAML an anchor, alias or merge key shares, so --fix would " \
                           "change more than this)"


def _flow(items: list[str]) -> CommentedSeq:
    seq = CommentedSeq(DoubleQuotedScalarString(item) for item in items)
    seq.fa.set_flow_style()
    return seq


def working_test(image: Image, port: int) -> list[str]:
    """A health check built only from programs the image has."""
    if image.kind == OLLAMA:
        return ["CMD", "ollama", "list"]
    if image.kind == CHROMAGUARD:
        return ["CMD", "python", "-m", "chromaguard.probe"]
    if image.is_1x:
        return ["CMD", "bash", "-c",
                f"exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /api/v2/heartbeat HTTP/1.0\\r\\n\\r\\n' >&3 "
                "&& head -n 1 <&3 | grep -q ' 200 '"]
    return ["CMD", "python", "-c",
            f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/api/v1/heartbeat', timeout=10)"]


def _test_text(test: Any) -> tuple[str, str]:
    """(form, text) of a healthcheck test: CMD, CMD-SHELL or NONE."""
    if isinstance(test, str):
        return "CMD-SHELL", test
    items = [str(t) for t in (test or [])]
    if not items:
        return "NONE", ""
    if items[0] in ("CMD", "CMD-SHELL", "NONE"):
        return items[0], " ".join(shlex.quote(i) if items[0] == "CMD" else i for i in items[1:])
    return "CMD", " ".join(items)


def _programs(text: str) -> set[str]:
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    found = set()
    for word in words:
        base = word.rsplit("/", 1)[-1]
        if base in _TOOLS:
            found.add(base)
        elif " " in word:  # the script of `bash -c "..."`
            found |= _programs(word)
    return found


def _replace_test(service: Service, image: Image) -> Callable[[], None]:
    def apply() -> None:
        check = service.healthcheck()
        entry = check.get("test")
        target: CommentedMap
        if entry is not None:
            target = entry.parent
        else:
            file, node = service.first
            target = node.setdefault("healthcheck", CommentedMap())
        target["test"] = _flow(working_test(image, container_port(service, image)))

    return apply


def _add_healthcheck(service: Service, image: Image) -> Callable[[], None]:
    def apply() -> None:
        _, node = service.first
        check = CommentedMap()
        check["test"] = _flow(working_test(image, container_port(service, image)))
        check["interval"] = "30s"
        check["timeout"] = "10s"
        check["retries"] = 3
        check["start_period"] = _START_PERIOD[image.kind]
        node["healthcheck"] = check

    return apply


def _add_start_period(entry: Entry, image: Image) -> Callable[[], None]:
    def apply() -> None:
        entry.parent["start_period"] = _START_PERIOD[image.kind]

    return apply


def healthcheck_findings(service: Service, image: Image) -> list[Finding]:
    check = service.healthcheck()
    test = check.get("test")
    disabled = check.get("disable")
    if test is None or (disabled is not None and disabled.value is True) or _test_text(test.value)[0] == "NONE":
        where = test.location if test is not None else service.location
        return [_finding("CG104", service, f"{service.name} has no health check", where,
                         "Docker cannot tell a starting, hung or crash-looping server from a healthy one",
                         f"healthcheck: test: {working_test(image, container_port(service, image))}",
                         Fix((service.first[1],), _add_healthcheck(service, image)))]
    found: list[Finding] = []
    form, text = _test_text(test.value)
    replacement = working_test(image, container_port(service, image))
    replace = Fix((test.parent,), _replace_test(service, image))
    missing = sorted((_programs(text) & {"curl", "wget", "nc", "ncat", "netcat", "python", "python3"})
                     - image.binaries())
    if missing:
        found.append(_finding(
            "CG101", service, f"the health check calls {', '.join(missing)}, which the {image.reference or image.kind} "
            "image does not have", test.location,
            f"the image has only {', '.join(sorted(image.binaries())) or 'no shell tools'} of the usual tools: "
            "the check can never pass", f"test: {replacement}", replace))
    if form == "CMD-SHELL" and "/dev/tcp" in text and "bash" not in _programs(text):  # `bash -c` has it
        found.append(_finding("CG102", service, "the CMD-SHELL health check uses /dev/tcp, which sh does not have",
                              test.location, "CMD-SHELL runs /bin/sh (dash); /dev/tcp is a bash feature",
                              f"test: {replacement}", replace))
    if image.kind == CHROMA and not image.is_1x and "/api/v2/" in text \
            and LINES[image.line].serves("v2", image.version) is False:
        found.append(_finding("CG108", service, f"the health check calls the v2 API, which Chroma "
                              f"{image.reference or image.line} does not serve (it answers 404)", test.location,
                              "the v2 API came with Chroma 0.5.16", "test: " + str(replacement),
                              replace))
    if image.is_1x and "/api/v1/" in text:
        found.append(_finding("CG103", service, "the health check calls the v1 API, which Chroma 1.x answers with "
                              "410 Gone", test.location, "Chroma 1.x removed every /api/v1 endpoint",
                              "use /api/v2/heartbeat; test: " + str(replacement), replace))
    if image.kind == OLLAMA and ("ollama --version" in text or "ollama -v" in text):
        found.append(_finding("CG106", service, "`ollama --version` succeeds even when the Ollama server is down",
                              test.location, "it only prints the client's version", "test: [CMD, ollama, list]",
                              replace))
    if "start_period" not in check:
        found.append(_finding("CG105", service, "the health check has no start_period", test.location,
                              "failures while the server starts count against retries",
                              f"start_period: {_START_PERIOD[image.kind]}",
                              Fix((test.parent,), _add_start_period(test, image))))
    return found


def _env_targets(var: EnvVar) -> tuple[Any, ...]:
    """What a change of ``var`` touches: its map, and a merged map whose same key it shadows
    (removing it would bring that value back: a change only a human can weigh)."""
    if isinstance(var.node, CommentedMap):
        return (var.node, *(m for m in merged_maps(var.node) if var.key in m and m is not var.node))
    return (var.node,)


def _rename(var: EnvVar, new: str, service: Service) -> Callable[[], None]:
    def apply() -> None:
        if new in service.environment():  # set already (or renamed to just now), to this value: one is enough
            var.remove()
        else:
            var.rename(new)

    return apply


def env_findings(service: Service, image: Image) -> list[Finding]:
    env = service.environment()
    found: list[Finding] = []
    if image.kind == CHROMA:
        renamed_to: dict[str, tuple[str, str | None]] = {}  # a name two ignored ones would become
        for name, var in env.items():
            fix: tuple[str | None, str] | None = None
            if image.is_1x and name in IGNORED_ON_1X:
                if name == "ANONYMIZED_TELEMETRY" and image.version is not None and image.version < (1, 5, 4):
                    continue
                fix = IGNORED_ON_1X[name]
            elif not image.is_1x and name in NEVER_IN_0X:
                fix = NEVER_IN_0X[name]
            elif not image.is_1x and is_auth_var(name):
                fix = auth_rename_for_line(name, image.line)
            if fix is None:
                continue
            new, why = fix
            line = f"Chroma {image.line}" + (" (the `latest` tag)" if image.floating else "")
            opens = widens_access(new, var.value) if new else None
            changes = change_on_rename(new, var.value, image.line) if new and opens is None else None
            if new and opens is None and changes is None and new in renamed_to and new not in env and \
                    renamed_to[new][1] != var.value:
                changes = f"{renamed_to[new][0]} becomes {new} too, with another value: keep one"
            if changes is not None:
                found.append(_finding("CG201", service, f"{name} is ignored by {line}", var.location, why,
                                      f"decide: {changes}; or remove {name} (what runs today)"))
                continue
            if opens is not None:
                found.append(_finding(
                    "CG208", service, f"{name} is ignored by {line}; renaming it to {new} would open access: "
                    f"{opens}", var.location, f"{why}; today the file runs without it",
                    f"decide: remove {name} (what runs today), or rename it to {new} on purpose with the narrowest "
                    "value that works"))
                continue
            found.append(_finding(
                "CG201", service, f"{name} is ignored by {line}", var.location, why,
                f"rename it to {new}" if new else "remove it (it has no effect)",
                Fix(_env_targets(var), _rename(var, new, service) if new else var.remove)))
            if new:
                renamed_to.setdefault(new, (name, var.value))
        found += unknown_setting_findings(service, image, env, {f.location for f in found})
        auth = {n: v for n, v in env.items()  # a bare NAME passes the host's value on: configured
                if is_auth_var(n) and (v.value is None or v.value.strip().lower() not in ("", "none"))}
        if image.is_1x and auth:
            first = next(iter(auth.values()))
            found.append(_finding(
                "CG202", service, f"auth is configured ({', '.join(auth)}) but Chroma 1.x enforces none",
                first.location, "Chroma 1.x has no server auth: every request is let in",
                "put chromaguard in front (chromaguard init), which enforces these same variables"))
            ports = list(service.items("ports"))
            if ports:
                found.append(_finding(
                    "CG303", service, f"port {ports[0].value} is published while auth is expected but not enforced",
                    ports[0].location, "anyone who can reach the host can read and change all data",
                    "put chromaguard in front, or publish on 127.0.0.1 only"))
    for name, var in env.items():
        value = (var.value or "").strip()
        if is_auth_var(name) and value.lower() in NONEXISTENT_AUTH_CLASSES:
            found.append(_finding("CG203", service, f"{name}={value}: this class never existed in any Chroma",
                                  var.location, "Chroma 0.x cannot import it; 1.x ignores it",
                                  "use chromadb.auth.token.TokenConfigServerAuthCredentialsProvider (0.4) or "
                                  "chromadb.auth.token_authn.TokenAuthenticationServerProvider (0.5/0.6)"))
        if is_auth_var(name) and value.lower() == "none":
            found.append(_finding("CG204", service, f"{name}=none: `none` is a value, not 'unset'", var.location,
                                  "Chroma 0.x reads it as a class path and fails", "remove it",
                                  Fix(_env_targets(var), var.remove)))
        if name in _OTEL_ENDPOINTS and urlsplit(value if "://" in value else f"http://{value}").hostname in (
                "localhost", "127.0.0.1", "::1"):
            found.append(_finding("CG205", service, f"{name}={value} points at the container itself", var.location,
                                  "inside a container, localhost is that container",
                                  "use the collector's service name, e.g. http://otel-collector:4317"))
        if image.is_1x and name == "CHROMA_OPEN_TELEMETRY__ENDPOINT" and empty_unless_set(var.value):
            found.append(_finding("CG209", service, f"{name} is {'empty' if not value else value}: Chroma 1.x "
                                  "panics at start-up on an empty endpoint" + (f" (whenever {value} is unset on "
                                  "the host)" if value else ""), var.location,
                                  "a present endpoint turns tracing on; an empty one is not a valid URI",
                                  "remove it if tracing is not wanted, or give the variable a default: "
                                  "${NAME:-http://otel-collector:4317}"))
        if name in _CORS and "*" in value:
            found.append(_finding("CG206", service, f"{name}={value} allows every origin", var.location,
                                  "any web page can call the API from a user's browser",
                                  'list your origins, e.g. ["https://app.example.com"]'))
    return found


def unknown_setting_findings(service: Service, image: Image, env: dict[str, EnvVar],
                             reported: set[Location]) -> list[Finding]:
    """``CHROMA_*`` names the line does not read (and not already reported as renamed there)."""
    line = LINES[image.line]
    found = []
    for name, var in env.items():
        if not name.upper().startswith("CHROMA_") or line.reads(name) or var.location in reported \
                or (image.is_1x and is_auth_var(name)):  # 1.x reads no auth name at all: CG202 says so
            continue
        close = difflib.get_close_matches(name.upper(), sorted(line.settings.value), n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}?" if close else "remove it, or use a name the line reads"
        found.append(_finding("CG207", service, f"{name} is not a setting of Chroma {image.line}: it is ignored",
                              var.location, "the server ignores names it does not know", hint))
    return found


def _volume_target(value: Any) -> str:
    if isinstance(value, CommentedMap):
        return str(value.get("target", ""))
    parts = str(value).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _move_volume(entry: Entry, new_target: str) -> Callable[[], None]:
    def apply() -> None:
        value = entry.value
        if isinstance(value, CommentedMap):
            value["target"] = new_target
            return
        parts = str(value).split(":")
        parts[1 if len(parts) > 1 else 0] = new_target
        entry.parent[entry.key] = type(value)(":".join(parts)) if not isinstance(value, str) else ":".join(parts)

    return apply


def volume_findings(service: Service, image: Image) -> list[Finding]:
    volumes = list(service.items("volumes"))
    data_path = LINES[image.line].data_path.value if image.kind == CHROMA else "/data"
    if not volumes and image.kind in (CHROMA, CHROMAGUARD):
        if _tmpfs_at(service, data_path):
            return []  # a tmpfs at the data path: ephemeral on purpose
        return [_finding("CG302", service, f"{service.name} has no volume: its data dies with the container",
                         service.location, "the data dir is inside the container's own layer",
                         f"volumes: [chroma_data:{data_path}]")]
    found = []
    if image.is_1x:
        for entry in volumes:
            target = _volume_target(entry.value).rstrip("/")
            if target == "/chroma/chroma":
                found.append(_finding("CG301", service, f"volume {entry.value} is mounted at /chroma/chroma, but "
                                      "Chroma 1.x writes to /data", entry.location,
                                      "the data lives in the container layer and is lost when it is recreated",
                                      "mount it at /data", Fix((entry.parent,), _move_volume(entry, "/data"))))
    return found


def _tmpfs_at(service: Service, path: str) -> bool:
    entry = service.get("tmpfs")
    mounts = [] if entry is None else entry.value if isinstance(entry.value, list) else [entry.value]
    return any(str(m).split(":")[0].rstrip("/") == path for m in mounts)


def _healthy(entry: Entry, names: list[str]) -> Callable[[], None]:
    def apply() -> None:
        value = entry.value
        if isinstance(value, CommentedSeq):
            mapping = CommentedMap()
            for item in value:
                mapping[str(item)] = CommentedMap(condition="service_healthy" if str(item) in names
                                                  else "service_started")
            trailing = value.ca.items.get(len(value) - 1)
            if trailing and trailing[0] is not None and len(mapping):  # comments or blank lines after the list
                last = mapping[list(mapping)[-1]]
                last.ca.items["condition"] = [None, None, trailing[0], None]
            entry.parent[entry.key] = mapping
        else:
            for name in names:
                spec = value.get(name)
                if not isinstance(spec, CommentedMap):
                    spec = CommentedMap()
                    value[name] = spec
                spec["condition"] = "service_healthy"

    return apply


def depends_findings(service: Service, kinds: dict[str, Image | None]) -> list[Finding]:
    entry = service.get("depends_on")
    if entry is None:
        return []
    value = entry.value
    waiting: list[str] = []
    if isinstance(value, CommentedSeq):
        waiting = [str(v) for v in value if kinds.get(str(v)) is not None]
    elif isinstance(value, CommentedMap):
        waiting = [str(k) for k, spec in value.items() if kinds.get(str(k)) is not None
                   and not (isinstance(spec, CommentedMap) and spec.get("condition") == "service_healthy")]
    if not waiting:
        return []
    return [_finding("CG304", service, f"{service.name} starts before {', '.join(waiting)} is ready",
                     entry.location, "plain depends_on waits for the container to start, not for the server to answer",
                     "depends_on: {" + ", ".join(f"{w}: {{condition: service_healthy}}" for w in waiting) + "}",
                     Fix((entry.parent, entry.value), _healthy(entry, waiting)))]


def python_server_findings(service: Service, image: Image | None, fronted: bool) -> list[Finding]:
    """CVE-2026-45829: the Python server of an affected chromadb, reachable without an auth proxy."""
    server = python_server(service, image)
    if server is None or not server.affected:
        return []
    ports = service.get("ports")
    if ports is None and fronted:  # not published, and a chromaguard in this file fronts it
        return []
    version = "the newest chromadb" if server.version is None else "chromadb " + ".".join(map(str, server.version))
    reach = "its port is published" if ports is not None else "every container on its network reaches it directly"
    entry = service.get("command") or service.get("entrypoint")
    return [_finding("CG210", service, f"runs Chroma's Python server on {version} ({server.how}), open to "
                     f"CVE-2026-45829: {reach}", entry.location if entry else service.location,
                     "the Python server builds a client-supplied embedding function, running a model repository's "
                     "code, before it checks auth; no fixed release exists yet",
                     "run the Rust server (`chroma run`, image chromadb/chroma:1.5.9), or put chromaguard in front "
                     "and stop publishing this port")]


def chromaguard_findings(service: Service) -> list[Finding]:
    from ..config.settings import load_settings
    from ..errors import ConfigError

    env = {name: var.value or "" for name, var in service.environment().items()}
    # Files named in the environment live inside the container; they cannot be checked from here.
    checkable = {k: v for k, v in env.items() if not k.endswith("_FILE") and k != "CHROMAGUARD_CONFIG"}
    if env.get("CHROMA_SERVER_AUTH_PROVIDER", "none").lower() not in ("", "none"):
        checkable.setdefault("CHROMA_SERVER_AUTH_CREDENTIALS", "placeholder")
    try:
        load_settings(env=checkable)
    except ConfigError as exc:
        var = service.environment().get(exc.setting.split(":")[0])
        where = var.location if var is not None else service.location
        return [_finding("CG401", service, str(exc), where, "chromaguard validates every setting before it starts",
                         "fix the value it names")]
    return []


def examine(files: list[ComposeFile]) -> list[Finding]:
    services = merged_services(files)
    kinds = {s.name: identify(s) for s in services}
    fronted = any(image is not None and image.kind == CHROMAGUARD for image in kinds.values())
    found: list[Finding] = []
    for service in services:
        image = kinds[service.name]
        found += python_server_findings(service, image, fronted)
        if image is None:
            found += depends_findings(service, kinds)
            continue
        if image.kind == CHROMA and image.floating:
            entry = service.get("image")
            found.append(_finding("CG107", service, f"image {image.reference or '(no tag)'} floats: this file "
                                  "means Chroma 0.x on one pull and 1.x on the next",
                                  entry.location if entry else service.location,
                                  "`latest` moved from the 0.x line to 1.x, which renamed or dropped most settings",
                                  "pin a version, e.g. chromadb/chroma:1.5.9"))
        found += healthcheck_findings(service, image)
        found += env_findings(service, image)
        found += volume_findings(service, image)
        if image.kind == CHROMAGUARD:
            found += chromaguard_findings(service)
        found += depends_findings(service, kinds)
    _by_hand_if_shared(found, shared_nodes(services))
    return sorted(found, key=lambda f: (f.location.file, f.location.line, f.location.column, f.rule.id))
