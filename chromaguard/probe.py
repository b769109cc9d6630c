"""A health probe for Docker HEALTHCHECK, Kubernetes exec probes and scripts.

    python -m chromaguard.probe [TARGET] [--ready] [--require-model NAME] [--timeout S] [--token T]

Exit 0 healthy, 1 unhealthy (one line says why), 2 usage error. Only the
standard library is imported, so it starts fast in any image that has Python.

Targets:
  http://host:8000          chromaguard or Chroma: v2 heartbeat, v1 for 0.x servers (--ready: readiness)
  http://host:11434         Ollama (port 11434, or --kind ollama): GET /api/tags (--require-model NAME)
  http://host:port/path     any URL: GET, expecting --expect-status (default 200)
  tcp://host:port           a TCP connect
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import ssl

OLLAMA_PORT = 11434


class Unhealthy(Exception):
    """The target answered, or failed to, in a way that means it is not healthy."""


CACERT_ENV = "CHROMAGUARD_CACERT"
INSECURE_ENV = "CHROMAGUARD_INSECURE"  # set by the CLI's --insecure for the command it runs
SERVER_CERT_ENV = "CHROMAGUARD_SSL_CERTFILE"


def client_tls(url: str, cacert: str | None = None, insecure: bool = False) -> ssl.SSLContext:
    """How a client of ours checks an HTTPS server: against ``cacert`` (or CHROMAGUARD_CACERT, else
    the system's roots) with its host name; not at all with ``insecure``; and this host's own
    chromaguard (the default target, the server's certificate file readable here, as in its
    container's health check) against exactly that certificate, whatever name it was issued to."""
    import ssl

    if insecure or os.environ.get(INSECURE_ENV) == "1":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cacert = cacert or os.environ.get(CACERT_ENV) or None
    own = os.environ.get(SERVER_CERT_ENV)
    if cacert is None and own and _same_origin(url, default_target()) and os.access(own, os.R_OK):
        leaf = _first_certificate(own)
        if leaf is not None:
            # Only the server's own certificate is trusted, not the chain beside it in the file (an
            # intermediate there would vouch for every certificate it signed, for any name).
            context = ssl.create_default_context(cadata=leaf)
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the certificate itself is the anchor
            context.check_hostname = False  # 127.0.0.1 is not the name it was issued to; the pin is exact
            return context
    try:
        return ssl.create_default_context(cafile=cacert)
    except (OSError, ssl.SSLError) as exc:
        raise Unhealthy(f"{cacert}: not a readable PEM CA bundle ({getattr(exc, 'strerror', None) or exc}); "
                        "give --cacert the CA that signed the server's certificate") from None


def _first_certificate(path: str) -> str | None:
    """The first PEM certificate of a file (a chain file starts with the server's own)."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read(1 << 20)
    except OSError:
        return None
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    return text[start:stop + len(end)] + "\n" if start >= 0 and stop > start else None


def _same_origin(a: str, b: str) -> bool:
    x, y = urlsplit(a), urlsplit(b)
    return (x.scheme, x.hostname, x.port) == (y.scheme, y.hostname, y.port)


def http_get(url: str, timeout: float, token: str | None = None,
             tls: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """One HTTP GET over a plain socket (http.client alone would double the probe's start-up time)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "User-Agent: chromaguard-probe",
             "Accept: application/json", "Connection: close"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock = raw
            if parts.scheme == "https":
                sock = (tls or client_tls(url)).wrap_socket(raw, server_hostname=host)
            sock.sendall(request)
            data = bytearray()
            while len(data) < (2 << 20):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        raise Unhealthy(f"{url}: no answer within {timeout:g}s") from None
    except OSError as exc:  # ssl's errors are OSErrors too (ssl is imported only for https)
        if getattr(exc, "verify_message", None):
            raise Unhealthy(f"{url}: its certificate is not trusted ({exc.verify_message}); give --cacert the "  # type: ignore[attr-defined]
                            "CA that signed it (or --insecure to skip the check)") from None
        if type(exc).__module__ == "ssl":
            raise Unhealthy(f"{url}: TLS failed ({getattr(exc, 'reason', None) or exc}); is it an HTTPS "
                            "server?") from None
        if parts.scheme == "http" and isinstance(exc, ConnectionResetError):
            raise Unhealthy(f"{url}: the connection was closed unanswered (does it speak HTTPS only? "
                            "use https://)") from None
        raise Unhealthy(f"{url}: {exc.strerror or exc}") from None
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status_line, _, header_text = head.partition(b"\r\n")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise Unhealthy(f"{url}: not an HTTP answer") from None
    if b"transfer-encoding: chunked" in header_text.lower():
        body = _unchunk(body)
    return status, body


def _unchunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return bytes(out)


def _base(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def check_chroma(url: str, *, ready: bool, timeout: float, token: str | None,
                 tls: ssl.SSLContext | None = None) -> str:
    base = _base(url)
    if ready:
        status, body = http_get(base + "/readyz", timeout, token, tls)
        if status == 404:  # a plain Chroma: its own readiness endpoint
            status, body = http_get(base + "/api/v2/healthcheck", timeout, token, tls)
        if status != 200:
            raise Unhealthy(f"{base}: not ready ({status}): {_reason(body)}")
        return f"{base}: ready"
    status, body = http_get(base + "/api/v2/heartbeat", timeout, token, tls)
    if status == 404:  # Chroma 0.x has only the v1 API
        status, body = http_get(base + "/api/v1/heartbeat", timeout, token, tls)
    if status != 200:
        raise Unhealthy(f"{base}: heartbeat answered {status}: {_reason(body)}")
    try:
        json.loads(body)["nanosecond heartbeat"]
    except (ValueError, KeyError, TypeError):
        raise Unhealthy(f"{base}: the heartbeat answer is not Chroma's") from None
    return f"{base}: alive"


def _reason(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace").strip() or "no body"
    if isinstance(data, dict):
        if "message" in data:
            return str(data["message"])
        failing = [name for name, check in data.get("checks", {}).items()
                   if isinstance(check, dict) and not check.get("ok", True)]
        if failing:
            return "failing: " + ", ".join(failing)
    return json.dumps(data)[:200]


def ollama_models(body: bytes) -> list[str]:
    try:
        return [m["name"] for m in json.loads(body)["models"]]
    except (ValueError, KeyError, TypeError):
        raise Unhealthy("the answer to /api/tags is not Ollama's") from None


def model_present(wanted: str, models: list[str]) -> bool:
    """Ollama names a model ``name:tag``; ``name`` alone means ``name:latest``."""
    full = wanted if ":" in wanted else f"{wanted}:latest"
    return wanted in models or full in models


def check_ollama(url: str, *, models: list[str], timeout: float, tls: ssl.SSLContext | None = None) -> str:
    base = _base(url)
    status, body = http_get(base + "/api/tags", timeout, tls=tls)
    if status != 200:
        raise Unhealthy(f"{base}: Ollama answered {status} on /api/tags")
    present = ollama_models(body)
    missing = [m for m in models if not model_present(m, present)]
    if missing:
        raise Unhealthy(f"{base}: model not pulled: {', '.join(missing)} (run: ollama pull {missing[0]})")
    return f"{base}: Ollama up with {len(present)} model(s)"


def check_http(url: str, *, expect: int, timeout: float, token: str | None,
               tls: ssl.SSLContext | None = None) -> str:
    status, _ = http_get(url, timeout, token, tls)
    if status != expect:
        raise Unhealthy(f"{url}: answered {status}, expected {expect}")
    return f"{url}: {status}"


def check_tcp(url: str, *, timeout: float) -> str:
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise ValueError("tcp targets need a host and a port: tcp://host:port")
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            return f"{url}: accepting connections"
    except OSError as exc:
        raise Unhealthy(f"{url}: {exc.strerror or exc}") from None


def default_target() -> str:
    host = os.environ.get("CHROMA_SERVER_HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    port = os.environ.get("CHROMA_SERVER_HTTP_PORT") or os.environ.get("CHROMA_PORT") or "8000"
    scheme = "https" if os.environ.get(SERVER_CERT_ENV) else "http"
    return f"{scheme}://{host}:{port}"


def run(target: str, *, kind: str = "auto", ready: bool = False, models: list[str] | None = None,
        expect: int | None = None, timeout: float = 5.0, token: str | None = None,
        cacert: str | None = None, insecure: bool = False) -> str:
    """Check ``target``; returns the healthy line or raises Unhealthy (ValueError for bad usage)."""
    parts = urlsplit(target if "://" in target else f"http://{target}")
    if parts.scheme == "tcp":
        return check_tcp(target, timeout=timeout)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{target!r} is not a target: use http://host:port, https://..., or tcp://host:port")
    url = parts.geturl()
    tls = client_tls(url, cacert, insecure) if parts.scheme == "https" else None
    if kind == "auto":
        if models or parts.port == OLLAMA_PORT:
            kind = "ollama"
        elif expect is not None or parts.path not in ("", "/"):
            kind = "http"
        else:
            kind = "chroma"
    if kind == "ollama":
        return check_ollama(url, models=models or [], timeout=timeout, tls=tls)
    if kind == "http":
        return check_http(url, expect=expect or 200, timeout=timeout, token=token, tls=tls)
    return check_chroma(url, ready=ready, timeout=timeout, token=token, tls=tls)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="chromaguard health", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", nargs="?", default=None, help="default: this host's chromaguard")
    parser.add_argument("--kind", choices=("auto", "chroma", "ollama", "http", "tcp"), default="auto")
    parser.add_argument("--ready", action="store_true", help="check readiness, not just liveness")
    parser.add_argument("--require-model", action="append", default=[], metavar="NAME",
                        help="an Ollama model that must be pulled (repeatable)")
    parser.add_argument("--expect-status", type=int, default=None, metavar="N")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--token", default=os.environ.get("CHROMAGUARD_PROBE_TOKEN"),
                        help="bearer token (env CHROMAGUARD_PROBE_TOKEN)")
    parser.add_argument("--cacert", default=None, metavar="PEM",
                        help=f"CA bundle an https:// target's certificate must chain to (env {CACERT_ENV})")
    parser.add_argument("--insecure", action="store_true", help="https:// without checking the certificate")
    args = parser.parse_args(argv)
    target = args.target or default_target()
    if args.kind == "tcp" and "://" not in target:
        target = f"tcp://{target}"
    try:
        line = run(target, kind="auto" if args.kind == "tcp" else args.kind, ready=args.ready,
                   models=args.require_model, expect=args.expect_status, timeout=args.timeout, token=args.token,
                   cacert=args.cacert, insecure=args.insecure)
    except Unhealthy as exc:
        print(f"unhealthy: {exc}")
        return 1
    except ValueError as exc:
        print(f"chromaguard health: error: {exc}", file=sys.stderr)
        return 2
    print(f"healthy: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
