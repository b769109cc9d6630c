"""Who may call: tokens (plain or sha256) and htpasswd users, with roles and scopes.

Formats accepted for token auth (``CHROMA_SERVER_AUTH_CREDENTIALS_FILE``):
- a JSON or YAML list of tokens: each has full access (role ``admin``);
- a list of records (or ``{tokens: [...]}``) with ``token`` or ``sha256``, ``name``,
  ``role`` (admin, write, read), and optional ``tenant`` / ``databases`` scope;
- plain text, one token per line.
Basic auth reads an htpasswd file with bcrypt hashes (``htpasswd -B``), as Chroma 0.5 did.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# CPython's own SHA-256 rather than OpenSSL's: the same digest, but OpenSSL looks the algorithm
# up in its providers on every call, which costs about 23 µs once a search has pushed it out of
# the caches (CPython's: 5 µs), on every authenticated request (BENCHMARKS.md).
try:
    from _sha2 import sha256 as _sha256  # CPython 3.12 and later
except ImportError:  # pragma: no cover - the module's name depends on the Python version
    try:
        from _sha256 import sha256 as _sha256  # CPython 3.11
    except ImportError:
        from hashlib import sha256 as _sha256

ROLES = ("admin", "write", "read")
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

    def identity(self) -> dict[str, Any]:
        """The body of ``GET /api/v2/auth/identity``, in Chroma's shape."""
        return {"user_id": self.name, "tenant": self.tenant or "default_tenant",
                "databases": list(self.databases) if self.databases else ["default_database"]}


def _digest(secret: str) -> bytes:
    return _sha256(secret.encode()).digest()


class CredentialStore:
    """Looks credentials up in time that does not depend on how close a guess was."""

    def __init__(self, tokens: dict[bytes, Principal] | None = None,
                 users: dict[str, tuple[bytes, Principal]] | None = None) -> None:
        self._tokens = tokens or {}
        self._users = users or {}
        self._verified: dict[bytes, Principal] = {}  # bcrypt is slow by design: remember good passwords
        self._dummy_hash: bytes | None = None

    def __len__(self) -> int:
        return len(self._tokens) + len(self._users)

    def check_token(self, token: str) -> Principal | None:
        # Hashing first makes the lookup's timing depend on the sha256 of the guess only,
        # never on how many leading characters of it were right.
        return self._tokens.get(_digest(token))

    def cached_password(self, user: str, password: str) -> Principal | None:
        """A password already verified: no bcrypt, safe to call on the event loop."""
        return self._verified.get(_digest(f"{user}\0{password}"))

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
        self._verified[_digest(f"{user}\0{password}")] = entry[1]
        return entry[1]

    def _dummy(self) -> bytes:
        if self._dummy_hash is None:
            import bcrypt

            some = next(iter(self._users.values()), None)
            rounds = int(some[0].split(b"$")[2]) if some else 10
            self._dummy_hash = bcrypt.hashpw(b"no such user", bcrypt.gensalt(rounds=rounds))
        return self._dummy_hash


def _read_structured(text: str, where: str) -> Any:
    """JSON, YAML, or plain text with one token per line (returned as the text itself)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        json_error = exc
    from ruamel.yaml import YAML, YAMLError

    try:
        data = YAML(typ="safe").load(text)
    except YAMLError:
        data = None
        if text.lstrip().startswith(("[", "{", "-")):
            raise CredentialsError(f"{where}: not valid JSON or YAML ({json_error.msg} at line "
                                   f"{json_error.lineno})") from None
    if isinstance(data, (list, dict)):
        return data
    if text.lstrip().startswith(("[", "{")):
        raise CredentialsError(f"{where}: not valid JSON ({json_error.msg} at line {json_error.lineno})")
    return text


def _token_records(data: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        data = data.get("tokens")
        if not isinstance(data, list):
            raise CredentialsError(f"{where}: expected a list of tokens or of token records under 'tokens'")
    if isinstance(data, str):
        data = [line.strip() for line in data.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not isinstance(data, list):
        raise CredentialsError(f"{where}: expected a list of tokens or of token records")
    records = []
    for index, item in enumerate(data, 1):
        if isinstance(item, (str, int)) and not isinstance(item, bool):
            records.append({"token": str(item)})
        elif isinstance(item, dict):
            records.append(item)
        else:
            raise CredentialsError(f"{where}: entry {index} must be a token string or a record")
    if not records:
        raise CredentialsError(f"{where}: no tokens: add at least one")
    return records


def _principal(record: dict[str, Any], index: int, where: str) -> tuple[bytes, Principal]:
    unknown = set(record) - {"token", "sha256", "name", "role", "tenant", "databases"}
    if unknown:
        raise CredentialsError(f"{where}: entry {index}: unknown field {sorted(unknown)[0]!r} "
                               "(use token, sha256, name, role, tenant, databases)")
    token, sha = record.get("token"), record.get("sha256")
    if (token is None) == (sha is None):
        raise CredentialsError(f"{where}: entry {index}: give exactly one of token or sha256")
    if token is not None:
        token = str(token)
        if not token.strip() or token != token.strip():
            raise CredentialsError(f"{where}: entry {index}: a token must be non-empty without surrounding spaces")
        digest = _digest(token)
    else:
        hex_digest = str(sha).removeprefix("sha256:")
        if not _HEX64.match(hex_digest):
            raise CredentialsError(f"{where}: entry {index}: sha256 must be 64 hex digits (sha256sum of the token)")
        digest = bytes.fromhex(hex_digest)
    role = str(record.get("role", "admin")).lower()
    if role not in ROLES:
        raise CredentialsError(f"{where}: entry {index}: role {role!r} must be admin, write or read")
    tenant = record.get("tenant")
    databases = record.get("databases")
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
    name = str(record.get("name") or f"token-{index}")
    return digest, Principal(name, role, str(tenant) if tenant else None,
                             tuple(databases) if databases else None)


def parse_tokens(text: str, where: str) -> CredentialStore:
    records = _token_records(_read_structured(text, where), where)
    tokens: dict[bytes, Principal] = {}
    names: set[str] = set()
    for index, record in enumerate(records, 1):
        digest, principal = _principal(record, index, where)
        if digest in tokens:
            raise CredentialsError(f"{where}: entry {index}: the same token appears twice")
        if principal.name in names:
            raise CredentialsError(f"{where}: entry {index}: the name {principal.name!r} appears twice")
        names.add(principal.name)
        tokens[digest] = principal
    return CredentialStore(tokens=tokens)


def parse_htpasswd(text: str, where: str) -> CredentialStore:
    users: dict[str, tuple[bytes, Principal]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise CredentialsError(f"{where}: line {number}: expected user:hash")
        if not _BCRYPT.match(hashed):
            raise CredentialsError(f"{where}: line {number}: only bcrypt hashes are supported "
                                   "(create them with htpasswd -B)")
        users[user] = (hashed.replace("$2y$", "$2b$", 1).encode(), Principal(user))
    if not users:
        raise CredentialsError(f"{where}: no users: add at least one user:hash line")
    return CredentialStore(users=users)


def parse_inline(provider: str, value: str, where: str) -> CredentialStore:
    """``CHROMA_SERVER_AUTH_CREDENTIALS``: tokens (comma-separated) or ``user:password`` pairs."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if provider == "token":
        return parse_tokens(json.dumps(items), where)
    import bcrypt

    users: dict[str, tuple[bytes, Principal]] = {}
    for item in items:
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise CredentialsError(f"{where}: expected user:password")
        if len(password.encode()) > 72:
            raise CredentialsError(f"{where}: the password of {user} is longer than bcrypt's 72 bytes")
        users[user] = (bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)), Principal(user))
    return CredentialStore(users=users)


def load_store(provider: str, path: Path | None, inline: str, *, file_setting: str, inline_setting: str) -> CredentialStore:
    """The credentials for ``provider`` from the file and/or the inline value (both may be given)."""
    stores = []
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialsError(f"{file_setting}={path}: cannot read ({exc})") from None
        where = f"{file_setting}={path}"
        stores.append(parse_tokens(text, where) if provider == "token" else parse_htpasswd(text, where))
    if inline:
        stores.append(parse_inline(provider, inline, inline_setting))
    merged = CredentialStore()
    for store in stores:
        merged._tokens.update(store._tokens)
        merged._users.update(store._users)
    return merged
