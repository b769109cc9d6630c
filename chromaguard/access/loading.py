"""The credentials the settings name, with Chroma 0.6's RBAC file applied when one is set: one
home for the service, its reloads and ``chromaguard config``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import chroma06
from .credentials import CredentialsError, CredentialStore, Principal, load_store, read_structured_file

if TYPE_CHECKING:
    from ..config.settings import Settings


def configured_store(settings: Settings) -> tuple[CredentialStore, list[str]]:
    """The store, and warnings about it (an RBAC action that matches nothing). CredentialsError
    with one line when a file is unusable."""
    store = load_store(settings.auth_provider, settings.auth_credentials_file, settings.auth_credentials,
                       file_setting=settings.name_of("auth_credentials_file"),
                       inline_setting=settings.name_of("auth_credentials"))
    if not settings.authz_provider or settings.authz_config_file is None:
        return store, []
    return _with_rbac(store, settings.authz_config_file, settings.name_of("authz_config_file"))


def _with_rbac(store: CredentialStore, path: Path, setting: str) -> tuple[CredentialStore, list[str]]:
    where = f"{setting}={path}"
    data: Any = read_structured_file(path, where)
    try:
        permissions, role_of, warnings = chroma06.parse_rbac(data, where)
    except chroma06.RbacError as exc:
        raise CredentialsError(str(exc)) from None

    scoped = [p.name for p in store.principals() if p.tenant is not None or p.databases is not None]
    if scoped:  # the role's actions decide, tenant-blind as in 0.6: a record's scope would look kept and not be
        raise CredentialsError(f"{where}: {scoped[0]!r} has a tenant/databases scope in the credentials file; an RBAC "
                               "file decides by actions alone (as Chroma 0.6 did): remove the scope or the RBAC file")

    unnamed = [p.name for p in store.principals() if not p.named]
    if unnamed:  # matched by a name it was never given, it would take whatever role a user so named has
        raise CredentialsError(f"{where}: the credentials file's {unnamed[0]} has no name, and an RBAC file matches "
                               "users by name: give each record a name: (the user's id in the RBAC file)")

    def narrowed(principal: Principal) -> Principal:
        actions = permissions.get(principal.name)
        if actions is None:
            return replace(principal, actions=frozenset(), how=f"not a user of {path.name}: may do nothing, as in 0.6")
        # A record's own role stays a ceiling: an RBAC file can narrow what a record allows, never widen it.
        within = "" if principal.role == "admin" else f", within its record's role {principal.role!r}"
        return replace(principal, actions=actions,
                       how=f"RBAC role {role_of[principal.name]!r} of {path.name}: {len(actions)} action(s){within}")

    return store.with_principals(narrowed), warnings
