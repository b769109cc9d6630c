"""A repository restore unpacks the stream as it is read back: what fails mid-way, and where."""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from support.procs import clean_env
from support.repositories import archive_stream, one_line_error, plant_manifest, write_stream

from chromaguard.backup.archive import CannotUnpack
from chromaguard.backup.repository import CorruptBackup, Repository
from chromaguard.backup.restore import VerifyError, restore_from, verify_in
from chromaguard.backup.snapshot import new_manifest

SQLITE = "data/chroma.sqlite3"


def _backup(tmp_path: Path, stream: bytes) -> tuple[Repository, dict]:
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    return repo, write_stream(repo, stream)


def _target(tmp_path: Path) -> Path:
    target = tmp_path / "parent" / "data"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("mine")
    return target


def _untouched(target: Path) -> None:
    """The data dir as it was (its lock file aside), and nothing of the restore left beside it."""
    assert {p.name for p in target.iterdir()} - {".chromaguard.lock"} == {"keep.txt"}
    assert (target / "keep.txt").read_text() == "mine"
    assert [p.name for p in target.parent.iterdir()] == ["data"]


def test_a_chunk_corrupt_late_in_the_stream_is_named_and_nothing_is_swapped(tmp_path: Path) -> None:
    # 40 MiB of incompressible data: three packs, the last read long after the first files were unpacked.
    repo, made = _backup(tmp_path, archive_stream({SQLITE: os.urandom(1 << 20), "data/seg/index.bin":
                                                   os.urandom(40 << 20)}))
    last = made["packs"][made["chunks"][-1][0]]
    assert last != made["packs"][made["chunks"][0][0]]
    pack = tmp_path / "repo" / "packs" / last[:2] / last
    body = bytearray(pack.read_bytes())
    body[len(body) // 2] ^= 1
    pack.write_bytes(bytes(body))
    target = _target(tmp_path)
    threads = threading.active_count()
    with pytest.raises(CorruptBackup, match=rf"backup {made['id']}: chunk .* in pack {last[:16]}… .* is corrupt"):
        restore_from(repo, made["id"], target, force=True)
    _untouched(target)
    assert threading.active_count() == threads  # the reading thread ended with it


def test_a_stream_whose_whole_checksum_differs_is_refused_after_unpacking_and_nothing_is_swapped(
        tmp_path: Path) -> None:
    # Every chunk is what its name says: only the stream's own checksum (read at its very end) catches
    # a manifest that lists them wrongly.
    repo, made = _backup(tmp_path, archive_stream({SQLITE: os.urandom(1 << 20)}))
    plant_manifest(tmp_path / "repo", {**made, "stream": {**made["stream"], "sha256": "0" * 64}})
    target = _target(tmp_path)
    with pytest.raises(CorruptBackup, match="does not match its checksum"):
        restore_from(repo, made["id"], target, force=True)
    _untouched(target)


def test_an_unlisted_member_ends_the_restore_at_once_and_its_reading_thread(tmp_path: Path) -> None:
    repo, made = _backup(tmp_path, archive_stream({SQLITE: os.urandom(1 << 20), "data/big.bin": os.urandom(40 << 20)},
                                                  extra={"data/planted.bin": b"x"}))
    target = _target(tmp_path)
    threads = threading.active_count()
    read: list[int] = []
    with pytest.raises(VerifyError, match=f"backup {made['id']}: data/planted.bin is not listed in the manifest"):
        restore_from(repo, made["id"], target, force=True, progress=read.append)
    _untouched(target)
    assert threading.active_count() == threads
    assert sum(read) < 40 << 20  # it stopped reading, not read on to the end


def test_a_test_restore_that_fails_is_noted_and_leaves_no_scratch_dir(tmp_path: Path) -> None:
    repo, made = _backup(tmp_path, archive_stream({SQLITE: b"not sqlite"}, extra={"data/planted.bin": b"x"}))
    scratch = tmp_path / "staging"
    scratch.mkdir()
    with pytest.raises(VerifyError, match="not listed"):
        verify_in(repo, made["id"], into=scratch)
    assert list(scratch.iterdir()) == []
    assert repo.backups()[0].verified is not None and repo.backups()[0].verified["ok"] is False


def test_a_file_that_cannot_be_written_while_unpacking_is_one_line_naming_it(tmp_path: Path) -> None:
    # The kernel refuses writes past RLIMIT_FSIZE (EFBIG; Python ignores SIGXFSZ): a real failing
    # write, as a full disk gives, in the restore's own process.
    repo, made = _backup(tmp_path, archive_stream({SQLITE: os.urandom(1 << 20), "data/seg/index.bin":
                                                   os.urandom(8 << 20)}))
    target = _target(tmp_path)

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, resource.RLIM_INFINITY))

    result = subprocess.run([sys.executable, "-m", "chromaguard", "restore", str(tmp_path / "repo"), "--data-dir",
                             str(target), "--force"], capture_output=True, text=True, env=clean_env(), timeout=120,
                            preexec_fn=small_files)
    one_line_error(result, f"cannot write data/seg/index.bin of backup {made['id']} into {target.parent}",
                   "free space or fix the permissions there")
    _untouched(target)
    # A test restore failing so says where it unpacks, and the backup is not noted as bad: the disk is.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = subprocess.run([sys.executable, "-m", "chromaguard", "verify", str(tmp_path / "repo")],
                            capture_output=True, text=True, env=clean_env(TMPDIR=str(scratch)), timeout=120,
                            preexec_fn=small_files)
    one_line_error(result, f"into {scratch} (File too large)")
    assert repo.backups()[0].verified is None
    assert list(scratch.iterdir()) == []


def test_a_member_that_is_not_a_regular_file_or_a_manifest_entry_without_its_checksum_is_named(
        tmp_path: Path) -> None:
    link = tarfile.TarInfo("data/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    listed = {"path": "data/link", "size": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    repo, made = _backup(tmp_path, _stream([*_listing(), listed], [link]))
    with pytest.raises(VerifyError, match=f"backup {made['id']}: data/link is not a regular file"):
        restore_from(repo, made["id"], _target(tmp_path), force=True)
    for bad in ({"path": "data/x", "size": 1}, {"path": "data/a\0b", "size": 0, "sha256": "0" * 64}, "junk"):
        repo, made = _backup(tmp_path / str(len(str(bad))), _stream([*_listing(), bad], []))
        with pytest.raises(VerifyError, match="the manifest lists a file without a path, a size and a sha256"):
            verify_in(repo, made["id"], into=tmp_path)


def test_a_killed_restore_s_copy_inside_a_mount_point_does_not_make_it_count_as_not_empty(tmp_path: Path) -> None:
    # A volume's restore unpacks inside it: killed, it leaves its staged copy there, and the next
    # restore (no --force) must take the volume as the empty one it was.
    repo, made = _backup(tmp_path, archive_stream({SQLITE: b"not sqlite"}))
    target = tmp_path / "volume"
    (target / ".chromaguard-restore-abcd1234" / "seg").mkdir(parents=True)
    with pytest.raises(VerifyError) as refused:
        restore_from(repo, made["id"], target)
    assert "not empty" not in str(refused.value) and "engine cannot open" in str(refused.value)
    assert [p.name for p in target.iterdir()] == [".chromaguard.lock"]  # the leftover removed, nothing else


def _listing() -> list[dict]:
    return [{"path": SQLITE, "size": 2, "sha256": hashlib.sha256(b"db").hexdigest()}]


def _stream(files: list, members: list[tarfile.TarInfo]) -> bytes:
    """A tar stream with a hand-made archive manifest: ``files`` as listed, then chroma.sqlite3 and ``members``."""
    manifest = json.dumps({**new_manifest([], [], None, "offline"), "files": files}).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, body in (("manifest.json", manifest), (SQLITE, b"db")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for member in members:
            tar.addfile(member)
    return out.getvalue()


def test_a_name_given_twice_in_two_spellings_is_the_backup_s_fault_and_noted(tmp_path: Path) -> None:
    again = tarfile.TarInfo("data/./chroma.sqlite3")
    again.size = 2
    listed = {"path": again.name, "size": 2, "sha256": hashlib.sha256(b"db").hexdigest()}
    stream = _stream([*_listing(), listed], [])
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r|") as tar:  # the same stream, the member added
        members = [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar]  # type: ignore[union-attr]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for member, body in [*members, (again, b"db")]:
            tar.addfile(member, io.BytesIO(body))
    repo, made = _backup(tmp_path, out.getvalue())
    with pytest.raises(VerifyError, match="data/./chroma.sqlite3 cannot be unpacked .*: the backup is malformed"):
        verify_in(repo, made["id"], into=tmp_path)
    assert repo.backups()[0].verified is not None and repo.backups()[0].verified["ok"] is False


def test_a_backup_larger_than_the_free_space_is_refused_before_a_byte_is_written(tmp_path: Path) -> None:
    huge = {"path": "data/seg/index.bin", "size": 10**15, "sha256": "0" * 64}  # a petabyte, as listed
    repo, made = _backup(tmp_path, _stream([*_listing(), huge], []))
    target = _target(tmp_path)
    with pytest.raises(CannotUnpack, match=rf"backup {made['id']} unpacks to 1000000000 MB and .* MB free"):
        restore_from(repo, made["id"], target, force=True)
    _untouched(target)
    with pytest.raises(CannotUnpack, match="free space there"):
        verify_in(repo, made["id"], into=tmp_path)
    assert repo.backups()[0].verified is None  # the place is at fault, not the backup
