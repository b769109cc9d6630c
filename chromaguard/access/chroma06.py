"""Chroma 0.5/0.6 access files, read as Chroma 0.6 read them.

The token file (``CHROMA_SERVER_AUTHN_CREDENTIALS_FILE``): YAML with a top-level ``users`` list;
each user has an ``id`` and ``tokens``. Chroma 0.6 read ``role``, ``tenant`` and ``databases``
there too, but authorised nothing with them: without an authz provider every known token had
full access, and tenant/databases only picked a default tenant/database for requests that named
none (``chroma_overwrite_singleton_tenant_database_access_from_auth``), which chromaguard does
not do. So: full access, and ``chromaguard config`` says so.

The RBAC file (``CHROMA_SERVER_AUTHZ_PROVIDER=chromadb.auth.simple_rbac_authz.SimpleRBACAuthorizationProvider``,
``CHROMA_SERVER_AUTHZ_CONFIG_FILE``): ``roles_mapping`` (role → ``actions``) and ``users``
(``id`` → ``role``). A user may do exactly the actions of its role; a user it does not list may
do nothing; tenant and database are not part of the decision (as in 0.6's provider). The
action each request needs is Chroma 0.6.3's (``chromadb/server/fastapi/__init__.py``); requests
0.6 did not have are mapped to the nearest 0.6 action (``OPERATION_ACTIONS``).
"""

from __future__ import annotations

from typing import Any

RBAC_PROVIDERS = frozenset({"chromadb.auth.simple_rbac_authz.SimpleRBACAuthorizationProvider", "simple_rbac"})

# Chroma 0.6.3's AuthzAction values (chromadb/auth/__init__.py), and `collection:peek`, which
# its example file lists (peek is a get to the server).
ACTIONS = frozenset({
    "system:reset", "tenant:create_tenant", "tenant:get_tenant", "db:create_database", "db:get_database",
    "db:delete_database", "db:list_databases", "db:list_collections", "db:count_collections",
    "db:create_collection", "db:get_or_create_collection", "collection:get_collection",
    "collection:delete_collection", "collection:update_collection", "collection:add", "collection:delete",
    "collection:get", "collection:query", "collection:count", "collection:update", "collection:upsert",
    "collection:peek",
})

# The 0.6 actions a request needs, by chromaguard's operation name (access/routes.py).
OPERATION_ACTIONS: dict[str, tuple[str, ...]] = {
    # as Chroma 0.6.3's server asked
    "reset": ("system:reset",),
    "create_tenant": ("tenant:create_tenant",),
    "get_tenant": ("tenant:get_tenant",),
    "create_database": ("db:create_database",),
    "get_database": ("db:get_database",),
    "delete_database": ("db:delete_database",),
    "list_databases": ("db:list_databases",),
    "list_collections": ("db:list_collections",),
    "count_collections": ("db:count_collections",),
    "create_collection": ("db:create_collection",),  # get_or_create too: 0.6.3's v2 route asks this
    "get_collection": ("collection:get_collection",),
    "modify_collection": ("collection:update_collection",),
    "delete_collection": ("collection:delete_collection",),
    "add": ("collection:add",),
    "update": ("collection:update",),
    "upsert": ("collection:upsert",),
    "delete": ("collection:delete",),
    "get": ("collection:get",),
    "query": ("collection:query",),
    "count": ("collection:count",),
    "identity": (),  # authenticated, no action (0.6's /auth/identity)
    # served by 0.6 without authn or authz; the official client calls pre-flight-checks before writes
    "heartbeat": (), "version": (), "pre-flight-checks": (), "healthcheck": (), "healthz": (), "readyz": (),
    # what 0.6 did not have: the nearest action it did
    "get_collection_by_id": ("collection:get_collection",),
    "get_collection_by_crn": ("collection:get_collection",),
    "update_tenant": ("system:reset",),  # changes a tenant that exists: more than creating one
    "search": ("collection:query",),
    "indexing_status": ("collection:get_collection",),
    "fork_count": ("collection:get_collection",),
    "fork": ("collection:get", "db:create_collection"),  # reads one collection, creates another
    # chromaguard's own: a backup copies every byte, status names every collection
    "snapshot": ("system:reset",),
    "status": ("system:reset",),
    "metrics": ("system:reset",),
}


class RbacError(ValueError):
    """The RBAC file is unusable; the text says where and why, in one line."""


def is_users_file(data: Any) -> bool:
    return isinstance(data, dict) and "users" in data and "tokens" not in data


def users_records(data: dict[str, Any], where: str) -> list[tuple[str, str]]:
    """(token, user id) for each token of a 0.6 token file, in order."""
    users = data.get("users")
    if not isinstance(users, list) or not users:
        raise ValueError(f"{where}: 'users' must be a non-empty list of users with id and tokens (Chroma 0.6's "
                         "format)")
    out: list[tuple[str, str]] = []
    for index, user in enumerate(users, 1):
        if not isinstance(user, dict):
            raise ValueError(f"{where}: users entry {index} must be a mapping with id and tokens")
        user_id, tokens = user.get("id"), user.get("tokens")
        if not isinstance(user_id, str) or not user_id.strip():
            raise ValueError(f"{where}: users entry {index}: id must be a name")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"{where}: user {user_id!r}: tokens must be a non-empty list of strings (quote them)")
        out += [(token, user_id) for token in tokens]
    return out


def parse_rbac(data: Any, where: str) -> tuple[dict[str, frozenset[str]], dict[str, str], list[str]]:
    """Each user id's actions and role, and warnings (action names 0.6 never had: they match nothing)."""
    if not isinstance(data, dict) or not isinstance(data.get("roles_mapping"), dict) \
            or not isinstance(data.get("users"), list):
        raise RbacError(f"{where}: expected roles_mapping (role: {{actions: [...]}}) and users ([{{id, role}}]), "
                        "Chroma 0.6's SimpleRBACAuthorizationProvider format")
    roles: dict[str, frozenset[str]] = {}
    warnings: list[str] = []
    for role, spec in data["roles_mapping"].items():
        if not isinstance(role, str) or not role:  # `1:` and `'1':`, `null:`: which role is meant is a guess
            raise RbacError(f"{where}: role names in roles_mapping must be strings (quote {role!r})")
        actions = spec.get("actions") if isinstance(spec, dict) else None
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise RbacError(f"{where}: role {role!r}: actions must be a list of action names")
        unknown = sorted(set(actions) - ACTIONS)
        if unknown:
            warnings.append(f"{where}: role {role!r}: {', '.join(unknown)} is not a Chroma 0.6 action: it allows "
                            "nothing (check the spelling)")
        roles[role] = frozenset(actions)
    permissions: dict[str, frozenset[str]] = {}
    role_of: dict[str, str] = {}
    for index, user in enumerate(data["users"], 1):
        if not isinstance(user, dict) or not isinstance(user.get("id"), str):
            raise RbacError(f"{where}: users entry {index} must have an id")
        role = user.get("role")
        if not isinstance(role, str) or role not in roles:
            raise RbacError(f"{where}: user {user['id']!r}: role {role!r} is not in roles_mapping")
        if user["id"] in permissions:  # 0.6 kept the last; which one was meant is a guess
            raise RbacError(f"{where}: user {user['id']!r} appears twice")
        permissions[user["id"]] = roles[role]
        role_of[user["id"]] = role
    return permissions, role_of, warnings


def refusal(actions: frozenset[str], operation: str) -> str:
    """Why a user with ``actions`` may not do ``operation`` ("" when it may)."""
    needed = OPERATION_ACTIONS.get(operation)
    if needed is None:
        return f"{operation.replace('_', ' ')} (no Chroma 0.6 action allows it)"
    missing = [action for action in needed if action not in actions]
    return f"{operation.replace('_', ' ')} ({missing[0]} is not in its role)" if missing else ""
