from __future__ import annotations

import uuid
from collections.abc import Iterator

import chromadb
import pytest
from chromadb.config import Settings
from procs import BareEngine, Guard


def http_client(port: int, **settings: object) -> chromadb.ClientAPI:
    return chromadb.HttpClient(host="127.0.0.1", port=port,
                               settings=Settings(anonymized_telemetry=False, **settings))


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
