"""``deploy/docker-compose.yml`` run by a real compose implementation: podman-compose on podman.

The README's Docker Compose lines are run as written, with ``docker compose`` spelled
``podman-compose`` and a test-only override added. The override keeps just the service whose
image exists here (``chromadb``, built from this source by ``deploy/Dockerfile``): Ollama, the
OpenTelemetry Collector and Jaeger cannot be pulled, so the collector's place is taken by a real
OTLP receiver and Ollama's by the smallest HTTP server that speaks its API, both on the host's
loopback (podman here runs containers in the host's network namespace).
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import chromadb
import httpx
import pytest
from chromadb.config import Settings
from support.fake_ollama import FakeOllama
from support.otlp_receiver import Receiver
from support.podman import BUILD_FLAGS, Podman, podman_runtime

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
PORT = 8006  # the compose file's published port, which the README's lines name
BASE = f"http://127.0.0.1:{PORT}/api/v2/tenants/default_tenant/databases/default_database"
OVERRIDE = """\
# Test only: the services whose images cannot be pulled here are left out (a profile never
# started); their stand-ins listen on the host's loopback.
services:
  chromadb:
    image: localhost/chromaguard-compose:{tag}
    container_name: relink-chromadb-{tag}
    network_mode: host              # podman's network here; no port mapping, so listen on the published port
    depends_on: !reset {{}}
    environment:
      - CHROMA_SERVER_HTTP_PORT={port}
      - CHROMA_SERVER_OTEL_ENDPOINT={otlp}
      - CHROMAGUARD_OLLAMA_URL={ollama}
  ollama: {{profiles: [not-here]}}
  otel-collector: {{profiles: [not-here]}}
  jaeger: {{profiles: [not-here]}}
"""


def readme_lines() -> list[str]:
    section = re.search(r"^## Docker Compose\n(.*?)^## ", (ROOT / "README.md").read_text(), re.M | re.S)
    assert section, "the README has a Docker Compose section"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    assert block, "the README's Docker Compose section has a bash block"
    return [re.sub(r"\s+#.*$", "", line) for line in block.group(1).splitlines() if line.strip()]


class Compose:
    def __init__(self, podman: Podman, tree: Path, tag: str) -> None:
        self.podman, self.tree = podman, tree
        self.project = f"relink-{tag}"
        self.prefix = shlex.join(["podman-compose", "-p", self.project, "--podman-build-args", shlex.join(BUILD_FLAGS),
                                  "-f", "deploy/docker-compose.yml", "-f", "deploy/compose.test.yml"])

    def spell(self, line: str) -> str:
        """A README line as it runs here."""
        line = line.replace("docker compose -f deploy/docker-compose.yml", self.prefix)
        return re.sub(r"^python3 ", shlex.quote(sys.executable) + " ", line)

    def run(self, line: str, timeout: float = 120) -> str:
        done = subprocess.run(["bash", "-o", "pipefail", "-c", self.spell(line)], cwd=self.tree, env=self.podman.env,
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-3000:])
        return done.stdout


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    if shutil.which("podman-compose") is None:
        pytest.fail("podman-compose is a test dependency: pip install -e '.[test]'")
    yield from podman_runtime(tmp_path_factory.mktemp("podman"), tmp_path_factory.mktemp("base"))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """What the compose file builds from (the repository root), without local secrets or caches."""
    for name in ("pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy2(ROOT / name, tmp_path / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "chroma_tokens.json", "chroma_metrics_token.txt")
    shutil.copytree(ROOT / "chromaguard", tmp_path / "chromaguard", ignore=skip)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy", symlinks=True, ignore=skip)
    # A secret left inside the package folder (the example edited in place): .dockerignore keeps it out.
    (tmp_path / "chromaguard" / "templates" / "chroma_tokens.json").write_text('["canary-token-in-the-source"]')
    return tmp_path


def test_the_readme_compose_lines_run_the_service_healthy_traced_and_guarded(podman: Podman, tree: Path) -> None:
    with httpx.Client() as probe:
        with pytest.raises(httpx.ConnectError):
            probe.get(f"http://127.0.0.1:{PORT}/", timeout=2)  # the compose file's port must be free here
    receiver, ollama = Receiver().start(), FakeOllama(["nomic-embed-text:latest"])
    tag = podman.tag
    (tree / "deploy" / "compose.test.yml").write_text(
        OVERRIDE.format(tag=tag, port=PORT, otlp=receiver.endpoint, ollama=ollama.url))
    compose = Compose(podman, tree, tag)
    podman.remember("image", f"localhost/chromaguard-compose:{tag}")
    podman.remember("volume", f"{compose.project}_chromadb_data")
    container = podman.remember("container", f"relink-chromadb-{tag}")
    try:
        outputs: dict[str, str] = {}
        admin: dict[str, str] = {}
        for line in readme_lines():
            if "ps" in line.split():
                podman.healthy(container)  # no systemd timers here: run the image's HEALTHCHECK as they would
            outputs[line] = compose.run(line, timeout=900 if "up" in line.split() else 120)
            if line.startswith("cp "):  # "then put real tokens in it": the example's placeholders are refused
                tokens = tree / "deploy" / "chroma_tokens.json"
                records = json.loads(tokens.read_text())
                assert records[0]["role"] == "admin"
                for record in records:
                    record["token"] = secrets.token_urlsafe(24)
                tokens.write_text(json.dumps(records))
                admin = {"authorization": f"Bearer {records[0]['token']}"}

        def said(word: str) -> str:
            [out] = [out for line, out in outputs.items() if word in line.split()]
            return out

        assert "(healthy)" in said("ps"), said("ps")
        assert "nanosecond heartbeat" in said("curl")
        assert int(said("python3").strip()) > 0
        assert "CHROMA_SERVER_OTEL_SERVICE_NAME=relink-chromadb" in said("exec").splitlines()
        found = podman("exec", container, "sh", "-c", "grep -rl canary-token-in-the-source /usr /tmp /data || true")
        assert found.stdout.strip() == "", f"a secret from the build context is in the image: {found.stdout}"
        assert "health" in said("logs").lower()

        # What the compose file configures, working: traces under its service name, Ollama checked
        # for readiness, tokens from its secret, CORS for its one origin.
        receiver.wait_for(lambda spans: [s for s in spans if s.service == "relink-chromadb"], timeout=30)
        ready = httpx.get(f"http://127.0.0.1:{PORT}/readyz").json()
        assert ready["checks"]["ollama"]["ok"], ready
        assert httpx.get(f"{BASE}/collections").status_code == 401
        preflight = {"origin": "http://localhost:3000", "access-control-request-method": "POST",
                     "access-control-request-headers": "authorization,content-type"}
        allowed = httpx.options(f"{BASE}/collections", headers=preflight)
        assert allowed.headers.get("access-control-allow-origin") == "http://localhost:3000", allowed.headers
        other = httpx.options(f"{BASE}/collections", headers={**preflight, "origin": "http://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers
        client = chromadb.HttpClient(host="127.0.0.1", port=PORT, headers=admin,
                                     settings=Settings(anonymized_telemetry=False))
        client.create_collection("kept", embedding_function=None).add(
            ids=["a"], embeddings=[[1.0, 0.0]], documents=["on the volume"])

        # `down` removes the container, not the named volume: `up` again finds the data.
        compose.run("docker compose -f deploy/docker-compose.yml down", timeout=120)
        assert podman("container", "exists", container, check=False).returncode != 0
        compose.run("docker compose -f deploy/docker-compose.yml up -d", timeout=300)
        podman.healthy(container)
        kept = chromadb.HttpClient(host="127.0.0.1", port=PORT, headers=admin,
                                   settings=Settings(anonymized_telemetry=False)).get_collection("kept")
        assert kept.get(ids=["a"], include=["documents"])["documents"] == ["on the volume"]
    finally:
        subprocess.run(["bash", "-c", compose.spell("docker compose -f deploy/docker-compose.yml down -v")],
                       cwd=tree, env=podman.env, capture_output=True, timeout=120)
        receiver.stop()
        ollama.stop()
