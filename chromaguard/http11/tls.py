"""HTTPS on the front door: TLS 1.2+ with forward-secret AEAD ciphers only, and certificates
re-read when their files change (cert-manager, certbot) without dropping a connection.

The listener keeps one context for good; each handshake is switched (in the SNI callback,
which OpenSSL calls for every ClientHello, with or without a server name) to the newest
context that loaded. A rotation is loaded into a new context first: a certificate and key
caught half-way through their rotation (a mismatched pair, a half-written file) leave the
previous pair serving, with one warning, and are tried again at the next check.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("chromaguard.tls")

# TLS 1.2's forward-secret AEAD suites (TLS 1.3's are all of that kind and always on).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
CLIENT_CERT_MODES = ("none", "optional", "required")
CHECK_EVERY = 5.0


class TlsError(Exception):
    """The certificate, key or CA bundle cannot be used; the message says which and why."""


@dataclass(frozen=True)
class TlsFiles:
    certfile: Path
    keyfile: Path | None = None  # None: the key is in the certificate file
    ca_certs: Path | None = None  # client certificates are checked against these
    client_cert: str = "none"  # none | optional | required


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context for ``files``; TlsError naming the file when one cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    try:  # an encrypted key fails at once (no password prompt on a terminal)
        context.load_cert_chain(files.certfile, files.keyfile, password=lambda: b"")
    except FileNotFoundError as exc:
        raise TlsError(f"{exc.filename or files.certfile}: no such file") from None
    except PermissionError as exc:
        raise TlsError(f"{exc.filename or files.certfile}: not readable by this user") from None
    except ssl.SSLError as exc:
        what = f"{files.certfile}" + (f" with {files.keyfile}" if files.keyfile else "")
        raise TlsError(f"{what}: not a PEM certificate and its private key ({exc.reason or exc})") from None
    except OSError as exc:
        raise TlsError(f"{files.certfile}: {exc.strerror or exc}") from None
    if files.ca_certs is not None:
        try:
            context.load_verify_locations(cafile=files.ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"{files.ca_certs}: not a readable PEM CA bundle ({exc})") from None
        context.verify_mode = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL}.get(
            files.client_cert, ssl.CERT_NONE)
        # No session tickets: a session resumed after the CA bundle changed would skip the new check
        # (a TLS 1.2 session-id resumption from before a change is turned away: ServerTls.refuses).
        context.num_tickets = 0
        context.options |= ssl.OP_NO_TICKET
    return context


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    """Following symlinks: Kubernetes swaps a secret's ``..data`` link, certbot its ``live/`` ones."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ServerTls:
    """The listener's context and the certificate it serves now."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._stamps = self._read_stamps()
        self.current = server_context(files)  # TlsError at start-up: the service does not start
        self.listener = server_context(files)
        self.listener.sni_callback = self._switch
        self.reloads = 0
        self.clients_checked_since = 0.0  # when the client CA bundle last changed (Unix time)
        self._failed_at: tuple[object, ...] | None = None

    def _switch(self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        ssl_object.context = self.current

    def _read_stamps(self) -> tuple[object, ...]:
        return (_stamp(self.files.certfile), _stamp(self.files.keyfile), _stamp(self.files.ca_certs))

    def check(self) -> bool:
        """Load the files again if they changed; True when a new context now serves."""
        stamps = self._read_stamps()
        if stamps == self._stamps:
            return False
        try:
            fresh = server_context(self.files)
        except TlsError as exc:
            if stamps != self._failed_at:  # once per state of the files, not every check
                self._failed_at = stamps
                log.warning("TLS certificate files changed but cannot be used yet (%s): still serving the previous "
                            "certificate; checking again every %gs", exc, CHECK_EVERY)
            return False
        if stamps[2] != self._stamps[2]:
            self.clients_checked_since = time.time()
        self.current, self._stamps, self._failed_at = fresh, stamps, None
        self.reloads += 1
        log.info("TLS certificate reloaded from %s: new connections get it, open ones keep theirs",
                 self.files.certfile)
        return True

    def refuses(self, transport: asyncio.BaseTransport) -> bool:
        """A finished handshake that resumed a session from before the client CA bundle changed:
        its client certificate was checked against the old bundle."""
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or not self.clients_checked_since or not ssl_object.session_reused:
            return False
        session = ssl_object.session
        return session is None or session.time < self.clients_checked_since

    async def watch(self, every: float = CHECK_EVERY) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # noqa: BLE001 - a check that fails must not end the watch
                log.exception("checking the TLS certificate files failed")
