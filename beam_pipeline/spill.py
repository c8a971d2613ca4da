"""Work split into buckets that each fit in memory, spilled to local Parquet files.

A job over every image (the Iceberg sync: OUTPUT's rows against a table's rows) streams its rows
a record batch at a time into ``Spill``: one file per bucket in a local folder, then handles one
bucket at a time, so it holds one bucket, never the whole input. Rows go to buckets by a hash of
their URI (``uri_buckets``: all rows of one URI meet in one bucket) or by consecutive ranges of
files whose row counts add up to at most a limit (``size_groups``: each file is then read once).
Pure pyarrow and numpy: no Beam, no pyiceberg.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

# Fixed odd 64-bit multipliers, one per position in a URI (mod 64): the bucket of a URI is the
# same in every process and every run (Python's hash() is salted per process).
_WEIGHTS = np.array(
    [(0x9E3779B97F4A7C15 * (2 * i + 1) + 0xBF58476D1CE4E5B9 * i * i) % 2**64 | 1 for i in range(64)], dtype=np.uint64
)


def bucket_count(rows: int, rows_per_bucket: int) -> int:
    """How many buckets give at most about ``rows_per_bucket`` rows each (at least one)."""
    if rows_per_bucket < 1:
        raise ValueError(f"rows_per_bucket must be at least 1, got {rows_per_bucket}")
    return max(1, math.ceil(rows / rows_per_bucket))


def uri_buckets(uris: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """The bucket (0 .. ``buckets`` - 1) of each URI: a hash of its UTF-8 bytes, vectorised over
    Arrow's buffers (no Python object per URI). Equal URIs always share a bucket; a null URI goes
    to bucket 0."""
    if isinstance(uris, pa.ChunkedArray):
        uris = uris.combine_chunks()
    if buckets <= 1 or len(uris) == 0:
        return np.zeros(len(uris), dtype=np.int32)
    uris = uris.cast(pa.large_string())
    offsets = np.frombuffer(uris.buffers()[1], dtype=np.int64)[uris.offset : uris.offset + len(uris) + 1]
    data_buffer = uris.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    base = offsets[0]
    starts, ends = offsets[:-1] - base, offsets[1:] - base
    lengths = ends - starts
    chars = data[base : offsets[-1]].astype(np.uint64) + np.uint64(1)
    position = np.arange(len(chars), dtype=np.int64) - np.repeat(starts, lengths)
    summed = np.concatenate([np.zeros(1, np.uint64), np.cumsum(chars * _WEIGHTS[position & 63], dtype=np.uint64)])
    h = summed[ends] - summed[starts] + lengths.astype(np.uint64) * np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(33)  # murmur3's finaliser: every input bit reaches the low bits
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return (h % np.uint64(buckets)).astype(np.int32)


def size_groups(sizes: Sequence[int], limit: int) -> np.ndarray:
    """Consecutive items grouped so each group's sizes add up to at most ``limit`` (an item larger
    than ``limit`` is a group alone): the group index of each item, from 0, non-decreasing."""
    groups = np.zeros(len(sizes), dtype=np.int32)
    group, held = 0, 0
    for i, size in enumerate(sizes):
        if held and held + size > limit:
            group, held = group + 1, 0
        groups[i] = group
        held += size
    return groups


class Spill:
    """``buckets`` Parquet files of ``schema`` rows in ``folder`` (named ``name``-NNNNN): ``add``
    rows with their bucket numbers while the block is open, then ``read`` a bucket at a time.
    Each file is written under ``model.storage.atomic_local_path`` (it appears when the block
    ends without an exception, never part-written); a bucket no row went to reads as empty."""

    def __init__(self, folder: str, name: str, buckets: int, schema: pa.Schema) -> None:
        self.buckets = buckets
        self.schema = schema
        self._paths = [os.path.join(folder, f"{name}-{b:05d}.parquet") for b in range(buckets)]
        self._writers: dict[int, object] = {}
        self._stack = contextlib.ExitStack()
        self.rows = 0

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(*exc)
        self._writers.clear()

    def add(self, buckets: np.ndarray, rows: pa.Table) -> None:
        """Append ``rows`` (``schema``'s columns), row i to bucket ``buckets[i]``."""
        if rows.num_rows == 0:
            return
        rows = rows.select(self.schema.names).cast(self.schema)
        order = np.argsort(buckets, kind="stable")
        ordered = np.asarray(buckets)[order]
        rows = rows.take(pa.array(order))
        bounds = np.searchsorted(ordered, np.arange(self.buckets + 1))
        for b in np.unique(ordered):
            self._writer(int(b)).write_table(rows.slice(bounds[b], bounds[b + 1] - bounds[b]))
        self.rows += rows.num_rows

    def _writer(self, bucket: int):  # noqa: ANN202 - a pyarrow.parquet.ParquetWriter
        import pyarrow.parquet as pq

        from model.storage import atomic_local_path

        if bucket not in self._writers:
            temp = self._stack.enter_context(atomic_local_path(self._paths[bucket]))
            writer = pq.ParquetWriter(temp, self.schema)
            self._stack.callback(writer.close)  # closed before atomic_local_path renames it (last in, first out)
            self._writers[bucket] = writer
        return self._writers[bucket]

    def read(self, bucket: int) -> pa.Table:
        """Every row added to ``bucket`` (after the block ended), in the order added."""
        import pyarrow.parquet as pq

        path = self._paths[bucket]
        if not os.path.exists(path):
            return self.schema.empty_table()
        return pq.ParquetFile(path).read().cast(self.schema)
