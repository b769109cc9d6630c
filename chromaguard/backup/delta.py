"""Delta chunks: a changed chunk stored as its difference from the chunk at its place in the last backup.

Why: Chroma's HNSW index keeps each element's links beside its vector, so adding or changing
1 % of the records rewires neighbours all over the index file, and most chunks change by a few
bytes. Stored whole, those chunks cost a third of a full backup; compressed with the old chunk
as a zstd dictionary (what ``zstd --patch-from`` does) they cost a few percent.

The rules the repository keeps with them:
- a base is always a whole chunk, never a delta: a chunk is read back from at most two;
- the base is found by place: of the last backup's chunks at the new chunk's offset (corrected
  by the shift seen at the last chunk both streams share: a file that grew moves everything
  after it), the one sharing most bytes with it;
- a delta is kept only when it is at most a quarter of the chunk compressed whole; otherwise the
  chunk is stored whole, and the next backups' deltas are taken against it.

Why a quarter: deltas against one base grow with every backup as changes pile up, until the
chunk is stored whole again. Storing it whole sooner pays once to make the next deltas small.
Measured over 30 backups of 50,000 x 384 records, 2 % updated before each: a backup uploaded
15.7 % of a full one on average with a half (and still growing), 12.9 % with a quarter, 13.7 %
with 0.15 (the first incremental: 5.7 %, 8.5 %, 11.8 %).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable
from typing import NamedTuple

import zstandard

WORTH = 0.25  # a delta is kept when it is at most this part of the chunk compressed whole


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
    window = min(max((len(base) + len(raw) - 1).bit_length(), 10), 27)
    return zstandard.ZstdCompressor(dict_data=_dictionary(base), compression_params=_parameters(window)).compress(raw)


@functools.cache
def _parameters(window_log: int) -> zstandard.ZstdCompressionParameters:
    """Zstd's fastest strategy with tables of 4,096 entries, sized for one chunk and its base
    (``CHUNKING["max"]``, 32 KiB, is what they index): level 1's tables are for megabytes, and
    setting them up took half the time of an 8 KiB chunk's delta (55 → 25 µs measured)."""
    return zstandard.ZstdCompressionParameters(window_log=window_log, hash_log=min(window_log, 12),
                                               chain_log=min(window_log, 12), search_log=1, min_match=6,
                                               target_length=0, strategy=zstandard.STRATEGY_FAST,
                                               write_content_size=True)


def decompressor(base: bytes) -> zstandard.ZstdDecompressor:
    """What opens a delta of ``base``: one per read (a decompressor is not thread-safe)."""
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

    def base_for(self, offset: int, length: int) -> Location | None:
        """The whole chunk a new chunk at ``offset`` is most likely a changed copy of.

        That is the old chunk sharing most bytes with it: where an edit moved a cut, the chunk at
        the new chunk's start may overlap it by a few bytes only.
        """
        old = offset - self._shift
        first = max(0, bisect.bisect_right(self._starts, old) - 1)
        last = bisect.bisect_left(self._starts, old + length)
        best: Location | None = None
        most = 0
        for i in range(first, last):
            start = self._starts[i]
            end = self._starts[i + 1] if i + 1 < len(self._starts) else self._end
            shared = min(end, old + length) - max(start, old)
            if shared > most and self._bases[i] is not None:
                best, most = self._bases[i], shared
        return best
