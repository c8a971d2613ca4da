"""An Iceberg table's data files and their keys, and ONE snapshot that drops rows and adds rows.

The only module that uses pyiceberg's internals (``Transaction.update_snapshot`` producers,
``ArrowScan`` over one ``FileScanTask``, ``_dataframe_to_data_files``; the tested versions are in
``beam_pipeline.library_versions``). ``commit_snapshot`` drops rows copy-on-write, like
pyiceberg's own delete (each data file holding a dropped row is rewritten without it), and adds
the new rows in the same snapshot, so a reader sees the old rows or the new ones, never both or
neither. Everything arrives as iterators, one data file or one chunk of rows at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from beam_pipeline.output_files import KEY_SCHEMA, time_keys


def data_files(table: Any) -> list[Any]:
    """The scan tasks (one per data file, with its delete files) of the table's current snapshot."""
    return list(table.scan().plan_files())


def held_keys(table: Any, task: Any) -> Iterator[pa.Table]:
    """``image_uri`` and ``processed_at`` key (``KEY_SCHEMA``) of the rows of one data file
    (``data_files``), a record batch at a time."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    scan = ArrowScan(
        table_metadata=table.metadata,
        io=table.io,
        projected_schema=table.schema().select("image_uri", "processed_at"),
        row_filter=AlwaysTrue(),
    )
    for batch in scan.to_record_batches([task]):
        yield pa.table(
            [batch.column("image_uri").cast(pa.string()), time_keys(batch.column("processed_at"))], schema=KEY_SCHEMA
        )


def commit_snapshot(table: Any, drops: Iterable[tuple[Any, pa.Array]], adds: Iterable[pa.Table], replace: bool) -> None:
    """ONE snapshot of ``table`` (loaded when its tasks were planned): for each (data file task,
    URIs) of ``drops`` the file is rewritten without those URIs' rows; every table of ``adds`` is
    written as new data files. ``replace``: an ``overwrite`` snapshot (``drops`` may remove rows),
    else a fast ``append`` (``drops`` must be empty)."""
    import pyarrow.compute as pc
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files

    counter = itertools.count(0)  # file names are write_uuid + counter: one counter per snapshot
    with table.transaction() as tx:
        metadata = tx.table_metadata

        def write(snapshot: Any, rows: pa.Table) -> None:
            for data_file in _dataframe_to_data_files(
                table_metadata=metadata, df=rows, io=table.io, write_uuid=snapshot.commit_uuid, counter=counter
            ):
                snapshot.append_data_file(data_file)

        producer = tx.update_snapshot().overwrite() if replace else tx.update_snapshot().fast_append()
        with producer as snapshot:
            for task, uris in drops:
                if not replace:
                    raise ValueError("rows to drop need replace=True (an overwrite snapshot)")
                data = ArrowScan(
                    table_metadata=metadata, io=table.io, projected_schema=metadata.schema(), row_filter=AlwaysTrue()
                ).to_table(tasks=[task])
                column = data.column("image_uri")
                kept = data.filter(pc.invert(pc.is_in(column, value_set=uris.cast(column.type))))
                if kept.num_rows == data.num_rows:
                    continue
                snapshot.delete_data_file(task.file)
                if kept.num_rows:
                    write(snapshot, kept)
            for rows in adds:
                if rows.num_rows:
                    write(snapshot, rows)
