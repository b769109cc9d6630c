"""The reload rules of the credentials watcher, step by step on real files and a moved clock."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from chromaguard.access.credentials import CredentialStore, load_store
from chromaguard.access.credentials_watch import CredentialsWatcher

BASE = "tokens:\n  - token: keep\n    name: keep\n    role: read\n"
SCOPED = BASE + "  - token: team\n    name: team\n    role: read\n    tenant: acme\n"


class Scene:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        path.write_text(text)
        self.now = 0.0
        self.applied: list[CredentialStore] = []
        self.watcher = CredentialsWatcher(path, self.load, self.applied.append, self.load(), interval=1.0,
                                          hold=5.0, clock=lambda: self.now)

    def load(self) -> CredentialStore:
        return load_store("token", self.path, "", file_setting="F", inline_setting="I")

    def write_in_place(self, text: str) -> None:
        with open(self.path, "r+") as fh:
            fh.truncate(0)
            fh.write(text)
        os.utime(self.path, ns=(int(self.now * 1e9) + 1, int(self.now * 1e9) + 1))  # a new version, surely

    def rename_in(self, text: str) -> None:
        fresh = self.path.with_suffix(".new")
        fresh.write_text(text)
        fresh.rename(self.path)

    def tick(self, seconds: float = 0.0) -> None:
        self.now += seconds
        asyncio.run(self.watcher.check())

    def principal(self, token: str) -> object:
        return self.watcher.current.check_token(token)


def test_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "tokens.yaml", BASE)
    for _ in range(3):
        scene.tick(10)
    assert scene.applied == []


def test_narrowing_applies_once_still_for_the_settle_time(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "tokens.yaml", SCOPED)
    scene.write_in_place(BASE)  # revokes team
    scene.tick()
    assert scene.applied == []  # just seen: not yet still
    scene.tick(0.4)
    assert scene.applied == []
    scene.tick(0.2)
    assert len(scene.applied) == 1 and scene.principal("team") is None and scene.principal("keep") is not None


@pytest.mark.parametrize("widened", [
    SCOPED.replace("    tenant: acme\n", ""),  # the record cut before its scope: every tenant
    SCOPED.replace("role: read\n    tenant", "role: write\n    tenant"),  # a higher role
    SCOPED + "  - token: new\n    name: new\n    role: read\n",  # a new token
])
def test_widening_in_place_waits_until_the_file_has_been_still_for_the_hold(tmp_path: Path, widened: str) -> None:
    scene = Scene(tmp_path / "tokens.yaml", SCOPED)
    scene.write_in_place(widened)
    scene.tick()
    for _ in range(4):
        scene.tick(1.0)
        assert scene.applied == [], "applied before the file had been still for 5 s"
        assert getattr(scene.principal("team"), "tenant", None) == "acme"
    scene.tick(1.01)
    assert len(scene.applied) == 1


def test_a_rewrite_restarts_the_hold(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "tokens.yaml", SCOPED)
    scene.write_in_place(SCOPED + "  - token: a\n    name: a\n    role: read\n")
    scene.tick()
    scene.tick(4.0)
    scene.write_in_place(SCOPED + "  - token: b\n    name: b\n    role: read\n")  # still being written
    scene.tick(0.1)
    scene.tick(4.0)
    assert scene.applied == []
    scene.tick(1.0)
    assert len(scene.applied) == 1 and scene.principal("b") is not None and scene.principal("a") is None


def test_a_new_inode_proves_nothing(tmp_path: Path) -> None:
    """Renamed into place: narrowing applies after the settle time, widening still waits (an
    editor that renames the old file away and writes a new one is mid-write on a new inode)."""
    scene = Scene(tmp_path / "tokens.yaml", SCOPED)
    scene.rename_in(BASE)
    scene.tick()
    scene.tick(0.5)
    assert len(scene.applied) == 1 and scene.principal("team") is None
    scene.rename_in(SCOPED.replace("    tenant: acme\n", ""))
    scene.tick(0.1)
    scene.tick(4.0)
    assert len(scene.applied) == 1  # held
    scene.tick(1.0)
    assert len(scene.applied) == 2 and getattr(scene.principal("team"), "tenant", "?") is None


def test_a_same_size_change_with_its_mtime_put_back_is_seen(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "tokens.yaml", SCOPED)
    before = scene.path.stat()
    with open(scene.path, "r+") as fh:  # "team" -> "tame": same size
        fh.write(SCOPED.replace("token: team", "token: tame"))
    os.utime(scene.path, ns=(before.st_atime_ns, before.st_mtime_ns))
    scene.tick()
    scene.tick(5.1)  # a new token: the hold
    assert len(scene.applied) == 1 and scene.principal("team") is None and scene.principal("tame") is not None


def test_a_last_line_without_newline_waits_for_the_hold_then_applies(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    scene = Scene(tmp_path / "tokens.yaml", SCOPED)
    with caplog.at_level(logging.WARNING, "chromaguard.auth"):
        scene.write_in_place(BASE.rstrip("\n"))  # narrowing, but perhaps cut short
        scene.tick()
        scene.tick(0.5)
        scene.tick(4.0)
        assert scene.applied == []
        scene.tick(1.0)
    assert len(scene.applied) == 1 and scene.principal("team") is None
    assert sum("may still be being written" in r.getMessage() for r in caplog.records) == 1  # said once


def test_a_broken_file_is_refused_once_and_the_old_credentials_stay(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    scene = Scene(tmp_path / "tokens.yaml", SCOPED)
    with caplog.at_level(logging.ERROR, "chromaguard.auth"):
        scene.write_in_place(SCOPED.replace("    role: read\n    tenant", "     role: read\n    tenant"))
        for _ in range(8):
            scene.tick(1.0)
    assert scene.applied == [] and scene.principal("team") is not None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "not valid YAML at line 7" in errors[0].getMessage()


def test_sighup_applies_at_once_but_never_an_unfinished_file(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "tokens.yaml", SCOPED)
    scene.write_in_place(SCOPED + "  - token: cut")
    assert asyncio.run(scene.watcher.reload("SIGHUP")) is False and scene.applied == []
    scene.write_in_place(SCOPED + "  - token: new\n    name: new\n    role: read\n")
    assert asyncio.run(scene.watcher.reload("SIGHUP")) is True and scene.principal("new") is not None
    scene.tick(10)  # the watcher does not apply the same version again
    assert len(scene.applied) == 1


def test_a_deleted_file_keeps_the_credentials(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "tokens.yaml", SCOPED)
    scene.path.unlink()
    for _ in range(8):
        scene.tick(1.0)
    assert scene.applied == [] and scene.principal("team") is not None


def test_a_reload_keeps_verified_passwords_of_unchanged_users(tmp_path: Path) -> None:
    import bcrypt

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "htpasswd"
    path.write_text(f"alice:{hashed}\nbob:{hashed}\n")
    before = load_store("basic", path, "", file_setting="F", inline_setting="I")
    assert before.check_password("alice", "pw") is not None and before.check_password("bob", "pw") is not None
    other = bcrypt.hashpw(b"new", bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"alice:{hashed}\nbob:{other}\n")
    after = load_store("basic", path, "", file_setting="F", inline_setting="I")
    after.keep_verified(before)
    assert after.cached_password("alice", "pw") is not None  # unchanged: no bcrypt again
    assert after.cached_password("bob", "pw") is None  # a new password: the old one is forgotten


def test_inline_users_are_not_a_change_at_every_reload(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    import bcrypt

    path.write_text(f"alice:{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}\n")
    first = load_store("basic", path, "ci:secret", file_setting="F", inline_setting="I")
    again = load_store("basic", path, "ci:secret", file_setting="F", inline_setting="I")
    assert first.widened_by(again) == ""


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_only_a_regular_file_is_read(tmp_path: Path, kind: str) -> None:
    from chromaguard.access.credentials import CredentialsError

    path = tmp_path / "tokens.yaml"
    if kind == "fifo":
        os.mkfifo(path)  # nobody writes: a blocking read would hang the reload for ever
    elif kind == "device":
        path.symlink_to("/dev/zero")  # endless
    else:
        path.mkdir()
    with pytest.raises(CredentialsError, match="not a regular file|cannot read"):
        load_store("token", path, "", file_setting="F", inline_setting="I")


def test_a_token_in_the_file_and_inline_is_refused(tmp_path: Path) -> None:
    from chromaguard.access.credentials import CredentialsError

    path = tmp_path / "tokens.json"
    path.write_text('[{"token": "shared", "name": "scoped", "role": "read", "tenant": "acme"}]')
    with pytest.raises(CredentialsError, match="is in the file too"):
        load_store("token", path, "shared", file_setting="F", inline_setting="I")


# ---- what the log says, word for word ------------------------------------------------------


def _messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records]


def test_the_defaults_poll_every_second_settle_half_a_second_and_hold_five() -> None:
    watcher = CredentialsWatcher(Path("/nonexistent"), CredentialStore, lambda store: None, CredentialStore())
    assert (watcher.interval, watcher.settle, watcher.hold) == (1.0, 0.5, 5.0)
    asyncio.run(watcher.stop())  # never started: nothing to stop


def test_a_reload_is_logged_with_why_and_how_many_entries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scene = Scene(tmp_path / "tokens.yaml", SCOPED)
    with caplog.at_level(logging.INFO, "chromaguard.auth"):
        scene.write_in_place(BASE)
        scene.tick()
        scene.tick(0.5)
        assert asyncio.run(scene.watcher.reload("SIGHUP")) is True
    assert _messages(caplog) == [(logging.INFO, "credentials reloaded (the file changed): 1 entries"),
                                 (logging.INFO, "credentials reloaded (SIGHUP): 1 entries")]
    assert len(scene.applied) == 2 and scene.applied[-1] is scene.watcher.current
    caplog.clear()
    with caplog.at_level(logging.INFO, "chromaguard.auth"):
        scene.tick(10)  # the version SIGHUP applied is not applied again
        scene.tick(10)
    assert _messages(caplog) == [] and len(scene.applied) == 2


def test_an_applied_version_is_not_applied_again(tmp_path: Path) -> None:
    scene = Scene(tmp_path / "tokens.yaml", SCOPED)
    scene.tick(1.0)  # unchanged
    scene.write_in_place(BASE)
    scene.tick()
    scene.tick(0.5)
    for _ in range(3):
        scene.tick(10)
    assert len(scene.applied) == 1 and scene.principal("team") is None


def test_each_broken_version_is_refused_once_whoever_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scene = Scene(tmp_path / "tokens.yaml", SCOPED)
    with caplog.at_level(logging.ERROR, "chromaguard.auth"):
        scene.write_in_place("tokens: [\n")
        assert asyncio.run(scene.watcher.reload("SIGHUP")) is False  # logged
        for _ in range(3):
            scene.tick(1.0)  # the same version: not logged again
        scene.write_in_place("tokens:\n\t- a\n")
        for _ in range(3):
            scene.tick(1.0)  # another broken version: logged once
    tail = "; the previous credentials stay in force"
    assert _messages(caplog) == [
        (logging.ERROR, f"credentials not reloaded (SIGHUP): F={scene.path}: not valid YAML at line 2, column 1: "
                        f"expected the node content, but found '<stream end>'{tail}"),
        (logging.ERROR, f"credentials not reloaded (the file changed): F={scene.path}: not valid YAML at line 2, "
                        f"column 1: found character '\\t' that cannot start any token{tail}")]


def test_a_wait_is_logged_once_with_the_file_the_reason_and_the_hold(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    scene = Scene(tmp_path / "tokens.yaml", BASE)
    with caplog.at_level(logging.INFO, "chromaguard.auth"):
        scene.write_in_place(SCOPED)
        for _ in range(4):
            scene.tick(1.0)
    assert _messages(caplog) == [(logging.WARNING, f"credentials not reloaded yet: {scene.path}: it adds the token "
                                  "'team'; applied once the file has been unchanged for 5s (send SIGHUP to apply a "
                                  "finished file at once)")]


def test_refusals_are_logged_with_what_to_do(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scene = Scene(tmp_path / "tokens.yaml", SCOPED)
    with caplog.at_level(logging.INFO, "chromaguard.auth"):
        scene.write_in_place(SCOPED + "  - token: cut")
        assert asyncio.run(scene.watcher.reload("SIGHUP")) is False
        scene.write_in_place("tokens: [\n")
        assert asyncio.run(scene.watcher.reload("SIGHUP")) is False
    where = f"F={scene.path}"
    assert _messages(caplog) == [
        (logging.ERROR, f"credentials not reloaded (SIGHUP): {scene.path}: its last line has no newline at the end, "
                        "so it may still be being written; end the file with a newline"),
        (logging.ERROR, f"credentials not reloaded (SIGHUP): {where}: not valid YAML at line 2, column 1: "
                        "expected the node content, but found '<stream end>'; the previous credentials stay in force")]
    assert scene.applied == []


def test_a_deleted_file_is_refused_once_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scene = Scene(tmp_path / "tokens.yaml", SCOPED)
    with caplog.at_level(logging.ERROR, "chromaguard.auth"):
        scene.path.unlink()
        for _ in range(4):
            scene.tick(1.0)
    assert _messages(caplog) == [(logging.ERROR, f"credentials not reloaded (the file changed): F={scene.path}: "
                                                 "cannot read (No such file or directory); the previous credentials "
                                                 "stay in force")]
    assert scene.principal("team") is not None
