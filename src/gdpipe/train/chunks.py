"""The fixed chunks the torch variant sums over, and how they are spread over processes.

The data's points are cut into chunks of `gdpipe.linear.CHUNK` (the last one shorter), always the same
for the same n. Each chunk's sums are taken whole by one process, and the chunks' sums are added in
float64, exactly rounded: the total is the same bits whichever process took which chunk.

    shard(n=100_000, world=3, rank=1)   -> (49152, 81920): chunks 3 and 4 of 7 (16 Ki points each)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from gdpipe.linear import CHUNK

# At most this many chunks go through autograd at once (4 MiB of float32 temporaries): a shard's
# temporaries stay this size, however many points the shard holds.
BLOCK_CHUNKS = 64


def count(n: int) -> int:
    """The number of chunks of n points."""
    return -(-n // CHUNK)


def shard_chunks(n: int, world: int, rank: int) -> range:
    """The chunks process `rank` of `world` takes: a contiguous run, the first ranks one more when they do not
    divide evenly; empty for a rank beyond the chunk count."""
    per_rank, extra = divmod(count(n), world)
    first = rank * per_rank + min(rank, extra)
    return range(first, first + per_rank + (rank < extra))


def shard(n: int, world: int, rank: int) -> tuple[int, int]:
    """The points [start, stop) of process `rank`'s chunks: the only part of the data set it reads."""
    chunks = shard_chunks(n, world, rank)
    return min(chunks.start * CHUNK, n), min(chunks.stop * CHUNK, n)


def blocks(size: int) -> Iterator[tuple[int, int, int]]:
    """(start, rows, columns) of consecutive 2-D views of a shard of `size` points that starts on a chunk
    boundary: one row per chunk, at most BLOCK_CHUNKS rows each, the shorter last chunk a block of its own."""
    full, tail = divmod(size, CHUNK)
    for first in range(0, full, BLOCK_CHUNKS):
        rows = min(BLOCK_CHUNKS, full - first)
        yield first * CHUNK, rows, CHUNK
    if tail:
        yield full * CHUNK, 1, tail


def total(parts: Iterable[float]) -> float:
    """The sum of `parts`, exactly rounded to float64 (math.fsum), so the same in any order; NaN for inf - inf."""
    try:
        return math.fsum(parts)
    except ValueError:  # +inf and -inf among the parts: float addition's answer
        return math.nan
