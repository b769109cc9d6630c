"""Write chromaguard/templates/requirements.lock: every package the image installs, pinned to the
version the test suite runs with, with the sha256 of each wheel pip picks for Linux on x86_64 and
on aarch64 (CPython 3.11, glibc 2.17 to 2.36; python:3.11-slim is Debian 12 or 13, glibc 2.36 or 2.41). Both Dockerfiles
install from it with ``--require-hashes --no-deps``: a wheel changed on the index, or a package
nobody locked, stops the build instead of ending up in the image.

    python deploy/lock.py     # after a dependency changed; it asks PyPI, and takes a minute

The versions are those installed where it runs (``pip freeze``), so run it where the test suite
passes. ``setuptools``, which builds chromaguard from its source in deploy/Dockerfile, is the newest
that pyproject.toml's build requirement allows.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "chromaguard" / "templates" / "requirements.lock"
PLATFORMS = {arch: [f"manylinux_2_{minor}_{arch}" for minor in range(36, 16, -1)] + [f"manylinux2014_{arch}"]
             for arch in ("x86_64", "aarch64")}  # newest first: the order pip on such a machine prefers
_PIP = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "--cert",
        "/etc/ssl/certs/ca-certificates.crt"]


def _report(args: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        done = subprocess.run([*_PIP, "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
                               str(report), *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise Unresolved(done.stderr)
        return json.loads(report.read_text())["install"]


class Unresolved(Exception):
    def missing(self) -> str | None:
        """The pin no wheel was found for, as pip names it."""
        found = re.search(r"No matching distribution found for (\S+)==", str(self))
        return found.group(1).lower() if found else None


def _pins() -> dict[str, str]:
    """The image's packages (chromaguard's dependencies, resolved with the versions installed
    here as constraints) and the build backend, name to version."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
        frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True,
                                capture_output=True, text=True).stdout
        constraints.write("\n".join(line for line in frozen.splitlines() if "==" in line) + "\n")
        constraints.flush()
        found = _report(["-c", constraints.name, str(ROOT)])
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    found += _report(["--no-deps", *build])
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in found
            if item["metadata"]["name"] != "chromaguard"}


def _hashes(pins: dict[str, str]) -> dict[str, set[str]]:
    """The sha256 of the wheel pip picks for each pin on each platform; of the source archive
    where a platform has no wheel (pip builds it in the image then)."""
    found: dict[str, set[str]] = {name: set() for name in pins}
    for platforms in PLATFORMS.values():
        wanted = dict(pins)
        while wanted:
            try:
                with tempfile.TemporaryDirectory() as target:
                    items = _report(["--no-deps", "--only-binary=:all:", "--python-version", "3.11",
                                     "--implementation", "cp", *(a for p in platforms for a in ("--platform", p)),
                                     "--target", target, *(f"{n}=={v}" for n, v in wanted.items())])
                break
            except Unresolved as exc:
                name = exc.missing()
                if name is None or name not in wanted:
                    raise
                found[name].add(_sdist_hash(name, wanted.pop(name)))
        for item in items:
            found[item["metadata"]["name"].lower()].add(item["download_info"]["archive_info"]["hashes"]["sha256"])
    return found


def _sdist_hash(name: str, version: str) -> str:
    with tempfile.TemporaryDirectory() as into:
        subprocess.run([*_PIP, "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "-d", into, f"{name}=={version}"], check=True, capture_output=True)
        (archive,) = Path(into).iterdir()
        return hashlib.sha256(archive.read_bytes()).hexdigest()


def main() -> None:
    pins = _pins()
    hashes = _hashes(pins)
    lines = ["# Written by deploy/lock.py: what the image installs, pinned and hashed (x86_64 and aarch64).",
             "# Regenerate after changing a dependency: python deploy/lock.py"]
    for name in sorted(pins):
        lines.append(f"{name}=={pins[name]} " + " ".join(f"--hash=sha256:{h}" for h in sorted(hashes[name])))
    LOCK.write_text("\n".join(lines) + "\n")
    print(f"{LOCK.relative_to(ROOT)}: {len(pins)} packages")


if __name__ == "__main__":
    main()
