"""Where a changed chunk finds its base, and what a delta frame needs to open."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import tarfile
import tracemalloc
from pathlib import Path

import pytest
import zstandard
from support.repositories import pack_reads, plant_manifest, read_back, tar_stream, write_stream

from chromaguard.backup import delta
from chromaguard.backup.delta import Location, PreviousStream, Stored
from chromaguard.backup.repository import CorruptBackup, Repository, new_id


def _at(name: str, length: int, pack: str = "p") -> Location:
    return Location(pack, 0, 1, length, hashlib.sha256(name.encode()).hexdigest())


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def test_a_chunk_finds_the_old_chunk_at_its_place() -> None:
    a, b, c = _at("a", 100), _at("b", 100), _at("c", 100)
    previous = PreviousStream([Stored(a, None), Stored(b, None), Stored(c, None)], lambda at: True)
    assert previous.base_for(0, 100) == a
    assert previous.base_for(150, 10) == b
    assert previous.base_for(299, 1) == c
    assert previous.base_for(300, 50) is None  # past the old stream's end: data that is new, not changed


def test_where_a_cut_moved_the_base_is_the_old_chunk_sharing_most_bytes() -> None:
    a, b, c = _at("a", 100), _at("b", 100), _at("c", 100)
    previous = PreviousStream([Stored(a, None), Stored(b, None), Stored(c, None)], lambda at: True)
    assert previous.base_for(90, 100) == b  # starts in "a" but shares 90 bytes with "b", 10 with "a"
    assert previous.base_for(10, 280) == b  # spans all three: "b" whole is the most
    assert previous.base_for(-50, 60) == a  # new data in front that runs into "a"


def test_an_unusable_old_chunk_gives_way_to_the_next_best() -> None:
    a, gone = _at("a", 100), _at("gone", 100, pack="gone")
    previous = PreviousStream([Stored(a, None), Stored(gone, None)], lambda at: at.pack != "gone")
    assert previous.base_for(60, 100) == a  # 60 bytes shared with a lost chunk, 40 with "a"


def test_a_file_that_grew_moves_what_follows_and_a_shared_chunk_lines_the_streams_up_again() -> None:
    a, b, c = _at("a", 100), _at("b", 100), _at("c", 100)
    previous = PreviousStream([Stored(a, None), Stored(b, None), Stored(c, None)], lambda at: True)
    # New stream: 40 bytes inserted in front, then "a" unchanged (at 40), then a changed "b".
    previous.shared(_digest("a"), 40)
    assert previous.base_for(140, 100) == b
    assert previous.base_for(250, 40) == c


def test_a_repeated_chunk_lines_up_at_its_nearest_place() -> None:
    zeros = [_at("zero", 100) for _ in range(5)]
    tail = _at("tail", 100)
    previous = PreviousStream([Stored(z, None) for z in zeros] + [Stored(tail, None)], lambda at: True)
    previous.shared(_digest("zero"), 410)  # 10 bytes were inserted before the fifth zero chunk
    assert previous.base_for(510, 100) == tail


def test_a_base_is_never_a_delta_and_never_one_that_is_gone() -> None:
    whole, changed, lost = _at("whole", 100), _at("changed", 100, pack="q"), _at("lost", 100, pack="gone")
    previous = PreviousStream([Stored(changed, whole), Stored(lost, None)], lambda at: at.pack != "gone")
    assert previous.base_for(10, 80) == whole  # the delta's own base, not the delta
    assert previous.base_for(110, 80) is None


def test_a_delta_is_small_for_a_small_change_and_opens_only_with_its_base() -> None:
    base = os.urandom(8192)
    changed = bytearray(base)
    for i in range(0, 8192, 1024):
        changed[i:i + 4] = b"\x00\x01\x02\x03"
    frame = delta.compress(bytes(changed), base)
    assert len(frame) < len(zstandard.ZstdCompressor(level=1).compress(bytes(changed))) * 0.1
    assert delta.decompressor(base).decompress(frame) == bytes(changed)
    try:  # with another base it opens wrong, or not at all: the chunk's sha256 is what tells
        wrong = delta.decompressor(os.urandom(8192)).decompress(frame)
    except zstandard.ZstdError:
        wrong = b""
    assert wrong != bytes(changed)


def test_every_small_change_goes_up_as_a_delta_with_bases_read_side_by_side(tmp_path: Path) -> None:
    # 48 MiB: three packs of new chunks, so the two upload threads read their bases at once.
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    data = bytearray(os.urandom(24 << 20).hex().encode())  # compressible, so reading a base decompresses
    first = write_stream(repo, tar_stream(bytes(data)))
    for at in range(0, len(data), 64 << 10):  # a few bytes every 64 KiB: each changes one chunk
        data[at:at + 4] = b"\x00\x01\x02\x03"
    second = write_stream(repo, tar_stream(bytes(data)))
    changed = len(second["chunks"]) - second["stats"]["reused_chunks"]
    assert changed >= len(data) // (64 << 10)
    # Where the edit erased a cut (about one edit in 200), the new chunk is two old ones merged:
    # half of it is new to either base, so its delta is about half its size and it is stored whole.
    assert changed - second["stats"]["delta_chunks"] <= changed // 50, second["stats"]
    assert second["stats"]["stored_bytes"] < first["stats"]["stored_bytes"] * 0.01
    with tarfile.open(fileobj=io.BytesIO(read_back(repo, second["id"])), mode="r|") as tar:
        for member in tar:
            if member.name == "data/index.bin":
                fh = tar.extractfile(member)
                assert fh is not None and fh.read() == bytes(data)


def test_backups_read_in_threads_side_by_side_come_back_whole(tmp_path: Path) -> None:
    # Upload threads read bases and a restore may run beside a verify: a decompressor shared
    # between threads corrupts what it opens, so each read must use its own.
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    data = os.urandom(4 << 20).hex().encode()
    stream = tar_stream(data)
    backup = write_stream(repo, stream)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert all(got == stream for got in pool.map(lambda _: read_back(repo, backup["id"]), range(8)))


def test_a_forged_manifest_naming_huge_bases_cannot_make_a_backup_read_the_repository_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Unencrypted, anyone who can write the bucket can plant a newest manifest. Each of its chunks
    # names a "base" covering nearly the whole pack: read for every new chunk at once, they would
    # be the pack's size times the chunks of a batch.
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    data = bytearray(os.urandom(1 << 20))
    first = write_stream(repo, tar_stream(bytes(data)))
    pack_size = repo.size()
    forged = {**first, "id": new_id(), "version": 2, "bases": [], "chunks": []}
    for k, entry in enumerate(first["chunks"]):
        forged["bases"].append([0, k, pack_size - k, pack_size - k, "ab" * 32])
        forged["chunks"].append([*entry, k])
    plant_manifest(tmp_path / "repo", forged)
    asked = pack_reads(monkeypatch)
    for at in range(0, len(data), 4096):
        data[at] ^= 1  # every chunk changed a little: each looks for its base
    second = write_stream(repo, tar_stream(bytes(data)))
    assert sum(asked) <= 2 * len(data) + (1 << 16), f"{sum(asked)} bytes of bases read for a 1 MiB backup"
    assert read_back(repo, second["id"]) == tar_stream(bytes(data))  # the forged bases never made it in


def test_a_manifest_naming_a_chunk_stored_larger_than_it_could_be_is_refused(tmp_path: Path) -> None:
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    first = write_stream(repo, tar_stream(os.urandom(1 << 16)))
    forged = {**first, "id": new_id(), "chunks": [[p, o, 1 << 24, raw, d] for p, o, _, raw, d in first["chunks"]]}
    plant_manifest(tmp_path / "repo", forged)
    with pytest.raises(CorruptBackup, match="forget"):
        repo.manifest(forged["id"])


def test_a_backup_made_over_many_others_asks_for_about_its_own_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Sixteen backups, each changing a little everywhere: the newest one's chunks are spread over
    # sixteen packs in turn. Read whole, pack after pack, that was many times the stream.
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    data = bytearray(os.urandom(4 << 20))
    for round_ in range(16):
        for at in range(round_ * 4096, len(data), 16 * 4096):
            data[at:at + 8] = os.urandom(8)
        newest = write_stream(repo, tar_stream(bytes(data)))
    fetched = pack_reads(monkeypatch)
    assert read_back(repo, newest["id"]) == tar_stream(bytes(data))
    stored = sum(entry[2] for entry in [*newest["chunks"], *newest.get("bases", [])])  # with the bases' own
    assert sum(fetched) <= 1.1 * stored, (sum(fetched), stored)


def test_a_restore_holds_a_window_of_bases_not_every_base_it_opens(tmp_path: Path) -> None:
    # A forged manifest (unencrypted: anyone who can write the bucket) whose 96 deltas each have a
    # base of 1 MiB stored in a few bytes: counted as stored, a window would hold all 96 opened.
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    pack, bases, chunks, whole = bytearray(), [], [], hashlib.sha256()
    for i in range(96):
        base = i.to_bytes(8, "big") + bytes((1 << 20) - 8)
        blob = zstandard.ZstdCompressor(level=1).compress(base)
        bases.append([0, len(pack), len(blob), len(base), hashlib.sha256(base).hexdigest()])
        pack += blob
        raw = base[:-1] + b"\x01"
        blob = delta.compress(raw, base)
        chunks.append([0, len(pack), len(blob), len(raw), hashlib.sha256(raw).hexdigest(), i])
        pack += blob
        whole.update(raw)
    name = hashlib.sha256(pack).hexdigest()
    (tmp_path / "repo" / "packs" / name[:2]).mkdir(parents=True, exist_ok=True)
    (tmp_path / "repo" / "packs" / name[:2] / name).write_bytes(bytes(pack))
    backup_id = new_id()
    manifest = {"format": "chromaguard-repository-backup", "version": 2, "id": backup_id, "time": 1.7e9,
                "packs": [name], "chunks": chunks, "bases": bases, "stats": {}, "snapshot": {"collections": []},
                "stream": {"size": 96 << 20, "sha256": whole.hexdigest()}}
    plant_manifest(tmp_path / "repo", manifest)

    class Discard:
        def write(self, data: bytes) -> int:
            return len(data)

    tracemalloc.start()
    try:
        repo.read(backup_id, Discard())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 56 << 20, f"{peak >> 20} MiB held to read 96 chunks of 1 MiB"
