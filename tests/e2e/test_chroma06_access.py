"""Chroma 0.5/0.6 access files, unchanged: the token file (``users:`` with ``id`` and ``tokens``)
and the simple-RBAC file (``roles_mapping`` and ``users``), with the environment names 0.6 used.

The oracle is Chroma 0.6.3 itself, written down here from its source, not from our mapping: each
request below with the action 0.6.3's server asks for it (``chromadb/server/fastapi``), and the
roles of 0.6.3's own example file (``examples/basic_functionality/authz/authz.yaml``). A request
is allowed exactly when the caller's role lists that action."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.procs import Guard, cli

BASE = "/api/v2/tenants/default_tenant/databases/default_database"

# Chroma 0.6.3's example roles, verbatim in meaning.
ROLES = {
    "admin": ["system:reset", "tenant:create_tenant", "tenant:get_tenant", "db:create_database", "db:get_database",
              "db:list_collections", "collection:get_collection", "db:create_collection", "db:get_or_create_collection",
              "collection:delete_collection", "collection:update_collection", "collection:add", "collection:delete",
              "collection:get", "collection:query", "collection:peek", "collection:update", "collection:upsert",
              "collection:count"],
    "write": ["tenant:get_tenant", "db:get_database", "db:list_collections", "collection:get_collection",
              "db:create_collection", "db:get_or_create_collection", "collection:delete_collection",
              "collection:update_collection", "collection:add", "collection:delete", "collection:get",
              "collection:query", "collection:peek", "collection:update", "collection:upsert", "collection:count"],
    "db_read": ["tenant:get_tenant", "db:get_database", "db:list_collections", "collection:get_collection",
                "db:create_collection", "db:get_or_create_collection", "collection:delete_collection",
                "collection:update_collection"],
    "collection_read": ["tenant:get_tenant", "db:get_database", "db:list_collections", "collection:get_collection",
                        "collection:get", "collection:query", "collection:peek", "collection:count"],
    "collection_x_list": ["tenant:get_tenant", "db:get_database", "collection:get_collection", "collection:get",
                          "collection:query", "collection:peek", "collection:count"],
}
# And one role per action, so that each action is told apart from the ones it comes with above.
ONLY = {"only-" + action.replace(":", "-").replace("_", "-"): [action] for action in sorted(
    {"tenant:create_tenant", "tenant:get_tenant", "db:create_database", "db:get_database", "db:list_collections",
     "db:count_collections", "db:create_collection", "collection:get_collection", "collection:add",
     "collection:upsert", "collection:update", "collection:get", "collection:query", "collection:count",
     "collection:delete", "collection:update_collection", "collection:delete_collection", "system:reset"})}
ROLES |= ONLY
USERS = [{"id": f"{role}@example.com", "role": role, "tokens": [f"tok-{role}"]} for role in ROLES]
STRANGER = {"id": "stranger", "tokens": ["tok-stranger"]}  # in the token file, not in the RBAC file

# (what, method, path, body, the action Chroma 0.6.3 asks for it)
REQUESTS = [
    ("create tenant", "POST", "/api/v2/tenants", {"name": "t-{who}"}, "tenant:create_tenant"),
    ("get tenant", "GET", "/api/v2/tenants/default_tenant", None, "tenant:get_tenant"),
    ("create database", "POST", "/api/v2/tenants/default_tenant/databases", {"name": "d-{who}"},
     "db:create_database"),
    ("get database", "GET", BASE, None, "db:get_database"),
    ("list collections", "GET", f"{BASE}/collections", None, "db:list_collections"),
    ("count collections", "GET", f"{BASE}/collections_count", None, "db:count_collections"),
    ("create collection", "POST", f"{BASE}/collections", {"name": "c-{who}", "get_or_create": True},
     "db:create_collection"),
    ("get collection", "GET", f"{BASE}/collections/shared", None, "collection:get_collection"),
    ("add", "POST", f"{BASE}/collections/{{id}}/add", {"ids": ["x-{who}"], "embeddings": [[1.0, 2.0]]},
     "collection:add"),
    ("upsert", "POST", f"{BASE}/collections/{{id}}/upsert", {"ids": ["u-{who}"], "embeddings": [[1.0, 2.0]]},
     "collection:upsert"),
    ("update", "POST", f"{BASE}/collections/{{id}}/update", {"ids": ["seed"], "embeddings": [[2.0, 2.0]]},
     "collection:update"),
    ("get", "POST", f"{BASE}/collections/{{id}}/get", {"ids": ["seed"]}, "collection:get"),
    ("query", "POST", f"{BASE}/collections/{{id}}/query", {"query_embeddings": [[1.0, 2.0]], "n_results": 1},
     "collection:query"),
    ("count", "GET", f"{BASE}/collections/{{id}}/count", None, "collection:count"),
    ("delete records", "POST", f"{BASE}/collections/{{id}}/delete", {"ids": ["nothing-here"]}, "collection:delete"),
    ("modify collection", "PUT", f"{BASE}/collections/{{id}}", {"new_metadata": {"k": "{who}"}},
     "collection:update_collection"),
    ("delete collection", "DELETE", f"{BASE}/collections/gone-{{who}}", None, "collection:delete_collection"),
    ("reset", "POST", "/api/v2/reset", None, "system:reset"),
]
CASES = [(user, request) for user in [*(u["id"] for u in USERS), "stranger"] for request in REQUESTS]


@pytest.fixture(scope="module")
def chroma06(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Guard, str]]:
    folder = tmp_path_factory.mktemp("chroma06")
    # One file for both, as 0.6's example has it: authn reads id and tokens, authz id and role.
    authz = folder / "authz.yaml"
    authz.write_text(json.dumps({"roles_mapping": {r: {"actions": a} for r, a in ROLES.items()},
                                 "users": USERS}))
    tokens = folder / "tokens.yaml"
    tokens.write_text(json.dumps({"users": [*USERS, STRANGER]}))
    env = {"CHROMA_SERVER_AUTHN_PROVIDER": "chromadb.auth.token_authn.TokenAuthenticationServerProvider",
           "CHROMA_SERVER_AUTHN_CREDENTIALS_FILE": str(tokens),
           "CHROMA_SERVER_AUTHZ_PROVIDER": "chromadb.auth.simple_rbac_authz.SimpleRBACAuthorizationProvider",
           "CHROMA_SERVER_AUTHZ_CONFIG_FILE": str(authz)}
    with Guard(env=env) as g:
        admin = {"authorization": "Bearer tok-admin"}
        made = httpx.post(g.url + f"{BASE}/collections", json={"name": "shared"}, headers=admin)
        assert made.status_code == 200, made.text
        collection_id = made.json()["id"]
        assert httpx.post(g.url + f"{BASE}/collections/{collection_id}/add", headers=admin,
                          json={"ids": ["seed"], "embeddings": [[1.0, 2.0]]}).status_code == 201
        g.env_used = env  # type: ignore[attr-defined]
        yield g, collection_id


@pytest.mark.parametrize("user, request_", CASES, ids=[f"{u.split('@')[0]}-{r[0]}" for u, r in CASES])
def test_each_role_may_do_exactly_its_actions(chroma06: tuple[Guard, str], user: str,
                                              request_: tuple[str, str, str, dict | None, str]) -> None:
    g, collection_id = chroma06
    what, method, path, body, action = request_
    role = user.split("@")[0] if user != "stranger" else None
    who = (role or "stranger").replace("_", "-")
    if what == "delete collection":  # something to delete, made by the admin
        assert httpx.post(g.url + f"{BASE}/collections", json={"name": f"gone-{who}", "get_or_create": True},
                          headers={"authorization": "Bearer tok-admin"}).status_code == 200
    filled = json.loads(json.dumps(body).replace("{who}", who)) if body is not None else None
    answer = httpx.request(method, g.url + path.replace("{id}", collection_id).replace("{who}", who), json=filled,
                           headers={"authorization": f"Bearer tok-{role or 'stranger'}"}, timeout=60)
    refused_here = answer.status_code == 403 and "chromaguard:" in answer.text
    allowed = role is not None and action in ROLES[role]
    assert refused_here != allowed, (what, user, answer.status_code, answer.text[:300])
    if allowed and what != "reset":  # reset: chromaguard lets it through, the engine's ALLOW_RESET refuses it
        assert answer.status_code < 400, (what, user, answer.status_code, answer.text[:300])


def test_identity_needs_only_a_known_token(chroma06: tuple[Guard, str]) -> None:
    g, _ = chroma06
    for token, user in (("tok-stranger", "stranger"), ("tok-db_read", "db_read@example.com")):
        answer = httpx.get(g.url + "/api/v2/auth/identity", headers={"authorization": f"Bearer {token}"})
        assert answer.status_code == 200 and answer.json()["user_id"] == user
    assert httpx.get(g.url + "/api/v2/auth/identity", headers={"authorization": "Bearer nope"}).status_code == 403


def test_backups_need_the_reset_action(chroma06: tuple[Guard, str]) -> None:
    g, _ = chroma06
    refused = httpx.post(g.url + "/chromaguard/snapshots", headers={"authorization": "Bearer tok-write"})
    assert refused.status_code == 403 and "system:reset" in refused.text
    made = httpx.post(g.url + "/chromaguard/snapshots", headers={"authorization": "Bearer tok-admin"}, timeout=120)
    assert made.status_code == 201, made.text
    httpx.delete(g.url + f"/chromaguard/snapshots/{made.json()['id']}", headers={"authorization": "Bearer tok-admin"})


def test_config_says_how_each_user_was_mapped(chroma06: tuple[Guard, str]) -> None:
    g, _ = chroma06
    result = cli("config", "--json", **g.env_used)  # type: ignore[attr-defined]
    assert result.returncode == 0, result.stderr
    people = {p["name"]: p for p in json.loads(result.stdout)["credentials"]}
    assert people["write@example.com"]["actions"] == sorted(ROLES["write"])
    assert "RBAC role 'write'" in people["write@example.com"]["how"]
    assert people["stranger"]["actions"] == [] and "may do nothing" in people["stranger"]["how"]
    assert "tok-" not in result.stdout, "never a token"


def test_a_token_file_alone_gives_full_access_as_0_6_did(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("users:\n  - id: alice\n    role: db_read\n    tenant: other\n    tokens: [alice-token]\n")
    env = {"CHROMA_SERVER_AUTHN_PROVIDER": "chromadb.auth.token_authn.TokenAuthenticationServerProvider",
           "CHROMA_SERVER_AUTHN_CREDENTIALS_FILE": str(tokens)}
    config = cli("config", "--json", **env)
    alice = json.loads(config.stdout)["credentials"][0]
    assert alice["role"] == "admin" and "not enforced" in alice["how"], alice
    with Guard(env=env) as g:
        made = httpx.post(g.url + f"{BASE}/collections", json={"name": "alices"},
                          headers={"authorization": "Bearer alice-token"})
        assert made.status_code == 200, made.text
        assert httpx.get(g.url + f"{BASE}/collections").status_code == 401


def _config_with_rbac(tokens: Path, authz: Path) -> subprocess.CompletedProcess[str]:
    """``chromaguard config`` with a 0.6 token file and an RBAC file, as 0.6's settings name them."""
    return cli("config", CHROMA_SERVER_AUTHN_PROVIDER="token", CHROMA_SERVER_AUTHN_CREDENTIALS_FILE=str(tokens),
               CHROMA_SERVER_AUTHZ_PROVIDER="chromadb.auth.simple_rbac_authz.SimpleRBACAuthorizationProvider",
               CHROMA_SERVER_AUTHZ_CONFIG_FILE=str(authz))


@pytest.mark.parametrize("authz, expected", [
    ({"roles_mapping": {"r": {"actions": ["collection:get"]}}, "users": [{"id": "a", "role": "missing"}]},
     "role 'missing' is not in roles_mapping"),
    ({"users": [{"id": "a", "role": "r"}]}, "expected roles_mapping"),
])
def test_a_broken_rbac_file_stops_the_start_with_one_line(tmp_path: Path, authz: dict, expected: str) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(json.dumps({"users": [{"id": "a", "tokens": ["a-token"]}]}))
    (tmp_path / "authz.yaml").write_text(json.dumps(authz))
    result = _config_with_rbac(tokens, tmp_path / "authz.yaml")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_a_misspelt_action_is_warned_about(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(json.dumps({"users": [{"id": "a", "tokens": ["a-token"]}]}))
    (tmp_path / "authz.yaml").write_text(json.dumps({"roles_mapping": {"r": {"actions": ["collection:quary"]}},
                                                     "users": [{"id": "a", "role": "r"}]}))
    result = _config_with_rbac(tokens, tmp_path / "authz.yaml")
    assert result.returncode == 0, result.stderr
    assert "collection:quary is not a Chroma 0.6 action" in result.stdout


def test_the_official_client_writes_and_is_refused_as_on_0_6(chroma06: tuple[Guard, str]) -> None:
    """Its writes call pre-flight-checks first, which 0.6 served to anyone: a writer's add goes
    through; a collection reader's is refused with the action it lacks."""
    import chromadb
    from chromadb.config import Settings

    g, _ = chroma06

    def client(token: str) -> chromadb.ClientAPI:
        return chromadb.HttpClient(host="127.0.0.1", port=g.port, settings=Settings(
            anonymized_telemetry=False, chroma_client_auth_provider="chromadb.auth.token_authn.TokenAuthClientProvider",
            chroma_client_auth_credentials=token))

    writer = client("tok-write").get_collection("shared")
    writer.add(ids=["by-client"], embeddings=[[3.0, 4.0]])
    assert writer.get(ids=["by-client"])["ids"] == ["by-client"]
    reader = client("tok-collection_read").get_collection("shared")
    assert reader.count() >= 2
    with pytest.raises(Exception, match="collection:add"):
        reader.add(ids=["nope"], embeddings=[[0.0, 0.0]])
    assert httpx.get(g.url + "/metrics", headers={"authorization": "Bearer tok-write"}).status_code == 403
    assert httpx.get(g.url + "/metrics", headers={"authorization": "Bearer tok-admin"}).status_code == 200


@pytest.mark.parametrize("authz, tokens, expected", [
    ({"roles_mapping": {"r": {"actions": []}}, "users": [{"id": "a", "role": ["r"]}]}, None,
     "role ['r'] is not in roles_mapping"),
    ({"roles_mapping": {1: {"actions": []}}, "users": [{"id": "a", "role": 1}]}, None, "must be strings"),
    ({"roles_mapping": {"r": {"actions": []}}, "users": [{"id": "a", "role": "r"}]},
     [{"token": "a-token", "name": "a", "role": "read", "tenant": "acme"}], "has a tenant/databases scope"),
    # A record without a name would be matched as token-2 by its position, taking token-2's role.
    ({"roles_mapping": {"r": {"actions": ["system:reset"]}}, "users": [{"id": "token-2", "role": "r"}]},
     [{"token": "a-token", "name": "a", "role": "read"}, {"token": "b-token", "role": "read"}],
     "token-2 has no name, and an RBAC file matches users by name"),
    ({"roles_mapping": {"r": {"actions": []}}, "users": [{"id": "a", "role": "r"}]}, ["bare-token"], "has no name"),
])
def test_rbac_files_that_would_be_guessed_at_are_refused(tmp_path: Path, authz: dict, tokens: list | None,
                                                         expected: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(json.dumps(tokens if tokens is not None else {"users": [{"id": "a", "tokens": ["a-token"]}]}))
    if 1 in authz["roles_mapping"]:  # JSON cannot hold an integer key: YAML can
        text = "roles_mapping:\n  1: {actions: []}\nusers:\n  - {id: a, role: 1}\n"
    else:
        text = json.dumps(authz)
    (tmp_path / "authz.yaml").write_text(text)
    result = _config_with_rbac(path, tmp_path / "authz.yaml")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_a_broken_rbac_file_at_a_reload_keeps_the_watch_and_later_revocations(tmp_path: Path) -> None:
    tokens, authz = tmp_path / "tokens.yaml", tmp_path / "authz.yaml"
    users = [{"id": "keep", "tokens": ["keep-token"]}, {"id": "gone", "tokens": ["gone-token"]}]
    rbac = {"roles_mapping": {"r": {"actions": ["db:list_collections"]}},
            "users": [{"id": "keep", "role": "r"}, {"id": "gone", "role": "r"}]}
    tokens.write_text(json.dumps({"users": users}))
    authz.write_text(json.dumps(rbac))
    env = {"CHROMA_SERVER_AUTHN_PROVIDER": "token", "CHROMA_SERVER_AUTHN_CREDENTIALS_FILE": str(tokens),
           "CHROMA_SERVER_AUTHZ_PROVIDER": "chromadb.auth.simple_rbac_authz.SimpleRBACAuthorizationProvider",
           "CHROMA_SERVER_AUTHZ_CONFIG_FILE": str(authz)}

    def lists(token: str) -> int:
        return httpx.get(g.url + f"{BASE}/collections", headers={"authorization": f"Bearer {token}"}).status_code

    with Guard(env=env) as g:
        assert lists("gone-token") == 200
        authz.write_text(json.dumps({**rbac, "users": [{"id": "keep", "role": ["r"]}]}))
        tokens.write_text(json.dumps({"users": users, "note": 1}))  # a change, so the watcher reloads
        deadline = time.monotonic() + 10
        while "credentials not reloaded" not in g.log:
            assert time.monotonic() < deadline, g.log[-2000:]
            time.sleep(0.1)
        authz.write_text(json.dumps(rbac))
        tokens.write_text(json.dumps({"users": users[:1]}))  # "gone" revoked
        deadline = time.monotonic() + 10
        while lists("gone-token") != 403:
            assert time.monotonic() < deadline, "the revocation never applied: the watch died"
            time.sleep(0.2)
        assert lists("keep-token") == 200


def test_an_rbac_role_cannot_widen_what_a_record_allows(tmp_path: Path) -> None:
    # A chromaguard record says role: read; the RBAC file gives that user 0.6's admin actions.
    # The narrower of the two decides: the record's reader stays a reader.
    tokens, authz = tmp_path / "tokens.yaml", tmp_path / "authz.yaml"
    tokens.write_text(json.dumps([{"token": "reader-token", "name": "reader", "role": "read"},
                                  {"token": "writer-token", "name": "writer", "role": "write"}]))
    authz.write_text(json.dumps({"roles_mapping": {"admin": {"actions": ROLES["admin"]},
                                                   "lister": {"actions": ["db:list_collections"]}},
                                 "users": [{"id": "reader", "role": "admin"}, {"id": "writer", "role": "lister"}]}))
    env = {"CHROMA_SERVER_AUTHN_PROVIDER": "token", "CHROMA_SERVER_AUTHN_CREDENTIALS_FILE": str(tokens),
           "CHROMA_SERVER_AUTHZ_PROVIDER": "chromadb.auth.simple_rbac_authz.SimpleRBACAuthorizationProvider",
           "CHROMA_SERVER_AUTHZ_CONFIG_FILE": str(authz)}
    with Guard(env=env) as g:
        def call(method: str, token: str) -> httpx.Response:
            return httpx.request(method, g.url + f"{BASE}/collections", headers={"authorization": f"Bearer {token}"},
                                 json={"name": "rbac-widened"} if method == "POST" else None, timeout=60)

        assert call("GET", "reader-token").status_code == 200
        refused = call("POST", "reader-token")
        assert refused.status_code == 403 and "role read" in refused.text, refused.text
        assert call("POST", "writer-token").status_code == 403  # the RBAC role narrows the record's write
        assert call("GET", "writer-token").status_code == 200
        result = cli("config", "--json", **env)
    assert result.returncode == 0, result.stderr
    people = {p["name"]: p for p in json.loads(result.stdout)["credentials"]}
    assert "within its record's role 'read'" in people["reader"]["how"], people["reader"]
    assert people["reader"]["role"] == "read (RBAC)" and people["writer"]["role"] == "write (RBAC)"
