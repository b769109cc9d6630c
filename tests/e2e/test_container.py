"""The image, built and run by a real container runtime: podman with runc, as root.

What `chromaguard init` writes is built (its Dockerfile, its own wheel pinned by hash) and run
the way the original report ran it, and checked the way that report checked it: curl of the
heartbeat from the host, the Python client's ``heartbeat()``, ``exec env | grep -i otel``,
``logs | grep -i health``, plus what it never checked: the health status reaching healthy,
non-root, token auth from a mounted secret file, data on a named volume surviving the
container, and ``stop`` draining requests in flight.

No image registry is reachable here, so ``python:3.11-slim`` is a stand-in built from Debian's
own packages (bookworm's Python is 3.11) with mmdebstrap and imported under that name: every
step of our Dockerfile and the image's behaviour are tested, not the upstream base itself.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import chromadb
import httpx
import pytest
from chromadb.config import Settings
from support.podman import BUILD_FLAGS, Podman, podman_runtime
from support.procs import cli, free_port

pytestmark = pytest.mark.timeout(900)

BASE = "/api/v2/tenants/default_tenant/databases/default_database"


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    yield from podman_runtime(tmp_path_factory.mktemp("podman"), tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``chromaguard init`` in an empty folder, and the image its Dockerfile builds."""
    folder = tmp_path_factory.mktemp("deployment")
    written = cli("init", "--dir", str(folder))
    assert written.returncode == 0, written.stderr
    name = podman.remember("image", f"localhost/chromaguard-test:{podman.tag}")
    podman("build", *BUILD_FLAGS, "-t", name, str(folder), timeout=900)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())
    print(f"image {name}: {size / 1e6:.0f} MB")
    return name


class Container:
    def __init__(self, podman: Podman, image: str, volume: str, port: int, secret: Path) -> None:
        self.podman, self.port = podman, port
        self.name = podman.remember("container", f"cg-{podman.tag}-{uuid.uuid4().hex[:6]}")
        podman("run", "-d", "--name", self.name, "-v", f"{volume}:/data",
               "-v", f"{secret}:/run/secrets/chroma_tokens.json:ro",
               "-e", f"CHROMA_SERVER_HTTP_PORT={port}", "-e", "CHROMA_SERVER_AUTH_PROVIDER=token",
               "-e", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE=/run/secrets/chroma_tokens.json",
               "-e", "OTEL_SERVICE_NAME=chroma-in-a-container", image)
        self.url = f"http://127.0.0.1:{port}"

    def healthy(self) -> None:
        self.podman.healthy(self.name)

    def remove(self) -> None:
        self.podman("rm", "-f", self.name)


ADMIN = {"authorization": "Bearer container-admin"}


def _client(port: int) -> chromadb.ClientAPI:
    return chromadb.HttpClient(host="127.0.0.1", port=port, headers=ADMIN,
                               settings=Settings(anonymized_telemetry=False))


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "chroma_tokens.json"
    path.write_text(json.dumps([{"token": "container-admin", "name": "ops", "role": "admin"}]))
    path.chmod(0o644)  # the image runs as uid 10001: it must be able to read the mounted file
    return path


def test_the_image_runs_healthy_as_non_root_with_token_auth_and_its_data_outlives_the_container(
        podman: Podman, image: str, secret: Path) -> None:
    volume = podman.remember("volume", f"cg-data-{podman.tag}")
    podman("volume", "create", volume)
    port = free_port()
    box = Container(podman, image, volume, port, secret)
    box.healthy()
    # The original report's own checks, now answered.
    assert httpx.get(box.url + "/api/v1/heartbeat").status_code == 200
    client = _client(port)
    assert client.heartbeat() > 0
    env = podman("exec", box.name, "env").stdout
    assert "OTEL_SERVICE_NAME=chroma-in-a-container" in [line for line in env.splitlines() if "otel" in line.lower()]
    logs = podman("logs", box.name)
    assert any("health" in line.lower() for line in (logs.stdout + logs.stderr).splitlines()), logs.stderr
    assert podman("exec", box.name, "id", "-u").stdout.strip() == "10001"
    # Token auth from the mounted file: nothing without it, everything with it.
    assert httpx.get(box.url + f"{BASE}/collections").status_code == 401
    assert httpx.get(box.url + f"{BASE}/collections", headers={"authorization": "Bearer guess"}).status_code == 403
    col = client.create_collection("kept", embedding_function=None)
    col.add(ids=["a", "b"], embeddings=[[1.0, 0.0], [0.0, 1.0]], documents=["one", "two"])

    box.remove()  # the container goes; the named volume stays
    again = Container(podman, image, volume, port, secret)
    again.healthy()
    kept = _client(port).get_collection("kept")
    assert kept.get(ids=["a", "b"], include=["documents"])["documents"] == ["one", "two"]
    again.remove()


def test_stop_lets_requests_in_flight_finish_and_exits_within_the_drain_timeout(
        podman: Podman, image: str, secret: Path) -> None:
    volume = podman.remember("volume", f"cg-drain-{podman.tag}")
    podman("volume", "create", volume)
    box = Container(podman, image, volume, free_port(), secret)
    box.healthy()
    _client(box.port).create_collection("busy", embedding_function=None)
    cid = httpx.get(box.url + f"{BASE}/collections/busy", headers=ADMIN).json()["id"]
    answers: list[int | str] = []
    stopping = threading.Event()

    def write(worker: int) -> None:
        with httpx.Client(base_url=box.url, headers=ADMIN, timeout=30) as http:
            for n in range(100_000):
                try:
                    r = http.post(f"{BASE}/collections/{cid}/add", json={
                        "ids": [f"w{worker}-{n}"], "embeddings": [[float(n), 1.0]]})
                except httpx.ConnectError:  # refused: the service has stopped listening
                    return
                except httpx.HTTPError as exc:
                    answers.append(f"{type(exc).__name__}: {exc}")
                    return
                answers.append(r.status_code)
                if stopping.is_set() and r.status_code != 201:
                    return

    writers = [threading.Thread(target=write, args=(i,)) for i in range(3)]
    for w in writers:
        w.start()
    time.sleep(2)
    started = time.monotonic()
    stopping.set()
    podman("stop", "-t", "30", box.name, timeout=60)
    took = time.monotonic() - started
    for w in writers:
        w.join(30)
    state = json.loads(podman("inspect", "--format", "{{json .State}}", box.name).stdout)
    assert state["ExitCode"] == 0, state  # SIGTERM reached chromaguard as PID 1, not a SIGKILL at the timeout
    assert took < 10, f"stop took {took:.1f} s: a drain waits only for requests in flight"
    accepted = [a for a in answers if a == 201]
    assert len(accepted) > 10, answers[-10:]
    # Every request either finished or was turned away whole: no reset, no 5xx mid-write.
    assert all(a in (201, 503) for a in answers), [a for a in answers if a not in (201, 503)][:5]
    box.remove()
