"""The image installs every dependency from a lock, pinned and checked by sha256: the lock covers
what chromaguard needs, at the versions this suite runs with, and both Dockerfiles use it."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from chromaguard.init import dockerfile_text, template

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)(?P<hashes>( --hash=sha256:[0-9a-f]{64})+)")
REGENERATE = "regenerate it: python deploy/lock.py"


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in template("requirements.lock").splitlines():
        if not line or line.startswith("#"):
            continue
        found = LINE.fullmatch(line)
        assert found, f"not a pinned, hashed line: {line[:80]}"
        name = canonicalize_name(found["name"])
        assert name not in pins, f"{name} is locked twice"
        pins[name] = found["version"]
    return pins


def _applies(requirement: Requirement, extra: str = "") -> bool:
    environment = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux", "extra": extra}
    return requirement.marker is None or requirement.marker.evaluate(environment)


def test_every_dependency_is_locked_at_a_version_it_allows_and_this_suite_runs() -> None:
    pins = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build = {canonicalize_name(Requirement(r).name): Requirement(r) for r in project["build-system"]["requires"]}
    for requirement in [*filter(_applies, map(Requirement, project["project"]["dependencies"])), *build.values()]:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is a dependency but not in the lock; {REGENERATE}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], REGENERATE)
    for name, version in pins.items():
        if name in build:
            continue  # what builds chromaguard in the image; pip fetches its own here
        installed = distribution(name).version
        assert installed == version, f"the image would run {name} {version}, the tests run {installed}; {REGENERATE}"


def test_the_lock_holds_what_each_locked_package_needs() -> None:
    # Installed with --no-deps: a dependency left out would be missing in the image.
    # The extras a locked package asks of another count too (chromadb's uvicorn[standard] needs watchfiles).
    pins = _lock()
    wanted = [(name, "") for name in pins]
    seen: set[tuple[str, str]] = set()
    while wanted:
        name, extra = wanted.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for requirement in map(Requirement, requires):
            if _applies(requirement, extra):
                needed = canonicalize_name(requirement.name)
                assert needed in pins, (f"{name}{f'[{extra}]' if extra else ''} needs {requirement.name}", REGENERATE)
                wanted.extend((needed, e) for e in requirement.extras)


def test_both_dockerfiles_install_from_the_lock_by_hash_and_fetch_nothing_else() -> None:
    for text in ((ROOT / "deploy" / "Dockerfile").read_text(), dockerfile_text("chromaguard-0.1.0-py3-none-any.whl",
                                                                                "0" * 64)):
        installs = [line for line in text.splitlines() if "pip install" in line]
        assert any("--require-hashes --no-deps -r /tmp/requirements.lock" in line for line in installs), installs
        assert all("--no-deps" in line for line in installs), installs
