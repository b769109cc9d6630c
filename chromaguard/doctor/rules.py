"""Every rule the doctor applies, with its documentation (``chromaguard doctor --explain ID``)."""

from __future__ import annotations

from .lines import LINES
from .model import Rule


def _rule(id: str, name: str, severity: str, summary: str, explanation: str, fixable: bool = False) -> Rule:
    return Rule(id, name, severity, summary, explanation.strip(), fixable)


RULES: dict[str, Rule] = {r.id: r for r in (
    _rule("CG101", "healthcheck-binary-missing", "error",
          "The health check calls a program the image does not have.",
          """
The check can never pass, so the container is reported unhealthy forever and everything that
waits for `service_healthy` never starts. The `chromadb/chroma` 1.x image has bash and perl but
no curl, wget, nc or python; the 0.x images (python:3.11-slim) have python but no curl, wget or nc;
the `ollama/ollama` image has none of curl, wget, nc or python.

Fix (applied by `--fix`): a check built from what the image has. Chroma 1.x:
`bash -c` with `/dev/tcp` sending `GET /api/v2/heartbeat` and expecting `200`; Chroma 0.x: a
`python -c` urllib call; Ollama: `ollama list`; chromaguard: `python -m chromaguard.probe`.
""", True),
    _rule("CG102", "healthcheck-dev-tcp-in-sh", "error",
          "A CMD-SHELL health check uses /dev/tcp, which sh does not have.",
          """
`CMD-SHELL` runs the command with `/bin/sh`, which is dash in Debian-based images: `/dev/tcp` is a
bash feature, so the redirection fails and the check never passes. Fix (applied by `--fix`): run
it with `bash -c` in exec form.
""", True),
    _rule("CG103", "v1-api-on-chroma-1x", "error",
          "The health check calls the v1 API, which Chroma 1.x answers with 410 Gone.",
          """
Chroma 1.x removed the v1 API: every `/api/v1/*` request, `/api/v1/heartbeat` included, answers
`410 Gone`, so `curl -f` fails. Use `/api/v2/heartbeat` (alive) or `/api/v2/healthcheck` (ready).
chromaguard answers `/api/v1/heartbeat` again for old checks. Fix: applied by `--fix`.
""", True),
    _rule("CG104", "healthcheck-missing", "warning",
          "The service has no health check.",
          """
Without a health check Docker reports the container as running while the server inside may be
starting, hung or crash-looping, and `depends_on: condition: service_healthy` cannot be used.
Fix (applied by `--fix`): a check that works in the image, with interval, timeout, retries and a
start period.
""", True),
    _rule("CG105", "healthcheck-no-start-period", "warning",
          "The health check has no start_period.",
          """
Chroma replays its write log and Ollama loads models at start-up; without `start_period` the
first failed checks count against `retries` and a slow start is reported as unhealthy (and
restarted by orchestrators). Fix (applied by `--fix`): `start_period: 60s` (Chroma) or `120s` (Ollama).
""", True),
    _rule("CG106", "ollama-version-healthcheck", "error",
          "`ollama --version` is used as a health check; it exits 0 even when the server is down.",
          """
`ollama --version` prints the client version and succeeds whether or not `ollama serve` is
running. `ollama list` asks the server and fails when it is down. Fix: applied by `--fix`.
""", True),
    _rule("CG107", "image-tag-floating", "warning",
          "The image is `latest` (or has no tag): the Chroma line changes under the same file.",
          """
`chromadb/chroma:latest` moved from the 0.x line (Python server, `/chroma/chroma`, v1 API, token
auth) to the 1.x line (Rust server, `/data`, v2 API only, no auth) without any change to the
compose file. That is what broke setups like this one. Pin a version (for example
`chromadb/chroma:1.5.9`) and upgrade on purpose. Not fixed automatically: choosing the version is
yours.
"""),
    _rule("CG108", "v2-api-before-0.5.16", "error",
          "The health check calls the v2 API, which Chroma before 0.5.16 does not serve.",
          """
Chroma added the `/api/v2` routes in 0.5.16 (0.6 serves v1 and v2, 1.x only v2). On 0.4 and
0.5.0-0.5.15 `/api/v2/heartbeat` answers 404, so the check never passes. Fix (applied by
`--fix`): a check on `/api/v1/heartbeat` built from what the image has.
""", True),
    _rule("CG201", "env-ignored", "warning",
          "An environment variable that this Chroma line ignores.",
          """
The server silently ignores the name, so the setting does not do what the file says. The finding
names the variable the line really reads. Fix (applied by `--fix`): renamed where a real name
exists, removed where the setting has no effect (for example `ANONYMIZED_TELEMETRY` since 1.5.4,
`IS_PERSISTENT` on 1.x). A rename that would change what runs today is reported as a decision and
not applied: a port or listen address other than the one the server uses now, an OpenTelemetry
endpoint that is empty (or empty when a host variable is unset), a value Chroma 1.x may not parse,
another line's auth class, two ignored names that would become one with different values. So is
one whose value sits in an anchor or merge key others share. Renames that would open access are
CG208.
""", True),
    _rule("CG202", "auth-not-enforced-on-chroma-1x", "error",
          "Auth is configured, but Chroma 1.x has no server auth: every request is let in.",
          """
Chroma 1.x has no server-side authentication at all; `CHROMA_SERVER_AUTH_*` and
`CHROMA_SERVER_AUTHN_*` are ignored and anyone who can reach the port can read, change and delete
everything. Put chromaguard in front (`chromaguard init` writes a compose file that does), which
enforces the same variables. Not fixed automatically: adding auth is a decision for you.
"""),
    _rule("CG203", "auth-class-never-existed", "error",
          "An auth class name that never existed in any Chroma release.",
          """
For example `chromadb.auth.token.TokenAuthServer`: Chroma 0.x fails to start (the class cannot be
imported) and 1.x ignores it. Real names: 0.4 `chromadb.auth.token.TokenAuthServerProvider` with
`chromadb.auth.token.TokenConfigServerAuthCredentialsProvider`; 0.5/0.6
`chromadb.auth.token_authn.TokenAuthenticationServerProvider`. chromaguard accepts all of them.
"""),
    _rule("CG204", "auth-provider-none-literal", "warning",
          "`none` is written as an auth setting's value.",
          """
Chroma 0.x reads the value as a class path and fails on `none`; to turn auth off, leave the
variable out. Fix (applied by `--fix`): the variable is removed.
""", True),
    _rule("CG205", "otel-endpoint-localhost", "warning",
          "The OpenTelemetry endpoint is localhost inside a container.",
          """
Inside a container, `localhost` is the container itself: spans sent there are lost. Point it at
the collector's service name (for example `http://otel-collector:4317`). Not fixed automatically:
the collector's name is yours.
"""),
    _rule("CG206", "cors-any-origin", "warning",
          "CORS allows every origin (`[\"*\"]`).",
          """
Any web page a user opens can call the database from their browser. List the origins that need
it, for example `["https://app.example.com"]`. Not fixed automatically.
"""),
    _rule("CG207", "env-unknown", "warning",
          "A `CHROMA_*` variable that no setting of this Chroma line has.",
          """
The server reads only the names it knows and ignores the rest without a word, so a misspelled or
invented name (for example `CHROMA_OTEL_EXPORTER_HEADERS`: the 0.x name is
`CHROMA_OTEL_COLLECTION_HEADERS`) leaves the setting off. The finding names the closest real name
of the line, when one is close. Not fixed automatically: only you know what was meant. The names
each line reads are listed, with their sources, in `chromaguard/doctor/lines.py`.
"""),
    _rule("CG208", "rename-would-open-access", "warning",
          "An ignored setting whose rename to the real name would open access: a decision for you.",
          """
Renaming an ignored setting to the name the engine reads turns its value on. When that value
opens access (a CORS origin list, `ALLOW_RESET=TRUE`, a listen address other than loopback), the
file today runs without it, and `--fix` does not switch it on behind your back: the file is left
as it is for that setting. Decide: remove the line (the behaviour you have today), or rename it
on purpose, with the narrowest value that works (your own origins, reset off).
"""),
    _rule("CG209", "otel-endpoint-empty", "error",
          "Chroma 1.x's OpenTelemetry endpoint is empty (or empty whenever a host variable is unset).",
          """
Chroma 1.x treats a present `CHROMA_OPEN_TELEMETRY__ENDPOINT` as "trace to this endpoint" and
panics at start-up when it is empty (`could not build span exporter for tracing:
InvalidUri(Empty)`): the container exits and restarts in a loop. `- NAME=${NAME}` is empty whenever
the host has no `NAME`, as in Chroma's own compose file. Remove the line when tracing is not
wanted, or give the variable a default (`${NAME:-http://otel-collector:4317}`). Not fixed
automatically: the collector's address is yours.
"""),
    _rule("CG210", "python-server-cve-2026-45829", "error",
          "Chroma's Python server of an affected chromadb is reachable without an auth proxy (CVE-2026-45829).",
          """
CVE-2026-45829 (GHSA-f4j7-r4q5-qw2c, "ChromaToast"): Chroma's Python FastAPI server
(`uvicorn chromadb.app:app`) builds the embedding function a collection-creation request names,
downloading and running a Hugging Face model repository's code when its configuration says
`trust_remote_code`, before it checks the request's credentials. An unauthenticated caller runs
code in the server. Affected: chromadb 1.0.0 and later; no fixed release had been published when
this rule was written (the advisory's last affected version is 1.5.9; the fix is merged upstream
as chroma-core/chroma#7237). The 0.x servers and the Rust server (`chroma run`, the
`chromadb/chroma` 1.x image's default) are not affected.

The doctor reads the version from a `pip install chromadb...` in the command (unpinned or `>=`:
the newest release) or the image's tag, and flags the service when its port is published or when
no chromaguard in the same files fronts it. Fix: run the Rust server, or put chromaguard in
front (it refuses to store or pass on an embedding function configuration that runs remote code,
and checks credentials before the engine sees a request) and stop publishing the Python server's
port.
"""),
    _rule("CG301", "volume-path-lost-on-recreate", "error",
          "The data volume is mounted where Chroma 1.x does not write: data is lost when the container is recreated.",
          """
Chroma 0.x wrote to `/chroma/chroma`; the 1.x image writes to `/data`. A volume still mounted at
`/chroma/chroma` stays empty while the data lives in the container's own layer, which
`docker compose up` throws away when it recreates the container. Fix (applied by `--fix`): mount the
volume at `/data`. Copy the data out of the running container first if it holds any
(`docker cp <container>:/data ./rescue`).
""", True),
    _rule("CG302", "no-persistent-volume", "warning",
          "The Chroma service has no volume: its data lives in the container and dies with it.",
          """
Mount a named volume at the data path (`/data` for Chroma 1.x and chromaguard's image,
`/chroma/chroma` for 0.x). Not fixed automatically: where the data should live is yours.
"""),
    _rule("CG303", "port-published-without-auth", "error",
          "The Chroma port is published to the host while auth is expected but not enforced.",
          """
The file configures auth, so its author expects the port to be protected, but Chroma 1.x enforces
none: publishing the port (`ports:`) exposes all data to anyone who can reach the host. Put
chromaguard in front, or publish only on 127.0.0.1. Not fixed automatically.
"""),
    _rule("CG304", "depends-on-not-healthy", "warning",
          "A service depends on Chroma or Ollama without `condition: service_healthy`.",
          """
Plain `depends_on` only waits for the container to start, not for the server in it to answer:
the dependent service's first requests fail. Fix (applied by `--fix`):
`condition: service_healthy` (the dependency needs a working health check, see CG101/CG104).
""", True),
    _rule("CG401", "chromaguard-config-invalid", "error",
          "chromaguard would refuse to start with this environment.",
          """
chromaguard validates every setting before it starts and exits with code 2 on a bad one; the
finding carries its one-line error. Fix the value it names.
"""),
    _rule("CG501", "live-no-auth", "error",
          "Live: data endpoints answer without credentials.",
          """
`GET /api/v2/tenants/default_tenant/databases/default_database/collections` succeeded without a
token: anyone who can reach the URL can read and change the data. Put chromaguard with token auth
in front.
"""),
    _rule("CG502", "live-cors-any-origin", "warning",
          "Live: the server allows a foreign origin in CORS.",
          """
A preflight from an unrelated origin (`https://doctor.invalid`) was allowed: any web page can call
the API from a user's browser.
"""),
    _rule("CG503", "live-v1-gone", "warning",
          "Live: `/api/v1/heartbeat` answers 410 Gone.",
          """
The server is Chroma 1.x without chromaguard: health checks and clients still on the v1 API fail.
Use `/api/v2/heartbeat`, or put chromaguard in front (it answers the v1 heartbeat too).
"""),
    _rule("CG504", "live-not-ready", "error",
          "Live: the server is not alive or not ready.",
          """
The heartbeat or the readiness check failed; the finding says which and what was answered.
"""),
    _rule("CG505", "live-ollama-model-missing", "warning",
          "Live: a required Ollama model is not pulled.",
          """
Run `ollama pull <model>` in the Ollama container.
"""),
    _rule("CG506", "live-remote-code-configuration", "error",
          "Live: a stored collection configuration makes clients run a model repository's code.",
          """
The official Python client builds a collection's stored `embedding_function` as soon as it reads
the collection; with `trust_remote_code` in its `config` (or its `kwargs`) the model repository's
code runs in every application that opens the collection (CVE-2026-45829, chroma-core/chroma#6717).
chromaguard refuses to store such a configuration, but one may have been stored before it was in
front, or by a client that reached the engine directly. Fix: replace the embedding function's
configuration without the flag (`collection.modify(configuration={"embedding_function": ...})`
with an embedding function built without `trust_remote_code`), or recreate the collection; the
finding names each collection. `--token` must be an admin's to see every tenant.
"""),
)}


def reference_markdown() -> str:
    """The rule reference page (docs/doctor-rules.md is this, generated)."""
    lines = ["# chromaguard doctor: rules", "",
             "Generated by `chromaguard doctor --rules-markdown`; do not edit by hand.", ""]
    lines += ["| rule | name | severity | fixed by --fix | summary |", "|---|---|---|---|---|"]
    for rule in RULES.values():
        lines.append(f"| [{rule.id}](#{rule.id.lower()}) | {rule.name} | {rule.severity} | "
                     f"{'yes' if rule.fixable else 'no'} | {rule.summary} |")
    for rule in RULES.values():
        lines += ["", f"## {rule.id}", "", f"**{rule.name}** ({rule.severity}): {rule.summary}", "",
                  rule.explanation]
    lines += ["", "## What each Chroma line has", "",
              "From `chromaguard/doctor/lines.py`, the one table the checks read. Sources are paths in "
              "github.com/chroma-core/chroma at the tag named.", "",
              "| line | tools a health check can call | data path | heartbeat | APIs | setting names |",
              "|---|---|---|---|---|---|"]
    for line in LINES.values():
        lines.append(f"| {line.line} | {', '.join(sorted(line.tools.value))} ({line.tools.source}) | "
                     f"`{line.data_path.value}` ({line.data_path.source}) | `{line.heartbeat.value}` "
                     f"({line.heartbeat.source}) | "
                     + ", ".join(f"{api} from {'.'.join(map(str, since))}" if since != (0, 0, 0) else api
                                 for api, since in line.apis.value.items())
                     + f" ({line.apis.source}) | {len(line.settings.value)} names ({line.settings.source}) |")
    return "\n".join(lines) + "\n"
