"""``chromaguard init``: a compose deployment that builds from the chromaguard at hand, and that
the doctor finds nothing wrong with.

The image installs chromaguard from its own wheel, copied next to the Dockerfile and checked
against its sha256 there, never by name from a package index: no package of that name is
published, and whoever registered it would otherwise have their code in every such image.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, distribution
from importlib.resources import files
from pathlib import Path
from urllib.parse import unquote, urlsplit

from . import __version__
from .errors import ChromaguardError

_DOCKERFILE = """# chromaguard from its own wheel (written by `chromaguard init`): the Chroma engine (chromadb
# wheel) behind the chromaguard front door. The wheel is checked against its sha256 below.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 \\
    PIP_NO_CACHE_DIR=1 \\
    CHROMA_SERVER_HOST=0.0.0.0 \\
    CHROMA_SERVER_HTTP_PORT=8000 \\
    PERSIST_DIRECTORY=/data

# Every dependency pinned and checked by its sha256 (requirements.lock, from chromaguard's own).
COPY requirements.lock /tmp/requirements.lock
RUN pip install --require-hashes --no-deps -r /tmp/requirements.lock && rm /tmp/requirements.lock
COPY {wheel} /tmp/{wheel}
RUN echo "{sha256}  /tmp/{wheel}" > /tmp/SHA256SUMS && sha256sum -c /tmp/SHA256SUMS \\
    && pip install --no-deps /tmp/{wheel} && rm /tmp/{wheel} /tmp/SHA256SUMS && pip check \\
    && useradd --system --uid 10001 --home-dir /data chroma \\
    && mkdir -p /data && chown chroma /data

USER 10001
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=15s --retries=3 --start-period=60s \\
    CMD ["python", "-m", "chromaguard.probe", "--ready"]

CMD ["chromaguard", "serve"]
"""

# The build context is the folder, which holds the tokens too: the builder is sent the wheel alone.
_DOCKERIGNORE = ("# written by `chromaguard init`: the image needs only the wheel and the lock\n*\n!chromaguard-*.whl\n"
                 "!requirements.lock\n")
# Written only where there is no .gitignore yet: the secrets the compose file mounts stay out of git.
_GITIGNORE = ("# written by `chromaguard init`: secrets the compose file mounts\n"
              "chroma_tokens.json\nchroma_metrics_token.txt\n")
_WHEEL_NAME = re.compile(r"[A-Za-z0-9_.+-]+\.whl")  # it is written into the Dockerfile's COPY and RUN lines

# The deploy files init writes, as the package holds them (deploy/ links to the same files).
_TEMPLATES = ("requirements.lock", "otel-collector.yaml", "chroma_tokens.example.json", "prometheus/prometheus.yml",
              "prometheus/chromaguard-rules.yml", "grafana/chromaguard.json",
              "grafana/provisioning/datasources/prometheus.yml", "grafana/provisioning/dashboards/chromaguard.yml")


def template(name: str) -> str:
    node = files("chromaguard") / "templates"
    for part in name.split("/"):
        node = node / part
    return node.read_text(encoding="utf-8")


def compose_text() -> str:
    """deploy/docker-compose.yml, built from the Dockerfile next to it instead of the source tree."""
    return template("docker-compose.yml").replace(
        "      context: ..\n      dockerfile: deploy/Dockerfile", "      context: .\n      dockerfile: Dockerfile")


def dockerfile_text(wheel: str, sha256: str) -> str:
    return _DOCKERFILE.format(wheel=wheel, sha256=sha256)


def own_wheel(into: Path, given: Path | None = None) -> Path:
    """chromaguard's wheel in ``into``: ``given``, else built from the source tree this chromaguard
    runs from, else the wheel it was installed from; one line saying what to do when none is."""
    if given is not None:
        if not given.is_file() or not given.name.startswith(f"chromaguard-{__version__}-") \
                or not _WHEEL_NAME.fullmatch(given.name):
            raise ChromaguardError(f"{given}: not a chromaguard {__version__} wheel "
                                   f"(chromaguard-{__version__}-*.whl); give the wheel this chromaguard came from")
        return Path(shutil.copy2(given, into / given.name))
    source = _source_tree()
    if source is not None:
        return _build_wheel(source, into)
    installed = _installed_from()
    if installed is not None:
        return Path(shutil.copy2(installed, into / installed.name))
    raise ChromaguardError("cannot find chromaguard's own wheel or source to build the image from: pass --wheel "
                           f"chromaguard-{__version__}-py3-none-any.whl (e.g. from `pip wheel --no-deps` of the "
                           "source), or install chromaguard from its source or a wheel file")


def _source_tree() -> Path | None:
    """The project directory when chromaguard runs from its source (a checkout, an editable install)."""
    root = Path(__file__).resolve().parent.parent
    project = root / "pyproject.toml"
    if project.is_file() and 'name = "chromaguard"' in project.read_text(encoding="utf-8", errors="replace"):
        return root
    return None


def _installed_from() -> Path | None:
    """The wheel file pip installed this chromaguard from, when it is still there."""
    try:
        recorded = distribution("chromaguard").read_text("direct_url.json")
    except PackageNotFoundError:
        return None
    if not recorded:
        return None
    try:
        url = urlsplit(json.loads(recorded).get("url", ""))
    except (ValueError, AttributeError):
        return None
    path = Path(unquote(url.path))
    return path if url.scheme == "file" and path.suffix == ".whl" and path.is_file() else None


def _build_wheel(source: Path, into: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="chromaguard-wheel-") as out:
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, str(source)],
                              capture_output=True, text=True)
        built = sorted(Path(out).glob(f"chromaguard-{__version__}-*.whl"))
        if done.returncode != 0 or not built:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel was made"]
            raise ChromaguardError(f"building chromaguard's wheel from {source} failed: {last[0]}; pass --wheel "
                                   "with one built elsewhere")
        return Path(shutil.copy2(built[0], into / built[0].name))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write(directory: Path, *, force: bool = False, wheel: Path | None = None) -> list[Path]:
    outputs = {"docker-compose.yml": compose_text(), ".dockerignore": _DOCKERIGNORE,
               **{name: template(name) for name in _TEMPLATES}}
    directory.mkdir(parents=True, exist_ok=True)
    existing = [name for name in [*outputs, "Dockerfile"] if (directory / name).exists()]
    if existing and not force:
        raise ChromaguardError(f"{directory / existing[0]} already exists; use --force to overwrite")
    for old in directory.glob("chromaguard-*.whl"):  # a former init's: the Dockerfile names the new one
        old.unlink()
    built = own_wheel(directory, wheel)
    outputs["Dockerfile"] = dockerfile_text(built.name, sha256_of(built))
    written = []
    for name, text in outputs.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    gitignore = directory / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(_GITIGNORE, encoding="utf-8")
        written.append(gitignore)
    return [*written, built]
