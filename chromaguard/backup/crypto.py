"""Encryption at rest for a backup repository: AES-256-GCM, the key derived from a password by scrypt.

Why these: an authenticated cipher makes a flipped bit or a wrong key an error, never wrong
data; scrypt makes guessing the password expensive. Chunks are sealed one by one (a restore
reads only the chunks it needs), each manifest whole, bound to its backup id so one cannot be
passed off as another. The repository's ``config.json`` holds the salt and a sealed check value,
so a wrong password is told apart from corrupt data at once.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import ChromaguardError

PASSWORD_ENV = "CHROMAGUARD_BACKUP_PASSWORD"
PASSWORD_FILE_ENV = "CHROMAGUARD_BACKUP_PASSWORD_FILE"
_CHECK = b"chromaguard-repository-key-check"
_NONCE = 12
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}


class WrongKey(ChromaguardError):
    exit_code = 1


class Unreadable(Exception):
    """Sealed data that does not open: corrupt, or sealed for something else."""


def password_from(env: Mapping[str, str] = os.environ) -> str | None:
    """The repository password from ``CHROMAGUARD_BACKUP_PASSWORD`` or the file ``..._FILE`` names."""
    path = env.get(PASSWORD_FILE_ENV, "").strip()
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8-sig").rstrip("\r\n")
        except OSError as exc:
            raise WrongKey(f"{PASSWORD_FILE_ENV}={path}: cannot read the password file ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise WrongKey(f"{PASSWORD_FILE_ENV}={path}: the password file is not UTF-8 text") from None
        if not text:  # a secret mounted empty must not mean "no encryption"
            raise WrongKey(f"{PASSWORD_FILE_ENV}={path}: the password file is empty")
        return text
    if PASSWORD_ENV in env and not env[PASSWORD_ENV]:
        raise WrongKey(f"{PASSWORD_ENV} is set but empty; give the password, or unset it for no encryption")
    return env.get(PASSWORD_ENV) or None


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def create(cls, password: str) -> tuple[Sealer, dict[str, Any]]:
        """A new key from ``password``; what ``config.json`` keeps to open it again."""
        salt = os.urandom(16)
        sealer = cls(_derive(password, salt, _SCRYPT))
        entry = {"cipher": "AES-256-GCM", "kdf": "scrypt", **_SCRYPT, "salt": _b64(salt),
                 "check": _b64(sealer.seal(_CHECK, b"check"))}
        return sealer, entry

    @classmethod
    def open(cls, url: str, entry: dict[str, Any], password: str | None) -> Sealer:
        if password is None:
            raise WrongKey(f"{url}: the repository is encrypted; set {PASSWORD_ENV} (or {PASSWORD_FILE_ENV}) "
                           "to its password")
        try:
            salt = base64.b64decode(entry["salt"])
            sealer = cls(_derive(password, salt, {k: int(entry[k]) for k in _SCRYPT}))
            check = base64.b64decode(entry["check"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WrongKey(f"{url}: the repository's encryption settings are damaged ({exc})") from None
        try:
            if sealer.unseal(check, b"check") != _CHECK:
                raise Unreadable()
        except Unreadable:
            raise WrongKey(f"{url}: wrong password for this repository ({PASSWORD_ENV})") from None
        return sealer

    def seal(self, data: bytes, bound_to: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, data, bound_to)

    def unseal(self, data: bytes, bound_to: bytes) -> bytes:
        try:
            return self._aead.decrypt(data[:_NONCE], data[_NONCE:], bound_to)
        except (InvalidTag, ValueError):
            raise Unreadable() from None


def _derive(password: str, salt: bytes, cost: Mapping[str, int]) -> bytes:
    if not (2 <= cost["n"] <= 2**17 and 1 <= cost["r"] <= 8 and 1 <= cost["p"] <= 4):  # at most 128 MiB, ~1 s
        raise ValueError("scrypt cost out of range")
    return Scrypt(salt=salt, length=32, n=cost["n"], r=cost["r"], p=cost["p"]).derive(password.encode())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
