"""Every refusal of a credentials file, word for word: the one line an operator reads in the
log when a reload is refused (the previous credentials stay in force), and what it tells them
to change. The reload tests (test_credentials_watch, test_credentials_files) check that a
refused file changes nothing; these pin what it says."""

from __future__ import annotations

import hashlib
import json
import re

import bcrypt
import pytest

from chromaguard.access.credentials import (
    PLACEHOLDER_TOKENS,
    CredentialsError,
    Principal,
    parse_htpasswd,
    parse_inline,
    parse_tokens,
)

# A fixed salt: the same test ids in each xdist worker.
HASH = bcrypt.hashpw(b"pw", b"$2b$04$" + b"chromaguardtestsaltxx.").decode()

REFUSED = [
    ('t.json', 'json', '{"tokens": [1,]}',
     't.json: not valid JSON at line 1, column 15: Expecting value'),
    ('t.json', 'json', '{"tokens": [], "tokens": []}',
     "t.json: not valid JSON: the key 'tokens' appears twice in one object"),
    ('t.yaml', 'yaml', 'tokens:\n  - token: a\n     role: read\n',
     't.yaml: not valid YAML at line 3, column 10: mapping values are not allowed here'),
    ('t.yaml', 'yaml', 'tokens:\n\t- a\n',
     "t.yaml: not valid YAML at line 2, column 1: found character '\\t' that cannot start any token"),
    ('t.txt', 'lines', 'good\nbad token\n',
     't.txt: line 2 is not a bare token (it has spaces, a colon or YAML/JSON syntax): name the file .yaml or .json, '
     'or put one token on each line'),
    ('t.txt', 'lines', 'good\nx\x00y\n',
     't.txt: contains NUL bytes: not a text file'),
    ('t.json', 'json', '{"other": []}',
     "t.json: expected a list of tokens or of token records under 'tokens'"),
    ('t.json', 'json', '"just a string"',
     't.json: expected a list of tokens or of token records'),
    ('t.json', 'json', '["has space"]',
     't.json: entry 1 is not a bare token (it has spaces, a colon or YAML/JSON syntax): write it as a record with '
     'token and role'),
    ('t.json', 'json', '[12]',
     't.json: entry 1 must be a token string (quote it) or a record'),
    ('t.json', 'json', '[true]',
     't.json: entry 1 must be a token string (quote it) or a record'),
    ('t.json', 'json', '[]',
     't.json: no tokens: add at least one'),
    ('t.json', 'json', '[{"token": "a", "role": "read", "scope": "x"}]',
     "t.json: entry 1: unknown field 'scope' (use token, sha256, certificate, name, role, tenant, databases)"),
    ('t.json', 'json', '[{"role": "read"}]',
     "t.json: entry 1: give exactly one of token or sha256 (or a client certificate's name as certificate)"),
    ('t.json', 'json', '[{"token": "a", "sha256": "' + "0" * 64 + '", "role": "read"}]',
     "t.json: entry 1: give exactly one of token or sha256 (or a client certificate's name as certificate)"),
    ('t.json', 'json', '[{"token": 5, "role": "read"}]',
     't.json: entry 1: the token must be a string (quote it)'),
    ('t.json', 'json', '[{"token": " a", "role": "read"}]',
     't.json: entry 1: a token must be non-empty without surrounding spaces'),
    ('t.json', 'json', '[{"token": "", "role": "read"}]',
     't.json: entry 1: a token must be non-empty without surrounding spaces'),
    ('t.json', 'json', '[{"sha256": "abc", "role": "read"}]',
     't.json: entry 1: sha256 must be 64 hex digits (sha256sum of the token)'),
    ('t.json', 'json', '[{"sha256": 5, "role": "read"}]',
     't.json: entry 1: sha256 must be 64 hex digits (sha256sum of the token)'),
    ('t.json', 'json', '[{"token": "a", "role": "read", "tenant": null}]',
     't.json: entry 1: tenant is empty: give it a value, or leave the key out for all'),
    ('t.json', 'json', '[{"token": "a", "role": "read", "databases": null}]',
     't.json: entry 1: databases is empty: give it a value, or leave the key out for all'),
    ('t.json', 'json', '[{"token": "a", "role": "read", "tenant": " "}]',
     't.json: entry 1: tenant must be a name (leave it out for all tenants)'),
    ('t.json', 'json', '[{"token": "a", "role": "read", "tenant": 3}]',
     't.json: entry 1: tenant must be a name (leave it out for all tenants)'),
    ('t.json', 'json', '[{"token": "a", "role": "read", "databases": []}]',
     't.json: entry 1: databases must be a non-empty list of names (leave it out for all databases)'),
    ('t.json', 'json', '[{"token": "a", "role": "read", "databases": [""]}]',
     't.json: entry 1: databases must be a non-empty list of names (leave it out for all databases)'),
    ('t.json', 'json', '[{"token": "a", "role": "read", "databases": {"a": 1}}]',
     't.json: entry 1: databases must be a non-empty list of names (leave it out for all databases)'),
    ('t.json', 'json', '[{"token": "a"}]',
     't.json: entry 1: no role: add role: admin, write, read, metrics'),
    ('t.json', 'json', '[{"token": "a", "role": "metrics", "tenant": "acme"}]',
     't.json: entry 1: a metrics token cannot be scoped to a tenant or databases (/metrics counts every tenant, '
     'so it could never scrape); remove the scope'),
    ('t.json', 'json', '[{"token": "a", "role": "owner"}]',
     "t.json: entry 1: role 'owner' must be admin, write, read or metrics"),
    ('t.json', 'json', '[{"token": "a", "role": "read"}, {"token": "a", "role": "write"}]',
     't.json: entry 2: the same token appears twice'),
    ('t.json', 'json', '[{"token": "a", "role": "read", "name": "n"}, {"token": "b", "role": "write", "name": "n"}]',
     "t.json: entry 2: the name 'n' appears twice"),
]


@pytest.mark.parametrize("name, fmt, text, message", REFUSED)
def test_a_refused_tokens_file_says_where_and_what_to_change(name: str, fmt: str, text: str, message: str) -> None:
    with pytest.raises(CredentialsError) as refused:
        parse_tokens(text, name, fmt)
    assert str(refused.value) == message


@pytest.mark.parametrize("text, message", [
    ("alice\n", "h: line 1: expected user:hash"),
    (f"bob:{HASH}\nalice:plain\n", "h: line 2: only bcrypt hashes are supported (create them with htpasswd -B)"),
    (f"bob:{HASH}\n# a comment\nbob:{HASH}\n", "h: line 3: the user 'bob' appears twice"),
    (f"\ufeffbob:{HASH}\r\nalice\r\n", "h: line 2: expected user:hash"),
    ("", "h: no users: add at least one user:hash line"),
    ("# only a comment\n\n", "h: no users: add at least one user:hash line"),
])
def test_a_refused_htpasswd_file_says_which_line(text: str, message: str) -> None:
    with pytest.raises(CredentialsError) as refused:
        parse_htpasswd(text, "h")
    assert str(refused.value) == message


def test_what_each_accepted_record_becomes() -> None:
    store = parse_tokens(
        '[{"token": "w", "role": "WRITE", "tenant": "acme", "databases": "main"},'
        ' {"sha256": "sha256:' + hashlib.sha256(b"r").hexdigest() + '", "role": "read", "databases": ["a", "b"]},'
        ' "bare", {"token": "n", "role": "admin", "name": "ops"}]', "t.json", "json")
    assert store.check_token("w") == Principal("token-1", "write", "acme", ("main",), "role from its record")
    assert store.check_token("r") == Principal("token-2", "read", "default_tenant", ("a", "b"),
                                               "role from its record")  # databases alone: the default tenant
    assert store.check_token("bare") == Principal("token-3", "admin", None, None, "a bare token: full access")
    assert store.check_token("n") == Principal("ops", "admin", None, None, "role from its record")
    assert store.check_token("W") is None and store.check_token("bare ") is None
    users = parse_htpasswd(f"alice:{HASH}\n", "h")
    assert users.principals() == [Principal("alice", how="htpasswd user: full access")]


def _example_tokens() -> str:
    from pathlib import Path

    return (Path(__file__).resolve().parents[2] / "deploy" / "chroma_tokens.example.json").read_text()


@pytest.mark.parametrize(("where", "fmt", "text"), [
    ("chroma_tokens.json", "json", "EXAMPLE"),  # the example file, copied and not edited
    ("t.yaml", "yaml", 'tokens:\n  - {token: "change-me-admin", name: ops, role: admin}\n'),  # docs/auth.md's
    ("t.txt", "lines", "Replace-With-A-Token\n"),  # another spelling
    ("t.yaml", "yaml", 'users:\n  - id: ops\n    tokens: ["real-one", "replace-with-a-token"]\n'),  # Chroma 0.6's
])
def test_a_placeholder_token_from_an_example_is_refused_never_a_login(where: str, fmt: str, text: str) -> None:
    text = _example_tokens() if text == "EXAMPLE" else text
    with pytest.raises(CredentialsError) as refused:
        parse_tokens(text, where, fmt)
    message = str(refused.value)
    assert message.startswith(where) and "placeholder" in message and "token_urlsafe" in message, message
    assert "\n" not in message
    assert parse_tokens(text.replace("replace-with-", "r4nd0m-").replace("Replace-With-", "R4nd0m-")
                        .replace("change-me", "ch4nged"), where, fmt)  # the same file with real tokens loads


def test_a_placeholder_is_refused_by_every_route_and_named_without_the_rest_of_the_token() -> None:
    admin = "replace-with-a-long-random-admin-token"
    for record in ({"sha256": hashlib.sha256(admin.encode()).hexdigest(), "role": "admin"},
                   {"sha256": "sha256:" + hashlib.sha256(b"change-me-admin").hexdigest(), "role": "admin"}):
        with pytest.raises(CredentialsError, match="sha256 is that of an example's placeholder"):
            parse_tokens(json.dumps([record]), "t.json", "json")
    with pytest.raises(CredentialsError, match="placeholder"):
        parse_inline("token", f"good-one,{admin}", "CHROMA_SERVER_AUTH_CREDENTIALS")
    with pytest.raises(CredentialsError) as refused:  # what follows the prefix is the user's: not shown
        parse_tokens(json.dumps(["change-me-SECRET\nINFO forged line"]), "t.json", "json")
    assert "SECRET" not in str(refused.value) and "\n" not in str(refused.value)
    for fine in ("change-metadata-reader-7f3a", "replaced-with-care-91c2", "x-replace-with-y"):
        assert parse_tokens(json.dumps([fine]), "t.json", "json")


def test_the_placeholder_list_holds_every_token_our_examples_show() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    shown = set()
    for name in ("deploy/chroma_tokens.example.json", "deploy/kubernetes/base/secret.yaml", "docs/auth.md",
                 "docs/deploy.md", "README.md"):
        shown |= set(re.findall(r"\b(?:replace-with-[\w-]*\w|change-me(?:-[\w-]*\w)?)", (root / name).read_text()))
    assert shown and shown <= set(PLACEHOLDER_TOKENS), shown - set(PLACEHOLDER_TOKENS)
