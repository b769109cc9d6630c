from __future__ import annotations

import functools
import os
import ssl
import uuid
from collections.abc import Iterator

import httpx._transports.default as httpx_transports
import pytest
from support.procs import BareEngine, Guard
from support.s3 import MotoServer

_make_context = httpx_transports.create_ssl_context


@functools.cache
def _default_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return _make_context()  # reads SSL_CERT_FILE / SSL_CERT_DIR, the key of this cache


def _context(verify: ssl.SSLContext | str | bool = True, cert: object = None, trust_env: bool = True) -> ssl.SSLContext:
    """httpx builds a new SSL context, loading certifi's 150 roots, for every client it makes:
    70 ms for each ``httpx.get(...)`` even over plain HTTP, minutes over the suite. The default
    one is built once here (for each SSL_CERT_FILE an HTTPS test sets); every other kind is httpx's own."""
    if verify is True and cert is None and trust_env:
        return _default_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    return _make_context(verify=verify, cert=cert, trust_env=trust_env)  # type: ignore[arg-type]


httpx_transports.create_ssl_context = _context  # type: ignore[assignment]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    Guard.started.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """A failing test's report carries the log tail of each service it started: a flake in CI
    can then be read, not guessed at."""
    report = yield
    if report.failed:
        for g in Guard.started:
            tail = "\n".join(g.log.splitlines()[-80:])
            report.sections.append((f"chromaguard log (port {g.port})", tail))
    return report


@pytest.fixture(scope="session")
def guard() -> Iterator[Guard]:
    """One shared service; tests use their own collection names."""
    with Guard("--allow-reset") as service:
        yield service


@pytest.fixture(scope="session")
def bare() -> Iterator[BareEngine]:
    engine = BareEngine()
    yield engine
    engine.close()


@pytest.fixture
def name() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A real S3-compatible server (moto) on loopback, one per test module that asks for it."""
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.close()
