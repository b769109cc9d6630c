"""Certificates for the TLS tests, made with ``cryptography``: a CA, and server or client
certificates it signs (or that sign themselves)."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Issued:
    cert: Path
    key: Path
    serial: int


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class Authority:
    """A CA in ``folder``: ``ca.crt`` for clients to trust, and what it issues."""

    def __init__(self, folder: Path, name: str = "chromaguard test CA") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                            .not_valid_before(now - datetime.timedelta(minutes=5))
                            .not_valid_after(now + datetime.timedelta(days=2))
                            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                            .sign(self.key, hashes.SHA256()))
        self.cert = folder / "ca.crt"
        self.cert.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, stem: str, *, client: bool = False, hosts: tuple[str, ...] | None = None) -> Issued:
        """A certificate for ``name`` (CN) in ``stem``.crt/.key, with ``hosts`` as SANs (a server's
        default: 127.0.0.1 and localhost; a client's: none)."""
        if hosts is None:
            hosts = () if client else ("127.0.0.1", "localhost")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        serial = x509.random_serial_number()
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        builder = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(self.certificate.subject)
                   .public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        cert, key_path = self.folder / f"{stem}.crt", self.folder / f"{stem}.key"
        cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return Issued(cert, key_path, serial)


def served_serial(host: str, port: int, ca: Path) -> int:
    """The serial number of the certificate a new connection to ``host:port`` is shown."""
    import socket
    import ssl

    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def spki_pin(cert: Path) -> str:
    """base64 of the sha256 of a certificate's public key: what Chromium's
    ``--ignore-certificate-errors-spki-list`` takes."""
    import base64
    import hashlib

    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def serving(folder: Path) -> tuple[dict[str, str], Path]:
    """The settings that make a chromaguard serve HTTPS with a certificate from a new CA in
    ``folder``, and that CA (what clients trust)."""
    authority = Authority(folder)
    issued = authority.issue("chromaguard", "server")
    return {"CHROMAGUARD_SSL_CERTFILE": str(issued.cert), "CHROMAGUARD_SSL_KEYFILE": str(issued.key)}, authority.cert


@contextmanager
def trusted_by_httpx(ca: Path | None) -> Iterator[None]:
    """While it runs, httpx's default context (and so the tests' plain ``httpx.get``) trusts
    ``ca`` (SSL_CERT_FILE, which httpx reads with trust_env); None: nothing changes."""
    import os

    saved = os.environ.get("SSL_CERT_FILE")
    try:
        if ca is not None:
            os.environ["SSL_CERT_FILE"] = str(ca)
        yield
    finally:
        if saved is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = saved
