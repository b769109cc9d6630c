"""Tokens are hashed with CPython's private SHA-256 where it was checked, else hashlib's: same digests."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from chromaguard.access import credentials

INPUTS = [b"", b"a", b"span-secret-token", "Привет ✓ token".encode(), b"\0" * 55, b"\0" * 56, b"\0" * 64,
          bytes(range(256)) * 4096]  # empty, one byte, block edges, 1 MiB
LOW, HIGH = credentials._FAST_SHA256_PYTHONS
CHECKED = sys.implementation.name == "cpython" and LOW <= sys.version_info[:2] < HIGH
PRIVATE = "_sha2" if sys.version_info >= (3, 12) else "_sha256"


def _private_sha256() -> Callable[[bytes], Any]:
    return importlib.import_module(PRIVATE).sha256  # type: ignore[no-any-return]


@pytest.mark.parametrize("data", INPUTS, ids=lambda d: f"{len(d)}B")
def test_the_function_in_use_gives_hashlib_digests(data: bytes) -> None:
    assert credentials._sha256(data).digest() == hashlib.sha256(data).digest()
    assert credentials.digest(data) == hashlib.sha256(data).digest()


@pytest.mark.skipif(not CHECKED, reason="the private module is used on checked CPython releases only")
@pytest.mark.parametrize("data", INPUTS, ids=lambda d: f"{len(d)}B")
def test_the_private_function_gives_hashlib_digests(data: bytes) -> None:
    assert _private_sha256()(data).digest() == hashlib.sha256(data).digest()


def test_text_is_hashed_as_utf8() -> None:
    assert credentials.digest("Привет ✓") == hashlib.sha256("Привет ✓".encode()).digest()


@pytest.mark.skipif(not CHECKED, reason="the private module is used on checked CPython releases only")
def test_on_checked_interpreters_the_private_function_is_the_one_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """A silent fall back to hashlib (renamed module, a changed import) fails here, not in a benchmark."""
    assert credentials._sha256 is _private_sha256()
    assert credentials._sha256 is not hashlib.sha256
    calls: list[bytes] = []

    def spy(data: bytes) -> Any:
        calls.append(data)
        return _private_sha256()(data)

    monkeypatch.setattr(credentials, "_sha256", spy)
    credentials.digest("token")
    assert calls == [b"token"]  # digest() hashes through the chosen function


@pytest.mark.parametrize(("version", "implementation"), [
    ((3, 14), "cpython"), ((4, 0), "cpython"), ((3, 10), "cpython"), (sys.version_info[:2], "pypy")])
def test_outside_the_checked_interpreters_hashlib(version: tuple[int, int], implementation: str) -> None:
    assert credentials._choose_sha256(version, implementation) is hashlib.sha256


def _fresh_credentials(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """chromaguard/access/credentials.py imported again under another name: the module
    (``chromaguard.access.credentials``, and the classes other modules hold from it) is left as it is."""
    name = "chromaguard.access._credentials_probe"
    spec = importlib.util.spec_from_file_location(name, credentials.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_without_the_private_module_hashlib_hashes_right(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_sha2", "_sha256"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: the import raises ImportError
    assert credentials._choose_sha256() is hashlib.sha256
    fresh = _fresh_credentials(monkeypatch)
    assert fresh._sha256 is hashlib.sha256
    for data in INPUTS:
        assert fresh.digest(data) == hashlib.sha256(data).digest() == credentials.digest(data)
    store = fresh.CredentialStore({fresh.digest("span-secret-token"): fresh.Principal("ingest-job")})
    assert store.check_token("span-secret-token") == fresh.Principal("ingest-job")
    assert store.check_token("span-secret-tokem") is None


def test_a_private_module_without_sha256_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, PRIVATE, ModuleType(PRIVATE))  # imports, but has no sha256
    assert credentials._choose_sha256() is hashlib.sha256
