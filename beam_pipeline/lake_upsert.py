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

Driver memory: a URI -> (time, kind) map of OUTPUT's rows and of the table's URIs (tens of bytes
per image; see docs/OUTPUTS.md "Captions as an Iceberg table").
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from beam_pipeline.output_files import latest_key, read_rows
from beam_pipeline.schemas import conform


def latest_rows(files_by_kind: dict[str, list[str]]) -> dict[str, tuple[int, str]]:
    """URI -> (processed_at key, kind) of its latest row over every kind's files."""
    latest: dict[str, tuple[int, str]] = {}
    for kind, files in files_by_kind.items():
        for uri in files:
            for row in read_rows(uri, ("image_uri", "processed_at")):
                key = latest_key(row["processed_at"])
                if row["image_uri"] not in latest or key > latest[row["image_uri"]][0]:
                    latest[row["image_uri"]] = (key, kind)
    return latest


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


def plan_sync(kind: str, files: list[str], schema: pa.Schema, latest: dict[str, tuple[int, str]],
              in_table: dict[str, int]) -> SyncPlan:
    """Rows of ``files`` (this ``kind``) that are their URI's latest row and newer than the table's
    row (or the table has none), one per URI, as ``schema``; plus the table URIs to drop."""
    chosen, taken = [], set()
    for uri in files:
        keep = []
        for row in read_rows(uri, ("image_uri", "processed_at")):
            image_uri, key = row["image_uri"], latest_key(row["processed_at"])
            wanted = (latest.get(image_uri) == (key, kind) and image_uri not in taken
                      and (image_uri not in in_table or in_table[image_uri] < key))
            keep.append(wanted)
            if wanted:
                taken.add(image_uri)
        if any(keep):  # only files with a row to add are read whole, when written
            chosen.append((uri, pa.array(keep, pa.bool_())))
    gone = {u for u in in_table if u in latest and latest[u][1] != kind}
    return SyncPlan(chosen, schema, len(taken), (taken & set(in_table)) | gone)


def table_rows(table: Any) -> dict[str, int]:
    """URI -> processed_at key of every row the table holds."""
    arrow = table.scan(selected_fields=("image_uri", "processed_at")).to_arrow()
    return {u: latest_key(t) for u, t in zip(arrow.column("image_uri").to_pylist(),
                                             arrow.column("processed_at").to_pylist())}


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
            for data_file in _dataframe_to_data_files(table_metadata=metadata, df=rows, io=table.io,
                                                      write_uuid=snapshot.commit_uuid, counter=counter):
                snapshot.append_data_file(data_file)

        producer = tx.update_snapshot().overwrite() if drop else tx.update_snapshot().fast_append()
        with producer as snapshot:
            if drop:
                value_set = pa.array(drop, pa.string())
                for task in tx._scan(row_filter=In("image_uri", drop)).plan_files():
                    data = ArrowScan(table_metadata=metadata, io=table.io, projected_schema=metadata.schema(),
                                     row_filter=AlwaysTrue()).to_table(tasks=[task])
                    kept = data.filter(pc.invert(pc.is_in(data.column("image_uri"), value_set=value_set)))
                    if kept.num_rows == data.num_rows:
                        continue
                    snapshot.delete_data_file(task.file)
                    if kept.num_rows:
                        write(snapshot, kept)
            for chunk in plan.chunks():
                write(snapshot, chunk)
