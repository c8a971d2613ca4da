"""One row per image URI in the Iceberg tables, following OUTPUT's latest-row rule.

OUTPUT may hold several rows for a URI once ``--resume`` captioned a changed input again; the
row with the greatest ``processed_at`` (over captions *and* errors) is the current one
(``beam_pipeline.output_files``). ``plan_sync`` says, for one table, which rows to add and which
URIs' rows they replace (a newer row of the same kind, or a newer row of the other kind: a photo
that became unreadable leaves the captions table for the errors table). ``commit_plan`` applies
that as ONE snapshot (an ``overwrite`` when rows are replaced): the data files holding replaced
rows are rewritten without
them (copy-on-write, like pyiceberg's own delete) and the new rows are added in the same
snapshot, so a reader sees the old row or the new one, never both or neither.

Driver memory: OUTPUT's latest rows (``output_files.LatestRows``) and the table's URIs and times,
as Arrow columns (tens of bytes per image; see docs/PERFORMANCE.md section 11b).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from beam_pipeline.output_files import LatestRows, time_keys
from beam_pipeline.schemas import conform

ROWS_PER_WRITE = 200_000  # new rows held at once while writing data files (bounds memory; few files)


@dataclass
class SyncPlan:
    """For one table: which OUTPUT rows to add (per file, a mask of its rows), how many, and the
    URIs whose table rows they replace (or that left the table for the other kind's table). The
    rows are read again, a file at a time, only while they are written (``chunks``)."""

    files: list[tuple[str, pa.Array]]
    schema: pa.Schema
    count: int
    replaced: set[str]

    def chunks(self, rows_per_chunk: int = ROWS_PER_WRITE) -> Iterator[pa.Table]:
        """The rows to add, as tables of about ``rows_per_chunk`` rows (whole files at a time)."""
        import fsspec
        import pyarrow.parquet as pq

        waiting: list[pa.Table] = []
        held = 0
        for uri, keep in self.files:
            fs, path = fsspec.core.url_to_fs(uri)
            with fs.open(path, "rb") as f:
                waiting.append(conform(pq.read_table(f).filter(keep), self.schema))
            held += waiting[-1].num_rows
            if held >= rows_per_chunk:
                yield pa.concat_tables(waiting)
                waiting, held = [], 0
        if waiting:
            yield pa.concat_tables(waiting)

    @property
    def rows(self) -> pa.Table:
        """All rows to add at once (small syncs and tests)."""
        return pa.concat_tables(list(self.chunks())) if self.files else self.schema.empty_table()


def plan_sync(kind: str, latest: LatestRows, schema: pa.Schema, in_table: pa.Table) -> SyncPlan:
    """Rows of this ``kind`` that are their URI's latest row (``latest``) and newer than the
    table's row of that URI (or the table has none), one per URI, as ``schema``; plus the table
    URIs to drop (replaced by those rows, or whose latest row is now of another kind).
    ``in_table``: ``table_rows``. Vectorised over Arrow columns (no Python object per row)."""
    import pyarrow.compute as pc

    mine = latest.of_kind(kind).select(["image_uri", "processed_at", "file", "row"])
    held = in_table.rename_columns(["image_uri", "in_table_at"])
    joined = mine.join(held, "image_uri", join_type="left outer")
    newer = pc.or_kleene(
        pc.is_null(joined.column("in_table_at")), pc.less(joined.column("in_table_at"), joined.column("processed_at"))
    )
    add = joined.filter(newer)
    chosen = []
    for index in sorted(set(add.column("file").to_pylist())):
        rows = pc.filter(add.column("row"), pc.equal(add.column("file"), index)).to_numpy()
        keep = np.zeros(_num_rows(latest.files[index]), dtype=bool)
        keep[rows] = True
        chosen.append((latest.files[index], pa.array(keep)))
    held_uris = in_table.column("image_uri")
    replaced = pc.filter(add.column("image_uri"), pc.is_valid(add.column("in_table_at"))).to_pylist()
    gone = pc.filter(held_uris, pc.is_in(held_uris, value_set=latest.not_of_kind(kind))).to_pylist()
    return SyncPlan(chosen, schema, add.num_rows, set(replaced) | set(gone))


def _num_rows(uri: str) -> int:
    import fsspec
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def table_rows(table: Any) -> pa.Table:
    """``image_uri`` and ``processed_at`` key (int64 ms) of every row the table holds."""
    arrow = table.scan(selected_fields=("image_uri", "processed_at")).to_arrow()
    return pa.table(
        {
            "image_uri": arrow.column("image_uri").combine_chunks().cast(pa.string()),
            "processed_at": time_keys(arrow.column("processed_at")),
        }
    )


def commit_plan(table: Any, plan: SyncPlan) -> None:
    """ONE snapshot: a fast append of the plan's rows, or, when it replaces rows, an overwrite that
    drops the table's rows of those URIs (rewriting only the data files that hold them) and adds
    the new rows. New rows are written ``ROWS_PER_WRITE`` at a time."""
    import pyarrow.compute as pc
    from pyiceberg.expressions import AlwaysTrue, In
    from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files

    drop = sorted(plan.replaced)
    counter = itertools.count(0)  # file names are write_uuid + counter: one counter per snapshot
    with table.transaction() as tx:
        metadata = tx.table_metadata

        def write(snapshot: Any, rows: pa.Table) -> None:
            for data_file in _dataframe_to_data_files(
                table_metadata=metadata, df=rows, io=table.io, write_uuid=snapshot.commit_uuid, counter=counter
            ):
                snapshot.append_data_file(data_file)

        producer = tx.update_snapshot().overwrite() if drop else tx.update_snapshot().fast_append()
        with producer as snapshot:
            if drop:
                value_set = pa.array(drop, pa.string())
                for task in tx._scan(row_filter=In("image_uri", drop)).plan_files():
                    data = ArrowScan(
                        table_metadata=metadata,
                        io=table.io,
                        projected_schema=metadata.schema(),
                        row_filter=AlwaysTrue(),
                    ).to_table(tasks=[task])
                    kept = data.filter(pc.invert(pc.is_in(data.column("image_uri"), value_set=value_set)))
                    if kept.num_rows == data.num_rows:
                        continue
                    snapshot.delete_data_file(task.file)
                    if kept.num_rows:
                        write(snapshot, kept)
            for chunk in plan.chunks():
                write(snapshot, chunk)
