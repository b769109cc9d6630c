"""What older Chroma lines called things, and what Chroma 1.x does with them.

One table shared by ``chromaguard config`` (warnings) and the doctor, so the
facts live in one place.
"""

from __future__ import annotations

# Server auth providers, by the names users have written over the years.
AUTH_PROVIDERS: dict[str, str] = {
    "": "none",
    "none": "none",
    "token": "token",
    "basic": "basic",
    # Chroma 0.4
    "chromadb.auth.token.tokenauthserverprovider": "token",
    "chromadb.auth.basic.basicauthserverprovider": "basic",
    # Chroma 0.5 / 0.6
    "chromadb.auth.token_authn.tokenauthenticationserverprovider": "token",
    "chromadb.auth.basic_authn.basicauthenticationserverprovider": "basic",
}

# Credentials providers (0.4) and the name the seed invented.
CREDENTIALS_PROVIDERS: dict[str, tuple[str, str]] = {
    # lowercased name -> (what chromaguard maps it to, note)
    "": ("none", ""),
    "none": ("none", ""),
    "chromadb.auth.token.tokenauthserver": (
        "token",
        "this class never existed in any Chroma release; mapped to chromaguard token auth",
    ),
    "chromadb.auth.token.tokenconfigserverauthcredentialsprovider": (
        "token",
        "Chroma 0.4 token credentials provider; mapped to chromaguard token auth",
    ),
    "chromadb.auth.providers.htpasswdfileserverauthcredentialsprovider": (
        "basic",
        "Chroma 0.4 htpasswd file provider; mapped to chromaguard basic auth",
    ),
    "chromadb.auth.providers.htpasswdconfigurationserverauthcredentialsprovider": (
        "basic",
        "Chroma 0.4 inline htpasswd provider; mapped to chromaguard basic auth",
    ),
}

# Environment names Chroma 1.x ignores, with the name 1.x (or chromaguard) uses.
IGNORED_BY_CHROMA_1: dict[str, str] = {
    "CHROMA_SERVER_HOST": "Chroma 1.x reads CHROMA_LISTEN_ADDRESS",
    "CHROMA_SERVER_HTTP_PORT": "Chroma 1.x reads CHROMA_PORT",
    "CHROMA_SERVER_CORS_ALLOW_ORIGINS": "Chroma 1.x reads CHROMA_CORS_ALLOW_ORIGINS",
    "PERSIST_DIRECTORY": "Chroma 1.x reads CHROMA_PERSIST_PATH (and writes to /data in its image)",
    "IS_PERSISTENT": "Chroma 1.x always persists",
    "ALLOW_RESET": "Chroma 1.x reads CHROMA_ALLOW_RESET",
    "ANONYMIZED_TELEMETRY": "a no-op since Chroma 1.5.4; chromaguard sends no product telemetry at all",
    "CHROMA_SERVER_OTEL_ENABLED": "never existed in any Chroma; Chroma 1.x reads CHROMA_OPEN_TELEMETRY__ENDPOINT",
    "CHROMA_SERVER_OTEL_ENDPOINT": "never existed in any Chroma; Chroma 1.x reads CHROMA_OPEN_TELEMETRY__ENDPOINT",
    "CHROMA_SERVER_OTEL_SERVICE_NAME": "never existed in any Chroma; Chroma 1.x reads "
                                       "CHROMA_OPEN_TELEMETRY__SERVICE_NAME",
    "CHROMA_OTEL_COLLECTION_ENDPOINT": "Chroma 0.x name; Chroma 1.x reads CHROMA_OPEN_TELEMETRY__ENDPOINT",
    "CHROMA_OTEL_SERVICE_NAME": "Chroma 0.x name; Chroma 1.x reads CHROMA_OPEN_TELEMETRY__SERVICE_NAME",
    "CHROMA_SERVER_AUTH_PROVIDER": "Chroma 1.x has no server auth at all",
    "CHROMA_SERVER_AUTH_CREDENTIALS_PROVIDER": "Chroma 1.x has no server auth at all",
    "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": "Chroma 1.x has no server auth at all",
    "CHROMA_SERVER_AUTH_CREDENTIALS": "Chroma 1.x has no server auth at all",
    "CHROMA_SERVER_AUTHN_PROVIDER": "Chroma 1.x has no server auth at all",
    "CHROMA_SERVER_AUTHN_CREDENTIALS_FILE": "Chroma 1.x has no server auth at all",
    "CHROMA_SERVER_AUTHN_CREDENTIALS": "Chroma 1.x has no server auth at all",
    "CHROMA_AUTH_TOKEN_TRANSPORT_HEADER": "Chroma 1.x has no server auth at all",
}


def auth_provider(raw: object) -> str:
    """``none``, ``token`` or ``basic`` from any spelling Chroma ever accepted."""
    key = str(raw).strip().lower()
    if key in AUTH_PROVIDERS:
        return AUTH_PROVIDERS[key]
    raise ValueError("unknown auth provider (use token, basic or none)")


def credentials_provider(raw: object) -> str:
    key = str(raw).strip().lower()
    if key in CREDENTIALS_PROVIDERS:
        return CREDENTIALS_PROVIDERS[key][0]
    raise ValueError(
        "unknown credentials provider (use chromadb.auth.token.TokenConfigServerAuthCredentialsProvider, "
        "chromadb.auth.providers.HtpasswdFileServerAuthCredentialsProvider or none)"
    )


def credentials_provider_note(raw: object) -> str:
    return CREDENTIALS_PROVIDERS.get(str(raw).strip().lower(), ("", ""))[1]
