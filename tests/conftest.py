from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from support.procs import BareEngine, Guard


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
