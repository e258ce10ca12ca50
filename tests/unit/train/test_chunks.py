"""train/chunks.py: fixed chunks of the data, spread over processes in contiguous runs, summed exactly."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from gdpipe.linear import CHUNK
from gdpipe.train import chunks


@pytest.mark.parametrize("n", [1, 4, CHUNK - 1, CHUNK, CHUNK + 1, 7 * CHUNK, 7 * CHUNK + 5, 1_200_000])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7, 100])
def test_shards_cover_every_point_once_in_order_and_hold_whole_chunks(n, world):
    shards = [chunks.shard(n, world, rank) for rank in range(world)]
    assert shards[0][0] == 0 and shards[-1][1] == n
    assert all(stop == start for (_, stop), (start, _) in itertools.pairwise(shards))  # contiguous, in order
    assert all(start % CHUNK == 0 for start, stop in shards if stop > start)  # whole chunks: never split
    sizes = [len(chunks.shard_chunks(n, world, rank)) for rank in range(world)]
    assert sum(sizes) == chunks.count(n) == math.ceil(n / CHUNK)
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)  # balanced, the extra ones first


def test_a_rank_beyond_the_chunk_count_gets_nothing():
    assert chunks.shard(CHUNK + 1, 3, 2) == (CHUNK + 1, CHUNK + 1)
    assert [chunks.shard(4, 2, rank) for rank in range(2)] == [(0, 4), (4, 4)]


@pytest.mark.parametrize("size", [0, 4, CHUNK, 3 * CHUNK + 17, chunks.BLOCK_CHUNKS * CHUNK, 130 * CHUNK + 1])
def test_blocks_are_rows_of_whole_chunks_covering_the_shard(size):
    blocks = list(chunks.blocks(size))
    assert sum(rows * columns for _, rows, columns in blocks) == size
    position = 0
    for start, rows, columns in blocks:
        assert start == position and 1 <= rows <= chunks.BLOCK_CHUNKS
        assert columns == CHUNK or (rows == 1 and start + columns == size)  # only the last chunk is shorter
        position += rows * columns


def test_total_is_exactly_rounded_whatever_the_order():
    parts = [1e16, 1.0, -1e16, 3.0, 1e-8] * 50
    exact = sum(Fraction(part) for part in parts)
    assert chunks.total(parts) == float(exact)
    assert sum(parts) != float(exact)  # float addition in this order loses the small parts
    shuffled = parts[:]
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        assert chunks.total(shuffled) == chunks.total(parts)


def test_total_of_infinities_is_what_float_addition_gives():
    assert chunks.total([math.inf, 1.0]) == math.inf
    assert math.isnan(chunks.total([math.inf, -math.inf])) and math.isnan(chunks.total([math.nan, 1.0]))
