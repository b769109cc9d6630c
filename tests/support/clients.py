"""Clients the tests build: the official Python client pointed at a port."""

from __future__ import annotations

import chromadb
from chromadb.config import Settings


def http_client(port: int, **settings: object) -> chromadb.ClientAPI:
    """The official client as a user builds it, without product telemetry."""
    return chromadb.HttpClient(host="127.0.0.1", port=port,
                               settings=Settings(anonymized_telemetry=False, **settings))
