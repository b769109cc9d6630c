"""``chromaguard init``: a compose deployment that the doctor finds nothing wrong with."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from . import __version__
from .errors import ChromaguardError

_DOCKERFILE = f"""# chromaguard from PyPI: the Chroma engine (chromadb wheel) behind the chromaguard front door.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 \\
    PIP_NO_CACHE_DIR=1 \\
    CHROMA_SERVER_HOST=0.0.0.0 \\
    CHROMA_SERVER_HTTP_PORT=8000 \\
    PERSIST_DIRECTORY=/data

RUN pip install chromaguard=={__version__} \\
    && useradd --system --uid 10001 --home-dir /data chroma \\
    && mkdir -p /data && chown chroma /data

USER chroma
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=15s --retries=3 --start-period=60s \\
    CMD ["python", "-m", "chromaguard.probe", "--ready"]

CMD ["chromaguard", "serve"]
"""


def template(name: str) -> str:
    return (files("chromaguard") / "templates" / name).read_text(encoding="utf-8")


def compose_text() -> str:
    """deploy/docker-compose.yml, built from the Dockerfile next to it instead of the source tree."""
    return template("docker-compose.yml").replace(
        "      context: ..\n      dockerfile: deploy/Dockerfile", "      context: .\n      dockerfile: Dockerfile")


def write(directory: Path, *, force: bool = False) -> list[Path]:
    outputs = {
        "docker-compose.yml": compose_text(),
        "otel-collector.yaml": template("otel-collector.yaml"),
        "chroma_tokens.example.json": template("chroma_tokens.example.json"),
        "Dockerfile": _DOCKERFILE,
    }
    directory.mkdir(parents=True, exist_ok=True)
    existing = [name for name in outputs if (directory / name).exists()]
    if existing and not force:
        raise ChromaguardError(f"{directory / existing[0]} already exists; use --force to overwrite")
    written = []
    for name, text in outputs.items():
        (directory / name).write_text(text, encoding="utf-8")
        written.append(directory / name)
    return written
