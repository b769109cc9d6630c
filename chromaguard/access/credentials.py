"""Who may call: tokens (plain or sha256) and htpasswd users, with roles and scopes.

Formats accepted for token auth (``CHROMA_SERVER_AUTH_CREDENTIALS_FILE``), chosen by the
file's extension (``.json``, ``.yaml``/``.yml``, ``.txt``), else by its content (``[``/``{``
first: JSON; any YAML structure: YAML; else text), never by which parser succeeds:
- a JSON or YAML list of bare tokens: each has full access (role ``admin``);
- a list of records (or ``{tokens: [...]}``) with ``token`` or ``sha256``, ``name``,
  ``role`` (admin, write, read, metrics: required), and optional ``tenant`` / ``databases`` scope, and
  ``certificate`` (a verified client certificate's CN or SAN: with it, token/sha256 may go);
- Chroma 0.5/0.6's ``users:`` file (``chroma06.py``);
- plain text, one bare token per line.
Basic auth reads an htpasswd file with bcrypt hashes (``htpasswd -B``), as Chroma 0.5 did.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import strictjson
from . import chroma06

_CERTIFICATE_NAME = re.compile(r"(CN|DNS|email|URI|IP):\S")
_FAST_SHA256_PYTHONS = ((3, 11), (3, 14))  # CPython releases the private modules were checked on: 3.11-3.13


def _choose_sha256(version: tuple[int, int] = sys.version_info[:2],
                   implementation: str = sys.implementation.name) -> Callable[[bytes], Any]:
    """CPython's own SHA-256 where checked, else ``hashlib``'s (OpenSSL's): the same digest.

    Why: OpenSSL looks the algorithm up in its providers on every call, about 23 µs once a search
    has pushed it out of the caches (CPython's: 5 µs), on every authenticated request (docs/performance.md).
    The module is private (``_sha256`` in 3.11, ``_sha2`` from 3.12) and may change or vanish in any
    release: so only on the interpreters it was checked on, and tests/test_credentials_sha256.py
    fails if it silently stops being used there.
    """
    low, high = _FAST_SHA256_PYTHONS
    if implementation == "cpython" and low <= version < high:
        try:
            module = importlib.import_module("_sha2" if version >= (3, 12) else "_sha256")
            fast: Callable[[bytes], Any] = module.sha256
            return fast
        except (ImportError, AttributeError):
            pass
    return hashlib.sha256


_sha256 = _choose_sha256()

ROLES = ("admin", "write", "read", "metrics")  # most to least; metrics: /metrics and health only
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_BCRYPT = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")


class CredentialsError(ValueError):
    """The credentials are unusable; the text says where and why, in one line."""


@dataclass(frozen=True)
class Principal:
    name: str
    role: str = "admin"
    tenant: str | None = None
    databases: tuple[str, ...] | None = None
    how: str = ""  # how the role was decided, for ``chromaguard config``
    actions: frozenset[str] | None = None  # a Chroma 0.6 RBAC role's actions: these decide, within ``role``
    named: bool = field(default=True, compare=False)  # False: ``token-N``, a name given by position

    def covers(self, other: Principal) -> bool:
        """Whether this principal may do everything ``other`` may."""
        if self.actions is not None or other.actions is not None:
            if self.actions is None:  # role-based against actions: only unscoped full access covers for sure
                return self.role == "admin" and self.tenant is None
            return (other.actions is not None and other.actions <= self.actions
                    and ROLES.index(other.role) >= ROLES.index(self.role))
        if ROLES.index(other.role) < ROLES.index(self.role):
            return False  # ROLES runs from most to least
        if self.tenant is not None and other.tenant != self.tenant:
            return False
        return self.databases is None or (other.databases is not None and set(other.databases) <= set(self.databases))

    def shown_role(self) -> str:
        """The role as ``chromaguard config`` shows it: with an RBAC file, its actions decide
        within the record's role (admin, the role of bare tokens and 0.6 users, is no ceiling)."""
        if self.actions is None:
            return self.role
        return "(RBAC)" if self.role == "admin" else f"{self.role} (RBAC)"

    def identity(self) -> dict[str, Any]:
        """The body of ``GET /api/v2/auth/identity``, in Chroma's shape."""
        return {"user_id": self.name, "tenant": self.tenant or "default_tenant",
                "databases": list(self.databases) if self.databases else ["default_database"]}


def digest(secret: str | bytes) -> bytes:
    """SHA-256 of a secret (text as UTF-8): what tokens are stored and compared as."""
    return _sha256(secret if isinstance(secret, bytes) else secret.encode()).digest()



class CredentialStore:
    """Looks credentials up in time that does not depend on how close a guess was."""

    def __init__(self, tokens: dict[bytes, Principal] | None = None,
                 users: dict[str, tuple[bytes, Principal]] | None = None,
                 certificates: dict[str, Principal] | None = None) -> None:
        self._tokens = tokens or {}
        self._users = users or {}
        self._certificates = certificates or {}  # a verified client certificate's CN or SAN -> principal
        self._verified: dict[bytes, Principal] = {}  # bcrypt is slow by design: remember good passwords
        self._dummy_hash: bytes | None = None

    def __len__(self) -> int:
        return len(self._tokens) + len(self._users) + len(self._certificates)

    def widened_by(self, other: CredentialStore) -> str:
        """What ``other`` lets in that these credentials do not ("" when nothing): a new token
        or user, a higher role, a wider scope. Revoking and narrowing say nothing."""
        keyed: list[tuple[dict[Any, Principal], dict[Any, Principal], Callable[[Any, Principal], str]]] = [
            (self._tokens, other._tokens, lambda key, p: f"it adds the token {p.name!r}"),
            (self._certificates, other._certificates, lambda name, p: f"it lets the client certificate {name!r} in"),
        ]
        for mine, theirs, adds in keyed:
            for key, principal in theirs.items():
                before = mine.get(key)
                if before is None:
                    return adds(key, principal)
                if not before.covers(principal):
                    return f"it gives {principal.name!r} more access than before"
        for user, (hashed, principal) in other._users.items():
            before_user = self._users.get(user)
            if before_user is None or before_user[0] != hashed:
                return f"it adds or changes the password of {user!r}"
            if not before_user[1].covers(principal):
                return f"it gives {user!r} more access than before"
        return ""

    def with_principals(self, change: Callable[[Principal], Principal]) -> CredentialStore:
        """The same credentials, each principal replaced by ``change(principal)``."""
        changed: dict[int, Principal] = {}  # one principal, one change: a token and a certificate stay one

        def once(principal: Principal) -> Principal:
            return changed.setdefault(id(principal), change(principal))

        return CredentialStore({key: once(p) for key, p in self._tokens.items()},
                               {user: (hashed, once(p)) for user, (hashed, p) in self._users.items()},
                               {name: once(p) for name, p in self._certificates.items()})

    def keep_verified(self, before: CredentialStore) -> None:
        """Remember the passwords ``before`` had verified, for users whose hash is unchanged:
        a reload must not send every logged-in user back through bcrypt at once."""
        for key, principal in list(before._verified.items()):  # bcrypt threads may add meanwhile
            kept = self._users.get(principal.name)
            if kept is not None and kept[0] == before._users[principal.name][0]:
                self._verified[key] = kept[1]

    def principals(self) -> list[Principal]:
        """Everyone these credentials let in, in the order they were given (each once)."""
        seen: dict[int, Principal] = {}
        for principal in (*self._tokens.values(), *(p for _, p in self._users.values()),
                          *self._certificates.values()):
            seen.setdefault(id(principal), principal)
        return list(seen.values())

    def check_certificate(self, names: Iterable[str]) -> list[Principal]:
        """The principals a verified client certificate's names (``CN:…``, ``DNS:…``) stand for:
        one, none, or (a certificate two records name) more, which the caller refuses."""
        found: dict[int, Principal] = {}
        for name in names:
            principal = self._certificates.get(name)
            if principal is not None:
                found.setdefault(id(principal), principal)
        return list(found.values())

    def check_token(self, token: str | bytes) -> Principal | None:
        """``token`` as text, or as the bytes a header carried (UTF-8 for non-ASCII tokens)."""
        # Hashing first makes the lookup's timing depend on the sha256 of the guess only,
        # never on how many leading characters of it were right.
        return self._tokens.get(digest(token))

    def cached_password(self, user: str, password: str) -> Principal | None:
        """A password already verified: no bcrypt, safe to call on the event loop."""
        return self._verified.get(digest(f"{user}\0{password}"))

    def check_password(self, user: str, password: str) -> Principal | None:
        """bcrypt is slow on purpose: call this off the event loop."""
        import bcrypt

        secret = password.encode()
        if len(secret) > 72:  # bcrypt's limit: such a password cannot match any hash
            return None
        entry = self._users.get(user)
        hashed = entry[0] if entry else self._dummy()
        matched = bcrypt.checkpw(secret, hashed)  # unknown users cost the same time: names stay secret
        if entry is None or not matched:
            return None
        self._verified[digest(f"{user}\0{password}")] = entry[1]
        return entry[1]

    def _dummy(self) -> bytes:
        if self._dummy_hash is None:
            import bcrypt

            some = next(iter(self._users.values()), None)
            rounds = int(some[0].split(b"$")[2]) if some else 10
            self._dummy_hash = bcrypt.hashpw(b"no such user", bcrypt.gensalt(rounds=rounds))
        return self._dummy_hash


_BOM = "\ufeff"
_BLANKS = " \t"  # all that is trimmed around a token or a line: other blanks are part of it
MAX_FILE_BYTES = 16 * 1024 * 1024  # a credentials file larger than this is a mistake, not a file
_STRUCTURED_SUFFIXES = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".txt": "lines", ".tokens": "lines"}
# A line that YAML reads as structure: a list item, a document marker, or a "key:" mapping entry.
_YAML_LINE = re.compile(r"^(\s*-(\s|$)|---|\.\.\.|\s*[^\s#:][^#:]*:(\s|$))")
# What a bare token may not look like: structure (a list item, a quote, brackets, a "key:").
_NOT_A_TOKEN = re.compile(r"""^[-\[\]{}"'!&*|>%@`]|[:\s]""")


def file_format(name: str, text: str) -> str:
    """``json``, ``yaml`` or ``lines``: by the file's extension, else by what it starts with.

    Never by which parser happens to succeed: a YAML file with a typo must be an error in
    YAML, not a list of plain-text tokens made of its lines."""
    suffix = Path(name).suffix.lower()
    if suffix in _STRUCTURED_SUFFIXES:
        return _STRUCTURED_SUFFIXES[suffix]
    return content_format(text)


def content_format(text: str) -> str:
    """``file_format`` for a file whose name says nothing: by its first meaningful line."""
    meaningful = [line for line in _lines(text.removeprefix(_BOM))
                  if line.strip(_BLANKS) and not line.lstrip(_BLANKS).startswith("#")]
    if meaningful and meaningful[0].lstrip().startswith(("[", "{")):
        return "json"
    if any(_YAML_LINE.match(line) for line in meaningful):
        return "yaml"
    return "lines"


def _lines(text: str) -> list[str]:
    """Lines as a file has them: split at newlines only (``str.splitlines`` also splits at
    U+2028, form feeds and more, which would cut a token in two)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _read_structured(text: str, where: str, fmt: str) -> Any:
    """The file's data in the format it claims; a list of token lines for ``lines``."""
    if "\x00" in text:
        raise CredentialsError(f"{where}: contains NUL bytes: not a text file")
    text = text.removeprefix(_BOM)
    if fmt == "json":
        try:
            return strictjson.loads(text)
        except json.JSONDecodeError as exc:
            raise CredentialsError(f"{where}: not valid JSON at line {exc.lineno}, column {exc.colno}: "
                                   f"{exc.msg}") from None
        except strictjson.DuplicateKey as exc:
            raise CredentialsError(f"{where}: not valid JSON: {exc}") from None
    if fmt == "yaml":
        from ruamel.yaml import YAML, YAMLError

        try:
            return YAML(typ="safe", pure=True).load(text)
        except YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise CredentialsError(f"{where}: not valid YAML{at}: {problem}") from None
    tokens = []
    for number, line in enumerate(_lines(text), 1):
        token = line.strip(_BLANKS)
        if not token or token.startswith("#"):
            continue
        if _NOT_A_TOKEN.search(token):
            raise CredentialsError(f"{where}: line {number} is not a bare token (it has spaces, a colon or "
                                   "YAML/JSON syntax): name the file .yaml or .json, or put one token on each line")
        tokens.append(token)
    return tokens


def _token_records(data: Any, where: str) -> list[tuple[dict[str, Any], bool]]:
    """Each entry as a record, and whether it was a bare token (a list item or a line)."""
    if isinstance(data, dict):
        data = data.get("tokens")
        if not isinstance(data, list):
            raise CredentialsError(f"{where}: expected a list of tokens or of token records under 'tokens'")
    if not isinstance(data, list):
        raise CredentialsError(f"{where}: expected a list of tokens or of token records")
    records = []
    for index, item in enumerate(data, 1):
        if isinstance(item, str):
            if _NOT_A_TOKEN.search(item.strip(_BLANKS)):
                raise CredentialsError(f"{where}: entry {index} is not a bare token (it has spaces, a colon or "
                                       "YAML/JSON syntax): write it as a record with token and role")
            records.append(({"token": item, "role": "admin"}, True))
        elif isinstance(item, dict):
            records.append((item, False))
        else:  # a number or a bool would become a token nobody wrote (0x1F is 31, on is True)
            raise CredentialsError(f"{where}: entry {index} must be a token string (quote it) or a record")
    if not records:
        raise CredentialsError(f"{where}: no tokens: add at least one")
    return records


def _principal(record: dict[str, Any], bare: bool, index: int, where: str) -> tuple[bytes | None, Principal]:
    unknown = set(record) - {"token", "sha256", "name", "role", "tenant", "databases", "certificate"}
    if unknown:
        raise CredentialsError(f"{where}: entry {index}: unknown field {sorted(unknown)[0]!r} "
                               "(use token, sha256, certificate, name, role, tenant, databases)")
    token, sha, certificate = record.get("token"), record.get("sha256"), record.get("certificate")
    if token is not None and sha is not None or token is None and sha is None and certificate is None:
        raise CredentialsError(f"{where}: entry {index}: give exactly one of token or sha256 (or a client "
                               "certificate's name as certificate)")
    if certificate is not None and (not isinstance(certificate, str) or certificate != certificate.strip()
                                    or not _CERTIFICATE_NAME.match(certificate)):
        raise CredentialsError(f"{where}: entry {index}: certificate must name the client certificate's subject or "
                               "a SAN with its kind: CN:<name>, DNS:<name>, email:<address>, URI:<uri> or IP:<address>")
    token_key: bytes | None = None
    if token is not None:
        if not isinstance(token, str):
            raise CredentialsError(f"{where}: entry {index}: the token must be a string (quote it)")
        problem = token_problem(token)
        if problem:
            raise CredentialsError(f"{where}: entry {index}: {problem}")
        token_key = digest(token)
    elif sha is not None:
        if not isinstance(sha, str) or not _HEX64.match(hex_digest := sha.removeprefix("sha256:")):
            raise CredentialsError(f"{where}: entry {index}: sha256 must be 64 hex digits (sha256sum of the token)")
        token_key = bytes.fromhex(hex_digest)
        if token_key in _PLACEHOLDER_DIGESTS:
            raise CredentialsError(f"{where}: entry {index}: the sha256 is that of an example's placeholder token, "
                                   f"{_PLACEHOLDER_HINT}, and give its sha256")
    tenant = record.get("tenant")
    databases = record.get("databases")
    for key in ("tenant", "databases"):
        if key in record and record[key] is None:  # an empty `tenant:` (a template left blank) is no scope
            raise CredentialsError(f"{where}: entry {index}: {key} is empty: give it a value, or leave the key "
                                   "out for all")
    if tenant is not None and (not isinstance(tenant, str) or not tenant.strip()):
        raise CredentialsError(f"{where}: entry {index}: tenant must be a name (leave it out for all tenants)")
    if databases is not None:
        if isinstance(databases, str):
            databases = [databases]
        if not isinstance(databases, list) or not databases or not all(isinstance(d, str) and d.strip()
                                                                         for d in databases):
            raise CredentialsError(f"{where}: entry {index}: databases must be a non-empty list of names "
                                   "(leave it out for all databases)")
        tenant = tenant or "default_tenant"
    if "role" not in record:
        # Never a default: a forgotten role must not become full access, nor silently lock out.
        raise CredentialsError(f"{where}: entry {index}: no role: add role: {', '.join(ROLES)}")
    role = str(record["role"]).lower()
    if role not in ROLES:
        raise CredentialsError(f"{where}: entry {index}: role {role!r} must be {', '.join(ROLES[:-1])} or "
                               f"{ROLES[-1]}")
    if role == "metrics" and (tenant or databases):  # /metrics counts every tenant: such a token could do nothing
        raise CredentialsError(f"{where}: entry {index}: a metrics token cannot be scoped to a tenant or databases "
                               "(/metrics counts every tenant, so it could never scrape); remove the scope")
    name = str(record.get("name") or f"token-{index}")
    return token_key, Principal(name, role, str(tenant) if tenant else None,
                             tuple(databases) if databases else None,
                             "a bare token: full access" if bare else "role from its record",
                             named=bool(record.get("name")))


# The tokens of our example files and docs: known to everyone who read them, so never a credential.
# A token that starts like one is refused, and so is a sha256 record of one of them exactly
# (tests/unit/test_credentials_messages.py keeps this list equal to what the examples hold).
PLACEHOLDER_PREFIXES = ("replace-with-", "change-me-")
PLACEHOLDER_TOKENS = ("replace-with-a-long-random-admin-token", "replace-with-a-long-random-app-token",
                      "replace-with-a-long-random-metrics-token", "change-me", "change-me-admin",
                      "change-me-ingest", "change-me-dashboard", "change-me-team-a")
_PLACEHOLDER_DIGESTS = frozenset(digest(t) for t in PLACEHOLDER_TOKENS)
_PLACEHOLDER_HINT = ("which anyone who read the example knows; put a long random token in its place "
                     "(python -c \"import secrets; print(secrets.token_urlsafe(32))\")")


def token_problem(token: str) -> str:
    """Why ``token`` cannot be a credential ("" when it can)."""
    if not token.strip() or token != token.strip():
        return "a token must be non-empty without surrounding spaces"
    lowered = token.lower()
    for prefix in PLACEHOLDER_PREFIXES:
        if lowered.startswith(prefix) or lowered == prefix.rstrip("-"):
            return f"the token {prefix.rstrip('-')}... is an example's placeholder, {_PLACEHOLDER_HINT}"
    return ""


def parse_tokens(text: str, where: str, fmt: str | None = None) -> CredentialStore:
    """Tokens from ``text`` in format ``fmt`` (default: as ``content_format`` reads it)."""
    return _token_store(_read_structured(text, where, fmt or content_format(text)), where)


def _token_store(data: Any, where: str) -> CredentialStore:
    if chroma06.is_users_file(data):
        return _users_store(data, where)
    records = _token_records(data, where)
    tokens: dict[bytes, Principal] = {}
    certificates: dict[str, Principal] = {}
    names: set[str] = set()
    for index, (record, bare) in enumerate(records, 1):
        key, principal = _principal(record, bare, index, where)
        if key is not None and key in tokens:
            raise CredentialsError(f"{where}: entry {index}: the same token appears twice")
        if principal.name in names:
            raise CredentialsError(f"{where}: entry {index}: the name {principal.name!r} appears twice")
        names.add(principal.name)
        if key is not None:
            tokens[key] = principal
        certificate = record.get("certificate")
        if certificate is not None:
            if certificate in certificates:
                raise CredentialsError(f"{where}: entry {index}: the certificate {certificate!r} appears twice")
            certificates[certificate] = principal
    return CredentialStore(tokens=tokens, certificates=certificates)


def _users_store(data: dict[str, Any], where: str) -> CredentialStore:
    """Chroma 0.5/0.6's token file (``users:`` with ``id`` and ``tokens``): full access, as 0.6 gave."""
    try:
        records = chroma06.users_records(data, where)
    except ValueError as exc:
        raise CredentialsError(str(exc)) from None
    scoped = any(isinstance(u, dict) and ("tenant" in u or "databases" in u or "role" in u) for u in data["users"])
    how = ("Chroma 0.6 users file: full access, as 0.6 gave without an authz provider"
           + ("; its role/tenant/databases fields authorised nothing in 0.6 and are not enforced here either "
              "(use CHROMA_SERVER_AUTHZ_CONFIG_FILE, or chromaguard's own records, to narrow)" if scoped else ""))
    tokens: dict[bytes, Principal] = {}
    principals: dict[str, Principal] = {}
    for token, user_id in records:
        problem = token_problem(token)
        if problem:
            raise CredentialsError(f"{where}: user {user_id!r}: {problem}")
        key = digest(token)
        if key in tokens and tokens[key].name != user_id:
            raise CredentialsError(f"{where}: a token of {user_id!r} is also {tokens[key].name!r}'s: give each "
                                   "token to one user")
        tokens[key] = principals.setdefault(user_id, Principal(user_id, "admin", how=how))
    return CredentialStore(tokens=tokens)


def parse_htpasswd(text: str, where: str) -> CredentialStore:
    users: dict[str, tuple[bytes, Principal]] = {}
    for number, line in enumerate(_lines(text.removeprefix(_BOM)), 1):
        line = line.strip(_BLANKS)
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise CredentialsError(f"{where}: line {number}: expected user:hash")
        if user in users:  # which one counts would be a guess (Apache takes the first, a dict the last)
            raise CredentialsError(f"{where}: line {number}: the user {user!r} appears twice")
        if not _BCRYPT.match(hashed):
            raise CredentialsError(f"{where}: line {number}: only bcrypt hashes are supported "
                                   "(create them with htpasswd -B)")
        users[user] = (hashed.encode(), Principal(user, how="htpasswd user: full access"))  # bcrypt reads $2y$ too
    if not users:
        raise CredentialsError(f"{where}: no users: add at least one user:hash line")
    return CredentialStore(users=users)


def parse_inline(provider: str, value: str, where: str) -> CredentialStore:
    """``CHROMA_SERVER_AUTH_CREDENTIALS``: tokens (comma-separated) or ``user:password`` pairs."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if provider == "token":
        return _token_store(items, where)
    users: dict[str, tuple[bytes, Principal]] = {}
    for item in items:
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise CredentialsError(f"{where}: expected user:password")
        if len(password.encode()) > 72:
            raise CredentialsError(f"{where}: the password of {user} is longer than bcrypt's 72 bytes")
        users[user] = (_inline_hash(password), Principal(user, how="inline user: full access"))
    return CredentialStore(users=users)


_INLINE_HASHES: dict[bytes, bytes] = {}


def _inline_hash(password: str) -> bytes:
    """The same bcrypt hash for the same inline password at every reload: a fresh salt each
    time would make every reload look like a changed password (and wait for the hold)."""
    import bcrypt

    key = digest(password)
    if key not in _INLINE_HASHES:
        _INLINE_HASHES[key] = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10))
    return _INLINE_HASHES[key]


_HEAD_BYTES = 4096  # enough of a file to tell its format


def half_written(path: Path) -> str:
    """Why ``path`` looks like a file still being written ("" when it does not).

    A line-based file (YAML, text, htpasswd) cut in the middle of its last line can still
    parse, and then holds a token cut short: a token nobody issued. A JSON file cut short
    never parses, so it needs no such rule."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 1))
            last = fh.read()
    except OSError:
        return ""  # the load reports it
    if not size or last == b"\n" or b"\x00" in head:
        return ""  # whole, or not text at all: the load says what is wrong
    text = head.decode(errors="replace")  # the head may be cut inside a character
    if file_format(path.name, text) == "json":
        return ""
    return "its last line has no newline at the end, so it may still be being written"


def load_store(provider: str, path: Path | None, inline: str, *, file_setting: str,
               inline_setting: str) -> CredentialStore:
    """The credentials for ``provider`` from the file and/or the inline value (both may be given)."""
    stores = []
    if path is not None:
        where = f"{file_setting}={path}"
        text = _read_file(path, where)
        stores.append(parse_tokens(text, where, file_format(path.name, text)) if provider == "token"
                      else parse_htpasswd(text, where))
    if inline:
        stores.append(parse_inline(provider, inline, inline_setting))
    merged = CredentialStore()
    for store in stores:
        for key, principal in store._tokens.items():
            if key in merged._tokens:  # which record would win is nobody's guess: refuse
                raise CredentialsError(f"{inline_setting}: the token of {principal.name!r} is in the file too; "
                                       "give each token once")
            merged._tokens[key] = principal
        for user in store._users:
            if user in merged._users:
                raise CredentialsError(f"{inline_setting}: the user {user!r} is in the file too; give each once")
        merged._users.update(store._users)
        for name, principal in store._certificates.items():
            if name in merged._certificates:
                raise CredentialsError(f"{inline_setting}: the certificate {name!r} is named twice; give it once")
            merged._certificates[name] = principal
    return merged


def read_structured_file(path: Path, where: str) -> Any:
    """A YAML or JSON file (by its name, else its content), read with the credentials' care."""
    text = _read_file(path, where)
    return _read_structured(text, where, file_format(path.name, text))


def _read_file(path: Path, where: str) -> str:
    """The file's text: a regular file, read once through one descriptor, at most the cap."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block the read
    except OSError as exc:
        raise CredentialsError(f"{where}: cannot read ({exc.strerror or exc})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CredentialsError(f"{where}: not a regular file")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise CredentialsError(f"{where}: larger than {MAX_FILE_BYTES // 2**20} MiB: not a credentials file")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise CredentialsError(f"{where}: not UTF-8 text (is it a binary file?)") from None
