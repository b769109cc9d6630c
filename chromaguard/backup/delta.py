"""Delta chunks: a changed chunk stored as its difference from the chunk at its place in the last backup.

Why: Chroma's HNSW index keeps each element's links beside its vector, so adding or changing
1 % of the records rewires neighbours all over the index file, and most chunks change by a few
bytes. Stored whole, those chunks cost a third of a full backup; compressed with the old chunk
as a zstd dictionary (what ``zstd --patch-from`` does) they cost a few percent.

The rules the repository keeps with them:
- a base is always a whole chunk, never a delta: a chunk is read back from at most two;
- the base is found by place: the chunk of the last backup's stream at the same offset, the
  offset corrected by the shift seen at the last chunk both streams share (a file that grew
  moves everything after it);
- a delta is kept only when it is at most half the whole chunk's size; otherwise the chunk is
  stored whole, and the next backups' deltas are taken against it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import NamedTuple

import zstandard

WORTH = 0.5  # a delta is kept when it is at most this part of the chunk compressed whole


class Location(NamedTuple):
    """Where a stored chunk is: its pack, its blob's offset and length there, and what it holds."""

    pack: str
    offset: int
    length: int
    raw_length: int
    digest: str


class Stored(NamedTuple):
    """A chunk as a backup holds it: its blob, and the whole chunk the blob is a delta of, if any."""

    at: Location
    base: Location | None


def compress(raw: bytes, base: bytes) -> bytes:
    """``raw`` as a zstd frame that only opens with ``base`` as its dictionary."""
    return zstandard.ZstdCompressor(level=1, dict_data=_dictionary(base)).compress(raw)


def decompressor(base: bytes) -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(dict_data=_dictionary(base))


def _dictionary(base: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


class PreviousStream:
    """The last backup's chunks by their offset in its stream: where a new chunk finds its base."""

    def __init__(self, chunks: list[Stored], usable: Callable[[Location], bool]) -> None:
        self._starts: list[int] = []
        self._bases: list[Location | None] = []
        self._at: dict[str, list[int]] = {}
        offset = 0
        for chunk in chunks:
            base = chunk.base or chunk.at  # a delta's base, so that a base is never a delta
            self._starts.append(offset)
            self._bases.append(base if usable(base) else None)
            self._at.setdefault(chunk.at.digest, []).append(offset)
            offset += chunk.at.raw_length
        self._end = offset
        self._shift = 0  # new offset minus old offset, at the last chunk both streams hold

    def shared(self, digest: str, offset: int) -> None:
        """A chunk of the new stream the last one holds too: the streams line up here."""
        starts = self._at.get(digest)
        if starts:
            expected = offset - self._shift
            i = bisect.bisect_left(starts, expected)  # the nearest of its places (a run of zeros repeats)
            self._shift = offset - min(starts[max(0, i - 1):i + 1], key=lambda start: abs(start - expected))

    def base_for(self, offset: int) -> Location | None:
        """The whole chunk a new chunk at ``offset`` is most likely a changed copy of."""
        old = offset - self._shift
        if not 0 <= old < self._end:
            return None
        return self._bases[bisect.bisect_right(self._starts, old) - 1]
