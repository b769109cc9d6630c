"""Token and basic auth at the front door, with the official client and raw HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import chromadb
import httpx
import pytest
from chromadb.config import Settings
from support.procs import Guard, clean_env, read_head

BASE = "/api/v2/tenants/default_tenant/databases/default_database"
TOKEN_PROVIDER = "chromadb.auth.token_authn.TokenAuthClientProvider"
TOKENS = [
    {"token": "admin-secret-1", "name": "ops", "role": "admin"},
    {"token": "writer-secret-2", "name": "ingest", "role": "write"},
    {"token": "reader-secret-3", "name": "dashboard", "role": "read"},
    {"sha256": hashlib.sha256(b"hashed-secret-4").hexdigest(), "name": "hashed", "role": "write"},
    {"token": "scoped-secret-5", "name": "team-a", "role": "write", "tenant": "team-a", "databases": ["main"]},
]
SECRETS = [t.get("token") for t in TOKENS if t.get("token")] + ["hashed-secret-4"]


def client(port: int, token: str | None, header: str = "Authorization", tenant: str = "default_tenant",
           database: str = "default_database") -> chromadb.ClientAPI:
    settings = {"anonymized_telemetry": False}
    if token is not None:
        settings |= {"chroma_client_auth_provider": TOKEN_PROVIDER, "chroma_client_auth_credentials": token,
                     "chroma_auth_token_transport_header": header}
    return chromadb.HttpClient(host="127.0.0.1", port=port, tenant=tenant, database=database,
                               settings=Settings(**settings))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guard]:
    tokens = tmp_path_factory.mktemp("auth") / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    with Guard(env={"CHROMA_SERVER_AUTH_PROVIDER": "token",
                    "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens)}) as service:
        admin = client(service.port, "admin-secret-1")
        admin.create_collection("shared", embedding_function=None).add(ids=["a"], embeddings=[[1.0, 0.0]])
        admin_api = chromadb.AdminClient(Settings(chroma_api_impl="chromadb.api.fastapi.FastAPI",
                                                  chroma_server_host="127.0.0.1",
                                                  chroma_server_http_port=service.port,
                                                  chroma_client_auth_provider=TOKEN_PROVIDER,
                                                  chroma_client_auth_credentials="admin-secret-1",
                                                  anonymized_telemetry=False))
        admin_api.create_tenant("team-a")
        admin_api.create_database("main", "team-a")
        admin_api.create_database("other", "team-a")
        yield service


@pytest.mark.parametrize("header", ["Authorization", "X-Chroma-Token"])
def test_official_client_with_token_works(secured: Guard, header: str) -> None:
    c = client(secured.port, "writer-secret-2", header)
    col = c.get_or_create_collection(f"w-{header.lower()}", embedding_function=None)
    col.add(ids=["x", "y"], embeddings=[[1.0, 2.0], [2.0, 1.0]])
    assert col.query(query_embeddings=[[1.0, 2.0]], n_results=1)["ids"] == [["x"]]
    assert c.get_user_identity().user_id == "ingest"


def test_sha256_token_works(secured: Guard) -> None:
    assert client(secured.port, "hashed-secret-4").get_collection("shared").count() == 1


def test_without_token_the_client_gets_an_auth_error(secured: Guard) -> None:
    with pytest.raises(chromadb.errors.ChromaAuthError):
        client(secured.port, None).list_collections()
    with pytest.raises(chromadb.errors.AuthorizationError):
        client(secured.port, "not-a-token").list_collections()


def test_missing_is_401_with_challenge_and_wrong_is_403(secured: Guard) -> None:
    missing = httpx.get(secured.url + f"{BASE}/collections")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["error"] == "AuthError"
    wrong = httpx.get(secured.url + f"{BASE}/collections", headers={"authorization": "Bearer wrong-secret"})
    assert wrong.status_code == 403 and "wrong-secret" not in wrong.text
    basic_for_token = httpx.get(secured.url + f"{BASE}/collections", auth=("ops", "admin-secret-1"))
    assert basic_for_token.status_code == 401


def test_read_token_cannot_write(secured: Guard) -> None:
    reader = client(secured.port, "reader-secret-3")
    col = reader.get_collection("shared")
    assert col.count() == 1 and col.get()["ids"] == ["a"] and col.peek()["ids"] == ["a"]
    assert col.query(query_embeddings=[[1.0, 0.0]], n_results=1)["ids"] == [["a"]]
    assert "shared" in [c.name for c in reader.list_collections()]
    with pytest.raises(chromadb.errors.AuthorizationError, match="dashboard may not add"):
        col.add(ids=["b"], embeddings=[[0.0, 1.0]])
    with pytest.raises(chromadb.errors.AuthorizationError):
        reader.create_collection("nope", embedding_function=None)
    with pytest.raises(chromadb.errors.AuthorizationError):
        col.delete(ids=["a"])
    assert col.count() == 1


def test_scoped_token_sees_only_its_database(secured: Guard) -> None:
    scoped = client(secured.port, "scoped-secret-5", tenant="team-a", database="main")
    scoped.create_collection("mine", embedding_function=None).add(ids=["m"], embeddings=[[0.5, 0.5]])
    assert [c.name for c in scoped.list_collections()] == ["mine"]
    identity = httpx.get(secured.url + "/api/v2/auth/identity", headers={"x-chroma-token": "scoped-secret-5"}).json()
    assert identity == {"user_id": "team-a", "tenant": "team-a", "databases": ["main"]}
    for path in (f"{BASE}/collections", "/api/v2/tenants/team-a/databases/other/collections",
                 "/api/v2/tenants/team-a/databases"):
        response = httpx.get(secured.url + path, headers={"x-chroma-token": "scoped-secret-5"})
        assert response.status_code == 403, path
    with pytest.raises(Exception):  # noqa: B017 - the official client's error class differs between its versions
        client(secured.port, "scoped-secret-5", tenant="team-a", database="other").list_collections()


def test_scoped_token_cannot_reach_a_collection_of_another_tenant_by_its_id(secured: Guard) -> None:
    """The engine finds collections by id alone; the path's tenant and database must not be trusted."""
    target = client(secured.port, "admin-secret-1").get_collection("shared")
    own = "/api/v2/tenants/team-a/databases/main/collections"
    token = {"x-chroma-token": "scoped-secret-5"}
    attempts = [
        ("POST", f"{own}/{target.id}/get", {}), ("POST", f"{own}/{target.id}/query",
                                                 {"query_embeddings": [[1.0, 0.0]], "n_results": 1}),
        ("GET", f"{own}/{target.id}/count", None),
        ("POST", f"{own}/{target.id}/add", {"ids": ["evil"], "embeddings": [[0.0, 0.0]]}),
        ("POST", f"{own}/{target.id}/delete", {"ids": ["a"]}),
        ("PUT", f"{own}/{target.id}", {"new_metadata": {"owned": "by-team-a"}}),
    ]
    for method, path, body in attempts:
        r = httpx.request(method, secured.url + path, json=body, headers=token)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
    # By name the engine looks in the path's own database: there is no such collection there.
    assert httpx.get(f"{secured.url}{own}/{target.id}", headers=token).status_code == 404
    assert target.count() == 1 and target.get()["ids"] == ["a"] and not (target.metadata or {}).get("owned")
    mine = client(secured.port, "scoped-secret-5", tenant="team-a", database="main").get_or_create_collection(
        "mine-by-id", embedding_function=None)
    assert httpx.get(secured.url + f"{own}/{mine.id}/count", headers=token).status_code == 200
    other_db = client(secured.port, "admin-secret-1", tenant="team-a", database="other").get_or_create_collection(
        "elsewhere", embedding_function=None)
    assert httpx.get(secured.url + f"{own}/{other_db.id}/count", headers=token).status_code == 403


def test_identity_is_answered_for_each_token(secured: Guard) -> None:
    for token, name in (("admin-secret-1", "ops"), ("reader-secret-3", "dashboard")):
        r = httpx.get(secured.url + "/api/v2/auth/identity", headers={"authorization": f"Bearer {token}"})
        assert r.json() == {"user_id": name, "tenant": "default_tenant", "databases": ["default_database"]}


def test_health_endpoints_stay_open(secured: Guard) -> None:
    for path in ("/api/v1/heartbeat", "/api/v2/heartbeat", "/healthz"):
        assert httpx.get(secured.url + path).status_code == 200, path
    assert httpx.get(secured.url + "/api/v2/version").status_code == 401


def test_tokens_never_reach_the_log(secured: Guard) -> None:
    log = secured.log
    assert "denied" in log or "rejected" in log
    for secret in SECRETS + ["wrong-secret", "not-a-token"]:
        assert secret not in log


# ---- no bypass -------------------------------------------------------------------------------


def _raw(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = read_head(sock)
    if not data:
        return 0, b""  # the server closed the connection: rejected
    status = int(data.split(b" ", 2)[1])
    return status, data


def _collection_id(guard: Guard) -> str:
    return httpx.get(guard.url + f"{BASE}/collections/shared",
                     headers={"x-chroma-token": "admin-secret-1"}).json()["id"]


ADD_BODY = json.dumps({"ids": ["sneaky"], "embeddings": [[9.0, 9.0]]}).encode()


def _bypass_requests(cid: str, auth: bytes) -> dict[str, bytes]:
    add = f"{BASE}/collections/{cid}/add".encode()
    h = b"Host: x\r\nContent-Type: application/json\r\n" + auth
    length = b"Content-Length: " + str(len(ADD_BODY)).encode() + b"\r\n"
    chunked_body = hex(len(ADD_BODY))[2:].encode() + b"\r\n" + ADD_BODY + b"\r\n0\r\n\r\n"
    return {
        "plain": b"POST " + add + b" HTTP/1.1\r\n" + h + length + b"\r\n" + ADD_BODY,
        "double slash": b"POST /" + add + b" HTTP/1.1\r\n" + h + length + b"\r\n" + ADD_BODY,
        "dot segment": b"POST /./" + add[1:] + b" HTTP/1.1\r\n" + h + length + b"\r\n" + ADD_BODY,
        "dot-dot": b"POST " + add.replace(b"/add", b"/get/../add") + b" HTTP/1.1\r\n" + h + length + b"\r\n" + ADD_BODY,
        "encoded dot-dot": b"POST " + add.replace(b"/add", b"/get/%2e%2e/add") + b" HTTP/1.1\r\n" + h + length
                           + b"\r\n" + ADD_BODY,
        "encoded slash": (b"POST " + add.replace(b"/add", b"%2Fadd") + b" HTTP/1.1\r\n" + h + length + b"\r\n"
                          + ADD_BODY),
        "mixed case": (b"POST " + add.replace(b"/api/v2", b"/API/V2") + b" HTTP/1.1\r\n" + h + length + b"\r\n"
                       + ADD_BODY),
        "trailing slash": b"POST " + add + b"/ HTTP/1.1\r\n" + h + length + b"\r\n" + ADD_BODY,
        "absolute form": b"POST http://127.0.0.1" + add + b" HTTP/1.1\r\n" + h + length + b"\r\n" + ADD_BODY,
        "http/1.0": b"POST " + add + b" HTTP/1.0\r\n" + h + length + b"\r\n" + ADD_BODY,
        "chunked": b"POST " + add + b" HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked\r\n\r\n" + chunked_body,
        "head": b"HEAD " + add + b" HTTP/1.1\r\n" + h + b"\r\n",
        "options without origin": b"OPTIONS " + add + b" HTTP/1.1\r\n" + h + b"\r\n",
        "oversized headers": b"POST " + add + b" HTTP/1.1\r\n" + h + b"X-Pad: " + b"a" * 40000 + b"\r\n" + length
                             + b"\r\n" + ADD_BODY,
    }


def _count(guard: Guard, cid: str) -> int:
    return httpx.get(guard.url + f"{BASE}/collections/{cid}/count", headers={"x-chroma-token": "admin-secret-1"}).json()


@pytest.mark.parametrize("form", list(_bypass_requests("x", b"")))
def test_no_bypass_without_credentials(secured: Guard, form: str) -> None:
    cid = _collection_id(secured)
    before = _count(secured, cid)
    status, _ = _raw(secured.port, _bypass_requests(cid, b"")[form])
    assert status == 0 or status >= 400, form
    assert status not in (200, 201), form
    assert _count(secured, cid) == before


@pytest.mark.parametrize("form", list(_bypass_requests("x", b"")))
def test_no_bypass_with_a_read_token(secured: Guard, form: str) -> None:
    cid = _collection_id(secured)
    before = _count(secured, cid)
    status, _ = _raw(secured.port, _bypass_requests(cid, b"X-Chroma-Token: reader-secret-3\r\n")[form])
    assert status == 0 or status >= 400, form
    assert _count(secured, cid) == before


def test_plain_form_with_a_write_token_is_allowed(secured: Guard) -> None:
    """The control: the same raw request with a write token does reach the engine."""
    cid = _collection_id(secured)
    before = _count(secured, cid)
    status, _ = _raw(secured.port, _bypass_requests(cid, b"X-Chroma-Token: writer-secret-2\r\n")["plain"])
    assert status == 201
    assert _count(secured, cid) == before + 1
    httpx.post(secured.url + f"{BASE}/collections/{cid}/delete", json={"ids": ["sneaky"]},
               headers={"x-chroma-token": "writer-secret-2"})


def test_duplicate_credentials_are_refused(secured: Guard) -> None:
    cid = _collection_id(secured)
    request = (f"POST {BASE}/collections/{cid}/add HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Authorization: Bearer reader-secret-3\r\nAuthorization: Bearer writer-secret-2\r\n"
               f"Content-Length: {len(ADD_BODY)}\r\n\r\n").encode() + ADD_BODY
    assert _raw(secured.port, request)[0] == 400
    mixed = (f"POST {BASE}/collections/{cid}/add HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             f"X-Chroma-Token: reader-secret-3\r\nAuthorization: Bearer writer-secret-2\r\n"
             f"Content-Length: {len(ADD_BODY)}\r\n\r\n").encode() + ADD_BODY
    assert _raw(secured.port, mixed)[0] == 400


def test_encoded_heartbeat_is_still_only_a_heartbeat(secured: Guard) -> None:
    status, data = _raw(secured.port, b"GET /api/v2/%68eartbeat HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status in (200, 400, 401), data
    if status == 200:
        assert b"nanosecond heartbeat" in data


# ---- credentials file changes ----------------------------------------------------------------


def _status(url: str, token: str) -> int:
    return httpx.get(url + f"{BASE}/collections", headers={"x-chroma-token": token}, timeout=10).status_code


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_tokens_added_and_revoked_without_restart(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(["first-token"]))
    with Guard(env={"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens)}) as g:
        assert _status(g.url, "first-token") == 200 and _status(g.url, "second-token") == 403
        tokens.write_text(json.dumps(["first-token", "second-token"]))
        assert _wait_for(lambda: _status(g.url, "second-token") == 200), "new token not accepted within 10 s"
        tokens.write_text(json.dumps(["second-token"]))
        assert _wait_for(lambda: _status(g.url, "first-token") == 403), "revoked token still accepted"

        tokens.write_text('["second-token", ')  # broken: refused, old credentials stay
        assert _wait_for(lambda: "credentials not reloaded" in g.log)
        assert _status(g.url, "second-token") == 200
        assert "second-token" not in g.log and "first-token" not in g.log

        g.env = {}  # SIGHUP reloads at once, even without a change of mtime granularity
        tokens.write_text(json.dumps(["third-token"]))
        os.kill(g.proc.pid, signal.SIGHUP)
        assert _wait_for(lambda: _status(g.url, "third-token") == 200, timeout=3)
        assert "SIGHUP" in g.log


def test_rotation_under_load_never_fails_a_valid_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(["steady-token", "old-token"]))
    with Guard(env={"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
                    "CHROMAGUARD_AUTH_RELOAD_INTERVAL": "0.2"}) as g:
        failures: list[int] = []
        done = threading.Event()
        counts = [0]

        def load() -> None:
            with httpx.Client(base_url=g.url, headers={"x-chroma-token": "steady-token"}) as http:
                while not done.is_set():
                    status = http.get(f"{BASE}/collections").status_code
                    counts[0] += 1
                    if status != 200:
                        failures.append(status)

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        for round_ in range(4):
            new = f"new-token-{round_}"
            if round_ % 2:  # in place, as an editor saving the file does
                tokens.write_text(json.dumps(["steady-token", new]))
            else:  # atomically, as a secrets manager does
                tmp = tmp_path / "tokens.tmp"
                tmp.write_text(json.dumps([new, "steady-token"]))
                tmp.replace(tokens)
            if round_ >= 2:  # applied at once by SIGHUP (a new token otherwise waits out the hold)
                assert g.proc is not None
                g.proc.send_signal(signal.SIGHUP)
            assert _wait_for(lambda new=new: _status(g.url, new) == 200), round_
        done.set()
        for w in workers:
            w.join()
        assert counts[0] > 100
        assert failures == []
        assert _status(g.url, "old-token") == 403


# ---- basic auth, rate limit, start-up checks -------------------------------------------------


def test_basic_auth_with_htpasswd(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("admin:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$")
                        + "\n")
    with Guard(env={"CHROMA_SERVER_AUTHN_PROVIDER": "chromadb.auth.basic_authn.BasicAuthenticationServerProvider",
                    "CHROMA_SERVER_AUTHN_CREDENTIALS_FILE": str(htpasswd)}) as g:
        c = chromadb.HttpClient(host="127.0.0.1", port=g.port, settings=Settings(
            chroma_client_auth_provider="chromadb.auth.basic_authn.BasicAuthClientProvider",
            chroma_client_auth_credentials="admin:s3cret", anonymized_telemetry=False))
        c.create_collection("basic", embedding_function=None)
        assert [x.name for x in c.list_collections()] == ["basic"]
        assert httpx.get(g.url + f"{BASE}/collections", auth=("admin", "wrong")).status_code == 403
        missing = httpx.get(g.url + f"{BASE}/collections")
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Basic")


def test_basic_auth_long_passwords_and_guessing(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4)).decode() + "\n")
    with Guard(env={"CHROMA_SERVER_AUTH_PROVIDER": "basic", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(htpasswd)}) as g:
        url = g.url + f"{BASE}/collections"
        assert httpx.get(url, auth=("alice", "a" * 100)).status_code == 403, "over bcrypt's 72 bytes: refused"
        statuses = [httpx.get(url, auth=("alice", f"guess-{i}")).status_code for i in range(12)]
        assert statuses[0] == 403 and 429 in statuses, statuses
        assert "Traceback" not in g.log
        assert httpx.get(g.url + "/healthz").status_code == 200


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    tokens = tmp_path / "t.json"
    tokens.write_text('["fast-token", "other-token"]')
    with Guard(env={"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
                    "CHROMAGUARD_RATE_LIMIT": "5/s"}) as g:
        statuses = [_status(g.url, "fast-token") for _ in range(20)]
        assert 429 in statuses and statuses[0] == 200
        r = httpx.get(g.url + f"{BASE}/collections", headers={"x-chroma-token": "fast-token"})
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and r.json()["error"] == "RateLimitError"
        assert _status(g.url, "other-token") == 200, "limits are per token"


def test_a_scoped_request_counts_once_against_the_rate_limit(tmp_path: Path) -> None:
    """The owner check of a scoped token fetches a listing first: the request must not be
    counted again when it resumes, or a 1/s limit would refuse every such request."""
    tokens = tmp_path / "t.json"
    tokens.write_text(json.dumps([{"token": "admin", "role": "admin"},
                                  {"token": "scoped", "role": "write", "tenant": "default_tenant",
                                   "databases": ["default_database"]}]))
    with Guard(env={"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
                    "CHROMAGUARD_RATE_LIMIT": "1/s"}) as g:
        r = httpx.post(f"{g.url}{BASE}/collections", json={"name": "limited"}, headers={"x-chroma-token": "admin"})
        cid = r.json()["id"]
        for _ in range(3):
            time.sleep(1.2)  # a full token each time; the listing is refetched (>1 s old, first use)
            r = httpx.get(f"{g.url}{BASE}/collections/{cid}/count", headers={"x-chroma-token": "scoped"})
            assert r.status_code == 200, r.text


def test_pipelined_refusals_are_all_answered_in_order(secured: Guard) -> None:
    request = f"GET {BASE}/collections HTTP/1.1\r\nhost: x\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", secured.port), timeout=10) as sock:
        # The heartbeat is answered in a task, so the 300 refusals queue up behind it.
        sock.sendall(b"GET /api/v2/heartbeat HTTP/1.1\r\nhost: x\r\n\r\n" + request * 300
                     + b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 ") < 302:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {data.count(b'HTTP/1.1 ')} answers"
            data += chunk
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
    assert statuses == [200] + [401] * 300 + [200]


def test_auth_off_on_a_public_address_warns_loudly() -> None:
    with Guard("--host", "0.0.0.0") as g:
        assert "AUTH IS OFF" in g.log


def test_star_origin_with_auth_warns(tmp_path: Path) -> None:
    tokens = tmp_path / "t.json"
    tokens.write_text('["t"]')
    with Guard(env={"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
                    "CHROMA_SERVER_CORS_ALLOW_ORIGINS": '["*"]'}) as g:
        assert "allows every origin" in g.log


def test_custom_open_paths(tmp_path: Path) -> None:
    tokens = tmp_path / "t.json"
    tokens.write_text('["t"]')
    with Guard(env={"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
                    "CHROMAGUARD_AUTH_OPEN_PATHS": "/healthz,/api/v2/version"}) as g:
        assert httpx.get(g.url + "/api/v2/version").status_code == 200
        assert httpx.get(g.url + "/api/v2/heartbeat").status_code == 401
        assert httpx.get(g.url + "/api/v2/heartbeat", headers={"x-chroma-token": "t"}).status_code == 200


@pytest.mark.parametrize("content, fragment", [
    ('{"tokens": "nope"}', "expected a list"),
    ('[{"token": "a", "role": "root"}]', "role 'root'"),
    ('[{"sha256": "abc"}]', "64 hex digits"),
    ("[]", "no tokens"),
    ('["same", "same"]', "appears twice"),
    ('[{"token": "a", "databases": []}]', "non-empty list"),
    ('[{"token": "a", "tenant": ""}]', "tenant must be a name"),
])
def test_invalid_credentials_file_stops_start_up(tmp_path: Path, content: str, fragment: str) -> None:
    tokens = tmp_path / "t.json"
    tokens.write_text(content)
    result = subprocess.run([sys.executable, "-m", "chromaguard", "serve", "--data-dir", str(tmp_path / "d")],
                            env=clean_env(CHROMA_SERVER_AUTH_PROVIDER="token",
                                          CHROMA_SERVER_AUTH_CREDENTIALS_FILE=str(tokens)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CHROMA_SERVER_AUTH_CREDENTIALS_FILE" in lines[0] and fragment in lines[0], lines
