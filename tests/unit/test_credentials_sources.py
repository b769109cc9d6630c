"""Where credentials come from, in-process: the file (read once, capped, regular files only),
the inline setting, both together, and the check for a file still being written.

The reload tests (test_credentials_watch, test_credentials_files) drive these through the
watcher and a running service; these pin each rule and each message.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import bcrypt
import pytest

from chromaguard.access.credentials import (
    MAX_FILE_BYTES,
    CredentialsError,
    CredentialStore,
    Principal,
    digest,
    file_format,
    half_written,
    load_store,
    parse_htpasswd,
    parse_inline,
    parse_tokens,
)

# A fixed salt: the same test ids in each xdist worker.
HASH = bcrypt.hashpw(b"pw", b"$2b$04$" + b"chromaguardtestsaltxx.").decode()


def load(provider: str, path: Path | None, inline: str = ""):  # noqa: ANN201
    return load_store(provider, path, inline, file_setting="FILE", inline_setting="INLINE")


def refused(provider: str, path: Path | None, inline: str = "") -> str:
    with pytest.raises(CredentialsError) as error:
        load(provider, path, inline)
    return str(error.value)


# ---- the file ------------------------------------------------------------------------------


def test_the_file_is_read_in_the_format_its_name_says(tmp_path: Path) -> None:
    upper = tmp_path / "t.JSON"
    upper.write_text('["a1"]')
    assert load("token", upper).check_token("a1") == Principal("token-1", how="a bare token: full access")
    yaml_named = tmp_path / "t.yaml"
    yaml_named.write_text('["a1"]')  # JSON is YAML too
    assert load("token", yaml_named).check_token("a1") is not None
    text = tmp_path / "t.txt"
    text.write_text("tokens:\n  - a1\n")
    assert refused("token", text) == (f"FILE={text}: line 1 is not a bare token (it has spaces, a colon or YAML/JSON "
                                      "syntax): name the file .yaml or .json, or put one token on each line")


def test_file_refusals_name_the_setting_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert refused("token", missing) == f"FILE={missing}: cannot read (No such file or directory)"
    assert refused("token", tmp_path) == f"FILE={tmp_path}: not a regular file"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert refused("token", fifo) == f"FILE={fifo}: not a regular file"  # and the read did not block
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe token")
    assert refused("token", binary) == f"FILE={binary}: not UTF-8 text (is it a binary file?)"
    users = tmp_path / "users"
    users.write_text("alice\n")
    assert refused("basic", users) == f"FILE={users}: line 1: expected user:hash"


def test_a_file_of_exactly_the_cap_is_read_one_byte_more_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"tok\n" + b"#" * (MAX_FILE_BYTES - 5) + b"\n")
    assert big.stat().st_size == MAX_FILE_BYTES
    assert load("token", big).check_token("tok") is not None
    with open(big, "ab") as out:
        out.write(b"\n")
    assert refused("token", big) == f"FILE={big}: larger than 16 MiB: not a credentials file"


# ---- inline --------------------------------------------------------------------------------


def test_inline_tokens_are_bare_full_access_tokens() -> None:
    store = parse_inline("token", " a1 , ,b2,", "INLINE")
    assert len(store) == 2 and store.check_token("a1") == Principal("token-1", how="a bare token: full access")
    with pytest.raises(CredentialsError) as error:
        parse_inline("token", "a1,a1", "INLINE")
    assert str(error.value) == "INLINE: entry 2: the same token appears twice"
    with pytest.raises(CredentialsError) as error:
        parse_inline("token", "a:1", "INLINE")
    assert str(error.value).startswith("INLINE: entry 1 is not a bare token")


def test_inline_users_and_their_refusals() -> None:
    fresh = secrets.token_hex(8)  # never hashed before in this process: the hash cache must not answer
    store = parse_inline("basic", f"alice:pa:{fresh}, bob:{fresh}" + "y" * 56, "INLINE")
    assert store.check_password("alice", f"pa:{fresh}") == Principal("alice", how="inline user: full access")
    assert store.check_password("bob", fresh + "y" * 56) is not None  # exactly bcrypt's 72 bytes
    assert store.check_password("alice", "pa") is None
    for value in ("alice", ":pw", "alice:"):
        with pytest.raises(CredentialsError) as error:
            parse_inline("basic", value, "INLINE")
        assert str(error.value) == "INLINE: expected user:password", value
    with pytest.raises(CredentialsError) as error:
        parse_inline("basic", "carol:" + "z" * 73, "INLINE")
    assert str(error.value) == "INLINE: the password of carol is longer than bcrypt's 72 bytes"


def test_an_inline_password_hashes_the_same_at_every_reload() -> None:
    secret = secrets.token_hex(8)
    first = parse_inline("basic", f"dave:{secret}", "INLINE")
    assert first.check_password("dave", secret) is not None
    again = parse_inline("basic", f"dave:{secret}", "INLINE")
    assert not first.widened_by(again) and not again.widened_by(first)
    changed = parse_inline("basic", "dave:other", "INLINE")
    assert first.widened_by(changed) == "it adds or changes the password of 'dave'"


def test_file_and_inline_together_and_each_credential_once(tmp_path: Path) -> None:
    tokens = tmp_path / "t.json"
    tokens.write_text('[{"token": "f1", "role": "read", "name": "reader"}]')
    both = load("token", tokens, "i1")
    assert len(both) == 2 and both.check_token("f1").role == "read" and both.check_token("i1").role == "admin"
    assert refused("token", tokens, "f1") == "INLINE: the token of 'token-1' is in the file too; give each token once"
    users = tmp_path / "users"
    users.write_text(f"alice:{HASH}\n")
    assert len(load("basic", users, "bob:pw")) == 2
    assert refused("basic", users, "alice:pw") == "INLINE: the user 'alice' is in the file too; give each once"
    assert len(load("basic", None, "bob:pw")) == 1
    assert refused("basic", None, "bob") == "INLINE: expected user:password"
    unnamed = tmp_path / "creds"  # no extension: JSON by its content
    unnamed.write_text('[{"token": "u1", "role": "read"}]')
    assert load("token", unnamed).check_token("u1").role == "read"


# ---- htpasswd ------------------------------------------------------------------------------


def test_htpasswd_reads_apache_2y_hashes_and_refuses_a_colon_in_a_user() -> None:
    apache = "$2y$" + HASH[4:]
    store = parse_htpasswd(f"alice:{apache}\n", "h")
    assert store.check_password("alice", "pw") is not None
    with pytest.raises(CredentialsError) as error:
        parse_htpasswd(f"a:b:{HASH}\n", "h")
    assert str(error.value) == "h: line 1: only bcrypt hashes are supported (create them with htpasswd -B)"


def test_htpasswd_trims_only_spaces_and_tabs() -> None:
    assert parse_htpasswd(f" \talice:{HASH}\t \n", "h").check_password("alice", "pw") is not None
    with pytest.raises(CredentialsError):
        parse_htpasswd(f"alice:{HASH}\u00a0\n", "h")  # a no-break space is part of the hash: not bcrypt


# ---- bare tokens: what is trimmed ----------------------------------------------------------


def test_a_token_line_keeps_everything_but_spaces_and_tabs_around_it() -> None:
    store = parse_tokens("  XtokX\t\n", "t", "lines")
    assert store.check_token("XtokX") is not None and store.check_token("tok") is None
    for text, fmt in (("tok\u00a0\n", "lines"), ('["tok\u00a0"]', "json")):
        with pytest.raises(CredentialsError, match="is not a bare token"):
            parse_tokens(text, "t", fmt)
    assert parse_tokens('["XtokX"]', "t", "json").check_token("XtokX") is not None


def test_a_bare_token_in_a_list_is_full_access() -> None:
    assert parse_tokens('["tok"]', "t", "json").check_token("tok") == Principal(
        "token-1", "admin", None, None, "a bare token: full access")


def test_a_sha256_that_is_not_text_is_refused_with_the_same_words() -> None:
    with pytest.raises(CredentialsError) as error:
        parse_tokens('[{"sha256": ["a"], "role": "read"}]', "t", "json")
    assert str(error.value) == "t: entry 1: sha256 must be 64 hex digits (sha256sum of the token)"


# ---- the format, by name or by content -----------------------------------------------------


@pytest.mark.parametrize("name, text, fmt", [
    ("t.JSON", "tok", "json"), ("t.Yml", "tok", "yaml"), ("t.TXT", "- a", "lines"), ("t.tokens", "[", "lines"),
    ("creds", "\ufeff  [\"a\"]", "json"), ("creds", "# c\n\n  {\"tokens\": []}", "json"),
    ("creds", "  # [not json]\ntok", "lines"), ("creds", "\t \n#x\ntokens:\n  - a", "yaml"),
    ("creds", "tok\nother", "lines"), ("creds", "", "lines"), ("creds", "# - a\ntok", "lines"),
    ("creds", "  # c\n[\"a\"]", "json"), ("creds", "\t# c\n{}", "json"),  # comments skipped, however indented
    ("creds", "\u00a0\n[\"a\"]", "lines"), ("creds", "\u00a0# c\n[\"a\"]", "lines"),  # other blanks are text
])
def test_file_format_by_extension_else_by_the_first_meaningful_line(name: str, text: str, fmt: str) -> None:
    assert file_format(name, text) == fmt


def test_parse_tokens_without_a_format_reads_it_from_the_content() -> None:
    assert parse_tokens('["a.b"]', "t").check_token("a.b") is not None  # JSON by content
    assert parse_tokens("tokens:\n  - a.b\n", "t").check_token("a.b") is not None  # YAML by content


def test_yaml_is_read_safely() -> None:
    with pytest.raises(CredentialsError, match="not valid YAML"):
        parse_tokens("tokens: !!python/object/apply:os.system ['true']\n", "t.yaml", "yaml")


def test_a_yaml_error_without_a_position_is_one_line_too() -> None:
    with pytest.raises(CredentialsError) as error:
        parse_tokens("tokens:\n  - a\x07b\n", "t.yaml", "yaml")
    assert str(error.value) == ("t.yaml: not valid YAML: unacceptable character #x0007: special characters are not "
                                "allowed")


def test_a_bom_opens_a_file_it_does_not_end_one() -> None:
    assert parse_tokens("\ufefftok\n", "t", "lines").check_token("tok") is not None
    assert parse_htpasswd(f"\ufeffalice:{HASH}\n", "h").check_password("alice", "pw") is not None
    assert file_format("creds", "\ufeff[\"a\"]") == "json"


# ---- a file still being written ------------------------------------------------------------


@pytest.mark.parametrize("name, data, why", [
    ("t.txt", b"tok\n", ""), ("t.txt", b"\n", ""), ("t.txt", b"", ""), ("t.txt", b"tok", "cut"),
    ("t.yaml", b"tokens:\n  - tok", "cut"), ("t.json", b'["tok"', ""), ("creds", b'  ["tok"', ""),
    ("t.txt", b"to\x00k", ""), ("t.txt", b"tok\n" * 2000 + b"t\xc3", "cut"),
    ("t.txt", b"a" + "\u00e9".encode() * 2048 + b"\xff", "cut"),  # a head cut inside a character, and not UTF-8
])
def test_half_written_is_a_line_file_without_its_last_newline(tmp_path: Path, name: str, data: bytes,
                                                              why: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    expected = "its last line has no newline at the end, so it may still be being written" if why else ""
    assert half_written(path) == expected


def test_half_written_leaves_a_missing_file_to_the_load(tmp_path: Path) -> None:
    assert half_written(tmp_path / "gone") == ""


def test_a_json_file_named_like_text_is_told_by_its_head(tmp_path: Path) -> None:
    path = tmp_path / "creds"
    path.write_bytes(b'[\n  "tok"\n' + b" " * 5000 + b"]")  # no newline at the end; JSON by its head
    assert half_written(path) == ""


# ---- the store -----------------------------------------------------------------------------


def test_who_covers_whom() -> None:
    admin, writer, reader = Principal("a", "admin"), Principal("w", "write"), Principal("r", "read")
    assert admin.covers(writer) and writer.covers(reader) and not reader.covers(writer) and not writer.covers(admin)
    acme = Principal("x", "write", "acme")
    assert admin.covers(acme) and not acme.covers(admin)
    assert not acme.covers(Principal("x", "write", "other")) and not acme.covers(Principal("x", "write"))
    main = Principal("x", "write", "acme", ("main",))
    both = Principal("x", "write", "acme", ("main", "logs"))
    assert acme.covers(main) and both.covers(main) and both.covers(both)
    assert not main.covers(both) and not main.covers(acme)
    assert not main.covers(Principal("x", "write", "acme", ("logs",)))


def test_with_rbac_actions_a_record_role_raised_is_a_widening() -> None:
    actions = frozenset({"collection:get", "collection:add"})
    reader, admin = Principal("x", "read", actions=actions), Principal("x", "admin", actions=actions)
    assert admin.covers(reader) and not reader.covers(admin)  # the same actions, a higher ceiling
    assert not reader.covers(Principal("x", "read", actions=actions | {"system:reset"}))


def test_identity_is_chroma_s_shape() -> None:
    assert Principal("ops").identity() == {"user_id": "ops", "tenant": "default_tenant",
                                           "databases": ["default_database"]}
    assert Principal("a", "read", "acme", ("main", "logs")).identity() == {
        "user_id": "a", "tenant": "acme", "databases": ["main", "logs"]}


def test_a_store_counts_tokens_and_users() -> None:
    tokens = parse_tokens('["t1", "t2"]', "t", "json")
    users = parse_htpasswd(f"alice:{HASH}\n", "h")
    assert len(tokens) == 2 and len(users) == 1
    mixed = CredentialStore(tokens={digest("t1"): Principal("t1"), digest("t2"): Principal("t2")},
                            users={"u": (HASH.encode(), Principal("u"))})
    assert len(mixed) == 3
    assert tokens.widened_by(users) == "it adds or changes the password of 'alice'"
    assert users.widened_by(tokens) == "it adds the token 'token-1'"
    assert parse_htpasswd(f"bob:{HASH}\n", "h").widened_by(users) == "it adds or changes the password of 'alice'"


def test_a_password_at_bcrypt_s_limit_matches_and_one_byte_more_never_does() -> None:
    password = "p" * 72
    store = parse_htpasswd(f"alice:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n", "h")
    assert store.check_password("alice", password) is not None
    assert store.check_password("alice", password + "x") is None  # bcrypt would read only the first 72


def test_a_store_without_users_refuses_every_password_at_bcrypt_s_default_cost() -> None:
    empty = CredentialStore()
    assert empty.check_password("anyone", "pw") is None
    assert empty._dummy().split(b"$")[2] == b"10"


def test_an_unknown_user_costs_as_many_bcrypt_rounds_as_a_known_one() -> None:
    store = parse_htpasswd(f"alice:{HASH}\n", "h")  # 4 rounds
    assert store.check_password("nobody", "pw") is None
    assert store._dummy().split(b"$")[2] == b"04"
    assert bcrypt.checkpw(b"no such user", store._dummy())


def test_a_reload_keeps_verified_passwords_of_unchanged_users_only() -> None:
    before = parse_htpasswd(f"alice:{HASH}\nbob:{HASH}\n", "h")
    assert before.check_password("alice", "pw") and before.check_password("bob", "pw")
    other = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    after = parse_htpasswd(f"alice:{HASH}\nbob:{other}\n", "h")
    after.keep_verified(before)
    assert after.cached_password("alice", "pw") == Principal("alice", how="htpasswd user: full access")
    assert after.cached_password("bob", "pw") is None  # a changed hash goes through bcrypt again
    gone = parse_htpasswd(f"bob:{HASH}\n", "h")
    gone.keep_verified(before)
    assert gone.cached_password("alice", "pw") is None
