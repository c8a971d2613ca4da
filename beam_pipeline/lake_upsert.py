"""One row per image URI in the Iceberg tables, following OUTPUT's latest-row rule, in memory that
does not grow with the number of images.

OUTPUT may hold several rows for a URI once ``--resume`` captioned a changed input again; the
row with the greatest ``processed_at`` (over captions *and* errors; ties: a caption beats an
error, then the earlier file) is the current one (``beam_pipeline.output_files``). ``sync_tables``
makes each table (captions, errors) hold exactly the current rows of its kind that are newer
than the table's row of that URI, and drops the table's rows they replace (a newer row of the
same kind, or a newer row of the other kind: a photo that became unreadable leaves the captions
table for the errors table). Each table gets ONE snapshot per sync (``lake_commit``), so a reader
sees the old row or the new one, never both or neither.

How, with bounded memory (``beam_pipeline.spill``):

1. OUTPUT's ``image_uri`` / ``processed_at`` columns and the tables' (one data file at a time)
   are streamed a record batch at a time into B buckets on local disk by a hash of the URI, B
   chosen so a bucket holds about ``rows_per_bucket`` rows; all rows of one URI meet in one bucket.
2. Each bucket alone is planned (``plan_bucket``, pure Arrow): the latest row per URI, joined with
   the tables' rows of those URIs, gives the OUTPUT rows (file, row) to add and the table rows
   (data file, URI) to drop. Those go to two more spills, grouped by ranges of OUTPUT files and
   of table data files of about ``rows_per_bucket`` rows, so that
3. each table's snapshot reads each OUTPUT file holding rows to add once, a record batch at a
   time, and writes them ``rows_per_bucket`` rows at a time, and rewrites each data file holding
   rows to drop once.

Driver memory does not grow with the number of rows: one bucket's keys, one chunk of new rows
and one table data file being rewritten, plus the lists of OUTPUT files and table data files
(a path and a row count each); see docs/PERFORMANCE.md section 11b. Local disk: the key columns
of OUTPUT and of the tables, in a temporary folder removed at the end.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from beam_pipeline.lake_commit import commit_snapshot, data_files, held_keys
from beam_pipeline.output_files import KIND_ORDER, key_batches, pick_latest, row_count
from beam_pipeline.schemas import conform
from beam_pipeline.spill import Spill, bucket_count, size_groups, uri_buckets

ROWS_PER_BUCKET = 100_000  # keys planned at once, and new rows written at once
OUTPUT_KEYS = pa.schema(
    [
        ("image_uri", pa.string()),
        ("processed_at", pa.int64()),
        ("rank", pa.int8()),
        ("file", pa.int32()),
        ("row", pa.int64()),
    ]
)
HELD_KEYS = pa.schema(
    [("image_uri", pa.string()), ("processed_at", pa.int64()), ("rank", pa.int8()), ("data_file", pa.int32())]
)
ADD_KEYS = pa.schema([("file", pa.int32()), ("row", pa.int64())])
DROP_KEYS = pa.schema([("data_file", pa.int32()), ("image_uri", pa.string())])


@dataclass
class BucketPlan:
    """For one table and one bucket of URIs: the OUTPUT rows to add (``ADD_KEYS``: file index,
    row in that file), the table rows to drop (``DROP_KEYS``: data file index, URI) and how many
    distinct URIs those are."""

    adds: pa.Table
    drops: pa.Table
    replaced: int


def output_keys(index: int, uri: str, kind: str) -> Iterator[pa.Table]:
    """``OUTPUT_KEYS`` of one committed file (number ``index`` in the order the latest-row rule
    uses), a record batch at a time; rows without a URI are left out."""
    import pyarrow.compute as pc

    rank = KIND_ORDER.index(kind)
    start = 0
    for keys in key_batches(uri):
        n = keys.num_rows
        with_place = (
            keys.append_column("rank", pa.array(np.full(n, rank, np.int8)))
            .append_column("file", pa.array(np.full(n, index, np.int32)))
            .append_column("row", pa.array(np.arange(start, start + n, dtype=np.int64)))
        )
        start += n
        yield with_place.filter(pc.is_valid(with_place.column("image_uri")))


def plan_bucket(output: pa.Table, held: pa.Table, kinds: Sequence[str]) -> dict[str, BucketPlan]:
    """Per table ``kind``: the rows of ``output`` (``OUTPUT_KEYS``, every row of these URIs in
    OUTPUT) that are their URI's latest row, are of ``kind`` and are newer than the table's row of
    that URI (or the table has none); and the rows of ``held`` (``HELD_KEYS``, every table row of
    these URIs) to drop: those of URIs that get a new row, or whose latest row is of another kind.
    Vectorised over Arrow columns."""
    import pyarrow.compute as pc

    latest = pick_latest(output)
    plans = {}
    for kind in kinds:
        rank = KIND_ORDER.index(kind)
        is_mine = pc.equal(latest.column("rank"), rank)
        mine = latest.filter(is_mine).select(["image_uri", "processed_at", "file", "row"])
        theirs = held.filter(pc.equal(held.column("rank"), rank))
        newest = (
            theirs.group_by("image_uri")
            .aggregate([("processed_at", "max")])
            .rename_columns(["image_uri", "in_table_at"])
        )
        joined = mine.join(newest, "image_uri", join_type="left outer")
        at = joined.column("in_table_at")
        add = joined.filter(pc.or_kleene(pc.is_null(at), pc.less(at, joined.column("processed_at"))))
        replacing = pc.filter(add.column("image_uri"), pc.is_valid(add.column("in_table_at")))
        elsewhere = latest.filter(pc.invert(is_mine)).column("image_uri")
        drop_uris = pa.chunked_array([replacing, elsewhere], pa.string())
        drops = theirs.filter(pc.is_in(theirs.column("image_uri"), value_set=drop_uris.combine_chunks()))
        plans[kind] = BucketPlan(
            adds=add.select(ADD_KEYS.names).cast(ADD_KEYS),
            drops=drops.select(DROP_KEYS.names).cast(DROP_KEYS),
            replaced=pc.count_distinct(drops.column("image_uri")).as_py() if drops.num_rows else 0,
        )
    return plans


def sync_tables(
    tables: Mapping[str, Any],
    files_by_kind: Mapping[str, Sequence[str]],
    rows_per_bucket: int = ROWS_PER_BUCKET,
    workdir: str | None = None,
) -> dict[str, dict[str, int]]:
    """Make each table of ``tables`` (kind -> pyiceberg table: "captions", "errors") hold each
    URI's latest row of ``files_by_kind`` (OUTPUT's committed files) when it is of that kind, one
    row per URI, in ONE snapshot per table that changes (module docstring). The spill files go
    to a temporary folder under ``workdir`` (the system's temp folder by default), removed at the
    end. Returns per kind ``appended`` (rows written: new URIs and replacements) and ``replaced``
    (URIs whose table row was dropped)."""
    files = [(uri, kind) for kind, uris in files_by_kind.items() for uri in uris]
    sizes = [row_count(uri) for uri, _ in files]
    tasks = [(kind, task) for kind, table in tables.items() for task in data_files(table)]
    task_sizes = [task.file.record_count for _, task in tasks]
    buckets = bucket_count(sum(sizes) + sum(task_sizes), rows_per_bucket)
    file_group, task_group = size_groups(sizes, rows_per_bucket), size_groups(task_sizes, rows_per_bucket)
    counts = {kind: {"appended": 0, "replaced": 0} for kind in tables}
    with tempfile.TemporaryDirectory(prefix="lake-sync-", dir=workdir) as folder:
        with Spill(folder, "output", buckets, OUTPUT_KEYS) as output:
            for index, (uri, kind) in enumerate(files):
                for keys in output_keys(index, uri, kind):
                    output.add(uri_buckets(keys.column("image_uri"), buckets), keys)
        with Spill(folder, "held", buckets, HELD_KEYS) as held:
            for index, (kind, task) in enumerate(tasks):
                for keys in held_keys(tables[kind], task):
                    n = keys.num_rows
                    keys = keys.append_column("rank", pa.array(np.full(n, KIND_ORDER.index(kind), np.int8)))
                    keys = keys.append_column("data_file", pa.array(np.full(n, index, np.int32)))
                    held.add(uri_buckets(keys.column("image_uri"), buckets), keys)
        groups = (int(file_group.max(initial=0)) + 1, int(task_group.max(initial=0)) + 1)
        adds = {kind: Spill(folder, f"adds-{kind}", groups[0], ADD_KEYS) for kind in tables}
        drops = {kind: Spill(folder, f"drops-{kind}", groups[1], DROP_KEYS) for kind in tables}
        with contextlib.ExitStack() as stack:
            for spill in [*adds.values(), *drops.values()]:
                stack.enter_context(spill)
            for bucket in range(buckets):
                for kind, plan in plan_bucket(output.read(bucket), held.read(bucket), list(tables)).items():
                    adds[kind].add(file_group[plan.adds.column("file").to_numpy()], plan.adds)
                    drops[kind].add(task_group[plan.drops.column("data_file").to_numpy()], plan.drops)
                    counts[kind]["appended"] += plan.adds.num_rows
                    counts[kind]["replaced"] += plan.replaced
                pa.default_memory_pool().release_unused()  # the allocator keeps freed pages otherwise
        for kind, table in tables.items():
            if counts[kind]["appended"] or counts[kind]["replaced"]:
                schema = table.schema().as_arrow()
                commit_snapshot(
                    table,
                    _dropped(drops[kind], [task for _, task in tasks]),
                    _added(adds[kind], [uri for uri, _ in files], schema, rows_per_bucket),
                    replace=bool(counts[kind]["replaced"]),
                )
                pa.default_memory_pool().release_unused()
    return counts


def _runs(keys: pa.Table, column: str) -> Iterator[tuple[int, pa.Table]]:
    """``keys`` sorted by all its columns, ``column`` first, as (value of ``column``, its rows) runs."""
    if not keys.num_rows:
        return
    keys = keys.sort_by([(name, "ascending") for name in keys.column_names])
    values = keys.column(column).to_numpy()
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    for start, end in zip(starts, [*starts[1:], len(values)], strict=True):
        yield int(values[start]), keys.slice(int(start), int(end - start))


def _dropped(spill: Spill, tasks: Sequence[Any]) -> Iterator[tuple[Any, pa.Array]]:
    """(data file task, URIs to drop from it), one group of data files at a time."""
    for group in range(spill.buckets):
        for index, rows in _runs(spill.read(group), "data_file"):
            yield tasks[index], rows.column("image_uri").combine_chunks()


def _added(spill: Spill, files: Sequence[str], schema: pa.Schema, rows_per_chunk: int) -> Iterator[pa.Table]:
    """The OUTPUT rows to add as ``schema``, in tables of about ``rows_per_chunk`` rows; each file
    holding some is read once, a record batch at a time."""
    waiting: list[pa.Table] = []
    held = 0
    for group in range(spill.buckets):
        for index, keys in _runs(spill.read(group), "file"):
            for part in _take_rows(files[index], keys.column("row").to_numpy(), schema, min(rows_per_chunk, 65536)):
                waiting.append(part)
                held += part.num_rows
                if held >= rows_per_chunk:
                    yield pa.concat_tables(waiting)
                    waiting, held = [], 0
    if waiting:
        yield pa.concat_tables(waiting)


def _take_rows(uri: str, rows: np.ndarray, schema: pa.Schema, batch_rows: int) -> Iterator[pa.Table]:
    """Rows number ``rows`` (sorted) of one committed file, as ``schema``, ``batch_rows`` rows of
    the file read at a time."""
    import fsspec
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        columns = [name for name in schema.names if name in parquet.schema_arrow.names]
        start = 0
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            if start > rows[-1]:
                break
            lo, hi = np.searchsorted(rows, [start, start + batch.num_rows])
            if hi > lo:
                yield conform(pa.Table.from_batches([batch]).take(pa.array(rows[lo:hi] - start)), schema)
            start += batch.num_rows
