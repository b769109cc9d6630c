"""Where a changed chunk finds its base, and what a delta frame needs to open."""

from __future__ import annotations

import hashlib
import os

import zstandard

from chromaguard.backup import delta
from chromaguard.backup.delta import Location, PreviousStream, Stored


def _at(name: str, length: int, pack: str = "p") -> Location:
    return Location(pack, 0, 1, length, hashlib.sha256(name.encode()).hexdigest())


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def test_a_chunk_finds_the_old_chunk_at_its_place() -> None:
    a, b, c = _at("a", 100), _at("b", 100), _at("c", 100)
    previous = PreviousStream([Stored(a, None), Stored(b, None), Stored(c, None)], lambda at: True)
    assert previous.base_for(0) == a
    assert previous.base_for(150) == b
    assert previous.base_for(299) == c
    assert previous.base_for(300) is None  # past the old stream's end: data that is new, not changed


def test_a_file_that_grew_moves_what_follows_and_a_shared_chunk_lines_the_streams_up_again() -> None:
    a, b, c = _at("a", 100), _at("b", 100), _at("c", 100)
    previous = PreviousStream([Stored(a, None), Stored(b, None), Stored(c, None)], lambda at: True)
    # New stream: 40 bytes inserted in front, then "a" unchanged (at 40), then a changed "b".
    previous.shared(_digest("a"), 40)
    assert previous.base_for(140) == b
    assert previous.base_for(250) == c


def test_a_repeated_chunk_lines_up_at_its_nearest_place() -> None:
    zeros = [_at("zero", 100) for _ in range(5)]
    tail = _at("tail", 100)
    previous = PreviousStream([Stored(z, None) for z in zeros] + [Stored(tail, None)], lambda at: True)
    previous.shared(_digest("zero"), 410)  # 10 bytes were inserted before the fifth zero chunk
    assert previous.base_for(510) == tail


def test_a_base_is_never_a_delta_and_never_one_that_is_gone() -> None:
    whole, changed, lost = _at("whole", 100), _at("changed", 100, pack="q"), _at("lost", 100, pack="gone")
    previous = PreviousStream([Stored(changed, whole), Stored(lost, None)], lambda at: at.pack != "gone")
    assert previous.base_for(10) == whole  # the delta's own base, not the delta
    assert previous.base_for(110) is None


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
