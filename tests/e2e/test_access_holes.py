"""The walk-arounds an adversarial review found, each tried again the ways an attacker would.

- a collection in the token's own database *named* like another tenant's collection id;
- every spelling of a UUID the engine accepts, on every route where the engine reads an id;
- a credentials file with a typo, a tab, cut short, empty, binary or half written, during a reload;
- collection configurations that make clients run a model repository's code, however spelt;
- a record without a role, and a non-ASCII token sent as UTF-8.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import chromadb
import httpx
import pytest
from chromadb.config import Settings
from support.procs import BareEngine, Guard, read_head
from support.tls import serving, trusted_by_httpx

TOKEN_PROVIDER = "chromadb.auth.token_authn.TokenAuthClientProvider"
TOKENS = [
    {"token": "root-secret", "name": "ops", "role": "admin"},
    {"token": "a-tok", "name": "team-a", "role": "write", "tenant": "team-a", "databases": ["main"]},
    {"token": "a-tenant-tok", "name": "team-a-all", "role": "write", "tenant": "team-a"},
    {"token": "clé-secrète-ü", "name": "unicode", "role": "read"},
]
ADMIN = {"x-chroma-token": "root-secret"}
A = {"x-chroma-token": "a-tok"}
A_TENANT = {"x-chroma-token": "a-tenant-tok"}
OWN = "/api/v2/tenants/team-a/databases/main/collections"
REMOTE_CODE_EF = {"type": "known", "name": "sentence_transformer",
                  "config": {"model_name": "attacker/model", "device": "cpu", "normalize_embeddings": False,
                             "kwargs": {"trust_remote_code": True}}}


_CA: list[str | None] = [None]  # the CA of the `secured` service while it runs over HTTPS


def _tls_settings() -> dict[str, object]:
    return {"chroma_server_ssl_verify": _CA[0]} if _CA[0] else {}


def client(port: int, token: str, tenant: str = "default_tenant", database: str = "default_database"
           ) -> chromadb.ClientAPI:
    return chromadb.HttpClient(host="127.0.0.1", port=port, tenant=tenant, database=database, ssl=bool(_CA[0]),
                               settings=Settings(anonymized_telemetry=False, chroma_client_auth_provider=TOKEN_PROVIDER,
                                                 chroma_client_auth_credentials=token, **_tls_settings()))


def connect(guard: Guard) -> socket.socket:
    """A raw connection to ``guard``, through TLS when it serves HTTPS."""
    raw = socket.create_connection(("127.0.0.1", guard.port), timeout=10)
    if guard.ca is None:
        return raw
    return ssl.create_default_context(cafile=str(guard.ca)).wrap_socket(raw, server_hostname="127.0.0.1")


class Tenants:
    """team-a (main, other) and team-b (main), each with a collection holding one record."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        admin = chromadb.AdminClient(Settings(chroma_api_impl="chromadb.api.fastapi.FastAPI",
                                              chroma_server_host="127.0.0.1", chroma_server_http_port=guard.port,
                                              chroma_client_auth_provider=TOKEN_PROVIDER,
                                              chroma_client_auth_credentials="root-secret",
                                              chroma_server_ssl_enabled=bool(_CA[0]), anonymized_telemetry=False,
                                              **_tls_settings()))
        for tenant in ("team-a", "team-b"):
            admin.create_tenant(tenant)
        for tenant, database in (("team-a", "main"), ("team-a", "other"), ("team-b", "main")):
            admin.create_database(database, tenant)
        self.b = client(guard.port, "root-secret", "team-b", "main").create_collection("b-secrets",
                                                                                      embedding_function=None)
        self.b.add(ids=["b1"], embeddings=[[1.0, 0.0]], documents=["team b's secret"])
        self.other = client(guard.port, "root-secret", "team-a", "other").create_collection(
            "a-other", embedding_function=None)
        self.other.add(ids=["o1"], embeddings=[[0.0, 1.0]], documents=["team a's other database"])
        self.mine = client(guard.port, "a-tok", "team-a", "main").create_collection("a-own", embedding_function=None)
        self.mine.add(ids=["m1"], embeddings=[[0.5, 0.5]], documents=["team a's own"])

    def untouched(self) -> None:
        for collection, record, document in ((self.b, "b1", "team b's secret"),
                                             (self.other, "o1", "team a's other database")):
            got = collection.get(include=["documents", "metadatas"])
            assert got["ids"] == [record] and got["documents"] == [document], got
            assert not (collection.metadata or {}), collection.metadata


@pytest.fixture(scope="module", params=["http", "https"])
def secured(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Guard, Tenants]]:
    """Token auth with tenant scopes; every test on it runs over plain HTTP and over HTTPS."""
    folder = tmp_path_factory.mktemp("holes")
    tokens = folder / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    env = {"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens)}
    ca = None
    if request.param == "https":
        tls, ca = serving(folder / "tls")
        env |= tls
        _CA[0] = str(ca)
    try:
        with trusted_by_httpx(ca), Guard(env=env, ca=ca) as service:
            yield service, Tenants(service)
    finally:
        _CA[0] = None


def spellings(collection_id: str) -> list[str]:
    """Every form of the id that the engine's UUID parser accepts (checked on the real engine)."""
    plain = uuid.UUID(collection_id)
    return [str(plain), str(plain).upper(), plain.hex, plain.hex.upper(), "{" + str(plain) + "}",
            f"urn:uuid:{plain}", str(plain).replace("-", "%2D")]


def id_routes(cid: str) -> list[tuple[str, str, object]]:
    """Every route on which the engine (chromadb 1.5.9) resolves the segment as an id."""
    at = f"{OWN}/{cid}"
    return [
        ("POST", f"{at}/get", {}),
        ("POST", f"{at}/query", {"query_embeddings": [[1.0, 0.0]], "n_results": 1}),
        ("POST", f"{at}/search", {"searches": []}),
        ("GET", f"{at}/count", None),
        ("GET", f"{at}/indexing_status", None),
        ("GET", f"{at}/fork_count", None),
        ("GET", f"/api/v2/tenants/team-a/databases/main/collections/by-id/{cid}", None),
        ("POST", f"{at}/add", {"ids": ["evil"], "embeddings": [[0.0, 0.0]]}),
        ("POST", f"{at}/upsert", {"ids": ["b1", "o1"], "embeddings": [[9.0, 9.0], [9.0, 9.0]],
                                  "documents": ["overwritten", "overwritten"]}),
        ("POST", f"{at}/update", {"ids": ["b1", "o1"], "documents": ["changed", "changed"]}),
        ("POST", f"{at}/delete", {"ids": ["b1", "o1"]}),
        ("PUT", at, {"new_metadata": {"owned": "by-team-a"}}),
        ("POST", f"{at}/fork", {"new_name": f"stolen-{uuid.uuid4().hex[:6]}"}),
        ("POST", f"{at}/functions/attach", {}),
    ]


def test_a_name_that_looks_like_another_tenants_id_opens_nothing(secured: tuple[Guard, Tenants]) -> None:
    guard, tenants = secured
    for target in (tenants.b, tenants.other):  # another tenant, and another database of the same tenant
        made = httpx.post(guard.url + OWN, json={"name": str(target.id)}, headers=A)
        assert made.status_code == 200, made.text  # the engine allows such a name: the trick is set up
        decoy = made.json()["id"]
        assert decoy != str(target.id)
        for spelling in spellings(str(target.id)):
            for method, path, body in id_routes(spelling):
                for headers in (A, A_TENANT):
                    r = httpx.request(method, guard.url + path, json=body, headers=headers)
                    assert r.status_code == 403, (method, path, headers, r.status_code, r.text)
        # By name the engine looks inside the path's own database: team-a gets its decoy, nothing else.
        by_name = httpx.get(f"{guard.url}{OWN}/{target.id}", headers=A)
        assert by_name.status_code == 200 and by_name.json()["id"] == decoy
        assert httpx.delete(f"{guard.url}{OWN}/{target.id}", headers=A).status_code == 200  # the decoy
    tenants.untouched()
    assert tenants.b.count() == 1 and tenants.other.count() == 1


def test_a_tenant_token_reaches_its_other_database_but_never_another_tenant(
        secured: tuple[Guard, Tenants]) -> None:
    guard, tenants = secured
    other = f"/api/v2/tenants/team-a/databases/other/collections/{tenants.other.id}/count"
    assert httpx.get(guard.url + other, headers=A_TENANT).status_code == 200
    assert httpx.get(guard.url + other, headers=A).status_code == 403  # databases: [main] only
    foreign = f"/api/v2/tenants/team-b/databases/main/collections/{tenants.b.id}/count"
    assert httpx.get(guard.url + foreign, headers=A_TENANT).status_code == 403


def test_own_collection_works_by_every_id_spelling(secured: tuple[Guard, Tenants]) -> None:
    guard, tenants = secured
    for spelling in spellings(str(tenants.mine.id)):
        r = httpx.get(f"{guard.url}{OWN}/{spelling}/count", headers=A)
        assert r.status_code == 200 and r.json() == 1, (spelling, r.text)
    got = httpx.post(f"{guard.url}{OWN}/{str(tenants.mine.id).upper()}/get", json={}, headers=A)
    assert got.status_code == 200 and got.json()["ids"] == ["m1"]


def test_a_segment_that_is_no_id_is_refused_for_scoped_tokens(secured: tuple[Guard, Tenants]) -> None:
    guard, _ = secured
    r = httpx.post(f"{guard.url}{OWN}/a-own/get", json={}, headers=A)
    assert r.status_code == 400 and "must be a collection id" in r.json()["message"]


def test_scoped_tokens_cannot_use_tenantless_routes(secured: tuple[Guard, Tenants]) -> None:
    guard, tenants = secured
    crn = f"/api/v2/collections/team-b:main:{tenants.b.name}"
    # An admin is let through (the single-node engine then drops the connection: a 502 here).
    assert httpx.get(guard.url + crn, headers=ADMIN).status_code not in (401, 403)
    for headers in (A, A_TENANT):
        assert httpx.get(guard.url + crn, headers=headers).status_code == 403


# ---- stored configurations that run code in clients -------------------------------------------

def remote_code_bodies() -> list[tuple[str, bytes]]:
    """(what, create body) for every way of spelling "trust remote code" found so far."""
    def body(configuration: object, **extra: object) -> bytes:
        return json.dumps({"name": f"rc-{uuid.uuid4().hex[:8]}", "configuration": configuration, **extra}).encode()

    nested = {**REMOTE_CODE_EF, "config": {**REMOTE_CODE_EF["config"],  # type: ignore[dict-item]
                                           "kwargs": {"model_kwargs": {"trust_remote_code": True}}}}
    as_string = {**REMOTE_CODE_EF, "config": {**REMOTE_CODE_EF["config"],  # type: ignore[dict-item]
                                              "kwargs": {"trust_remote_code": "false"}}}  # truthy in Python
    schema = {"keys": {"#embedding": {"float_list": {"vector_index": {"enabled": True, "config": {
        "space": "l2", "embedding_function": REMOTE_CODE_EF, "source_key": "#document"}}}}}}
    escaped = json.dumps({"embedding_function": REMOTE_CODE_EF}).replace("trust_remote_code", "trust\\u005fremote_code")
    return [
        ("plain", body({"embedding_function": REMOTE_CODE_EF})),
        ("nested model_kwargs", body({"embedding_function": nested})),
        ("a truthy string", body({"embedding_function": as_string})),
        ("in a schema", body(None, schema=schema)),
        ("a unicode escape", ('{"name": "rc-esc", "configuration": ' + escaped + "}").encode()),
        ("the key twice", (b'{"name": "rc-dup", "configuration": {"embedding_function": {"type": "known", '
                           b'"name": "sentence_transformer", "config": {"model_name": "m", "device": "cpu", '
                           b'"normalize_embeddings": false, "kwargs": {"trust_remote_code": false, '
                           b'"trust_remote_code": true}}}}}')),
    ]


@pytest.mark.parametrize("what, body", remote_code_bodies(), ids=[w for w, _ in remote_code_bodies()])
def test_remote_code_configurations_are_never_stored(guard: Guard, secured: tuple[Guard, Tenants], what: str,
                                                     body: bytes) -> None:
    """With auth off (the shared service) and on; on create and on modify."""
    secure, _ = secured
    base = "/api/v2/tenants/default_tenant/databases/default_database/collections"
    for service, headers in ((guard, {}), (secure, ADMIN)):
        made = httpx.post(service.url + base, content=body, headers={**headers, "content-type": "application/json"})
        assert made.status_code == 400, (what, made.text)
        assert "trust_remote_code" in made.json()["message"] or "twice" in made.json()["message"]
        assert json.loads(body).get("name") not in [c["name"] for c in
                                                    httpx.get(service.url + base, headers=headers).json()]
    victim = httpx.post(guard.url + base, json={"name": f"victim-{uuid.uuid4().hex[:8]}"}).json()
    configuration = json.loads(body).get("configuration") or {}
    modify = httpx.put(f"{guard.url}{base}/{victim['id']}", json={"new_configuration": configuration})
    if configuration:
        assert modify.status_code == 400, (what, modify.text)
    stored = httpx.get(f"{guard.url}{base}/{victim['name']}").json()
    assert "trust_remote_code" not in json.dumps(stored)


def test_safe_configurations_still_work(guard: Guard) -> None:
    base = "/api/v2/tenants/default_tenant/databases/default_database/collections"
    safe = {**REMOTE_CODE_EF, "config": {**REMOTE_CODE_EF["config"], "kwargs": {"trust_remote_code": False}}}
    made = httpx.post(guard.url + base, json={"name": f"safe-{uuid.uuid4().hex[:8]}",
                                              "configuration": {"embedding_function": safe}})
    assert made.status_code == 200, made.text
    assert made.json()["configuration_json"]["embedding_function"]["name"] == "sentence_transformer"
    plain = chromadb.HttpClient(host="127.0.0.1", port=guard.port, settings=Settings(anonymized_telemetry=False))
    collection = plain.create_collection(f"default-ef-{uuid.uuid4().hex[:6]}")  # the client's default EF
    collection.add(ids=["x"], embeddings=[[0.1] * 384])
    assert collection.count() == 1


def test_allow_list_of_embedding_functions(tmp_path: Path) -> None:
    base = "/api/v2/tenants/default_tenant/databases/default_database/collections"
    with Guard(env={"CHROMAGUARD_ALLOWED_EMBEDDING_FUNCTIONS": "openai,default"}) as g:
        st = {**REMOTE_CODE_EF, "config": {"model_name": "m", "device": "cpu", "normalize_embeddings": False}}
        refused = httpx.post(g.url + base, json={"name": "st", "configuration": {"embedding_function": st}})
        assert refused.status_code == 400 and "'sentence_transformer' is not an allowed" in refused.json()["message"]
        legacy = httpx.post(g.url + base, json={"name": "legacy", "configuration": {
            "embedding_function": {"type": "legacy"}}})
        assert legacy.status_code == 200, legacy.text
        ok = httpx.post(g.url + base, json={"name": "openai-ef", "configuration": {"embedding_function": {
            "type": "known", "name": "openai", "config": {"model_name": "text-embedding-3-small",
                                                          "api_key_env_var": "OPENAI_API_KEY"}}}})
        assert ok.status_code == 200, ok.text


def test_doctor_live_lists_stored_remote_code_configurations(bare: BareEngine) -> None:
    """One stored behind chromaguard's back (straight into the engine) is found, named, with a fix."""
    from click.testing import CliRunner

    from chromaguard.cli import main

    base = "/api/v2/tenants/default_tenant/databases/default_database/collections"
    name = f"poisoned-{uuid.uuid4().hex[:6]}"
    assert httpx.post(bare.url + base, json={"name": name, "configuration": {
        "embedding_function": REMOTE_CODE_EF}}).status_code == 200
    result = CliRunner().invoke(main, ["doctor", "--live", bare.url, "--format", "json"])
    findings = [f for f in json.loads(result.output)["findings"] if f["rule"] == "CG506"]
    assert len(findings) == 1 and name in findings[0]["message"], result.output
    assert "trust_remote_code" in findings[0]["message"] and "modify" in findings[0]["fix"]


# ---- the credentials file -----------------------------------------------------------------------

GOOD_YAML = """tokens:
  - token: steady-token
    name: steady
    role: read
  - token: second-token
    name: second
    role: write
"""
BROKEN = {
    "indentation": GOOD_YAML.replace("    role: write", "     role: write"),
    "a tab": GOOD_YAML.replace("    role: read", "\trole: read"),
    "truncated": GOOD_YAML[:GOOD_YAML.index("second-token") + 3] + "\n",
    "empty": "",
    "binary": "\x00\x01\x02\xff\xfe tokens",
    "half written": GOOD_YAML + "  - token: third-tok",  # the last line still being written
    "no role": GOOD_YAML + "  - token: third-token\n    name: third\n",
}


def _status(url: str, token: str) -> int:
    return httpx.get(url + "/api/v2/tenants/default_tenant/databases/default_database/collections",
                     headers={"x-chroma-token": token}).status_code


def test_a_broken_credentials_file_never_opens_the_door(tmp_path: Path) -> None:
    """During reloads under load: valid tokens never fail, no new token is ever accepted."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(GOOD_YAML)
    with Guard(env={"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
                    "CHROMAGUARD_AUTH_RELOAD_INTERVAL": "0.1s"}) as g:
        failures: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=g.url) as http:
                while not stop.is_set():
                    r = http.get("/api/v2/tenants/default_tenant/databases/default_database/collections",
                                 headers={"x-chroma-token": "steady-token"})
                    if r.status_code != 200:
                        failures.append(r.status_code)

        worker = threading.Thread(target=load)
        worker.start()
        try:
            for case, text in BROKEN.items():
                mark = len(g.log)
                tokens.write_bytes(text.encode("latin-1"))
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and "credentials not reloaded" not in g.log[mark:]:
                    time.sleep(0.05)
                assert "credentials not reloaded" in g.log[mark:], (case, g.log[mark:])
                line = next(x for x in g.log[mark:].splitlines() if "credentials not reloaded" in x)
                assert "ERROR" in line and str(tokens) in line, line  # the half-written one fails to load too
                for guess in ["tokens:", "- token: steady-token", "role: read", "third-tok", "third-token",
                              "sec", "binary", "\x01\x02"]:
                    assert _status(g.url, guess.encode().decode("latin-1")) in (400, 401, 403), (case, guess)
                assert _status(g.url, "second-token") == 200, case
            tokens.write_text(GOOD_YAML.replace("second-token", "fresh-token"))  # a good file applies
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _status(g.url, "fresh-token") != 200:
                time.sleep(0.05)
            assert _status(g.url, "fresh-token") == 200 and _status(g.url, "second-token") == 403
        finally:
            stop.set()
            worker.join()
        assert failures == []
        errors = [x for x in g.log.splitlines() if "credentials not reloaded" in x]
        assert any("line 7" in x for x in errors), errors  # the bad indentation, by line
        assert any("line 3" in x and "tab" in x.lower() or "'\\t'" in x for x in errors), errors


@pytest.mark.parametrize("name, text, fragment", [
    ("tokens.yaml", GOOD_YAML.replace("    role: write", "     role: write"), "not valid YAML at line 7"),
    ("tokens.txt", GOOD_YAML, "line 1 is not a bare token"),
    ("tokens", GOOD_YAML.replace("    role: write", "     role: write"), "not valid YAML at line 7"),
    ("tokens.json", "tokens:\n  - a\n", "not valid JSON at line 1"),
    ("tokens.yaml", '[{"token": "x", "name": "n"}]', "no role"),
])
def test_a_credentials_file_is_read_in_the_format_it_claims(tmp_path: Path, name: str, text: str,
                                                             fragment: str) -> None:
    from chromaguard.access.credentials import CredentialsError, load_store

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(CredentialsError, match=fragment):
        load_store("token", path, "", file_setting="F", inline_setting="I")


def test_chromaguard_config_says_how_each_role_was_decided(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from chromaguard.cli import main

    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(["bare-token", {"token": "r", "name": "reader", "role": "read",
                                                 "tenant": "acme"}]))
    result = CliRunner().invoke(main, ["config", "--json"], env={
        "CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens)})
    principals = {p["name"]: p for p in json.loads(result.output)["credentials"]}
    assert principals["token-1"]["role"] == "admin" and "bare token" in principals["token-1"]["how"]
    assert principals["reader"] == {"name": "reader", "role": "read", "tenant": "acme", "databases": None,
                                    "how": "role from its record"}
    assert "bare-token" not in result.output


def test_a_non_ascii_token_sent_as_utf8_is_accepted(secured: tuple[Guard, Tenants]) -> None:
    guard, _ = secured
    raw = "clé-secrète-ü".encode()
    for header in (b"x-chroma-token: " + raw, b"authorization: Bearer " + raw):
        with connect(guard) as sock:
            sock.sendall(b"GET /api/v2/auth/identity HTTP/1.1\r\nhost: x\r\n" + header + b"\r\n\r\n")
            head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
    latin1 = "clé-secrète-ü".encode("latin-1")
    with connect(guard) as sock:
        sock.sendall(b"GET /api/v2/auth/identity HTTP/1.1\r\nhost: x\r\nx-chroma-token: " + latin1 + b"\r\n\r\n")
        assert read_head(sock).startswith(b"HTTP/1.1 403")


SCOPED_YAML = """tokens:
  - token: steady-token
    name: steady
    role: read
  - token: scoped-token
    name: scoped
    role: read
    tenant: team-a
    databases: [main]
"""


def _identity(url: str, token: str) -> tuple[int, dict[str, object]]:
    r = httpx.get(url + "/api/v2/auth/identity", headers={"x-chroma-token": token})
    return r.status_code, (r.json() if r.status_code == 200 else {})


def _until(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(condition())  # type: ignore[operator]


def test_a_file_rewritten_in_place_never_widens_access_while_being_written(tmp_path: Path) -> None:
    """A writer that stopped after a record's role, before its tenant: the record must not be
    applied unscoped. Narrowing applies at once; widening (renamed into place or not) and a
    file without its last newline once the file has been still for 5 s."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(SCOPED_YAML)
    scoped = {"user_id": "scoped", "tenant": "team-a", "databases": ["main"]}
    with Guard(env={"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
                    "CHROMAGUARD_AUTH_RELOAD_INTERVAL": "0.1s"}) as g:
        cut = SCOPED_YAML[:SCOPED_YAML.index("    tenant:")]  # ends with a newline, parses, has no scope
        mark = len(g.log)
        with open(tokens, "r+") as fh:  # in place: same inode
            fh.truncate(0)
            fh.write(cut)
        assert _until(lambda: "more access than before" in g.log[mark:], 5), g.log[mark:]
        started = time.monotonic()
        while time.monotonic() - started < 3.0:  # well inside the 5 s hold
            assert _identity(g.url, "scoped-token") == (200, scoped)
            time.sleep(0.1)
        with open(tokens, "r+") as fh:  # the writer finishes
            fh.truncate(0)
            fh.write(SCOPED_YAML)
        assert _until(lambda: "credentials reloaded" in g.log[mark:], 5), g.log[mark:]
        assert _identity(g.url, "scoped-token") == (200, scoped)

        fresh = tmp_path / "tokens.yaml.new"  # renamed into place: a new inode proves nothing
        fresh.write_text(SCOPED_YAML + "  - token: new-token\n    name: new\n    role: read\n")
        began = time.monotonic()
        fresh.rename(tokens)
        assert _until(lambda: _identity(g.url, "new-token")[0] == 200, 10)
        assert time.monotonic() - began > 4.5  # a new token: it waited for the hold

        mark = len(g.log)
        with open(tokens, "r+") as fh:  # revokes steady, but its last line has no newline
            fh.truncate(0)
            fh.write(SCOPED_YAML.replace("steady-token", "other-token").rstrip("\n"))
        assert _until(lambda: "may still be being written" in g.log[mark:], 5), g.log[mark:]
        assert _identity(g.url, "steady-token")[0] == 200  # not yet
        assert _until(lambda: _identity(g.url, "steady-token")[0] == 403, 10)  # never stuck for ever


def test_sighup_refuses_a_file_whose_last_line_is_unfinished(tmp_path: Path) -> None:
    import signal

    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(SCOPED_YAML)
    with Guard(env={"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
                    "CHROMAGUARD_AUTH_RELOAD_INTERVAL": "60s"}) as g:
        tokens.write_text(SCOPED_YAML + "  - token: ci-tok")
        mark = len(g.log)
        assert g.proc is not None
        g.proc.send_signal(signal.SIGHUP)
        assert _until(lambda: "credentials not reloaded (SIGHUP)" in g.log[mark:], 5), g.log[mark:]
        assert _identity(g.url, "ci-tok")[0] == 403 and _identity(g.url, "steady-token")[0] == 200
        tokens.write_text(SCOPED_YAML.replace("steady-token", "after-hup"))
        g.proc.send_signal(signal.SIGHUP)
        assert _until(lambda: _identity(g.url, "after-hup")[0] == 200, 5)


@pytest.mark.parametrize("text, fragment", [
    ('["0x1F"]', None), ("[31]", "must be a token string"), ("- 0x1F\n", "must be a token string"),
    ("- true\n", "must be a token string"), ('[{"token": 100, "role": "read"}]', "must be a string"),
    ('[{"token": "t", "role": "read", "tenant": null}]', "tenant is empty"),
    ("- token: t\n  role: read\n  tenant:\n", "tenant is empty"),
    ('[{"token": "t", "role": "read", "databases": null}]', "databases is empty"),
    ("- token:a-secret\n", "not a bare token"), ("token:abc\nrole:read\n", "not a bare token"),
    ("abc\u2028def\n", "not a bare token"), ("abc\u00a0\n", "not a bare token"),
    ('\ufeff[{"token": "t", "role": "read", "tenant": "acme"}]', None),
])
def test_tokens_nobody_wrote_are_never_made(tmp_path: Path, text: str, fragment: str | None) -> None:
    """Numbers, bools, empty scopes, colons and odd line breaks: refused rather than guessed."""
    from chromaguard.access.credentials import CredentialsError, load_store

    path = tmp_path / "tokens"
    path.write_text(text, encoding="utf-8")
    if fragment is None:
        store = load_store("token", path, "", file_setting="F", inline_setting="I")
        principal = store.principals()[0]
        assert store.check_token("0x1F" if "0x1F" in text else "t") == principal
        assert "\ufeff" not in principal.name
        return
    with pytest.raises(CredentialsError, match=fragment):
        load_store("token", path, "", file_setting="F", inline_setting="I")


def test_a_fragment_in_the_target_is_refused_before_anything_is_stored(guard: Guard) -> None:
    """The engine cuts the path at #, we would not: such a target is never valid HTTP anyway."""
    base = "/api/v2/tenants/default_tenant/databases/default_database/collections"
    body = (b'{"name": "evil-hash", "junk": "\xff", "configuration": {"embedding_function": '
            + json.dumps(REMOTE_CODE_EF).encode() + b"}}")
    with socket.create_connection(("127.0.0.1", guard.port)) as sock:
        sock.sendall(f"POST {base}#x HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(body)}\r\n\r\n".encode() + body)
        head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 400"), head
    without = httpx.post(guard.url + base, content=body)  # and without the #: bad UTF-8 is refused too
    assert without.status_code == 400 and "not valid JSON" in without.json()["message"]
    assert "evil-hash" not in [c["name"] for c in httpx.get(guard.url + base).json()]


def test_garbage_after_a_whole_request_does_not_swallow_its_answer(guard: Guard) -> None:
    """The create is acted on by the engine, so its answer must reach the client; then the
    connection closes."""
    name = f"then-garbage-{uuid.uuid4().hex[:6]}"
    body = json.dumps({"name": name}).encode()
    base = "/api/v2/tenants/default_tenant/databases/default_database/collections"
    with socket.create_connection(("127.0.0.1", guard.port)) as sock:
        sock.sendall(f"POST {base} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(body)}\r\n\r\n".encode() + body + b"GARBAGE\r\n\r\n")
        sock.settimeout(30)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    assert name.encode() in received
    assert name in [c["name"] for c in httpx.get(guard.url + base).json()]
