"""A real container runtime for the tests: Debian's podman with runc, as root.

runc, not crun (which fails on this machine's cgroup layout); the host's network namespace; no
systemd (so no health-check timers: the tests run ``podman healthcheck run`` themselves); rlimits
may only be lowered. No image registry is reachable here, so ``python:3.11-slim`` is a stand-in
built from Debian's own packages (bookworm's Python is 3.11) with mmdebstrap and imported under
that name: every step of our Dockerfiles and the images' behaviour are tested, not the upstream
base itself.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

BASE_IMAGE = "docker.io/library/python:3.11-slim"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # how pip in a build reaches the package index here
# `podman build` flags: chroot isolation and the host network (what works here), the docker format
# (the OCI format drops HEALTHCHECK), the host's CA bundle for pip.
BUILD_FLAGS = ("--isolation=chroot", "--network=host", "--format", "docker", "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro")
CONTAINERS_CONF = """\
[containers]
netns = "host"
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
_BASE_LOCK = Path("/tmp/chromaguard-test-base-image.lock")  # two test workers must not both build it


def missing() -> str | None:
    """Why podman cannot run the tests here, or None."""
    for tool, package in (("podman", "podman"), ("runc", "runc"), ("mmdebstrap", "mmdebstrap")):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed here (apt-get install {package}); .ci/run installs it"
    if os.geteuid() != 0:
        return "podman runs as root here (rootless needs subuid ranges this machine has not)"
    return None


class Podman:
    def __init__(self, folder: Path) -> None:
        conf = folder / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.tag = uuid.uuid4().hex[:8]
        self.made: list[tuple[str, str]] = []  # (kind, name) to remove at the end

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman", *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check:
            assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
        return done

    def remember(self, kind: str, name: str) -> str:
        self.made.append((kind, name))
        return name

    def healthy(self, container: str, timeout: float = 90) -> None:
        """Docker-style health: the image's own HEALTHCHECK, run as the runtime runs it."""
        deadline = time.monotonic() + timeout
        while self("healthcheck", "run", container, check=False).returncode != 0:
            assert time.monotonic() < deadline, self("logs", container, check=False).stderr[-3000:]
            time.sleep(1)
        status = self("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()
        assert status == "healthy", status

    def close(self) -> None:
        for kind, name in reversed(self.made):
            self(kind, "rm", "-f", name, check=False)


def podman_runtime(folder: Path, base_folder: Path) -> Iterator[Podman]:
    """The body of a module fixture: skipped with the reason where podman cannot run (a failure
    in CI, which must run these tests), the base image stand-in made once per machine."""
    reason = missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the container tests: {reason}")
        pytest.skip(reason)
    runtime = Podman(folder)
    lock = os.open(_BASE_LOCK, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)  # not through a planted link
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if runtime("image", "exists", BASE_IMAGE, check=False).returncode != 0:
            _base_image(runtime, base_folder)
    finally:
        os.close(lock)
    yield runtime
    runtime.close()


def _base_image(runtime: Podman, folder: Path) -> None:
    """The stand-in for python:3.11-slim: Debian's Python with ``python``/``pip`` on the PATH,
    pip allowed to install into it as the official image's is."""
    tar = folder / "base.tar"
    made = subprocess.run(
        ["mmdebstrap", "--variant=minbase", "--include=python3,python3-pip,python3-venv,ca-certificates,bash",
         '--customize-hook=chroot "$1" ln -sf /usr/bin/python3 /usr/local/bin/python',
         '--customize-hook=chroot "$1" ln -sf /usr/bin/pip3 /usr/local/bin/pip',
         '--customize-hook=rm -f "$1"/usr/lib/python3.11/EXTERNALLY-MANAGED',
         "bookworm", str(tar)], capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    runtime("import", "--change", 'CMD ["python3"]', str(tar), BASE_IMAGE, timeout=300)
    tar.unlink()
